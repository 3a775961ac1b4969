//! Signed, encrypted bundles of kubeadm's shared PKI: the thing that travels.
//!
//! - [`create`] packs the eight shared files (checked coherent first) into the format of
//!   `format`, signs `SHA256SUMS` (SSHSIG, `sign`), encrypts with age (`crypt`) and writes
//!   the file atomically.
//! - [`open_and_verify`] reads a bundle with the strict streaming [`reader`] and checks, in
//!   this order: decryption → signature over `SHA256SUMS` against an allowed_signers file
//!   ([`trust`]) → every entry's hash → `bundle.json` agrees with `SHA256SUMS` and with the PEM
//!   contents → PKI coherence → not expired, not dated in the future. The result,
//!   [`VerifiedBundle`], is the only way other modules (push) get at a bundle's files.
//! - [`keygen`] makes an Ed25519 signing key.
//!
//! Every rejection is a [`BundleError`] of category Verification (exit 3) naming what failed.

pub(crate) mod crypt;
pub(crate) mod format;
mod keygen;
pub mod reader;
pub(crate) mod sign;
pub(crate) mod stored;
pub mod trust;
pub(crate) mod writer;

use std::path::{Path, PathBuf};

use serde::Serialize;
use time::OffsetDateTime;

use crate::error::{Categorized, Category};
pub use crypt::{Identities, Recipients};
pub use format::{Manifest, ManifestArtifact, ManifestFile};
pub use keygen::{keygen, KeygenOutput};
pub use reader::{ArtifactEvent, CHUNK};
pub use sign::{load_signing_key, Signer};
pub use trust::AllowedSigners;
pub use writer::{create, CreateOptions, Protection};

use crate::pki::check;
pub use crate::pki::PkiFile;

/// Why a bundle could not be made or was rejected.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    /// Bad input from the operator: a flag, a key file, a recipient.
    #[error("{0}")]
    Usage(String),
    /// The age layer failed: damaged, or none of the keys is a recipient.
    #[error("bundle rejected: cannot decrypt: {0}")]
    Decrypt(String),
    /// The archive does not have the one shape the format allows.
    #[error("bundle rejected: {}", layout_message(.entry, .reason))]
    Layout { entry: Option<String>, reason: String },
    /// The signature is malformed, for another namespace, from a key the trust file limits, or
    /// does not match.
    #[error("bundle rejected: {0}")]
    Signature(String),
    /// Signed by a key that is not in the trust file at all.
    #[error("bundle rejected: signed by {fingerprint}, which is not in the allowed_signers file; if (and only if) you have confirmed that fingerprint with its owner, add the line `PRINCIPAL namespaces=\"hapki-bundle\" {key_line}` to the file")]
    UnknownSigner { fingerprint: String, key_line: String },
    /// An entry's bytes do not hash to its `SHA256SUMS` line.
    #[error("bundle rejected: entry {entry} does not match its SHA256SUMS line")]
    Hash { entry: String },
    /// `bundle.json` is malformed or disagrees with the signed hashes or the PEM contents.
    #[error("bundle rejected: bundle.json: {0}")]
    Manifest(String),
    /// The PKI in the bundle (or the directory being bundled) fails the coherence check.
    #[error("PKI is not coherent: {0}")]
    Incoherent(String),
    #[error(
        "bundle rejected: expired at {expires_at} (now {now}); make a new one with `hapki bundle`"
    )]
    Expired { expires_at: String, now: String },
    #[error("bundle rejected: created at {created_at}, in the future (now {now}); check this machine's clock and the signer's")]
    FromTheFuture { created_at: String, now: String },
    /// Reading the PKI to bundle failed (unreadable file, not a directory…).
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    /// A bug or an impossible state.
    #[error("internal error: {0}")]
    Internal(String),
}

fn layout_message(entry: &Option<String>, reason: &str) -> String {
    match entry {
        Some(e) => format!("entry {e:?} {reason}"),
        None => reason.to_string(),
    }
}

impl BundleError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        BundleError::Io { path: path.to_path_buf(), error: source }
    }

    pub(crate) fn incoherent(report: &check::CheckReport) -> Self {
        // Each problem's message already starts with its file's name.
        let list: Vec<String> = report.problems.iter().map(|p| p.message.clone()).collect();
        BundleError::Incoherent(list.join("; "))
    }
}

impl Categorized for BundleError {
    fn category(&self) -> Category {
        match self {
            BundleError::Io { .. } | BundleError::Internal(_) => Category::Unexpected,
            BundleError::Usage(_) => Category::Usage,
            BundleError::Pki(e) => e.category(),
            _ => Category::Verification,
        }
    }
}

/// Knobs of [`open_and_verify`].
#[derive(Debug, Clone, Copy)]
pub struct VerifyOptions {
    /// The time the bundle must be valid at.
    pub now: OffsetDateTime,
    /// How far in the future `created_at` may be (clock skew between signer and verifier).
    pub skew: time::Duration,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions { now: OffsetDateTime::now_utc(), skew: time::Duration::minutes(5) }
    }
}

/// One PKI file of a verified bundle.
#[derive(Clone, PartialEq, Eq)]
pub struct BundleFile {
    /// Relative to the pki directory: `ca.crt`, `etcd/ca.key`.
    pub name: String,
    /// The mode to install it with (kubeadm's).
    pub mode: u32,
    pub bytes: Vec<u8>,
}

// Hand-written so that `{:?}` anywhere (a log line, a panic message) never shows key bytes.
impl std::fmt::Debug for BundleFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleFile")
            .field("name", &self.name)
            .field("mode", &self.mode)
            .field("bytes", &format_args!("<{} bytes>", self.bytes.len()))
            .finish()
    }
}

/// A bundle that passed every check of [`open_and_verify`]. Holds CA private keys: never log
/// `files`.
#[derive(Debug, Clone)]
pub struct VerifiedBundle {
    pub manifest: Manifest,
    pub signer: Signer,
    /// `SHA256SUMS` as signed.
    pub sha256sums: Vec<u8>,
    /// The armored SSHSIG of `sha256sums`.
    pub signature: Vec<u8>,
    /// `bundle.json` exactly as signed (its hash is in `sha256sums`).
    pub manifest_bytes: Vec<u8>,
    /// The eight shared files in bundle order (empty in an artifacts-only bundle).
    pub files: Vec<BundleFile>,
    /// Whether the bundle file was age-encrypted.
    pub encrypted: bool,
}

impl VerifiedBundle {
    /// Whether the bundle carries the shared PKI (an artifacts-only bundle does not).
    pub fn has_pki(&self) -> bool {
        !self.files.is_empty()
    }
}

/// Opens the bundle at `path` and runs every check (see the module docs). Nothing is written
/// anywhere; memory stays bounded whatever the file holds.
pub fn open_and_verify(
    path: &Path,
    trust: &AllowedSigners,
    identities: &Identities,
    opts: &VerifyOptions,
) -> Result<VerifiedBundle, BundleError> {
    let file = std::fs::File::open(path).map_err(|e| BundleError::io(path, e))?;
    verify_reader(file, trust, identities, opts)
}

/// Verifies a bundle in one streaming pass and hands its artifacts' bytes to `sink` as they go
/// by: `on_head` gets the bundle verified up to its first artifact (signature, `bundle.json`,
/// PKI coherence, expiry), then the artifact events follow, each artifact's hash checked at its
/// end. Only when this returns `Ok` is the whole bundle known good: a consumer that acted on
/// artifact bytes (push stages them on nodes) must not commit anything before that.
///
/// `on_head` returning `Ok(false)` stops the read after the head (the caller needs no
/// artifact; their hashes are then unchecked, so the caller must not use any artifact bytes).
///
/// A bundle without artifacts (`manifest.artifacts` empty) has nothing after its head:
/// `on_head` then runs only once the whole file has been read and checked to its last byte, so
/// what it gets is the verified bundle and the caller may act on it at once.
pub(crate) fn open_streaming(
    path: &Path,
    trust: &AllowedSigners,
    identities: &Identities,
    opts: &VerifyOptions,
    on_head: &mut dyn FnMut(&VerifiedBundle) -> Result<bool, BundleError>,
    sink: &mut dyn FnMut(ArtifactEvent<'_>) -> Result<(), BundleError>,
) -> Result<VerifiedBundle, BundleError> {
    let file = std::fs::File::open(path).map_err(|e| BundleError::io(path, e))?;
    let mut head = None;
    let raw = reader::read_bundle_streaming(
        file,
        identities,
        &mut |sums, sig| sign::verify(sums, sig, trust, opts.now),
        &mut |raw| {
            let verified = check_contents(raw.clone(), opts, false)?;
            let go_on = on_head(&verified)?;
            head = Some(verified);
            Ok(go_on)
        },
        sink,
    )?;
    match head {
        // Nothing was read after the head: it is the answer, checked once.
        Some(head) if raw.artifacts.is_empty() => Ok(head),
        _ => {
            let complete = raw.complete;
            check_contents(raw, opts, complete)
        }
    }
}

/// [`open_and_verify`] on any reader (a bundle received over a pipe or held in memory).
pub(crate) fn verify_reader<R: std::io::Read>(
    input: R,
    trust: &AllowedSigners,
    identities: &Identities,
    opts: &VerifyOptions,
) -> Result<VerifiedBundle, BundleError> {
    let raw = reader::read_bundle(input, identities, &mut |sums, sig| {
        sign::verify(sums, sig, trust, opts.now)
    })?;
    check_contents(raw, opts, true)
}

/// Everything after the archive is known to be authentic: bundle.json against SHA256SUMS and the
/// PEM contents, coherence, validity period.
///
/// `complete`: every artifact has been read (their sizes are then checked against bundle.json).
fn check_contents(
    raw: reader::RawBundle,
    opts: &VerifyOptions,
    complete: bool,
) -> Result<VerifiedBundle, BundleError> {
    let manifest = check_manifest(&raw)?;
    check_artifacts(&manifest, &raw, complete)?;
    let files: Vec<BundleFile> = raw
        .files
        .iter()
        .map(|(n, mode, bytes)| BundleFile {
            name: n.strip_prefix(format::PKI_PREFIX).unwrap_or(n).to_string(),
            mode: *mode,
            bytes: bytes.clone(),
        })
        .collect();
    check_pki(&manifest, &files, opts)?;
    check_validity(&manifest, opts)?;
    Ok(VerifiedBundle {
        manifest,
        signer: raw.signer,
        sha256sums: raw.sums,
        signature: raw.signature,
        manifest_bytes: raw.manifest_bytes,
        files,
        encrypted: raw.encrypted,
    })
}

/// `bundle.json` parsed, of this format version, naming the key that signed, dated as the tar
/// headers are, listing the files the archive holds.
fn check_manifest(raw: &reader::RawBundle) -> Result<Manifest, BundleError> {
    let bad = |m: String| BundleError::Manifest(m);
    let manifest: Manifest = serde_json::from_slice(&raw.manifest_bytes)
        .map_err(|e| bad(format!("invalid JSON: {e}")))?;
    if manifest.format_version != format::FORMAT_VERSION {
        return Err(bad(format!(
            "format_version {} is not {}: this hapki is too old or the bundle too new",
            manifest.format_version,
            format::FORMAT_VERSION
        )));
    }
    if manifest.signer != raw.signer.fingerprint {
        return Err(bad(format!(
            "names signer {} but SHA256SUMS.sig is by {}",
            manifest.signer, raw.signer.fingerprint
        )));
    }
    // hapki's writer stamps every tar header with created_at; the reader checked they agree.
    let stamped = manifest.created_at.unix_timestamp().max(0) as u64;
    if raw.mtime != stamped {
        return Err(BundleError::Layout {
            entry: Some(format::MANIFEST.to_string()),
            reason: format!(
                "has a tar header mtime ({}) that is not bundle.json's created_at ({stamped}): the archive was altered after signing; make a new bundle with `hapki bundle`",
                raw.mtime
            ),
        });
    }
    let names: Vec<&str> = manifest.files.iter().map(|f| f.name.as_str()).collect();
    let want: Vec<&str> = if raw.files.is_empty() {
        Vec::new()
    } else {
        crate::pki::SHARED_FILES.iter().map(|f| f.name).collect()
    };
    if names != want {
        return Err(bad(format!("files are {names:?}, expected {want:?}")));
    }
    Ok(manifest)
}

/// The PKI files are coherent, and bundle.json says of each what the file itself shows.
fn check_pki(
    manifest: &Manifest,
    files: &[BundleFile],
    opts: &VerifyOptions,
) -> Result<(), BundleError> {
    let bad = |m: String| BundleError::Manifest(m);
    let pki_files: Vec<PkiFile> = files
        .iter()
        .map(|f| PkiFile { name: f.name.clone(), bytes: f.bytes.clone(), mode: Some(f.mode) })
        .collect();
    let report = check::check_files(
        &pki_files,
        &check::CheckOptions {
            warn_within: crate::duration::Duration::from_secs(0),
            now: opts.now,
        },
    );
    if !report.ok && !files.is_empty() {
        return Err(BundleError::incoherent(&report));
    }
    for (m, f) in manifest.files.iter().zip(files) {
        let rep = report
            .files
            .iter()
            .find(|r| r.name == m.name)
            .ok_or_else(|| BundleError::Internal(format!("no report for {}", m.name)))?;
        let fields = [
            ("mode", format!("{:04o}", m.mode), format!("{:04o}", f.mode)),
            ("sha256", m.sha256.clone(), rep.sha256.clone()),
            ("kind", format!("{:?}", Some(m.kind)), format!("{:?}", rep.kind)),
            ("cert_sha256", format!("{:?}", m.cert_sha256), format!("{:?}", rep.cert_sha256)),
            ("spki_sha256", format!("{:?}", m.spki_sha256), format!("{:?}", rep.spki_sha256)),
            (
                "not_after",
                format!("{:?}", m.not_after),
                format!("{:?}", parse_rfc3339(rep.not_after.as_deref())?),
            ),
        ];
        for (field, said, is) in fields {
            if said != is {
                return Err(bad(format!(
                    "{field} of {} says {said} but the file has {is}",
                    m.name
                )));
            }
        }
    }
    let discovery = (!files.is_empty()).then_some(manifest.discovery_token_ca_cert_hash.as_str());
    if report.discovery_token_ca_cert_hash.as_deref().filter(|_| !files.is_empty()) != discovery {
        return Err(bad(format!(
            "discovery_token_ca_cert_hash {} does not match ca.crt ({:?})",
            manifest.discovery_token_ca_cert_hash, report.discovery_token_ca_cert_hash
        )));
    }
    Ok(())
}

/// Not expired, not dated in the future (beyond the allowed skew).
fn check_validity(manifest: &Manifest, opts: &VerifyOptions) -> Result<(), BundleError> {
    if manifest.expires_at <= manifest.created_at {
        return Err(BundleError::Manifest("expires_at is not after created_at".into()));
    }
    let fmt = |t: OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| t.to_string())
    };
    if opts.now >= manifest.expires_at {
        return Err(BundleError::Expired {
            expires_at: fmt(manifest.expires_at),
            now: fmt(opts.now),
        });
    }
    if manifest.created_at > opts.now + opts.skew {
        return Err(BundleError::FromTheFuture {
            created_at: fmt(manifest.created_at),
            now: fmt(opts.now),
        });
    }
    Ok(())
}

/// bundle.json's artifact list against the signed SHA256SUMS lines and what was read.
fn check_artifacts(
    manifest: &Manifest,
    raw: &reader::RawBundle,
    complete: bool,
) -> Result<(), BundleError> {
    let bad = |m: String| BundleError::Manifest(m);
    let sums = format::parse_sums(&raw.sums).map_err(bad)?;
    let listed: Vec<&(String, String)> =
        sums.iter().filter(|(n, _)| n.starts_with(format::ARTIFACT_PREFIX)).collect();
    if listed.len() != manifest.artifacts.len() {
        return Err(bad(format!(
            "lists {} artifacts but SHA256SUMS has {}",
            manifest.artifacts.len(),
            listed.len()
        )));
    }
    let mut dests = std::collections::HashSet::new();
    for (i, (a, (name, sha))) in manifest.artifacts.iter().zip(listed).enumerate() {
        if a.name != *name || a.name != format::artifact_name(i) {
            return Err(bad(format!("artifact {i} is named {:?}, expected {name}", a.name)));
        }
        if a.sha256 != *sha {
            return Err(bad(format!("sha256 of {} disagrees with SHA256SUMS", a.name)));
        }
        crate::artifacts::check_dest(&a.dest).map_err(|m| bad(format!("{}: {m}", a.name)))?;
        if !dests.insert(a.dest.as_str()) {
            return Err(bad(format!("two artifacts install to {}", a.dest)));
        }
        if a.roles.is_empty() || a.mode & !0o777 != 0 || a.size > format::ARTIFACT_MAX {
            return Err(bad(format!("{}: roles, mode or size out of range", a.name)));
        }
        if !a.owner.split_once(':').is_some_and(|(u, g)| {
            let ok = |w: &str| {
                !w.is_empty()
                    && w.len() <= 32
                    && w.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                    })
            };
            ok(u) && ok(g)
        }) {
            return Err(bad(format!("{}: owner {:?} is not USER:GROUP", a.name, a.owner)));
        }
    }
    if complete {
        for (a, (name, size, _)) in manifest.artifacts.iter().zip(&raw.artifacts) {
            if a.size != *size {
                return Err(bad(format!(
                    "size of {name} says {} but the entry has {size} bytes",
                    a.size
                )));
            }
        }
    }
    Ok(())
}

/// A report's RFC 3339 time as a typed time; unparseable would be a bug in the pki module.
pub(crate) fn parse_rfc3339(s: Option<&str>) -> Result<Option<OffsetDateTime>, BundleError> {
    s.map(|s| {
        OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).map_err(|_| {
            BundleError::Internal(format!("unparseable time {s:?} from the PKI check"))
        })
    })
    .transpose()
}

/// The `verify --output json` object.
#[derive(Debug, Serialize)]
pub struct VerifyReport<'a> {
    pub ok: bool,
    pub signer: &'a str,
    pub principal: &'a str,
    pub cluster: &'a str,
    pub serial: u64,
    #[serde(with = "format::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "format::rfc3339")]
    pub expires_at: OffsetDateTime,
    pub source: &'a str,
    pub encrypted: bool,
    pub discovery_token_ca_cert_hash: &'a str,
    pub files: &'a [ManifestFile],
    pub artifacts: &'a [ManifestArtifact],
}

impl VerifiedBundle {
    /// The report `hapki verify` prints.
    pub fn report(&self) -> VerifyReport<'_> {
        let m = &self.manifest;
        VerifyReport {
            ok: true,
            signer: &self.signer.fingerprint,
            principal: &self.signer.principal,
            cluster: &m.cluster,
            serial: m.serial,
            created_at: m.created_at,
            expires_at: m.expires_at,
            source: &m.source,
            encrypted: self.encrypted,
            discovery_token_ca_cert_hash: &m.discovery_token_ca_cert_hash,
            files: &m.files,
            artifacts: &m.artifacts,
        }
    }
}
