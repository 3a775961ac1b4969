//! Which shared CA each per-node leaf certificate must chain to, and the cryptographic check.
//!
//! A node re-initialised after a failed join often keeps leaves signed by an earlier CA;
//! `kubeadm join` then fails with "certificate … is not signed by corresponding CA". Both push
//! and audit use this to catch it beforehand.

use x509_parser::prelude::*;

/// The shared CA certificate (relative name) that the leaf `name` (relative to the pki
/// directory) must be signed by, following kubeadm's certificate tree.
pub(crate) fn expected_ca(name: &str) -> &'static str {
    if name.starts_with("etcd/") || name.starts_with("apiserver-etcd-client") {
        "etcd/ca.crt"
    } else if name.starts_with("front-proxy-client") {
        "front-proxy-ca.crt"
    } else {
        "ca.crt"
    }
}

/// Outcome of checking one leaf against its CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ChainCheck {
    /// The CA's key signed the leaf.
    SignedBy,
    /// Parsed fine, but another key signed it. Carries the leaf's issuer name for the message.
    ForeignIssuer(String),
    /// The leaf or the CA could not be parsed.
    Unreadable(String),
}

fn first_cert_der(pem: &[u8]) -> Result<Vec<u8>, String> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem)
        .map(|c| c.as_ref().to_vec())
        .map_err(|e| format!("not a PEM certificate ({e})"))
}

/// Checks that `leaf_pem` was signed by the key of `ca_pem` (signature verified, not names compared).
pub(crate) fn check_issued_by(leaf_pem: &[u8], ca_pem: &[u8]) -> ChainCheck {
    let (leaf_der, ca_der) = match (first_cert_der(leaf_pem), first_cert_der(ca_pem)) {
        (Ok(l), Ok(c)) => (l, c),
        (Err(e), _) | (_, Err(e)) => return ChainCheck::Unreadable(e),
    };
    let (leaf, ca) =
        match (X509Certificate::from_der(&leaf_der), X509Certificate::from_der(&ca_der)) {
            (Ok((_, l)), Ok((_, c))) => (l, c),
            (Err(e), _) | (_, Err(e)) => return ChainCheck::Unreadable(e.to_string()),
        };
    match leaf.verify_signature(Some(ca.public_key())) {
        Ok(()) => ChainCheck::SignedBy,
        Err(_) => ChainCheck::ForeignIssuer(leaf.issuer().to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeadm_tree() {
        assert_eq!(expected_ca("apiserver.crt"), "ca.crt");
        assert_eq!(expected_ca("apiserver-kubelet-client.crt"), "ca.crt");
        assert_eq!(expected_ca("apiserver-etcd-client.crt"), "etcd/ca.crt");
        assert_eq!(expected_ca("etcd/peer.crt"), "etcd/ca.crt");
        assert_eq!(expected_ca("front-proxy-client.crt"), "front-proxy-ca.crt");
    }

    #[test]
    fn garbage_is_unreadable_not_a_panic() {
        assert!(matches!(check_issued_by(b"junk", b"junk"), ChainCheck::Unreadable(_)));
    }
}
