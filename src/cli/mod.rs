//! Command-line front end: clap definitions, printing and the mapping from errors to exit codes.
//! Each command family lives in its own file; this file only wires them together.

mod audit;
mod bundle;
mod config;
mod meta;
mod nodes;
mod pki;
mod preflight;
mod push;
mod renew;
mod rotate;
mod ssh;
mod trust;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use hapki::error::{Categorized, Category};

/// Build a highly available kubeadm cluster without `kubeadm init --upload-certs`.
///
/// hapki bundles kubeadm's eight shared PKI files into a signed (and encrypted) archive,
/// verifies it anywhere offline, pushes it atomically over SSH to every other control-plane
/// node, joins the nodes without a certificate key, and audits the certificates on every node.
///
/// Exit codes: 0 success, 1 unexpected error, 2 usage error, 3 verification failed,
/// 4 SSH host key unknown or changed, 5 some nodes failed, 6 audit or preflight found problems.
#[derive(Debug, Parser)]
#[command(name = "hapki", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, check and inspect a kubeadm shared PKI on local disk.
    #[command(subcommand)]
    Pki(pki::PkiCommand),
    /// Make an Ed25519 OpenSSH key pair for signing bundles (FILE and FILE.pub).
    Keygen(bundle::KeygenArgs),
    /// Pack the eight shared PKI files into a signed, encrypted bundle.
    Bundle(bundle::BundleArgs),
    /// Check a bundle offline: signature, hashes, layout, PKI coherence and expiry.
    Verify(bundle::VerifyArgs),
    /// Install a verified bundle on every other control-plane node over SSH, atomically.
    Push(push::PushArgs),
    /// Check every node for what would make a join fail, before any join (read-only).
    Preflight(preflight::PreflightArgs),
    /// kubeadm join without --certificate-key: control planes one at a time, then workers.
    Join(preflight::JoinArgs),
    /// Compare the certificates on every node side by side: drift, modes, issuers, expiry.
    Audit(audit::AuditArgs),
    /// Check kubeadm configuration files for an air-gapped HA cluster.
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Print shell completions for SHELL to stdout.
    Completions(meta::CompletionsArgs),
    /// Print hapki's man page (roff) to stdout.
    Man(meta::ManArgs),
    /// Pin the bundle signers' keys on the nodes themselves (/etc/hapki/allowed_signers).
    #[command(subcommand)]
    Trust(trust::TrustCommand),
    /// Renew kubeadm's leaf certificates on every control plane, one at a time, checked on the wire.
    Renew(renew::RenewArgs),
    /// Rotate the CAs and the service-account key in phases, one per run, resumable.
    Rotate(rotate::RotateArgs),
}

/// How a report is printed: a table for people or one JSON object for scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    #[default]
    Table,
    Json,
}

/// An error that carries the exit-code category of the library error it came from.
#[derive(Debug, thiserror::Error)]
// The wrapped error is displayed, not exposed as `source()`: anyhow's `{:#}` would otherwise
// print the same message twice.
#[error("{inner:#}")]
pub struct CategorizedError {
    pub category: Category,
    inner: anyhow::Error,
}

impl CategorizedError {
    pub fn new(category: Category, source: impl Into<anyhow::Error>) -> Self {
        CategorizedError { category, inner: source.into() }
    }
}

/// Attach a library error's exit-code category while converting it to `anyhow::Error`.
pub trait CategorizeExt<T> {
    fn categorized(self) -> anyhow::Result<T>;
}

impl<T, E> CategorizeExt<T> for Result<T, E>
where
    E: Categorized + std::error::Error + Send + Sync + 'static,
{
    fn categorized(self) -> anyhow::Result<T> {
        self.map_err(|e| {
            let category = e.category();
            anyhow::Error::new(CategorizedError::new(category, e))
        })
    }
}

/// A usage error (exit 2) with a message that says what to do.
pub fn usage_error(msg: impl std::fmt::Display) -> anyhow::Error {
    anyhow::Error::new(CategorizedError::new(Category::Usage, anyhow::anyhow!("{msg}")))
}

/// Serialize `value` as one JSON object on stdout.
pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    let s = serde_json::to_string_pretty(value)?;
    println!("{s}");
    Ok(())
}

/// Whether stderr is a terminal (progress bars and colours only then).
pub fn stderr_is_tty() -> bool {
    std::io::stderr().is_terminal()
}

fn category_of(err: &anyhow::Error) -> Category {
    err.chain()
        .find_map(|e| e.downcast_ref::<CategorizedError>().map(|c| c.category))
        .unwrap_or(Category::Unexpected)
}

/// Runs the command; `Ok(code)` lets a command that printed a report exit non-zero (e.g. 3 or 6).
fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Pki(cmd) => pki::run(cmd),
        Command::Keygen(args) => bundle::keygen(args),
        Command::Bundle(args) => bundle::bundle(args),
        Command::Verify(args) => bundle::verify(args),
        Command::Push(args) => push::run(args),
        Command::Preflight(args) => preflight::preflight(args),
        Command::Join(args) => preflight::join(args),
        Command::Audit(args) => audit::run(args),
        Command::Config(cmd) => config::run(cmd),
        Command::Completions(args) => meta::completions(args),
        Command::Man(args) => meta::man(args),
        Command::Trust(cmd) => trust::run(cmd),
        Command::Renew(args) => renew::run(args),
        Command::Rotate(args) => rotate::run(args),
    }
}

pub fn main() -> ExitCode {
    // Printing into a closed pipe (`hapki audit --output json | head`) should end the process
    // quietly, as it does for other command-line tools, not panic inside println!.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            // One line: the error and its causes, joined by ": ".
            eprintln!("hapki: error: {err:#}");
            ExitCode::from(category_of(&err).exit_code())
        }
    }
}
