//! `vdc server migrate-store`: a stopped server's embedded store copied
//! into an empty etcd (a real one, started for the test), every key and
//! value as it was, leased keys left out; a second run into the now full
//! store is refused, and so is a source file that does not exist.

use std::process::Command;
use std::time::Duration;

use vdc_store::{RedbStore, Store};
use vdc_store_etcd::test_etcd::TestEtcd;

fn migrate(from: &str, to: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vdc"))
        .args(["server", "migrate-store", "--from", from, "--to", to])
        .output()
        .expect("run vdc server migrate-store")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrates_the_embedded_store_into_an_empty_etcd() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("state.redb");
    {
        let redb = RedbStore::open(&file).await.expect("open");
        for i in 0..250 {
            redb.put(
                &format!("/vms/vm-{i:03}"),
                format!("{{\"n\":{i}}}").into_bytes(),
            )
            .await
            .expect("put");
        }
        redb.put("/hosts/h1", b"{}".to_vec()).await.expect("put");
        let lease = redb
            .grant_lease(Duration::from_secs(60))
            .await
            .expect("lease");
        redb.put_with_lease("/alive/h1", vec![], lease)
            .await
            .expect("leased put");
    }
    let etcd = TestEtcd::start().await.unwrap_or_else(|e| panic!("{e}"));
    let from = format!("redb:{}", file.display());
    let to = format!("etcd://{}", etcd.endpoint());

    let out = migrate(&from, &to);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("copied 251 keys"), "{stdout}");

    let store = etcd.store("/vdc/").await.expect("connect");
    let all = store.list("").await.expect("list");
    assert_eq!(all.len(), 251);
    let vm = store
        .get("/vms/vm-042")
        .await
        .expect("get")
        .expect("vm-042");
    assert_eq!(vm.value, b"{\"n\":42}");
    assert!(store.get("/alive/h1").await.expect("get").is_none());

    // Into a store that is no longer empty: refused, nothing written.
    let again = migrate(&from, &to);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("not empty"), "{err}");
    assert_eq!(store.list("").await.expect("list").len(), 251);

    // A source file that does not exist: refused, said so.
    let missing = migrate(&format!("redb:{}", dir.path().join("nope").display()), &to);
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains("no store file"), "{err}");
}
