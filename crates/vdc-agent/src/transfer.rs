//! Copying a stopped or suspended VM's files between agents (cold and
//! suspended migration to a datastore the source host cannot see; the
//! protocol is drawn in `vdc_types::transfer`).
//!
//! # Source side: exports
//! `POST /agent/v1/exports` (server credential) lists the VM's configured
//! disk files, its `suspend.state` and its snapshot chains' files, reads each once for its size and SHA-256, and keeps
//! the SHA-256 of the one-time token the server chose. `GET
//! /agent/v1/exports/{id}/files/{name}` is the one agent route that does
//! not want the server credential: it wants that token, and serves only
//! the files of that export. `DELETE /agent/v1/exports/{id}` (server
//! credential) closes it; an export nobody closes expires after
//! `EXPORT_TTL_S`.
//!
//! # Destination side: the `receive_vm` job
//! 1. refuse a VM directory or disk file that already exists, and a
//!    datastore without room for the files;
//! 2. create the VM directory; download each file to `NAME.part`, hashing
//!    it as it arrives; compare the SHA-256 with the export's; fsync;
//!    rename to its place;
//! 3. check each disk's snapshot chain opens (`transfer_chain`), write
//!    `vm.json` (the configuration for this host), fsync the directory,
//!    and know the VM (stopped, or suspended with its state file).
//!
//! A VM with snapshots moves with its whole tree: every image of each
//! chain, the memory state files and `snapshots.json` (`transfer_chain`).
//!
//! A failure or a cancel at any step removes every file the job made and
//! the directory: nothing half-made stays on the destination.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;
use vdc_types::auth::SecretHash;
use vdc_types::job::JobResult;
use vdc_types::transfer::{
    disk_file, ExportFile, ExportRequest, ExportResponse, ReceiveVmRequest, EXPORT_TTL_S,
    STATE_FILE,
};
use vdc_types::{ApiError, ErrorCode, VmPowerState};

use crate::agent::{Agent, Layout};
use crate::error::{disk_error, host_error};
use crate::provision::check_config;

/// Shortest token accepted for an export.
const MIN_TOKEN_LEN: usize = 16;
/// Longest wait for the source to answer (headers, then each chunk).
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// One offered VM: its token's hash and its files by export name.
struct Export {
    token: SecretHash,
    files: HashMap<String, PathBuf>,
    expires: Instant,
}

/// The exports of this agent.
#[derive(Default)]
pub(crate) struct Exports {
    open: Mutex<HashMap<String, Export>>,
}

impl Exports {
    fn open(&self) -> std::sync::MutexGuard<'_, HashMap<String, Export>> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        open.retain(|_, e| e.expires > now);
        open
    }

    /// The path of file `name` of export `id` if `token` opens it.
    pub fn file(&self, id: &str, token: &str, name: &str) -> Result<PathBuf, ApiError> {
        let open = self.open();
        let export = open
            .get(id)
            .filter(|e| e.token.matches(token))
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::Unauthorized,
                    "no open export with this id and token",
                )
            })?;
        export.files.get(name).cloned().ok_or_else(|| {
            ApiError::new(
                ErrorCode::NotFound,
                format!("export '{id}' has no file '{name}'"),
            )
        })
    }

    /// Closes export `id` (no error if it is not open).
    pub fn close(&self, id: &str) {
        self.open().remove(id);
    }
}

impl Agent {
    /// `POST /agent/v1/exports`.
    pub async fn export_vm(&self, req: ExportRequest) -> Result<ExportResponse, ApiError> {
        vdc_types::job::validate_operation_id(&req.id).map_err(ApiError::invalid)?;
        if req.token.len() < MIN_TOKEN_LEN {
            return Err(ApiError::invalid(format!(
                "an export token has at least {MIN_TOKEN_LEN} characters"
            )));
        }
        let config = req.config;
        check_config(&config.id, &config)?;
        if let Ok(slot) = self.slot(&config.id) {
            if slot.state().has_process() {
                return Err(ApiError::invalid_state(format!(
                    "VM '{}' is {} on host '{}'; only a stopped or suspended VM's files can be copied",
                    config.name,
                    slot.state(),
                    self.config.name
                )));
            }
        }
        let layout = self.layout(&config)?;
        // The configured files (the bases of any snapshot chains), then
        // the chains' files (`transfer_chain`).
        let configured: Vec<(String, PathBuf)> = config
            .disks
            .iter()
            .map(|d| Ok((d.name.clone(), self.resolve(&d.datastore, &d.path)?)))
            .collect::<Result<_, ApiError>>()?;
        let mut named: Vec<(String, PathBuf)> = configured
            .iter()
            .map(|(d, p)| (disk_file(d), p.clone()))
            .collect();
        named.push((STATE_FILE.to_string(), layout.vm_dir.suspend_state()));
        let tree = crate::snapshot::read_tree(layout.vm_dir.path()).await?;
        named.extend(crate::transfer_chain::chain_files(
            &configured,
            layout.vm_dir.path(),
            &tree,
        ));
        let vm = config.name.clone();
        let files = tokio::task::spawn_blocking(move || describe(&vm, named))
            .await
            .map_err(|e| ApiError::new(ErrorCode::Internal, format!("export: {e}")))??;
        let listed: Vec<ExportFile> = files.iter().map(|(f, _)| f.clone()).collect();
        self.exports.open().insert(
            req.id.clone(),
            Export {
                token: SecretHash::of(&req.token),
                files: files.into_iter().map(|(f, p)| (f.name, p)).collect(),
                expires: Instant::now() + Duration::from_secs(EXPORT_TTL_S),
            },
        );
        tracing::info!(vm = %config.name, export = %req.id, files = listed.len(), "export opened");
        Ok(ExportResponse {
            id: req.id,
            files: listed,
        })
    }

    /// The `receive_vm` job (see the module doc). `progress` gets bytes
    /// copied and bytes to copy.
    pub(crate) async fn receive_vm(
        &self,
        req: ReceiveVmRequest,
        cancel: &CancellationToken,
        progress: impl Fn(u64, u64),
    ) -> Result<JobResult, ApiError> {
        let config = req.config.clone();
        check_config(&config.id, &config)?;
        let layout = self.layout(&config)?;
        let targets = targets(&req, &layout)?;
        let (dir, paths) = (
            layout.vm_dir.path().to_path_buf(),
            targets.iter().map(|(_, p)| p.clone()).collect::<Vec<_>>(),
        );
        let taken = tokio::task::spawn_blocking(move || {
            std::iter::once(dir).chain(paths).find(|p| p.exists())
        })
        .await
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("receive: {e}")))?;
        if let Some(p) = taken {
            return Err(ApiError::new(
                ErrorCode::AlreadyExists,
                format!(
                    "'{}' already exists on host '{}'; remove it or choose another datastore",
                    p.display(),
                    self.config.name
                ),
            ));
        }
        let total: u64 = req.files.iter().map(|f| f.size_bytes).sum();
        let free = self
            .datastore(&config.datastore)?
            .capacity()
            .map_err(|e| disk_error("cannot read the datastore's free space", e))?
            .free_bytes;
        if total > free {
            return Err(ApiError::new(
                ErrorCode::InsufficientCapacity,
                format!(
                    "datastore '{}' on host '{}' has {free} bytes free; VM '{}' needs {total}",
                    config.datastore, self.config.name, config.name
                ),
            ));
        }
        layout.vm_dir.create().map_err(|e| {
            disk_error(
                format!("cannot create the directory of VM '{}'", config.name),
                e,
            )
        })?;
        // Dropping the copy on a cancel ends it; its files are removed below.
        let copied = tokio::select! {
            r = self.copy_all(&req, &targets, &layout, total, &progress) => r,
            _ = cancel.cancelled() => Err(crate::jobs::job_cancelled()),
        };
        if let Err(e) = copied {
            let (dir, targets) = (layout.vm_dir.path().to_path_buf(), targets.clone());
            let config_path = layout.vm_dir.config_path();
            let removed = tokio::task::spawn_blocking(move || {
                remove_made(&dir, &targets, &config_path);
            })
            .await;
            if let Err(join) = removed {
                tracing::warn!(vm = %config.name, error = %join, "cannot remove a failed copy's files");
            }
            return Err(e);
        }
        let suspended = targets.iter().any(|(f, _)| f.name == STATE_FILE);
        let state = if suspended {
            VmPowerState::Suspended
        } else {
            VmPowerState::Stopped
        };
        let slot = self.slot_or_insert(&config, state);
        slot.inner().config = config.clone();
        slot.set_state(state);
        slot.persist_config()
            .map_err(|e| host_error("cannot write the runtime directory", &e))?;
        tracing::info!(vm = %config.name, bytes = total, %state, "VM received");
        Ok(JobResult::Vm(slot.runtime()))
    }

    async fn copy_all(
        &self,
        req: &ReceiveVmRequest,
        targets: &[(ExportFile, PathBuf)],
        layout: &Layout,
        total: u64,
        progress: &impl Fn(u64, u64),
    ) -> Result<(), ApiError> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .read_timeout(READ_TIMEOUT)
            .build()
            .map_err(|e| host_error("cannot build an HTTP client", &e))?;
        let mut done = 0u64;
        for (file, path) in targets {
            let url = format!(
                "{}/agent/v1/exports/{}/files/{}",
                req.source_url.trim_end_matches('/'),
                req.export_id,
                file.name
            );
            fetch(&client, &url, &req.token, file, path, |n| {
                progress(done + n, total)
            })
            .await?;
            done += file.size_bytes;
        }
        self.verify_received(req).await?;
        let (vm_dir, config) = (layout.vm_dir.clone(), req.config.clone());
        tokio::task::spawn_blocking(move || vm_dir.write_config(&config))
            .await
            .map_err(|e| ApiError::new(ErrorCode::Internal, format!("receive: {e}")))?
            .map_err(|e| disk_error("cannot write vm.json", e))
    }

    /// Checks the copied disks before the VM is known here: each active
    /// image (the tree, if any, was copied) opens with its backing chain.
    async fn verify_received(&self, req: &ReceiveVmRequest) -> Result<(), ApiError> {
        let active = self.layout(&req.config)?.disks;
        crate::transfer_chain::verify_chains(&active).await
    }
}

/// Where each file of the export goes on this host.
fn targets(
    req: &ReceiveVmRequest,
    layout: &Layout,
) -> Result<Vec<(ExportFile, PathBuf)>, ApiError> {
    req.files
        .iter()
        .map(|f| {
            let path = if f.name == STATE_FILE {
                Some(layout.vm_dir.suspend_state())
            } else if let Some(p) =
                crate::transfer_chain::chain_target(&f.name, layout.vm_dir.path())
            {
                Some(p?)
            } else {
                req.config
                    .disks
                    .iter()
                    .zip(&layout.disks)
                    .find(|(d, _)| disk_file(&d.name) == f.name)
                    .map(|(_, p)| p.clone())
            };
            let path = path.ok_or_else(|| {
                ApiError::invalid(format!(
                    "file '{}' of the export is no disk of VM '{}'",
                    f.name, req.config.name
                ))
            })?;
            if path.parent() != Some(layout.vm_dir.path()) {
                return Err(ApiError::invalid(format!(
                    "disk file '{}' must be inside the VM's directory '{}'",
                    path.display(),
                    req.config.dir
                )));
            }
            Ok((f.clone(), path))
        })
        .collect()
}

/// Downloads `url` into `path` (by way of `path.part`), checking the size
/// and SHA-256 the export announced.
async fn fetch(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    file: &ExportFile,
    path: &Path,
    progress: impl Fn(u64),
) -> Result<(), ApiError> {
    let part = part_path(path);
    let failed = |what: String| ApiError::new(ErrorCode::HostError, what);
    let resp = client
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| {
            host_error(
                format!("cannot read '{}' from the source host", file.name),
                &e,
            )
        })?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        return Err(failed(format!(
            "the source host answered {status} for '{}': {body}",
            file.name
        )));
    }
    let mut out = tokio::fs::File::create(&part)
        .await
        .map_err(|e| host_error(format!("cannot create {}", part.display()), &e))?;
    let mut hash = Sha256::new();
    let mut got = 0u64;
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk =
            chunk.map_err(|e| host_error(format!("the copy of '{}' broke off", file.name), &e))?;
        hash.update(&chunk);
        got += chunk.len() as u64;
        out.write_all(&chunk)
            .await
            .map_err(|e| host_error(format!("cannot write {}", part.display()), &e))?;
        progress(got);
    }
    out.sync_all()
        .await
        .map_err(|e| host_error(format!("cannot sync {}", part.display()), &e))?;
    drop(out);
    let sum = hex(&hash.finalize());
    if got != file.size_bytes || sum != file.sha256 {
        return Err(failed(format!(
            "'{}' arrived damaged: {got} bytes with SHA-256 {sum}, expected {} bytes with {}",
            file.name, file.size_bytes, file.sha256
        )));
    }
    tokio::fs::rename(&part, path)
        .await
        .map_err(|e| host_error(format!("cannot rename {}", part.display()), &e))?;
    if let Some(dir) = path.parent() {
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || std::fs::File::open(&dir).and_then(|d| d.sync_all()))
            .await
            .map_err(|e| ApiError::new(ErrorCode::Internal, format!("receive: {e}")))?
            .map_err(|e| host_error("cannot sync the VM directory", &e))?;
    }
    Ok(())
}

fn part_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".part");
    PathBuf::from(p)
}

/// Size and SHA-256 of each file that exists (the state file is optional,
/// the disks are not).
fn describe(
    vm: &str,
    named: Vec<(String, PathBuf)>,
) -> Result<Vec<(ExportFile, PathBuf)>, ApiError> {
    let mut out = Vec::new();
    for (name, path) in named {
        let mut f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && name == STATE_FILE => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ApiError::new(
                    ErrorCode::NotFound,
                    format!("file {} of VM '{vm}' not found", path.display()),
                ))
            }
            Err(e) => return Err(host_error(format!("cannot open {}", path.display()), &e)),
        };
        let mut hash = Sha256::new();
        let size = std::io::copy(&mut f, &mut hash)
            .map_err(|e| host_error(format!("cannot read {}", path.display()), &e))?;
        out.push((
            ExportFile {
                name,
                size_bytes: size,
                sha256: hex(&hash.finalize()),
            },
            path,
        ));
    }
    Ok(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Removes what a failed receive made: each file and its `.part`,
/// `vm.json`, then the directory (each failure logged).
fn remove_made(dir: &Path, targets: &[(ExportFile, PathBuf)], config: &Path) {
    let files = targets
        .iter()
        .flat_map(|(_, p)| [p.clone(), part_path(p)])
        .chain([config.to_path_buf()]);
    for p in files {
        if let Err(e) = std::fs::remove_file(&p) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %p.display(), error = %e, "cannot remove a file of a failed copy");
            }
        }
    }
    if let Err(e) = std::fs::remove_dir(dir) {
        tracing::warn!(path = %dir.display(), error = %e, "cannot remove the directory of a failed copy");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_export_opens_only_with_its_token_and_only_its_files() {
        let exports = Exports::default();
        exports.open().insert(
            "op-1".into(),
            Export {
                token: SecretHash::of("0123456789abcdef"),
                files: [(
                    "disk.disk0".to_string(),
                    PathBuf::from("/ds/vm/disk0.qcow2"),
                )]
                .into(),
                expires: Instant::now() + Duration::from_secs(60),
            },
        );
        assert_eq!(
            exports
                .file("op-1", "0123456789abcdef", "disk.disk0")
                .expect("file"),
            PathBuf::from("/ds/vm/disk0.qcow2")
        );
        let wrong = exports.file("op-1", "0123456789abcdeX", "disk.disk0");
        assert_eq!(wrong.expect_err("token").code, ErrorCode::Unauthorized);
        let other = exports.file("op-1", "0123456789abcdef", "vm.lock");
        assert_eq!(other.expect_err("name").code, ErrorCode::NotFound);
        exports.close("op-1");
        assert!(exports
            .file("op-1", "0123456789abcdef", "disk.disk0")
            .is_err());
    }

    #[test]
    fn describe_hashes_disks_and_skips_a_missing_state_file() {
        let dir = tempfile::tempdir().expect("dir");
        let disk = dir.path().join("disk0.qcow2");
        std::fs::write(&disk, b"abc").expect("write");
        let files = describe(
            "vm",
            vec![
                ("disk.disk0".into(), disk),
                (STATE_FILE.into(), dir.path().join(STATE_FILE)),
            ],
        )
        .expect("describe");
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].0.size_bytes, 3);
        assert_eq!(
            files[0].0.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let missing = describe("vm", vec![("disk.disk1".into(), dir.path().join("x"))]);
        assert_eq!(missing.expect_err("missing").code, ErrorCode::NotFound);
    }
}
