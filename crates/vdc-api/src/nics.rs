//! NICs of a VM added and removed (`vdc_control::nics`), hot-plugged while
//! it runs. Each change is a `vm.reconfigure` task; a refused request is
//! answered at once with nothing changed.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use vdc_types::nic::{AddNicRequest, NicChange};
use vdc_types::ApiError;

use crate::error::{ApiJson, ApiResult};
use crate::routes::AppState;

/// Adds a NIC on a port group (returns the `vm.reconfigure` task and the
/// NIC's id and MAC). A running VM gets it hot-plugged on a free PCIe
/// hot-plug port; a powered-off VM at its next start. The NIC gets an
/// address from the port group's pool.
#[utoipa::path(post, path = "/api/v1/vms/{name}/nics",
    request_body = AddNicRequest,
    params(("name" = String, Path)),
    responses((status = 202, body = NicChange), (status = 400, body = ApiError, description = "a bad MAC address"), (status = 404, body = ApiError, description = "no such VM or port group"), (status = 409, body = ApiError, description = "the MAC is used, the VM has no free hot-plug port (or none at all: created before they existed), its host does not realize the port group's switch, or its state or operation in flight forbids it"), (status = 503, body = ApiError)))]
pub(crate) async fn add_nic(
    State(st): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<AddNicRequest>,
) -> ApiResult<(StatusCode, Json<NicChange>)> {
    let change = st.cluster.add_nic(&name, req).await?;
    Ok((StatusCode::ACCEPTED, Json(change)))
}

/// Removes a NIC, named by its id (`hpnet0`, `net1`) or MAC (returns the
/// `vm.reconfigure` task). From a running VM only a hot-plugged NIC can be
/// removed: the guest is asked to release it first.
#[utoipa::path(delete, path = "/api/v1/vms/{name}/nics/{nic}",
    params(("name" = String, Path), ("nic" = String, Path, description = "NIC id or MAC address")),
    responses((status = 202, body = NicChange), (status = 404, body = ApiError, description = "no such VM or NIC"), (status = 409, body = ApiError, description = "a NIC on the root complex of a running VM, or the VM's state or operation in flight forbids it"), (status = 503, body = ApiError)))]
pub(crate) async fn remove_nic(
    State(st): State<AppState>,
    Path((name, nic)): Path<(String, String)>,
) -> ApiResult<(StatusCode, Json<NicChange>)> {
    let change = st.cluster.remove_nic(&name, &nic).await?;
    Ok((StatusCode::ACCEPTED, Json(change)))
}

/// The web page's VM NICs section (`/nics.js`).
pub(crate) async fn web_script() -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/javascript; charset=utf-8",
        )],
        include_str!("../web/nics.js"),
    )
}
