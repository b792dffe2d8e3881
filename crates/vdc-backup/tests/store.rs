//! The store end to end on files: back up a disk held in memory, restore
//! it, dedup on a second backup, a flipped byte caught by verify and by a
//! restore (which leaves no file), gc keeping what kept backups need, and
//! an encrypted store holding no plaintext.

use std::collections::BTreeSet;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use vdc_backup::session::{write_disk, DiskPlan, MemDisk};
use vdc_backup::store::{Manifest, Store};
use vdc_backup::{gc, key::StoreKey, restore, verify, BackupError};
use vdc_types::backup::{Backup, Consistency, DiskRead};

const MIB: usize = 1 << 20;

fn disk() -> Vec<u8> {
    // 3 chunks of data, 1 of zeros, half a chunk of data at the end.
    let mut d = vec![0u8; 4 * 4 * MIB + 2 * MIB];
    for (i, b) in d.iter_mut().enumerate() {
        if !(12 * MIB..16 * MIB).contains(&i) {
            *b = ((i / 4096) % 251) as u8 ^ (i % 7) as u8;
        }
    }
    d[100..116].copy_from_slice(b"GUEST-PLAINTEXT!");
    d
}

fn backup(store: &Store, id: &str, data: &[u8]) -> Manifest {
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
    store
        .begin_writer(id, "h", vdc_types::now_ms())
        .expect("writer");
    let (index, fig) = write_disk(store, plan, &AtomicBool::new(false), &|_| {}).expect("backup");
    let config: vdc_types::VmConfig = serde_json::from_value(serde_json::json!({
        "version": 3, "id": "vm-1", "name": "vm", "cpus": 1, "memory_mib": 64,
        "datastore": "ds", "dir": "vm", "disks": [], "nics": [], "hostname": "vm",
        "created_ms": 1
    }))
    .expect("config");
    let b = Backup {
        id: id.into(),
        store: "s".into(),
        vm: "vm".into(),
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
    store.end_writer(id).expect("end writer");
    m
}

fn restored(store: &Store, m: &Manifest, dir: &std::path::Path) -> Result<Vec<u8>, BackupError> {
    let out = dir.join(format!("{}.raw", m.backup.id));
    restore::restore_raw(
        store,
        &m.index[0],
        m.backup.size_bytes,
        &out,
        3,
        &AtomicBool::new(false),
        &|_| {},
    )?;
    let data = std::fs::read(&out).expect("restored file");
    std::fs::remove_file(&out).expect("rm");
    Ok(data)
}

#[test]
fn backup_restore_dedup_verify_gc() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = Store::open_or_init(&dir.path().join("store"), None).expect("store");
    let data = disk();
    let m1 = backup(&store, "b1", &data);
    let f = &m1.backup.disks[0];
    assert_eq!((f.chunks, f.chunks_zero, f.chunks_new), (5, 1, 4));
    assert_eq!(restored(&store, &m1, dir.path()).expect("restore"), data);

    // Same data again: everything reused.
    let m2 = backup(&store, "b2", &data);
    assert_eq!(m2.backup.disks[0].chunks_reused, 4);
    assert_eq!(m2.backup.disks[0].chunks_new, 0);
    assert_eq!(store.list().expect("list").len(), 2);

    // A third backup with one chunk changed, then b1 and b2 removed: gc
    // keeps every chunk b3 needs.
    let mut changed = data.clone();
    changed[5 * MIB] ^= 0xff;
    let m3 = backup(&store, "b3", &changed);
    assert_eq!(m3.backup.disks[0].chunks_new, 1);
    store.remove_backup("b1").expect("rm");
    store.remove_backup("b2").expect("rm");
    let r = gc::gc(&store, Duration::ZERO).expect("gc");
    assert_eq!(r.chunks_removed, 1, "{r:?}");
    assert_eq!(
        restored(&store, &m3, dir.path()).expect("restore after gc"),
        changed
    );

    // A flipped byte in one chunk: verify marks, restore fails, no file left.
    let name = m3.index[0].chunks[0].clone().expect("data chunk");
    let p = store.chunk_path(&name);
    let mut raw = std::fs::read(&p).expect("chunk");
    let mid = raw.len() / 2;
    raw[mid] ^= 1;
    std::fs::write(&p, raw).expect("damage");
    let v = verify::verify(&store, "b3").expect("verify");
    assert!(v.damaged && v.damaged_chunks == vec![name.clone()], "{v:?}");
    assert!(store.manifest("b3").expect("b3").backup.damaged);
    let e = restored(&store, &m3, dir.path()).expect_err("damaged restore");
    assert!(matches!(e, BackupError::ChunkDigest { .. }), "{e}");
    assert!(
        !dir.path().join("b3.raw").exists(),
        "a partial restore was left"
    );
}

#[test]
fn an_encrypted_store_holds_no_plaintext_and_needs_its_key() {
    let dir = tempfile::tempdir().expect("tmp");
    let root = dir.path().join("enc");
    let key = StoreKey::from_bytes(&[5; 32]);
    let store = Store::open_or_init(&root, Some(key.clone())).expect("store");
    let data = disk();
    let m = backup(&store, "e1", &data);
    assert_eq!(restored(&store, &m, dir.path()).expect("restore"), data);
    let mut seen = BTreeSet::new();
    for (name, _) in store.chunk_files().expect("files") {
        let raw = std::fs::read(store.chunk_path(&name)).expect("chunk");
        assert!(!raw.windows(16).any(|w| w == b"GUEST-PLAINTEXT!"));
        seen.insert(name);
    }
    assert_eq!(seen.len(), 4);
    assert!(matches!(Store::open(&root, None), Err(BackupError::Key(_))));
    assert!(matches!(
        Store::open(&root, Some(StoreKey::from_bytes(&[6; 32]))),
        Err(BackupError::Key(_))
    ));
}

#[test]
fn a_backup_without_its_manifest_does_not_list() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = Store::open_or_init(&dir.path().join("s"), None).expect("store");
    let mut src = MemDisk(disk());
    let plan = DiskPlan {
        name: "disk0".into(),
        size: src.0.len() as u64,
        source: &mut src,
        changed: None,
        read: DiskRead::Full { reason: "x".into() },
    };
    store
        .begin_writer("half", "h", vdc_types::now_ms())
        .expect("writer");
    write_disk(&store, plan, &AtomicBool::new(false), &|_| {}).expect("chunks");
    // Killed here: chunks, a writer marker, no manifest.
    assert!(store.list().expect("list").is_empty());
    assert_eq!(store.writers().expect("writers").len(), 1);
    // gc keeps its chunks while the writer is recent.
    let r = gc::gc(&store, Duration::from_secs(2)).expect("gc");
    assert_eq!(r.chunks_removed, 0);
}
