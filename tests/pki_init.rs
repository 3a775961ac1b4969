//! `hapki pki init`: what it writes is what kubeadm writes, and openssl agrees.

#[path = "support/pki.rs"]
mod pki;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use pki::*;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

const CAS: [(&str, &str); 3] =
    [("ca", "kubernetes"), ("front-proxy-ca", "front-proxy-ca"), ("etcd/ca", "etcd-ca")];

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn first_line(path: &Path) -> String {
    fs::read_to_string(path).unwrap().lines().next().unwrap_or_default().to_string()
}

/// Everything the issue asks of an initialised PKI, for one algorithm.
fn init_is_kubeadm_compatible(algorithm: &str, key_block: &str, openssl_key_type: &str) {
    let t = tempdir();
    let dir = pki_path(&t);
    let before = OffsetDateTime::now_utc();
    hapki_pki(&dir, algorithm);
    let after = OffsetDateTime::now_utc();

    assert_eq!(mode(&dir), 0o755);
    assert_eq!(mode(&dir.join("etcd")), 0o755);
    for (base, cn) in CAS {
        let (crt, key) = (dir.join(format!("{base}.crt")), dir.join(format!("{base}.key")));
        assert_eq!(mode(&crt), 0o644, "{base}.crt");
        assert_eq!(mode(&key), 0o600, "{base}.key");
        assert_eq!(first_line(&crt), "-----BEGIN CERTIFICATE-----");
        assert_eq!(first_line(&key), format!("-----BEGIN {key_block}-----"), "{base}.key");

        // The CA verifies itself.
        let crt_name = format!("{base}.crt");
        let v = run_in(&dir, "openssl", &["verify", "-CAfile", &crt_name, &crt_name]);
        assert!(v.trim_end().ends_with(": OK"), "{v}");

        // kubeadm's extensions and names.
        let text = run_in(&dir, "openssl", &["x509", "-noout", "-text", "-in", &crt_name]);
        let squashed: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
        for needle in [
            format!("Subject: CN = {cn}"),
            format!("Issuer: CN = {cn}"),
            "X509v3 Basic Constraints: critical CA:TRUE".to_string(),
            "X509v3 Key Usage: critical Digital Signature, Key Encipherment, Certificate Sign"
                .to_string(),
            format!("X509v3 Subject Alternative Name: DNS:{cn}"),
            format!("Public Key Algorithm: {openssl_key_type}"),
        ] {
            assert!(squashed.contains(&needle), "{base}.crt lacks {needle:?}:\n{text}");
        }
        assert!(!squashed.contains("pathlen"), "kubeadm sets no path length");

        // A leaf openssl signs with the new CA key verifies against the CA.
        let leaf = base.replace('/', "-");
        let leaf_key = t.path().join(format!("{leaf}.key"));
        let leaf_key = leaf_key.to_str().unwrap();
        run_in(
            &dir,
            "openssl",
            &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", leaf_key],
        );
        let leaf_csr = t.path().join(format!("{leaf}.csr"));
        let leaf_crt = t.path().join(format!("{leaf}.crt"));
        run_in(
            &dir,
            "openssl",
            &[
                "req",
                "-new",
                "-key",
                leaf_key,
                "-subj",
                "/CN=kube-apiserver",
                "-out",
                leaf_csr.to_str().unwrap(),
            ],
        );
        run_in(
            &dir,
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                leaf_csr.to_str().unwrap(),
                "-CA",
                &crt_name,
                "-CAkey",
                &format!("{base}.key"),
                "-set_serial",
                "42",
                "-days",
                "365",
                "-out",
                leaf_crt.to_str().unwrap(),
            ],
        );
        let v =
            run_in(&dir, "openssl", &["verify", "-CAfile", &crt_name, leaf_crt.to_str().unwrap()]);
        assert!(v.trim_end().ends_with(": OK"), "{v}");
    }
    assert_eq!(mode(&dir.join("sa.key")), 0o600);
    assert_eq!(mode(&dir.join("sa.pub")), 0o600);
    assert_eq!(first_line(&dir.join("sa.key")), format!("-----BEGIN {key_block}-----"));
    assert_eq!(first_line(&dir.join("sa.pub")), "-----BEGIN PUBLIC KEY-----");
    // sa.pub is the public half of sa.key, by openssl's account.
    let derived = run_in(&dir, "openssl", &["pkey", "-in", "sa.key", "-pubout"]);
    assert_eq!(derived, fs::read_to_string(dir.join("sa.pub")).unwrap());

    // Validity: back-dated five minutes, ten years (kubeadm: 365-day years).
    let out = hapki()
        .args(["pki", "inspect", "--output", "json"])
        .arg(dir.join("ca.crt"))
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let at =
        |k: &str| OffsetDateTime::parse(json["files"][0][k].as_str().unwrap(), &Rfc3339).unwrap();
    let five = time::Duration::minutes(5);
    let second = time::Duration::seconds(1);
    assert!(
        at("not_before") >= before - five - second && at("not_before") <= after - five,
        "{json}"
    );
    let ten_years = time::Duration::days(3650);
    assert!(
        at("not_after") >= before + ten_years - second && at("not_after") <= after + ten_years,
        "{json}"
    );

    let run = check_json(&dir, &[]);
    assert_eq!(run.code, 0, "{}", run.json);
    assert_eq!(run.json["problems"].as_array().unwrap().len(), 0);
    assert_eq!(run.json["warnings"].as_array().unwrap().len(), 0, "{}", run.json);
    assert_eq!(
        run.json["discovery_token_ca_cert_hash"],
        openssl_discovery_hash(&dir.join("ca.crt")).as_str()
    );
}

#[test]
fn init_rsa2048() {
    init_is_kubeadm_compatible("RSA-2048", "RSA PRIVATE KEY", "rsaEncryption");
}

#[test]
fn init_rsa3072() {
    init_is_kubeadm_compatible("RSA-3072", "RSA PRIVATE KEY", "rsaEncryption");
}

#[test]
fn init_rsa4096() {
    init_is_kubeadm_compatible("RSA-4096", "RSA PRIVATE KEY", "rsaEncryption");
}

#[test]
fn init_ecdsa_p256() {
    init_is_kubeadm_compatible("ECDSA-P256", "EC PRIVATE KEY", "id-ecPublicKey");
}

#[test]
fn init_ecdsa_p384() {
    init_is_kubeadm_compatible("ECDSA-P384", "EC PRIVATE KEY", "id-ecPublicKey");
}

#[test]
fn init_defaults_to_rsa2048() {
    let t = tempdir();
    let dir = pki_path(&t);
    let out = hapki().args(["pki", "init", "--pki-dir"]).arg(&dir).output().unwrap();
    assert!(out.status.success());
    let text = run_in(&dir, "openssl", &["x509", "-noout", "-text", "-in", "ca.crt"]);
    assert!(text.contains("Public-Key: (2048 bit)"), "{text}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&openssl_discovery_hash(&dir.join("ca.crt")))
    );
}

#[test]
fn init_refuses_to_overwrite_and_writes_nothing() {
    let t = tempdir();
    let dir = pki_path(&t);
    fs::create_dir_all(dir.join("etcd")).unwrap();
    fs::write(dir.join("etcd/ca.key"), "precious").unwrap();
    let out = hapki()
        .args(["pki", "init", "--algorithm", "ECDSA-P256", "--pki-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("etcd/ca.key: already exists") && err.lines().count() == 1, "{err}");
    assert_eq!(fs::read_to_string(dir.join("etcd/ca.key")).unwrap(), "precious");
    let mut left: Vec<String> = walk(&dir);
    left.sort();
    assert_eq!(left, ["etcd/ca.key"], "init wrote something");

    // A second init over a complete PKI changes nothing either.
    let full = t.path().join("full");
    hapki_pki(&full, "ECDSA-P256");
    let before = fs::read(full.join("ca.key")).unwrap();
    let out = hapki().args(["pki", "init", "--pki-dir"]).arg(&full).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(fs::read(full.join("ca.key")).unwrap(), before);
}

#[test]
fn init_leaves_no_temp_files() {
    let t = tempdir();
    let dir = pki_path(&t);
    hapki_pki(&dir, "ECDSA-P256");
    let mut names = walk(&dir);
    names.sort();
    let mut expected: Vec<String> = SHARED.map(String::from).to_vec();
    expected.sort();
    assert_eq!(names, expected);
}

#[test]
fn unknown_algorithm_is_a_usage_error() {
    let t = tempdir();
    let out = hapki()
        .args(["pki", "init", "--algorithm", "ED25519", "--pki-dir"])
        .arg(pki_path(&t))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(!pki_path(&t).exists());
    // The message names the bad value and the fix: the algorithms kubeadm accepts.
    let err = String::from_utf8_lossy(&out.stderr);
    let first = err.lines().next().unwrap_or_default();
    assert!(first.contains("invalid value 'ED25519' for '--algorithm"), "{err}");
    for alg in ["RSA-2048", "RSA-3072", "RSA-4096", "ECDSA-P256", "ECDSA-P384"] {
        assert!(err.contains(alg), "{alg} offered: {err}");
    }
}

fn walk(dir: &Path) -> Vec<String> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| e.path().strip_prefix(dir).unwrap().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn issue_leaf_signs_a_leaf_openssl_accepts() {
    // The helper other modules' tests use to put per-node certificates next to the shared PKI.
    let t = tempdir();
    let dir = pki_path(&t);
    hapki_pki(&dir, "RSA-2048");
    for (ca, cn) in [("ca", "kube-apiserver"), ("etcd/ca", "kubemaster-1")] {
        let leaf = hapki::pki::issue_leaf(&dir, ca, cn, OffsetDateTime::now_utc()).unwrap();
        let crt = t.path().join("leaf.crt");
        fs::write(&crt, &leaf.cert_pem).unwrap();
        assert!(leaf.key_pem.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        let v = run_in(
            &dir,
            "openssl",
            &["verify", "-CAfile", &format!("{ca}.crt"), crt.to_str().unwrap()],
        );
        assert!(v.trim_end().ends_with(": OK"), "{v}");
        let other_ca = if ca == "ca" { "etcd/ca.crt" } else { "ca.crt" };
        let out = std::process::Command::new("openssl")
            .args(["verify", "-CAfile", other_ca, crt.to_str().unwrap()])
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{cn} leaf verified against the wrong CA");
        let r = hapki::pki::inspect_pem("leaf.crt", leaf.cert_pem.as_bytes()).unwrap();
        assert_eq!(r.is_ca, Some(false));
        assert_eq!(r.subject.as_deref(), Some(format!("CN={cn}").as_str()));
    }
}
