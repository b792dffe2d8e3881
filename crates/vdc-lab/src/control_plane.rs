//! `vdc lab up --control-plane N`: the control plane without a single
//! point of failure, on this machine: an N-member etcd cluster and N
//! `vdc server`s on it, one of which the others elect as leader.
//!
//! Layout (API port `P` of the lab):
//!
//! | member | where |
//! |---|---|
//! | `etcd-i` | client `127.0.0.1:P+100+2(i-1)`, peer the next port; data `<data>/etcd-i` |
//! | `server-i` | API `127.0.0.1:P+i-1` and `<gateway>:P+i-1`; data `<data>/server` (shared: the cluster CA) |
//!
//! Agents and the lab's client get every server's address (comma-separated)
//! and go on with the next when one does not answer. `vdc lab fail
//! server-N|etcd-N --kill` kills one member (SIGKILL); `--heal` starts it
//! again with the same command line.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{LabError, Result};
use crate::plan::LabPlan;
use crate::process::{self, ProcessHandle};
use crate::state::LabState;

/// Port offset of the first etcd member's client port from the API port.
pub const ETCD_PORT_OFFSET: u16 = 100;

/// Largest control plane the lab runs.
pub const MAX_MEMBERS: usize = 5;

/// A process of the control plane (an etcd member or a server).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberProcess {
    /// `etcd-i` or `server-i`.
    pub name: String,
    /// Its client URL (etcd) or API URL (server) on 127.0.0.1.
    pub url: String,
    /// Log file.
    pub log: PathBuf,
    /// The program and its arguments, to start it again.
    pub program: PathBuf,
    /// Arguments.
    pub args: Vec<String>,
    /// The process, once started.
    #[serde(default)]
    pub process: Option<ProcessHandle>,
}

/// A member as `vdc lab status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// `etcd-i` or `server-i`.
    pub name: String,
    /// URL on 127.0.0.1.
    pub url: String,
    /// Process id, once started.
    pub pid: Option<u32>,
    /// Whether it runs.
    pub alive: bool,
    /// Log file.
    pub log: PathBuf,
}

impl MemberProcess {
    /// Its status now.
    pub fn status(&self) -> MemberStatus {
        MemberStatus {
            name: self.name.clone(),
            url: self.url.clone(),
            pid: self.process.map(|p| p.pid),
            alive: self.process.is_some_and(|p| p.is_alive()),
            log: self.log.clone(),
        }
    }

    /// Starts it (again).
    pub fn start(&mut self) -> Result<()> {
        self.process = Some(process::spawn_detached(
            &self.program,
            &self.args,
            &self.log,
            None,
        )?);
        Ok(())
    }
}

fn etcd_ports(plan: &LabPlan, i: usize) -> (u16, u16) {
    let client = plan.port + ETCD_PORT_OFFSET + 2 * (i as u16 - 1);
    (client, client + 1)
}

/// The API port of server `i` (1-based).
pub fn server_port(plan: &LabPlan, i: usize) -> u16 {
    plan.port + i as u16 - 1
}

/// The `--store` of the servers: every etcd member.
pub fn store_url(plan: &LabPlan, n: usize) -> String {
    let endpoints: Vec<String> = (1..=n)
        .map(|i| format!("127.0.0.1:{}", etcd_ports(plan, i).0))
        .collect();
    format!("etcd://{}", endpoints.join(","))
}

/// Every server's API URL on 127.0.0.1, comma-separated (for clients).
pub fn api_urls(plan: &LabPlan, n: usize) -> String {
    (1..=n)
        .map(|i| format!("http://127.0.0.1:{}", server_port(plan, i)))
        .collect::<Vec<_>>()
        .join(",")
}

/// Every server's API URL on the lab bridge, comma-separated (for agents).
pub fn lab_api_urls(plan: &LabPlan, n: usize) -> String {
    (1..=n)
        .map(|i| format!("http://{}:{}", plan.gateway, server_port(plan, i)))
        .collect::<Vec<_>>()
        .join(",")
}

/// The etcd members of an `n`-member control plane (not started).
pub fn etcd_members(plan: &LabPlan, n: usize) -> Vec<MemberProcess> {
    let cluster: Vec<String> = (1..=n)
        .map(|i| format!("etcd-{i}=http://127.0.0.1:{}", etcd_ports(plan, i).1))
        .collect();
    (1..=n)
        .map(|i| {
            let (client, peer) = etcd_ports(plan, i);
            let name = format!("etcd-{i}");
            let client_url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            MemberProcess {
                args: vec![
                    format!("--name={name}"),
                    format!("--data-dir={}", plan.data_dir.join(&name).display()),
                    format!("--listen-client-urls={client_url}"),
                    format!("--advertise-client-urls={client_url}"),
                    format!("--listen-peer-urls={peer_url}"),
                    format!("--initial-advertise-peer-urls={peer_url}"),
                    format!("--initial-cluster={}", cluster.join(",")),
                    format!("--initial-cluster-token=vdc-lab-{}", plan.lab_id),
                    "--initial-cluster-state=new".to_string(),
                    "--log-level=warn".to_string(),
                ],
                log: plan.logs_dir().join(format!("{name}.log")),
                url: client_url,
                name,
                program: PathBuf::from("etcd"),
                process: None,
            }
        })
        .collect()
}

/// Server `i` of an `n`-member control plane (not started); server 1 runs
/// with the lab's usual arguments plus these.
pub fn server_member(plan: &LabPlan, vdc: &Path, i: usize, n: usize) -> MemberProcess {
    let port = server_port(plan, i);
    let name = format!("server-{i}");
    let url = format!("http://127.0.0.1:{port}");
    // One data directory for all: it holds the cluster CA, which every
    // server must sign with (server 1 makes it before the others start).
    let data_dir = plan.server_data_dir.clone();
    let log = if i == 1 {
        plan.server_log.clone()
    } else {
        plan.logs_dir().join(format!("{name}.log"))
    };
    MemberProcess {
        args: vec![
            "server".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--listen".into(),
            format!("{}:{port}", plan.gateway),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--token-file".into(),
            plan.token_file().display().to_string(),
            "--store".into(),
            store_url(plan, n),
            "--server-id".into(),
            name.clone(),
            "--advertise-url".into(),
            url.clone(),
        ],
        name,
        url,
        log,
        program: vdc.to_path_buf(),
        process: None,
    }
}

/// Starts the etcd members and waits until each answers its health check.
pub async fn start_etcd(state: &mut LabState, timeout: Duration) -> Result<()> {
    for m in state
        .members
        .iter_mut()
        .filter(|m| m.name.starts_with("etcd-"))
    {
        match m.start() {
            Err(LabError::Spawn { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Err(LabError::Spawn {
                    command: "etcd (Debian package etcd-server; scripts/setup.sh installs it)"
                        .to_string(),
                    source,
                })
            }
            r => r?,
        }
    }
    state.save()?;
    let deadline = Instant::now() + timeout;
    for m in state.members.iter().filter(|m| m.name.starts_with("etcd-")) {
        let addr = m.url.trim_start_matches("http://").to_string();
        loop {
            if etcd_healthy(&addr).await {
                break;
            }
            if !m.process.is_some_and(|p| p.is_alive()) || Instant::now() >= deadline {
                return Err(LabError::Timeout {
                    what: format!("{} to be healthy", m.name),
                    secs: timeout.as_secs(),
                    log: m.log.clone(),
                    tail: process::tail(&m.log, 20),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// Whether the etcd member at `addr` (`HOST:PORT`) answers its health
/// check with a quorum.
pub async fn etcd_healthy(addr: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let probe = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).await.ok()?;
        Some(body.contains("\"health\":\"true\""))
    };
    tokio::time::timeout(Duration::from_secs(2), probe)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// `vdc lab fail server-N|etcd-N`: kills (SIGKILL) or starts again one
/// member of the control plane; a line saying what was done.
pub fn fail_member(state: &mut LabState, name: &str, heal: bool) -> Result<String> {
    let all = names(&state.members);
    let m = state
        .members
        .iter_mut()
        .find(|m| m.name == name)
        .ok_or_else(|| {
            LabError::Fault(format!(
                "the lab has no control-plane member {name}; it has {all}"
            ))
        })?;
    let line = if heal {
        if m.process.is_some_and(|p| p.is_alive()) {
            format!("{name} runs already")
        } else {
            m.start()?;
            format!("{name} started again")
        }
    } else {
        match m.process {
            Some(p) if p.is_alive() => {
                p.kill();
                format!("{name} (pid {}) killed", p.pid)
            }
            _ => format!("{name} was not running"),
        }
    };
    if name == "server-1" {
        state.server = m.process;
    }
    state.save()?;
    Ok(line)
}

fn names(members: &[MemberProcess]) -> String {
    if members.is_empty() {
        return "none (start it with --control-plane 3)".to_string();
    }
    members
        .iter()
        .map(|m| m.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_and_urls() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plan = LabPlan::new("t9", 2, 9, 8511, dir.path(), dir.path()).expect("plan");
        let etcd = etcd_members(&plan, 3);
        assert_eq!(etcd.len(), 3);
        assert_eq!(etcd[1].url, "http://127.0.0.1:8613");
        assert!(etcd[2]
            .args
            .iter()
            .any(|a| a.starts_with("--initial-cluster=etcd-1=")));
        assert_eq!(
            store_url(&plan, 3),
            "etcd://127.0.0.1:8611,127.0.0.1:8613,127.0.0.1:8615"
        );
        assert_eq!(
            api_urls(&plan, 2),
            "http://127.0.0.1:8511,http://127.0.0.1:8512"
        );
        let s2 = server_member(&plan, Path::new("vdc"), 2, 3);
        assert_eq!(s2.url, "http://127.0.0.1:8512");
        assert!(s2.args.contains(&"server-2".to_string()));
    }
}
