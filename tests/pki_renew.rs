//! `hapki pki renew-ca`: a same-key re-issue of the three CAs, held against openssl on a PKI
//! made by the real kubeadm v1.20.2 (`kubeadm init phase certs all`, leaves included) and on
//! PKIs made by openssl alone. Every expected value comes from openssl, sha256sum or a literal.

#[path = "support/pki.rs"]
mod pki;
#[path = "support/real_kube.rs"]
mod real_kube;
#[path = "support/testbed.rs"]
mod testbed;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use pki::*;

const CAS: [&str; 3] = ["ca.crt", "front-proxy-ca.crt", "etcd/ca.crt"];

/// Which CA signed each leaf `kubeadm init phase certs all` writes.
const LEAVES: [(&str, &str); 7] = [
    ("apiserver.crt", "ca.crt"),
    ("apiserver-kubelet-client.crt", "ca.crt"),
    ("front-proxy-client.crt", "front-proxy-ca.crt"),
    ("etcd/server.crt", "etcd/ca.crt"),
    ("etcd/peer.crt", "etcd/ca.crt"),
    ("etcd/healthcheck-client.crt", "etcd/ca.crt"),
    ("apiserver-etcd-client.crt", "etcd/ca.crt"),
];

/// A full PKI written by the real kubeadm, or `None` (skipped loudly) without the cache.
fn kubeadm_pki(dir: &Path) -> Option<()> {
    let cache = real_kube::cache()?;
    let out = Command::new(cache.join("kubeadm"))
        .args(["init", "phase", "certs", "all", "--kubernetes-version", real_kube::VERSION])
        .args(["--apiserver-advertise-address", "192.0.2.10", "--cert-dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "kubeadm: {}", String::from_utf8_lossy(&out.stderr));
    Some(())
}

/// `openssl x509 -noout <args>` of `dir/cert`.
fn x509(dir: &Path, cert: &str, args: &[&str]) -> String {
    let mut a = vec!["x509", "-noout", "-in", cert];
    a.extend_from_slice(args);
    run_in(dir, "openssl", &a)
}

/// What openssl says about a CA certificate.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    subject: String,
    pubkey: String,
    serial: String,
    ski: String,
    discovery: String,
    sha256: String,
}

fn seen(dir: &Path, cert: &str) -> Seen {
    Seen {
        subject: x509(dir, cert, &["-subject", "-nameopt", "RFC2253"]),
        pubkey: x509(dir, cert, &["-pubkey"]),
        serial: x509(dir, cert, &["-serial"]),
        ski: x509(dir, cert, &["-ext", "subjectKeyIdentifier"]),
        discovery: openssl_discovery_hash(&dir.join(cert)),
        sha256: sha256sum(&dir.join(cert)),
    }
}

fn sha256sum(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string()
}

/// sha256sum of every regular file under `dir`, by relative path.
fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    walkdir(dir)
        .into_iter()
        .map(|p| (p.strip_prefix(dir).unwrap().display().to_string(), sha256sum(&p)))
        .collect()
}

fn walkdir(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walkdir(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// `openssl verify -CAfile ca leaf`: (success, output).
fn verify(dir: &Path, ca: &str, leaf: &str) -> (bool, String) {
    let out = Command::new("openssl")
        .args(["verify", "-CAfile", ca, leaf])
        .current_dir(dir)
        .output()
        .unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// `openssl x509 -checkend SECONDS`: true when the certificate is still valid then.
fn valid_in(dir: &Path, cert: &str, seconds: u64) -> bool {
    Command::new("openssl")
        .args(["x509", "-noout", "-in", cert, "-checkend", &seconds.to_string()])
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}

fn renew(dir: &Path, extra: &[&str]) -> std::process::Output {
    hapki().args(["pki", "renew-ca", "--pki-dir"]).arg(dir).args(extra).output().unwrap()
}

fn backups(dir: &Path) -> Vec<PathBuf> {
    let mut b: Vec<PathBuf> =
        walkdir(dir).into_iter().filter(|p| p.extension().is_some_and(|e| e == "bak")).collect();
    b.sort();
    b
}

const TEN_YEARS: u64 = 3650 * 86400;
const DAY: u64 = 86400;

#[test]
fn kubeadm_cas_reissued_with_same_key_keep_every_leaf_and_the_discovery_hash() {
    let t = tempdir();
    let dir = pki_path(&t);
    let Some(()) = kubeadm_pki(&dir) else { return };
    let before: Vec<Seen> = CAS.iter().map(|c| seen(&dir, c)).collect();
    let old_ca_crt = std::fs::read(dir.join("ca.crt")).unwrap();
    let keys_before: Vec<String> =
        ["ca.key", "front-proxy-ca.key", "etcd/ca.key", "sa.key", "sa.pub"]
            .iter()
            .map(|k| sha256sum(&dir.join(k)))
            .collect();
    // kubeadm's CAs end in 10 years: not valid 10 years + 1 day from now.
    for c in CAS {
        assert!(!valid_in(&dir, c, TEN_YEARS + DAY), "{c}");
    }

    let out = renew(&dir, &["--validity", "7300d", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["renewed"].as_array().unwrap().len(), 3, "{json}");
    assert_eq!(json["discovery_token_ca_cert_hash"], before[0].discovery.as_str());

    for (c, old) in CAS.iter().zip(&before) {
        let new = seen(&dir, c);
        assert_eq!(new.subject, old.subject, "{c}: subject");
        assert_eq!(new.pubkey, old.pubkey, "{c}: public key (openssl x509 -pubkey)");
        assert_eq!(new.ski, old.ski, "{c}: subject key identifier");
        assert_eq!(new.discovery, old.discovery, "{c}: discovery hash (openssl pipeline)");
        assert_ne!(new.serial, old.serial, "{c}: serial must be new");
        assert_ne!(new.sha256, old.sha256, "{c}: file unchanged");
        // Later notAfter: valid 10 years + 1 day from now, i.e. beyond the old certificate.
        assert!(valid_in(&dir, c, TEN_YEARS + DAY), "{c}: notAfter not later");
        assert!(!valid_in(&dir, c, 7300 * DAY + DAY), "{c}: notAfter beyond --validity");
        let text = x509(&dir, c, &["-text"]);
        assert!(
            text.contains("X509v3 Basic Constraints: critical\n                CA:TRUE"),
            "{text}"
        );
        assert!(text.contains("X509v3 Key Usage: critical\n                Digital Signature, Key Encipherment, Certificate Sign"), "{text}");
        // Self-signed and well-formed: openssl accepts it as its own trust anchor.
        let (ok, msg) = verify(&dir, c, c);
        assert!(ok, "{c}: {msg}");
        let mode = std::fs::metadata(dir.join(c)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o644, "{c}");
    }
    for (leaf, ca) in LEAVES {
        let (ok, msg) = verify(&dir, ca, leaf);
        assert!(ok, "{leaf} (signed by the OLD {ca}) does not verify against the new one: {msg}");
    }
    // Negative control: openssl verify does fail on a leaf of another CA.
    let (ok, _) = verify(&dir, "front-proxy-ca.crt", "apiserver.crt");
    assert!(!ok, "openssl verify accepts anything: the checks above prove nothing");

    // The old certificates are kept, 0644, byte for byte; keys untouched.
    let b = backups(&dir);
    assert_eq!(b.len(), 3, "{b:?}");
    let ca_bak = b.iter().find(|p| p.file_name().unwrap().to_str().unwrap().starts_with("ca.crt."));
    let ca_bak = ca_bak.expect("ca.crt backup");
    assert_eq!(std::fs::read(ca_bak).unwrap(), old_ca_crt);
    for p in &b {
        assert_eq!(std::fs::metadata(p).unwrap().permissions().mode() & 0o7777, 0o644, "{p:?}");
    }
    let keys_after: Vec<String> =
        ["ca.key", "front-proxy-ca.key", "etcd/ca.key", "sa.key", "sa.pub"]
            .iter()
            .map(|k| sha256sum(&dir.join(k)))
            .collect();
    assert_eq!(keys_after, keys_before);
    // And hapki's own check calls the result coherent.
    let check = check_json(&dir, &[]);
    assert_eq!(check.code, 0, "{}", check.json);
}

#[test]
fn openssl_made_cas_of_every_key_style_are_reissued_and_old_leaves_verify() {
    for style in [KeyStyle::Rsa3072Pkcs8, KeyStyle::EcdsaP256Sec1] {
        let t = tempdir();
        let dir = pki_path(&t);
        openssl_pki(&dir, style);
        // A leaf signed by the old CA, by openssl (it carries an authority key identifier).
        sh(
            &dir,
            "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout leaf.key \
             -subj /CN=leaf -out leaf.csr 2>/dev/null && \
             openssl x509 -req -in leaf.csr -CA ca.crt -CAkey ca.key -set_serial 7 -days 30 \
             -extfile <(printf 'authorityKeyIdentifier=keyid\\n') -out leaf.crt 2>/dev/null",
        );
        let before: Vec<Seen> = CAS.iter().map(|c| seen(&dir, c)).collect();
        let out = renew(&dir, &["--validity", "4000d"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{style:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains(&before[0].discovery), "{stdout}");
        for (c, old) in CAS.iter().zip(&before) {
            let new = seen(&dir, c);
            assert_eq!(
                (&new.subject, &new.pubkey, &new.ski),
                (&old.subject, &old.pubkey, &old.ski)
            );
            assert_ne!(new.serial, old.serial);
            assert!(valid_in(&dir, c, TEN_YEARS + DAY), "{style:?} {c}");
        }
        let (ok, msg) = verify(&dir, "ca.crt", "leaf.crt");
        assert!(ok, "{style:?}: {msg}");
    }
}

#[test]
fn which_and_dry_run() {
    let t = tempdir();
    let dir = pki_path(&t);
    openssl_pki(&dir, KeyStyle::EcdsaP256Sec1);
    let snap = snapshot(&dir);
    let out = renew(&dir, &["--dry-run", "--validity", "4000d"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("would re-issue ca.crt"), "{stdout}");
    assert_eq!(snapshot(&dir), snap, "--dry-run wrote something");

    let out = renew(&dir, &["--which", "etcd/ca", "--validity", "4000d", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let after = snapshot(&dir);
    let changed: Vec<&String> = after.keys().filter(|k| snap.get(*k) != after.get(*k)).collect();
    assert_eq!(changed.len(), 2, "{changed:?}"); // etcd/ca.crt and its backup
    assert!(changed.iter().any(|k| *k == "etcd/ca.crt"), "{changed:?}");
    assert!(changed.iter().any(|k| k.starts_with("etcd/ca.crt.") && k.ends_with(".bak")));
}

/// Every refusal: one line on stderr naming the file and the fix, exit 2, nothing written.
fn refused(dir: &Path, extra: &[&str], needle: &str) {
    let snap = snapshot(dir);
    let out = renew(dir, extra);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{extra:?}: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains(needle), "{stderr}");
    assert_eq!(snapshot(dir), snap, "{extra:?}: something was written");
}

#[test]
fn refuses_a_missing_or_wrong_key_an_earlier_end_and_a_symlink() {
    let t = tempdir();
    let dir = pki_path(&t);
    openssl_pki(&dir, KeyStyle::EcdsaP256Sec1);
    // The new notAfter must be later than the current one (the CAs have 3650 days).
    refused(&dir, &["--validity", "100d"], "pass a longer --validity");

    // front-proxy-ca.key replaced by the etcd CA's key: a different key.
    let fp = std::fs::read(dir.join("front-proxy-ca.key")).unwrap();
    std::fs::copy(dir.join("etcd/ca.key"), dir.join("front-proxy-ca.key")).unwrap();
    refused(&dir, &["--validity", "4000d"], "front-proxy-ca.key is not this certificate's key");
    std::fs::write(dir.join("front-proxy-ca.key"), &fp).unwrap();

    // A missing key: refused, even for the other CAs (nothing is written at all).
    std::fs::rename(dir.join("etcd/ca.key"), t.path().join("etcd-ca.key")).unwrap();
    refused(&dir, &["--validity", "4000d"], "etcd/ca.key: missing");
    let check = check_json(&dir, &[]);
    let cas = check.json["cas"].as_array().unwrap();
    let etcd = cas.iter().find(|c| c["ca"] == "etcd-ca").unwrap();
    assert_eq!(etcd["reissue_possible"], false, "{etcd}");
    assert!(etcd["reason"].as_str().unwrap().contains("etcd/ca.key is missing"));
    let ca = cas.iter().find(|c| c["ca"] == "ca").unwrap();
    assert_eq!(ca["reissue_possible"], true, "{ca}");
    std::fs::rename(t.path().join("etcd-ca.key"), dir.join("etcd/ca.key")).unwrap();

    // ca.crt a symlink to a copy: hapki never writes through one.
    std::fs::rename(dir.join("ca.crt"), t.path().join("real-ca.crt")).unwrap();
    std::os::unix::fs::symlink(t.path().join("real-ca.crt"), dir.join("ca.crt")).unwrap();
    let out = renew(&dir, &["--validity", "4000d"]);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("symlink"));
    assert!(backups(&dir).is_empty());

    // Unknown CA name.
    refused(&dir, &["--which", "sa"], "use ca, front-proxy-ca or etcd-ca");
}

#[test]
fn check_reports_days_left_per_ca() {
    let t = tempdir();
    let dir = pki_path(&t);
    openssl_pki(&dir, KeyStyle::EcdsaP256Sec1);
    // Literal validity: openssl -days 100 made seconds ago leaves 99 whole days.
    openssl_ca_cert(&dir, "front-proxy-ca.key", "front-proxy-ca.crt", "front-proxy-ca", 100);
    let check = check_json(&dir, &[]);
    let cas = check.json["cas"].as_array().unwrap();
    let days = |name: &str| cas.iter().find(|c| c["ca"] == name).unwrap()["days_left"].clone();
    assert_eq!(days("front-proxy-ca"), 99);
    assert_eq!(days("ca"), 3649);
    assert!(cas.iter().all(|c| c["reissue_possible"] == true), "{cas:?}");
    let table = hapki().args(["pki", "check", "--pki-dir"]).arg(&dir).output().unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("front-proxy-ca  99 days left"), "{text}");
}

/// `base64 -w0 FILE`: what kubeadm writes as certificate-authority-data.
fn b64(path: &Path) -> String {
    String::from_utf8(run_in(Path::new("/"), "base64", &["-w0", path.to_str().unwrap()]).into())
        .unwrap()
}

#[test]
fn kubeconfig_dir_gets_the_new_ca_data_in_exactly_the_files_that_held_the_old() {
    let t = tempdir();
    let dir = pki_path(&t);
    let Some(()) = kubeadm_pki(&dir) else { return };
    let kdir = t.path().join("etc-kubernetes");
    std::fs::create_dir(&kdir).unwrap();
    // The real kubeadm writes the kubeconfigs from this PKI.
    let cache = real_kube::cache_dir();
    let out = Command::new(cache.join("kubeadm"))
        .args(["init", "phase", "kubeconfig", "all", "--kubernetes-version", real_kube::VERSION])
        .args(["--apiserver-advertise-address", "192.0.2.10", "--cert-dir"])
        .arg(&dir)
        .arg("--kubeconfig-dir")
        .arg(&kdir)
        .output()
        .unwrap();
    assert!(out.status.success(), "kubeadm: {}", String::from_utf8_lossy(&out.stderr));
    let old_b64 = b64(&dir.join("ca.crt"));
    let confs = ["admin.conf", "controller-manager.conf", "kubelet.conf", "scheduler.conf"];
    for c in confs {
        let text = std::fs::read_to_string(kdir.join(c)).unwrap();
        assert!(text.contains(&format!("certificate-authority-data: {old_b64}\n")), "{c}");
    }
    // One not about this CA, one a symlink, one owned by uid 1000 with 0640.
    let fp = format!("certificate-authority-data: {}\n", b64(&dir.join("front-proxy-ca.crt")));
    std::fs::write(kdir.join("other.conf"), &fp).unwrap();
    std::fs::write(
        t.path().join("target.conf"),
        format!("certificate-authority-data: {old_b64}\n"),
    )
    .unwrap();
    std::os::unix::fs::symlink(t.path().join("target.conf"), kdir.join("link.conf")).unwrap();
    std::os::unix::fs::chown(kdir.join("kubelet.conf"), Some(1000), Some(1000)).unwrap();
    chmod(&kdir.join("kubelet.conf"), 0o640);
    let before: BTreeMap<&str, String> =
        confs.iter().map(|c| (*c, std::fs::read_to_string(kdir.join(c)).unwrap())).collect();

    let dry = renew(
        &dir,
        &["--validity", "4000d", "--dry-run", "--kubeconfig-dir", kdir.to_str().unwrap()],
    );
    assert_eq!(dry.status.code(), Some(0), "{}", String::from_utf8_lossy(&dry.stderr));
    assert!(String::from_utf8_lossy(&dry.stdout).contains("would put the new ca.crt in"));
    for c in confs {
        assert_eq!(std::fs::read_to_string(kdir.join(c)).unwrap(), before[c], "dry run wrote {c}");
    }

    let out = renew(&dir, &["--validity", "4000d", "--kubeconfig-dir", kdir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let new_b64 = b64(&dir.join("ca.crt"));
    assert_ne!(new_b64, old_b64);
    for c in confs {
        let got = std::fs::read_to_string(kdir.join(c)).unwrap();
        assert_eq!(
            got,
            before[c].replace(&old_b64, &new_b64),
            "{c}: more than the CA data changed"
        );
    }
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(kdir.join("kubelet.conf")).unwrap();
    assert_eq!((md.mode() & 0o7777, md.uid(), md.gid()), (0o640, 1000, 1000));
    let md = std::fs::metadata(kdir.join("admin.conf")).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o600);
    assert_eq!(std::fs::read_to_string(kdir.join("other.conf")).unwrap(), fp);
    assert!(std::fs::symlink_metadata(kdir.join("link.conf")).unwrap().file_type().is_symlink());
    assert!(std::fs::read_to_string(t.path().join("target.conf")).unwrap().contains(&old_b64));
    // The kubeconfig's CA verifies the old apiserver leaf (openssl, from the decoded data).
    let ca = t.path().join("from-admin.crt");
    sh(t.path(), &format!("printf %s '{new_b64}' | base64 -d > {}", ca.display()));
    let (ok, msg) = verify(&dir, ca.to_str().unwrap(), "apiserver.crt");
    assert!(ok, "{msg}");
}
