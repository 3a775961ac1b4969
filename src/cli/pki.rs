//! `hapki pki init | check | inspect | renew-ca`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use hapki::duration::Duration;
use hapki::error::Category;
use hapki::pki::{self, Algorithm, CheckOptions, CheckReport, InspectReport, Problem};
use serde::Serialize;

use super::{print_json, CategorizeExt, Output};

#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Create a fresh shared PKI exactly as `kubeadm init` would.
    ///
    /// Writes the three CAs (ca, front-proxy-ca, etcd/ca: 10 years, back-dated 5 minutes) and
    /// the service-account key pair (sa.key, sa.pub) with kubeadm's PEM types and modes
    /// (directories 0755, certificates 0644, keys 0600). kubeadm uses CA files it finds in
    /// place, so run this before `kubeadm init` to create the cluster's CAs on an air-gapped
    /// machine. Refuses, writing nothing, if any of the eight files already exists.
    Init(InitArgs),
    /// Check that the eight shared files form a coherent PKI kubeadm will accept.
    ///
    /// Parses every file as kubeadm reads it, checks each CA certificate (CA:TRUE, keyCertSign,
    /// self-signed, validity), that each CA key matches its certificate and sa.key matches
    /// sa.pub (kubeadm itself never checks these), key types and key file modes. Prints the
    /// discovery-token-ca-cert-hash. Exit 0 when clean (warnings allowed), 3 with problems.
    Check(CheckArgs),
    /// Show what PEM files are: kind, subject, issuer, validity, fingerprints.
    ///
    /// For certificates also prints the discovery-token-ca-cert-hash kubeadm would pin for it
    /// as the cluster CA. Exit 3 if any file cannot be read as kubeadm would.
    Inspect(InspectArgs),
    /// Re-issue CA certificates with the SAME key and subject (kubeadm never renews a CA).
    ///
    /// ca.crt, front-proxy-ca.crt and etcd/ca.crt get a new serial and validity; the subject,
    /// public key (so the discovery-token-ca-cert-hash), subject key identifier and every
    /// extension stay byte for byte, so every leaf and token issued before stays valid. The
    /// old certificate is kept beside it as `<name>.<unix time>.bak` (0644, never
    /// overwritten); the new one replaces it atomically. Keys are never touched. Refuses
    /// (writing nothing) when a key is missing or does not match, or the new notAfter would
    /// not be later than the current one. Then: `hapki bundle` and `hapki push` (no
    /// --replace needed for a same-key re-issue).
    RenewCa(RenewCaArgs),
}

#[derive(Debug, Args)]
pub struct RenewCaArgs {
    /// The pki directory of the first control plane (kubeadm's is /etc/kubernetes/pki).
    #[arg(long, value_name = "DIR", required_unless_present_any = ["from", "inventory"], conflicts_with_all = ["from", "inventory"])]
    pub pki_dir: Option<PathBuf>,
    /// Re-issue on this node over SSH (the first master), its kubeconfigs and the
    /// kube-public/cluster-info ConfigMap updated there.
    #[arg(long, value_name = "NODE")]
    pub from: Option<String>,
    /// Re-issue on the inventory's first master (or --from), then give every worker of the
    /// inventory the new ca.crt and its kubelet.conf the new CA data; the other control planes
    /// get it with hapki bundle + hapki push.
    #[arg(long, value_name = "FILE")]
    pub inventory: Option<PathBuf>,
    #[command(flatten)]
    pub ssh: super::ssh::SshArgs,
    /// Which CAs: a comma-separated list of ca, front-proxy-ca, etcd-ca (or etcd/ca).
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "ca,front-proxy-ca,etcd-ca"
    )]
    pub which: Vec<String>,
    /// Validity of the re-issued certificates from now (kubeadm's CA lifetime is 10 years).
    #[arg(long, value_name = "DURATION", default_value = "3650d")]
    pub validity: Duration,
    /// Also update kubeadm's kubeconfigs in this directory (/etc/kubernetes): every `*.conf`
    /// whose certificate-authority-data is the old ca.crt gets the new one (only that value;
    /// mode and owner kept).
    #[arg(long, value_name = "DIR")]
    pub kubeconfig_dir: Option<PathBuf>,
    /// Compute and check the new certificates, print the plan, write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// `table` for people; `json` prints one object (dry_run, discovery_token_ca_cert_hash,
    /// renewed[] of {ca, file, subject, spki_sha256, old_serial, new_serial, old_not_after,
    /// new_not_after, backup}, kubeconfigs[]).
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

/// kubeadm's `encryptionAlgorithm` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AlgorithmArg {
    #[value(name = "RSA-2048")]
    Rsa2048,
    #[value(name = "RSA-3072")]
    Rsa3072,
    #[value(name = "RSA-4096")]
    Rsa4096,
    #[value(name = "ECDSA-P256")]
    EcdsaP256,
    #[value(name = "ECDSA-P384")]
    EcdsaP384,
}

impl From<AlgorithmArg> for Algorithm {
    fn from(a: AlgorithmArg) -> Self {
        match a {
            AlgorithmArg::Rsa2048 => Algorithm::Rsa2048,
            AlgorithmArg::Rsa3072 => Algorithm::Rsa3072,
            AlgorithmArg::Rsa4096 => Algorithm::Rsa4096,
            AlgorithmArg::EcdsaP256 => Algorithm::EcdsaP256,
            AlgorithmArg::EcdsaP384 => Algorithm::EcdsaP384,
        }
    }
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Directory to create the PKI in (created if missing; kubeadm's is /etc/kubernetes/pki).
    #[arg(long, value_name = "DIR")]
    pub pki_dir: PathBuf,
    /// Key algorithm for the CAs and the service-account key, as kubeadm's
    /// ClusterConfiguration.encryptionAlgorithm (ECDSA-P384 needs kubeadm ≥ 1.34).
    #[arg(long, value_enum, default_value = "RSA-2048", ignore_case = true)]
    pub algorithm: AlgorithmArg,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Directory holding the shared files (ca.crt, ca.key, sa.key, sa.pub, front-proxy-ca.*,
    /// etcd/ca.*).
    #[arg(long, value_name = "DIR")]
    pub pki_dir: PathBuf,
    /// Warn about certificates that expire within this long (90m, 36h, 30d, 1y).
    #[arg(long, value_name = "DURATION", default_value = "90d")]
    pub warn_within: Duration,
    /// `table` for people; `json` prints one object (ok, discovery_token_ca_cert_hash, files[],
    /// problems[], warnings[]) for scripts.
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// PEM files: certificates, private keys (PKCS#1, SEC1, PKCS#8) or public keys.
    #[arg(value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,
    /// `table` for people; `json` prints one object (ok, files[], problems[]) for scripts.
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

pub fn run(cmd: PkiCommand) -> anyhow::Result<u8> {
    match cmd {
        PkiCommand::Init(args) => init(args),
        PkiCommand::Check(args) => check(args),
        PkiCommand::Inspect(args) => inspect(args),
        PkiCommand::RenewCa(args) => renew_ca(args),
    }
}

fn renew_ca(args: RenewCaArgs) -> anyhow::Result<u8> {
    let which = args
        .which
        .iter()
        .map(|w| w.parse::<pki::Ca>())
        .collect::<Result<Vec<_>, _>>()
        .categorized()?;
    let Some(pki_dir) = args.pki_dir.clone() else {
        return super::renew::renew_ca_remote(&args, which);
    };
    let opts = pki::RenewOptions {
        which,
        validity: args.validity.to_time(),
        now: time::OffsetDateTime::now_utc(),
        dry_run: args.dry_run,
        kubeconfig_dir: args.kubeconfig_dir,
    };
    let report = pki::renew_cas(&pki_dir, &opts).categorized()?;
    match args.output {
        Output::Json => print_json(&report)?,
        Output::Table => print_renew(&pki_dir, &report),
    }
    Ok(0)
}

fn print_renew(dir: &std::path::Path, report: &pki::RenewReport) {
    let verb = if report.dry_run { "would re-issue" } else { "re-issued" };
    for r in &report.renewed {
        println!(
            "{verb} {} ({}): serial {} -> {}, notAfter {} -> {}, same key (spki sha256 {}…)",
            r.file,
            r.subject,
            r.old_serial,
            r.new_serial,
            r.old_not_after,
            r.new_not_after,
            &r.spki_sha256[..12]
        );
        if let Some(b) = &r.backup {
            println!("  old certificate kept as {}", b.display());
        }
    }
    for k in &report.kubeconfigs {
        let verb = if report.dry_run { "would put" } else { "put" };
        println!("{verb} the new ca.crt in {}", k.display());
    }
    if let Some(h) = &report.discovery_token_ca_cert_hash {
        println!("discovery-token-ca-cert-hash: {h} (unchanged)");
    }
    if report.dry_run {
        println!("dry run: nothing written in {}", dir.display());
    } else {
        println!(
            "next: hapki bundle --pki-dir {} ... and hapki push (a same-key re-issue needs no --replace)",
            dir.display()
        );
    }
}

fn init(args: InitArgs) -> anyhow::Result<u8> {
    let alg = Algorithm::from(args.algorithm);
    pki::init(&args.pki_dir, alg, time::OffsetDateTime::now_utc()).categorized()?;
    println!("created a {alg} shared PKI in {}:", args.pki_dir.display());
    for f in &pki::SHARED_FILES {
        println!("  {:04o}  {}", f.mode, f.name);
    }
    let report = pki::check_dir(&args.pki_dir, &CheckOptions::default()).categorized()?;
    if let Some(hash) = &report.discovery_token_ca_cert_hash {
        println!("discovery-token-ca-cert-hash: {hash}");
    }
    println!("next: hapki pki check --pki-dir {}", args.pki_dir.display());
    Ok(0)
}

fn check(args: CheckArgs) -> anyhow::Result<u8> {
    let opts = CheckOptions::new(args.warn_within);
    let report = pki::check_dir(&args.pki_dir, &opts).categorized()?;
    match args.output {
        Output::Json => print_json(&report)?,
        Output::Table => print_check_table(&args.pki_dir, &report),
    }
    Ok(if report.ok { 0 } else { Category::Verification.exit_code() })
}

fn print_check_table(dir: &std::path::Path, report: &CheckReport) {
    println!(
        "{:<20} {:<11} {:<10} {:<5} {:<25} {:<12} {:<12}",
        "FILE", "ALGORITHM", "MODE", "CA", "NOT AFTER", "SHA256", "SPKI SHA256"
    );
    for f in &report.files {
        let short =
            |h: &Option<String>| h.as_deref().map(|h| format!("{}…", &h[..h.len().min(10)]));
        println!(
            "{:<20} {:<11} {:<10} {:<5} {:<25} {:<12} {:<12}",
            f.name,
            f.algorithm.as_deref().unwrap_or("-"),
            f.mode.as_deref().unwrap_or("-"),
            f.is_ca.map_or("-", |c| if c { "yes" } else { "no" }),
            f.not_after.as_deref().unwrap_or("-"),
            short(&Some(f.sha256.clone())).unwrap_or_default(),
            short(&f.spki_sha256).unwrap_or_else(|| "-".to_string()),
        );
    }
    for shared in
        pki::SHARED_FILES.iter().filter(|s| !report.files.iter().any(|f| f.name == s.name))
    {
        println!("{:<20} (missing or unreadable: see the problems below)", shared.name);
    }
    println!();
    match &report.discovery_token_ca_cert_hash {
        Some(h) => println!("discovery-token-ca-cert-hash: {h}"),
        None => println!("discovery-token-ca-cert-hash: (no readable ca.crt)"),
    }
    for c in &report.cas {
        let days = c.days_left.map_or("-".to_string(), |d| format!("{d} days left"));
        let re = match &c.reason {
            None => "same-key re-issue possible (hapki pki renew-ca)".to_string(),
            Some(r) => format!("no same-key re-issue: {r}"),
        };
        println!("CA {:<15} {:<16} {re}", c.ca, days);
    }
    print_findings("warning", &report.warnings);
    print_findings("problem", &report.problems);
    if report.ok {
        println!("OK: {} is a coherent kubeadm shared PKI", dir.display());
    } else {
        println!(
            "FAILED: {} problem(s) in {}; nothing should be copied until they are fixed",
            report.problems.len(),
            dir.display()
        );
    }
}

fn print_findings(label: &str, findings: &[Problem]) {
    for p in findings {
        println!("{label}: {}", p.message);
    }
}

#[derive(Serialize)]
struct InspectOutput {
    ok: bool,
    files: Vec<InspectReport>,
    problems: Vec<Problem>,
}

fn inspect(args: InspectArgs) -> anyhow::Result<u8> {
    let mut out = InspectOutput { ok: true, files: Vec::new(), problems: Vec::new() };
    for path in &args.files {
        let name = path.display().to_string();
        if path.is_dir() {
            out.problems.push(Problem {
                file: Some(name.clone()),
                message: format!("{name}: is a directory, not a PEM file"),
            });
            continue;
        }
        let bytes = std::fs::read(path).with_context(|| format!("{name}: cannot read"))?;
        match pki::inspect_pem(&name, &bytes) {
            Ok(r) => out.files.push(r),
            Err(e) => out.problems.push(Problem { file: Some(name), message: e.to_string() }),
        }
    }
    out.ok = out.problems.is_empty();
    match args.output {
        Output::Json => print_json(&out)?,
        Output::Table => {
            for (i, r) in out.files.iter().enumerate() {
                if i > 0 {
                    println!();
                }
                print_inspect(r);
            }
            for p in &out.problems {
                eprintln!("hapki: error: {}", p.message);
            }
        }
    }
    Ok(if out.ok { 0 } else { Category::Verification.exit_code() })
}

fn print_inspect(r: &InspectReport) {
    let row = |k: &str, v: &str| println!("  {k:<30} {v}");
    println!("{}", r.file);
    row("format", &format!("{} ({})", r.format, r.algorithm));
    let opt = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            row(k, v)
        }
    };
    opt("subject", &r.subject);
    opt("issuer", &r.issuer);
    opt("serial", &r.serial);
    if let Some(ca) = r.is_ca {
        row("CA", if ca { "yes" } else { "no" });
    }
    if let Some(s) = r.self_signed {
        row("self-signed", if s { "yes" } else { "no" });
    }
    opt("not before", &r.not_before);
    opt("not after", &r.not_after);
    row("sha256 (file)", &r.sha256);
    opt("cert sha256 (DER)", &r.cert_sha256);
    row("spki sha256", &r.spki_sha256);
    opt("discovery-token-ca-cert-hash", &r.discovery_token_ca_cert_hash);
}
