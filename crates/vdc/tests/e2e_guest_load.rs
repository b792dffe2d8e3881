//! The guest image's memory-dirtying program and UDP service on a real
//! guest: started, observed and stopped over the guest's TCP service, as
//! the live-migration tests and `vdc bench migrate` drive them.

use std::time::Duration;

use vdc_test_infra::{guest_udp_request, wait_until, wait_vm, TestLab, VM_WAIT_TIMEOUT};
use vdc_types::api::CreateVmRequest;
use vdc_types::{VmPowerState, GUEST_SERVICE_PORT};

/// One answer of the guest's TCP service to `line` (after its greeting).
fn ask(lab: &TestLab, addr: &str, line: &str) -> String {
    let out = lab
        .guest_request("host-1", addr, &[line])
        .unwrap_or_else(|e| panic!("{line}: {}", vdc_test_infra::error_chain(&e)));
    out.get(1).cloned().unwrap_or_default()
}

/// `pages=N` of a `dirty running ...` answer.
fn pages(status: &str) -> u64 {
    status
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("pages="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no pages in {status:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn guest_dirties_memory_on_demand_and_answers_udp() {
    let lab = TestLab::start(1).await;
    let c = &lab.client;
    let t = c
        .create_vm(&CreateVmRequest {
            name: "load-1".into(),
            template: Some("debian-busybox".into()),
            memory_mib: Some(256),
            host: Some("host-1".into()),
            start: true,
            ..Default::default()
        })
        .await
        .expect("create accepted");
    c.wait_task(&t.id, Duration::from_secs(240), |_| {})
        .await
        .expect("create task");
    let vm = wait_vm(c, "load-1", |v| {
        v.state == VmPowerState::Running && v.guest.ready
    })
    .await;
    let addr = vm.guest.address.clone().expect("the guest's address");
    let greeting = wait_until(VM_WAIT_TIMEOUT, "the guest's service", || {
        lab.guest_request("host-1", &addr, &[]).ok()
    });
    let boot_id = greeting[0].split_whitespace().nth(1).unwrap().to_string();

    // UDP: the answer carries the boot id, the counter and the payload.
    let udp = guest_udp_request(
        lab.netns("host-1"),
        &addr,
        GUEST_SERVICE_PORT,
        "probe 1",
        Duration::from_secs(10),
    )
    .expect("a UDP answer");
    let parts: Vec<&str> = udp.split(' ').collect();
    assert_eq!(parts[0], boot_id, "{udp:?}");
    parts[1].parse::<u64>().expect("a numeric counter");
    assert_eq!(&parts[2..], ["probe", "1"], "{udp:?}");

    assert_eq!(ask(&lab, &addr, "dirty"), "dirty stopped");
    // Paced: the pages dirtied keep growing while it runs.
    assert_eq!(
        ask(&lab, &addr, "dirty 100 16"),
        "ok dirty rate=100 buffer_mib=16"
    );
    let first = ask(&lab, &addr, "dirty");
    assert!(
        first.starts_with("dirty running rate=100 buffer_mib=16 "),
        "{first}"
    );
    let before = pages(&first);
    wait_until(Duration::from_secs(60), "more pages dirtied", || {
        let now = ask(&lab, &addr, "dirty");
        (pages(&now) > before).then_some(())
    });
    // Flat out replaces the paced run.
    assert_eq!(
        ask(&lab, &addr, "dirty max 16"),
        "ok dirty rate=max buffer_mib=16"
    );
    let flat = wait_until(Duration::from_secs(60), "flat-out stats", || {
        let now = ask(&lab, &addr, "dirty");
        (now.starts_with("dirty running rate=max") && pages(&now) > 0).then_some(now)
    });
    assert!(flat.contains("buffer_mib=16"), "{flat}");
    // Bad input: what was wrong, and nothing started.
    assert_eq!(ask(&lab, &addr, "dirty stop"), "ok");
    assert_eq!(ask(&lab, &addr, "dirty"), "dirty stopped");
    for (bad, says) in [
        ("dirty fast", "error: usage: dirty RATE_MIB_S|max"),
        ("dirty 100 0", "error: dirty: buffer must be 1-4096 MiB"),
        ("dirty 100 9999", "error: dirty: buffer must be 1-4096 MiB"),
        ("dirty 1 2 3", "error: usage: dirty"),
    ] {
        let answer = ask(&lab, &addr, bad);
        assert!(answer.starts_with(says), "{bad}: {answer}");
    }
    assert_eq!(ask(&lab, &addr, "dirty"), "dirty stopped");
    // The guest kept running throughout: same boot.
    let after = lab.guest_request("host-1", &addr, &[]).unwrap();
    assert_eq!(after[0].split_whitespace().nth(1), Some(boot_id.as_str()));
}
