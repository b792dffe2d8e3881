//! Random histories of put/delete/txn against the embedded store agree with
//! a `BTreeMap` model (the check and the strategy live in
//! `vdc_store::conformance`, shared with the etcd store).

use proptest::prelude::*;
use vdc_store::conformance::{check_against_model, model_ops};
use vdc_store::RedbStore;

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model(ops in model_ops()) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let store = RedbStore::open_in_memory().await.expect("open");
            check_against_model(&store, ops).await;
        });
    }
}
