//! The agent's core: the VMs it knows; the operations on them are in
//! `power`, `provision` and `recover`.
//!
//! # Start
//! 1. Resolve the VM directory and disks through the datastores (a path
//!    outside every datastore is refused).
//! 2. Start the VM's supervisor process (`vdc vm-supervisor`), which takes
//!    the VM's lease (`vm.lock`) by the rules of `vdc_disk::lock::rule`;
//!    another host's lease seen renewing refuses the start with
//!    [`ErrorCode::Locked`]; a stale one is taken after watching it a TTL.
//!    Then write `vm.json` (only the lease holder may).
//! 3. Create the NICs' tap devices on their bridges.
//! 4. Launch QEMU (resuming from `suspend.state` if the VM was suspended),
//!    give its pid to the supervisor (which renews the lease and fences
//!    QEMU if it cannot), and follow the process in a monitor task (events,
//!    guest channel, resource use).
//! 5. If anything fails: delete the taps, abandon the supervisor (it
//!    releases the lease and exits), leave no process.
//!
//! A failover's start (this host already watches the VM's lease, held by
//! another host: `lease_watch`) hands that observation to the supervisor,
//! so the TTL counts from it, and does steps 3–4 while the supervisor
//! waits, QEMU started with its vCPUs stopped and continued once the
//! lease is taken (`prelaunch`).
//!
//! # Suspended VMs and the lease
//! A suspended VM has no process; its memory is in `suspend.state` in its
//! directory. The lease is released on suspend: the suspended state belongs
//! to the VM, and any host that mounts the datastore may resume it.
//!
//! # Restart
//! On start-up the agent reads `<state-dir>/vms/*/` and re-attaches to every
//! QEMU still running (pidfile + QMP socket) and to its supervisor (pidfile),
//! starting a new supervisor for a QEMU that has none. A VM whose process vanished while the agent was
//! away is reported crashed (or suspended, if its state file is there).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use vdc_disk::{Datastore, VmDir};
use vdc_types::agent::{DatastoreReport, HostReport, VmRuntime};
use vdc_types::{Accelerator, ApiError, ErrorCode, VmConfig, VmPowerState};

use vdc_types::auth::SecretHash;

use crate::console::ConsoleLinks;
use crate::error::disk_error;
use crate::hoststats::{self, HostCpu};
use crate::slot::VmSlot;
use crate::{AgentConfig, AgentError};

/// Longest the agent waits for a lease read or release of its own (the
/// VM supervisors do the renewals); a hung datastore costs no more.
pub(crate) const LEASE_IO_WAIT: Duration = Duration::from_secs(5);
/// How long an operation waits for the supervisor to see QEMU exit.
pub(crate) const EXIT_WAIT: Duration = Duration::from_secs(30);

/// Where one VM's files are on this host.
pub(crate) struct Layout {
    pub vm_dir: VmDir,
    pub paths: vdc_qemu::VmPaths,
    pub disks: Vec<PathBuf>,
}

/// The agent: configuration, datastores and the VMs it knows.
pub(crate) struct Agent {
    pub config: AgentConfig,
    pub agent_id: String,
    pub started_ms: u64,
    pub accelerator: Accelerator,
    pub qemu_version: String,
    /// Machine types and CPU models this host's QEMU offers (`None` if
    /// they could not be read: QEMU's own error then tells).
    pub qemu_models: Option<vdc_qemu::QemuModels>,
    pub datastores: Vec<Datastore>,
    pub(crate) vms: Mutex<BTreeMap<String, Arc<VmSlot>>>,
    /// Woken whenever something worth reporting changed.
    pub changed: Arc<Notify>,
    pub(crate) host_cpu: Mutex<HostCpu>,
    /// Serial console connections (see `console`).
    pub consoles: ConsoleLinks,
    /// Jobs submitted by the server (see `jobs`).
    pub(crate) jobs: crate::jobs::Jobs,
    /// VMs offered to other agents (see `transfer`).
    pub(crate) exports: crate::transfer::Exports,
    /// Leases of other hosts' VMs this host watches (see `lease_watch`).
    pub(crate) lease_watches: crate::lease_watch::LeaseWatches,
    /// A check for VMs moved to other hosts is running.
    moved_check: Arc<std::sync::atomic::AtomicBool>,
    /// Hash of the credential the server presents; `None` until joined.
    server_credential: Mutex<Option<SecretHash>>,
    /// The host's certificate for the migration stream (see `tls`).
    pub(crate) tls: crate::tls::HostTls,
    /// The cluster's switches on this host (see `switches`).
    pub(crate) switches: crate::switches::Switches,
    /// NBD exports of instantly restored VMs (see `instant`).
    pub(crate) instant: crate::instant::InstantExports,
    /// The NICs' port rules last applied.
    pub(crate) port_rules: crate::port_rules::PortRules,
}

impl Agent {
    /// Checks the datastores and the state directory and probes QEMU.
    pub async fn new(config: AgentConfig) -> Result<Arc<Agent>, AgentError> {
        config.validate()?;
        let vms_dir = config.state_dir.join("vms");
        std::fs::create_dir_all(&vms_dir).map_err(|source| AgentError::StateDir {
            path: vms_dir.clone(),
            source,
        })?;
        let mut datastores = Vec::new();
        for d in &config.datastores {
            let mut ds = Datastore::new(d.name.clone(), d.path.clone(), d.shared);
            ds.capacity().map_err(|source| AgentError::Datastore {
                name: d.name.clone(),
                path: d.path.clone(),
                source,
            })?;
            ds.probe_cache();
            match &ds.cache_reason {
                None => tracing::info!(datastore = %ds.name, cache = %ds.cache, "disk cache mode"),
                Some(reason) => {
                    tracing::warn!(datastore = %ds.name, cache = %ds.cache, %reason, "disk cache mode")
                }
            }
            datastores.push(ds);
        }
        let accelerator = vdc_qemu::detect_accelerator(config.accel);
        let qemu_version = match vdc_qemu::qemu_version(&vdc_qemu::qemu_binary()).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %crate::error::chain(&e), "cannot read the QEMU version");
                "unknown".to_string()
            }
        };
        let qemu_models = match vdc_qemu::qemu_models(&vdc_qemu::qemu_binary()).await {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!(error = %crate::error::chain(&e), "cannot read the QEMU machine types and CPU models");
                None
            }
        };
        let mut host_cpu = HostCpu::default();
        host_cpu.sample();
        Ok(Arc::new(Agent {
            agent_id: uuid::Uuid::new_v4().to_string(),
            started_ms: vdc_types::now_ms(),
            accelerator,
            qemu_version,
            qemu_models,
            datastores,
            vms: Mutex::new(BTreeMap::new()),
            changed: Arc::new(Notify::new()),
            host_cpu: Mutex::new(host_cpu),
            consoles: ConsoleLinks::default(),
            jobs: Default::default(),
            exports: Default::default(),
            lease_watches: Default::default(),
            moved_check: Arc::default(),
            server_credential: Mutex::new(config.server_credential.as_deref().map(SecretHash::of)),
            tls: crate::tls::HostTls::open(&config.state_dir),
            switches: Default::default(),
            instant: Default::default(),
            port_rules: Default::default(),
            config,
        }))
    }

    /// Keeps the server credential learned at join.
    pub fn set_server_credential(&self, credential: &str) {
        *self
            .server_credential
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(SecretHash::of(credential));
    }

    /// Whether the agent knows the server credential (has joined).
    pub fn joined(&self) -> bool {
        self.server_credential
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Whether `given` is the server credential (constant time).
    pub fn is_server(&self, given: &str) -> bool {
        self.server_credential
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|h| h.matches(given))
    }

    pub(crate) fn vms(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<VmSlot>>> {
        self.vms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The slot of VM `id`, or 404.
    pub fn slot(&self, id: &str) -> Result<Arc<VmSlot>, ApiError> {
        self.vms()
            .get(id)
            .cloned()
            .ok_or_else(|| ApiError::not_found("VM", id))
    }

    /// The slot of `config`, created (state `initial`) if the agent does not
    /// know the VM yet.
    pub(crate) fn slot_or_insert(&self, config: &VmConfig, initial: VmPowerState) -> Arc<VmSlot> {
        let mut vms = self.vms();
        vms.entry(config.id.clone())
            .or_insert_with(|| {
                Arc::new(VmSlot::new(
                    config.clone(),
                    initial,
                    self.run_dir(&config.id),
                    self.changed.clone(),
                ))
            })
            .clone()
    }

    pub(crate) fn forget(&self, id: &str) {
        self.vms().remove(id);
        self.consoles.forget(id);
        let dir = self.run_dir(id);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %dir.display(), error = %e, "cannot remove runtime directory");
            }
        }
        self.changed.notify_one();
    }

    /// Runtime directory of a VM.
    pub fn run_dir(&self, id: &str) -> PathBuf {
        self.config.state_dir.join("vms").join(id)
    }

    /// The datastore named `name`.
    pub fn datastore(&self, name: &str) -> Result<&Datastore, ApiError> {
        self.datastores
            .iter()
            .find(|d| d.name == name)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::NotFound,
                    format!(
                        "datastore '{name}' is not mounted on host '{}'",
                        self.config.name
                    ),
                )
            })
    }

    /// `rel` inside datastore `ds`, refusing escapes.
    pub fn resolve(&self, ds: &str, rel: &str) -> Result<PathBuf, ApiError> {
        self.datastore(ds)?
            .resolve(rel)
            .map_err(|e| disk_error(format!("path '{rel}' on datastore '{ds}'"), e))
    }

    /// Resolves every file of `config`.
    pub fn layout(&self, config: &VmConfig) -> Result<Layout, ApiError> {
        let vm_dir = VmDir::new(self.resolve(&config.datastore, &config.dir)?);
        let disks = config
            .disks
            .iter()
            .map(|d| self.resolve(&d.datastore, &d.path))
            .collect::<Result<Vec<_>, _>>()?;
        // Snapshots: the guest writes the newest overlay of each chain.
        let disks = crate::snapshot::active_disks(vm_dir.path(), config, disks);
        let paths = vdc_qemu::VmPaths::new(self.run_dir(&config.id), vm_dir.path());
        Ok(Layout {
            vm_dir,
            paths,
            disks,
        })
    }

    /// Runtime view of every VM the agent knows.
    pub fn runtimes(&self) -> Vec<VmRuntime> {
        let slots: Vec<_> = self.vms().values().cloned().collect();
        slots.iter().map(|s| s.runtime()).collect()
    }

    /// The host report (capacity, datastores, VMs).
    pub fn host_report(&self, sample_cpu: bool) -> HostReport {
        let (memory_mib, memory_free_mib) = hoststats::memory_mib();
        let cpu_percent = {
            let mut h = self.host_cpu.lock().unwrap_or_else(|p| p.into_inner());
            if sample_cpu {
                h.sample()
            } else {
                h.last_percent()
            }
        };
        let datastores = self
            .datastores
            .iter()
            .map(|d| {
                let cap = d.capacity().unwrap_or(vdc_disk::Capacity {
                    total_bytes: 0,
                    free_bytes: 0,
                });
                DatastoreReport {
                    name: d.name.clone(),
                    path: d.path.display().to_string(),
                    shared: d.shared,
                    capacity_bytes: cap.total_bytes,
                    free_bytes: cap.free_bytes,
                    cache_mode: d.cache,
                    cache_reason: d.cache_reason.clone(),
                }
            })
            .collect();
        HostReport {
            name: self.config.name.clone(),
            address: self.config.address.clone(),
            migration_address: Some(self.config.migration_address.clone()),
            qemu_models: self
                .qemu_models
                .as_ref()
                .map(|m| vdc_types::agent::QemuModelsReport {
                    machine_types: m.machine_types.clone(),
                    cpu_models: m.cpu_models.clone(),
                    cpu_flags: m.cpu_flags.clone(),
                }),
            tls: self.tls.installed(),
            agent_url: self.agent_url(),
            accelerator: self.accelerator,
            qemu_version: self.qemu_version.clone(),
            cpus: hoststats::cpu_count(),
            memory_mib,
            memory_free_mib,
            cpu_percent,
            datastores,
            vms: self.runtimes(),
            agent_started_ms: self.started_ms,
            switches: self.switches.states(),
        }
    }

    /// Base URL of this agent's API.
    pub fn agent_url(&self) -> String {
        let l = self.config.listen;
        if l.ip().is_unspecified() {
            format!("http://{}:{}", self.config.address, l.port())
        } else {
            format!("http://{l}")
        }
    }

    /// Drops VMs that stopped here and were since taken by another host
    /// (a lease of another host is in their directory: it runs them now, or
    /// ran them last). The reads run off the async runtime, each bounded.
    /// At most one check runs at a time, and it stops at the first lease
    /// read that times out, so a hung datastore holds at most one blocked
    /// thread.
    pub fn forget_moved_vms(self: &Arc<Self>) {
        use std::sync::atomic::Ordering;
        if self.moved_check.swap(true, Ordering::SeqCst) {
            return;
        }
        let agent = self.clone();
        tokio::spawn(async move {
            agent.check_moved_vms().await;
            agent.moved_check.store(false, Ordering::SeqCst);
        });
    }

    async fn check_moved_vms(&self) {
        let slots: Vec<_> = self.vms().values().cloned().collect();
        for slot in slots {
            if slot.state().has_process() || slot.op.try_lock().is_err() {
                continue;
            }
            let config = slot.inner().config.clone();
            let Ok(layout) = self.layout(&config) else {
                continue;
            };
            let lock = layout.vm_dir.lock();
            match blocking_lease_io(move || lock.read()).await {
                Ok(Some(lease)) if lease.host != self.config.name => {
                    tracing::info!(vm = %config.name, host = %lease.host, "VM now runs on another host; forgetting it");
                    self.forget(&slot.id);
                }
                Err(e @ vdc_disk::DiskError::LeaseIoTimeout { .. }) => {
                    tracing::warn!(vm = %config.name, error = %e, "datastore does not answer; moved-VM check stopped");
                    return;
                }
                _ => {}
            }
        }
    }

    /// How to start the supervisor of VM `id` whose directory is `vm_dir`
    /// (for an already running QEMU if `qemu_pid` is given).
    pub(crate) fn supervisor_launch(
        &self,
        id: &str,
        vm_dir: &std::path::Path,
        qemu_pid: Option<u32>,
    ) -> vdc_supervisor::client::Launch {
        vdc_supervisor::client::Launch {
            program: self.config.supervision.program(),
            host: self.config.name.clone(),
            vm_id: id.to_string(),
            vm_dir: vm_dir.to_path_buf(),
            run_dir: self.run_dir(id),
            timing: self.config.supervision.lease,
            qemu_pid,
            lease_seen: None,
        }
    }

    /// Releases this host's lease on the VM directory `vm_dir` (when no
    /// supervisor did), off the runtime and bounded; failures are logged.
    pub(crate) async fn release_lease(&self, id: &str, vm_dir: &std::path::Path) {
        let lock = vdc_disk::VmLock::new(vm_dir);
        let host = self.config.name.clone();
        if let Err(e) = blocking_lease_io(move || lock.release(&host, None)).await {
            tracing::warn!(vm = %id, error = %crate::error::chain(&e), "cannot release the lease");
        }
    }
}

/// Longest the agent waits for a datastore during an operation.
pub(crate) const DATASTORE_WAIT: Duration = Duration::from_secs(30);

/// Runs blocking datastore I/O (`what` names it in errors) on the blocking
/// pool, waiting at most [`DATASTORE_WAIT`]: a hung datastore fails the
/// operation instead of stalling the agent.
pub(crate) async fn datastore_io<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::time::timeout(DATASTORE_WAIT, tokio::task::spawn_blocking(f)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ApiError::new(ErrorCode::HostError, format!("{what}: {e}"))),
        Err(_) => Err(ApiError::new(
            ErrorCode::HostError,
            format!(
                "{what}: the datastore did not answer within {} s; check its mount",
                DATASTORE_WAIT.as_secs()
            ),
        )),
    }
}

/// Runs blocking lease I/O on the blocking pool, waiting at most
/// [`LEASE_IO_WAIT`] (a hung call keeps its thread, not the runtime).
pub(crate) async fn blocking_lease_io<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, vdc_disk::DiskError> + Send + 'static,
) -> Result<T, vdc_disk::DiskError> {
    match tokio::time::timeout(LEASE_IO_WAIT, tokio::task::spawn_blocking(f)).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(vdc_disk::DiskError::LeaseIoStopped),
        Err(_) => Err(vdc_disk::DiskError::LeaseIoTimeout {
            after: LEASE_IO_WAIT,
        }),
    }
}
