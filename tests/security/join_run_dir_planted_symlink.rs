//! Attack: a local user of the operator's machine prepares the join's run directory (world
//! writable, as /tmp-style directories are) with `kubemaster-2.log` a symlink to a root file.
//! hapki must refuse that directory before touching any node, and the root file stays as it was.
//! A run directory of another owner and one that is itself a symlink are refused the same way.

use std::os::unix::fs::{chown, symlink, PermissionsExt};

use crate::fixture::text;
use crate::join_common::JoinCluster;

const VICTIM: &[u8] = b"root's file\n";

#[test]
fn a_world_writable_run_dir_with_a_planted_log_link_is_refused_and_nothing_joins() {
    let Some(c) = JoinCluster::up() else { return };
    let victim = c.fx.path("victim");
    std::fs::write(&victim, VICTIM).unwrap();
    std::fs::set_permissions(&victim, PermissionsExt::from_mode(0o600)).unwrap();

    // The user's directory: 0777, and the log of the node hapki will join points at the victim.
    let run = c.fx.path("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::set_permissions(&run, PermissionsExt::from_mode(0o777)).unwrap();
    symlink(&victim, run.join("kubemaster-2.log")).unwrap();
    chown(&run, Some(65534), Some(65534)).unwrap();

    let out = c.join().arg("--run-dir").arg(&run).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains(&run.display().to_string()) && t.contains("--run-dir"), "{t}");
    assert_eq!(std::fs::read(&victim).unwrap(), VICTIM, "root's file was written through the link");
    assert!(!c.joined_anything(), "a join ran although the run directory was refused");

    // Owned by root but writable by all: refused too.
    chown(&run, Some(0), Some(0)).unwrap();
    let out = c.join().arg("--run-dir").arg(&run).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("writable by others"), "{}", text(&out));
    assert_eq!(std::fs::read(&victim).unwrap(), VICTIM);

    // The run directory itself a link to a directory of ours: refused.
    let real = c.fx.path("real");
    std::fs::create_dir(&real).unwrap();
    std::fs::set_permissions(&real, PermissionsExt::from_mode(0o700)).unwrap();
    let link = c.fx.path("link");
    symlink(&real, &link).unwrap();
    let out = c.join().arg("--run-dir").arg(&link).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("symbolic link"), "{}", text(&out));
    assert!(!c.joined_anything());

    // A fresh run directory is created 0700 (an independent stat), and the join then works.
    let fresh = c.fx.path("fresh/run");
    let out = c.join().arg("--run-dir").arg(&fresh).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let mode =
        std::process::Command::new("stat").args(["-c", "%a %U"]).arg(&fresh).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&mode.stdout).trim(), "700 root");
}
