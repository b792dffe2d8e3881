//! NIC hot plug on real guests, two hosts:
//! guest A (lab network) cannot reach guest B (port group `back`, another
//! subnet on the same segment); a NIC on `back` hot-plugged into running A
//! appears in A's guest with its MAC and carries A's traffic to B; it stays
//! across a live migration to the other host and a power cycle (the
//! configuration follows); removed from the running VM, it leaves the
//! guest and A no longer reaches B. Bad requests are refused with nothing
//! changed; events `vm.nic_added` / `vm.nic_removed` are published.
//! Isolated networks: NICs hot-plugged on a switch without uplinks reach
//! nothing on another host (a bounded probe fails) and reach each other
//! once both guests run on one host.

use std::time::Duration;

use vdc_client::{Client, ClientError};
use vdc_test_infra::{
    guest_request, guest_request_timeout, wait_until, wait_until_async, wait_vm_timeout, TestLab,
};
use vdc_types::api::CreateVmRequest;
use vdc_types::migration::MigrateRequest;
use vdc_types::nic::AddNicRequest;
use vdc_types::switch::{RealizationState, Switch, SwitchKind};
use vdc_types::{ErrorCode, Network, VmPowerState};

const TEMPLATE: &str = "debian-busybox";
const TASK_TIMEOUT: Duration = Duration::from_secs(300);
const GUEST_TIMEOUT: Duration = Duration::from_secs(120);
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

fn refused(r: Result<impl std::fmt::Debug, ClientError>, code: ErrorCode, needle: &str) {
    match r {
        Err(ClientError::Api(e)) => {
            assert_eq!(e.code, code, "{}", e.message);
            assert!(
                e.message.contains(needle),
                "'{needle}' not in: {}",
                e.message
            );
        }
        other => panic!("expected a {code:?} refusal containing '{needle}', got {other:?}"),
    }
}

async fn start_vm(c: &Client, name: &str, network: &str) -> String {
    let t = c
        .create_vm(&CreateVmRequest {
            name: name.into(),
            template: Some(TEMPLATE.into()),
            memory_mib: Some(96),
            datastore: Some("shared".into()),
            network: Some(network.into()),
            host: Some("host-1".into()),
            start: true,
            ..Default::default()
        })
        .await
        .expect("create accepted");
    c.wait_task(&t.id, TASK_TIMEOUT, |_| {})
        .await
        .unwrap_or_else(|e| panic!("create {name}: {e}"));
    ready_address(c, name).await
}

async fn ready_address(c: &Client, name: &str) -> String {
    let v = wait_vm_timeout(c, name, BOOT_TIMEOUT, |v| {
        v.state == VmPowerState::Running && v.guest.ready
    })
    .await;
    let ip = v.guest.address.expect("an address");
    ip.split('/').next().unwrap_or(&ip).to_string()
}

/// One request to guest `ip`'s service (reached from `netns`): its answer.
fn ask(netns: &str, ip: &str, line: &str) -> String {
    let lines = wait_until(GUEST_TIMEOUT, &format!("guest {ip}'s service"), || {
        guest_request(netns, ip, 7777, &[line]).ok()
    });
    lines.get(1).cloned().unwrap_or_default()
}

/// Configures the guest's NIC `mac` with `ip` once the guest has probed
/// the hot-plugged device.
fn configure(netns: &str, guest: &str, mac: &str, ip: &str) {
    wait_until(GUEST_TIMEOUT, &format!("NIC {mac} configured"), || {
        let l = guest_request(netns, guest, 7777, &[&format!("nic {mac} {ip}")]).ok()?;
        l.get(1).filter(|x| x.starts_with("nic ok ")).cloned()
    });
}

async fn wait_task(c: &Client, id: &str, what: &str) {
    c.wait_task(id, TASK_TIMEOUT, |_| {})
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hot_plugged_nic_carries_traffic_follows_the_vm_and_goes() {
    let lab = TestLab::builder(2)
        .vdc_binary(env!("CARGO_BIN_EXE_vdc"))
        .start()
        .await;
    let c = &lab.client;
    let ns = lab.netns("host-1").to_string();

    c.create_network(&Network {
        name: "back".into(),
        bridge: "vmbr0".into(),
        subnet: "10.98.0.0/24".into(),
        pool_start: "10.98.0.10".into(),
        pool_end: "10.98.0.19".into(),
        ..Default::default()
    })
    .await
    .expect("port group back");
    let a = start_vm(c, "nic-a", "lab").await;
    let b = start_vm(c, "nic-b", "back").await;
    let b_ip = c.get_vm("nic-b").await.expect("b").nics[0]
        .ip
        .clone()
        .expect("b's address");
    let b_addr = b_ip.split('/').next().expect("address").to_string();
    assert_ne!(b, "");
    let nics_before = ask(&ns, &a, "nics");
    assert_eq!(nics_before.split(' ').count(), 2, "{nics_before}");
    assert_eq!(ask(&ns, &a, &format!("probe {b_addr}")), "probe failed");

    // Refusals, nothing changed.
    let before = c.get_vm("nic-a").await.expect("a").nics;
    refused(
        c.add_nic(
            "nic-a",
            &AddNicRequest {
                network: "back".into(),
                mac: Some("01:00:5e:00:00:01".into()),
            },
        )
        .await,
        ErrorCode::InvalidInput,
        "multicast",
    );
    refused(
        c.add_nic(
            "nic-a",
            &AddNicRequest {
                network: "nosuch".into(),
                mac: None,
            },
        )
        .await,
        ErrorCode::NotFound,
        "nosuch",
    );
    refused(
        c.add_nic(
            "nic-a",
            &AddNicRequest {
                network: "back".into(),
                mac: Some(before[0].mac.clone()),
            },
        )
        .await,
        ErrorCode::AlreadyExists,
        "nic-a",
    );
    refused(
        c.remove_nic("nic-a", "net0").await,
        ErrorCode::InvalidState,
        "root complex",
    );
    refused(
        c.remove_nic("nic-a", "hpnet3").await,
        ErrorCode::NotFound,
        "no NIC",
    );
    assert_eq!(c.get_vm("nic-a").await.expect("a").nics, before);

    // Hot plug: the guest sees the NIC and reaches B through it.
    let mac = "52:54:00:4e:1c:01";
    let added = c
        .add_nic(
            "nic-a",
            &AddNicRequest {
                network: "back".into(),
                mac: Some(mac.into()),
            },
        )
        .await
        .expect("add accepted");
    assert_eq!(added.nic, "hpnet0");
    wait_task(c, &added.task.id, "nic add").await;
    let vm = c.get_vm("nic-a").await.expect("a");
    assert_eq!(vm.state, VmPowerState::Running);
    let nic = vm.nics.iter().find(|n| n.mac == mac).expect("the NIC");
    assert_eq!(nic.port, Some(0));
    let nic_ip = nic.ip.clone().expect("an address from back's pool");
    assert!(nic_ip.starts_with("10.98.0."), "{nic_ip}");
    configure(&ns, &a, mac, &nic_ip);
    let seen = ask(&ns, &a, "nics");
    assert!(seen.contains(&format!("={mac}")), "{seen}");
    assert_eq!(seen.split(' ').count(), 3, "{seen}");
    let probed = ask(&ns, &a, &format!("probe {b_addr}"));
    assert!(probed.starts_with("probe ok nic-b "), "{probed}");
    wait_until_async(GUEST_TIMEOUT, "vm.nic_added", || async {
        c.event_history("vm.nic_added")
            .await
            .ok()?
            .into_iter()
            .find(|e| e.object == "nic-a" && e.message.contains(mac))
    })
    .await;

    // A live migration keeps the NIC: its device on the same port, its
    // address in the guest, its traffic.
    let t = c
        .migrate_vm(
            "nic-a",
            &MigrateRequest {
                to: Some("host-2".into()),
                ..Default::default()
            },
        )
        .await
        .expect("migrate accepted");
    wait_task(c, &t.id, "migration").await;
    let vm = c.get_vm("nic-a").await.expect("a");
    assert_eq!(vm.owner.as_deref(), Some("host-2"));
    let probed = ask(&ns, &a, &format!("probe {b_addr}"));
    assert!(probed.starts_with("probe ok nic-b "), "{probed}");

    // A power cycle boots the guest with the NIC.
    let t = c
        .vm_action("nic-a", "stop", serde_json::json!({}))
        .await
        .expect("stop");
    wait_task(c, &t.id, "stop").await;
    let t = c
        .vm_action("nic-a", "start", serde_json::json!({}))
        .await
        .expect("start");
    wait_task(c, &t.id, "start").await;
    let a = ready_address(c, "nic-a").await;
    let seen = ask(&ns, &a, "nics");
    assert!(seen.contains(&format!("={mac}")), "{seen}");
    configure(&ns, &a, mac, &nic_ip);
    let probed = ask(&ns, &a, &format!("probe {b_addr}"));
    assert!(probed.starts_with("probe ok nic-b "), "{probed}");

    // Hot unplug (by MAC): the guest releases it; A no longer reaches B.
    let removed = c.remove_nic("nic-a", mac).await.expect("remove accepted");
    assert_eq!(removed.nic, "hpnet0");
    wait_task(c, &removed.task.id, "nic remove").await;
    let vm = c.get_vm("nic-a").await.expect("a");
    assert_eq!(vm.state, VmPowerState::Running);
    assert_eq!(vm.nics, before);
    let seen = ask(&ns, &a, "nics");
    assert!(!seen.contains(mac), "{seen}");
    assert_eq!(ask(&ns, &a, &format!("probe {b_addr}")), "probe failed");
    wait_until_async(GUEST_TIMEOUT, "vm.nic_removed", || async {
        c.event_history("vm.nic_removed")
            .await
            .ok()?
            .into_iter()
            .find(|e| e.object == "nic-a" && e.message.contains(mac))
    })
    .await;

    // Isolated network: a switch without uplinks. A and B, on one host,
    // reach each other through NICs on it; once B runs on the other host
    // they do not.
    let a_host = c.get_vm("nic-a").await.expect("a").owner.expect("A's host");
    let other = if a_host == "host-1" {
        "host-2"
    } else {
        "host-1"
    };
    if c.get_vm("nic-b").await.expect("b").owner.as_deref() != Some(a_host.as_str()) {
        let t = c
            .migrate_vm(
                "nic-b",
                &MigrateRequest {
                    to: Some(a_host.clone()),
                    ..Default::default()
                },
            )
            .await
            .expect("migrate accepted");
        wait_task(c, &t.id, "migration of nic-b to A's host").await;
    }
    c.create_switch(&Switch {
        version: 0,
        name: "bub".into(),
        bridge: String::new(),
        kind: SwitchKind::Managed,
        uplinks: vec![],
    })
    .await
    .expect("isolated switch");
    c.create_network(&Network {
        name: "bubble".into(),
        switch: Some("bub".into()),
        subnet: "10.97.0.0/24".into(),
        pool_start: "10.97.0.10".into(),
        pool_end: "10.97.0.19".into(),
        ..Default::default()
    })
    .await
    .expect("port group bubble");
    wait_until_async(GUEST_TIMEOUT, "bub realized on both hosts", || async {
        let v = c.get_switch("bub").await.ok()?;
        (v.hosts.len() == 2
            && v.hosts
                .iter()
                .all(|h| h.state.state == RealizationState::Present))
        .then_some(())
    })
    .await;
    let mut bubble_ip = Vec::new();
    let mut bubble_b = None;
    for (vm, mac) in [
        ("nic-a", "52:54:00:4e:1c:0a"),
        ("nic-b", "52:54:00:4e:1c:0b"),
    ] {
        let added = c
            .add_nic(
                vm,
                &AddNicRequest {
                    network: "bubble".into(),
                    mac: Some(mac.into()),
                },
            )
            .await
            .expect("add accepted");
        wait_task(c, &added.task.id, "nic add").await;
        let ip = c
            .get_vm(vm)
            .await
            .expect("vm")
            .nics
            .iter()
            .find(|n| n.mac == mac)
            .and_then(|n| n.ip.clone())
            .expect("an address on bubble");
        bubble_ip.push(ip.split('/').next().expect("address").to_string());
        if vm == "nic-a" {
            configure(&ns, &a, mac, &ip);
        } else {
            bubble_b = Some((mac, ip));
        }
    }
    // B is reached only on its console: the line is typed again until A
    // reaches B (the guest may not have probed the new device yet).
    let (b_mac, b_bubble) = bubble_b.expect("B's bubble NIC");
    let line = format!(
        "\nfor d in /sys/class/net/*; do [ \"$(cat $d/address)\" = {b_mac} ] && ip addr replace {b_bubble} dev ${{d##*/}} && ip link set ${{d##*/}} up; done\n"
    );
    wait_until_async(
        GUEST_TIMEOUT,
        "A reaching B on the isolated switch",
        || async {
            c.console_input("nic-b", &line).await.ok()?;
            let l = guest_request_timeout(
                &ns,
                &a,
                7777,
                &[&format!("probe {}", bubble_ip[1])],
                Duration::from_secs(10),
            )
            .ok()?;
            l.get(1)
                .filter(|x| x.starts_with("probe ok nic-b "))
                .cloned()
        },
    )
    .await;
    let t = c
        .migrate_vm(
            "nic-b",
            &MigrateRequest {
                to: Some(other.into()),
                ..Default::default()
            },
        )
        .await
        .expect("migrate accepted");
    wait_task(c, &t.id, "migration of nic-b to the other host").await;
    assert_eq!(
        ask(&ns, &a, &format!("probe {}", bubble_ip[1])),
        "probe failed",
        "an isolated switch reached another host"
    );
}
