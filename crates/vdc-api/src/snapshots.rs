//! VM snapshots (`vdc_control::snapshots`): list the tree, take, revert
//! and delete. Each change is a task; a request the tree or the VM's state
//! refuses is answered at once with nothing changed.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use vdc_types::snapshot::{
    CreateSnapshotRequest, InstantCloneRequest, RunningCloneRequest, SnapshotList,
};
use vdc_types::{ApiError, Task};

use crate::error::{ApiJson, ApiResult};
use crate::routes::AppState;

/// The snapshot tree of a VM: every snapshot with its parent, time,
/// consistency (`quiesced` when the guest agent froze the file systems,
/// else `crash_consistent` with the reason) and whether memory was saved;
/// the current position; the length of the disk chain and a warning when
/// it nears the limit.
#[utoipa::path(get, path = "/api/v1/vms/{name}/snapshots",
    params(("name" = String, Path)),
    responses((status = 200, body = SnapshotList), (status = 404, body = ApiError), (status = 503, body = ApiError, description = "the VM's host is not connected")))]
pub(crate) async fn list_snapshots(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<SnapshotList>> {
    Ok(Json(st.cluster.list_snapshots(&name).await?))
}

/// Takes a snapshot (returns a `snapshot.create` task): external qcow2
/// overlays on every disk, the guest quiesced through its guest agent when
/// it answers; with `memory` (running VMs only) the VM's memory is saved
/// too, at the same paused instant.
#[utoipa::path(post, path = "/api/v1/vms/{name}/snapshots",
    request_body = CreateSnapshotRequest,
    params(("name" = String, Path)),
    responses((status = 202, body = Task), (status = 400, body = ApiError, description = "bad name or description, or memory asked of a VM that does not run"), (status = 404, body = ApiError), (status = 409, body = ApiError, description = "the name is taken, the disk chain is full, or the VM's state or operation in flight forbids it"), (status = 503, body = ApiError)))]
pub(crate) async fn create_snapshot(
    State(st): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<CreateSnapshotRequest>,
) -> ApiResult<(StatusCode, Json<Task>)> {
    let task = st.cluster.create_snapshot(&name, req).await?;
    Ok((StatusCode::ACCEPTED, Json(task)))
}

/// Reverts a VM to one of its snapshots (returns a `snapshot.revert`
/// task): a running VM is powered off first; after a disk-only snapshot
/// the VM is left stopped on the snapshot's disks, after one with memory
/// it runs again exactly as it was then.
#[utoipa::path(post, path = "/api/v1/vms/{name}/snapshots/{snapshot}/revert",
    params(("name" = String, Path), ("snapshot" = String, Path)),
    responses((status = 202, body = Task), (status = 404, body = ApiError, description = "no such VM, or no such snapshot of this VM"), (status = 409, body = ApiError), (status = 503, body = ApiError)))]
pub(crate) async fn revert_snapshot(
    State(st): State<AppState>,
    Path((name, snapshot)): Path<(String, String)>,
) -> ApiResult<(StatusCode, Json<Task>)> {
    let task = st.cluster.revert_snapshot(&name, &snapshot).await?;
    Ok((StatusCode::ACCEPTED, Json(task)))
}

/// Deletes a snapshot, any in the tree (returns a `snapshot.delete`
/// task): its data is merged into the images that depend on it, while
/// the VM keeps running.
#[utoipa::path(delete, path = "/api/v1/vms/{name}/snapshots/{snapshot}",
    params(("name" = String, Path), ("snapshot" = String, Path)),
    responses((status = 202, body = Task), (status = 404, body = ApiError, description = "no such VM, or no such snapshot of this VM"), (status = 409, body = ApiError), (status = 503, body = ApiError)))]
pub(crate) async fn delete_snapshot(
    State(st): State<AppState>,
    Path((name, snapshot)): Path<(String, String)>,
) -> ApiResult<(StatusCode, Json<Task>)> {
    let task = st.cluster.delete_snapshot(&name, &snapshot).await?;
    Ok((StatusCode::ACCEPTED, Json(task)))
}

/// Instant clone (returns a `vm.instant_clone` task on the source): a new
/// running VM forked from this running VM's memory and disks, resumed
/// rather than booted, that takes its own hostname, MAC and address right
/// after it resumes. The source pauses for the fork and runs on
/// unchanged; its disks' frozen images become snapshot `clone-NAME`, the
/// clone's base, which cannot be deleted while the clone exists.
#[utoipa::path(post, path = "/api/v1/vms/{name}/instant-clone",
    request_body = InstantCloneRequest,
    params(("name" = String, Path)),
    responses((status = 202, body = Task), (status = 400, body = ApiError, description = "bad name"), (status = 404, body = ApiError), (status = 409, body = ApiError, description = "the VM does not run, has no guest agent channel, is busy, its disk chain is full, or the name is taken"), (status = 503, body = ApiError)))]
pub(crate) async fn instant_clone(
    State(st): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<InstantCloneRequest>,
) -> ApiResult<(StatusCode, Json<Task>)> {
    let task = st.cluster.instant_clone(&name, req).await?;
    Ok((StatusCode::ACCEPTED, Json(task)))
}

/// Clone of a running VM (returns a `vm.clone` task on the source): its
/// disks taken at one instant, quiesced through the guest agent when it
/// answers; a full copy by default (the temporary snapshot is merged back
/// into the source afterwards), or `linked` to the source's frozen image
/// (kept as snapshot `clone-NAME` while the clone exists). The clone boots
/// with its own hostname, MAC and address; the source keeps running.
#[utoipa::path(post, path = "/api/v1/vms/{name}/clone-running",
    request_body = RunningCloneRequest,
    params(("name" = String, Path)),
    responses((status = 202, body = Task), (status = 400, body = ApiError, description = "bad name"), (status = 404, body = ApiError), (status = 409, body = ApiError, description = "the VM does not run, is busy, its disk chain is full, or the name is taken"), (status = 503, body = ApiError)))]
pub(crate) async fn clone_running(
    State(st): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<RunningCloneRequest>,
) -> ApiResult<(StatusCode, Json<Task>)> {
    let task = st.cluster.clone_running(&name, req).await?;
    Ok((StatusCode::ACCEPTED, Json(task)))
}

/// The web page's snapshot section (`/snapshots.js`).
pub(crate) async fn web_script() -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/javascript; charset=utf-8",
        )],
        include_str!("../web/snapshots.js"),
    )
}
