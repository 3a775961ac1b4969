//! A kubespray-style INI inventory (as scripts/testbed writes it: `[all]` with `ansible_host`,
//! `ansible_port`, `ansible_user`, then `[kube_control_plane]`, `[etcd]`, `[kube_node]`) driving
//! `push` and `audit` on the real testbed, end to end: the nodes, their roles and their SSH
//! settings come from the INI alone (the INI has no known_hosts: it is given as a flag).

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/fixture.rs"]
mod fixture;
#[path = "support/testbed.rs"]
mod testbed;

use std::path::Path;
use std::process::Output;

use fixture::{hapki, text, Fixture, SHARED};
use serde_json::Value;
use testbed::Testbed;

fn ini_args(tb: &Testbed) -> Vec<String> {
    let s = |p: &Path| p.to_str().unwrap().to_string();
    vec![
        "--inventory".into(),
        s(&tb.inventory_ini()),
        "--known-hosts".into(),
        s(&tb.known_hosts()),
        "--identity".into(),
        s(&tb.identity()),
        "--output".into(),
        "json".into(),
    ]
}

fn audit(tb: &Testbed) -> (Output, Value) {
    let out = hapki().arg("audit").args(ini_args(tb)).output().unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    (out, v)
}

fn sums(dir: &Path, files: &[&str]) -> String {
    let out =
        std::process::Command::new("sha256sum").args(files).current_dir(dir).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn push_and_audit_read_a_kubespray_ini() {
    let Some(tb) = Testbed::up(2, 1) else { return };
    let ini = std::fs::read_to_string(tb.inventory_ini()).unwrap();
    assert!(ini.contains("[kube_control_plane]") && ini.contains("ansible_host="), "{ini}");
    let fx = Fixture::new();
    let bundle = fx.bundle();

    // push: the INI's second control plane gets the shared files; the first master (the
    // source) and the worker get nothing.
    let args = ini_args(&tb);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = fx.with_bundle("push", &bundle, &args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cluster::node_statuses(&report), vec![("kubemaster-2", "installed")]);
    let pki2 = tb.node("kubemaster-2").etc_kubernetes().join("pki");
    assert_eq!(sums(&pki2, &SHARED), sums(&fx.pki(), &SHARED));
    for n in ["kubemaster-1", "kubenode-1"] {
        assert!(!tb.node(n).etc_kubernetes().join("pki").exists(), "{n} got files");
    }

    // audit: the first master seeded, the worker holding only ca.crt — clean, every node
    // under its INI name and role.
    cluster::push_to(&fx, &tb, &bundle, &["kubemaster-1"], &[]);
    let w = tb.node("kubenode-1").etc_kubernetes().join("pki");
    std::fs::create_dir_all(&w).unwrap();
    std::fs::copy(fx.pki().join("ca.crt"), w.join("ca.crt")).unwrap();
    let (out, v) = audit(&tb);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let nodes: Vec<(&str, &str)> = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["node"].as_str().unwrap(), n["role"].as_str().unwrap()))
        .collect();
    assert_eq!(
        nodes,
        vec![
            ("kubemaster-1", "control-plane"),
            ("kubemaster-2", "control-plane"),
            ("kubenode-1", "worker")
        ]
    );

    // Control: drift on kubemaster-2 is found, on that node, by the same INI.
    std::fs::remove_file(pki2.join("sa.key")).unwrap();
    let (out, v) = audit(&tb);
    assert_eq!(out.status.code(), Some(6), "{}", text(&out));
    let problems = cluster::problems(&v);
    assert!(problems.iter().any(|(n, f, _)| n == "kubemaster-2" && f == "sa.key"), "{problems:?}");
    assert!(problems.iter().all(|(n, _, _)| n == "kubemaster-2"), "{problems:?}");
}
