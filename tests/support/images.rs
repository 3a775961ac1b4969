//! OCI image archives made offline for the tests: umoci builds each image (one layer holding
//! one small file) in an OCI layout, no registry and no network; the layout is then tarred as
//! the `oci-archive` that `ctr images import` reads. Each image is named in index.json by the
//! `io.containerd.image.name` annotation (the name ctr gives it), e.g. `k8s.gcr.io/pause:3.2`.
//!
//! Include it with `#[path = "support/images.rs"] mod images;`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// kubeadm 1.20.2's images, as `kubeadm config images list --kubernetes-version v1.20.2` prints
/// them (the real binary, run by hand on this machine; written out here, not taken from hapki).
pub const KUBEADM_1_20_2: [&str; 7] = [
    "k8s.gcr.io/kube-apiserver:v1.20.2",
    "k8s.gcr.io/kube-controller-manager:v1.20.2",
    "k8s.gcr.io/kube-scheduler:v1.20.2",
    "k8s.gcr.io/kube-proxy:v1.20.2",
    "k8s.gcr.io/pause:3.2",
    "k8s.gcr.io/etcd:3.4.13-0",
    "k8s.gcr.io/coredns:1.7.0",
];

fn run(c: &mut Command) {
    let out = c.output().unwrap_or_else(|e| panic!("{c:?}: {e} (apt-get install -y umoci)"));
    assert!(out.status.success(), "{c:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Builds an OCI archive at `out` holding one image per name (`work` is scratch space).
/// With `truncate_layer`, the first image's layer blob is cut in half before tarring: a
/// well-formed archive that containerd cannot import.
pub fn oci_archive(work: &Path, out: &Path, names: &[&str], truncate_layer: bool) -> PathBuf {
    oci_archive_with(work, out, names, truncate_layer, false)
}

/// [`oci_archive`]; with `partial_index`, the first image is a multi-platform image index
/// (this machine's platform and two others) whose archive holds this platform's content only:
/// what `ctr images export` writes for an image pulled for one platform.
pub fn oci_archive_with(
    work: &Path,
    out: &Path,
    names: &[&str],
    truncate_layer: bool,
    partial_index: bool,
) -> PathBuf {
    build(work, out, names, truncate_layer, partial_index, 0)
}

/// [`oci_archive`] whose every image also carries `random_bytes` of random data (which gzip
/// cannot shrink): archives of a known, real size, for measuring what a transfer costs.
/// With `partial_index`, the first image is an index as [`oci_archive_with`] makes it.
pub fn oci_archive_sized(
    work: &Path,
    out: &Path,
    names: &[&str],
    random_bytes: usize,
    partial_index: bool,
) -> PathBuf {
    build(work, out, names, false, partial_index, random_bytes)
}

fn build(
    work: &Path,
    out: &Path,
    names: &[&str],
    truncate_layer: bool,
    partial_index: bool,
    random_bytes: usize,
) -> PathBuf {
    let stem = out.file_name().unwrap().to_string_lossy().replace('.', "_");
    let layout = work.join(format!("layout-{stem}"));
    let _ = std::fs::remove_dir_all(&layout);
    std::fs::create_dir_all(work).unwrap();
    run(Command::new("umoci").args(["init", "--layout"]).arg(&layout));
    for (i, name) in names.iter().enumerate() {
        let image = format!("{}:t{i}", layout.display());
        run(Command::new("umoci").args(["new", "--image", &image]));
        let file = work.join(format!("{stem}-{i}"));
        // Some bytes of its own per image, so every layer (and digest) differs.
        let mut body = format!("hapki test image {name}\n").into_bytes();
        body.resize(body.len() + 4096 * (i + 1), b'x');
        body.extend((0..random_bytes).map(|_| rand::random::<u8>()));
        std::fs::write(&file, body).unwrap();
        run(Command::new("umoci").args(["insert", "--image", &image]).arg(&file).arg("/content"));
    }
    let index_path = layout.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    for m in index["manifests"].as_array_mut().unwrap() {
        let tag = m["annotations"]["org.opencontainers.image.ref.name"].as_str().unwrap();
        let i: usize = tag.trim_start_matches('t').parse().unwrap();
        let name = names[i];
        m["annotations"] = serde_json::json!({
            "io.containerd.image.name": name,
            "org.opencontainers.image.ref.name": name.rsplit(':').next().unwrap(),
        });
    }
    if partial_index {
        wrap_in_partial_index(&layout, &mut index);
    }
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
    if truncate_layer {
        let layer = first_layer(&layout, &index);
        let len = std::fs::metadata(&layer).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&layer).unwrap();
        f.set_len(len / 2).unwrap();
    }
    // index.json first: readers that stop at the first match find it at once.
    run(Command::new("tar").arg("-C").arg(&layout).arg("-cf").arg(out).args([
        "oci-layout",
        "index.json",
        "blobs",
    ]));
    out.to_path_buf()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Replaces the first manifest of `index` by an image index naming it for this machine's
/// platform and two other platforms whose content the archive lacks.
fn wrap_in_partial_index(layout: &Path, index: &mut serde_json::Value) {
    let m = index["manifests"][0].clone();
    let absent = |arch: &str| {
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{}", sha256_hex(format!("absent {arch}").as_bytes())),
            "size": 500,
            "platform": {"architecture": arch, "os": "linux"},
        })
    };
    // This machine's platform holds the content (umoci builds for it); two others are absent.
    let here = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let mut manifests = vec![serde_json::json!({
        "mediaType": m["mediaType"], "digest": m["digest"], "size": m["size"],
        "platform": {"architecture": here, "os": "linux"},
    })];
    manifests.extend(
        ["amd64", "arm64", "386"].iter().filter(|a| **a != here).take(2).map(|a| absent(a)),
    );
    let list = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    });
    let bytes = serde_json::to_vec(&list).unwrap();
    let digest = format!("sha256:{}", sha256_hex(&bytes));
    std::fs::write(blob(layout, &digest), &bytes).unwrap();
    index["manifests"][0] = serde_json::json!({
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": digest,
        "size": bytes.len(),
        "annotations": m["annotations"],
    });
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    layout.join("blobs/sha256").join(digest.strip_prefix("sha256:").unwrap())
}

fn first_layer(layout: &Path, index: &serde_json::Value) -> PathBuf {
    let manifest = blob(layout, index["manifests"][0]["digest"].as_str().unwrap());
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(manifest).unwrap()).unwrap();
    blob(layout, m["layers"][0]["digest"].as_str().unwrap())
}

/// name → manifest digest, read straight from the archive's own index.json (GNU tar and
/// serde_json; nothing of hapki's).
pub fn index_digests(archive: &Path) -> Vec<(String, String)> {
    let out = Command::new("tar").arg("-xOf").arg(archive).arg("index.json").output().unwrap();
    assert!(out.status.success(), "no index.json in {}", archive.display());
    let index: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["annotations"]["io.containerd.image.name"].as_str().unwrap().to_string(),
                m["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// `ctr -n k8s.io images ls` output as name → (digest, pinned): the columns read by hand here
/// (REF TYPE DIGEST …, LABELS last), nothing of hapki's.
pub fn parse_ctr_ls(ls: &str) -> std::collections::BTreeMap<String, (String, bool)> {
    ls.lines()
        .skip(1)
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let pinned = w.last()?.split(',').any(|x| x == "io.cri-containerd.pinned=pinned");
            Some((w.first()?.to_string(), (w.get(2)?.to_string(), pinned)))
        })
        .collect()
}

/// name → the digest a node pulls for it: [`index_digests`], except that an image index whose
/// archive holds one platform's manifest only resolves to that manifest (read with tar and
/// serde_json from the archive's own blobs).
pub fn pulled_digests(archive: &Path) -> Vec<(String, String)> {
    let out = Command::new("tar").arg("-tf").arg(archive).output().unwrap();
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    let held = |d: &str| listing.lines().any(|l| l.ends_with(d.trim_start_matches("sha256:")));
    index_digests(archive)
        .into_iter()
        .map(|(name, digest)| {
            let hex = digest.trim_start_matches("sha256:");
            let blob = Command::new("tar")
                .arg("-xOf")
                .arg(archive)
                .arg(format!("blobs/sha256/{hex}"))
                .output()
                .unwrap();
            let v: serde_json::Value = serde_json::from_slice(&blob.stdout).unwrap_or_default();
            let held: Vec<&str> = v["manifests"]
                .as_array()
                .map(|m| {
                    m.iter().filter_map(|c| c["digest"].as_str()).filter(|d| held(d)).collect()
                })
                .unwrap_or_default();
            match held.as_slice() {
                [one] if v["manifests"].as_array().is_some_and(|m| m.len() > 1) => {
                    (name, one.to_string())
                }
                _ => (name, digest),
            }
        })
        .collect()
}
