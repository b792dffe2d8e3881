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
use vdc_types::{Accelerator, ErrorCode, Task, TaskState, VmConfig, VmPowerState};

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
