//! The destination of a live migration with storage (`migrate_in` with
//! `copy_storage`): the VM's directory and empty images on a datastore the
//! source does not share, served over NBD to the source's mirrors; the
//! guest runs here only when the server says the source finished them.
//!
//! ```text
//!  make <datastore>/<dir>/ (refused if it exists), vm.json, one empty
//!    qcow2 per disk of the same virtual size (refused without room)
//!  QEMU -incoming defer -S on them; nbd-server-start + block-export-add
//!    (writable, each disk under its name) on the migration address
//!  … the source mirrors every disk, then sends the memory …
//!  stream completed: the guest stays paused (-S); a supervisor takes the
//!    lease of the new directory (nobody else has one there)
//!  wait for `proceed` (the source's mirrors finished: every write is here)
//!  block-export-del, nbd-server-stop, cont (unless the guest was paused on
//!    the source), announce-self
//! ```
//!
//! Why paused until told: the source finishes its mirrors only after its
//! vCPUs stopped; a guest running here before that could read blocks the
//! mirror has not written yet. Correctness first: the wait costs one
//! round trip through the server inside the downtime. It also means the
//! guest never ran here until `proceed`, so any failure before it leaves
//! the source free to run the guest on.
//!
//! Abandoned (failure, cancel, no `proceed` within [`PROCEED_LIMIT`]): QEMU
//! killed, its supervisor waited for, the directory made here removed with
//! everything in it.

use std::sync::Arc;
use std::time::Duration;

use vdc_disk::qemu_img;
use vdc_types::job::JobResult;
use vdc_types::{ApiError, ErrorCode, VmConfig};

use crate::agent::{datastore_io, Agent, Layout};
use crate::error::{disk_error, host_error};
use crate::jobs::{job_cancelled, JobCell};
use crate::slot::VmSlot;
use crate::state::Input;
use crate::supervisor;

/// Marks the runtime directory of a VM whose storage is being received
/// here: an agent restarted before the guest ran removes what the
/// migration made (`recover_incoming_storage`). `{"version":1}`.
pub(crate) const INCOMING_STORAGE_MARK: &str = "incoming-storage.json";

/// Longest wait for the server's `proceed` once the stream completed.
const PROCEED_LIMIT: Duration = Duration::from_secs(60);
/// Longest wait for an abandoned VM's supervisor to release the lease.
const SUPERVISOR_EXIT: Duration = Duration::from_secs(15);

impl Agent {
    /// Makes the VM's directory, `vm.json` and an empty image per disk on
    /// the datastore `config` names. Refuses an existing directory (409
    /// `already_exists`), a disk outside the directory's datastore (400)
    /// and a datastore without room for the disks' virtual sizes (409
    /// `insufficient_capacity`). On failure nothing made stays.
    pub(super) async fn prepare_storage(
        &self,
        config: &VmConfig,
        layout: &Layout,
    ) -> Result<(), ApiError> {
        if let Some(d) = config
            .disks
            .iter()
            .find(|d| d.datastore != config.datastore)
        {
            return Err(ApiError::invalid(format!(
                "disk '{}' of VM '{}' is on datastore '{}', not with its directory on '{}'",
                d.name, config.name, d.datastore, config.datastore
            )));
        }
        let ds = self.datastore(&config.datastore)?.clone();
        let need: u64 = config.disks.iter().map(|d| d.size_bytes).sum();
        let free = datastore_io("cannot read the datastore's free space", move || {
            ds.capacity()
        })
        .await?
        .map_err(|e| disk_error("cannot read the datastore's free space", e))?
        .free_bytes;
        if need > free {
            return Err(ApiError::new(
                ErrorCode::InsufficientCapacity,
                format!(
                    "datastore '{}' on host '{}' has {free} bytes free; the disks of VM '{}' may grow to {need} bytes",
                    config.datastore, self.config.name, config.name
                ),
            ));
        }
        let (dir, to_save) = (layout.vm_dir.clone(), config.clone());
        let made = datastore_io("cannot create the VM directory", move || {
            dir.create()?;
            dir.write_config(&to_save)
        })
        .await?;
        if let Err(e) = made {
            if layout.vm_dir.exists()
                && matches!(&e, vdc_disk::DiskError::Io { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists)
            {
                return Err(ApiError::new(
                    ErrorCode::AlreadyExists,
                    format!(
                        "datastore '{}' on host '{}' already holds a directory '{}'; remove it or choose another datastore",
                        config.datastore, self.config.name, config.dir
                    ),
                ));
            }
            self.remove_storage(config, layout).await;
            return Err(disk_error("cannot create the VM directory", e));
        }
        for (disk, path) in config.disks.iter().zip(&layout.disks) {
            if let Err(e) = qemu_img::create_qcow2(path, disk.size_bytes).await {
                self.remove_storage(config, layout).await;
                return Err(disk_error(
                    format!("cannot create the image of disk '{}'", disk.name),
                    e,
                ));
            }
        }
        Ok(())
    }

    /// Removes the directory [`Agent::prepare_storage`] made, with
    /// everything in it (logged, never fails).
    pub(super) async fn remove_storage(&self, config: &VmConfig, layout: &Layout) {
        let dir = layout.vm_dir.path().to_path_buf();
        let removed = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&dir)).await;
        match removed {
            Ok(Ok(())) => {
                tracing::info!(vm = %config.name, datastore = %config.datastore, "the incoming VM's directory and images removed")
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
            Ok(Err(e)) => {
                tracing::warn!(vm = %config.name, error = %e, "cannot remove the directory made for an incoming VM")
            }
            Err(e) => {
                tracing::warn!(vm = %config.name, error = %e, "cannot remove the directory made for an incoming VM")
            }
        }
    }

    /// Serves the VM's disks over NBD on this host's migration address;
    /// returns `HOST:PORT`.
    pub(super) async fn export_disks(
        &self,
        vm: &vdc_qemu::Vm,
        config: &VmConfig,
    ) -> Result<String, ApiError> {
        let addr = self.config.migration_address.clone();
        let port = super::incoming::free_port(&addr)?;
        let disks: Vec<String> = config.disks.iter().map(|d| d.name.clone()).collect();
        vm.nbd_export(&addr, port, &disks)
            .await
            .map_err(|e| host_error("cannot export the disks over NBD", &e))?;
        Ok(format!("{addr}:{port}"))
    }

    /// After the stream completed: the lease of the new directory, the
    /// wait for `proceed`, then the guest runs (see the module doc).
    pub(super) async fn run_after_storage(
        self: &Arc<Self>,
        cell: &JobCell,
        slot: &Arc<VmSlot>,
        vm: &Arc<vdc_qemu::Vm>,
        layout: &Layout,
        config: &VmConfig,
        keep_paused: bool,
    ) -> Result<JobResult, ApiError> {
        cell.progress(85, "taking the lease; waiting for the source's disks");
        self.take_lease(slot, vm, layout, config).await?;
        let exited = vm.wait_exit();
        tokio::select! {
            _ = cell.proceed.cancelled() => {}
            _ = cell.cancel.cancelled() => return Err(job_cancelled()),
            _ = exited => {
                return Err(ApiError::new(
                    ErrorCode::HostError,
                    format!("QEMU of the incoming VM '{}' exited on host '{}'", config.name, self.config.name),
                ));
            }
            _ = tokio::time::sleep(PROCEED_LIMIT) => {
                return Err(ApiError::new(
                    ErrorCode::Timeout,
                    format!("the source did not finish the disks of VM '{}' within {PROCEED_LIMIT:?}", config.name),
                ));
            }
        }
        let disks: Vec<String> = config.disks.iter().map(|d| d.name.clone()).collect();
        vm.nbd_unexport(&disks).await;
        if !keep_paused {
            vm.resume()
                .await
                .map_err(|e| host_error("cannot run the migrated guest", &e))?;
        }
        let mark = self.run_dir(&config.id).join(INCOMING_STORAGE_MARK);
        if let Err(e) = std::fs::remove_file(&mark) {
            tracing::warn!(vm = %config.name, error = %e, "cannot remove the incoming mark; a restarted agent keeps the running guest anyway");
        }
        super::incoming::announce(vm, &config.name).await;
        supervisor::start(self.clone(), slot.clone(), vm.clone(), layout);
        let mut rt = slot.apply(Input::Launched);
        if keep_paused {
            rt = slot.apply(Input::Paused);
        }
        tracing::info!(vm = %config.name, datastore = %config.datastore, "migrated in with its storage");
        Ok(JobResult::Vm(rt))
    }

    /// Waits (bounded) for the supervisor of an abandoned incoming VM to
    /// release the lease and exit, once its QEMU is gone.
    pub(super) async fn wait_supervisor_gone(&self, slot: &VmSlot) {
        let sup = slot.inner().vm_supervisor.take();
        if let Some(p) = sup {
            if !p.wait_for(SUPERVISOR_EXIT).await {
                tracing::warn!(vm = %slot.id, "the supervisor of an abandoned incoming VM did not exit; killing it");
                p.signal(libc::SIGKILL);
            }
        }
    }
}

impl Agent {
    /// Writes the incoming mark into the runtime directory of `config`.
    pub(super) fn mark_incoming_storage(&self, config: &VmConfig) -> Result<(), ApiError> {
        let path = self.run_dir(&config.id).join(INCOMING_STORAGE_MARK);
        crate::slot::write_atomic(&path, br#"{"version":1}"#)
            .map_err(|e| host_error("cannot mark the incoming VM", &e))
    }

    /// Agent start, a runtime directory with the incoming mark: a guest
    /// that never ran here (QEMU gone, or not running) is removed with
    /// everything the migration made (QEMU, supervisor, taps, directory,
    /// runtime directory) and `true` returned; a running guest is kept
    /// (`false`: re-attach it as usual).
    pub(crate) async fn recover_incoming_storage(
        &self,
        config: &VmConfig,
        run_dir: &std::path::Path,
    ) -> bool {
        let Ok(layout) = self.layout(config) else {
            return false;
        };
        let vm = vdc_qemu::Vm::attach(&layout.paths).await.ok().flatten();
        if let Some(vm) = &vm {
            if matches!(vm.run_state().await, Ok(vdc_qemu::RunState::Running)) {
                if let Err(e) = std::fs::remove_file(run_dir.join(INCOMING_STORAGE_MARK)) {
                    tracing::warn!(vm = %config.name, error = %e, "cannot remove the incoming mark");
                }
                return false;
            }
            vm.kill();
            if !vm.wait_exit_for(Duration::from_secs(10)).await {
                tracing::warn!(vm = %config.name, "the incoming QEMU did not exit after SIGKILL");
            }
        }
        if let Some(pid) = vdc_supervisor::client::find(run_dir) {
            let p = vdc_qemu::process::Process::from_pid(pid);
            if !p.wait_for(SUPERVISOR_EXIT).await {
                p.signal(libc::SIGKILL);
            }
        }
        let taps = crate::slot::read_persisted_state(run_dir)
            .map(|p| p.taps)
            .unwrap_or_default();
        supervisor::cleanup_network(&taps).await;
        self.remove_storage(config, &layout).await;
        if let Err(e) = std::fs::remove_dir_all(run_dir) {
            tracing::warn!(vm = %config.name, error = %e, "cannot remove the runtime directory of an abandoned incoming VM");
        }
        tracing::info!(vm = %config.name, "an incoming migration with storage was cut by an agent restart; what it made is removed");
        true
    }
}
