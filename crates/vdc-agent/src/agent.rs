//! The agent's core: the VMs it knows; the operations on them are in
//! `power`, `provision` and `recover`.
//!
//! # Start
//! 1. Resolve the VM directory and disks through the datastores (a path
//!    outside every datastore is refused).
//! 2. Write `vm.json`, take the VM's lease (`vm.lock`); another host's live
//!    lease refuses the start with [`ErrorCode::Locked`].
//! 3. Create the NICs' tap devices on their bridges.
//! 4. Launch QEMU (resuming from `suspend.state` if the VM was suspended),
//!    then hand the process to a supervisor task that follows its events,
//!    renews the lease and samples its resource use.
//! 5. If anything fails: delete the taps, release the lease, leave no
//!    process.
//!
//! # Suspended VMs and the lease
//! A suspended VM has no process; its memory is in `suspend.state` in its
//! directory. The lease is released on suspend: the suspended state belongs
//! to the VM, and any host that mounts the datastore may resume it.
//!
//! # Restart
//! On start-up the agent reads `<state-dir>/vms/*/` and re-attaches to every
//! QEMU still running (pidfile + QMP socket), takes its lease again and
//! resumes supervision. A VM whose process vanished while the agent was
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

/// Lifetime of a VM lease; renewed every [`LEASE_RENEW`].
pub(crate) const LEASE_TTL: Duration = Duration::from_secs(30);
/// How often a running VM's lease is renewed.
pub(crate) const LEASE_RENEW: Duration = Duration::from_secs(5);
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
    /// Hash of the credential the server presents; `None` until joined.
    server_credential: Mutex<Option<SecretHash>>,
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
            server_credential: Mutex::new(config.server_credential.as_deref().map(SecretHash::of)),
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
    /// (it holds their live lease): the other host reports them now.
    pub fn forget_moved_vms(&self) {
        let slots: Vec<_> = self.vms().values().cloned().collect();
        for slot in slots {
            if slot.state().has_process() || slot.op.try_lock().is_err() {
                continue;
            }
            let config = slot.inner().config.clone();
            let Ok(layout) = self.layout(&config) else {
                continue;
            };
            if let Ok(Some(lease)) = layout.vm_dir.lock().read() {
                if lease.host != self.config.name && lease.expires_ms > vdc_types::now_ms() {
                    tracing::info!(vm = %config.name, host = %lease.host, "VM now runs on another host; forgetting it");
                    self.forget(&slot.id);
                }
            }
        }
    }
}
