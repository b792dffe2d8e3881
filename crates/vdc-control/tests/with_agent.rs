//! The control plane driving a real agent (in-process, on a temporary
//! datastore, real `qemu-img`): a VM create makes the VM's directory and
//! disk, a delete removes them, and a failed create must not touch files it
//! did not make.
//!
//! The agent's reports are fetched from its own `GET /agent/v1/host` and
//! handed to [`Cluster::ingest_report`], which is what the REST route of an
//! agent's push does.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, memory_store, TOKEN};
use vdc_agent::{AgentConfig, DatastoreConfig};
use vdc_control::{Cluster, VmRecord};
use vdc_store::{Store, StoreExt};
use vdc_types::agent::HostReport;
use vdc_types::api::CreateVmRequest;
use vdc_types::job::{Job, JobKind, JobOp, JobRequest, JobState};
use vdc_types::{Accelerator, ErrorCode, Step, Task, TaskState, VmConfig, VmPowerState};

const WAIT: Duration = Duration::from_secs(60);

/// A cluster with one real agent whose shared datastore is `datastore`.
async fn cluster_with_agent(
    state_dir: &Path,
    datastore: &Path,
) -> (Arc<Cluster>, Arc<dyn Store>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    let config = AgentConfig {
        name: "host-1".into(),
        address: "127.0.0.1".into(),
        migration_address: "127.0.0.1".into(),
        listen: addr,
        // Reports are pulled by the test; pushes (and the join) go nowhere,
        // so the agent is given the server credential up front.
        server_url: "http://127.0.0.1:9".into(),
        credential: vdc_types::auth::agent_credential("host-1", "test"),
        server_credential: Some(TOKEN.into()),
        state_dir: state_dir.into(),
        datastores: vec![DatastoreConfig {
            name: "shared".into(),
            path: datastore.into(),
            shared: true,
        }],
        accel: Some(Accelerator::Tcg),
        bridge_for_network: Default::default(),
        import_dirs: vec![],
        isolation: None,
        vm_monitoring: None,
        supervision: Default::default(),
    };
    tokio::spawn(async move {
        if let Err(e) = vdc_agent::run_with_listener(config, listener).await {
            eprintln!("agent failed: {e}");
        }
    });
    let store = memory_store().await;
    let cluster = Cluster::open(store.clone(), TOKEN.into())
        .await
        .expect("open");
    let url = format!("http://{addr}/agent/v1/host");
    let http = reqwest::Client::new();
    let fetch = {
        let (http, url) = (http.clone(), url.clone());
        move || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let r = http
                    .get(&url)
                    .bearer_auth(TOKEN)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                r.json::<HostReport>().await.map_err(|e| e.to_string())
            }
        }
    };
    let first = eventually("the agent to answer", WAIT, fetch.clone()).await;
    cluster.ingest_report(first).await.expect("ingest");
    let reporter = {
        let cluster = cluster.clone();
        tokio::spawn(async move {
            loop {
                if let Ok(r) = fetch().await {
                    let _ = cluster.ingest_report(r).await;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    (cluster, store, reporter)
}

async fn wait_task(cluster: &Cluster, t: &Task) -> Task {
    eventually("the task to end", WAIT, || async {
        let t = cluster.tasks.get(&t.id).await.map_err(|e| e.to_string())?;
        t.state
            .is_final()
            .then_some(t.clone())
            .ok_or(format!("{t:?}"))
    })
    .await
}

fn small_vm(name: &str) -> CreateVmRequest {
    CreateVmRequest {
        name: name.into(),
        disk_gib: Some(1),
        ..Default::default()
    }
}

#[tokio::test]
async fn create_makes_the_vm_directory_and_delete_removes_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (state, ds) = (tmp.path().join("state"), tmp.path().join("shared"));
    std::fs::create_dir_all(&ds).expect("mkdir");
    let (cluster, store, reporter) = cluster_with_agent(&state, &ds).await;

    let t = cluster.create_vm(small_vm("web")).await.expect("create");
    let done = wait_task(&cluster, &t).await;
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}");

    let rec: VmRecord = store
        .get_json("/vms/web")
        .await
        .expect("read")
        .expect("record kept");
    assert_eq!(rec.state, VmPowerState::Stopped);
    let on_disk: VmConfig =
        serde_json::from_slice(&std::fs::read(ds.join("web/vm.json")).expect("vm.json written"))
            .expect("vm.json parses");
    assert_eq!(
        on_disk, rec.config,
        "the datastore holds the same configuration"
    );
    assert!(ds.join("web/disk0.qcow2").is_file(), "boot disk made");
    let h = cluster.events.history(0, usize::MAX).await;
    assert!(h
        .iter()
        .any(|e| e.topic == "vm.created" && e.object == "web"));

    // The task journaled each step it made, with what undoing it needs.
    let journal = done.journal.expect("a create keeps a journal");
    let steps: Vec<&Step> = journal.steps().collect();
    assert!(
        matches!(steps.first(), Some(Step::Placed { host }) if host == "host-1"),
        "{steps:?}"
    );
    let op = match steps.get(1) {
        Some(Step::JobSubmitted {
            host,
            operation_id,
            job: JobKind::Provision,
        }) if host == "host-1" => operation_id.clone(),
        s => panic!("expected the provision job, got {s:?}"),
    };
    assert!(
        op.starts_with(&done.id),
        "operation id {op} of task {}",
        done.id
    );
    assert!(steps.contains(&&Step::JobEnded {
        operation_id: op,
        state: JobState::Succeeded
    }));
    assert!(steps.contains(&&Step::Provisioned {
        host: "host-1".into()
    }));

    let t = cluster.delete_vm("web").await.expect("delete");
    let done = wait_task(&cluster, &t).await;
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}");
    assert!(!ds.join("web").exists(), "VM directory left behind");
    assert!(store.get("/vms/web").await.expect("read").is_none());
    reporter.abort();
}

/// A server whose store was lost (or a second cluster on the same shared
/// datastore) creates a VM whose directory already exists and belongs to
/// another VM. The agent refuses the provisioning (`already_exists`); the
/// create's rollback must then leave that directory alone.
#[tokio::test]
async fn a_refused_create_does_not_delete_the_files_of_the_vm_already_there() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (state, ds) = (tmp.path().join("state"), tmp.path().join("shared"));
    std::fs::create_dir_all(&ds).expect("mkdir");
    let (cluster, store, reporter) = cluster_with_agent(&state, &ds).await;

    let t = cluster.create_vm(small_vm("web")).await.expect("create");
    assert_eq!(wait_task(&cluster, &t).await.state, TaskState::Succeeded);
    let first_id = store
        .get_json::<VmRecord>("/vms/web")
        .await
        .expect("read")
        .expect("record")
        .config
        .id;
    // The server forgets the VM; its files stay on the datastore.
    store.delete("/vms/web").await.expect("forget");

    let t = cluster
        .create_vm(small_vm("web"))
        .await
        .expect("create again");
    let done = wait_task(&cluster, &t).await;
    assert_eq!(done.state, TaskState::Failed, "{done:?}");
    assert_eq!(done.error.expect("error").code, ErrorCode::AlreadyExists);
    assert!(
        ds.join("web/disk0.qcow2").is_file(),
        "the disk of the VM already on the datastore was deleted"
    );
    let kept: VmConfig = serde_json::from_slice(
        &std::fs::read(ds.join("web/vm.json")).expect("vm.json of the first VM deleted"),
    )
    .expect("vm.json parses");
    assert_eq!(kept.id, first_id);
    reporter.abort();
}

/// A job submitted twice under one operation id (a retry after a lost
/// answer, or by a restarted server) is one job: the second submission
/// attaches to it, even after it ended; the id cannot be reused for
/// another operation.
#[tokio::test]
async fn the_same_operation_id_twice_is_one_job() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (state, ds) = (tmp.path().join("state"), tmp.path().join("shared"));
    std::fs::create_dir_all(&ds).expect("mkdir");
    let (cluster, _store, reporter) = cluster_with_agent(&state, &ds).await;
    let host = cluster
        .list_hosts()
        .await
        .expect("hosts")
        .into_iter()
        .next()
        .expect("host-1");
    let config = VmConfig {
        version: vdc_types::vm::VM_CONFIG_VERSION,
        id: "0b9f6c3e-job-test".into(),
        name: "jobvm".into(),
        cpus: 1,
        memory_mib: 64,
        datastore: "shared".into(),
        dir: "jobvm".into(),
        disks: vec![vdc_types::DiskSpec {
            name: "disk0".into(),
            datastore: "shared".into(),
            path: "jobvm/disk0.qcow2".into(),
            size_bytes: 1 << 30,
        }],
        nics: vec![],
        hostname: "jobvm".into(),
        template: None,
        linked_clone: false,
        created_ms: 0,
        machine_type: vdc_types::vm::DEFAULT_MACHINE_TYPE.into(),
        cpu_model: vdc_types::vm::DEFAULT_CPU_MODEL.into(),
        ha: Default::default(),
        guest_agent: false,
        hotplug_ports: 0,
    };
    let req = JobRequest {
        operation_id: "task-1.0".into(),
        op: JobOp::Provision {
            request: vdc_types::agent::ProvisionVmRequest {
                config: config.clone(),
                boot_source: vdc_types::agent::DiskSource::Blank,
                data_sources: Vec::new(),
                data_images: Vec::new(),
            },
        },
    };
    let http = reqwest::Client::new();
    let submit = |req: JobRequest| {
        let http = http.clone();
        let url = format!("{}/agent/v1/jobs", host.agent_url);
        async move {
            let r = http
                .post(url)
                .bearer_auth(TOKEN)
                .json(&req)
                .send()
                .await
                .expect("agent answers");
            let status = r.status().as_u16();
            (status, r.json::<serde_json::Value>().await.expect("json"))
        }
    };
    let (s1, first) = submit(req.clone()).await;
    let (s2, second) = submit(req.clone()).await;
    assert_eq!(s1, 201, "{first}");
    assert_eq!(s2, 200, "the retry made a new job: {second}");
    let first: Job = serde_json::from_value(first).expect("job");
    let second: Job = serde_json::from_value(second).expect("job");
    assert_eq!(
        (first.id.as_str(), first.kind),
        ("task-1.0", JobKind::Provision)
    );
    assert_eq!(second.started_ms, first.started_ms, "one job, not two");

    let ended = eventually("the job to end", WAIT, || async {
        let r = http
            .get(format!(
                "{}/agent/v1/jobs/task-1.0?wait_s=2",
                host.agent_url
            ))
            .bearer_auth(TOKEN)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let j: Job = r.json().await.map_err(|e| e.to_string())?;
        j.state
            .is_final()
            .then_some(j.clone())
            .ok_or(format!("{j:?}"))
    })
    .await;
    assert_eq!(ended.state, JobState::Succeeded, "{ended:?}");
    assert!(ds.join("jobvm/disk0.qcow2").is_file());
    let made = std::fs::metadata(ds.join("jobvm/vm.json"))
        .and_then(|m| m.modified())
        .expect("vm.json");

    // After its end, the same submission still attaches: nothing is redone.
    let (s3, third) = submit(req.clone()).await;
    assert_eq!(s3, 200, "{third}");
    let third: Job = serde_json::from_value(third).expect("job");
    assert_eq!(third.state, JobState::Succeeded);
    assert_eq!(third.started_ms, first.started_ms);
    let again = std::fs::metadata(ds.join("jobvm/vm.json"))
        .and_then(|m| m.modified())
        .expect("vm.json");
    assert_eq!(again, made, "the provision ran twice");

    // The id is taken: another operation under it is refused.
    let other = JobRequest {
        operation_id: "task-1.0".into(),
        op: JobOp::Suspend {
            vm_id: config.id.clone(),
        },
    };
    let (s4, refused) = submit(other).await;
    assert_eq!(s4, 409, "{refused}");
    assert_eq!(refused["code"], "already_exists", "{refused}");
    // A malformed operation id is a clear 400.
    let bad = JobRequest {
        operation_id: "no/slashes".into(),
        ..req
    };
    let (s5, body) = submit(bad).await;
    assert_eq!(s5, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or("")
            .contains("operation id"),
        "{body}"
    );
    reporter.abort();
}

/// A server died while a create ran, after a cancel was asked: the next
/// server (same store) rolls everything back — the files on the host the
/// provision went to, every address held in the VM's name (even one never
/// journaled), the record — and ends the task cancelled.
#[tokio::test]
async fn a_create_cancelled_before_a_restart_is_rolled_back_by_the_next_server() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (state, ds) = (tmp.path().join("state"), tmp.path().join("shared"));
    std::fs::create_dir_all(&ds).expect("mkdir");
    let (cluster, store, reporter) = cluster_with_agent(&state, &ds).await;
    let t = cluster.create_vm(small_vm("half")).await.expect("create");
    let done = wait_task(&cluster, &t).await;
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}");
    assert!(ds.join("half/disk0.qcow2").is_file());

    // As the dead server left it: running, cancel asked, the provision's
    // end not journaled, and an address reserved just before the crash.
    let mut left = done.clone();
    left.state = TaskState::Running;
    left.finished_ms = None;
    left.cancel_requested = true;
    if let Some(j) = left.journal.as_mut() {
        j.steps
            .retain(|s| !matches!(s.step, Step::JobEnded { .. } | Step::Provisioned { .. }));
    }
    store
        .put_json(&format!("/tasks/{}", t.id), &left)
        .await
        .expect("put task");
    // The VM is still claimed by the create, as the dead server left it.
    let task_id = t.id.clone();
    store
        .update_json("/vms/half", |mut r: VmRecord| {
            r.operation = Some(vdc_types::InFlight {
                operation: vdc_types::VmOperation::Creating,
                task: Some(task_id.clone()),
                since_ms: vdc_types::now_ms(),
            });
            Ok::<_, vdc_store::StoreError>(r)
        })
        .await
        .expect("claim");
    store
        .put_json("/ipam/lab/10.0.0.9", &"half")
        .await
        .expect("put address");
    reporter.abort();

    let next = Cluster::open(store.clone(), TOKEN.into())
        .await
        .expect("reopen");
    let host = cluster.list_hosts().await.expect("hosts").remove(0);
    let report: HostReport = reqwest::Client::new()
        .get(format!("{}/agent/v1/host", host.agent_url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("agent answers")
        .json()
        .await
        .expect("report");
    next.ingest_report(report).await.expect("ingest");

    let ended = wait_task(&next, &t).await;
    assert_eq!(ended.state, TaskState::Cancelled, "{ended:?}");
    let steps: Vec<Step> = ended.journal.expect("journal").steps().cloned().collect();
    assert!(
        steps.iter().any(|s| matches!(s, Step::Resumed { .. })),
        "{steps:?}"
    );
    assert!(
        steps.iter().any(|s| matches!(s, Step::RollingBack { .. })),
        "{steps:?}"
    );
    assert!(!ds.join("half").exists(), "the VM's files were left behind");
    assert!(store.get("/vms/half").await.expect("read").is_none());
    assert!(
        store
            .get("/ipam/lab/10.0.0.9")
            .await
            .expect("read")
            .is_none(),
        "the address stayed reserved"
    );
    let events = next.events.history(0, usize::MAX).await;
    assert!(events
        .iter()
        .any(|e| e.topic == "task.resumed" && e.object == "half"));
}

/// Kills the QEMU processes of an agent's state directory if a test fails
/// half-way.
struct QemuGuard(std::path::PathBuf);

impl Drop for QemuGuard {
    fn drop(&mut self) {
        let Ok(dirs) = std::fs::read_dir(self.0.join("vms")) else {
            return;
        };
        for d in dirs.flatten() {
            let pid = std::fs::read_to_string(d.path().join("qemu.pid"))
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok());
            if let Some(pid) = pid {
                if let Err(e) = std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status()
                {
                    eprintln!("cannot kill QEMU {pid}: {e}");
                }
            }
        }
    }
}

/// Feeds the agent's reports to `cluster` until aborted.
fn pump_reports(cluster: Arc<Cluster>, agent_url: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        loop {
            let report = http
                .get(format!("{agent_url}/agent/v1/host"))
                .bearer_auth(TOKEN)
                .send()
                .await;
            if let Ok(r) = report {
                if let Ok(rep) = r.json::<HostReport>().await {
                    if let Err(e) = cluster.ingest_report(rep).await {
                        eprintln!("report refused: {e}");
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
}

/// A suspend left unfinished by a dead server, whose job the agent does
/// not know (it never arrived, or the agent restarted): the next server
/// reconciles it with what the host runs. The VM still runs → recorded
/// running and the task fails saying so; the VM is suspended → recorded
/// suspended and the task succeeds.
#[tokio::test]
async fn an_unfinished_suspend_is_reconciled_with_what_the_host_runs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (state, ds) = (tmp.path().join("state"), tmp.path().join("shared"));
    std::fs::create_dir_all(&ds).expect("mkdir");
    let _qemu = QemuGuard(state.clone());
    let (cluster, store, reporter) = cluster_with_agent(&state, &ds).await;
    let agent_url = cluster.list_hosts().await.expect("hosts")[0]
        .agent_url
        .clone();
    let t = cluster
        .create_vm(CreateVmRequest {
            memory_mib: Some(64),
            start: true,
            ..small_vm("sus")
        })
        .await
        .expect("create");
    let done = wait_task(&cluster, &t).await;
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}");
    reporter.abort();

    // What a server killed right after submitting a suspend leaves behind.
    let leave_suspend = |n: &str| {
        let store = store.clone();
        let id = format!("left-{n}");
        async move {
            let rec: VmRecord = store
                .get_json("/vms/sus")
                .await
                .expect("read")
                .expect("record");
            let mut journal = vdc_types::TaskJournal::new(vdc_types::TaskParams::VmPower {
                vm_id: rec.config.id.clone(),
                host: Some("host-1".into()),
                shutdown_timeout_s: None,
            });
            journal.steps.push(vdc_types::TaskStep {
                at_ms: vdc_types::now_ms(),
                step: Step::JobSubmitted {
                    host: "host-1".into(),
                    operation_id: format!("{id}.0"),
                    job: JobKind::Suspend,
                },
            });
            let task = Task {
                id: id.clone(),
                kind: "vm.suspend".into(),
                target_kind: "vm".into(),
                target: "sus".into(),
                state: TaskState::Running,
                progress: 10,
                stage: None,
                error: None,
                cancel_requested: false,
                created_ms: vdc_types::now_ms(),
                started_ms: Some(vdc_types::now_ms()),
                finished_ms: None,
                journal: Some(journal),
                migration: None,
            };
            store
                .put_json(&format!("/tasks/{id}"), &task)
                .await
                .expect("put task");
            store
                .update_json("/vms/sus", |mut r: VmRecord| {
                    r.state = VmPowerState::Suspending;
                    r.operation = Some(vdc_types::InFlight {
                        operation: vdc_types::VmOperation::Suspending,
                        task: Some(id.clone()),
                        since_ms: vdc_types::now_ms(),
                    });
                    Ok::<_, vdc_store::StoreError>(r)
                })
                .await
                .expect("record suspending");
            task
        }
    };

    // 1. The suspend never happened: the VM still runs.
    let left = leave_suspend("1").await;
    let next = Cluster::open(store.clone(), TOKEN.into())
        .await
        .expect("reopen");
    let pump = pump_reports(next.clone(), agent_url.clone());
    let ended = wait_task(&next, &left).await;
    assert_eq!(ended.state, TaskState::Failed, "{ended:?}");
    let why = ended.error.expect("error").message;
    assert!(why.contains("still runs"), "{why}");
    let vm = next.get_vm("sus").await.expect("vm");
    assert_eq!(vm.state, VmPowerState::Running, "{vm:?}");

    // 2. The suspend happened, the server never saw it end.
    let t = next
        .vm_action("sus", vdc_types::VmAction::Suspend, None)
        .await
        .expect("suspend");
    assert_eq!(wait_task(&next, &t).await.state, TaskState::Succeeded);
    pump.abort();
    let left = leave_suspend("2").await;
    let third = Cluster::open(store.clone(), TOKEN.into())
        .await
        .expect("reopen");
    let pump = pump_reports(third.clone(), agent_url.clone());
    let ended = wait_task(&third, &left).await;
    assert_eq!(ended.state, TaskState::Succeeded, "{ended:?}");
    assert!(ended
        .journal
        .expect("journal")
        .steps()
        .any(|s| matches!(s, Step::Resumed { .. })));
    let vm = third.get_vm("sus").await.expect("vm");
    assert_eq!(vm.state, VmPowerState::Suspended, "{vm:?}");
    assert!(ds.join("sus/suspend.state").is_file());

    let t = third.delete_vm("sus").await.expect("delete");
    assert_eq!(wait_task(&third, &t).await.state, TaskState::Succeeded);
    pump.abort();
}

/// A create killed between reserving its address and journaling it left
/// the reservation in the VM's name: the resumed (or repeated) create takes
/// that address again instead of holding two.
#[tokio::test]
async fn a_create_finds_the_address_it_reserved_before_a_crash() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (state, ds) = (tmp.path().join("state"), tmp.path().join("shared"));
    std::fs::create_dir_all(&ds).expect("mkdir");
    let (cluster, store, reporter) = cluster_with_agent(&state, &ds).await;
    cluster
        .create_network(vdc_types::Network {
            name: "lan".into(),
            bridge: "vdcbr0".into(),
            subnet: "10.77.0.0/24".into(),
            gateway: None,
            pool_start: "10.77.0.10".into(),
            pool_end: "10.77.0.20".into(),
            ..Default::default()
        })
        .await
        .expect("network");
    store
        .put_json("/ipam/lan/10.77.0.13", &"web")
        .await
        .expect("reserve");
    let t = cluster.create_vm(small_vm("web")).await.expect("create");
    assert_eq!(wait_task(&cluster, &t).await.state, TaskState::Succeeded);
    let rec: VmRecord = store
        .get_json("/vms/web")
        .await
        .expect("read")
        .expect("record");
    assert_eq!(rec.config.nics[0].ip.as_deref(), Some("10.77.0.13/24"));
    let held: Vec<(String, String)> = store.list_json("/ipam/").await.expect("list");
    assert_eq!(
        held,
        [("/ipam/lan/10.77.0.13".to_string(), "web".to_string())],
        "a second address was reserved"
    );
    reporter.abort();
}
