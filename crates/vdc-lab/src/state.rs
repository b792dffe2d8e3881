//! The lab's state file (`<state-root>/<id>/lab.json`) and the status view
//! built from it.
//!
//! `up` writes the state file before it creates anything and rewrites it
//! after each step, so `down` always knows what to remove, even after a
//! half-finished `up`. The format is versioned ([`LAB_STATE_VERSION`]).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{LabError, Result};
use crate::plan::{self, LabPlan};
use crate::process::ProcessHandle;

/// Version of the state file format. Bump it when a field changes meaning.
pub const LAB_STATE_VERSION: u32 = 1;

/// One host in the state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    /// Host name.
    pub name: String,
    /// Network namespace.
    pub netns: String,
    /// Root side of the veth pair.
    pub veth: String,
    /// Management address.
    pub address: String,
    /// Agent state directory.
    pub state_dir: PathBuf,
    /// Agent log file.
    pub log: PathBuf,
    /// The agent process, once started.
    #[serde(default)]
    pub agent: Option<ProcessHandle>,
}

/// One datastore in the state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatastoreRecord {
    /// Datastore name.
    pub name: String,
    /// Directory.
    pub path: PathBuf,
    /// `shared` or `local`.
    pub kind: String,
    /// The host of a local datastore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// Contents of `lab.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabState {
    /// Format version, [`LAB_STATE_VERSION`].
    pub version: u32,
    /// Lab id.
    pub lab_id: String,
    /// `N` of `10.77.N.0/24`.
    pub subnet_index: u8,
    /// The lab subnet.
    pub subnet: String,
    /// The lab bridge in the root namespace.
    pub bridge: String,
    /// Address of the lab bridge.
    pub gateway: String,
    /// API port.
    pub port: u16,
    /// API URL on 127.0.0.1.
    pub api_url: String,
    /// API URL on the lab bridge (what agents use).
    pub lab_api_url: String,
    /// Token file.
    pub token_file: PathBuf,
    /// `<state-root>/<id>`.
    pub state_dir: PathBuf,
    /// `<data-root>/<id>`, removed by `down`.
    pub data_dir: PathBuf,
    /// Server log file.
    pub server_log: PathBuf,
    /// The server process, once started.
    #[serde(default)]
    pub server: Option<ProcessHandle>,
    /// The hosts.
    pub hosts: Vec<HostRecord>,
    /// The datastores.
    pub datastores: Vec<DatastoreRecord>,
    /// Only the network was set up (no server, no agents).
    #[serde(default)]
    pub net_only: bool,
    /// The control plane's etcd members and servers (`--control-plane`;
    /// empty: one server, [`LabState::server`], on its embedded store).
    #[serde(default)]
    pub members: Vec<crate::control_plane::MemberProcess>,
    /// When `up` started.
    pub created_ms: u64,
    /// The server's site name, when the lab is one site of several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
}

impl LabState {
    /// The initial state of a planned lab (no processes yet).
    pub fn from_plan(plan: &LabPlan, net_only: bool) -> Self {
        let mut datastores = vec![DatastoreRecord {
            name: plan::SHARED_DATASTORE.to_string(),
            path: plan.shared_datastore_dir.clone(),
            kind: "shared".into(),
            host: None,
        }];
        datastores.extend(plan.hosts.iter().map(|h| DatastoreRecord {
            name: h.local_datastore.clone(),
            path: h.local_datastore_dir.clone(),
            kind: "local".into(),
            host: Some(h.name.clone()),
        }));
        Self {
            version: LAB_STATE_VERSION,
            lab_id: plan.lab_id.clone(),
            subnet_index: plan.subnet_index,
            subnet: plan.subnet(),
            bridge: plan.bridge.clone(),
            gateway: plan.gateway.to_string(),
            port: plan.port,
            api_url: plan.api_url(),
            lab_api_url: plan.lab_api_url(),
            token_file: plan.token_file(),
            state_dir: plan.state_dir.clone(),
            data_dir: plan.data_dir.clone(),
            server_log: plan.server_log.clone(),
            server: None,
            members: Vec::new(),
            hosts: plan
                .hosts
                .iter()
                .map(|h| HostRecord {
                    name: h.name.clone(),
                    netns: h.netns.clone(),
                    veth: h.veth.clone(),
                    address: h.address.to_string(),
                    state_dir: h.state_dir.clone(),
                    log: h.log_file.clone(),
                    agent: None,
                })
                .collect(),
            datastores,
            net_only,
            created_ms: vdc_types::now_ms(),
            site: plan.site_name.clone(),
        }
    }

    /// Reads the state file of lab `lab_id` under `state_root`;
    /// `Ok(None)` if there is none.
    pub fn load(lab_id: &str, state_root: &Path) -> Result<Option<Self>> {
        let path = plan::state_file(&state_root.join(lab_id));
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(LabError::Io {
                    what: "read",
                    path,
                    source,
                })
            }
        };
        let state: Self = serde_json::from_str(&text).map_err(|source| LabError::StateFormat {
            path: path.clone(),
            source,
        })?;
        if state.version != LAB_STATE_VERSION {
            return Err(LabError::StateVersion {
                path,
                found: state.version,
                expected: LAB_STATE_VERSION,
            });
        }
        Ok(Some(state))
    }

    /// Writes the state file atomically (temporary file + rename).
    pub fn save(&self) -> Result<()> {
        let path = plan::state_file(&self.state_dir);
        let tmp = path.with_extension("json.tmp");
        let io = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| LabError::Io { what, path, source }
        };
        let text = serde_json::to_vec_pretty(self).map_err(|source| LabError::StateFormat {
            path: path.clone(),
            source,
        })?;
        std::fs::write(&tmp, text).map_err(io("write", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io("write", &path))
    }

    /// Whether any process of the lab still runs.
    pub fn any_alive(&self) -> bool {
        self.server.is_some_and(|p| p.is_alive())
            || self
                .members
                .iter()
                .any(|m| m.process.is_some_and(|p| p.is_alive()))
            || self
                .hosts
                .iter()
                .any(|h| h.agent.is_some_and(|p| p.is_alive()))
    }

    /// The status view of this state, with liveness checked now.
    pub fn info(&self) -> LabInfo {
        LabInfo {
            lab_id: self.lab_id.clone(),
            api_url: self.api_url.clone(),
            token_file: self.token_file.clone(),
            subnet: self.subnet.clone(),
            subnet_index: self.subnet_index,
            bridge: self.bridge.clone(),
            gateway: self.gateway.clone(),
            state_dir: self.state_dir.clone(),
            data_dir: self.data_dir.clone(),
            server: ServerStatus {
                pid: self.server.map(|p| p.pid),
                alive: self.server.is_some_and(|p| p.is_alive()),
                url: self.api_url.clone(),
                log: self.server_log.clone(),
            },
            hosts: self
                .hosts
                .iter()
                .map(|h| HostStatus {
                    name: h.name.clone(),
                    netns: h.netns.clone(),
                    address: h.address.clone(),
                    agent_pid: h.agent.map(|p| p.pid),
                    agent_alive: h.agent.is_some_and(|p| p.is_alive()),
                    state_dir: h.state_dir.clone(),
                    log: h.log.clone(),
                })
                .collect(),
            datastores: self.datastores.clone(),
            control_plane: self.members.iter().map(|m| m.status()).collect(),
            leader: None,
            site: self.site.clone(),
        }
    }
}

/// Writes `content` to `path` readable by the owner only (0600).
pub fn write_private(path: &Path, content: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| LabError::Io {
            what: "create",
            path: path.to_path_buf(),
            source,
        })?;
    f.write_all(content.as_bytes())
        .map_err(|source| LabError::Io {
            what: "write",
            path: path.to_path_buf(),
            source,
        })
}

/// The server as `vdc lab status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStatus {
    /// Process id, once started.
    pub pid: Option<u32>,
    /// Whether it runs.
    pub alive: bool,
    /// API URL.
    pub url: String,
    /// Log file.
    pub log: PathBuf,
}

/// A host as `vdc lab status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostStatus {
    /// Host name.
    pub name: String,
    /// Network namespace.
    pub netns: String,
    /// Management address.
    pub address: String,
    /// Agent process id, once started.
    pub agent_pid: Option<u32>,
    /// Whether the agent runs.
    pub agent_alive: bool,
    /// Agent state directory (QEMU pidfiles and sockets under `vms/`).
    pub state_dir: PathBuf,
    /// Agent log file.
    pub log: PathBuf,
}

/// A lab as `vdc lab up` returns it and `vdc lab status -o json` prints it.
/// The field names are stable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabInfo {
    /// Lab id.
    pub lab_id: String,
    /// API URL on 127.0.0.1.
    pub api_url: String,
    /// Token file.
    pub token_file: PathBuf,
    /// Lab subnet, `10.77.N.0/24`.
    pub subnet: String,
    /// `N` of the subnet.
    pub subnet_index: u8,
    /// Lab bridge in the root namespace.
    pub bridge: String,
    /// Address of the lab bridge (`10.77.N.1`).
    pub gateway: String,
    /// State directory (`<state-root>/<id>`).
    pub state_dir: PathBuf,
    /// Data directory (`<data-root>/<id>`).
    pub data_dir: PathBuf,
    /// The server.
    pub server: ServerStatus,
    /// The hosts.
    pub hosts: Vec<HostStatus>,
    /// The datastores.
    pub datastores: Vec<DatastoreRecord>,
    /// The control plane's etcd members and servers (empty: one server on
    /// its embedded store).
    #[serde(default)]
    pub control_plane: Vec<crate::control_plane::MemberStatus>,
    /// The id of the leading server, as a server answered (`vdc lab
    /// status` asks; `None` without a control plane or when none answered).
    #[serde(default)]
    pub leader: Option<String>,
    /// The server's site name, when the lab is one site of several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_versions_are_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plan = LabPlan::new("t9", 2, 9, 8511, dir.path(), dir.path()).expect("plan");
        std::fs::create_dir_all(&plan.state_dir).expect("mkdir");
        let mut state = LabState::from_plan(&plan, false);
        state.server = Some(ProcessHandle {
            pid: 1,
            start_time: Some(5),
        });
        state.save().expect("save");
        let back = LabState::load("t9", dir.path())
            .expect("load")
            .expect("present");
        assert_eq!(back, state);
        assert_eq!(back.datastores.len(), 3);
        assert!(LabState::load("t8", dir.path()).expect("load").is_none());

        state.version = 99;
        state.save().expect("save");
        let err = LabState::load("t9", dir.path()).expect_err("version 99");
        assert!(matches!(err, LabError::StateVersion { found: 99, .. }));
    }

    #[test]
    fn status_json_has_the_stable_field_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plan = LabPlan::new("t9", 1, 9, 8511, dir.path(), dir.path()).expect("plan");
        let info = LabState::from_plan(&plan, false).info();
        let v = serde_json::to_value(&info).expect("json");
        for key in ["lab_id", "api_url", "token_file", "subnet", "bridge"] {
            assert!(v.get(key).is_some(), "{key}");
        }
        assert_eq!(v["server"]["alive"], false);
        assert!(v["server"]["pid"].is_null());
        let h = &v["hosts"][0];
        assert_eq!(h["name"], "host-1");
        assert_eq!(h["netns"], "vdc-t9-h1");
        assert_eq!(h["address"], "10.77.9.11");
        assert_eq!(h["agent_alive"], false);
        assert!(h.get("agent_pid").is_some());
    }

    #[test]
    fn private_files_are_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("token");
        write_private(&f, "abc\n").expect("write");
        let mode = std::fs::metadata(&f).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
