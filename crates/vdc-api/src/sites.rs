//! Sites: this installation's name, pairing, paired sites
//! (`vdc_control::sites`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use utoipa::OpenApi;
use vdc_types::site::{LocalSite, PairSiteRequest, Site, SitePairRequest};
use vdc_types::ApiError;

use crate::error::{ApiJson, ApiResult};
use crate::routes::AppState;

/// The site routes, nested under `/api/v1`.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/sites", get(list_sites))
        .route("/sites/local", get(local_site))
        .route("/sites/pair", post(pair_site))
        .route("/sites/pair-request", post(pair_request))
        .route("/sites/{name}", get(get_site).delete(unpair_site))
}

/// The site part of the OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    paths(list_sites, local_site, pair_site, pair_request, get_site, unpair_site),
    components(schemas(LocalSite, PairSiteRequest, Site, SitePairRequest))
)]
pub(crate) struct SitesApi;

/// This installation's site name and the URL peers call it at.
#[utoipa::path(get, path = "/api/v1/sites/local", responses((status = 200, body = LocalSite)))]
pub(crate) async fn local_site(State(st): State<AppState>) -> Json<LocalSite> {
    Json(st.cluster.local_site())
}

/// The paired sites, each with whether it answers, when it last did and
/// the round trip.
#[utoipa::path(get, path = "/api/v1/sites", responses((status = 200, body = [Site])))]
pub(crate) async fn list_sites(State(st): State<AppState>) -> ApiResult<Json<Vec<Site>>> {
    Ok(Json(st.cluster.list_sites().await?))
}

/// One paired site.
#[utoipa::path(get, path = "/api/v1/sites/{name}", params(("name" = String, Path)),
    responses((status = 200, body = Site), (status = 404, body = ApiError)))]
pub(crate) async fn get_site(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Site>> {
    Ok(Json(st.cluster.get_site(&name).await?))
}

/// Pairs this site with the site at `url` (an API token of that site
/// authenticates the call): both sites store the pairing.
#[utoipa::path(post, path = "/api/v1/sites/pair", request_body = PairSiteRequest,
    responses((status = 201, body = Site), (status = 400, body = ApiError, description = "a bad URL, the peer has another name or this site's own"),
        (status = 409, body = ApiError, description = "already paired"), (status = 503, body = ApiError, description = "the peer does not answer")))]
pub(crate) async fn pair_site(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<PairSiteRequest>,
) -> ApiResult<(StatusCode, Json<Site>)> {
    let peer = st.cluster.peer_site_name(&req).await?;
    let token = st.credentials.add_site(&peer).await?;
    match st.cluster.pair_site(&req, &peer, token).await {
        Ok(site) => Ok((StatusCode::CREATED, Json(site))),
        Err(e) => {
            if let Err(undo) = st.credentials.remove_site(&peer).await {
                tracing::warn!(site = %peer, error = %undo, "cannot revoke the token of a failed pairing");
            }
            Err(e.into())
        }
    }
}

/// The peer's side of a pairing: stores the requesting site with the token
/// to call it with.
#[utoipa::path(post, path = "/api/v1/sites/pair-request", request_body = SitePairRequest,
    responses((status = 201, body = Site), (status = 400, body = ApiError), (status = 409, body = ApiError, description = "already paired")))]
pub(crate) async fn pair_request(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<SitePairRequest>,
) -> ApiResult<(StatusCode, Json<Site>)> {
    Ok((
        StatusCode::CREATED,
        Json(st.cluster.accept_pair_request(&req).await?),
    ))
}

/// Unpairs a site here (refused while a replication uses it); the token it
/// called this site with stops working.
#[utoipa::path(delete, path = "/api/v1/sites/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ApiError), (status = 409, body = ApiError, description = "a replication uses the site")))]
pub(crate) async fn unpair_site(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    st.cluster.unpair_site(&name).await?;
    if let Err(e) = st.credentials.remove_site(&name).await {
        tracing::warn!(site = %name, error = %e, "cannot revoke the token of an unpaired site");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Adds [`SitesApi`] (and the replication parts) to the API's document.
pub(crate) struct SitesPaths;

impl utoipa::Modify for SitesPaths {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        doc.merge(SitesApi::openapi());
        doc.merge(crate::replication::ReplicationApi::openapi());
    }
}
