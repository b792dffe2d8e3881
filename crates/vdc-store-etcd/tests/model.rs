//! Random histories of put/delete/txn against the etcd store agree with
//! the same `BTreeMap` model as the embedded store's (strategy and check
//! from `vdc_store::conformance`). One etcd serves every case, each case
//! in a namespace of its own.

use std::sync::atomic::{AtomicU32, Ordering};

use proptest::test_runner::{Config, TestRunner};
use vdc_store::conformance::{check_against_model, model_ops};
use vdc_store_etcd::test_etcd::TestEtcd;

#[test]
fn store_matches_model() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let etcd = rt
        .block_on(TestEtcd::start())
        .unwrap_or_else(|e| panic!("{e}"));
    let case = AtomicU32::new(0);
    let mut runner = TestRunner::new(Config {
        cases: 64,
        ..Config::default()
    });
    runner
        .run(&model_ops(), |ops| {
            let case = case.fetch_add(1, Ordering::Relaxed);
            rt.block_on(async {
                let store = etcd
                    .store(&format!("/model/{case}/"))
                    .await
                    .expect("connect");
                check_against_model(&store, ops).await;
            });
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
}
