//! Parsing the facts script's output into [`NodeFacts`].
//!
//! The output comes from a remote machine, so the parser is defensive: unknown records are
//! ignored (newer scripts stay readable), malformed ones are an error naming the line, and every
//! field is bounded by what the script can print.

use std::collections::BTreeMap;

use base64::Engine;
use sha2::{Digest, Sha256};

/// One path as `statline` described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathState {
    pub path: String,
    pub kind: PathKind,
    /// Permission bits (`stat -c %a`), for files and directories.
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    /// SHA-256 of the content, for regular readable files.
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    Missing,
    File,
    Dir,
    Symlink,
    Other,
}

impl PathState {
    pub fn is_file(&self) -> bool {
        self.kind == PathKind::File
    }
}

/// Everything the facts script reports about one node.
#[derive(Debug, Clone, Default)]
pub struct NodeFacts {
    /// The node's clock (Unix seconds) when the script ran.
    pub time: Option<i64>,
    pub hostname: String,
    pub uid: Option<u32>,
    /// The login name the script ran as (`$LOGNAME`), when the node says.
    pub user: Option<String>,
    /// `/etc/kubernetes`, its `pki` and `pki/etcd`.
    pub dirs: Vec<PathState>,
    /// The eight shared files, in [`crate::pki::SHARED_FILES`] order, keyed by relative name.
    pub shared: BTreeMap<String, PathState>,
    /// The raw `S` lines, in order: what the install script hashes to detect a concurrent change.
    shared_lines: Vec<String>,
    /// Every entry directly under `pki/` and `pki/etcd/` (relative name → state).
    pub pki_entries: BTreeMap<String, PathState>,
    /// PEM bytes of every certificate under the pki directory (relative name → bytes).
    pub certificates: BTreeMap<String, Vec<u8>>,
    /// Kubeconfigs present (file name → state).
    pub kubeconfigs: BTreeMap<String, PathState>,
    /// `certificate-authority-data` of each kubeconfig (decoded PEM), when it has one.
    pub kubeconfig_ca: BTreeMap<String, Vec<u8>>,
    /// Static-pod manifests (file name → state).
    pub manifests: BTreeMap<String, PathState>,
    /// The first few entries of `/var/lib/etcd`, or `None` when it does not exist.
    pub etcd_data_entries: Option<Vec<String>>,
    /// Entries of `/etc/cni/net.d`, or `None` when it does not exist.
    pub cni_entries: Option<Vec<String>>,
    /// Contents of `/proc/net/tcp` and `/proc/net/tcp6`.
    pub proc_net_tcp: Vec<Vec<u8>>,
    pub kubeadm_version: Option<String>,
    pub kubelet_version: Option<String>,
    /// Serial of the last bundle hapki installed here.
    pub last_serial: Option<u64>,
    /// Owner recorded in a held push lock.
    pub lock_owner: Option<String>,
    /// Staging directories left by an interrupted push.
    pub stale_staging: Vec<String>,
    /// SHA-256 of the SubjectPublicKeyInfo of each shared key (and `sa.pub`), computed on the
    /// node with openssl when it has it; empty otherwise.
    pub public_key_sha256: BTreeMap<String, String>,
    /// Addresses the endpoint resolved to on the node (`None`: not asked).
    pub endpoint_addresses: Option<Vec<String>>,
    /// Each artifact destination asked about (absolute path → state, with its SHA-256 when it
    /// is a regular file).
    pub artifact_dests: BTreeMap<String, PathState>,
    /// `index.json` of each image-archive destination asked about (`@/path`), by destination.
    pub image_index: BTreeMap<String, Vec<u8>>,
    /// `ctr -n k8s.io images ls` on the node: `None` when no image archive was asked about,
    /// `Some(None)` when ctr or its daemon is not there.
    pub runtime_images: Option<Option<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    #[error("the node's facts output is malformed at line {line}: {reason}")]
    Malformed { line: usize, reason: String },
    #[error("the node's facts output ended early (the script was cut off or the node lacks a POSIX shell and coreutils)")]
    Truncated,
}

impl crate::error::Categorized for FactsError {
    fn category(&self) -> crate::error::Category {
        crate::error::Category::NodesFailed
    }
}

/// Cap on what one facts run may return, so a hostile node cannot exhaust the operator's memory.
pub const MAX_FACTS_OUTPUT: usize = 8 * 1024 * 1024;

fn b64(line: usize, s: &str) -> Result<Vec<u8>, FactsError> {
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|e| FactsError::Malformed { line, reason: format!("bad base64: {e}") })
}

fn parse_state(line: usize, rest: &str) -> Result<PathState, FactsError> {
    // kind mode uid gid size sha256 path  (path is the rest of the line)
    let mut it = rest.splitn(7, ' ');
    let mut next = |what: &str| {
        it.next().ok_or_else(|| FactsError::Malformed { line, reason: format!("missing {what}") })
    };
    let kind = match next("kind")? {
        "missing" => PathKind::Missing,
        "file" => PathKind::File,
        "dir" => PathKind::Dir,
        "link" => PathKind::Symlink,
        "other" => PathKind::Other,
        k => return Err(FactsError::Malformed { line, reason: format!("unknown kind {k}") }),
    };
    let mode = next("mode")?;
    let uid = next("uid")?;
    let gid = next("gid")?;
    let size = next("size")?;
    let sha = next("sha256")?;
    let path = esc(next("path")?);
    let num = |s: &str| s.parse::<u64>().ok();
    Ok(PathState {
        path,
        kind,
        mode: u32::from_str_radix(mode, 8).ok(),
        uid: num(uid).and_then(|v| u32::try_from(v).ok()),
        gid: num(gid).and_then(|v| u32::try_from(v).ok()),
        size: num(size),
        sha256: (sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| sha.to_string()),
    })
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(esc).collect()
}

/// Node text as hapki may print it (control characters escaped): every text field of the facts
/// goes through here. The raw `S` lines are kept as they are, for the install's CAS token.
fn esc(s: &str) -> String {
    crate::transport::escape_node_text(s, false)
}

/// Largest certificate whose content the facts script sends (`BA`).
const MAX_CERT: u64 = 65536;

/// Whether an `X` record's content is in the `BA` line: the facts script's own rule (a regular
/// `.crt` file it could hash, of at most [`MAX_CERT`] bytes).
fn in_cert_line(st: &PathState) -> bool {
    st.is_file()
        && st.sha256.is_some()
        && st.size.is_some_and(|s| s <= MAX_CERT)
        && st.path.ends_with(".crt")
}

/// Cuts the `BA` line (the certificates' contents, concatenated in the order of their `X`
/// records) by the described sizes; a piece whose SHA-256 is not the described one (the file
/// changed while the script ran) is left out.
fn cut_certificates(
    data: &[u8],
    order: &[(String, PathState)],
    out: &mut BTreeMap<String, Vec<u8>>,
) {
    let mut off = 0usize;
    for (name, st) in order {
        let size = st.size.unwrap_or(0) as usize;
        let Some(piece) = data.get(off..off + size) else { return };
        off += size;
        if st.sha256.as_deref() == Some(hex::encode(Sha256::digest(piece)).as_str()) {
            out.insert(name.clone(), piece.to_vec());
        }
    }
}

impl NodeFacts {
    // Over 80 lines on purpose: one flat `match` with one short arm per record tag of facts.sh,
    // in the script's order, so the two can be read side by side; splitting the arms into
    // helpers would only add indirection between a tag and what it fills.
    /// Parses the facts script's stdout. `pki_dir` is the node's pki directory, used to turn
    /// absolute paths into the relative names the rest of hapki uses.
    pub fn parse(output: &[u8], pki_dir: &str) -> Result<NodeFacts, FactsError> {
        let text = String::from_utf8_lossy(output);
        let mut f = NodeFacts::default();
        let mut complete = false;
        let mut last_cert: Option<String> = None;
        let mut cert_order: Vec<(String, PathState)> = Vec::new();
        let mut cert_data: Option<Vec<u8>> = None;
        let prefix = format!("{}/", pki_dir.trim_end_matches('/'));
        let rel = |p: &str| p.strip_prefix(&prefix).unwrap_or(p).to_string();
        let base = |p: &str| p.rsplit('/').next().unwrap_or(p).to_string();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let (tag, rest) = raw.split_once(' ').unwrap_or((raw, ""));
            match tag {
                "V" if rest != "1" => {
                    return Err(FactsError::Malformed {
                        line,
                        reason: format!("unsupported facts version {rest}"),
                    });
                }
                "V" => {}
                "T" => f.time = rest.trim().parse().ok(),
                "H" => f.hostname = esc(rest.trim()),
                "U" => f.uid = rest.trim().parse().ok(),
                "UN" => {
                    let name: String = rest.trim().chars().take(64).collect();
                    let ok = !name.is_empty()
                        && name.chars().all(|c| c.is_ascii_alphanumeric() || "._@-".contains(c));
                    f.user = ok.then_some(name);
                }
                "D" => f.dirs.push(parse_state(line, rest)?),
                "S" => {
                    let st = parse_state(line, rest)?;
                    f.shared_lines.push(raw.to_string());
                    f.shared.insert(rel(&st.path), st);
                }
                "X" => {
                    let st = parse_state(line, rest)?;
                    let name = rel(&st.path);
                    last_cert = Some(name.clone());
                    if in_cert_line(&st) {
                        cert_order.push((name.clone(), st.clone()));
                    }
                    f.pki_entries.insert(name, st);
                }
                "B" => {
                    let name = last_cert.take().ok_or_else(|| FactsError::Malformed {
                        line,
                        reason: "certificate content without a file".into(),
                    })?;
                    f.certificates.insert(name, b64(line, rest)?);
                }
                "BA" => cert_data = Some(b64(line, rest)?),
                "Q" => {
                    let st = parse_state(line, rest)?;
                    f.kubeconfigs.insert(base(&st.path), st);
                }
                "A" => {
                    let (name, data) = rest.split_once(' ').unwrap_or((rest, "-"));
                    if data.trim() != "-" {
                        f.kubeconfig_ca.insert(esc(name), b64(line, data)?);
                    }
                }
                "M" => {
                    let st = parse_state(line, rest)?;
                    f.manifests.insert(base(&st.path), st);
                }
                "E" => f.etcd_data_entries = (!raw.trim().eq("E")).then(|| words(rest)),
                "C" => f.cni_entries = (!raw.trim().eq("C")).then(|| words(rest)),
                "P" => f.proc_net_tcp.push(b64(line, rest)?),
                "KA" => f.kubeadm_version = Some(esc(rest.trim())).filter(|s| !s.is_empty()),
                "KL" => f.kubelet_version = Some(esc(rest.trim())).filter(|s| !s.is_empty()),
                "L" => f.last_serial = rest.trim().parse().ok(),
                "W" => f.lock_owner = Some(esc(rest.trim())),
                "G" => f.stale_staging.push(esc(rest.trim())),
                "AF" => {
                    let st = parse_state(line, rest)?;
                    f.artifact_dests.insert(st.path.clone(), st);
                }
                "IX" => {
                    let (dest, data) = rest.split_once(' ').unwrap_or((rest, ""));
                    f.image_index.insert(dest.to_string(), b64(line, data)?);
                }
                "CI" if rest.trim() == "-" => f.runtime_images = Some(None),
                "CI" => {
                    let text = String::from_utf8_lossy(&b64(line, rest)?).into_owned();
                    f.runtime_images = Some(Some(text));
                }
                "PK" => {
                    if let Some((name, h)) = rest.split_once(' ') {
                        f.public_key_sha256.insert(esc(name), esc(h.trim()));
                    }
                }
                "N" => f.endpoint_addresses = Some(words(rest)),
                "Z" => complete = true,
                _ => {}
            }
        }
        if !complete {
            return Err(FactsError::Truncated);
        }
        if let Some(data) = cert_data {
            cut_certificates(&data, &cert_order, &mut f.certificates);
        }
        // A directory (not a file) where /var/lib/etcd's `ls` found entries still counts;
        // "E" with no entries means present and empty.
        Ok(f)
    }

    /// SHA-256 (hex) over the shared-file state lines, exactly as the install script computes
    /// it with `shared_state | sha256sum`: the compare-and-swap token that stops hapki from
    /// installing over files that changed after it planned.
    pub fn shared_state_token(&self) -> String {
        let mut h = Sha256::new();
        for l in &self.shared_lines {
            h.update(l.as_bytes());
            h.update(b"\n");
        }
        hex::encode(h.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_real_looking_run() {
        let cert =
            base64::engine::general_purpose::STANDARD.encode(b"-----BEGIN CERTIFICATE-----\n");
        let out = format!(
            "V 1\nT 1700000000\nH kubemaster-2\nU 0\nUN hapki-test\n\
             D dir 755 0 0 4096 - /etc/kubernetes/pki\n\
             S file 644 0 0 1107 {h} /etc/kubernetes/pki/ca.crt\n\
             S missing - - - - - /etc/kubernetes/pki/etcd/ca.key\n\
             S link - - - - - /etc/kubernetes/pki/sa.key\n\
             X file 644 0 0 1107 {h} /etc/kubernetes/pki/etcd/server.crt\nB {cert}\n\
             A admin.conf -\nE member \nC\nL 42\nZ\n",
            h = "a".repeat(64)
        );
        let f = NodeFacts::parse(out.as_bytes(), "/etc/kubernetes/pki").unwrap();
        assert_eq!(f.hostname, "kubemaster-2");
        assert_eq!(f.user.as_deref(), Some("hapki-test"));
        let odd = NodeFacts::parse(b"V 1\nUN \x1b[2Jx\nZ\n", "/p").unwrap();
        assert_eq!(odd.user, None, "a login name outside the safe alphabet is dropped");
        assert_eq!(f.shared["ca.crt"].mode, Some(0o644));
        assert_eq!(f.shared["ca.crt"].sha256.as_deref(), Some("a".repeat(64).as_str()));
        assert_eq!(f.shared["etcd/ca.key"].kind, PathKind::Missing);
        assert_eq!(f.shared["sa.key"].kind, PathKind::Symlink);
        assert!(f.certificates.contains_key("etcd/server.crt"));
        assert_eq!(f.etcd_data_entries, Some(vec!["member".to_string()]));
        assert_eq!(f.cni_entries, None);
        assert_eq!(f.last_serial, Some(42));
        assert!(f.kubeconfig_ca.is_empty());
        assert_eq!(f.runtime_images, None);
        let img = NodeFacts::parse(b"V 1\nIX /i.tar e30=\nCI -\nZ\n", "/p").unwrap();
        assert_eq!(img.image_index["/i.tar"], b"{}");
        assert_eq!(img.runtime_images, Some(None));
        let img = NodeFacts::parse(b"V 1\nIX /i.tar \nCI eA==\nZ\n", "/p").unwrap();
        assert_eq!(img.image_index["/i.tar"], b"");
        assert_eq!(img.runtime_images, Some(Some("x".into())));
    }

    #[test]
    fn a_cut_off_run_is_an_error() {
        assert!(matches!(
            NodeFacts::parse(b"V 1\nT 1\n", "/etc/kubernetes/pki"),
            Err(FactsError::Truncated)
        ));
        assert!(NodeFacts::parse(b"V 9\nZ\n", "/p").is_err());
        assert!(NodeFacts::parse(b"V 1\nS file\nZ\n", "/p").is_err());
    }
}
