//! Reading PEM files the way kubeadm reads them.
//!
//! kubeadm (through client-go's `keyutil` and `certutil`) accepts: the first `CERTIFICATE` block
//! of a file; a private key as PKCS#1 `RSA PRIVATE KEY`, SEC1 `EC PRIVATE KEY` or unencrypted
//! PKCS#8 `PRIVATE KEY`, and only RSA or ECDSA keys; `sa.pub` as a `PUBLIC KEY`
//! (SubjectPublicKeyInfo). Blocks of other types (`EC PARAMETERS` before an OpenSSL EC key) are
//! skipped, as Go's `pem.Decode` loop does.
//!
//! A private key is loaded with aws-lc-rs — which proves it is a usable key, not just
//! well-formed DER — and reduced at once to its public half ([`ParsedKey`] holds no secret), so
//! a key, a certificate and `sa.pub` can be compared by their public key bytes.

use std::fmt;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{self as sig, KeyPair as _};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, SubjectPublicKeyInfoDer};
use serde::Serialize;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::x509::SubjectPublicKeyInfo;

use super::der::{self, oid};
use super::fingerprint::{discovery_hash, sha256_hex};
use super::PkiError;

/// The elliptic curves kubeadm can read (it writes P-256 and, from 1.34, P-384).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Curve {
    P256,
    P384,
    P521,
}

impl Curve {
    fn from_oid(bytes: &[u8]) -> Option<Curve> {
        match bytes {
            oid::P256 => Some(Curve::P256),
            oid::P384 => Some(Curve::P384),
            oid::P521 => Some(Curve::P521),
            _ => None,
        }
    }
    fn signing_alg(self) -> &'static sig::EcdsaSigningAlgorithm {
        match self {
            Curve::P256 => &sig::ECDSA_P256_SHA256_ASN1_SIGNING,
            Curve::P384 => &sig::ECDSA_P384_SHA384_ASN1_SIGNING,
            Curve::P521 => &sig::ECDSA_P521_SHA512_ASN1_SIGNING,
        }
    }
}

/// A public key algorithm kubeadm accepts, with its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyAlgorithm {
    Rsa { bits: usize },
    Ecdsa(Curve),
}

impl fmt::Display for KeyAlgorithm {
    /// kubeadm's `encryptionAlgorithm` spelling: `RSA-2048`, `ECDSA-P256`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyAlgorithm::Rsa { bits } => write!(f, "RSA-{bits}"),
            KeyAlgorithm::Ecdsa(Curve::P256) => f.write_str("ECDSA-P256"),
            KeyAlgorithm::Ecdsa(Curve::P384) => f.write_str("ECDSA-P384"),
            KeyAlgorithm::Ecdsa(Curve::P521) => f.write_str("ECDSA-P521"),
        }
    }
}

/// A public key: of a certificate, of `sa.pub`, or derived from a private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKeyInfo {
    pub algorithm: KeyAlgorithm,
    /// DER SubjectPublicKeyInfo. For keys it is re-encoded from the key itself, so it is the
    /// same bytes a certificate for that key carries.
    pub spki_der: Vec<u8>,
    /// The subjectPublicKey BIT STRING contents: PKCS#1 `RSAPublicKey` DER for RSA, the
    /// uncompressed point for EC. Pairs are matched on these bytes.
    pub key_bits: Vec<u8>,
}

impl PublicKeyInfo {
    /// Parses a DER SubjectPublicKeyInfo, accepting only RSA and ECDSA keys.
    pub fn from_spki_der(file: &str, spki_der: &[u8]) -> Result<Self, PkiError> {
        let (_, spki) = SubjectPublicKeyInfo::from_der(spki_der).map_err(|e| {
            PkiError::invalid(
                file,
                format!("public key info does not parse ({e}): the file is corrupt; copy it again"),
            )
        })?;
        Self::from_x509_spki(file, &spki)
    }

    fn from_x509_spki(file: &str, spki: &SubjectPublicKeyInfo<'_>) -> Result<Self, PkiError> {
        let alg_oid = spki.algorithm.algorithm.as_bytes();
        let algorithm = match alg_oid {
            oid::RSA_ENCRYPTION => {
                let bits = match spki.parsed() {
                    Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => rsa.key_size(),
                    _ => {
                        return Err(PkiError::invalid(
                            file,
                            "RSA public key does not parse: the file is corrupt; copy it again",
                        ))
                    }
                };
                KeyAlgorithm::Rsa { bits }
            }
            oid::EC_PUBLIC_KEY => {
                let curve = spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| Curve::from_oid(p.data))
                    .ok_or_else(|| {
                        PkiError::invalid(file, "EC public key on a curve kubeadm does not use (only P-256, P-384, P-521)")
                    })?;
                KeyAlgorithm::Ecdsa(curve)
            }
            other => return Err(unsupported_key(file, other, "public key")),
        };
        Ok(PublicKeyInfo {
            algorithm,
            spki_der: spki.raw.to_vec(),
            key_bits: spki.subject_public_key.data.to_vec(),
        })
    }

    /// SHA-256 of the SubjectPublicKeyInfo DER, lowercase hex.
    pub fn spki_sha256(&self) -> String {
        sha256_hex(&self.spki_der)
    }

    /// Whether `other` is the same public key (compared on the key bits, so a different but
    /// equivalent encoding of the algorithm identifier does not matter).
    pub fn same_key(&self, other: &PublicKeyInfo) -> bool {
        self.key_bits == other.key_bits
    }
}

/// How a private key file is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub(crate) enum PrivateKeyFormat {
    /// `RSA PRIVATE KEY`, what kubeadm writes for RSA.
    Pkcs1,
    /// `EC PRIVATE KEY`, what kubeadm writes for ECDSA.
    Sec1,
    /// `PRIVATE KEY`, unencrypted PKCS#8, which kubeadm reads but does not write.
    Pkcs8,
}

impl fmt::Display for PrivateKeyFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PrivateKeyFormat::Pkcs1 => "PKCS#1 RSA PRIVATE KEY",
            PrivateKeyFormat::Sec1 => "SEC1 EC PRIVATE KEY",
            PrivateKeyFormat::Pkcs8 => "PKCS#8 PRIVATE KEY",
        })
    }
}

/// A private key that loaded, reduced to its public half. Holds no secret material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParsedKey {
    pub format: PrivateKeyFormat,
    pub public: PublicKeyInfo,
}

/// The facts about a certificate that the checks and reports use.
#[derive(Debug, Clone)]
pub struct ParsedCert {
    pub der: Vec<u8>,
    /// RFC 4514-style subject, e.g. `CN=kubernetes`.
    pub subject: String,
    pub issuer: String,
    pub common_name: Option<String>,
    pub serial: String,
    /// BasicConstraints CA:TRUE.
    pub is_ca: bool,
    /// KeyUsage keyCertSign; `None` when the certificate has no KeyUsage extension.
    pub key_cert_sign: Option<bool>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// Subject and issuer names are identical.
    pub self_issued: bool,
    /// Whether the signature verifies with the certificate's own public key: `Some(false)` when
    /// it is not self-issued or the signature is wrong, `None` when the signature algorithm is
    /// one the verifier does not implement (e.g. ECDSA with SHA-512), so nothing is claimed.
    pub self_signed: Option<bool>,
    pub public: PublicKeyInfo,
}

impl ParsedCert {
    /// SHA-256 of the DER certificate: `openssl x509 -fingerprint -sha256` without colons.
    pub fn cert_sha256(&self) -> String {
        sha256_hex(&self.der)
    }
    /// kubeadm's `--discovery-token-ca-cert-hash` if this certificate is the cluster CA.
    pub fn discovery_hash(&self) -> String {
        discovery_hash(&self.public.spki_der)
    }
}

/// Any of the three things a PEM file in the PKI can be.
#[derive(Debug, Clone)]
pub(crate) enum Parsed {
    Certificate(Box<ParsedCert>),
    PrivateKey(ParsedKey),
    PublicKey(PublicKeyInfo),
}

/// Parses the first `CERTIFICATE` block of `pem_bytes`, as kubeadm's `certutil` does.
pub(crate) fn parse_certificate(file: &str, pem_bytes: &[u8]) -> Result<ParsedCert, PkiError> {
    precheck(file, pem_bytes)?;
    let der = CertificateDer::from_pem_slice(pem_bytes)
        .map_err(|e| pem_error(file, pem_bytes, e, "CERTIFICATE"))?;
    cert_from_der(file, der.as_ref())
}

/// Parses the first private key block, as kubeadm's `keyutil.ParsePrivateKeyPEM` does.
pub(crate) fn parse_private_key(file: &str, pem_bytes: &[u8]) -> Result<ParsedKey, PkiError> {
    precheck(file, pem_bytes)?;
    let key = PrivateKeyDer::from_pem_slice(pem_bytes).map_err(|e| {
        pem_error(file, pem_bytes, e, "RSA PRIVATE KEY, EC PRIVATE KEY or PRIVATE KEY")
    })?;
    key_from_der(file, &key)
}

/// Parses the first `PUBLIC KEY` block (a SubjectPublicKeyInfo), as kubeadm reads `sa.pub`.
pub(crate) fn parse_public_key(file: &str, pem_bytes: &[u8]) -> Result<PublicKeyInfo, PkiError> {
    precheck(file, pem_bytes)?;
    let spki = SubjectPublicKeyInfoDer::from_pem_slice(pem_bytes)
        .map_err(|e| pem_error(file, pem_bytes, e, "PUBLIC KEY"))?;
    PublicKeyInfo::from_spki_der(file, spki.as_ref())
}

/// Parses the first certificate, private key or public key in `pem_bytes`, whichever comes
/// first; for `pki inspect`, which does not know what a file should be.
pub(crate) fn parse_any(file: &str, pem_bytes: &[u8]) -> Result<Parsed, PkiError> {
    precheck(file, pem_bytes)?;
    for section in <(pem::SectionKind, Vec<u8>)>::pem_slice_iter(pem_bytes) {
        let (kind, der) = section.map_err(|e| pem_error(file, pem_bytes, e, ""))?;
        match kind {
            pem::SectionKind::Certificate => {
                return cert_from_der(file, &der).map(|c| Parsed::Certificate(Box::new(c)))
            }
            pem::SectionKind::PublicKey => {
                return PublicKeyInfo::from_spki_der(file, &der).map(Parsed::PublicKey)
            }
            pem::SectionKind::RsaPrivateKey => {
                return key_from_der(file, &PrivateKeyDer::Pkcs1(der.into()))
                    .map(Parsed::PrivateKey)
            }
            pem::SectionKind::EcPrivateKey => {
                return key_from_der(file, &PrivateKeyDer::Sec1(der.into())).map(Parsed::PrivateKey)
            }
            pem::SectionKind::PrivateKey => {
                return key_from_der(file, &PrivateKeyDer::Pkcs8(der.into()))
                    .map(Parsed::PrivateKey)
            }
            _ => continue,
        }
    }
    Err(PkiError::invalid(
        file,
        format!(
            "no certificate or key in this PEM file (blocks found: {}): pass a CERTIFICATE, PRIVATE KEY or PUBLIC KEY file",
            block_labels(pem_bytes)
        ),
    ))
}

/// Rejects what is not PEM at all before the PEM reader gives a less helpful answer.
fn precheck(file: &str, bytes: &[u8]) -> Result<(), PkiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(PkiError::invalid(
            file,
            "empty file: copy it again from the first control-plane node",
        ));
    }
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        let hint = if bytes.first() == Some(&0x30) {
            "looks like DER; kubeadm reads PEM only: convert it with `openssl x509 -inform der` or `openssl pkey -inform der`"
        } else {
            "the file is garbage or was overwritten: copy it again from the first control-plane node"
        };
        return Err(PkiError::invalid(file, format!("not PEM (no \"-----BEGIN\" line): {hint}")));
    }
    Ok(())
}

fn pem_error(file: &str, bytes: &[u8], err: pem::Error, expected: &str) -> PkiError {
    let message = match err {
        pem::Error::MissingSectionEnd { end_marker } => format!(
            "truncated PEM: the \"-----END {}-----\" line is missing: the file was cut short; copy it again",
            String::from_utf8_lossy(&end_marker)
        ),
        pem::Error::IllegalSectionStart { .. } => {
            "malformed PEM \"-----BEGIN\" line: the file is corrupt; copy it again".to_string()
        }
        pem::Error::Base64Decode(_) => {
            "corrupt PEM: its base64 body does not decode: copy the file again".to_string()
        }
        pem::Error::NoItemsFound => format!(
            "no {expected} block in this file (blocks found: {}): the file holds something else",
            block_labels(bytes)
        ),
        other => format!("cannot read PEM: {other}"),
    };
    PkiError::invalid(file, message)
}

/// The labels of the PEM blocks in `bytes`, for messages: `CERTIFICATE, EC PARAMETERS`.
fn block_labels(bytes: &[u8]) -> String {
    let labels: Vec<String> = bytes
        .split(|&b| b == b'\n')
        .filter_map(|line| line.strip_prefix(b"-----BEGIN "))
        .map(|rest| {
            let end = rest.iter().position(|&b| b == b'-').unwrap_or(rest.len());
            String::from_utf8_lossy(&rest[..end]).into_owned()
        })
        .collect();
    if labels.is_empty() {
        "none".to_string()
    } else {
        labels.join(", ")
    }
}

fn cert_from_der(file: &str, der: &[u8]) -> Result<ParsedCert, PkiError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| {
        PkiError::invalid(
            file,
            format!(
                "certificate does not parse ({e}): the file is truncated or corrupt; copy it again"
            ),
        )
    })?;
    let public = PublicKeyInfo::from_x509_spki(file, cert.public_key())?;
    let bad_ext = |what: &str| {
        PkiError::invalid(
            file,
            format!("certificate has a malformed or duplicated {what} extension"),
        )
    };
    let is_ca = cert
        .basic_constraints()
        .map_err(|_| bad_ext("BasicConstraints"))?
        .is_some_and(|bc| bc.value.ca);
    let key_cert_sign =
        cert.key_usage().map_err(|_| bad_ext("KeyUsage"))?.map(|ku| ku.value.key_cert_sign());
    let time = |t: &x509_parser::time::ASN1Time| {
        OffsetDateTime::from_unix_timestamp(t.timestamp())
            .map_err(|_| PkiError::invalid(file, "certificate validity date out of range"))
    };
    let self_issued = cert.subject().as_raw() == cert.issuer().as_raw();
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string);
    Ok(ParsedCert {
        der: der.to_vec(),
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        common_name,
        serial: cert.raw_serial_as_string(),
        is_ca,
        key_cert_sign,
        not_before: time(&cert.validity().not_before)?,
        not_after: time(&cert.validity().not_after)?,
        self_issued,
        self_signed: if !self_issued {
            Some(false)
        } else {
            match cert.verify_signature(None) {
                Ok(()) => Some(true),
                Err(x509_parser::error::X509Error::SignatureVerificationError) => Some(false),
                Err(_) => None,
            }
        },
        public,
    })
}

fn key_from_der(file: &str, key: &PrivateKeyDer<'_>) -> Result<ParsedKey, PkiError> {
    match key {
        PrivateKeyDer::Pkcs1(k) => {
            let spki = rsa_public_spki(file, k.secret_pkcs1_der(), false)?;
            Ok(ParsedKey { format: PrivateKeyFormat::Pkcs1, public: spki })
        }
        PrivateKeyDer::Sec1(k) => {
            // The curve is inside the SEC1 structure; aws-lc-rs checks it against the one we
            // ask for, so trying each curve kubeadm can read finds it.
            let der = k.secret_sec1_der();
            let spki = [Curve::P256, Curve::P384, Curve::P521]
                .into_iter()
                .find_map(|c| sig::EcdsaKeyPair::from_private_key_der(c.signing_alg(), der).ok())
                .ok_or_else(|| {
                    PkiError::invalid(file, "EC PRIVATE KEY block is not a valid SEC1 key on P-256, P-384 or P-521: the file is corrupt or uses a curve kubeadm rejects")
                })
                .and_then(|kp| ec_public_spki(file, &kp))?;
            Ok(ParsedKey { format: PrivateKeyFormat::Sec1, public: spki })
        }
        PrivateKeyDer::Pkcs8(k) => {
            let der = k.secret_pkcs8_der();
            let info = der::parse_pkcs8(der).ok_or_else(|| {
                PkiError::invalid(file, "PRIVATE KEY block is not valid PKCS#8 (an encrypted key? kubeadm reads only unencrypted keys): copy it again")
            })?;
            let public = match info.algorithm {
                oid::RSA_ENCRYPTION => rsa_public_spki(file, der, true)?,
                oid::EC_PUBLIC_KEY => {
                    let curve = info.curve.and_then(Curve::from_oid).ok_or_else(|| {
                        PkiError::invalid(
                            file,
                            "EC key on a curve kubeadm does not use (only P-256, P-384, P-521)",
                        )
                    })?;
                    let kp = sig::EcdsaKeyPair::from_pkcs8(curve.signing_alg(), der).map_err(|e| {
                        PkiError::invalid(file, format!("EC private key rejected ({e}): the file is corrupt; copy it again"))
                    })?;
                    ec_public_spki(file, &kp)?
                }
                other => return Err(unsupported_key(file, other, "private key")),
            };
            Ok(ParsedKey { format: PrivateKeyFormat::Pkcs8, public })
        }
        _ => Err(PkiError::invalid(file, "unknown private key encoding")),
    }
}

fn rsa_public_spki(file: &str, der: &[u8], pkcs8: bool) -> Result<PublicKeyInfo, PkiError> {
    let kp = if pkcs8 { sig::RsaKeyPair::from_pkcs8(der) } else { sig::RsaKeyPair::from_der(der) }
        .map_err(|e| {
            let why = match e.description_() {
                "TooSmall" => "smaller than 2048 bits".to_string(),
                "TooLarge" => "larger than 8192 bits".to_string(),
                other => other.to_string(),
            };
            PkiError::invalid(
                file,
                format!("RSA private key rejected ({why}): use a 2048-, 3072- or 4096-bit RSA key"),
            )
        })?;
    let spki = kp
        .public_key()
        .as_der()
        .map_err(|_| PkiError::invalid(file, "cannot encode the RSA public key"))?;
    PublicKeyInfo::from_spki_der(file, spki.as_ref())
}

fn ec_public_spki(file: &str, kp: &sig::EcdsaKeyPair) -> Result<PublicKeyInfo, PkiError> {
    let spki = kp
        .public_key()
        .as_der()
        .map_err(|_| PkiError::invalid(file, "cannot encode the EC public key"))?;
    PublicKeyInfo::from_spki_der(file, spki.as_ref())
}

fn unsupported_key(file: &str, alg_oid: &[u8], what: &str) -> PkiError {
    let name = match alg_oid {
        oid::ED25519 => "Ed25519",
        oid::ED448 => "Ed448",
        oid::X25519 => "X25519",
        oid::X448 => "X448",
        oid::DSA => "DSA",
        oid::RSASSA_PSS => "RSASSA-PSS",
        _ => "an unknown algorithm",
    };
    PkiError::invalid(
        file,
        format!(
            "{what} is {name}, which kubeadm rejects (\"neither in RSA nor ECDSA format\"): use an RSA or ECDSA key"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_labels_lists_begin_lines() {
        let pem = b"-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n-----BEGIN CERTIFICATE-----\n";
        assert_eq!(block_labels(pem), "EC PARAMETERS, CERTIFICATE");
        assert_eq!(block_labels(b"nothing"), "none");
    }

    #[test]
    fn garbage_empty_and_der_are_named() {
        let e = parse_certificate("ca.crt", b"").unwrap_err().to_string();
        assert!(e.starts_with("ca.crt: empty file"), "{e}");
        let e = parse_private_key("ca.key", b"\x00\x01garbage").unwrap_err().to_string();
        assert!(e.starts_with("ca.key: not PEM"), "{e}");
        let e = parse_certificate("ca.crt", &[0x30, 0x82, 0x01]).unwrap_err().to_string();
        assert!(e.contains("looks like DER"), "{e}");
    }

    #[test]
    fn wrong_block_type_names_what_was_found() {
        let pem = b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
        let e = parse_certificate("ca.crt", pem).unwrap_err().to_string();
        assert!(e.contains("no CERTIFICATE block") && e.contains("PUBLIC KEY"), "{e}");
    }
}
