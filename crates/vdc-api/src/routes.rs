//! Routes of the REST API.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, StatusCode};
use axum::middleware;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use utoipa::{IntoParams, OpenApi, ToSchema};
use vdc_control::{Cluster, ConsoleRange};
use vdc_types::api::{
    ConsoleInputRequest, CreateTemplateRequest, CreateVmRequest, ShutdownVmRequest, StartVmRequest,
    Template, VersionInfo, CONSOLE_OFFSET_HEADER,
};
use vdc_types::{ApiError, Datastore, ErrorCode, Host, Network, Task, Vm, VmAction};

use crate::credentials::Credentials;
use crate::error::{ApiBytes, ApiErr, ApiJson, ApiQuery, ApiResult};
use crate::join;
use crate::{events, ha, maintenance, migration, templates_vm};

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// The control plane.
    pub cluster: Arc<Cluster>,
    /// Who holds which credential.
    pub credentials: Arc<Credentials>,
    /// The cluster CA (signs the hosts' migration certificates); `None`
    /// in a server opened without one (tests).
    pub ca: Option<Arc<crate::tls::CaState>>,
}

impl AppState {
    /// Opens the credential registry and the control plane on `store`;
    /// `user_token` is the administrator's token. The control plane calls
    /// agents with the server credential.
    pub async fn open(
        store: Arc<dyn vdc_store::Store>,
        user_token: &str,
    ) -> Result<AppState, ApiError> {
        let credentials = Credentials::open(store.clone(), user_token).await?;
        let cluster = Cluster::open(store, credentials.server_credential().to_string()).await?;
        Ok(AppState {
            cluster,
            credentials: Arc::new(credentials),
            ca: None,
        })
    }

    /// Like [`AppState::open`], as the server `cp` of a control plane:
    /// leading at once (`leading`: the only server, on the embedded store)
    /// or as a follower until it wins the election.
    pub async fn open_in(
        store: Arc<dyn vdc_store::Store>,
        user_token: &str,
        cp: vdc_control::control_plane::ControlPlane,
        leading: bool,
    ) -> Result<AppState, ApiError> {
        let credentials = Credentials::open(store.clone(), user_token).await?;
        let token = credentials.server_credential().to_string();
        let cluster = if leading {
            Cluster::open_leading(store, token, cp).await?
        } else {
            Cluster::open_follower(store, token, cp).await?
        };
        Ok(AppState {
            cluster,
            credentials: Arc::new(credentials),
            ca: None,
        })
    }

    /// The same state with the cluster CA.
    pub fn with_ca(mut self, ca: crate::tls::CaState) -> AppState {
        self.ca = Some(Arc::new(ca));
        self
    }
}

/// The power actions of `POST /api/v1/vms/{name}/{action}` that take no
/// body (documentation of the path parameter; the server answers 400 to
/// any other).
#[derive(ToSchema)]
#[schema(as = VmActionName)]
#[allow(dead_code)]
#[serde(rename_all = "snake_case")]
pub(crate) enum VmActionName {
    /// Power off at once.
    Stop,
    /// Hard reset.
    Reset,
    /// Stop the vCPUs.
    Pause,
    /// Continue a paused or a suspended VM.
    Resume,
    /// Save memory to the datastore and stop.
    Suspend,
}

/// Largest request body any route reads (a host report with many VMs is
/// the largest legitimate body).
pub const API_BODY_MAX: usize = 1 << 20;

/// Builds the router.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/hosts", get(list_hosts).post(join::add_host))
        .route("/ha", get(ha::ha_status).put(ha::set_ha_policy))
        .route(
            "/ha/groups",
            get(ha::list_ha_groups).post(ha::create_ha_group),
        )
        .route(
            "/ha/groups/{name}",
            get(ha::get_ha_group)
                .put(ha::update_ha_group)
                .delete(ha::delete_ha_group),
        )
        .route("/alarms", get(ha::list_alarms))
        .route("/alarms/{id}/ack", post(ha::ack_alarm))
        .route("/cpu-baseline", get(crate::cpu_baseline::get_cpu_baseline))
        .route(
            "/migration/settings",
            get(crate::tls::get_settings).put(crate::tls::set_settings),
        )
        .route("/agents", get(join::list_agents))
        .route("/hosts/{name}", get(get_host))
        .route(
            "/hosts/{name}/maintenance/enter",
            post(maintenance::enter_maintenance),
        )
        .route(
            "/hosts/{name}/maintenance/exit",
            post(maintenance::exit_maintenance),
        )
        .route("/datastores", get(list_datastores))
        .route(
            "/switches",
            get(crate::switches::list_switches).post(crate::switches::create_switch),
        )
        .route(
            "/switches/{name}",
            get(crate::switches::get_switch).delete(crate::switches::delete_switch),
        )
        .route("/networks", get(list_networks).post(create_network))
        .route("/networks/{name}", get(get_network).delete(delete_network))
        .route("/templates", get(list_templates).post(create_template))
        .route(
            "/templates/{name}",
            get(templates_vm::get_template).delete(templates_vm::delete_template),
        )
        .route("/vms/{name}/clone", post(templates_vm::clone_vm))
        .route("/vms/{name}/nics", post(crate::nics::add_nic))
        .route(
            "/vms/{name}/nics/{nic}",
            axum::routing::delete(crate::nics::remove_nic),
        )
        .route("/imports/disk", post(templates_vm::import_disk))
        .route("/imports/ova", post(templates_vm::import_ova))
        .route("/vms/{name}/export", post(templates_vm::export_vm))
        .route(
            "/vms/{name}/to-template",
            post(templates_vm::vm_to_template),
        )
        .route("/vms", get(list_vms).post(create_vm))
        .route(
            "/vms/{name}",
            get(get_vm).delete(delete_vm).patch(ha::update_vm),
        )
        .route("/vms/{name}/console", get(vm_console))
        .route(
            "/vms/{name}/console/input",
            post(vm_console_input).layer(DefaultBodyLimit::max(CONSOLE_INPUT_BODY_MAX)),
        )
        .route("/vms/{name}/start", post(start_vm))
        .route("/vms/{name}/shutdown", post(shutdown_vm))
        .route("/vms/{name}/migrate", post(migration::migrate_vm))
        .route(
            "/vms/{name}/snapshots",
            get(crate::snapshots::list_snapshots).post(crate::snapshots::create_snapshot),
        )
        .route(
            "/vms/{name}/snapshots/{snapshot}",
            axum::routing::delete(crate::snapshots::delete_snapshot),
        )
        .route(
            "/vms/{name}/snapshots/{snapshot}/revert",
            post(crate::snapshots::revert_snapshot),
        )
        .route(
            "/vms/{name}/instant-clone",
            post(crate::snapshots::instant_clone),
        )
        .route(
            "/vms/{name}/clone-running",
            post(crate::snapshots::clone_running),
        )
        .route("/vms/{name}/{action}", post(vm_action))
        .route("/tasks", get(list_tasks))
        .route("/tasks/{id}", get(get_task))
        .route("/tasks/{id}/cancel", post(cancel_task))
        .route("/events", get(events::list_events))
        .route("/events/stream", get(events::stream_events))
        .route("/agent/report", post(join::agent_report))
        .route("/agent/join", post(join::agent_join))
        .merge(crate::backup::routes())
        .merge(crate::control_plane::routes())
        .merge(crate::dr::routes())
        .merge(crate::sites::routes())
        .merge(crate::replication::routes())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            crate::auth::auth,
        ))
        .route("/version", get(version))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(API_BODY_MAX));
    Router::new()
        .nest("/api/v1", api)
        .route("/", get(web_page))
        .route("/ui", get(web_page))
        .route("/ha.js", get(ha::web_script))
        .route("/backup.js", get(crate::backup::web_script))
        .route("/templates.js", get(templates_vm::web_script))
        .route("/snapshots.js", get(crate::snapshots::web_script))
        .route("/net.js", get(crate::switches::web_script))
        .route("/nics.js", get(crate::nics::web_script))
        .route("/controlplane.js", get(crate::control_plane::web_script))
        .route("/dr.js", get(crate::dr::web_script))
        .route("/replication.js", get(crate::replication::web_script))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::forward::forward,
        ))
        .with_state(state)
}

async fn not_found() -> ApiErr {
    ApiErr(ApiError::new(
        ErrorCode::NotFound,
        "no such API path; see /api/v1/openapi.json",
    ))
}

async fn method_not_allowed() -> Response {
    let mut r = ApiErr(ApiError::invalid(
        "this method is not allowed on this path; see /api/v1/openapi.json",
    ))
    .into_response();
    *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    r
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(crate::openapi::ApiDoc::openapi())
}

async fn web_page() -> Html<&'static str> {
    Html(include_str!("../web/index.html"))
}

/// Version of the server and its API.
#[utoipa::path(get, path = "/api/v1/version", responses((status = 200, body = VersionInfo)))]
async fn version() -> Json<VersionInfo> {
    Json(VersionInfo {
        version: env!("CARGO_PKG_VERSION").to_string(),
        api: "v1".to_string(),
    })
}

/// Every host.
#[utoipa::path(get, path = "/api/v1/hosts", responses((status = 200, body = [Host])))]
async fn list_hosts(State(st): State<AppState>) -> ApiResult<Json<Vec<Host>>> {
    Ok(Json(st.cluster.list_hosts().await?))
}

/// One host.
#[utoipa::path(get, path = "/api/v1/hosts/{name}", params(("name" = String, Path)),
    responses((status = 200, body = Host), (status = 404, body = ApiError)))]
async fn get_host(State(st): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<Host>> {
    Ok(Json(st.cluster.get_host(&name).await?))
}

/// Every datastore.
#[utoipa::path(get, path = "/api/v1/datastores", responses((status = 200, body = [Datastore])))]
async fn list_datastores(State(st): State<AppState>) -> ApiResult<Json<Vec<Datastore>>> {
    Ok(Json(st.cluster.list_datastores().await?))
}

/// Every network.
#[utoipa::path(get, path = "/api/v1/networks", responses((status = 200, body = [Network])))]
async fn list_networks(State(st): State<AppState>) -> ApiResult<Json<Vec<Network>>> {
    Ok(Json(st.cluster.list_networks().await?))
}

/// Creates a network (a port group): on a switch (or an existing bridge),
/// with a VLAN id or a trunk of ids on a managed switch, and an address
/// pool that overlaps no other on the same switch and VLAN.
#[utoipa::path(post, path = "/api/v1/networks", request_body = Network,
    responses((status = 201, body = Network), (status = 400, body = ApiError, description = "a field breaks its pattern, the switch does not exist, a VLAN is out of 1-4094 or on an existing bridge, the pool or gateway is outside the subnet, the pool is reversed or overlaps another on the same segment"), (status = 409, body = ApiError)))]
async fn create_network(
    State(st): State<AppState>,
    ApiJson(n): ApiJson<Network>,
) -> ApiResult<(StatusCode, Json<Network>)> {
    Ok((
        StatusCode::CREATED,
        Json(st.cluster.create_network(n).await?),
    ))
}

/// One network.
#[utoipa::path(get, path = "/api/v1/networks/{name}", params(("name" = String, Path)),
    responses((status = 200, body = Network), (status = 404, body = ApiError)))]
async fn get_network(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Network>> {
    Ok(Json(st.cluster.get_network(&name).await?))
}

/// Deletes a network no VM uses.
#[utoipa::path(delete, path = "/api/v1/networks/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn delete_network(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    st.cluster.delete_network(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Every template.
#[utoipa::path(get, path = "/api/v1/templates", responses((status = 200, body = [Template])))]
async fn list_templates(State(st): State<AppState>) -> ApiResult<Json<Vec<Template>>> {
    Ok(Json(st.cluster.list_templates().await?))
}

/// Imports a disk image as a template (returns a task).
#[utoipa::path(post, path = "/api/v1/templates", request_body = CreateTemplateRequest,
    responses((status = 202, body = Task), (status = 400, body = ApiError), (status = 404, body = ApiError, description = "no such datastore or host"), (status = 409, body = ApiError), (status = 503, body = ApiError, description = "no connected host reaches the datastore")))]
async fn create_template(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<CreateTemplateRequest>,
) -> ApiResult<(StatusCode, Json<Task>)> {
    Ok((
        StatusCode::ACCEPTED,
        Json(st.cluster.create_template(req).await?),
    ))
}

/// Every VM.
#[utoipa::path(get, path = "/api/v1/vms", responses((status = 200, body = [Vm])))]
async fn list_vms(State(st): State<AppState>) -> ApiResult<Json<Vec<Vm>>> {
    Ok(Json(st.cluster.list_vms().await?))
}

/// Creates a VM (returns a task).
#[utoipa::path(post, path = "/api/v1/vms", request_body = CreateVmRequest,
    responses((status = 202, body = Task), (status = 400, body = ApiError), (status = 404, body = ApiError, description = "no such template, datastore, network or host"), (status = 409, body = ApiError), (status = 503, body = ApiError, description = "no host is connected")))]
async fn create_vm(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<CreateVmRequest>,
) -> ApiResult<(StatusCode, Json<Task>)> {
    Ok((StatusCode::ACCEPTED, Json(st.cluster.create_vm(req).await?)))
}

/// One VM.
#[utoipa::path(get, path = "/api/v1/vms/{name}", params(("name" = String, Path)),
    responses((status = 200, body = Vm), (status = 404, body = ApiError)))]
async fn get_vm(State(st): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<Vm>> {
    Ok(Json(st.cluster.get_vm(&name).await?))
}

/// Deletes a stopped VM and its files (returns a task).
#[utoipa::path(delete, path = "/api/v1/vms/{name}", params(("name" = String, Path)),
    responses((status = 202, body = Task), (status = 404, body = ApiError), (status = 409, body = ApiError), (status = 503, body = ApiError)))]
async fn delete_vm(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<(StatusCode, Json<Task>)> {
    Ok((
        StatusCode::ACCEPTED,
        Json(st.cluster.delete_vm(&name).await?),
    ))
}

/// Powers a VM on (returns a task): on the host given, else the host
/// holding its suspended state, else where placement finds room. The body
/// is optional.
#[utoipa::path(post, path = "/api/v1/vms/{name}/start",
    request_body(content = Option<StartVmRequest>, description = "optional"),
    params(("name" = String, Path)),
    responses((status = 202, body = Task), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError), (status = 503, body = ApiError, description = "no connected host can run it")))]
async fn start_vm(
    State(st): State<AppState>,
    Path(name): Path<String>,
    ApiBytes(body): ApiBytes,
) -> ApiResult<(StatusCode, Json<Task>)> {
    let req: StartVmRequest = optional_body(&body)?;
    let task = st.cluster.start_vm(&name, req.host).await?;
    Ok((StatusCode::ACCEPTED, Json(task)))
}

/// Presses the VM's ACPI power button and powers it off after the timeout
/// (returns a task). The body is optional.
#[utoipa::path(post, path = "/api/v1/vms/{name}/shutdown",
    request_body(content = Option<ShutdownVmRequest>, description = "optional"),
    params(("name" = String, Path)),
    responses((status = 202, body = Task), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError), (status = 503, body = ApiError, description = "the VM's host is not connected")))]
async fn shutdown_vm(
    State(st): State<AppState>,
    Path(name): Path<String>,
    ApiBytes(body): ApiBytes,
) -> ApiResult<(StatusCode, Json<Task>)> {
    let req: ShutdownVmRequest = optional_body(&body)?;
    let task = st
        .cluster
        .vm_action(&name, VmAction::Shutdown, req.timeout_s)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(task)))
}

/// A power action without a body (returns a task): `stop` (power off at
/// once), `reset`, `pause`, `resume` (a paused or a suspended VM),
/// `suspend` (memory to the datastore). `start` and `shutdown` have their
/// own operations.
#[utoipa::path(post, path = "/api/v1/vms/{name}/{action}",
    params(("name" = String, Path), ("action" = VmActionName, Path)),
    responses((status = 202, body = Task), (status = 400, body = ApiError, description = "unknown action"), (status = 404, body = ApiError), (status = 409, body = ApiError), (status = 503, body = ApiError, description = "the VM's host is not connected")))]
async fn vm_action(
    State(st): State<AppState>,
    Path((name, action)): Path<(String, String)>,
) -> ApiResult<(StatusCode, Json<Task>)> {
    let action = posted_action(&action)?;
    let task = st.cluster.vm_action(&name, action, None).await?;
    Ok((StatusCode::ACCEPTED, Json(task)))
}

/// The [`VmAction`] named in `POST /vms/{name}/{action}`. Start, shutdown
/// and migrate have their own routes; failover, snapshot and backup are
/// modelled but refused by the cluster as not available yet.
fn posted_action(name: &str) -> Result<VmAction, ApiErr> {
    match name.parse::<VmAction>() {
        Ok(VmAction::Delete) => Err(ApiErr(ApiError::invalid(
            "a VM is deleted with DELETE /api/v1/vms/{name}, not POST",
        ))),
        Ok(a) => Ok(a),
        Err(_) => {
            let posted: Vec<&str> = VmAction::POSTED.iter().map(|a| a.as_str()).collect();
            Err(ApiErr(ApiError::invalid(format!(
                "unknown action '{}'; use {}",
                name.escape_default(),
                posted.join(", ")
            ))))
        }
    }
}

/// An optional JSON body: empty (or `null`) means every field's default.
pub(crate) fn optional_body<T: serde::de::DeserializeOwned + Default>(
    body: &[u8],
) -> Result<T, ApiErr> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(T::default());
    }
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        ApiErr(ApiError::invalid(format!(
            "the request body is not valid JSON: {e}"
        )))
    })?;
    if v.is_null() {
        return Ok(T::default());
    }
    parse_body(v)
}

fn parse_body<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, ApiErr> {
    crate::error::from_json_value(v)
}

/// Largest console input body read before parsing (the text itself is
/// limited to 4096 bytes; JSON escapes may make the body longer).
const CONSOLE_INPUT_BODY_MAX: usize = 64 * 1024;
/// Largest console tail.
const CONSOLE_TAIL_MAX: u64 = 1 << 20;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ConsoleQuery {
    /// How many bytes of the end of the console log (default 16384, at most
    /// 1 MiB; 0 returns nothing but the end offset).
    #[param(minimum = 0, maximum = 1048576)]
    bytes: Option<u64>,
    /// Instead of a tail: the bytes from this log offset on (at most 1 MiB
    /// per call), taken from a previous answer's `X-Console-Offset`. An
    /// offset past the end (the log was replaced) reads from the start.
    offset: Option<u64>,
    /// The API token, for clients that cannot set a header (a browser's
    /// `EventSource`); prefer `Authorization: Bearer`.
    #[serde(default)]
    #[allow(dead_code)]
    access_token: Option<String>,
}

/// Part of the VM's serial console log (text): the tail, or everything
/// after an offset. The `X-Console-Offset` header holds the log offset just
/// past the returned bytes; pass it as `offset` to read on without missing
/// or repeating output.
#[utoipa::path(get, path = "/api/v1/vms/{name}/console", params(("name" = String, Path), ConsoleQuery),
    responses((status = 200, body = String, content_type = "text/plain", headers(("X-Console-Offset" = u64, description = "log offset just past the returned bytes"))), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError), (status = 502, body = ApiError), (status = 503, body = ApiError)))]
async fn vm_console(
    State(st): State<AppState>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ConsoleQuery>,
) -> ApiResult<Response> {
    let range = match (q.bytes, q.offset) {
        (Some(_), Some(_)) => {
            return Err(ApiErr(ApiError::invalid(
                "give either bytes (the tail) or offset (read on from there), not both",
            )))
        }
        (None, Some(o)) => ConsoleRange::From(o),
        (b, None) => {
            let bytes = b.unwrap_or(16384);
            if bytes > CONSOLE_TAIL_MAX {
                return Err(ApiErr(ApiError::invalid(format!(
                    "bytes must be between 0 and {CONSOLE_TAIL_MAX}, not {bytes}"
                ))));
            }
            ConsoleRange::Tail(bytes)
        }
    };
    let (body, end) = st.cluster.vm_console_read(&name, range).await?;
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

/// Types text on the VM's serial console (keystrokes for the guest's
/// ttyS0; end a command with "\n"). The VM must be running; its output
/// appears in the console log.
#[utoipa::path(post, path = "/api/v1/vms/{name}/console/input", params(("name" = String, Path)),
    request_body = ConsoleInputRequest,
    responses((status = 204, description = "the guest's console took the input"), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError), (status = 502, body = ApiError), (status = 503, body = ApiError)))]
async fn vm_console_input(
    State(st): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<ConsoleInputRequest>,
) -> ApiResult<StatusCode> {
    st.cluster.vm_console_input(&name, &req).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Tasks, newest first.
#[utoipa::path(get, path = "/api/v1/tasks", responses((status = 200, body = [Task])))]
async fn list_tasks(State(st): State<AppState>) -> ApiResult<Json<Vec<Task>>> {
    Ok(Json(st.cluster.tasks.list().await?))
}

/// One task.
#[utoipa::path(get, path = "/api/v1/tasks/{id}", params(("id" = String, Path)),
    responses((status = 200, body = Task), (status = 404, body = ApiError)))]
async fn get_task(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Task>> {
    Ok(Json(st.cluster.tasks.get(&id).await?))
}

/// Requests cancellation of a task.
#[utoipa::path(post, path = "/api/v1/tasks/{id}/cancel", params(("id" = String, Path)),
    responses((status = 200, body = Task), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn cancel_task(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Task>> {
    Ok(Json(st.cluster.tasks.cancel(&id).await?))
}
