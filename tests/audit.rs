//! `hapki audit` on the real testbed: a clean cluster is clean (fingerprints checked against
//! openssl), and each kind of drift is reported on the right node and file, and only there.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/fixture.rs"]
mod fixture;
#[path = "support/openssl.rs"]
mod openssl;
#[path = "support/testbed.rs"]
mod testbed;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use cluster::problems;
use fixture::{hapki, text, Fixture, SHARED};
use openssl::openssl_cert_sha256;
use serde_json::Value;
use testbed::Testbed;

/// Puts the fixture's PKI on every control plane (first master included) and ca.crt on workers.
fn install_cluster(fx: &Fixture, tb: &Testbed, bundle: &Path) {
    cluster::push_to(fx, tb, bundle, &cluster::control_planes(tb), &[]);
    for w in tb.nodes.iter().filter(|n| !n.control_plane) {
        let pki = w.etc_kubernetes().join("pki");
        std::fs::create_dir_all(&pki).unwrap();
        std::fs::copy(fx.pki().join("ca.crt"), pki.join("ca.crt")).unwrap();
    }
}

fn audit(tb: &Testbed, extra: &[&str]) -> (Option<i32>, Value, String) {
    let out = hapki()
        .args(["audit", "--inventory"])
        .arg(tb.inventory())
        .args(["--output", "json"])
        .args(extra)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code(), v, text(&out))
}

fn sha256sum(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_string()
}

fn openssl(args: &str) {
    let ok =
        Command::new("sh").arg("-c").arg(format!("openssl {args} 2>/dev/null")).status().unwrap();
    assert!(ok.success(), "openssl {args}");
}

#[test]
fn a_clean_cluster_is_clean_with_openssl_fingerprints_and_every_drift_is_pinned_to_its_node() {
    let Some(tb) = Testbed::up(3, 1) else { return };
    let fx = Fixture::new();
    let bundle = fx.bundle();
    install_cluster(&fx, &tb, &bundle);

    let (code, v, all) = audit(&tb, &[]);
    assert_eq!(code, Some(0), "{all}");
    assert_eq!(v["ok"], true);
    let nodes = v["nodes"].as_array().unwrap();
    // Every node is reported (an empty list would check nothing).
    assert_eq!(nodes.len(), tb.nodes.len(), "{v}");
    for node in nodes {
        let files = &node["files"];
        let expected: &[&str] = if node["role"] == "worker" { &["ca.crt"] } else { &SHARED };
        for f in expected {
            assert_eq!(files[f]["sha256"].as_str().unwrap(), sha256sum(&fx.pki().join(f)), "{f}");
            if f.ends_with(".crt") {
                assert_eq!(
                    files[f]["cert_sha256"].as_str().unwrap(),
                    openssl_cert_sha256(&fx.pki().join(f)),
                    "{f}"
                );
            }
        }
    }
    // The same with a bundle as the reference, and in the other formats.
    let b = bundle.to_str().unwrap().to_string();
    let (code, _, all) = audit(
        &tb,
        &[
            "--bundle",
            &b,
            "--trust",
            fx.allowed().to_str().unwrap(),
            "--decrypt-key",
            fx.signer().to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(0), "{all}");
    let prom = hapki()
        .args(["audit", "--inventory"])
        .arg(tb.inventory())
        .args(["--output", "prometheus"])
        .output()
        .unwrap();
    let prom = String::from_utf8(prom.stdout).unwrap();
    assert!(
        prom.contains("hapki_certificate_not_after_seconds{node=\"kubemaster-2\",file=\"ca.crt\"}"),
        "{prom}"
    );
    assert!(
        prom.contains("hapki_shared_file_drift{node=\"kubemaster-3\",file=\"ca.key\"} 0"),
        "{prom}"
    );

    // Now break things, one per node/file.
    let other = fx.init_pki("other");
    let n2 = tb.node("kubemaster-2");
    let n3 = tb.node("kubemaster-3");
    let w = tb.node("kubenode-1");
    for f in ["front-proxy-ca.crt", "front-proxy-ca.key"] {
        std::fs::copy(other.join(f), n2.etc_kubernetes().join("pki").join(f)).unwrap();
    }
    std::fs::set_permissions(
        n3.etc_kubernetes().join("pki/ca.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let leaf = fx.path("foreign");
    openssl(&format!(
        "req -new -newkey rsa:2048 -nodes -keyout {l}.key -subj /CN=kube-apiserver -out {l}.csr",
        l = leaf.display()
    ));
    openssl(&format!(
        "x509 -req -in {l}.csr -CA {o}/ca.crt -CAkey {o}/ca.key -CAcreateserial -days 365 -out {p}/apiserver.crt",
        l = leaf.display(), o = other.display(), p = n3.etc_kubernetes().join("pki").display()
    ));
    // A leaf signed by the right CA is no finding.
    openssl(&format!(
        "x509 -req -in {l}.csr -CA {o}/ca.crt -CAkey {o}/ca.key -CAcreateserial -days 365 -out {p}/apiserver.crt",
        l = leaf.display(), o = fx.pki().display(), p = n2.etc_kubernetes().join("pki").display()
    ));
    use base64::Engine;
    let foreign_ca = base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(other.join("ca.crt")).unwrap());
    std::fs::write(
        n3.etc_kubernetes().join("admin.conf"),
        format!("apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {foreign_ca}\n    server: https://kubeapi.test:6443\n  name: kubernetes\n"),
    )
    .unwrap();
    std::fs::copy(fx.pki().join("ca.key"), w.etc_kubernetes().join("pki/ca.key")).unwrap();

    let (code, v, all) = audit(&tb, &[]);
    assert_eq!(code, Some(6), "{all}");
    let mut got = problems(&v);
    got.sort();
    let mut want = vec![
        ("kubemaster-2".into(), "front-proxy-ca.crt".into(), "drift".into()),
        ("kubemaster-2".into(), "front-proxy-ca.key".into(), "drift".into()),
        ("kubemaster-3".into(), "ca.key".into(), "mode".into()),
        ("kubemaster-3".into(), "apiserver.crt".into(), "issuer".into()),
        ("kubemaster-3".into(), "admin.conf".into(), "kubeconfig-ca".into()),
        ("kubenode-1".into(), "ca.key".into(), "key-on-worker".into()),
    ];
    want.sort();
    assert_eq!(got, want, "{all}");

    // One node down: reported as unreachable, the others still audited.
    tb.kill_sshd("kubemaster-3");
    let (code, v, all) = audit(&tb, &["--connect-timeout", "3s"]);
    assert_eq!(code, Some(6), "{all}");
    let got = problems(&v);
    assert!(got.contains(&("kubemaster-3".into(), "-".into(), "unreachable".into())), "{all}");
    assert!(
        got.contains(&("kubemaster-2".into(), "front-proxy-ca.crt".into(), "drift".into())),
        "{all}"
    );
    assert!(
        got.iter().all(|(n, _, _)| n != "kubemaster-1"),
        "false alarm on a healthy node: {all}"
    );
}

#[test]
fn a_ca_ending_within_the_window_is_expiring_and_local_mode_works() {
    let Some(tb) = Testbed::up(2, 0) else { return };
    let fx = Fixture::new();
    // An etcd CA that ends in 10 days, made by openssl alone.
    let pki = fx.pki();
    openssl(&format!(
        "req -x509 -newkey rsa:2048 -nodes -days 10 -subj /CN=etcd-ca -addext basicConstraints=critical,CA:TRUE \
         -addext keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign -keyout {p}/etcd/ca.key -out {p}/etcd/ca.crt",
        p = pki.display()
    ));
    std::fs::set_permissions(pki.join("etcd/ca.key"), std::fs::Permissions::from_mode(0o600))
        .unwrap();
    let bundle = fx.bundle();
    install_cluster(&fx, &tb, &bundle);
    let (code, v, all) = audit(&tb, &[]);
    assert_eq!(code, Some(6), "{all}");
    let got = problems(&v);
    for n in ["kubemaster-1", "kubemaster-2"] {
        assert!(got.contains(&(n.into(), "etcd/ca.crt".into(), "expiring".into())), "{all}");
    }
    assert_eq!(got.len(), 2, "{all}");
    assert!(all.contains("days left"), "{all}");

    // --local, run on the node itself (inside its namespace, through its sshd), for cron.
    let bin = assert_cmd::cargo::cargo_bin("hapki");
    let out = tb.ssh("kubemaster-2", &format!("{} audit --local --output json", bin.display()));
    assert_eq!(out.status.code(), Some(6), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["nodes"][0]["node"], "kubemaster-2");
    assert_eq!(
        problems(&v),
        vec![("kubemaster-2".into(), "etcd/ca.crt".into(), "expiring".into())]
    );
}

/// A node whose host key changed is a host-key failure (exit 4, the man-in-the-middle
/// message naming the node's address), not an "unreachable" node (exit 6), with either
/// transport; the other nodes are still audited. Negative control: unchanged keys exit 0.
#[test]
fn a_changed_host_key_during_audit_exits_4_with_the_host_key_message() {
    let Some(tb) = Testbed::up(3, 0) else { return };
    let fx = Fixture::new();
    install_cluster(&fx, &tb, &fx.bundle());
    for transport in ["builtin", "openssh"] {
        let (code, _, all) = audit(&tb, &["--transport", transport]);
        assert_eq!(code, Some(0), "{transport}, keys unchanged: {all}");
    }
    tb.change_host_keys("kubemaster-3");
    let n3 = tb.node("kubemaster-3").address.clone();
    for transport in ["builtin", "openssh"] {
        let (code, v, all) = audit(&tb, &["--transport", transport]);
        assert_eq!(code, Some(4), "{transport}: {all}");
        let problems = v["problems"].as_array().unwrap_or_else(|| panic!("{all}"));
        assert_eq!(problems.len(), 1, "{transport}: only kubemaster-3 fails: {all}");
        assert_eq!(problems[0]["node"], "kubemaster-3", "{all}");
        let message = problems[0]["message"].as_str().unwrap();
        assert!(
            message.contains("HOST KEY CHANGED")
                || message.contains("REMOTE HOST IDENTIFICATION HAS CHANGED"),
            "{transport}: {message}"
        );
        assert!(message.contains(&n3), "{transport}: the node's address is named: {message}");
        let reached: Vec<&str> = v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["reachable"] == true)
            .map(|n| n["node"].as_str().unwrap())
            .collect();
        assert_eq!(reached, ["kubemaster-1", "kubemaster-2"], "{transport}: {all}");
    }
}
