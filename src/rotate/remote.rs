//! The node side of `hapki rotate` (src/node/rotate.sh after restart.sh's functions): its
//! arguments, the sections it reads on stdin and prints on stdout.

use base64::Engine;

use super::material::{known_ca_data, Desired, Files};
use super::state::{Phase, State};
use crate::node::NodePaths;
use crate::pki::fingerprint::sha256_hex;
use crate::transport::{RemoteOutput, Session, TransportError};

/// The rotate script: common.sh, etcd_health, restart.sh, cluster_info.sh, rotate.sh.
pub(crate) fn script() -> String {
    let main = crate::node::with_cluster_info(include_str!("../node/rotate.sh"));
    format!("{}{}", include_str!("../node/common.sh"), crate::renew::with_restart(&main))
}

/// How the script is run on one node.
pub(crate) struct Call {
    pub paths: NodePaths,
    pub address: String,
    pub limits: [String; 2],
    pub run_id: String,
    /// `first`, `control-plane` or `worker`.
    pub role: &'static str,
    pub phase: Phase,
}

impl Call {
    pub fn run(
        &self,
        session: &mut dyn Session,
        op: &str,
        stdin: &[u8],
    ) -> Result<RemoteOutput, TransportError> {
        let p = &self.paths;
        let args = [
            p.kube_dir.as_str(),
            p.state_dir.as_str(),
            op,
            self.address.as_str(),
            self.limits[0].as_str(),
            self.limits[1].as_str(),
            self.run_id.as_str(),
            self.role,
            self.phase.as_str(),
        ];
        session.run(&script(), &args, &mut &stdin[..])
    }
}

/// stdout's `=== HEADER` sections: (header words after `===`, body).
pub(crate) fn sections(out: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut res: Vec<(String, Vec<u8>)> = Vec::new();
    for line in out.split_inclusive(|&b| b == b'\n') {
        if let Some(h) = line.strip_prefix(b"=== ") {
            let h = String::from_utf8_lossy(h).trim_end().to_string();
            res.push((h, Vec::new()));
        } else if let Some(last) = res.last_mut() {
            last.1.extend_from_slice(line);
        }
    }
    res
}

/// The state directory as read from the first master: the state and the material.
#[derive(Clone)]
pub struct Loaded {
    pub state: State,
    pub old: Files,
    pub new: Files,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Loaded({}, {} old, {} new files)", self.state.id, self.old.len(), self.new.len())
    }
}

/// Parses `read-state`'s output: `None` when there is no rotation.
pub(crate) fn parse_state(out: &[u8]) -> Result<Option<Loaded>, String> {
    let mut state = None;
    let (mut old, mut new) = (Files::new(), Files::new());
    for (h, body) in sections(out) {
        if h == "none" {
            return Ok(None);
        }
        let Some(name) = h.strip_prefix("state ") else { continue };
        if name == "state.json" {
            let s: State = serde_json::from_slice(&body)
                .map_err(|e| format!("state.json does not parse ({e})"))?;
            state = Some(s);
        } else if let Some(n) = name.strip_prefix("old/") {
            old.insert(n.to_string(), body);
        } else if let Some(n) = name.strip_prefix("new/") {
            new.insert(n.to_string(), body);
        }
    }
    let state = state.ok_or("the state directory holds no state.json")?;
    Ok(Some(Loaded { state, old, new }))
}

/// `write-state`'s stdin: state.json, and the material when given.
pub(crate) fn state_payload(state: &State, material: Option<(&Files, &Files)>) -> Vec<u8> {
    let mut p = b"=== state state.json\n".to_vec();
    p.extend(serde_json::to_vec(state).unwrap_or_default());
    p.push(b'\n');
    if let Some((old, new)) = material {
        for (dir, files) in [("old", old), ("new", new)] {
            for (name, bytes) in files {
                p.extend(format!("=== state {dir}/{name}\n").as_bytes());
                p.extend(ensure_newline(bytes));
            }
        }
    }
    p
}

/// Clears the material (after finalize or an abort: the old keys are trusted nowhere).
pub(crate) fn drop_payload(state: &State) -> Vec<u8> {
    let mut p = state_payload(state, None);
    p.extend(b"=== drop new\n=== drop old\n");
    p
}

fn ensure_newline(b: &[u8]) -> Vec<u8> {
    let mut v = b.to_vec();
    if !v.ends_with(b"\n") {
        v.push(b'\n');
    }
    v
}

/// `plan`'s or `apply`'s stdin for `desired`: contents for apply, hashes for plan.
pub(crate) fn desired_payload(
    d: &Desired,
    old: &Files,
    new: &Files,
    renew: bool,
    with_content: bool,
) -> Vec<u8> {
    let mut p = Vec::new();
    for (name, bytes) in &d.files {
        if with_content {
            p.extend(format!("=== file {name}\n").as_bytes());
            p.extend(ensure_newline(bytes));
        } else {
            p.extend(
                format!("=== want {name} {}\n", sha256_hex(&ensure_newline(bytes))).as_bytes(),
            );
        }
    }
    for name in &d.remove {
        p.extend(format!("=== remove {name}\n").as_bytes());
    }
    if let Some(ca) = d.files.get("ca.crt") {
        for k in known_ca_data(old, new) {
            p.extend(format!("=== known {k}\n").as_bytes());
        }
        let b64 = base64::engine::general_purpose::STANDARD.encode(ensure_newline(ca));
        p.extend(format!("=== cadata {b64}\n").as_bytes());
    }
    if let Some(f) = &d.signing_flag {
        p.extend(format!("=== flag {f}\n").as_bytes());
    }
    if renew {
        p.extend(b"=== renew yes\n");
    }
    p
}

/// The `=== change KIND WHAT` lines of a plan or an apply.
pub(crate) fn changes(out: &[u8]) -> Vec<(String, String)> {
    sections(out)
        .into_iter()
        .filter_map(|(h, _)| {
            let rest = h.strip_prefix("change ")?;
            let (kind, what) = rest.split_once(' ').unwrap_or((rest, ""));
            Some((kind.to_string(), what.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_split_on_headers_and_keep_bodies() {
        let s = sections(b"junk\n=== state state.json\n{}\n=== state new/ca.crt\nA\nB\n=== none\n");
        assert_eq!(s.len(), 3);
        assert_eq!(s[0], ("state state.json".to_string(), b"{}\n".to_vec()));
        assert_eq!(s[1].1, b"A\nB\n");
        assert_eq!(s[2].0, "none");
    }

    #[test]
    fn the_script_parses_and_fits_one_ssh_exec_request() {
        let script = script();
        let out = std::process::Command::new("sh").args(["-n", "-c", &script]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let cmd = crate::transport::remote_command(&script, &[], true).unwrap();
        assert!(cmd.len() < 31_000, "the rotate command is {} bytes", cmd.len());
    }

    #[test]
    fn a_plan_carries_hashes_never_keys() {
        let mut d = Desired::default();
        d.files.insert("ca.key".into(), b"-----BEGIN EC PRIVATE KEY-----\nSECRET\n".to_vec());
        let p = desired_payload(&d, &Files::new(), &Files::new(), false, false);
        let p = String::from_utf8(p).unwrap();
        assert!(!p.contains("SECRET") && p.starts_with("=== want ca.key "), "{p}");
    }
}
