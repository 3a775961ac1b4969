//! One node of a push, on one SSH exec: connect, let the node print its facts, decide while the
//! command waits ([`super::exchange`]), then send the decision, the small parts and (in a
//! streamed pass) the artifacts it lacks on the same stdin, and read what the install reported.
//! A worker whose facts show an older same-key `ca.crt` than the bundle's gets a second exec on
//! the same session, after its artifacts: `renew_ca.sh`, the worker path of `hapki pki
//! renew-ca` (the certificate and its kubeconfigs' CA data; never a key).

use std::collections::BTreeSet;
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::artifacts::{self, After};
use crate::bundle::ManifestArtifact;
use crate::error::Category;
use crate::inventory::Role;
use crate::node::{self as remote, facts::NodeFacts, facts::PathKind};
use crate::pki::renew::{classify_reissue, Reissue};
use crate::transport::{RemoteOutput, Session, TransportError};

use super::exchange::{DecisionSource, Exchange, FactsSink};
use super::stream::{ChannelReader, Head, Link, Ready, ReadySignal};
use super::{done, failed, plan, Event, NodeResult, NodeStatus, NodeTarget, Plan, PushRun, Step};

/// How long a node may take to print its facts when they hash artifacts already at their
/// destinations: minutes for tens of GiB (4 GiB took 5 s here), so an hour is generous; it
/// bounds a hostile node that trickles its facts below the size cap, keeping the transport's
/// idle timeout from being reset for ever. Without artifacts the facts are a few stat calls and
/// hashes: the connect timeout and a minute.
const FACTS_DEADLINE: Duration = Duration::from_secs(3600);
const PKI_FACTS_DEADLINE: Duration = Duration::from_secs(60);

/// One node's push. `None` when the node has nothing to do with this bundle (a worker and a
/// PKI-only bundle, say).
pub(super) fn push_node(
    run: &PushRun<'_>,
    t: &NodeTarget,
    head: &Head,
    link: Link<'_>,
) -> Option<NodeResult> {
    let Link { ready, data } = link;
    let job = Job::new(run, t, head, ready.as_ref())?;
    let name = job.name;
    let progress = |s| (run.progress)(name, Event::Step(s));
    progress(Step::Connecting);
    let mut target = t.node.target.clone();
    target.bulk = !job.mine.is_empty();
    // One command, but for a worker whose CA certificate may need its second exec.
    let session = match job.worker_ca {
        true => run.transport.connect(&target),
        false => run.transport.connect_once(&target),
    };
    let mut session = match session {
        Ok(s) => s,
        Err(e) => {
            use crate::error::Categorized;
            return Some(failed(name, e.category(), e.to_string()));
        }
    };
    progress(Step::Inspecting);
    let deadline = match job.mine.is_empty() {
        true => t.node.target.connect_timeout + PKI_FACTS_DEADLINE,
        false => FACTS_DEADLINE,
    };
    // The decision runs on the transport's thread while the command waits for it. Past the
    // deadline without facts, stdin ends; in a streamed pass the channel reader then tells the
    // pass this node wants nothing, so neither waits on the other.
    let exchange = Exchange::new(deadline, |out| job.on_facts(out));
    let report = |sent| job.sending(sent);
    let mut stdin =
        DecisionSource(exchange.clone()).chain(ChannelReader::new(data, ready.as_ref(), &report));
    let mut stdout = FactsSink(exchange.clone());
    let args = job.args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = session.run_streaming(&remote::push_script(), &args, &mut stdin, &mut stdout);
    drop(stdin);
    progress(Step::Done);
    let decision = job.decided.lock().unwrap_or_else(|p| p.into_inner()).take();
    if matches!(decision, Some(NodeDecision::Nothing)) {
        return None;
    }
    let after = exchange.after_facts();
    let result = job.outcome(out, decision, &String::from_utf8_lossy(&after));
    Some(job.update_worker_ca(session.as_mut(), result))
}

/// One node's part in a pass, and what its facts decided.
struct Job<'a> {
    run: &'a PushRun<'a>,
    name: &'a str,
    head: &'a Head,
    /// The node gets the PKI (a control plane other than the first master, and the bundle has
    /// it).
    pki: bool,
    /// The artifacts (index, entry) for the node's role.
    mine: Vec<(usize, &'a ManifestArtifact)>,
    /// A worker and a bundle with the PKI: its facts say whether it holds an older same-key
    /// `ca.crt` (never a key: a worker gets only the CA certificate and its kubeconfigs' CA data).
    worker_ca: bool,
    /// Its facts said so (and not a dry run): a second exec after the artifacts updates it.
    ca_update: AtomicBool,
    /// Tells a streamed pass what to send the node.
    ready: Option<&'a ReadySignal<'a>>,
    decided: Mutex<Option<NodeDecision>>,
    /// Artifact bytes planned for the node (for the progress bar).
    total: AtomicU64,
}

/// What a node's facts decided.
enum NodeDecision {
    /// Nothing to install (unchanged, planned by a dry run, refused, unreadable facts).
    Done(NodeResult),
    /// The node has nothing to do with this bundle after all: a worker without artifacts that
    /// holds no `ca.crt`. Left out of the report, as a node push never inspects.
    Nothing,
    /// Install: these artifacts (indices), `bytes` in all.
    Install { send: BTreeSet<usize>, bytes: u64, reason: String },
}

impl<'a> Job<'a> {
    fn new(
        run: &'a PushRun<'a>,
        t: &'a NodeTarget,
        head: &'a Head,
        ready: Option<&'a ReadySignal<'a>>,
    ) -> Option<Self> {
        let pki = t.pki && head.bundle.has_pki();
        let mine: Vec<(usize, &ManifestArtifact)> = head
            .bundle
            .manifest
            .artifacts
            .iter()
            .enumerate()
            .filter(|(_, a)| a.on_node(t.node.role))
            .collect();
        let worker_ca = t.node.role == Role::Worker && head.payload.file("ca.crt").is_some();
        if !pki && !worker_ca && mine.is_empty() {
            return None;
        }
        let name = t.node.target.name.as_str();
        let (decided, total) = (Mutex::new(None), AtomicU64::new(0));
        let ca_update = AtomicBool::new(false);
        Some(Job { run, name, head, pki, mine, worker_ca, ca_update, ready, decided, total })
    }

    /// The install script's arguments: the node's directories, then each artifact destination
    /// whose state the facts report.
    fn args(&self) -> Vec<String> {
        let paths = &self.run.opts.paths;
        let mut args = vec![paths.kube_dir.clone(), paths.state_dir.clone()];
        args.extend(self.mine.iter().map(|(_, a)| artifacts::facts_arg(&a.dest, a.after)));
        args
    }

    fn sending(&self, sent: u64) {
        let total = self.total.load(Ordering::Relaxed);
        (self.run.progress)(self.name, Event::Sending { sent, total });
    }

    /// The facts arrived: decide, tell the pass what to stream, and return the stdin bytes.
    fn on_facts(&self, out: &[u8]) -> Vec<u8> {
        let (d, bytes) = self.decide(out);
        match &d {
            NodeDecision::Install { send, bytes, .. } => {
                self.total.store(*bytes, Ordering::Relaxed);
                if let Some(r) = self.ready {
                    r.send(Ready::Send(send.clone()));
                }
                (self.run.progress)(self.name, Event::Step(Step::Installing));
            }
            NodeDecision::Done(_) | NodeDecision::Nothing => {
                if let Some(r) = self.ready {
                    r.send(Ready::Nothing);
                }
            }
        }
        *self.decided.lock().unwrap_or_else(|p| p.into_inner()) = Some(d);
        bytes
    }

    /// Plans the node from its facts; returns the plan and what to send as the decision (the
    /// install script's arguments and the small parts, or `skip`).
    fn decide(&self, out: &[u8]) -> (NodeDecision, Vec<u8>) {
        let skip = |r: NodeResult| (NodeDecision::Done(r), b"skip\n".to_vec());
        let opts = self.run.opts;
        let facts = match NodeFacts::parse(out, &opts.paths.pki_dir()) {
            Ok(f) => f,
            Err(e) => return skip(failed(self.name, Category::NodesFailed, e.to_string())),
        };
        let pki = match self.plan_pki(&facts) {
            Ok(p) => p,
            Err(refused) => return skip(refused),
        };
        let ca_update = match self.plan_worker_ca(&facts) {
            Ok(u) => u,
            Err(refused) => return skip(refused),
        };
        let send: Vec<(usize, &ManifestArtifact)> =
            self.mine.iter().copied().filter(|(_, a)| !in_place(a, &facts)).collect();
        let bytes: u64 = send.iter().map(|(_, a)| a.size).sum();
        let mut reason = pki.as_ref().map(|p| p.reason.clone()).unwrap_or_default();
        if !send.is_empty() {
            let what = format!("{} artifact(s), {bytes} bytes", send.len());
            reason = if reason.is_empty() { what } else { format!("{reason}; {what}") };
        }
        if ca_update && opts.dry_run {
            let what = WORKER_CA_PLAN;
            reason = if reason.is_empty() { what.into() } else { format!("{reason}; {what}") };
        }
        if opts.dry_run && (pki.is_some() || !send.is_empty() || ca_update) {
            return skip(done(self.name, NodeStatus::Planned, format!("would {reason}")));
        }
        // Set before the artifacts' outcome is known; the second exec runs only if they went in.
        self.ca_update.store(ca_update, Ordering::Relaxed);
        if pki.is_none() && send.is_empty() {
            if self.worker_ca && self.mine.is_empty() && !facts.certificates.contains_key("ca.crt")
            {
                return (NodeDecision::Nothing, b"skip\n".to_vec());
            }
            return skip(done(self.name, NodeStatus::Unchanged, self.unchanged().into()));
        }
        let line = Decision::new(pki.as_ref(), &send, self.head).encode(&facts, self.run);
        let send = send.iter().map(|(k, _)| *k).collect();
        (NodeDecision::Install { send, bytes, reason }, line)
    }

    /// What the PKI needs on this node: `Ok(None)` nothing (not a PKI target, or in place),
    /// `Err` a refusal. A downgrade is refused on every node, PKI target or not.
    fn plan_pki(&self, facts: &NodeFacts) -> Result<Option<PkiInstall>, NodeResult> {
        let opts = self.run.opts;
        let payload = &self.head.payload;
        if let Some(Plan::Refuse { category, reason }) =
            plan::downgrade_refusal(payload.serial, facts, opts.allow_downgrade)
        {
            return Err(failed(self.name, category, reason));
        }
        if !self.pki {
            return Ok(None);
        }
        match plan(payload, facts, opts.replace, opts.allow_downgrade) {
            Plan::Unchanged => Ok(None),
            Plan::Refuse { category, reason } => Err(failed(self.name, category, reason)),
            Plan::Install { replacing, reissued, reason } => Ok(Some(PkiInstall {
                action: if replacing.is_empty() { "install" } else { "replace" },
                reissue_ca: reissued.iter().any(|n| n == "ca.crt"),
                reason,
            })),
        }
    }

    /// Whether this worker's `ca.crt` needs the bundle's same-key re-issue: `Ok(false)` not a
    /// worker update, no `ca.crt` there, or already the bundle's; `Err` a refusal when it holds
    /// another CA (another subject or key) or a same-key one that ends no earlier.
    fn plan_worker_ca(&self, facts: &NodeFacts) -> Result<bool, NodeResult> {
        let (true, Some(new)) = (self.worker_ca, self.head.payload.file("ca.crt")) else {
            return Ok(false);
        };
        let Some(installed) = facts.certificates.get("ca.crt") else { return Ok(false) };
        if *installed == new.bytes {
            return Ok(false);
        }
        match classify_reissue(installed, &new.bytes) {
            Reissue::Later => Ok(true),
            Reissue::NotLater => Err(failed(
                self.name,
                Category::Verification,
                "the bundle's ca.crt has the same key as this worker's but a notAfter no later than it (a downgrade): nothing written; bundle the re-issued CA (hapki pki renew-ca)",
            )),
            Reissue::No => Err(failed(
                self.name,
                Category::NodesFailed,
                "this worker's ca.crt is another CA than the bundle's (another subject or key): nothing written; check the node belongs to this cluster (a worker's CA comes with kubeadm join)",
            )),
        }
    }

    /// After the node's artifacts went in (or none were needed): the second exec that installs
    /// the bundle's same-key `ca.crt` on a worker and the CA data of its kubeconfigs
    /// (`renew_ca.sh`, the path `hapki pki renew-ca` uses for workers), when its facts asked.
    fn update_worker_ca(&self, session: &mut dyn Session, result: NodeResult) -> NodeResult {
        if !self.ca_update.load(Ordering::Relaxed) || result.status == NodeStatus::Failed {
            return result;
        }
        let Some(ca) = self.head.payload.file("ca.crt") else { return result };
        let payload = crate::renew::ca::ca_section("ca.crt", &String::from_utf8_lossy(&ca.bytes));
        let (paths, stamp) = (&self.run.opts.paths, &self.run.opts.stamp);
        let before = match result.status {
            NodeStatus::Installed => format!("{}; then ", result.message),
            _ => String::new(),
        };
        let o = match crate::renew::ca::install_over(session, "worker", &payload, paths, stamp) {
            Ok(o) => o,
            Err(e) => {
                let msg = format!("{before}{WORKER_CA} failed: {e}");
                return failed(self.name, Category::NodesFailed, msg);
            }
        };
        if !o.success() {
            let category = match o.code {
                Some(3) => Category::Verification,
                _ => Category::NodesFailed,
            };
            let why = remote::stderr_tail(&o.stderr);
            return failed(self.name, category, format!("{before}{WORKER_CA} failed: {why}"));
        }
        let message = format!("{before}{}", worker_ca_summary(&String::from_utf8_lossy(&o.stdout)));
        NodeResult { status: NodeStatus::Installed, message, ..result }
    }

    fn unchanged(&self) -> &'static str {
        match (self.pki, self.mine.is_empty()) {
            (true, true) => "the eight shared files are already in place",
            (true, false) => "the shared files and artifacts are already in place",
            (false, true) => "its ca.crt is already the bundle's",
            _ => "the artifacts are already in place",
        }
    }

    /// The node's result from the command's outcome and the decision its facts led to.
    fn outcome(
        &self,
        out: Result<RemoteOutput, TransportError>,
        decision: Option<NodeDecision>,
        after: &str,
    ) -> NodeResult {
        let name = self.name;
        match (out, decision) {
            (_, Some(NodeDecision::Done(r))) => r,
            (_, Some(NodeDecision::Nothing)) => done(name, NodeStatus::Skipped, String::new()),
            (Err(e), Some(NodeDecision::Install { .. })) => failed(
                name,
                Category::NodesFailed,
                format!(
                    "{e}; nothing staged was installed unless the node's history says so; push again"
                ),
            ),
            // No facts: the login itself may have failed (a one-command session logs in as
            // its command runs), and a refused host key keeps its own exit code.
            (Err(e), None) => {
                use crate::error::Categorized;
                let host_key = e.category() == Category::HostKey;
                let category = if host_key { Category::HostKey } else { Category::NodesFailed };
                failed(name, category, e.to_string())
            }
            (Ok(o), None) => failed(
                name,
                Category::NodesFailed,
                format!(
                    "reading the node's state under {} failed: {}",
                    self.run.opts.paths.pki_dir(),
                    remote::stderr_tail(&o.stderr)
                ),
            ),
            (Ok(o), Some(NodeDecision::Install { .. })) if !o.success() => {
                super::install_failed(name, &o)
            }
            (Ok(_), Some(NodeDecision::Install { .. }))
                if !after.lines().any(|l| l == "installed") =>
            {
                failed(
                    name,
                    Category::NodesFailed,
                    "the install script ended without confirming the install",
                )
            }
            (Ok(_), Some(NodeDecision::Install { reason, .. })) => {
                super::installed(name, reason, after)
            }
        }
    }
}

/// A worker's part of a same-key CA re-issue, as a plan says it.
const WORKER_CA_PLAN: &str = "update ca.crt (same-key re-issue)";
const WORKER_CA: &str = "updating the worker's ca.crt (same-key re-issue)";

/// "updated ca.crt (same-key re-issue; old one kept as …); new CA data in …/kubelet.conf", from
/// `renew_ca.sh`'s report (`R NAME BACKUP`, `K FILE`); node text escaped.
fn worker_ca_summary(out: &str) -> String {
    let esc = |s: &str| crate::transport::escape_node_text(s, false);
    let mut what = String::from("updated ca.crt (same-key re-issue");
    if let Some(bk) = out.lines().find_map(|l| l.strip_prefix("R ca.crt ")) {
        what += &format!("; old one kept as {}", esc(bk));
    }
    what.push(')');
    let confs: Vec<String> = out.lines().filter_map(|l| l.strip_prefix("K ")).map(esc).collect();
    if !confs.is_empty() {
        what += &format!("; new CA data in {}", confs.join(", "));
    }
    what
}

/// What the PKI's plan makes the install script do.
struct PkiInstall {
    /// `install` (only adds or fixes) or `replace` (backs up what differs first).
    action: &'static str,
    /// The bundle's `ca.crt` is a same-key re-issue of the node's: the node also updates every
    /// kubeconfig whose `certificate-authority-data` is the old one, in the same install.
    reissue_ca: bool,
    reason: String,
}

/// The decision that makes a node install: the install script's arguments on one line (every
/// word is from a checked alphabet, so the node splits it safely), then the parts' bytes, then
/// "commit" if the bundle has verified in full already.
struct Decision<'a> {
    action: &'static str,
    reissue_ca: bool,
    parts: Vec<String>,
    data: Vec<u8>,
    head: &'a Head,
}

impl<'a> Decision<'a> {
    fn new(pki: Option<&PkiInstall>, send: &[(usize, &ManifestArtifact)], head: &'a Head) -> Self {
        let (mut parts, mut data) = head.payload.parts(pki.is_some());
        for (_, a) in send {
            parts.extend([
                a.name.clone(),
                a.size.to_string(),
                format!("{:04o}", a.mode),
                a.dest.clone(),
                a.owner.clone(),
                a.after.map(|x| x.as_str().to_string()).unwrap_or_else(|| "-".into()),
            ]);
        }
        if head.complete {
            data.extend_from_slice(b"commit\n");
        }
        Decision {
            action: pki.map_or("none", |p| p.action),
            reissue_ca: pki.is_some_and(|p| p.reissue_ca),
            parts,
            data,
            head,
        }
    }

    fn encode(self, facts: &NodeFacts, run: &PushRun<'_>) -> Vec<u8> {
        let payload = &self.head.payload;
        let mut line = format!(
            "{} {} {} {} {} {}",
            self.action,
            payload.principal,
            facts.shared_state_token(),
            payload.serial,
            run.opts.stamp,
            install_flags(run.opts.allow_downgrade, self.reissue_ca)
        );
        for p in &self.parts {
            line.push(' ');
            line.push_str(p);
        }
        line.push('\n');
        let mut bytes = line.into_bytes();
        bytes.extend_from_slice(&self.data);
        bytes
    }
}

/// The install script's flags word: `-`, or a comma list of `allow-downgrade` and `reissue-ca`.
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

/// Whether the node already holds artifact `a` as the bundle has it.
fn in_place(a: &ManifestArtifact, facts: &NodeFacts) -> bool {
    let Some(st) = facts.artifact_dests.get(&a.dest) else { return false };
    if st.kind != PathKind::File || st.sha256.as_deref() != Some(a.sha256.as_str()) {
        return false;
    }
    if st.mode != Some(a.mode) {
        return false;
    }
    // An image archive is in place only once containerd holds its images, digests and pins.
    if a.after.is_some_and(After::names_images) && !artifacts::images_in_place(facts, &a.dest) {
        return false;
    }
    // Numeric owners are compared; names would need the node's passwd, so they count as met.
    match a.owner.split_once(':') {
        Some((u, g)) => {
            let num =
                |s: &str, v: Option<u32>| s.parse::<u32>().map(|n| Some(n) == v).unwrap_or(true);
            num(u, st.uid) && num(g, st.gid)
        }
        None => false,
    }
}
