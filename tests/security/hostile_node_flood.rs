//! Attack: a hostile node floods the operator. Its login prints without end (`yes`) on stdout
//! or stderr, or hangs silent. Before the fix hapki's memory grew without bound (facts appended
//! before their 8 MiB cap was checked; `audit` captured up to 256 MiB per node) and the command
//! never ended. Now every byte a node sends is capped while it is read, so the flooding node of
//! twenty fails at once, named, and the other nineteen are served as if it were not there (push
//! targets all but the first master); a silent one ends at `--idle-timeout`. hapki's peak RSS
//! (VmHWM from /proc: a resource figure) stays under 64 MiB. Both transports, `push` and `audit`.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cluster::{node_statuses, problems};
use crate::fixture::{hapki_process, Fixture};
use crate::testbed::{TbNode, Testbed};

const TRANSPORTS: [&str; 2] = ["builtin", "openssh"];
const RSS_MAX_KB: u64 = 64 * 1024;
/// Far past anything a capped run takes; an uncapped one is stopped here and fails the test.
const GIVE_UP: Duration = Duration::from_secs(90);
const HOSTILE: &str = "kubemaster-3";

/// Every remote command is `sh -c …` and the node's bin/ is first on its PATH: a `sh` there is
/// the node's login doing whatever it likes. Removed on drop.
struct HostileSh(PathBuf);

impl HostileSh {
    fn new(n: &TbNode, body: &str) -> HostileSh {
        let p = n.dir.join("bin/sh");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        HostileSh(p)
    }
}

impl Drop for HostileSh {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

struct Measured {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
    peak_kb: u64,
    took: Duration,
}

fn vm_hwm_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().trim_end_matches(" kB").parse().ok()
}

/// Runs hapki, polling its peak RSS; stops it (and fails) past [`GIVE_UP`] or 4× the RSS bound.
fn run_measured(args: &[String]) -> Measured {
    let t0 = Instant::now();
    let mut child = hapki_process()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let o = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let e = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let mut peak = 0;
    let status = loop {
        peak = peak.max(vm_hwm_kb(child.id()).unwrap_or(0));
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > GIVE_UP || peak > 4 * RSS_MAX_KB {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "hapki {args:?} still running after {:?} at {peak} kB peak RSS: the flood is not capped",
                t0.elapsed()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Measured {
        code: status.code(),
        stdout: o.join().unwrap(),
        stderr: String::from_utf8_lossy(&e.join().unwrap()).into_owned(),
        peak_kb: peak,
        took: t0.elapsed(),
    }
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn push_args(fx: &Fixture, tb: &Testbed, bundle: &std::path::Path, t: &str) -> Vec<String> {
    let mut a = strs(&["push", bundle.to_str().unwrap(), "--inventory"]);
    a.push(tb.inventory().display().to_string());
    a.extend(strs(&["--trust", fx.allowed().to_str().unwrap()]));
    a.extend(strs(&["--decrypt-key", fx.signer().to_str().unwrap()]));
    a.extend(strs(&["--transport", t, "--output", "json"]));
    a
}

fn audit_args(tb: &Testbed, t: &str) -> Vec<String> {
    let mut a = strs(&["audit", "--inventory"]);
    a.push(tb.inventory().display().to_string());
    a.extend(strs(&["--transport", t, "--output", "json"]));
    a
}

fn json(m: &Measured) -> Value {
    serde_json::from_slice(&m.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}{}", String::from_utf8_lossy(&m.stdout), m.stderr))
}

/// The hostile node failed naming `expect`; every other push target got the bundle.
fn assert_push(m: &Measured, expect: &str, label: &str) {
    let v = json(m);
    assert_ne!(m.code, Some(0), "{label}: {v}");
    for (node, status) in node_statuses(&v) {
        if node == HOSTILE {
            assert_eq!(status, "failed", "{label}: {v}");
        } else {
            assert!(["installed", "unchanged"].contains(&status), "{label}: {node} {status}: {v}");
        }
    }
    let msg = v["nodes"].as_array().unwrap().iter().find(|n| n["node"] == HOSTILE).unwrap()
        ["message"]
        .to_string();
    assert!(msg.contains(expect), "{label}: {msg}");
    assert!(m.peak_kb < RSS_MAX_KB, "{label}: peak RSS {} kB", m.peak_kb);
}

/// Only the hostile node is unreachable in the audit, its reason naming `expect`.
fn assert_audit(m: &Measured, expect: &str, label: &str) {
    let v = json(m);
    let down: Vec<_> = problems(&v).into_iter().filter(|(_, _, k)| k == "unreachable").collect();
    assert_eq!(down.len(), 1, "{label}: {v}");
    assert_eq!(down[0].0, HOSTILE, "{label}: {v}");
    assert!(v.to_string().contains(expect), "{label}: {v}");
    assert!(m.peak_kb < RSS_MAX_KB, "{label}: peak RSS {} kB", m.peak_kb);
}

#[test]
fn one_node_of_twenty_flooding_stdout_or_stderr_fails_alone_at_once_and_memory_stays_bounded() {
    let Some(tb) = Testbed::up(20, 0) else { return };
    let fx = Fixture::new();
    let bundle = fx.bundle();
    let n = tb.node(HOSTILE);
    for (body, expect) in [("exec yes", "over hapki's cap"), ("exec yes >&2", "stderr")] {
        let _sh = HostileSh::new(n, body);
        for t in TRANSPORTS {
            let label = format!("{body} / {t}");
            let m = run_measured(&push_args(&fx, &tb, &bundle, t));
            eprintln!("push {label}: {:?}, peak RSS {} kB", m.took, m.peak_kb);
            assert_push(&m, expect, &format!("push {label}"));
            let m = run_measured(&audit_args(&tb, t));
            eprintln!("audit {label}: {:?}, peak RSS {} kB", m.took, m.peak_kb);
            assert_audit(&m, expect, &format!("audit {label}"));
        }
    }
}

#[test]
fn a_silent_node_ends_at_the_idle_timeout() {
    let Some(tb) = Testbed::up(3, 0) else { return };
    let fx = Fixture::new();
    let bundle = fx.bundle();
    let _sh = HostileSh::new(tb.node(HOSTILE), "exec sleep 600");
    for t in TRANSPORTS {
        let mut args = push_args(&fx, &tb, &bundle, t);
        args.extend(strs(&["--idle-timeout", "3s"]));
        let m = run_measured(&args);
        assert_push(&m, "--idle-timeout", &format!("silent push / {t}"));
        assert!(m.took < Duration::from_secs(30), "silent push / {t}: {:?}", m.took);
        let mut args = audit_args(&tb, t);
        args.extend(strs(&["--idle-timeout", "3s"]));
        let m = run_measured(&args);
        assert_audit(&m, "--idle-timeout", &format!("silent audit / {t}"));
    }
}
