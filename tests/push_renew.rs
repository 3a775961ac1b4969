//! `hapki push` of a same-key CA re-issue (`hapki pki renew-ca`) on the testbed: installed
//! without `--replace`, kubeconfigs holding the old `ca.crt` updated in the same install (only
//! that value; mode and owner kept), an earlier notAfter refused as a downgrade. Expected values
//! come from openssl, base64(1) and literals.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/fixture.rs"]
mod fixture;
#[path = "support/reissue.rs"]
mod reissue;
#[path = "support/testbed.rs"]
mod testbed;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use fixture::{hapki, text, Fixture};
use reissue::{b64, push, run};
use testbed::{TbNode, Testbed};

fn pubkey(path: &Path) -> String {
    run("openssl", &["x509", "-noout", "-pubkey", "-in", path.to_str().unwrap()])
}

/// A kubeconfig laid out as kubeadm writes it, with `ca_data` as the cluster CA.
fn kubeconfig(ca_data: &str, user: &str) -> String {
    format!(
        "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {ca_data}\n    server: https://10.0.0.1:6443\n  name: kubernetes\ncontexts:\n- context:\n    cluster: kubernetes\n    user: {user}\n  name: {user}@kubernetes\ncurrent-context: {user}@kubernetes\nkind: Config\npreferences: {{}}\nusers:\n- name: {user}\n  user:\n    client-certificate-data: Q0xJRU5U\n    client-key-data: S0VZ\n"
    )
}

fn write(path: &Path, body: &str, mode: u32, uid: u32) {
    std::fs::write(path, body).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).unwrap();
}

/// Every regular file under the node's /etc/kubernetes: bytes, mode, owner.
fn snapshot(n: &TbNode) -> Snapshot {
    let root = n.etc_kubernetes();
    walkdir::WalkDir::new(&root)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            let md = e.metadata().unwrap();
            let rel = e.path().strip_prefix(&root).unwrap().display().to_string();
            (rel, (std::fs::read(e.path()).unwrap(), md.mode() & 0o7777, md.uid()))
        })
        .collect()
}

type Snapshot = BTreeMap<String, (Vec<u8>, u32, u32)>;

/// The files whose bytes, mode or owner differ between two snapshots (or exist in one only).
fn changed(a: &Snapshot, b: &Snapshot) -> Vec<String> {
    let names: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    names.into_iter().filter(|n| a.get(*n) != b.get(*n)).cloned().collect()
}

fn renew_ca(dir: &Path, extra: &[&str]) {
    let out = hapki().args(["pki", "renew-ca", "--pki-dir"]).arg(dir).args(extra).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

/// A copy of `src` whose ca.crt is re-signed by openssl with the same key and subject but a
/// notAfter only 100 days away: earlier than the installed one.
fn earlier_copy(fx: &Fixture, src: &Path) -> PathBuf {
    let dir = fx.path("earlier");
    run("cp", &["-a", src.to_str().unwrap(), dir.to_str().unwrap()]);
    let (key, crt) = (dir.join("ca.key"), dir.join("ca.crt"));
    run(
        "openssl",
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            key.to_str().unwrap(),
            "-subj",
            "/CN=kubernetes",
            "-days",
            "100",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign",
            "-out",
            crt.to_str().unwrap(),
        ],
    );
    dir
}

#[test]
fn a_same_key_ca_reissue_is_pushed_without_replace_and_updates_the_kubeconfigs() {
    let Some(tb) = Testbed::up(3, 0) else { return };
    let fx = Fixture::new();
    let old_ca = fx.path("old-ca.crt");
    std::fs::copy(fx.pki().join("ca.crt"), &old_ca).unwrap();
    let first = fx.bundle_of(&fx.pki(), "first.age", Some(1000));
    let out = push(&fx, &tb, &first, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // kubeadm's kubeconfigs on kubemaster-2: three with the cluster CA (one owned by uid 1000,
    // 0640), one with another CA, which must not change.
    let n2 = tb.node("kubemaster-2");
    let k2 = n2.etc_kubernetes();
    let (old_b64, fp_b64) = (b64(&old_ca), b64(&fx.pki().join("front-proxy-ca.crt")));
    write(&k2.join("admin.conf"), &kubeconfig(&old_b64, "kubernetes-admin"), 0o600, 0);
    write(&k2.join("scheduler.conf"), &kubeconfig(&old_b64, "system:kube-scheduler"), 0o600, 0);
    write(&k2.join("kubelet.conf"), &kubeconfig(&old_b64, "system:node:kubemaster-2"), 0o640, 1000);
    write(&k2.join("other.conf"), &kubeconfig(&fp_b64, "someone"), 0o600, 0);
    let other_before = std::fs::read(k2.join("other.conf")).unwrap();
    // A kubeconfig planted as a symlink to a file outside: never written through.
    let outside = n2.dir.join("outside.conf");
    write(&outside, &kubeconfig(&old_b64, "outside"), 0o644, 0);
    std::os::unix::fs::symlink(&outside, k2.join("planted.conf")).unwrap();

    // Negative control first: an earlier notAfter with the same key is a downgrade, refused on
    // every node, which stays exactly as it was.
    let earlier = earlier_copy(&fx, &fx.pki());
    let b_earlier = fx.bundle_of(&earlier, "earlier.age", Some(1001));
    let before = snapshot(n2);
    let out = push(&fx, &tb, &b_earlier, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("downgrade") && text(&out).contains("--replace"), "{}", text(&out));
    assert_eq!(
        changed(&before, &snapshot(n2)),
        Vec::<String>::new(),
        "a refused node was modified"
    );

    // The re-issue: same key, later notAfter.
    renew_ca(&fx.pki(), &["--validity", "4000d"]);
    let new_ca = fx.pki().join("ca.crt");
    assert_eq!(pubkey(&new_ca), pubkey(&old_ca));
    let second = fx.bundle_of(&fx.pki(), "second.age", Some(1002));

    // Atomicity: kubelet.conf cannot be replaced (immutable), after admin.conf already was and
    // the PKI renamed in: the node puts everything back, PKI and kubeconfigs alike.
    let kubelet = k2.join("kubelet.conf");
    run("chattr", &["+i", kubelet.to_str().unwrap()]);
    let before = snapshot(n2);
    let out = push(&fx, &tb, &second, &[]);
    run("chattr", &["-i", kubelet.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(
        text(&out).contains("kubelet.conf") && text(&out).contains("put back"),
        "{}",
        text(&out)
    );
    assert_eq!(
        changed(&before, &snapshot(n2)),
        Vec::<String>::new(),
        "the failed install was not rolled back entirely"
    );

    let out = push(&fx, &tb, &second, &["--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        cluster::node_statuses(&report),
        vec![("kubemaster-2", "installed"), ("kubemaster-3", "unchanged")]
    );

    let new_b64 = b64(&new_ca);
    assert_ne!(new_b64, old_b64);
    for n in ["kubemaster-2", "kubemaster-3"] {
        let pki = tb.node(n).etc_kubernetes().join("pki");
        for f in ["ca.crt", "front-proxy-ca.crt", "etcd/ca.crt", "ca.key"] {
            assert_eq!(
                std::fs::read(pki.join(f)).unwrap(),
                std::fs::read(fx.pki().join(f)).unwrap(),
                "{n}: {f}"
            );
        }
    }
    for (conf, user, mode, uid) in [
        ("admin.conf", "kubernetes-admin", 0o600, 0),
        ("scheduler.conf", "system:kube-scheduler", 0o600, 0),
        ("kubelet.conf", "system:node:kubemaster-2", 0o640, 1000),
    ] {
        let path = k2.join(conf);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), kubeconfig(&new_b64, user), "{conf}");
        let md = std::fs::metadata(&path).unwrap();
        assert_eq!((md.mode() & 0o7777, md.uid(), md.gid()), (mode, uid, uid), "{conf}");
    }
    assert_eq!(std::fs::read(k2.join("other.conf")).unwrap(), other_before);
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), kubeconfig(&old_b64, "outside"));
    assert!(std::fs::symlink_metadata(k2.join("planted.conf")).unwrap().file_type().is_symlink());
    let msg = report["nodes"][0]["message"].as_str().unwrap();
    assert!(msg.contains("same-key re-issue") && msg.contains("admin.conf"), "{msg}");
    let history = std::fs::read_to_string(n2.state().join("history")).unwrap();
    assert!(history.contains("kubeconfig=/etc/kubernetes/admin.conf"), "{history}");
    let leftovers = std::fs::read_dir(&k2)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".hapki-stage"))
        .count();
    assert_eq!(leftovers, 0, "staging left behind");

    // A different CA (another key) still needs --replace.
    let other = fx.init_pki("other");
    let b_other = fx.bundle_of(&other, "other.age", Some(1003));
    let out = push(&fx, &tb, &b_other, &[]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(text(&out).contains("different shared files"), "{}", text(&out));
}
