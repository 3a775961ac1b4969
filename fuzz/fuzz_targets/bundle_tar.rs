//! Fuzzes the tar layer of the bundle reader directly (no gzip CRC in the way); see
//! `fuzz/harness.rs`.
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::bundle_tar(data));
