//! Attack: rewrite the tar headers of a signed bundle (owner → 65534/nobody, mtime, type, link
//! name, magic, device numbers, padding). The signature covers the entries' bytes, not their
//! headers, and `tar -xzf` run as root (the README's recipe) creates files owned by whoever a
//! header names. hapki must refuse every header byte its writer would not have made, in PKI-only
//! bundles and in bundles with artifacts, exit 3 naming the entry.

use std::io::Read;
use std::os::unix::fs::MetadataExt;

use crate::bundle::*;

/// One header field rewritten: where, the new bytes, and the word the refusal must contain.
struct Field {
    at: usize,
    bytes: &'static [u8],
    expect: &'static str,
}

const FIELDS: &[Field] = &[
    Field { at: 108, bytes: b"0177776\0", expect: "uid" },
    Field { at: 116, bytes: b"0177776\0", expect: "gid" },
    Field { at: 265, bytes: b"nobody\0", expect: "uname" },
    Field { at: 297, bytes: b"nogroup\0", expect: "gname" },
    Field { at: 136, bytes: b"00000000001\0", expect: "mtime" },
    // S_IFREG in the mode field, as some tars write it: the permission bits are unchanged.
    Field { at: 100, bytes: b"0100600\0", expect: "mode" },
    Field { at: 156, bytes: b"\0", expect: "type" },
    Field { at: 157, bytes: b"pki/ca.crt", expect: "link name" },
    Field { at: 257, bytes: b"ustar  \0", expect: "magic" },
    Field { at: 329, bytes: b"0000001\0", expect: "device major" },
    Field { at: 337, bytes: b"0000001\0", expect: "device minor" },
    Field { at: 500, bytes: b"x", expect: "padding" },
];

/// (name, offset) of every entry header of a tar, walking sizes as any tar reader does.
fn headers(tar: &[u8]) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 512 <= tar.len() && tar[at..at + 512].iter().any(|&b| b != 0) {
        let h = &tar[at..at + 512];
        let end = h.iter().position(|&b| b == 0).unwrap();
        let name = String::from_utf8(h[..end].to_vec()).unwrap();
        let size = entry_size(tar, at);
        out.push((name, at));
        at += 512 + size.div_ceil(512) * 512;
    }
    out
}

fn entry_size(tar: &[u8], at: usize) -> usize {
    let text = String::from_utf8(tar[at + 124..at + 135].to_vec()).unwrap();
    usize::from_str_radix(text.trim_matches(['\0', ' ']), 8).unwrap()
}

/// Rewrites the checksum of the header at `at` as tar(1) computes it (checksum field as blanks),
/// spelt as the header spelt it (`%06o\0 ` as GNU tar, or `%07o\0`), as a careful attacker would.
fn fix_checksum(tar: &mut [u8], at: usize) {
    let h = &mut tar[at..at + 512];
    let gnu = h[155] == b' ';
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let text = if gnu { format!("{sum:06o}\0 ") } else { format!("{sum:07o}\0") };
    h[148..156].copy_from_slice(text.as_bytes());
}

fn set(tar: &mut [u8], at: usize, f: &Field) {
    tar[at + f.at..at + f.at + f.bytes.len()].copy_from_slice(f.bytes);
    fix_checksum(tar, at);
}

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b).read_to_end(&mut out).unwrap();
    out
}

fn verify_bytes(fx: &Fixture, name: &str, bytes: &[u8]) -> std::process::Output {
    let p = fx.path(name);
    std::fs::write(&p, bytes).unwrap();
    fx.verify_cmd(&p).output().unwrap()
}

fn assert_refused(fx: &Fixture, label: &str, bytes: &[u8], entry: &str, field: &str) {
    let out = verify_bytes(fx, "hostile.bundle", bytes);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{label}: accepted or wrong exit: {err}");
    assert!(err.contains(&format!("{entry:?}")), "{label}: entry {entry} not named: {err}");
    assert!(err.contains(field), "{label}: field {field} not named: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{label}: not one line: {err}");
}

/// Every field of `entry`'s header, one at a time, then the attack (every header to
/// 65534/nobody), then one mtime changed consistently on all headers.
fn each_field_is_refused(fx: &Fixture, tar: &[u8], encode: fn(&[u8]) -> Vec<u8>, entry: &str) {
    // Control: the same tar re-encoded verifies, so each refusal below is the header check's.
    let out = verify_bytes(fx, "control.bundle", &encode(tar));
    assert!(out.status.success(), "control: {}", String::from_utf8_lossy(&out.stderr));
    let hs = headers(tar);
    let at = hs.iter().find(|(n, _)| n == entry).unwrap().1;
    for f in FIELDS {
        let mut t = tar.to_vec();
        set(&mut t, at, f);
        assert_refused(fx, &format!("{entry} {}", f.expect), &encode(&t), entry, f.expect);
    }
    // The same checksum value in another valid spelling: only the checksum bytes differ.
    let mut t = tar.to_vec();
    let field = String::from_utf8(t[at + 148..at + 156].to_vec()).unwrap();
    let v = u32::from_str_radix(field.trim_matches(['\0', ' ']), 8).unwrap();
    let other =
        if field == format!("{v:07o}\0") { format!("{v:06o}\0 ") } else { format!("{v:07o}\0") };
    t[at + 148..at + 156].copy_from_slice(other.as_bytes());
    assert_refused(fx, "checksum spelling", &encode(&t), entry, "checksum");
    // Non-zero bytes in the tar padding after an entry's data (the signature covers the data).
    let (name, next) = hs
        .windows(2)
        .find(|w| entry_size(tar, w[0].1) % 512 != 0)
        .map(|w| (w[0].0.clone(), w[1].1))
        .unwrap();
    let mut t = tar.to_vec();
    t[next - 1] = b'x';
    assert_refused(fx, "data padding", &encode(&t), &name, "padding");
    // The attack: every header rewritten to 65534/nobody.
    let mut all = tar.to_vec();
    for (_, at) in &hs {
        for f in &FIELDS[..4] {
            set(&mut all, *at, f);
        }
    }
    assert_refused(fx, "all nobody", &encode(&all), "bundle.json", "uid");
    // One mtime on every header, but not bundle.json's created_at.
    let mut all = tar.to_vec();
    for (_, at) in &hs {
        set(&mut all, *at, &FIELDS[4]);
    }
    assert_refused(fx, "consistent mtime", &encode(&all), "bundle.json", "created_at");
}

#[test]
fn rewritten_tar_headers_are_refused_in_a_pki_only_bundle() {
    let fx = Fixture::new("ec");
    let raw = std::fs::read(fx.plaintext("genuine.tgz")).unwrap();
    let tar = gunzip(&raw);
    assert_eq!(gzip(&tar), raw, "a PKI-only bundle is in the one stored encoding too");
    each_field_is_refused(&fx, &tar, gzip, "pki/ca.key");

    // The attack is real: stock tar as root gives the rewritten owner to the extracted files.
    let mut all = tar.clone();
    for (_, at) in headers(&tar) {
        for f in &FIELDS[..4] {
            set(&mut all, at, f);
        }
    }
    let x = tempfile::tempdir().unwrap();
    std::fs::write(x.path().join("b.tgz"), gzip(&all)).unwrap();
    if unsafe { libc::geteuid() } == 0 {
        sh("tar -xzf b.tgz", x.path());
        let uid = std::fs::metadata(x.path().join("pki/ca.key")).unwrap().uid();
        assert_eq!(uid, 65534, "stock tar did not honour the rewritten owner: no attack to refuse");
    }
}

#[test]
fn rewritten_tar_headers_are_refused_in_a_bundle_with_artifacts() {
    let fx = Fixture::new("ec");
    let d = fx.dir.path();
    let mut payload = b"#!/bin/sh\necho artifact\n".to_vec();
    payload.resize(70_000, b'#');
    std::fs::write(d.join("tool"), &payload).unwrap();
    std::fs::write(
        d.join("artifacts.toml"),
        "[[artifacts]]\nsource = \"tool\"\ndest = \"/opt/hapki-test/tool\"\n",
    )
    .unwrap();
    let spec = d.join("artifacts.toml");
    fx.bundle("art.bundle", &["--artifacts", spec.to_str().unwrap(), "--insecure-plaintext"])
        .success();
    let raw = std::fs::read(fx.path("art.bundle")).unwrap();
    assert_eq!(raw[..10], [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff], "not the stored encoding");
    let tar = gunzip(&raw);
    assert_eq!(gzip(&tar), raw, "the test's stored encoder must be hapki's encoding");
    each_field_is_refused(&fx, &tar, gzip, "pki/ca.key");
    each_field_is_refused(&fx, &tar, gzip, "artifacts/0000");
}
