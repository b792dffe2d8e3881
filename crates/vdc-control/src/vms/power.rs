//! Power actions: start (placement, then the host launches QEMU), and the
//! actions its owner host carries out on a running VM (stop, shutdown,
//! reset, pause, resume, suspend). What is allowed when is the lifecycle's
//! decision ([`crate::lifecycle::decide`]); this module carries it out.

use std::sync::Arc;

use serde_json::json;
use vdc_sched::Demand;
use vdc_types::agent::AgentStartRequest;
use vdc_types::api::{DEFAULT_SHUTDOWN_TIMEOUT_S, MAX_SHUTDOWN_TIMEOUT_S};
use vdc_types::job::{JobKind, JobOp};
use vdc_types::{ApiError, ErrorCode, Task, TaskParams, VmAction, VmOperation, VmPowerState};

use super::placement_err;
use crate::journal;
use crate::tasks::TaskCtx;
use crate::Cluster;

/// How long memory promised to a started VM stays counted after the start,
/// until the host's own reports include the new QEMU process.
const PENDING_HOLD: std::time::Duration = std::time::Duration::from_secs(3);

/// Releases pending memory when dropped.
pub(crate) struct PendingGuard {
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
    pub(crate) async fn promise_memory(
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
            self.check_placeable(h).await?;
        }
        self.check_admission(name, rec.config.memory_mib, rec.config.ha.priority)
            .await?;
        let (_, step) = self.begin_operation(name, action, None).await?;
        let me = self.clone();
        let n = name.to_string();
        let params = TaskParams::VmPower {
            vm_id: rec.config.id.clone(),
            host: host.clone(),
            shutdown_timeout_s: None,
        };
        self.spawn_operation(
            name,
            step.operation.task_kind(),
            Some(params),
            move |ctx| async move { me.start_body(&ctx, &n, host, step.undo).await },
        )
        .await
    }

    /// Places and starts VM `name`, which was `from` (stopped, crashed or
    /// suspended) when the start was accepted. On failure the VM is `from`
    /// again, with its previous owner.
    pub(crate) async fn start_body(
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
        // A start job the journal shows pending (a resumed task) is
        // attached to on its host.
        let pending = journal::pending_job(&ctx.journal_now().await?, JobKind::Start);
        let attach = pending.is_some();
        let host = pending.map(|p| p.host).or(host);
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
            cpu_model: Some(rec.config.cpu_model.clone()),
            switches: crate::switches::switches_of(&rec.config),
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
            Some(h) if attach => h,
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
            bridges.push(self.get_network(&nic.network).await.ok());
        }
        let (before, rec) = self
            .update_record(name, |mut r| {
                for (nic, bridge) in r.config.nics.iter_mut().zip(&bridges) {
                    if let Some(net) = bridge {
                        crate::switches::attach(nic, net);
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
        let request = AgentStartRequest {
            config: rec.config.clone(),
        };
        let rt = self
            .agent_job(ctx, &host, &url, JobOp::Start { request }, (60, 95))
            .await
            .and_then(crate::jobs::vm_result)?;
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
        if matches!(action, VmAction::Backup | VmAction::Restore) {
            return Err(ApiError::invalid(format!(
                "a backup is taken with POST /api/v1/vms/{name}/backup ('vdc backup run {name} --store STORE') and restored with POST /api/v1/backups/ID/restore ('vdc backup restore ID')"
            )));
        }
        if !action.is_offered() {
            return Err(ApiError::invalid(format!(
                "the VM action '{action}' is not available yet; use {}",
                offered_list()
            )));
        }
        match action {
            VmAction::Start => return self.start_vm(name, None).await,
            VmAction::Delete => return self.delete_vm(name).await,
            VmAction::Migrate => return self.migrate_vm(name, Default::default()).await,
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
        let params = TaskParams::VmPower {
            vm_id: rec.config.id.clone(),
            host: Some(host.clone()),
            shutdown_timeout_s: (call == AgentCall::Shutdown).then_some(timeout),
        };
        let undo = step.begin.is_some().then_some(step.undo);
        self.spawn_operation(
            name,
            step.operation.task_kind(),
            Some(params),
            move |ctx| async move {
                let _ = &url;
                me.agent_call_body(&ctx, &n, call, &host, timeout, undo)
                    .await
            },
        )
        .await
    }

    /// The body of a power task of `kind` (`vm.shutdown`, `vm.suspend`)
    /// resumed by a restarted server: attaches to its journaled job.
    pub(crate) async fn resume_power_body(
        self: &Arc<Self>,
        ctx: &TaskCtx,
        name: &str,
        kind: &str,
        host: &str,
        timeout: u64,
    ) -> Result<(), ApiError> {
        let call = match kind {
            "vm.shutdown" => AgentCall::Shutdown,
            "vm.suspend" => AgentCall::Suspend,
            other => {
                return Err(ApiError::internal(format!(
                    "a {other} task has no agent job to attach to"
                )))
            }
        };
        self.agent_call_body(ctx, name, call, host, timeout, Some(VmPowerState::Running))
            .await
    }

    /// Carries out `call` on the VM's owner `host`: shutdown and suspend as
    /// agent jobs (progress, cancel), the short ones as plain calls. On
    /// failure the VM takes the state its host reports; a host that does
    /// not answer leaves it to the host's next reports; else `undo`.
    async fn agent_call_body(
        self: &Arc<Self>,
        ctx: &TaskCtx,
        name: &str,
        call: AgentCall,
        host: &str,
        timeout: u64,
        undo: Option<VmPowerState>,
    ) -> Result<(), ApiError> {
        let id = self.record(name).await?.config.id;
        let url = self.agent_url(host).await?;
        ctx.progress(10, call.stage()).await;
        let r = match call {
            AgentCall::Shutdown => {
                let op = JobOp::Shutdown {
                    vm_id: id.clone(),
                    timeout_s: timeout,
                };
                self.agent_job(ctx, host, &url, op, (10, 95))
                    .await
                    .and_then(crate::jobs::vm_result)
            }
            AgentCall::Suspend => {
                let op = JobOp::Suspend { vm_id: id.clone() };
                self.agent_job(ctx, host, &url, op, (10, 95))
                    .await
                    .and_then(crate::jobs::vm_result)
            }
            c => self.agents.action(host, &url, &id, c.path()).await,
        };
        match r {
            Ok(rt) => self.set_runtime(name, &rt, None).await,
            Err(e) if e.code == ErrorCode::HostUnavailable => {
                // The job may still run there. Until the host's next
                // reports (or the host monitor) say otherwise, the VM is
                // what its host last reported: the state before the action,
                // never an operation's state with no operation in flight.
                if let Some(s) = undo {
                    if let Err(b) = self.set_state(name, s, None).await {
                        tracing::warn!(vm = %name, error = %b, "cannot record the VM's state after an unanswered {}", call.path());
                    }
                }
                Err(e)
            }
            Err(e) => {
                // Whatever happened, the host tells the truth; without an
                // answer, the state before the action.
                let back = match self.agents.vms(host, &url).await {
                    Ok(vms) => match vms.into_iter().find(|v| v.id == id) {
                        Some(rt) => self.set_runtime(name, &rt, None).await,
                        None => Ok(()),
                    },
                    Err(_) => match undo {
                        Some(s) => self.set_state(name, s, None).await,
                        None => Ok(()),
                    },
                };
                if let Err(b) = back {
                    tracing::warn!(vm = %name, error = %b, "cannot record the VM's state after a failed {}", call.path());
                }
                Err(e)
            }
        }
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
