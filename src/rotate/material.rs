//! The old and the new material, and what every file holds in each phase (the design's table):
//! trust bundles old+new (old first) in trust-both, new+old (new first: kubeadm signs with the
//! first certificate of `ca.crt`) from switch, new alone at finalize; keys old until switch.

use std::collections::BTreeMap;

use base64::Engine;

use super::state::Phase;
use crate::pki::fingerprint::sha256_hex;
use crate::pki::PkiError;

/// What can rotate: the three CAs and the service-account pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Part {
    Ca,
    FrontProxyCa,
    EtcdCa,
    Sa,
}

impl Part {
    pub const ALL: [Part; 4] = [Part::Ca, Part::FrontProxyCa, Part::EtcdCa, Part::Sa];

    pub fn as_str(self) -> &'static str {
        match self {
            Part::Ca => "ca",
            Part::FrontProxyCa => "front-proxy-ca",
            Part::EtcdCa => "etcd-ca",
            Part::Sa => "sa",
        }
    }

    /// The public half's file (a certificate, or `sa.pub`).
    pub fn public_file(self) -> &'static str {
        match self {
            Part::Ca => "ca.crt",
            Part::FrontProxyCa => "front-proxy-ca.crt",
            Part::EtcdCa => "etcd/ca.crt",
            Part::Sa => "sa.pub",
        }
    }

    pub fn key_file(self) -> &'static str {
        match self {
            Part::Ca => "ca.key",
            Part::FrontProxyCa => "front-proxy-ca.key",
            Part::EtcdCa => "etcd/ca.key",
            Part::Sa => "sa.key",
        }
    }

    /// The part whose public file this is (`ca.crt` → ca).
    pub fn of_public_file(name: &str) -> Option<Part> {
        Part::ALL.into_iter().find(|p| p.public_file() == name)
    }
}

impl std::str::FromStr for Part {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // `etcd/ca` as `hapki pki renew-ca --which` spells it.
        let s = if s == "etcd/ca" { "etcd-ca" } else { s };
        Part::ALL.into_iter().find(|p| p.as_str() == s).ok_or_else(|| {
            format!("unknown part {s:?} for --which: use ca, front-proxy-ca, etcd-ca, sa")
        })
    }
}

/// The single-certificate copy of the current signer that kube-controller-manager's
/// `--cluster-signing-cert-file` names from trust-both on (it cannot take a bundle:
/// kubernetes/kubeadm#1350).
pub const SIGNING_COPY: &str = "hapki-signing-ca.crt";

/// The eight files, by kubeadm's relative names.
pub type Files = BTreeMap<String, Vec<u8>>;

/// `a` then `b`, each ending in a newline: a PEM bundle.
pub fn concat(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(a.len() + b.len() + 2);
    for part in [a, b] {
        out.extend_from_slice(part);
        if !part.ends_with(b"\n") {
            out.push(b'\n');
        }
    }
    out
}

/// The first PEM block of `pem` (kubeadm's "first certificate"), newline-terminated.
pub fn first_block(pem: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(pem);
    let mut out = String::new();
    for line in text.lines() {
        if out.is_empty() && !line.starts_with("-----BEGIN ") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
        if line.starts_with("-----END ") {
            break;
        }
    }
    out.into_bytes()
}

/// What a node's files hold in one phase.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// Relative name → content (a rotated part's files; the others are left alone).
    pub files: BTreeMap<String, Vec<u8>>,
    /// Relative names to remove if present.
    pub remove: Vec<String>,
    /// What `--cluster-signing-cert-file` should name (relative), when the ca rotates.
    pub signing_flag: Option<String>,
}

/// What each file holds in `phase` (`Aborted` = the old material alone). `Drain` holds what
/// switch left. `which` are the rotated parts; `control_plane` false gives a worker's share:
/// `ca.crt` only, never a key.
pub fn desired(
    old: &Files,
    new: &Files,
    which: &[Part],
    phase: Phase,
    control_plane: bool,
) -> Result<Desired, PkiError> {
    let mut d = Desired::default();
    let get = |files: &Files, name: &str| {
        files.get(name).cloned().ok_or_else(|| {
            PkiError::invalid(name, "missing from the rotation's state directory (old/ or new/ on the first master); restore it from a backup")
        })
    };
    for part in which {
        if !control_plane && *part != Part::Ca {
            continue;
        }
        let (o, n) = (get(old, part.public_file())?, get(new, part.public_file())?);
        let public = match phase {
            Phase::Prepare | Phase::Aborted => o.clone(),
            Phase::TrustBoth => concat(&o, &n),
            Phase::Switch | Phase::Drain => concat(&n, &o),
            Phase::Finalize => n.clone(),
        };
        d.files.insert(part.public_file().to_string(), public);
        if control_plane {
            let key = match phase {
                Phase::Prepare | Phase::TrustBoth | Phase::Aborted => get(old, part.key_file())?,
                _ => get(new, part.key_file())?,
            };
            d.files.insert(part.key_file().to_string(), key);
        }
        if *part == Part::Ca && control_plane {
            match phase {
                Phase::TrustBoth => {
                    d.files.insert(SIGNING_COPY.into(), first_block(&o));
                    d.signing_flag = Some(SIGNING_COPY.into());
                }
                Phase::Switch | Phase::Drain => {
                    d.files.insert(SIGNING_COPY.into(), first_block(&n));
                    d.signing_flag = Some(SIGNING_COPY.into());
                }
                _ => {
                    d.remove.push(SIGNING_COPY.into());
                    d.signing_flag = Some("ca.crt".into());
                }
            }
        }
    }
    Ok(d)
}

/// Every `certificate-authority-data` value a kubeconfig may hold during this rotation (the
/// old `ca.crt`, both bundles, the new one), base64 as kubeconfigs write it: a kubeconfig
/// holding one of them follows the rotation; any other CA is someone else's and left alone.
pub fn known_ca_data(old: &Files, new: &Files) -> Vec<String> {
    let (Some(o), Some(n)) = (old.get("ca.crt"), new.get("ca.crt")) else {
        return Vec::new();
    };
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    vec![b64(o), b64(&concat(o, n)), b64(&concat(n, o)), b64(n)]
}

/// The service-account token signer's key id as kube-apiserver sets it in every JWT it signs
/// (kubernetes pkg/serviceaccount/jwt.go `keyIDFromPublicKey`): base64url without padding of
/// the SHA-256 of the public key's DER SubjectPublicKeyInfo.
pub fn jwt_kid(spki_der: &[u8]) -> String {
    use sha2::Digest;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(spki_der))
}

/// A part's public key (SubjectPublicKeyInfo DER) from its public file.
pub fn spki_der(part: Part, public: &[u8]) -> Result<Vec<u8>, PkiError> {
    let name = part.public_file();
    Ok(match part {
        Part::Sa => crate::pki::parse::parse_public_key(name, public)?.spki_der,
        _ => crate::pki::parse::parse_certificate(name, public)?.public.spki_der,
    })
}

/// SHA-256 (hex) of each rotated part's public key, for `state.json`.
pub fn fingerprints(files: &Files, which: &[Part]) -> Result<BTreeMap<String, String>, PkiError> {
    let mut out = BTreeMap::new();
    for p in which {
        let bytes = files.get(p.public_file()).map(Vec::as_slice).unwrap_or_default();
        out.insert(p.as_str().to_string(), sha256_hex(&spki_der(*p, bytes)?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(tag: &str) -> Files {
        let mut f = Files::new();
        for p in Part::ALL {
            f.insert(
                p.public_file().into(),
                format!("-----BEGIN X-----\n{tag}-{}\n-----END X-----\n", p.as_str()).into_bytes(),
            );
            f.insert(p.key_file().into(), format!("{tag}-key-{}\n", p.as_str()).into_bytes());
        }
        f
    }

    fn text(d: &Desired, name: &str) -> String {
        String::from_utf8(d.files[name].clone()).unwrap()
    }

    #[test]
    fn the_bundles_follow_the_table_old_first_then_new_first_then_new_alone() {
        let (o, n) = (files("old"), files("new"));
        let all = Part::ALL;
        let t = desired(&o, &n, &all, Phase::TrustBoth, true).unwrap();
        assert!(
            text(&t, "ca.crt").find("old-ca").unwrap() < text(&t, "ca.crt").find("new-ca").unwrap()
        );
        assert_eq!(text(&t, "ca.key"), "old-key-ca\n");
        assert_eq!(text(&t, "sa.key"), "old-key-sa\n");
        assert!(text(&t, "sa.pub").contains("old-sa") && text(&t, "sa.pub").contains("new-sa"));
        assert_eq!(text(&t, SIGNING_COPY), "-----BEGIN X-----\nold-ca\n-----END X-----\n");
        let s = desired(&o, &n, &all, Phase::Switch, true).unwrap();
        let ca = text(&s, "etcd/ca.crt");
        assert!(ca.find("new-etcd-ca").unwrap() < ca.find("old-etcd-ca").unwrap());
        assert_eq!(text(&s, "etcd/ca.key"), "new-key-etcd-ca\n");
        assert_eq!(text(&s, SIGNING_COPY), "-----BEGIN X-----\nnew-ca\n-----END X-----\n");
        assert_eq!(s.signing_flag.as_deref(), Some(SIGNING_COPY));
        let f = desired(&o, &n, &all, Phase::Finalize, true).unwrap();
        assert_eq!(
            text(&f, "front-proxy-ca.crt"),
            "-----BEGIN X-----\nnew-front-proxy-ca\n-----END X-----\n"
        );
        assert_eq!(f.remove, vec![SIGNING_COPY.to_string()]);
        assert_eq!(f.signing_flag.as_deref(), Some("ca.crt"));
        let a = desired(&o, &n, &all, Phase::Aborted, true).unwrap();
        assert_eq!(a.files["ca.crt"], o["ca.crt"]);
        assert_eq!(a.files["sa.key"], o["sa.key"]);
    }

    #[test]
    fn a_worker_gets_ca_crt_only_and_unrotated_parts_are_left_alone() {
        let (o, n) = (files("old"), files("new"));
        let w = desired(&o, &n, &Part::ALL, Phase::Switch, false).unwrap();
        assert_eq!(w.files.keys().collect::<Vec<_>>(), ["ca.crt"]);
        assert!(w.signing_flag.is_none() && w.remove.is_empty());
        let only_sa = desired(&o, &n, &[Part::Sa], Phase::TrustBoth, true).unwrap();
        assert_eq!(only_sa.files.keys().collect::<Vec<_>>(), ["sa.key", "sa.pub"]);
        assert!(only_sa.signing_flag.is_none());
    }

    #[test]
    fn concat_adds_a_missing_newline_and_first_block_takes_the_first_pem() {
        assert_eq!(concat(b"a", b"b\n"), b"a\nb\n");
        let two =
            b"junk\n-----BEGIN C-----\nA\n-----END C-----\n-----BEGIN C-----\nB\n-----END C-----\n";
        assert_eq!(first_block(two), b"-----BEGIN C-----\nA\n-----END C-----\n");
    }

    #[test]
    fn known_ca_data_holds_the_four_states() {
        let (o, n) = (files("old"), files("new"));
        let k = known_ca_data(&o, &n);
        assert_eq!(k.len(), 4);
        let dec = |s: &str| base64::engine::general_purpose::STANDARD.decode(s).unwrap();
        assert_eq!(dec(&k[0]), o["ca.crt"]);
        assert_eq!(dec(&k[2]), concat(&n["ca.crt"], &o["ca.crt"]));
    }

    #[test]
    fn the_jwt_kid_is_what_openssl_and_basenc_compute() {
        // A P-256 public key, and its kid computed independently:
        // openssl pkey -pubin -outform der < sa.pub | openssl dgst -sha256 -binary | basenc --base64url
        // (padding removed).
        let pem = include_bytes!("testdata/sa-p256.pub");
        let der = spki_der(Part::Sa, pem).unwrap();
        assert_eq!(jwt_kid(&der), include_str!("testdata/sa-p256.kid").trim());
    }
}
