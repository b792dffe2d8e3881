//! The web page's Migrate action in a real headless Chromium: a host
//! and TLS for the stream picked in the VM's row, the move started from
//! the page, its progress and outcome (encrypted) shown, checked against
//! the API; the migration security section: each host's certificate
//! expiry, the cluster setting changed from the page; then the migrate
//! form moves the running VM back with its disks to host-1's local
//! datastore (a live migration with storage), the task row naming the
//! datastore.

use std::time::Duration;

use vdc_test_infra::webdriver::{Browser, WebDriverError};
use vdc_test_infra::{error_chain, wait_vm, TestLab};
use vdc_types::api::CreateVmRequest;
use vdc_types::VmPowerState;

const PAGE_TIMEOUT: Duration = Duration::from_secs(60);
const TASK_TIMEOUT: Duration = Duration::from_secs(240);

/// Columns of the VM table and of the task table.
const NAME: usize = 0;
const STATE: usize = 1;
const OWNER: usize = 2;
const TASK_KIND: usize = 0;
const TASK_STATE: usize = 2;
const TASK_MIGRATION: usize = 6;

fn cell(row: &[String], i: usize) -> &str {
    row.get(i).map(String::as_str).unwrap_or_default()
}

fn page<T>(step: &str, r: Result<T, WebDriverError>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{step}: {}", error_chain(&e)),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_migrates_a_vm_to_the_host_picked() {
    let lab = TestLab::builder(2)
        .vdc_binary(env!("CARGO_BIN_EXE_vdc"))
        .start()
        .await;
    let c = &lab.client;
    let t = c
        .create_vm(&CreateVmRequest {
            name: "web-mig".into(),
            template: Some("debian-busybox".into()),
            memory_mib: Some(128),
            host: Some("host-1".into()),
            start: true,
            ..Default::default()
        })
        .await
        .expect("create accepted");
    c.wait_task(&t.id, TASK_TIMEOUT, |_| {})
        .await
        .expect("created");
    wait_vm(c, "web-mig", |v| v.state == VmPowerState::Running).await;

    let browser = match Browser::start().await {
        Ok(b) => b,
        Err(e) => panic!("starting headless Chromium: {}", error_chain(&e)),
    };
    let token = std::fs::read_to_string(&lab.info.token_file).expect("the lab's token file");
    page(
        "opening the page",
        browser
            .goto(&format!("{}/#token={}", lab.info.api_url, token.trim()))
            .await,
    );
    page(
        "web-mig running on host-1",
        browser
            .wait_row("#vms tbody tr", PAGE_TIMEOUT, |r| {
                cell(r, NAME) == "web-mig"
                    && cell(r, STATE) == "running"
                    && cell(r, OWNER) == "host-1"
            })
            .await,
    );
    // Each host's certificate, then TLS picked for this move.
    for host in ["host-1", "host-2"] {
        page(
            "the host's certificate expiry",
            browser
                .wait_row("#certs tbody tr", PAGE_TIMEOUT, |r| {
                    cell(r, 0) == host && cell(r, 1).starts_with("20")
                })
                .await,
        );
    }
    page(
        "the cluster setting shown",
        browser
            .wait_text("#migtls", PAGE_TIMEOUT, |t| t.contains("encryption: off"))
            .await,
    );
    page(
        "picking TLS",
        browser
            .click_css(
                r#"#vms tr[data-vm="web-mig"] select[data-migrate-tls="web-mig"] option[value="on"]"#,
                PAGE_TIMEOUT,
            )
            .await,
    );
    // Pick host-2 in the row's host picker, then Migrate.
    page(
        "picking host-2",
        browser
            .click_css(
                r#"#vms tr[data-vm="web-mig"] select[data-migrate-to="web-mig"] option[value="host-2"]"#,
                PAGE_TIMEOUT,
            )
            .await,
    );
    page(
        "clicking migrate",
        browser
            .click_css(
                r#"#vms tr[data-vm="web-mig"] button[data-action="migrate"]"#,
                PAGE_TIMEOUT,
            )
            .await,
    );
    page(
        "web-mig running on host-2 in the VM table",
        browser
            .wait_row("#vms tbody tr", TASK_TIMEOUT, |r| {
                cell(r, NAME) == "web-mig"
                    && cell(r, STATE) == "running"
                    && cell(r, OWNER) == "host-2"
            })
            .await,
    );
    let row = page(
        "the migration task with its figures",
        browser
            .wait_row("#tasks tbody tr", PAGE_TIMEOUT, |r| {
                cell(r, TASK_KIND) == "vm.migrate"
                    && cell(r, TASK_STATE) == "succeeded"
                    && cell(r, TASK_MIGRATION).contains("downtime")
            })
            .await,
    );
    assert!(
        cell(&row, TASK_MIGRATION).contains("host-1 \u{2192} host-2"),
        "{row:?}"
    );
    assert!(cell(&row, TASK_MIGRATION).contains("policy:"), "{row:?}");
    assert!(
        cell(&row, TASK_MIGRATION).contains("encrypted (TLS)"),
        "{row:?}"
    );
    let v = c.get_vm("web-mig").await.unwrap();
    assert_eq!(v.owner.as_deref(), Some("host-2"));
    // The cluster setting, changed from the page.
    page(
        "choosing TLS streams",
        browser
            .click_css(r#"#migtls-set option[value="on"]"#, PAGE_TIMEOUT)
            .await,
    );
    page(
        "setting it",
        browser.click_css("#migtls-save", PAGE_TIMEOUT).await,
    );
    page(
        "the new setting shown",
        browser
            .wait_text("#migtls", PAGE_TIMEOUT, |t| t.contains("encryption: on"))
            .await,
    );
    assert_eq!(
        c.migration_settings().await.unwrap().encryption,
        vdc_types::migration::MigrationEncryption::On
    );
    page(
        "the vm.migrated event on the page",
        browser
            .wait_text("#events", PAGE_TIMEOUT, |t| {
                t.lines()
                    .any(|l| l.contains("vm.migrated") && l.contains("web-mig"))
            })
            .await,
    );

    // Back to host-1 with its disks on host-1's own datastore, from the
    // migrate form.
    let choose = "document.querySelector('#mig-vm').value = 'web-mig'; \
                  document.querySelector('#mig-to').value = 'host-1'; \
                  document.querySelector('#mig-ds').value = 'local-host-1'; \
                  return [document.querySelector('#mig-vm').value, \
                          document.querySelector('#mig-to').value, \
                          document.querySelector('#mig-ds').value];";
    let chosen = page(
        "choosing in the form",
        browser.execute(choose, vec![]).await,
    );
    assert_eq!(
        chosen,
        serde_json::json!(["web-mig", "host-1", "local-host-1"])
    );
    page(
        "submitting the form",
        browser.click_css("#migrate button", PAGE_TIMEOUT).await,
    );
    let row = page(
        "the migration with storage in the task table",
        browser
            .wait_row("#tasks tbody tr", TASK_TIMEOUT, |r| {
                cell(r, TASK_KIND) == "vm.migrate"
                    && cell(r, TASK_STATE) == "succeeded"
                    && cell(r, TASK_MIGRATION).contains("disks to local-host-1")
                    && cell(r, TASK_MIGRATION).contains("downtime")
            })
            .await,
    );
    assert!(cell(&row, TASK_MIGRATION).contains("in sync"), "{row:?}");
    let v = c.get_vm("web-mig").await.unwrap();
    assert_eq!(v.owner.as_deref(), Some("host-1"));
    assert_eq!(v.datastore, "local-host-1");
    assert_eq!(v.state, VmPowerState::Running);
}
