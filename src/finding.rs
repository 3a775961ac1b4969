//! What `preflight` and `audit` report: one [`Finding`] per thing wrong on one node (or on the
//! cluster as a whole, node `*`), its [`FindingKind`] serialised under the names the interface
//! document promises (kubeadm's own preflight check names where kubeadm has one).

use std::fmt;

use serde::{Serialize, Serializer};

use crate::error::Category;

/// Whether a finding fails the command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Reported, but the command still passes.
    Warning,
    /// The command fails (exit 6, or the category of the failure behind it).
    Problem,
}

/// What a finding is about. Serialised (and displayed) as its interface name: `drift`,
/// `key-on-worker`, `Port-6443`, `FileAvailable--etc-kubernetes-manifests-etcd.yaml`, ….
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum FindingKind {
    // Both commands.
    /// The node could not be reached or read; the others were still checked.
    Unreachable,
    /// A shared private key on a worker.
    KeyOnWorker,

    // audit
    Missing,
    Drift,
    Mode,
    Owner,
    Expiring,
    Expired,
    Issuer,
    KubeconfigCa,
    Unreadable,
    ImageMissing,
    ImageDigest,
    ImageUnpinned,
    /// A server presents another certificate than its file (renewed, never reloaded).
    StaleServedCert,

    // preflight: kubeadm's checks, under kubeadm's names.
    /// `Port-N`: the port is in use.
    Port(u16),
    /// `FileAvailable--etc-kubernetes-manifests-NAME`: a static-pod manifest exists.
    ManifestExists(String),
    /// `DirAvailable--var-lib-etcd`: stale etcd data.
    EtcdDataExists,
    /// `FileAvailable--etc-kubernetes-NAME` (kubelet.conf, bootstrap-kubelet.conf).
    KubeconfigExists(String),
    /// `FileAvailable--etc-kubernetes-pki-ca.crt` on a worker.
    WorkerCaExists,
    // preflight: what kubeadm does not check.
    AdminConf,
    CniConfig,
    SharedFiles,
    KeyPair,
    LeafChain,
    ClockSkew,
    /// kubeadm is not installed.
    Kubeadm,
    /// kubelet is not installed.
    Kubelet,
    KubeadmVersion,
    KubeletVersion,
    Endpoint,
    EndpointIp,
    EndpointDns,
}

impl fmt::Display for FindingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use FindingKind as K;
        // `pad`, so that a width (`{:14}` in a table) applies.
        let name = match self {
            K::Port(p) => return f.pad(&format!("Port-{p}")),
            K::ManifestExists(m) => {
                return f.pad(&format!("FileAvailable--etc-kubernetes-manifests-{m}"))
            }
            K::KubeconfigExists(c) => return f.pad(&format!("FileAvailable--etc-kubernetes-{c}")),
            K::Unreachable => "unreachable",
            K::KeyOnWorker => "key-on-worker",
            K::Missing => "missing",
            K::Drift => "drift",
            K::Mode => "mode",
            K::Owner => "owner",
            K::Expiring => "expiring",
            K::Expired => "expired",
            K::Issuer => "issuer",
            K::KubeconfigCa => "kubeconfig-ca",
            K::Unreadable => "unreadable",
            K::ImageMissing => "image-missing",
            K::ImageDigest => "image-digest",
            K::ImageUnpinned => "image-unpinned",
            K::StaleServedCert => "stale-served-cert",
            K::EtcdDataExists => "DirAvailable--var-lib-etcd",
            K::WorkerCaExists => "FileAvailable--etc-kubernetes-pki-ca.crt",
            K::AdminConf => "admin-conf",
            K::CniConfig => "cni-config",
            K::SharedFiles => "shared-files",
            K::KeyPair => "key-pair",
            K::LeafChain => "leaf-chain",
            K::ClockSkew => "clock-skew",
            K::Kubeadm => "kubeadm",
            K::Kubelet => "kubelet",
            K::KubeadmVersion => "kubeadm-version",
            K::KubeletVersion => "kubelet-version",
            K::Endpoint => "endpoint",
            K::EndpointIp => "endpoint-ip",
            K::EndpointDns => "endpoint-dns",
        };
        f.pad(name)
    }
}

impl Serialize for FindingKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One thing wrong, on one node. JSON: `{node, file, kind, message}` (the interface's fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The node's name, or `*` for the cluster as a whole.
    pub node: String,
    /// The file it is about (relative to the pki directory, a kubeconfig or manifest name, an
    /// artifact's destination), when there is one.
    pub file: Option<String>,
    pub kind: FindingKind,
    /// One line: what is wrong and what to do about it.
    pub message: String,
    #[serde(skip)]
    pub severity: Severity,
    /// Which exit-code class the finding puts the command in: [`Category::Findings`], or for
    /// an unreachable node the category of the failure (a changed host key is
    /// [`Category::HostKey`]).
    #[serde(skip)]
    pub category: Category,
}

impl Finding {
    /// A problem (not a warning) of category [`Category::Findings`].
    pub fn new(
        node: impl Into<String>,
        file: Option<&str>,
        kind: FindingKind,
        message: impl Into<String>,
    ) -> Self {
        Finding {
            node: node.into(),
            file: file.map(str::to_string),
            kind,
            message: message.into(),
            severity: Severity::Problem,
            category: Category::Findings,
        }
    }

    /// The same finding as a warning: reported, not failing.
    pub fn warning(mut self) -> Self {
        self.severity = Severity::Warning;
        self
    }

    /// A node whose facts could not be read, `reason` the category of why. An unreachable
    /// node is a finding like any other (exit 6), except for a host key that is unknown or
    /// changed: that stays [`Category::HostKey`] (exit 4), as for every other command.
    pub fn unreachable(node: &str, reason: Category, message: impl Into<String>) -> Self {
        let category = if reason == Category::HostKey { reason } else { Category::Findings };
        Finding { category, ..Finding::new(node, None, FindingKind::Unreachable, message) }
    }

    pub fn is_warning(&self) -> bool {
        self.severity == Severity::Warning
    }
}

/// The category that decides the exit code of a report with these findings (warnings do not
/// count), `None` when nothing failed.
pub fn category(findings: &[Finding]) -> Option<Category> {
    Category::worst(findings.iter().filter(|f| !f.is_warning()).map(|f| f.category))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_serialise_under_their_interface_names() {
        let cases = [
            (FindingKind::KubeconfigCa, "kubeconfig-ca"),
            (FindingKind::KeyOnWorker, "key-on-worker"),
            (FindingKind::Port(10250), "Port-10250"),
            (
                FindingKind::ManifestExists("etcd.yaml".into()),
                "FileAvailable--etc-kubernetes-manifests-etcd.yaml",
            ),
            (
                FindingKind::KubeconfigExists("kubelet.conf".into()),
                "FileAvailable--etc-kubernetes-kubelet.conf",
            ),
            (FindingKind::EtcdDataExists, "DirAvailable--var-lib-etcd"),
            (FindingKind::KubeadmVersion, "kubeadm-version"),
        ];
        for (kind, name) in cases {
            assert_eq!(serde_json::to_value(&kind).unwrap(), serde_json::json!(name));
        }
        let f = Finding::new("n1", None, FindingKind::CniConfig, "m");
        let v = serde_json::to_value(&f).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"node": "n1", "file": null, "kind": "cni-config", "message": "m"})
        );
    }

    #[test]
    fn a_host_key_failure_outranks_findings_and_warnings_do_not_count() {
        let drift = Finding::new("a", Some("ca.crt"), FindingKind::Drift, "x");
        let hk = Finding::unreachable("b", Category::HostKey, "changed");
        let warn = Finding::new("*", None, FindingKind::EndpointIp, "ip").warning();
        assert_eq!(category(&[drift.clone(), hk]), Some(Category::HostKey));
        assert_eq!(category(&[drift]), Some(Category::Findings));
        assert_eq!(category(&[warn]), None);
        let down = Finding::unreachable("c", Category::NodesFailed, "connection refused");
        assert_eq!(category(&[down]), Some(Category::Findings), "a node down is exit 6");
    }
}
