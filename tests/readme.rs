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

/// Every repository path the README names (`scripts/…`, `src/…`, `tests/…`, `.ci/…`,
/// `bundles/…`, `fuzz/…`) as a word of its own, with trailing sentence punctuation removed.
fn repo_paths(text: &str) -> Vec<String> {
    const PREFIXES: [&str; 6] = ["scripts/", "src/", "tests/", ".ci/", "bundles/", "fuzz/"];
    let path_char = |c: char| c.is_ascii_alphanumeric() || "_./-".contains(c);
    let mut out = Vec::new();
    for (i, _) in text.char_indices() {
        let before = text[..i].chars().next_back();
        if before.is_some_and(|b| path_char(b) || b == '~') {
            continue;
        }
        let rest = &text[i..];
        if PREFIXES.iter().any(|p| rest.starts_with(p)) {
            let end = rest.find(|c: char| !path_char(c)).unwrap_or(rest.len());
            out.push(rest[..end].trim_end_matches(['.', ',']).to_string());
        }
    }
    out
}

/// GitHub's anchor for a heading: lower case, spaces to '-', other punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn every_path_and_section_the_readme_names_exists() {
    let readme = read("README.md");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let paths = repo_paths(&readme);
    assert!(paths.len() >= 10, "the README names the repository's files: {paths:?}");
    let missing: Vec<&String> = paths.iter().filter(|p| !root.join(p).exists()).collect();
    assert!(missing.is_empty(), "README.md names paths that do not exist: {missing:?}");

    let mut in_code = false;
    let mut anchors = Vec::new();
    for line in readme.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        } else if !in_code && line.starts_with('#') {
            anchors.push(anchor(line.trim_start_matches('#')));
        }
    }
    let links: Vec<&str> =
        readme.split("](#").skip(1).filter_map(|s| s.split(')').next()).collect();
    let dangling: Vec<&&str> = links.iter().filter(|l| !anchors.iter().any(|a| a == *l)).collect();
    assert!(dangling.is_empty(), "README.md links to sections that do not exist: {dangling:?}");
    // Prose pointers ("see `interface` below") must name a section too.
    for (i, _) in readme.match_indices("see `") {
        let name = readme[i + 5..].split('`').next().unwrap();
        let after = &readme[i + 5 + name.len()..];
        if after.starts_with("` below") || after.starts_with("` above") {
            assert!(
                anchors.contains(&anchor(name)),
                "README.md points at a missing section {name:?}"
            );
        }
    }
}

#[test]
fn the_path_and_anchor_scanners_work() {
    assert_eq!(
        repo_paths("see `scripts/demo`, src/cli/ and tests/x.rs. Not /usr/src/y or a.ci/z"),
        ["scripts/demo", "src/cli/", "tests/x.rs"]
    );
    assert_eq!(anchor(" What `push` does on each node"), "what-push-does-on-each-node");
}

/// The crate table lists exactly the crates Cargo.toml depends on.
#[test]
fn the_crate_table_lists_every_dependency() {
    let readme = read("README.md");
    let start = readme.find("## Crates").expect("a Crates section");
    let section = &readme[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
    let mut listed: Vec<String> = section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .flat_map(|l| {
            let first = l.split('|').nth(1).unwrap_or("");
            first.split('`').skip(1).step_by(2).map(str::to_string).collect::<Vec<_>>()
        })
        .collect();
    listed.sort();
    let cargo: toml::Value = toml::from_str(&read("Cargo.toml")).unwrap();
    let mut deps: Vec<String> = cargo["dependencies"].as_table().unwrap().keys().cloned().collect();
    deps.sort();
    assert_eq!(listed, deps, "README.md's crate table against Cargo.toml [dependencies]");
}
