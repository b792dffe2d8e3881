//! Networks and address management through the control plane's public
//! operations, and the rollback of a VM create whose host fails.
//!
//! The host's agent here is a TCP port that accepts connections and never
//! answers (an agent hung in the middle of provisioning), later closed (the
//! agent died): that is enough to observe what the server records while a
//! create runs and what it undoes when the create fails.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{eventually, get_vm, memory_store, report, TOKEN};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use vdc_control::Cluster;
use vdc_store::{Store, StoreExt};
use vdc_types::api::CreateVmRequest;
use vdc_types::{ErrorCode, Network, Task, TaskState};

const WAIT: Duration = Duration::from_secs(30);

fn lan() -> Network {
    Network {
        name: "lan".into(),
        bridge: "vdcbr0".into(),
        subnet: "10.77.0.0/24".into(),
        gateway: Some("10.77.0.11".into()),
        pool_start: "10.77.0.10".into(),
        pool_end: "10.77.0.12".into(),
        ..Default::default()
    }
}

/// An agent port that accepts connections and never answers.
struct HungAgent {
    url: String,
    accept: tokio::task::JoinHandle<()>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl HungAgent {
    async fn start() -> HungAgent {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let keep = conns.clone();
        let accept = tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                keep.lock().await.push(s);
            }
        });
        HungAgent { url, accept, conns }
    }

    /// The agent dies: its port closes and open connections are reset.
    async fn kill(self) {
        self.accept.abort();
        let _ = self.accept.await;
        self.conns.lock().await.clear();
    }
}

async fn ipam(store: &Arc<dyn Store>) -> Vec<(String, String)> {
    store
        .list_json::<String>("/ipam/")
        .await
        .expect("list ipam")
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

async fn nic_ip(store: &Arc<dyn Store>, vm: &str) -> String {
    eventually(&format!("an address for {vm}"), WAIT, || async {
        get_vm(store, vm)
            .await
            .and_then(|r| r.config.nics.first().and_then(|n| n.ip.clone()))
            .ok_or_else(|| "no address yet".to_string())
    })
    .await
}

fn vm(name: &str) -> CreateVmRequest {
    CreateVmRequest {
        name: name.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn networks_are_checked_before_they_are_created() {
    let cluster = Cluster::open(memory_store().await, TOKEN.into())
        .await
        .expect("open");
    let bad: Vec<(Network, &str)> = vec![
        (
            Network {
                name: "a b".into(),
                ..lan()
            },
            "network name",
        ),
        (
            Network {
                bridge: "".into(),
                ..lan()
            },
            "bridge",
        ),
        (
            Network {
                bridge: "a-bridge-name-too-long".into(),
                ..lan()
            },
            "bridge",
        ),
        (
            Network {
                bridge: "br;rm".into(),
                ..lan()
            },
            "bridge",
        ),
        (
            Network {
                subnet: "10.77.0.0".into(),
                ..lan()
            },
            "CIDR",
        ),
        (
            Network {
                subnet: "10.77.0.1/24".into(),
                ..lan()
            },
            "host bits",
        ),
        (
            Network {
                subnet: "10.77.0.0/31".into(),
                ..lan()
            },
            "prefix length",
        ),
        (
            Network {
                pool_start: "10.78.0.10".into(),
                ..lan()
            },
            "pool start",
        ),
        (
            Network {
                pool_end: "10.77.0.255".into(),
                ..lan()
            },
            "pool end",
        ),
        (
            Network {
                pool_start: "x".into(),
                ..lan()
            },
            "not an IPv4 address",
        ),
        (
            Network {
                pool_start: "10.77.0.20".into(),
                pool_end: "10.77.0.10".into(),
                ..lan()
            },
            "comes after",
        ),
        (
            Network {
                gateway: Some("10.77.1.1".into()),
                ..lan()
            },
            "gateway",
        ),
    ];
    for (n, want) in bad {
        let err = cluster
            .create_network(n.clone())
            .await
            .expect_err("refused");
        assert_eq!(err.code, ErrorCode::InvalidInput, "{n:?}");
        assert!(err.message.contains(want), "{n:?}: {}", err.message);
    }
    assert!(cluster.list_networks().await.expect("list").is_empty());

    // A bridge given alone becomes a port group of that bridge's
    // `existing` switch.
    let lan_v2 = Network {
        version: vdc_types::switch::NETWORK_VERSION,
        switch: Some("vdcbr0".into()),
        ..lan()
    };
    assert_eq!(cluster.create_network(lan()).await.expect("create"), lan_v2);
    let err = cluster.create_network(lan()).await.expect_err("duplicate");
    assert_eq!(err.code, ErrorCode::AlreadyExists);
    assert_eq!(cluster.get_network("lan").await.expect("get"), lan_v2);
    assert_eq!(
        cluster.get_network("wan").await.expect_err("missing").code,
        ErrorCode::NotFound
    );
    cluster.delete_network("lan").await.expect("delete");
    assert!(cluster.list_networks().await.expect("list").is_empty());
}

#[tokio::test]
async fn addresses_are_handed_out_in_pool_order_and_released_when_a_create_fails() {
    let store = memory_store().await;
    let cluster = Cluster::open(store.clone(), TOKEN.into())
        .await
        .expect("open");
    cluster.create_network(lan()).await.expect("network");
    let agent = HungAgent::start().await;
    let mut r = report("host-1", vec![]);
    r.agent_url = agent.url.clone();
    cluster.ingest_report(r).await.expect("ingest");

    let ta = cluster.create_vm(vm("a")).await.expect("create a");
    assert_eq!(nic_ip(&store, "a").await, "10.77.0.10/24");
    let tb = cluster.create_vm(vm("b")).await.expect("create b");
    assert_eq!(
        nic_ip(&store, "b").await,
        "10.77.0.12/24",
        "the gateway is skipped"
    );
    let rec = get_vm(&store, "b").await.expect("record");
    let nic = &rec.config.nics[0];
    assert_eq!(nic.network, "lan");
    assert_eq!(nic.gateway.as_deref(), Some("10.77.0.11"));
    assert_eq!(nic.bridge.as_deref(), Some("vdcbr0"));
    assert!(
        nic.mac.starts_with("52:54:00:") && nic.mac.len() == 17,
        "{}",
        nic.mac
    );
    assert_eq!(
        ipam(&store).await,
        [
            ("/ipam/lan/10.77.0.10".to_string(), "a".to_string()),
            ("/ipam/lan/10.77.0.12".to_string(), "b".to_string()),
        ]
    );

    // The pool is exhausted: the third create fails and leaves nothing.
    let tc = cluster.create_vm(vm("c")).await.expect("create c accepted");
    let c = wait_task(&cluster, &tc).await;
    assert_eq!(c.state, TaskState::Failed);
    let err = c.error.expect("error");
    assert_eq!(err.code, ErrorCode::InsufficientCapacity);
    assert!(err.message.contains("no free address"), "{}", err.message);
    assert!(
        get_vm(&store, "c").await.is_none(),
        "record of a failed create kept"
    );

    // A network in use cannot be deleted.
    let err = cluster.delete_network("lan").await.expect_err("in use");
    assert_eq!(err.code, ErrorCode::InvalidState);

    // The agent dies in the middle of provisioning: both creates fail and
    // are rolled back.
    agent.kill().await;
    for t in [&ta, &tb] {
        let done = wait_task(&cluster, t).await;
        assert_eq!(done.state, TaskState::Failed, "{done:?}");
        assert_eq!(done.error.expect("error").code, ErrorCode::HostUnavailable);
    }
    assert!(get_vm(&store, "a").await.is_none());
    assert!(get_vm(&store, "b").await.is_none());
    assert!(cluster.list_vms().await.expect("list").is_empty());
    assert_eq!(
        ipam(&store).await,
        Vec::<(String, String)>::new(),
        "addresses leaked"
    );
    let h = cluster.events.history(0, usize::MAX).await;
    assert!(!h.iter().any(|e| e.topic == "vm.created"), "{h:?}");

    // Released addresses are handed out again, first one first.
    let agent = HungAgent::start().await;
    let mut r = report("host-1", vec![]);
    r.agent_url = agent.url.clone();
    cluster.ingest_report(r).await.expect("ingest");
    let td = cluster.create_vm(vm("d")).await.expect("create d");
    assert_eq!(nic_ip(&store, "d").await, "10.77.0.10/24");
    agent.kill().await;
    wait_task(&cluster, &td).await;
    assert_eq!(ipam(&store).await, Vec::<(String, String)>::new());

    cluster.delete_network("lan").await.expect("delete unused");
}

#[tokio::test]
async fn a_second_create_with_the_same_name_is_refused_while_the_first_runs() {
    let store = memory_store().await;
    let cluster = Cluster::open(store.clone(), TOKEN.into())
        .await
        .expect("open");
    let agent = HungAgent::start().await;
    let mut r = report("host-1", vec![]);
    r.agent_url = agent.url.clone();
    cluster.ingest_report(r).await.expect("ingest");

    let t = cluster.create_vm(vm("a")).await.expect("create");
    let err = cluster.create_vm(vm("a")).await.expect_err("duplicate");
    assert_eq!(err.code, ErrorCode::AlreadyExists);
    let err = cluster.delete_vm("a").await.expect_err("busy");
    assert_eq!(err.code, ErrorCode::InvalidState);
    agent.kill().await;
    assert_eq!(wait_task(&cluster, &t).await.state, TaskState::Failed);
    assert!(get_vm(&store, "a").await.is_none());
}

/// A create with `start: true` whose provisioning fails must be rolled
/// back like any other failed create.
#[tokio::test]
async fn a_create_and_start_whose_provisioning_fails_leaves_nothing() {
    let store = memory_store().await;
    let cluster = Cluster::open(store.clone(), TOKEN.into())
        .await
        .expect("open");
    cluster.create_network(lan()).await.expect("network");
    cluster
        .ingest_report(report("host-1", vec![]))
        .await
        .expect("ingest");
    let t = cluster
        .create_vm(CreateVmRequest {
            start: true,
            ..vm("a")
        })
        .await
        .expect("create");
    let done = wait_task(&cluster, &t).await;
    assert_eq!(done.state, TaskState::Failed);
    assert!(
        get_vm(&store, "a").await.is_none(),
        "record of a failed create kept"
    );
    assert_eq!(
        ipam(&store).await,
        Vec::<(String, String)>::new(),
        "address leaked"
    );
}
