//! The control plane's own state: servers, leader, store
//! (`vdc_control::control_plane`).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use utoipa::OpenApi;
use vdc_types::control_plane::{
    ControlPlaneLeader, ControlPlaneMember, ControlPlaneStatus, ServerRole,
};

use crate::error::ApiResult;
use crate::routes::AppState;

/// The control-plane routes, nested under `/api/v1`.
pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/cluster/control-plane", get(control_plane))
}

/// The control plane: its servers, which one leads, the store and its
/// revision. Any server answers it itself.
#[utoipa::path(get, path = "/api/v1/cluster/control-plane",
    responses((status = 200, body = ControlPlaneStatus)))]
pub(crate) async fn control_plane(
    State(st): State<AppState>,
) -> ApiResult<Json<ControlPlaneStatus>> {
    Ok(Json(st.cluster.control_plane_status().await?))
}

/// The control-plane part of the OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    paths(control_plane),
    components(schemas(ControlPlaneStatus, ControlPlaneMember, ControlPlaneLeader, ServerRole))
)]
pub(crate) struct ControlPlaneApi;

/// Adds [`ControlPlaneApi`] to the API's document.
pub(crate) struct ControlPlanePaths;

impl utoipa::Modify for ControlPlanePaths {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        doc.merge(ControlPlaneApi::openapi());
    }
}

/// The web page's control-plane section.
pub(crate) async fn web_script() -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "text/javascript")],
        include_str!("../web/controlplane.js"),
    )
}
