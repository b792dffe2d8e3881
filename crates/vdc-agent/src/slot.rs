//! The agent's record of one VM ([`VmSlot`]): configuration, observed
//! runtime state, the QEMU handle while a process exists, the VM's
//! supervisor process beside it, and the tasks following them.
//!
//! Operations on a VM hold the slot's operation mutex for their whole
//! duration, so concurrent API requests on one VM run one after the other.
//! The fields behind the inner (blocking) mutex are only touched briefly and
//! never across an `.await`.
//!
//! Each slot persists a small record in its runtime directory
//! (`<state-dir>/vms/<id>/`): `vm.json` (the configuration, to find the VM's
//! directory again) and `state.json` (the last power state), which is how a
//! restarted agent tells a crashed VM from one that was stopped.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use vdc_types::agent::VmRuntime;
use vdc_types::{VmConfig, VmPowerState};

use crate::state::{next, Input};

/// File in the runtime directory with the configuration copy.
pub(crate) const RUNTIME_CONFIG: &str = "vm.json";
/// File in the runtime directory with the last power state.
pub(crate) const RUNTIME_STATE: &str = "state.json";

/// Persisted last state of a VM in its runtime directory.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct PersistedState {
    pub version: u32,
    pub state: VmPowerState,
    pub since_ms: u64,
    /// Tap devices the VM's NICs use on this host.
    #[serde(default)]
    pub taps: Vec<String>,
}

/// Mutable part of a slot.
pub(crate) struct SlotInner {
    pub config: VmConfig,
    pub runtime: VmRuntime,
    /// The QEMU process, while one exists.
    pub vm: Option<Arc<vdc_qemu::Vm>>,
    /// An exit was asked for (shutdown, power off): it is no crash.
    pub exit_requested: bool,
    /// Tap devices created for the NICs.
    pub taps: Vec<String>,
    /// Task following the running process (QMP events, guest, stats).
    pub monitor: Option<JoinHandle<()>>,
    /// The VM's supervisor process (lease holder, fencing) beside QEMU.
    pub vm_supervisor: Option<Arc<vdc_qemu::process::Process>>,
    /// Guest channel reader of the running process.
    pub guest_task: Option<JoinHandle<()>>,
}

/// One VM known to this agent.
pub(crate) struct VmSlot {
    pub id: String,
    /// Serializes operations on this VM.
    pub op: tokio::sync::Mutex<()>,
    inner: Mutex<SlotInner>,
    run_dir: PathBuf,
    changed: Arc<Notify>,
}

impl VmSlot {
    /// A slot for `config` in `state`, with runtime directory `run_dir`.
    pub fn new(
        config: VmConfig,
        state: VmPowerState,
        run_dir: PathBuf,
        changed: Arc<Notify>,
    ) -> Self {
        let runtime = VmRuntime {
            id: config.id.clone(),
            name: config.name.clone(),
            state,
            pid: None,
            guest: Default::default(),
            stats: None,
            since_ms: vdc_types::now_ms(),
            fenced: None,
            monitor_resets: 0,
            monitor_reason: None,
        };
        VmSlot {
            id: config.id.clone(),
            op: tokio::sync::Mutex::new(()),
            inner: Mutex::new(SlotInner {
                config,
                runtime,
                vm: None,
                exit_requested: false,
                taps: Vec::new(),
                monitor: None,
                vm_supervisor: None,
                guest_task: None,
            }),
            run_dir,
            changed,
        }
    }

    /// Locks the mutable part (a poisoned lock is recovered: the data is
    /// plain state that every writer leaves consistent).
    pub fn inner(&self) -> MutexGuard<'_, SlotInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Current runtime view.
    pub fn runtime(&self) -> VmRuntime {
        self.inner().runtime.clone()
    }

    /// Current power state.
    pub fn state(&self) -> VmPowerState {
        self.inner().runtime.state
    }

    /// The QEMU handle, if a process exists.
    pub fn vm(&self) -> Option<Arc<vdc_qemu::Vm>> {
        self.inner().vm.clone()
    }

    /// Feeds `input` to the state machine; on a change records the time,
    /// persists it and wakes the reporter. Returns the new runtime view.
    pub fn apply(&self, input: Input) -> VmRuntime {
        let (rt, changed, taps) = {
            let mut inner = self.inner();
            let old = inner.runtime.state;
            let new = next(old, input);
            if new != old {
                tracing::info!(vm = %inner.config.name, from = %old, to = %new, ?input, "VM state changed");
                inner.runtime.state = new;
                inner.runtime.since_ms = vdc_types::now_ms();
                if new == VmPowerState::Starting {
                    inner.runtime.fenced = None;
                }
                if !new.has_process() {
                    inner.runtime.pid = None;
                    inner.runtime.stats = None;
                }
            }
            (inner.runtime.clone(), new != old, inner.taps.clone())
        };
        if changed {
            self.persist_state(&rt, taps);
            self.changed.notify_one();
        }
        rt
    }

    /// Sets the state directly (used when re-attaching after a restart).
    pub fn set_state(&self, state: VmPowerState) {
        let (rt, taps) = {
            let mut inner = self.inner();
            inner.runtime.state = state;
            inner.runtime.since_ms = vdc_types::now_ms();
            (inner.runtime.clone(), inner.taps.clone())
        };
        self.persist_state(&rt, taps);
        self.changed.notify_one();
    }

    /// Wakes the reporter (guest info or stats changed).
    pub fn notify(&self) {
        self.changed.notify_one();
    }

    /// Records the slot's taps (and state) in the runtime directory, after
    /// a NIC came or went while the VM runs.
    pub fn persist_taps(&self) {
        let (rt, taps) = {
            let inner = self.inner();
            (inner.runtime.clone(), inner.taps.clone())
        };
        self.persist_state(&rt, taps);
    }

    /// Writes the configuration copy into the runtime directory.
    pub fn persist_config(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.run_dir)?;
        let body =
            serde_json::to_vec_pretty(&self.inner().config).map_err(std::io::Error::other)?;
        write_atomic(&self.run_dir.join(RUNTIME_CONFIG), &body)
    }

    fn persist_state(&self, rt: &VmRuntime, taps: Vec<String>) {
        let rec = PersistedState {
            version: 1,
            state: rt.state,
            since_ms: rt.since_ms,
            taps,
        };
        let write = || {
            serde_json::to_vec(&rec)
                .map_err(std::io::Error::other)
                .and_then(|b| {
                    std::fs::create_dir_all(&self.run_dir)?;
                    write_atomic(&self.run_dir.join(RUNTIME_STATE), &b)
                })
        };
        let res = blocking_io(write);
        if let Err(e) = res {
            tracing::warn!(vm = %self.id, error = %e, "cannot record VM state in the state directory");
        }
    }
}

/// Runs synchronous file I/O (an fsync can wait seconds behind a large
/// write on the same filesystem, e.g. a suspend's state file) without
/// holding a worker of a multi-threaded runtime: its other tasks (the
/// reporter, the API) move to another thread meanwhile.
pub(crate) fn blocking_io<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Reads the persisted state of a runtime directory, if any.
pub(crate) fn read_persisted_state(run_dir: &Path) -> Option<PersistedState> {
    let bytes = std::fs::read(run_dir.join(RUNTIME_STATE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Write to a temporary file and rename it over `path`.
pub(crate) fn write_atomic(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, body)?;
    std::fs::rename(&tmp, path)
}
