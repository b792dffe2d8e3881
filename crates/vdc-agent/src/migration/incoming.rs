//! The destination of a live migration: QEMU started with `-incoming
//! defer` and the VM's identical configuration, a stream accepted on the
//! host's migration address, the guest resumed by QEMU the moment the
//! stream completes, its address announced, and the lease taken over.

use std::sync::Arc;
use std::time::Duration;

use vdc_types::job::JobResult;
use vdc_types::migration::{IncomingRequest, MigrationJobInfo};
use vdc_types::{ApiError, ErrorCode, VmPowerState};

use crate::agent::{datastore_io, Agent, Layout};
use crate::error::host_error;
use crate::jobs::{job_cancelled, JobCell};
use crate::provision::check_config;
use crate::slot::VmSlot;
use crate::state::Input;
use crate::supervisor;

/// How often the destination looks at its migration besides events.
const TICK: Duration = Duration::from_millis(500);
/// Longest wait for the source to name this host in the lease once the
/// stream completed.
const HAND_OVER_LIMIT: Duration = Duration::from_secs(15);
/// Longest wait for the source to begin sending.
const FIRST_BYTE_LIMIT: Duration = Duration::from_secs(120);
/// Delay before the first announce of the guest on this host after it
/// resumed, ms (QEMU's default is 50).
const ANNOUNCE_INITIAL_MS: u64 = 1;

impl Agent {
    /// `migrate_in` job: see the module documentation.
    pub(crate) async fn migrate_in_job(
        self: &Arc<Self>,
        cell: &JobCell,
        req: IncomingRequest,
    ) -> Result<JobResult, ApiError> {
        let config = req.config.clone();
        check_config(&config.id, &config)?;
        let tls_dir = if req.tls {
            Some(self.migration_tls_dir()?)
        } else {
            None
        };
        let layout = self.layout(&config)?;
        if let Some(models) = &self.qemu_models {
            models
                .check(&config.machine_type, &config.cpu_model)
                .map_err(|why| {
                    ApiError::invalid(format!(
                        "VM '{}' cannot run on host '{}': {why}",
                        config.name, self.config.name
                    ))
                })?;
        }
        if let Ok(slot) = self.slot(&config.id) {
            if slot.state().has_process() {
                // A job submitted again (the server retried): attach.
                if slot.state() == VmPowerState::Running || slot.state() == VmPowerState::Paused {
                    return Ok(JobResult::Vm(slot.runtime()));
                }
                return Err(ApiError::invalid_state(format!(
                    "VM '{}' already has a process on host '{}'",
                    config.name, self.config.name
                )));
            }
        }
        if req.copy_storage {
            self.prepare_storage(&config, &layout).await?;
        } else {
            let vm_dir = layout.vm_dir.clone();
            if !datastore_io("cannot read the VM directory", move || vm_dir.exists()).await? {
                return Err(ApiError::invalid(format!(
                    "host '{}' does not see the directory of VM '{}' on datastore '{}'",
                    self.config.name, config.name, config.datastore
                )));
            }
        }
        let slot = self.slot_or_insert(&config, VmPowerState::Stopped);
        let _op = slot.op.lock().await;
        slot.inner().config = config.clone();
        let persisted = slot.persist_config().and_then(|()| {
            if req.copy_storage {
                self.mark_incoming_storage(&config)
                    .map_err(|e| std::io::Error::other(e.message))
            } else {
                Ok(())
            }
        });
        let r = match persisted {
            Ok(()) => {
                self.receive(cell, &slot, &layout, &req, tls_dir.as_deref())
                    .await
            }
            Err(e) => Err(host_error("cannot write the runtime directory", &e)),
        };
        if r.is_err() {
            let vm = slot.vm();
            self.abandon_incoming(&slot, vm).await;
            if req.copy_storage {
                self.remove_storage(&config, &layout).await;
            }
        }
        r
    }

    async fn receive(
        self: &Arc<Self>,
        cell: &JobCell,
        slot: &Arc<VmSlot>,
        layout: &Layout,
        req: &IncomingRequest,
        tls_dir: Option<&std::path::Path>,
    ) -> Result<JobResult, ApiError> {
        let config = &req.config;
        let (taps, nics) = self.nic_plan(config)?;
        slot.apply(Input::Launch);
        for port in &taps {
            if let Err(e) = vdc_net::attach_port(port).await {
                return Err(host_error(
                    format!("cannot create tap device '{}'", port.tap),
                    &e,
                ));
            }
            slot.inner().taps.push(port.tap.clone());
        }
        self.ports_changed();
        cell.progress(10, "starting QEMU for the incoming VM");
        let incoming = if req.copy_storage {
            vdc_qemu::Incoming::DeferPaused
        } else {
            vdc_qemu::Incoming::Defer
        };
        let spec = self.machine_spec(config, layout, nics, Some(incoming));
        let vm = vdc_qemu::Vm::launch(&spec, &layout.paths)
            .await
            .map_err(|e| host_error(format!("cannot start QEMU for VM '{}'", config.name), &e))?;
        let vm = Arc::new(vm);
        {
            let mut inner = slot.inner();
            inner.vm = Some(vm.clone());
            inner.runtime.pid = Some(vm.pid());
            inner.exit_requested = false;
            inner.runtime.guest = Default::default();
        }
        let qmp_err = |what: &str, e: vdc_qemu::QmpError| {
            host_error(format!("{what} on the destination"), &e)
        };
        vm.qmp()
            .migrate_set_capabilities(&super::common_capabilities(req.allow_postcopy))
            .await
            .map_err(|e| qmp_err("cannot set migration capabilities", e))?;
        // QEMU announces the guest (RARP from each NIC's MAC) when it
        // resumes it after the stream, by default 50 ms later: until then
        // the network still sends the guest's traffic to the source.
        // Announce at once.
        vm.qmp()
            .migrate_set_parameters(serde_json::json!({"announce-initial": ANNOUNCE_INITIAL_MS}))
            .await
            .map_err(|e| qmp_err("cannot set the announce delay", e))?;
        if let Some(dir) = tls_dir {
            super::tls::arm(&vm, dir, &super::tls::Endpoint::Server)
                .await
                .map_err(|e| qmp_err("cannot set up TLS for the stream", e))?;
        }
        let mut events = vm.events();
        let addr = self.config.migration_address.clone();
        let port = free_port(&addr)?;
        let uri = format!("tcp:{addr}:{port}");
        vm.qmp()
            .migrate_incoming(&uri)
            .await
            .map_err(|e| qmp_err("migrate-incoming failed", e))?;
        let nbd = match req.copy_storage {
            true => Some(self.export_disks(&vm, config).await?),
            false => None,
        };
        tracing::info!(vm = %config.name, %uri, ?nbd, source = %req.source, "waiting for the incoming migration");
        cell.set_migration(&MigrationJobInfo {
            uri: Some(uri.clone()),
            nbd,
            encrypted: tls_dir.is_some(),
            ..Default::default()
        });
        cell.progress(20, "waiting for the stream");

        let started = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(TICK);
        let exited = vm.wait_exit();
        tokio::pin!(exited);
        loop {
            let status = tokio::select! {
                _ = &mut exited => {
                    return Err(ApiError::new(
                        ErrorCode::HostError,
                        format!("QEMU of the incoming VM '{}' exited on host '{}'", config.name, self.config.name),
                    ));
                }
                _ = cell.cancel.cancelled() => return Err(job_cancelled()),
                ev = events.recv() => match ev {
                    Ok(ev) if ev.name == "MIGRATION" => ev
                        .data
                        .get("status")
                        .and_then(|s| s.as_str())
                        .unwrap_or("")
                        .to_string(),
                    Ok(_) => continue,
                    Err(_) => String::new(),
                },
                _ = tick.tick() => match vm.qmp().query_migrate().await {
                    Ok(info) => info.status.unwrap_or_default(),
                    Err(_) => String::new(),
                },
            };
            match status.as_str() {
                "completed" => break,
                "failed" | "cancelled" => {
                    let why = vm
                        .qmp()
                        .query_migrate()
                        .await
                        .ok()
                        .and_then(|i| i.error_desc)
                        .unwrap_or_else(|| status.clone());
                    return Err(ApiError::new(
                        ErrorCode::HostError,
                        format!(
                            "the incoming migration of VM '{}' failed: {why}",
                            config.name
                        ),
                    ));
                }
                "" | "none" | "setup" if started.elapsed() > FIRST_BYTE_LIMIT => {
                    return Err(ApiError::new(
                        ErrorCode::Timeout,
                        format!(
                            "no migration stream came for VM '{}' within {FIRST_BYTE_LIMIT:?}",
                            config.name
                        ),
                    ));
                }
                "active" | "postcopy-active" | "device" => {
                    cell.progress(50, "receiving memory");
                }
                _ => {}
            }
        }
        if req.copy_storage {
            return self
                .run_after_storage(cell, slot, &vm, layout, config, req.keep_paused)
                .await;
        }
        // QEMU resumed the guest by itself as the stream completed: tell
        // the network where it is now, then take the lease handed over.
        announce(&vm, &config.name).await;
        cell.progress(90, "taking the lease over");
        self.wait_for_hand_over(layout, &config.name).await?;
        self.take_lease(slot, &vm, layout, config).await?;
        supervisor::start(self.clone(), slot.clone(), vm.clone(), layout);
        let mut rt = slot.apply(Input::Launched);
        if matches!(vm.run_state().await, Ok(vdc_qemu::RunState::Paused)) {
            rt = slot.apply(Input::Paused);
        }
        tracing::info!(vm = %config.name, from = %req.source, "migrated in");
        Ok(JobResult::Vm(rt))
    }

    /// Starts the VM's supervisor for the incoming QEMU; it must take the
    /// lease (handed over, or new in a directory made here).
    pub(super) async fn take_lease(
        &self,
        slot: &VmSlot,
        vm: &vdc_qemu::Vm,
        layout: &Layout,
        config: &vdc_types::VmConfig,
    ) -> Result<(), ApiError> {
        let launch = self.supervisor_launch(&config.id, layout.vm_dir.path(), Some(vm.pid()));
        let sup = vdc_supervisor::client::start(&launch)
            .await
            .map_err(|e| host_error("cannot start the VM's supervisor after the migration", &e))?;
        slot.inner().vm_supervisor = Some(sup.process.clone());
        if !matches!(sup.hello, vdc_supervisor::Hello::Leased { .. }) {
            return Err(ApiError::new(
                ErrorCode::Locked,
                format!(
                    "the lease of VM '{}' was not handed to host '{}': {:?}",
                    config.name, self.config.name, sup.hello
                ),
            ));
        }
        Ok(())
    }

    /// Waits until the VM's lease names this host as successor (at once
    /// after a pre-copy; after a post-copy the source names it when the
    /// copy completed).
    async fn wait_for_hand_over(&self, layout: &Layout, name: &str) -> Result<(), ApiError> {
        let since = tokio::time::Instant::now();
        loop {
            let lock = layout.vm_dir.lock();
            let me = self.config.name.clone();
            let named = crate::agent::blocking_lease_io(move || lock.read())
                .await
                .ok()
                .flatten()
                .is_some_and(|l| l.successor.as_deref() == Some(me.as_str()) || l.host == me);
            if named {
                return Ok(());
            }
            if since.elapsed() > HAND_OVER_LIMIT {
                return Err(ApiError::new(
                    ErrorCode::Locked,
                    format!(
                        "the source did not hand the lease of VM '{name}' to host '{}'",
                        self.config.name
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Undoes an incoming migration: QEMU killed, taps deleted, the slot
    /// and its runtime directory removed. Each failure is logged.
    async fn abandon_incoming(&self, slot: &Arc<VmSlot>, vm: Option<Arc<vdc_qemu::Vm>>) {
        if let Some(vm) = vm {
            slot.inner().exit_requested = true;
            vm.kill();
            if !vm.wait_exit_for(Duration::from_secs(10)).await {
                tracing::warn!(vm = %slot.id, pid = vm.pid(), "the incoming QEMU did not exit after SIGKILL");
            }
        }
        self.wait_supervisor_gone(slot).await;
        let taps = std::mem::take(&mut slot.inner().taps);
        supervisor::cleanup_network(&taps).await;
        {
            let mut inner = slot.inner();
            inner.vm = None;
            inner.runtime.pid = None;
        }
        slot.set_state(VmPowerState::Stopped);
        self.forget(&slot.id);
        let run_dir = self.run_dir(&slot.id);
        let removed = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&run_dir)).await;
        match removed {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
            Ok(Err(e)) => {
                tracing::warn!(vm = %slot.id, error = %e, "cannot remove the runtime directory of an abandoned incoming VM")
            }
            Err(e) => {
                tracing::warn!(vm = %slot.id, error = %e, "cannot remove the runtime directory of an abandoned incoming VM")
            }
        }
        tracing::info!(vm = %slot.id, "incoming migration abandoned; nothing left on this host");
    }
}

/// Tells the network where the guest is now (`announce-self`, 5 rounds,
/// the first after [`ANNOUNCE_INITIAL_MS`]); a failure is logged.
pub(super) async fn announce(vm: &vdc_qemu::Vm, name: &str) {
    if let Err(e) = vm
        .qmp()
        .execute(
            "announce-self",
            serde_json::json!({"initial": ANNOUNCE_INITIAL_MS, "max": 550, "rounds": 5, "step": 100}),
        )
        .await
    {
        tracing::warn!(vm = %name, error = %e, "announce-self failed");
    }
}

/// A free TCP port on `addr` (bound and released; QEMU binds it next).
pub(super) fn free_port(addr: &str) -> Result<u16, ApiError> {
    let l = std::net::TcpListener::bind((addr, 0)).map_err(|e| {
        ApiError::new(
            ErrorCode::HostError,
            format!("cannot listen on the migration address {addr}: {e}"),
        )
    })?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| ApiError::new(ErrorCode::HostError, format!("no local port: {e}")))
}
