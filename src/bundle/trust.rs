//! OpenSSH `allowed_signers` files (ssh-keygen(1), "ALLOWED SIGNERS"): the trust file that
//! `ssh-keygen -Y verify` and git read, so an operator keeps one file for all three.
//!
//! Each line is `PRINCIPALS [OPTIONS] KEYTYPE BASE64 [COMMENT]`. Understood options:
//! `namespaces="a,b"`, `valid-after=`, `valid-before=` (`YYYYMMDD[HHMM[SS]][Z]`) and
//! `cert-authority`. A `cert-authority` line trusts certificates signed by that key; bundles are
//! signed with plain keys, so such a line can never match one and is set aside (reported in
//! [`AllowedSigners::ignored`]) rather than silently trusted or rejected.
//!
//! Difference from OpenSSH: a time without the `Z` suffix is read as UTC, not local time.

use std::path::PathBuf;

use ssh_key::{HashAlg, PublicKey};
use time::{macros::format_description, OffsetDateTime, PrimitiveDateTime};

use crate::error::{Categorized, Category};

/// Why an allowed_signers file was refused: one line naming the file and the line.
#[derive(Debug, thiserror::Error)]
pub enum TrustFileError {
    #[error("{}: {error}", path.display())]
    Read { path: PathBuf, error: std::io::Error },
    /// `path` is `None` for text parsed without a file.
    #[error("{}line {line}: {reason}", path.as_ref().map(|p| format!("allowed_signers file {}: ", p.display())).unwrap_or_default())]
    Syntax { path: Option<PathBuf>, line: usize, reason: String },
}

impl Categorized for TrustFileError {
    /// The operator points `--trust` at another file, or fixes this one.
    fn category(&self) -> Category {
        Category::Usage
    }
}

fn syntax(line: usize, reason: impl Into<String>) -> TrustFileError {
    TrustFileError::Syntax { path: None, line, reason: reason.into() }
}

/// Why a line of the file does not authorize a signature (see [`AllowedSigner::allows`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAllowed {
    #[error("allowed_signers line {line} restricts this key to namespaces {namespaces:?}, not {namespace:?}")]
    Namespace { line: usize, namespaces: String, namespace: String },
    #[error("allowed_signers line {line} has no namespaces= option, so it does not single this key out for bundles; add namespaces=\"{namespace}\" to that line, or name its principal with --principal (as ssh-keygen -Y verify -I does)")]
    NoNamespaces { line: usize, namespace: String },
    #[error(
        "allowed_signers line {line} is for principals {principals:?}, not --principal {wanted}"
    )]
    Principal { line: usize, principals: String, wanted: String },
    #[error("allowed_signers line {line}: key not yet valid (valid-after)")]
    NotYetValid { line: usize },
    #[error("allowed_signers line {line}: key no longer valid (valid-before)")]
    Expired { line: usize },
}

/// One trusted key.
#[derive(Debug, Clone)]
pub struct AllowedSigner {
    /// The principals field as written (comma-separated patterns).
    pub principals: String,
    /// `namespaces="…"`, if given: the signature's namespace must be one of them.
    pub namespaces: Option<Vec<String>>,
    pub valid_after: Option<OffsetDateTime>,
    pub valid_before: Option<OffsetDateTime>,
    pub key: PublicKey,
    /// 1-based line number in the file, for messages.
    pub line: usize,
}

/// A parsed allowed_signers file.
#[derive(Debug, Clone, Default)]
pub struct AllowedSigners {
    pub signers: Vec<AllowedSigner>,
    /// `--principal`: when given, a line must match one of these (like `ssh-keygen -I`), and
    /// may then lack `namespaces=`; when empty, a line must list `hapki-bundle` in `namespaces=`.
    pub principals: Vec<String>,
    /// Lines that were understood but can never authorize a bundle (`cert-authority`), with why.
    pub ignored: Vec<String>,
}

impl AllowedSigner {
    /// `SHA256:…` fingerprint of the key, as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> String {
        self.key.fingerprint(HashAlg::Sha256).to_string()
    }

    /// Whether this line authorizes a signature in `namespace` at `now`, as `ssh-keygen -Y verify
    /// -n NAMESPACE -I PRINCIPAL` decides it for one of `principals`. Without `principals`
    /// (no `--principal`), only a line whose `namespaces=` lists `namespace` does: a line without
    /// the option trusts its key for anything (a developer's git-signing key, say), which is not
    /// a decision to let it sign root keys.
    pub fn allows(
        &self,
        namespace: &str,
        now: OffsetDateTime,
        principals: &[String],
    ) -> Result<(), NotAllowed> {
        let line = self.line;
        if let Some(ns) = &self.namespaces {
            if !ns.iter().any(|n| n == namespace) {
                let (namespaces, namespace) = (ns.join(","), namespace.to_string());
                return Err(NotAllowed::Namespace { line, namespaces, namespace });
            }
        }
        if principals.is_empty() && self.namespaces.is_none() {
            return Err(NotAllowed::NoNamespaces { line, namespace: namespace.to_string() });
        }
        if !principals.is_empty() && !principals.iter().any(|p| self.matches_principal(p)) {
            let (principals, wanted) = (self.principals.clone(), principals.join(","));
            return Err(NotAllowed::Principal { line, principals, wanted });
        }
        if self.valid_after.is_some_and(|t| now < t) {
            return Err(NotAllowed::NotYetValid { line });
        }
        if self.valid_before.is_some_and(|t| now >= t) {
            return Err(NotAllowed::Expired { line });
        }
        Ok(())
    }

    /// Whether `principal` matches the line's principals field as OpenSSH's
    /// `match_pattern_list` does: comma-separated `*`/`?` patterns, a `!` pattern that matches
    /// vetoes the line.
    pub fn matches_principal(&self, principal: &str) -> bool {
        let mut found = false;
        for pat in self.principals.split(',') {
            let (negated, pat) = match pat.strip_prefix('!') {
                Some(p) => (true, p),
                None => (false, pat),
            };
            if wildcard(pat.as_bytes(), principal.as_bytes()) {
                if negated {
                    return false;
                }
                found = true;
            }
        }
        found
    }
}

/// `*` (any run) and `?` (any one byte) glob matching, as OpenSSH's `match_pattern`.
fn wildcard(pat: &[u8], s: &[u8]) -> bool {
    match pat.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| wildcard(rest, &s[i..])),
        Some((b'?', rest)) => !s.is_empty() && wildcard(rest, &s[1..]),
        Some((c, rest)) => s.first() == Some(c) && wildcard(rest, &s[1..]),
    }
}

impl AllowedSigners {
    /// Parses the text of an allowed_signers file; an error names the line and what is wrong.
    pub fn parse(text: &str) -> Result<Self, TrustFileError> {
        let mut out = AllowedSigners::default();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let n = i + 1;
            let tokens = tokenize(line).ok_or_else(|| syntax(n, "unbalanced quote"))?;
            let mut it = tokens.into_iter();
            let principals = it.next().ok_or_else(|| syntax(n, "empty"))?;
            let principals = unquote(&principals);
            let mut next = it.next().ok_or_else(|| syntax(n, "no key after principals"))?;
            let mut options = None;
            if !is_key_type(&next) {
                options = Some(next);
                next = it.next().ok_or_else(|| syntax(n, "no key after options"))?;
            }
            let blob =
                it.next().ok_or_else(|| syntax(n, format!("key type {next} without key data")))?;
            let key = PublicKey::from_openssh(&format!("{next} {blob}"))
                .map_err(|e| syntax(n, format!("invalid public key: {e}")))?;
            let mut signer = AllowedSigner {
                principals,
                namespaces: None,
                valid_after: None,
                valid_before: None,
                key,
                line: n,
            };
            let mut cert_authority = false;
            if let Some(opts) = options {
                for opt in
                    split_options(&opts).ok_or_else(|| syntax(n, "unbalanced quote in options"))?
                {
                    let (name, value) = match opt.split_once('=') {
                        Some((k, v)) => (k.to_ascii_lowercase(), Some(unquote(v))),
                        None => (opt.to_ascii_lowercase(), None),
                    };
                    match (name.as_str(), value) {
                        ("cert-authority", None) => cert_authority = true,
                        ("namespaces", Some(v)) => {
                            signer.namespaces =
                                Some(v.split(',').map(|s| s.trim().to_string()).collect())
                        }
                        ("valid-after", Some(v)) => signer.valid_after = Some(parse_time(&v, n)?),
                        ("valid-before", Some(v)) => signer.valid_before = Some(parse_time(&v, n)?),
                        (other, _) => {
                            return Err(syntax(n, format!("unknown or malformed option {other:?}")))
                        }
                    }
                }
            }
            if cert_authority {
                out.ignored.push(format!(
                    "line {n}: cert-authority key {} ignored: bundles are signed with plain keys, not certificates",
                    signer.fingerprint()
                ));
            } else {
                out.signers.push(signer);
            }
        }
        Ok(out)
    }

    /// Reads and parses `path`.
    pub fn from_file(path: &std::path::Path) -> Result<Self, TrustFileError> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| TrustFileError::Read { path: path.to_path_buf(), error })?;
        Self::parse(&text).map_err(|e| match e {
            TrustFileError::Syntax { line, reason, .. } => {
                TrustFileError::Syntax { path: Some(path.to_path_buf()), line, reason }
            }
            read => read,
        })
    }

    /// Sets the `--principal` names a trusting line must match (see [`AllowedSigner::allows`]).
    pub fn with_principals(mut self, principals: Vec<String>) -> Self {
        self.principals = principals;
        self
    }

    /// The lines whose key is `key`.
    pub fn lines_for<'a>(
        &'a self,
        key: &'a ssh_key::public::KeyData,
    ) -> impl Iterator<Item = &'a AllowedSigner> {
        self.signers.iter().filter(move |s| s.key.key_data() == key)
    }
}

fn is_key_type(t: &str) -> bool {
    t.starts_with("ssh-") || t.starts_with("ecdsa-sha2-") || t.starts_with("sk-")
}

/// Splits on blanks outside double quotes; `None` on an unbalanced quote.
fn tokenize(line: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if quoted {
        return None;
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    Some(out)
}

/// Splits the options field on commas outside double quotes.
fn split_options(opts: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in opts.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    if quoted {
        return None;
    }
    out.push(cur);
    Some(out)
}

fn unquote(s: &str) -> String {
    s.strip_prefix('"').and_then(|s| s.strip_suffix('"')).unwrap_or(s).to_string()
}

fn parse_time(v: &str, line: usize) -> Result<OffsetDateTime, TrustFileError> {
    let digits = v.strip_suffix(['Z', 'z']).unwrap_or(v);
    let padded = match digits.len() {
        8 => format!("{digits}000000"),
        12 => format!("{digits}00"),
        14 => digits.to_string(),
        _ => String::new(),
    };
    PrimitiveDateTime::parse(
        &padded,
        format_description!("[year][month][day][hour][minute][second]"),
    )
    .map(|t| t.assume_utc())
    .map_err(|_| syntax(line, format!("invalid time {v:?}: expected YYYYMMDD[HHMM[SS]][Z]")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGAcZEhF4GDD/+G0/XUCEb+RCqhgMHPhMsTRB4g1k654";

    #[test]
    fn parses_plain_and_optioned_lines() {
        let text = format!(
            "# comment\n\nops@example.com {ED} laptop\n\"a@x,b@x\" namespaces=\"hapki-bundle,git\",valid-after=20200101,valid-before=\"20300101120000Z\" {ED}\n"
        );
        let t = AllowedSigners::parse(&text).unwrap();
        assert_eq!(t.signers.len(), 2);
        assert_eq!(t.signers[0].principals, "ops@example.com");
        assert_eq!(t.signers[0].namespaces, None);
        assert_eq!(t.signers[1].principals, "a@x,b@x");
        assert_eq!(t.signers[1].namespaces.as_deref().unwrap(), ["hapki-bundle", "git"]);
        assert_eq!(t.signers[1].valid_after.unwrap().year(), 2020);
        let now = time::macros::datetime!(2025-01-01 0:00 UTC);
        assert!(t.signers[1].allows("hapki-bundle", now, &[]).is_ok());
        assert!(t.signers[1].allows("file", now, &[]).is_err());
        let (late, early) = (
            time::macros::datetime!(2031-01-01 0:00 UTC),
            time::macros::datetime!(2019-01-01 0:00 UTC),
        );
        assert!(t.signers[1].allows("git", late, &[]).is_err());
        assert!(t.signers[1].allows("git", early, &[]).is_err());
        // No namespaces=: only under a named principal.
        assert!(t.signers[0].allows("hapki-bundle", now, &[]).is_err());
        let ops = ["ops@example.com".to_string()];
        assert!(t.signers[0].allows("hapki-bundle", now, &ops).is_ok());
        assert!(t.signers[0].allows("hapki-bundle", now, &["dev@x".to_string()]).is_err());
        assert!(t.signers[1].allows("hapki-bundle", now, &ops).is_err());
        // What `ssh-keygen -l` prints for the key above.
        assert_eq!(
            t.signers[0].fingerprint(),
            "SHA256:Q2/C805U+nq6Xn2AHWNcdSXUtnQfk8CbsIc/8tT5FXI"
        );
    }

    #[test]
    fn principal_patterns_match_as_openssh() {
        let line =
            |p: &str| AllowedSigners::parse(&format!("{p} {ED}\n")).unwrap().signers[0].clone();
        assert!(line("ops").matches_principal("ops"));
        assert!(!line("ops").matches_principal("op"));
        assert!(line("a,ops").matches_principal("ops"));
        assert!(line("*@example.com").matches_principal("ops@example.com"));
        assert!(!line("*@example.com").matches_principal("ops@example.org"));
        assert!(line("op?").matches_principal("ops"));
        assert!(!line("*,!ops").matches_principal("ops"));
        assert!(line("*,!ops").matches_principal("dev"));
    }

    #[test]
    fn sets_cert_authority_aside_and_rejects_garbage() {
        let t = AllowedSigners::parse(&format!("*@x cert-authority {ED}\n")).unwrap();
        assert!(t.signers.is_empty());
        assert_eq!(t.ignored.len(), 1);
        for bad in [
            "onlyprincipal".to_string(),
            format!("p bogus-option {ED}"),
            format!("p valid-after=2020 {ED}"),
            "p ssh-ed25519 notbase64!!".to_string(),
            format!("\"p {ED}"),
        ] {
            assert!(AllowedSigners::parse(&bad).is_err(), "{bad} accepted");
        }
    }
}
