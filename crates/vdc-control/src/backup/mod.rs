//! Backups, the server's side: registered backup stores, backups run as
//! `backup.run` tasks (an agent `backup` job on the host that runs the VM,
//! or any host reaching a stopped VM's disks), restores as
//! `backup.restore` tasks, and what reads the stores directly: list, show,
//! verify, prune, gc.
//!
//! A store is a directory the server and every host see at the same path
//! (a local directory in a one-machine lab, a shared mount otherwise). The
//! server keeps only the store's registration (`/backup-stores/NAME`);
//! the backups themselves are the manifests in the store, so a store
//! carried to another cluster lists the same backups.
//!
//! ```text
//!  backup:  claim backing_up ─► agent job: point in time, read, chunks,
//!           manifest ─► release        (failure: no manifest, VM untouched)
//!  restore (new VM):  create (stopped, blank disks) ─► claim restoring ─►
//!           agent job: chunks ─► raw ─► qcow2 ─► rename over the blank disks
//!           (failure: the new VM is deleted)
//!  restore (over the original, powered off): claim restoring ─► agent job
//!           (failure: the VM's images are untouched)
//! ```

mod files;
mod instant;
pub mod jobs;
mod restore;
mod run;
mod sync;

use std::path::{Path, PathBuf};

use serde_json::json;
use vdc_backup::{BackupError, Store};
use vdc_store::StoreExt;
use vdc_types::backup::{
    AddBackupStoreRequest, Backup, BackupStore, GcReport, Retention, VerifyReport,
};
use vdc_types::{now_ms, ApiError, ErrorCode};

use crate::{store_err, Cluster};

const STORES: &str = "/backup-stores/";

fn store_key(name: &str) -> String {
    format!("{STORES}{name}")
}

/// The API error of a store failure.
pub(crate) fn backup_err(e: BackupError) -> ApiError {
    match &e {
        BackupError::NoBackup(_) | BackupError::NotInBackup(_) => {
            ApiError::new(ErrorCode::NotFound, e.to_string())
        }
        BackupError::Files(_) => ApiError::invalid(e.to_string()),
        BackupError::Key(_) | BackupError::NotAStore(_) | BackupError::TooNew { .. } => {
            ApiError::invalid(e.to_string())
        }
        _ => {
            let mut s = e.to_string();
            let mut cur = std::error::Error::source(&e);
            while let Some(c) = cur {
                s.push_str(": ");
                s.push_str(&c.to_string());
                cur = c.source();
            }
            ApiError::new(ErrorCode::HostError, s)
        }
    }
}

/// Runs blocking store work off the async runtime.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BackupError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("store task failed: {e}")))?
        .map_err(backup_err)
}

fn open(s: &BackupStore) -> Result<Store, BackupError> {
    let key = s
        .encryption_key
        .as_deref()
        .map(|k| vdc_backup::key::StoreKey::read(Path::new(k)))
        .transpose()?;
    Store::open(Path::new(&s.path), key)
}

/// A backup id: `VM-YYYYmmddTHHMMSSZ-XXXX`.
pub(crate) fn new_backup_id(vm: &str, t_ms: u64) -> String {
    let secs = t_ms / 1000;
    let days = (secs / 86_400) as i64;
    let (y, m, d) = civil(days);
    let s = secs % 86_400;
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..4];
    format!(
        "{vm}-{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z-{suffix}",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

impl Cluster {
    /// `POST /api/v1/backup-stores`: registers (and initialises) a store.
    pub async fn add_backup_store(
        &self,
        req: &AddBackupStoreRequest,
    ) -> Result<BackupStore, ApiError> {
        vdc_types::names::validate_name("backup store", &req.name).map_err(ApiError::invalid)?;
        if !Path::new(&req.path).is_absolute() {
            return Err(ApiError::invalid(format!(
                "backup store path '{}' must be absolute",
                req.path
            )));
        }
        if let Some(k) = &req.encryption_key {
            if !Path::new(k).is_absolute() {
                return Err(ApiError::invalid(format!(
                    "key file path '{k}' must be absolute"
                )));
            }
        }
        let s = BackupStore {
            name: req.name.clone(),
            path: req.path.clone(),
            encryption_key: req.encryption_key.clone(),
            created_ms: now_ms(),
        };
        let key = s.encryption_key.clone().map(PathBuf::from);
        let path = PathBuf::from(&s.path);
        blocking(move || {
            let key = key
                .map(|k| vdc_backup::key::StoreKey::read(&k))
                .transpose()?;
            Store::open_or_init(&path, key).map(drop)
        })
        .await?;
        self.create_unique(
            &store_key(&s.name),
            &s,
            format!(
                "backup store '{}' already exists; choose another name",
                s.name
            ),
        )
        .await?;
        self.events
            .publish(
                "backup.store_added",
                &s.name,
                format!("backup store {} added at {}", s.name, s.path),
                json!({"path": s.path, "encrypted": s.encryption_key.is_some()}),
            )
            .await;
        Ok(s)
    }

    /// Every registered store.
    pub async fn list_backup_stores(&self) -> Result<Vec<BackupStore>, ApiError> {
        let mut v: Vec<BackupStore> = self
            .store
            .list_json(STORES)
            .await
            .map_err(store_err)?
            .into_iter()
            .map(|(_, s)| s)
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    /// One registered store.
    pub async fn get_backup_store(&self, name: &str) -> Result<BackupStore, ApiError> {
        self.store
            .get_json(&store_key(name))
            .await
            .map_err(store_err)?
            .ok_or_else(|| ApiError::not_found("backup store", name))
    }

    /// Forgets a store (its directory and backups stay as they are).
    pub async fn remove_backup_store(&self, name: &str) -> Result<(), ApiError> {
        self.get_backup_store(name).await?;
        self.store
            .delete(&store_key(name))
            .await
            .map_err(store_err)?;
        self.events
            .publish(
                "backup.store_removed",
                name,
                format!("backup store {name} removed (its files are kept)"),
                json!({}),
            )
            .await;
        Ok(())
    }

    /// Backups in `store` (every store when `None`), of VM `vm` if given,
    /// oldest first.
    pub async fn list_backups(
        &self,
        store: Option<&str>,
        vm: Option<&str>,
    ) -> Result<Vec<Backup>, ApiError> {
        let stores = match store {
            Some(s) => vec![self.get_backup_store(s).await?],
            None => self.list_backup_stores().await?,
        };
        let mut all = Vec::new();
        for s in stores {
            let name = s.name.clone();
            let mut list = blocking(move || open(&s)?.list()).await?;
            for b in &mut list {
                b.store = name.clone();
            }
            all.extend(list);
        }
        if let Some(vm) = vm {
            all.retain(|b| b.vm == vm);
        }
        all.sort_by(|a, b| (a.started_ms, &a.id).cmp(&(b.started_ms, &b.id)));
        Ok(all)
    }

    /// The store holding backup `id` (searched in every store when `store`
    /// is `None`) and the backup's manifest.
    pub(crate) async fn find_backup(
        &self,
        id: &str,
        store: Option<&str>,
    ) -> Result<(BackupStore, vdc_backup::store::Manifest), ApiError> {
        let stores = match store {
            Some(s) => vec![self.get_backup_store(s).await?],
            None => self.list_backup_stores().await?,
        };
        for s in stores {
            let (s2, id2) = (s.clone(), id.to_string());
            match blocking(move || open(&s2)?.manifest(&id2)).await {
                Ok(mut m) => {
                    m.backup.store = s.name.clone();
                    return Ok((s, m));
                }
                Err(e) if e.code == ErrorCode::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Err(ApiError::not_found("backup", id))
    }

    /// One backup.
    pub async fn get_backup(&self, id: &str, store: Option<&str>) -> Result<Backup, ApiError> {
        Ok(self.find_backup(id, store).await?.1.backup)
    }

    /// Re-reads and re-hashes every chunk of backup `id`; marks it damaged
    /// when a chunk is missing or fails its digest.
    pub async fn verify_backup(
        &self,
        id: &str,
        store: Option<&str>,
    ) -> Result<VerifyReport, ApiError> {
        let (s, m) = self.find_backup(id, store).await?;
        let id2 = id.to_string();
        let report = blocking(move || vdc_backup::verify::verify(&open(&s)?, &id2)).await?;
        let (topic, msg) = if report.damaged {
            (
                "backup.damaged",
                format!(
                    "backup {id} of VM {} is damaged: {} chunk(s) missing or failing their digest",
                    m.backup.vm,
                    report.damaged_chunks.len()
                ),
            )
        } else {
            (
                "backup.verified",
                format!("backup {id} of VM {} verified", m.backup.vm),
            )
        };
        self.events
            .publish(topic, id, msg, json!({"vm": m.backup.vm, "chunks_checked": report.chunks_checked, "damaged_chunks": report.damaged_chunks}))
            .await;
        Ok(report)
    }

    /// Removes backup `id` (its chunks go at the next gc).
    pub async fn remove_backup(&self, id: &str, store: Option<&str>) -> Result<(), ApiError> {
        let (s, m) = self.find_backup(id, store).await?;
        let id2 = id.to_string();
        blocking(move || open(&s)?.remove_backup(&id2)).await?;
        self.events
            .publish(
                "backup.removed",
                id,
                format!("backup {id} of VM {} removed", m.backup.vm),
                json!({"vm": m.backup.vm}),
            )
            .await;
        Ok(())
    }

    /// Applies `policy` to the backups of each VM in `store` (of VM `vm`
    /// only, if given); returns the ids removed.
    pub async fn prune_backups(
        &self,
        store: &str,
        vm: Option<&str>,
        policy: &Retention,
    ) -> Result<Vec<String>, ApiError> {
        if policy.is_empty() {
            return Err(ApiError::invalid(
                "a prune needs at least one keep rule (keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly)",
            ));
        }
        let list = self.list_backups(Some(store), vm).await?;
        let mut vms: Vec<&str> = list.iter().map(|b| b.vm.as_str()).collect();
        vms.dedup();
        vms.sort();
        vms.dedup();
        let mut removed = Vec::new();
        for v in vms {
            let mine: Vec<(String, u64)> = list
                .iter()
                .filter(|b| b.vm == v)
                .map(|b| (b.id.clone(), b.started_ms))
                .collect();
            let kept = vdc_backup::retention::keep(&mine, policy);
            for (id, _) in mine.iter().filter(|(id, _)| !kept.contains(id)) {
                self.remove_backup(id, Some(store)).await?;
                removed.push(id.clone());
            }
        }
        Ok(removed)
    }

    /// Garbage collection of `store` (see `vdc_backup::gc`).
    pub async fn gc_backup_store(&self, store: &str) -> Result<GcReport, ApiError> {
        let s = self.get_backup_store(store).await?;
        let report = blocking(move || vdc_backup::gc::gc(&open(&s)?, GC_GRACE)).await?;
        self.events
            .publish(
                "backup.gc",
                store,
                format!(
                    "backup store {store}: {} chunk(s) removed, {} in use",
                    report.chunks_removed, report.chunks_in_use
                ),
                serde_json::to_value(&report).unwrap_or_default(),
            )
            .await;
        Ok(report)
    }
}

/// Grace subtracted from the gc's cutoff (clock steps, mtime granularity).
const GC_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

#[cfg(test)]
mod tests {
    #[test]
    fn backup_ids_carry_the_vm_and_the_utc_time() {
        let id = super::new_backup_id("web", 1_700_000_000_000);
        assert!(id.starts_with("web-20231114T221320Z-"), "{id}");
        assert_eq!(id.len(), "web-20231114T221320Z-".len() + 4);
    }
}
