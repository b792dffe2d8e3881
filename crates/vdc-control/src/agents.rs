//! Calls from the server to the agents' API (`/agent/v1`).
//!
//! Long operations (provision, start, shutdown, suspend, image import) are
//! agent-side jobs ([`AgentClient::run_job`]): one short request submits
//! the job under the task's operation id, then short long-polls follow it,
//! forwarding its progress to the task and a task cancel to the job. No
//! request waits longer than [`JOB_POLL_WAIT_S`] plus [`JOB_CALL_TIMEOUT`].

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use vdc_types::agent::{DestroyVmRequest, VmRuntime};
use vdc_types::job::{Job, JobRequest, JobResult, JobState};
use vdc_types::{ApiError, ErrorCode};

use crate::tasks::{cancelled, TaskCtx};

/// Timeout of one job request beyond its long-poll wait.
pub const JOB_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Long-poll wait of one job status request.
pub const JOB_POLL_WAIT_S: u64 = 5;
/// How long a job's host may stay unreachable before the task gives up on
/// the job (the journal keeps it, so a later resume can still attach).
pub const JOB_UNREACHABLE_LIMIT: Duration = Duration::from_secs(15);
/// Timeout of a short VM action (power off waits for QEMU to exit).
const ACTION_TIMEOUT: Duration = Duration::from_secs(90);
/// How often a job the agent forgot (it restarted) is submitted again.
const JOB_RESUBMITS: u32 = 3;

/// HTTP client of every agent, sharing one connection pool and the token.
#[derive(Clone)]
pub struct AgentClient {
    http: reqwest::Client,
    token: String,
}

impl AgentClient {
    /// A client sending `token`.
    pub fn new(token: String) -> AgentClient {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .build()
            .unwrap_or_default();
        AgentClient { http, token }
    }

    pub(crate) async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        host: &str,
        method: reqwest::Method,
        url: String,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<T, ApiError> {
        let mut rb = self
            .http
            .request(method, &url)
            .bearer_auth(&self.token)
            .timeout(timeout);
        if let Some(b) = body {
            rb = rb.json(b);
        }
        let resp = rb.send().await.map_err(|e| {
            ApiError::new(
                ErrorCode::HostUnavailable,
                format!("host '{host}' did not answer ({e}); check 'vdc host list'"),
            )
        })?;
        let status = resp.status();
        let bytes = crate::answers::read_agent_answer(host, resp).await?;
        if !status.is_success() {
            let mut err = serde_json::from_slice::<ApiError>(&bytes).unwrap_or_else(|_| {
                ApiError::new(
                    ErrorCode::HostError,
                    format!(
                        "host '{host}' answered {status}: {}",
                        String::from_utf8_lossy(&bytes)
                            .chars()
                            .take(300)
                            .collect::<String>()
                    ),
                )
            });
            if err.code == ErrorCode::Internal || err.code == ErrorCode::Unauthorized {
                err.code = ErrorCode::HostError;
                err.message = format!("host '{host}': {}", err.message);
            }
            return Err(err);
        }
        let body: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
        serde_json::from_slice(body).map_err(|e| {
            ApiError::new(
                ErrorCode::HostError,
                format!("host '{host}' sent an answer this server does not understand: {e}"),
            )
        })
    }

    /// A short body-less VM action: poweroff, reset, pause, resume (the
    /// agent waits at most a few seconds for QEMU, plus the supervisor's
    /// clean-up after a power off).
    pub async fn action(
        &self,
        host: &str,
        url: &str,
        id: &str,
        action: &str,
    ) -> Result<VmRuntime, ApiError> {
        let u = format!("{url}/agent/v1/vms/{id}/{action}");
        self.call(
            host,
            reqwest::Method::POST,
            u,
            Some(&serde_json::json!({})),
            ACTION_TIMEOUT,
        )
        .await
    }

    /// Pushes a VM's HA settings to its host (applied at once); the
    /// settings in force there.
    pub async fn set_ha(
        &self,
        host: &str,
        url: &str,
        id: &str,
        ha: &vdc_types::ha::VmHa,
    ) -> Result<vdc_types::ha::VmHa, ApiError> {
        let u = format!("{url}/agent/v1/vms/{id}/ha");
        self.call(host, reqwest::Method::PUT, u, Some(ha), JOB_CALL_TIMEOUT)
            .await
    }

    /// Every VM the host knows, as it sees them now.
    pub async fn vms(&self, host: &str, url: &str) -> Result<Vec<VmRuntime>, ApiError> {
        let u = format!("{url}/agent/v1/vms");
        self.call::<(), _>(host, reqwest::Method::GET, u, None, JOB_CALL_TIMEOUT)
            .await
    }

    /// Removes the VM's files.
    pub async fn destroy(
        &self,
        host: &str,
        url: &str,
        req: &DestroyVmRequest,
    ) -> Result<(), ApiError> {
        let u = format!("{url}/agent/v1/vms/{}", req.config.id);
        let _: serde_json::Value = self
            .call(
                host,
                reqwest::Method::DELETE,
                u,
                Some(req),
                Duration::from_secs(120),
            )
            .await?;
        Ok(())
    }

    /// What an image source holds (`POST /agent/v1/images/inspect`).
    pub async fn inspect_image(
        &self,
        host: &str,
        url: &str,
        req: &vdc_types::agent::InspectImageRequest,
    ) -> Result<vdc_types::agent::ImageInspection, ApiError> {
        let u = format!("{url}/agent/v1/images/inspect");
        self.call(host, reqwest::Method::POST, u, Some(req), JOB_CALL_TIMEOUT)
            .await
    }

    /// Removes a template's image file (`POST /agent/v1/images/remove`).
    pub async fn remove_image(
        &self,
        host: &str,
        url: &str,
        req: &vdc_types::agent::RemoveImageRequest,
    ) -> Result<(), ApiError> {
        let u = format!("{url}/agent/v1/images/remove");
        let _: serde_json::Value = self
            .call(host, reqwest::Method::POST, u, Some(req), JOB_CALL_TIMEOUT)
            .await?;
        Ok(())
    }

    /// Offers a stopped or suspended VM's files to another agent
    /// (`POST /agent/v1/exports`; the agent reads each file once for its
    /// SHA-256).
    pub async fn open_export(
        &self,
        host: &str,
        url: &str,
        req: &vdc_types::transfer::ExportRequest,
    ) -> Result<vdc_types::transfer::ExportResponse, ApiError> {
        let u = format!("{url}/agent/v1/exports");
        self.call(
            host,
            reqwest::Method::POST,
            u,
            Some(req),
            Duration::from_secs(300),
        )
        .await
    }

    /// Closes an export: its token stops working.
    pub async fn close_export(&self, host: &str, url: &str, id: &str) -> Result<(), ApiError> {
        let u = format!("{url}/agent/v1/exports/{id}");
        let _: serde_json::Value = self
            .call::<(), _>(host, reqwest::Method::DELETE, u, None, JOB_CALL_TIMEOUT)
            .await?;
        Ok(())
    }

    /// Part of a VM's serial console log, as raw bytes, and the log offset
    /// just past them. `query` is the agent's query string
    /// (`bytes=N` or `offset=N`).
    pub async fn console_read(
        &self,
        host: &str,
        url: &str,
        id: &str,
        query: &str,
    ) -> Result<(Vec<u8>, u64), ApiError> {
        let u = format!("{url}/agent/v1/vms/{id}/console?{query}");
        let unavailable = |e: reqwest::Error| {
            ApiError::new(
                ErrorCode::HostUnavailable,
                format!("host '{host}' did not answer ({e})"),
            )
        };
        let resp = self
            .http
            .get(&u)
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(unavailable)?;
        let status = resp.status();
        let offset = resp
            .headers()
            .get(vdc_types::api::CONSOLE_OFFSET_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let body = crate::answers::read_agent_answer(host, resp).await?;
        if !status.is_success() {
            return Err(serde_json::from_slice(&body).unwrap_or_else(|_| {
                ApiError::new(
                    ErrorCode::HostError,
                    format!("host '{host}' answered {status}"),
                )
            }));
        }
        let offset = offset.ok_or_else(|| {
            ApiError::new(
                ErrorCode::HostError,
                format!(
                    "host '{host}' sent no console offset; is its agent older than this server?"
                ),
            )
        })?;
        Ok((body, offset))
    }

    /// Types `req.data` on a VM's serial console.
    pub async fn console_input(
        &self,
        host: &str,
        url: &str,
        id: &str,
        req: &vdc_types::api::ConsoleInputRequest,
    ) -> Result<(), ApiError> {
        let u = format!("{url}/agent/v1/vms/{id}/console/input");
        let _: serde_json::Value = self
            .call(
                host,
                reqwest::Method::POST,
                u,
                Some(req),
                Duration::from_secs(15),
            )
            .await?;
        Ok(())
    }

    /// Submits a job (or attaches to the job with the same operation id).
    pub async fn submit_job(
        &self,
        host: &str,
        url: &str,
        req: &JobRequest,
    ) -> Result<Job, ApiError> {
        let u = format!("{url}/agent/v1/jobs");
        self.call(host, reqwest::Method::POST, u, Some(req), JOB_CALL_TIMEOUT)
            .await
    }

    /// A job's status, once it changes or after `wait_s` seconds.
    pub async fn job(&self, host: &str, url: &str, id: &str, wait_s: u64) -> Result<Job, ApiError> {
        let u = format!("{url}/agent/v1/jobs/{id}?wait_s={wait_s}");
        self.call::<(), Job>(
            host,
            reqwest::Method::GET,
            u,
            None,
            JOB_CALL_TIMEOUT + Duration::from_secs(wait_s),
        )
        .await
    }

    /// Tells a job waiting for the server to go on (a live migration with
    /// storage).
    pub async fn proceed_job(&self, host: &str, url: &str, id: &str) -> Result<Job, ApiError> {
        let u = format!("{url}/agent/v1/jobs/{id}/proceed");
        self.call::<(), Job>(host, reqwest::Method::POST, u, None, JOB_CALL_TIMEOUT)
            .await
    }

    /// Cancels a job.
    pub async fn cancel_job(&self, host: &str, url: &str, id: &str) -> Result<Job, ApiError> {
        let u = format!("{url}/agent/v1/jobs/{id}");
        self.call::<(), Job>(host, reqwest::Method::DELETE, u, None, JOB_CALL_TIMEOUT)
            .await
    }

    /// Runs `req` as a job on `host` and follows it to its end: progress
    /// goes to the task, scaled into `range` percent; a task cancel is sent
    /// to the job at once; a host that stops answering is waited for up to
    /// [`JOB_UNREACHABLE_LIMIT`]; a job the agent forgot (it restarted) is
    /// submitted again under the same operation id.
    pub async fn run_job(
        &self,
        host: &str,
        url: &str,
        req: &JobRequest,
        ctx: &TaskCtx,
        range: (u8, u8),
    ) -> Result<JobResult, ApiError> {
        let id = req.operation_id.as_str();
        let mut resubmits = 0;
        let mut unreachable_since: Option<tokio::time::Instant> = None;
        let mut cancel_sent = false;
        let mut job: Option<Job> = None;
        loop {
            let answer = match &job {
                // Cancelled before the job was seen: stop it if it started.
                None if ctx.is_cancelled() => match self.cancel_job(host, url, id).await {
                    Err(e) if e.code == ErrorCode::NotFound => return Err(cancelled()),
                    r => {
                        cancel_sent = r.is_ok();
                        r
                    }
                },
                None => self.submit_job(host, url, req).await,
                Some(j) if j.state.is_final() => return job_outcome(host, j.clone()),
                Some(j) => {
                    let (lo, hi) = range;
                    let pct = lo as u32 + (hi.saturating_sub(lo) as u32 * j.progress as u32) / 100;
                    if let Some(stage) = &j.stage {
                        ctx.progress(pct as u8, stage).await;
                    }
                    if ctx.is_cancelled() && !cancel_sent {
                        Err(ApiError::new(ErrorCode::Cancelled, "cancel"))
                    } else {
                        tokio::select! {
                            r = self.job(host, url, id, JOB_POLL_WAIT_S) => r,
                            _ = ctx.cancelled(), if !cancel_sent => {
                                Err(ApiError::new(ErrorCode::Cancelled, "cancel"))
                            }
                        }
                    }
                }
            };
            match answer {
                Ok(j) => {
                    unreachable_since = None;
                    job = Some(j);
                }
                Err(e) if e.code == ErrorCode::Cancelled => {
                    // Forward the task's cancel to the job.
                    match self.cancel_job(host, url, id).await {
                        Ok(j) => {
                            cancel_sent = true;
                            job = Some(j);
                        }
                        Err(e) => {
                            tracing::warn!(job = %id, error = %e, "cannot cancel the agent job yet");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    }
                }
                Err(e) if e.code == ErrorCode::HostUnavailable => {
                    let since = *unreachable_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() > JOB_UNREACHABLE_LIMIT {
                        return Err(e);
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e)
                    if e.code == ErrorCode::NotFound
                        && job.is_some()
                        && resubmits < JOB_RESUBMITS =>
                {
                    tracing::warn!(job = %id, host, "the agent lost the job (restarted?); submitting it again");
                    resubmits += 1;
                    job = None;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// The outcome of an ended job.
fn job_outcome(host: &str, job: Job) -> Result<JobResult, ApiError> {
    match job.state {
        JobState::Succeeded => job.result.ok_or_else(|| {
            ApiError::new(
                ErrorCode::HostError,
                format!("host '{host}' ended job {} without a result", job.id),
            )
        }),
        JobState::Cancelled => Err(cancelled()),
        JobState::Failed | JobState::Running => {
            let mut err = job.error.unwrap_or_else(|| {
                ApiError::new(
                    ErrorCode::HostError,
                    format!("job {} failed on host '{host}'", job.id),
                )
            });
            if err.code == ErrorCode::Internal {
                err.code = ErrorCode::HostError;
                err.message = format!("host '{host}': {}", err.message);
            }
            Err(err)
        }
    }
}
