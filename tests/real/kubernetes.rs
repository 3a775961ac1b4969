//! The distributed PKI makes a working HA control plane with REAL upstream Kubernetes v1.20.2
//! (built by scripts/kubernetes): real `kubeadm init` phases on kubemaster-1 from the CAs
//! `hapki pki init` made, `hapki bundle --inventory` from that node, `hapki push` to the two
//! others, `hapki join` running real `kubeadm join --control-plane --config` there, real etcd,
//! kube-apiservers and kube-controller-managers running with the flags kubeadm wrote into its
//! manifests (tests/support/static-pods stands in for the kubelet and the container runtime:
//! the only parts not real). One cluster bring-up, every check inside it:
//! 3 started etcd members; /healthz on all three API servers; a ServiceAccount token issued by
//! API server 1 accepted by 2 and 3; front-proxy header authentication on 2 and 3; kubeadm's
//! leaves on 2 and 3 verified by `openssl verify` against the pushed CAs; `hapki audit` clean;
//! and the negative control: API server 3 with a foreign sa.pub rejects the token (401).

use crate::cluster;
use crate::fixture;
use crate::openssl;
use crate::real_kube;
use crate::testbed;
use crate::{bundle_inventory, first_master, hapki_join, kubeadm_joined, real_testbed};

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fixture::{hapki, text, Fixture};
use real_kube::{curl, healthz, wait_healthy, Pods};
use serde_json::Value;
use testbed::Testbed;

/// `hapki bundle --inventory` (the first master's files), then `hapki push --inventory`.
fn bundle_and_push(tb: &Testbed, fx: &Fixture, name: &str) -> std::path::PathBuf {
    let bundle = fx.path(name);
    bundle_inventory(fx, &tb.inventory(), &bundle);
    let inv = tb.inventory();
    let out = fx.with_bundle(
        "push",
        &bundle,
        &["--inventory", inv.to_str().unwrap(), "--output", "json"],
    );
    assert_eq!(out.status.code(), Some(0), "push: {}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    // The first master already holds these files: it is left alone (reported or not).
    let statuses = cluster::node_statuses(&report);
    let installed: Vec<&str> =
        statuses.iter().filter(|(_, s)| *s == "installed").map(|(n, _)| *n).collect();
    assert_eq!(installed, vec!["kubemaster-2", "kubemaster-3"], "{report}");
    bundle
}

/// Every distinct argv of every process on this machine (the nodes' processes included: they
/// share the PID namespace) until stopped.
struct ProcScan {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<HashSet<String>>,
}

impl ProcScan {
    fn start() -> ProcScan {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = HashSet::new();
            while !s.load(Ordering::Relaxed) {
                for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                    if let Ok(raw) = std::fs::read(e.path().join("cmdline")) {
                        seen.insert(String::from_utf8_lossy(&raw).replace('\0', " "));
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            seen
        });
        ProcScan { stop, thread }
    }

    fn finish(self) -> HashSet<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// The secrets of every bootstrap token the cluster holds now (the one hapki minted included).
fn bootstrap_secrets(tb: &Testbed) -> Vec<String> {
    use base64::Engine;
    let out = tb.ok(
        "kubemaster-1",
        "kubectl --kubeconfig /etc/kubernetes/admin.conf -n kube-system get secrets \
         --field-selector type=bootstrap.kubernetes.io/token \
         -o jsonpath='{range .items[*]}{.data.token-secret}{\"\\n\"}{end}'",
    );
    let b64 = base64::engine::general_purpose::STANDARD;
    out.split_whitespace().map(|l| String::from_utf8(b64.decode(l).unwrap()).unwrap()).collect()
}

/// `hapki join` with real kubeadm; meanwhile, as a kubelet would, each joined node's static
/// pods are started (and the skipped etcd phase done) once its kubeadm has finished. A scan of
/// every process's argv runs throughout: no bootstrap token secret may ever appear in one.
fn join(tb: &Testbed, fx: &Fixture, pods: &Pods, bundle: &Path, host: &str) -> Value {
    let run = fx.path("join-run");
    let scan = ProcScan::start();
    let mut secrets = Vec::new();
    let mut child = Running(Some(hapki_join(fx, &tb.inventory(), bundle, &run).spawn().unwrap()));
    for name in ["kubemaster-2", "kubemaster-3"] {
        if !kubeadm_joined(&run, name, child.0.as_mut().unwrap()) {
            break;
        }
        if secrets.is_empty() {
            secrets = bootstrap_secrets(tb);
        }
        real_kube::start_joined(tb, &fx.pki().join("ca.crt"), pods, name, "kubemaster-1", host);
        real_kube::register(tb, name, host);
    }
    let out = child.0.take().unwrap().wait_with_output().unwrap();
    let seen = scan.finish();
    if out.status.code() != Some(0) {
        let mut logs = String::new();
        for e in std::fs::read_dir(&run).into_iter().flatten().flatten() {
            let t = std::fs::read_to_string(e.path()).unwrap_or_default();
            let tail: Vec<&str> = t.lines().rev().take(25).collect();
            logs += &format!("--- {} (newest first)\n{}\n", e.path().display(), tail.join("\n"));
        }
        panic!("join failed: {}\n{logs}", text(&out));
    }
    assert!(
        seen.iter().any(|a| a.contains("kubeadm join --config")),
        "the process scan never saw kubeadm join run: it proves nothing"
    );
    assert!(secrets.len() >= 2, "the minted token's secret was not read: {}", secrets.len());
    for secret in &secrets {
        let leaks: Vec<&String> = seen.iter().filter(|a| a.contains(secret.as_str())).collect();
        assert!(leaks.is_empty(), "a bootstrap token secret in a process's argv: {leaks:?}");
    }
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A running `hapki join`, killed if the test fails while it runs.
struct Running(Option<std::process::Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A ServiceAccount token issued through API server 1 (a TokenRequest, signed with sa.key).
fn service_account_token(tb: &Testbed) -> String {
    let addr = &tb.node("kubemaster-1").address;
    let k = format!("kubectl --kubeconfig /etc/kubernetes/admin.conf --server https://{addr}:6443");
    tb.ok("kubemaster-1", &format!("{k} -n default create serviceaccount hapki-probe"));
    let request = r#"{"apiVersion":"authentication.k8s.io/v1","kind":"TokenRequest","spec":{}}"#;
    let out = tb.ssh_stdin(
        "kubemaster-1",
        &format!(
            "{k} create --raw /api/v1/namespaces/default/serviceaccounts/hapki-probe/token -f -"
        ),
        request.as_bytes(),
    );
    assert!(out.status.success(), "TokenRequest: {}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["status"]["token"].as_str().expect("a token in the TokenRequest's status").to_string()
}

/// The user API server `node` sees behind `token`, by a TokenReview on that server.
fn token_review(tb: &Testbed, node: &str, token: &str) -> String {
    let addr = &tb.node(node).address;
    let review = format!(
        "{{\"apiVersion\":\"authentication.k8s.io/v1\",\"kind\":\"TokenReview\",\"spec\":{{\"token\":\"{token}\"}}}}"
    );
    let out = tb.ssh_stdin(
        node,
        &format!(
            "kubectl --kubeconfig /etc/kubernetes/admin.conf --server https://{addr}:6443 create -f - \
             -o jsonpath='{{.status.authenticated}} {{.status.user.username}}'"
        ),
        review.as_bytes(),
    );
    assert!(out.status.success(), "TokenReview on {node}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// GET /api on `node` with the token as a bearer (the header from a file: no token in argv).
fn bearer_status(fx: &Fixture, tb: &Testbed, node: &str, token: &str) -> u16 {
    let header = fx.path("bearer.header");
    std::fs::write(&header, format!("Authorization: Bearer {token}\n")).unwrap();
    let ca = fx.pki().join("ca.crt");
    let addr = &tb.node(node).address;
    let h = format!("@{}", header.display());
    curl(&["--cacert", ca.to_str().unwrap(), "-H", &h], &format!("https://{addr}:6443/api")).0
}

/// A request through the front proxy's client certificate (kubeadm's, from node 1) naming a
/// user in X-Remote-User (and system:masters, to read kube-system's config maps).
fn front_proxy_status(fx: &Fixture, tb: &Testbed, node: &str, with_user: bool) -> u16 {
    let pki = tb.node("kubemaster-1").etc_kubernetes().join("pki");
    let ca = fx.pki().join("ca.crt");
    let (cert, key) = (pki.join("front-proxy-client.crt"), pki.join("front-proxy-client.key"));
    let mut args = vec![
        "--cacert",
        ca.to_str().unwrap(),
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ];
    if with_user {
        args.extend(["-H", "X-Remote-User: hapki-proxied", "-H", "X-Remote-Group: system:masters"]);
    }
    let addr = &tb.node(node).address;
    curl(&args, &format!("https://{addr}:6443/api/v1/namespaces/kube-system/configmaps")).0
}

/// kubeadm's leaves on `node`, each verified by openssl against the CA under `cas` it must
/// chain to.
fn verify_leaves(cas: &Path, tb: &Testbed, node: &str) {
    let pki = tb.node(node).etc_kubernetes().join("pki");
    let leaves = [
        ("ca.crt", "apiserver.crt"),
        ("ca.crt", "apiserver-kubelet-client.crt"),
        ("front-proxy-ca.crt", "front-proxy-client.crt"),
        ("etcd/ca.crt", "apiserver-etcd-client.crt"),
        ("etcd/ca.crt", "etcd/server.crt"),
        ("etcd/ca.crt", "etcd/peer.crt"),
        ("etcd/ca.crt", "etcd/healthcheck-client.crt"),
    ];
    for (ca, leaf) in leaves {
        let out = Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(cas.join(ca))
            .arg(pki.join(leaf))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{node}: {leaf} does not chain to the pushed {ca}: {}",
            text(&out)
        );
    }
}

fn etcd_members(tb: &Testbed) -> String {
    let endpoints: Vec<String> =
        tb.nodes.iter().map(|n| format!("https://{}:2379", n.address)).collect();
    tb.ok(
        "kubemaster-3",
        &format!(
            "cd /etc/kubernetes/pki/etcd && ETCDCTL_API=3 etcdctl --endpoints {} --cacert ca.crt \
             --cert healthcheck-client.crt --key healthcheck-client.key member list",
            endpoints.join(",")
        ),
    )
}

/// API server 3 restarted with a foreign sa.pub: the token from API server 1 must get 401.
fn foreign_sa_pub_rejects(fx: &Fixture, tb: &Testbed, pods: &Pods, token: &str) {
    let n3 = tb.node("kubemaster-3");
    let key = n3.dir.join("foreign-sa.key");
    let pubkey = n3.dir.join("foreign-sa.pub");
    let gen =
        Command::new("openssl").args(["genrsa", "-out"]).arg(&key).arg("2048").output().unwrap();
    assert!(gen.status.success(), "{}", text(&gen));
    let out = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&key)
        .arg("-out")
        .arg(&pubkey)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    pods.stop("kubemaster-3", "kube-apiserver");
    let flag = format!("--service-account-key-file={}", pubkey.display());
    pods.start("kubemaster-3", &["kube-apiserver"], &[&flag]);
    wait_healthy(&fx.pki().join("ca.crt"), pods, "kubemaster-3");
    assert_eq!(
        bearer_status(fx, tb, "kubemaster-3", token),
        401,
        "a foreign sa.pub accepted the token"
    );
    assert_eq!(bearer_status(fx, tb, "kubemaster-2", token), 200, "the control must still pass");
}

#[test]
fn real_kubeadm_builds_an_ha_control_plane_from_the_pushed_pki() {
    let Some((tb, fx, host)) = real_testbed(3) else { return };
    let pods = Pods { tb: &tb };
    first_master(&tb, &fx, &pods, &host, &["kubemaster-1"]);
    let bundle = bundle_and_push(&tb, &fx, "cluster.bundle");

    let report = join(&tb, &fx, &pods, &bundle, &host);
    assert_eq!(
        cluster::node_statuses(&report),
        vec![("kubemaster-2", "joined"), ("kubemaster-3", "joined")]
    );
    assert_eq!(
        report["discovery_token_ca_cert_hash"],
        openssl::openssl_discovery_hash(&fx.pki().join("ca.crt")).as_str()
    );
    assert_eq!(report["token_cleanup"], "deleted");
    for n in report["nodes"].as_array().unwrap() {
        let m = n["message"].as_str().unwrap();
        assert!(m.contains("etcd member healthy"), "hapki's etcd wait: {m}");
    }
    let id = report["token"].as_str().unwrap().split('.').next().unwrap().to_string();
    let tokens = tb.ok("kubemaster-1", "kubeadm token list");
    assert!(!tokens.contains(&id), "the minted token {id} is still listed:\n{tokens}");

    let members = etcd_members(&tb);
    assert_eq!(members.lines().filter(|l| l.contains(", started, ")).count(), 3, "{members}");
    for n in &tb.nodes {
        assert!(members.contains(&format!("https://{}:2380", n.address)), "{members}");
        assert_eq!(
            healthz(&fx.pki().join("ca.crt"), &n.address),
            (200, "ok".to_string()),
            "{}",
            n.name
        );
    }

    let token = service_account_token(&tb);
    for node in ["kubemaster-2", "kubemaster-3"] {
        assert_eq!(
            token_review(&tb, node, &token),
            "true system:serviceaccount:default:hapki-probe"
        );
        assert_eq!(bearer_status(&fx, &tb, node, &token), 200, "{node}");
        assert_eq!(front_proxy_status(&fx, &tb, node, true), 200, "{node}: front proxy");
        // Control: the same certificate without X-Remote-User authenticates nobody (it is
        // not signed by the client CA): 401.
        assert_eq!(front_proxy_status(&fx, &tb, node, false), 401, "{node}");
        verify_leaves(&fx.pki(), &tb, node);
    }

    audit_clean(&tb, &fx, &bundle);

    let reissued = reissue_cas_and_push(&tb, &fx, &token);
    audit_clean(&tb, &fx, &reissued);

    foreign_sa_pub_rejects(&fx, &tb, &pods, &token);
}

fn audit_clean(tb: &Testbed, fx: &Fixture, bundle: &Path) {
    let audit = fx.audit(&tb.inventory(), bundle, "table");
    assert_eq!(audit.status.code(), Some(0), "audit: {}", text(&audit));
}

/// `base64 -w0` of a file: what kubeadm writes as certificate-authority-data.
fn base64_of(path: &Path) -> String {
    let out = Command::new("base64").arg("-w0").arg(path).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// Issue 14: the three CAs re-issued with the same keys on the first master's PKI (and its
/// kubeconfigs), bundled from it and pushed without --replace. The discovery hash stays, the
/// leaves issued before verify against the new CA certificates, every kubeconfig holds the new
/// CA, and a token issued before passes a TokenReview on all three API servers.
fn reissue_cas_and_push(tb: &Testbed, fx: &Fixture, token: &str) -> std::path::PathBuf {
    const CAS: [&str; 3] = ["ca.crt", "front-proxy-ca.crt", "etcd/ca.crt"];
    let m1 = tb.node("kubemaster-1");
    let pki1 = m1.etc_kubernetes().join("pki");
    let hash = openssl::openssl_discovery_hash(&pki1.join("ca.crt"));
    let old_b64 = base64_of(&pki1.join("ca.crt"));
    let old: Vec<Vec<u8>> = CAS.iter().map(|c| std::fs::read(pki1.join(c)).unwrap()).collect();
    let out = hapki()
        .args(["pki", "renew-ca", "--validity", "4000d", "--pki-dir"])
        .arg(&pki1)
        .arg("--kubeconfig-dir")
        .arg(m1.etc_kubernetes())
        .output()
        .unwrap();
    assert!(out.status.success(), "renew-ca: {}", text(&out));
    let new_b64 = base64_of(&pki1.join("ca.crt"));
    assert_ne!(new_b64, old_b64);
    let bundle = bundle_and_push(tb, fx, "reissued.bundle");
    for n in &tb.nodes {
        let k = n.etc_kubernetes();
        assert_eq!(openssl::openssl_discovery_hash(&k.join("pki/ca.crt")), hash, "{}", n.name);
        for (c, old) in CAS.iter().zip(&old) {
            let got = std::fs::read(k.join("pki").join(c)).unwrap();
            assert_eq!(got, std::fs::read(pki1.join(c)).unwrap(), "{}: {c}", n.name);
            assert_ne!(&got, old, "{}: {c} not re-issued", n.name);
        }
        verify_leaves(&pki1, tb, &n.name);
        let mut confs = 0;
        for e in std::fs::read_dir(&k).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".conf") {
                continue;
            }
            let body = std::fs::read_to_string(e.path()).unwrap();
            assert!(!body.contains(&old_b64), "{}: {name} still holds the old CA", n.name);
            if body.contains("certificate-authority-data:") {
                assert!(body.contains(&new_b64), "{}: {name} lacks the new CA", n.name);
                confs += 1;
            }
        }
        assert!(confs >= 3, "{}: only {confs} kubeconfigs", n.name);
    }
    for n in ["kubemaster-1", "kubemaster-2", "kubemaster-3"] {
        // kubectl talks to each API server through the updated admin.conf.
        assert_eq!(token_review(tb, n, token), "true system:serviceaccount:default:hapki-probe");
    }
    bundle
}
