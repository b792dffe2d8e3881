//! The VM lifecycle through the control plane: one operation at a time,
//! claimed by compare-and-swap, shown in the VM while it runs, released when
//! its task ends (or when a new server finds it left over), and host
//! reports that do not flip a VM while an operation works on it.
//!
//! The host's agent is a TCP port that accepts connections and never
//! answers, so an operation stays in flight until the port is closed.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{eventually, get_vm, memory_store, put_vm, report, runtime, TOKEN};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use vdc_control::Cluster;
use vdc_store::StoreExt;
use vdc_types::{ErrorCode, GuestInfo, InFlight, VmAction, VmOperation, VmPowerState};

const WAIT: Duration = Duration::from_secs(30);

/// An agent port that accepts connections and never answers.
struct HungAgent {
    url: String,
    accept: tokio::task::JoinHandle<()>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl HungAgent {
    async fn start() -> HungAgent {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", l.local_addr().expect("addr"));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let held = conns.clone();
        let accept = tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                held.lock().await.push(s);
            }
        });
        HungAgent { url, accept, conns }
    }

    /// The agent dies: its port closes and held connections drop.
    async fn kill(self) {
        self.accept.abort();
        self.conns.lock().await.clear();
    }
}

#[tokio::test]
async fn one_operation_at_a_time_shown_in_the_vm_and_released_when_its_task_ends() {
    let store = memory_store().await;
    put_vm(&store, "web", VmPowerState::Running, Some("host-1")).await;
    let cluster = Cluster::open(store.clone(), TOKEN.into())
        .await
        .expect("open");
    let agent = HungAgent::start().await;
    let running = || {
        let mut r = report(
            "host-1",
            vec![runtime("web", VmPowerState::Running, GuestInfo::default())],
        );
        r.agent_url = agent.url.clone();
        r
    };
    cluster.ingest_report(running()).await.expect("ingest");
    let before = cluster.get_vm("web").await.expect("web");
    assert!(before.operation.is_none());
    assert!(before.actions.contains(&VmAction::Suspend), "{before:?}");

    // Two requests at once: the record's compare-and-swap lets one in.
    let (a, b) = tokio::join!(
        cluster.vm_action("web", VmAction::Suspend, None),
        cluster.vm_action("web", VmAction::Pause, None)
    );
    let (task, refused) = match (a, b) {
        (Ok(t), Err(e)) | (Err(e), Ok(t)) => (t, e),
        other => panic!("exactly one operation must be accepted: {other:?}"),
    };
    assert_eq!(refused.code, ErrorCode::InvalidState);
    assert!(refused.message.contains("busy"), "{}", refused.message);

    let vm = eventually("the operation to name its task", WAIT, || async {
        let vm = cluster.get_vm("web").await.map_err(|e| e.to_string())?;
        match &vm.operation {
            Some(InFlight { task: Some(t), .. }) if *t == task.id => Ok(vm),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let op = vm.operation.clone().expect("in flight").operation;
    assert_eq!(op.task_kind(), task.kind);
    let started: Vec<_> = cluster
        .events
        .history(0, usize::MAX)
        .await
        .into_iter()
        .filter(|e| e.topic == "vm.operation_started" && e.object == "web")
        .collect();
    assert_eq!(started.len(), 1, "{started:?}");
    assert_eq!(started[0].data["task"], task.id.as_str());
    assert!(
        vm.actions.is_empty(),
        "nothing is allowed beside it: {vm:?}"
    );
    let err = cluster.delete_vm("web").await.expect_err("busy");
    assert!(err.message.contains(&op.to_string()), "{}", err.message);
    assert!(
        err.message.contains(&task.id),
        "names its task: {}",
        err.message
    );

    // The owner keeps reporting the VM running: the operation's task, not
    // the report, decides the state while it is in flight.
    cluster.ingest_report(running()).await.expect("ingest");
    assert_eq!(cluster.get_vm("web").await.expect("web").state, vm.state);

    // The agent dies: the task fails and releases the operation; the VM is
    // what its host last reported.
    agent.kill().await;
    let vm = eventually("the operation to be released", WAIT, || async {
        let vm = cluster.get_vm("web").await.map_err(|e| e.to_string())?;
        match &vm.operation {
            None => Ok(vm),
            Some(o) => Err(format!("{o:?}")),
        }
    })
    .await;
    assert_eq!(vm.state, VmPowerState::Running);
    assert!(vm.actions.contains(&VmAction::Pause), "{vm:?}");
    let t = cluster.tasks.get(&task.id).await.expect("task");
    assert!(t.state.is_final() && t.error.is_some(), "{t:?}");
}

#[tokio::test]
async fn an_operation_left_by_a_stopped_server_is_released_when_the_next_opens() {
    let store = memory_store().await;
    for (name, task) in [("a", Some("task-of-a-dead-server")), ("b", None)] {
        put_vm(&store, name, VmPowerState::Starting, Some("host-1")).await;
        let mut rec = get_vm(&store, name).await.expect("record");
        rec.operation = Some(InFlight {
            operation: VmOperation::Starting,
            task: task.map(str::to_string),
            since_ms: 1,
        });
        store
            .put_json(&format!("/vms/{name}"), &rec)
            .await
            .expect("write");
    }
    let cluster = Cluster::open(store.clone(), TOKEN.into())
        .await
        .expect("open");
    for name in ["a", "b"] {
        let rec = get_vm(&store, name).await.expect("record");
        assert_eq!(rec.operation, None, "{name}");
    }
    // With the operation gone, the owner's report speaks again.
    cluster
        .ingest_report(report(
            "host-1",
            vec![runtime("a", VmPowerState::Running, GuestInfo::default())],
        ))
        .await
        .expect("ingest");
    assert_eq!(
        cluster.get_vm("a").await.expect("a").state,
        VmPowerState::Running
    );
    assert_eq!(
        cluster.get_vm("b").await.expect("b").state,
        VmPowerState::Stopped,
        "its owner does not list it"
    );
}

#[tokio::test]
async fn actions_not_built_yet_are_refused_clearly() {
    let store = memory_store().await;
    put_vm(&store, "web", VmPowerState::Running, Some("host-1")).await;
    let cluster = Cluster::open(store.clone(), TOKEN.into())
        .await
        .expect("open");
    let e = cluster
        .vm_action("web", VmAction::Snapshot, None)
        .await
        .expect_err("refused");
    assert_eq!(e.code, ErrorCode::InvalidInput);
    assert!(e.message.contains("not available yet"), "{}", e.message);
    // Backup and restore have their own routes; the power route says so.
    for a in [VmAction::Backup, VmAction::Restore] {
        let e = cluster
            .vm_action("web", a, None)
            .await
            .expect_err("refused");
        assert_eq!(e.code, ErrorCode::InvalidInput);
        assert!(e.message.contains("vdc backup"), "{}", e.message);
    }
    assert!(cluster
        .get_vm("web")
        .await
        .expect("web")
        .operation
        .is_none());
}

#[tokio::test]
async fn an_operation_whose_task_ended_without_releasing_it_is_released_by_the_monitor() {
    let store = memory_store().await;
    put_vm(&store, "web", VmPowerState::Running, Some("host-1")).await;
    let cluster = Cluster::open(store.clone(), TOKEN.into())
        .await
        .expect("open");
    // A task that ends without touching the VM's record, as one resumed by
    // a new server could.
    let t = cluster
        .tasks
        .spawn("vm.snapshot", "vm", "web", |_| async { Ok(()) })
        .await
        .expect("task");
    eventually("the task to end", WAIT, || async {
        let t = cluster.tasks.get(&t.id).await.map_err(|e| e.to_string())?;
        if t.state.is_final() {
            Ok(())
        } else {
            Err(format!("{:?}", t.state))
        }
    })
    .await;
    let mut rec = get_vm(&store, "web").await.expect("record");
    rec.operation = Some(InFlight {
        operation: VmOperation::Snapshotting,
        task: Some(t.id.clone()),
        since_ms: 1,
    });
    store.put_json("/vms/web", &rec).await.expect("write");
    assert!(cluster.get_vm("web").await.expect("web").actions.is_empty());

    let _monitor = cluster.spawn_monitor();
    eventually("the left-over operation to be released", WAIT, || async {
        let vm = cluster.get_vm("web").await.map_err(|e| e.to_string())?;
        match vm.operation {
            None => Ok(()),
            Some(o) => Err(format!("{o:?}")),
        }
    })
    .await;
    assert!(cluster
        .get_vm("web")
        .await
        .expect("web")
        .actions
        .contains(&VmAction::Pause));
}
