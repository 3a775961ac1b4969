//! The OpenSSH transport's one connection per node: every command of a session goes over one
//! control master (one login on the node, counted in its sshd log), whose socket lives in a
//! private directory that is gone afterwards with the master; a node whose master dies fails
//! alone, by name, without a silent second login. A one-command session is one plain login,
//! no master.

#[path = "support/testbed.rs"]
mod testbed;

use std::io::Cursor;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use hapki::transport::openssh::OpensshTransport;
use hapki::transport::{Session, Transport};
use testbed::{TbNode, Testbed};

fn empty() -> Cursor<Vec<u8>> {
    Cursor::new(Vec::new())
}

/// Logins the node's sshd accepted so far (`LogLevel VERBOSE`: one line per authentication).
fn accepted_logins(n: &TbNode) -> usize {
    let log = std::fs::read_to_string(n.dir.join("sshd.log")).unwrap_or_default();
    log.matches("Accepted publickey").count()
}

/// sshd writes its log line just after the login; give it a moment to land.
fn settled_logins(n: &TbNode, at_least: usize) -> usize {
    let start = Instant::now();
    while accepted_logins(n) < at_least && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    accepted_logins(n)
}

/// The pids of ssh control masters whose control socket is under `dir` and that reach `addr`,
/// from every process's command line in /proc.
fn masters(dir: &Path, addr: &str) -> Vec<i32> {
    let path = format!("ControlPath={}/", dir.display());
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else { continue };
        let args: Vec<String> =
            raw.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        let has = |s: &str| args.iter().any(|a| a == s);
        if has("ControlMaster=yes") && has(addr) && args.iter().any(|a| a.starts_with(&path)) {
            pids.push(pid);
        }
    }
    pids
}

fn run_ok(s: &mut Box<dyn Session>, cmd: &str) -> String {
    let out = s.run(cmd, &[], &mut empty()).expect("the command runs");
    assert!(out.success(), "{cmd}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn every_command_of_a_session_goes_over_one_login() {
    let Some(tb) = Testbed::up(1, 0) else { return };
    let n = tb.control_plane(1);
    let tr = OpensshTransport::new().unwrap();
    let before = settled_logins(n, 0);
    let mut s = tr.connect(&tb.target(&n.name)).unwrap();
    // Three commands, each a session channel of its own on the node (their shells' pids differ).
    let pids: Vec<String> = (0..3).map(|_| run_ok(&mut s, "echo $$")).collect();
    assert!(pids[0] != pids[1] && pids[1] != pids[2], "{pids:?}");
    assert_eq!(settled_logins(n, before + 1), before + 1, "one login for three commands");
    drop(s);
    // Negative control: two sessions are two logins.
    let mut a = tr.connect(&tb.target(&n.name)).unwrap();
    let mut b = tr.connect(&tb.target(&n.name)).unwrap();
    run_ok(&mut a, "true");
    run_ok(&mut b, "true");
    assert_eq!(settled_logins(n, before + 3), before + 3, "two sessions, two logins");
}

#[test]
fn the_control_directory_is_private_and_gone_with_its_masters() {
    let Some(tb) = Testbed::up(1, 0) else { return };
    let n = tb.control_plane(1);
    let tr = OpensshTransport::new().unwrap();
    let dir = tr.control_dir().to_owned();
    let meta = std::fs::symlink_metadata(&dir).unwrap();
    assert!(meta.is_dir());
    assert_eq!(meta.permissions().mode() & 0o777, 0o700, "{}", dir.display());
    // SAFETY: geteuid has no preconditions.
    assert_eq!(meta.uid(), unsafe { libc::geteuid() });
    let mut s = tr.connect(&tb.target(&n.name)).unwrap();
    run_ok(&mut s, "true");
    let master = masters(&dir, &n.address);
    assert_eq!(master.len(), 1, "one master for the session: {master:?}");
    // The master is our own child (it dies with us), in the foreground (not a daemon).
    let status = std::fs::read_to_string(format!("/proc/{}/status", master[0])).unwrap();
    let ppid = status.lines().find_map(|l| l.strip_prefix("PPid:")).unwrap().trim();
    assert_eq!(ppid, std::process::id().to_string(), "the master's parent is this process");
    drop(s);
    assert!(masters(&dir, &n.address).is_empty(), "the master outlived its session");
    assert!(Path::new(&format!("/proc/{}", master[0])).exists().then_some(()).is_none());
    drop(tr);
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn a_node_whose_master_dies_fails_alone_by_name_without_logging_in_again() {
    let Some(tb) = Testbed::up(2, 0) else { return };
    let (one, two) = (tb.control_plane(1), tb.control_plane(2));
    let tr = OpensshTransport::new().unwrap();
    let mut s1 = tr.connect(&tb.target(&one.name)).unwrap();
    let mut s2 = tr.connect(&tb.target(&two.name)).unwrap();
    let logins = settled_logins(one, 1);
    let master = masters(tr.control_dir(), &one.address);
    assert_eq!(master.len(), 1, "{master:?}");
    // Mid-command: node one's master is killed while its command runs.
    let started = Instant::now();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        // SAFETY: signalling the master found above, a child of this process.
        unsafe { libc::kill(master[0], libc::SIGKILL) };
    });
    let err = s1.run("sleep 20; echo late", &[], &mut empty()).expect_err("its master died");
    killer.join().unwrap();
    assert!(started.elapsed() < Duration::from_secs(15), "waited for the command instead");
    let msg = err.to_string();
    assert!(msg.contains(&one.address) && !msg.contains('\n'), "{msg}");
    // The next command on that session fails too, by name, and nothing logs in again.
    let err = s1.run("echo again", &[], &mut empty()).expect_err("no master, no command");
    let msg = err.to_string();
    assert!(msg.contains(&one.address) && msg.contains("master exited"), "{msg}");
    assert_eq!(settled_logins(one, logins), logins, "a second login behind the session's back");
    // The other node is unaffected (negative control).
    assert_eq!(run_ok(&mut s2, "echo ok"), "ok\n");
}

/// An `ssh` that is a wrapper running the real client as its child (not `exec`): ending the
/// session still ends the real master (its whole process group is signalled).
#[test]
fn a_wrapper_ssh_leaves_no_master_behind() {
    let Some(tb) = Testbed::up(1, 0) else { return };
    let n = tb.control_plane(1);
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("ssh");
    let real = ["/usr/bin/ssh", "/bin/ssh"].into_iter().find(|p| Path::new(p).exists()).unwrap();
    std::fs::write(&wrapper, format!("#!/bin/sh\n{real} \"$@\"\n")).unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let tr = OpensshTransport::with_ssh(&wrapper).unwrap();
    let mut s = tr.connect(&tb.target(&n.name)).unwrap();
    assert_eq!(run_ok(&mut s, "echo ok"), "ok\n");
    let running = masters(tr.control_dir(), &n.address);
    // The wrapper's shell and the real client it started: both carry the arguments.
    assert_eq!(running.len(), 2, "{running:?}");
    drop(s);
    let start = Instant::now();
    while !masters(tr.control_dir(), &n.address).is_empty() && start.elapsed().as_secs() < 5 {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(masters(tr.control_dir(), &n.address).is_empty(), "a master outlived its session");
}

/// A one-command session (`connect_once`: facts, a push) logs in when its command runs, with
/// no control master and no socket; a second command is a second login, and a node whose host
/// key changed is refused as by a master.
#[test]
fn a_one_command_session_is_one_login_without_a_master() {
    let Some(tb) = Testbed::up(1, 0) else { return };
    let n = tb.control_plane(1);
    let tr = OpensshTransport::new().unwrap();
    let before = settled_logins(n, 0);
    let mut s = tr.connect_once(&tb.target(&n.name)).unwrap();
    assert_eq!(settled_logins(n, before), before, "no login before the command");
    let out = s.run("echo hello; ls -A \"$1\" | wc -l", &[], &mut empty()).unwrap();
    assert!(out.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().next(), Some("hello"));
    assert_eq!(settled_logins(n, before + 1), before + 1, "one login");
    assert!(masters(tr.control_dir(), &n.address).is_empty(), "a master was started");
    let sockets = std::fs::read_dir(tr.control_dir()).unwrap().count();
    assert_eq!(sockets, 0, "something was made in the control directory");
    run_ok(&mut s, "true");
    assert_eq!(settled_logins(n, before + 2), before + 2, "the second command logs in again");
    // A changed host key: refused as by a master (exit 4's category), and never logged in.
    tb.change_host_keys(&n.name);
    let mut s = tr.connect_once(&tb.target(&n.name)).unwrap();
    let err = s.run("echo must-not-run", &[], &mut empty()).unwrap_err();
    use hapki::error::{Categorized, Category};
    assert_eq!(err.category(), Category::HostKey, "{err}");
    assert_eq!(settled_logins(n, before + 2), before + 2, "it logged in");
}
