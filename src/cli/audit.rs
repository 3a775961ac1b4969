//! `hapki audit`.

use clap::{Args, ValueEnum};
use hapki::audit::{self, AuditOptions, AuditReport};
use hapki::cluster::Reference;
use hapki::duration::Duration;
use hapki::error::Category;
use hapki::inventory::Role;
use hapki::node::NodePaths;

use super::nodes::{BundleRefArgs, NodeArgs};
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
    /// Also connect to every node's TLS servers (:6443, :2379, :2380, :10257, :10259, where
    /// running) and compare what each presents with its file (stale-served-cert), and read
    /// every kubeconfig's client certificate (kubelet.conf too, workers too).
    #[arg(long, conflicts_with = "local")]
    pub served: bool,
    #[command(flatten)]
    pub ssh: SshArgs,
}

pub fn run(args: AuditArgs) -> anyhow::Result<u8> {
    let reference = args.reference.open()?.map(|(p, b)| Reference::from_bundle(&p, &b));
    let opts = AuditOptions { warn_within: args.warn_within, now: time::OffsetDateTime::now_utc() };
    let paths = NodePaths::default();
    let mut report = if args.local {
        let role = if args.role == "worker" { Role::Worker } else { Role::ControlPlane };
        audit::run_local(role, reference, &opts, &paths)
    } else {
        let (_, nodes) = args.nodes.all(&args.ssh)?;
        let transport = args.ssh.transport()?;
        let mut report =
            audit::run(&nodes, transport.as_ref(), reference, &opts, args.parallel, &paths);
        if args.served {
            let t = transport.as_ref();
            audit::served::run(&nodes, t, &opts, args.parallel, &paths, &mut report);
        }
        report
    };
    audit::served::nearest(&mut report, opts.now);
    print(&report, args.output, opts.now)?;
    Ok(Category::exit_code_of(report.category()))
}

fn print(
    report: &AuditReport,
    output: AuditOutput,
    now: time::OffsetDateTime,
) -> anyhow::Result<()> {
    match output {
        AuditOutput::Json => print_json(report),
        AuditOutput::Prometheus => {
            print!("{}", audit::report::prometheus(report));
            print!("{}", audit::served::prometheus(report, now));
            Ok(())
        }
        AuditOutput::Table => {
            print!("{}", audit::report::matrix(report));
            print!("{}", audit::served::table(report));
            Ok(())
        }
    }
}
