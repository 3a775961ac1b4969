//! The whole HA path on the testbed with the kubeadm stand-in (tests/standin): push, kubeadm
//! init on the first master, push to the others, preflight, `hapki join` — ending in a real
//! three-member mutual-TLS etcd cluster built from the distributed etcd CA.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/fixture.rs"]
mod fixture;
#[path = "support/standin.rs"]
mod standin;
#[path = "support/testbed.rs"]
mod testbed;

use fixture::{hapki, text, Fixture};
use serde_json::Value;
use standin::{openssl_discovery_hash, read_log, LogLine};
use testbed::Testbed;

#[test]
fn push_then_join_builds_a_healthy_three_member_etcd_without_a_certificate_key() {
    if !standin::prerequisites() {
        return;
    }
    let Some(tb) = Testbed::up(3, 1) else { return };
    standin::install(&tb);
    let fx = Fixture::new();
    let bundle = fx.bundle();
    let trust = fx.allowed();
    let key = fx.signer();
    let m1 = tb.node("kubemaster-1");

    // The first master gets the shared files, then kubeadm init uses the CAs it finds.
    cluster::push_to(&fx, &tb, &bundle, &[&m1.name], &[]);
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
        dry_text.contains("controlPlane") && dry_text.contains("abcdef.<redacted>"),
        "{dry_text}"
    );
    assert!(dry_text.contains("kubeadm join --config"), "{dry_text}");
    assert!(!dry_text.contains("0123456789abcdef"), "the token secret leaked: {dry_text}");
    assert!(read_log(&tb.dir).iter().all(|l| l.sub != "join"), "dry run joined something");

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
    assert!(read_log(&tb.dir).iter().all(|l| l.sub != "join"), "a join ran despite preflight");
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
    if out.status.code() != Some(0) {
        // kubeadm's whole output per node, and the stand-in's etcd logs, say why.
        let mut logs = String::new();
        for e in std::fs::read_dir(&run_dir).into_iter().flatten().flatten() {
            logs += &format!(
                "--- {}\n{}\n",
                e.path().display(),
                std::fs::read_to_string(e.path()).unwrap_or_default()
            );
        }
        for n in &tb.nodes {
            let etcd_log = n.state().join("standin-etcd.log");
            let tail: String = std::fs::read_to_string(&etcd_log)
                .unwrap_or_default()
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .join("\n");
            logs += &format!("--- {} (last lines, newest first)\n{tail}\n", etcd_log.display());
        }
        panic!("join failed: {}\n{logs}", text(&out));
    }
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let hash = openssl_discovery_hash(&fx.pki().join("ca.crt"));
    assert_eq!(report["discovery_token_ca_cert_hash"], hash.as_str());
    let statuses = cluster::node_statuses(&report);
    assert_eq!(
        statuses,
        vec![("kubemaster-2", "joined"), ("kubemaster-3", "joined"), ("kubenode-1", "joined")]
    );

    // The stand-in's log: control-plane joins never overlap, each a 0600 JoinConfiguration of
    // the version kubeadm 1.31 reads, with controlPlane and the right hash, never a token or
    // --certificate-key in argv; the worker without controlPlane; the first master never joined.
    let log = read_log(&tb.dir);
    let joins: Vec<&LogLine> = log.iter().filter(|l| l.sub == "join").collect();
    let cps: Vec<&&LogLine> = joins.iter().filter(|l| l.node.starts_with("kubemaster")).collect();
    assert_eq!(
        cps.iter().map(|l| l.node.as_str()).collect::<Vec<_>>(),
        vec!["kubemaster-2", "kubemaster-3"]
    );
    for l in &joins {
        assert!(l.ok, "{} failed: {}", l.node, l.argv);
        assert!(l.argv.contains(&format!("caCertHashes={hash}")), "{}", l.argv);
        assert!(l.argv.contains("[config mode=600 kubeadm.k8s.io/v1beta4 "), "{}", l.argv);
        assert!(
            !l.argv.contains("--certificate-key")
                && !l.argv.contains("unsafe-skip")
                && !l.argv.contains("--token"),
            "{}",
            l.argv
        );
        assert_eq!(
            l.argv.contains("control-plane=yes"),
            l.node.starts_with("kubemaster"),
            "{}",
            l.argv
        );
    }
    assert!(cps[0].end <= cps[1].start, "control-plane joins overlapped");
    assert!(!joins.iter().any(|l| l.node == "kubemaster-1"), "the first master was joined");
    // The token hapki minted was deleted when the joins ended (the stand-in keeps deleted
    // tokens aside for this check), and its secret reached neither the kept output nor hapki's.
    let deleted = std::fs::read_to_string(tb.dir.join("cluster/tokens.deleted")).unwrap();
    let (id, secret) =
        deleted.split_whitespace().next().zip(deleted.split_whitespace().nth(1)).unwrap();
    assert_eq!(secret.len(), 16, "{deleted}");
    assert_eq!(report["token"], format!("{id}.<redacted>").as_str());
    assert_eq!(report["token_cleanup"], "deleted");
    let live = std::fs::read_to_string(tb.dir.join("cluster/tokens")).unwrap();
    assert!(!live.contains(id), "the minted token is still valid: {live}");
    assert!(!text(&out).contains(secret), "the token secret leaked into hapki's output");
    for e in std::fs::read_dir(&run_dir).unwrap().flatten() {
        let t = std::fs::read_to_string(e.path()).unwrap();
        assert!(!t.contains(secret), "the token secret leaked into {}: {t}", e.path().display());
    }
    // Nor anywhere else in any kubeadm command line (the stand-in redacts only what follows
    // --token and the like, whose presence the check above refuses).
    let argvs = std::fs::read_to_string(tb.dir.join("cluster/joins.log")).unwrap();
    assert!(argvs.lines().count() > 3 && !argvs.contains(secret), "secret in an argv: {argvs}");

    // A real three-member mutual-TLS etcd from the distributed etcd CA.
    let endpoints: Vec<String> = tb
        .nodes
        .iter()
        .filter(|n| n.control_plane)
        .map(|n| format!("https://{}:2379", n.address))
        .collect();
    for (i, n) in tb.nodes.iter().filter(|n| n.control_plane).enumerate() {
        let health = standin::etcdctl(&tb, &n.name, &endpoints[i], "endpoint health");
        assert!(health.contains("is healthy"), "{}: {health}", n.name);
    }
    let m = standin::etcdctl(&tb, "kubemaster-3", &endpoints.join(","), "member list");
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

/// The flags that carry a secret or skip the CA pin are refused before any node is contacted,
/// each with the reason (exit 2); `--token-file` supplies the token (a malformed one is named
/// without its secret). No testbed: nothing may be reached.
#[test]
fn kubeadm_args_that_carry_secrets_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let inv = dir.path().join("inv.toml");
    std::fs::write(
        &inv,
        "[cluster]\ncontrol_plane_endpoint = \"kubeapi.test:6443\"\n\n[[nodes]]\nname = \"m1\"\n\
         address = \"127.0.0.1\"\nrole = \"control-plane\"\nport = 1\n",
    )
    .unwrap();
    for (arg, why) in [
        ("--certificate-key=0123", "kubeadm-certs"),
        ("--token=abcdef.0123456789abcdef", "process list"),
        ("--discovery-token-unsafe-skip-ca-verification", "pins the cluster CA"),
        ("--config=/tmp/x", "JoinConfiguration"),
    ] {
        let out = hapki()
            .args(["join", "--inventory"])
            .arg(&inv)
            .arg(format!("--kubeadm-arg={arg}"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{arg}: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("refused") && err.contains(why), "{arg}: {err}");
        assert!(!err.contains("0123456789abcdef"), "the secret was echoed: {err}");
    }
    let token = dir.path().join("token");
    std::fs::write(&token, "abcdef.NOTVALIDSECRET!!\n").unwrap();
    let out = hapki()
        .args(["join", "--inventory"])
        .arg(&inv)
        .arg("--token-file")
        .arg(&token)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("invalid bootstrap token"), "{}", text(&out));
    assert!(!text(&out).contains("NOTVALIDSECRET"), "{}", text(&out));
}
