//! Snapshots of a VM, orchestrated: the tree lives in the VM's directory
//! and is read and changed by the VM's owner host (agent snapshot jobs);
//! the server checks each request against it first (a 4xx, nothing
//! changed), claims the VM's operation through the lifecycle (`snapshot`:
//! stopped, running or paused, nothing else in flight), and runs a task:
//!
//! - `snapshot.create`: one agent job;
//! - `snapshot.revert`: a running VM is powered off first; the job makes
//!   new active images on the snapshot's; a disk-only revert leaves the VM
//!   stopped, a revert with memory starts it again from the snapshot's
//!   state (a resume: the same boot goes on);
//! - `snapshot.delete`: one agent job (a live merge while the VM runs).
//!
//! Events: `snapshot.created`, `snapshot.reverted`, `snapshot.deleted`,
//! and `snapshot.chain_warning` when the chain grows long.
//!
//! Instant clones (`instant`) fork a running VM through the same jobs.

use std::sync::Arc;

use serde_json::json;
use vdc_types::job::{JobOp, JobResult};
use vdc_types::snapshot::{
    CreateSnapshotRequest, SnapshotAction, SnapshotJobRequest, SnapshotList, SnapshotRefusal,
    SnapshotTree,
};
use vdc_types::{ApiError, ErrorCode, Task, VmAction, VmPowerState};

use crate::tasks::TaskCtx;
use crate::{Cluster, VmRecord};

mod instant;

/// The API error for a refused snapshot change of VM `vm`.
fn refused(vm: &str, e: SnapshotRefusal) -> ApiError {
    let text = format!("VM '{vm}': {e}");
    match e {
        SnapshotRefusal::Unknown(_) => ApiError::new(
            ErrorCode::NotFound,
            format!("{text}; see 'vdc vm snapshot list {vm}'"),
        ),
        SnapshotRefusal::Taken(_) => ApiError::new(
            ErrorCode::AlreadyExists,
            format!("{text}; choose another name"),
        ),
        SnapshotRefusal::ChainFull(_) | SnapshotRefusal::InUse(..) => ApiError::invalid_state(text),
        _ => ApiError::invalid(text),
    }
}

/// `disks` with each path naming the active image `tree` records for it
/// (in the configured file's directory).
fn current_disks(disks: &[vdc_types::DiskSpec], tree: &SnapshotTree) -> Vec<vdc_types::DiskSpec> {
    disks
        .iter()
        .map(|d| match tree.active.get(&d.name) {
            Some(file) => {
                let path = match d.path.rsplit_once('/') {
                    Some((dir, _)) => format!("{dir}/{file}"),
                    None => file.clone(),
                };
                vdc_types::DiskSpec { path, ..d.clone() }
            }
            None => d.clone(),
        })
        .collect()
}

fn tree_result(r: JobResult) -> Result<SnapshotTree, ApiError> {
    match r {
        JobResult::Snapshots(t) => Ok(t),
        _ => Err(ApiError::new(
            ErrorCode::HostError,
            "the host answered a snapshot job with something else",
        )),
    }
}

impl Cluster {
    /// The host that works on `rec`'s snapshots and its agent URL: the
    /// owner of a VM that runs, else a host reaching its datastore.
    async fn snapshot_host(&self, rec: &VmRecord) -> Result<(String, String), ApiError> {
        if rec.state.has_process() {
            let host = rec.owner.clone().ok_or_else(|| {
                ApiError::internal(format!("VM '{}' runs but has no owner", rec.config.name))
            })?;
            let url = self.agent_url(&host).await?;
            return Ok((host, url));
        }
        self.host_for_files(rec).await
    }

    async fn tree_of(&self, rec: &VmRecord) -> Result<SnapshotTree, ApiError> {
        let (host, url) = self.snapshot_host(rec).await?;
        let u = format!("{url}/agent/v1/vms/{}/snapshots", rec.config.id);
        let body = vdc_types::snapshot::SnapshotTreeRequest {
            config: rec.config.clone(),
        };
        self.agents
            .call(
                &host,
                reqwest::Method::POST,
                u,
                Some(&body),
                std::time::Duration::from_secs(30),
            )
            .await
    }

    /// Refuses a live migration with storage of VM `rec` while its disks
    /// are chains of snapshot overlays: the mirror to another host moves
    /// the active images only. A stopped VM's move (`moves::files`) and a
    /// running VM's storage migration on its host (`moves::storage`) carry
    /// the whole chain; moves that keep the files keep the snapshots too.
    pub(crate) async fn refuse_disk_copy_with_snapshots(
        &self,
        rec: &VmRecord,
    ) -> Result<(), ApiError> {
        let tree = self.tree_of(rec).await?;
        if tree.active.is_empty() {
            return Ok(());
        }
        let name = &rec.config.name;
        Err(ApiError::invalid_state(format!(
            "VM '{name}' has snapshots ({} in its tree): a live migration with its disks to another host does not carry its chain of overlays; move its disks on its host ('vdc vm migrate {name} --datastore DS'), or stop it and move it with its snapshots ('vdc vm migrate {name} --to HOST --datastore DS'), or delete its snapshots first ('vdc vm snapshot list {name}')",
            tree.snapshots.len()
        )))
    }

    /// Refuses the instant convert of VM `rec` into a template while its
    /// disks are chains of snapshot overlays: the template keeps the
    /// configured file, a frozen image, not the guest's current disk.
    pub(crate) async fn refuse_convert_with_snapshots(
        &self,
        rec: &VmRecord,
    ) -> Result<(), ApiError> {
        let tree = self.tree_of(rec).await?;
        if tree.active.is_empty() {
            return Ok(());
        }
        let name = &rec.config.name;
        Err(ApiError::invalid_state(format!(
            "VM '{name}' has snapshots ({} in its tree): a convert keeps its first disk image, not its chain of overlays; clone it to a template instead ('--keep-vm'), which copies its current disk, or delete its snapshots first ('vdc vm snapshot list {name}')",
            tree.snapshots.len()
        )))
    }

    /// The disks of powered-off VM `rec` as the guest sees them now: each
    /// path names the active image of its snapshot chain (next to the
    /// configured file), so a copy that reads it (`qemu-img convert` reads
    /// the whole chain) gets the current data, flattened. Without
    /// snapshots these are the configured disks.
    pub(crate) async fn current_disks(
        &self,
        rec: &VmRecord,
    ) -> Result<Vec<vdc_types::DiskSpec>, ApiError> {
        let tree = self.tree_of(rec).await?;
        Ok(current_disks(&rec.config.disks, &tree))
    }

    /// Refuses `what` (a delete, a move of its files) of VM `rec` while
    /// linked or instant clones read its snapshot images.
    pub(crate) async fn refuse_with_clones(
        &self,
        rec: &VmRecord,
        what: &str,
    ) -> Result<(), ApiError> {
        let Ok(tree) = self.tree_of(rec).await else {
            // No host reaches its files: the operation itself says so.
            return Ok(());
        };
        let mut alive = Vec::new();
        for c in tree.snapshots.iter().flat_map(|s| s.clones.iter()) {
            if self.record(c).await.is_ok() {
                alive.push(c.clone());
            }
        }
        if alive.is_empty() {
            return Ok(());
        }
        Err(ApiError::invalid_state(format!(
            "VM '{}' is the base of clone(s) {}: their disks read its snapshot images, so {what} is refused; delete them first",
            rec.config.name,
            alive.join(", ")
        )))
    }

    /// The snapshots of VM `name`.
    pub async fn list_snapshots(&self, name: &str) -> Result<SnapshotList, ApiError> {
        let rec = self.record(name).await?;
        Ok(self.tree_of(&rec).await?.list(name))
    }

    /// Takes snapshot `req` of VM `name` (a `snapshot.create` task).
    pub async fn create_snapshot(
        self: &Arc<Self>,
        name: &str,
        req: CreateSnapshotRequest,
    ) -> Result<Task, ApiError> {
        let rec = self.record(name).await?;
        rec.decide(VmAction::Snapshot, None)?;
        let running = rec.state.has_process();
        let tree = self.tree_of(&rec).await?;
        tree.check_create(&req, running)
            .map_err(|e| refused(name, e))?;
        let action = SnapshotAction::Create(req);
        self.spawn_snapshot(name, "snapshot.create", action).await
    }

    /// Reverts VM `name` to snapshot `snap` (a `snapshot.revert` task).
    pub async fn revert_snapshot(
        self: &Arc<Self>,
        name: &str,
        snap: &str,
    ) -> Result<Task, ApiError> {
        let rec = self.record(name).await?;
        rec.decide(VmAction::Snapshot, None)?;
        let tree = self.tree_of(&rec).await?;
        tree.check_known(snap).map_err(|e| refused(name, e))?;
        let action = SnapshotAction::Revert {
            name: snap.to_string(),
        };
        self.spawn_snapshot(name, "snapshot.revert", action).await
    }

    /// Deletes snapshot `snap` of VM `name` (a `snapshot.delete` task).
    pub async fn delete_snapshot(
        self: &Arc<Self>,
        name: &str,
        snap: &str,
    ) -> Result<Task, ApiError> {
        let rec = self.record(name).await?;
        rec.decide(VmAction::Snapshot, None)?;
        let tree = self.tree_of(&rec).await?;
        let s = tree.check_known(snap).map_err(|e| refused(name, e))?;
        let mut alive = Vec::new();
        for c in &s.clones {
            if self.record(c).await.is_ok() {
                alive.push(c.clone());
            }
        }
        if !alive.is_empty() {
            return Err(refused(
                name,
                SnapshotRefusal::InUse(snap.to_string(), alive.join(", ")),
            ));
        }
        let action = SnapshotAction::Delete {
            name: snap.to_string(),
        };
        self.spawn_snapshot(name, "snapshot.delete", action).await
    }

    async fn spawn_snapshot(
        self: &Arc<Self>,
        name: &str,
        kind: &'static str,
        action: SnapshotAction,
    ) -> Result<Task, ApiError> {
        let (rec, _) = self.begin_operation(name, VmAction::Snapshot, None).await?;
        let me = self.clone();
        let n = name.to_string();
        // Create and delete keep their action: a restarted server attaches
        // to their job (`resume`). A revert (it powers the VM off first) is
        // journaled like a power task: a restart fails it, the VM released.
        let params = match &action {
            SnapshotAction::Create(_) | SnapshotAction::Delete { .. } => {
                vdc_types::TaskParams::Snapshot {
                    vm_id: rec.config.id.clone(),
                    host: rec.owner.clone(),
                    action: action.clone(),
                }
            }
            _ => vdc_types::TaskParams::VmPower {
                vm_id: rec.config.id.clone(),
                host: rec.owner.clone(),
                shutdown_timeout_s: None,
            },
        };
        self.spawn_operation(name, kind, Some(params), move |ctx| async move {
            me.snapshot_body(&ctx, &n, action).await
        })
        .await
    }

    /// The body of a snapshot task (also run again by a restarted server,
    /// which attaches to its journaled job).
    pub(crate) async fn snapshot_body(
        self: &Arc<Self>,
        ctx: &TaskCtx,
        name: &str,
        action: SnapshotAction,
    ) -> Result<(), ApiError> {
        let rec = self.record(name).await?;
        let (host, url) = self.snapshot_host(&rec).await?;
        if let SnapshotAction::Revert { .. } = &action {
            if rec.state.has_process() {
                ctx.progress(5, "powering the VM off").await;
                let rt = self
                    .agents
                    .action(&host, &url, &rec.config.id, "poweroff")
                    .await?;
                self.set_runtime(name, &rt, Some(host.clone())).await?;
            }
        }
        let request = SnapshotJobRequest {
            config: rec.config.clone(),
            action: action.clone(),
        };
        let tree = self
            .agent_job(ctx, &host, &url, JobOp::Snapshot { request }, (10, 80))
            .await
            .and_then(tree_result)?;
        match &action {
            SnapshotAction::Create(req) => {
                let snap = tree.get(&req.name);
                let consistency = snap.map(|s| s.consistency);
                self.events
                    .publish(
                        "snapshot.created",
                        name,
                        format!("VM {name}: snapshot {} taken", req.name),
                        json!({
                            "snapshot": req.name,
                            "memory": req.memory,
                            "consistency": consistency,
                            "quiesce_note": snap.and_then(|s| s.quiesce_note.clone()),
                            "chain_length": tree.chain_length(),
                        }),
                    )
                    .await;
                if let Some(w) = tree.warning() {
                    self.events
                        .publish(
                            "snapshot.chain_warning",
                            name,
                            format!("VM {name}: {w}"),
                            json!({"chain_length": tree.chain_length()}),
                        )
                        .await;
                }
            }
            SnapshotAction::Revert { name: snap } => {
                let memory = tree.get(snap).is_some_and(|s| s.memory);
                if memory {
                    // The snapshot's state is the VM's suspend file now: a
                    // start resumes the guest as it was.
                    self.set_state(name, VmPowerState::Suspended, Some(host.clone()))
                        .await?;
                    ctx.progress(85, "resuming from the snapshot's memory")
                        .await;
                    self.start_body(ctx, name, Some(host.clone()), VmPowerState::Suspended)
                        .await?;
                }
                self.events
                    .publish(
                        "snapshot.reverted",
                        name,
                        format!("VM {name}: reverted to snapshot {snap}"),
                        json!({"snapshot": snap, "memory": memory}),
                    )
                    .await;
            }
            SnapshotAction::Delete { name: snap } => {
                self.events
                    .publish(
                        "snapshot.deleted",
                        name,
                        format!("VM {name}: snapshot {snap} deleted"),
                        json!({"snapshot": snap, "chain_length": tree.chain_length()}),
                    )
                    .await;
            }
            // Run by `instant`, never through this body.
            SnapshotAction::InstantClone { .. } => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_disks_name_the_active_images_next_to_the_configured_files() {
        let disks: Vec<vdc_types::DiskSpec> = serde_json::from_value(json!([
            {"name": "disk0", "datastore": "a", "path": "web/disk0.qcow2", "size_bytes": 1},
            {"name": "disk1", "datastore": "a", "path": "disk1.qcow2", "size_bytes": 1},
            {"name": "disk2", "datastore": "a", "path": "web/disk2.qcow2", "size_bytes": 1}
        ]))
        .unwrap();
        let mut tree = SnapshotTree::new();
        tree.active.insert("disk0".into(), "disk0.abc.qcow2".into());
        tree.active.insert("disk1".into(), "disk1.def.qcow2".into());
        let now = current_disks(&disks, &tree);
        let paths: Vec<&str> = now.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(
            paths,
            ["web/disk0.abc.qcow2", "disk1.def.qcow2", "web/disk2.qcow2"]
        );
        assert_eq!(current_disks(&disks, &SnapshotTree::new()), disks);
    }
}
