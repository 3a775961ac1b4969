//! The offline installer: artifacts specs, bundles that carry artifacts, and pushing them to the
//! testbed's nodes.

use std::path::{Path, PathBuf};

use hapki::artifacts::{self, After, Role};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn example_specs() -> Vec<PathBuf> {
    walkdir::WalkDir::new(repo().join("bundles"))
        .into_iter()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "toml"))
        .map(|e| e.path().to_path_buf())
        .collect()
}

#[test]
fn every_example_spec_under_bundles_parses() {
    let specs = example_specs();
    assert!(!specs.is_empty(), "bundles/ has no example spec");
    for spec in specs {
        let text = std::fs::read_to_string(&spec).unwrap();
        let n = artifacts::check_text(&text)
            .unwrap_or_else(|e| panic!("{} stopped parsing: {e}", spec.display()));
        assert!(n >= 8, "{}: only {n} entries", spec.display());
    }
}

/// Writes `files` (relative path, bytes) under `dir` and the spec text as `dir/artifacts.toml`.
fn spec_dir(dir: &Path, spec: &str, files: &[(&str, &[u8])]) -> PathBuf {
    for (rel, bytes) in files {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    let p = dir.join("artifacts.toml");
    std::fs::write(&p, spec).unwrap();
    p
}

fn load_err(spec: &str, files: &[(&str, &[u8])]) -> String {
    let d = tempfile::tempdir().unwrap();
    let p = spec_dir(d.path(), spec, files);
    let e = artifacts::load(&p).expect_err("a hostile spec was accepted");
    use hapki::error::Categorized;
    assert_eq!(e.category(), hapki::error::Category::Usage);
    let msg = e.to_string();
    assert!(!msg.contains('\n'), "not one line: {msg}");
    msg
}

#[test]
fn spec_flattens_directories_in_name_order_with_defaults() {
    let d = tempfile::tempdir().unwrap();
    let spec = r#"
[[artifacts]]
source = "bin/kubelet"
dest = "/usr/local/bin/kubelet"
mode = "0755"
after = "restart-kubelet"

[[artifacts]]
source = "images"
dest = "/var/cache/images"
roles = ["worker"]
after = "import-images"
"#;
    let p = spec_dir(
        d.path(),
        spec,
        &[
            ("bin/kubelet", b"k"),
            ("images/b.tar", b"b"),
            ("images/a.tar", b"a"),
            ("images/sub/c.tar", b"c"),
        ],
    );
    let a = artifacts::load(&p).unwrap();
    let dests: Vec<&str> = a.iter().map(|x| x.dest.as_str()).collect();
    assert_eq!(
        dests,
        [
            "/usr/local/bin/kubelet",
            "/var/cache/images/a.tar",
            "/var/cache/images/b.tar",
            "/var/cache/images/sub/c.tar"
        ]
    );
    assert_eq!(a[0].mode, 0o755);
    assert_eq!(a[0].roles, [Role::ControlPlane, Role::Worker]);
    assert_eq!(a[0].after, Some(After::RestartKubelet));
    assert_eq!(a[1].mode, 0o644);
    assert_eq!(a[1].owner, "0:0");
    assert_eq!(a[1].roles, [Role::Worker]);
    assert_eq!(a[1].source, d.path().join("images/a.tar"));
}

#[test]
fn hostile_specs_are_refused_naming_the_problem() {
    let one = |dest: &str, extra: &str| {
        format!("[[artifacts]]\nsource = \"f\"\ndest = \"{dest}\"\n{extra}\n")
    };
    let f: &[(&str, &[u8])] = &[("f", b"x")];
    let m = load_err(&one("usr/bin/x", ""), f);
    assert!(m.contains("not an absolute path"), "{m}");
    let m = load_err(&one("/usr/../etc/shadow", ""), f);
    assert!(m.contains("not normalized"), "{m}");
    let m = load_err(&one("/etc/kubernetes/pki/ca.key", ""), f);
    assert!(m.contains("/etc/kubernetes/pki"), "{m}");
    let m = load_err(&one("/usr/bin/x", "after = \"rm -rf /\""), f);
    assert!(m.contains("fixed set"), "{m}");
    let m = load_err(&one("/usr/bin/x", "roles = [\"master\"]"), f);
    assert!(m.contains("master"), "{m}");
    let m = load_err(&one("/usr/bin/x", "command = \"id\""), f);
    assert!(m.contains("command"), "{m}");
    let m = load_err("[[artifacts]]\nsource = \"../f\"\ndest = \"/x\"\n", f);
    assert!(m.contains("'..'"), "{m}");
    let m = load_err(&one("/usr/bin/x", ""), &[]);
    assert!(m.contains("source"), "{m}");
    // An over-long dest whose 40th byte falls inside a two-byte character: an error quoting its
    // first 40 characters, not a panic (the message was cut at byte 40).
    let long = format!("/{}", "é".repeat(600));
    let m = load_err(&one(&long, ""), f);
    assert!(m.contains("longer than 1024 bytes"), "{m}");
    assert!(m.contains(&format!("\"/{}\"…", "é".repeat(39))), "{m}");
    // The same dest twice, and a file that would have to be a directory.
    let two = format!("{}{}", one("/opt/x", ""), one("/opt/x", ""));
    assert!(load_err(&two, f).contains("two artifacts"));
    let nested =
        format!("{}[[artifacts]]\nsource = \"d\"\ndest = \"/opt/x\"\n", one("/opt/x/y", ""));
    assert!(load_err(&nested, &[("f", b"x"), ("d/y", b"y")]).contains("/opt/x"));

    // Links and special files inside a directory source, and a linked source itself.
    let d = tempfile::tempdir().unwrap();
    let p = spec_dir(
        d.path(),
        "[[artifacts]]\nsource = \"dir\"\ndest = \"/opt/d\"\n",
        &[("dir/a", b"a")],
    );
    std::os::unix::fs::symlink("/etc/shadow", d.path().join("dir/evil")).unwrap();
    let m = artifacts::load(&p).unwrap_err().to_string();
    assert!(m.contains("dir/evil") && m.contains("symbolic link"), "{m}");
    std::fs::remove_file(d.path().join("dir/evil")).unwrap();
    let fifo = d.path().join("dir/fifo");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let m = artifacts::load(&p).unwrap_err().to_string();
    assert!(m.contains("dir/fifo") && m.contains("not a regular file"), "{m}");
    std::fs::remove_file(&fifo).unwrap();
    std::os::unix::fs::symlink(d.path().join("dir/a"), d.path().join("link")).unwrap();
    std::fs::write(&p, "[[artifacts]]\nsource = \"link\"\ndest = \"/opt/l\"\n").unwrap();
    let m = artifacts::load(&p).unwrap_err().to_string();
    assert!(m.contains("symbolic link"), "{m}");
}

// --- bundles that carry artifacts -------------------------------------------------------------

#[path = "support/fixture.rs"]
mod fixture;
#[path = "support/images.rs"]
mod images;
#[path = "support/testbed.rs"]
mod testbed;

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use fixture::{hapki, text, Fixture, SHARED};
use testbed::{TbNode, Testbed};

/// Where the testbed's nodes keep node-private files: /etc/kubernetes and /etc/cni/net.d are
/// each node's own; anything else would land on the shared host.
const TB_ROOT: &str = "/etc/kubernetes/hapki-test";

/// Small stand-ins with the layout of bundles/airgap-kubeadm, its spec with dests moved under
/// node-private directories. Returns the spec path.
fn standin_spec(dir: &Path) -> PathBuf {
    let example =
        std::fs::read_to_string(repo().join("bundles/airgap-kubeadm/artifacts.toml")).unwrap();
    let spec = example
        .lines()
        .map(|l| match l.strip_prefix("dest = \"") {
            Some(d) if !d.starts_with("/etc/kubernetes/") && !d.starts_with("/etc/cni/net.d/") => {
                format!("dest = \"{TB_ROOT}{d}")
            }
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let files: Vec<(String, Vec<u8>)> = [
        "bin/kubeadm",
        "bin/kubelet",
        "bin/kubectl",
        "systemd/kubelet.service",
        "systemd/10-kubeadm.conf",
        "cni-plugins/bridge",
        "cni-plugins/host-local",
        "cni-plugins/flannel",
        "images/control-plane/kube-apiserver.tar",
        "images/control-plane/etcd.tar",
        "images/node/kube-proxy.tar",
        "images/node/pause.tar",
        "cni/kube-flannel.yml",
        "cni/10-flannel.conflist",
        "config/kubeadm-config.yaml",
    ]
    .iter()
    .enumerate()
    .map(|(i, f)| {
        // Distinct content, a few crossing 64 KiB (several stored blocks).
        let mut b = format!("stand-in for {f}\n").into_bytes();
        b.resize(b.len() + (i * 37_000), (i as u8).wrapping_mul(31));
        (f.to_string(), b)
    })
    .collect();
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
    spec_dir(dir, &spec, &refs)
}

/// What [`standin_spec`] installs, written out from bundles/airgap-kubeadm/artifacts.toml by
/// hand (dest, source under the spec's directory, mode, control-plane only), not taken from
/// `hapki::artifacts::load`: a change in how the library reads a spec must show here.
const EXPECTED: [(&str, &str, u32, bool); 15] = [
    ("/etc/kubernetes/hapki-test/usr/local/bin/kubeadm", "bin/kubeadm", 0o755, false),
    ("/etc/kubernetes/hapki-test/usr/local/bin/kubelet", "bin/kubelet", 0o755, false),
    ("/etc/kubernetes/hapki-test/usr/local/bin/kubectl", "bin/kubectl", 0o755, true),
    (
        "/etc/kubernetes/hapki-test/etc/systemd/system/kubelet.service",
        "systemd/kubelet.service",
        0o644,
        false,
    ),
    (
        "/etc/kubernetes/hapki-test/etc/systemd/system/kubelet.service.d/10-kubeadm.conf",
        "systemd/10-kubeadm.conf",
        0o644,
        false,
    ),
    ("/etc/kubernetes/hapki-test/opt/cni/bin/bridge", "cni-plugins/bridge", 0o755, false),
    ("/etc/kubernetes/hapki-test/opt/cni/bin/host-local", "cni-plugins/host-local", 0o755, false),
    ("/etc/kubernetes/hapki-test/opt/cni/bin/flannel", "cni-plugins/flannel", 0o755, false),
    (
        "/etc/kubernetes/hapki-test/var/cache/hapki-images/control-plane/kube-apiserver.tar",
        "images/control-plane/kube-apiserver.tar",
        0o644,
        true,
    ),
    (
        "/etc/kubernetes/hapki-test/var/cache/hapki-images/control-plane/etcd.tar",
        "images/control-plane/etcd.tar",
        0o644,
        true,
    ),
    (
        "/etc/kubernetes/hapki-test/var/cache/hapki-images/node/kube-proxy.tar",
        "images/node/kube-proxy.tar",
        0o644,
        false,
    ),
    (
        "/etc/kubernetes/hapki-test/var/cache/hapki-images/node/pause.tar",
        "images/node/pause.tar",
        0o644,
        false,
    ),
    ("/etc/kubernetes/addons/kube-flannel.yml", "cni/kube-flannel.yml", 0o644, true),
    ("/etc/cni/net.d/10-flannel.conflist", "cni/10-flannel.conflist", 0o644, false),
    ("/etc/kubernetes/kubeadm-config.yaml", "config/kubeadm-config.yaml", 0o600, true),
];

/// The artifacts the spec sends to a node of `role`: (dest, source bytes, mode), from
/// [`EXPECTED`].
fn expected_for(spec: &Path, role: Role) -> Vec<(String, Vec<u8>, u32)> {
    let dir = spec.parent().unwrap();
    EXPECTED
        .iter()
        .filter(|(_, _, _, cp_only)| role == Role::ControlPlane || !cp_only)
        .map(|(dest, src, mode, _)| {
            (dest.to_string(), std::fs::read(dir.join(src)).unwrap(), *mode)
        })
        .collect()
}

/// The node-side path of `dest` as seen from the host.
fn on_node(n: &TbNode, dest: &str) -> PathBuf {
    if let Some(rest) = dest.strip_prefix("/etc/kubernetes/") {
        n.etc_kubernetes().join(rest)
    } else if let Some(rest) = dest.strip_prefix("/etc/cni/net.d/") {
        n.dir.join("cni").join(rest)
    } else {
        panic!("{dest} is not node-private on the testbed")
    }
}

/// A stand-in `systemctl` on a node that logs what it was asked to do (images go to the node's
/// real containerd: `Testbed::up_with(.., &["--containerd"])`).
fn after_standins(n: &TbNode) {
    let p = n.dir.join("bin/systemctl");
    std::fs::write(&p, format!("#!/bin/sh\necho \"systemctl $*\" >> {TB_ROOT}/after.log\n"))
        .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The spec's image stand-ins replaced by real OCI archives (one image each), named like
/// kubeadm 1.20.2's.
fn real_images(spec: &Path) {
    let dir = spec.parent().unwrap();
    let work = dir.join("oci-work");
    for (f, name) in [
        ("images/control-plane/kube-apiserver.tar", "k8s.gcr.io/kube-apiserver:v1.20.2"),
        ("images/control-plane/etcd.tar", "k8s.gcr.io/etcd:3.4.13-0"),
        ("images/node/kube-proxy.tar", "k8s.gcr.io/kube-proxy:v1.20.2"),
        ("images/node/pause.tar", "k8s.gcr.io/pause:3.2"),
    ] {
        images::oci_archive(&work, &dir.join(f), &[name], false);
    }
}

fn after_log(n: &TbNode) -> String {
    std::fs::read_to_string(on_node(n, &format!("{TB_ROOT}/after.log"))).unwrap_or_default()
}

fn history(n: &TbNode) -> String {
    std::fs::read_to_string(n.state().join("history")).unwrap_or_default()
}

/// No staging directory anywhere under the node's private trees.
fn assert_no_staging(n: &TbNode) {
    for root in [n.etc_kubernetes(), n.dir.join("cni")] {
        for e in walkdir::WalkDir::new(&root).into_iter().flatten() {
            let name = e.file_name().to_string_lossy();
            assert!(
                !name.starts_with(".hapki-stage"),
                "{}: staging left at {}",
                n.name,
                e.path().display()
            );
        }
    }
    assert!(!n.state().join("lock").exists(), "{}: lock left behind", n.name);
}

fn statuses(out: &std::process::Output) -> Vec<(String, String)> {
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(out)));
    report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (n["node"].as_str().unwrap().to_string(), n["status"].as_str().unwrap().to_string())
        })
        .collect()
}

fn bundle_with(fx: &Fixture, spec: &Path, pki: bool, plaintext: bool, out: &str) -> PathBuf {
    let path = fx.path(out);
    let mut c = hapki();
    c.args(["bundle", "--artifacts"]).arg(spec).arg("--sign-key").arg(fx.signer());
    if pki {
        c.arg("--pki-dir").arg(fx.pki());
        if plaintext {
            c.arg("--insecure-plaintext");
        } else {
            let r = std::fs::read_to_string(fx.signer().with_extension("pub")).unwrap();
            c.args(["--recipient", r.trim()]);
        }
    }
    c.arg("--out").arg(&path);
    c.assert().success();
    path
}

fn push_inv(fx: &Fixture, tb: &Testbed, bundle: &Path, transport: &str) -> std::process::Output {
    let inv = tb.inventory();
    fx.with_bundle(
        "push",
        bundle,
        &["--inventory", inv.to_str().unwrap(), "--transport", transport, "--output", "json"],
    )
}

fn audit_with(fx: &Fixture, tb: &Testbed, bundle: &Path, output: &str) -> std::process::Output {
    fx.audit(&tb.inventory(), bundle, output)
}

/// A plaintext bundle of one artifact, `bytes` installed at `dest` on every node.
fn one_artifact(fx: &Fixture, dir: &Path, dest: &str, bytes: &[u8]) -> PathBuf {
    let spec = format!("[[artifacts]]\nsource = \"f\"\ndest = \"{dest}\"\n");
    let spec = spec_dir(dir, &spec, &[("f", bytes)]);
    bundle_with(fx, &spec, false, false, "one.bundle")
}

#[test]
fn stock_tools_check_an_artifacts_bundle_and_builds_are_deterministic() {
    let fx = Fixture::new();
    let d = tempfile::tempdir().unwrap();
    let spec = standin_spec(d.path());
    let build = |out: &str| {
        let p = fx.path(out);
        hapki()
            .args(["bundle", "--artifacts"])
            .arg(&spec)
            .arg("--sign-key")
            .arg(fx.signer())
            .args([
                "--created-at",
                "2026-01-01T00:00:00Z",
                "--serial",
                "7",
                "--valid-for",
                "100y",
                "--out",
            ])
            .arg(&p)
            .assert()
            .success();
        p
    };
    let (a, b) = (build("a.bundle"), build("b.bundle"));
    assert_eq!(
        std::fs::read(&a).unwrap(),
        std::fs::read(&b).unwrap(),
        "same inputs, different bytes"
    );
    // An artifacts-only bundle holds no secret: plaintext without --insecure-plaintext.
    assert_eq!(&std::fs::read(&a).unwrap()[..2], &[0x1f, 0x8b]);

    let x = fx.path("x");
    std::fs::create_dir(&x).unwrap();
    let tar =
        std::process::Command::new("tar").arg("-xzf").arg(&a).arg("-C").arg(&x).output().unwrap();
    assert!(tar.status.success(), "{}", text(&tar));
    let sig = std::process::Command::new("ssh-keygen")
        .args(["-Y", "verify", "-f"])
        .arg(fx.allowed())
        .args(["-I", "ops", "-n", "hapki-bundle", "-s", "SHA256SUMS.sig"])
        .current_dir(&x)
        .stdin(std::fs::File::open(x.join("SHA256SUMS")).unwrap())
        .output()
        .unwrap();
    assert!(sig.status.success(), "{}", text(&sig));
    let sums = std::process::Command::new("sha256sum")
        .args(["-c", "--strict", "SHA256SUMS"])
        .current_dir(&x)
        .output()
        .unwrap();
    assert!(sums.status.success(), "{}", text(&sums));
    let listed = String::from_utf8_lossy(&sums.stdout);
    let n = artifacts::load(&spec).unwrap().len();
    assert_eq!(listed.matches("artifacts/").count(), n, "{listed}");
    // The extracted entries are the sources, byte for byte, in spec order.
    for (i, a) in artifacts::load(&spec).unwrap().iter().enumerate() {
        assert_eq!(
            std::fs::read(x.join(format!("artifacts/{i:04}"))).unwrap(),
            std::fs::read(&a.source).unwrap()
        );
    }

    let out = fx.with_bundle("verify", &a, &["--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["artifacts"].as_array().unwrap().len(), n);
    assert_eq!(v["artifacts"][0]["dest"], format!("{TB_ROOT}/usr/local/bin/kubeadm"));
    assert_eq!(v["artifacts"][0]["mode"], "0755");
}

#[test]
fn a_flipped_byte_in_one_artifact_rejects_the_bundle_and_nothing_is_installed_anywhere() {
    let Some(tb) = Testbed::up(2, 1) else { return };
    let fx = Fixture::new();
    let d = tempfile::tempdir().unwrap();
    let spec = standin_spec(d.path());
    for n in &tb.nodes {
        after_standins(n);
    }
    // PKI and artifacts, plaintext so that a byte of an artifact can be flipped in place: the
    // PKI entries come first and reach kubemaster-2 before the damaged artifact is read.
    let bundle = bundle_with(&fx, &spec, true, true, "pki-and-artifacts.tgz");
    let mut bytes = std::fs::read(&bundle).unwrap();
    let needle = b"stand-in for config/kubeadm-config.yaml";
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("artifact bytes in the bundle");
    bytes[at + 3] ^= 0x20;
    let bad = fx.path("flipped.tgz");
    std::fs::write(&bad, &bytes).unwrap();

    let out = fx.with_bundle("verify", &bad, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("artifacts/"), "{}", text(&out));
    for transport in ["builtin", "openssh"] {
        let out = push_inv(&fx, &tb, &bad, transport);
        assert_eq!(out.status.code(), Some(3), "{transport}: {}", text(&out));
        for n in &tb.nodes {
            assert!(
                !n.etc_kubernetes().join("pki/ca.key").exists(),
                "{transport}: {} got the PKI",
                n.name
            );
            assert!(
                !n.etc_kubernetes().join("hapki-test").exists(),
                "{transport}: {} got artifacts",
                n.name
            );
            assert!(!n.etc_kubernetes().join("kubeadm-config.yaml").exists());
            assert!(!n.dir.join("cni/10-flannel.conflist").exists());
            assert!(history(n).is_empty(), "{transport}: {}: {}", n.name, history(n));
            assert_no_staging(n);
        }
    }
}

#[test]
fn push_installs_by_role_byte_identical_then_sends_nothing() {
    let Some(tb) = Testbed::up_with(2, 1, &["--containerd"]) else { return };
    let fx = Fixture::new();
    let d = tempfile::tempdir().unwrap();
    let spec = standin_spec(d.path());
    real_images(&spec);
    for n in &tb.nodes {
        after_standins(n);
    }
    let bundle = bundle_with(&fx, &spec, true, false, "cluster.bundle");
    let out = push_inv(&fx, &tb, &bundle, "builtin");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let all = |s: &str| {
        vec![
            ("kubemaster-1".to_string(), s.to_string()),
            ("kubemaster-2".to_string(), s.to_string()),
            ("kubenode-1".to_string(), s.to_string()),
        ]
    };
    assert_eq!(statuses(&out), all("installed"));

    for n in &tb.nodes {
        let role = if n.control_plane { Role::ControlPlane } else { Role::Worker };
        let want = expected_for(&spec, role);
        for (dest, bytes, mode) in &want {
            let p = on_node(n, dest);
            let got = std::fs::read(&p).unwrap_or_else(|_| panic!("{}: {dest} missing", n.name));
            assert_eq!(&got, bytes, "{}: {dest} differs", n.name);
            let md = std::fs::metadata(&p).unwrap();
            assert_eq!(md.mode() & 0o7777, *mode, "{}: {dest} mode", n.name);
            assert_eq!((md.uid(), md.gid()), (0, 0), "{}: {dest} owner", n.name);
        }
        // What other roles get is absent.
        let other = if role == Role::Worker { Role::ControlPlane } else { Role::Worker };
        for (dest, _, _) in expected_for(&spec, other) {
            if !want.iter().any(|(d, _, _)| *d == dest) {
                assert!(!on_node(n, &dest).exists(), "{}: got {dest}, not for its role", n.name);
            }
        }
        // The PKI only on the control plane that is not the first master.
        let has_pki = n.etc_kubernetes().join("pki/ca.key").exists();
        assert_eq!(has_pki, n.name == "kubemaster-2", "{}: pki", n.name);
        if n.name == "kubemaster-2" {
            for f in SHARED {
                assert_eq!(
                    std::fs::read(n.etc_kubernetes().join("pki").join(f)).unwrap(),
                    std::fs::read(fx.pki().join(f)).unwrap()
                );
            }
        }
        // Every artifact recorded, the fixed actions run once, in order.
        let h = history(n);
        assert_eq!(h.matches(" artifact=").count(), want.len(), "{}: {h}", n.name);
        let log = after_log(n);
        let images: Vec<&String> =
            want.iter().map(|(d, _, _)| d).filter(|d| d.ends_with(".tar")).collect();
        let expect = ["systemctl daemon-reload", "systemctl restart kubelet"];
        let got: Vec<&str> = log.lines().collect();
        assert_eq!(got, expect, "{}", n.name);
        // Each image archive imported into the node's containerd, pinned (tests/containerd.rs
        // checks the digests).
        for d in &images {
            let name = images::index_digests(&on_node(n, d)).remove(0).0;
            let line = format!("after=import-images dest={d} images={name} pinned");
            assert!(h.lines().any(|l| l.ends_with(&line)), "{}: no {line}:\n{h}", n.name);
        }
        assert_no_staging(n);
    }

    // Again, with the other transport: nothing is sent, nothing rewritten, no action re-run.
    let before: Vec<(String, String)> =
        tb.nodes.iter().map(|n| (history(n), after_log(n))).collect();
    let again = push_inv(&fx, &tb, &bundle, "openssh");
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert_eq!(statuses(&again), all("unchanged"));
    let after: Vec<(String, String)> =
        tb.nodes.iter().map(|n| (history(n), after_log(n))).collect();
    assert_eq!(before, after, "a second push wrote something");

    // audit with the bundle covers the artifacts: nothing to say now…
    let dests: Vec<String> = artifacts::load(&spec).unwrap().into_iter().map(|a| a.dest).collect();
    let audit = |tb: &Testbed| {
        let out = audit_with(&fx, tb, &bundle, "json");
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
        v["problems"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["file"].as_str().is_some_and(|f| dests.iter().any(|d| d == f)))
            .map(|p| {
                (
                    p["node"].as_str().unwrap().to_string(),
                    p["file"].as_str().unwrap().to_string(),
                    p["kind"].as_str().unwrap().to_string(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(audit(&tb), vec![]);

    // One artifact damaged on the worker: audit names it, and only that one is sent again.
    let w = tb.node("kubenode-1");
    let conflist = on_node(w, "/etc/cni/net.d/10-flannel.conflist");
    std::fs::write(&conflist, b"tampered").unwrap();
    assert_eq!(
        audit(&tb),
        vec![(
            "kubenode-1".to_string(),
            "/etc/cni/net.d/10-flannel.conflist".to_string(),
            "drift".to_string()
        )]
    );
    // …and the matrix has a row per artifact: the worker's conflist cell marked, its column
    // empty for the control-plane-only kubeadm config, whose cell on a control plane is the
    // file's SHA-256 as sha256sum prints it.
    let json = audit_with(&fx, &tb, &bundle, "json");
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let node = |name: &str| {
        v["nodes"].as_array().unwrap().iter().find(|n| n["node"] == name).unwrap().clone()
    };
    let cfg = "/etc/kubernetes/kubeadm-config.yaml";
    let src = spec.parent().unwrap().join("config/kubeadm-config.yaml");
    let sum = std::process::Command::new("sha256sum").arg(&src).output().unwrap();
    let sum = String::from_utf8_lossy(&sum.stdout)[..64].to_string();
    assert_eq!(node("kubemaster-1")["artifacts"][cfg]["sha256"], sum.as_str());
    assert_eq!(node("kubemaster-1")["artifacts"][cfg]["mode"], "0600");
    assert!(node("kubenode-1")["artifacts"].get(cfg).is_none());
    let cl = "/etc/cni/net.d/10-flannel.conflist";
    assert_eq!(node("kubenode-1")["artifacts"][cl]["drift"], true);
    assert_eq!(node("kubemaster-1")["artifacts"][cl]["drift"], false);
    let table = audit_with(&fx, &tb, &bundle, "table");
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    let row =
        |dest: &str| table.lines().find(|l| l.starts_with(dest)).unwrap_or_default().to_string();
    let cells =
        |dest: &str| row(dest).split_whitespace().skip(1).map(str::to_string).collect::<Vec<_>>();
    // Columns: kubemaster-1, kubemaster-2, kubenode-1.
    let c = cells(cl);
    assert_eq!(c.len(), 3, "{table}");
    assert!(c[2].ends_with('*') && !c[0].ends_with('*'), "{table}");
    assert_eq!(cells(cfg), vec![sum[..12].to_string(), sum[..12].to_string()], "{table}");

    let third = push_inv(&fx, &tb, &bundle, "builtin");
    assert_eq!(third.status.code(), Some(0), "{}", text(&third));
    let st = statuses(&third);
    assert_eq!(st[2], ("kubenode-1".to_string(), "installed".to_string()));
    assert_eq!(st[0].1, "unchanged");
    let added = history(w).len() - before[2].0.len();
    let new_lines = &history(w)[history(w).len() - added..];
    assert_eq!(new_lines.matches(" artifact=").count(), 1, "{new_lines}");
    assert!(new_lines.contains("dest=/etc/cni/net.d/10-flannel.conflist"), "{new_lines}");
    let want = expected_for(&spec, Role::Worker);
    let (_, bytes, _) = want.iter().find(|(d, _, _)| d.ends_with("10-flannel.conflist")).unwrap();
    assert_eq!(&std::fs::read(&conflist).unwrap(), bytes);
}

/// The set is atomic, not only each file: when one rename fails after others succeeded, every
/// file this push had put in place — PKI and artifacts — is put back as it was, and a dest whose
/// directory holds ":" (allowed in a dest) is handled like any other.
#[test]
fn a_failed_rename_puts_back_every_file_the_push_had_installed() {
    let Some(tb) = Testbed::up(2, 0) else { return };
    let fx = Fixture::new();
    let d = tempfile::tempdir().unwrap();
    let spec = format!(
        r#"
[[artifacts]]
source = "new"
dest = "{TB_ROOT}/dir:with:colons/new"

[[artifacts]]
source = "replaced"
dest = "{TB_ROOT}/replaced"
mode = "0600"

[[artifacts]]
source = "busy"
dest = "{TB_ROOT}/zz-busy"
"#
    );
    let spec = spec_dir(
        d.path(),
        &spec,
        &[("new", b"new bytes\n"), ("replaced", b"replacement\n"), ("busy", b"busy, new\n")],
    );
    let bundle = bundle_with(&fx, &spec, true, false, "set.bundle");
    let n = tb.node("kubemaster-2");
    // Before: one dest holds old bytes (mode 0644), one is a mount point, which rename(2)
    // refuses (EBUSY) — after the first two renames have happened.
    tb.ok(
        &n.name,
        &format!(
            "mkdir -p {TB_ROOT} && printf 'old\\n' > {TB_ROOT}/replaced && chmod 0644 {TB_ROOT}/replaced && \
             printf 'busy, old\\n' > {TB_ROOT}/zz-busy && printf 'mounted\\n' > {TB_ROOT}/.mnt && \
             mount --bind {TB_ROOT}/.mnt {TB_ROOT}/zz-busy"
        ),
    );
    let replaced = on_node(n, &format!("{TB_ROOT}/replaced"));
    let ino = std::fs::metadata(&replaced).unwrap().ino();
    let hist = history(n);
    let had_pki_dir = n.etc_kubernetes().join("pki").exists();
    let (addr, port) = (tb.addr(&n.name), tb.port.to_string());
    let (identity, known_hosts) = (tb.identity(), tb.known_hosts());
    let push = || {
        let args = ["--nodes", &addr, "--identity", identity.to_str().unwrap()];
        let more = ["--known-hosts", known_hosts.to_str().unwrap(), "--port", &port];
        fx.with_bundle("push", &bundle, &[&args[..], &more[..]].concat())
    };

    let out = push();
    tb.ok(&n.name, &format!("umount {TB_ROOT}/zz-busy"));
    let err = text(&out);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("zz-busy") && err.contains("put back"), "{err}");

    // Every file as it was: the replaced one is the very same inode, bytes and mode; the new
    // one (and the directory made for it) gone; the PKI this push had installed gone again.
    let md = std::fs::metadata(&replaced).unwrap();
    assert_eq!((md.ino(), md.mode() & 0o7777), (ino, 0o644));
    assert_eq!(std::fs::read(&replaced).unwrap(), b"old\n");
    assert_eq!(std::fs::read(on_node(n, &format!("{TB_ROOT}/zz-busy"))).unwrap(), b"busy, old\n");
    assert!(!on_node(n, &format!("{TB_ROOT}/dir:with:colons")).exists());
    for f in SHARED {
        assert!(!n.etc_kubernetes().join("pki").join(f).exists(), "{f} left installed");
    }
    assert_eq!(n.etc_kubernetes().join("pki").exists(), had_pki_dir, "pki directory left");
    assert_eq!(history(n), hist, "a failed push was recorded as installed");
    assert!(!n.state().join("backup").exists(), "an emptied backup directory left behind");
    assert_no_staging(n);

    // Once the mount is gone the same bundle installs the whole set, ":" directory included.
    let out = push();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        std::fs::read(on_node(n, &format!("{TB_ROOT}/dir:with:colons/new"))).unwrap(),
        b"new bytes\n"
    );
    assert_eq!(std::fs::read(&replaced).unwrap(), b"replacement\n");
    assert_eq!(std::fs::metadata(&replaced).unwrap().mode() & 0o7777, 0o600);
    assert!(n.etc_kubernetes().join("pki/ca.key").exists());
    assert_no_staging(n);
}

/// A node whose disk fills while it stages an artifact fails alone, with the reason, and keeps
/// nothing of it; the other node, fed from the same stream, installs the artifact.
#[test]
fn a_full_disk_on_one_node_fails_that_node_alone_and_leaves_it_as_it_was() {
    let Some(tb) = Testbed::up(2, 0) else { return };
    let fx = Fixture::new();
    let d = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..3u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let bundle = one_artifact(&fx, d.path(), &format!("{TB_ROOT}/small/big"), &big);
    // kubemaster-2's destination directory is a 1 MiB tmpfs (in its own mount namespace).
    tb.ok(
        "kubemaster-2",
        &format!(
            "mkdir -p {TB_ROOT}/small && mount -t tmpfs -o size=1m,mode=0755 tmpfs {TB_ROOT}/small"
        ),
    );
    let out = push_inv(&fx, &tb, &bundle, "builtin");
    let listing = tb.ok("kubemaster-2", &format!("ls -A {TB_ROOT}/small; umount {TB_ROOT}/small"));
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    let st = statuses(&out);
    assert_eq!(st[0], ("kubemaster-1".to_string(), "installed".to_string()));
    assert_eq!(st[1], ("kubemaster-2".to_string(), "failed".to_string()));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let msg = report["nodes"][1]["message"].as_str().unwrap();
    assert!(msg.contains("disk full") && msg.contains("/small/big"), "{msg}");
    assert_eq!(listing.trim(), "", "kubemaster-2 kept something of the failed push");
    assert_eq!(
        std::fs::read(on_node(tb.node("kubemaster-1"), &format!("{TB_ROOT}/small/big"))).unwrap(),
        big
    );
    assert!(!history(tb.node("kubemaster-2")).contains("artifact="));
    for n in &tb.nodes {
        assert_no_staging(n);
    }
}

/// A node whose facts never complete (its shell dies mid-way) fails alone, promptly, with both
/// transports; the other node installs from the same stream.
#[test]
fn a_node_whose_facts_die_fails_alone_without_holding_up_the_push() {
    let Some(tb) = Testbed::up(2, 0) else { return };
    let fx = Fixture::new();
    let d = tempfile::tempdir().unwrap();
    let bundle = one_artifact(&fx, d.path(), &format!("{TB_ROOT}/f"), b"payload\n");
    // kubemaster-2's `stat` (which the facts run before they end) kills the whole command
    // there: its process group, the script's shell included.
    let n2 = tb.node("kubemaster-2");
    let id = n2.dir.join("bin/stat");
    std::fs::write(&id, "#!/bin/sh\nkill -KILL 0\n").unwrap();
    std::fs::set_permissions(&id, std::fs::Permissions::from_mode(0o755)).unwrap();
    for transport in ["builtin", "openssh"] {
        let inv = tb.inventory();
        let t0 = std::time::Instant::now();
        let out = hapki()
            .arg("push")
            .arg(&bundle)
            .arg("--trust")
            .arg(fx.allowed())
            .args(["--inventory", inv.to_str().unwrap(), "--transport", transport])
            .args(["--output", "json"])
            .timeout(std::time::Duration::from_secs(120))
            .output()
            .unwrap();
        assert!(t0.elapsed() < std::time::Duration::from_secs(60), "{transport}: held up");
        assert_eq!(out.status.code(), Some(5), "{transport}: {}", text(&out));
        let st = statuses(&out);
        assert_eq!(st[1], ("kubemaster-2".to_string(), "failed".to_string()), "{transport}");
        assert_eq!(st[0].0, "kubemaster-1");
        assert!(st[0].1 == "installed" || st[0].1 == "unchanged", "{transport}: {st:?}");
        assert!(!on_node(n2, &format!("{TB_ROOT}/f")).exists(), "{transport}");
    }
    let n1 = tb.node("kubemaster-1");
    assert_eq!(std::fs::read(on_node(n1, &format!("{TB_ROOT}/f"))).unwrap(), b"payload\n");
}
