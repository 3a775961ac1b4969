//! `hapki preflight`: everything that would make a join fail, found before the first join.
//!
//! Checks are reported under kubeadm's own preflight names where kubeadm has one (so an
//! operator can match them with `--ignore-preflight-errors`), plus what kubeadm never checks:
//! the shared files identical to the reference, the four key pairs, leaves chaining to the
//! shared CAs, the endpoint, versions, clock skew and CNI configuration on workers.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;

use crate::cluster::{ClusterNode, Reference};
use crate::error::Category;
use crate::finding::{Finding, FindingKind as Kind};
use crate::inventory::Role;
use crate::node::facts::{NodeFacts, PathKind};
use crate::node::FactsScope;
use crate::pki::chain::{self, ChainCheck};
use crate::pki::{parse, SHARED_FILES};

/// Ports a control-plane join needs free (kubeadm's `Port-N` checks).
pub(crate) const CONTROL_PLANE_PORTS: [u16; 6] = [6443, 10250, 10257, 10259, 2379, 2380];
/// A worker join needs only the kubelet port.
pub(crate) const WORKER_PORTS: [u16; 1] = [10250];

/// What a node is about to do: the first master is only a source (already initialised).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Joining {
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
pub(crate) fn port_taken(listeners: &[(IpAddr, u16)], own: Option<IpAddr>, port: u16) -> bool {
    listeners
        .iter()
        .any(|(a, p)| *p == port && (a.is_unspecified() || Some(*a) == own || own.is_none()))
}

/// The host part of an endpoint `host:port`, and whether it had a port.
pub(crate) fn split_endpoint(endpoint: &str) -> (&str, Option<&str>) {
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
pub(crate) struct NodeContext<'a> {
    pub node: &'a str,
    pub joining: Joining,
    /// The node's own address (for port checks).
    pub address: Option<IpAddr>,
    /// The operator's clock when the facts were read (Unix seconds).
    pub operator_time: i64,
}

/// The findings of one node as they are found.
struct NodeFindings<'a> {
    node: &'a str,
    list: Vec<Finding>,
}

impl NodeFindings<'_> {
    fn add(&mut self, file: Option<&str>, kind: Kind, message: impl Into<String>) {
        self.list.push(Finding::new(self.node, file, kind, message));
    }
}

/// Checks one node. `reference` holds the shared files' hashes and CA certificates.
pub(crate) fn check_node(
    ctx: &NodeContext<'_>,
    facts: &NodeFacts,
    reference: &Reference,
) -> Vec<Finding> {
    let mut found = NodeFindings { node: ctx.node, list: Vec::new() };
    if ctx.joining != Joining::FirstMaster {
        kubeadm_checks(&mut found, ctx, facts);
    }
    match ctx.joining {
        Joining::Worker => worker_files(&mut found, facts),
        Joining::ControlPlane | Joining::FirstMaster => {
            shared_files(&mut found, facts, reference);
            key_pairs(&mut found, facts);
            leaf_chains(&mut found, facts, reference);
        }
    }
    // Clock skew breaks fresh certificates (not yet valid on a node behind).
    if let Some(t) = facts.time {
        let skew = (t - ctx.operator_time).abs();
        if skew > 60 {
            found.add(None, Kind::ClockSkew, format!("the node's clock is {skew}s off the operator's: fix NTP (fresh certificates would be not yet valid)"));
        }
    }
    if facts.kubeadm_version.is_none() {
        found.add(None, Kind::Kubeadm, "kubeadm is not installed (or not on PATH): install it (the offline bundle can carry it)");
    }
    if facts.kubelet_version.is_none() {
        found.add(None, Kind::Kubelet, "kubelet is not installed (or not on PATH): install it");
    }
    found.list
}

/// kubeadm's own join checks, under its names: free ports, no manifests, etcd data or
/// kubeconfigs from an earlier setup.
fn kubeadm_checks(found: &mut NodeFindings, ctx: &NodeContext<'_>, facts: &NodeFacts) {
    let ports: &[u16] =
        if ctx.joining == Joining::Worker { &WORKER_PORTS } else { &CONTROL_PLANE_PORTS };
    let listeners = listening(&facts.proc_net_tcp);
    for &port in ports {
        if port_taken(&listeners, ctx.address, port) {
            found.add(None, Kind::Port(port), format!("port {port} is in use on the node: stop what listens there (ss -ltnp 'sport = :{port}')"));
        }
    }
    if ctx.joining == Joining::ControlPlane {
        let present = facts.manifests.iter().filter(|(_, st)| st.kind != PathKind::Missing);
        for (m, _) in present {
            found.add(Some(m), Kind::ManifestExists(m.clone()), format!("/etc/kubernetes/manifests/{m} exists: the node was set up before; run kubeadm reset on it first"));
        }
        if let Some(entries) = facts.etcd_data_entries.as_ref().filter(|e| !e.is_empty()) {
            found.add(None, Kind::EtcdDataExists, format!("/var/lib/etcd is not empty ({}): a stale etcd member; run kubeadm reset or empty it", entries.join(" ")));
        }
    }
    let exists =
        |conf: &str| facts.kubeconfigs.get(conf).is_some_and(|s| s.kind != PathKind::Missing);
    for conf in ["kubelet.conf", "bootstrap-kubelet.conf"].into_iter().filter(|c| exists(c)) {
        found.add(Some(conf), Kind::KubeconfigExists(conf.into()), format!("/etc/kubernetes/{conf} exists: the node already joined once; run kubeadm reset on it first"));
    }
    if exists("admin.conf") {
        found.add(Some("admin.conf"), Kind::AdminConf, "/etc/kubernetes/admin.conf exists on a joining node: kubeadm would skip token discovery and use it; remove it");
    }
}

/// A worker gets ca.crt from the join itself, and no shared key ever; it needs CNI config.
fn worker_files(found: &mut NodeFindings, facts: &NodeFacts) {
    if facts.shared.get("ca.crt").is_some_and(|s| s.kind != PathKind::Missing) {
        found.add(Some("ca.crt"), Kind::WorkerCaExists, "/etc/kubernetes/pki/ca.crt exists on a worker: kubeadm join refuses it; remove it (the join writes it)");
    }
    for f in SHARED_FILES.iter().filter(|f| f.name.ends_with(".key")) {
        if facts.shared.get(f.name).is_some_and(|s| s.kind != PathKind::Missing) {
            found.add(
                Some(f.name),
                Kind::KeyOnWorker,
                format!(
                    "a shared private key ({}) is on a worker: remove it; workers need none",
                    f.name
                ),
            );
        }
    }
    if facts.cni_entries.as_ref().is_none_or(|e| e.is_empty()) {
        found.add(None, Kind::CniConfig, "no CNI configuration in /etc/cni/net.d: the node will stay NotReady; install the CNI's config (join --copy-cni-config copies the first master's)");
    }
}

/// The eight shared files: present, regular, and identical to the reference's.
fn shared_files(found: &mut NodeFindings, facts: &NodeFacts, reference: &Reference) {
    for f in SHARED_FILES {
        match facts.shared.get(f.name) {
            Some(st) if st.kind == PathKind::File => {
                if let (Some(h), Some(r)) = (&st.sha256, reference.sha256.get(f.name)) {
                    if h != r {
                        found.add(Some(f.name), Kind::SharedFiles, format!("{} differs from {}: push the bundle (hapki push, --replace if it belongs to another CA)", f.name, reference.source));
                    }
                }
            }
            Some(st) if st.kind != PathKind::Missing => {
                found.add(Some(f.name), Kind::SharedFiles, format!("{} is not a regular file: replace it with the real file (hapki push --replace)", f.name))
            }
            _ => found.add(Some(f.name), Kind::SharedFiles, format!("{} is missing: push the bundle to this node first (hapki push)", f.name)),
        }
    }
}

/// The four key pairs, from public halves computed on the node.
fn key_pairs(found: &mut NodeFindings, facts: &NodeFacts) {
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
                found.add(Some(key), Kind::KeyPair, format!("{key} does not match {crt}: kubeadm would fail mid-join (provided PrivateKey doesn't match parent's PublicKey); push the right pair"));
            }
        }
    }
    if let (Some(k), Some(pb)) =
        (facts.public_key_sha256.get("sa.key"), facts.public_key_sha256.get("sa.pub"))
    {
        if k != pb {
            found.add(Some("sa.key"), Kind::KeyPair, "sa.key does not match sa.pub: every ServiceAccount token would break; push the right pair");
        }
    }
}

/// Leaves from an earlier attempt must chain to the shared CAs.
fn leaf_chains(found: &mut NodeFindings, facts: &NodeFacts, reference: &Reference) {
    let shared = |n: &str| SHARED_FILES.iter().any(|f| f.name == n);
    for (name, pem) in facts.certificates.iter().filter(|(n, _)| !shared(n)) {
        let ca = chain::expected_ca(name);
        let Some(ca_pem) = reference.ca_pem.get(ca).or_else(|| facts.certificates.get(ca)) else {
            continue;
        };
        if let ChainCheck::ForeignIssuer(issuer) = chain::check_issued_by(pem, ca_pem) {
            found.add(Some(name), Kind::LeafChain, format!("{name} is signed by another CA ({issuer}): kubeadm join would fail (not signed by corresponding CA); remove apiserver.* and etcd/peer.*, keep the shared files"));
        }
    }
}

/// Checks across nodes: kubeadm and kubelet versions agree everywhere, the endpoint is a DNS
/// name with a port and resolves on every node.
pub(crate) fn check_cluster(endpoint: Option<&str>, nodes: &[(&str, &NodeFacts)]) -> Vec<Finding> {
    let mut out = endpoint_findings(endpoint, nodes);
    let kubeadm = |f: &NodeFacts| f.kubeadm_version.clone();
    let kubelet = |f: &NodeFacts| f.kubelet_version.clone();
    out.extend(version_skew("kubeadm", Kind::KubeadmVersion, nodes, &kubeadm));
    out.extend(version_skew("kubelet", Kind::KubeletVersion, nodes, &kubelet));
    out
}

fn endpoint_findings(endpoint: Option<&str>, nodes: &[(&str, &NodeFacts)]) -> Vec<Finding> {
    let cluster = |kind, message: String| Finding::new("*", None, kind, message);
    let Some(ep) = endpoint else {
        return vec![cluster(Kind::Endpoint, "no control_plane_endpoint in the inventory: an HA cluster needs one (a DNS name with a port)".into())];
    };
    let mut out = Vec::new();
    let (host, port) = split_endpoint(ep);
    if port.is_none_or(|p| p.parse::<u16>().is_err()) {
        out.push(cluster(
            Kind::Endpoint,
            format!("control_plane_endpoint {ep} has no valid port: write it as NAME:6443"),
        ));
    }
    if host.parse::<IpAddr>().is_ok() {
        out.push(cluster(Kind::EndpointIp, format!("control_plane_endpoint {ep} is an IP address: it can never change later; prefer a DNS name")).warning());
        return out;
    }
    for (node, f) in nodes {
        if f.endpoint_addresses.as_ref().is_some_and(|a| a.is_empty()) {
            let message =
                format!("{host} does not resolve on the node: add it to DNS or /etc/hosts");
            out.push(Finding::new(*node, None, Kind::EndpointDns, message));
        }
    }
    out
}

/// One finding when `what`'s version differs between nodes, listing which node has which.
fn version_skew(
    what: &str,
    kind: Kind,
    nodes: &[(&str, &NodeFacts)],
    version: &dyn Fn(&NodeFacts) -> Option<String>,
) -> Option<Finding> {
    let mut by_version: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for (n, f) in nodes {
        if let Some(v) = version(f) {
            by_version.entry(v).or_default().push(n);
        }
    }
    if by_version.len() < 2 {
        return None;
    }
    let list: Vec<String> =
        by_version.iter().map(|(v, ns)| format!("{v} on {}", ns.join(","))).collect();
    let message =
        format!("{what} versions differ: {}; install the same version everywhere", list.join("; "));
    Some(Finding::new("*", None, kind, message))
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
    pub problems: Vec<Finding>,
    pub warnings: Vec<Finding>,
    /// The first master's ca.crt (the join pins its hash when there is no bundle).
    #[serde(skip)]
    pub first_master_ca: Option<Vec<u8>>,
}

/// Reads every node's facts in parallel (read-only) and runs every check.
pub fn run(
    nodes: &[ClusterNode],
    endpoint: Option<&str>,
    transport: &dyn crate::transport::Transport,
    reference: Option<Reference>,
    parallel: usize,
    paths: &crate::node::NodePaths,
) -> PreflightReport {
    let resolve = endpoint.map(|e| split_endpoint(e).0.to_string());
    let operator_time = time::OffsetDateTime::now_utc().unix_timestamp();
    let scope = FactsScope::Join { resolve: resolve.as_deref() };
    let gathered =
        crate::cluster::gather_facts(nodes, transport, parallel, paths, scope, &|_| Vec::new());
    let first = crate::cluster::first_master(nodes);
    let reference = Reference::or_first_master(reference, nodes, &gathered);
    let mut all = Vec::new();
    let mut summaries = Vec::new();
    let mut reachable = Vec::new();
    for (i, (n, facts)) in nodes.iter().zip(&gathered).enumerate() {
        let found = match facts {
            Ok(f) => {
                reachable.push((n.name(), f));
                let ctx = NodeContext {
                    node: n.name(),
                    joining: Joining::from_role(n.role, Some(i) == first),
                    address: n.own_ip(),
                    operator_time,
                };
                check_node(&ctx, f, &reference)
            }
            Err(e) => {
                let message = crate::transport::escape_node_text(&e.to_string(), false);
                vec![Finding::unreachable(
                    n.name(),
                    crate::error::Categorized::category(e),
                    message,
                )]
            }
        };
        summaries.push(NodeSummary {
            node: n.name().into(),
            role: n.role.to_string(),
            reachable: facts.is_ok(),
            problems: found.iter().filter(|p| !p.is_warning()).count(),
        });
        all.extend(found);
    }
    all.extend(check_cluster(endpoint, &reachable));
    let first_facts = first.and_then(|i| gathered[i].as_ref().ok());
    let (warnings, problems): (Vec<_>, Vec<_>) = all.into_iter().partition(Finding::is_warning);
    PreflightReport {
        ok: problems.is_empty(),
        reference: reference.source,
        nodes: summaries,
        problems,
        warnings,
        first_master_ca: first_facts.and_then(|f| f.certificates.get("ca.crt").cloned()),
    }
}

impl PreflightReport {
    /// What the exit code says: `None` when clean, [`Category::Findings`] for problems, or the
    /// category of an unread node's failure when it ranks higher (a changed host key: exit 4).
    pub fn category(&self) -> Option<Category> {
        crate::finding::category(&self.problems)
    }

    /// With `join --copy-cni-config`, a worker without CNI config is about to get the first
    /// master's: its finding becomes a warning.
    pub fn accept_missing_cni(&mut self) {
        let (cni, rest): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.problems).into_iter().partition(|p| p.kind == Kind::CniConfig);
        self.problems = rest;
        for mut p in cni {
            p.message = format!("{} (will be copied by --copy-cni-config)", p.message);
            if let Some(n) = self.nodes.iter_mut().find(|n| n.node == p.node) {
                n.problems = n.problems.saturating_sub(1);
            }
            self.warnings.push(p.warning());
        }
        self.ok = self.problems.is_empty();
    }
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
        assert!(ip.iter().any(|p| p.kind == Kind::EndpointIp));
        let noport = check_cluster(Some("kubeapi.test"), &[]);
        assert!(noport.iter().any(|p| p.kind == Kind::Endpoint));
        assert!(check_cluster(Some("kubeapi.test:6443"), &[]).is_empty());
        assert!(ip.iter().all(|p| p.is_warning()));
    }

    #[test]
    fn versions_that_differ_are_one_cluster_finding_naming_each_node() {
        let f = |v: &str| {
            let mut f = NodeFacts::default();
            f.kubeadm_version = Some(v.into());
            f.kubelet_version = Some("v1.31.2".into());
            f
        };
        let (a, b) = (f("v1.31.2"), f("v1.30.0"));
        let out = check_cluster(Some("kubeapi.test:6443"), &[("m1", &a), ("m2", &b)]);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].kind.to_string(), "kubeadm-version");
        assert!(out[0].message.contains("v1.30.0 on m2; v1.31.2 on m1"), "{}", out[0].message);
    }
}
