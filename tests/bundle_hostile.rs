//! Hostile archive layouts. Each archive is built here, header by header, around a genuine
//! bundle's entries with a SHA256SUMS correctly re-signed by `ssh-keygen -Y sign`, so the
//! signature and hashes would pass: only hapki's layout checks can catch them. Each must exit 3
//! with a message naming the problem, and verify must write nothing.

#[path = "support/bundle.rs"]
mod bundle;

use bundle::*;

struct Case {
    name: &'static str,
    expect: &'static str,
    mutate: fn(&mut Vec<Raw>),
}

fn find(v: &[Raw], name: &str) -> usize {
    v.iter().position(|r| r.name == name.as_bytes()).unwrap()
}

fn big_pem(len: usize) -> Vec<u8> {
    let mut v = b"-----BEGIN CERTIFICATE-----\n".to_vec();
    v.resize(len, b'A');
    v
}

const CASES: &[Case] = &[
    Case { name: "dotdot", expect: "'..'", mutate: |v| v.push(Raw::file("pki/../ca.key", b"x")) },
    Case {
        name: "dotdot-replacing",
        expect: "'..'",
        mutate: |v| {
            let i = find(v, "pki/ca.key");
            v[i].name = b"pki/etcd/../ca.key".to_vec();
        },
    },
    Case {
        name: "absolute",
        expect: "absolute",
        mutate: |v| {
            let i = find(v, "pki/ca.crt");
            v[i].name = b"/etc/kubernetes/pki/ca.crt".to_vec();
        },
    },
    Case {
        name: "nul",
        expect: "NUL",
        mutate: |v| {
            let i = find(v, "pki/ca.crt");
            v[i].name = b"pki/ca.crt\0.evil".to_vec();
        },
    },
    Case {
        name: "symlink",
        expect: "symbolic link",
        mutate: |v| {
            let i = find(v, "pki/ca.key");
            v[i] =
                Raw { typeflag: b'2', link: b"/etc/shadow".to_vec(), data: vec![], ..v[i].clone() };
        },
    },
    Case {
        name: "hardlink",
        expect: "hard link",
        mutate: |v| {
            let i = find(v, "pki/ca.key");
            v[i] =
                Raw { typeflag: b'1', link: b"pki/ca.crt".to_vec(), data: vec![], ..v[i].clone() };
        },
    },
    Case {
        name: "chardev",
        expect: "character device",
        mutate: |v| {
            let i = find(v, "pki/sa.pub");
            v[i] = Raw { typeflag: b'3', data: vec![], ..v[i].clone() };
        },
    },
    Case {
        name: "blockdev",
        expect: "block device",
        mutate: |v| {
            let i = find(v, "pki/sa.pub");
            v[i] = Raw { typeflag: b'4', data: vec![], ..v[i].clone() };
        },
    },
    Case {
        name: "fifo",
        expect: "FIFO",
        mutate: |v| {
            let i = find(v, "pki/sa.pub");
            v[i] = Raw { typeflag: b'6', data: vec![], ..v[i].clone() };
        },
    },
    Case {
        name: "directory",
        expect: "directory",
        mutate: |v| {
            let i = find(v, "pki/ca.crt");
            v.insert(i, Raw { typeflag: b'5', mode: 0o755, ..Raw::file("pki/", b"") });
        },
    },
    Case {
        name: "pax",
        expect: "PAX",
        mutate: |v| {
            let i = find(v, "pki/ca.crt");
            v.insert(i, Raw { typeflag: b'x', ..Raw::file("pki/ca.crt", b"30 path=pki/ca.key\n") });
        },
    },
    Case {
        name: "gnu-longname",
        expect: "GNU long name",
        mutate: |v| {
            let i = find(v, "pki/ca.crt");
            v.insert(i, Raw { typeflag: b'L', ..Raw::file("././@LongLink", b"pki/ca.crt\0") });
        },
    },
    Case {
        name: "duplicate",
        expect: "twice",
        mutate: |v| {
            let i = find(v, "pki/ca.crt");
            let dup = v[i].clone();
            v.insert(i + 1, dup);
        },
    },
    Case {
        name: "duplicate-at-end",
        expect: "twice",
        mutate: |v| {
            let i = find(v, "pki/ca.key");
            let dup = v[i].clone();
            v.push(dup);
        },
    },
    Case {
        name: "unknown",
        expect: "unknown entry",
        mutate: |v| {
            v.push(Raw::file("pki/apiserver.key", b"-----BEGIN RSA PRIVATE KEY-----\n"));
        },
    },
    Case {
        name: "unknown-top-level",
        expect: "unknown entry",
        mutate: |v| {
            v.insert(0, Raw::file("README", b"hi"));
        },
    },
    Case {
        name: "missing",
        expect: "missing",
        mutate: |v| {
            let i = find(v, "pki/etcd/ca.key");
            v.remove(i);
        },
    },
    Case {
        name: "missing-signature",
        expect: "out of order",
        mutate: |v| {
            let i = find(v, "SHA256SUMS.sig");
            v.remove(i);
        },
    },
    Case {
        name: "out-of-order",
        expect: "out of order",
        mutate: |v| {
            let (a, b) = (find(v, "pki/ca.crt"), find(v, "pki/ca.key"));
            v.swap(a, b);
        },
    },
    Case {
        name: "manifest-last",
        expect: "out of order",
        mutate: |v| {
            let m = v.remove(0);
            v.push(m);
        },
    },
    Case {
        name: "oversized-pki-file",
        expect: "cap",
        mutate: |v| {
            let i = find(v, "pki/ca.crt");
            v[i].data = big_pem(64 * 1024 + 1);
        },
    },
    Case {
        name: "oversized-signature",
        expect: "cap",
        mutate: |v| {
            let i = find(v, "SHA256SUMS.sig");
            v[i].data = big_pem(8 * 1024 + 1);
        },
    },
    Case {
        name: "oversized-manifest",
        expect: "cap",
        mutate: |v| {
            v[0].data.resize(64 * 1024 + 1, b' ');
        },
    },
    Case {
        name: "wrong-mode",
        expect: "mode",
        mutate: |v| {
            let i = find(v, "pki/ca.key");
            v[i].mode = 0o644;
        },
    },
];

/// The raw entries of a genuine bundle, with SHA256SUMS re-signed by ssh-keygen.
fn genuine(fx: &Fixture) -> Vec<Raw> {
    let b = fx.plaintext("genuine.tgz");
    let mtime = bundle_mtime(&b);
    let mut v: Vec<Raw> =
        fx.entries(&b).iter().map(|(n, d)| Raw { mtime, ..Raw::file(n, d) }).collect();
    let sums = sums_for(&v);
    assert_eq!(sums, v[1].data, "the test's SHA256SUMS must be hapki's");
    v[2].data = fx.ssh_sign(&sums, "hapki-bundle");
    v
}

fn listing(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = walkdir::WalkDir::new(dir)
        .into_iter()
        .map(|e| e.unwrap().path().display().to_string())
        .collect();
    v.sort();
    v
}

fn assert_rejected(fx: &Fixture, name: &str, bytes: &[u8], expect: &str) {
    let p = fx.path(&format!("{name}.tgz"));
    std::fs::write(&p, bytes).unwrap();
    let before = listing(fx.dir.path());
    let out = fx.verify_cmd(&p).current_dir(fx.dir.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{name}: {stderr}");
    // `expect` may list alternatives, `a|b`: where a cut lands in random data decides which
    // layer (tar, deflate) notices first.
    assert!(
        !expect.is_empty() && expect.split('|').any(|e| stderr.contains(e)),
        "{name}: expected {expect:?} in {stderr}"
    );
    assert!(out.stdout.is_empty(), "{name}: printed {:?}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(listing(fx.dir.path()), before, "{name}: verify wrote something");
}

#[test]
fn each_hostile_layout_is_rejected_by_name() {
    let fx = Fixture::new("ec");
    let base = genuine(&fx);
    // Control: the re-signed, re-built genuine archive verifies, so every rejection below is
    // the layout's doing.
    let p = fx.path("control.tgz");
    std::fs::write(&p, gzip(&raw_tar(&base))).unwrap();
    fx.verify(&p).success();
    for case in CASES {
        let mut v = base.clone();
        (case.mutate)(&mut v);
        assert_rejected(&fx, case.name, &gzip(&raw_tar(&v)), case.expect);
    }
}

#[test]
fn broken_framing_is_rejected() {
    let fx = Fixture::new("ec");
    let base = genuine(&fx);
    let tar = raw_tar(&base);
    let gz = gzip(&tar);

    assert_rejected(&fx, "truncated-gzip", &gz[..gz.len() - 10], "truncated gzip stream");
    assert_rejected(&fx, "truncated-gzip-mid", &gz[..gz.len() / 2], "truncated gzip stream");
    // The same tar in another gzip encoding: hapki 0.1.0's compressed one is named, any other
    // (stock `gzip -9n`: OS 3) is not hapki's.
    assert_rejected(&fx, "old-encoding", &legacy_gzip(&tar), "encoding of hapki 0.1.0");
    std::fs::write(fx.path("t.tar"), &tar).unwrap();
    let stock = sh("gzip -9 -n -c t.tar", fx.dir.path()).stdout;
    assert_rejected(&fx, "stock-gzip", &stock, "gzip header is not the one hapki writes");
    // A tar that simply stops after its last entry, without the end-of-archive blocks.
    assert_rejected(&fx, "truncated-tar", &gzip(&tar[..tar.len() - 1024]), "truncated tar");
    assert_rejected(&fx, "truncated-entry", &gzip(&tar[..tar.len() - 1400]), "truncated");
    let mut trailing = gz.clone();
    trailing.extend_from_slice(b"garbage");
    assert_rejected(&fx, "trailing-garbage", &trailing, "trailing data");
    let mut second = gz.clone();
    second.extend_from_slice(&gzip(b"second member"));
    assert_rejected(&fx, "second-member", &second, "second gzip member");
    let mut after_tar = tar.clone();
    after_tar.extend_from_slice(b"smuggled");
    assert_rejected(&fx, "after-tar", &gzip(&after_tar), "after the end of the tar archive");
    // Zero padding after the end blocks (GNU tar's 10 KiB records) is fine.
    let mut padded = tar.clone();
    padded.resize(padded.len().div_ceil(10240) * 10240, 0);
    let p = fx.path("padded.tgz");
    std::fs::write(&p, gzip(&padded)).unwrap();
    fx.verify(&p).success();
    assert_rejected(&fx, "not-a-bundle", b"hello world", "not a hapki bundle");
    let mut armored = b"-----BEGIN AGE ENCRYPTED FILE-----\n".to_vec();
    armored.extend_from_slice(&[b'A'; 100]);
    assert_rejected(&fx, "armored", &armored, "armored");
}

#[test]
fn decompression_bombs_are_rejected() {
    let fx = Fixture::new("ec");
    // 64 MiB of zeros: an empty archive, rejected before the padding is even read.
    assert_rejected(&fx, "zeros", &gzip(&vec![0u8; 64 << 20]), "missing");
    // A genuine archive followed by 64 MiB of zero "padding": stopped at the decompression cap.
    let mut padded = raw_tar(&genuine(&fx));
    padded.resize(64 << 20, 0);
    assert_rejected(&fx, "zero-bomb", &gzip(&padded), "cap");
    // A manifest entry claiming 1 GB.
    let mut h = tar::Header::new_ustar();
    h.set_path("bundle.json").unwrap();
    h.set_mode(0o644);
    h.set_size(1 << 30);
    h.set_cksum();
    let mut t = h.as_bytes().to_vec();
    t.resize(8 << 20, b'{');
    assert_rejected(&fx, "size-bomb", &gzip(&t), "cap");
}

#[test]
fn a_regenerated_manifest_that_lies_is_rejected() {
    // bundle.json is re-signed, so its hash matches; its content disagrees with the PEM files.
    let fx = Fixture::new("ec");
    let mut v = genuine(&fx);
    let mut m: serde_json::Value = serde_json::from_slice(&v[0].data).unwrap();
    m["files"][0]["spki_sha256"] = serde_json::Value::String("00".repeat(32));
    v[0].data = serde_json::to_vec_pretty(&m).unwrap();
    v[1].data = sums_for(&v);
    v[2].data = fx.ssh_sign(&v[1].data, "hapki-bundle");
    assert_rejected(&fx, "lying-manifest", &gzip(&raw_tar(&v)), "spki_sha256 of ca.crt");
}
