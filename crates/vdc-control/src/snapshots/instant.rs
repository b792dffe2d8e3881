//! Instant clone (`vm.instant_clone` task on the source): a new running VM
//! forked from a running VM's memory and disks, resumed rather than booted,
//! that takes its own identity (hostname, MAC, address) from vdc right
//! after it resumes.
//!
//! 1. the clone's record, directory, MAC and address: an ordinary VM
//!    create (stopped, a blank disk that the clone never uses), on the
//!    source's host and datastore, with the source's CPUs, memory and
//!    network;
//! 2. the source's host forks it (agent `instant_clone`): the source's
//!    disks frozen as snapshot `clone-NEW` (the clone's base, which cannot
//!    be deleted while the clone exists), overlays for both, the memory
//!    saved as the clone's `suspend.state`; the source paused meanwhile;
//! 3. the clone is recorded suspended and started: a resume on the same
//!    host, with its own NIC;
//! 4. its identity through the guest agent (`vdc-set-identity`).
//!
//! A failure after step 1 deletes the clone again.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use vdc_types::api::CreateVmRequest;
use vdc_types::job::{JobOp, JobResult};
use vdc_types::names::validate_name;
use vdc_types::snapshot::{
    GuestIdentityRequest, InstantCloneRequest, RunningCloneRequest, SnapshotAction,
    SnapshotJobRequest,
};
use vdc_types::{now_ms, ApiError, ErrorCode, Task, TaskState, VmAction, VmPowerState};

use crate::tasks::TaskCtx;
use crate::Cluster;

/// Longest wait for the clone's create task.
const CREATE_WAIT: Duration = Duration::from_secs(300);
/// Milliseconds each step of a fork took, in order (published with the
/// event: where an instant clone's time goes).
pub(super) struct Steps(serde_json::Map<String, serde_json::Value>, u64);

impl Steps {
    fn new(t0: u64) -> Steps {
        Steps(serde_json::Map::new(), t0)
    }

    /// Step `name` ended now.
    fn mark(&mut self, name: &str) {
        let now = now_ms();
        self.0
            .insert(name.into(), now.saturating_sub(self.1).into());
        self.1 = now;
    }
}

/// How often the clone's create task is read while it runs (a store read;
/// the fork waits on it).
const TASK_POLL: Duration = Duration::from_millis(20);

/// How a running VM is cloned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fork {
    /// Memory too: the clone resumes, then takes its identity.
    Instant,
    /// Disks only, the clone's overlay on the source's frozen image; it
    /// boots with its identity.
    Linked,
    /// Disks only, copied whole into the clone's image; it boots.
    Full,
}

/// Name of the base snapshot of clone `clone` in its source's tree.
pub fn base_snapshot(clone: &str) -> String {
    format!("clone-{clone}")
}

impl Cluster {
    /// Forks running VM `source` into a new VM (a `vm.instant_clone` task
    /// on the source). Checked first, nothing changed on refusal.
    pub async fn instant_clone(
        self: &Arc<Self>,
        source: &str,
        req: InstantCloneRequest,
    ) -> Result<Task, ApiError> {
        self.fork_vm(source, req.name, Fork::Instant).await
    }

    /// Clones running VM `source` (a `vm.clone` task on the source): its
    /// disks at one quiesced instant, linked to the source's frozen image
    /// or copied whole; the clone boots with its own identity.
    pub async fn clone_running(
        self: &Arc<Self>,
        source: &str,
        req: RunningCloneRequest,
    ) -> Result<Task, ApiError> {
        let how = if req.linked { Fork::Linked } else { Fork::Full };
        self.fork_vm(source, req.name, how).await
    }

    async fn fork_vm(
        self: &Arc<Self>,
        source: &str,
        name: String,
        how: Fork,
    ) -> Result<Task, ApiError> {
        let req = InstantCloneRequest { name };
        validate_name("VM", &req.name).map_err(ApiError::invalid)?;
        let rec = self.record(source).await?;
        if rec.state != VmPowerState::Running {
            return Err(ApiError::invalid_state(format!(
                "VM '{source}' is {}: this clone forks a running VM; start it first, or clone it at rest ('vdc vm clone')",
                rec.state
            )));
        }
        rec.decide(VmAction::Snapshot, None)?;
        if how == Fork::Instant && !rec.config.guest_agent {
            return Err(ApiError::invalid_state(format!(
                "VM '{source}' has no guest agent channel (it was created before vdc gave VMs one): its clone could not be told its identity"
            )));
        }
        if self.record(&req.name).await.is_ok() {
            return Err(ApiError::new(
                ErrorCode::AlreadyExists,
                format!("VM '{}' already exists", req.name),
            ));
        }
        let tree = self.tree_of(&rec).await?;
        let base = vdc_types::snapshot::CreateSnapshotRequest {
            name: base_snapshot(&req.name),
            description: String::new(),
            memory: false,
        };
        tree.check_create(&base, true)
            .map_err(|e| ApiError::invalid_state(format!("VM '{source}': {e}")))?;
        let (rec, _) = self
            .begin_operation(source, VmAction::Snapshot, None)
            .await?;
        let params = vdc_types::TaskParams::VmPower {
            vm_id: rec.config.id.clone(),
            host: rec.owner.clone(),
            shutdown_timeout_s: None,
        };
        let me = self.clone();
        let src = source.to_string();
        let kind = if how == Fork::Instant {
            "vm.instant_clone"
        } else {
            "vm.clone"
        };
        self.spawn_operation(source, kind, Some(params), move |ctx| async move {
            me.instant_clone_body(&ctx, &src, &req.name, how).await
        })
        .await
    }

    async fn instant_clone_body(
        self: &Arc<Self>,
        ctx: &TaskCtx,
        source: &str,
        name: &str,
        how: Fork,
    ) -> Result<(), ApiError> {
        let t0 = now_ms();
        let src = self.record(source).await?;
        let host = src
            .owner
            .clone()
            .ok_or_else(|| ApiError::internal(format!("VM '{source}' runs without an owner")))?;
        let size = src.config.disks.first().map_or(0, |d| d.size_bytes);
        ctx.progress(5, "creating the clone's record and address")
            .await;
        let create = CreateVmRequest {
            name: name.to_string(),
            cpus: Some(src.config.cpus),
            memory_mib: Some(src.config.memory_mib),
            disk_gib: Some(size.div_ceil(1 << 30).max(1)),
            datastore: Some(src.config.datastore.clone()),
            network: src.config.nics.first().map(|n| n.network.clone()),
            host: Some(host.clone()),
            start: false,
            ..Default::default()
        };
        let task = self.create_vm(create).await?;
        self.wait_task_end(&task.id).await?;
        let mut steps = Steps::new(t0);
        steps.mark("create");
        let result = self
            .fork_and_resume(ctx, &src, name, &host, how, &mut steps)
            .await;
        if let Err(e) = &result {
            tracing::warn!(vm = %name, error = %e.message, "instant clone failed; deleting the clone");
            match self.delete_vm(name).await {
                Ok(t) => {
                    if let Err(de) = self.wait_task_end(&t.id).await {
                        tracing::warn!(vm = %name, error = %de.message, "cannot delete the failed clone");
                    }
                }
                Err(de) => {
                    tracing::warn!(vm = %name, error = %de.message, "cannot delete the failed clone")
                }
            }
            return result;
        }
        let took = now_ms().saturating_sub(t0);
        let (topic, what) = match how {
            Fork::Instant => ("vm.instant_cloned", "forked"),
            Fork::Linked => ("vm.cloned", "cloned (linked)"),
            Fork::Full => ("vm.cloned", "cloned (full)"),
        };
        self.events
            .publish(
                topic,
                name,
                format!("VM {name} {what} from running VM {source} in {took} ms"),
                json!({"source": source, "host": host, "ms": took, "linked": how == Fork::Linked, "steps_ms": steps.0}),
            )
            .await;
        Ok(())
    }

    async fn fork_and_resume(
        self: &Arc<Self>,
        ctx: &TaskCtx,
        src: &crate::VmRecord,
        name: &str,
        host: &str,
        how: Fork,
        steps: &mut Steps,
    ) -> Result<(), ApiError> {
        let clone = self.record(name).await?;
        let url = self.agent_url(host).await?;
        ctx.progress(30, "forking the source").await;
        let request = SnapshotJobRequest {
            config: src.config.clone(),
            action: SnapshotAction::InstantClone {
                name: base_snapshot(name),
                clone: Box::new(clone.config.clone()),
                memory: how == Fork::Instant,
                full: how == Fork::Full,
            },
        };
        match self
            .agent_job(ctx, host, &url, JobOp::Snapshot { request }, (30, 60))
            .await?
        {
            JobResult::Snapshots(_) => steps.mark("fork"),
            _ => {
                return Err(ApiError::new(
                    ErrorCode::HostError,
                    "the host answered an instant clone with something else",
                ))
            }
        }
        if how != Fork::Instant {
            if how == Fork::Full {
                // The clone copied the chain: the base snapshot goes again
                // (merged into the source's active image while it runs).
                ctx.progress(55, "merging the temporary snapshot").await;
                let request = SnapshotJobRequest {
                    config: src.config.clone(),
                    action: SnapshotAction::Delete {
                        name: base_snapshot(name),
                    },
                };
                self.agent_job(ctx, host, &url, JobOp::Snapshot { request }, (55, 60))
                    .await?;
            }
            // It boots with its own identity (SMBIOS strings).
            ctx.progress(60, "starting the clone").await;
            return self
                .start_body(ctx, name, Some(host.to_string()), VmPowerState::Stopped)
                .await;
        }
        ctx.progress(60, "resuming the clone").await;
        self.set_state(name, VmPowerState::Suspended, Some(host.to_string()))
            .await?;
        self.start_body(ctx, name, Some(host.to_string()), VmPowerState::Suspended)
            .await?;
        steps.mark("resume");
        ctx.progress(90, "giving the clone its identity").await;
        let clone = self.record(name).await?;
        let nic = clone.config.nics.first();
        let identity = GuestIdentityRequest {
            hostname: clone.config.hostname.clone(),
            address: nic.and_then(|n| n.ip.clone()),
            gateway: nic.and_then(|n| n.gateway.clone()),
            mac: nic.map(|n| n.mac.clone()),
        };
        let u = format!("{url}/agent/v1/vms/{}/guest-identity", clone.config.id);
        self.agents
            .call::<_, serde_json::Value>(
                host,
                reqwest::Method::POST,
                u,
                Some(&identity),
                Duration::from_secs(40),
            )
            .await?;
        steps.mark("identity");
        Ok(())
    }

    /// Waits for task `id` to end; its error if it did not succeed.
    async fn wait_task_end(&self, id: &str) -> Result<(), ApiError> {
        let deadline = tokio::time::Instant::now() + CREATE_WAIT;
        loop {
            let t = self.tasks.get(id).await?;
            match t.state {
                TaskState::Succeeded => return Ok(()),
                s if s.is_final() => {
                    return Err(t.error.unwrap_or_else(|| {
                        ApiError::new(ErrorCode::HostError, format!("task {id} ended {s:?}"))
                    }))
                }
                _ => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::new(
                    ErrorCode::Timeout,
                    format!("task {id} did not end in time"),
                ));
            }
            tokio::time::sleep(TASK_POLL).await;
        }
    }
}
