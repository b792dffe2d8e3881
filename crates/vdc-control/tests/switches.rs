//! Switches and port groups in the control plane, without hosts: a
//! version-1 network is migrated in place into a port group of the
//! existing switch of its bridge when the server opens; a newer version is
//! refused; VLAN port groups get their VLAN's bridge; the desired state
//! handed to agents carries each switch's VLANs; a switch with port groups
//! cannot be deleted.

mod common;

use common::{memory_store, TOKEN};
use vdc_control::Cluster;
use vdc_store::StoreExt;
use vdc_types::switch::{Switch, SwitchKind, NETWORK_VERSION};
use vdc_types::{ErrorCode, Network};

#[tokio::test]
async fn version_1_networks_become_port_groups_when_the_server_opens() {
    let store = memory_store().await;
    let v1 = serde_json::json!({
        "name": "lan", "bridge": "vmbr0", "subnet": "10.77.0.0/24",
        "pool_start": "10.77.0.100", "pool_end": "10.77.0.199"
    });
    store.put_json("/networks/lan", &v1).await.expect("put");
    let cluster = Cluster::open(store.clone(), TOKEN.into())
        .await
        .expect("open");
    let lan = cluster.get_network("lan").await.expect("lan");
    assert_eq!(lan.version, NETWORK_VERSION);
    assert_eq!(lan.switch.as_deref(), Some("vmbr0"));
    let sw = cluster.get_switch("vmbr0").await.expect("switch");
    assert_eq!(
        (sw.kind, sw.bridge.as_str()),
        (SwitchKind::Existing, "vmbr0")
    );
    let desired = cluster.desired_switches().await.expect("desired");
    assert_eq!(desired.len(), 1);
    assert!(desired[0].vlans.is_empty());

    // A managed switch with VLAN port groups.
    cluster
        .create_switch(Switch {
            version: 0,
            name: "vsw".into(),
            bridge: String::new(),
            kind: SwitchKind::Managed,
            uplinks: vec!["eth1".into()],
        })
        .await
        .expect("vsw");
    let pg = cluster
        .create_network(Network {
            name: "pg10".into(),
            switch: Some("vsw".into()),
            vlan: Some(10),
            subnet: "10.99.0.0/24".into(),
            pool_start: "10.99.0.10".into(),
            pool_end: "10.99.0.19".into(),
            ..Default::default()
        })
        .await
        .expect("pg10");
    assert_eq!(pg.bridge, "vswv10");
    let desired = cluster.desired_switches().await.expect("desired");
    let vsw = desired.iter().find(|d| d.name == "vsw").expect("vsw");
    assert_eq!(
        (vsw.vlans.clone(), vsw.uplinks.clone()),
        (vec![10], vec!["eth1".to_string()])
    );
    let err = cluster.delete_switch("vsw").await.expect_err("in use");
    assert_eq!(err.code, ErrorCode::InvalidState);
    assert!(err.message.contains("pg10"), "{}", err.message);
    cluster.delete_network("pg10").await.expect("delete pg10");
    cluster.delete_switch("vsw").await.expect("delete vsw");
}

#[tokio::test]
async fn a_network_of_a_newer_version_is_refused() {
    let store = memory_store().await;
    let newer = serde_json::json!({
        "name": "lan", "bridge": "vmbr0", "subnet": "10.77.0.0/24",
        "pool_start": "10.77.0.100", "pool_end": "10.77.0.199",
        "version": NETWORK_VERSION + 1, "switch": "vmbr0"
    });
    store.put_json("/networks/lan", &newer).await.expect("put");
    assert!(Cluster::open(store, TOKEN.into()).await.is_err());
}
