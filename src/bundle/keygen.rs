//! `hapki keygen`: a fresh Ed25519 OpenSSH key pair for signing bundles.

use std::io::Write;
use std::path::{Path, PathBuf};

use ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey};

use super::format::NAMESPACE;
use super::BundleError;

/// What [`keygen`] wrote.
#[derive(Debug, Clone)]
pub struct KeygenOutput {
    pub private_path: PathBuf,
    pub public_path: PathBuf,
    /// `SHA256:…`.
    pub fingerprint: String,
    /// The `ssh-ed25519 AAAA… comment` line.
    pub public_line: String,
    /// A line for an allowed_signers file, limited to the `hapki-bundle` namespace.
    pub allowed_signers_line: String,
}

/// Writes an unencrypted Ed25519 key to `out` (mode 0600) and its public key to `out.pub`.
/// Refuses to overwrite either; never leaves one without the other.
pub fn keygen(out: &Path, principal: &str, comment: &str) -> Result<KeygenOutput, BundleError> {
    if principal.is_empty() || principal.contains(char::is_whitespace) {
        return Err(BundleError::Usage(format!(
            "--principal {principal:?}: must be one word, e.g. ops@example.com"
        )));
    }
    let mut public_path = out.as_os_str().to_owned();
    public_path.push(".pub");
    let public_path = PathBuf::from(public_path);
    for p in [out, public_path.as_path()] {
        if p.symlink_metadata().is_ok() {
            return Err(BundleError::Usage(format!(
                "{} already exists: hapki keygen never overwrites a key; choose another --out",
                p.display()
            )));
        }
    }
    let mut key = PrivateKey::random(&mut rand::rngs::OsRng, Algorithm::Ed25519)
        .map_err(|e| BundleError::Internal(format!("generating the key: {e}")))?;
    key.set_comment(comment);
    let pem = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| BundleError::Internal(format!("encoding the key: {e}")))?;
    let public_line = key
        .public_key()
        .to_openssh()
        .map_err(|e| BundleError::Internal(format!("encoding the public key: {e}")))?;
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let write = |path: &Path, bytes: &[u8], mode: u32| -> Result<(), BundleError> {
        // A temp file is created 0600 from the start; persist_noclobber refuses a file that
        // appeared meanwhile.
        let mut tmp = tempfile::Builder::new()
            .prefix(".hapki-keygen-")
            .tempfile_in(&dir)
            .map_err(|e| BundleError::io(&dir, e))?;
        tmp.write_all(bytes).map_err(|e| BundleError::io(path, e))?;
        tmp.as_file()
            .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))
            .map_err(|e| BundleError::io(path, e))?;
        tmp.as_file().sync_all().map_err(|e| BundleError::io(path, e))?;
        tmp.persist_noclobber(path).map_err(|e| BundleError::io(path, e.error))?;
        Ok(())
    };
    write(&public_path, format!("{public_line}\n").as_bytes(), 0o644)?;
    if let Err(e) = write(out, pem.as_bytes(), 0o600) {
        let _ = std::fs::remove_file(&public_path);
        return Err(e);
    }
    let key_part = public_line.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    Ok(KeygenOutput {
        private_path: out.to_path_buf(),
        public_path,
        fingerprint: key.public_key().fingerprint(HashAlg::Sha256).to_string(),
        allowed_signers_line: format!("{principal} namespaces=\"{NAMESPACE}\" {key_part}"),
        public_line,
    })
}
