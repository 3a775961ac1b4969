//! `hapki pki check` and `pki inspect` against PKIs made by openssl alone, kubeadm's own test
//! vector, and broken PKIs one per test: a CA key of another CA, swapped or mismatched pairs, a
//! leaf as a CA, expired, missing, unsupported key types, truncated or garbage PEM, loose modes.

#[path = "support/pki.rs"]
mod pki;

use std::fs;
use std::path::Path;

use pki::*;

const KUBEADM_VECTOR: &str = "tests/vectors/kubeadm-discovery-ca-cert.pem";
const KUBEADM_VECTOR_HASH: &str =
    "sha256:98be2e6d4d8a89aa308fb15de0c07e2531ce549c68dec1687cdd5c06f0826658";

#[test]
fn kubeadm_vector_gives_kubeadms_discovery_hash() {
    let out =
        hapki().args(["pki", "inspect", "--output", "json", KUBEADM_VECTOR]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let f = &json["files"][0];
    assert_eq!(f["file"], KUBEADM_VECTOR);
    assert_eq!(f["kind"], "certificate");
    assert_eq!(f["is_ca"], true);
    assert_eq!(f["discovery_token_ca_cert_hash"], KUBEADM_VECTOR_HASH);
    assert_eq!(f["not_after"], "2029-11-17T00:49:42Z");
    assert_eq!(f["cert_sha256"], openssl_cert_sha256(Path::new(KUBEADM_VECTOR)).as_str());
    // The same hash as the openssl pipeline: the vector and the pipeline agree with each other.
    assert_eq!(openssl_discovery_hash(Path::new(KUBEADM_VECTOR)), KUBEADM_VECTOR_HASH);

    let table = hapki().args(["pki", "inspect", KUBEADM_VECTOR]).output().unwrap();
    assert!(String::from_utf8_lossy(&table.stdout).contains(KUBEADM_VECTOR_HASH));
}

/// An openssl-made PKI checks clean and every fingerprint equals openssl's.
fn openssl_pki_is_clean(style: KeyStyle, key_header: &str) {
    let t = tempdir();
    let dir = pki_path(&t);
    openssl_pki(&dir, style);
    let key_pem = fs::read_to_string(dir.join("ca.key")).unwrap();
    assert!(key_pem.starts_with(key_header), "openssl wrote {key_pem:.40}");

    let run = check_json(&dir, &[]);
    assert_eq!(run.code, 0, "{}\n{}", run.json, run.stderr);
    assert_eq!(run.json["ok"], true);
    assert_eq!(run.json["problems"].as_array().unwrap().len(), 0);
    assert_eq!(
        run.json["discovery_token_ca_cert_hash"],
        openssl_discovery_hash(&dir.join("ca.crt")).as_str()
    );
    for name in ["ca.crt", "front-proxy-ca.crt", "etcd/ca.crt"] {
        let f = run.file(name);
        assert_eq!(f["cert_sha256"], openssl_cert_sha256(&dir.join(name)).as_str(), "{name}");
        let key = name.replace(".crt", ".key");
        assert_eq!(f["spki_sha256"], run.file(&key)["spki_sha256"], "{key} vs {name}");
        assert!(f["not_after"].as_str().unwrap().ends_with('Z'));
    }
    assert_eq!(run.file("sa.key")["spki_sha256"], run.file("sa.pub")["spki_sha256"]);
    // sha256 of the file bytes is what sha256sum prints.
    let sum = sh(&dir, "sha256sum etcd/ca.key");
    assert_eq!(run.file("etcd/ca.key")["sha256"], sum.split_whitespace().next().unwrap());
    // spki_sha256 of a key equals openssl's hash of its public key.
    let spki = sh(&dir, "openssl pkey -in sa.key -pubout -outform der | sha256sum");
    assert_eq!(run.file("sa.key")["spki_sha256"], spki.split_whitespace().next().unwrap());

    let table = hapki().args(["pki", "check", "--pki-dir"]).arg(&dir).output().unwrap();
    assert_eq!(table.status.code(), Some(0));
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("discovery-token-ca-cert-hash: sha256:") && text.contains("OK"),
        "{text}"
    );
}

#[test]
fn openssl_rsa2048_pkcs1_is_clean() {
    openssl_pki_is_clean(KeyStyle::Rsa2048Pkcs1, "-----BEGIN RSA PRIVATE KEY-----");
}

#[test]
fn openssl_rsa3072_pkcs8_is_clean() {
    openssl_pki_is_clean(KeyStyle::Rsa3072Pkcs8, "-----BEGIN PRIVATE KEY-----");
}

#[test]
fn openssl_ecdsa_p256_sec1_is_clean() {
    openssl_pki_is_clean(KeyStyle::EcdsaP256Sec1, "-----BEGIN EC PRIVATE KEY-----");
}

#[test]
fn ec_key_with_parameters_block_is_read() {
    // `openssl ecparam -genkey` without -noout writes EC PARAMETERS before the key; kubeadm
    // skips that block, and so must hapki.
    let t = tempdir();
    let dir = pki_path(&t);
    openssl_pki(&dir, KeyStyle::EcdsaP256Sec1);
    fs::remove_file(dir.join("ca.key")).unwrap();
    fs::remove_file(dir.join("ca.crt")).unwrap();
    run_in(&dir, "openssl", &["ecparam", "-name", "prime256v1", "-genkey", "-out", "ca.key"]);
    chmod(&dir.join("ca.key"), 0o600);
    openssl_ca_cert(&dir, "ca.key", "ca.crt", "kubernetes", 3650);
    assert!(fs::read_to_string(dir.join("ca.key"))
        .unwrap()
        .starts_with("-----BEGIN EC PARAMETERS-----"));
    let run = check_json(&dir, &[]);
    assert_eq!(run.code, 0, "{}", run.json);
}

/// A broken PKI: exit 3, one one-line problem naming `file` and containing `needle`, no panic.
fn assert_problem(dir: &Path, file: &str, needle: &str) -> CheckRun {
    let run = check_json(dir, &[]);
    assert_eq!(run.code, 3, "{}\n{}", run.json, run.stderr);
    assert_eq!(run.json["ok"], false);
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    let msgs = run.problems_for(file);
    assert!(
        msgs.iter().any(|m| m.starts_with(&format!("{file}: ")) && m.contains(needle)),
        "no problem for {file} containing {needle:?}: {}",
        run.json["problems"]
    );
    for m in msgs {
        assert!(!m.contains('\n'), "multi-line message: {m:?}");
    }
    // The table names the file too, and exits 3 the same way.
    let table = hapki().args(["pki", "check", "--pki-dir"]).arg(dir).output().unwrap();
    assert_eq!(table.status.code(), Some(3));
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.lines().any(|l| l.starts_with(&format!("problem: {file}: ")) && l.contains(needle)),
        "{text}"
    );
    run
}

fn fresh(t: &tempfile::TempDir) -> std::path::PathBuf {
    let dir = pki_path(t);
    hapki_pki(&dir, "ECDSA-P256");
    dir
}

#[test]
fn ca_key_of_another_ca() {
    let t = tempdir();
    let dir = fresh(&t);
    let other = t.path().join("other");
    hapki_pki(&other, "ECDSA-P256");
    fs::copy(other.join("ca.key"), dir.join("ca.key")).unwrap();
    assert_problem(&dir, "ca.key", "does not match ca.crt (the key belongs to another CA)");
}

#[test]
fn sa_pub_of_another_key() {
    let t = tempdir();
    let dir = fresh(&t);
    let other = t.path().join("other");
    hapki_pki(&other, "ECDSA-P256");
    fs::copy(other.join("sa.pub"), dir.join("sa.pub")).unwrap();
    assert_problem(&dir, "sa.pub", "is not the public half of sa.key");
}

#[test]
fn front_proxy_and_etcd_keys_swapped() {
    let t = tempdir();
    let dir = fresh(&t);
    let fp = fs::read(dir.join("front-proxy-ca.key")).unwrap();
    let etcd = fs::read(dir.join("etcd/ca.key")).unwrap();
    fs::write(dir.join("front-proxy-ca.key"), etcd).unwrap();
    fs::write(dir.join("etcd/ca.key"), fp).unwrap();
    assert_problem(&dir, "front-proxy-ca.key", "it is the key of etcd/ca.crt");
    assert_problem(&dir, "etcd/ca.key", "it is the key of front-proxy-ca.crt");
}

#[test]
fn leaf_certificate_as_ca_crt() {
    let t = tempdir();
    let dir = fresh(&t);
    // openssl signs a leaf (CA:FALSE) with the real CA key; it lands where ca.crt belongs.
    run_in(
        &dir,
        "openssl",
        &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "leaf.key"],
    );
    run_in(
        &dir,
        "openssl",
        &["req", "-new", "-key", "leaf.key", "-subj", "/CN=kube-apiserver", "-out", "leaf.csr"],
    );
    fs::write(
        dir.join("leaf.ext"),
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n",
    )
    .unwrap();
    run_in(
        &dir,
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "365",
            "-extfile",
            "leaf.ext",
            "-out",
            "leaf.crt",
        ],
    );
    fs::copy(dir.join("leaf.crt"), dir.join("ca.crt")).unwrap();
    assert_problem(&dir, "ca.crt", "not a CA certificate");
}

#[test]
fn expired_ca() {
    let t = tempdir();
    let dir = fresh(&t);
    // `openssl ca` is the stock way to give a certificate explicit dates.
    fs::write(
        dir.join("ca.cnf"),
        "[ca]\ndefault_ca=d\n[d]\ndatabase=index.txt\nnew_certs_dir=.\nserial=serial\ndefault_md=sha256\npolicy=p\nx509_extensions=e\nunique_subject=no\n[p]\ncommonName=supplied\n[e]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,digitalSignature,keyEncipherment,keyCertSign\n",
    )
    .unwrap();
    fs::write(dir.join("index.txt"), "").unwrap();
    fs::write(dir.join("serial"), "01\n").unwrap();
    run_in(
        &dir,
        "openssl",
        &["req", "-new", "-key", "ca.key", "-subj", "/CN=kubernetes", "-out", "ca.csr"],
    );
    run_in(
        &dir,
        "openssl",
        &[
            "ca",
            "-batch",
            "-config",
            "ca.cnf",
            "-selfsign",
            "-keyfile",
            "ca.key",
            "-in",
            "ca.csr",
            "-startdate",
            "20200101000000Z",
            "-enddate",
            "20210101000000Z",
            "-notext",
            "-out",
            "ca.crt",
        ],
    );
    let run = assert_problem(&dir, "ca.crt", "expired on 2021-01-01T00:00:00Z");
    // Same key, so the pair still matches: exactly one problem.
    assert_eq!(run.json["problems"].as_array().unwrap().len(), 1, "{}", run.json);
}

#[test]
fn missing_etcd_ca_key() {
    let t = tempdir();
    let dir = fresh(&t);
    fs::remove_file(dir.join("etcd/ca.key")).unwrap();
    assert_problem(&dir, "etcd/ca.key", "missing");
}

#[test]
fn ed25519_sa_key() {
    let t = tempdir();
    let dir = fresh(&t);
    fs::remove_file(dir.join("sa.key")).unwrap();
    run_in(&dir, "openssl", &["genpkey", "-algorithm", "ed25519", "-out", "sa.key"]);
    chmod(&dir.join("sa.key"), 0o600);
    assert_problem(
        &dir,
        "sa.key",
        "Ed25519, which kubeadm rejects (\"neither in RSA nor ECDSA format\")",
    );
}

#[test]
fn truncated_pem() {
    let t = tempdir();
    let dir = fresh(&t);
    let pem = fs::read(dir.join("ca.crt")).unwrap();
    fs::write(dir.join("ca.crt"), &pem[..pem.len() / 2]).unwrap();
    assert_problem(&dir, "ca.crt", "truncated PEM");
}

#[test]
fn truncated_body_with_end_line() {
    // The END line survives but the DER is cut: still named, still exit 3.
    let t = tempdir();
    let dir = fresh(&t);
    let pem = fs::read_to_string(dir.join("front-proxy-ca.crt")).unwrap();
    let lines: Vec<&str> = pem.lines().collect();
    let cut = [&lines[..3], &lines[lines.len() - 1..]].concat().join("\n");
    fs::write(dir.join("front-proxy-ca.crt"), cut).unwrap();
    assert_problem(&dir, "front-proxy-ca.crt", "certificate does not parse");
}

#[test]
fn garbage() {
    let t = tempdir();
    let dir = fresh(&t);
    fs::write(dir.join("ca.key"), b"\x8f\x00\xffthis is not a key\x01\x02").unwrap();
    assert_problem(&dir, "ca.key", "not PEM");
}

#[test]
fn empty_file() {
    let t = tempdir();
    let dir = fresh(&t);
    fs::write(dir.join("sa.pub"), b"").unwrap();
    assert_problem(&dir, "sa.pub", "empty file");
}

#[test]
fn directory_where_a_file_should_be() {
    let t = tempdir();
    let dir = fresh(&t);
    fs::remove_file(dir.join("front-proxy-ca.crt")).unwrap();
    fs::create_dir(dir.join("front-proxy-ca.crt")).unwrap();
    assert_problem(&dir, "front-proxy-ca.crt", "is a directory, not a file");
}

#[test]
fn key_readable_by_others() {
    let t = tempdir();
    let dir = fresh(&t);
    chmod(&dir.join("etcd/ca.key"), 0o644);
    assert_problem(&dir, "etcd/ca.key", "chmod 600 etcd/ca.key");
}

#[test]
fn key_where_certificate_belongs() {
    let t = tempdir();
    let dir = fresh(&t);
    fs::copy(dir.join("ca.key"), dir.join("ca.crt")).unwrap();
    assert_problem(
        &dir,
        "ca.crt",
        "no CERTIFICATE block in this file (blocks found: EC PRIVATE KEY)",
    );
}

#[test]
fn expiring_ca_is_a_warning_not_a_problem() {
    let t = tempdir();
    let dir = fresh(&t);
    for (days, warn_within, needle) in [
        (30, "90d", "within 90d"),
        (200, "90d", "before a one-year certificate"),
        (30, "7d", "before a one-year certificate"),
    ] {
        fs::remove_file(dir.join("etcd/ca.crt")).unwrap();
        openssl_ca_cert(&dir, "etcd/ca.key", "etcd/ca.crt", "etcd-ca", days);
        let run = check_json(&dir, &["--warn-within", warn_within]);
        assert_eq!(run.code, 0, "{}", run.json);
        let w = run.warnings_for("etcd/ca.crt");
        assert!(w.iter().any(|m| m.contains(needle)), "{days}d/{warn_within}: {w:?}");
    }
}

#[test]
fn unexpected_common_name_is_a_warning() {
    let t = tempdir();
    let dir = fresh(&t);
    fs::remove_file(dir.join("front-proxy-ca.crt")).unwrap();
    openssl_ca_cert(&dir, "front-proxy-ca.key", "front-proxy-ca.crt", "my-proxy-ca", 3650);
    let run = check_json(&dir, &[]);
    assert_eq!(run.code, 0);
    let w = run.warnings_for("front-proxy-ca.crt");
    assert!(
        w.iter().any(|m| m.contains("\"my-proxy-ca\"") && m.contains("\"front-proxy-ca\"")),
        "{w:?}"
    );
}

#[test]
fn missing_directory_is_a_usage_error() {
    let t = tempdir();
    let out =
        hapki().args(["pki", "check", "--pki-dir"]).arg(t.path().join("nope")).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no such directory") && err.lines().count() == 1, "{err}");
}

#[test]
fn bad_warn_within_is_a_usage_error() {
    let t = tempdir();
    let out = hapki()
        .args(["pki", "check", "--warn-within", "soon", "--pki-dir"])
        .arg(t.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // One line names the bad value and shows the form DURATION takes.
    let err = String::from_utf8_lossy(&out.stderr);
    let first = err.lines().next().unwrap_or_default();
    assert!(first.contains("--warn-within") && first.contains("\"soon\""), "{err}");
    assert!(first.contains("90m") && first.contains("30d"), "the fix: {err}");
    assert!(out.stdout.is_empty(), "no report on a usage error");
}

#[test]
fn inspect_reports_each_kind_and_fails_on_garbage() {
    let t = tempdir();
    let dir = pki_path(&t);
    openssl_pki(&dir, KeyStyle::Rsa2048Pkcs1);
    fs::write(dir.join("junk.pem"), "hello\n").unwrap();
    let out = hapki()
        .args(["pki", "inspect", "--output", "json"])
        .args(["ca.crt", "ca.key", "sa.pub", "junk.pem"].map(|n| dir.join(n)))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let files = json["files"].as_array().unwrap();
    assert_eq!(files.len(), 3);
    assert_eq!(files[0]["kind"], "certificate");
    assert_eq!(files[1]["kind"], "private_key");
    assert_eq!(files[1]["format"], "PKCS#1 RSA PRIVATE KEY");
    assert_eq!(files[1]["algorithm"], "RSA-2048");
    assert_eq!(files[2]["kind"], "public_key");
    assert_eq!(files[0]["spki_sha256"], files[1]["spki_sha256"]);
    assert!(files[1]["discovery_token_ca_cert_hash"].is_null());
    assert_eq!(
        files[0]["discovery_token_ca_cert_hash"],
        openssl_discovery_hash(&dir.join("ca.crt")).as_str()
    );
    let problems = json["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1);
    assert!(problems[0]["message"].as_str().unwrap().contains("junk.pem: not PEM"));
}
