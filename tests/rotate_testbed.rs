//! `hapki rotate` on the plain testbed (no Kubernetes: two control planes holding the shared
//! files, a worker holding ca.crt and a kubelet's kubelet.conf), in seconds: the order of the
//! phases and its refusals, --status, --dry-run, trust-both's files (checked with openssl),
//! --abort back to byte-identical files, and --abort refused once switch has started. The full
//! rotation on real control planes with a client loop, kills and resumes is
//! tests/real/ca_rotation.rs.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/fixture.rs"]
mod fixture;
#[path = "support/testbed.rs"]
mod testbed;

use std::path::Path;
use std::process::Command;

use fixture::{hapki, text, Fixture};
use serde_json::Value;
use testbed::Testbed;

const CPS: [&str; 2] = ["kubemaster-1", "kubemaster-2"];
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

/// sha256sum of every file under each node's /etc/kubernetes but hapki's state directory.
fn file_sums(tb: &Testbed) -> String {
    let mut all = String::new();
    for n in CPS.iter().chain([&WORKER]) {
        let dir = tb.node(n).etc_kubernetes();
        all += &sh(&format!(
            "cd '{}' && find . -path ./hapki -prune -o -type f -print | sort | xargs sha256sum",
            dir.display()
        ));
    }
    all
}

fn count(path: &Path, what: &str) -> usize {
    std::fs::read_to_string(path).unwrap().matches(what).count()
}

#[test]
fn rotate_orders_its_phases_trusts_both_and_aborts_back_to_the_same_bytes() {
    let Some(tb) = Testbed::up(2, 1) else { return };
    let fx = Fixture::new();
    cluster::push_to(&fx, &tb, &fx.bundle(), &CPS, &[]);
    let worker_conf = worker(&tb, &fx);
    let pki = |n: &str| tb.node(n).etc_kubernetes().join("pki");
    let state_dir = tb.node(CPS[0]).etc_kubernetes().join("hapki/rotate");
    let old_ca = fingerprints(&fx.pki().join("ca.crt"));
    let before = file_sums(&tb);

    let (code, _, out) = rotate(&tb, &["--abort"]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("no rotation to abort"), "{out}");
    let (code, rep, out) = rotate(&tb, &["--status"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(rep["state"].is_null(), "{rep}");
    let (code, rep, out) = rotate(&tb, &["--dry-run", "--to", "switch"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(rep["phase"], "prepare", "a dry run shows the first phase it would run: {rep}");
    assert!(!state_dir.exists(), "a dry run made {}", state_dir.display());
    let (code, _, out) = rotate(&tb, &["--to", "sideways"]);
    assert_eq!(code, Some(2), "{out}");

    // prepare + trust-both in one run
    let (code, rep, out) = rotate(&tb, &["--to", "trust-both", "--which", "ca,sa"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(rep["state"]["phase_done"], "trust-both", "{rep}");
    assert_eq!(sh(&format!("stat -c %a '{}'", state_dir.display())), "700");
    let new_ca_file = state_dir.join("new/ca.crt");
    let new_ca = fingerprints(&new_ca_file);
    let both = [old_ca.clone(), new_ca.clone()].concat();
    for n in CPS {
        assert_eq!(fingerprints(&pki(n).join("ca.crt")), both, "{n}: ca.crt is not old+new");
        assert_eq!(count(&pki(n).join("sa.pub"), "BEGIN PUBLIC KEY"), 2, "{n}: sa.pub");
        assert_eq!(fingerprints(&pki(n).join("hapki-signing-ca.crt")), old_ca, "{n}");
        assert_eq!(
            sh(&format!("sha256sum < '{}'", pki(n).join("ca.key").display())),
            sh(&format!("sha256sum < '{}'", fx.pki().join("ca.key").display())),
            "{n}: the key changed before switch"
        );
        assert_eq!(
            fingerprints(&pki(n).join("front-proxy-ca.crt")),
            fingerprints(&fx.pki().join("front-proxy-ca.crt")),
            "{n}: a CA that does not rotate changed"
        );
    }
    assert_eq!(fingerprints(&pki(WORKER).join("ca.crt")), both);
    assert!(!pki(WORKER).join("ca.key").exists(), "a key reached the worker");
    assert_eq!(conf_fingerprints(&fx, &worker_conf, "certificate-authority-data"), both);

    // Asking again for a phase that is done: nothing, exit 0; the dry run of the next one
    // lists the changes and makes none.
    let (code, _, out) = rotate(&tb, &["--to", "trust-both"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("already done"), "{out}");
    let trusted = file_sums(&tb);
    let (code, rep, out) = rotate(&tb, &["--dry-run"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(rep["phase"], "switch", "{rep}");
    let planned: Vec<&str> = rep["nodes"][0]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["file"].as_str().unwrap())
        .collect();
    for f in ["ca.crt", "ca.key", "sa.key", "sa.pub", "hapki-signing-ca.crt"] {
        assert!(planned.contains(&f), "{f} not in the plan: {planned:?}");
    }
    assert_eq!(file_sums(&tb), trusted, "the dry run changed a file");

    // --abort: the old material alone, byte for byte.
    let (code, rep, out) = rotate(&tb, &["--abort"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(rep["state"]["phase_done"], "aborted", "{rep}");
    assert_eq!(file_sums(&tb), before, "--abort left a file changed");
    let left = sh(&format!("find '{}' -type f", state_dir.join("new").display()));
    assert!(left.is_empty(), "the aborted rotation's keys were kept: {left}");
    let (code, _, out) = rotate(&tb, &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("is over"), "{out}");

    // A new rotation up to switch: --abort is refused from then on.
    let (code, _, out) = rotate(&tb, &["--to", "switch"]);
    assert!(code == Some(0) && out.contains("is over"), "only --to prepare starts anew: {out}");
    // ... whose new material is also an ordinary signed, encrypted bundle.
    let recipient = std::fs::read_to_string(fx.signer().with_extension("pub")).unwrap();
    let bundle = fx.path("rotated.tar.gz.age");
    let (signer, out_arg) = (fx.signer(), bundle.to_str().unwrap().to_string());
    let args = ["--to", "prepare", "--which", "ca", "--recipient", recipient.trim()];
    let args = [&args[..], &["--sign-key", signer.to_str().unwrap(), "--out", &out_arg]].concat();
    let (code, rep, out) = rotate(&tb, &args);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(rep["bundle"], out_arg.as_str(), "{rep}");
    let verified = fx.with_bundle("verify", &bundle, &["--output", "json"]);
    assert!(verified.status.success(), "verify: {}", text(&verified));
    let verified: Value = serde_json::from_slice(&verified.stdout).unwrap();
    let hash = sh(&format!(
        "openssl x509 -pubkey -noout -in '{}' | openssl pkey -pubin -outform der | openssl dgst -sha256 -r",
        state_dir.join("new/ca.crt").display()
    ));
    assert_eq!(verified["discovery_token_ca_cert_hash"], format!("sha256:{}", &hash[..64]));
    let (code, _, out) = rotate(&tb, &["--to", "switch"]);
    assert_eq!(code, Some(0), "{out}");
    let new_ca = fingerprints(&state_dir.join("new/ca.crt"));
    assert_eq!(fingerprints(&pki(CPS[1]).join("ca.crt")), [new_ca, old_ca].concat());
    // The worker's kubelet got a client certificate from the new CA, under its own name.
    let client = fx.path("worker-client.crt");
    std::fs::write(&client, conf_field(&worker_conf, "client-certificate-data")).unwrap();
    assert!(verifies(&client, &state_dir.join("new/ca.crt")), "the kubelet client is not new");
    let subject =
        sh(&format!("openssl x509 -noout -subject -nameopt RFC2253 -in '{}'", client.display()));
    assert!(subject.contains("CN=system:node:kubenode-1,O=system:nodes"), "{subject}");
    let (code, _, out) = rotate(&tb, &["--abort"]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("rotate forward (hapki rotate)"), "{out}");
}
