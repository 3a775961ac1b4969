//! `hapki config check FILE`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use hapki::error::Category;
use hapki::kubeadm_config::{self, ConfigReport};

use super::{print_json, CategorizeExt, Output};

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Lint a kubeadm config (v1beta2, v1beta3, v1beta4) for an air-gapped HA cluster:
    /// a DNS control-plane endpoint with a port, a pinned Kubernetes version, valid and
    /// disjoint pod and service subnets, a local image registry, stacked etcd.
    /// Exit 6 when it finds problems; warnings alone exit 0.
    Check(CheckArgs),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The kubeadm config file (multi-document YAML).
    pub file: PathBuf,
    /// Print a table for people or one JSON object for scripts.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

pub fn run(cmd: ConfigCommand) -> anyhow::Result<u8> {
    match cmd {
        ConfigCommand::Check(args) => check(args),
    }
}

fn check(args: CheckArgs) -> anyhow::Result<u8> {
    let report = kubeadm_config::check_file(&args.file).categorized()?;
    match args.output {
        Output::Json => print_json(&report)?,
        Output::Table => print_table(&args.file, &report),
    }
    Ok(if report.ok { 0 } else { Category::Findings.exit_code() })
}

fn print_table(file: &std::path::Path, r: &ConfigReport) {
    let rows: Vec<(&str, &kubeadm_config::Finding)> = r
        .problems
        .iter()
        .map(|f| ("problem", f))
        .chain(r.warnings.iter().map(|f| ("warning", f)))
        .collect();
    if !rows.is_empty() {
        let width = rows.iter().map(|(_, f)| f.field.len()).max().unwrap_or(0).max(5);
        println!("{:<8} {:<width$}  MESSAGE", "LEVEL", "FIELD");
        for (level, f) in &rows {
            println!("{level:<8} {:<width$}  {}", f.field, f.message);
        }
        println!();
    }
    for note in &r.notes {
        println!("note: {note}");
    }
    let plural = |n: usize, w: &str| format!("{n} {w}{}", if n == 1 { "" } else { "s" });
    println!(
        "{}: {} ({}, {})",
        file.display(),
        if r.ok { "ok" } else { "NOT ready for an air-gapped HA cluster" },
        plural(r.problems.len(), "problem"),
        plural(r.warnings.len(), "warning"),
    );
}
