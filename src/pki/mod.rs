//! kubeadm's shared PKI: the eight files that every control-plane node must hold identically.
//!
//! This module is the one place that knows those files, their kinds, modes and pairs
//! ([`SHARED_FILES`]), and (in `fingerprint`) the one place that computes fingerprints.
//! kubeadm itself never checks that a CA key matches its certificate nor that `sa.key` matches
//! `sa.pub`; `check` does, so a wrong pair is caught before anything moves.

mod der;
mod error;

pub(crate) mod chain;
pub(crate) mod check;
pub(crate) mod fingerprint;
pub(crate) mod generate;
pub(crate) mod inspect;
pub(crate) mod parse;
pub(crate) mod renew;

pub use check::{
    check_dir, check_files, read_dir, CheckOptions, CheckReport, FileReport, PkiFile, Problem,
};
pub use error::PkiError;
pub use generate::{init, issue_leaf, Algorithm, IssuedLeaf};
pub use inspect::{inspect_pem, InspectReport};
pub use renew::{renew_cas, Ca, CaStatus, RenewOptions, RenewReport};

use serde::Serialize;

/// What a PEM file holds, as kubeadm reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    Certificate,
    PrivateKey,
    PublicKey,
}

/// One of the eight shared files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedFile {
    /// Path relative to the pki directory, with `/` separators (`etcd/ca.crt`).
    pub name: &'static str,
    pub kind: FileKind,
    /// The mode kubeadm writes it with; hapki installs exactly this.
    pub mode: u32,
    /// The other half of its pair: a CA certificate's key, a key's certificate, `sa.key` ↔ `sa.pub`.
    pub pair: &'static str,
    /// For CA certificates: the subject common name kubeadm gives the CA.
    pub ca_common_name: Option<&'static str>,
}

/// The eight files `kubeadm init --upload-certs` ships (kubeadm's `copycerts.certsToTransfer`),
/// in the order kubeadm's `SharedCertificateExists` checks them, which is also the bundle order.
///
/// `sa.pub` is 0600 as the init node's key writer leaves it: it is public, but nothing gains
/// from loosening what kubeadm wrote, and a uniform rule ("everything but CA certificates is
/// 0600") is easier to audit.
pub const SHARED_FILES: [SharedFile; 8] = [
    SharedFile {
        name: "ca.crt",
        kind: FileKind::Certificate,
        mode: 0o644,
        pair: "ca.key",
        ca_common_name: Some("kubernetes"),
    },
    SharedFile {
        name: "ca.key",
        kind: FileKind::PrivateKey,
        mode: 0o600,
        pair: "ca.crt",
        ca_common_name: None,
    },
    SharedFile {
        name: "sa.key",
        kind: FileKind::PrivateKey,
        mode: 0o600,
        pair: "sa.pub",
        ca_common_name: None,
    },
    SharedFile {
        name: "sa.pub",
        kind: FileKind::PublicKey,
        mode: 0o600,
        pair: "sa.key",
        ca_common_name: None,
    },
    SharedFile {
        name: "front-proxy-ca.crt",
        kind: FileKind::Certificate,
        mode: 0o644,
        pair: "front-proxy-ca.key",
        ca_common_name: Some("front-proxy-ca"),
    },
    SharedFile {
        name: "front-proxy-ca.key",
        kind: FileKind::PrivateKey,
        mode: 0o600,
        pair: "front-proxy-ca.crt",
        ca_common_name: None,
    },
    SharedFile {
        name: "etcd/ca.crt",
        kind: FileKind::Certificate,
        mode: 0o644,
        pair: "etcd/ca.key",
        ca_common_name: Some("etcd-ca"),
    },
    SharedFile {
        name: "etcd/ca.key",
        kind: FileKind::PrivateKey,
        mode: 0o600,
        pair: "etcd/ca.crt",
        ca_common_name: None,
    },
];

/// Mode of the pki directory and its `etcd/` subdirectory.
pub(crate) const DIR_MODE: u32 = 0o755;

/// Looks up one of the eight shared files by its relative name.
pub(crate) fn shared_file(name: &str) -> Option<&'static SharedFile> {
    SHARED_FILES.iter().find(|f| f.name == name)
}
