//! Items 3 and 14 (node side): a node holding its own /etc/hapki/allowed_signers verifies
//! bundles against it alone, and only its lines whose namespaces= lists hapki-bundle count —
//! so an operator side that trusts another key (or a git-signing line without namespaces=)
//! cannot make the node install anything.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use crate::fixture::{hapki, text, Fixture};
use crate::hand_run::{artifacts_bundle, node_result, on_node, push, TB_ROOT};
use crate::testbed::Testbed;

fn key_of(pubfile: &std::path::Path) -> String {
    let k = std::fs::read_to_string(pubfile).unwrap();
    k.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

#[test]
fn a_pinned_trust_file_is_the_nodes_only_trust_and_needs_the_namespace() {
    let Some(tb) = Testbed::up(1, 0) else { return };
    let fx = Fixture::new();
    let n = tb.node("kubemaster-1");
    let dest = format!("{TB_ROOT}/tool");
    let bundle = artifacts_bundle(&fx, "tool.bundle", None, &[("t", &dest, b"tool\n", "")]);
    // Another key, the release signer the node's owner trusts instead.
    let other = fx.path("other");
    hapki().args(["keygen", "--principal", "release", "--out"]).arg(&other).assert().success();
    let pinned_other = fx.path("pinned_other");
    std::fs::write(
        &pinned_other,
        format!("release namespaces=\"hapki-bundle\" {}\n", key_of(&other.with_extension("pub"))),
    )
    .unwrap();

    // A trust file without any hapki-bundle line is refused before any node is touched.
    let no_ns = fx.path("no_ns");
    std::fs::write(&no_ns, format!("ops {}\n", key_of(&fx.signer().with_extension("pub"))))
        .unwrap();
    let inv = tb.inventory();
    let inv = inv.to_str().unwrap();
    let out = hapki()
        .args(["trust", "install", "--inventory", inv, "--trust"])
        .arg(&no_ns)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("namespaces"), "{}", text(&out));

    let out = hapki()
        .args(["trust", "install", "--inventory", inv, "--trust"])
        .arg(&pinned_other)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let file = n.dir.join("etc-hapki/allowed_signers");
    assert_eq!(std::fs::read(&file).unwrap(), std::fs::read(&pinned_other).unwrap());
    let (f, d) =
        (std::fs::metadata(&file).unwrap(), std::fs::metadata(n.dir.join("etc-hapki")).unwrap());
    assert_eq!((f.mode() & 0o7777, f.uid(), f.gid()), (0o644, 0, 0));
    assert_eq!((d.mode() & 0o7777, d.uid()), (0o755, 0));

    // The operator trusts its own signer; the node does not.
    let out = push(&fx, &tb, &bundle, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        node_result(&out, "kubemaster-1").1.contains("/etc/hapki/allowed_signers"),
        "{}",
        text(&out)
    );
    assert!(!on_node(n, &dest).exists());

    // The signer's key pinned by hand, but without namespaces= (a git-signing line): refused.
    std::fs::write(&file, std::fs::read(&no_ns).unwrap()).unwrap();
    let out = push(&fx, &tb, &bundle, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(node_result(&out, "kubemaster-1").1.contains("namespaces"), "{}", text(&out));
    assert!(!on_node(n, &dest).exists());

    // Pinned with the namespace but group-writable: refused.
    let good = format!(
        "release namespaces=\"git,hapki-bundle\" {}\n",
        key_of(&fx.signer().with_extension("pub"))
    );
    std::fs::write(&file, &good).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o664)).unwrap();
    let out = push(&fx, &tb, &bundle, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(node_result(&out, "kubemaster-1").1.contains("writable"), "{}", text(&out));
    assert!(!on_node(n, &dest).exists());

    // Negative control: the signer's key, namespace listed, root's 0644: installs, and the
    // node records the principal its own file names.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = push(&fx, &tb, &bundle, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(std::fs::read(on_node(n, &dest)).unwrap(), b"tool\n");
    let history = std::fs::read_to_string(n.state().join("history")).unwrap();
    assert!(history.contains("signer=release"), "{history}");
}
