//! `hapki push`: put a verified bundle's shared files and artifacts on every target node.
//!
//! One engine, [`push`]: one streaming pass over the bundle feeds the nodes (`stream.rs`), and
//! each node gets one SSH exec (`node.rs`): it prints its facts, hapki [`plan::plan`]s while the
//! command waits, and the decision, the small parts and any artifacts the node lacks follow on
//! the same stdin. The node's install script takes its lock, stages and verifies everything on
//! the node's own disk with its own `ssh-keygen` and `sha256sum`, and installs by rename only
//! once it reads "commit", which is sent only once the whole bundle has verified here.
//!
//! A PKI-only bundle is one with zero artifacts: its head is the whole bundle, verified to its
//! last byte before any node is contacted, so "commit" goes with each node's decision and the
//! nodes need not share a pass (at most `parallel` at once, each starting as another ends).
//! With artifacts, nodes go in batches of `parallel`, one pass over the bundle per batch.
//! A failure on one node never stops the others.

pub mod backups;
pub mod exchange;
mod node;
pub mod plan;
mod stream;

use std::path::Path;

use serde::Serialize;

use crate::bundle::{AllowedSigners, BundleError, Identities, VerifyOptions};
use crate::error::{Categorized, Category};
use crate::node as remote;
use crate::transport::Transport;

pub use plan::{plan, targets, Plan};

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

    /// The install script's trailing arguments for the signed metadata parts, and the `pki/`
    /// files if `pki`, with the matching stdin bytes (no confirmation word).
    fn parts(&self, pki: bool) -> (Vec<String>, Vec<u8>) {
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
    pub paths: remote::NodePaths,
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
            paths: remote::NodePaths::default(),
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

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::Connecting => "connecting",
            Step::Inspecting => "inspecting",
            Step::Installing => "installing",
            Step::Done => "done",
        })
    }
}

/// What the library reports while it pushes (the binary draws progress bars from it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Step(Step),
    /// Bytes of artifacts sent to the node so far, out of `total` planned for it.
    Sending {
        sent: u64,
        total: u64,
    },
}

/// A node push may send something to.
#[derive(Debug, Clone)]
pub struct NodeTarget {
    pub node: crate::cluster::ClusterNode,
    /// Whether the node gets the shared PKI (see [`targets`]).
    pub pki: bool,
}

/// The bundle a push reads, and what it must pass.
pub struct BundleSource<'a> {
    pub path: &'a Path,
    pub trust: &'a AllowedSigners,
    pub identities: &'a Identities,
    pub verify: VerifyOptions,
}

/// One push: the bundle, the nodes, how to reach them, the operator's options and where
/// progress goes. Everything the engine needs, in one place.
pub struct PushRun<'a> {
    pub bundle: BundleSource<'a>,
    pub targets: &'a [NodeTarget],
    pub transport: &'a dyn Transport,
    pub opts: &'a PushOptions,
    pub progress: &'a (dyn Fn(&str, Event) + Sync),
}

/// Why a push did not get as far as the nodes.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The bundle was rejected: nothing was installed anywhere.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// No node gets anything from this bundle.
    #[error("no target nodes for this bundle: {0}")]
    NoTargets(&'static str),
}

impl Categorized for PushError {
    fn category(&self) -> Category {
        match self {
            PushError::Bundle(e) => e.category(),
            PushError::NoTargets(_) => Category::Usage,
        }
    }
}

/// Pushes the bundle to every target (see the module docs) and reports each node's outcome in
/// the order given. `Err` means nothing was installed anywhere: the bundle was rejected, or no
/// node gets anything from it; node failures are in the report.
pub fn push(run: &PushRun<'_>) -> Result<PushReport, PushError> {
    let queue = stream::Queue::new(run.targets.len());
    let artifacts = loop {
        let artifacts = stream::pass(run, &queue)?;
        if queue.is_empty() {
            break artifacts;
        }
    };
    let nodes = queue.into_results();
    if nodes.is_empty() {
        return Err(PushError::NoTargets(if artifacts {
            "no node has a role its artifacts are for, and the inventory has no control-plane node besides the first master"
        } else {
            "it holds only the PKI, and the inventory has no control-plane node besides the first master"
        }));
    }
    let ok = nodes.iter().all(|n| n.status != NodeStatus::Failed);
    Ok(PushReport { ok, nodes })
}

/// A node whose install script confirmed the install; `stdout` names the backup, if any.
fn installed(node: &str, reason: String, stdout: &str) -> NodeResult {
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
fn install_failed(node: &str, out: &crate::transport::RemoteOutput) -> NodeResult {
    let category = match out.code {
        Some(remote::install_exit::VERIFY) => Category::Verification,
        _ => Category::NodesFailed,
    };
    let msg = remote::stderr_tail(&out.stderr);
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

fn failed(node: &str, category: Category, message: impl Into<String>) -> NodeResult {
    NodeResult {
        node: node.into(),
        status: NodeStatus::Failed,
        // Node text (stderr tails, facts) is escaped where it enters; this is the last line.
        message: crate::transport::escape_node_text(&message.into(), false),
        category: Some(category),
        backup: None,
    }
}

/// A node that needs nothing written, or one a dry run only inspected.
fn done(node: &str, status: NodeStatus, message: String) -> NodeResult {
    NodeResult { node: node.into(), status, message, category: None, backup: None }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_print_as_the_json_names_them() {
        use NodeStatus::*;
        for s in [Installed, Unchanged, Joined, Planned, Skipped, Failed] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.to_string());
        }
    }
}
