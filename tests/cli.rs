//! `hapki man` and `hapki completions SHELL`: what the README promises ("`hapki man` prints the
//! man page and `hapki completions SHELL` the shell completions"), checked with independent
//! tools: groff renders the man page, bash loads the completion script and completes with it.

#[path = "support/cli.rs"]
mod cli;

use std::process::{Command, Stdio};

use cli::{hapki, text};

/// The commands of the public interface, written out (not taken from the clap definition).
const COMMANDS: [&str; 8] =
    ["pki", "keygen", "bundle", "verify", "push", "preflight", "join", "audit"];

fn stdout_of(args: &[&str]) -> String {
    let out = hapki().args(args).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "hapki {args:?}: {}", text(&out));
    assert!(out.stderr.is_empty(), "hapki {args:?} wrote to stderr: {}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn man_page_renders_with_groff_and_names_every_command() {
    let page = stdout_of(&["man"]);
    assert!(
        page.starts_with(".ie") || page.starts_with(".TH"),
        "roff: {}",
        &page[..80.min(page.len())]
    );
    assert!(page.contains(".TH hapki 1"), "a section-1 page titled hapki");
    // groff (not clap) renders it; -ww turns on every warning, -z discards the output.
    let warnings = groff(&page, &["-ww", "-z"]);
    assert!(warnings.is_empty(), "groff warns: {warnings}");
    let rendered = groff(&page, &["-P-c", "-P-b", "-P-u"]);
    for section in ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "SUBCOMMANDS"] {
        assert!(rendered.lines().any(|l| l == section), "no {section} section:\n{rendered}");
    }
    let flat = rendered.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(flat.contains("hapki - Build a highly available kubeadm cluster"), "{rendered}");
    for c in COMMANDS {
        assert!(rendered.contains(&format!("hapki-{c}(1)")), "the page lists {c}");
    }
    assert!(flat.contains("Exit codes: 0 success"), "the exit codes are in the page");
}

/// Renders roff text with groff's man macros as plain UTF-8 text (`-k`: the help texts hold
/// UTF-8, e.g. '…'); with `-z`, returns the warnings instead.
fn groff(page: &str, extra: &[&str]) -> String {
    let mut child = Command::new("groff")
        .args(["-k", "-man", "-Tutf8"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("groff (Debian: groff-base)");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(page.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "groff failed: {}", String::from_utf8_lossy(&out.stderr));
    if extra.contains(&"-z") {
        String::from_utf8_lossy(&out.stderr).into_owned()
    } else {
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Loads the bash completion script into bash and asks it to complete `words`, the last one
/// being completed; returns COMPREPLY.
fn bash_complete(script: &str, words: &[&str]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hapki.bash");
    std::fs::write(&path, script).unwrap();
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let cword = words.len() - 1;
    let prev = words[cword.saturating_sub(1)];
    let prog = format!(
        "set -e; source '{}'; COMP_WORDS=({}); COMP_CWORD={cword}; COMP_LINE='{}'; \
         COMP_POINT=${{#COMP_LINE}}; _hapki hapki '{}' '{prev}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        path.display(),
        quoted.join(" "),
        words.join(" "),
        words[cword],
    );
    let out = Command::new("bash").args(["--norc", "-c", &prog]).output().unwrap();
    assert!(out.status.success(), "bash: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_string).collect()
}

#[test]
fn bash_completion_loads_and_completes_commands_and_flags() {
    let script = stdout_of(&["completions", "bash"]);
    let syntax = Command::new("bash").args(["-n", "-c", &script]).output().unwrap();
    assert!(syntax.status.success(), "bash -n: {}", String::from_utf8_lossy(&syntax.stderr));
    assert_eq!(bash_complete(&script, &["hapki", "pu"]), ["push"]);
    assert_eq!(bash_complete(&script, &["hapki", "pre"]), ["preflight"]);
    assert_eq!(bash_complete(&script, &["hapki", "push", "--inv"]), ["--inventory"]);
    let all = bash_complete(&script, &["hapki", ""]);
    for c in COMMANDS {
        assert!(all.iter().any(|w| w == c), "completing 'hapki ' offers {c}: {all:?}");
    }
}

#[test]
fn zsh_and_fish_completions_are_generated_for_hapki() {
    let zsh = stdout_of(&["completions", "zsh"]);
    assert!(zsh.starts_with("#compdef hapki\n"), "{}", &zsh[..40.min(zsh.len())]);
    assert!(zsh.contains("_hapki") && zsh.contains("'--inventory=["), "zsh: subcommand flags");
    let fish = stdout_of(&["completions", "fish"]);
    assert!(fish.contains("complete -c hapki"), "fish completes hapki");
    for c in COMMANDS {
        assert!(fish.contains(&format!("-a \"{c}\"")), "fish offers {c}");
    }
    assert!(fish.contains("-l inventory"), "fish completes --inventory");
}

#[test]
fn an_unknown_shell_is_a_usage_error_naming_the_shells() {
    let out = hapki().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid value 'tcsh'") && err.contains("bash"), "{err}");
    assert!(out.stdout.is_empty());
}

/// Every `hapki-…(1)` page a man page refers to is one `hapki man …` prints, recursively
/// (`hapki man pki check` for hapki-pki-check(1)).
#[test]
fn every_page_the_man_pages_refer_to_exists() {
    let mut todo: Vec<Vec<String>> = vec![vec![]];
    let mut seen = 0;
    while let Some(words) = todo.pop() {
        let mut args = vec!["man".to_string()];
        args.extend(words.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let page = stdout_of(&args);
        let warnings = groff(&page, &["-ww", "-z"]);
        assert!(warnings.is_empty(), "hapki {args:?}: groff warns: {warnings}");
        let rendered = groff(&page, &["-P-c", "-P-b", "-P-u"]);
        let flat = rendered.split_whitespace().collect::<Vec<_>>().join(" ");
        let title = std::iter::once("hapki").chain(words.iter().map(String::as_str));
        let title = title.collect::<Vec<_>>().join("-");
        assert!(flat.contains(&format!("NAME {title} - ")), "{title}: {flat}");
        seen += 1;
        for (i, _) in flat.match_indices(&format!("{title}-")) {
            let rest = &flat[i + title.len() + 1..];
            let Some(sub) = rest.split("(1)").next() else { continue };
            if sub.contains(' ') || sub == "help" || !rest.starts_with(&format!("{sub}(1)")) {
                continue;
            }
            let mut next = words.clone();
            next.push(sub.to_string());
            todo.push(next);
        }
    }
    // hapki, its 11 commands and pki's three (help excluded), at least.
    assert!(seen >= 14, "{seen} pages");

    let out = hapki().args(["man", "pki", "nope"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no manual page for hapki-pki nope") && err.contains("check"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}
