//! Item 12: a push logged in as a normal user without --become cannot read the node's key
//! files. It must say so (and how to fix it), not call them "different shared files" and
//! suggest --replace.

use crate::fixture::{text, Fixture};
use crate::testbed::Testbed;

#[test]
fn a_normal_login_without_become_is_told_to_log_in_as_root_or_add_become() {
    let Some(tb) = Testbed::up(2, 0) else { return };
    let fx = Fixture::new();
    let bundle = fx.bundle();
    let inv = tb.inventory();
    let inv = inv.to_str().unwrap();
    let out = fx.with_bundle("push", &bundle, &["--inventory", inv]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = fx.with_bundle("push", &bundle, &["--inventory", inv, "--user", "hapki-test"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("cannot read ca.key as hapki-test: log in as root or add --become"), "{t}");
    assert!(!t.contains("--replace"), "{t}");
    // Negative control: the same user with --become sees the files as they are.
    let out =
        fx.with_bundle("push", &bundle, &["--inventory", inv, "--user", "hapki-test", "--become"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}
