//! The strict, streaming bundle reader.
//!
//! It never extracts anything to disk, and its memory is bounded whatever the input (a few MiB:
//! the compressed stream ≤ [`format::INPUT_MAX`], the tar it decodes to ≤
//! [`format::DECOMPRESSED_MAX`]): the file, the age plaintext and the gzip output are each read
//! through a hard cap, so a decompression bomb costs a fixed amount of work and memory before
//! it is rejected. Each tar header is checked before its entry's bytes are read.
//!
//! The tar layer is parsed here rather than with the `tar` crate: the format admits exactly one
//! shape (eleven regular files with known names, in order), and a reader that only ever sees
//! raw 512-byte headers cannot be talked into following a long-name, PAX or sparse extension,
//! nor into accepting an archive that simply stops without its end-of-archive blocks.
//!
//! Order of trust: `bundle.json` and `SHA256SUMS` are only buffered until `SHA256SUMS.sig` has
//! been checked (by the caller's `check_signature`); then `SHA256SUMS` is parsed and
//! `bundle.json`'s hash matched, and each `pki/` entry is hashed as it arrives. Nothing in
//! `bundle.json` is looked at here.

use std::collections::HashSet;
use std::io::{self, BufReader, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::crypt::{self, Identities};
use super::format::{self, entry_cap, entry_mode, entry_names, MANIFEST, SIGNATURE, SUMS};
use super::sign::Signer;
use super::BundleError;
use crate::pki::fingerprint::sha256_hex;

/// What a structurally valid, signature-checked bundle holds, before `bundle.json` is read.
#[derive(Clone)] // no Debug: it holds key bytes
pub struct RawBundle {
    pub signer: Signer,
    pub manifest_bytes: Vec<u8>,
    pub sums: Vec<u8>,
    pub signature: Vec<u8>,
    /// `(archive name, mode, bytes)` of each `pki/` entry, in bundle order, each hash-checked
    /// against `SHA256SUMS`.
    pub files: Vec<(String, u32, Vec<u8>)>,
    /// Whether the bundle was age-encrypted.
    pub encrypted: bool,
    /// Each artifact entry as read: `(archive name, size, sha256 hex)`, in bundle order, each
    /// hash-checked against `SHA256SUMS`. The bytes went to the caller's sink, never kept.
    pub artifacts: Vec<(String, u64, String)>,
    /// Whether the whole archive was read (false when the head check asked to stop early).
    pub complete: bool,
    /// The mtime every tar header carries (hapki's writer stamps `created_at` on each entry;
    /// the caller checks it against `bundle.json`, which the signature covers).
    pub mtime: u64,
}

/// What a bundle reader tells its caller about artifact bytes as they stream past.
#[derive(Debug)]
pub enum ArtifactEvent<'a> {
    /// Artifact `index` begins; its tar header says `size` bytes.
    Start { index: usize, size: u64 },
    /// The next bytes of the current artifact (not yet known to be authentic: the hash is only
    /// known at [`ArtifactEvent::End`], so a consumer must not act on them before the whole
    /// bundle has been read successfully).
    Data(&'a [u8]),
    /// The current artifact ended and matched its `SHA256SUMS` line.
    End,
}

/// Receives artifact bytes; an error stops the read.
pub type ArtifactSink<'a> = dyn FnMut(ArtifactEvent<'_>) -> Result<(), BundleError> + 'a;

/// Called once every entry before the first artifact has been read and checked (the signature,
/// `bundle.json`'s hash, every `pki/` entry), with what has been read so far. `Ok(false)` stops
/// the read there (the caller needs no artifact): the result is then marked incomplete.
pub type HeadCheck<'a> = dyn FnMut(&RawBundle) -> Result<bool, BundleError> + 'a;

/// The size of the chunks artifacts stream in.
pub const CHUNK: usize = 256 * 1024;

/// Which of the two encodings a bundle uses (see [`super::stored`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// PKI only: flate2 best compression, checked by recompression.
    Pki,
    /// Carries artifacts: stored deflate blocks, checked while streaming.
    Artifacts,
}

/// Decides whether `SHA256SUMS` (first argument) is authentic given `SHA256SUMS.sig` (second).
pub type SignatureCheck<'a> = dyn FnMut(&[u8], &[u8]) -> Result<Signer, BundleError> + 'a;

const BLOCK: usize = 512;

/// Reads a bundle from `input`: age (if it starts with the age header) → gzip → tar.
///
/// `check_signature(sums, sig)` decides whether `SHA256SUMS` is authentic; it runs before any
/// `pki/` entry is read. Every rejection is a [`BundleError`] of category Verification naming the
/// entry or layer, except "encrypted but no key" (usage).
pub fn read_bundle<R: Read>(
    input: R,
    ids: &Identities,
    check_signature: &mut SignatureCheck<'_>,
) -> Result<RawBundle, BundleError> {
    read_bundle_streaming(input, ids, check_signature, &mut |_| Ok(true), &mut |_| Ok(()))
}

/// [`read_bundle`] for bundles that may carry artifacts: `on_head` runs once the signature and
/// every entry before the artifacts have checked out, then each artifact's bytes go to `sink`
/// in [`CHUNK`]s, hashed on the way, never held. Memory stays bounded whatever the sizes.
pub fn read_bundle_streaming<R: Read>(
    input: R,
    ids: &Identities,
    check_signature: &mut SignatureCheck<'_>,
    on_head: &mut HeadCheck<'_>,
    sink: &mut ArtifactSink<'_>,
) -> Result<RawBundle, BundleError> {
    // The file is capped until the signature has verified; a signed bundle that carries
    // artifacts may then be as large as they are (each entry still capped).
    let mut input = Capped::new(input, format::INPUT_MAX, "the bundle file");
    let lift = input.limit.clone();
    let check_signature = &mut |sums: &[u8], sig: &[u8]| {
        let signer = check_signature(sums, sig)?;
        lift.store(u64::MAX, Ordering::Relaxed);
        Ok(signer)
    };
    // Sniff the format from a prefix read in full (a pipe may deliver it in pieces), then put
    // the prefix back in front of the rest.
    let mut head = Vec::with_capacity(crypt::AGE_ARMOR_MAGIC.len());
    (&mut input)
        .take(crypt::AGE_ARMOR_MAGIC.len() as u64)
        .read_to_end(&mut head)
        .map_err(|e| corrupt("reading the bundle", e))?;
    let input = BufReader::new(io::Cursor::new(head.clone()).chain(input));
    if head.starts_with(crypt::AGE_MAGIC) {
        let plain = crypt::decrypt(input, ids)?;
        let mut raw = read_any_gzip(plain, check_signature, on_head, sink)?;
        raw.encrypted = true;
        Ok(raw)
    } else if head.starts_with(&[0x1f, 0x8b]) {
        read_any_gzip(input, check_signature, on_head, sink)
    } else if head.starts_with(crypt::AGE_ARMOR_MAGIC) {
        Err(layout(None, "the bundle is an ASCII-armored age file; hapki reads the binary format: `age -d` it, or encrypt without -a"))
    } else if head.starts_with(crypt::AGE_MAGIC.split_at(8).0) {
        Err(layout(None, "truncated age header"))
    } else {
        Err(layout(None, "not a hapki bundle: neither an age file nor gzip data"))
    }
}

/// Dispatches on the gzip header: hapki's PKI-only encoding, or the stored-block encoding of
/// bundles that carry artifacts ([`super::stored`]).
fn read_any_gzip<R: Read>(
    input: R,
    check_signature: &mut SignatureCheck<'_>,
    on_head: &mut HeadCheck<'_>,
    sink: &mut ArtifactSink<'_>,
) -> Result<RawBundle, BundleError> {
    let mut input = BufReader::with_capacity(CHUNK, input);
    let mut header = Vec::with_capacity(format::GZIP_HEADER.len());
    (&mut input)
        .take(format::GZIP_HEADER.len() as u64)
        .read_to_end(&mut header)
        .map_err(|e| corrupt("reading the bundle", e))?;
    if header[..] != super::stored::STORED_GZIP_HEADER {
        let all = io::Cursor::new(header).chain(input);
        return read_gzip_with(all, check_signature, on_head);
    }
    let mut tar = super::stored::StoredGzReader::new(input);
    let raw = read_tar_with(&mut tar, Variant::Artifacts, check_signature, on_head, sink)?;
    if !raw.complete {
        return Ok(raw);
    }
    // Only zero padding may follow the end-of-archive blocks; reading to the end also checks
    // the stored stream's framing, CRC-32, length and that nothing follows it.
    drain_zero_padding(&mut tar)?;
    Ok(raw)
}

/// The structural reader without decryption: gzip → tar. Public for the fuzz target.
///
/// The compressed stream (≤ [`format::INPUT_MAX`]) is held in memory, and the tar it decodes to
/// (≤ [`format::DECOMPRESSED_MAX`]) is recorded as it streams through the entry checks: once
/// everything else passed, the compressed bytes must be exactly what hapki's writer makes of
/// that tar. The signature covers the entries, gzip's CRC the tar, but nothing covers the
/// gzip header nor the padding bits that end the deflate stream; this last check is what makes
/// one flipped bit anywhere in a plaintext bundle fatal. (The price: a bundle recompressed by
/// another tool, or by a hapki with a different deflate implementation, is refused; bundles
/// live days, and `hapki bundle` remakes one.)
pub fn read_gzip<R: Read>(
    input: R,
    check_signature: &mut SignatureCheck<'_>,
) -> Result<RawBundle, BundleError> {
    read_gzip_with(input, check_signature, &mut |_| Ok(true))
}

fn read_gzip_with<R: Read>(
    input: R,
    check_signature: &mut SignatureCheck<'_>,
    on_head: &mut HeadCheck<'_>,
) -> Result<RawBundle, BundleError> {
    let mut compressed = Vec::new();
    Capped::new(input, format::INPUT_MAX, "the compressed archive")
        .read_to_end(&mut compressed)
        .map_err(|e| corrupt("reading the bundle", e))?;
    if compressed.len() < format::GZIP_HEADER.len() {
        return Err(layout(None, "truncated gzip header"));
    }
    if compressed[..format::GZIP_HEADER.len()] != format::GZIP_HEADER {
        return Err(layout(
            None,
            "gzip header is not the one hapki writes (no name, no flags, mtime 0, best compression, OS unknown)",
        ));
    }
    let gz = flate2::bufread::GzDecoder::new(&compressed[..]);
    let mut tar = Recorded {
        inner: Capped::new(gz, format::DECOMPRESSED_MAX, "the decompressed archive"),
        record: Vec::new(),
    };
    let raw = read_tar_with(&mut tar, Variant::Pki, check_signature, on_head, &mut |_| {
        Err(BundleError::Internal("artifact in a PKI-only bundle".into()))
    })?;
    // After the end-of-archive blocks only zero padding may follow (GNU tar pads to 10 KiB).
    // Reading to the end also makes flate2 check the gzip trailer (CRC-32 and length).
    drain_zero_padding(&mut tar)?;
    // flate2 decodes one gzip member; anything after it (a second member, garbage) is left here.
    let left = tar.inner.inner.into_inner();
    if !left.is_empty() {
        let what =
            if left.starts_with(&[0x1f, 0x8b]) { "a second gzip member" } else { "trailing data" };
        return Err(layout(None, &format!("{what} after the gzip stream")));
    }
    let canonical = super::writer::gzip(&tar.record)
        .map_err(|e| BundleError::Internal(format!("recompressing: {e}")))?;
    if canonical != compressed {
        return Err(layout(
            None,
            "the gzip stream is not hapki's encoding of its contents (altered, or recompressed by another tool)",
        ));
    }
    Ok(raw)
}

/// Keeps a copy of what is read through it.
struct Recorded<R> {
    inner: R,
    record: Vec<u8>,
}

impl<R: Read> Read for Recorded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.record.extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

/// The tar layer alone, over an already decompressed stream. Public for the fuzz target.
pub fn read_tar<R: Read>(
    r: &mut R,
    check_signature: &mut SignatureCheck<'_>,
) -> Result<RawBundle, BundleError> {
    read_tar_with(r, Variant::Pki, check_signature, &mut |_| Ok(true), &mut |_| Ok(()))
}

fn read_tar_with<R: Read>(
    r: &mut R,
    variant: Variant,
    check_signature: &mut SignatureCheck<'_>,
    on_head: &mut HeadCheck<'_>,
    sink: &mut ArtifactSink<'_>,
) -> Result<RawBundle, BundleError> {
    // Until the signature has verified, only the three metadata entries are expected; then
    // SHA256SUMS (now authentic) says what follows.
    let mut expected: Vec<String> = match variant {
        Variant::Pki => entry_names(),
        Variant::Artifacts => vec![MANIFEST.into(), SUMS.into(), SIGNATURE.into()],
    };
    let known = |name: &str| {
        entry_names().iter().any(|n| n == name) || format::artifact_index(name).is_some()
    };
    let mut seen: HashSet<String> = HashSet::new();
    let mut next = 0usize;
    let mut raw = RawBundle {
        signer: Signer { fingerprint: String::new(), principal: String::new() },
        manifest_bytes: Vec::new(),
        sums: Vec::new(),
        signature: Vec::new(),
        files: Vec::new(),
        encrypted: false,
        artifacts: Vec::new(),
        complete: true,
        mtime: 0,
    };
    let mut mtime: Option<u64> = None;
    let mut signed = false;
    let mut head_done = false;
    let mut hashes: Vec<(String, String)> = Vec::new();
    let mut block = [0u8; BLOCK];
    loop {
        read_block(r, &mut block, "a tar header")?;
        if block.iter().all(|&b| b == 0) {
            read_block(r, &mut block, "the end-of-archive marker")?;
            if block.iter().any(|&b| b != 0) {
                return Err(layout(
                    None,
                    "a zero tar block followed by data (broken end-of-archive marker)",
                ));
            }
            break;
        }
        let h = Header::parse(&block)?;
        let name = h.name.clone();
        if let Some(why) = unsafe_path(&name) {
            return Err(layout(Some(&name), why));
        }
        if let Some(kind) = h.non_regular() {
            return Err(layout(
                Some(&name),
                &format!("is a {kind}; a bundle holds only regular files"),
            ));
        }
        if !known(&name) || (variant == Variant::Pki && format::artifact_index(&name).is_some()) {
            return Err(layout(Some(&name), "is not part of the bundle format (unknown entry)"));
        }
        if !seen.insert(name.clone()) {
            return Err(layout(Some(&name), "appears twice (duplicate entry)"));
        }
        match expected.get(next) {
            Some(e) if *e == name => {}
            Some(e) => {
                return Err(layout(
                    Some(&name),
                    &format!("is out of order: expected {e} at this position"),
                ))
            }
            None => return Err(layout(Some(&name), "is not listed in SHA256SUMS")),
        }
        next += 1;
        let cap = match variant {
            Variant::Pki => entry_cap(&name),
            Variant::Artifacts => format::entry_cap_with_artifacts(&name),
        };
        if h.size > cap {
            return Err(layout(
                Some(&name),
                &format!("is {} bytes, over the {cap}-byte cap", h.size),
            ));
        }
        let want = entry_mode(&name);
        if h.mode != want {
            return Err(layout(
                Some(&name),
                &format!("has mode {:04o}, expected {want:04o}", h.mode),
            ));
        }
        // The signature covers the entries' bytes, not their headers: every header byte must be
        // the one hapki's writer makes (owner 0:0 root/root, mode, type, one mtime, padding).
        raw.mtime = *mtime.get_or_insert(h.mtime);
        check_header_bytes(&block, &name, h.size, raw.mtime)?;
        if let Some(index) = format::artifact_index(&name) {
            if !signed {
                return Err(layout(Some(&name), "comes before the signature"));
            }
            if !head_done {
                head_done = true;
                if !on_head(&raw)? {
                    raw.complete = false;
                    return Ok(raw);
                }
            }
            let sha = stream_entry(r, &name, h.size, index, sink)?;
            check_hex(&hashes, &name, &sha)?;
            sink(ArtifactEvent::End)?;
            raw.artifacts.push((name, h.size, sha));
            continue;
        }
        // Metadata and PKI entries: size ≤ cap ≤ 1 MiB, so this cast and allocation are bounded.
        let mut data = vec![0u8; h.size as usize];
        r.read_exact(&mut data).map_err(|e| truncated(&name, e))?;
        let pad = (BLOCK - data.len() % BLOCK) % BLOCK;
        r.read_exact(&mut block[..pad]).map_err(|e| truncated(&name, e))?;
        check_zero_padding(&block[..pad], &name)?;

        match name.as_str() {
            MANIFEST => raw.manifest_bytes = data,
            SUMS => raw.sums = data,
            SIGNATURE => {
                raw.signature = data;
                raw.signer = check_signature(&raw.sums, &raw.signature)?;
                signed = true;
                hashes = match variant {
                    Variant::Pki => format::parse_sums(&raw.sums),
                    Variant::Artifacts => format::parse_sums_with_artifacts(&raw.sums),
                }
                .map_err(|m| layout(Some(SUMS), &m))?;
                check_hash(&hashes, MANIFEST, &raw.manifest_bytes)?;
                if variant == Variant::Artifacts {
                    expected.extend(hashes.iter().skip(1).map(|(n, _)| n.clone()));
                }
            }
            _ => {
                check_hash(&hashes, &name, &data)?;
                raw.files.push((name, h.mode, data));
            }
        }
    }
    if let Some(missing) = expected.get(next) {
        return Err(layout(Some(missing), "is missing"));
    }
    if !signed {
        return Err(layout(Some(SIGNATURE), "is missing"));
    }
    if !head_done {
        // Nothing left to stop reading: the answer does not matter.
        on_head(&raw)?;
    }
    Ok(raw)
}

/// Streams one artifact entry's `size` bytes (and its tar padding) to `sink`, returning the
/// SHA-256 of the bytes.
fn stream_entry<R: Read>(
    r: &mut R,
    name: &str,
    size: u64,
    index: usize,
    sink: &mut ArtifactSink<'_>,
) -> Result<String, BundleError> {
    use sha2::Digest;
    sink(ArtifactEvent::Start { index, size })?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut left = size;
    while left > 0 {
        // Whole chunks (the stored layer yields at most a block per read): fewer, larger
        // messages for the consumers.
        let want = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
        let mut n = 0;
        while n < want {
            let k = r.read(&mut buf[n..want]).map_err(|e| truncated(name, e))?;
            if k == 0 {
                return Err(layout(Some(name), "is truncated"));
            }
            n += k;
        }
        hasher.update(&buf[..n]);
        sink(ArtifactEvent::Data(&buf[..n]))?;
        left -= n as u64;
    }
    let pad = ((BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64) as usize;
    r.read_exact(&mut buf[..pad]).map_err(|e| truncated(name, e))?;
    check_zero_padding(&buf[..pad], name)?;
    Ok(hex::encode(hasher.finalize()))
}

fn check_zero_padding(pad: &[u8], name: &str) -> Result<(), BundleError> {
    if pad.iter().any(|&b| b != 0) {
        return Err(layout(
            Some(name),
            "has non-zero bytes in the tar padding after its data (altered after signing); make a new bundle with `hapki bundle`",
        ));
    }
    Ok(())
}

/// The ustar header fields, by offset, for naming the one that differs.
const HEADER_FIELDS: &[(usize, usize, &str)] = &[
    (0, 100, "name"),
    (100, 108, "mode"),
    (108, 116, "uid"),
    (116, 124, "gid"),
    (124, 136, "size"),
    (136, 148, "mtime"),
    (156, 157, "type"),
    (157, 257, "link name"),
    (257, 263, "magic"),
    (263, 265, "version"),
    (265, 297, "owner name (uname)"),
    (297, 329, "group name (gname)"),
    (329, 337, "device major"),
    (337, 345, "device minor"),
    (345, 500, "name prefix"),
    (500, 512, "padding"),
    (148, 156, "checksum"),
];

/// Compares a whole 512-byte header with the one hapki's writer makes for this entry.
fn check_header_bytes(
    block: &[u8; BLOCK],
    name: &str,
    size: u64,
    mtime: u64,
) -> Result<(), BundleError> {
    let want = super::writer::tar_header(name, size, mtime)
        .map_err(|_| layout(Some(name), "has a tar header hapki's writer cannot make"))?;
    let want = want.as_bytes();
    if block[..] == want[..] {
        return Ok(());
    }
    let field = HEADER_FIELDS
        .iter()
        .find(|(a, b, _)| block[*a..*b] != want[*a..*b])
        .map_or("header", |(_, _, f)| *f);
    Err(layout(
        Some(name),
        &format!(
            "has a tar header whose {field} is not what hapki writes (owner 0:0 root/root, kubeadm's mode, one mtime, zero padding): the archive was altered after signing; make a new bundle with `hapki bundle`"
        ),
    ))
}

fn check_hex(hashes: &[(String, String)], name: &str, got: &str) -> Result<(), BundleError> {
    let want = hashes.iter().find(|(n, _)| n == name).map(|(_, h)| h.as_str());
    if want != Some(got) {
        return Err(BundleError::Hash { entry: name.to_string() });
    }
    Ok(())
}

fn check_hash(hashes: &[(String, String)], name: &str, data: &[u8]) -> Result<(), BundleError> {
    let want = hashes.iter().find(|(n, _)| n == name).map(|(_, h)| h.as_str());
    let got = sha256_hex(data);
    if want != Some(got.as_str()) {
        return Err(BundleError::Hash { entry: name.to_string() });
    }
    Ok(())
}

/// Why a name is unsafe to have in an archive at all, before asking whether it is known.
fn unsafe_path(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("has an empty name")
    } else if name.starts_with('/') {
        Some("has an absolute path")
    } else if name.split('/').any(|c| c == "..") {
        Some("has a '..' path component")
    } else if name.contains('\\') {
        Some("has a backslash in its path")
    } else {
        None
    }
}

/// The fields of a ustar header hapki looks at.
struct Header {
    name: String,
    mode: u32,
    size: u64,
    mtime: u64,
    typeflag: u8,
}

impl Header {
    fn parse(b: &[u8; BLOCK]) -> Result<Header, BundleError> {
        let stored = octal(&b[148..156])
            .ok_or_else(|| layout(None, "tar header with an unreadable checksum"))?;
        let sum: u64 = b
            .iter()
            .enumerate()
            .map(|(i, &x)| if (148..156).contains(&i) { 32 } else { x as u64 })
            .sum();
        if stored != sum {
            return Err(layout(None, "tar header checksum mismatch (corrupt archive)"));
        }
        let mut name = c_string(&b[0..100])?;
        // POSIX ustar splits long paths into prefix/name; GNU's old format uses those bytes for
        // other fields, so the prefix only counts with the POSIX magic.
        if &b[257..263] == b"ustar\0" {
            let prefix = c_string(&b[345..500])?;
            if !prefix.is_empty() {
                name = format!("{prefix}/{name}");
            }
        }
        let mode =
            octal(&b[100..108]).ok_or_else(|| layout(Some(&name), "has an unreadable mode"))?;
        let size =
            octal(&b[124..136]).ok_or_else(|| layout(Some(&name), "has an unreadable size"))?;
        let mtime =
            octal(&b[136..148]).ok_or_else(|| layout(Some(&name), "has an unreadable mtime"))?;
        Ok(Header { name, mode: (mode & 0o7777) as u32, size, mtime, typeflag: b[156] })
    }

    fn non_regular(&self) -> Option<&'static str> {
        match self.typeflag {
            b'0' | 0 => None,
            b'1' => Some("hard link"),
            b'2' => Some("symbolic link"),
            b'3' => Some("character device"),
            b'4' => Some("block device"),
            b'5' => Some("directory"),
            b'6' => Some("FIFO"),
            b'7' => Some("contiguous file"),
            b'x' | b'g' => Some("PAX extended header"),
            b'L' | b'K' => Some("GNU long name record"),
            b'S' => Some("GNU sparse file"),
            _ => Some("entry of unknown type"),
        }
    }
}

/// A NUL-terminated field: text up to the first NUL, and nothing but NULs after it.
fn c_string(field: &[u8]) -> Result<String, BundleError> {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    let s = String::from_utf8(field[..end].to_vec())
        .map_err(|_| layout(None, "tar entry name is not UTF-8"))?;
    if field[end..].iter().any(|&b| b != 0) {
        return Err(layout(Some(&s), "has a NUL byte inside its name"));
    }
    Ok(s)
}

/// An octal number field, space/NUL padded. Base-256 (GNU binary) is refused: no bundle field
/// needs it.
fn octal(field: &[u8]) -> Option<u64> {
    let t: &[u8] = {
        let start = field.iter().position(|&b| b != b' ')?;
        let rest = &field[start..];
        let end = rest.iter().position(|&b| b == 0 || b == b' ').unwrap_or(rest.len());
        if rest[end..].iter().any(|&b| b != 0 && b != b' ') {
            return None;
        }
        &rest[..end]
    };
    if t.is_empty() || t.len() > 21 || !t.iter().all(|b| (b'0'..=b'7').contains(b)) {
        return None;
    }
    t.iter().try_fold(0u64, |acc, &d| acc.checked_mul(8)?.checked_add((d - b'0') as u64))
}

fn read_block<R: Read>(r: &mut R, block: &mut [u8; BLOCK], what: &str) -> Result<(), BundleError> {
    r.read_exact(block).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            layout(None, &format!("truncated tar: the archive ends where {what} should be"))
        } else {
            corrupt(&format!("reading {what}"), e)
        }
    })
}

fn truncated(name: &str, e: io::Error) -> BundleError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        layout(Some(name), "is truncated")
    } else {
        corrupt(&format!("reading {name}"), e)
    }
}

fn layout(entry: Option<&str>, reason: &str) -> BundleError {
    BundleError::Layout { entry: entry.map(str::to_string), reason: reason.to_string() }
}

/// A read failure inside a layer: a cap hit, a damaged age payload, a gzip CRC or a truncated
/// deflate stream.
fn corrupt(context: &str, e: io::Error) -> BundleError {
    let msg = e.to_string();
    BundleError::Layout { entry: None, reason: format!("{context}: {msg}") }
}

/// A reader that fails (instead of stopping quietly) once more than `cap` bytes have come out.
/// The cap can be raised through `limit` (shared, so it can be lifted from inside the layers
/// this reader feeds).
struct Capped<R> {
    inner: R,
    left: u64,
    what: &'static str,
    cap: u64,
    limit: Arc<AtomicU64>,
}

impl<R> Capped<R> {
    fn new(inner: R, cap: u64, what: &'static str) -> Self {
        Capped { inner, left: cap, what, cap, limit: Arc::new(AtomicU64::new(cap)) }
    }
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let limit = self.limit.load(Ordering::Relaxed);
        if limit != self.cap {
            self.left = self.left.saturating_add(limit - self.cap.min(limit));
            self.cap = limit;
        }
        // Ask for one byte past the cap so that "exactly at the cap" and "over it" differ.
        let max = buf.len().min(usize::try_from(self.left.saturating_add(1)).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        if n as u64 > self.left {
            return Err(io::Error::other(format!(
                "{} is larger than the {}-byte cap",
                self.what, self.cap
            )));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Reads to the end of the archive stream, which may hold only zero padding after the
/// end-of-archive blocks (GNU tar pads to 10 KiB); anything else is a layout error.
fn drain_zero_padding<R: Read>(tar: &mut R) -> Result<(), BundleError> {
    let mut buf = [0u8; 8192];
    loop {
        let n = tar.read(&mut buf).map_err(|e| corrupt("after the end of the tar archive", e))?;
        if n == 0 {
            return Ok(());
        }
        if buf[..n].iter().any(|&b| b != 0) {
            return Err(layout(None, "data after the end of the tar archive"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octal_fields() {
        assert_eq!(octal(b"0000644\0"), Some(0o644));
        assert_eq!(octal(b"     644 "), Some(0o644));
        assert_eq!(octal(b"00000001750\0"), Some(1000));
        assert_eq!(octal(b"\x80\0\0\0\0\0\0\x01"), None);
        assert_eq!(octal(b"12 3\0"), None);
        assert_eq!(octal(b"\0\0\0\0"), None);
        assert_eq!(octal(b"9"), None);
    }

    #[test]
    fn path_rules() {
        assert!(unsafe_path("pki/../ca.key").is_some());
        assert!(unsafe_path("/etc/passwd").is_some());
        assert!(unsafe_path("..").is_some());
        assert!(unsafe_path("pki/ca.crt").is_none());
        assert!(unsafe_path("pki/..foo").is_none());
    }

    #[test]
    fn cap_is_exact() {
        let data = [1u8; 10];
        let mut ok = Capped::new(&data[..], 10, "x");
        assert_eq!(io::copy(&mut ok, &mut io::sink()).unwrap(), 10);
        let mut over = Capped::new(&data[..], 9, "x");
        assert!(io::copy(&mut over, &mut io::sink()).is_err());
    }

    #[test]
    fn garbage_is_rejected_without_panicking() {
        let ids = Identities::default();
        let mut sig = |_: &[u8], _: &[u8]| -> Result<Signer, BundleError> { unreachable!() };
        for input in
            [&b""[..], b"\x1f", b"\x1f\x8b", b"age-encryption.org/v1\n", b"hello", b"age-enc"]
        {
            assert!(read_bundle(input, &ids, &mut sig).is_err());
        }
    }
}
