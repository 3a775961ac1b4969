//! Putting a bundle's shared files on chosen testbed nodes, the way an operator seeds a node
//! (`hapki push BUNDLE --nodes … --known-hosts … --identity …`), and reading the per-node parts
//! of hapki's JSON reports.
//!
//! Include it after `fixture` and `testbed` (it uses both by those names):
//! `#[path = "support/cluster.rs"] mod cluster;`.
#![allow(dead_code)]

use std::path::Path;
use std::process::Output;

use serde_json::Value;

use crate::fixture::{text, Fixture};
use crate::testbed::Testbed;

/// Pushes `bundle` to exactly the testbed nodes named in `nodes` (no inventory), plus `extra`
/// arguments, and insists on exit 0.
pub fn push_to(
    fx: &Fixture,
    tb: &Testbed,
    bundle: &Path,
    nodes: &[&str],
    extra: &[&str],
) -> Output {
    let list = nodes.iter().map(|n| tb.addr(n)).collect::<Vec<_>>().join(",");
    let (known_hosts, identity) = (tb.known_hosts(), tb.identity());
    let mut args = vec![
        "--nodes",
        &list,
        "--known-hosts",
        known_hosts.to_str().unwrap(),
        "--identity",
        identity.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = fx.with_bundle("push", bundle, &args);
    assert_eq!(out.status.code(), Some(0), "push to {nodes:?}: {}", text(&out));
    out
}

/// The names of the testbed's control-plane nodes, first master included.
pub fn control_planes(tb: &Testbed) -> Vec<&str> {
    tb.nodes.iter().filter(|n| n.control_plane).map(|n| n.name.as_str()).collect()
}

/// `(node, status)` of each `nodes[]` entry of a push or join JSON report, in report order.
pub fn node_statuses(report: &Value) -> Vec<(&str, &str)> {
    report["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("no nodes[] in {report}"))
        .iter()
        .map(|n| (n["node"].as_str().unwrap(), n["status"].as_str().unwrap()))
        .collect()
}

/// `(node, file or "-", kind)` of each `problems[]` entry of an audit or preflight JSON report,
/// in report order.
pub fn problems(report: &Value) -> Vec<(String, String, String)> {
    report["problems"]
        .as_array()
        .unwrap_or_else(|| panic!("no problems[] in {report}"))
        .iter()
        .map(|p| {
            (
                p["node"].as_str().unwrap().to_string(),
                p["file"].as_str().unwrap_or("-").to_string(),
                p["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}
