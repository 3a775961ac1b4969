//! `hapki join` with the kubeadm stand-in (tests/standin) on a first master and two workers:
//! the token kubeadm mints is cross-checked against the bundle's CA hash (a mismatch joins
//! nothing and the token is deleted at once), workers join at the same time, and `--parallel 1`
//! joins them one after the other.

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

use fixture::{hapki, text, Fixture};
use serde_json::Value;
use standin::{openssl_discovery_hash, read_log};
use testbed::{TbNode, Testbed};

const ZERO_HASH: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// Replaces the node's kubeadm stand-in by a wrapper running `body` (with `$real` the stand-in).
fn wrap_kubeadm(n: &TbNode, body: &str) {
    let bin = n.dir.join("bin");
    if !bin.join("kubeadm.real").exists() {
        std::fs::rename(bin.join("kubeadm"), bin.join("kubeadm.real")).unwrap();
    }
    let script = format!("#!/bin/sh\nreal=\"$(dirname \"$0\")/kubeadm.real\"\n{body}\n");
    std::fs::write(bin.join("kubeadm"), script).unwrap();
    std::fs::set_permissions(bin.join("kubeadm"), std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn join(fx: &Fixture, tb: &Testbed, bundle: &Path, extra: &[&str]) -> Output {
    let mut c = hapki();
    c.args(["join", "--inventory"]).arg(tb.inventory());
    c.arg("--bundle").arg(bundle).arg("--trust").arg(fx.allowed());
    c.arg("--decrypt-key").arg(fx.signer());
    c.args(["--copy-cni-config", "--output", "json", "--run-dir"]).arg(fx.path("run"));
    c.args(extra).output().unwrap()
}

/// The worker joins' own intervals (ns), as each worker's wrapper recorded them around the
/// stand-in's join (which it first holds for a second).
fn join_intervals(tb: &Testbed) -> Vec<(u128, u128)> {
    tb.nodes
        .iter()
        .filter(|n| !n.control_plane)
        .map(|n| {
            let t = std::fs::read_to_string(n.dir.join("join-times")).unwrap();
            let v: Vec<u128> = t.split_whitespace().map(|x| x.parse().unwrap()).collect();
            assert_eq!(v.len(), 2, "{}: {t}", n.name);
            (v[0], v[1])
        })
        .collect()
}

fn overlap(a: (u128, u128), b: (u128, u128)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

#[test]
fn token_hash_cross_check_then_workers_in_parallel_and_in_batches_of_one() {
    if !standin::prerequisites() {
        return;
    }
    let Some(tb) = Testbed::up(1, 2) else { return };
    standin::install(&tb);
    let fx = Fixture::new();
    let bundle = fx.bundle();
    let m1 = tb.node("kubemaster-1");
    cluster::push_to(&fx, &tb, &bundle, &[&m1.name], &[]);
    let init = tb.ssh(&m1.name, &format!("kubeadm init --control-plane-endpoint kubeapi.test:6443 --apiserver-advertise-address {}", m1.address));
    assert!(init.status.success(), "kubeadm init: {}", text(&init));
    std::fs::write(m1.dir.join("cni/10-flannel.conflist"), "{\"name\":\"cbr0\"}\n").unwrap();
    let ours = openssl_discovery_hash(&fx.pki().join("ca.crt"));

    // 1. kubeadm on the first master prints another CA hash than the bundle's ca.crt gives.
    wrap_kubeadm(
        m1,
        &format!(
            "if [ \"$1 $2\" = \"token create\" ]; then \"$real\" \"$@\" | sed 's/sha256:[0-9a-f]*/{ZERO_HASH}/'; exit; fi\nexec \"$real\" \"$@\""
        ),
    );
    let out = join(&fx, &tb, &bundle, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let msg = text(&out);
    assert!(msg.contains(&format!("prints CA hash {ZERO_HASH}")), "{msg}");
    assert!(msg.contains(&ours), "the bundle's hash named: {msg}");
    assert!(read_log(&tb.dir).iter().all(|l| l.sub != "join"), "a node joined: {msg}");
    let deleted = std::fs::read_to_string(tb.dir.join("cluster/tokens.deleted")).unwrap();
    let id = deleted.split_whitespace().next().expect("the minted token was deleted");
    let live = std::fs::read_to_string(tb.dir.join("cluster/tokens")).unwrap_or_default();
    assert!(!live.contains(id), "the mismatched token stays valid: {live}");
    wrap_kubeadm(m1, "exec \"$real\" \"$@\"");

    // 2. Workers join at the same time: each holds its join a second, recording when.
    for w in tb.nodes.iter().filter(|n| !n.control_plane) {
        let times = w.dir.join("join-times");
        wrap_kubeadm(
            w,
            &format!(
                "if [ \"$1\" = join ]; then date +%s%N > '{t}'; sleep 1; \"$real\" \"$@\"; rc=$?; date +%s%N >> '{t}'; exit $rc; fi\nexec \"$real\" \"$@\"",
                t = times.display()
            ),
        );
    }
    let out = join(&fx, &tb, &bundle, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        cluster::node_statuses(&report),
        vec![("kubenode-1", "joined"), ("kubenode-2", "joined")]
    );
    let t = join_intervals(&tb);
    assert!(overlap(t[0], t[1]), "the workers joined one after the other: {t:?}");

    // 3. Reset, and again with --parallel 1: one worker at a time.
    for w in tb.nodes.iter().filter(|n| !n.control_plane) {
        tb.ok(&w.name, "kubeadm reset -f >/dev/null 2>&1 || kubeadm reset >/dev/null");
        std::fs::remove_file(w.dir.join("join-times")).unwrap();
    }
    let out = join(&fx, &tb, &bundle, &["--parallel", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let t = join_intervals(&tb);
    assert!(!overlap(t[0], t[1]), "--parallel 1 joined two workers at once: {t:?}");
}
