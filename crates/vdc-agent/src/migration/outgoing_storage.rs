//! The source of a live migration with storage (`migrate_out` with `nbd`):
//! every disk is mirrored into the destination's NBD exports before the
//! memory moves, and finished after it, while the guest's vCPUs are
//! stopped; then the job waits for the server.
//!
//! ```text
//!  per disk: nbd client node → blockdev-mirror sync=full write-blocking
//!  wait until every mirror is ready (progress: bytes mirrored/remaining)
//!  memory stream (post-copy off: the source must keep every disk block
//!    until the mirrors finish) … completed: vCPUs stopped (postmigrate)
//!  block-job-cancel (no force) per mirror → BLOCK_JOB_COMPLETED: the
//!    destination's images hold every write; nbd nodes deleted
//!  disks_synced: wait for the server
//!    ├─ proceed (the destination runs the guest): this QEMU is stopped,
//!    │   its supervisor releases the source directory's lease
//!    └─ cancel (the destination failed before running it): cont, the
//!        guest runs on here on its own images
//! ```
//!
//! Any failure or cancel before `disks_synced` aborts every mirror
//! (`block-job-cancel force`, nbd nodes deleted) and the guest runs on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vdc_qemu::NbdMirror;
use vdc_types::migration::{DiskMirrorProgress, MigrationJobInfo};
use vdc_types::{ApiError, ErrorCode, VmConfig};

use crate::agent::Agent;
use crate::error::host_error;
use crate::jobs::{job_cancelled, JobCell};
use crate::slot::VmSlot;

/// How often the mirrors' figures are read.
const TICK: Duration = Duration::from_millis(250);

impl Agent {
    /// Mirrors every disk of `config` into the exports at `nbd` (the
    /// background copy within the migration's bandwidth) and waits until
    /// all are in sync. On failure or cancel every mirror started is
    /// aborted.
    pub(super) async fn mirror_out(
        &self,
        cell: &JobCell,
        vm: &vdc_qemu::Vm,
        config: &VmConfig,
        nbd: &str,
        bandwidth_mib_s: u64,
        info: &mut MigrationJobInfo,
    ) -> Result<Vec<NbdMirror>, ApiError> {
        let (host, port) = vdc_qemu::nbd::split_address(nbd)
            .ok_or_else(|| ApiError::invalid(format!("'{nbd}' is not an NBD address HOST:PORT")))?;
        let mut events = vm.qmp().subscribe();
        let mut mirrors = Vec::new();
        for disk in &config.disks {
            let speed = bandwidth_mib_s.saturating_mul(1024 * 1024);
            match vm.mirror_to_nbd(&disk.name, host, port, speed).await {
                Ok(m) => mirrors.push(m),
                Err(e) => {
                    abort_mirrors(vm, &mirrors).await;
                    return Err(host_error(
                        format!("cannot mirror disk '{}' to {nbd}", disk.name),
                        &e,
                    ));
                }
            }
        }
        tracing::info!(vm = %config.name, %nbd, disks = mirrors.len(), "disk mirrors started");
        let mut tick = tokio::time::interval(TICK);
        let outcome = loop {
            tokio::select! {
                _ = cell.cancel.cancelled() => break Err(job_cancelled()),
                _ = vm.wait_exit() => break Err(ApiError::new(
                    ErrorCode::HostError,
                    format!("QEMU of VM '{}' went away while its disks were mirrored", config.name),
                )),
                _ = tick.tick() => {}
            }
            let state = match vm.mirrors_state(&mirrors, &mut events).await {
                Ok(s) => s,
                Err(e) => break Err(host_error("cannot read the disk mirrors", &e)),
            };
            if let Some((disk, why)) = state.ended {
                break Err(ApiError::new(
                    ErrorCode::HostError,
                    format!("the mirror of disk '{disk}' to the destination failed: {why}"),
                ));
            }
            info.disks = Some(DiskMirrorProgress {
                bytes_mirrored: state.done,
                bytes_remaining: state.remaining,
                ready: state.ready,
            });
            cell.set_migration(info);
            let part = (state.done * 40)
                .checked_div(state.done + state.remaining)
                .unwrap_or(0);
            cell.progress(5 + part as u8, "mirroring the disks");
            if state.ready {
                break Ok(());
            }
        };
        match outcome {
            Ok(()) => Ok(mirrors),
            Err(e) => {
                abort_mirrors(vm, &mirrors).await;
                Err(e)
            }
        }
    }

    /// After the stream completed: finishes every mirror, then waits for
    /// the server (see the module doc). `was_running`: the guest ran
    /// before the migration (it runs on here after a cancel).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn hand_storage_over(
        &self,
        cell: &JobCell,
        slot: &Arc<VmSlot>,
        vm: &vdc_qemu::Vm,
        mirrors: &[NbdMirror],
        was_running: bool,
        info: &mut MigrationJobInfo,
    ) -> Result<(), ApiError> {
        let vm_id = slot.id.clone();
        let began = Instant::now();
        for (i, m) in mirrors.iter().enumerate() {
            if let Err(e) = vm.finish_mirror(m).await {
                abort_mirrors(vm, &mirrors[i + 1..]).await;
                self.keep_running_here(vm, was_running, &vm_id).await;
                return Err(host_error(
                    format!("cannot finish the mirror of disk '{}'", m.disk),
                    &e,
                ));
            }
        }
        let finish_ms = began.elapsed().as_millis() as u64;
        info.downtime_ms = Some(info.downtime_ms.unwrap_or(0) + finish_ms);
        if let Some(d) = &mut info.disks {
            d.bytes_mirrored += d.bytes_remaining;
            d.bytes_remaining = 0;
        }
        info.disks_synced = true;
        info.policy_steps
            .push(format!("disks synced {finish_ms} ms after the stream"));
        cell.set_migration(info);
        cell.progress(
            97,
            "disks synced; waiting for the destination to run the guest",
        );
        tracing::info!(vm = %vm_id, finish_ms, "disk mirrors finished; the destination holds every write");
        tokio::select! {
            _ = cell.proceed.cancelled() => {}
            _ = cell.cancel.cancelled() => {
                self.keep_running_here(vm, was_running, &vm_id).await;
                return Err(job_cancelled());
            }
        }
        // The destination runs the guest: this copy stops for good.
        slot.inner().exit_requested = true;
        if let Err(e) = vm.power_off().await {
            tracing::error!(vm = %vm_id, error = %e, "cannot stop the old QEMU after a migration with storage");
        }
        self.wait_supervisor(slot).await;
        Ok(())
    }
}

/// Aborts mirrors (logged, never fails).
pub(super) async fn abort_mirrors(vm: &vdc_qemu::Vm, mirrors: &[NbdMirror]) {
    for m in mirrors {
        vm.abort_mirror(m).await;
    }
}
