//! Instant restore: a VM started straight from a backup.
//!
//! ```text
//!  instant_serve (VM provisioned, stopped)
//!    per disk: NBD server on a unix socket serving the backup's disk
//!              (vdc_backup::nbd_server, threads in this agent)
//!              qcow2 overlay, backing = nbd+unix:///DISK?socket=S (raw)
//!    all overlays renamed over the VM's images at the end
//!    any failure: servers stopped, overlays removed, images untouched
//!  (the server starts the VM on this host: its writes go to the overlays)
//!  instant_stream (VM running)
//!    per disk: block-stream (no base) copies every cluster of the export
//!              into the overlay and clears its backing file
//!    all jobs completed: the exports end (sockets removed)
//!    a failed or cancelled stream: the VM keeps running on the exports,
//!              which stay up; a new instant_stream job may try again
//!  instant_stream abandon=true: the exports end (the VM never started)
//! ```
//!
//! The exports live in this agent's process: an agent restart while a
//! stream runs cuts the VM off its backing data (its reads fail).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;
use vdc_backup::nbd_server::NbdServer;
use vdc_types::backup::{InstantStreamRequest, RestoreJobRequest};
use vdc_types::job::JobResult;
use vdc_types::{ApiError, ErrorCode};

use crate::agent::Agent;
use crate::backup::{backup_err, open_store, remove_logged, socket_path, TICK};
use crate::jobs::{job_cancelled, JobCell};

/// The NBD exports of instantly restored VMs, by VM id.
#[derive(Default)]
pub(crate) struct InstantExports {
    by_vm: Mutex<HashMap<String, Vec<NbdServer>>>,
}

impl InstantExports {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<NbdServer>>> {
        self.by_vm.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The sockets serving VM `id`, if it has exports.
    pub(crate) fn sockets(&self, id: &str) -> Option<Vec<String>> {
        self.lock()
            .get(id)
            .map(|v| v.iter().map(|s| s.socket().display().to_string()).collect())
    }

    /// Ends VM `id`'s exports (sockets removed); the sockets it had.
    pub(crate) fn end(&self, id: &str) -> Vec<String> {
        let servers = self.lock().remove(id).unwrap_or_default();
        servers
            .into_iter()
            .map(|s| {
                let path = s.socket().display().to_string();
                s.stop();
                path
            })
            .collect()
    }
}

fn qemu_img_error(what: &str, detail: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::HostError, format!("{what}: {detail}"))
}

/// Creates a qcow2 overlay at `path` whose backing is the NBD export.
async fn create_overlay(
    path: &std::path::Path,
    socket: &str,
    export: &str,
) -> Result<(), ApiError> {
    let backing = format!("nbd+unix:///{export}?socket={socket}");
    let out = tokio::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-b", &backing, "-F", "raw"])
        .arg(path)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| qemu_img_error("cannot run qemu-img", e))?;
    if !out.status.success() {
        return Err(qemu_img_error(
            "cannot create the overlay on the backup's export",
            String::from_utf8_lossy(&out.stderr).trim(),
        ));
    }
    Ok(())
}

impl Agent {
    /// The `instant_serve` job (see the module's doc).
    pub(crate) async fn instant_serve_job(
        self: &Arc<Self>,
        cell: &JobCell,
        req: RestoreJobRequest,
    ) -> Result<JobResult, ApiError> {
        if self.running(&req.config.id).is_ok() {
            return Err(ApiError::invalid_state(format!(
                "VM '{}' runs on this host; an instant restore puts overlays under a powered-off VM only",
                req.config.name
            )));
        }
        let stale = self.instant.end(&req.config.id);
        if !stale.is_empty() {
            tracing::info!(vm = %req.config.name, ?stale, "ended the exports of an earlier instant restore");
        }
        cell.progress(5, "opening the backup store");
        let store = open_store(&req.store_path, req.encryption_key.as_deref()).await?;
        let (s, id) = (store.clone(), req.backup_id.clone());
        let m = tokio::task::spawn_blocking(move || s.manifest(&id))
            .await
            .map_err(|e| ApiError::internal(format!("store task: {e}")))?
            .map_err(backup_err)?;
        let layout = self.layout(&req.config)?;
        let mut servers = Vec::new();
        let mut overlays: Vec<(PathBuf, PathBuf)> = Vec::new();
        let r: Result<(), ApiError> = async {
            for (from, to) in &req.disks {
                let Some(i) = m.index.iter().position(|x| &x.disk == from) else {
                    return Err(ApiError::invalid(format!(
                        "backup '{}' has no disk '{from}'",
                        m.backup.id
                    )));
                };
                let Some(j) = req.config.disks.iter().position(|d| &d.name == to) else {
                    return Err(ApiError::invalid(format!("the VM has no disk '{to}'")));
                };
                cell.progress(10, &format!("serving disk {from} of the backup"));
                let size = m.backup.disks[i].size_bytes;
                let socket = socket_path("instant");
                let server = NbdServer::start(store.clone(), m.index[i].clone(), size, to, &socket)
                    .map_err(backup_err)?;
                let sock = server.socket().display().to_string();
                servers.push(server);
                let target = layout.disks[j].clone();
                let tmp = target.with_file_name(format!(".instant-{to}.qcow2"));
                remove_logged(&tmp);
                overlays.push((tmp.clone(), target));
                create_overlay(&tmp, &sock, to).await?;
            }
            for (tmp, target) in &overlays {
                std::fs::rename(tmp, target).map_err(|e| {
                    qemu_img_error(
                        &format!("cannot put the overlay in place at '{}'", target.display()),
                        e,
                    )
                })?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = r {
            for (tmp, _) in &overlays {
                remove_logged(tmp);
            }
            for s in servers {
                s.stop();
            }
            return Err(e);
        }
        let sockets: Vec<String> = servers
            .iter()
            .map(|s| s.socket().display().to_string())
            .collect();
        self.instant.lock().insert(req.config.id.clone(), servers);
        Ok(JobResult::InstantExports { sockets })
    }

    /// The `instant_stream` job (see the module's doc).
    pub(crate) async fn instant_stream_job(
        self: &Arc<Self>,
        cell: &JobCell,
        req: InstantStreamRequest,
    ) -> Result<JobResult, ApiError> {
        let id = &req.config.id;
        if req.abandon {
            return Ok(JobResult::InstantExports {
                sockets: self.instant.end(id),
            });
        }
        if self.instant.sockets(id).is_none() {
            return Err(ApiError::invalid_state(format!(
                "VM '{}' has no instant restore exports on this host",
                req.config.name
            )));
        }
        let (_, vm) = self.running(id)?;
        let qmp = vm.qmp();
        let mut events = qmp.subscribe();
        let mut jobs = Vec::new();
        for d in &req.config.disks {
            let node = vdc_qemu::snapshot::active_node(qmp, &d.name)
                .await
                .map_err(|e| crate::error::host_error("cannot find the VM's disk", &e))?;
            let job = format!("instant-{}", d.name);
            qmp.execute("block-stream", json!({"job-id": job, "device": node}))
                .await
                .map_err(|e| stream_failed(&format!("block-stream of disk {}", d.name), &e))?;
            jobs.push(job);
        }
        cell.progress(2, "copying the disks from the backup");
        let mut pending = jobs.clone();
        let mut tick = tokio::time::interval(TICK);
        while !pending.is_empty() {
            tokio::select! {
                ev = events.recv() => match ev {
                    Ok(ev) => {
                        let Some(job) = ev.data["device"].as_str() else { continue };
                        if !pending.iter().any(|j| j == job) {
                            continue;
                        }
                        match ev.name.as_str() {
                            "BLOCK_JOB_COMPLETED" => {
                                if let Some(e) = ev.data["error"].as_str() {
                                    return Err(stream_failed(job, &e));
                                }
                                pending.retain(|j| j != job);
                            }
                            "BLOCK_JOB_CANCELLED" | "BLOCK_JOB_ERROR" => {
                                return Err(stream_failed(job, &ev.data));
                            }
                            _ => {}
                        }
                    }
                    Err(RecvError::Lagged(_)) => {
                        // Missed events: ask which jobs still run.
                        let running = running_jobs(qmp).await;
                        pending.retain(|j| running.iter().any(|(r, _, _)| r == j));
                    }
                    Err(RecvError::Closed) => {
                        return Err(stream_failed("the VM's QMP", &"connection closed (the VM stopped?)"));
                    }
                },
                _ = tick.tick() => {
                    let running = running_jobs(qmp).await;
                    let (done, total) = running
                        .iter()
                        .filter(|(j, _, _)| jobs.contains(j))
                        .fold((0u64, 0u64), |(d, t), (_, o, l)| (d + o, t + l));
                    if let Some(p) = (done * 95).checked_div(total) {
                        cell.progress((2 + p).min(97) as u8, "copying the disks from the backup");
                    }
                }
                _ = cell.cancel.cancelled() => {
                    for j in &pending {
                        if let Err(e) = qmp.execute("block-job-cancel", json!({"device": j})).await {
                            tracing::warn!(job = %j, error = %e, "cannot cancel an instant restore copy");
                        }
                    }
                    return Err(job_cancelled());
                }
            }
        }
        cell.progress(98, "ending the backup's exports");
        Ok(JobResult::InstantExports {
            sockets: self.instant.end(id),
        })
    }
}

/// Block jobs of the VM: (id, offset, len).
async fn running_jobs(qmp: &vdc_qemu::Qmp) -> Vec<(String, u64, u64)> {
    match qmp.execute("query-block-jobs", Value::Null).await {
        Ok(v) => v
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|j| {
                Some((
                    j["device"].as_str()?.to_string(),
                    j["offset"].as_u64()?,
                    j["len"].as_u64()?,
                ))
            })
            .collect(),
        Err(e) => {
            tracing::debug!(error = %e, "query-block-jobs");
            Vec::new()
        }
    }
}

fn stream_failed(what: &str, e: &dyn std::fmt::Display) -> ApiError {
    ApiError::new(
        ErrorCode::HostError,
        format!(
            "copying the disks from the backup failed ({what}: {e}); the VM keeps running on the backup's export, which stays up"
        ),
    )
}
