//! `hapki push --list-backups` and `--prune-backups` on the real testbed: what they list is what
//! `ls` on the node shows, a prune keeps the newest, `--dry-run` removes nothing, and a planted
//! symlink is never followed.

#[path = "support/fixture.rs"]
mod fixture;
#[path = "support/testbed.rs"]
mod testbed;

use std::path::Path;

use fixture::{hapki_process, text, Fixture};
use testbed::Testbed;

const NODE: &str = "kubemaster-2";
const BK: &str = "/var/lib/hapki/backup";

fn backups(inv: &Path, transport: &str, extra: &[&str]) -> std::process::Output {
    let mut c = hapki_process();
    c.args(["push", "--inventory", inv.to_str().unwrap(), "--transport", transport]);
    c.args(extra);
    c.output().expect("run hapki")
}

/// Pushes `bundle` with --replace and returns the backup directory the report names.
fn replace(fx: &Fixture, inv: &Path, bundle: &Path) -> String {
    let out = fx.with_bundle(
        "push",
        bundle,
        &["--inventory", inv.to_str().unwrap(), "--replace", "--output", "json"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    r["nodes"].as_array().unwrap().iter().find(|n| n["node"] == NODE).unwrap()["backup"]
        .as_str()
        .expect("a backup")
        .to_string()
}

/// The backup directory names on the node, from `ls` (not from hapki).
fn ls(tb: &Testbed) -> Vec<String> {
    let mut v: Vec<String> = tb
        .ok(NODE, &format!("find {BK} -mindepth 1 -maxdepth 1 -type d -printf '%f\\n'"))
        .lines()
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

fn base(dir: &str) -> String {
    dir.rsplit('/').next().unwrap().to_string()
}

#[test]
fn list_then_prune_keeps_the_newest_and_never_follows_a_link() {
    let Some(tb) = Testbed::up(2, 0) else { return };
    let fx = Fixture::new();
    let inv = tb.inventory();
    let other = fx.init_pki("other");
    // Two --replace pushes, each over a different CA: two backups.
    let o1 = fx.bundle_of(&other, "o1.age", Some(10));
    let out = fx.with_bundle("push", &o1, &["--inventory", inv.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let first = replace(&fx, &inv, &fx.bundle_of(&fx.pki(), "a.age", Some(20)));
    let second = replace(&fx, &inv, &fx.bundle_of(&other, "o2.age", Some(30)));
    let mut want = vec![base(&first), base(&second)];
    want.sort();
    assert_eq!(ls(&tb), want);

    // A planted link at the top of backup/ and one inside the older backup, both to a victim
    // directory of the node (its state dir, beside backup/: gone with the testbed).
    tb.ok(
        NODE,
        "mkdir -p /var/lib/hapki/victim && echo keep > /var/lib/hapki/victim/f && \
                 ln -s /var/lib/hapki/victim /var/lib/hapki/backup/zz-link",
    );
    tb.ok(NODE, &format!("ln -s /var/lib/hapki/victim {first}/evil"));

    for transport in ["builtin", "openssh"] {
        let out = backups(&inv, transport, &["--list-backups", "--output", "json"]);
        assert_eq!(out.status.code(), Some(0), "{transport}: {}", text(&out));
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let row = rows.as_array().unwrap().iter().find(|r| r["node"] == NODE).unwrap();
        let listed: Vec<String> = row["backups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| base(b["dir"].as_str().unwrap()))
            .collect();
        assert_eq!(listed, [base(&second), base(&first)], "{transport}: newest first, no link");
        let files = &row["backups"][1]["files"];
        assert!(files.as_array().unwrap().iter().any(|f| f == "ca.key"), "{files}");
        assert!(!files.to_string().contains("victim/f"), "{transport}: followed a link: {files}");
    }
    let table = backups(&inv, "builtin", &["--list-backups"]);
    assert!(text(&table).contains(&second), "{}", text(&table));

    // --dry-run removes nothing.
    let out = backups(&inv, "builtin", &["--prune-backups", "--keep", "1", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("would remove"), "{}", text(&out));
    assert_eq!(ls(&tb), want, "--dry-run removed a backup");

    // --keep 0 is refused before any node is touched.
    let out = backups(&inv, "builtin", &["--prune-backups", "--keep", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(ls(&tb), want);

    let out = backups(&inv, "builtin", &["--prune-backups", "--keep", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(ls(&tb), [base(&second)], "only the newer backup stays");
    assert_eq!(tb.ok(NODE, "cat /var/lib/hapki/victim/f"), "keep\n", "a link's target was removed");
    tb.ok(NODE, "test -L /var/lib/hapki/backup/zz-link");
    let history = tb.ok(NODE, "grep ' prune ' /var/lib/hapki/history");
    assert!(history.contains(&format!("removed={}", base(&first))), "{history}");

    // Under a held push lock the node refuses (exit 75 on the node: node failed).
    let held = tb.ssh(
        NODE,
        "(flock /var/lib/hapki/push.lock sleep 5 < /dev/null > /dev/null 2>&1 &); sleep 1",
    );
    assert!(held.status.success());
    let out = backups(&inv, "builtin", &["--prune-backups", "--keep", "1"]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("lock"), "{}", text(&out));
}
