//! One SSH exec per node: the node prints its facts, hapki decides while the command runs, and
//! the decision (and payload) goes back on the same command's stdin.
//!
//! The transports pump stdin and stdout of a command together; this module supplies the two
//! ends. [`FactsSink`] collects stdout until the facts end (`Z`), then runs the decision and
//! hands its bytes to [`DecisionSource`], which the transport reads as stdin. Until then the
//! source reports `Interrupted` after a short wait, so the transport keeps pumping stdout (the
//! built-in transport interleaves both on one thread) without spinning.

use std::io::{ErrorKind, Read, Write};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::transport::CapExceeded;

/// The end-of-facts record the facts script prints last.
const END: &[u8] = b"Z\n";
/// How long stdin waits for the decision in one call before yielding to the transport.
const POLL: Duration = Duration::from_millis(5);
/// Cap on what the command may print after its facts (the install's report: a few lines).
pub const AFTER_FACTS_MAX: usize = 1024 * 1024;

#[derive(Default)]
struct State {
    stdout: Vec<u8>,
    /// Where the facts end in `stdout` (just past `Z\n`), once seen.
    facts_end: Option<usize>,
    outgoing: Vec<u8>,
    sent: usize,
    decided: bool,
}

type Decide<'a> = Box<dyn FnMut(&[u8]) -> Vec<u8> + Send + 'a>;

/// Shared between the sink, the source and the caller. `'a`: what the decision borrows (it runs
/// while the command does, so it may borrow anything that outlives the command).
pub struct Exchange<'a> {
    state: Mutex<State>,
    ready: Condvar,
    decide: Mutex<Option<Decide<'a>>>,
    /// Give up waiting for facts after this (a node whose facts script died early, or one
    /// that trickles them).
    deadline: Instant,
    timeout: Duration,
}

impl<'a> Exchange<'a> {
    /// `decide` gets the facts output and returns what to send: one decision line, then any
    /// payload. It runs once, on the transport's thread.
    pub fn new(timeout: Duration, decide: impl FnMut(&[u8]) -> Vec<u8> + Send + 'a) -> Arc<Self> {
        Arc::new(Exchange {
            state: Mutex::new(State::default()),
            ready: Condvar::new(),
            decide: Mutex::new(Some(Box::new(decide))),
            deadline: Instant::now() + timeout,
            timeout,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Everything the command printed after its facts (the install's own report).
    pub fn after_facts(&self) -> Vec<u8> {
        let st = self.lock();
        st.facts_end.map(|e| st.stdout[e..].to_vec()).unwrap_or_default()
    }

    /// Whether the facts arrived and a decision was sent.
    pub fn decided(&self) -> bool {
        self.lock().decided
    }
}

/// The command's stdout.
pub struct FactsSink<'a>(pub Arc<Exchange<'a>>);

impl Write for FactsSink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let facts = {
            let mut st = self.0.lock();
            // Checked before anything is kept: a node that floods fails at once, and costs at
            // most the cap.
            let (what, cap) = match st.facts_end {
                None => ("facts (stdout)", crate::node::facts::MAX_FACTS_OUTPUT),
                Some(e) => ("install report (stdout)", e + AFTER_FACTS_MAX),
            };
            if buf.len() > cap.saturating_sub(st.stdout.len()) {
                return Err(CapExceeded::error(what, (cap - st.facts_end.unwrap_or(0)) as u64));
            }
            // Facts still coming past the deadline (a node trickling under the cap) end the
            // command too; a silent node is ended by the transport's idle timeout.
            if st.facts_end.is_none() && Instant::now() >= self.0.deadline {
                return Err(std::io::Error::other(format!(
                    "the node's facts did not end within {}s",
                    self.0.timeout.as_secs()
                )));
            }
            let from = st.stdout.len().saturating_sub(END.len());
            st.stdout.extend_from_slice(buf);
            if st.facts_end.is_some() {
                return Ok(buf.len());
            }
            let end = find_end(&st.stdout, from);
            match end {
                Some(e) => {
                    st.facts_end = Some(e);
                    st.stdout[..e].to_vec()
                }
                None => return Ok(buf.len()),
            }
        };
        // Decide without holding the state lock: it may take a moment (chain checks).
        let decide = self.0.decide.lock().unwrap_or_else(|p| p.into_inner()).take();
        let outgoing = decide.map(|mut d| d(&facts)).unwrap_or_default();
        let mut st = self.0.lock();
        st.outgoing = outgoing;
        st.decided = true;
        self.0.ready.notify_all();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `Z\n` at the start of a line, searching from `from`.
fn find_end(out: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i + END.len() <= out.len() {
        if &out[i..i + END.len()] == END && (i == 0 || out[i - 1] == b'\n') {
            return Some(i + END.len());
        }
        i += 1;
    }
    None
}

/// The command's stdin: nothing until the decision, then the decision, then end of input.
pub struct DecisionSource<'a>(pub Arc<Exchange<'a>>);

impl Read for DecisionSource<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let ex = &self.0;
        let mut st = ex.lock();
        if !st.decided {
            if Instant::now() >= ex.deadline {
                return Ok(0);
            }
            st = ex
                .ready
                .wait_timeout(st, POLL)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
            if !st.decided {
                return Err(ErrorKind::Interrupted.into());
            }
        }
        let n = buf.len().min(st.outgoing.len() - st.sent);
        let start = st.sent;
        buf[..n].copy_from_slice(&st.outgoing[start..start + n]);
        st.sent += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decides_once_when_the_facts_end_even_split_across_writes() {
        let ex = Exchange::new(Duration::from_secs(5), |facts| {
            assert!(facts.ends_with(b"Z\n"));
            b"skip\n".to_vec()
        });
        let mut sink = FactsSink(ex.clone());
        let mut src = DecisionSource(ex.clone());
        let mut buf = [0u8; 16];
        assert_eq!(src.read(&mut buf).unwrap_err().kind(), ErrorKind::Interrupted);
        sink.write_all(b"V 1\nXZ 1\n").unwrap();
        assert!(!ex.decided(), "XZ is not the end record");
        sink.write_all(b"Z").unwrap();
        sink.write_all(b"\ninstalled\n").unwrap();
        assert!(ex.decided());
        assert_eq!(src.read(&mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"skip\n");
        assert_eq!(src.read(&mut buf).unwrap(), 0, "then end of input");
        assert_eq!(ex.after_facts(), b"installed\n");
    }

    #[test]
    fn output_past_the_caps_is_refused_before_it_is_kept() {
        let cap = crate::node::facts::MAX_FACTS_OUTPUT;
        let ex = Exchange::new(Duration::from_secs(5), |_| b"skip\n".to_vec());
        let mut sink = FactsSink(ex.clone());
        let line = vec![b'y'; 64 * 1024];
        let mut sent = 0;
        let err = loop {
            match sink.write(&line) {
                Ok(n) => sent += n,
                Err(e) => break e,
            }
            assert!(sent <= cap, "kept past the facts cap");
        };
        assert!(err.to_string().contains("facts"), "{err}");
        assert!(ex.lock().stdout.len() <= cap);
        // After the facts, the install's report has its own cap.
        let ex = Exchange::new(Duration::from_secs(5), |_| b"skip\n".to_vec());
        let mut sink = FactsSink(ex.clone());
        sink.write_all(b"V 1\nZ\n").unwrap();
        let err = (0..100).find_map(|_| sink.write(&line).err()).expect("no cap after the facts");
        assert!(err.to_string().contains("report"), "{err}");
        assert!(ex.after_facts().len() <= AFTER_FACTS_MAX);
    }

    #[test]
    fn facts_trickling_past_the_deadline_are_refused() {
        let ex = Exchange::new(Duration::from_millis(30), |_| b"skip\n".to_vec());
        let mut sink = FactsSink(ex.clone());
        sink.write_all(b"V 1\n").unwrap();
        std::thread::sleep(Duration::from_millis(40));
        let err = sink.write(b"H x\n").unwrap_err();
        assert!(err.to_string().contains("did not end within"), "{err}");
        // Once the facts ended, the install's report is not held to that deadline.
        let ex = Exchange::new(Duration::from_millis(30), |_| b"skip\n".to_vec());
        let mut sink = FactsSink(ex.clone());
        sink.write_all(b"V 1\nZ\n").unwrap();
        std::thread::sleep(Duration::from_millis(40));
        sink.write_all(b"installed\n").unwrap();
    }

    #[test]
    fn a_node_that_never_ends_its_facts_gets_end_of_input_at_the_deadline() {
        let ex = Exchange::new(Duration::from_millis(20), |_| b"skip\n".to_vec());
        let mut src = DecisionSource(ex);
        let t0 = Instant::now();
        let mut buf = [0u8; 4];
        loop {
            match src.read(&mut buf) {
                Ok(0) => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                other => panic!("{other:?}"),
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(2));
    }
}
