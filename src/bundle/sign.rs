//! SSHSIG signatures over `SHA256SUMS` (namespace [`NAMESPACE`]) through the `ssh-key` crate:
//! byte-compatible with `ssh-keygen -Y sign` / `-Y verify`.

use std::path::Path;

use serde::Serialize;
use ssh_key::{HashAlg, LineEnding, PrivateKey, SshSig};
use time::OffsetDateTime;

use super::format::NAMESPACE;
use super::trust::AllowedSigners;
use super::BundleError;

/// Who signed a bundle, as established by the signature and the trust file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Signer {
    /// `SHA256:…` as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    /// The principals field of the allowed_signers line that trusts the key.
    pub principal: String,
}

/// Reads an OpenSSH private key for signing. For a passphrase-protected key `passphrase` is
/// asked (only then: the library never prompts, the caller decides how — a terminal prompt, an
/// environment variable); without one the error says how to provide it.
pub fn load_signing_key(
    path: &Path,
    passphrase: &dyn Fn() -> Option<String>,
) -> Result<PrivateKey, BundleError> {
    let text = std::fs::read_to_string(path).map_err(|e| BundleError::io(path, e))?;
    let key = PrivateKey::from_openssh(text.trim_end()).map_err(|e| {
        BundleError::Usage(format!(
            "--sign-key {}: not an OpenSSH private key ({e}); make one with `hapki keygen --out FILE`",
            path.display()
        ))
    })?;
    if !key.is_encrypted() {
        return Ok(key);
    }
    match passphrase() {
        Some(p) => key.decrypt(p.as_bytes()).map_err(|_| {
            BundleError::Usage(format!("--sign-key {}: wrong passphrase", path.display()))
        }),
        None => Err(BundleError::Usage(format!(
            "--sign-key {} is passphrase-protected: run hapki on a terminal to be asked for it, or put it in the environment variable HAPKI_SIGN_KEY_PASSPHRASE",
            path.display()
        ))),
    }
}

/// Signs `sums` and returns the armored signature (`-----BEGIN SSH SIGNATURE-----`, LF endings).
pub(crate) fn sign(key: &PrivateKey, sums: &[u8]) -> Result<Vec<u8>, BundleError> {
    let sig = key.sign(NAMESPACE, HashAlg::Sha512, sums).map_err(|e| {
        BundleError::Usage(format!("cannot sign with the {} key: {e}", key.algorithm()))
    })?;
    let pem = sig
        .to_pem(LineEnding::LF)
        .map_err(|e| BundleError::Internal(format!("encoding the signature: {e}")))?;
    Ok(pem.into_bytes())
}

/// `SHA256:…` fingerprint of a signing key.
pub(crate) fn fingerprint(key: &PrivateKey) -> String {
    key.public_key().fingerprint(HashAlg::Sha256).to_string()
}

/// Checks the armored signature `sig` over `sums` against `trust`: the signer's key must be on a
/// line that allows namespace `hapki-bundle` at `now` (listing it in `namespaces=`, or matching
/// one of `trust.principals`), and the signature must verify.
pub(crate) fn verify(
    sums: &[u8],
    sig: &[u8],
    trust: &AllowedSigners,
    now: OffsetDateTime,
) -> Result<Signer, BundleError> {
    let rejected = |m: String| BundleError::Signature(m);
    let sig = SshSig::from_pem(sig)
        .map_err(|e| rejected(format!("SHA256SUMS.sig is not an armored SSH signature: {e}")))?;
    let fingerprint = sig.public_key().fingerprint(HashAlg::Sha256).to_string();
    if sig.namespace() != NAMESPACE {
        return Err(rejected(format!(
            "SHA256SUMS.sig was made for namespace {:?}, not {NAMESPACE:?} (signer {fingerprint})",
            sig.namespace()
        )));
    }
    let mut refusals = Vec::new();
    let mut matched = None;
    for line in trust.lines_for(sig.public_key()) {
        match line.allows(NAMESPACE, now, &trust.principals) {
            Ok(()) => {
                matched = Some(line);
                break;
            }
            Err(why) => refusals.push(why.to_string()),
        }
    }
    let Some(line) = matched else {
        if !refusals.is_empty() {
            return Err(rejected(format!(
                "signer {fingerprint} is not allowed: {}",
                refusals.join("; ")
            )));
        }
        let key_line =
            ssh_key::PublicKey::new(sig.public_key().clone(), "").to_openssh().unwrap_or_default();
        return Err(BundleError::UnknownSigner { fingerprint, key_line });
    };
    line.key
        .verify(NAMESPACE, sums, &sig)
        .map_err(|_| rejected(format!("signature by {fingerprint} does not match SHA256SUMS")))?;
    Ok(Signer { fingerprint, principal: line.principals.clone() })
}
