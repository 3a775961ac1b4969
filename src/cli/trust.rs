//! `hapki trust install`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use hapki::error::Category;
use hapki::node::trust;

use super::nodes::NodeArgs;
use super::ssh::SshArgs;
use super::{print_json, CategorizeExt, Output};

#[derive(Debug, Subcommand)]
pub enum TrustCommand {
    /// Pin an allowed_signers file on every node (/etc/hapki/allowed_signers, root, 0644): the
    /// nodes then verify bundles against it alone, whatever the operator's side sends.
    Install(InstallArgs),
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    #[command(flatten)]
    pub nodes: NodeArgs,
    /// OpenSSH allowed_signers file; only its lines whose namespaces= lists hapki-bundle let a
    /// key sign bundles on the nodes.
    #[arg(long, value_name = "ALLOWED_SIGNERS")]
    pub trust: PathBuf,
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
    #[command(flatten)]
    pub ssh: SshArgs,
}

pub fn run(cmd: TrustCommand) -> anyhow::Result<u8> {
    let TrustCommand::Install(args) = cmd;
    let text = std::fs::read(&args.trust)
        .map_err(|e| super::usage_error(format!("--trust {}: {e}", args.trust.display())))?;
    trust::check(&text).categorized()?;
    let (_, nodes) = args.nodes.all(&args.ssh)?;
    let targets: Vec<_> = nodes.iter().map(|n| &n.target).collect();
    let transport = args.ssh.transport()?;
    let rows = trust::install_all(&targets, transport.as_ref(), &text, 16);
    match args.output {
        Output::Json => print_json(&rows)?,
        Output::Table => {
            let w = rows.iter().map(|r| r.node.len()).max().unwrap_or(4).max(4);
            println!("{:w$}  MESSAGE", "NODE");
            for r in &rows {
                println!("{:w$}  {}", r.node, r.message);
            }
        }
    }
    Ok(Category::exit_code_of(Category::worst(rows.iter().filter_map(|r| r.category))))
}
