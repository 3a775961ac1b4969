//! `hapki audit --served`: what every node's TLS servers PRESENT (kube-apiserver :6443, etcd
//! :2379 and :2380, controller-manager :10257, scheduler :10259, where running) beside the file
//! each should present — fingerprint and expiry side by side, a mismatch being the problem
//! `stale-served-cert` (a renewed file the server never reloaded) — and the client
//! certificate of every kubeconfig (kubelet.conf included, workers too), with its expiry.
//!
//! Always (with or without `--served`): the nearest expiry per node, and the
//! `hapki_cert_expiry_seconds{node,file}` gauge.
//!
//! The node side is `hapki renew`'s read-only probe (src/node/renew.sh), one exec per node.

use std::collections::BTreeMap;

use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{AuditOptions, AuditReport};
use crate::cluster::ClusterNode;
use crate::finding::{Finding, FindingKind as Kind};
use crate::node::NodePaths;
use crate::renew::{self, ServedCheck};
use crate::transport::{escape_node_text, Transport};

/// A kubeconfig's client certificate.
#[derive(Debug, Clone, Serialize)]
pub struct ClientCertRow {
    pub kubeconfig: String,
    pub subject: String,
    pub not_after: String,
    pub days_left: i64,
    #[serde(skip)]
    pub not_after_unix: i64,
}

/// What `--served` found on one node.
#[derive(Debug, Clone, Serialize)]
pub struct NodeServed {
    pub served: Vec<ServedCheck>,
    pub kubeconfig_client_certs: Vec<ClientCertRow>,
}

/// The certificate of a node that ends first.
#[derive(Debug, Clone, Serialize)]
pub struct NearestExpiry {
    pub file: String,
    pub not_after: String,
    pub seconds_left: i64,
}

/// Probes every node in parallel and adds its servers, kubeconfig client certificates and
/// problems to `report`; an unreachable node is already a problem of the main audit.
pub fn run(
    nodes: &[ClusterNode],
    transport: &dyn Transport,
    opts: &AuditOptions,
    parallel: usize,
    paths: &NodePaths,
    report: &mut AuditReport,
) {
    let probes = crate::transport::for_each_parallel(nodes, parallel.max(1), |n| {
        let mut s = transport.connect(&n.target).map_err(|e| e.to_string())?;
        let address = n.advertise_address.as_deref().unwrap_or(&n.address);
        renew::probe(s.as_mut(), paths, address)
    });
    for (n, probe) in nodes.iter().zip(probes) {
        let node = n.name().to_string();
        let Ok(snap) = probe else { continue };
        let served = renew::served_checks(&snap, None, &paths.pki_dir(), &[]);
        for c in served.iter().filter(|c| !c.ok) {
            let file = c.file.clone().unwrap_or_else(|| format!(":{}", c.port));
            let message = escape_node_text(&c.message, false);
            let kind = Kind::StaleServedCert;
            report.problems.push(Finding::new(&node, Some(&file), kind, message));
        }
        let rows = client_rows(&snap, opts);
        for r in &rows {
            if let Some(p) = client_problem(&node, r, opts) {
                report.problems.push(p);
            }
        }
        report.served.insert(node, NodeServed { served, kubeconfig_client_certs: rows });
    }
    report.ok = report.problems.is_empty();
}

fn client_rows(snap: &renew::snapshot::Snapshot, opts: &AuditOptions) -> Vec<ClientCertRow> {
    snap.certs
        .iter()
        .filter(|(f, _)| f.ends_with(".conf"))
        .map(|(f, c)| ClientCertRow {
            kubeconfig: f.rsplit('/').next().unwrap_or(f).to_string(),
            subject: c.subject.clone(),
            not_after: c.not_after.format(&Rfc3339).unwrap_or_default(),
            days_left: (c.not_after - opts.now).whole_days(),
            not_after_unix: c.not_after.unix_timestamp(),
        })
        .collect()
}

fn client_problem(node: &str, r: &ClientCertRow, opts: &AuditOptions) -> Option<Finding> {
    let end = OffsetDateTime::from_unix_timestamp(r.not_after_unix).ok()?;
    let fix = match r.kubeconfig.as_str() {
        "kubelet.conf" => {
            "the kubelet rotates it: check that it runs with rotateCertificates".to_string()
        }
        k => format!("hapki renew --only {k}"),
    };
    let (kind, message) = if end <= opts.now {
        (
            Kind::Expired,
            format!("{}'s client certificate expired on {}: {fix}", r.kubeconfig, r.not_after),
        )
    } else if end <= opts.now + opts.warn_within.to_time() {
        let msg = format!(
            "{}'s client certificate expires on {} ({} days left): {fix}",
            r.kubeconfig, r.not_after, r.days_left
        );
        (Kind::Expiring, msg)
    } else {
        return None;
    };
    Some(Finding::new(node, Some(&r.kubeconfig), kind, message))
}

/// Every (node, file, notAfter as Unix time) the report knows: certificates under the pki
/// directory and, with `--served`, the kubeconfigs' client certificates.
fn expiries(report: &AuditReport) -> Vec<(&str, &str, i64)> {
    let mut v = Vec::new();
    for n in &report.nodes {
        for c in &n.certificates {
            v.push((n.node.as_str(), c.file.as_str(), c.not_after_unix));
        }
        for r in
            report.served.get(&n.node).map(|s| &s.kubeconfig_client_certs).into_iter().flatten()
        {
            v.push((n.node.as_str(), r.kubeconfig.as_str(), r.not_after_unix));
        }
    }
    v
}

/// Fills `report.nearest_expiry`: per node, the certificate that ends first.
pub fn nearest(report: &mut AuditReport, now: OffsetDateTime) {
    let mut best: BTreeMap<String, NearestExpiry> = BTreeMap::new();
    for (node, file, end) in expiries(report) {
        let left = end - now.unix_timestamp();
        if best.get(node).is_some_and(|b| b.seconds_left <= left) {
            continue;
        }
        let not_after = OffsetDateTime::from_unix_timestamp(end)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_default();
        best.insert(
            node.into(),
            NearestExpiry { file: file.into(), not_after, seconds_left: left },
        );
    }
    report.nearest_expiry = best;
}

/// `hapki_cert_expiry_seconds{node,file}`: seconds until each certificate ends (negative once
/// it has), and `hapki_served_cert_matches{node,port}` with `--served`.
pub fn prometheus(report: &AuditReport, now: OffsetDateTime) -> String {
    use std::fmt::Write;
    let label = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
    let mut out = String::from(
        "# HELP hapki_cert_expiry_seconds Seconds until the certificate's notAfter.\n\
         # TYPE hapki_cert_expiry_seconds gauge\n",
    );
    for (node, file, end) in expiries(report) {
        let left = end - now.unix_timestamp();
        let _ = writeln!(
            out,
            "hapki_cert_expiry_seconds{{node=\"{}\",file=\"{}\"}} {left}",
            label(node),
            label(file)
        );
    }
    if report.served.is_empty() {
        return out;
    }
    out.push_str(
        "# HELP hapki_served_cert_matches 1 if the server presents its certificate file.\n\
         # TYPE hapki_served_cert_matches gauge\n",
    );
    for (node, s) in &report.served {
        for c in &s.served {
            let _ = writeln!(
                out,
                "hapki_served_cert_matches{{node=\"{}\",port=\"{}\"}} {}",
                label(node),
                c.port,
                u8::from(c.ok)
            );
        }
    }
    out
}

/// The table output's addition: per node the nearest expiry, and with `--served` each server
/// (served fingerprint and notAfter beside the file's) and each kubeconfig client certificate.
pub fn table(report: &AuditReport) -> String {
    let short =
        |h: &Option<String>| h.as_deref().map_or("-".to_string(), |h| h.chars().take(16).collect());
    let mut out = String::new();
    if !report.nearest_expiry.is_empty() {
        out.push_str("\nnearest expiry:\n");
    }
    for (node, e) in &report.nearest_expiry {
        out +=
            &format!("  {node}  {}  {}  ({} days)\n", e.file, e.not_after, e.seconds_left / 86_400);
    }
    for (node, s) in &report.served {
        out += &format!("\nserved by {node}:\n");
        for c in &s.served {
            out += &format!(
                "  {}:{}  served {} {}  file {} {} {}  {}\n",
                c.component,
                c.port,
                short(&c.served_sha256),
                c.served_not_after.as_deref().unwrap_or("-"),
                c.file.as_deref().unwrap_or("(in memory)"),
                short(&c.file_sha256),
                c.file_not_after.as_deref().unwrap_or("-"),
                if c.ok { "ok" } else { "STALE" }
            );
        }
        for r in &s.kubeconfig_client_certs {
            out += &format!(
                "  {}  client {}  notAfter {} ({} days)\n",
                r.kubeconfig, r.subject, r.not_after, r.days_left
            );
        }
    }
    escape_node_text(&out, true)
}
