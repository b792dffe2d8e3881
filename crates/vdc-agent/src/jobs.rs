//! Agent-side jobs: long operations run in the background, named by the
//! operation id the server chose (see `vdc_types::job` and
//! `docs/contracts.md`).
//!
//! # Why
//! A provision that copies a large template, a suspend that writes guest
//! memory, a shutdown that waits for a guest: none of them should hang on
//! one HTTP request. The server submits a job, gets an answer at once, and
//! follows it with short (long-polling) requests; a lost answer or a server
//! restart costs nothing, because submitting the same operation id again
//! attaches to the job instead of running it twice.
//!
//! # Cancellation
//! `DELETE /agent/v1/jobs/{id}` fires the job's cancellation token; each
//! kind reacts at once, in its own way:
//! - provision: the running `qemu-img` is killed (dropped with
//!   `kill_on_drop`) and the files the job made are removed;
//! - image import: the same, for the partial image;
//! - suspend: QMP `migrate_cancel`, repeated until the suspend returns; QEMU
//!   resumes the guest and the VM is running again;
//! - shutdown: the wait for the guest ends, the VM goes back to running;
//! - start: launching QEMU takes seconds and is not cut in the middle; a
//!   VM started despite the cancel is powered off again.
//!
//! Finished jobs are kept for [`KEEP_FINISHED`] so that the server can read
//! their outcome after a restart; an agent restart forgets them (the server
//! then finds the VM's state in the reports).

use std::collections::HashMap;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use vdc_types::agent::ProvisionVmRequest;
use vdc_types::job::{validate_operation_id, Job, JobOp, JobRequest, JobResult, JobState};
use vdc_types::{now_ms, ApiError, ErrorCode, VmPowerState};

use crate::agent::Agent;
use crate::state::Input;

/// How long a finished job stays readable.
pub(crate) const KEEP_FINISHED: Duration = Duration::from_secs(3600);
/// How often a running job samples its progress.
const PROGRESS_TICK: Duration = Duration::from_millis(250);
/// Longest wait for one QMP question asked beside a running operation.
const QMP_SAMPLE: Duration = Duration::from_secs(1);

/// One job: what it does, its status (watched by long polls) and its
/// cancellation token.
pub(crate) struct JobCell {
    op: JobOp,
    status: watch::Sender<Job>,
    pub(crate) cancel: CancellationToken,
    /// Fired by `POST /agent/v1/jobs/{id}/proceed`: a live migration with
    /// storage goes on past the point where it waits for the server.
    pub(crate) proceed: CancellationToken,
    finished: Mutex<Option<Instant>>,
}

impl JobCell {
    fn snapshot(&self) -> Job {
        self.status.borrow().clone()
    }

    /// Records a migration job's figures.
    pub(crate) fn set_migration(&self, info: &vdc_types::migration::MigrationJobInfo) {
        self.status.send_if_modified(|j| {
            let changed = j.migration.as_ref() != Some(info);
            j.migration = Some(info.clone());
            changed
        });
    }

    pub(crate) fn progress(&self, percent: u8, stage: &str) {
        self.status.send_if_modified(|j| {
            let p = percent.min(99).max(j.progress);
            let changed = p != j.progress || j.stage.as_deref() != Some(stage);
            j.progress = p;
            j.stage = Some(stage.to_string());
            changed
        });
    }
}

/// The jobs of one agent.
#[derive(Default)]
pub(crate) struct Jobs {
    cells: Mutex<HashMap<String, Arc<JobCell>>>,
}

impl Jobs {
    fn cells(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<JobCell>>> {
        self.cells.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cell(&self, id: &str) -> Result<Arc<JobCell>, ApiError> {
        self.cells().get(id).cloned().ok_or_else(|| {
            ApiError::new(
                ErrorCode::NotFound,
                format!(
                    "job '{id}' not found on this host (never submitted, or the agent restarted)"
                ),
            )
        })
    }

    /// Forgets the jobs that ended more than [`KEEP_FINISHED`] before `now`.
    fn prune(&self, now: Instant) {
        self.cells().retain(|_, c| {
            let finished = *c.finished.lock().unwrap_or_else(|p| p.into_inner());
            !matches!(finished, Some(at) if now.saturating_duration_since(at) >= KEEP_FINISHED)
        });
    }

    /// Every job, newest first.
    pub fn list(&self) -> Vec<Job> {
        let mut v: Vec<Job> = self.cells().values().map(|c| c.snapshot()).collect();
        v.sort_by_key(|j| std::cmp::Reverse(j.started_ms));
        v
    }

    /// One job; with `wait`, waits up to that long for it to change
    /// (progress or end) before answering.
    pub async fn get(&self, id: &str, wait: Option<Duration>) -> Result<Job, ApiError> {
        let cell = self.cell(id)?;
        let mut rx = cell.status.subscribe();
        let now = rx.borrow_and_update().clone();
        if let Some(wait) = wait.filter(|_| !now.state.is_final()) {
            if let Ok(Ok(())) = tokio::time::timeout(wait, rx.changed()).await {
                return Ok(rx.borrow().clone());
            }
        }
        Ok(now)
    }

    /// Tells a job waiting for the server to go on (a live migration with
    /// storage); an ended job is returned unchanged.
    pub fn proceed(&self, id: &str) -> Result<Job, ApiError> {
        let cell = self.cell(id)?;
        if !cell.snapshot().state.is_final() {
            cell.proceed.cancel();
        }
        Ok(cell.snapshot())
    }

    /// Requests cancellation; the job's operation sees it at once.
    pub fn cancel(&self, id: &str) -> Result<Job, ApiError> {
        let cell = self.cell(id)?;
        if !cell.snapshot().state.is_final() {
            cell.status.send_modify(|j| j.cancel_requested = true);
            cell.cancel.cancel();
        }
        Ok(cell.snapshot())
    }
}

impl Agent {
    /// `POST /agent/v1/jobs`: starts the job, or returns the one already
    /// known under that operation id (`false` = not new).
    pub fn submit_job(self: &Arc<Self>, req: JobRequest) -> Result<(Job, bool), ApiError> {
        validate_operation_id(&req.operation_id).map_err(ApiError::invalid)?;
        if let Some(id) = req.op.vm_id() {
            if id.is_empty() {
                return Err(ApiError::invalid("the job names an empty VM id"));
            }
        }
        self.jobs.prune(Instant::now());
        let mut cells = self.jobs.cells();
        if let Some(cell) = cells.get(&req.operation_id) {
            if cell.op.kind() != req.op.kind() || cell.op.vm_id() != req.op.vm_id() {
                return Err(ApiError::new(
                    ErrorCode::AlreadyExists,
                    format!(
                        "operation id '{}' is already used by a {} job; choose a new operation id",
                        req.operation_id,
                        cell.op.kind()
                    ),
                ));
            }
            return Ok((cell.snapshot(), false));
        }
        let job = Job {
            id: req.operation_id.clone(),
            kind: req.op.kind(),
            vm_id: req.op.vm_id().map(str::to_string),
            state: JobState::Running,
            progress: 0,
            stage: None,
            cancel_requested: false,
            error: None,
            result: None,
            started_ms: now_ms(),
            finished_ms: None,
            migration: None,
        };
        let cell = Arc::new(JobCell {
            op: req.op,
            status: watch::Sender::new(job.clone()),
            cancel: CancellationToken::new(),
            proceed: CancellationToken::new(),
            finished: Mutex::new(None),
        });
        cells.insert(job.id.clone(), cell.clone());
        drop(cells);
        let agent = self.clone();
        tokio::spawn(agent.finish_job(cell));
        tracing::info!(job = %job.id, kind = %job.kind, "job started");
        Ok((job, true))
    }

    /// Runs a job to its end and records the outcome.
    async fn finish_job(self: Arc<Self>, cell: Arc<JobCell>) {
        let result = self.run_job(&cell).await;
        let id = cell.snapshot().id;
        match &result {
            Ok(_) => tracing::info!(job = %id, "job succeeded"),
            Err(e) => tracing::info!(job = %id, error = %e, "job ended without success"),
        }
        cell.status.send_modify(|j| {
            j.finished_ms = Some(now_ms());
            match result {
                Ok(r) => {
                    j.state = JobState::Succeeded;
                    j.progress = 100;
                    j.result = Some(r);
                }
                Err(e) if e.code == ErrorCode::Cancelled => {
                    j.state = JobState::Cancelled;
                    j.error = Some(e);
                }
                Err(e) => {
                    j.state = JobState::Failed;
                    j.error = Some(e);
                }
            }
        });
        *cell.finished.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// The jobs of this agent.
    pub(crate) fn jobs(&self) -> &Jobs {
        &self.jobs
    }

    async fn run_job(self: &Arc<Self>, cell: &JobCell) -> Result<JobResult, ApiError> {
        match cell.op.clone() {
            JobOp::Provision { request } => self.provision_job(cell, request).await,
            JobOp::Start { request } => {
                cell.progress(10, "launching QEMU");
                let id = request.config.id.clone();
                let started = self.start(&id, request.config).await;
                if cell.cancel.is_cancelled() {
                    if started.is_ok() {
                        if let Err(e) = self.power_off(&id).await {
                            tracing::warn!(vm = %id, error = %e, "cannot power off a VM whose start was cancelled");
                        }
                    }
                    return Err(job_cancelled());
                }
                started.map(JobResult::Vm)
            }
            JobOp::Shutdown { vm_id, timeout_s } => {
                cell.progress(10, "waiting for the guest to power off");
                let shutdown = self.shutdown(&vm_id, Duration::from_secs(timeout_s));
                tokio::select! {
                    r = shutdown => r.map(JobResult::Vm),
                    _ = cell.cancel.cancelled() => {
                        self.undo_shutdown(&vm_id).await;
                        Err(job_cancelled())
                    }
                }
            }
            JobOp::Suspend { vm_id } => self.suspend_job(cell, &vm_id).await,
            JobOp::Snapshot { request } => self
                .snapshot_job(cell, request)
                .await
                .map(JobResult::Snapshots),
            JobOp::MigrateIn { request } => self.migrate_in_job(cell, request).await,
            JobOp::MigrateOut { request } => self.migrate_out_job(cell, request).await,
            JobOp::MirrorDisks { request } => {
                cell.progress(1, "preparing the storage migration");
                self.mirror_disks(request, &cell.cancel, |p, stage| cell.progress(p, stage))
                    .await
                    .map(JobResult::Config)
            }
            JobOp::ReceiveVm { request } => {
                cell.progress(1, "copying the VM's files");
                let progress = |done: u64, total: u64| {
                    let p = (done.min(total) * 95).checked_div(total).unwrap_or(0);
                    cell.progress(p as u8, "copying the VM's files");
                };
                self.receive_vm(request, &cell.cancel, progress).await
            }
            JobOp::Backup { request } => self.backup_job(cell, request).await,
            JobOp::Replicate { request } => self.replicate_job(cell, request).await,
            JobOp::Restore { request } => self.restore_job(cell, request).await,
            JobOp::InstantServe { request } => self.instant_serve_job(cell, request).await,
            JobOp::InstantStream { request } => self.instant_stream_job(cell, request).await,
            JobOp::ExportOva { request } => {
                cell.progress(1, "converting the disks");
                let target = self.check_ova_target(&request.ova)?;
                let scratch = crate::ova::ExportScratch::beside(&target);
                let r = tokio::select! {
                    r = self.export_ova(&request, &target, &scratch, |p, s| cell.progress(p, s)) => r.map(JobResult::Exported),
                    _ = cell.cancel.cancelled() => Err(job_cancelled()),
                };
                scratch.remove();
                r
            }
            JobOp::ImportImage { request } => {
                cell.progress(10, "copying the image");
                let dest = self.resolve(&request.datastore, &request.path)?;
                let existed = dest.exists();
                tokio::select! {
                    r = self.import_image(request) => r.map(JobResult::Image),
                    _ = cell.cancel.cancelled() => {
                        if !existed {
                            remove_logged(&dest);
                        }
                        Err(job_cancelled())
                    }
                }
            }
        }
    }

    /// Provision with progress (size of the boot disk copied so far) and a
    /// cancel that kills `qemu-img` and removes what the job made.
    async fn provision_job(
        self: &Arc<Self>,
        cell: &JobCell,
        request: ProvisionVmRequest,
    ) -> Result<JobResult, ApiError> {
        let config = request.config.clone();
        let layout = self.layout(&config)?;
        let made_here = !layout.vm_dir.exists();
        let source_size = match &request.boot_source {
            vdc_types::agent::DiskSource::Template {
                datastore, path, ..
            } => self
                .resolve(datastore, path)
                .ok()
                .and_then(|p| std::fs::metadata(p).ok())
                .map(|m| m.len()),
            vdc_types::agent::DiskSource::Image { source, .. } => {
                std::fs::metadata(source).ok().map(|m| m.len())
            }
            vdc_types::agent::DiskSource::OvaDisk { size, .. } => Some(*size),
            vdc_types::agent::DiskSource::Blank => None,
        };
        cell.progress(5, "creating disks");
        // Boxed, so that dropping it below really ends `qemu-img`.
        let mut work = Box::pin(self.provision(&config.id, request));
        let mut tick = tokio::time::interval(PROGRESS_TICK);
        loop {
            tokio::select! {
                r = work.as_mut() => return r.map(JobResult::Vm),
                _ = cell.cancel.cancelled() => break,
                _ = tick.tick() => {
                    let copied = layout.disks.first().and_then(|d| std::fs::metadata(d).ok()).map(|m| m.len());
                    if let (Some(total), Some(done)) = (source_size.filter(|t| *t > 0), copied) {
                        cell.progress((done.saturating_mul(95) / total).min(95) as u8, "copying the boot disk");
                    }
                }
            }
        }
        // Cancelled: the dropped future killed qemu-img; remove its files.
        drop(work);
        if made_here {
            match self.destroy(&config.id, config.clone()).await {
                Ok(()) => {}
                Err(e) if e.code == ErrorCode::NotFound => {}
                Err(e) => {
                    tracing::warn!(vm = %config.name, error = %e, "cannot remove the files of a cancelled provision")
                }
            }
        }
        Err(job_cancelled())
    }

    /// Suspend with progress from `query-migrate`, and a cancel by
    /// `migrate_cancel` (the suspend then fails its own way: the state
    /// file is removed and the guest resumes).
    async fn suspend_job(&self, cell: &JobCell, vm_id: &str) -> Result<JobResult, ApiError> {
        // Already done (a job submitted again after the agent restarted).
        if let Ok(slot) = self.slot(vm_id) {
            if slot.state() == VmPowerState::Suspended {
                return Ok(JobResult::Vm(slot.runtime()));
            }
        }
        cell.progress(5, "saving memory to the datastore");
        let mut work = pin!(self.suspend(vm_id));
        let mut tick = tokio::time::interval(PROGRESS_TICK);
        let mut cancelling = false;
        loop {
            tokio::select! {
                r = &mut work => {
                    return match r {
                        Err(_) if cancelling => Err(job_cancelled()),
                        r => r.map(JobResult::Vm),
                    };
                }
                _ = cell.cancel.cancelled(), if !cancelling => {
                    let started = self
                        .slot(vm_id)
                        .is_ok_and(|s| s.state() == VmPowerState::Suspending);
                    if !started {
                        // Still waiting for the VM's operation lock: nothing to undo.
                        return Err(job_cancelled());
                    }
                    cancelling = true;
                    self.cancel_migration(vm_id).await;
                }
                _ = tick.tick() => {
                    let Ok((_, vm)) = self.running(vm_id) else { continue };
                    if cancelling {
                        // The migration may not have begun at the first
                        // cancel; repeat until the suspend gives up.
                        self.cancel_migration(vm_id).await;
                    } else if let Ok(Ok(info)) =
                        tokio::time::timeout(QMP_SAMPLE, vm.qmp().query_migrate()).await
                    {
                        // Bounded: the suspend itself is not polled meanwhile.
                        cell.progress(info.percent().min(95), "saving memory to the datastore");
                    }
                }
            }
        }
    }

    async fn cancel_migration(&self, vm_id: &str) {
        if let Ok((_, vm)) = self.running(vm_id) {
            match tokio::time::timeout(QMP_SAMPLE, vm.qmp().migrate_cancel()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(vm = %vm_id, error = %e, "migrate_cancel"),
                Err(_) => tracing::debug!(vm = %vm_id, "migrate_cancel took too long"),
            }
        }
    }

    /// After a cancelled shutdown: the guest keeps running.
    async fn undo_shutdown(&self, vm_id: &str) {
        let Ok((slot, vm)) = self.running(vm_id) else {
            return;
        };
        if slot.state() != VmPowerState::ShuttingDown {
            return;
        }
        let running = matches!(vm.run_state().await, Ok(vdc_qemu::RunState::Running));
        slot.inner().exit_requested = false;
        slot.apply(Input::ShutdownCancelled { running });
    }
}

pub(crate) fn job_cancelled() -> ApiError {
    ApiError::new(
        ErrorCode::Cancelled,
        "the job was cancelled and its work undone",
    )
}

fn remove_logged(path: &std::path::Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a partial file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running_cell(id: &str) -> Arc<JobCell> {
        Arc::new(JobCell {
            op: JobOp::Suspend { vm_id: "vm".into() },
            status: watch::Sender::new(Job {
                id: id.into(),
                kind: vdc_types::job::JobKind::Suspend,
                vm_id: Some("vm".into()),
                state: JobState::Running,
                progress: 0,
                stage: None,
                cancel_requested: false,
                error: None,
                result: None,
                started_ms: 1,
                finished_ms: None,
                migration: None,
            }),
            cancel: CancellationToken::new(),
            proceed: CancellationToken::new(),
            finished: Mutex::new(None),
        })
    }

    #[tokio::test]
    async fn a_long_poll_answers_when_the_job_moves() {
        let jobs = Jobs::default();
        let cell = running_cell("j1");
        jobs.cells().insert("j1".into(), cell.clone());
        let poll = jobs.get("j1", Some(Duration::from_secs(20)));
        let mover = async {
            tokio::task::yield_now().await;
            cell.progress(40, "saving memory");
        };
        let (job, ()) = tokio::join!(poll, mover);
        let job = job.expect("job");
        assert_eq!(
            (job.progress, job.stage.as_deref()),
            (40, Some("saving memory"))
        );
        // Progress never goes back, nor reaches 100 before the end.
        cell.progress(10, "saving memory");
        cell.progress(100, "saving memory");
        assert_eq!(jobs.get("j1", None).await.expect("job").progress, 99);
        assert_eq!(
            jobs.get("nope", None).await.expect_err("unknown").code,
            ErrorCode::NotFound
        );
    }

    #[tokio::test]
    async fn cancel_fires_the_token_of_a_running_job_only() {
        let jobs = Jobs::default();
        let cell = running_cell("j2");
        jobs.cells().insert("j2".into(), cell.clone());
        let seen = jobs.cancel("j2").expect("cancel");
        assert!(seen.cancel_requested);
        assert!(cell.cancel.is_cancelled());

        let ended = running_cell("j3");
        ended.status.send_modify(|j| j.state = JobState::Succeeded);
        jobs.cells().insert("j3".into(), ended.clone());
        let seen = jobs.cancel("j3").expect("cancel of an ended job");
        assert_eq!(seen.state, JobState::Succeeded);
        assert!(!seen.cancel_requested && !ended.cancel.is_cancelled());
    }

    #[test]
    fn finished_jobs_are_pruned_after_their_keep_time() {
        let jobs = Jobs::default();
        let now = Instant::now();
        let ended = running_cell("ended");
        *ended.finished.lock().unwrap() = Some(now);
        jobs.cells().insert("ended".into(), ended);
        jobs.cells()
            .insert("running".into(), running_cell("running"));
        jobs.prune(now + KEEP_FINISHED - Duration::from_secs(1));
        assert_eq!(jobs.cells().len(), 2, "pruned too early");
        jobs.prune(now + KEEP_FINISHED);
        let kept: Vec<String> = jobs.cells().keys().cloned().collect();
        assert_eq!(kept, ["running"]);
    }
}
