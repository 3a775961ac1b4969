//! `hapki push --list-backups` and `--prune-backups`: the `--replace` backups each node keeps
//! under `<state dir>/backup/`, listed or pruned with one SSH exec per node, under the node's
//! push lock (a prune never races a push writing a backup).

use serde::Serialize;

use crate::error::{Categorized, Category};
use crate::node::NodePaths;
use crate::transport::{self, Target, Transport};

/// What to do with each node's backups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupOp {
    List,
    /// Keep the `keep` newest (at least 1); with `dry_run`, only say what would go.
    Prune {
        keep: u32,
        dry_run: bool,
    },
}

/// One backup directory on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Backup {
    /// Full path on the node.
    pub dir: String,
    /// Its modification time, UTC, as the node's `stat` gives it.
    pub time: String,
    /// Files in it, relative to `dir` (listing only).
    pub files: Vec<String>,
    /// Removed by this prune (or, with --dry-run, would be).
    pub removed: bool,
}

/// One node's answer.
#[derive(Debug, Clone, Serialize)]
pub struct NodeBackups {
    pub node: String,
    pub ok: bool,
    /// Newest first.
    pub backups: Vec<Backup>,
    pub message: String,
    #[serde(skip)]
    pub category: Option<Category>,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupsError {
    #[error("--keep must be at least 1 (the newest backup always stays)")]
    KeepZero,
}

impl Categorized for BackupsError {
    fn category(&self) -> Category {
        Category::Usage
    }
}

/// The node script's arguments for `op`.
fn script_args(op: BackupOp) -> Result<(&'static str, String), BackupsError> {
    match op {
        BackupOp::List => Ok(("list", "1".into())),
        BackupOp::Prune { keep: 0, .. } => Err(BackupsError::KeepZero),
        BackupOp::Prune { keep, dry_run } => {
            Ok((if dry_run { "prune-dry" } else { "prune" }, keep.to_string()))
        }
    }
}

/// Lists or prunes the backups on every node, `parallel` at a time; one exec per node.
pub fn run(
    targets: &[Target],
    transport: &dyn Transport,
    paths: &NodePaths,
    op: BackupOp,
    stamp: &str,
    parallel: usize,
) -> Result<Vec<NodeBackups>, BackupsError> {
    let (verb, keep) = script_args(op)?;
    let script = crate::node::backups_script();
    let dir = format!("{}/backup", paths.state_dir.trim_end_matches('/'));
    Ok(transport::for_each_parallel(targets, parallel.max(1), |t| {
        let args = [paths.state_dir.as_str(), verb, keep.as_str(), stamp];
        let done =
            transport.connect(t).map_err(|e| (e.category(), e.to_string())).and_then(|mut s| {
                s.run(&script, &args, &mut std::io::empty())
                    .map_err(|e| (e.category(), e.to_string()))
            });
        node_result(&t.name, &dir, op, done)
    }))
}

fn node_result(
    node: &str,
    dir: &str,
    op: BackupOp,
    done: Result<transport::RemoteOutput, (Category, String)>,
) -> NodeBackups {
    let fail = |category: Category, message: String| NodeBackups {
        node: node.to_string(),
        ok: false,
        backups: Vec::new(),
        message,
        category: Some(category),
    };
    let out = match done {
        Ok(o) if o.success() => o,
        Ok(o) => return fail(Category::NodesFailed, crate::node::stderr_tail(&o.stderr)),
        Err((c, m)) => return fail(c, m),
    };
    let backups = parse(&String::from_utf8_lossy(&out.stdout), dir);
    let removed = backups.iter().filter(|b| b.removed).count();
    let message = match op {
        BackupOp::List => format!("{} backup(s)", backups.len()),
        BackupOp::Prune { dry_run: true, .. } => format!("would remove {removed} backup(s)"),
        BackupOp::Prune { .. } => format!("removed {removed} backup(s)"),
    };
    NodeBackups { node: node.to_string(), ok: true, backups, message, category: None }
}

/// Parses the node script's `B name time`, `R name` and `F path` lines.
pub fn parse(stdout: &str, dir: &str) -> Vec<Backup> {
    let mut out: Vec<Backup> = Vec::new();
    let prefix = format!("{dir}/");
    for line in stdout.lines() {
        if let Some(rest) = line.strip_prefix("B ") {
            let (name, time) = rest.split_once(' ').unwrap_or((rest, ""));
            out.push(Backup {
                dir: format!("{prefix}{name}"),
                time: time.to_string(),
                files: Vec::new(),
                removed: false,
            });
        } else if let Some(name) = line.strip_prefix("R ") {
            let full = format!("{prefix}{name}");
            out.iter_mut().filter(|b| b.dir == full).for_each(|b| b.removed = true);
        } else if let Some(path) = line.strip_prefix("F ") {
            add_file(&mut out, path);
        }
    }
    for b in &mut out {
        b.files.sort();
    }
    out
}

fn add_file(out: &mut [Backup], path: &str) {
    for b in out.iter_mut() {
        if let Some(rel) = path.strip_prefix(&b.dir).and_then(|r| r.strip_prefix('/')) {
            b.files.push(rel.to_string());
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listing_and_prune_lines() {
        let s = "B b.2 2026-12-02 08:00:00.1 +0000\nB a.1 2026-01-01 00:00:00.0 +0000\n\
                 R a.1\nF /st/backup/b.2/etcd/ca.key\nF /st/backup/b.2/ca.key\nF /st/backup/zz/x\n";
        let b = parse(s, "/st/backup");
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].dir, "/st/backup/b.2");
        assert_eq!(b[0].time, "2026-12-02 08:00:00.1 +0000");
        assert_eq!(b[0].files, ["ca.key", "etcd/ca.key"]);
        assert!(!b[0].removed && b[1].removed);
        assert!(script_args(BackupOp::Prune { keep: 0, dry_run: true }).is_err());
    }
}
