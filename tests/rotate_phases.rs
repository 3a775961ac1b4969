//! `hapki rotate` phase by phase on a REAL 3-control-plane cluster (kubeadm, kube-apiserver,
//! kube-controller-manager v1.20.2 and etcd; tests/support/real_kube.rs), each phase's effect
//! checked with openssl on the nodes' files. The full proof (a client loop through every
//! phase, kill and resume, abort) is tests/real_rotate.rs.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/fixture.rs"]
mod fixture;
#[path = "support/real_kube.rs"]
mod real_kube;
#[path = "support/testbed.rs"]
mod testbed;

use std::path::Path;
use std::process::Command;

use fixture::{hapki, text, Fixture};
use real_kube::{init_first_master, kubeadm_config, prepare_control_plane, Pods};
use serde_json::Value;
use testbed::Testbed;

const NODES: [&str; 3] = ["kubemaster-1", "kubemaster-2", "kubemaster-3"];
const WORKER: &str = "kubenode-1";

fn sh(script: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(script).output().unwrap();
    assert!(out.status.success(), "{script}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The SHA-256 fingerprints of every certificate in a PEM file, in order (openssl).
fn fingerprints(path: &Path) -> Vec<String> {
    let all = sh(&format!(
        "openssl crl2pkcs7 -nocrl -certfile '{}' | openssl pkcs7 -print_certs",
        path.display()
    ));
    let mut out = Vec::new();
    for block in all.split("-----END CERTIFICATE-----").filter(|b| b.contains("BEGIN")) {
        let pem =
            format!("{}-----END CERTIFICATE-----\n", &block[block.find("-----BEGIN").unwrap()..]);
        let f = std::env::temp_dir().join(format!("rotate-fp-{}", std::process::id()));
        std::fs::write(&f, pem).unwrap();
        out.push(sh(&format!("openssl x509 -noout -fingerprint -sha256 -in '{}'", f.display())));
        let _ = std::fs::remove_file(f);
    }
    out
}

/// Whether `leaf` verifies against the single CA certificate `ca` (openssl).
fn verifies(leaf: &Path, ca: &Path) -> bool {
    Command::new("openssl")
        .args(["verify", "-no-CApath", "-partial_chain", "-CAfile"])
        .arg(ca)
        .arg(leaf)
        .output()
        .unwrap()
        .status
        .success()
}

fn rotate(tb: &Testbed, extra: &[&str]) -> (Option<i32>, Value, String) {
    let out = hapki()
        .args(["rotate", "--inventory"])
        .arg(tb.inventory())
        .args(["--output", "json"])
        .args(extra)
        .output()
        .unwrap();
    (out.status.code(), serde_json::from_slice(&out.stdout).unwrap_or(Value::Null), text(&out))
}

fn bring_up(tb: &Testbed, fx: &Fixture, pods: &Pods, host: &str) {
    let ca = fx.pki().join("ca.crt");
    for n in &tb.nodes {
        std::fs::write(n.dir.join("kubeadm.yaml"), kubeadm_config(tb, &n.name, host)).unwrap();
    }
    cluster::push_to(fx, tb, &fx.bundle(), &NODES, &[]);
    init_first_master(tb, &ca, pods, host);
    for n in &NODES[1..] {
        prepare_control_plane(tb, &ca, pods, n, NODES[0], host);
    }
    for n in NODES {
        pods.kubelet(n);
    }
}

/// The worker as a kubelet's TLS bootstrap leaves it: ca.crt, and kubelet.conf with the CA and
/// a client certificate (system:node:kubenode-1, O=system:nodes) signed by the CA (openssl).
fn worker(tb: &Testbed, fx: &Fixture) -> std::path::PathBuf {
    let k = tb.node(WORKER).etc_kubernetes();
    std::fs::create_dir_all(k.join("pki")).unwrap();
    let ca = fx.pki().join("ca.crt");
    std::fs::copy(&ca, k.join("pki/ca.crt")).unwrap();
    let (p, w) = (fx.pki(), fx.path("worker"));
    std::fs::create_dir_all(&w).unwrap();
    sh(&format!(
        "cd '{w}' && openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout c.key \
         -subj '/O=system:nodes/CN=system:node:kubenode-1' -out c.csr 2>/dev/null && \
         openssl x509 -req -in c.csr -CA '{p}/ca.crt' -CAkey '{p}/ca.key' -set_serial 7 -days 30 -out c.crt 2>/dev/null",
        w = w.display(),
        p = p.display()
    ));
    let b64 = |f: &Path| sh(&format!("base64 -w0 '{}'", f.display()));
    let conf = k.join("kubelet.conf");
    std::fs::write(
        &conf,
        format!(
            "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: https://kubeapi.test:6443\n  name: kubernetes\n\
             contexts:\n- context:\n    cluster: kubernetes\n    user: system:node:kubenode-1\n  name: default\ncurrent-context: default\n\
             kind: Config\nusers:\n- name: system:node:kubenode-1\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
            b64(&ca),
            b64(&w.join("c.crt")),
            b64(&w.join("c.key"))
        ),
    )
    .unwrap();
    conf
}

/// A kubeconfig field's value, base64-decoded.
fn conf_field(conf: &Path, field: &str) -> Vec<u8> {
    let text = std::fs::read_to_string(conf).unwrap();
    let line = text.lines().find(|l| l.trim_start().starts_with(field)).unwrap();
    let v = line.split_once(':').unwrap().1.trim().to_string();
    sh(&format!("printf %s '{v}' | base64 -d")).into_bytes()
}

fn conf_fingerprints(fx: &Fixture, conf: &Path, field: &str) -> Vec<String> {
    let f = fx.path("conf-field.pem");
    std::fs::write(&f, conf_field(conf, field)).unwrap();
    fingerprints(&f)
}

#[test]
fn rotate_prepares_trusts_both_switches_drains_and_finalizes_on_real_control_planes() {
    let Some(cache) = real_kube::cache() else { return };
    let Some(tb) = Testbed::up(3, 1) else { return };
    real_kube::install(&tb, &cache);
    let pods = Pods { tb: &tb };
    let host = real_kube::host_ip();
    let fx = Fixture::new();
    bring_up(&tb, &fx, &pods, &host);
    let worker_conf = worker(&tb, &fx);
    let pki = |n: &str| tb.node(n).etc_kubernetes().join("pki");
    let state_dir = tb.node(NODES[0]).etc_kubernetes().join("hapki/rotate");
    let old_ca = fingerprints(&fx.pki().join("ca.crt"));

    let (code, rep, out) = rotate(&tb, &["--status"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(rep["state"].is_null(), "{rep}");
    let (code, rep, out) = rotate(&tb, &["--dry-run"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(rep["phase"], "prepare", "{rep}");
    assert!(!state_dir.exists(), "a dry run made {}", state_dir.display());

    // prepare
    let (code, rep, out) = rotate(&tb, &["--algorithm", "ECDSA-P256"]);
    assert_eq!(code, Some(0), "prepare: {out}");
    assert_eq!(sh(&format!("stat -c %a '{}'", state_dir.display())), "700");
    assert_eq!(sh(&format!("stat -c %a '{}/state.json'", state_dir.display())), "600");
    assert_eq!(sh(&format!("stat -c %a '{}/new/ca.key'", state_dir.display())), "600");
    let new_ca_file = state_dir.join("new/ca.crt");
    let new_ca = fingerprints(&new_ca_file);
    assert_ne!(new_ca, old_ca);
    assert_eq!(fingerprints(&pki(NODES[1]).join("ca.crt")), old_ca, "prepare changed a node");
    assert_eq!(rep["state"]["phase_done"], "prepare");

    // trust-both, after a dry run that changes nothing
    let (code, rep, out) = rotate(&tb, &["--dry-run"]);
    assert_eq!(code, Some(0), "{out}");
    let planned = rep["nodes"][0]["changes"].as_array().unwrap();
    assert!(planned.iter().any(|c| c["file"] == "ca.crt"), "{rep}");
    assert_eq!(fingerprints(&pki(NODES[0]).join("ca.crt")), old_ca);
    let (code, rep, out) = rotate(&tb, &[]);
    assert_eq!(code, Some(0), "trust-both: {out}");
    for n in NODES {
        let both = [old_ca.clone(), new_ca.clone()].concat();
        assert_eq!(fingerprints(&pki(n).join("ca.crt")), both, "{n}: ca.crt is not old+new");
        assert!(verifies(&pki(n).join("apiserver.crt"), &fx.pki().join("ca.crt")));
    }
    assert_eq!(rep["state"]["phase_done"], "trust-both");

    // switch
    let (code, rep, out) = rotate(&tb, &[]);
    assert_eq!(code, Some(0), "switch: {out}");
    for n in NODES {
        assert_eq!(fingerprints(&pki(n).join("ca.crt"))[0], new_ca[0], "{n}: new not first");
        for leaf in ["apiserver.crt", "apiserver-kubelet-client.crt", "etcd/server.crt"] {
            let ca = if leaf.starts_with("etcd") { "etcd/ca.crt" } else { "ca.crt" };
            assert!(verifies(&pki(n).join(leaf), &state_dir.join("new").join(ca)), "{n}: {leaf}");
        }
    }
    // The worker: ca.crt and kubelet.conf's CA new+old, its kubelet's client certificate
    // re-issued by hapki from the new CA (same name).
    assert_eq!(
        fingerprints(&pki(WORKER).join("ca.crt")),
        [new_ca.clone(), old_ca.clone()].concat()
    );
    assert_eq!(
        conf_fingerprints(&fx, &worker_conf, "certificate-authority-data"),
        [new_ca.clone(), old_ca.clone()].concat()
    );
    let client = fx.path("worker-client.crt");
    std::fs::write(&client, conf_field(&worker_conf, "client-certificate-data")).unwrap();
    assert!(verifies(&client, &new_ca_file), "the worker's kubelet client is not from the new CA");
    let subject =
        sh(&format!("openssl x509 -noout -subject -nameopt RFC2253 -in '{}'", client.display()));
    assert!(
        subject.contains("CN=system:node:kubenode-1") && subject.contains("O=system:nodes"),
        "{subject}"
    );
    let want = sh(&format!(
        "openssl x509 -pubkey -noout -in '{}' | openssl pkey -pubin -outform der | openssl dgst -sha256 -r",
        new_ca_file.display()
    ));
    let want = format!("sha256:{}", &want[..64]);
    assert_eq!(rep["discovery_token_ca_cert_hash"], want.as_str(), "{rep}");

    // drain: old service-account token Secrets listed with their fix, then cleared
    let (code, rep, out) = rotate(&tb, &[]);
    eprintln!("drain: {out}");
    if code != Some(0) {
        assert_eq!(code, Some(2), "{out}");
        for i in rep["drain"]["items"].as_array().unwrap() {
            assert_eq!(i["kind"], "sa-token", "only tokens may remain: {i}");
            let (ns, name) =
                i["file"].as_str().unwrap()["secret ".len()..].split_once('/').unwrap();
            tb.ok(
                NODES[0],
                &format!(
                    "kubectl --kubeconfig /etc/kubernetes/admin.conf -n {ns} delete secret {name}"
                ),
            );
        }
        let (code, _, out) = rotate(&tb, &["--to", "drain", "--wait"]);
        assert_eq!(code, Some(0), "drain --wait: {out}");
    }

    // finalize
    let (code, rep, out) = rotate(&tb, &[]);
    assert_eq!(code, Some(0), "finalize: {out}");
    for n in NODES {
        assert_eq!(fingerprints(&pki(n).join("ca.crt")), new_ca, "{n}: ca.crt is not new alone");
        assert!(!pki(n).join("hapki-signing-ca.crt").exists());
    }
    assert!(!state_dir.join("new/ca.key").exists() && !state_dir.join("old/ca.key").exists());
    assert_eq!(fingerprints(&pki(WORKER).join("ca.crt")), new_ca);
    assert_eq!(conf_fingerprints(&fx, &worker_conf, "certificate-authority-data"), new_ca);
    assert_eq!(rep["state"]["phase_done"], "finalize");
    let (code, _, out) = rotate(&tb, &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("is over"), "{out}");
}
