//! Virtual switches and VLAN port groups on real guests, two hosts (host-2
//! cannot realize the switch: an interface already has its bridge's name,
//! so placement puts every guest on host-1 and a migration to host-2 is
//! refused with the VM left running):
//! a managed switch without uplinks (isolated) is realized on the host as
//! a bridge per VLAN; two guests on VLAN 10 reach each other, a
//! guest on VLAN 20 with an address in the same subnet reaches neither;
//! a switch whose uplink does not exist is reported in drift and a VM on
//! its port group is refused; every bad request is refused with nothing
//! changed; a switch or port group in use cannot be deleted (the error
//! names the VMs); a shaped NIC receives within 10 % of its port group's
//! rate; an agent restart leaves the guests' taps and traffic alone and a
//! deleted bridge is recreated.
//!
//! The test reaches the guests on the isolated switch through a veth pair
//! it plugs into a VLAN's bridge inside the host's namespace (as an
//! administrator's laptop on an access port would); guest-to-guest reach
//! is asked of the guests themselves (`probe ADDR`).

use std::process::Stdio;
use std::time::Duration;

use vdc_client::{Client, ClientError};
use vdc_test_infra::{guest_request, wait_until, wait_until_async, wait_vm_timeout, TestLab};
use vdc_types::api::CreateVmRequest;
use vdc_types::migration::MigrateRequest;
use vdc_types::switch::{RealizationState, Shaping, Switch, SwitchKind, SwitchView};
use vdc_types::{ErrorCode, Network, VmPowerState};

const TEMPLATE: &str = "debian-busybox";
const TASK_TIMEOUT: Duration = Duration::from_secs(300);
const REALIZE_TIMEOUT: Duration = Duration::from_secs(30);
const GUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Boot of a guest under TCG on a loaded machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// Shaping of port group pg20 (toward its NICs).
const SHAPED_KBIT: u32 = 4000;

/// Rate in kbit/s of `bytes` sent from the host to the guest's sink.
fn sink_kbit(netns: &str, ip: &str, bytes: usize) -> f64 {
    let took = vdc_test_infra::guest_sink(netns, ip, 7777, bytes, GUEST_TIMEOUT)
        .unwrap_or_else(|e| panic!("sink to {ip}: {e}"));
    bytes as f64 * 8.0 / took.as_secs_f64() / 1000.0
}

fn switch(name: &str, uplinks: &[&str]) -> Switch {
    Switch {
        version: 0,
        name: name.into(),
        bridge: String::new(),
        kind: SwitchKind::Managed,
        uplinks: uplinks.iter().map(|s| s.to_string()).collect(),
    }
}

fn port_group(name: &str, sw: &str, vlan: Option<u16>, pool: (&str, &str)) -> Network {
    Network {
        name: name.into(),
        switch: Some(sw.into()),
        vlan,
        subnet: "10.99.0.0/24".into(),
        pool_start: pool.0.into(),
        pool_end: pool.1.into(),
        ..Default::default()
    }
}

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

async fn host_state(c: &Client, sw: &str) -> Option<vdc_types::switch::HostSwitchState> {
    state_on(c, sw, "host-1").await
}

async fn state_on(c: &Client, sw: &str, host: &str) -> Option<vdc_types::switch::HostSwitchState> {
    let v: SwitchView = c.get_switch(sw).await.ok()?;
    v.hosts
        .into_iter()
        .find(|h| h.host == host)
        .map(|h| h.state)
}

async fn wait_state(c: &Client, sw: &str, want: RealizationState) {
    wait_state_on(c, sw, "host-1", want).await
}

async fn wait_state_on(c: &Client, sw: &str, host: &str, want: RealizationState) {
    wait_until_async(
        REALIZE_TIMEOUT,
        &format!("switch {sw} {want:?} on {host}"),
        || async { state_on(c, sw, host).await.filter(|s| s.state == want) },
    )
    .await;
}

/// `ip netns exec NS PROGRAM ARGS` (bridge, ip): stdout, or the failure.
fn in_ns(netns: &str, program: &str, args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", netns, program])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn must(netns: &str, program: &str, args: &[&str]) -> String {
    in_ns(netns, program, args).unwrap_or_else(|e| panic!("{program} {args:?}: {e}"))
}

/// Plugs the test's access interface (10.99.0.2, a veth pair in the
/// host's namespace) into the bridge of `vlan`, out of any other.
fn access_vlan(netns: &str, vlan: u16) {
    if in_ns(netns, "ip", &["link", "show", "vdctp1"]).is_err() {
        must(
            netns,
            "ip",
            &[
                "link", "add", "vdctp0", "type", "veth", "peer", "name", "vdctp1",
            ],
        );
        must(
            netns,
            "ip",
            &["addr", "add", "10.99.0.2/24", "dev", "vdctp0"],
        );
        must(netns, "ip", &["link", "set", "vdctp0", "up"]);
    }
    let br = format!("vswv{vlan}");
    must(netns, "ip", &["link", "set", "vdctp1", "master", &br, "up"]);
}

/// (ifindex, name) of every interface in bridge `br`.
fn ports(netns: &str, br: &str) -> Vec<(u64, String)> {
    let out = must(netns, "ip", &["-j", "link", "show", "master", br]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j");
    let mut p: Vec<(u64, String)> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| Some((l["ifindex"].as_u64()?, l["ifname"].as_str()?.to_string())))
        .filter(|(_, n)| n.starts_with("vt"))
        .collect();
    p.sort();
    p
}

/// Asks the guest at `ip` (reached from the host) to probe `target`.
fn probe(netns: &str, ip: &str, target: &str) -> String {
    let lines = wait_until(GUEST_TIMEOUT, &format!("guest {ip}'s service"), || {
        guest_request(netns, ip, 7777, &[&format!("probe {target}")]).ok()
    });
    lines.get(1).cloned().unwrap_or_default()
}

async fn start_vm(c: &Client, name: &str, network: &str) -> String {
    let t = c
        .create_vm(&CreateVmRequest {
            name: name.into(),
            template: Some(TEMPLATE.into()),
            memory_mib: Some(96),
            datastore: Some("shared".into()),
            network: Some(network.into()),
            start: true,
            ..Default::default()
        })
        .await
        .expect("create accepted");
    c.wait_task(&t.id, TASK_TIMEOUT, |_| {})
        .await
        .unwrap_or_else(|e| panic!("create {name}: {e}"));
    let v = wait_vm_timeout(c, name, BOOT_TIMEOUT, |v| {
        v.state == VmPowerState::Running && v.guest.ready
    })
    .await;
    let ip = v.guest.address.expect("an address");
    ip.split('/').next().unwrap_or(&ip).to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn vlans_isolate_guests_and_refusals_change_nothing() {
    let lab = TestLab::builder(2)
        .vdc_binary(env!("CARGO_BIN_EXE_vdc"))
        .start()
        .await;
    let c = &lab.client;
    let ns = lab.netns("host-1").to_string();

    // The lab's own network was migrated into a port group of the
    // existing switch of its bridge.
    let lab_net = c.list_networks().await.expect("networks");
    assert!(
        lab_net.iter().all(|n| n.switch.as_deref() == Some("vmbr0")),
        "{lab_net:?}"
    );
    wait_state(c, "vmbr0", RealizationState::Present).await;

    // Switches: an isolated one (host-2 cannot make its bridge: the name
    // is taken by another interface), and one whose uplink no host has.
    let ns2 = lab.netns("host-2").to_string();
    must(
        &ns2,
        "ip",
        &[
            "link", "add", "vsw", "type", "veth", "peer", "name", "vswpeer",
        ],
    );
    c.create_switch(&switch("vsw", &[])).await.expect("vsw");
    c.create_switch(&switch("broken", &["nosuch0"]))
        .await
        .expect("broken");
    wait_state(c, "vsw", RealizationState::Present).await;
    wait_state_on(c, "vsw", "host-2", RealizationState::Missing).await;
    wait_state(c, "broken", RealizationState::Drift).await;
    let drift = host_state(c, "broken").await.expect("state");
    assert!(drift.detail.unwrap_or_default().contains("nosuch0"));
    assert!(!drift.uplinks[0].present);
    wait_until_async(
        REALIZE_TIMEOUT,
        "a switch.host_state event for broken",
        || async {
            let evs = c.event_history("switch.host_state").await.ok()?;
            evs.into_iter()
                .find(|e| e.object == "broken" && e.message.contains("drift"))
        },
    )
    .await;
    must(&ns, "ip", &["link", "show", "vsw"]);

    // Bad requests, each refused with nothing changed.
    let before = (
        c.list_switches().await.expect("switches").len(),
        c.list_networks().await.expect("networks"),
    );
    refused(
        c.create_switch(&switch("vsw", &[])).await,
        ErrorCode::AlreadyExists,
        "already exists",
    );
    refused(
        c.create_switch(&switch("-bad", &[])).await,
        ErrorCode::InvalidInput,
        "switch name",
    );
    refused(
        c.create_switch(&switch("twice", &["eth9", "eth9"])).await,
        ErrorCode::InvalidInput,
        "twice",
    );
    refused(
        c.create_network(&port_group(
            "v0",
            "vsw",
            Some(4095),
            ("10.99.0.10", "10.99.0.19"),
        ))
        .await,
        ErrorCode::InvalidInput,
        "1-4094",
    );
    refused(
        c.create_network(&port_group(
            "v1",
            "vmbr0",
            Some(10),
            ("10.99.0.10", "10.99.0.19"),
        ))
        .await,
        ErrorCode::InvalidInput,
        "managed switch",
    );
    refused(
        c.create_network(&port_group(
            "v2",
            "nosuch",
            Some(10),
            ("10.99.0.10", "10.99.0.19"),
        ))
        .await,
        ErrorCode::InvalidInput,
        "does not exist",
    );
    refused(
        c.create_switch(&switch("elevenchars", &[])).await,
        ErrorCode::InvalidInput,
        "VLAN bridges",
    );
    assert_eq!(c.list_switches().await.expect("switches").len(), before.0);
    assert_eq!(c.list_networks().await.expect("networks"), before.1);

    // Port groups: VLAN 10 and VLAN 20 in the same subnet; a pool that
    // overlaps on the same VLAN is refused, on another VLAN it is not.
    c.create_network(&port_group(
        "pg10",
        "vsw",
        Some(10),
        ("10.99.0.10", "10.99.0.19"),
    ))
    .await
    .expect("pg10");
    refused(
        c.create_network(&port_group(
            "pg10b",
            "vsw",
            Some(10),
            ("10.99.0.15", "10.99.0.25"),
        ))
        .await,
        ErrorCode::InvalidInput,
        "overlaps",
    );
    c.create_network(&port_group(
        "bubble",
        "vsw",
        Some(30),
        ("10.99.0.10", "10.99.0.19"),
    ))
    .await
    .expect("the same pool on another VLAN");
    c.delete_network("bubble")
        .await
        .expect("delete an unused port group");
    let mut pg20 = port_group("pg20", "vsw", Some(20), ("10.99.0.20", "10.99.0.29"));
    pg20.shaping = Some(Shaping {
        average_kbit: 1,
        peak_kbit: None,
        burst_kib: 32,
    });
    refused(
        c.create_network(&pg20).await,
        ErrorCode::InvalidInput,
        "average rate",
    );
    pg20.shaping = Some(Shaping {
        average_kbit: SHAPED_KBIT,
        peak_kbit: None,
        burst_kib: 32,
    });
    c.create_network(&pg20).await.expect("pg20");
    c.create_network(&port_group(
        "pgx",
        "broken",
        Some(5),
        ("10.99.0.40", "10.99.0.49"),
    ))
    .await
    .expect("pgx");

    // Placement refuses a VM whose switch no host realizes; no VM is left.
    refused(
        c.create_vm(&CreateVmRequest {
            name: "nowhere".into(),
            template: Some(TEMPLATE.into()),
            memory_mib: Some(64),
            network: Some("pgx".into()),
            start: true,
            ..Default::default()
        })
        .await,
        ErrorCode::InvalidState,
        "broken",
    );
    assert!(c.get_vm("nowhere").await.is_err(), "no VM was created");

    let a = start_vm(c, "a10", "pg10").await;
    let b = start_vm(c, "b10", "pg10").await;
    let z = start_vm(c, "c20", "pg20").await;
    for vm in ["a10", "b10", "c20"] {
        let v = c.get_vm(vm).await.expect("vm");
        assert_eq!(
            v.owner.as_deref(),
            Some("host-1"),
            "{vm} placed where vsw exists"
        );
    }
    refused(
        c.migrate_vm(
            "a10",
            &MigrateRequest {
                to: Some("host-2".into()),
                ..Default::default()
            },
        )
        .await,
        ErrorCode::InvalidState,
        "does not realize switch 'vsw'",
    );
    let v = c.get_vm("a10").await.expect("a10");
    assert_eq!(
        (v.state, v.owner.as_deref()),
        (VmPowerState::Running, Some("host-1"))
    );

    // Each VLAN has its bridge, with its guests' taps in it.
    wait_state(c, "vsw", RealizationState::Present).await;
    assert_eq!(ports(&ns, "vswv10").len(), 2);
    assert_eq!(ports(&ns, "vswv20").len(), 1);

    access_vlan(&ns, 10);
    let ab = probe(&ns, &a, &b);
    assert!(ab.starts_with("probe ok"), "a10 -> b10 on VLAN 10: {ab}");
    let az = probe(&ns, &a, &z);
    assert_eq!(az, "probe failed", "a10 -> c20 across VLANs");
    access_vlan(&ns, 20);
    let za = probe(&ns, &z, &a);
    assert_eq!(za, "probe failed", "c20 -> a10 across VLANs");
    let zb = probe(&ns, &z, &b);
    assert_eq!(zb, "probe failed", "c20 -> b10 across VLANs");

    // Shaping: c20's NIC receives at its port group's rate (within 10 %),
    // a10's (unshaped) far faster.
    let shaped = sink_kbit(&ns, &z, 2_000_000);
    println!("shaped NIC: {shaped:.0} kbit/s for {SHAPED_KBIT} kbit/s configured");
    let error = (shaped - f64::from(SHAPED_KBIT)).abs() / f64::from(SHAPED_KBIT);
    assert!(
        error <= 0.10,
        "shaped rate {shaped:.0} kbit/s is not within 10 % of {SHAPED_KBIT}"
    );
    access_vlan(&ns, 10);
    let free = sink_kbit(&ns, &a, 2_000_000);
    println!("unshaped NIC: {free:.0} kbit/s");
    assert!(
        free > 1.5 * f64::from(SHAPED_KBIT),
        "unshaped {free:.0} kbit/s"
    );
    let qdisc = must(&ns, "tc", &["qdisc", "show"]);
    assert!(qdisc.contains("tbf") && qdisc.contains("4Mbit"), "{qdisc}");

    // In use: the errors name the VMs; nothing is deleted.
    refused(c.delete_switch("vsw").await, ErrorCode::InvalidState, "a10");
    refused(
        c.delete_network("pg20").await,
        ErrorCode::InvalidState,
        "c20",
    );
    assert!(c.get_network("pg20").await.is_ok());

    // Reconcile: the bridge of `broken` deleted by hand comes back; the
    // running guests' taps and traffic are untouched by an agent restart.
    must(&ns, "ip", &["link", "del", "broken"]);
    wait_until(REALIZE_TIMEOUT, "the deleted bridge recreated", || {
        in_ns(&ns, "ip", &["link", "show", "broken"]).ok()
    });
    // A host "reboot" lost the bridge while its agent was down: the new
    // agent recreates it at start.
    lab.kill_agent("host-1");
    must(&ns, "ip", &["link", "del", "broken"]);
    let taps_before = (ports(&ns, "vswv10"), ports(&ns, "vswv20"));
    lab.restart_agent("host-1");
    wait_until(
        REALIZE_TIMEOUT,
        "the bridge recreated by the restarted agent",
        || in_ns(&ns, "ip", &["link", "show", "broken"]).ok(),
    );
    assert_eq!((ports(&ns, "vswv10"), ports(&ns, "vswv20")), taps_before);
    let ab = probe(&ns, &a, &b);
    assert!(
        ab.starts_with("probe ok"),
        "a10 -> b10 after the agent restart: {ab}"
    );

    // Switch shown by the CLI with the host's state.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vdc"))
        .args(["switch", "show", "broken"])
        .env("VDC_URL", &lab.info.api_url)
        .env("VDC_TOKEN_FILE", &lab.info.token_file)
        .env_remove("VDC_TOKEN")
        .output()
        .expect("vdc switch show");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("host-1") && text.contains("drift"),
        "{text}"
    );
}
