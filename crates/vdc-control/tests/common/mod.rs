//! Helpers shared by the control-plane tests: a store, agent reports built
//! the way an agent builds them, VM records, and polling with a deadline.

#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vdc_control::VmRecord;
use vdc_store::{RedbStore, Store, StoreExt};
use vdc_types::agent::{DatastoreReport, HostReport, VmRuntime};
use vdc_types::vm::VM_CONFIG_VERSION;
use vdc_types::{now_ms, Accelerator, GuestInfo, VmConfig, VmPowerState};

/// Cluster token used by the tests (the agents are never called with it).
pub const TOKEN: &str = "0123456789abcdef0123456789abcdef";

/// A fresh in-memory store.
pub async fn memory_store() -> Arc<dyn Store> {
    Arc::new(RedbStore::open_in_memory().await.expect("in-memory store"))
}

/// Polls `check` every 20 ms until it returns `Ok`, or panics after
/// `timeout` with the last thing `check` saw.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// A report of host `name` with one shared and one local datastore and
/// the given VMs. `agent_url` points at a port nothing listens on unless the
/// caller says otherwise.
pub fn report(name: &str, vms: Vec<VmRuntime>) -> HostReport {
    HostReport {
        switches: vec![],
        name: name.into(),
        address: "127.0.0.1".into(),
        agent_url: "http://127.0.0.1:9/".into(),
        migration_address: None,
        qemu_models: None,
        tls: None,
        accelerator: Accelerator::Tcg,
        qemu_version: "10.0.2".into(),
        cpus: 2,
        memory_mib: 4096,
        memory_free_mib: 3000,
        cpu_percent: 3.5,
        datastores: vec![
            DatastoreReport {
                name: "shared".into(),
                path: "/srv/vdc/shared".into(),
                shared: true,
                capacity_bytes: 1 << 40,
                free_bytes: 1 << 39,
                cache_mode: Default::default(),
                cache_reason: None,
            },
            DatastoreReport {
                name: format!("local-{name}"),
                path: format!("/srv/vdc/{name}"),
                shared: false,
                capacity_bytes: 1 << 38,
                free_bytes: 1 << 37,
                cache_mode: Default::default(),
                cache_reason: None,
            },
        ],
        vms,
        agent_started_ms: 1_000,
    }
}

/// A VM configuration on the shared datastore, without NICs.
pub fn config(name: &str) -> VmConfig {
    VmConfig {
        version: VM_CONFIG_VERSION,
        id: format!("id-{name}"),
        name: name.into(),
        cpus: 1,
        memory_mib: 256,
        datastore: "shared".into(),
        dir: name.into(),
        disks: vec![vdc_types::DiskSpec {
            name: "disk0".into(),
            datastore: "shared".into(),
            path: format!("{name}/disk0.qcow2"),
            size_bytes: 1 << 30,
        }],
        nics: vec![],
        hostname: name.into(),
        template: None,
        linked_clone: false,
        created_ms: now_ms(),
        machine_type: vdc_types::vm::DEFAULT_MACHINE_TYPE.into(),
        cpu_model: vdc_types::vm::DEFAULT_CPU_MODEL.into(),
        ha: Default::default(),
        guest_agent: false,
        hotplug_ports: 0,
    }
}

/// Writes a VM record at `/vms/<name>`, as the create operation does.
pub async fn put_vm(store: &Arc<dyn Store>, name: &str, state: VmPowerState, host: Option<&str>) {
    let rec = VmRecord::new(config(name), state, host.map(str::to_string));
    store
        .put_json(&format!("/vms/{name}"), &rec)
        .await
        .expect("write VM record");
}

/// Reads the VM record at `/vms/<name>`.
pub async fn get_vm(store: &Arc<dyn Store>, name: &str) -> Option<VmRecord> {
    store
        .get_json(&format!("/vms/{name}"))
        .await
        .expect("read VM record")
}

/// What a host reports about one of its VMs.
pub fn runtime(name: &str, state: VmPowerState, guest: GuestInfo) -> VmRuntime {
    VmRuntime {
        id: format!("id-{name}"),
        name: name.into(),
        state,
        pid: state.has_process().then_some(4242),
        guest,
        stats: None,
        since_ms: now_ms(),
        fenced: None,
        monitor_resets: 0,
        monitor_reason: None,
    }
}
