//! A move (cold, suspended, or a running VM's storage on its host) found
//! unfinished when the server starts again: it is rolled back unless its
//! record had already moved.
//!
//! ```text
//!  journaled job still running (copy or mirror) ──► cancelled, waited for
//!  record moved (owner = target, config on the new datastore)?
//!     ├─ yes: the move stands; the source's old files may remain
//!     │        (vm.files_left), the task succeeds
//!     └─ no:  the copy on the destination is destroyed (the VM stays on
//!              its source with its files), the task fails saying so
//! ```
//!
//! A mirror job (storage migration) removes its new image itself when
//! cancelled before its switch-over, and a disk switched before the
//! restart is already recorded in `vm.json` by the agent: nothing more to
//! undo here.

use serde_json::json;
use vdc_types::agent::DestroyVmRequest;
use vdc_types::job::{JobKind, JobResult, JobState};
use vdc_types::migration::MigrationKind;
use vdc_types::transfer::relocate;
use vdc_types::{ApiError, ErrorCode, Task};

use crate::journal;
use crate::tasks::TaskCtx;
use crate::Cluster;

impl Cluster {
    /// Settles move task `task` after a server restart (see the module
    /// documentation).
    pub(crate) async fn settle_move_after_restart(
        &self,
        ctx: &TaskCtx,
        task: &Task,
        kind: MigrationKind,
        source: &str,
        target: &str,
        datastore: Option<&str>,
    ) -> Result<(), ApiError> {
        let name = task.target.as_str();
        let jobs = task.journal.as_ref().map(journal::jobs).unwrap_or_default();
        for job in jobs.iter().filter(|j| j.ended.is_none()) {
            match self.agent_url(&job.host).await {
                Ok(url) => {
                    self.cancel_and_wait(&job.host, &url, &job.operation_id)
                        .await
                }
                Err(e) => {
                    tracing::warn!(vm = %name, host = %job.host, job = %job.operation_id, error = %e, "cannot cancel a move's job after a restart; the host ends it on its own")
                }
            }
        }
        ctx.progress(50, "settling the move after a server restart")
            .await;
        if kind == MigrationKind::Storage {
            return self.settle_mirror(name, &jobs, source, datastore).await;
        }
        let rec = self.record(name).await?;
        let Some(ds) = datastore else {
            // An ownership-only move: the record moved or it did not.
            return self.moved_or_not(name, &rec, source, target);
        };
        let committed = rec.owner.as_deref() == Some(target) && rec.config.datastore == ds;
        if committed {
            self.events
                .publish(
                    "vm.files_left",
                    name,
                    format!("VM {name} moved to host {target} before the server restarted; its old files on host {source} may remain"),
                    json!({"host": source}),
                )
                .await;
            return Ok(());
        }
        let moved = relocate(&rec.config, ds);
        let removed = match self.agent_url(target).await {
            Ok(url) => {
                self.agents
                    .destroy(
                        target,
                        &url,
                        &DestroyVmRequest {
                            config: moved,
                            keep_boot_disk_as: None,
                        },
                    )
                    .await
            }
            Err(e) => Err(e),
        };
        match removed {
            Ok(()) => {}
            Err(e) if e.code == ErrorCode::NotFound => {}
            Err(e) => {
                tracing::warn!(vm = %name, host = %target, error = %e, "cannot remove the copy of a move interrupted by a restart");
                self.events
                    .publish(
                        "vm.files_left",
                        name,
                        format!("the copy of VM {name} on host {target}, datastore {ds}, could not be removed: {}", e.message),
                        json!({"host": target, "datastore": ds, "error": e}),
                    )
                    .await;
            }
        }
        Err(self.rolled_back(name, source))
    }

    /// A storage migration on its host: if its mirror job finished before
    /// the restart, the record takes the configuration it answered (the
    /// VM runs on the new datastore already); otherwise it was cancelled
    /// above and removed its new images.
    async fn settle_mirror(
        &self,
        name: &str,
        jobs: &[journal::SubmittedJob],
        host: &str,
        datastore: Option<&str>,
    ) -> Result<(), ApiError> {
        let Some(job) = jobs.iter().rev().find(|j| j.kind == JobKind::MirrorDisks) else {
            return Err(self.rolled_back(name, host));
        };
        let url = self.agent_url(&job.host).await?;
        let ended = self
            .agents
            .job(&job.host, &url, &job.operation_id, 0)
            .await
            .ok();
        match ended {
            Some(j) if j.state == JobState::Succeeded => {
                let Some(JobResult::Config(config)) = j.result else {
                    return Err(self.rolled_back(name, host));
                };
                self.update_record(name, |mut r| {
                    r.config = config.clone();
                    Ok(r)
                })
                .await?;
                self.publish_moved(name, "storage", host, host, datastore)
                    .await;
                Ok(())
            }
            _ => Err(self.rolled_back(name, host)),
        }
    }

    /// Success when the record names `target` as owner, else the roll-back
    /// error.
    fn moved_or_not(
        &self,
        name: &str,
        rec: &crate::VmRecord,
        source: &str,
        target: &str,
    ) -> Result<(), ApiError> {
        if rec.owner.as_deref() == Some(target) && source != target {
            Ok(())
        } else {
            Err(self.rolled_back(name, source))
        }
    }

    fn rolled_back(&self, name: &str, source: &str) -> ApiError {
        ApiError::new(
            ErrorCode::HostError,
            format!("the server restarted during the move of VM '{name}'; it was rolled back and the VM stays on host '{source}' with its files; move it again"),
        )
    }
}
