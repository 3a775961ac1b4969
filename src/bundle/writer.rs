//! Builds a bundle: check the PKI, write `bundle.json`, `SHA256SUMS`, its signature and the
//! `pki/` entries into a deterministic tar.gz, encrypt it, and put it in place atomically.
//!
//! Determinism: same files, options, key and creation time give the same tar.gz bytes (an
//! Ed25519 signature is deterministic; the age layer is not, by design: fresh file key).
//! Entries carry uid/gid 0, owner names `root`, mtime = `created_at`, kubeadm's modes; there are
//! no directory entries (`tar -x` creates `pki/` and `pki/etcd/` itself, and a reader that
//! accepts no directories has one rule fewer). gzip carries no name and mtime 0.

use std::io::Write;
use std::path::{Path, PathBuf};

use ssh_key::PrivateKey;
use time::OffsetDateTime;

use super::crypt::{self, Recipients};
use super::format::{self, Manifest, ManifestFile, FORMAT_VERSION, PKI_PREFIX};
use super::{sign, BundleError};
use crate::pki::check::{check_files, CheckOptions, PkiFile};
use crate::pki::SHARED_FILES;

/// What goes into `bundle.json` besides the files.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// Cluster name.
    pub cluster: String,
    /// Creation time; truncated to whole seconds.
    pub created_at: OffsetDateTime,
    /// How long the bundle stays valid (default 7 days: a transport, not an archive).
    pub valid_for: time::Duration,
    /// Serial; `None` = `created_at` in Unix seconds.
    pub serial: Option<u64>,
    /// Where the files came from (`local:/etc/kubernetes/pki`, `ssh:root@node1:/etc/…`).
    pub source: String,
}

/// How the tar.gz is protected on disk.
#[derive(Debug)]
pub enum Protection {
    /// age-encrypted to these recipients.
    Encrypt(Recipients),
    /// Written as a plain tar.gz, CA private keys readable by anyone holding the file. Only ever
    /// chosen explicitly (`--insecure-plaintext`).
    InsecurePlaintext,
}

/// Builds the plaintext tar.gz of a bundle in memory and returns it with its manifest.
///
/// Refuses (Incoherent, exit 3) a PKI that fails the coherence check: a missing file, a key that
/// does not match its certificate, a certificate that is not a CA.
pub fn build(
    files: &[PkiFile],
    key: &PrivateKey,
    opts: &CreateOptions,
) -> Result<(Manifest, Vec<u8>), BundleError> {
    let created_at = opts.created_at.replace_nanosecond(0).unwrap_or(opts.created_at);
    // Coherence is judged at the real present, not at `created_at` (which tests and
    // reproducible builds may set anywhere).
    let report = check_files(
        files,
        &CheckOptions {
            warn_within: crate::duration::Duration::from_secs(0),
            now: OffsetDateTime::now_utc(),
        },
    );
    if !report.ok {
        return Err(BundleError::incoherent(&report));
    }
    let discovery = report
        .discovery_token_ca_cert_hash
        .clone()
        .ok_or_else(|| BundleError::Internal("coherent PKI without a discovery hash".into()))?;
    let mut entries = Vec::new();
    let mut mfiles = Vec::new();
    for shared in SHARED_FILES {
        let file = files.iter().find(|f| f.name == shared.name);
        let rep = report.files.iter().find(|r| r.name == shared.name);
        let (Some(file), Some(rep)) = (file, rep) else {
            return Err(BundleError::Internal(format!("coherent PKI without {}", shared.name)));
        };
        mfiles.push(ManifestFile {
            name: shared.name.to_string(),
            mode: shared.mode,
            sha256: rep.sha256.clone(),
            kind: shared.kind,
            cert_sha256: rep.cert_sha256.clone(),
            spki_sha256: rep.spki_sha256.clone(),
            not_after: super::parse_rfc3339(rep.not_after.as_deref())?,
            subject: rep.subject.clone(),
        });
        entries.push((format!("{PKI_PREFIX}{}", shared.name), file.bytes.as_slice()));
    }
    let expires_at = created_at
        .checked_add(opts.valid_for)
        .ok_or_else(|| BundleError::Usage("--valid-for is too long".into()))?;
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        cluster: opts.cluster.clone(),
        serial: opts.serial.unwrap_or(created_at.unix_timestamp().max(0) as u64),
        created_at,
        expires_at,
        source: opts.source.clone(),
        hapki_version: env!("CARGO_PKG_VERSION").to_string(),
        signer: sign::fingerprint(key),
        discovery_token_ca_cert_hash: discovery,
        files: mfiles,
    };
    let manifest_bytes =
        manifest.to_bytes().map_err(|e| BundleError::Internal(format!("bundle.json: {e}")))?;
    let mut sums =
        vec![(format::MANIFEST.to_string(), crate::pki::fingerprint::sha256_hex(&manifest_bytes))];
    sums.extend(entries.iter().map(|(n, b)| (n.clone(), crate::pki::fingerprint::sha256_hex(b))));
    let sums = format::render_sums(&sums);
    let sig = sign::sign(key, &sums)?;

    let mut all: Vec<(String, &[u8])> = vec![
        (format::MANIFEST.into(), &manifest_bytes),
        (format::SUMS.into(), &sums),
        (format::SIGNATURE.into(), &sig),
    ];
    all.extend(entries);
    let tgz = tar_gz(&all, created_at.unix_timestamp().max(0) as u64)
        .map_err(|e| BundleError::Internal(format!("building the archive: {e}")))?;
    Ok((manifest, tgz))
}

/// The deterministic tar.gz of `entries` (name, bytes), in the given order.
pub fn tar_gz(entries: &[(String, &[u8])], mtime: u64) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, bytes) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_path(name)?;
        h.set_mode(format::entry_mode(name));
        h.set_uid(0);
        h.set_gid(0);
        h.set_username("root")?;
        h.set_groupname("root")?;
        h.set_mtime(mtime);
        h.set_size(bytes.len() as u64);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        tar.append(&h, *bytes)?;
    }
    gzip(&tar.into_inner()?)
}

/// hapki's one gzip encoding (header [`format::GZIP_HEADER`]); the reader recompresses with it
/// to check that a bundle's compressed bytes are canonical.
pub fn gzip(tar: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut gz = flate2::GzBuilder::new().mtime(0).write(Vec::new(), flate2::Compression::best());
    gz.write_all(tar)?;
    gz.finish()
}

/// Builds a bundle and writes it to `out` atomically (temp file with mode 0600 in the same
/// directory, fsync, rename): `out` is either the complete bundle or untouched.
pub fn create(
    files: &[PkiFile],
    key: &PrivateKey,
    opts: &CreateOptions,
    protection: &Protection,
    out: &Path,
) -> Result<Manifest, BundleError> {
    let (manifest, tgz) = build(files, key, opts)?;
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // tempfile creates the file with mode 0600 from the start.
    let mut tmp = tempfile::Builder::new()
        .prefix(".hapki-bundle-")
        .suffix(".tmp")
        .tempfile_in(&dir)
        .map_err(|e| BundleError::io(&dir, e))?;
    match protection {
        Protection::Encrypt(r) => {
            crypt::encrypt(&tgz, r, std::io::BufWriter::new(tmp.as_file_mut()))?
                .flush()
                .map_err(|e| BundleError::io(out, e))?;
        }
        Protection::InsecurePlaintext => {
            tmp.write_all(&tgz).map_err(|e| BundleError::io(out, e))?
        }
    }
    tmp.as_file().sync_all().map_err(|e| BundleError::io(out, e))?;
    tmp.persist(out).map_err(|e| BundleError::io(out, e.error))?;
    if let Ok(d) = std::fs::File::open(&dir) {
        // Makes the rename itself durable; failing here leaves a complete file, so not an error.
        let _ = d.sync_all();
    }
    Ok(manifest)
}
