//! Builds a bundle: check the PKI, write `bundle.json`, `SHA256SUMS`, its signature, the
//! `pki/` entries and the artifacts into a deterministic tar in the one gzip encoding of
//! [`super::stored`], encrypt it, and put it in place atomically.
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

/// The manifest fields every bundle shares.
fn manifest(
    key: &PrivateKey,
    opts: &CreateOptions,
    discovery: String,
    files: Vec<ManifestFile>,
    artifacts: Vec<format::ManifestArtifact>,
) -> Result<Manifest, BundleError> {
    let created_at = opts.created_at.replace_nanosecond(0).unwrap_or(opts.created_at);
    let expires_at = created_at
        .checked_add(opts.valid_for)
        .ok_or_else(|| BundleError::Usage("--valid-for is too long".into()))?;
    Ok(Manifest {
        format_version: FORMAT_VERSION,
        cluster: opts.cluster.clone(),
        serial: opts.serial.unwrap_or(created_at.unix_timestamp().max(0) as u64),
        created_at,
        expires_at,
        source: opts.source.clone(),
        hapki_version: env!("CARGO_PKG_VERSION").to_string(),
        signer: sign::fingerprint(key),
        discovery_token_ca_cert_hash: discovery,
        files,
        artifacts,
    })
}

/// The PKI's part of a bundle: discovery hash, manifest entries and archive entries.
#[allow(clippy::type_complexity)]
fn pki_part(
    files: &[PkiFile],
) -> Result<(String, Vec<ManifestFile>, Vec<(String, &[u8])>), BundleError> {
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
    Ok((discovery, mfiles, entries))
}

/// The one header shape a bundle entry has; the reader requires exactly these 512 bytes.
pub(crate) fn tar_header(name: &str, size: u64, mtime: u64) -> std::io::Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    h.set_path(name)?;
    h.set_mode(format::entry_mode(name));
    h.set_uid(0);
    h.set_gid(0);
    h.set_username("root")?;
    h.set_groupname("root")?;
    h.set_mtime(mtime);
    h.set_size(size);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    Ok(h)
}

/// Where the archive bytes go: straight to the file, or through age.
enum Sink<W: Write> {
    Plain(W),
    Age(age::stream::StreamWriter<W>),
}

impl<W: Write> Write for Sink<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::Plain(w) => w.write(b),
            Sink::Age(w) => w.write(b),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Plain(w) => w.flush(),
            Sink::Age(w) => w.flush(),
        }
    }
}

impl<W: Write> Sink<W> {
    fn finish(self) -> std::io::Result<W> {
        match self {
            Sink::Plain(w) => Ok(w),
            Sink::Age(w) => w.finish(),
        }
    }
}

/// Builds a bundle of the PKI `files`, the `artifacts`, or both, and writes it to `out`
/// atomically, streaming: each artifact source is hashed once (pass 1: `SHA256SUMS` and its
/// signature precede the data), then everything is streamed into tar → stored-block gzip
/// (`super::stored`) → age → a 0600 temp file beside `out`, each source hashed again on the
/// way; a source that changed between the passes fails the build. Memory stays bounded whatever
/// the sizes. The temp file is fsynced and renamed to `out` only when complete: `out` is either
/// the complete bundle or untouched.
///
/// Refuses (Incoherent, exit 3) a PKI that fails the coherence check: a missing file, a key that
/// does not match its certificate, a certificate that is not a CA.
pub fn create(
    files: Option<&[PkiFile]>,
    artifacts: &[crate::artifacts::Artifact],
    key: &PrivateKey,
    opts: &CreateOptions,
    protection: &Protection,
    out: &Path,
) -> Result<Manifest, BundleError> {
    if files.is_none() && artifacts.is_empty() {
        return Err(BundleError::Usage(
            "nothing to bundle: give --pki-dir, --artifacts, or both".into(),
        ));
    }
    let (discovery, mfiles, entries) = match files {
        Some(f) => pki_part(f)?,
        None => (String::new(), Vec::new(), Vec::new()),
    };
    let marts = hash_artifacts(artifacts)?;
    let manifest = manifest(key, opts, discovery, mfiles, marts)?;
    let manifest_bytes = manifest_bytes(&manifest)?;
    let mut sums =
        vec![(format::MANIFEST.to_string(), crate::pki::fingerprint::sha256_hex(&manifest_bytes))];
    sums.extend(entries.iter().map(|(n, b)| (n.clone(), crate::pki::fingerprint::sha256_hex(b))));
    sums.extend(manifest.artifacts.iter().map(|a| (a.name.clone(), a.sha256.clone())));
    let sums = format::render_sums(&sums);
    let sig = sign::sign(key, &sums)?;
    let mut small: Vec<(String, &[u8])> = vec![
        (format::MANIFEST.into(), &manifest_bytes),
        (format::SUMS.into(), &sums),
        (format::SIGNATURE.into(), &sig),
    ];
    small.extend(entries);
    let mut tmp = temp_beside(out)?;
    let archive = Archive { small: &small, artifacts, manifest: &manifest };
    archive.write(tmp.as_file_mut(), protection, out)?;
    persist_durably(tmp, out)?;
    Ok(manifest)
}

/// Pass 1: hash every artifact source once, for `bundle.json` and `SHA256SUMS`.
fn hash_artifacts(
    artifacts: &[crate::artifacts::Artifact],
) -> Result<Vec<format::ManifestArtifact>, BundleError> {
    let mut marts = Vec::with_capacity(artifacts.len());
    for (i, a) in artifacts.iter().enumerate() {
        let (sha, size) = hash_file(&a.source)?;
        if size > format::ARTIFACT_MAX {
            return Err(BundleError::Usage(format!(
                "{}: {size} bytes, over the {}-byte cap for one artifact; split it",
                a.source.display(),
                format::ARTIFACT_MAX
            )));
        }
        marts.push(format::ManifestArtifact {
            name: format::artifact_name(i),
            dest: a.dest.clone(),
            mode: a.mode,
            owner: a.owner.clone(),
            roles: a.roles.clone(),
            after: a.after,
            sha256: sha,
            size,
        });
    }
    Ok(marts)
}

/// `bundle.json`'s bytes, within the cap the reader holds it to.
fn manifest_bytes(manifest: &Manifest) -> Result<Vec<u8>, BundleError> {
    let bytes =
        manifest.to_bytes().map_err(|e| BundleError::Internal(format!("bundle.json: {e}")))?;
    let cap = format::metadata_cap(format::MANIFEST, !manifest.artifacts.is_empty());
    if bytes.len() as u64 > cap {
        return Err(BundleError::Usage(format!(
            "bundle.json would be {} bytes, over the {cap}-byte cap; carry fewer, larger artifacts (pack small files into an archive)",
            bytes.len(),
        )));
    }
    Ok(bytes)
}

/// What goes into the archive, in order: the small entries (metadata and `pki/`), then the
/// artifacts as `manifest` lists them.
struct Archive<'a> {
    small: &'a [(String, &'a [u8])],
    artifacts: &'a [crate::artifacts::Artifact],
    manifest: &'a Manifest,
}

impl Archive<'_> {
    /// Pass 2: the whole archive into `file`, through age unless plaintext.
    fn write(
        &self,
        file: &mut std::fs::File,
        protection: &Protection,
        out: &Path,
    ) -> Result<(), BundleError> {
        let io = |e: std::io::Error| BundleError::io(out, e);
        let file = std::io::BufWriter::with_capacity(super::CHUNK, file);
        let sink = match protection {
            Protection::Encrypt(r) => Sink::Age(crypt::encrypt_stream(r, file)?),
            Protection::InsecurePlaintext => Sink::Plain(file),
        };
        let mut gz = super::stored::StoredGzWriter::new(sink).map_err(io)?;
        let mtime = self.manifest.created_at.unix_timestamp().max(0) as u64;
        for (name, bytes) in self.small {
            gz.write_all(tar_header(name, bytes.len() as u64, mtime).map_err(io)?.as_bytes())
                .map_err(io)?;
            gz.write_all(bytes).map_err(io)?;
            gz.write_all(&[0u8; 512][..(512 - bytes.len() % 512) % 512]).map_err(io)?;
        }
        let mut buf = vec![0u8; super::CHUNK];
        for (a, m) in self.artifacts.iter().zip(&self.manifest.artifacts) {
            gz.write_all(tar_header(&m.name, m.size, mtime).map_err(io)?.as_bytes()).map_err(io)?;
            let mut f =
                std::fs::File::open(&a.source).map_err(|e| BundleError::io(&a.source, e))?;
            match copy_checked(&mut f, m.size, &m.sha256, &mut gz, &mut buf) {
                Ok(true) => {}
                Ok(false) => return Err(changed(&a.source)),
                Err(CopyError::Read(e)) => return Err(BundleError::io(&a.source, e)),
                Err(CopyError::Write(e)) => return Err(io(e)),
            }
            gz.write_all(&[0u8; 512][..((512 - m.size % 512) % 512) as usize]).map_err(io)?;
        }
        // End of archive: two zero blocks, no record padding.
        gz.write_all(&[0u8; 1024]).map_err(io)?;
        let sink = gz.finish().map_err(io)?;
        let mut file = sink.finish().map_err(io)?;
        file.flush().map_err(io)
    }
}

/// A temporary file in `out`'s directory (so the final rename stays on one filesystem), created
/// with mode 0600 from the start by `tempfile`: a bundle may hold CA keys, even unencrypted.
fn temp_beside(out: &Path) -> Result<tempfile::NamedTempFile, BundleError> {
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    tempfile::Builder::new()
        .prefix(".hapki-bundle-")
        .suffix(".tmp")
        .tempfile_in(&dir)
        .map_err(|e| BundleError::io(&dir, e))
}

/// Flushes `tmp` to disk and renames it to `out`, so `out` is either absent or complete.
fn persist_durably(tmp: tempfile::NamedTempFile, out: &Path) -> Result<(), BundleError> {
    tmp.as_file().sync_all().map_err(|e| BundleError::io(out, e))?;
    tmp.persist(out).map_err(|e| BundleError::io(out, e.error))?;
    let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if let Ok(d) = std::fs::File::open(dir) {
        // Makes the rename itself durable; failing here leaves a complete file, so not an error.
        let _ = d.sync_all();
    }
    Ok(())
}

enum CopyError {
    Read(std::io::Error),
    Write(std::io::Error),
}

/// Copies `src` to `sink` while hashing it; `Ok(false)` when the bytes are not the `size` bytes
/// with SHA-256 `sha256` that pass 1 saw (the source changed between the passes). Stops at the
/// first byte past `size`, so a source that grew is not copied on and on.
fn copy_checked(
    src: &mut impl std::io::Read,
    size: u64,
    sha256: &str,
    sink: &mut impl Write,
    buf: &mut [u8],
) -> Result<bool, CopyError> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut left = size;
    loop {
        let n = src.read(buf).map_err(CopyError::Read)?;
        if n == 0 {
            break;
        }
        if n as u64 > left {
            return Ok(false);
        }
        h.update(&buf[..n]);
        sink.write_all(&buf[..n]).map_err(CopyError::Write)?;
        left -= n as u64;
    }
    Ok(left == 0 && hex::encode(h.finalize()) == sha256)
}

fn changed(p: &Path) -> BundleError {
    BundleError::Usage(format!(
        "{} changed while the bundle was being built; make sure nothing writes to it and run hapki bundle again",
        p.display()
    ))
}

/// SHA-256 (hex) and size of a file, streamed.
fn hash_file(p: &Path) -> Result<(String, u64), BundleError> {
    use sha2::Digest;
    let mut f = std::fs::File::open(p).map_err(|e| BundleError::io(p, e))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; super::CHUNK];
    let mut size = 0u64;
    loop {
        let n = std::io::Read::read(&mut f, &mut buf).map_err(|e| BundleError::io(p, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(h.finalize()), size))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pass 2 against what pass 1 saw: the same bytes pass; the same length with one byte
    /// changed, a source that grew and one that shrank are all "changed" (the vector is the
    /// SHA-256 of "kubeadm\n", as `printf 'kubeadm\n' | sha256sum` prints it).
    #[test]
    fn pass_two_refuses_a_source_that_changed_since_pass_one() {
        let real = "668ca42808cc40823f3a0f5db66a9d3013e8d2b93fc0d1237ba056630aecbdf5";
        let other = crate::pki::fingerprint::sha256_hex(b"kubelet\n");
        let mut buf = [0u8; 3];
        let run = |src: &[u8], size: u64, want: &str, buf: &mut [u8]| {
            let mut out = Vec::new();
            let ok = copy_checked(&mut &src[..], size, want, &mut out, buf).ok().unwrap();
            (ok, out)
        };
        assert_eq!(run(b"kubeadm\n", 8, real, &mut buf), (true, b"kubeadm\n".to_vec()));
        assert!(!run(b"kubeadm\n", 8, &other, &mut buf).0);
        assert!(!run(b"kubeadM\n", 8, real, &mut buf).0);
        let (ok, out) = run(b"kubeadm\nand more", 8, real, &mut buf);
        assert!(!ok);
        assert!(out.len() <= 8, "copied {} bytes past the planned size", out.len());
        assert!(!run(b"kubead", 8, real, &mut buf).0);
    }
}
