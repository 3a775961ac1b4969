//! `hapki push`: put a verified bundle's shared files on every target control-plane node.
//!
//! Per node, on one SSH connection: read the node's facts (read-only), [`plan::plan`] what to
//! do, then run the node install script once, which takes the node's lock, stages and verifies
//! the bundle on the node's own disk with the node's own `ssh-keygen` and `sha256sum`, and
//! installs by rename. Nodes run in parallel, bounded; a failure on one never stops the others.

pub mod backups;
pub mod exchange;
pub mod plan;
pub mod stream;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::error::Category;
use crate::node::{self, facts::NodeFacts};
use crate::transport::{self, Target, Transport};
use exchange::{DecisionSource, Exchange, FactsSink};

pub use plan::{plan, Plan};

/// One shared file as it will be installed.
#[derive(Clone)]
pub struct PayloadFile {
    /// Relative to the pki directory (`etcd/ca.crt`).
    pub name: String,
    pub mode: u32,
    pub bytes: Vec<u8>,
    /// Lowercase hex SHA-256 of `bytes`.
    pub sha256: String,
}

// Hand-written so that `{:?}` anywhere (a log line, a panic message) never shows key bytes.
impl std::fmt::Debug for PayloadFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PayloadFile")
            .field("name", &self.name)
            .field("mode", &self.mode)
            .field("sha256", &self.sha256)
            .field("bytes", &format_args!("<{} bytes>", self.bytes.len()))
            .finish()
    }
}

/// What push sends to each node: the signed parts of a verified bundle, so each node can check
/// the signature itself. Built only from a verified bundle (see the CLI), never from raw input.
#[derive(Debug, Clone)]
pub struct Payload {
    /// Signer principal, for `ssh-keygen -Y verify -I` on the node.
    pub principal: String,
    /// One allowed_signers line trusting exactly the bundle's signer for `hapki-bundle`.
    pub allowed_signers: String,
    pub manifest_json: Vec<u8>,
    pub sha256sums: Vec<u8>,
    pub signature: Vec<u8>,
    pub serial: u64,
    pub files: Vec<PayloadFile>,
}

impl Payload {
    pub fn file(&self, name: &str) -> Option<&PayloadFile> {
        self.files.iter().find(|f| f.name == name)
    }

    /// The install script's trailing arguments and the matching stdin bytes, ending with the
    /// confirmation word (the payload was verified in full before it was built).
    fn parts(&self) -> (Vec<String>, Vec<u8>) {
        let (args, mut data) = self.parts_for(true);
        data.extend_from_slice(b"commit\n");
        (args, data)
    }

    /// The signed metadata parts, and the `pki/` files if `pki`; no confirmation word.
    fn parts_for(&self, pki: bool) -> (Vec<String>, Vec<u8>) {
        let mut args = Vec::new();
        let mut data = Vec::new();
        let mut add = |name: &str, bytes: &[u8], mode: u32| {
            args.push(name.to_string());
            args.push(bytes.len().to_string());
            args.push(format!("{mode:04o}"));
            data.extend_from_slice(bytes);
        };
        add("allowed_signers", self.allowed_signers.as_bytes(), 0o600);
        add("bundle.json", &self.manifest_json, 0o600);
        add("SHA256SUMS", &self.sha256sums, 0o600);
        add("SHA256SUMS.sig", &self.signature, 0o600);
        if pki {
            for f in &self.files {
                add(&format!("pki/{}", f.name), &f.bytes, f.mode);
            }
        }
        (args, data)
    }
}

/// Per-node outcome, named as in the interface's JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    Installed,
    Unchanged,
    Joined,
    Planned,
    Skipped,
    Failed,
}

/// The interface's name (`installed`, …), as in the JSON.
impl std::fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            NodeStatus::Installed => "installed",
            NodeStatus::Unchanged => "unchanged",
            NodeStatus::Joined => "joined",
            NodeStatus::Planned => "planned",
            NodeStatus::Skipped => "skipped",
            NodeStatus::Failed => "failed",
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeResult {
    pub node: String,
    pub status: NodeStatus,
    pub message: String,
    /// For failures: which exit-code class the failure belongs to.
    #[serde(skip)]
    pub category: Option<Category>,
    /// With `--replace`: where the node's previous files were backed up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PushReport {
    pub ok: bool,
    pub nodes: Vec<NodeResult>,
}

impl PushReport {
    /// The category that decides the exit code: a host-key failure outranks a verification
    /// failure (rollback, bad signature on a node), which outranks any other node failure.
    pub fn category(&self) -> Option<Category> {
        let cats: Vec<Category> = self.nodes.iter().filter_map(|n| n.category).collect();
        [Category::HostKey, Category::Verification, Category::NodesFailed, Category::Unexpected]
            .into_iter()
            .find(|c| cats.contains(c))
    }
}

#[derive(Debug, Clone)]
pub struct PushOptions {
    pub replace: bool,
    pub dry_run: bool,
    pub parallel: usize,
    pub paths: node::NodePaths,
    /// This push's id: the UTC time and random bits. Names the backup directory on each node
    /// (`/var/lib/hapki/backup/<stamp>`, unique, so no later push touches it) and the staging
    /// directories next to artifacts (so a node removes only its own dead ones).
    pub stamp: String,
    /// Install a bundle older than what a node last installed (`--allow-downgrade`); the node
    /// records it in its history.
    pub allow_downgrade: bool,
}

impl PushOptions {
    pub fn new(replace: bool, dry_run: bool, parallel: usize) -> Self {
        let stamp = time::OffsetDateTime::now_utc()
            .format(time::macros::format_description!("[year][month][day]T[hour][minute][second]Z"))
            .unwrap_or_else(|_| "backup".into());
        let stamp = format!("{stamp}-{:08x}", rand::random::<u32>());
        PushOptions {
            replace,
            dry_run,
            parallel: parallel.max(1),
            paths: node::NodePaths::default(),
            stamp,
            allow_downgrade: false,
        }
    }
}

/// Progress events, so the binary can show per-node progress without the library printing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Connecting,
    Inspecting,
    Installing,
    Done,
}

/// A node whose install script confirmed the install; `stdout` names the backup, if any.
pub(crate) fn installed(node: &str, reason: String, stdout: &str) -> NodeResult {
    let backup = stdout.lines().find_map(|l| l.strip_prefix("backup ")).map(str::to_string);
    let kubeconfigs: Vec<&str> =
        stdout.lines().filter_map(|l| l.strip_prefix("kubeconfig ")).collect();
    let reason = if kubeconfigs.is_empty() {
        reason
    } else {
        format!("{reason}; new CA data in {}", kubeconfigs.join(", "))
    };
    NodeResult {
        node: node.into(),
        status: NodeStatus::Installed,
        message: match &backup {
            Some(b) => format!("{reason}; previous files backed up to {b}"),
            None => reason,
        },
        category: None,
        backup,
    }
}

/// A node whose install script failed: its exit code picks the category, its stderr the message.
pub(crate) fn install_failed(node: &str, out: &crate::transport::RemoteOutput) -> NodeResult {
    let category = match out.code {
        Some(node::install_exit::VERIFY) => Category::Verification,
        _ => Category::NodesFailed,
    };
    let msg = node::stderr_tail(&out.stderr);
    let msg = if msg.is_empty() {
        match (&out.code, &out.signal) {
            (Some(c), _) => format!("the install script failed (exit {c})"),
            (None, s) => {
                format!("the install script was killed (signal {})", s.as_deref().unwrap_or("?"))
            }
        }
    } else {
        msg
    };
    failed(node, category, msg)
}

pub(crate) fn failed(node: &str, category: Category, message: impl Into<String>) -> NodeResult {
    NodeResult {
        node: node.into(),
        status: NodeStatus::Failed,
        // Node text (stderr tails, facts) is escaped where it enters; this is the last line.
        message: crate::transport::escape_node_text(&message.into(), false),
        category: Some(category),
        backup: None,
    }
}

/// The decision that makes the node install: the install script's arguments on one line (every
/// word is from a checked alphabet, so the node splits it safely), then the parts' bytes.
pub(crate) fn install_decision(
    action: &str,
    reissue_ca: bool,
    payload: &Payload,
    facts: &NodeFacts,
    opts: &PushOptions,
    parts: &[String],
    data: &[u8],
) -> Vec<u8> {
    let mut line = format!(
        "{action} {} {} {} {} {}",
        payload.principal,
        facts.shared_state_token(),
        payload.serial,
        opts.stamp,
        install_flags(opts.allow_downgrade, reissue_ca)
    );
    for p in parts {
        line.push(' ');
        line.push_str(p);
    }
    line.push('\n');
    let mut bytes = line.into_bytes();
    bytes.extend_from_slice(data);
    bytes
}

/// The install script's flags word: `-`, or a comma list of `allow-downgrade` and `reissue-ca`
/// (the bundle's `ca.crt` is a same-key re-issue of the node's: the node updates every
/// kubeconfig whose `certificate-authority-data` is the old one in the same install).
fn install_flags(allow_downgrade: bool, reissue_ca: bool) -> String {
    let flags: Vec<&str> = [(allow_downgrade, "allow-downgrade"), (reissue_ca, "reissue-ca")]
        .into_iter()
        .filter_map(|(on, f)| on.then_some(f))
        .collect();
    if flags.is_empty() {
        "-".into()
    } else {
        flags.join(",")
    }
}

/// Whether a plan installs a same-key re-issue of the cluster CA (`ca.crt`).
pub(crate) fn reissues_cluster_ca(reissued: &[String]) -> bool {
    reissued.iter().any(|n| n == "ca.crt")
}

/// What the decision made of the node's facts, for the report.
type Decided = Result<Plan, String>;

fn push_one(
    payload: &Arc<Payload>,
    target: &Target,
    transport: &dyn Transport,
    opts: &PushOptions,
    progress: &(dyn Fn(&str, Step) + Sync),
) -> NodeResult {
    let name = target.name.as_str();
    progress(name, Step::Connecting);
    let mut session = match transport.connect(target) {
        Ok(s) => s,
        Err(e) => {
            use crate::error::Categorized;
            return failed(name, e.category(), e.to_string());
        }
    };
    progress(name, Step::Inspecting);
    let decided: Arc<Mutex<Option<Decided>>> = Arc::default();
    let exchange = {
        let (payload, decided, opts) = (payload.clone(), decided.clone(), opts.clone());
        let pki_dir = opts.paths.pki_dir();
        Exchange::new(target.connect_timeout + Duration::from_secs(60), move |out| {
            let facts = match NodeFacts::parse(out, &pki_dir) {
                Ok(f) => f,
                Err(e) => {
                    *decided.lock().unwrap_or_else(|p| p.into_inner()) = Some(Err(e.to_string()));
                    return b"skip\n".to_vec();
                }
            };
            let plan = plan(&payload, &facts, opts.replace, opts.allow_downgrade);
            let send = match &plan {
                Plan::Install { replacing, reissued, .. } if !opts.dry_run => {
                    let action = if replacing.is_empty() { "install" } else { "replace" };
                    let (parts, data) = payload.parts();
                    let re = reissues_cluster_ca(reissued);
                    install_decision(action, re, &payload, &facts, &opts, &parts, &data)
                }
                _ => b"skip\n".to_vec(),
            };
            *decided.lock().unwrap_or_else(|p| p.into_inner()) = Some(Ok(plan));
            send
        })
    };
    let pki_dir = opts.paths.pki_dir();
    let args = [opts.paths.kube_dir.as_str(), opts.paths.state_dir.as_str()];
    let mut stdin = DecisionSource(exchange.clone());
    let mut stdout = FactsSink(exchange.clone());
    let out = session.run_streaming(&node::push_script(), &args, &mut stdin, &mut stdout);
    progress(name, Step::Done);
    let decision = decided.lock().unwrap_or_else(|p| p.into_inner()).take();
    let out = match (out, decision) {
        (Err(e), Some(Ok(Plan::Install { .. }))) => {
            return failed(
                name,
                Category::NodesFailed,
                format!(
                    "{e}; the node's installed files were not changed, push again to complete it"
                ),
            )
        }
        (Err(e), _) => return failed(name, Category::NodesFailed, e.to_string()),
        (Ok(o), _) if !exchange.decided() => {
            let why = node::stderr_tail(&o.stderr);
            return failed(
                name,
                Category::NodesFailed,
                format!("reading the node's state under {pki_dir} failed: {why}"),
            );
        }
        (Ok(_), Some(Err(e))) => return failed(name, Category::NodesFailed, e),
        (Ok(_), None) => {
            return failed(name, Category::NodesFailed, "the node sent no facts to decide on")
        }
        (Ok(o), Some(Ok(plan))) => (o, plan),
    };
    let (out, plan) = out;
    match plan {
        Plan::Unchanged => NodeResult {
            node: name.into(),
            status: NodeStatus::Unchanged,
            message: "the eight shared files are already in place".into(),
            category: None,
            backup: None,
        },
        Plan::Refuse { category, reason } => failed(name, category, reason),
        Plan::Install { reason, .. } if opts.dry_run => NodeResult {
            node: name.into(),
            status: NodeStatus::Planned,
            message: format!("would {reason}"),
            category: None,
            backup: None,
        },
        Plan::Install { reason, .. } => {
            if !out.success() {
                return install_failed(name, &out);
            }
            let after = exchange.after_facts();
            let stdout = String::from_utf8_lossy(&after);
            if !stdout.lines().any(|l| l == "installed") {
                return failed(
                    name,
                    Category::NodesFailed,
                    "the install script ended without confirming the install",
                );
            }
            installed(name, reason, &stdout)
        }
    }
}

/// Pushes to every target, at most `opts.parallel` at once, and reports each node's outcome in
/// the order given.
pub fn push(
    payload: &Payload,
    targets: &[Target],
    transport: &dyn Transport,
    opts: &PushOptions,
    progress: &(dyn Fn(&str, Step) + Sync),
) -> PushReport {
    let payload = Arc::new(payload.clone());
    let nodes = transport::for_each_parallel(targets, opts.parallel, |t| {
        push_one(&payload, t, transport, opts, progress)
    });
    let ok = nodes.iter().all(|n| n.status != NodeStatus::Failed);
    PushReport { ok, nodes }
}

/// Why a verified bundle could not be turned into a payload (only a malformed signature blob,
/// which verification would already have rejected).
#[derive(Debug, thiserror::Error)]
#[error("the bundle's signature cannot be re-read for node-side verification: {0}")]
pub struct PayloadError(String);

impl crate::error::Categorized for PayloadError {
    fn category(&self) -> Category {
        Category::Verification
    }
}

impl Payload {
    /// The payload for a bundle that passed [`crate::bundle::open_and_verify`]. The node gets an
    /// allowed_signers line for exactly the key that signed it, so the node's own
    /// `ssh-keygen -Y verify` re-checks the same signature over the same SHA256SUMS.
    pub fn from_verified(b: &crate::bundle::VerifiedBundle) -> Result<Payload, PayloadError> {
        let sig =
            ssh_key::SshSig::from_pem(&b.signature).map_err(|e| PayloadError(e.to_string()))?;
        let key = ssh_key::PublicKey::from(sig.public_key().clone());
        let key_line = key.to_openssh().map_err(|e| PayloadError(e.to_string()))?;
        // Principals may not contain spaces or quotes in allowed_signers; the node-side name is
        // ours to choose, so use a fixed one when the operator's principal is unusual.
        let principal = if b
            .signer
            .principal
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "@._-".contains(c))
        {
            b.signer.principal.clone()
        } else {
            "hapki-signer".to_string()
        };
        Ok(Payload {
            allowed_signers: format!("{principal} namespaces=\"hapki-bundle\" {key_line}\n"),
            principal,
            manifest_json: b.manifest_bytes.clone(),
            sha256sums: b.sha256sums.clone(),
            signature: b.signature.clone(),
            serial: b.manifest.serial,
            files: b
                .files
                .iter()
                .map(|f| PayloadFile {
                    name: f.name.clone(),
                    mode: f.mode,
                    sha256: crate::pki::fingerprint::sha256_hex(&f.bytes),
                    bytes: f.bytes.clone(),
                })
                .collect(),
        })
    }
}
