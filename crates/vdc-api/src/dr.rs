//! Recovery plans and DR runs (`vdc_control::dr`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use utoipa::{IntoParams, OpenApi};
use vdc_dr::plan::{NetworkMapping, PlanGroup, PlanStep, PlanVm, ReadyWait};
use vdc_dr::run::PlanState;
use vdc_dr::{Operation, Plan, Run, RunState, StepOutcome, StepRecord, VmOutcome};
use vdc_types::ApiError;

use crate::error::{ApiJson, ApiQuery, ApiResult};
use crate::routes::AppState;

/// The DR routes, nested under `/api/v1`.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/plans", get(list_plans).post(create_plan))
        .route("/plans/{name}", get(get_plan).delete(delete_plan))
        .route("/plans/{name}/{operation}", post(run_plan))
        .route("/dr-runs", get(list_runs))
        .route("/dr-runs/{id}", get(get_run))
        .route("/dr-runs/{id}/report", get(run_report))
        .route("/dr-runs/{id}/continue", post(continue_run))
}

/// The DR part of the OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    paths(
        list_plans,
        create_plan,
        get_plan,
        delete_plan,
        run_plan,
        list_runs,
        get_run,
        run_report,
        continue_run
    ),
    components(schemas(
        Plan,
        PlanGroup,
        PlanVm,
        ReadyWait,
        NetworkMapping,
        PlanStep,
        PlanState,
        Operation,
        Run,
        RunState,
        StepRecord,
        StepOutcome,
        VmOutcome
    ))
)]
pub(crate) struct DrApi;

/// Adds [`DrApi`] to the API's document.
pub(crate) struct DrPaths;

impl utoipa::Modify for DrPaths {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        doc.merge(DrApi::openapi());
    }
}

/// Which runs.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct RunQuery {
    /// Only of this plan.
    plan: Option<String>,
}

/// Every recovery plan stored at this site.
#[utoipa::path(get, path = "/api/v1/plans", responses((status = 200, body = [Plan])))]
pub(crate) async fn list_plans(State(st): State<AppState>) -> ApiResult<Json<Vec<Plan>>> {
    Ok(Json(st.cluster.list_plans().await?))
}

/// Creates a recovery plan at this (the recovery) site: ordered priority
/// groups of replicated VMs, network mapping, per-VM address changes and
/// pre/post steps.
#[utoipa::path(post, path = "/api/v1/plans", request_body = Plan,
    responses((status = 201, body = Plan), (status = 400, body = ApiError, description = "an unknown or unreplicated VM, a VM in two groups, an empty group, an unknown or unmapped network, a bad address, timeout or step"), (status = 409, body = ApiError, description = "the name is taken")))]
pub(crate) async fn create_plan(
    State(st): State<AppState>,
    ApiJson(p): ApiJson<Plan>,
) -> ApiResult<(StatusCode, Json<Plan>)> {
    Ok((StatusCode::CREATED, Json(st.cluster.create_plan(p).await?)))
}

/// One plan.
#[utoipa::path(get, path = "/api/v1/plans/{name}", params(("name" = String, Path)),
    responses((status = 200, body = Plan), (status = 404, body = ApiError)))]
pub(crate) async fn get_plan(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Plan>> {
    Ok(Json(st.cluster.get_plan(&name).await?))
}

/// Deletes a plan (its runs stay); refused while a run is active or its
/// test clones exist.
#[utoipa::path(delete, path = "/api/v1/plans/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub(crate) async fn delete_plan(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    st.cluster.delete_plan(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Starts an operation of a plan as a task (`dr.<operation>`): `test`,
/// `cleanup`, `migrate` (planned migration), `failover` (disaster),
/// `reprotect` or `failback`. Answers the run's record.
#[utoipa::path(post, path = "/api/v1/plans/{name}/{operation}",
    params(("name" = String, Path), ("operation" = Operation, Path)),
    responses((status = 202, body = Run), (status = 400, body = ApiError, description = "an unknown operation"), (status = 404, body = ApiError), (status = 409, body = ApiError, description = "the plan's state refuses it, another run is active, or (planned migration) the protected site does not answer")))]
pub(crate) async fn run_plan(
    State(st): State<AppState>,
    Path((name, operation)): Path<(String, String)>,
) -> ApiResult<(StatusCode, Json<Run>)> {
    let op: Operation = serde_json::from_value(serde_json::Value::String(operation.clone()))
        .map_err(|_| {
            ApiError::invalid(format!(
                "unknown operation '{operation}'; use test, cleanup, migrate, failover, reprotect or failback"
            ))
        })?;
    Ok((
        StatusCode::ACCEPTED,
        Json(st.cluster.start_dr(&name, op).await?),
    ))
}

/// DR runs, newest first.
#[utoipa::path(get, path = "/api/v1/dr-runs", params(RunQuery), responses((status = 200, body = [Run]), (status = 400, body = ApiError)))]
pub(crate) async fn list_runs(
    State(st): State<AppState>,
    ApiQuery(q): ApiQuery<RunQuery>,
) -> ApiResult<Json<Vec<Run>>> {
    Ok(Json(st.cluster.list_dr_runs(q.plan.as_deref()).await?))
}

/// One run: its steps with times and outcomes, each VM's point and RPO,
/// the measured RTO and errors.
#[utoipa::path(get, path = "/api/v1/dr-runs/{id}", params(("id" = String, Path)),
    responses((status = 200, body = Run), (status = 404, body = ApiError)))]
pub(crate) async fn get_run(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Run>> {
    Ok(Json(st.cluster.get_dr_run(&id).await?))
}

/// A run's readable report.
#[utoipa::path(get, path = "/api/v1/dr-runs/{id}/report", params(("id" = String, Path)),
    responses((status = 200, content_type = "text/plain", body = String), (status = 404, body = ApiError)))]
pub(crate) async fn run_report(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<([(axum::http::HeaderName, &'static str); 1], String)> {
    let run = st.cluster.get_dr_run(&id).await?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )],
        vdc_dr::report::text(&run),
    ))
}

/// Lets a run waiting at a prompt go on.
#[utoipa::path(post, path = "/api/v1/dr-runs/{id}/continue", params(("id" = String, Path)),
    responses((status = 200, body = Run), (status = 404, body = ApiError), (status = 409, body = ApiError, description = "the run does not wait at a prompt")))]
pub(crate) async fn continue_run(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Run>> {
    Ok(Json(st.cluster.continue_dr_run(&id).await?))
}

/// The web page's DR section (`/dr.js`).
pub(crate) async fn web_script() -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/javascript; charset=utf-8",
        )],
        include_str!("../web/dr.js"),
    )
}
