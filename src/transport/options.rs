//! The SSH settings a command was given, and the one precedence that turns them, plus an
//! inventory or a `--nodes` list, into [`Target`]s.
//!
//! Precedence, most specific first: a `--nodes` entry's own `user@`/`:port`, then the command's
//! options (`--user`, `--port`, `--identity`, `--known-hosts`), then the inventory's per-node
//! values, then its `[ssh]` defaults, then the SSH client configuration (`~/.ssh/config`) and
//! ssh's defaults. The known_hosts file is never left to the client configuration: it is the
//! option's, else the inventory's, else `~/.ssh/known_hosts`, for both transports alike.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Target, DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_KEEPALIVE};
use crate::inventory::{expand_tilde, Inventory, Node, NodeSpec};

/// What the operator asked for on the command line; `None`/empty means "not given".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshOptions {
    pub identity: Vec<PathBuf>,
    pub known_hosts: Option<PathBuf>,
    pub user: Option<String>,
    pub port: Option<u16>,
    pub become_: bool,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Default for SshOptions {
    fn default() -> Self {
        SshOptions {
            identity: Vec::new(),
            known_hosts: None,
            user: None,
            port: None,
            become_: false,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

impl SshOptions {
    /// A target with everything but user, port and identity settled.
    fn base(&self, name: &str, host: &str, inv_known_hosts: Option<&Path>) -> Target {
        let known_hosts = self
            .known_hosts
            .clone()
            .or_else(|| inv_known_hosts.map(Path::to_owned))
            .unwrap_or_else(|| expand_tilde("~/.ssh/known_hosts"));
        let mut t = Target::new(name, host, known_hosts);
        t.connect_timeout = self.connect_timeout.max(Duration::from_secs(1));
        t.become_ = self.become_;
        t.keepalive = DEFAULT_KEEPALIVE;
        t.idle_timeout = self.idle_timeout.max(Duration::from_secs(1));
        t
    }

    /// Targets for inventory nodes (e.g. `inventory.push_targets()`).
    pub fn targets_for<'a>(
        &self,
        inventory: &Inventory,
        nodes: impl IntoIterator<Item = &'a Node>,
    ) -> Vec<Target> {
        nodes.into_iter().map(|n| self.target_for(inventory, n)).collect()
    }

    fn target_for(&self, inventory: &Inventory, n: &Node) -> Target {
        let defaults = &inventory.ssh;
        let mut t = self.base(&n.name, &n.address, defaults.known_hosts.as_deref());
        t.port = self.port.or(n.port).or(defaults.port);
        t.user = self.user.clone().or_else(|| n.user.clone()).or_else(|| defaults.user.clone());
        t.identity = if self.identity.is_empty() {
            n.identity.clone().or_else(|| defaults.identity.clone()).into_iter().collect()
        } else {
            self.identity.clone()
        };
        t
    }

    /// Targets for a parsed `--nodes` list; `inventory` (if also given) supplies the known_hosts
    /// default and the node names.
    pub fn targets_for_list(
        &self,
        specs: &[NodeSpec],
        inventory: Option<&Inventory>,
    ) -> Vec<Target> {
        let inv_known_hosts = inventory.and_then(|i| i.ssh.known_hosts.as_deref());
        specs
            .iter()
            .map(|s| {
                let known = inventory.and_then(|i| i.find(&s.host));
                let name = known.map_or_else(|| s.host.clone(), |n| n.name.clone());
                let mut t = self.base(&name, &s.host, inv_known_hosts);
                t.port = s.port.or(self.port);
                t.user = s.user.clone().or_else(|| self.user.clone());
                t.identity = self.identity.clone();
                t
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INV: &str = r#"
[ssh]
user = "root"
port = 2200
known_hosts = "/inv/known_hosts"
identity = "/inv/id"
[[nodes]]
name = "m1"
address = "10.0.0.1"
role = "control-plane"
[[nodes]]
name = "m2"
address = "10.0.0.2"
role = "control-plane"
user = "ops"
"#;

    #[test]
    fn precedence_options_node_defaults() {
        let inv = Inventory::from_toml(INV, Path::new("i.toml")).unwrap();
        let ts = SshOptions::default().targets_for(&inv, inv.push_targets());
        assert_eq!(ts.len(), 1);
        let t = &ts[0];
        assert_eq!((t.name.as_str(), t.host.as_str()), ("m2", "10.0.0.2"));
        assert_eq!((t.user.as_deref(), t.port), (Some("ops"), Some(2200)));
        assert_eq!(t.identity, [PathBuf::from("/inv/id")]);
        assert_eq!(t.known_hosts, Path::new("/inv/known_hosts"));
        assert_eq!(t.connect_timeout, Duration::from_secs(10));

        let o = SshOptions {
            identity: vec!["/k".into()],
            user: Some("u".into()),
            port: Some(22),
            become_: true,
            connect_timeout: Duration::from_secs(120),
            idle_timeout: Duration::ZERO,
            ..SshOptions::default()
        };
        let ts = o.targets_for(&inv, inv.push_targets());
        assert_eq!(ts.len(), 1);
        let t = &ts[0];
        assert_eq!((t.user.as_deref(), t.port, t.become_), (Some("u"), Some(22), true));
        assert_eq!(t.identity, [PathBuf::from("/k")]);
        assert_eq!(t.connect_timeout, Duration::from_secs(120));
        assert_eq!(t.idle_timeout, Duration::from_secs(1), "at least a second");

        let specs = crate::inventory::parse_node_list("admin@10.0.0.2:2222,10.0.0.9").unwrap();
        let ts = o.targets_for_list(&specs, Some(&inv));
        assert_eq!(ts.len(), 2);
        assert_eq!(
            (ts[0].name.as_str(), ts[0].user.as_deref(), ts[0].port),
            ("m2", Some("admin"), Some(2222))
        );
        assert_eq!(
            (ts[1].name.as_str(), ts[1].user.as_deref(), ts[1].port),
            ("10.0.0.9", Some("u"), Some(22))
        );
        assert_eq!(ts[1].known_hosts, Path::new("/inv/known_hosts"));
        let o = SshOptions { known_hosts: Some("/flag/kh".into()), ..o };
        assert_eq!(o.targets_for_list(&specs, Some(&inv))[0].known_hosts, Path::new("/flag/kh"));
    }
}
