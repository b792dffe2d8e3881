//! A whole lab on the real machine (needs root, the guest image and an
//! up-to-date `vdc` binary: `cargo build -p vdc` first): two hosts connect, a demo VM boots
//! from the imported template and answers from every host's namespace, and
//! dropping the lab kills its QEMU and removes its namespaces.

use std::time::Duration;

use vdc_lab::ip;
use vdc_lab::process::ProcessHandle;
use vdc_test_infra::{guest_request, wait_until, wait_vm, TestLab};
use vdc_types::{HostState, VmPowerState, GUEST_SERVICE_PORT};

/// The QEMU processes whose pidfiles are in the lab's agents' state
/// directories (with their start times, so a reused pid is not taken for a
/// surviving QEMU).
fn qemu_processes(lab: &TestLab) -> Vec<ProcessHandle> {
    let mut pids = Vec::new();
    for h in &lab.info.hosts {
        let Ok(vms) = std::fs::read_dir(h.state_dir.join("vms")) else {
            continue;
        };
        for vm in vms.flatten() {
            if let Ok(text) = std::fs::read_to_string(vm.path().join("qemu.pid")) {
                pids.extend(text.trim().parse::<u32>().ok().map(ProcessHandle::of));
            }
        }
    }
    pids
}

#[tokio::test]
async fn two_host_lab_runs_a_demo_vm_reachable_from_every_host() {
    let lab = TestLab::builder(2).demo_vms(1).start().await;

    let hosts = lab.client.list_hosts().await.expect("list hosts");
    let mut names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["host-1", "host-2"]);
    assert!(hosts.iter().all(|h| h.state == HostState::Connected));
    let status = vdc_lab::status(&lab.info.lab_id, &lab.spec.state_root).expect("status");
    assert!(status.server.alive);
    assert!(status.hosts.iter().all(|h| h.agent_alive));

    let networks = lab.client.list_networks().await.expect("networks");
    assert!(networks
        .iter()
        .any(|n| n.name == "lab" && n.subnet == lab.info.subnet));
    let templates = lab.client.list_templates().await.expect("templates");
    assert!(templates.iter().any(|t| t.name == "debian-busybox"));

    let vm = wait_vm(&lab.client, "demo-1", |vm| {
        vm.state == VmPowerState::Running && vm.guest.ready
    })
    .await;
    let ip = vm.nics[0]
        .ip
        .as_deref()
        .and_then(|cidr| cidr.split('/').next())
        .expect("demo-1 has an address")
        .to_string();
    for h in &lab.info.hosts {
        // The guest reports ready once its services are launched; its TCP
        // service may still be a moment from listening.
        let answers = wait_until(
            Duration::from_secs(60),
            &format!("demo-1 to answer from {}", h.name),
            || guest_request(&h.netns, &ip, GUEST_SERVICE_PORT, &[]).ok(),
        );
        let fields: Vec<&str> = answers[0].split_whitespace().collect();
        assert_eq!(fields.len(), 3, "{answers:?}");
        assert_eq!(fields[0], "demo-1", "{answers:?}");
    }

    // What a failing test would print: every log, the VM's console included.
    let tails = lab.log_tails(50);
    assert!(tails.contains("----- server log"), "{tails}");
    assert!(tails.contains("----- agent log of host-2"), "{tails}");
    assert!(
        tails.contains("----- console of demo-1 on shared"),
        "{tails}"
    );
    assert!(tails.contains("VDC-GUEST-READY"), "{tails}");

    let qemu = qemu_processes(&lab);
    assert!(!qemu.is_empty(), "no QEMU pidfile found");
    assert!(
        qemu.iter().all(|p| p.start_time.is_some() && p.is_alive()),
        "QEMU not running before lab down: {qemu:?}"
    );
    let netns: Vec<String> = lab.info.hosts.iter().map(|h| h.netns.clone()).collect();
    drop(lab);
    for p in qemu {
        assert!(!p.is_alive(), "QEMU {} survived lab down", p.pid);
    }
    let left = ip::netns_list().expect("netns list");
    assert!(netns.iter().all(|n| !left.contains(n)), "{left:?}");
}
