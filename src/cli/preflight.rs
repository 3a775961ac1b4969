//! `hapki preflight` and `hapki join`.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::Args;
use hapki::audit::Reference;
use hapki::duration::Duration;
use hapki::join::{self, JoinNode, JoinOptions, Step};
use hapki::node::NodePaths;
use hapki::preflight::{self, PreflightReport, PreflightTarget};
use hapki::push::NodeStatus;

use super::nodes::{reference_from, BundleRefArgs, NodeArgs, Selected};
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

fn preflight_targets(selected: &[Selected]) -> Vec<PreflightTarget> {
    selected
        .iter()
        .map(|s| PreflightTarget {
            target: s.target.clone(),
            role: s.role,
            address: s.advertise_address.as_deref().unwrap_or(&s.address).parse::<IpAddr>().ok(),
        })
        .collect()
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

fn reference(args: &BundleRefArgs) -> anyhow::Result<(Option<Reference>, Option<String>)> {
    Ok(match args.open()? {
        Some((p, b)) => {
            (Some(reference_from(&p, &b)), Some(b.manifest.discovery_token_ca_cert_hash.clone()))
        }
        None => (None, None),
    })
}

pub fn preflight(args: PreflightArgs) -> anyhow::Result<u8> {
    let (inv, selected) = args.nodes.all(&args.ssh)?;
    let (reference, _) = reference(&args.reference)?;
    let transport = args.ssh.transport()?;
    let endpoint = inv.as_ref().and_then(|i| i.control_plane_endpoint.clone());
    let report = preflight::run(
        &preflight_targets(&selected),
        endpoint.as_deref(),
        transport.as_ref(),
        reference,
        args.parallel,
        &NodePaths::default(),
    );
    print_preflight(&report, args.output)?;
    Ok(if report.ok { 0 } else { 6 })
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

pub fn join(args: JoinArgs) -> anyhow::Result<u8> {
    let nodes = NodeArgs { nodes: None, inventory: Some(args.inventory.clone()) };
    let (inv, selected) = nodes.all(&args.ssh)?;
    let inv = inv.ok_or_else(|| usage_error("join needs --inventory"))?;
    let endpoint = inv.control_plane_endpoint.clone().ok_or_else(|| {
        usage_error(format!(
            "{} has no control_plane_endpoint: set it under [cluster] (a DNS name with a port)",
            args.inventory.display()
        ))
    })?;
    let token = match &args.token_file {
        Some(f) => Some(read_token_file(f)?),
        None => args.token.clone(),
    };
    if let Some(t) = &token {
        join::validate_token(t).categorized()?;
    }
    join::validate_kubeadm_args(&args.kubeadm_arg).categorized()?;
    join::validate_endpoint(&endpoint).categorized()?;
    let run_dir = args.run_dir.clone().unwrap_or_else(default_run_dir);
    if !args.dry_run {
        // Before any node is touched: a run directory others could write to is refused here.
        join::create_run_dir(&run_dir).categorized()?;
    }
    let (reference, bundle_hash) = reference(&args.reference)?;
    let transport = args.ssh.transport()?;
    let mut report = preflight::run(
        &preflight_targets(&selected),
        Some(&endpoint),
        transport.as_ref(),
        reference,
        args.parallel,
        &NodePaths::default(),
    );
    if args.copy_cni_config {
        report.accept_missing_cni();
    }
    if !report.ok {
        print_preflight(&report, args.output)?;
        eprintln!(
            "hapki: preflight found problems; nothing was joined. Fix them and run join again."
        );
        return Ok(6);
    }
    // The CA hash is computed here, from the bundle or the first master's ca.crt — never
    // taken on trust from the network.
    let ca_hash = match bundle_hash {
        Some(h) => h,
        None => {
            let pem = report.first_master_ca.as_deref().ok_or_else(|| {
                usage_error("the first master has no /etc/kubernetes/pki/ca.crt: push the bundle and kubeadm init it first")
            })?;
            hapki::pki::parse::parse_certificate("ca.crt", pem).categorized()?.discovery_hash()
        }
    };
    let opts = JoinOptions {
        endpoint,
        token,
        ca_hash,
        dry_run: args.dry_run,
        parallel: args.parallel,
        paths: NodePaths::default(),
        etcd_timeout: std::time::Duration::from_secs(args.etcd_timeout.as_secs()),
        copy_cni_config: args.copy_cni_config,
        run_dir,
        kubeadm_args: args.kubeadm_arg.clone(),
    };
    let join_nodes: Vec<JoinNode> = selected
        .into_iter()
        .map(|s| JoinNode {
            target: s.target,
            role: s.role,
            // kubeadm takes only an IP for the advertise address and refuses a loopback one:
            // an inventory address that is a DNS name or loopback is left to kubeadm's own
            // default-route detection (etcd's health is still checked at the address).
            advertise_address: s.advertise_address.or_else(|| {
                let ip = s.address.parse::<IpAddr>().ok()?;
                (!ip.is_loopback()).then_some(s.address)
            }),
        })
        .collect();
    let progress = |node: &str, step: Step| {
        if super::stderr_is_tty() && step != Step::Done {
            eprintln!("hapki: {node}: {}", format!("{step:?}").to_lowercase());
        }
    };
    let report = join::run(&join_nodes, transport.as_ref(), &opts, &progress).categorized()?;
    match args.output {
        Output::Json => print_json(&report)?,
        Output::Table => {
            println!("discovery-token-ca-cert-hash: {}", report.discovery_token_ca_cert_hash);
            println!("token: {}", report.token);
            for n in &report.nodes {
                let status = serde_json::to_value(n.status)?.as_str().unwrap_or("?").to_string();
                println!("{:16} {:8} {}", n.node, status, n.message);
                if args.dry_run && !n.command.is_empty() {
                    println!("    {}", n.command);
                }
            }
            if let Some(c) = &report.token_cleanup {
                println!("minted token: {c}");
            }
            if let Some(d) = &report.run_dir {
                println!("kubeadm output kept in {d}/");
            }
        }
    }
    Ok(
        if report
            .nodes
            .iter()
            .any(|n| n.status == NodeStatus::Failed || n.status == NodeStatus::Skipped)
        {
            5
        } else {
            0
        },
    )
}
