//! The node scripts as code of their own: run straight from `src/node/*.sh` against a temporary
//! tree with `sh`, no testbed, no SSH. Expected values come from coreutils (`sha256sum`),
//! `ssh-keygen` and literals, never from hapki.
//!
//! Without root, PATH stubs stand in for what only root may do: `chown` records its arguments
//! instead, and `stat` reports the caller's own files as root's (the install refuses to write
//! keys through directories anyone but root could change). As root they are not needed for
//! `stat`; `chown` is stubbed either way so the test sees what the script asked for.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const COMMON: &str = include_str!("../src/node/common.sh");
const FACTS: &str = include_str!("../src/node/facts.sh");
const INSTALL: &str = include_str!("../src/node/install.sh");
const NODE_SCRIPTS: [&str; 13] = [
    "common.sh",
    "facts.sh",
    "decide.sh",
    "install.sh",
    "backups.sh",
    "read_shared.sh",
    "trust_install.sh",
    "join.sh",
    "join_etcd_health.sh",
    "join_read_cni.sh",
    "join_write_cni.sh",
    "run_kubeadm.sh",
    "restart_kubelet.sh",
];
/// kubeadm's eight shared files, written out (the order hapki and the scripts use).
const SHARED: [&str; 8] = [
    "ca.crt",
    "ca.key",
    "sa.key",
    "sa.pub",
    "front-proxy-ca.crt",
    "front-proxy-ca.key",
    "etcd/ca.crt",
    "etcd/ca.key",
];

fn tool(cmd: &str, args: &[&str], stdin: &[u8]) -> Vec<u8> {
    let mut c = Command::new(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    c.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(out.status.success(), "{cmd} {args:?} failed");
    out.stdout
}

/// SHA-256 hex by coreutils.
fn sha256sum(data: &[u8]) -> String {
    String::from_utf8(tool("sha256sum", &[], data)).unwrap()[..64].to_string()
}

fn shell_value<'a>(script: &'a str, name: &str) -> Option<&'a str> {
    script.split_whitespace().find_map(|w| w.strip_prefix(&format!("{name}=")))
}

#[test]
fn the_shell_constants_are_the_rust_ones() {
    let shared = COMMON
        .lines()
        .find_map(|l| l.strip_prefix("SHARED='"))
        .and_then(|l| l.strip_suffix('\''))
        .expect("common.sh defines SHARED='…'");
    let rust: Vec<&str> = hapki::pki::SHARED_FILES.iter().map(|f| f.name).collect();
    assert_eq!(shared.split(' ').collect::<Vec<_>>(), rust);
    assert_eq!(rust, SHARED);
    use hapki::node::install_exit as x;
    for (name, code) in [
        ("EX_LOCKED", x::LOCKED),
        ("EX_CHANGED", x::CHANGED),
        ("EX_UNSAFE_PATH", x::UNSAFE_PATH),
        ("EX_AFTER_FAILED", x::AFTER_FAILED),
    ] {
        assert_eq!(shell_value(COMMON, name), Some(code.to_string().as_str()), "{name}");
    }
    assert_eq!((x::LOCKED, x::CHANGED, x::UNSAFE_PATH, x::AFTER_FAILED), (75, 76, 77, 78));
    // Nowhere else is a code of 75-78 or the list written out: a script says `die "$EX_…"`.
    for f in NODE_SCRIPTS {
        let text = std::fs::read_to_string(Path::new("src/node").join(f)).unwrap();
        for code in 75..=78 {
            for pat in [format!("die {code} "), format!("exit {code}")] {
                assert!(!text.contains(&pat), "{f} writes `{pat}`; use the EX_ name");
            }
        }
        if f != "common.sh" {
            assert!(!text.contains("front-proxy-ca.key etcd/ca.crt"), "{f} repeats the list");
        }
    }
}

#[test]
fn every_node_script_is_a_file_that_parses() {
    for f in NODE_SCRIPTS {
        let text = std::fs::read_to_string(Path::new("src/node").join(f)).unwrap();
        let script = if f == "common.sh" { text } else { format!("{COMMON}{text}") };
        let out = Command::new("sh").args(["-n", "-c", &script]).output().unwrap();
        assert!(out.status.success(), "{f}: {}", String::from_utf8_lossy(&out.stderr));
    }
    // hapki sends them without indentation (src/node/mod.rs): no here-document line may start
    // with a blank that matters.
    for f in NODE_SCRIPTS {
        let text = std::fs::read_to_string(Path::new("src/node").join(f)).unwrap();
        let mut end: Option<String> = None;
        for l in text.lines() {
            match &end {
                Some(w) if l == w => end = None,
                Some(_) => assert_eq!(l, l.trim_start(), "{f}: an indented here-document line"),
                None => {
                    let word = l.rsplit_once("<<").map(|(_, w)| w.trim());
                    end = word
                        .filter(|w| w.chars().all(|c| c.is_ascii_uppercase()) && !w.is_empty())
                        .map(String::from);
                }
            }
        }
        assert!(end.is_none(), "{f}: an unterminated here-document");
    }
    // No script is written in Rust: every node command hapki runs comes from these files.
    for rs in ["src/node/mod.rs", "src/node/trust.rs", "src/join.rs"] {
        let Ok(text) = std::fs::read_to_string(rs) else { continue };
        assert!(!text.contains("set -eu\\n"), "{rs} holds an inline script");
    }
}

/// A temporary tree, owned by whoever runs the test, outside the world-writable /tmp (so its
/// directories are root-only when root runs it), with PATH stubs in `bin/`.
struct Tree {
    _dir: tempfile::TempDir,
    root: PathBuf,
    bin: PathBuf,
}

impl Tree {
    fn new() -> Tree {
        let dir = tempfile::Builder::new()
            .prefix("node-scripts")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap();
        let root = dir.path().to_path_buf();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        let bin = root.join("bin");
        std::fs::create_dir(&bin).unwrap();
        let t = Tree { _dir: dir, root, bin };
        t.stub("chown", "printf '%s\\n' \"$*\" >> \"$STUB_LOG/chown\"");
        // Non-root: the caller's files count as root's for the install's ownership check.
        t.stub(
            "stat",
            "if [ \"$2\" = '%u %a %n' ]; then /usr/bin/stat \"$@\" | sed \"s/^$(id -u) /0 /\"; \
             else exec /usr/bin/stat \"$@\"; fi",
        );
        t
    }

    fn stub(&self, name: &str, body: &str) {
        let p = self.bin.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// Every call of these programs is counted (a wrapper logs, then runs the real one).
    fn count(&self, names: &[&str]) {
        for n in names {
            let real = String::from_utf8(tool("sh", &["-c", &format!("command -v {n}")], b""))
                .unwrap()
                .trim()
                .to_string();
            self.stub(n, &format!("echo {n} >> \"$STUB_LOG/calls\"; exec {real} \"$@\""));
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn calls(&self) -> usize {
        std::fs::read_to_string(self.path("calls")).map(|s| s.lines().count()).unwrap_or(0)
    }

    fn run(&self, script: &str, args: &[&str], stdin: &[u8]) -> Output {
        let path = format!("{}:{}", self.bin.display(), std::env::var("PATH").unwrap());
        let mut c = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("hapki")
            .args(args)
            .env("PATH", path)
            .env("STUB_LOG", &self.root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = c.stdin.take().unwrap();
        input.write_all(stdin).unwrap();
        drop(input);
        c.wait_with_output().unwrap()
    }
}

fn facts(t: &Tree, k: &Path, extra: &[&str]) -> String {
    let st = t.path("state");
    let mut args = vec![k.to_str().unwrap(), st.to_str().unwrap(), "", "pki"];
    args.extend_from_slice(extra);
    let out = t.run(&format!("{COMMON}{FACTS}"), &args, b"");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn write(p: &Path, data: &[u8], mode: u32) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn facts_describe_every_file_with_coreutils_hashes_and_a_constant_number_of_programs() {
    let t = Tree::new();
    let k = t.path("k");
    let pki = k.join("pki");
    write(&pki.join("ca.crt"), b"-----BEGIN CERTIFICATE-----\nca\n", 0o644);
    write(&pki.join("ca.key"), b"key\0with a NUL", 0o600);
    write(&pki.join("etcd/ca.crt"), b"etcd ca, no newline", 0o644);
    write(&pki.join("with space.crt"), b"spaced", 0o640);
    std::os::unix::fs::symlink("/etc/passwd", pki.join("sa.key")).unwrap();
    write(
        &k.join("admin.conf"),
        b"clusters:\n- cluster:\n    certificate-authority-data: \"QUJD\"\n    server: x\n",
        0o600,
    );
    t.count(&["stat", "sha256sum", "awk", "cat", "base64", "head", "grep", "sed", "date", "id"]);
    let out = facts(&t, &k, &[]);
    let lines: Vec<&str> = out.lines().collect();
    let line = |prefix: &str| {
        *lines.iter().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("{prefix}: {out}"))
    };
    let p = pki.display();
    assert_eq!(
        line("S file 644"),
        format!(
            "S file 644 {} {} 31 {} {p}/ca.crt",
            uid(),
            gid(),
            sha256sum(b"-----BEGIN CERTIFICATE-----\nca\n")
        )
    );
    assert_eq!(
        line(&format!("S file 600 {} {} 14", uid(), gid())),
        format!("S file 600 {} {} 14 {} {p}/ca.key", uid(), gid(), sha256sum(b"key\0with a NUL"))
    );
    assert_eq!(line("S link"), format!("S link - - - - - {p}/sa.key"));
    assert_eq!(line("S missing - - - - - "), format!("S missing - - - - - {p}/sa.pub"));
    assert!(lines.contains(
        &format!("X file 640 {} {} 6 {} {p}/with space.crt", uid(), gid(), sha256sum(b"spaced"))
            .as_str()
    ));
    let etcd = format!("D dir 755 {} {} ", uid(), gid());
    assert!(
        lines.iter().any(|l| l.starts_with(&etcd) && l.ends_with(&format!(" - {p}/etcd"))),
        "{out}"
    );
    assert_eq!(line("A "), "A admin.conf QUJD");
    // The certificates' contents: the .crt files in their X order, in one base64 line.
    let want: Vec<u8> =
        [&b"-----BEGIN CERTIFICATE-----\nca\n"[..], b"spaced", b"etcd ca, no newline"].concat();
    let ba = line("BA ").strip_prefix("BA ").unwrap();
    assert_eq!(tool("base64", &["-d"], ba.as_bytes()), want);
    assert_eq!(*lines.last().unwrap(), "Z");
    // hapki's parser reads it as the script meant: every certificate, sliced and checked.
    let f =
        hapki::node::facts::NodeFacts::parse(out.as_bytes(), &pki.display().to_string()).unwrap();
    assert_eq!(f.certificates["etcd/ca.crt"], b"etcd ca, no newline");
    assert_eq!(f.certificates["with space.crt"], b"spaced");
    assert_eq!(f.certificates.len(), 3);

    // Thirty more files cost no more programs.
    let few = t.calls();
    assert!(few > 0 && few <= 12, "{few} programs for a handful of files");
    for i in 0..30 {
        write(&pki.join(format!("extra-{i}.crt")), format!("cert {i}\n").as_bytes(), 0o644);
    }
    std::fs::remove_file(t.path("calls")).unwrap();
    let out = facts(&t, &k, &[]);
    assert_eq!(t.calls(), few, "the programs the facts run grew with the files");
    assert_eq!(out.lines().filter(|l| l.starts_with("X file")).count(), 34);
}

fn uid() -> u32 {
    String::from_utf8(tool("id", &["-u"], b"")).unwrap().trim().parse().unwrap()
}
fn gid() -> u32 {
    String::from_utf8(tool("id", &["-g"], b"")).unwrap().trim().parse().unwrap()
}

/// A signed bundle's parts as the operator sends them: names, contents and modes.
struct Parts {
    list: Vec<(String, Vec<u8>, &'static str)>,
    principal: &'static str,
}

/// Signs with ssh-keygen (independent of hapki): allowed_signers, bundle.json, SHA256SUMS,
/// its signature, then the eight files, each with bytes a text tool would trip over.
fn signed_parts(dir: &Path, serial: u32, files: &BTreeMap<&str, Vec<u8>>) -> Parts {
    let key = dir.join("signer");
    if !key.exists() {
        tool(
            "ssh-keygen",
            &["-q", "-t", "ed25519", "-N", "", "-C", "t", "-f", key.to_str().unwrap()],
            b"",
        );
    }
    let public = std::fs::read_to_string(dir.join("signer.pub")).unwrap();
    let principal = "ops@test";
    let allowed = format!("{principal} namespaces=\"hapki-bundle\" {}", public.trim());
    let bundle_json = format!("{{\n  \"serial\": {serial},\n  \"format\": 1\n}}\n").into_bytes();
    let mut sums = format!("{}  bundle.json\n", sha256sum(&bundle_json));
    for (n, data) in files {
        sums.push_str(&format!("{}  pki/{n}\n", sha256sum(data)));
    }
    let sums_path = dir.join("SHA256SUMS");
    std::fs::write(&sums_path, &sums).unwrap();
    let _ = std::fs::remove_file(dir.join("SHA256SUMS.sig"));
    tool(
        "ssh-keygen",
        &[
            "-q",
            "-Y",
            "sign",
            "-n",
            "hapki-bundle",
            "-f",
            key.to_str().unwrap(),
            sums_path.to_str().unwrap(),
        ],
        b"",
    );
    let sig = std::fs::read(dir.join("SHA256SUMS.sig")).unwrap();
    let mut list = vec![
        ("allowed_signers".to_string(), format!("{allowed}\n").into_bytes(), "0644"),
        ("bundle.json".to_string(), bundle_json, "0644"),
        ("SHA256SUMS".to_string(), sums.into_bytes(), "0644"),
        ("SHA256SUMS.sig".to_string(), sig, "0644"),
    ];
    for (n, data) in files {
        let mode = if n.ends_with(".crt") { "0644" } else { "0600" };
        list.push((format!("pki/{n}"), data.clone(), mode));
    }
    Parts { list, principal }
}

/// The compare-and-swap token for eight missing files: sha256sum over the literal lines.
fn token_all_missing(pki: &Path) -> String {
    let lines: String =
        SHARED.iter().map(|n| format!("S missing - - - - - {}/{n}\n", pki.display())).collect();
    sha256sum(lines.as_bytes())
}

fn install(
    t: &Tree,
    k: &Path,
    parts: &Parts,
    token: &str,
    serial: u32,
    tamper: Option<usize>,
) -> Output {
    install_edited(t, k, parts, token, serial, tamper, |_| {})
}

/// [`install`], with `edit` applied to the whole stdin (payload and commit line) first.
fn install_edited(
    t: &Tree,
    k: &Path,
    parts: &Parts,
    token: &str,
    serial: u32,
    tamper: Option<usize>,
    edit: impl Fn(&mut Vec<u8>),
) -> Output {
    let st = t.path("state");
    let serial = serial.to_string();
    let mut args: Vec<String> = [
        k.to_str().unwrap(),
        st.to_str().unwrap(),
        "install",
        parts.principal,
        token,
        &serial,
        "20260101T000000-1",
        "-",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut stdin = Vec::new();
    for (i, (n, data, mode)) in parts.list.iter().enumerate() {
        args.extend([n.clone(), data.len().to_string(), mode.to_string()]);
        let mut data = data.clone();
        if tamper == Some(i) {
            data[0] ^= 1;
        }
        stdin.extend_from_slice(&data);
    }
    stdin.extend_from_slice(b"commit\n");
    edit(&mut stdin);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    t.run(&format!("{COMMON}{INSTALL}"), &args, &stdin)
}

/// An upload that ends inside a part, or that goes on after "commit": refused by name, nothing
/// installed, nothing staged left; the same upload whole installs (control).
#[test]
fn a_short_or_overlong_upload_installs_nothing() {
    let t = Tree::new();
    let k = t.path("k");
    std::fs::create_dir(&k).unwrap();
    let pki = k.join("pki");
    let files: BTreeMap<&str, Vec<u8>> =
        SHARED.iter().map(|n| (*n, format!("{n} content\n").into_bytes())).collect();
    let parts = signed_parts(&t.root, 3, &files);
    let token = token_all_missing(&pki);
    let staged = || {
        std::fs::read_dir(&k)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".hapki-stage"))
            .count()
    };
    // The commit line and the last 5 bytes of etcd/ca.key never arrive.
    let cut = |s: &mut Vec<u8>| s.truncate(s.len() - "commit\n".len() - 5);
    let out = install_edited(&t, &k, &parts, &token, 3, None, cut);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("came out short (truncated upload)"), "{err}");
    assert!(!pki.join("ca.key").exists());
    assert_eq!(staged(), 0);
    // Bytes after the commit line.
    let more = |s: &mut Vec<u8>| s.extend_from_slice(b"x");
    let out = install_edited(&t, &k, &parts, &token, 3, None, more);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("the upload has trailing bytes"), "{err}");
    assert!(!pki.join("ca.key").exists());
    assert_eq!(staged(), 0);
    // Control: whole, it installs.
    let out = install(&t, &k, &parts, &token, 3, None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(pki.join("etcd/ca.key")).unwrap(), b"etcd/ca.key content\n");
}

#[test]
fn install_stages_verifies_and_renames_byte_exact_files_with_kubeadms_modes() {
    let t = Tree::new();
    let k = t.path("k");
    std::fs::create_dir(&k).unwrap();
    let pki = k.join("pki");
    // Contents that cut across lines: NUL bytes, no final newline, a CR, an empty line.
    let files: BTreeMap<&str, Vec<u8>> = SHARED
        .iter()
        .enumerate()
        .map(|(i, n)| (*n, format!("{n}\0\r\n\n{i} no newline at the end").into_bytes()))
        .collect();
    let parts = signed_parts(&t.root, 7, &files);
    let token = token_all_missing(&pki);

    // A flipped byte in any part: refused (exit 3), nothing installed.
    for i in [1, 2, 3, 4, 11] {
        let out = install(&t, &k, &parts, &token, 7, Some(i));
        assert_eq!(
            out.status.code(),
            Some(3),
            "part {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!pki.join("ca.key").exists(), "part {i}");
    }
    // A token for another state: the compare-and-swap refuses (EX_CHANGED).
    let out = install(&t, &k, &parts, &"0".repeat(64), 7, None);
    assert_eq!(out.status.code(), Some(76), "{}", String::from_utf8_lossy(&out.stderr));

    let out = install(&t, &k, &parts, &token, 7, None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("installed\n"));
    for (n, data) in &files {
        let got = std::fs::read(pki.join(n)).unwrap();
        assert_eq!(sha256sum(&got), sha256sum(data), "{n}");
        let mode = std::fs::metadata(pki.join(n)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, if n.ends_with(".crt") { 0o644 } else { 0o600 }, "{n}");
    }
    assert_eq!(std::fs::read_to_string(t.path("state/last-serial")).unwrap(), "7\n");
    let chowned = std::fs::read_to_string(t.path("chown")).unwrap();
    for n in SHARED {
        assert!(chowned.contains(&format!(" pki/{n}")), "{n} not chowned to root: {chowned}");
    }
    // Nothing staged is left behind.
    let left: Vec<_> = std::fs::read_dir(&k)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".hapki-stage"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // The same bundle's token no longer matches the node: refused, the files stay.
    let out = install(&t, &k, &parts, &token, 7, None);
    assert_eq!(out.status.code(), Some(76));
    // An older serial: refused as a downgrade (with the current token).
    let facts_out = facts(&t, &k, &[]);
    let s_lines: String =
        facts_out.lines().filter(|l| l.starts_with("S ")).map(|l| format!("{l}\n")).collect();
    let now = sha256sum(s_lines.as_bytes());
    let older = signed_parts(&t.root, 6, &files);
    let out = install(&t, &k, &older, &now, 6, None);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("downgrade refused"));
}
