//! `vdc bench ha`: how fast a killed host's VMs run again elsewhere.
//!
//! Steps:
//!   1. a lab of its own with two hosts (`vdc_lab::up`);
//!   2. `--vms` VMs from the lab's template (the busybox guest), started on
//!      host 1, each waited for until its guest reports ready;
//!   3. each trial kills every process of the host running them at once
//!      (`vdc lab fail HOST --kill`: agent, QEMUs, VM supervisors), waits
//!      until every VM runs on the other host with its guest ready, reads
//!      the server's events since the kill ([`crate::ha_report`]), heals
//!      the killed host and waits until it is connected again; the next
//!      trial kills the other host;
//!   4. prints each trial as it ends, then p50 and p95 of each measure and
//!      vdc beside the anchors' published figures;
//!   5. tears the lab down (also after an error).
//!
//! Times are taken from the server's event times against the wall-clock
//! time of the kill (one machine, one clock).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use vdc_client::Client;
use vdc_types::api::CreateVmRequest;
use vdc_types::ha::HaHostState;
use vdc_types::VmPowerState;

use crate::error::BenchError;
use crate::ha_report::{self, Row, Trial};

/// Options of `vdc bench ha`.
#[derive(Debug, Clone, Args)]
pub struct HaArgs {
    /// Trials: host kills (each restarts every VM once).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub trials: u32,
    /// VMs on the killed host.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=8))]
    pub vms: u32,
    /// One trial with one VM: a quick check that everything works.
    #[arg(long)]
    pub smoke: bool,
    /// Guest memory, MiB.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(64..=2048))]
    pub memory_mib: u32,
    /// Longest wait for one trial's VMs to be ready elsewhere, seconds.
    #[arg(long, default_value_t = 240, value_parser = clap::value_parser!(u64).range(10..=3600))]
    pub timeout: u64,
    /// Guest image (default: the lab's, built on demand).
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Lab id of the benchmark's lab (1–4 lower-case letters and digits).
    #[arg(long, default_value = "bnha")]
    pub lab_id: String,
    /// Directory for the lab's state (removed at the end).
    #[arg(long, default_value = "/var/tmp/vdc-bench")]
    pub work_dir: PathBuf,
}

impl HaArgs {
    /// `(trials, vms)` the run makes.
    pub fn plan(&self) -> (u32, u32) {
        if self.smoke {
            (1, 1)
        } else {
            (self.trials, self.vms)
        }
    }
}

/// Everything measured, for `-o json`.
#[derive(Debug, Serialize)]
pub struct Figures {
    /// Every trial.
    pub trials: Vec<Trial>,
    /// p50 and p95 of each measure.
    pub summary: Vec<Row>,
}

fn api(what: &str) -> impl FnOnce(vdc_client::ClientError) -> BenchError + '_ {
    move |source| BenchError::Api {
        what: what.to_string(),
        source,
    }
}

/// Runs the benchmark.
pub async fn run(args: HaArgs, json: bool) -> Result<(), BenchError> {
    let (trials, vms) = args.plan();
    let work = args.work_dir.join(format!("ha-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|source| BenchError::File {
        path: work.clone(),
        source,
    })?;
    let exe = std::env::current_exe().map_err(|source| BenchError::File {
        path: "/proc/self/exe".into(),
        source,
    })?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|source| BenchError::File {
            path: "127.0.0.1:0".into(),
            source,
        })?;
    let spec = vdc_lab::LabSpec {
        lab_id: args.lab_id.clone(),
        hosts: 2,
        subnet_index: None,
        state_root: work.join("run"),
        data_root: work.join("data"),
        image: args.image.clone(),
        import_template: true,
        demo_vms: 0,
        port,
        vdc_binary: exe,
        net_only: false,
        step_timeout: Duration::from_secs(240),
        store: None,
        migration_network: false,
        control_plane: 0,
        site_name: None,
    };
    eprintln!("bench: starting lab '{}' (2 hosts)", spec.lab_id);
    let info = vdc_lab::up(&spec).await?;
    let outcome = measure(&args, trials, vms, &info, &spec.state_root).await;
    if let Err(e) = vdc_lab::down(&spec.lab_id, &spec.state_root).await {
        eprintln!("bench: tearing down the lab: {e}");
    }
    if let Err(e) = std::fs::remove_dir_all(&work) {
        eprintln!("bench: removing {}: {e}", work.display());
    }
    let trials_done = outcome?;
    let summary = ha_report::summarize(&trials_done);
    if json {
        let figures = Figures {
            trials: trials_done,
            summary,
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&figures).unwrap_or_default()
        );
    } else {
        print!(
            "{}",
            ha_report::render(&summary, trials_done.len(), vms as usize)
        );
        println!(
            "\n{} CPUs, load average {}",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    Ok(())
}

async fn measure(
    args: &HaArgs,
    trials: u32,
    vms: u32,
    info: &vdc_lab::LabInfo,
    state_root: &Path,
) -> Result<Vec<Trial>, BenchError> {
    let client = vdc_lab::client(info)?;
    let hosts: Vec<String> = info.hosts.iter().map(|h| h.name.clone()).collect();
    let (first, second) = match hosts.as_slice() {
        [a, b, ..] => (a.clone(), b.clone()),
        _ => return Err(BenchError::Usage("the lab has fewer than two hosts".into())),
    };
    let names: Vec<String> = (1..=vms).map(|i| format!("hab-{i}")).collect();
    for name in &names {
        let t = client
            .create_vm(&CreateVmRequest {
                name: name.clone(),
                template: Some(vdc_lab::plan::TEMPLATE_NAME.into()),
                memory_mib: Some(args.memory_mib.into()),
                cpus: Some(1),
                host: Some(first.clone()),
                start: true,
                ..Default::default()
            })
            .await
            .map_err(api("create a VM"))?;
        client
            .wait_task(&t.id, Duration::from_secs(300), |_| {})
            .await
            .map_err(api("create a VM"))?;
    }
    let timeout = Duration::from_secs(args.timeout);
    wait_ready_on(&client, &names, &first, false, timeout).await?;

    let mut victim = first;
    let mut other = second;
    let mut done = Vec::new();
    for trial in 1..=trials {
        let after = client
            .last_event_seq()
            .await
            .map_err(api("read the events"))?;
        let killed_ms = vdc_types::now_ms();
        let said = blocking(|| {
            vdc_lab::fail::fail_host(
                &args.lab_id,
                state_root,
                &victim,
                vdc_lab::fail::Fault::Kill,
            )
        })?;
        eprintln!("bench: trial {trial}: {said}");
        wait_ready_on(&client, &names, &victim, true, timeout).await?;
        let mut events = Vec::new();
        let mut from = after;
        loop {
            let page = client
                .events_after(from, "ha.*,vm.*", 2000)
                .await
                .map_err(api("read the events"))?;
            let full = page.len() == 2000;
            from = page.last().map_or(from, |e| e.seq);
            events.extend(page);
            if !full {
                break;
            }
        }
        let t = ha_report::trial_from_events(trial, &victim, killed_ms, &names, &events)?;
        eprintln!(
            "bench: trial {trial}: suspect {} ms, failed {} ms; QEMU running {:?} ms; guest ready {:?} ms",
            t.suspect_ms.map_or("–".into(), |v| v.to_string()),
            t.detection_ms,
            t.restarts.iter().map(|r| r.running_ms).collect::<Vec<_>>(),
            t.restarts.iter().map(|r| r.ready_ms).collect::<Vec<_>>(),
        );
        done.push(t);
        blocking(|| {
            vdc_lab::fail::fail_host(
                &args.lab_id,
                state_root,
                &victim,
                vdc_lab::fail::Fault::Heal,
            )
        })?;
        wait_connected(&client, &victim, timeout).await?;
        std::mem::swap(&mut victim, &mut other);
    }
    Ok(done)
}

/// Waits until every VM of `names` runs with its guest ready, free of
/// operations, on `host` (or, with `elsewhere`, on any host but `host`).
async fn wait_ready_on(
    client: &Client,
    names: &[String],
    host: &str,
    elsewhere: bool,
    timeout: Duration,
) -> Result<(), BenchError> {
    let deadline = Instant::now() + timeout;
    for name in names {
        loop {
            let vm = client.get_vm(name).await.map_err(api("read a VM"))?;
            let on = vm
                .owner
                .as_deref()
                .is_some_and(|o| (o == host) != elsewhere);
            if on && vm.state == VmPowerState::Running && vm.guest.ready && vm.operation.is_none() {
                break;
            }
            if Instant::now() > deadline {
                return Err(BenchError::Timeout(format!(
                    "VM {name} ready {} {host} (it is {} on {:?})",
                    if elsewhere { "elsewhere than" } else { "on" },
                    vm.state,
                    vm.owner
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// Waits until the HA manager sees `host` connected.
async fn wait_connected(client: &Client, host: &str, timeout: Duration) -> Result<(), BenchError> {
    let deadline = Instant::now() + timeout;
    loop {
        let st = client
            .ha_status()
            .await
            .map_err(api("read the HA status"))?;
        if st
            .hosts
            .iter()
            .any(|h| h.name == host && h.state == HaHostState::Connected)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(BenchError::Timeout(format!("{host} to be connected again")));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs blocking process I/O (the lab's fault injection) without holding
/// up the async runtime's other work.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}
