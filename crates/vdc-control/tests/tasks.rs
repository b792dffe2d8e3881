//! The task engine as its callers see it: the recorded life cycle of a task
//! (queued → running → succeeded/failed/cancelled), progress, cancellation,
//! and what a restarted server does with tasks the previous one left running.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{eventually, memory_store};
use tokio::sync::oneshot;
use vdc_control::tasks::{cancelled, TaskEngine};
use vdc_control::EventBus;
use vdc_store::{RedbStore, Store, StoreExt, WatchEvent};
use vdc_types::{now_ms, ApiError, ErrorCode, Task, TaskState};

const WAIT: Duration = Duration::from_secs(30);

async fn engine(store: Arc<dyn Store>) -> (Arc<EventBus>, Arc<TaskEngine>) {
    let events = Arc::new(EventBus::open(store.clone()).await.expect("event bus"));
    let tasks = Arc::new(
        TaskEngine::open(store, events.clone())
            .await
            .expect("task engine"),
    );
    (events, tasks)
}

async fn wait_final(tasks: &TaskEngine, id: &str) -> Task {
    eventually("the task to end", WAIT, || async {
        let t = tasks.get(id).await.map_err(|e| e.to_string())?;
        if t.state.is_final() {
            Ok(t)
        } else {
            Err(format!("{t:?}"))
        }
    })
    .await
}

#[tokio::test]
async fn a_task_goes_queued_running_succeeded_with_its_progress_recorded() {
    let store = memory_store().await;
    let (events, tasks) = engine(store.clone()).await;
    let mut watch = store.watch("/tasks/").await.expect("watch");
    let mut sub = events.subscribe();
    let (go, wait_go) = oneshot::channel::<()>();

    let t = tasks
        .spawn("test.work", "vm", "web-1", move |ctx| async move {
            ctx.progress(40, "copying").await;
            // Progress never goes backwards, even if a body says so.
            ctx.progress(30, "checking").await;
            let _ = wait_go.await;
            Ok(())
        })
        .await
        .expect("spawn");
    assert_eq!(t.state, TaskState::Queued);
    assert_eq!(
        (t.kind.as_str(), t.target_kind.as_str(), t.target.as_str()),
        ("test.work", "vm", "web-1")
    );
    assert_eq!(t.progress, 0);
    assert!(t.started_ms.is_none() && t.finished_ms.is_none());

    let running = eventually("progress 40 'checking' while running", WAIT, || async {
        let t = tasks.get(&t.id).await.map_err(|e| e.to_string())?;
        if t.state == TaskState::Running && t.stage.as_deref() == Some("checking") {
            Ok(t)
        } else {
            Err(format!("{t:?}"))
        }
    })
    .await;
    assert_eq!(running.progress, 40, "progress went backwards");
    assert!(running.started_ms.is_some());
    assert!(running.finished_ms.is_none());
    assert!(tasks
        .list()
        .await
        .expect("list")
        .iter()
        .any(|x| x.id == t.id));

    go.send(()).expect("body waits");
    let done = wait_final(&tasks, &t.id).await;
    assert_eq!(done.state, TaskState::Succeeded);
    assert_eq!(done.progress, 100);
    assert_eq!(done.stage, None);
    assert_eq!(done.error, None);
    assert!(done.finished_ms >= done.started_ms);

    // Every recorded state of the task, in order, as the store saw them.
    let mut states = Vec::new();
    while states.last() != Some(&TaskState::Succeeded) {
        let ev = tokio::time::timeout(WAIT, watch.recv())
            .await
            .expect("store change in time")
            .expect("watch open")
            .expect("watch ok");
        if let WatchEvent::Put(kv) = ev {
            let rec: Task = serde_json::from_slice(&kv.value).expect("task record");
            if states.last() != Some(&rec.state) {
                states.push(rec.state);
            }
        }
    }
    assert_eq!(
        states,
        [TaskState::Queued, TaskState::Running, TaskState::Succeeded]
    );

    let ev = tokio::time::timeout(WAIT, async {
        loop {
            let e = sub.recv().await.expect("bus open");
            if e.topic == "task.finished" {
                return e;
            }
        }
    })
    .await
    .expect("task.finished published");
    assert_eq!(ev.object, "web-1");
    assert_eq!(ev.data["id"], t.id.as_str());
    assert_eq!(ev.data["state"], "succeeded");
}

#[tokio::test]
async fn a_failing_body_fails_the_task_with_its_error() {
    let (_events, tasks) = engine(memory_store().await).await;
    let t = tasks
        .spawn("test.fail", "vm", "db-1", |ctx| async move {
            ctx.progress(20, "trying").await;
            Err(ApiError::new(ErrorCode::HostError, "disk full on host-2"))
        })
        .await
        .expect("spawn");
    let done = wait_final(&tasks, &t.id).await;
    assert_eq!(done.state, TaskState::Failed);
    let err = done.error.expect("error recorded");
    assert_eq!(err.code, ErrorCode::HostError);
    assert_eq!(err.message, "disk full on host-2");
    assert_eq!(
        done.progress, 20,
        "a failed task keeps the progress it reached"
    );
    assert!(done.finished_ms.is_some());
}

#[tokio::test]
async fn a_panicking_body_fails_the_task_instead_of_leaving_it_running() {
    let (_events, tasks) = engine(memory_store().await).await;
    let t = tasks
        .spawn("test.panic", "vm", "x", |_ctx| async move {
            if now_ms() > 0 {
                panic!("body bug");
            }
            Ok(())
        })
        .await
        .expect("spawn");
    let done = wait_final(&tasks, &t.id).await;
    assert_eq!(done.state, TaskState::Failed);
    assert_eq!(done.error.expect("error").code, ErrorCode::Internal);
}

#[tokio::test]
async fn cancel_is_seen_by_the_body_and_the_task_ends_cancelled() {
    let (_events, tasks) = engine(memory_store().await).await;
    let (undone_tx, undone_rx) = oneshot::channel::<()>();
    let t = tasks
        .spawn("test.cancel", "vm", "web-2", move |ctx| async move {
            ctx.progress(10, "waiting for a cancel").await;
            let deadline = tokio::time::Instant::now() + WAIT;
            while !ctx.is_cancelled() {
                if tokio::time::Instant::now() > deadline {
                    return Err(ApiError::internal("no cancel arrived"));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // The body undoes its partial work, then reports the cancel.
            let _ = undone_tx.send(());
            ctx.check_cancel()?;
            Ok(())
        })
        .await
        .expect("spawn");
    eventually("the body to run", WAIT, || async {
        let t = tasks.get(&t.id).await.map_err(|e| e.to_string())?;
        (t.stage.is_some()).then_some(()).ok_or(format!("{t:?}"))
    })
    .await;

    let asked = tasks.cancel(&t.id).await.expect("cancel");
    assert!(asked.cancel_requested);
    assert!(!asked.state.is_final() || asked.state == TaskState::Cancelled);

    tokio::time::timeout(WAIT, undone_rx)
        .await
        .expect("body saw the cancel in time")
        .expect("body saw the cancel");
    let done = wait_final(&tasks, &t.id).await;
    assert_eq!(done.state, TaskState::Cancelled);
    assert!(done.cancel_requested);
    assert_eq!(done.error.expect("error").code, ErrorCode::Cancelled);
    assert_eq!(cancelled().code, ErrorCode::Cancelled);
}

#[tokio::test]
async fn cancelling_a_finished_or_unknown_task_is_refused() {
    let (_events, tasks) = engine(memory_store().await).await;
    let t = tasks
        .spawn("test.quick", "vm", "a", |_ctx| async move { Ok(()) })
        .await
        .expect("spawn");
    let done = wait_final(&tasks, &t.id).await;
    assert_eq!(done.state, TaskState::Succeeded);

    let err = tasks
        .cancel(&t.id)
        .await
        .expect_err("cancel of an ended task");
    assert_eq!(err.code, ErrorCode::InvalidState);
    assert!(err.message.contains("succeeded"), "{}", err.message);
    let after = tasks.get(&t.id).await.expect("get");
    assert_eq!(after.state, TaskState::Succeeded);
    assert!(!after.cancel_requested);

    let err = tasks
        .cancel("no-such-task")
        .await
        .expect_err("unknown task");
    assert_eq!(err.code, ErrorCode::NotFound);
    assert_eq!(
        tasks.get("no-such-task").await.expect_err("get").code,
        ErrorCode::NotFound
    );
}

#[tokio::test]
async fn tasks_are_listed_newest_first() {
    let (_events, tasks) = engine(memory_store().await).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let t = tasks
            .spawn("test.list", "vm", &format!("vm-{i}"), |_ctx| async move {
                Ok(())
            })
            .await
            .expect("spawn");
        wait_final(&tasks, &t.id).await;
        ids.push(t.id);
        // created_ms has millisecond resolution: make the order unambiguous.
        let before = now_ms();
        eventually("the clock to move", WAIT, || async {
            (now_ms() > before)
                .then_some(())
                .ok_or_else(|| "same ms".to_string())
        })
        .await;
    }
    let listed: Vec<String> = tasks
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|t| t.id)
        .collect();
    ids.reverse();
    assert_eq!(listed, ids);
}

/// A server that stops (here: its runtime is dropped) while a task runs
/// leaves the task "running" in the store file. The next task engine keeps
/// it aside, untouched; the next cluster decides its end: a task that kept
/// no journal (nothing to resume from) is failed with an error that says
/// why.
#[test]
fn tasks_left_running_without_a_journal_are_failed_by_the_next_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");

    let first = tokio::runtime::Runtime::new().expect("runtime");
    let (running_id, queued_id) = first.block_on(async {
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(&path).await.expect("open"));
        let (_events, tasks) = engine(store.clone()).await;
        let t = tasks
            .spawn("test.long", "vm", "web-3", |ctx| async move {
                ctx.progress(35, "copying").await;
                std::future::pending::<()>().await;
                Ok(())
            })
            .await
            .expect("spawn");
        eventually("the task to run", WAIT, || async {
            let t = tasks.get(&t.id).await.map_err(|e| e.to_string())?;
            (t.state == TaskState::Running && t.progress == 35)
                .then_some(())
                .ok_or(format!("{t:?}"))
        })
        .await;
        // A task that was accepted but had not started yet.
        let queued = Task {
            id: "queued-task".into(),
            kind: "test.queued".into(),
            target_kind: "vm".into(),
            target: "web-4".into(),
            state: TaskState::Queued,
            progress: 0,
            stage: None,
            error: None,
            cancel_requested: false,
            created_ms: now_ms(),
            started_ms: None,
            finished_ms: None,
            journal: None,
            migration: None,
        };
        store
            .put_json("/tasks/queued-task", &queued)
            .await
            .expect("put");
        (t.id, queued.id)
    });
    drop(first);

    let second = tokio::runtime::Runtime::new().expect("runtime");
    second.block_on(async {
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(&path).await.expect("reopen"));
        let (_events, engine_only) = engine(store.clone()).await;
        let mut kept: Vec<String> = engine_only
            .take_unfinished()
            .await
            .into_iter()
            .map(|t| t.id)
            .collect();
        kept.sort();
        let mut want = vec![running_id.clone(), queued_id.clone()];
        want.sort();
        assert_eq!(kept, want, "the engine sets unfinished tasks aside");
        assert!(engine_only.take_unfinished().await.is_empty(), "only once");

        let cluster = vdc_control::Cluster::open(store, common::TOKEN.into())
            .await
            .expect("open");
        let tasks = &cluster.tasks;
        for id in [&running_id, &queued_id] {
            let t = wait_final(tasks, id).await;
            assert_eq!(t.state, TaskState::Failed, "{t:?}");
            assert!(t.finished_ms.is_some());
            let err = t.error.expect("error recorded");
            assert_eq!(err.code, ErrorCode::Internal);
            assert!(err.message.contains("server stopped"), "{}", err.message);
        }
        let t = tasks.get(&running_id).await.expect("task kept");
        assert_eq!(t.progress, 35, "the progress reached is kept");
        assert_eq!(
            tasks.cancel(&running_id).await.expect_err("ended").code,
            ErrorCode::InvalidState
        );
    });
}
