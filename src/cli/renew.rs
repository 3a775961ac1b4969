//! `hapki renew`: leaf certificates renewed on every control plane, one at a time, each
//! checked on the wire (see src/renew).

use clap::Args;
use hapki::inventory::Role;
use hapki::renew::{self, RenewNode, RenewOptions, RenewReport};
use hapki::transport::escape_node_text;

use super::nodes::NodeArgs;
use super::ssh::SshArgs;
use super::{print_json, usage_error, CategorizeExt, Output};

/// Renew kubeadm's leaf certificates on every control plane, ONE AT A TIME: `kubeadm certs
/// renew`, the control-plane static pods restarted (manifests moved out and back), the API
/// server and etcd member waited on until healthy, then what each local server presents over
/// TLS (:6443, :2379, :2380, :10257, :10259) compared with its file. No node is touched while
/// an etcd member is unhealthy; a node that fails ends the run (exit 5), the rest untouched.
#[derive(Debug, Args)]
pub struct RenewArgs {
    #[command(flatten)]
    pub nodes: NodeArgs,
    /// Renew only these (kubeadm's names, comma-separated: apiserver, etcd-server, admin.conf, …).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub only: Vec<String>,
    /// Print the plan and every node's current certificates and servers; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// How long a component may take to stop once its manifest is moved out (a kubelet
    /// notices within 20 s and grants 30 s of grace); one still running then is reported.
    #[arg(long, value_name = "DURATION", default_value = "1m")]
    pub stop_timeout: hapki::duration::Duration,
    /// How long a component may take to come back, and then to become healthy.
    #[arg(long, value_name = "DURATION", default_value = "3m")]
    pub restart_timeout: hapki::duration::Duration,
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
    #[command(flatten)]
    pub ssh: SshArgs,
}

pub fn run(args: RenewArgs) -> anyhow::Result<u8> {
    let certs = renew::validate_only(&args.only).categorized()?;
    let (_, selected) = args.nodes.all(&args.ssh)?;
    let nodes: Vec<RenewNode> = selected
        .into_iter()
        .filter(|s| s.role == Role::ControlPlane)
        .map(|s| RenewNode { address: s.advertise_address.unwrap_or(s.address), target: s.target })
        .collect();
    if nodes.is_empty() {
        return Err(usage_error("no control plane selected: renew works on control planes (workers' kubelets rotate their own certificates)"));
    }
    let opts = RenewOptions {
        certs,
        dry_run: args.dry_run,
        stop_timeout: std::time::Duration::from_secs(args.stop_timeout.as_secs()),
        restart_timeout: std::time::Duration::from_secs(args.restart_timeout.as_secs()),
        paths: hapki::node::NodePaths::default(),
        run_id: run_id(),
    };
    let transport = args.ssh.transport()?;
    let progress = |node: &str, what: &str| eprintln!("hapki: {node}: {what}");
    let report = renew::run(&nodes, transport.as_ref(), &opts, &progress).categorized()?;
    match args.output {
        Output::Json => print_json(&report)?,
        Output::Table => print!("{}", timeline(&report)),
    }
    Ok(if report.ok { 0 } else { 5 })
}

/// Per node: status, what was renewed (old → new notAfter), the served-certificate checks and
/// the steps with their times.
fn timeline(report: &RenewReport) -> String {
    let mut s = String::new();
    for n in &report.nodes {
        let secs = n.seconds.map(|t| format!(" in {t}s")).unwrap_or_default();
        s += &format!(
            "{}: {}{secs}: {}\n",
            n.node,
            n.status.as_str(),
            escape_node_text(&n.message, false)
        );
        for c in &n.certs {
            let new = c.new_not_after.as_deref().unwrap_or("-");
            let mark = if c.renewed { "renewed" } else { "kept" };
            let old = c.old_not_after.as_deref().unwrap_or("-");
            if report.dry_run {
                s += &format!("  cert    {}  notAfter {old}\n", c.file);
            } else {
                s += &format!("  cert    {}  {old} -> {new}  {mark}\n", c.file);
            }
        }
        for v in &n.served {
            let mark = if v.ok { "ok" } else { "MISMATCH" };
            s += &format!(
                "  served  {}:{} {}  {mark}: {}\n",
                v.component,
                v.port,
                v.address.as_deref().unwrap_or("-"),
                v.message
            );
        }
        for st in &n.steps {
            let at = if st.at.is_empty() { "plan".to_string() } else { st.at.clone() };
            s += &format!("  step    {at}  {}\n", escape_node_text(&st.what, false));
        }
    }
    s
}

/// `hapki pki renew-ca --from NODE | --inventory FILE` (see src/renew/ca.rs).
pub fn renew_ca_remote(
    args: &super::pki::RenewCaArgs,
    which: Vec<hapki::pki::Ca>,
) -> anyhow::Result<u8> {
    if args.kubeconfig_dir.is_some() {
        return Err(usage_error("--kubeconfig-dir goes with --pki-dir; over SSH the node's /etc/kubernetes kubeconfigs are updated"));
    }
    let nodes = NodeArgs { nodes: args.from.clone(), inventory: args.inventory.clone() };
    let (inv, selected) = nodes.all(&args.ssh)?;
    let first = selected
        .first()
        .ok_or_else(|| usage_error("no first master: give --from NODE or an inventory"))?;
    let workers: Vec<hapki::transport::Target> = match (&inv, &args.inventory) {
        (Some(_), Some(_)) => {
            let all = NodeArgs { nodes: None, inventory: args.inventory.clone() }.all(&args.ssh)?.1;
            all.into_iter().filter(|s| s.role == Role::Worker).map(|s| s.target).collect()
        }
        _ => Vec::new(),
    };
    let opts = hapki::renew::ca::RemoteCaOptions {
        which,
        validity: args.validity.to_time(),
        now: time::OffsetDateTime::now_utc(),
        dry_run: args.dry_run,
        paths: hapki::node::NodePaths::default(),
        run_id: run_id(),
    };
    let transport = args.ssh.transport()?;
    let report =
        hapki::renew::ca::run(&first.target, &workers, transport.as_ref(), &opts).categorized()?;
    match args.output {
        Output::Json => print_json(&report)?,
        Output::Table => print!("{}", ca_table(&report)),
    }
    Ok(if report.ok { 0 } else { 5 })
}

fn ca_table(r: &hapki::renew::ca::RemoteCaReport) -> String {
    let verb = if r.dry_run { "would re-issue" } else { "re-issued" };
    let mut s = format!("{verb} on {}:\n", r.first_master);
    for c in &r.renewed {
        s += &format!(
            "  {}  notAfter {} -> {}  spki {}\n",
            c.file, c.old_not_after, c.new_not_after, c.spki_sha256
        );
    }
    if let Some(h) = &r.discovery_token_ca_cert_hash {
        s += &format!("  discovery-token-ca-cert-hash (unchanged): {h}\n");
    }
    for n in &r.nodes {
        let state = if n.ok { "ok" } else { "FAILED" };
        s +=
            &format!("{} ({}): {state}: {}\n", n.node, n.role, escape_node_text(&n.message, false));
    }
    s
}

pub(super) fn run_id() -> String {
    let stamp = time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!("[year][month][day]T[hour][minute][second]Z"))
        .unwrap_or_else(|_| "renew".into());
    format!("{stamp}-{:08x}", rand::random::<u32>())
}
