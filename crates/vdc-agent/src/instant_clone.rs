//! Instant clone, the source's side: fork a running VM into a new one that
//! is resumed rather than booted.
//!
//! 1. stop the source's vCPUs;
//! 2. write the source's tree with a new snapshot (the clone's base,
//!    `clones` naming the clone) and new active images, and the clone's
//!    tree naming its own overlays as active;
//! 3. per disk: `blockdev-snapshot` of the source onto its new overlay (the
//!    old image is frozen from here on), and the clone's overlay created
//!    on the same frozen image (backing `../SRC-DIR/FILE`, relative);
//! 4. the source's memory saved as the clone's `suspend.state`;
//! 5. `cont`: the source runs on, unchanged but for its new overlay.
//!
//! The server then starts the clone (a resume from `suspend.state`, with
//! the clone's own NIC and MAC) and gives it its identity through the
//! guest agent ([`Agent::set_guest_identity`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use vdc_types::snapshot::{
    Consistency, GuestIdentityRequest, Snapshot, SnapshotRefusal, SnapshotTree,
};
use vdc_types::{now_ms, ApiError, ErrorCode, VmConfig};

use crate::agent::Agent;
use crate::error::host_error;
use crate::snapshot::{read_tree, write_tree};

/// How long the guest agent of a just-resumed clone may take to answer.
const IDENTITY_WAIT: std::time::Duration = std::time::Duration::from_secs(20);
/// Longest wait for one attempt (connect and sync): a resumed guest's
/// agent may drop the first sync, and the next attempt answers at once.
const IDENTITY_ATTEMPT: std::time::Duration = std::time::Duration::from_millis(800);
/// Pause between attempts.
const IDENTITY_RETRY: std::time::Duration = std::time::Duration::from_millis(50);

fn remove_logged(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove an instant clone file");
        }
    }
}

impl Agent {
    /// Forks running VM `config` (its QEMU `vm`) into `clone`, recording
    /// base snapshot `name` in the source's tree. Without `memory` the
    /// guest is quiesced instead of paused and no state is saved (the
    /// clone boots); with `full` the clone's overlay takes the whole chain
    /// in and reads no base.
    pub(crate) async fn instant_clone(
        &self,
        config: &VmConfig,
        vm: &vdc_qemu::Vm,
        name: &str,
        clone: &VmConfig,
        memory: bool,
        full: bool,
    ) -> Result<SnapshotTree, ApiError> {
        if config.disks.len() != clone.disks.len() {
            return Err(ApiError::invalid("the clone has another number of disks"));
        }
        let src_layout = self.layout(config)?;
        let dir = src_layout.vm_dir.path().to_path_buf();
        let tree = read_tree(&dir).await?;
        let req = vdc_types::snapshot::CreateSnapshotRequest {
            name: name.to_string(),
            description: format!("base of instant clone {}", clone.name),
            memory: false,
        };
        tree.check_create(&req, true).map_err(|e| match e {
            SnapshotRefusal::Taken(_) => ApiError::invalid_state(e.to_string()),
            _ => ApiError::invalid(e.to_string()),
        })?;
        let clone_dir = self.resolve(&clone.datastore, &clone.dir)?;
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let mut src_active = BTreeMap::new();
        let mut images = BTreeMap::new();
        let mut clone_active = BTreeMap::new();
        let mut plan: Vec<(String, PathBuf, PathBuf, PathBuf, u64, bool)> = Vec::new();
        for (d, top) in config.disks.iter().zip(&src_layout.disks) {
            let image = vdc_qemu::snapshot::file_name(top);
            let src_new = format!("{}.{id}.qcow2", d.name);
            let clone_new = format!("{}.{id}.qcow2", d.name);
            images.insert(d.name.clone(), image.clone());
            src_active.insert(d.name.clone(), src_new.clone());
            clone_active.insert(d.name.clone(), clone_new.clone());
            let direct = self
                .datastore(&d.datastore)
                .map(|ds| ds.cache == vdc_types::DiskCacheMode::None)
                .unwrap_or(false);
            plan.push((
                d.name.clone(),
                top.clone(),
                top.with_file_name(&src_new),
                clone_dir.join(&clone_new),
                d.size_bytes,
                direct,
            ));
        }
        let qga = vm.paths().guest_agent_socket();
        let quiesce = if memory {
            None
        } else if config.guest_agent {
            Some(vdc_qemu::qga::freeze(&qga, vdc_qemu::qga::DEFAULT_TIMEOUT).await)
        } else {
            Some(vdc_qemu::qga::Quiesce::CrashConsistent {
                reason: "the VM has no guest agent channel".into(),
            })
        };
        let (consistency, note) = match &quiesce {
            None => (
                Consistency::CrashConsistent,
                "base of an instant clone: the memory went with it".to_string(),
            ),
            Some(vdc_qemu::qga::Quiesce::Quiesced { .. }) => (
                Consistency::Quiesced,
                format!("base of clone {}", clone.name),
            ),
            Some(vdc_qemu::qga::Quiesce::CrashConsistent { reason }) => {
                (Consistency::CrashConsistent, reason.clone())
            }
        };
        let snap = Snapshot {
            name: name.to_string(),
            description: req.description.clone(),
            created_ms: now_ms(),
            consistency,
            quiesce_note: Some(note),
            memory: false,
            running: true,
            parent: None,
            images,
            state_file: None,
            clones: if full {
                Vec::new()
            } else {
                vec![clone.name.clone()]
            },
        };
        let next = tree.created(snap, src_active);
        let clone_tree = SnapshotTree {
            active: clone_active,
            ..SnapshotTree::new()
        };
        let state = clone_dir.join(vdc_disk::vmdir::SUSPEND_STATE);
        let src_dir_name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();

        if memory {
            vm.pause()
                .await
                .map_err(|e| host_error("cannot pause the source", &e))?;
        }
        let result = async {
            write_tree(&clone_dir, &clone_tree).await?;
            write_tree(&dir, &next).await?;
            for (disk, top, src_new, clone_new, size, direct) in &plan {
                let node = format!("{disk}-{}", &id[..8]);
                vdc_qemu::snapshot::snapshot_live(
                    vm.qmp(),
                    disk,
                    top,
                    src_new,
                    &node,
                    *size,
                    *direct,
                )
                .await
                .map_err(|e| host_error("cannot freeze the source's disk", &e))?;
                // The clone's overlay on the same frozen image, named from
                // the clone's directory.
                let backing = format!("../{src_dir_name}/{}", vdc_qemu::snapshot::file_name(top));
                vdc_qemu::snapshot::create_overlay_named(clone_new, &backing, *size)
                    .await
                    .map_err(|e| host_error("cannot create the clone's overlay", &e))?;
            }
            if memory {
                vdc_qemu::snapshot::save_memory(vm.qmp(), &state)
                    .await
                    .map_err(|e| host_error("cannot save the source's memory", &e))?;
            }
            Ok(())
        }
        .await;
        if memory {
            if let Err(e) = vm.resume().await {
                tracing::warn!(vm = %config.name, error = %e, "cannot resume the source after its instant clone");
            }
        } else if matches!(quiesce, Some(vdc_qemu::qga::Quiesce::Quiesced { .. })) {
            if let Err(e) = vdc_qemu::qga::thaw(&qga, vdc_qemu::qga::DEFAULT_TIMEOUT).await {
                tracing::warn!(vm = %config.name, error = %e, "cannot thaw the source (it thaws itself after 10 s)");
            }
        }
        // A full clone reads no base: the chain is copied into its image
        // (qemu-img rebase onto nothing, safe mode), the source running on.
        let result = match result {
            Ok(()) if full => {
                let mut copied = Ok(());
                for (_, _, _, clone_new, _, _) in &plan {
                    if let Err(e) = vdc_qemu::snapshot::rebase_at_rest(clone_new, None).await {
                        copied = Err(host_error("cannot copy the disk into the clone", &e));
                        break;
                    }
                }
                copied
            }
            r => r,
        };
        if let Err(e) = result {
            for (_, _, _, clone_new, _, _) in &plan {
                remove_logged(clone_new);
            }
            remove_logged(&state);
            remove_logged(&vdc_disk::snapshots::tree_path(&clone_dir));
            // The source may run on its new overlays already: keep them
            // recorded as active, without the snapshot.
            let mut back = tree.clone();
            back.active = next.active.clone();
            if let Ok(names) = self.active_files(vm, config).await {
                back.active = names;
            }
            if let Err(we) = write_tree(&dir, &back).await {
                tracing::warn!(vm = %config.name, error = %we.message, "cannot restore the tree after a failed instant clone");
            }
            return Err(e);
        }
        Ok(next)
    }

    /// The image file each disk of `config` writes now in QEMU `vm`.
    async fn active_files(
        &self,
        vm: &vdc_qemu::Vm,
        config: &VmConfig,
    ) -> Result<BTreeMap<String, String>, vdc_qemu::snapshot::SnapshotError> {
        let mut out = BTreeMap::new();
        for d in &config.disks {
            let node = vdc_qemu::snapshot::active_node(vm.qmp(), &d.name).await?;
            if let Some(file) = vdc_qemu::snapshot::file_of_node(vm.qmp(), &node).await? {
                out.insert(d.name.clone(), vdc_qemu::snapshot::file_name(&file));
            }
        }
        Ok(out)
    }

    /// Tells running VM `id`'s guest its identity through the guest agent,
    /// waiting up to 20 s for the agent to answer (a just-resumed clone).
    pub(crate) async fn set_guest_identity(
        &self,
        id: &str,
        req: &GuestIdentityRequest,
    ) -> Result<(), ApiError> {
        let (slot, vm) = self.running(id)?;
        if !slot.inner().config.guest_agent {
            return Err(ApiError::invalid_state(format!(
                "VM '{}' has no guest agent channel",
                slot.inner().config.name
            )));
        }
        let socket = vm.paths().guest_agent_socket();
        let identity = vdc_qemu::qga::GuestIdentity {
            hostname: Some(req.hostname.clone()),
            address: req.address.clone(),
            gateway: req.gateway.clone(),
            mac: req.mac.clone(),
        };
        let deadline = tokio::time::Instant::now() + IDENTITY_WAIT;
        loop {
            let attempt = async {
                let mut agent =
                    vdc_qemu::qga::GuestAgent::connect(&socket, IDENTITY_ATTEMPT).await?;
                agent.set_identity(&identity).await
            }
            .await;
            match attempt {
                Ok(()) => return Ok(()),
                Err(vdc_qemu::qga::QgaError::Refused { desc, .. }) => {
                    return Err(ApiError::new(
                        ErrorCode::HostError,
                        format!("the guest refused its new identity: {desc}"),
                    ))
                }
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(host_error("the guest agent did not take the identity", &e))
                }
                Err(_) => tokio::time::sleep(IDENTITY_RETRY).await,
            }
        }
    }
}
