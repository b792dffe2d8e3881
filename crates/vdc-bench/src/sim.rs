//! The **simulated hypervisor driver**, for scale benchmarks only: hosts
//! that exist as a report loop, with VMs that exist as records and report
//! lines. No QEMU, no agent API: a simulated host joins with a real agent
//! credential and posts `POST /api/v1/agent/report` once a second, listing
//! its VMs as running, exactly as a real agent's reporter does. It lets one
//! machine show the server 500 hosts and 10,000 VMs.
//!
//! What it does not do (yet): serve the agent API, so the server cannot
//! start, stop or move a simulated VM; the benchmark measures what the
//! server does with reports and API reads, and plans (not runs) restarts.

use std::sync::Arc;
use std::time::Duration;

use vdc_control::VmRecord;
use vdc_store::{Op, Store};
use vdc_types::agent::{DatastoreReport, HostReport, VmRuntime};
use vdc_types::vm::VM_CONFIG_VERSION;
use vdc_types::{Accelerator, GuestInfo, VmConfig, VmPowerState};

/// Name of simulated host `i` (0-based).
pub fn host_name(i: usize) -> String {
    format!("sim-host-{i}")
}

/// Name of simulated VM `i` (0-based).
pub fn vm_name(i: usize) -> String {
    format!("sim-vm-{i}")
}

/// The host of simulated VM `i` among `hosts`.
pub fn host_of(vm: usize, hosts: usize) -> usize {
    vm % hosts
}

/// When every simulated VM started (fixed: a report then changes nothing).
pub const SINCE_MS: u64 = 1_000_000;

/// Memory of a simulated VM, MiB.
pub const VM_MEMORY_MIB: u64 = 1024;

/// The configuration of simulated VM `i`.
pub fn vm_config(i: usize) -> VmConfig {
    let name = vm_name(i);
    VmConfig {
        version: VM_CONFIG_VERSION,
        id: format!("sim-{i:08}"),
        name: name.clone(),
        cpus: 1,
        memory_mib: VM_MEMORY_MIB,
        datastore: "shared".into(),
        dir: name.clone(),
        disks: vec![],
        nics: vec![],
        hostname: name,
        template: None,
        created_ms: SINCE_MS,
        machine_type: vdc_types::vm::DEFAULT_MACHINE_TYPE.into(),
        cpu_model: vdc_types::vm::DEFAULT_CPU_MODEL.into(),
        ha: Default::default(),
        linked_clone: false,
        guest_agent: false,
        hotplug_ports: 0,
    }
}

/// Write the records of `vms` simulated VMs spread over `hosts` hosts, as
/// running, in transactions of 100.
pub async fn seed(store: &Arc<dyn Store>, hosts: usize, vms: usize) -> Result<(), String> {
    let mut ops = Vec::new();
    for i in 0..vms {
        let mut rec = VmRecord::new(
            vm_config(i),
            VmPowerState::Running,
            Some(host_name(host_of(i, hosts))),
        );
        rec.since_ms = SINCE_MS;
        let value = serde_json::to_vec(&rec).map_err(|e| e.to_string())?;
        ops.push(Op::Put {
            key: format!("/vms/{}", vm_name(i)),
            value,
            lease: None,
        });
        if ops.len() == 100 || i + 1 == vms {
            store
                .txn(vec![], std::mem::take(&mut ops), vec![])
                .await
                .map_err(|e| format!("seeding VM records: {e}"))?;
        }
    }
    Ok(())
}

/// The report of simulated host `h`: its VMs running, nothing changed
/// since they started.
pub fn report(h: usize, hosts: usize, vms: usize) -> HostReport {
    let name = host_name(h);
    let runtimes = (h..vms)
        .step_by(hosts)
        .map(|i| VmRuntime {
            id: format!("sim-{i:08}"),
            name: vm_name(i),
            state: VmPowerState::Running,
            pid: Some(1),
            guest: GuestInfo::default(),
            stats: None,
            since_ms: SINCE_MS,
            fenced: None,
            monitor_resets: 0,
            monitor_reason: None,
        })
        .collect::<Vec<_>>();
    let used = runtimes.len() as u64 * VM_MEMORY_MIB;
    HostReport {
        name: name.clone(),
        address: "127.0.0.1".into(),
        agent_url: "http://127.0.0.1:9/".into(),
        migration_address: None,
        qemu_models: None,
        tls: None,
        accelerator: Accelerator::Kvm,
        qemu_version: "simulated".into(),
        cpus: 64,
        memory_mib: 256 * 1024,
        memory_free_mib: (256 * 1024u64).saturating_sub(used),
        cpu_percent: 10.0,
        datastores: vec![DatastoreReport {
            name: "shared".into(),
            path: "/simulated/shared".into(),
            shared: true,
            capacity_bytes: 1 << 44,
            free_bytes: 1 << 43,
            cache_mode: Default::default(),
            cache_reason: None,
        }],
        vms: runtimes,
        switches: vec![],
        agent_started_ms: SINCE_MS,
    }
}

/// Post one report with the host's agent credential; the time it took.
pub async fn post_report(
    http: &reqwest::Client,
    api: &str,
    credential: &str,
    report: &HostReport,
) -> Result<Duration, String> {
    let start = std::time::Instant::now();
    let response = http
        .post(format!("{api}/api/v1/agent/report"))
        .bearer_auth(credential)
        .json(report)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("report refused: {}", response.status()));
    }
    Ok(start.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_vm_is_reported_by_its_host_once() {
        let (hosts, vms) = (7, 100);
        let mut seen = vec![0; vms];
        for h in 0..hosts {
            for rt in report(h, hosts, vms).vms {
                let i: usize = rt
                    .name
                    .trim_start_matches("sim-vm-")
                    .parse()
                    .expect("index");
                assert_eq!(host_of(i, hosts), h);
                seen[i] += 1;
            }
        }
        assert!(seen.iter().all(|n| *n == 1));
    }
}
