//! What the tests of a pushed same-key CA re-issue share (tests/push_renew.rs,
//! tests/push_workers_reissue.rs): `hapki push` to the testbed's inventory, a program's
//! output, and base64(1) of a file.
//!
//! Include it after `fixture` and `testbed`: `#[path = "support/reissue.rs"] mod reissue;`.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

use crate::fixture::Fixture;
use crate::testbed::Testbed;

/// `hapki push` of `bundle` to every node of the testbed's inventory (built-in transport),
/// `extra` appended.
pub fn push(fx: &Fixture, tb: &Testbed, bundle: &Path, extra: &[&str]) -> Output {
    let inv = tb.inventory();
    let mut args = vec!["--inventory", inv.to_str().unwrap(), "--transport", "builtin"];
    args.extend_from_slice(extra);
    fx.with_bundle("push", bundle, &args)
}

/// `program args` on this machine, its stdout; fails the test when it fails.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// `base64 -w0 FILE`: the form kubeadm writes into certificate-authority-data.
pub fn b64(path: &Path) -> String {
    run("base64", &["-w0", path.to_str().unwrap()])
}
