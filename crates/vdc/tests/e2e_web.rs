//! End-to-end test of the web page in a real headless Chromium: the page the
//! server serves at `/`, driven over WebDriver against a lab with a real
//! guest, checked both in what the page shows and through the API.

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::time::Duration;

use futures::FutureExt;
use vdc_test_infra::webdriver::{Browser, WebDriverError};
use vdc_test_infra::{error_chain, wait_until_async, wait_vm, TestLab};
use vdc_types::{TaskState, Vm, VmPowerState};

/// Longest wait for the page to show something (it refreshes on every
/// event and every 5 s).
const PAGE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for a VM task the page started.
const TASK_TIMEOUT: Duration = Duration::from_secs(240);
const TEMPLATE: &str = "debian-busybox";

/// Columns of the page's VM table.
const NAME: usize = 0;
const STATE: usize = 1;
const OWNER: usize = 2;
const OPERATION: usize = 3;
const ADDRESS: usize = 6;
const READY: usize = 7;
const HARDWARE: usize = 8;
const ACTIONS: usize = 10;

fn cell(row: &[String], i: usize) -> &str {
    row.get(i).map(String::as_str).unwrap_or_default()
}

fn vm_row<'a>(name: &'a str, state: &'a str) -> impl Fn(&[String]) -> bool + 'a {
    move |r| cell(r, NAME) == name && cell(r, STATE) == state
}

/// The value of a browser step, or a panic naming the step and the cause.
fn page<T>(step: &str, r: Result<T, WebDriverError>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{step}: {}", error_chain(&e)),
    }
}

fn button(vm: &str, action: &str) -> String {
    format!(r#"#vms tr[data-vm="{vm}"] button[data-action="{action}"]"#)
}

#[tokio::test(flavor = "multi_thread")]
async fn web_page_drives_the_cluster_in_chromium() {
    let lab = TestLab::builder(1)
        .demo_vms(1)
        .vdc_binary(env!("CARGO_BIN_EXE_vdc"))
        .start()
        .await;
    let vm = wait_vm(&lab.client, "demo-1", |v| {
        v.state == VmPowerState::Running && v.guest.ready
    })
    .await;
    let browser = match Browser::start().await {
        Ok(b) => b,
        Err(e) => panic!(
            "starting headless Chromium (install it with scripts/setup.sh --deps-only --test-deps): {}",
            error_chain(&e)
        ),
    };
    let outcome = AssertUnwindSafe(drive_page(&lab, &browser, &vm))
        .catch_unwind()
        .await;
    if let Err(panic) = outcome {
        save_diagnostics(&lab, &browser).await;
        std::panic::resume_unwind(panic);
    }
}

async fn drive_page(lab: &TestLab, browser: &Browser, vm: &Vm) {
    let c = &lab.client;
    let host = vm.owner.clone().expect("demo-1 runs on a host");
    let address = vm
        .guest
        .address
        .clone()
        .expect("demo-1 reports its address");
    let token = std::fs::read_to_string(&lab.info.token_file).expect("the lab's token file");
    let token = token.trim();

    // The page takes the token from the fragment and drops it from the URL.
    page(
        "opening the page",
        browser
            .goto(&format!("{}/#token={token}", lab.info.api_url))
            .await,
    );
    let url = page("reading the URL", browser.current_url().await);
    assert!(!url.contains(token), "the token stays in the URL: {url}");
    page(
        "the live event stream",
        browser
            .wait_text("#live", PAGE_TIMEOUT, |t| t == "connected")
            .await,
    );

    // The VM table shows the running guest where the API says it is.
    let row = page(
        "demo-1 running in the VM table",
        browser
            .wait_row("#vms tbody tr", PAGE_TIMEOUT, |r| {
                vm_row("demo-1", "running")(r)
                    && cell(r, OWNER) == host
                    && cell(r, OPERATION) == "-"
                    && cell(r, ADDRESS) == address
                    && cell(r, READY) == "yes"
            })
            .await,
    );
    assert_eq!(
        cell(&row, HARDWARE),
        format!(
            "{} {}",
            vdc_types::vm::DEFAULT_MACHINE_TYPE,
            vdc_types::vm::DEFAULT_CPU_MODEL
        ),
        "{row:?}"
    );
    assert!(cell(&row, ACTIONS).contains("pause"), "{row:?}");
    page(
        "host-1 connected in the host table",
        browser
            .wait_row("#hosts tbody tr", PAGE_TIMEOUT, |r| {
                cell(r, 0) == "host-1"
                    && cell(r, 1) == "connected"
                    && cell(r, 7).starts_with("joined")
                    // TCG hosts run any CPU model: shown as emulated.
                    && cell(r, 9) == "emulated"
            })
            .await,
    );
    // Switches: the lab's bridge, realized on the host; one created from
    // the page is realized by the agent, then deleted from the page.
    page(
        "vmbr0 present on host-1 in the switch table",
        browser
            .wait_row("#switches tbody tr", PAGE_TIMEOUT, |r| {
                cell(r, 0) == "vmbr0"
                    && cell(r, 2) == "existing"
                    && cell(r, 5).contains("host-1: present")
            })
            .await,
    );
    let sw_name = page(
        "the switch name field",
        browser.find("#switch-create input[name=name]").await,
    );
    page(
        "typing a switch name",
        browser.send_keys(&sw_name, "websw").await,
    );
    page(
        "clicking create switch",
        browser
            .click_css("#switch-create button", PAGE_TIMEOUT)
            .await,
    );
    page(
        "websw realized on host-1",
        browser
            .wait_row("#switches tbody tr", PAGE_TIMEOUT, |r| {
                cell(r, 0) == "websw"
                    && cell(r, 2) == "managed"
                    && cell(r, 5).contains("host-1: present")
            })
            .await,
    );
    page(
        "clicking delete switch",
        browser
            .click_css("[data-switch-delete=\"websw\"]", PAGE_TIMEOUT)
            .await,
    );
    page(
        "websw gone from the switch table",
        browser
            .wait_text("#switches tbody", PAGE_TIMEOUT, |t| !t.contains("websw"))
            .await,
    );
    assert!(c.get_switch("websw").await.is_err(), "websw deleted");

    // NICs: demo-1's "reconfigure" action picks it in the NIC form; a NIC
    // added there is hot-plugged (listed with its hot-plug port), and its
    // remove button unplugs it.
    page(
        "clicking demo-1's reconfigure action",
        browser
            .click_css(
                "#vms tr[data-vm=\"demo-1\"] button[data-action=\"reconfigure\"]",
                PAGE_TIMEOUT,
            )
            .await,
    );
    page(
        "clicking add NIC",
        browser.click_css("#nic-add button", PAGE_TIMEOUT).await,
    );
    page(
        "demo-1's hot-plugged NIC in the NIC table",
        browser
            .wait_row("#nics tbody tr", PAGE_TIMEOUT, |r| {
                cell(r, 0) == "demo-1" && cell(r, 1) == "hpnet0" && cell(r, 5) == "hp0"
            })
            .await,
    );
    let vm_now = c.get_vm("demo-1").await.expect("demo-1");
    assert_eq!(vm_now.nics.len(), 2, "{:?}", vm_now.nics);
    assert_eq!(vm_now.state, vdc_types::VmPowerState::Running);
    page(
        "clicking remove on the hot-plugged NIC",
        browser
            .click_css("[data-nic-remove=\"demo-1/hpnet0\"]", PAGE_TIMEOUT)
            .await,
    );
    page(
        "the NIC gone from the NIC table",
        browser
            .wait_text("#nics tbody", PAGE_TIMEOUT, |t| !t.contains("hpnet0"))
            .await,
    );
    assert_eq!(c.get_vm("demo-1").await.expect("demo-1").nics.len(), 1);

    page(
        "the CPU baseline above the host table",
        browser
            .wait_text("#cpubaseline", PAGE_TIMEOUT, |t| {
                t.contains(&format!(
                    "CPU baseline: {} (auto)",
                    vdc_types::vm::DEFAULT_CPU_MODEL
                ))
            })
            .await,
    );

    // The control plane: its store and the server that leads (this one).
    let cp = c.control_plane().await.expect("control plane");
    let leader = format!("leader {}", cp.served_by);
    page(
        "the control plane section",
        browser
            .wait_text("#cp-summary", PAGE_TIMEOUT, |t| {
                t.contains("store redb") && t.contains(&leader)
            })
            .await,
    );
    page(
        "the control plane's members",
        browser
            .wait_text("#cp-members tbody", PAGE_TIMEOUT, |t| t.contains("leader"))
            .await,
    );

    // Pause from the page: the page and the API agree.
    page(
        "clicking pause",
        browser
            .click_css(&button("demo-1", "pause"), PAGE_TIMEOUT)
            .await,
    );
    let row = page(
        "demo-1 paused in the VM table, the pause ended",
        browser
            .wait_row("#vms tbody tr", TASK_TIMEOUT, |r| {
                // The state is recorded a moment before the operation is
                // released; the actions shown follow the release.
                vm_row("demo-1", "paused")(r) && cell(r, OPERATION) == "-"
            })
            .await,
    );
    assert!(
        cell(&row, ACTIONS).contains("resume") && !cell(&row, ACTIONS).contains("pause"),
        "a paused VM offers resume, not pause: {row:?}"
    );
    wait_vm(c, "demo-1", |v| v.state == VmPowerState::Paused).await;

    // Resume from the page.
    page(
        "clicking resume",
        browser
            .click_css(&button("demo-1", "resume"), PAGE_TIMEOUT)
            .await,
    );
    page(
        "demo-1 running again in the VM table",
        browser
            .wait_row("#vms tbody tr", TASK_TIMEOUT, vm_row("demo-1", "running"))
            .await,
    );
    wait_vm(c, "demo-1", |v| v.state == VmPowerState::Running).await;

    // Both changes arrived as live events, the newest on top.
    page(
        "vm.state_changed events of demo-1",
        browser
            .wait_text("#events", PAGE_TIMEOUT, |t| {
                let mut changes = t
                    .lines()
                    .filter(|l| l.contains("vm.state_changed") && l.contains("VM demo-1 is "));
                changes
                    .next()
                    .is_some_and(|l| l.contains("demo-1 is running"))
                    && changes
                        .next()
                        .is_some_and(|l| l.contains("demo-1 is paused"))
            })
            .await,
    );

    // Create a VM with the form: the template is preselected; leave it off.
    let template = page(
        "the template list",
        browser.find("#create select[name=template]").await,
    );
    let chosen = page(
        "the preselected template",
        browser.property(&template, "value").await,
    );
    assert_eq!(chosen.as_str(), Some(TEMPLATE));
    let name = page(
        "the name field",
        browser.find("#create input[name=name]").await,
    );
    page("typing a name", browser.send_keys(&name, "web-ui-1").await);
    let start = page(
        "the start box",
        browser.find("#create input[name=start]").await,
    );
    if page(
        "reading the start box",
        browser.property(&start, "checked").await,
    ) == serde_json::json!(true)
    {
        page("unchecking start", browser.click(&start).await);
    }
    assert_eq!(
        page(
            "reading the start box",
            browser.property(&start, "checked").await
        ),
        serde_json::json!(false)
    );
    page(
        "clicking create",
        browser.click_css("#create button", PAGE_TIMEOUT).await,
    );
    page(
        "web-ui-1 stopped in the VM table",
        browser
            .wait_row("#vms tbody tr", TASK_TIMEOUT, vm_row("web-ui-1", "stopped"))
            .await,
    );
    let task = wait_until_async(TASK_TIMEOUT, "the create task of web-ui-1", || async {
        c.list_tasks().await.ok().and_then(|tasks| {
            tasks
                .into_iter()
                .find(|t| t.target == "web-ui-1" && t.state.is_final())
        })
    })
    .await;
    assert_eq!(task.state, TaskState::Succeeded, "{task:?}");
    // The task table shows the create's journaled steps.
    let steps = task.journal.as_ref().map_or(0, |j| j.steps.len());
    assert!(steps > 0, "{task:?}");
    page(
        "the create's steps in the task table",
        browser
            .wait_row("#tasks tbody tr", TASK_TIMEOUT, |r| {
                cell(r, 0) == "vm.create"
                    && cell(r, 1) == "web-ui-1"
                    && cell(r, 5) == format!("{steps} steps")
            })
            .await,
    );
    let created = c.get_vm("web-ui-1").await.expect("web-ui-1 exists");
    assert_eq!(created.state, VmPowerState::Stopped);
    assert_eq!(created.template.as_deref(), Some(TEMPLATE));
    let msg = page("the message area", browser.find("#msg").await);
    assert_eq!(page("reading it", browser.text(&msg).await), "");

    // Delete it from the page, through the confirm() prompt.
    page(
        "clicking delete",
        browser
            .click_css(&button("web-ui-1", "delete"), PAGE_TIMEOUT)
            .await,
    );
    let prompt = page(
        "the delete prompt",
        browser.accept_alert(PAGE_TIMEOUT).await,
    );
    assert!(prompt.contains("web-ui-1"), "{prompt}");
    wait_until_async(TASK_TIMEOUT, "web-ui-1 to be deleted", || async {
        c.get_vm("web-ui-1").await.is_err().then_some(())
    })
    .await;
    page(
        "web-ui-1 gone from the VM table",
        browser
            .wait_text("#vms tbody", PAGE_TIMEOUT, |t| !t.contains("web-ui-1"))
            .await,
    );

    // A link with a wrong token: the page shows the API's own message.
    let expected = reqwest::Client::new()
        .get(format!("{}/api/v1/vms", lab.info.api_url))
        .bearer_auth("not-the-token")
        .send()
        .await
        .expect("the API answers");
    assert_eq!(expected.status(), 401);
    let expected: vdc_types::ApiError = expected.json().await.expect("an API error body");
    assert_eq!(expected.code, vdc_types::ErrorCode::Unauthorized);
    page(
        "opening the page with a wrong token",
        browser
            .goto(&format!("{}/#token=not-the-token", lab.info.api_url))
            .await,
    );
    page(
        "the unauthorized message",
        browser
            .wait_text("#msg", PAGE_TIMEOUT, |t| t == expected.message)
            .await,
    );
    page(
        "the VM table emptied",
        browser
            .wait_text("#vms tbody", PAGE_TIMEOUT, str::is_empty)
            .await,
    );
    page(
        "the event stream refused",
        browser
            .wait_text("#live", PAGE_TIMEOUT, |t| t == "disconnected")
            .await,
    );
}

/// Saves a screenshot and the page's HTML next to the lab's temporary
/// directory (which is removed with the lab) and prints where.
async fn save_diagnostics(lab: &TestLab, browser: &Browser) {
    let base: PathBuf = lab
        .spec
        .state_root
        .parent()
        .map(|dir| PathBuf::from(format!("{}-web-failure", dir.display())))
        .unwrap_or_else(|| std::env::temp_dir().join("vdc-e2e-web-failure"));
    let png = base.with_extension("png");
    match browser.save_screenshot(&png).await {
        Ok(()) => eprintln!("screenshot of the page at failure: {}", png.display()),
        Err(e) => eprintln!("no screenshot: {}", error_chain(&e)),
    }
    let html = base.with_extension("html");
    match browser.page_source().await {
        Ok(source) => match std::fs::write(&html, source) {
            Ok(()) => eprintln!("HTML of the page at failure: {}", html.display()),
            Err(e) => eprintln!("cannot write {}: {e}", html.display()),
        },
        Err(e) => eprintln!("no page source: {}", error_chain(&e)),
    }
    eprintln!(
        "----- chromedriver log -----\n{}",
        browser.driver_log_tail(30)
    );
}
