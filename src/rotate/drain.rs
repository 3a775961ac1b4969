//! drain: what still depends on the old material, read from every node (rotate.sh `drain`):
//! certificates still signed by an old CA (files, kubeconfigs' client certificates, what the
//! servers present), trust files and kubeconfigs without the new CA, and service-account token
//! Secrets whose JWT names the old key. Nothing may be removed while any remains.

use base64::Engine;
use serde::Serialize;
use x509_parser::prelude::*;

use super::material::{jwt_kid, spki_der, Files, Part};
use super::remote::sections;
use crate::renew::snapshot;

/// One thing that still depends on the old material, and its fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DrainItem {
    pub node: String,
    pub file: String,
    /// `old-signer`, `served-old`, `trust-missing-new`, `kubeconfig-ca`, `sa-token`.
    pub kind: String,
    pub message: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DrainReport {
    pub clear: bool,
    pub items: Vec<DrainItem>,
    /// What cannot be seen from outside.
    pub notes: Vec<String>,
}

/// Whether the certificate `leaf` (DER) carries a signature by `ca`'s key.
pub(crate) fn signed_by(leaf: &[u8], ca: &[u8]) -> bool {
    match (X509Certificate::from_der(leaf), X509Certificate::from_der(ca)) {
        (Ok((_, l)), Ok((_, c))) => l.verify_signature(Some(c.public_key())).is_ok(),
        _ => false,
    }
}

/// Every certificate's DER in a PEM text.
fn ders(pem: &[u8]) -> Vec<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .map(|c| c.as_ref().to_vec())
        .collect()
}

/// The CA (its public file) that signs the certificate at `path` on a node.
fn ca_of(path: &str) -> &'static str {
    match path.split_once("/pki/") {
        Some((_, rel)) => crate::pki::chain::expected_ca(rel),
        None => "ca.crt",
    }
}

/// The old and the new certificate (DER) of each rotated CA, by public file name.
pub(crate) struct Cas {
    cas: Vec<(&'static str, Vec<u8>, Vec<u8>)>,
    old_kid: Option<String>,
}

impl Cas {
    pub fn new(old: &Files, new: &Files, which: &[Part]) -> Self {
        let first = |f: &Files, n: &str| ders(f.get(n).map_or(&[][..], |v| v)).into_iter().next();
        let mut cas = Vec::new();
        for p in which.iter().filter(|p| **p != Part::Sa) {
            if let (Some(o), Some(n)) = (first(old, p.public_file()), first(new, p.public_file())) {
                cas.push((p.public_file(), o, n));
            }
        }
        let old_kid = which
            .contains(&Part::Sa)
            .then(|| old.get("sa.pub").and_then(|b| spki_der(Part::Sa, b).ok()))
            .flatten()
            .map(|d| jwt_kid(&d));
        Cas { cas, old_kid }
    }

    fn get(&self, name: &str) -> Option<(&[u8], &[u8])> {
        self.cas.iter().find(|c| c.0 == name).map(|c| (c.1.as_slice(), c.2.as_slice()))
    }
}

/// The drain items of one node from its `drain` output.
pub(crate) fn classify(node: &str, out: &[u8], cas: &Cas) -> Vec<DrainItem> {
    let mut items = Vec::new();
    let mut item = |file: &str, kind: &str, message: String| {
        items.push(DrainItem { node: node.into(), file: file.into(), kind: kind.into(), message })
    };
    let snap = snapshot::parse(out).before;
    for (path, cert) in &snap.certs {
        let ca = ca_of(path);
        let Some((old, new)) = cas.get(ca) else { continue };
        if !signed_by(&cert.der, new) && signed_by(&cert.der, old) {
            item(path, "old-signer", format!("signed by the old {ca}: re-issue it from the new CA (`hapki rotate --to switch` re-runs kubeadm certs renew on control planes; a kubelet client certificate: kubeadm's kubelet.conf renewal or the kubelet's rotation)"));
        }
    }
    for (port, served) in &snap.served {
        let ca = match port {
            6443 => "ca.crt",
            2379 | 2380 => "etcd/ca.crt",
            _ => continue,
        };
        let (Some((old, new)), Some(cert)) = (cas.get(ca), served.cert.as_ref()) else { continue };
        if !signed_by(&cert.der, new) && signed_by(&cert.der, old) {
            item(&format!(":{port}"), "served-old", format!("the server on :{port} still presents a certificate signed by the old {ca}: restart it (hapki renew)"));
        }
    }
    for (h, body) in sections(out) {
        let words: Vec<&str> = h.split(' ').collect();
        match words.as_slice() {
            ["trust", name] => {
                if let Some((_, new)) = cas.get(name) {
                    if !ders(&body).iter().any(|d| d == new) {
                        item(name, "trust-missing-new", format!("{name} does not hold the new CA: run `hapki rotate --to switch` again"));
                    }
                }
            }
            ["cadata", file, b64] => {
                let Some((old, new)) = cas.get("ca.crt") else { continue };
                let pem = base64::engine::general_purpose::STANDARD.decode(b64).unwrap_or_default();
                let certs = ders(&pem);
                if certs.iter().any(|d| d == old) && !certs.iter().any(|d| d == new) {
                    item(file, "kubeconfig-ca", format!("{file} trusts only the old ca.crt: set its certificate-authority-data to the bundle in /etc/kubernetes/pki/ca.crt"));
                }
            }
            ["token", ns, name, header] => {
                let Some(old_kid) = &cas.old_kid else { continue };
                if token_kid(header).as_deref() == Some(old_kid.as_str()) {
                    item(&format!("secret {ns}/{name}"), "sa-token", format!("a service-account token signed with the old sa.key: `kubectl -n {ns} delete secret {name}` (the token controller issues a new one signed with the new key)"));
                }
            }
            ["tokens-unreadable"] if cas.old_kid.is_some() => {
                item("secrets", "sa-token", "the service-account token Secrets could not be listed through admin.conf: drain cannot tell whether old tokens remain".into());
            }
            _ => {}
        }
    }
    items
}

/// The `kid` of a JWT header (its first, base64url part).
pub(crate) fn token_kid(header_b64: &str) -> Option<String> {
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header_b64.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&json).ok()?;
    v.get("kid")?.as_str().map(str::to_string)
}

/// What drain cannot see, said plainly.
pub(crate) fn notes(sa: bool, switched_at: Option<&str>) -> Vec<String> {
    let mut n = vec!["certificates held outside the nodes (copied kubeconfigs, clients' own trust stores) cannot be seen from here: give them the new ca.crt before finalize".to_string()];
    if sa {
        n.push(format!(
            "projected service-account tokens in pods are refreshed by the kubelet within their lifetime (at most 24 h by default) after switch{}; tokens copied out of the cluster cannot be seen: after finalize they are rejected (401)",
            switched_at.map(|t| format!(" (switch finished {t})")).unwrap_or_default()
        ));
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kid_of_a_jwt_header() {
        // {"alg":"RS256","kid":"abc"} in base64url, without padding.
        assert_eq!(token_kid("eyJhbGciOiJSUzI1NiIsImtpZCI6ImFiYyJ9").as_deref(), Some("abc"));
        assert_eq!(token_kid("bm90IGpzb24"), None);
        assert_eq!(token_kid("!!"), None);
    }

    /// Two generated PKIs: the old and the new material.
    fn material() -> (Files, Files) {
        let now = ::time::OffsetDateTime::now_utc();
        let gen = |_| -> Files {
            let alg = crate::pki::Algorithm::EcdsaP256;
            crate::pki::generate::generate_files(alg, ::time::Duration::days(30), now)
                .unwrap()
                .into_iter()
                .map(|(n, p)| (n.to_string(), p.into_bytes()))
                .collect()
        };
        (gen(0), gen(1))
    }

    fn leaf(ca: &Files) -> String {
        let now = ::time::OffsetDateTime::now_utc();
        let (crt, key) = (&ca["ca.crt"], &ca["ca.key"]);
        crate::pki::generate::issue_kubelet_client(crt, key, "system:node:n1", now)
            .unwrap()
            .cert_pem
    }

    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(b)
    }

    #[test]
    fn drain_lists_what_the_old_material_still_signs_or_is_trusted_alone() {
        let (old, new) = material();
        let cas = Cas::new(&old, &new, &Part::ALL);
        let both = super::super::material::concat(&new["ca.crt"], &old["ca.crt"]);
        // The old sa key's kid, as the API server writes it in a JWT header.
        let kid = jwt_kid(&spki_der(Part::Sa, &old["sa.pub"]).unwrap());
        let header = |kid: &str| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(format!("{{\"alg\":\"ES256\",\"kid\":\"{kid}\"}}"))
        };
        let out = format!(
            "=== phase now\n=== file /etc/kubernetes/pki/apiserver.crt\n{}=== file /etc/kubernetes/pki/apiserver-kubelet-client.crt\n{}\
             === trust ca.crt\n{}=== trust etcd/ca.crt\n{}\
             === cadata /etc/kubernetes/admin.conf {}\n=== cadata /etc/kubernetes/scheduler.conf {}\n\
             === cadata /etc/kubernetes/other.conf {}\n\
             === token kube-system old-token {}\n=== token kube-system new-token {}\n",
            leaf(&old),
            leaf(&new),
            String::from_utf8_lossy(&both),
            String::from_utf8_lossy(&old["etcd/ca.crt"]),
            b64(&old["ca.crt"]),
            b64(&both),
            b64(&new["front-proxy-ca.crt"]),
            header(&kid),
            header("another"),
        );
        let items = classify("n1", out.as_bytes(), &cas);
        let got: Vec<(&str, &str)> =
            items.iter().map(|i| (i.kind.as_str(), i.file.as_str())).collect();
        assert_eq!(
            got,
            [
                ("old-signer", "/etc/kubernetes/pki/apiserver.crt"),
                ("trust-missing-new", "etcd/ca.crt"),
                ("kubeconfig-ca", "/etc/kubernetes/admin.conf"),
                ("sa-token", "secret kube-system/old-token"),
            ]
        );
        assert!(items[3].message.contains("kubectl -n kube-system delete secret old-token"));
        // Nothing rotated, nothing listed.
        assert!(classify("n1", out.as_bytes(), &Cas::new(&old, &new, &[])).is_empty());
    }

    #[test]
    fn the_ca_of_a_path() {
        assert_eq!(ca_of("/etc/kubernetes/pki/etcd/peer.crt"), "etcd/ca.crt");
        assert_eq!(ca_of("/etc/kubernetes/pki/front-proxy-client.crt"), "front-proxy-ca.crt");
        assert_eq!(ca_of("/etc/kubernetes/admin.conf"), "ca.crt");
        assert_eq!(ca_of("/var/lib/kubelet/pki/kubelet-client-current.pem"), "ca.crt");
    }
}
