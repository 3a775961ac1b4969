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
         === step 1700000001 moved kube-apiserver.yaml out of /etc/kubernetes/manifests\n\
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
    assert!(
        r.message.contains("kube-apiserver on :6443 still presents a certificate"),
        "{}",
        r.message
    );
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

/// The probe run on this machine against a kubelet.conf naming its rotated certificate file
/// (certificate and key in one, as the kubelet writes it): the certificate is read, no line of
/// the key leaves the script.
#[test]
fn the_probe_reads_a_referenced_client_certificate_and_never_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let k = dir.path().join("k");
    std::fs::create_dir_all(k.join("pki")).unwrap();
    std::fs::create_dir_all(k.join("manifests")).unwrap();
    let pem_path = dir.path().join("kubelet-client-current.pem");
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"])
        .args(["-days", "30", "-subj", "/O=system:nodes/CN=system:node:w1", "-keyout"])
        .arg(dir.path().join("key"))
        .arg("-out")
        .arg(dir.path().join("cert"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let cert = std::fs::read_to_string(dir.path().join("cert")).unwrap();
    let key = std::fs::read_to_string(dir.path().join("key")).unwrap();
    std::fs::write(&pem_path, format!("{cert}{key}")).unwrap();
    std::fs::write(
        k.join("kubelet.conf"),
        format!(
            "apiVersion: v1\nusers:\n- name: default-auth\n  user:\n    client-certificate: {p}\n    client-key: {p}\n",
            p = pem_path.display()
        ),
    )
    .unwrap();
    let k_s = k.display().to_string();
    let st = dir.path().join("st").display().to_string();
    let out = Command::new("sh")
        .arg("-c")
        .arg(script())
        .args(["hapki", &k_s, &st, "probe", "127.0.0.9", "1", "1", "probe", "all"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("PRIVATE KEY"), "a key line left the node:\n{text}");
    let key_body: Vec<&str> = key.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(key_body.iter().all(|l| !text.contains(l)), "key material in:\n{text}");
    let snap = parse(&out.stdout).before;
    let conf = format!("{k_s}/kubelet.conf");
    let c = snap.certs.get(&conf).unwrap_or_else(|| panic!("no {conf} in {text}"));
    assert_eq!(c.subject, "O=system:nodes, CN=system:node:w1");
    assert!(snap.served.is_empty(), "nothing serves at 127.0.0.9: {text}");
}
