//! hapki's own wait for a new control plane's etcd member (`join --etcd-timeout`), observed: the
//! kubeadm stand-in blocks until etcd is healthy, so here the node's `etcdctl` answers hapki's
//! health check (and only hapki's: `--command-timeout=3s … endpoint health`) as an etcd that is
//! not up yet would. Late: hapki keeps asking, then reports the member healthy. Never: the join
//! fails within the timeout with the etcd message.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/fixture.rs"]
mod fixture;
#[path = "support/standin.rs"]
mod standin;
#[path = "support/testbed.rs"]
mod testbed;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use fixture::{hapki, text, Fixture};
use serde_json::Value;
use testbed::{TbNode, Testbed};

const UNHEALTHY: &str = "is unhealthy: failed to commit proposal: context deadline exceeded";

/// An `etcdctl` on the node that logs each of hapki's health checks and fails them while the
/// member is "not up": for `up_after_ms` after the first one, or forever without it.
fn late_etcd(n: &TbNode, up_after_ms: Option<u64>) {
    let log = n.dir.join("health-checks");
    let _ = std::fs::remove_file(&log);
    let down = match up_after_ms {
        Some(ms) => format!("[ $(( (now - first) / 1000000 )) -lt {ms} ]"),
        None => "true".to_string(),
    };
    let script = format!(
        r#"#!/bin/sh
case "$*" in
*--command-timeout=3s*"endpoint health"*)
    now=$(date +%s%N)
    echo "$now" >> '{log}'
    first=$(head -n 1 '{log}')
    if {down}; then
        echo "https://{addr}:2379 {UNHEALTHY}" >&2
        echo "Error: unhealthy cluster" >&2
        exit 1
    fi ;;
esac
exec /usr/bin/etcdctl "$@"
"#,
        log = log.display(),
        addr = n.address,
    );
    let p = n.dir.join("bin/etcdctl");
    std::fs::write(&p, script).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn health_checks(n: &TbNode) -> usize {
    std::fs::read_to_string(n.dir.join("health-checks")).map(|t| t.lines().count()).unwrap_or(0)
}

fn join(fx: &Fixture, tb: &Testbed, bundle: &Path, timeout: &str) -> Output {
    let mut c = hapki();
    c.args(["join", "--inventory"]).arg(tb.inventory());
    c.arg("--bundle").arg(bundle).arg("--trust").arg(fx.allowed());
    c.arg("--decrypt-key").arg(fx.signer());
    c.args(["--etcd-timeout", timeout, "--output", "json", "--run-dir"]).arg(fx.path("run"));
    c.output().unwrap()
}

/// (status, message) of `name` in a join report.
fn status(out: &Output, name: &str) -> (String, String) {
    let v: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(out)));
    let nodes = v["nodes"].as_array().unwrap_or_else(|| panic!("{v}"));
    assert_eq!(nodes.len(), 1, "{v}");
    assert_eq!(nodes[0]["node"], name, "{v}");
    let s = |k: &str| nodes[0][k].as_str().unwrap_or_default().to_string();
    (s("status"), s("message"))
}

#[test]
fn join_waits_for_a_late_etcd_member_and_fails_on_one_that_never_comes_up() {
    if !standin::prerequisites() {
        return;
    }
    let Some(tb) = Testbed::up(2, 0) else { return };
    standin::install(&tb);
    let fx = Fixture::new();
    let bundle = fx.bundle();
    let (m1, m2) = (tb.node("kubemaster-1"), tb.node("kubemaster-2"));
    cluster::push_to(&fx, &tb, &bundle, &[&m1.name, &m2.name], &[]);
    let init = tb.ssh(&m1.name, &format!("kubeadm init --control-plane-endpoint kubeapi.test:6443 --apiserver-advertise-address {}", m1.address));
    assert!(init.status.success(), "kubeadm init: {}", text(&init));

    // Late: unhealthy for 3 s after hapki's first check, then the real answer.
    late_etcd(m2, Some(3000));
    let t0 = Instant::now();
    let out = join(&fx, &tb, &bundle, "60s");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (st, msg) = status(&out, "kubemaster-2");
    assert_eq!(st, "joined", "{msg}");
    assert!(msg.contains("etcd member healthy"), "{msg}");
    assert!(health_checks(m2) >= 3, "hapki did not keep asking: {} checks", health_checks(m2));
    assert!(t0.elapsed() >= Duration::from_secs(3), "hapki did not wait for the member");

    // Never: the same join (after a reset) fails within --etcd-timeout, saying why.
    tb.ok(&m2.name, "kubeadm reset -f >/dev/null 2>&1 || kubeadm reset >/dev/null");
    cluster::push_to(&fx, &tb, &bundle, &[&m2.name], &[]);
    late_etcd(m2, None);
    let t0 = Instant::now();
    let out = join(&fx, &tb, &bundle, "4s");
    let took = t0.elapsed();
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    let (st, msg) = status(&out, "kubemaster-2");
    assert_ne!(st, "joined", "{msg}");
    assert!(msg.contains("etcd member did not become healthy"), "{msg}");
    assert!(msg.contains("unhealthy"), "the etcd message: {msg}");
    assert!(health_checks(m2) >= 2, "{} checks", health_checks(m2));
    assert!(took < Duration::from_secs(60), "the timeout was not kept: {took:?}");
}
