//! The cluster as the connecting commands see it: its nodes ([`ClusterNode`]), what every node
//! is compared against ([`Reference`]: a verified bundle, or the first master's files), and
//! reading every node's facts in parallel (`gather_facts`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use crate::bundle::{ManifestArtifact, VerifiedBundle};
use crate::inventory::Role;
use crate::node::facts::NodeFacts;
use crate::node::{FactsScope, NodeError, NodePaths};
use crate::pki::fingerprint::sha256_hex;
use crate::transport::{Target, Transport};

/// One node chosen for a command: how to reach it, its role, and its addresses.
#[derive(Debug, Clone)]
pub struct ClusterNode {
    pub target: Target,
    pub role: Role,
    /// The inventory address (or the `--nodes` host).
    pub address: String,
    /// The inventory's `advertise_address`, when it sets one.
    pub advertise_address: Option<String>,
}

impl ClusterNode {
    pub fn name(&self) -> &str {
        &self.target.name
    }

    /// The node's own IP (its advertise address, else its address when that is an IP): the
    /// port checks look for listeners on it.
    pub fn own_ip(&self) -> Option<IpAddr> {
        self.advertise_address.as_deref().unwrap_or(&self.address).parse().ok()
    }

    /// What `kubeadm join --apiserver-advertise-address` gets: the inventory's advertise
    /// address, else the address if it is an IP that is not loopback (kubeadm takes only an
    /// IP and refuses a loopback one); otherwise nothing, and kubeadm's own default-route
    /// detection decides.
    pub fn join_advertise_address(&self) -> Option<String> {
        self.advertise_address.clone().or_else(|| {
            let ip = self.address.parse::<IpAddr>().ok()?;
            (!ip.is_loopback()).then(|| self.address.clone())
        })
    }
}

/// The first master: the first control plane in `nodes` (inventories list it first).
pub fn first_master(nodes: &[ClusterNode]) -> Option<usize> {
    nodes.iter().position(|n| n.role == Role::ControlPlane)
}

/// Every node's facts, read in parallel over `transport` (read-only), in `nodes` order. A node
/// of role R also describes `artifact_dests(R)` (the facts script's artifact arguments).
pub(crate) fn gather_facts(
    nodes: &[ClusterNode],
    transport: &dyn Transport,
    parallel: usize,
    paths: &NodePaths,
    scope: FactsScope<'_>,
    artifact_dests: &(dyn Fn(Role) -> Vec<String> + Sync),
) -> Vec<Result<NodeFacts, NodeError>> {
    crate::transport::for_each_parallel(nodes, parallel.max(1), |n| {
        let args = artifact_dests(n.role);
        let dests: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut session = transport.connect_once(&n.target)?;
        crate::node::read_facts_with(session.as_mut(), paths, scope, &dests)
    })
}

/// What every node is compared against: the shared files' hashes and the CA certificates.
#[derive(Debug, Clone, Default)]
pub struct Reference {
    /// Where it came from: `bundle <path>`, `node <name>`, or `none (…)`.
    pub source: String,
    /// Relative name → SHA-256 of the file bytes.
    pub sha256: BTreeMap<String, String>,
    /// CA certificate PEMs by relative name (`ca.crt`, `front-proxy-ca.crt`, `etcd/ca.crt`).
    pub ca_pem: BTreeMap<String, Vec<u8>>,
    /// Artifacts a bundle installs (checked on the nodes whose role gets them).
    pub artifacts: Vec<ManifestArtifact>,
}

impl Reference {
    /// A reference from the eight files' bytes (a verified bundle, or local files).
    pub fn from_files<'a>(
        source: impl Into<String>,
        files: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Self {
        let mut r = Reference { source: source.into(), ..Default::default() };
        for (name, bytes) in files {
            r.sha256.insert(name.to_string(), sha256_hex(bytes));
            if name.ends_with(".crt") {
                r.ca_pem.insert(name.to_string(), bytes.to_vec());
            }
        }
        r
    }

    /// A verified bundle's files and artifacts.
    pub fn from_bundle(path: &Path, b: &VerifiedBundle) -> Self {
        let mut r = Reference::from_files(
            format!("bundle {}", path.display()),
            b.files.iter().map(|f| (f.name.as_str(), f.bytes.as_slice())),
        );
        r.artifacts = b.manifest.artifacts.clone();
        r
    }

    /// A reference from one node's facts: its hashes, and the CA certificates it sent.
    pub fn from_facts(node: &str, facts: &NodeFacts) -> Self {
        let mut r = Reference { source: format!("node {node}"), ..Default::default() };
        for (name, st) in &facts.shared {
            if let Some(h) = &st.sha256 {
                r.sha256.insert(name.clone(), h.clone());
            }
            if let Some(pem) = facts.certificates.get(name) {
                r.ca_pem.insert(name.clone(), pem.clone());
            }
        }
        r
    }

    /// `given` (a bundle), else the first master's files, else an empty reference saying why.
    pub fn or_first_master(
        given: Option<Reference>,
        nodes: &[ClusterNode],
        facts: &[Result<NodeFacts, NodeError>],
    ) -> Self {
        if let Some(r) = given {
            return r;
        }
        let Some(i) = first_master(nodes) else {
            return Reference::none("none (no control-plane node)");
        };
        match &facts[i] {
            Ok(f) => Reference::from_facts(nodes[i].name(), f),
            Err(_) => Reference::none("none (first master unreachable)"),
        }
    }

    fn none(source: &str) -> Self {
        Reference { source: source.into(), ..Default::default() }
    }

    /// The artifact destinations a node of `role` should hold.
    pub fn artifact_dests(&self, role: Role) -> Vec<&str> {
        self.artifacts.iter().filter(|a| a.on_node(role)).map(|a| a.dest.as_str()).collect()
    }

    /// [`Reference::artifact_dests`] as the facts script takes them (image archives marked).
    pub fn facts_args(&self, role: Role) -> Vec<String> {
        self.artifacts
            .iter()
            .filter(|a| a.on_node(role))
            .map(|a| crate::artifacts::facts_arg(&a.dest, a.after))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, role: Role, address: &str, adv: Option<&str>) -> ClusterNode {
        ClusterNode {
            target: Target::new(name, address, "/dev/null".into()),
            role,
            address: address.into(),
            advertise_address: adv.map(str::to_string),
        }
    }

    #[test]
    fn the_advertise_address_is_an_ip_kubeadm_accepts_or_nothing() {
        let n = |a, adv| node("n", Role::ControlPlane, a, adv).join_advertise_address();
        assert_eq!(n("10.0.0.2", None).as_deref(), Some("10.0.0.2"));
        assert_eq!(n("127.0.1.2", None), None, "loopback is left to kubeadm");
        assert_eq!(n("kube2.example", None), None, "a DNS name is left to kubeadm");
        assert_eq!(n("kube2.example", Some("10.0.0.9")).as_deref(), Some("10.0.0.9"));
        let own = node("n", Role::Worker, "kube2.example", Some("10.0.0.9")).own_ip();
        assert_eq!(own, Some("10.0.0.9".parse().unwrap()));
    }

    #[test]
    fn the_first_master_is_the_first_control_plane_and_its_absence_is_named() {
        let nodes = [
            node("w", Role::Worker, "10.0.0.5", None),
            node("m1", Role::ControlPlane, "10.0.0.1", None),
        ];
        assert_eq!(first_master(&nodes), Some(1));
        let facts = vec![Ok(NodeFacts::default()), Ok(NodeFacts::default())];
        assert_eq!(Reference::or_first_master(None, &nodes, &facts).source, "node m1");
        let none = Reference::or_first_master(None, &nodes[..1], &facts[..1]);
        assert_eq!(none.source, "none (no control-plane node)");
    }
}
