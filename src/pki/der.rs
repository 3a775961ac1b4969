//! Just enough DER to read the algorithm of a PKCS#8 key and to unwrap the PKCS#1 key that
//! aws-lc-rs wraps in PKCS#8. x509-parser covers certificates and SubjectPublicKeyInfo; these
//! two structures are all that is left, and a 40-line reader is easier to audit than another
//! ASN.1 dependency.

pub(crate) const TAG_INTEGER: u8 = 0x02;
pub(crate) const TAG_OCTET_STRING: u8 = 0x04;
pub(crate) const TAG_OID: u8 = 0x06;
pub(crate) const TAG_SEQUENCE: u8 = 0x30;

/// Encoded OID contents (without tag and length) that kubeadm's key handling cares about.
pub(crate) mod oid {
    /// 1.2.840.113549.1.1.1 rsaEncryption
    pub(crate) const RSA_ENCRYPTION: &[u8] =
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    /// 1.2.840.113549.1.1.10 RSASSA-PSS
    pub(crate) const RSASSA_PSS: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a];
    /// 1.2.840.10045.2.1 id-ecPublicKey
    pub(crate) const EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    /// 1.2.840.10045.3.1.7 prime256v1 / P-256
    pub(crate) const P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    /// 1.3.132.0.34 secp384r1 / P-384
    pub(crate) const P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
    /// 1.3.132.0.35 secp521r1 / P-521
    pub(crate) const P521: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x23];
    /// 1.3.101.110 X25519
    pub(crate) const X25519: &[u8] = &[0x2b, 0x65, 0x6e];
    /// 1.3.101.111 X448
    pub(crate) const X448: &[u8] = &[0x2b, 0x65, 0x6f];
    /// 1.3.101.112 Ed25519
    pub(crate) const ED25519: &[u8] = &[0x2b, 0x65, 0x70];
    /// 1.3.101.113 Ed448
    pub(crate) const ED448: &[u8] = &[0x2b, 0x65, 0x71];
    /// 1.2.840.10040.4.1 DSA
    pub(crate) const DSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x38, 0x04, 0x01];
}

/// Reads one tag-length-value from the front of `input`: `(tag, contents, rest)`.
/// `None` on truncated or non-DER (indefinite, over-long) lengths.
pub(crate) fn read_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    let (contents, rest) = rest.split_at(len);
    Some((tag, contents, rest))
}

/// Reads a TLV and insists on its tag.
pub(crate) fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    match read_tlv(input)? {
        (t, contents, rest) if t == tag => Some((contents, rest)),
        _ => None,
    }
}

/// The parts of a PKCS#8 `PrivateKeyInfo` hapki needs: the algorithm OID, its parameters
/// (the curve OID for EC keys, when present) and the inner private key bytes.
pub(crate) struct Pkcs8<'a> {
    pub algorithm: &'a [u8],
    pub curve: Option<&'a [u8]>,
    pub private_key: &'a [u8],
}

/// Parses the outer structure of a PKCS#8 v1 or v2 (RFC 5958) private key.
pub(crate) fn parse_pkcs8(der: &[u8]) -> Option<Pkcs8<'_>> {
    let (info, _) = expect(der, TAG_SEQUENCE)?;
    let (_version, rest) = expect(info, TAG_INTEGER)?;
    let (alg_id, rest) = expect(rest, TAG_SEQUENCE)?;
    let (algorithm, params) = expect(alg_id, TAG_OID)?;
    let curve = expect(params, TAG_OID).map(|(c, _)| c);
    let (private_key, _) = expect(rest, TAG_OCTET_STRING)?;
    Some(Pkcs8 { algorithm, curve, private_key })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_short_and_long_lengths() {
        let (tag, c, rest) = read_tlv(&[0x04, 0x02, 0xaa, 0xbb, 0xff]).unwrap();
        assert_eq!((tag, c, rest), (0x04, &[0xaa, 0xbb][..], &[0xff][..]));
        let mut long = vec![0x04, 0x81, 0x80];
        long.extend([7u8; 0x80]);
        let (_, c, rest) = read_tlv(&long).unwrap();
        assert_eq!(c.len(), 0x80);
        assert!(rest.is_empty());
    }

    #[test]
    fn rejects_truncation_and_indefinite_length() {
        assert!(read_tlv(&[0x30, 0x05, 0x01]).is_none());
        assert!(read_tlv(&[0x30, 0x80, 0x00, 0x00]).is_none());
        assert!(read_tlv(&[0x30]).is_none());
        assert!(read_tlv(&[]).is_none());
    }
}
