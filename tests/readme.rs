//! The README's first screen promises two commands for a fresh machine; CI must run exactly
//! the test one. This keeps the three (README, .ci/run, scripts/demo) from drifting apart.

use std::path::Path;

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap()
}

/// The commands in the README's first fenced block, without comments.
fn first_block_commands() -> Vec<String> {
    let readme = read("README.md");
    let start = readme.find("```sh\n").expect("a ```sh block in README.md") + 6;
    let end = start + readme[start..].find("```").expect("the block ends");
    readme[start..end]
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn ci_runs_exactly_the_readme_test_command() {
    let cmds = first_block_commands();
    assert_eq!(cmds.len(), 2, "the first screen gives two commands: {cmds:?}");
    assert!(Path::new(env!("CARGO_MANIFEST_DIR")).join(&cmds[0]).exists(), "{} exists", cmds[0]);
    let ci = read(".ci/run");
    let last = ci.lines().rev().find(|l| !l.trim().is_empty() && !l.starts_with('#')).unwrap();
    assert_eq!(last.trim(), cmds[1], ".ci/run must end with the README's test command");
}
