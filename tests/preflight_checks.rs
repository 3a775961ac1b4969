//! Each preflight check on its own, on the real testbed: a ready cluster passes, then one thing
//! is broken at a time and exactly that check fires, on the right node, with a message that says
//! what to do — `leaf-chain`, `clock-skew`, `endpoint-dns`, `admin-conf`, `kubeadm` (missing)
//! and `kubeadm-version` (differing). Each case is undone before the next, and the next case's
//! exact problem list proves the undo.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/fixture.rs"]
mod fixture;
#[path = "support/testbed.rs"]
mod testbed;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use fixture::{hapki, text, Fixture};
use serde_json::Value;
use testbed::{TbNode, Testbed};

/// Writes an executable stand-in `name` into the node's bin/ (first on its PATH).
fn standin(n: &TbNode, name: &str, body: &str) {
    let p = n.dir.join("bin").join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn unstandin(n: &TbNode, name: &str) {
    std::fs::remove_file(n.dir.join("bin").join(name)).unwrap();
}

/// Shared files on both control planes, CNI config on the worker, kubeadm and kubelet
/// reporting one version everywhere.
fn ready_cluster(fx: &Fixture, tb: &Testbed) {
    cluster::push_to(fx, tb, &fx.bundle(), &cluster::control_planes(tb), &[]);
    for n in &tb.nodes {
        if !n.control_plane {
            std::fs::write(n.dir.join("cni/10-flannel.conflist"), "{\"name\":\"cbr0\"}\n").unwrap();
        }
        standin(n, "kubeadm", "echo v1.31.2");
        standin(n, "kubelet", "echo Kubernetes v1.31.2");
    }
}

/// One problem: (node, file or "-", kind, message).
type Problem = (String, String, String, String);

/// Every problem, sorted, and the exit code.
fn preflight(tb: &Testbed) -> (Option<i32>, Vec<Problem>) {
    let out = hapki()
        .args(["preflight", "--inventory"])
        .arg(tb.inventory())
        .args(["--output", "json"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&out)));
    let mut problems: Vec<_> = v["problems"]
        .as_array()
        .unwrap_or_else(|| panic!("no problems[]: {v}"))
        .iter()
        .map(|p| {
            let s = |k: &str| p[k].as_str().unwrap_or("-").to_string();
            (s("node"), s("file"), s("kind"), s("message"))
        })
        .collect();
    problems.sort();
    (out.status.code(), problems)
}

/// Asserts preflight fails with exactly one problem `(node, file, kind)` whose message holds
/// every one of `says`.
fn only(tb: &Testbed, want: (&str, &str, &str), says: &[&str]) {
    let (code, problems) = preflight(tb);
    let got: Vec<(&str, &str, &str)> =
        problems.iter().map(|p| (p.0.as_str(), p.1.as_str(), p.2.as_str())).collect();
    assert_eq!(got, vec![want], "{problems:#?}");
    assert_eq!(code, Some(6), "{problems:#?}");
    let message = &problems[0].3;
    for s in says {
        assert!(message.contains(s), "{want:?}: {s:?} not in {message:?}");
    }
    assert!(!message.contains('\n'), "{message:?}");
}

/// A serving certificate for `cn`, signed by the CA in `pki` (openssl, not hapki).
fn leaf_signed_by(pki: &Path, cn: &str, out: &Path) {
    let key = out.with_extension("key");
    let csr = out.with_extension("csr");
    let run = |args: &[&str]| {
        let o = Command::new("openssl").args(args).output().unwrap();
        assert!(o.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    };
    let (key, csr, out) = (key.to_str().unwrap(), csr.to_str().unwrap(), out.to_str().unwrap());
    let subj = format!("/CN={cn}");
    run(&["req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", &subj, "-keyout", key]);
    run(&["req", "-new", "-key", key, "-subj", &subj, "-out", csr]);
    let (ca, ca_key) = (pki.join("ca.crt"), pki.join("ca.key"));
    run(&[
        "x509",
        "-req",
        "-in",
        csr,
        "-CA",
        ca.to_str().unwrap(),
        "-CAkey",
        ca_key.to_str().unwrap(),
        "-days",
        "30",
        "-out",
        out,
    ]);
}

#[test]
fn each_check_fires_alone_on_its_node() {
    let Some(tb) = Testbed::up(2, 1) else { return };
    let fx = Fixture::new();
    ready_cluster(&fx, &tb);
    let (code, problems) = preflight(&tb);
    assert_eq!((code, problems.len()), (Some(0), 0), "{problems:#?}");
    let n2 = tb.node("kubemaster-2");
    let leaf = n2.etc_kubernetes().join("pki/apiserver.crt");

    // leaf-chain: an apiserver.crt left by an attempt against another cluster's CA.
    let other = fx.init_pki("other");
    leaf_signed_by(&other, "kube-apiserver", &fx.path("foreign.crt"));
    std::fs::copy(fx.path("foreign.crt"), &leaf).unwrap();
    only(&tb, ("kubemaster-2", "apiserver.crt", "leaf-chain"), &["another CA", "remove apiserver"]);
    // Control: the same leaf from this cluster's own CA chains, and passes.
    leaf_signed_by(&fx.pki(), "kube-apiserver", &fx.path("own.crt"));
    std::fs::copy(fx.path("own.crt"), &leaf).unwrap();
    let (code, problems) = preflight(&tb);
    assert_eq!((code, problems.len()), (Some(0), 0), "{problems:#?}");
    std::fs::remove_file(&leaf).unwrap();

    // clock-skew: the worker's clock an hour ahead.
    let w = tb.node("kubenode-1");
    standin(
        w,
        "date",
        "[ \"$1\" = +%s ] && { echo $(( $(/bin/date +%s) + 3600 )); exit; }; exec /bin/date \"$@\"",
    );
    only(&tb, ("kubenode-1", "-", "clock-skew"), &["NTP"]);
    unstandin(w, "date");

    // endpoint-dns: the control-plane endpoint does not resolve on kubemaster-2.
    standin(n2, "getent", "[ \"$1\" = ahosts ] && exit 2; exec /usr/bin/getent \"$@\"");
    only(&tb, ("kubemaster-2", "-", "endpoint-dns"), &["does not resolve", "/etc/hosts"]);
    unstandin(n2, "getent");

    // admin-conf: an admin.conf on a joining node (kubeadm would skip discovery).
    let admin = n2.etc_kubernetes().join("admin.conf");
    std::fs::write(&admin, "apiVersion: v1\nkind: Config\n").unwrap();
    only(&tb, ("kubemaster-2", "admin.conf", "admin-conf"), &["remove it"]);
    std::fs::remove_file(&admin).unwrap();

    // kubeadm-version: another kubeadm on the worker.
    standin(w, "kubeadm", "echo v1.30.0");
    only(&tb, ("*", "-", "kubeadm-version"), &["v1.30.0 on kubenode-1", "v1.31.2 on"]);

    // kubeadm: none at all on the worker.
    unstandin(w, "kubeadm");
    only(&tb, ("kubenode-1", "-", "kubeadm"), &["not installed", "install it"]);
}
