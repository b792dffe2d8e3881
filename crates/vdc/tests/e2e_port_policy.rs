//! A port group's security policy and outbound shaping on real guests (one
//! host): a guest on a port group that rejects forged transmits loses its
//! connectivity when it changes its MAC and gets it back when it takes its
//! own MAC again (typed on its serial console); a guest on a port group
//! that allows them keeps answering with its new MAC; what a guest sends on
//! a port group with outbound shaping measures within 10 % of the rate.

use std::net::SocketAddr;
use std::time::Duration;

use vdc_client::Client;
use vdc_test_infra::{
    guest_request, guest_request_timeout, guest_source, wait_until, wait_vm_timeout, TestLab,
};
use vdc_types::api::CreateVmRequest;
use vdc_types::switch::{SecurityPolicy, Shaping};
use vdc_types::{Network, VmPowerState};

const TASK_TIMEOUT: Duration = Duration::from_secs(300);
const GUEST_TIMEOUT: Duration = Duration::from_secs(120);
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// Outbound shaping of port group `limited`.
const OUTBOUND_KBIT: u32 = 4000;

async fn start_vm(c: &Client, name: &str, network: &str) -> (String, String) {
    let t = c
        .create_vm(&CreateVmRequest {
            name: name.into(),
            template: Some("debian-busybox".into()),
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
    (
        ip.split('/').next().unwrap_or(&ip).to_string(),
        v.nics[0].mac.clone(),
    )
}

fn ask(netns: &str, ip: &str, line: &str) -> String {
    let lines = wait_until(GUEST_TIMEOUT, &format!("guest {ip}'s service"), || {
        guest_request(netns, ip, 7777, &[line]).ok()
    });
    lines.get(1).cloned().unwrap_or_default()
}

/// Whether guest `ip` answers within 3 s.
fn answers(netns: &str, ip: &str) -> bool {
    guest_request_timeout(netns, ip, 7777, &["nics"], Duration::from_secs(3)).is_ok()
}

fn port_group(name: &str, host: &str, pool: (u8, u8)) -> Network {
    let prefix = host.rsplit_once('.').expect("an IPv4 address").0;
    Network {
        name: name.into(),
        bridge: "vmbr0".into(),
        subnet: format!("{prefix}.0/24"),
        pool_start: format!("{prefix}.{}", pool.0),
        pool_end: format!("{prefix}.{}", pool.1),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_transmits_are_dropped_where_refused_and_outbound_shaping_holds() {
    let lab = TestLab::builder(1)
        .vdc_binary(env!("CARGO_BIN_EXE_vdc"))
        .start()
        .await;
    let c = &lab.client;
    let ns = lab.netns("host-1").to_string();
    let host_addr = c.get_host("host-1").await.expect("host").address;

    let mut guarded = port_group("guarded", &host_addr, (200, 209));
    guarded.security = Some(SecurityPolicy {
        forged_transmits: false,
    });
    c.create_network(&guarded).await.expect("guarded");
    let mut limited = port_group("limited", &host_addr, (210, 219));
    limited.outbound_shaping = Some(Shaping {
        average_kbit: OUTBOUND_KBIT,
        peak_kbit: None,
        burst_kib: 64,
    });
    c.create_network(&limited).await.expect("limited");
    // A peak rate is refused outbound, nothing created.
    let mut bad = port_group("badpeak", &host_addr, (220, 229));
    bad.outbound_shaping = Some(Shaping {
        average_kbit: OUTBOUND_KBIT,
        peak_kbit: Some(8000),
        burst_kib: 64,
    });
    let e = c.create_network(&bad).await.expect_err("peak refused");
    assert!(e.to_string().contains("peak"), "{e}");
    assert!(c.get_network("badpeak").await.is_err());

    let (g1, g1_mac) = start_vm(c, "guarded-1", "guarded").await;
    let (g2, _) = start_vm(c, "limited-1", "limited").await;

    // Outbound shaping: what the guest sends, after the policer's initial
    // bucket (one second of the rate plus the burst).
    let listen: SocketAddr = format!("{host_addr}:7790").parse().expect("address");
    let (took, counted) = guest_source(
        &ns,
        &g2,
        7777,
        listen,
        (3_000_000, 1_000_000),
        GUEST_TIMEOUT,
    )
    .expect("the guest's transfer");
    let kbit = counted as f64 * 8.0 / took.as_secs_f64() / 1000.0;
    eprintln!("outbound from the guest: {kbit:.0} kbit/s for {OUTBOUND_KBIT} configured");
    let want = f64::from(OUTBOUND_KBIT);
    assert!(
        (kbit - want).abs() <= want * 0.1,
        "{kbit:.0} kbit/s is not within 10 % of {OUTBOUND_KBIT}"
    );

    // Forged transmits allowed (limited): the guest answers with its new
    // MAC.
    let new2 = "52:54:00:f0:0d:02";
    assert_eq!(ask(&ns, &g2, &format!("mac {new2}")), "mac ok");
    wait_until(
        GUEST_TIMEOUT,
        "the allowed guest answering with its new MAC",
        || {
            guest_request(&ns, &g2, 7777, &["nics"])
                .ok()
                .filter(|l| l.get(1).is_some_and(|n| n.contains(new2)))
        },
    );

    // Refused (guarded): the guest falls silent once its MAC changed, and
    // answers again with its own MAC back.
    assert!(answers(&ns, &g1));
    assert_eq!(ask(&ns, &g1, "mac 52:54:00:f0:0d:01"), "mac ok");
    wait_until(GUEST_TIMEOUT, "the guarded guest cut off", || {
        (!answers(&ns, &g1)).then_some(())
    });
    assert!(!answers(&ns, &g1), "a forged source MAC got through");
    c.console_input(
        "guarded-1",
        &format!("\nip link set eth0 address {g1_mac}\n"),
    )
    .await
    .expect("console input");
    wait_until(
        GUEST_TIMEOUT,
        "the guarded guest back with its own MAC",
        || answers(&ns, &g1).then_some(()),
    );
}
