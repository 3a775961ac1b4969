//! Shared fixtures for the bundle tests: PKIs made by openssl, signing keys made by ssh-keygen,
//! age keys made by age-keygen, and a raw tar writer for hostile archives.
//! Included with `#[path = "support/bundle.rs"] mod bundle;`.
#![allow(dead_code)]

#[path = "cli.rs"]
mod cli;

use std::path::{Path, PathBuf};
use std::process::Command as Std;

use assert_cmd::Command;
use sha2::{Digest, Sha256};

#[allow(unused_imports)] // each test uses its own part
pub use cli::{hapki, SHARED};

/// Runs a stock tool, panicking with its stderr if it fails.
pub fn sh(cmd: &str, dir: &Path) -> std::process::Output {
    let out = Std::new("sh").arg("-c").arg(cmd).current_dir(dir).output().unwrap();
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A kubeadm-shaped PKI under `dir/pki` made by openssl: `alg` is "rsa" or "ec".
pub fn make_pki(dir: &Path, alg: &str) -> PathBuf {
    let pki = dir.join("pki");
    std::fs::create_dir_all(pki.join("etcd")).unwrap();
    let genkey = |out: &str| match alg {
        "rsa" => format!("openssl genrsa -traditional -out {out} 2048 2>/dev/null"),
        _ => format!("openssl ecparam -name prime256v1 -genkey -noout -out {out}"),
    };
    for (base, cn) in
        [("ca", "kubernetes"), ("front-proxy-ca", "front-proxy-ca"), ("etcd/ca", "etcd-ca")]
    {
        sh(&genkey(&format!("{base}.key")), &pki);
        sh(
            &format!(
                "openssl req -x509 -new -key {base}.key -subj /CN={cn} -days 3650 \
                 -addext basicConstraints=critical,CA:TRUE \
                 -addext keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign \
                 -out {base}.crt 2>/dev/null"
            ),
            &pki,
        );
    }
    sh(&genkey("sa.key"), &pki);
    sh("openssl pkey -in sa.key -pubout -out sa.pub", &pki);
    pki
}

/// Test workspace: a PKI, an Ed25519 signer with its allowed_signers file, an age identity.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub pki: PathBuf,
    pub signer: PathBuf,
    pub trust: PathBuf,
    pub age_key: PathBuf,
    pub age_recipient: String,
}

impl Fixture {
    pub fn new(alg: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let pki = make_pki(dir.path(), alg);
        let d = dir.path();
        sh("ssh-keygen -q -t ed25519 -N '' -C signer -f signer", d);
        sh("echo \"ops@example.com namespaces=\\\"hapki-bundle\\\" $(cut -d' ' -f1,2 signer.pub)\" > allowed_signers", d);
        sh("age-keygen -o age.key 2>/dev/null", d);
        let rec = sh("age-keygen -y age.key", d);
        Fixture {
            pki,
            signer: d.join("signer"),
            trust: d.join("allowed_signers"),
            age_key: d.join("age.key"),
            age_recipient: String::from_utf8(rec.stdout).unwrap().trim().to_string(),
            dir,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `hapki bundle` with this fixture's PKI and signer plus `extra` arguments.
    pub fn bundle(&self, out: &str, extra: &[&str]) -> assert_cmd::assert::Assert {
        hapki()
            .arg("bundle")
            .arg("--pki-dir")
            .arg(&self.pki)
            .arg("--sign-key")
            .arg(&self.signer)
            .arg("--out")
            .arg(self.path(out))
            .args(extra)
            .assert()
    }

    pub fn plaintext(&self, out: &str) -> PathBuf {
        self.bundle(out, &["--insecure-plaintext"]).success();
        self.path(out)
    }

    pub fn encrypted(&self, out: &str) -> PathBuf {
        self.bundle(out, &["--recipient", &self.age_recipient.clone()]).success();
        self.path(out)
    }

    /// `hapki verify` of `bundle` against this fixture's trust and age key.
    pub fn verify(&self, bundle: &Path) -> assert_cmd::assert::Assert {
        self.verify_cmd(bundle).assert()
    }

    pub fn verify_cmd(&self, bundle: &Path) -> Command {
        let mut c = hapki();
        c.arg("verify")
            .arg(bundle)
            .arg("--trust")
            .arg(&self.trust)
            .arg("--decrypt-key")
            .arg(&self.age_key);
        c
    }

    /// The entries of a plaintext bundle, as (name, bytes), read with the stock tar.
    pub fn entries(&self, bundle: &Path) -> Vec<(String, Vec<u8>)> {
        let x = tempfile::tempdir().unwrap();
        sh(&format!("tar -xzf {}", bundle.display()), x.path());
        let mut names =
            vec!["bundle.json".to_string(), "SHA256SUMS".into(), "SHA256SUMS.sig".into()];
        names.extend(SHARED.iter().map(|n| format!("pki/{n}")));
        names.iter().map(|n| (n.clone(), std::fs::read(x.path().join(n)).unwrap())).collect()
    }

    /// Signs `sums` with the fixture's signer via `ssh-keygen -Y sign -n namespace`.
    pub fn ssh_sign(&self, sums: &[u8], namespace: &str) -> Vec<u8> {
        let d = tempfile::tempdir_in(self.dir.path()).unwrap();
        std::fs::write(d.path().join("SHA256SUMS"), sums).unwrap();
        sh(
            &format!(
                "ssh-keygen -q -Y sign -f {} -n {namespace} SHA256SUMS",
                self.signer.display()
            ),
            d.path(),
        );
        std::fs::read(d.path().join("SHA256SUMS.sig")).unwrap()
    }
}

/// One raw tar entry for hostile archives.
#[derive(Clone)]
pub struct Raw {
    pub name: Vec<u8>,
    pub typeflag: u8,
    pub mode: u32,
    pub link: Vec<u8>,
    pub data: Vec<u8>,
    /// hapki stamps every header with the bundle's `created_at` ([`bundle_mtime`]).
    pub mtime: u64,
}

impl Raw {
    pub fn file(name: &str, data: &[u8]) -> Raw {
        let mode = if name.ends_with(".crt") || !name.starts_with("pki/") { 0o644 } else { 0o600 };
        Raw {
            name: name.as_bytes().to_vec(),
            typeflag: b'0',
            mode,
            link: vec![],
            data: data.to_vec(),
            mtime: 1_700_000_000,
        }
    }
}

/// A ustar archive of `entries` plus the two end blocks, written header by header so that
/// anything (`..`, NUL, links, devices) can be expressed.
pub fn raw_tar(entries: &[Raw]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut h = tar::Header::new_ustar();
        h.set_mode(e.mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(e.mtime);
        h.set_username("root").unwrap();
        h.set_groupname("root").unwrap();
        h.set_size(e.data.len() as u64);
        h.set_entry_type(tar::EntryType::new(e.typeflag));
        let old = h.as_old_mut();
        old.name = [0; 100];
        old.name[..e.name.len()].copy_from_slice(&e.name);
        old.linkname = [0; 100];
        old.linkname[..e.link.len()].copy_from_slice(&e.link);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(&e.data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// The mtime of a plaintext bundle's first tar header, read with the `tar` crate.
pub fn bundle_mtime(bundle: &Path) -> u64 {
    let f = std::fs::File::open(bundle).unwrap();
    let mut a = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let first = a.entries().unwrap().next().unwrap().unwrap();
    first.header().mtime().unwrap()
}

/// hapki's one bundle encoding, written here from RFC 1951/1952 rather than by hapki: header
/// (no flags, mtime 0, XFL 0, OS 255), 65535-byte non-final stored blocks, one shorter final
/// block (possibly empty), CRC-32, length.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let mut chunks: Vec<&[u8]> = data.chunks(65535).collect();
    if chunks.last().is_none_or(|c| c.len() == 65535) {
        chunks.push(&[]);
    }
    let n = chunks.len();
    for (i, c) in chunks.into_iter().enumerate() {
        let len = c.len() as u16;
        out.push(u8::from(i + 1 == n));
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(c);
    }
    let mut crc = flate2::Crc::new();
    crc.update(data);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

/// The compressed encoding hapki 0.1.0 and before wrote for PKI-only bundles (flate2, best
/// compression, mtime 0), which hapki now refuses by name.
pub fn legacy_gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut g = flate2::GzBuilder::new().mtime(0).write(Vec::new(), flate2::Compression::best());
    g.write_all(data).unwrap();
    g.finish().unwrap()
}

pub fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// SHA256SUMS in hapki's format for the regular entries among `entries` that the format names
/// (bundle.json and pki/…), in the order given.
pub fn sums_for(entries: &[Raw]) -> Vec<u8> {
    let mut s = String::new();
    for e in entries {
        let n = String::from_utf8_lossy(&e.name).to_string();
        if n == "bundle.json" || n.starts_with("pki/") {
            s.push_str(&format!("{}  {}\n", sha256_hex(&e.data), n));
        }
    }
    s.into_bytes()
}
