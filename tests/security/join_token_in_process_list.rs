//! Attack: read the bootstrap token from the process list. A non-root user on the joining node
//! loops over /proc/*/cmdline for the whole join, and so does a watcher on the operator's
//! machine, while `hapki join --transport openssh` runs (the system ssh gets the whole remote
//! command as an argument). Neither may ever see the token's secret; both must have seen the
//! join itself (kubeadm's `--config` argv on the node, the join script in the local ssh's argv),
//! or the scan proves nothing.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::fixture::text;
use crate::join_common::JoinCluster;

/// The operator's token: made here, registered on the first master before the watchers start.
const TOKEN: &str = "hpkiat.7q3x9m2k5v8w1z4r";
const SECRET: &str = "7q3x9m2k5v8w1z4r";

/// Every distinct argv element of every process, until the stop file appears (at most 180 s).
const WATCH: &str = r#"stop=$1
end=$(( $(date +%s) + 180 ))
while [ ! -e "$stop" ] && [ "$(date +%s)" -lt "$end" ]; do
    cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\0' '\n'
done | awk '!seen[$0]++'"#;

/// Scans this machine's /proc until `stop`: (argv elements holding the secret, whether a
/// local ssh carried the join script). Remote commands travel packed (gzip, base64: see
/// `transport::remote_command`), which hides nothing from a local user who decodes them: every
/// distinct ssh command line is also read unpacked, with the stock tools.
fn scan_local(stop: Arc<AtomicBool>) -> (Vec<String>, bool) {
    let mut leaks = Vec::new();
    let mut ssh_lines = std::collections::BTreeSet::new();
    while !stop.load(Ordering::Relaxed) {
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(raw) = std::fs::read(e.path().join("cmdline")) else { continue };
            let argv = String::from_utf8_lossy(&raw).replace('\0', " ");
            if argv.contains(SECRET) {
                leaks.push(argv.chars().take(300).collect());
            }
            if argv.starts_with("ssh ") {
                ssh_lines.insert(argv);
            }
        }
    }
    let mut saw_join = false;
    for line in &ssh_lines {
        // A script that fits goes as it is (in the line); a longer one packed.
        let script = unpacked(line).unwrap_or_else(|| line.clone());
        if script.contains(SECRET) {
            leaks.push(format!("(unpacked) {}", script.chars().take(300).collect::<String>()));
        }
        saw_join |= script.contains("kubeadm");
    }
    (leaks, saw_join)
}

/// The script a packed remote command carries (`printf %s BASE64 | base64 -d | gzip -dc`),
/// decoded by `base64` and `gzip` themselves.
fn unpacked(text: &str) -> Option<String> {
    let start = text.find("printf %s ")? + "printf %s ".len();
    let b64: String = text[start..].chars().take_while(|c| !c.is_whitespace()).collect();
    let out = Command::new("sh")
        .args(["-c", "printf %s \"$1\" | base64 -d | gzip -dc", "sh", &b64])
        .output()
        .ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn no_process_list_on_node_or_operator_machine_shows_the_join_token() {
    let Some(c) = JoinCluster::up() else { return };
    let created = c.tb.ssh("kubemaster-1", &format!("kubeadm token create {TOKEN} --ttl 1h"));
    assert!(created.status.success(), "{}", text(&created));

    let flags = tempfile::Builder::new().prefix("hapki-watch").tempdir().unwrap();
    std::fs::set_permissions(flags.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .unwrap();
    let stop = flags.path().join("stop");
    let mut watcher = Command::new(env!("CARGO_MANIFEST_DIR").to_owned() + "/scripts/testbed")
        .args(["ssh", "--dir"])
        .arg(&c.tb.dir)
        .args(["--user", "hapki-test", "kubemaster-2"])
        .arg(format!("sh -s {}", stop.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    watcher.stdin.take().unwrap().write_all(WATCH.as_bytes()).unwrap();
    let local_stop = Arc::new(AtomicBool::new(false));
    let local = {
        let s = local_stop.clone();
        std::thread::spawn(move || scan_local(s))
    };
    std::thread::sleep(Duration::from_secs(1));

    // The token as the help says to give it (the environment; old hapki reads it too).
    let started = Instant::now();
    let out = c
        .join()
        .args(["--transport", "openssh", "--run-dir"])
        .arg(c.fx.path("run"))
        .env("HAPKI_JOIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    std::fs::write(&stop, "").unwrap();
    local_stop.store(true, Ordering::Relaxed);
    let seen = watcher.wait_with_output().unwrap();
    let (local_leaks, local_saw_join) = local.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "join: {}", text(&out));
    assert!(started.elapsed() < Duration::from_secs(170), "the watcher's time ran out");

    let node_argv = String::from_utf8_lossy(&seen.stdout);
    assert!(
        node_argv.lines().any(|l| l.ends_with("/kubeadm"))
            && node_argv.lines().any(|l| l == "join"),
        "the node's watcher never saw kubeadm join run: the scan proves nothing\n{}\n{}",
        String::from_utf8_lossy(&seen.stderr),
        node_argv.chars().take(2000).collect::<String>()
    );
    assert!(local_saw_join, "the local scan never saw the ssh carrying the join");
    let node_scripts: Vec<String> =
        node_argv.lines().map(|l| unpacked(l).unwrap_or_else(|| l.to_string())).collect();
    assert!(
        node_scripts.iter().any(|s| s.contains("kubeadm")),
        "no hapki script seen on the node: the script check proves nothing"
    );
    let node_leaks: Vec<&str> = node_argv
        .lines()
        .chain(node_scripts.iter().map(String::as_str))
        .filter(|l| l.contains(SECRET))
        .collect();
    assert!(node_leaks.is_empty(), "a user on the node read the token: {node_leaks:?}");
    assert!(local_leaks.is_empty(), "the operator's process list shows the token: {local_leaks:?}");
}
