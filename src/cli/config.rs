//! `hapki config check FILE`.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use hapki::error::Category;
use hapki::kubeadm_config::images::{self, ImageInputs};
use hapki::kubeadm_config::{self, ConfigReport};

use super::{print_json, CategorizeExt, Output};

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Lint a kubeadm config (v1beta2, v1beta3, v1beta4) for an air-gapped HA cluster:
    /// a DNS control-plane endpoint with a port, a pinned Kubernetes version, valid and
    /// disjoint pod and service subnets, a local image registry, stacked etcd.
    /// With --bundle, also: every image `kubeadm config images list --config FILE` names is in
    /// an image archive the bundle imports on control-plane nodes, and containerd's
    /// sandbox_image is kubeadm's pause image.
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
    /// An artifacts bundle whose control-plane image archives must hold every image kubeadm
    /// lists for FILE (verified like every bundle: needs --trust).
    #[arg(long, requires = "trust")]
    pub bundle: Option<PathBuf>,
    /// OpenSSH allowed_signers file naming the keys trusted to sign bundles.
    #[arg(long, value_name = "ALLOWED_SIGNERS", requires = "bundle")]
    pub trust: Option<PathBuf>,
    /// Trust only allowed_signers lines for this principal; repeatable.
    #[arg(long, value_name = "PRINCIPAL", requires = "bundle")]
    pub principal: Vec<String>,
    /// age identity file or SSH private key that decrypts the bundle; repeatable.
    #[arg(long, value_name = "FILE", requires = "bundle")]
    pub decrypt_key: Vec<PathBuf>,
    /// The kubeadm that lists the images (default: kubeadm on PATH); the version you install.
    #[arg(long, value_name = "PATH", requires = "bundle")]
    pub kubeadm: Option<PathBuf>,
    /// containerd's config, whose sandbox_image must be kubeadm's pause image (default:
    /// /etc/containerd/config.toml when present).
    #[arg(long, value_name = "PATH", requires = "bundle")]
    pub containerd_config: Option<PathBuf>,
}

pub fn run(cmd: ConfigCommand) -> anyhow::Result<u8> {
    match cmd {
        ConfigCommand::Check(args) => check(args),
    }
}

fn check(args: CheckArgs) -> anyhow::Result<u8> {
    let mut report = kubeadm_config::check_file(&args.file).categorized()?;
    if let (Some(bundle), Some(trust)) = (&args.bundle, &args.trust) {
        check_images(&args, bundle, trust, &mut report)?;
    }
    match args.output {
        Output::Json => print_json(&report)?,
        Output::Table => print_table(&args.file, &report),
    }
    Ok(Category::exit_code_of(report.category()))
}

fn check_images(
    args: &CheckArgs,
    bundle: &Path,
    trust: &Path,
    report: &mut ConfigReport,
) -> anyhow::Result<()> {
    let (trust_set, ids) = super::nodes::load_trust(trust, &args.principal, &args.decrypt_key)?;
    let inputs = ImageInputs {
        config: &args.file,
        kubeadm: args.kubeadm.as_deref(),
        bundle,
        trust: &trust_set,
        identities: &ids,
        containerd_config: args.containerd_config.as_deref(),
    };
    images::check_images(&inputs, report).categorized()
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
    if let Some(i) = &r.images {
        let bundled: usize = i.bundled.values().map(Vec::len).sum();
        println!(
            "images: {} listed by {}, {bundled} in {} control-plane image archive(s) of the bundle",
            i.expected.len(),
            i.kubeadm,
            i.bundled.len()
        );
        if let Some(c) = &i.containerd_config {
            let s = i.sandbox_image.as_deref().unwrap_or("(not set)");
            println!("containerd: {c}: sandbox_image {s}");
        }
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
