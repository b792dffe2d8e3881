//! Replication on a host: shipping a VM's changed blocks (protected site)
//! and receiving them into a replica's point images (recovery site).
//!
//! # Protected side: the `replicate` job
//! 1. quiesce the guest through its guest agent when asked and it answers;
//! 2. `vdc_qemu::replicate`: one backup job into the replica's NBD export,
//!    full (with a new persistent bitmap) or what the bitmap marks; the
//!    guest thaws as soon as the job has taken its instant;
//! 3. the bytes copied and the consistency are the job's result. A failed
//!    or cancelled job leaves the bitmap with every change in it.
//!
//! # Recovery side: a point's image
//! A point is a qcow2 overlay on the previous point (relative backing name),
//! in the replica's directory on a datastore:
//! 1. `serve`: leftovers of points never listed are removed; the overlay is
//!    created and `qemu-nbd` serves it, writable, on the host's address;
//! 2. `end` with the replica: `qemu-nbd` is stopped with SIGTERM (it
//!    flushes and closes the image), the image is fsynced, retention
//!    merges run, then `replica.json` is written (temp file, fsync,
//!    rename, fsync of the directory) listing the point: only then is it
//!    a point;
//! 3. `end` without the replica (abort): `qemu-nbd` is killed and the
//!    image removed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use vdc_types::job::JobResult;
use vdc_types::replication::{
    EndPointRequest, PointConsistency, ReplicateJobRequest, ReplicatedPoint, ServePointRequest,
    ServePointResponse,
};
use vdc_types::{now_ms, ApiError, ErrorCode};

use crate::agent::Agent;
use crate::jobs::{job_cancelled, JobCell};

/// Name of a replica's description file.
pub const REPLICA_FILE: &str = "replica.json";
/// Longest wait for `qemu-nbd` to listen or to end.
const NBD_WAIT: Duration = Duration::from_secs(20);

/// `qemu-nbd` processes serving points being written, by image path.
fn serving() -> &'static Mutex<HashMap<PathBuf, tokio::process::Child>> {
    static SERVING: OnceLock<Mutex<HashMap<PathBuf, tokio::process::Child>>> = OnceLock::new();
    SERVING.get_or_init(Default::default)
}

fn host_err(m: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::HostError, m)
}

impl Agent {
    /// The `replicate` job (module docs, protected side).
    pub(crate) async fn replicate_job(
        self: &Arc<Self>,
        cell: &JobCell,
        req: ReplicateJobRequest,
    ) -> Result<JobResult, ApiError> {
        let vm = self.slot(&req.config.id)?.vm().ok_or_else(|| {
            ApiError::invalid_state(format!("VM '{}' is not running here", req.config.name))
        })?;
        if !req.full
            && !vm
                .has_usable_bitmap(&req.disk, &req.bitmap)
                .await
                .map_err(|e| host_err(crate::error::chain(&e)))?
        {
            return Err(ApiError::new(
                ErrorCode::InvalidState,
                format!(
                    "bitmap-missing: disk {} of VM '{}' has no usable replication bitmap '{}'",
                    req.disk, req.config.name, req.bitmap
                ),
            ));
        }
        cell.progress(
            2,
            if req.full {
                "copying the whole disk"
            } else {
                "shipping the changed blocks"
            },
        );
        let qga = vm.paths().guest_agent_socket();
        let frozen = req.quiesce
            && req.config.guest_agent
            && matches!(
                vdc_qemu::qga::freeze(&qga, vdc_qemu::qga::DEFAULT_TIMEOUT).await,
                vdc_qemu::qga::Quiesce::Quiesced { .. }
            );
        let time_ms = now_ms();
        let thaw = async {
            if frozen {
                if let Err(e) = vdc_qemu::qga::thaw(&qga, vdc_qemu::qga::DEFAULT_TIMEOUT).await {
                    tracing::warn!(vm = %req.config.name, error = %e, "cannot thaw the guest (it thaws itself after 10 s)");
                }
            }
        };
        let target = vdc_qemu::replicate::ReplicaTarget {
            host: req.host.clone(),
            port: req.port,
            export: req.export.clone(),
        };
        let shipped = vm.replicate_disk(&req.disk, &req.bitmap, req.full, &target, thaw);
        let bytes = tokio::select! {
            r = shipped => r.map_err(|e| host_err(format!("shipping disk {}: {}", req.disk, crate::error::chain(&e))))?,
            _ = cell.cancel.cancelled() => {
                vm.cancel_replicate(&req.disk).await;
                return Err(job_cancelled());
            }
        };
        Ok(JobResult::Replicated(ReplicatedPoint {
            time_ms,
            bytes,
            consistency: if frozen {
                PointConsistency::Quiesced
            } else {
                PointConsistency::Crash
            },
        }))
    }

    /// `POST /agent/v1/replica-points` (module docs, step 1).
    pub(crate) async fn serve_point(
        &self,
        req: ServePointRequest,
    ) -> Result<ServePointResponse, ApiError> {
        for name in std::iter::once(&req.file)
            .chain(req.backing.iter())
            .chain(req.keep.iter())
        {
            check_file_name(name)?;
        }
        let dir = self.resolve(&req.datastore, &req.dir)?;
        let image = dir.join(&req.file);
        stop_serving(&image, false).await;
        {
            let (d, keep) = (dir.clone(), req.keep.clone());
            crate::agent::datastore_io("prepare the replica directory", move || {
                prepare_dir(&d, &keep)
            })
            .await?
            .map_err(|e| host_err(format!("replica directory {}: {e}", dir.display())))?;
        }
        let mut create = tokio::process::Command::new("qemu-img");
        create.args(["create", "-q", "-f", "qcow2"]);
        if let Some(b) = &req.backing {
            create.args(["-F", "qcow2", "-b", b]);
        }
        let out = create
            .arg(&image)
            .arg(req.size_bytes.to_string())
            .current_dir(&dir)
            .output()
            .await
            .map_err(|e| host_err(format!("cannot run qemu-img: {e}")))?;
        if !out.status.success() {
            return Err(host_err(format!(
                "qemu-img create {}: {}",
                image.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let address = self.config.address.clone();
        let port = free_port(&address)?;
        let child = tokio::process::Command::new("qemu-nbd")
            .arg("--format=qcow2")
            .arg("--persistent")
            .arg("--shared=4")
            .arg("--cache=writeback")
            .arg(format!("--bind={address}"))
            .arg(format!("--port={port}"))
            .arg(format!("--export-name={}", req.file))
            .arg(&image)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| host_err(format!("cannot run qemu-nbd: {e}")))?;
        serving()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(image.clone(), child);
        let deadline = tokio::time::Instant::now() + NBD_WAIT;
        loop {
            if tokio::net::TcpStream::connect((address.as_str(), port))
                .await
                .is_ok()
            {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                stop_serving(&image, false).await;
                crate::backup::remove_logged(&image);
                return Err(host_err("qemu-nbd did not start serving the point in time"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(ServePointResponse {
            host: address,
            port,
        })
    }

    /// `POST /agent/v1/replica-points/end` (module docs, steps 2 and 3).
    pub(crate) async fn end_point(&self, req: EndPointRequest) -> Result<(), ApiError> {
        check_file_name(&req.file)?;
        for (a, b) in &req.merge {
            check_file_name(a)?;
            check_file_name(b)?;
        }
        let dir = self.resolve(&req.datastore, &req.dir)?;
        let image = dir.join(&req.file);
        let Some(replica) = req.replica else {
            stop_serving(&image, false).await;
            crate::backup::remove_logged(&image);
            return Ok(());
        };
        if !stop_serving(&image, true).await {
            return Err(host_err(format!(
                "the point's NBD server for {} is gone (agent restarted?); the point is dropped",
                image.display()
            )));
        }
        for (older, newer) in &req.merge {
            merge_points(&dir, older, newer).await?;
        }
        let body = serde_json::to_vec_pretty(&replica)
            .map_err(|e| ApiError::internal(format!("replica.json: {e}")))?;
        let (d, img) = (dir.clone(), image.clone());
        crate::agent::datastore_io("write replica.json", move || -> std::io::Result<()> {
            std::fs::File::open(&img)?.sync_all()?;
            write_durable(&d.join(REPLICA_FILE), &body)
        })
        .await?
        .map_err(|e| host_err(format!("writing {}: {e}", dir.join(REPLICA_FILE).display())))
    }
}

/// Point files are plain names inside the replica directory.
fn check_file_name(name: &str) -> Result<(), ApiError> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') || !name.ends_with(".qcow2") {
        return Err(ApiError::invalid(format!(
            "'{name}' is not a point image name"
        )));
    }
    Ok(())
}

/// Creates the directory and removes every image in it that is not listed
/// (`keep`): the leftovers of points that were never listed.
fn prepare_dir(dir: &Path, keep: &[String]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".qcow2") && !keep.contains(&name) {
            tracing::info!(file = %e.path().display(), "removing a point image that was never listed");
            std::fs::remove_file(e.path())?;
        }
    }
    Ok(())
}

/// Ends the `qemu-nbd` serving `image`: with `clean`, SIGTERM (it flushes
/// and closes the image) and a wait; else SIGKILL. Whether one was
/// serving and ended.
async fn stop_serving(image: &Path, clean: bool) -> bool {
    let child = serving()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(image);
    let Some(mut child) = child else {
        return false;
    };
    if clean {
        if let Some(pid) = child.id() {
            if let Err(e) = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            ) {
                tracing::warn!(error = %e, "cannot stop qemu-nbd");
            }
        }
        match tokio::time::timeout(NBD_WAIT, child.wait()).await {
            Ok(Ok(status)) => return status.success(),
            Ok(Err(e)) => tracing::warn!(error = %e, "qemu-nbd wait"),
            Err(_) => {
                tracing::warn!(image = %image.display(), "qemu-nbd did not end after SIGTERM")
            }
        }
    }
    if let Err(e) = child.start_kill() {
        tracing::debug!(error = %e, "qemu-nbd kill");
    }
    if let Err(e) = child.wait().await {
        tracing::debug!(error = %e, "qemu-nbd wait");
    }
    !clean
}

/// Retention: the newer point's changes are committed into the older
/// point's image, which then takes the newer one's name; the point after
/// them keeps reading the same bytes through its (unchanged) backing name.
async fn merge_points(dir: &Path, older: &str, newer: &str) -> Result<(), ApiError> {
    let run = |args: Vec<String>| async move {
        let out = tokio::process::Command::new("qemu-img")
            .args(&args)
            .current_dir(dir)
            .output()
            .await
            .map_err(|e| host_err(format!("cannot run qemu-img: {e}")))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(host_err(format!(
                "qemu-img {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    };
    run(vec![
        "commit".into(),
        "-q".into(),
        "-d".into(),
        newer.into(),
    ])
    .await?;
    let (o, n) = (dir.join(older), dir.join(newer));
    crate::agent::datastore_io("merge points", move || -> std::io::Result<()> {
        std::fs::File::open(&o)?.sync_all()?;
        std::fs::rename(&o, &n)?;
        if let Some(d) = n.parent() {
            std::fs::File::open(d)?.sync_all()?;
        }
        Ok(())
    })
    .await?
    .map_err(|e| host_err(format!("merging points {older} and {newer}: {e}")))
}

/// Writes `path` so that it survives a crash: temporary file, fsync,
/// rename, fsync of the directory.
fn write_durable(path: &Path, body: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(body)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(d) = path.parent() {
        std::fs::File::open(d)?.sync_all()?;
    }
    Ok(())
}

fn free_port(address: &str) -> Result<u16, ApiError> {
    let l = std::net::TcpListener::bind((address, 0))
        .map_err(|e| host_err(format!("no free port on {address}: {e}")))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| host_err(format!("no free port on {address}: {e}")))
}
