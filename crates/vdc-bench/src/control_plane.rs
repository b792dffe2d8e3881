//! `vdc bench control-plane`: one `vdc server` carrying many simulated
//! hosts and VMs ([`crate::sim`]), measured from outside.
//!
//! Steps:
//! 1. seed the store (the embedded file, or a throwaway etcd) with the VM
//!    records; start `vdc server` on it;
//! 2. add every simulated host (`POST /api/v1/hosts`) and start its report
//!    loop: one report per host per second, staggered;
//! 3. for `--seconds`, open-loop load: `GET /api/v1/vms/<name>` (show) at
//!    `--rate` requests/s and `GET /api/v1/vms` (list) at `--list-rate`;
//!    each latency counts from the request's scheduled time, so a server
//!    that falls behind shows it;
//! 4. time the HA restart planning for one failed host's VMs (the pure
//!    decision: which VMs, in which order, on which host);
//! 5. read the server's resident memory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use tokio::sync::Mutex;
use vdc_store::Store;

use crate::ha_report::percentile;
use crate::sim;
use crate::BenchError;

/// Options of `vdc bench control-plane`.
#[derive(Debug, Clone, Args)]
pub struct ControlPlaneArgs {
    /// Simulated hosts.
    #[arg(long, default_value_t = 500)]
    pub hosts: usize,
    /// Simulated VMs (spread evenly over the hosts).
    #[arg(long, default_value_t = 10_000)]
    pub vms: usize,
    /// Show requests per second.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// List requests per second (each returns every VM).
    #[arg(long, default_value_t = 2)]
    pub list_rate: u32,
    /// Seconds of load.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// VMs of the failed host whose HA restart is planned.
    #[arg(long, default_value_t = 200)]
    pub failed_host_vms: usize,
    /// Store of the server: `redb` (embedded) or `etcd` (a throwaway
    /// single-member etcd, Debian package etcd-server).
    #[arg(long, default_value = "redb", value_parser = ["redb", "etcd"])]
    pub store: String,
    /// A run of seconds with small numbers (20 hosts, 400 VMs, 100 shows/s,
    /// 3 s), for CI.
    #[arg(long)]
    pub smoke: bool,
}

/// Latency figures of one kind of request, milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Requests answered.
    pub count: usize,
    /// Requests that failed.
    pub errors: usize,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    /// Store of the server.
    pub store: String,
    /// Simulated hosts.
    pub hosts: usize,
    /// Simulated VMs.
    pub vms: usize,
    /// Show requests per second asked.
    pub rate: u32,
    /// List requests per second asked.
    pub list_rate: u32,
    /// Seconds of load.
    pub seconds: u64,
    /// `GET /api/v1/vms/<name>`.
    pub show: Latency,
    /// `GET /api/v1/vms`.
    pub list: Latency,
    /// `POST /api/v1/agent/report` (one per host per second).
    pub report: Latency,
    /// VMs of the failed host planned for restart.
    pub ha_planned_vms: usize,
    /// Time to plan their restart (which, in which order, where), ms.
    pub ha_plan_ms: f64,
    /// Resident memory of the server after the load, MiB.
    pub server_rss_mib: f64,
}

fn latency(mut micros: Vec<u64>, errors: usize) -> Latency {
    micros.sort_unstable();
    let ms = |p| percentile(&micros, p).map_or(0.0, |v| v as f64 / 1000.0);
    Latency {
        count: micros.len(),
        errors,
        p50_ms: ms(50),
        p99_ms: ms(99),
    }
}

/// Latencies (µs) and errors of one request kind, shared by its tasks.
#[derive(Default)]
struct Samples {
    micros: Vec<u64>,
    errors: usize,
}

/// Runs the benchmark and prints its figures.
pub async fn run(mut a: ControlPlaneArgs, json: bool) -> Result<(), BenchError> {
    if a.smoke {
        (a.hosts, a.vms, a.rate, a.list_rate, a.seconds) = (20, 400, 100, 2, 3);
        a.failed_host_vms = 20;
    }
    if a.hosts == 0 || a.vms == 0 || a.rate == 0 || a.seconds == 0 {
        return Err(BenchError::Usage(
            "--hosts, --vms, --rate and --seconds must be positive".into(),
        ));
    }
    let figures = measure(&a).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&figures).map_err(|e| BenchError::Usage(e.to_string()))?
        );
    } else {
        print!("{}", table(&figures));
    }
    Ok(())
}

fn fail(what: &str) -> impl Fn(String) -> BenchError + '_ {
    move |e| BenchError::Usage(format!("{what}: {e}"))
}

async fn measure(a: &ControlPlaneArgs) -> Result<Figures, BenchError> {
    let work = tempfile::Builder::new()
        .prefix("vdc-bench-cp-")
        .tempdir()
        .map_err(|e| fail("work dir")(e.to_string()))?;
    let token = "bench-control-plane-token-0123456789";
    let token_file = work.path().join("token");
    std::fs::write(&token_file, token).map_err(|e| fail("token file")(e.to_string()))?;

    // 1. Seed the store, start the server on it.
    eprintln!("bench: seeding {} VM records ({})", a.vms, a.store);
    let mut etcd = None;
    let store_url = if a.store == "etcd" {
        let e = vdc_store_etcd::test_etcd::TestEtcd::start()
            .await
            .map_err(|e| fail("etcd")(e.to_string()))?;
        let store: Arc<dyn Store> = Arc::new(
            e.store("/vdc/")
                .await
                .map_err(|e| fail("etcd")(e.to_string()))?,
        );
        sim::seed(&store, a.hosts, a.vms)
            .await
            .map_err(fail("seed"))?;
        let url = format!("etcd://{}", e.endpoint());
        etcd = Some(e);
        url
    } else {
        let path = work.path().join("state.redb");
        let store: Arc<dyn Store> = Arc::new(
            vdc_store::RedbStore::open(&path)
                .await
                .map_err(|e| fail("store")(e.to_string()))?,
        );
        sim::seed(&store, a.hosts, a.vms)
            .await
            .map_err(fail("seed"))?;
        drop(store);
        format!("redb:{}", path.display())
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| fail("port")(e.to_string()))?
        .port();
    let exe = std::env::current_exe().map_err(|e| fail("vdc binary")(e.to_string()))?;
    let log = std::fs::File::create(work.path().join("server.log"))
        .map_err(|e| fail("server log")(e.to_string()))?;
    let mut server = tokio::process::Command::new(exe)
        .args(["server", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(work.path().join("server"))
        .arg("--token-file")
        .arg(&token_file)
        .args(["--store", &store_url, "--ha-disabled"])
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail("vdc server")(e.to_string()))?;
    let api = format!("http://127.0.0.1:{port}");
    let client = vdc_client::Client::new(&api, Some(token.to_string()));
    let started = Instant::now();
    while client.version().await.is_err() {
        let exited = matches!(server.try_wait(), Ok(Some(_)));
        if exited || started.elapsed() > Duration::from_secs(180) {
            let log = std::fs::read_to_string(work.path().join("server.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            return Err(BenchError::Usage(format!(
                "the server stopped or did not answer in 180 s; its log ends with:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "bench: server up in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // 2. Hosts and their report loops.
    eprintln!("bench: adding {} simulated hosts", a.hosts);
    let mut credentials = Vec::with_capacity(a.hosts);
    for h in 0..a.hosts {
        let c = client
            .add_host(&sim::host_name(h))
            .await
            .map_err(|source| BenchError::Api {
                what: "add a simulated host".into(),
                source,
            })?;
        credentials.push(c.credential);
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .build()
        .map_err(|e| fail("http client")(e.to_string()))?;
    // One round of reports first: hosts connected, records settled.
    for (h, credential) in credentials.iter().enumerate() {
        sim::post_report(&http, &api, credential, &sim::report(h, a.hosts, a.vms))
            .await
            .map_err(fail("first report"))?;
    }
    eprintln!(
        "bench: {} s of load: {} shows/s, {} lists/s, {} reports/s",
        a.seconds, a.rate, a.list_rate, a.hosts
    );
    let reports = Arc::new(Mutex::new(Samples::default()));
    let shows = Arc::new(Mutex::new(Samples::default()));
    let lists = Arc::new(Mutex::new(Samples::default()));
    let load = Duration::from_secs(a.seconds);
    let mut tasks = Vec::new();
    for (h, credential) in credentials.into_iter().enumerate() {
        let (http, api, out) = (http.clone(), api.clone(), reports.clone());
        let report = sim::report(h, a.hosts, a.vms);
        let offset = Duration::from_secs(1) * h as u32 / a.hosts as u32;
        tasks.push(tokio::spawn(async move {
            let start = tokio::time::Instant::now() + offset;
            let mut tick = tokio::time::interval_at(start, Duration::from_secs(1));
            let end = start + load;
            loop {
                let at = tick.tick().await;
                if at >= end {
                    return;
                }
                let r = sim::post_report(&http, &api, &credential, &report).await;
                let mut s = out.lock().await;
                match r {
                    Ok(_) => s.micros.push(at.elapsed().as_micros() as u64),
                    Err(_) => s.errors += 1,
                }
            }
        }));
    }
    // 3. Open-loop reads.
    let reads = |rate: u32, out: Arc<Mutex<Samples>>, show: bool| {
        let (http, api, token, vms) = (http.clone(), api.clone(), token.to_string(), a.vms);
        tokio::spawn(async move {
            let period = Duration::from_secs(1) / rate;
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let end = tokio::time::Instant::now() + load;
            let mut n: usize = 0;
            let mut inflight = Vec::new();
            loop {
                let at = tick.tick().await;
                if at >= end {
                    break;
                }
                n += 1;
                let url = if show {
                    format!(
                        "{api}/api/v1/vms/{}",
                        sim::vm_name(n.wrapping_mul(7919) % vms)
                    )
                } else {
                    format!("{api}/api/v1/vms")
                };
                let (http, token, out) = (http.clone(), token.clone(), out.clone());
                inflight.push(tokio::spawn(async move {
                    let r = http.get(url).bearer_auth(token).send().await;
                    let ok = match r {
                        Ok(resp) if resp.status().is_success() => resp.bytes().await.is_ok(),
                        _ => false,
                    };
                    let mut s = out.lock().await;
                    if ok {
                        s.micros.push(at.elapsed().as_micros() as u64);
                    } else {
                        s.errors += 1;
                    }
                }));
            }
            for t in inflight {
                let _ = t.await;
            }
        })
    };
    tasks.push(reads(a.rate, shows.clone(), true));
    if a.list_rate > 0 {
        tasks.push(reads(a.list_rate, lists.clone(), false));
    }
    for t in tasks {
        t.await.map_err(|e| fail("load task")(e.to_string()))?;
    }

    // 4. HA planning for host 0's VMs.
    let (ha_planned_vms, ha_plan_ms) = plan_failover(a.hosts, a.vms, a.failed_host_vms);

    // 5. Memory.
    let pid = server.id().unwrap_or(0);
    let server_rss_mib = rss_mib(pid);
    if let Err(e) = server.kill().await {
        eprintln!("bench: cannot stop the server: {e}");
    }
    drop(etcd);
    let take = |s: &Arc<Mutex<Samples>>| {
        let s = s.try_lock().map(|mut g| std::mem::take(&mut *g));
        s.map(|s| latency(s.micros, s.errors))
            .map_err(|e| fail("samples")(e.to_string()))
    };
    Ok(Figures {
        store: a.store.clone(),
        hosts: a.hosts,
        vms: a.vms,
        rate: a.rate,
        list_rate: a.list_rate,
        seconds: a.seconds,
        show: take(&shows)?,
        list: take(&lists)?,
        report: take(&reports)?,
        ha_planned_vms,
        ha_plan_ms,
        server_rss_mib,
    })
}

/// Plan the restart of a failed host's `failed` VMs on the other hosts,
/// among `vms` VMs on `hosts` hosts, as the HA manager decides it: the VMs
/// to restart in order ([`vdc_sched::ha::restart_plan`] over every
/// protected VM), then a host for each ([`vdc_sched::place`], memory
/// promised as it goes). Returns (VMs planned, milliseconds).
pub fn plan_failover(hosts: usize, vms: usize, failed: usize) -> (usize, f64) {
    use vdc_sched::ha::{HostVerdict, Protected, RestartPriority};
    let protected: Vec<Protected> = (0..vms.max(failed))
        .map(|i| {
            // The first `failed` VMs on host 0, the others on the rest.
            let host = if i < failed || hosts < 2 {
                0
            } else {
                1 + i % (hosts - 1)
            };
            let owner = sim::host_name(host);
            Protected {
                name: sim::vm_name(i),
                priority: RestartPriority::Medium,
                lost_and_free: owner == sim::host_name(0),
                owner,
                leaves_when_isolated: false,
            }
        })
        .collect();
    let mut caps: Vec<vdc_sched::HostCapacity> = (1..hosts)
        .map(|h| {
            let r = sim::report(h, hosts, vms);
            vdc_sched::HostCapacity {
                name: r.name,
                available: true,
                cpus: r.cpus,
                memory_mib: r.memory_mib,
                memory_free_mib: r.memory_free_mib,
                memory_pending_mib: 0,
                vcpus_committed: r.vms.len() as u32,
                datastores: vec!["shared".into()],
                cpu: None,
                switches: None,
            }
        })
        .collect();
    let failed = sim::host_name(0);
    let start = Instant::now();
    let plan = vdc_sched::ha::restart_plan(&protected, |h| {
        if h == failed {
            HostVerdict::Failed
        } else {
            HostVerdict::Connected
        }
    });
    let demand = vdc_sched::Demand {
        cpus: 1,
        memory_mib: sim::VM_MEMORY_MIB,
        datastores: vec!["shared".into()],
        cpu_model: None,
        switches: vec![],
    };
    let mut placed = 0;
    for _vm in &plan {
        if let Ok(host) = vdc_sched::place(&demand, &caps) {
            if let Some(c) = caps.iter_mut().find(|c| c.name == host) {
                c.memory_pending_mib += vdc_sched::footprint_mib(sim::VM_MEMORY_MIB);
                c.vcpus_committed += 1;
            }
            placed += 1;
        }
    }
    (placed, start.elapsed().as_secs_f64() * 1000.0)
}

/// Resident memory of process `pid`, MiB (0 if unknown).
fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The figures as a Markdown table.
pub fn table(f: &Figures) -> String {
    let row = |what: &str, l: &Latency| {
        format!(
            "| {what} | {} | {} | {:.1} | {:.1} |\n",
            l.count, l.errors, l.p50_ms, l.p99_ms
        )
    };
    let mut out = format!(
        "control plane on {} store: {} simulated hosts, {} simulated VMs, {} s of load\n\n",
        f.store, f.hosts, f.vms, f.seconds
    );
    out += "| request | answered | errors | p50 ms | p99 ms |\n|---|---|---|---|---|\n";
    out += &row(&format!("show VM ({}/s)", f.rate), &f.show);
    out += &row(&format!("list VMs ({}/s)", f.list_rate), &f.list);
    out += &row(&format!("host report ({}/s)", f.hosts), &f.report);
    out += &format!(
        "\nHA restart plan for a failed host's {} VMs: {:.1} ms\nserver memory (RSS): {:.0} MiB\n",
        f.ha_planned_vms, f.ha_plan_ms, f.server_rss_mib
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_every_vm_of_the_failed_host() {
        let (planned, _) = plan_failover(10, 400, 30);
        assert_eq!(planned, 30);
    }
}
