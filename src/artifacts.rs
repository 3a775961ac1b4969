//! The offline installer's artifacts spec: which files (binaries, image archives, CNI manifests,
//! configs) a bundle carries, where each lands on a node, with which mode and owner, on which
//! roles, and which post-install action from a fixed set follows.
//!
//! ```toml
//! [[artifacts]]
//! source = "bin/kubeadm"            # a file or a directory, relative to the spec file
//! dest = "/usr/local/bin/kubeadm"   # absolute; for a directory source, a directory
//! mode = "0755"                     # optional, default 0644
//! owner = "0:0"                     # optional, default 0:0 (uid:gid or user:group)
//! roles = ["control-plane", "worker"]  # optional, default all
//! after = "restart-kubelet"         # optional: restart-kubelet | daemon-reload | import-images
//! ```
//!
//! [`load`] flattens the spec into one [`Artifact`] per file, in a deterministic order (spec
//! order; a directory's files sorted by name), which is the order they take in the bundle.
//! Everything a node will see (dest, owner, action) is validated here, before any byte is
//! hashed: a dest is one of a small safe alphabet, so it can be passed to the node script and
//! written into `SHA256SUMS`-adjacent records without quoting surprises.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Categorized, Category};
pub use crate::inventory::Role;

/// Where the shared PKI lives on a node: artifacts never land there (push owns it).
pub(crate) const FORBIDDEN_PREFIXES: [&str; 2] = ["/etc/kubernetes/pki", "/var/lib/hapki"];

/// At most this many files per bundle (each is one archive entry and one `SHA256SUMS` line).
pub(crate) const MAX_ARTIFACTS: usize = 2000;

/// A post-install action from the fixed set. Never a shell string: the node script maps each
/// name to one fixed command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum After {
    /// `systemctl daemon-reload` (a unit file or drop-in changed).
    DaemonReload,
    /// `ctr -n k8s.io images import --platform linux/ARCH` of the staged copy of DEST (an image
    /// archive), every image it names then pinned.
    ImportImages,
    /// `systemctl restart kubelet` (the kubelet binary or its config changed).
    RestartKubelet,
    /// The file is an image index (a tar holding only an OCI `index.json`) whose images the
    /// node pulls by digest from the registry its signed `certs.d` names, then tags with their
    /// names and pins (made by `hapki bundle --registry`, never written in a spec).
    PullImages,
    /// An image archive carried for `hapki push --registry` to copy into the registry: never
    /// sent to a node (made by `hapki bundle --registry`, never written in a spec).
    RegistryOnly,
}

impl After {
    /// The name used in specs, `bundle.json` and the node script.
    pub fn as_str(self) -> &'static str {
        match self {
            After::DaemonReload => "daemon-reload",
            After::ImportImages => "import-images",
            After::RestartKubelet => "restart-kubelet",
            After::PullImages => "pull-images",
            After::RegistryOnly => "registry-only",
        }
    }

    /// Whether the file names images the node's containerd must hold (an archive it imports,
    /// or an index whose images it pulls).
    pub fn names_images(self) -> bool {
        matches!(self, After::ImportImages | After::PullImages)
    }

    /// Whether an artifact with this action goes to nodes at all (a registry-only archive
    /// goes to the registry instead).
    pub fn on_nodes(after: Option<After>) -> bool {
        after != Some(After::RegistryOnly)
    }

    fn parse(s: &str) -> Option<After> {
        [After::DaemonReload, After::ImportImages, After::RestartKubelet]
            .into_iter()
            .find(|a| a.as_str() == s)
    }
}

impl fmt::Display for After {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One file to carry: the flattened form of a spec entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// The file on the operator's machine.
    pub source: PathBuf,
    /// Absolute, normalized path on the node.
    pub dest: String,
    pub mode: u32,
    /// `uid:gid` or `user:group`, as `chown` takes it.
    pub owner: String,
    /// Sorted, deduplicated; never empty.
    pub roles: Vec<Role>,
    pub after: Option<After>,
}

impl Artifact {
    /// Whether a node of `role` gets this artifact.
    pub fn for_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

/// Why a spec was refused. Always a usage error: the operator fixes the spec.
#[derive(Debug, thiserror::Error)]
#[error("artifacts spec {}: {problem}", path.display())]
pub struct SpecError {
    pub path: PathBuf,
    pub problem: SpecProblem,
}

/// What is wrong with a spec's text (or its sources), one line with the fix.
#[derive(Debug, thiserror::Error)]
pub enum SpecProblem {
    #[error("cannot read it: {0}")]
    Read(std::io::Error),
    /// The TOML does not parse; `message` names the line.
    #[error("{message}; fix the TOML")]
    Toml { message: String },
    #[error("no [[artifacts]] entries; add at least one (see bundles/README.md)")]
    Empty,
    /// Entry `at` (`[[artifacts]] #N (source)`) is refused.
    #[error("{at}: {reason}")]
    Entry { at: String, reason: String },
    #[error("{0} files: more than the {MAX_ARTIFACTS} a bundle may carry; pack small files into an archive")]
    TooMany(usize),
    #[error("two artifacts install to {0}; give each its own dest")]
    SameDest(String),
    #[error("{parent} is installed as a file and is also the parent directory of {dest}")]
    FileAndParent { parent: String, dest: String },
}

/// Why a destination path is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DestError {
    #[error("dest {0:?} is not an absolute path; write it as /path/on/the/node")]
    NotAbsolute(String),
    #[error("dest {0:?}… is longer than 1024 bytes")]
    TooLong(String),
    #[error("dest {0:?} contains {1:?}; use letters, digits and / . _ - + @ : , = only")]
    Character(String, char),
    #[error("dest {0:?} is not normalized (empty, '.' or '..' component, or a trailing /)")]
    NotNormalized(String),
    #[error("dest {0:?} uses hapki's reserved .hapki- prefix")]
    Reserved(String),
    #[error("dest {0:?} overlaps {1}, which hapki manages itself (the shared PKI and push state); pick another path")]
    Overlaps(String, &'static str),
}

impl Categorized for SpecError {
    fn category(&self) -> Category {
        Category::Usage
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    #[serde(default)]
    artifacts: Vec<RawEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    source: String,
    dest: String,
    mode: Option<String>,
    owner: Option<String>,
    roles: Option<Vec<String>>,
    after: Option<String>,
}

/// Reads and validates the spec at `path` and flattens it into files (see the module docs).
pub fn load(path: &Path) -> Result<Vec<Artifact>, SpecError> {
    let err = |problem| SpecError { path: path.to_path_buf(), problem };
    let text = std::fs::read_to_string(path).map_err(|e| err(SpecProblem::Read(e)))?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    parse(&text, &base).map_err(err)
}

/// Checks spec text without touching the sources (for templates whose files are not filled in
/// yet): returns the number of entries.
pub fn check_text(text: &str) -> Result<usize, SpecProblem> {
    parse_inner(text, Path::new("."), false).map(|v| v.len())
}

/// [`load`] on spec text whose relative sources resolve against `base`.
pub fn parse(text: &str, base: &Path) -> Result<Vec<Artifact>, SpecProblem> {
    parse_inner(text, base, true)
}

fn parse_inner(text: &str, base: &Path, expand: bool) -> Result<Vec<Artifact>, SpecProblem> {
    let raw: RawSpec = toml::from_str(text).map_err(|e| {
        // toml's message spans several lines (a source excerpt); keep the first and the span.
        let first = e.message().lines().next().unwrap_or("invalid TOML").to_string();
        let message = match e.span() {
            Some(s) => format!("{first} (at {})", line_col(text, s.start)),
            None => first,
        };
        SpecProblem::Toml { message }
    })?;
    if raw.artifacts.is_empty() {
        return Err(SpecProblem::Empty);
    }
    let mut out = Vec::new();
    for (i, e) in raw.artifacts.iter().enumerate() {
        let entry = spec_entry(e, base).and_then(|a| {
            if expand {
                return expand_source(a, &mut out);
            }
            out.push(a);
            Ok(())
        });
        entry.map_err(|reason| SpecProblem::Entry {
            at: format!("[[artifacts]] #{} ({})", i + 1, e.source),
            reason,
        })?;
    }
    check_layout(&out)?;
    Ok(out)
}

/// One spec entry checked, its source not yet looked at; `Err` says what is wrong with it.
fn spec_entry(e: &RawEntry, base: &Path) -> Result<Artifact, String> {
    let mode = e.mode.as_deref().map_or(Ok(0o644), parse_mode)?;
    let owner = e.owner.as_deref().map_or(Ok("0:0".to_string()), check_owner)?;
    let roles = match &e.roles {
        None => vec![Role::ControlPlane, Role::Worker],
        Some(list) => parse_roles(list)?,
    };
    let after = match &e.after {
        None => None,
        Some(a) => Some(After::parse(a).ok_or_else(|| {
            format!("after = {a:?} is not one of restart-kubelet, daemon-reload, import-images (a fixed set, never a shell command)")
        })?),
    };
    let dest = check_dest(&e.dest).map_err(|e| e.to_string())?;
    let source = resolve_source(base, &e.source)?;
    Ok(Artifact { source, dest, mode, owner, roles, after })
}

/// The entry's source on disk: a regular file as it is, a directory as one artifact per file
/// (sorted by name, under the entry's dest); links and special files are refused.
fn expand_source(a: Artifact, out: &mut Vec<Artifact>) -> Result<(), String> {
    let md = std::fs::symlink_metadata(&a.source)
        .map_err(|err| format!("source {}: {err}", a.source.display()))?;
    if md.file_type().is_symlink() {
        return Err(format!(
            "source {} is a symbolic link; point the spec at the real file",
            a.source.display()
        ));
    }
    if md.is_file() {
        out.push(a);
        return Ok(());
    }
    if !md.is_dir() {
        return Err(format!("source {} is not a regular file or directory", a.source.display()));
    }
    let before = out.len();
    for entry in walkdir::WalkDir::new(&a.source).follow_links(false).sort_by_file_name() {
        let entry = entry.map_err(|err| format!("walking {}: {err}", a.source.display()))?;
        if let Some(file) = dir_file(&a, &entry)? {
            out.push(file);
        }
    }
    if out.len() == before {
        return Err(format!("source directory {} holds no files", a.source.display()));
    }
    Ok(())
}

/// One entry of a directory source: the artifact for a regular file, `None` for a directory.
fn dir_file(dir: &Artifact, entry: &walkdir::DirEntry) -> Result<Option<Artifact>, String> {
    let ft = entry.file_type();
    let path = entry.path();
    if ft.is_dir() {
        return Ok(None);
    }
    if ft.is_symlink() {
        return Err(format!(
            "{} is a symbolic link; artifacts are regular files only",
            path.display()
        ));
    }
    if !ft.is_file() {
        return Err(format!(
            "{} is not a regular file (device, FIFO or socket); remove it from the directory",
            path.display()
        ));
    }
    let rel = path.strip_prefix(&dir.source).unwrap_or(path);
    let rel =
        rel.to_str().ok_or_else(|| format!("{} has a name that is not UTF-8", path.display()))?;
    let dest = check_dest(&format!("{}/{rel}", dir.dest)).map_err(|e| e.to_string())?;
    Ok(Some(Artifact { source: path.to_path_buf(), dest, ..dir.clone() }))
}

/// Across entries: not too many files, every dest once, no file where another needs a directory.
fn check_layout(out: &[Artifact]) -> Result<(), SpecProblem> {
    if out.len() > MAX_ARTIFACTS {
        return Err(SpecProblem::TooMany(out.len()));
    }
    let mut seen = BTreeSet::new();
    for a in out {
        if !seen.insert(a.dest.as_str()) {
            return Err(SpecProblem::SameDest(a.dest.clone()));
        }
    }
    // A file at /a and another at /a/b cannot both exist: the second needs /a to be a directory.
    for a in out {
        let mut p = a.dest.as_str();
        while let Some((parent, _)) = p.rsplit_once('/') {
            if parent.is_empty() {
                break;
            }
            if seen.contains(parent) {
                let (parent, dest) = (parent.to_string(), a.dest.clone());
                return Err(SpecProblem::FileAndParent { parent, dest });
            }
            p = parent;
        }
    }
    Ok(())
}

fn line_col(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    format!("line {line}")
}

fn parse_mode(m: &str) -> Result<u32, String> {
    let ok = (3..=4).contains(&m.len()) && m.bytes().all(|b| (b'0'..=b'7').contains(&b));
    let v = if ok { u32::from_str_radix(m, 8).ok() } else { None };
    match v {
        Some(v) if v & 0o7000 == 0 => Ok(v),
        Some(_) => Err(format!(
            "mode {m:?} sets setuid, setgid or sticky bits; artifacts get plain permissions"
        )),
        None => Err(format!("mode {m:?} is not an octal mode like \"0644\" or \"0755\"")),
    }
}

fn check_owner(o: &str) -> Result<String, String> {
    let word = |w: &str| {
        !w.is_empty()
            && w.len() <= 32
            && (w.bytes().all(|b| b.is_ascii_digit())
                || (w.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
                    && w.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                    })))
    };
    match o.split_once(':') {
        Some((u, g)) if word(u) && word(g) => Ok(o.to_string()),
        _ => Err(format!("owner {o:?} is not USER:GROUP (names or numeric ids, e.g. \"0:0\")")),
    }
}

fn parse_roles(list: &[String]) -> Result<Vec<Role>, String> {
    let mut roles = Vec::new();
    for r in list {
        let role = match r.as_str() {
            "control-plane" => vec![Role::ControlPlane],
            "worker" => vec![Role::Worker],
            "all" => vec![Role::ControlPlane, Role::Worker],
            other => return Err(format!("role {other:?} is not control-plane, worker or all")),
        };
        for x in role {
            if !roles.contains(&x) {
                roles.push(x);
            }
        }
    }
    if roles.is_empty() {
        return Err("roles = [] sends the artifact nowhere; name a role or drop the key".into());
    }
    roles.sort_by_key(|r| *r == Role::Worker);
    Ok(roles)
}

/// A dest must be absolute, normalized (no `.`, `..`, `//`, trailing `/`), of a conservative
/// alphabet, and outside what hapki itself owns on a node.
pub(crate) fn check_dest(d: &str) -> Result<String, DestError> {
    if !d.starts_with('/') {
        return Err(DestError::NotAbsolute(d.into()));
    }
    if d.len() > 1024 {
        // The first 40 characters (not bytes: the cut must fall on a character boundary).
        return Err(DestError::TooLong(d.chars().take(40).collect()));
    }
    if let Some(c) = d.chars().find(|c| !(c.is_ascii_alphanumeric() || "/._-+@:,=".contains(*c))) {
        return Err(DestError::Character(d.into(), c));
    }
    let comps: Vec<&str> = d[1..].split('/').collect();
    if comps.iter().any(|c| c.is_empty() || *c == "." || *c == "..") {
        return Err(DestError::NotNormalized(d.into()));
    }
    if comps.iter().any(|c| c.starts_with(".hapki-")) {
        return Err(DestError::Reserved(d.into()));
    }
    for p in FORBIDDEN_PREFIXES {
        if d == p || d.starts_with(&format!("{p}/")) {
            return Err(DestError::Overlaps(d.into(), p));
        }
    }
    Ok(d.to_string())
}

fn resolve_source(base: &Path, s: &str) -> Result<PathBuf, String> {
    let p = Path::new(s);
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    if p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(format!(
            "source {s:?} climbs out with '..'; sources are relative to the spec file's directory (or absolute)"
        ));
    }
    Ok(base.join(p))
}

/// The label containerd's CRI plugin (1.7 and later) reports to the kubelet as a pinned image,
/// which the kubelet's image garbage collection never removes.
pub(crate) const PINNED_LABEL: &str = "io.cri-containerd.pinned=pinned";

/// One image an archive's `index.json` names: what `ctr images import` creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveImage {
    /// `io.containerd.image.name`, e.g. `k8s.gcr.io/pause:3.2`.
    pub name: String,
    /// The manifest (or index) digest, `sha256:<hex>`.
    pub digest: String,
}

/// Why an image archive's `index.json` names no image hapki can check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum IndexError {
    #[error("it holds no index.json (not an OCI archive)")]
    Absent,
    #[error("its index.json is not JSON ({0})")]
    NotJson(String),
    #[error("its index.json has no manifests list")]
    NoManifests,
    #[error("its index.json names no image (no io.containerd.image.name annotation)")]
    NoImage,
}

/// Why the state of an archive's images in a node's containerd cannot be told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NodeImagesError {
    #[error("{0} is not there")]
    NotThere(String),
    #[error("{dest}: {error}")]
    Index { dest: String, error: IndexError },
    #[error("containerd does not answer on this node (ctr -n k8s.io images ls failed); start it")]
    NoContainerd,
}

/// The images an OCI archive's `index.json` names (by `io.containerd.image.name`, the name
/// `ctr images import` gives them). An error says why the index cannot be read.
pub(crate) fn archive_images(index_json: &[u8]) -> Result<Vec<ArchiveImage>, IndexError> {
    let v: serde_json::Value =
        serde_json::from_slice(index_json).map_err(|e| IndexError::NotJson(e.to_string()))?;
    let manifests = v.get("manifests").and_then(|m| m.as_array()).ok_or(IndexError::NoManifests)?;
    let mut out = Vec::new();
    for m in manifests {
        let name = m.pointer("/annotations/io.containerd.image.name").and_then(|n| n.as_str());
        let digest = m.get("digest").and_then(|d| d.as_str());
        if let (Some(name), Some(digest)) = (name, digest) {
            out.push(ArchiveImage { name: name.into(), digest: digest.into() });
        }
    }
    if out.is_empty() {
        return Err(IndexError::NoImage);
    }
    Ok(out)
}

/// Cap on an image archive's `index.json` (a real one is a few hundred bytes per image).
pub(crate) const MAX_INDEX_JSON: usize = 4 << 20;

/// Finds `index.json` in a tar (an OCI image archive) fed in chunks as it streams by, without
/// holding the rest: headers are read, every other entry's data skipped. Plain ustar/GNU
/// headers only (a pax or GNU long-name record is skipped like any entry): `index.json` is a
/// short name at the top of the layout.
#[derive(Debug, Default)]
pub(crate) struct IndexJsonScanner {
    header: Vec<u8>,
    /// Bytes of the current entry's data (padded to 512) still to come.
    skip: u64,
    /// Bytes of `index.json` still to collect (while `collecting`).
    want: u64,
    collecting: bool,
    found: Option<Vec<u8>>,
    done: bool,
}

impl IndexJsonScanner {
    /// Feeds the next bytes of the tar.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() && !self.done {
            if self.skip > 0 {
                let n = data.len().min(usize::try_from(self.skip).unwrap_or(usize::MAX));
                if self.collecting && self.want > 0 {
                    let k = n.min(usize::try_from(self.want).unwrap_or(usize::MAX));
                    self.found.get_or_insert_with(Vec::new).extend_from_slice(&data[..k]);
                    self.want -= k as u64;
                    if self.want == 0 {
                        self.done = true;
                    }
                }
                self.skip -= n as u64;
                data = &data[n..];
                continue;
            }
            let n = data.len().min(512 - self.header.len());
            self.header.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.header.len() == 512 {
                let h = std::mem::take(&mut self.header);
                self.on_header(&h);
            }
        }
    }

    fn on_header(&mut self, h: &[u8]) {
        if h.iter().all(|&b| b == 0) {
            return; // end-of-archive blocks (or padding): nothing follows that matters
        }
        let Some(size) = tar_size(&h[124..136]) else {
            self.done = true; // not a tar header: give up, the caller reports no index
            return;
        };
        self.skip = size.div_ceil(512) * 512;
        let name = tar_name(h);
        let regular = matches!(h[156], b'0' | 0 | b'7');
        if regular && (name == "index.json" || name == "./index.json") {
            if size > MAX_INDEX_JSON as u64 {
                self.done = true;
                return;
            }
            self.collecting = true;
            self.want = size;
            if size == 0 {
                self.found = Some(Vec::new());
                self.done = true;
            }
        }
    }

    /// The `index.json` found, if the whole of it went by.
    pub fn finish(self) -> Option<Vec<u8>> {
        if self.collecting && self.want == 0 {
            self.found
        } else {
            None
        }
    }
}

/// A tar header's size field: octal digits (NUL/space terminated) or GNU base-256.
fn tar_size(f: &[u8]) -> Option<u64> {
    if f[0] & 0x80 != 0 {
        return f[1..].iter().try_fold(u64::from(f[0] & 0x7f), |acc, &b| {
            acc.checked_mul(256).map(|v| v | u64::from(b))
        });
    }
    let digits: Vec<u8> = f
        .iter()
        .copied()
        .skip_while(|b| *b == b' ')
        .take_while(|b| (b'0'..=b'7').contains(b))
        .collect();
    if digits.is_empty() {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(&digits).ok()?, 8).ok()
}

/// A ustar header's path: `prefix/name` (each NUL terminated).
fn tar_name(h: &[u8]) -> String {
    let field = |b: &[u8]| {
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    };
    let name = field(&h[0..100]);
    let prefix = if &h[257..262] == b"ustar" { field(&h[345..500]) } else { String::new() };
    if prefix.is_empty() {
        name
    } else {
        format!("{prefix}/{name}")
    }
}

/// An image as containerd lists it (`ctr images ls`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RuntimeImage {
    pub digest: String,
    pub pinned: bool,
}

/// Parses `ctr -n k8s.io images ls` (columns REF TYPE DIGEST SIZE PLATFORMS LABELS; SIZE is
/// two words, LABELS the last, comma-separated or `-`).
pub(crate) fn parse_ctr_images(text: &str) -> BTreeMap<String, RuntimeImage> {
    let mut out = BTreeMap::new();
    for line in text.lines().skip(1) {
        let w: Vec<&str> = line.split_whitespace().collect();
        if w.len() < 4 || !w[2].starts_with("sha256:") {
            continue;
        }
        let labels = w.last().copied().unwrap_or("-");
        let pinned = labels.split(',').any(|l| l == PINNED_LABEL);
        out.insert(w[0].to_string(), RuntimeImage { digest: w[2].to_string(), pinned });
    }
    out
}

/// How an image an archive names stands in the node's containerd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ImageState {
    Present,
    Missing,
    /// Present under the name, with this other digest.
    Digest(String),
    Unpinned,
}

/// Each image of `archive` against what containerd lists.
pub(crate) fn image_states(
    archive: &[ArchiveImage],
    runtime: &BTreeMap<String, RuntimeImage>,
) -> Vec<(ArchiveImage, ImageState)> {
    archive
        .iter()
        .map(|a| {
            let st = match runtime.get(&a.name) {
                None => ImageState::Missing,
                Some(r) if r.digest != a.digest => ImageState::Digest(r.digest.clone()),
                Some(r) if !r.pinned => ImageState::Unpinned,
                Some(_) => ImageState::Present,
            };
            (a.clone(), st)
        })
        .collect()
}

/// How the facts script is asked about an artifact destination: `@/path` for an image archive
/// (its index and containerd's images are described too), the path itself otherwise.
pub(crate) fn facts_arg(dest: &str, after: Option<After>) -> String {
    match after {
        Some(a) if a.names_images() => format!("@{dest}"),
        _ => dest.to_string(),
    }
}

/// The images the archive at `dest` names, each with its state in the node's containerd; an
/// error when that cannot be told (the archive's index unreadable, containerd not answering).
pub(crate) fn images_on_node(
    facts: &crate::node::facts::NodeFacts,
    dest: &str,
) -> Result<Vec<(ArchiveImage, ImageState)>, NodeImagesError> {
    let idx = facts.image_index.get(dest).ok_or_else(|| NodeImagesError::NotThere(dest.into()))?;
    let imgs =
        archive_images(idx).map_err(|error| NodeImagesError::Index { dest: dest.into(), error })?;
    match &facts.runtime_images {
        Some(Some(ls)) => Ok(image_states(&imgs, &parse_ctr_images(ls))),
        _ => Err(NodeImagesError::NoContainerd),
    }
}

/// Whether every image of the archive at `dest` is in the node's containerd, with its digest,
/// pinned. An archive whose index names no image (a docker-archive without index.json) cannot
/// be checked: its signed hash alone says it is in place, as for any other file.
pub(crate) fn images_in_place(facts: &crate::node::facts::NodeFacts, dest: &str) -> bool {
    let Some(Ok(imgs)) = facts.image_index.get(dest).map(|i| archive_images(i)) else {
        return true;
    };
    match &facts.runtime_images {
        Some(Some(ls)) => image_states(&imgs, &parse_ctr_images(ls))
            .iter()
            .all(|(_, s)| *s == ImageState::Present),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dests_are_absolute_normalized_and_outside_the_pki() {
        assert!(check_dest("/usr/local/bin/kubeadm").is_ok());
        for bad in [
            "usr/local/bin/kubeadm",
            "/usr/local/../bin/x",
            "/usr//bin/x",
            "/usr/bin/",
            "/usr/./bin",
            "/etc/kubernetes/pki/ca.crt",
            "/etc/kubernetes/pki",
            "/var/lib/hapki/history",
            "/usr/bin/a b",
            "/usr/bin/$(id)",
            "/usr/bin/x\ny",
            "/",
            "/x/.hapki-stage.1",
        ] {
            assert!(check_dest(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_dest("/etc/kubernetes/kubeadm-config.yaml").is_ok());
    }

    #[test]
    fn modes_roles_owner_after() {
        assert_eq!(parse_mode("0755"), Ok(0o755));
        assert_eq!(parse_mode("644"), Ok(0o644));
        assert!(parse_mode("4755").is_err());
        assert!(parse_mode("0x755").is_err());
        assert!(parse_mode("0999").is_err());
        assert_eq!(parse_roles(&["worker".into()]), Ok(vec![Role::Worker]));
        assert_eq!(
            parse_roles(&["worker".into(), "control-plane".into()]),
            Ok(vec![Role::ControlPlane, Role::Worker])
        );
        assert!(parse_roles(&["master".into()]).is_err());
        assert!(parse_roles(&[]).is_err());
        assert!(check_owner("root:root").is_ok());
        assert!(check_owner("0:0").is_ok());
        assert!(check_owner("root").is_err());
        assert!(check_owner("root:$(id)").is_err());
        assert_eq!(After::parse("import-images"), Some(After::ImportImages));
        assert_eq!(After::parse("systemctl restart kubelet"), None);
        // Only `hapki bundle --registry` makes these: never taken from a spec.
        assert_eq!(After::parse("pull-images"), None);
        assert_eq!(After::parse("registry-only"), None);
    }

    fn tar_of(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, data.as_slice()).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn scan(tar: &[u8], chunk: usize) -> Option<Vec<u8>> {
        let mut s = IndexJsonScanner::default();
        for c in tar.chunks(chunk) {
            s.feed(c);
        }
        s.finish()
    }

    #[test]
    fn index_json_found_in_a_streamed_tar_whatever_the_chunking() {
        let index = br#"{"manifests":[]}"#.to_vec();
        let big = vec![b'x'; 5000];
        let first = tar_of(&[("index.json", index.clone()), ("blobs/sha256/a", big.clone())]);
        let last = tar_of(&[
            ("oci-layout", b"{}".to_vec()),
            ("blobs/sha256/a", big.clone()),
            ("index.json", index.clone()),
        ]);
        // A blob whose bytes look like an index.json header must not be taken for one.
        let decoy = tar_of(&[("blobs/sha256/b", first.clone()), ("oci-layout", b"{}".to_vec())]);
        for chunk in [1, 7, 512, 513, 100_000] {
            assert_eq!(scan(&first, chunk).as_deref(), Some(index.as_slice()), "chunk {chunk}");
            assert_eq!(scan(&last, chunk).as_deref(), Some(index.as_slice()), "chunk {chunk}");
            assert_eq!(scan(&decoy, chunk), None, "chunk {chunk}");
        }
        let at = last.windows(index.len()).position(|w| w == index.as_slice()).unwrap();
        assert_eq!(scan(&last[..at + 8], 512), None, "cut short");
        assert_eq!(scan(b"not a tar at all", 3), None);
        assert_eq!(scan(&[0xffu8; 2048], 64), None);
    }

    #[test]
    fn archive_index_and_ctr_listing() {
        let d = format!("sha256:{}", "a".repeat(64));
        let idx = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"digest":"{d}","annotations":{{"io.containerd.image.name":"k8s.gcr.io/pause:3.2"}}}},{{"digest":"{d}"}}]}}"#
        );
        let imgs = archive_images(idx.as_bytes()).unwrap();
        assert_eq!(
            imgs,
            vec![ArchiveImage { name: "k8s.gcr.io/pause:3.2".into(), digest: d.clone() }]
        );
        assert!(archive_images(b"{}").is_err());
        assert!(archive_images(b"not json").is_err());
        assert!(archive_images(br#"{"manifests":[{"digest":"sha256:1"}]}"#).is_err());
        let ls = format!(
            "REF TYPE DIGEST SIZE PLATFORMS LABELS\n\
             k8s.gcr.io/pause:3.2 application/vnd.oci.image.manifest.v1+json {d} 734.0 B linux/amd64 a=b,io.cri-containerd.pinned=pinned\n\
             k8s.gcr.io/etcd:3.4.13-0 application/vnd.oci.image.manifest.v1+json {d} 734.0 B linux/amd64 -\n"
        );
        let rt = parse_ctr_images(&ls);
        assert!(rt["k8s.gcr.io/pause:3.2"].pinned);
        assert!(!rt["k8s.gcr.io/etcd:3.4.13-0"].pinned);
        let want =
            |name: &str, digest: &str| ArchiveImage { name: name.into(), digest: digest.into() };
        let other = format!("sha256:{}", "b".repeat(64));
        let st = image_states(
            &[
                want("k8s.gcr.io/pause:3.2", &d),
                want("k8s.gcr.io/etcd:3.4.13-0", &d),
                want("k8s.gcr.io/pause:3.2", &other),
                want("k8s.gcr.io/coredns:1.7.0", &d),
            ],
            &rt,
        );
        let states: Vec<ImageState> = st.into_iter().map(|(_, s)| s).collect();
        assert_eq!(
            states,
            vec![
                ImageState::Present,
                ImageState::Unpinned,
                ImageState::Digest(d),
                ImageState::Missing
            ]
        );
    }

    #[test]
    fn an_archive_is_in_place_once_containerd_holds_its_images() {
        use crate::node::facts::NodeFacts;
        let d = format!("sha256:{}", "c".repeat(64));
        let idx = format!(
            r#"{{"manifests":[{{"digest":"{d}","annotations":{{"io.containerd.image.name":"k8s.gcr.io/pause:3.2"}}}}]}}"#
        );
        let mut f = NodeFacts::default();
        f.image_index.insert("/i.tar".into(), idx.into_bytes());
        assert!(!images_in_place(&f, "/i.tar"), "containerd did not answer");
        let ls = |labels: &str| {
            format!("REF TYPE DIGEST SIZE PLATFORMS LABELS\nk8s.gcr.io/pause:3.2 t {d} 1 B linux/amd64 {labels}\n")
        };
        f.runtime_images = Some(Some(ls("-")));
        assert!(!images_in_place(&f, "/i.tar"), "unpinned");
        f.runtime_images = Some(Some(ls(PINNED_LABEL)));
        assert!(images_in_place(&f, "/i.tar"));
        // Nothing named to check (a docker-archive): the hash decides, as for any file.
        f.image_index.insert("/d.tar".into(), b"".to_vec());
        f.runtime_images = Some(None);
        assert!(images_in_place(&f, "/d.tar"));
    }
}
