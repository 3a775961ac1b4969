//! What happens on a node, and what hapki learns from it.
//!
//! Nodes need nothing beyond a POSIX shell, coreutils and OpenSSH (`ssh-keygen` verifies the
//! bundle signature on the node), so the node side is two fixed shell scripts shipped inside
//! the binary: [`FACTS_SCRIPT`] (read-only) and [`INSTALL_SCRIPT`]. Every value reaches them as
//! a positional argument quoted by the transport, never spliced into the script text, and key
//! material only ever travels on stdin, never in an argument (arguments are visible in `ps`).

pub mod facts;

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
    format!("{COMMON}{}", include_str!("facts.sh"))
}

/// The install script; see the argument list at its top.
pub fn install_script() -> String {
    format!("{COMMON}{}", include_str!("install.sh"))
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
}

/// Reads a node's facts over an open session.
pub fn read_facts(
    session: &mut dyn crate::transport::Session,
    paths: &NodePaths,
    resolve: Option<&str>,
) -> Result<facts::NodeFacts, String> {
    let args = [paths.kube_dir.as_str(), paths.state_dir.as_str(), resolve.unwrap_or("")];
    let out =
        session.run(&facts_script(), &args, &mut std::io::empty()).map_err(|e| e.to_string())?;
    if out.code.unwrap_or(-1) != 0 {
        return Err(format!(
            "reading the node's state failed (exit {}): {}",
            out.code.unwrap_or(-1),
            stderr_tail(&out.stderr)
        ));
    }
    let pki = paths.pki_dir();
    facts::NodeFacts::parse(&out.stdout, &pki).map_err(|e| e.to_string())
}

/// The last line of a remote stderr, for one-line messages.
pub fn stderr_tail(stderr: &[u8]) -> String {
    let s = String::from_utf8_lossy(stderr);
    let line = s.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
    let line = line.strip_prefix("hapki: ").unwrap_or(line);
    line.chars().take(300).collect()
}

/// Runs the facts script on this machine (for `audit --local`), with the same parser.
pub fn read_facts_local(paths: &NodePaths) -> Result<facts::NodeFacts, String> {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(facts_script())
        .arg("hapki")
        .arg(&paths.kube_dir)
        .arg(&paths.state_dir)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("could not run sh: {e}"))?;
    if !out.status.success() {
        return Err(format!("reading this machine's state failed: {}", stderr_tail(&out.stderr)));
    }
    let pki = paths.pki_dir();
    facts::NodeFacts::parse(&out.stdout, &pki).map_err(|e| e.to_string())
}
