//! Fuzzes the tar layer of the bundle reader directly (no gzip CRC in the way), with a signature
//! callback that accepts everything.
#![no_main]

use hapki::bundle::{reader, Signer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut accept = |_: &[u8], _: &[u8]| {
        Ok(Signer { fingerprint: "SHA256:fuzz".into(), principal: "fuzz".into() })
    };
    let mut input = data;
    let _ = reader::read_tar(&mut input, &mut accept);
});
