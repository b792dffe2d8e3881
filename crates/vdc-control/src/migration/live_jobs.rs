//! The agent jobs of a live migration as the server runs them: submitted
//! after being journaled (a restarted server finds and cancels them),
//! followed with long polls, cancelled and waited for.

use std::time::{Duration, Instant};

use vdc_types::job::{Job, JobOp, JobRequest, JobState};
use vdc_types::{ApiError, ErrorCode, Step};

use crate::journal;
use crate::tasks::{cancelled, TaskCtx};
use crate::Cluster;

/// How long a host may stay silent during a migration before it fails.
const SILENCE_LIMIT: Duration = Duration::from_secs(15);
/// Longest wait for a cancelled job to end.
pub(super) const CANCEL_LIMIT: Duration = Duration::from_secs(30);

impl Cluster {
    /// Submits `op` on `host`, journaled first (so a restarted server can
    /// find and cancel it). Returns the operation id.
    pub(super) async fn submit_journaled(
        &self,
        ctx: &TaskCtx,
        host: &str,
        url: &str,
        op: JobOp,
    ) -> Result<String, ApiError> {
        let kind = op.kind();
        let recorded = ctx.journal_now().await?;
        let id = journal::next_operation_id(ctx.id(), &recorded);
        ctx.journal(Step::JobSubmitted {
            host: host.to_string(),
            operation_id: id.clone(),
            job: kind,
        })
        .await?;
        let req = JobRequest {
            operation_id: id.clone(),
            op,
        };
        self.agents.submit_job(host, url, &req).await?;
        Ok(id)
    }

    pub(super) async fn journal_end(&self, ctx: &TaskCtx, id: &str, state: JobState) {
        if let Err(e) = ctx
            .journal(Step::JobEnded {
                operation_id: id.to_string(),
                state,
            })
            .await
        {
            tracing::warn!(task = %ctx.id(), error = %e, "cannot journal the end of a job");
        }
    }

    /// A job's status (long poll of `wait_s`); a host silent for longer than
    /// [`SILENCE_LIMIT`] fails the migration.
    pub(super) async fn follow(
        &self,
        _ctx: &TaskCtx,
        host: &str,
        url: &str,
        id: &str,
        wait_s: u64,
    ) -> Result<Job, ApiError> {
        let since = Instant::now();
        loop {
            match self.agents.job(host, url, id, wait_s).await {
                Ok(j) => return Ok(j),
                Err(e)
                    if e.code == ErrorCode::HostUnavailable && since.elapsed() < SILENCE_LIMIT =>
                {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) if e.code == ErrorCode::NotFound => {
                    return Err(ApiError::new(
                        ErrorCode::HostError,
                        format!("host '{host}' lost the migration job {id} (its agent restarted)"),
                    ))
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Cancels a job and waits (bounded) for it to end; failures are
    /// logged.
    pub(crate) async fn cancel_and_wait(&self, host: &str, url: &str, id: &str) {
        match self.agents.cancel_job(host, url, id).await {
            Ok(j) if j.state.is_final() => return,
            Ok(_) => {}
            Err(e) if e.code == ErrorCode::NotFound => return,
            Err(e) => {
                tracing::warn!(%host, job = %id, error = %e, "cannot cancel the migration job; the host cleans up when its wait ends");
                return;
            }
        }
        let since = Instant::now();
        while since.elapsed() < CANCEL_LIMIT {
            match self.agents.job(host, url, id, 5).await {
                Ok(j) if j.state.is_final() => return,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(%host, job = %id, error = %e, "cannot follow the cancelled migration job");
                    return;
                }
            }
        }
        tracing::warn!(%host, job = %id, "the cancelled migration job did not end in time");
    }
}

/// The error of an ended job that did not succeed.
pub(super) fn job_error(host: &str, j: &Job) -> ApiError {
    match (&j.state, &j.error) {
        (JobState::Cancelled, _) => cancelled(),
        (_, Some(e)) => {
            let mut e = e.clone();
            if !e.message.contains(host) {
                e.message = format!("host '{host}': {}", e.message);
            }
            e
        }
        _ => ApiError::new(
            ErrorCode::HostError,
            format!(
                "the {} job {} on host '{host}' did not succeed",
                j.kind, j.id
            ),
        ),
    }
}
