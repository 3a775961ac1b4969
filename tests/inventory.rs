//! Inventories as kubespray users already have them: `inventory.ini` (current and older group
//! names), `hosts.yaml` as kubespray's inventory builder writes it, host ranges, child groups and
//! group variables; hostile inventories refused with one line and exit 2; and an INI inventory
//! with a host range used end to end for a real push on the testbed.
//!
//! The files below are written out as kubespray ships or writes them, from
//! github.com/kubernetes-sigs/kubespray: `inventory/sample/inventory.ini` (current: hosts on the
//! `[kube_control_plane]` lines, `[etcd:children]`), `inventory/sample/hosts.ini` and
//! `inventory.ini` of older releases (`[all]`, `[kube-master]`, `[kube-node]`,
//! `[k8s-cluster:children]`), and the `hosts.yaml` that `contrib/inventory_builder/inventory.py`
//! writes (`all.hosts.NAME.{ansible_host, ip, access_ip}`, `all.children.*.hosts.NAME:` with empty
//! values, `calico_rr: {hosts: {}}`), with their comment lines uncommented as a user does.

#[path = "support/fixture.rs"]
mod fixture;
#[path = "support/testbed.rs"]
mod testbed;

use std::path::{Path, PathBuf};
use std::process::Command;

use fixture::{hapki, text, Fixture, SHARED};
use hapki::inventory::{Inventory, Role};
use serde_json::Value;
use testbed::Testbed;

fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

fn load(name: &str, body: &str) -> Inventory {
    let dir = tempfile::tempdir().unwrap();
    Inventory::load(&write(dir.path(), name, body))
        .unwrap_or_else(|e| panic!("{name} must load: {e}"))
}

/// `(name, address, role, advertise)` of every node, in inventory order.
fn rows(inv: &Inventory) -> Vec<(String, String, &'static str, Option<String>)> {
    inv.nodes
        .iter()
        .map(|n| {
            let role = match n.role {
                Role::ControlPlane => "cp",
                Role::Worker => "worker",
            };
            (n.name.clone(), n.address.clone(), role, n.advertise_address.clone())
        })
        .collect()
}

fn row(
    name: &str,
    addr: &str,
    role: &'static str,
    adv: Option<&str>,
) -> (String, String, &'static str, Option<String>) {
    (name.into(), addr.into(), role, adv.map(Into::into))
}

/// kubespray's current sample `inventory/sample/inventory.ini`, host lines uncommented.
const KUBESPRAY_INI: &str = "\
# This inventory describe a HA typology with stacked etcd (== same nodes as control plane)
# and 3 worker nodes
# See https://docs.ansible.com/ansible/latest/inventory_guide/intro_inventory.html
# for tips on building your # inventory

# Configure 'ip' variable to bind kubernetes services on a different ip than the default iface
# We should set etcd_member_name for etcd cluster. The node that are not etcd members do not need to set the value,
# or can set the empty string value.
[kube_control_plane]
node1 ansible_host=95.54.0.12  # ip=10.3.0.1 etcd_member_name=etcd1
node2 ansible_host=95.54.0.13  ip=10.3.0.2 etcd_member_name=etcd2
node3 ansible_host=95.54.0.14  ip=10.3.0.3 etcd_member_name=etcd3

[etcd:children]
kube_control_plane

[kube_node]
node4 ansible_host=95.54.0.15  # ip=10.3.0.4
node5 ansible_host=95.54.0.16  # ip=10.3.0.5
node6 ansible_host=95.54.0.17  ip=10.3.0.6
";

#[test]
fn kubespray_current_inventory_ini() {
    let inv = load("inventory.ini", KUBESPRAY_INI);
    assert_eq!(
        rows(&inv),
        [
            row("node1", "95.54.0.12", "cp", None), // `# ip=…` is a comment
            row("node2", "95.54.0.13", "cp", Some("10.3.0.2")),
            row("node3", "95.54.0.14", "cp", Some("10.3.0.3")),
            row("node4", "95.54.0.15", "worker", None),
            row("node5", "95.54.0.16", "worker", None),
            row("node6", "95.54.0.17", "worker", Some("10.3.0.6")),
        ]
    );
    assert_eq!(inv.first_master().name, "node1");
}

/// kubespray's older `inventory/sample/inventory.ini`: `[all]` with the variables, old group
/// names, `[k8s-cluster:children]`, a bastion in no role group.
const KUBESPRAY_OLD_INI: &str = "\
# ## Configure 'ip' variable to bind kubernetes services on a
# ## different ip than the default iface
# ## We should set etcd_member_name for etcd cluster. The node that is not a etcd member do not need to set the value, or can set the empty string value.
[all]
node1 ansible_host=95.54.0.12  ip=10.3.0.1 etcd_member_name=etcd1
node2 ansible_host=95.54.0.13  ip=10.3.0.2 etcd_member_name=etcd2
node3 ansible_host=95.54.0.14  ip=10.3.0.3 etcd_member_name=etcd3
node4 ansible_host=95.54.0.15  ip=10.3.0.4 etcd_member_name=etcd4

# ## configure a bastion host if your nodes are not directly reachable
bastion ansible_host=10.9.9.9 ansible_user=some_user

[kube-master]
node1
node2

[etcd]
node1
node2
node3

[kube-node]
node2
node3
node4

[calico-rr]

[k8s-cluster:children]
kube-master
kube-node
calico-rr
";

#[test]
fn kubespray_older_ini_with_old_group_names() {
    let inv = load("hosts.ini", KUBESPRAY_OLD_INI);
    assert_eq!(
        rows(&inv),
        [
            row("node1", "95.54.0.12", "cp", Some("10.3.0.1")),
            row("node2", "95.54.0.13", "cp", Some("10.3.0.2")),
            // node2 is in kube-node too: it stays a control plane; the bastion is no node.
            row("node3", "95.54.0.14", "worker", Some("10.3.0.3")),
            row("node4", "95.54.0.15", "worker", Some("10.3.0.4")),
        ]
    );
}

/// `hosts.yaml` as kubespray's `contrib/inventory_builder/inventory.py` writes it
/// (`CONFIG_FILE=inventory/mycluster/hosts.yaml python3 contrib/inventory_builder/inventory.py
/// 10.10.1.3 10.10.1.4 10.10.1.5`), plus a user's `vars`.
const KUBESPRAY_YAML: &str = "\
all:
  hosts:
    node1:
      ansible_host: 10.10.1.3
      ip: 10.10.1.3
      access_ip: 10.10.1.3
    node2:
      ansible_host: 10.10.1.4
      ip: 10.10.1.4
      access_ip: 10.10.1.4
    node3:
      ansible_host: 10.10.1.5
      access_ip: 10.10.1.5
  children:
    kube_control_plane:
      hosts:
        node1:
        node2:
    kube_node:
      hosts:
        node1:
        node2:
        node3:
    etcd:
      hosts:
        node1:
        node2:
        node3:
    k8s_cluster:
      children:
        kube_control_plane:
        kube_node:
    calico_rr:
      hosts: {}
  vars:
    ansible_user: ubuntu
    ansible_port: 2222
    ansible_ssh_private_key_file: /keys/id_ed25519
    kube_proxy_mode: ipvs
    supplementary_addresses_in_ssl_keys: [10.0.0.1, 10.0.0.2]
";

#[test]
fn kubespray_hosts_yaml() {
    let inv = load("hosts.yaml", KUBESPRAY_YAML);
    assert_eq!(
        rows(&inv),
        [
            row("node1", "10.10.1.3", "cp", Some("10.10.1.3")),
            row("node2", "10.10.1.4", "cp", Some("10.10.1.4")),
            row("node3", "10.10.1.5", "worker", Some("10.10.1.5")), // access_ip as fallback
        ]
    );
    assert_eq!(inv.ssh.user.as_deref(), Some("ubuntu"));
    assert_eq!(inv.ssh.port, Some(2222));
    assert_eq!(inv.ssh.identity.as_deref(), Some(Path::new("/keys/id_ed25519")));
    // Found by content too, without the extension.
    assert_eq!(load("hosts", KUBESPRAY_YAML), inv);
    assert_eq!(load("hosts.yml", &format!("---\n{KUBESPRAY_YAML}")), inv);
}

/// The older builder's `hosts.yaml`: `kube-master`, `kube-node`, `k8s-cluster`, flow mappings.
const KUBESPRAY_OLD_YAML: &str = "\
all:
  hosts:
    node1: {ansible_host: 192.168.0.11, ip: 192.168.0.11, access_ip: 192.168.0.11}
    node2: {ansible_host: 192.168.0.12, ip: 192.168.0.12, access_ip: 192.168.0.12}
    node3: {ansible_ssh_host: 192.168.0.13, ip: 192.168.0.13, ansible_ssh_port: 2200}
  children:
    kube-master:
      hosts:
        node1:
        node2:
    kube-node:
      hosts:
        node3:
    etcd:
      hosts:
        node1:
    k8s-cluster:
      children:
        kube-master:
        kube-node:
    calico-rr:
      hosts: {}
";

#[test]
fn kubespray_older_hosts_yaml_with_old_group_names() {
    let inv = load("hosts.yml", KUBESPRAY_OLD_YAML);
    assert_eq!(
        rows(&inv),
        [
            row("node1", "192.168.0.11", "cp", Some("192.168.0.11")),
            row("node2", "192.168.0.12", "cp", Some("192.168.0.12")),
            row("node3", "192.168.0.13", "worker", Some("192.168.0.13")),
        ]
    );
    assert_eq!(inv.nodes[2].port, Some(2200));
}

#[test]
fn host_ranges_in_ini_and_yaml() {
    let ini = "\
[kube_control_plane]
master[1:3] ansible_user=ops

[kube_node]
node[01:03].example
10.0.0.[11:12] ip=10.0.0.99
";
    let inv = load("inventory.ini", ini);
    let names: Vec<&str> = inv.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "master1",
            "master2",
            "master3",
            "node01.example",
            "node02.example",
            "node03.example",
            "10.0.0.11",
            "10.0.0.12"
        ]
    );
    assert!(inv.nodes[..3].iter().all(|n| n.user.as_deref() == Some("ops")));
    assert_eq!(inv.nodes[6].address, "10.0.0.11");
    assert_eq!(inv.nodes[7].advertise_address.as_deref(), Some("10.0.0.99"));

    let yaml = "\
all:
  children:
    kube_control_plane:
      hosts:
        cp[a:b]:
    kube_node:
      hosts:
        w[08:10]: {ansible_port: 2222}
";
    let inv = load("hosts.yaml", yaml);
    let names: Vec<&str> = inv.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["cpa", "cpb", "w08", "w09", "w10"]);
    assert_eq!(inv.nodes[4].port, Some(2222));
}

#[test]
fn child_groups_and_group_vars() {
    let ini = "\
[dc1_masters]
m1 ansible_host=10.1.0.1
[dc2_masters]
m2 ansible_host=10.2.0.1

[kube_control_plane:children]
dc1_masters
dc2_masters

[kube_node]
w1

[dc2_masters:vars]
ansible_user=dc2admin
[kube_node:vars]
ansible_port=2201
";
    let inv = load("inventory.ini", ini);
    assert_eq!(
        rows(&inv),
        [
            row("m1", "10.1.0.1", "cp", None),
            row("m2", "10.2.0.1", "cp", None),
            row("w1", "w1", "worker", None)
        ]
    );
    assert_eq!(inv.nodes[0].user, None);
    assert_eq!(inv.nodes[1].user.as_deref(), Some("dc2admin"));
    assert_eq!(inv.nodes[2].port, Some(2201));

    // Two groups of one host disagreeing: refused rather than one picked silently.
    let clash = "[kube_control_plane]\nm1\n[etcd]\nm1\n\
                 [kube_control_plane:vars]\nansible_user=a\n[etcd:vars]\nansible_user=b\n";
    let e = inv_err("inventory.ini", clash);
    assert!(e.contains("set ansible_user differently"), "{e}");
}

fn inv_err(name: &str, body: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    Inventory::load(&write(dir.path(), name, body)).unwrap_err().to_string()
}

/// `hapki audit --inventory FILE`: the inventory is refused before anything connects.
fn cli_refuses(name: &str, body: &[u8], needle: &str) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(name);
    std::fs::write(&p, body).unwrap();
    let out = hapki().args(["audit", "--inventory"]).arg(&p).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{name}: {}", text(&out));
    assert!(err.contains(needle), "{name}: want {needle:?} in {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn hostile_inventories_are_one_line_usage_errors() {
    let million = "[kube_control_plane]\nnode[1:1000000]\n";
    cli_refuses("a.ini", million.as_bytes(), "names more than 5000 hosts");
    let yaml_million =
        "all:\n  children:\n    kube_control_plane:\n      hosts:\n        n[0:999999]:\n";
    cli_refuses("a.yaml", yaml_million.as_bytes(), "names more than 5000 hosts");
    // Many lines each under the limit, together over it.
    let many: String = (0..3).map(|i| format!("r{i}-[1:2000]\n")).collect();
    cli_refuses(
        "b.ini",
        format!("[kube_control_plane]\n{many}").as_bytes(),
        "more than 5000 hosts",
    );
    for (bad, needle) in [
        ("node[3:1]", "start comes after the end"),
        ("node[1:3", "'[' without ']'"),
        ("node[1:x]", "numbers or single letters"),
        ("node[01:3]", "same width"),
        ("node[1:3:0]", "stride"),
    ] {
        cli_refuses("r.ini", format!("[kube_control_plane]\n{bad}\n").as_bytes(), needle);
    }
    cli_refuses(
        "h.ini",
        b"[kube_control_plane]\nn[1:2] ansible_host=10.0.0.[1:2]\n",
        "ranges expand only in host names",
    );
    cli_refuses("k.yaml", b"all:\n  hostz:\n    n1:\n", "unknown key \"hostz\"");
    cli_refuses(
        "k2.yaml",
        b"all:\n  children:\n    kube_node:\n      hots: {}\n",
        "all.children.kube_node: unknown key \"hots\"",
    );
    cli_refuses("s.yaml", b"all:\n  hosts: [n1, n2]\n", "expected a mapping of host names");
    cli_refuses(
        "p.yaml",
        b"all:\n  hosts:\n    n1: {ansible_port: [1]}\n",
        "expected a single value",
    );
    cli_refuses("y.yaml", b"all:\n  hosts:\n   n1:\n  - x\n", "check the YAML syntax");
    cli_refuses("d.yaml", b"all:\n  hosts:\n    n1:\n    n1:\n", "duplicate");
    // Billion laughs: aliases that would expand to 10^9 nodes.
    let mut laughs = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for (i, c) in "bcdefghi".chars().enumerate() {
        let p = "abcdefgh".as_bytes()[i] as char;
        laughs.push_str(&format!(
            "{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        ));
    }
    cli_refuses("l.yaml", laughs.as_bytes(), "check the YAML syntax");
    let deep = format!(
        "all:\n{}",
        (1..40)
            .map(|i| format!("{}children:\n{}g{i}:\n", " ".repeat(4 * i - 2), " ".repeat(4 * i)))
            .collect::<String>()
    );
    cli_refuses("deep.yaml", deep.as_bytes(), "nest deeper than 16");
    cli_refuses("big.ini", &vec![b'#'; 5 << 20], "larger than 4 MiB");
    cli_refuses("bin.ini", b"[kube_control_plane]\nn1\xff\n", "not UTF-8");
    cli_refuses("g.ini", b"[kube_control_plane:parents]\nn1\n", "unknown kind \"parents\"");
    cli_refuses(
        "v.ini",
        b"[kube_control_plane]\nansible_host=1.2.3.4\n",
        "starts with the host name",
    );
}

fn sha256sum(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_string()
}

/// An INI inventory with a host range, used for a real push: every control plane but the first
/// (the range's first address) gets the bundle, byte for byte; the first master and the worker
/// are left alone.
#[test]
fn an_ini_inventory_with_a_range_pushes_end_to_end() {
    let Some(tb) = Testbed::up(3, 1) else { return };
    let fx = Fixture::new();
    let bundle = fx.bundle();
    let net = tb.net;
    assert_eq!(tb.nodes.len(), 4, "3 control planes and a worker");
    let ini = format!(
        "[all:vars]\nansible_user=root\nansible_port={port}\n\n\
         [kube_control_plane]\n127.0.{net}.[1:3]\n\n[etcd:children]\nkube_control_plane\n\n\
         [kube_node]\n127.0.{net}.4\n\n[k8s_cluster:children]\nkube_control_plane\nkube_node\n",
        port = tb.port
    );
    let inv = write(&tb.dir, "range-inventory.ini", &ini);
    let out = fx.with_bundle(
        "push",
        &bundle,
        &[
            "--inventory",
            inv.to_str().unwrap(),
            "--known-hosts",
            tb.known_hosts().to_str().unwrap(),
            "--identity",
            tb.identity().to_str().unwrap(),
            "--output",
            "json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let nodes: Vec<(&str, &str)> = report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["node"].as_str().unwrap(), n["status"].as_str().unwrap()))
        .collect();
    let (a2, a3) = (format!("127.0.{net}.2"), format!("127.0.{net}.3"));
    assert_eq!(nodes, [(a2.as_str(), "installed"), (a3.as_str(), "installed")], "{report}");
    for n in &tb.nodes {
        let pki = n.etc_kubernetes().join("pki");
        let should_have = n.address == a2 || n.address == a3;
        for f in SHARED {
            let on_node = pki.join(f);
            if should_have {
                assert_eq!(sha256sum(&on_node), sha256sum(&fx.pki().join(f)), "{} {f}", n.name);
            } else {
                assert!(!on_node.exists(), "{} must be left alone, has {f}", n.name);
            }
        }
    }

    // The rest of the cluster seeded by hand, then audited through a kubespray hosts.yaml:
    // names from the YAML, addresses from ansible_host, the port from all.vars; all four
    // nodes reached and clean.
    let first = &tb.nodes[0];
    let out = fx.with_bundle(
        "push",
        &bundle,
        &[
            "--nodes",
            &format!("{}:{}", first.address, tb.port),
            "--known-hosts",
            tb.known_hosts().to_str().unwrap(),
            "--identity",
            tb.identity().to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let worker_pki = tb.nodes[3].etc_kubernetes().join("pki");
    std::fs::create_dir_all(&worker_pki).unwrap();
    std::fs::copy(fx.pki().join("ca.crt"), worker_pki.join("ca.crt")).unwrap();
    let host = |i: usize| {
        format!(
            "    {}:\n      ansible_host: {}\n      ip: {}\n",
            tb.nodes[i].name, tb.nodes[i].address, tb.nodes[i].address
        )
    };
    let member = |i: usize| format!("        {}:\n", tb.nodes[i].name);
    let yaml = format!(
        "all:\n  hosts:\n{}{}{}{}  children:\n    kube_control_plane:\n      hosts:\n{}{}{}\
         \x20   kube_node:\n      hosts:\n{}    etcd:\n      hosts:\n{}\
         \x20   k8s_cluster:\n      children:\n        kube_control_plane:\n        kube_node:\n\
         \x20   calico_rr:\n      hosts: {{}}\n  vars:\n    ansible_user: root\n    ansible_port: {}\n",
        host(0), host(1), host(2), host(3), member(0), member(1), member(2), member(3), member(0), tb.port
    );
    let yaml_path = write(&tb.dir, "hosts.yaml", &yaml);
    let out = hapki()
        .args(["audit", "--inventory"])
        .arg(&yaml_path)
        .arg("--known-hosts")
        .arg(tb.known_hosts())
        .arg("--identity")
        .arg(tb.identity())
        .args(["--output", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{yaml}\n{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let audited: Vec<&str> =
        report["nodes"].as_array().unwrap().iter().map(|n| n["node"].as_str().unwrap()).collect();
    assert_eq!(audited, ["kubemaster-1", "kubemaster-2", "kubemaster-3", "kubenode-1"], "{report}");
}
