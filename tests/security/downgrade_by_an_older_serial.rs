//! Item 5: an older bundle (a lower serial: e.g. a vulnerable binary) pushed over a newer one.
//! Every install records its serial, artifacts-only ones too; the operator and the node itself
//! refuse an older one (exit 3, naming both serials) unless --allow-downgrade, which the node
//! records in its history.

use crate::fixture::{text, Fixture};
use crate::hand_run::{
    artifacts_bundle, node_result, on_node, push, run_node_script, stderr, Instr, Parts, TB_ROOT,
};
use crate::testbed::Testbed;

#[test]
fn serial_100_after_serial_200_is_refused_and_the_newer_binary_stays() {
    let Some(tb) = Testbed::up(1, 0) else { return };
    let fx = Fixture::new();
    let n = tb.node("kubemaster-1");
    let dest = format!("{TB_ROOT}/bin/kubelet");
    let new = artifacts_bundle(
        &fx,
        "new.bundle",
        Some(200),
        &[("k", &dest, b"kubelet v2 (fixed)\n", "")],
    );
    let old = artifacts_bundle(
        &fx,
        "old.bundle",
        Some(100),
        &[("k", &dest, b"kubelet v1 (vulnerable)\n", "")],
    );
    let out = push(&fx, &tb, &new, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let out = push(&fx, &tb, &old, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let (_, msg) = node_result(&out, "kubemaster-1");
    assert!(
        msg.contains("100") && msg.contains("200") && msg.contains("--allow-downgrade"),
        "{msg}"
    );
    assert_eq!(std::fs::read(on_node(n, &dest)).unwrap(), b"kubelet v2 (fixed)\n");

    // The node enforces it on its own: the node script run by hand with the old bundle's
    // signed bytes and instructions.
    let p = Parts::extract(&fx, &old);
    let [name, d, mode, owner, after] = p.signed(0);
    let i =
        Instr { name, dest: d, mode, owner, after, bytes: b"kubelet v1 (vulnerable)\n".to_vec() };
    let i2 = i.clone();
    let out = run_node_script(&tb, "kubemaster-1", &p, 100, "-", &[], &[i]);
    assert_eq!(out.code, Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("serial 100") && stderr(&out).contains("serial 200"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(on_node(n, &dest)).unwrap(), b"kubelet v2 (fixed)\n");
    // A compromised operator side that names a newer serial than the bundle's own.
    let out = run_node_script(&tb, "kubemaster-1", &p, 300, "-", &[], &[i2]);
    assert_eq!(out.code, Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("not the signed bundle.json's"), "{}", stderr(&out));
    assert_eq!(std::fs::read(on_node(n, &dest)).unwrap(), b"kubelet v2 (fixed)\n");

    // The deliberate case: installed, and recorded in the node's history.
    let out = push(&fx, &tb, &old, &["--allow-downgrade"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(std::fs::read(on_node(n, &dest)).unwrap(), b"kubelet v1 (vulnerable)\n");
    let history = std::fs::read_to_string(n.state().join("history")).unwrap();
    assert!(history.contains("downgrade from=200 to=100"), "{history}");
    assert_eq!(std::fs::read_to_string(n.state().join("last-serial")).unwrap(), "100\n");
}
