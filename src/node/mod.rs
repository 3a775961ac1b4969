//! What happens on a node, and what hapki learns from it.
//!
//! Nodes need nothing beyond a POSIX shell, coreutils and OpenSSH (`ssh-keygen` verifies the
//! bundle signature on the node), so the node side is fixed shell scripts shipped inside the
//! binary (`src/node/*.sh`): the read-only facts ([`facts_script`]) and the push ([`push_script`]:
//! facts, decision, install). Every value reaches them as
//! a positional argument quoted by the transport, never spliced into the script text, and key
//! material only ever travels on stdin, never in an argument (arguments are visible in `ps`).

pub mod facts;
pub mod trust;

/// Default location of kubeadm's files on a node.
pub const KUBE_DIR: &str = "/etc/kubernetes";
/// Where hapki keeps its per-node lock, install record and backups.
pub const STATE_DIR: &str = "/var/lib/hapki";

/// Where kubeadm's and hapki's files are on the nodes (configurable for tests and odd layouts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePaths {
    pub kube_dir: String,
    pub state_dir: String,
}

impl Default for NodePaths {
    fn default() -> Self {
        NodePaths { kube_dir: KUBE_DIR.into(), state_dir: STATE_DIR.into() }
    }
}

impl NodePaths {
    pub fn pki_dir(&self) -> String {
        format!("{}/pki", self.kube_dir.trim_end_matches('/'))
    }
}

const COMMON: &str = include_str!("common.sh");

/// The read-only facts script: `$1` kubernetes dir, `$2` state dir. Its output is parsed by
/// [`facts::NodeFacts::parse`].
pub fn facts_script() -> String {
    strip_comments(&format!("{COMMON}{}", include_str!("facts.sh")))
}

/// The script without its comment-only lines and its indentation: they are for readers of the
/// source, and the whole script travels as one SSH exec request, which libssh2 (the builtin
/// transport) caps at 35000 bytes a packet. The node scripts have no multi-line string with a
/// line starting with `#` or with blanks that matter (a unit test checks the result still
/// parses and fits; tests/node_scripts.rs that no here-document line is indented).
fn strip_comments(script: &str) -> String {
    let mut out = String::with_capacity(script.len());
    for line in script.lines() {
        let t = line.trim_start();
        if t.starts_with('#') && !t.starts_with("#!") {
            continue;
        }
        out.push_str(t);
        out.push('\n');
    }
    out
}

/// The backups script (`hapki push --list-backups` / `--prune-backups`): `$1` state dir,
/// `$2` list|prune|prune-dry, `$3` how many to keep, `$4` this run's id.
pub fn backups_script() -> String {
    strip_comments(&format!("{COMMON}{}", include_str!("backups.sh")))
}

/// The push script: the facts, then one decision line read from stdin (`skip`, or the install
/// script's arguments), then — for an install — the payload on the rest of stdin. One exec per
/// node instead of two: on nodes whose login shell is slow to start (a heavy `.bashrc` runs for
/// every SSH command) that halves the per-node cost. Arguments: the kubernetes and state
/// directories, then the artifact destinations whose state the facts describe.
pub fn push_script() -> String {
    strip_comments(&format!(
        "{COMMON}facts_main() {{\n{facts}\n}}\nhapki_k=$1 hapki_st=$2\nshift 2\n\
         facts_main \"$hapki_k\" \"$hapki_st\" \"\" pki \"$@\"\nset -- \"$hapki_k\" \"$hapki_st\"\n{decide}{install}",
        facts = include_str!("facts.sh"),
        decide = include_str!("decide.sh"),
        install = include_str!("install.sh"),
    ))
}

/// Exit codes the install script uses for outcomes the operator side must tell apart.
pub mod install_exit {
    /// The staged bundle failed its signature or hash check on the node.
    pub const VERIFY: i32 = 3;
    /// Another push holds the node's lock.
    pub const LOCKED: i32 = 75;
    /// The shared files changed between planning and installing.
    pub const CHANGED: i32 = 76;
    /// A path hapki would write through is a symlink.
    pub const UNSAFE_PATH: i32 = 77;
    /// The files were installed but a post-install action failed.
    pub const AFTER_FAILED: i32 = 78;
}

/// How much the facts script looks at.
#[derive(Debug, Clone, Copy)]
pub enum FactsScope<'a> {
    /// The PKI, kubeconfig CAs and hapki's state: for push and audit.
    Pki,
    /// Everything a join depends on as well; `resolve` is a name to look up on the node.
    Join { resolve: Option<&'a str> },
}

/// Why a node's state could not be read. Keeps the transport's error (and so its category: a
/// changed host key stays a host-key failure, exit 4, wherever it surfaces).
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Transport(#[from] crate::transport::TransportError),
    #[error("reading the node's state failed (exit {code}): {stderr}")]
    Script { code: i32, stderr: String },
    #[error("reading this machine's state failed: {stderr}")]
    LocalScript { stderr: String },
    #[error("could not run sh: {0}")]
    Spawn(std::io::Error),
    #[error(transparent)]
    Facts(#[from] facts::FactsError),
    #[error("reading {pki} failed: {stderr}")]
    ReadShared { pki: String, stderr: String },
    #[error("malformed reply from the node ({0})")]
    Reply(&'static str),
}

impl crate::error::Categorized for NodeError {
    fn category(&self) -> crate::error::Category {
        match self {
            NodeError::Transport(e) => e.category(),
            NodeError::Facts(e) => e.category(),
            NodeError::Spawn(_) => crate::error::Category::Unexpected,
            _ => crate::error::Category::NodesFailed,
        }
    }
}

/// Reads a node's facts over an open session.
pub fn read_facts(
    session: &mut dyn crate::transport::Session,
    paths: &NodePaths,
    scope: FactsScope,
) -> Result<facts::NodeFacts, NodeError> {
    read_facts_with(session, paths, scope, &[])
}

/// [`read_facts`], also describing (and hashing) each of `artifact_dests`.
pub fn read_facts_with(
    session: &mut dyn crate::transport::Session,
    paths: &NodePaths,
    scope: FactsScope,
    artifact_dests: &[&str],
) -> Result<facts::NodeFacts, NodeError> {
    let (resolve, scope) = match scope {
        FactsScope::Pki => ("", "pki"),
        FactsScope::Join { resolve } => (resolve.unwrap_or(""), "join"),
    };
    let mut args = vec![paths.kube_dir.as_str(), paths.state_dir.as_str(), resolve, scope];
    args.extend_from_slice(artifact_dests);
    let out = session.run(&facts_script(), &args, &mut std::io::empty())?;
    if out.code.unwrap_or(-1) != 0 {
        let (code, stderr) = (out.code.unwrap_or(-1), stderr_tail(&out.stderr));
        return Err(NodeError::Script { code, stderr });
    }
    Ok(facts::NodeFacts::parse(&out.stdout, &paths.pki_dir())?)
}

/// The last line of a remote stderr, for one-line messages.
pub fn stderr_tail(stderr: &[u8]) -> String {
    let s = String::from_utf8_lossy(stderr);
    let line = s.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
    let line = line.strip_prefix("hapki: ").unwrap_or(line);
    line.chars().take(300).collect()
}

/// Runs the facts script on this machine (for `audit --local`), with the same parser.
pub fn read_facts_local(paths: &NodePaths) -> Result<facts::NodeFacts, NodeError> {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(facts_script())
        .arg("hapki")
        .arg(&paths.kube_dir)
        .arg(&paths.state_dir)
        .arg("")
        .arg("pki")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(NodeError::Spawn)?;
    if !out.status.success() {
        return Err(NodeError::LocalScript { stderr: stderr_tail(&out.stderr) });
    }
    Ok(facts::NodeFacts::parse(&out.stdout, &paths.pki_dir())?)
}

/// Reads the eight shared files from a node, for `hapki bundle --from NODE`. Missing files are
/// left out (the bundle's coherence check names them).
pub fn read_shared_files(
    session: &mut dyn crate::transport::Session,
    paths: &NodePaths,
) -> Result<Vec<crate::pki::PkiFile>, NodeError> {
    let script = format!("{COMMON}{}", include_str!("read_shared.sh"));
    let pki = paths.pki_dir();
    let out = session.run(&script, &[pki.as_str()], &mut std::io::empty())?;
    if !out.success() {
        return Err(NodeError::ReadShared { pki, stderr: stderr_tail(&out.stderr) });
    }
    parse_shared_files(&out.stdout)
}

fn parse_shared_files(mut data: &[u8]) -> Result<Vec<crate::pki::PkiFile>, NodeError> {
    // The largest sane PEM file; anything bigger is not a kubeadm key or certificate.
    const MAX: usize = 1024 * 1024;
    let mut files = Vec::new();
    while !data.is_empty() {
        let nl = data.iter().position(|&b| b == b'\n').ok_or(NodeError::Reply("no header"))?;
        let header = std::str::from_utf8(&data[..nl]).map_err(|_| NodeError::Reply("header"))?;
        data = &data[nl + 1..];
        let f: Vec<&str> = header.split(' ').collect();
        match f.as_slice() {
            ["M", _] => {}
            ["F", name, mode, size] => {
                let spec = crate::pki::shared_file(name).ok_or(NodeError::Reply("unknown file"))?;
                let size: usize = size.parse().map_err(|_| NodeError::Reply("size"))?;
                if size > MAX || size > data.len() {
                    return Err(NodeError::Reply("size"));
                }
                files.push(crate::pki::PkiFile {
                    name: spec.name.to_string(),
                    bytes: data[..size].to_vec(),
                    mode: u32::from_str_radix(mode, 8).ok(),
                });
                data = &data[size..];
            }
            _ => return Err(NodeError::Reply("header")),
        }
    }
    Ok(files)
}

/// `main` after src/node/cluster_info.sh's `patch_cluster_info` (the kube-public/cluster-info
/// update `pki renew-ca` and `rotate` share; its header says what the script sets).
pub(crate) fn with_cluster_info(main: &str) -> String {
    format!("{}{main}", include_str!("cluster_info.sh"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_files_reply_is_parsed_exactly_and_bounded() {
        let reply = b"F ca.crt 644 3\nabcM sa.key\nF etcd/ca.key 600 2\nxy";
        let files = parse_shared_files(reply).unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].bytes, b"abc");
        assert_eq!(files[1].name, "etcd/ca.key");
        assert_eq!(files[1].mode, Some(0o600));
        assert!(parse_shared_files(b"F ca.crt 644 9\nabc").is_err(), "short body");
        assert!(parse_shared_files(b"F ../x 644 1\na").is_err(), "unknown name");
        assert!(parse_shared_files(b"garbage").is_err());
    }

    #[test]
    fn the_push_script_parses_and_fits_one_ssh_exec_request() {
        let script = push_script();
        let cmd = crate::transport::remote_command(&script, &[], true).unwrap();
        // It goes as it is (packing costs every node four processes), with room for a few
        // artifact destinations among the arguments before it would be packed.
        let room = crate::transport::PLAIN_LIMIT - 1024;
        assert!(cmd.len() < room, "the push command is {} bytes", cmd.len());
        assert!(!cmd.contains("base64 -d"), "packed");
        let out = std::process::Command::new("sh").args(["-n", "-c", &script]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(!script.lines().any(|l| l.trim_start().starts_with("# ")));
    }

    #[test]
    fn the_backups_script_parses() {
        let script = backups_script();
        let out = std::process::Command::new("sh").args(["-n", "-c", &script]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    #[test]
    fn facts_script_runs_on_a_plain_shell() {
        let dir = tempfile::tempdir().unwrap();
        let paths = NodePaths {
            kube_dir: dir.path().join("k").display().to_string(),
            state_dir: dir.path().join("s").display().to_string(),
        };
        std::fs::create_dir_all(dir.path().join("k/pki/etcd")).unwrap();
        std::fs::write(dir.path().join("k/pki/ca.crt"), b"x").unwrap();
        let f = read_facts_local(&paths).unwrap();
        assert_eq!(
            f.shared["ca.crt"].sha256.as_deref(),
            Some("2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881")
        );
        assert_eq!(f.shared["ca.key"].kind, facts::PathKind::Missing);
    }
}
