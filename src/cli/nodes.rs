//! What the connecting commands share: which nodes (`--nodes` or `--inventory`), and opening a
//! bundle with its trust and decryption keys.

use std::path::{Path, PathBuf};

use clap::Args;
use hapki::bundle::{self, AllowedSigners, Identities, VerifiedBundle};
use hapki::cluster::ClusterNode;
use hapki::inventory::{self, Inventory, Role};

use super::ssh::SshArgs;
use super::{usage_error, CategorizeExt};

/// `--nodes LIST | --inventory FILE`.
#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    /// Comma-separated nodes, `[user@]host[:port]` (IPv6 as `[addr]:port`). With --inventory,
    /// picks nodes out of it by name or address.
    #[arg(long, value_name = "LIST")]
    pub nodes: Option<String>,
    /// hapki TOML inventory, or a kubespray Ansible inventory, INI or YAML (groups
    /// kube_control_plane, kube_node; host ranges such as node[1:3]).
    #[arg(long, value_name = "FILE")]
    pub inventory: Option<PathBuf>,
}

impl NodeArgs {
    pub fn load_inventory(&self) -> anyhow::Result<Option<Inventory>> {
        self.inventory.as_deref().map(|p| Inventory::load(p).categorized()).transpose()
    }

    /// Every node: the inventory's, in order (first control plane first), or the `--nodes`
    /// list (all treated as control planes, the first as the first master).
    pub fn all(&self, ssh: &SshArgs) -> anyhow::Result<(Option<Inventory>, Vec<ClusterNode>)> {
        let inv = self.load_inventory()?;
        let selected = match (&self.nodes, &inv) {
            (None, None) => {
                return Err(usage_error("say which nodes: --inventory FILE or --nodes host1,host2"))
            }
            (Some(list), inv) => self.select_from_list(list, inv.as_ref(), ssh)?,
            (None, Some(inv)) => {
                let mut ordered: Vec<&inventory::Node> = vec![inv.first_master()];
                ordered.extend(inv.nodes.iter().filter(|n| n.name != inv.first_master().name));
                from_inventory(inv, ordered, ssh)
            }
        };
        Ok((inv, selected))
    }

    /// Push targets: the control planes other than the first master, or the `--nodes` list;
    /// a `--nodes` entry the inventory marks as a worker is refused (workers never get CA keys).
    pub fn push_targets(&self, ssh: &SshArgs) -> anyhow::Result<Vec<ClusterNode>> {
        let inv = self.load_inventory()?;
        match (&self.nodes, &inv) {
            (None, None) => {
                Err(usage_error("say which nodes: --inventory FILE or --nodes host1,host2"))
            }
            (Some(list), inv) => {
                let sel = self.select_from_list(list, inv.as_ref(), ssh)?;
                if let Some(w) = sel.iter().find(|s| s.role == Role::Worker) {
                    return Err(usage_error(format!(
                        "{} is a worker in the inventory: workers never receive the shared CA keys (kubeadm join gives them ca.crt); leave it out of --nodes",
                        w.target.name
                    )));
                }
                Ok(sel)
            }
            (None, Some(inv)) => Ok(from_inventory(inv, inv.push_targets().collect(), ssh)),
        }
    }

    fn select_from_list(
        &self,
        list: &str,
        inv: Option<&Inventory>,
        ssh: &SshArgs,
    ) -> anyhow::Result<Vec<ClusterNode>> {
        let specs = inventory::parse_node_list(list).categorized()?;
        let targets = ssh.targets_for_list(&specs, inv);
        Ok(specs
            .iter()
            .zip(targets)
            .map(|(spec, target)| {
                let known = inv.and_then(|i| i.find(&spec.host));
                ClusterNode {
                    role: known.map(|n| n.role).unwrap_or(Role::ControlPlane),
                    address: known.map(|n| n.address.clone()).unwrap_or_else(|| spec.host.clone()),
                    advertise_address: known.and_then(|n| n.advertise_address.clone()),
                    target,
                }
            })
            .collect())
    }
}

fn from_inventory(
    inv: &Inventory,
    nodes: Vec<&inventory::Node>,
    ssh: &SshArgs,
) -> Vec<ClusterNode> {
    let targets = ssh.targets_for(inv, nodes.iter().copied());
    nodes
        .into_iter()
        .zip(targets)
        .map(|(n, target)| ClusterNode {
            target,
            role: n.role,
            address: n.address.clone(),
            advertise_address: n.advertise_address.clone(),
        })
        .collect()
}

/// `--bundle`, `--trust`, `--decrypt-key` for commands that compare against a bundle.
#[derive(Debug, Clone, Args)]
pub struct BundleRefArgs {
    /// A verified bundle to compare against (default: the first master's files).
    #[arg(long = "bundle", value_name = "BUNDLE")]
    pub bundles: Vec<PathBuf>,
    /// OpenSSH allowed_signers file trusted for --bundle.
    #[arg(long, value_name = "ALLOWED_SIGNERS", requires = "bundles")]
    pub trust: Option<PathBuf>,
    /// Trust only allowed_signers lines for this principal, as `ssh-keygen -Y verify -I` does
    /// (such a line then needs no namespaces= option); repeatable. Without it, only lines whose
    /// namespaces= lists hapki-bundle are trusted.
    #[arg(long, value_name = "PRINCIPAL", requires = "trust")]
    pub principal: Vec<String>,
    /// age identity or SSH private key that decrypts --bundle; repeatable.
    #[arg(long, value_name = "FILE")]
    pub decrypt_key: Vec<PathBuf>,
}

impl BundleRefArgs {
    /// The first `--bundle`, verified, or `None` without one.
    pub fn open(&self) -> anyhow::Result<Option<(PathBuf, VerifiedBundle)>> {
        let Some(path) = self.bundles.first() else { return Ok(None) };
        let trust = self
            .trust
            .as_deref()
            .ok_or_else(|| usage_error("--bundle needs --trust ALLOWED_SIGNERS to verify it"))?;
        Ok(Some((path.clone(), open_verified(path, trust, &self.principal, &self.decrypt_key)?)))
    }
}

/// The `--trust` file (narrowed to `--principal`s, its ignored lines noted on stderr) and the
/// `--decrypt-key` identities, as every command that verifies a bundle takes them.
pub fn load_trust(
    trust: &Path,
    principals: &[String],
    decrypt_keys: &[PathBuf],
) -> anyhow::Result<(AllowedSigners, Identities)> {
    let trust_set = AllowedSigners::from_file(trust)
        .map_err(|e| usage_error(format!("--trust: {e}")))?
        .with_principals(principals.to_vec());
    for note in &trust_set.ignored {
        eprintln!("hapki: note: --trust {}: {note}", trust.display());
    }
    let mut ids = Identities::default();
    for k in decrypt_keys {
        ids.load(k).categorized()?;
    }
    Ok((trust_set, ids))
}

/// Opens and fully verifies a bundle (signature, hashes, layout, coherence, expiry).
pub fn open_verified(
    path: &Path,
    trust: &Path,
    principals: &[String],
    decrypt_keys: &[PathBuf],
) -> anyhow::Result<VerifiedBundle> {
    let (trust_set, ids) = load_trust(trust, principals, decrypt_keys)?;
    bundle::open_and_verify(path, &trust_set, &ids, &bundle::VerifyOptions::default()).categorized()
}
