//! Bundle format version 1: entry names and order, size caps, `bundle.json` and `SHA256SUMS`.
//!
//! Everything both the writer and the reader must agree on lives here, so the two cannot drift.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::pki::{FileKind, SHARED_FILES};

/// The only format version this hapki writes and reads.
pub(crate) const FORMAT_VERSION: u32 = 1;

/// SSHSIG namespace of `SHA256SUMS.sig`; `ssh-keygen -Y verify -n hapki-bundle` checks the same.
pub(crate) const NAMESPACE: &str = "hapki-bundle";

/// First entry: the metadata.
pub(crate) const MANIFEST: &str = "bundle.json";
/// Second entry: `sha256sum(1)` lines for `bundle.json` and every `pki/` entry.
pub(crate) const SUMS: &str = "SHA256SUMS";
/// Third entry: the armored SSHSIG of `SHA256SUMS`.
pub(crate) const SIGNATURE: &str = "SHA256SUMS.sig";
/// Directory prefix of the PKI entries inside the archive.
pub(crate) const PKI_PREFIX: &str = "pki/";
/// Directory prefix of the artifact entries: `artifacts/0000`, `artifacts/0001`, … in spec
/// order. Numbered names keep the tar layout strict (no operator-chosen path ever becomes an
/// archive path) and sort in bundle order.
pub(crate) const ARTIFACT_PREFIX: &str = "artifacts/";
/// Cap on one artifact entry. Artifacts are never held in memory (they stream through SHA-256),
/// and are only read after the signature over `SHA256SUMS` has verified.
pub(crate) const ARTIFACT_MAX: u64 = 64 << 30;
/// Caps on `bundle.json` and `SHA256SUMS` in a bundle that carries artifacts (one entry each per
/// file, up to [`crate::artifacts::MAX_ARTIFACTS`]).
pub(crate) const ARTIFACTS_MANIFEST_MAX: u64 = 1 << 20;
pub(crate) const ARTIFACTS_SUMS_MAX: u64 = 256 * 1024;

/// The archive name of the `i`-th artifact.
pub(crate) fn artifact_name(i: usize) -> String {
    format!("{ARTIFACT_PREFIX}{i:04}")
}

/// The index of an archive name of the `artifacts/NNNN` form (exactly four digits or more, no
/// sign, no leading `+`), else `None`.
pub(crate) fn artifact_index(name: &str) -> Option<usize> {
    let d = name.strip_prefix(ARTIFACT_PREFIX)?;
    if d.len() < 4 || !d.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let i: usize = d.parse().ok()?;
    (artifact_name(i) == name).then_some(i)
}

/// Caps on each entry's size. A real manifest is ~3 KiB, SHA256SUMS ~700 bytes, a signature
/// ~300 bytes (Ed25519) to ~1.5 KiB (RSA-4096), a PEM file ≤ ~3.3 KiB; the caps leave room
/// while keeping a hostile archive's cost fixed. `MANIFEST_MAX` and `SUMS_MAX` hold in a bundle
/// without artifacts, checked once the signed `SHA256SUMS` says there are none (before that,
/// [`ARTIFACTS_MANIFEST_MAX`] and [`ARTIFACTS_SUMS_MAX`] bound what is read).
pub(crate) const MANIFEST_MAX: u64 = 64 * 1024;
pub(crate) const SUMS_MAX: u64 = 16 * 1024;
pub(crate) const SIGNATURE_MAX: u64 = 8 * 1024;
pub(crate) const PKI_FILE_MAX: u64 = 64 * 1024;

/// Cap on the bytes read from the file until the signature over `SHA256SUMS` has verified: the
/// three metadata entries at their caps, their headers and the age and gzip framing around them
/// fit. This is what bounds the work a hostile, unsigned file can cause.
pub(crate) const INPUT_MAX: u64 = 2 * 1024 * 1024;

/// Cap on the zero padding after the end-of-archive blocks: GNU tar pads an archive to its
/// 10 KiB record; hapki's writer adds none.
pub(crate) const END_PADDING_MAX: u64 = 10 * 1024;

/// The gzip header older hapki versions (0.1.0 and before) wrote for bundles without artifacts:
/// flate2 at best compression (XFL 2), mtime 0, OS 255. Such a bundle is refused with a message
/// saying to re-create it (see [`super::stored`] for why there is one encoding now).
pub(crate) const LEGACY_GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 0xff];

/// The archive's entries, in the only order a bundle may have them.
pub(crate) fn entry_names() -> Vec<String> {
    let mut names = vec![MANIFEST.to_string(), SUMS.to_string(), SIGNATURE.to_string()];
    names.extend(SHARED_FILES.iter().map(|f| format!("{PKI_PREFIX}{}", f.name)));
    names
}

/// The cap on the entry named `name`, checked from its tar header before any of its bytes are
/// read. Until the signature has verified nothing says whether artifacts follow, so the
/// metadata may have the larger caps of a bundle that lists many; [`metadata_cap`] tightens
/// them afterwards.
pub(crate) fn entry_cap(name: &str) -> u64 {
    match name {
        MANIFEST => ARTIFACTS_MANIFEST_MAX,
        SUMS => ARTIFACTS_SUMS_MAX,
        SIGNATURE => SIGNATURE_MAX,
        n if n.starts_with(ARTIFACT_PREFIX) => ARTIFACT_MAX,
        _ => PKI_FILE_MAX,
    }
}

/// The cap on `bundle.json` or `SHA256SUMS` in a bundle with or without artifacts.
pub(crate) fn metadata_cap(name: &str, artifacts: bool) -> u64 {
    match (name, artifacts) {
        (MANIFEST, false) => MANIFEST_MAX,
        (SUMS, false) => SUMS_MAX,
        _ => entry_cap(name),
    }
}

/// The mode an entry has in the archive: kubeadm's for PKI files, 0644 for the metadata
/// (which holds no secret).
pub(crate) fn entry_mode(name: &str) -> u32 {
    // Artifacts are 0644 in the archive whatever their mode on the node (bundle.json says that):
    // the archive layout stays one fixed shape, and `tar -x` makes nothing executable.
    name.strip_prefix(PKI_PREFIX).and_then(crate::pki::shared_file).map(|f| f.mode).unwrap_or(0o644)
}

/// `bundle.json`: what an auditor asks of a bundle: which CAs, who signed, when, until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always `FORMAT_VERSION`; a reader refuses any other.
    pub format_version: u32,
    /// Cluster name (`--cluster`, default `kubernetes`).
    pub cluster: String,
    /// Monotonic serial, by default the creation time in Unix seconds; `push` refuses to install a
    /// bundle older than what a node holds.
    pub serial: u64,
    #[serde(with = "rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "rfc3339")]
    pub expires_at: OffsetDateTime,
    /// Where the files came from, e.g. `local:/etc/kubernetes/pki`.
    pub source: String,
    /// Version of the hapki that wrote the bundle.
    pub hapki_version: String,
    /// `SHA256:…` fingerprint of the signing key, as `ssh-keygen -l` prints it. Informational:
    /// verification trusts the signature, and only checks that this agrees with it.
    pub signer: String,
    /// kubeadm's `--discovery-token-ca-cert-hash` of `ca.crt` (empty, and absent from the JSON,
    /// in an artifacts-only bundle).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub discovery_token_ca_cert_hash: String,
    /// One per shared file, in bundle order (none in an artifacts-only bundle).
    pub files: Vec<ManifestFile>,
    /// One per artifact, in bundle order (absent from a PKI-only bundle's JSON).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<ManifestArtifact>,
}

/// One artifact in `bundle.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestArtifact {
    /// The archive entry (`artifacts/0000`).
    pub name: String,
    /// Absolute path on the node.
    pub dest: String,
    #[serde(with = "octal_mode")]
    pub mode: u32,
    /// `USER:GROUP` as `chown` takes it.
    pub owner: String,
    pub roles: Vec<crate::inventory::Role>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<crate::artifacts::After>,
    pub sha256: String,
    pub size: u64,
}

impl ManifestArtifact {
    /// Whether a node of `role` receives this artifact (its roles name it, and it is not a
    /// registry-only archive, which goes to the registry instead).
    pub fn on_node(&self, role: crate::inventory::Role) -> bool {
        self.roles.contains(&role) && crate::artifacts::After::on_nodes(self.after)
    }
}

/// One PKI file in `bundle.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestFile {
    /// Relative to the pki directory (`etcd/ca.crt`), as `pki check` names it.
    pub name: String,
    /// Octal, as a string (`"0600"`): what `ls -l` and `install -m` speak.
    #[serde(with = "octal_mode")]
    pub mode: u32,
    /// SHA-256 of the file bytes (what `sha256sum` prints).
    pub sha256: String,
    #[serde(with = "file_kind")]
    pub kind: FileKind,
    /// SHA-256 of the certificate's DER (certificates only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_sha256: Option<String>,
    /// SHA-256 of the DER SubjectPublicKeyInfo (certificates and keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spki_sha256: Option<String>,
    /// Certificate expiry (certificates only).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "rfc3339::option")]
    pub not_after: Option<OffsetDateTime>,
    /// Certificate subject (certificates only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

impl Manifest {
    /// The canonical bytes of `bundle.json`: pretty JSON and a final newline, so it reads well
    /// after `tar -x` and the same manifest always gives the same bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut v = serde_json::to_vec_pretty(self)?;
        v.push(b'\n');
        Ok(v)
    }
}

/// `FileKind` in the pki module is serialize-only; the bundle must read it back too.
mod file_kind {
    use crate::pki::FileKind;
    use serde::{de::Error, Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn serialize<S: Serializer>(kind: &FileKind, s: S) -> Result<S::Ok, S::Error> {
        kind.serialize(s)
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<FileKind, D::Error> {
        match String::deserialize(d)?.as_str() {
            "certificate" => Ok(FileKind::Certificate),
            "private_key" => Ok(FileKind::PrivateKey),
            "public_key" => Ok(FileKind::PublicKey),
            other => Err(D::Error::custom(format!("unknown file kind {other:?}"))),
        }
    }
}

/// RFC 3339 timestamps in whole seconds (`2025-01-31T12:00:00Z`), UTC.
pub(crate) mod rfc3339 {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};
    use time::format_description::well_known::Rfc3339;
    use time::{OffsetDateTime, UtcOffset};

    pub(crate) fn serialize<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        let t = t.to_offset(UtcOffset::UTC);
        s.serialize_str(&t.format(&Rfc3339).map_err(serde::ser::Error::custom)?)
    }
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        let s = String::deserialize(d)?;
        OffsetDateTime::parse(&s, &Rfc3339)
            .map_err(|_| D::Error::custom(format!("invalid RFC 3339 time {s:?}")))
    }

    pub(crate) mod option {
        use super::*;
        pub(crate) fn serialize<S: Serializer>(
            t: &Option<OffsetDateTime>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => super::serialize(t, s),
                None => s.serialize_none(),
            }
        }
        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<OffsetDateTime>, D::Error> {
            match Option::<String>::deserialize(d)? {
                Some(s) => OffsetDateTime::parse(&s, &Rfc3339)
                    .map(Some)
                    .map_err(|_| D::Error::custom(format!("invalid RFC 3339 time {s:?}"))),
                None => Ok(None),
            }
        }
    }
}

mod octal_mode {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(mode: &u32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{mode:04o}"))
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let s = String::deserialize(d)?;
        u32::from_str_radix(&s, 8).ok().filter(|m| *m <= 0o7777).ok_or_else(|| {
            D::Error::custom(format!("invalid mode {s:?}: expected octal like \"0600\""))
        })
    }
}

/// `SHA256SUMS` as `sha256sum(1)` writes it: `<64 hex>  <path>\n` per entry, in bundle order.
pub(crate) fn render_sums(entries: &[(String, String)]) -> Vec<u8> {
    let mut out = String::new();
    for (name, hex) in entries {
        out.push_str(hex);
        out.push_str("  ");
        out.push_str(name);
        out.push('\n');
    }
    out.into_bytes()
}

/// Parses `SHA256SUMS` strictly: `bundle.json`, then all eight `pki/` lines or none, then
/// `artifacts/0000`, `artifacts/0001`, … (none in a PKI-only bundle), each once, in bundle
/// order, lowercase hex, text mode, nothing else; the PKI, artifacts or both. Returns
/// `(name, hex)` pairs.
pub(crate) fn parse_sums(bytes: &[u8]) -> Result<Vec<(String, String)>, String> {
    let lines = bytes.iter().filter(|&&b| b == b'\n').count();
    let has_pki =
        bytes.split(|&b| b == b'\n').nth(1).is_some_and(|l| l.windows(6).any(|w| w == b"  pki/"));
    let pki = if has_pki { SHARED_FILES.len() } else { 0 };
    let n = lines.saturating_sub(1 + pki);
    if !has_pki && n == 0 {
        return Err("SHA256SUMS lists neither the PKI nor any artifact".into());
    }
    if n > crate::artifacts::MAX_ARTIFACTS {
        return Err(format!(
            "SHA256SUMS lists {n} artifacts, over the limit of {}",
            crate::artifacts::MAX_ARTIFACTS
        ));
    }
    let mut expected = vec![MANIFEST.to_string()];
    if has_pki {
        expected.extend(SHARED_FILES.iter().map(|f| format!("{PKI_PREFIX}{}", f.name)));
    }
    expected.extend((0..n).map(artifact_name));
    parse_sums_for(bytes, &expected)
}

fn parse_sums_for(bytes: &[u8], expected: &[String]) -> Result<Vec<(String, String)>, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "SHA256SUMS is not UTF-8".to_string())?;
    let mut out = Vec::with_capacity(expected.len());
    let mut lines = text.split_inclusive('\n');
    for name in expected {
        let line = lines.next().ok_or_else(|| format!("SHA256SUMS has no line for {name}"))?;
        let body = line
            .strip_suffix('\n')
            .ok_or_else(|| format!("SHA256SUMS line for {name} does not end in a newline"))?;
        let (hex, rest) = body.split_at_checked(64).ok_or_else(|| bad_line(name))?;
        if !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(bad_line(name));
        }
        if rest.strip_prefix("  ") != Some(name.as_str()) {
            return Err(format!(
                "SHA256SUMS line {:?} is not for {name}: entries out of order or unknown",
                body
            ));
        }
        out.push((name.clone(), hex.to_string()));
    }
    if lines.next().is_some() {
        return Err("SHA256SUMS has lines past the last entry".to_string());
    }
    Ok(out)
}

fn bad_line(name: &str) -> String {
    format!("SHA256SUMS line for {name} is not `<64 lowercase hex>  <path>`")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_round_trip_and_reject_reordering() {
        let names: Vec<String> =
            entry_names().into_iter().filter(|n| n != SUMS && n != SIGNATURE).collect();
        let entries: Vec<(String, String)> = names
            .iter()
            .map(|n| (n.clone(), crate::pki::fingerprint::sha256_hex(n.as_bytes())))
            .collect();
        let text = render_sums(&entries);
        assert_eq!(parse_sums(&text).unwrap(), entries);
        let mut swapped = entries.clone();
        swapped.swap(1, 2);
        assert!(parse_sums(&render_sums(&swapped)).is_err());
        let mut upper = text.clone();
        upper[0] = b'A';
        assert!(parse_sums(&upper).is_err());
        let mut extra = text.clone();
        extra.extend_from_slice(b"\n");
        assert!(parse_sums(&extra).is_err());
        // The binary-mode marker `*` is not what hapki writes; refusing it keeps one canonical form.
        let star = String::from_utf8(text).unwrap().replacen("  bundle.json", " *bundle.json", 1);
        assert!(parse_sums(star.as_bytes()).is_err());
    }

    #[test]
    fn sums_list_the_pki_the_artifacts_or_both_but_not_neither() {
        let line = |n: &str| format!("{}  {n}\n", "a".repeat(64));
        let pki: String = entry_names()[3..].iter().map(|n| line(n)).collect();
        let arts = line("artifacts/0000") + &line("artifacts/0001");
        let head = line("bundle.json");
        for (text, n) in [(head.clone() + &pki, 9), (head.clone() + &arts, 3)] {
            assert_eq!(parse_sums(text.as_bytes()).unwrap().len(), n, "{text}");
        }
        assert_eq!(parse_sums((head.clone() + &pki + &arts).as_bytes()).unwrap().len(), 11);
        assert!(parse_sums(head.as_bytes()).is_err(), "bundle.json alone");
        let skipped = head + &line("artifacts/0001");
        assert!(parse_sums(skipped.as_bytes()).is_err(), "artifacts out of sequence");
    }

    #[test]
    fn modes_serialize_as_octal_strings() {
        let f = ManifestFile {
            name: "ca.key".into(),
            mode: 0o600,
            sha256: String::new(),
            kind: FileKind::PrivateKey,
            cert_sha256: None,
            spki_sha256: None,
            not_after: None,
            subject: None,
        };
        let j = serde_json::to_string(&f).unwrap();
        assert!(j.contains(r#""mode":"0600""#), "{j}");
        assert_eq!(serde_json::from_str::<ManifestFile>(&j).unwrap(), f);
    }

    #[test]
    fn order_is_the_interface_order() {
        let n = entry_names();
        assert_eq!(&n[..4], ["bundle.json", "SHA256SUMS", "SHA256SUMS.sig", "pki/ca.crt"]);
        assert_eq!(n.last().unwrap(), "pki/etcd/ca.key");
        assert_eq!(n.len(), 11);
    }
}
