//! Pure planning: every name, address and path of a lab, derived from its id,
//! its subnet index and the number of hosts.
//!
//! Nothing here touches the system, so the naming rules (interface names fit
//! in 15 characters, addresses stay inside `10.77.N.0/24`, one lab never
//! overlaps another) are unit-tested in milliseconds. The I/O modules only
//! carry out what a [`LabPlan`] says.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::error::LabError;

/// The lab id used when none is given.
pub const DEFAULT_LAB_ID: &str = "lab";
/// Longest lab id: it is part of interface names, which Linux limits to 15
/// characters.
pub const MAX_LAB_ID_LEN: usize = 4;
/// Most hosts one lab may have.
pub const MAX_HOSTS: usize = 64;
/// Port every agent listens on (inside its own namespace).
pub const AGENT_PORT: u16 = 8600;
/// Default port of the lab's REST API.
pub const DEFAULT_PORT: u16 = 8500;
/// Bridge inside every host namespace that VM taps attach to.
pub const HOST_BRIDGE: &str = "vmbr0";
/// Name of the host side of the veth pair inside a host namespace.
pub const HOST_UPLINK: &str = "uplink0";
/// Name of the lab network created through the API.
pub const LAB_NETWORK: &str = "lab";
/// Name of the shared datastore.
pub const SHARED_DATASTORE: &str = "shared";
/// Name of the template imported from the guest image.
pub const TEMPLATE_NAME: &str = "debian-busybox";
/// Linux's limit on interface names (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;
/// First octet pair of every lab subnet: labs live in `10.77.N.0/24`.
const LAB_NET_PREFIX: [u8; 2] = [10, 77];
/// Last octet of the first host's address (host `i` gets `10 + i`).
const HOST_ADDRESS_BASE: u8 = 10;
/// First and last octet of the VM address pool.
const POOL: (u8, u8) = (100, 199);
/// Derived subnet indexes for ids other than the default fall in `1..=200`;
/// tests pick theirs explicitly from the rest.
const DERIVED_INDEX_SPAN: u32 = 200;

/// Checks a lab id: 1–4 characters, lower-case ASCII letters and digits,
/// starting with a letter.
pub fn validate_lab_id(id: &str) -> Result<(), LabError> {
    let reason = if id.is_empty() {
        Some("it must not be empty")
    } else if id.len() > MAX_LAB_ID_LEN {
        Some("it must be at most 4 characters (it is part of interface names)")
    } else if !id
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    {
        Some("use lower-case letters and digits only")
    } else if !id.starts_with(|c: char| c.is_ascii_lowercase()) {
        Some("it must start with a letter")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(LabError::InvalidLabId {
            id: id.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// The subnet index a lab gets when none is given: 0 for the default lab
/// (`10.77.0.0/24`), a stable value in `1..=200` derived from the id
/// otherwise (FNV-1a, so it never changes between releases).
pub fn default_subnet_index(id: &str) -> u8 {
    if id == DEFAULT_LAB_ID {
        return 0;
    }
    let mut hash: u32 = 0x811c_9dc5;
    for b in id.bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    // In 1..=200, so it always fits in a u8.
    (1 + hash % DERIVED_INDEX_SPAN) as u8
}

/// Everything about one host of the lab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPlan {
    /// 1-based host number.
    pub index: usize,
    /// Host name, `host-<i>`.
    pub name: String,
    /// Network namespace, `vdc-<id>-h<i>`.
    pub netns: String,
    /// Root-namespace side of the veth pair, `<id>h<i>`, on the lab bridge.
    pub veth: String,
    /// Management address on the host's `vmbr0`.
    pub address: Ipv4Addr,
    /// Agent's state directory.
    pub state_dir: PathBuf,
    /// Agent's log file.
    pub log_file: PathBuf,
    /// Name of the host's local datastore, `local-host-<i>`.
    pub local_datastore: String,
    /// Directory of the host's local datastore.
    pub local_datastore_dir: PathBuf,
}

impl HostPlan {
    /// `ADDR:PORT` the agent listens on.
    pub fn agent_listen(&self) -> String {
        format!("{}:{AGENT_PORT}", self.address)
    }

    /// The agent credential file (made by `vdc host add` during `up`).
    pub fn credential_file(&self) -> PathBuf {
        self.state_dir.join("credential")
    }
}

/// Every name, address and path of one lab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabPlan {
    /// Lab id.
    pub lab_id: String,
    /// `N` of `10.77.N.0/24`.
    pub subnet_index: u8,
    /// Port of the REST API (on 127.0.0.1 and on the lab bridge).
    pub port: u16,
    /// Lab bridge in the root namespace, `<id>br0`.
    pub bridge: String,
    /// Address of the lab bridge, `10.77.N.1`: where hosts reach the server.
    pub gateway: Ipv4Addr,
    /// `<state-root>/<id>`: token, logs, agent state, `lab.json`.
    pub state_dir: PathBuf,
    /// `<data-root>/<id>`: server data and datastores.
    pub data_dir: PathBuf,
    /// Directory of the shared datastore.
    pub shared_datastore_dir: PathBuf,
    /// Server's data directory.
    pub server_data_dir: PathBuf,
    /// Directory the agents may import images from (`--import-dir`): the
    /// guest image is placed there for the template import.
    pub import_dir: PathBuf,
    /// Server's log file.
    pub server_log: PathBuf,
    /// The hosts, in order.
    pub hosts: Vec<HostPlan>,
    /// The hosts also get a migration network
    /// ([`crate::migration_net`]); their agents take migrations on it.
    pub migration_network: bool,
    /// The server's site name (`--site-name`), when the lab is one site of
    /// several.
    pub site_name: Option<String>,
}

impl LabPlan {
    /// Plans a lab; validates the id, the host count and the port.
    pub fn new(
        lab_id: &str,
        hosts: usize,
        subnet_index: u8,
        port: u16,
        state_root: &Path,
        data_root: &Path,
    ) -> Result<Self, LabError> {
        validate_lab_id(lab_id)?;
        if hosts == 0 || hosts > MAX_HOSTS {
            return Err(LabError::InvalidHostCount(hosts));
        }
        if subnet_index == u8::MAX {
            return Err(LabError::InvalidSubnetIndex(subnet_index));
        }
        if port == 0 {
            return Err(LabError::InvalidPort);
        }
        let state_dir = state_root.join(lab_id);
        let data_dir = data_root.join(lab_id);
        let logs = state_dir.join("logs");
        let hosts = (1..=hosts)
            .map(|i| HostPlan {
                index: i,
                name: format!("host-{i}"),
                netns: netns_name(lab_id, i),
                veth: veth_name(lab_id, i),
                // i <= 64, so 10 + i stays below the VM pool.
                address: lab_address(subnet_index, HOST_ADDRESS_BASE + i as u8),
                state_dir: state_dir.join(format!("host-{i}")),
                log_file: logs.join(format!("agent-host-{i}.log")),
                local_datastore: format!("local-host-{i}"),
                local_datastore_dir: data_dir.join(format!("host-{i}")),
            })
            .collect();
        Ok(Self {
            lab_id: lab_id.to_string(),
            subnet_index,
            port,
            bridge: bridge_name(lab_id),
            gateway: lab_address(subnet_index, 1),
            shared_datastore_dir: data_dir.join("shared"),
            server_data_dir: data_dir.join("server"),
            import_dir: data_dir.join("import"),
            server_log: logs.join("server.log"),
            state_dir,
            data_dir,
            hosts,
            migration_network: false,
            site_name: None,
        })
    }

    /// `10.77.N.0/24`.
    pub fn subnet(&self) -> String {
        subnet_cidr(self.subnet_index)
    }

    /// The API URL users and tests call: `http://127.0.0.1:<port>`.
    pub fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The API URL agents call, on the lab bridge.
    pub fn lab_api_url(&self) -> String {
        format!("http://{}:{}", self.gateway, self.port)
    }

    /// The token file.
    pub fn token_file(&self) -> PathBuf {
        self.state_dir.join("token")
    }

    /// The state file.
    pub fn state_file(&self) -> PathBuf {
        state_file(&self.state_dir)
    }

    /// Directory of the logs.
    pub fn logs_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
    }

    /// Arguments of `vdc server` (after the binary).
    pub fn server_args(&self) -> Vec<String> {
        vec![
            "server".into(),
            "--listen".into(),
            format!("127.0.0.1:{}", self.port),
            "--listen".into(),
            format!("{}:{}", self.gateway, self.port),
            "--data-dir".into(),
            self.server_data_dir.display().to_string(),
            "--token-file".into(),
            self.token_file().display().to_string(),
            "--site-name".into(),
            self.site_name
                .clone()
                .unwrap_or_else(|| vdc_types::site::DEFAULT_SITE_NAME.to_string()),
            // Peer sites' servers call this one on this machine's loopback.
            "--site-url".into(),
            self.api_url(),
            // Peer sites' hosts reach this server on the lab bridge (see
            // `sites`).
            "--relay-address".into(),
            self.gateway.to_string(),
        ]
    }

    /// Arguments of `vdc agent` for `host` (after the binary).
    pub fn agent_args(&self, host: &HostPlan) -> Vec<String> {
        vec![
            "agent".into(),
            "--name".into(),
            host.name.clone(),
            "--address".into(),
            host.address.to_string(),
            "--listen".into(),
            host.agent_listen(),
            "--server".into(),
            self.lab_api_url(),
            "--credential-file".into(),
            host.credential_file().display().to_string(),
            "--state-dir".into(),
            host.state_dir.display().to_string(),
            "--datastore".into(),
            format!(
                "{SHARED_DATASTORE}={}:shared",
                self.shared_datastore_dir.display()
            ),
            "--datastore".into(),
            format!(
                "{}={}:local",
                host.local_datastore,
                host.local_datastore_dir.display()
            ),
            "--import-dir".into(),
            self.import_dir.display().to_string(),
            // The lab bridge: what a host cut from the lab no longer reaches.
            "--isolation-address".into(),
            self.gateway.to_string(),
        ]
        .into_iter()
        .chain(
            self.migration_network
                .then(|| {
                    [
                        "--migration-address".to_string(),
                        crate::migration_net::address(self, host).to_string(),
                    ]
                })
                .into_iter()
                .flatten(),
        )
        .collect()
    }

    /// The network object created through the API: the hosts' `vmbr0`
    /// bridges, the lab subnet, addresses `.100`–`.199` for VMs, no gateway
    /// (everything is on one L2 segment).
    pub fn network(&self) -> vdc_types::Network {
        vdc_types::Network {
            name: LAB_NETWORK.to_string(),
            bridge: HOST_BRIDGE.to_string(),
            subnet: self.subnet(),
            gateway: None,
            pool_start: lab_address(self.subnet_index, POOL.0).to_string(),
            pool_end: lab_address(self.subnet_index, POOL.1).to_string(),
            ..Default::default()
        }
    }

    /// Every interface name the plan creates in the root namespace.
    pub fn root_interfaces(&self) -> Vec<String> {
        let mut names = vec![self.bridge.clone()];
        names.extend(self.hosts.iter().map(|h| h.veth.clone()));
        names
    }
}

/// `lab.json` inside a lab's state directory.
pub fn state_file(state_dir: &Path) -> PathBuf {
    state_dir.join("lab.json")
}

/// Lab bridge name, `<id>br0`.
pub fn bridge_name(lab_id: &str) -> String {
    format!("{lab_id}br0")
}

/// Host namespace name, `vdc-<id>-h<i>`.
pub fn netns_name(lab_id: &str, host: usize) -> String {
    format!("vdc-{lab_id}-h{host}")
}

/// Root side of host `i`'s veth pair, `<id>h<i>`.
pub fn veth_name(lab_id: &str, host: usize) -> String {
    format!("{lab_id}h{host}")
}

/// `10.77.N.0/24`.
pub fn subnet_cidr(index: u8) -> String {
    format!("{}/24", lab_address(index, 0))
}

/// `10.77.N.last`.
pub fn lab_address(index: u8, last: u8) -> Ipv4Addr {
    Ipv4Addr::new(LAB_NET_PREFIX[0], LAB_NET_PREFIX[1], index, last)
}

/// The fixed MAC address of the bridge that carries `address`: a locally
/// administered `02:00` followed by the four octets of the address, so it
/// is unique among running labs (their subnets are).
///
/// Why fixed: a Linux bridge without an explicit address takes the lowest
/// MAC among its ports. A host bridge's ports are its uplink and the VM
/// taps, whose MACs are random; when a tap with a lower MAC joins or leaves,
/// the bridge's MAC changes, no gratuitous ARP goes out, and every neighbour
/// keeps sending to the old MAC until its ARP entry goes stale: the host's
/// management address is unreachable for tens of seconds.
pub fn bridge_mac(address: Ipv4Addr) -> String {
    let [a, b, c, d] = address.octets();
    format!("02:00:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

/// Whether `name` is one of the lab's host namespaces (`vdc-<id>-h<digits>`).
pub fn is_lab_netns(lab_id: &str, name: &str) -> bool {
    name.strip_prefix(&format!("vdc-{lab_id}-h"))
        .is_some_and(is_number)
}

/// Whether `name` is one of the lab's root-namespace interfaces: the bridge
/// or a host veth (`<id>h<digits>`).
pub fn is_lab_interface(lab_id: &str, name: &str) -> bool {
    name == bridge_name(lab_id)
        || name
            .strip_prefix(&format!("{lab_id}h"))
            .is_some_and(is_number)
}

fn is_number(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Names from `ip netns list` output (`NAME` or `NAME (id: N)` per line).
pub fn parse_netns_list(output: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Interface names from `ip -o link show` output
/// (`3: name@peer: <FLAGS> ...` per line).
pub fn parse_link_names(output: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

/// Finds a route in `ip -4 route show` output that overlaps `subnet`
/// (a `10.77.N.0/24`); the default route is ignored. Returns the offending
/// line.
pub fn find_overlapping_route(routes: &str, subnet_index: u8) -> Option<String> {
    let ours = (u32::from(lab_address(subnet_index, 0)), 24u32);
    routes
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .find(|line| {
            let Some(dest) = line.split_whitespace().next() else {
                return false;
            };
            if dest == "default" {
                return false;
            }
            parse_prefix(dest).is_some_and(|theirs| prefixes_overlap(ours, theirs))
        })
        .map(str::to_string)
}

fn parse_prefix(s: &str) -> Option<(u32, u32)> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, l.parse::<u32>().ok()?),
        None => (s, 32),
    };
    if len > 32 {
        return None;
    }
    let addr: Ipv4Addr = addr.parse().ok()?;
    Some((u32::from(addr), len))
}

fn prefixes_overlap(a: (u32, u32), b: (u32, u32)) -> bool {
    let len = a.1.min(b.1);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    a.0 & mask == b.0 & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(id: &str, hosts: usize, index: u8) -> LabPlan {
        LabPlan::new(
            id,
            hosts,
            index,
            8500,
            Path::new("/state"),
            Path::new("/data"),
        )
        .expect("valid plan")
    }

    #[test]
    fn lab_ids_are_validated() {
        for ok in ["lab", "a", "t1", "zz99"] {
            assert!(validate_lab_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "labs1", "Lab", "1ab", "a-b", "a b", "é"] {
            assert!(validate_lab_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn default_lab_gets_subnet_zero_and_others_a_stable_nonzero_one() {
        assert_eq!(default_subnet_index("lab"), 0);
        let a = default_subnet_index("t1");
        assert!((1..=200).contains(&a));
        assert_eq!(a, default_subnet_index("t1"));
        assert_ne!(default_subnet_index("t1"), default_subnet_index("t2"));
    }

    #[test]
    fn default_lab_names_and_addresses() {
        let p = plan("lab", 3, 0);
        assert_eq!(p.bridge, "labbr0");
        assert_eq!(p.gateway.to_string(), "10.77.0.1");
        assert_eq!(p.subnet(), "10.77.0.0/24");
        assert_eq!(p.api_url(), "http://127.0.0.1:8500");
        assert_eq!(p.lab_api_url(), "http://10.77.0.1:8500");
        assert_eq!(p.token_file(), Path::new("/state/lab/token"));
        let h2 = &p.hosts[1];
        assert_eq!(h2.name, "host-2");
        assert_eq!(h2.netns, "vdc-lab-h2");
        assert_eq!(h2.veth, "labh2");
        assert_eq!(h2.address.to_string(), "10.77.0.12");
        assert_eq!(h2.agent_listen(), "10.77.0.12:8600");
        assert_eq!(h2.state_dir, Path::new("/state/lab/host-2"));
        assert_eq!(h2.local_datastore_dir, Path::new("/data/lab/host-2"));
        assert_eq!(p.shared_datastore_dir, Path::new("/data/lab/shared"));
    }

    #[test]
    fn process_arguments_follow_the_contract() {
        let p = plan("lab", 1, 0);
        assert_eq!(
            p.server_args().join(" "),
            "server --listen 127.0.0.1:8500 --listen 10.77.0.1:8500 \
             --data-dir /data/lab/server --token-file /state/lab/token \
             --site-name default --site-url http://127.0.0.1:8500 --relay-address 10.77.0.1"
        );
        assert_eq!(
            p.agent_args(&p.hosts[0]).join(" "),
            "agent --name host-1 --address 10.77.0.11 --listen 10.77.0.11:8600 \
             --server http://10.77.0.1:8500 --credential-file /state/lab/host-1/credential \
             --state-dir /state/lab/host-1 \
             --datastore shared=/data/lab/shared:shared \
             --datastore local-host-1=/data/lab/host-1:local \
             --import-dir /data/lab/import --isolation-address 10.77.0.1"
        );
    }

    #[test]
    fn interface_names_fit_the_kernel_limit() {
        let p = plan("zzzz", MAX_HOSTS, 254);
        for name in p.root_interfaces() {
            assert!(name.len() <= MAX_IFNAME_LEN, "{name}");
        }
        assert_eq!(
            p.hosts.last().map(|h| h.address.to_string()),
            Some("10.77.254.74".into())
        );
    }

    #[test]
    fn bad_plans_are_refused() {
        let s = Path::new("/s");
        assert!(LabPlan::new("lab", 0, 0, 8500, s, s).is_err());
        assert!(LabPlan::new("lab", MAX_HOSTS + 1, 0, 8500, s, s).is_err());
        assert!(LabPlan::new("lab", 1, 255, 8500, s, s).is_err());
        assert!(LabPlan::new("lab", 1, 0, 0, s, s).is_err());
        assert!(LabPlan::new("LAB", 1, 0, 8500, s, s).is_err());
    }

    #[test]
    fn network_pool_is_inside_the_subnet() {
        let n = plan("t1", 2, 7).network();
        assert_eq!(n.subnet, "10.77.7.0/24");
        assert_eq!(n.bridge, "vmbr0");
        assert_eq!(n.pool_start, "10.77.7.100");
        assert_eq!(n.pool_end, "10.77.7.199");
        assert_eq!(n.gateway, None);
    }

    #[test]
    fn lab_objects_are_recognised_by_name() {
        assert!(is_lab_netns("t1", "vdc-t1-h3"));
        assert!(!is_lab_netns("t1", "vdc-t1-h"));
        assert!(!is_lab_netns("t1", "vdc-t12-h3"));
        assert!(is_lab_interface("t1", "t1br0"));
        assert!(is_lab_interface("t1", "t1h12"));
        assert!(!is_lab_interface("t1", "t1h"));
        assert!(!is_lab_interface("t1", "t12h1"));
        assert!(!is_lab_interface("t1", "eth0"));
    }

    #[test]
    fn ip_output_is_parsed() {
        let netns = "vdc-lab-h2 (id: 1)\nvdc-lab-h1 (id: 0)\nother\n";
        assert_eq!(
            parse_netns_list(netns),
            ["vdc-lab-h2", "vdc-lab-h1", "other"]
        );
        let links = "1: lo: <LOOPBACK,UP> mtu 65536\n\
                     5: labh1@if4: <BROADCAST> mtu 1500 master labbr0\n";
        assert_eq!(parse_link_names(links), ["lo", "labh1"]);
    }

    #[test]
    fn overlapping_routes_are_found() {
        let routes = "default via 192.0.2.1 dev eth0\n\
                      192.0.2.0/24 dev eth0 proto kernel scope link\n\
                      10.77.3.0/24 dev t1br0 proto kernel scope link\n\
                      10.0.0.0/8 via 192.0.2.9 dev eth0\n";
        assert_eq!(
            find_overlapping_route(routes, 3).as_deref(),
            Some("10.77.3.0/24 dev t1br0 proto kernel scope link")
        );
        assert_eq!(
            find_overlapping_route(routes, 4).as_deref(),
            Some("10.0.0.0/8 via 192.0.2.9 dev eth0")
        );
        let narrow = "10.77.5.7 dev x\n10.77.6.128/25 dev y\n";
        assert!(find_overlapping_route(narrow, 5).is_some());
        assert!(find_overlapping_route(narrow, 6).is_some());
        assert!(find_overlapping_route(narrow, 8).is_none());
    }
}
