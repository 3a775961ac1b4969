//! The one place that computes fingerprints, so every command prints the same values and the
//! tests can hold them against `openssl` and `sha256sum`.

use sha2::{Digest, Sha256};

/// Lowercase hex SHA-256 of `bytes`: of a file (what `sha256sum` prints), of a certificate's DER
/// (`openssl x509 -fingerprint -sha256`, without colons) or of a SubjectPublicKeyInfo.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// kubeadm's `--discovery-token-ca-cert-hash` for a CA whose DER SubjectPublicKeyInfo is `spki_der`
/// (kubeadm `util/pubkeypin`): the public key info is pinned, not the whole certificate, so a
/// re-issued CA certificate with the same key keeps the same hash.
pub(crate) fn discovery_hash(spki_der: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(spki_der))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_input_is_the_known_vector() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
