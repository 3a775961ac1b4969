//! `hapki config check --bundle`: every image kubeadm will ask for is in the bundle, for the
//! control-plane role, and containerd's pause image is kubeadm's.
//!
//! The image list is what the real `kubeadm config images list --config FILE` prints (it knows
//! its own version's images and applies the config's `imageRepository`); the bundle's images are
//! the names in the `index.json` of each image archive the bundle installs on control-plane nodes
//! with `after = "import-images"` — the names `ctr images import` gives them. The bundle is
//! verified (signature, hashes) like every bundle before any of its bytes are trusted.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use super::{one_line, ConfigReport, Finding};
use crate::artifacts::{archive_images, After, IndexJsonScanner, Role};
use crate::bundle::{self, trust::AllowedSigners, ArtifactEvent, BundleError, Identities};
use crate::error::{Categorized, Category};

/// Why the image cross-check could not run (its findings go into the [`ConfigReport`]).
#[derive(Debug, thiserror::Error)]
pub enum ImagesError {
    #[error("cannot run {} ({error}); give --kubeadm PATH, the kubeadm of the version you install", path.display())]
    NoKubeadm { path: PathBuf, error: std::io::Error },
    #[error("cannot read containerd config {}: {error}; give --containerd-config PATH of a readable file", path.display())]
    ContainerdRead { path: PathBuf, error: std::io::Error },
    #[error("containerd config {} is not valid TOML: {message}; fix it (containerd would refuse it too)", path.display())]
    ContainerdToml { path: PathBuf, message: String },
    #[error(transparent)]
    Bundle(#[from] BundleError),
}

impl Categorized for ImagesError {
    fn category(&self) -> Category {
        match self {
            ImagesError::Bundle(e) => e.category(),
            ImagesError::ContainerdRead { error, .. }
                if error.kind() != std::io::ErrorKind::NotFound =>
            {
                Category::Unexpected
            }
            _ => Category::Usage,
        }
    }
}

/// What the image cross-check looked at (the findings are in the report's problems/warnings).
#[derive(Debug, Clone, Serialize)]
pub struct ImageCheck {
    /// The kubeadm binary that listed the images.
    pub kubeadm: String,
    /// What it listed (empty when it refused the config).
    pub expected: Vec<String>,
    /// Images named by the bundle's control-plane image archives, by archive destination.
    pub bundled: BTreeMap<String, Vec<String>>,
    /// The containerd config read, and its pause image setting (`None`: not set there).
    pub containerd_config: Option<String>,
    pub sandbox_image: Option<String>,
}

/// Where the cross-check reads its inputs.
pub struct ImageInputs<'a> {
    pub config: &'a Path,
    /// The kubeadm to run (`kubeadm` on PATH when `None`).
    pub kubeadm: Option<&'a Path>,
    pub bundle: &'a Path,
    pub trust: &'a AllowedSigners,
    pub identities: &'a Identities,
    /// containerd's config; `None`: `CONTAINERD_CONFIG` when it exists.
    pub containerd_config: Option<&'a Path>,
}

/// containerd's config file, read by default when present.
pub(crate) const CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";

/// Runs the cross-check and adds its findings to `report` (whose `ok` is updated).
pub fn check_images(inputs: &ImageInputs, report: &mut ConfigReport) -> Result<(), ImagesError> {
    let kubeadm = inputs.kubeadm.unwrap_or(Path::new("kubeadm"));
    let listed = kubeadm_images(kubeadm, inputs.config)?;
    let default = Path::new(CONTAINERD_CONFIG);
    let containerd_config = inputs.containerd_config.or(default.exists().then_some(default));
    let sandbox = match containerd_config {
        Some(p) => Some((p, sandbox_image(p)?)),
        None => None,
    };
    let archives = control_plane_images(inputs.bundle, inputs.trust, inputs.identities)?;
    let expected = match listed {
        Listed::Images(list) => list,
        Listed::Refused(why) => {
            report.problems.push(Finding {
                field: "images".into(),
                message: format!(
                    "`{} config images list --config {}` refused the config ({why}); fix what it \
                     names, or give --kubeadm PATH of the kubeadm version you install",
                    kubeadm.display(),
                    inputs.config.display()
                ),
            });
            Vec::new()
        }
    };
    let sandbox_ref = sandbox.as_ref().map(|(p, s)| (*p, s.as_deref()));
    let (problems, warnings) = cross_check(&expected, &archives, sandbox_ref);
    report.problems.extend(problems);
    report.warnings.extend(warnings);
    report.ok = report.problems.is_empty();
    report.images = Some(ImageCheck {
        kubeadm: kubeadm.display().to_string(),
        expected,
        bundled: archives
            .iter()
            .map(|a| {
                let names = a.images.clone().unwrap_or_default();
                (a.dest.clone(), names)
            })
            .collect(),
        containerd_config: sandbox.as_ref().map(|(p, _)| p.display().to_string()),
        sandbox_image: sandbox.and_then(|(_, s)| s),
    });
    Ok(())
}

/// What `kubeadm config images list` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Listed {
    /// The images the config needs.
    Images(Vec<String>),
    /// kubeadm refused the config: why (the last line it wrote to stderr).
    Refused(String),
}

/// `kubeadm config images list --config CONFIG`: the images, or why kubeadm refused the
/// config; `Err` only when kubeadm cannot be run.
pub(crate) fn kubeadm_images(kubeadm: &Path, config: &Path) -> Result<Listed, ImagesError> {
    let out = Command::new(kubeadm)
        .args(["config", "images", "list", "--config"])
        .arg(config)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|error| ImagesError::NoKubeadm { path: kubeadm.to_owned(), error })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let images: Vec<String> = stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.contains(char::is_whitespace))
        .map(String::from)
        .collect();
    if out.status.success() && !images.is_empty() {
        return Ok(Listed::Images(images));
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let why = stderr.lines().rev().find(|l| !l.trim().is_empty()).map(one_line);
    let why = why.unwrap_or_else(|| format!("it exited with {} and listed no image", out.status));
    Ok(Listed::Refused(why))
}

/// containerd's pause image setting in its config (`None`: not set; containerd's built-in
/// default applies). Knows the 1.x `version = 2` key, the `version = 1` key and 2.x's.
pub fn sandbox_image(path: &Path) -> Result<Option<String>, ImagesError> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| ImagesError::ContainerdRead { path: path.to_owned(), error })?;
    let v: toml::Value = toml::from_str(&text).map_err(|e| ImagesError::ContainerdToml {
        path: path.to_owned(),
        message: one_line(&e.to_string()),
    })?;
    let plugins = v.get("plugins");
    let at = |keys: &[&str]| {
        keys.iter().try_fold(plugins?, |v, k| v.get(k)).and_then(|s| s.as_str()).map(String::from)
    };
    Ok(at(&["io.containerd.grpc.v1.cri", "sandbox_image"])
        .or_else(|| at(&["cri", "sandbox_image"]))
        .or_else(|| at(&["io.containerd.cri.v1.images", "pinned_images", "sandbox"])))
}

/// One image archive the bundle installs (and imports) on control-plane nodes.
#[derive(Debug, Clone)]
pub(crate) struct BundledArchive {
    pub dest: String,
    /// The names its `index.json` gives, or why they cannot be read.
    pub images: Result<Vec<String>, crate::artifacts::IndexError>,
}

/// Verifies the bundle (like every bundle) and reads the `index.json` of every image archive it
/// imports on control-plane nodes, streaming: nothing but those small files is held.
pub(crate) fn control_plane_images(
    path: &Path,
    trust: &AllowedSigners,
    identities: &Identities,
) -> Result<Vec<BundledArchive>, BundleError> {
    #[derive(Default)]
    struct State {
        wanted: BTreeSet<usize>,
        current: Option<(usize, IndexJsonScanner)>,
        found: BTreeMap<usize, Option<Vec<u8>>>,
    }
    let st = RefCell::new(State::default());
    let verified = bundle::open_streaming(
        path,
        trust,
        identities,
        &bundle::VerifyOptions::default(),
        &mut |head| {
            let wanted = head.manifest.artifacts.iter().enumerate().filter(|(_, a)| {
                a.after.is_some_and(After::names_images) && a.roles.contains(&Role::ControlPlane)
            });
            st.borrow_mut().wanted = wanted.map(|(i, _)| i).collect();
            Ok(true)
        },
        &mut |ev| {
            let mut st = st.borrow_mut();
            match ev {
                ArtifactEvent::Start { index, .. } => {
                    st.current =
                        st.wanted.contains(&index).then(|| (index, IndexJsonScanner::default()));
                }
                ArtifactEvent::Data(d) => {
                    if let Some((_, s)) = st.current.as_mut() {
                        s.feed(d);
                    }
                }
                ArtifactEvent::End => {
                    if let Some((i, s)) = st.current.take() {
                        st.found.insert(i, s.finish());
                    }
                }
            }
            Ok(())
        },
    )?;
    let mut found = st.into_inner().found;
    let archives = verified.manifest.artifacts.iter().enumerate().filter_map(|(i, a)| {
        let index = found.remove(&i)?;
        let images = match index {
            None => Err(crate::artifacts::IndexError::Absent),
            Some(bytes) => archive_images(&bytes).map(|v| v.into_iter().map(|a| a.name).collect()),
        };
        Some(BundledArchive { dest: a.dest.clone(), images })
    });
    Ok(archives.collect())
}

/// The last path segment of an image's repository: `pause` for `k8s.gcr.io/pause:3.2`.
fn repo_name(image: &str) -> &str {
    let repo = image.split('@').next().unwrap_or(image);
    let last = repo.rsplit('/').next().unwrap_or(repo);
    last.split(':').next().unwrap_or(last)
}

/// Problems and warnings of `expected` (kubeadm's list) against the bundle's control-plane
/// archives and containerd's sandbox image (`(config path, setting)` when a config was read).
pub(crate) fn cross_check(
    expected: &[String],
    archives: &[BundledArchive],
    sandbox: Option<(&Path, Option<&str>)>,
) -> (Vec<Finding>, Vec<Finding>) {
    let (mut problems, mut warnings) = (Vec::new(), Vec::new());
    let mut have = BTreeSet::new();
    for a in archives {
        match &a.images {
            Ok(names) => have.extend(names.iter().map(String::as_str)),
            Err(why) => warnings.push(Finding {
                field: format!("bundle {}", a.dest),
                message: format!(
                    "the image archive's images cannot be told: {why}; build it as an OCI archive \
                     (skopeo copy … oci-archive:FILE:NAME, or ctr images export)"
                ),
            }),
        }
    }
    for image in expected.iter().filter(|i| !have.contains(i.as_str())) {
        problems.push(Finding {
            field: "images".into(),
            message: format!(
                "{image} is in no image archive the bundle imports on control-plane nodes, and \
                 kubeadm needs it; add an archive holding it to the artifacts spec with roles \
                 including \"control-plane\" and after = \"import-images\", then rebuild the bundle"
            ),
        });
    }
    let pause = expected.iter().find(|i| repo_name(i) == "pause");
    if let (Some(pause), Some((path, setting))) = (pause, sandbox) {
        sandbox_finding(pause, path, setting, &mut problems, &mut warnings);
    }
    (problems, warnings)
}

fn sandbox_finding(
    pause: &str,
    path: &Path,
    setting: Option<&str>,
    problems: &mut Vec<Finding>,
    warnings: &mut Vec<Finding>,
) {
    let fix = format!(
        "set sandbox_image = \"{pause}\" under [plugins.\"io.containerd.grpc.v1.cri\"] in {} and \
         restart containerd",
        path.display()
    );
    let field = "containerd.sandbox_image".to_string();
    match setting {
        Some(s) if s == pause => {}
        Some(s) => problems.push(Finding {
            field,
            message: format!(
                "is \"{s}\" but kubeadm's pause image is {pause}: every pod would need an image \
                 the bundle does not import, pulled from a registry an air-gapped site cannot \
                 reach; {fix}"
            ),
        }),
        None => warnings.push(Finding {
            field,
            message: format!(
                "is not set in {}: containerd uses its built-in pause image (registry.k8s.io/\
                 pause:3.6 in containerd 1.6), not kubeadm's {pause}; {fix}",
                path.display()
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(dest: &str, names: &[&str]) -> BundledArchive {
        BundledArchive {
            dest: dest.into(),
            images: Ok(names.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn repo_names() {
        assert_eq!(repo_name("k8s.gcr.io/pause:3.2"), "pause");
        assert_eq!(repo_name("registry.local:5000/k8s/pause:3.9"), "pause");
        assert_eq!(repo_name("pause@sha256:ab"), "pause");
        assert_eq!(repo_name("k8s.gcr.io/coredns/coredns:v1.8.0"), "coredns");
    }

    #[test]
    fn missing_images_and_sandbox() {
        let want: Vec<String> =
            ["k8s.gcr.io/pause:3.2", "k8s.gcr.io/etcd:3.4.13-0"].map(String::from).to_vec();
        let cfg = Path::new("/etc/containerd/config.toml");
        let full = [
            archive("/a", &["k8s.gcr.io/pause:3.2"]),
            archive("/b", &["k8s.gcr.io/etcd:3.4.13-0"]),
        ];
        let (p, w) = cross_check(&want, &full, Some((cfg, Some("k8s.gcr.io/pause:3.2"))));
        assert!(p.is_empty() && w.is_empty(), "{p:?} {w:?}");
        let (p, _) = cross_check(&want, &full[..1], None);
        assert_eq!(p.len(), 1);
        assert!(p[0].message.starts_with("k8s.gcr.io/etcd:3.4.13-0 "), "{}", p[0].message);
        let (p, _) = cross_check(&want, &full, Some((cfg, Some("k8s.gcr.io/pause:3.5"))));
        assert_eq!(p[0].field, "containerd.sandbox_image");
        let (p, w) = cross_check(&want, &full, Some((cfg, None)));
        assert!(p.is_empty() && w[0].field == "containerd.sandbox_image");
        let bad = [BundledArchive {
            dest: "/c".into(),
            images: Err(crate::artifacts::IndexError::NoImage),
        }];
        let (p, w) = cross_check(&want, &bad, None);
        assert_eq!((p.len(), w.len()), (2, 1));
    }
}
