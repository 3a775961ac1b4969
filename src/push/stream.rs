//! `push` of a bundle that may carry artifacts: one streaming pass over the bundle, fanned out
//! to every node at once.
//!
//! One thread reads the bundle (decrypt → stored gzip → tar, [`crate::bundle::open_streaming`])
//! and hashes each byte once; every node has its own worker thread and one SSH exec, as for a
//! PKI-only push ([`super::exchange`]): the node prints its facts, the worker decides while the
//! command waits, and the decision, the small parts and then the artifacts follow on the same
//! stdin, fed through a bounded channel of shared chunks. A slow node throttles
//! the reader (its channel fills up); a failed node's channel is dropped and the others carry
//! on. Nodes stage each artifact next to its destination and check it against the signed
//! `SHA256SUMS` themselves; nothing is moved into place until the reader has verified the whole
//! bundle and sends "commit" — one flipped byte anywhere and no node installs anything.
//!
//! Incremental: each node's facts include the SHA-256 of every artifact destination its role
//! gets; an artifact already there with the signed hash, mode and owner is not sent.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::artifacts::{self, After, Role};
use crate::bundle::{
    self, AllowedSigners, ArtifactEvent, BundleError, Identities, ManifestArtifact, VerifiedBundle,
    VerifyOptions,
};
use crate::error::{Categorized, Category};
use crate::node::{self, facts::NodeFacts, facts::PathKind};
use crate::transport::{Target, Transport};

use super::exchange::{DecisionSource, Exchange, FactsSink};
use super::{failed, plan, NodeResult, NodeStatus, Payload, Plan, PushOptions, PushReport, Step};

/// A node push may send something to.
#[derive(Debug, Clone)]
pub struct NodeTarget {
    pub target: Target,
    pub role: Role,
    /// Whether the node gets the shared PKI (a control plane other than the first master).
    pub pki: bool,
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

/// Bytes in flight to all nodes together: each node's channel holds its share (4 to 32 chunks
/// of [`bundle::CHUNK`]), so memory stays bounded whatever the payload while each node can fall
/// a few MiB behind the others (scheduling hiccups) without stalling them.
const IN_FLIGHT: usize = 32 << 20;

/// How long a node may take to print its facts (see `node_worker`): they hash every artifact
/// already at its destination, minutes for tens of GiB (4 GiB took 5 s here), so an hour is
/// generous; it bounds a hostile node that trickles its facts below the size cap, keeping the
/// transport's idle timeout from being reset for ever.
const FACTS_DEADLINE: Duration = Duration::from_secs(3600);

fn depth(nodes: usize) -> usize {
    (IN_FLIGHT / bundle::CHUNK / nodes.max(1)).clamp(4, 32)
}

enum Msg {
    Data(Arc<Vec<u8>>),
    Commit,
}

/// A node's stdin: the small parts from memory, then the artifact chunks from the channel,
/// then "commit" (only if the operator verified the whole bundle), then end of input.
struct ChannelReader<'a> {
    rx: Receiver<Msg>,
    cur: Arc<Vec<u8>>,
    pos: usize,
    done: bool,
    sent: u64,
    report: &'a (dyn Fn(u64) + Sync),
}

impl Read for ChannelReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.cur.len() {
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Msg::Data(c)) => {
                    self.sent += c.len() as u64;
                    (self.report)(self.sent);
                    self.cur = c;
                }
                Ok(Msg::Commit) => {
                    self.cur = Arc::new(b"commit\n".to_vec());
                    self.done = true;
                }
                // The reader gave up (verification failed): end of input without "commit",
                // which makes the node discard everything it staged.
                Err(_) => return Ok(0),
            }
            self.pos = 0;
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// What a node worker tells the reader once it has planned.
enum Ready {
    /// Send these artifacts (indices) to the node.
    Send(BTreeSet<usize>),
    /// Nothing to stream (done, unchanged, planned, failed, or not a target).
    Nothing,
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

/// Pushes the bundle at `path` to `targets`, verifying it in the same pass (see the module
/// docs). `Err` means the bundle itself was rejected (nothing was installed anywhere); node
/// failures are in the report.
#[allow(clippy::too_many_arguments)]
pub fn push_bundle(
    path: &Path,
    trust: &AllowedSigners,
    identities: &Identities,
    verify: &VerifyOptions,
    targets: &[NodeTarget],
    transport: &dyn Transport,
    opts: &PushOptions,
    progress: &(dyn Fn(&str, Event) + Sync),
) -> Result<PushReport, BundleError> {
    // Nodes go in batches of `parallel`, one pass over the bundle per batch.
    let mut nodes = Vec::new();
    for batch in targets.chunks(opts.parallel.max(1)) {
        let done = push_batch(path, trust, identities, verify, batch, transport, opts, progress)?;
        nodes.extend(done.into_iter().flatten());
    }
    let ok = nodes.iter().all(|n| n.status != NodeStatus::Failed);
    Ok(PushReport { ok, nodes })
}

#[allow(clippy::too_many_arguments)]
fn push_batch(
    path: &Path,
    trust: &AllowedSigners,
    identities: &Identities,
    verify: &VerifyOptions,
    targets: &[NodeTarget],
    transport: &dyn Transport,
    opts: &PushOptions,
    progress: &(dyn Fn(&str, Event) + Sync),
) -> Result<Vec<Option<NodeResult>>, BundleError> {
    let n = targets.len();
    let results: Mutex<Vec<Option<NodeResult>>> = Mutex::new((0..n).map(|_| None).collect());
    std::thread::scope(|s| {
        let (ready_tx, ready_rx) = mpsc::channel::<(usize, Ready)>();
        let mut head_txs = Vec::new();
        let mut data_txs: Vec<Option<SyncSender<Msg>>> = Vec::new();
        for (i, t) in targets.iter().enumerate() {
            let (head_tx, head_rx) = mpsc::channel::<Arc<(Payload, VerifiedBundle)>>();
            let (data_tx, data_rx) = mpsc::sync_channel::<Msg>(depth(n));
            head_txs.push(head_tx);
            data_txs.push(Some(data_tx));
            let ready_tx = ready_tx.clone();
            let results = &results;
            s.spawn(move || {
                let r = node_worker(t, head_rx, data_rx, &ready_tx, i, transport, opts, progress);
                results.lock().unwrap_or_else(|p| p.into_inner())[i] = r;
            });
        }
        drop(ready_tx);
        // Shared by the two callbacks below (both run on this thread).
        struct State {
            wants: Vec<BTreeSet<usize>>,
            txs: Vec<Option<SyncSender<Msg>>>,
            sizes: Vec<u64>,
            current: Option<usize>,
        }
        let st = RefCell::new(State {
            wants: vec![BTreeSet::new(); n],
            txs: data_txs,
            sizes: Vec::new(),
            current: None,
        });
        let outcome = bundle::open_streaming(
            path,
            trust,
            identities,
            verify,
            &mut |head| {
                let payload = Payload::from_verified(head)
                    .map_err(|e| BundleError::Manifest(e.to_string()))?;
                let mut st = st.borrow_mut();
                st.sizes = head.manifest.artifacts.iter().map(|a| a.size).collect();
                let shared = Arc::new((payload, head.clone()));
                for tx in &head_txs {
                    let _ = tx.send(shared.clone());
                }
                // Every node plans before the first artifact byte is read.
                for _ in 0..n {
                    match ready_rx.recv() {
                        Ok((i, Ready::Send(set))) => st.wants[i] = set,
                        Ok((i, Ready::Nothing)) => st.txs[i] = None,
                        Err(_) => break,
                    }
                }
                // No node installs anything: the artifacts need not be read at all (which is
                // what makes a repeated push take seconds whatever the payload).
                Ok(st.txs.iter().any(Option::is_some))
            },
            &mut |ev| {
                let mut st = st.borrow_mut();
                let st = &mut *st;
                match ev {
                    ArtifactEvent::Start { index, size } => {
                        if st.sizes.get(index) != Some(&size) {
                            return Err(BundleError::Manifest(format!(
                                "artifacts/{index:04} is {size} bytes but bundle.json says otherwise"
                            )));
                        }
                        st.current = Some(index);
                    }
                    ArtifactEvent::Data(chunk) => {
                        let Some(idx) = st.current else { return Ok(()) };
                        if !st.wants.iter().any(|w| w.contains(&idx)) {
                            return Ok(());
                        }
                        // One copy per chunk, shared by every node it goes to.
                        let chunk = Arc::new(chunk.to_vec());
                        for (i, tx) in st.txs.iter_mut().enumerate() {
                            if !st.wants[i].contains(&idx) {
                                continue;
                            }
                            if let Some(t) = tx {
                                if t.send(Msg::Data(chunk.clone())).is_err() {
                                    // The node failed; the others go on.
                                    *tx = None;
                                }
                            }
                        }
                    }
                    ArtifactEvent::End => st.current = None,
                }
                Ok(())
            },
        );
        let data_txs = st.into_inner().txs;
        drop(head_txs);
        if outcome.is_ok() {
            for t in data_txs.iter().flatten() {
                let _ = t.send(Msg::Commit);
            }
        }
        // Dropping the senders ends every node's input: after "commit", or without it.
        drop(data_txs);
        outcome.map(|_| ())
    })?;
    Ok(results.into_inner().unwrap_or_else(|p| p.into_inner()))
}

/// One node: connect, read facts, plan, then install with the streamed input. `None` when the
/// node has nothing to do with this bundle (a worker and a PKI-only bundle).
#[allow(clippy::too_many_arguments)]
fn node_worker(
    t: &NodeTarget,
    head_rx: Receiver<Arc<(Payload, VerifiedBundle)>>,
    data_rx: Receiver<Msg>,
    ready: &mpsc::Sender<(usize, Ready)>,
    i: usize,
    transport: &dyn Transport,
    opts: &PushOptions,
    progress: &(dyn Fn(&str, Event) + Sync),
) -> Option<NodeResult> {
    let not_ready = || {
        let _ = ready.send((i, Ready::Nothing));
    };
    // The bundle's head, verified; no head means the bundle was rejected before it.
    let head = head_rx.recv().ok()?;
    let (payload, verified) = (&head.0, &head.1);
    let name = t.target.name.as_str();
    let pki = t.pki && verified.has_pki();
    let mine: Vec<(usize, &ManifestArtifact)> = verified
        .manifest
        .artifacts
        .iter()
        .enumerate()
        .filter(|(_, a)| a.roles.contains(&t.role) && After::on_nodes(a.after))
        .collect();
    if !pki && mine.is_empty() {
        not_ready();
        return None;
    }
    progress(name, Event::Step(Step::Connecting));
    let mut session = match transport.connect(&t.target) {
        Ok(s) => s,
        Err(e) => {
            not_ready();
            return Some(failed(name, e.category(), e.to_string()));
        }
    };
    progress(name, Event::Step(Step::Inspecting));
    // One exec: the node prints its facts (the artifact dests' hashes included), the decision
    // below runs on the transport's thread while the command waits for it, and the decision
    // line, the small parts and then the streamed artifacts follow on the same stdin.
    let dests: Vec<String> =
        mine.iter().map(|(_, a)| artifacts::facts_arg(&a.dest, a.after)).collect();
    let pki_dir = opts.paths.pki_dir();
    let decided: Mutex<Option<NodeDecision>> = Mutex::new(None);
    let total = AtomicU64::new(0);
    // No short deadline for the facts: they hash every artifact already at its destination,
    // which takes as long as the node's disk needs (minutes for tens of GiB); and stdin must
    // not end early here, or the worker would wait on a reader that waits on it.
    let exchange = Exchange::new(FACTS_DEADLINE, |out| {
        let (d, line) = decide(out, name, pki, &pki_dir, payload, &mine, opts);
        match &d {
            NodeDecision::Install { send, bytes, .. } => {
                total.store(*bytes, Ordering::Relaxed);
                let _ = ready.send((i, Ready::Send(send.clone())));
                progress(name, Event::Step(Step::Installing));
            }
            NodeDecision::Done(_) => not_ready(),
        }
        *decided.lock().unwrap_or_else(|p| p.into_inner()) = Some(d);
        line
    });
    let report =
        |sent: u64| progress(name, Event::Sending { sent, total: total.load(Ordering::Relaxed) });
    let chan = ChannelReader {
        rx: data_rx,
        cur: Arc::new(Vec::new()),
        pos: 0,
        done: false,
        sent: 0,
        report: &report,
    };
    let mut args = vec![opts.paths.kube_dir.as_str(), opts.paths.state_dir.as_str()];
    args.extend(dests.iter().map(String::as_str));
    let mut stdin = DecisionSource(exchange.clone()).chain(chan);
    let mut stdout = FactsSink(exchange.clone());
    let out = session.run_streaming(&node::push_script(), &args, &mut stdin, &mut stdout);
    drop(stdin);
    progress(name, Event::Step(Step::Done));
    let decision = decided.lock().unwrap_or_else(|p| p.into_inner()).take();
    if decision.is_none() {
        // The facts never arrived: the reader still waits for this node's word.
        not_ready();
    }
    Some(match (out, decision) {
        (_, Some(NodeDecision::Done(r))) => r,
        (Err(e), Some(NodeDecision::Install { .. })) => failed(
            name,
            Category::NodesFailed,
            format!(
                "{e}; nothing staged was installed unless the node's history says so; push again"
            ),
        ),
        (Err(e), None) => failed(name, Category::NodesFailed, e.to_string()),
        (Ok(o), None) => failed(
            name,
            Category::NodesFailed,
            format!(
                "reading the node's state under {pki_dir} failed: {}",
                node::stderr_tail(&o.stderr)
            ),
        ),
        (Ok(o), Some(NodeDecision::Install { reason, .. })) => {
            if !o.success() {
                return Some(super::install_failed(name, &o));
            }
            let after = exchange.after_facts();
            let stdout = String::from_utf8_lossy(&after);
            if !stdout.lines().any(|l| l == "installed") {
                return Some(failed(
                    name,
                    Category::NodesFailed,
                    "the install script ended without confirming the install",
                ));
            }
            super::installed(name, reason, &stdout)
        }
    })
}

/// What a node's facts decided.
enum NodeDecision {
    /// Nothing to install (unchanged, planned by a dry run, refused, unreadable facts).
    Done(NodeResult),
    /// Install: these artifacts (indices), `bytes` in all.
    Install { send: BTreeSet<usize>, bytes: u64, reason: String },
}

/// Plans one node from its facts; returns the plan and what to send as the decision (the
/// install script's arguments and the small parts, or `skip`).
fn decide(
    out: &[u8],
    name: &str,
    pki: bool,
    pki_dir: &str,
    payload: &Payload,
    mine: &[(usize, &ManifestArtifact)],
    opts: &PushOptions,
) -> (NodeDecision, Vec<u8>) {
    let skip = |r: NodeResult| (NodeDecision::Done(r), b"skip\n".to_vec());
    let facts = match NodeFacts::parse(out, pki_dir) {
        Ok(f) => f,
        Err(e) => return skip(failed(name, Category::NodesFailed, e.to_string())),
    };
    if let Some(Plan::Refuse { category, reason }) =
        super::plan::downgrade_refusal(payload.serial, &facts, opts.allow_downgrade)
    {
        return skip(failed(name, category, reason));
    }
    let (action, reissue_ca, mut reason) = if pki {
        match plan(payload, &facts, opts.replace, opts.allow_downgrade) {
            Plan::Unchanged => ("none", false, String::new()),
            Plan::Refuse { category, reason } => return skip(failed(name, category, reason)),
            Plan::Install { replacing, reissued, reason } => {
                let action = if replacing.is_empty() { "install" } else { "replace" };
                (action, super::reissues_cluster_ca(&reissued), reason)
            }
        }
    } else {
        ("none", false, String::new())
    };
    let send: Vec<(usize, &ManifestArtifact)> =
        mine.iter().copied().filter(|(_, a)| !in_place(a, &facts)).collect();
    let bytes: u64 = send.iter().map(|(_, a)| a.size).sum();
    if !send.is_empty() {
        let what = format!("{} artifact(s), {bytes} bytes", send.len());
        reason = if reason.is_empty() { what } else { format!("{reason}; {what}") };
    }
    let done = |status, message: String| {
        skip(NodeResult { node: name.into(), status, message, category: None, backup: None })
    };
    if action == "none" && send.is_empty() {
        let msg = match (pki, mine.is_empty()) {
            (true, true) => "the eight shared files are already in place",
            (true, false) => "the shared files and artifacts are already in place",
            _ => "the artifacts are already in place",
        };
        return done(NodeStatus::Unchanged, msg.into());
    }
    if opts.dry_run {
        return done(NodeStatus::Planned, format!("would {reason}"));
    }
    let (mut parts, small) = payload.parts_for(action != "none");
    for (_, a) in &send {
        parts.extend([
            a.name.clone(),
            a.size.to_string(),
            format!("{:04o}", a.mode),
            a.dest.clone(),
            a.owner.clone(),
            a.after.map(|x| x.as_str().to_string()).unwrap_or_else(|| "-".into()),
        ]);
    }
    let bytes_out =
        super::install_decision(action, reissue_ca, payload, &facts, opts, &parts, &small);
    let send = send.iter().map(|(k, _)| *k).collect();
    (NodeDecision::Install { send, bytes, reason }, bytes_out)
}
