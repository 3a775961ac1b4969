//! Real upstream Kubernetes v1.20.2 (kubeadm, kube-apiserver, kube-controller-manager and
//! kubectl, built by scripts/kubernetes) on testbed nodes, with tests/support/static-pods standing in for the
//! kubelet and container runtime.
//!
//! Include it after `testbed` (it uses it by that name):
//! `#[path = "support/real_kube.rs"] mod real_kube;`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::testbed::{must_run, TbNode, Testbed};

pub const VERSION: &str = "v1.20.2";
/// kubectl: the client matching the servers (Debian 12 ships no newer one).
const BINARIES: [&str; 4] = ["kubeadm", "kube-apiserver", "kube-controller-manager", "kubectl"];

/// The cache scripts/kubernetes fills (`HAPKI_KUBE_CACHE` overrides it, as for the script).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("HAPKI_KUBE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(format!("/var/cache/hapki/kubernetes-{VERSION}")))
}

/// The cache when it holds all three programs. Otherwise says so loudly and returns `None`
/// (the test skips), or panics under CI/HAPKI_REQUIRE_TESTBED: a machine that must run the
/// tests must have built them.
pub fn cache() -> Option<PathBuf> {
    let dir = cache_dir();
    if BINARIES.iter().all(|b| dir.join(b).is_file()) {
        return Some(dir);
    }
    let why = format!(
        "real Kubernetes {VERSION} is not built in {}: run scripts/kubernetes (as root, ~10 min once)",
        dir.display()
    );
    if must_run() {
        panic!("real-Kubernetes tests cannot run: {why}");
    }
    eprintln!("\n*** SKIPPED: {why} ***\n");
    None
}

/// The runner script, run inside a node.
pub fn runner() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/static-pods")
}

/// The real programs first on every node's PATH, and a kubelet that only knows its version
/// (hapki's and kubeadm's preflight ask it; nothing else of a kubelet is run).
pub fn install(tb: &Testbed, cache: &Path) {
    for n in &tb.nodes {
        let bin = n.dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        for b in BINARIES {
            let link = bin.join(b);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(cache.join(b), &link).unwrap();
        }
        let kubelet = bin.join("kubelet");
        std::fs::write(
            &kubelet,
            format!(
                "#!/bin/sh\n# kubelet stand-in: its version only (preflight checks ask it)\n\
                 case ${{1:-}} in --version | version) echo 'Kubernetes {VERSION}' ;; \
                 *) echo 'kubelet stand-in: only --version' >&2; exit 1 ;; esac\n"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&kubelet, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
    }
}

/// This machine's non-loopback IPv4 address: kubeadm 1.20 refuses loopback advertise
/// addresses, so it gets this one as a value only (nothing binds it; every process runs on
/// its node's 127.0.K.N).
pub fn host_ip() -> String {
    let out = Command::new("ip").args(["-4", "-o", "addr", "show", "scope", "global"]).output();
    let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    text.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .map(str::to_string)
        .expect("the real-Kubernetes tests need one non-loopback IPv4 address on this machine (kubeadm 1.20 refuses loopback advertise addresses)")
}

/// Where the runner keeps a node's pids and logs (seen from the host and the node alike).
pub fn run_dir(n: &TbNode) -> PathBuf {
    n.dir.join("static-pods")
}

/// Stops every process the runner started on the testbed's nodes when dropped, pass or fail
/// (before the testbed itself goes down: declare it after the `Testbed`).
pub struct Pods<'a> {
    pub tb: &'a Testbed,
}

impl Pods<'_> {
    /// Starts `components` (manifest names) on `node`, `extra` replacing or adding flags.
    pub fn start(&self, node: &str, components: &[&str], extra: &[&str]) {
        let n = self.tb.node(node);
        let host = host_ip();
        for c in components {
            let mut cmd = format!(
                "{} start {} {host} {} {c}",
                runner().display(),
                n.address,
                run_dir(n).display()
            );
            if !extra.is_empty() {
                cmd += &format!(" -- {}", extra.join(" "));
            }
            self.tb.ok(node, &cmd);
        }
    }

    /// Stops one component on `node`.
    pub fn stop(&self, node: &str, component: &str) {
        let n = self.tb.node(node);
        self.tb
            .ok(node, &format!("{} stop {} {component}", runner().display(), run_dir(n).display()));
    }

    /// Starts the runner's kubelet loop on `node`: from now on its components follow their
    /// manifests (moved out: stopped; back: started).
    pub fn kubelet(&self, node: &str) {
        let n = self.tb.node(node);
        self.tb.ok(
            node,
            &format!(
                "setsid {} kubelet {} {} {} > /dev/null 2>&1 < /dev/null &",
                runner().display(),
                n.address,
                host_ip(),
                run_dir(n).display()
            ),
        );
        let pid = run_dir(n).join("kubelet.pid");
        wait_for("the kubelet loop's pid", Duration::from_secs(10), || pid.exists().then_some(()));
    }

    /// Makes the kubelet loop of `node` ignore `component` (it keeps running whatever happens
    /// to its manifest), or heed it again.
    pub fn pin(&self, node: &str, component: &str, pinned: bool) {
        let f = run_dir(self.tb.node(node)).join(format!("{component}.pinned"));
        if pinned {
            std::fs::write(f, b"").unwrap();
        } else {
            let _ = std::fs::remove_file(f);
        }
    }

    /// The last lines of every runner log of `node`, for failure messages.
    pub fn logs(&self, node: &str) -> String {
        let dir = run_dir(self.tb.node(node));
        let mut out = String::new();
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if e.path().extension().is_some_and(|x| x == "log") {
                let t = std::fs::read_to_string(e.path()).unwrap_or_default();
                let tail: Vec<&str> = t.lines().rev().take(8).collect();
                out += &format!("--- {}\n{}\n", e.path().display(), tail.join("\n"));
            }
        }
        out
    }
}

impl Drop for Pods<'_> {
    fn drop(&mut self) {
        for n in &self.tb.nodes {
            for e in std::fs::read_dir(run_dir(n)).into_iter().flatten().flatten() {
                let p = e.path();
                if p.extension().is_none_or(|x| x != "pid") {
                    continue;
                }
                let Some(pid) =
                    std::fs::read_to_string(&p).ok().and_then(|s| s.trim().parse::<i32>().ok())
                else {
                    continue;
                };
                // Only a process still running the recorded program (pids are reused).
                let argv0 = std::fs::read_to_string(p.with_extension("argv")).unwrap_or_default();
                let prog = argv0.lines().next().unwrap_or("-").to_string();
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                if !prog.is_empty() && cmdline.starts_with(prog.as_bytes()) {
                    // SAFETY: signalling a pid the runner recorded, checked to run the program.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
    }
}

/// Polls `f` every 500 ms until it returns `Some`, or panics with `what` after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `curl` against an API server from this machine: (HTTP status, body).
pub fn curl(args: &[&str], url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .expect("run curl (apt-get install -y curl)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// kubeadm's configuration for node `name`: the host's address as a value only, every node's
/// 127.0.K.N in the certificates' SANs (each process really serves there). The API servers run
/// with `--shutdown-delay-duration=3s`, as an API server behind a health-checking balancer should:
/// on SIGTERM /readyz fails at once while the server still serves, so the balancer
/// (tests/support/endpoint.rs, checking every 250 ms) stops sending it connections before its
/// listener closes. kubeadm's default (0) resets a connection handed over in that window: one
/// request in 682 during a restart, under CI's load.
pub fn kubeadm_config(tb: &Testbed, name: &str, host: &str) -> String {
    let sans: Vec<String> = tb.nodes.iter().map(|n| n.address.clone()).collect();
    let sans = sans.join(", ");
    format!(
        "apiVersion: kubeadm.k8s.io/v1beta2\nkind: InitConfiguration\nlocalAPIEndpoint:\n  \
         advertiseAddress: {host}\n  bindPort: 6443\nnodeRegistration:\n  name: {name}\n---\n\
         apiVersion: kubeadm.k8s.io/v1beta2\nkind: ClusterConfiguration\nkubernetesVersion: {v}\n\
         controlPlaneEndpoint: kubeapi.test:6443\napiServer:\n  certSANs: [{sans}]\n  \
         extraArgs:\n    shutdown-delay-duration: 3s\netcd:\n  \
         local:\n    serverCertSANs: [{sans}]\n    peerCertSANs: [{sans}]\n",
        v = VERSION
    )
}

pub fn config_path(tb: &Testbed, name: &str) -> String {
    tb.node(name).dir.join("kubeadm.yaml").display().to_string()
}

/// GET /healthz on `addr`'s API server, its certificate checked against `ca`.
pub fn healthz(ca: &Path, addr: &str) -> (u16, String) {
    curl(&["--cacert", ca.to_str().unwrap()], &format!("https://{addr}:6443/healthz"))
}

pub fn wait_healthy(ca: &Path, pods: &Pods, node: &str) {
    let addr = pods.tb.node(node).address.clone();
    let limit = Duration::from_secs(90);
    let what = format!("{node}'s API server /healthz\n{}", pods.logs(node));
    wait_for(&what, limit, || (healthz(ca, &addr) == (200, "ok".into())).then_some(()));
}

/// kubemaster-1 as `kubeadm init` would make it, phase by phase, from the pushed CAs.
pub fn init_first_master(tb: &Testbed, ca: &Path, pods: &Pods, host: &str) {
    let m1 = "kubemaster-1";
    let c = config_path(tb, m1);
    let certs = tb.ok(m1, &format!("kubeadm init phase certs all --config {c}"));
    for used in [
        "[certs] Using existing ca certificate authority",
        "[certs] Using existing front-proxy-ca certificate authority",
        "[certs] Using existing etcd/ca certificate authority",
        "[certs] Using the existing \"sa\" key",
    ] {
        assert!(certs.contains(used), "kubeadm did not use the pushed files ({used}):\n{certs}");
    }
    for phase in ["kubeconfig all", "etcd local", "control-plane all"] {
        tb.ok(m1, &format!("kubeadm init phase {phase} --config {c}"));
    }
    pods.start(m1, &["etcd", "kube-apiserver", "kube-controller-manager"], &[]);
    wait_healthy(ca, pods, m1);
    register(tb, m1, host);
    tb.ok(m1, &format!("kubeadm init phase upload-config all --config {c}"));
    tb.ok(m1, &format!("kubeadm init phase bootstrap-token --config {c}"));
}

/// Another control plane as `kubeadm join --control-plane` would make it from the pushed
/// shared files, without the join itself: the leaves, kubeconfigs and manifests (kubeadm's
/// `init phase` commands, which join's control-plane-prepare phases run), the runner's
/// `join-etcd`, then its API server and controller-manager started and registered.
pub fn prepare_control_plane(
    tb: &Testbed,
    ca: &Path,
    pods: &Pods,
    name: &str,
    first: &str,
    host: &str,
) {
    let c = config_path(tb, name);
    for phase in ["certs all", "kubeconfig all", "control-plane all"] {
        tb.ok(name, &format!("kubeadm init phase {phase} --config {c}"));
    }
    start_joined(tb, ca, pods, name, first, host);
    register(tb, name, host);
}

/// What a kubelet starts on control plane `name` once its kubeadm join is done: the runner's
/// `join-etcd` (the skipped etcd phase, through `first`'s etcd), then its API server and
/// controller-manager, waited on until healthy against `ca`.
pub fn start_joined(tb: &Testbed, ca: &Path, pods: &Pods, name: &str, first: &str, host: &str) {
    let n = tb.node(name);
    let first = &tb.node(first).address;
    tb.ok(
        name,
        &format!(
            "{} join-etcd {name} {} {first} {host} {} {}",
            runner().display(),
            n.address,
            run_dir(n).display(),
            config_path(tb, name)
        ),
    );
    pods.start(name, &["kube-apiserver", "kube-controller-manager"], &[]);
    wait_healthy(ca, pods, name);
}

/// The runner's `register` for `name`: its Node object and mirror pods.
pub fn register(tb: &Testbed, name: &str, host: &str) {
    let addr = &tb.node(name).address;
    tb.ok(name, &format!("{} register {name} {addr} {host}", runner().display()));
}

/// A ServiceAccount token for `namespace`/`account` from a TokenRequest (the API scripts/demo
/// and the kubelet's projected volumes use; 1.20's kubectl has no `create token`) through the
/// API server of `node`, valid `seconds`. It travels on stdout only, never in an argv.
pub fn token_request(
    tb: &Testbed,
    node: &str,
    namespace: &str,
    account: &str,
    seconds: u32,
) -> String {
    let addr = &tb.node(node).address;
    let k = format!("kubectl --kubeconfig /etc/kubernetes/admin.conf --server https://{addr}:6443");
    let request = format!(
        "{{\"apiVersion\":\"authentication.k8s.io/v1\",\"kind\":\"TokenRequest\",\
         \"spec\":{{\"expirationSeconds\":{seconds}}}}}"
    );
    let path = format!("/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token");
    let out = tb.ssh_stdin(node, &format!("{k} create --raw {path} -f -"), request.as_bytes());
    assert!(
        out.status.success(),
        "TokenRequest on {node}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a TokenRequest");
    v["status"]["token"].as_str().expect("a token in the TokenRequest's status").to_string()
}

/// Phases of `kubeadm join --control-plane` a `hapki join` on this testbed skips (as its
/// `--kubeadm-arg`), each for want of a kubelet:
/// - `kubelet-start`: writes the kubelet's bootstrap config and starts the kubelet service
///   (there is no kubelet or container runtime);
/// - `control-plane-join/etcd`: it would register the advertise address as the new member's
///   peer URL, and kubeadm 1.20 refuses loopback advertise addresses, so every node advertises
///   the host's one address: the runner's `join-etcd` does the phase's work with the node's
///   own 127.0.K.N (member add, kubeadm's own etcd manifest, --initial-cluster-state=existing);
/// - `control-plane-join/mark-control-plane`: labels and taints the Node the kubelet would
///   have registered.
///
/// Never skipped: preflight, discovery (token + the CA hash hapki computed), every
/// `control-plane-prepare` phase (the shared-certificate checks, the leaves from the pushed
/// CAs, the kubeconfigs, the manifests), `check-etcd`, `update-status`.
pub const JOIN_SKIP_PHASES: &str =
    "--skip-phases=kubelet-start,control-plane-join/etcd,control-plane-join/mark-control-plane";

/// kubeadm preflight errors a `hapki join` on this testbed ignores (as its `--kubeadm-arg`):
/// none is about certificates. The ports are in use by the other nodes' processes (kubeadm
/// test-binds every address of the shared network); the container runtime, images, Docker
/// checks, system verification (it asks the runtime), the kernel's forwarding/bridge settings,
/// swap and the runtime's helper programs (conntrack, iptables, crictl, …) are what a kubelet
/// and container runtime need.
pub const JOIN_IGNORE_PREFLIGHT: &str = "--ignore-preflight-errors=Port-6443,Port-10259,\
Port-10257,Port-2379,Port-2380,CRI,ImagePull,Service-Docker,IsDockerSystemdCheck,\
SystemVerification,FileContent--proc-sys-net-ipv4-ip_forward,\
FileContent--proc-sys-net-bridge-bridge-nf-call-iptables,Swap,FileExisting-conntrack,\
FileExisting-iptables,FileExisting-crictl,FileExisting-ebtables,FileExisting-ethtool,\
FileExisting-socat,FileExisting-tc,FileExisting-nsenter,FileExisting-mount";
