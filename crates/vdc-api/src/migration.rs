//! Moving a VM: live, cold, suspended and storage migration
//! (`vdc_control::migration`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use vdc_types::migration::MigrateRequest;
use vdc_types::{ApiError, Task};

use crate::error::{ApiBytes, ApiResult};
use crate::routes::{optional_body, AppState};

/// Moves a VM to another host (returns a `vm.migrate` task): a running or
/// paused VM live, a stopped one cold, a suspended one with its saved
/// state; with `datastore`, its disks move to that datastore (a running VM
/// with `to` naming another host moves live with its storage: its disks
/// are mirrored over NBD to that host's datastore, post-copy off). A
/// running VM on host-local storage moving to a host that cannot see it
/// gets a datastore of that host (shared first) without `datastore`; one
/// on shared storage is refused instead. Without `to`, placement picks the
/// host. Everything the move needs is checked before anything moves (an
/// unknown datastore 404, one the destination lacks 400, too little free
/// space 409, post-copy asked together with a storage move 400); a refusal
/// changes nothing. The body is optional.
#[utoipa::path(post, path = "/api/v1/vms/{name}/migrate",
    request_body(content = Option<MigrateRequest>, description = "optional"),
    params(("name" = String, Path)),
    responses((status = 202, body = Task), (status = 400, body = ApiError, description = "bad request, or the destination cannot take the VM"), (status = 404, body = ApiError), (status = 409, body = ApiError, description = "the VM's state or operation in flight forbids the move, or the datastore has too little free space"), (status = 503, body = ApiError, description = "a host involved is not connected")))]
pub(crate) async fn migrate_vm(
    State(st): State<AppState>,
    Path(name): Path<String>,
    ApiBytes(body): ApiBytes,
) -> ApiResult<(StatusCode, Json<Task>)> {
    let req: MigrateRequest = optional_body(&body)?;
    let task = st.cluster.migrate_vm(&name, req).await?;
    Ok((StatusCode::ACCEPTED, Json(task)))
}
