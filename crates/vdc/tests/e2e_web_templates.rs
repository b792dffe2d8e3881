//! The web page's templates and clones section in headless Chromium: a
//! powered-off VM is cloned from its row action and the clone form (with a
//! customized hostname), the clone is made a template from the template
//! form, the template is listed with its origin and deleted from its row.
//! No guest boots: every step works on powered-off VMs.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;
use vdc_test_infra::webdriver::{Browser, WebDriverError};
use vdc_test_infra::{error_chain, wait_until_async, TestLab};
use vdc_types::api::CreateVmRequest;

const PAGE_TIMEOUT: Duration = Duration::from_secs(60);
const TASK_TIMEOUT: Duration = Duration::from_secs(240);

fn page<T>(step: &str, r: Result<T, WebDriverError>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{step}: {}", error_chain(&e)),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn web_page_clones_and_makes_templates() {
    let lab = TestLab::builder(1)
        .vdc_binary(env!("CARGO_BIN_EXE_vdc"))
        .start()
        .await;
    let c = &lab.client;
    let t = c
        .create_vm(&CreateVmRequest {
            name: "w-src".into(),
            template: Some("debian-busybox".into()),
            memory_mib: Some(80),
            ..Default::default()
        })
        .await
        .unwrap();
    c.wait_task(&t.id, TASK_TIMEOUT, |_| {}).await.unwrap();
    let browser = match Browser::start().await {
        Ok(b) => b,
        Err(e) => panic!("starting headless Chromium: {}", error_chain(&e)),
    };
    let outcome = AssertUnwindSafe(drive(&lab, &browser)).catch_unwind().await;
    if let Err(p) = outcome {
        if let Ok(src) = browser.page_source().await {
            eprintln!("----- page source -----\n{src}");
        }
        std::panic::resume_unwind(p);
    }
}

async fn drive(lab: &TestLab, b: &Browser) {
    let c = &lab.client;
    let token = std::fs::read_to_string(&lab.info.token_file).unwrap();
    page(
        "opening the page",
        b.goto(&format!("{}/#token={}", lab.info.api_url, token.trim()))
            .await,
    );
    // The imported template is listed.
    page(
        "the template table",
        b.wait_row("#tpls tbody tr", PAGE_TIMEOUT, |r| {
            r.first().map(String::as_str) == Some("debian-busybox")
        })
        .await,
    );
    // The VM's "clone" action picks it in the clone form.
    page(
        "the clone action",
        b.click_css(
            r#"#vms tr[data-vm="w-src"] button[data-action="clone"]"#,
            PAGE_TIMEOUT,
        )
        .await,
    );
    let picked = page(
        "the picked VM",
        b.execute("return document.querySelector('#clone-vm').value;", vec![])
            .await,
    );
    assert_eq!(picked, "w-src");
    let name = page("clone name", b.find("#clone-form input[name=name]").await);
    page("typing", b.send_keys(&name, "w-copy").await);
    let host = page(
        "clone hostname",
        b.find("#clone-form input[name=hostname]").await,
    );
    page("typing", b.send_keys(&host, "web-copy").await);
    page(
        "clone",
        b.click_css("#clone-form button", PAGE_TIMEOUT).await,
    );
    let copy = wait_until_async(TASK_TIMEOUT, "the clone made", || async {
        c.get_vm("w-copy")
            .await
            .ok()
            .filter(|v| v.operation.is_none())
    })
    .await;
    assert_eq!(copy.state, vdc_types::VmPowerState::Stopped);
    page(
        "the clone in the VM table",
        b.wait_row("#vms tbody tr", PAGE_TIMEOUT, |r| {
            r.first().map(String::as_str) == Some("w-copy")
        })
        .await,
    );

    // Convert the clone into a template from the template form.
    page(
        "the convert action",
        b.click_css(
            r#"#vms tr[data-vm="w-copy"] button[data-action="convert_to_template"]"#,
            PAGE_TIMEOUT,
        )
        .await,
    );
    let tname = page(
        "template name",
        b.find("#totpl-form input[name=name]").await,
    );
    page("typing", b.send_keys(&tname, "w-golden").await);
    page(
        "make template",
        b.click_css("#totpl-form button", PAGE_TIMEOUT).await,
    );
    let row = page(
        "the new template listed",
        b.wait_row("#tpls tbody tr", TASK_TIMEOUT, |r| {
            r.first().map(String::as_str) == Some("w-golden")
                && r.get(4).map(String::as_str) == Some("w-copy")
                && !r.get(3).is_some_and(|s| s.contains("being made"))
        })
        .await,
    );
    assert!(row[2].contains("templates/w-golden.qcow2"), "{row:?}");
    assert!(
        c.get_vm("w-copy").await.is_err(),
        "the converted VM remains"
    );

    // Delete it from its row.
    page(
        "delete",
        b.click_css(r#"button[data-template-delete="w-golden"]"#, PAGE_TIMEOUT)
            .await,
    );
    wait_until_async(PAGE_TIMEOUT, "the template deleted", || async {
        c.template("w-golden").await.is_err().then_some(())
    })
    .await;
    page(
        "the template gone from the page",
        b.wait_text("#tpls tbody", PAGE_TIMEOUT, |t| !t.contains("w-golden"))
            .await,
    );
}
