//! VM operations: create, start, power actions and delete.
//!
//! Each operation validates its input synchronously (so a bad request gets
//! a 4xx at once and nothing is created), marks the VM busy, and runs the
//! work as a task. A failed create removes everything it made: the VM's
//! files on the datastore, its address reservation and its record.

use std::sync::Arc;

use serde_json::json;
use vdc_sched::{Demand, PlacementError};
use vdc_store::{StoreError, StoreExt};
use vdc_types::agent::{AgentStartRequest, DestroyVmRequest, DiskSource, ProvisionVmRequest};
use vdc_types::api::{
    CreateVmRequest, Template, DEFAULT_CPUS, DEFAULT_DISK_GIB, DEFAULT_MEMORY_MIB,
    DEFAULT_SHUTDOWN_TIMEOUT_S, MAX_CPUS, MAX_DISK_GIB, MAX_SHUTDOWN_TIMEOUT_S, MIN_MEMORY_MIB,
};
use vdc_types::names::validate_name;
use vdc_types::vm::VM_CONFIG_VERSION;
use vdc_types::{
    now_ms, ApiError, DatastoreKind, DiskSpec, ErrorCode, Network, NicSpec, Task, Vm, VmConfig,
    VmPowerState,
};

use crate::tasks::TaskCtx;
use crate::{store_err, Cluster, VmRecord};

const GIB: u64 = 1024 * 1024 * 1024;

/// How long memory promised to a started VM stays counted after the start,
/// until the host's own reports include the new QEMU process.
const PENDING_HOLD: std::time::Duration = std::time::Duration::from_secs(3);

fn vm_key(name: &str) -> String {
    format!("/vms/{name}")
}

fn placement_err(e: PlacementError) -> ApiError {
    let code = match e {
        PlacementError::NoHosts => ErrorCode::HostUnavailable,
        PlacementError::NoDatastoreAccess(_) => ErrorCode::InvalidInput,
        _ => ErrorCode::InsufficientCapacity,
    };
    ApiError::new(code, e.to_string())
}

/// Checks that a datastore-relative path stays inside the datastore: at
/// most 1024 bytes, components of letters, digits, `.`, `_` and `-` that do
/// not start with `.` or `-` (so no `..`, no hidden files), ending in
/// `.qcow2` (the pattern the OpenAPI document states for `DiskRequest.path`).
pub fn check_relative_path(datastore: &str, path: &str) -> Result<(), ApiError> {
    let component_ok = |c: &str| {
        c.starts_with(|ch: char| ch.is_ascii_alphanumeric() || ch == '_')
            && c.chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-'))
    };
    if path.len() > 1024 || !path.split('/').all(component_ok) {
        return Err(ApiError::invalid(format!(
            "disk path '{}' is outside datastore '{datastore}' or badly formed: give a relative path of letters, digits, '.', '_' and '-' (no '..', no component starting with '.' or '-'), e.g. 'myvm/data.qcow2'",
            path.escape_default()
        )));
    }
    if !path.ends_with(".qcow2") {
        return Err(ApiError::invalid(format!(
            "disk path '{path}' must end in .qcow2 (disks are thin qcow2 files)"
        )));
    }
    Ok(())
}

fn random_mac() -> String {
    let b: [u8; 3] = rand::random();
    format!("52:54:00:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
}

/// Releases a VM's busy mark when dropped.
struct BusyGuard {
    cluster: Arc<Cluster>,
    name: String,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        if let Ok(mut busy) = self.cluster.busy.lock() {
            busy.remove(&self.name);
        }
    }
}

/// Releases pending memory when dropped.
struct PendingGuard {
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

impl Cluster {
    /// A connected host that can reach the VM's files: the one that last ran
    /// it, else any host reaching its datastore. Returns it with its agent URL.
    pub(crate) async fn host_for_files(
        &self,
        rec: &VmRecord,
    ) -> Result<(String, String), ApiError> {
        if let Some(h) = &rec.host {
            if let Ok(url) = self.agent_url(h).await {
                return Ok((h.clone(), url));
            }
        }
        let host = self
            .hosts_reaching(&rec.config.datastore)
            .await
            .into_iter()
            .next()
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::HostUnavailable,
                    format!(
                        "no connected host reaches datastore '{}' holding VM '{}'",
                        rec.config.datastore, rec.config.name
                    ),
                )
            })?;
        let url = self.agent_url(&host).await?;
        Ok((host, url))
    }

    /// Writes a new record, or fails with `AlreadyExists` and `message`.
    pub(crate) async fn create_unique<T: serde::Serialize + Sync>(
        &self,
        key: &str,
        value: &T,
        message: String,
    ) -> Result<(), ApiError> {
        match self.store.create_json(key, value).await {
            Ok(_) => Ok(()),
            Err(StoreError::AlreadyExists(_)) => {
                Err(ApiError::new(ErrorCode::AlreadyExists, message))
            }
            Err(e) => Err(store_err(e)),
        }
    }

    /// Counts a VM's memory as taken on `host` until the guard is dropped
    /// (plus [`PENDING_HOLD`]).
    async fn promise_memory(self: &Arc<Self>, host: &str, memory_mib: u64) -> PendingGuard {
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

    async fn mark_busy(self: &Arc<Self>, name: &str, what: &str) -> Result<BusyGuard, ApiError> {
        let mut busy = self
            .busy
            .lock()
            .map_err(|_| ApiError::internal("busy table poisoned"))?;
        if let Some(other) = busy.get(name) {
            return Err(ApiError::invalid_state(format!(
                "VM '{name}' is busy with {other}; wait for that task to end ('vdc task list')"
            )));
        }
        busy.insert(name.to_string(), what.to_string());
        Ok(BusyGuard {
            cluster: self.clone(),
            name: name.to_string(),
        })
    }

    async fn record(&self, name: &str) -> Result<VmRecord, ApiError> {
        self.store
            .get_json::<VmRecord>(&vm_key(name))
            .await
            .map_err(store_err)?
            .ok_or_else(|| ApiError::not_found("VM", name))
    }

    async fn save(&self, rec: &VmRecord) -> Result<(), ApiError> {
        self.store
            .put_json(&vm_key(&rec.config.name), rec)
            .await
            .map(|_| ())
            .map_err(store_err)
    }

    /// Records a state the server decided (`since` = None) or a host
    /// answered with (`since` = the host's time of that state).
    async fn set_state(
        &self,
        name: &str,
        state: VmPowerState,
        host: Option<String>,
    ) -> Result<(), ApiError> {
        self.set_state_since(name, state, host, None).await
    }

    async fn set_runtime(
        &self,
        name: &str,
        rt: &vdc_types::agent::VmRuntime,
        host: Option<String>,
    ) -> Result<(), ApiError> {
        self.set_state_since(name, rt.state, host, Some(rt.since_ms))
            .await
    }

    async fn set_state_since(
        &self,
        name: &str,
        state: VmPowerState,
        host: Option<String>,
        since: Option<vdc_types::UnixMillis>,
    ) -> Result<(), ApiError> {
        let mut from = state;
        let rec: VmRecord = self
            .store
            .update_json(&vm_key(name), |mut rec: VmRecord| {
                from = rec.state;
                rec.state = state;
                if let Some(t) = since {
                    rec.since_ms = t;
                }
                if host.is_some() {
                    rec.host = host.clone();
                }
                if !state.has_process() {
                    rec.guest = Default::default();
                }
                Ok::<_, StoreError>(rec)
            })
            .await
            .map_err(|e| match e {
                StoreError::NotFound(_) => ApiError::not_found("VM", name),
                e => store_err(e),
            })?;
        if from != state {
            self.events
                .publish(
                    "vm.state_changed",
                    name,
                    format!(
                        "VM {name} is {state}{}",
                        rec.host
                            .as_deref()
                            .map(|h| format!(" on {h}"))
                            .unwrap_or_default()
                    ),
                    json!({"from": from, "to": state, "host": rec.host}),
                )
                .await;
        }
        Ok(())
    }

    async fn vm_view(&self, rec: VmRecord) -> Vm {
        let mut guest = rec.guest.clone();
        let mut stats = None;
        let mut fenced = None;
        if let Some(h) = &rec.host {
            if let Some(rt) = self.runtime(h, &rec.config.id).await {
                guest.last_heartbeat_ms = rt.guest.last_heartbeat_ms;
                stats = rt.stats;
                fenced = rt.fenced.filter(|_| !rec.state.has_process());
            }
        }
        let c = rec.config;
        Vm {
            id: c.id,
            name: c.name,
            state: rec.state,
            host: rec.host,
            cpus: c.cpus,
            memory_mib: c.memory_mib,
            datastore: c.datastore,
            disks: c.disks,
            nics: c.nics,
            guest,
            stats,
            template: c.template,
            created_ms: c.created_ms,
            machine_type: c.machine_type,
            cpu_model: c.cpu_model,
            fenced,
        }
    }

    /// Every VM.
    pub async fn list_vms(&self) -> Result<Vec<Vm>, ApiError> {
        let recs: Vec<(String, VmRecord)> =
            self.store.list_json("/vms/").await.map_err(store_err)?;
        let mut out = Vec::with_capacity(recs.len());
        for (_, r) in recs {
            out.push(self.vm_view(r).await);
        }
        Ok(out)
    }

    /// One VM.
    pub async fn get_vm(&self, name: &str) -> Result<Vm, ApiError> {
        let r = self.record(name).await?;
        Ok(self.vm_view(r).await)
    }

    // ---- VM create -------------------------------------------------------

    /// Validates a create request and starts the task that carries it out.
    pub async fn create_vm(self: &Arc<Self>, req: CreateVmRequest) -> Result<Task, ApiError> {
        validate_name("VM", &req.name).map_err(ApiError::invalid)?;
        let cpus = req.cpus.unwrap_or(DEFAULT_CPUS);
        if cpus == 0 || cpus > MAX_CPUS {
            return Err(ApiError::invalid(format!(
                "cpus must be between 1 and {MAX_CPUS}, not {cpus}"
            )));
        }
        let memory_mib = req.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB);
        if memory_mib < MIN_MEMORY_MIB {
            return Err(ApiError::invalid(format!(
                "memory must be at least {MIN_MEMORY_MIB} MiB, not {memory_mib}"
            )));
        }
        if self
            .store
            .get(&vm_key(&req.name))
            .await
            .map_err(store_err)?
            .is_some()
        {
            return Err(ApiError::new(
                ErrorCode::AlreadyExists,
                format!(
                    "a VM named '{}' already exists; choose another name",
                    req.name
                ),
            ));
        }
        let caps = self.capacities().await;
        let connected: Vec<_> = caps.iter().filter(|c| c.available).cloned().collect();
        if connected.is_empty() {
            return Err(ApiError::new(
                ErrorCode::HostUnavailable,
                "no host is connected; start an agent ('vdc lab status')",
            ));
        }
        let template = match &req.template {
            Some(t) => Some(self.get_template(t).await?),
            None => None,
        };
        if let Some(t) = &template {
            if t.size_bytes == 0 {
                return Err(ApiError::invalid_state(format!(
                    "template '{}' is still being imported",
                    t.name
                )));
            }
        }
        if req.linked_clone && template.is_none() {
            return Err(ApiError::invalid(
                "a linked clone needs a template (--template)",
            ));
        }
        let datastore = match &req.datastore {
            Some(d) => self.get_datastore(d).await?,
            None => self
                .list_datastores()
                .await?
                .into_iter()
                .find(|d| d.kind == DatastoreKind::Shared)
                .ok_or_else(|| {
                    ApiError::invalid("no shared datastore exists; name one with 'datastore'")
                })?,
        };
        let disk_bytes = match (req.disk_gib, &template) {
            (Some(g), _) if g == 0 || g > MAX_DISK_GIB => {
                return Err(ApiError::invalid(format!("disk size must be between 1 and {MAX_DISK_GIB} GiB, not {g}")))
            }
            (Some(g), Some(t)) if g * GIB < t.size_bytes => {
                return Err(ApiError::invalid(format!(
                    "disk size {g} GiB is smaller than template '{}' ({:.1} GiB); disks can only grow",
                    t.name,
                    t.size_bytes as f64 / GIB as f64
                )))
            }
            (Some(g), _) => g * GIB,
            (None, Some(t)) => t.size_bytes,
            (None, None) => DEFAULT_DISK_GIB * GIB,
        };
        let network = match &req.network {
            Some(n) => Some(self.get_network(n).await?),
            None => self.list_networks().await?.into_iter().next(),
        };
        let mut datastores = vec![datastore.name.clone()];
        let mut disks = vec![DiskSpec {
            name: "disk0".into(),
            datastore: datastore.name.clone(),
            path: format!("{}/disk0.qcow2", req.name),
            size_bytes: disk_bytes,
        }];
        for (i, d) in req.disks.iter().enumerate() {
            let ds_name = d
                .datastore
                .clone()
                .unwrap_or_else(|| datastore.name.clone());
            self.get_datastore(&ds_name).await?;
            if d.size_gib == 0 || d.size_gib > MAX_DISK_GIB {
                return Err(ApiError::invalid(format!(
                    "size of disk {} must be between 1 and {MAX_DISK_GIB} GiB, not {}",
                    i + 1,
                    d.size_gib
                )));
            }
            let path = d
                .path
                .clone()
                .unwrap_or_else(|| format!("{}/disk{}.qcow2", req.name, i + 1));
            check_relative_path(&ds_name, &path)?;
            if disks
                .iter()
                .any(|x| x.datastore == ds_name && x.path == path)
            {
                return Err(ApiError::invalid(format!(
                    "disk path '{path}' is given twice"
                )));
            }
            if !datastores.contains(&ds_name) {
                datastores.push(ds_name.clone());
            }
            disks.push(DiskSpec {
                name: format!("disk{}", i + 1),
                datastore: ds_name,
                path,
                size_bytes: d.size_gib * GIB,
            });
        }
        let demand = Demand {
            cpus,
            memory_mib,
            datastores: datastores.clone(),
        };
        vdc_sched::check_fits_any(&demand, &connected).map_err(placement_err)?;
        if let Some(h) = &req.host {
            let cap = caps
                .iter()
                .find(|c| &c.name == h)
                .ok_or_else(|| ApiError::not_found("Host", h))?;
            if !cap.available {
                return Err(ApiError::new(
                    ErrorCode::HostUnavailable,
                    format!("host '{h}' is disconnected"),
                ));
            }
            if let Some(d) = datastores.iter().find(|d| !cap.datastores.contains(d)) {
                return Err(ApiError::invalid(format!(
                    "host '{h}' does not reach datastore '{d}'"
                )));
            }
        }
        let config = VmConfig {
            version: VM_CONFIG_VERSION,
            id: uuid::Uuid::new_v4().to_string(),
            name: req.name.clone(),
            cpus,
            memory_mib,
            datastore: datastore.name.clone(),
            dir: req.name.clone(),
            disks,
            nics: Vec::new(),
            hostname: req.name.clone(),
            template: template.as_ref().map(|t| t.name.clone()),
            created_ms: now_ms(),
            machine_type: vdc_types::vm::DEFAULT_MACHINE_TYPE.into(),
            cpu_model: vdc_types::vm::DEFAULT_CPU_MODEL.into(),
        };
        let rec = VmRecord {
            config,
            state: VmPowerState::Stopped,
            host: None,
            guest: Default::default(),
            since_ms: 0,
        };
        self.create_unique(
            &vm_key(&req.name),
            &rec,
            format!(
                "a VM named '{}' already exists; choose another name",
                req.name
            ),
        )
        .await?;
        let busy = match self.mark_busy(&req.name, "vm.create").await {
            Ok(b) => b,
            Err(e) => {
                let _ = self.store.delete(&vm_key(&req.name)).await;
                return Err(e);
            }
        };
        let me = self.clone();
        let name = req.name.clone();
        self.tasks
            .spawn("vm.create", "vm", &name, move |ctx| async move {
                let _busy = busy;
                let r = me.create_body(&ctx, rec, template, network, req).await;
                r
            })
            .await
    }

    async fn create_body(
        self: &Arc<Self>,
        ctx: &TaskCtx,
        mut rec: VmRecord,
        template: Option<Template>,
        network: Option<Network>,
        req: CreateVmRequest,
    ) -> Result<(), ApiError> {
        let name = rec.config.name.clone();
        let mut provisioned_on: Option<(String, String)> = None;
        let result = async {
            if let Some(net) = &network {
                ctx.progress(5, "allocating an address").await;
                let ip = self.allocate_ip(net, &name).await?;
                rec.config.nics.push(NicSpec {
                    network: net.name.clone(),
                    mac: random_mac(),
                    ip: Some(ip),
                    gateway: net.gateway.clone(),
                    bridge: Some(net.bridge.clone()),
                });
                self.save(&rec).await?;
            }
            ctx.check_cancel()?;
            ctx.progress(10, "creating disks").await;
            let host = match &req.host {
                Some(h) => h.clone(),
                None => {
                    let demand = Demand {
                        cpus: rec.config.cpus,
                        memory_mib: rec.config.memory_mib,
                        datastores: rec
                            .config
                            .disks
                            .iter()
                            .map(|d| d.datastore.clone())
                            .collect(),
                    };
                    vdc_sched::place(&demand, &self.capacities().await).map_err(placement_err)?
                }
            };
            // Promise the memory now, so that concurrent creates spread out.
            let _pending = if req.start {
                Some(self.promise_memory(&host, rec.config.memory_mib).await)
            } else {
                None
            };
            let url = self.agent_url(&host).await?;
            let boot_source = match &template {
                Some(t) => DiskSource::Template {
                    datastore: t.datastore.clone(),
                    path: t.path.clone(),
                    linked: req.linked_clone,
                },
                None => DiskSource::Blank,
            };
            self.agents
                .provision(
                    &host,
                    &url,
                    &ProvisionVmRequest {
                        config: rec.config.clone(),
                        boot_source,
                    },
                )
                .await?;
            provisioned_on = Some((host.clone(), url.clone()));
            ctx.check_cancel()?;
            self.events
                .publish(
                    "vm.created",
                    &name,
                    format!("VM {name} created"),
                    json!({"id": rec.config.id}),
                )
                .await;
            if req.start {
                ctx.progress(50, "starting").await;
                self.start_body(ctx, &name, Some(host)).await?;
            }
            Ok::<(), ApiError>(())
        }
        .await;
        if let Err(e) = &result {
            if req.start && provisioned_on.is_some() && e.code != ErrorCode::Cancelled {
                // The VM was made; only starting it failed. Keep it, stopped.
                if let Ok(r) = self.record(&name).await {
                    if r.state == VmPowerState::Stopped || r.state == VmPowerState::Starting {
                        let _ = self.set_state(&name, VmPowerState::Stopped, None).await;
                    }
                }
                return result;
            }
            tracing::warn!(vm = %name, error = %e, "create failed, rolling back");
            if let Some((host, url)) = provisioned_on {
                let _ = self
                    .agents
                    .destroy(
                        &host,
                        &url,
                        &DestroyVmRequest {
                            config: rec.config.clone(),
                        },
                    )
                    .await;
            }
            self.release_ips(&rec.config.nics).await;
            let _ = self.store.delete(&vm_key(&name)).await;
        }
        result
    }

    // ---- power operations ---------------------------------------------

    /// Starts a stopped, crashed or suspended VM (a task).
    pub async fn start_vm(
        self: &Arc<Self>,
        name: &str,
        host: Option<String>,
    ) -> Result<Task, ApiError> {
        let rec = self.record(name).await?;
        match rec.state {
            VmPowerState::Stopped | VmPowerState::Suspended | VmPowerState::Crashed => {}
            s => {
                return Err(ApiError::invalid_state(format!(
                    "VM '{name}' is {s}{}; only a stopped, suspended or crashed VM can be started",
                    rec.host
                        .as_deref()
                        .map(|h| format!(" on {h}"))
                        .unwrap_or_default()
                )))
            }
        }
        if let Some(h) = &host {
            self.agent_url(h).await?;
        }
        let busy = self.mark_busy(name, "vm.start").await?;
        let me = self.clone();
        let n = name.to_string();
        self.tasks
            .spawn("vm.start", "vm", name, move |ctx| async move {
                let _busy = busy;
                me.start_body(&ctx, &n, host).await
            })
            .await
    }

    async fn start_body(
        self: &Arc<Self>,
        ctx: &TaskCtx,
        name: &str,
        host: Option<String>,
    ) -> Result<(), ApiError> {
        let mut rec = self.record(name).await?;
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
        // A suspended VM resumes where it was suspended when that host can
        // take it: the saved CPU state matches that host's CPU.
        let host = host.or_else(|| {
            let last = rec.host.as_ref()?;
            let cap = caps.iter().find(|c| &c.name == last && c.available)?;
            (rec.state == VmPowerState::Suspended && vdc_sched::check_host(&demand, cap).is_ok())
                .then(|| last.clone())
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
        let resuming = rec.state == VmPowerState::Suspended;
        ctx.progress(
            60,
            if resuming {
                "resuming from the suspended state"
            } else {
                "starting QEMU"
            },
        )
        .await;
        // Fill in bridges from the current network definitions.
        for nic in &mut rec.config.nics {
            if let Ok(net) = self.get_network(&nic.network).await {
                nic.bridge = Some(net.bridge);
            }
        }
        self.save(&rec).await?;
        self.set_state(name, VmPowerState::Starting, Some(host.clone()))
            .await?;
        match self
            .agents
            .start(
                &host,
                &url,
                &AgentStartRequest {
                    config: rec.config.clone(),
                },
            )
            .await
        {
            Ok(rt) => {
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
            Err(e) => {
                let back = if resuming {
                    VmPowerState::Suspended
                } else {
                    VmPowerState::Stopped
                };
                self.set_state(name, back, None).await?;
                Err(e)
            }
        }
    }

    /// Runs a power action on a VM with a process: `stop` (power off),
    /// `shutdown`, `reset`, `pause`, `resume`, `suspend`.
    pub async fn vm_action(
        self: &Arc<Self>,
        name: &str,
        action: &str,
        shutdown_timeout_s: Option<u64>,
    ) -> Result<Task, ApiError> {
        let rec = self.record(name).await?;
        use VmPowerState as S;
        if action == "resume" && rec.state == S::Suspended {
            return self.start_vm(name, None).await;
        }
        let allowed: &[S] = match action {
            "stop" => &[S::Running, S::Paused, S::ShuttingDown, S::Starting, S::Suspending],
            "shutdown" => &[S::Running],
            "reset" => &[S::Running, S::Paused],
            "pause" => &[S::Running],
            "resume" => &[S::Paused],
            "suspend" => &[S::Running, S::Paused],
            _ => {
                return Err(ApiError::new(
                    ErrorCode::NotFound,
                    format!("unknown VM action '{action}'; use start, stop, shutdown, reset, pause, resume or suspend"),
                ))
            }
        };
        if rec.state == S::Unknown {
            return Err(ApiError::new(
                ErrorCode::HostUnavailable,
                format!(
                    "VM '{name}' is unknown: its host {} stopped reporting",
                    rec.host.as_deref().unwrap_or("?")
                ),
            ));
        }
        if !allowed.contains(&rec.state) {
            return Err(ApiError::invalid_state(format!(
                "cannot {action} VM '{name}' while it is {}",
                rec.state
            )));
        }
        let timeout = shutdown_timeout_s.unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT_S);
        if timeout == 0 || timeout > MAX_SHUTDOWN_TIMEOUT_S {
            return Err(ApiError::invalid(format!(
                "shutdown timeout must be between 1 and {MAX_SHUTDOWN_TIMEOUT_S} seconds, not {timeout}"
            )));
        }
        let host = rec
            .host
            .clone()
            .ok_or_else(|| ApiError::internal(format!("VM '{name}' has a process but no host")))?;
        let url = self.agent_url(&host).await?;
        let busy = self.mark_busy(name, &format!("vm.{action}")).await?;
        let me = self.clone();
        let n = name.to_string();
        let act = action.to_string();
        let id = rec.config.id.clone();
        self.tasks
            .spawn(&format!("vm.{action}"), "vm", name, move |ctx| async move {
                let _busy = busy;
                let stage = match act.as_str() {
                    "shutdown" => "waiting for the guest to power off",
                    "suspend" => "saving memory to the datastore",
                    _ => "asking the host",
                };
                ctx.progress(10, stage).await;
                if act == "shutdown" {
                    me.set_state(&n, S::ShuttingDown, None).await?;
                } else if act == "suspend" {
                    me.set_state(&n, S::Suspending, None).await?;
                }
                let r = if act == "shutdown" {
                    me.agents.shutdown(&host, &url, &id, timeout).await
                } else {
                    let agent_action = if act == "stop" {
                        "poweroff"
                    } else {
                        act.as_str()
                    };
                    me.agents.action(&host, &url, &id, agent_action).await
                };
                match r {
                    Ok(rt) => {
                        me.set_runtime(&n, &rt, None).await?;
                        Ok(())
                    }
                    Err(e) => {
                        // Whatever happened, the next report tells the truth.
                        if let Some(rt) = me.runtime(&host, &id).await {
                            let _ = me.set_runtime(&n, &rt, None).await;
                        } else if act == "shutdown" || act == "suspend" {
                            let _ = me.set_state(&n, S::Running, None).await;
                        }
                        Err(e)
                    }
                }
            })
            .await
    }

    /// Deletes a VM that is not running: its files, addresses and record.
    pub async fn delete_vm(self: &Arc<Self>, name: &str) -> Result<Task, ApiError> {
        let rec = self.record(name).await?;
        if !matches!(
            rec.state,
            VmPowerState::Stopped | VmPowerState::Suspended | VmPowerState::Crashed
        ) {
            return Err(ApiError::invalid_state(format!(
                "VM '{name}' is {}; stop it first ('vdc vm stop {name}')",
                rec.state
            )));
        }
        let busy = self.mark_busy(name, "vm.delete").await?;
        let me = self.clone();
        let n = name.to_string();
        self.tasks
            .spawn("vm.delete", "vm", name, move |ctx| async move {
                let _busy = busy;
                ctx.progress(10, "removing files").await;
                let (host, url) = me.host_for_files(&rec).await?;
                me.agents
                    .destroy(
                        &host,
                        &url,
                        &DestroyVmRequest {
                            config: rec.config.clone(),
                        },
                    )
                    .await?;
                me.release_ips(&rec.config.nics).await;
                me.store.delete(&vm_key(&n)).await.map_err(store_err)?;
                me.events
                    .publish(
                        "vm.deleted",
                        &n,
                        format!("VM {n} deleted"),
                        json!({"id": rec.config.id}),
                    )
                    .await;
                Ok(())
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::check_relative_path;

    #[test]
    fn disk_paths_stay_inside() {
        assert!(check_relative_path("s", "vm/data.qcow2").is_ok());
        for bad in [
            "/etc/passwd.qcow2",
            "../x.qcow2",
            "vm/../../x.qcow2",
            "vm//x.qcow2",
            "",
            "vm/x.raw",
            "./x.qcow2",
        ] {
            assert!(check_relative_path("s", bad).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        /// The OpenAPI document's pattern for disk paths states exactly
        /// what the server accepts.
        #[test]
        fn the_stated_path_pattern_is_the_rule(
            path in "([a-z0-9._-]{0,4}/){0,3}[a-z0-9._-]{0,4}(\\.qcow2)?|\\PC{0,8}"
        ) {
            let re = regex::Regex::new(vdc_types::api::DISK_PATH_PATTERN).unwrap();
            let stated = re.is_match(&path) && path.len() <= 1024;
            proptest::prop_assert_eq!(check_relative_path("s", &path).is_ok(), stated, "{:?}", path);
        }
    }
}
