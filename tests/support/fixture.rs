//! A shared PKI, a signing key, its allowed_signers file and bundles, made with the hapki CLI
//! itself, for the tests that push, join and audit on the testbed.
#![allow(dead_code)]

#[path = "cli.rs"]
mod cli;

use std::path::{Path, PathBuf};
use std::process::Output;

#[allow(unused_imports)] // each test uses its own part
pub use cli::{hapki, hapki_process, text, SHARED};

pub struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Fixture {
    /// A fresh PKI (`pki init`, RSA-2048 as kubeadm's default) and an Ed25519 signing key.
    pub fn new() -> Fixture {
        let fx = Fixture { dir: tempfile::tempdir().expect("tempdir") };
        fx.init_pki("pki");
        hapki().args(["keygen", "--principal", "ops", "--out"]).arg(fx.signer()).assert().success();
        let pubkey = std::fs::read_to_string(fx.signer().with_extension("pub")).unwrap();
        let key: Vec<&str> = pubkey.split_whitespace().take(2).collect();
        std::fs::write(
            fx.allowed(),
            format!("ops namespaces=\"hapki-bundle\" {}\n", key.join(" ")),
        )
        .unwrap();
        fx
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    pub fn pki(&self) -> PathBuf {
        self.path("pki")
    }
    pub fn signer(&self) -> PathBuf {
        self.path("signer")
    }
    pub fn allowed(&self) -> PathBuf {
        self.path("allowed_signers")
    }

    /// Another, unrelated PKI under `rel` (a different cluster's CAs).
    pub fn init_pki(&self, rel: &str) -> PathBuf {
        let dir = self.path(rel);
        hapki().args(["pki", "init", "--pki-dir"]).arg(&dir).assert().success();
        dir
    }

    /// A bundle of `pki_dir`, encrypted to the signer's SSH key.
    pub fn bundle_of(&self, pki_dir: &Path, name: &str, serial: Option<u64>) -> PathBuf {
        let out = self.path(name);
        let recipient = std::fs::read_to_string(self.signer().with_extension("pub")).unwrap();
        let mut c = hapki();
        c.args(["bundle", "--pki-dir"]).arg(pki_dir);
        c.arg("--sign-key").arg(self.signer());
        c.args(["--recipient", recipient.trim(), "--out"]).arg(&out);
        if let Some(s) = serial {
            c.args(["--serial", &s.to_string()]);
        }
        c.assert().success();
        out
    }

    pub fn bundle(&self) -> PathBuf {
        self.bundle_of(&self.pki(), "bundle.tar.gz.age", None)
    }

    /// `hapki SUBCOMMAND BUNDLE --trust … --decrypt-key …` plus `args`.
    pub fn with_bundle(&self, sub: &str, bundle: &Path, args: &[&str]) -> Output {
        let mut c = hapki();
        c.arg(sub).arg(bundle).arg("--trust").arg(self.allowed());
        c.arg("--decrypt-key").arg(self.signer());
        c.args(args);
        c.output().expect("run hapki")
    }

    /// `hapki audit --inventory INVENTORY --bundle BUNDLE --trust … --decrypt-key … --output OUTPUT`.
    pub fn audit(&self, inventory: &Path, bundle: &Path, output: &str) -> Output {
        let mut c = hapki();
        c.args(["audit", "--inventory"]).arg(inventory).args(["--output", output]);
        c.arg("--bundle").arg(bundle).arg("--trust").arg(self.allowed());
        c.arg("--decrypt-key").arg(self.signer());
        c.output().expect("run hapki")
    }
}

/// A `--output json` report (push, audit), or a panic showing what the command printed.
pub fn report(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(out)))
}

/// A push report's nodes: name → (status, message).
pub fn statuses(out: &Output) -> std::collections::BTreeMap<String, (String, String)> {
    report(out)["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("no nodes in the report: {}", text(out)))
        .iter()
        .map(|n| {
            let s = |k: &str| n[k].as_str().unwrap_or_default().to_string();
            (s("node"), (s("status"), s("message")))
        })
        .collect()
}
