//! The agent's HTTP API (`/agent/v1`, see `docs/contracts.md`).
//!
//! Every route wants `Authorization: Bearer <server credential>`, the
//! credential the server handed over when this agent joined (401 otherwise,
//! and for every call before the agent has joined): neither a user token
//! nor an agent credential is accepted. Bodies are capped at
//! [`AGENT_BODY_MAX`] (413). Every error is an [`ApiError`] JSON body with the status of
//! its code, including malformed JSON bodies (400) and unknown routes (404):
//! axum's own plain-text rejections never reach a client.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use vdc_types::agent::{
    AgentShutdownRequest, AgentStartRequest, DestroyVmRequest, HostReport, ImportImageRequest,
    ImportImageResponse, ProvisionVmRequest, VmRuntime,
};
use vdc_types::api::{ConsoleInputRequest, CONSOLE_OFFSET_HEADER};
use vdc_types::job::{Job, JobRequest, MAX_JOB_WAIT_S};
use vdc_types::transfer::{ExportRequest, ExportResponse};
use vdc_types::{ApiError, ErrorCode};

use crate::agent::Agent;
use crate::console_log::ConsoleRange;

/// Default and largest console tail.
const CONSOLE_DEFAULT: u64 = 16 * 1024;
const CONSOLE_MAX: u64 = 4 * 1024 * 1024;
/// Largest console input body accepted before parsing (the data itself is
/// limited to `CONSOLE_INPUT_MAX_BYTES`; JSON escapes may triple it).
const CONSOLE_INPUT_BODY_MAX: usize = 64 * 1024;

/// Largest request body any agent route reads.
pub(crate) const AGENT_BODY_MAX: usize = 1 << 20;

/// An [`ApiError`] as a response.
pub(crate) struct Failure(pub ApiError);

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Failure(e)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self.0)).into_response()
    }
}

type ApiResult<T> = Result<Json<T>, Failure>;

/// A JSON body whose rejection is an [`ApiError`] (400).
pub(crate) struct Body<T>(pub T);

impl<S, T> FromRequest<S> for Body<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Failure;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(rej) if rej.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(Failure(ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    format!("the request body is larger than {AGENT_BODY_MAX} bytes"),
                )))
            }
            Err(rej) => Err(Failure(ApiError::invalid(format!(
                "malformed request body: {}",
                rej.body_text()
            )))),
        }
    }
}

/// The API router for `agent`.
pub(crate) fn router(agent: Arc<Agent>) -> Router {
    const VM: &str = "/agent/v1/vms/{id}";
    let authed = Router::new()
        .route("/agent/v1/host", get(host))
        .route("/agent/v1/vms", get(list_vms))
        .route(VM, put(provision).delete(destroy))
        .route(&format!("{VM}/start"), post(start))
        .route(&format!("{VM}/shutdown"), post(shutdown))
        .route(&format!("{VM}/poweroff"), post(power_off))
        .route(&format!("{VM}/reset"), post(reset))
        .route(&format!("{VM}/pause"), post(pause))
        .route(&format!("{VM}/resume"), post(resume))
        .route(&format!("{VM}/suspend"), post(suspend))
        .route(&format!("{VM}/ha"), put(set_ha))
        .route(&format!("{VM}/nics/plug"), post(plug_nic))
        .route(&format!("{VM}/nics/unplug"), post(unplug_nic))
        .route(&format!("{VM}/snapshots"), post(snapshot_tree))
        .route(&format!("{VM}/guest-identity"), post(guest_identity))
        .route(&format!("{VM}/console"), get(console))
        .route(
            &format!("{VM}/console/input"),
            post(console_input).layer(DefaultBodyLimit::max(CONSOLE_INPUT_BODY_MAX)),
        )
        .route("/agent/v1/images/import", post(import_image))
        .route("/agent/v1/images/remove", post(remove_image))
        .route("/agent/v1/images/inspect", post(inspect_image))
        .route("/agent/v1/ova/inspect", post(inspect_ova))
        .route("/agent/v1/jobs", post(submit_job).get(list_jobs))
        .route("/agent/v1/jobs/{id}", get(get_job).delete(cancel_job))
        .route("/agent/v1/jobs/{id}/proceed", post(proceed_job))
        .route("/agent/v1/lease-watches", put(set_lease_watches))
        .route("/agent/v1/replica-points", post(serve_point))
        .route("/agent/v1/replica-points/end", post(end_point))
        .route("/agent/v1/exports", post(open_export))
        .route("/agent/v1/exports/{id}", delete(close_export))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(AGENT_BODY_MAX))
        .layer(axum::middleware::from_fn_with_state(agent.clone(), auth))
        .with_state(agent.clone());
    // Read by another agent with the export's one-time token, not the
    // server credential (see `transfer`).
    let exports = Router::new()
        .route("/agent/v1/exports/{id}/files/{name}", get(export_file))
        .with_state(agent);
    exports.merge(authed)
}

/// Server-credential check in front of every route.
async fn auth(
    State(agent): State<Arc<Agent>>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(t) if agent.is_server(t) => next.run(req).await,
        _ if !agent.joined() => Failure(ApiError::new(
            ErrorCode::Unauthorized,
            "this agent has not joined the cluster yet; it accepts calls only from the server it joined",
        ))
        .into_response(),
        _ => Failure(ApiError::new(
            ErrorCode::Unauthorized,
            "only the vdc server may call the agent API; send 'Authorization: Bearer <server credential>'",
        ))
        .into_response(),
    }
}

async fn not_found(req: Request) -> Failure {
    Failure(ApiError::new(
        ErrorCode::NotFound,
        format!("no route {} {}", req.method(), req.uri().path()),
    ))
}

async fn host(State(agent): State<Arc<Agent>>) -> Json<HostReport> {
    Json(agent.host_report(false))
}

async fn list_vms(State(agent): State<Arc<Agent>>) -> Json<Vec<VmRuntime>> {
    Json(agent.runtimes())
}

async fn provision(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
    Body(req): Body<ProvisionVmRequest>,
) -> ApiResult<VmRuntime> {
    Ok(Json(agent.provision(&id, req).await?))
}

async fn start(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
    Body(req): Body<AgentStartRequest>,
) -> ApiResult<VmRuntime> {
    Ok(Json(agent.start(&id, req.config).await?))
}

async fn set_lease_watches(
    State(agent): State<Arc<Agent>>,
    Body(req): Body<vdc_types::lease_watch::LeaseWatchRequest>,
) -> ApiResult<Vec<vdc_types::lease_watch::LeaseWatchState>> {
    Ok(Json(agent.set_lease_watches(req)?))
}

async fn shutdown(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
    Body(req): Body<AgentShutdownRequest>,
) -> ApiResult<VmRuntime> {
    Ok(Json(
        agent
            .shutdown(&id, Duration::from_secs(req.timeout_s))
            .await?,
    ))
}

async fn power_off(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
) -> ApiResult<VmRuntime> {
    Ok(Json(agent.power_off(&id).await?))
}

async fn reset(State(agent): State<Arc<Agent>>, Path(id): Path<String>) -> ApiResult<VmRuntime> {
    Ok(Json(agent.reset(&id).await?))
}

async fn pause(State(agent): State<Arc<Agent>>, Path(id): Path<String>) -> ApiResult<VmRuntime> {
    Ok(Json(agent.pause(&id).await?))
}

async fn resume(State(agent): State<Arc<Agent>>, Path(id): Path<String>) -> ApiResult<VmRuntime> {
    Ok(Json(agent.resume(&id).await?))
}

async fn set_ha(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
    Body(ha): Body<vdc_types::ha::VmHa>,
) -> ApiResult<vdc_types::ha::VmHa> {
    Ok(Json(agent.set_ha(&id, ha).await?))
}

async fn plug_nic(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
    Body(req): Body<vdc_types::nic::NicHotplug>,
) -> ApiResult<VmRuntime> {
    Ok(Json(agent.plug_nic(&id, req).await?))
}

async fn unplug_nic(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
    Body(req): Body<vdc_types::nic::NicHotplug>,
) -> ApiResult<VmRuntime> {
    Ok(Json(agent.unplug_nic(&id, req).await?))
}

async fn suspend(State(agent): State<Arc<Agent>>, Path(id): Path<String>) -> ApiResult<VmRuntime> {
    Ok(Json(agent.suspend(&id).await?))
}

async fn guest_identity(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
    Body(req): Body<vdc_types::snapshot::GuestIdentityRequest>,
) -> Result<StatusCode, Failure> {
    agent.set_guest_identity(&id, &req).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn snapshot_tree(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
    Body(req): Body<vdc_types::snapshot::SnapshotTreeRequest>,
) -> ApiResult<vdc_types::snapshot::SnapshotTree> {
    if req.config.id != id {
        return Err(ApiError::invalid("the configuration is of another VM").into());
    }
    Ok(Json(agent.snapshot_tree(&req.config).await?))
}

async fn destroy(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
    Body(req): Body<DestroyVmRequest>,
) -> Result<StatusCode, Failure> {
    if let Some(keep) = &req.keep_boot_disk_as {
        agent.keep_boot_disk(&req.config, keep).await?;
    }
    agent.destroy(&id, req.config).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct ConsoleQuery {
    bytes: Option<String>,
    offset: Option<String>,
}

fn parse_number(what: &str, v: &str) -> Result<u64, Failure> {
    v.parse::<u64>()
        .map_err(|_| Failure(ApiError::invalid(format!("{what}='{v}' is not a number"))))
}

/// `?bytes=N` (tail, default) or `?offset=N` (from that offset); the answer
/// carries the offset just past its bytes in `X-Console-Offset`.
async fn console(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
    Query(query): Query<ConsoleQuery>,
) -> Result<Response, Failure> {
    let range = match (query.bytes, query.offset) {
        (Some(_), Some(_)) => {
            return Err(Failure(ApiError::invalid(
                "give either bytes (the tail) or offset (read on from there), not both",
            )))
        }
        (None, Some(o)) => ConsoleRange::From(parse_number("offset", &o)?),
        (Some(b), None) => ConsoleRange::Tail(parse_number("bytes", &b)?.min(CONSOLE_MAX)),
        (None, None) => ConsoleRange::Tail(CONSOLE_DEFAULT),
    };
    let (body, end) = agent.console_read(&id, range)?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                "text/plain; charset=utf-8".to_string(),
            ),
            (
                header::HeaderName::from_static(CONSOLE_OFFSET_HEADER),
                end.to_string(),
            ),
        ],
        body,
    )
        .into_response())
}

async fn console_input(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
    Body(req): Body<ConsoleInputRequest>,
) -> Result<StatusCode, Failure> {
    agent.console_input(&id, &req).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn import_image(
    State(agent): State<Arc<Agent>>,
    Body(req): Body<ImportImageRequest>,
) -> ApiResult<ImportImageResponse> {
    Ok(Json(agent.import_image(req).await?))
}

async fn inspect_image(
    State(agent): State<Arc<Agent>>,
    Body(req): Body<vdc_types::agent::InspectImageRequest>,
) -> ApiResult<vdc_types::agent::ImageInspection> {
    Ok(Json(agent.inspect_image(&req).await?))
}

async fn inspect_ova(
    State(agent): State<Arc<Agent>>,
    Body(req): Body<vdc_types::ova::InspectOvaRequest>,
) -> ApiResult<vdc_types::ova::OvaInspection> {
    Ok(Json(agent.inspect_ova(&req).await?))
}

async fn remove_image(
    State(agent): State<Arc<Agent>>,
    Body(req): Body<vdc_types::agent::RemoveImageRequest>,
) -> Result<StatusCode, Failure> {
    agent.remove_image(&req).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Starts a job (201) or attaches to the one with that operation id (200).
async fn submit_job(
    State(agent): State<Arc<Agent>>,
    Body(req): Body<JobRequest>,
) -> Result<(StatusCode, Json<Job>), Failure> {
    let (job, new) = agent.submit_job(req)?;
    let status = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(job)))
}

async fn list_jobs(State(agent): State<Arc<Agent>>) -> Json<Vec<Job>> {
    Json(agent.jobs().list())
}

#[derive(Deserialize)]
struct JobQuery {
    wait_s: Option<String>,
}

/// `?wait_s=N` (at most `MAX_JOB_WAIT_S`): answer when the job changes or
/// after N seconds, whichever comes first.
async fn get_job(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
    Query(query): Query<JobQuery>,
) -> ApiResult<Job> {
    let wait = match query.wait_s {
        Some(w) => {
            let w = parse_number("wait_s", &w)?;
            if w > MAX_JOB_WAIT_S {
                return Err(Failure(ApiError::invalid(format!(
                    "wait_s must be at most {MAX_JOB_WAIT_S}, not {w}"
                ))));
            }
            Some(Duration::from_secs(w))
        }
        None => None,
    };
    Ok(Json(agent.jobs().get(&id, wait).await?))
}

/// Cancels a running job at once (202); an ended job is returned as it is.
async fn cancel_job(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Job>), Failure> {
    Ok((StatusCode::ACCEPTED, Json(agent.jobs().cancel(&id)?)))
}

/// Tells a job waiting for the server to go on (200); an ended job is
/// returned as it is.
async fn proceed_job(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
) -> Result<Json<Job>, Failure> {
    Ok(Json(agent.jobs().proceed(&id)?))
}

async fn serve_point(
    State(agent): State<Arc<Agent>>,
    Body(req): Body<vdc_types::replication::ServePointRequest>,
) -> ApiResult<vdc_types::replication::ServePointResponse> {
    Ok(Json(agent.serve_point(req).await?))
}

async fn end_point(
    State(agent): State<Arc<Agent>>,
    Body(req): Body<vdc_types::replication::EndPointRequest>,
) -> ApiResult<serde_json::Value> {
    agent.end_point(req).await?;
    Ok(Json(serde_json::json!({})))
}

async fn open_export(
    State(agent): State<Arc<Agent>>,
    Body(req): Body<ExportRequest>,
) -> ApiResult<ExportResponse> {
    Ok(Json(agent.export_vm(req).await?))
}

async fn close_export(State(agent): State<Arc<Agent>>, Path(id): Path<String>) -> StatusCode {
    agent.exports.close(&id);
    StatusCode::NO_CONTENT
}

/// One file of an export, streamed; wants the export's token.
async fn export_file(
    State(agent): State<Arc<Agent>>,
    Path((id, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or_default();
    let path = agent.exports.file(&id, token, &name)?;
    let file = tokio::fs::File::open(&path).await.map_err(|e| {
        Failure(crate::error::host_error(
            format!("cannot open {}", path.display()),
            &e,
        ))
    })?;
    let len = file
        .metadata()
        .await
        .map_err(|e| Failure(crate::error::host_error("cannot read a file's size", &e)))?
        .len();
    let body =
        axum::body::Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file, 1 << 20));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        body,
    )
        .into_response())
}
