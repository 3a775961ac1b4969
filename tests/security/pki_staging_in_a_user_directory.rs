//! The PKI's staging (private keys, written by root) sits in /etc/kubernetes: where a local
//! user owns that directory, they could swap the staging directory under root as for artifacts
//! (artifact_staging_swap). hapki refuses such a node before staging a byte, naming the
//! directory and the fix.

use crate::fixture::{text, Fixture, SHARED};
use crate::hand_run::sh;
use crate::testbed::Testbed;

#[test]
fn a_user_owned_kubernetes_dir_is_refused_before_any_key_is_staged() {
    let Some(tb) = Testbed::up(2, 0) else { return };
    let fx = Fixture::new();
    let n = tb.node("kubemaster-2");
    let k = n.etc_kubernetes();
    sh(&format!("chown hapki-intruder: '{}'", k.display()));
    let inv = tb.inventory();
    let out = fx.with_bundle("push", &fx.bundle(), &["--inventory", inv.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(text(&out).contains("/etc/kubernetes is owned by uid"), "{}", text(&out));
    let staged: Vec<_> = std::fs::read_dir(&k).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(staged.is_empty(), "written into the user's directory: {staged:?}");
    // Negative control: root's directory again, and the push installs.
    sh(&format!("chown root: '{}' && chmod 0755 '{}'", k.display(), k.display()));
    let out = fx.with_bundle("push", &fx.bundle(), &["--inventory", inv.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for f in SHARED {
        assert!(k.join("pki").join(f).is_file(), "{f}");
    }
}
