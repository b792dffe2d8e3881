//! Maintenance mode of a host (`vdc_control::maintenance`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use vdc_types::{ApiError, Host, Task};

use crate::error::ApiResult;
use crate::routes::AppState;

/// Puts a host in maintenance (returns a `host.maintenance` task): from
/// now on it takes no new VMs; the task moves every VM away (live for
/// running ones, cold for stopped ones on its local storage, ownership
/// only for stopped ones on shared storage) within the other hosts'
/// capacity. The task fails naming each VM it could not move and why
/// (also published as `host.evacuation_failed` events); the host stays in
/// maintenance.
#[utoipa::path(post, path = "/api/v1/hosts/{name}/maintenance/enter",
    params(("name" = String, Path)),
    responses((status = 202, body = Task), (status = 404, body = ApiError), (status = 409, body = ApiError, description = "an evacuation of the host is running")))]
pub(crate) async fn enter_maintenance(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<(StatusCode, Json<Task>)> {
    let task = st.cluster.enter_maintenance(&name).await?;
    Ok((StatusCode::ACCEPTED, Json(task)))
}

/// Takes a host out of maintenance: it takes VMs again (a running
/// evacuation is cancelled; VMs already moved stay where they went).
#[utoipa::path(post, path = "/api/v1/hosts/{name}/maintenance/exit",
    params(("name" = String, Path)),
    responses((status = 200, body = Host), (status = 404, body = ApiError), (status = 409, body = ApiError, description = "the host is not in maintenance")))]
pub(crate) async fn exit_maintenance(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Host>> {
    Ok(Json(st.cluster.exit_maintenance(&name).await?))
}
