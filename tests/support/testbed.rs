//! A guard around `scripts/testbed` for integration tests: `Testbed::up(2, 1)` starts real sshd
//! nodes on a loopback /24 of its own, and dropping the guard tears them down.
//!
//! Include it with `#[path = "support/testbed.rs"] mod testbed;`.
//!
//! Without root the testbed tests are skipped LOUDLY; with `CI` or `HAPKI_REQUIRE_TESTBED` set
//! they fail instead, so CI can never pass by skipping.
//!
//! The script is `HAPKI_TESTBED_SCRIPT` if set (to try another version of it), else
//! scripts/testbed in this tree.
#![allow(dead_code)]

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use hapki::transport::Target;

/// One node of a running testbed.
#[derive(Debug, Clone)]
pub struct TbNode {
    pub name: String,
    pub address: String,
    pub control_plane: bool,
    /// `DIR/nodes/NAME`: `etc-kubernetes/` is the node's /etc/kubernetes, `state/` its
    /// /var/lib/hapki, `var-lib-etcd/`, `cni/`, `bin/` (first on the node's PATH).
    pub dir: PathBuf,
}

impl TbNode {
    /// The node's /etc/kubernetes, seen from the host.
    pub fn etc_kubernetes(&self) -> PathBuf {
        self.dir.join("etc-kubernetes")
    }
    /// The node's /var/lib/hapki, seen from the host.
    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }
    pub fn sshd_pid(&self) -> i32 {
        std::fs::read_to_string(self.dir.join("sshd.pid")).unwrap().trim().parse().unwrap()
    }
    /// The node's /var/lib/containerd, /etc/containerd, /run/containerd (`--containerd`).
    pub fn containerd(&self, which: &str) -> PathBuf {
        self.dir.join("containerd").join(which)
    }
    pub fn host_key_pub(&self, kind: &str) -> PathBuf {
        self.dir.join(format!("ssh_host_{kind}_key.pub"))
    }
}

pub struct Testbed {
    pub dir: PathBuf,
    pub net: u32,
    /// The nodes' sshd port (22 unless something holds *:22 on this machine).
    pub port: u16,
    pub nodes: Vec<TbNode>,
    /// Held for the testbed's life: no other testbed of this machine uses the same /24.
    _net_lock: File,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn script() -> PathBuf {
    std::env::var_os("HAPKI_TESTBED_SCRIPT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/testbed"))
}

/// Whether a testbed test that cannot run must fail rather than skip (CI, or asked to).
pub fn must_run() -> bool {
    std::env::var_os("CI").is_some() || std::env::var_os("HAPKI_REQUIRE_TESTBED").is_some()
}

/// Takes an exclusive, non-blocking lock on `/run/hapki-testbed-net-K.lock`.
fn lock_net(k: u32) -> Option<File> {
    let f = File::create(format!("/run/hapki-testbed-net-{k}.lock")).ok()?;
    // SAFETY: flock on a file descriptor we own.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    (rc == 0).then_some(f)
}

impl Testbed {
    /// Starts `control_planes` + `workers` nodes, or returns `None` (after a loud message) when
    /// not root and not required to run.
    pub fn up(control_planes: usize, workers: usize) -> Option<Testbed> {
        Testbed::up_with(control_planes, workers, &[])
    }

    /// [`Testbed::up`] with more `scripts/testbed up` flags (e.g. `--containerd`: a real
    /// containerd per node).
    pub fn up_with(control_planes: usize, workers: usize, extra: &[&str]) -> Option<Testbed> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            if must_run() {
                panic!(
                    "testbed tests need root, and CI/HAPKI_REQUIRE_TESTBED forbids skipping them"
                );
            }
            eprintln!("\n*** SKIPPED: testbed tests need root (run cargo test as root, see .ci/run) ***\n");
            return None;
        }
        let pid = std::process::id();
        let start =
            pid.wrapping_mul(2654435761).wrapping_add(COUNTER.fetch_add(1, Ordering::SeqCst) * 7);
        // A net is ours when its lock is (other test processes) and scripts/testbed finds no
        // listener on it (a testbed started by hand, the demo, a benchmark): exit 75.
        let mut candidates = (0..249).map(|i| 2 + (start.wrapping_add(i)) % 249);
        let (net, lock, dir) = loop {
            let Some((net, lock)) = candidates.by_ref().find_map(|k| lock_net(k).map(|l| (k, l)))
            else {
                panic!("no free loopback /24 for the testbed")
            };
            let dir = PathBuf::from(format!("/tmp/hapki-tb-{pid}-{net}"));
            let out = Command::new(script())
                .args(["up", "--control-planes", &control_planes.to_string()])
                .args(["--workers", &workers.to_string(), "--net", &net.to_string(), "--dir"])
                .arg(&dir)
                .args(extra)
                .output()
                .expect("run scripts/testbed");
            if out.status.code() == Some(75) {
                continue;
            }
            assert!(
                out.status.success(),
                "scripts/testbed up failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            break (net, lock, dir);
        };
        let mut nodes = Vec::new();
        for i in 0..control_planes + workers {
            let name = if i < control_planes {
                format!("kubemaster-{}", i + 1)
            } else {
                format!("kubenode-{}", i - control_planes + 1)
            };
            nodes.push(TbNode {
                address: format!("127.0.{net}.{}", i + 1),
                control_plane: i < control_planes,
                dir: dir.join("nodes").join(&name),
                name,
            });
        }
        let env = std::fs::read_to_string(dir.join("env")).expect("testbed env file");
        let port = env
            .lines()
            .find_map(|l| l.strip_prefix("HAPKI_TESTBED_PORT="))
            .and_then(|p| p.trim().parse().ok())
            .expect("HAPKI_TESTBED_PORT in the env file");
        Some(Testbed { dir, net, port, nodes, _net_lock: lock })
    }

    pub fn inventory(&self) -> PathBuf {
        self.dir.join("inventory.toml")
    }
    pub fn inventory_ini(&self) -> PathBuf {
        self.dir.join("inventory.ini")
    }
    pub fn known_hosts(&self) -> PathBuf {
        self.dir.join("known_hosts")
    }
    pub fn identity(&self) -> PathBuf {
        self.dir.join("id_ed25519")
    }

    pub fn node(&self, name: &str) -> &TbNode {
        self.nodes.iter().find(|n| n.name == name).unwrap_or_else(|| panic!("no node {name}"))
    }

    /// A transport target for `name`, logging in as root with the testbed key.
    pub fn target(&self, name: &str) -> Target {
        let n = self.node(name);
        let mut t = Target::new(&n.name, &n.address, self.known_hosts());
        t.port = Some(self.port);
        t.user = Some("root".to_owned());
        t.identity = vec![self.identity()];
        t.connect_timeout = Duration::from_secs(5);
        t
    }

    /// The `n`-th control plane, `kubemaster-N` (1-based, as the testbed names them).
    pub fn control_plane(&self, n: usize) -> &TbNode {
        self.node(&format!("kubemaster-{n}"))
    }

    /// `host:port` of a node, for `--nodes`.
    pub fn addr(&self, name: &str) -> String {
        format!("{}:{}", self.node(name).address, self.port)
    }

    /// Runs `scripts/testbed ssh NODE CMD` (the stock ssh client, strict host-key checking).
    pub fn ssh(&self, name: &str, cmd: &str) -> Output {
        Command::new(script())
            .args(["ssh", "--dir"])
            .arg(&self.dir)
            .args([name, cmd])
            .output()
            .expect("run scripts/testbed ssh")
    }

    /// [`Testbed::ssh`] with `stdin` fed to the remote command.
    pub fn ssh_stdin(&self, name: &str, cmd: &str, stdin: &[u8]) -> Output {
        let mut child = Command::new(script())
            .args(["ssh", "--dir"])
            .arg(&self.dir)
            .args([name, cmd])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run scripts/testbed ssh");
        child.stdin.take().unwrap().write_all(stdin).expect("write the remote command's stdin");
        child.wait_with_output().expect("wait for scripts/testbed ssh")
    }

    /// Runs `cmd` on `name` and insists it succeeds; returns its stdout.
    pub fn ok(&self, name: &str, cmd: &str) -> String {
        let out = self.ssh(name, cmd);
        assert!(
            out.status.success(),
            "{name}: `{cmd}` failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `cmd` on `name`, insists it fails, and returns its stderr then stdout.
    pub fn fails(&self, name: &str, cmd: &str) -> String {
        let out = self.ssh(name, cmd);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(!out.status.success(), "{name}: `{cmd}` succeeded but must fail:\n{text}");
        text
    }

    /// Kills the node's sshd listener (the node is then down for new connections).
    pub fn kill_sshd(&self, name: &str) {
        let pid = self.node(name).sshd_pid();
        // SAFETY: signalling a pid the testbed recorded for this node.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }

    /// Gives `node` new host keys for real: fresh key files, sshd re-reads them on SIGHUP, and the
    /// node is then polled (bounded) until `ssh-keyscan` sees the new ed25519 key.
    pub fn change_host_keys(&self, node: &str) {
        let n = self.node(node);
        for (kind, extra) in [("ed25519", ""), ("ecdsa", "-b 256")] {
            let key = n.dir.join(format!("ssh_host_{kind}_key"));
            let _ = std::fs::remove_file(&key);
            let _ = std::fs::remove_file(n.host_key_pub(kind));
            let cmd =
                format!("ssh-keygen -q -t {kind} {extra} -N '' -C {node} -f {}", key.display());
            assert!(Command::new("sh").arg("-c").arg(&cmd).status().unwrap().success(), "{cmd}");
        }
        let new_key = std::fs::read_to_string(n.host_key_pub("ed25519")).unwrap();
        let new_key: Vec<&str> = new_key.split_whitespace().take(2).collect();
        // SAFETY: signalling the sshd pid the testbed recorded for this node.
        unsafe { libc::kill(n.sshd_pid(), libc::SIGHUP) };
        for _ in 0..100 {
            let scan = Command::new("ssh-keyscan")
                .args(["-T", "2", "-t", "ed25519", "-p", &self.port.to_string(), &n.address])
                .output()
                .unwrap();
            if String::from_utf8_lossy(&scan.stdout).contains(new_key[1]) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("{node} does not serve its new host key after SIGHUP");
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        let out = Command::new(script()).args(["down", "--dir"]).arg(&self.dir).output();
        if let Ok(o) = out {
            if !o.status.success() {
                eprintln!("scripts/testbed down failed: {}", String::from_utf8_lossy(&o.stderr));
            }
        }
    }
}
