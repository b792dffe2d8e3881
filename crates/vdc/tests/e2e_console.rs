//! End-to-end test of the serial console on a real guest: a line typed with
//! `vdc vm console NAME --send` runs in the guest's root shell on ttyS0 and
//! its output comes back; the API reads the log by offsets without gaps or
//! repeats, and refuses input to a stopped VM (409) and oversized or
//! malformed input (400).

use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use vdc_client::Client;
use vdc_test_infra::{wait_vm, TestLab};
use vdc_types::api::CreateVmRequest;
use vdc_types::{ErrorCode, VmPowerState};

const TEMPLATE: &str = "debian-busybox";
const TASK_TIMEOUT: Duration = Duration::from_secs(240);
const VM: &str = "con-1";

async fn run_task(c: &Client, t: vdc_types::Task) {
    if let Err(e) = c.wait_task(&t.id, TASK_TIMEOUT, |_| {}).await {
        panic!("task {} {} failed: {e}", t.kind, t.target);
    }
}

/// `vdc ARGS` against the lab, stdin not a terminal; (exit code, stdout,
/// stderr).
async fn vdc(lab: &TestLab, args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_vdc"));
    cmd.args(args)
        .env("VDC_URL", &lab.info.api_url)
        .env("VDC_TOKEN_FILE", &lab.info.token_file)
        .env_remove("VDC_TOKEN")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("vdc {args:?} did not finish within 90 s"))
        .unwrap_or_else(|e| panic!("cannot run vdc {args:?}: {e}"));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A raw `POST /api/v1/vms/{name}/console/input`: (status, JSON body).
async fn post_input(lab: &TestLab, name: &str, body: &str) -> (u16, Value) {
    let token = std::fs::read_to_string(&lab.info.token_file).expect("token file");
    let resp = reqwest::Client::new()
        .post(format!(
            "{}/api/v1/vms/{name}/console/input",
            lab.info.api_url
        ))
        .bearer_auth(token.trim())
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("the server answers");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Waits until the root shell on the guest's ttyS0 runs what is typed.
///
/// The guest reports ready once its services are launched; busybox init
/// starts the console shell only after that, and on a loaded machine a
/// while later. Typing is retried every few seconds until the answer (which
/// only the shell can compute) shows on the console, for at most two
/// minutes.
async fn shell_answers(c: &Client) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let (_, mut offset) = c.console_tail(VM, 0).await.expect("console offset");
    let mut seen = String::new();
    loop {
        c.console_input(VM, "echo shell-$((5*5))\n")
            .await
            .expect("console input");
        let retry = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < retry {
            let (text, next) = c.console_from(VM, offset).await.expect("console");
            offset = next;
            seen.push_str(&text);
            if seen.contains("shell-25") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the guest's console shell never answered; console after the ready marker:\n{seen}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn serial_console_runs_commands_in_the_guest() {
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
    wait_vm(c, VM, |v| v.state == VmPowerState::Running && v.guest.ready).await;
    shell_answers(c).await;

    // A command typed through the CLI runs in the guest's shell: the
    // arithmetic is done by the guest, so "marker-42" cannot be our echo.
    let (code, stdout, stderr) = vdc(
        &lab,
        &[
            "vm",
            "console",
            VM,
            "--send",
            "echo marker-$((6*7))",
            "--wait",
            "10",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("marker-42"),
        "the guest's output is missing; stdout:\n{stdout}\nconsole:\n{}",
        c.console(VM, 4000).await.unwrap_or_default()
    );
    assert!(stdout.contains("echo marker-$((6*7))"), "{stdout}");

    // Reading by offsets: a read from an offset continues exactly where the
    // log was, and returns the offset to read on from.
    let (whole, end) = c.console_tail(VM, 1 << 20).await.unwrap();
    assert!(whole.contains("VDC-GUEST-READY") && whole.contains("marker-42"));
    assert_eq!(whole.len() as u64, end, "the whole log, ASCII");
    let (_, now) = c.console_tail(VM, 0).await.unwrap();
    assert!(now >= end);
    let mid = end - 200;
    let (piece, after) = c.console_from(VM, mid).await.unwrap();
    assert!(
        piece.starts_with(&whole[mid as usize..]),
        "piece from {mid}: {piece:?}"
    );
    assert_eq!(after, mid + piece.len() as u64);
    let (more, next) = c.console_from(VM, after).await.unwrap();
    assert_eq!(next, after + more.len() as u64);

    // Bad input is refused with 400 and a JSON error, never a crash.
    let big = json!({ "data": "x".repeat(4097) }).to_string();
    for body in [
        big.as_str(),
        r#"{"data": 5}"#,
        r#"{"data": ""}"#,
        "not json",
        "{}",
    ] {
        let (status, v) = post_input(&lab, VM, body).await;
        assert_eq!(status, 400, "{body:.40}: {v}");
        assert_eq!(v["code"], "invalid_input", "{v}");
    }
    let (status, v) = post_input(&lab, "no-such-vm", r#"{"data": "ls\n"}"#).await;
    assert_eq!(status, 404, "{v}");

    // The CLI refuses what the API would.
    let long = "y".repeat(5000);
    let (code, _, stderr) = vdc(&lab, &["vm", "console", VM, "--send", &long]).await;
    assert_eq!(code, Some(2), "{stderr}");

    // A stopped VM takes no input: 409 from the API, exit code 4 from the
    // CLI; its console log stays readable.
    let t = c.vm_action(VM, "stop", json!({})).await.expect("stop");
    run_task(c, t).await;
    let (status, v) = post_input(&lab, VM, r#"{"data": "ls\n"}"#).await;
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["code"], "invalid_state", "{v}");
    let err = c.console_input(VM, "ls\n").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidState));
    let (code, _, stderr) = vdc(&lab, &["vm", "console", VM, "--send", "ls"]).await;
    assert_eq!(code, Some(4), "{stderr}");
    assert!(stderr.contains("start it"), "{stderr}");
    let (code, stdout, stderr) = vdc(&lab, &["vm", "console", VM, "--bytes", "65536"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("marker-42"), "{stdout}");
}
