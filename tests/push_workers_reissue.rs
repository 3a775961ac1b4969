//! `hapki push` of a same-key CA re-issue also updates the WORKERS that hold the older `ca.crt`
//! (the kubelet's): their `ca.crt` and their kubeconfigs' CA data, never a key; a worker with
//! another CA is refused and left byte-identical; an up-to-date worker is unchanged. Expected
//! values come from openssl, base64(1), sha256sum and literals.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/fixture.rs"]
mod fixture;
#[path = "support/reissue.rs"]
mod reissue;
#[path = "support/testbed.rs"]
mod testbed;

use std::path::Path;
use std::process::Command;

use fixture::{hapki, text, Fixture};
use reissue::{b64, push, run};
use serde_json::Value;
use testbed::{TbNode, Testbed};

/// `openssl x509 -noout -fingerprint -sha256 -in FILE`.
fn fingerprint(path: &Path) -> String {
    run("openssl", &["x509", "-noout", "-fingerprint", "-sha256", "-in", path.to_str().unwrap()])
}

fn sha256sum(paths: &[&Path]) -> String {
    let args: Vec<&str> = paths.iter().map(|p| p.to_str().unwrap()).collect();
    run("sha256sum", &args)
}

/// A kubelet.conf laid out as kubeadm join writes it, with `ca_data` as the cluster CA.
fn kubelet_conf(ca_data: &str, node: &str) -> String {
    format!(
        "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {ca_data}\n    server: https://10.0.0.1:6443\n  name: default-cluster\ncontexts:\n- context:\n    cluster: default-cluster\n    namespace: default\n    user: default-auth\n  name: default-context\ncurrent-context: default-context\nkind: Config\npreferences: {{}}\nusers:\n- name: default-auth\n  user:\n    client-certificate: /var/lib/kubelet/pki/kubelet-client-current.pem\n    client-key: /var/lib/kubelet/pki/kubelet-client-current.pem\n# {node}\n"
    )
}

/// What kubeadm join leaves on a worker: pki/ca.crt (0644) and kubelet.conf (0600).
fn join_worker(n: &TbNode, ca: &Path) {
    let k = n.etc_kubernetes();
    std::fs::create_dir_all(k.join("pki")).unwrap();
    run("install", &["-m", "0644", ca.to_str().unwrap(), k.join("pki/ca.crt").to_str().unwrap()]);
    let conf = k.join("kubelet.conf");
    std::fs::write(&conf, kubelet_conf(&b64(ca), &n.name)).unwrap();
    run("chmod", &["0600", conf.to_str().unwrap()]);
}

/// The certificate-authority-data of a kubeconfig, decoded by base64(1) into `out`.
fn ca_data_of(conf: &Path, out: &Path) {
    let body = std::fs::read_to_string(conf).unwrap();
    let value = body
        .lines()
        .find_map(|l| l.trim().strip_prefix("certificate-authority-data:"))
        .unwrap()
        .trim()
        .to_string();
    let enc = out.with_extension("b64");
    std::fs::write(&enc, value).unwrap();
    let out_s = out.to_str().unwrap();
    let cmd = format!("base64 -d '{}' > '{out_s}'", enc.display());
    assert!(Command::new("sh").args(["-c", &cmd]).status().unwrap().success());
}

fn statuses(out: &std::process::Output) -> (Value, Vec<(String, String)>) {
    let v: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(out)));
    let s = cluster::node_statuses(&v)
        .into_iter()
        .map(|(n, s)| (n.to_string(), s.to_string()))
        .collect();
    (v, s)
}

fn message<'a>(v: &'a Value, node: &str) -> &'a str {
    let n = v["nodes"].as_array().unwrap().iter().find(|n| n["node"] == node).unwrap();
    n["message"].as_str().unwrap()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

#[test]
fn a_pushed_same_key_ca_reissue_updates_the_workers_ca_and_kubelet_conf_but_never_a_foreign_one() {
    let Some(tb) = Testbed::up(2, 2) else { return };
    let fx = Fixture::new();
    let v1 = fx.bundle_of(&fx.pki(), "v1.age", Some(1000));
    let out = cluster::push_to(&fx, &tb, &v1, &["kubemaster-1"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let out = push(&fx, &tb, &v1, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // kubenode-1 joined this cluster (CA v1); kubenode-2 holds another cluster's CA.
    let old_ca = fx.path("ca-v1.crt");
    std::fs::copy(fx.pki().join("ca.crt"), &old_ca).unwrap();
    let (w1, w2) = (tb.node("kubenode-1"), tb.node("kubenode-2"));
    join_worker(w1, &old_ca);
    let other = fx.init_pki("other");
    join_worker(w2, &other.join("ca.crt"));
    let (k1, k2) = (w1.etc_kubernetes(), w2.etc_kubernetes());
    let w2_files = [k2.join("pki/ca.crt"), k2.join("kubelet.conf")];
    let w2_files: Vec<&Path> = w2_files.iter().map(|p| p.as_path()).collect();
    let w2_before = sha256sum(&w2_files);

    // The re-issue: same key, later notAfter.
    let out = hapki()
        .args(["pki", "renew-ca", "--pki-dir"])
        .arg(fx.pki())
        .args(["--validity", "4000d"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let new_ca = fx.pki().join("ca.crt");
    assert_ne!(fingerprint(&new_ca), fingerprint(&old_ca));
    let v2 = fx.bundle_of(&fx.pki(), "v2.age", Some(1001));

    // --dry-run: the plan names the worker's update and writes nothing.
    let w1_before = sha256sum(&[&k1.join("pki/ca.crt"), &k1.join("kubelet.conf")]);
    let out = push(&fx, &tb, &v2, &["--dry-run", "--output", "json"]);
    let (v, s) = statuses(&out);
    assert_eq!(
        s,
        pairs(&[("kubemaster-2", "planned"), ("kubenode-1", "planned"), ("kubenode-2", "failed")])
    );
    assert_eq!(message(&v, "kubenode-1"), "would update ca.crt (same-key re-issue)");
    assert_eq!(sha256sum(&[&k1.join("pki/ca.crt"), &k1.join("kubelet.conf")]), w1_before);

    let out = push(&fx, &tb, &v2, &["--output", "json"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    let (v, s) = statuses(&out);
    assert_eq!(
        s,
        pairs(&[
            ("kubemaster-2", "installed"),
            ("kubenode-1", "installed"),
            ("kubenode-2", "failed")
        ])
    );
    let msg = message(&v, "kubenode-1");
    assert!(
        msg.contains("updated ca.crt (same-key re-issue") && msg.contains("kubelet.conf"),
        "{msg}"
    );
    let msg = message(&v, "kubenode-2");
    assert!(msg.contains("another CA"), "{msg}");

    // kubenode-1: the re-issued ca.crt, its kubelet.conf's CA data decodes to it, no key.
    assert_eq!(fingerprint(&k1.join("pki/ca.crt")), fingerprint(&new_ca));
    let decoded = fx.path("kubelet-ca.crt");
    ca_data_of(&k1.join("kubelet.conf"), &decoded);
    assert_eq!(fingerprint(&decoded), fingerprint(&new_ca));
    let listing = run("ls", &["-R", k1.to_str().unwrap()]);
    assert!(!listing.contains(".key"), "a key on the worker:\n{listing}");
    let history = std::fs::read_to_string(w1.state().join("history")).unwrap();
    assert!(
        history.contains("renew-ca ca.crt")
            && history.contains("kubeconfig=")
            && history.contains("kubelet.conf"),
        "{history}"
    );
    // kubenode-2: refused, byte-identical, no key either.
    assert_eq!(sha256sum(&w2_files), w2_before, "the foreign worker was modified");
    let listing = run("ls", &["-R", k2.to_str().unwrap()]);
    assert!(!listing.contains(".key"), "a key on the worker:\n{listing}");

    // The operator re-joins kubenode-2 to this cluster and renews the first master; then
    // every node is up to date: unchanged, and the audit is clean.
    join_worker(w2, &new_ca);
    let out = cluster::push_to(&fx, &tb, &v2, &["kubemaster-1"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let w1_after = sha256sum(&[&k1.join("pki/ca.crt"), &k1.join("kubelet.conf")]);
    let out = push(&fx, &tb, &v2, &["--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (_, s) = statuses(&out);
    assert_eq!(
        s,
        pairs(&[
            ("kubemaster-2", "unchanged"),
            ("kubenode-1", "unchanged"),
            ("kubenode-2", "unchanged")
        ])
    );
    assert_eq!(sha256sum(&[&k1.join("pki/ca.crt"), &k1.join("kubelet.conf")]), w1_after);
    let out = fx.audit(&tb.inventory(), &v2, "json");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(cluster::problems(&report).is_empty(), "{report}");
}

/// A bundle with artifacts and the re-issued CA: the worker's artifacts go in first, then its
/// ca.crt and kubelet.conf in the second exec; the push after it sends nothing.
#[test]
fn a_worker_gets_its_artifacts_then_the_reissued_ca() {
    let Some(tb) = Testbed::up(2, 1) else { return };
    let fx = Fixture::new();
    let v1 = fx.bundle_of(&fx.pki(), "v1.age", Some(1000));
    let out = cluster::push_to(&fx, &tb, &v1, &["kubemaster-1"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let w1 = tb.node("kubenode-1");
    let old_ca = fx.path("ca-v1.crt");
    std::fs::copy(fx.pki().join("ca.crt"), &old_ca).unwrap();
    join_worker(w1, &old_ca);

    // The re-issue: same key, a later notAfter (with the default validity, a re-issue in the
    // same second as the first PKI would end in the same second: not later, refused).
    let out = hapki()
        .args(["pki", "renew-ca", "--pki-dir"])
        .arg(fx.pki())
        .args(["--validity", "4000d"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let new_ca = fx.pki().join("ca.crt");
    // One artifact for every node, and the PKI, encrypted to the fixture's recipient.
    let src = fx.path("art");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"worker artifact\n").unwrap();
    let spec = src.join("artifacts.toml");
    let dest = "/etc/kubernetes/hapki-test/worker-artifact";
    std::fs::write(&spec, format!("[[artifacts]]\nsource = \"f\"\ndest = \"{dest}\"\n")).unwrap();
    let bundle = fx.path("v2-artifacts.age");
    let recipient = std::fs::read_to_string(fx.signer().with_extension("pub")).unwrap();
    let out = hapki()
        .args(["bundle", "--artifacts"])
        .arg(&spec)
        .arg("--sign-key")
        .arg(fx.signer())
        .arg("--pki-dir")
        .arg(fx.pki())
        .args(["--recipient", recipient.trim(), "--serial", "1001", "--out"])
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    let out = push(&fx, &tb, &bundle, &["--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (v, s) = statuses(&out);
    assert_eq!(
        s,
        pairs(&[
            ("kubemaster-1", "installed"),
            ("kubemaster-2", "installed"),
            ("kubenode-1", "installed")
        ])
    );
    let msg = message(&v, "kubenode-1");
    assert!(
        msg.contains("1 artifact(s)") && msg.contains("then updated ca.crt (same-key re-issue"),
        "{msg}"
    );
    let k1 = w1.etc_kubernetes();
    let on_node = k1.join("hapki-test/worker-artifact");
    assert_eq!(std::fs::read(&on_node).unwrap(), b"worker artifact\n");
    assert_eq!(fingerprint(&k1.join("pki/ca.crt")), fingerprint(&new_ca));
    let decoded = fx.path("kubelet-ca.crt");
    ca_data_of(&k1.join("kubelet.conf"), &decoded);
    assert_eq!(fingerprint(&decoded), fingerprint(&new_ca));
    let listing = run("ls", &["-R", k1.to_str().unwrap()]);
    assert!(!listing.contains(".key"), "a key on the worker:\n{listing}");

    let out = push(&fx, &tb, &bundle, &["--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (_, s) = statuses(&out);
    assert!(s.iter().all(|(_, st)| st == "unchanged"), "{s:?}");
}
