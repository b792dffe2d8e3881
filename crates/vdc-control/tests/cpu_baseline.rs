//! The cluster's CPU baseline from the hosts' reports: the model new VMs
//! get, each host's fit in the host views, and a host below a VM's model
//! refused for its start (the rules: `vdc_sched::cpu_baseline`).

mod common;

use std::time::Duration;

use common::{eventually, memory_store, put_vm, report, TOKEN};
use vdc_control::Cluster;
use vdc_sched::cpu_baseline::{required_flags, BaselineMode};
use vdc_store::StoreExt;
use vdc_types::agent::QemuModelsReport;
use vdc_types::{Accelerator, TaskState, VmPowerState};

/// A KVM host whose CPU has exactly the flags of `model`.
fn kvm_host(name: &str, model: &str) -> vdc_types::agent::HostReport {
    let mut r = report(name, vec![]);
    r.accelerator = Accelerator::Kvm;
    r.qemu_models = Some(QemuModelsReport {
        machine_types: vec![vdc_types::vm::DEFAULT_MACHINE_TYPE.into()],
        cpu_models: vdc_sched::cpu_baseline::CPU_MODELS
            .iter()
            .map(|m| m.name.to_string())
            .collect(),
        cpu_flags: required_flags(model)
            .expect("known model")
            .into_iter()
            .map(String::from)
            .collect(),
    });
    r
}

#[tokio::test]
async fn the_baseline_follows_the_hosts_and_a_host_below_it_is_shown_and_refused() {
    let store = memory_store().await;
    let cluster = Cluster::open(store.clone(), TOKEN.into())
        .await
        .expect("open");
    // Emulated hosts only: the default model.
    let mut tcg = kvm_host("host-0", "qemu64");
    tcg.accelerator = Accelerator::Tcg;
    cluster.ingest_report(tcg).await.unwrap();
    let b = cluster.cpu_baseline().await;
    assert_eq!((b.mode.as_str(), b.model.as_str()), ("auto", "Nehalem-v1"));
    assert!(b.hosts[0].fit.meets && b.hosts[0].fit.emulated, "{b:?}");

    // Two KVM hosts: the newest model both run.
    cluster
        .ingest_report(kvm_host("host-1", "Haswell-noTSX-v1"))
        .await
        .unwrap();
    cluster
        .ingest_report(kvm_host("host-2", "Westmere-v1"))
        .await
        .unwrap();
    let b = cluster.cpu_baseline().await;
    assert_eq!(b.model, "Westmere-v1", "{b:?}");
    assert_eq!(b.newest_common.as_deref(), Some("Westmere-v1"));
    assert!(b.hosts.iter().all(|h| h.fit.meets), "{b:?}");

    // A baseline fixed above host-2: it is reported with what it lacks.
    cluster.set_cpu_baseline_mode(BaselineMode::parse("Haswell-noTSX-v1").unwrap());
    let b = cluster.cpu_baseline().await;
    let h2 = b.hosts.iter().find(|h| h.host == "host-2").expect("host-2");
    assert!(!h2.fit.meets, "{b:?}");
    assert!(h2.fit.missing_flags.contains(&"avx2".to_string()), "{b:?}");
    let hosts = cluster.list_hosts().await.unwrap();
    let h2 = hosts.iter().find(|h| h.name == "host-2").expect("host-2");
    let fit = h2.cpu_baseline.as_ref().expect("fit shown");
    assert!(!fit.meets && fit.reason.contains("lacks flags of Haswell-noTSX-v1"));

    // A VM of that model is not started on host-2.
    put_vm(&store, "web", VmPowerState::Stopped, Some("host-1")).await;
    let key = "/vms/web";
    let mut rec: vdc_control::VmRecord = store.get_json(key).await.unwrap().unwrap();
    rec.config.cpu_model = "Haswell-noTSX-v1".into();
    store.put_json(key, &rec).await.unwrap();
    let task = cluster
        .start_vm("web", Some("host-2".into()))
        .await
        .expect("accepted");
    let ended = eventually("the start fails", Duration::from_secs(20), || {
        let cluster = cluster.clone();
        let id = task.id.clone();
        async move {
            let t = cluster.tasks.get(&id).await.map_err(|e| e.message)?;
            if t.state == TaskState::Running || t.state == TaskState::Queued {
                return Err(format!("{:?}", t.state));
            }
            Ok(t)
        }
    })
    .await;
    assert_eq!(ended.state, TaskState::Failed, "{ended:?}");
    let msg = ended.error.expect("error").message;
    assert!(
        msg.contains("host 'host-2' cannot run the VM's CPU model") && msg.contains("avx2"),
        "{msg}"
    );
    let rec: vdc_control::VmRecord = store.get_json(key).await.unwrap().unwrap();
    assert_eq!(rec.state, VmPowerState::Stopped);
}
