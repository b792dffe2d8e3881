//! Power actions: start (placement, then the host launches QEMU), and the
//! actions its owner host carries out on a running VM (stop, shutdown,
//! reset, pause, resume, suspend). What is allowed when is the lifecycle's
//! decision ([`crate::lifecycle::decide`]); this module carries it out.

use std::sync::Arc;

use serde_json::json;
use vdc_sched::Demand;
use vdc_types::agent::AgentStartRequest;
use vdc_types::api::{DEFAULT_SHUTDOWN_TIMEOUT_S, MAX_SHUTDOWN_TIMEOUT_S};
use vdc_types::{ApiError, Task, VmAction, VmOperation, VmPowerState};

use super::placement_err;
use crate::tasks::TaskCtx;
use crate::Cluster;

/// How long memory promised to a started VM stays counted after the start,
/// until the host's own reports include the new QEMU process.
const PENDING_HOLD: std::time::Duration = std::time::Duration::from_secs(3);

/// Releases pending memory when dropped.
pub(super) struct PendingGuard {
    cluster: Arc<Cluster>,
    host: String,
    mib: u64,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        let c = self.cluster.clone();
        let (h, m) = (std::mem::take(&mut self.host), self.mib);
        tokio::spawn(async move {
            // Keep the promise until a few reports show the new process's
            // memory in the host's free figure.
            tokio::time::sleep(PENDING_HOLD).await;
            let mut p = c.pending_mib.lock().await;
            if let Some(v) = p.get_mut(&h) {
                *v = v.saturating_sub(m);
            }
        });
    }
}

/// What the owner's agent is asked to do for an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AgentCall {
    Shutdown,
    PowerOff,
    Reset,
    Pause,
    Resume,
    Suspend,
}

impl AgentCall {
    /// The call that carries out `op` on the VM's host, if one does.
    fn for_operation(op: &VmOperation) -> Option<AgentCall> {
        Some(match op {
            VmOperation::ShuttingDown => AgentCall::Shutdown,
            VmOperation::Stopping => AgentCall::PowerOff,
            VmOperation::Resetting => AgentCall::Reset,
            VmOperation::Pausing => AgentCall::Pause,
            VmOperation::Resuming => AgentCall::Resume,
            VmOperation::Suspending => AgentCall::Suspend,
            _ => return None,
        })
    }

    /// The agent API's name for it (`POST /agent/v1/vms/{id}/{name}`).
    fn path(self) -> &'static str {
        match self {
            AgentCall::Shutdown => "shutdown",
            AgentCall::PowerOff => "poweroff",
            AgentCall::Reset => "reset",
            AgentCall::Pause => "pause",
            AgentCall::Resume => "resume",
            AgentCall::Suspend => "suspend",
        }
    }

    fn stage(self) -> &'static str {
        match self {
            AgentCall::Shutdown => "waiting for the guest to power off",
            AgentCall::Suspend => "saving memory to the datastore",
            _ => "asking the host",
        }
    }
}

impl Cluster {
    /// Counts a VM's memory as taken on `host` until the guard is dropped
    /// (plus [`PENDING_HOLD`]).
    pub(super) async fn promise_memory(
        self: &Arc<Self>,
        host: &str,
        memory_mib: u64,
    ) -> PendingGuard {
        let mib = vdc_sched::footprint_mib(memory_mib);
        *self
            .pending_mib
            .lock()
            .await
            .entry(host.to_string())
            .or_default() += mib;
        PendingGuard {
            cluster: self.clone(),
            host: host.to_string(),
            mib,
        }
    }

    /// Starts a stopped, crashed or suspended VM (a task), on `host` or
    /// where placement puts it.
    pub async fn start_vm(
        self: &Arc<Self>,
        name: &str,
        host: Option<String>,
    ) -> Result<Task, ApiError> {
        self.start_action(name, VmAction::Start, host).await
    }

    /// Start, or the resume of a suspended VM.
    async fn start_action(
        self: &Arc<Self>,
        name: &str,
        action: VmAction,
        host: Option<String>,
    ) -> Result<Task, ApiError> {
        let rec = self.record(name).await?;
        rec.decide(action, None)?;
        if let Some(h) = &host {
            self.agent_url(h).await?;
        }
        let (_, step) = self.begin_operation(name, action, None).await?;
        let me = self.clone();
        let n = name.to_string();
        self.spawn_operation(name, step.operation.task_kind(), move |ctx| async move {
            me.start_body(&ctx, &n, host, step.undo).await
        })
        .await
    }

    /// Places and starts VM `name`, which was `from` (stopped, crashed or
    /// suspended) when the start was accepted. On failure the VM is `from`
    /// again, with its previous owner.
    pub(super) async fn start_body(
        self: &Arc<Self>,
        ctx: &TaskCtx,
        name: &str,
        host: Option<String>,
        from: VmPowerState,
    ) -> Result<(), ApiError> {
        let rec = self.record(name).await?;
        let previous_owner = rec.owner.clone();
        let result = self.start_on_a_host(ctx, name, host, from).await;
        if result.is_err() {
            let restored = self
                .update_record(name, |mut r| {
                    if r.state == VmPowerState::Starting {
                        r.state = from;
                        r.owner = previous_owner.clone();
                    }
                    Ok(r)
                })
                .await;
            match restored {
                Ok((before, after)) if before.state != after.state => {
                    self.publish_state_change(name, before.state, &after).await
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(vm = %name, error = %e, "cannot record the VM back as it was after a failed start")
                }
            }
        }
        result
    }

    async fn start_on_a_host(
        self: &Arc<Self>,
        ctx: &TaskCtx,
        name: &str,
        host: Option<String>,
        from: VmPowerState,
    ) -> Result<(), ApiError> {
        let rec = self.record(name).await?;
        let resuming = from == VmPowerState::Suspended;
        let demand = Demand {
            cpus: rec.config.cpus,
            memory_mib: rec.config.memory_mib,
            datastores: {
                let mut d: Vec<String> = rec
                    .config
                    .disks
                    .iter()
                    .map(|d| d.datastore.clone())
                    .collect();
                d.push(rec.config.datastore.clone());
                d.sort();
                d.dedup();
                d
            },
        };
        let caps = self.capacities().await;
        // A suspended VM resumes on its owner when that host can take it:
        // the saved CPU state matches that host's CPU.
        let host = host.or_else(|| {
            let last = rec.owner.as_ref()?;
            let cap = caps.iter().find(|c| &c.name == last && c.available)?;
            (resuming && vdc_sched::check_host(&demand, cap).is_ok()).then(|| last.clone())
        });
        let host = match host {
            Some(h) => {
                let cap = caps
                    .iter()
                    .find(|c| c.name == h)
                    .ok_or_else(|| ApiError::not_found("Host", &h))?;
                vdc_sched::check_host(&demand, cap).map_err(placement_err)?;
                h
            }
            None => vdc_sched::place(&demand, &caps).map_err(placement_err)?,
        };
        let _pending = self.promise_memory(&host, rec.config.memory_mib).await;
        let url = self.agent_url(&host).await?;
        ctx.check_cancel()?;
        ctx.progress(
            60,
            if resuming {
                "resuming from the suspended state"
            } else {
                "starting QEMU"
            },
        )
        .await;
        // Bridges from the current network definitions; the host picked
        // becomes the owner as QEMU is launched there.
        let mut bridges = Vec::with_capacity(rec.config.nics.len());
        for nic in &rec.config.nics {
            bridges.push(self.get_network(&nic.network).await.ok().map(|n| n.bridge));
        }
        let (before, rec) = self
            .update_record(name, |mut r| {
                for (nic, bridge) in r.config.nics.iter_mut().zip(&bridges) {
                    if let Some(b) = bridge {
                        nic.bridge = Some(b.clone());
                    }
                }
                r.state = VmPowerState::Starting;
                r.set_owner(&host);
                Ok(r)
            })
            .await?;
        if before.state != rec.state {
            self.publish_state_change(name, before.state, &rec).await;
        }
        let rt = self
            .agents
            .start(
                &host,
                &url,
                &AgentStartRequest {
                    config: rec.config.clone(),
                },
            )
            .await?;
        self.set_runtime(name, &rt, Some(host.clone())).await?;
        self.events
            .publish(
                "vm.started",
                name,
                format!("VM {name} started on {host}"),
                json!({"host": host}),
            )
            .await;
        Ok(())
    }

    /// Runs `action` on VM `name`: start and delete have their own flows;
    /// the others are carried out by the VM's owner host.
    /// `shutdown_timeout_s` is for `shutdown` (default 60 s).
    pub async fn vm_action(
        self: &Arc<Self>,
        name: &str,
        action: VmAction,
        shutdown_timeout_s: Option<u64>,
    ) -> Result<Task, ApiError> {
        if !action.is_offered() {
            return Err(ApiError::invalid(format!(
                "the VM action '{action}' is not available yet; use {}",
                offered_list()
            )));
        }
        match action {
            VmAction::Start => return self.start_vm(name, None).await,
            VmAction::Delete => return self.delete_vm(name).await,
            _ => {}
        }
        let rec = self.record(name).await?;
        let step = rec.decide(action, None)?;
        if step.operation == VmOperation::Starting {
            // Resume of a suspended VM: a start.
            return self.start_action(name, action, None).await;
        }
        let timeout = shutdown_timeout_s.unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT_S);
        if timeout == 0 || timeout > MAX_SHUTDOWN_TIMEOUT_S {
            return Err(ApiError::invalid(format!(
                "shutdown timeout must be between 1 and {MAX_SHUTDOWN_TIMEOUT_S} seconds, not {timeout}"
            )));
        }
        let host = rec
            .owner
            .clone()
            .ok_or_else(|| ApiError::internal(format!("VM '{name}' has a process but no owner")))?;
        let url = self.agent_url(&host).await?;
        let (_, step) = self.begin_operation(name, action, None).await?;
        let Some(call) = AgentCall::for_operation(&step.operation) else {
            self.end_operation(name, None).await;
            return Err(ApiError::internal(format!(
                "no host call carries out {}",
                step.operation
            )));
        };
        let me = self.clone();
        let n = name.to_string();
        let id = rec.config.id.clone();
        self.spawn_operation(name, step.operation.task_kind(), move |ctx| async move {
            ctx.progress(10, call.stage()).await;
            let r = match call {
                AgentCall::Shutdown => me.agents.shutdown(&host, &url, &id, timeout).await,
                c => me.agents.action(&host, &url, &id, c.path()).await,
            };
            match r {
                Ok(rt) => me.set_runtime(&n, &rt, None).await,
                Err(e) => {
                    // Whatever happened, the host's last report tells the
                    // truth; without one, the state before the action.
                    let back = match me.runtime(&host, &id).await {
                        Some(rt) => me.set_runtime(&n, &rt, None).await,
                        None if step.begin.is_some() => {
                            me.set_state(&n, step.undo, None).await
                        }
                        None => Ok(()),
                    };
                    if let Err(b) = back {
                        tracing::warn!(vm = %n, error = %b, "cannot record the VM's state after a failed {}", call.path());
                    }
                    Err(e)
                }
            }
        })
        .await
    }
}

/// The actions the API offers, for messages.
pub(crate) fn offered_list() -> String {
    let names: Vec<&str> = VmAction::ALL
        .iter()
        .filter(|a| a.is_offered())
        .map(|a| a.as_str())
        .collect();
    names.join(", ")
}
