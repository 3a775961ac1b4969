//! `hapki audit`.

use clap::{Args, ValueEnum};
use hapki::audit::{self, AuditOptions, AuditReport};
use hapki::duration::Duration;
use hapki::inventory::Role;
use hapki::node::NodePaths;

use super::nodes::{reference_from, BundleRefArgs, NodeArgs};
use super::print_json;
use super::ssh::SshArgs;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum AuditOutput {
    #[default]
    Table,
    Json,
    /// node_exporter textfile format (for the textfile collector directory).
    Prometheus,
}

/// Which CA is on which node: fingerprints, modes and owners of the eight shared files,
/// expiry and (cryptographically checked) issuer of every certificate, the CA in every
/// kubeconfig, side by side. Read-only. Exit 0 when clean, 6 when there is any problem.
#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub nodes: NodeArgs,
    /// Audit this machine without SSH (for cron on each node).
    #[arg(long, conflicts_with_all = ["nodes", "inventory"])]
    pub local: bool,
    /// Role of this machine with --local.
    #[arg(long, value_parser = ["control-plane", "worker"], default_value = "control-plane", requires = "local")]
    pub role: String,
    #[command(flatten)]
    pub reference: BundleRefArgs,
    /// Warn about certificates that expire within this time.
    #[arg(long, default_value = "30d", value_name = "DURATION")]
    pub warn_within: Duration,
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub parallel: usize,
    #[arg(long, value_enum, default_value_t)]
    pub output: AuditOutput,
    #[command(flatten)]
    pub ssh: SshArgs,
}

pub fn run(args: AuditArgs) -> anyhow::Result<u8> {
    let reference = args.reference.open()?.map(|(p, b)| reference_from(&p, &b));
    let opts = AuditOptions { warn_within: args.warn_within, now: time::OffsetDateTime::now_utc() };
    let paths = NodePaths::default();
    let report = if args.local {
        let role = if args.role == "worker" { Role::Worker } else { Role::ControlPlane };
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        audit::run_local(&host, role, reference, &opts, &paths)
    } else {
        let (_, selected) = args.nodes.all(&args.ssh)?;
        let transport = args.ssh.transport()?;
        let targets: Vec<audit::AuditTarget> = selected
            .into_iter()
            .map(|s| audit::AuditTarget { target: s.target, role: s.role })
            .collect();
        audit::run(&targets, transport.as_ref(), reference, &opts, args.parallel, &paths)
    };
    print(&report, args.output)?;
    Ok(if report.ok { 0 } else { 6 })
}

fn print(report: &AuditReport, output: AuditOutput) -> anyhow::Result<()> {
    match output {
        AuditOutput::Json => print_json(report),
        AuditOutput::Prometheus => {
            print!("{}", audit::report::prometheus(report));
            Ok(())
        }
        AuditOutput::Table => {
            print!("{}", audit::report::matrix(report));
            Ok(())
        }
    }
}
