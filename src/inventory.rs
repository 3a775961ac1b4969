//! Which machines make up the cluster and how to reach them: hapki's TOML inventory, the
//! Ansible inventory kubespray users already have (INI or YAML, host ranges included; see
//! `inventory/ansible.rs` and `inventory/range.rs`), and the `--nodes` list.
//!
//! Everything here is parsing and validation; nothing connects. The first control-plane node
//! listed is the *first master*: the source of the shared PKI and of join tokens. `push` goes to
//! the other control-plane nodes; workers never receive the shared files.

use std::collections::HashSet;
use std::fmt;
use std::io::Read;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Categorized, Category};

mod ansible;
mod range;

/// The most nodes an inventory may name: Kubernetes' largest supported cluster. A host range
/// that names more is refused before it is expanded.
pub(crate) const MAX_NODES: usize = 5000;

/// The largest inventory file read (a 5000-node kubespray inventory is well under 1 MiB).
const MAX_FILE_BYTES: u64 = 4 << 20;

/// What a node is in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    ControlPlane,
    Worker,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::ControlPlane => "control-plane",
            Role::Worker => "worker",
        })
    }
}

/// One machine of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The node's name (its hostname and Kubernetes node name).
    pub name: String,
    /// Where to reach it over SSH: an IP address or a DNS name (or a `~/.ssh/config` alias).
    pub address: String,
    pub role: Role,
    /// Per-node overrides of the `[ssh]` defaults.
    pub port: Option<u16>,
    pub user: Option<String>,
    pub identity: Option<PathBuf>,
    /// The address the API server and etcd advertise, when it is not `address`.
    pub advertise_address: Option<String>,
}

/// Connection defaults for every node (`[ssh]`); each may be overridden per node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SshDefaults {
    pub user: Option<String>,
    pub port: Option<u16>,
    pub identity: Option<PathBuf>,
    pub known_hosts: Option<PathBuf>,
}

/// A validated inventory: at least one control-plane node, unique names, usable addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inventory {
    /// The cluster name (`[cluster] name`; default `kubernetes`).
    pub cluster_name: String,
    /// `host:port` of the API server load balancer (`[cluster] control_plane_endpoint`).
    pub control_plane_endpoint: Option<String>,
    pub ssh: SshDefaults,
    /// In file order.
    pub nodes: Vec<Node>,
}

/// Why an inventory or a `--nodes` list was refused. Every variant names where and the fix.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("cannot read inventory {path}: {source}; check the --inventory path")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}: {message}")]
    Parse { path: PathBuf, line: usize, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("--nodes entry {entry:?}: {message}")]
    NodeList { entry: String, message: String },
}

impl Categorized for InventoryError {
    fn category(&self) -> Category {
        Category::Usage
    }
}

// ---------------------------------------------------------------------------------------------
// TOML

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlInventory {
    #[serde(default)]
    cluster: TomlCluster,
    #[serde(default)]
    ssh: TomlSsh,
    #[serde(default)]
    nodes: Vec<TomlNode>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TomlCluster {
    name: Option<String>,
    control_plane_endpoint: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TomlSsh {
    user: Option<String>,
    port: Option<u16>,
    identity: Option<String>,
    known_hosts: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlNode {
    name: String,
    address: String,
    role: Role,
    port: Option<u16>,
    user: Option<String>,
    identity: Option<String>,
    advertise_address: Option<String>,
}

impl Inventory {
    /// Reads an inventory file: hapki's TOML format, or a kubespray-style Ansible inventory in
    /// INI or YAML (told apart by the extension — `.toml`, `.ini`/`.cfg`, `.yaml`/`.yml` — or,
    /// failing that, by the content).
    pub fn load(path: &Path) -> Result<Inventory, InventoryError> {
        let text = read_capped(path)?;
        match Format::of(path, &text) {
            Format::Toml => Inventory::from_toml(&text, path),
            Format::Yaml => Inventory::from_yaml(&text, path),
            Format::Ini => Inventory::from_ini(&text, path),
        }
    }

    /// Parses hapki's TOML inventory; `path` only names the file in error messages.
    pub fn from_toml(text: &str, path: &Path) -> Result<Inventory, InventoryError> {
        let raw: TomlInventory = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(0);
            InventoryError::Parse {
                path: path.to_owned(),
                line,
                message: format!("{}; see the inventory format in the README", e.message().trim()),
            }
        })?;
        let nodes = raw
            .nodes
            .into_iter()
            .map(|n| Node {
                name: n.name,
                address: n.address,
                role: n.role,
                port: n.port,
                user: n.user,
                identity: n.identity.as_deref().map(expand_tilde),
                advertise_address: n.advertise_address,
            })
            .collect();
        let inv = Inventory {
            cluster_name: raw.cluster.name.unwrap_or_else(|| "kubernetes".to_owned()),
            control_plane_endpoint: raw.cluster.control_plane_endpoint,
            ssh: SshDefaults {
                user: raw.ssh.user,
                port: raw.ssh.port,
                identity: raw.ssh.identity.as_deref().map(expand_tilde),
                known_hosts: raw.ssh.known_hosts.as_deref().map(expand_tilde),
            },
            nodes,
        };
        inv.validate(path)?;
        Ok(inv)
    }

    /// Parses a kubespray-style Ansible INI inventory (`inventory.ini`). Hosts in
    /// `kube_control_plane` (or the older `kube-master`, `kube_master`, `kube-controlplane`) are
    /// control-plane nodes, in that group's order; hosts only in `kube_node` (`kube-node`) are
    /// workers; child groups count. Host ranges (`node[1:3]`, `node[01:03]`, `10.0.0.[11:13]`)
    /// expand. Host variables (`ansible_host`, `ansible_port`, `ansible_user`,
    /// `ansible_ssh_private_key_file`, `ip`, `access_ip`) may sit on a host line or a group's
    /// `:vars`, and `[all:vars]` gives the defaults. Other groups (`etcd`, `k8s_cluster`, …) and
    /// other variables are ignored.
    pub fn from_ini(text: &str, path: &Path) -> Result<Inventory, InventoryError> {
        let model = ansible::parse_ini(text).map_err(|(line, message)| InventoryError::Parse {
            path: path.to_owned(),
            line,
            message,
        })?;
        let inv = model.into_inventory(path)?;
        inv.validate(path)?;
        Ok(inv)
    }

    /// Parses a kubespray-style Ansible YAML inventory (`hosts.yaml`: `all.hosts.NAME` with its
    /// variables, `all.children.kube_control_plane.hosts`, `kube_node`, …), with the same groups,
    /// variables and ranges as [`Inventory::from_ini`]. Unknown keys in a group are refused.
    pub fn from_yaml(text: &str, path: &Path) -> Result<Inventory, InventoryError> {
        let model = ansible::parse_yaml(text)
            .map_err(|message| InventoryError::Invalid { path: path.to_owned(), message })?;
        let inv = model.into_inventory(path)?;
        inv.validate(path)?;
        Ok(inv)
    }

    fn validate(&self, path: &Path) -> Result<(), InventoryError> {
        let invalid = |message: String| InventoryError::Invalid { path: path.to_owned(), message };
        let mut seen = HashSet::new();
        for n in &self.nodes {
            if n.name.is_empty()
                || !n.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(invalid(format!(
                    "node name {:?} must be a hostname (letters, digits, '-', '_', '.')",
                    n.name
                )));
            }
            if !seen.insert(n.name.as_str()) {
                return Err(invalid(format!(
                    "node {} is listed twice; node names must be unique",
                    n.name
                )));
            }
            check_host(&n.address)
                .map_err(|m| invalid(format!("node {}: address {:?}: {m}", n.name, n.address)))?;
            if n.port == Some(0) {
                return Err(invalid(format!("node {}: port 0 is not a port; use 1-65535", n.name)));
            }
            if let Some(u) = &n.user {
                check_user(u).map_err(|m| invalid(format!("node {}: user {u:?}: {m}", n.name)))?;
            }
        }
        if self.ssh.port == Some(0) {
            return Err(invalid("[ssh] port 0 is not a port; use 1-65535".to_owned()));
        }
        if let Some(u) = &self.ssh.user {
            check_user(u).map_err(|m| invalid(format!("[ssh] user {u:?}: {m}")))?;
        }
        if self.control_planes().next().is_none() {
            return Err(invalid(
                "no control-plane node; mark at least one node role = \"control-plane\" (INI: list it under [kube_control_plane])"
                    .to_owned(),
            ));
        }
        Ok(())
    }

    /// The first control-plane node listed: source of the shared PKI and of join tokens.
    pub fn first_master(&self) -> &Node {
        // validate() guarantees one exists; the fallback only keeps this total.
        self.control_planes().next().unwrap_or(&self.nodes[0])
    }

    /// Control-plane nodes in inventory order (the first master first).
    pub fn control_planes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.role == Role::ControlPlane)
    }

    /// Worker nodes in inventory order.
    pub fn workers(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.role == Role::Worker)
    }

    /// Where `push` goes: the control-plane nodes other than the first master.
    pub fn push_targets(&self) -> impl Iterator<Item = &Node> {
        let first = self.first_master().name.clone();
        self.control_planes().filter(move |n| n.name != first)
    }

    /// The node with this name or address (for checking an explicit `--nodes` entry against the
    /// inventory, e.g. refusing a push to a worker).
    pub fn find(&self, name_or_address: &str) -> Option<&Node> {
        self.nodes
            .iter()
            .find(|n| n.name == name_or_address)
            .or_else(|| self.nodes.iter().find(|n| n.address == name_or_address))
    }
}

/// Reads at most [`MAX_FILE_BYTES`], refusing a larger file (or a device that never ends).
fn read_capped(path: &Path) -> Result<String, InventoryError> {
    let io = |source| InventoryError::Io { path: path.to_owned(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(InventoryError::Invalid {
            path: path.to_owned(),
            message: format!(
                "larger than {} MiB; an inventory is a list of nodes, check the --inventory path",
                MAX_FILE_BYTES >> 20
            ),
        });
    }
    String::from_utf8(bytes).map_err(|_| InventoryError::Invalid {
        path: path.to_owned(),
        message: "not UTF-8 text; check the --inventory path".to_owned(),
    })
}

enum Format {
    Toml,
    Ini,
    Yaml,
}

impl Format {
    fn of(path: &Path, text: &str) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => return Format::Toml,
            Some("ini" | "cfg") => return Format::Ini,
            Some("yaml" | "yml") => return Format::Yaml,
            _ => {}
        }
        let mut lines =
            text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#'));
        if lines
            .clone()
            .any(|l| l == "[[nodes]]" || l == "[cluster]" || l == "[ssh]" || l.contains(" = "))
        {
            Format::Toml
        } else if lines
            .next()
            .is_some_and(|l| l == "---" || (l.ends_with(':') && !l.starts_with('[')))
        {
            Format::Yaml
        } else {
            Format::Ini
        }
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// A host must be something `ssh` could connect to and must not smuggle options or shell
/// syntax: no whitespace, no control characters, no leading '-'.
fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("empty; give an IP address or a DNS name".to_owned());
    }
    if host.starts_with('-') {
        return Err("starts with '-' (it would read as an option); fix the address".to_owned());
    }
    if host.chars().any(|c| c.is_whitespace() || c.is_control() || "'\"`$;&|<>\\@/".contains(c)) {
        return Err("contains a character no host name or address has; fix the address".to_owned());
    }
    Ok(())
}

fn check_user(user: &str) -> Result<(), String> {
    if user.is_empty()
        || user.starts_with('-')
        || !user.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err("not a login name (letters, digits, '-', '_', '.')".to_owned());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// --nodes

/// One `--nodes` entry: `[user@]host[:port]`, IPv6 as `[addr]` or `[addr]:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
}

impl fmt::Display for NodeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(u) = &self.user {
            write!(f, "{u}@")?;
        }
        match (self.host.contains(':'), self.port) {
            (true, Some(p)) => write!(f, "[{}]:{p}", self.host),
            (false, Some(p)) => write!(f, "{}:{p}", self.host),
            (_, None) => f.write_str(&self.host),
        }
    }
}

/// Parses one `NODE`: `[user@]host[:port]`; IPv6 as `[addr]:port` (a bare IPv6 address without
/// a port is accepted too).
pub(crate) fn parse_node(entry: &str) -> Result<NodeSpec, InventoryError> {
    let err = |message: &str| InventoryError::NodeList {
        entry: entry.to_owned(),
        message: message.to_owned(),
    };
    let s = entry.trim();
    if s.is_empty() {
        return Err(err("empty entry; remove the extra comma"));
    }
    let (user, rest) = match s.rsplit_once('@') {
        Some((u, r)) => {
            check_user(u).map_err(|m| err(&format!("user {u:?}: {m}")))?;
            (Some(u.to_owned()), r)
        }
        None => (None, s),
    };
    let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
        let (addr, after) = inner
            .split_once(']')
            .ok_or_else(|| err("'[' without ']'; write IPv6 as [addr]:port"))?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(|| err("expected ':PORT' after ']'"))?),
        };
        (addr, port)
    } else if rest.matches(':').count() > 1 {
        if rest.parse::<Ipv6Addr>().is_err() {
            return Err(err("not an IPv6 address; write IPv6 with a port as [addr]:port"));
        }
        (rest, None)
    } else {
        match rest.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    let port = port
        .map(|p| {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| err(&format!("port {p:?} is not a number 1-65535")))
        })
        .transpose()?;
    check_host(host).map_err(|m| err(&format!("host {host:?}: {m}")))?;
    Ok(NodeSpec { user, host: host.to_owned(), port })
}

/// Parses a comma-separated `--nodes` LIST. Duplicates are refused: the same node twice in one
/// push would race with itself.
pub fn parse_node_list(list: &str) -> Result<Vec<NodeSpec>, InventoryError> {
    let mut out: Vec<NodeSpec> = Vec::new();
    for entry in list.split(',') {
        let spec = parse_node(entry)?;
        if out.iter().any(|o| o.host == spec.host && o.port == spec.port) {
            return Err(InventoryError::NodeList {
                entry: entry.trim().to_owned(),
                message: "listed twice; give each node once".to_owned(),
            });
        }
        out.push(spec);
    }
    Ok(out)
}

/// Expands a leading `~` or `~/` to `$HOME` (as ssh does for IdentityFile and known_hosts).
pub(crate) fn expand_tilde(path: &str) -> PathBuf {
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty());
    match (path, home) {
        ("~", Some(h)) => PathBuf::from(h),
        (p, Some(h)) if p.starts_with("~/") => PathBuf::from(h).join(&p[2..]),
        (p, _) => PathBuf::from(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("inv.toml")
    }

    const TOML: &str = r#"
[cluster]
name = "prod"
control_plane_endpoint = "kubeapi.test.huatai.me:6443"

[ssh]
user = "root"
port = 22
identity = "~/.ssh/id_ed25519"
known_hosts = "/etc/hapki/known_hosts"

[[nodes]]
name = "kubemaster-1"
address = "192.168.122.11"
role = "control-plane"

[[nodes]]
name = "kubenode-1"
address = "192.168.122.21"
role = "worker"

[[nodes]]
name = "kubemaster-2"
address = "192.168.122.12"
role = "control-plane"
port = 2222
user = "ops"
advertise_address = "10.0.0.12"

[[nodes]]
name = "kubemaster-3"
address = "kubemaster-3.example"
role = "control-plane"
"#;

    #[test]
    fn toml_inventory_roles_and_push_targets() {
        let inv = Inventory::from_toml(TOML, p()).unwrap();
        assert_eq!(inv.cluster_name, "prod");
        assert_eq!(inv.control_plane_endpoint.as_deref(), Some("kubeapi.test.huatai.me:6443"));
        assert_eq!(inv.first_master().name, "kubemaster-1");
        let cps: Vec<_> = inv.control_planes().map(|n| n.name.as_str()).collect();
        assert_eq!(cps, ["kubemaster-1", "kubemaster-2", "kubemaster-3"]);
        let push: Vec<_> = inv.push_targets().map(|n| n.name.as_str()).collect();
        assert_eq!(push, ["kubemaster-2", "kubemaster-3"]);
        let workers: Vec<_> = inv.workers().map(|n| n.name.as_str()).collect();
        assert_eq!(workers, ["kubenode-1"]);
        let m2 = inv.find("kubemaster-2").unwrap();
        assert_eq!((m2.port, m2.user.as_deref()), (Some(2222), Some("ops")));
        assert_eq!(m2.advertise_address.as_deref(), Some("10.0.0.12"));
        assert_eq!(inv.find("192.168.122.21").unwrap().role, Role::Worker);
        assert_eq!(inv.ssh.known_hosts.as_deref(), Some(Path::new("/etc/hapki/known_hosts")));
    }

    #[test]
    fn tilde_expands_to_home() {
        let home = std::env::var("HOME").unwrap();
        let inv = Inventory::from_toml(TOML, p()).unwrap();
        assert_eq!(inv.ssh.identity.unwrap(), Path::new(&home).join(".ssh/id_ed25519"));
        assert_eq!(expand_tilde("~"), PathBuf::from(&home));
        assert_eq!(expand_tilde("/a/~b"), PathBuf::from("/a/~b"));
        assert_eq!(expand_tilde("~other/x"), PathBuf::from("~other/x"));
    }

    fn toml_err(text: &str) -> String {
        Inventory::from_toml(text, p()).unwrap_err().to_string()
    }

    #[test]
    fn toml_errors_name_line_field_and_fix() {
        let typo = "[[nodes]]\nname = \"a\"\nadress = \"1.2.3.4\"\nrole = \"control-plane\"\n";
        let e = toml_err(typo);
        assert!(e.starts_with("inv.toml:3: unknown field `adress`"), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");

        let role = "[[nodes]]\nname = \"a\"\naddress = \"h\"\nrole = \"master\"\n";
        let e = toml_err(role);
        assert!(e.starts_with("inv.toml:4:") && e.contains("control-plane"), "{e}");

        let no_cp = "[[nodes]]\nname = \"a\"\naddress = \"h\"\nrole = \"worker\"\n";
        assert!(toml_err(no_cp).contains("no control-plane node"));

        let dup = "[[nodes]]\nname = \"a\"\naddress = \"h\"\nrole = \"control-plane\"\n\
                   [[nodes]]\nname = \"a\"\naddress = \"i\"\nrole = \"worker\"\n";
        assert!(toml_err(dup).contains("node a is listed twice"));

        let evil = "[[nodes]]\nname = \"a\"\naddress = \"h; rm -rf /\"\nrole = \"control-plane\"\n";
        assert!(toml_err(evil).contains("node a: address"), "{}", toml_err(evil));

        let opt =
            "[[nodes]]\nname = \"a\"\naddress = \"-oProxyCommand=x\"\nrole = \"control-plane\"\n";
        assert!(toml_err(opt).contains("starts with '-'"));

        let port = "[ssh]\nport = 70000\n[[nodes]]\nname = \"a\"\naddress = \"h\"\nrole = \"control-plane\"\n";
        assert!(toml_err(port).starts_with("inv.toml:2:"), "{}", toml_err(port));
    }

    const INI: &str = r#"
# kubespray sample
[all]
node1 ansible_host=95.54.0.12 ip=10.3.0.1 etcd_member_name=etcd1
node2 ansible_host=95.54.0.13 ip=10.3.0.2 ansible_port=2222
node3 ansible_host="95.54.0.14"  ansible_user='admin' # trailing comment
node4 ansible_host=95.54.0.15 ansible_ssh_private_key_file=~/.ssh/k4

[all:vars]
ansible_user=root
ansible_port=22

[kube_control_plane]
node2
node1
node3

[etcd]
node1
node2
node3

[kube_node]
node2
node4

[calico_rr]

[k8s_cluster:children]
kube_control_plane
kube_node
calico_rr
"#;

    #[test]
    fn ini_inventory_kubespray_style() {
        let inv = Inventory::from_ini(INI, Path::new("hosts.ini")).unwrap();
        let cps: Vec<_> = inv.control_planes().map(|n| n.name.as_str()).collect();
        assert_eq!(cps, ["node2", "node1", "node3"], "group order decides the first master");
        assert_eq!(inv.first_master().name, "node2");
        let workers: Vec<_> = inv.workers().map(|n| n.name.as_str()).collect();
        assert_eq!(workers, ["node4"], "a control plane also in kube_node stays a control plane");
        let n2 = inv.find("node2").unwrap();
        assert_eq!((n2.address.as_str(), n2.port), ("95.54.0.13", Some(2222)));
        assert_eq!(n2.advertise_address.as_deref(), Some("10.3.0.2"));
        let n3 = inv.find("node3").unwrap();
        assert_eq!((n3.address.as_str(), n3.user.as_deref()), ("95.54.0.14", Some("admin")));
        let home = std::env::var("HOME").unwrap();
        assert_eq!(inv.find("node4").unwrap().identity, Some(Path::new(&home).join(".ssh/k4")));
        assert_eq!(inv.ssh.user.as_deref(), Some("root"));
        assert_eq!(inv.ssh.port, Some(22));
    }

    #[test]
    fn ini_errors_name_the_line() {
        let e = Inventory::from_ini("[kube_control_plane]\nnode[1:3\n", Path::new("h.ini"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("h.ini:2: host range \"node[1:3\""), "{e}");
        let e = Inventory::from_ini("node1\n", Path::new("h.ini")).unwrap_err().to_string();
        assert!(e.starts_with("h.ini:1: a host line before any [group]"), "{e}");
        let e = Inventory::from_ini("[kube_control_plane\n", Path::new("h.ini"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("h.ini:1:"), "{e}");
        let e =
            Inventory::from_ini("[kube_node]\nw1\n", Path::new("h.ini")).unwrap_err().to_string();
        assert!(e.contains("[kube_control_plane]"), "{e}");
        let e =
            Inventory::from_ini("[kube_control_plane]\nn1 ansible_port=x\n", Path::new("h.ini"))
                .unwrap_err()
                .to_string();
        assert!(e.contains("ansible_port \"x\""), "{e}");
        let e =
            Inventory::from_ini("[kube_control_plane]\nn1 ansible_host='a\n", Path::new("h.ini"))
                .unwrap_err()
                .to_string();
        assert!(e.starts_with("h.ini:2: unterminated quote"), "{e}");
    }

    #[test]
    fn load_tells_toml_from_ini() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("inventory");
        std::fs::write(&t, TOML).unwrap();
        assert_eq!(Inventory::load(&t).unwrap().cluster_name, "prod");
        let i = dir.path().join("hosts");
        std::fs::write(&i, INI).unwrap();
        assert_eq!(Inventory::load(&i).unwrap().first_master().name, "node2");
        let e = Inventory::load(&dir.path().join("missing.toml")).unwrap_err();
        assert!(e.to_string().contains("cannot read inventory"));
        assert_eq!(e.category(), Category::Usage);
    }

    fn spec(user: Option<&str>, host: &str, port: Option<u16>) -> NodeSpec {
        NodeSpec { user: user.map(str::to_owned), host: host.to_owned(), port }
    }

    #[test]
    fn node_list_forms() {
        let l = parse_node_list(
            "10.0.0.1, admin@node2:2222,node3:22,[fe80::1]:2200,root@[2001:db8::7],2001:db8::8,u@h",
        )
        .unwrap();
        assert_eq!(
            l,
            [
                spec(None, "10.0.0.1", None),
                spec(Some("admin"), "node2", Some(2222)),
                spec(None, "node3", Some(22)),
                spec(None, "fe80::1", Some(2200)),
                spec(Some("root"), "2001:db8::7", None),
                spec(None, "2001:db8::8", None),
                spec(Some("u"), "h", None),
            ]
        );
        assert_eq!(l[3].to_string(), "[fe80::1]:2200");
        assert_eq!(l[1].to_string(), "admin@node2:2222");
    }

    #[test]
    fn node_list_rejects_bad_entries_by_name() {
        for (bad, needle) in [
            ("a,,b", "empty entry"),
            ("a,", "empty entry"),
            ("h:0", "port \"0\""),
            ("h:ssh", "port \"ssh\""),
            ("h:65536", "port"),
            ("[fe80::1", "without ']'"),
            ("[fe80::1]2200", "':PORT'"),
            ("fe80::1::2:x", "not an IPv6"),
            ("-oProxyCommand=sh", "starts with '-'"),
            ("r$(id)@h", "user"),
            ("h`id`", "host"),
            ("a,b,a", "listed twice"),
        ] {
            let e = parse_node_list(bad).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(needle), "{bad}: {msg}");
            assert!(msg.starts_with("--nodes entry"), "{msg}");
            assert_eq!(e.category(), Category::Usage);
        }
    }
}
