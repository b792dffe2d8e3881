//! End-to-end test of the migration stream's TLS on a real guest in a
//! 2-host lab: each host gets a certificate of the cluster CA when its
//! agent joins; with the cluster setting on, a live migration runs over
//! TLS (the source QEMU's own migration parameters named the credentials,
//! kept on the task as `encrypted`) and keeps the guest's boot; a request
//! may turn it off; a destination whose certificate another CA signed
//! makes the handshake fail, and the guest stays on the source with
//! nothing left on the destination.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use futures::StreamExt;
use vdc_client::Client;
use vdc_test_infra::{wait_until_async, wait_vm, TestLab, VM_WAIT_TIMEOUT};
use vdc_types::api::CreateVmRequest;
use vdc_types::migration::{MigrateRequest, MigrationEncryption};
use vdc_types::{Task, TaskState, Vm, VmPowerState};

const TASK_TIMEOUT: Duration = Duration::from_secs(300);

fn tls_dir(lab: &TestLab, host: &str) -> std::path::PathBuf {
    let h = lab
        .info
        .hosts
        .iter()
        .find(|h| h.name == host)
        .expect("a lab host");
    h.state_dir.join("tls")
}

fn run_dir(lab: &TestLab, host: &str, id: &str) -> std::path::PathBuf {
    let h = lab
        .info
        .hosts
        .iter()
        .find(|h| h.name == host)
        .expect("a lab host");
    h.state_dir.join("vms").join(id)
}

/// The guest's `(hostname, boot id)` asked from `from`'s namespace.
fn identity(lab: &TestLab, from: &str, addr: &str) -> (String, String) {
    let lines = vdc_test_infra::wait_until(VM_WAIT_TIMEOUT, "the guest's service", || {
        lab.guest_request(from, addr, &[]).ok()
    });
    let line = lines.first().expect("a greeting line").clone();
    let parts: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(parts.len(), 3, "unexpected greeting {line:?}");
    (parts[0].to_string(), parts[1].to_string())
}

fn vdc_cli(lab: &TestLab, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vdc"))
        .args(args)
        .env_remove("VDC_TOKEN")
        .env("VDC_URL", &lab.info.api_url)
        .env("VDC_TOKEN_FILE", &lab.info.token_file)
        .output()
        .expect("run vdc");
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "vdc {args:?} failed: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    said
}

async fn start_migration(c: &Client, name: &str, to: &str, tls: Option<bool>) -> Task {
    let req = MigrateRequest {
        to: Some(to.into()),
        tls,
        ..Default::default()
    };
    start(c, name, &req).await
}

async fn start(c: &Client, name: &str, req: &MigrateRequest) -> Task {
    c.migrate_vm(name, req)
        .await
        .unwrap_or_else(|e| panic!("migrate {name}: {e}"))
}

async fn migrate(c: &Client, name: &str, to: &str, tls: Option<bool>) -> Task {
    let t = start_migration(c, name, to, tls).await;
    match c.wait_task(&t.id, TASK_TIMEOUT, |_| {}).await {
        Ok(t) => t,
        Err(e) => panic!("migrating {name} to {to} failed: {e}"),
    }
}

fn addr(vm: &Vm) -> String {
    vm.guest.address.clone().expect("the guest's address")
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_migration_encrypts_the_stream_and_a_foreign_ca_is_refused() {
    let lab = TestLab::start(2).await;
    let c = &lab.client;

    // 1. Each host got a certificate of the cluster CA at its join: its
    //    name and migration address as names, a year of validity, the key
    //    0600, in QEMU's layout.
    let hosts = wait_until_async(VM_WAIT_TIMEOUT, "both hosts' certificates", || async {
        let hosts = c.list_hosts().await.ok()?;
        (hosts.len() == 2 && hosts.iter().all(|h| h.tls.is_some())).then_some(hosts)
    })
    .await;
    let now = vdc_types::now_ms();
    for h in &hosts {
        let cert = h.tls.as_ref().unwrap();
        assert!(cert.sans.contains(&format!("DNS:{}", h.name)), "{cert:?}");
        assert!(cert.sans.contains(&format!("IP:{}", h.address)), "{cert:?}");
        assert!(cert.not_after_ms > now + 300 * 86_400_000, "{cert:?}");
        let dir = tls_dir(&lab, &h.name);
        for (f, mode) in [
            ("ca-cert.pem", 0o644),
            ("server-cert.pem", 0o644),
            ("server-key.pem", 0o600),
            ("client-cert.pem", 0o644),
            ("client-key.pem", 0o600),
        ] {
            let m = std::fs::metadata(dir.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
            assert_eq!(m.permissions().mode() & 0o777, mode, "{f}");
        }
        let pem = std::fs::read_to_string(dir.join("server-cert.pem")).unwrap();
        let ca = std::fs::read_to_string(dir.join("ca-cert.pem")).unwrap();
        assert!(vdc_pki::verify_issued_by(&pem, &ca).unwrap());
    }
    let listed = vdc_cli(&lab, &["host", "list"]);
    assert!(listed.contains("CERT-EXPIRES"), "{listed}");

    // 2. The cluster setting, off on a new cluster, turned on by the CLI.
    let before = c.migration_settings().await.unwrap();
    assert_eq!(before.encryption, MigrationEncryption::Off);
    assert!(before.ca.is_some(), "the server made a cluster CA");
    let said = vdc_cli(&lab, &["migration", "settings", "--encryption", "on"]);
    assert!(said.starts_with("encryption: on"), "{said}");
    assert!(said.contains("DNS:host-2"), "{said}");

    // 3. A live migration over TLS (by the setting) keeps the guest's boot;
    //    the guest dirties memory faster than a 16 MiB/s stream carries it,
    //    so it ends in post-copy, over TLS too.
    let t = c
        .create_vm(&CreateVmRequest {
            name: "tls-1".into(),
            template: Some("debian-busybox".into()),
            memory_mib: Some(128),
            host: Some("host-1".into()),
            start: true,
            ..Default::default()
        })
        .await
        .expect("create accepted");
    c.wait_task(&t.id, TASK_TIMEOUT, |_| {})
        .await
        .expect("created");
    let vm = wait_vm(c, "tls-1", |v| {
        v.state == VmPowerState::Running && v.guest.ready
    })
    .await;
    let ip = addr(&vm);
    let (name, boot) = identity(&lab, "host-2", &ip);
    assert_eq!(name, "tls-1");
    let mut migrated = Box::pin(
        c.events(&["vm.migrated".to_string()])
            .await
            .expect("event stream"),
    );
    let said = lab
        .guest_request("host-2", &ip, &["dirty max 48"])
        .expect("the guest's service");
    assert!(said.iter().any(|l| l.starts_with("ok dirty")), "{said:?}");
    let slow = MigrateRequest {
        to: Some("host-2".into()),
        bandwidth_mib_s: Some(16),
        ..Default::default()
    };
    let t = start(c, "tls-1", &slow).await;
    let t = c
        .wait_task(&t.id, TASK_TIMEOUT, |_| {})
        .await
        .unwrap_or_else(|e| panic!("the TLS migration failed: {e}"));
    let report = t.migration.expect("the task reports the migration");
    assert!(report.tls, "{report:?}");
    let outcome = report.outcome.expect("the outcome");
    assert!(
        outcome.encrypted,
        "the source QEMU named TLS credentials: {outcome:?}"
    );
    assert!(
        outcome.postcopy,
        "post-copy over TLS: {:?}",
        report.policy_steps
    );
    let said = lab
        .guest_request("host-1", &ip, &["dirty stop"])
        .expect("the guest's service");
    assert!(said.iter().any(|l| l == "ok"), "{said:?}");
    let ev = tokio::time::timeout(Duration::from_secs(30), migrated.next())
        .await
        .expect("a vm.migrated event")
        .expect("stream open")
        .expect("an event");
    assert_eq!(ev.data["target"], "host-2");
    assert_eq!(ev.data["encrypted"], true, "{:?}", ev.data);
    assert_eq!(identity(&lab, "host-1", &ip).1, boot, "same boot");

    // 4. A request may ask for a plain stream.
    let t = migrate(c, "tls-1", "host-1", Some(false)).await;
    let report = t.migration.expect("the task reports the migration");
    assert!(!report.tls);
    assert!(!report.outcome.expect("the outcome").encrypted);
    assert_eq!(identity(&lab, "host-2", &ip).1, boot, "same boot");

    // 5. host-2's certificate replaced by one of another CA: the handshake
    //    fails, the guest stays on host-1, nothing is left on host-2.
    let foreign = vdc_pki::ClusterCa::generate(now).unwrap();
    let dir = tls_dir(&lab, "host-2");
    let key = vdc_pki::HostKey::generate().unwrap();
    let cert = foreign
        .issue_host(
            "host-2",
            &[hosts
                .iter()
                .find(|h| h.name == "host-2")
                .unwrap()
                .address
                .parse()
                .unwrap()],
            &key.csr_pem("host-2").unwrap(),
            now,
        )
        .unwrap();
    vdc_pki::files::HostTlsDir::new(&dir)
        .install(&key, &cert.cert_pem, foreign.cert_pem())
        .unwrap();
    let t = start_migration(c, "tls-1", "host-2", None).await;
    let ended = wait_until_async(TASK_TIMEOUT, "the migration to end", || async {
        let t = c.get_task(&t.id).await.ok()?;
        t.state.is_final().then_some(t)
    })
    .await;
    assert_eq!(ended.state, TaskState::Failed, "{ended:?}");
    let why = ended.error.expect("the failure's reason").message;
    assert!(why.to_lowercase().contains("certificate"), "{why}");
    let v = wait_vm(c, "tls-1", |v| v.operation.is_none()).await;
    assert_eq!(v.owner.as_deref(), Some("host-1"));
    assert_eq!(v.state, VmPowerState::Running);
    assert_eq!(identity(&lab, "host-2", &ip).1, boot, "same boot");
    vdc_test_infra::wait_until(VM_WAIT_TIMEOUT, "host-2 to forget the VM", || {
        (!run_dir(&lab, "host-2", &vm.id).exists()).then_some(())
    });
}
