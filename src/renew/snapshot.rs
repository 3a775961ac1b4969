//! The renew script's output (src/node/renew.sh): sections opened by `=== KIND ARGS` lines —
//! the certificate files, the kubeconfigs' client certificates, what each port presents, the
//! serving-certificate flags of the manifests, and the steps taken with their times.

use std::collections::BTreeMap;

use base64::Engine;

use crate::pki::parse::{parse_certificate, ParsedCert};

/// What one port presented: where it answered, and the certificate (if it parsed).
#[derive(Debug, Clone)]
pub struct Served {
    pub address: String,
    pub cert: Option<ParsedCert>,
}

/// One `snapshot` of the script: before or after the renewal.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Certificate files and kubeconfigs by full path on the node.
    pub certs: BTreeMap<String, ParsedCert>,
    /// Files that did not parse, with why.
    pub unreadable: BTreeMap<String, String>,
    /// Port → what it presented; a port that answered nowhere is absent.
    pub served: BTreeMap<u16, Served>,
    /// (component, flag) → the certificate file its manifest names.
    pub flags: BTreeMap<(String, String), String>,
    /// Kubeconfig → the file its `client-certificate:` names.
    pub kubeconfig_files: BTreeMap<String, String>,
}

/// The whole output: the snapshots and the steps (Unix time, what).
#[derive(Debug, Clone, Default)]
pub(crate) struct ScriptOutput {
    pub before: Snapshot,
    pub after: Option<Snapshot>,
    pub steps: Vec<(i64, String)>,
}

enum Open {
    None,
    File(String),
    Served(u16, String),
}

/// Parses the script's stdout; a line it does not understand is ignored (the node's text is
/// never trusted to be well formed, and nothing in it is executed).
pub(crate) fn parse(out: &[u8]) -> ScriptOutput {
    let text = String::from_utf8_lossy(out);
    let mut res = ScriptOutput::default();
    let mut snap: Option<Snapshot> = None;
    let mut open = Open::None;
    let mut body = String::new();
    for line in text.lines() {
        let Some(header) = line.strip_prefix("=== ") else {
            body.push_str(line);
            body.push('\n');
            continue;
        };
        if let Some(s) = snap.as_mut() {
            close(s, &open, &body);
        }
        body.clear();
        open = Open::None;
        let mut words = header.splitn(4, ' ');
        match (words.next(), words.next(), words.next(), words.next()) {
            (Some("phase"), Some(p), _, _) => {
                finish(&mut res, snap.take());
                snap = Some(Snapshot::default());
                if p == "after" {
                    res.after = Some(Snapshot::default());
                }
            }
            (Some("file"), Some(path), _, _) => open = Open::File(path.to_string()),
            (Some("served"), Some(port), Some(addr), _) => {
                if let (Ok(p), true) = (port.parse(), addr != "-") {
                    open = Open::Served(p, addr.to_string());
                }
            }
            (Some("kubeconfig-file"), Some(conf), Some(file), _) => {
                if let Some(s) = snap.as_mut() {
                    s.kubeconfig_files.insert(conf.into(), file.into());
                }
            }
            (Some("kubeconfig"), Some(path), Some(b64), _) => {
                if let Some(s) = snap.as_mut() {
                    kubeconfig(s, path, b64);
                }
            }
            (Some("flag"), Some(comp), Some(flag), Some(file)) => {
                if let Some(s) = snap.as_mut() {
                    s.flags.insert((comp.into(), flag.into()), file.into());
                }
            }
            (Some("step"), Some(at), Some(w1), rest) => {
                let what = rest.map_or(w1.to_string(), |r| format!("{w1} {r}"));
                res.steps.push((at.parse().unwrap_or(0), what));
            }
            _ => {}
        }
    }
    if let Some(s) = snap.as_mut() {
        close(s, &open, &body);
    }
    finish(&mut res, snap);
    res
}

/// A finished snapshot goes where its phase line said: the first is `before`. A kubeconfig
/// naming its client certificate's file gets that certificate.
fn finish(res: &mut ScriptOutput, snap: Option<Snapshot>) {
    let Some(mut snap) = snap else { return };
    for (conf, file) in &snap.kubeconfig_files {
        if let Some(c) = snap.certs.get(file).cloned() {
            snap.certs.insert(conf.clone(), c);
        }
    }
    match res.after.as_mut() {
        Some(after) => *after = snap,
        None => res.before = snap,
    }
}

fn close(s: &mut Snapshot, open: &Open, body: &str) {
    match open {
        Open::None => {}
        Open::File(path) => match parse_certificate(path, body.as_bytes()) {
            Ok(c) => {
                s.certs.insert(path.clone(), c);
            }
            Err(e) => {
                s.unreadable.insert(path.clone(), e.to_string());
            }
        },
        Open::Served(port, addr) => {
            let cert = parse_certificate(&format!(":{port}"), body.as_bytes()).ok();
            s.served.insert(*port, Served { address: addr.clone(), cert });
        }
    }
}

fn kubeconfig(s: &mut Snapshot, path: &str, b64: &str) {
    let pem = base64::engine::general_purpose::STANDARD.decode(b64.trim());
    match pem
        .map_err(|e| e.to_string())
        .and_then(|p| parse_certificate(path, &p).map_err(|e| e.to_string()))
    {
        Ok(c) => {
            s.certs.insert(path.to_string(), c);
        }
        Err(e) => {
            s.unreadable.insert(path.to_string(), e);
        }
    }
}
