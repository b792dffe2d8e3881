//! Calls from the server to the agents' API (`/agent/v1`).

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use vdc_types::agent::{
    AgentShutdownRequest, AgentStartRequest, DestroyVmRequest, ImportImageRequest,
    ImportImageResponse, ProvisionVmRequest, VmRuntime,
};
use vdc_types::{ApiError, ErrorCode};

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

    async fn call<B: Serialize, T: DeserializeOwned>(
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

    /// Creates the VM's directory and disks.
    pub async fn provision(
        &self,
        host: &str,
        url: &str,
        req: &ProvisionVmRequest,
    ) -> Result<VmRuntime, ApiError> {
        let u = format!("{url}/agent/v1/vms/{}", req.config.id);
        self.call(
            host,
            reqwest::Method::PUT,
            u,
            Some(req),
            Duration::from_secs(600),
        )
        .await
    }

    /// Starts (or resumes from suspend) the VM.
    pub async fn start(
        &self,
        host: &str,
        url: &str,
        req: &AgentStartRequest,
    ) -> Result<VmRuntime, ApiError> {
        let u = format!("{url}/agent/v1/vms/{}/start", req.config.id);
        self.call(
            host,
            reqwest::Method::POST,
            u,
            Some(req),
            Duration::from_secs(300),
        )
        .await
    }

    /// Graceful shutdown with a power-off fallback.
    pub async fn shutdown(
        &self,
        host: &str,
        url: &str,
        id: &str,
        timeout_s: u64,
    ) -> Result<VmRuntime, ApiError> {
        let u = format!("{url}/agent/v1/vms/{id}/shutdown");
        let body = AgentShutdownRequest { timeout_s };
        self.call(
            host,
            reqwest::Method::POST,
            u,
            Some(&body),
            Duration::from_secs(timeout_s + 60),
        )
        .await
    }

    /// A body-less VM action: poweroff, reset, pause, resume, suspend.
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
            Duration::from_secs(600),
        )
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

    /// Imports an image file into a datastore.
    pub async fn import_image(
        &self,
        host: &str,
        url: &str,
        req: &ImportImageRequest,
    ) -> Result<ImportImageResponse, ApiError> {
        let u = format!("{url}/agent/v1/images/import");
        self.call(
            host,
            reqwest::Method::POST,
            u,
            Some(req),
            Duration::from_secs(1800),
        )
        .await
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
}
