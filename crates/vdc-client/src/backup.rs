//! Backup calls of the REST API: stores, runs, restores, verify, prune, gc.

use vdc_types::backup::{
    AddBackupStoreRequest, Backup, BackupJob, BackupStore, CreateBackupJobRequest, FileEntry,
    GcReport, PruneReport, PruneRequest, RestoreRequest, RunBackupRequest, SyncReport, SyncRequest,
    VerifyReport,
};
use vdc_types::Task;

use crate::{seg, Client, ClientError};

fn query(store: Option<&str>, vm: Option<&str>) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    if let Some(s) = store {
        q.append_pair("store", s);
    }
    if let Some(v) = vm {
        q.append_pair("vm", v);
    }
    let q = q.finish();
    if q.is_empty() {
        q
    } else {
        format!("?{q}")
    }
}

impl Client {
    /// `GET /backup-stores`.
    pub async fn list_backup_stores(&self) -> Result<Vec<BackupStore>, ClientError> {
        self.get("/backup-stores").await
    }

    /// `POST /backup-stores`.
    pub async fn add_backup_store(
        &self,
        req: &AddBackupStoreRequest,
    ) -> Result<BackupStore, ClientError> {
        self.post("/backup-stores", req).await
    }

    /// `DELETE /backup-stores/{name}`.
    pub async fn remove_backup_store(&self, name: &str) -> Result<(), ClientError> {
        self.send(self.req(
            reqwest::Method::DELETE,
            &format!("/backup-stores/{}", seg(name)),
        ))
        .await
    }

    /// `POST /vms/{name}/backup`: the `backup.run` task.
    pub async fn run_backup(&self, vm: &str, store: &str) -> Result<Task, ClientError> {
        self.post(
            &format!("/vms/{}/backup", seg(vm)),
            &RunBackupRequest {
                store: store.into(),
            },
        )
        .await
    }

    /// `GET /backups`.
    pub async fn list_backups(
        &self,
        store: Option<&str>,
        vm: Option<&str>,
    ) -> Result<Vec<Backup>, ClientError> {
        self.get(&format!("/backups{}", query(store, vm))).await
    }

    /// `GET /backups/{id}`.
    pub async fn get_backup(&self, id: &str, store: Option<&str>) -> Result<Backup, ClientError> {
        self.get(&format!("/backups/{}{}", seg(id), query(store, None)))
            .await
    }

    /// `DELETE /backups/{id}`.
    pub async fn remove_backup(&self, id: &str, store: Option<&str>) -> Result<(), ClientError> {
        self.send(self.req(
            reqwest::Method::DELETE,
            &format!("/backups/{}{}", seg(id), query(store, None)),
        ))
        .await
    }

    /// `POST /backups/{id}/restore`: the `backup.restore` task.
    pub async fn restore_backup(
        &self,
        id: &str,
        req: &RestoreRequest,
    ) -> Result<Task, ClientError> {
        self.post(&format!("/backups/{}/restore", seg(id)), req)
            .await
    }

    /// `POST /backups/{id}/verify`.
    pub async fn verify_backup(
        &self,
        id: &str,
        store: Option<&str>,
    ) -> Result<VerifyReport, ClientError> {
        self.post(
            &format!("/backups/{}/verify{}", seg(id), query(store, None)),
            &serde_json::json!({}),
        )
        .await
    }

    /// `POST /backup-stores/{name}/prune`.
    pub async fn prune_backups(
        &self,
        store: &str,
        req: &PruneRequest,
    ) -> Result<PruneReport, ClientError> {
        self.post(&format!("/backup-stores/{}/prune", seg(store)), req)
            .await
    }

    /// `POST /backup-stores/{name}/gc`.
    pub async fn gc_backup_store(&self, store: &str) -> Result<GcReport, ClientError> {
        self.post(
            &format!("/backup-stores/{}/gc", seg(store)),
            &serde_json::json!({}),
        )
        .await
    }

    /// `POST /backup-stores/{name}/sync`.
    pub async fn sync_backup_stores(
        &self,
        from: &str,
        req: &SyncRequest,
    ) -> Result<SyncReport, ClientError> {
        self.post(&format!("/backup-stores/{}/sync", seg(from)), req)
            .await
    }

    /// `GET /backup-jobs`.
    pub async fn list_backup_jobs(&self) -> Result<Vec<BackupJob>, ClientError> {
        self.get("/backup-jobs").await
    }

    /// `POST /backup-jobs`.
    pub async fn create_backup_job(
        &self,
        req: &CreateBackupJobRequest,
    ) -> Result<BackupJob, ClientError> {
        self.post("/backup-jobs", req).await
    }

    /// `DELETE /backup-jobs/{name}`.
    pub async fn delete_backup_job(&self, name: &str) -> Result<(), ClientError> {
        self.send(self.req(
            reqwest::Method::DELETE,
            &format!("/backup-jobs/{}", seg(name)),
        ))
        .await
    }

    fn files_query(store: Option<&str>, disk: Option<&str>, path: &str) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        if let Some(s) = store {
            q.append_pair("store", s);
        }
        if let Some(d) = disk {
            q.append_pair("disk", d);
        }
        q.append_pair("path", path);
        q.finish()
    }

    /// `GET /backups/{id}/files`: a directory of the backed-up file system.
    pub async fn backup_files(
        &self,
        id: &str,
        store: Option<&str>,
        disk: Option<&str>,
        path: &str,
    ) -> Result<Vec<FileEntry>, ClientError> {
        self.get(&format!(
            "/backups/{}/files?{}",
            seg(id),
            Self::files_query(store, disk, path)
        ))
        .await
    }

    /// `GET /backups/{id}/file`: a file's content.
    pub async fn backup_file(
        &self,
        id: &str,
        store: Option<&str>,
        disk: Option<&str>,
        path: &str,
    ) -> Result<Vec<u8>, ClientError> {
        let rb = self.req(
            reqwest::Method::GET,
            &format!(
                "/backups/{}/file?{}",
                seg(id),
                Self::files_query(store, disk, path)
            ),
        );
        let resp = self.execute(rb).await?;
        let status = resp.status();
        let bytes = self.read_answer(resp).await?;
        if !status.is_success() {
            let err = serde_json::from_slice::<vdc_types::ApiError>(&bytes).unwrap_or_else(|_| {
                vdc_types::ApiError::internal(format!("server answered {status}"))
            });
            return Err(ClientError::Api(err));
        }
        Ok(bytes.to_vec())
    }
}
