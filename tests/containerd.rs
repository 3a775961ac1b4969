//! The offline installer on a real containerd (issue 16): image archives built offline, pushed
//! by role to a testbed whose every node runs its own containerd (`scripts/testbed up
//! --containerd`), imported with their digests, pinned, seen by `audit`; a broken node is found
//! and repaired alone; an archive containerd cannot import fails its node, naming the image.
//!
//! Expected digests come from each archive's own index.json (read with tar and serde_json), and
//! what each node holds from `ctr -n k8s.io images ls` run on the node: nothing of hapki's.

#[path = "support/fixture.rs"]
mod fixture;
#[path = "support/images.rs"]
mod images;
#[path = "support/testbed.rs"]
mod testbed;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use fixture::{hapki, report, statuses, text, Fixture};
use images::{index_digests, oci_archive, oci_archive_with, KUBEADM_1_20_2};
use testbed::Testbed;

const IMAGES_DIR: &str = "/etc/kubernetes/images";

/// What a node's containerd holds in k8s.io: name → (digest, pinned), from `ctr` on the node.
fn node_images(tb: &Testbed, node: &str) -> BTreeMap<String, (String, bool)> {
    images::parse_ctr_ls(&tb.ok(node, "ctr -n k8s.io images ls"))
}

/// Every image of each archive is on the node with the archive's digest, pinned.
fn assert_imported(tb: &Testbed, node: &str, archives: &[&Path]) {
    let have = node_images(tb, node);
    for a in archives {
        for (name, digest) in index_digests(a) {
            match have.get(&name) {
                Some((d, pinned)) => {
                    assert_eq!(d, &digest, "{node}: {name} has another digest");
                    assert!(pinned, "{node}: {name} is not pinned");
                }
                None => panic!("{node}: {name} is not in containerd: {have:?}"),
            }
        }
    }
}

/// A bundle of the fixture's PKI (encrypted to the signer) and the image archives of `spec`.
fn bundle(fx: &Fixture, spec: &Path, out: &str) -> PathBuf {
    let path = fx.path(out);
    let recipient = std::fs::read_to_string(fx.signer().with_extension("pub")).unwrap();
    hapki()
        .args(["bundle", "--artifacts"])
        .arg(spec)
        .arg("--pki-dir")
        .arg(fx.pki())
        .args(["--recipient", recipient.trim()])
        .arg("--sign-key")
        .arg(fx.signer())
        .arg("--out")
        .arg(&path)
        .assert()
        .success();
    path
}

fn push(fx: &Fixture, tb: &Testbed, b: &Path, transport: &str) -> Output {
    let inv = tb.inventory();
    let args = ["--inventory", inv.to_str().unwrap(), "--output", "json", "--transport", transport];
    fx.with_bundle("push", b, &args)
}

fn audit(fx: &Fixture, tb: &Testbed, b: &Path) -> Output {
    fx.audit(&tb.inventory(), b, "json")
}

/// (node, kind, file) of every audit problem.
fn problems(out: &Output) -> Vec<(String, String, String)> {
    report(out)["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let s = |k: &str| p[k].as_str().unwrap_or_default().to_string();
            (s("node"), s("kind"), s("message"))
        })
        .collect()
}

fn imports_in_history(tb: &Testbed, node: &str) -> usize {
    let h = std::fs::read_to_string(tb.node(node).state().join("history")).unwrap_or_default();
    h.lines().filter(|l| l.contains("after=import-images dest=")).count()
}

fn spec(dir: &Path, entries: &[(&Path, &str, &str)]) -> PathBuf {
    let mut s = String::new();
    for (src, dest, roles) in entries {
        s += &format!(
            "[[artifacts]]\nsource = \"{}\"\ndest = \"{IMAGES_DIR}/{dest}\"\nroles = {roles}\nafter = \"import-images\"\n\n",
            src.display()
        );
    }
    let p = dir.join(format!("spec-{}.toml", entries.len()));
    std::fs::write(&p, s).unwrap();
    p
}

#[test]
fn images_land_with_their_digests_pinned_audited_and_repaired_per_node() {
    let Some(tb) = Testbed::up_with(3, 1, &["--containerd"]) else { return };
    let fx = Fixture::new();
    // The first master holds the cluster's PKI already (push never writes there).
    let pki = tb.control_plane(1).etc_kubernetes().join("pki");
    for f in fixture::SHARED {
        let to = pki.join(f);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(fx.pki().join(f), &to).unwrap();
    }
    // A joined worker holds the cluster's ca.crt (from kubeadm join's discovery).
    let wpki = tb.node("kubenode-1").etc_kubernetes().join("pki");
    std::fs::create_dir_all(&wpki).unwrap();
    std::fs::copy(fx.pki().join("ca.crt"), wpki.join("ca.crt")).unwrap();
    let work = fx.path("images");
    // kubeadm's control-plane images for control planes; kube-proxy and pause for every node.
    let (cp_names, node_names) = (
        [KUBEADM_1_20_2[0], KUBEADM_1_20_2[1], KUBEADM_1_20_2[2], KUBEADM_1_20_2[5]],
        [KUBEADM_1_20_2[3], KUBEADM_1_20_2[4]],
    );
    // kube-apiserver as `ctr images export` writes an image pulled for one platform: a
    // multi-platform index whose archive holds only linux/amd64 (this machine's) content.
    let cp = oci_archive_with(&work, &work.join("control-plane.tar"), &cp_names, false, true);
    let nd = oci_archive(&work, &work.join("node.tar"), &node_names, false);
    assert_eq!(index_digests(&cp).len(), 4);
    let s = spec(
        &work,
        &[(&cp, "control-plane.tar", r#"["control-plane"]"#), (&nd, "node.tar", r#"["all"]"#)],
    );
    let b = bundle(&fx, &s, "images.bundle");

    let out = push(&fx, &tb, &b, "openssh");
    assert!(out.status.success(), "push: {}", text(&out));
    let st = statuses(&out);
    for n in &tb.nodes {
        assert_eq!(st[&n.name].0, "installed", "{}: {:?}", n.name, st[&n.name]);
        let want: Vec<&Path> = if n.control_plane { vec![&cp, &nd] } else { vec![&nd] };
        assert_imported(&tb, &n.name, &want);
        assert_eq!(imports_in_history(&tb, &n.name), want.len(), "{}", n.name);
    }
    // A worker never gets the control-plane images.
    let w = node_images(&tb, "kubenode-1");
    assert!(!w.contains_key(cp_names[0]), "kubenode-1 holds {}", cp_names[0]);

    let out = audit(&fx, &tb, &b);
    assert_eq!(out.status.code(), Some(0), "audit of a clean fleet: {}", text(&out));
    let r = report(&out);
    for n in r["nodes"].as_array().unwrap() {
        let imgs = n["images"].as_object().unwrap();
        assert!(!imgs.is_empty() && imgs.values().all(|v| v == "present"), "{n}");
    }

    // Break three nodes three ways: an image deleted, one unpinned, one pointing elsewhere.
    tb.ok("kubenode-1", "ctr -n k8s.io images rm k8s.gcr.io/pause:3.2");
    tb.ok(
        "kubemaster-2",
        "ctr -n k8s.io images label k8s.gcr.io/etcd:3.4.13-0 io.cri-containerd.pinned=",
    );
    tb.ok(
        "kubemaster-3",
        "ctr -n k8s.io images rm k8s.gcr.io/kube-proxy:v1.20.2 && \
         ctr -n k8s.io images tag k8s.gcr.io/pause:3.2 k8s.gcr.io/kube-proxy:v1.20.2",
    );
    let out = audit(&fx, &tb, &b);
    assert_eq!(out.status.code(), Some(6), "audit must report the runtime: {}", text(&out));
    let mut found: Vec<(String, String)> = problems(&out)
        .into_iter()
        .map(|(n, k, m)| {
            let img = KUBEADM_1_20_2.iter().find(|i| m.contains(*i)).unwrap_or(&"?");
            (n, format!("{k} {img}"))
        })
        .collect();
    found.sort();
    assert_eq!(
        found,
        [
            ("kubemaster-2".into(), "image-unpinned k8s.gcr.io/etcd:3.4.13-0".into()),
            ("kubemaster-3".into(), "image-digest k8s.gcr.io/kube-proxy:v1.20.2".into()),
            ("kubenode-1".into(), "image-missing k8s.gcr.io/pause:3.2".into()),
        ],
        "{}",
        text(&out)
    );

    // The matrix for people: one row per image, a cell per node.
    let table = hapki()
        .args(["audit", "--inventory", tb.inventory().to_str().unwrap(), "--bundle"])
        .arg(&b)
        .arg("--trust")
        .arg(fx.allowed())
        .arg("--decrypt-key")
        .arg(fx.signer())
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    let row = |img: &str| {
        let l = table.lines().find(|l| l.starts_with(img)).unwrap_or_else(|| panic!("{table}"));
        l.split_whitespace().skip(1).map(str::to_string).collect::<Vec<_>>()
    };
    assert_eq!(row("k8s.gcr.io/pause:3.2"), ["present", "present", "present", "missing"]);
    assert_eq!(row("k8s.gcr.io/etcd:3.4.13-0"), ["present", "unpinned", "present"], "{table}");
    assert_eq!(row("k8s.gcr.io/kube-proxy:v1.20.2")[2], "digest", "{table}");

    // Push again: only the broken nodes re-import, the intact one is left alone.
    let before: Vec<usize> = tb.nodes.iter().map(|n| imports_in_history(&tb, &n.name)).collect();
    let out = push(&fx, &tb, &b, "builtin");
    assert!(out.status.success(), "push: {}", text(&out));
    let st = statuses(&out);
    assert_eq!(st["kubemaster-1"].0, "unchanged", "{:?}", st);
    for n in ["kubemaster-2", "kubemaster-3", "kubenode-1"] {
        assert_eq!(st[n].0, "installed", "{n}: {:?}", st[n]);
    }
    let after: Vec<usize> = tb.nodes.iter().map(|n| imports_in_history(&tb, &n.name)).collect();
    assert_eq!(after[0], before[0], "kubemaster-1 re-imported");
    for i in 1..4 {
        assert!(after[i] > before[i], "{} did not re-import", tb.nodes[i].name);
    }
    for n in &tb.nodes {
        let want: Vec<&Path> = if n.control_plane { vec![&cp, &nd] } else { vec![&nd] };
        assert_imported(&tb, &n.name, &want);
    }
    let out = audit(&fx, &tb, &b);
    assert_eq!(out.status.code(), Some(0), "audit after the repair: {}", text(&out));

    // An archive containerd cannot import (a layer truncated before signing), for workers only:
    // the worker fails naming the image; the control planes complete.
    let bad = oci_archive(&work, &work.join("extra.tar"), &[KUBEADM_1_20_2[6]], true);
    let s = spec(
        &work,
        &[
            (&cp, "control-plane.tar", r#"["control-plane"]"#),
            (&nd, "node.tar", r#"["all"]"#),
            (&bad, "extra.tar", r#"["worker"]"#),
        ],
    );
    let b2 = bundle(&fx, &s, "bad.bundle");
    let out = push(&fx, &tb, &b2, "openssh");
    assert_eq!(out.status.code(), Some(5), "some nodes failed: {}", text(&out));
    let st = statuses(&out);
    let (status, msg) = &st["kubenode-1"];
    assert_eq!(status, "failed", "{msg}");
    assert!(msg.contains("k8s.gcr.io/coredns:1.7.0") && msg.contains("extra.tar"), "{msg}");
    assert!(!msg.contains('\n'), "not one line: {msg}");
    for n in ["kubemaster-1", "kubemaster-2", "kubemaster-3"] {
        assert_ne!(st[n].0, "failed", "{n}: {:?}", st[n]);
    }
    let h = std::fs::read_to_string(tb.node("kubenode-1").state().join("history")).unwrap();
    assert!(
        h.lines().any(|l| l.contains("import-images FAILED")
            && l.contains("extra.tar")
            && l.contains("k8s.gcr.io/coredns:1.7.0")),
        "the history does not say so:\n{h}"
    );
    assert!(
        !node_images(&tb, "kubenode-1").contains_key(KUBEADM_1_20_2[6]),
        "{msg}\n{}",
        tb.ok("kubenode-1", "ctr -n k8s.io images ls; ctr -n k8s.io content ls")
    );
}
