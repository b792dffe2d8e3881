//! End-to-end test of bounded inputs on a real guest: a guest that writes
//! lines far longer than any heartbeat on its guest channel (then an
//! endless one) and floods its serial console does not grow the agent's
//! memory past a fixed bound (its RSS, measured from /proc over the flood),
//! keeps reporting the heartbeats written between the long lines, and its
//! console log stays bounded by rotation while readers are told what was
//! rotated away.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use vdc_client::Client;
use vdc_test_infra::{wait_vm, TestLab};
use vdc_types::api::CreateVmRequest;
use vdc_types::VmPowerState;

const TEMPLATE: &str = "debian-busybox";
const TASK_TIMEOUT: Duration = Duration::from_secs(240);
const FLOOD_TIMEOUT: Duration = Duration::from_secs(420);
const VM: &str = "flood-1";
/// Each long line on the guest channel (the old reader held a whole line).
const LONG_LINE_BYTES: u64 = 32 << 20;
/// Long lines written, each followed by a heartbeat naming its number.
const LONG_LINES: u32 = 3;
/// Growth of the agent's RSS over the flood that fails the test: less than
/// one long line.
const RSS_GROWTH_MAX: u64 = 24 << 20;
/// The agent rotates `console.log` at 1 MiB and checks every second; what
/// a flooding guest writes in between is the slack.
const CONSOLE_LOG_BOUND: u64 = 8 << 20;
/// Console output to wait for: enough for several rotations.
const CONSOLE_FLOOD_BYTES: u64 = 4 << 20;

/// Kills the guest's heartbeat (a virtio-serial port has one writer at a
/// time), then writes long lines, each followed by a heartbeat with
/// `hostname=flood-N`, then an endless line, on the guest channel; and
/// floods ttyS0.
fn flood_command() -> String {
    format!(
        "for p in /proc/[0-9]*; do grep -q heartbeat $p/cmdline 2>/dev/null && kill ${{p#/proc/}}; done; \
         for p in /sys/class/virtio-ports/*; do [ \"$(cat $p/name)\" = org.vdc.guest.0 ] && d=/dev/${{p##*/}}; done; \
         sleep 1; \
         (i=1; while [ $i -le {LONG_LINES} ]; do head -c {LONG_LINE_BYTES} /dev/zero; echo; \
         echo \"vdc-guest v1 hb seq=$i ready=1 hostname=flood-$i boot_id=flood ip=\"; i=$((i+1)); done; \
         cat /dev/zero) > $d 2>/dev/null & \
         yes 'console flood 0123456789abcdefghijklmnopqrstuvwxyz' &\n"
    )
}

async fn run_task(c: &Client, t: vdc_types::Task) {
    if let Err(e) = c.wait_task(&t.id, TASK_TIMEOUT, |_| {}).await {
        panic!("task {} {} failed: {e}", t.kind, t.target);
    }
}

/// Resident memory of process `pid`, bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .expect("VmRSS in /proc/PID/status")
}

/// Waits until the root shell on the guest's ttyS0 runs what is typed
/// (busybox init starts it a while after the guest reports ready).
async fn shell_answers(c: &Client) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let (_, mut offset) = c.console_tail(VM, 0).await.expect("console offset");
    let mut seen = String::new();
    loop {
        c.console_input(VM, "echo shell-$((5*5))\n")
            .await
            .expect("console input");
        let retry = Instant::now() + Duration::from_secs(5);
        while Instant::now() < retry {
            let (text, next) = c.console_from(VM, offset).await.expect("console");
            offset = next;
            seen.push_str(&text);
            if seen.contains("shell-25") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(
            Instant::now() < deadline,
            "the guest's console shell never answered; console:\n{seen}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flooding_guest_does_not_grow_the_agent() {
    let lab = TestLab::start(1).await;
    let c = &lab.client;
    let t = c
        .create_vm(&CreateVmRequest {
            name: VM.into(),
            template: Some(TEMPLATE.into()),
            memory_mib: Some(160),
            start: true,
            ..Default::default()
        })
        .await
        .expect("create accepted");
    run_task(c, t).await;
    let vm = wait_vm(c, VM, |v| v.state == VmPowerState::Running && v.guest.ready).await;
    shell_answers(c).await;

    let agent = lab.agent_pid("host-1").expect("the agent of host-1 runs");
    let baseline = rss_bytes(agent);
    c.console_input(VM, &flood_command())
        .await
        .expect("flood command typed");

    // Over the flood: sample the agent's RSS until the last heartbeat after
    // the long lines arrived and the console has written several rotations'
    // worth.
    let deadline = Instant::now() + FLOOD_TIMEOUT;
    let mut peak = baseline;
    let last = format!("flood-{LONG_LINES}");
    let (hostname, console_end) = loop {
        peak = peak.max(rss_bytes(agent));
        let v = c.get_vm(VM).await.expect("get vm");
        let (_, end) = c.console_tail(VM, 0).await.expect("console offset");
        if v.guest.hostname.as_deref() == Some(last.as_str()) && end > CONSOLE_FLOOD_BYTES {
            break (v.guest.hostname, end);
        }
        assert!(
            Instant::now() < deadline,
            "the flood did not get through within {FLOOD_TIMEOUT:?}: guest {:?}, console at {end} bytes; agent RSS {baseline} → peak {peak}\n{}",
            v.guest,
            lab.log_tails(20)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // Still flooding (the endless line and the console): a few more samples.
    for _ in 0..8 {
        peak = peak.max(rss_bytes(agent));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "agent RSS over the flood: {baseline} → peak {peak} bytes; console at {console_end} bytes"
    );
    assert_eq!(hostname.as_deref(), Some(last.as_str()));
    assert!(
        peak < baseline + RSS_GROWTH_MAX,
        "the agent grew from {baseline} to {peak} bytes over a flood of {} MiB lines",
        LONG_LINE_BYTES >> 20
    );
    assert_eq!(lab.agent_pid("host-1"), Some(agent), "the agent restarted");

    // The console log stays bounded and was rotated.
    let datastore = lab
        .info
        .datastores
        .iter()
        .find(|d| d.name == vm.datastore)
        .expect("the VM's datastore in the lab");
    let vm_dir: PathBuf = datastore.path.join(
        std::path::Path::new(&vm.disks[0].path)
            .parent()
            .expect("the disk is in the VM directory"),
    );
    let current = std::fs::metadata(vm_dir.join("console.log"))
        .expect("console.log")
        .len();
    let previous = std::fs::metadata(vm_dir.join("console.log.1"))
        .expect("console.log.1 after a rotation")
        .len();
    assert!(
        current < CONSOLE_LOG_BOUND && previous < CONSOLE_LOG_BOUND,
        "console.log is {current} bytes, console.log.1 {previous}"
    );
    assert!(current + previous < console_end, "nothing was rotated away");
    // A reader from the start is told that output was rotated away.
    let (text, next) = c.console_from(VM, 0).await.expect("console from 0");
    assert!(
        text.contains("bytes of console output were rotated away"),
        "{:.200}",
        text
    );
    assert!(next > 0);
}
