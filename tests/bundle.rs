//! `hapki keygen`, `hapki bundle`, `hapki verify` end to end, cross-checked with the stock
//! `age`, `tar`, `ssh-keygen -Y verify`, `sha256sum` and `openssl`.

#[path = "support/bundle.rs"]
mod bundle;

use std::os::unix::fs::PermissionsExt;

use bundle::*;
use predicates::str::contains;

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// The interface document's recipe, verbatim, on hapki's output; then the extracted files must
/// be byte-identical to the source PKI.
fn stock_recipe(fx: &Fixture, bundle: &std::path::Path, key: &std::path::Path) {
    let d = fx.dir.path();
    let b = tempfile::tempdir_in(d).unwrap();
    sh(
        &format!(
            "age -d -i {key} {bundle} > bundle.tar.gz && mkdir b && tar -xzf bundle.tar.gz -C b && cd b && \
             ssh-keygen -Y verify -f {trust} -I ops@example.com -n hapki-bundle -s SHA256SUMS.sig < SHA256SUMS && \
             sha256sum -c SHA256SUMS",
            key = key.display(),
            bundle = bundle.display(),
            trust = fx.trust.display()
        ),
        b.path(),
    );
    for n in SHARED {
        let got = std::fs::read(b.path().join("b/pki").join(n)).unwrap();
        assert_eq!(got, std::fs::read(fx.pki.join(n)).unwrap(), "{n} differs after extraction");
    }
}

#[test]
fn rsa_and_ecdsa_pkis_round_trip_and_pass_the_stock_tools() {
    for alg in ["rsa", "ec"] {
        let fx = Fixture::new(alg);
        let b = fx.encrypted("b.age");
        assert_eq!(mode(&b), 0o600, "bundle file mode");
        let out = fx.verify_cmd(&b).arg("--output").arg("json").assert().success();
        let j: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
        assert_eq!(j["ok"], true);
        assert_eq!(j["cluster"], "kubernetes");
        assert_eq!(j["files"].as_array().unwrap().len(), 8);
        // The signer fingerprint is what ssh-keygen prints for the key.
        let fp = sh("ssh-keygen -lf signer.pub | cut -d' ' -f2", fx.dir.path()).stdout;
        assert_eq!(j["signer"], String::from_utf8(fp).unwrap().trim());
        // The discovery hash is openssl's pipeline from kubeadm's docs.
        let h = sh(
            "openssl x509 -pubkey -noout -in pki/ca.crt | openssl pkey -pubin -outform der | sha256sum | cut -d' ' -f1",
            fx.dir.path(),
        )
        .stdout;
        assert_eq!(
            j["discovery_token_ca_cert_hash"],
            format!("sha256:{}", String::from_utf8(h).unwrap().trim())
        );
        // Per-file sha256 are sha256sum's.
        for f in j["files"].as_array().unwrap() {
            let n = f["name"].as_str().unwrap();
            assert_eq!(f["sha256"], sha256_hex(&std::fs::read(fx.pki.join(n)).unwrap()), "{n}");
        }
        stock_recipe(&fx, &b, &fx.age_key);
    }
}

#[test]
fn table_output_names_signer_principal_and_fingerprints() {
    let fx = Fixture::new("ec");
    let b = fx.encrypted("b.age");
    fx.verify(&b)
        .success()
        .stdout(contains("ops@example.com"))
        .stdout(contains("SHA256:"))
        .stdout(contains("etcd/ca.key"))
        .stdout(contains("discovery: sha256:"));
}

#[test]
fn stock_age_encryption_and_ssh_recipients_interoperate() {
    let fx = Fixture::new("ec");
    let d = fx.dir.path();
    // A tar.gz from hapki, encrypted by the stock age CLI, verifies with hapki.
    fx.plaintext("b.tgz");
    sh(&format!("age -r {} -o stock.age b.tgz", fx.age_recipient), d);
    fx.verify(&fx.path("stock.age")).success();

    // An ssh-ed25519 recipient: hapki encrypts, both hapki and stock age decrypt with the SSH key.
    sh("ssh-keygen -q -t ed25519 -N '' -C node -f node", d);
    let pubkey = std::fs::read_to_string(d.join("node.pub")).unwrap();
    fx.bundle("ssh.age", &["--recipient", pubkey.trim()]).success();
    hapki()
        .args(["verify", "ssh.age", "--trust", "allowed_signers", "--decrypt-key", "node"])
        .current_dir(d)
        .assert()
        .success();
    stock_recipe(&fx, &fx.path("ssh.age"), &d.join("node"));

    // @FILE recipients: an age key and an SSH key; each identity alone decrypts.
    std::fs::write(d.join("recipients"), format!("# ops\n{}\n\n{}", fx.age_recipient, pubkey))
        .unwrap();
    let at = format!("@{}", d.join("recipients").display());
    fx.bundle("multi.age", &["--recipient", &at]).success();
    fx.verify(&fx.path("multi.age")).success();
    hapki()
        .args(["verify", "multi.age", "--trust", "allowed_signers", "--decrypt-key", "node"])
        .current_dir(d)
        .assert()
        .success();
}

#[test]
fn never_writes_keys_in_clear_without_insecure_plaintext() {
    let fx = Fixture::new("ec");
    // Neither recipients nor --insecure-plaintext: usage error, no file.
    fx.bundle("none", &[]).code(2);
    assert!(!fx.path("none").exists());
    // Encrypted output holds no PEM and is not a gzip stream.
    let b = std::fs::read(fx.encrypted("b.age")).unwrap();
    assert!(b.starts_with(b"age-encryption.org/v1\n"));
    assert!(!b.windows(11).any(|w| w == b"PRIVATE KEY"));
    // A wrong identity cannot open it.
    sh("age-keygen -o other.key 2>/dev/null", fx.dir.path());
    hapki()
        .args(["verify", "b.age", "--trust", "allowed_signers", "--decrypt-key", "other.key"])
        .current_dir(fx.dir.path())
        .assert()
        .code(3)
        .stderr(contains("decrypt"));
    // An encrypted bundle without --decrypt-key is a usage error that says what to pass.
    hapki()
        .args(["verify", "b.age", "--trust", "allowed_signers"])
        .current_dir(fx.dir.path())
        .assert()
        .code(2)
        .stderr(contains("--decrypt-key"));
}

#[test]
fn same_input_and_time_give_identical_bytes() {
    let fx = Fixture::new("ec");
    let t = ["--insecure-plaintext", "--created-at", "2030-01-02T03:04:05Z"];
    fx.bundle("a.tgz", &t).success();
    fx.bundle("b.tgz", &t).success();
    let (a, b) =
        (std::fs::read(fx.path("a.tgz")).unwrap(), std::fs::read(fx.path("b.tgz")).unwrap());
    assert_eq!(a, b);
    // Owner 0:0 (root), mtime = created_at, kubeadm's modes, no directory entries.
    let listing =
        String::from_utf8(sh("tar --numeric-owner --full-time -tvzf a.tgz", fx.dir.path()).stdout)
            .unwrap();
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 11, "{listing}");
    for l in &lines {
        assert!(l.contains(" 0/0 "), "{l}");
        assert!(l.contains("2030-01-02 03:04:05"), "{l}");
    }
    assert!(
        lines[4].starts_with("-rw------- ") && lines[4].ends_with("pki/ca.key"),
        "{}",
        lines[4]
    );
    assert!(
        lines[3].starts_with("-rw-r--r-- ") && lines[3].ends_with("pki/ca.crt"),
        "{}",
        lines[3]
    );
    // serial defaults to created_at in Unix seconds.
    let manifest: serde_json::Value =
        serde_json::from_slice(&fx.entries(&fx.path("a.tgz"))[0].1).unwrap();
    assert_eq!(manifest["serial"], 1_893_553_445u64);
    assert_eq!(manifest["expires_at"], "2030-01-09T03:04:05Z");
}

#[test]
fn unknown_signer_is_named_with_its_fingerprint() {
    let fx = Fixture::new("ec");
    fx.encrypted("b.age");
    sh("ssh-keygen -q -t ed25519 -N '' -f other && echo \"x@y $(cut -d' ' -f1,2 other.pub)\" > other_signers", fx.dir.path());
    let fp =
        String::from_utf8(sh("ssh-keygen -lf signer.pub | cut -d' ' -f2", fx.dir.path()).stdout)
            .unwrap();
    hapki()
        .args(["verify", "b.age", "--trust", "other_signers", "--decrypt-key", "age.key"])
        .current_dir(fx.dir.path())
        .assert()
        .code(3)
        .stderr(contains(fp.trim()))
        .stderr(contains("allowed_signers"));
}

#[test]
fn a_trust_line_limited_to_other_namespaces_or_expired_is_refused() {
    let fx = Fixture::new("ec");
    let b = fx.encrypted("b.age");
    let d = fx.dir.path();
    sh("echo \"ops@example.com namespaces=\\\"git\\\" $(cut -d' ' -f1,2 signer.pub)\" > ns_signers", d);
    sh("echo \"ops@example.com valid-before=20200101 $(cut -d' ' -f1,2 signer.pub)\" > old_signers", d);
    for t in ["ns_signers", "old_signers"] {
        hapki()
            .args(["verify", b.to_str().unwrap(), "--trust", t, "--decrypt-key", "age.key"])
            .current_dir(d)
            .assert()
            .code(3)
            .stderr(contains("not allowed"));
    }
}

#[test]
fn a_signature_in_another_namespace_is_rejected() {
    let fx = Fixture::new("ec");
    let b = fx.plaintext("b.tgz");
    let (entries, mtime) = (fx.entries(&b), bundle_mtime(&b));
    let mut raws: Vec<Raw> =
        entries.iter().map(|(n, d)| Raw { mtime, ..Raw::file(n, d) }).collect();
    raws[2].data = fx.ssh_sign(&raws[1].data, "file");
    std::fs::write(fx.path("ns.tgz"), gzip(&raw_tar(&raws))).unwrap();
    fx.verify(&fx.path("ns.tgz")).code(3).stderr(contains("namespace"));
    // The same archive re-signed in the right namespace passes: the check above is the namespace.
    raws[2].data = fx.ssh_sign(&raws[1].data, "hapki-bundle");
    std::fs::write(fx.path("ok.tgz"), gzip(&raw_tar(&raws))).unwrap();
    fx.verify(&fx.path("ok.tgz")).success();
}

#[test]
fn one_flipped_bit_anywhere_is_rejected() {
    let fx = Fixture::new("ec");
    for name in ["p.tgz", "e.age"] {
        let b = if name.ends_with("tgz") { fx.plaintext(name) } else { fx.encrypted(name) };
        let orig = std::fs::read(&b).unwrap();
        let n = orig.len();
        let positions =
            [0, 1, 3, 9, 12, 40, 100, n / 4, n / 2, 3 * n / 4, n - 20, n - 9, n - 5, n - 1];
        for &pos in &positions {
            for bit in [0u8, 7] {
                let mut m = orig.clone();
                m[pos] ^= 1 << bit;
                let p = fx.path("flipped");
                std::fs::write(&p, &m).unwrap();
                let out = fx.verify(&p).get_output().clone();
                assert_eq!(
                    out.status.code(),
                    Some(3),
                    "{name}: bit {bit} at {pos}/{n} accepted: {:?}",
                    out
                );
                // README: exit 3 with one line naming what is wrong with the bundle.
                let stderr = String::from_utf8_lossy(&out.stderr);
                assert!(
                    stderr.starts_with("hapki: error: bundle rejected: ")
                        && stderr.trim_end().lines().count() == 1,
                    "{name}: bit {bit} at {pos}/{n}: not one line naming the problem: {stderr}"
                );
                assert!(out.stdout.is_empty(), "{name}: bit {bit} at {pos}/{n}: printed a report");
            }
        }
    }
}

fn rfc3339_from_now(d: time::Duration) -> String {
    (time::OffsetDateTime::now_utc() + d)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

#[test]
fn expired_and_future_bundles_are_rejected() {
    let fx = Fixture::new("ec");
    let two_hours_ago = rfc3339_from_now(time::Duration::hours(-2));
    fx.bundle(
        "old.tgz",
        &["--insecure-plaintext", "--created-at", &two_hours_ago, "--valid-for", "1h"],
    )
    .success();
    fx.verify(&fx.path("old.tgz")).code(3).stderr(contains("expired"));
    // Control: the same age with a longer validity passes.
    fx.bundle(
        "ok.tgz",
        &["--insecure-plaintext", "--created-at", &two_hours_ago, "--valid-for", "3h"],
    )
    .success();
    fx.verify(&fx.path("ok.tgz")).success();
    // An hour ahead is past the 5-minute skew; a minute ahead is within it.
    let hour_ahead = rfc3339_from_now(time::Duration::hours(1));
    fx.bundle("future.tgz", &["--insecure-plaintext", "--created-at", &hour_ahead]).success();
    fx.verify(&fx.path("future.tgz")).code(3).stderr(contains("future"));
    let minute_ahead = rfc3339_from_now(time::Duration::minutes(1));
    fx.bundle("skew.tgz", &["--insecure-plaintext", "--created-at", &minute_ahead]).success();
    fx.verify(&fx.path("skew.tgz")).success();
}

#[test]
fn an_incoherent_pki_is_refused_and_nothing_is_written() {
    let fx = Fixture::new("ec");
    // ca.key replaced by an unrelated key: kubeadm would only notice mid-join.
    sh("openssl ecparam -name prime256v1 -genkey -noout -out pki/ca.key", fx.dir.path());
    fx.bundle("b.age", &["--recipient", &fx.age_recipient.clone()])
        .code(3)
        .stderr(contains("ca.key"));
    let left: Vec<_> = std::fs::read_dir(fx.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains("hapki") || n.starts_with("b."))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    // A missing file is refused too.
    std::fs::remove_file(fx.pki.join("etcd/ca.crt")).unwrap();
    fx.bundle("b.age", &["--insecure-plaintext"]).code(3).stderr(contains("etcd/ca.crt"));
}

#[test]
fn keygen_makes_a_key_ssh_keygen_accepts_and_never_overwrites() {
    let d = tempfile::tempdir().unwrap();
    let out = hapki()
        .args(["keygen", "--out", "k", "--principal", "me@x"])
        .current_dir(d.path())
        .assert()
        .success();
    let stdout = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert_eq!(mode(&d.path().join("k")), 0o600);
    let fp =
        String::from_utf8(sh("ssh-keygen -lf k.pub | cut -d' ' -f2", d.path()).stdout).unwrap();
    assert!(stdout.contains(fp.trim()), "{stdout}");
    // The printed allowed_signers line works with ssh-keygen for a signature the key made.
    let line = stdout.lines().find(|l| l.starts_with("me@x ")).unwrap();
    std::fs::write(d.path().join("allowed"), format!("{line}\n")).unwrap();
    sh("echo hi > msg && ssh-keygen -q -Y sign -f k -n hapki-bundle msg && ssh-keygen -Y verify -f allowed -I me@x -n hapki-bundle -s msg.sig < msg", d.path());
    let before = std::fs::read(d.path().join("k")).unwrap();
    hapki()
        .args(["keygen", "--out", "k"])
        .current_dir(d.path())
        .assert()
        .code(2)
        .stderr(contains("exists"));
    assert_eq!(std::fs::read(d.path().join("k")).unwrap(), before);
}

#[test]
fn signing_with_a_passphrase_protected_key() {
    let fx = Fixture::new("ec");
    sh("ssh-keygen -q -t ed25519 -N sekret -f locked", fx.dir.path());
    // Without a controlling terminal (setsid), as from cron or CI: nobody to ask.
    let bin = assert_cmd::cargo::cargo_bin("hapki");
    let run = |env: Option<&str>| {
        let mut c = assert_cmd::Command::new("setsid");
        c.arg("-w")
            .arg(&bin)
            .args([
                "bundle",
                "--insecure-plaintext",
                "--sign-key",
                "locked",
                "--out",
                "l.tgz",
                "--pki-dir",
            ])
            .arg(&fx.pki)
            .current_dir(fx.dir.path())
            .env_remove("HAPKI_SIGN_KEY_PASSPHRASE");
        if let Some(p) = env {
            c.env("HAPKI_SIGN_KEY_PASSPHRASE", p);
        }
        c.assert()
    };
    run(None).code(2).stderr(contains("HAPKI_SIGN_KEY_PASSPHRASE"));
    run(Some("wrong")).code(2).stderr(contains("wrong passphrase"));
    run(Some("sekret")).success();

    // On a terminal (script(1) gives it one, fed from our stdin) hapki asks, without echo.
    let cmd = format!(
        "{} bundle --insecure-plaintext --sign-key locked --out t.tgz --pki-dir {}",
        bin.display(),
        fx.pki.display()
    );
    let typed = |pass: &str| {
        let mut c = std::process::Command::new("script");
        c.args(["-q", "-e", "-c", &cmd, "/dev/null"])
            .current_dir(fx.dir.path())
            .env_remove("HAPKI_SIGN_KEY_PASSPHRASE")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().expect("script(1) from util-linux");
        // Type only once asked (what a person does): input typed earlier is echoed by the
        // terminal before anyone could turn echo off.
        use std::io::{Read, Write};
        let mut out = child.stdout.take().unwrap();
        let mut screen = Vec::new();
        let mut b = [0u8; 256];
        while !String::from_utf8_lossy(&screen).contains("Passphrase for") {
            match out.read(&mut b).unwrap() {
                0 => break,
                n => screen.extend_from_slice(&b[..n]),
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
        child.stdin.take().unwrap().write_all(format!("{pass}\n").as_bytes()).unwrap();
        out.read_to_end(&mut screen).unwrap();
        let code = child.wait().unwrap().code();
        (code, String::from_utf8_lossy(&screen).into_owned())
    };
    let (code, screen) = typed("wrong");
    assert_eq!(code, Some(2), "{screen}");
    assert!(
        screen.contains("Passphrase for locked") && screen.contains("wrong passphrase"),
        "{screen}"
    );
    assert!(!screen.contains("wrong\r"), "the passphrase was echoed: {screen}");
    let (code, screen) = typed("sekret");
    assert_eq!(code, Some(0), "{screen}");
    assert!(!screen.contains("sekret"), "the passphrase was echoed: {screen}");
    assert!(fx.dir.path().join("t.tgz").exists());
}

/// A bundle written by hapki 0.1.0 in the compressed encoding it used for PKI-only bundles
/// (`tests/vectors/legacy-bundle`, made by that release) is refused on one line that says what
/// it is and what to do, plaintext or age-encrypted, by `verify` and by `push` (before any node
/// is contacted: the one given does not exist).
#[test]
fn a_bundle_in_the_old_compressed_encoding_is_refused_naming_the_fix() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/legacy-bundle");
    let tgz = dir.join("legacy-pki.tgz");
    let raw = std::fs::read(&tgz).unwrap();
    // What the vector is, by stock tools: flate2's gzip header (XFL 2, OS 255), eleven entries.
    assert_eq!(raw[..10], [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 0xff]);
    let listing = sh(&format!("tar -tzf {}", tgz.display()), &dir).stdout;
    assert_eq!(String::from_utf8(listing).unwrap().lines().count(), 11);
    // Control: the very same tar in the stored encoding verifies, so the refusal below is the
    // encoding's alone (not the signature, the entries or the dates).
    let mut tar = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&raw[..]), &mut tar).unwrap();
    let x = tempfile::tempdir().unwrap();
    let control = x.path().join("control.tgz");
    std::fs::write(&control, gzip(&tar)).unwrap();
    hapki()
        .args(["verify", control.to_str().unwrap(), "--trust"])
        .arg(dir.join("allowed_signers"))
        .assert()
        .success();

    let want = "hapki: error: bundle rejected: this bundle is in the compressed encoding of hapki 0.1.0 and before, which this hapki no longer reads; re-create it with `hapki bundle`\n";
    let age = dir.join("legacy-pki.tgz.age");
    let key = dir.join("age.key");
    let trust = dir.join("allowed_signers");
    let runs: [Vec<&std::ffi::OsStr>; 3] = [
        vec!["verify".as_ref(), tgz.as_ref()],
        vec!["verify".as_ref(), age.as_ref(), "--decrypt-key".as_ref(), key.as_ref()],
        vec!["push".as_ref(), tgz.as_ref(), "--nodes".as_ref(), "127.0.0.1:1".as_ref()],
    ];
    for args in runs {
        let out = hapki().args(&args).arg("--trust").arg(&trust).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {err}");
        assert_eq!(err, want, "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}
