//! `pki init`: a fresh shared PKI exactly as `kubeadm init` would make it, so air-gapped sites
//! can create the cluster's CAs first (kubeadm uses CA files it finds in place).
//!
//! What kubeadm does (`pkiutil.NewCertificateAuthority` → client-go `NewSelfSignedCACert`):
//! subject CN only, a DNS SAN equal to the CN, KeyUsage digitalSignature + keyEncipherment +
//! keyCertSign (critical), BasicConstraints CA:TRUE (critical), a random positive 63-bit
//! serial, NotBefore back-dated 5 minutes, 10 years of validity. Keys: RSA as PKCS#1
//! `RSA PRIVATE KEY`, ECDSA as SEC1 `EC PRIVATE KEY`; `sa.pub` as `PUBLIC KEY`. The service
//! account key uses the same algorithm as the CAs (kubeadm's `encryptionAlgorithm`).

use std::fmt;
use std::fs::{DirBuilder, Permissions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature as sig;
use base64::Engine;
use rand::Rng;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SerialNumber, SignatureAlgorithm,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs1KeyDer, PrivateSec1KeyDer};
use time::OffsetDateTime;

use super::der;
use super::parse::{self, Curve, KeyAlgorithm};
use super::{FileKind, PkiError, DIR_MODE, SHARED_FILES};

/// The key algorithms kubeadm's `ClusterConfiguration.encryptionAlgorithm` allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Algorithm {
    /// kubeadm's default.
    #[default]
    Rsa2048,
    Rsa3072,
    Rsa4096,
    EcdsaP256,
    /// kubeadm ≥ 1.34.
    EcdsaP384,
}

impl Algorithm {
    /// All algorithms, in kubeadm's order.
    pub const ALL: [Algorithm; 5] = [
        Algorithm::Rsa2048,
        Algorithm::Rsa3072,
        Algorithm::Rsa4096,
        Algorithm::EcdsaP256,
        Algorithm::EcdsaP384,
    ];

    /// kubeadm's spelling, `RSA-2048` … `ECDSA-P384`.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Rsa2048 => "RSA-2048",
            Algorithm::Rsa3072 => "RSA-3072",
            Algorithm::Rsa4096 => "RSA-4096",
            Algorithm::EcdsaP256 => "ECDSA-P256",
            Algorithm::EcdsaP384 => "ECDSA-P384",
        }
    }

    pub(crate) fn of_key(alg: KeyAlgorithm) -> Option<Algorithm> {
        match alg {
            KeyAlgorithm::Rsa { bits: 2048 } => Some(Algorithm::Rsa2048),
            KeyAlgorithm::Rsa { bits: 3072 } => Some(Algorithm::Rsa3072),
            KeyAlgorithm::Rsa { bits: 4096 } => Some(Algorithm::Rsa4096),
            KeyAlgorithm::Ecdsa(Curve::P256) => Some(Algorithm::EcdsaP256),
            KeyAlgorithm::Ecdsa(Curve::P384) => Some(Algorithm::EcdsaP384),
            _ => None,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An algorithm name that is not one of kubeadm's.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown algorithm {0:?}: use RSA-2048, RSA-3072, RSA-4096, ECDSA-P256 or ECDSA-P384")]
pub struct ParseAlgorithmError(String);

impl FromStr for Algorithm {
    type Err = ParseAlgorithmError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| ParseAlgorithmError(s.to_string()))
    }
}

/// The signature algorithm Go's x509 picks for a key (`SHA256WithRSA`, `ECDSAWithSHA256` for
/// P-256, `ECDSAWithSHA384` for P-384).
pub(crate) fn signature_algorithm(alg: KeyAlgorithm) -> &'static SignatureAlgorithm {
    match alg {
        KeyAlgorithm::Rsa { .. } => &rcgen::PKCS_RSA_SHA256,
        KeyAlgorithm::Ecdsa(Curve::P256) => &rcgen::PKCS_ECDSA_P256_SHA256,
        KeyAlgorithm::Ecdsa(Curve::P384) => &rcgen::PKCS_ECDSA_P384_SHA384,
        KeyAlgorithm::Ecdsa(Curve::P521) => &rcgen::PKCS_ECDSA_P521_SHA512,
    }
}

/// A new private key: the PEM kubeadm would write and the signer rcgen uses.
struct NewKey {
    pem: String,
    signer: KeyPair,
}

fn generate_key(alg: Algorithm) -> Result<NewKey, PkiError> {
    let ctx = "generating a key";
    let rsa = |size| -> Result<NewKey, PkiError> {
        let kp = sig::RsaKeyPair::generate(size).map_err(|e| PkiError::crypto(ctx, e))?;
        let pkcs8 = kp.as_der().map_err(|e| PkiError::crypto(ctx, e))?;
        // aws-lc-rs only exports PKCS#8; its inner OCTET STRING is the PKCS#1 key kubeadm writes.
        let pkcs1 = der::parse_pkcs8(pkcs8.as_ref())
            .ok_or_else(|| PkiError::crypto(ctx, "unexpected PKCS#8 layout"))?
            .private_key
            .to_vec();
        let pem = pem_encode("RSA PRIVATE KEY", &pkcs1);
        let der = PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(pkcs1));
        let signer = KeyPair::from_der_and_sign_algo(&der, &rcgen::PKCS_RSA_SHA256)
            .map_err(|e| PkiError::crypto(ctx, e))?;
        Ok(NewKey { pem, signer })
    };
    let ec = |curve: Curve| -> Result<NewKey, PkiError> {
        let (lc_alg, rc_alg) = match curve {
            Curve::P256 => (&sig::ECDSA_P256_SHA256_ASN1_SIGNING, &rcgen::PKCS_ECDSA_P256_SHA256),
            Curve::P384 => (&sig::ECDSA_P384_SHA384_ASN1_SIGNING, &rcgen::PKCS_ECDSA_P384_SHA384),
            Curve::P521 => (&sig::ECDSA_P521_SHA512_ASN1_SIGNING, &rcgen::PKCS_ECDSA_P521_SHA512),
        };
        let kp = sig::EcdsaKeyPair::generate(lc_alg).map_err(|e| PkiError::crypto(ctx, e))?;
        // RFC 5915 with the curve parameters: Go's x509.ParseECPrivateKey needs them.
        let sec1 = kp.private_key().as_der().map_err(|e| PkiError::crypto(ctx, e))?;
        let sec1 = sec1.as_ref().to_vec();
        let pem = pem_encode("EC PRIVATE KEY", &sec1);
        let der = PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(sec1));
        let signer =
            KeyPair::from_der_and_sign_algo(&der, rc_alg).map_err(|e| PkiError::crypto(ctx, e))?;
        Ok(NewKey { pem, signer })
    };
    match alg {
        Algorithm::Rsa2048 => rsa(aws_lc_rs::rsa::KeySize::Rsa2048),
        Algorithm::Rsa3072 => rsa(aws_lc_rs::rsa::KeySize::Rsa3072),
        Algorithm::Rsa4096 => rsa(aws_lc_rs::rsa::KeySize::Rsa4096),
        Algorithm::EcdsaP256 => ec(Curve::P256),
        Algorithm::EcdsaP384 => ec(Curve::P384),
    }
}

/// PEM with 64-character lines, as Go's `encoding/pem` writes it.
pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A random serial in [1, 2^63-1], kubeadm's range.
pub(crate) fn random_serial() -> SerialNumber {
    let n: u64 = rand::thread_rng().gen_range(1..=i64::MAX as u64);
    // Minimal big-endian bytes: DER INTEGERs must not carry leading zero octets.
    let bytes = n.to_be_bytes();
    let first = bytes.iter().position(|&b| b != 0).unwrap_or(7);
    SerialNumber::from_slice(&bytes[first..])
}

pub(crate) const BACKDATE: time::Duration = time::Duration::minutes(5);
const CA_VALIDITY: time::Duration = time::Duration::days(365 * 10);
const LEAF_VALIDITY: time::Duration = time::Duration::days(365);

fn ca_cert(
    common_name: &str,
    key: &KeyPair,
    now: OffsetDateTime,
    validity: time::Duration,
) -> Result<String, PkiError> {
    let ctx = format!("signing the {common_name} CA certificate");
    let mut params = CertificateParams::new(vec![common_name.to_string()])
        .map_err(|e| PkiError::crypto(&ctx, e))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
        KeyUsagePurpose::KeyCertSign,
    ];
    params.serial_number = Some(random_serial());
    params.not_before = now - BACKDATE;
    params.not_after = now + validity;
    let cert = params.self_signed(key).map_err(|e| PkiError::crypto(&ctx, e))?;
    Ok(cert.pem())
}

/// Creates the eight shared files under `dir` for `alg`, judged at `now`.
///
/// Refuses (writing nothing) if any of the eight already exists. Files are written to a temp
/// file created 0600 in the same directory, then linked into place without overwriting, so a
/// key is never readable by others even for an instant, and a concurrent writer is not
/// clobbered. If a later file fails, the ones already written are removed again.
pub fn init(dir: &Path, alg: Algorithm, now: OffsetDateTime) -> Result<(), PkiError> {
    for shared in &SHARED_FILES {
        let path = dir.join(shared.name);
        match std::fs::symlink_metadata(&path) {
            Ok(_) => return Err(PkiError::WouldOverwrite { path }),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(PkiError::io(path, e)),
        }
    }

    let contents = generate_files(alg, CA_VALIDITY, now)?;
    make_dir(dir)?;
    make_dir(&dir.join("etcd"))?;
    let mut written: Vec<PathBuf> = Vec::new();
    for shared in &SHARED_FILES {
        let Some((_, body)) = contents.iter().find(|(n, _)| *n == shared.name) else {
            continue;
        };
        let path = dir.join(shared.name);
        if let Err(e) = write_new(&path, body.as_bytes(), shared.mode) {
            for done in &written {
                let _ = std::fs::remove_file(done);
            }
            return Err(e);
        }
        written.push(path);
    }
    Ok(())
}

/// The eight shared files of a new PKI, as (name, PEM): three CAs valid for `validity` from
/// `now` (back-dated as kubeadm does) and a service-account pair, all keys of `alg`. In memory
/// only; `init` writes them, `hapki rotate` keeps them in the first master's state directory.
pub(crate) fn generate_files(
    alg: Algorithm,
    validity: time::Duration,
    now: OffsetDateTime,
) -> Result<Vec<(&'static str, String)>, PkiError> {
    let mut contents: Vec<(&str, String)> = Vec::new();
    for shared in SHARED_FILES.iter().filter(|f| f.kind == FileKind::Certificate) {
        let cn = shared.ca_common_name.unwrap_or(shared.name);
        let key = generate_key(alg)?;
        contents.push((shared.name, ca_cert(cn, &key.signer, now, validity)?));
        contents.push((shared.pair, key.pem));
    }
    let sa = generate_key(alg)?;
    contents.push(("sa.key", sa.pem));
    contents.push(("sa.pub", pem_encode("PUBLIC KEY", &sa.signer.subject_public_key_info())));
    Ok(contents)
}

/// Creates `dir` with mode 0755 if it does not exist; an existing directory is left as it is.
fn make_dir(dir: &Path) -> Result<(), PkiError> {
    if dir.is_dir() {
        return Ok(());
    }
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|e| PkiError::io(dir, e))?;
    // The umask may have narrowed the mode; kubeadm's layout is 0755.
    std::fs::set_permissions(dir, Permissions::from_mode(DIR_MODE))
        .map_err(|e| PkiError::io(dir, e))
}

/// A temporary file beside `path` holding `bytes`, with `mode` (and `owner`, uid and gid) set
/// and synced: ready to be renamed into place, so the final name only ever shows a finished
/// file. tempfile creates it 0600 from the start, so a key is never exposed while it is written.
pub(crate) fn staged(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<tempfile::NamedTempFile, PkiError> {
    let parent = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".hapki-")
        .tempfile_in(parent)
        .map_err(|e| PkiError::io(parent, e))?;
    tmp.write_all(bytes).map_err(|e| PkiError::io(tmp.path(), e))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(tmp.as_file(), Some(uid), Some(gid))
            .map_err(|e| PkiError::io(tmp.path(), e))?;
    }
    tmp.as_file()
        .set_permissions(Permissions::from_mode(mode))
        .map_err(|e| PkiError::io(tmp.path(), e))?;
    tmp.as_file().sync_all().map_err(|e| PkiError::io(tmp.path(), e))?;
    Ok(tmp)
}

/// Makes a rename into `path`'s directory durable (best effort: not every filesystem syncs a
/// directory).
pub(crate) fn sync_parent(path: &Path) {
    if let Ok(d) = std::fs::File::open(path.parent().unwrap_or(Path::new("."))) {
        let _ = d.sync_all();
    }
}

/// Writes `bytes` to a new file at `path` with `mode`, never replacing an existing file.
pub(crate) fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    staged(path, bytes, mode, None)?.persist_noclobber(path).map_err(|e| {
        if e.error.kind() == ErrorKind::AlreadyExists {
            PkiError::WouldOverwrite { path: path.to_path_buf() }
        } else {
            PkiError::io(path, e.error)
        }
    })?;
    sync_parent(path);
    Ok(())
}

/// A certificate and its key, PEM-encoded.
#[derive(Debug, Clone)]
pub struct IssuedLeaf {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Signs a one-year server/client leaf for `common_name` (also its DNS SAN) with the CA
/// `<ca>.crt`/`<ca>.key` in `dir` (`ca` is `ca`, `front-proxy-ca` or `etcd/ca`), as kubeadm
/// issues per-node certificates. The leaf key uses the CA key's algorithm. Meant for tests and
/// demos of the commands that look at per-node certificates.
pub fn issue_leaf(
    dir: &Path,
    ca: &str,
    common_name: &str,
    now: OffsetDateTime,
) -> Result<IssuedLeaf, PkiError> {
    let (crt_name, key_name) = (format!("{ca}.crt"), format!("{ca}.key"));
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|e| PkiError::io(path, e))
    };
    let (crt_pem, key_pem) = (read(&crt_name)?, read(&key_name)?);
    let dns = [common_name.to_string()];
    let eku = [ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let names = (crt_name.as_str(), key_name.as_str());
    sign_leaf(names, &crt_pem, &key_pem, &[(DnType::CommonName, common_name)], &dns, &eku, now)
}

/// A one-year client certificate for a kubelet (`O=system:nodes`, `CN=system:node:NAME`),
/// signed by the CA `ca_crt_pem` (its first certificate) with `ca_key_pem`: what `hapki
/// rotate` gives a worker's kubelet at switch.
pub(crate) fn issue_kubelet_client(
    ca_crt_pem: &[u8],
    ca_key_pem: &[u8],
    common_name: &str,
    now: OffsetDateTime,
) -> Result<IssuedLeaf, PkiError> {
    let dn = [(DnType::OrganizationName, "system:nodes"), (DnType::CommonName, common_name)];
    let eku = [ExtendedKeyUsagePurpose::ClientAuth];
    sign_leaf(("ca.crt", "ca.key"), ca_crt_pem, ca_key_pem, &dn, &[], &eku, now)
}

fn sign_leaf(
    (crt_name, key_name): (&str, &str),
    crt_pem: &[u8],
    key_pem: &[u8],
    subject: &[(DnType, &str)],
    dns: &[String],
    eku: &[ExtendedKeyUsagePurpose],
    now: OffsetDateTime,
) -> Result<IssuedLeaf, PkiError> {
    let ca_cert = parse::parse_certificate(crt_name, crt_pem)?;
    let ca_key = parse::parse_private_key(key_name, key_pem)?;
    let alg = ca_key.public.algorithm;
    let key_der = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| PkiError::invalid(key_name, e.to_string()))?;
    let ca_signer = KeyPair::from_der_and_sign_algo(&key_der, signature_algorithm(alg))
        .map_err(|e| PkiError::invalid(key_name, e.to_string()))?;
    let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(ca_cert.der.clone()), ca_signer)
        .map_err(|e| PkiError::invalid(crt_name, e.to_string()))?;

    let leaf_alg = Algorithm::of_key(alg).unwrap_or_default();
    let leaf_key = generate_key(leaf_alg)?;
    let name = subject.last().map_or("", |(_, v)| *v);
    let ctx = format!("signing a leaf for {name}");
    let mut params = CertificateParams::new(dns.to_vec()).map_err(|e| PkiError::crypto(&ctx, e))?;
    let mut dn = DistinguishedName::new();
    for (t, v) in subject {
        dn.push(t.clone(), *v);
    }
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = eku.to_vec();
    params.serial_number = Some(random_serial());
    params.not_before = now - BACKDATE;
    params.not_after = now + LEAF_VALIDITY;
    params.use_authority_key_identifier_extension = true;
    let cert =
        params.signed_by(&leaf_key.signer, &issuer).map_err(|e| PkiError::crypto(&ctx, e))?;
    Ok(IssuedLeaf { cert_pem: cert.pem(), key_pem: leaf_key.pem })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithm_names_round_trip() {
        for a in Algorithm::ALL {
            assert_eq!(a.as_str().parse::<Algorithm>().unwrap(), a);
        }
        assert_eq!("ecdsa-p256".parse::<Algorithm>().unwrap(), Algorithm::EcdsaP256);
        assert!("RSA-1024".parse::<Algorithm>().is_err());
    }

    #[test]
    fn serial_is_minimal_and_positive() {
        for _ in 0..64 {
            let s = random_serial();
            let b = s.as_ref();
            assert!(!b.is_empty() && b.len() <= 8);
            assert_ne!(b[0], 0, "leading zero octet");
        }
    }

    #[test]
    fn pem_lines_are_64_wide() {
        let pem = pem_encode("PUBLIC KEY", &[0u8; 100]);
        let lines: Vec<&str> = pem.lines().collect();
        assert_eq!(lines[0], "-----BEGIN PUBLIC KEY-----");
        assert_eq!(lines[1].len(), 64);
        assert_eq!(lines.last().copied(), Some("-----END PUBLIC KEY-----"));
    }
}
