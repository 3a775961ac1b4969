//! Shared helpers for tests that need a kubeadm shared PKI made by `openssl` alone (an
//! independent implementation to hold hapki against) or by `hapki pki init`.
//! Other test files include it with `#[path = "support/pki.rs"] mod pki;`.
#![allow(dead_code)]

#[path = "cli.rs"]
mod cli;
#[path = "openssl.rs"]
mod openssl;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

#[allow(unused_imports)] // each test uses its own part
pub use cli::{hapki, SHARED};
#[allow(unused_imports)] // each test uses its own part
pub use openssl::{openssl_cert_sha256, openssl_discovery_hash};

/// Runs `program args…` in `dir`, panicking with its stderr if it fails (test setup only).
pub fn run_in(dir: &Path, program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a shell pipeline in `dir` and returns its stdout.
pub fn sh(dir: &Path, script: &str) -> String {
    run_in(dir, "bash", &["-c", &format!("set -eo pipefail; {script}")])
}

/// How the keys of an openssl-made PKI are encoded — the three formats kubeadm writes or reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStyle {
    /// `openssl genrsa -traditional`: `RSA PRIVATE KEY`.
    Rsa2048Pkcs1,
    /// `openssl genpkey -algorithm RSA`: `PRIVATE KEY`.
    Rsa3072Pkcs8,
    /// `openssl ecparam -genkey -noout`: `EC PRIVATE KEY`.
    EcdsaP256Sec1,
}

/// Writes a private key of `style` to `dir/name` with openssl.
pub fn openssl_key(dir: &Path, name: &str, style: KeyStyle) {
    match style {
        KeyStyle::Rsa2048Pkcs1 => {
            run_in(dir, "openssl", &["genrsa", "-traditional", "-out", name, "2048"])
        }
        KeyStyle::Rsa3072Pkcs8 => run_in(
            dir,
            "openssl",
            &["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:3072", "-out", name],
        ),
        KeyStyle::EcdsaP256Sec1 => run_in(
            dir,
            "openssl",
            &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", name],
        ),
    };
    chmod(&dir.join(name), 0o600);
}

/// Writes a self-signed CA certificate like kubeadm's for the key at `dir/key`.
pub fn openssl_ca_cert(dir: &Path, key: &str, cert: &str, cn: &str, days: u32) {
    run_in(
        dir,
        "openssl",
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            key,
            "-subj",
            &format!("/CN={cn}"),
            "-days",
            &days.to_string(),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign",
            "-addext",
            &format!("subjectAltName=DNS:{cn}"),
            "-out",
            cert,
        ],
    );
    chmod(&dir.join(cert), 0o644);
}

/// A complete shared PKI under `dir` made by openssl alone, keys in `style`.
pub fn openssl_pki(dir: &Path, style: KeyStyle) {
    std::fs::create_dir_all(dir.join("etcd")).unwrap();
    for (base, cn) in
        [("ca", "kubernetes"), ("front-proxy-ca", "front-proxy-ca"), ("etcd/ca", "etcd-ca")]
    {
        let (key, crt) = (format!("{base}.key"), format!("{base}.crt"));
        openssl_key(dir, &key, style);
        openssl_ca_cert(dir, &key, &crt, cn, 3650);
    }
    openssl_key(dir, "sa.key", style);
    run_in(dir, "openssl", &["pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub"]);
    chmod(&dir.join("sa.pub"), 0o600);
}

/// A shared PKI made by `hapki pki init` (ECDSA-P256 unless told: fast).
pub fn hapki_pki(dir: &Path, algorithm: &str) {
    let out = hapki()
        .args(["pki", "init", "--pki-dir"])
        .arg(dir)
        .args(["--algorithm", algorithm])
        .output()
        .unwrap();
    assert!(out.status.success(), "pki init failed: {}", String::from_utf8_lossy(&out.stderr));
}

pub fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// What `pki check --output json` said, and its exit code.
pub struct CheckRun {
    pub code: i32,
    pub json: serde_json::Value,
    pub stderr: String,
}

pub fn check_json(dir: &Path, extra: &[&str]) -> CheckRun {
    let out = hapki()
        .args(["pki", "check", "--output", "json", "--pki-dir"])
        .arg(dir)
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("not JSON ({e}): {stdout}\nstderr: {}", String::from_utf8_lossy(&out.stderr))
    });
    CheckRun {
        code: out.status.code().unwrap_or(-1),
        json,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

impl CheckRun {
    /// The problem messages reported for `file`.
    pub fn problems_for(&self, file: &str) -> Vec<String> {
        findings(&self.json["problems"], file)
    }
    pub fn warnings_for(&self, file: &str) -> Vec<String> {
        findings(&self.json["warnings"], file)
    }
    /// The `files[]` entry named `name`.
    pub fn file(&self, name: &str) -> &serde_json::Value {
        self.json["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("no files[] entry for {name}: {}", self.json))
    }
}

fn findings(list: &serde_json::Value, file: &str) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .filter(|p| p["file"] == file)
        .map(|p| p["message"].as_str().unwrap().to_string())
        .collect()
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

pub fn pki_path(t: &tempfile::TempDir) -> PathBuf {
    t.path().join("pki")
}
