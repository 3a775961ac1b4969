//! `hapki keygen`, `hapki bundle`, `hapki verify`.

use std::path::PathBuf;

use clap::Args;
use hapki::bundle::{self, BundleError, Protection, Recipients};
use hapki::duration::Duration;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{print_json, usage_error, CategorizeExt, Output};

/// Environment variable holding the passphrase of a protected `--sign-key`.
const SIGN_PASSPHRASE_ENV: &str = "HAPKI_SIGN_KEY_PASSPHRASE";

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Private key file to create (mode 0600); the public key goes to FILE.pub.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Principal for the printed allowed_signers line (who this key speaks for).
    #[arg(long, default_value = "hapki")]
    pub principal: String,
    /// Comment stored in the key.
    #[arg(long, default_value = "hapki bundle signing key")]
    pub comment: String,
}

#[derive(Debug, Args)]
pub struct BundleArgs {
    /// Directory holding the shared PKI files (as /etc/kubernetes/pki). Optional with
    /// --artifacts (an artifacts-only bundle).
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present_any = ["from", "inventory", "artifacts"],
        conflicts_with_all = ["from", "inventory"]
    )]
    pub pki_dir: Option<PathBuf>,
    /// Read the eight files over SSH from this node's /etc/kubernetes/pki (`[user@]host[:port]`).
    #[arg(long, value_name = "NODE", conflicts_with = "inventory")]
    pub from: Option<String>,
    /// Read the eight files over SSH from the inventory's first master.
    #[arg(long, value_name = "FILE")]
    pub inventory: Option<PathBuf>,
    #[command(flatten)]
    pub ssh: super::ssh::SshArgs,
    /// Artifacts spec (TOML; see bundles/README.md): binaries, image archives, CNI files and
    /// configs to carry in the bundle, installed by `hapki push` on the nodes whose role needs them.
    #[arg(long, value_name = "SPEC")]
    pub artifacts: Option<PathBuf>,
    /// Distribute the spec's image archives through this OCI registry (`HOST[:PORT]`): nodes get
    /// the registry's containerd hosts.toml and CA and pull each image by digest; the archives
    /// stay in the bundle for `hapki push --registry` to copy there (see the README, Fleets).
    #[arg(long, value_name = "HOST[:PORT]", requires_all = ["artifacts", "registry_ca"])]
    pub registry: Option<String>,
    /// The CA certificate (PEM) that signed the --registry's TLS certificate; installed on the
    /// nodes with the registry's hosts.toml.
    #[arg(long, value_name = "FILE", requires = "registry")]
    pub registry_ca: Option<PathBuf>,
    /// OpenSSH private key that signs SHA256SUMS (`hapki keygen` makes one). If it is
    /// passphrase-protected, hapki asks on the terminal, or reads HAPKI_SIGN_KEY_PASSPHRASE.
    #[arg(long, value_name = "FILE")]
    pub sign_key: PathBuf,
    /// age recipient (age1…), SSH public key line, or @FILE of them; repeatable. Required when
    /// the bundle holds the PKI (an artifacts-only bundle without one is written unencrypted).
    #[arg(long = "recipient", value_name = "R")]
    pub recipients: Vec<String>,
    /// Write the bundle unencrypted: CA private keys readable by whoever gets the file.
    #[arg(long, conflicts_with = "recipients")]
    pub insecure_plaintext: bool,
    /// Cluster name recorded in bundle.json.
    #[arg(long, default_value = "kubernetes")]
    pub cluster: String,
    /// How long the bundle stays valid.
    #[arg(long, default_value = "7d")]
    pub valid_for: Duration,
    /// Serial recorded in bundle.json (default: creation time in Unix seconds).
    #[arg(long)]
    pub serial: Option<u64>,
    /// Creation time (RFC 3339), for reproducible builds and tests.
    #[arg(long, hide = true)]
    pub created_at: Option<String>,
    /// Bundle file to write (replaced atomically).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The bundle file.
    pub bundle: PathBuf,
    /// OpenSSH allowed_signers file naming the keys trusted to sign bundles.
    #[arg(long, value_name = "ALLOWED_SIGNERS")]
    pub trust: PathBuf,
    /// Trust only allowed_signers lines for this principal, as `ssh-keygen -Y verify -I` does
    /// (such a line then needs no namespaces= option); repeatable. Without it, only lines whose
    /// namespaces= lists hapki-bundle are trusted.
    #[arg(long, value_name = "PRINCIPAL")]
    pub principal: Vec<String>,
    /// age identity file or SSH private key that decrypts the bundle; repeatable.
    #[arg(long, value_name = "FILE")]
    pub decrypt_key: Vec<PathBuf>,
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
    /// Verify as of this time (RFC 3339) instead of now.
    #[arg(long, hide = true)]
    pub now: Option<String>,
}

fn parse_time(flag: &str, s: &str) -> anyhow::Result<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).map_err(|_| {
        usage_error(format!("{flag} {s:?}: expected RFC 3339, e.g. 2025-01-31T12:00:00Z"))
    })
}

fn fmt_time(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

pub fn keygen(args: KeygenArgs) -> anyhow::Result<u8> {
    let out = bundle::keygen(&args.out, &args.principal, &args.comment).categorized()?;
    println!("private key: {} (mode 0600)", out.private_path.display());
    println!("public key:  {}", out.public_path.display());
    println!("fingerprint: {}", out.fingerprint);
    println!();
    println!("allowed_signers line (for --trust files on every machine that verifies):");
    println!("{}", out.allowed_signers_line);
    Ok(0)
}

pub fn bundle(args: BundleArgs) -> anyhow::Result<u8> {
    let protection = protection(&args)?;
    // --registry: image archives become registry-only, each with a pull index (the files it
    // writes live in `registry_work` until the bundle is written).
    let registry_work = tempfile::tempdir()?;
    let artifacts = load_artifacts(&args, registry_work.path())?;
    let created_at = match &args.created_at {
        Some(s) => parse_time("--created-at", s)?,
        None => OffsetDateTime::now_utc(),
    };
    let key = signing_key(&args.sign_key)?;
    let (files, sources) = read_sources(&args)?;
    let opts = bundle::CreateOptions {
        cluster: args.cluster.clone(),
        created_at,
        valid_for: args.valid_for.to_time(),
        serial: args.serial,
        source: sources.join(" "),
    };
    let manifest =
        bundle::create(files.as_deref(), &artifacts, &key, &opts, &protection, &args.out)
            .categorized()?;
    let encrypted = matches!(protection, Protection::Encrypt(_));
    print_bundle(&args, &manifest, encrypted)?;
    Ok(0)
}

/// The bundle signing key at `path`; its passphrase from the environment first (scripts, CI),
/// then the terminal.
pub(super) fn signing_key(path: &std::path::Path) -> anyhow::Result<ssh_key::PrivateKey> {
    let passphrase =
        || std::env::var(SIGN_PASSPHRASE_ENV).ok().or_else(|| super::ssh::prompt_passphrase(path));
    bundle::load_signing_key(path, &passphrase).categorized()
}

/// CA private keys always travel encrypted unless explicitly told otherwise; an
/// artifacts-only bundle holds nothing secret (and the spec is what the operator chose).
fn protection(args: &BundleArgs) -> anyhow::Result<Protection> {
    let artifacts_only = args.pki_dir.is_none()
        && args.from.is_none()
        && args.inventory.is_none()
        && args.recipients.is_empty();
    pki_protection(&args.recipients, args.insecure_plaintext || artifacts_only)
}

/// A bundle holding CA keys: encrypted to `recipients`, or plain only when asked.
pub(super) fn pki_protection(recipients: &[String], plaintext: bool) -> anyhow::Result<Protection> {
    if plaintext {
        Ok(Protection::InsecurePlaintext)
    } else if recipients.is_empty() {
        Err(usage_error(
            "the bundle holds CA private keys: give --recipient age1…|ssh-…|@FILE (or --insecure-plaintext)",
        ))
    } else {
        Ok(Protection::Encrypt(Recipients::parse(recipients).categorized()?))
    }
}

/// The `--artifacts` spec's files, made registry-only with `--registry` (pull indexes
/// written into `work`).
fn load_artifacts(
    args: &BundleArgs,
    work: &std::path::Path,
) -> anyhow::Result<Vec<hapki::artifacts::Artifact>> {
    let artifacts = match &args.artifacts {
        Some(spec) => hapki::artifacts::load(spec).categorized()?,
        None => Vec::new(),
    };
    Ok(match (&args.registry, &args.registry_ca) {
        (Some(reg), Some(ca)) => {
            hapki::registry::for_registry(artifacts, reg, ca, work).categorized()?
        }
        _ => artifacts,
    })
}

/// The PKI files (none for an artifacts-only bundle) and the `source` recorded in bundle.json.
fn read_sources(args: &BundleArgs) -> anyhow::Result<(Option<Vec<bundle::PkiFile>>, Vec<String>)> {
    let with_pki = args.pki_dir.is_some() || args.from.is_some() || args.inventory.is_some();
    let (files, mut sources) = match &args.pki_dir {
        Some(dir) => {
            let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
            (Some(read_pki_dir(dir)?), vec![format!("local:{}", abs.display())])
        }
        None if with_pki => {
            let (f, s) = read_from_node(args)?;
            (Some(f), vec![s])
        }
        None => (None, Vec::new()),
    };
    if let Some(s) = &args.artifacts {
        let abs = std::path::absolute(s).unwrap_or_else(|_| s.clone());
        sources.push(format!("artifacts:{}", abs.display()));
    }
    Ok((files, sources))
}

fn print_bundle(
    args: &BundleArgs,
    manifest: &bundle::Manifest,
    encrypted: bool,
) -> anyhow::Result<()> {
    match args.output {
        Output::Json => print_json(&serde_json::json!({
            "ok": true,
            "out": args.out,
            "encrypted": encrypted,
            "signer": manifest.signer,
            "cluster": manifest.cluster,
            "serial": manifest.serial,
            "created_at": fmt_time(manifest.created_at),
            "expires_at": fmt_time(manifest.expires_at),
            "discovery_token_ca_cert_hash": manifest.discovery_token_ca_cert_hash,
            "files": manifest.files,
            "artifacts": manifest.artifacts,
        }))?,
        Output::Table => {
            if !encrypted && !manifest.files.is_empty() {
                eprintln!(
                    "hapki: warning: {} is NOT encrypted: it holds CA private keys in clear",
                    args.out.display()
                );
            }
            println!(
                "wrote {} ({})",
                args.out.display(),
                if encrypted { "age-encrypted" } else { "PLAINTEXT" }
            );
            println!("cluster:   {}", manifest.cluster);
            println!("serial:    {}", manifest.serial);
            println!("signer:    {}", manifest.signer);
            println!("expires:   {}", fmt_time(manifest.expires_at));
            if !manifest.files.is_empty() {
                println!("discovery: {}", manifest.discovery_token_ca_cert_hash);
            }
            if !manifest.artifacts.is_empty() {
                let total: u64 = manifest.artifacts.iter().map(|a| a.size).sum();
                println!("artifacts: {} files, {total} bytes", manifest.artifacts.len());
            }
        }
    }
    Ok(())
}

/// `--from NODE` or `--inventory`: the eight files of the first master, over SSH.
fn read_from_node(args: &BundleArgs) -> anyhow::Result<(Vec<bundle::PkiFile>, String)> {
    let nodes =
        super::nodes::NodeArgs { nodes: args.from.clone(), inventory: args.inventory.clone() };
    let (_, selected) = nodes.all(&args.ssh)?;
    let first =
        selected.into_iter().find(|s| s.role == hapki::inventory::Role::ControlPlane).ok_or_else(
            || usage_error("the inventory has no control-plane node to read the PKI from"),
        )?;
    let transport = args.ssh.transport()?;
    let mut session = transport.connect(&first.target).categorized()?;
    let paths = hapki::node::NodePaths::default();
    let files = hapki::node::read_shared_files(session.as_mut(), &paths)
        .map_err(|e| anyhow::anyhow!("{}: {e}", first.target.name))?;
    let user = first.target.user.as_deref().map(|u| format!("{u}@")).unwrap_or_default();
    Ok((files, format!("ssh:{user}{}:{}", first.target.host, paths.pki_dir())))
}

/// The eight files of `--pki-dir` (a missing directory is a usage error, exit 2; a missing file
/// is reported by the coherence check in `bundle::create`).
fn read_pki_dir(dir: &std::path::Path) -> anyhow::Result<Vec<bundle::PkiFile>> {
    hapki::pki::read_dir(dir).categorized()
}

pub fn verify(args: VerifyArgs) -> anyhow::Result<u8> {
    let (trust, ids) = super::nodes::load_trust(&args.trust, &args.principal, &args.decrypt_key)?;
    let now = match &args.now {
        Some(s) => parse_time("--now", s)?,
        None => OffsetDateTime::now_utc(),
    };
    let opts = bundle::VerifyOptions { now, ..Default::default() };
    let result = bundle::open_and_verify(&args.bundle, &trust, &ids, &opts);
    let verified = match (result, args.output) {
        (Ok(v), _) => v,
        (Err(e), Output::Json) if !matches!(e, BundleError::Usage(_)) => {
            // Scripts get the verdict on stdout as well as the exit code.
            print_json(&serde_json::json!({ "ok": false, "error": e.to_string() }))?;
            return Err(e).categorized();
        }
        (Err(e), _) => return Err(e).categorized(),
    };
    match args.output {
        Output::Json => print_json(&verified.report())?,
        Output::Table => {
            let m = &verified.manifest;
            println!("OK: {} verified", args.bundle.display());
            println!("signer:    {} ({})", verified.signer.fingerprint, verified.signer.principal);
            println!("cluster:   {}", m.cluster);
            println!("serial:    {}", m.serial);
            println!("created:   {}", fmt_time(m.created_at));
            println!("expires:   {}", fmt_time(m.expires_at));
            println!("source:    {}", m.source);
            println!("encrypted: {}", if verified.encrypted { "yes (age)" } else { "NO" });
            if verified.has_pki() {
                println!("discovery: {}", m.discovery_token_ca_cert_hash);
            }
            println!();
            if !m.artifacts.is_empty() {
                println!(
                    "{:<16} {:<5} {:<24} {:>12}  {:<16} DEST",
                    "ARTIFACT", "MODE", "ROLES", "SIZE", "AFTER"
                );
                for a in &m.artifacts {
                    let roles: Vec<String> = a.roles.iter().map(|r| r.to_string()).collect();
                    println!(
                        "{:<16} {:04o}  {:<24} {:>12}  {:<16} {}",
                        a.name,
                        a.mode,
                        roles.join(","),
                        a.size,
                        a.after.map(|x| x.as_str()).unwrap_or("-"),
                        a.dest
                    );
                }
                if !verified.has_pki() {
                    return Ok(0);
                }
                println!();
            }
            println!(
                "{:<20} {:<5} {:<12} {:<20} SPKI SHA-256",
                "FILE", "MODE", "KIND", "NOT AFTER"
            );
            for f in &m.files {
                let kind = match f.kind {
                    hapki::pki::FileKind::Certificate => "certificate",
                    hapki::pki::FileKind::PrivateKey => "private_key",
                    hapki::pki::FileKind::PublicKey => "public_key",
                };
                let not_after = f.not_after.map(fmt_time).unwrap_or_else(|| "-".into());
                println!(
                    "{:<20} {:04o}  {:<12} {:<20} {}",
                    f.name,
                    f.mode,
                    kind,
                    not_after,
                    f.spki_sha256.as_deref().unwrap_or("-")
                );
            }
        }
    }
    Ok(0)
}
