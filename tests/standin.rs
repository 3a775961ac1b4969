//! The kubeadm stand-in (tests/standin/) on a real testbed: it must build a real three-member
//! mutual-TLS etcd from pushed shared files, and fail where kubeadm fails — so that hapki's
//! end-to-end tests can trust a passing join.
//!
//! Needs root (the testbed starts sshd in new namespaces), etcd, etcdctl and openssl. Without them
//! it skips loudly; with `CI` or `HAPKI_REQUIRE_TESTBED` set it fails instead. The testbed script
//! is `HAPKI_TESTBED_SCRIPT` (default: scripts/testbed in this tree).

#[path = "support/standin.rs"]
mod standin;
#[path = "support/testbed.rs"]
mod testbed;

use std::process::Command;

use standin::{etcdctl, make_pki, openssl_discovery_hash, put_pki, read_log, LogLine};
use testbed::Testbed;

#[test]
fn standin_builds_real_stacked_etcd_and_fails_like_kubeadm() {
    if !standin::prerequisites() {
        return;
    }
    // 1-3 form the cluster; 4 and 5 are the nodes whose joins must fail.
    let Some(tb) = Testbed::up(5, 1) else { return };
    standin::install(&tb);
    // The bare address of kubemaster-N, as etcd advertises it.
    let addr = |n: usize| tb.control_plane(n).address.clone();
    let work = tempfile::tempdir().unwrap();
    let pki = work.path().join("pki");
    make_pki(&pki);
    let hash = openssl_discovery_hash(&pki.join("ca.crt"));

    assert_eq!(tb.ok("kubemaster-1", "kubeadm version -o short").trim(), "v1.31.2");
    assert_eq!(tb.ok("kubenode-1", "kubelet --version").trim(), "Kubernetes v1.31.2");

    for n in 1..=3 {
        put_pki(&tb, &format!("kubemaster-{n}"), &pki);
    }
    let init = tb.ok("kubemaster-1", "kubeadm init --control-plane-endpoint kubeapi.test:6443");
    assert!(init.contains(&hash), "init's join command must carry the CA hash:\n{init}");
    // The pushed CA is used, not replaced, and the leaves chain to it.
    let crt = tb.ok("kubemaster-1", "cat /etc/kubernetes/pki/ca.crt");
    assert_eq!(crt, std::fs::read_to_string(pki.join("ca.crt")).unwrap());
    tb.ok(
        "kubemaster-1",
        "openssl verify -CAfile /etc/kubernetes/pki/etcd/ca.crt /etc/kubernetes/pki/etcd/peer.crt && \
         grep -q \"certificate-authority-data: $(base64 -w0 < /etc/kubernetes/pki/ca.crt)\" /etc/kubernetes/admin.conf",
    );
    let san = tb.ok(
        "kubemaster-1",
        "openssl x509 -in /etc/kubernetes/pki/etcd/server.crt -noout -ext subjectAltName",
    );
    assert!(san.contains(&format!("IP Address:{}", addr(1))), "{san}");

    let join = tb.ok("kubemaster-1", "kubeadm token create --ttl 1h --print-join-command");
    let join = join.trim();
    let token = join.split_whitespace().skip_while(|w| *w != "--token").nth(1).unwrap().to_owned();
    assert!(join.contains(&hash), "{join}");

    // Refusals and discovery failures, before any node joins.
    let text = tb.fails(
        "kubemaster-2",
        &format!("{join} --control-plane --certificate-key {}", "ab".repeat(32)),
    );
    assert!(text.contains("--certificate-key is refused"), "{text}");
    let text = tb.fails("kubemaster-2", &format!("kubeadm join kubeapi.test:6443 --token {token} --discovery-token-unsafe-skip-ca-verification --control-plane"));
    assert!(text.contains("refused"), "{text}");
    let wrong = format!("sha256:{}", "0".repeat(64));
    let text = tb.fails("kubemaster-2", &format!("kubeadm join kubeapi.test:6443 --token {token} --discovery-token-ca-cert-hash {wrong} --control-plane"));
    assert!(text.contains("none of the public keys"), "{text}");
    let text = tb.fails("kubemaster-2", &format!("kubeadm join kubeapi.test:6443 --token abcdef.0123456789abcdef --discovery-token-ca-cert-hash {hash} --control-plane"));
    assert!(text.contains("could not find a JWS signature"), "{text}");

    // An expired token is refused (written expired rather than waited for).
    let stale = "zzzzzz.0123456789abcdef";
    std::fs::OpenOptions::new()
        .append(true)
        .open(tb.dir.join("cluster/tokens"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"zzzzzz 0123456789abcdef 1000\n"))
        .unwrap();
    let text = tb.fails("kubemaster-2", &format!("kubeadm join kubeapi.test:6443 --token {stale} --discovery-token-ca-cert-hash {hash} --control-plane"));
    assert!(text.contains("could not find a JWS signature"), "{text}");

    // The real joins, one at a time.
    for n in 2..=3 {
        tb.ok(
            &format!("kubemaster-{n}"),
            &format!("{join} --control-plane --apiserver-advertise-address {}", addr(n)),
        );
    }
    let endpoints: Vec<String> = (1..=3).map(|n| format!("https://{}:2379", addr(n))).collect();
    for n in 1..=3 {
        let node = format!("kubemaster-{n}");
        let health = etcdctl(&tb, &node, &endpoints[n - 1], "endpoint health");
        assert!(health.contains("is healthy"), "{node}: {health}");
    }

    // A mismatched front-proxy pair: the cert is the cluster's, the key another CA's.
    let other = work.path().join("other");
    make_pki(&other);
    let bad_fp = work.path().join("bad-fp");
    make_pki(&bad_fp);
    for f in
        ["ca.crt", "ca.key", "sa.key", "sa.pub", "front-proxy-ca.crt", "etcd/ca.crt", "etcd/ca.key"]
    {
        std::fs::copy(pki.join(f), bad_fp.join(f)).unwrap();
    }
    std::fs::copy(other.join("front-proxy-ca.key"), bad_fp.join("front-proxy-ca.key")).unwrap();
    put_pki(&tb, "kubemaster-4", &bad_fp);
    let text = tb.fails("kubemaster-4", &format!("{join} --control-plane"));
    assert!(text.contains("x509: provided PrivateKey doesn't match parent's PublicKey"), "{text}");

    // A missing etcd/ca.key: only a warning in kubeadm's shared-certificate check, then leaf signing fails.
    put_pki(&tb, "kubemaster-5", &pki);
    tb.ok("kubemaster-5", "rm /etc/kubernetes/pki/etcd/ca.key");
    let text = tb.fails("kubemaster-5", &format!("{join} --control-plane"));
    assert!(text.contains("assuming external key for etcd CA"), "{text}");
    assert!(
        text.contains("couldn't load the private key file /etc/kubernetes/pki/etcd/ca.key"),
        "{text}"
    );

    // A leaf left over from an attempt against another cluster.
    tb.ok(
        "kubemaster-5",
        "rm -rf /etc/kubernetes/pki/* /etc/kubernetes/*.conf /etc/kubernetes/manifests",
    );
    put_pki(&tb, "kubemaster-5", &pki);
    let stale_leaf = other.join("apiserver.crt");
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=kube-apiserver",
            "-days",
            "1",
            "-keyout",
        ])
        .arg(other.join("apiserver.key"))
        .arg("-out")
        .arg(&stale_leaf)
        .output()
        .unwrap();
    assert!(made.status.success());
    tb.ok(
        "kubemaster-5",
        &format!(
            "cat > /etc/kubernetes/pki/apiserver.crt <<'EOF'\n{}EOF",
            std::fs::read_to_string(&stale_leaf).unwrap()
        ),
    );
    let text = tb.fails("kubemaster-5", &format!("{join} --control-plane"));
    assert!(text.contains("certificate apiserver is not signed by corresponding CA"), "{text}");

    // Failed joins added no etcd member: exactly the three started ones.
    let members = etcdctl(&tb, "kubemaster-3", &endpoints.join(","), "member list");
    let lines: Vec<&str> = members.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 3, "{members}");
    for n in 1..=3 {
        let line = lines
            .iter()
            .find(|l| l.contains(&format!(", kubemaster-{n}, ")))
            .unwrap_or_else(|| panic!("{members}"));
        assert!(line.contains(", started, "), "{line}");
        assert!(line.contains(&format!("https://{}:2380", addr(n))), "{line}");
    }

    // Worker: joins without --control-plane and gets ca.crt from discovery; a second attempt fails
    // kubeadm's worker preflight.
    tb.ok("kubenode-1", join);
    assert_eq!(tb.ok("kubenode-1", "cat /etc/kubernetes/pki/ca.crt"), crt);
    let text = tb.fails("kubenode-1", join);
    assert!(text.contains("FileAvailable--etc-kubernetes-pki-ca.crt"), "{text}");

    // The log: every call, the secret never, successful control-plane joins never overlapping.
    let raw = std::fs::read_to_string(tb.dir.join("cluster/joins.log")).unwrap();
    assert!(!raw.contains(token.split('.').nth(1).unwrap()), "token secret in the log");
    assert!(!raw.contains(&"ab".repeat(32)), "certificate key in the log");
    let log = read_log(&tb.dir);
    let mut cp: Vec<&LogLine> = log
        .iter()
        .filter(|l| l.sub == "join" && l.ok && l.argv.contains("--control-plane"))
        .collect();
    assert_eq!(
        cp.iter().map(|l| l.node.as_str()).collect::<Vec<_>>(),
        ["kubemaster-2", "kubemaster-3"]
    );
    cp.sort_by_key(|l| l.start);
    for w in cp.windows(2) {
        assert!(w[0].end <= w[1].start, "control-plane joins overlap");
    }
    for l in &cp {
        assert!(l.argv.contains(&format!("--discovery-token-ca-cert-hash {hash}")), "{}", l.argv);
        assert!(!l.argv.contains("--certificate-key"), "{}", l.argv);
        assert!(l.start < l.end);
    }
    let refused = log.iter().find(|l| l.argv.contains("--certificate-key")).unwrap();
    assert!(
        !refused.ok && refused.argv.contains("--certificate-key <redacted>"),
        "{}",
        refused.argv
    );
    assert!(refused.message.contains("refused"), "{}", refused.message);
    let worker: Vec<&LogLine> =
        log.iter().filter(|l| l.node == "kubenode-1" && l.sub == "join").collect();
    assert!(worker.iter().all(|l| !l.argv.contains("--control-plane")));
    assert!(
        !log.iter().any(|l| l.node == "kubemaster-1" && l.sub == "join"),
        "the first master is never joined"
    );

    // reset leaves the cluster with its quorum intact.
    tb.ok("kubemaster-3", "kubeadm reset -f");
    let members = etcdctl(&tb, "kubemaster-1", &endpoints[..2].join(","), "member list");
    assert_eq!(members.lines().filter(|l| l.contains("started")).count(), 2, "{members}");
    assert_eq!(tb.ok("kubemaster-3", "find /var/lib/etcd /etc/kubernetes/pki -mindepth 1"), "");
}
