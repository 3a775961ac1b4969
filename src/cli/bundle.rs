//! `hapki keygen`, `hapki bundle`, `hapki verify`.

use clap::Args;

#[derive(Debug, Args)]
pub struct KeygenArgs {}
#[derive(Debug, Args)]
pub struct BundleArgs {}
#[derive(Debug, Args)]
pub struct VerifyArgs {}

pub fn keygen(_args: KeygenArgs) -> anyhow::Result<u8> {
    Err(anyhow::anyhow!("not implemented yet"))
}
pub fn bundle(_args: BundleArgs) -> anyhow::Result<u8> {
    Err(anyhow::anyhow!("not implemented yet"))
}
pub fn verify(_args: VerifyArgs) -> anyhow::Result<u8> {
    Err(anyhow::anyhow!("not implemented yet"))
}
