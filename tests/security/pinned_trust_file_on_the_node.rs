//! Items 3 and 14 (node side): a node holding its own /etc/hapki/allowed_signers verifies
//! bundles against it alone, and only its lines whose namespaces= lists hapki-bundle count —
//! so an operator side that trusts another key (or a git-signing line without namespaces=)
//! cannot make the node install anything. `hapki trust install` puts the file there.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::fixture::{hapki, text, Fixture};
use crate::hand_run::{artifacts_bundle, node_result, on_node, push, TB_ROOT};
use crate::testbed::Testbed;

fn key_of(pubfile: &Path) -> String {
    let k = std::fs::read_to_string(pubfile).unwrap();
    k.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

/// Pins `text` on the node by hand, root's, with `mode`.
fn pin(file: &Path, text: &str, mode: u32) {
    std::fs::write(file, text).unwrap();
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn trust_install(tb: &Testbed, trust: &Path) -> std::process::Output {
    let inv = tb.inventory();
    hapki()
        .args(["trust", "install", "--inventory", inv.to_str().unwrap(), "--trust"])
        .arg(trust)
        .output()
        .unwrap()
}

#[test]
fn a_pinned_trust_file_is_the_nodes_only_trust_and_needs_the_namespace() {
    let Some(tb) = Testbed::up(1, 0) else { return };
    let fx = Fixture::new();
    let n = tb.node("kubemaster-1");
    let dest = format!("{TB_ROOT}/tool");
    let bundle = artifacts_bundle(&fx, "tool.bundle", None, &[("t", &dest, b"tool\n", "")]);
    let file: PathBuf = n.dir.join("etc-hapki/allowed_signers");
    let signer = key_of(&fx.signer().with_extension("pub"));
    // Another key: the release signer the node's owner trusts instead of the operator's.
    let other = fx.path("other");
    hapki().args(["keygen", "--principal", "release", "--out"]).arg(&other).assert().success();
    let other = key_of(&other.with_extension("pub"));

    // The operator trusts its signer; the node pins another key: refused on the node.
    pin(&file, &format!("release namespaces=\"hapki-bundle\" {other}\n"), 0o644);
    let out = push(&fx, &tb, &bundle, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let msg = node_result(&out, "kubemaster-1").1;
    assert!(msg.contains("/etc/hapki/allowed_signers"), "{msg}");
    assert!(!on_node(n, &dest).exists());

    // The signer's key pinned without namespaces= (a git-signing line): refused.
    pin(&file, &format!("ops {signer}\n"), 0o644);
    let out = push(&fx, &tb, &bundle, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(node_result(&out, "kubemaster-1").1.contains("namespaces"), "{}", text(&out));
    assert!(!on_node(n, &dest).exists());

    // The right line, but the file group-writable: refused.
    let good = format!("release namespaces=\"git,hapki-bundle\" {signer}\n");
    pin(&file, &good, 0o664);
    let out = push(&fx, &tb, &bundle, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(node_result(&out, "kubemaster-1").1.contains("writable"), "{}", text(&out));
    assert!(!on_node(n, &dest).exists());
    std::fs::remove_file(&file).unwrap();

    // `hapki trust install` refuses a file that would let no key sign bundles…
    let no_ns = fx.path("no_ns");
    std::fs::write(&no_ns, format!("ops {signer}\n")).unwrap();
    let out = trust_install(&tb, &no_ns);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("namespaces"), "{}", text(&out));
    assert!(!file.exists());
    // …and pins a good one, root's, 0644, in a 0755 directory.
    let good_file = fx.path("good");
    std::fs::write(&good_file, &good).unwrap();
    let out = trust_install(&tb, &good_file);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), good);
    let (f, d) =
        (std::fs::metadata(&file).unwrap(), std::fs::metadata(n.dir.join("etc-hapki")).unwrap());
    assert_eq!((f.mode() & 0o7777, f.uid(), f.gid()), (0o644, 0, 0));
    assert_eq!((d.mode() & 0o7777, d.uid()), (0o755, 0));

    // Negative control: now the push installs, and the node records the principal its own
    // file names.
    let out = push(&fx, &tb, &bundle, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(std::fs::read(on_node(n, &dest)).unwrap(), b"tool\n");
    let history = std::fs::read_to_string(n.state().join("history")).unwrap();
    assert!(history.contains("signer=release"), "{history}");
}
