//! VM operations, by concern: create (here), the records and their
//! operations (`records`), the power actions and start (`power`), and
//! delete (`delete`).
//!
//! Each operation validates its input synchronously (so a bad request gets
//! a 4xx at once and nothing is created), claims the VM through the
//! lifecycle ([`crate::lifecycle`]) in one compare-and-swap write of its
//! record, and runs the work as a task that releases the claim when it
//! ends.
//!
//! Create: validation, then a task that allocates an address, places
//! the VM, has its host make its directory and disks, and starts it if
//! asked.
//!
//! The record is written at once with the operation `creating`, so the
//! name is taken and no other action runs until the task ends. A failed
//! create removes everything it made: the VM's files on the datastore, its
//! address reservation and its record (compare-and-swap: only while the
//! record is still this task's).

mod create;
mod delete;
mod power;
pub(crate) mod records;

use std::sync::Arc;

use vdc_sched::{Demand, PlacementError};
use vdc_store::{StoreError, StoreExt};
use vdc_types::agent::DiskSource;
use vdc_types::api::{
    CreateVmRequest, DEFAULT_CPUS, DEFAULT_DISK_GIB, DEFAULT_MEMORY_MIB, MAX_CPUS, MAX_DISK_GIB,
    MIN_MEMORY_MIB,
};
use vdc_types::names::validate_name;
use vdc_types::vm::VM_CONFIG_VERSION;
use vdc_types::{
    now_ms, ApiError, DatastoreKind, DiskSpec, ErrorCode, InFlight, Task, TaskParams, VmConfig,
    VmOperation, VmPowerState,
};

use crate::clones::Origin;
use crate::record::vm_key;
use crate::{store_err, Cluster, VmRecord};

pub(crate) fn placement_error(e: PlacementError) -> ApiError {
    placement_err(e)
}

pub(crate) fn placement_err(e: PlacementError) -> ApiError {
    let code = match e {
        PlacementError::NoHosts => ErrorCode::HostUnavailable,
        PlacementError::NoDatastoreAccess(_) => ErrorCode::InvalidInput,
        PlacementError::Unavailable(_)
        | PlacementError::NoSwitch(_)
        | PlacementError::NoSwitchOn { .. } => ErrorCode::InvalidState,
        _ => ErrorCode::InsufficientCapacity,
    };
    ApiError::new(code, e.to_string())
}

impl Cluster {
    /// A connected host that can reach the VM's files: its owner, else any
    /// host reaching its datastore. Returns it with its agent URL.
    pub(crate) async fn host_for_files(
        &self,
        rec: &VmRecord,
    ) -> Result<(String, String), ApiError> {
        if let Some(h) = &rec.owner {
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
}

const GIB: u64 = 1024 * 1024 * 1024;

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

pub(crate) fn random_mac() -> String {
    let b: [u8; 3] = rand::random();
    format!("52:54:00:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
}

impl Cluster {
    // ---- VM create -------------------------------------------------------

    /// Validates a create request and starts the task that carries it out.
    pub async fn create_vm(self: &Arc<Self>, req: CreateVmRequest) -> Result<Task, ApiError> {
        self.create_vm_from(req, Origin::default()).await
    }

    /// [`Cluster::create_vm`] with the disks copied from `origin` (a clone
    /// of a VM) instead of a template or blank ones.
    pub(crate) async fn create_vm_from(
        self: &Arc<Self>,
        req: CreateVmRequest,
        origin: Origin,
    ) -> Result<Task, ApiError> {
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
        let ha_group = self.known_ha_group(req.ha_group.as_deref()).await?;
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
        if req.linked_clone && template.is_none() && origin.boot.is_none() {
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
            (None, None) => origin.boot_bytes.unwrap_or(DEFAULT_DISK_GIB * GIB),
        };
        let network = match &req.network {
            Some(n) => Some(self.get_network(n).await?),
            None => self.list_networks().await?.into_iter().next(),
        };
        let custom = self.customization(&req, network.as_ref()).await?;
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
        let copied = origin.data.iter().map(|(_, s)| *s);
        let read = origin.data_images.iter().map(|(_, s)| *s);
        for (i, size_bytes) in copied.chain(read).enumerate() {
            disks.push(DiskSpec {
                name: format!("disk{}", i + 1),
                datastore: datastore.name.clone(),
                path: format!("{}/disk{}.qcow2", req.name, i + 1),
                size_bytes,
            });
        }
        let mut switches: Vec<String> = network
            .as_ref()
            .and_then(|n| n.switch.clone())
            .into_iter()
            .collect();
        if !origin.more_networks.is_empty() && network.is_none() {
            return Err(ApiError::invalid(
                "further NICs need a first one: name its network",
            ));
        }
        for n in &origin.more_networks {
            if let Some(s) = self.get_network(n).await?.switch {
                if !switches.contains(&s) {
                    switches.push(s);
                }
            }
        }
        let cpu_model = self.vm_cpu_model().await;
        let demand = Demand {
            cpus,
            memory_mib,
            datastores: datastores.clone(),
            cpu_model: Some(cpu_model.to_string()),
            switches,
        };
        vdc_sched::check_fits_any(&demand, &connected).map_err(placement_err)?;
        if req.start {
            self.check_admission(&req.name, memory_mib, req.ha_priority.unwrap_or_default())
                .await?;
        }
        if let Some(h) = &req.host {
            let cap = caps
                .iter()
                .find(|c| &c.name == h)
                .ok_or_else(|| ApiError::not_found("Host", h))?;
            self.check_placeable(h).await?;
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
            hostname: custom.hostname.clone(),
            template: template.as_ref().map(|t| t.name.clone()),
            linked_clone: req.linked_clone && template.is_some(),
            created_ms: now_ms(),
            machine_type: vdc_types::vm::DEFAULT_MACHINE_TYPE.into(),
            cpu_model: cpu_model.into(),
            ha: vdc_types::ha::VmHa {
                priority: req.ha_priority.unwrap_or_default(),
                isolation_response: req.isolation_response.unwrap_or_default(),
                group: ha_group,
            },
            guest_agent: true,
            hotplug_ports: vdc_types::vm::DEFAULT_HOTPLUG_PORTS,
        };
        let mut rec = VmRecord::new(config, VmPowerState::Stopped, None);
        rec.operation = Some(InFlight {
            operation: VmOperation::Creating,
            task: None,
            since_ms: now_ms(),
        });
        self.create_unique(
            &vm_key(&req.name),
            &rec,
            format!(
                "a VM named '{}' already exists; choose another name",
                req.name
            ),
        )
        .await?;
        let params = TaskParams::VmCreate {
            vm_id: rec.config.id.clone(),
            start: req.start,
            host: req.host.clone(),
            network: network.as_ref().map(|n| n.name.clone()),
            boot_source: match (&template, origin.boot) {
                (Some(t), _) => DiskSource::Template {
                    datastore: t.datastore.clone(),
                    path: t.path.clone(),
                    linked: req.linked_clone,
                },
                (None, Some(boot)) => boot,
                (None, None) => DiskSource::Blank,
            },
            data_sources: origin.data.into_iter().map(|(f, _)| f).collect(),
            data_images: origin.data_images.into_iter().map(|(s, _)| s).collect(),
            more_networks: origin.more_networks,
            address: custom.address,
            dhcp: custom.dhcp,
        };
        let me = self.clone();
        let name = req.name.clone();
        let n = name.clone();
        let spawned = self
            .spawn_operation(&name, "vm.create", Some(params), move |ctx| async move {
                me.create_body(&ctx, &n).await
            })
            .await;
        if spawned.is_err() {
            // The task never ran: the record it would have filled goes.
            let gone = self
                .delete_record_if(&name, |r| {
                    r.owner.is_none() && r.state == VmPowerState::Stopped
                })
                .await;
            if let Err(e) = gone {
                tracing::warn!(vm = %name, error = %e, "cannot remove the record of a create that did not start");
            }
        }
        spawned
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
