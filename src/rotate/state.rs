//! The rotation's state (`state.json` in the first master's state directory) and the order of
//! its phases: what the next run does, what `--to` runs, what `--abort` may still undo.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A phase of the rotation, in order; `Aborted` ends one that never switched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Prepare,
    TrustBoth,
    Switch,
    Drain,
    Finalize,
    Aborted,
}

impl Phase {
    /// The phases a run may ask for, in order.
    pub const ORDER: [Phase; 5] =
        [Phase::Prepare, Phase::TrustBoth, Phase::Switch, Phase::Drain, Phase::Finalize];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Prepare => "prepare",
            Phase::TrustBoth => "trust-both",
            Phase::Switch => "switch",
            Phase::Drain => "drain",
            Phase::Finalize => "finalize",
            Phase::Aborted => "aborted",
        }
    }

    /// The phase after this one (`None` after finalize or an abort: the rotation is over).
    pub fn next(self) -> Option<Phase> {
        let i = Phase::ORDER.iter().position(|p| *p == self)?;
        Phase::ORDER.get(i + 1).copied()
    }

    /// Whether the phase changes files on the nodes (drain only reads).
    pub fn touches_nodes(self) -> bool {
        matches!(self, Phase::TrustBoth | Phase::Switch | Phase::Finalize | Phase::Aborted)
    }
}

impl std::str::FromStr for Phase {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Phase::ORDER.into_iter().find(|p| p.as_str() == s).ok_or_else(|| {
            format!("unknown phase {s:?}: use prepare, trust-both, switch, drain or finalize")
        })
    }
}

/// One node's progress: the last phase applied on it completely.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    pub phase_done: Option<Phase>,
}

/// One line of the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub at: String,
    pub phase: Phase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub what: String,
}

/// `state.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub id: String,
    /// What rotates: `ca`, `front-proxy-ca`, `etcd-ca`, `sa`.
    pub which: Vec<String>,
    pub algorithm: String,
    pub created_at: String,
    pub phase_done: Phase,
    /// Set (and saved) before the first node switches: from then on `--abort` is refused.
    #[serde(default)]
    pub switch_started: bool,
    #[serde(default)]
    pub nodes: BTreeMap<String, NodeState>,
    /// SHA-256 of each part's public key (SubjectPublicKeyInfo DER), old and new.
    pub old: BTreeMap<String, String>,
    pub new: BTreeMap<String, String>,
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
}

/// What a run should do, decided from the state and the flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Run these phases, in order.
    Run(Vec<Phase>),
    /// Nothing to do; why (a phase already done, a finished rotation).
    Nothing(String),
}

/// The phases to run: without `to`, the next one; with `to`, every one up to it. A finished
/// (or aborted) rotation starts again only when prepare is asked for by name.
pub fn plan(state: Option<&State>, to: Option<Phase>) -> Plan {
    let done = match state {
        None => None,
        Some(s) if matches!(s.phase_done, Phase::Finalize | Phase::Aborted) => {
            if to == Some(Phase::Prepare) {
                None
            } else {
                return Plan::Nothing(format!(
                    "rotation {} is over ({}); `hapki rotate --to prepare` starts a new one",
                    s.id,
                    s.phase_done.as_str()
                ));
            }
        }
        Some(s) => Some(s.phase_done),
    };
    let next = done.map_or(Some(Phase::Prepare), Phase::next);
    let Some(next) = next else {
        return Plan::Nothing("every phase is done".into());
    };
    let target = to.unwrap_or(next);
    if done.is_some_and(|d| target <= d) {
        return Plan::Nothing(format!("{} is already done", target.as_str()));
    }
    Plan::Run(Phase::ORDER.into_iter().filter(|p| *p >= next && *p <= target).collect())
}

/// Why `--abort` is refused, or `None` when it may run.
pub fn abort_refusal(state: Option<&State>) -> Option<String> {
    match state {
        None => Some("there is no rotation to abort".into()),
        Some(s) if s.switch_started => Some(format!(
            "rotation {} has started switching: the old key no longer signs everything, so it cannot be undone; rotate forward (hapki rotate)",
            s.id
        )),
        Some(s) if matches!(s.phase_done, Phase::Finalize | Phase::Aborted) => {
            Some(format!("rotation {} is already over ({})", s.id, s.phase_done.as_str()))
        }
        Some(_) => None,
    }
}

impl State {
    /// The phase `node` last completed.
    pub fn node_done(&self, node: &str) -> Option<Phase> {
        self.nodes.get(node).and_then(|n| n.phase_done)
    }

    pub fn rotates(&self, part: &str) -> bool {
        self.which.iter().any(|w| w == part)
    }

    pub fn record(&mut self, at: &str, phase: Phase, node: Option<&str>, what: impl Into<String>) {
        self.history.push(HistoryEntry {
            at: at.to_string(),
            phase,
            node: node.map(str::to_string),
            what: what.into(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(done: Phase) -> State {
        State {
            id: "r1".into(),
            which: vec!["ca".into()],
            algorithm: "ECDSA-P256".into(),
            created_at: "t".into(),
            phase_done: done,
            switch_started: false,
            nodes: BTreeMap::new(),
            old: BTreeMap::new(),
            new: BTreeMap::new(),
            history: Vec::new(),
        }
    }

    #[test]
    fn one_phase_per_run_and_to_runs_the_ones_between() {
        use Phase::*;
        assert_eq!(plan(None, None), Plan::Run(vec![Prepare]));
        assert_eq!(plan(None, Some(Switch)), Plan::Run(vec![Prepare, TrustBoth, Switch]));
        assert_eq!(plan(Some(&state(Prepare)), None), Plan::Run(vec![TrustBoth]));
        assert_eq!(
            plan(Some(&state(TrustBoth)), Some(Finalize)),
            Plan::Run(vec![Switch, Drain, Finalize])
        );
        assert_eq!(plan(Some(&state(Drain)), None), Plan::Run(vec![Finalize]));
    }

    #[test]
    fn a_phase_already_done_is_nothing_and_a_finished_rotation_restarts_only_by_name() {
        use Phase::*;
        assert!(matches!(plan(Some(&state(Switch)), Some(TrustBoth)), Plan::Nothing(_)));
        assert!(matches!(plan(Some(&state(Switch)), Some(Switch)), Plan::Nothing(_)));
        assert!(matches!(plan(Some(&state(Finalize)), None), Plan::Nothing(_)));
        assert!(matches!(plan(Some(&state(Aborted)), Some(Switch)), Plan::Nothing(_)));
        assert_eq!(plan(Some(&state(Finalize)), Some(Prepare)), Plan::Run(vec![Prepare]));
        assert_eq!(plan(Some(&state(Aborted)), Some(Prepare)), Plan::Run(vec![Prepare]));
    }

    #[test]
    fn abort_only_before_switch_started() {
        assert!(abort_refusal(None).is_some());
        assert!(abort_refusal(Some(&state(Phase::TrustBoth))).is_none());
        let mut s = state(Phase::TrustBoth);
        s.switch_started = true;
        assert!(abort_refusal(Some(&s)).unwrap().contains("rotate forward (hapki rotate)"));
        assert!(abort_refusal(Some(&state(Phase::Finalize))).is_some());
    }

    #[test]
    fn state_json_round_trips_with_the_design_names() {
        let mut s = state(Phase::TrustBoth);
        s.nodes.insert("m1".into(), NodeState { phase_done: Some(Phase::TrustBoth) });
        s.record("t", Phase::TrustBoth, Some("m1"), "done");
        let j = serde_json::to_string(&s).unwrap();
        assert!(j.contains("\"phase_done\":\"trust-both\""), "{j}");
        assert_eq!(serde_json::from_str::<State>(&j).unwrap(), s);
    }
}
