//! The one way tests run the hapki binary, and the file list they hold it to.
//!
//! Other support files include it with `#[path = "cli.rs"] mod cli;` and re-export what their
//! tests use; a test that needs nothing else includes it with
//! `#[path = "support/cli.rs"] mod cli;`.
#![allow(dead_code)]

use std::process::Output;

use assert_cmd::cargo::CommandCargoExt;
use assert_cmd::Command;

/// The eight shared files kubeadm's docs name, written out here rather than taken from the
/// library so that a change to the library's table cannot silently change what the tests expect.
pub const SHARED: [&str; 8] = [
    "ca.crt",
    "ca.key",
    "sa.key",
    "sa.pub",
    "front-proxy-ca.crt",
    "front-proxy-ca.key",
    "etcd/ca.crt",
    "etcd/ca.key",
];

/// The `hapki` binary under test.
pub fn hapki() -> Command {
    Command::from(hapki_process())
}

/// The `hapki` binary as a plain `std::process::Command`, for tests that spawn it and act
/// while it runs.
pub fn hapki_process() -> std::process::Command {
    let mut c = std::process::Command::cargo_bin("hapki").expect("the hapki binary");
    // The operator's own agent must not change what the tests see.
    c.env_remove("SSH_AUTH_SOCK");
    c
}

/// stdout then stderr, for assertion messages and `contains` checks.
pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}
