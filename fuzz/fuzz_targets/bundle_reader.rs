//! Fuzzes the strict bundle reader (age sniffing → gzip → tar → entry checks) with a signature
//! callback that accepts everything, so inputs reach the layout, hash and trailer checks that a
//! real signature would otherwise guard. Any panic, or memory past libFuzzer's RSS limit, is a bug.
#![no_main]

use hapki::bundle::{reader, Identities, Signer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let ids = Identities::default();
    let mut accept = |_: &[u8], _: &[u8]| {
        Ok(Signer { fingerprint: "SHA256:fuzz".into(), principal: "fuzz".into() })
    };
    let _ = reader::read_bundle(data, &ids, &mut accept);
});
