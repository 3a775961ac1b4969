//! The SSH options every connecting command shares (`#[command(flatten)] ssh: SshArgs`). They
//! are parsed here and handed to the library ([`hapki::transport::options::SshOptions`]), which
//! owns the precedence between them, the inventory and the SSH client configuration.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, ValueEnum};
use hapki::inventory::{Inventory, Node, NodeSpec};
use hapki::transport::options::SshOptions;
use hapki::transport::{Backend, Target, Transport};

use super::CategorizeExt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum TransportKind {
    /// `openssh` when an `ssh` client is on PATH, else `builtin`.
    #[default]
    Auto,
    /// libssh2, built in: nothing else to install; asks for key passphrases on the terminal.
    Builtin,
    /// The system `ssh` client (its whole ~/.ssh/config: ProxyJump, FIDO keys, certificates,
    /// agents); the faster one for multi-GiB artifacts (it encrypts in whole packets).
    Openssh,
}

impl From<TransportKind> for Backend {
    fn from(k: TransportKind) -> Backend {
        match k {
            TransportKind::Auto => Backend::Auto,
            TransportKind::Builtin => Backend::Builtin,
            TransportKind::Openssh => Backend::Openssh,
        }
    }
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
    /// SSH implementation. `auto` runs the system `ssh` when one is on PATH, else the built-in
    /// one; force either with `--transport openssh` or `--transport builtin`. Both trust exactly
    /// the keys of the known_hosts file, nothing else.
    #[arg(long, value_enum, default_value_t)]
    pub transport: TransportKind,
}

impl SshArgs {
    /// The options as the library takes them.
    pub fn options(&self) -> SshOptions {
        SshOptions {
            identity: self.identity.clone(),
            known_hosts: self.known_hosts.clone(),
            user: self.user.clone(),
            port: self.port,
            become_: self.become_,
            connect_timeout: std::time::Duration::from_secs(self.connect_timeout.as_secs()),
            idle_timeout: std::time::Duration::from_secs(self.idle_timeout.as_secs()),
        }
    }

    /// Targets for inventory nodes (e.g. `inventory.push_targets()`).
    pub fn targets_for<'a>(
        &self,
        inventory: &Inventory,
        nodes: impl IntoIterator<Item = &'a Node>,
    ) -> Vec<Target> {
        self.options().targets_for(inventory, nodes)
    }

    /// Targets for a parsed `--nodes` list; `inventory` (if also given) supplies the known_hosts
    /// default and the node names.
    pub fn targets_for_list(
        &self,
        specs: &[NodeSpec],
        inventory: Option<&Inventory>,
    ) -> Vec<Target> {
        self.options().targets_for_list(specs, inventory)
    }

    /// The chosen transport. The built-in one asks for key passphrases on the terminal, and only
    /// when there is one.
    pub fn transport(&self) -> anyhow::Result<Box<dyn Transport>> {
        let tty = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
        let prompt: Option<hapki::transport::builtin::PassphraseFn> =
            tty.then(|| Arc::new(|p: &Path| prompt_passphrase(p)) as _);
        hapki::transport::transport_with(self.transport.into(), prompt).categorized()
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

    /// The flags reach the library's options as given (the precedence itself is tested there).
    #[test]
    fn flags_become_options() {
        let a = T::parse_from(["t"]).ssh;
        assert_eq!(a.transport, TransportKind::Auto);
        assert_eq!(a.options(), SshOptions::default());
        let a = T::parse_from([
            "t",
            "--user",
            "u",
            "--port",
            "22",
            "--identity",
            "/k",
            "--known-hosts",
            "/kh",
            "--become",
            "--connect-timeout",
            "2m",
            "--idle-timeout",
            "1h",
            "--transport",
            "builtin",
        ])
        .ssh;
        let o = a.options();
        assert_eq!((o.user.as_deref(), o.port, o.become_), (Some("u"), Some(22), true));
        assert_eq!((o.identity, o.known_hosts), (vec![PathBuf::from("/k")], Some("/kh".into())));
        assert_eq!(o.connect_timeout, std::time::Duration::from_secs(120));
        assert_eq!(o.idle_timeout, std::time::Duration::from_secs(3600));
        assert_eq!(Backend::from(a.transport), Backend::Builtin);
    }
}
