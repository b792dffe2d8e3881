//! The agent's core: the VMs it knows and the operations on them.
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
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use vdc_disk::{qemu_img, Datastore, DiskError, VmDir};
use vdc_types::agent::{
    DatastoreReport, DiskSource, HostReport, ImportImageRequest, ImportImageResponse,
    ProvisionVmRequest, VmRuntime,
};
use vdc_types::{Accelerator, ApiError, ErrorCode, VmConfig, VmPowerState};

use crate::console::ConsoleLinks;
use crate::error::{disk_error, host_error};
use crate::hoststats::{self, HostCpu};
use crate::slot::{read_persisted_state, VmSlot, RUNTIME_CONFIG};
use crate::state::Input;
use crate::{supervisor, AgentConfig, AgentError};

/// Lifetime of a VM lease; renewed every [`LEASE_RENEW`].
pub(crate) const LEASE_TTL: Duration = Duration::from_secs(30);
/// How often a running VM's lease is renewed.
pub(crate) const LEASE_RENEW: Duration = Duration::from_secs(5);
/// How long an operation waits for the supervisor to see QEMU exit.
const EXIT_WAIT: Duration = Duration::from_secs(30);

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
    pub datastores: Vec<Datastore>,
    vms: Mutex<BTreeMap<String, Arc<VmSlot>>>,
    /// Woken whenever something worth reporting changed.
    pub changed: Arc<Notify>,
    host_cpu: Mutex<HostCpu>,
    /// Serial console connections (see `console`).
    pub consoles: ConsoleLinks,
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
            let ds = Datastore::new(d.name.clone(), d.path.clone(), d.shared);
            ds.capacity().map_err(|source| AgentError::Datastore {
                name: d.name.clone(),
                path: d.path.clone(),
                source,
            })?;
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
        let mut host_cpu = HostCpu::default();
        host_cpu.sample();
        Ok(Arc::new(Agent {
            agent_id: uuid::Uuid::new_v4().to_string(),
            started_ms: vdc_types::now_ms(),
            accelerator,
            qemu_version,
            datastores,
            vms: Mutex::new(BTreeMap::new()),
            changed: Arc::new(Notify::new()),
            host_cpu: Mutex::new(host_cpu),
            consoles: ConsoleLinks::default(),
            config,
        }))
    }

    fn vms(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<VmSlot>>> {
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
    fn slot_or_insert(&self, config: &VmConfig, initial: VmPowerState) -> Arc<VmSlot> {
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

    fn forget(&self, id: &str) {
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

    // ----- re-attach ---------------------------------------------------

    /// Re-attaches to the VMs recorded in the state directory.
    pub async fn recover(self: &Arc<Self>) {
        let vms_dir = self.config.state_dir.join("vms");
        let entries = match std::fs::read_dir(&vms_dir) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(path = %vms_dir.display(), error = %e, "cannot scan the state directory");
                return;
            }
        };
        for entry in entries.flatten() {
            let run_dir = entry.path();
            let config: VmConfig = match std::fs::read(run_dir.join(RUNTIME_CONFIG))
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(path = %run_dir.display(), error = %e, "skipping runtime directory without a readable vm.json");
                    continue;
                }
            };
            if let Err(e) = self.recover_one(config.clone(), &run_dir).await {
                tracing::error!(vm = %config.name, error = %e, "cannot recover VM");
            }
        }
        self.changed.notify_one();
    }

    async fn recover_one(
        self: &Arc<Self>,
        config: VmConfig,
        run_dir: &Path,
    ) -> Result<(), ApiError> {
        let persisted = read_persisted_state(run_dir);
        let last = persisted
            .as_ref()
            .map(|p| p.state)
            .unwrap_or(VmPowerState::Stopped);
        let taps = persisted.map(|p| p.taps).unwrap_or_default();
        let slot = self.slot_or_insert(&config, last);
        slot.inner().taps = taps.clone();
        let layout = self.layout(&config)?;
        let attached = vdc_qemu::Vm::attach(&layout.paths)
            .await
            .map_err(|e| host_error("re-attach to QEMU", &e))?;
        let lock = layout.vm_dir.lock();
        match attached {
            Some(vm) => {
                let vm = Arc::new(vm);
                match lock
                    .acquire(&self.config.name, &self.agent_id, LEASE_TTL)
                    .await
                {
                    Ok(_) => {}
                    Err(DiskError::Locked { holder_host, .. }) => {
                        // Another host took the VM over while this agent was
                        // away: this copy must not keep running.
                        tracing::error!(vm = %config.name, holder = %holder_host, "VM lease held by another host; powering off the local copy");
                        slot.inner().exit_requested = true;
                        if let Err(e) = vm.power_off().await {
                            tracing::error!(vm = %config.name, error = %e, "cannot power off fenced VM");
                        }
                        supervisor::cleanup_network(&taps).await;
                        slot.set_state(VmPowerState::Stopped);
                        return Ok(());
                    }
                    Err(e) => {
                        tracing::warn!(vm = %config.name, error = %crate::error::chain(&e), "cannot renew the lease after restart")
                    }
                }
                let state = match vm.run_state().await {
                    Ok(vdc_qemu::RunState::Running) => VmPowerState::Running,
                    Ok(_) => VmPowerState::Paused,
                    Err(_) => VmPowerState::Running,
                };
                {
                    let mut inner = slot.inner();
                    inner.runtime.pid = Some(vm.pid());
                }
                // Keep a transitional state (e.g. shutting down) only if
                // QEMU agrees a process runs; otherwise use QEMU's view.
                if !matches!(last, VmPowerState::ShuttingDown) || state != VmPowerState::Running {
                    slot.set_state(state);
                } else {
                    slot.set_state(VmPowerState::ShuttingDown);
                }
                supervisor::start(self.clone(), slot.clone(), vm, &layout);
                tracing::info!(vm = %config.name, "re-attached");
            }
            None => {
                let state = if layout.vm_dir.suspend_state().exists() {
                    VmPowerState::Suspended
                } else if last.has_process() || last == VmPowerState::Crashed {
                    VmPowerState::Crashed
                } else {
                    last
                };
                if last.has_process() {
                    supervisor::cleanup_network(&taps).await;
                    if let Err(e) = lock.release(&self.config.name) {
                        tracing::warn!(vm = %config.name, error = %crate::error::chain(&e), "cannot release lease");
                    }
                }
                slot.inner().taps.clear();
                slot.set_state(state);
            }
        }
        Ok(())
    }

    // ----- operations --------------------------------------------------

    /// `PUT /vms/{id}`: create directory, disks and `vm.json`.
    pub async fn provision(
        &self,
        id: &str,
        req: ProvisionVmRequest,
    ) -> Result<VmRuntime, ApiError> {
        let config = req.config;
        check_config(id, &config)?;
        if let Ok(slot) = self.slot(id) {
            if slot.state().has_process() {
                return Err(ApiError::invalid_state(format!(
                    "VM '{}' is {}; stop it before provisioning it again",
                    config.name,
                    slot.state()
                )));
            }
        }
        let layout = self.layout(&config)?;
        if layout.vm_dir.exists() {
            return match layout.vm_dir.read_config() {
                Ok(existing) if existing.id == config.id => {
                    let slot = self.slot_or_insert(&config, VmPowerState::Stopped);
                    let _op = slot.op.lock().await;
                    slot.inner().config = config;
                    slot.persist_config()
                        .map_err(|e| host_error("cannot write the runtime directory", &e))?;
                    Ok(slot.runtime())
                }
                _ => Err(ApiError::new(
                    ErrorCode::AlreadyExists,
                    format!(
                        "directory '{}' on datastore '{}' already exists and belongs to another VM",
                        config.dir, config.datastore
                    ),
                )),
            };
        }
        for (disk, path) in config.disks.iter().zip(&layout.disks) {
            if path.exists() {
                return Err(ApiError::new(
                    ErrorCode::AlreadyExists,
                    format!(
                        "disk file '{}' on datastore '{}' already exists",
                        disk.path, disk.datastore
                    ),
                ));
            }
        }
        let template = match &req.boot_source {
            DiskSource::Blank => None,
            DiskSource::Template {
                datastore,
                path,
                linked,
            } => {
                let p = self.resolve(datastore, path)?;
                if !p.is_file() {
                    return Err(ApiError::new(
                        ErrorCode::NotFound,
                        format!("template disk '{path}' not found on datastore '{datastore}'"),
                    ));
                }
                Some((p, *linked))
            }
        };
        layout.vm_dir.create().map_err(|e| {
            disk_error(
                format!("cannot create the directory of VM '{}'", config.name),
                e,
            )
        })?;
        let made = self
            .make_disks(&config, &layout, template)
            .await
            .and_then(|()| {
                layout
                    .vm_dir
                    .write_config(&config)
                    .map_err(|e| disk_error("cannot write vm.json", e))
            });
        if let Err(e) = made {
            for p in &layout.disks {
                let _ = std::fs::remove_file(p);
            }
            let _ = std::fs::remove_file(layout.vm_dir.config_path());
            let _ = std::fs::remove_dir(layout.vm_dir.path());
            return Err(e);
        }
        let slot = self.slot_or_insert(&config, VmPowerState::Stopped);
        slot.inner().config = config.clone();
        slot.persist_config()
            .map_err(|e| host_error("cannot write the runtime directory", &e))?;
        self.changed.notify_one();
        tracing::info!(vm = %config.name, "provisioned");
        Ok(slot.runtime())
    }

    async fn make_disks(
        &self,
        config: &VmConfig,
        layout: &Layout,
        template: Option<(PathBuf, bool)>,
    ) -> Result<(), ApiError> {
        for (i, (disk, path)) in config.disks.iter().zip(&layout.disks).enumerate() {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| {
                    host_error(
                        format!("cannot create the directory of disk '{}'", disk.name),
                        &e,
                    )
                })?;
            }
            let what = format!("cannot create disk '{}'", disk.name);
            match (i, &template) {
                (0, Some((src, linked))) => {
                    if *linked {
                        qemu_img::create_linked_clone(path, src).await
                    } else {
                        qemu_img::convert_to_qcow2(src, path).await
                    }
                    .map_err(|e| disk_error(&what, e))?;
                    let size = qemu_img::info(path)
                        .await
                        .map_err(|e| disk_error(&what, e))?
                        .virtual_size;
                    if disk.size_bytes > size {
                        qemu_img::grow(path, disk.size_bytes)
                            .await
                            .map_err(|e| disk_error(&what, e))?;
                    }
                }
                _ => qemu_img::create_qcow2(path, disk.size_bytes)
                    .await
                    .map_err(|e| disk_error(&what, e))?,
            }
        }
        Ok(())
    }

    /// `POST /vms/{id}/start`.
    pub async fn start(
        self: &Arc<Self>,
        id: &str,
        config: VmConfig,
    ) -> Result<VmRuntime, ApiError> {
        check_config(id, &config)?;
        let layout = self.layout(&config)?;
        if !layout.vm_dir.exists() {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!(
                    "directory of VM '{}' ('{}' on datastore '{}') not found; provision the VM first",
                    config.name, config.dir, config.datastore
                ),
            ));
        }
        let known = self.vms().contains_key(id);
        let slot = self.slot_or_insert(&config, VmPowerState::Stopped);
        let result = self.start_in_slot(&slot, &layout, config).await;
        if result.is_err() && !known && !slot.state().has_process() {
            // A VM this host did not know and could not start stays unknown
            // here (e.g. it runs on the host holding its lock).
            self.forget(id);
        }
        result
    }

    async fn start_in_slot(
        self: &Arc<Self>,
        slot: &Arc<VmSlot>,
        layout: &Layout,
        config: VmConfig,
    ) -> Result<VmRuntime, ApiError> {
        let _op = slot.op.lock().await;
        let current = slot.state();
        if matches!(current, VmPowerState::Running | VmPowerState::Paused) {
            return Ok(slot.runtime());
        }
        if current.has_process() {
            return Err(ApiError::invalid_state(format!(
                "VM '{}' is {current}; wait for it to finish",
                config.name
            )));
        }
        for (disk, path) in config.disks.iter().zip(&layout.disks) {
            if !path.is_file() {
                return Err(ApiError::new(
                    ErrorCode::NotFound,
                    format!(
                        "disk '{}' ('{}' on datastore '{}') not found",
                        disk.name, disk.path, disk.datastore
                    ),
                ));
            }
        }
        let mut taps = Vec::new();
        let mut nics = Vec::new();
        for (i, nic) in config.nics.iter().enumerate() {
            let bridge = nic
                .bridge
                .clone()
                .or_else(|| self.config.bridge_for_network.get(&nic.network).cloned())
                .ok_or_else(|| {
                    ApiError::invalid(format!(
                        "NIC {i} of VM '{}' (network '{}') names no bridge",
                        config.name, nic.network
                    ))
                })?;
            let tap = vdc_net::tap_name(&config.id, i as u32);
            taps.push((tap.clone(), bridge));
            nics.push(vdc_qemu::NicDevice {
                id: format!("net{i}"),
                mac: nic.mac.clone(),
                tap,
            });
        }

        let lock = layout.vm_dir.lock();
        match lock
            .acquire(&self.config.name, &self.agent_id, LEASE_TTL)
            .await
        {
            Ok(_) => {}
            Err(DiskError::Locked {
                holder_host,
                expires_ms,
            }) => {
                let secs = expires_ms
                    .saturating_sub(vdc_types::now_ms())
                    .div_ceil(1000);
                return Err(ApiError::new(
                    ErrorCode::Locked,
                    format!(
                        "VM '{}' is locked by host '{holder_host}' (lease expires in {secs} s); stop it there first",
                        config.name
                    ),
                )
                .with_details(serde_json::json!({ "holder_host": holder_host, "expires_ms": expires_ms })));
            }
            Err(e) => return Err(disk_error(format!("cannot lock VM '{}'", config.name), e)),
        }
        // Only the lease holder may rewrite the VM's files.
        let saved = layout
            .vm_dir
            .write_config(&config)
            .map_err(|e| disk_error("cannot write vm.json", e))
            .and_then(|()| {
                slot.inner().config = config.clone();
                slot.persist_config()
                    .map_err(|e| host_error("cannot write the runtime directory", &e))
            });
        if let Err(e) = saved {
            if let Err(le) = lock.release(&self.config.name) {
                tracing::warn!(error = %crate::error::chain(&le), "cannot release lease after a failed start");
            }
            return Err(e);
        }

        let suspended = layout.vm_dir.suspend_state().exists();
        let previous = if suspended {
            VmPowerState::Suspended
        } else {
            VmPowerState::Stopped
        };
        slot.apply(Input::Launch);
        let fail = |e: ApiError, created: Vec<String>| {
            let lock = lock.clone();
            let host = self.config.name.clone();
            let slot = slot.clone();
            async move {
                supervisor::cleanup_network(&created).await;
                if let Err(le) = lock.release(&host) {
                    tracing::warn!(error = %crate::error::chain(&le), "cannot release lease after a failed start");
                }
                slot.inner().taps.clear();
                slot.apply(Input::LaunchFailed { previous });
                e
            }
        };

        let mut created = Vec::new();
        for (tap, bridge) in &taps {
            if let Err(e) = vdc_net::create_tap(tap, bridge).await {
                let err = match e {
                    vdc_net::NetError::NoBridge(_) => ApiError::invalid(format!(
                        "cannot start VM '{}': {}",
                        config.name,
                        crate::error::chain(&e)
                    )),
                    _ => host_error(format!("cannot create tap device '{tap}'"), &e),
                };
                return Err(fail(err, created).await);
            }
            created.push(tap.clone());
        }
        slot.inner().taps = created.clone();

        let mut oem = vec![format!("vdc.hostname={}", config.hostname)];
        if let Some(nic) = config.nics.first() {
            if let Some(ip) = &nic.ip {
                oem.push(format!("vdc.ip={ip}"));
            }
            if let Some(gw) = &nic.gateway {
                oem.push(format!("vdc.gw={gw}"));
            }
        }
        let spec = vdc_qemu::MachineSpec {
            id: config.id.clone(),
            name: config.name.clone(),
            cpus: config.cpus,
            memory_mib: config.memory_mib,
            accelerator: self.accelerator,
            disks: config
                .disks
                .iter()
                .zip(&layout.disks)
                .map(|(d, p)| vdc_qemu::DriveSpec {
                    node_name: d.name.clone(),
                    path: p.clone(),
                    read_only: false,
                })
                .collect(),
            nics,
            smbios_oem_strings: oem,
            incoming: suspended
                .then(|| vdc_qemu::Incoming::StateFile(layout.vm_dir.suspend_state())),
        };
        let paths = layout.paths.clone();
        let launched = vdc_qemu::Vm::launch(&spec, &paths).await;
        let vm = match launched {
            Ok(vm) => Arc::new(vm),
            Err(e) => {
                let err = host_error(format!("cannot start VM '{}'", config.name), &e);
                return Err(fail(err, created).await);
            }
        };
        if suspended {
            let state = layout.vm_dir.suspend_state();
            if let Err(e) = std::fs::remove_file(&state) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %state.display(), error = %e, "cannot remove the used state file");
                }
            }
        }
        {
            let mut inner = slot.inner();
            inner.exit_requested = false;
            inner.runtime.pid = Some(vm.pid());
            inner.runtime.guest = Default::default();
        }
        supervisor::start(self.clone(), slot.clone(), vm, layout);
        tracing::info!(vm = %config.name, resumed = suspended, "started");
        Ok(slot.apply(Input::Launched))
    }

    /// The slot and its QEMU handle, or 404 / 409.
    fn running(&self, id: &str) -> Result<(Arc<VmSlot>, Arc<vdc_qemu::Vm>), ApiError> {
        let slot = self.slot(id)?;
        match slot.vm() {
            Some(vm) => Ok((slot, vm)),
            None => Err(ApiError::invalid_state(format!(
                "VM '{}' is {}; it has no process on host '{}'",
                slot.inner().config.name,
                slot.state(),
                self.config.name
            ))),
        }
    }

    /// Waits for the supervisor of `slot` to finish after QEMU exited.
    async fn wait_supervisor(&self, slot: &VmSlot) {
        let handle = slot.inner().supervisor.take();
        if let Some(h) = handle {
            if tokio::time::timeout(EXIT_WAIT, h).await.is_err() {
                tracing::warn!(vm = %slot.id, "supervisor did not finish in time");
            }
        }
    }

    /// `POST /vms/{id}/shutdown`: ACPI power button, power off after
    /// `timeout`.
    pub async fn shutdown(&self, id: &str, timeout: Duration) -> Result<VmRuntime, ApiError> {
        let slot = self.slot(id)?;
        let _op = slot.op.lock().await;
        if !slot.state().has_process() {
            return Ok(slot.runtime());
        }
        let (slot, vm) = self.running(id)?;
        slot.inner().exit_requested = true;
        slot.apply(Input::PowerdownRequested);
        if let Err(e) = vm.shutdown(timeout).await {
            return Err(host_error("shutdown failed", &e));
        }
        self.wait_supervisor(&slot).await;
        Ok(slot.runtime())
    }

    /// `POST /vms/{id}/poweroff`.
    pub async fn power_off(&self, id: &str) -> Result<VmRuntime, ApiError> {
        let slot = self.slot(id)?;
        let _op = slot.op.lock().await;
        if !slot.state().has_process() {
            return Ok(slot.runtime());
        }
        let (slot, vm) = self.running(id)?;
        slot.inner().exit_requested = true;
        if let Err(e) = vm.power_off().await {
            return Err(host_error("power off failed", &e));
        }
        self.wait_supervisor(&slot).await;
        Ok(slot.runtime())
    }

    /// `POST /vms/{id}/reset`.
    pub async fn reset(&self, id: &str) -> Result<VmRuntime, ApiError> {
        self.qemu_op(
            id,
            "reset",
            Input::Reset,
            |vm| async move { vm.reset().await },
        )
        .await
    }

    /// `POST /vms/{id}/pause`.
    pub async fn pause(&self, id: &str) -> Result<VmRuntime, ApiError> {
        self.qemu_op(
            id,
            "pause",
            Input::Paused,
            |vm| async move { vm.pause().await },
        )
        .await
    }

    /// `POST /vms/{id}/resume`.
    pub async fn resume(&self, id: &str) -> Result<VmRuntime, ApiError> {
        self.qemu_op(id, "resume", Input::Resumed, |vm| async move {
            vm.resume().await
        })
        .await
    }

    /// Runs one QMP operation on a VM with a process, under the VM's
    /// operation lock, then feeds `input` to its state machine.
    async fn qemu_op<F, Fut>(
        &self,
        id: &str,
        what: &str,
        input: Input,
        op: F,
    ) -> Result<VmRuntime, ApiError>
    where
        F: FnOnce(Arc<vdc_qemu::Vm>) -> Fut,
        Fut: std::future::Future<Output = Result<(), vdc_qemu::QemuError>>,
    {
        let slot = self.slot(id)?;
        let _op = slot.op.lock().await;
        let (slot, vm) = self.running(id)?;
        op(vm)
            .await
            .map_err(|e| host_error(format!("{what} failed"), &e))?;
        if matches!(input, Input::Reset) {
            slot.inner().runtime.guest.ready = false;
        }
        Ok(slot.apply(input))
    }

    /// `POST /vms/{id}/suspend`: memory to `suspend.state`, QEMU exits, the
    /// lease is released.
    pub async fn suspend(&self, id: &str) -> Result<VmRuntime, ApiError> {
        let slot = self.slot(id)?;
        let _op = slot.op.lock().await;
        let (slot, vm) = self.running(id)?;
        if !matches!(slot.state(), VmPowerState::Running | VmPowerState::Paused) {
            return Err(ApiError::invalid_state(format!(
                "VM '{}' is {}; only a running or paused VM can be suspended",
                slot.inner().config.name,
                slot.state()
            )));
        }
        slot.apply(Input::SuspendStarted);
        let v = vm.clone();
        let vm_id = id.to_string();
        let saved = v
            .suspend_to_file(|p| tracing::debug!(vm = %vm_id, percent = p, "suspending"))
            .await;
        match saved {
            Ok(()) => {
                self.wait_supervisor(&slot).await;
                Ok(slot.apply(Input::SuspendDone))
            }
            Err(e) => {
                let err = host_error("suspend failed", &e);
                if vm.has_exited() {
                    self.wait_supervisor(&slot).await;
                    slot.apply(Input::SuspendFailed { running: false });
                    slot.apply(Input::Exited { expected: false });
                } else {
                    let running = matches!(vm.run_state().await, Ok(vdc_qemu::RunState::Running));
                    slot.apply(Input::SuspendFailed { running });
                }
                Err(err)
            }
        }
    }

    /// `DELETE /vms/{id}`: remove the VM's files; it must have no process.
    pub async fn destroy(&self, id: &str, config: VmConfig) -> Result<(), ApiError> {
        check_config(id, &config)?;
        let slot = self.slot(id).ok();
        let _op = match &slot {
            Some(s) => Some(s.op.lock().await),
            None => None,
        };
        if let Some(s) = &slot {
            if s.state().has_process() {
                return Err(ApiError::invalid_state(format!(
                    "VM '{}' is {}; stop it before destroying it",
                    config.name,
                    s.state()
                )));
            }
        }
        let layout = self.layout(&config)?;
        if slot.is_none() && !layout.vm_dir.exists() {
            return Err(ApiError::not_found("VM", &config.name));
        }
        // Never remove the files of another VM that happens to use the
        // same directory (a name reused on a shared datastore).
        if let Ok(on_disk) = layout.vm_dir.read_config() {
            if on_disk.id != config.id {
                return Err(ApiError::new(
                    vdc_types::ErrorCode::InvalidState,
                    format!(
                        "the directory of VM '{}' holds another VM (id {}); nothing was removed",
                        config.name, on_disk.id
                    ),
                ));
            }
        }
        let mut in_dir = Vec::new();
        for disk in &layout.disks {
            if disk.parent() == Some(layout.vm_dir.path()) {
                if let Some(name) = disk.file_name() {
                    in_dir.push(name.to_string_lossy().into_owned());
                }
            } else {
                match std::fs::remove_file(disk) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(host_error(
                            format!("cannot remove disk {}", disk.display()),
                            &e,
                        ))
                    }
                }
            }
        }
        layout
            .vm_dir
            .remove(&self.config.name, &in_dir)
            .map_err(|e| {
                disk_error(
                    format!("cannot remove the directory of VM '{}'", config.name),
                    e,
                )
            })?;
        self.forget(id);
        tracing::info!(vm = %config.name, "destroyed");
        Ok(())
    }

    /// `POST /images/import`: convert `source` into a qcow2 in a datastore.
    pub async fn import_image(
        &self,
        req: ImportImageRequest,
    ) -> Result<ImportImageResponse, ApiError> {
        let source = PathBuf::from(&req.source);
        if !source.is_absolute() {
            return Err(ApiError::invalid(format!(
                "image source '{}' must be an absolute path on host '{}'",
                req.source, self.config.name
            )));
        }
        if !source.is_file() {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!(
                    "image '{}' not found on host '{}'",
                    req.source, self.config.name
                ),
            ));
        }
        let dest = self.resolve(&req.datastore, &req.path)?;
        if dest.exists() {
            return Err(ApiError::new(
                ErrorCode::AlreadyExists,
                format!(
                    "'{}' already exists on datastore '{}'",
                    req.path, req.datastore
                ),
            ));
        }
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| host_error("cannot create the target directory", &e))?;
        }
        let what = format!("cannot import '{}'", req.source);
        let result = async {
            qemu_img::convert_to_qcow2(&source, &dest).await?;
            qemu_img::info(&dest).await
        }
        .await;
        match result {
            Ok(info) => Ok(ImportImageResponse {
                size_bytes: info.virtual_size,
            }),
            Err(e) => {
                let _ = std::fs::remove_file(&dest);
                Err(disk_error(what, e))
            }
        }
    }
}

/// Checks a configuration against the id in the URL and basic sanity.
fn check_config(id: &str, config: &VmConfig) -> Result<(), ApiError> {
    if config.id != id {
        return Err(ApiError::invalid(format!(
            "config id '{}' does not match the VM id '{id}' in the URL",
            config.id
        )));
    }
    if config.version > vdc_types::vm::VM_CONFIG_VERSION {
        return Err(ApiError::invalid(format!(
            "config version {} is newer than this agent understands ({})",
            config.version,
            vdc_types::vm::VM_CONFIG_VERSION
        )));
    }
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') || id.is_empty() || id.len() > 64
    {
        return Err(ApiError::invalid(format!(
            "VM id '{id}' must be letters, digits and '-'"
        )));
    }
    vdc_types::names::validate_name("VM", &config.name).map_err(ApiError::invalid)?;
    if config.disks.is_empty() {
        return Err(ApiError::invalid(format!(
            "VM '{}' has no disk",
            config.name
        )));
    }
    for d in &config.disks {
        let ok = d.name.starts_with(|c: char| c.is_ascii_alphabetic())
            && d.name.len() <= 31
            && d.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(ApiError::invalid(format!(
                "disk name '{}' must start with a letter and hold letters, digits, '-' or '_'",
                d.name
            )));
        }
        if d.size_bytes == 0 {
            return Err(ApiError::invalid(format!("disk '{}' has size 0", d.name)));
        }
    }
    if config.cpus == 0 || config.memory_mib < 16 {
        return Err(ApiError::invalid(format!(
            "VM '{}' needs at least 1 CPU and 16 MiB of memory",
            config.name
        )));
    }
    Ok(())
}
