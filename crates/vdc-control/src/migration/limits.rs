//! Concurrent migration limits: at most `per_host` migrations touching a
//! host (as source or target) and `per_cluster` in the whole cluster. A
//! migration beyond them waits as a queued task, in the order asked, and
//! runs when a slot frees. The rule ([`may_start`]) is pure.

use std::collections::VecDeque;
use std::sync::Arc;

use vdc_types::migration::MigrationPolicy;
use vdc_types::ApiError;

use crate::tasks::{cancelled, TaskCtx};
use crate::Cluster;

/// Migration settings of the cluster (server flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationSettings {
    /// Convergence policy of live migrations.
    pub policy: MigrationPolicy,
    /// Migrations at once per host (as source or target).
    pub per_host: usize,
    /// Migrations at once in the cluster.
    pub per_cluster: usize,
}

impl Default for MigrationSettings {
    fn default() -> Self {
        MigrationSettings {
            policy: MigrationPolicy::default(),
            per_host: 2,
            per_cluster: 4,
        }
    }
}

/// A migration holding or waiting for a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    /// Its task.
    pub task: String,
    /// Host it leaves.
    pub source: String,
    /// Host it goes to.
    pub target: String,
}

/// Running and waiting migrations.
#[derive(Debug, Default)]
pub(crate) struct MigrationQueue {
    running: Vec<Move>,
    waiting: VecDeque<Move>,
}

/// Whether `next` may start beside `running` under the limits.
pub fn may_start(running: &[Move], next: &Move, per_host: usize, per_cluster: usize) -> bool {
    let on = |h: &str| {
        running
            .iter()
            .filter(|m| m.source == h || m.target == h)
            .count()
    };
    running.len() < per_cluster.max(1)
        && on(&next.source) < per_host.max(1)
        && on(&next.target) < per_host.max(1)
}

/// A migration slot, given back when dropped.
pub(crate) struct SlotGuard {
    cluster: Arc<Cluster>,
    task: String,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let mut q = self
            .cluster
            .migrations
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        q.running.retain(|m| m.task != self.task);
        drop(q);
        self.cluster.migration_turn.notify_waiters();
    }
}

impl Cluster {
    /// The migration settings in force.
    pub fn migration_settings(&self) -> MigrationSettings {
        self.migration_settings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Sets the migration settings (from the server's flags).
    pub fn set_migration_settings(&self, settings: MigrationSettings) {
        *self
            .migration_settings
            .write()
            .unwrap_or_else(|p| p.into_inner()) = settings;
    }

    /// Waits, as a queued task, for a slot for a migration of VM `vm` from
    /// `source` to `target`; first come, first served. The first time it
    /// has to wait it publishes `vm.migration_queued`.
    pub(crate) async fn migration_slot(
        self: &Arc<Self>,
        ctx: &TaskCtx,
        vm: &str,
        source: &str,
        target: &str,
    ) -> Result<SlotGuard, ApiError> {
        let me = Move {
            task: ctx.id().to_string(),
            source: source.to_string(),
            target: target.to_string(),
        };
        self.migrations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .waiting
            .push_back(me.clone());
        let mut shown_waiting = false;
        loop {
            let turn = self.migration_turn.notified();
            tokio::pin!(turn);
            turn.as_mut().enable();
            let (started, ahead) = {
                let s = self.migration_settings();
                let mut q = self.migrations.lock().unwrap_or_else(|p| p.into_inner());
                let first = q.waiting.front() == Some(&me);
                if first && may_start(&q.running, &me, s.per_host, s.per_cluster) {
                    q.waiting.pop_front();
                    q.running.push(me.clone());
                    (true, 0)
                } else {
                    let ahead = q.waiting.iter().take_while(|m| **m != me).count();
                    (false, ahead + q.running.len())
                }
            };
            if started {
                if shown_waiting {
                    ctx.set_waiting(false, "a migration slot is free").await;
                }
                return Ok(SlotGuard {
                    cluster: self.clone(),
                    task: me.task,
                });
            }
            let s = self.migration_settings();
            let stage = format!(
                "waiting for a migration slot ({ahead} migrations running or ahead; limits {} per host, {} in the cluster)",
                s.per_host, s.per_cluster
            );
            ctx.set_waiting(true, &stage).await;
            if !shown_waiting {
                self.events
                    .publish(
                        "vm.migration_queued",
                        vm,
                        format!("VM {vm}: migration from {source} to {target} {stage}"),
                        serde_json::json!({
                            "task": ctx.id(),
                            "source": source,
                            "target": target,
                            "ahead": ahead,
                            "per_host": s.per_host,
                            "per_cluster": s.per_cluster,
                        }),
                    )
                    .await;
            }
            shown_waiting = true;
            tokio::select! {
                _ = turn => {}
                _ = ctx.cancelled() => {
                    self.migrations
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .waiting
                        .retain(|m| m.task != me.task);
                    self.migration_turn.notify_waiters();
                    return Err(cancelled());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mv(task: &str, s: &str, t: &str) -> Move {
        Move {
            task: task.into(),
            source: s.into(),
            target: t.into(),
        }
    }

    #[test]
    fn limits_per_host_and_per_cluster() {
        let running = vec![mv("1", "a", "b"), mv("2", "a", "c")];
        assert!(!may_start(&running, &mv("3", "a", "b"), 2, 4), "a is full");
        assert!(
            !may_start(&running, &mv("3", "d", "a"), 2, 4),
            "a is full as a target too"
        );
        assert!(may_start(&running, &mv("3", "b", "c"), 2, 4));
        assert!(
            !may_start(&running, &mv("3", "d", "e"), 2, 2),
            "cluster full"
        );
        assert!(
            may_start(&[], &mv("1", "a", "b"), 0, 0),
            "a limit of 0 counts as 1"
        );
    }
}
