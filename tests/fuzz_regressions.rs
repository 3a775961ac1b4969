//! Replays every committed fuzz input (`fuzz/regressions/TARGET/*`: every crash a fuzz run ever
//! found, and hand-made hostile inputs) through the same harness the fuzz targets use
//! (`fuzz/harness.rs`), on stable Rust without cargo-fuzz: no input may panic, and none may take
//! longer than a generous time budget (libFuzzer reports slow inputs as findings too).

#[path = "../fuzz/harness.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Per input, in a debug build on a loaded 2-core machine.
const BUDGET: Duration = Duration::from_secs(20);

fn inputs(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn replay(target: &str, run: fn(&[u8]), at_least: usize) {
    let files = inputs(target);
    assert!(
        files.len() >= at_least,
        "{target}: {} inputs, expected at least {at_least}",
        files.len()
    );
    let mut failed = Vec::new();
    for f in &files {
        let data = std::fs::read(f).unwrap();
        let start = Instant::now();
        let outcome = std::panic::catch_unwind(|| run(&data));
        let took = start.elapsed();
        match outcome {
            Err(_) => failed.push(format!("{}: panicked", f.display())),
            Ok(()) if took > BUDGET => failed.push(format!("{}: took {took:?}", f.display())),
            Ok(()) => {}
        }
    }
    assert!(failed.is_empty(), "{target}:\n{}", failed.join("\n"));
}

#[test]
fn every_bundle_reader_regression_input_is_refused_without_a_panic() {
    replay("bundle_reader", harness::bundle_reader, 22);
}

#[test]
fn every_bundle_tar_regression_input_is_refused_without_a_panic() {
    replay("bundle_tar", harness::bundle_tar, 11);
}

/// Negative control: the replay does fail when the harness panics on a committed input.
#[test]
#[should_panic(expected = "panicked")]
fn a_panicking_harness_fails_the_replay() {
    replay("bundle_tar", |data| assert!(!data.is_empty(), "the empty input"), 1);
}
