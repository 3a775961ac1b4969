//! `hapki pki init | check | inspect`.

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum PkiCommand {}

pub fn run(cmd: PkiCommand) -> anyhow::Result<u8> {
    match cmd {}
}
