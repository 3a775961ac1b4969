//! `--transport auto`, the default: the system `ssh` when one is on PATH, the built-in client
//! otherwise, and the same host-key verdict from both. The binary runs with a PATH whose only
//! `ssh` is a spy that logs each call and runs the real client, or with a PATH holding no `ssh`
//! at all.

#[path = "support/fixture.rs"]
mod fixture;
#[path = "support/testbed.rs"]
mod testbed;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fixture::{hapki_process, text, Fixture};
use testbed::{TbNode, Testbed};

/// The real `ssh` client, found on the test's own PATH.
fn real_ssh() -> PathBuf {
    let path = std::env::var_os("PATH").expect("PATH");
    std::env::split_paths(&path)
        .map(|d| d.join("ssh"))
        .find(|p| p.is_file())
        .expect("an ssh client on PATH (the testbed needs one too)")
}

/// Directories for PATH: `spy` holds an `ssh` that appends its arguments to `log` and execs
/// the real one; `none` holds nothing.
struct Paths {
    spy: PathBuf,
    none: PathBuf,
    log: PathBuf,
}

impl Paths {
    fn new(fx: &Fixture) -> Paths {
        let (spy, none, log) = (fx.path("spy"), fx.path("none"), fx.path("ssh-calls.log"));
        std::fs::create_dir_all(&spy).unwrap();
        std::fs::create_dir_all(&none).unwrap();
        let script = format!(
            "#!/bin/sh\necho \"$*\" >> '{}'\nexec '{}' \"$@\"\n",
            log.display(),
            real_ssh().display()
        );
        std::fs::write(spy.join("ssh"), script).unwrap();
        std::fs::set_permissions(spy.join("ssh"), std::fs::Permissions::from_mode(0o755)).unwrap();
        Paths { spy, none, log }
    }

    /// How many times the spy `ssh` ran so far.
    fn ssh_calls(&self) -> usize {
        std::fs::read_to_string(&self.log).map(|t| t.lines().count()).unwrap_or(0)
    }
}

/// `hapki push BUNDLE --nodes NODE …` with `PATH` set to `path` and `known_hosts`.
fn push(fx: &Fixture, tb: &Testbed, n: &TbNode, path: &Path, kh: &Path, extra: &[&str]) -> Output {
    let mut c = hapki_process();
    c.env("PATH", path).arg("push").arg(fx.bundle());
    c.arg("--trust").arg(fx.allowed()).arg("--decrypt-key").arg(fx.signer());
    c.args(["--nodes", &tb.addr(&n.name), "--user", "root", "--identity"]).arg(tb.identity());
    c.arg("--known-hosts").arg(kh).args(extra);
    c.output().expect("run hapki")
}

fn pki_files(tb: &Testbed, n: &TbNode) -> String {
    tb.ok(&n.name, "cd /etc/kubernetes && find . | sort")
}

#[test]
fn auto_runs_the_system_ssh_when_on_path_and_the_builtin_client_otherwise() {
    let Some(tb) = Testbed::up(2, 0) else { return };
    let fx = Fixture::new();
    let paths = Paths::new(&fx);
    let (n1, n2) = (tb.control_plane(1), tb.control_plane(2));

    // An ssh on PATH: the default push runs it (and succeeds).
    let out = push(&fx, &tb, n1, &paths.spy, &tb.known_hosts(), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let calls = paths.ssh_calls();
    assert!(calls > 0, "the default push with ssh on PATH did not run ssh");
    assert!(pki_files(&tb, n1).contains("./pki/ca.key"), "nothing installed on {}", n1.name);
    // A PKI push to a control plane: one `ssh` for the node, a plain login running the push
    // (no control master, no `ssh -G` for it: this ssh's option probes ask about 127.0.0.1).
    let log = std::fs::read_to_string(&paths.log).unwrap();
    let node = n1.address.as_str();
    let for_node: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ControlPath=") || l.contains(" -G "))
        .filter(|l| l.split_whitespace().any(|w| w == node))
        .collect();
    assert_eq!(for_node.len(), 1, "{for_node:#?}");
    assert!(for_node[0].contains("ControlPath=none"), "{}", for_node[0]);
    assert!(!for_node[0].contains("ControlMaster=yes"), "{}", for_node[0]);
    // Control: `--transport builtin` with the same PATH never runs it.
    let out = push(&fx, &tb, n1, &paths.spy, &tb.known_hosts(), &["--transport", "builtin"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(paths.ssh_calls(), calls, "--transport builtin ran the ssh client");

    // No ssh on PATH: the default push connects with the built-in client and installs.
    assert!(!paths.none.join("ssh").exists());
    let out = push(&fx, &tb, n2, &paths.none, &tb.known_hosts(), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(pki_files(&tb, n2).contains("./pki/ca.key"), "nothing installed on {}", n2.name);
    // Control: forcing the system ssh where there is none fails, naming what is missing.
    let out = push(&fx, &tb, n2, &paths.none, &tb.known_hosts(), &["--transport", "openssh"]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("no `ssh` client on PATH"), "{}", text(&out));
    assert_eq!(paths.ssh_calls(), calls);
}

/// known_hosts as the testbed wrote it, with `n`'s ed25519 key replaced by another one (a man in
/// the middle, as both clients see him).
fn mitm_known_hosts(fx: &Fixture, tb: &Testbed, n: &TbNode) -> PathBuf {
    let other = fx.path("other_host_key");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .status()
        .unwrap();
    assert!(st.success());
    let other_pub = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    let other_pub: Vec<&str> = other_pub.split_whitespace().take(2).collect();
    let prefix = format!("{} ", host_pattern(tb, n));
    let kh = std::fs::read_to_string(tb.known_hosts()).unwrap();
    let mut replaced = 0;
    let lines: Vec<String> = kh
        .lines()
        // Of this node, only its ed25519 line stays (to be replaced): its other keys would vouch.
        .filter(|l| !l.starts_with(&prefix) || l.contains("ssh-ed25519"))
        .map(|l| match l.starts_with(&prefix) {
            true => {
                replaced += 1;
                format!("{prefix}{}", other_pub.join(" "))
            }
            false => l.to_owned(),
        })
        .collect();
    assert_eq!(replaced, 1, "the testbed's known_hosts has no ed25519 line for {}:\n{kh}", n.name);
    let path = fx.path("mitm_known_hosts");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// How known_hosts names the node (`[addr]:port` off port 22).
fn host_pattern(tb: &Testbed, n: &TbNode) -> String {
    match tb.port {
        22 => n.address.clone(),
        p => format!("[{}]:{p}", n.address),
    }
}

fn fingerprint(pubkey: &Path) -> String {
    let out = Command::new("ssh-keygen").arg("-lf").arg(pubkey).output().unwrap();
    String::from_utf8(out.stdout).unwrap().split_whitespace().nth(1).unwrap().to_owned()
}

#[test]
fn a_changed_host_key_is_refused_alike_with_and_without_ssh_on_path() {
    let Some(tb) = Testbed::up(1, 0) else { return };
    let fx = Fixture::new();
    let paths = Paths::new(&fx);
    let n = tb.control_plane(1);
    let mitm = mitm_known_hosts(&fx, &tb, n);
    let before = pki_files(&tb, n);
    let want = fingerprint(&n.host_key_pub("ed25519"));
    let mut messages = Vec::new();
    for (path, via) in [(&paths.spy, "the system ssh"), (&paths.none, "the built-in client")] {
        let calls = paths.ssh_calls();
        let out = push(&fx, &tb, n, path, &mitm, &[]);
        assert_eq!(out.status.code(), Some(4), "{via}: {}", text(&out));
        let stderr = text(&out);
        assert!(stderr.contains(&want), "{via}: no fingerprint {want}: {stderr}");
        assert!(stderr.contains("mitm_known_hosts"), "{via}: {stderr}");
        let fix = format!("ssh-keygen -R {}", host_pattern(&tb, n));
        assert!(stderr.contains(&fix), "{via}: no fix named ({fix}): {stderr}");
        assert_eq!(pki_files(&tb, n), before, "{via}: the node changed");
        assert_eq!(paths.ssh_calls() > calls, path == &paths.spy, "{via}: wrong client ran");
        messages.push(stderr);
    }
    assert_eq!(messages[0], messages[1], "the two clients word the refusal differently");
    // Control: the true key is accepted, by either.
    for path in [&paths.spy, &paths.none] {
        let out = push(&fx, &tb, n, path, &tb.known_hosts(), &[]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
}

/// A drop-in under /etc/ssh/ssh_config.d, which the system ssh reads as it reads ~/.ssh/config
/// (a test must not write the host's /root); its `Host` names are this test's own. Removed
/// when dropped, panic or not.
struct SshConfigDropIn(PathBuf);

impl SshConfigDropIn {
    fn new(tb: &Testbed, text: &str) -> SshConfigDropIn {
        let dir = Path::new("/etc/ssh/ssh_config.d");
        assert!(dir.is_dir(), "no /etc/ssh/ssh_config.d (Debian's ssh_config includes it)");
        let p = dir.join(format!("hapki-test-{}-{}.conf", std::process::id(), tb.net));
        std::fs::write(&p, text).unwrap();
        SshConfigDropIn(p)
    }
}

impl Drop for SshConfigDropIn {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn accepted_logins(n: &TbNode) -> usize {
    let log = std::fs::read_to_string(n.dir.join("sshd.log")).unwrap_or_default();
    log.matches("Accepted publickey").count()
}

/// The default transport, with ssh on PATH, reaches a node only through a ProxyJump bastion
/// the client configuration names — and the same configuration cannot loosen host-key checks
/// (`StrictHostKeyChecking no`, other known_hosts files): hapki's own options win.
#[test]
fn the_client_configuration_is_honoured_except_for_host_keys() {
    let Some(tb) = Testbed::up(2, 0) else { return };
    let fx = Fixture::new();
    let paths = Paths::new(&fx);
    let (jump, behind) = (tb.control_plane(1), tb.control_plane(2));
    let tag = format!("{}-{}", std::process::id(), tb.net);
    let (kh, id) = (tb.known_hosts(), tb.identity());
    let empty = fx.path("empty_known_hosts");
    std::fs::write(&empty, "").unwrap();
    let _conf = SshConfigDropIn::new(
        &tb,
        &format!(
            "Host hapki-bastion-{tag}\n  HostName {j}\n  Port {p}\n  User root\n  IdentityFile {id}\n  \
             UserKnownHostsFile {kh}\n  StrictHostKeyChecking yes\n  BatchMode yes\n\
             Host hapki-behind-{tag}\n  HostName {b}\n  Port {p}\n  ProxyJump hapki-bastion-{tag}\n\
             Host hapki-lax-{tag}\n  HostName {b}\n  Port {p}\n  StrictHostKeyChecking no\n  \
             UserKnownHostsFile /dev/null\n  GlobalKnownHostsFile {kh}\n",
            j = jump.address,
            b = behind.address,
            p = tb.port,
            id = id.display(),
            kh = kh.display(),
        ),
    );
    let push_to = |alias: &str, known_hosts: &Path| {
        let mut c = hapki_process();
        c.env(
            "PATH",
            std::env::join_paths([paths.spy.as_path(), Path::new("/usr/bin"), Path::new("/bin")])
                .unwrap(),
        );
        c.arg("push").arg(fx.bundle()).arg("--trust").arg(fx.allowed());
        c.arg("--decrypt-key").arg(fx.signer()).args(["--nodes", alias, "--user", "root"]);
        c.arg("--identity").arg(&id).arg("--known-hosts").arg(known_hosts);
        c.output().expect("run hapki")
    };

    let via_bastion = accepted_logins(jump);
    let out = push_to(&format!("hapki-behind-{tag}"), &kh);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(paths.ssh_calls() > 0, "the system ssh did not run");
    assert!(accepted_logins(jump) > via_bastion, "the bastion was not used");
    assert!(pki_files(&tb, behind).contains("./pki/ca.key"), "nothing installed behind it");

    // The lax alias: its configuration says "trust anything, record nothing"; hapki's
    // known_hosts (empty) is still the only trust, and it stays empty.
    let out = push_to(&format!("hapki-lax-{tag}"), &empty);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(text(&out).contains("empty_known_hosts"), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&empty).unwrap(), "", "known_hosts was written");
}
