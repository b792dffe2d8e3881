//! Sites, replication and recovery on real guests across two sites.
//!
//! 1. two installations (site `a`, site `b`) paired by the lab: each lists
//!    the other as reachable, without the token; pairing again is refused;
//!    killing site `b` makes site `a` see it unreachable.

use std::time::Duration;

use vdc_test_infra::{wait_until_async, TestLab, TwoSiteLab};
use vdc_types::ErrorCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sites_pair_and_see_each_other() {
    let lab = TwoSiteLab::start(
        TestLab::builder(1)
            .template(false)
            .vdc_binary(env!("CARGO_BIN_EXE_vdc")),
        TestLab::builder(1)
            .template(false)
            .vdc_binary(env!("CARGO_BIN_EXE_vdc")),
    )
    .await;
    let (a, b) = (&lab.a.client, &lab.b.client);
    assert_eq!(a.local_site().await.expect("local a").name, "a");
    assert_eq!(b.local_site().await.expect("local b").name, "b");
    for (c, peer) in [(a, "b"), (b, "a")] {
        wait_until_async(Duration::from_secs(30), "the peer site answers", || async {
            c.get_site(peer)
                .await
                .ok()
                .filter(|s| s.reachable && s.rtt_ms.is_some())
        })
        .await;
        let raw = serde_json::to_string(&c.list_sites().await.expect("sites")).expect("json");
        assert!(!raw.contains("token") && !raw.contains("vdcs."), "{raw}");
    }
    let again = a
        .pair_site(&vdc_types::site::PairSiteRequest {
            url: lab.b.info.api_url.clone(),
            token: vdc_lab::read_token(&lab.b.info.token_file).expect("token"),
            name: None,
            local_url: Some(lab.a.info.api_url.clone()),
        })
        .await
        .expect_err("paired twice");
    assert!(
        matches!(&again, vdc_client::ClientError::Api(e) if e.code == ErrorCode::AlreadyExists),
        "{again}"
    );
    lab.kill_site("b");
    wait_until_async(
        Duration::from_secs(30),
        "site b seen unreachable",
        || async { a.get_site("b").await.ok().filter(|s| !s.reachable) },
    )
    .await;
    let events = a.event_history("site.*").await.expect("events");
    assert!(events.iter().any(|e| e.topic == "site.paired"));
    assert!(events.iter().any(|e| e.topic == "site.unreachable"));
}
