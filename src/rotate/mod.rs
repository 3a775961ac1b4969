//! `hapki rotate`: the cluster's CAs (`ca`, `front-proxy-ca`, `etcd/ca`) and the
//! service-account key pair replaced by new ones in phases, each its own run, with no request
//! failing on the way (issue 15; the design is in docs and [`material::desired`]'s table):
//!
//! - prepare: new material generated here, kept with the old in the first master's state
//!   directory (`/etc/kubernetes/hapki/rotate`, root-only); nothing else changes.
//! - trust-both: every node trusts old and new (old first); keys still the old ones.
//! - switch: the new keys sign (new first in the bundles); the leaves are re-issued by
//!   `kubeadm certs renew all`, which signs with the first certificate of each CA file.
//! - drain: read-only, what still depends on the old material.
//! - finalize: the old CAs and the old `sa.pub` removed everywhere.
//!
//! Control planes one at a time (the first master first, every etcd member healthy before
//! each), restarted as `hapki renew` restarts them (src/node/restart.sh); then workers
//! (`ca.crt` and their kubeconfigs' CA data only). Each node step converges: a node already in
//! the phase's state reports `unchanged`, and a node that was interrupted is finished by the
//! next run (a marker on the node keeps an unfinished restart owed).

pub mod drain;
pub mod material;
pub(crate) mod remote;
pub mod state;

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;

use crate::bundle::{CreateOptions, Protection};
use crate::cluster::ClusterNode;
use crate::error::{Categorized, Category};
use crate::inventory::Role;
use crate::node::NodePaths;
use crate::pki::Algorithm;
use crate::renew::{rfc3339, ServedCheck};
use crate::transport::{Session, Transport};
use drain::{DrainItem, DrainReport};
use material::{Files, Part};
use remote::{Call, Loaded};
use state::{NodeState, Phase, Plan, State};

#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error("no control plane in the selection: the rotation's state lives on the first master")]
    NoControlPlane,
    #[error("{0}")]
    Refused(String),
    #[error("the first master {node}: {reason}")]
    FirstMaster { node: String, reason: String, category: Category },
    #[error("{0}")]
    Pki(#[from] crate::pki::PkiError),
    #[error("{0}")]
    Bundle(#[from] crate::bundle::BundleError),
}

impl Categorized for RotateError {
    fn category(&self) -> Category {
        match self {
            RotateError::NoControlPlane | RotateError::Refused(_) => Category::Usage,
            RotateError::FirstMaster { category, .. } => *category,
            RotateError::Pki(e) => e.category(),
            RotateError::Bundle(e) => e.category(),
        }
    }
}

/// prepare's new material also written as an ordinary signed bundle.
pub struct BundleRequest {
    pub key: ssh_key::PrivateKey,
    pub protection: Protection,
    pub out: PathBuf,
    pub create: CreateOptions,
}

pub struct RotateOptions {
    /// Run every phase up to this one; `None`: the next one only.
    pub to: Option<Phase>,
    pub which: Vec<Part>,
    /// `None`: the current `ca.crt`'s algorithm.
    pub algorithm: Option<Algorithm>,
    pub validity: time::Duration,
    pub bundle: Option<BundleRequest>,
    pub dry_run: bool,
    pub abort: bool,
    pub status: bool,
    /// drain: poll every `poll` until clear.
    pub wait: bool,
    pub poll: Duration,
    pub stop_timeout: Duration,
    pub restart_timeout: Duration,
    pub paths: NodePaths,
    pub run_id: String,
    pub now: OffsetDateTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    Done,
    Unchanged,
    Planned,
    Skipped,
    Failed,
}

impl NodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Done => "done",
            NodeStatus::Unchanged => "unchanged",
            NodeStatus::Planned => "planned",
            NodeStatus::Skipped => "skipped",
            NodeStatus::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub file: String,
    pub what: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeResult {
    pub node: String,
    pub role: String,
    pub status: NodeStatus,
    pub message: String,
    pub changes: Vec<Change>,
    pub served: Vec<ServedCheck>,
    /// What the node did, in order (files written, components moved out and back, waits).
    pub steps: Vec<String>,
    #[serde(skip)]
    pub category: Option<Category>,
}

/// "LAST STDERR LINE (exit N)".
fn failure(out: &crate::transport::RemoteOutput) -> String {
    let code = out.code.unwrap_or(-1);
    format!("{} (exit {code})", crate::node::stderr_tail(&out.stderr))
}

#[derive(Debug, Clone, Serialize)]
pub struct RotateReport {
    pub ok: bool,
    /// The phase this run ran (the last one, with `--to`).
    pub phase: Option<Phase>,
    pub dry_run: bool,
    pub rotation_id: Option<String>,
    pub message: String,
    pub nodes: Vec<NodeResult>,
    pub discovery_token_ca_cert_hash: Option<String>,
    pub drain: Option<DrainReport>,
    pub state: Option<State>,
    /// prepare with `--out`: the bundle written.
    pub bundle: Option<String>,
    #[serde(skip)]
    pub category: Option<Category>,
}

impl RotateReport {
    fn new(phase: Option<Phase>, dry_run: bool, message: impl Into<String>) -> Self {
        RotateReport {
            ok: true,
            phase,
            dry_run,
            rotation_id: None,
            message: message.into(),
            nodes: Vec::new(),
            discovery_token_ca_cert_hash: None,
            drain: None,
            state: None,
            bundle: None,
            category: None,
        }
    }

    fn fail(&mut self, category: Category, message: impl Into<String>) {
        self.ok = false;
        self.category = Some(category);
        self.message = message.into();
    }
}

pub use crate::renew::Progress;

/// Runs what the state and the options ask for (see the module docs).
pub fn run(
    nodes: &[ClusterNode],
    transport: &dyn Transport,
    opts: &RotateOptions,
    progress: Progress,
) -> Result<RotateReport, RotateError> {
    let first = crate::cluster::first_master(nodes).ok_or(RotateError::NoControlPlane)?;
    let mut r = Runner { nodes, transport, opts, progress, first, sessions: HashMap::new() };
    let mut loaded = r.read_state()?;
    if opts.status {
        let mut rep = RotateReport::new(loaded.as_ref().map(|l| l.state.phase_done), false, "");
        rep.message = match &loaded {
            None => "no rotation has been prepared".into(),
            Some(l) => format!("rotation {}: {} done", l.state.id, l.state.phase_done.as_str()),
        };
        rep.rotation_id = loaded.as_ref().map(|l| l.state.id.clone());
        rep.state = loaded.map(|l| l.state);
        return Ok(rep);
    }
    if opts.abort {
        if let Some(why) = state::abort_refusal(loaded.as_ref().map(|l| &l.state)) {
            return Err(RotateError::Refused(format!("--abort refused: {why}")));
        }
        return r.node_phase(Phase::Aborted, &mut loaded);
    }
    let phases = match state::plan(loaded.as_ref().map(|l| &l.state), opts.to) {
        Plan::Nothing(why) => {
            let mut rep =
                RotateReport::new(loaded.as_ref().map(|l| l.state.phase_done), opts.dry_run, why);
            rep.rotation_id = loaded.as_ref().map(|l| l.state.id.clone());
            rep.state = loaded.map(|l| l.state);
            return Ok(rep);
        }
        Plan::Run(p) => p,
    };
    let mut report = RotateReport::new(None, opts.dry_run, "");
    for p in phases {
        (r.progress)("*", &format!("phase {}", p.as_str()));
        report = match p {
            Phase::Prepare => r.prepare(&mut loaded)?,
            Phase::Drain => r.drain(&mut loaded)?,
            _ => r.node_phase(p, &mut loaded)?,
        };
        if !report.ok || opts.dry_run {
            break;
        }
    }
    Ok(report)
}

struct Runner<'a> {
    nodes: &'a [ClusterNode],
    transport: &'a dyn Transport,
    opts: &'a RotateOptions,
    progress: Progress<'a>,
    first: usize,
    sessions: HashMap<usize, Box<dyn Session>>,
}

/// The rotated parts named in the state.
fn parts(s: &State) -> Vec<Part> {
    Part::ALL.into_iter().filter(|p| s.rotates(p.as_str())).collect()
}

impl Runner<'_> {
    fn now(&self) -> String {
        rfc3339(OffsetDateTime::now_utc())
    }

    fn session(
        &mut self,
        i: usize,
    ) -> Result<&mut Box<dyn Session>, crate::transport::TransportError> {
        Ok(match self.sessions.entry(i) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(v) => v.insert(self.transport.connect(&self.nodes[i].target)?),
        })
    }

    fn call(&self, i: usize, phase: Phase) -> Call {
        let n = &self.nodes[i];
        let role = match (i == self.first, n.role) {
            (true, _) => "first",
            (false, Role::ControlPlane) => "control-plane",
            (false, Role::Worker) => "worker",
        };
        Call {
            paths: self.opts.paths.clone(),
            address: n.advertise_address.clone().unwrap_or_else(|| n.address.clone()),
            limits: [self.opts.stop_timeout, self.opts.restart_timeout]
                .map(|d| d.as_secs().max(1).to_string()),
            run_id: self.opts.run_id.clone(),
            role,
            phase,
        }
    }

    /// Runs `op` on node `i`; a transport failure is an `Err` with its category.
    fn exec_out(
        &mut self,
        i: usize,
        phase: Phase,
        op: &str,
        stdin: &[u8],
    ) -> Result<crate::transport::RemoteOutput, (Category, String)> {
        let call = self.call(i, phase);
        let s = self.session(i).map_err(|e| (e.category(), e.to_string()))?;
        call.run(s.as_mut(), op, stdin).map_err(|e| (e.category(), e.to_string()))
    }

    /// [`Runner::exec_out`], a non-zero exit an `Err` too (its last stderr line).
    fn exec(
        &mut self,
        i: usize,
        phase: Phase,
        op: &str,
        stdin: &[u8],
    ) -> Result<Vec<u8>, (Category, String)> {
        let out = self.exec_out(i, phase, op, stdin)?;
        if !out.success() {
            return Err((Category::NodesFailed, failure(&out)));
        }
        Ok(out.stdout)
    }

    fn first_err(&self, (category, reason): (Category, String)) -> RotateError {
        RotateError::FirstMaster {
            node: self.nodes[self.first].name().to_string(),
            reason,
            category,
        }
    }

    fn read_state(&mut self) -> Result<Option<Loaded>, RotateError> {
        let out = self
            .exec(self.first, Phase::Prepare, "read-state", b"")
            .map_err(|e| self.first_err(e))?;
        remote::parse_state(&out).map_err(|e| self.first_err((Category::Verification, e)))
    }

    fn save(&mut self, payload: &[u8]) -> Result<(), RotateError> {
        self.exec(self.first, Phase::Prepare, "write-state", payload)
            .map(drop)
            .map_err(|e| self.first_err(e))
    }

    /// The first master's eight files, each rotated part's pair required.
    fn read_old(&mut self) -> Result<Files, RotateError> {
        let opts = self.opts;
        let first = self.nodes[self.first].name().to_string();
        let err = |reason: String, category: Category| RotateError::FirstMaster {
            node: first.clone(),
            reason,
            category,
        };
        let s = self.session(self.first).map_err(|e| err(e.to_string(), e.category()))?;
        let read = crate::node::read_shared_files(s.as_mut(), &opts.paths)
            .map_err(|e| err(e.to_string(), e.category()))?;
        let old: Files = read.into_iter().map(|f| (f.name, f.bytes)).collect();
        for p in &opts.which {
            if let Some(f) =
                [p.public_file(), p.key_file()].into_iter().find(|f| !old.contains_key(*f))
            {
                let pki = opts.paths.pki_dir();
                return Err(RotateError::Refused(format!("{first} holds no {pki}/{f}: a rotation starts from the cluster's current files")));
            }
        }
        Ok(old)
    }

    /// `--algorithm`, else the current ca.crt's.
    fn algorithm(&self, old: &Files) -> Result<Algorithm, RotateError> {
        if let Some(a) = self.opts.algorithm {
            return Ok(a);
        }
        let pem = old.get("ca.crt").map_or(&[][..], |v| v);
        let ca = crate::pki::parse::parse_certificate("ca.crt", pem)?;
        Ok(Algorithm::of_key(ca.public.algorithm).unwrap_or_default())
    }

    /// The old files with the rotated parts' replaced by freshly generated ones.
    fn generate(&self, old: &Files, alg: Algorithm) -> Result<Files, RotateError> {
        let opts = self.opts;
        let mut new = old.clone();
        for (name, pem) in crate::pki::generate::generate_files(alg, opts.validity, opts.now)? {
            let part =
                Part::ALL.into_iter().find(|p| p.public_file() == name || p.key_file() == name);
            if part.is_some_and(|p| opts.which.contains(&p)) {
                new.insert(name.to_string(), pem.into_bytes());
            }
        }
        Ok(new)
    }

    /// A new rotation's state (the history of earlier ones kept).
    fn new_state(
        &self,
        old: &Files,
        new: &Files,
        alg: Algorithm,
        mut history: Vec<state::HistoryEntry>,
    ) -> Result<State, RotateError> {
        let opts = self.opts;
        let names: Vec<String> = opts.which.iter().map(|p| p.as_str().to_string()).collect();
        let now = rfc3339(opts.now);
        let what = format!("new {} generated ({alg})", names.join(", "));
        history.push(state::HistoryEntry {
            at: now.clone(),
            phase: Phase::Prepare,
            node: None,
            what,
        });
        Ok(State {
            id: opts.run_id.clone(),
            which: names,
            algorithm: alg.to_string(),
            created_at: now,
            phase_done: Phase::Prepare,
            switch_started: false,
            nodes: Default::default(),
            old: material::fingerprints(old, &opts.which)?,
            new: material::fingerprints(new, &opts.which)?,
            history,
        })
    }

    /// `--sign-key/--out`: the new material as an ordinary signed bundle.
    fn write_bundle(&self, new: &Files) -> Result<Option<String>, RotateError> {
        let Some(b) = &self.opts.bundle else { return Ok(None) };
        let files: Vec<crate::pki::PkiFile> = new
            .iter()
            .map(|(n, b)| crate::pki::PkiFile { name: n.clone(), bytes: b.clone(), mode: None })
            .collect();
        crate::bundle::create(Some(&files), &[], &b.key, &b.create, &b.protection, &b.out)?;
        Ok(Some(b.out.display().to_string()))
    }

    fn prepare(&mut self, loaded: &mut Option<Loaded>) -> Result<RotateReport, RotateError> {
        let opts = self.opts;
        let first = self.nodes[self.first].name().to_string();
        let mut rep = RotateReport::new(Some(Phase::Prepare), opts.dry_run, "");
        let old = self.read_old()?;
        let alg = self.algorithm(&old)?;
        let names: Vec<&str> = opts.which.iter().map(|p| p.as_str()).collect();
        let names = names.join(", ");
        if opts.dry_run {
            let (days, k) = (opts.validity.whole_days(), &opts.paths.kube_dir);
            rep.message = format!("would generate new {names} ({alg}, CAs valid {days} days) into {k}/hapki/rotate on {first}; nothing on the nodes changes");
            return Ok(rep);
        }
        let new = self.generate(&old, alg)?;
        let history = loaded.take().map(|l| l.state.history).unwrap_or_default();
        let st = self.new_state(&old, &new, alg, history)?;
        rep.bundle = self.write_bundle(&new)?;
        self.save(&remote::state_payload(&st, Some((&old, &new))))?;
        rep.message = format!(
            "prepared rotation {} of {names} ({alg}) on {first}; next: hapki rotate (trust-both)",
            st.id
        );
        rep.rotation_id = Some(st.id.clone());
        rep.state = Some(st.clone());
        *loaded = Some(Loaded { state: st, old, new });
        Ok(rep)
    }

    /// The nodes in the order a phase visits them: control planes (the first master first),
    /// then workers.
    fn order(&self) -> Vec<usize> {
        let mut v = vec![self.first];
        v.extend(
            (0..self.nodes.len())
                .filter(|&i| i != self.first && self.nodes[i].role == Role::ControlPlane),
        );
        v.extend((0..self.nodes.len()).filter(|&i| self.nodes[i].role == Role::Worker));
        v
    }

    fn node_phase(
        &mut self,
        phase: Phase,
        loaded: &mut Option<Loaded>,
    ) -> Result<RotateReport, RotateError> {
        let mut l = loaded.take().ok_or_else(|| {
            RotateError::Refused(
                "no rotation is prepared: run `hapki rotate` (prepare) first".into(),
            )
        })?;
        let res = self.node_phase_with(phase, &mut l);
        *loaded = Some(l);
        res
    }

    fn node_phase_with(
        &mut self,
        phase: Phase,
        l: &mut Loaded,
    ) -> Result<RotateReport, RotateError> {
        let opts = self.opts;
        let mut rep = RotateReport::new(Some(phase), opts.dry_run, "");
        rep.rotation_id = Some(l.state.id.clone());
        if !self.may_start(phase, l, &mut rep)? {
            return Ok(rep);
        }
        let mut stop: Option<String> = None;
        for i in self.order() {
            let res = match &stop {
                Some(why) => self.result(i, phase, NodeStatus::Skipped, why.clone()),
                None => self.node_step(i, phase, l)?,
            };
            let finished = matches!(res.status, NodeStatus::Done | NodeStatus::Unchanged);
            if stop.is_none() && !finished && !opts.dry_run {
                stop = Some(format!("not touched: {} did not finish {}", res.node, phase.as_str()));
            }
            rep.nodes.push(res);
        }
        let failed = rep.nodes.iter().find(|n| {
            n.status == NodeStatus::Failed || (n.status == NodeStatus::Skipped && !opts.dry_run)
        });
        if let Some(f) = failed {
            let cat = f.category.unwrap_or(Category::NodesFailed);
            let (p, node, why) = (phase.as_str(), &f.node, &f.message);
            let msg =
                format!("{p} stopped at {node}: {why}; rerun hapki rotate to resume from there");
            rep.fail(cat, msg);
            rep.state = Some(l.state.clone());
            return Ok(rep);
        }
        if opts.dry_run {
            rep.message = format!("{}: what would change on each node", phase.as_str());
            return Ok(rep);
        }
        self.after_nodes(phase, l, &mut rep)?;
        Ok(rep)
    }

    /// What must hold before a phase touches a node: finalize only once drain is clear; switch
    /// marks the state (no --abort from now on) before its first node.
    fn may_start(
        &mut self,
        phase: Phase,
        l: &mut Loaded,
        rep: &mut RotateReport,
    ) -> Result<bool, RotateError> {
        if phase == Phase::Finalize {
            let d = self.drain_once(l, false);
            if !d.clear {
                let n = d.items.len();
                rep.fail(Category::Usage, format!("finalize refused: drain still finds {n} dependents of the old material (listed); fix them and run hapki rotate --to drain"));
                rep.drain = Some(d);
                return Ok(false);
            }
        }
        if phase == Phase::Switch && !self.opts.dry_run && !l.state.switch_started {
            l.state.switch_started = true;
            let at = self.now();
            l.state.record(&at, Phase::Switch, None, "switch started: --abort no longer possible");
            self.save(&remote::state_payload(&l.state, None))?;
        }
        Ok(true)
    }

    fn result(&self, i: usize, phase: Phase, status: NodeStatus, message: String) -> NodeResult {
        NodeResult {
            node: self.nodes[i].name().to_string(),
            role: self.call(i, phase).role.to_string(),
            status,
            message,
            changes: Vec::new(),
            served: Vec::new(),
            steps: Vec::new(),
            category: None,
        }
    }

    /// One node's part of a phase: nothing when it already has it, its plan with --dry-run,
    /// else the quorum gate (control planes), the apply, and the state recording it.
    fn node_step(
        &mut self,
        i: usize,
        phase: Phase,
        l: &mut Loaded,
    ) -> Result<NodeResult, RotateError> {
        let dry = self.opts.dry_run;
        let name = self.nodes[i].name().to_string();
        if l.state.node_done(&name) == Some(phase) && !dry {
            let why = format!("{} already done here", phase.as_str());
            return Ok(self.result(i, phase, NodeStatus::Unchanged, why));
        }
        let payload = match self.payload(i, phase, l) {
            Ok(p) => p,
            Err((c, m)) => {
                let mut res = self.result(i, phase, NodeStatus::Failed, m);
                res.category = Some(c);
                return Ok(res);
            }
        };
        if dry {
            return Ok(self.plan_one(i, phase, &payload));
        }
        if self.nodes[i].role == Role::ControlPlane {
            if let Err(why) = self.gate() {
                return Ok(self.result(i, phase, NodeStatus::Skipped, why));
            }
        }
        let mut res = self.result(i, phase, NodeStatus::Failed, String::new());
        (self.progress)(&name, &format!("{} (files, kubeconfigs, restart)", phase.as_str()));
        self.apply_one(i, phase, &payload, &mut res);
        (self.progress)(&name, res.status.as_str());
        if matches!(res.status, NodeStatus::Done | NodeStatus::Unchanged) {
            l.state.nodes.insert(name.clone(), NodeState { phase_done: Some(phase) });
            let at = self.now();
            l.state.record(&at, phase, Some(&name), res.message.clone());
            self.save(&remote::state_payload(&l.state, None))?;
        }
        Ok(res)
    }

    /// What node `i` gets on stdin for `phase` (hashes only with --dry-run).
    fn payload(
        &mut self,
        i: usize,
        phase: Phase,
        l: &Loaded,
    ) -> Result<Vec<u8>, (Category, String)> {
        let dry = self.opts.dry_run;
        let which = parts(&l.state);
        let cp = self.nodes[i].role == Role::ControlPlane;
        let d = material::desired(&l.old, &l.new, &which, phase, cp)
            .map_err(|e| (e.category(), e.to_string()))?;
        let renew = phase == Phase::Switch && cp;
        let mut payload = remote::desired_payload(&d, &l.old, &l.new, renew, !dry);
        if !cp && phase == Phase::Switch && which.contains(&Part::Ca) && !dry {
            let extra = self
                .worker_kubelet(i, l)
                .map_err(|(c, m)| (c, format!("reading its kubelet's client certificate: {m}")))?;
            payload.extend(extra);
        }
        Ok(payload)
    }

    /// --dry-run on one node: what its apply would change.
    fn plan_one(&mut self, i: usize, phase: Phase, payload: &[u8]) -> NodeResult {
        match self.exec(i, phase, "plan", payload) {
            Ok(out) => {
                let mut res = self.result(i, phase, NodeStatus::Planned, String::new());
                res.changes = remote::changes(&out)
                    .into_iter()
                    .map(|(k, w)| Change { file: w, what: k })
                    .collect();
                res.message = match res.changes.len() {
                    0 => "nothing to change".into(),
                    n => format!("{n} changes"),
                };
                res
            }
            Err((c, m)) => {
                let mut res = self.result(i, phase, NodeStatus::Failed, m);
                res.category = Some(c);
                res
            }
        }
    }

    /// The phase's cluster-wide step once every node has it, then the state.
    fn after_nodes(
        &mut self,
        phase: Phase,
        l: &mut Loaded,
        rep: &mut RotateReport,
    ) -> Result<(), RotateError> {
        let which = parts(&l.state);
        if let Some(why) = self.phase_gate(l, &which, phase) {
            rep.fail(Category::NodesFailed, why);
            return Ok(());
        }
        match phase {
            Phase::Switch | Phase::Finalize if which.contains(&Part::Ca) => {
                let d = material::desired(&l.old, &l.new, &which, phase, true)?;
                let ca = d.files.get("ca.crt").cloned().unwrap_or_default();
                let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &ca);
                if let Err((c, m)) = self.exec(
                    self.first,
                    phase,
                    "cluster-info",
                    format!("=== cadata {b64}\n").as_bytes(),
                ) {
                    rep.fail(c, format!("kube-public/cluster-info: {m}; rerun hapki rotate"));
                    return Ok(());
                }
                let new = crate::pki::parse::parse_certificate(
                    "ca.crt",
                    l.new.get("ca.crt").map_or(&[][..], |v| v),
                )?;
                rep.discovery_token_ca_cert_hash = Some(new.discovery_hash());
            }
            _ => {}
        }
        l.state.phase_done = phase;
        let at = self.now();
        l.state.record(&at, phase, None, format!("{} done on every node", phase.as_str()));
        let payload = match phase {
            Phase::Finalize | Phase::Aborted => remote::drop_payload(&l.state),
            _ => remote::state_payload(&l.state, None),
        };
        self.save(&payload)?;
        rep.message = match phase {
            Phase::TrustBoth => {
                "every node trusts the old and the new material; next: hapki rotate (switch)".into()
            }
            Phase::Switch => "the new keys sign everywhere; next: hapki rotate (drain)".into(),
            Phase::Finalize => {
                "the old material is trusted nowhere; its keys are deleted from the state directory"
                    .into()
            }
            _ => "aborted: every node holds the old material alone".into(),
        };
        rep.state = Some(l.state.clone());
        Ok(())
    }

    /// Once every node has the phase: every node is asked again (read-only) and must need no
    /// change (after trust-both: every trust file and kubeconfig holds both; after switch:
    /// every leaf and kubelet client certificate is the new CA's).
    fn phase_gate(&mut self, l: &Loaded, which: &[Part], phase: Phase) -> Option<String> {
        for i in self.order() {
            let cp = self.nodes[i].role == Role::ControlPlane;
            let d = material::desired(&l.old, &l.new, which, phase, cp).ok()?;
            let renew = phase == Phase::Switch && cp;
            let payload = remote::desired_payload(&d, &l.old, &l.new, renew, false);
            let name = self.nodes[i].name().to_string();
            let p = phase.as_str();
            let again =
                if phase == Phase::Aborted { "--abort".into() } else { format!("--to {p}") };
            match self.exec(i, phase, "plan", &payload) {
                Err((_, m)) => return Some(format!("{p} gate: {name} could not be read ({m})")),
                Ok(out) => {
                    if let Some((k, w)) = remote::changes(&out).first() {
                        return Some(format!("{p} gate: {name} is not in the {p} state ({k} {w}); rerun hapki rotate {again}"));
                    }
                }
            }
        }
        None
    }

    /// The quorum gate: every control plane's etcd member healthy (as renew).
    fn gate(&mut self) -> Result<(), String> {
        let opts = self.opts;
        let pki = opts.paths.pki_dir();
        let cps: Vec<usize> = self
            .order()
            .into_iter()
            .filter(|&i| self.nodes[i].role == Role::ControlPlane)
            .collect();
        for i in cps {
            let name = self.nodes[i].name().to_string();
            let addr = self.call(i, Phase::Switch).address;
            let degraded = |why: &str| {
                format!("not touched: the cluster is degraded (etcd member on {name}: {why}); rotate again once it is healthy")
            };
            let s = self.session(i).map_err(|e| degraded(&e.to_string()))?;
            let probe =
                crate::renew::probe(s.as_mut(), &opts.paths, &addr).map_err(|e| degraded(&e))?;
            let member =
                probe.flags.keys().any(|(c, _)| c == "etcd") || probe.served.contains_key(&2379);
            if !member {
                continue;
            }
            let at = probe.served.get(&2379).map_or(addr.clone(), |x| x.address.clone());
            let health = include_str!("../node/join_etcd_health.sh");
            match s.run(health, &[&at, &pki], &mut std::io::empty()) {
                Ok(o) if o.success() => {}
                Ok(o) => return Err(degraded(&crate::node::stderr_tail(&o.stderr))),
                Err(e) => return Err(degraded(&e.to_string())),
            }
        }
        Ok(())
    }

    fn apply_one(&mut self, i: usize, phase: Phase, payload: &[u8], res: &mut NodeResult) {
        let out = match self.exec_out(i, phase, "apply", payload) {
            Ok(o) => o,
            Err((c, m)) => {
                res.status = NodeStatus::Failed;
                res.category = Some(c);
                res.message = m;
                return;
            }
        };
        res.changes = remote::changes(&out.stdout)
            .into_iter()
            .map(|(k, w)| Change { file: w, what: k })
            .collect();
        let parsed = crate::renew::snapshot::parse(&out.stdout);
        res.steps = parsed.steps.iter().map(|(_, w)| w.clone()).collect();
        if !out.success() {
            res.status = NodeStatus::Failed;
            res.category = Some(Category::NodesFailed);
            res.message = format!("{}; the manifests were put back", failure(&out));
            return;
        }
        let unchanged = remote::sections(&out.stdout).iter().any(|(h, _)| h == "unchanged");
        if let Some(after) = parsed.after.as_ref() {
            let restarted: Vec<String> = parsed
                .steps
                .iter()
                .filter_map(|(_, w)| {
                    w.strip_prefix("moved ")?.split_once(".yaml out").map(|(c, _)| c.into())
                })
                .collect();
            let pki = self.opts.paths.pki_dir();
            res.served = crate::renew::served_checks(after, Some(&parsed.before), &pki, &restarted);
        }
        let bad: Vec<&str> =
            res.served.iter().filter(|s| !s.ok).map(|s| s.message.as_str()).collect();
        if !bad.is_empty() {
            res.status = NodeStatus::Failed;
            res.category = Some(Category::NodesFailed);
            res.message = bad.join("; ");
            return;
        }
        res.status = if unchanged { NodeStatus::Unchanged } else { NodeStatus::Done };
        res.message = if unchanged {
            format!("already in the {} state", phase.as_str())
        } else {
            let served = res.served.len();
            format!("{} changes; {served} servers present their files", res.changes.len())
        };
    }

    /// A worker's kubelet client certificate, when the old CA signed it: a new one (same name,
    /// `O=system:nodes`) from the new CA, as apply's `=== kubelet` section (a worker holds no
    /// CA key, so hapki signs it here; the key travels on SSH stdin only).
    fn worker_kubelet(&mut self, i: usize, l: &Loaded) -> Result<Vec<u8>, (Category, String)> {
        let out = self.exec(i, Phase::Switch, "kubelet-cert", b"")?;
        let Some((_, pem)) = remote::sections(&out).into_iter().find(|(h, _)| h == "kubelet")
        else {
            return Ok(Vec::new());
        };
        let bad = |e: crate::pki::PkiError| (Category::NodesFailed, e.to_string());
        let cert = crate::pki::parse::parse_certificate("kubelet.conf", &pem).map_err(bad)?;
        let (new_crt, new_key) = (l.new.get("ca.crt"), l.new.get("ca.key"));
        let (Some(new_crt), Some(new_key)) = (new_crt, new_key) else { return Ok(Vec::new()) };
        let new_der = crate::pki::parse::parse_certificate("ca.crt", new_crt).map_err(bad)?.der;
        let cn = cert.common_name.clone().unwrap_or_default();
        if drain::signed_by(&cert.der, &new_der) || !cn.starts_with("system:node:") {
            return Ok(Vec::new());
        }
        let now = OffsetDateTime::now_utc();
        let leaf =
            crate::pki::generate::issue_kubelet_client(new_crt, new_key, &cn, now).map_err(bad)?;
        Ok(format!("=== kubelet\n{}{}", leaf.cert_pem, leaf.key_pem).into_bytes())
    }

    fn drain_once(&mut self, l: &Loaded, progress: bool) -> DrainReport {
        let which = parts(&l.state);
        let cas = drain::Cas::new(&l.old, &l.new, &which);
        let mut items: Vec<DrainItem> = Vec::new();
        for i in self.order() {
            let name = self.nodes[i].name().to_string();
            if progress {
                (self.progress)(&name, "reading what still depends on the old material");
            }
            match self.exec(i, Phase::Drain, "drain", b"") {
                Ok(out) => items.extend(drain::classify(&name, &out, &cas)),
                Err((_, m)) => items.push(DrainItem {
                    node: name,
                    file: "-".into(),
                    kind: "unreachable".into(),
                    message: m,
                }),
            }
        }
        let switched = l
            .state
            .history
            .iter()
            .rev()
            .find(|h| h.phase == Phase::Switch && h.node.is_none() && h.what.contains("every node"))
            .map(|h| h.at.clone());
        DrainReport {
            clear: items.is_empty(),
            items,
            notes: drain::notes(which.contains(&Part::Sa), switched.as_deref()),
        }
    }

    fn drain(&mut self, loaded: &mut Option<Loaded>) -> Result<RotateReport, RotateError> {
        let mut l =
            loaded.take().ok_or_else(|| RotateError::Refused("no rotation is prepared".into()))?;
        let mut rep = RotateReport::new(Some(Phase::Drain), self.opts.dry_run, "");
        rep.rotation_id = Some(l.state.id.clone());
        let mut d = self.drain_once(&l, true);
        while !d.clear && self.opts.wait {
            (self.progress)(
                "*",
                &format!(
                    "{} dependents left; polling again in {}s",
                    d.items.len(),
                    self.opts.poll.as_secs()
                ),
            );
            std::thread::sleep(self.opts.poll);
            d = self.drain_once(&l, false);
        }
        if d.clear {
            rep.message =
                "nothing depends on the old material any more; next: hapki rotate (finalize)"
                    .into();
            if !self.opts.dry_run && l.state.phase_done < Phase::Drain {
                l.state.phase_done = Phase::Drain;
                let at = self.now();
                l.state.record(&at, Phase::Drain, None, "drain clear");
                self.save(&remote::state_payload(&l.state, None))?;
            }
        } else {
            rep.fail(Category::Usage, format!("{} dependents of the old material remain (listed with their fixes); hapki rotate --wait polls until none", d.items.len()));
        }
        rep.drain = Some(d);
        rep.state = Some(l.state.clone());
        *loaded = Some(l);
        Ok(rep)
    }
}
