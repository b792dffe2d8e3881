//! Agent jobs run by tasks, journaled: the submission is written to the
//! task's journal before the request goes out (so a restarted server knows
//! the operation id to attach to), and the job's end after it is seen.

use vdc_types::job::{JobOp, JobRequest, JobResult, JobState};
use vdc_types::{ApiError, ErrorCode, Step};

use crate::journal;
use crate::tasks::TaskCtx;
use crate::Cluster;

impl Cluster {
    /// Runs `op` on `host` as a job of the task `ctx`, attaching to the
    /// task's pending job of the same kind on that host if the journal has
    /// one (a resumed task), else submitting a new one. Progress is scaled
    /// into `range`.
    pub(crate) async fn agent_job(
        &self,
        ctx: &TaskCtx,
        host: &str,
        url: &str,
        op: JobOp,
        range: (u8, u8),
    ) -> Result<JobResult, ApiError> {
        let kind = op.kind();
        let recorded = ctx.journal_now().await?;
        let operation_id = match journal::pending_job(&recorded, kind).filter(|p| p.host == host) {
            Some(p) => p.operation_id,
            None => {
                let id = journal::next_operation_id(ctx.id(), &recorded);
                ctx.journal(Step::JobSubmitted {
                    host: host.to_string(),
                    operation_id: id.clone(),
                    job: kind,
                })
                .await?;
                id
            }
        };
        let req = JobRequest {
            operation_id: operation_id.clone(),
            op,
        };
        let result = self.agents.run_job(host, url, &req, ctx, range).await;
        let ended = match &result {
            Ok(_) => Some(JobState::Succeeded),
            Err(e) if e.code == ErrorCode::Cancelled => Some(JobState::Cancelled),
            // Unknown: the job may still run; leave it pending.
            Err(e) if e.code == ErrorCode::HostUnavailable => None,
            Err(_) => Some(JobState::Failed),
        };
        if let Some(state) = ended {
            if let Err(e) = ctx
                .journal(Step::JobEnded {
                    operation_id,
                    state,
                })
                .await
            {
                tracing::warn!(task = %ctx.id(), error = %e, "cannot journal the end of a job");
            }
        }
        result
    }
}

/// The VM runtime a VM job produced.
pub(crate) fn vm_result(r: JobResult) -> Result<vdc_types::agent::VmRuntime, ApiError> {
    match r {
        JobResult::Vm(rt) => Ok(rt),
        _ => Err(ApiError::new(
            ErrorCode::HostError,
            "the host answered a VM job with something else",
        )),
    }
}
