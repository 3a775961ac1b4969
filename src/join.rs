//! `hapki join`: `kubeadm join` without a certificate key, control planes strictly one at a
//! time (each adds a stacked etcd member, and etcd loses quorum if two join at once), each
//! waited on until its etcd member is healthy, then workers in parallel.
//!
//! hapki never passes `--certificate-key` (the shared files are already on the nodes) nor
//! `--discovery-token-unsafe-skip-ca-verification` (the CA hash is always pinned). The token's
//! secret half never reaches output or logs (every line kept is redacted first), nor any
//! program's argv on any machine: it travels on stdin into a 0600 `JoinConfiguration` on the
//! node (src/node/join.sh) and kubeadm runs with `--config`. A token hapki minted is deleted
//! (by its id) when the joins end, whatever their outcome.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cluster::{ClusterNode, Reference};
use crate::error::{Categorized, Category};
use crate::inventory::Role;
use crate::node::{self, NodePaths};
use crate::preflight::PreflightReport;
use crate::push::NodeStatus;
use crate::transport::{Session, Target, Transport, TransportError};

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("invalid bootstrap token: it must look like abcdef.0123456789abcdef ([a-z0-9]{{6}}.[a-z0-9]{{16}}); create one with kubeadm token create")]
    BadToken,
    #[error("could not mint a join token on the first master {node}: {reason}")]
    Mint { node: String, reason: String },
    #[error("could not mint a join token on the first master {node}: {source}")]
    MintTransport { node: String, source: Box<TransportError> },
    #[error("the inventory has no control-plane node: a join needs the first master (role control-plane) to mint the token and pin the CA")]
    NoControlPlane,
    #[error("the first master has no /etc/kubernetes/pki/ca.crt: push the bundle and kubeadm init it first")]
    NoFirstMasterCa,
    #[error(transparent)]
    FirstMasterCa(#[from] crate::pki::PkiError),
    #[error("kubeadm on {node} prints CA hash {kubeadm}, but the bundle's ca.crt gives {ours}: the first master holds another CA; push the right bundle first")]
    HashMismatch { node: String, kubeadm: String, ours: String },
    #[error("could not write the run directory {path}: {source}")]
    RunDir { path: PathBuf, source: std::io::Error },
    #[error("the run directory {path} {why}: kubeadm's output must not be readable or replaceable by others; remove it or pass another --run-dir")]
    UnsafeRunDir { path: PathBuf, why: String },
    #[error("--kubeadm-arg {arg} is refused: {why}")]
    RefusedArg { arg: String, why: &'static str },
    #[error("invalid control-plane endpoint {0:?}: it must be HOST:PORT (letters, digits, '.', '-', ':', '[', ']'); fix control_plane_endpoint in the inventory")]
    BadEndpoint(String),
}

impl Categorized for JoinError {
    fn category(&self) -> Category {
        match self {
            JoinError::BadToken => Category::Usage,
            JoinError::HashMismatch { .. } => Category::Verification,
            JoinError::Mint { .. } => Category::NodesFailed,
            JoinError::MintTransport { source, .. } => source.category(),
            JoinError::NoFirstMasterCa | JoinError::NoControlPlane => Category::Usage,
            JoinError::FirstMasterCa(e) => e.category(),
            JoinError::RunDir { .. } => Category::Unexpected,
            JoinError::UnsafeRunDir { .. } => Category::Usage,
            JoinError::RefusedArg { .. } | JoinError::BadEndpoint(_) => Category::Usage,
        }
    }
}

/// Checks the bootstrap-token format (`[a-z0-9]{6}\.[a-z0-9]{16}`).
pub(crate) fn validate_token(token: &str) -> Result<(), JoinError> {
    let ok = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    match token.split_once('.') {
        Some((id, secret)) if ok(id, 6) && ok(secret, 16) => Ok(()),
        _ => Err(JoinError::BadToken),
    }
}

/// The token with its secret half hidden: safe for output and logs.
pub(crate) fn redact_token(token: &str) -> String {
    match token.split_once('.') {
        Some((id, _)) => format!("{id}.<redacted>"),
        None => "<redacted>".into(),
    }
}

/// Replaces every occurrence of the token's secret in `text`.
pub(crate) fn redact_text(text: &str, token: &str) -> String {
    match token.split_once('.') {
        Some((_, secret)) if !secret.is_empty() => text.replace(secret, "<redacted>"),
        _ => text.to_string(),
    }
}

/// Why an extra kubeadm argument is refused, if it is: the ones that carry or skip secrets
/// hapki handles itself, and the config file hapki writes.
fn refusal(arg: &str) -> Option<&'static str> {
    let flag = arg.split_once('=').map_or(arg, |(f, _)| f);
    match flag {
        "--certificate-key" => Some("hapki pushes the shared certificates; a certificate key would download them from the cluster's kubeadm-certs Secret instead"),
        "--discovery-token-unsafe-skip-ca-verification" => Some("hapki always pins the cluster CA with the hash it computed; skipping that check lets any server impersonate the cluster"),
        "--config" => Some("hapki writes the JoinConfiguration itself (the token travels in it, never in argv)"),
        f if f.contains("token") => Some("a token on a command line is visible to every user in the process list; give it with HAPKI_JOIN_TOKEN or --token-file, or let hapki mint one"),
        _ => None,
    }
}

/// Checks the extra arguments for `kubeadm join` (e.g. `--skip-phases=…`,
/// `--ignore-preflight-errors=…`): the ones that carry secrets or skip the CA pin are refused.
pub(crate) fn validate_kubeadm_args(args: &[String]) -> Result<(), JoinError> {
    for a in args {
        if let Some(why) = refusal(a) {
            // The flag only: its value may be the very secret being kept out of sight.
            let flag = a.split_once('=').map_or(a.as_str(), |(f, _)| f);
            return Err(JoinError::RefusedArg { arg: flag.to_string(), why });
        }
    }
    Ok(())
}

/// Checks the endpoint before it goes into the node's JoinConfiguration.
pub(crate) fn validate_endpoint(endpoint: &str) -> Result<(), JoinError> {
    let ok = !endpoint.is_empty()
        && endpoint.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    ok.then_some(()).ok_or_else(|| JoinError::BadEndpoint(endpoint.to_string()))
}

/// The node script's arguments for one node: endpoint, CA hash, role, advertise address, then
/// the extra kubeadm arguments. The token is not among them: it goes on stdin.
pub(crate) fn join_args(
    endpoint: &str,
    ca_hash: &str,
    node: &ClusterNode,
    extra: &[String],
) -> Vec<String> {
    let (role, adv) = match node.role {
        Role::ControlPlane => ("control-plane", node.join_advertise_address().unwrap_or_default()),
        Role::Worker => ("worker", String::new()),
    };
    let mut a = vec![endpoint.to_string(), ca_hash.to_string(), role.to_string(), adv];
    a.extend(extra.iter().cloned());
    a
}

/// What the node runs, for people: the JoinConfiguration's contents (token redacted) and
/// kubeadm's command line.
pub(crate) fn describe_join(token: &str, args: &[String]) -> String {
    let [endpoint, hash, role, adv, extra @ ..] = args else { return String::new() };
    let mut config = format!(
        "apiServerEndpoint: {endpoint}, token: {}, caCertHashes: [{hash}]",
        redact_token(token)
    );
    if role == "control-plane" {
        config.push_str(", controlPlane");
        if !adv.is_empty() {
            config.push_str(&format!(" (advertiseAddress: {adv})"));
        }
    }
    let mut cmd = format!("kubeadm join --config <0600 JoinConfiguration: {config}>");
    for e in extra {
        cmd.push(' ');
        cmd.push_str(e);
    }
    cmd
}

/// Parses `kubeadm token create --print-join-command` (spacing varies between versions, so it
/// splits on whitespace) into (token, hash).
pub(crate) fn parse_join_command(line: &str) -> (Option<String>, Option<String>) {
    let words: Vec<&str> = line.split_whitespace().collect();
    let after = |flag: &str| {
        words.iter().position(|w| *w == flag).and_then(|i| words.get(i + 1)).map(|s| s.to_string())
    };
    (after("--token"), after("--discovery-token-ca-cert-hash"))
}

#[derive(Debug, Clone, Serialize)]
pub struct JoinResult {
    pub node: String,
    pub status: NodeStatus,
    pub message: String,
    /// The command, with the token secret redacted.
    pub command: String,
    /// For a node that failed or was skipped: which exit-code class that is in.
    #[serde(skip)]
    pub category: Option<Category>,
}

impl JoinResult {
    fn new(node: &str, status: NodeStatus, message: String, command: String) -> Self {
        let category = match status {
            NodeStatus::Failed | NodeStatus::Skipped => Some(Category::NodesFailed),
            _ => None,
        };
        JoinResult { node: node.to_string(), status, message, command, category }
    }

    /// A node that was not attempted.
    fn skipped(node: &str, why: &str) -> Self {
        JoinResult::new(node, NodeStatus::Skipped, format!("not attempted: {why}"), String::new())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct JoinReport {
    pub ok: bool,
    pub discovery_token_ca_cert_hash: String,
    pub token: String,
    /// For a token hapki minted: whether `kubeadm token delete` removed it after the joins
    /// (`deleted`, or why not); absent for a token the operator gave.
    pub token_cleanup: Option<String>,
    pub run_dir: Option<String>,
    pub nodes: Vec<JoinResult>,
}

impl JoinReport {
    /// What the exit code says: `None` when every node joined (or would, in a dry run), else
    /// the worst category among the nodes that failed or were skipped (exit 5, or 4 for a
    /// host key).
    pub fn category(&self) -> Option<Category> {
        Category::worst(self.nodes.iter().filter_map(|n| n.category))
    }
}

/// How a join ended: refused by preflight (nothing joined), or the joins' report.
#[derive(Debug, Clone)]
pub enum JoinOutcome {
    Refused(PreflightReport),
    Joined(JoinReport),
}

#[derive(Debug, Clone)]
pub struct JoinOptions {
    pub endpoint: String,
    pub token: Option<String>,
    /// `sha256:<hex>`, the bundle's; `None`: computed from the first master's ca.crt as
    /// preflight read it (never taken on trust from the network).
    pub ca_hash: Option<String>,
    pub dry_run: bool,
    pub parallel: usize,
    pub paths: NodePaths,
    /// How long to wait for a new control plane's etcd member to become healthy.
    pub etcd_timeout: Duration,
    /// Copy the first master's /etc/cni/net.d to workers before they join.
    pub copy_cni_config: bool,
    /// Where kubeadm's output is kept per node (created 0700).
    pub run_dir: PathBuf,
    /// Extra `kubeadm join` arguments (checked by `validate_kubeadm_args`).
    pub kubeadm_args: Vec<String>,
}

/// Progress for the binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    MintingToken,
    Joining,
    WaitingForEtcd,
    Done,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Step::MintingToken => "minting a token",
            Step::Joining => "joining",
            Step::WaitingForEtcd => "waiting for etcd",
            Step::Done => "done",
        })
    }
}

const RUN_KUBEADM: &str = include_str!("node/run_kubeadm.sh");

/// `kubeadm join --config` on the node, the token on stdin (see the script's header).
const JOIN_SCRIPT: &str = include_str!("node/join.sh");

/// Checks the new member's etcd endpoint with the node's own healthcheck client certificate:
/// etcdctl when the node has it, else curl.
const ETCD_HEALTH: &str = include_str!("node/join_etcd_health.sh");

/// Reads the first master's CNI config (file names and contents; public configuration).
const READ_CNI: &str = include_str!("node/join_read_cni.sh");

/// Writes one CNI config file atomically (content on stdin) and restarts kubelet if systemd runs.
const WRITE_CNI: &str = include_str!("node/join_write_cni.sh");

const RESTART_KUBELET: &str = include_str!("node/restart_kubelet.sh");

struct Ctx<'a> {
    transport: &'a dyn Transport,
    opts: &'a JoinOptions,
    token: String,
    ca_hash: String,
    progress: &'a (dyn Fn(&str, Step) + Sync),
}

impl Ctx<'_> {
    /// Appends to the node's log. Either way the text is for the node's message: where the
    /// output is, or that it could not be kept (rather than point at a file that is not there).
    fn keep_log(&self, node: &str, text: &str) -> Result<String, String> {
        let path = self.opts.run_dir.join(format!("{node}.log"));
        let redacted = redact_text(text, &self.token);
        let written = open_log(&path).and_then(|mut f| f.write_all(redacted.as_bytes()));
        match written {
            Ok(()) => Ok(format!("full output in {}", path.display())),
            Err(e) => Err(format!("the output could not be kept in {} ({e})", path.display())),
        }
    }

    fn join_one(&self, n: &ClusterNode, wait_etcd: bool) -> JoinResult {
        let args = join_args(&self.opts.endpoint, &self.ca_hash, n, &self.opts.kubeadm_args);
        let shown = redact_text(&describe_join(&self.token, &args), &self.token);
        let name = n.name();
        let result =
            |status, message: String| JoinResult::new(name, status, message, shown.clone());
        let transport_failed = |e: TransportError| JoinResult {
            category: Some(e.category()),
            ..result(NodeStatus::Failed, e.to_string())
        };
        if self.opts.dry_run {
            return result(NodeStatus::Planned, "would run the command shown".into());
        }
        (self.progress)(name, Step::Joining);
        let mut session = match self.transport.connect(&n.target) {
            Ok(s) => s,
            Err(e) => return transport_failed(e),
        };
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let stdin = format!("{}\n", self.token);
        let out = match session.run(JOIN_SCRIPT, &argv, &mut stdin.as_bytes()) {
            Ok(o) => o,
            Err(e) => return transport_failed(e),
        };
        let text = format!(
            "$ {shown}\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let log = self.keep_log(name, &text);
        let lost = log.as_ref().err().map(|e| format!(" ({e})")).unwrap_or_default();
        let log = log.unwrap_or_else(|e| e);
        if out.code.unwrap_or(-1) != 0 {
            let tail = redact_text(&kubeadm_error(&out.stderr), &self.token);
            return result(
                NodeStatus::Failed,
                format!("kubeadm join failed (exit {}): {tail}; {log}", out.code.unwrap_or(-1)),
            );
        }
        if wait_etcd {
            (self.progress)(name, Step::WaitingForEtcd);
            let addr = n.join_advertise_address().unwrap_or_else(|| n.target.host.clone());
            if let Err(e) = self.wait_etcd(session.as_mut(), &addr) {
                let log = self.keep_log(name, &format!("etcd health: {e}\n")).unwrap_or_else(|e| e);
                return result(
                    NodeStatus::Failed,
                    format!("joined, but its etcd member did not become healthy: {e}; {log}"),
                );
            }
        }
        (self.progress)(name, Step::Done);
        let what = if wait_etcd { "joined; etcd member healthy" } else { "joined" };
        result(NodeStatus::Joined, format!("{what}{lost}"))
    }

    fn wait_etcd(&self, session: &mut dyn Session, addr: &str) -> Result<(), String> {
        let pki = self.opts.paths.pki_dir();
        let deadline = Instant::now() + self.opts.etcd_timeout;
        loop {
            let out = session
                .run(ETCD_HEALTH, &[addr, &pki], &mut std::io::empty())
                .map_err(|e| e.to_string())?;
            if out.code.unwrap_or(-1) == 0 {
                return Ok(());
            }
            if out.code.unwrap_or(-1) == 2 || Instant::now() >= deadline {
                return Err(node::stderr_tail(&out.stderr));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// The line of kubeadm's stderr that says what went wrong: the last one, skipping the generic
/// "To see the stack trace…" footer kubeadm prints after every error.
fn kubeadm_error(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    text.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("To see the stack trace"))
        .unwrap_or("")
        .chars()
        .take(300)
        .collect()
}

/// Opens a node's log for appending: 0600 when created (kubeadm's output names the cluster's
/// internals), never through a symlink, and only a regular file of ours.
fn open_log(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let m = f.metadata()?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if !m.is_file() || m.uid() != me || m.nlink() != 1 || m.mode() & 0o077 != 0 {
        return Err(std::io::Error::other(
            "not a private regular file of ours (planted there?); remove it",
        ));
    }
    Ok(f)
}

/// Mints a token on the first master and cross-checks kubeadm's hash against ours.
fn mint_token(
    transport: &dyn Transport,
    first: &Target,
    ca_hash: &str,
) -> Result<String, JoinError> {
    let mint = |reason: String| JoinError::Mint { node: first.name.clone(), reason };
    let transport_failed = |e: TransportError| JoinError::MintTransport {
        node: first.name.clone(),
        source: Box::new(e),
    };
    let mut s = transport.connect(first).map_err(transport_failed)?;
    let out = s
        .run(
            RUN_KUBEADM,
            &["token", "create", "--ttl", "1h", "--print-join-command"],
            &mut std::io::empty(),
        )
        .map_err(transport_failed)?;
    if out.code.unwrap_or(-1) != 0 {
        return Err(mint(format!(
            "kubeadm token create failed: {}",
            node::stderr_tail(&out.stderr)
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains("--token")).unwrap_or("");
    let (token, hash) = parse_join_command(line);
    let token = token.ok_or_else(|| mint("kubeadm printed no join command".into()))?;
    validate_token(&token).map_err(|_| mint("kubeadm printed a malformed token".into()))?;
    if let Some(h) = hash {
        if h != ca_hash {
            // Nothing will join with it: it must not stay valid for its hour.
            delete_token(transport, first, &token);
            return Err(JoinError::HashMismatch {
                node: first.name.clone(),
                kubeadm: h,
                ours: ca_hash.into(),
            });
        }
    }
    Ok(token)
}

/// Deletes a token hapki minted, by its id only (the secret never goes on a command line).
fn delete_token(transport: &dyn Transport, first: &Target, token: &str) -> String {
    let id = token.split_once('.').map_or(token, |(id, _)| id);
    let deleted = transport.connect(first).map_err(|e| e.to_string()).and_then(|mut s| {
        s.run(RUN_KUBEADM, &["token", "delete", id], &mut std::io::empty())
            .map_err(|e| e.to_string())
    });
    match deleted {
        Ok(o) if o.success() => "deleted".into(),
        Ok(o) => format!(
            "not deleted: {}; delete it with `kubeadm token delete {id}` on {}",
            node::stderr_tail(&o.stderr),
            first.name
        ),
        Err(e) => format!(
            "not deleted: {e}; delete it with `kubeadm token delete {id}` on {}",
            first.name
        ),
    }
}

fn copy_cni(
    transport: &dyn Transport,
    first: &Target,
    workers: &[&ClusterNode],
) -> Result<(), String> {
    use base64::Engine;
    let mut s = transport.connect(first).map_err(|e| e.to_string())?;
    let out = s.run(READ_CNI, &[], &mut std::io::empty()).map_err(|e| e.to_string())?;
    let mut files = Vec::new();
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        let mut it = l.splitn(3, ' ');
        if let (Some("F"), Some(name), Some(data)) = (it.next(), it.next(), it.next()) {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .map_err(|e| e.to_string())?;
            if !name.contains('/') && !name.starts_with('.') {
                files.push((name.to_string(), bytes));
            }
        }
    }
    if files.is_empty() {
        return Err(format!("{} has no CNI config in /etc/cni/net.d to copy", first.name));
    }
    for w in workers {
        let mut s = transport.connect(&w.target).map_err(|e| e.to_string())?;
        for (name, bytes) in &files {
            let mut data: &[u8] = bytes;
            let o = s.run(WRITE_CNI, &[name], &mut data).map_err(|e| e.to_string())?;
            if o.code.unwrap_or(-1) != 0 {
                return Err(format!("{}: {}", w.target.name, node::stderr_tail(&o.stderr)));
            }
        }
        let _ = s.run(RESTART_KUBELET, &[], &mut std::io::empty());
    }
    Ok(())
}

impl JoinOptions {
    /// Everything that can be refused before any node is contacted: the endpoint, the extra
    /// kubeadm arguments, the token's format, and the run directory (created 0700 unless this
    /// is a dry run).
    pub fn check(&self) -> Result<(), JoinError> {
        validate_endpoint(&self.endpoint)?;
        validate_kubeadm_args(&self.kubeadm_args)?;
        if let Some(t) = &self.token {
            validate_token(t)?;
        }
        if !self.dry_run {
            create_run_dir(&self.run_dir)?;
        }
        Ok(())
    }
}

/// `hapki join`: [`JoinOptions::check`], preflight on every node (nothing joins unless it is
/// clean; with `copy_cni_config` a worker without CNI config is only a warning), the CA hash
/// (the bundle's, else computed here from the first master's ca.crt), then the joins: the
/// first control plane in `nodes` is the first master and is not joined.
pub fn run(
    nodes: &[ClusterNode],
    transport: &dyn Transport,
    reference: Option<Reference>,
    opts: &JoinOptions,
    progress: &(dyn Fn(&str, Step) + Sync),
) -> Result<JoinOutcome, JoinError> {
    opts.check()?;
    let endpoint = Some(opts.endpoint.as_str());
    let mut report =
        crate::preflight::run(nodes, endpoint, transport, reference, opts.parallel, &opts.paths);
    if opts.copy_cni_config {
        report.accept_missing_cni();
    }
    if !report.ok {
        return Ok(JoinOutcome::Refused(report));
    }
    let ca_hash = match &opts.ca_hash {
        Some(h) => h.clone(),
        None => {
            let pem = report.first_master_ca.as_deref().ok_or(JoinError::NoFirstMasterCa)?;
            crate::pki::parse::parse_certificate("ca.crt", pem)?.discovery_hash()
        }
    };
    join_nodes(nodes, transport, opts, ca_hash, progress).map(JoinOutcome::Joined)
}

/// The joins themselves, after preflight: the token (given, or minted on the first master and
/// deleted afterwards), then [`join_all`].
fn join_nodes(
    nodes: &[ClusterNode],
    transport: &dyn Transport,
    opts: &JoinOptions,
    ca_hash: String,
    progress: &(dyn Fn(&str, Step) + Sync),
) -> Result<JoinReport, JoinError> {
    let first = crate::cluster::first_master(nodes).map(|i| &nodes[i]);
    let minted = opts.token.is_none() && !opts.dry_run;
    let token = match (&opts.token, first) {
        (Some(t), _) => t.clone(),
        (None, _) if opts.dry_run => "<minted>.<redacted>".into(),
        (None, Some(f)) => {
            progress(f.name(), Step::MintingToken);
            mint_token(transport, &f.target, &ca_hash)?
        }
        (None, None) => return Err(JoinError::NoControlPlane),
    };
    let ctx = Ctx { transport, opts, token: token.clone(), ca_hash, progress };
    let results = join_all(&ctx, nodes, first);
    let token_cleanup = match first {
        Some(f) if minted => Some(delete_token(transport, &f.target, &token)),
        _ => None,
    };
    let ok = results.iter().all(|r| matches!(r.status, NodeStatus::Joined | NodeStatus::Planned))
        && token_cleanup.as_deref().is_none_or(|c| c == "deleted");
    Ok(JoinReport {
        ok,
        discovery_token_ca_cert_hash: ctx.ca_hash,
        token: redact_token(&token),
        token_cleanup,
        run_dir: (!opts.dry_run).then(|| opts.run_dir.display().to_string()),
        nodes: results,
    })
}

/// The control planes but the first one at a time (after a failure the rest are skipped),
/// then the workers in parallel.
fn join_all(ctx: &Ctx, nodes: &[ClusterNode], first: Option<&ClusterNode>) -> Vec<JoinResult> {
    let mut results = Vec::new();
    let mut failed_cp = false;
    for n in nodes.iter().filter(|n| n.role == Role::ControlPlane) {
        if Some(n.name()) == first.map(ClusterNode::name) {
            continue;
        }
        if failed_cp {
            results.push(JoinResult::skipped(n.name(), "an earlier control-plane join failed"));
            continue;
        }
        let r = ctx.join_one(n, true);
        failed_cp = r.status == NodeStatus::Failed;
        results.push(r);
    }
    let workers: Vec<&ClusterNode> = nodes.iter().filter(|n| n.role == Role::Worker).collect();
    if failed_cp {
        let skip = |w: &&ClusterNode| JoinResult::skipped(w.name(), "a control-plane join failed");
        results.extend(workers.iter().map(skip));
    } else {
        results.extend(join_workers(ctx, &workers, first));
    }
    results
}

/// The workers in parallel, after copying the first master's CNI config to them if asked.
fn join_workers(
    ctx: &Ctx,
    workers: &[&ClusterNode],
    first: Option<&ClusterNode>,
) -> Vec<JoinResult> {
    let opts = ctx.opts;
    if opts.copy_cni_config && !opts.dry_run && !workers.is_empty() {
        if let Some(Err(e)) = first.map(|f| copy_cni(ctx.transport, &f.target, workers)) {
            let failed = |w: &&ClusterNode| {
                let message = format!("copying the CNI config failed: {e}");
                JoinResult::new(w.name(), NodeStatus::Failed, message, String::new())
            };
            return workers.iter().map(failed).collect();
        }
    }
    crate::transport::for_each_parallel(workers, opts.parallel.max(1), |w| ctx.join_one(w, false))
}

/// Creates the run directory 0700, or accepts an existing one only if it is a real directory
/// (not a link) of ours that nobody else can write to.
pub(crate) fn create_run_dir(path: &Path) -> Result<(), JoinError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let unsafe_dir = |why: String| JoinError::UnsafeRunDir { path: path.to_path_buf(), why };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|source| JoinError::RunDir { path: parent.to_path_buf(), source })?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(source) => return Err(JoinError::RunDir { path: path.to_path_buf(), source }),
    }
    let m = std::fs::symlink_metadata(path)
        .map_err(|source| JoinError::RunDir { path: path.to_path_buf(), source })?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if m.file_type().is_symlink() {
        return Err(unsafe_dir("is a symbolic link".into()));
    }
    if !m.is_dir() {
        return Err(unsafe_dir("exists and is not a directory".into()));
    }
    if m.uid() != me {
        return Err(unsafe_dir(format!("is owned by uid {}, not by you (uid {me})", m.uid())));
    }
    if m.mode() & 0o022 != 0 {
        return Err(unsafe_dir(format!("is writable by others (mode {:o})", m.mode() & 0o7777)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_are_never_opened_through_a_link_or_as_a_shared_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, b"x").unwrap();
        let link = dir.path().join("n.log");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(open_log(&link).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"x");
        let loose = dir.path().join("loose.log");
        std::fs::write(&loose, b"").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(open_log(&loose).is_err(), "a log others can read is not reused");
        let fresh = dir.path().join("fresh.log");
        open_log(&fresh).unwrap();
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    /// The node script with a fake `kubeadm` that reports `version` and copies the config it
    /// is given: (exit code, the config, its mode as `stat` reports it, kubeadm's argv).
    fn run_join_script(version: &str, role: &str) -> (i32, String, String, String) {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("kubeadm");
        let out = dir.path().join("seen");
        std::fs::write(
            &fake,
            format!(
                "#!/bin/sh\ncase $1 in version) echo {version} ;; join) shift; \
                 cp \"$2\" {o}.yaml; stat -c %a \"$2\" > {o}.mode; echo \"$*\" > {o}.argv ;; esac\n",
                o = out.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path =
            format!("{}:{}", dir.path().display(), std::env::var("PATH").unwrap_or_default());
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(JOIN_SCRIPT)
            .args(["hapki", "kubeapi.test:6443", &format!("sha256:{}", "ab".repeat(32)), role])
            .args(["10.0.0.2", "--skip-phases=addon/kube-proxy"])
            .env("PATH", path)
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(b"abcdef.0123456789abcdef\n").unwrap();
        let code = child.wait().unwrap().code().unwrap_or(-1);
        let read = |ext: &str| {
            std::fs::read_to_string(out.with_extension(ext)).unwrap_or_default().trim().to_string()
        };
        (code, read("yaml"), read("mode"), read("argv"))
    }

    #[test]
    fn join_configuration_version_follows_the_nodes_kubeadm() {
        for (version, api) in [
            ("v1.15.0", "v1beta2"),
            ("v1.20.2", "v1beta2"),
            ("v1.21.14", "v1beta2"),
            ("v1.22.0", "v1beta3"),
            ("v1.30.4", "v1beta3"),
            ("v1.31.2", "v1beta4"),
            ("v1.34.1", "v1beta4"),
        ] {
            let (code, yaml, mode, argv) = run_join_script(version, "control-plane");
            assert_eq!(code, 0, "{version}");
            assert!(
                yaml.starts_with(&format!("apiVersion: kubeadm.k8s.io/{api}\n")),
                "{version}: {yaml}"
            );
            assert_eq!(mode, "600", "{version}");
            assert!(yaml.contains("token: \"abcdef.0123456789abcdef\""), "{yaml}");
            assert!(yaml.contains("advertiseAddress: \"10.0.0.2\""), "{yaml}");
            assert!(
                argv.starts_with("--config ") && argv.ends_with(" --skip-phases=addon/kube-proxy")
            );
            assert!(!argv.contains("0123456789abcdef"), "{argv}");
        }
        let (code, yaml, _, _) = run_join_script("v1.14.10", "worker");
        assert_eq!(code, 2, "kubeadm 1.14 is refused");
        assert!(yaml.is_empty());
        let (code, yaml, _, _) = run_join_script("v1.20.2", "worker");
        assert_eq!(code, 0);
        assert!(!yaml.contains("controlPlane"), "{yaml}");
    }

    #[test]
    fn secret_carrying_kubeadm_args_are_refused() {
        for bad in [
            "--certificate-key=abc",
            "--certificate-key",
            "--token=abcdef.0123456789abcdef",
            "--discovery-token=x",
            "--tls-bootstrap-token",
            "--discovery-token-unsafe-skip-ca-verification",
            "--config=/tmp/x",
        ] {
            assert!(validate_kubeadm_args(&[bad.to_string()]).is_err(), "{bad}");
        }
        let ok =
            ["--skip-phases=control-plane-join/etcd", "--ignore-preflight-errors=all", "--v=5"];
        assert!(validate_kubeadm_args(&ok.map(String::from)).is_ok());
    }

    #[test]
    fn token_format() {
        assert!(validate_token("abcdef.0123456789abcdef").is_ok());
        for bad in [
            "",
            "abcdef",
            "ABCDEF.0123456789abcdef",
            "abcde.0123456789abcdef",
            "abcdef.0123456789abcde",
            "abcdef.0123456789abcdef.x",
            "abcdef-0123456789abcdef",
        ] {
            assert!(validate_token(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn redaction_hides_only_the_secret() {
        let t = "abcdef.0123456789abcdef";
        assert_eq!(redact_token(t), "abcdef.<redacted>");
        let line = format!("kubeadm join x --token {t} --discovery-token-ca-cert-hash sha256:00");
        let r = redact_text(&line, t);
        assert!(!r.contains("0123456789abcdef"));
        assert!(r.contains("abcdef.<redacted>"));
    }

    #[test]
    fn join_command_parsing_splits_on_whitespace() {
        let (t, h) = parse_join_command("kubeadm join kubeapi:6443 --token  abcdef.0123456789abcdef \t --discovery-token-ca-cert-hash sha256:ff ");
        assert_eq!(t.as_deref(), Some("abcdef.0123456789abcdef"));
        assert_eq!(h.as_deref(), Some("sha256:ff"));
    }
}
