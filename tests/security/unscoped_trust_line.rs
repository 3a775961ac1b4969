//! Attack: a shared allowed_signers file holds a line without `namespaces=` (a developer's
//! git-signing key). Whoever holds that key signs a bundle. The README's own stock check
//! (`ssh-keygen -Y verify -I ops -n hapki-bundle`) refuses it, so hapki must too: a bundle
//! verifies only under a line whose `namespaces=` lists `hapki-bundle`, or under a principal
//! named with `--principal` (ssh-keygen's `-I`). Every command that takes `--trust` obeys it.

use std::process::Command;

use crate::bundle::*;

/// `ssh-keygen -Y verify` of the bundle's SHA256SUMS: the independent verdict.
fn ssh_keygen_accepts(fx: &Fixture, trust: &str, principal: &str) -> bool {
    let d = fx.dir.path();
    Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ssh-keygen -Y verify -f {trust} -I {principal} -n hapki-bundle -s x/SHA256SUMS.sig < x/SHA256SUMS"
        ))
        .current_dir(d)
        .output()
        .unwrap()
        .status
        .success()
}

fn hapki_verify(fx: &Fixture, trust: &str, principals: &[&str]) -> std::process::Output {
    let mut c = hapki();
    c.args(["verify", "b.tgz", "--trust", trust]).current_dir(fx.dir.path());
    for p in principals {
        c.args(["--principal", p]);
    }
    c.output().unwrap()
}

#[test]
fn a_trust_line_without_namespaces_signs_nothing_unless_its_principal_is_named() {
    let fx = Fixture::new("ec");
    let d = fx.dir.path();
    fx.plaintext("b.tgz");
    sh("mkdir x && tar -xzf b.tgz -C x", d);
    let key = "$(cut -d' ' -f1,2 signer.pub)";
    // The developer's line (no namespaces=), the ops line done right, and one for git only.
    sh(&format!("echo \"dev@example.com {key}\" > dev_signers"), d);
    sh(&format!("echo \"ops namespaces=\\\"hapki-bundle\\\" {key}\" > ops_signers"), d);
    sh(&format!("echo \"dev@example.com namespaces=\\\"git\\\" {key}\" > git_signers"), d);

    // (trust file, --principal, must verify). ssh-keygen's verdict for the principal the README
    // uses (ops, or the one named) must agree with hapki's.
    let cases: &[(&str, &[&str], bool)] = &[
        ("dev_signers", &[], false),
        ("dev_signers", &["ops"], false),
        ("dev_signers", &["dev@example.com"], true),
        ("dev_signers", &["ops", "dev@example.com"], true),
        ("ops_signers", &[], true),
        ("ops_signers", &["ops"], true),
        ("ops_signers", &["dev@example.com"], false),
        ("git_signers", &["dev@example.com"], false),
        ("git_signers", &[], false),
    ];
    for (trust, principals, ok) in cases {
        let out = hapki_verify(&fx, trust, principals);
        let err = String::from_utf8_lossy(&out.stderr);
        let label = format!("{trust} --principal {principals:?}");
        if *ok {
            assert!(out.status.success(), "{label}: refused: {err}");
        } else {
            assert_eq!(out.status.code(), Some(3), "{label}: {err}");
            assert_eq!(err.trim_end().lines().count(), 1, "{label}: {err}");
        }
        let want = if principals.is_empty() { vec!["ops"] } else { principals.to_vec() };
        let stock = want.iter().any(|p| ssh_keygen_accepts(&fx, trust, p));
        assert_eq!(stock, *ok, "{label}: ssh-keygen -Y verify says {stock}, hapki must agree");
    }
    // The refusal says how to fix it.
    let err = String::from_utf8_lossy(&hapki_verify(&fx, "dev_signers", &[]).stderr).to_string();
    assert!(err.contains("namespaces=\"hapki-bundle\"") && err.contains("--principal"), "{err}");
}

#[test]
fn every_command_that_takes_trust_refuses_the_unscoped_line() {
    let fx = Fixture::new("ec");
    let d = fx.dir.path();
    fx.plaintext("b.tgz");
    sh("echo \"dev@example.com $(cut -d' ' -f1,2 signer.pub)\" > dev_signers", d);
    // A node nobody listens on: the bundle is verified before anything connects.
    std::fs::write(
        d.join("inv.toml"),
        "[cluster]\nname = \"t\"\ncontrol_plane_endpoint = \"kubeapi.test:6443\"\n\n\
         [[nodes]]\nname = \"m1\"\naddress = \"127.0.0.1\"\nrole = \"control-plane\"\n\n\
         [[nodes]]\nname = \"m2\"\naddress = \"127.0.0.2\"\nrole = \"control-plane\"\n\n\
         [ssh]\nport = 9\n",
    )
    .unwrap();
    let runs: &[&[&str]] = &[
        &["push", "b.tgz", "--inventory", "inv.toml", "--trust", "dev_signers"],
        &["preflight", "--inventory", "inv.toml", "--bundle", "b.tgz", "--trust", "dev_signers"],
        &[
            "join",
            "--inventory",
            "inv.toml",
            "--bundle",
            "b.tgz",
            "--trust",
            "dev_signers",
            "--dry-run",
        ],
        &["audit", "--inventory", "inv.toml", "--bundle", "b.tgz", "--trust", "dev_signers"],
    ];
    for args in runs {
        let out = hapki().args(*args).current_dir(d).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {err}");
        assert!(err.contains("namespaces="), "{args:?}: {err}");
        // Naming the principal lifts the refusal (the command then fails on the dead node).
        let out = hapki()
            .args(*args)
            .args(["--principal", "dev@example.com"])
            .current_dir(d)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(3), "{args:?} --principal: {err}");
        assert!(!err.contains("namespaces="), "{args:?} --principal: {err}");
    }
}
