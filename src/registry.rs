//! Fleets: a registry instead of N copies from one laptop (issue 16, item 6).
//!
//! `hapki bundle --registry HOST[:PORT] --registry-ca FILE` turns each image archive of the spec
//! (`after = "import-images"`) into two signed artifacts, and adds two more:
//! - the archive itself, `after = "registry-only"`: carried for `hapki push --registry`, never
//!   sent to a node;
//! - `DEST.pull.tar`, `after = "pull-images"`, for the archive's roles: a tar holding only an OCI
//!   `index.json` (the archive's own image descriptors, each annotated with the reference it is
//!   pulled by, `HOST/REPO@sha256:…`);
//! - `/etc/containerd/certs.d/HOST/hosts.toml` and `…/ca.crt` (the registry's CA), for all roles.
//!
//! All of it sits under the bundle's one signature: the node checks every byte it installs
//! against the signed `SHA256SUMS` as for any artifact, then pulls each image BY DIGEST (a
//! registry, or anyone between, that serves other bytes fails containerd's digest check), tags it
//! with its name and pins it. The registry's address and CA come only from the signed bundle, so
//! whoever can write to the registry can at most make pulls fail, never change an image.
//!
//! `hapki push --registry HOST` first verifies the whole bundle (signature, then each archive
//! against its signed hash while it is written to a 0700 temporary directory; nothing is
//! uploaded before the last byte verified), then copies every image into the registry with
//! `skopeo copy --preserve-digests` (TLS verified against the bundle's own signed CA; credentials
//! only through an auth file or skopeo's defaults, never in argv), checks that the registry
//! serves each manifest with its digest, and only then pushes the small artifacts to the nodes.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::artifacts::{self, After, ArchiveImage, Artifact, IndexJsonScanner, Role};
use crate::bundle::{self, AllowedSigners, BundleError, Identities, VerifyOptions};
use crate::error::{Categorized, Category};

/// Where containerd (`ctr --hosts-dir`, and the CRI plugin's `config_path`) reads registry hosts.
pub(crate) const CERTS_D: &str = "/etc/containerd/certs.d";

/// The annotation naming the reference a node pulls an image by (`HOST/REPO@sha256:…`).
pub(crate) const PULL_ANNOTATION: &str = "org.hapki.pull";

/// The suffix of the pull index installed next to where the archive would have gone.
pub(crate) const PULL_SUFFIX: &str = ".pull.tar";

/// Why registry distribution failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A flag or input file is wrong (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The bundle failed verification: nothing was uploaded.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// The registry refused or could not be reached; the nodes were not touched.
    #[error("{0}")]
    Upload(String),
}

impl Categorized for RegistryError {
    fn category(&self) -> Category {
        match self {
            RegistryError::Usage(_) => Category::Usage,
            RegistryError::Bundle(e) => e.category(),
            RegistryError::Upload(_) => Category::Unexpected,
        }
    }
}

fn usage(m: impl Into<String>) -> RegistryError {
    RegistryError::Usage(m.into())
}

/// Checks `HOST[:PORT]` (a DNS name or IPv4 address, an optional port): what containerd names
/// its `certs.d` directory after. Returns it unchanged.
pub(crate) fn parse_host(s: &str) -> Result<String, RegistryError> {
    let bad = || {
        usage(format!(
            "--registry {s:?} is not HOST[:PORT] (a DNS name or IPv4 address, e.g. registry.example.org:5000)"
        ))
    };
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    };
    if let Some(p) = port {
        if p.parse::<u16>().map_or(true, |n| n == 0) || p.starts_with('0') {
            return Err(bad());
        }
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
        return Err(bad());
    }
    Ok(s.to_string())
}

/// `name:tag` → (repository path in the registry, tag): the name without its registry host
/// (the first component when it has a `.` or `:` or is `localhost`), as a containerd mirror of
/// that host looks it up (`k8s.gcr.io/pause:3.2` → `pause`, `3.2`).
pub(crate) fn repo_and_tag(name: &str) -> Option<(String, String)> {
    let (path, tag) = name.rsplit_once(':').filter(|(p, t)| !t.contains('/') && !p.is_empty())?;
    let path = match path.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => rest,
        _ => path,
    };
    let ok = |s: &str, extra: &str| {
        !s.is_empty()
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || extra.as_bytes().contains(&b))
    };
    (ok(path, "._-/") && ok(tag, "._-") && !name.contains('@'))
        .then(|| (path.to_string(), tag.to_string()))
}

/// containerd's host configuration for the registry: TLS verified against the CA installed
/// next to it; pull and resolve only.
pub(crate) fn hosts_toml(registry: &str) -> String {
    format!(
        "# Written by hapki (signed bundle): the registry hapki push --registry fills.\n\
         server = \"https://{registry}\"\n\n\
         [host.\"https://{registry}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"{CERTS_D}/{registry}/ca.crt\"\n"
    )
}

/// Media types of an image index (a multi-platform image).
const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// What an archive's blobs say about the image indexes its `index.json` names: which blobs it
/// holds, and the bytes of each such index (to tell which platforms it carries).
#[derive(Debug, Default)]
pub(crate) struct ArchiveBlobs {
    pub present: BTreeSet<String>,
    pub indexes: BTreeMap<String, Vec<u8>>,
}

/// The descriptor a node pulls for an image: the archive's own, or — for an image index whose
/// archive holds one platform's content only (what `ctr images export` writes for an image
/// pulled for one platform) — that platform's manifest, since a registry refuses an index
/// whose manifests it lacks.
fn pullable(
    desc: &serde_json::Value,
    name: &str,
    blobs: &ArchiveBlobs,
) -> Result<serde_json::Value, String> {
    let media = desc["mediaType"].as_str().unwrap_or_default();
    if !INDEX_TYPES.contains(&media) {
        return Ok(desc.clone());
    }
    let digest = desc["digest"].as_str().unwrap_or_default();
    let bytes = blobs
        .indexes
        .get(digest)
        .ok_or_else(|| format!("{name}: the archive lacks its image index {digest}"))?;
    let idx: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| format!("{name}: its image index is not JSON ({e})"))?;
    let children = idx["manifests"].as_array().map(Vec::as_slice).unwrap_or_default();
    let held: Vec<&serde_json::Value> = children
        .iter()
        .filter(|c| c["digest"].as_str().is_some_and(|d| blobs.present.contains(d)))
        .collect();
    match held.as_slice() {
        _ if held.len() == children.len() => Ok(desc.clone()),
        [one] => Ok((*one).clone()),
        _ => Err(format!(
            "{name}: the archive holds {} of the {} platforms of its image index, which a registry refuses as a whole; export all of them (ctr images export --all-platforms) or one",
            held.len(),
            children.len()
        )),
    }
}

/// Reads the tar at `path` through once: which `blobs/sha256/…` it holds, and the bytes of
/// those among `wanted` (image indexes, a few KiB each; capped).
fn scan_blobs(path: &Path, wanted: &BTreeSet<String>) -> Result<ArchiveBlobs, String> {
    let f = std::fs::File::open(path).map_err(|e| format!("cannot read it: {e}"))?;
    let mut out = ArchiveBlobs::default();
    let mut t = tar::Archive::new(f);
    for e in t.entries().map_err(|e| format!("not a tar: {e}"))? {
        let mut e = e.map_err(|e| format!("not a tar: {e}"))?;
        let path = e.path().map_err(|e| e.to_string())?.to_string_lossy().into_owned();
        let Some(hex) = path.trim_start_matches("./").strip_prefix("blobs/sha256/") else {
            continue;
        };
        let digest = format!("sha256:{hex}");
        if wanted.contains(&digest) && e.size() <= artifacts::MAX_INDEX_JSON as u64 {
            let mut b = Vec::new();
            e.read_to_end(&mut b).map_err(|e| e.to_string())?;
            out.indexes.insert(digest.clone(), b);
        }
        out.present.insert(digest);
    }
    Ok(out)
}

/// The pull index for an archive's `index.json`: each image's descriptor (see [`pullable`]) and
/// name, annotated with the reference it is pulled by, one per line (what the node script
/// reads). An error says why an image cannot go through a registry.
pub(crate) fn pull_index(
    index_json: &[u8],
    registry: &str,
    blobs: &ArchiveBlobs,
) -> Result<Vec<u8>, String> {
    let v: serde_json::Value = serde_json::from_slice(index_json)
        .map_err(|e| format!("its index.json is not JSON ({e})"))?;
    let mut lines = Vec::new();
    for img in artifacts::archive_images(index_json).map_err(|e| e.to_string())? {
        let (repo, _) = repo_and_tag(&img.name).ok_or_else(|| {
            format!("image name {:?} is not NAME:TAG of a conservative alphabet", img.name)
        })?;
        let hex = img.digest.strip_prefix("sha256:").unwrap_or("");
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Err(format!("{}: digest {:?} is not sha256:<64 hex>", img.name, img.digest));
        }
        let d = v["manifests"]
            .as_array()
            .and_then(|m| m.iter().find(|d| d["digest"] == img.digest.as_str()))
            .ok_or("its index.json lost a descriptor")?;
        let d = pullable(d, &img.name, blobs)?;
        let digest = d["digest"].as_str().unwrap_or_default();
        let hex = digest.strip_prefix("sha256:").unwrap_or("");
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Err(format!("{}: digest {digest:?} is not sha256:<64 hex>", img.name));
        }
        let media = d["mediaType"].as_str().unwrap_or("application/vnd.oci.image.manifest.v1+json");
        if !media.bytes().all(|b| b.is_ascii_alphanumeric() || b"./+-".contains(&b)) {
            return Err(format!("{}: media type {media:?} is not one of OCI's", img.name));
        }
        // Written by hand in a fixed key order (the node script reads it with sed); every
        // value is of an alphabet that needs no JSON escaping.
        let line = format!(
            "{{\"mediaType\":\"{media}\",\"digest\":\"{}\",\"size\":{},\"annotations\":{{\"io.containerd.image.name\":\"{}\",\"{PULL_ANNOTATION}\":\"{registry}/{repo}@{}\"}}}}",
            digest,
            d["size"].as_u64().unwrap_or(0),
            img.name,
            digest
        );
        lines.push(line);
    }
    let body = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\",\"manifests\":[\n{}\n]}}\n",
        lines.join(",\n")
    );
    Ok(tar_of(&[
        ("oci-layout", b"{\"imageLayoutVersion\":\"1.0.0\"}".as_slice()),
        ("index.json", body.as_bytes()),
    ]))
}

/// A deterministic tar (root-owned 0644 entries, time 0).
fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_cksum();
        // Writing into a Vec cannot fail.
        let _ = b.append_data(&mut h, name, *data);
    }
    b.into_inner().unwrap_or_default()
}

/// The `index.json` of the tar at `path` (an OCI image archive).
fn read_index(path: &Path) -> Result<Vec<u8>, String> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("cannot read it: {e}"))?;
    let mut scan = IndexJsonScanner::default();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(|e| format!("cannot read it: {e}"))?;
        if n == 0 {
            break;
        }
        scan.feed(&buf[..n]);
    }
    scan.finish().ok_or_else(|| "it holds no index.json (an OCI image archive does)".to_string())
}

/// The blobs of the archive at `path`, read only when its `index.json` names an image index.
fn index_blobs(path: &Path, index_json: &[u8]) -> Result<ArchiveBlobs, String> {
    let v: serde_json::Value = serde_json::from_slice(index_json).unwrap_or_default();
    let wanted: BTreeSet<String> = v["manifests"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|d| d["mediaType"].as_str().is_some_and(|m| INDEX_TYPES.contains(&m)))
        .filter_map(|d| d["digest"].as_str().map(str::to_string))
        .collect();
    if wanted.is_empty() {
        return Ok(ArchiveBlobs::default());
    }
    scan_blobs(path, &wanted)
}

/// `hapki bundle --registry`: the spec's artifacts with each image archive made registry-only
/// plus its pull index, and the registry's `hosts.toml` and CA (see the module docs). The
/// generated files are written under `work`, which must outlive the bundle's creation.
pub fn for_registry(
    arts: Vec<Artifact>,
    registry: &str,
    ca: &Path,
    work: &Path,
) -> Result<Vec<Artifact>, RegistryError> {
    let registry = parse_host(registry)?;
    let pem = std::fs::read(ca)
        .map_err(|e| usage(format!("--registry-ca {}: cannot read it: {e}", ca.display())))?;
    let parsed = x509_parser::pem::parse_x509_pem(&pem);
    if !parsed.is_ok_and(|(_, p)| p.label == "CERTIFICATE" && p.parse_x509().is_ok()) {
        return Err(usage(format!(
            "--registry-ca {}: not a PEM certificate; give the CA that signed the registry's TLS certificate",
            ca.display()
        )));
    }
    let write = |name: &str, data: &[u8]| -> Result<PathBuf, RegistryError> {
        let p = work.join(name);
        std::fs::write(&p, data).map_err(|e| usage(format!("writing {}: {e}", p.display())))?;
        Ok(p)
    };
    let mut out = Vec::new();
    let mut images = 0;
    for (i, mut a) in arts.into_iter().enumerate() {
        if a.after != Some(After::ImportImages) {
            out.push(a);
            continue;
        }
        let err = |m: String| usage(format!("{} (for {}): {m}", a.source.display(), a.dest));
        let index = read_index(&a.source).map_err(&err)?;
        let blobs = index_blobs(&a.source, &index).map_err(&err)?;
        let pull = pull_index(&index, &registry, &blobs).map_err(&err)?;
        let dest = artifacts::check_dest(&format!("{}{PULL_SUFFIX}", a.dest))
            .map_err(|e| err(e.to_string()))?;
        let source = write(&format!("pull-{i}.tar"), &pull)?;
        let pull_art = Artifact {
            source,
            dest,
            mode: 0o644,
            owner: "0:0".into(),
            roles: a.roles.clone(),
            after: Some(After::PullImages),
        };
        a.after = Some(After::RegistryOnly);
        out.extend([a, pull_art]);
        images += 1;
    }
    if images == 0 {
        return Err(usage(
            "--registry: the artifacts spec has no image archive (after = \"import-images\") to put in a registry",
        ));
    }
    let all = vec![Role::ControlPlane, Role::Worker];
    for (file, data) in
        [("ca.crt", pem.clone()), ("hosts.toml", hosts_toml(&registry).into_bytes())]
    {
        out.push(Artifact {
            source: write(file, &data)?,
            dest: format!("{CERTS_D}/{registry}/{file}"),
            mode: 0o644,
            owner: "0:0".into(),
            roles: all.clone(),
            after: None,
        });
    }
    let mut seen = std::collections::BTreeSet::new();
    if let Some(a) = out.iter().find(|a| !seen.insert(a.dest.clone())) {
        return Err(usage(format!(
            "--registry: {} is both in the spec and made by --registry; drop it from the spec",
            a.dest
        )));
    }
    Ok(out)
}

/// What [`upload`] copied.
#[derive(Debug, Clone, Default)]
pub struct Uploaded {
    /// Every image: name and manifest digest, as the archive's index gives them.
    pub images: Vec<ArchiveImage>,
    /// The archives' total size (what a registry holds at most after the copy).
    pub bytes: u64,
}

/// How [`upload`] reaches the registry.
#[derive(Debug, Clone, Default)]
pub struct UploadOptions {
    /// A containers-auth.json file for skopeo (`--authfile`): credentials never go in argv.
    pub authfile: Option<PathBuf>,
}

/// What the streaming read keeps: the registry-only archives and the CA, written to `dir`.
#[derive(Default)]
struct Extract {
    /// (artifact index, where its bytes go).
    wanted: Vec<(usize, PathBuf)>,
    /// (registry-only archive, its pull index): artifact indices.
    archives: Vec<(usize, usize)>,
    current: Option<std::fs::File>,
    /// The bundle names another registry (or none).
    mismatch: Option<String>,
    error: Option<String>,
}

/// `hapki push --registry`: verifies the bundle at `path` whole, then copies its registry-only
/// archives' images into `registry` (which must be the one the signed bundle names), each
/// checked to be served with its digest afterwards. Nothing is uploaded unless the whole bundle
/// verified; nothing is written outside a 0700 temporary directory, removed on return.
pub fn upload(
    path: &Path,
    trust: &AllowedSigners,
    identities: &Identities,
    verify: &VerifyOptions,
    registry: &str,
    opts: &UploadOptions,
) -> Result<Uploaded, RegistryError> {
    let registry = parse_host(registry)?;
    if which("skopeo").is_none() {
        return Err(usage(
            "hapki push --registry copies images with skopeo, which is not installed here; apt-get install skopeo",
        ));
    }
    let tmp = tempfile::Builder::new()
        .prefix("hapki-registry-")
        .tempdir()
        .map_err(|e| RegistryError::Upload(format!("cannot create a temporary directory: {e}")))?;
    let certs = tmp.path().join("certs");
    std::fs::create_dir(&certs).map_err(|e| RegistryError::Upload(e.to_string()))?;
    let st = RefCell::new(Extract::default());
    let verified = bundle::open_streaming(
        path,
        trust,
        identities,
        verify,
        &mut |head| Ok(st.borrow_mut().plan(&head.manifest.artifacts, &registry, tmp.path())),
        &mut |ev| {
            sink(&mut st.borrow_mut(), ev);
            Ok(())
        },
    )?;
    let st = st.into_inner();
    if let Some(m) = st.mismatch {
        return Err(usage(format!("--registry {registry}: {m}")));
    }
    if let Some(e) = st.error {
        return Err(RegistryError::Upload(format!("extracting the bundle's archives: {e}")));
    }
    // The whole bundle verified: every extracted byte is the signed one.
    let mut done = Uploaded::default();
    for &(i, j) in &st.archives {
        let a = &verified.manifest.artifacts[i];
        done.bytes += a.size;
        let err = |e: String| RegistryError::Upload(format!("{}: {e}", a.dest));
        // What the nodes will pull: the signed pull index's descriptors.
        let imgs = read_index(&tmp.path().join(format!("{j}.tar")))
            .and_then(|idx| layout_images(&idx))
            .map_err(err)?;
        let (file, layout) =
            (tmp.path().join(format!("{i}.tar")), tmp.path().join(format!("layout-{i}")));
        unpack_layout(&file, &layout).map_err(err)?;
        std::fs::remove_file(&file).map_err(|e| err(e.to_string()))?;
        for img in imgs {
            copy_image(&layout, &img, &registry, &certs, opts)
                .map_err(|e| err(format!("{}: {e}", img.0.name)))?;
            done.images.push(img.0);
        }
    }
    Ok(done)
}

impl Extract {
    /// From the verified head: which artifacts to keep (the registry-only archives, the CA),
    /// or why the bundle is not for `registry` (then `false`: stop reading).
    fn plan(&mut self, arts: &[bundle::ManifestArtifact], registry: &str, tmp: &Path) -> bool {
        let hosts = format!("{CERTS_D}/{registry}/hosts.toml");
        let ca = format!("{CERTS_D}/{registry}/ca.crt");
        if !arts.iter().any(|a| a.dest == hosts) {
            let named: Vec<&str> = arts
                .iter()
                .filter_map(|a| a.dest.strip_prefix(CERTS_D)?.strip_prefix('/'))
                .filter_map(|d| d.strip_suffix("/hosts.toml"))
                .collect();
            self.mismatch = Some(match named.first() {
                None => "the bundle names no registry; make it with hapki bundle --registry HOST --registry-ca FILE".into(),
                Some(first) => format!(
                    "the bundle was made for registry {}, not {registry}; push with --registry {first}",
                    named.join(",")
                ),
            });
            return false;
        }
        for (i, a) in arts.iter().enumerate() {
            let pull = format!("{}{PULL_SUFFIX}", a.dest);
            let pull =
                arts.iter().position(|p| p.dest == pull && p.after == Some(After::PullImages));
            match (a.after, pull) {
                (Some(After::RegistryOnly), Some(j)) => {
                    self.wanted.push((i, tmp.join(format!("{i}.tar"))));
                    self.wanted.push((j, tmp.join(format!("{j}.tar"))));
                    self.archives.push((i, j));
                }
                (Some(After::RegistryOnly), None) => {
                    self.error =
                        Some(format!("{} has no pull index {pull:?} in the bundle", a.dest));
                    return false;
                }
                _ if a.dest == ca => self.wanted.push((i, tmp.join("certs/ca.crt"))),
                _ => {}
            }
        }
        true
    }
}

fn sink(st: &mut Extract, ev: bundle::ArtifactEvent<'_>) {
    if st.error.is_some() {
        return;
    }
    let r = match ev {
        bundle::ArtifactEvent::Start { index, .. } => {
            st.current = None;
            match st.wanted.iter().find(|w| w.0 == index) {
                Some((_, p)) => std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(p)
                    .map(|f| st.current = Some(f)),
                None => Ok(()),
            }
        }
        bundle::ArtifactEvent::Data(d) => match &mut st.current {
            Some(f) => f.write_all(d),
            None => Ok(()),
        },
        bundle::ArtifactEvent::End => {
            st.current = None;
            Ok(())
        }
    };
    if let Err(e) = r {
        st.error = Some(e.to_string());
    }
}

/// One image of a layout: its descriptor (as the archive's index.json has it) and name.
type LayoutImage = (ArchiveImage, serde_json::Value);

/// Unpacks an OCI archive into `dir`: regular files `oci-layout`, `index.json` and
/// `blobs/sha256/<hex>` only (nothing else, no links, no other paths).
fn unpack_layout(archive: &Path, dir: &Path) -> Result<(), String> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(|e| e.to_string())?;
    let f = std::fs::File::open(archive).map_err(|e| e.to_string())?;
    let mut t = tar::Archive::new(f);
    for e in t.entries().map_err(|e| format!("not a tar: {e}"))? {
        let mut e = e.map_err(|e| format!("not a tar: {e}"))?;
        let name = e.path().map_err(|e| e.to_string())?.to_string_lossy().into_owned();
        let name = name.trim_start_matches("./").to_string();
        let kind = e.header().entry_type();
        if kind.is_dir() && matches!(name.trim_end_matches('/'), "" | "blobs" | "blobs/sha256") {
            continue;
        }
        let blob = name.strip_prefix("blobs/sha256/").is_some_and(|h| {
            h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        });
        if !kind.is_file() || !(blob || name == "oci-layout" || name == "index.json") {
            return Err(format!("entry {name:?} is not part of an OCI image layout"));
        }
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dir.join(&name))
            .map_err(|e| format!("{name}: {e}"))?;
        std::io::copy(&mut e, &mut out).map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(())
}

/// The images an `index.json` names, each with its descriptor.
fn layout_images(index: &[u8]) -> Result<Vec<LayoutImage>, String> {
    let v: serde_json::Value = serde_json::from_slice(index).map_err(|e| e.to_string())?;
    let imgs = artifacts::archive_images(index).map_err(|e| e.to_string())?;
    Ok(imgs
        .into_iter()
        .filter_map(|img| {
            let d =
                v["manifests"].as_array()?.iter().find(|d| d["digest"] == img.digest.as_str())?;
            Some((img, d.clone()))
        })
        .collect())
}

/// Copies one image of the layout at `dir` to the registry with its manifest bytes unchanged,
/// then checks the registry serves that manifest under its digest.
fn copy_image(
    dir: &Path,
    (img, desc): &LayoutImage,
    registry: &str,
    certs: &Path,
    opts: &UploadOptions,
) -> Result<(), String> {
    let (repo, tag) = repo_and_tag(&img.name).ok_or("the name is not NAME:TAG")?;
    // skopeo picks an image of a layout by its ref.name, which two images of one archive may
    // share (the tag): the index names this image alone while it is copied.
    let mut d = desc.clone();
    d["annotations"] = serde_json::json!({ "org.opencontainers.image.ref.name": "hapki" });
    let index = serde_json::json!({ "schemaVersion": 2, "manifests": [d] });
    std::fs::write(dir.join("index.json"), index.to_string()).map_err(|e| e.to_string())?;
    let mut copy = Command::new("skopeo");
    copy.args(["copy", "--quiet", "--preserve-digests", "--dest-cert-dir"]).arg(certs);
    if let Some(a) = &opts.authfile {
        copy.arg("--dest-authfile").arg(a);
    }
    copy.arg(format!("oci:{}:hapki", dir.display()));
    copy.arg(format!("docker://{registry}/{repo}:{tag}"));
    run(&mut copy, "skopeo copy")?;
    let mut inspect = Command::new("skopeo");
    inspect.args(["inspect", "--raw", "--cert-dir"]).arg(certs);
    if let Some(a) = &opts.authfile {
        inspect.arg("--authfile").arg(a);
    }
    inspect.arg(format!("docker://{registry}/{repo}@{}", img.digest));
    let raw = run(&mut inspect, "skopeo inspect")?;
    let got = format!("sha256:{}", crate::pki::fingerprint::sha256_hex(&raw));
    if got != img.digest {
        return Err(format!(
            "the registry serves {got} for {}, not the archive's manifest; check the registry",
            img.digest
        ));
    }
    Ok(())
}

/// Runs `c`; its stdout, or its last stderr line as the error.
fn run(c: &mut Command, what: &str) -> Result<Vec<u8>, String> {
    let out = c
        .env("LC_ALL", "C")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("failed");
    let clean: String = last.chars().filter(|c| !c.is_control()).take(400).collect();
    Err(format!("{what} failed: {clean}"))
}

fn which(prog: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(prog))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_repositories() {
        for ok in ["registry.example.org", "127.0.0.1:5000", "reg-1.local:443", "localhost:5000"] {
            assert_eq!(parse_host(ok).unwrap(), ok);
        }
        for bad in [
            "",
            "a b",
            "reg:0",
            "reg:99999",
            "reg:05000",
            "-reg",
            "reg/x",
            "[::1]:5000",
            "a..b",
            "x\ny",
        ] {
            assert!(parse_host(bad).is_err(), "{bad:?} accepted");
        }
        let rt = |n: &str| repo_and_tag(n).map(|(r, t)| format!("{r} {t}"));
        assert_eq!(rt("k8s.gcr.io/pause:3.2").as_deref(), Some("pause 3.2"));
        assert_eq!(
            rt("registry.k8s.io/coredns/coredns:v1.8.0").as_deref(),
            Some("coredns/coredns v1.8.0")
        );
        assert_eq!(rt("localhost:5000/a/b:1").as_deref(), Some("a/b 1"));
        assert_eq!(rt("library/busybox:1").as_deref(), Some("library/busybox 1"));
        for bad in ["k8s.gcr.io/pause", "pause@sha256:00", "a/b:c d", "reg:5000/x", ":1"] {
            assert_eq!(rt(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_pull_index_keeps_each_descriptor_and_names_its_pull_reference() {
        let d = format!("sha256:{}", "a".repeat(64));
        let idx = format!(
            r#"{{"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{d}","size":7,"annotations":{{"io.containerd.image.name":"k8s.gcr.io/pause:3.2"}}}}]}}"#
        );
        let tar = pull_index(idx.as_bytes(), "127.0.0.1:5000", &ArchiveBlobs::default()).unwrap();
        let mut s = IndexJsonScanner::default();
        s.feed(&tar);
        let index = s.finish().unwrap();
        assert_eq!(
            artifacts::archive_images(&index).unwrap(),
            vec![ArchiveImage { name: "k8s.gcr.io/pause:3.2".into(), digest: d.clone() }]
        );
        let text = String::from_utf8(index).unwrap();
        assert!(
            text.contains(&format!("\"{PULL_ANNOTATION}\":\"127.0.0.1:5000/pause@{d}\"")),
            "{text}"
        );
        let line = format!(
            r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{d}","size":7,"annotations":{{"io.containerd.image.name":"k8s.gcr.io/pause:3.2","org.hapki.pull":"127.0.0.1:5000/pause@{d}"}}}}"#
        );
        assert!(text.lines().any(|l| l == line), "{text}");
        // One descriptor a line: what the node script reads.
        assert_eq!(text.lines().filter(|l| l.contains(PULL_ANNOTATION)).count(), 1);
        let none = ArchiveBlobs::default();
        assert!(pull_index(idx.replace(&d, "sha256:12").as_bytes(), "r", &none).is_err());
        assert!(pull_index(idx.replace("pause:3.2", "pause").as_bytes(), "r", &none).is_err());
    }

    #[test]
    fn a_registry_bundle_sends_pull_indexes_and_the_registry_config_not_archives() {
        let dir = tempfile::tempdir().unwrap();
        let d = format!("sha256:{}", "b".repeat(64));
        let idx = format!(
            r#"{{"manifests":[{{"digest":"{d}","size":9,"annotations":{{"io.containerd.image.name":"k8s.gcr.io/pause:3.2"}}}}]}}"#
        );
        let archive = dir.path().join("node.tar");
        std::fs::write(&archive, tar_of(&[("index.json", idx.as_bytes())])).unwrap();
        let ca = dir.path().join("ca.crt");
        let cert = rcgen::generate_simple_self_signed(vec!["ca".into()]).unwrap();
        std::fs::write(&ca, cert.cert.pem()).unwrap();
        let art = |source: &Path, dest: &str, after| Artifact {
            source: source.to_path_buf(),
            dest: dest.into(),
            mode: 0o644,
            owner: "0:0".into(),
            roles: vec![Role::Worker],
            after,
        };
        let spec = vec![
            art(&archive, "/i/node.tar", Some(After::ImportImages)),
            art(&ca, "/etc/x.conf", None),
        ];
        let work = dir.path().join("work");
        std::fs::create_dir(&work).unwrap();
        let out = for_registry(spec.clone(), "reg:5000", &ca, &work).unwrap();
        let got: Vec<(&str, Option<After>, usize)> =
            out.iter().map(|a| (a.dest.as_str(), a.after, a.roles.len())).collect();
        assert_eq!(
            got,
            [
                ("/i/node.tar", Some(After::RegistryOnly), 1),
                ("/i/node.tar.pull.tar", Some(After::PullImages), 1),
                ("/etc/x.conf", None, 1),
                ("/etc/containerd/certs.d/reg:5000/ca.crt", None, 2),
                ("/etc/containerd/certs.d/reg:5000/hosts.toml", None, 2),
            ]
        );
        let hosts = std::fs::read_to_string(&out[4].source).unwrap();
        assert!(
            hosts.contains("[host.\"https://reg:5000\"]") && hosts.contains("reg:5000/ca.crt"),
            "{hosts}"
        );
        let bad =
            |spec: Vec<Artifact>, ca: &Path| for_registry(spec, "reg:5000", ca, &work).unwrap_err();
        assert!(bad(spec.clone(), &archive).to_string().contains("not a PEM certificate"));
        assert!(bad(spec[1..].to_vec(), &ca).to_string().contains("no image archive"));
        let clash =
            vec![spec[0].clone(), art(&ca, "/etc/containerd/certs.d/reg:5000/ca.crt", None)];
        assert!(bad(clash, &ca).to_string().contains("made by --registry"));
    }

    #[test]
    fn an_index_with_one_platform_held_is_pulled_as_that_platform() {
        let h = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let child = |c: char, arch: &str| serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": h(c), "size": 5, "platform": {"architecture": arch, "os": "linux"}});
        let index = serde_json::json!({"manifests": [child('1', "amd64"), child('2', "arm64"), child('3', "386")]});
        let desc = serde_json::json!({"mediaType": INDEX_TYPES[0], "digest": h('9'), "size": 300});
        let mut blobs = ArchiveBlobs::default();
        blobs.indexes.insert(h('9'), serde_json::to_vec(&index).unwrap());
        assert!(pullable(&desc, "x", &ArchiveBlobs::default()).is_err(), "index blob missing");
        blobs.present.insert(h('1'));
        assert_eq!(pullable(&desc, "x", &blobs).unwrap()["digest"], h('1'));
        blobs.present.insert(h('2'));
        let e = pullable(&desc, "x", &blobs).unwrap_err();
        assert!(e.contains("2 of the 3 platforms"), "{e}");
        blobs.present.insert(h('3'));
        assert_eq!(pullable(&desc, "x", &blobs).unwrap(), desc, "all held: the index itself");
        let manifest = child('4', "amd64");
        assert_eq!(pullable(&manifest, "x", &ArchiveBlobs::default()).unwrap(), manifest);
    }
}
