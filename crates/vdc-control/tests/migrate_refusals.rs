//! Every refusal of a migration request, each a clear 4xx with nothing
//! changed: the hosts are reports as their agents send them, the VM a
//! record as the create operation writes it. (The moves themselves are
//! proven on real guests in `crates/vdc/tests/e2e_migrate.rs`.)

mod common;

use common::{memory_store, put_vm, report, runtime, TOKEN};
use vdc_control::Cluster;
use vdc_types::migration::MigrateRequest;
use vdc_types::{ApiError, ErrorCode, GuestInfo, VmPowerState};

fn to(host: &str) -> MigrateRequest {
    MigrateRequest {
        to: Some(host.into()),
        ..Default::default()
    }
}

async fn refused(cluster: &std::sync::Arc<Cluster>, vm: &str, req: MigrateRequest) -> ApiError {
    let e = cluster
        .migrate_vm(vm, req)
        .await
        .expect_err("the migration is refused");
    let v = cluster.get_vm(vm).await.expect("the VM");
    assert!(v.operation.is_none(), "a refusal changed the VM: {v:?}");
    let tasks = cluster.tasks.list().await.unwrap();
    assert!(
        !tasks.iter().any(|t| t.kind == "vm.migrate"),
        "a migration task was made: {tasks:?}"
    );
    e
}

#[tokio::test]
async fn refusals_say_what_is_wrong_and_change_nothing() {
    let store = memory_store().await;
    put_vm(&store, "web", VmPowerState::Running, Some("host-1")).await;
    put_vm(&store, "down", VmPowerState::Crashed, Some("host-1")).await;
    let cluster = Cluster::open(store.clone(), TOKEN.into())
        .await
        .expect("open");
    let running = runtime("web", VmPowerState::Running, GuestInfo::default());
    let stopped = runtime("down", VmPowerState::Crashed, GuestInfo::default());
    cluster
        .ingest_report(report("host-1", vec![running, stopped]))
        .await
        .unwrap();
    // host-2 has no room for a 256 MiB guest (+ QEMU's overhead).
    let mut small = report("host-2", vec![]);
    small.memory_free_mib = 200;
    cluster.ingest_report(small).await.unwrap();
    // host-3 does not reach the shared datastore holding the VM.
    let mut far = report("host-3", vec![]);
    far.datastores.retain(|d| d.name != "shared");
    cluster.ingest_report(far).await.unwrap();

    let e = refused(&cluster, "web", to("nowhere")).await;
    assert_eq!(e.code, ErrorCode::NotFound, "{e:?}");
    assert!(e.message.contains("nowhere"), "{}", e.message);

    let e = refused(&cluster, "web", to("host-1")).await;
    assert_eq!(e.code, ErrorCode::InvalidInput);
    assert!(
        e.message.contains("already runs on host 'host-1'"),
        "{}",
        e.message
    );

    let e = refused(&cluster, "web", to("host-2")).await;
    assert_eq!(e.code, ErrorCode::InsufficientCapacity, "{e:?}");
    assert!(
        e.message.contains("host 'host-2' cannot take VM 'web'"),
        "{}",
        e.message
    );

    let e = refused(&cluster, "web", to("host-3")).await;
    assert_eq!(e.code, ErrorCode::InvalidInput, "{e:?}");
    assert!(e.message.contains("shared"), "{}", e.message);

    // host-5 has room but its QEMU lacks the VM's CPU model: incompatible.
    let mut old = report("host-5", vec![]);
    old.qemu_models = Some(vdc_types::agent::QemuModelsReport {
        machine_types: vec![vdc_types::vm::DEFAULT_MACHINE_TYPE.into()],
        cpu_models: vec!["qemu64".into()],
        cpu_flags: vec![],
    });
    cluster.ingest_report(old).await.unwrap();
    let e = refused(&cluster, "web", to("host-5")).await;
    assert_eq!(e.code, ErrorCode::InvalidInput, "{e:?}");
    assert!(
        e.message.contains("offers no CPU model 'Nehalem-v1'"),
        "{}",
        e.message
    );

    // host-6 runs KVM on a CPU without SSE4.2: below the VM's CPU model.
    let mut below = report("host-6", vec![]);
    below.accelerator = vdc_types::Accelerator::Kvm;
    below.qemu_models = Some(vdc_types::agent::QemuModelsReport {
        machine_types: vec![vdc_types::vm::DEFAULT_MACHINE_TYPE.into()],
        cpu_models: vec!["Nehalem-v1".into()],
        cpu_flags: "lm sse2 pni cx16 ssse3 sse4_1 popcnt lahf_lm vmx"
            .split(' ')
            .map(String::from)
            .collect(),
    });
    cluster.ingest_report(below).await.unwrap();
    let e = refused(&cluster, "web", to("host-6")).await;
    assert_eq!(e.code, ErrorCode::InvalidInput, "{e:?}");
    assert!(
        e.message.contains("lacks flags of Nehalem-v1: sse4_2"),
        "{}",
        e.message
    );

    // Without a destination, placement finds none of them fit.
    let e = refused(&cluster, "web", MigrateRequest::default()).await;
    assert!(
        e.message.contains("no other host can take VM 'web'"),
        "{}",
        e.message
    );

    let e = refused(&cluster, "web", to("bad name!")).await;
    assert_eq!(e.code, ErrorCode::InvalidInput);

    // A crashed VM does not move (a stopped one moves cold, a suspended
    // one with its state: the dispatcher picks those flows).
    let e = refused(&cluster, "down", to("host-2")).await;
    assert_eq!(e.code, ErrorCode::InvalidState, "{e:?}");
    assert!(e.message.contains("crashed"), "{}", e.message);

    // A host in maintenance takes no VM.
    let mut roomy = report("host-4", vec![]);
    roomy.memory_free_mib = 3000;
    cluster.ingest_report(roomy).await.unwrap();
    let t = cluster
        .enter_maintenance("host-4")
        .await
        .expect("maintenance");
    common::eventually(
        "host-4 in maintenance",
        std::time::Duration::from_secs(30),
        || async {
            match cluster.tasks.get(&t.id).await {
                Ok(t) if t.state.is_final() => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let e = cluster
        .migrate_vm("web", to("host-4"))
        .await
        .expect_err("refused");
    assert_eq!(e.code, ErrorCode::InvalidState, "{e:?}");
    assert!(e.message.contains("maintenance"), "{}", e.message);
    assert!(cluster.get_vm("web").await.unwrap().operation.is_none());

    // A host that stopped reporting is not a destination.
    cluster.spawn_monitor();
    common::eventually(
        "host-3 to be disconnected",
        std::time::Duration::from_secs(30),
        || async {
            match cluster.get_host("host-3").await {
                Ok(h) if h.state == vdc_types::HostState::Disconnected => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let e = refused(&cluster, "web", to("host-3")).await;
    assert_eq!(e.code, ErrorCode::HostUnavailable, "{e:?}");
}

/// A running VM on host-1's local datastore moving live with its storage:
/// every refusal comes before anything moves.
#[tokio::test]
async fn storage_moves_are_refused_before_anything_moves() {
    let store = memory_store().await;
    let mut config = common::config("local");
    config.datastore = "local-host-1".into();
    config.disks[0].datastore = "local-host-1".into();
    let rec = vdc_control::VmRecord::new(config, VmPowerState::Running, Some("host-1".into()));
    {
        use vdc_store::StoreExt;
        store.put_json("/vms/local", &rec).await.expect("record");
    }
    let cluster = Cluster::open(store.clone(), TOKEN.into())
        .await
        .expect("open");
    let running = runtime("local", VmPowerState::Running, GuestInfo::default());
    cluster
        .ingest_report(report("host-1", vec![running]))
        .await
        .unwrap();
    // host-2's own datastore has 1 MiB free: less than the 1 GiB disk.
    let mut tight = report("host-2", vec![]);
    for d in tight.datastores.iter_mut() {
        if d.name == "local-host-2" {
            d.free_bytes = 1 << 20;
        }
    }
    cluster.ingest_report(tight).await.unwrap();
    let with = |ds: &str| MigrateRequest {
        to: Some("host-2".into()),
        datastore: Some(ds.into()),
        ..Default::default()
    };

    let e = refused(&cluster, "local", with("nowhere")).await;
    assert_eq!(e.code, ErrorCode::NotFound, "{e:?}");
    assert!(e.message.contains("nowhere"), "{}", e.message);

    let e = refused(&cluster, "local", with("local-host-1")).await;
    assert_eq!(e.code, ErrorCode::InvalidInput, "{e:?}");
    assert!(
        e.message.contains("not present on host 'host-2'"),
        "{}",
        e.message
    );

    let e = refused(&cluster, "local", with("local-host-2")).await;
    assert_eq!(e.code, ErrorCode::InsufficientCapacity, "{e:?}");
    assert!(
        e.message
            .contains("datastore 'local-host-2' has 1048576 bytes free"),
        "{}",
        e.message
    );

    let mut postcopy = with("shared");
    postcopy.allow_postcopy = Some(true);
    let e = refused(&cluster, "local", postcopy).await;
    assert_eq!(e.code, ErrorCode::InvalidInput, "{e:?}");
    assert!(e.message.contains("post-copy"), "{}", e.message);
}

#[tokio::test]
async fn tls_is_refused_without_certificates_of_one_ca() {
    let store = memory_store().await;
    put_vm(&store, "web", VmPowerState::Running, Some("host-1")).await;
    let cluster = Cluster::open(store.clone(), TOKEN.into())
        .await
        .expect("open");
    let cert = |ca: &str| vdc_types::auth::HostCertificate {
        not_after_ms: vdc_types::now_ms() + 86_400_000,
        fingerprint: "f".into(),
        ca_fingerprint: ca.into(),
        sans: vec![],
    };
    let mut src = report(
        "host-1",
        vec![runtime("web", VmPowerState::Running, GuestInfo::default())],
    );
    src.tls = Some(cert("ca1"));
    cluster.ingest_report(src).await.unwrap();
    let mut bare = report("host-2", vec![]);
    bare.memory_free_mib = 3000;
    cluster.ingest_report(bare).await.unwrap();
    let mut foreign = report("host-3", vec![]);
    foreign.memory_free_mib = 3000;
    foreign.tls = Some(cert("ca2"));
    cluster.ingest_report(foreign).await.unwrap();

    let tls_to = |h: &str| MigrateRequest {
        tls: Some(true),
        ..to(h)
    };
    let e = refused(&cluster, "web", tls_to("host-2")).await;
    assert_eq!(e.code, ErrorCode::InvalidState, "{e:?}");
    assert!(
        e.message
            .contains("host 'host-2' has no migration certificate yet"),
        "{}",
        e.message
    );
    assert!(e.message.contains("--no-tls"), "{}", e.message);
    let e = refused(&cluster, "web", tls_to("host-3")).await;
    assert!(e.message.contains("different CAs"), "{}", e.message);

    // The cluster setting asks for TLS when the request does not say.
    cluster
        .set_migration_cluster_settings(&vdc_types::migration::SetMigrationSettingsRequest {
            encryption: vdc_types::migration::MigrationEncryption::On,
        })
        .await
        .unwrap();
    let e = refused(&cluster, "web", to("host-2")).await;
    assert!(
        e.message.contains("no migration certificate"),
        "{}",
        e.message
    );
    assert_eq!(
        cluster
            .migration_cluster_settings()
            .await
            .unwrap()
            .encryption,
        vdc_types::migration::MigrationEncryption::On
    );
}
