//! Attack: a local user on the operator's machine rides hapki's SSH connections. The OpenSSH
//! transport keeps one control master per node, logged in (as root, on the testbed) for the
//! whole run; whoever can talk to its control socket runs commands on that node without a key.
//! The socket's directory is created 0700 (it was 0755, following the umask: anyone could list
//! the sockets and wait for one to be reachable), and the attacker, `hapki-intruder` running
//! the system `ssh` against the socket, gets nowhere: no check, no command, nothing on the node.
//! Negative control: root, the owner, reaches the same master through the same socket.

use std::path::Path;
use std::process::{Command, Output};

use hapki::transport::openssh::OpensshTransport;
use hapki::transport::Transport;

use crate::testbed::Testbed;

const INTRUDER: &str = "hapki-intruder";

/// The system `ssh` aimed at the control socket `sock` only (`ProxyCommand=false`: if the
/// socket cannot be used, no direct login happens behind it), as `user` (`None`: ourselves).
/// `what` is `-O check`, or the remote command.
fn through_socket(user: Option<&str>, sock: &Path, addr: &str, what: &[&str]) -> Output {
    let mut c = match user {
        Some(u) => {
            let mut c = Command::new("runuser");
            c.args(["-u", u, "--", "ssh"]);
            c
        }
        None => Command::new("ssh"),
    };
    c.args(["-F", "/dev/null", "-o", "BatchMode=yes", "-o", "ProxyCommand=false"]);
    c.args(["-o", "ControlMaster=no", "-o"]).arg(format!("ControlPath={}", sock.display()));
    match what {
        ["-O", op] => c.args(["-O", op]).arg(format!("root@{addr}")),
        cmd => c.arg(format!("root@{addr}")).args(cmd),
    };
    c.output().expect("run ssh")
}

fn as_intruder(cmd: &str) -> Output {
    Command::new("runuser").args(["-u", INTRUDER, "--", "sh", "-c", cmd]).output().unwrap()
}

#[test]
fn another_local_user_cannot_use_the_control_socket() {
    let Some(tb) = Testbed::up(1, 0) else { return };
    let n = tb.control_plane(1);
    let tr = OpensshTransport::new().unwrap();
    let dir = tr.control_dir().to_owned();
    let _session = tr.connect(&tb.target(&n.name)).unwrap();
    let sock = dir.join("cm-0");
    assert!(sock.exists(), "the session's control socket is {}", sock.display());
    let proof = tb.node(&n.name).state().join("intruder-was-here");

    // The directory hides the sockets: no listing, no lookup.
    let ls = as_intruder(&format!("ls '{}'", dir.display()));
    assert!(!ls.status.success(), "the intruder lists the control directory: {ls:?}");
    let probe = as_intruder(&format!("test -e '{}'", sock.display()));
    assert!(!probe.status.success(), "the intruder sees the socket");

    // The attack: ask the master, then run a command on the node through it.
    let check = through_socket(Some(INTRUDER), &sock, &n.address, &["-O", "check"]);
    assert!(!check.status.success(), "{check:?}");
    let touch = "touch /var/lib/hapki/intruder-was-here";
    let ran = through_socket(Some(INTRUDER), &sock, &n.address, &[touch]);
    assert!(!ran.status.success(), "{ran:?}");
    assert!(!proof.exists(), "the intruder ran a command on the node through hapki's socket");

    // Negative control: the owner reaches the same master through the same socket.
    let check = through_socket(None, &sock, &n.address, &["-O", "check"]);
    assert!(check.status.success(), "{check:?}");
    let ok = through_socket(None, &sock, &n.address, &[touch]);
    assert!(ok.status.success(), "{ok:?}");
    assert!(proof.exists(), "the owner's command did not run through the socket");
}
