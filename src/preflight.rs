//! `hapki preflight`: everything that would make a join fail, found before the first join.
//!
//! Checks are reported under kubeadm's own preflight names where kubeadm has one (so an
//! operator can match them with `--ignore-preflight-errors`), plus what kubeadm never checks:
//! the shared files identical to the reference, the four key pairs, leaves chaining to the
//! shared CAs, the endpoint, versions, clock skew and CNI configuration on workers.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;

use crate::audit::Reference;
use crate::inventory::Role;
use crate::node::facts::{NodeFacts, PathKind};
use crate::pki::chain::{self, ChainCheck};
use crate::pki::{parse, SHARED_FILES};

/// A preflight finding. `kind` is kubeadm's check name where there is one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub node: String,
    pub file: Option<String>,
    pub kind: String,
    pub message: String,
    /// A warning is reported but does not fail preflight.
    #[serde(skip)]
    pub warning: bool,
}

/// Ports a control-plane join needs free (kubeadm's `Port-N` checks).
pub const CONTROL_PLANE_PORTS: [u16; 6] = [6443, 10250, 10257, 10259, 2379, 2380];
/// A worker join needs only the kubelet port.
pub const WORKER_PORTS: [u16; 1] = [10250];

/// What a node is about to do: the first master is only a source (already initialised).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Joining {
    FirstMaster,
    ControlPlane,
    Worker,
}

impl Joining {
    pub fn from_role(role: Role, first: bool) -> Self {
        match (role, first) {
            (Role::ControlPlane, true) => Joining::FirstMaster,
            (Role::ControlPlane, false) => Joining::ControlPlane,
            (Role::Worker, _) => Joining::Worker,
        }
    }
}

/// Listening TCP sockets from `/proc/net/tcp{,6}`: (address, port).
pub fn listening(proc_net_tcp: &[Vec<u8>]) -> Vec<(IpAddr, u16)> {
    let mut out = Vec::new();
    for table in proc_net_tcp {
        for line in String::from_utf8_lossy(table).lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // local_address is col 1, st is col 3; 0A is LISTEN.
            let (Some(local), Some(st)) = (cols.get(1), cols.get(3)) else { continue };
            if *st != "0A" {
                continue;
            }
            let Some((addr, port)) = local.split_once(':') else { continue };
            let Ok(port) = u16::from_str_radix(port, 16) else { continue };
            if let Some(ip) = parse_proc_addr(addr) {
                out.push((ip, port));
            }
        }
    }
    out
}

/// `/proc/net/tcp` prints addresses as host-order 32-bit words in hex.
fn parse_proc_addr(hex_addr: &str) -> Option<IpAddr> {
    let bytes = hex::decode(hex_addr).ok()?;
    match bytes.len() {
        4 => {
            let w = u32::from_str_radix(hex_addr, 16).ok()?;
            Some(IpAddr::from(w.swap_bytes().to_be_bytes()))
        }
        16 => {
            let mut b = [0u8; 16];
            for (i, chunk) in bytes.chunks(4).enumerate() {
                let w = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
                b[i * 4..i * 4 + 4].copy_from_slice(&w.swap_bytes().to_be_bytes());
            }
            let v6 = std::net::Ipv6Addr::from(b);
            Some(v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)))
        }
        _ => None,
    }
}

/// Whether `port` is taken for a node whose own address is `own`: a listener on that address
/// or on the wildcard. Other loopback addresses belong to other testbed nodes (or other
/// services) and do not block a bind to `own`.
pub fn port_taken(listeners: &[(IpAddr, u16)], own: Option<IpAddr>, port: u16) -> bool {
    listeners
        .iter()
        .any(|(a, p)| *p == port && (a.is_unspecified() || Some(*a) == own || own.is_none()))
}

/// The host part of an endpoint `host:port`, and whether it had a port.
pub fn split_endpoint(endpoint: &str) -> (&str, Option<&str>) {
    if let Some(rest) = endpoint.strip_prefix('[') {
        if let Some((h, p)) = rest.split_once("]:") {
            return (h, Some(p));
        }
        return (rest.trim_end_matches(']'), None);
    }
    match endpoint.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, Some(p)),
        _ => (endpoint, None),
    }
}

/// Per-node inputs besides the facts.
#[derive(Debug, Clone)]
pub struct NodeContext<'a> {
    pub node: &'a str,
    pub joining: Joining,
    /// The node's own address (for port checks).
    pub address: Option<IpAddr>,
    /// The operator's clock when the facts were read (Unix seconds).
    pub operator_time: i64,
}

/// Checks one node. `reference` holds the shared files' hashes and CA certificates.
pub fn check_node(ctx: &NodeContext<'_>, facts: &NodeFacts, reference: &Reference) -> Vec<Problem> {
    let mut out = Vec::new();
    let node = ctx.node;
    let mut p = |file: Option<&str>, kind: &str, message: String| {
        out.push(Problem {
            node: node.into(),
            file: file.map(str::to_string),
            kind: kind.into(),
            message,
            warning: false,
        })
    };

    // kubeadm's own checks, under its names.
    if ctx.joining != Joining::FirstMaster {
        let ports: &[u16] =
            if ctx.joining == Joining::Worker { &WORKER_PORTS } else { &CONTROL_PLANE_PORTS };
        let listeners = listening(&facts.proc_net_tcp);
        for &port in ports {
            if port_taken(&listeners, ctx.address, port) {
                p(None, &format!("Port-{port}"), format!("port {port} is in use on the node: stop what listens there (ss -ltnp 'sport = :{port}')"));
            }
        }
        for (m, st) in &facts.manifests {
            if ctx.joining == Joining::ControlPlane && st.kind != PathKind::Missing {
                p(Some(m), &format!("FileAvailable--etc-kubernetes-manifests-{m}"), format!("/etc/kubernetes/manifests/{m} exists: the node was set up before; run kubeadm reset on it first"));
            }
        }
        if ctx.joining == Joining::ControlPlane {
            if let Some(entries) = facts.etcd_data_entries.as_ref().filter(|e| !e.is_empty()) {
                p(None, "DirAvailable--var-lib-etcd", format!("/var/lib/etcd is not empty ({}): a stale etcd member; run kubeadm reset or empty it", entries.join(" ")));
            }
        }
        for conf in ["kubelet.conf", "bootstrap-kubelet.conf"] {
            if facts.kubeconfigs.get(conf).is_some_and(|s| s.kind != PathKind::Missing) {
                p(Some(conf), &format!("FileAvailable--etc-kubernetes-{conf}"), format!("/etc/kubernetes/{conf} exists: the node already joined once; run kubeadm reset on it first"));
            }
        }
        if facts.kubeconfigs.get("admin.conf").is_some_and(|s| s.kind != PathKind::Missing) {
            p(Some("admin.conf"), "admin-conf", "/etc/kubernetes/admin.conf exists on a joining node: kubeadm would skip token discovery and use it; remove it".into());
        }
    }

    match ctx.joining {
        Joining::Worker => {
            if facts.shared.get("ca.crt").is_some_and(|s| s.kind != PathKind::Missing) {
                p(Some("ca.crt"), "FileAvailable--etc-kubernetes-pki-ca.crt", "/etc/kubernetes/pki/ca.crt exists on a worker: kubeadm join refuses it; remove it (the join writes it)".into());
            }
            for f in SHARED_FILES.iter().filter(|f| f.name.ends_with(".key")) {
                if facts.shared.get(f.name).is_some_and(|s| s.kind != PathKind::Missing) {
                    p(Some(f.name), "key-on-worker", format!("a shared private key ({}) is on a worker: remove it; workers need none", f.name));
                }
            }
            if facts.cni_entries.as_ref().is_none_or(|e| e.is_empty()) {
                p(None, "cni-config", "no CNI configuration in /etc/cni/net.d: the node will stay NotReady; install the CNI's config (join --copy-cni-config copies the first master's)".into());
            }
        }
        Joining::ControlPlane | Joining::FirstMaster => {
            shared_files(&mut p, facts, reference);
        }
    }

    // Clock skew breaks fresh certificates (not yet valid on a node behind).
    if let Some(t) = facts.time {
        let skew = (t - ctx.operator_time).abs();
        if skew > 60 {
            p(None, "clock-skew", format!("the node's clock is {skew}s off the operator's: fix NTP (fresh certificates would be not yet valid)"));
        }
    }
    if facts.kubeadm_version.is_none() {
        p(None, "kubeadm", "kubeadm is not installed (or not on PATH): install it (the offline bundle can carry it)".into());
    }
    if facts.kubelet_version.is_none() {
        p(None, "kubelet", "kubelet is not installed (or not on PATH): install it".into());
    }
    out
}

fn shared_files(
    p: &mut dyn FnMut(Option<&str>, &str, String),
    facts: &NodeFacts,
    reference: &Reference,
) {
    for f in SHARED_FILES {
        match facts.shared.get(f.name) {
            Some(st) if st.kind == PathKind::File => {
                if let (Some(h), Some(r)) = (&st.sha256, reference.sha256.get(f.name)) {
                    if h != r {
                        p(Some(f.name), "shared-files", format!("{} differs from {}: push the bundle (hapki push, --replace if it belongs to another CA)", f.name, reference.source));
                    }
                }
            }
            Some(st) if st.kind != PathKind::Missing => {
                p(Some(f.name), "shared-files", format!("{} is not a regular file: replace it with the real file (hapki push --replace)", f.name))
            }
            _ => p(Some(f.name), "shared-files", format!("{} is missing: push the bundle to this node first (hapki push)", f.name)),
        }
    }
    // The four pairs, from public halves computed on the node.
    let spki_of_cert = |name: &str| {
        facts
            .certificates
            .get(name)
            .and_then(|pem| parse::parse_certificate(name, pem).ok())
            .map(|c| c.public.spki_sha256())
    };
    let pairs = [
        ("ca.crt", "ca.key"),
        ("front-proxy-ca.crt", "front-proxy-ca.key"),
        ("etcd/ca.crt", "etcd/ca.key"),
    ];
    for (crt, key) in pairs {
        if let (Some(c), Some(k)) = (spki_of_cert(crt), facts.public_key_sha256.get(key)) {
            if &c != k {
                p(Some(key), "key-pair", format!("{key} does not match {crt}: kubeadm would fail mid-join (provided PrivateKey doesn't match parent's PublicKey); push the right pair"));
            }
        }
    }
    if let (Some(k), Some(pb)) =
        (facts.public_key_sha256.get("sa.key"), facts.public_key_sha256.get("sa.pub"))
    {
        if k != pb {
            p(Some("sa.key"), "key-pair", "sa.key does not match sa.pub: every ServiceAccount token would break; push the right pair".into());
        }
    }
    // Leaves from an earlier attempt must chain to the shared CAs.
    let shared: BTreeMap<&str, ()> = SHARED_FILES.iter().map(|f| (f.name, ())).collect();
    for (name, pem) in facts.certificates.iter().filter(|(n, _)| !shared.contains_key(n.as_str())) {
        let ca = chain::expected_ca(name);
        let Some(ca_pem) = reference.ca_pem.get(ca).or_else(|| facts.certificates.get(ca)) else {
            continue;
        };
        if let ChainCheck::ForeignIssuer(issuer) = chain::check_issued_by(pem, ca_pem) {
            p(Some(name), "leaf-chain", format!("{name} is signed by another CA ({issuer}): kubeadm join would fail (not signed by corresponding CA); remove apiserver.* and etcd/peer.*, keep the shared files"));
        }
    }
}

/// Checks across nodes: kubeadm and kubelet versions agree everywhere, the endpoint is a DNS
/// name with a port and resolves on every node.
pub fn check_cluster(endpoint: Option<&str>, nodes: &[(&str, &NodeFacts)]) -> Vec<Problem> {
    let mut out = Vec::new();
    let cluster = |kind: &str, message: String| Problem {
        node: "*".into(),
        file: None,
        kind: kind.into(),
        warning: kind == "endpoint-ip",
        message,
    };
    match endpoint {
        None => out.push(cluster("endpoint", "no control_plane_endpoint in the inventory: an HA cluster needs one (a DNS name with a port)".into())),
        Some(ep) => {
            let (host, port) = split_endpoint(ep);
            if port.is_none_or(|p| p.parse::<u16>().is_err()) {
                out.push(cluster("endpoint", format!("control_plane_endpoint {ep} has no valid port: write it as NAME:6443")));
            }
            if host.parse::<IpAddr>().is_ok() {
                out.push(cluster("endpoint-ip", format!("control_plane_endpoint {ep} is an IP address: it can never change later; prefer a DNS name")));
            } else {
                for (node, f) in nodes {
                    if f.endpoint_addresses.as_ref().is_some_and(|a| a.is_empty()) {
                        out.push(Problem {
                            node: node.to_string(),
                            file: None,
                            kind: "endpoint-dns".into(),
                            message: format!("{host} does not resolve on the node: add it to DNS or /etc/hosts"),
                            warning: false,
                        });
                    }
                }
            }
        }
    }
    for (what, get) in [
        (
            "kubeadm",
            (|f: &NodeFacts| f.kubeadm_version.clone()) as fn(&NodeFacts) -> Option<String>,
        ),
        ("kubelet", |f: &NodeFacts| f.kubelet_version.clone()),
    ] {
        let versions: BTreeMap<String, Vec<&str>> = nodes
            .iter()
            .filter_map(|(n, f)| get(f).map(|v| (v, *n)))
            .fold(BTreeMap::new(), |mut m, (v, n)| {
                m.entry(v).or_default().push(n);
                m
            });
        if versions.len() > 1 {
            let list: Vec<String> =
                versions.iter().map(|(v, ns)| format!("{v} on {}", ns.join(","))).collect();
            out.push(cluster(
                &format!("{what}-version"),
                format!(
                    "{what} versions differ: {}; install the same version everywhere",
                    list.join("; ")
                ),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tcp_listeners() {
        let table = b"  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0101007F:0950 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1\n   1: 00000000:1A0A 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1\n   2: 0201007F:0016 0101007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 1 1\n".to_vec();
        let l = listening(&[table]);
        assert_eq!(
            l,
            vec![("127.0.1.1".parse().unwrap(), 2384), ("0.0.0.0".parse().unwrap(), 6666)]
        );
        let own: IpAddr = "127.0.1.2".parse().unwrap();
        assert!(!port_taken(&l, Some(own), 2384), "node 1's etcd must not fail node 2");
        assert!(port_taken(&l, Some("127.0.1.1".parse().unwrap()), 2384));
        assert!(port_taken(&l, Some(own), 6666), "wildcard listeners block everyone");
    }

    #[test]
    fn endpoints() {
        assert_eq!(split_endpoint("kubeapi.test:6443"), ("kubeapi.test", Some("6443")));
        assert_eq!(split_endpoint("[fd00::1]:6443"), ("fd00::1", Some("6443")));
        assert_eq!(split_endpoint("kubeapi"), ("kubeapi", None));
        let ip = check_cluster(Some("10.0.0.1:6443"), &[]);
        assert!(ip.iter().any(|p| p.kind == "endpoint-ip"));
        let noport = check_cluster(Some("kubeapi.test"), &[]);
        assert!(noport.iter().any(|p| p.kind == "endpoint"));
        assert!(check_cluster(Some("kubeapi.test:6443"), &[]).is_empty());
        assert!(ip.iter().all(|p| p.warning));
    }
}

/// One node to check.
#[derive(Debug, Clone)]
pub struct PreflightTarget {
    pub target: crate::transport::Target,
    pub role: Role,
    /// The node's own IP (inventory address or advertise address), for the port checks.
    pub address: Option<IpAddr>,
}

/// Per-node summary for the report.
#[derive(Debug, Clone, Serialize)]
pub struct NodeSummary {
    pub node: String,
    pub role: String,
    pub reachable: bool,
    pub problems: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct PreflightReport {
    pub ok: bool,
    pub reference: String,
    pub nodes: Vec<NodeSummary>,
    pub problems: Vec<Problem>,
    pub warnings: Vec<Problem>,
    /// The first master's facts (the join needs its ca.crt when there is no bundle).
    #[serde(skip)]
    pub first_master_ca: Option<Vec<u8>>,
}

/// Reads every node's facts in parallel (read-only) and runs every check.
pub fn run(
    targets: &[PreflightTarget],
    endpoint: Option<&str>,
    transport: &dyn crate::transport::Transport,
    reference: Option<Reference>,
    parallel: usize,
    paths: &crate::node::NodePaths,
) -> PreflightReport {
    let resolve = endpoint.map(|e| split_endpoint(e).0.to_string());
    let operator_time = time::OffsetDateTime::now_utc().unix_timestamp();
    let gathered = crate::transport::for_each_parallel(targets, parallel.max(1), |t| {
        transport
            .connect(&t.target)
            .map_err(|e| e.to_string())
            .and_then(|mut s| crate::node::read_facts(s.as_mut(), paths, resolve.as_deref()))
    });
    let first = targets.iter().position(|t| t.role == Role::ControlPlane);
    let first_facts = first.and_then(|i| gathered[i].as_ref().ok());
    let reference = reference
        .or_else(|| {
            first.zip(first_facts).map(|(i, f)| Reference::from_facts(&targets[i].target.name, f))
        })
        .unwrap_or_else(|| Reference { source: "none".into(), ..Default::default() });
    let mut all = Vec::new();
    let mut nodes = Vec::new();
    let mut reachable = Vec::new();
    for (i, (t, facts)) in targets.iter().zip(&gathered).enumerate() {
        let name = t.target.name.as_str();
        let problems = match facts {
            Ok(f) => {
                reachable.push((name, f));
                let ctx = NodeContext {
                    node: name,
                    joining: Joining::from_role(t.role, Some(i) == first),
                    address: t.address,
                    operator_time,
                };
                check_node(&ctx, f, &reference)
            }
            Err(e) => vec![Problem {
                node: name.into(),
                file: None,
                kind: "unreachable".into(),
                message: e.clone(),
                warning: false,
            }],
        };
        nodes.push(NodeSummary {
            node: name.into(),
            role: t.role.to_string(),
            reachable: facts.is_ok(),
            problems: problems.iter().filter(|p| !p.warning).count(),
        });
        all.extend(problems);
    }
    all.extend(check_cluster(endpoint, &reachable));
    let (warnings, problems): (Vec<_>, Vec<_>) = all.into_iter().partition(|p| p.warning);
    PreflightReport {
        ok: problems.is_empty(),
        reference: reference.source,
        nodes,
        problems,
        warnings,
        first_master_ca: first_facts.and_then(|f| f.certificates.get("ca.crt").cloned()),
    }
}

impl PreflightReport {
    /// With `join --copy-cni-config`, a worker without CNI config is about to get the first
    /// master's: its finding becomes a warning.
    pub fn accept_missing_cni(&mut self) {
        let (cni, rest): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.problems).into_iter().partition(|p| p.kind == "cni-config");
        self.problems = rest;
        for mut p in cni {
            p.warning = true;
            p.message = format!("{} (will be copied by --copy-cni-config)", p.message);
            if let Some(n) = self.nodes.iter_mut().find(|n| n.node == p.node) {
                n.problems = n.problems.saturating_sub(1);
            }
            self.warnings.push(p);
        }
        self.ok = self.problems.is_empty();
    }
}
