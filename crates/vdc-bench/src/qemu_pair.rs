//! A reference beside the two systems: the same guest moved between two
//! bare QEMU processes driven over QMP with chosen migration settings, as
//! vdc's agents would drive them but without vdc around. It tells what a
//! setting (bandwidth, downtime limit, auto-converge, post-copy, multifd)
//! does to downtime and convergence on this machine, apart from
//! orchestration: the figures a live-migration policy is tuned against.
//!
//! Steps of one move ([`QemuPair::migrate`]):
//!   1. start the destination QEMU in the other host's namespace with
//!      `-incoming defer` (same command line, persistent tap `qmb0` on that
//!      host's bridge, the same disk overlay);
//!   2. on both: `migrate-set-capabilities` and `migrate-set-parameters`
//!      with the chosen settings; on the destination `migrate-incoming`;
//!   3. `migrate` on the source; poll `query-migrate` every 20 ms; with
//!      post-copy allowed, `migrate-start-postcopy` after `postcopy_after`;
//!   4. on completion read `total-time` and `downtime`, stop the source
//!      QEMU; the destination runs on by itself (no `-S`: it resumes the
//!      moment the stream ends).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::error::BenchError;

/// The tap each side's QEMU uses.
pub const TAP: &str = "qmb0";
/// Port the destination listens on for the stream.
const PORT: u16 = 49_777;

/// Migration settings for the bare QEMU pair.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings {
    /// Capabilities to enable (`auto-converge`, `postcopy-ram`, `multifd`…).
    pub capabilities: Vec<String>,
    /// `migrate-set-parameters` arguments (numbers), e.g. `max-bandwidth`.
    pub parameters: Vec<(String, u64)>,
    /// With `postcopy-ram`: switch to post-copy after this long.
    pub postcopy_after: Option<Duration>,
}

impl Settings {
    /// Parses `cap,cap,...` and `key=value,...` (numbers).
    pub fn parse(caps: &str, params: &str) -> Result<Settings, BenchError> {
        let capabilities: Vec<String> = caps
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(String::from)
            .collect();
        let mut parameters = Vec::new();
        for kv in params.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = kv.split_once('=').ok_or_else(|| {
                BenchError::Usage(format!("QEMU parameter '{kv}': write it as NAME=NUMBER"))
            })?;
            let v = v.parse::<u64>().map_err(|_| {
                BenchError::Usage(format!("QEMU parameter '{kv}': the value must be a number"))
            })?;
            parameters.push((k.to_string(), v));
        }
        let postcopy_after = capabilities
            .iter()
            .any(|c| c == "postcopy-ram")
            .then_some(Duration::from_secs(2));
        Ok(Settings {
            capabilities,
            parameters,
            postcopy_after,
        })
    }

    /// A short description, e.g. `max-bandwidth=0 + auto-converge`.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .parameters
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        parts.extend(self.capabilities.iter().cloned());
        if parts.is_empty() {
            "QEMU defaults".into()
        } else {
            parts.join(" + ")
        }
    }
}

/// One side: a host namespace, its address.
#[derive(Debug, Clone)]
pub struct Side {
    /// Network namespace.
    pub netns: String,
    /// Host address (the stream's destination).
    pub address: String,
}

/// Two hosts and the QEMU currently running the guest.
pub struct QemuPair {
    sides: [Side; 2],
    dir: PathBuf,
    argv: Vec<String>,
    running: Option<(usize, Child)>,
    settings: Settings,
}

fn qmp_err(what: &'static str) -> impl Fn(std::io::Error) -> BenchError {
    move |source| BenchError::Guest {
        addr: "QMP".into(),
        what,
        source,
    }
}

/// A QMP connection: greeting read, capabilities negotiated.
struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    fn connect(path: &Path) -> Result<Qmp, BenchError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => return Err(qmp_err("connect")(e)),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(qmp_err("set timeout"))?;
        let writer = stream.try_clone().map_err(qmp_err("clone"))?;
        let mut q = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        let mut greeting = String::new();
        q.reader
            .read_line(&mut greeting)
            .map_err(qmp_err("greeting"))?;
        q.cmd("qmp_capabilities", json!({}))?;
        Ok(q)
    }

    fn cmd(&mut self, name: &str, args: Value) -> Result<Value, BenchError> {
        let line = json!({"execute": name, "arguments": args}).to_string() + "\n";
        self.writer
            .write_all(line.as_bytes())
            .map_err(qmp_err("write"))?;
        loop {
            let mut l = String::new();
            if self.reader.read_line(&mut l).map_err(qmp_err("read"))? == 0 {
                return Err(BenchError::Command {
                    program: format!("QMP {name}"),
                    stderr: "QEMU closed the connection".into(),
                });
            }
            let v: Value = serde_json::from_str(&l).unwrap_or(Value::Null);
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(BenchError::Command {
                    program: format!("QMP {name}"),
                    stderr: e.to_string(),
                });
            }
        }
    }
}

fn sh(args: &[&str]) -> Result<(), BenchError> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|source| BenchError::Spawn {
            program: args.join(" "),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(BenchError::Command {
            program: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// What one bare-QEMU move measured.
pub struct QemuMove {
    /// Completed.
    pub converged: bool,
    /// QEMU's total time, ms.
    pub total_ms: Option<f64>,
    /// QEMU's downtime, ms.
    pub downtime_ms: Option<f64>,
    /// Steps taken (post-copy started).
    pub steps: Vec<String>,
    /// Why it failed.
    pub error: Option<String>,
}

impl QemuPair {
    /// Starts the guest on side 0. `disk` is a qcow2 overlay of the image;
    /// `ip` its address `ADDR/PREFIX`.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        dir: &Path,
        sides: [Side; 2],
        bridge: &str,
        disk: &Path,
        memory_mib: u32,
        ip: &str,
        machine: &str,
        cpu: &str,
        settings: Settings,
    ) -> Result<QemuPair, BenchError> {
        for s in &sides {
            if sh(&["ip", "-n", &s.netns, "link", "show", TAP]).is_ok() {
                sh(&["ip", "-n", &s.netns, "link", "del", TAP])?;
            }
            sh(&[
                "ip", "-n", &s.netns, "tuntap", "add", "dev", TAP, "mode", "tap", "vnet_hdr",
            ])?;
            sh(&["ip", "-n", &s.netns, "link", "set", TAP, "master", bridge])?;
            sh(&["ip", "-n", &s.netns, "link", "set", TAP, "up"])?;
        }
        let argv: Vec<String> = [
            "-name",
            "bench-qemu",
            "-machine",
            &format!("{machine},accel=tcg"),
            "-cpu",
            cpu,
            "-m",
            &memory_mib.to_string(),
            "-smp",
            "1",
            "-nodefaults",
            "-display",
            "none",
            "-serial",
            "null",
            "-smbios",
            &format!("type=11,value=vdc.hostname=bench-qemu,value=vdc.ip={ip}"),
            "-drive",
            &format!("file={},if=none,id=d0,format=qcow2", disk.display()),
            "-device",
            "virtio-blk-pci,drive=d0,bootindex=1",
            "-netdev",
            &format!("tap,id=n0,ifname={TAP},script=no,downscript=no,vhost=off"),
            "-device",
            "virtio-net-pci,netdev=n0,mac=52:54:00:be:9c:01",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut pair = QemuPair {
            sides,
            dir: dir.to_path_buf(),
            argv,
            running: None,
            settings,
        };
        let child = pair.spawn(0, false)?;
        pair.running = Some((0, child));
        Ok(pair)
    }

    fn qmp_path(&self, side: usize) -> PathBuf {
        self.dir.join(format!("qmp-{side}.sock"))
    }

    fn spawn(&self, side: usize, incoming: bool) -> Result<Child, BenchError> {
        let qmp = self.qmp_path(side);
        if qmp.exists() {
            std::fs::remove_file(&qmp).map_err(|source| BenchError::File {
                path: qmp.clone(),
                source,
            })?;
        }
        let mut c = Command::new("ip");
        c.args([
            "netns",
            "exec",
            &self.sides[side].netns,
            "qemu-system-x86_64",
        ]);
        c.args(&self.argv);
        c.args([
            "-qmp",
            &format!("unix:{},server=on,wait=off", qmp.display()),
        ]);
        if incoming {
            c.args(["-incoming", "defer"]);
        }
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|source| BenchError::Spawn {
                program: "qemu-system-x86_64".into(),
                source,
            })
    }

    /// Moves the guest to the other side; waits at most `timeout`.
    pub fn migrate(&mut self, timeout: Duration) -> Result<QemuMove, BenchError> {
        let (from, mut src_child) = self.running.take().ok_or(BenchError::Thread)?;
        let to = 1 - from;
        let mut dst_child = self.spawn(to, true)?;
        let outcome = self.stream(from, to, timeout);
        match &outcome {
            Ok(m) if m.converged => {
                stop(&mut src_child);
                self.running = Some((to, dst_child));
            }
            _ => {
                stop(&mut dst_child);
                self.running = Some((from, src_child));
            }
        }
        outcome
    }

    fn stream(&self, from: usize, to: usize, timeout: Duration) -> Result<QemuMove, BenchError> {
        let mut src = Qmp::connect(&self.qmp_path(from))?;
        let mut dst = Qmp::connect(&self.qmp_path(to))?;
        let caps: Vec<Value> = self
            .settings
            .capabilities
            .iter()
            .map(|c| json!({"capability": c, "state": true}))
            .collect();
        let params: serde_json::Map<String, Value> = self
            .settings
            .parameters
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        for q in [&mut src, &mut dst] {
            if !caps.is_empty() {
                q.cmd("migrate-set-capabilities", json!({ "capabilities": caps }))?;
            }
            if !params.is_empty() {
                q.cmd("migrate-set-parameters", Value::Object(params.clone()))?;
            }
        }
        dst.cmd(
            "migrate-incoming",
            json!({"uri": format!("tcp:0.0.0.0:{PORT}")}),
        )?;
        src.cmd(
            "migrate",
            json!({"uri": format!("tcp:{}:{PORT}", self.sides[to].address)}),
        )?;
        let started = Instant::now();
        let mut steps = Vec::new();
        loop {
            let q = src.cmd("query-migrate", json!({}))?;
            let status = q.get("status").and_then(Value::as_str).unwrap_or("");
            match status {
                "completed" => {
                    return Ok(QemuMove {
                        converged: true,
                        total_ms: q.get("total-time").and_then(Value::as_f64),
                        downtime_ms: q.get("downtime").and_then(Value::as_f64),
                        steps,
                        error: None,
                    })
                }
                "failed" | "cancelled" => {
                    return Ok(QemuMove {
                        converged: false,
                        total_ms: None,
                        downtime_ms: None,
                        steps,
                        error: Some(format!("migration {status}: {q}")),
                    })
                }
                _ => {}
            }
            if let Some(after) = self.settings.postcopy_after {
                if steps.is_empty() && status == "active" && started.elapsed() >= after {
                    src.cmd("migrate-start-postcopy", json!({}))?;
                    steps.push(format!("post-copy after {} s", after.as_secs()));
                }
            }
            if started.elapsed() > timeout {
                src.cmd("migrate_cancel", json!({}))?;
                return Ok(QemuMove {
                    converged: false,
                    total_ms: None,
                    downtime_ms: None,
                    steps,
                    error: Some(format!("not done after {} s, cancelled", timeout.as_secs())),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the QEMU running the guest and removes the taps.
    pub fn stop(&mut self) {
        if let Some((_, mut c)) = self.running.take() {
            stop(&mut c);
        }
        for s in &self.sides {
            if let Err(e) = sh(&["ip", "-n", &s.netns, "link", "del", TAP]) {
                eprintln!("bench: removing tap {TAP} in {}: {e}", s.netns);
            }
        }
    }
}

fn stop(c: &mut Child) {
    if let Err(e) = c.kill() {
        eprintln!("bench: stopping QEMU {}: {e}", c.id());
    }
    if let Err(e) = c.wait() {
        eprintln!("bench: waiting for QEMU {}: {e}", c.id());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_and_describe_themselves() {
        let s = Settings::parse(
            "auto-converge,postcopy-ram",
            "max-bandwidth=0,downtime-limit=100",
        )
        .unwrap();
        assert_eq!(s.capabilities, ["auto-converge", "postcopy-ram"]);
        assert_eq!(
            s.parameters,
            [
                ("max-bandwidth".to_string(), 0),
                ("downtime-limit".to_string(), 100)
            ]
        );
        assert_eq!(s.postcopy_after, Some(Duration::from_secs(2)));
        assert_eq!(
            s.describe(),
            "max-bandwidth=0 + downtime-limit=100 + auto-converge + postcopy-ram"
        );
        assert_eq!(Settings::parse("", "").unwrap().describe(), "QEMU defaults");
        let e = Settings::parse("", "max-bandwidth")
            .unwrap_err()
            .to_string();
        assert!(e.contains("NAME=NUMBER"), "{e}");
        let e = Settings::parse("", "max-bandwidth=lots")
            .unwrap_err()
            .to_string();
        assert!(e.contains("must be a number"), "{e}");
    }
}
