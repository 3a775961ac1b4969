//! Deciding what a push does: which nodes it goes to ([`targets`]), and, from a node's facts
//! alone, what it does there ([`plan`]). Pure and side-effect free, so every branch is
//! unit-tested without a node.

use crate::cluster::ClusterNode;
use crate::error::Category;
use crate::inventory::Role;
use crate::node::facts::{NodeFacts, PathKind};
use crate::pki::chain::{self, ChainCheck};
use crate::pki::renew::{self, Ca, Reissue};

use super::{NodeTarget, Payload};

/// Which nodes a push goes to, and which of them get the shared PKI. Every node given is a
/// target (it gets the artifacts its role is named in); the PKI goes to control planes only:
/// never to a worker (a worker's `ca.crt` comes with `kubeadm join`, and a CA key there is an
/// audit finding), nor to `first_master`, the node the cluster's PKI comes from. `None` when
/// the operator named the nodes: every control plane named gets the PKI.
pub fn targets(nodes: Vec<ClusterNode>, first_master: Option<&str>) -> Vec<NodeTarget> {
    nodes
        .into_iter()
        .map(|node| NodeTarget {
            pki: node.role == Role::ControlPlane && Some(node.name()) != first_master,
            node,
        })
        .collect()
}

/// What push will do on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// All eight files are there with the bundle's bytes, modes and owner: nothing is written.
    Unchanged,
    /// Install the bundle. `replacing` names shared files whose content differs (only with
    /// `--replace`, or same-key CA re-issues; they are backed up first); `reissued` the CA
    /// certificates among them that are same-key re-issues with a later notAfter (no
    /// `--replace` needed; the node also updates the kubeconfigs that hold the old `ca.crt`);
    /// `reason` says why in a few words.
    Install { replacing: Vec<String>, reissued: Vec<String>, reason: String },
    /// Leave the node exactly as it is.
    Refuse { category: Category, reason: String },
}

fn refuse(category: Category, reason: impl Into<String>) -> Plan {
    Plan::Refuse { category, reason: reason.into() }
}

/// Whether a bundle of `serial` may go on a node that last installed `facts.last_serial`: a
/// refusal naming both serials unless `allow_downgrade` (the operator's `--allow-downgrade`).
pub fn downgrade_refusal(serial: u64, facts: &NodeFacts, allow_downgrade: bool) -> Option<Plan> {
    let last = facts.last_serial.filter(|last| *last > serial && !allow_downgrade)?;
    Some(refuse(
        Category::Verification,
        format!(
            "bundle serial {serial} is older than serial {last} already installed here (downgrade refused); push a newer bundle, or add --allow-downgrade if going back is deliberate"
        ),
    ))
}

/// A shared file the login user cannot read: hapki cannot compare it, so it must not call it
/// different (and suggest --replace).
fn unreadable(facts: &NodeFacts) -> Option<Plan> {
    let (name, _) =
        facts.shared.iter().find(|(_, st)| st.kind == PathKind::File && st.sha256.is_none())?;
    let who = match (&facts.user, facts.uid) {
        (Some(u), _) => u.clone(),
        (None, Some(uid)) => format!("uid {uid}"),
        (None, None) => "the login user".into(),
    };
    Some(refuse(
        Category::NodesFailed,
        format!("cannot read {name} as {who}: log in as root or add --become"),
    ))
}

/// Decides what to do on a node. `replace` is the operator's `--replace`, `allow_downgrade`
/// their `--allow-downgrade`. Refusals come first, in order of precedence (the node's
/// directories, the serial, unreadable files, foreign leaves, an earlier same-key CA, different
/// files without `--replace`); then what is left to do.
pub fn plan(payload: &Payload, facts: &NodeFacts, replace: bool, allow_downgrade: bool) -> Plan {
    let refused = unsafe_dirs(facts)
        .or_else(|| downgrade_refusal(payload.serial, facts, allow_downgrade))
        .or_else(|| unreadable(facts));
    if let Some(refused) = refused {
        return refused;
    }
    let files = Compared::of(payload, facts, replace);
    if let Some(refused) = foreign_leaves(payload, facts).or_else(|| files.refusal(replace)) {
        return refused;
    }
    files.decide(payload.files.len(), !facts.stale_staging.is_empty())
}

/// A symlink or a non-directory where the node's directories should be.
fn unsafe_dirs(facts: &NodeFacts) -> Option<Plan> {
    if let Some(d) = facts.dirs.iter().find(|d| d.kind == PathKind::Symlink) {
        return Some(refuse(
            Category::NodesFailed,
            format!(
                "{} is a symlink: hapki never writes through one; replace it with a real directory",
                d.path
            ),
        ));
    }
    let d = facts.dirs.iter().find(|d| matches!(d.kind, PathKind::File | PathKind::Other))?;
    Some(refuse(
        Category::NodesFailed,
        format!("{} is not a directory; move it away and push again", d.path),
    ))
}

/// Per-node leaves must chain to the CAs being installed, or the join fails later.
fn foreign_leaves(payload: &Payload, facts: &NodeFacts) -> Option<Plan> {
    let mut foreign = Vec::new();
    for (name, pem) in &facts.certificates {
        if payload.file(name).is_some() {
            continue;
        }
        let Some(ca_file) = payload.file(chain::expected_ca(name)) else { continue };
        match chain::check_issued_by(pem, &ca_file.bytes) {
            ChainCheck::SignedBy => {}
            ChainCheck::ForeignIssuer(issuer) => {
                foreign.push(format!("{name} (issued by {issuer})"))
            }
            ChainCheck::Unreadable(e) => foreign.push(format!("{name} (unreadable: {e})")),
        }
    }
    (!foreign.is_empty()).then(|| {
        refuse(
            Category::NodesFailed,
            format!(
                "leaf certificates not signed by the bundle's CAs: {}; remove them (e.g. rm /etc/kubernetes/pki/apiserver.* /etc/kubernetes/pki/etcd/peer.*), keep the shared files, and push again",
                foreign.join(", ")
            ),
        )
    })
}

/// The bundle's shared files against the node's, by what each needs.
#[derive(Default)]
struct Compared {
    missing: Vec<String>,
    fix_meta: Vec<String>,
    differ: Vec<String>,
    reissued: Vec<String>,
    earlier: Vec<String>,
}

impl Compared {
    fn of(payload: &Payload, facts: &NodeFacts, replace: bool) -> Self {
        let mut c = Compared::default();
        for f in &payload.files {
            let name = f.name.clone();
            let Some(st) = facts.shared.get(&f.name) else {
                c.missing.push(name);
                continue;
            };
            match st.kind {
                PathKind::Missing => c.missing.push(name),
                PathKind::File if st.sha256.as_deref() == Some(f.sha256.as_str()) => {
                    if st.mode != Some(f.mode) || st.uid != Some(0) || st.gid != Some(0) {
                        c.fix_meta.push(name);
                    }
                }
                PathKind::File => match reissue_of(&f.name, &f.bytes, facts) {
                    Reissue::Later => c.reissued.push(name),
                    Reissue::NotLater if !replace => c.earlier.push(name),
                    _ => c.differ.push(name),
                },
                PathKind::Symlink => c.differ.push(format!("{name} (a symlink)")),
                PathKind::Dir | PathKind::Other => {
                    c.differ.push(format!("{name} (not a regular file)"))
                }
            }
        }
        c
    }

    fn refusal(&self, replace: bool) -> Option<Plan> {
        if !self.earlier.is_empty() {
            return Some(refuse(
                Category::Verification,
                format!(
                    "the bundle's {} has the same key as this node's but a notAfter no later than it (a downgrade); bundle the re-issued CA (hapki pki renew-ca), or push with --replace if going back is deliberate",
                    self.earlier.join(", ")
                ),
            ));
        }
        (!self.differ.is_empty() && !replace).then(|| {
            refuse(
                Category::NodesFailed,
                format!(
                    "holds different shared files: {}; the node may belong to another cluster — check it, then push with --replace to back them up and replace them",
                    self.differ.join(", ")
                ),
            )
        })
    }

    /// `total` is the bundle's number of shared files; `stale_staging` whether an interrupted
    /// push left staging behind.
    fn decide(self, total: usize, stale_staging: bool) -> Plan {
        let Compared { missing, fix_meta, differ, reissued, .. } = self;
        if differ.is_empty() && reissued.is_empty() && missing.is_empty() && fix_meta.is_empty() {
            if !stale_staging {
                return Plan::Unchanged;
            }
            return Plan::Install {
                replacing: Vec::new(),
                reissued: Vec::new(),
                reason: "clean up an interrupted push".into(),
            };
        }
        let reason = if !reissued.is_empty() {
            let mut r = format!("install the same-key re-issue of {}", reissued.join(", "));
            if !differ.is_empty() {
                r.push_str(&format!("; replace {}", differ.join(", ")));
            }
            r
        } else if !differ.is_empty() {
            format!("replace {}", differ.join(", "))
        } else if missing.len() == total {
            "install".to_string()
        } else if !missing.is_empty() {
            format!("add {}", missing.join(", "))
        } else {
            format!("fix mode or owner of {}", fix_meta.join(", "))
        };
        let mut replacing = differ;
        replacing.extend(reissued.iter().cloned());
        Plan::Install { replacing, reissued, reason }
    }
}

/// Whether the bundle's `name` (`bytes`) is a same-key re-issue of the CA certificate the node
/// holds; [`Reissue::No`] for any other file.
fn reissue_of(name: &str, bytes: &[u8], facts: &NodeFacts) -> Reissue {
    match (Ca::of_cert(name), facts.certificates.get(name)) {
        (Some(_), Some(installed)) => renew::classify_reissue(installed, bytes),
        _ => Reissue::No,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::facts::PathState;
    use crate::pki::fingerprint::sha256_hex;
    use crate::push::PayloadFile;
    use crate::transport::Target;

    fn payload() -> Payload {
        let files = crate::pki::SHARED_FILES
            .iter()
            .map(|f| {
                let bytes = format!("content of {}", f.name).into_bytes();
                PayloadFile { name: f.name.into(), mode: f.mode, sha256: sha256_hex(&bytes), bytes }
            })
            .collect();
        Payload {
            principal: "ops".into(),
            allowed_signers: String::new(),
            manifest_json: Vec::new(),
            sha256sums: Vec::new(),
            signature: Vec::new(),
            serial: 100,
            files,
        }
    }

    fn state(kind: PathKind, mode: u32, sha: Option<&str>) -> PathState {
        PathState {
            path: String::new(),
            kind,
            mode: Some(mode),
            uid: Some(0),
            gid: Some(0),
            size: None,
            sha256: sha.map(str::to_string),
        }
    }

    fn installed(p: &Payload) -> NodeFacts {
        let mut f = NodeFacts::default();
        for file in &p.files {
            f.shared
                .insert(file.name.clone(), state(PathKind::File, file.mode, Some(&file.sha256)));
        }
        f
    }

    #[test]
    fn the_pki_goes_to_control_planes_but_never_the_first_master_nor_workers() {
        let node = |name: &str, role| ClusterNode {
            target: Target::new(name, "127.0.0.1", "/dev/null".into()),
            role,
            address: "127.0.0.1".into(),
            advertise_address: None,
        };
        let nodes = || {
            vec![
                node("m1", Role::ControlPlane),
                node("m2", Role::ControlPlane),
                node("w1", Role::Worker),
            ]
        };
        let pki = |ts: Vec<NodeTarget>| {
            ts.iter().map(|t| (t.node.name().to_string(), t.pki)).collect::<Vec<_>>()
        };
        let s = |n: &str| n.to_string();
        assert_eq!(
            pki(targets(nodes(), Some("m1"))),
            [(s("m1"), false), (s("m2"), true), (s("w1"), false)]
        );
        assert_eq!(
            pki(targets(nodes(), None)),
            [(s("m1"), true), (s("m2"), true), (s("w1"), false)]
        );
    }

    #[test]
    fn empty_node_gets_an_install() {
        let p = payload();
        let plan = plan(&p, &NodeFacts::default(), false, false);
        assert_eq!(
            plan,
            Plan::Install { replacing: vec![], reissued: vec![], reason: "install".into() }
        );
    }

    #[test]
    fn identical_node_is_unchanged_and_wrong_mode_is_fixed() {
        let p = payload();
        let mut f = installed(&p);
        assert_eq!(plan(&p, &f, false, false), Plan::Unchanged);
        f.shared.get_mut("ca.key").unwrap().mode = Some(0o644);
        assert!(
            matches!(plan(&p, &f, false, false), Plan::Install { replacing, .. } if replacing.is_empty())
        );
    }

    #[test]
    fn different_ca_is_refused_unless_replace() {
        let p = payload();
        let mut f = installed(&p);
        f.shared.get_mut("ca.crt").unwrap().sha256 = Some("b".repeat(64));
        assert!(
            matches!(plan(&p, &f, false, false), Plan::Refuse { category: Category::NodesFailed, reason } if reason.contains("ca.crt") && reason.contains("--replace"))
        );
        assert!(
            matches!(plan(&p, &f, true, false), Plan::Install { replacing, .. } if replacing == vec!["ca.crt".to_string()])
        );
    }

    #[test]
    fn symlinks_are_never_written_through_without_replace() {
        let p = payload();
        let mut f = installed(&p);
        f.shared.insert("ca.key".into(), state(PathKind::Symlink, 0o777, None));
        assert!(matches!(plan(&p, &f, false, false), Plan::Refuse { .. }));
        let mut f = NodeFacts::default();
        f.dirs.push(PathState {
            path: "/etc/kubernetes/pki".into(),
            ..state(PathKind::Symlink, 0o777, None)
        });
        assert!(
            matches!(plan(&p, &f, true, false), Plan::Refuse { reason, .. } if reason.contains("symlink"))
        );
    }

    #[test]
    fn rollback_is_refused_as_a_verification_failure() {
        let p = payload();
        let mut f = installed(&p);
        f.last_serial = Some(101);
        assert!(matches!(
            plan(&p, &f, true, false),
            Plan::Refuse { category: Category::Verification, .. }
        ));
        assert!(
            matches!(plan(&p, &f, true, true), Plan::Install { .. } | Plan::Unchanged),
            "--allow-downgrade lets it through"
        );
        f.last_serial = Some(100);
        assert_eq!(plan(&p, &f, false, false), Plan::Unchanged);
    }

    #[test]
    fn an_unreadable_key_names_the_user_and_the_fix_not_replace() {
        let p = payload();
        let mut f = installed(&p);
        f.shared.get_mut("ca.key").unwrap().sha256 = None;
        f.user = Some("hapki-test".into());
        assert!(
            matches!(plan(&p, &f, true, false), Plan::Refuse { category: Category::NodesFailed, reason } if reason == "cannot read ca.key as hapki-test: log in as root or add --become")
        );
    }
}
