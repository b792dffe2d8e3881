//! A lab with several servers on etcd (`TestLab::builder(n).control_plane(3)`):
//! killing and healing its members, finding its leader.

use std::time::Duration;

use crate::{wait_until_async, TestLab};

impl TestLab {
    /// Kills control-plane member `name` (`server-N`, `etcd-N`) with
    /// SIGKILL; it is gone when this returns.
    ///
    /// # Panics
    /// If the lab has no such member or it survives.
    pub fn kill_member(&self, name: &str) {
        self.member_fault(name, false);
    }

    /// Starts control-plane member `name` again after [`Self::kill_member`].
    ///
    /// # Panics
    /// If the lab has no such member or it cannot be started.
    pub fn heal_member(&self, name: &str) {
        self.member_fault(name, true);
    }

    fn member_fault(&self, name: &str, heal: bool) {
        let mut state = vdc_lab::state::LabState::load(&self.info.lab_id, &self.spec.state_root)
            .unwrap_or_else(|e| panic!("loading the lab state: {}", crate::error_chain(&e)))
            .expect("the lab is up");
        let line = vdc_lab::control_plane::fail_member(&mut state, name, heal)
            .unwrap_or_else(|e| panic!("{name}: {}", crate::error_chain(&e)));
        eprintln!("lab: {line}");
    }

    /// The id of the server that leads, once one leads and answers.
    pub async fn leader(&self, timeout: Duration) -> String {
        wait_until_async(timeout, "a leader of the control plane", || async {
            let s = self.client.control_plane().await.ok()?;
            let leader = s.leader?;
            // Its API answers (not a dead leader whose lease runs on).
            let direct = vdc_client::Client::new(&leader.url, None);
            direct.version().await.ok()?;
            Some(leader.id)
        })
        .await
    }
}
