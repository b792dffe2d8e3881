//! The peer: two libvirt daemons on one machine, each in a lab host's
//! network namespace, so one domain can be moved with plain
//! `virsh migrate --live` and libvirt's default settings.
//!
//! Steps of [`LibvirtPeer::start`]:
//!   1. per side (`src` in one host's namespace, `dst` in another's): a
//!      directory of its own (home, runtime, config, cache, data), a
//!      `libvirtd.conf` with a distinct `host_uuid` (libvirt refuses to
//!      migrate between daemons reporting the same host), all owned by user
//!      `nobody`;
//!   2. a tap `lvb0` owned by `nobody` on the host's VM bridge in each
//!      namespace (the same name on both sides, so the domain's XML is the
//!      same on both), used by the domain as `<interface type='ethernet'>`
//!      with `managed='no'`: a session daemon cannot create taps itself;
//!   3. `libvirtd` in session mode as `nobody` inside the namespace
//!      (`ip netns exec`, `setpriv`), with a clean environment pointing the
//!      XDG directories at that side's directory; wait for its socket.
//!
//! The domain ([`domain_xml`]) is vdc's guest, hardware for hardware: the
//! same image (a qcow2 overlay on it), `type='qemu'` (TCG), the same machine
//! type and CPU model, 1 vCPU, virtio disk and NIC, the guest's
//! configuration in SMBIOS OEM strings. A migration is
//! `virsh migrate --live --unsafe DOMAIN DST --migrateuri tcp://DST_ADDR`:
//! `--unsafe` only skips libvirt's check that the disk sits on a shared
//! file system it recognises (both daemons see the same file here), and the
//! migration URI only names the destination's address; every migration
//! setting (bandwidth, downtime limit, capabilities) stays libvirt's
//! default. QEMU's own figures are read on the destination with
//! `virsh domjobinfo --completed --keep-completed` ([`parse_jobinfo`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::BenchError;
use crate::report::{Run, System, Workload};

/// The tap each side's domain uses.
pub const TAP: &str = "lvb0";
/// The domain's name.
pub const DOMAIN: &str = "bench-libvirt";

/// One libvirt daemon: its side's directory and namespace.
#[derive(Debug, Clone)]
pub struct Daemon {
    /// `src` or `dst`.
    pub side: &'static str,
    /// Its directory.
    pub dir: PathBuf,
    /// The network namespace it runs in.
    pub netns: String,
    /// The host address of that namespace (for the migration stream).
    pub address: String,
    pid: Option<u32>,
}

impl Daemon {
    /// Its connection URI.
    pub fn uri(&self) -> String {
        format!(
            "qemu+unix:///session?socket={}/run/libvirt/libvirt-sock",
            self.dir.display()
        )
    }

    fn env(&self) -> Vec<String> {
        let d = self.dir.display();
        vec![
            "env".into(),
            "-i".into(),
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin".into(),
            format!("HOME={d}/home"),
            format!("XDG_RUNTIME_DIR={d}/run"),
            format!("XDG_CONFIG_HOME={d}/config"),
            format!("XDG_CACHE_HOME={d}/cache"),
            format!("XDG_DATA_HOME={d}/data"),
        ]
    }

    /// `ip netns exec NS setpriv (as nobody) env -i ... PROGRAM`.
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns]);
        c.args([
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
        ]);
        c.args(self.env());
        c.arg(program);
        c
    }

    /// Runs `virsh -c URI ARGS...` against this daemon.
    pub fn virsh(&self, args: &[&str]) -> Result<String, BenchError> {
        let mut c = self.command("virsh");
        c.args(["-c", &self.uri()]);
        c.args(args);
        run(c, &format!("virsh {}", args.join(" ")))
    }
}

/// The two daemons.
pub struct LibvirtPeer {
    /// The daemon a domain starts on.
    pub src: Daemon,
    /// The other one.
    pub dst: Daemon,
}

fn run(mut c: Command, what: &str) -> Result<String, BenchError> {
    let out = c
        .stdin(Stdio::null())
        .output()
        .map_err(|source| BenchError::Spawn {
            program: what.to_string(),
            source,
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(6).collect();
        return Err(BenchError::Command {
            program: what.to_string(),
            stderr: tail.into_iter().rev().collect::<Vec<_>>().join(" / "),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn sh(args: &[&str]) -> Result<String, BenchError> {
    let mut c = Command::new(args[0]);
    c.args(&args[1..]);
    run(c, &args.join(" "))
}

fn write(path: &Path, text: &str) -> Result<(), BenchError> {
    std::fs::write(path, text).map_err(|source| BenchError::File {
        path: path.to_path_buf(),
        source,
    })
}

/// The host UUIDs of the two sides (any two distinct ones do).
const HOST_UUIDS: [&str; 2] = [
    "6f1c0b1e-5a0d-4c55-9d0e-7a0000000001",
    "6f1c0b1e-5a0d-4c55-9d0e-7a0000000002",
];

impl LibvirtPeer {
    /// Starts both daemons under `dir`; `src`/`dst` are `(netns, address,
    /// bridge)` of two lab hosts.
    pub fn start(
        dir: &Path,
        src: (&str, &str, &str),
        dst: (&str, &str, &str),
    ) -> Result<LibvirtPeer, BenchError> {
        let mut daemons = Vec::new();
        for (i, (side, (netns, address, bridge))) in
            [("src", src), ("dst", dst)].into_iter().enumerate()
        {
            let d = dir.join(side);
            for sub in ["home", "run", "config/libvirt", "cache", "data"] {
                std::fs::create_dir_all(d.join(sub)).map_err(|source| BenchError::File {
                    path: d.join(sub),
                    source,
                })?;
            }
            write(
                &d.join("config/libvirt/libvirtd.conf"),
                &format!("host_uuid = \"{}\"\n", HOST_UUIDS[i]),
            )?;
            sh(&["chown", "-R", "nobody:nogroup", &d.display().to_string()])?;
            sh(&["chmod", "755", &dir.display().to_string()])?;
            sh(&["chmod", "700", &d.join("run").display().to_string()])?;
            // The tap, owned by nobody, on the host's VM bridge.
            // A tap left by an earlier run that was killed goes first.
            if sh(&["ip", "-n", netns, "link", "show", TAP]).is_ok() {
                sh(&["ip", "-n", netns, "link", "del", TAP])?;
            }
            sh(&[
                "ip", "-n", netns, "tuntap", "add", "dev", TAP, "mode", "tap", "user", "nobody",
                "vnet_hdr",
            ])?;
            sh(&["ip", "-n", netns, "link", "set", TAP, "master", bridge])?;
            sh(&["ip", "-n", netns, "link", "set", TAP, "up"])?;
            let mut daemon = Daemon {
                side,
                dir: d.clone(),
                netns: netns.to_string(),
                address: address.to_string(),
                pid: None,
            };
            let log = std::fs::File::create(d.join("libvirtd.log")).map_err(|source| {
                BenchError::File {
                    path: d.join("libvirtd.log"),
                    source,
                }
            })?;
            let log2 = log.try_clone().map_err(|source| BenchError::File {
                path: d.join("libvirtd.log"),
                source,
            })?;
            let child = daemon
                .command("/usr/sbin/libvirtd")
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log2)
                .spawn()
                .map_err(|source| BenchError::Spawn {
                    program: "libvirtd (is libvirt installed? scripts/setup.sh --bench-deps)"
                        .into(),
                    source,
                })?;
            daemon.pid = Some(child.id());
            daemons.push(daemon);
        }
        let dst = daemons.pop().ok_or(BenchError::Thread)?;
        let src = daemons.pop().ok_or(BenchError::Thread)?;
        let peer = LibvirtPeer { src, dst };
        for d in [&peer.src, &peer.dst] {
            let sock = d.dir.join("run/libvirt/libvirt-sock");
            let deadline = Instant::now() + Duration::from_secs(30);
            while !sock.exists() {
                if Instant::now() > deadline {
                    return Err(BenchError::Timeout(format!(
                        "libvirtd ({}) to create {}",
                        d.side,
                        sock.display()
                    )));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(peer)
    }

    /// Stops both daemons (and the domain, if any), removes the taps.
    pub fn stop(&self) {
        for d in [&self.src, &self.dst] {
            // The domain runs on one side only.
            let running = d
                .virsh(&["list", "--name"])
                .is_ok_and(|names| names.lines().any(|n| n.trim() == DOMAIN));
            if running {
                if let Err(e) = d.virsh(&["destroy", DOMAIN]) {
                    eprintln!("libvirt {}: destroy: {e}", d.side);
                }
            }
            if let Some(pid) = d.pid {
                // The pid is that of `ip netns exec`, which execs down to
                // libvirtd: the same process.
                if let Err(e) = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                ) {
                    eprintln!("libvirt {}: stopping libvirtd {pid}: {e}", d.side);
                }
            }
            if let Err(e) = sh(&["ip", "-n", &d.netns, "link", "del", TAP]) {
                eprintln!("libvirt {}: removing tap: {e}", d.side);
            }
        }
    }
}

/// The benchmark domain: `memory_mib`, 1 vCPU, on `disk` (a qcow2),
/// configured like a vdc VM (`hostname`, `ip` as `ADDR/PREFIX`).
pub fn domain_xml(
    disk: &Path,
    memory_mib: u32,
    hostname: &str,
    ip: &str,
    machine: &str,
    cpu_model: &str,
) -> String {
    format!(
        r#"<domain type='qemu'>
  <name>{DOMAIN}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <sysinfo type='smbios'>
    <oemStrings>
      <entry>vdc.hostname={hostname}</entry>
      <entry>vdc.ip={ip}</entry>
    </oemStrings>
  </sysinfo>
  <os>
    <type arch='x86_64' machine='{machine}'>hvm</type>
    <smbios mode='sysinfo'/>
    <boot dev='hd'/>
  </os>
  <features><acpi/></features>
  <cpu mode='custom' match='exact' check='none'>
    <model fallback='forbid'>{cpu_model}</model>
  </cpu>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='ethernet'>
      <target dev='{TAP}' managed='no'/>
      <model type='virtio'/>
    </interface>
    <serial type='pty'/>
    <memballoon model='none'/>
  </devices>
</domain>
"#,
        disk = disk.display()
    )
}

/// QEMU's figures of a completed migration, from `virsh domjobinfo
/// --completed`: (total time ms, downtime ms).
pub fn parse_jobinfo(text: &str) -> Option<(f64, f64)> {
    let field = |name: &str| {
        text.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?.trim_start().strip_prefix(':')?;
            rest.split_whitespace().next()?.parse::<f64>().ok()
        })
    };
    Some((field("Time elapsed")?, field("Total downtime")?))
}

/// One `virsh migrate --live` from `from` to `to`, aborted after
/// `timeout`, with QEMU's figures read on the destination.
pub async fn migrate_run(from: &Daemon, to: &Daemon, workload: Workload, timeout: Duration) -> Run {
    let mut run = Run {
        system: System::Libvirt,
        workload,
        dirty_mib_s: None,
        converged: false,
        total_ms: None,
        downtime_ms: None,
        gap_ms: None,
        gap_at_ms: None,
        policy_steps: Vec::new(),
        error: None,
    };
    let (f, t) = (from.clone(), to.clone());
    let job = tokio::task::spawn_blocking(move || {
        f.virsh(&[
            "migrate",
            "--live",
            "--unsafe",
            DOMAIN,
            &t.uri(),
            "--migrateuri",
            &format!("tcp://{}", t.address),
        ])
    });
    let outcome = match tokio::time::timeout(timeout, job).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(BenchError::Thread),
        Err(_) => {
            let f = from.clone();
            match tokio::task::spawn_blocking(move || f.virsh(&["domjobabort", DOMAIN])).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => eprintln!("bench: aborting the libvirt migration: {e}"),
                Err(e) => eprintln!("bench: aborting the libvirt migration: {e}"),
            }
            run.error = Some(format!("not done after {} s, aborted", timeout.as_secs()));
            return run;
        }
    };
    if let Err(e) = outcome {
        run.error = Some(e.to_string());
        return run;
    }
    run.converged = true;
    let t = to.clone();
    let info = tokio::task::spawn_blocking(move || {
        t.virsh(&["domjobinfo", DOMAIN, "--completed", "--keep-completed"])
    })
    .await;
    match info {
        Ok(Ok(text)) => {
            if let Some((total, down)) = parse_jobinfo(&text) {
                run.total_ms = Some(total);
                run.downtime_ms = Some(down);
            }
        }
        Ok(Err(e)) => run.error = Some(format!("domjobinfo: {e}")),
        Err(e) => run.error = Some(format!("domjobinfo: {e}")),
    }
    run
}

/// Creates the domain on the `src` daemon: a qcow2 overlay of `image` in
/// `work/libvirt`, vdc's guest hardware ([`domain_xml`]).
pub fn boot_guest(
    peer: &LibvirtPeer,
    work: &Path,
    image: &Path,
    memory_mib: u32,
    addr: &str,
    subnet: &str,
) -> Result<(), BenchError> {
    let dir = work.join("libvirt");
    let disk = dir.join("disk.qcow2");
    let prefix = subnet.split_once('/').map_or("24", |(_, p)| p);
    crate::migrate::run_tool(
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
    )?;
    let xml = domain_xml(
        &disk,
        memory_mib,
        "bench-libvirt",
        &format!("{addr}/{prefix}"),
        vdc_types::vm::DEFAULT_MACHINE_TYPE,
        // libvirt names QEMU's versioned CPU models without the version.
        vdc_types::vm::DEFAULT_CPU_MODEL.trim_end_matches("-v1"),
    );
    let xml_path = dir.join("domain.xml");
    std::fs::write(&xml_path, xml).map_err(|source| BenchError::File {
        path: xml_path.clone(),
        source,
    })?;
    crate::migrate::run_tool(
        "chown",
        &[
            "nobody:nogroup",
            &disk.display().to_string(),
            &xml_path.display().to_string(),
        ],
    )?;
    peer.src
        .virsh(&["create", &xml_path.display().to_string()])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobinfo_gives_total_and_downtime() {
        let text = "Job type:         Completed\n\
                    Operation:        Incoming migration\n\
                    Time elapsed:     873          ms\n\
                    Time elapsed w/o network: 870 ms\n\
                    Data processed:   262.503 MiB\n\
                    Total downtime:   48           ms\n\
                    Downtime w/o network: 45     ms\n";
        assert_eq!(parse_jobinfo(text), Some((873.0, 48.0)));
        assert_eq!(parse_jobinfo("Job type: None\n"), None);
    }

    #[test]
    fn the_domain_is_vdcs_guest_hardware() {
        let xml = domain_xml(
            Path::new("/d/disk.qcow2"),
            256,
            "lv",
            "10.0.0.240/24",
            "pc-q35-10.0",
            "Nehalem",
        );
        for want in [
            "<domain type='qemu'>",
            "<memory unit='MiB'>256</memory>",
            "<vcpu>1</vcpu>",
            "machine='pc-q35-10.0'",
            "<model fallback='forbid'>Nehalem</model>",
            "<entry>vdc.ip=10.0.0.240/24</entry>",
            "<target dev='lvb0' managed='no'/>",
            "<source file='/d/disk.qcow2'/>",
        ] {
            assert!(xml.contains(want), "{want} missing in\n{xml}");
        }
    }
}
