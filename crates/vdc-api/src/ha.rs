//! High availability: the cluster's HA status and policy, and a VM's HA
//! settings (`vdc_control::ha`).

use axum::extract::{Path, State};
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
