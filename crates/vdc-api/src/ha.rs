//! High availability: the cluster's HA status and policy, a VM's HA
//! settings, order groups and alarms (`vdc_control::ha`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use vdc_types::{ApiError, Vm};

use crate::error::{ApiJson, ApiResult};
use crate::routes::AppState;

/// High availability: the settings, the failover capacity, and each
/// host's HA state with the ages of its network and datastore heartbeats.
#[utoipa::path(get, path = "/api/v1/ha", responses((status = 200, body = vdc_types::ha::HaStatus)))]
pub(crate) async fn ha_status(
    State(st): State<AppState>,
) -> ApiResult<Json<vdc_types::ha::HaStatus>> {
    Ok(Json(st.cluster.ha_status().await?))
}

/// Sets the HA admission policy: how many host failures the protected VMs
/// must survive; a create or power-on that would break it is refused.
#[utoipa::path(put, path = "/api/v1/ha", request_body = vdc_types::ha::SetHaPolicyRequest,
    responses((status = 200, body = vdc_types::ha::HaPolicy), (status = 400, body = ApiError)))]
pub(crate) async fn set_ha_policy(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<vdc_types::ha::SetHaPolicyRequest>,
) -> ApiResult<Json<vdc_types::ha::HaPolicy>> {
    Ok(Json(st.cluster.set_ha_policy(&req).await?))
}

/// Changes a VM's HA settings: restart priority, isolation response.
#[utoipa::path(patch, path = "/api/v1/vms/{name}", params(("name" = String, Path)), request_body = vdc_types::ha::UpdateVmRequest,
    responses((status = 200, body = Vm), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub(crate) async fn update_vm(
    State(st): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<vdc_types::ha::UpdateVmRequest>,
) -> ApiResult<Json<Vm>> {
    Ok(Json(st.cluster.update_vm(&name, &req).await?))
}

/// Every HA order group, in restart order (rank, then name), with its VMs.
#[utoipa::path(get, path = "/api/v1/ha/groups", responses((status = 200, body = [vdc_types::ha_group::HaGroup])))]
pub(crate) async fn list_ha_groups(
    State(st): State<AppState>,
) -> ApiResult<Json<Vec<vdc_types::ha_group::HaGroup>>> {
    Ok(Json(st.cluster.list_ha_groups().await?))
}

/// Creates an HA order group: after a host failure its VMs restart once
/// the VMs of the groups it starts after report ready (or their readiness
/// timeout passed). Refused: an unknown group in `after`, a cycle (named).
#[utoipa::path(post, path = "/api/v1/ha/groups", request_body = vdc_types::ha_group::CreateHaGroupRequest,
    responses((status = 201, body = vdc_types::ha_group::HaGroup), (status = 400, body = ApiError, description = "a bad name or timeout, an unknown group in after, or a cycle"), (status = 409, body = ApiError)))]
pub(crate) async fn create_ha_group(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<vdc_types::ha_group::CreateHaGroupRequest>,
) -> ApiResult<(StatusCode, Json<vdc_types::ha_group::HaGroup>)> {
    Ok((
        StatusCode::CREATED,
        Json(st.cluster.create_ha_group(&req).await?),
    ))
}

/// One HA order group.
#[utoipa::path(get, path = "/api/v1/ha/groups/{name}", params(("name" = String, Path)),
    responses((status = 200, body = vdc_types::ha_group::HaGroup), (status = 404, body = ApiError)))]
pub(crate) async fn get_ha_group(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<vdc_types::ha_group::HaGroup>> {
    Ok(Json(st.cluster.get_ha_group(&name).await?))
}

/// Changes what an HA order group starts after and its readiness timeout
/// (the body names the same group). Refused: an unknown group, a cycle.
#[utoipa::path(put, path = "/api/v1/ha/groups/{name}", params(("name" = String, Path)), request_body = vdc_types::ha_group::CreateHaGroupRequest,
    responses((status = 200, body = vdc_types::ha_group::HaGroup), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub(crate) async fn update_ha_group(
    State(st): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<vdc_types::ha_group::CreateHaGroupRequest>,
) -> ApiResult<Json<vdc_types::ha_group::HaGroup>> {
    Ok(Json(st.cluster.update_ha_group(&name, &req).await?))
}

/// Deletes an HA order group; refused while VMs are in it or another group
/// starts after it.
#[utoipa::path(delete, path = "/api/v1/ha/groups/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub(crate) async fn delete_ha_group(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    st.cluster.delete_ha_group(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Every alarm (raised and cleared), newest first.
#[utoipa::path(get, path = "/api/v1/alarms", responses((status = 200, body = [vdc_types::ha_group::Alarm])))]
pub(crate) async fn list_alarms(
    State(st): State<AppState>,
) -> ApiResult<Json<Vec<vdc_types::ha_group::Alarm>>> {
    Ok(Json(st.cluster.list_alarms().await?))
}

/// Acknowledges an alarm (it stays raised until its condition ends).
#[utoipa::path(post, path = "/api/v1/alarms/{id}/ack", params(("id" = String, Path)),
    responses((status = 200, body = vdc_types::ha_group::Alarm), (status = 404, body = ApiError)))]
pub(crate) async fn ack_alarm(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<vdc_types::ha_group::Alarm>> {
    Ok(Json(st.cluster.ack_alarm(&id).await?))
}
