//! Backup jobs: VMs backed up into a store every `every_s` seconds, each
//! run followed by a prune of those VMs' backups with the job's retention.
//! The server's controller looks at the jobs every [`JOB_TICK`]; whether a
//! job is due is a pure rule ([`due`]).

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use vdc_store::StoreExt;
use vdc_types::backup::{BackupJob, CreateBackupJobRequest, RunBackupRequest};
use vdc_types::{now_ms, ApiError, UnixMillis};

use crate::{store_err, Cluster};

const JOBS: &str = "/backup-jobs/";
/// How often the controller looks for due jobs.
pub const JOB_TICK: Duration = Duration::from_secs(1);
/// Longest wait for one backup of a run.
const RUN_WAIT: Duration = Duration::from_secs(3600);

/// Whether `job` is due at `now`: never run, or `every_s` passed since its
/// last run began.
pub fn due(job: &BackupJob, now: UnixMillis) -> bool {
    match job.last_run_ms {
        None => true,
        Some(t) => now >= t.saturating_add(job.every_s.saturating_mul(1000)),
    }
}

impl Cluster {
    /// `POST /api/v1/backup-jobs`.
    pub async fn create_backup_job(
        &self,
        req: &CreateBackupJobRequest,
    ) -> Result<BackupJob, ApiError> {
        vdc_types::names::validate_name("backup job", &req.name).map_err(ApiError::invalid)?;
        if req.vms.is_empty() {
            return Err(ApiError::invalid("a backup job needs at least one VM"));
        }
        if req.every_s == 0 {
            return Err(ApiError::invalid(
                "a backup job runs at most every second (every_s ≥ 1)",
            ));
        }
        self.get_backup_store(&req.store).await?;
        for vm in &req.vms {
            self.record(vm).await?;
        }
        let job = BackupJob {
            name: req.name.clone(),
            vms: req.vms.clone(),
            store: req.store.clone(),
            every_s: req.every_s,
            retention: req.retention,
            created_ms: now_ms(),
            last_run_ms: None,
            last_result: None,
        };
        self.create_unique(
            &format!("{JOBS}{}", job.name),
            &job,
            format!(
                "backup job '{}' already exists; choose another name",
                job.name
            ),
        )
        .await?;
        Ok(job)
    }

    /// Every backup job.
    pub async fn list_backup_jobs(&self) -> Result<Vec<BackupJob>, ApiError> {
        let mut v: Vec<BackupJob> = self
            .store
            .list_json(JOBS)
            .await
            .map_err(store_err)?
            .into_iter()
            .map(|(_, j)| j)
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    /// Deletes a backup job (its backups stay).
    pub async fn delete_backup_job(&self, name: &str) -> Result<(), ApiError> {
        let key = format!("{JOBS}{name}");
        if !self.store.delete(&key).await.map_err(store_err)? {
            return Err(ApiError::not_found("backup job", name));
        }
        Ok(())
    }

    /// Runs due backup jobs until the process ends.
    pub fn spawn_backup_jobs(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(JOB_TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let jobs = match me.list_backup_jobs().await {
                    Ok(j) => j,
                    Err(e) => {
                        tracing::warn!(error = %e.message, "cannot read the backup jobs");
                        continue;
                    }
                };
                for job in jobs.into_iter().filter(|j| due(j, now_ms())) {
                    me.run_backup_job(job).await;
                }
            }
        });
    }

    async fn run_backup_job(self: &Arc<Self>, mut job: BackupJob) {
        job.last_run_ms = Some(now_ms());
        let mut results = Vec::new();
        for vm in &job.vms {
            let req = RunBackupRequest {
                store: job.store.clone(),
            };
            let r = match self.run_backup(vm, &req).await {
                Ok(t) => self.wait_backup_task(&t.id, RUN_WAIT).await.map(drop),
                Err(e) => Err(e),
            };
            let pruned = match (&r, job.retention.is_empty()) {
                (Ok(()), false) => self
                    .prune_backups(&job.store, Some(vm), &job.retention)
                    .await
                    .map(|v| format!(", {} pruned", v.len())),
                _ => Ok(String::new()),
            };
            results.push(match (r, pruned) {
                (Ok(()), Ok(p)) => format!("{vm}: ok{p}"),
                (Ok(()), Err(e)) => format!("{vm}: backed up, prune failed: {}", e.message),
                (Err(e), _) => format!("{vm}: {}", e.message),
            });
        }
        let result = results.join("; ");
        self.events
            .publish(
                "backup.job_run",
                &job.name,
                format!("backup job {} ran: {result}", job.name),
                json!({"store": job.store, "result": result}),
            )
            .await;
        job.last_result = Some(result);
        let key = format!("{JOBS}{}", job.name);
        // Deleted meanwhile: stays deleted.
        if let Ok(Some(_)) = self.store.get(&key).await {
            if let Err(e) = self.store.put_json(&key, &job).await {
                tracing::warn!(job = %job.name, error = %e, "cannot record a backup job's run");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_is_due_when_never_run_or_its_interval_passed() {
        let mut j = BackupJob {
            name: "j".into(),
            vms: vec!["a".into()],
            store: "s".into(),
            every_s: 60,
            retention: Default::default(),
            created_ms: 0,
            last_run_ms: None,
            last_result: None,
        };
        assert!(due(&j, 5));
        j.last_run_ms = Some(1_000);
        assert!(!due(&j, 60_999));
        assert!(due(&j, 61_000));
    }
}
