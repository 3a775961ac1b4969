//! `hapki trust install`: the node's own, pinned trust file.
//!
//! A node that holds `/etc/hapki/allowed_signers` verifies every bundle against that file
//! alone (only its lines whose `namespaces=` lists `hapki-bundle`), whatever the operator's
//! side sends: the signer's key is then pinned on the node, and an operator who only pushes
//! cannot make a node install anything another key signed.

use serde::Serialize;

use crate::error::{Categorized, Category};
use crate::transport::{Session, Target, Transport, TransportError};

/// Where a node keeps its pinned trust file (read by the install script).
pub const PINNED_TRUST: &str = "/etc/hapki/allowed_signers";

/// Cap on a trust file: a few hundred keys.
const MAX_TRUST: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TrustInstallError {
    #[error("the trust file {0}")]
    Invalid(String),
    #[error("installing {PINNED_TRUST} failed: {0}")]
    Node(String),
    #[error(transparent)]
    Transport(#[from] TransportError),
}

impl Categorized for TrustInstallError {
    fn category(&self) -> Category {
        match self {
            TrustInstallError::Invalid(_) => Category::Usage,
            TrustInstallError::Node(_) => Category::NodesFailed,
            TrustInstallError::Transport(e) => e.category(),
        }
    }
}

/// Whether `line` of an allowed_signers file lets its key sign bundles on a node: its options
/// (the second field) hold `namespaces="…"` listing `hapki-bundle`. The same rule as the node
/// script's, which ignores every other line of the pinned file.
pub fn signs_bundles(line: &str) -> bool {
    let t = line.trim();
    if t.is_empty() || t.starts_with('#') {
        return false;
    }
    let mut f = t.split_whitespace();
    let (Some(principals), Some(opts)) = (f.next(), f.next()) else { return false };
    if principals.contains('"') {
        return false;
    }
    opts_namespaces(opts).is_some_and(|v| v.split(',').any(|n| n == "hapki-bundle"))
}

/// The quoted list of a `namespaces="a,b"` option inside a comma-separated option field.
fn opts_namespaces(opts: &str) -> Option<&str> {
    let start = opts.find("namespaces=\"")?;
    if start > 0 && !opts[..start].ends_with(',') {
        return None;
    }
    let rest = &opts[start + "namespaces=\"".len()..];
    let end = rest.find('"')?;
    let tail = &rest[end + 1..];
    (tail.is_empty() || tail.starts_with(',')).then_some(&rest[..end])
}

/// Checks a trust file before it goes to any node: text, bounded, and at least one line that
/// lets a key sign bundles (else every push to the node would be refused).
pub fn check(text: &[u8]) -> Result<(), TrustInstallError> {
    if text.len() > MAX_TRUST {
        return Err(TrustInstallError::Invalid(format!("is larger than {MAX_TRUST} bytes")));
    }
    let s = std::str::from_utf8(text)
        .map_err(|_| TrustInstallError::Invalid("is not UTF-8 text".into()))?;
    if s.contains('\0') {
        return Err(TrustInstallError::Invalid("holds a NUL byte".into()));
    }
    if !s.lines().any(signs_bundles) {
        return Err(TrustInstallError::Invalid(
            "has no line whose namespaces= lists hapki-bundle, so the nodes would refuse every bundle; add namespaces=\"hapki-bundle\" to the signer's line".into(),
        ));
    }
    Ok(())
}

/// Installs `text` (checked with [`check`]) as the node's pinned trust file.
pub fn install(session: &mut dyn Session, text: &[u8]) -> Result<(), TrustInstallError> {
    check(text)?;
    let script = format!("{}{}", include_str!("common.sh"), include_str!("trust_install.sh"));
    let out = session.run(&script, &[], &mut &text[..])?;
    if !out.success() {
        return Err(TrustInstallError::Node(super::stderr_tail(&out.stderr)));
    }
    Ok(())
}

/// One node's outcome of `hapki trust install` (JSON: `node`, `ok`, `message`).
#[derive(Debug, Clone, Serialize)]
pub struct InstallResult {
    pub node: String,
    pub ok: bool,
    pub message: String,
    /// For a failure: which exit-code class it is in (a host key: exit 4).
    #[serde(skip)]
    pub category: Option<Category>,
}

/// Installs `text` on every target in parallel, one result per target in order.
pub fn install_all(
    targets: &[&Target],
    transport: &dyn Transport,
    text: &[u8],
    parallel: usize,
) -> Vec<InstallResult> {
    crate::transport::for_each_parallel(targets, parallel.max(1), |target| {
        let node = target.name.clone();
        let done = transport
            .connect(target)
            .map_err(TrustInstallError::from)
            .and_then(|mut s| install(s.as_mut(), text));
        match done {
            Ok(()) => InstallResult {
                node,
                ok: true,
                message: format!("installed {PINNED_TRUST}"),
                category: None,
            },
            Err(e) => InstallResult {
                node,
                ok: false,
                message: e.to_string(),
                category: Some(e.category()),
            },
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_lines_naming_hapki_bundle_sign_bundles() {
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOn";
        assert!(signs_bundles(&format!("ops namespaces=\"hapki-bundle\" {key}")));
        assert!(signs_bundles(&format!("ops namespaces=\"git,hapki-bundle\" {key}")));
        assert!(signs_bundles(&format!("ops cert-authority,namespaces=\"hapki-bundle\" {key}")));
        assert!(!signs_bundles(&format!("dev {key}")), "no namespaces= at all");
        assert!(!signs_bundles(&format!("dev namespaces=\"git\" {key}")));
        assert!(!signs_bundles(&format!("dev namespaces=\"hapki-bundle-x\" {key}")));
        assert!(!signs_bundles(&format!("dev {key} namespaces=\"hapki-bundle\"")), "a comment");
        assert!(!signs_bundles("# ops namespaces=\"hapki-bundle\" x"));
        assert!(check(format!("dev {key}\n").as_bytes()).is_err());
        assert!(check(format!("ops namespaces=\"hapki-bundle\" {key}\n").as_bytes()).is_ok());
    }
}
