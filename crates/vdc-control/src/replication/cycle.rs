//! One replication cycle and the loop that runs them (module docs of
//! [`super`]).

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use vdc_types::ha_group::AlarmSeverity;
use vdc_types::job::{JobOp, JobRequest, JobResult};
use vdc_types::replication::{
    BeginPointRequest, CommitPointRequest, ReplicaConfig, ReplicaNic, ReplicaPoint,
    ReplicateJobRequest, ReplicatedPoint, ReplicationState,
};
use vdc_types::{now_ms, ApiError, ErrorCode, VmConfig, VmPowerState};

use crate::sites::site_error;
use crate::tasks::TaskCtx;
use crate::Cluster;

/// The loop's tick: how often the RPO is checked.
const TICK: Duration = Duration::from_secs(1);
/// Longest wait between retries of failing cycles.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Alarm kinds.
const RPO_ALARM: &str = "replication.rpo";
const LINK_ALARM: &str = "replication.link";

/// Name of the persistent dirty bitmap of a replication to `site`.
pub(crate) fn bitmap_name(site: &str) -> String {
    format!("vdc-replication-{site}")
}

/// Time between cycles for an RPO target of `rpo_s`: a third of it, at
/// least a second.
pub fn cycle_interval(rpo_s: u64) -> Duration {
    Duration::from_millis((rpo_s * 1000 / 3).max(1000))
}

/// Whether a failed cycle means the link to the recovery site is down:
/// its server does not answer, or the host cannot open the NBD export
/// through the relay.
pub fn is_link_error(e: &ApiError) -> bool {
    e.code == ErrorCode::SiteUnreachable
        || [
            "Failed to connect",
            "Connection refused",
            "No route to host",
            "Network is unreachable",
            "Connection reset",
        ]
        .iter()
        .any(|m| e.message.contains(m))
}

/// What the recovery site needs to make a VM of the replica.
fn replica_config(c: &VmConfig) -> ReplicaConfig {
    ReplicaConfig {
        cpus: c.cpus,
        memory_mib: c.memory_mib,
        disks: c.disks.iter().map(|d| d.size_bytes).collect(),
        nics: c
            .nics
            .iter()
            .map(|n| ReplicaNic {
                network: n.network.clone(),
                ip: n.ip.clone(),
            })
            .collect(),
        guest_agent: c.guest_agent,
        hostname: c.hostname.clone(),
        ip: c.nics.first().and_then(|n| n.ip.clone()),
    }
}

impl Cluster {
    /// One cycle (module docs): the point applied at the recovery site.
    pub(crate) async fn run_cycle(
        &self,
        vm: &str,
        quiesce: bool,
        ctx: Option<&TaskCtx>,
    ) -> Result<ReplicaPoint, ApiError> {
        let lock = self.replication.lock(vm);
        let _held = lock.lock().await;
        let r = self.replication_record(vm).await?;
        let rec = self.record(vm).await?;
        if rec.state != VmPowerState::Running {
            return Err(ApiError::invalid_state(format!(
                "VM '{vm}' is {}; a point is taken of a running VM",
                rec.state
            )));
        }
        let host = rec.owner.clone().ok_or_else(|| {
            ApiError::new(ErrorCode::HostUnavailable, format!("VM '{vm}' has no host"))
        })?;
        let url = self.agent_url(&host).await?;
        let progress = |p: u8, s: String| async move {
            if let Some(c) = ctx {
                c.progress(p, &s).await;
            }
        };
        let peer = match self.site_client(&r.site).await {
            Ok(c) => c,
            Err(e) => return Err(self.cycle_failed(vm, e).await),
        };
        let full = r.needs_full;
        let quiesce = quiesce
            || (r.quiesce_every_s > 0
                && r.last_quiesced_ms
                    .is_none_or(|t| now_ms().saturating_sub(t) >= r.quiesce_every_s * 1000));
        progress(5, format!("starting a point at site {}", r.site)).await;
        let begin = match peer
            .begin_replica_point(
                vm,
                &BeginPointRequest {
                    source_site: self.local_site().name,
                    mode: r.mode,
                    config: replica_config(&rec.config),
                    full,
                    datastore: r.datastore.clone(),
                },
            )
            .await
        {
            Ok(b) => b,
            Err(e) => return Err(self.cycle_failed(vm, site_error(&r.site, e)).await),
        };
        let job = ReplicateJobRequest {
            config: rec.config.clone(),
            disk: rec.config.disks[0].name.clone(),
            bitmap: bitmap_name(&r.site),
            full,
            host: begin.host.clone(),
            port: begin.port,
            export: begin.export.clone(),
            quiesce,
        };
        progress(
            10,
            if full {
                "copying the whole disk".into()
            } else {
                "shipping the changed blocks".into()
            },
        )
        .await;
        let shipped = self.run_replicate_job(&host, &url, job, ctx).await;
        let p = match shipped {
            Ok(p) => p,
            Err(e) => {
                if let Err(a) = peer.abort_replica_point(vm, begin.point).await {
                    tracing::warn!(vm, error = %a, "cannot abort the point at the recovery site; its next point removes it");
                }
                if e.message.contains("bitmap-missing") {
                    self.need_full(vm, "the replication's dirty bitmap was lost")
                        .await;
                }
                return Err(self.cycle_failed(vm, e).await);
            }
        };
        progress(
            92,
            format!("applying point {} at site {}", begin.point, r.site),
        )
        .await;
        let commit = peer
            .commit_replica_point(
                vm,
                begin.point,
                &CommitPointRequest {
                    time_ms: p.time_ms,
                    consistency: p.consistency,
                    bytes: p.bytes,
                    retain_last: r.retain_last,
                },
            )
            .await;
        let point = match commit {
            Ok(point) => point,
            Err(e) => {
                // The bitmap was cleared when the job succeeded: what it
                // shipped is only in the dropped point, so copy everything.
                self.need_full(vm, "a shipped point could not be applied")
                    .await;
                return Err(self.cycle_failed(vm, site_error(&r.site, e)).await);
            }
        };
        self.point_applied(vm, &r.site, &point, &p).await?;
        Ok(point)
    }

    /// Runs the `replicate` job on `host` and follows it (its progress goes
    /// to the task, if any).
    async fn run_replicate_job(
        &self,
        host: &str,
        url: &str,
        request: ReplicateJobRequest,
        ctx: Option<&TaskCtx>,
    ) -> Result<ReplicatedPoint, ApiError> {
        let req = JobRequest {
            operation_id: format!("repl-{}", uuid::Uuid::new_v4().simple()),
            op: JobOp::Replicate { request },
        };
        let mut job = self.agents.submit_job(host, url, &req).await?;
        while !job.state.is_final() {
            if let (Some(c), Some(stage)) = (ctx, &job.stage) {
                c.progress(10 + job.progress * 8 / 10, stage).await;
            }
            job = self.agents.job(host, url, &job.id, 2).await?;
        }
        let result = match (job.state, job.result, job.error) {
            (vdc_types::job::JobState::Succeeded, Some(r), _) => r,
            (_, _, Some(e)) => return Err(e),
            (s, _, None) => {
                return Err(ApiError::new(
                    ErrorCode::HostError,
                    format!("the replicate job on host '{host}' ended {s}"),
                ))
            }
        };
        match result {
            JobResult::Replicated(p) => Ok(p),
            other => Err(ApiError::internal(format!(
                "the replicate job answered {other:?}"
            ))),
        }
    }

    async fn need_full(&self, vm: &str, why: &str) {
        let r = self
            .update_replication(vm, |r| {
                r.needs_full = true;
                r.full_reason = Some(why.to_string());
            })
            .await;
        if let Err(e) = r {
            tracing::warn!(vm, error = %e, "cannot record that a full copy is needed");
        }
        self.events
            .publish(
                "replication.full_resync",
                vm,
                format!("the next point of {vm} copies the whole disk: {why}"),
                json!({"vm": vm, "reason": why}),
            )
            .await;
    }

    /// Records a failed cycle: the link is down when the recovery site
    /// does not answer, else the replication is in error. Returns `e`.
    async fn cycle_failed(&self, vm: &str, e: ApiError) -> ApiError {
        let link = is_link_error(&e);
        let msg = e.message.clone();
        let before = self.replication_record(vm).await.ok();
        let updated = self
            .update_replication(vm, |r| {
                r.error = Some(msg.clone());
                if link {
                    r.state = ReplicationState::LinkDown;
                } else if r.state != ReplicationState::InitialSync
                    && r.state != ReplicationState::RpoViolated
                {
                    r.state = ReplicationState::Error;
                }
            })
            .await;
        if let Err(u) = updated {
            tracing::warn!(vm, error = %u, "cannot record a failed replication cycle");
        }
        if link && before.is_some_and(|b| b.state != ReplicationState::LinkDown) {
            self.events
                .publish(
                    "replication.link_down",
                    vm,
                    format!("replication of {vm} cannot reach the recovery site: {msg}"),
                    json!({"vm": vm, "error": msg}),
                )
                .await;
            if let Err(a) = self
                .raise_alarm(
                    LINK_ALARM,
                    vm,
                    AlarmSeverity::Critical,
                    &format!("replication link down: {msg}"),
                )
                .await
            {
                tracing::warn!(vm, error = %a, "cannot raise the replication link alarm");
            }
        }
        tracing::warn!(vm, error = %e, "replication cycle failed");
        e
    }

    async fn point_applied(
        &self,
        vm: &str,
        site: &str,
        point: &ReplicaPoint,
        shipped: &ReplicatedPoint,
    ) -> Result<(), ApiError> {
        let now = now_ms();
        let before = self.replication_record(vm).await?;
        let quiesced = shipped.consistency == vdc_types::replication::PointConsistency::Quiesced;
        let r = self
            .update_replication(vm, |r| {
                r.achieved_rpo_ms =
                    Some(now.saturating_sub(r.last_point_ms.unwrap_or(r.enabled_ms)));
                r.last_point_ms = Some(point.time_ms);
                if quiesced {
                    r.last_quiesced_ms = Some(point.time_ms);
                }
                r.points += 1;
                r.bytes_sent += shipped.bytes;
                r.last_point_bytes = shipped.bytes;
                r.needs_full = false;
                r.error = None;
                r.state = ReplicationState::Ok;
            })
            .await?;
        self.events
            .publish(
                "replication.point",
                vm,
                format!(
                    "point {} of {vm} applied at site {site} ({} bytes)",
                    point.id, shipped.bytes
                ),
                json!({"vm": vm, "site": site, "point": point.id, "time_ms": point.time_ms,
                       "bytes": shipped.bytes, "consistency": shipped.consistency,
                       "achieved_rpo_ms": r.achieved_rpo_ms}),
            )
            .await;
        if before.state == ReplicationState::LinkDown {
            self.events
                .publish(
                    "replication.link_up",
                    vm,
                    format!("replication of {vm} reaches site {site} again"),
                    json!({"vm": vm, "site": site, "bytes": shipped.bytes}),
                )
                .await;
            if let Err(e) = self.clear_alarms(LINK_ALARM, vm, "link back").await {
                tracing::warn!(vm, error = %e, "cannot clear the replication link alarm");
            }
        }
        if before.state == ReplicationState::RpoViolated {
            self.events
                .publish(
                    "replication.rpo_restored",
                    vm,
                    format!("replication of {vm} is within its RPO again"),
                    json!({"vm": vm}),
                )
                .await;
        }
        if let Err(e) = self.clear_alarms(RPO_ALARM, vm, "RPO met again").await {
            tracing::warn!(vm, error = %e, "cannot clear the RPO alarm");
        }
        Ok(())
    }

    /// The RPO check of one tick: a replication whose newest point is
    /// older than its target is `rpo_violated` (event, alarm).
    async fn check_rpo(&self, vm: &str) {
        let Ok(r) = self.replication_record(vm).await else {
            return;
        };
        let Some(last) = r.last_point_ms else {
            return;
        };
        let lag = now_ms().saturating_sub(last);
        if lag <= r.rpo_s * 1000
            || matches!(
                r.state,
                ReplicationState::RpoViolated | ReplicationState::Stopped
            )
        {
            return;
        }
        let was_link_down = r.state == ReplicationState::LinkDown;
        if let Err(e) = self
            .update_replication(vm, |r| {
                if r.state != ReplicationState::LinkDown {
                    r.state = ReplicationState::RpoViolated;
                }
            })
            .await
        {
            tracing::warn!(vm, error = %e, "cannot record an RPO violation");
            return;
        }
        let raised = self
            .raise_alarm(
                RPO_ALARM,
                vm,
                AlarmSeverity::Warning,
                &format!(
                    "newest point is {} s old; the RPO target is {} s",
                    lag / 1000,
                    r.rpo_s
                ),
            )
            .await;
        if let Err(e) = raised {
            tracing::warn!(vm, error = %e, "cannot raise the RPO alarm");
        }
        if !was_link_down {
            self.events
                .publish(
                    "replication.rpo_violated",
                    vm,
                    format!(
                        "replication of {vm} is {} s behind; its RPO target is {} s",
                        lag / 1000,
                        r.rpo_s
                    ),
                    json!({"vm": vm, "lag_ms": lag, "rpo_s": r.rpo_s}),
                )
                .await;
        }
    }

    /// Runs the cycles of `vm` until its replication is disabled (one
    /// loop per VM).
    pub(crate) fn spawn_replication_loop(self: &Arc<Self>, vm: &str) {
        if !self
            .replication
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(vm.to_string())
        {
            return;
        }
        let me = self.clone();
        let vm = vm.to_string();
        tokio::spawn(async move {
            let mut next = tokio::time::Instant::now();
            let mut backoff = Duration::from_secs(1);
            loop {
                tokio::time::sleep(TICK).await;
                let r = match me.replication_record(&vm).await {
                    Ok(r) => r,
                    Err(e) if e.code == ErrorCode::NotFound => break,
                    Err(e) => {
                        tracing::warn!(vm, error = %e, "cannot read the replication");
                        continue;
                    }
                };
                me.check_rpo(&vm).await;
                if tokio::time::Instant::now() < next {
                    continue;
                }
                let running = me
                    .record(&vm)
                    .await
                    .is_ok_and(|rec| rec.state == VmPowerState::Running);
                if !running {
                    next = tokio::time::Instant::now() + cycle_interval(r.rpo_s);
                    continue;
                }
                match me.run_cycle(&vm, false, None).await {
                    Ok(_) => {
                        backoff = Duration::from_secs(1);
                        next = tokio::time::Instant::now() + cycle_interval(r.rpo_s);
                    }
                    Err(e) if e.code == ErrorCode::NotFound => break,
                    Err(_) => {
                        next = tokio::time::Instant::now() + backoff;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
            me.replication
                .running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&vm);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_errors_are_told_from_others() {
        let unreachable = ApiError::new(ErrorCode::SiteUnreachable, "site 'b' does not answer");
        assert!(is_link_error(&unreachable));
        let nbd = ApiError::new(
            ErrorCode::HostError,
            "shipping disk disk0: QMP command blockdev-add nbd failed: Failed to connect to '10.77.1.1:4000': No route to host",
        );
        assert!(is_link_error(&nbd));
        assert!(!is_link_error(&ApiError::invalid_state(
            "VM 'x' is stopped"
        )));
    }

    #[test]
    fn cycles_run_three_times_per_rpo_and_at_most_every_second() {
        assert_eq!(cycle_interval(30), Duration::from_secs(10));
        assert_eq!(cycle_interval(1), Duration::from_secs(1));
    }
}
