//! Item 1: a local user who owns (or can write) an artifact destination's directory races
//! root's staging there, swapping the staging directory for one holding a link to a root file.
//! hapki must refuse that node before staging, naming the directory, and never touch the file.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Command, Stdio};

use crate::fixture::{text, Fixture};
use crate::hand_run::{artifacts_bundle, node_result, on_node, push, sh, TB_ROOT};
use crate::testbed::Testbed;

const INTRUDER: &str = "hapki-intruder";

fn testbed_script() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/testbed")
}

#[test]
fn a_user_owned_dest_directory_is_refused_and_the_race_reaches_no_root_file() {
    let Some(tb) = Testbed::up(1, 0) else { return };
    let fx = Fixture::new();
    let n = tb.node("kubemaster-1");
    let root = on_node(n, TB_ROOT);
    std::fs::create_dir_all(root.join("attack")).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
    sh(&format!("chown {INTRUDER}: '{0}/attack' && chmod 0755 '{0}/attack'", root.display()));
    // A root file the attacker wants root to overwrite, chown and chmod.
    let victim = root.join("victim");
    std::fs::write(&victim, b"root secret\n").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();

    let bundle = artifacts_bundle(
        &fx,
        "tool.bundle",
        None,
        &[("tool", &format!("{TB_ROOT}/attack/tool"), b"the signed tool\n", "mode = \"0755\"")],
    );
    // The attacker, logged in on the node as an unprivileged user: a bounded loop that renames
    // every staging directory away and plants its own, holding f -> the root file.
    let a = format!("{TB_ROOT}/attack");
    let attack = format!(
        "a={a}; : > $a/started; i=0; \
         while [ $i -lt 3000000 ] && [ ! -e $a/stop ]; do \
           for g in $a/.hapki-stage*; do [ -d \"$g\" ] || continue; \
             mv \"$g\" $a/taken.$i 2>/dev/null && mkdir \"$g\" && ln -s {TB_ROOT}/victim \"$g/f\" && echo swapped >> $a/log; \
           done; i=$((i+1)); done"
    );
    let mut child = Command::new(testbed_script())
        .args(["ssh", "--dir"])
        .arg(&tb.dir)
        .args(["--user", INTRUDER, "kubemaster-1", &attack])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut waited = 0;
    while !root.join("attack/started").exists() && waited < 400 {
        std::thread::sleep(std::time::Duration::from_millis(50));
        waited += 1;
    }
    assert!(root.join("attack/started").exists(), "the attacker never started");

    let out = push(&fx, &tb, &bundle, &[]);
    std::fs::write(root.join("attack/stop"), b"").unwrap();
    let _ = child.wait();
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    let (status, msg) = node_result(&out, "kubemaster-1");
    assert_eq!(status, "failed");
    assert!(msg.contains(&a) && msg.contains("owned by uid"), "{msg}");
    // The root file: same bytes, mode and owner (literals, not what hapki says).
    let md = std::fs::symlink_metadata(&victim).unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"root secret\n");
    assert_eq!((md.mode() & 0o7777, md.uid(), md.gid()), (0o600, 0, 0));
    let tool = root.join("attack/tool");
    assert!(!tool.exists(), "the artifact was installed into the user's directory");

    // A root-owned but world-writable directory is refused as well.
    sh(&format!("chown root: '{0}/attack' && chmod 0777 '{0}/attack'", root.display()));
    let out = push(&fx, &tb, &bundle, &[]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    let (_, msg) = node_result(&out, "kubemaster-1");
    assert!(msg.contains(&a) && msg.contains("writable by group or others"), "{msg}");

    // Negative control: root's own 0755 directory installs; missing parents come out 0755.
    sh(&format!("chmod 0755 '{0}/attack'", root.display()));
    let deep = format!("{TB_ROOT}/new/sub/tool2");
    let ok = artifacts_bundle(
        &fx,
        "ok.bundle",
        None,
        &[
            ("tool", &format!("{TB_ROOT}/attack/tool"), b"the signed tool\n", "mode = \"0755\""),
            ("tool2", &deep, b"deep\n", ""),
        ],
    );
    let out = push(&fx, &tb, &ok, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(std::fs::read(&tool).unwrap(), b"the signed tool\n");
    assert_eq!(std::fs::metadata(&tool).unwrap().mode() & 0o7777, 0o755);
    for d in ["new", "new/sub"] {
        let md = std::fs::metadata(root.join(d)).unwrap();
        assert_eq!((md.mode() & 0o7777, md.uid()), (0o755, 0), "{d}");
    }
    assert_eq!(std::fs::read(&victim).unwrap(), b"root secret\n");
}
