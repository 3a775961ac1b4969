//! `pki inspect`: what any PEM file is, with the fingerprints the other commands print.

use serde::Serialize;
use time::format_description::well_known::Rfc3339;

use super::fingerprint::sha256_hex;
use super::parse::{self, Parsed};
use super::{FileKind, PkiError};

/// Everything `pki inspect` says about one file. Certificate-only fields are `None` for keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InspectReport {
    /// The name the file was given as.
    pub file: String,
    pub kind: FileKind,
    /// `CERTIFICATE`, `PKCS#1 RSA PRIVATE KEY`, `SEC1 EC PRIVATE KEY`, `PKCS#8 PRIVATE KEY`,
    /// `PUBLIC KEY`.
    pub format: String,
    /// `RSA-2048`, `ECDSA-P256`…
    pub algorithm: String,
    /// SHA-256 of the file bytes.
    pub sha256: String,
    pub cert_sha256: Option<String>,
    /// SHA-256 of the SubjectPublicKeyInfo DER; the same for a key and its certificate.
    pub spki_sha256: String,
    pub subject: Option<String>,
    pub issuer: Option<String>,
    pub serial: Option<String>,
    pub is_ca: Option<bool>,
    pub self_signed: Option<bool>,
    pub not_before: Option<String>,
    pub not_after: Option<String>,
    /// kubeadm's `--discovery-token-ca-cert-hash` for this certificate as the cluster CA.
    pub discovery_token_ca_cert_hash: Option<String>,
}

/// Inspects the first certificate or key in `bytes`. `name` is used in reports and errors.
pub fn inspect_pem(name: &str, bytes: &[u8]) -> Result<InspectReport, PkiError> {
    let parsed = parse::parse_any(name, bytes)?;
    let fmt_time = |t: time::OffsetDateTime| t.format(&Rfc3339).ok();
    let mut report = InspectReport {
        file: name.to_string(),
        kind: FileKind::PublicKey,
        format: String::new(),
        algorithm: String::new(),
        sha256: sha256_hex(bytes),
        cert_sha256: None,
        spki_sha256: String::new(),
        subject: None,
        issuer: None,
        serial: None,
        is_ca: None,
        self_signed: None,
        not_before: None,
        not_after: None,
        discovery_token_ca_cert_hash: None,
    };
    let public = match &parsed {
        Parsed::Certificate(c) => {
            report.kind = FileKind::Certificate;
            report.format = "CERTIFICATE".to_string();
            report.cert_sha256 = Some(c.cert_sha256());
            report.subject = Some(c.subject.clone());
            report.issuer = Some(c.issuer.clone());
            report.serial = Some(c.serial.clone());
            report.is_ca = Some(c.is_ca);
            report.self_signed = c.self_signed;
            report.not_before = fmt_time(c.not_before);
            report.not_after = fmt_time(c.not_after);
            report.discovery_token_ca_cert_hash = Some(c.discovery_hash());
            &c.public
        }
        Parsed::PrivateKey(k) => {
            report.kind = FileKind::PrivateKey;
            report.format = k.format.to_string();
            &k.public
        }
        Parsed::PublicKey(p) => {
            report.kind = FileKind::PublicKey;
            report.format = "PUBLIC KEY".to_string();
            p
        }
    };
    report.algorithm = public.algorithm.to_string();
    report.spki_sha256 = public.spki_sha256();
    Ok(report)
}
