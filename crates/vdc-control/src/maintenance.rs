//! Maintenance mode of a host: it takes no new VMs, and a `host.maintenance`
//! task moves its VMs away (planned by `vdc_sched::evacuate`, carried out
//! by the migration flows), reporting each VM it could not move and why.
//!
//! The mode is kept in the store under `/maintenance/<host>` (format
//! [`MAINTENANCE_VERSION`]), apart from the host record that every
//! (re)connection rewrites; it survives server restarts. From the moment
//! it is recorded, placement skips the host (`available` is false in its
//! capacity) and a start or create naming it is refused (409).
//!
//! Enter: record `entering` (event `host.maintenance_entering`), plan,
//! then one move at a time, each its own `vm.migrate` task followed to its
//! end; a VM that cannot move gets a `host.evacuation_failed` event with
//! the reason; at the end record `in_maintenance` and publish
//! `host.maintenance_entered` (with the VMs left and why). The task fails,
//! naming them, when any VM stayed. Exit: remove the record (a running
//! evacuation is cancelled) and publish `host.maintenance_exited`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use vdc_sched::evacuate::{plan_evacuation, EvacuatedVm, Evacuation, StoreRoom};
use vdc_store::StoreExt;
use vdc_types::{now_ms, ApiError, ErrorCode, Host, MaintenanceState, Task, TaskState};

use crate::tasks::TaskCtx;
use crate::{store_err, Cluster, VmRecord};

/// Version of the maintenance record; a newer one is refused.
pub const MAINTENANCE_VERSION: u32 = 1;

/// How often a move started by the evacuation is looked at.
const MOVE_POLL: Duration = Duration::from_millis(500);

/// `/maintenance/<host>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceRecord {
    /// [`MAINTENANCE_VERSION`].
    pub version: u32,
    /// The host.
    pub host: String,
    /// Where it stands.
    pub state: MaintenanceState,
    /// When it was entered.
    pub since_ms: u64,
    /// The evacuation task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
}

fn key(host: &str) -> String {
    format!("/maintenance/{host}")
}

impl Cluster {
    /// Every host in maintenance, with its state.
    pub(crate) async fn maintenance_states(&self) -> HashMap<String, MaintenanceState> {
        let recs: Vec<(String, MaintenanceRecord)> = self
            .store
            .list_json("/maintenance/")
            .await
            .unwrap_or_default();
        recs.into_iter()
            .filter(|(_, r)| r.version <= MAINTENANCE_VERSION)
            .map(|(_, r)| (r.host, r.state))
            .collect()
    }

    /// Refuses a host in maintenance as the target of a move or a start.
    pub(crate) async fn check_placeable(&self, host: &str) -> Result<(), ApiError> {
        if self.maintenance_states().await.contains_key(host) {
            return Err(ApiError::invalid_state(format!(
                "host '{host}' is in maintenance and takes no new VMs; choose another host or run 'vdc host maintenance exit {host}'"
            )));
        }
        Ok(())
    }

    /// `POST /hosts/{name}/maintenance/enter`: records the mode
    /// and starts the evacuation task. Entering again while in maintenance
    /// runs the evacuation again.
    pub async fn enter_maintenance(self: &Arc<Self>, host: &str) -> Result<Task, ApiError> {
        self.get_host(host).await?;
        let running = self.maintenance_record(host).await?;
        if let Some(task) = running.as_ref().and_then(|r| r.task.clone()) {
            if self
                .tasks
                .get(&task)
                .await
                .is_ok_and(|t| !t.state.is_final())
            {
                return Err(ApiError::invalid_state(format!(
                    "host '{host}' is already entering maintenance (task {task})"
                )));
            }
        }
        // The mode is recorded before the evacuation starts, so that no
        // placement lands on the host meanwhile and the evacuation finds it.
        let rec = MaintenanceRecord {
            version: MAINTENANCE_VERSION,
            host: host.to_string(),
            state: MaintenanceState::Entering,
            since_ms: running.map(|r| r.since_ms).unwrap_or_else(now_ms),
            task: None,
        };
        self.store
            .put_json(&key(host), &rec)
            .await
            .map_err(store_err)?;
        let me = self.clone();
        let h = host.to_string();
        let spawned = self
            .tasks
            .spawn("host.maintenance", "host", host, move |ctx| async move {
                me.evacuate(&ctx, &h).await
            })
            .await;
        let task = match spawned {
            Ok(t) => t,
            Err(e) => {
                if let Err(de) = self.store.delete(&key(host)).await {
                    tracing::warn!(host, error = %de, "cannot remove the maintenance record of an evacuation that did not start");
                }
                return Err(e);
            }
        };
        let id = task.id.clone();
        let noted = self
            .store
            .update_json(&key(host), |mut r: MaintenanceRecord| {
                r.task = Some(id.clone());
                Ok::<_, vdc_store::StoreError>(r)
            })
            .await;
        if let Err(e) = noted {
            tracing::warn!(host, task = %task.id, error = %e, "cannot note the evacuation task in the maintenance record");
        }
        self.events
            .publish(
                "host.maintenance_entering",
                host,
                format!("host {host} entering maintenance: it takes no new VMs"),
                json!({"host": host, "task": task.id}),
            )
            .await;
        Ok(task)
    }

    /// `POST /hosts/{name}/maintenance/exit`.
    pub async fn exit_maintenance(&self, host: &str) -> Result<Host, ApiError> {
        self.get_host(host).await?;
        let Some(rec) = self.maintenance_record(host).await? else {
            return Err(ApiError::invalid_state(format!(
                "host '{host}' is not in maintenance"
            )));
        };
        if let Some(task) = &rec.task {
            if self
                .tasks
                .get(task)
                .await
                .is_ok_and(|t| !t.state.is_final())
            {
                if let Err(e) = self.tasks.cancel(task).await {
                    tracing::warn!(host, task, error = %e, "cannot cancel the evacuation");
                }
            }
        }
        self.store.delete(&key(host)).await.map_err(store_err)?;
        self.events
            .publish(
                "host.maintenance_exited",
                host,
                format!("host {host} left maintenance: it takes VMs again"),
                json!({"host": host}),
            )
            .await;
        self.get_host(host).await
    }

    async fn maintenance_record(&self, host: &str) -> Result<Option<MaintenanceRecord>, ApiError> {
        let rec: Option<MaintenanceRecord> =
            self.store.get_json(&key(host)).await.map_err(store_err)?;
        match rec {
            Some(r) if r.version > MAINTENANCE_VERSION => Err(ApiError::new(
                ErrorCode::Internal,
                format!(
                    "the maintenance record of host '{host}' has version {}, newer than this server's {MAINTENANCE_VERSION}",
                    r.version
                ),
            )),
            r => Ok(r),
        }
    }

    /// The body of `host.maintenance`.
    async fn evacuate(self: &Arc<Self>, ctx: &TaskCtx, host: &str) -> Result<(), ApiError> {
        let records: Vec<(String, VmRecord)> =
            self.store.list_json("/vms/").await.map_err(store_err)?;
        let vms: Vec<EvacuatedVm> = records
            .iter()
            .filter(|(_, r)| r.owner.as_deref() == Some(host))
            .map(|(_, r)| EvacuatedVm {
                name: r.config.name.clone(),
                running: r.state.has_process(),
                memory_mib: r.config.memory_mib,
                cpus: r.config.cpus,
                datastores: datastores_of(r),
                disk_bytes: r.config.disks.iter().map(|d| d.size_bytes).sum(),
                cpu_model: Some(r.config.cpu_model.clone()),
            })
            .collect();
        let stores: Vec<StoreRoom> = self
            .list_datastores()
            .await?
            .into_iter()
            .map(|d| StoreRoom {
                shared: d.kind == vdc_types::DatastoreKind::Shared,
                name: d.name,
                free_bytes: d.free_bytes,
            })
            .collect();
        let plan = plan_evacuation(host, &vms, &self.capacities().await, &stores);
        let total = plan.len().max(1);
        let mut stayed: Vec<(String, String)> = Vec::new();
        for (i, (vm, decision)) in plan.into_iter().enumerate() {
            ctx.check_cancel()?;
            ctx.progress((i * 100 / total).min(99) as u8, &format!("moving VM {vm}"))
                .await;
            let moved = match decision {
                Evacuation::Stays { reason } => Err(reason),
                Evacuation::Live { to } => {
                    self.run_move(ctx, &vm, self.live_move(&vm, &to, None).await)
                        .await
                }
                Evacuation::LiveWithStorage { to, datastore } => {
                    let t = self.live_move(&vm, &to, Some(datastore)).await;
                    self.run_move(ctx, &vm, t).await
                }
                Evacuation::Ownership { to } | Evacuation::Cold { to } => {
                    let t = self.move_vm_files(&vm, Some(to), None).await;
                    self.run_move(ctx, &vm, t).await
                }
            };
            if let Err(reason) = moved {
                ctx.check_cancel()?;
                self.events
                    .publish(
                        "host.evacuation_failed",
                        &vm,
                        format!("VM {vm} could not leave host {host}: {reason}"),
                        json!({"host": host, "vm": vm, "reason": reason}),
                    )
                    .await;
                stayed.push((vm, reason));
            }
        }
        let changed = self
            .store
            .update_json(&key(host), |mut r: MaintenanceRecord| {
                r.state = MaintenanceState::InMaintenance;
                Ok::<_, vdc_store::StoreError>(r)
            })
            .await;
        if changed.is_err() {
            // Exited meanwhile: nothing more to record.
            return Err(ApiError::new(
                ErrorCode::Cancelled,
                format!("host '{host}' left maintenance before its evacuation ended"),
            ));
        }
        let left: Vec<_> = stayed
            .iter()
            .map(|(vm, why)| json!({"vm": vm, "reason": why}))
            .collect();
        self.events
            .publish(
                "host.maintenance_entered",
                host,
                format!(
                    "host {host} is in maintenance; {} VM(s) could not move",
                    stayed.len()
                ),
                json!({"host": host, "not_moved": left}),
            )
            .await;
        if stayed.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = stayed
            .iter()
            .map(|(vm, why)| format!("{vm}: {why}"))
            .collect();
        Err(ApiError::new(
            ErrorCode::InvalidState,
            format!(
                "host '{host}' is in maintenance, but {} VM(s) could not move: {}",
                stayed.len(),
                list.join("; ")
            ),
        )
        .with_details(json!({"not_moved": left})))
    }

    /// Follows a move's task to its end; `Err(reason)` when it did not
    /// succeed. A cancel of the evacuation cancels the move.
    async fn run_move(
        &self,
        ctx: &TaskCtx,
        vm: &str,
        started: Result<Task, ApiError>,
    ) -> Result<(), String> {
        let task = started.map_err(|e| e.message)?;
        loop {
            tokio::select! {
                _ = ctx.cancelled() => {
                    if let Err(e) = self.tasks.cancel(&task.id).await {
                        tracing::warn!(vm, task = %task.id, error = %e, "cannot cancel a move of the evacuation");
                    }
                    return Err("the evacuation was cancelled".into());
                }
                _ = tokio::time::sleep(MOVE_POLL) => {}
            }
            let t = self.tasks.get(&task.id).await.map_err(|e| e.message)?;
            match t.state {
                TaskState::Succeeded => return Ok(()),
                TaskState::Failed | TaskState::Cancelled => {
                    return Err(t
                        .error
                        .map(|e| e.message)
                        .unwrap_or_else(|| format!("its move ended {:?}", t.state)))
                }
                _ => {}
            }
        }
    }

    /// Starts the live migration of `vm` to `to` (the live migration
    /// flow), its disks moving to `datastore` there when given.
    async fn live_move(
        self: &Arc<Self>,
        vm: &str,
        to: &str,
        datastore: Option<String>,
    ) -> Result<Task, ApiError> {
        let req = vdc_types::migration::MigrateRequest {
            to: Some(to.to_string()),
            datastore,
            ..Default::default()
        };
        self.migrate_vm(vm, req).await
    }
}

/// The datastores a VM uses: its home and every disk's.
fn datastores_of(r: &VmRecord) -> Vec<String> {
    let mut v: Vec<String> = std::iter::once(r.config.datastore.clone())
        .chain(r.config.disks.iter().map(|d| d.datastore.clone()))
        .collect();
    v.sort();
    v.dedup();
    v
}
