//! The tests on REAL upstream Kubernetes v1.20.2 (built by scripts/kubernetes), in one test
//! binary so that they run side by side: cargo runs test binaries one after another, and each of
//! these spends most of its time waiting for real components to stop, start and become healthy.
//! libtest starts tests in name order on as many threads as there are cores (two in CI): the
//! longest, the CA rotation, sorts first (`ca_rotation`), so the others share the second thread
//! meanwhile and the binary takes about as long as the rotation alone. Each test has its own
//! testbed on its own loopback /24.

#[path = "../support/cluster.rs"]
mod cluster;
#[path = "../support/endpoint.rs"]
mod endpoint;
#[path = "../support/fixture.rs"]
mod fixture;
#[path = "../support/openssl.rs"]
mod openssl;
#[path = "../support/real_kube.rs"]
mod real_kube;
#[path = "../support/testbed.rs"]
mod testbed;

mod ca_rotation;
mod kubernetes;
mod renew;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fixture::Fixture;
use real_kube::{init_first_master, kubeadm_config, prepare_control_plane, Pods};
use testbed::Testbed;

/// A testbed of `masters` control-plane nodes with the real programs installed, a fixture and
/// the host's address (kubeadm's advertise address), or `None`: the test skips (see
/// `real_kube::cache` and `Testbed::up`).
pub fn real_testbed(masters: usize) -> Option<(Testbed, Fixture, String)> {
    let cache = real_kube::cache()?;
    let tb = Testbed::up(masters, 0)?;
    real_kube::install(&tb, &cache);
    let host = real_kube::host_ip();
    Some((tb, Fixture::new(), host))
}

/// Every node's kubeadm configuration written, the fixture's PKI pushed to `pushed`, and the
/// first of them made as `kubeadm init` would make it.
pub fn first_master(tb: &Testbed, fx: &Fixture, pods: &Pods, host: &str, pushed: &[&str]) {
    for n in &tb.nodes {
        std::fs::write(n.dir.join("kubeadm.yaml"), kubeadm_config(tb, &n.name, host)).unwrap();
    }
    cluster::push_to(fx, tb, &fx.bundle(), pushed, &[]);
    init_first_master(tb, &fx.pki().join("ca.crt"), pods, host);
}

/// The control planes `nodes` up from one `hapki pki init` PKI pushed to them (the first as
/// `kubeadm init`, the others as `kubeadm join --control-plane` would make them), each under
/// the runner's kubelet loop.
pub fn bring_up(tb: &Testbed, fx: &Fixture, pods: &Pods, host: &str, nodes: &[&str]) {
    first_master(tb, fx, pods, host, nodes);
    let ca = fx.pki().join("ca.crt");
    for n in &nodes[1..] {
        prepare_control_plane(tb, &ca, pods, n, nodes[0], host);
    }
    for n in nodes {
        pods.kubelet(n);
    }
}

/// `hapki join --inventory INVENTORY` of `bundle` running real `kubeadm join` (kubeadm's logs
/// under `run`, the JSON report on stdout; stdout and stderr piped), with the phases and
/// preflight errors a testbed without a kubelet skips (`real_kube::JOIN_*`).
pub fn hapki_join(fx: &Fixture, inventory: &Path, bundle: &Path, run: &Path) -> Command {
    let mut c = fixture::hapki_process();
    c.args(["join", "--inventory"]).arg(inventory).arg("--bundle").arg(bundle);
    c.arg("--trust").arg(fx.allowed()).arg("--decrypt-key").arg(fx.signer());
    c.args(["--output", "json", "--etcd-timeout", "3m", "--run-dir"]).arg(run);
    c.arg(format!("--kubeadm-arg={}", real_kube::JOIN_SKIP_PHASES));
    c.arg(format!("--kubeadm-arg={}", real_kube::JOIN_IGNORE_PREFLIGHT));
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

/// Waits (up to 240 s) until `name`'s kubeadm says it joined (true) or the `hapki join`
/// `child` ends before (false).
pub fn kubeadm_joined(run: &Path, name: &str, child: &mut Child) -> bool {
    let log = run.join(format!("{name}.log"));
    real_kube::wait_for(&format!("{name}'s kubeadm join"), Duration::from_secs(240), || {
        let t = std::fs::read_to_string(&log).unwrap_or_default();
        if t.contains("This node has joined the cluster") {
            return Some(true);
        }
        child.try_wait().unwrap().map(|_| false)
    })
}

/// `hapki bundle --inventory INVENTORY` (the first master's shared files), signed with the
/// fixture's key and encrypted to its recipient, written to `out`.
pub fn bundle_inventory(fx: &Fixture, inventory: &Path, out: &Path) {
    let recipient = std::fs::read_to_string(fx.signer().with_extension("pub")).unwrap();
    let done = fixture::hapki()
        .args(["bundle", "--inventory"])
        .arg(inventory)
        .arg("--sign-key")
        .arg(fx.signer())
        .args(["--recipient", recipient.trim(), "--out"])
        .arg(out)
        .output()
        .unwrap();
    assert!(done.status.success(), "bundle --inventory: {}", fixture::text(&done));
}
