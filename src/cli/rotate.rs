//! `hapki rotate`: the cluster's CAs and service-account key replaced in phases, one per run
//! (see src/rotate).

use std::path::PathBuf;

use clap::Args;
use hapki::rotate::material::Part;
use hapki::rotate::state::Phase;
use hapki::rotate::{self, BundleRequest, RotateOptions, RotateReport};
use hapki::transport::escape_node_text;

use super::nodes::NodeArgs;
use super::ssh::SshArgs;
use super::{print_json, usage_error, CategorizeExt, Output};

/// Rotate the cluster's CAs (ca, front-proxy-ca, etcd-ca) and service-account key pair, one
/// phase per run: prepare (new material kept on the first master), trust-both (every node
/// trusts old and new), switch (the new keys sign; leaves re-issued), drain (what still depends
/// on the old material), finalize (the old removed). Control planes one at a time, restarted
/// and checked on the wire as `hapki renew` does; a failed node stops the run (exit 5) and the
/// next run resumes there. --abort before switch returns to the old material.
#[derive(Debug, Args)]
pub struct RotateArgs {
    #[command(flatten)]
    pub nodes: NodeArgs,
    /// Run every phase up to this one (prepare, trust-both, switch, drain, finalize); without
    /// it, the next phase only.
    #[arg(long, value_name = "PHASE")]
    pub to: Option<String>,
    /// prepare: what rotates (comma-separated: ca, front-proxy-ca, etcd-ca, sa).
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "ca,front-proxy-ca,etcd-ca,sa"
    )]
    pub which: Vec<String>,
    /// prepare: the new keys' algorithm (RSA-2048, RSA-3072, RSA-4096, ECDSA-P256, ECDSA-P384);
    /// default: the current ca.crt's.
    #[arg(long, value_name = "ALG")]
    pub algorithm: Option<hapki::pki::Algorithm>,
    /// prepare: how long the new CAs are valid.
    #[arg(long, value_name = "DURATION", default_value = "3650d")]
    pub validity: hapki::duration::Duration,
    /// prepare: also write the new material as a signed bundle with this key (needs --out).
    #[arg(long, value_name = "FILE", requires = "out")]
    pub sign_key: Option<PathBuf>,
    /// age recipient (age1…), SSH public key line, or @FILE of them; repeatable.
    #[arg(long = "recipient", value_name = "R", requires = "sign_key")]
    pub recipients: Vec<String>,
    /// Write the bundle unencrypted: CA private keys readable by whoever gets the file.
    #[arg(long, conflicts_with = "recipients", requires = "sign_key")]
    pub insecure_plaintext: bool,
    /// Where the bundle goes.
    #[arg(long, value_name = "FILE", requires = "sign_key")]
    pub out: Option<PathBuf>,
    /// Print what the phase would change on each node; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Return every node to the old material alone (only before switch has started).
    #[arg(long, conflicts_with_all = ["to", "status"])]
    pub abort: bool,
    /// drain: poll every 10 s until nothing depends on the old material.
    #[arg(long)]
    pub wait: bool,
    /// Print the rotation's state and history; change nothing.
    #[arg(long)]
    pub status: bool,
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
    /// How long a component may take to stop once its manifest is moved out.
    #[arg(long, value_name = "DURATION", default_value = "1m")]
    pub stop_timeout: hapki::duration::Duration,
    /// How long a component may take to come back, and then to become healthy.
    #[arg(long, value_name = "DURATION", default_value = "3m")]
    pub restart_timeout: hapki::duration::Duration,
    #[command(flatten)]
    pub ssh: SshArgs,
}

fn bundle_request(args: &RotateArgs) -> anyhow::Result<Option<BundleRequest>> {
    let (Some(key), Some(out)) = (&args.sign_key, &args.out) else { return Ok(None) };
    let protection = super::bundle::pki_protection(&args.recipients, args.insecure_plaintext)?;
    Ok(Some(BundleRequest {
        key: super::bundle::signing_key(key)?,
        protection,
        out: out.clone(),
        create: hapki::bundle::CreateOptions {
            cluster: "kubernetes".into(),
            created_at: time::OffsetDateTime::now_utc(),
            valid_for: time::Duration::days(7),
            serial: None,
            source: "hapki rotate prepare".into(),
        },
    }))
}

pub fn run(args: RotateArgs) -> anyhow::Result<u8> {
    let to = args.to.as_deref().map(str::parse::<Phase>).transpose().map_err(usage_error)?;
    let mut which = Vec::new();
    for w in &args.which {
        let p: Part = w.parse().map_err(usage_error)?;
        if !which.contains(&p) {
            which.push(p);
        }
    }
    if args.nodes.nodes.is_some() || args.nodes.inventory.is_none() {
        return Err(usage_error("rotate works on the whole cluster: give --inventory FILE (every control plane and worker), without --nodes"));
    }
    let (_, nodes) = args.nodes.all(&args.ssh)?;
    let opts = RotateOptions {
        to,
        which,
        algorithm: args.algorithm,
        validity: args.validity.to_time(),
        bundle: bundle_request(&args)?,
        dry_run: args.dry_run,
        abort: args.abort,
        status: args.status,
        wait: args.wait,
        poll: std::time::Duration::from_secs(10),
        stop_timeout: std::time::Duration::from_secs(args.stop_timeout.as_secs()),
        restart_timeout: std::time::Duration::from_secs(args.restart_timeout.as_secs()),
        paths: hapki::node::NodePaths::default(),
        run_id: super::renew::run_id(),
        now: time::OffsetDateTime::now_utc(),
    };
    let transport = args.ssh.transport()?;
    let progress = |node: &str, what: &str| eprintln!("hapki: {node}: {what}");
    let report = rotate::run(&nodes, transport.as_ref(), &opts, &progress).categorized()?;
    match args.output {
        Output::Json => print_json(&report)?,
        Output::Table => print!("{}", table(&report)),
    }
    Ok(report.category.map_or(0, |c| c.exit_code()))
}

fn table(r: &RotateReport) -> String {
    let phase = r.phase.map_or("-", Phase::as_str);
    let id = r.rotation_id.as_deref().unwrap_or("-");
    let mut s =
        format!("rotation {id}, phase {phase}{}\n", if r.dry_run { " (dry run)" } else { "" });
    for n in &r.nodes {
        let msg = escape_node_text(&n.message, false);
        s += &format!("{} ({}): {}: {msg}\n", n.node, n.role, n.status.as_str());
        for c in &n.changes {
            s += &format!("  {:<10} {}\n", c.what, escape_node_text(&c.file, false));
        }
        for v in n.served.iter().filter(|v| !v.ok) {
            s += &format!("  served     {}:{} MISMATCH: {}\n", v.component, v.port, v.message);
        }
    }
    if let Some(h) = &r.discovery_token_ca_cert_hash {
        s += &format!("discovery-token-ca-cert-hash (new CA): {h}\n");
    }
    if let Some(d) = &r.drain {
        for i in &d.items {
            let (file, msg) =
                (escape_node_text(&i.file, false), escape_node_text(&i.message, false));
            s += &format!("drain {} {file} [{}]: {msg}\n", i.node, i.kind);
        }
        for n in &d.notes {
            s += &format!("note: {n}\n");
        }
    }
    if let (Some(st), true) = (&r.state, r.nodes.is_empty() && r.drain.is_none()) {
        s += &format!(
            "which {}, algorithm {}, created {}\n",
            st.which.join(","),
            st.algorithm,
            st.created_at
        );
        for (node, ns) in &st.nodes {
            s += &format!("  node {node}: {}\n", ns.phase_done.map_or("-", Phase::as_str));
        }
        for h in &st.history {
            let node = h.node.as_deref().unwrap_or("*");
            s += &format!(
                "  {} {} {node}: {}\n",
                h.at,
                h.phase.as_str(),
                escape_node_text(&h.what, false)
            );
        }
    }
    if let Some(b) = &r.bundle {
        s += &format!("bundle: {b}\n");
    }
    s += &format!("{}\n", escape_node_text(&r.message, false));
    s
}
