//! `hapki push`.

use std::path::PathBuf;

use clap::Args;
use hapki::error::Category;
use std::collections::HashMap;
use std::sync::Mutex;

use hapki::bundle;
use hapki::push::backups::{self, BackupOp, NodeBackups};
use hapki::push::{
    self, BundleSource, Event, NodeStatus, NodeTarget, PushOptions, PushReport, PushRun, Step,
};

use super::nodes::NodeArgs;
use super::ssh::SshArgs;
use super::{print_json, stderr_is_tty, CategorizeExt, Output};

/// Verify the bundle here, then on every target node in parallel: check the node's identity,
/// take its lock, stage and verify the bundle on the node with its own ssh-keygen and sha256sum,
/// and install by atomic rename with kubeadm's modes. A node holding a different CA is left
/// exactly as it was unless --replace (which backs its files up first).
#[derive(Debug, Args)]
pub struct PushArgs {
    /// The bundle file (from `hapki bundle`); not with --list-backups / --prune-backups.
    #[arg(required_unless_present_any = ["list_backups", "prune_backups"])]
    pub bundle: Option<PathBuf>,
    #[command(flatten)]
    pub nodes: NodeArgs,
    /// OpenSSH allowed_signers file naming the keys trusted to sign bundles.
    #[arg(long, value_name = "ALLOWED_SIGNERS", required_unless_present_any = ["list_backups", "prune_backups"])]
    pub trust: Option<PathBuf>,
    /// Trust only allowed_signers lines for this principal, as `ssh-keygen -Y verify -I` does
    /// (such a line then needs no namespaces= option); repeatable. Without it, only lines whose
    /// namespaces= lists hapki-bundle are trusted.
    #[arg(long, value_name = "PRINCIPAL")]
    pub principal: Vec<String>,
    /// age identity file or SSH private key that decrypts the bundle; repeatable.
    #[arg(long, value_name = "FILE")]
    pub decrypt_key: Vec<PathBuf>,
    /// Replace shared files that differ on a node (after backing them up on the node under
    /// /var/lib/hapki/backup/).
    #[arg(long)]
    pub replace: bool,
    /// Install even where a node last installed a newer bundle (a higher serial), e.g. to go
    /// back after a bad release; each node records the downgrade in its history.
    #[arg(long)]
    pub allow_downgrade: bool,
    /// Connect and inspect every node, print what would happen, write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// How many nodes to work on at once.
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub parallel: usize,
    /// List each node's --replace backups (directory, time, files) instead of pushing; no
    /// bundle or --trust.
    #[arg(long, conflicts_with_all = BACKUP_CONFLICTS, conflicts_with = "prune_backups")]
    pub list_backups: bool,
    /// Remove all but the --keep newest backups on each node (with --dry-run: only print what
    /// would go); each node's history records a `prune` line.
    #[arg(long, requires = "keep", conflicts_with_all = BACKUP_CONFLICTS)]
    pub prune_backups: bool,
    /// With --prune-backups: how many of the newest backups each node keeps (at least 1).
    #[arg(long, value_name = "N", requires = "prune_backups", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep: Option<u32>,
    /// Copy the bundle's image archives (a `hapki bundle --registry` bundle), verified first,
    /// into this OCI registry before the nodes pull them from it by digest.
    #[arg(long, value_name = "HOST[:PORT]", conflicts_with_all = ["list_backups", "prune_backups"])]
    pub registry: Option<String>,
    /// containers-auth.json with the --registry's credentials (skopeo --authfile); without it,
    /// skopeo's defaults ($REGISTRY_AUTH_FILE, ~/.docker/config.json).
    #[arg(long, value_name = "FILE", requires = "registry")]
    pub registry_authfile: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
    #[command(flatten)]
    pub ssh: SshArgs,
}

/// What --list-backups / --prune-backups refuse alongside them (they push nothing).
const BACKUP_CONFLICTS: [&str; 6] =
    ["bundle", "trust", "principal", "decrypt_key", "replace", "allow_downgrade"];

pub fn run(args: PushArgs) -> anyhow::Result<u8> {
    if args.list_backups || args.prune_backups {
        return run_backups(&args);
    }
    let (Some(bundle_path), Some(trust_path)) = (&args.bundle, &args.trust) else {
        return Err(super::usage_error(
            "push needs a bundle and --trust (or --list-backups / --prune-backups)",
        ));
    };
    let targets = push_targets(&args)?;
    let (trust, ids) = super::nodes::load_trust(trust_path, &args.principal, &args.decrypt_key)?;
    let transport = args.ssh.transport()?;
    if let (Some(reg), false) = (&args.registry, args.dry_run) {
        let opts = hapki::registry::UploadOptions { authfile: args.registry_authfile.clone() };
        let verify = bundle::VerifyOptions::default();
        let up = hapki::registry::upload(bundle_path, &trust, &ids, &verify, reg, &opts)
            .categorized()?;
        eprintln!(
            "hapki: {reg}: {} image(s) copied and served by digest ({} bytes of archives)",
            up.images.len(),
            up.bytes
        );
    }
    let mut opts = PushOptions::new(args.replace, args.dry_run, args.parallel);
    opts.allow_downgrade = args.allow_downgrade;

    let bars = Bars::new(&targets);
    let progress = |node: &str, ev: Event| bars.event(node, ev);
    let run = PushRun {
        bundle: BundleSource {
            path: bundle_path,
            trust: &trust,
            identities: &ids,
            verify: bundle::VerifyOptions::default(),
        },
        targets: &targets,
        transport: transport.as_ref(),
        opts: &opts,
        progress: &progress,
    };
    let result = push::push(&run);
    bars.clear();
    let report = result.categorized()?;
    print_report(&report, args.output)?;
    Ok(report.category().map(Category::exit_code).unwrap_or(0))
}

/// One line per node on a terminal: its step, then (for artifacts) a byte bar with rate and ETA.
struct Bars {
    multi: Option<indicatif::MultiProgress>,
    bars: Mutex<HashMap<String, indicatif::ProgressBar>>,
    width: usize,
}

impl Bars {
    fn new(targets: &[NodeTarget]) -> Self {
        Bars {
            multi: stderr_is_tty().then(indicatif::MultiProgress::new),
            bars: Mutex::new(HashMap::new()),
            width: targets.iter().map(|t| t.node.name().len()).max().unwrap_or(4),
        }
    }

    fn event(&self, node: &str, ev: Event) {
        let Some(m) = &self.multi else { return };
        let mut bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
        let bar = bars.entry(node.to_string()).or_insert_with(|| self.spinner(m, node));
        match ev {
            Event::Step(Step::Done) => bar.finish_with_message("done"),
            Event::Step(s) => bar.set_message(s.to_string()),
            Event::Sending { sent, total } => self.sending(bar, sent, total),
        }
    }

    fn spinner(&self, m: &indicatif::MultiProgress, node: &str) -> indicatif::ProgressBar {
        let b = m.add(indicatif::ProgressBar::new_spinner());
        b.set_style(
            indicatif::ProgressStyle::with_template(&format!(
                "{{prefix:{}}} {{spinner}} {{wide_msg}}",
                self.width
            ))
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        b.set_prefix(node.to_string());
        b.enable_steady_tick(std::time::Duration::from_millis(120));
        b
    }

    fn sending(&self, bar: &indicatif::ProgressBar, sent: u64, total: u64) {
        if bar.length() != Some(total) {
            bar.set_length(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(&format!(
                    "{{prefix:{}}} [{{bar:30}}] {{bytes}}/{{total_bytes}} {{binary_bytes_per_sec}} ETA {{eta}} {{msg}}",
                    self.width
                ))
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            // The rate counts from the first byte, not from when the node connected (sending
            // starts only once every node has planned).
            bar.set_message("");
            bar.reset_elapsed();
            bar.reset_eta();
        }
        bar.set_position(sent);
        if sent == total {
            // The node hashes what it staged and waits for the whole bundle to verify.
            bar.set_message("checking");
        }
    }

    fn clear(&self) {
        if let Some(m) = &self.multi {
            let _ = m.clear();
        }
    }
}

/// `--list-backups` / `--prune-backups`: the same target nodes as a push, one exec each.
fn run_backups(args: &PushArgs) -> anyhow::Result<u8> {
    let targets: Vec<_> = push_targets(args)?.into_iter().map(|t| t.node.target).collect();
    let transport = args.ssh.transport()?;
    let op = match args.keep {
        Some(keep) if args.prune_backups => BackupOp::Prune { keep, dry_run: args.dry_run },
        _ => BackupOp::List,
    };
    let opts = PushOptions::new(false, args.dry_run, args.parallel);
    let rows =
        backups::run(&targets, transport.as_ref(), &opts.paths, op, &opts.stamp, opts.parallel)
            .categorized()?;
    match args.output {
        Output::Json => print_json(&rows)?,
        Output::Table => print_backups(&rows, op),
    }
    let worst = [Category::HostKey, Category::NodesFailed]
        .into_iter()
        .find(|c| rows.iter().any(|r| r.category == Some(*c)));
    Ok(worst.map(Category::exit_code).unwrap_or(0))
}

fn print_backups(rows: &[NodeBackups], op: BackupOp) {
    let w = rows.iter().map(|r| r.node.len()).max().unwrap_or(4).max(4);
    println!("{:w$}  {:35}  {:40}  FILES", "NODE", "TIME (UTC)", "BACKUP");
    for r in rows {
        if !r.ok || r.backups.is_empty() {
            println!("{:w$}  {}", r.node, escape(&r.message));
        }
        for b in &r.backups {
            let what = match (op, b.removed) {
                (BackupOp::Prune { dry_run: true, .. }, true) => "would remove".to_string(),
                (BackupOp::Prune { .. }, true) => "removed".to_string(),
                (BackupOp::Prune { .. }, false) => "kept".to_string(),
                (BackupOp::List, _) => b.files.join(","),
            };
            println!(
                "{:w$}  {:35}  {:40}  {}",
                r.node,
                escape(&b.time),
                escape(&b.dir),
                escape(&what)
            );
        }
    }
}

/// Control characters from a node never reach the terminal raw.
fn escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| if c.is_control() { c.escape_default().collect::<Vec<_>>() } else { vec![c] })
        .collect()
}

/// With an inventory: every node in it; with --nodes: the nodes given. Which of them get the
/// PKI is the library's decision ([`push::targets`]).
fn push_targets(args: &PushArgs) -> anyhow::Result<Vec<NodeTarget>> {
    if args.nodes.nodes.is_none() && args.nodes.inventory.is_some() {
        let (inv, all) = args.nodes.all(&args.ssh)?;
        let first = inv.as_ref().map(|i| i.first_master().name.clone());
        return Ok(push::targets(all, first.as_deref()));
    }
    Ok(push::targets(args.nodes.push_targets(&args.ssh)?, None))
}

fn print_report(report: &PushReport, output: Output) -> anyhow::Result<()> {
    match output {
        Output::Json => print_json(report),
        Output::Table => {
            let w = report.nodes.iter().map(|n| n.node.len()).max().unwrap_or(4).max(4);
            println!("{:w$}  {:9}  MESSAGE", "NODE", "STATUS");
            for n in &report.nodes {
                println!("{:w$}  {:9}  {}", n.node, n.status.to_string(), n.message);
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
