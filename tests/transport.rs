//! Both transports against real sshd nodes on the testbed: one suite, run for each backend.

#[path = "support/testbed.rs"]
mod testbed;

use std::io::Cursor;
use std::process::Command;
use std::time::Duration;

use hapki::error::{Categorized, Category};
use hapki::transport::builtin::BuiltinTransport;
use hapki::transport::openssh::OpensshTransport;
use hapki::transport::ssh_config::SshConfig;
use hapki::transport::{for_each_parallel, Target, Transport, TransportError};
use sha2::{Digest, Sha256};
use testbed::Testbed;

fn backends() -> Vec<(&'static str, Box<dyn Transport>)> {
    vec![
        // An empty ssh config: the operator's ~/.ssh/config must not change what the test sees.
        (
            "builtin",
            Box::new(
                BuiltinTransport::new().with_ssh_config(SshConfig::default()).with_agent(false),
            ),
        ),
        ("openssh", Box::new(OpensshTransport::new().unwrap())),
    ]
}

fn empty() -> Cursor<Vec<u8>> {
    Cursor::new(Vec::new())
}

#[test]
fn awkward_arguments_arrive_exactly() {
    let Some(tb) = Testbed::up(1, 0) else { return };
    let args = [
        "",
        "it's",
        "$(touch /var/lib/hapki/pwned)",
        "`touch /var/lib/hapki/pwned`",
        "a\nb",
        "-n",
        "--",
        "; touch /var/lib/hapki/pwned",
        "back\\slash",
        "\"dq\"",
        "* ?",
        "ünï ✓",
    ];
    for (name, tr) in backends() {
        let mut s = tr.connect(&tb.target("kubemaster-1")).unwrap();
        let out =
            s.run(r#"for a in "$@"; do printf '%s\0' "$a"; done"#, &args, &mut empty()).unwrap();
        assert!(out.success(), "{name}: {out:?}");
        let got: Vec<&[u8]> = out.stdout.split(|b| *b == 0).collect();
        let want: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).chain([&b""[..]]).collect();
        assert_eq!(got, want, "{name}");
        assert!(!tb.node("kubemaster-1").state().join("pwned").exists(), "{name}: injection ran");

        let out = s.run("echo oops >&2; exit 3", &[], &mut empty()).unwrap();
        assert_eq!((out.code, out.stderr.as_slice()), (Some(3), &b"oops\n"[..]), "{name}");
        let err = out.check("10.0.0.1", "the step").unwrap_err();
        assert!(
            err.to_string().contains("the step failed on the node (exit status 3): oops"),
            "{err}"
        );
        assert_eq!(err.category(), Category::NodesFailed);
    }
}

#[test]
fn streams_megabytes_both_ways() {
    let Some(tb) = Testbed::up(1, 0) else { return };
    let data: Vec<u8> =
        (0..6 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let want = hex::encode(Sha256::digest(&data));
    for (name, tr) in backends() {
        let mut s = tr.connect(&tb.target("kubemaster-1")).unwrap();
        let out = s.run("sha256sum", &[], &mut Cursor::new(data.clone())).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).split_whitespace().next(),
            Some(want.as_str()),
            "{name}"
        );
        // Echoed back while still sending: input and output windows fill at the same time.
        let out = s.run("cat; echo done >&2", &[], &mut Cursor::new(data.clone())).unwrap();
        assert!(out.stdout == data, "{name}: echo differs ({} bytes back)", out.stdout.len());
        assert_eq!(out.stderr, b"done\n", "{name}");
    }
}

#[test]
fn every_node_is_its_own_machine() {
    let Some(tb) = Testbed::up(2, 1) else { return };
    for n in &tb.nodes {
        std::fs::write(n.etc_kubernetes().join("whoami"), &n.name).unwrap();
    }
    for (name, tr) in backends() {
        let targets: Vec<Target> = tb.nodes.iter().map(|n| tb.target(&n.name)).collect();
        let outs = for_each_parallel(&targets, 8, |t| {
            let mut s = tr.connect(t)?;
            s.run("hostname; cat /etc/kubernetes/whoami", &[], &mut empty())
        });
        for (n, out) in tb.nodes.iter().zip(outs) {
            let out = out.unwrap();
            assert_eq!(
                String::from_utf8(out.stdout).unwrap(),
                format!("{0}\n{0}", n.name),
                "{name}"
            );
        }
    }
}

fn ssh_keygen_fingerprint(pubkey: &std::path::Path) -> String {
    let out = Command::new("ssh-keygen").arg("-lf").arg(pubkey).output().unwrap();
    String::from_utf8(out.stdout).unwrap().split_whitespace().nth(1).unwrap().to_owned()
}

#[test]
fn unknown_host_is_refused_with_its_fingerprint() {
    let Some(tb) = Testbed::up(1, 0) else { return };
    let empty_kh = tb.dir.join("empty_known_hosts");
    std::fs::write(&empty_kh, "").unwrap();
    let node = tb.node("kubemaster-1");
    let want = ssh_keygen_fingerprint(&node.host_key_pub("ed25519"));
    for (name, tr) in backends() {
        let mut t = tb.target("kubemaster-1");
        t.known_hosts = empty_kh.clone();
        let err = tr.connect(&t).expect_err("unknown host must be refused");
        assert_eq!(err.category(), Category::HostKey, "{name}: {err}");
        match &err {
            TransportError::HostKeyUnknown { fingerprint, key_type, hint, .. } => {
                assert_eq!(fingerprint.as_deref(), Some(want.as_str()), "{name}");
                assert_eq!(&**key_type, "ssh-ed25519");
                assert_eq!(
                    hint,
                    &format!(
                        "ssh-keyscan -p 22 -t ed25519 {} >> '{}'",
                        node.address,
                        empty_kh.display()
                    )
                );
            }
            e => panic!("{name}: {e}"),
        }
        assert_eq!(
            std::fs::read_to_string(&empty_kh).unwrap(),
            "",
            "{name}: known_hosts was modified"
        );
        assert!(!err.to_string().contains('\n'));
    }
}

#[test]
fn changed_host_key_sends_nothing() {
    let Some(tb) = Testbed::up(2, 0) else { return };
    let node = tb.node("kubemaster-2");
    // A man in the middle: known_hosts holds other keys (same types) for kubemaster-2.
    let other = tb.dir.join("other_key");
    assert!(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .status()
        .unwrap()
        .success());
    let other_pub = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    let other_pub: Vec<&str> = other_pub.split_whitespace().take(2).collect();
    let kh = std::fs::read_to_string(tb.known_hosts()).unwrap();
    let mitm: String = kh
        .lines()
        .filter(|l| !l.starts_with(&format!("{} ecdsa", node.address)))
        .map(|l| {
            if l.starts_with(&format!("{} ", node.address)) {
                format!("{} {}\n", node.address, other_pub.join(" "))
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let mitm_kh = tb.dir.join("mitm_known_hosts");
    std::fs::write(&mitm_kh, mitm).unwrap();
    let log = node.dir.join("sshd.log");
    let log_before = std::fs::read_to_string(&log).unwrap().len();
    for (name, tr) in backends() {
        let mut t = tb.target("kubemaster-2");
        t.known_hosts = mitm_kh.clone();
        let marker = node.state().join(format!("ran-{name}"));
        let res = tr
            .connect(&t)
            .and_then(|mut s| s.run("touch /var/lib/hapki/ran-$1", &[name], &mut empty()));
        let err = res.expect_err("a changed host key must be refused");
        assert_eq!(err.category(), Category::HostKey, "{name}: {err}");
        match &err {
            TransportError::HostKeyChanged { fingerprint, .. } => {
                assert_eq!(
                    fingerprint.as_deref(),
                    Some(ssh_keygen_fingerprint(&node.host_key_pub("ed25519")).as_str()),
                    "{name}"
                );
            }
            e => panic!("{name}: {e}"),
        }
        assert!(!marker.exists(), "{name}: the command ran");
    }
    // Not even authentication was attempted: sshd (LogLevel VERBOSE) logs every key offered.
    std::thread::sleep(Duration::from_millis(100));
    let log_after = std::fs::read_to_string(&log).unwrap();
    let new = &log_after[log_before..];
    assert!(!new.contains("publickey") && !new.contains("Accepted"), "auth was attempted:\n{new}");
    // The untouched node still works with the real known_hosts.
    for (_, tr) in backends() {
        assert!(tr.connect(&tb.target("kubemaster-1")).is_ok());
    }
}

/// A command that prints nothing for longer than "three unanswered keepalives" is alive as long as
/// sshd answers the probes. (The built-in transport once missed answers that libssh2 consumed
/// inside its next read and, on an idle machine, ended every silent command after 15 s — real
/// `kubeadm join` is silent that long.) Short keepalives make the test quick; a stopped sshd is
/// the negative control: the same wait then ends as a timeout.
#[test]
fn a_silent_command_outlives_three_keepalive_intervals() {
    let Some(tb) = Testbed::up(1, 0) else { return };
    for (name, tr) in backends() {
        let mut t = tb.target("kubemaster-1");
        t.keepalive = Duration::from_secs(1);
        t.connect_timeout = Duration::from_secs(1);
        let mut s = tr.connect(&t).unwrap();
        // 3 s without a byte is "dead" for this target; 7 s of silence must not be.
        let out = s.run("sleep 7; echo done", &[], &mut empty()).unwrap();
        assert_eq!(out.stdout, b"done\n", "{name}: {out:?}");
    }
    // Negative control: the node's processes (its sshd among them) frozen mid-command.
    let mut t = tb.target("kubemaster-1");
    t.keepalive = Duration::from_secs(1);
    t.connect_timeout = Duration::from_secs(1);
    let tr = &backends()[0].1;
    let mut s = tr.connect(&t).unwrap();
    let node = tb.node("kubemaster-1").dir.display().to_string();
    let mine = format!(
        "for p in /proc/[0-9]*; do grep -qF '{node}/etc-kubernetes /etc/kubernetes ' $p/mountinfo \
         2>/dev/null && echo ${{p#/proc/}}; done"
    );
    let freeze = format!("sleep 1; kill -STOP $({mine})");
    let mut freezer = Command::new("sh").arg("-c").arg(&freeze).spawn().unwrap();
    let err = s.run("sleep 30", &[], &mut empty()).expect_err("a frozen node must time out");
    let _ = freezer.wait();
    let _ = Command::new("sh").arg("-c").arg(format!("kill -CONT $({mine})")).status();
    assert!(matches!(err, TransportError::Timeout { .. }), "{err}");
}

#[test]
fn dead_node_is_unreachable() {
    let Some(tb) = Testbed::up(1, 0) else { return };
    tb.kill_sshd("kubemaster-1");
    for (name, tr) in backends() {
        let err = tr.connect(&tb.target("kubemaster-1")).expect_err("dead node");
        assert!(matches!(err, TransportError::Unreachable { .. }), "{name}: {err}");
        assert_eq!(err.category(), Category::NodesFailed);
    }
}

#[test]
fn become_uses_sudo_for_a_normal_user() {
    let Some(tb) = Testbed::up(1, 0) else { return };
    for (name, tr) in backends() {
        let mut t = tb.target("kubemaster-1");
        t.user = Some("hapki-test".to_owned());
        let mut s = tr.connect(&t).unwrap();
        let out = s.run("id -u", &[], &mut empty()).unwrap();
        assert_ne!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "0",
            "{name}: the login user is not root"
        );
        drop(s);
        t.become_ = true;
        let mut s = tr.connect(&t).unwrap();
        let out = s
            .run("id -u; printf '%s' \"$1\" > /var/lib/hapki/became", &["x y"], &mut empty())
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "0\n",
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::read_to_string(tb.node("kubemaster-1").state().join("became")).unwrap(),
            "x y"
        );
    }
}

#[test]
fn wrong_login_key_is_an_auth_error() {
    let Some(tb) = Testbed::up(1, 0) else { return };
    let other = tb.dir.join("stranger");
    assert!(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .status()
        .unwrap()
        .success());
    for (name, tr) in backends() {
        let mut t = tb.target("kubemaster-1");
        t.identity = vec![other.clone()];
        let err = tr.connect(&t).expect_err("stranger key");
        assert!(matches!(err, TransportError::Auth { .. }), "{name}: {err}");
    }
}
