//! Random histories of put/delete/txn against the embedded store agree with
//! a `BTreeMap` model (the check lives in `vdc_store::conformance`).

use proptest::prelude::*;
use vdc_store::conformance::{check_against_model, ModelOp};
use vdc_store::{Compare, Op, RedbStore};

/// Few, overlapping keys so that histories collide: siblings and prefixes.
fn key() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "a/b", "a/bc", "a/b/c", "b", ""]).prop_map(String::from)
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(0u8..3, 0..3)
}

fn prefix() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "a/", "a/b", "a/b/", "b", "c", ""]).prop_map(String::from)
}

fn compare() -> impl Strategy<Value = Compare> {
    prop_oneof![
        (key(), 0u64..12).prop_map(|(key, r)| Compare::Revision {
            key,
            mod_revision: r
        }),
        (key(), value()).prop_map(|(key, value)| Compare::Value { key, value }),
        key().prop_map(Compare::Absent),
        key().prop_map(Compare::Exists),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (key(), value()).prop_map(|(key, value)| Op::Put { key, value, lease: None }),
        2 => key().prop_map(Op::Delete),
        1 => prefix().prop_map(Op::DeletePrefix),
    ]
}

fn model_op() -> impl Strategy<Value = ModelOp> {
    prop_oneof![
        3 => (key(), value()).prop_map(|(k, v)| ModelOp::Put(k, v)),
        2 => key().prop_map(ModelOp::Delete),
        3 => (
            prop::collection::vec(compare(), 0..3),
            prop::collection::vec(op(), 0..4),
            prop::collection::vec(op(), 0..4),
        )
            .prop_map(|(compares, success, failure)| ModelOp::Txn { compares, success, failure }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model(ops in prop::collection::vec(model_op(), 1..40)) {
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
