//! Clones of VMs and templates made from VMs (`vdc_control::clones`,
//! `vdc_control::template_vm`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use vdc_types::clone::{CloneVmRequest, ImportDiskRequest, TemplateDetails, VmToTemplateRequest};
use vdc_types::{ApiError, Task};

use crate::error::{ApiBytes, ApiJson, ApiResult};
use crate::routes::{optional_body, AppState};

/// Clones a powered-off VM into a new VM (returns the source's `vm.clone`
/// task, which ends when the clone is made). Full copies of every disk,
/// new MAC addresses, and the guest customization asked (hostname, static
/// address or DHCP). A running source is refused (409: power it off
/// first); a linked clone of a VM is refused (400: make a template of it
/// first). Nothing is made on a refusal.
#[utoipa::path(post, path = "/api/v1/vms/{name}/clone", request_body = CloneVmRequest,
    params(("name" = String, Path, description = "source VM")),
    responses((status = 202, body = Task), (status = 400, body = ApiError), (status = 404, body = ApiError, description = "no such VM or datastore"), (status = 409, body = ApiError, description = "the source runs or is busy, the name or address is taken"), (status = 503, body = ApiError, description = "no host is connected")))]
pub(crate) async fn clone_vm(
    State(st): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<CloneVmRequest>,
) -> ApiResult<(StatusCode, Json<Task>)> {
    let task = st.cluster.clone_vm(&name, req).await?;
    Ok((StatusCode::ACCEPTED, Json(task)))
}

/// Makes a template of a powered-off VM (returns a task): converts it
/// (instant: its boot disk becomes the template's image and the VM is
/// gone), or with `keep_vm` copies its boot disk into a new template. The
/// body is optional (default: convert, template named as the VM).
#[utoipa::path(post, path = "/api/v1/vms/{name}/to-template",
    request_body(content = Option<VmToTemplateRequest>, description = "optional"),
    params(("name" = String, Path)),
    responses((status = 202, body = Task), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError, description = "the VM runs or is busy, has data disks (convert), or the template name is taken")))]
pub(crate) async fn vm_to_template(
    State(st): State<AppState>,
    Path(name): Path<String>,
    ApiBytes(body): ApiBytes,
) -> ApiResult<(StatusCode, Json<Task>)> {
    let req: VmToTemplateRequest = optional_body(&body)?;
    let task = st.cluster.vm_to_template(&name, req).await?;
    Ok((StatusCode::ACCEPTED, Json(task)))
}

/// One template, with the VMs deployed from it (linked and full) and the
/// templates based on it.
#[utoipa::path(get, path = "/api/v1/templates/{name}",
    params(("name" = String, Path)),
    responses((status = 200, body = TemplateDetails), (status = 404, body = ApiError)))]
pub(crate) async fn get_template(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<TemplateDetails>> {
    Ok(Json(st.cluster.template_details(&name).await?))
}

/// Deletes a template and its image. Refused (409, naming them) while
/// linked clones or templates read its image, or while it is being made.
#[utoipa::path(delete, path = "/api/v1/templates/{name}",
    params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ApiError), (status = 409, body = ApiError, description = "in use by linked clones, or still being made"), (status = 503, body = ApiError, description = "no host reaches its datastore")))]
pub(crate) async fn delete_template(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    st.cluster.delete_template(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Imports a disk image (vmdk, vhd, vhdx, qcow2, raw) or a physical disk
/// as a new VM (V2V/P2V; returns its `vm.create` task, whose progress
/// follows the conversion). The importing host checks the file first: a
/// missing file (404), one outside its import directories, an unsupported
/// format or a stated format the content contradicts (400) makes nothing.
#[utoipa::path(post, path = "/api/v1/imports/disk", request_body = ImportDiskRequest,
    responses((status = 202, body = Task), (status = 400, body = ApiError), (status = 404, body = ApiError, description = "no such file, datastore, network or host"), (status = 409, body = ApiError, description = "the name is taken"), (status = 503, body = ApiError, description = "the host is not connected")))]
pub(crate) async fn import_disk(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<ImportDiskRequest>,
) -> ApiResult<(StatusCode, Json<Task>)> {
    let task = st.cluster.import_disk(req).await?;
    Ok((StatusCode::ACCEPTED, Json(task)))
}

/// Exports a powered-off VM as an OVA (returns its `vm.export` task): a
/// DMTF OVF descriptor, a SHA-256 manifest and streamOptimized VMDK
/// disks, written by a host into one of its import directories. A running
/// VM is refused (409); a file outside the import directories (400) or
/// one that exists (409) fails the task with nothing written.
#[utoipa::path(post, path = "/api/v1/vms/{name}/export", request_body = vdc_types::ova::ExportVmRequest,
    params(("name" = String, Path)),
    responses((status = 202, body = Task), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError, description = "the VM runs or is busy"), (status = 503, body = ApiError, description = "no host reaches the VM's files")))]
pub(crate) async fn export_vm(
    State(st): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<vdc_types::ova::ExportVmRequest>,
) -> ApiResult<(StatusCode, Json<Task>)> {
    let task = st.cluster.export_vm(&name, req).await?;
    Ok((StatusCode::ACCEPTED, Json(task)))
}

/// The web page's templates and clones section (`/templates.js`).
pub(crate) async fn web_script() -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/javascript; charset=utf-8",
        )],
        include_str!("../web/templates.js"),
    )
}
