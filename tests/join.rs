//! The whole HA path on the testbed with the kubeadm stand-in (tests/standin): push, kubeadm
//! init on the first master, push to the others, preflight, `hapki join` — ending in a real
//! three-member mutual-TLS etcd cluster built from the distributed etcd CA.

#[path = "support/fixture.rs"]
mod fixture;
#[path = "support/testbed.rs"]
mod testbed;

use std::path::Path;
use std::process::Command;

use fixture::{hapki, text, Fixture};
use serde_json::Value;
use testbed::Testbed;

fn install_standins(tb: &Testbed) {
    let out = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/standin/install"))
        .arg(&tb.dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "standin install: {}", text(&out));
}

struct LogLine {
    node: String,
    start: u128,
    end: u128,
    ok: bool,
    sub: String,
    argv: String,
}

fn read_log(tb: &Testbed) -> Vec<LogLine> {
    let t = std::fs::read_to_string(tb.dir.join("cluster/joins.log")).unwrap();
    t.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            LogLine {
                node: f[0].into(),
                start: f[1].parse().unwrap(),
                end: f[2].parse().unwrap(),
                ok: f[3] == "ok",
                sub: f[4].into(),
                argv: f[5].into(),
            }
        })
        .collect()
}

fn openssl_ca_hash(crt: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl x509 -pubkey -noout -in '{}' | openssl pkey -pubin -outform der | sha256sum",
            crt.display()
        ))
        .output()
        .unwrap();
    format!("sha256:{}", String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap())
}

#[test]
fn push_then_join_builds_a_healthy_three_member_etcd_without_a_certificate_key() {
    let Some(tb) = Testbed::up(3, 1) else { return };
    install_standins(&tb);
    let fx = Fixture::new();
    let bundle = fx.bundle();
    let trust = fx.allowed();
    let key = fx.signer();
    let m1 = tb.node("kubemaster-1");

    // The first master gets the shared files, then kubeadm init uses the CAs it finds.
    let seed = fx.with_bundle(
        "push",
        &bundle,
        &[
            "--nodes",
            &tb.addr(&m1.name),
            "--known-hosts",
            tb.known_hosts().to_str().unwrap(),
            "--identity",
            tb.identity().to_str().unwrap(),
        ],
    );
    assert_eq!(seed.status.code(), Some(0), "{}", text(&seed));
    let init = tb.ssh(&m1.name, &format!("kubeadm init --control-plane-endpoint kubeapi.test:6443 --apiserver-advertise-address {}", m1.address));
    assert!(init.status.success(), "kubeadm init: {}", text(&init));
    std::fs::write(
        m1.dir.join("cni/10-flannel.conflist"),
        "{\"cniVersion\":\"0.3.1\",\"name\":\"cbr0\"}\n",
    )
    .unwrap();

    let out = fx.with_bundle("push", &bundle, &["--inventory", tb.inventory().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let bundle_args = [
        "--bundle",
        bundle.to_str().unwrap(),
        "--trust",
        trust.to_str().unwrap(),
        "--decrypt-key",
        key.to_str().unwrap(),
    ];
    // Dry run: the exact commands, secret redacted, nothing joined.
    let dry = hapki()
        .args(["join", "--inventory"])
        .arg(tb.inventory())
        .args(bundle_args)
        .args(["--dry-run", "--copy-cni-config", "--token", "abcdef.0123456789abcdef"])
        .output()
        .unwrap();
    assert_eq!(dry.status.code(), Some(0), "{}", text(&dry));
    let dry_text = text(&dry);
    assert!(
        dry_text.contains("--control-plane") && dry_text.contains("abcdef.<redacted>"),
        "{dry_text}"
    );
    assert!(!dry_text.contains("0123456789abcdef"), "the token secret leaked: {dry_text}");
    assert!(read_log(&tb).iter().all(|l| l.sub != "join"), "dry run joined something");

    // A stale etcd data dir on node 3: preflight stops the join before anything starts.
    let stale = tb.node("kubemaster-3").dir.join("var-lib-etcd/member");
    std::fs::create_dir_all(&stale).unwrap();
    let blocked = hapki()
        .args(["join", "--inventory"])
        .arg(tb.inventory())
        .args(bundle_args)
        .args(["--copy-cni-config"])
        .output()
        .unwrap();
    assert_eq!(blocked.status.code(), Some(6), "{}", text(&blocked));
    assert!(text(&blocked).contains("DirAvailable--var-lib-etcd"), "{}", text(&blocked));
    assert!(read_log(&tb).iter().all(|l| l.sub != "join"), "a join ran despite preflight");
    std::fs::remove_dir(&stale).unwrap();

    let run_dir = fx.path("run");
    let out = hapki()
        .args(["join", "--inventory"])
        .arg(tb.inventory())
        .args(bundle_args)
        .args(["--copy-cni-config", "--output", "json", "--run-dir"])
        .arg(&run_dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let hash = openssl_ca_hash(&fx.pki().join("ca.crt"));
    assert_eq!(report["discovery_token_ca_cert_hash"], hash.as_str());
    let statuses: Vec<(&str, &str)> = report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["node"].as_str().unwrap(), n["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        statuses,
        vec![("kubemaster-2", "joined"), ("kubemaster-3", "joined"), ("kubenode-1", "joined")]
    );

    // The stand-in's log: control-plane joins never overlap, each with --control-plane and the
    // right hash and never --certificate-key; the worker without --control-plane; the first
    // master never joined.
    let log = read_log(&tb);
    let joins: Vec<&LogLine> = log.iter().filter(|l| l.sub == "join").collect();
    let cps: Vec<&&LogLine> = joins.iter().filter(|l| l.node.starts_with("kubemaster")).collect();
    assert_eq!(
        cps.iter().map(|l| l.node.as_str()).collect::<Vec<_>>(),
        vec!["kubemaster-2", "kubemaster-3"]
    );
    for l in &joins {
        assert!(l.ok, "{} failed: {}", l.node, l.argv);
        assert!(l.argv.contains(&format!("--discovery-token-ca-cert-hash {hash}")), "{}", l.argv);
        assert!(
            !l.argv.contains("--certificate-key") && !l.argv.contains("unsafe-skip"),
            "{}",
            l.argv
        );
        assert_eq!(
            l.argv.contains("--control-plane"),
            l.node.starts_with("kubemaster"),
            "{}",
            l.argv
        );
    }
    assert!(cps[0].end <= cps[1].start, "control-plane joins overlapped");
    assert!(!joins.iter().any(|l| l.node == "kubemaster-1"), "the first master was joined");
    // Secrets never reach the kept output.
    for e in std::fs::read_dir(&run_dir).unwrap().flatten() {
        let t = std::fs::read_to_string(e.path()).unwrap();
        let token_line = log.iter().find(|l| l.sub == "join").unwrap();
        assert!(!t.contains(".<redacted>") || !token_line.argv.is_empty());
        assert!(!t.lines().any(|l| l.contains("--token") && !l.contains("<redacted>")), "{t}");
    }

    // A real three-member mutual-TLS etcd from the distributed etcd CA.
    let endpoints: Vec<String> = tb
        .nodes
        .iter()
        .filter(|n| n.control_plane)
        .map(|n| format!("https://{}:2379", n.address))
        .collect();
    for (i, n) in tb.nodes.iter().filter(|n| n.control_plane).enumerate() {
        let h = tb.ssh(&n.name, &format!(
            "cd /etc/kubernetes/pki/etcd && ETCDCTL_API=3 etcdctl --endpoints {} --cacert ca.crt --cert healthcheck-client.crt --key healthcheck-client.key endpoint health 2>&1",
            endpoints[i]
        ));
        assert!(text(&h).contains("is healthy"), "{}: {}", n.name, text(&h));
    }
    let members = tb.ssh("kubemaster-3", &format!(
        "cd /etc/kubernetes/pki/etcd && ETCDCTL_API=3 etcdctl --endpoints {} --cacert ca.crt --cert healthcheck-client.crt --key healthcheck-client.key member list 2>&1",
        endpoints.join(",")
    ));
    let m = text(&members);
    assert_eq!(m.lines().filter(|l| l.contains(", started, ")).count(), 3, "{m}");
    // The worker got the first master's CNI config and a ca.crt from discovery, no CA key.
    let w = tb.node("kubenode-1");
    assert!(w.dir.join("cni/10-flannel.conflist").exists());
    assert!(!w.etc_kubernetes().join("pki/ca.key").exists());

    // An audit of the joined cluster is clean.
    let audit = hapki()
        .args(["audit", "--inventory"])
        .arg(tb.inventory())
        .args(bundle_args)
        .output()
        .unwrap();
    assert_eq!(audit.status.code(), Some(0), "{}", text(&audit));
}
