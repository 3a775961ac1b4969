//! Fuzzes the strict bundle reader (age sniffing → gzip → tar → entry checks); see
//! `fuzz/harness.rs`. Any panic, or memory past libFuzzer's limits, is a bug.
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::bundle_reader(data));
