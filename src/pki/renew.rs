//! `pki renew-ca`: re-issue a CA certificate with the SAME key and subject.
//!
//! kubeadm never renews a CA. A CA certificate re-issued with its own key keeps the subject,
//! the SubjectPublicKeyInfo (so the discovery-token-ca-cert-hash), the subject key identifier
//! (so every leaf's authority key identifier still matches) and every extension byte for byte;
//! only the serial and the validity change. Every leaf and token issued before stays valid.
//!
//! The re-issued certificate is checked before anything is written: it must parse as kubeadm
//! reads it, carry the old raw subject and public key, be CA:TRUE with keyCertSign and verify
//! with its own key. The old certificate is kept beside it as `<name>.<timestamp>.bak` (0644,
//! never overwritten) and the new one replaces it by an atomic rename.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use rcgen::{
    CertificateParams, CustomExtension, DistinguishedName, DnType, DnValue, IsCa, KeyIdMethod,
    KeyPair,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;
use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use x509_parser::der_parser::asn1_rs::Tag;
use x509_parser::prelude::{FromDer, X509Certificate, X509Name};

use super::generate::{
    random_serial, signature_algorithm, staged, sync_parent, write_new, BACKDATE,
};
use super::parse::{self, ParsedCert};
use super::PkiError;

/// The three CAs of a kubeadm cluster, by the names `--which` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ca {
    Ca,
    FrontProxyCa,
    EtcdCa,
}

impl Ca {
    pub const ALL: [Ca; 3] = [Ca::Ca, Ca::FrontProxyCa, Ca::EtcdCa];

    /// `ca`, `front-proxy-ca`, `etcd-ca`.
    pub fn as_str(self) -> &'static str {
        match self {
            Ca::Ca => "ca",
            Ca::FrontProxyCa => "front-proxy-ca",
            Ca::EtcdCa => "etcd-ca",
        }
    }
    /// The certificate, relative to the pki directory.
    pub fn cert_name(self) -> &'static str {
        match self {
            Ca::Ca => "ca.crt",
            Ca::FrontProxyCa => "front-proxy-ca.crt",
            Ca::EtcdCa => "etcd/ca.crt",
        }
    }
    /// The key, relative to the pki directory.
    pub fn key_name(self) -> &'static str {
        match self {
            Ca::Ca => "ca.key",
            Ca::FrontProxyCa => "front-proxy-ca.key",
            Ca::EtcdCa => "etcd/ca.key",
        }
    }
    /// The CA whose certificate is `name` (`ca.crt`, `front-proxy-ca.crt`, `etcd/ca.crt`).
    pub fn of_cert(name: &str) -> Option<Ca> {
        Ca::ALL.into_iter().find(|c| c.cert_name() == name)
    }
}

impl std::str::FromStr for Ca {
    type Err = PkiError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let alias = |c: Ca| c == Ca::EtcdCa && s == "etcd/ca";
        Ca::ALL.into_iter().find(|&c| c.as_str() == s || alias(c)).ok_or_else(|| {
            PkiError::Refused {
                file: s.to_string(),
                message: "not a CA name: use ca, front-proxy-ca or etcd-ca (etcd/ca)".into(),
            }
        })
    }
}

/// What `renew-ca` does.
#[derive(Debug, Clone)]
pub struct RenewOptions {
    pub which: Vec<Ca>,
    /// From `now` to the new notAfter.
    pub validity: time::Duration,
    pub now: OffsetDateTime,
    /// Compute and check everything, write nothing.
    pub dry_run: bool,
    /// Where kubeadm's kubeconfigs are (`/etc/kubernetes`): every `*.conf` there whose
    /// `certificate-authority-data` is the old `ca.crt` gets the new one. `None`: none touched.
    pub kubeconfig_dir: Option<PathBuf>,
}

/// One re-issued CA certificate.
#[derive(Debug, Clone, Serialize)]
pub struct Reissued {
    pub ca: Ca,
    pub file: String,
    pub subject: String,
    /// SHA-256 of the SubjectPublicKeyInfo: equal before and after.
    pub spki_sha256: String,
    pub old_serial: String,
    pub new_serial: String,
    pub old_not_after: String,
    pub new_not_after: String,
    /// Where the old certificate was kept; `None` on a dry run.
    pub backup: Option<PathBuf>,
    #[serde(skip)]
    pub pem: String,
}

/// The outcome of `renew-ca` on a pki directory.
#[derive(Debug, Clone, Serialize)]
pub struct RenewReport {
    pub dry_run: bool,
    /// Of `ca.crt` after the re-issue: the same as before.
    pub discovery_token_ca_cert_hash: Option<String>,
    pub renewed: Vec<Reissued>,
    /// Kubeconfigs whose `certificate-authority-data` was (or, on a dry run, would be) the old
    /// `ca.crt` and now is the new one.
    pub kubeconfigs: Vec<PathBuf>,
}

fn read(dir: &Path, name: &str) -> Result<Vec<u8>, PkiError> {
    let path = dir.join(name);
    let meta = std::fs::symlink_metadata(&path).map_err(|e| match e.kind() {
        ErrorKind::NotFound => PkiError::Refused {
            file: name.to_string(),
            message: "missing: a same-key re-issue needs the CA's certificate and key; restore them from a backup (a new CA means a new cluster trust root)".into(),
        },
        _ => PkiError::io(&path, e),
    })?;
    if !meta.file_type().is_file() {
        return Err(PkiError::invalid(
            name,
            "is not a regular file (a symlink?): hapki never writes through one; replace it with the real file",
        ));
    }
    std::fs::read(&path).map_err(|e| PkiError::io(path, e))
}

/// Re-issues one CA certificate (`cert_pem`, named `file`) with its key `key_pem`: same raw
/// subject, public key and extensions, a new serial, validity `now - 5 min` .. `now + validity`.
/// Pure: reads and writes nothing.
pub(crate) fn reissue(
    file: &str,
    cert_pem: &[u8],
    key_file: &str,
    key_pem: &[u8],
    validity: time::Duration,
    now: OffsetDateTime,
) -> Result<(ParsedCert, String), PkiError> {
    let old = parse::parse_certificate(file, cert_pem)?;
    let key = parse::parse_private_key(key_file, key_pem)?;
    if !key.public.same_key(&old.public) {
        return Err(PkiError::Refused {
            file: file.to_string(),
            message: format!("{key_file} is not this certificate's key: a same-key re-issue needs the matching key; restore the right pair"),
        });
    }
    if !old.is_ca || old.key_cert_sign == Some(false) {
        return Err(PkiError::Refused {
            file: file.to_string(),
            message: "is not a CA certificate (CA:TRUE with keyCertSign): only CAs are re-issued"
                .into(),
        });
    }
    let not_after = now + validity;
    if not_after <= old.not_after {
        return Err(PkiError::Refused {
            file: file.to_string(),
            message: format!(
                "the new notAfter {} would not be later than the current {}: pass a longer --validity",
                rfc3339(not_after),
                rfc3339(old.not_after)
            ),
        });
    }
    let (_, x509) = X509Certificate::from_der(&old.der)
        .map_err(|e| PkiError::invalid(file, format!("does not parse: {e}")))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(file, x509.subject())?;
    params.is_ca = IsCa::NoCa; // BasicConstraints is copied verbatim below
    params.key_identifier_method = KeyIdMethod::PreSpecified(Vec::new());
    params.custom_extensions = copied_extensions(file, &x509)?;
    params.serial_number = Some(new_serial(&old));
    params.not_before = now - BACKDATE;
    params.not_after = not_after;

    let key_der = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| PkiError::invalid(key_file, e.to_string()))?;
    let signer =
        KeyPair::from_der_and_sign_algo(&key_der, signature_algorithm(key.public.algorithm))
            .map_err(|e| PkiError::invalid(key_file, e.to_string()))?;
    let ctx = format!("re-issuing {file}");
    let cert = params.self_signed(&signer).map_err(|e| PkiError::crypto(&ctx, e))?;
    let pem = cert.pem();
    let new = parse::parse_certificate(file, pem.as_bytes())?;
    confirm(file, &old, &new, &x509)?;
    Ok((new, pem))
}

/// A serial different from the old one.
fn new_serial(old: &ParsedCert) -> rcgen::SerialNumber {
    loop {
        let s = random_serial();
        if hex::encode(s.as_ref()) != old.serial.replace(':', "").to_lowercase() {
            return s;
        }
    }
}

/// The subject as rcgen writes it, keeping every attribute's OID, order and string type.
fn distinguished_name(file: &str, name: &X509Name<'_>) -> Result<DistinguishedName, PkiError> {
    let bad = |why: &str| PkiError::Refused {
        file: file.to_string(),
        message: format!(
            "subject cannot be reproduced exactly ({why}); re-issue it with openssl by hand"
        ),
    };
    let mut dn = DistinguishedName::new();
    for rdn in name.iter() {
        let mut attrs = rdn.iter();
        let (Some(attr), None) = (attrs.next(), attrs.next()) else {
            return Err(bad("a multi-valued RDN"));
        };
        let oid: Vec<u64> = attr.attr_type().iter().ok_or_else(|| bad("an odd OID"))?.collect();
        let data = attr.attr_value().data;
        let text = std::str::from_utf8(data).map_err(|_| bad("a non-UTF-8 value"))?;
        let value = match attr.attr_value().header.tag() {
            Tag::PrintableString => {
                DnValue::PrintableString(text.try_into().map_err(|_| bad("PrintableString"))?)
            }
            Tag::Utf8String => DnValue::Utf8String(text.to_string()),
            Tag::Ia5String => DnValue::Ia5String(text.try_into().map_err(|_| bad("IA5String"))?),
            _ => return Err(bad("an unusual string type")),
        };
        dn.push(DnType::CustomDnType(oid), value);
    }
    Ok(dn)
}

/// Every extension of the old certificate, byte for byte, except an authority key identifier
/// naming the old issuer serial (which the new serial would contradict).
fn copied_extensions(
    file: &str,
    x509: &X509Certificate<'_>,
) -> Result<Vec<CustomExtension>, PkiError> {
    let mut out = Vec::new();
    for ext in x509.extensions() {
        if let x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(aki) =
            ext.parsed_extension()
        {
            if aki.authority_cert_serial.is_some() {
                continue;
            }
        }
        let oid: Vec<u64> = ext
            .oid
            .iter()
            .ok_or_else(|| {
                PkiError::invalid(file, "an extension OID does not parse: the file is corrupt")
            })?
            .collect();
        let mut c = CustomExtension::from_oid_content(&oid, ext.value.to_vec());
        c.set_criticality(ext.critical);
        out.push(c);
    }
    Ok(out)
}

/// The new certificate is what we promise: same raw subject, same key, self-signed CA.
fn confirm(
    file: &str,
    old: &ParsedCert,
    new: &ParsedCert,
    old_x509: &X509Certificate<'_>,
) -> Result<(), PkiError> {
    let (_, new_x509) = X509Certificate::from_der(&new.der).map_err(|e| {
        PkiError::crypto(file, format!("re-issued certificate does not parse: {e}"))
    })?;
    let same_subject = new_x509.subject().as_raw() == old_x509.subject().as_raw();
    let ok = same_subject
        && new.public.spki_der == old.public.spki_der
        && new.is_ca
        && new.key_cert_sign == Some(true)
        && new.self_signed != Some(false)
        && new.serial != old.serial;
    if ok {
        Ok(())
    } else {
        Err(PkiError::Refused {
            file: file.to_string(),
            message: "the re-issued certificate would differ in subject, key or CA flags; nothing written: re-issue it with openssl by hand".into(),
        })
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// Re-issues `opts.which` in `dir`. All certificates are computed and checked first; only then
/// are backups written (new files, never overwriting) and the new certificates renamed into
/// place. If a rename fails, the ones already replaced are put back from their backups.
pub fn renew_cas(dir: &Path, opts: &RenewOptions) -> Result<RenewReport, PkiError> {
    if !dir.is_dir() {
        return Err(PkiError::DirNotFound { path: dir.to_path_buf() });
    }
    let mut renewed = Vec::new();
    let mut olds = Vec::new();
    for &ca in &dedup(&opts.which) {
        let cert_pem = read(dir, ca.cert_name())?;
        let key_pem = read(dir, ca.key_name())?;
        let old = parse::parse_certificate(ca.cert_name(), &cert_pem)?;
        let (new, pem) =
            reissue(ca.cert_name(), &cert_pem, ca.key_name(), &key_pem, opts.validity, opts.now)?;
        renewed.push(Reissued {
            ca,
            file: ca.cert_name().to_string(),
            subject: new.subject.clone(),
            spki_sha256: new.public.spki_sha256(),
            old_serial: old.serial.clone(),
            new_serial: new.serial.clone(),
            old_not_after: rfc3339(old.not_after),
            new_not_after: rfc3339(new.not_after),
            backup: None,
            pem,
        });
        olds.push(cert_pem);
    }
    let kubeconfigs = match (&opts.kubeconfig_dir, renewed.iter().position(|r| r.ca == Ca::Ca)) {
        (Some(kdir), Some(i)) => kubeconfig_updates(kdir, &olds[i], renewed[i].pem.as_bytes())?,
        _ => Vec::new(),
    };
    if !opts.dry_run {
        install(dir, &mut renewed, &olds, opts.now)?;
        if let Err(e) = install_kubeconfigs(&kubeconfigs) {
            for (r, old) in renewed.iter().zip(&olds) {
                let _ = replace(&dir.join(&r.file), old, 0o644);
            }
            return Err(e);
        }
    }
    let kubeconfigs = kubeconfigs.into_iter().map(|k| k.path).collect();
    let ca_pem = match renewed.iter().find(|r| r.ca == Ca::Ca) {
        Some(r) => Some(r.pem.as_bytes().to_vec()),
        None => read(dir, "ca.crt").ok(),
    };
    let hash = ca_pem
        .and_then(|b| parse::parse_certificate("ca.crt", &b).ok())
        .map(|c| c.discovery_hash());
    Ok(RenewReport {
        dry_run: opts.dry_run,
        discovery_token_ca_cert_hash: hash,
        renewed,
        kubeconfigs,
    })
}

fn dedup(which: &[Ca]) -> Vec<Ca> {
    Ca::ALL.into_iter().filter(|c| which.contains(c)).collect()
}

fn install(
    dir: &Path,
    renewed: &mut [Reissued],
    olds: &[Vec<u8>],
    now: OffsetDateTime,
) -> Result<(), PkiError> {
    let stamp = now.unix_timestamp();
    for (r, old) in renewed.iter_mut().zip(olds) {
        let backup = dir.join(format!("{}.{stamp}.bak", r.file));
        write_new(&backup, old, 0o644).map_err(|e| match e {
            PkiError::WouldOverwrite { path } => PkiError::Refused {
                file: path.display().to_string(),
                message: "already exists (a backup is never overwritten): wait a second and run renew-ca again".into(),
            },
            e => e,
        })?;
        r.backup = Some(backup);
    }
    for i in 0..renewed.len() {
        let r = &renewed[i];
        if let Err(e) = replace(&dir.join(&r.file), r.pem.as_bytes(), 0o644) {
            for (done, old) in renewed[..i].iter().zip(olds) {
                let _ = replace(&dir.join(&done.file), old, 0o644);
            }
            return Err(e);
        }
    }
    Ok(())
}

/// One kubeconfig to rewrite: its new and old bytes, mode and owner.
struct KubeconfigUpdate {
    path: PathBuf,
    old: Vec<u8>,
    new: Vec<u8>,
    mode: u32,
    owner: (u32, u32),
}

/// The `*.conf` files directly under `kdir` (regular files, not symlinks) whose
/// `certificate-authority-data` is `old_pem`, with that value (only) set to `new_pem`.
fn kubeconfig_updates(
    kdir: &Path,
    old_pem: &[u8],
    new_pem: &[u8],
) -> Result<Vec<KubeconfigUpdate>, PkiError> {
    use base64::Engine;
    use std::os::unix::fs::MetadataExt;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let (old_b64, new_b64) = (b64(old_pem), b64(new_pem));
    let entries = std::fs::read_dir(kdir).map_err(|e| PkiError::io(kdir, e))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "conf"))
        .collect();
    paths.sort();
    let mut out = Vec::new();
    for path in paths {
        let meta = std::fs::symlink_metadata(&path).map_err(|e| PkiError::io(&path, e))?;
        if !meta.file_type().is_file() {
            continue;
        }
        let old = std::fs::read(&path).map_err(|e| PkiError::io(&path, e))?;
        let Some(new) = swap_ca_data(&old, &old_b64, &new_b64) else { continue };
        out.push(KubeconfigUpdate {
            path,
            old,
            new,
            mode: meta.mode() & 0o7777,
            owner: (meta.uid(), meta.gid()),
        });
    }
    Ok(out)
}

/// `text` with every `certificate-authority-data: OLD` line's value set to `new`; `None` when
/// no line holds exactly `old`.
fn swap_ca_data(text: &[u8], old: &str, new: &str) -> Option<Vec<u8>> {
    const KEY: &str = "certificate-authority-data:";
    let text = std::str::from_utf8(text).ok()?;
    let mut hit = false;
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches(['\n', '\r']);
        let value = body.trim_start().strip_prefix(KEY).map(str::trim);
        if value == Some(old) {
            let indent = &body[..body.len() - body.trim_start().len()];
            out.push_str(&format!("{indent}{KEY} {new}"));
            out.push_str(&line[body.len()..]);
            hit = true;
        } else {
            out.push_str(line);
        }
    }
    hit.then(|| out.into_bytes())
}

/// Writes each kubeconfig (atomically, its own mode and owner); on a failure puts back the
/// ones already written.
fn install_kubeconfigs(updates: &[KubeconfigUpdate]) -> Result<(), PkiError> {
    for (i, u) in updates.iter().enumerate() {
        if let Err(e) = replace_owned(&u.path, &u.new, u.mode, Some(u.owner)) {
            for done in &updates[..i] {
                let _ = replace_owned(&done.path, &done.old, done.mode, Some(done.owner));
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Replaces `path` atomically: a temp file (0600 from creation) in the same directory, then
/// the mode, fsync, rename over, fsync of the directory.
pub(crate) fn replace(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    replace_owned(path, bytes, mode, None)
}

/// [`replace`], also giving the new file `owner` (uid, gid) before it is renamed into place.
fn replace_owned(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<(), PkiError> {
    staged(path, bytes, mode, owner)?.persist(path).map_err(|e| PkiError::io(path, e.error))?;
    sync_parent(path);
    Ok(())
}

/// Per CA, for `pki check`: days left and whether a same-key re-issue is possible.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CaStatus {
    pub ca: String,
    pub file: String,
    /// Whole days until notAfter (negative once expired); `None` when the certificate is unreadable.
    pub days_left: Option<i64>,
    pub not_after: Option<String>,
    /// `pki renew-ca` can re-issue it: certificate and matching key present.
    pub reissue_possible: bool,
    /// Why not, when it is not.
    pub reason: Option<String>,
}

/// The status of each CA among `files` (name → bytes), judged at `now`.
pub(crate) fn ca_status(files: &[super::PkiFile], now: OffsetDateTime) -> Vec<CaStatus> {
    let get = |n: &str| files.iter().find(|f| f.name == n).map(|f| f.bytes.as_slice());
    Ca::ALL
        .into_iter()
        .map(|ca| {
            let cert = get(ca.cert_name()).map(|b| parse::parse_certificate(ca.cert_name(), b));
            let key = get(ca.key_name()).map(|b| parse::parse_private_key(ca.key_name(), b));
            let (days_left, not_after) = match &cert {
                Some(Ok(c)) => (Some((c.not_after - now).whole_days()), Some(rfc3339(c.not_after))),
                _ => (None, None),
            };
            let reason = match (&cert, &key) {
                (None, _) => Some(format!("{} is missing", ca.cert_name())),
                (Some(Err(_)), _) => Some(format!("{} does not parse", ca.cert_name())),
                (_, None) => Some(format!("{} is missing", ca.key_name())),
                (_, Some(Err(_))) => Some(format!("{} does not parse", ca.key_name())),
                (Some(Ok(c)), Some(Ok(k))) if !k.public.same_key(&c.public) => {
                    Some(format!("{} does not match {}", ca.key_name(), ca.cert_name()))
                }
                _ => None,
            };
            CaStatus {
                ca: ca.as_str().to_string(),
                file: ca.cert_name().to_string(),
                days_left,
                not_after,
                reissue_possible: reason.is_none(),
                reason,
            }
        })
        .collect()
}

/// How an incoming CA certificate relates to the one a node holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reissue {
    /// Not a same-key re-issue (another subject or key, not a CA, unreadable): a different CA.
    No,
    /// Same subject and public key, both CAs, and a later notAfter: safe to install.
    Later,
    /// Same subject and key but a notAfter no later than the installed one: a downgrade.
    NotLater,
}

/// Whether `incoming` is a same-key re-issue of `installed` (both PEM).
pub(crate) fn classify_reissue(installed: &[u8], incoming: &[u8]) -> Reissue {
    let (Ok(old), Ok(new)) = (
        parse::parse_certificate("installed", installed),
        parse::parse_certificate("incoming", incoming),
    ) else {
        return Reissue::No;
    };
    let raw_subject = |der: &[u8]| {
        X509Certificate::from_der(der).ok().map(|(_, c)| c.subject().as_raw().to_vec())
    };
    let same = old.is_ca
        && new.is_ca
        && old.public.spki_der == new.public.spki_der
        && raw_subject(&old.der).is_some_and(|s| Some(s) == raw_subject(&new.der));
    match (same, new.not_after > old.not_after) {
        (false, _) => Reissue::No,
        (true, true) => Reissue::Later,
        (true, false) => Reissue::NotLater,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_ca_data_replaces_only_an_exact_value_and_keeps_the_layout() {
        let text = "a: 1\n    certificate-authority-data: OLD\n  certificate-authority-data:   OLD  \r\nx: OLDER\ncertificate-authority-data: OLDX\n";
        let got = swap_ca_data(text.as_bytes(), "OLD", "NEW").expect("a hit");
        assert_eq!(
            String::from_utf8(got).unwrap(),
            "a: 1\n    certificate-authority-data: NEW\n  certificate-authority-data: NEW\r\nx: OLDER\ncertificate-authority-data: OLDX\n"
        );
        assert!(swap_ca_data(b"certificate-authority-data: OLDX\n", "OLD", "NEW").is_none());
        assert!(swap_ca_data(b"client-certificate-data: OLD\n", "OLD", "NEW").is_none());
        assert!(swap_ca_data(&[0xff, 0xfe], "OLD", "NEW").is_none());
    }

    #[test]
    fn ca_names_parse() {
        assert_eq!("etcd/ca".parse::<Ca>().unwrap(), Ca::EtcdCa);
        assert_eq!(" front-proxy-ca".parse::<Ca>().unwrap(), Ca::FrontProxyCa);
        assert!("sa".parse::<Ca>().is_err());
        assert_eq!(Ca::of_cert("etcd/ca.crt"), Some(Ca::EtcdCa));
        assert_eq!(Ca::of_cert("apiserver.crt"), None);
    }
}
