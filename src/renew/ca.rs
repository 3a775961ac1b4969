//! `hapki pki renew-ca --from NODE | --inventory FILE`: the CAs re-issued with the SAME keys
//! from the first master's files (read over SSH as `bundle --from` reads them, kept in memory
//! only), installed back there with the kubeconfigs that pinned the old `ca.crt` and the
//! `kube-public/cluster-info` ConfigMap; then every worker of the inventory gets the new
//! `ca.crt` and its kubelet.conf's CA data. The other control planes get the re-issue through
//! `hapki bundle` + `hapki push` (signed, atomic, installed without `--replace`); push updates
//! a worker holding the older same-key `ca.crt` through the same node script ([`install_over`]). Each node checks with openssl that what it receives has its
//! installed CA's subject and key and a later notAfter before it writes anything.

use serde::Serialize;
use time::OffsetDateTime;

use super::rfc3339;

use crate::error::{Categorized, Category};
use crate::node::{self, NodePaths};
use crate::pki::renew::{reissue, Ca};
use crate::transport::{Target, Transport};

#[derive(Debug, thiserror::Error)]
pub enum RenewCaError {
    #[error("could not read the CAs on the first master {node}: {reason}")]
    Read { node: String, reason: Box<crate::node::NodeError> },
    #[error(
        "{node} holds no {file}: a same-key re-issue needs the CA's certificate and key there"
    )]
    Missing { node: String, file: String },
    #[error("{0}")]
    Pki(#[from] crate::pki::PkiError),
}

impl Categorized for RenewCaError {
    fn category(&self) -> Category {
        match self {
            RenewCaError::Read { reason, .. } => reason.category(),
            RenewCaError::Missing { .. } => Category::Verification,
            RenewCaError::Pki(e) => e.category(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RemoteCaOptions {
    pub which: Vec<Ca>,
    pub validity: time::Duration,
    pub now: OffsetDateTime,
    pub dry_run: bool,
    pub paths: NodePaths,
    pub run_id: String,
}

/// One re-issued CA.
#[derive(Debug, Clone, Serialize)]
pub struct NewCa {
    pub file: String,
    pub old_not_after: String,
    pub new_not_after: String,
    pub spki_sha256: String,
}

/// What one node did with the new certificates.
#[derive(Debug, Clone, Serialize)]
pub struct CaNodeResult {
    pub node: String,
    pub role: String,
    pub ok: bool,
    pub message: String,
    /// Certificates replaced (and their backups), kubeconfigs updated, cluster-info's fate.
    pub lines: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RemoteCaReport {
    pub ok: bool,
    pub dry_run: bool,
    pub first_master: String,
    pub discovery_token_ca_cert_hash: Option<String>,
    pub renewed: Vec<NewCa>,
    pub nodes: Vec<CaNodeResult>,
}

/// Re-issues on `first`'s files, then installs on `first` and on every worker.
pub fn run(
    first: &Target,
    workers: &[Target],
    transport: &dyn Transport,
    opts: &RemoteCaOptions,
) -> Result<RemoteCaReport, RenewCaError> {
    let read = |reason: crate::node::NodeError| RenewCaError::Read {
        node: first.name.clone(),
        reason: Box::new(reason),
    };
    let mut session = transport.connect(first).map_err(|e| read(e.into()))?;
    let files = node::read_shared_files(session.as_mut(), &opts.paths).map_err(read)?;
    let get = |name: &str| {
        files.iter().find(|f| f.name == name).map(|f| f.bytes.as_slice()).ok_or_else(|| {
            RenewCaError::Missing { node: first.name.clone(), file: name.to_string() }
        })
    };
    let mut renewed = Vec::new();
    let mut payload = String::new();
    let mut ca_payload = String::new();
    let mut hash = None;
    for ca in &opts.which {
        let (cert, key) = (ca.cert_name(), ca.key_name());
        let old = crate::pki::parse::parse_certificate(cert, get(cert)?)?;
        let (new, pem) = reissue(cert, get(cert)?, key, get(key)?, opts.validity, opts.now)?;
        let section = ca_section(cert, &pem);
        if *ca == Ca::Ca {
            hash = Some(new.discovery_hash());
            ca_payload = section.clone();
        }
        payload.push_str(&section);
        renewed.push(NewCa {
            file: cert.to_string(),
            old_not_after: rfc3339(old.not_after),
            new_not_after: rfc3339(new.not_after),
            spki_sha256: new.public.spki_sha256(),
        });
    }
    drop(files);
    let mut report = RemoteCaReport {
        ok: true,
        dry_run: opts.dry_run,
        first_master: first.name.clone(),
        discovery_token_ca_cert_hash: hash,
        renewed,
        nodes: Vec::new(),
    };
    if opts.dry_run {
        return Ok(report);
    }
    let r = install_on(first, "first", &payload, Some(session), transport, opts);
    report.ok = r.ok;
    report.nodes.push(r);
    if !ca_payload.is_empty() && report.ok {
        for w in workers {
            let r = install_on(w, "worker", &ca_payload, None, transport, opts);
            report.ok &= r.ok;
            report.nodes.push(r);
        }
    }
    Ok(report)
}

fn install_on(
    t: &Target,
    role: &str,
    payload: &str,
    session: Option<Box<dyn crate::transport::Session>>,
    transport: &dyn Transport,
    opts: &RemoteCaOptions,
) -> CaNodeResult {
    let mut r = CaNodeResult {
        node: t.name.clone(),
        role: role.to_string(),
        ok: false,
        message: String::new(),
        lines: Vec::new(),
    };
    let mut session = match session.map(Ok).unwrap_or_else(|| transport.connect(t)) {
        Ok(s) => s,
        Err(e) => {
            r.message = e.to_string();
            return r;
        }
    };
    match install_over(session.as_mut(), role, payload, &opts.paths, &opts.run_id) {
        Err(e) => r.message = e.to_string(),
        Ok(o) => {
            r.lines = String::from_utf8_lossy(&o.stdout).lines().map(str::to_string).collect();
            r.ok = o.success();
            r.message = if r.ok {
                summary(&r.lines)
            } else {
                format!("{} (exit {})", node::stderr_tail(&o.stderr), o.code.unwrap_or(-1))
            };
        }
    }
    r
}

/// The node side of a same-key CA install (`renew_ca.sh`), on a connected node: `role` is
/// `first` or `worker`, `payload` the `=== NAME` sections ([`ca_section`]). Push uses it for a
/// worker that holds the older `ca.crt` (one way to update a worker's CA).
pub(crate) fn install_over(
    session: &mut dyn crate::transport::Session,
    role: &str,
    payload: &str,
    paths: &NodePaths,
    run_id: &str,
) -> Result<crate::transport::RemoteOutput, crate::transport::TransportError> {
    let script = crate::node::with_cluster_info(include_str!("../node/renew_ca.sh"));
    let args = [paths.kube_dir.as_str(), paths.state_dir.as_str(), role, run_id];
    session.run(&script, &args, &mut payload.as_bytes())
}

/// One certificate of `renew_ca.sh`'s stdin: its name line, then its PEM.
pub(crate) fn ca_section(name: &str, pem: &str) -> String {
    format!("=== {name}\n{pem}")
}

/// "2 certificates replaced, 5 kubeconfigs updated, cluster-info updated".
fn summary(lines: &[String]) -> String {
    let count = |p: &str| lines.iter().filter(|l| l.starts_with(p)).count();
    let mut s = format!(
        "{} certificates replaced, {} unchanged, {} kubeconfigs updated",
        count("R "),
        count("U "),
        count("K ")
    );
    if let Some(c) = lines.iter().find_map(|l| l.strip_prefix("C ")) {
        s += &format!(", cluster-info {c}");
    }
    s
}
