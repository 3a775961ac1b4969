//! Item 6: many pushes at one node at once. The node's lock (flock on a file in its state dir)
//! lets exactly one install run at a time — a stand-in after action records every entry and
//! exit, and any overlap — and a holder that dies never blocks the next push.

use std::os::unix::fs::PermissionsExt;

use crate::fixture::Fixture;
use crate::hand_run::{artifacts_bundle, on_node, run_node_script, stderr, Instr, Parts, TB_ROOT};
use crate::testbed::{TbNode, Testbed};

/// `systemctl` on the node: enters a critical section (mkdir is atomic), logs, holds it a
/// moment, leaves; an entry that finds it taken logs "overlap". With `HOLD`, it first records
/// the install script's pid and waits (bounded) for a release file.
fn standin(n: &TbNode) {
    let log = format!("{TB_ROOT}/lock.log");
    let script = format!(
        "#!/bin/sh\nd={TB_ROOT}\n\
         if [ -e $d/hold ]; then echo $PPID > $d/holder; i=0; while [ ! -e $d/release ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; fi\n\
         mkdir $d/inside 2>/dev/null || echo overlap >> {log}\n\
         echo enter >> {log}\nsleep 0.1\nrmdir $d/inside\necho leave >> {log}\n"
    );
    let p = n.dir.join("bin/systemctl");
    std::fs::write(&p, script).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    // A barrier (bounded) in a `flock` stand-in that then runs the real one: every install of
    // a round reaches the lock at the same moment.
    let barrier = format!(
        "#!/bin/sh
b={TB_ROOT}/barrier
         if [ \"$*\" = \"-n 9\" ] && [ -d $b ]; then
           : > $b/$$; i=0
           while [ $(ls $b | wc -l) -lt {RACERS} ] && [ $i -lt 400 ]; do sleep 0.01; i=$((i+1)); done
         fi
exec /usr/bin/flock \"$@\"
"
    );
    let p = n.dir.join("bin/flock");
    std::fs::write(&p, barrier).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    // A lock taker preempted right after taking a mkdir-style lock (before it can record
    // itself as the owner), as a loaded node's scheduler may do: the window a lock must not
    // depend on. (hapki's flock lock never calls mkdir on a lock path; this only widens the
    // race for a lock that does.)
    let preempt = "#!/bin/sh
/bin/mkdir \"$@\" || exit $?
                   case \"$*\" in */var/lib/hapki/lock) sleep 0.2 ;; esac
exit 0
";
    let p = n.dir.join("bin/mkdir");
    std::fs::write(&p, preempt).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Installs racing for the lock in each round.
const RACERS: usize = 10;

#[test]
fn concurrent_installs_at_one_node_never_overlap_and_a_dead_holder_does_not_block() {
    let Some(tb) = Testbed::up(1, 0) else { return };
    let fx = Fixture::new();
    let n = tb.node("kubemaster-1");
    standin(n);
    let dest = format!("{TB_ROOT}/unit.service");
    let bytes = b"[Unit]\n";
    let bundle = artifacts_bundle(
        &fx,
        "unit.bundle",
        Some(7),
        &[("u", &dest, bytes, "after = \"daemon-reload\"")],
    );
    let p = Parts::extract(&fx, &bundle);
    let instr = || {
        let [name, dest, mode, owner, after] = p.signed(0);
        Instr { name, dest, mode, owner, after, bytes: bytes.to_vec() }
    };
    let log = on_node(n, &format!("{TB_ROOT}/lock.log"));
    let mut installed = 0;
    let mut other = Vec::new();
    let barrier = on_node(n, &format!("{TB_ROOT}/barrier"));
    for _round in 0..4 {
        let _ = std::fs::remove_dir_all(&barrier);
        std::fs::create_dir_all(&barrier).unwrap();
        let outs: Vec<_> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..RACERS)
                .map(|_| {
                    s.spawn(|| run_node_script(&tb, "kubemaster-1", &p, 7, "-", &[], &[instr()]))
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for o in &outs {
            match o.code {
                Some(0) => installed += 1,
                Some(75) if stderr(o).contains("holds the lock") => {}
                c => other.push(format!("exit {c:?}: {}", stderr(o))),
            }
        }
    }
    std::fs::remove_dir_all(&barrier).unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("overlap"), "two installs at once:\n{text}");
    assert!(other.is_empty(), "neither installed nor refused for the lock: {other:?}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2 * installed, "{text}");
    for pair in lines.chunks(2) {
        assert_eq!(pair, ["enter", "leave"], "{text}");
    }
    assert!(installed >= 4, "at least one install per round: {installed}");

    // A holder killed mid-install (SIGKILL: no trap runs) leaves no lock behind.
    std::fs::write(on_node(n, &format!("{TB_ROOT}/hold")), b"").unwrap();
    let holder_file = on_node(n, &format!("{TB_ROOT}/holder"));
    std::thread::scope(|s| {
        let h = s.spawn(|| run_node_script(&tb, "kubemaster-1", &p, 7, "-", &[], &[instr()]));
        let mut waited = 0;
        while !holder_file.exists() && waited < 400 {
            std::thread::sleep(std::time::Duration::from_millis(50));
            waited += 1;
        }
        let pid: i32 = std::fs::read_to_string(&holder_file).unwrap().trim().parse().unwrap();
        // SAFETY: the install script's shell on the testbed node, which the stand-in named.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        std::fs::remove_file(on_node(n, &format!("{TB_ROOT}/hold"))).unwrap();
        std::fs::write(on_node(n, &format!("{TB_ROOT}/release")), b"").unwrap();
        let _ = h.join();
    });
    let out = run_node_script(&tb, "kubemaster-1", &p, 7, "-", &[], &[instr()]);
    assert_eq!(out.code, Some(0), "a dead holder blocked the next push: {}", stderr(&out));
}
