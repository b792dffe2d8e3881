//! Routes of hosts joining: adding a host (its agent credential), the
//! agents' join and reports, the list of agents and whether they joined.

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use vdc_types::agent::HostReport;
use vdc_types::auth::{
    AddHostRequest, HostCredential, HostJoin, JoinRequest, JoinResponse, Principal,
};
use vdc_types::switch::ReportAnswer;
use vdc_types::ApiError;

use crate::auth::check_report_host;
use crate::error::{ApiErr, ApiJson, ApiResult};
use crate::routes::AppState;

/// An agent's heartbeat report (agents only, for their own host).
#[utoipa::path(post, path = "/api/v1/agent/report", request_body = HostReport,
    security(("agent_credential" = [])),
    responses((status = 200, body = ReportAnswer, description = "the switches the host must realize"), (status = 400, body = ApiError), (status = 401, body = ApiError),
        (status = 403, body = ApiError, description = "a user token, or a report for another host")))]
pub(crate) async fn agent_report(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    ApiJson(r): ApiJson<HostReport>,
) -> ApiResult<Json<ReportAnswer>> {
    check_report_host(&who, &r.name)?;
    st.cluster.ingest_report(r).await?;
    Ok(Json(ReportAnswer {
        switches: st.cluster.desired_switches().await?,
    }))
}

/// An agent joins the cluster: the server checks its credential's host and
/// answers with the credential it will present to the agent's API.
#[utoipa::path(post, path = "/api/v1/agent/join", request_body = JoinRequest,
    security(("agent_credential" = [])),
    responses((status = 200, body = JoinResponse), (status = 400, body = ApiError),
        (status = 401, body = ApiError), (status = 403, body = ApiError)))]
pub(crate) async fn agent_join(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    ApiJson(req): ApiJson<JoinRequest>,
) -> ApiResult<Json<JoinResponse>> {
    check_report_host(&who, &req.host)?;
    let tls = match &st.ca {
        Some(ca) => ca.issue_for_join(&req)?,
        None => None,
    };
    st.credentials
        .record_join(&req.host)
        .await
        .map_err(|e| ApiErr(e.into()))?;
    st.cluster
        .events
        .publish(
            "host.joined",
            &req.host,
            match &tls {
                Some(_) => format!(
                    "the agent of host '{}' joined and got its migration certificate",
                    req.host
                ),
                None => format!("the agent of host '{}' joined", req.host),
            },
            serde_json::json!({
                "certificate_not_after_ms": tls.as_ref().map(|t| t.not_after_ms),
            }),
        )
        .await;
    Ok(Json(JoinResponse {
        server_credential: st.credentials.server_credential().to_string(),
        tls,
    }))
}

/// Adds a host: makes its agent credential, shown only in this answer
/// (administrators only). Start the host's agent with it.
#[utoipa::path(post, path = "/api/v1/hosts", request_body = AddHostRequest,
    responses((status = 201, body = HostCredential), (status = 400, body = ApiError),
        (status = 403, body = ApiError), (status = 409, body = ApiError)))]
pub(crate) async fn add_host(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<AddHostRequest>,
) -> ApiResult<(StatusCode, Json<HostCredential>)> {
    let credential = st.credentials.add_host(&req.name, req.replace).await?;
    let what = if req.replace {
        "its credential was replaced; restart its agent with the new one"
    } else {
        "its agent may join"
    };
    st.cluster
        .events
        .publish(
            "host.added",
            &req.name,
            format!("host '{}' was added; {what}", req.name),
            serde_json::Value::Null,
        )
        .await;
    Ok((
        StatusCode::CREATED,
        Json(HostCredential {
            host: req.name,
            credential,
        }),
    ))
}

/// Every added host's agent and when it last joined.
#[utoipa::path(get, path = "/api/v1/agents", responses((status = 200, body = [HostJoin])))]
pub(crate) async fn list_agents(State(st): State<AppState>) -> ApiResult<Json<Vec<HostJoin>>> {
    Ok(Json(
        st.credentials.hosts().await.map_err(|e| ApiErr(e.into()))?,
    ))
}
