//! The fixture of vdc's end-to-end tests on real guests.
//!
//! Why: every end-to-end test needs the same things — the guest image, a
//! lab of its own that does not collide with tests running in parallel,
//! waits with deadlines, a way to talk to a guest from inside a host's
//! network namespace, and, when it fails, the logs that explain why. They
//! live here so a test body stays a few lines long.
//!
//! A test:
//! 1. `let lab = TestLab::start(2).await;` — a lab with a unique id, subnet
//!    and port, state and data under a temporary directory, the guest image
//!    imported as the `debian-busybox` template;
//! 2. drives it with `lab.client` and checks what the guest sees with
//!    [`guest_request`];
//! 3. drops the lab: everything is torn down, and if the test panicked the
//!    server, agent and VM console logs are printed first.
//!
//! Tests of the web page drive a real headless Chromium with
//! [`webdriver::Browser`].

#![warn(missing_docs)]

mod control_plane;
mod error;
mod faults;
pub mod fencing;
mod guest;
pub mod ha;
mod sites;
mod wait;
pub mod webdriver;

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use vdc_client::Client;
use vdc_lab::{LabError, LabInfo, LabSpec};

pub use error::TestInfraError;
pub use guest::{
    guest_request, guest_request_timeout, guest_sink, guest_source, guest_udp_request, GuestSession,
};
pub use sites::TwoSiteLab;
pub use wait::{wait_until, wait_until_async, wait_vm, wait_vm_timeout, VM_WAIT_TIMEOUT};

/// The repository root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .nth(2)
        .unwrap_or(manifest)
        .to_path_buf()
}

/// The guest image, built (or found in the cache) by
/// `<repo>/scripts/build-guest-image.sh` once per process.
///
/// # Panics
/// If the script fails or no image exists afterwards.
pub fn guest_image() -> PathBuf {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let script = repo_root().join(vdc_lab::lifecycle::BUILD_IMAGE_SCRIPT);
            let built = if script.is_file() {
                vdc_lab::lifecycle::build_image(&script)
            } else {
                let cached = PathBuf::from(vdc_lab::lifecycle::DEFAULT_IMAGE);
                if cached.is_file() {
                    Ok(cached)
                } else {
                    Err(LabError::ImageMissing(cached))
                }
            };
            match built {
                Ok(p) => p,
                Err(e) => panic!("guest image: {}", error_chain(&e)),
            }
        })
        .clone()
}

/// The `vdc` binary: `$CARGO_TARGET_DIR/debug/vdc` or
/// `<repo>/target/debug/vdc`. Tests of the `vdc` crate should pass
/// `env!("CARGO_BIN_EXE_vdc")` to [`TestLabBuilder::vdc_binary`] instead.
pub fn vdc_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    target.join("debug").join("vdc")
}

/// An error and its causes on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text += &format!(": {s}");
        source = s.source();
    }
    text
}

/// Options of a [`TestLab`]; start it with [`TestLabBuilder::start`].
#[derive(Debug, Clone)]
pub struct TestLabBuilder {
    hosts: usize,
    demo_vms: usize,
    template: bool,
    net_only: bool,
    migration_network: bool,
    vdc_binary: Option<PathBuf>,
    step_timeout: Duration,
    store: Option<String>,
    control_plane: usize,
    site_name: Option<String>,
}

impl TestLabBuilder {
    /// Run `n` etcd members and `n` servers (one elected leader) instead of
    /// one server on its embedded store; the lab's client knows every
    /// server.
    pub fn control_plane(mut self, n: usize) -> Self {
        self.control_plane = n;
        self
    }

    /// Create and start `n` demo VMs (`demo-1`…) during start-up.
    pub fn demo_vms(mut self, n: usize) -> Self {
        self.demo_vms = n;
        self
    }

    /// Whether to import the guest image as the `debian-busybox` template
    /// (default yes).
    pub fn template(mut self, yes: bool) -> Self {
        self.template = yes;
        self
    }

    /// Give every host a migration network (`mig0`, the agents'
    /// `--migration-address`).
    pub fn migration_network(mut self, yes: bool) -> Self {
        self.migration_network = yes;
        self
    }

    /// Only create the network: no server, no agents, no API client calls.
    pub fn net_only(mut self, yes: bool) -> Self {
        self.net_only = yes;
        self
    }

    /// The `vdc` binary to run (default [`vdc_binary`]).
    pub fn vdc_binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.vdc_binary = Some(path.into());
        self
    }

    /// The server's `--store` (default: the embedded store).
    pub fn store(mut self, url: impl Into<String>) -> Self {
        self.store = Some(url.into());
        self
    }

    /// The server's site name (default `default`).
    pub fn site_name(mut self, name: impl Into<String>) -> Self {
        self.site_name = Some(name.into());
        self
    }

    /// Longest wait of each start-up step (default 120 s).
    pub fn step_timeout(mut self, timeout: Duration) -> Self {
        self.step_timeout = timeout;
        self
    }

    /// Starts the lab.
    ///
    /// # Panics
    /// If the lab cannot be started (the error and log tails are printed).
    pub async fn start(self) -> TestLab {
        match self.try_start().await {
            Ok(lab) => lab,
            Err(e) => panic!("{}", error_chain(&e)),
        }
    }

    /// Starts the lab, returning the error instead of panicking.
    pub async fn try_start(self) -> Result<TestLab, TestInfraError> {
        let dir = tempfile::Builder::new()
            .prefix("vdc-test-lab-")
            .tempdir()
            .map_err(TestInfraError::TempDir)?;
        let image = if self.net_only || !self.template {
            None
        } else {
            Some(guest_image())
        };
        let binary = self.vdc_binary.clone().unwrap_or_else(vdc_binary);
        if !self.net_only && !binary.is_file() {
            return Err(TestInfraError::NoBinary(binary));
        }
        let (lab_id, id_lock) = reserve_lab_id()?;
        let mut last_error = None;
        // A parallel lab may take a subnet between our check and our bridge:
        // up() then fails with SubnetInUse and we try the next index.
        for index in subnet_candidates(&lab_id) {
            if !vdc_lab::net::subnet_is_free(index) {
                continue;
            }
            // The API port is free when picked, but another process may bind
            // it (or use it as the local port of a connection) before the
            // server does: the server then exits and we pick another port.
            let mut port_attempts = 0;
            loop {
                let spec = LabSpec {
                    lab_id: lab_id.clone(),
                    hosts: self.hosts,
                    subnet_index: Some(index),
                    state_root: dir.path().join("run"),
                    data_root: dir.path().join("data"),
                    image: image.clone(),
                    import_template: image.is_some(),
                    demo_vms: self.demo_vms,
                    port: free_port()?,
                    vdc_binary: binary.clone(),
                    net_only: self.net_only,
                    step_timeout: self.step_timeout,
                    store: self.store.clone(),
                    migration_network: self.migration_network,
                    control_plane: self.control_plane,
                    site_name: self.site_name.clone(),
                };
                match vdc_lab::up(&spec).await {
                    Ok(info) => {
                        let client = if self.net_only {
                            Client::new(&info.api_url, None)
                        } else {
                            vdc_lab::client(&info)?
                        };
                        return Ok(TestLab {
                            info,
                            client,
                            spec,
                            _id_lock: id_lock,
                            _dir: dir,
                        });
                    }
                    Err(e) if port_attempts < PORT_ATTEMPTS && is_port_clash(&e) => {
                        port_attempts += 1;
                    }
                    Err(e @ LabError::SubnetInUse { .. }) => {
                        last_error = Some(e);
                        break;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Err(last_error.map_or(TestInfraError::NoFreeSubnet, TestInfraError::from))
    }
}

/// How many times a lab start is retried with another API port.
const PORT_ATTEMPTS: u32 = 3;

/// Whether `up` failed because the server could not bind its port.
fn is_port_clash(e: &LabError) -> bool {
    matches!(e, LabError::ProcessExited { what, tail, .. }
        if what == "the vdc server" && tail.contains("cannot listen on"))
}

/// A lab of its own for one test; torn down on drop (also on panic).
pub struct TestLab {
    /// What `up` returned: addresses, namespaces, pids, log files.
    pub info: LabInfo,
    /// A client of the lab's API, with its token.
    pub client: Client,
    /// The spec the lab was started with.
    pub spec: LabSpec,
    _id_lock: UnixListener,
    _dir: tempfile::TempDir,
}

impl TestLab {
    /// A lab with `hosts` hosts, the guest image imported as a template and
    /// no demo VMs.
    ///
    /// # Panics
    /// If the lab cannot be started.
    pub async fn start(hosts: usize) -> TestLab {
        Self::builder(hosts).start().await
    }

    /// Options for a lab with `hosts` hosts.
    pub fn builder(hosts: usize) -> TestLabBuilder {
        TestLabBuilder {
            hosts,
            demo_vms: 0,
            template: true,
            net_only: false,
            migration_network: false,
            vdc_binary: None,
            step_timeout: Duration::from_secs(120),
            store: None,
            control_plane: 0,
            site_name: None,
        }
    }

    /// The network namespace of host `name` (e.g. `host-1`).
    ///
    /// # Panics
    /// If the lab has no such host.
    pub fn netns(&self, host: &str) -> &str {
        match self.info.hosts.iter().find(|h| h.name == host) {
            Some(h) => &h.netns,
            None => panic!("the test lab has no host '{host}'"),
        }
    }

    /// The last `lines` lines of the server log, each agent log and each
    /// VM's console log, with headers.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        let mut section = |title: String, path: &Path| {
            out += &format!(
                "----- {title} ({}) -----\n{}\n",
                path.display(),
                vdc_lab::process::tail(path, lines)
            );
        };
        section("server log".into(), &self.info.server.log);
        for m in self
            .info
            .control_plane
            .iter()
            .filter(|m| m.name != "server-1")
        {
            section(format!("{} log", m.name), &m.log);
        }
        for h in &self.info.hosts {
            section(format!("agent log of {}", h.name), &h.log);
            let Ok(vms) = std::fs::read_dir(h.state_dir.join("vms")) else {
                continue;
            };
            for vm in vms.flatten() {
                let log = vm.path().join("supervisor.log");
                if log.is_file() {
                    section(
                        format!(
                            "VM supervisor of {} on {}",
                            vm.file_name().to_string_lossy(),
                            h.name
                        ),
                        &log,
                    );
                }
            }
        }
        for ds in &self.info.datastores {
            let Ok(entries) = std::fs::read_dir(&ds.path) else {
                continue;
            };
            for e in entries.flatten() {
                let console = e.path().join("console.log");
                if console.is_file() {
                    section(
                        format!(
                            "console of {} on {}",
                            e.file_name().to_string_lossy(),
                            ds.name
                        ),
                        &console,
                    );
                }
            }
        }
        out
    }

    /// Sends `lines` to a guest's service from inside host `host`'s
    /// namespace; see [`guest_request`].
    pub fn guest_request(
        &self,
        host: &str,
        addr: &str,
        lines: &[&str],
    ) -> Result<Vec<String>, TestInfraError> {
        guest_request(self.netns(host), addr, vdc_types::GUEST_SERVICE_PORT, lines)
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "\n===== test lab '{}' at failure =====\n{}",
                self.info.lab_id,
                self.log_tails(40)
            );
        }
        let lab_id = self.info.lab_id.clone();
        let state_root = self.spec.state_root.clone();
        // A plain thread: Drop may run inside an async runtime, where
        // blocking waits must not happen on a runtime thread's own stack of
        // tasks.
        let joined =
            std::thread::spawn(move || vdc_lab::down_blocking(&lab_id, &state_root)).join();
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("tearing down test lab: {}", error_chain(&e)),
            Err(_) => eprintln!("tearing down test lab: the teardown thread panicked"),
        }
    }
}

/// A lab id held for this process until dropped: no [`TestLab`] (in this
/// or another test process) gets the same id meanwhile. For tests that call
/// `vdc_lab::up`/`down` themselves: `down` removes whatever carries the
/// lab's id, so an id made up by a test could tear down another test's lab.
pub struct LabIdReservation {
    id: String,
    _lock: UnixListener,
}

impl LabIdReservation {
    /// The reserved lab id (4 characters, `t` then 3 of `[0-9a-z]`).
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// Reserves a lab id no other lab on the machine uses, with no leftover
/// network objects of a crashed test.
pub fn reserve_test_lab_id() -> Result<LabIdReservation, TestInfraError> {
    let (id, lock) = reserve_lab_id()?;
    Ok(LabIdReservation { id, _lock: lock })
}

/// Picks a lab id no other lab on the machine uses and holds it: an
/// abstract Unix socket named after the id is the lock (only one process
/// can bind a name; it goes away with the lab or the process, and leaves no
/// file behind).
fn reserve_lab_id() -> Result<(String, UnixListener), TestInfraError> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let links = vdc_lab::ip::link_names()?;
    let namespaces = vdc_lab::ip::netns_list()?;
    let start = std::process::id().wrapping_mul(7919);
    for _ in 0..1000 {
        let n = start.wrapping_add(COUNTER.fetch_add(1, Ordering::Relaxed)) % (36 * 36 * 36);
        let id = format!("t{}", base36(n, 3));
        let name = SocketAddr::from_abstract_name(format!("vdc-test-lab-{id}"))
            .map_err(TestInfraError::Lock)?;
        let Ok(lock) = UnixListener::bind_addr(&name) else {
            continue;
        };
        // Skip ids with leftovers of a crashed test (up would refuse them).
        if links.contains(&vdc_lab::plan::bridge_name(&id))
            || namespaces
                .iter()
                .any(|n| vdc_lab::plan::is_lab_netns(&id, n))
        {
            continue;
        }
        return Ok((id, lock));
    }
    Err(TestInfraError::NoFreeLabId)
}

fn base36(mut n: u32, digits: usize) -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = vec![b'0'; digits];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n % 36) as usize];
        n /= 36;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Subnet indexes for test labs: 201–254 (kept apart from the default lab
/// and from ids' derived indexes), starting at one derived from the id.
fn subnet_candidates(lab_id: &str) -> impl Iterator<Item = u8> {
    const FIRST: u8 = 201;
    const COUNT: u8 = 54;
    let offset = vdc_lab::plan::default_subnet_index(lab_id) % COUNT;
    (0..COUNT).map(move |i| FIRST + (offset + i) % COUNT)
}

fn free_port() -> Result<u16, TestInfraError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(TestInfraError::Port)?;
    Ok(listener.local_addr().map_err(TestInfraError::Port)?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base36_pads_and_wraps() {
        assert_eq!(base36(0, 3), "000");
        assert_eq!(base36(35, 3), "00z");
        assert_eq!(base36(36 * 36 * 36 - 1, 3), "zzz");
    }

    #[test]
    fn subnet_candidates_cover_the_test_range_once() {
        let mut all: Vec<u8> = subnet_candidates("t1a").collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 54);
        assert_eq!(all.first(), Some(&201));
        assert_eq!(all.last(), Some(&254));
    }

    #[test]
    fn reserved_lab_ids_are_distinct_while_held() {
        let a = reserve_test_lab_id().expect("an id");
        let b = reserve_test_lab_id().expect("another id");
        assert_ne!(a.id(), b.id());
        assert!(vdc_lab::plan::validate_lab_id(a.id()).is_ok(), "{}", a.id());
    }

    #[test]
    fn only_a_server_that_cannot_bind_is_a_port_clash() {
        let exited = |what: &str, tail: &str| LabError::ProcessExited {
            what: what.into(),
            log: PathBuf::from("server.log"),
            tail: tail.into(),
        };
        assert!(is_port_clash(&exited(
            "the vdc server",
            "Error: cannot listen on 127.0.0.1:4000\n\nCaused by:\n    Address already in use"
        )));
        assert!(!is_port_clash(&exited(
            "the vdc server",
            "cannot open the cluster store"
        )));
        assert!(!is_port_clash(&exited(
            "the agent of host-1",
            "cannot listen on"
        )));
    }

    #[test]
    fn repo_root_holds_the_workspace() {
        assert!(repo_root().join("Cargo.toml").is_file());
        assert!(repo_root().join("crates").is_dir());
    }
}
