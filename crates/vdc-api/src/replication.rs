//! Replication (protected side) and replicas (recovery side)
//! (`vdc_control::replication`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};
use vdc_types::replication::{
    BeginPointRequest, BeginPointResponse, CommitPointRequest, EnableReplicationRequest,
    LinkLossPolicy, PointConsistency, RecoverMode, RecoverRequest, Replica, ReplicaConfig,
    ReplicaNic, ReplicaPin, ReplicaPoint, ReplicaState, Replication, ReplicationMode,
    ReplicationState, SyncReplicationRequest,
};
use vdc_types::{ApiError, Task};

use crate::error::{ApiJson, ApiResult};
use crate::routes::AppState;

/// The replication routes, nested under `/api/v1`.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/replications",
            get(list_replications).post(enable_replication),
        )
        .route(
            "/replications/{vm}",
            get(get_replication).delete(disable_replication),
        )
        .route("/replications/{vm}/sync", post(sync_replication))
        .route("/replicas", get(list_replicas))
        .route("/replicas/{vm}", get(get_replica).delete(delete_replica))
        .route("/replicas/{vm}/recover", post(recover_replica))
        .route("/replicas/{vm}/points", post(begin_point))
        .route("/replicas/{vm}/points/{id}/commit", post(commit_point))
        .route("/replicas/{vm}/points/{id}", delete(abort_point))
        .route("/replicas/{vm}/stopped", post(replica_stopped))
}

/// The replication part of the OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    paths(
        list_replications,
        enable_replication,
        get_replication,
        disable_replication,
        sync_replication,
        list_replicas,
        get_replica,
        delete_replica,
        recover_replica,
        begin_point,
        commit_point,
        abort_point,
        replica_stopped
    ),
    components(schemas(
        BeginPointRequest,
        BeginPointResponse,
        CommitPointRequest,
        EnableReplicationRequest,
        EnabledReplication,
        LinkLossPolicy,
        PointConsistency,
        RecoverMode,
        RecoverRequest,
        Replica,
        ReplicaConfig,
        ReplicaNic,
        ReplicaPin,
        ReplicaPoint,
        ReplicaState,
        Replication,
        ReplicationMode,
        ReplicationState,
        SyncReplicationRequest
    ))
)]
pub(crate) struct ReplicationApi;

/// The answer of `POST /api/v1/replications`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct EnabledReplication {
    /// The replication.
    replication: Replication,
    /// The task of the first full copy (`replication.initial_sync`).
    task: Task,
}

/// Every replication of this site's VMs, with its lag.
#[utoipa::path(get, path = "/api/v1/replications", responses((status = 200, body = [Replication])))]
pub(crate) async fn list_replications(
    State(st): State<AppState>,
) -> ApiResult<Json<Vec<Replication>>> {
    Ok(Json(st.cluster.list_replications().await?))
}

/// Protects a running VM to a paired site; the first full copy runs as a
/// task.
#[utoipa::path(post, path = "/api/v1/replications", request_body = EnableReplicationRequest,
    responses((status = 201, body = EnabledReplication), (status = 400, body = ApiError), (status = 404, body = ApiError, description = "no such VM or site"),
        (status = 409, body = ApiError, description = "already replicated, or the VM is not running")))]
pub(crate) async fn enable_replication(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<EnableReplicationRequest>,
) -> ApiResult<(StatusCode, Json<EnabledReplication>)> {
    let (replication, task) = st.cluster.enable_replication(req).await?;
    Ok((
        StatusCode::CREATED,
        Json(EnabledReplication { replication, task }),
    ))
}

/// One replication.
#[utoipa::path(get, path = "/api/v1/replications/{vm}", params(("vm" = String, Path)),
    responses((status = 200, body = Replication), (status = 404, body = ApiError)))]
pub(crate) async fn get_replication(
    State(st): State<AppState>,
    Path(vm): Path<String>,
) -> ApiResult<Json<Replication>> {
    Ok(Json(st.cluster.get_replication(&vm).await?))
}

/// Stops replicating a VM (its replica and points stay at the recovery
/// site).
#[utoipa::path(delete, path = "/api/v1/replications/{vm}", params(("vm" = String, Path)),
    responses((status = 204), (status = 404, body = ApiError)))]
pub(crate) async fn disable_replication(
    State(st): State<AppState>,
    Path(vm): Path<String>,
) -> ApiResult<StatusCode> {
    st.cluster.disable_replication(&vm).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A point now: the task (`replication.sync`) ends when the point is
/// applied at the recovery site.
#[utoipa::path(post, path = "/api/v1/replications/{vm}/sync", params(("vm" = String, Path)), request_body = SyncReplicationRequest,
    responses((status = 202, body = Task), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub(crate) async fn sync_replication(
    State(st): State<AppState>,
    Path(vm): Path<String>,
    ApiJson(req): ApiJson<SyncReplicationRequest>,
) -> ApiResult<(StatusCode, Json<Task>)> {
    Ok((
        StatusCode::ACCEPTED,
        Json(st.cluster.sync_replication(&vm, req).await?),
    ))
}

/// Every replica kept at this site.
#[utoipa::path(get, path = "/api/v1/replicas", responses((status = 200, body = [Replica])))]
pub(crate) async fn list_replicas(State(st): State<AppState>) -> ApiResult<Json<Vec<Replica>>> {
    Ok(Json(st.cluster.list_replicas().await?))
}

/// One replica with its fully applied points.
#[utoipa::path(get, path = "/api/v1/replicas/{vm}", params(("vm" = String, Path)),
    responses((status = 200, body = Replica), (status = 404, body = ApiError)))]
pub(crate) async fn get_replica(
    State(st): State<AppState>,
    Path(vm): Path<String>,
) -> ApiResult<Json<Replica>> {
    Ok(Json(st.cluster.get_replica(&vm).await?))
}

/// Removes a replica no longer replicated and without VMs made from it.
#[utoipa::path(delete, path = "/api/v1/replicas/{vm}", params(("vm" = String, Path)),
    responses((status = 204), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub(crate) async fn delete_replica(
    State(st): State<AppState>,
    Path(vm): Path<String>,
) -> ApiResult<StatusCode> {
    st.cluster.delete_replica(&vm).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Makes a VM at this site from a point of a replica (`test`: a linked
/// clone, replication goes on; `failover`: the replica takes no more
/// points). Answers the `vm.create` task of the VM made.
#[utoipa::path(post, path = "/api/v1/replicas/{vm}/recover", params(("vm" = String, Path)), request_body = RecoverRequest,
    responses((status = 202, body = Task), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub(crate) async fn recover_replica(
    State(st): State<AppState>,
    Path(vm): Path<String>,
    ApiJson(req): ApiJson<RecoverRequest>,
) -> ApiResult<(StatusCode, Json<Task>)> {
    Ok((
        StatusCode::ACCEPTED,
        Json(st.cluster.recover_replica(&vm, req).await?),
    ))
}

/// (Called by the protected site.) Starts a point: an image served over
/// NBD through this server's relay.
#[utoipa::path(post, path = "/api/v1/replicas/{vm}/points", params(("vm" = String, Path)), request_body = BeginPointRequest,
    responses((status = 201, body = BeginPointResponse), (status = 400, body = ApiError), (status = 409, body = ApiError)))]
pub(crate) async fn begin_point(
    State(st): State<AppState>,
    Path(vm): Path<String>,
    ApiJson(req): ApiJson<BeginPointRequest>,
) -> ApiResult<(StatusCode, Json<BeginPointResponse>)> {
    Ok((
        StatusCode::CREATED,
        Json(st.cluster.begin_point(&vm, req).await?),
    ))
}

/// (Called by the protected site.) The point is written: flushed, then
/// listed.
#[utoipa::path(post, path = "/api/v1/replicas/{vm}/points/{id}/commit", params(("vm" = String, Path), ("id" = u64, Path)), request_body = CommitPointRequest,
    responses((status = 200, body = ReplicaPoint), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub(crate) async fn commit_point(
    State(st): State<AppState>,
    Path((vm, id)): Path<(String, u64)>,
    ApiJson(req): ApiJson<CommitPointRequest>,
) -> ApiResult<Json<ReplicaPoint>> {
    Ok(Json(st.cluster.commit_point(&vm, id, req).await?))
}

/// (Called by the protected site.) Drops a point being applied.
#[utoipa::path(delete, path = "/api/v1/replicas/{vm}/points/{id}", params(("vm" = String, Path), ("id" = u64, Path)),
    responses((status = 204), (status = 404, body = ApiError)))]
pub(crate) async fn abort_point(
    State(st): State<AppState>,
    Path((vm, id)): Path<(String, u64)>,
) -> ApiResult<StatusCode> {
    st.cluster.abort_point(&vm, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// (Called by the protected site.) Replication of the VM stopped.
#[utoipa::path(post, path = "/api/v1/replicas/{vm}/stopped", params(("vm" = String, Path)),
    responses((status = 200, body = Replica), (status = 404, body = ApiError)))]
pub(crate) async fn replica_stopped(
    State(st): State<AppState>,
    Path(vm): Path<String>,
) -> ApiResult<Json<Replica>> {
    Ok(Json(st.cluster.replica_stopped(&vm).await?))
}

/// The sites and replication part of the web page.
pub(crate) async fn web_script() -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/javascript; charset=utf-8",
        )],
        include_str!("../web/replication.js"),
    )
}
