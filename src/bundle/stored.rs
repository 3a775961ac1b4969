//! The gzip encoding of every bundle: one gzip member of *stored* deflate blocks (no
//! compression), written and parsed here by hand.
//!
//! Why stored blocks: a bundle must have exactly one encoding, so that one flipped bit anywhere
//! in a plaintext bundle is fatal (the signature covers the entries, gzip's CRC the tar, but
//! nothing covers the gzip framing itself). With compressed deflate the only way to prove that
//! is to recompress and compare, which ties every bundle to one deflate implementation and
//! version (a flate2 or miniz_oxide release that encodes differently would make every existing
//! bundle unreadable) and costs a full deflate of every GiB of artifacts on every `verify` and
//! `push`. Stored blocks are checkable while streaming at memcpy + CRC-32 speed, independent
//! of any deflate implementation; and compression buys nothing that matters: PKI-only bundles
//! are ~20 KiB, image archives and CNI tarballs are compressed already (kubeadm's binaries are
//! the only loss, ~2.5×). Stock `gzip -d` and `tar -xz` read it as any gzip file.
//!
//! The one canonical layout: header [`STORED_GZIP_HEADER`]; blocks of exactly
//! [`BLOCK_LEN`] bytes with the header byte `0x00` (not final, stored, zero padding bits),
//! then one final block (`0x01`) of fewer than [`BLOCK_LEN`] bytes (possibly none); the trailer's
//! CRC-32 and length; then nothing. Any other bit anywhere is a rejected bundle.
//!
//! hapki 0.1.0 and before wrote bundles without artifacts with flate2's best compression; the
//! reader names that encoding ([`super::format::LEGACY_GZIP_HEADER`]) and says to re-create the
//! bundle with `hapki bundle`.

use std::io::{self, Read, Write};

/// magic, deflate, no flags, mtime 0, XFL 0 (no compression level claimed), OS 255 (unknown).
pub(crate) const STORED_GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

/// The largest stored block deflate allows.
pub(crate) const BLOCK_LEN: usize = 65535;

/// Writes the canonical stored-block gzip member; [`StoredGzWriter::finish`] ends it.
pub(crate) struct StoredGzWriter<W: Write> {
    inner: W,
    buf: Vec<u8>,
    crc: flate2::Crc,
}

impl<W: Write> StoredGzWriter<W> {
    pub(crate) fn new(mut inner: W) -> io::Result<Self> {
        inner.write_all(&STORED_GZIP_HEADER)?;
        Ok(StoredGzWriter { inner, buf: Vec::with_capacity(BLOCK_LEN), crc: flate2::Crc::new() })
    }

    fn block(&mut self, last: bool) -> io::Result<()> {
        let len = self.buf.len() as u16;
        let mut h = [0u8; 5];
        h[0] = u8::from(last);
        h[1..3].copy_from_slice(&len.to_le_bytes());
        h[3..5].copy_from_slice(&(!len).to_le_bytes());
        self.inner.write_all(&h)?;
        self.inner.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }

    /// Writes the final block and the trailer, and returns the inner writer.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        if self.buf.len() == BLOCK_LEN {
            self.block(false)?;
        }
        self.block(true)?;
        let mut t = [0u8; 8];
        t[..4].copy_from_slice(&self.crc.sum().to_le_bytes());
        t[4..].copy_from_slice(&self.crc.amount().to_le_bytes());
        self.inner.write_all(&t)?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for StoredGzWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut rest = data;
        while !rest.is_empty() {
            // A full block is only written once more data arrives, so the final block is always
            // shorter than a full one: the layout has exactly one encoding of any input.
            if self.buf.len() == BLOCK_LEN {
                self.block(false)?;
            }
            let n = rest.len().min(BLOCK_LEN - self.buf.len());
            self.buf.extend_from_slice(&rest[..n]);
            self.crc.update(&rest[..n]);
            rest = &rest[n..];
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Reads a stored-block gzip member (positioned after its 10-byte header, which the caller
/// matched), refusing anything but the canonical layout. Errors are `InvalidData` with a message
/// for the operator.
pub(crate) struct StoredGzReader<R: Read> {
    inner: R,
    /// Bytes left in the current block.
    left: usize,
    last: bool,
    done: bool,
    crc: flate2::Crc,
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

impl<R: Read> StoredGzReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        StoredGzReader { inner, left: 0, last: false, done: false, crc: flate2::Crc::new() }
    }

    fn read_exact_or(&mut self, buf: &mut [u8], what: &str) -> io::Result<()> {
        self.inner.read_exact(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                bad(&format!("truncated gzip stream: it ends inside {what}"))
            } else {
                e
            }
        })
    }

    /// Reads the next block header; `Ok(false)` once the final block is used up and the
    /// trailer checked.
    fn next_block(&mut self) -> io::Result<bool> {
        if self.last {
            let mut t = [0u8; 8];
            self.read_exact_or(&mut t, "the gzip trailer")?;
            if t[..4] != self.crc.sum().to_le_bytes() || t[4..] != self.crc.amount().to_le_bytes() {
                return Err(bad("gzip trailer CRC-32 or length mismatch (corrupt archive)"));
            }
            let mut extra = Vec::with_capacity(2);
            (&mut self.inner).take(2).read_to_end(&mut extra)?;
            if extra == [0x1f, 0x8b] {
                return Err(bad("a second gzip member after the gzip stream"));
            }
            if !extra.is_empty() {
                return Err(bad("trailing data after the gzip stream"));
            }
            self.done = true;
            return Ok(false);
        }
        let mut h = [0u8; 5];
        self.read_exact_or(&mut h, "a deflate block header")?;
        let len = u16::from_le_bytes([h[1], h[2]]);
        let nlen = u16::from_le_bytes([h[3], h[4]]);
        if h[0] > 1 || nlen != !len {
            return Err(bad("the gzip stream is not hapki's stored-block encoding (altered, or recompressed by another tool)"));
        }
        self.last = h[0] == 1;
        let full = len as usize == BLOCK_LEN;
        if self.last == full {
            return Err(bad("the gzip stream's block sizes are not hapki's canonical layout (altered, or recompressed by another tool)"));
        }
        self.left = len as usize;
        Ok(true)
    }
}

impl<R: Read> Read for StoredGzReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.left == 0 {
            if self.done || !self.next_block()? {
                return Ok(0);
            }
        }
        let want = buf.len().min(self.left);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(bad("truncated gzip stream: it ends inside a stored block"));
        }
        self.crc.update(&buf[..n]);
        self.left -= n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(data: &[u8]) -> Vec<u8> {
        let mut w = StoredGzWriter::new(Vec::new()).unwrap();
        w.write_all(data).unwrap();
        w.finish().unwrap()
    }

    fn dec(gz: &[u8]) -> io::Result<Vec<u8>> {
        assert_eq!(gz[..10], STORED_GZIP_HEADER);
        let mut out = Vec::new();
        StoredGzReader::new(&gz[10..]).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn gunzip_reads_it_and_every_single_bit_flip_is_refused() {
        for len in [0usize, 1, 512, BLOCK_LEN - 1, BLOCK_LEN, BLOCK_LEN + 1, 3 * BLOCK_LEN + 7] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let gz = enc(&data);
            assert_eq!(dec(&gz).unwrap(), data, "len {len}");
            // Stock gzip agrees (flate2 stands in for gunzip here; the testbed tests run tar -xz).
            let mut via = Vec::new();
            flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut via).unwrap();
            assert_eq!(via, data);
            // Every byte of small streams; the framing bytes of large ones (data bytes there are
            // covered by the CRC like any other).
            let framing = |i: usize| i < 32 || i + 32 > gz.len() || (i - 10) % (BLOCK_LEN + 5) < 5;
            {
                for i in (10..gz.len()).filter(|&i| len <= 600 || framing(i)) {
                    for bit in 0..8 {
                        let mut g = gz.clone();
                        g[i] ^= 1 << bit;
                        assert!(dec(&g).is_err(), "len {len}: flip at byte {i} bit {bit} accepted");
                    }
                }
            }
            let mut longer = gz.clone();
            longer.push(0);
            assert!(dec(&longer).is_err());
            assert!(dec(&gz[..gz.len() - 1]).is_err());
        }
    }
}
