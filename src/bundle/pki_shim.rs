//! TEMPORARY stand-in for `crate::pki::check` (being written on branch `pki`), with the same
//! names and shapes, so the bundle code calls the coherence check where it belongs. Deleted when
//! `pki` is merged; nothing outside `bundle` uses it.

use std::path::Path;

use rcgen::PublicKeyData;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::pki::fingerprint::{discovery_hash, sha256_hex};
use crate::pki::{shared_file, FileKind, SHARED_FILES};

/// One file as read from a pki directory (or a bundle, or a node).
#[derive(Debug, Clone)]
pub struct PkiFile {
    pub name: String,
    pub bytes: Vec<u8>,
    pub mode: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct CheckOptions {
    pub warn_within: time::Duration,
    pub now: OffsetDateTime,
}

#[derive(Debug, Clone)]
pub struct FileReport {
    pub name: String,
    pub kind: FileKind,
    pub sha256: String,
    pub cert_sha256: Option<String>,
    pub spki_sha256: Option<String>,
    pub not_after: Option<OffsetDateTime>,
    pub subject: Option<String>,
    pub issuer: Option<String>,
    pub is_ca: Option<bool>,
    pub mode: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct Problem {
    pub file: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct CheckReport {
    pub ok: bool,
    pub discovery_token_ca_cert_hash: Option<String>,
    pub files: Vec<FileReport>,
    pub problems: Vec<Problem>,
    pub warnings: Vec<Problem>,
}

/// Reads the eight shared files from `dir`; a missing one is left out (and reported by
/// [`check_files`]).
pub fn read_dir(dir: &Path) -> Result<Vec<PkiFile>, std::io::Error> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    for f in SHARED_FILES {
        let path = dir.join(f.name);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let mode = std::fs::metadata(&path)?.permissions().mode() & 0o7777;
                out.push(PkiFile { name: f.name.to_string(), bytes, mode: Some(mode) });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        }
    }
    Ok(out)
}

pub fn check_files(files: &[PkiFile], _opts: &CheckOptions) -> CheckReport {
    let mut problems = Vec::new();
    let mut reports = Vec::new();
    for f in SHARED_FILES {
        if !files.iter().any(|p| p.name == f.name) {
            problems.push(Problem { file: Some(f.name.into()), message: "missing".into() });
        }
    }
    for file in files {
        let Some(shared) = shared_file(&file.name) else {
            problems.push(Problem { file: Some(file.name.clone()), message: "not a shared file".into() });
            continue;
        };
        let mut r = FileReport {
            name: file.name.clone(),
            kind: shared.kind,
            sha256: sha256_hex(&file.bytes),
            cert_sha256: None,
            spki_sha256: None,
            not_after: None,
            subject: None,
            issuer: None,
            is_ca: None,
            mode: file.mode,
        };
        let parsed = match shared.kind {
            FileKind::Certificate => parse_cert(&file.bytes, &mut r),
            FileKind::PrivateKey => PrivateKeyDer::from_pem_slice(&file.bytes)
                .ok()
                .and_then(|k| rcgen::KeyPair::try_from(&k).ok())
                .map(|k| r.spki_sha256 = Some(sha256_hex(&k.subject_public_key_info()))),
            FileKind::PublicKey => {
                rustls_pki_types::SubjectPublicKeyInfoDer::from_pem_slice(&file.bytes)
                    .ok()
                    .map(|k| r.spki_sha256 = Some(sha256_hex(k.as_ref())))
            }
        };
        if parsed.is_none() {
            problems.push(Problem { file: Some(file.name.clone()), message: "cannot parse".into() });
        }
        reports.push(r);
    }
    for f in SHARED_FILES.iter().filter(|f| f.kind != FileKind::PrivateKey) {
        let a = reports.iter().find(|r| r.name == f.name).and_then(|r| r.spki_sha256.clone());
        let b = reports.iter().find(|r| r.name == f.pair).and_then(|r| r.spki_sha256.clone());
        if a.is_some() && b.is_some() && a != b {
            problems.push(Problem {
                file: Some(f.pair.into()),
                message: format!("does not match {}", f.name),
            });
        }
        if f.kind == FileKind::Certificate
            && reports.iter().any(|r| r.name == f.name && r.is_ca == Some(false))
        {
            problems.push(Problem { file: Some(f.name.into()), message: "not a CA".into() });
        }
    }
    let discovery = files
        .iter()
        .find(|f| f.name == "ca.crt")
        .and_then(|f| rustls_pki_types::CertificateDer::from_pem_slice(&f.bytes).ok())
        .and_then(|der| {
            X509Certificate::from_der(der.as_ref()).ok().map(|(_, c)| discovery_hash(c.public_key().raw))
        });
    CheckReport {
        ok: problems.is_empty(),
        discovery_token_ca_cert_hash: discovery,
        files: reports,
        problems,
        warnings: Vec::new(),
    }
}

fn parse_cert(bytes: &[u8], r: &mut FileReport) -> Option<()> {
    let der = rustls_pki_types::CertificateDer::from_pem_slice(bytes).ok()?;
    let (_, cert) = X509Certificate::from_der(der.as_ref()).ok()?;
    r.cert_sha256 = Some(sha256_hex(der.as_ref()));
    r.spki_sha256 = Some(sha256_hex(cert.public_key().raw));
    r.not_after = Some(cert.validity().not_after.to_datetime());
    r.subject = Some(cert.subject().to_string());
    r.issuer = Some(cert.issuer().to_string());
    r.is_ca = Some(cert.is_ca());
    Some(())
}
