//! `hapki audit`: which CA is on which node, since when, signed by whom — side by side.
//!
//! The comparison is pure: [`audit_node`] turns one node's [`NodeFacts`] and a [`Reference`]
//! (the bundle, or the first master) into findings; the runner only gathers facts in parallel.
//! Divergent CAs across control planes are a known hours-long debugging story (a different
//! front-proxy CA per master breaks webhooks), and kubeadm's own expiry check sees one node at
//! a time and never the CAs' lifetime — this sees the whole cluster at once.

pub mod report;
pub mod served;

use std::collections::BTreeMap;

use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::inventory::Role;
use crate::node::facts::{NodeFacts, PathKind};
use crate::pki::chain::{self, ChainCheck};
use crate::pki::fingerprint::sha256_hex;
use crate::pki::{parse, FileKind, SHARED_FILES};
use crate::transport::escape_node_text;

/// Problem kinds, named as in the interface's JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Missing,
    Drift,
    Mode,
    Owner,
    Expiring,
    Expired,
    Issuer,
    KubeconfigCa,
    KeyOnWorker,
    Unreachable,
    Unreadable,
    ImageMissing,
    ImageDigest,
    ImageUnpinned,
    StaleServedCert,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Missing => "missing",
            Kind::Drift => "drift",
            Kind::Mode => "mode",
            Kind::Owner => "owner",
            Kind::Expiring => "expiring",
            Kind::Expired => "expired",
            Kind::Issuer => "issuer",
            Kind::KubeconfigCa => "kubeconfig-ca",
            Kind::KeyOnWorker => "key-on-worker",
            Kind::Unreachable => "unreachable",
            Kind::Unreadable => "unreadable",
            Kind::ImageMissing => "image-missing",
            Kind::ImageDigest => "image-digest",
            Kind::ImageUnpinned => "image-unpinned",
            Kind::StaleServedCert => "stale-served-cert",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub node: String,
    pub file: Option<String>,
    pub kind: Kind,
    pub message: String,
}

/// What every node is compared against: the shared files' hashes and the CA certificates.
#[derive(Debug, Clone, Default)]
pub struct Reference {
    /// Where it came from: `bundle <path>` or `node <name>`.
    pub source: String,
    /// Relative name → SHA-256 of the file bytes.
    pub sha256: BTreeMap<String, String>,
    /// CA certificate PEMs by relative name (`ca.crt`, `front-proxy-ca.crt`, `etcd/ca.crt`).
    pub ca_pem: BTreeMap<String, Vec<u8>>,
    /// Artifacts a bundle installs (checked on the nodes whose role gets them).
    pub artifacts: Vec<crate::bundle::ManifestArtifact>,
}

impl Reference {
    /// The artifact destinations a node of `role` should hold.
    pub fn artifact_dests(&self, role: Role) -> Vec<&str> {
        self.artifacts.iter().filter(|a| a.roles.contains(&role)).map(|a| a.dest.as_str()).collect()
    }

    /// [`Reference::artifact_dests`] as the facts script takes them (image archives marked).
    pub fn facts_args(&self, role: Role) -> Vec<String> {
        self.artifacts
            .iter()
            .filter(|a| a.roles.contains(&role))
            .map(|a| crate::artifacts::facts_arg(&a.dest, a.after))
            .collect()
    }
}

impl Reference {
    /// A reference from the eight files' bytes (a verified bundle, or local files).
    pub fn from_files<'a>(
        source: impl Into<String>,
        files: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Self {
        let mut r = Reference { source: source.into(), ..Default::default() };
        for (name, bytes) in files {
            r.sha256.insert(name.to_string(), sha256_hex(bytes));
            if name.ends_with(".crt") {
                r.ca_pem.insert(name.to_string(), bytes.to_vec());
            }
        }
        r
    }

    /// A reference from the first master's facts: its hashes, and the CA certificates it sent.
    pub fn from_facts(node: &str, facts: &NodeFacts) -> Self {
        let mut r = Reference { source: format!("node {node}"), ..Default::default() };
        for (name, st) in &facts.shared {
            if let Some(h) = &st.sha256 {
                r.sha256.insert(name.clone(), h.clone());
            }
            if let Some(pem) = facts.certificates.get(name) {
                r.ca_pem.insert(name.clone(), pem.clone());
            }
        }
        r
    }
}

#[derive(Debug, Clone, Copy)]
pub struct AuditOptions {
    pub warn_within: crate::duration::Duration,
    pub now: OffsetDateTime,
}

/// One shared file on one node: a cell of the matrix.
#[derive(Debug, Clone, Serialize)]
pub struct FileCell {
    pub present: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spki_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Differs from the reference.
    pub drift: bool,
}

/// One certificate under the node's pki directory.
#[derive(Debug, Clone, Serialize)]
pub struct CertRow {
    pub file: String,
    pub subject: String,
    pub issuer: String,
    pub not_after: String,
    pub days_left: i64,
    /// Signed by the shared CA it must chain to (checked cryptographically); `None` for the CAs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer_ok: Option<bool>,
    /// Unix time of `not_after`, for Prometheus.
    #[serde(skip)]
    pub not_after_unix: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeAudit {
    pub node: String,
    pub role: String,
    pub reachable: bool,
    pub files: BTreeMap<String, FileCell>,
    /// The bundle's artifacts this node's role gets, by destination (only with a reference
    /// bundle that carries artifacts).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub artifacts: BTreeMap<String, FileCell>,
    /// Each image the bundle's image archives name for this node → `present`, `missing`,
    /// `unpinned`, `digest sha256:…` (the other digest containerd holds); keyed by the archive's
    /// dest instead, `unknown` (containerd did not answer) or `unchecked` (its index names no
    /// image).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub images: BTreeMap<String, String>,
    pub certificates: Vec<CertRow>,
    /// Kubeconfig name → its embedded CA equals ca.crt.
    pub kubeconfig_ca_ok: BTreeMap<String, bool>,
    /// Serial of the last bundle hapki installed on the node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_install_serial: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    pub ok: bool,
    pub reference: String,
    pub nodes: Vec<NodeAudit>,
    pub problems: Vec<Problem>,
    /// Per node, the certificate that ends first ([`served::nearest`]).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub nearest_expiry: BTreeMap<String, served::NearestExpiry>,
    /// With `--served`: per node, what its servers present ([`served::run`]).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub served: BTreeMap<String, served::NodeServed>,
}

fn mode_str(m: Option<u32>) -> Option<String> {
    m.map(|m| format!("{m:04o}"))
}

/// A node that could not be reached: a finding, and an empty column in the matrix.
pub fn unreachable(node: &str, role: Role, reason: &str) -> (NodeAudit, Vec<Problem>) {
    (
        NodeAudit {
            node: node.into(),
            role: role.to_string(),
            reachable: false,
            files: BTreeMap::new(),
            artifacts: BTreeMap::new(),
            images: BTreeMap::new(),
            certificates: Vec::new(),
            kubeconfig_ca_ok: BTreeMap::new(),
            last_install_serial: None,
        },
        vec![Problem {
            node: node.into(),
            file: None,
            kind: Kind::Unreachable,
            message: escape_node_text(&format!("{reason}; the other nodes were audited"), false),
        }],
    )
}

/// Compares one node's facts with the reference.
pub fn audit_node(
    node: &str,
    role: Role,
    facts: &NodeFacts,
    reference: &Reference,
    opts: &AuditOptions,
) -> (NodeAudit, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut p = |file: Option<&str>, kind: Kind, message: String| {
        let message = escape_node_text(&message, false);
        problems.push(Problem { node: node.into(), file: file.map(str::to_string), kind, message })
    };
    let mut files = BTreeMap::new();
    for spec in SHARED_FILES {
        let name = spec.name;
        let st = facts.shared.get(name);
        let present = st.is_some_and(|s| s.kind != PathKind::Missing);
        let mut cell = FileCell {
            present,
            sha256: None,
            cert_sha256: None,
            spki_sha256: None,
            mode: None,
            owner: None,
            drift: false,
        };
        if let Some(st) = st.filter(|_| present) {
            cell.sha256 = st.sha256.clone();
            cell.mode = mode_str(st.mode);
            cell.owner = st.uid.zip(st.gid).map(|(u, g)| format!("{u}:{g}"));
            let is_key = spec.kind == FileKind::PrivateKey;
            if role == Role::Worker && name != "ca.crt" {
                let kind = if is_key { Kind::KeyOnWorker } else { Kind::Drift };
                p(
                    Some(name),
                    kind,
                    if is_key {
                        format!("a shared private key is on a worker; workers need none: remove /etc/kubernetes/pki/{name} and rotate the key if the node is not trusted")
                    } else {
                        format!("workers need only ca.crt; remove /etc/kubernetes/pki/{name}")
                    },
                );
            }
            if st.kind != PathKind::File {
                p(Some(name), Kind::Drift, format!("{name} is not a regular file (a symlink or directory); replace it with the real file"));
            }
            match (&st.sha256, reference.sha256.get(name)) {
                (Some(h), Some(r)) if h != r => {
                    cell.drift = true;
                    p(Some(name), Kind::Drift, format!("{name} differs from the reference ({}): push the bundle again, or with --replace if the node holds another CA", reference.source));
                }
                (None, _) if st.kind == PathKind::File => {
                    p(Some(name), Kind::Unreadable, format!("{name} could not be read on the node"))
                }
                _ => {}
            }
            if let Some(mode) = st.mode {
                // Keys must not be readable by anyone but root; certificates may be looser
                // than kubeadm's 0644 only in the direction of tighter.
                let loose = if spec.kind == FileKind::Certificate {
                    mode & 0o022 != 0
                } else {
                    mode & 0o077 != 0
                };
                if loose {
                    p(Some(name), Kind::Mode, format!("{name} has mode {mode:04o}, kubeadm writes {:04o}: chmod {:o} /etc/kubernetes/pki/{name}", spec.mode, spec.mode));
                }
            }
            if st.uid.is_some_and(|u| u != 0) || st.gid.is_some_and(|g| g != 0) {
                p(Some(name), Kind::Owner, format!("{name} is owned by {}, not root: chown root:root /etc/kubernetes/pki/{name}", cell.owner.clone().unwrap_or_default()));
            }
        } else {
            let expected = role == Role::ControlPlane || name == "ca.crt";
            if expected {
                p(
                    Some(name),
                    Kind::Missing,
                    format!("{name} is missing: push the bundle to this node (hapki push)"),
                );
            }
        }
        files.insert(name.to_string(), cell);
    }

    // Every certificate: expiry, and the issuer checked with the CA's key.
    let mut certificates = Vec::new();
    let warn_at = opts.now + opts.warn_within.to_time();
    let leaf_end = opts.now + time::Duration::days(365);
    for (name, pem) in &facts.certificates {
        let cert = match parse::parse_certificate(name, pem) {
            Ok(c) => c,
            Err(e) => {
                p(Some(name), Kind::Unreadable, e.to_string());
                continue;
            }
        };
        if let Some(cell) = files.get_mut(name.as_str()) {
            cell.cert_sha256 = Some(cert.cert_sha256());
            cell.spki_sha256 = Some(cert.public.spki_sha256());
        }
        let is_shared_ca =
            SHARED_FILES.iter().any(|f| f.name == name && f.kind == FileKind::Certificate);
        let days_left = (cert.not_after - opts.now).whole_days();
        let end = cert.not_after.format(&Rfc3339).unwrap_or_default();
        if cert.not_after <= opts.now {
            p(
                Some(name),
                Kind::Expired,
                format!(
                    "{name} expired on {end}: renew it (kubeadm certs renew, or a new CA for a CA)"
                ),
            );
        } else if cert.not_after <= warn_at {
            p(
                Some(name),
                Kind::Expiring,
                format!("{name} expires on {end} ({days_left} days left): renew it before then"),
            );
        } else if is_shared_ca && cert.not_after < leaf_end {
            p(Some(name), Kind::Expiring, format!("CA {name} ends on {end}, before a one-year leaf issued today would: plan a CA rotation"));
        }
        let issuer_ok = if is_shared_ca {
            None
        } else {
            let ca_name = chain::expected_ca(name);
            match reference.ca_pem.get(ca_name) {
                None => None,
                Some(ca) => match chain::check_issued_by(pem, ca) {
                    ChainCheck::SignedBy => Some(true),
                    ChainCheck::ForeignIssuer(issuer) => {
                        p(Some(name), Kind::Issuer, format!("{name} is not signed by the cluster's {ca_name} (issuer {issuer}): remove it and let kubeadm regenerate it (kubeadm init phase certs, or re-join)"));
                        Some(false)
                    }
                    ChainCheck::Unreadable(e) => {
                        p(Some(name), Kind::Unreadable, format!("{name}: {e}"));
                        Some(false)
                    }
                },
            }
        };
        certificates.push(CertRow {
            file: name.clone(),
            subject: cert.subject.clone(),
            issuer: cert.issuer.clone(),
            not_after: end,
            days_left,
            issuer_ok,
            not_after_unix: cert.not_after.unix_timestamp(),
        });
    }

    // Artifacts from the bundle: present, with the signed hash, mode and numeric owner.
    let mut artifacts = BTreeMap::new();
    for a in reference.artifacts.iter().filter(|a| a.roles.contains(&role)) {
        let st = facts.artifact_dests.get(&a.dest);
        let present = st.is_some_and(|s| s.kind != PathKind::Missing);
        artifacts.insert(
            a.dest.clone(),
            FileCell {
                present,
                sha256: st.filter(|_| present).and_then(|s| s.sha256.clone()),
                cert_sha256: None,
                spki_sha256: None,
                mode: st.filter(|_| present).and_then(|s| mode_str(s.mode)),
                owner: st
                    .filter(|_| present)
                    .and_then(|s| s.uid.zip(s.gid))
                    .map(|(u, g)| format!("{u}:{g}")),
                drift: present
                    && st.is_some_and(|s| {
                        s.kind != PathKind::File || s.sha256.as_deref() != Some(a.sha256.as_str())
                    }),
            },
        );
        match st {
            Some(st) if st.kind == PathKind::File => {
                if st.sha256.as_deref() != Some(a.sha256.as_str()) {
                    p(
                        Some(&a.dest),
                        Kind::Drift,
                        format!(
                            "{} differs from the bundle's {} (sha256 {}); push the bundle again",
                            a.dest,
                            a.name,
                            st.sha256.as_deref().unwrap_or("unreadable")
                        ),
                    );
                } else if st.mode != Some(a.mode) {
                    p(
                        Some(&a.dest),
                        Kind::Mode,
                        format!(
                            "{} has mode {}, the bundle says {:04o}; push again or chmod {:04o} {}",
                            a.dest,
                            mode_str(st.mode).unwrap_or_else(|| "?".into()),
                            a.mode,
                            a.mode,
                            a.dest
                        ),
                    );
                } else if let Some((u, g)) = a.owner.split_once(':') {
                    let num = |s: &str, v: Option<u32>| {
                        s.parse::<u32>().map(|n| Some(n) == v).unwrap_or(true)
                    };
                    if !(num(u, st.uid) && num(g, st.gid)) {
                        p(
                            Some(&a.dest),
                            Kind::Owner,
                            format!(
                                "{} is not owned by {}; push again or chown {} {}",
                                a.dest, a.owner, a.owner, a.dest
                            ),
                        );
                    }
                }
            }
            Some(st) if st.kind != PathKind::Missing => {
                p(
                    Some(&a.dest),
                    Kind::Drift,
                    format!(
                        "{} is not a regular file; move it away and push the bundle again",
                        a.dest
                    ),
                );
            }
            _ => p(
                Some(&a.dest),
                Kind::Missing,
                format!("{} ({}) is missing; push the bundle", a.dest, a.name),
            ),
        }
    }

    // Kubeconfigs embed the cluster CA; one with another CA cannot talk to this API server.
    let mut kubeconfig_ca_ok = BTreeMap::new();
    if let Some(ca) = reference.ca_pem.get("ca.crt") {
        let ca_der = parse::parse_certificate("ca.crt", ca).map(|c| c.der).ok();
        for (conf, pem) in &facts.kubeconfig_ca {
            let der = parse::parse_certificate(conf, pem).map(|c| c.der).ok();
            let ok = der.is_some() && der == ca_der;
            if !ok {
                p(Some(conf), Kind::KubeconfigCa, format!("/etc/kubernetes/{conf} embeds a CA that is not the cluster's ca.crt: regenerate it (kubeadm init phase kubeconfig) or fix certificate-authority-data"));
            }
            kubeconfig_ca_ok.insert(conf.clone(), ok);
        }
    }

    let images = audit_images(node, role, facts, reference, &mut problems);
    (
        NodeAudit {
            node: node.into(),
            role: role.to_string(),
            reachable: true,
            files,
            artifacts,
            images,
            certificates,
            kubeconfig_ca_ok,
            last_install_serial: facts.last_serial,
        },
        problems,
    )
}

/// The images of the bundle's image archives for this node's role, each as containerd holds
/// it; an archive that is itself missing or different is already a problem of its own.
fn audit_images(
    node: &str,
    role: Role,
    facts: &NodeFacts,
    reference: &Reference,
    problems: &mut Vec<Problem>,
) -> BTreeMap<String, String> {
    use crate::artifacts::{archive_images, images_on_node, After, ImageState};
    let mut images = BTreeMap::new();
    let archives = reference
        .artifacts
        .iter()
        .filter(|a| a.roles.contains(&role) && a.after == Some(After::ImportImages));
    for a in archives {
        let intact = facts.artifact_dests.get(&a.dest).is_some_and(|s| {
            s.kind == PathKind::File && s.sha256.as_deref() == Some(a.sha256.as_str())
        });
        if !intact {
            continue;
        }
        let mut p = |kind: Kind, message: String| {
            problems.push(Problem { node: node.into(), file: Some(a.dest.clone()), kind, message })
        };
        let readable = facts.image_index.get(&a.dest).is_some_and(|i| archive_images(i).is_ok());
        if !readable {
            // No image names to check (e.g. a docker-archive without index.json): the signed
            // hash above is all there is to say.
            images.insert(a.dest.clone(), "unchecked".into());
            continue;
        }
        let states = match images_on_node(facts, &a.dest) {
            Ok(s) => s,
            Err(e) => {
                images.insert(a.dest.clone(), "unknown".into());
                p(
                    Kind::ImageMissing,
                    format!("cannot tell whether the images of {} are in containerd: {e}", a.dest),
                );
                continue;
            }
        };
        for (img, st) in states {
            let (cell, kind, message) = match &st {
                ImageState::Present => ("present".to_string(), None, String::new()),
                ImageState::Missing => (
                    "missing".into(),
                    Some(Kind::ImageMissing),
                    format!("{} (from {}) is not in containerd's k8s.io namespace; push the bundle again", img.name, a.dest),
                ),
                ImageState::Digest(d) => (
                    format!("digest {d}"),
                    Some(Kind::ImageDigest),
                    format!("{} is {d} in containerd, the bundle's {} says {}; push the bundle again", img.name, a.dest, img.digest),
                ),
                ImageState::Unpinned => (
                    "unpinned".into(),
                    Some(Kind::ImageUnpinned),
                    format!("{} is not pinned (io.cri-containerd.pinned=pinned), so the kubelet's image GC may delete it; push the bundle again or ctr -n k8s.io images label {} io.cri-containerd.pinned=pinned", img.name, img.name),
                ),
            };
            if let Some(kind) = kind {
                p(kind, message);
            }
            images.insert(img.name, cell);
        }
    }
    images
}

/// One node to audit.
#[derive(Debug, Clone)]
pub struct AuditTarget {
    pub target: crate::transport::Target,
    pub role: Role,
}

/// Gathers every node's facts in parallel (read-only) and compares them with `reference`, or,
/// without one, with the first control-plane node's files.
pub fn run(
    targets: &[AuditTarget],
    transport: &dyn crate::transport::Transport,
    reference: Option<Reference>,
    opts: &AuditOptions,
    parallel: usize,
    paths: &crate::node::NodePaths,
) -> AuditReport {
    let gathered = crate::transport::for_each_parallel(targets, parallel.max(1), |t| {
        let args = reference.as_ref().map(|r| r.facts_args(t.role)).unwrap_or_default();
        let dests: Vec<&str> = args.iter().map(String::as_str).collect();
        transport.connect(&t.target).map_err(|e| e.to_string()).and_then(|mut s| {
            crate::node::read_facts_with(s.as_mut(), paths, crate::node::FactsScope::Pki, &dests)
        })
    });
    let reference = reference.unwrap_or_else(|| {
        targets
            .iter()
            .zip(&gathered)
            .find(|(t, _)| t.role == Role::ControlPlane)
            .and_then(|(t, f)| f.as_ref().ok().map(|f| Reference::from_facts(&t.target.name, f)))
            .unwrap_or_else(|| Reference {
                source: "none (first master unreachable)".into(),
                ..Default::default()
            })
    });
    let mut nodes = Vec::new();
    let mut problems = Vec::new();
    for (t, facts) in targets.iter().zip(&gathered) {
        let (n, p) = match facts {
            Ok(f) => audit_node(&t.target.name, t.role, f, &reference, opts),
            Err(e) => unreachable(&t.target.name, t.role, e),
        };
        nodes.push(n);
        problems.extend(p);
    }
    AuditReport {
        ok: problems.is_empty(),
        reference: reference.source,
        nodes,
        problems,
        nearest_expiry: BTreeMap::new(),
        served: BTreeMap::new(),
    }
}

/// `audit --local`: the same checks on this machine, without SSH (for cron on each node).
pub fn run_local(
    node: &str,
    role: Role,
    reference: Option<Reference>,
    opts: &AuditOptions,
    paths: &crate::node::NodePaths,
) -> AuditReport {
    match crate::node::read_facts_local(paths) {
        Ok(f) => {
            let reference = reference.unwrap_or_else(|| Reference::from_facts(node, &f));
            let (n, problems) = audit_node(node, role, &f, &reference, opts);
            AuditReport {
                ok: problems.is_empty(),
                reference: reference.source,
                nodes: vec![n],
                problems,
                nearest_expiry: BTreeMap::new(),
                served: BTreeMap::new(),
            }
        }
        Err(e) => {
            let (n, problems) = unreachable(node, role, &e);
            AuditReport {
                ok: false,
                reference: "none".into(),
                nodes: vec![n],
                problems,
                nearest_expiry: BTreeMap::new(),
                served: BTreeMap::new(),
            }
        }
    }
}
