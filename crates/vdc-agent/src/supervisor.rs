//! One task per running VM: follows QEMU's QMP events into the state
//! machine, reads the guest channel, samples the process's CPU and memory
//! every second and renews the VM's lease every few seconds.
//!
//! When QEMU exits the supervisor cleans up before it records the new
//! state, so an operation waiting for "stopped" finds the host clean: the
//! taps are deleted and the lease is released.
//!
//! Fencing: if renewing the lease finds that another host holds it, that
//! host has taken the VM over (this host was presumed dead); the local QEMU
//! is powered off at once so the VM never runs twice.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use vdc_disk::{DiskError, VmLock};
use vdc_types::{GuestInfo, VmPowerState};

use crate::agent::{Agent, Layout, LEASE_RENEW, LEASE_TTL};
use crate::console_log::ConsoleLog;
use crate::hoststats::ProcessSampler;
use crate::slot::VmSlot;
use crate::state::Input;

/// Starts following `vm`: the guest channel and the supervisor task.
pub(crate) fn start(agent: Arc<Agent>, slot: Arc<VmSlot>, vm: Arc<vdc_qemu::Vm>, layout: &Layout) {
    let (guest_rx, guest_task) = vdc_qemu::spawn_guest_channel(&layout.paths);
    let lock = layout.vm_dir.lock();
    let console_log = ConsoleLog::new(layout.vm_dir.console_log());
    let task = tokio::spawn(supervise(
        agent,
        slot.clone(),
        vm.clone(),
        lock,
        guest_rx,
        console_log,
    ));
    let mut inner = slot.inner();
    inner.vm = Some(vm);
    if let Some(old) = inner.guest_task.replace(guest_task) {
        old.abort();
    }
    if let Some(old) = inner.supervisor.replace(task) {
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

async fn supervise(
    agent: Arc<Agent>,
    slot: Arc<VmSlot>,
    vm: Arc<vdc_qemu::Vm>,
    lock: VmLock,
    mut guest_rx: tokio::sync::watch::Receiver<GuestInfo>,
    console_log: ConsoleLog,
) {
    let host = agent.config.name.clone();
    let mut events = vm.events();
    let mut events_open = true;
    let mut guest_open = true;
    let mut shutdown_seen = false;
    let mut panicked = false;
    let mut renew = tokio::time::interval(LEASE_RENEW);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stats = tokio::time::interval(Duration::from_secs(1));
    stats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sampler = ProcessSampler::new(vm.pid());
    let exited = vm.wait_exit();
    tokio::pin!(exited);

    loop {
        tokio::select! {
            _ = &mut exited => break,
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
            _ = renew.tick() => {
                match lock.renew(&host, &agent.agent_id, LEASE_TTL) {
                    Ok(_) => {}
                    Err(DiskError::LeaseLost { holder_host }) if !holder_host.is_empty() => {
                        tracing::error!(vm = %slot.id, holder = %holder_host, "lease taken by another host; powering the VM off");
                        if let Err(e) = vm.power_off().await {
                            tracing::error!(vm = %slot.id, error = %e, "cannot power off fenced VM");
                        }
                    }
                    Err(DiskError::LeaseLost { .. }) => {
                        // The lease file vanished (e.g. removed by hand): take it again.
                        if let Err(e) = lock.acquire(&host, &agent.agent_id, LEASE_TTL).await {
                            tracing::warn!(vm = %slot.id, error = %crate::error::chain(&e), "cannot retake the lease");
                        }
                    }
                    Err(e) => tracing::warn!(vm = %slot.id, error = %crate::error::chain(&e), "cannot renew the lease"),
                }
            }
        }
    }

    // QEMU is gone: clean up, then record the new state.
    let (taps, requested, guest_task) = {
        let mut inner = slot.inner();
        inner.vm = None;
        (
            std::mem::take(&mut inner.taps),
            inner.exit_requested,
            inner.guest_task.take(),
        )
    };
    if let Some(t) = guest_task {
        t.abort();
    }
    cleanup_network(&taps).await;
    if let Err(e) = lock.release(&host) {
        tracing::warn!(vm = %slot.id, error = %crate::error::chain(&e), "cannot release the lease");
    }
    let expected = (requested || shutdown_seen) && !panicked;
    if !expected && slot.state() != VmPowerState::Suspending {
        tracing::error!(vm = %slot.id, "QEMU exited unexpectedly");
    }
    slot.apply(Input::Exited { expected });
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
