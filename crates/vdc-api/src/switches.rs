//! Virtual switches (`vdc_control::switches`): defined once, realized on
//! every host; port groups are the networks on them.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use vdc_types::switch::{Switch, SwitchView};
use vdc_types::ApiError;

use crate::error::{ApiJson, ApiResult};
use crate::routes::AppState;

/// Every switch, with its port groups and each connected host's
/// realization (present, missing or drift; uplink members up or down).
#[utoipa::path(get, path = "/api/v1/switches", responses((status = 200, body = [SwitchView])))]
pub(crate) async fn list_switches(State(st): State<AppState>) -> ApiResult<Json<Vec<SwitchView>>> {
    Ok(Json(st.cluster.switch_views().await?))
}

/// Creates a switch: a Linux bridge with VLAN filtering (`managed`, the
/// default) that every host's agent creates, with the given uplinks
/// (none: an isolated switch), or an `existing` bridge the hosts already
/// have.
#[utoipa::path(post, path = "/api/v1/switches", request_body = Switch,
    responses((status = 201, body = Switch), (status = 400, body = ApiError, description = "a bad name, bridge or uplink"), (status = 409, body = ApiError, description = "the name or the bridge is taken")))]
pub(crate) async fn create_switch(
    State(st): State<AppState>,
    ApiJson(s): ApiJson<Switch>,
) -> ApiResult<(StatusCode, Json<Switch>)> {
    Ok((
        StatusCode::CREATED,
        Json(st.cluster.create_switch(s).await?),
    ))
}

/// One switch with its port groups and each host's realization.
#[utoipa::path(get, path = "/api/v1/switches/{name}", params(("name" = String, Path)),
    responses((status = 200, body = SwitchView), (status = 404, body = ApiError)))]
pub(crate) async fn get_switch(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<SwitchView>> {
    Ok(Json(st.cluster.switch_view(&name).await?))
}

/// Deletes a switch without port groups (the error names the port groups
/// and the VMs using them).
#[utoipa::path(delete, path = "/api/v1/switches/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ApiError), (status = 409, body = ApiError, description = "port groups are on it")))]
pub(crate) async fn delete_switch(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    st.cluster.delete_switch(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The web page's switches and port groups section (`/net.js`).
pub(crate) async fn web_script() -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/javascript; charset=utf-8",
        )],
        include_str!("../web/net.js"),
    )
}
