//! Item 7: a `--replace` backup (the only copy of a replaced CA key) deleted by a later push in
//! the same second. Both pushes here even share one push id (the library's stamp), which is
//! what two pushes in the same second had before: each backup still gets a fresh directory that
//! no later push deletes, and the node's history names it.

use hapki::bundle::{AllowedSigners, Identities, VerifyOptions};
use hapki::cluster::ClusterNode;
use hapki::inventory::Role;
use hapki::push::{self, BundleSource, PushOptions, PushRun};
use hapki::transport::{self, Backend};

use crate::fixture::{text, Fixture};
use crate::testbed::Testbed;

fn push_lib(
    fx: &Fixture,
    tb: &Testbed,
    bundle: &std::path::Path,
    replace: bool,
) -> push::PushReport {
    let trust = AllowedSigners::from_file(&fx.allowed()).unwrap();
    let mut ids = Identities::default();
    ids.load(&fx.signer()).unwrap();
    let mut opts = PushOptions::new(replace, false, 1);
    opts.stamp = "20260101T000000Z".into();
    let t = transport::transport(Backend::Builtin).unwrap();
    let node = ClusterNode {
        target: tb.target("kubemaster-2"),
        role: Role::ControlPlane,
        address: tb.node("kubemaster-2").address.clone(),
        advertise_address: None,
    };
    let targets = push::targets(vec![node], None);
    let run = PushRun {
        bundle: BundleSource {
            path: bundle,
            trust: &trust,
            identities: &ids,
            verify: VerifyOptions::default(),
        },
        targets: &targets,
        transport: t.as_ref(),
        opts: &opts,
        progress: &|_, _| {},
    };
    push::push(&run).unwrap()
}

#[test]
fn a_replace_backup_survives_a_later_push_in_the_same_second() {
    let Some(tb) = Testbed::up(2, 0) else { return };
    let fx = Fixture::new();
    let n = tb.node("kubemaster-2");
    let out =
        fx.with_bundle("push", &fx.bundle(), &["--inventory", tb.inventory().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let other = fx.init_pki("other");
    let b_other = fx.bundle_of(&other, "other.age", None);

    let r = push_lib(&fx, &tb, &b_other, true);
    assert!(r.ok, "{r:?}");
    let backup = r.nodes[0].backup.clone().expect("the backup is reported");
    let on_host = n.state().join(backup.strip_prefix("/var/lib/hapki/").unwrap());
    let old_key = std::fs::read(fx.pki().join("ca.key")).unwrap();
    assert_eq!(std::fs::read(on_host.join("ca.key")).unwrap(), old_key);

    // A normal install right after (a file went missing), with the very same push id.
    std::fs::remove_file(n.etc_kubernetes().join("pki/front-proxy-ca.crt")).unwrap();
    let r = push_lib(&fx, &tb, &b_other, false);
    assert!(r.ok, "{r:?}");
    assert_eq!(r.nodes[0].status, push::NodeStatus::Installed, "{r:?}");
    assert_eq!(std::fs::read(on_host.join("ca.key")).unwrap(), old_key, "the backup is gone");
    let history = std::fs::read_to_string(n.state().join("history")).unwrap();
    assert!(history.contains(&format!("backup={backup}")), "{history}");
}
