//! Storage migration of a running VM on this host (the `mirror_disks`
//! job): every disk not yet on the target datastore is mirrored to a new
//! image there while the guest runs, then the VM switches to it.
//!
//! # Steps, per disk
//! 1. refuse a target file that exists, and a target datastore without
//!    room for the disk's virtual size;
//! 2. `qemu-img create -f qcow2` the new image, same virtual size;
//! 3. `Vm::mirror_disk` (blockdev-mirror, wait for ready, complete: see
//!    `vdc_qemu::mirror`);
//! 4. the VM's configuration (slot, runtime copy and `vm.json`) names the
//!    new image; only then is the old image removed.
//!
//! A disk that is a chain of snapshot overlays moves whole: its frozen
//! images are copied, then only its active layer is mirrored
//! (`storage_chain`); the tree stays in the VM's home directory and names
//! the same files, now next to the disk's new place.
//!
//! A failure or cancel before a disk's switch removes its new image; the
//! VM keeps running on the old one. Disks switched before stay switched
//! (and are recorded so): the server learns which from the job's result
//! configuration (`vm.json` is rewritten after each switch).

use std::path::PathBuf;

use tokio_util::sync::CancellationToken;
use vdc_disk::qemu_img;
use vdc_qemu::MirrorError;
use vdc_types::transfer::{relocate_disks, MirrorDisksRequest};
use vdc_types::{ApiError, ErrorCode, VmConfig, VmPowerState};

use crate::agent::{datastore_io, Agent};
use crate::error::{disk_error, host_error};
use crate::provision::check_config;

impl Agent {
    /// The `mirror_disks` job: `progress(percent, stage)`.
    pub(crate) async fn mirror_disks(
        &self,
        req: MirrorDisksRequest,
        cancel: &CancellationToken,
        progress: impl Fn(u8, &str) + Sync,
    ) -> Result<VmConfig, ApiError> {
        let id = req.config.id.clone();
        check_config(&id, &req.config)?;
        let slot = self.slot(&id)?;
        let _op = tokio::select! {
            op = slot.op.lock() => op,
            _ = cancel.cancelled() => return Err(cancelled()),
        };
        let (slot, vm) = self.running(&id)?;
        if !matches!(slot.state(), VmPowerState::Running | VmPowerState::Paused) {
            return Err(ApiError::invalid_state(format!(
                "VM '{}' is {}; only a running or paused VM's disks are mirrored",
                req.config.name,
                slot.state()
            )));
        }
        let target_ds = self.datastore(&req.datastore)?.clone();
        let moved = relocate_disks(&slot.inner().config, &req.datastore);
        let count = moved.disks.len().max(1);
        for (i, new_disk) in moved.disks.iter().enumerate() {
            let current = slot.inner().config.clone();
            let Some(old_disk) = current.disks.get(i).cloned() else {
                break;
            };
            if old_disk.datastore == new_disk.datastore {
                continue;
            }
            let old_path = self.resolve(&old_disk.datastore, &old_disk.path)?;
            let new_path = self.resolve(&new_disk.datastore, &new_disk.path)?;
            // A chain of snapshot overlays moves whole (`storage_chain`).
            let home = self.layout(&current)?.vm_dir.path().to_path_buf();
            let chain = crate::storage_chain::plan(
                &crate::snapshot::read_tree(&home).await?,
                &old_disk.name,
            );
            let (np, dir) = (new_path.clone(), new_path.parent().map(PathBuf::from));
            let free = target_ds
                .capacity()
                .map_err(|e| disk_error("cannot read the datastore's free space", e))?
                .free_bytes;
            let exists =
                datastore_io("cannot read the target datastore", move || np.exists()).await?;
            if exists {
                return Err(ApiError::new(
                    ErrorCode::AlreadyExists,
                    format!(
                        "'{}' already exists on datastore '{}'; remove it or choose another datastore",
                        new_disk.path, new_disk.datastore
                    ),
                ));
            }
            if old_disk.size_bytes > free {
                return Err(ApiError::new(
                    ErrorCode::InsufficientCapacity,
                    format!(
                        "datastore '{}' has {free} bytes free; disk '{}' may grow to {} bytes",
                        new_disk.datastore, old_disk.name, old_disk.size_bytes
                    ),
                ));
            }
            let made_dir = match dir {
                Some(d) if !d.exists() => {
                    std::fs::create_dir_all(&d)
                        .map_err(|e| host_error(format!("cannot create {}", d.display()), &e))?;
                    Some(d)
                }
                _ => None,
            };
            let undo = |why: ApiError| {
                remove_logged(&new_path);
                if let Some(d) = &made_dir {
                    if let Err(e) = std::fs::remove_dir(d) {
                        tracing::warn!(path = %d.display(), error = %e, "cannot remove a directory made for a mirror");
                    }
                }
                why
            };
            let virtual_size = qemu_img::info(&old_path, vdc_types::api::ImageFormat::Qcow2)
                .await
                .map_err(|e| disk_error(format!("cannot read disk '{}'", old_disk.name), e))?
                .virtual_size;
            let stage = format!(
                "mirroring disk '{}' to datastore '{}'",
                old_disk.name, new_disk.datastore
            );
            progress((i * 100 / count) as u8, &stage);
            let tick = |p: vdc_qemu::MirrorProgress| {
                let part = (p.done.min(p.total) * 95).checked_div(p.total).unwrap_or(0);
                progress(((i as u64 * 100 + part) / count as u64) as u8, &stage);
            };
            let dirs = (
                old_path.parent().unwrap_or(&home).to_path_buf(),
                new_path.parent().unwrap_or(&home).to_path_buf(),
            );
            if let Some(plan) = &chain {
                let mirrored = crate::storage_chain::mirror_chain(
                    &vm,
                    &old_disk.name,
                    (&dirs.0, &dirs.1),
                    plan,
                    virtual_size,
                    target_ds.cache,
                    tick,
                    cancel.cancelled(),
                )
                .await;
                match mirrored {
                    Ok(()) => {}
                    Err(None) => return Err(undo(cancelled())),
                    Err(Some(e)) => return Err(undo(e)),
                }
            } else {
                qemu_img::create_qcow2(&new_path, virtual_size)
                    .await
                    .map_err(|e| {
                        undo(disk_error(
                            format!("cannot create the new image of disk '{}'", old_disk.name),
                            e,
                        ))
                    })?;
                let mirrored = vm
                    .mirror_disk(
                        &old_disk.name,
                        &new_path,
                        target_ds.cache,
                        tick,
                        cancel.cancelled(),
                    )
                    .await;
                match mirrored {
                    Ok(()) => {}
                    Err(MirrorError::Cancelled) => return Err(undo(cancelled())),
                    Err(e) => return Err(undo(host_error("storage migration failed", &e))),
                }
            }
            // Switched: the new image is the disk from now on.
            let mut now = current.clone();
            now.disks[i] = new_disk.clone();
            slot.inner().config = now.clone();
            if let Err(e) = slot.persist_config() {
                tracing::warn!(vm = %now.name, error = %e, "cannot write the runtime copy of the configuration");
            }
            let layout = self.layout(&now)?;
            let (vm_dir, to_save) = (layout.vm_dir.clone(), now.clone());
            let saved = datastore_io("cannot write vm.json", move || {
                vm_dir.write_config(&to_save)
            })
            .await
            .and_then(|r| r.map_err(|e| disk_error("cannot write vm.json", e)));
            if let Err(e) = saved {
                tracing::warn!(vm = %now.name, error = %e.message, "the VM runs on its new image, but vm.json still names the old one");
            }
            remove_logged(&old_path);
            if let Some(plan) = &chain {
                crate::storage_chain::remove_old(&dirs.0, plan);
            }
            tracing::info!(vm = %now.name, disk = %old_disk.name, datastore = %new_disk.datastore, "disk mirrored and switched");
        }
        slot.notify();
        let config = slot.inner().config.clone();
        Ok(config)
    }
}

fn cancelled() -> ApiError {
    ApiError::new(
        ErrorCode::Cancelled,
        "the storage migration was cancelled; the VM stays on its old datastore",
    )
}

fn remove_logged(path: &std::path::Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove an image");
        }
    }
}
