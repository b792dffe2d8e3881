//! Live migration with storage, QEMU's side: the destination exports its
//! new, empty images over NBD; the source mirrors each disk into that
//! export while the guest runs, then (the memory moved, its vCPUs stopped)
//! finishes the mirrors so the destination's images hold every write.
//!
//! # Steps (QMP, QEMU 10)
//! Destination, started with `-incoming defer -S` on the new images:
//! 1. `nbd-server-start` on the host's migration address;
//! 2. `block-export-add` (type `nbd`, `writable`) of each disk's format node
//!    under the disk's name. Exporting a node of an incoming VM activates
//!    it (QEMU does so unless `allow-inactive` is given), so the source can
//!    write into it before the memory stream.
//!
//! Source, for each disk:
//! 1. `blockdev-add` an `nbd` client node on the destination's export;
//! 2. `blockdev-mirror sync=full copy-mode=write-blocking` from the node the
//!    disk's device reads now: the background copy plus every new guest
//!    write, written to both sides before it completes, so a busy guest
//!    converges;
//! 3. wait until every job is `ready` (in sync);
//! 4. (the memory stream runs and completes; the guest's vCPUs stop)
//! 5. `block-job-cancel` without `force`: on a ready mirror QEMU copies what
//!    is left and ends the job with `BLOCK_JOB_COMPLETED` *without* switching
//!    the device: the target is then a copy of the disk at that moment;
//! 6. `blockdev-del` of the nbd node.
//!
//! Destination, told to proceed: `block-export-del`, `nbd-server-stop`,
//! `cont`.
//!
//! An abort before step 5 (`block-job-cancel force`, then `blockdev-del`)
//! leaves the source on its own images, untouched; a destination that dies
//! fails the jobs (the guest's writes still complete on the source).

use std::time::Duration;

use serde_json::json;
use tokio::sync::broadcast;
use vdc_qmp::QmpEvent;

use crate::error::QemuError;
use crate::mirror::{event_job, job_ended_error};
use crate::vm::Vm;

/// How often a finishing job is looked at besides its events.
const TICK: Duration = Duration::from_millis(100);
/// Longest wait for a mirror to finish once the guest stopped.
const FINISH_WAIT: Duration = Duration::from_secs(60);

/// One disk mirrored into a destination's NBD export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdMirror {
    /// The disk (spec node name, e.g. `disk0`), also the export's name.
    pub disk: String,
    /// Block job id.
    pub job: String,
    /// The nbd client node.
    pub node: String,
}

/// The mirrors' state, summed over disks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MirrorsState {
    /// Bytes copied.
    pub done: u64,
    /// Bytes still to copy.
    pub remaining: u64,
    /// Every job is ready (in sync).
    pub ready: bool,
    /// A job that ended on its own (it failed), with QEMU's reason.
    pub ended: Option<(String, String)>,
}

/// Splits `HOST:PORT`.
pub fn split_address(addr: &str) -> Option<(&str, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let port = port.parse().ok()?;
    (!host.is_empty()).then_some((host, port))
}

impl Vm {
    /// Destination: serves `disks` (node names) writable over NBD on
    /// `host:port`, each export named as its disk.
    pub async fn nbd_export(
        &self,
        host: &str,
        port: u16,
        disks: &[String],
    ) -> Result<(), QemuError> {
        self.qmp()
            .execute(
                "nbd-server-start",
                json!({"addr": {"type": "inet", "data": {"host": host, "port": port.to_string()}}}),
            )
            .await
            .map_err(QemuError::qmp("nbd-server-start"))?;
        for disk in disks {
            let added = self
                .qmp()
                .execute(
                    "block-export-add",
                    json!({"type": "nbd", "id": export_id(disk), "node-name": disk,
                           "name": disk, "writable": true}),
                )
                .await
                .map_err(QemuError::qmp("block-export-add"));
            if let Err(e) = added {
                self.nbd_unexport(disks).await;
                return Err(e);
            }
        }
        Ok(())
    }

    /// Destination: ends the exports and the NBD server (failures logged;
    /// an export or server already gone is no failure).
    pub async fn nbd_unexport(&self, disks: &[String]) {
        for disk in disks {
            if let Err(e) = self
                .qmp()
                .execute("block-export-del", json!({"id": export_id(disk)}))
                .await
            {
                tracing::debug!(vm = %self.id(), disk, error = %e, "block-export-del");
            }
        }
        if let Err(e) = self.qmp().execute("nbd-server-stop", json!({})).await {
            tracing::debug!(vm = %self.id(), error = %e, "nbd-server-stop");
        }
    }

    /// Source: starts mirroring disk `disk` into the export of the same
    /// name on `host:port` (steps 1–2 of the module doc); the background
    /// copy goes at most `speed` bytes/s (0: unlimited; the guest's own
    /// writes are never held back).
    pub async fn mirror_to_nbd(
        &self,
        disk: &str,
        host: &str,
        port: u16,
        speed: u64,
    ) -> Result<NbdMirror, QemuError> {
        let source = self.disk_node(disk).await?;
        let m = NbdMirror {
            disk: disk.to_string(),
            job: format!("nbd-mirror-{disk}"),
            node: format!("{disk}-nbd"),
        };
        self.qmp()
            .execute(
                "blockdev-add",
                json!({"driver": "nbd", "node-name": m.node, "export": disk,
                       "server": {"type": "inet", "host": host, "port": port.to_string()}}),
            )
            .await
            .map_err(QemuError::qmp("blockdev-add nbd"))?;
        let started = self
            .qmp()
            .execute(
                "blockdev-mirror",
                json!({"job-id": m.job, "device": source, "target": m.node,
                       "sync": "full", "copy-mode": "write-blocking", "speed": speed}),
            )
            .await
            .map_err(QemuError::qmp("blockdev-mirror"));
        if let Err(e) = started {
            self.delete_node(&m.node).await;
            return Err(e);
        }
        Ok(m)
    }

    /// Source: the mirrors' figures now (`events` subscribed before they
    /// started, to tell why a job ended).
    pub async fn mirrors_state(
        &self,
        mirrors: &[NbdMirror],
        events: &mut broadcast::Receiver<QmpEvent>,
    ) -> Result<MirrorsState, QemuError> {
        let mut errors: Vec<(String, String)> = Vec::new();
        while let Ok(ev) = events.try_recv() {
            if let Some(job) = event_job(&ev) {
                if matches!(
                    ev.name.as_str(),
                    "BLOCK_JOB_COMPLETED" | "BLOCK_JOB_CANCELLED" | "BLOCK_JOB_ERROR"
                ) {
                    errors.push((job.to_string(), job_ended_error(&ev).to_string()));
                }
            }
        }
        let jobs = self
            .qmp()
            .execute("query-block-jobs", json!({}))
            .await
            .map_err(QemuError::qmp("query-block-jobs"))?;
        let mut state = MirrorsState {
            ready: true,
            ..Default::default()
        };
        for m in mirrors {
            let j = jobs
                .as_array()
                .and_then(|a| a.iter().find(|j| j["device"].as_str() == Some(&m.job)));
            match j {
                Some(j) => {
                    let done = j["offset"].as_u64().unwrap_or(0);
                    let len = j["len"].as_u64().unwrap_or(0);
                    state.done += done;
                    state.remaining += len.saturating_sub(done);
                    state.ready &= j["ready"] == true;
                }
                None => {
                    let why = errors
                        .iter()
                        .find(|(job, _)| *job == m.job)
                        .map(|(_, why)| why.clone())
                        .unwrap_or_else(|| "the job ended".to_string());
                    state.ready = false;
                    state.ended.get_or_insert((m.disk.clone(), why));
                }
            }
        }
        Ok(state)
    }

    /// Source, the guest's vCPUs stopped: finishes mirror `m` (step 5–6)
    /// and returns once the destination's image holds every write.
    pub async fn finish_mirror(&self, m: &NbdMirror) -> Result<(), QemuError> {
        let mut events = self.qmp().subscribe();
        self.qmp()
            .execute("block-job-cancel", json!({"device": m.job}))
            .await
            .map_err(QemuError::qmp("block-job-cancel"))?;
        let end = wait_job_end(self, &m.job, &mut events).await;
        self.delete_node(&m.node).await;
        match end? {
            ev if ev.name == "BLOCK_JOB_COMPLETED" && ev.data.get("error").is_none() => Ok(()),
            ev => Err(job_ended_error(&ev)),
        }
    }

    /// Source: stops mirror `m` where it is (the guest stays on its own
    /// image) and removes its nbd node. Failures are logged.
    pub async fn abort_mirror(&self, m: &NbdMirror) {
        let mut events = self.qmp().subscribe();
        self.cancel_job(&m.job, &mut events).await;
        self.delete_node(&m.node).await;
    }
}

fn export_id(disk: &str) -> String {
    format!("nbd-{disk}")
}

/// Waits for the end event of `job`; if the job is gone without one seen
/// (it ended between two looks) the events already received are searched.
async fn wait_job_end(
    vm: &Vm,
    job: &str,
    events: &mut broadcast::Receiver<QmpEvent>,
) -> Result<QmpEvent, QemuError> {
    let deadline = tokio::time::Instant::now() + FINISH_WAIT;
    let mut tick = tokio::time::interval(TICK);
    let is_end = |ev: &QmpEvent| {
        event_job(ev) == Some(job)
            && matches!(
                ev.name.as_str(),
                "BLOCK_JOB_COMPLETED" | "BLOCK_JOB_CANCELLED"
            )
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                return Err(QemuError::Timeout { what: "disk mirror end", after: FINISH_WAIT });
            }
            _ = vm.wait_exit() => return Err(QemuError::Exited),
            ev = events.recv() => match ev {
                Ok(ev) if is_end(&ev) => return Ok(ev),
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return Err(QemuError::Exited),
            },
            _ = tick.tick() => {
                if vm.job_info(job).await.is_none() {
                    while let Ok(ev) = events.try_recv() {
                        if is_end(&ev) {
                            return Ok(ev);
                        }
                    }
                    return Err(QemuError::Migration {
                        direction: "of a disk",
                        status: "gone".into(),
                        desc: format!("block job {job} ended unseen"),
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nbd_addresses_split() {
        assert_eq!(split_address("10.0.0.2:10809"), Some(("10.0.0.2", 10809)));
        assert_eq!(split_address("10.0.0.2"), None);
        assert_eq!(split_address(":1"), None);
        assert_eq!(split_address("h:x"), None);
    }
}
