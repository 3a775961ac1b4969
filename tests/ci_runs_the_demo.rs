//! `scripts/demo` is run by CI (`.ci/run`), before the test command, so the walkthrough the
//! README shows cannot rot unnoticed.

use std::path::Path;

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap()
}

#[test]
fn ci_runs_scripts_demo_before_the_tests() {
    let ci = read(".ci/run");
    let steps: Vec<&str> =
        ci.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    let demo = steps.iter().position(|l| *l == "scripts/demo").expect(".ci/run runs scripts/demo");
    let test = steps.iter().rposition(|l| *l == "cargo test").expect(".ci/run runs cargo test");
    assert!(demo < test, "the demo runs before the tests: {steps:?}");
    // Not `--keep`, and not allowed to fail: .ci/run stops at the first failing step.
    assert!(ci.lines().next().is_some_and(|l| l.starts_with("#!/bin/sh")), "a shell script");
    assert!(steps.contains(&"set -eu"), "a failing demo must fail CI: {steps:?}");
    assert!(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/demo").exists());
}
