//! `hapki push --parallel N` works on at most N nodes at a time: two control planes install at
//! the same time by default, and one after the other with `--parallel 1`. Each node's install
//! records when it ran: a `flock` stand-in on the node holds the install for a second where the
//! install script takes the node's lock, then runs the real one.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/fixture.rs"]
mod fixture;
#[path = "support/testbed.rs"]
mod testbed;

use std::os::unix::fs::PermissionsExt;

use fixture::{text, Fixture};
use serde_json::Value;
use testbed::{TbNode, Testbed};

fn record_installs(n: &TbNode) {
    let times = n.dir.join("install-times");
    let script = format!(
        "#!/bin/sh\nif [ \"$*\" = \"-n 9\" ]; then\n\
         date +%s%N >> '{t}'; sleep 1; date +%s%N >> '{t}'\nfi\nexec /usr/bin/flock \"$@\"\n",
        t = times.display()
    );
    let p = n.dir.join("bin/flock");
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, script).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Each target's (start, end) of its install, in ns, then forgets them.
fn intervals(tb: &Testbed) -> Vec<(u128, u128)> {
    ["kubemaster-2", "kubemaster-3"]
        .iter()
        .map(|name| {
            let f = tb.node(name).dir.join("install-times");
            let t = std::fs::read_to_string(&f).unwrap_or_default();
            std::fs::remove_file(&f).unwrap();
            let v: Vec<u128> = t.split_whitespace().map(|x| x.parse().unwrap()).collect();
            assert_eq!(v.len(), 2, "{name}: one install: {t}");
            (v[0], v[1])
        })
        .collect()
}

fn overlap(a: (u128, u128), b: (u128, u128)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

#[test]
fn parallel_bounds_how_many_nodes_install_at_once() {
    let Some(tb) = Testbed::up(3, 0) else { return };
    let fx = Fixture::new();
    let bundle = fx.bundle();
    for n in &tb.nodes {
        record_installs(n);
    }
    let inv = tb.inventory();
    let inv = inv.to_str().unwrap();
    for (parallel, at_once) in [("1", false), ("2", true)] {
        for n in &tb.nodes {
            let _ = std::fs::remove_dir_all(n.etc_kubernetes().join("pki"));
        }
        let args = ["--inventory", inv, "--parallel", parallel, "--output", "json"];
        let out = fx.with_bundle("push", &bundle, &args);
        assert_eq!(out.status.code(), Some(0), "--parallel {parallel}: {}", text(&out));
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            cluster::node_statuses(&report),
            vec![("kubemaster-2", "installed"), ("kubemaster-3", "installed")]
        );
        let t = intervals(&tb);
        assert_eq!(overlap(t[0], t[1]), at_once, "--parallel {parallel}: {t:?}");
    }
}
