//! The lab's network on the real kernel (needs root): namespaces, bridges
//! and veths are created, hosts reach each other and the root namespace,
//! and `down` removes every trace — also after an `up` that failed half-way.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use vdc_lab::{ip, LabError, LabSpec};
use vdc_test_infra::{guest_request, wait_until, TestLab};

fn netns_exists(name: &str) -> bool {
    ip::netns_list()
        .expect("ip netns list")
        .iter()
        .any(|n| n == name)
}

fn link_exists(name: &str) -> bool {
    ip::link_exists(name).expect("ip link")
}

/// Answers `hello` on connect and `echo: LINE` per line, like a guest.
fn serve_one(listener: TcpListener) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let Ok((stream, _)) = listener.accept() else {
            return;
        };
        let mut writer = stream.try_clone().expect("clone");
        let _ = writer.write_all(b"hello\n");
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let _ = writer.write_all(format!("echo: {line}\n").as_bytes());
        }
    })
}

/// A listener bound inside namespace `netns` (from a thread that entered it;
/// the socket keeps its namespace after the thread ends).
fn listen_in(netns: &str, addr: &str) -> TcpListener {
    let netns = netns.to_string();
    let addr = addr.to_string();
    std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/run/netns/{netns}")).expect("open netns");
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        TcpListener::bind(addr).expect("bind in namespace")
    })
    .join()
    .expect("listener thread")
}

fn ping(netns: &str, addr: &str) -> bool {
    std::process::Command::new("ip")
        .args([
            "netns", "exec", netns, "busybox", "ping", "-c", "1", "-W", "1", addr,
        ])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[tokio::test]
async fn net_only_lab_connects_hosts_and_down_removes_everything() {
    let lab = TestLab::builder(2).net_only(true).start().await;
    let info = lab.info.clone();
    let (h1, h2) = (&info.hosts[0], &info.hosts[1]);

    // The objects exist, with the planned names and addresses.
    assert_eq!(h1.netns, format!("vdc-{}-h1", info.lab_id));
    assert!(netns_exists(&h1.netns) && netns_exists(&h2.netns));
    assert!(link_exists(&info.bridge));
    assert!(link_exists(&format!("{}h1", info.lab_id)));
    let vmbr = ip::ip_in(&h2.netns, &["-o", "-4", "addr", "show", "dev", "vmbr0"]).expect("addr");
    assert!(vmbr.contains(&format!("{}/24", h2.address)), "{vmbr}");
    let uplink = ip::ip_in(&h2.netns, &["-o", "link", "show", "dev", "uplink0"]).expect("link");
    assert!(uplink.contains("master vmbr0"), "{uplink}");

    // ICMP: host to host and host to the root namespace.
    wait_until(Duration::from_secs(30), "host-1 to ping host-2", || {
        ping(&h1.netns, &h2.address).then_some(())
    });
    // One ping waits 1 s for its answer (ARP first): on a loaded machine a
    // single try may miss it, so poll with a deadline.
    wait_until(
        Duration::from_secs(30),
        "host-2 to ping the gateway",
        || ping(&h2.netns, &info.gateway).then_some(()),
    );

    // A port with a lower MAC than the bridge's (a VM tap) joins and
    // leaves vmbr0: the bridge keeps its planned MAC, so its neighbours'
    // ARP entries stay right and the host stays reachable.
    let mac_of = |ns: &str, dev: &str| {
        let args = ["-o", "link", "show", "dev", dev];
        let link = if ns.is_empty() {
            ip::ip(&args)
        } else {
            ip::ip_in(ns, &args)
        }
        .expect("link");
        link.split("link/ether ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .map(str::to_string)
            .expect("a MAC")
    };
    let planned = vdc_lab::plan::bridge_mac(h1.address.parse().expect("an IPv4 address"));
    assert_eq!(mac_of(&h1.netns, "vmbr0"), planned);
    for args in [
        &[
            "link",
            "add",
            "lowport",
            "address",
            "00:00:00:00:00:01",
            "type",
            "veth",
            "peer",
            "name",
            "lowpeer",
        ][..],
        &["link", "set", "lowport", "master", "vmbr0", "up"],
    ] {
        ip::ip_in(&h1.netns, args).expect("a low-MAC port on vmbr0");
    }
    assert_eq!(
        mac_of(&h1.netns, "vmbr0"),
        planned,
        "a joining port changed the bridge's MAC"
    );
    ip::ip_in(&h1.netns, &["link", "delete", "lowport"]).expect("remove the port");
    assert_eq!(mac_of(&h1.netns, "vmbr0"), planned);
    let gw_mac = mac_of("", &info.bridge);
    assert_eq!(
        gw_mac,
        vdc_lab::plan::bridge_mac(info.gateway.parse().expect("an IPv4 address"))
    );

    // TCP from a host namespace to the root namespace (where the server
    // listens) and from host to host.
    let root = TcpListener::bind(format!("{}:0", info.gateway)).expect("bind on the lab bridge");
    let root_port = root.local_addr().expect("addr").port();
    let server = serve_one(root);
    let answers = guest_request(&h1.netns, &info.gateway, root_port, &["one", "two"])
        .expect("host-1 reaches the root namespace");
    assert_eq!(answers, ["hello", "echo: one", "echo: two"]);
    server.join().expect("server thread");

    let on_h2 = listen_in(&h2.netns, &format!("{}:0", h2.address));
    let h2_port = on_h2.local_addr().expect("addr").port();
    let server = serve_one(on_h2);
    let answers =
        guest_request(&h1.netns, &h2.address, h2_port, &["x"]).expect("host-1 reaches host-2");
    assert_eq!(answers, ["hello", "echo: x"]);
    server.join().expect("server thread");

    // A port nobody listens on fails with a connect error.
    let err = guest_request(&h1.netns, &h2.address, 1, &[]).expect_err("nothing listens on 1");
    assert!(err.to_string().contains("connect"), "{err}");

    // Status reads the state file; there are no processes in a net-only lab.
    let status = vdc_lab::status(&info.lab_id, &lab.spec.state_root).expect("status");
    assert_eq!(status.hosts.len(), 2);
    assert_eq!(status.hosts[1].netns, h2.netns);
    assert!(!status.server.alive && status.hosts[0].agent_pid.is_none());

    // A second `up` of the same lab is refused and leaves it intact.
    let again = vdc_lab::up(&lab.spec).await.expect_err("already up");
    assert!(matches!(again, LabError::AlreadyUp(_)), "{again}");
    assert!(netns_exists(&h1.netns));

    let state_dir = info.state_dir.clone();
    assert!(state_dir.join("lab.json").is_file());
    drop(lab);

    assert!(!netns_exists(&h1.netns) && !netns_exists(&h2.netns));
    assert!(!link_exists(&info.bridge));
    assert!(!link_exists(&format!("{}h1", info.lab_id)));
    assert!(!link_exists(&format!("{}h2", info.lab_id)));
    assert!(!Path::new(&state_dir).exists());
    assert!(!info.data_dir.exists());
}

#[tokio::test]
async fn failed_up_leaves_nothing_and_down_is_idempotent() {
    // Occupy a subnet with a net-only lab, then start another lab on it.
    let first = TestLab::builder(1).net_only(true).start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = LabSpec::new("/nonexistent/vdc".into());
    // An id of its own, reserved like a test lab's: `down` below removes
    // whatever carries this id, so a made-up id could be another running
    // test's lab.
    let second_id = vdc_test_infra::reserve_test_lab_id().expect("a second lab id");
    spec.lab_id = second_id.id().to_string();
    assert_ne!(spec.lab_id, first.info.lab_id);
    spec.hosts = 2;
    spec.subnet_index = Some(first.info.subnet_index);
    spec.state_root = dir.path().join("run");
    spec.data_root = dir.path().join("data");
    spec.net_only = true;
    let err = vdc_lab::up(&spec).await.expect_err("subnet taken");
    assert!(matches!(err, LabError::SubnetInUse { .. }), "{err}");
    assert!(err.to_string().contains(&first.info.subnet), "{err}");
    assert!(!netns_exists(&format!("vdc-{}-h1", spec.lab_id)));
    assert!(!link_exists(&format!("{}br0", spec.lab_id)));
    assert!(!spec.state_root.join(&spec.lab_id).exists());
    assert!(!spec.data_root.join(&spec.lab_id).exists());
    // The first lab is untouched.
    assert!(netns_exists(&first.info.hosts[0].netns));

    // `down` of a lab that is not up, twice, succeeds.
    vdc_lab::down(&spec.lab_id, &spec.state_root)
        .await
        .expect("down");
    vdc_lab::down(&spec.lab_id, &spec.state_root)
        .await
        .expect("down again");
    let status = vdc_lab::status(&spec.lab_id, &spec.state_root).expect_err("not up");
    assert!(matches!(status, LabError::NotUp(_)));
}

#[tokio::test]
async fn down_cleans_leftovers_without_a_state_file() {
    let lab = TestLab::builder(2).net_only(true).start().await;
    let id = lab.info.lab_id.clone();
    let netns = lab.info.hosts[0].netns.clone();
    // Lose the state file: `up` refuses to touch the orphaned network...
    std::fs::remove_dir_all(&lab.info.state_dir).expect("remove state");
    let err = vdc_lab::up(&lab.spec).await.expect_err("leftovers");
    assert!(matches!(err, LabError::Leftovers(_)), "{err}");
    assert!(netns_exists(&netns));
    // ...and `down` finds the lab by its names.
    vdc_lab::down(&id, &lab.spec.state_root)
        .await
        .expect("down");
    assert!(!netns_exists(&netns));
    assert!(!link_exists(&format!("{id}br0")));
    assert!(!link_exists(&format!("{id}h2")));
}
