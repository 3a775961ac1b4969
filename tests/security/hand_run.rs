//! Helpers for the node-side attacks: artifact bundles, pushes by inventory, and the node's
//! push script run by hand with the real signed bytes and whatever instructions a compromised
//! operator side would send.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;

use hapki::transport::{self, Backend, RemoteOutput};
use sha2::{Digest, Sha256};

use crate::fixture::{hapki, text, Fixture};
use crate::testbed::{TbNode, Testbed};

/// Node-private on the testbed (each node's own /etc/kubernetes).
pub const TB_ROOT: &str = "/etc/kubernetes/hapki-test";

/// The host-side path of a node-private `dest`.
pub fn on_node(n: &TbNode, dest: &str) -> PathBuf {
    let rest = dest.strip_prefix("/etc/kubernetes/").expect("a node-private dest");
    n.etc_kubernetes().join(rest)
}

/// An artifacts-only bundle of `files` (source name, dest, bytes, extra spec lines).
pub fn artifacts_bundle(
    fx: &Fixture,
    out: &str,
    serial: Option<u64>,
    files: &[(&str, &str, &[u8], &str)],
) -> PathBuf {
    let dir = fx.path(&format!("{out}.spec"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut spec = String::new();
    for (src, dest, bytes, extra) in files {
        std::fs::write(dir.join(src), bytes).unwrap();
        spec.push_str(&format!("[[artifacts]]\nsource = \"{src}\"\ndest = \"{dest}\"\n{extra}\n"));
    }
    std::fs::write(dir.join("artifacts.toml"), spec).unwrap();
    let path = fx.path(out);
    let mut c = hapki();
    c.args(["bundle", "--artifacts"]).arg(dir.join("artifacts.toml"));
    c.arg("--sign-key").arg(fx.signer()).arg("--out").arg(&path);
    if let Some(s) = serial {
        c.args(["--serial", &s.to_string()]);
    }
    c.assert().success();
    path
}

/// `hapki push BUNDLE --inventory … --output json` plus `extra`.
pub fn push(fx: &Fixture, tb: &Testbed, bundle: &Path, extra: &[&str]) -> Output {
    let inv = tb.inventory();
    let mut args = vec!["--inventory", inv.to_str().unwrap(), "--output", "json"];
    args.extend_from_slice(extra);
    fx.with_bundle("push", bundle, &args)
}

/// The per-node status and message of a JSON push report.
pub fn node_result(out: &Output, node: &str) -> (String, String) {
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(out)));
    let n = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == node)
        .unwrap_or_else(|| panic!("{node} not in the report: {}", text(out)));
    (n["status"].as_str().unwrap().to_string(), n["message"].as_str().unwrap().to_string())
}

/// Runs `cmd` on the host, asserting success.
pub fn sh(cmd: &str) -> String {
    let out = std::process::Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(out.status.success(), "`{cmd}` failed: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The parts of a plaintext bundle, as stock `tar` extracts them.
pub struct Parts {
    pub dir: PathBuf,
    pub manifest: serde_json::Value,
    /// The allowed_signers line the operator side sends (the fixture's signer).
    pub allowed: String,
}

impl Parts {
    pub fn extract(fx: &Fixture, bundle: &Path) -> Parts {
        let dir = fx.path(&format!("{}.x", bundle.file_name().unwrap().to_string_lossy()));
        std::fs::create_dir_all(&dir).unwrap();
        sh(&format!("tar -xzf '{}' -C '{}'", bundle.display(), dir.display()));
        let manifest =
            serde_json::from_slice(&std::fs::read(dir.join("bundle.json")).unwrap()).unwrap();
        let allowed = std::fs::read_to_string(fx.allowed()).unwrap();
        Parts { dir, manifest, allowed }
    }

    pub fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.dir.join(name)).unwrap()
    }

    /// What bundle.json says of artifact `i`: (name, dest, mode, owner, after).
    pub fn signed(&self, i: usize) -> [String; 5] {
        let a = &self.manifest["artifacts"][i];
        let s = |k: &str| a[k].as_str().unwrap_or("-").to_string();
        [s("name"), s("dest"), s("mode"), s("owner"), s("after")]
    }
}

/// One artifact instruction as the node script takes it.
#[derive(Clone)]
pub struct Instr {
    pub name: String,
    pub dest: String,
    pub mode: String,
    pub owner: String,
    pub after: String,
    pub bytes: Vec<u8>,
}

/// The node's push script, run by hand through the library's transport as root: first to read
/// the facts (decision `skip`), then with `decision` (install|replace|none and flags) and the
/// real signed parts, the given PKI parts (name, bytes, mode) and artifact instructions.
pub fn run_node_script(
    tb: &Testbed,
    node: &str,
    parts: &Parts,
    serial: u64,
    flags: &str,
    pki: &[(&str, Vec<u8>, &str)],
    arts: &[Instr],
) -> RemoteOutput {
    let t = transport::transport(Backend::Builtin).unwrap();
    let script = hapki::node::push_script();
    let mut args = vec!["/etc/kubernetes".to_string(), "/var/lib/hapki".to_string()];
    args.extend(arts.iter().map(|a| a.dest.clone()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut s = t.connect(&tb.target(node)).unwrap();
    let facts = s.run(&script, &args, &mut &b"skip\n"[..]).unwrap();
    let state: String = String::from_utf8_lossy(&facts.stdout)
        .lines()
        .filter(|l| l.starts_with("S "))
        .map(|l| format!("{l}\n"))
        .collect();
    let token = hex::encode(Sha256::digest(state.as_bytes()));
    let allowed = &parts.allowed;
    let action = if pki.is_empty() { "none" } else { "install" };
    let mut line = format!("{action} ops {token} {serial} 20260101T000000Z-handrun {flags}");
    let mut data = Vec::new();
    let mut add = |line: &mut String, name: &str, bytes: &[u8], mode: &str, tail: &str| {
        line.push_str(&format!(" {name} {} {mode}{tail}", bytes.len()));
        data.extend_from_slice(bytes);
    };
    add(&mut line, "allowed_signers", allowed.as_bytes(), "0600", "");
    for n in ["bundle.json", "SHA256SUMS", "SHA256SUMS.sig"] {
        add(&mut line, n, &parts.read(n), "0600", "");
    }
    for (name, bytes, mode) in pki {
        add(&mut line, &format!("pki/{name}"), bytes, mode, "");
    }
    for a in arts {
        let tail = format!(" {} {} {}", a.dest, a.owner, a.after);
        add(&mut line, &a.name, &a.bytes, &a.mode, &tail);
    }
    line.push('\n');
    let mut stdin = line.into_bytes();
    stdin.extend_from_slice(&data);
    stdin.extend_from_slice(b"commit\n");
    let mut s = t.connect(&tb.target(node)).unwrap();
    s.run(&script, &args, &mut &stdin[..]).unwrap()
}

/// stderr of a remote run, for messages.
pub fn stderr(o: &RemoteOutput) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
