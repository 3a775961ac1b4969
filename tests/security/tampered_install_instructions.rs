//! Item 14: a compromised operator side runs the node script with the real, signed bytes but
//! its own instructions (another dest, mode, owner or action; a PKI key with a loose mode).
//! The node checks every instruction against the signed bundle.json and kubeadm's modes, and
//! installs nothing.

use std::os::unix::fs::MetadataExt;

use crate::fixture::{hapki, Fixture};
use crate::hand_run::{artifacts_bundle, on_node, run_node_script, stderr, Instr, Parts, TB_ROOT};
use crate::testbed::Testbed;

fn instr(p: &Parts, bytes: &[u8]) -> Instr {
    let [name, dest, mode, owner, after] = p.signed(0);
    Instr { name, dest, mode, owner, after, bytes: bytes.to_vec() }
}

#[test]
fn instructions_the_signer_did_not_sign_are_refused_and_nothing_is_written() {
    let Some(tb) = Testbed::up(1, 0) else { return };
    let fx = Fixture::new();
    let n = tb.node("kubemaster-1");
    let dest = format!("{TB_ROOT}/bin/tool");
    let bytes = b"the signed tool\n";
    let bundle = artifacts_bundle(&fx, "tool.bundle", None, &[("tool", &dest, bytes, "")]);
    let p = Parts::extract(&fx, &bundle);
    let serial = p.manifest["serial"].as_u64().unwrap();
    let evil = format!("{TB_ROOT}/evil");
    let tampered: Vec<(&str, Instr)> = vec![
        ("dest", Instr { dest: evil.clone(), ..instr(&p, bytes) }),
        ("mode", Instr { mode: "0777".into(), ..instr(&p, bytes) }),
        ("owner", Instr { owner: "hapki-intruder:hapki-intruder".into(), ..instr(&p, bytes) }),
        ("after", Instr { after: "restart-kubelet".into(), ..instr(&p, bytes) }),
    ];
    for (what, i) in tampered {
        let out = run_node_script(&tb, "kubemaster-1", &p, serial, "-", &[], &[i]);
        assert_eq!(out.code, Some(3), "tampered {what}: {}", stderr(&out));
        assert!(stderr(&out).contains("signed bundle.json"), "{what}: {}", stderr(&out));
        assert!(!on_node(n, &evil).exists(), "{what}: wrote the unsigned dest");
        assert!(!on_node(n, &dest).exists(), "{what}: installed with unsigned instructions");
    }
    // Negative control: the same hand-run with the signed instructions installs.
    let out = run_node_script(&tb, "kubemaster-1", &p, serial, "-", &[], &[instr(&p, bytes)]);
    assert_eq!(out.code, Some(0), "{}", stderr(&out));
    assert_eq!(std::fs::read(on_node(n, &dest)).unwrap(), bytes);
}

#[test]
fn a_pki_key_with_a_mode_other_than_kubeadms_is_refused() {
    let Some(tb) = Testbed::up(1, 0) else { return };
    let fx = Fixture::new();
    let n = tb.node("kubemaster-1");
    let bundle = fx.path("pki.tgz");
    let mut c = hapki();
    c.args(["bundle", "--insecure-plaintext", "--pki-dir"]).arg(fx.pki());
    c.arg("--sign-key").arg(fx.signer()).arg("--out").arg(&bundle);
    c.assert().success();
    let p = Parts::extract(&fx, &bundle);
    let serial = p.manifest["serial"].as_u64().unwrap();
    // kubeadm's modes, written out (docs/kubeadm: keys and sa.pub 0600, certificates 0644).
    let modes = |loose: bool| -> Vec<(&str, Vec<u8>, &str)> {
        crate::fixture::SHARED
            .iter()
            .map(|f| {
                let m = match (*f, loose) {
                    ("ca.key", true) => "0644",
                    (f, _) if f.ends_with(".crt") => "0644",
                    _ => "0600",
                };
                (*f, p.read(&format!("pki/{f}")), m)
            })
            .collect()
    };
    let out = run_node_script(&tb, "kubemaster-1", &p, serial, "-", &modes(true), &[]);
    assert_eq!(out.code, Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("pki/ca.key"), "{}", stderr(&out));
    assert!(!n.etc_kubernetes().join("pki/ca.key").exists());
    let out = run_node_script(&tb, "kubemaster-1", &p, serial, "-", &modes(false), &[]);
    assert_eq!(out.code, Some(0), "{}", stderr(&out));
    let md = std::fs::metadata(n.etc_kubernetes().join("pki/ca.key")).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o600);
}
