//! `hapki rotate` keeps the new and the old CA keys in the first master's
//! /etc/kubernetes/hapki/rotate. A local user who got to create that place first — its parent
//! left world-writable by someone, or handed to them — plants a directory and a `state.json` of
//! their own (a forged rotation whose "new" keys they hold). hapki must refuse to read or write
//! there, naming the path, and write no key into it; once root owns it tightly again (negative
//! control) prepare works and leaves it 0700 with 0600 files.

use std::process::Command;

use crate::cluster;
use crate::fixture::{hapki, text, Fixture};
use crate::testbed::Testbed;

const INTRUDER: &str = "hapki-intruder";

fn testbed_script() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/testbed")
}

/// `cmd` on `node` as the unprivileged intruder.
fn as_intruder(tb: &Testbed, node: &str, cmd: &str) {
    let out = Command::new(testbed_script())
        .args(["ssh", "--dir"])
        .arg(&tb.dir)
        .args(["--user", INTRUDER, node, cmd])
        .output()
        .unwrap();
    assert!(out.status.success(), "as {INTRUDER}: {cmd}: {}", text(&out));
}

fn rotate(tb: &Testbed, extra: &[&str]) -> (Option<i32>, String) {
    let out =
        hapki().args(["rotate", "--inventory"]).arg(tb.inventory()).args(extra).output().unwrap();
    (out.status.code(), text(&out))
}

fn stat(path: &std::path::Path) -> String {
    let out = Command::new("stat").args(["-c", "%U %a"]).arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_state_dir_planted_by_a_local_user_is_refused_and_gets_no_key() {
    let Some(tb) = Testbed::up(1, 0) else { return };
    let fx = Fixture::new();
    cluster::push_to(&fx, &tb, &fx.bundle(), &["kubemaster-1"], &[]);
    let etc = tb.node("kubemaster-1").etc_kubernetes();
    let hd = etc.join("hapki");

    // 1. /etc/kubernetes/hapki left world-writable: the user plants rotate/ and a forged state.
    std::fs::create_dir_all(&hd).unwrap();
    std::fs::set_permissions(&hd, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    as_intruder(
        &tb,
        "kubemaster-1",
        "mkdir -m 0700 /etc/kubernetes/hapki/rotate && printf '{\"id\":\"forged\"}' > /etc/kubernetes/hapki/rotate/state.json",
    );
    for extra in [&["--status"][..], &[][..]] {
        let (code, out) = rotate(&tb, extra);
        assert_eq!(code, Some(5), "{extra:?}: {out}");
        assert!(out.contains("/etc/kubernetes/hapki has mode 777"), "{extra:?}: {out}");
    }
    assert!(!hd.join("rotate/new").exists(), "prepare wrote into the planted directory");
    let planted = std::fs::read_to_string(hd.join("rotate/state.json")).unwrap();
    assert_eq!(planted, "{\"id\":\"forged\"}", "the planted state was overwritten");

    // 2. The place handed to the user (theirs, 0755): refused as well.
    std::fs::remove_dir_all(&hd).unwrap();
    std::fs::create_dir(&hd).unwrap();
    Command::new("chown").arg(format!("{INTRUDER}:")).arg(&hd).status().unwrap();
    as_intruder(&tb, "kubemaster-1", "chmod 0755 /etc/kubernetes/hapki");
    let (code, out) = rotate(&tb, &[]);
    assert_eq!(code, Some(5), "{out}");
    assert!(out.contains("/etc/kubernetes/hapki is owned by uid"), "{out}");
    assert!(!hd.join("rotate").exists(), "prepare wrote into the user's directory");

    // 3. A root-owned tight directory holding a user's state.json (planted while it was
    //    loose, then the directory fixed): the file is refused.
    std::fs::remove_dir_all(&hd).unwrap();
    std::fs::create_dir_all(hd.join("rotate")).unwrap();
    std::fs::set_permissions(&hd, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    std::fs::set_permissions(
        hd.join("rotate"),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    as_intruder(&tb, "kubemaster-1", "printf '{}' > /etc/kubernetes/hapki/rotate/state.json");
    std::fs::set_permissions(&hd, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    std::fs::set_permissions(
        hd.join("rotate"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let (code, out) = rotate(&tb, &["--status"]);
    assert_eq!(code, Some(5), "{out}");
    assert!(out.contains("state.json is not a root-only file"), "{out}");

    // Negative control: root's own, tight: prepare works and keeps it tight.
    std::fs::remove_dir_all(&hd).unwrap();
    let (code, out) = rotate(&tb, &["--which", "ca"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(stat(&hd.join("rotate")), "root 700");
    assert_eq!(stat(&hd.join("rotate/new/ca.key")), "root 600");
    assert_eq!(stat(&hd.join("rotate/state.json")), "root 600");
}
