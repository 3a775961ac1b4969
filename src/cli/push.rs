//! `hapki push`.

use std::path::PathBuf;

use clap::Args;
use hapki::error::Category;
use hapki::push::{self, NodeStatus, Payload, PushOptions, PushReport, Step};

use super::nodes::{open_verified, NodeArgs};
use super::ssh::SshArgs;
use super::{print_json, stderr_is_tty, CategorizeExt, Output};

/// Verify the bundle here, then on every target node in parallel: check the node's identity,
/// take its lock, stage and verify the bundle on the node with its own ssh-keygen and sha256sum,
/// and install by atomic rename with kubeadm's modes. A node holding a different CA is left
/// exactly as it was unless --replace (which backs its files up first).
#[derive(Debug, Args)]
pub struct PushArgs {
    /// The bundle file (from `hapki bundle`).
    pub bundle: PathBuf,
    #[command(flatten)]
    pub nodes: NodeArgs,
    /// OpenSSH allowed_signers file naming the keys trusted to sign bundles.
    #[arg(long, value_name = "ALLOWED_SIGNERS")]
    pub trust: PathBuf,
    /// age identity file or SSH private key that decrypts the bundle; repeatable.
    #[arg(long, value_name = "FILE")]
    pub decrypt_key: Vec<PathBuf>,
    /// Replace shared files that differ on a node (after backing them up on the node under
    /// /var/lib/hapki/backup/).
    #[arg(long)]
    pub replace: bool,
    /// Connect and inspect every node, print what would happen, write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// How many nodes to work on at once.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub parallel: usize,
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
    #[command(flatten)]
    pub ssh: SshArgs,
}

pub fn run(args: PushArgs) -> anyhow::Result<u8> {
    let targets = args.nodes.push_targets(&args.ssh)?;
    if targets.is_empty() {
        return Err(super::usage_error(
            "no target nodes: the inventory has no control-plane node besides the first master",
        ));
    }
    // Nothing crosses to a node before the bundle has verified here.
    let verified = open_verified(&args.bundle, &args.trust, &args.decrypt_key)?;
    let payload = Payload::from_verified(&verified).categorized()?;
    let transport = args.ssh.transport()?;
    let targets: Vec<_> = targets.into_iter().map(|s| s.target).collect();
    let opts = PushOptions::new(args.replace, args.dry_run, args.parallel);

    let bar = stderr_is_tty().then(|| {
        let b = indicatif::ProgressBar::new(targets.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} [{pos}/{len}] {wide_msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b.enable_steady_tick(std::time::Duration::from_millis(120));
        b
    });
    let progress = |node: &str, step: Step| {
        if let Some(b) = &bar {
            match step {
                Step::Done => b.inc(1),
                s => b.set_message(format!("{node}: {s:?}").to_lowercase()),
            }
        }
    };
    let report = push::push(&payload, &targets, transport.as_ref(), &opts, &progress);
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    print_report(&report, args.output)?;
    Ok(report.category().map(Category::exit_code).unwrap_or(0))
}

fn print_report(report: &PushReport, output: Output) -> anyhow::Result<()> {
    match output {
        Output::Json => print_json(report),
        Output::Table => {
            let w = report.nodes.iter().map(|n| n.node.len()).max().unwrap_or(4).max(4);
            println!("{:w$}  {:9}  MESSAGE", "NODE", "STATUS");
            for n in &report.nodes {
                let status = serde_json::to_value(n.status)?.as_str().unwrap_or("?").to_string();
                println!("{:w$}  {:9}  {}", n.node, status, n.message);
            }
            let failed = report.nodes.iter().filter(|n| n.status == NodeStatus::Failed).count();
            if failed > 0 {
                eprintln!(
                    "hapki: {failed} of {} node(s) failed; the others completed. Fix what the messages say and push again.",
                    report.nodes.len()
                );
            }
            Ok(())
        }
    }
}
