//! The migration network (vSphere's vMotion network) on real guests: in a
//! lab whose hosts have a second interface for migrations (`mig0`, their
//! agents' `--migration-address`), each host shows its migration address,
//! and a live migration's stream leaves the management network alone: the
//! target's `mig0` receives at least the guest's dirtied memory while its
//! management uplink receives a small part of it.

use std::time::Duration;

use vdc_test_infra::{guest_request, wait_until, wait_vm_timeout, TestLab};
use vdc_types::api::CreateVmRequest;
use vdc_types::migration::MigrateRequest;
use vdc_types::VmPowerState;

const TASK_TIMEOUT: Duration = Duration::from_secs(300);
const GUEST_TIMEOUT: Duration = Duration::from_secs(120);
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// Memory the guest fills with non-zero pages before the migration.
const DIRTY_MIB: u64 = 64;
const MIB: u64 = 1024 * 1024;

/// Received bytes of interface `dev` in namespace `netns`.
fn rx_bytes(netns: &str, dev: &str) -> u64 {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", netns, "cat"])
        .arg(format!("/sys/class/net/{dev}/statistics/rx_bytes"))
        .output()
        .expect("ip netns exec");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("rx_bytes of {dev} in {netns}: {e}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn live_migration_streams_over_the_migration_network() {
    let lab = TestLab::builder(2)
        .vdc_binary(env!("CARGO_BIN_EXE_vdc"))
        .migration_network(true)
        .start()
        .await;
    let c = &lab.client;
    let ns1 = lab.netns("host-1").to_string();
    let ns2 = lab.netns("host-2").to_string();

    let hosts = c.list_hosts().await.expect("hosts");
    for h in &hosts {
        let m = h.migration_address.clone().expect("a migration address");
        assert!(m.starts_with("10.78."), "{}: {m}", h.name);
        assert_ne!(m, h.address);
    }

    let t = c
        .create_vm(&CreateVmRequest {
            name: "mover".into(),
            template: Some("debian-busybox".into()),
            memory_mib: Some(160),
            datastore: Some("shared".into()),
            network: Some("lab".into()),
            host: Some("host-1".into()),
            start: true,
            ..Default::default()
        })
        .await
        .expect("create accepted");
    c.wait_task(&t.id, TASK_TIMEOUT, |_| {})
        .await
        .expect("create");
    let v = wait_vm_timeout(c, "mover", BOOT_TIMEOUT, |v| {
        v.state == VmPowerState::Running && v.guest.ready
    })
    .await;
    let ip = v.guest.address.expect("an address");
    let ip = ip.split('/').next().unwrap_or(&ip).to_string();
    let filled = wait_until(GUEST_TIMEOUT, "the guest's memory filled", || {
        guest_request(&ns1, &ip, 7777, &[&format!("dirty 0 {DIRTY_MIB}")]).ok()
    });
    assert!(filled[1].starts_with("ok dirty"), "{filled:?}");

    let (mig0, mgmt) = (rx_bytes(&ns2, "mig0"), rx_bytes(&ns2, "uplink0"));
    let t = c
        .migrate_vm(
            "mover",
            &MigrateRequest {
                to: Some("host-2".into()),
                ..Default::default()
            },
        )
        .await
        .expect("migrate accepted");
    c.wait_task(&t.id, TASK_TIMEOUT, |_| {})
        .await
        .expect("migration");
    let v = c.get_vm("mover").await.expect("vm");
    assert_eq!(v.owner.as_deref(), Some("host-2"));
    assert_eq!(v.state, VmPowerState::Running);
    let (mig0_d, mgmt_d) = (
        rx_bytes(&ns2, "mig0") - mig0,
        rx_bytes(&ns2, "uplink0") - mgmt,
    );
    eprintln!(
        "host-2 received {} MiB on mig0, {} MiB on uplink0 during the migration",
        mig0_d / MIB,
        mgmt_d / MIB
    );
    assert!(
        mig0_d >= DIRTY_MIB * MIB,
        "mig0 received {mig0_d} bytes, less than the guest's {DIRTY_MIB} MiB"
    );
    assert!(
        mgmt_d < DIRTY_MIB * MIB / 4,
        "the management uplink received {mgmt_d} bytes: the stream went there"
    );
    // The guest runs on and answers where it went.
    let answer = wait_until(GUEST_TIMEOUT, "the guest after the move", || {
        guest_request(&ns2, &ip, 7777, &["dirty"]).ok()
    });
    assert!(answer[1].starts_with("dirty running"), "{answer:?}");
}
