//! Lint a kubeadm configuration file for an air-gapped, highly available cluster.
//!
//! kubeadm accepts configurations that only work with internet access (`kubernetesVersion:
//! stable` is resolved from dl.k8s.io, images come from registry.k8s.io) or that make a later
//! control-plane join impossible (no `controlPlaneEndpoint`) or the endpoint unchangeable (an IP is
//! baked into every certificate and kubeconfig). These are found here, before `kubeadm init`,
//! rather than on the day the cluster needs its second control plane.
//!
//! The file is a multi-document YAML stream of `InitConfiguration`, `ClusterConfiguration` and
//! `JoinConfiguration` (kubeadm.k8s.io/v1beta2, v1beta3, v1beta4); documents of other API groups
//! (KubeletConfiguration, KubeProxyConfiguration) are legitimate and left alone.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value;

use crate::error::{Categorized, Category};

pub mod images;

/// The kubeadm API group.
const GROUP: &str = "kubeadm.k8s.io";
/// Versions of the kubeadm config API this check understands.
const VERSIONS: [&str; 3] = ["v1beta2", "v1beta3", "v1beta4"];
const KINDS: [&str; 3] = ["InitConfiguration", "ClusterConfiguration", "JoinConfiguration"];
/// kubeadm's default `networking.serviceSubnet`.
pub(crate) const DEFAULT_SERVICE_SUBNET: &str = "10.96.0.0/12";
/// Registries that cannot be reached from an air-gapped site.
const PUBLIC_REGISTRIES: [&str; 2] = ["registry.k8s.io", "k8s.gcr.io"];
/// `ClusterConfiguration.encryptionAlgorithm` values kubeadm knows (ECDSA-P384 from 1.34).
const ALGORITHMS: [&str; 5] = ["RSA-2048", "RSA-3072", "RSA-4096", "ECDSA-P256", "ECDSA-P384"];
/// SHA-256 of empty input: what a broken `openssl … | sha256sum` pipeline yields.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Reading or parsing the file failed; lint results are in [`ConfigReport`] instead.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // `error`, not `source`: the message already names the cause, and a source would repeat it
    // in the one-line chain the binary prints.
    #[error("cannot read kubeadm config {}: {error}; give the path of a readable file", path.display())]
    Read { path: PathBuf, error: std::io::Error },
    #[error("kubeadm config {} is not valid YAML: {message}; fix the syntax (kubeadm would refuse it too)", path.display())]
    Yaml { path: PathBuf, message: String },
}

impl Categorized for ConfigError {
    fn category(&self) -> Category {
        match self {
            ConfigError::Read { error, .. } if error.kind() != std::io::ErrorKind::NotFound => {
                Category::Unexpected
            }
            _ => Category::Usage,
        }
    }
}

/// One finding about one field (`Kind.path.to.field`, or `document N` for a whole document).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub field: String,
    pub message: String,
}

/// What the check found. `ok` is false exactly when there are problems; warnings alone pass.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigReport {
    pub ok: bool,
    /// kubeadm API version of the documents (the first one seen), e.g. `kubeadm.k8s.io/v1beta4`.
    pub api_version: Option<String>,
    /// Kinds found, in file order.
    pub kinds: Vec<String>,
    pub problems: Vec<Finding>,
    pub warnings: Vec<Finding>,
    /// Reminders that are true of every kubeadm config file.
    pub notes: Vec<String>,
    /// The image cross-check against a bundle (`config check --bundle`), when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub images: Option<images::ImageCheck>,
}

impl ConfigReport {
    /// What the exit code says: `None` when ready, [`Category::Findings`] for problems.
    pub fn category(&self) -> Option<Category> {
        (!self.ok).then_some(Category::Findings)
    }
}

/// Read and check the kubeadm config at `path`.
pub fn check_file(path: &Path) -> Result<ConfigReport, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| ConfigError::Read { path: path.to_owned(), error })?;
    check_str(&text)
        .map_err(|YamlError(message)| ConfigError::Yaml { path: path.to_owned(), message })
}

/// The text is not YAML: the parser's message, on one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct YamlError(pub String);

/// Check kubeadm config text; `Err` is a YAML syntax error.
pub(crate) fn check_str(text: &str) -> Result<ConfigReport, YamlError> {
    let mut docs = Vec::new();
    for de in serde_yaml_ng::Deserializer::from_str(text) {
        let value = Value::deserialize(de).map_err(|e| YamlError(one_line(&e.to_string())))?;
        docs.push(value);
    }
    Ok(lint(&docs))
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[derive(Default)]
struct Findings {
    problems: Vec<Finding>,
    warnings: Vec<Finding>,
}

impl Findings {
    fn problem(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Finding { field: field.into(), message: message.into() });
    }
    fn warning(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(Finding { field: field.into(), message: message.into() });
    }
}

/// The kubeadm documents of a file by kind, in file order, and the API version of the first.
#[derive(Default)]
struct Documents<'a> {
    by_kind: BTreeMap<&'a str, &'a Value>,
    kinds: Vec<String>,
    api_version: Option<String>,
}

impl<'a> Documents<'a> {
    /// Document `i`: kept when it is a kubeadm document of a known version and kind (and the
    /// first of its kind); anything else is a finding or, for another API group, ignored.
    fn add(&mut self, i: usize, doc: &'a Value, f: &mut Findings) {
        let here = format!("document {}", i + 1);
        if doc.is_null() {
            return; // an empty document, e.g. after a leading `---`
        }
        let Some(map) = doc.as_mapping() else {
            f.problem(here, "is not a mapping with apiVersion and kind; kubeadm cannot decode it");
            return;
        };
        let av = map.get("apiVersion").and_then(Value::as_str);
        let kind = map.get("kind").and_then(Value::as_str);
        let (Some(av), Some(kind)) = (av, kind) else {
            f.problem(here, "has no apiVersion or no kind; every kubeadm document needs both");
            return;
        };
        let (group, version) = av.rsplit_once('/').unwrap_or(("", av));
        if group != GROUP {
            if KINDS.contains(&kind) {
                f.problem(
                    format!("{kind}.apiVersion"),
                    format!("\"{av}\" is not a kubeadm API version; use {GROUP}/v1beta4"),
                );
            }
            return; // KubeletConfiguration, KubeProxyConfiguration, …: not ours to judge
        }
        if !VERSIONS.contains(&version) {
            f.problem(
                format!("{kind}.apiVersion"),
                format!(
                    "\"{av}\" is not supported (known: v1beta2, v1beta3, v1beta4); \
                 convert it with `kubeadm config migrate`"
                ),
            );
            return;
        }
        if !KINDS.contains(&kind) {
            f.problem(
                here,
                format!("unknown kubeadm kind \"{kind}\" (expected {})", KINDS.join(", ")),
            );
            return;
        }
        match &self.api_version {
            None => self.api_version = Some(av.to_owned()),
            Some(first) if first != av => f.warning(
                format!("{kind}.apiVersion"),
                format!(
                    "\"{av}\" differs from \"{first}\" in an earlier document; use one version"
                ),
            ),
            Some(_) => {}
        }
        if version == "v1beta2" {
            f.warning(
                format!("{kind}.apiVersion"),
                "v1beta2 is no longer read by kubeadm 1.26 and later; convert it with \
             `kubeadm config migrate` to v1beta4",
            );
        }
        if self.by_kind.insert(kind, doc).is_some() {
            f.problem(here, format!("a second {kind}; kubeadm takes one of each kind"));
        }
        self.kinds.push(kind.to_owned());
    }
}

fn lint(docs: &[Value]) -> ConfigReport {
    let mut f = Findings::default();
    let mut d = Documents::default();
    for (i, doc) in docs.iter().enumerate() {
        d.add(i, doc, &mut f);
    }
    let Documents { by_kind, kinds, api_version } = d;
    if by_kind.is_empty() {
        f.problem(
            "file",
            "holds no InitConfiguration, ClusterConfiguration or JoinConfiguration document",
        );
    }
    // A ClusterConfiguration applies to init; an InitConfiguration without one gets kubeadm's
    // defaults, which is exactly what must be checked then.
    if by_kind.contains_key("ClusterConfiguration") || by_kind.contains_key("InitConfiguration") {
        let empty = Value::Mapping(Default::default());
        lint_cluster(by_kind.get("ClusterConfiguration").copied().unwrap_or(&empty), &mut f);
    }
    if let Some(init) = by_kind.get("InitConfiguration") {
        if has_str(init, &["certificateKey"]) {
            f.problem(
                "InitConfiguration.certificateKey",
                "is set: hapki distributes the shared PKI itself; remove the certificate key \
                 and do not use --upload-certs",
            );
        }
    }
    if let Some(join) = by_kind.get("JoinConfiguration") {
        lint_join(join, &mut f);
    }

    ConfigReport {
        ok: f.problems.is_empty(),
        api_version,
        kinds,
        problems: f.problems,
        warnings: f.warnings,
        notes: vec![
            "kubeadm init/join --config cannot be mixed with flags such as --pod-network-cidr, \
             --control-plane-endpoint or --kubernetes-version: put every setting in this file"
                .to_owned(),
        ],
        images: None,
    }
}

fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.as_mapping()?.get(*k))
}

fn get_str<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    get(v, path).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty())
}

fn has_str(v: &Value, path: &[&str]) -> bool {
    get_str(v, path).is_some()
}

/// Where `ClusterConfiguration` findings are reported.
const CC: &str = "ClusterConfiguration";

fn lint_cluster(cc: &Value, f: &mut Findings) {
    const K: &str = CC;
    match get_str(cc, &["controlPlaneEndpoint"]) {
        None => f.problem(
            format!("{K}.controlPlaneEndpoint"),
            "is not set: `kubeadm join --control-plane` refuses a cluster without a stable \
             endpoint; set a DNS name with a port, e.g. kubeapi.example.internal:6443",
        ),
        Some(ep) => lint_endpoint(&format!("{K}.controlPlaneEndpoint"), ep, f),
    }

    lint_version(cc, f);
    let services = service_subnets(cc, f);
    lint_pod_subnet(cc, &services, f);
    let repo_field = format!("{K}.imageRepository");
    match get_str(cc, &["imageRepository"]) {
        None => f.warning(
            repo_field,
            "is not set: images come from registry.k8s.io, unreachable offline; set your local \
             registry, or preload every image on every node",
        ),
        Some(r) if PUBLIC_REGISTRIES.contains(&r.trim_end_matches('/')) => f.warning(
            repo_field,
            format!("\"{r}\" is a public registry, unreachable offline; use your local mirror"),
        ),
        Some(_) => {}
    }

    if get(cc, &["etcd", "external"]).is_some_and(|v| !v.is_null()) {
        f.problem(
            format!("{K}.etcd.external"),
            "is set: hapki builds stacked etcd (one member per control-plane node from the \
             shared etcd CA); remove etcd.external",
        );
    }

    if let Some(v) = get(cc, &["encryptionAlgorithm"]) {
        if !v.as_str().is_some_and(|a| ALGORITHMS.contains(&a)) {
            f.problem(
                format!("{K}.encryptionAlgorithm"),
                format!("{} is not one of {}", show(v), ALGORITHMS.join(", ")),
            );
        }
    }
}

/// `kubernetesVersion` pinned (an air-gapped node cannot resolve a label).
fn lint_version(cc: &Value, f: &mut Findings) {
    const K: &str = CC;
    let field = format!("{K}.kubernetesVersion");
    match get(cc, &["kubernetesVersion"]) {
        None => f.problem(
            field,
            "is not set: kubeadm then resolves \"stable-1\" from dl.k8s.io, which an air-gapped \
             node cannot reach; pin the version, e.g. v1.31.2",
        ),
        Some(v) => match v.as_str() {
            Some(s) if is_pinned_version(s.trim()) => {}
            Some(s) if is_version_label(s.trim()) => f.problem(
                field,
                format!(
                    "\"{s}\" is a release label that kubeadm resolves from dl.k8s.io, which an \
                     air-gapped node cannot reach; pin the version, e.g. v1.31.2"
                ),
            ),
            _ => f.problem(
                field,
                format!("{} is not a Kubernetes version; pin one such as v1.31.2", show(v)),
            ),
        },
    }
}

/// `networking.serviceSubnet` (kubeadm's default when unset), each range checked.
fn service_subnets(cc: &Value, f: &mut Findings) -> Vec<Cidr> {
    const K: &str = CC;
    let svc_field = format!("{K}.networking.serviceSubnet");
    match get(cc, &["networking", "serviceSubnet"]) {
        None => parse_cidrs(DEFAULT_SERVICE_SUBNET).unwrap_or_default(),
        Some(v) => match v.as_str().map(parse_cidrs) {
            Some(Ok(c)) => c,
            Some(Err(bad)) => {
                f.problem(&svc_field, format!("\"{bad}\" is not a valid CIDR (e.g. 10.96.0.0/12)"));
                Vec::new()
            }
            None => {
                f.problem(&svc_field, format!("{} is not a CIDR string", show(v)));
                Vec::new()
            }
        },
    }
}

/// `networking.podSubnet`: set, valid, and disjoint from the service subnets.
fn lint_pod_subnet(cc: &Value, services: &[Cidr], f: &mut Findings) {
    const K: &str = CC;
    let pod_field = format!("{K}.networking.podSubnet");
    match get(cc, &["networking", "podSubnet"]) {
        None => f.warning(
            &pod_field,
            "is not set: kube-controller-manager then allocates no pod CIDRs, which CNI plugins \
             such as flannel need; set the CIDR your CNI uses, e.g. 10.244.0.0/16",
        ),
        Some(v) => match v.as_str().map(parse_cidrs) {
            Some(Ok(pods)) => {
                for p in &pods {
                    if !p.is_network_address() {
                        f.warning(
                            &pod_field,
                            format!(
                                "{p} has host bits set; kubeadm uses the network {}",
                                p.network()
                            ),
                        );
                    }
                    for s in services {
                        if p.overlaps(s) {
                            f.problem(
                                &pod_field,
                                format!(
                                    "{p} overlaps the service subnet {s}; pods and services need \
                                     disjoint ranges"
                                ),
                            );
                        }
                    }
                }
            }
            Some(Err(bad)) => f.problem(
                &pod_field,
                format!("\"{bad}\" is not a valid CIDR; use e.g. 10.244.0.0/16"),
            ),
            None => f.problem(&pod_field, format!("{} is not a CIDR string", show(v))),
        },
    }
}

fn lint_join(jc: &Value, f: &mut Findings) {
    const K: &str = "JoinConfiguration";
    if has_str(jc, &["controlPlane", "certificateKey"]) {
        f.problem(
            format!("{K}.controlPlane.certificateKey"),
            "is set: hapki pushes the shared PKI; a control-plane join must not download it; \
             remove the certificate key",
        );
    }
    let Some(bt) = get(jc, &["discovery", "bootstrapToken"]).filter(|v| !v.is_null()) else {
        return;
    };
    let base = format!("{K}.discovery.bootstrapToken");
    if get(bt, &["unsafeSkipCAVerification"]).and_then(Value::as_bool) == Some(true) {
        f.problem(
            format!("{base}.unsafeSkipCAVerification"),
            "is true: discovery would trust any API server; remove it and pin caCertHashes",
        );
    }
    match get(bt, &["caCertHashes"]).and_then(Value::as_sequence) {
        Some(hashes) if !hashes.is_empty() => {
            for h in hashes {
                let s = h.as_str().unwrap_or_default();
                let hex = s.strip_prefix("sha256:").unwrap_or_default();
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    f.problem(
                        format!("{base}.caCertHashes"),
                        format!("{} is not sha256:<64 hex digits>", show(h)),
                    );
                } else if hex.eq_ignore_ascii_case(EMPTY_SHA256) {
                    f.problem(
                        format!("{base}.caCertHashes"),
                        "is the SHA-256 of empty input, from a broken pipeline; compute it with \
                         `hapki pki inspect ca.crt`",
                    );
                }
            }
        }
        _ => f.problem(
            format!("{base}.caCertHashes"),
            "is empty: kubeadm refuses token discovery without a pinned CA; add the \
             sha256:<hash> of the cluster's ca.crt",
        ),
    }
    if let Some(t) = get_str(bt, &["token"]) {
        if !is_bootstrap_token(t) {
            // Never echo the token: its second half is a secret.
            f.problem(format!("{base}.token"), "is not of the form [a-z0-9]{6}.[a-z0-9]{16}");
        }
    }
    if let Some(ep) = get_str(bt, &["apiServerEndpoint"]) {
        lint_endpoint(&format!("{base}.apiServerEndpoint"), ep, f);
    }
}

/// A short rendering of a YAML value for a message.
fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("\"{s}\""),
        other => serde_yaml_ng::to_string(other)
            .map(|s| one_line(&s))
            .unwrap_or_else(|_| "the value".to_owned()),
    }
}

/// Whether `s` is a bootstrap token `[a-z0-9]{6}.[a-z0-9]{16}`.
pub(crate) fn is_bootstrap_token(s: &str) -> bool {
    let ok = |p: &str, n: usize| {
        p.len() == n && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    s.split_once('.').is_some_and(|(id, secret)| ok(id, 6) && ok(secret, 16))
}

/// kubeadm's explicit version form: `v?MAJOR.MINOR.PATCH[suffix]` (no labels).
fn is_pinned_version(s: &str) -> bool {
    let s = s.strip_prefix('v').unwrap_or(s);
    let mut parts = s.splitn(3, '.');
    let (Some(major), Some(minor), Some(rest)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let patch_len = rest.bytes().take_while(u8::is_ascii_digit).count();
    let number = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    number(major)
        && number(minor)
        && patch_len > 0
        && rest[patch_len..].bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.+".contains(&b))
        && (rest[patch_len..].is_empty() || b"-+".contains(&rest.as_bytes()[patch_len]))
}

/// Release labels kubeadm resolves over the internet: stable, latest, stable-1, latest-1.31,
/// ci/latest, release/stable, …
fn is_version_label(s: &str) -> bool {
    let s = s.rsplit('/').next().unwrap_or(s);
    ["stable", "latest"].iter().any(|l| s == *l || s.starts_with(&format!("{l}-")))
}

fn lint_endpoint(field: &str, ep: &str, f: &mut Findings) {
    if ep.contains("://") || ep.contains('/') {
        f.problem(field, format!("\"{ep}\" must be HOST:PORT without a scheme or path"));
        return;
    }
    let (host, port) = split_host_port(ep);
    match port {
        None => f.warning(
            field,
            format!(
                "\"{ep}\" has no port: kubeadm then uses the local API server's bind port, \
                 which a load balancer may not listen on; write {ep}:6443"
            ),
        ),
        Some(p) if p.parse::<u16>().map_or(true, |n| n == 0) => {
            f.problem(field, format!("\"{ep}\": port \"{p}\" is not 1-65535"));
        }
        Some(_) => {}
    }
    if host.parse::<IpAddr>().is_ok() {
        f.warning(
            field,
            format!(
                "\"{host}\" is an IP address: it is written into every API server certificate \
                 and kubeconfig and can never change later; use a DNS name"
            ),
        );
    } else if !is_dns_name(host) {
        f.problem(field, format!("\"{host}\" is neither a DNS name nor an IP address"));
    }
}

/// `host:port`, `[v6]:port`, `host`, `v6` (an IPv6 address without brackets has no port).
fn split_host_port(ep: &str) -> (&str, Option<&str>) {
    if let Some(rest) = ep.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((h, p)) => (h, p.strip_prefix(':')),
            None => (ep, None),
        };
    }
    match ep.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, Some(p)),
        _ => (ep, None),
    }
}

fn is_dns_name(h: &str) -> bool {
    let h = h.strip_suffix('.').unwrap_or(h);
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        // An all-numeric "name" is a mistyped IP address.
        && !h.split('.').all(|l| l.bytes().all(|b| b.is_ascii_digit()))
}

/// An IP network as written in a kubeadm subnet field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n` or `v6/n`.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, p) = s.trim().split_once('/')?;
        let addr: IpAddr = a.parse().ok()?;
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let prefix: u8 = p.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Cidr { addr, prefix })
    }

    /// The address as a 128-bit number and the prefix in that space (IPv4 kept apart from IPv6
    /// by the family check in [`Cidr::overlaps`]).
    fn bits(&self) -> (u128, u32) {
        match self.addr {
            IpAddr::V4(a) => (u128::from(u32::from(a)) << 96, u32::from(self.prefix)),
            IpAddr::V6(a) => (u128::from(a), u32::from(self.prefix)),
        }
    }

    fn mask(prefix: u32) -> u128 {
        if prefix == 0 {
            0
        } else {
            u128::MAX << (128 - prefix)
        }
    }

    fn network(&self) -> Cidr {
        let (bits, p) = self.bits();
        let n = bits & Self::mask(p);
        let addr = match self.addr {
            IpAddr::V4(_) => IpAddr::from(((n >> 96) as u32).to_be_bytes()),
            IpAddr::V6(_) => IpAddr::from(n.to_be_bytes()),
        };
        Cidr { addr, prefix: self.prefix }
    }

    fn is_network_address(&self) -> bool {
        self.network().addr == self.addr
    }

    /// Whether the two networks share any address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        if self.addr.is_ipv4() != other.addr.is_ipv4() {
            return false;
        }
        let (a, pa) = self.bits();
        let (b, pb) = other.bits();
        let m = Self::mask(pa.min(pb));
        a & m == b & m
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A kubeadm subnet field: one CIDR, or two comma-separated for dual stack. `Err` is the first
/// piece that is not a CIDR.
fn parse_cidrs(s: &str) -> Result<Vec<Cidr>, String> {
    s.split(',').map(|p| Cidr::parse(p).ok_or_else(|| p.trim().to_owned())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        Cidr::parse(s).unwrap()
    }

    #[test]
    fn cidr_overlap_and_parse() {
        assert!(c("10.96.0.0/12").overlaps(&c("10.100.0.0/16")));
        assert!(!c("10.96.0.0/12").overlaps(&c("10.244.0.0/16")));
        assert!(c("10.0.0.0/8").overlaps(&c("10.96.0.0/12")));
        assert!(!c("10.96.0.0/12").overlaps(&c("fd00::/8")));
        assert!(c("fd00::/48").overlaps(&c("fd00:0:0:1::/64")));
        assert!(Cidr::parse("10.244.0.0/33").is_none());
        assert!(Cidr::parse("10.244.0/16").is_none());
        assert!(Cidr::parse("10.244.0.0").is_none());
        assert!(Cidr::parse("10.244.0.0/+1").is_none());
        assert!(!c("10.244.1.0/16").is_network_address());
        assert_eq!(c("10.244.1.0/16").network().to_string(), "10.244.0.0/16");
    }

    #[test]
    fn versions_and_labels() {
        for v in ["v1.31.2", "1.31.2", "v1.31.0-rc.1", "v1.30.14+k3s1"] {
            assert!(is_pinned_version(v), "{v}");
        }
        for v in
            ["stable", "latest", "stable-1", "latest-1.31", "v1.31", "1", "ci/latest", "v1.31.x"]
        {
            assert!(!is_pinned_version(v), "{v}");
        }
        for v in ["stable", "stable-1", "latest-1.31", "ci/latest", "release/stable-1.30"] {
            assert!(is_version_label(v), "{v}");
        }
    }

    #[test]
    fn endpoints() {
        assert_eq!(split_host_port("kubeapi.test:6443"), ("kubeapi.test", Some("6443")));
        assert_eq!(split_host_port("[fd00::1]:6443"), ("fd00::1", Some("6443")));
        assert_eq!(split_host_port("fd00::1"), ("fd00::1", None));
        assert_eq!(split_host_port("kubeapi"), ("kubeapi", None));
        assert!(is_dns_name("kubeapi.test.huatai.me"));
        assert!(!is_dns_name("10.0.0"));
        assert!(!is_dns_name("-bad.example"));
        assert!(!is_dns_name("under_score.example"));
    }

    #[test]
    fn bootstrap_tokens() {
        assert!(is_bootstrap_token("abcdef.0123456789abcdef"));
        assert!(!is_bootstrap_token("ABCDEF.0123456789abcdef"));
        assert!(!is_bootstrap_token("abcdef0123456789abcdef"));
        assert!(!is_bootstrap_token("abcde.0123456789abcdef0"));
    }
}
