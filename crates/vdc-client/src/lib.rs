//! Client of the vdc REST API (`/api/v1`), used by the CLI, the lab and the
//! end-to-end tests.
//!
//! Every call returns the server's own error body ([`ApiError`]) when the
//! server refused the request, so callers can show the administrator exactly
//! what was wrong.

mod backup;
mod clone;
mod control_plane;
mod dr;
mod events;
mod failover;
mod ha;
mod history;
mod maintenance;
mod migration;
mod nics;
pub mod replication;
mod sites;
mod snapshot;
mod switches;
mod tls;

use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;
use vdc_types::api::{CreateVmRequest, VersionInfo};
use vdc_types::auth::{AddHostRequest, HostCredential, HostJoin};
use vdc_types::{ApiError, Datastore, Event, Host, Task, TaskState, Vm};

/// Default API URL of the lab.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8500";
/// How long a client of several servers tries to resume a broken event
/// stream on another one.
pub const RESUME_PATIENCE: Duration = Duration::from_secs(30);
/// Largest answer the client reads (event history, long lists).
pub const ANSWER_MAX: usize = 32 << 20;
/// Largest event-stream frame the client buffers.
pub const EVENT_FRAME_MAX: usize = 1 << 20;

/// Default token file of the lab.
pub const DEFAULT_TOKEN_FILE: &str = "/run/vdc/lab/token";

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server refused the request; the body says why.
    #[error("{0}")]
    Api(ApiError),
    /// The server could not be reached.
    #[error("cannot reach the vdc server at {url}; is it running? ('vdc lab status')")]
    Transport {
        /// URL tried.
        url: String,
        /// Cause.
        #[source]
        source: reqwest::Error,
    },
    /// The answer was not what the API documents.
    #[error("unexpected answer from the server")]
    Decode(#[source] serde_json::Error),
    /// The client is misconfigured (URL, token).
    #[error("{0}")]
    Config(String),
    /// A waited-for task failed or was cancelled.
    #[error("task {} ({} {}) {}: {}", .0.id, .0.kind, .0.target, .0.state_word(), .0.error.as_ref().map(|e| e.message.as_str()).unwrap_or("no reason given"))]
    TaskFailed(Box<Task>),
    /// The server's answer was larger than this client reads.
    #[error("the server's answer from {url} is larger than {max} bytes; it was dropped")]
    TooLarge {
        /// URL called.
        url: String,
        /// The cap.
        max: usize,
    },
    /// Waiting ran out of time.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
}

trait StateWord {
    fn state_word(&self) -> &'static str;
}
impl StateWord for Task {
    fn state_word(&self) -> &'static str {
        match self.state {
            TaskState::Cancelled => "was cancelled",
            _ => "failed",
        }
    }
}

impl ClientError {
    /// The API error code, when the server answered with one.
    pub fn code(&self) -> Option<vdc_types::ErrorCode> {
        match self {
            ClientError::Api(e) => Some(e.code),
            ClientError::TaskFailed(t) => t.error.as_ref().map(|e| e.code),
            _ => None,
        }
    }
}

/// A connection to a vdc server, or to any of several (see [`failover`]).
#[derive(Debug, Clone)]
pub struct Client {
    servers: std::sync::Arc<failover::Servers>,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// A client of the server at `base_url` (e.g. `http://127.0.0.1:8500`),
    /// or of any of several separated by commas.
    pub fn new(base_url: &str, token: Option<String>) -> Client {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        Client {
            servers: std::sync::Arc::new(failover::Servers::parse(base_url)),
            token,
            http,
        }
    }

    /// A client configured from `VDC_URL`, `VDC_TOKEN` or `VDC_TOKEN_FILE`.
    pub fn from_env() -> Result<Client, ClientError> {
        let url = std::env::var("VDC_URL").unwrap_or_else(|_| DEFAULT_URL.to_string());
        for u in url.split(',').map(str::trim) {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(ClientError::Config(format!(
                    "VDC_URL '{url}': each server's URL must start with http:// or https:// (several are separated by commas)"
                )));
            }
        }
        let token = match std::env::var("VDC_TOKEN") {
            Ok(t) if !t.trim().is_empty() => Some(t.trim().to_string()),
            _ => {
                let explicit = std::env::var("VDC_TOKEN_FILE").ok();
                let path = explicit
                    .clone()
                    .unwrap_or_else(|| DEFAULT_TOKEN_FILE.to_string());
                match std::fs::read_to_string(&path) {
                    Ok(t) => Some(t.trim().to_string()),
                    Err(e) if explicit.is_some() => {
                        return Err(ClientError::Config(format!(
                            "cannot read the token file {path} named by VDC_TOKEN_FILE: {e}"
                        )))
                    }
                    Err(_) => None,
                }
            }
        };
        Ok(Client::new(&url, token))
    }

    /// The body of `resp`, at most [`ANSWER_MAX`] bytes.
    async fn read_answer(&self, resp: reqwest::Response) -> Result<Vec<u8>, ClientError> {
        use vdc_types::limits::{read_capped, BoundedError};
        let url = resp.url().to_string();
        read_capped(resp.bytes_stream(), ANSWER_MAX)
            .await
            .map_err(|e| match e {
                BoundedError::TooLarge { max } => ClientError::TooLarge { url, max },
                BoundedError::Read(e) => match e.downcast::<reqwest::Error>() {
                    Ok(source) => self.transport(*source),
                    Err(e) => ClientError::Config(format!("reading the answer failed: {e}")),
                },
                BoundedError::Decode(e) => ClientError::Decode(e),
            })
    }

    fn transport(&self, source: reqwest::Error) -> ClientError {
        ClientError::Transport {
            url: self.servers.current().to_string(),
            source,
        }
    }

    /// The base URL of the server in use.
    pub fn base_url(&self) -> &str {
        self.servers.current()
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1{}", self.servers.current(), path)
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, self.url(path));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        r
    }

    async fn send<T: DeserializeOwned>(
        &self,
        rb: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let resp = self.execute(rb).await?;
        let status = resp.status();
        let bytes = self.read_answer(resp).await?;
        if !status.is_success() {
            let err = serde_json::from_slice::<ApiError>(&bytes).unwrap_or_else(|_| {
                ApiError::internal(format!(
                    "server answered {status}: {}",
                    String::from_utf8_lossy(&bytes)
                        .chars()
                        .take(300)
                        .collect::<String>()
                ))
            });
            return Err(ClientError::Api(err));
        }
        let body: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
        serde_json::from_slice(body).map_err(ClientError::Decode)
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send(self.req(reqwest::Method::GET, path)).await
    }

    async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.send(self.req(reqwest::Method::POST, path).json(body))
            .await
    }

    /// `GET /version`.
    pub async fn version(&self) -> Result<VersionInfo, ClientError> {
        self.get("/version").await
    }
    /// `GET /hosts`.
    pub async fn list_hosts(&self) -> Result<Vec<Host>, ClientError> {
        self.get("/hosts").await
    }
    /// `POST /hosts`: adds a host and returns its agent credential (shown
    /// only once).
    pub async fn add_host(&self, name: &str) -> Result<HostCredential, ClientError> {
        self.post(
            "/hosts",
            &AddHostRequest {
                name: name.to_string(),
                replace: false,
            },
        )
        .await
    }
    /// `POST /hosts` with `replace`: a new agent credential for a host; the
    /// old one stops working at once.
    pub async fn replace_host_credential(&self, name: &str) -> Result<HostCredential, ClientError> {
        self.post(
            "/hosts",
            &AddHostRequest {
                name: name.to_string(),
                replace: true,
            },
        )
        .await
    }
    /// `GET /agents`: every added host and when its agent joined.
    pub async fn list_agents(&self) -> Result<Vec<HostJoin>, ClientError> {
        self.get("/agents").await
    }
    /// `GET /events?topics=…&limit=2000`: the event history, oldest first.
    pub async fn event_history(&self, topics: &str) -> Result<Vec<Event>, ClientError> {
        self.get(&format!("/events?topics={}&limit=2000", seg(topics)))
            .await
    }
    /// `PATCH /vms/{name}`: changes a VM's HA settings.
    pub async fn update_vm(
        &self,
        name: &str,
        req: &vdc_types::ha::UpdateVmRequest,
    ) -> Result<Vm, ClientError> {
        self.send(
            self.req(reqwest::Method::PATCH, &format!("/vms/{}", seg(name)))
                .json(req),
        )
        .await
    }
    /// `PUT /ha`: sets the HA admission policy.
    pub async fn set_ha_policy(
        &self,
        req: &vdc_types::ha::SetHaPolicyRequest,
    ) -> Result<vdc_types::ha::HaPolicy, ClientError> {
        self.send(self.req(reqwest::Method::PUT, "/ha").json(req))
            .await
    }
    /// `GET /ha`: HA settings, failover capacity, each host's HA state.
    pub async fn ha_status(&self) -> Result<vdc_types::ha::HaStatus, ClientError> {
        self.get("/ha").await
    }
    /// `GET /hosts/{name}`.
    pub async fn get_host(&self, name: &str) -> Result<Host, ClientError> {
        self.get(&format!("/hosts/{}", seg(name))).await
    }
    /// `GET /datastores`.
    pub async fn list_datastores(&self) -> Result<Vec<Datastore>, ClientError> {
        self.get("/datastores").await
    }
    /// `GET /vms`.
    pub async fn list_vms(&self) -> Result<Vec<Vm>, ClientError> {
        self.get("/vms").await
    }
    /// `GET /vms/{name}`.
    pub async fn get_vm(&self, name: &str) -> Result<Vm, ClientError> {
        self.get(&format!("/vms/{}", seg(name))).await
    }
    /// `POST /vms` (a task).
    pub async fn create_vm(&self, req: &CreateVmRequest) -> Result<Task, ClientError> {
        self.post("/vms", req).await
    }
    /// `POST /vms/{name}/{action}` (a task); `action` is a
    /// [`vdc_types::VmAction`] (any name may be sent, to test the server).
    pub async fn vm_action(
        &self,
        name: &str,
        action: impl AsRef<str>,
        body: serde_json::Value,
    ) -> Result<Task, ClientError> {
        self.post(
            &format!("/vms/{}/{}", seg(name), seg(action.as_ref())),
            &body,
        )
        .await
    }
    /// `DELETE /vms/{name}` (a task).
    pub async fn delete_vm(&self, name: &str) -> Result<Task, ClientError> {
        self.send(self.req(reqwest::Method::DELETE, &format!("/vms/{}", seg(name))))
            .await
    }
    /// `GET /vms/{name}/console?bytes=N`: the tail of the serial console.
    pub async fn console(&self, name: &str, bytes: u64) -> Result<String, ClientError> {
        Ok(self.console_tail(name, bytes).await?.0)
    }
    /// `GET /vms/{name}/console?bytes=N`: the tail of the serial console and
    /// the log offset just past it (`bytes` 0: only the end offset).
    pub async fn console_tail(&self, name: &str, bytes: u64) -> Result<(String, u64), ClientError> {
        self.console_get(&format!("/vms/{}/console?bytes={bytes}", seg(name)))
            .await
    }
    /// `GET /vms/{name}/console?offset=N`: the console output written since
    /// log offset `offset` (at most 1 MiB) and the offset to read on from.
    /// Feeding the returned offset back never misses or repeats output.
    pub async fn console_from(
        &self,
        name: &str,
        offset: u64,
    ) -> Result<(String, u64), ClientError> {
        self.console_get(&format!("/vms/{}/console?offset={offset}", seg(name)))
            .await
    }
    async fn console_get(&self, path: &str) -> Result<(String, u64), ClientError> {
        let resp = self.execute(self.req(reqwest::Method::GET, path)).await?;
        let status = resp.status();
        let offset = resp
            .headers()
            .get(vdc_types::api::CONSOLE_OFFSET_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let bytes = self.read_answer(resp).await?;
        if !status.is_success() {
            return Err(ClientError::Api(
                serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                    ApiError::internal(String::from_utf8_lossy(&bytes).into_owned())
                }),
            ));
        }
        let offset = offset.ok_or_else(|| {
            ClientError::Api(ApiError::internal(
                "the server sent no X-Console-Offset header; is it older than this client?",
            ))
        })?;
        Ok((String::from_utf8_lossy(&bytes).into_owned(), offset))
    }
    /// `POST /vms/{name}/console/input`: types `data` on the VM's serial
    /// console (1 to 4096 bytes; the VM must be running).
    pub async fn console_input(&self, name: &str, data: &str) -> Result<(), ClientError> {
        let body = vdc_types::api::ConsoleInputRequest {
            data: data.to_string(),
        };
        self.post(&format!("/vms/{}/console/input", seg(name)), &body)
            .await
    }
    /// `GET /tasks`.
    pub async fn list_tasks(&self) -> Result<Vec<Task>, ClientError> {
        self.get("/tasks").await
    }
    /// `GET /tasks/{id}`.
    pub async fn get_task(&self, id: &str) -> Result<Task, ClientError> {
        self.get(&format!("/tasks/{}", seg(id))).await
    }
    /// `POST /tasks/{id}/cancel`.
    pub async fn cancel_task(&self, id: &str) -> Result<Task, ClientError> {
        self.post(
            &format!("/tasks/{}/cancel", seg(id)),
            &serde_json::json!({}),
        )
        .await
    }

    /// Polls a task until it ends or `timeout` passes; `on_progress` sees
    /// every poll. A failed or cancelled task is `Err(TaskFailed)`.
    pub async fn wait_task(
        &self,
        id: &str,
        timeout: Duration,
        mut on_progress: impl FnMut(&Task),
    ) -> Result<Task, ClientError> {
        let deadline = Instant::now() + timeout;
        let mut delay = Duration::from_millis(50);
        loop {
            let t = self.get_task(id).await?;
            on_progress(&t);
            match t.state {
                TaskState::Succeeded => return Ok(t),
                TaskState::Failed | TaskState::Cancelled => {
                    return Err(ClientError::TaskFailed(Box::new(t)))
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(ClientError::Timeout(timeout, format!("task {id}")));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(250));
        }
    }
}
/// Percent-encodes one URL path segment.
fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'*') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded() {
        assert_eq!(seg("web-1"), "web-1");
        assert_eq!(seg("a/b c"), "a%2Fb%20c");
        assert_eq!(seg("vm.*"), "vm.*");
    }
}
