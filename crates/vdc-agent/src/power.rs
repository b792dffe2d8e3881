//! Power operations on a VM: start (the VM's supervisor and its lease,
//! taps, QEMU, monitor), shutdown, power off, reset, pause, resume and
//! suspend to disk.

use std::sync::Arc;
use std::time::Duration;

use vdc_types::agent::VmRuntime;
use vdc_types::{ApiError, ErrorCode, VmConfig, VmPowerState};

use crate::error::{disk_error, host_error};
use crate::slot::VmSlot;
use crate::state::Input;
use crate::supervisor;

use crate::agent::{datastore_io, Agent, Layout, EXIT_WAIT};
use crate::provision::check_config;

/// The tap ports a VM needs and its NIC devices.
pub(crate) type NicPlan = (Vec<vdc_net::TapPort>, Vec<vdc_qemu::NicDevice>);

/// Tap of NIC `index` of `nics` of VM `vm_id`: numbered like its device
/// id (`net<k>` → k, a hot-plug NIC on port p → 100 + p), so it stays the
/// same while hot-plug NICs come and go.
pub(crate) fn nic_tap(vm_id: &str, nics: &[vdc_types::NicSpec], index: usize) -> String {
    let n = match nics.get(index).and_then(|n| n.port) {
        Some(p) => 100 + p,
        None => nics[..index.min(nics.len())]
            .iter()
            .filter(|n| n.port.is_none())
            .count() as u32,
    };
    vdc_net::tap_name(vm_id, n)
}

impl Agent {
    /// `POST /vms/{id}/start`.
    pub async fn start(
        self: &Arc<Self>,
        id: &str,
        config: VmConfig,
    ) -> Result<VmRuntime, ApiError> {
        check_config(id, &config)?;
        let layout = self.layout(&config)?;
        let vm_dir = layout.vm_dir.clone();
        if !datastore_io("cannot read the VM directory", move || vm_dir.exists()).await? {
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
        if let Some(models) = &self.qemu_models {
            models.check(&config.machine_type, &config.cpu_model).map_err(|why| {
                ApiError::invalid_state(format!(
                    "VM '{}' cannot run on host '{}': {why}; start it on a host whose QEMU offers it",
                    config.name, self.config.name
                ))
            })?;
        }
        let disks = layout.disks.clone();
        let missing = datastore_io("cannot read the VM's disks", move || {
            disks.iter().position(|p| !p.is_file())
        })
        .await?;
        if let Some(disk) = missing.and_then(|i| config.disks.get(i)) {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!(
                    "disk '{}' ('{}' on datastore '{}') not found",
                    disk.name, disk.path, disk.datastore
                ),
            ));
        }
        let (taps, nics) = self.nic_plan(&config)?;

        // A supervisor left from an abandoned start of this VM (no QEMU
        // runs, or the state would have a process) must not guard the new
        // QEMU next to ours.
        if let Some(pid) = vdc_supervisor::client::find(&self.run_dir(&config.id)) {
            tracing::warn!(vm = %config.name, pid, "stopping a leftover VM supervisor");
            let old = vdc_qemu::process::Process::from_pid(pid);
            old.signal(libc::SIGKILL);
            old.wait_for(Duration::from_secs(5)).await;
        }
        let mut launch = self.supervisor_launch(&config.id, layout.vm_dir.path(), None);
        // A failover: this host has watched another host's lease of the VM;
        // the supervisor continues that watch and QEMU is prepared, vCPUs
        // stopped, while it waits (see `prelaunch`).
        launch.lease_seen = self
            .lease_watches
            .seen(&config.id)
            .filter(|s| s.key.host != self.config.name);
        let ahead = launch.lease_seen.is_some();
        let spawned = vdc_supervisor::client::spawn(&launch).map_err(|e| {
            host_error(
                format!("cannot start the supervisor of VM '{}'", config.name),
                &e,
            )
        })?;
        let prepare = async {
            if ahead {
                self.launch_paused(&config, layout).await
            } else {
                None
            }
        };
        let (hello, prepared) = tokio::join!(spawned.hello(), prepare);
        let leased = match hello {
            Ok(started) => match &started.hello {
                vdc_supervisor::Hello::Leased { .. } => Ok(started),
                vdc_supervisor::Hello::Locked {
                    holder_host,
                    generation,
                } => Err(ApiError::new(
                    ErrorCode::Locked,
                    format!(
                        "VM '{}' is locked by host '{holder_host}', which keeps renewing its lease; stop it there first",
                        config.name
                    ),
                )
                .with_details(serde_json::json!({ "holder_host": holder_host, "generation": generation }))),
                vdc_supervisor::Hello::Failed { message } => Err(ApiError::new(
                    ErrorCode::HostError,
                    format!("cannot take the lease of VM '{}': {message}", config.name),
                )),
            },
            Err(e) => Err(host_error(
                format!("cannot start the supervisor of VM '{}'", config.name),
                &e,
            )),
        };
        let mut guard = match leased {
            Ok(g) => g,
            Err(e) => {
                if let Some(p) = prepared {
                    p.discard().await;
                }
                return Err(e);
            }
        };
        // Only the lease holder may rewrite the VM's files.
        let (vm_dir, to_save) = (layout.vm_dir.clone(), config.clone());
        let saved = datastore_io("cannot write vm.json", move || {
            vm_dir.write_config(&to_save)
        })
        .await
        .and_then(|r| r.map_err(|e| disk_error("cannot write vm.json", e)))
        .and_then(|()| {
            slot.inner().config = config.clone();
            slot.persist_config()
                .map_err(|e| host_error("cannot write the runtime directory", &e))
        });
        if let Err(e) = saved {
            if let Some(p) = prepared {
                p.discard().await;
            }
            guard.abort().await;
            return Err(e);
        }

        // A prepared QEMU was checked to have no state file to resume.
        let suspended = match &prepared {
            Some(_) => false,
            None => {
                let state_file = layout.vm_dir.suspend_state();
                match datastore_io("cannot read the VM directory", move || state_file.exists())
                    .await
                {
                    Ok(s) => s,
                    Err(e) => {
                        guard.abort().await;
                        return Err(e);
                    }
                }
            }
        };
        let previous = if suspended {
            VmPowerState::Suspended
        } else {
            VmPowerState::Stopped
        };
        slot.apply(Input::Launch);
        let fail = |e: ApiError, created: Vec<String>, guard: vdc_supervisor::client::Started| {
            let slot = slot.clone();
            async move {
                supervisor::cleanup_network(&created).await;
                guard.abort().await;
                slot.inner().taps.clear();
                slot.apply(Input::LaunchFailed { previous });
                e
            }
        };

        let vm = match prepared {
            Some(p) => {
                slot.inner().taps = p.taps.clone();
                // The lease is ours: the vCPUs may run.
                if let Err(e) = p.vm.resume().await {
                    let err = host_error(format!("cannot start VM '{}'", config.name), &e);
                    p.vm.kill();
                    p.vm.wait_exit_for(Duration::from_secs(10)).await;
                    return Err(fail(err, p.taps, guard).await);
                }
                tracing::info!(vm = %config.name, "prepared QEMU continued: the lease is this host's");
                Arc::new(p.vm)
            }
            None => {
                let created = match self.create_taps(&config.name, &taps).await {
                    Ok(c) => c,
                    Err(e) => return Err(fail(e, Vec::new(), guard).await),
                };
                slot.inner().taps = created.clone();
                let spec = self.machine_spec(
                    &config,
                    layout,
                    nics,
                    suspended.then(|| vdc_qemu::Incoming::StateFile(layout.vm_dir.suspend_state())),
                );
                let paths = layout.paths.clone();
                match vdc_qemu::Vm::launch(&spec, &paths).await {
                    Ok(vm) => Arc::new(vm),
                    Err(e) => {
                        let err = host_error(format!("cannot start VM '{}'", config.name), &e);
                        return Err(fail(err, created, guard).await);
                    }
                }
            }
        };
        if let Err(e) = guard.attach(vm.pid()).await {
            // The supervisor then finds QEMU by its pidfile.
            tracing::warn!(vm = %config.name, error = %crate::error::chain(&e), "cannot give QEMU's pid to its supervisor");
        }
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
        slot.inner().vm_supervisor = Some(guard.process.clone());
        supervisor::start(self.clone(), slot.clone(), vm, layout);
        tracing::info!(vm = %config.name, resumed = suspended, "started");
        self.ports_changed();
        Ok(slot.apply(Input::Launched))
    }

    /// The tap ports (tap, bridge of the NIC's segment) and NIC devices of
    /// `config`.
    pub(crate) fn nic_plan(&self, config: &VmConfig) -> Result<NicPlan, ApiError> {
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
            let tap = nic_tap(&config.id, &config.nics, i);
            taps.push(vdc_net::TapPort {
                tap: tap.clone(),
                bridge,
                shaping: nic.shaping,
                vlan_bridge: nic.switch.is_some() && nic.vlan.is_some_and(|v| v != 1),
            });
            nics.push(vdc_qemu::NicDevice {
                id: vdc_types::NicSpec::device_id(&config.nics, i),
                mac: nic.mac.clone(),
                tap,
                port: nic.port,
            });
        }

        Ok((taps, nics))
    }

    /// The QEMU machine of `config`: the same device model for a fresh
    /// start, a resume and an incoming migration.
    pub(crate) fn machine_spec(
        &self,
        config: &VmConfig,
        layout: &Layout,
        nics: Vec<vdc_qemu::NicDevice>,
        incoming: Option<vdc_qemu::Incoming>,
    ) -> vdc_qemu::MachineSpec {
        let mut oem = vec![format!("vdc.hostname={}", config.hostname)];
        if let Some(nic) = config.nics.first() {
            if let Some(ip) = &nic.ip {
                oem.push(format!("vdc.ip={ip}"));
            } else if nic.dhcp {
                oem.push("vdc.ip=dhcp".to_string());
            }
            if let Some(gw) = &nic.gateway {
                oem.push(format!("vdc.gw={gw}"));
            }
        }
        vdc_qemu::MachineSpec {
            id: config.id.clone(),
            name: config.name.clone(),
            cpus: config.cpus,
            memory_mib: config.memory_mib,
            accelerator: self.accelerator,
            machine_type: config.machine_type.clone(),
            cpu_model: config.cpu_model.clone(),
            disks: config
                .disks
                .iter()
                .zip(&layout.disks)
                .map(|(d, p)| vdc_qemu::DriveSpec {
                    node_name: d.name.clone(),
                    path: p.clone(),
                    read_only: false,
                    cache: self
                        .datastore(&d.datastore)
                        .map(|ds| ds.cache)
                        .unwrap_or_default(),
                })
                .collect(),
            nics,
            smbios_oem_strings: oem,
            incoming,
            paused: false,
            guest_agent: config.guest_agent,
            hotplug_ports: config.hotplug_ports,
        }
    }

    /// The slot and its QEMU handle, or 404 / 409.
    pub(crate) fn running(&self, id: &str) -> Result<(Arc<VmSlot>, Arc<vdc_qemu::Vm>), ApiError> {
        let slot = self.slot(id)?;
        match slot.vm() {
            Some(vm) => Ok((slot, vm)),
            None => {
                // One lock at a time: `state()` takes the slot's lock too.
                let state = slot.state();
                let name = slot.inner().config.name.clone();
                Err(ApiError::invalid_state(format!(
                    "VM '{name}' is {state}; it has no process on host '{}'",
                    self.config.name
                )))
            }
        }
    }

    /// Waits for the monitor of `slot` to finish after QEMU exited.
    pub(crate) async fn wait_supervisor(&self, slot: &VmSlot) {
        let handle = slot.inner().monitor.take();
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
}
