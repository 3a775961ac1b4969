//! What the node itself refuses during `hapki push`, each time leaving the files it already had
//! exactly as they were: a bundle its own check rejects (a signer its pinned
//! /etc/hapki/allowed_signers does not trust), shared files that changed between hapki's plan
//! and the install (the compare-and-swap), and a lock another push holds. Each refusal is
//! followed by a push that succeeds once the cause is gone (the negative control).

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/fixture.rs"]
mod fixture;
#[path = "support/testbed.rs"]
mod testbed;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

use fixture::{text, Fixture, SHARED};
use serde_json::Value;
use testbed::{TbNode, Testbed};

/// `sha256sum` of the eight shared files on the node, run there (never empty: `tb.ok`).
fn shared_sums(tb: &Testbed, n: &TbNode) -> String {
    let sums = tb.ok(&n.name, &format!("cd /etc/kubernetes/pki && sha256sum {}", SHARED.join(" ")));
    assert_eq!(sums.lines().count(), SHARED.len(), "{sums}");
    sums
}

/// `sha256sum` of the same files in a local PKI directory, in the node's output format.
fn local_sums(pki: &Path) -> String {
    let out =
        std::process::Command::new("sha256sum").args(SHARED).current_dir(pki).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// Staging directories left under the node's /etc/kubernetes.
fn staging(tb: &Testbed, n: &TbNode) -> String {
    tb.ok(&n.name, "ls -A /etc/kubernetes | grep hapki-stage || true")
}

fn push(fx: &Fixture, tb: &Testbed, n: &TbNode, bundle: &Path) -> Output {
    let list = tb.addr(&n.name);
    let (kh, id) = (tb.known_hosts(), tb.identity());
    let args = ["--nodes", &list, "--known-hosts", kh.to_str().unwrap(), "--identity"];
    let mut args: Vec<&str> = args.to_vec();
    args.extend([id.to_str().unwrap(), "--replace", "--output", "json"]);
    fx.with_bundle("push", bundle, &args)
}

/// (status, message) of the node's entry in a push report.
fn result(out: &Output, n: &TbNode) -> (String, String) {
    let v: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(out)));
    let nodes = v["nodes"].as_array().unwrap_or_else(|| panic!("{v}"));
    assert_eq!(nodes.len(), 1, "{v}");
    assert_eq!(nodes[0]["node"], n.address.as_str(), "{v}");
    let s = |k: &str| nodes[0][k].as_str().unwrap_or_default().to_string();
    (s("status"), s("message"))
}

/// The old PKI on kubemaster-1, and a bundle of another one.
fn old_pki_and_a_new_bundle(fx: &Fixture, tb: &Testbed) -> std::path::PathBuf {
    cluster::push_to(fx, tb, &fx.bundle(), &["kubemaster-1"], &[]);
    let newer = fx.init_pki("newer");
    fx.bundle_of(&newer, "newer.age", None)
}

#[test]
fn a_bundle_the_nodes_own_check_rejects_leaves_the_old_files() {
    let Some(tb) = Testbed::up(1, 0) else { return };
    let fx = Fixture::new();
    let n = tb.node("kubemaster-1");
    let newer = old_pki_and_a_new_bundle(&fx, &tb);
    let before = shared_sums(&tb, n);
    assert_eq!(before, local_sums(&fx.pki()), "the old PKI is in place");
    // The node pins a release key the operator's signer is not: its own ssh-keygen -Y verify
    // refuses the bundle the operator side accepted.
    let other = fx.path("release");
    fixture::hapki().args(["keygen", "--out"]).arg(&other).assert().success();
    let key = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    let key: Vec<&str> = key.split_whitespace().take(2).collect();
    let pin = n.dir.join("etc-hapki/allowed_signers");
    std::fs::write(&pin, format!("release namespaces=\"hapki-bundle\" {}\n", key.join(" ")))
        .unwrap();
    std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = push(&fx, &tb, n, &newer);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let (status, message) = result(&out, n);
    assert_ne!(status, "installed");
    assert!(message.contains("/etc/hapki/allowed_signers"), "{message}");
    assert_eq!(shared_sums(&tb, n), before, "the old files changed");
    assert_eq!(staging(&tb, n), "", "staging left behind");
    // Control: without the pin the same push installs the new files.
    std::fs::remove_file(&pin).unwrap();
    let out = push(&fx, &tb, n, &newer);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(shared_sums(&tb, n), local_sums(&fx.path("newer")));
}

/// A `flock` on the node that, the first time the install script takes its lock (right before it
/// compares the shared files with the plan), runs
/// `action` — another writer getting in between hapki's plan and its install.
fn between_plan_and_install(n: &TbNode, action: &str) {
    let flag = n.dir.join("between-done");
    let script = format!(
        "#!/bin/sh\nif [ \"$*\" = \"-n 9\" ] && [ ! -e '{flag}' ]; then\n\
         : > '{flag}'\n{action}\nfi\nexec /usr/bin/flock \"$@\"\n",
        flag = flag.display()
    );
    let p = n.dir.join("bin/flock");
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, script).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn shared_files_changed_after_the_plan_are_not_overwritten() {
    let Some(tb) = Testbed::up(1, 0) else { return };
    let fx = Fixture::new();
    let n = tb.node("kubemaster-1");
    let newer = old_pki_and_a_new_bundle(&fx, &tb);
    // Someone rewrites sa.pub (an operator by hand, another tool) after hapki read the facts.
    between_plan_and_install(n, "echo '# edited' >> /etc/kubernetes/pki/sa.pub");
    let out = push(&fx, &tb, n, &newer);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    let (status, message) = result(&out, n);
    assert_ne!(status, "installed");
    assert!(message.contains("changed while hapki was planning"), "{message}");
    assert!(message.contains("push again"), "the fix: {message}");
    // The edit stands, nothing of the new bundle was written, nothing staged.
    let sa_pub = std::fs::read_to_string(n.etc_kubernetes().join("pki/sa.pub")).unwrap();
    assert!(sa_pub.ends_with("# edited\n"), "the edit was overwritten");
    let after = shared_sums(&tb, n);
    let want = local_sums(&fx.pki());
    let differ: Vec<&str> =
        after.lines().zip(want.lines()).filter(|(a, b)| a != b).map(|(a, _)| a).collect();
    assert_eq!(differ.len(), 1, "only the edited file differs from the old PKI: {differ:?}");
    assert!(differ[0].ends_with(" sa.pub"), "{differ:?}");
    assert_eq!(staging(&tb, n), "");
    // Control: pushed again (the wrapper has fired once), the plan holds and it installs.
    let out = push(&fx, &tb, n, &newer);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(shared_sums(&tb, n), local_sums(&fx.path("newer")));
}

#[test]
fn a_live_lock_is_waited_for_by_nobody_and_refused_by_name() {
    let Some(tb) = Testbed::up(1, 0) else { return };
    let fx = Fixture::new();
    let n = tb.node("kubemaster-1");
    let newer = old_pki_and_a_new_bundle(&fx, &tb);
    let before = shared_sums(&tb, n);
    // Another push's lock, held by a live process on the node.
    let pid = tb.ok(
        &n.name,
        "setsid flock /var/lib/hapki/push.lock sleep 60 </dev/null >/dev/null 2>&1 & echo $!",
    );
    let pid = pid.trim();
    assert!(pid.parse::<u32>().is_ok(), "{pid}");
    let held = |tb: &Testbed| {
        let o = tb.ssh(&n.name, "flock -n /var/lib/hapki/push.lock true");
        !o.status.success()
    };
    let t0 = std::time::Instant::now();
    while !held(&tb) {
        assert!(t0.elapsed().as_secs() < 10, "the lock was never taken");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let started = std::time::Instant::now();
    let out = push(&fx, &tb, n, &newer);
    assert!(started.elapsed().as_secs() < 30, "the push waited for the lock");
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    let (status, message) = result(&out, n);
    assert_ne!(status, "installed");
    assert!(message.contains("another hapki push holds the lock"), "{message}");
    assert_eq!(shared_sums(&tb, n), before, "the old files changed");
    assert_eq!(staging(&tb, n), "");
    // Control: the holder gone, the push installs.
    // The whole group: flock and the sleep that inherited the locked descriptor.
    tb.ok(&n.name, &format!("kill -- -{pid}"));
    while held(&tb) {
        assert!(t0.elapsed().as_secs() < 30, "the lock outlived its holder");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = push(&fx, &tb, n, &newer);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(shared_sums(&tb, n), local_sums(&fx.path("newer")));
}
