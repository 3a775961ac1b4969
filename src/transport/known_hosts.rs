//! The host-key policy, in one place: an OpenSSH known_hosts reader (plain and hashed `|1|`
//! entries, `[host]:port`, wildcards and negations, `@revoked`) and the decision a presented key
//! gets: known, unknown, changed or revoked. Unknown and changed keys are refused, never added.

use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine as _;
use sha2::{Digest, Sha256};

/// One parsed known_hosts line.
#[derive(Debug, Clone)]
struct Entry {
    line: usize,
    hosts: HostField,
    key_type: String,
    blob: Vec<u8>,
    revoked: bool,
    /// `@cert-authority`: the key signs host certificates; it is no host's own key.
    cert_authority: bool,
}

#[derive(Debug, Clone)]
enum HostField {
    Hashed { salt: Vec<u8>, hash: Vec<u8> },
    Patterns(Vec<(bool, String)>),
}

/// The keys a known_hosts file holds.
#[derive(Debug, Clone, Default)]
pub(crate) struct KnownHosts {
    entries: Vec<Entry>,
}

/// What the presented host key is, relative to known_hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// A listed key for this host.
    Known,
    /// No key of this type is listed for this host.
    Unknown,
    /// Keys of this type are listed for this host (on these lines), none of them this one.
    Changed { lines: Vec<usize> },
    /// The key is marked `@revoked`.
    Revoked { line: usize },
}

/// How known_hosts names a host: plain on port 22, `[host]:port` otherwise (as OpenSSH writes it).
pub(crate) fn lookup_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_owned()
    } else {
        format!("[{host}]:{port}")
    }
}

/// `SHA256:…` of a public key blob, as `ssh-keygen -l` prints it.
pub(crate) fn fingerprint(blob: &[u8]) -> String {
    format!("SHA256:{}", STANDARD_NO_PAD.encode(Sha256::digest(blob)))
}

/// The key type named inside an SSH public key blob (its first string).
pub(crate) fn blob_key_type(blob: &[u8]) -> Option<String> {
    let len = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
    let name = blob.get(4..4 + len)?;
    String::from_utf8(name.to_vec()).ok()
}

impl KnownHosts {
    /// Reads `path`. A missing file is empty (every host is then unknown); lines this reader does
    /// not understand (markers like `@cert-authority`, bad base64) are skipped, as ssh does.
    pub(crate) fn load(path: &Path) -> std::io::Result<KnownHosts> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        Ok(KnownHosts::parse(&text))
    }

    /// Parses known_hosts text.
    pub(crate) fn parse(text: &str) -> KnownHosts {
        let entries = text.lines().enumerate().filter_map(|(i, l)| parse_line(i + 1, l)).collect();
        KnownHosts { entries }
    }

    fn matching(&self, host: &str, port: u16) -> impl Iterator<Item = &Entry> {
        let name = lookup_name(host, port).to_ascii_lowercase();
        self.entries.iter().filter(move |e| e.hosts.matches(&name))
    }

    /// Key types listed (not revoked) for this host, in the order the built-in client should
    /// prefer them: pinning the negotiation to these is what makes "changed" detectable, and
    /// stops a server from steering us to a type we have no key for.
    pub(crate) fn key_types(&self, host: &str, port: u16) -> Vec<String> {
        let mut types: Vec<String> = Vec::new();
        for e in self.matching(host, port).filter(|e| !e.revoked && !e.cert_authority) {
            if !types.contains(&e.key_type) {
                types.push(e.key_type.clone());
            }
        }
        types.sort_by_key(|t| type_rank(t));
        types
    }

    /// Decides on the key `blob` the node presented.
    pub(crate) fn check(&self, host: &str, port: u16, blob: &[u8]) -> Verdict {
        let key_type = blob_key_type(blob).unwrap_or_default();
        let mut same_type_lines = Vec::new();
        for e in self.matching(host, port).filter(|e| !e.cert_authority) {
            if e.revoked {
                if e.blob == blob {
                    return Verdict::Revoked { line: e.line };
                }
                continue;
            }
            if e.blob == blob {
                return Verdict::Known;
            }
            if e.key_type == key_type {
                same_type_lines.push(e.line);
            }
        }
        if same_type_lines.is_empty() {
            Verdict::Unknown
        } else {
            Verdict::Changed { lines: same_type_lines }
        }
    }
}

impl KnownHosts {
    /// The first `@cert-authority` line for this host, if any: its keys are vouched for by SSH
    /// host certificates, which only the OpenSSH backend checks.
    pub(crate) fn cert_authority_line(&self, host: &str, port: u16) -> Option<usize> {
        self.matching(host, port).find(|e| e.cert_authority).map(|e| e.line)
    }
}

fn type_rank(t: &str) -> u8 {
    match t {
        "ssh-ed25519" => 0,
        "ecdsa-sha2-nistp256" => 1,
        "ecdsa-sha2-nistp384" => 2,
        "ecdsa-sha2-nistp521" => 3,
        "ssh-rsa" => 4,
        _ => 9,
    }
}

/// libssh2 host-key method names that verify a key of type `key_type`.
pub(crate) fn host_key_methods(key_type: &str) -> &'static [&'static str] {
    match key_type {
        "ssh-ed25519" => &["ssh-ed25519"],
        "ecdsa-sha2-nistp256" => &["ecdsa-sha2-nistp256"],
        "ecdsa-sha2-nistp384" => &["ecdsa-sha2-nistp384"],
        "ecdsa-sha2-nistp521" => &["ecdsa-sha2-nistp521"],
        "ssh-rsa" => &["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"],
        _ => &[],
    }
}

fn parse_line(line: usize, raw: &str) -> Option<Entry> {
    let l = raw.trim();
    if l.is_empty() || l.starts_with('#') {
        return None;
    }
    let mut fields = l.split_whitespace();
    let mut first = fields.next()?;
    let (mut revoked, mut cert_authority) = (false, false);
    if let Some(marker) = first.strip_prefix('@') {
        match marker {
            "revoked" => revoked = true,
            // Kept only to be refused by name: checking host certificates is the OpenSSH
            // backend's business.
            "cert-authority" => cert_authority = true,
            _ => return None,
        }
        first = fields.next()?;
    }
    let key_type = fields.next()?.to_owned();
    let blob = STANDARD.decode(fields.next()?).ok()?;
    // A line whose type and blob disagree is corrupt; trusting either half would be a guess.
    if blob_key_type(&blob).as_deref() != Some(key_type.as_str()) {
        return None;
    }
    let hosts = if let Some(h) = first.strip_prefix("|1|") {
        let (salt, hash) = h.split_once('|')?;
        HostField::Hashed { salt: STANDARD.decode(salt).ok()?, hash: STANDARD.decode(hash).ok()? }
    } else {
        HostField::Patterns(
            first
                .split(',')
                .map(|p| match p.strip_prefix('!') {
                    Some(neg) => (true, neg.to_ascii_lowercase()),
                    None => (false, p.to_ascii_lowercase()),
                })
                .collect(),
        )
    };
    Some(Entry { line, hosts, key_type, blob, revoked, cert_authority })
}

impl HostField {
    fn matches(&self, name: &str) -> bool {
        match self {
            HostField::Hashed { salt, hash } => {
                use aws_lc_rs::hmac;
                let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, salt);
                hmac::verify(&key, name.as_bytes(), hash).is_ok()
            }
            HostField::Patterns(pats) => {
                let mut hit = false;
                for (negated, p) in pats {
                    if wildcard_match(p, name) {
                        if *negated {
                            return false;
                        }
                        hit = true;
                    }
                }
                hit
            }
        }
    }
}

/// OpenSSH's pattern match: `*` any run, `?` one character.
pub(crate) fn wildcard_match(pattern: &str, s: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = s.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn keygen(dir: &Path, name: &str, t: &str) -> (String, Vec<u8>) {
        let path = dir.join(name);
        let st = Command::new("ssh-keygen")
            .args(["-q", "-t", t, "-N", "", "-f"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(st.success());
        let pubs = std::fs::read_to_string(path.with_extension("pub")).unwrap();
        let b64 = pubs.split_whitespace().nth(1).unwrap().to_owned();
        let blob = STANDARD.decode(&b64).unwrap();
        (format!("{} {}", pubs.split_whitespace().next().unwrap(), b64), blob)
    }

    fn ssh_keygen_fp(path: &Path) -> String {
        let out = Command::new("ssh-keygen").arg("-lf").arg(path).output().unwrap();
        String::from_utf8(out.stdout).unwrap().split_whitespace().nth(1).unwrap().to_owned()
    }

    #[test]
    fn plain_hashed_ported_and_changed_entries() {
        let dir = tempfile::tempdir().unwrap();
        let (k1, b1) = keygen(dir.path(), "k1", "ed25519");
        let (k2, b2) = keygen(dir.path(), "k2", "ed25519");
        let (k3, b3) = keygen(dir.path(), "k3", "ecdsa");
        assert_eq!(fingerprint(&b1), ssh_keygen_fp(&dir.path().join("k1.pub")));
        assert_eq!(blob_key_type(&b3).as_deref(), Some("ecdsa-sha2-nistp256"));

        // Hash entries exactly as OpenSSH does, with `ssh-keygen -H`.
        let kh = dir.path().join("known_hosts");
        std::fs::write(&kh, format!("10.0.0.1 {k1}\n[10.0.0.2]:2222 {k2}\n10.0.0.3 {k3}\n"))
            .unwrap();
        assert!(Command::new("ssh-keygen")
            .arg("-H")
            .arg("-f")
            .arg(&kh)
            .output()
            .unwrap()
            .status
            .success());
        let hashed = std::fs::read_to_string(&kh).unwrap();
        assert!(hashed.lines().all(|l| l.starts_with("|1|")), "{hashed}");
        let text = format!(
            "{hashed}# comment\n\n*.example.com,!bad.example.com {k2}\n@cert-authority * {k1}\n\
             @revoked 10.0.0.9 {k2}\n10.0.0.9 {k1}\ngarbage line\n10.0.0.5 ssh-ed25519 AAAA!!\n"
        );
        let khs = KnownHosts::parse(&text);

        assert_eq!(khs.check("10.0.0.1", 22, &b1), Verdict::Known);
        assert_eq!(khs.check("10.0.0.1", 22, &b2), Verdict::Changed { lines: vec![1] });
        assert_eq!(khs.check("10.0.0.1", 2222, &b1), Verdict::Unknown, "port matters");
        assert_eq!(khs.check("10.0.0.2", 2222, &b2), Verdict::Known);
        assert_eq!(khs.check("10.0.0.2", 22, &b2), Verdict::Unknown);
        // A key of another type than the listed ones is unknown, not changed.
        assert_eq!(khs.check("10.0.0.3", 22, &b1), Verdict::Unknown);
        assert_eq!(khs.check("10.0.0.3", 22, &b3), Verdict::Known);
        assert_eq!(khs.check("NODE.example.com", 22, &b2), Verdict::Known, "wildcard, any case");
        assert_eq!(khs.check("bad.example.com", 22, &b2), Verdict::Unknown, "negated");
        assert_eq!(khs.check("10.0.0.9", 22, &b2), Verdict::Revoked { line: 8 });
        assert_eq!(khs.check("10.0.0.9", 22, &b1), Verdict::Known);
        assert_eq!(
            khs.check("ca.example", 22, &b1),
            Verdict::Unknown,
            "CA lines are not host keys"
        );

        assert_eq!(khs.key_types("10.0.0.3", 22), ["ecdsa-sha2-nistp256"]);
        assert_eq!(khs.key_types("10.0.0.9", 22), ["ssh-ed25519"]);
        assert!(khs.key_types("10.0.0.7", 22).is_empty());
        // The CA line is found for any host (to refuse it by name), never as a host key.
        assert_eq!(khs.cert_authority_line("10.0.0.7", 22), Some(7));
        assert_eq!(
            khs.cert_authority_line("10.0.0.7", 22).map(|_| khs.check("10.0.0.7", 22, &b1)),
            Some(Verdict::Unknown)
        );
    }

    #[test]
    fn missing_file_is_empty_and_lookup_names() {
        let k = KnownHosts::load(Path::new("/nonexistent/known_hosts")).unwrap();
        assert_eq!(k.check("h", 22, b"\0\0\0\x0bssh-ed25519"), Verdict::Unknown);
        assert_eq!(lookup_name("h", 22), "h");
        assert_eq!(lookup_name("h", 2222), "[h]:2222");
        assert_eq!(lookup_name("fe80::1", 2222), "[fe80::1]:2222");
        assert!(wildcard_match("10.0.*.?", "10.0.1.5"));
        assert!(!wildcard_match("10.0.*.?", "10.0.1.55"));
        assert!(wildcard_match("*", ""));
    }
}
