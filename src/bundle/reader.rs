//! The strict, streaming bundle reader.
//!
//! It never extracts anything to disk, and its memory is bounded whatever the input: the file
//! is read through a hard cap (`format::INPUT_MAX`) until the signature over `SHA256SUMS` has
//! verified, every entry through its own cap, and the zero padding after the archive through
//! `format::END_PADDING_MAX`, so a hostile file costs a fixed amount of work and memory before
//! it is rejected. Each tar header is checked before its entry's bytes are read.
//!
//! One encoding for every bundle, PKI-only or carrying artifacts: age (optional) → the
//! canonical stored-block gzip of `super::stored`, checked while streaming → tar. A bundle in
//! the compressed encoding older hapki versions wrote is refused by name.
//!
//! The tar layer is parsed here rather than with the `tar` crate: the format admits exactly one
//! shape (regular files with known names, in order), and a reader that only ever sees raw
//! 512-byte headers cannot be talked into following a long-name, PAX or sparse extension, nor
//! into accepting an archive that simply stops without its end-of-archive blocks.
//!
//! Order of trust: `bundle.json` and `SHA256SUMS` are only buffered until `SHA256SUMS.sig` has
//! been checked (by the caller's `check_signature`); then `SHA256SUMS` is parsed (it says what
//! follows) and `bundle.json`'s hash matched, and each later entry is hashed as it arrives.
//! Nothing in `bundle.json` is looked at here.

use std::collections::HashSet;
use std::io::{self, BufReader, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::crypt::{self, Identities};
use super::format::{self, entry_cap, entry_mode, entry_names, MANIFEST, SIGNATURE, SUMS};
use super::sign::Signer;
use super::stored::{StoredGzReader, STORED_GZIP_HEADER};
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
pub(crate) type ArtifactSink<'a> = dyn FnMut(ArtifactEvent<'_>) -> Result<(), BundleError> + 'a;

/// Called once with everything before the first artifact read and checked (the signature,
/// `bundle.json`'s hash, every `pki/` entry). In a bundle without artifacts that is the whole
/// bundle, and the call comes only once its last byte has been checked (the end of the archive,
/// the gzip trailer, nothing after it). `Ok(false)` stops the read there (the caller needs no
/// artifact): the result is then marked incomplete.
pub(crate) type HeadCheck<'a> = dyn FnMut(&RawBundle) -> Result<bool, BundleError> + 'a;

/// The size of the chunks artifacts stream in.
pub const CHUNK: usize = 256 * 1024;

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
pub(crate) fn read_bundle_streaming<R: Read>(
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
        let mut walk = TarWalk::new(check_signature);
        walk.raw.encrypted = true;
        read_gzip(plain, walk, on_head, sink)
    } else if head.starts_with(&[0x1f, 0x8b]) {
        read_gzip(input, TarWalk::new(check_signature), on_head, sink)
    } else if head.starts_with(crypt::AGE_ARMOR_MAGIC) {
        Err(layout(None, "the bundle is an ASCII-armored age file; hapki reads the binary format: `age -d` it, or encrypt without -a"))
    } else if head.starts_with(crypt::AGE_MAGIC.split_at(8).0) {
        Err(layout(None, "truncated age header"))
    } else {
        Err(layout(None, "not a hapki bundle: neither an age file nor gzip data"))
    }
}

/// The gzip layer ([`super::stored`]'s one encoding) and the tar inside it, to the last byte.
fn read_gzip<R: Read>(
    input: R,
    walk: TarWalk<'_, '_>,
    on_head: &mut HeadCheck<'_>,
    sink: &mut ArtifactSink<'_>,
) -> Result<RawBundle, BundleError> {
    let mut input = BufReader::with_capacity(CHUNK, input);
    let mut header = Vec::with_capacity(STORED_GZIP_HEADER.len());
    (&mut input)
        .take(STORED_GZIP_HEADER.len() as u64)
        .read_to_end(&mut header)
        .map_err(|e| corrupt("reading the bundle", e))?;
    check_gzip_header(&header)?;
    let mut tar = StoredGzReader::new(input);
    let raw = read_tar_with(&mut tar, walk, on_head, sink)?;
    if !raw.complete {
        return Ok(raw);
    }
    // Only zero padding may follow the end-of-archive blocks; reading to the end also checks
    // the stored stream's framing, CRC-32, length and that nothing follows it.
    drain_zero_padding(&mut tar)?;
    if raw.artifacts.is_empty() {
        // No artifact came to call it: the head is the whole bundle, now checked to its end.
        on_head(&raw)?;
    }
    Ok(raw)
}

/// The gzip header must be the stored encoding's; an older hapki's compressed one is named.
fn check_gzip_header(header: &[u8]) -> Result<(), BundleError> {
    if header == STORED_GZIP_HEADER {
        Ok(())
    } else if header.len() < STORED_GZIP_HEADER.len() {
        Err(layout(None, "truncated gzip header"))
    } else if header == format::LEGACY_GZIP_HEADER {
        Err(layout(
            None,
            "this bundle is in the compressed encoding of hapki 0.1.0 and before, which this hapki no longer reads; re-create it with `hapki bundle`",
        ))
    } else {
        Err(layout(
            None,
            "gzip header is not the one hapki writes (no name, no flags, mtime 0, stored blocks, OS unknown): altered, or recompressed by another tool; re-create the bundle with `hapki bundle`",
        ))
    }
}

/// The tar layer alone, over an already decompressed stream. Public for the fuzz target.
pub fn read_tar<R: Read>(
    r: &mut R,
    check_signature: &mut SignatureCheck<'_>,
) -> Result<RawBundle, BundleError> {
    read_tar_with(r, TarWalk::new(check_signature), &mut |_| Ok(true), &mut |_| Ok(()))
}

/// Walks the archive entry by entry (see [`TarWalk`]); `on_head` runs here only before the
/// first artifact.
fn read_tar_with<R: Read>(
    r: &mut R,
    mut walk: TarWalk<'_, '_>,
    on_head: &mut HeadCheck<'_>,
    sink: &mut ArtifactSink<'_>,
) -> Result<RawBundle, BundleError> {
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
            return walk.finish();
        }
        let (name, h) = walk.header(&block)?;
        if let Some(index) = format::artifact_index(&name) {
            if !walk.head_done {
                walk.head_done = true;
                if !on_head(&walk.raw)? {
                    walk.raw.complete = false;
                    return Ok(walk.raw);
                }
            }
            let sha = stream_entry(r, &name, h.size, index, sink)?;
            check_hex(&walk.hashes, &name, &sha)?;
            sink(ArtifactEvent::End)?;
            walk.raw.artifacts.push((name, h.size, sha));
        } else {
            let data = read_small_entry(r, &name, h.size, &mut block)?;
            walk.small_entry(name, h.mode, data)?;
        }
    }
}

/// The reader's state between entries: what has been read, what may come next.
struct TarWalk<'c, 'f> {
    check_signature: &'c mut SignatureCheck<'f>,
    raw: RawBundle,
    /// Until the signature has verified, only the three metadata entries are expected; then
    /// `SHA256SUMS` (now authentic) says what follows.
    expected: Vec<String>,
    next: usize,
    seen: HashSet<String>,
    mtime: Option<u64>,
    signed: bool,
    head_done: bool,
    hashes: Vec<(String, String)>,
}

impl<'c, 'f> TarWalk<'c, 'f> {
    fn new(check_signature: &'c mut SignatureCheck<'f>) -> Self {
        TarWalk {
            check_signature,
            raw: RawBundle {
                signer: Signer { fingerprint: String::new(), principal: String::new() },
                manifest_bytes: Vec::new(),
                sums: Vec::new(),
                signature: Vec::new(),
                files: Vec::new(),
                encrypted: false,
                artifacts: Vec::new(),
                complete: true,
                mtime: 0,
            },
            expected: vec![MANIFEST.into(), SUMS.into(), SIGNATURE.into()],
            next: 0,
            seen: HashSet::new(),
            mtime: None,
            signed: false,
            head_done: false,
            hashes: Vec::new(),
        }
    }

    /// Checks an entry's header before any of its bytes are read: a safe, known, regular,
    /// first-seen name in its place, within its cap, and every header byte hapki's writer makes.
    fn header(&mut self, block: &[u8; BLOCK]) -> Result<(String, Header), BundleError> {
        let h = Header::parse(block)?;
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
        if !entry_names().contains(&name) && format::artifact_index(&name).is_none() {
            return Err(layout(Some(&name), "is not part of the bundle format (unknown entry)"));
        }
        if !self.seen.insert(name.clone()) {
            return Err(layout(Some(&name), "appears twice (duplicate entry)"));
        }
        self.in_order(&name)?;
        if format::artifact_index(&name).is_some() && !self.signed {
            return Err(layout(Some(&name), "comes before the signature"));
        }
        let cap = entry_cap(&name);
        if h.size > cap {
            return Err(over_cap(&name, h.size, cap));
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
        self.raw.mtime = *self.mtime.get_or_insert(h.mtime);
        check_header_bytes(block, &name, h.size, self.raw.mtime)?;
        Ok((name, h))
    }

    fn in_order(&mut self, name: &str) -> Result<(), BundleError> {
        match self.expected.get(self.next) {
            Some(e) if e == name => {
                self.next += 1;
                Ok(())
            }
            Some(e) => {
                Err(layout(Some(name), &format!("is out of order: expected {e} at this position")))
            }
            None => Err(layout(Some(name), "is not listed in SHA256SUMS")),
        }
    }

    /// A metadata or `pki/` entry, read whole.
    fn small_entry(&mut self, name: String, mode: u32, data: Vec<u8>) -> Result<(), BundleError> {
        match name.as_str() {
            MANIFEST => self.raw.manifest_bytes = data,
            SUMS => self.raw.sums = data,
            SIGNATURE => {
                self.raw.signature = data;
                self.raw.signer = (self.check_signature)(&self.raw.sums, &self.raw.signature)?;
                self.signed = true;
                self.after_signature()?;
            }
            _ => {
                check_hash(&self.hashes, &name, &data)?;
                self.raw.files.push((name, mode, data));
            }
        }
        Ok(())
    }

    /// `SHA256SUMS` is authentic: it says which entries follow, and whether the metadata is
    /// held to the PKI-only caps.
    fn after_signature(&mut self) -> Result<(), BundleError> {
        self.hashes = format::parse_sums(&self.raw.sums).map_err(|m| layout(Some(SUMS), &m))?;
        let artifacts = self.hashes.iter().any(|(n, _)| format::artifact_index(n).is_some());
        for (name, len) in [(MANIFEST, self.raw.manifest_bytes.len()), (SUMS, self.raw.sums.len())]
        {
            let cap = format::metadata_cap(name, artifacts);
            if len as u64 > cap {
                return Err(over_cap(name, len as u64, cap));
            }
        }
        check_hash(&self.hashes, MANIFEST, &self.raw.manifest_bytes)?;
        self.expected.extend(self.hashes.iter().skip(1).map(|(n, _)| n.clone()));
        Ok(())
    }

    fn finish(self) -> Result<RawBundle, BundleError> {
        if let Some(missing) = self.expected.get(self.next) {
            return Err(layout(Some(missing), "is missing"));
        }
        Ok(self.raw)
    }
}

fn over_cap(name: &str, size: u64, cap: u64) -> BundleError {
    layout(Some(name), &format!("is {size} bytes, over the {cap}-byte cap"))
}

/// A metadata or PKI entry's bytes and its tar padding: size ≤ cap ≤ 1 MiB, so this cast and
/// allocation are bounded.
fn read_small_entry<R: Read>(
    r: &mut R,
    name: &str,
    size: u64,
    block: &mut [u8; BLOCK],
) -> Result<Vec<u8>, BundleError> {
    let mut data = vec![0u8; size as usize];
    r.read_exact(&mut data).map_err(|e| truncated(name, e))?;
    let pad = (BLOCK - data.len() % BLOCK) % BLOCK;
    r.read_exact(&mut block[..pad]).map_err(|e| truncated(name, e))?;
    check_zero_padding(&block[..pad], name)?;
    Ok(data)
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
/// end-of-archive blocks, at most [`format::END_PADDING_MAX`] bytes of it (GNU tar pads to its
/// 10 KiB record); anything else is a layout error.
fn drain_zero_padding<R: Read>(tar: &mut R) -> Result<(), BundleError> {
    let mut buf = [0u8; 8192];
    let mut padding = 0u64;
    loop {
        let n = tar.read(&mut buf).map_err(|e| corrupt("after the end of the tar archive", e))?;
        if n == 0 {
            return Ok(());
        }
        if buf[..n].iter().any(|&b| b != 0) {
            return Err(layout(None, "data after the end of the tar archive"));
        }
        padding += n as u64;
        if padding > format::END_PADDING_MAX {
            return Err(layout(
                None,
                &format!(
                    "zero padding after the end of the tar archive is over the {}-byte cap",
                    format::END_PADDING_MAX
                ),
            ));
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
