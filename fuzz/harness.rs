//! What each fuzz target does with one input, shared by the targets (`fuzz_targets/*.rs`) and by
//! the regression replay that plain `cargo test` runs (`tests/fuzz_regressions.rs`), so the two
//! can never drift apart. A change to the reader's API is made here once.
//!
//! Both feed the input to the strict bundle reader with a signature callback that accepts
//! everything, so inputs reach the layout, hash and trailer checks that a real signature would
//! otherwise guard. Errors are expected; a panic, a hang or unbounded memory is a bug.
#![allow(dead_code)] // each target uses one of the functions

use hapki::bundle::{reader, Identities, Signer};

fn accept_any(_: &[u8], _: &[u8]) -> Result<Signer, hapki::bundle::BundleError> {
    Ok(Signer { fingerprint: "SHA256:fuzz".into(), principal: "fuzz".into() })
}

/// The whole reader: age sniffing → gzip → tar → entry checks.
pub fn bundle_reader(data: &[u8]) {
    let ids = Identities::default();
    let _ = reader::read_bundle(data, &ids, &mut accept_any);
}

/// The tar layer alone (no gzip CRC in the way).
pub fn bundle_tar(data: &[u8]) {
    let mut input = data;
    let _ = reader::read_tar(&mut input, &mut accept_any);
}
