//! `hapki push` on the real testbed, for both transports: what lands on the nodes, what is
//! refused, and that every failure leaves a node exactly as it was.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/fixture.rs"]
mod fixture;
#[path = "support/testbed.rs"]
mod testbed;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::SystemTime;

use fixture::{hapki_process, text, Fixture, SHARED};
use testbed::{TbNode, Testbed};

const TRANSPORTS: [&str; 2] = ["builtin", "openssh"];

fn push(
    fx: &Fixture,
    tb: &Testbed,
    bundle: &Path,
    transport: &str,
    extra: &[&str],
) -> std::process::Output {
    let inv = tb.inventory();
    let mut args = vec!["--inventory", inv.to_str().unwrap(), "--transport", transport];
    args.extend_from_slice(extra);
    fx.with_bundle("push", bundle, &args)
}

fn pki_of(n: &TbNode) -> std::path::PathBuf {
    n.etc_kubernetes().join("pki")
}

/// Every file under the node's pki dir with its bytes, mode, owner and mtime.
fn snapshot(n: &TbNode) -> BTreeMap<String, (Vec<u8>, u32, u32, SystemTime)> {
    let mut out = BTreeMap::new();
    let root = pki_of(n);
    for e in walkdir::WalkDir::new(&root).into_iter().flatten() {
        let md = std::fs::symlink_metadata(e.path()).unwrap();
        let rel = e.path().strip_prefix(&root).unwrap().display().to_string();
        let bytes = if md.is_file() { std::fs::read(e.path()).unwrap() } else { Vec::new() };
        out.insert(rel, (bytes, md.mode() & 0o7777, md.uid(), md.modified().unwrap()));
    }
    out
}

fn reset(tb: &Testbed) {
    for n in &tb.nodes {
        let _ = std::fs::remove_dir_all(pki_of(n));
        for e in std::fs::read_dir(n.state()).into_iter().flatten().flatten() {
            let _ = std::fs::remove_dir_all(e.path()).or_else(|_| std::fs::remove_file(e.path()));
        }
    }
}

fn assert_installed(fx: &Fixture, n: &TbNode) {
    for f in SHARED {
        let got =
            std::fs::read(pki_of(n).join(f)).unwrap_or_else(|_| panic!("{} lacks {f}", n.name));
        assert_eq!(got, std::fs::read(fx.pki().join(f)).unwrap(), "{}: {f} differs", n.name);
        let md = std::fs::metadata(pki_of(n).join(f)).unwrap();
        let want = if f.ends_with(".crt") { 0o644 } else { 0o600 };
        assert_eq!(md.permissions().mode() & 0o7777, want, "{}: {f} mode", n.name);
        assert_eq!((md.uid(), md.gid()), (0, 0), "{}: {f} owner", n.name);
    }
    for d in ["", "etcd"] {
        let md = std::fs::metadata(pki_of(n).join(d)).unwrap();
        assert_eq!(md.permissions().mode() & 0o7777, 0o755, "{}: dir {d:?} mode", n.name);
    }
    // No staging left behind, and no lock.
    let leftovers: Vec<_> = std::fs::read_dir(n.etc_kubernetes())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".hapki-stage"))
        .collect();
    assert!(leftovers.is_empty(), "{}: staging left behind", n.name);
    assert!(!n.state().join("lock").exists(), "{}: lock left behind", n.name);
}

#[test]
fn installs_byte_identical_then_is_idempotent_and_never_touches_the_first_master_or_workers() {
    let Some(tb) = Testbed::up(3, 1) else { return };
    let fx = Fixture::new();
    let bundle = fx.bundle();
    for transport in TRANSPORTS {
        reset(&tb);
        let out = push(&fx, &tb, &bundle, transport, &["--output", "json"]);
        assert_eq!(out.status.code(), Some(0), "{transport}: {}", text(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["ok"], true);
        let statuses = cluster::node_statuses(&report);
        assert_eq!(statuses, vec![("kubemaster-2", "installed"), ("kubemaster-3", "installed")]);
        for name in ["kubemaster-2", "kubemaster-3"] {
            assert_installed(&fx, tb.node(name));
            let history = std::fs::read_to_string(tb.node(name).state().join("history")).unwrap();
            assert!(history.contains("action=install"), "{history}");
        }
        assert!(!pki_of(tb.node("kubemaster-1")).exists(), "the first master is the source");
        assert!(!pki_of(tb.node("kubenode-1")).exists(), "workers never get the shared files");

        let before = snapshot(tb.node("kubemaster-2"));
        let again = push(&fx, &tb, &bundle, transport, &["--output", "json"]);
        assert_eq!(again.status.code(), Some(0), "{}", text(&again));
        let report: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
        // Both targets, named (an empty list would pass an `all`).
        assert_eq!(
            cluster::node_statuses(&report),
            vec![("kubemaster-2", "unchanged"), ("kubemaster-3", "unchanged")]
        );
        assert_eq!(snapshot(tb.node("kubemaster-2")), before, "{transport}: a file was rewritten");
    }
}

#[test]
fn a_different_ca_is_refused_untouched_unless_replace_which_backs_up() {
    let Some(tb) = Testbed::up(3, 0) else { return };
    let fx = Fixture::new();
    let bundle = fx.bundle_of(&fx.pki(), "bundle.age", Some(1000));
    let other = fx.init_pki("other");
    let b_other = fx.bundle_of(&other, "other.age", Some(10));
    for transport in TRANSPORTS {
        reset(&tb);
        // kubemaster-3 belongs to another cluster.
        let n3 = tb.node("kubemaster-3");
        cluster::push_to(&fx, &tb, &b_other, &[&n3.name], &["--transport", transport]);
        let before = snapshot(n3);

        let out = push(&fx, &tb, &bundle, transport, &[]);
        assert_eq!(out.status.code(), Some(5), "{transport}: {}", text(&out));
        assert!(
            text(&out).contains("different shared files") && text(&out).contains("--replace"),
            "{}",
            text(&out)
        );
        assert_eq!(snapshot(n3), before, "{transport}: refused node was modified");
        assert_installed(&fx, tb.node("kubemaster-2"));

        let out = push(&fx, &tb, &bundle, transport, &["--replace", "--output", "json"]);
        assert_eq!(out.status.code(), Some(0), "{transport}: {}", text(&out));
        assert_installed(&fx, n3);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let backup = report["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node"] == "kubemaster-3")
            .and_then(|n| n["backup"].as_str())
            .expect("the backup directory is reported")
            .to_string();
        // The backup is on the node: /var/lib/hapki is the node's state dir.
        let rel = backup.strip_prefix("/var/lib/hapki/").expect("backup under the state dir");
        let on_host = n3.state().join(rel);
        assert_eq!(
            std::fs::read(on_host.join("ca.key")).unwrap(),
            std::fs::read(other.join("ca.key")).unwrap()
        );
        assert_eq!(
            std::fs::metadata(on_host.join("ca.key")).unwrap().permissions().mode() & 0o077,
            0
        );
    }
}

#[test]
fn a_changed_host_key_fails_that_node_only_and_sends_nothing() {
    let Some(tb) = Testbed::up(3, 0) else { return };
    let fx = Fixture::new();
    let bundle = fx.bundle();
    // Swap kubemaster-3's host key: a man in the middle, as far as the client can tell.
    let n3 = tb.node("kubemaster-3");
    let kh = std::fs::read_to_string(tb.known_hosts()).unwrap();
    let other_key =
        std::fs::read_to_string(tb.node("kubemaster-2").host_key_pub("ed25519")).unwrap();
    let other_key: Vec<&str> = other_key.split_whitespace().take(2).collect();
    let forged: String = kh
        .lines()
        .map(|l| {
            let host = l.split_whitespace().next().unwrap_or("");
            let is_n3 = host == n3.address || host == format!("[{}]:{}", n3.address, tb.port);
            if is_n3 && l.contains("ssh-ed25519") {
                format!("{host} {}", other_key.join(" "))
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(tb.known_hosts(), forged + "\n").unwrap();
    for transport in TRANSPORTS {
        reset(&tb);
        let out = push(&fx, &tb, &bundle, transport, &[]);
        assert_eq!(out.status.code(), Some(4), "{transport}: {}", text(&out));
        assert!(text(&out).to_lowercase().contains("host key"), "{}", text(&out));
        assert!(!pki_of(n3).exists(), "{transport}: something was written to the impostor");
        assert!(std::fs::read_dir(n3.state()).unwrap().next().is_none(), "state written");
        assert_installed(&fx, tb.node("kubemaster-2"));
    }
}

#[test]
fn a_node_down_or_cut_off_mid_push_is_failed_partial_free_and_completed_next_time() {
    let Some(tb) = Testbed::up(3, 0) else { return };
    let fx = Fixture::new();
    let bundle = fx.bundle();
    let n3 = tb.node("kubemaster-3");
    for transport in TRANSPORTS {
        reset(&tb);
        // Cut off mid-install: a node-side ssh-keygen that hangs, and the whole session killed
        // while the bundle sits staged and the lock is held.
        let bin = n3.dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let marker = n3.dir.join("staged.marker");
        std::fs::write(
            bin.join("ssh-keygen"),
            // `exec`: the sleep keeps the script's pid, so the kill below cannot miss it (a
            // sleep forked after the pids were listed held the lock for 30 s: a flake).
            format!("#!/bin/sh\ntouch {}\nexec sleep 30\n", marker.display()),
        )
        .unwrap();
        std::fs::set_permissions(bin.join("ssh-keygen"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        let _ = std::fs::remove_file(&marker);
        let child = {
            let inv = tb.inventory();
            let mut c = hapki_process();
            c.arg("push")
                .arg(&bundle)
                .arg("--trust")
                .arg(fx.allowed())
                .arg("--decrypt-key")
                .arg(fx.signer());
            c.args(["--inventory", inv.to_str().unwrap(), "--transport", transport]);
            c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
            c.spawn().unwrap()
        };
        let t0 = std::time::Instant::now();
        while !marker.exists() && t0.elapsed().as_secs() < 20 {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(marker.exists(), "{transport}: the push never reached the node-side verification");
        // Kill every process of the node's sessions (sshd children and the install script).
        let mine = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("for p in /proc/[0-9]*; do grep -qF '{}/etc-kubernetes /etc/kubernetes ' $p/mountinfo 2>/dev/null && echo ${{p#/proc/}}; done", n3.dir.display()))
            .output()
            .unwrap();
        let sshd = n3.sshd_pid().to_string();
        let pids = String::from_utf8_lossy(&mine.stdout).into_owned();
        let pids: Vec<&str> = pids.split_whitespace().filter(|p| *p != sshd).collect();
        // Frozen first, then killed: killed one by one, the install script could see its
        // ssh-keygen die first and report a failed verification, which is not this scenario.
        for sig in ["-STOP", "-KILL"] {
            let _ = std::process::Command::new("kill").arg(sig).args(&pids).status();
        }
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(5), "{transport}: {}", text(&out));
        assert_installed(&fx, tb.node("kubemaster-2"));
        for f in SHARED {
            assert!(
                !pki_of(n3).join(f).exists(),
                "{transport}: partial pki on the cut-off node ({f})"
            );
        }
        std::fs::remove_file(bin.join("ssh-keygen")).unwrap();
        // The next push cleans the staging and the dead lock, and completes.
        let out = push(&fx, &tb, &bundle, transport, &[]);
        assert_eq!(out.status.code(), Some(0), "{transport}: {}", text(&out));
        assert_installed(&fx, n3);
    }
    // A hung node (sshd stopped): a clear timeout for it, the others complete; once it is
    // back, the next push completes it.
    for transport in TRANSPORTS {
        reset(&tb);
        let pid = n3.sshd_pid();
        let _ = std::process::Command::new("kill").args(["-STOP", &pid.to_string()]).status();
        let out = push(&fx, &tb, &bundle, transport, &["--connect-timeout", "2s"]);
        let _ = std::process::Command::new("kill").args(["-CONT", &pid.to_string()]).status();
        assert_eq!(out.status.code(), Some(5), "{transport}: {}", text(&out));
        assert!(text(&out).contains("no answer within 2s"), "{}", text(&out));
        assert_installed(&fx, tb.node("kubemaster-2"));
        assert!(!pki_of(n3).exists(), "{transport}: the hung node got files");
        let out = push(&fx, &tb, &bundle, transport, &[]);
        assert_eq!(out.status.code(), Some(0), "{transport}: {}", text(&out));
        assert_installed(&fx, n3);
    }
    // A node that is down: the others complete, exit 5.
    reset(&tb);
    tb.kill_sshd("kubemaster-3");
    let out = push(&fx, &tb, &bundle, "builtin", &["--connect-timeout", "3s"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(text(&out).contains("kubemaster-3"), "{}", text(&out));
    assert_installed(&fx, tb.node("kubemaster-2"));
}

#[test]
fn a_full_disk_fails_clearly_and_keeps_the_old_files() {
    let Some(tb) = Testbed::up(2, 0) else { return };
    let fx = Fixture::new();
    let other = fx.init_pki("other");
    let b_other = fx.bundle_of(&other, "other.age", Some(1));
    let bundle = fx.bundle();
    let n2 = tb.node("kubemaster-2");
    // A small tmpfs as the node's /etc/kubernetes, holding the old PKI, then filled up. (Room
    // for one install's staging: the stored-block bundle, ~40 KB encrypted, is staged whole.)
    let m = tb.ssh(&n2.name, "mount -t tmpfs -o size=256k,mode=0755 tmpfs /etc/kubernetes");
    assert!(m.status.success(), "{}", text(&m));
    let out = push(&fx, &tb, &b_other, "builtin", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let fill = tb.ssh(&n2.name, "dd if=/dev/zero of=/etc/kubernetes/filler bs=1k count=256 2>/dev/null; df -k /etc/kubernetes | tail -1");
    eprintln!("{}", text(&fill));
    let sums = "cd /etc/kubernetes/pki && sha256sum ca.crt ca.key sa.key sa.pub front-proxy-ca.crt front-proxy-ca.key etcd/ca.crt etcd/ca.key";
    let before = tb.ok(&n2.name, sums);
    assert_eq!(before.lines().count(), 8, "{before}");
    for transport in TRANSPORTS {
        let out = push(&fx, &tb, &bundle, transport, &["--replace"]);
        assert_eq!(out.status.code(), Some(5), "{transport}: {}", text(&out));
        let msg = text(&out);
        assert!(
            msg.contains("kubemaster-2") && (msg.contains("disk full") || msg.contains("No space")),
            "{msg}"
        );
        let after = tb.ok(&n2.name, sums);
        assert_eq!(after, before, "{transport}: the old files changed");
        let stage = tb.ssh(&n2.name, "ls -A /etc/kubernetes | grep -c hapki-stage || true");
        assert_eq!(
            String::from_utf8_lossy(&stage.stdout).trim(),
            "0",
            "staging left on the full disk"
        );
    }
}

#[test]
fn a_planted_symlink_is_never_written_through() {
    let Some(tb) = Testbed::up(2, 0) else { return };
    let fx = Fixture::new();
    let bundle = fx.bundle();
    let n2 = tb.node("kubemaster-2");
    for transport in TRANSPORTS {
        reset(&tb);
        let victim = fx.path(&format!("victim-{transport}"));
        std::fs::create_dir_all(pki_of(n2)).unwrap();
        std::os::unix::fs::symlink(&victim, pki_of(n2).join("ca.key")).unwrap();
        let out = push(&fx, &tb, &bundle, transport, &[]);
        assert_eq!(out.status.code(), Some(5), "{transport}: {}", text(&out));
        assert!(text(&out).contains("symlink"), "{}", text(&out));
        assert!(!victim.exists(), "{transport}: written through the symlink");
        let out = push(&fx, &tb, &bundle, transport, &["--replace"]);
        assert_eq!(out.status.code(), Some(0), "{transport}: {}", text(&out));
        assert!(!victim.exists(), "{transport}: written through the symlink with --replace");
        assert!(std::fs::symlink_metadata(pki_of(n2).join("ca.key"))
            .unwrap()
            .file_type()
            .is_file());
        assert_installed(&fx, n2);
    }
}

#[test]
fn an_older_bundle_than_the_last_install_is_refused() {
    let Some(tb) = Testbed::up(2, 0) else { return };
    let fx = Fixture::new();
    let new = fx.bundle_of(&fx.pki(), "new.age", Some(200));
    let old = fx.bundle_of(&fx.pki(), "old.age", Some(100));
    for transport in TRANSPORTS {
        reset(&tb);
        assert_eq!(push(&fx, &tb, &new, transport, &[]).status.code(), Some(0));
        let out = push(&fx, &tb, &old, transport, &["--replace"]);
        assert_eq!(out.status.code(), Some(3), "{transport}: {}", text(&out));
        let t = text(&out);
        assert!(t.contains("downgrade refused") && t.contains("100") && t.contains("200"), "{t}");
    }
}

#[test]
fn become_with_a_normal_user_and_sudo_works() {
    let Some(tb) = Testbed::up(2, 0) else { return };
    let fx = Fixture::new();
    let bundle = fx.bundle();
    for transport in TRANSPORTS {
        reset(&tb);
        let out = push(&fx, &tb, &bundle, transport, &["--user", "hapki-test", "--become"]);
        assert_eq!(out.status.code(), Some(0), "{transport}: {}", text(&out));
        assert_installed(&fx, tb.node("kubemaster-2"));
    }
}

#[test]
fn dry_run_writes_nothing_and_workers_are_refused_as_targets() {
    let Some(tb) = Testbed::up(2, 1) else { return };
    let fx = Fixture::new();
    let bundle = fx.bundle();
    let out = push(&fx, &tb, &bundle, "builtin", &["--dry-run", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["nodes"][0]["status"], "planned");
    assert!(!pki_of(tb.node("kubemaster-2")).exists());
    assert!(std::fs::read_dir(tb.node("kubemaster-2").state()).unwrap().next().is_none());

    let out = push(&fx, &tb, &bundle, "builtin", &["--nodes", "kubenode-1"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("worker"), "{}", text(&out));
    assert!(!pki_of(tb.node("kubenode-1")).exists());
}

#[test]
fn a_leaf_from_another_ca_is_refused_with_the_fix() {
    let Some(tb) = Testbed::up(2, 0) else { return };
    let fx = Fixture::new();
    let bundle = fx.bundle();
    let other = fx.init_pki("other");
    // A leftover apiserver.crt signed by another CA, from a failed earlier attempt.
    let n2 = tb.node("kubemaster-2");
    std::fs::create_dir_all(pki_of(n2)).unwrap();
    let leaf = n2.dir.join("leaf");
    let ok = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl req -new -newkey rsa:2048 -nodes -keyout {l}.key -subj /CN=kube-apiserver -out {l}.csr 2>/dev/null && \
             openssl x509 -req -in {l}.csr -CA {o}/ca.crt -CAkey {o}/ca.key -CAcreateserial -days 365 -out {p}/apiserver.crt 2>/dev/null",
            l = leaf.display(), o = other.display(), p = pki_of(n2).display()
        ))
        .status()
        .unwrap();
    assert!(ok.success());
    let out = push(&fx, &tb, &bundle, "builtin", &[]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(
        text(&out).contains("apiserver.crt") && text(&out).contains("remove"),
        "{}",
        text(&out)
    );
    assert!(!pki_of(n2).join("ca.crt").exists());
}

#[test]
fn bundle_from_the_first_master_over_ssh_matches_its_files() {
    let Some(tb) = Testbed::up(2, 0) else { return };
    let fx = Fixture::new();
    let m1 = tb.node("kubemaster-1");
    std::fs::create_dir_all(pki_of(m1).join("etcd")).unwrap();
    for f in SHARED {
        std::fs::copy(fx.pki().join(f), pki_of(m1).join(f)).unwrap();
    }
    for (how, from) in [("--inventory", tb.inventory()), ("--from", tb.addr(&m1.name).into())] {
        let out_file = fx.path(&format!("from{how}.age"));
        let recipient = std::fs::read_to_string(fx.signer().with_extension("pub")).unwrap();
        let mut c = fixture::hapki();
        c.args(["bundle", how]).arg(&from);
        c.arg("--sign-key").arg(fx.signer()).args(["--recipient", recipient.trim()]);
        c.arg("--known-hosts").arg(tb.known_hosts()).arg("--identity").arg(tb.identity());
        c.arg("--out").arg(&out_file).args(["--output", "json"]);
        let out = c.output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{how}: {}", text(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let files = v["files"].as_array().unwrap();
        assert_eq!(files.len(), SHARED.len(), "{v}");
        for f in files {
            let name = f["name"].as_str().unwrap();
            let want =
                std::process::Command::new("sha256sum").arg(fx.pki().join(name)).output().unwrap();
            let want = String::from_utf8_lossy(&want.stdout)
                .split_whitespace()
                .next()
                .unwrap()
                .to_string();
            assert_eq!(f["sha256"].as_str().unwrap(), want, "{name}");
        }
        // It is an ordinary bundle: it verifies and pushes.
        let out = fx.with_bundle("verify", &out_file, &[]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
    // A node without the files: the bundle is refused, naming what is missing.
    let out = fixture::hapki()
        .args(["bundle", "--from", &tb.addr("kubemaster-2")])
        .arg("--sign-key")
        .arg(fx.signer())
        .arg("--insecure-plaintext")
        .arg("--known-hosts")
        .arg(tb.known_hosts())
        .arg("--identity")
        .arg(tb.identity())
        .arg("--out")
        .arg(fx.path("never.tar.gz"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(!fx.path("never.tar.gz").exists());
}
