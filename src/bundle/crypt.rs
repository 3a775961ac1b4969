//! age encryption around the tar.gz: recipients are age X25519 keys (`age1…`) or SSH public
//! keys, identities are age identity files or unencrypted SSH private keys, exactly what the
//! stock `age -r/-R` and `age -d -i` accept, so either side may be the stock CLI.

use std::io::{BufRead, Read, Write};
use std::path::Path;

use super::BundleError;

/// Who may decrypt a bundle.
pub struct Recipients(Vec<Box<dyn age::Recipient + Send>>);

impl std::fmt::Debug for Recipients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Recipients({})", self.0.len())
    }
}

impl Recipients {
    /// Parses `--recipient` values: `age1…`, an SSH public key line, or `@FILE` holding such
    /// lines (blank lines and `#` comments skipped), as `age -R` reads.
    pub fn parse(values: &[String]) -> Result<Self, BundleError> {
        let mut out = Vec::new();
        for v in values {
            if let Some(path) = v.strip_prefix('@') {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| BundleError::io(Path::new(path), e))?;
                for (i, line) in text.lines().enumerate() {
                    let line = line.trim();
                    if line.is_empty() || line.starts_with('#') {
                        continue;
                    }
                    out.push(parse_one(line).map_err(|e| {
                        BundleError::Usage(format!("--recipient @{path}, line {}: {e}", i + 1))
                    })?);
                }
            } else {
                out.push(
                    parse_one(v.trim())
                        .map_err(|e| BundleError::Usage(format!("--recipient: {e}")))?,
                );
            }
        }
        if out.is_empty() {
            return Err(BundleError::Usage(
                "no recipients: give --recipient age1…|ssh-…|@FILE (or --insecure-plaintext)"
                    .into(),
            ));
        }
        Ok(Recipients(out))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn parse_one(s: &str) -> Result<Box<dyn age::Recipient + Send>, String> {
    if s.starts_with("age1") {
        return s
            .parse::<age::x25519::Recipient>()
            .map(|r| Box::new(r) as _)
            .map_err(|e| format!("invalid age recipient {s:?}: {e}"));
    }
    s.parse::<age::ssh::Recipient>().map(|r| Box::new(r) as _).map_err(|e| {
        let short: String = s.chars().take(24).collect();
        format!(
            "{short:?}… is neither an age recipient (age1…) nor a supported SSH public key (ssh-ed25519, ssh-rsa ≥ 2048 bits): {e:?}"
        )
    })
}

/// Keys that can decrypt a bundle (`--decrypt-key`).
#[derive(Default)]
pub struct Identities(pub Vec<Box<dyn age::Identity + Send + Sync>>);

impl Identities {
    /// Reads an age identity file (`AGE-SECRET-KEY-1…` lines) or an unencrypted OpenSSH / PEM
    /// SSH private key (ed25519 or RSA).
    pub fn load(&mut self, path: &Path) -> Result<(), BundleError> {
        let text = std::fs::read(path).map_err(|e| BundleError::io(path, e))?;
        let shown = path.display();
        if text.windows(15).any(|w| w == b"AGE-SECRET-KEY-") {
            let ids = age::IdentityFile::from_buffer(&text[..])
                .and_then(|f| f.into_identities().map_err(std::io::Error::other))
                .map_err(|e| BundleError::Usage(format!("--decrypt-key {shown}: {e}")))?;
            self.0.extend(ids.into_iter().map(|i| i as Box<dyn age::Identity + Send + Sync>));
            return Ok(());
        }
        let id =
            age::ssh::Identity::from_buffer(&text[..], Some(shown.to_string())).map_err(|_| {
                BundleError::Usage(format!(
                    "--decrypt-key {shown}: neither an age identity file nor an SSH private key"
                ))
            })?;
        match id {
            age::ssh::Identity::Unencrypted(_) => {
                self.0.push(Box::new(id));
                Ok(())
            }
            age::ssh::Identity::Encrypted(_) => Err(BundleError::Usage(format!(
                "--decrypt-key {shown} is passphrase-protected: decrypt the bundle with `age -d -i {shown}` first, or use an age identity"
            ))),
            age::ssh::Identity::Unsupported(_) => Err(BundleError::Usage(format!(
                "--decrypt-key {shown}: this SSH key type cannot decrypt age files (use ssh-ed25519 or ssh-rsa)"
            ))),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The first bytes of a binary age file.
pub(crate) const AGE_MAGIC: &[u8] = b"age-encryption.org/v1\n";
/// The first bytes of an armored age file.
pub(crate) const AGE_ARMOR_MAGIC: &[u8] = b"-----BEGIN AGE ENCRYPTED FILE-----";

/// A streaming age writer to `recipients` over `out`; `finish()` it to write the last chunk.
pub(crate) fn encrypt_stream<W: Write>(
    recipients: &Recipients,
    out: W,
) -> Result<age::stream::StreamWriter<W>, BundleError> {
    let enc = age::Encryptor::with_recipients(
        recipients.0.iter().map(|r| r.as_ref() as &dyn age::Recipient),
    )
    .map_err(|e| BundleError::Usage(format!("cannot encrypt to these recipients: {e}")))?;
    enc.wrap_output(out).map_err(|e| BundleError::Internal(format!("age: {e}")))
}

/// Wraps `input` (positioned at the age header) in a streaming decryptor. Every failure, a
/// damaged header included, is a rejected bundle (exit 3), except having no key at all.
pub(crate) fn decrypt<'a, R: BufRead + 'a>(
    input: R,
    ids: &'a Identities,
) -> Result<Box<dyn Read + 'a>, BundleError> {
    if ids.is_empty() {
        return Err(BundleError::Usage(
            "the bundle is encrypted: give --decrypt-key with an age identity or SSH private key"
                .into(),
        ));
    }
    let dec = age::Decryptor::new_buffered(input)
        .map_err(|e| BundleError::Decrypt(format!("age header: {}", age_message(&e))))?;
    let r = dec.decrypt(ids.0.iter().map(|i| i.as_ref() as &dyn age::Identity)).map_err(
        |e| match e {
            age::DecryptError::NoMatchingKeys => BundleError::Decrypt(
                "none of the --decrypt-key keys is a recipient of this bundle".into(),
            ),
            e => BundleError::Decrypt(age_message(&e)),
        },
    )?;
    Ok(Box::new(r))
}

/// The first line of an age error: some add a second ("Have you tried upgrading to the latest
/// version?"), and hapki's errors are one line.
fn age_message(e: &age::DecryptError) -> String {
    e.to_string().lines().next().unwrap_or("").trim_end_matches('.').to_owned()
}
