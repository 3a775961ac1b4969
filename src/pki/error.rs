//! Errors of the PKI model. Each one names the file and says what to do, in one line.

use std::path::PathBuf;

use crate::error::{Categorized, Category};

/// Why reading, parsing, checking or generating PKI files failed.
///
/// Categories (exit codes): a file that is unreadable as kubeadm would read it, or an incoherent
/// PKI, is [`Category::Verification`] (3); a missing pki directory or a refusal to overwrite an
/// existing file is [`Category::Usage`] (2) because the operator pointed hapki at the wrong place;
/// an I/O failure or a failed key generation is [`Category::Unexpected`] (1).
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file could not be read or written for a reason other than its content.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The pki directory itself does not exist or is not a directory.
    #[error("{}: no such directory: pass the directory that holds ca.crt (kubeadm's default is /etc/kubernetes/pki)", path.display())]
    DirNotFound { path: PathBuf },
    /// The content of a file is not what kubeadm would accept (bad PEM, wrong block type,
    /// unsupported key algorithm, a directory where a file should be…). `message` says why and
    /// what to do; `file` is the name the operator knows it by.
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
    /// `pki init` found a file it would have replaced.
    #[error("{}: already exists; pki init never overwrites: choose an empty directory or move the existing PKI away", path.display())]
    WouldOverwrite { path: PathBuf },
    /// `pki renew-ca` will not re-issue: a key is missing or does not match, the new validity
    /// would end earlier, the subject cannot be reproduced byte for byte.
    #[error("{file}: {message}")]
    Refused { file: String, message: String },
    /// Key generation or signing failed inside the crypto library.
    #[error("{context}: {message}")]
    Crypto { context: String, message: String },
}

impl PkiError {
    pub(crate) fn invalid(file: &str, message: impl Into<String>) -> Self {
        PkiError::Invalid { file: file.to_string(), message: message.into() }
    }
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        PkiError::Io { path: path.into(), source }
    }
    pub(crate) fn crypto(context: &str, message: impl std::fmt::Display) -> Self {
        PkiError::Crypto { context: context.to_string(), message: message.to_string() }
    }
}

impl Categorized for PkiError {
    fn category(&self) -> Category {
        match self {
            PkiError::Io { .. } | PkiError::Crypto { .. } => Category::Unexpected,
            PkiError::DirNotFound { .. }
            | PkiError::WouldOverwrite { .. }
            | PkiError::Refused { .. } => Category::Usage,
            PkiError::Invalid { .. } => Category::Verification,
        }
    }
}
