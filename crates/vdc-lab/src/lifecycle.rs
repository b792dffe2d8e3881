//! Bringing a lab up and reading its status.
//!
//! `up` steps:
//! 1. refuse if the lab runs; clean up a stale one (state file, processes
//!    dead); refuse if its network exists without a state file;
//! 2. create the directories, the token (0600) and the state file — from
//!    here on, any failure tears everything down again;
//! 3. create the network ([`crate::net`]);
//! 4. start the server, wait until its API answers;
//! 5. add every host through the API (its agent credential goes to
//!    `<state>/<host>/credential`, 0600), start one agent per host inside its
//!    namespace with that credential, wait until every host is connected;
//! 6. through the API: create the `lab` network, import the guest image as
//!    the `debian-busybox` template, create and start the demo VMs.
//!
//! Tearing down is [`crate::teardown`].

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::RngCore;
use vdc_client::{Client, ClientError};
use vdc_types::api::{CreateTemplateRequest, CreateVmRequest};
use vdc_types::HostState;

use crate::error::{LabError, Result};
use crate::plan::{self, LabPlan, LAB_NETWORK, SHARED_DATASTORE, TEMPLATE_NAME};
use crate::process::{self, ProcessHandle};
use crate::state::{self, LabInfo, LabState};
use crate::teardown::down_blocking;

/// Where `scripts/build-guest-image.sh` caches the guest image.
pub const DEFAULT_IMAGE: &str = "/var/cache/vdc/images/vdc-guest.qcow2";
/// The script that builds the guest image, relative to the repository.
pub const BUILD_IMAGE_SCRIPT: &str = "scripts/build-guest-image.sh";
/// Default state root (pids, token, logs, agent state).
pub const DEFAULT_STATE_ROOT: &str = "/run/vdc";
/// Default data root (server data, datastores).
pub const DEFAULT_DATA_ROOT: &str = "/var/lib/vdc";
/// Memory of a demo VM, MiB.
pub const DEMO_VM_MEMORY_MIB: u64 = 128;
/// Lines of log shown in errors.
const LOG_TAIL_LINES: usize = 30;

/// What lab to bring up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabSpec {
    /// Lab id (1–4 characters `[a-z0-9]`).
    pub lab_id: String,
    /// Number of hosts.
    pub hosts: usize,
    /// `N` of `10.77.N.0/24`; default derived from the id
    /// ([`plan::default_subnet_index`]).
    pub subnet_index: Option<u8>,
    /// State root (`<root>/<id>` holds pids, token, logs).
    pub state_root: PathBuf,
    /// Data root (`<root>/<id>` holds the server data and the datastores).
    pub data_root: PathBuf,
    /// Guest image to import as the template; default: the cached image,
    /// built on demand. Ignored with `net_only`.
    pub image: Option<PathBuf>,
    /// Whether to import the guest image as a template.
    pub import_template: bool,
    /// Number of demo VMs to create and start (needs the template).
    pub demo_vms: usize,
    /// API port.
    pub port: u16,
    /// The `vdc` binary to run the server and agents with.
    pub vdc_binary: PathBuf,
    /// Only create the network: no server, no agents.
    pub net_only: bool,
    /// Longest wait for each start-up step (API up, hosts connected, each
    /// task).
    pub step_timeout: Duration,
    /// The server's `--store` (default: the embedded store in its data
    /// directory).
    pub store: Option<String>,
    /// Give the hosts a migration network ([`crate::migration_net`]).
    pub migration_network: bool,
    /// Members of the control plane: 0 (default) runs one server on
    /// `store`; N runs an N-member etcd cluster and N servers on it (see
    /// [`crate::control_plane`]).
    pub control_plane: usize,
    /// The server's site name (default `default`); see [`crate::sites`].
    pub site_name: Option<String>,
}

impl LabSpec {
    /// The defaults of `vdc lab up`: lab `lab`, 3 hosts, 2 demo VMs,
    /// port 8500, `/run/vdc` and `/var/lib/vdc`.
    pub fn new(vdc_binary: PathBuf) -> Self {
        Self {
            lab_id: plan::DEFAULT_LAB_ID.to_string(),
            hosts: 3,
            subnet_index: None,
            state_root: PathBuf::from(DEFAULT_STATE_ROOT),
            data_root: PathBuf::from(DEFAULT_DATA_ROOT),
            image: None,
            import_template: true,
            demo_vms: 2,
            port: plan::DEFAULT_PORT,
            vdc_binary,
            net_only: false,
            step_timeout: Duration::from_secs(120),
            store: None,
            migration_network: false,
            control_plane: 0,
            site_name: None,
        }
    }

    /// The plan of this lab.
    pub fn plan(&self) -> Result<LabPlan> {
        let index = self
            .subnet_index
            .unwrap_or_else(|| plan::default_subnet_index(&self.lab_id));
        let mut plan = LabPlan::new(
            &self.lab_id,
            self.hosts,
            index,
            self.port,
            &self.state_root,
            &self.data_root,
        )?;
        plan.migration_network = self.migration_network;
        plan.site_name = self.site_name.clone();
        Ok(plan)
    }
}

pub(crate) fn require_root() -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(LabError::NotRoot)
    }
}

fn mkdir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|source| LabError::Io {
        what: "create",
        path: path.to_path_buf(),
        source,
    })
}

/// Brings a lab up (see the module docs). On failure everything created so
/// far is torn down and the error says which step failed, with a log tail.
pub async fn up(spec: &LabSpec) -> Result<LabInfo> {
    require_root()?;
    let plan = spec.plan()?;
    match LabState::load(&plan.lab_id, &spec.state_root) {
        Ok(Some(old)) if is_running(&old) => return Err(LabError::AlreadyUp(plan.lab_id)),
        Ok(Some(_)) | Err(_) => down_blocking(&plan.lab_id, &spec.state_root)?,
        Ok(None) => {
            // Network objects without a state file here: another state root's
            // lab, or a crash. Either way not ours to remove silently.
            let netns = crate::ip::netns_list()?;
            if crate::ip::link_exists(&plan.bridge)?
                || netns.iter().any(|n| plan::is_lab_netns(&plan.lab_id, n))
            {
                return Err(LabError::Leftovers(plan.lab_id));
            }
        }
    }
    // Resolve the image before creating anything: a missing image is the
    // most likely failure and needs no cleanup.
    let image = if spec.net_only || !spec.import_template {
        None
    } else {
        Some(match &spec.image {
            Some(p) if p.is_file() => p.clone(),
            Some(p) => return Err(LabError::ImageMissing(p.clone())),
            None => default_image(&spec.vdc_binary)?,
        })
    };
    let mut state = LabState::from_plan(&plan, spec.net_only);
    let result = async {
        prepare_dirs(&plan)?;
        state.save()?;
        crate::net::create(&plan)?;
        if plan.migration_network {
            crate::migration_net::create(&plan)?;
        }
        if !spec.net_only {
            start_cluster(spec, &plan, &mut state, image.as_deref()).await?;
        }
        Ok(state.info())
    }
    .await;
    if result.is_err() {
        // Keep the original error; teardown failures would hide it.
        let _ = down_blocking(&plan.lab_id, &spec.state_root);
    }
    result
}

/// Whether a lab is up: one of its processes runs, or, for a network-only
/// lab, its bridge exists.
fn is_running(state: &LabState) -> bool {
    state.any_alive() || (state.net_only && crate::ip::link_exists(&state.bridge).unwrap_or(true))
}

fn prepare_dirs(plan: &LabPlan) -> Result<()> {
    for dir in [
        &plan.state_dir,
        &plan.logs_dir(),
        &plan.data_dir,
        &plan.shared_datastore_dir,
        &plan.server_data_dir,
        &plan.import_dir,
    ] {
        mkdir(dir)?;
    }
    for h in &plan.hosts {
        mkdir(&h.state_dir)?;
        mkdir(&h.local_datastore_dir)?;
    }
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    state::write_private(&plan.token_file(), &format!("{token}\n"))
}

/// Puts the guest image into the agents' import directory (a hard link, or
/// a copy across file systems) and returns its path there.
fn place_for_import(image: &Path, import_dir: &Path) -> Result<PathBuf> {
    let name = image
        .file_name()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("guest.qcow2"));
    let dest = import_dir.join(name);
    let io = |source| LabError::Io {
        what: "place the guest image in",
        path: dest.clone(),
        source,
    };
    match std::fs::remove_file(&dest) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    if std::fs::hard_link(image, &dest).is_err() {
        std::fs::copy(image, &dest).map_err(io)?;
    }
    Ok(dest)
}

/// Reads a lab's token file.
pub fn read_token(token_file: &Path) -> Result<String> {
    std::fs::read_to_string(token_file)
        .map(|t| t.trim().to_string())
        .map_err(|source| LabError::Io {
            what: "read",
            path: token_file.to_path_buf(),
            source,
        })
}

/// A REST client of the lab described by `info`, with its token.
pub fn client(info: &LabInfo) -> Result<Client> {
    Ok(Client::new(
        &info.api_url,
        Some(read_token(&info.token_file)?),
    ))
}

async fn start_cluster(
    spec: &LabSpec,
    plan: &LabPlan,
    state: &mut LabState,
    image: Option<&Path>,
) -> Result<()> {
    let timeout = spec.step_timeout;
    let n = spec.control_plane;
    let mut server_args = plan.server_args();
    if n > 0 {
        use crate::control_plane as cp;
        if spec.store.is_some() || n > cp::MAX_MEMBERS {
            return Err(LabError::Fault(format!(
                "--control-plane takes 1 to {} members and runs its own etcd: give no --store",
                cp::MAX_MEMBERS
            )));
        }
        state.members = cp::etcd_members(plan, n);
        state
            .members
            .extend((1..=n).map(|i| cp::server_member(plan, &spec.vdc_binary, i, n)));
        state.api_url = cp::api_urls(plan, n);
        state.lab_api_url = cp::lab_api_urls(plan, n);
        state.save()?;
        cp::start_etcd(state, timeout).await?;
        server_args = state.members[n].args.clone();
    } else if let Some(store) = &spec.store {
        server_args.extend(["--store".to_string(), store.clone()]);
    }
    let server = process::spawn_detached(&spec.vdc_binary, &server_args, &plan.server_log, None)?;
    state.server = Some(server);
    state.save()?;
    let client = Client::new(&state.api_url, Some(read_token(&plan.token_file())?));
    wait_for(
        "the vdc server API",
        timeout,
        &plan.server_log,
        || check_alive("the vdc server", &server, &plan.server_log),
        || async { client.version().await.ok().map(|_| ()) },
    )
    .await?;
    if n > 0 {
        // The first server made the cluster CA: the others share it.
        state.members[n].process = Some(server);
        for m in state.members.iter_mut().skip(n + 1) {
            m.start()?;
        }
        state.save()?;
    }

    for host in &plan.hosts {
        let added = client
            .add_host(&host.name)
            .await
            .map_err(|source| LabError::Api {
                what: format!("add host {}", host.name),
                source,
            })?;
        state::write_private(&host.credential_file(), &format!("{}\n", added.credential))?;
    }
    let agent_servers = state.lab_api_url.clone();
    for (host, record) in plan.hosts.iter().zip(state.hosts.iter_mut()) {
        let mut args = plan.agent_args(host);
        if n > 0 {
            // Every server, so that reports go on when one dies.
            if let Some(i) = args.iter().position(|a| a == "--server") {
                args[i + 1] = agent_servers.clone();
            }
        }
        let agent =
            process::spawn_detached(&spec.vdc_binary, &args, &host.log_file, Some(&host.netns))?;
        record.agent = Some(agent);
    }
    state.save()?;
    let names: Vec<&str> = plan.hosts.iter().map(|h| h.name.as_str()).collect();
    let last_log = plan
        .hosts
        .last()
        .map(|h| h.log_file.clone())
        .unwrap_or_else(|| plan.server_log.clone());
    let agents: Vec<(String, ProcessHandle, PathBuf)> = state
        .hosts
        .iter()
        .filter_map(|h| {
            h.agent
                .map(|a| (format!("the agent of {}", h.name), a, h.log.clone()))
        })
        .collect();
    wait_for(
        "all hosts to connect",
        timeout,
        &last_log,
        || {
            check_alive("the vdc server", &server, &plan.server_log)?;
            agents
                .iter()
                .try_for_each(|(what, p, log)| check_alive(what, p, log))
        },
        || async {
            let hosts = client.list_hosts().await.ok()?;
            names
                .iter()
                .all(|n| {
                    hosts
                        .iter()
                        .any(|h| h.name == *n && h.state == HostState::Connected)
                })
                .then_some(())
        },
    )
    .await?;

    let api = |what: &str| {
        let what = what.to_string();
        move |source: ClientError| LabError::Api { what, source }
    };
    let networks = client
        .list_networks()
        .await
        .map_err(api("listing networks"))?;
    if !networks.iter().any(|n| n.name == LAB_NETWORK) {
        client
            .create_network(&plan.network())
            .await
            .map_err(api("creating the lab network"))?;
    }
    let Some(image) = image else {
        return Ok(());
    };
    let image = place_for_import(image, &plan.import_dir)?;
    let task = client
        .create_template(&CreateTemplateRequest {
            name: TEMPLATE_NAME.to_string(),
            datastore: SHARED_DATASTORE.to_string(),
            source: image.display().to_string(),
            format: Some(vdc_types::api::ImageFormat::Qcow2),
            host: None,
        })
        .await
        .map_err(api("importing the guest image"))?;
    client
        .wait_task(&task.id, timeout, |_| {})
        .await
        .map_err(api("importing the guest image"))?;

    let mut tasks = Vec::new();
    for i in 1..=spec.demo_vms {
        let task = client
            .create_vm(&CreateVmRequest {
                name: format!("demo-{i}"),
                memory_mib: Some(DEMO_VM_MEMORY_MIB),
                template: Some(TEMPLATE_NAME.to_string()),
                linked_clone: true,
                network: Some(LAB_NETWORK.to_string()),
                start: true,
                ..Default::default()
            })
            .await
            .map_err(api("creating a demo VM"))?;
        tasks.push(task);
    }
    let waits = tasks
        .iter()
        .map(|t| client.wait_task(&t.id, timeout * 2, |_| {}));
    for result in futures::future::join_all(waits).await {
        result.map_err(api("creating a demo VM"))?;
    }
    Ok(())
}

fn check_alive(what: &str, p: &ProcessHandle, log: &Path) -> Result<()> {
    if p.is_alive() {
        Ok(())
    } else {
        Err(LabError::ProcessExited {
            what: what.to_string(),
            log: log.to_path_buf(),
            tail: process::tail(log, LOG_TAIL_LINES),
        })
    }
}

/// Polls `probe` until it yields `Some`, failing early when `alive` fails
/// and with a log tail at the deadline.
async fn wait_for<F, Fut>(
    what: &str,
    timeout: Duration,
    log: &Path,
    alive: impl Fn() -> Result<()>,
    probe: F,
) -> Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<()>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if probe().await.is_some() {
            return Ok(());
        }
        alive()?;
        if Instant::now() >= deadline {
            return Err(LabError::Timeout {
                what: what.to_string(),
                secs: timeout.as_secs(),
                log: log.to_path_buf(),
                tail: process::tail(log, LOG_TAIL_LINES),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The guest image to import when none is given: the cached image, built
/// first with the repository's script if it is missing and the script can
/// be found next to the `vdc` binary (`<repo>/target/<profile>/vdc`).
pub fn default_image(vdc_binary: &Path) -> Result<PathBuf> {
    let cached = PathBuf::from(DEFAULT_IMAGE);
    if cached.is_file() {
        // The cache path is a symlink to the latest build; import the build
        // itself so the template's source stays what it was.
        return Ok(cached.canonicalize().unwrap_or(cached));
    }
    let binary = vdc_binary
        .canonicalize()
        .unwrap_or_else(|_| vdc_binary.to_path_buf());
    let script = binary
        .ancestors()
        .map(|dir| dir.join(BUILD_IMAGE_SCRIPT))
        .find(|s| s.is_file())
        .ok_or_else(|| LabError::ImageMissing(cached.clone()))?;
    build_image(&script)
}

/// Runs the guest image build script; returns the image it built (the last
/// line of its output if that names a file, else [`DEFAULT_IMAGE`]).
pub fn build_image(script: &Path) -> Result<PathBuf> {
    let out = std::process::Command::new("bash")
        .arg(script)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| LabError::Spawn {
            command: format!("bash {}", script.display()),
            source,
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        return Err(LabError::ImageBuild {
            script: script.to_path_buf(),
            stderr: lines[lines.len().saturating_sub(10)..].join("\n"),
        });
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let printed = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(PathBuf::from)
        .filter(|p| p.is_file());
    let image = printed.unwrap_or_else(|| PathBuf::from(DEFAULT_IMAGE));
    if image.is_file() {
        Ok(image)
    } else {
        Err(LabError::ImageMissing(image))
    }
}

/// The status of lab `lab_id` under `state_root`, liveness checked now.
pub fn status(lab_id: &str, state_root: &Path) -> Result<LabInfo> {
    plan::validate_lab_id(lab_id)?;
    LabState::load(lab_id, state_root)?
        .map(|s| s.info())
        .ok_or_else(|| LabError::NotUp(lab_id.to_string()))
}
