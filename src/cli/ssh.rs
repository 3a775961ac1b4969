//! The SSH options every connecting command shares (`#[command(flatten)] ssh: SshArgs`), and
//! turning them plus an inventory or a `--nodes` list into transport targets.
//!
//! Precedence, most specific first: a `--nodes` entry's own `user@`/`:port`, then these flags,
//! then the inventory's per-node values, then its `[ssh]` defaults, then `~/.ssh/config` (built-in
//! transport) and ssh's defaults.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, ValueEnum};
use hapki::inventory::{expand_tilde, Inventory, Node, NodeSpec};
use hapki::transport::builtin::BuiltinTransport;
use hapki::transport::openssh::OpensshTransport;
use hapki::transport::{Target, Transport, DEFAULT_KEEPALIVE};

use super::CategorizeExt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum TransportKind {
    /// libssh2, built in: nothing else to install.
    #[default]
    Builtin,
    /// The system `ssh` client (ProxyJump, FIDO keys, certificates, ControlMaster); also the
    /// faster one for multi-GiB artifacts (it encrypts in whole packets).
    Openssh,
}

#[derive(Debug, Clone, Args)]
pub struct SshArgs {
    /// Login key [default: the agent, then ~/.ssh/id_ed25519, id_ecdsa, id_rsa]. Repeatable.
    #[arg(long, value_name = "FILE")]
    pub identity: Vec<PathBuf>,
    /// known_hosts file the nodes' host keys are checked against [default: the inventory's, else
    /// ~/.ssh/known_hosts]. Unknown or changed keys are refused, never added.
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,
    /// Login user on the nodes.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// SSH port on the nodes.
    #[arg(long, value_name = "N")]
    pub port: Option<u16>,
    /// Log in as a normal user and run everything through `sudo -n`.
    #[arg(long = "become")]
    pub become_: bool,
    /// Give up on a node that does not answer within this long (e.g. 10s, 2m).
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    pub connect_timeout: hapki::duration::Duration,
    /// End a node's command that sends and receives nothing for this long (a hung script or
    /// login); every byte resets it. Generous by default: a node hashes large artifacts already
    /// in place before it answers.
    #[arg(long, value_name = "DURATION", default_value = "15m")]
    pub idle_timeout: hapki::duration::Duration,
    /// SSH implementation.
    #[arg(long, value_enum, default_value_t)]
    pub transport: TransportKind,
}

impl SshArgs {
    fn base(&self, name: &str, host: &str, inv_known_hosts: Option<&Path>) -> Target {
        let known_hosts = self
            .known_hosts
            .clone()
            .or_else(|| inv_known_hosts.map(Path::to_owned))
            .unwrap_or_else(|| expand_tilde("~/.ssh/known_hosts"));
        let mut t = Target::new(name, host, known_hosts);
        t.connect_timeout = std::time::Duration::from_secs(self.connect_timeout.as_secs().max(1));
        t.become_ = self.become_;
        t.keepalive = DEFAULT_KEEPALIVE;
        t.idle_timeout = std::time::Duration::from_secs(self.idle_timeout.as_secs().max(1));
        t
    }

    /// Targets for inventory nodes (e.g. `inventory.push_targets()`).
    pub fn targets_for<'a>(
        &self,
        inventory: &Inventory,
        nodes: impl IntoIterator<Item = &'a Node>,
    ) -> Vec<Target> {
        nodes
            .into_iter()
            .map(|n| {
                let mut t = self.base(&n.name, &n.address, inventory.ssh.known_hosts.as_deref());
                t.port = self.port.or(n.port).or(inventory.ssh.port);
                t.user = self
                    .user
                    .clone()
                    .or_else(|| n.user.clone())
                    .or_else(|| inventory.ssh.user.clone());
                t.identity = if !self.identity.is_empty() {
                    self.identity.clone()
                } else {
                    n.identity
                        .clone()
                        .or_else(|| inventory.ssh.identity.clone())
                        .into_iter()
                        .collect()
                };
                t
            })
            .collect()
    }

    /// Targets for a parsed `--nodes` list; `inventory` (if also given) supplies the known_hosts
    /// default and the node names.
    pub fn targets_for_list(
        &self,
        specs: &[NodeSpec],
        inventory: Option<&Inventory>,
    ) -> Vec<Target> {
        specs
            .iter()
            .map(|s| {
                let known = inventory.and_then(|i| i.find(&s.host));
                let name = known.map(|n| n.name.clone()).unwrap_or_else(|| s.host.clone());
                let mut t =
                    self.base(&name, &s.host, inventory.and_then(|i| i.ssh.known_hosts.as_deref()));
                t.port = s.port.or(self.port);
                t.user = s.user.clone().or_else(|| self.user.clone());
                t.identity = self.identity.clone();
                t
            })
            .collect()
    }

    /// The chosen transport. The built-in one asks for key passphrases on the terminal, and only
    /// when there is one.
    pub fn transport(&self) -> anyhow::Result<Box<dyn Transport>> {
        Ok(match self.transport {
            TransportKind::Builtin => {
                let mut b = BuiltinTransport::new();
                if std::io::stdin().is_terminal() && std::io::stderr().is_terminal() {
                    b = b.with_passphrase(Arc::new(|p: &Path| prompt_passphrase(p)));
                }
                Box::new(b)
            }
            TransportKind::Openssh => Box::new(OpensshTransport::new().categorized()?),
        })
    }
}

/// Reads a passphrase from /dev/tty with echo off. Prompts from parallel connections are
/// serialised so they never interleave.
pub(super) fn prompt_passphrase(path: &Path) -> Option<String> {
    // Parallel connections may all want a passphrase: ask one at a time.
    static PROMPT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = PROMPT.lock().unwrap_or_else(|p| p.into_inner());
    // rpassword reads from /dev/tty with echo off and restores the terminal afterwards.
    let p = rpassword::prompt_password(format!("Passphrase for {}: ", path.display())).ok()?;
    (!p.is_empty()).then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        ssh: SshArgs,
    }

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
    fn precedence_flags_node_defaults() {
        let inv = Inventory::from_toml(INV, Path::new("i.toml")).unwrap();
        let a = T::parse_from(["t"]).ssh;
        let ts = a.targets_for(&inv, inv.push_targets());
        assert_eq!(ts.len(), 1);
        let t = &ts[0];
        assert_eq!((t.name.as_str(), t.host.as_str()), ("m2", "10.0.0.2"));
        assert_eq!((t.user.as_deref(), t.port), (Some("ops"), Some(2200)));
        assert_eq!(t.identity, [PathBuf::from("/inv/id")]);
        assert_eq!(t.known_hosts, Path::new("/inv/known_hosts"));
        assert_eq!(t.connect_timeout, std::time::Duration::from_secs(10));

        let a = T::parse_from([
            "t",
            "--user",
            "u",
            "--port",
            "22",
            "--identity",
            "/k",
            "--become",
            "--connect-timeout",
            "2m",
        ])
        .ssh;
        let t = &a.targets_for(&inv, inv.push_targets())[0];
        assert_eq!((t.user.as_deref(), t.port, t.become_), (Some("u"), Some(22), true));
        assert_eq!(t.identity, [PathBuf::from("/k")]);
        assert_eq!(t.connect_timeout, std::time::Duration::from_secs(120));

        let specs = hapki::inventory::parse_node_list("admin@10.0.0.2:2222,10.0.0.9").unwrap();
        let ts = a.targets_for_list(&specs, Some(&inv));
        assert_eq!(
            (ts[0].name.as_str(), ts[0].user.as_deref(), ts[0].port),
            ("m2", Some("admin"), Some(2222))
        );
        assert_eq!(
            (ts[1].name.as_str(), ts[1].user.as_deref(), ts[1].port),
            ("10.0.0.9", Some("u"), Some(22))
        );
        assert_eq!(ts[1].known_hosts, Path::new("/inv/known_hosts"));
    }
}
