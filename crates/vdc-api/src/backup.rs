//! Backups: stores, runs, restores, verify, prune, gc
//! (`vdc_control::backup`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use utoipa::{IntoParams, OpenApi};
use vdc_types::backup::{
    AddBackupStoreRequest, Backup, BackupJob, BackupStore, Consistency, CreateBackupJobRequest,
    DiskBackup, DiskRead, FileEntry, GcReport, PruneReport, PruneRequest, RestoreRequest,
    Retention, RunBackupRequest, SyncReport, SyncRequest, VerifyReport,
};
use vdc_types::{ApiError, Task};

use crate::error::{ApiJson, ApiQuery, ApiResult};
use crate::routes::AppState;

/// The backup routes, nested under `/api/v1`.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/backup-stores", get(list_stores).post(add_store))
        .route("/backup-stores/{name}", delete(remove_store))
        .route("/backup-stores/{name}/prune", post(prune))
        .route("/backup-stores/{name}/gc", post(gc))
        .route("/backup-stores/{name}/sync", post(sync))
        .route("/vms/{name}/backup", post(run_backup))
        .route("/backups", get(list_backups))
        .route("/backups/{id}", get(get_backup).delete(remove_backup))
        .route("/backups/{id}/restore", post(restore))
        .route("/backups/{id}/verify", post(verify))
        .route("/backups/{id}/files", get(list_files))
        .route("/backups/{id}/file", get(get_file))
        .route("/backup-jobs", get(list_jobs).post(create_job))
        .route("/backup-jobs/{name}", delete(delete_job))
}

/// The backup part of the OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    paths(
        list_stores,
        add_store,
        remove_store,
        prune,
        gc,
        sync,
        run_backup,
        list_backups,
        get_backup,
        remove_backup,
        restore,
        verify
    ),
    components(schemas(
        AddBackupStoreRequest,
        Backup,
        BackupStore,
        Consistency,
        DiskBackup,
        DiskRead,
        GcReport,
        PruneReport,
        PruneRequest,
        RestoreRequest,
        Retention,
        RunBackupRequest,
        SyncReport,
        SyncRequest,
        VerifyReport
    ))
)]
pub(crate) struct BackupApi;

/// Adds [`BackupApi`] to the API's document (before the modifier that
/// adds what every operation answers).
pub(crate) struct BackupPaths;

impl utoipa::Modify for BackupPaths {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        doc.merge(BackupApi::openapi());
    }
}

/// Which backups.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct BackupQuery {
    /// Only in this store (default: every store).
    store: Option<String>,
    /// Only of this VM.
    vm: Option<String>,
}

/// Every registered backup store.
#[utoipa::path(get, path = "/api/v1/backup-stores", responses((status = 200, body = [BackupStore])))]
pub(crate) async fn list_stores(State(st): State<AppState>) -> ApiResult<Json<Vec<BackupStore>>> {
    Ok(Json(st.cluster.list_backup_stores().await?))
}

/// Registers a backup store: a directory the server and every host see at
/// the same path, initialised when empty; with a key file, encrypted.
#[utoipa::path(post, path = "/api/v1/backup-stores", request_body = AddBackupStoreRequest,
    responses((status = 201, body = BackupStore), (status = 400, body = ApiError, description = "a bad name or path, not a store, a wrong or missing key"), (status = 409, body = ApiError)))]
pub(crate) async fn add_store(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<AddBackupStoreRequest>,
) -> ApiResult<(StatusCode, Json<BackupStore>)> {
    Ok((
        StatusCode::CREATED,
        Json(st.cluster.add_backup_store(&req).await?),
    ))
}

/// Forgets a backup store; its directory and backups are kept.
#[utoipa::path(delete, path = "/api/v1/backup-stores/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ApiError)))]
pub(crate) async fn remove_store(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    st.cluster.remove_backup_store(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes the backups a retention policy does not keep, per VM.
#[utoipa::path(post, path = "/api/v1/backup-stores/{name}/prune", params(("name" = String, Path)), request_body = PruneRequest,
    responses((status = 200, body = PruneReport), (status = 400, body = ApiError, description = "no keep rule"), (status = 404, body = ApiError)))]
pub(crate) async fn prune(
    State(st): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<PruneRequest>,
) -> ApiResult<Json<PruneReport>> {
    let removed = st
        .cluster
        .prune_backups(&name, req.vm.as_deref(), &req.retention)
        .await?;
    Ok(Json(PruneReport { removed }))
}

/// Garbage collection: removes the chunks no backup needs (never those a
/// running backup may need).
#[utoipa::path(post, path = "/api/v1/backup-stores/{name}/gc", params(("name" = String, Path)),
    responses((status = 200, body = GcReport), (status = 404, body = ApiError)))]
pub(crate) async fn gc(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<GcReport>> {
    Ok(Json(st.cluster.gc_backup_store(&name).await?))
}

/// Off-site copy: sends the backups of this store (of one VM, with `vm`)
/// that store `to` lacks, only the chunks it lacks, each checked on
/// arrival, each backup's manifest after its chunks.
#[utoipa::path(post, path = "/api/v1/backup-stores/{name}/sync", params(("name" = String, Path)), request_body = SyncRequest,
    responses((status = 200, body = SyncReport), (status = 400, body = ApiError, description = "the same store, or stores with different keys"), (status = 404, body = ApiError), (status = 502, body = ApiError, description = "a chunk missing or damaged in the source")))]
pub(crate) async fn sync(
    State(st): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<SyncRequest>,
) -> ApiResult<Json<SyncReport>> {
    Ok(Json(st.cluster.sync_backup_stores(&name, &req).await?))
}

/// Backs a VM up (a `backup.run` task): running or paused VMs at one
/// instant while they run (crash-consistent), stopped VMs as they are.
#[utoipa::path(post, path = "/api/v1/vms/{name}/backup", params(("name" = String, Path)), request_body = RunBackupRequest,
    responses((status = 202, body = Task), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError, description = "another operation is in flight")))]
pub(crate) async fn run_backup(
    State(st): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<RunBackupRequest>,
) -> ApiResult<(StatusCode, Json<Task>)> {
    Ok((
        StatusCode::ACCEPTED,
        Json(st.cluster.run_backup(&name, &req).await?),
    ))
}

/// Complete backups, oldest first (a backup still running or killed
/// half-way has no manifest and is not listed).
#[utoipa::path(get, path = "/api/v1/backups", params(BackupQuery), responses((status = 200, body = [Backup]), (status = 404, body = ApiError)))]
pub(crate) async fn list_backups(
    State(st): State<AppState>,
    ApiQuery(q): ApiQuery<BackupQuery>,
) -> ApiResult<Json<Vec<Backup>>> {
    Ok(Json(
        st.cluster
            .list_backups(q.store.as_deref(), q.vm.as_deref())
            .await?,
    ))
}

/// One backup: consistency, per disk how it was read and the chunk counts.
#[utoipa::path(get, path = "/api/v1/backups/{id}", params(("id" = String, Path), BackupQuery),
    responses((status = 200, body = Backup), (status = 404, body = ApiError)))]
pub(crate) async fn get_backup(
    State(st): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<BackupQuery>,
) -> ApiResult<Json<Backup>> {
    Ok(Json(st.cluster.get_backup(&id, q.store.as_deref()).await?))
}

/// Removes a backup (its chunks go at the next gc).
#[utoipa::path(delete, path = "/api/v1/backups/{id}", params(("id" = String, Path), BackupQuery),
    responses((status = 204), (status = 404, body = ApiError)))]
pub(crate) async fn remove_backup(
    State(st): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<BackupQuery>,
) -> ApiResult<StatusCode> {
    st.cluster.remove_backup(&id, q.store.as_deref()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Restores a backup (a `backup.restore` task): as a new VM (`name`, on
/// any host and datastore), or over the original VM, powered off (whole,
/// or one `disk`). A damaged chunk fails the restore; nothing half-made
/// is left.
#[utoipa::path(post, path = "/api/v1/backups/{id}/restore", params(("id" = String, Path)), request_body = RestoreRequest,
    responses((status = 202, body = Task), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError, description = "the original VM is not powered off, or a VM of that name exists")))]
pub(crate) async fn restore(
    State(st): State<AppState>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<RestoreRequest>,
) -> ApiResult<(StatusCode, Json<Task>)> {
    Ok((
        StatusCode::ACCEPTED,
        Json(st.cluster.restore_backup(&id, &req).await?),
    ))
}

/// Re-reads and re-hashes every chunk of a backup; marks it damaged when
/// one is missing or fails its digest (and unmarks it when whole).
#[utoipa::path(post, path = "/api/v1/backups/{id}/verify", params(("id" = String, Path), BackupQuery),
    responses((status = 200, body = VerifyReport), (status = 404, body = ApiError)))]
pub(crate) async fn verify(
    State(st): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<BackupQuery>,
) -> ApiResult<Json<VerifyReport>> {
    Ok(Json(
        st.cluster.verify_backup(&id, q.store.as_deref()).await?,
    ))
}

/// Which file of which backed-up disk.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct FilesQuery {
    /// Store (default: the one that has the backup).
    store: Option<String>,
    /// Disk (default: the first).
    disk: Option<String>,
    /// Absolute path in the disk's ext2/3/4 file system (default `/`).
    path: Option<String>,
}

/// Lists a directory of a backed-up guest file system (ext2/3/4, at the
/// disk's start or in an MBR partition) without running the VM.
#[utoipa::path(get, path = "/api/v1/backups/{id}/files", params(("id" = String, Path), FilesQuery),
    responses((status = 200, body = [FileEntry]), (status = 400, body = ApiError, description = "no ext file system, a bad path"), (status = 404, body = ApiError)))]
pub(crate) async fn list_files(
    State(st): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<FilesQuery>,
) -> ApiResult<Json<Vec<FileEntry>>> {
    let path = q.path.as_deref().unwrap_or("/");
    let (list, _) = st
        .cluster
        .backup_files(&id, q.store.as_deref(), q.disk.as_deref(), path, false)
        .await?;
    Ok(Json(list))
}

/// The content of a file of a backed-up guest file system.
#[utoipa::path(get, path = "/api/v1/backups/{id}/file", params(("id" = String, Path), FilesQuery),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub(crate) async fn get_file(
    State(st): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<FilesQuery>,
) -> ApiResult<([(axum::http::HeaderName, &'static str); 1], Vec<u8>)> {
    let path = q
        .path
        .as_deref()
        .ok_or_else(|| ApiError::invalid("name the file with ?path=/…"))?;
    let (_, data) = st
        .cluster
        .backup_files(&id, q.store.as_deref(), q.disk.as_deref(), path, true)
        .await?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        data.unwrap_or_default(),
    ))
}

/// Every backup job, with its last run.
#[utoipa::path(get, path = "/api/v1/backup-jobs", responses((status = 200, body = [BackupJob])))]
pub(crate) async fn list_jobs(State(st): State<AppState>) -> ApiResult<Json<Vec<BackupJob>>> {
    Ok(Json(st.cluster.list_backup_jobs().await?))
}

/// Creates a backup job: its VMs are backed up into its store every
/// `every_s` seconds (the first run at once), then pruned with its
/// retention.
#[utoipa::path(post, path = "/api/v1/backup-jobs", request_body = CreateBackupJobRequest,
    responses((status = 201, body = BackupJob), (status = 400, body = ApiError), (status = 404, body = ApiError, description = "an unknown VM or store"), (status = 409, body = ApiError)))]
pub(crate) async fn create_job(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<CreateBackupJobRequest>,
) -> ApiResult<(StatusCode, Json<BackupJob>)> {
    Ok((
        StatusCode::CREATED,
        Json(st.cluster.create_backup_job(&req).await?),
    ))
}

/// Deletes a backup job (its backups stay).
#[utoipa::path(delete, path = "/api/v1/backup-jobs/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ApiError)))]
pub(crate) async fn delete_job(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    st.cluster.delete_backup_job(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The backup part of the web page.
pub(crate) async fn web_script() -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/javascript; charset=utf-8",
        )],
        include_str!("../web/backup.js"),
    )
}
