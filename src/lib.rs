//! hapki — distribute kubeadm's shared PKI to the control-plane nodes of a highly available
//! cluster without `kubeadm init --upload-certs`.
//!
//! The library does all the work and never prints, exits or reads the terminal; the `hapki`
//! binary parses arguments, prints and maps [`error::Category`] to exit codes.
//!
//! Data flows one way, and the types say where it is:
//!
//! ```text
//! pki files ──load/check──▶ pki::SharedPki ──pack+sign(+encrypt)──▶ bundle file
//! bundle file ──read (strict, streaming)──▶ verify(trust) ──▶ bundle::VerifiedBundle
//! VerifiedBundle + node facts ──plan──▶ per node: install | unchanged | refuse(reason)
//! Inventory ──▶ nodes ──Transport──▶ preflight facts / audit facts ──compare──▶ problems
//! ```

pub mod artifacts;
pub mod audit;
pub mod bundle;
pub mod cluster;
pub mod duration;
pub mod error;
pub mod finding;
pub mod inventory;
pub mod join;
pub mod kubeadm_config;
pub mod node;
pub mod pki;
pub mod preflight;
pub mod push;
pub mod registry;
pub mod renew;
pub mod rotate;
pub mod transport;
