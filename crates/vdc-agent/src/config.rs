//! Agent configuration: the `vdc agent` flags ([`AgentArgs`]) and the
//! resolved configuration ([`AgentConfig`]) that [`crate::run`] takes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use vdc_disk::LeaseTiming;
use vdc_types::Accelerator;

use crate::AgentError;

/// One `--datastore NAME=PATH:shared|local` flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatastoreConfig {
    /// Datastore name.
    pub name: String,
    /// Root directory on this host.
    pub path: PathBuf,
    /// Mounted by every host.
    pub shared: bool,
}

impl std::str::FromStr for DatastoreConfig {
    type Err = String;

    /// Parses `NAME=PATH:shared` or `NAME=PATH:local`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, rest) = s
            .split_once('=')
            .ok_or_else(|| format!("'{s}' is not NAME=PATH:shared|local"))?;
        let (path, kind) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("'{s}' lacks ':shared' or ':local'"))?;
        let shared = match kind {
            "shared" => true,
            "local" => false,
            other => {
                return Err(format!(
                    "datastore kind '{other}' is neither 'shared' nor 'local'"
                ))
            }
        };
        vdc_types::names::validate_name("datastore", name)?;
        if path.is_empty() {
            return Err(format!("datastore '{name}' has an empty path"));
        }
        Ok(DatastoreConfig {
            name: name.to_string(),
            path: PathBuf::from(path),
            shared,
        })
    }
}

/// `--accel` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AccelArg {
    /// KVM if the CPU supports it, TCG otherwise.
    Auto,
    /// Hardware virtualization.
    Kvm,
    /// Software emulation.
    Tcg,
}

/// Flags of `vdc agent` (embed with `#[command(flatten)]` or as a
/// subcommand's arguments).
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// Host name, unique in the cluster.
    #[arg(long)]
    pub name: String,
    /// Management address of the host.
    #[arg(long)]
    pub address: String,
    /// Address live migration streams come in on (default: --address).
    #[arg(long)]
    pub migration_address: Option<String>,
    /// Address and port of the agent API.
    #[arg(long)]
    pub listen: SocketAddr,
    /// Base URL of the server, e.g. http://10.77.0.1:8500; several
    /// servers of one control plane separated by commas (the agent reports
    /// to the next when one does not answer).
    #[arg(long = "server")]
    pub server: String,
    /// File holding this host's agent credential (made by `vdc host add`).
    #[arg(long)]
    pub credential_file: PathBuf,
    /// Directory for runtime files (sockets, pidfiles).
    #[arg(long)]
    pub state_dir: PathBuf,
    /// Datastore, NAME=PATH:shared|local (repeatable).
    #[arg(long = "datastore")]
    pub datastores: Vec<DatastoreConfig>,
    /// Accelerator.
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: AccelArg,
    /// Bridge for NICs of a network whose NIC spec names no bridge,
    /// NETWORK=BRIDGE (repeatable).
    #[arg(long = "bridge")]
    pub bridges: Vec<String>,
    /// VM lease TTL, milliseconds: another host may take a VM whose lease
    /// did not change for this long.
    #[arg(long, default_value_t = 3_000)]
    pub lease_ttl_ms: u64,
    /// How often a VM's supervisor renews its lease, milliseconds.
    #[arg(long, default_value_t = 1_000)]
    pub lease_renew_ms: u64,
    /// How long before the TTL a supervisor that could not renew stops its
    /// VM, milliseconds.
    #[arg(long, default_value_t = 1_000)]
    pub lease_margin_ms: u64,
    /// Directory whose image files may be imported as templates
    /// (repeatable). Images inside a datastore may always be imported; any
    /// other path is refused.
    #[arg(long = "import-dir", value_name = "DIR")]
    pub import_dirs: Vec<PathBuf>,
    /// Isolation address (an IPv4 or IPv6 address the host should always
    /// reach, e.g. its gateway): when the server has not answered for
    /// `--isolation-after-ms` and this address does not answer either,
    /// the host is isolated and applies each VM's isolation response.
    /// Without it, no isolation response is ever applied.
    #[arg(long, value_name = "ADDR")]
    pub isolation_address: Option<std::net::IpAddr>,
    /// How long the server may be silent before the isolation address is
    /// tried, milliseconds.
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1000..=600_000))]
    pub isolation_after_ms: u64,
    /// VM monitoring: a running guest whose heartbeat stopped for this
    /// long is reset, milliseconds (0 turns VM monitoring off).
    #[arg(long, default_value_t = 30_000)]
    pub vm_monitor_timeout_ms: u64,
    /// VM monitoring: most resets per VM within the window.
    #[arg(long, default_value_t = 3)]
    pub vm_monitor_max_resets: u32,
    /// VM monitoring: the window, seconds.
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub vm_monitor_window_s: u64,
}

impl AgentArgs {
    /// Reads the credential file and checks the flags.
    pub fn into_config(self) -> Result<AgentConfig, AgentError> {
        let credential = std::fs::read_to_string(&self.credential_file)
            .map_err(|source| AgentError::CredentialFile {
                path: self.credential_file.clone(),
                source,
            })?
            .trim()
            .to_string();
        if credential.is_empty() {
            return Err(AgentError::Config(format!(
                "credential file {} is empty",
                self.credential_file.display()
            )));
        }
        let mut bridge_for_network = BTreeMap::new();
        for b in &self.bridges {
            let (net, br) = b.split_once('=').ok_or_else(|| {
                AgentError::Config(format!("--bridge '{b}' is not NETWORK=BRIDGE"))
            })?;
            bridge_for_network.insert(net.to_string(), br.to_string());
        }
        let config = AgentConfig {
            name: self.name,
            migration_address: self
                .migration_address
                .unwrap_or_else(|| self.address.clone()),
            address: self.address,
            listen: self.listen,
            server_url: self.server.trim_end_matches('/').to_string(),
            credential,
            server_credential: None,
            state_dir: self.state_dir,
            datastores: self.datastores,
            accel: match self.accel {
                AccelArg::Auto => None,
                AccelArg::Kvm => Some(Accelerator::Kvm),
                AccelArg::Tcg => Some(Accelerator::Tcg),
            },
            bridge_for_network,
            supervision: Supervision {
                lease: LeaseTiming {
                    ttl: std::time::Duration::from_millis(self.lease_ttl_ms),
                    renew_every: std::time::Duration::from_millis(self.lease_renew_ms),
                    margin: std::time::Duration::from_millis(self.lease_margin_ms),
                },
                program: None,
            },
            import_dirs: self.import_dirs,
            isolation: self.isolation_address.map(|address| Isolation {
                address,
                after: std::time::Duration::from_millis(self.isolation_after_ms),
            }),
            vm_monitoring: (self.vm_monitor_timeout_ms > 0).then(|| {
                crate::vm_monitor::VmMonitoring {
                    timeout: std::time::Duration::from_millis(self.vm_monitor_timeout_ms),
                    max_resets: self.vm_monitor_max_resets,
                    window: std::time::Duration::from_secs(self.vm_monitor_window_s),
                }
            }),
        };
        config.validate()?;
        Ok(config)
    }
}

/// Everything the agent needs to run.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Host name.
    pub name: String,
    /// Management address.
    pub address: String,
    /// Address live migration streams come in on.
    pub migration_address: String,
    /// Address the agent API listens on.
    pub listen: SocketAddr,
    /// Base URL of the server (no trailing slash), or several separated by
    /// commas.
    pub server_url: String,
    /// This host's agent credential, presented to the server.
    pub credential: String,
    /// The credential the server presents to this agent's API, when it is
    /// known before joining (an agent run without a server); `None` learns
    /// it at join.
    pub server_credential: Option<String>,
    /// Directory for runtime files.
    pub state_dir: PathBuf,
    /// Datastores this host mounts.
    pub datastores: Vec<DatastoreConfig>,
    /// Forced accelerator; `None` detects it.
    pub accel: Option<Accelerator>,
    /// Fallback bridge per network for NICs that name none.
    pub bridge_for_network: BTreeMap<String, String>,
    /// Directories images may be imported from, besides the datastores.
    pub import_dirs: Vec<PathBuf>,
    /// The VM supervisors: lease timing and program.
    pub supervision: Supervision,
    /// Isolation detection (`None`: never isolated).
    pub isolation: Option<Isolation>,
    /// VM monitoring (`None`: off).
    pub vm_monitoring: Option<crate::vm_monitor::VmMonitoring>,
}

/// When the host counts as isolated (see `isolation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Isolation {
    /// Address tried once the server is silent.
    pub address: std::net::IpAddr,
    /// Server silence before the address is tried.
    pub after: std::time::Duration,
}

/// How the agent runs the supervisor beside each VM.
#[derive(Debug, Clone, Default)]
pub struct Supervision {
    /// Lease timing handed to every supervisor.
    pub lease: LeaseTiming,
    /// The `vdc` binary whose hidden `vm-supervisor` subcommand is run;
    /// `None`: see [`Supervision::program`].
    pub program: Option<PathBuf>,
}

impl Supervision {
    /// The `vdc` binary: the configured one, else this process's own
    /// executable when it is `vdc`, else `vdc` one directory above it
    /// (where Cargo puts the binary next to test executables).
    pub fn program(&self) -> PathBuf {
        if let Some(p) = &self.program {
            return p.clone();
        }
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("vdc"));
        if exe.file_name().is_some_and(|n| n == "vdc") {
            return exe;
        }
        exe.parent()
            .and_then(|d| d.parent())
            .map(|d| d.join("vdc"))
            .filter(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from("vdc"))
    }
}

impl AgentConfig {
    /// Checks names and that datastore names are unique.
    pub fn validate(&self) -> Result<(), AgentError> {
        vdc_types::names::validate_name("host", &self.name).map_err(AgentError::Config)?;
        let mut seen = std::collections::BTreeSet::new();
        for ds in &self.datastores {
            if !seen.insert(ds.name.as_str()) {
                return Err(AgentError::Config(format!(
                    "datastore '{}' is given twice",
                    ds.name
                )));
            }
        }
        match vdc_types::auth::agent_credential_host(&self.credential) {
            Some(h) if h == self.name => {}
            Some(h) => {
                return Err(AgentError::Config(format!(
                    "the agent credential is for host '{h}', not '{}'; use the one 'vdc host add {}' made",
                    self.name, self.name
                )))
            }
            None => {
                return Err(AgentError::Config(format!(
                    "the agent credential is not one 'vdc host add' makes (vdca.<host>.<secret>); run 'vdc host add {}'",
                    self.name
                )))
            }
        }
        self.supervision.lease.check().map_err(AgentError::Config)?;
        if let Some(d) = self.import_dirs.iter().find(|d| !d.is_absolute()) {
            return Err(AgentError::Config(format!(
                "import directory '{}' is not an absolute path",
                d.display()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        agent: AgentArgs,
    }

    #[test]
    fn parses_datastore_flags() {
        let d: DatastoreConfig = "shared=/srv/vdc/shared:shared".parse().unwrap();
        assert_eq!(d.name, "shared");
        assert_eq!(d.path, PathBuf::from("/srv/vdc/shared"));
        assert!(d.shared);
        let d: DatastoreConfig = "l1=/a:b/c:local".parse().unwrap();
        assert_eq!(d.path, PathBuf::from("/a:b/c"));
        assert!(!d.shared);
        for bad in [
            "x",
            "x=/a",
            "x=/a:nfs",
            "=/a:local",
            "x=:local",
            "a b=/x:local",
        ] {
            assert!(bad.parse::<DatastoreConfig>().is_err(), "{bad}");
        }
    }

    #[test]
    fn flags_become_a_config() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("credential");
        std::fs::write(&token, "vdca.host-1.sekrit\n").unwrap();
        let cli = Cli::try_parse_from([
            "agent",
            "--name",
            "host-1",
            "--address",
            "10.77.0.11",
            "--listen",
            "10.77.0.11:8600",
            "--server",
            "http://10.77.0.1:8500/",
            "--credential-file",
            token.to_str().unwrap(),
            "--state-dir",
            "/run/x",
            "--datastore",
            "shared=/srv/s:shared",
            "--datastore",
            "local-host-1=/srv/h1:local",
            "--accel",
            "tcg",
            "--import-dir",
            "/srv/images",
        ])
        .unwrap();
        let c = cli.agent.into_config().unwrap();
        assert_eq!(c.import_dirs, vec![PathBuf::from("/srv/images")]);
        assert_eq!(c.credential, "vdca.host-1.sekrit");
        assert_eq!(c.server_url, "http://10.77.0.1:8500");
        assert_eq!(c.datastores.len(), 2);
        assert_eq!(c.accel, Some(Accelerator::Tcg));
    }
}
