//! Item 13: nodes whose artifact destination is one shared directory (NFS; here a host
//! directory outside the testbed's per-node mounts, which every node sees) push in parallel.
//! Each node removes only its own dead staging there, never another node's live one.

use crate::fixture::{text, Fixture};
use crate::hand_run::{artifacts_bundle, node_result, push};
use crate::testbed::Testbed;

struct Shared(std::path::PathBuf);
impl Drop for Shared {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn parallel_pushes_into_one_shared_directory_both_succeed() {
    let Some(tb) = Testbed::up(2, 0) else { return };
    let fx = Fixture::new();
    let shared = Shared(std::path::PathBuf::from(format!(
        "/srv/hapki-shared-{}-{}",
        std::process::id(),
        tb.net
    )));
    std::fs::create_dir_all(&shared.0).unwrap();
    let dir = shared.0.display().to_string();
    // Dead staging this node left (its own name, another push id), and a foreign node's.
    let own_dead = shared.0.join(".hapki-stage_kubemaster-1_19990101T000000Z-dead.abcdef");
    let foreign = shared.0.join(".hapki-stage_elsewhere_19990101T000000Z-live.abcdef");
    std::fs::create_dir_all(&own_dead).unwrap();
    std::fs::create_dir_all(&foreign).unwrap();
    for round in 0..3u8 {
        let big = |seed: u8| vec![seed.wrapping_add(round); 3 << 20];
        let (a, b) = (big(1), big(2));
        let bundle = artifacts_bundle(
            &fx,
            &format!("shared{round}.bundle"),
            None,
            &[("a", &format!("{dir}/a"), &a, ""), ("b", &format!("{dir}/b"), &b, "")],
        );
        let out = push(&fx, &tb, &bundle, &[]);
        assert_eq!(out.status.code(), Some(0), "round {round}: {}", text(&out));
        for node in ["kubemaster-1", "kubemaster-2"] {
            assert_eq!(node_result(&out, node).0, "installed", "round {round}: {}", text(&out));
        }
        assert_eq!(std::fs::read(shared.0.join("a")).unwrap(), a);
        assert_eq!(std::fs::read(shared.0.join("b")).unwrap(), b);
    }
    assert!(!own_dead.exists(), "this node's own dead staging stays");
    assert!(foreign.exists(), "another node's staging was removed");
    let left: Vec<_> = std::fs::read_dir(&shared.0)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".hapki-stage") && !n.contains("elsewhere"))
        .collect();
    assert!(left.is_empty(), "staging left: {left:?}");
}
