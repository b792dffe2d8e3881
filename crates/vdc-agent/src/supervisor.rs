//! The agent's side of a running VM: one task per QEMU process that
//! follows its QMP events into the state machine, reads the guest channel,
//! samples the process's CPU and memory every second, and keeps an eye on
//! the VM's supervisor process (`vdc vm-supervisor`, crate
//! `vdc-supervisor`).
//!
//! The lease and fencing are not here: the VM's supervisor holds the lease
//! and stops QEMU when it cannot renew, so an agent that crashes, freezes
//! or hangs on a datastore neither stops its VMs nor lets them run twice.
//! If that supervisor dies while QEMU runs, a new one is started for the
//! same QEMU at once (it re-takes this host's lease, or fences QEMU if it
//! cannot).
//!
//! When QEMU exits the task cleans up before it records the new state, so
//! an operation waiting for "stopped" finds the host clean: the taps are
//! deleted, and the VM's supervisor has released the lease and exited (the
//! agent releases it itself only if no supervisor did). If the supervisor
//! stopped QEMU, its record (`fence.json`) makes the VM `crashed` with the
//! reason in [`vdc_types::agent::VmRuntime::fenced`].

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use vdc_qemu::process::Process;
use vdc_supervisor::{FenceKind, FenceRecord, Hello};
use vdc_types::{GuestInfo, VmPowerState};

use crate::agent::{Agent, Layout};
use crate::console_log::ConsoleLog;
use crate::hoststats::ProcessSampler;
use crate::slot::VmSlot;
use crate::state::Input;

/// How long the VM's supervisor may take to release the lease and exit
/// after QEMU exited.
const SUPERVISOR_EXIT_WAIT: Duration = Duration::from_secs(15);
/// How many times a dead supervisor is replaced for one QEMU before the
/// VM is powered off instead.
const MAX_REPLACEMENTS: u32 = 3;

/// Starts following `vm`: the guest channel and the monitor task.
pub(crate) fn start(agent: Arc<Agent>, slot: Arc<VmSlot>, vm: Arc<vdc_qemu::Vm>, layout: &Layout) {
    let (guest_rx, guest_task) = vdc_qemu::spawn_guest_channel(&layout.paths);
    let vm_dir = layout.vm_dir.path().to_path_buf();
    let console_log = ConsoleLog::new(layout.vm_dir.console_log());
    let task = tokio::spawn(monitor(
        agent,
        slot.clone(),
        vm.clone(),
        vm_dir,
        guest_rx,
        console_log,
    ));
    let mut inner = slot.inner();
    inner.vm = Some(vm);
    if let Some(old) = inner.guest_task.replace(guest_task) {
        old.abort();
    }
    if let Some(old) = inner.monitor.replace(task) {
        old.abort();
    }
}

/// Deletes the tap devices of a VM (errors are logged).
pub(crate) async fn cleanup_network(taps: &[String]) {
    for tap in taps {
        if let Err(e) = vdc_net::delete_tap(tap).await {
            tracing::warn!(%tap, error = %crate::error::chain(&e), "cannot delete tap device");
        }
    }
}

/// Resolves when the VM's supervisor process exits (never if there is none).
async fn supervisor_exit(process: Option<Arc<Process>>) {
    match process {
        Some(p) => p.wait().await,
        None => std::future::pending().await,
    }
}

async fn monitor(
    agent: Arc<Agent>,
    slot: Arc<VmSlot>,
    vm: Arc<vdc_qemu::Vm>,
    vm_dir: std::path::PathBuf,
    mut guest_rx: tokio::sync::watch::Receiver<GuestInfo>,
    console_log: ConsoleLog,
) {
    let mut events = vm.events();
    let mut events_open = true;
    let mut guest_open = true;
    let mut shutdown_seen = false;
    let mut panicked = false;
    let mut stats = tokio::time::interval(Duration::from_secs(1));
    stats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sampler = ProcessSampler::new(vm.pid());
    let mut replaced = 0u32;
    let exited = vm.wait_exit();
    tokio::pin!(exited);

    loop {
        let sup = slot.inner().vm_supervisor.clone();
        tokio::select! {
            biased;
            _ = &mut exited => break,
            _ = supervisor_exit(sup) => {
                if vm.has_exited() {
                    continue;
                }
                slot.inner().vm_supervisor = None;
                replaced += 1;
                if replaced > MAX_REPLACEMENTS {
                    // A VM nobody can guard must not run.
                    tracing::error!(vm = %slot.id, replaced, "the VM's supervisors keep dying; powering the VM off");
                    slot.inner().exit_requested = true;
                    if let Err(e) = vm.power_off().await {
                        tracing::error!(vm = %slot.id, error = %e, "cannot power off an unsupervised VM");
                    }
                    continue;
                }
                tracing::error!(vm = %slot.id, "the VM's supervisor died while QEMU runs; starting another");
                agent.resupervise(&slot, &vm, &vm_dir).await;
            }
            ev = events.recv(), if events_open => match ev {
                Ok(ev) => match ev.name.as_str() {
                    "STOP" => { slot.apply(Input::Paused); }
                    "RESUME" => { slot.apply(Input::Resumed); }
                    "RESET" => { slot.apply(Input::Reset); }
                    "POWERDOWN" => { slot.apply(Input::PowerdownRequested); }
                    "SHUTDOWN" => {
                        // A guest power-off or our own `quit`; a signal sent
                        // by someone else counts as a crash.
                        let reason = ev.data.get("reason").and_then(|r| r.as_str()).unwrap_or("");
                        let guest = ev.data.get("guest").and_then(|g| g.as_bool()).unwrap_or(false);
                        shutdown_seen = guest || reason == "host-qmp-quit";
                    }
                    "GUEST_PANICKED" => panicked = true,
                    _ => {}
                },
                Err(RecvError::Lagged(_)) => reconcile(&slot, &vm).await,
                Err(RecvError::Closed) => events_open = false,
            },
            changed = guest_rx.changed(), if guest_open => {
                if changed.is_err() {
                    guest_open = false;
                    continue;
                }
                let info = guest_rx.borrow_and_update().clone();
                let became_ready = {
                    let mut inner = slot.inner();
                    let was = inner.runtime.guest.ready;
                    inner.runtime.guest = info.clone();
                    !was && info.ready
                };
                if became_ready {
                    slot.notify();
                }
            }
            _ = stats.tick() => {
                if let Some((cpu_percent, rss_bytes)) = sampler.sample() {
                    slot.inner().runtime.stats = Some(vdc_types::vm::VmStats { cpu_percent, rss_bytes });
                }
                let log = console_log.clone();
                match tokio::task::spawn_blocking(move || log.rotate_if_large()).await {
                    Ok(Ok(true)) => tracing::debug!(vm = %slot.id, "console log rotated"),
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => tracing::warn!(vm = %slot.id, error = %e, "cannot rotate the console log"),
                    Err(e) => tracing::warn!(vm = %slot.id, error = %e, "console log rotation failed"),
                }
            }
        }
    }

    // QEMU is gone: clean up, then record the new state.
    let (taps, requested, guest_task, sup) = {
        let mut inner = slot.inner();
        inner.vm = None;
        (
            std::mem::take(&mut inner.taps),
            inner.exit_requested,
            inner.guest_task.take(),
            inner.vm_supervisor.take(),
        )
    };
    if let Some(t) = guest_task {
        t.abort();
    }
    cleanup_network(&taps).await;
    let supervised = match &sup {
        Some(p) => {
            if !p.wait_for(SUPERVISOR_EXIT_WAIT).await {
                tracing::warn!(vm = %slot.id, pid = p.pid(), "the VM's supervisor did not exit after QEMU");
            }
            true
        }
        None => false,
    };
    let fence = FenceRecord::read(&agent.run_dir(&slot.id));
    if !supervised && fence.is_none() {
        // Nobody released the lease: do it here, off the runtime.
        agent.release_lease(&slot.id, &vm_dir).await;
    }
    let expected = (requested || shutdown_seen) && !panicked;
    match &fence {
        Some(f) => {
            tracing::error!(vm = %slot.id, reason = %f.reason, "QEMU was stopped by the VM's supervisor");
            slot.inner().runtime.fenced = Some(f.reason.clone());
        }
        None if !expected && slot.state() != VmPowerState::Suspending => {
            tracing::error!(vm = %slot.id, "QEMU exited unexpectedly");
        }
        None => {}
    }
    let expected = match fence.map(|f| f.kind) {
        Some(FenceKind::Fenced) => false,
        Some(FenceKind::HandedOver) => true,
        None => expected,
    };
    slot.apply(Input::Exited { expected });
}

impl Agent {
    /// Starts a new supervisor for a QEMU that runs without one.
    pub(crate) async fn resupervise(
        self: &Arc<Self>,
        slot: &Arc<VmSlot>,
        vm: &vdc_qemu::Vm,
        vm_dir: &std::path::Path,
    ) {
        let launch = self.supervisor_launch(&slot.id, vm_dir, Some(vm.pid()));
        match vdc_supervisor::client::start(&launch).await {
            Ok(started) => {
                match &started.hello {
                    Hello::Leased { generation, .. } => {
                        tracing::info!(vm = %slot.id, generation, "a new supervisor holds the lease")
                    }
                    other => {
                        tracing::error!(vm = %slot.id, answer = ?other, "the new supervisor cannot hold the lease; it stops QEMU")
                    }
                }
                slot.inner().vm_supervisor = Some(started.process);
            }
            Err(e) => {
                tracing::error!(vm = %slot.id, error = %crate::error::chain(&e), "cannot start a supervisor; the lease will lapse, stopping QEMU");
                if let Err(e) = vm.power_off().await {
                    tracing::error!(vm = %slot.id, error = %e, "cannot power off an unsupervised VM");
                }
            }
        }
    }
}

/// Re-reads QEMU's run state after missed events.
async fn reconcile(slot: &VmSlot, vm: &vdc_qemu::Vm) {
    match vm.run_state().await {
        Ok(vdc_qemu::RunState::Running) => {
            slot.apply(Input::Resumed);
        }
        Ok(vdc_qemu::RunState::Paused) => {
            slot.apply(Input::Paused);
        }
        _ => {}
    }
}
