//! One pass over the bundle, fanned out to the nodes it serves.
//!
//! One thread reads the bundle (decrypt → stored gzip → tar, [`crate::bundle::open_streaming`])
//! and hashes each byte once; every node worker has its own thread and one SSH exec
//! ([`super::node`]). The verified head (everything before the first artifact) goes to every
//! worker; each node prints its facts, plans, and says which artifacts it lacks; only then are
//! the artifacts read, each chunk sent to the nodes that want it through bounded channels of
//! shared chunks. A slow node throttles the reader (its channel fills up); a failed node's
//! channel is dropped and the others carry on. Nodes stage each artifact next to its destination
//! and check it against the signed `SHA256SUMS` themselves; nothing is moved into place until
//! the reader has verified the whole bundle and sends "commit" — one flipped byte anywhere and
//! no node installs anything.
//!
//! A bundle without artifacts has nothing to stream: its head comes only once the whole file
//! has verified, so each node's decision carries "commit" itself, and the pass's workers take
//! node after node from the [`Queue`] until it is empty, without waiting for one another.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};

use crate::bundle::{self, ArtifactEvent, BundleError, VerifiedBundle};

use super::{node, NodeResult, Payload, PushRun};

/// Bytes in flight to all nodes together: each node's channel holds its share (4 to 32 chunks
/// of [`bundle::CHUNK`]), so memory stays bounded whatever the payload while each node can fall
/// a few MiB behind the others (scheduling hiccups) without stalling them.
const IN_FLIGHT: usize = 32 << 20;

fn depth(nodes: usize) -> usize {
    (IN_FLIGHT / bundle::CHUNK / nodes.max(1)).clamp(4, 32)
}

/// The targets not yet taken by a pass, and every node's result by target index.
pub(super) struct Queue {
    next: AtomicUsize,
    results: Mutex<Vec<Option<NodeResult>>>,
}

impl Queue {
    pub(super) fn new(len: usize) -> Self {
        Queue { next: AtomicUsize::new(0), results: Mutex::new((0..len).map(|_| None).collect()) }
    }

    fn len(&self) -> usize {
        self.results.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn left(&self) -> usize {
        self.len().saturating_sub(self.next.load(Ordering::SeqCst))
    }

    pub(super) fn is_empty(&self) -> bool {
        self.left() == 0
    }

    fn take(&self) -> Option<usize> {
        let i = self.next.fetch_add(1, Ordering::SeqCst);
        (i < self.len()).then_some(i)
    }

    fn put(&self, i: usize, r: Option<NodeResult>) {
        self.results.lock().unwrap_or_else(|p| p.into_inner())[i] = r;
    }

    /// The results in target order; nodes with nothing to do with the bundle are left out.
    pub(super) fn into_results(self) -> Vec<NodeResult> {
        let results = self.results.into_inner().unwrap_or_else(|p| p.into_inner());
        results.into_iter().flatten().collect()
    }
}

/// What every node of a pass gets once the bundle's head has verified.
pub(super) struct Head {
    pub payload: Payload,
    pub bundle: VerifiedBundle,
    /// The bundle has no artifacts: the head is the whole bundle, verified.
    pub complete: bool,
}

pub(super) enum Msg {
    Data(Arc<Vec<u8>>),
    Commit,
}

/// What a node worker tells the reader once it has planned.
pub(super) enum Ready {
    /// Send these artifacts (indices) to the node.
    Send(BTreeSet<usize>),
    /// Nothing to stream (done, unchanged, planned, failed, or not a target).
    Nothing,
}

/// A worker's word to the reader, said exactly once: [`ReadySignal::send`], or
/// [`Ready::Nothing`] when dropped unsaid (the reader waits for every worker's word before it
/// reads the first artifact, so no path may leave it unsaid).
pub(super) struct ReadySignal<'a> {
    tx: &'a Sender<(usize, Ready)>,
    slot: usize,
    said: AtomicBool,
}

impl ReadySignal<'_> {
    pub(super) fn send(&self, r: Ready) {
        if !self.said.swap(true, Ordering::SeqCst) {
            let _ = self.tx.send((self.slot, r));
        }
    }
}

impl Drop for ReadySignal<'_> {
    fn drop(&mut self) {
        self.send(Ready::Nothing);
    }
}

/// A node's link to a streamed pass (both `None` when the head is the whole bundle).
pub(super) struct Link<'a> {
    pub ready: Option<ReadySignal<'a>>,
    pub data: Option<Receiver<Msg>>,
}

/// A node's stdin after the decision: the artifact chunks from the channel, then "commit"
/// (only if the whole bundle verified), then end of input. No channel: end of input at once.
pub(super) struct ChannelReader<'a> {
    rx: Option<Receiver<Msg>>,
    /// Said before the first wait: stdin only gets here past the decision, so a node that never
    /// decided (its facts did not end by the deadline) never will, and the pass must not wait
    /// for its word while this waits for the pass.
    ready: Option<&'a ReadySignal<'a>>,
    cur: Arc<Vec<u8>>,
    pos: usize,
    done: bool,
    sent: u64,
    report: &'a (dyn Fn(u64) + Sync),
}

impl<'a> ChannelReader<'a> {
    pub(super) fn new(
        rx: Option<Receiver<Msg>>,
        ready: Option<&'a ReadySignal<'a>>,
        report: &'a (dyn Fn(u64) + Sync),
    ) -> Self {
        let cur = Arc::new(Vec::new());
        ChannelReader { rx, ready, cur, pos: 0, done: false, sent: 0, report }
    }
}

impl Read for ChannelReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.cur.len() {
            let Some(rx) = self.rx.as_ref().filter(|_| !self.done) else { return Ok(0) };
            if let Some(r) = self.ready {
                r.send(Ready::Nothing);
            }
            match rx.recv() {
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

/// One pass over the bundle for up to `parallel` workers (see the module docs). Returns whether
/// the bundle carries artifacts; `Err` means it was rejected and no node installed anything.
pub(super) fn pass(run: &PushRun<'_>, queue: &Queue) -> Result<bool, BundleError> {
    let workers = run.opts.parallel.max(1).min(queue.left());
    std::thread::scope(|s| {
        let (ready_tx, ready_rx) = mpsc::channel::<(usize, Ready)>();
        let mut fan = Fanout::new(ready_rx);
        for slot in 0..workers {
            let (head_tx, head_rx) = mpsc::channel::<Arc<Head>>();
            let (data_tx, data_rx) = mpsc::sync_channel::<Msg>(depth(workers));
            fan.head_txs.push(head_tx);
            fan.txs.push(Some(data_tx));
            let ready_tx = ready_tx.clone();
            s.spawn(move || worker(run, queue, slot, head_rx, data_rx, ready_tx));
        }
        drop(ready_tx);
        let fan = RefCell::new(fan);
        let b = &run.bundle;
        let outcome = bundle::open_streaming(
            b.path,
            b.trust,
            b.identities,
            &b.verify,
            &mut |head| fan.borrow_mut().head(head),
            &mut |ev| fan.borrow_mut().artifact(ev),
        );
        fan.into_inner().finish(outcome.is_ok());
        outcome.map(|v| !v.manifest.artifacts.is_empty())
    })
}

/// A pass's worker: nodes from the queue, one if the pass streams artifacts (they share its
/// stream), else until the queue is empty.
fn worker(
    run: &PushRun<'_>,
    queue: &Queue,
    slot: usize,
    head_rx: Receiver<Arc<Head>>,
    data_rx: Receiver<Msg>,
    ready_tx: Sender<(usize, Ready)>,
) {
    // No head: the bundle was rejected before it, and no node is contacted.
    let Ok(head) = head_rx.recv() else { return };
    let mut data = Some(data_rx);
    loop {
        let link = match head.complete {
            true => Link { ready: None, data: None },
            false => Link {
                ready: Some(ReadySignal { tx: &ready_tx, slot, said: AtomicBool::new(false) }),
                data: data.take(),
            },
        };
        let Some(i) = queue.take() else { return };
        queue.put(i, node::push_node(run, &run.targets[i], &head, link));
        if !head.complete {
            return;
        }
    }
}

/// The reader's side of a pass: who gets which artifact.
struct Fanout {
    head_txs: Vec<Sender<Arc<Head>>>,
    ready_rx: Receiver<(usize, Ready)>,
    wants: Vec<BTreeSet<usize>>,
    txs: Vec<Option<SyncSender<Msg>>>,
    sizes: Vec<u64>,
    current: Option<usize>,
}

impl Fanout {
    fn new(ready_rx: Receiver<(usize, Ready)>) -> Self {
        Fanout {
            head_txs: Vec::new(),
            ready_rx,
            wants: Vec::new(),
            txs: Vec::new(),
            sizes: Vec::new(),
            current: None,
        }
    }

    /// The verified head: to every worker; then, if artifacts follow, every node's plan before
    /// the first artifact byte is read. `Ok(false)`: no node wants anything more, so the
    /// artifacts need not be read at all (which is what makes a repeated push take seconds
    /// whatever the payload).
    fn head(&mut self, v: &VerifiedBundle) -> Result<bool, BundleError> {
        let payload =
            Payload::from_verified(v).map_err(|e| BundleError::Manifest(e.to_string()))?;
        let complete = v.manifest.artifacts.is_empty();
        let head = Arc::new(Head { payload, bundle: v.clone(), complete });
        for tx in &self.head_txs {
            let _ = tx.send(head.clone());
        }
        if complete {
            // Nothing follows: the workers go on alone, "commit" in each decision.
            self.txs.clear();
            return Ok(true);
        }
        self.sizes = v.manifest.artifacts.iter().map(|a| a.size).collect();
        self.wants = vec![BTreeSet::new(); self.txs.len()];
        for _ in 0..self.txs.len() {
            match self.ready_rx.recv() {
                Ok((i, Ready::Send(set))) => self.wants[i] = set,
                Ok((i, Ready::Nothing)) => self.txs[i] = None,
                Err(_) => break,
            }
        }
        Ok(self.txs.iter().any(Option::is_some))
    }

    fn artifact(&mut self, ev: ArtifactEvent<'_>) -> Result<(), BundleError> {
        match ev {
            ArtifactEvent::Start { index, size } => {
                if self.sizes.get(index) != Some(&size) {
                    return Err(BundleError::Manifest(format!(
                        "artifacts/{index:04} is {size} bytes but bundle.json says otherwise"
                    )));
                }
                self.current = Some(index);
            }
            ArtifactEvent::Data(chunk) => self.send(chunk),
            ArtifactEvent::End => self.current = None,
        }
        Ok(())
    }

    /// One copy per chunk, shared by every node it goes to.
    fn send(&mut self, chunk: &[u8]) {
        let Some(idx) = self.current else { return };
        if !self.wants.iter().any(|w| w.contains(&idx)) {
            return;
        }
        let chunk = Arc::new(chunk.to_vec());
        for (tx, wants) in self.txs.iter_mut().zip(&self.wants) {
            if !wants.contains(&idx) {
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

    /// Ends every node's input: after "commit" if the whole bundle verified, else without it.
    fn finish(self, verified: bool) {
        drop(self.head_txs);
        if verified {
            for t in self.txs.iter().flatten() {
                let _ = t.send(Msg::Commit);
            }
        }
    }
}
