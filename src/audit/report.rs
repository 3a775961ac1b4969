//! Renderings of an [`AuditReport`]: the matrix for people and the node_exporter textfile
//! format for monitoring. They return strings; the binary prints them.

use std::fmt::Write;

use super::{AuditReport, FileCell};
use crate::finding::FindingKind as Kind;
use crate::pki::SHARED_FILES;

/// Length of the short fingerprints in the matrix: enough to tell CAs apart at a glance.
const SHORT: usize = 12;

/// One row per image the bundle's image archives name: how each node's containerd holds it
/// (`present`, `missing`, `unpinned`, `digest` for another digest; blank: not for its role).
fn image_rows(out: &mut String, report: &AuditReport, name_w: usize, col_w: usize) {
    let names: std::collections::BTreeSet<&str> =
        report.nodes.iter().flat_map(|n| n.images.keys().map(String::as_str)).collect();
    for name in names {
        let _ = write!(out, "{name:name_w$}");
        for n in &report.nodes {
            let text = match n.images.get(name) {
                _ if !n.reachable => "?",
                Some(s) => s.split(' ').next().unwrap_or(""),
                None => "",
            };
            let _ = write!(out, "  {text:col_w$}");
        }
        let _ = writeln!(out);
    }
}

/// Rows the shared files (then the reference bundle's artifacts, by destination), columns the
/// nodes, cells short SHA-256 of the file; a `*` marks a cell that differs from the reference,
/// `-` a missing file, `?` an unreachable node, an empty cell an artifact not for that node's
/// role.
pub fn matrix(report: &AuditReport) -> String {
    let mut out = String::new();
    let dests: std::collections::BTreeSet<&str> =
        report.nodes.iter().flat_map(|n| n.artifacts.keys().map(String::as_str)).collect();
    let name_w = SHARED_FILES
        .iter()
        .map(|f| f.name.len())
        .chain(dests.iter().map(|d| d.len()))
        .chain(report.nodes.iter().flat_map(|n| n.images.keys().map(String::len)))
        .max()
        .unwrap_or(10)
        .max(4);
    let col_w = report.nodes.iter().map(|n| n.node.len()).max().unwrap_or(0).max(SHORT + 1);
    let _ = write!(out, "{:name_w$}", "file");
    for n in &report.nodes {
        let _ = write!(out, "  {:col_w$}", n.node);
    }
    out.push('\n');
    let cell = |c: Option<&FileCell>| match c {
        Some(c) if c.present => {
            let h = c.sha256.as_deref().unwrap_or("unreadable");
            let short: String = h.chars().take(SHORT).collect();
            if c.drift {
                format!("{short}*")
            } else {
                short
            }
        }
        _ => "-".to_string(),
    };
    let rows = SHARED_FILES.iter().map(|f| (f.name, false)).chain(dests.iter().map(|d| (*d, true)));
    for (name, artifact) in rows {
        let _ = write!(out, "{name:name_w$}");
        for n in &report.nodes {
            let text = if !n.reachable {
                "?".to_string()
            } else if artifact {
                match n.artifacts.get(name) {
                    Some(c) => cell(Some(c)),
                    None => String::new(),
                }
            } else {
                cell(n.files.get(name))
            };
            let _ = write!(out, "  {text:col_w$}");
        }
        let _ = writeln!(out);
    }
    image_rows(&mut out, report, name_w, col_w);
    let blank = if dests.is_empty() { "" } else { ", blank: not for its role" };
    let _ = writeln!(
        out,
        "\nreference: {} (cells: first {SHORT} hex of the file's SHA-256; * differs, - missing, ? unreachable{blank})",
        report.reference
    );
    if report.problems.is_empty() {
        out.push_str("no problems\n");
    } else {
        let _ = writeln!(out, "\n{} problem(s):", report.problems.len());
        for p in &report.problems {
            let _ = writeln!(
                out,
                "  {:14} {:22} {:14} {}",
                p.node,
                p.file.as_deref().unwrap_or("-"),
                p.kind,
                p.message
            );
        }
    }
    out
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// node_exporter textfile format: certificate not-after per node and file, a drift gauge per
/// node and shared file, node reachability and the problem count, so an air-gapped site can
/// alert with what it already runs.
pub fn prometheus(report: &AuditReport) -> String {
    let mut out = String::new();
    out.push_str(
        "# HELP hapki_certificate_not_after_seconds Certificate notAfter as a Unix time.\n",
    );
    out.push_str("# TYPE hapki_certificate_not_after_seconds gauge\n");
    for n in &report.nodes {
        for c in &n.certificates {
            let _ = writeln!(
                out,
                "hapki_certificate_not_after_seconds{{node=\"{}\",file=\"{}\"}} {}",
                label(&n.node),
                label(&c.file),
                c.not_after_unix
            );
        }
    }
    out.push_str("# HELP hapki_shared_file_drift 1 if the shared file differs from the reference or is missing where expected.\n");
    out.push_str("# TYPE hapki_shared_file_drift gauge\n");
    for n in report.nodes.iter().filter(|n| n.reachable) {
        for spec in SHARED_FILES {
            let bad = report.problems.iter().any(|p| {
                p.node == n.node
                    && p.file.as_deref() == Some(spec.name)
                    && matches!(p.kind, Kind::Drift | Kind::Missing | Kind::KeyOnWorker)
            });
            let _ = writeln!(
                out,
                "hapki_shared_file_drift{{node=\"{}\",file=\"{}\"}} {}",
                label(&n.node),
                spec.name,
                u8::from(bad)
            );
        }
    }
    out.push_str("# HELP hapki_node_reachable 1 if hapki could read the node.\n");
    out.push_str("# TYPE hapki_node_reachable gauge\n");
    for n in &report.nodes {
        let _ = writeln!(
            out,
            "hapki_node_reachable{{node=\"{}\"}} {}",
            label(&n.node),
            u8::from(n.reachable)
        );
    }
    out.push_str("# HELP hapki_audit_problems Number of problems the audit found.\n");
    out.push_str("# TYPE hapki_audit_problems gauge\n");
    let _ = writeln!(out, "hapki_audit_problems {}", report.problems.len());
    out
}
