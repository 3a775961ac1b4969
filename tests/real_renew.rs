//! `hapki renew --inventory` on a REAL 3-control-plane cluster (kubeadm, kube-apiserver,
//! kube-controller-manager v1.20.2 and etcd, tests/support/real_kube.rs; the runner's kubelet
//! loop restarts a component when its manifest leaves /etc/kubernetes/manifests and comes
//! back, as a kubelet does).
//!
//! One bring-up, every check inside it:
//! - a leaf made expired (front-proxy-client.crt on kubemaster-2, past notAfter, signed by
//!   openssl) is renewed;
//! - renew on all three control planes, one at a time, while a client loop sends 10 requests a
//!   second through the control-plane endpoint (a /readyz-checking load balancer in front of
//!   the three API servers, as kubeadm's HA guide sets up): no request fails;
//! - afterwards every served certificate equals its file (openssl s_client against openssl
//!   x509 of the file), every leaf's notAfter moved forward, every node's history records it;
//! - negative control: kubemaster-2's API server deliberately not restarted (the kubelet loop
//!   ignores its manifest): renew fails that node with the served-certificate message, exit 5,
//!   and kubemaster-3 is not touched.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/endpoint.rs"]
mod endpoint;
#[path = "support/fixture.rs"]
mod fixture;
#[path = "support/real_kube.rs"]
mod real_kube;
#[path = "support/testbed.rs"]
mod testbed;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use endpoint::{ClientLoop, Endpoint};
use fixture::{hapki, text, Fixture};
use real_kube::{init_first_master, kubeadm_config, prepare_control_plane, Pods};
use serde_json::Value;
use testbed::Testbed;

const NODES: [&str; 3] = ["kubemaster-1", "kubemaster-2", "kubemaster-3"];

/// `sh -c SCRIPT` on this machine, its stdout; fails the test when it fails.
fn sh(script: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(script).output().unwrap();
    assert!(out.status.success(), "{script}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// openssl's SHA-256 fingerprint of a certificate file.
fn file_fingerprint(path: &Path) -> String {
    sh(&format!("openssl x509 -noout -fingerprint -sha256 -in '{}'", path.display()))
}

fn not_after(path: &Path) -> String {
    sh(&format!("openssl x509 -noout -enddate -in '{}'", path.display()))
}

/// openssl's SHA-256 fingerprint of what `addr:port` presents (etcd's ports with the node's
/// healthcheck client certificate).
fn served_fingerprint(pki: &Path, addr: &str, port: u16) -> String {
    let client = if port == 2379 || port == 2380 {
        format!(
            "-cert '{0}/etcd/healthcheck-client.crt' -key '{0}/etcd/healthcheck-client.key'",
            pki.display()
        )
    } else {
        String::new()
    };
    sh(&format!(
        "openssl s_client -connect {addr}:{port} {client} < /dev/null 2> /dev/null | \
         openssl x509 -noout -fingerprint -sha256"
    ))
}

/// Every node's API server, etcd client and peer ports present exactly their files.
fn served_equal_files(tb: &Testbed) {
    for n in NODES {
        let node = tb.node(n);
        let pki = node.etc_kubernetes().join("pki");
        for (port, file) in
            [(6443, "apiserver.crt"), (2379, "etcd/server.crt"), (2380, "etcd/peer.crt")]
        {
            assert_eq!(
                served_fingerprint(&pki, &node.address, port),
                file_fingerprint(&pki.join(file)),
                "{n}:{port} does not present {file}"
            );
        }
    }
}

/// Replaces `name`.crt on `node` by a certificate for the same key and subject that expired
/// on 2021-01-01 (`openssl ca`, the stock way to give a certificate explicit dates), signed by
/// the CA `ca` of the node.
fn expire_leaf(fx: &Fixture, tb: &Testbed, node: &str, name: &str, ca: &str) {
    let pki = tb.node(node).etc_kubernetes().join("pki");
    let work = fx.path("expire");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(
        work.join("ca.cnf"),
        "[ca]\ndefault_ca=d\n[d]\ndatabase=index.txt\nnew_certs_dir=.\nserial=serial\ndefault_md=sha256\n\
         policy=p\nx509_extensions=e\nunique_subject=no\n[p]\ncommonName=supplied\n[e]\n\
         basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    std::fs::write(work.join("index.txt"), "").unwrap();
    std::fs::write(work.join("serial"), "1000\n").unwrap();
    sh(&format!(
        "cd '{w}' && openssl req -new -key '{p}/{name}.key' -subj /CN={name} -out leaf.csr && \
         openssl ca -batch -config ca.cnf -cert '{p}/{ca}.crt' -keyfile '{p}/{ca}.key' -in leaf.csr \
         -startdate 20200101000000Z -enddate 20210101000000Z -notext -out '{p}/{name}.crt' 2>&1",
        w = work.display(),
        p = pki.display()
    ));
}

/// The three control planes up from one `hapki pki init` PKI, pushed to every node, each
/// node's components under the runner's kubelet loop.
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

fn renew(tb: &Testbed, extra: &[&str]) -> (Option<i32>, Value, String) {
    let out = hapki()
        .args(["renew", "--inventory"])
        .arg(tb.inventory())
        .args(["--output", "json"])
        .args(extra)
        .output()
        .unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code(), report, text(&out))
}

fn node_report<'a>(report: &'a Value, node: &str) -> &'a Value {
    report["nodes"].as_array().unwrap().iter().find(|n| n["node"] == node).unwrap()
}

#[test]
fn renew_rolls_leaves_across_three_real_control_planes_with_no_failed_request() {
    let Some(cache) = real_kube::cache() else { return };
    let Some(tb) = Testbed::up(3, 0) else { return };
    real_kube::install(&tb, &cache);
    let pods = Pods { tb: &tb };
    let host = real_kube::host_ip();
    let fx = Fixture::new();
    bring_up(&tb, &fx, &pods, &host);

    let expired = tb.node("kubemaster-2").etc_kubernetes().join("pki/front-proxy-client.crt");
    expire_leaf(&fx, &tb, "kubemaster-2", "front-proxy-client", "front-proxy-ca");
    assert_eq!(not_after(&expired), "notAfter=Jan  1 00:00:00 2021 GMT");
    expired_leaf_is_reported(&tb);

    let pki = |n: &str| tb.node(n).etc_kubernetes().join("pki");
    let old: Vec<String> = NODES.iter().map(|n| not_after(&pki(n).join("apiserver.crt"))).collect();

    // The client loop's credentials: kubemaster-1's apiserver-kubelet-client (O=system:masters),
    // copied before renew replaces it.
    for f in ["apiserver-kubelet-client.crt", "apiserver-kubelet-client.key"] {
        std::fs::copy(pki("kubemaster-1").join(f), fx.path(f)).unwrap();
    }
    let ca = fx.pki().join("ca.crt");
    let backends: Vec<String> =
        NODES.iter().map(|n| format!("{}:6443", tb.node(n).address)).collect();
    let lb = format!("127.0.{}.200", tb.net);
    let _endpoint = Endpoint::start(&format!("{lb}:6443"), &backends, &ca);
    let (c, k) = (fx.path("apiserver-kubelet-client.crt"), fx.path("apiserver-kubelet-client.key"));
    let auth = [
        "--cacert",
        ca.to_str().unwrap(),
        "--cert",
        c.to_str().unwrap(),
        "--key",
        k.to_str().unwrap(),
    ];
    let client = ClientLoop::start(
        &format!("kubeapi.test:6443:{lb}"),
        "https://kubeapi.test:6443/api/v1/namespaces/default",
        &auth,
        10,
        6000,
        fx.path("client.log"),
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    let started = Instant::now();
    let (code, report, out) = renew(&tb, &[]);
    let wall = started.elapsed();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let tally = client.finish();
    assert_eq!(code, Some(0), "renew: {out}\n{}", pods.logs("kubemaster-1"));
    let per_node: Vec<String> =
        NODES.iter().map(|n| format!("{n} {}s", node_report(&report, n)["seconds"])).collect();
    eprintln!(
        "rolling renew: {} requests through the endpoint, {} failed, {:.0}s in all ({})",
        tally.sent,
        tally.failed.len(),
        wall.as_secs_f64(),
        per_node.join(", ")
    );
    assert!(
        tally.failed.is_empty(),
        "requests failed during the rolling renew: {:?}",
        tally.failed
    );
    assert!(
        tally.sent as f64 >= wall.as_secs_f64() * 5.0,
        "the client loop sent only {} requests in {wall:?}",
        tally.sent
    );
    for (i, n) in NODES.iter().enumerate() {
        let r = node_report(&report, n);
        assert_eq!(r["status"], "renewed", "{r}");
        let new = not_after(&pki(n).join("apiserver.crt"));
        assert_ne!(new, old[i], "{n}: apiserver.crt's notAfter did not move");
        let history = std::fs::read_to_string(tb.node(n).state().join("history")).unwrap();
        assert!(history.contains(" renew certs=all restarted="), "{n}: {history}");
        let served: Vec<&Value> = r["served"].as_array().unwrap().iter().collect();
        assert!(served.len() >= 4, "{n}: {served:?}");
        assert!(served.iter().all(|s| s["ok"] == true), "{n}: {served:?}");
    }
    served_equal_files(&tb);
    // The expired leaf is valid again (openssl: not expiring within the next 300 days).
    sh(&format!("openssl x509 -noout -checkend 25920000 -in '{}'", expired.display()));
    let fp = node_report(&report, "kubemaster-2")["certs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["file"].as_str().unwrap().ends_with("/front-proxy-client.crt"))
        .cloned()
        .unwrap();
    assert_eq!(fp["old_not_after"], "2021-01-01T00:00:00Z", "{fp}");
    assert_eq!(fp["renewed"], true, "{fp}");

    let (code, audit, out) = audit_served(&tb, "json");
    assert_eq!(code, Some(0), "audit --served after the renew: {out}");
    for n in NODES {
        let s = &audit["served"][n];
        let ports: Vec<u64> =
            s["served"].as_array().unwrap().iter().map(|c| c["port"].as_u64().unwrap()).collect();
        assert!(
            ports.contains(&6443) && ports.contains(&2379) && ports.contains(&2380),
            "{n}: {s}"
        );
        let confs: Vec<&str> = s["kubeconfig_client_certs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["kubeconfig"].as_str().unwrap())
            .collect();
        assert!(confs.contains(&"kubelet.conf") && confs.contains(&"admin.conf"), "{n}: {confs:?}");
    }

    not_restarted_is_caught(&tb, &pods);
}

fn audit_served(tb: &Testbed, output: &str) -> (Option<i32>, Value, String) {
    let out = hapki()
        .args(["audit", "--served", "--inventory"])
        .arg(tb.inventory())
        .args(["--output", output])
        .output()
        .unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code(), report, text(&out))
}

/// The expired leaf, by audit: a problem naming its node and file, the node's nearest expiry,
/// and a negative `hapki_cert_expiry_seconds` gauge.
fn expired_leaf_is_reported(tb: &Testbed) {
    let (code, audit, out) = audit_served(tb, "json");
    assert_eq!(code, Some(6), "{out}");
    let problems = cluster::problems(&audit);
    let want =
        ("kubemaster-2".to_string(), "front-proxy-client.crt".to_string(), "expired".to_string());
    assert!(problems.contains(&want), "{problems:?}");
    assert_eq!(problems.len(), 1, "only the expired leaf: {problems:?}");
    let nearest = &audit["nearest_expiry"]["kubemaster-2"];
    assert_eq!(nearest["file"], "front-proxy-client.crt", "{nearest}");
    assert_eq!(nearest["not_after"], "2021-01-01T00:00:00Z", "{nearest}");
    let (_, _, prom) = audit_served(tb, "prometheus");
    let line = prom
        .lines()
        .find(|l| {
            l.starts_with(
                "hapki_cert_expiry_seconds{node=\"kubemaster-2\",file=\"front-proxy-client.crt\"}",
            )
        })
        .unwrap_or_else(|| panic!("no gauge for the expired leaf:\n{prom}"));
    let secs: i64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(secs < 0, "{line}");
}

/// kubemaster-2's API server keeps running whatever happens to its manifest: renew of the API
/// server certificates renews kubemaster-1, fails kubemaster-2 with the served-certificate
/// message (exit 5) and never touches kubemaster-3.
fn not_restarted_is_caught(tb: &Testbed, pods: &Pods) {
    let pki3 = tb.node("kubemaster-3").etc_kubernetes().join("pki/apiserver.crt");
    let before3 = file_fingerprint(&pki3);
    pods.pin("kubemaster-2", "kube-apiserver", true);
    let (code, report, out) = renew(tb, &["--only", "apiserver", "--stop-timeout", "5s"]);
    pods.pin("kubemaster-2", "kube-apiserver", false);
    assert_eq!(code, Some(5), "{out}");
    assert_eq!(node_report(&report, "kubemaster-1")["status"], "renewed", "{report}");
    let m2 = node_report(&report, "kubemaster-2");
    assert_eq!(m2["status"], "failed", "{report}");
    let msg = m2["message"].as_str().unwrap();
    assert!(
        msg.contains("kube-apiserver on :6443 still presents a certificate")
            && msg.contains("differs from /etc/kubernetes/pki/apiserver.crt")
            && msg.contains("not restarted"),
        "{msg}"
    );
    let m3 = node_report(&report, "kubemaster-3");
    assert_eq!(m3["status"], "skipped", "{report}");
    assert_eq!(file_fingerprint(&pki3), before3, "kubemaster-3 was touched");
    // Control: the file on kubemaster-2 was renewed; what it serves is the old one (openssl).
    let n2 = tb.node("kubemaster-2");
    let pki2 = n2.etc_kubernetes().join("pki");
    assert_ne!(
        served_fingerprint(&pki2, &n2.address, 6443),
        file_fingerprint(&pki2.join("apiserver.crt"))
    );
    // audit --served sees it too, on that node and port only.
    let (code, audit, out) = audit_served(tb, "json");
    assert_eq!(code, Some(6), "{out}");
    let stale: Vec<(String, String, String)> =
        cluster::problems(&audit).into_iter().filter(|p| p.2 == "stale-served-cert").collect();
    let want = (
        "kubemaster-2".into(),
        "/etc/kubernetes/pki/apiserver.crt".into(),
        "stale-served-cert".into(),
    );
    assert_eq!(stale, vec![want], "{audit}");
}
