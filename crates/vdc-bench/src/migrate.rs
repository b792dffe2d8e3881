//! `vdc bench migrate`: vdc's live migration against libvirt's, in one run.
//!
//! Steps:
//!   1. a lab of its own with three hosts (`vdc_lab::up`): hosts 1 and 2
//!      take turns as source and destination, host 3 is where a client
//!      polls the guests;
//!   2. vdc's guest: a VM from the lab's template (the guest image), on
//!      host 1; libvirt's guest: the same image (a qcow2 overlay) as a
//!      libvirt domain with the same hardware, on a session libvirtd in
//!      host 1's namespace, with the second daemon in host 2's
//!      ([`crate::libvirt`]);
//!   3. for each workload, for each run, for each system: set the guest's
//!      load over its TCP service (`dirty ...`), start the poller on host 3
//!      (a UDP request every `--poll-ms`), migrate to the other host, wait
//!      until the poller hears the guest again, stop it; record QEMU's
//!      total time and downtime and the poller's longest gap; a migration
//!      that has not finished after `--timeout` seconds is cancelled and
//!      counted as not converged;
//!   4. print each run as it ends, then the medians and the ratios
//!      vdc/libvirt ([`crate::report`]);
//!   5. tear everything down (also after an error).
//!
//! Interleaving the systems run by run keeps both under the same machine
//! load (the machine is shared; absolute times move from run to run).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;

use crate::error::BenchError;
use crate::guest::{self, Poller};
use crate::libvirt::{self, LibvirtPeer};
use crate::qemu_pair::{self, QemuPair};
use crate::report::{self, Run, System, Workload};
use crate::vdc_side;

/// Options of `vdc bench migrate`.
#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    /// Migrations per workload and system (medians are taken over them).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub runs: u32,
    /// Workloads, comma-separated: `idle`, a rate in MiB/s, `max`.
    #[arg(long, default_value = "idle,100,max", value_delimiter = ',')]
    pub workloads: Vec<String>,
    /// Systems to measure, comma-separated: `vdc`, `vdc-tls` (the same
    /// guest, the stream over TLS), `libvirt`, and `qemu`
    /// (two bare QEMU processes with the settings of `--qemu-capabilities`
    /// and `--qemu-parameters`: a reference for tuning, not a peer).
    #[arg(long, default_value = "vdc,libvirt", value_delimiter = ',')]
    pub systems: Vec<String>,
    /// `qemu` system: migration capabilities to enable, comma-separated
    /// (e.g. `auto-converge,postcopy-ram`; with `postcopy-ram` it switches
    /// to post-copy after 2 s).
    #[arg(long, default_value = "")]
    pub qemu_capabilities: String,
    /// `qemu` system: migration parameters, `NAME=NUMBER,...` (e.g.
    /// `max-bandwidth=10000000000,downtime-limit=100`).
    #[arg(long, default_value = "")]
    pub qemu_parameters: String,
    /// Guest memory, MiB.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(64..=4096))]
    pub memory_mib: u32,
    /// Memory the dirtying program rewrites, MiB.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub buffer_mib: u32,
    /// Interval of the poller's requests, ms.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub poll_ms: u64,
    /// Longest wait for one migration, seconds; then it is cancelled.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(5..=3600))]
    pub timeout: u64,
    /// One idle migration of vdc only: a quick check that everything works.
    #[arg(long)]
    pub smoke: bool,
    /// Guest image (default: the lab's, built on demand).
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Lab id of the benchmark's lab (1–4 lower-case letters and digits).
    #[arg(long, default_value = "bnch")]
    pub lab_id: String,
    /// Directory for the lab's and the peer's state (removed at the end).
    #[arg(long, default_value = "/var/tmp/vdc-bench")]
    pub work_dir: PathBuf,
}

/// What the command line asked, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Runs per workload and system.
    pub runs: u32,
    /// Workloads in order.
    pub workloads: Vec<Workload>,
    /// Systems in order.
    pub systems: Vec<System>,
}

impl MigrateArgs {
    /// The plan, or a usage error naming what was wrong.
    pub fn plan(&self) -> Result<Plan, BenchError> {
        if self.smoke {
            return Ok(Plan {
                runs: 1,
                workloads: vec![Workload::Idle],
                systems: vec![System::Vdc],
            });
        }
        let workloads = self
            .workloads
            .iter()
            .map(|w| {
                Workload::parse(w.trim()).ok_or_else(|| {
                    BenchError::Usage(format!(
                        "unknown workload '{w}': use idle, max or a rate in MiB/s (1-99999)"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let systems = self
            .systems
            .iter()
            .map(|s| match s.trim() {
                "vdc" => Ok(System::Vdc),
                "vdc-tls" => Ok(System::VdcTls),
                "libvirt" => Ok(System::Libvirt),
                "qemu" => Ok(System::Qemu),
                other => Err(BenchError::Usage(format!(
                    "unknown system '{other}': use vdc, vdc-tls, libvirt, qemu"
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if workloads.is_empty() || systems.is_empty() {
            return Err(BenchError::Usage(
                "give at least one workload and one system".into(),
            ));
        }
        Ok(Plan {
            runs: self.runs,
            workloads,
            systems,
        })
    }
}

/// The benchmark's figures, as printed with `-o json`.
#[derive(Debug, serde::Serialize)]
pub struct Figures {
    /// Every migration.
    pub runs: Vec<Run>,
    /// Medians per workload and system.
    pub summaries: Vec<report::Summary>,
    /// vdc/libvirt per workload.
    pub ratios: Vec<report::Ratio>,
    /// vdc with TLS / without, per workload (`vdc,vdc-tls`).
    pub tls_cost: Vec<crate::tls_cost::TlsCost>,
}

/// Runs the benchmark.
pub async fn run(args: MigrateArgs, json: bool) -> Result<(), BenchError> {
    let plan = args.plan()?;
    let work = args.work_dir.join(std::process::id().to_string());
    mkdir(&work)?;
    let exe = std::env::current_exe().map_err(|source| BenchError::File {
        path: "/proc/self/exe".into(),
        source,
    })?;
    let port = free_port()?;
    let spec = vdc_lab::LabSpec {
        lab_id: args.lab_id.clone(),
        hosts: 3,
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
    eprintln!("bench: starting lab '{}' (3 hosts)", spec.lab_id);
    let info = vdc_lab::up(&spec).await?;
    let mut peer = None;
    let mut pair = None;
    let outcome = measure(&args, &plan, &info, &work, &mut peer, &mut pair).await;
    if let Some(p) = &peer {
        p.stop();
    }
    if let Some(p) = &mut pair {
        QemuPair::stop(p);
    }
    if let Err(e) = vdc_lab::down(&spec.lab_id, &spec.state_root).await {
        eprintln!("bench: tearing down the lab: {e}");
    }
    if let Err(e) = std::fs::remove_dir_all(&work) {
        eprintln!("bench: removing {}: {e}", work.display());
    }
    let runs = outcome?;
    let summaries = report::summarize(&runs);
    let ratios = report::ratios(&summaries);
    let tls_cost = crate::tls_cost::tls_costs(&summaries);
    if json {
        let figures = Figures {
            runs,
            summaries,
            ratios,
            tls_cost,
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&figures).unwrap_or_default()
        );
    } else {
        print!("{}", report::render(&summaries, &ratios));
        print!("{}", crate::tls_cost::render(&tls_cost));
    }
    Ok(())
}

/// Where each guest is and how to reach it.
struct Guests {
    vdc: Option<String>,
    libvirt: Option<String>,
    qemu: Option<String>,
    /// libvirt's domain runs on the `src` daemon (else on `dst`).
    libvirt_on_src: bool,
    /// vdc's VM runs on host 1 (else on host 2).
    vdc_on_first: bool,
}

async fn measure(
    args: &MigrateArgs,
    plan: &Plan,
    info: &vdc_lab::LabInfo,
    work: &Path,
    peer_slot: &mut Option<LibvirtPeer>,
    pair_slot: &mut Option<QemuPair>,
) -> Result<Vec<Run>, BenchError> {
    let hosts = &info.hosts;
    let (h1, h2, h3) = (&hosts[0], &hosts[1], &hosts[2]);
    let client = vdc_lab::client(info)?;
    let mut guests = Guests {
        vdc: None,
        libvirt: None,
        qemu: None,
        libvirt_on_src: true,
        vdc_on_first: true,
    };
    if plan.systems.contains(&System::Vdc) || plan.systems.contains(&System::VdcTls) {
        eprintln!("bench: vdc guest on {}", h1.name);
        let addr = vdc_side::create(&client, &h1.name, args.memory_mib).await?;
        blocking(|| guest::udp_probe(&h3.netns, &addr, Duration::from_secs(120)))?;
        guests.vdc = Some(addr);
    }
    if plan.systems.contains(&System::Libvirt) {
        eprintln!("bench: libvirt guest on {}", h1.name);
        let image = template_image(args)?;
        let peer = blocking(|| {
            LibvirtPeer::start(
                &work.join("libvirt"),
                (&h1.netns, &h1.address, vdc_lab::plan::HOST_BRIDGE),
                (&h2.netns, &h2.address, vdc_lab::plan::HOST_BRIDGE),
            )
        })?;
        let peer = peer_slot.insert(peer);
        let addr = guest_address(&info.subnet, 240)?;
        blocking(|| libvirt::boot_guest(peer, work, &image, args.memory_mib, &addr, &info.subnet))?;
        blocking(|| guest::udp_probe(&h3.netns, &addr, Duration::from_secs(180)))?;
        guests.libvirt = Some(addr);
    }
    if plan.systems.contains(&System::Qemu) {
        let settings = qemu_pair::Settings::parse(&args.qemu_capabilities, &args.qemu_parameters)?;
        eprintln!(
            "bench: bare QEMU guest on {} ({})",
            h1.name,
            settings.describe()
        );
        let dir = work.join("qemu");
        mkdir(&dir)?;
        let disk = dir.join("disk.qcow2");
        let image = template_image(args)?;
        blocking(|| {
            run_tool(
                "qemu-img",
                &[
                    "create",
                    "-q",
                    "-f",
                    "qcow2",
                    "-F",
                    "qcow2",
                    "-b",
                    &image.display().to_string(),
                    &disk.display().to_string(),
                ],
            )
        })?;
        let addr = guest_address(&info.subnet, 241)?;
        let prefix = info.subnet.split_once('/').map_or("24", |(_, p)| p);
        let side = |h: &vdc_lab::HostStatus| qemu_pair::Side {
            netns: h.netns.clone(),
            address: h.address.clone(),
        };
        let pair = blocking(|| {
            QemuPair::start(
                &dir,
                [side(h1), side(h2)],
                vdc_lab::plan::HOST_BRIDGE,
                &disk,
                args.memory_mib,
                &format!("{addr}/{prefix}"),
                vdc_types::vm::DEFAULT_MACHINE_TYPE,
                vdc_types::vm::DEFAULT_CPU_MODEL,
                settings,
            )
        })?;
        *pair_slot = Some(pair);
        blocking(|| guest::udp_probe(&h3.netns, &addr, Duration::from_secs(180)))?;
        guests.qemu = Some(addr);
    }
    let peer = peer_slot.as_ref();
    let mut runs = Vec::new();
    for &workload in &plan.workloads {
        for i in 0..plan.runs {
            for &system in &plan.systems {
                let addr = match system {
                    System::Vdc | System::VdcTls => guests.vdc.clone(),
                    System::Libvirt => guests.libvirt.clone(),
                    System::Qemu => guests.qemu.clone(),
                }
                .ok_or(BenchError::Thread)?;
                let answer = blocking(|| {
                    guest::command(&h3.netns, &addr, &workload.command(args.buffer_mib))
                })?;
                if !answer.starts_with("ok") {
                    return Err(BenchError::GuestRefused {
                        command: workload.command(args.buffer_mib),
                        answer,
                    });
                }
                // The guest's own measure of its dirty rate (its stats are
                // rewritten once a second).
                let dirty_mib_s = if workload == Workload::Idle {
                    None
                } else {
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                    blocking(|| guest::command(&h3.netns, &addr, "dirty"))
                        .ok()
                        .and_then(|s| report::stat(&s, "mib_s"))
                };
                let poller = Poller::start(&h3.netns, &addr, Duration::from_millis(args.poll_ms));
                // Half a second of answers before the move: the gap
                // measured is then the move's, not the poller's start.
                tokio::time::sleep(Duration::from_millis(500)).await;
                let timeout = Duration::from_secs(args.timeout);
                let asked = poller.elapsed();
                let mut run = match system {
                    System::Vdc | System::VdcTls => {
                        let to = if guests.vdc_on_first {
                            &h2.name
                        } else {
                            &h1.name
                        };
                        let tls = system == System::VdcTls;
                        let moved = vdc_side::migrate(&client, to, tls, timeout).await?;
                        if moved.converged {
                            guests.vdc_on_first = !guests.vdc_on_first;
                        }
                        Run {
                            system,
                            workload,
                            dirty_mib_s: None,
                            converged: moved.converged,
                            total_ms: moved.outcome.as_ref().map(|o| o.total_ms as f64),
                            downtime_ms: moved.outcome.as_ref().map(|o| o.downtime_ms as f64),
                            gap_ms: None,
                            gap_at_ms: None,
                            policy_steps: moved.policy_steps,
                            error: moved.error,
                        }
                    }
                    System::Libvirt => {
                        let peer = peer.ok_or(BenchError::Thread)?;
                        let (from, to) = if guests.libvirt_on_src {
                            (&peer.src, &peer.dst)
                        } else {
                            (&peer.dst, &peer.src)
                        };
                        let run = libvirt::migrate_run(from, to, workload, timeout).await;
                        if run.converged {
                            guests.libvirt_on_src = !guests.libvirt_on_src;
                        }
                        run
                    }
                    System::Qemu => {
                        let mut pair = pair_slot.take().ok_or(BenchError::Thread)?;
                        let moved = tokio::task::spawn_blocking(move || {
                            let m = pair.migrate(timeout);
                            (pair, m)
                        })
                        .await
                        .map_err(|_| BenchError::Thread)?;
                        *pair_slot = Some(moved.0);
                        let m = moved.1?;
                        Run {
                            system,
                            workload,
                            dirty_mib_s: None,
                            converged: m.converged,
                            total_ms: m.total_ms,
                            downtime_ms: m.downtime_ms,
                            gap_ms: None,
                            gap_at_ms: None,
                            policy_steps: m.steps,
                            error: m.error,
                        }
                    }
                };
                run.dirty_mib_s = dirty_mib_s;
                // The guest answers again from its new host (or, after a
                // failure, from the old one).
                let done = poller.elapsed();
                let deadline = Instant::now() + Duration::from_secs(30);
                while poller.last_answer().is_none_or(|t| t <= done) && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                let log = blocking(|| poller.stop())?;
                run.gap_ms = report::longest_gap(&log.answers).map(|g| g.as_secs_f64() * 1000.0);
                run.gap_at_ms = report::longest_gap_start(&log.answers)
                    .map(|t| (t.as_secs_f64() - asked.as_secs_f64()) * 1000.0);
                if log.answers.last().is_none_or(|t| *t <= done) {
                    run.converged = false;
                    run.error
                        .get_or_insert_with(|| "the guest stopped answering".into());
                }
                if log.boot_ids.len() > 1 {
                    run.converged = false;
                    run.error = Some(format!("the guest rebooted: boot ids {:?}", log.boot_ids));
                }
                eprintln!(
                    "bench: {workload}, run {}, {system}: {}",
                    i + 1,
                    describe(&run)
                );
                runs.push(run);
            }
        }
    }
    Ok(runs)
}

fn describe(r: &Run) -> String {
    let ms = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.0} ms"));
    let rate = r
        .dirty_mib_s
        .map_or(String::new(), |d| format!(" (guest dirtying {d:.0} MiB/s)"));
    if r.converged {
        format!(
            "total {}, downtime {}, longest gap {} (from {} after the request){rate}{}",
            ms(r.total_ms),
            ms(r.downtime_ms),
            ms(r.gap_ms),
            ms(r.gap_at_ms),
            if r.policy_steps.is_empty() {
                String::new()
            } else {
                format!("; steps: {}", r.policy_steps.join(", "))
            }
        )
    } else {
        format!(
            "did not complete: {}",
            r.error.as_deref().unwrap_or("unknown")
        )
    }
}

/// Runs slow process or network I/O (daemons, guest boots, a thread that
/// talks to a guest) without holding up the async runtime's other work.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// The image the lab imported as its template.
fn template_image(args: &MigrateArgs) -> Result<PathBuf, BenchError> {
    let path = args
        .image
        .clone()
        .unwrap_or_else(|| PathBuf::from(vdc_lab::lifecycle::DEFAULT_IMAGE));
    std::fs::canonicalize(&path).map_err(|source| BenchError::File { path, source })
}

/// A guest address outside vdc's pool: `.last` of the lab subnet (240 for
/// libvirt's guest, 241 for the bare QEMU one).
fn guest_address(subnet: &str, last: u8) -> Result<String, BenchError> {
    let (net, _) = subnet
        .split_once('/')
        .ok_or_else(|| BenchError::BadAddress(subnet.into()))?;
    let mut octets: Vec<&str> = net.split('.').collect();
    if octets.len() != 4 {
        return Err(BenchError::BadAddress(subnet.into()));
    }
    let last = last.to_string();
    octets[3] = &last;
    Ok(octets.join("."))
}

pub(crate) fn run_tool(program: &str, args: &[&str]) -> Result<(), BenchError> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .map_err(|source| BenchError::Spawn {
            program: program.into(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(BenchError::Command {
            program: format!("{program} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

fn mkdir(path: &Path) -> Result<(), BenchError> {
    std::fs::create_dir_all(path).map_err(|source| BenchError::File {
        path: path.to_path_buf(),
        source,
    })
}

fn free_port() -> Result<u16, BenchError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|source| BenchError::File {
            path: "127.0.0.1:0".into(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: MigrateArgs,
    }

    fn plan(argv: &[&str]) -> Result<Plan, BenchError> {
        let mut full = vec!["bench"];
        full.extend_from_slice(argv);
        Cli::try_parse_from(full)
            .map_err(|e| BenchError::Usage(e.to_string()))?
            .args
            .plan()
    }

    #[test]
    fn the_default_plan_is_three_workloads_two_systems_three_runs() {
        let p = plan(&[]).unwrap();
        assert_eq!(p.runs, 3);
        assert_eq!(
            p.workloads,
            [Workload::Idle, Workload::Rate(100), Workload::FlatOut]
        );
        assert_eq!(p.systems, [System::Vdc, System::Libvirt]);
        let smoke = plan(&["--smoke"]).unwrap();
        assert_eq!(
            (smoke.runs, smoke.workloads, smoke.systems),
            (1, vec![Workload::Idle], vec![System::Vdc])
        );
    }

    #[test]
    fn bad_plans_say_what_was_wrong() {
        let e = plan(&["--workloads", "idle,fast"]).unwrap_err().to_string();
        assert!(e.contains("unknown workload 'fast'"), "{e}");
        let e = plan(&["--systems", "xen"]).unwrap_err().to_string();
        assert!(e.contains("unknown system 'xen'"), "{e}");
        assert!(plan(&["--runs", "0"]).is_err());
    }

    #[test]
    fn the_libvirt_guest_sits_outside_the_vm_pool() {
        assert_eq!(guest_address("10.77.9.0/24", 240).unwrap(), "10.77.9.240");
        assert!(guest_address("nonsense", 240).is_err());
    }
}
