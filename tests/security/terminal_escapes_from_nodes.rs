//! Attack: a node writes terminal control sequences where hapki shows its text: ESC sequences
//! that erase the line and move the cursor, `\r` and backspaces that overwrite the "failed"
//! line with a fake "installed", an OSC that retitles the terminal, a C1 CSI. Before the fix
//! its stderr tail was printed raw. hapki's stdout and stderr must carry no control byte but
//! `\n` (no colours are printed when they are not a terminal), in tables, JSON and messages;
//! the node's text is still shown, escaped. Both transports, `push` and `audit`.

use std::os::unix::fs::PermissionsExt;
use std::process::Output;

use crate::fixture::{hapki, text, Fixture};
use crate::testbed::Testbed;

const HOSTILE: &str = "kubemaster-3";

/// A `sh` first on the node's PATH (every remote command is `sh -c …`) that writes the attack
/// to stderr and fails.
fn hostile_sh(tb: &Testbed) -> std::path::PathBuf {
    let p = tb.node(HOSTILE).dir.join("bin/sh");
    let body = r#"#!/bin/sh
printf 'hapki: \033[2K\r\033[1A%s installed\b\b\b\033]0;pwned\007\302\23331m\342\200\256x\n' kubemaster-3 >&2
exit 1
"#;
    std::fs::write(&p, body).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// The first control character (other than `\n`, C1 included) or bidi override in `bytes`.
fn control_char(bytes: &[u8]) -> Option<(usize, char)> {
    String::from_utf8_lossy(bytes)
        .char_indices()
        .find(|&(_, c)| (c.is_control() && c != '\n') || c == '\u{202e}')
}

fn assert_clean(out: &Output, label: &str) {
    for (name, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        if let Some((i, c)) = control_char(bytes) {
            let text = String::from_utf8_lossy(bytes);
            panic!("{label}: control character {c:?} at byte {i} of {name}: {text:?}");
        }
    }
    let all = text(out);
    assert!(all.contains(HOSTILE), "{label}: the node is not named: {all}");
    assert!(all.contains("\\x1b[2K"), "{label}: the node's text is not shown escaped: {all}");
}

#[test]
fn control_characters_from_a_node_reach_no_output_raw() {
    let Some(tb) = Testbed::up(3, 0) else { return };
    let fx = Fixture::new();
    let bundle = fx.bundle();
    let _sh = hostile_sh(&tb);
    let inv = tb.inventory();
    let inv = inv.to_str().unwrap();
    for t in ["builtin", "openssh"] {
        for output in ["table", "json"] {
            let out = fx.with_bundle(
                "push",
                &bundle,
                &["--inventory", inv, "--transport", t, "--output", output],
            );
            assert_ne!(out.status.code(), Some(0), "{}", text(&out));
            assert_clean(&out, &format!("push {t} {output}"));
            let out = hapki()
                .args(["audit", "--inventory", inv, "--transport", t, "--output", output])
                .output()
                .unwrap();
            assert_clean(&out, &format!("audit {t} {output}"));
        }
    }
}
