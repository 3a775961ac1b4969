//! `hapki renew`: kubeadm's leaf certificates renewed on every control plane, ONE AT A TIME,
//! each node's control-plane components restarted the way kubeadm documents (static-pod
//! manifests moved out of the kubelet's directory and back), and then what each local server
//! PRESENTS over TLS compared with the file on disk — the check `kubeadm certs
//! check-expiration` never makes (an API server still serving last year's certificate).
//!
//! Before a node is touched, every etcd member of the cluster must be healthy (the quorum
//! gate: a restart on a degraded cluster could lose quorum); after its restart the node's own
//! etcd member and API server must be healthy again. A node that fails — kubeadm, a component
//! that does not come back, a served certificate that differs from its file — ends the run:
//! the nodes after it are not touched.
//!
//! The node side is src/node/renew.sh (one exec per node for the renewal, one read-only probe
//! before); this module decides.

pub mod ca;
pub(crate) mod snapshot;

use std::time::{Duration, Instant};

use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::error::Category;
use crate::node::{self, NodePaths};
use crate::pki::parse::ParsedCert;
use crate::transport::{Session, Target, Transport};
use snapshot::{ScriptOutput, Snapshot};

/// The renew script, with join's etcd health check as the function `etcd_health` and the
/// restart fragment it shares with `hapki rotate`.
pub fn script() -> String {
    with_restart(include_str!("../node/renew.sh"))
}

/// `main` preceded by `etcd_health` (join's etcd health check) and src/node/restart.sh's
/// functions (a fragment: its header says which variables the script sets).
pub(crate) fn with_restart(main: &str) -> String {
    format!(
        "etcd_health() (\n{}\n)\n{}{}",
        include_str!("../node/join_etcd_health.sh"),
        include_str!("../node/restart.sh"),
        main
    )
}

/// What `kubeadm certs renew` accepts besides `all` (kubeadm v1.20's names).
pub(crate) const KUBEADM_CERTS: [&str; 10] = [
    "admin.conf",
    "apiserver",
    "apiserver-etcd-client",
    "apiserver-kubelet-client",
    "controller-manager.conf",
    "etcd-healthcheck-client",
    "etcd-peer",
    "etcd-server",
    "front-proxy-client",
    "scheduler.conf",
];

/// The TLS servers of a control plane: port, component, the manifest flag naming its serving
/// certificate, and kubeadm's default for it (none: a self-signed certificate made in memory
/// at every start, as kubeadm leaves the controller-manager and the scheduler).
const SERVERS: [(u16, &str, &str, Option<&str>); 5] = [
    (6443, "kube-apiserver", "--tls-cert-file", Some("apiserver.crt")),
    (2379, "etcd", "--cert-file", Some("etcd/server.crt")),
    (2380, "etcd", "--peer-cert-file", Some("etcd/peer.crt")),
    (10257, "kube-controller-manager", "--tls-cert-file", None),
    (10259, "kube-scheduler", "--tls-cert-file", None),
];

#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    #[error("unknown certificate {0:?} for --only: use kubeadm's names ({names})", names = KUBEADM_CERTS.join(", "))]
    UnknownCert(String),
    #[error("no control plane to renew: the selection holds only workers")]
    NoControlPlane,
}

impl crate::error::Categorized for RenewError {
    fn category(&self) -> Category {
        Category::Usage
    }
}

/// Checks `--only` names against kubeadm's list; empty means `all`.
pub fn validate_only(only: &[String]) -> Result<Vec<String>, RenewError> {
    if only.is_empty() {
        return Ok(vec!["all".into()]);
    }
    for n in only {
        if !KUBEADM_CERTS.contains(&n.as_str()) {
            return Err(RenewError::UnknownCert(n.clone()));
        }
    }
    Ok(only.to_vec())
}

#[derive(Debug, Clone)]
pub struct RenewOptions {
    /// `all`, or kubeadm's names ([`validate_only`]).
    pub certs: Vec<String>,
    pub dry_run: bool,
    /// How long a component may take to stop once its manifest is gone (a kubelet notices
    /// within 20 s and grants 30 s of grace).
    pub stop_timeout: Duration,
    /// How long a component may take to come back, and then to become healthy.
    pub restart_timeout: Duration,
    pub paths: NodePaths,
    /// This run's id, for the nodes' history.
    pub run_id: String,
}

/// A control plane to renew: how to reach it, and the address its servers listen on.
#[derive(Debug, Clone)]
pub struct RenewNode {
    pub target: Target,
    pub address: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RenewStatus {
    Renewed,
    Planned,
    Skipped,
    Failed,
}

impl RenewStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RenewStatus::Renewed => "renewed",
            RenewStatus::Planned => "planned",
            RenewStatus::Skipped => "skipped",
            RenewStatus::Failed => "failed",
        }
    }
}

/// One certificate before and after.
#[derive(Debug, Clone, Serialize)]
pub struct CertChange {
    pub file: String,
    pub old_not_after: Option<String>,
    pub new_not_after: Option<String>,
    pub renewed: bool,
}

/// What one port presents, beside the file it should present.
#[derive(Debug, Clone, Serialize)]
pub struct ServedCheck {
    pub component: String,
    pub port: u16,
    pub address: Option<String>,
    /// The serving certificate file; `None` for a self-signed certificate made in memory.
    pub file: Option<String>,
    pub served_sha256: Option<String>,
    pub served_not_after: Option<String>,
    pub file_sha256: Option<String>,
    pub file_not_after: Option<String>,
    pub ok: bool,
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepRecord {
    pub at: String,
    pub what: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeRenewal {
    pub node: String,
    pub status: RenewStatus,
    pub message: String,
    /// Wall time spent on the node (gate excluded).
    pub seconds: Option<f64>,
    pub certs: Vec<CertChange>,
    pub served: Vec<ServedCheck>,
    pub steps: Vec<StepRecord>,
    #[serde(skip)]
    pub category: Option<Category>,
}

impl NodeRenewal {
    fn new(node: &str, status: RenewStatus, message: impl Into<String>) -> Self {
        NodeRenewal {
            node: node.to_string(),
            status,
            message: message.into(),
            seconds: None,
            certs: Vec::new(),
            served: Vec::new(),
            steps: Vec::new(),
            category: (status == RenewStatus::Failed).then_some(Category::NodesFailed),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RenewReport {
    pub ok: bool,
    pub dry_run: bool,
    pub certs: Vec<String>,
    pub nodes: Vec<NodeRenewal>,
}

/// Progress for the binary: (node, what is happening).
pub type Progress<'a> = &'a (dyn Fn(&str, &str) + Sync);

pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// Renews `nodes` in order (the first master first), one at a time.
pub fn run(
    nodes: &[RenewNode],
    transport: &dyn Transport,
    opts: &RenewOptions,
    progress: Progress,
) -> Result<RenewReport, RenewError> {
    if nodes.is_empty() {
        return Err(RenewError::NoControlPlane);
    }
    let mut run = Run { transport, opts, progress, sessions: Vec::new() };
    let probes = run.probe_all(nodes);
    let mut out = Vec::new();
    let mut stop: Option<String> = None;
    for (i, n) in nodes.iter().enumerate() {
        let name = n.target.name.as_str();
        let r = match (&stop, &probes[i]) {
            (Some(why), _) => NodeRenewal::new(name, RenewStatus::Skipped, why.clone()),
            (None, Err(e)) => NodeRenewal::new(name, RenewStatus::Failed, e.clone()),
            (None, Ok(snap)) if opts.dry_run => plan(name, snap, opts),
            (None, Ok(_)) => match run.gate(nodes, &probes) {
                Err(why) => NodeRenewal::new(name, RenewStatus::Skipped, why),
                Ok(()) => run.renew_one(i, n),
            },
        };
        if stop.is_none() && r.status != RenewStatus::Renewed && r.status != RenewStatus::Planned {
            stop = Some(format!("not touched: {name} did not renew ({})", r.status.as_str()));
        }
        out.push(r);
    }
    let ok = out.iter().all(|r| matches!(r.status, RenewStatus::Renewed | RenewStatus::Planned));
    Ok(RenewReport { ok, dry_run: opts.dry_run, certs: opts.certs.clone(), nodes: out })
}

struct Run<'a> {
    transport: &'a dyn Transport,
    opts: &'a RenewOptions,
    progress: Progress<'a>,
    /// One session per node, opened by the probe and kept for the run.
    sessions: Vec<Option<Box<dyn Session>>>,
}

/// The script's arguments (see its header).
fn script_args<'b>(
    opts: &'b RenewOptions,
    op: &'b str,
    n: &'b RenewNode,
    limits: &'b [String; 2],
) -> Vec<&'b str> {
    let p = &opts.paths;
    let mut a = vec![p.kube_dir.as_str(), p.state_dir.as_str(), op, n.address.as_str()];
    a.extend([limits[0].as_str(), limits[1].as_str(), opts.run_id.as_str()]);
    a.extend(opts.certs.iter().map(String::as_str));
    a
}

/// What a node's certificate files, kubeconfigs' client certificates and TLS servers (probed
/// at `address`, then 127.0.0.1) hold now; read-only.
pub(crate) fn probe(
    session: &mut dyn Session,
    paths: &NodePaths,
    address: &str,
) -> Result<Snapshot, String> {
    let args = [&paths.kube_dir, &paths.state_dir, "probe", address, "1", "1", "probe", "all"];
    let out = session.run(&script(), &args, &mut std::io::empty()).map_err(|e| e.to_string())?;
    if !out.success() {
        return Err(format!("reading the node failed: {}", node::stderr_tail(&out.stderr)));
    }
    Ok(snapshot::parse(&out.stdout).before)
}

/// The stop and restart timeouts in whole seconds (at least one).
fn limits(opts: &RenewOptions) -> [String; 2] {
    [opts.stop_timeout, opts.restart_timeout].map(|d| d.as_secs().max(1).to_string())
}

impl Run<'_> {
    /// Every node's current state (read-only), keeping its session.
    fn probe_all(&mut self, nodes: &[RenewNode]) -> Vec<Result<Snapshot, String>> {
        let mut res = Vec::new();
        for n in nodes {
            (self.progress)(&n.target.name, "reading its certificates and servers");
            let mut session = match self.transport.connect(&n.target) {
                Ok(s) => s,
                Err(e) => {
                    self.sessions.push(None);
                    res.push(Err(e.to_string()));
                    continue;
                }
            };
            res.push(probe(session.as_mut(), &self.opts.paths, &n.address));
            self.sessions.push(Some(session));
        }
        res
    }

    /// The quorum gate: every node with a stacked etcd member (its manifest, or its port
    /// answering at the probe) must report it healthy now; a node that could not be read
    /// counts as degraded (its member's state is unknown).
    fn gate(
        &mut self,
        nodes: &[RenewNode],
        probes: &[Result<Snapshot, String>],
    ) -> Result<(), String> {
        let pki = self.opts.paths.pki_dir();
        for (i, n) in nodes.iter().enumerate() {
            let degraded = |why: &str| {
                format!("not touched: the cluster is degraded (etcd member on {}: {why}); renew again once it is healthy", n.target.name)
            };
            let snap = probes[i].as_ref().map_err(|e| degraded(e))?;
            let member =
                snap.flags.keys().any(|(c, _)| c == "etcd") || snap.served.contains_key(&2379);
            if !member {
                continue;
            }
            let addr = snap.served.get(&2379).map_or(n.address.clone(), |s| s.address.clone());
            let s = self.sessions[i].as_mut().ok_or_else(|| degraded("unreachable"))?;
            let health = include_str!("../node/join_etcd_health.sh");
            match s.run(health, &[&addr, &pki], &mut std::io::empty()) {
                Ok(o) if o.success() => {}
                Ok(o) => return Err(degraded(&node::stderr_tail(&o.stderr))),
                Err(e) => return Err(degraded(&e.to_string())),
            }
        }
        Ok(())
    }

    fn renew_one(&mut self, i: usize, n: &RenewNode) -> NodeRenewal {
        let name = n.target.name.as_str();
        (self.progress)(name, "renewing and restarting its control plane");
        let started = Instant::now();
        let limits = limits(self.opts);
        let script = script();
        let args = script_args(self.opts, "renew", n, &limits);
        let Some(session) = self.sessions[i].as_mut() else {
            return NodeRenewal::new(name, RenewStatus::Failed, "no session");
        };
        let out = session.run(&script, &args, &mut std::io::empty());
        let mut r = match out {
            Err(e) => NodeRenewal::new(name, RenewStatus::Failed, e.to_string()),
            Ok(o) => {
                let parsed = snapshot::parse(&o.stdout);
                let mut r = judge(name, &parsed, &self.opts.paths);
                if !o.success() {
                    r.status = RenewStatus::Failed;
                    r.category = Some(Category::NodesFailed);
                    r.message = format!(
                        "{} (exit {}); the manifests were put back",
                        node::stderr_tail(&o.stderr),
                        o.code.unwrap_or(-1)
                    );
                }
                r
            }
        };
        r.seconds = Some((started.elapsed().as_millis() as f64 / 1000.0 * 10.0).round() / 10.0);
        (self.progress)(name, r.status.as_str());
        r
    }
}

/// The file a port must present: the manifest's flag, else kubeadm's default, else none.
fn expected_file(
    snap: &Snapshot,
    comp: &str,
    flag: &str,
    default: Option<&str>,
    pki: &str,
) -> Option<String> {
    snap.flags
        .get(&(comp.to_string(), flag.to_string()))
        .cloned()
        .or_else(|| default.map(|d| format!("{pki}/{d}")))
}

fn not_after(c: &ParsedCert) -> String {
    rfc3339(c.not_after)
}

/// Served certificate against file for every port that answered (after, or before for a
/// probe), with `before` to tell a restart of a self-signed server.
pub(crate) fn served_checks(
    now: &Snapshot,
    before: Option<&Snapshot>,
    pki: &str,
    restarted: &[String],
) -> Vec<ServedCheck> {
    let mut out = Vec::new();
    for (port, comp, flag, default) in SERVERS {
        let restarted = restarted.iter().any(|r| r == comp);
        let was = before.and_then(|b| b.served.get(&port));
        let served = now.served.get(&port);
        if served.is_none() && was.is_none() {
            continue;
        }
        let file = expected_file(now, comp, flag, default, pki);
        let file_cert = file.as_ref().and_then(|f| now.certs.get(f));
        let cert = served.and_then(|s| s.cert.as_ref());
        let mut c = ServedCheck {
            component: comp.into(),
            port,
            address: served.map(|s| s.address.clone()),
            file: file.clone(),
            served_sha256: cert.map(ParsedCert::cert_sha256),
            served_not_after: cert.map(not_after),
            file_sha256: file_cert.map(ParsedCert::cert_sha256),
            file_not_after: file_cert.map(not_after),
            ok: false,
            message: String::new(),
        };
        c.message = verdict(&c, cert, was.and_then(|w| w.cert.as_ref()), restarted);
        c.ok = c.message.is_empty();
        if c.ok {
            c.message = "presents the file's certificate".into();
            if file.is_none() {
                c.message = "self-signed in memory, new since the restart".into();
            }
        }
        out.push(c);
    }
    out
}

/// Why a served check fails, or empty.
fn verdict(
    c: &ServedCheck,
    cert: Option<&ParsedCert>,
    was: Option<&ParsedCert>,
    restarted: bool,
) -> String {
    let who = format!("{} on :{}", c.component, c.port);
    let Some(cert) = cert else {
        return match c.address {
            None => format!("{who} no longer answers after the restart"),
            Some(_) => format!("{who} presents no certificate hapki could read"),
        };
    };
    match (&c.file, &c.file_sha256) {
        (Some(f), Some(fh)) if *fh != cert.cert_sha256() => format!(
            "{who} still presents a certificate (sha256 {}, notAfter {}) that differs from {f} (sha256 {fh}, notAfter {}){}",
            short(&cert.cert_sha256()),
            not_after(cert),
            c.file_not_after.as_deref().unwrap_or("?"),
            if restarted { " after the restart: the component was not restarted; restart it" } else { "" },
        ),
        (Some(f), None) => format!("{who}: {f} could not be read to compare"),
        (None, _) if restarted && was.is_some_and(|w| w.der == cert.der) => format!(
            "{who} presents the same in-memory certificate as before the restart: it was not restarted"
        ),
        _ => String::new(),
    }
}

fn short(h: &str) -> &str {
    &h[..h.len().min(16)]
}

fn changes(before: &Snapshot, after: Option<&Snapshot>) -> Vec<CertChange> {
    before
        .certs
        .iter()
        .map(|(f, old)| {
            let new = after.and_then(|a| a.certs.get(f));
            CertChange {
                file: f.clone(),
                old_not_after: Some(not_after(old)),
                new_not_after: new.map(not_after),
                renewed: new.is_some_and(|n| n.der != old.der),
            }
        })
        .collect()
}

fn steps(parsed: &ScriptOutput) -> Vec<StepRecord> {
    parsed
        .steps
        .iter()
        .map(|(t, w)| StepRecord {
            at: OffsetDateTime::from_unix_timestamp(*t).map(rfc3339).unwrap_or_default(),
            what: w.clone(),
        })
        .collect()
}

/// The node's outcome from the script's output.
fn judge(name: &str, parsed: &ScriptOutput, paths: &NodePaths) -> NodeRenewal {
    let pki = paths.pki_dir();
    let mut r = NodeRenewal::new(name, RenewStatus::Renewed, "");
    r.certs = changes(&parsed.before, parsed.after.as_ref());
    r.steps = steps(parsed);
    let Some(after) = parsed.after.as_ref() else {
        r.status = RenewStatus::Failed;
        r.category = Some(Category::NodesFailed);
        r.message = "the node's renew script ended early".into();
        return r;
    };
    // The components whose manifests the script moved out.
    let restarted: Vec<String> = parsed
        .steps
        .iter()
        .filter_map(|(_, w)| {
            w.strip_prefix("moved ")?.split_once(".yaml out").map(|(c, _)| c.into())
        })
        .collect();
    r.served = served_checks(after, Some(&parsed.before), &pki, &restarted);
    let bad: Vec<&str> = r.served.iter().filter(|s| !s.ok).map(|s| s.message.as_str()).collect();
    let renewed = r.certs.iter().filter(|c| c.renewed).count();
    if bad.is_empty() {
        r.message = format!(
            "{renewed} certificates renewed; {} servers present their files",
            r.served.len()
        );
    } else {
        r.status = RenewStatus::Failed;
        r.category = Some(Category::NodesFailed);
        r.message = bad.join("; ");
    }
    r
}

/// `--dry-run`: what would be done on the node, from its current state.
fn plan(name: &str, snap: &Snapshot, opts: &RenewOptions) -> NodeRenewal {
    let mut r = NodeRenewal::new(name, RenewStatus::Planned, "");
    r.certs = changes(snap, None);
    r.served = served_checks(snap, None, &opts.paths.pki_dir(), &[]);
    let running: Vec<&str> = SERVERS
        .iter()
        .filter(|(p, ..)| snap.served.contains_key(p))
        .map(|(_, c, ..)| *c)
        .fold(Vec::new(), |mut v, c| {
            if !v.contains(&c) {
                v.push(c);
            }
            v
        });
    let mut what = vec![
        "wait until every etcd member is healthy".to_string(),
        format!("kubeadm certs renew {}", opts.certs.join(" ")),
        "move kube-apiserver.yaml out of the manifests, wait until it stops".into(),
        "move etcd, kube-controller-manager, kube-scheduler out, wait until they stop".into(),
        "move them back (etcd first, wait until its member is healthy), kube-apiserver last, wait until healthy".into(),
        format!("compare what {} present with their files", running.join(", ")),
    ];
    r.steps = what.drain(..).map(|w| StepRecord { at: String::new(), what: w }).collect();
    r.message = format!("would renew {} and restart {}", opts.certs.join(","), running.join(", "));
    r
}

#[cfg(test)]
mod tests;
