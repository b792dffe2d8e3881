//! The web page's snapshot section in a real headless Chromium: take two
//! snapshots of a stopped VM from the page, see the tree with the current
//! position, revert and delete from its buttons (a delete that merges into
//! images at rest), check the API agrees, and delete the VM with its
//! snapshot files. No guest boots: a stopped VM's snapshots are at rest.

use std::time::Duration;

use vdc_test_infra::webdriver::{Browser, WebDriverError};
use vdc_test_infra::{error_chain, wait_until_async, TestLab};
use vdc_types::api::CreateVmRequest;

const PAGE_TIMEOUT: Duration = Duration::from_secs(60);
const VM: &str = "web-snap";

fn page<T>(step: &str, r: Result<T, WebDriverError>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{step}: {}", error_chain(&e)),
    }
}

async fn take(browser: &Browser, name: &str) {
    let input = page(
        "the name field",
        browser.find("#snap-create input[name=name]").await,
    );
    page("typing the name", browser.send_keys(&input, name).await);
    page(
        "Take snapshot",
        browser.click_css("#snap-create button", PAGE_TIMEOUT).await,
    );
}

/// The first cell of each row of the snapshot tree.
async fn wait_tree(browser: &Browser, what: &str, pred: impl Fn(&[String]) -> bool) {
    let deadline = tokio::time::Instant::now() + PAGE_TIMEOUT;
    loop {
        let rows = page(
            "reading the tree",
            browser.table_rows("#snaptree tbody tr").await,
        );
        let names: Vec<String> = rows.iter().map(|r| r[0].clone()).collect();
        if pred(&names) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the tree never showed {what}: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn web_page_takes_reverts_and_deletes_snapshots() {
    let lab = TestLab::builder(1)
        .vdc_binary(env!("CARGO_BIN_EXE_vdc"))
        .start()
        .await;
    let c = &lab.client;
    let t = c
        .create_vm(&CreateVmRequest {
            name: VM.into(),
            template: Some("debian-busybox".into()),
            memory_mib: Some(64),
            start: false,
            ..Default::default()
        })
        .await
        .expect("create accepted");
    c.wait_task(&t.id, PAGE_TIMEOUT, |_| {})
        .await
        .expect("created");
    let browser = match Browser::start().await {
        Ok(b) => b,
        Err(e) => panic!("starting headless Chromium: {}", error_chain(&e)),
    };
    let token = std::fs::read_to_string(&lab.info.token_file).expect("token file");
    page(
        "opening the page",
        browser
            .goto(&format!("{}/#token={}", lab.info.api_url, token.trim()))
            .await,
    );
    page(
        "the VM in the snapshot section",
        browser
            .wait_text("#snap-vm", PAGE_TIMEOUT, |t| t.contains(VM))
            .await,
    );

    take(&browser, "w1").await;
    wait_tree(&browser, "w1 current", |n| n == ["w1 (you are here)"]).await;
    take(&browser, "w2").await;
    wait_tree(&browser, "w2 under w1", |n| {
        n == ["w1", "w2 (you are here)"]
    })
    .await;

    // Revert to w1 from its button: the current position moves.
    page(
        "revert w1",
        browser
            .click_css(r#"button[data-snap-revert="w1"]"#, PAGE_TIMEOUT)
            .await,
    );
    wait_tree(&browser, "w1 current again", |n| {
        n == ["w1 (you are here)", "w2"]
    })
    .await;

    // Delete w1 from its button: it has a child snapshot (w2) and the
    // active image on it, both at rest: each takes w1's data in.
    page(
        "delete w1",
        browser
            .click_css(r#"button[data-snap-delete="w1"]"#, PAGE_TIMEOUT)
            .await,
    );
    wait_tree(&browser, "w1 gone, w2 the root", |n| n == ["w2"]).await;

    // The API agrees.
    let list = wait_until_async(PAGE_TIMEOUT, "the API's tree", || async {
        let l = c.list_snapshots(VM).await.ok()?;
        (l.snapshots.len() == 1).then_some(l)
    })
    .await;
    assert_eq!(list.current, None);
    assert_eq!(list.snapshots[0].name, "w2");
    assert_eq!(list.snapshots[0].parent, None);

    // The instant clone form reaches the API: a stopped VM is refused, and
    // the page says why.
    let input = page(
        "the clone name field",
        browser.find("#snap-clone input[name=name]").await,
    );
    page(
        "typing the clone name",
        browser.send_keys(&input, "wc").await,
    );
    page(
        "Instant clone",
        browser.click_css("#snap-clone button", PAGE_TIMEOUT).await,
    );
    page(
        "the refusal on the page",
        browser
            .wait_text("#snap-msg", PAGE_TIMEOUT, |t| {
                t.contains("forks a running VM")
            })
            .await,
    );

    // The VM goes with its snapshot files.
    let t = c.delete_vm(VM).await.expect("delete accepted");
    c.wait_task(&t.id, PAGE_TIMEOUT, |_| {})
        .await
        .expect("deleted with its snapshots");
    let shared = lab
        .info
        .datastores
        .iter()
        .find(|d| d.kind == "shared")
        .expect("shared datastore");
    assert!(!shared.path.join(VM).exists(), "the VM directory stayed");
}
