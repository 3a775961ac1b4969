//! The kubeadm/kubelet stand-ins (tests/standin/) on a testbed: installing them, the PKI maker
//! they come with, their join log, and etcdctl over the stacked etcd's mutual TLS.
//!
//! Include it after `testbed` (it uses it by that name):
//! `#[path = "support/standin.rs"] mod standin;`.
#![allow(dead_code)]

#[path = "openssl.rs"]
mod openssl;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::testbed::{must_run, Testbed};

#[allow(unused_imports)] // each test uses its own part
pub use openssl::openssl_discovery_hash;

fn standin_tool(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/standin").join(name)
}

/// Whether this machine has what the stand-ins need besides the testbed. When it has not, says
/// so loudly and returns false (the test then skips), or panics under CI/HAPKI_REQUIRE_TESTBED.
pub fn prerequisites() -> bool {
    for tool in ["etcd", "etcdctl", "openssl", "sshd", "unshare"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool} || test -x /usr/sbin/{tool}")])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !found {
            let why = format!(
                "{tool} not installed (apt-get install -y etcd-server etcd-client openssh-server)"
            );
            if must_run() {
                panic!("stand-in tests cannot run: {why}");
            }
            eprintln!("\n*** SKIPPED: stand-in tests: {why} ***\n");
            return false;
        }
    }
    true
}

/// `tests/standin/install DIR`: the stand-ins on every node, and `DIR/cluster` with an empty
/// join log.
pub fn install(tb: &Testbed) {
    let out = Command::new(standin_tool("install")).arg(&tb.dir).output().expect("run install");
    assert!(out.status.success(), "standin install: {}", String::from_utf8_lossy(&out.stderr));
}

/// `tests/standin/make-pki DIR`: a shared PKI as kubeadm would make it.
pub fn make_pki(dir: &Path) {
    let out = Command::new(standin_tool("make-pki")).arg(dir).output().expect("run make-pki");
    assert!(out.status.success(), "make-pki: {}", String::from_utf8_lossy(&out.stderr));
}

/// One line of the stand-ins' `cluster/joins.log`: one kubeadm call on one node.
pub struct LogLine {
    pub node: String,
    /// Nanoseconds, from the stand-in's clock.
    pub start: u128,
    pub end: u128,
    pub ok: bool,
    /// The kubeadm subcommand (`init`, `join`, `reset`, …).
    pub sub: String,
    /// The arguments, secrets redacted.
    pub argv: String,
    pub message: String,
}

/// Every call logged so far on the testbed at `dir`.
pub fn read_log(dir: &Path) -> Vec<LogLine> {
    let text = std::fs::read_to_string(dir.join("cluster/joins.log")).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 7, "malformed log line {l:?}");
            LogLine {
                node: f[0].into(),
                start: f[1].parse().unwrap(),
                end: f[2].parse().unwrap(),
                ok: f[3] == "ok",
                sub: f[4].into(),
                argv: f[5].into(),
                message: f[6].into(),
            }
        })
        .collect()
}

/// Copies a local PKI directory to a node's /etc/kubernetes/pki (plain ssh + tar, not hapki).
pub fn put_pki(tb: &Testbed, node: &str, pki: &Path) {
    let tar = Command::new("tar").arg("-C").arg(pki).args(["-cf", "-", "."]).output().unwrap();
    assert!(tar.status.success());
    let out = tb.ssh_stdin(
        node,
        "mkdir -p /etc/kubernetes/pki && tar -C /etc/kubernetes/pki -xf -",
        &tar.stdout,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// etcdctl over mutual TLS from a session on `node`, with the node's healthcheck client
/// certificate; insists it succeeds and returns stdout and stderr (etcdctl 3.4 reports health
/// on stderr).
pub fn etcdctl(tb: &Testbed, node: &str, endpoints: &str, args: &str) -> String {
    tb.ok(
        node,
        &format!(
            "cd /etc/kubernetes/pki/etcd && ETCDCTL_API=3 etcdctl --endpoints {endpoints} \
             --cacert ca.crt --cert healthcheck-client.crt --key healthcheck-client.key {args} 2>&1"
        ),
    )
}
