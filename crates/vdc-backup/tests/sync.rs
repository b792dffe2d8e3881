//! Off-site sync between two stores on files: a synced backup restores
//! from the second store; a second sync sends only the chunks of the new
//! backup; an encrypted store syncs to a store with the same key and is
//! refused toward another key or an unencrypted store; a sync cut by a
//! missing chunk lists nothing in the target.

use std::sync::atomic::AtomicBool;

use vdc_backup::session::{write_disk, DiskPlan, MemDisk};
use vdc_backup::store::{Manifest, Store};
use vdc_backup::{key::StoreKey, restore, sync, BackupError};
use vdc_types::backup::{Backup, Consistency, DiskRead};

const MIB: usize = 1 << 20;

fn disk(seed: u8) -> Vec<u8> {
    // 4 chunks of data, 1 of zeros.
    let mut d = vec![0u8; 5 * 4 * MIB];
    for (i, b) in d.iter_mut().enumerate() {
        if !(8 * MIB..12 * MIB).contains(&i) {
            *b = ((i / 4096) % 251) as u8 ^ (i % 7) as u8 ^ seed;
        }
    }
    d
}

fn backup(store: &Store, id: &str, vm: &str, data: &[u8]) -> Manifest {
    let mut src = MemDisk(data.to_vec());
    let plan = DiskPlan {
        name: "disk0".into(),
        size: data.len() as u64,
        source: &mut src,
        changed: None,
        read: DiskRead::Full {
            reason: "first backup".into(),
        },
    };
    let (index, fig) = write_disk(store, plan, &AtomicBool::new(false), &|_| {}).expect("backup");
    let config: vdc_types::VmConfig = serde_json::from_value(serde_json::json!({
        "version": 3, "id": "vm-1", "name": vm, "cpus": 1, "memory_mib": 64,
        "datastore": "ds", "dir": "vm", "disks": [], "nics": [], "hostname": vm,
        "created_ms": 1
    }))
    .expect("config");
    let b = Backup {
        id: id.into(),
        store: "s".into(),
        vm: vm.into(),
        vm_id: "vm-1".into(),
        host: "h".into(),
        consistency: Consistency::Stopped,
        started_ms: vdc_types::now_ms(),
        finished_ms: vdc_types::now_ms(),
        size_bytes: data.len() as u64,
        disks: vec![fig],
        damaged: false,
        config,
    };
    let m = Manifest::new(b, vec![index]);
    store.write_manifest(&m).expect("manifest");
    m
}

fn restored(store: &Store, id: &str, dir: &std::path::Path) -> Vec<u8> {
    let m = store.manifest(id).expect("manifest in the target");
    let out = dir.join(format!("{id}.raw"));
    restore::restore_raw(
        store,
        &m.index[0],
        m.backup.size_bytes,
        &out,
        3,
        &AtomicBool::new(false),
        &|_| {},
    )
    .expect("restore from the target");
    let data = std::fs::read(&out).expect("restored file");
    std::fs::remove_file(&out).expect("rm");
    data
}

fn run(
    from: &Store,
    to: &Store,
    vm: Option<&str>,
) -> Result<vdc_types::backup::SyncReport, BackupError> {
    sync::sync(
        from,
        to,
        |b| vm.is_none_or(|v| b.vm == v),
        vdc_types::now_ms(),
        &AtomicBool::new(false),
    )
}

#[test]
fn a_synced_backup_restores_from_the_second_store_and_a_resync_sends_only_new_chunks() {
    let dir = tempfile::tempdir().expect("tmp");
    let a = Store::open_or_init(&dir.path().join("a"), None).expect("a");
    let b = Store::open_or_init(&dir.path().join("b"), None).expect("b");
    let d1 = disk(0);
    backup(&a, "web-1", "web", &d1);
    backup(&a, "db-1", "db", &disk(9));

    let r = run(&a, &b, Some("web")).expect("sync");
    assert_eq!(r.backups_copied, ["web-1"]);
    assert_eq!((r.chunks_sent, r.chunks_present), (4, 0));
    assert_eq!(
        b.backup_ids().expect("ids"),
        ["web-1"],
        "--vm copies only that VM's"
    );
    assert_eq!(restored(&b, "web-1", dir.path()), d1);

    // One chunk changed: the next sync sends that chunk only.
    let mut d2 = d1.clone();
    d2[17 * MIB] ^= 0x5a;
    backup(&a, "web-2", "web", &d2);
    let r = run(&a, &b, Some("web")).expect("second sync");
    assert_eq!(r.backups_copied, ["web-2"]);
    assert_eq!(r.backups_present, 1);
    assert_eq!((r.chunks_sent, r.chunks_present), (1, 3), "{r:?}");
    assert_eq!(restored(&b, "web-2", dir.path()), d2);

    // Nothing new: nothing sent.
    let r = run(&a, &b, Some("web")).expect("third sync");
    assert!(r.backups_copied.is_empty());
    assert_eq!(r.chunks_sent, 0);
}

#[test]
fn encrypted_stores_sync_only_with_the_same_key() {
    let dir = tempfile::tempdir().expect("tmp");
    let k1 = StoreKey::from_bytes(&[1; 32]);
    let k2 = StoreKey::from_bytes(&[2; 32]);
    let a = Store::open_or_init(&dir.path().join("a"), Some(k1.clone())).expect("a");
    let same = Store::open_or_init(&dir.path().join("same"), Some(k1)).expect("same");
    let other = Store::open_or_init(&dir.path().join("other"), Some(k2)).expect("other");
    let plain = Store::open_or_init(&dir.path().join("plain"), None).expect("plain");
    let d = disk(3);
    backup(&a, "web-1", "web", &d);

    let r = run(&a, &same, None).expect("same key");
    assert_eq!(r.chunks_sent, 4);
    assert_eq!(restored(&same, "web-1", dir.path()), d);
    for target in [&other, &plain] {
        let e = run(&a, target, None).expect_err("another key");
        assert!(matches!(e, BackupError::Key(_)), "{e}");
        assert!(target.backup_ids().expect("ids").is_empty());
    }
}

#[test]
fn a_sync_cut_by_a_missing_chunk_lists_nothing_in_the_target() {
    let dir = tempfile::tempdir().expect("tmp");
    let a = Store::open_or_init(&dir.path().join("a"), None).expect("a");
    let b = Store::open_or_init(&dir.path().join("b"), None).expect("b");
    let m = backup(&a, "web-1", "web", &disk(5));
    let last = m.index[0].chunks.iter().flatten().last().expect("a chunk");
    std::fs::remove_file(a.chunk_path(last)).expect("rm chunk");

    let e = run(&a, &b, None).expect_err("a chunk is missing");
    assert!(matches!(e, BackupError::ChunkMissing { .. }), "{e}");
    assert!(
        b.backup_ids().expect("ids").is_empty(),
        "no manifest without its chunks"
    );
    assert!(
        b.writers().expect("writers").is_empty(),
        "the writer marker is gone"
    );
}

#[test]
fn a_damaged_chunk_is_caught_on_arrival() {
    let dir = tempfile::tempdir().expect("tmp");
    let a = Store::open_or_init(&dir.path().join("a"), None).expect("a");
    let b = Store::open_or_init(&dir.path().join("b"), None).expect("b");
    let m = backup(&a, "web-1", "web", &disk(7));
    let first = m.index[0].chunks.iter().flatten().next().expect("a chunk");
    let p = a.chunk_path(first);
    let mut f = std::fs::read(&p).expect("chunk");
    let n = f.len() - 1;
    f[n] ^= 1;
    std::fs::write(&p, f).expect("flip");

    let e = run(&a, &b, None).expect_err("damaged");
    assert!(matches!(e, BackupError::ChunkDigest { .. }), "{e}");
    assert!(b.backup_ids().expect("ids").is_empty());
    assert!(
        !b.chunk_path(first).exists(),
        "the damaged chunk was not written"
    );
}
