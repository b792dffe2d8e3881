//! The cluster's CPU baseline (`vdc_control::cpu_baseline`).

use axum::extract::State;
use axum::Json;
use vdc_types::CpuBaseline;

use crate::error::ApiResult;
use crate::routes::AppState;

/// The cluster's CPU baseline (EVC-like): the QEMU CPU model new VMs get
/// (`auto`: the newest model every host with hardware virtualization can
/// run), the newest model all hosts could run, and how each connected
/// host's CPU meets the baseline (a host that does not is reported with
/// the flags it lacks, and placement skips it for VMs it cannot run).
#[utoipa::path(get, path = "/api/v1/cpu-baseline", responses((status = 200, body = CpuBaseline)))]
pub(crate) async fn get_cpu_baseline(State(st): State<AppState>) -> ApiResult<Json<CpuBaseline>> {
    Ok(Json(st.cluster.cpu_baseline().await))
}
