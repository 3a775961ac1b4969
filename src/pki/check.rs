//! Coherence of the eight shared files: everything kubeadm checks when a control plane joins,
//! plus what it never checks (that each CA key matches its certificate, that `sa.key` matches
//! `sa.pub`), so a wrong pair is caught before anything moves.
//!
//! Every finding is one line that starts with the file's name and ends with what to do.
//! Problems make a PKI unusable (`ok: false`, exit 3); warnings do not.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::Path;

use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::fingerprint::sha256_hex;
use super::parse::{self, ParsedCert, ParsedKey, PublicKeyInfo};
use super::{FileKind, PkiError, SharedFile, SHARED_FILES};
use crate::duration::Duration;

/// What "now" is and how far ahead expiry is a warning.
#[derive(Debug, Clone, Copy)]
pub struct CheckOptions {
    /// Certificates ending within this window from `now` get a warning.
    pub warn_within: Duration,
    /// The instant validity is judged at (tests pin it).
    pub now: OffsetDateTime,
}

impl CheckOptions {
    /// The default expiry window kubeadm operators are used to (`kubeadm certs check-expiration`
    /// shows residual time; 90 days leaves a quarter to plan a rotation).
    pub const DEFAULT_WARN_WITHIN: Duration = Duration::from_days(90);

    /// Options that judge validity at the current time.
    pub fn new(warn_within: Duration) -> Self {
        CheckOptions { warn_within, now: OffsetDateTime::now_utc() }
    }
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self::new(Self::DEFAULT_WARN_WITHIN)
    }
}

/// One file's content, wherever it came from (a directory, a bundle, a node).
#[derive(Clone, PartialEq, Eq)]
pub struct PkiFile {
    /// Name relative to the pki directory (`etcd/ca.key`).
    pub name: String,
    pub bytes: Vec<u8>,
    /// Permission bits (`0o600`); `None` when unknown, e.g. inside a bundle.
    pub mode: Option<u32>,
}

// Hand-written so that `{:?}` anywhere (a log line, a panic message) never shows key bytes.
impl std::fmt::Debug for PkiFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PkiFile")
            .field("name", &self.name)
            .field("mode", &self.mode)
            .field("bytes", &format_args!("<{} bytes>", self.bytes.len()))
            .finish()
    }
}

/// What one file is and its fingerprints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileReport {
    pub name: String,
    /// `None` when the file did not parse.
    pub kind: Option<super::FileKind>,
    /// SHA-256 of the file bytes (what `sha256sum` prints).
    pub sha256: String,
    /// SHA-256 of the certificate DER (`openssl x509 -fingerprint -sha256`, no colons).
    pub cert_sha256: Option<String>,
    /// SHA-256 of the SubjectPublicKeyInfo DER; equal for a key and its certificate.
    pub spki_sha256: Option<String>,
    /// RFC 3339, certificates only.
    pub not_after: Option<String>,
    pub subject: Option<String>,
    pub issuer: Option<String>,
    pub is_ca: Option<bool>,
    /// `RSA-2048`, `ECDSA-P256`…
    pub algorithm: Option<String>,
    /// Octal, `"0600"`; `None` when unknown.
    pub mode: Option<String>,
}

/// One finding, naming the file it is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Relative file name; `None` for findings about the PKI as a whole.
    pub file: Option<String>,
    /// One line: `<file>: <what is wrong>: <what to do>`.
    pub message: String,
}

impl Problem {
    fn new(file: &str, message: impl Into<String>) -> Self {
        Problem { file: Some(file.to_string()), message: message.into() }
    }
}

/// The outcome of checking the eight shared files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// No problems (warnings allowed).
    pub ok: bool,
    /// From `ca.crt`, when it parsed.
    pub discovery_token_ca_cert_hash: Option<String>,
    /// The files that were present, in [`SHARED_FILES`] order.
    pub files: Vec<FileReport>,
    pub problems: Vec<Problem>,
    pub warnings: Vec<Problem>,
    /// Per CA: days left and whether `pki renew-ca` can re-issue it with the same key.
    pub cas: Vec<super::renew::CaStatus>,
}

/// A leaf kubeadm issues today lives a year; a CA ending sooner cuts it short.
const LEAF_VALIDITY: time::Duration = time::Duration::days(365);

/// Checks `files` as the shared PKI. Shared files absent from the slice are reported missing;
/// files that are not among the eight are ignored.
pub fn check_files(files: &[PkiFile], opts: &CheckOptions) -> CheckReport {
    check_inner(files, &[], opts)
}

/// Reads the eight shared files under `dir`, strictly: a missing file is skipped (checking
/// reports it), but a directory where a file should be, or an unreadable file, is an error.
/// `bundle` uses this; `check_dir` is lenient and reports such files as problems instead.
pub fn read_dir(dir: &Path) -> Result<Vec<PkiFile>, PkiError> {
    let (files, unreadable) = read_dir_lenient(dir)?;
    match unreadable.into_iter().next() {
        Some((_, err)) => Err(err),
        None => Ok(files),
    }
}

/// Reads and checks the shared PKI in `dir`.
pub fn check_dir(dir: &Path, opts: &CheckOptions) -> Result<CheckReport, PkiError> {
    let (files, unreadable) = read_dir_lenient(dir)?;
    let unreadable: Vec<Problem> =
        unreadable.into_iter().map(|(name, e)| Problem::new(&name, e.to_string())).collect();
    Ok(check_inner(&files, &unreadable, opts))
}

type Unreadable = Vec<(String, PkiError)>;

fn read_dir_lenient(dir: &Path) -> Result<(Vec<PkiFile>, Unreadable), PkiError> {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(PkiError::DirNotFound { path: dir.to_path_buf() }),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(PkiError::DirNotFound { path: dir.to_path_buf() })
        }
        Err(e) => return Err(PkiError::io(dir, e)),
    }
    let mut files = Vec::new();
    let mut unreadable = Vec::new();
    for shared in &SHARED_FILES {
        let path = dir.join(shared.name);
        // Follow symlinks, as kubeadm does when it opens the file.
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => {
                unreadable.push((shared.name.to_string(), PkiError::io(&path, e)));
                continue;
            }
        };
        if !meta.is_file() {
            let what = if meta.is_dir() { "a directory" } else { "not a regular file" };
            unreadable.push((
                shared.name.to_string(),
                PkiError::invalid(
                    shared.name,
                    format!(
                        "is {what}, not a file: remove it and copy the real {} in its place",
                        shared.name
                    ),
                ),
            ));
            continue;
        }
        match std::fs::read(&path) {
            Ok(bytes) => files.push(PkiFile {
                name: shared.name.to_string(),
                bytes,
                mode: Some(meta.mode() & 0o7777),
            }),
            Err(e) => unreadable.push((shared.name.to_string(), PkiError::io(&path, e))),
        }
    }
    Ok((files, unreadable))
}

/// What a shared file turned out to be.
enum Content {
    Cert(Box<ParsedCert>),
    Key(ParsedKey),
    Pub(PublicKeyInfo),
}

impl Content {
    fn public(&self) -> &PublicKeyInfo {
        match self {
            Content::Cert(c) => &c.public,
            Content::Key(k) => &k.public,
            Content::Pub(p) => p,
        }
    }
}

fn check_inner(files: &[PkiFile], unreadable: &[Problem], opts: &CheckOptions) -> CheckReport {
    let mut problems: Vec<Problem> = Vec::new();
    let mut warnings: Vec<Problem> = Vec::new();
    let mut reports = Vec::new();
    let mut parsed: BTreeMap<&'static str, Content> = BTreeMap::new();

    for shared in &SHARED_FILES {
        let name = shared.name;
        if let Some(p) = unreadable.iter().find(|p| p.file.as_deref() == Some(name)) {
            problems.push(p.clone());
            continue;
        }
        let Some(file) = files.iter().find(|f| f.name == name) else {
            problems.push(Problem::new(
                name,
                format!("{name}: missing: every control-plane node needs all eight shared files; copy it from the node that ran kubeadm init"),
            ));
            continue;
        };
        let (report, content) = check_file(shared, file, opts, &mut problems, &mut warnings);
        if let Some(content) = content {
            parsed.insert(name, content);
        }
        reports.push(report);
    }

    check_pairs(&parsed, &mut problems);

    let discovery_token_ca_cert_hash = match parsed.get("ca.crt") {
        Some(Content::Cert(c)) => Some(c.discovery_hash()),
        _ => None,
    };
    CheckReport {
        ok: problems.is_empty(),
        discovery_token_ca_cert_hash,
        files: reports,
        problems,
        warnings,
        cas: super::renew::ca_status(files, opts.now),
    }
}

/// Parses one shared file and describes it; a private key others may read, an unparsable file
/// and a certificate unfit for its CA role are problems.
fn check_file(
    shared: &SharedFile,
    file: &PkiFile,
    opts: &CheckOptions,
    problems: &mut Vec<Problem>,
    warnings: &mut Vec<Problem>,
) -> (FileReport, Option<Content>) {
    let name = shared.name;
    let content = match shared.kind {
        FileKind::Certificate => {
            parse::parse_certificate(name, &file.bytes).map(|c| Content::Cert(Box::new(c)))
        }
        FileKind::PrivateKey => parse::parse_private_key(name, &file.bytes).map(Content::Key),
        FileKind::PublicKey => parse::parse_public_key(name, &file.bytes).map(Content::Pub),
    };
    let mut report = FileReport {
        name: name.to_string(),
        kind: None,
        sha256: sha256_hex(&file.bytes),
        cert_sha256: None,
        spki_sha256: None,
        not_after: None,
        subject: None,
        issuer: None,
        is_ca: None,
        algorithm: None,
        mode: file.mode.map(|m| format!("{m:04o}")),
    };
    if let (FileKind::PrivateKey, Some(mode)) = (shared.kind, file.mode) {
        if mode & 0o077 != 0 {
            problems.push(Problem::new(
                name,
                format!("{name}: mode {mode:04o} lets group or others read a private key: chmod 600 {name}"),
            ));
        }
    }
    let content = match content {
        Err(e) => {
            problems.push(Problem::new(name, e.to_string()));
            return (report, None);
        }
        Ok(content) => content,
    };
    report.kind = Some(shared.kind);
    report.spki_sha256 = Some(content.public().spki_sha256());
    report.algorithm = Some(content.public().algorithm.to_string());
    if let Content::Cert(cert) = &content {
        report.cert_sha256 = Some(cert.cert_sha256());
        report.not_after = cert.not_after.format(&Rfc3339).ok();
        report.subject = Some(cert.subject.clone());
        report.issuer = Some(cert.issuer.clone());
        report.is_ca = Some(cert.is_ca);
        check_ca_cert(name, shared.ca_common_name, cert, opts, problems, warnings);
    }
    (report, Some(content))
}

fn date(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

fn check_ca_cert(
    name: &str,
    expected_cn: Option<&str>,
    cert: &ParsedCert,
    opts: &CheckOptions,
    problems: &mut Vec<Problem>,
    warnings: &mut Vec<Problem>,
) {
    let what = format!("subject {}, issuer {}", cert.subject, cert.issuer);
    if !cert.is_ca {
        problems.push(Problem::new(
            name,
            format!("{name}: not a CA certificate (no BasicConstraints CA:TRUE; {what}), probably a leaf: put the CA certificate here"),
        ));
    } else if cert.key_cert_sign == Some(false) {
        problems.push(Problem::new(
            name,
            format!("{name}: CA certificate whose KeyUsage lacks keyCertSign, so it cannot sign the node certificates kubeadm issues: use a CA with keyCertSign"),
        ));
    }
    if cert.self_issued && cert.self_signed == Some(false) {
        problems.push(Problem::new(
            name,
            format!("{name}: self-issued but its signature does not verify with its own key: the certificate is corrupt or forged; copy it again"),
        ));
    } else if !cert.self_issued && cert.is_ca {
        // kubeadm accepts an intermediate CA (external-CA setups), so this is only worth knowing.
        warnings.push(Problem::new(
            name,
            format!("{name}: not self-signed (an intermediate CA; {what}): nodes and clients must also trust its issuer"),
        ));
    }
    if let (Some(expected), Some(cn)) = (expected_cn, cert.common_name.as_deref()) {
        if cn != expected {
            warnings.push(Problem::new(
                name,
                format!("{name}: common name {cn:?}, kubeadm names this CA {expected:?}: fine if deliberate, check it is the right CA"),
            ));
        }
    }
    if opts.now < cert.not_before {
        problems.push(Problem::new(
            name,
            format!("{name}: not valid before {}: check this machine's clock (and the clock of the machine that made it)", date(cert.not_before)),
        ));
    }
    if cert.not_after <= opts.now {
        problems.push(Problem::new(
            name,
            format!("{name}: expired on {}: create a new CA (kubeadm certs renew does not renew CAs) and re-issue everything it signed", date(cert.not_after)),
        ));
    } else if cert.not_after - opts.now <= opts.warn_within.to_time() {
        let days = (cert.not_after - opts.now).whole_days();
        warnings.push(Problem::new(
            name,
            format!(
                "{name}: expires on {} (in {days} days, within {}): plan a CA rotation",
                date(cert.not_after),
                opts.warn_within
            ),
        ));
    } else if cert.not_after < opts.now + LEAF_VALIDITY {
        warnings.push(Problem::new(
            name,
            format!("{name}: expires on {}, before a one-year certificate kubeadm issued today would: node certificates will stop verifying then; plan a CA rotation", date(cert.not_after)),
        ));
    }
}

/// The four pairs. When a key matches none of its partner, say whose key it is, so swapped
/// files are recognised as swapped rather than as "some other CA".
fn check_pairs(parsed: &BTreeMap<&'static str, Content>, problems: &mut Vec<Problem>) {
    let pairs = [
        ("ca.key", "ca.crt"),
        ("front-proxy-ca.key", "front-proxy-ca.crt"),
        ("etcd/ca.key", "etcd/ca.crt"),
        ("sa.key", "sa.pub"),
    ];
    for (key_name, partner) in pairs {
        let (Some(key), Some(other)) = (parsed.get(key_name), parsed.get(partner)) else {
            continue;
        };
        if key.public().same_key(other.public()) {
            continue;
        }
        let owner = parsed
            .iter()
            .filter(|(n, c)| **n != key_name && !matches!(c, Content::Key(_)))
            .find(|(_, c)| c.public().same_key(key.public()))
            .map(|(n, _)| *n);
        let message = match (key_name, owner) {
            ("sa.key", Some(owner)) => format!(
                "sa.pub: is not the public half of sa.key (sa.key is the key of {owner}): copy the real sa.key and sa.pub together from the node that ran kubeadm init"
            ),
            ("sa.key", None) => "sa.pub: is not the public half of sa.key (sa.pub belongs to another key): copy sa.key and sa.pub together from the node that ran kubeadm init; a mismatch silently breaks every ServiceAccount token".to_string(),
            (_, Some(owner)) => format!(
                "{key_name}: does not match {partner}: it is the key of {owner} (the key files are swapped): put each CA's own key next to it"
            ),
            (_, None) => format!(
                "{key_name}: does not match {partner} (the key belongs to another CA): copy the {key_name} that was created with this {partner}"
            ),
        };
        let file = if key_name == "sa.key" { "sa.pub" } else { key_name };
        problems.push(Problem::new(file, message));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{init, Algorithm};
    use rustls_pki_types::pem::PemObject;

    fn fresh() -> (tempfile::TempDir, Vec<PkiFile>) {
        let t = tempfile::tempdir().unwrap();
        init(t.path(), Algorithm::EcdsaP256, OffsetDateTime::now_utc()).unwrap();
        let files = read_dir(t.path()).unwrap();
        (t, files)
    }

    fn at(now: OffsetDateTime) -> CheckOptions {
        CheckOptions { warn_within: CheckOptions::DEFAULT_WARN_WITHIN, now }
    }

    fn messages(ps: &[Problem]) -> Vec<&str> {
        ps.iter().map(|p| p.message.as_str()).collect()
    }

    #[test]
    fn clean_pki_from_memory_without_modes() {
        let (_t, mut files) = fresh();
        for f in &mut files {
            f.mode = None;
        }
        files.push(PkiFile {
            name: "apiserver.crt".into(),
            bytes: b"ignored".to_vec(),
            mode: None,
        });
        let r = check_files(&files, &CheckOptions::default());
        assert!(r.ok, "{:?}", r.problems);
        assert_eq!(r.files.len(), 8);
        assert!(r.files.iter().all(|f| f.mode.is_none()));
        assert!(r.discovery_token_ca_cert_hash.unwrap().starts_with("sha256:"));
    }

    #[test]
    fn validity_is_judged_at_now() {
        let (_t, files) = fresh();
        let now = OffsetDateTime::now_utc();
        // Before the 5-minute back-dating: not yet valid, for each of the three CAs.
        let r = check_files(&files, &at(now - time::Duration::hours(1)));
        let early: Vec<_> =
            r.problems.iter().filter(|p| p.message.contains("not valid before")).collect();
        assert_eq!(early.len(), 3, "{:?}", messages(&r.problems));
        // Just inside the back-dating window: fine.
        assert!(check_files(&files, &at(now - time::Duration::minutes(4))).ok);
        // Nine and a half years on: within a year of expiry, a warning only.
        let r = check_files(&files, &at(now + time::Duration::days(3650 - 200)));
        assert!(r.ok);
        assert_eq!(r.warnings.len(), 3, "{:?}", messages(&r.warnings));
        assert!(r.warnings[0].message.contains("before a one-year certificate"));
        // Eleven years on: expired.
        let r = check_files(&files, &at(now + time::Duration::days(4015)));
        assert!(!r.ok);
        assert!(
            r.problems.iter().all(|p| p.message.contains("expired on")),
            "{:?}",
            messages(&r.problems)
        );
    }

    #[test]
    fn a_forged_self_signature_is_a_problem() {
        let (_t, mut files) = fresh();
        let ca = files.iter_mut().find(|f| f.name == "ca.crt").unwrap();
        let der = rustls_pki_types::CertificateDer::from_pem_slice(&ca.bytes).unwrap();
        let mut der = der.as_ref().to_vec();
        // The last byte is inside the signature.
        let last = der.len() - 1;
        der[last] ^= 0x01;
        ca.bytes = crate::pki::generate::pem_encode("CERTIFICATE", &der).into_bytes();
        let r = check_files(&files, &CheckOptions::default());
        assert!(!r.ok);
        assert!(
            messages(&r.problems)
                .iter()
                .any(|m| m.starts_with("ca.crt: self-issued but its signature does not verify")),
            "{:?}",
            messages(&r.problems)
        );
    }

    #[test]
    fn all_missing_names_every_file() {
        let r = check_files(&[], &CheckOptions::default());
        assert!(!r.ok);
        let named: Vec<_> = r.problems.iter().filter_map(|p| p.file.as_deref()).collect();
        assert_eq!(named, SHARED_FILES.map(|f| f.name));
        assert!(r.discovery_token_ca_cert_hash.is_none());
    }

    #[test]
    fn read_dir_is_strict_about_directories() {
        let (t, _) = fresh();
        std::fs::remove_file(t.path().join("sa.pub")).unwrap();
        std::fs::create_dir(t.path().join("sa.pub")).unwrap();
        let e = read_dir(t.path()).unwrap_err();
        assert!(e.to_string().starts_with("sa.pub: is a directory"), "{e}");
        assert_eq!(crate::error::Categorized::category(&e), crate::error::Category::Verification);
    }
}

#[cfg(test)]
mod debug_tests {
    use super::PkiFile;

    #[test]
    fn debug_output_never_shows_key_bytes() {
        let f = PkiFile {
            name: "ca.key".into(),
            bytes: b"-----BEGIN RSA PRIVATE KEY-----\nsecret".to_vec(),
            mode: Some(0o600),
        };
        let shown = format!("{f:?}");
        assert!(!shown.contains("PRIVATE") && !shown.contains("secret"), "{shown}");
        assert!(shown.contains("<38 bytes>"), "{shown}");
    }
}
