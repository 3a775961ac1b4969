//! `hapki audit`: which CA is on which node, since when, signed by whom — side by side.
//!
//! The comparison is pure: `audit_node` turns one node's [`NodeFacts`] and a [`Reference`]
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

use crate::cluster::{ClusterNode, Reference};
use crate::error::{Categorized, Category};
use crate::finding::{Finding, FindingKind as Kind};
use crate::inventory::Role;
use crate::node::facts::{NodeFacts, PathKind, PathState};
use crate::node::{FactsScope, NodeError};
use crate::pki::chain::{self, ChainCheck};
use crate::pki::{parse, FileKind, SharedFile, SHARED_FILES};
use crate::transport::escape_node_text;

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
    pub problems: Vec<Finding>,
    /// Per node, the certificate that ends first ([`served::nearest`]).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub nearest_expiry: BTreeMap<String, served::NearestExpiry>,
    /// With `--served`: per node, what its servers present ([`served::run`]).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub served: BTreeMap<String, served::NodeServed>,
}

impl AuditReport {
    fn new(reference: String, nodes: Vec<NodeAudit>, problems: Vec<Finding>) -> Self {
        AuditReport {
            ok: problems.is_empty(),
            reference,
            nodes,
            problems,
            nearest_expiry: BTreeMap::new(),
            served: BTreeMap::new(),
        }
    }

    /// What the exit code says: `None` when clean, [`Category::Findings`] for problems, or the
    /// category of an unread node's failure when it ranks higher (a changed host key: exit 4).
    pub fn category(&self) -> Option<Category> {
        crate::finding::category(&self.problems)
    }
}

fn mode_str(m: Option<u32>) -> Option<String> {
    m.map(|m| format!("{m:04o}"))
}

fn owner_str(st: &PathState) -> Option<String> {
    st.uid.zip(st.gid).map(|(u, g)| format!("{u}:{g}"))
}

/// The findings of one node, as they are found (node text escaped on the way in).
struct NodeFindings<'a> {
    node: &'a str,
    list: Vec<Finding>,
}

impl NodeFindings<'_> {
    fn add(&mut self, file: Option<&str>, kind: Kind, message: String) {
        let message = escape_node_text(&message, false);
        self.list.push(Finding::new(self.node, file, kind, message));
    }
}

/// A node that could not be read: a finding (whose category is the failure's: a changed host
/// key stays a host-key failure), and an empty column in the matrix.
pub fn unreachable(node: &str, role: Role, error: &NodeError) -> (NodeAudit, Vec<Finding>) {
    let message = escape_node_text(&format!("{error}; the other nodes were audited"), false);
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
        vec![Finding::unreachable(node, error.category(), message)],
    )
}

/// Compares one node's facts with the reference.
pub(crate) fn audit_node(
    node: &str,
    role: Role,
    facts: &NodeFacts,
    reference: &Reference,
    opts: &AuditOptions,
) -> (NodeAudit, Vec<Finding>) {
    let mut found = NodeFindings { node, list: Vec::new() };
    let mut files = BTreeMap::new();
    for spec in &SHARED_FILES {
        files.insert(spec.name.to_string(), shared_file(&mut found, spec, role, facts, reference));
    }
    let certificates = certificates(&mut found, facts, reference, opts, &mut files);
    let artifacts = artifacts(&mut found, role, facts, reference);
    let kubeconfig_ca_ok = kubeconfig_cas(&mut found, facts, reference);
    let images = audit_images(&mut found, role, facts, reference);
    let audit = NodeAudit {
        node: node.into(),
        role: role.to_string(),
        reachable: true,
        files,
        artifacts,
        images,
        certificates,
        kubeconfig_ca_ok,
        last_install_serial: facts.last_serial,
    };
    (audit, found.list)
}

/// One shared file: present where its role needs it (and nowhere else), the reference's
/// bytes, a regular file, root's, and no looser than kubeadm writes it.
fn shared_file(
    found: &mut NodeFindings,
    spec: &SharedFile,
    role: Role,
    facts: &NodeFacts,
    reference: &Reference,
) -> FileCell {
    let name = spec.name;
    let Some(st) = facts.shared.get(name).filter(|s| s.kind != PathKind::Missing) else {
        if role == Role::ControlPlane || name == "ca.crt" {
            let message = format!("{name} is missing: push the bundle to this node (hapki push)");
            found.add(Some(name), Kind::Missing, message);
        }
        return FileCell::absent();
    };
    let mut cell = FileCell {
        sha256: st.sha256.clone(),
        mode: mode_str(st.mode),
        owner: owner_str(st),
        ..FileCell::absent()
    };
    cell.present = true;
    if role == Role::Worker && name != "ca.crt" {
        if spec.kind == FileKind::PrivateKey {
            found.add(Some(name), Kind::KeyOnWorker, format!("a shared private key is on a worker; workers need none: remove /etc/kubernetes/pki/{name} and rotate the key if the node is not trusted"));
        } else {
            found.add(
                Some(name),
                Kind::Drift,
                format!("workers need only ca.crt; remove /etc/kubernetes/pki/{name}"),
            );
        }
    }
    if st.kind != PathKind::File {
        found.add(Some(name), Kind::Drift, format!("{name} is not a regular file (a symlink or directory); replace it with the real file"));
    }
    match (&st.sha256, reference.sha256.get(name)) {
        (Some(h), Some(r)) if h != r => {
            cell.drift = true;
            found.add(Some(name), Kind::Drift, format!("{name} differs from the reference ({}): push the bundle again, or with --replace if the node holds another CA", reference.source));
        }
        (None, _) if st.kind == PathKind::File => {
            found.add(Some(name), Kind::Unreadable, format!("{name} could not be read on the node"))
        }
        _ => {}
    }
    if let Some(mode) = st.mode {
        // Keys must not be readable by anyone but root; certificates may be looser than
        // kubeadm's 0644 only in the direction of tighter.
        let loose = if spec.kind == FileKind::Certificate { 0o022 } else { 0o077 };
        if mode & loose != 0 {
            found.add(Some(name), Kind::Mode, format!("{name} has mode {mode:04o}, kubeadm writes {:04o}: chmod {:o} /etc/kubernetes/pki/{name}", spec.mode, spec.mode));
        }
    }
    if st.uid.is_some_and(|u| u != 0) || st.gid.is_some_and(|g| g != 0) {
        found.add(
            Some(name),
            Kind::Owner,
            format!(
                "{name} is owned by {}, not root: chown root:root /etc/kubernetes/pki/{name}",
                cell.owner.clone().unwrap_or_default()
            ),
        );
    }
    cell
}

impl FileCell {
    fn absent() -> Self {
        FileCell {
            present: false,
            sha256: None,
            cert_sha256: None,
            spki_sha256: None,
            mode: None,
            owner: None,
            drift: false,
        }
    }
}

/// Every certificate under the pki directory: expiry, and the issuer checked with the CA's key.
/// Fills in the fingerprints of the shared files' cells.
fn certificates(
    found: &mut NodeFindings,
    facts: &NodeFacts,
    reference: &Reference,
    opts: &AuditOptions,
    files: &mut BTreeMap<String, FileCell>,
) -> Vec<CertRow> {
    let mut rows = Vec::new();
    for (name, pem) in &facts.certificates {
        let cert = match parse::parse_certificate(name, pem) {
            Ok(c) => c,
            Err(e) => {
                found.add(Some(name), Kind::Unreadable, e.to_string());
                continue;
            }
        };
        if let Some(cell) = files.get_mut(name.as_str()) {
            cell.cert_sha256 = Some(cert.cert_sha256());
            cell.spki_sha256 = Some(cert.public.spki_sha256());
        }
        let is_shared_ca =
            SHARED_FILES.iter().any(|f| f.name == name && f.kind == FileKind::Certificate);
        let end = cert.not_after.format(&Rfc3339).unwrap_or_default();
        let days_left = (cert.not_after - opts.now).whole_days();
        expiry(found, name, cert.not_after, &end, days_left, is_shared_ca, opts);
        let issuer_ok = if is_shared_ca { None } else { issuer(found, name, pem, reference) };
        rows.push(CertRow {
            file: name.clone(),
            subject: cert.subject.clone(),
            issuer: cert.issuer.clone(),
            not_after: end,
            days_left,
            issuer_ok,
            not_after_unix: cert.not_after.unix_timestamp(),
        });
    }
    rows
}

/// Expired, expiring within the window, or (a shared CA) ending before a leaf issued today.
fn expiry(
    found: &mut NodeFindings,
    name: &str,
    not_after: OffsetDateTime,
    end: &str,
    days_left: i64,
    is_shared_ca: bool,
    opts: &AuditOptions,
) {
    let warn_at = opts.now + opts.warn_within.to_time();
    let leaf_end = opts.now + time::Duration::days(365);
    if not_after <= opts.now {
        found.add(
            Some(name),
            Kind::Expired,
            format!(
                "{name} expired on {end}: renew it (kubeadm certs renew, or a new CA for a CA)"
            ),
        );
    } else if not_after <= warn_at {
        found.add(
            Some(name),
            Kind::Expiring,
            format!("{name} expires on {end} ({days_left} days left): renew it before then"),
        );
    } else if is_shared_ca && not_after < leaf_end {
        found.add(Some(name), Kind::Expiring, format!("CA {name} ends on {end}, before a one-year leaf issued today would: plan a CA rotation"));
    }
}

/// Whether a leaf is signed by the shared CA it must chain to (`None`: no such CA to check).
fn issuer(found: &mut NodeFindings, name: &str, pem: &[u8], reference: &Reference) -> Option<bool> {
    let ca_name = chain::expected_ca(name);
    let ca = reference.ca_pem.get(ca_name)?;
    match chain::check_issued_by(pem, ca) {
        ChainCheck::SignedBy => Some(true),
        ChainCheck::ForeignIssuer(issuer) => {
            found.add(Some(name), Kind::Issuer, format!("{name} is not signed by the cluster's {ca_name} (issuer {issuer}): remove it and let kubeadm regenerate it (kubeadm init phase certs, or re-join)"));
            Some(false)
        }
        ChainCheck::Unreadable(e) => {
            found.add(Some(name), Kind::Unreadable, format!("{name}: {e}"));
            Some(false)
        }
    }
}

/// The bundle's artifacts for this node's role: present, with the signed hash, mode and
/// numeric owner.
fn artifacts(
    found: &mut NodeFindings,
    role: Role,
    facts: &NodeFacts,
    reference: &Reference,
) -> BTreeMap<String, FileCell> {
    let mut cells = BTreeMap::new();
    for a in reference.artifacts.iter().filter(|a| a.on_node(role)) {
        let st = facts.artifact_dests.get(&a.dest).filter(|s| s.kind != PathKind::Missing);
        let cell = match st {
            None => FileCell::absent(),
            Some(st) => FileCell {
                present: true,
                sha256: st.sha256.clone(),
                mode: mode_str(st.mode),
                owner: owner_str(st),
                drift: st.kind != PathKind::File || st.sha256.as_deref() != Some(a.sha256.as_str()),
                ..FileCell::absent()
            },
        };
        cells.insert(a.dest.clone(), cell);
        artifact_findings(found, a, st);
    }
    cells
}

fn artifact_findings(
    found: &mut NodeFindings,
    a: &crate::bundle::ManifestArtifact,
    st: Option<&PathState>,
) {
    let dest = Some(a.dest.as_str());
    let Some(st) = st else {
        let message = format!("{} ({}) is missing; push the bundle", a.dest, a.name);
        return found.add(dest, Kind::Missing, message);
    };
    if st.kind != PathKind::File {
        let message =
            format!("{} is not a regular file; move it away and push the bundle again", a.dest);
        return found.add(dest, Kind::Drift, message);
    }
    if st.sha256.as_deref() != Some(a.sha256.as_str()) {
        let got = st.sha256.as_deref().unwrap_or("unreadable");
        let message = format!(
            "{} differs from the bundle's {} (sha256 {got}); push the bundle again",
            a.dest, a.name
        );
        found.add(dest, Kind::Drift, message);
    } else if st.mode != Some(a.mode) {
        let mode = mode_str(st.mode).unwrap_or_else(|| "?".into());
        let message = format!(
            "{} has mode {mode}, the bundle says {:04o}; push again or chmod {:04o} {}",
            a.dest, a.mode, a.mode, a.dest
        );
        found.add(dest, Kind::Mode, message);
    } else if let Some((u, g)) = a.owner.split_once(':') {
        // Only numeric ids can be compared with what the node reports.
        let same = |s: &str, v: Option<u32>| s.parse::<u32>().map(|n| Some(n) == v).unwrap_or(true);
        if !(same(u, st.uid) && same(g, st.gid)) {
            let message = format!(
                "{} is not owned by {}; push again or chown {} {}",
                a.dest, a.owner, a.owner, a.dest
            );
            found.add(dest, Kind::Owner, message);
        }
    }
}

/// Kubeconfigs embed the cluster CA; one with another CA cannot talk to this API server.
fn kubeconfig_cas(
    found: &mut NodeFindings,
    facts: &NodeFacts,
    reference: &Reference,
) -> BTreeMap<String, bool> {
    let mut ok_by_conf = BTreeMap::new();
    let Some(ca) = reference.ca_pem.get("ca.crt") else { return ok_by_conf };
    let ca_der = parse::parse_certificate("ca.crt", ca).map(|c| c.der).ok();
    for (conf, pem) in &facts.kubeconfig_ca {
        let der = parse::parse_certificate(conf, pem).map(|c| c.der).ok();
        let ok = der.is_some() && der == ca_der;
        if !ok {
            found.add(Some(conf), Kind::KubeconfigCa, format!("/etc/kubernetes/{conf} embeds a CA that is not the cluster's ca.crt: regenerate it (kubeadm init phase kubeconfig) or fix certificate-authority-data"));
        }
        ok_by_conf.insert(conf.clone(), ok);
    }
    ok_by_conf
}

/// The images of the bundle's image archives for this node's role, each as containerd holds
/// it; an archive that is itself missing or different is already a problem of its own.
fn audit_images(
    found: &mut NodeFindings,
    role: Role,
    facts: &NodeFacts,
    reference: &Reference,
) -> BTreeMap<String, String> {
    use crate::artifacts::{archive_images, images_on_node, After};
    let mut images = BTreeMap::new();
    let archives = reference
        .artifacts
        .iter()
        .filter(|a| a.roles.contains(&role) && a.after.is_some_and(After::names_images));
    for a in archives {
        let intact = facts.artifact_dests.get(&a.dest).is_some_and(|s| {
            s.kind == PathKind::File && s.sha256.as_deref() == Some(a.sha256.as_str())
        });
        if !intact {
            continue;
        }
        let readable = facts.image_index.get(&a.dest).is_some_and(|i| archive_images(i).is_ok());
        if !readable {
            // No image names to check (e.g. a docker-archive without index.json): the signed
            // hash above is all there is to say.
            images.insert(a.dest.clone(), "unchecked".into());
            continue;
        }
        match images_on_node(facts, &a.dest) {
            Ok(states) => {
                for (img, st) in states {
                    images.insert(img.name.clone(), image_state(found, a, &img, &st));
                }
            }
            Err(e) => {
                images.insert(a.dest.clone(), "unknown".into());
                let message =
                    format!("cannot tell whether the images of {} are in containerd: {e}", a.dest);
                found.add(Some(&a.dest), Kind::ImageMissing, message);
            }
        }
    }
    images
}

/// One image's cell in the matrix, and its finding when it is not as the bundle says.
fn image_state(
    found: &mut NodeFindings,
    a: &crate::bundle::ManifestArtifact,
    img: &crate::artifacts::ArchiveImage,
    st: &crate::artifacts::ImageState,
) -> String {
    use crate::artifacts::ImageState;
    let (cell, finding) = match st {
        ImageState::Present => ("present".to_string(), None),
        ImageState::Missing => (
            "missing".into(),
            Some((Kind::ImageMissing, format!("{} (from {}) is not in containerd's k8s.io namespace; push the bundle again", img.name, a.dest))),
        ),
        ImageState::Digest(d) => (
            format!("digest {d}"),
            Some((Kind::ImageDigest, format!("{} is {d} in containerd, the bundle's {} says {}; push the bundle again", img.name, a.dest, img.digest))),
        ),
        ImageState::Unpinned => (
            "unpinned".into(),
            Some((Kind::ImageUnpinned, format!("{} is not pinned (io.cri-containerd.pinned=pinned), so the kubelet's image GC may delete it; push the bundle again or ctr -n k8s.io images label {} io.cri-containerd.pinned=pinned", img.name, img.name))),
        ),
    };
    if let Some((kind, message)) = finding {
        found.add(Some(&a.dest), kind, message);
    }
    cell
}

/// Gathers every node's facts in parallel (read-only) and compares them with `reference`, or,
/// without one, with the first control-plane node's files.
pub fn run(
    nodes: &[ClusterNode],
    transport: &dyn crate::transport::Transport,
    reference: Option<Reference>,
    opts: &AuditOptions,
    parallel: usize,
    paths: &crate::node::NodePaths,
) -> AuditReport {
    let dests = |role| reference.as_ref().map(|r| r.facts_args(role)).unwrap_or_default();
    let gathered =
        crate::cluster::gather_facts(nodes, transport, parallel, paths, FactsScope::Pki, &dests);
    let reference = Reference::or_first_master(reference, nodes, &gathered);
    let mut audits = Vec::new();
    let mut problems = Vec::new();
    for (n, facts) in nodes.iter().zip(&gathered) {
        let (a, p) = match facts {
            Ok(f) => audit_node(n.name(), n.role, f, &reference, opts),
            Err(e) => unreachable(n.name(), n.role, e),
        };
        audits.push(a);
        problems.extend(p);
    }
    AuditReport::new(reference.source, audits, problems)
}

/// `audit --local`: the same checks on this machine, without SSH (for cron on each node),
/// under its hostname.
pub fn run_local(
    role: Role,
    reference: Option<Reference>,
    opts: &AuditOptions,
    paths: &crate::node::NodePaths,
) -> AuditReport {
    let node = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    let node = node.as_str();
    match crate::node::read_facts_local(paths) {
        Ok(f) => {
            let reference = reference.unwrap_or_else(|| Reference::from_facts(node, &f));
            let (n, problems) = audit_node(node, role, &f, &reference, opts);
            AuditReport::new(reference.source, vec![n], problems)
        }
        Err(e) => {
            let (n, problems) = unreachable(node, role, &e);
            AuditReport::new("none".into(), vec![n], problems)
        }
    }
}
