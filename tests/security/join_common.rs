//! Not an attack: the two-control-plane stand-in cluster the join attacks run against
//! (kubeadm init on kubemaster-1, the bundle pushed to both).

use std::path::PathBuf;

use crate::cluster;
use crate::fixture::{text, Fixture};
use crate::standin;
use crate::testbed::Testbed;

pub struct JoinCluster {
    pub tb: Testbed,
    pub fx: Fixture,
    pub bundle: PathBuf,
}

impl JoinCluster {
    pub fn up() -> Option<JoinCluster> {
        if !standin::prerequisites() {
            return None;
        }
        let tb = Testbed::up(2, 0)?;
        standin::install(&tb);
        let fx = Fixture::new();
        let bundle = fx.bundle();
        let m1 = tb.node("kubemaster-1");
        cluster::push_to(&fx, &tb, &bundle, &[&m1.name], &[]);
        let init = tb.ssh(
            &m1.name,
            &format!(
                "kubeadm init --control-plane-endpoint kubeapi.test:6443 --apiserver-advertise-address {}",
                m1.address
            ),
        );
        assert!(init.status.success(), "kubeadm init: {}", text(&init));
        cluster::push_to(&fx, &tb, &bundle, &["kubemaster-2"], &[]);
        Some(JoinCluster { tb, fx, bundle })
    }

    /// `hapki join --inventory … --bundle … --trust … --decrypt-key …` plus `extra`.
    pub fn join(&self) -> std::process::Command {
        let mut c = crate::fixture::hapki_process();
        c.args(["join", "--inventory"]).arg(self.tb.inventory());
        c.arg("--bundle").arg(&self.bundle);
        c.arg("--trust").arg(self.fx.allowed());
        c.arg("--decrypt-key").arg(self.fx.signer());
        c
    }

    /// Whether the stand-in ran any `kubeadm join`.
    pub fn joined_anything(&self) -> bool {
        standin::read_log(&self.tb.dir).iter().any(|l| l.sub == "join")
    }
}
