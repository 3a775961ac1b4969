//! `hapki preflight` on the real testbed: a ready cluster passes, and each thing that would
//! break a control-plane join is caught under kubeadm's check name (or hapki's own), on the
//! right node, before any join.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/fixture.rs"]
mod fixture;
#[path = "support/real_kube.rs"]
mod real_kube;
#[path = "support/testbed.rs"]
mod testbed;

use std::os::unix::fs::PermissionsExt;

use fixture::{hapki, text, Fixture};
use serde_json::Value;
use testbed::Testbed;

/// Minimal kubeadm/kubelet that only report a version: preflight checks they are installed
/// and agree across nodes.
fn fake_binaries(tb: &Testbed, version: &str) {
    for n in &tb.nodes {
        let bin = n.dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        for (name, body) in [
            ("kubeadm", format!("echo {version}")),
            ("kubelet", format!("echo Kubernetes {version}")),
        ] {
            let p = bin.join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
}

/// The shared files on every control plane, CNI config on the workers, and kubeadm: the real
/// v1.20.2 (scripts/kubernetes) whose `kubeadm version -o short` preflight reads, with a
/// kubelet reporting the same version; the version-only fakes where the real one is not
/// built and the tests may skip it.
fn ready_cluster(fx: &Fixture, tb: &Testbed) {
    cluster::push_to(fx, tb, &fx.bundle(), &cluster::control_planes(tb), &[]);
    for w in tb.nodes.iter().filter(|n| !n.control_plane) {
        std::fs::write(w.dir.join("cni/10-flannel.conflist"), "{\"name\":\"cbr0\"}\n").unwrap();
    }
    match real_kube::cache() {
        Some(cache) => real_kube::install(tb, &cache),
        None => fake_binaries(tb, "v1.31.2"),
    }
}

fn preflight(tb: &Testbed) -> (Option<i32>, Vec<(String, String, String)>, String) {
    let out = hapki()
        .args(["preflight", "--inventory"])
        .arg(tb.inventory())
        .args(["--output", "json"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&out)));
    let mut problems = cluster::problems(&v);
    problems.sort();
    (out.status.code(), problems, text(&out))
}

#[test]
fn a_ready_cluster_passes_and_each_join_breaker_is_caught_on_its_node() {
    let Some(tb) = Testbed::up(3, 1) else { return };
    let fx = Fixture::new();
    ready_cluster(&fx, &tb);
    let (code, problems, all) = preflight(&tb);
    assert_eq!(code, Some(0), "{all}");
    assert!(problems.is_empty(), "{all}");

    // A node missing etcd/ca.key.
    let n2 = tb.node("kubemaster-2");
    std::fs::remove_file(n2.etc_kubernetes().join("pki/etcd/ca.key")).unwrap();
    let (code, problems, all) = preflight(&tb);
    assert_eq!(code, Some(6), "{all}");
    assert_eq!(
        problems,
        vec![("kubemaster-2".into(), "etcd/ca.key".into(), "shared-files".into())],
        "{all}"
    );

    // A mismatched front-proxy pair on node 3 (the key of another CA).
    let n3 = tb.node("kubemaster-3");
    let other = fx.init_pki("other");
    std::fs::copy(
        other.join("front-proxy-ca.key"),
        n3.etc_kubernetes().join("pki/front-proxy-ca.key"),
    )
    .unwrap();
    let (code, problems, all) = preflight(&tb);
    assert_eq!(code, Some(6), "{all}");
    assert!(
        problems.contains(&("kubemaster-3".into(), "front-proxy-ca.key".into(), "key-pair".into())),
        "{all}"
    );

    // A stale /var/lib/etcd and port 2379 taken on node 3's own address; a listener on the
    // first master's address must not fail the others.
    std::fs::create_dir_all(n3.dir.join("var-lib-etcd/member")).unwrap();
    let l3 = std::net::TcpListener::bind((n3.address.as_str(), 2379)).unwrap();
    let l1 = std::net::TcpListener::bind((tb.node("kubemaster-1").address.as_str(), 2380)).unwrap();
    let (code, problems, all) = preflight(&tb);
    assert_eq!(code, Some(6), "{all}");
    assert!(
        problems.contains(&(
            "kubemaster-3".into(),
            "-".into(),
            "DirAvailable--var-lib-etcd".into()
        )),
        "{all}"
    );
    assert!(problems.contains(&("kubemaster-3".into(), "-".into(), "Port-2379".into())), "{all}");
    assert!(
        !problems.iter().any(|p| p.2 == "Port-2380"),
        "node 1's listener failed another node: {all}"
    );
    drop((l1, l3));

    // A worker without CNI config, and differing kubelet versions.
    std::fs::remove_file(tb.node("kubenode-1").dir.join("cni/10-flannel.conflist")).unwrap();
    std::fs::write(
        tb.node("kubenode-1").dir.join("bin/kubelet"),
        "#!/bin/sh\necho Kubernetes v1.30.0\n",
    )
    .unwrap();
    let (_, problems, all) = preflight(&tb);
    assert!(problems.contains(&("kubenode-1".into(), "-".into(), "cni-config".into())), "{all}");
    assert!(problems.contains(&("*".into(), "-".into(), "kubelet-version".into())), "{all}");
}

/// A control plane whose host key changed: preflight exits 4 with the host-key message naming
/// its address (it was exit 6, "unreachable"), and join refuses before joining anything, also
/// with exit 4. Negative control: the same cluster before the change passes (exit 0).
#[test]
fn a_changed_host_key_fails_preflight_and_join_with_exit_4() {
    let Some(tb) = Testbed::up(2, 1) else { return };
    let fx = Fixture::new();
    ready_cluster(&fx, &tb);
    let (code, problems, all) = preflight(&tb);
    assert_eq!((code, problems.len()), (Some(0), 0), "{all}");

    tb.change_host_keys("kubemaster-2");
    let address = tb.node("kubemaster-2").address.clone();
    let (code, problems, all) = preflight(&tb);
    assert_eq!(code, Some(4), "{all}");
    assert_eq!(problems, vec![("kubemaster-2".into(), "-".into(), "unreachable".into())], "{all}");
    assert!(all.contains("HOST KEY CHANGED") && all.contains(&address), "{all}");

    let run = tempfile::tempdir().unwrap();
    let out = hapki()
        .args(["join", "--inventory"])
        .arg(tb.inventory())
        .arg("--run-dir")
        .arg(run.path().join("run"))
        .output()
        .unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(4), "{all}");
    assert!(all.contains("HOST KEY CHANGED") && all.contains("nothing was joined"), "{all}");
    for n in &tb.nodes {
        assert!(!n.etc_kubernetes().join("kubelet.conf").exists(), "{} joined: {all}", n.name);
    }
}
