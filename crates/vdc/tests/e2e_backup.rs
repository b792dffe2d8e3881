//! Backup and restore on real guests, in one 2-host lab:
//!
//! 1. a guest writes known data and is backed up while it runs
//!    (point in time quiesced through its guest agent); the guest then
//!    overwrites it, and
//!    the next backup reads only the chunks its dirty bitmap marks;
//! 2. the backup restored as a new VM on the other host, on that host's
//!    local datastore, boots and its guest reads the original data;
//!    File-level restore lists `/data` of the backup and extracts the
//!    file (API and CLI) without running a VM;
//!    An instant restore of the backup as a new VM boots from the backup
//!    served over NBD, reads the original data, and once its disk is
//!    copied the export is gone and the VM survives a stop/start;
//! 3. the VM stopped is backed up again (consistency `stopped`), still
//!    incrementally: the bitmap survived the stop in the qcow2;
//! 4. a flipped byte in one chunk file: verify reports the backup damaged,
//!    and a restore over the original VM that needs the chunk fails
//!    loudly, leaving the VM's disk as it was (the guest still reads the
//!    overwritten data);
//! 5. after an agent restart the bitmap still serves an incremental
//!    backup; an encrypted store holds none of the guest's plaintext; after
//!    prune and gc the kept backup (incremental, its unchanged chunks from
//!    the pruned one) verifies whole and restores;
//!    The encrypted store synced (CLI) to a second store with the same key:
//!    the kept backup is copied and restores from there;
//! 6. refusals: an unknown store, a restore over a running VM, a sync
//!    toward a store with another key;
//! 7. the web page (Chromium) lists the backups with their state (the
//!    damaged one marked), backs a VM up and restores a backup as a new
//!    VM from its forms (once instantly), and syncs the encrypted store again: only the
//!    chunks of the one new backup are sent;
//! 8. a backup job every second with keep-last 1 backs a VM up again and
//!    again and prunes down to one backup.

use std::time::Duration;

use vdc_client::{Client, ClientError};
use vdc_test_infra::webdriver::{Browser, WebDriverError};
use vdc_test_infra::{wait_until, wait_until_async, wait_vm, TestLab, VM_WAIT_TIMEOUT};
use vdc_types::api::CreateVmRequest;
use vdc_types::backup::{AddBackupStoreRequest, Consistency, DiskRead, RestoreRequest};
use vdc_types::{ErrorCode, Task, TaskState, Vm, VmAction, VmPowerState};

const TEMPLATE: &str = "debian-busybox";
const TASK_TIMEOUT: Duration = Duration::from_secs(300);

async fn run_task(c: &Client, t: Task) -> Task {
    match c.wait_task(&t.id, TASK_TIMEOUT, |_| {}).await {
        Ok(t) => t,
        Err(e) => panic!("task {} {} failed: {e}", t.kind, t.target),
    }
}

async fn ready(c: &Client, name: &str) -> Vm {
    wait_vm(c, name, |v| {
        v.state == VmPowerState::Running && v.guest.ready && v.guest.address.is_some()
    })
    .await
}

async fn action(c: &Client, name: &str, act: VmAction) {
    let t = c
        .vm_action(name, act, serde_json::json!({}))
        .await
        .unwrap_or_else(|e| panic!("{act} {name}: {e}"));
    run_task(c, t).await;
}

fn ask(lab: &TestLab, vm: &Vm, cmd: &str) -> String {
    let ip = vm.guest.address.clone().expect("address");
    let lines = wait_until(VM_WAIT_TIMEOUT, "the guest's service", || {
        lab.guest_request("host-2", &ip, &[cmd]).ok()
    });
    lines.get(1).cloned().unwrap_or_default()
}

/// Whether any file under `dir` contains `needle`.
fn dir_contains(dir: &std::path::Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).expect("dir").flatten().any(|e| {
        let p = e.path();
        if p.is_dir() {
            dir_contains(&p, needle)
        } else {
            let data = std::fs::read(&p).expect("file");
            data.windows(needle.len()).any(|w| w == needle)
        }
    })
}

fn api_code(r: Result<Task, ClientError>) -> (ErrorCode, String) {
    match r {
        Err(ClientError::Api(e)) => (e.code, e.message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn backup_while_running_restore_elsewhere_and_damage_is_loud() {
    let lab = TestLab::builder(2)
        .vdc_binary(env!("CARGO_BIN_EXE_vdc"))
        .start()
        .await;
    let c = &lab.client;
    let dir = tempfile::tempdir().expect("tmp");
    let store_dir = dir.path().join("store");
    c.add_backup_store(&AddBackupStoreRequest {
        name: "s1".into(),
        path: store_dir.to_string_lossy().into(),
        encryption_key: None,
    })
    .await
    .expect("store added");

    // 1. Known data, a backup while the guest runs, then an overwrite.
    let t = c
        .create_vm(&CreateVmRequest {
            name: "src".into(),
            template: Some(TEMPLATE.into()),
            memory_mib: Some(128),
            host: Some("host-1".into()),
            start: true,
            ..Default::default()
        })
        .await
        .expect("create");
    run_task(c, t).await;
    let vm = ready(c, "src").await;
    assert_eq!(ask(&lab, &vm, "write k1 original-2718"), "ok");
    let done = run_task(c, c.run_backup("src", "s1").await.expect("backup")).await;
    assert_eq!(done.kind, "backup.run");
    let list = c.list_backups(Some("s1"), Some("src")).await.expect("list");
    assert_eq!(list.len(), 1, "{list:?}");
    let b1 = &list[0];
    // The guest image runs a guest agent: its file systems were frozen
    // around the point in time.
    assert_eq!(b1.consistency, Consistency::Quiesced);
    let d = &b1.disks[0];
    assert!(matches!(d.read, DiskRead::Full { .. }));
    assert_eq!(d.chunks, d.chunks_read);
    assert!(
        d.chunks_new > 0 && d.chunks_new + d.chunks_reused + d.chunks_zero == d.chunks,
        "{d:?}"
    );
    assert_eq!(ask(&lab, &vm, "write k1 overwritten"), "ok");
    assert_eq!(
        c.get_vm("src").await.expect("src").state,
        VmPowerState::Running,
        "the guest kept running"
    );
    // The next backup reads only what changed since b1.
    run_task(c, c.run_backup("src", "s1").await.expect("backup")).await;
    let inc = c.list_backups(Some("s1"), Some("src")).await.expect("list")[1].clone();
    let di = &inc.disks[0];
    assert!(
        matches!(&di.read, DiskRead::Incremental { base, .. } if base == &b1.id),
        "{di:?}"
    );
    assert!(
        di.chunks_read >= 1 && di.chunks_read * 4 < di.chunks,
        "{di:?}"
    );
    assert!(
        di.chunks_new >= 1 && di.chunks_new <= di.chunks_read,
        "{di:?}"
    );

    // 2. Restore as a new VM on host-2's local datastore.
    let t = c
        .restore_backup(
            &b1.id,
            &RestoreRequest {
                name: Some("restored".into()),
                host: Some("host-2".into()),
                datastore: Some("local-host-2".into()),
                ..Default::default()
            },
        )
        .await
        .expect("restore");
    run_task(c, t).await;
    action(c, "restored", VmAction::Start).await;
    let r = ready(c, "restored").await;
    assert_eq!(r.owner.as_deref(), Some("host-2"));
    assert_eq!(ask(&lab, &r, "read k1"), "original-2718");
    // File-level restore of the same backup, without running a VM.
    let files = c
        .backup_files(&b1.id, None, None, "/data")
        .await
        .expect("files");
    assert!(
        files.iter().any(|f| f.name == "k1" && f.kind == "file"),
        "{files:?}"
    );
    let data = c
        .backup_file(&b1.id, None, None, "/data/k1")
        .await
        .expect("file");
    assert_eq!(String::from_utf8_lossy(&data).trim(), "original-2718");
    match c.backup_files(&b1.id, None, None, "/data/nope").await {
        Err(ClientError::Api(e)) => assert_eq!(e.code, ErrorCode::NotFound, "{}", e.message),
        other => panic!("a missing path: {other:?}"),
    }
    let out = dir.path().join("extracted");
    std::fs::create_dir(&out).expect("dir");
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_vdc"))
        .args(["backup", "files", &b1.id, "--extract", "/data/k1", "--to"])
        .arg(&out)
        .env("VDC_URL", lab.info.api_url.as_str())
        .env("VDC_TOKEN_FILE", &lab.info.token_file)
        .output()
        .expect("vdc backup files");
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(out.join("k1"))
            .expect("extracted")
            .trim(),
        "original-2718"
    );

    // 2b. Instant restore of b1 as a new VM on host-2: it boots from the
    // backup served over NBD and reads the original data; when its disk is
    // copied the export's socket is gone, and the VM survives a stop/start
    // on its own disk.
    action(c, "restored", VmAction::Stop).await;
    let t = c
        .restore_backup(
            &b1.id,
            &RestoreRequest {
                name: Some("instant".into()),
                host: Some("host-2".into()),
                datastore: Some("local-host-2".into()),
                instant: true,
                ..Default::default()
            },
        )
        .await
        .expect("instant restore");
    let inst = ready(c, "instant").await;
    assert_eq!(inst.owner.as_deref(), Some("host-2"));
    assert_eq!(ask(&lab, &inst, "read k1"), "original-2718");
    let done = run_task(c, t).await;
    assert_eq!(done.state, TaskState::Succeeded);
    let events = c.events_after(0, "backup.*", 2000).await.expect("events");
    let seen = |topic: &str| {
        events
            .iter()
            .find(|e| e.topic == topic && e.object == "instant")
            .cloned()
            .unwrap_or_else(|| panic!("no {topic} event: {events:?}"))
    };
    let started = seen("backup.instant_restore_started");
    let finished = seen("backup.instant_restore_finished");
    assert!(started.seq < finished.seq);
    let sockets = started.data["exports"].as_array().expect("exports").clone();
    assert!(!sockets.is_empty(), "{started:?}");
    for s in &sockets {
        let s = s.as_str().expect("socket path");
        assert!(
            !std::path::Path::new(s).exists(),
            "the export {s} is still there"
        );
    }
    action(c, "instant", VmAction::Stop).await;
    action(c, "instant", VmAction::Start).await;
    let inst = ready(c, "instant").await;
    assert_eq!(ask(&lab, &inst, "read k1"), "original-2718");
    action(c, "instant", VmAction::Stop).await;
    // An instant restore needs a new VM's name.
    let (code, msg) = api_code(
        c.restore_backup(
            &b1.id,
            &RestoreRequest {
                instant: true,
                ..Default::default()
            },
        )
        .await,
    );
    assert_eq!(code, ErrorCode::InvalidInput, "{msg}");
    assert!(msg.contains("name"), "{msg}");

    // 3. The stopped VM backed up again: its data chunks are in the store.
    action(c, "src", VmAction::Stop).await;
    run_task(c, c.run_backup("src", "s1").await.expect("backup")).await;
    let list = c.list_backups(Some("s1"), Some("src")).await.expect("list");
    assert_eq!(list.len(), 3);
    let b2 = &list[2];
    assert_eq!(b2.consistency, Consistency::Stopped);
    let d2 = &b2.disks[0];
    assert!(
        matches!(&d2.read, DiskRead::Incremental { base, .. } if base == &inc.id),
        "the bitmap did not survive the stop: {d2:?}"
    );
    assert!(d2.chunks_read * 4 < d2.chunks, "{d2:?}");
    let shown = c.get_backup(&b2.id, None).await.expect("show");
    assert_eq!(shown.id, b2.id);

    // 4. A flipped byte in a chunk of b2.
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(store_dir.join("backups").join(format!("{}.json", b2.id)))
            .expect("manifest"),
    )
    .expect("json");
    let chunk = manifest["index"][0]["chunks"]
        .as_array()
        .expect("chunks")
        .iter()
        .find_map(|c| c.as_str())
        .expect("a data chunk")
        .to_string();
    let path = store_dir.join("chunks").join(&chunk[..2]).join(&chunk);
    let mut raw = std::fs::read(&path).expect("chunk file");
    let mid = raw.len() / 2;
    raw[mid] ^= 0x40;
    std::fs::write(&path, raw).expect("damage");
    let v = c.verify_backup(&b2.id, Some("s1")).await.expect("verify");
    assert!(
        v.damaged && v.damaged_chunks == vec![chunk.clone()],
        "{v:?}"
    );
    let listed = c.get_backup(&b2.id, Some("s1")).await.expect("show");
    assert!(listed.damaged, "verify marked it");
    let t = c
        .restore_backup(&b2.id, &RestoreRequest::default())
        .await
        .expect("restore accepted");
    let failed = c.wait_task(&t.id, TASK_TIMEOUT, |_| {}).await;
    let failed = match failed {
        Err(vdc_client::ClientError::TaskFailed(t)) => *t,
        other => panic!("the restore of a damaged backup did not fail: {other:?}"),
    };
    assert_eq!(failed.state, TaskState::Failed);
    let msg = failed.error.expect("error").message;
    assert!(msg.contains(&chunk) && msg.contains("damaged"), "{msg}");
    // The VM's own disk is as it was.
    action(c, "src", VmAction::Start).await;
    let vm = ready(c, "src").await;
    assert_eq!(ask(&lab, &vm, "read k1"), "overwritten");

    // 5. A backup whose base is damaged reads everything and says why;
    // the bitmap it starts survives an agent restart (QEMU keeps running).
    assert_eq!(ask(&lab, &vm, "write k2 after-damage"), "ok");
    run_task(c, c.run_backup("src", "s1").await.expect("backup")).await;
    let b3 = c.list_backups(Some("s1"), Some("src")).await.expect("list")[3].clone();
    assert!(
        matches!(&b3.disks[0].read, DiskRead::Full { reason } if reason.contains("damaged")),
        "{:?}",
        b3.disks[0]
    );
    assert_eq!(ask(&lab, &vm, "write k2 after-restart"), "ok");
    lab.kill_agent("host-1");
    let restarted = vdc_types::now_ms();
    lab.restart_agent("host-1");
    wait_until_async(VM_WAIT_TIMEOUT, "host-1 joined again", || async {
        let h = c.get_host("host-1").await.ok()?;
        let a = c.list_agents().await.ok()?;
        let joined = a
            .iter()
            .any(|a| a.host == "host-1" && a.joined_ms.is_some_and(|t| t >= restarted));
        (joined && h.state == vdc_types::HostState::Connected).then_some(())
    })
    .await;
    let vm = ready(c, "src").await;
    run_task(c, c.run_backup("src", "s1").await.expect("backup")).await;
    let b4 = c.list_backups(Some("s1"), Some("src")).await.expect("list")[4].clone();
    let d4 = &b4.disks[0];
    assert!(
        matches!(&d4.read, DiskRead::Incremental { base, .. } if base == &b3.id),
        "the bitmap did not survive the agent restart: {d4:?}"
    );
    assert!(
        d4.chunks_read >= 1 && d4.chunks_read * 4 < d4.chunks,
        "{d4:?}"
    );

    // An encrypted store: no plaintext of the guest; prune and gc keep
    // what the kept (incremental) backup needs.
    let key = dir.path().join("key");
    std::fs::write(&key, [0x5au8; 32]).expect("key");
    let enc_dir = dir.path().join("enc");
    c.add_backup_store(&AddBackupStoreRequest {
        name: "enc".into(),
        path: enc_dir.to_string_lossy().into(),
        encryption_key: Some(key.to_string_lossy().into()),
    })
    .await
    .expect("encrypted store");
    let marker = "PLAINTEXT-MARKER-31415926";
    assert_eq!(ask(&lab, &vm, &format!("write k3 {marker}")), "ok");
    run_task(c, c.run_backup("src", "enc").await.expect("backup")).await;
    assert_eq!(ask(&lab, &vm, "write k3 changed-again"), "ok");
    run_task(c, c.run_backup("src", "enc").await.expect("backup")).await;
    let encs = c.list_backups(Some("enc"), None).await.expect("list");
    assert_eq!(encs.len(), 2);
    assert!(
        matches!(encs[1].disks[0].read, DiskRead::Incremental { .. }),
        "{:?}",
        encs[1].disks[0]
    );
    assert!(
        !dir_contains(&enc_dir, marker.as_bytes()),
        "the encrypted store holds plaintext"
    );
    let pruned = c
        .prune_backups(
            "enc",
            &vdc_types::backup::PruneRequest {
                vm: None,
                retention: vdc_types::backup::Retention {
                    keep_last: 1,
                    ..Default::default()
                },
            },
        )
        .await
        .expect("prune");
    assert_eq!(pruned.removed, vec![encs[0].id.clone()]);
    // Chunks younger than the gc's grace (2 s) wait for a later gc.
    wait_until_async(
        VM_WAIT_TIMEOUT,
        "a gc that removes the pruned chunks",
        || async {
            let gc = c.gc_backup_store("enc").await.expect("gc");
            (gc.chunks_removed >= 1).then_some(())
        },
    )
    .await;
    let v = c
        .verify_backup(&encs[1].id, Some("enc"))
        .await
        .expect("verify");
    assert!(!v.damaged, "{v:?}");
    let t = c
        .restore_backup(
            &encs[1].id,
            &RestoreRequest {
                name: Some("fromenc".into()),
                ..Default::default()
            },
        )
        .await
        .expect("restore");
    run_task(c, t).await;

    // Off-site sync (CLI) to a second store with the same key; the kept
    // backup restores from there.
    let enc2_dir = dir.path().join("enc2");
    c.add_backup_store(&AddBackupStoreRequest {
        name: "enc2".into(),
        path: enc2_dir.to_string_lossy().into(),
        encryption_key: Some(key.to_string_lossy().into()),
    })
    .await
    .expect("second encrypted store");
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_vdc"))
        .args([
            "backup", "sync", "--from", "enc", "--to", "enc2", "-o", "json",
        ])
        .env("VDC_URL", lab.info.api_url.as_str())
        .env("VDC_TOKEN_FILE", &lab.info.token_file)
        .output()
        .expect("vdc backup sync");
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let r: vdc_types::backup::SyncReport =
        serde_json::from_slice(&cli.stdout).expect("sync report");
    assert_eq!(r.backups_copied, vec![encs[1].id.clone()], "{r:?}");
    assert!(r.chunks_sent >= 1 && r.chunks_present == 0, "{r:?}");
    let t = c
        .restore_backup(
            &encs[1].id,
            &RestoreRequest {
                store: Some("enc2".into()),
                name: Some("fromsync".into()),
                ..Default::default()
            },
        )
        .await
        .expect("restore from the synced store");
    run_task(c, t).await;
    // One more backup into enc: the web page's sync sends only its chunks.
    assert_eq!(ask(&lab, &vm, "write k3 after-the-sync"), "ok");
    run_task(c, c.run_backup("src", "enc").await.expect("backup")).await;
    let e3 = c.list_backups(Some("enc"), None).await.expect("list")[1].clone();
    assert!(matches!(e3.disks[0].read, DiskRead::Incremental { .. }));

    // 6. Refusals change nothing.
    let other = c
        .sync_backup_stores(
            "enc",
            &vdc_types::backup::SyncRequest {
                to: "s1".into(),
                vm: None,
            },
        )
        .await;
    match other {
        Err(ClientError::Api(e)) => {
            assert_eq!(e.code, ErrorCode::InvalidInput, "{}", e.message);
            assert!(e.message.contains("encrypted"), "{}", e.message);
        }
        other => panic!("a sync toward a store with another key: {other:?}"),
    }
    let (code, msg) = api_code(c.run_backup("src", "nope").await);
    assert_eq!(code, ErrorCode::NotFound, "{msg}");
    let (code, msg) = api_code(c.restore_backup(&b1.id, &RestoreRequest::default()).await);
    assert_eq!(code, ErrorCode::InvalidState, "{msg}");
    assert!(msg.contains("src"), "{msg}");
    assert_eq!(
        c.list_backups(Some("s1"), Some("src"))
            .await
            .expect("list")
            .len(),
        5
    );
    // 7. The web page.
    web_page(&lab, &b1.id, &b2.id, &e3).await;

    // 8. A backup job every second keeping the last backup: it runs
    // again and again, pruning what its retention drops.
    c.create_backup_job(&vdc_types::backup::CreateBackupJobRequest {
        name: "often".into(),
        vms: vec!["restored".into()],
        store: "s1".into(),
        every_s: 1,
        retention: vdc_types::backup::Retention {
            keep_last: 1,
            ..Default::default()
        },
    })
    .await
    .expect("backup job");
    wait_until_async(TASK_TIMEOUT, "a run of the job that pruned", || async {
        let jobs = c.list_backup_jobs().await.ok()?;
        let r = jobs.first()?.last_result.clone()?;
        r.contains("restored: ok, 1 pruned").then_some(())
    })
    .await;
    c.delete_backup_job("often").await.expect("delete job");
    wait_until_async(TASK_TIMEOUT, "one backup of restored kept", || async {
        let l = c.list_backups(Some("s1"), Some("restored")).await.ok()?;
        let busy = c.get_vm("restored").await.ok()?.operation.is_some();
        (l.len() == 1 && !busy).then_some(())
    })
    .await;
}

fn page<T>(step: &str, r: Result<T, WebDriverError>) -> T {
    r.unwrap_or_else(|e| panic!("{step}: {}", vdc_test_infra::error_chain(&e)))
}

async fn web_page(lab: &TestLab, b1: &str, b2: &str, e3: &vdc_types::backup::Backup) {
    const PAGE: Duration = Duration::from_secs(60);
    let c = &lab.client;
    let browser = page("starting headless Chromium", Browser::start().await);
    let token = std::fs::read_to_string(&lab.info.token_file).expect("token");
    page(
        "opening the page",
        browser
            .goto(&format!("{}/#token={}", lab.info.api_url, token.trim()))
            .await,
    );
    let cell = |r: &[String], i: usize| r.get(i).cloned().unwrap_or_default();
    let row = page(
        "the damaged backup in the table",
        browser
            .wait_row("#backups tbody tr", PAGE, |r| {
                r.first().map(String::as_str) == Some(b2)
            })
            .await,
    );
    assert_eq!(cell(&row, 4), "stopped", "{row:?}");
    assert_eq!(cell(&row, 9), "damaged", "{row:?}");
    page(
        "the first backup in the table",
        browser
            .wait_row("#backups tbody tr", PAGE, |r| {
                r.first().map(String::as_str) == Some(b1) && cell(r, 9) == "ok"
            })
            .await,
    );
    // Back up src from the form.
    page(
        "choosing src and s1",
        browser
            .execute(
                "document.querySelector('#backup-vm').value = 'src'; document.querySelector('#backup-store').value = 's1'; return 1;",
                vec![],
            )
            .await,
    );
    page(
        "back up",
        browser.click_css("#backup-run button", PAGE).await,
    );
    let newest = wait_until_async(TASK_TIMEOUT, "one more backup of src", || async {
        let l = c.list_backups(Some("s1"), Some("src")).await.ok()?;
        (l.len() == 6).then(|| l[5].id.clone())
    })
    .await;
    page(
        "the new backup in the table",
        browser
            .wait_row("#backups tbody tr", PAGE, |r| {
                r.first() == Some(&newest) && cell(r, 4) == "quiesced"
            })
            .await,
    );
    // Restore the newest backup as a new VM from the restore form.
    page(
        "choosing the backup",
        browser
            .execute(
                "document.querySelector('#restore-backup').value = arguments[0]; return 1;",
                vec![serde_json::json!(newest)],
            )
            .await,
    );
    let input = page(
        "the restore name field",
        browser.find("#restore-name").await,
    );
    page(
        "typing the name",
        browser.send_keys(&input, "fromweb").await,
    );
    page(
        "restore",
        browser.click_css("#backup-restore button", PAGE).await,
    );
    let t = wait_until_async(TASK_TIMEOUT, "the restore task of fromweb", || async {
        let tasks = c.list_tasks().await.ok()?;
        tasks
            .into_iter()
            .find(|t| t.kind == "backup.restore" && t.target == "fromweb" && t.state.is_final())
    })
    .await;
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}");
    assert_eq!(
        c.get_vm("fromweb").await.expect("fromweb").state,
        VmPowerState::Stopped
    );
    // Sync enc to enc2 from the form: only the new backup's chunks go.
    page(
        "choosing enc → enc2",
        browser
            .execute(
                "document.querySelector('#sync-from').value = 'enc'; document.querySelector('#sync-to').value = 'enc2'; return 1;",
                vec![],
            )
            .await,
    );
    page("sync", browser.click_css("#backup-sync button", PAGE).await);
    // What enc2 lacks: e3's new chunks, and any chunk e3 shares only with
    // the first enc backup (never synced); never all of e3's chunks.
    let shown = page(
        "the sync's result",
        browser
            .wait_text("#sync-result", PAGE, |t| {
                t.starts_with("1 backup(s) copied, ")
            })
            .await,
    );
    let counts: Vec<u64> = shown
        .split(|ch: char| !ch.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    let d3 = &e3.disks[0];
    assert!(
        matches!(counts[..], [1, sent, present] if sent >= d3.chunks_new && present > 0 && sent + present <= d3.chunks - d3.chunks_zero),
        "{shown}: {d3:?}"
    );
    let synced = c.list_backups(Some("enc2"), None).await.expect("enc2");
    assert_eq!(synced.last().map(|b| b.id.as_str()), Some(e3.id.as_str()));
    // The same backup restored instantly from the form (the box ticked):
    // the task ends with the new VM running on its copied disk.
    page(
        "choosing the backup again",
        browser
            .execute(
                "document.querySelector('#restore-backup').value = arguments[0]; return 1;",
                vec![serde_json::json!(newest)],
            )
            .await,
    );
    let input = page(
        "the restore name field",
        browser.find("#restore-name").await,
    );
    page(
        "typing the name",
        browser.send_keys(&input, "webinstant").await,
    );
    page(
        "ticking instant",
        browser.click_css("#restore-instant", PAGE).await,
    );
    page(
        "restore instantly",
        browser.click_css("#backup-restore button", PAGE).await,
    );
    let t = wait_until_async(
        TASK_TIMEOUT,
        "the instant restore of webinstant",
        || async {
            let tasks = c.list_tasks().await.ok()?;
            tasks.into_iter().find(|t| {
                t.kind == "backup.restore" && t.target == "webinstant" && t.state.is_final()
            })
        },
    )
    .await;
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}");
    assert_eq!(
        c.get_vm("webinstant").await.expect("webinstant").state,
        VmPowerState::Running
    );
    action(c, "webinstant", VmAction::Stop).await;
}
