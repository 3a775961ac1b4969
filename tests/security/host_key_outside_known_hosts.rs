//! Attack: substitute a node's host key where only one transport looks. `--transport openssh`
//! used to trust keys the given `--known-hosts` does not hold (a key only in the machine's
//! /etc/ssh/ssh_known_hosts or ssh_known_hosts2 was accepted, while the built-in transport
//! refused it). Both transports now trust exactly the given file; `@cert-authority` lines in it
//! (SSH host certificates) work with the OpenSSH transport, and the built-in one refuses them by
//! name, pointing at `--transport openssh`.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use crate::fixture::{text, Fixture};
use crate::testbed::{TbNode, Testbed};

const TRANSPORTS: [&str; 2] = ["builtin", "openssh"];
const GLOBAL: [&str; 2] = ["/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2"];

/// Puts a file back as it was (or removes it) when dropped, panic or not.
struct Restore(PathBuf, Option<Vec<u8>>);

impl Restore {
    fn new(path: &str) -> Restore {
        Restore(path.into(), std::fs::read(path).ok())
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = match &self.1 {
            Some(b) => std::fs::write(&self.0, b),
            None => std::fs::remove_file(&self.0),
        };
    }
}

fn sh(cmd: &str) {
    let out = std::process::Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
}

/// How known_hosts names the node (`[addr]:port` off port 22).
fn host_pattern(tb: &Testbed, n: &TbNode) -> String {
    if tb.port == 22 {
        n.address.clone()
    } else {
        format!("[{}]:{}", n.address, tb.port)
    }
}

fn push(fx: &Fixture, tb: &Testbed, n: &TbNode, known_hosts: &Path, t: &str) -> Output {
    let list = tb.addr(&n.name);
    let (kh, id) = (known_hosts.to_str().unwrap(), tb.identity());
    let args = [
        "--nodes",
        &list,
        "--user",
        "root",
        "--known-hosts",
        kh,
        "--identity",
        id.to_str().unwrap(),
        "--transport",
        t,
    ];
    fx.with_bundle("push", &fx.bundle(), &args)
}

#[test]
fn a_key_only_in_the_global_known_hosts_files_is_refused_by_both_transports() {
    let Some(tb) = Testbed::up(1, 0) else { return };
    let fx = Fixture::new();
    let n = &tb.nodes[0];
    let key = std::fs::read_to_string(n.host_key_pub("ed25519")).unwrap();
    let key: Vec<&str> = key.split_whitespace().take(2).collect();
    let line = format!("{} {}\n", host_pattern(&tb, n), key.join(" "));
    let _restore: Vec<Restore> = GLOBAL.iter().map(|p| Restore::new(p)).collect();
    for g in GLOBAL {
        let mut text = std::fs::read_to_string(g).unwrap_or_default();
        text.push_str(&line);
        std::fs::write(g, text).unwrap();
    }
    let empty = fx.path("empty_known_hosts");
    std::fs::write(&empty, "").unwrap();
    for t in TRANSPORTS {
        let out = push(&fx, &tb, n, &empty, t);
        assert_eq!(out.status.code(), Some(4), "{t}: {}", text(&out));
        assert!(text(&out).contains("empty_known_hosts"), "{t}: {}", text(&out));
        // Control: the same key in the given file is trusted.
        let out = push(&fx, &tb, n, &tb.known_hosts(), t);
        assert_eq!(out.status.code(), Some(0), "{t}: {}", text(&out));
    }
}

/// Signs the node's ed25519 host key with `ca` and makes its sshd present the certificate.
fn serve_host_certificate(tb: &Testbed, n: &TbNode, ca: &Path) {
    let key = n.host_key_pub("ed25519");
    sh(&format!(
        "ssh-keygen -q -s {} -I {} -h -n {} {}",
        ca.display(),
        n.name,
        n.address,
        key.display()
    ));
    let cert = n.dir.join("ssh_host_ed25519_key-cert.pub");
    assert!(cert.exists());
    let conf = n.dir.join("sshd_config");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str(&format!("HostCertificate {}\n", cert.display()));
    std::fs::write(&conf, text).unwrap();
    // SIGHUP: sshd re-executes itself and reads its configuration again.
    // SAFETY: signalling the pid the testbed recorded for this node's sshd.
    unsafe { libc::kill(n.sshd_pid(), libc::SIGHUP) };
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    while std::net::TcpStream::connect((n.address.as_str(), tb.port)).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(10), "sshd did not come back after SIGHUP");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn cert_authority_lines_work_with_openssh_and_are_refused_by_name_by_builtin() {
    let Some(tb) = Testbed::up(1, 0) else { return };
    let fx = Fixture::new();
    let n = &tb.nodes[0];
    for ca in ["host_ca", "other_ca"] {
        sh(&format!("ssh-keygen -q -t ed25519 -N '' -C {ca} -f {}", fx.path(ca).display()));
    }
    serve_host_certificate(&tb, n, &fx.path("host_ca"));
    let ca_line = |ca: &str| {
        let k = std::fs::read_to_string(fx.path(&format!("{ca}.pub"))).unwrap();
        let k: Vec<&str> = k.split_whitespace().take(2).collect();
        format!("@cert-authority {} {}\n", host_pattern(&tb, n), k.join(" "))
    };
    let (good, other) = (fx.path("kh_ca"), fx.path("kh_other_ca"));
    std::fs::write(&good, ca_line("host_ca")).unwrap();
    std::fs::write(&other, ca_line("other_ca")).unwrap();

    let out = push(&fx, &tb, n, &good, "openssh");
    assert_eq!(out.status.code(), Some(0), "openssh with the node's CA: {}", text(&out));
    let out = push(&fx, &tb, n, &good, "builtin");
    assert_eq!(out.status.code(), Some(4), "builtin: {}", text(&out));
    assert!(text(&out).contains("@cert-authority"), "{}", text(&out));
    assert!(text(&out).contains("--transport openssh"), "{}", text(&out));
    // Negative control: a certificate from another CA is no key of this file's.
    for t in TRANSPORTS {
        let out = push(&fx, &tb, n, &other, t);
        assert_eq!(out.status.code(), Some(4), "{t} with another CA: {}", text(&out));
    }
}

/// A `--known-hosts` path with a space in it: the system ssh reads `UserKnownHostsFile` as a
/// list of files, so the path used to be split in two, and a key in a file named like the first
/// half (another user's, a stale one) was trusted by `--transport openssh` alone.
#[test]
fn a_known_hosts_path_with_a_space_is_one_file_for_both_transports() {
    let Some(tb) = Testbed::up(1, 0) else { return };
    let fx = Fixture::new();
    let n = &tb.nodes[0];
    // "<dir>/nodes" trusts the node; the file the operator names, "<dir>/nodes known_hosts", is
    // empty (the second half, "known_hosts" relative to the working directory, is absent).
    std::fs::copy(tb.known_hosts(), fx.path("nodes")).unwrap();
    let given = fx.path("nodes known_hosts");
    std::fs::write(&given, "").unwrap();
    for t in TRANSPORTS {
        let out = push(&fx, &tb, n, &given, t);
        assert_eq!(out.status.code(), Some(4), "{t}: {}", text(&out));
        assert!(text(&out).contains("nodes known_hosts"), "{t}: {}", text(&out));
    }
    // Control: the same name holding the node's key is trusted, by both.
    std::fs::copy(tb.known_hosts(), &given).unwrap();
    for t in TRANSPORTS {
        let out = push(&fx, &tb, n, &given, t);
        assert_eq!(out.status.code(), Some(0), "{t}: {}", text(&out));
    }
}
