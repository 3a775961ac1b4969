//! Values computed by the stock `openssl` CLI, independently of hapki, to hold it against.
//!
//! Other support files include it with `#[path = "openssl.rs"] mod openssl;`.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// SHA-256 of nothing: what a broken pipeline that hashed no input would give.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// The discovery hash (kubeadm's `--discovery-token-ca-cert-hash`) of the certificate at `cert`,
/// computed by the pipeline in kubeadm's documentation.
pub fn openssl_discovery_hash(cert: &Path) -> String {
    let out = Command::new("bash")
        .arg("-c")
        .arg(
            "set -eo pipefail; openssl x509 -pubkey -noout -in \"$1\" \
             | openssl pkey -pubin -outform der | sha256sum",
        )
        .arg("bash")
        .arg(cert)
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "openssl discovery-hash pipeline failed on {}: {}",
        cert.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let hex =
        String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or("").to_owned();
    assert_eq!(hex.len(), 64, "not a SHA-256: {hex:?}");
    assert_ne!(hex, EMPTY_SHA256, "broken pipeline: hash of empty input");
    format!("sha256:{hex}")
}

/// `openssl x509 -fingerprint -sha256` of the certificate at `cert`, as lowercase hex without
/// colons (the form hapki reports).
pub fn openssl_cert_sha256(cert: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(cert)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl x509 -fingerprint failed on {}: {}",
        cert.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let hex = stdout.trim().rsplit('=').next().unwrap().replace(':', "").to_lowercase();
    assert_eq!(hex.len(), 64, "not a SHA-256 fingerprint: {stdout}");
    hex
}
