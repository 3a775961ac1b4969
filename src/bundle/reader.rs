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

use super::crypt::{self, Identities};
use super::format::{self, entry_cap, entry_mode, entry_names, MANIFEST, SIGNATURE, SUMS};
use super::sign::Signer;
use super::BundleError;
use crate::pki::fingerprint::sha256_hex;

/// What a structurally valid, signature-checked bundle holds, before `bundle.json` is read.
#[derive(Debug, Clone)]
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
    let mut input = Capped::new(input, format::INPUT_MAX, "the bundle file");
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
        let mut raw = read_gzip(plain, check_signature)?;
        raw.encrypted = true;
        Ok(raw)
    } else if head.starts_with(&[0x1f, 0x8b]) {
        read_gzip(input, check_signature)
    } else if head.starts_with(crypt::AGE_ARMOR_MAGIC) {
        Err(layout(None, "the bundle is an ASCII-armored age file; hapki reads the binary format: `age -d` it, or encrypt without -a"))
    } else if head.starts_with(crypt::AGE_MAGIC.split_at(8).0) {
        Err(layout(None, "truncated age header"))
    } else {
        Err(layout(None, "not a hapki bundle: neither an age file nor gzip data"))
    }
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
    let raw = read_tar(&mut tar, check_signature)?;
    // After the end-of-archive blocks only zero padding may follow (GNU tar pads to 10 KiB).
    // Reading to the end also makes flate2 check the gzip trailer (CRC-32 and length).
    let mut buf = [0u8; 8192];
    loop {
        let n = tar.read(&mut buf).map_err(|e| corrupt("after the end of the tar archive", e))?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|&b| b != 0) {
            return Err(layout(None, "data after the end of the tar archive"));
        }
    }
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
    let expected = entry_names();
    let mut seen: HashSet<String> = HashSet::new();
    let mut next = 0usize;
    let (mut manifest, mut sums, mut signature) = (Vec::new(), Vec::new(), Vec::new());
    let mut signer = None;
    let mut hashes: Vec<(String, String)> = Vec::new();
    let mut files = Vec::new();
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
        if !expected.contains(&name) {
            return Err(layout(Some(&name), "is not part of the bundle format (unknown entry)"));
        }
        if !seen.insert(name.clone()) {
            return Err(layout(Some(&name), "appears twice (duplicate entry)"));
        }
        if expected[next] != name {
            return Err(layout(
                Some(&name),
                &format!("is out of order: expected {} at this position", expected[next]),
            ));
        }
        next += 1;
        let cap = entry_cap(&name);
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
        // size ≤ cap ≤ 64 KiB, so this cast and allocation are bounded.
        let mut data = vec![0u8; h.size as usize];
        r.read_exact(&mut data).map_err(|e| truncated(&name, e))?;
        let pad = (BLOCK - data.len() % BLOCK) % BLOCK;
        r.read_exact(&mut block[..pad]).map_err(|e| truncated(&name, e))?;

        match name.as_str() {
            MANIFEST => manifest = data,
            SUMS => sums = data,
            SIGNATURE => {
                signature = data;
                signer = Some(check_signature(&sums, &signature)?);
                hashes = format::parse_sums(&sums).map_err(|m| layout(Some(SUMS), &m))?;
                check_hash(&hashes, MANIFEST, &manifest)?;
            }
            _ => {
                check_hash(&hashes, &name, &data)?;
                files.push((name, h.mode, data));
            }
        }
    }
    if let Some(missing) = expected.get(next) {
        return Err(layout(Some(missing), "is missing"));
    }
    let signer = signer.ok_or_else(|| layout(Some(SIGNATURE), "is missing"))?;
    Ok(RawBundle { signer, manifest_bytes: manifest, sums, signature, files, encrypted: false })
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
        Ok(Header { name, mode: (mode & 0o7777) as u32, size, typeflag: b[156] })
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
struct Capped<R> {
    inner: R,
    left: u64,
    what: &'static str,
    cap: u64,
}

impl<R> Capped<R> {
    fn new(inner: R, cap: u64, what: &'static str) -> Self {
        Capped { inner, left: cap, what, cap }
    }
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
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
