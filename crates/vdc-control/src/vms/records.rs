//! VM records in the store: every write is a compare-and-swap on the
//! record read (retried on fresh data, or a clear error), operations are
//! claimed and released through the lifecycle, and the API's view of a VM.
//!
//! An operation's life:
//! 1. [`Cluster::begin_operation`]: one CAS write decides with
//!    [`lifecycle::decide`] on the record as it is and records the
//!    operation (and its begin state); a second request sees it and is
//!    refused as busy.
//! 2. [`Cluster::spawn_operation`]: the task starts, writes its id into the
//!    operation, runs the body, and releases the operation however the body
//!    ended (even by a panic).
//! 3. An operation whose task ended without releasing it (server stopped)
//!    is released when the next server opens, and by the host monitor
//!    ([`Cluster::release_orphaned_operations`]); it counts as ended when seen.

use std::future::Future;
use std::sync::Arc;

use serde_json::json;
use vdc_store::{Compare, Op, StoreError, StoreExt};
use vdc_types::{
    now_ms, ApiError, ErrorCode, InFlight, Task, UnixMillis, Vm, VmAction, VmOperation,
    VmPowerState,
};

use crate::lifecycle::{self, Step};
use crate::record::vm_key;
use crate::tasks::TaskCtx;
use crate::{store_err, Cluster, VmRecord};

/// Why a record update stopped.
pub(crate) enum Abort {
    /// The change refused (the record is left as it was).
    Api(ApiError),
    /// The store failed, the record is gone, or it kept changing.
    Store(StoreError),
    /// Nothing to change.
    Unchanged,
}

impl From<StoreError> for Abort {
    fn from(e: StoreError) -> Self {
        Abort::Store(e)
    }
}

impl From<ApiError> for Abort {
    fn from(e: ApiError) -> Self {
        Abort::Api(e)
    }
}

fn abort_err(name: &str, e: Abort) -> ApiError {
    match e {
        Abort::Api(e) => e,
        Abort::Store(StoreError::NotFound(_)) => ApiError::not_found("VM", name),
        Abort::Store(StoreError::Conflict { attempts, .. }) => ApiError::invalid_state(format!(
            "the record of VM '{name}' kept changing during {attempts} attempts to update it; retry"
        )),
        Abort::Store(e) => store_err(e),
        Abort::Unchanged => ApiError::internal("an unchanged record was reported as an error"),
    }
}

impl Cluster {
    /// The record of VM `name`.
    pub(crate) async fn record(&self, name: &str) -> Result<VmRecord, ApiError> {
        self.store
            .get_json::<VmRecord>(&vm_key(name))
            .await
            .map_err(store_err)?
            .ok_or_else(|| ApiError::not_found("VM", name))
    }

    /// Read-modify-write of VM `name`'s record by compare-and-swap: `change`
    /// sees the record as it is (again after each conflict) and returns the
    /// new one or an error that leaves it alone. Returns (before, after).
    pub(crate) async fn update_record<F>(
        &self,
        name: &str,
        mut change: F,
    ) -> Result<(VmRecord, VmRecord), ApiError>
    where
        F: FnMut(VmRecord) -> Result<VmRecord, ApiError> + Send,
    {
        let mut before = None;
        let after = self
            .store
            .update_json(&vm_key(name), |cur: VmRecord| {
                before = Some(cur.clone());
                change(cur).map_err(Abort::Api)
            })
            .await
            .map_err(|e| abort_err(name, e))?;
        let before = before.ok_or_else(|| ApiError::internal("record update saw no record"))?;
        Ok((before, after))
    }

    /// Like [`Cluster::update_record`], for changes that may not apply:
    /// `change` returns `None` to leave the record alone. Returns (before,
    /// after) when it changed; `None` when unchanged or gone.
    pub(crate) async fn change_record<F>(
        &self,
        name: &str,
        mut change: F,
    ) -> Result<Option<(VmRecord, VmRecord)>, ApiError>
    where
        F: FnMut(&VmRecord) -> Option<VmRecord> + Send,
    {
        let mut before = None;
        let r = self
            .store
            .update_json(&vm_key(name), |cur: VmRecord| {
                let new = change(&cur).ok_or(Abort::Unchanged)?;
                before = Some(cur);
                Ok(new)
            })
            .await;
        match r {
            Ok(after) => Ok(before.map(|b| (b, after))),
            Err(Abort::Unchanged) | Err(Abort::Store(StoreError::NotFound(_))) => Ok(None),
            Err(e) => Err(abort_err(name, e)),
        }
    }

    /// Deletes VM `name`'s record if `keep` says it is still the one to
    /// delete, compare-and-swap; returns whether it was deleted.
    pub(crate) async fn delete_record_if(
        &self,
        name: &str,
        keep: impl Fn(&VmRecord) -> bool,
    ) -> Result<bool, ApiError> {
        let key = vm_key(name);
        for _ in 0..vdc_store::UPDATE_ATTEMPTS {
            let Some(kv) = self.store.get(&key).await.map_err(store_err)? else {
                return Ok(false);
            };
            let rec: VmRecord = serde_json::from_slice(&kv.value)
                .map_err(|e| ApiError::internal(format!("VM record '{name}' unreadable: {e}")))?;
            if !keep(&rec) {
                return Ok(false);
            }
            let cmp = Compare::Revision {
                key: key.clone(),
                mod_revision: kv.mod_revision,
            };
            let r = self
                .store
                .txn(vec![cmp], vec![Op::Delete(key.clone())], vec![])
                .await
                .map_err(store_err)?;
            if r.succeeded {
                return Ok(true);
            }
        }
        Err(abort_err(
            name,
            Abort::Store(StoreError::Conflict {
                key,
                attempts: vdc_store::UPDATE_ATTEMPTS,
            }),
        ))
    }

    /// Records a state the server decided.
    pub(crate) async fn set_state(
        &self,
        name: &str,
        state: VmPowerState,
        owner: Option<String>,
    ) -> Result<(), ApiError> {
        self.set_state_since(name, state, owner, None).await
    }

    /// Records a state a host answered with (its time of that state).
    pub(crate) async fn set_runtime(
        &self,
        name: &str,
        rt: &vdc_types::agent::VmRuntime,
        owner: Option<String>,
    ) -> Result<(), ApiError> {
        self.set_state_since(name, rt.state, owner, Some(rt.since_ms))
            .await
    }

    async fn set_state_since(
        &self,
        name: &str,
        state: VmPowerState,
        owner: Option<String>,
        since: Option<UnixMillis>,
    ) -> Result<(), ApiError> {
        let (before, rec) = self
            .update_record(name, |mut rec| {
                if let Some(o) = &owner {
                    rec.set_owner(o);
                }
                rec.state = state;
                if let Some(t) = since {
                    rec.since_ms = t;
                }
                if !state.has_process() {
                    rec.guest = Default::default();
                }
                Ok(rec)
            })
            .await?;
        if before.state != state {
            self.publish_state_change(name, before.state, &rec).await;
        }
        Ok(())
    }

    /// Publishes `vm.state_changed` for `rec`, which was `from`.
    pub(crate) async fn publish_state_change(
        &self,
        name: &str,
        from: VmPowerState,
        rec: &VmRecord,
    ) {
        let to = rec.state;
        let on = rec
            .owner
            .as_deref()
            .map(|h| format!(" on {h}"))
            .unwrap_or_default();
        self.events
            .publish(
                "vm.state_changed",
                name,
                format!("VM {name} is {to}{on}"),
                json!({"from": from, "to": to, "host": rec.owner, "owner": rec.owner}),
            )
            .await;
    }

    // ---- operations ------------------------------------------------------

    /// The task of `rec`'s operation, if that task has ended (or is
    /// unknown): such an operation is left over and counts as ended.
    async fn ended_task(&self, rec: &VmRecord) -> Option<String> {
        let id = rec.operation.as_ref()?.task.as_ref()?;
        match self.tasks.get(id).await {
            Ok(t) if !t.state.is_final() => None,
            Ok(_) => Some(id.clone()),
            Err(e) if e.code == ErrorCode::NotFound => Some(id.clone()),
            Err(_) => None,
        }
    }

    /// Claims `action` on VM `name`: decides with the lifecycle on the
    /// record as it is and records the operation and its begin state, in
    /// one compare-and-swap write. `target` is a move's target host.
    pub(crate) async fn begin_operation(
        &self,
        name: &str,
        action: VmAction,
        target: Option<&str>,
    ) -> Result<(VmRecord, Step), ApiError> {
        let ended = self.ended_task(&self.record(name).await?).await;
        let mut step = None;
        let (before, after) = self
            .update_record(name, |mut rec| {
                if rec.operation.as_ref().and_then(|o| o.task.as_ref()) == ended.as_ref()
                    && ended.is_some()
                {
                    rec.operation = None;
                }
                let s = rec.decide(action, target)?;
                rec.operation = Some(InFlight {
                    operation: s.operation.clone(),
                    task: None,
                    since_ms: now_ms(),
                });
                if let Some(b) = s.begin {
                    rec.state = b;
                }
                step = Some(s);
                Ok(rec)
            })
            .await?;
        if before.state != after.state {
            self.publish_state_change(name, before.state, &after).await;
        }
        let step = step.ok_or_else(|| ApiError::internal("operation claimed without a step"))?;
        Ok((after, step))
    }

    /// Releases VM `name`'s operation if it is the one of task `task`
    /// (`None`: the claim whose task never started). Logs what it cannot do.
    pub(crate) async fn end_operation(&self, name: &str, task: Option<&str>) {
        let r = self
            .change_record(name, |rec| match &rec.operation {
                Some(o) if o.task.as_deref() == task => {
                    let mut new = rec.clone();
                    new.operation = None;
                    Some(new)
                }
                // Gone with its record (delete), or released already.
                _ => None,
            })
            .await;
        if let Err(e) = r {
            tracing::warn!(vm = %name, ?task, error = %e, "cannot release the VM's operation");
        }
    }

    /// Runs the operation claimed by [`Cluster::begin_operation`] as a task
    /// of `kind`: records the task's id in the operation, runs `body`, and
    /// releases the operation when the body ends, however it ends.
    pub(crate) async fn spawn_operation<F, Fut>(
        self: &Arc<Self>,
        name: &str,
        kind: &str,
        params: Option<vdc_types::TaskParams>,
        body: F,
    ) -> Result<Task, ApiError>
    where
        F: FnOnce(TaskCtx) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), ApiError>> + Send + 'static,
    {
        let me = self.clone();
        let n = name.to_string();
        let spawned = self
            .tasks
            .spawn_journaled(kind, "vm", name, params, move |ctx| async move {
                let id = ctx.id().to_string();
                if let Err(e) = me.attach_task(&n, &id).await {
                    me.end_operation(&n, None).await;
                    return Err(e);
                }
                let result = tokio::spawn(body(ctx)).await.unwrap_or_else(|e| {
                    Err(ApiError::internal(format!(
                        "operation failed unexpectedly: {e}"
                    )))
                });
                me.end_operation(&n, Some(&id)).await;
                result
            })
            .await;
        if spawned.is_err() {
            self.end_operation(name, None).await;
        }
        spawned
    }

    pub(crate) async fn attach_task(&self, name: &str, task: &str) -> Result<(), ApiError> {
        let (_, rec) = self
            .update_record(name, |mut rec| {
                match rec.operation.as_mut() {
                    Some(o) if o.task.is_none() => o.task = Some(task.to_string()),
                    _ => {
                        return Err(ApiError::internal(format!(
                            "VM '{name}' lost its claimed operation before task {task} began"
                        )))
                    }
                }
                Ok(rec)
            })
            .await?;
        if let Some(o) = &rec.operation {
            self.events
                .publish(
                    "vm.operation_started",
                    name,
                    format!("VM {name}: {} (task {task})", o.operation),
                    json!({"operation": o.operation, "task": task, "owner": rec.owner}),
                )
                .await;
        }
        Ok(())
    }

    /// Releases the operations whose task is no longer running: at open
    /// (`at_open`), also those claimed without a task (the server that
    /// claimed them stopped); later, only those whose task has ended
    /// without releasing them (a task resumed by a new server, a failed
    /// release). Their VMs follow their owners' reports again.
    pub(crate) async fn release_orphaned_operations(&self, at_open: bool) -> Result<(), ApiError> {
        let recs: Vec<(String, VmRecord)> =
            self.store.list_json("/vms/").await.map_err(store_err)?;
        for (_, rec) in recs {
            let Some(op) = &rec.operation else { continue };
            let orphan = match &op.task {
                None => at_open,
                Some(_) => self.ended_task(&rec).await.is_some(),
            };
            if orphan {
                tracing::warn!(vm = %rec.config.name, operation = %op.operation, "releasing an operation whose task no longer runs");
                self.end_operation(&rec.config.name, op.task.as_deref())
                    .await;
            }
        }
        Ok(())
    }

    // ---- views -------------------------------------------------------------

    async fn vm_view(&self, rec: VmRecord) -> Vm {
        let mut guest = rec.guest.clone();
        let mut stats = None;
        let mut fenced = None;
        if let Some(h) = &rec.owner {
            if let Some(rt) = self.runtime(h, &rec.config.id).await {
                guest.last_heartbeat_ms = rt.guest.last_heartbeat_ms;
                stats = rt.stats;
                fenced = rt.fenced.filter(|_| !rec.state.has_process());
            }
        }
        let actions = lifecycle::allowed_actions(&rec.now());
        let target = rec.target().map(str::to_string);
        let c = rec.config;
        Vm {
            id: c.id,
            name: c.name,
            state: rec.state,
            owner: rec.owner,
            target,
            operation: rec.operation,
            actions,
            cpus: c.cpus,
            memory_mib: c.memory_mib,
            datastore: c.datastore,
            disks: c.disks,
            nics: c.nics,
            guest,
            stats,
            template: c.template,
            created_ms: c.created_ms,
            machine_type: c.machine_type,
            cpu_model: c.cpu_model,
            ha: c.ha,
            fenced,
        }
    }

    /// Every VM.
    pub async fn list_vms(&self) -> Result<Vec<Vm>, ApiError> {
        let recs: Vec<(String, VmRecord)> =
            self.store.list_json("/vms/").await.map_err(store_err)?;
        let mut out = Vec::with_capacity(recs.len());
        for (_, r) in recs {
            out.push(self.vm_view(r).await);
        }
        Ok(out)
    }

    /// One VM.
    pub async fn get_vm(&self, name: &str) -> Result<Vm, ApiError> {
        let r = self.record(name).await?;
        Ok(self.vm_view(r).await)
    }
}

/// Whether `rec` carries `op` claimed by task `task` (or not yet by any).
pub(crate) fn holds(rec: &VmRecord, op: &VmOperation, task: Option<&str>) -> bool {
    rec.operation
        .as_ref()
        .is_some_and(|o| &o.operation == op && (task.is_none() || o.task.as_deref() == task))
}
