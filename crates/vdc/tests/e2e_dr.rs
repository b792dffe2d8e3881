//! Recovery plans on real guests across two sites (one lab, one VM `app`
//! at site `a`, replicated to site `b`; the plan is stored at site `b`):
//!
//! 1. a plan naming a VM without a replica at `b` is refused; the plan is
//!    created from a TOML file with `vdc plan create --file`;
//! 2. **test**: the clone `app-test` boots at `b` in an isolated bubble and
//!    reads the replicated data, cannot reach the protected guest; the
//!    protected guest keeps its boot id and replication keeps taking
//!    points; the run's report has each step, the RTO and app's RPO;
//! 3. the web page (Chromium) shows the plan tested and the run's step
//!    timeline; its **cleanup** button removes the clone, its disk files,
//!    the bubble's switch and port group;
//! 4. **failover** with site `a` still answering: its VM is powered off,
//!    the latest point recovered at `b` (RPO and RTO in the run);
//! 5. **reprotect** replicates `app` back to `a` and swaps the plan; what
//!    is written at `b` arrives at `a`;
//! 6. a **failback** (planned migration) that cannot take its final point
//!    rolls back: the VM runs again at `b`.

use std::process::Command;
use std::time::Duration;

use vdc_client::{Client, ClientError};
use vdc_dr::{Run, RunState, StepOutcome};
use vdc_test_infra::webdriver::{Browser, WebDriverError};
use vdc_test_infra::{
    error_chain, wait_until, wait_until_async, wait_vm, TestLab, TwoSiteLab, VM_WAIT_TIMEOUT,
};
use vdc_types::api::CreateVmRequest;
use vdc_types::replication::EnableReplicationRequest;
use vdc_types::{ErrorCode, Task, TaskState, Vm, VmPowerState};

const TEMPLATE: &str = "debian-busybox";
const TASK_TIMEOUT: Duration = Duration::from_secs(300);
const RUN_TIMEOUT: Duration = Duration::from_secs(600);

async fn run_task(c: &Client, t: Task) -> Task {
    let done = c
        .wait_task(&t.id, TASK_TIMEOUT, |_| {})
        .await
        .unwrap_or_else(|e| panic!("task {} {} failed: {e}", t.kind, t.target));
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}");
    done
}

async fn ready(c: &Client, name: &str) -> Vm {
    wait_vm(c, name, |v| {
        v.state == VmPowerState::Running && v.guest.ready && v.guest.address.is_some()
    })
    .await
}

fn ask(lab: &TestLab, ip: &str, cmd: &str) -> String {
    let lines = wait_until(VM_WAIT_TIMEOUT, "the guest's service", || {
        lab.guest_request("host-1", ip, &[cmd]).ok()
    });
    lines.get(1).cloned().unwrap_or_default()
}

/// Runs `op` of plan `p` at `c` and waits for the run to end.
async fn run_plan(c: &Client, p: &str, op: &str) -> Run {
    let started = c
        .run_plan(p, op)
        .await
        .unwrap_or_else(|e| panic!("{op}: {e}"));
    assert_eq!(started.state, RunState::Running);
    let end = wait_until_async(RUN_TIMEOUT, &format!("the {op} run ends"), || async {
        let r = c.get_dr_run(&started.id).await.ok()?;
        if r.state == RunState::Waiting {
            // The plan's pre step: a prompt the operator answers.
            assert_eq!(r.prompt.as_deref(), Some("site a notified?"), "{r:?}");
            c.continue_dr_run(&r.id).await.expect("continue");
        }
        matches!(r.state, RunState::Succeeded | RunState::Failed).then_some(r)
    })
    .await;
    assert_eq!(
        end.state,
        RunState::Succeeded,
        "{op}:\n{}",
        vdc_dr::report::text(&end)
    );
    assert!(end.steps.iter().all(
        |s| matches!(s.outcome, StepOutcome::Ok | StepOutcome::Skipped)
            && s.started_ms.is_some()
            && s.finished_ms >= s.started_ms
    ));
    end
}

fn vdc(lab: &TestLab, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_vdc"))
        .args(args)
        .env("VDC_URL", &lab.info.api_url)
        .env("VDC_TOKEN_FILE", &lab.info.token_file)
        .env_remove("VDC_TOKEN")
        .output()
        .expect("vdc");
    assert!(
        out.status.success(),
        "vdc {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn in_ns(ns: &str, args: &[&str]) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "ip"])
        .args(args)
        .output()
        .expect("ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Longest wait for the page to show something.
const PAGE_TIMEOUT: Duration = Duration::from_secs(60);

/// The value of a browser step, or a panic naming the step and the cause.
fn page<T>(step: &str, r: Result<T, WebDriverError>) -> T {
    r.unwrap_or_else(|e| panic!("{step}: {}", error_chain(&e)))
}

/// In the web page of `lab`: the plan is tested, the test run's steps
/// show, and the plan's cleanup button cleans up (the run succeeds).
async fn web_cleanup(lab: &TestLab, test_run: &str) {
    let browser = match Browser::start().await {
        Ok(b) => b,
        Err(e) => panic!(
            "starting headless Chromium (install it with scripts/setup.sh --deps-only --test-deps): {}",
            error_chain(&e)
        ),
    };
    let token = std::fs::read_to_string(&lab.info.token_file).expect("token");
    page(
        "open the page",
        browser
            .goto(&format!("{}/#token={}", lab.info.api_url, token.trim()))
            .await,
    );
    page(
        "the plan shows tested",
        browser
            .wait_row("#plans tbody tr", PAGE_TIMEOUT, |r| {
                r.first().map(String::as_str) == Some("p")
                    && r.get(4).map(String::as_str) == Some("tested")
            })
            .await,
    );
    page(
        "show the test run",
        browser
            .click_css(
                &format!(r#"button[data-run-show="{test_run}"]"#),
                PAGE_TIMEOUT,
            )
            .await,
    );
    let steps = page(
        "the run's timeline",
        browser
            .wait_text("#dr-steps", PAGE_TIMEOUT, |t| {
                t.contains("recover group 1") && t.contains("build the isolated test network")
            })
            .await,
    );
    assert!(!steps.contains("failed"), "{steps}");
    page(
        "the run's RTO",
        browser
            .wait_text("#dr-rto", PAGE_TIMEOUT, |t| t.ends_with(" s"))
            .await,
    );
    page(
        "cleanup from the page",
        browser
            .click_css(r#"button[data-plan-op="p:cleanup"]"#, PAGE_TIMEOUT)
            .await,
    );
    page(
        "the plan shows ready again",
        browser
            .wait_row("#plans tbody tr", RUN_TIMEOUT, |r| {
                r.first().map(String::as_str) == Some("p")
                    && r.get(4).map(String::as_str) == Some("ready")
            })
            .await,
    );
    let plan = lab.client.get_plan("p").await.expect("plan");
    let run = lab
        .client
        .get_dr_run(plan.last_run.as_deref().expect("last run"))
        .await
        .expect("cleanup run");
    assert_eq!(
        (run.operation, run.state),
        (vdc_dr::Operation::Cleanup, RunState::Succeeded),
        "{}",
        vdc_dr::report::text(&run)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_test_cleanup_migrate_reprotect_failback() {
    let lab = TwoSiteLab::start(
        TestLab::builder(1).vdc_binary(env!("CARGO_BIN_EXE_vdc")),
        TestLab::builder(1).vdc_binary(env!("CARGO_BIN_EXE_vdc")),
    )
    .await;
    let (a, b) = (&lab.a.client, &lab.b.client);
    let t = a
        .create_vm(&CreateVmRequest {
            name: "app".into(),
            template: Some(TEMPLATE.into()),
            memory_mib: Some(128),
            start: true,
            ..Default::default()
        })
        .await
        .expect("create");
    run_task(a, t).await;
    let prod = ready(a, "app").await;
    let prod_ip = prod.guest.address.clone().expect("address");
    assert_eq!(ask(&lab.a, &prod_ip, "write k1 before-test"), "ok");
    let enabled = a
        .enable_replication(&EnableReplicationRequest {
            vm: "app".into(),
            site: "b".into(),
            rpo_s: 10,
            mode: Default::default(),
            // No point is merged during the test: merging into a point a
            // test clone runs on fails (the replication part's to fix).
            retain_last: 60,
            on_link_loss: Default::default(),
            quiesce_every_s: 0,
            datastore: None,
        })
        .await
        .expect("enable");
    run_task(a, enabled.task).await;

    // 1. A VM without a replica here is refused; the plan from a file.
    let dir = tempfile::tempdir().expect("tmp");
    let ghost = dir.path().join("ghost.toml");
    std::fs::write(
        &ghost,
        "name = \"g\"\nprotected_site = \"a\"\n[[groups]]\nvms = [{ name = \"ghost\" }]\n[[networks]]\nprotected = \"lab\"\nrecovery = \"lab\"\n",
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_vdc"))
        .args(["plan", "create", "--file", ghost.to_str().unwrap()])
        .env("VDC_URL", &lab.b.info.api_url)
        .env("VDC_TOKEN_FILE", &lab.b.info.token_file)
        .env_remove("VDC_TOKEN")
        .output()
        .expect("vdc");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("VM 'ghost' has no replica at this site"),
        "{err}"
    );
    let file = dir.path().join("plan.toml");
    std::fs::write(
        &file,
        "name = \"p\"\nprotected_site = \"a\"\npre_steps = [{ kind = \"prompt\", message = \"site a notified?\" }]\n[[groups]]\nvms = [{ name = \"app\", wait = { kind = \"guest\", timeout_s = 300 } }]\npost_steps = [{ kind = \"command\", command = \"true\", timeout_s = 10 }]\n[[networks]]\nprotected = \"lab\"\nrecovery = \"lab\"\n",
    )
    .expect("write");
    vdc(
        &lab.b,
        &["plan", "create", "--file", file.to_str().unwrap()],
    );
    let plan = b.get_plan("p").await.expect("plan");
    assert_eq!(
        (plan.protected_site.as_str(), plan.recovery_site.as_str()),
        ("a", "b")
    );

    // 2. Test: an isolated clone; production and replication untouched.
    let boot = prod.guest.boot_id.clone().expect("boot id");
    let points_before = a.get_replication("app").await.expect("repl").points;
    let test = run_plan(b, "p", "test").await;
    let clone = ready(b, "app-test").await;
    assert_eq!(clone.nics[0].network, "p-lab", "{:?}", clone.nics);
    let (_, bridge) = vdc_dr::plan::bubble_switch("p");
    let sw = b.get_switch("p-bubble").await.expect("bubble switch");
    assert!(sw.switch.uplinks.is_empty(), "{sw:?}");
    // Reach the clone from its host through a port of the bubble only.
    let ns = lab.b.netns("host-1").to_string();
    let clone_ip = clone.guest.address.clone().expect("clone address");
    in_ns(
        &ns,
        &[
            "link", "add", "vdcdr0", "type", "veth", "peer", "name", "vdcdr1",
        ],
    );
    in_ns(&ns, &["link", "set", "vdcdr1", "master", &bridge, "up"]);
    in_ns(&ns, &["link", "set", "vdcdr0", "up"]);
    in_ns(
        &ns,
        &["route", "add", &format!("{clone_ip}/32"), "dev", "vdcdr0"],
    );
    assert_eq!(ask(&lab.b, &clone_ip, "read k1"), "before-test");
    assert_eq!(
        ask(&lab.b, &clone_ip, &format!("probe {prod_ip}")),
        "probe failed",
        "the test clone reached the protected guest"
    );
    in_ns(&ns, &["link", "del", "vdcdr0"]);
    let t = a.sync_replication("app", false).await.expect("sync");
    run_task(a, t).await;
    let r = a.get_replication("app").await.expect("replication");
    assert!(r.points > points_before, "{r:?}");
    assert_eq!(
        a.get_vm("app").await.expect("app").guest.boot_id.as_deref(),
        Some(boot.as_str())
    );
    assert!(test.rto_ms.is_some(), "{test:?}");
    let v = &test.vms[0];
    assert_eq!(
        (v.vm.as_str(), v.recovered_as.as_str()),
        ("app", "app-test")
    );
    assert!(v.rpo_ms.is_some() && v.point.is_some(), "{v:?}");
    let report = vdc(&lab.b, &["plan", "report", &test.id]);
    for words in [
        "recover group 1",
        "RTO (start to last VM ready)",
        "RPO",
        "build the isolated test network",
    ] {
        assert!(report.contains(words), "{words}: {report}");
    }

    // 3. Cleanup leaves no trace.
    let disks: Vec<std::path::PathBuf> = clone
        .disks
        .iter()
        .map(|d| {
            let ds = lab
                .b
                .info
                .datastores
                .iter()
                .find(|x| x.name == d.datastore)
                .expect("datastore");
            ds.path.join(&d.path)
        })
        .collect();
    assert!(disks.iter().all(|p| p.exists()), "{disks:?}");
    web_cleanup(&lab.b, &test.id).await;
    assert!(
        matches!(b.get_vm("app-test").await, Err(ClientError::Api(e)) if e.code == ErrorCode::NotFound)
    );
    assert!(
        matches!(b.get_switch("p-bubble").await, Err(ClientError::Api(e)) if e.code == ErrorCode::NotFound)
    );
    assert!(
        matches!(b.get_network("p-lab").await, Err(ClientError::Api(e)) if e.code == ErrorCode::NotFound)
    );
    for d in &disks {
        assert!(!d.exists(), "{} left", d.display());
        assert!(!d.parent().expect("dir").exists(), "{} left", d.display());
    }

    // 4. Disaster failover with site a still answering: its VM is fenced
    //    (powered off) and the latest point recovered at b.
    assert_eq!(ask(&lab.a, &prod_ip, "write seq 5"), "ok");
    let t = a.sync_replication("app", false).await.expect("sync");
    run_task(a, t).await;
    let fo = run_plan(b, "p", "failover").await;
    let v = &fo.vms[0];
    assert!(v.rpo_ms.is_some() && v.point_ms.is_some(), "{v:?}");
    assert!(fo.rto_ms.is_some(), "{fo:?}");
    assert_eq!(
        a.get_vm("app").await.expect("app").state,
        VmPowerState::Stopped
    );
    let moved = ready(b, "app").await;
    let b_ip = moved.guest.address.clone().expect("address");
    assert_eq!(ask(&lab.b, &b_ip, "read seq"), "5");

    // 5. Reprotect: b's VM replicates back to a, the plan swaps; what is
    //    written at b reaches a.
    run_plan(b, "p", "reprotect").await;
    let plan = b.get_plan("p").await.expect("plan");
    assert_eq!(
        (plan.protected_site.as_str(), plan.recovery_site.as_str()),
        ("b", "a")
    );
    assert_eq!(b.get_replication("app").await.expect("back").site, "a");
    assert!(
        matches!(a.get_vm("app").await, Err(ClientError::Api(e)) if e.code == ErrorCode::NotFound)
    );
    assert_eq!(ask(&lab.b, &b_ip, "write seq 9"), "ok");
    let written = vdc_types::now_ms();
    let t = b.sync_replication("app", false).await.expect("sync back");
    run_task(b, t).await;
    let home = a.get_replica("app").await.expect("replica at a");
    assert_eq!(home.source_site, "b");
    assert!(home.points.iter().any(|p| p.time_ms >= written), "{home:?}");

    // 6. A planned migration that cannot finish rolls back: the final sync
    //    of the shut-down VM is refused (replication takes points of
    //    running VMs only), so the VM runs again at b and the plan is ready.
    let started = b.run_plan("p", "failback").await.expect("failback");
    let end = wait_until_async(RUN_TIMEOUT, "the failback run ends", || async {
        b.get_dr_run(&started.id)
            .await
            .ok()
            .filter(|r| matches!(r.state, RunState::Succeeded | RunState::Failed))
    })
    .await;
    assert_eq!(
        end.state,
        RunState::Failed,
        "{}",
        vdc_dr::report::text(&end)
    );
    assert!(
        end.errors
            .iter()
            .any(|e| e.contains("rolled back: app started again")),
        "{:?}",
        end.errors
    );
    ready(b, "app").await;
    assert_eq!(
        b.get_plan("p").await.expect("plan").state,
        vdc_dr::PlanState::Ready
    );
    let events = b.event_history("dr.*").await.expect("events");
    for topic in [
        "dr.plan_created",
        "dr.run_started",
        "dr.step",
        "dr.run_finished",
        "dr.cleanup",
    ] {
        assert!(events.iter().any(|e| e.topic == topic), "{topic}");
    }
}
