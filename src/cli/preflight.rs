//! `hapki preflight` and `hapki join`.

use std::path::PathBuf;

use clap::Args;
use hapki::cluster::Reference;
use hapki::duration::Duration;
use hapki::error::Category;
use hapki::join::{self, JoinOptions, JoinOutcome, JoinReport, Step};
use hapki::node::NodePaths;
use hapki::preflight::{self, PreflightReport};

use super::nodes::{BundleRefArgs, NodeArgs};
use super::ssh::SshArgs;
use super::{print_json, usage_error, CategorizeExt, Output};

/// kubeadm's control-plane join checks (under kubeadm's own names) and what kubeadm does not
/// check, on every node in parallel, read-only: ports, stale manifests and etcd data, the
/// shared files identical to the bundle (or the first master), all four key pairs, leaves
/// chaining to the shared CAs, the endpoint, versions, clock skew, CNI config on workers.
/// Exit 6 on problems.
#[derive(Debug, Args)]
pub struct PreflightArgs {
    #[command(flatten)]
    pub nodes: NodeArgs,
    #[command(flatten)]
    pub reference: BundleRefArgs,
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub parallel: usize,
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
    #[command(flatten)]
    pub ssh: SshArgs,
}

/// Join every node of the inventory without a certificate key: preflight first (nothing
/// joins unless it is clean), then each control plane but the first strictly one at a time,
/// waiting for its etcd member to be healthy, then the workers in parallel.
#[derive(Debug, Args)]
pub struct JoinArgs {
    /// The inventory (required: join needs roles and the control-plane endpoint).
    #[arg(long, value_name = "FILE", required = true)]
    pub inventory: PathBuf,
    /// Bootstrap token (abcdef.0123456789abcdef). On a command line it is visible to every
    /// user of this machine: prefer the HAPKI_JOIN_TOKEN environment variable or --token-file.
    /// Default: minted on the first master with `kubeadm token create --ttl 1h` and deleted
    /// when the joins end.
    #[arg(long, value_name = "TOKEN", env = "HAPKI_JOIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Read the bootstrap token from FILE (its first line).
    #[arg(long, value_name = "FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// An extra argument for `kubeadm join`, passed beside `--config` (repeatable), e.g.
    /// `--kubeadm-arg=--skip-phases=addon/kube-proxy`; `--certificate-key`, token flags,
    /// `--config` and `--discovery-token-unsafe-skip-ca-verification` are refused.
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    pub kubeadm_arg: Vec<String>,
    #[command(flatten)]
    pub reference: BundleRefArgs,
    /// Print the exact commands (token secret redacted) after preflight, run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Copy the first master's /etc/cni/net.d config to workers (and restart kubelet) before
    /// they join, so they do not stay NotReady.
    #[arg(long)]
    pub copy_cni_config: bool,
    /// How long to wait for each new control plane's etcd member to become healthy.
    #[arg(long, default_value = "5m", value_name = "DURATION")]
    pub etcd_timeout: Duration,
    /// Where kubeadm's output is kept per node (default: ./hapki-join-<time>).
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub parallel: usize,
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
    #[command(flatten)]
    pub ssh: SshArgs,
}

fn print_preflight(report: &PreflightReport, output: Output) -> anyhow::Result<()> {
    match output {
        Output::Json => print_json(report),
        Output::Table => {
            for n in &report.nodes {
                let state = if !n.reachable {
                    "UNREACHABLE".to_string()
                } else if n.problems == 0 {
                    "ok".to_string()
                } else {
                    format!("{} problem(s)", n.problems)
                };
                println!("{:16} {:14} {}", n.node, n.role, state);
            }
            println!("reference: {}", report.reference);
            for (label, list) in [("problem", &report.problems), ("warning", &report.warnings)] {
                for p in list {
                    println!("{label}: {:16} {:40} {}", p.node, p.kind, p.message);
                }
            }
            if report.ok {
                println!("preflight passed");
            }
            Ok(())
        }
    }
}

/// The `--bundle` reference, and the CA hash its manifest pins.
fn reference(args: &BundleRefArgs) -> anyhow::Result<(Option<Reference>, Option<String>)> {
    Ok(match args.open()? {
        Some((p, b)) => {
            let hash = b.manifest.discovery_token_ca_cert_hash.clone();
            (Some(Reference::from_bundle(&p, &b)), Some(hash))
        }
        None => (None, None),
    })
}

pub fn preflight(args: PreflightArgs) -> anyhow::Result<u8> {
    let (inv, nodes) = args.nodes.all(&args.ssh)?;
    let (reference, _) = reference(&args.reference)?;
    let transport = args.ssh.transport()?;
    let endpoint = inv.as_ref().and_then(|i| i.control_plane_endpoint.clone());
    let report = preflight::run(
        &nodes,
        endpoint.as_deref(),
        transport.as_ref(),
        reference,
        args.parallel,
        &NodePaths::default(),
    );
    print_preflight(&report, args.output)?;
    Ok(Category::exit_code_of(report.category()))
}

/// `./hapki-join-<UTC time>`.
fn default_run_dir() -> PathBuf {
    let stamp = time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!("[year][month][day]T[hour][minute][second]Z"))
        .unwrap_or_else(|_| "run".into());
    PathBuf::from(format!("hapki-join-{stamp}"))
}

/// The token's first line; the file is read once, and never echoed.
fn read_token_file(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| usage_error(format!("cannot read --token-file {}: {e}", path.display())))?;
    Ok(text.lines().next().unwrap_or("").trim().to_string())
}

/// The join's options from the command line and the inventory's endpoint.
fn join_options(args: &JoinArgs, endpoint: String) -> anyhow::Result<JoinOptions> {
    let token = match &args.token_file {
        Some(f) => Some(read_token_file(f)?),
        None => args.token.clone(),
    };
    Ok(JoinOptions {
        endpoint,
        token,
        ca_hash: None,
        dry_run: args.dry_run,
        parallel: args.parallel,
        paths: NodePaths::default(),
        etcd_timeout: std::time::Duration::from_secs(args.etcd_timeout.as_secs()),
        copy_cni_config: args.copy_cni_config,
        run_dir: args.run_dir.clone().unwrap_or_else(default_run_dir),
        kubeadm_args: args.kubeadm_arg.clone(),
    })
}

pub fn join(args: JoinArgs) -> anyhow::Result<u8> {
    let nodes = NodeArgs { nodes: None, inventory: Some(args.inventory.clone()) };
    let (inv, nodes) = nodes.all(&args.ssh)?;
    let inv = inv.ok_or_else(|| usage_error("join needs --inventory"))?;
    let endpoint = inv.control_plane_endpoint.clone().ok_or_else(|| {
        usage_error(format!(
            "{} has no control_plane_endpoint: set it under [cluster] (a DNS name with a port)",
            args.inventory.display()
        ))
    })?;
    let mut opts = join_options(&args, endpoint)?;
    // Refused before the bundle is opened or any node is contacted.
    opts.check().categorized()?;
    let (reference, bundle_hash) = reference(&args.reference)?;
    opts.ca_hash = bundle_hash;
    let transport = args.ssh.transport()?;
    let progress = |node: &str, step: Step| {
        if super::stderr_is_tty() && step != Step::Done {
            eprintln!("hapki: {node}: {step}");
        }
    };
    match join::run(&nodes, transport.as_ref(), reference, &opts, &progress).categorized()? {
        JoinOutcome::Refused(report) => {
            print_preflight(&report, args.output)?;
            eprintln!(
                "hapki: preflight found problems; nothing was joined. Fix them and run join again."
            );
            Ok(Category::exit_code_of(report.category()))
        }
        JoinOutcome::Joined(report) => {
            print_join(&report, args.output, args.dry_run)?;
            Ok(Category::exit_code_of(report.category()))
        }
    }
}

fn print_join(report: &JoinReport, output: Output, dry_run: bool) -> anyhow::Result<()> {
    if output == Output::Json {
        return print_json(report);
    }
    println!("discovery-token-ca-cert-hash: {}", report.discovery_token_ca_cert_hash);
    println!("token: {}", report.token);
    for n in &report.nodes {
        println!("{:16} {:8} {}", n.node, n.status, n.message);
        if dry_run && !n.command.is_empty() {
            println!("    {}", n.command);
        }
    }
    if let Some(c) = &report.token_cleanup {
        println!("minted token: {c}");
    }
    if let Some(d) = &report.run_dir {
        println!("kubeadm output kept in {d}/");
    }
    Ok(())
}
