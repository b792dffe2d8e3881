//! Snapshot jobs: take, revert and delete snapshots of a VM on this host,
//! on the VM's running QEMU when it runs (`vdc_qemu::snapshot`), on its
//! files at rest when it does not. The tree lives in the VM's directory
//! (`vdc_disk::snapshots`), and every start, resume or incoming migration
//! opens the active images it names ([`active_disks`], used by
//! `Agent::layout`).
//!
//! Create (running VM):
//! 1. disk-only: freeze the guest's file systems through its guest agent
//!    (`vdc_qemu::qga::freeze`, ~1.5 s at most; no answer = crash-
//!    consistent, recorded as such); with memory: stop the vCPUs;
//! 2. write the new tree (new active images named) *before* QEMU switches:
//!    a crash between the two leaves a tree whose new, empty active image
//!    sits on the image the guest kept writing, which loses nothing;
//! 3. per disk, a new overlay and `blockdev-snapshot` onto it;
//! 4. with memory: the state saved to `snap-<id>.state` at the same
//!    stopped instant, then the vCPUs run again; disk-only: thaw.
//!
//! On failure the old tree is written back, the overlays made so far are
//! left to QEMU (it writes them: they stay the active images, recorded in
//! the tree) and the guest is thawed / resumed.
//!
//! Revert (the server stops the VM first): new active overlays on the
//! snapshot's images; the old active images are removed; with memory the
//! snapshot's state file is linked as `suspend.state`, so the next start
//! resumes the guest exactly as it was.
//!
//! Delete: every image backed by the snapshot's image takes its data in
//! (`block-stream` while the guest runs, `qemu-img rebase` for files at
//! rest), then the image and state file are removed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vdc_types::snapshot::{
    Consistency, CreateSnapshotRequest, Snapshot, SnapshotAction, SnapshotJobRequest,
    SnapshotRefusal, SnapshotTree,
};
use vdc_types::{now_ms, ApiError, DiskCacheMode, ErrorCode, VmConfig, VmPowerState};

use crate::agent::{datastore_io, Agent};
use crate::error::{disk_error, host_error};
use crate::jobs::JobCell;

/// The active image of each disk of `config` whose VM directory is
/// `vm_dir`: the tree's active image where it names one, else the
/// configured file (`disks`, resolved). Reads one small file.
pub(crate) fn active_disks(vm_dir: &Path, config: &VmConfig, disks: Vec<PathBuf>) -> Vec<PathBuf> {
    let tree = match vdc_disk::snapshots::read_tree(vm_dir) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(vm = %config.name, error = %e, "cannot read the snapshot tree; using the configured disks");
            return disks;
        }
    };
    config
        .disks
        .iter()
        .zip(disks)
        .map(|(d, path)| match tree.active.get(&d.name) {
            Some(file) => path.with_file_name(file),
            None => path,
        })
        .collect()
}

fn refusal(e: SnapshotRefusal) -> ApiError {
    match e {
        SnapshotRefusal::Unknown(_) => ApiError::new(ErrorCode::NotFound, e.to_string()),
        SnapshotRefusal::Taken(_) | SnapshotRefusal::ChainFull(_) => {
            ApiError::invalid_state(e.to_string())
        }
        _ => ApiError::invalid(e.to_string()),
    }
}

fn new_file(disk: &str) -> String {
    format!(
        "{disk}.{}.qcow2",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Reads the tree of `dir` off the runtime.
pub(crate) async fn read_tree(dir: &Path) -> Result<SnapshotTree, ApiError> {
    let d = dir.to_path_buf();
    datastore_io("cannot read the snapshot tree", move || {
        vdc_disk::snapshots::read_tree(&d)
    })
    .await?
    .map_err(|e| disk_error("cannot read the snapshot tree", e))
}

pub(crate) async fn write_tree(dir: &Path, tree: &SnapshotTree) -> Result<(), ApiError> {
    let d = dir.to_path_buf();
    let t = tree.clone();
    datastore_io("cannot write the snapshot tree", move || {
        vdc_disk::snapshots::write_tree(&d, &t)
    })
    .await?
    .map_err(|e| disk_error("cannot write the snapshot tree", e))
}

fn remove_logged(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a snapshot file");
        }
    }
}

/// One disk as the snapshot code sees it.
struct Disk {
    name: String,
    /// Its active image now.
    active: PathBuf,
    size_bytes: u64,
    direct: bool,
}

impl Agent {
    /// The snapshot tree of the VM of `config`
    /// (`POST /agent/v1/vms/{id}/snapshots`).
    pub(crate) async fn snapshot_tree(&self, config: &VmConfig) -> Result<SnapshotTree, ApiError> {
        let layout = self.layout(config)?;
        read_tree(layout.vm_dir.path()).await
    }

    fn disks(&self, config: &VmConfig) -> Result<(PathBuf, Vec<Disk>), ApiError> {
        let layout = self.layout(config)?;
        let disks = config
            .disks
            .iter()
            .zip(&layout.disks)
            .map(|(d, p)| Disk {
                name: d.name.clone(),
                active: p.clone(),
                size_bytes: d.size_bytes,
                direct: self
                    .datastore(&d.datastore)
                    .map(|ds| ds.cache == DiskCacheMode::None)
                    .unwrap_or(false),
            })
            .collect();
        Ok((layout.vm_dir.path().to_path_buf(), disks))
    }

    /// Runs a snapshot job.
    pub(crate) async fn snapshot_job(
        self: &Arc<Self>,
        cell: &JobCell,
        request: SnapshotJobRequest,
    ) -> Result<SnapshotTree, ApiError> {
        // A VM this host does not know is at rest here (its files are on
        // a datastore this host reaches): no slot is made for it.
        let slot = self.slot(&request.config.id).ok();
        let _op = match &slot {
            Some(s) => Some(s.op.lock().await),
            None => None,
        };
        let vm = slot
            .as_ref()
            .and_then(|s| s.vm())
            .filter(|v| !v.has_exited());
        let state = slot.as_ref().map_or(VmPowerState::Stopped, |s| s.state());
        if vm.is_some() && !matches!(state, VmPowerState::Running | VmPowerState::Paused) {
            return Err(ApiError::invalid_state(format!(
                "VM '{}' is {state}; snapshots need it running, paused or stopped",
                request.config.name
            )));
        }
        let config = match &slot {
            Some(s) if vm.is_some() => s.inner().config.clone(),
            _ => request.config.clone(),
        };
        match request.action {
            SnapshotAction::Create(req) => {
                cell.progress(5, "taking the snapshot");
                self.create_snapshot(&config, vm.as_deref(), &req).await
            }
            SnapshotAction::Revert { name } => {
                if vm.is_some() {
                    return Err(ApiError::invalid_state(format!(
                        "VM '{}' runs; stop it before a revert",
                        config.name
                    )));
                }
                cell.progress(10, "reverting");
                self.revert_snapshot(&config, &name).await
            }
            SnapshotAction::Delete { name } => {
                cell.progress(5, "merging the snapshot's data");
                self.delete_snapshot(&config, vm.as_deref(), &name).await
            }
            SnapshotAction::InstantClone {
                name,
                clone,
                memory,
                full,
            } => {
                let Some(vm) = vm.as_deref() else {
                    return Err(ApiError::invalid_state(format!(
                        "VM '{}' does not run: an instant clone forks a running VM",
                        config.name
                    )));
                };
                cell.progress(10, "forking the VM");
                self.instant_clone(&config, vm, &name, &clone, memory, full)
                    .await
            }
        }
    }

    async fn create_snapshot(
        &self,
        config: &VmConfig,
        vm: Option<&vdc_qemu::Vm>,
        req: &CreateSnapshotRequest,
    ) -> Result<SnapshotTree, ApiError> {
        let (dir, disks) = self.disks(config)?;
        let tree = read_tree(&dir).await?;
        tree.check_create(req, vm.is_some()).map_err(refusal)?;
        let snap_id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let new_active: BTreeMap<String, String> = disks
            .iter()
            .map(|d| (d.name.clone(), new_file(&d.name)))
            .collect();
        let images: BTreeMap<String, String> = disks
            .iter()
            .map(|d| (d.name.clone(), vdc_qemu::snapshot::file_name(&d.active)))
            .collect();
        let state_file = req.memory.then(|| format!("snap-{snap_id}.state"));
        let mut snap = Snapshot {
            name: req.name.clone(),
            description: req.description.clone(),
            created_ms: now_ms(),
            consistency: Consistency::Quiesced,
            quiesce_note: None,
            memory: req.memory,
            running: vm.is_some(),
            parent: None,
            images,
            state_file: state_file.clone(),
            clones: Vec::new(),
        };

        let Some(vm) = vm else {
            // At rest: new overlays, then the tree.
            for d in &disks {
                let overlay = d.active.with_file_name(&new_active[&d.name]);
                if let Err(e) =
                    vdc_qemu::snapshot::create_overlay(&overlay, &d.active, d.size_bytes).await
                {
                    for d in &disks {
                        remove_logged(&d.active.with_file_name(&new_active[&d.name]));
                    }
                    return Err(host_error("cannot create the overlay", &e));
                }
            }
            snap.quiesce_note = Some("taken while the VM was stopped".into());
            let next = tree.created(snap, new_active.clone());
            if let Err(e) = write_tree(&dir, &next).await {
                for d in &disks {
                    remove_logged(&d.active.with_file_name(&new_active[&d.name]));
                }
                return Err(e);
            }
            return Ok(next);
        };

        let qga = vm.paths().guest_agent_socket();
        let was_running = matches!(vm.run_state().await, Ok(vdc_qemu::RunState::Running));
        if req.memory {
            if was_running {
                vm.pause()
                    .await
                    .map_err(|e| host_error("cannot pause the VM", &e))?;
            }
            snap.consistency = Consistency::CrashConsistent;
            snap.quiesce_note = Some("memory saved with it: the guest resumes as it was".into());
        } else if !config.guest_agent {
            snap.consistency = Consistency::CrashConsistent;
            snap.quiesce_note = Some("the VM has no guest agent channel".into());
        } else if !was_running {
            snap.consistency = Consistency::CrashConsistent;
            snap.quiesce_note = Some("the VM is paused: its guest agent cannot answer".into());
        } else {
            match vdc_qemu::qga::freeze(&qga, vdc_qemu::qga::DEFAULT_TIMEOUT).await {
                vdc_qemu::qga::Quiesce::Quiesced { .. } => {}
                vdc_qemu::qga::Quiesce::CrashConsistent { reason } => {
                    snap.consistency = Consistency::CrashConsistent;
                    snap.quiesce_note = Some(reason);
                }
            }
        }
        let quiesced = !req.memory && snap.consistency == Consistency::Quiesced;

        let next = tree.created(snap, new_active.clone());
        let result = async {
            write_tree(&dir, &next).await?;
            for d in &disks {
                let overlay = d.active.with_file_name(&new_active[&d.name]);
                let node = format!("{}-{}", d.name, &snap_id[..8]);
                if let Err(e) = vdc_qemu::snapshot::snapshot_live(
                    vm.qmp(),
                    &d.name,
                    &d.active,
                    &overlay,
                    &node,
                    d.size_bytes,
                    d.direct,
                )
                .await
                {
                    return Err(host_error("cannot take the disk snapshot", &e));
                }
            }
            if let Some(f) = &state_file {
                vdc_qemu::snapshot::save_memory(vm.qmp(), &dir.join(f))
                    .await
                    .map_err(|e| host_error("cannot save the VM's memory", &e))?;
            }
            Ok(())
        }
        .await;
        if quiesced {
            if let Err(e) = vdc_qemu::qga::thaw(&qga, vdc_qemu::qga::DEFAULT_TIMEOUT).await {
                tracing::warn!(vm = %config.name, error = %e, "cannot thaw the guest (it thaws itself after 10 s)");
            }
        }
        if req.memory && was_running {
            if let Err(e) = vm.resume().await {
                tracing::warn!(vm = %config.name, error = %e, "cannot resume the VM after its memory snapshot");
            }
        }
        if let Err(e) = result {
            // Put the tree back to what QEMU writes now.
            let mut back = tree.clone();
            if let Ok(names) = self.active_in_qemu(vm, &disks).await {
                back.active = names;
            }
            if let Err(we) = write_tree(&dir, &back).await {
                tracing::warn!(vm = %config.name, error = %we.message, "cannot restore the snapshot tree after a failed snapshot");
            }
            if let Some(f) = &state_file {
                remove_logged(&dir.join(f));
            }
            return Err(e);
        }
        Ok(next)
    }

    /// The image file each disk's guest writes now, by bare name.
    async fn active_in_qemu(
        &self,
        vm: &vdc_qemu::Vm,
        disks: &[Disk],
    ) -> Result<BTreeMap<String, String>, vdc_qemu::snapshot::SnapshotError> {
        let mut out = BTreeMap::new();
        for d in disks {
            let node = vdc_qemu::snapshot::active_node(vm.qmp(), &d.name).await?;
            if let Some(file) = vdc_qemu::snapshot::file_of_node(vm.qmp(), &node).await? {
                out.insert(d.name.clone(), vdc_qemu::snapshot::file_name(&file));
            }
        }
        Ok(out)
    }

    async fn revert_snapshot(
        &self,
        config: &VmConfig,
        name: &str,
    ) -> Result<SnapshotTree, ApiError> {
        let (dir, disks) = self.disks(config)?;
        let tree = read_tree(&dir).await?;
        let snap = tree.check_known(name).map_err(refusal)?.clone();
        let mut made = Vec::new();
        let mut active = BTreeMap::new();
        for d in &disks {
            let Some(image) = snap.images.get(&d.name) else {
                return Err(ApiError::invalid_state(format!(
                    "snapshot '{name}' has no image of disk {}",
                    d.name
                )));
            };
            let file = new_file(&d.name);
            let overlay = d.active.with_file_name(&file);
            let backing = d.active.with_file_name(image);
            if let Err(e) =
                vdc_qemu::snapshot::create_overlay(&overlay, &backing, d.size_bytes).await
            {
                made.iter().for_each(|p: &PathBuf| remove_logged(p));
                return Err(host_error("cannot create the overlay", &e));
            }
            made.push(overlay);
            active.insert(d.name.clone(), file);
        }
        let suspend = dir.join(vdc_disk::vmdir::SUSPEND_STATE);
        remove_logged(&suspend);
        if let Some(state) = &snap.state_file {
            if let Err(e) = std::fs::hard_link(dir.join(state), &suspend) {
                made.iter().for_each(|p| remove_logged(p));
                return Err(host_error("cannot link the snapshot's memory state", &e));
            }
        }
        let next = tree.reverted(name, active);
        if let Err(e) = write_tree(&dir, &next).await {
            made.iter().for_each(|p| remove_logged(p));
            if snap.state_file.is_some() {
                remove_logged(&suspend);
            }
            return Err(e);
        }
        // The old active images held only what no snapshot kept.
        let kept = next.files();
        for d in &disks {
            let f = vdc_qemu::snapshot::file_name(&d.active);
            let configured = config.disks.iter().any(|c| c.path.ends_with(&f));
            if !kept.contains(&f) && !configured {
                remove_logged(&d.active);
            }
        }
        Ok(next)
    }

    async fn delete_snapshot(
        &self,
        config: &VmConfig,
        vm: Option<&vdc_qemu::Vm>,
        name: &str,
    ) -> Result<SnapshotTree, ApiError> {
        let (dir, disks) = self.disks(config)?;
        let tree = read_tree(&dir).await?;
        let snap = tree.check_known(name).map_err(refusal)?.clone();
        for d in &disks {
            let Some(image) = snap.images.get(&d.name) else {
                continue;
            };
            let image = d.active.with_file_name(image);
            let mut children: Vec<PathBuf> = tree
                .children(name)
                .iter()
                .filter_map(|c| c.images.get(&d.name))
                .map(|f| d.active.with_file_name(f))
                .collect();
            if tree.current.as_deref() == Some(name) {
                children.push(d.active.clone());
            }
            let backing = backing_of(&image).await?;
            for child in &children {
                let live = match vm {
                    Some(vm) => vdc_qemu::snapshot::node_of_file(vm.qmp(), child)
                        .await
                        .map_err(|e| host_error("cannot read the VM's disks", &e))?
                        .is_some(),
                    None => false,
                };
                let merged = match (live, vm) {
                    (true, Some(vm)) => {
                        let job = format!(
                            "snapdel-{}",
                            &uuid::Uuid::new_v4().simple().to_string()[..8]
                        );
                        vdc_qemu::snapshot::stream_into(
                            vm.qmp(),
                            child,
                            &image,
                            backing.as_ref().map(|(p, n)| (p.as_path(), n.as_str())),
                            &job,
                        )
                        .await
                    }
                    _ => {
                        vdc_qemu::snapshot::rebase_at_rest(
                            child,
                            backing.as_ref().map(|(_, n)| n.as_str()),
                        )
                        .await
                    }
                };
                merged.map_err(|e| host_error("cannot merge the snapshot", &e))?;
            }
        }
        let next = tree.deleted(name);
        write_tree(&dir, &next).await?;
        // Nothing reads them any more.
        for d in &disks {
            if let Some(image) = snap.images.get(&d.name) {
                if !next.files().contains(image) {
                    remove_logged(&d.active.with_file_name(image));
                }
            }
        }
        if let Some(state) = &snap.state_file {
            remove_logged(&dir.join(state));
        }
        Ok(next)
    }
}

/// The backing file of `image`: its resolved path and the name written in
/// its header (`None`: no backing file).
pub(crate) async fn backing_of(image: &Path) -> Result<Option<(PathBuf, String)>, ApiError> {
    let out = tokio::process::Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(image)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| host_error("cannot run qemu-img", &e))?;
    if !out.status.success() {
        return Err(ApiError::new(
            ErrorCode::HostError,
            format!(
                "qemu-img info {} failed: {}",
                image.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| host_error("cannot read qemu-img info", &e))?;
    let Some(name) = v["backing-filename"].as_str() else {
        return Ok(None);
    };
    let full = v["full-backing-filename"]
        .as_str()
        .map(PathBuf::from)
        .unwrap_or_else(|| image.with_file_name(name));
    Ok(Some((full, name.to_string())))
}
