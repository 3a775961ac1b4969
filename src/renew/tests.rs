//! The script's output parsed and judged, with certificates openssl made.

use std::process::Command;

use super::snapshot::parse;
use super::*;

fn openssl_cert(cn: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"])
        .args(["-days", "30", "-subj", &format!("/CN={cn}"), "-keyout"])
        .arg(dir.path().join("k"))
        .arg("-out")
        .arg(dir.path().join("c"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::read_to_string(dir.path().join("c")).unwrap()
}

fn output(old: &str, new: &str, served_after: &str) -> String {
    let p = "/etc/kubernetes/pki";
    format!(
        "=== phase before\n=== file {p}/apiserver.crt\n{old}=== served 6443 10.0.0.1\n{old}\
         === served 2379 -\n=== step 1700000000 kubeadm certs renew all\n\
         === phase after\n=== file {p}/apiserver.crt\n{new}=== served 6443 10.0.0.1\n{served_after}"
    )
}

#[test]
fn a_server_presenting_its_renewed_file_passes() {
    let (old, new) = (openssl_cert("old"), openssl_cert("new"));
    let parsed = parse(output(&old, &new, &new).as_bytes());
    let r = judge("m1", &parsed, &NodePaths::default());
    assert_eq!(r.status, RenewStatus::Renewed, "{}", r.message);
    assert_eq!(r.certs.len(), 1);
    assert!(r.certs[0].renewed);
    assert_eq!(r.served.len(), 1, "only the port that answered");
    assert_eq!(r.steps[0].what, "kubeadm certs renew all");
    assert_eq!(r.steps[0].at, "2023-11-14T22:13:20Z");
}

#[test]
fn a_server_still_presenting_the_old_certificate_fails_the_node() {
    let (old, new) = (openssl_cert("old"), openssl_cert("new"));
    let parsed = parse(output(&old, &new, &old).as_bytes());
    let r = judge("m1", &parsed, &NodePaths::default());
    assert_eq!(r.status, RenewStatus::Failed);
    assert!(r.message.contains("kube-apiserver on :6443 still presents a certificate"), "{}", r.message);
    assert!(r.message.contains("differs from /etc/kubernetes/pki/apiserver.crt"), "{}", r.message);
    assert!(r.message.contains("not restarted"), "{}", r.message);
}

#[test]
fn a_script_that_ended_before_its_after_snapshot_fails_the_node() {
    let old = openssl_cert("old");
    let text = format!("=== phase before\n=== file /etc/kubernetes/pki/apiserver.crt\n{old}");
    let r = judge("m1", &parse(text.as_bytes()), &NodePaths::default());
    assert_eq!(r.status, RenewStatus::Failed);
    assert_eq!(r.certs[0].new_not_after, None);
}

#[test]
fn only_takes_kubeadm_names() {
    assert_eq!(validate_only(&[]).unwrap(), vec!["all"]);
    assert!(validate_only(&["apiserver".into(), "admin.conf".into()]).is_ok());
    assert!(validate_only(&["apiserver; rm -rf /".into()]).is_err());
}

#[test]
fn the_renew_script_parses_as_posix_sh() {
    let out = Command::new("sh").args(["-n", "-c", &script()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
