//! The common `~/.ssh/config` keys, for the built-in backend: `Host` patterns (wildcards,
//! negations), `HostName`, `User`, `Port`, `IdentityFile`. As in ssh, the first value obtained
//! for a key wins, and `IdentityFile`s accumulate. `Match` blocks, `Include` and every other
//! key are ignored: operators who need them use `--transport openssh`.

use std::path::{Path, PathBuf};

use super::known_hosts::wildcard_match;
use crate::inventory::expand_tilde;

#[derive(Debug, Clone, Default)]
struct Block {
    /// `None`: the options before the first `Host` line, or a `Match` block (never applied).
    patterns: Option<Vec<(bool, String)>>,
    applies_always: bool,
    options: Vec<(String, String)>,
}

/// A parsed ssh client configuration.
#[derive(Debug, Clone, Default)]
pub struct SshConfig {
    blocks: Vec<Block>,
}

/// What the configuration says about one host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostConfig {
    pub hostname: Option<String>,
    pub user: Option<String>,
    pub port: Option<u16>,
    pub identity_files: Vec<PathBuf>,
}

impl SshConfig {
    /// `~/.ssh/config`, or an empty configuration when there is none or it cannot be read.
    pub fn load_default() -> SshConfig {
        std::fs::read_to_string(expand_tilde("~/.ssh/config"))
            .map(|t| SshConfig::parse(&t))
            .unwrap_or_default()
    }

    pub fn load(path: &Path) -> std::io::Result<SshConfig> {
        Ok(SshConfig::parse(&std::fs::read_to_string(path)?))
    }

    pub fn parse(text: &str) -> SshConfig {
        let mut blocks = vec![Block { patterns: None, applies_always: true, options: vec![] }];
        for raw in text.lines() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = split_key_value(line);
            let key = key.to_ascii_lowercase();
            match key.as_str() {
                "host" => blocks.push(Block {
                    patterns: Some(
                        value
                            .split_whitespace()
                            .map(|p| {
                                let p = p.trim_matches('"');
                                match p.strip_prefix('!') {
                                    Some(n) => (true, n.to_ascii_lowercase()),
                                    None => (false, p.to_ascii_lowercase()),
                                }
                            })
                            .collect(),
                    ),
                    applies_always: false,
                    options: vec![],
                }),
                "match" => {
                    blocks.push(Block { patterns: None, applies_always: false, options: vec![] })
                }
                _ => {
                    if let Some(b) = blocks.last_mut() {
                        b.options.push((key, unquote(value).to_owned()));
                    }
                }
            }
        }
        SshConfig { blocks }
    }

    /// The settings for `host` (the name as given, e.g. an alias).
    pub fn lookup(&self, host: &str) -> HostConfig {
        let name = host.to_ascii_lowercase();
        let mut hc = HostConfig::default();
        for b in &self.blocks {
            let applies = b.applies_always
                || b.patterns.as_ref().is_some_and(|pats| {
                    let mut hit = false;
                    for (neg, p) in pats {
                        if wildcard_match(p, &name) {
                            if *neg {
                                return false;
                            }
                            hit = true;
                        }
                    }
                    hit
                });
            if !applies {
                continue;
            }
            for (k, v) in &b.options {
                match k.as_str() {
                    "hostname" if hc.hostname.is_none() => {
                        hc.hostname = Some(v.replace("%h", host).replace("%%", "%"))
                    }
                    "user" if hc.user.is_none() => hc.user = Some(v.clone()),
                    "port" if hc.port.is_none() => hc.port = v.parse().ok(),
                    "identityfile" => {
                        let home = std::env::var("HOME").unwrap_or_default();
                        let v = v.replace("%d", &home).replace("%h", host).replace("%%", "%");
                        hc.identity_files.push(expand_tilde(&v));
                    }
                    _ => {}
                }
            }
        }
        hc
    }
}

fn split_key_value(line: &str) -> (&str, &str) {
    let end = line.find(|c: char| c.is_whitespace() || c == '=').unwrap_or(line.len());
    let (k, rest) = line.split_at(end);
    let rest = rest.trim_start();
    let rest = rest.strip_prefix('=').unwrap_or(rest).trim();
    (k, rest)
}

fn unquote(v: &str) -> &str {
    v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
# global first: applies to all, first value wins
Host m2 kubemaster-2
    HostName 10.0.0.12
    User ops
    Port 2222
    IdentityFile ~/.ssh/ops_ed25519

Host 10.0.0.* !10.0.0.99
    User=admin
    IdentityFile "/keys/lab key"

Match host foo
    User nobody

Host *
    User root
    Port 22
    IdentityFile %d/.ssh/id_ecdsa
"#;

    #[test]
    fn first_match_wins_identities_accumulate() {
        let home = std::env::var("HOME").unwrap();
        let c = SshConfig::parse(CONFIG);
        let m2 = c.lookup("M2");
        assert_eq!(m2.hostname.as_deref(), Some("10.0.0.12"));
        assert_eq!(m2.user.as_deref(), Some("ops"));
        assert_eq!(m2.port, Some(2222));
        assert_eq!(
            m2.identity_files,
            [Path::new(&home).join(".ssh/ops_ed25519"), Path::new(&home).join(".ssh/id_ecdsa")]
        );
        let lab = c.lookup("10.0.0.5");
        assert_eq!((lab.user.as_deref(), lab.port, lab.hostname), (Some("admin"), Some(22), None));
        assert_eq!(lab.identity_files[0], Path::new("/keys/lab key"));
        let neg = c.lookup("10.0.0.99");
        assert_eq!(neg.user.as_deref(), Some("root"), "negated pattern skips the block");
        assert_eq!(c.lookup("foo").user.as_deref(), Some("root"), "Match blocks are ignored");
        assert_eq!(SshConfig::parse("").lookup("x"), HostConfig::default());
    }
}
