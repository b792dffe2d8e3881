//! The recovery plan (`/plans/<name>`, version [`PLAN_VERSION`]), stored at
//! the recovery site: which site it protects, its VMs in ordered priority
//! groups (group 1 fully up before group 2 starts; inside a group in
//! parallel), how each VM's readiness is awaited, how protected networks
//! map to recovery (and test) networks, per-VM address and hostname
//! changes, and pre/post steps per group or for the whole plan.
//!
//! Ordered groups cannot form a dependency cycle by construction; what can
//! go wrong (a VM twice, an empty group, an unknown VM or network, a VM not
//! replicated to this site) is refused by [`validate`] with a sentence that
//! says what to change.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use vdc_types::UnixMillis;

/// Format version of a plan record; a newer one is refused.
pub const PLAN_VERSION: u32 = 1;

/// Longest timeout of a readiness wait or a step, seconds (a day).
pub const MAX_TIMEOUT_S: u64 = 86_400;

/// Default wait for a guest's readiness, seconds.
pub const DEFAULT_READY_TIMEOUT_S: u64 = 300;

/// A recovery plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Plan {
    /// Format version ([`PLAN_VERSION`], filled in by the server).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1)]
    pub version: u32,
    /// Name (unique at this site).
    #[schema(
        pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$",
        min_length = 1,
        max_length = 63
    )]
    pub name: String,
    /// The site whose VMs the plan protects.
    pub protected_site: String,
    /// The site where the VMs are recovered (filled in by the server: this
    /// site; swapped with `protected_site` by a reprotect).
    #[serde(default)]
    pub recovery_site: String,
    /// Priority groups, in order.
    pub groups: Vec<PlanGroup>,
    /// Protected network → recovery network (and the test network).
    #[serde(default)]
    pub networks: Vec<NetworkMapping>,
    /// Steps before the first group.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pre_steps: Vec<PlanStep>,
    /// Steps after the last group.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub post_steps: Vec<PlanStep>,
    /// Creation time (filled in by the server).
    #[serde(default)]
    pub created_ms: UnixMillis,
    /// Reprotects done so far: each swaps the direction.
    #[serde(default)]
    pub reprotects: u32,
    /// Where the plan stands (filled in by the server).
    #[serde(default)]
    pub state: crate::run::PlanState,
    /// The run in progress, if any (filled in by the server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_run: Option<String>,
    /// The last run (filled in by the server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<String>,
}

/// One priority group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PlanGroup {
    /// Its VMs, recovered in parallel.
    pub vms: Vec<PlanVm>,
    /// Steps before the group's VMs are recovered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pre_steps: Vec<PlanStep>,
    /// Steps once every VM of the group is ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub post_steps: Vec<PlanStep>,
}

/// One VM of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PlanVm {
    /// The VM's name at the protected site (its replica's name here).
    pub name: String,
    /// How its readiness is awaited before the next group starts.
    #[serde(default)]
    pub wait: ReadyWait,
    /// New address `A/N` at the recovery site (default: keep).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// New hostname at the recovery site (default: keep).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

/// How a recovered VM's readiness is awaited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ReadyWait {
    /// The guest reports ready over its guest channel.
    Guest {
        /// Longest wait, seconds.
        timeout_s: u64,
    },
    /// A TCP port of the guest's address accepts a connection.
    Tcp {
        /// The port.
        port: u16,
        /// Longest wait, seconds.
        timeout_s: u64,
    },
    /// A fixed delay after the VM starts.
    Delay {
        /// Seconds.
        seconds: u64,
    },
    /// No wait: the VM counts as ready once it runs.
    Running,
}

impl Default for ReadyWait {
    fn default() -> Self {
        ReadyWait::Guest {
            timeout_s: DEFAULT_READY_TIMEOUT_S,
        }
    }
}

/// A protected network and where its NICs go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NetworkMapping {
    /// Network at the protected site.
    pub protected: String,
    /// Network (port group) at the recovery site.
    pub recovery: String,
    /// Port group in the test bubble (default `<plan>-<protected>`),
    /// created for a test run on an isolated switch and removed by cleanup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<String>,
}

/// A pre or post step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PlanStep {
    /// A shell command run on the recovery site's server; a non-zero exit
    /// or the timeout fails the run.
    Command {
        /// Given to `sh -c`.
        command: String,
        /// Longest run, seconds.
        timeout_s: u64,
    },
    /// A pause.
    Wait {
        /// Seconds.
        seconds: u64,
    },
    /// The run pauses with this message until `vdc plan continue RUN`.
    Prompt {
        /// Shown to the operator.
        message: String,
    },
}

/// What the recovery site knows of a replica, for validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaFacts {
    /// VM name.
    pub vm: String,
    /// The site it is replicated from.
    pub source_site: String,
    /// Networks of its NICs (protected-site names).
    pub networks: Vec<String>,
}

/// What is wrong with a plan.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// A bad name.
    #[error("{0}")]
    Name(String),
    /// The plan has no VM.
    #[error("a plan needs at least one group with at least one VM")]
    NoGroups,
    /// An empty group.
    #[error("group {0} has no VM; remove it or add VMs")]
    EmptyGroup(usize),
    /// A VM listed twice.
    #[error("VM '{0}' is listed twice in the plan (groups {1} and {2}); keep it in one group")]
    Duplicate(String, usize, usize),
    /// A VM without a replica here.
    #[error("VM '{0}' has no replica at this site; enable its replication to this site first")]
    UnknownVm(String),
    /// A replica from another site.
    #[error(
        "VM '{vm}' is replicated from site '{from}', not from the plan's protected site '{site}'"
    )]
    OtherSite {
        /// The VM.
        vm: String,
        /// Its replica's source.
        from: String,
        /// The plan's protected site.
        site: String,
    },
    /// A mapping names a recovery network that does not exist.
    #[error(
        "recovery network '{0}' does not exist at this site; create it or map to another network"
    )]
    UnknownNetwork(String),
    /// A protected network mapped twice.
    #[error("protected network '{0}' is mapped twice; keep one mapping")]
    DuplicateMapping(String),
    /// A VM's network is not mapped.
    #[error(
        "VM '{vm}' uses network '{net}', which the plan does not map; add --map {net}=RECOVERY_NET"
    )]
    Unmapped {
        /// The VM.
        vm: String,
        /// Its network.
        net: String,
    },
    /// A mapping no VM uses.
    #[error("protected network '{0}' is used by none of the plan's VMs; remove the mapping")]
    UnusedMapping(String),
    /// Two protected networks map to one test port group.
    #[error("test network '{0}' is named by two mappings; give each its own")]
    DuplicateTest(String),
    /// A bad address.
    #[error("VM '{0}': address '{1}' is not A.B.C.D/N")]
    BadAddress(String, String),
    /// A bad hostname.
    #[error(
        "VM '{0}': hostname '{1}' is not a valid host name (letters, digits, '-', at most 63)"
    )]
    BadHostname(String, String),
    /// A timeout of zero or above a day.
    #[error("{0}: a timeout must be between 1 and {MAX_TIMEOUT_S} seconds")]
    BadTimeout(String),
    /// An empty command or prompt.
    #[error("{0}: an empty command or prompt")]
    EmptyStep(String),
    /// A test network's name is taken.
    #[error(
        "test network '{0}' already exists at this site; name another with test= in the mapping"
    )]
    TestNetworkTaken(String),
    /// The protected site is this site.
    #[error("the protected site '{0}' is this site; a plan recovers VMs of another site here")]
    SameSite(String),
}

/// The test bubble's port group for `m` in plan `plan`.
pub fn test_network(plan: &str, m: &NetworkMapping) -> String {
    m.test
        .clone()
        .unwrap_or_else(|| format!("{plan}-{}", m.protected))
}

/// The isolated switch of a plan's test bubble: its name and its bridge
/// (at most 10 characters, leaving room for VLAN bridges' suffix, from a
/// hash of the plan's name).
pub fn bubble_switch(plan: &str) -> (String, String) {
    let mut h: u32 = 0x811c_9dc5;
    for b in plan.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    let name = if plan.len() <= 56 {
        format!("{plan}-bubble")
    } else {
        format!("dr-bubble-{h:08x}")
    };
    (name, format!("drb{:07x}", h & 0x0fff_ffff))
}

/// Every VM of the plan, in group order.
pub fn vms(plan: &Plan) -> impl Iterator<Item = &PlanVm> {
    plan.groups.iter().flat_map(|g| g.vms.iter())
}

/// Checks a plan against what this site knows: its `replicas`, its
/// `networks` (port groups) and its own name `local_site`.
pub fn validate(
    plan: &Plan,
    local_site: &str,
    replicas: &[ReplicaFacts],
    networks: &[String],
) -> Result<(), PlanError> {
    vdc_types::names::validate_name("plan", &plan.name).map_err(PlanError::Name)?;
    if plan.protected_site == local_site {
        return Err(PlanError::SameSite(local_site.to_string()));
    }
    if plan.groups.is_empty() {
        return Err(PlanError::NoGroups);
    }
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, g) in plan.groups.iter().enumerate() {
        let gi = i + 1;
        if g.vms.is_empty() {
            return Err(PlanError::EmptyGroup(gi));
        }
        for s in g.pre_steps.iter().chain(&g.post_steps) {
            check_step(&format!("group {gi}"), s)?;
        }
        for v in &g.vms {
            if let Some(first) = seen.insert(&v.name, gi) {
                return Err(PlanError::Duplicate(v.name.clone(), first, gi));
            }
            check_vm(v)?;
        }
    }
    for s in plan.pre_steps.iter().chain(&plan.post_steps) {
        check_step("plan", s)?;
    }
    let mut mapped = BTreeSet::new();
    let mut tests = BTreeSet::new();
    for m in &plan.networks {
        if !mapped.insert(m.protected.as_str()) {
            return Err(PlanError::DuplicateMapping(m.protected.clone()));
        }
        if !networks.contains(&m.recovery) {
            return Err(PlanError::UnknownNetwork(m.recovery.clone()));
        }
        let t = test_network(&plan.name, m);
        vdc_types::names::validate_name("test network", &t).map_err(PlanError::Name)?;
        if networks.contains(&t) {
            return Err(PlanError::TestNetworkTaken(t));
        }
        if !tests.insert(t.clone()) {
            return Err(PlanError::DuplicateTest(t));
        }
    }
    let mut used = BTreeSet::new();
    for v in vms(plan) {
        let r = replicas
            .iter()
            .find(|r| r.vm == v.name)
            .ok_or_else(|| PlanError::UnknownVm(v.name.clone()))?;
        if r.source_site != plan.protected_site {
            return Err(PlanError::OtherSite {
                vm: v.name.clone(),
                from: r.source_site.clone(),
                site: plan.protected_site.clone(),
            });
        }
        for n in &r.networks {
            if !mapped.contains(n.as_str()) {
                return Err(PlanError::Unmapped {
                    vm: v.name.clone(),
                    net: n.clone(),
                });
            }
            used.insert(n.as_str());
        }
    }
    if let Some(m) = plan
        .networks
        .iter()
        .find(|m| !used.contains(m.protected.as_str()))
    {
        return Err(PlanError::UnusedMapping(m.protected.clone()));
    }
    Ok(())
}

fn check_vm(v: &PlanVm) -> Result<(), PlanError> {
    if let Some(ip) = &v.ip {
        if !is_cidr(ip) {
            return Err(PlanError::BadAddress(v.name.clone(), ip.clone()));
        }
    }
    if let Some(h) = &v.hostname {
        let ok = !h.is_empty()
            && h.len() <= 63
            && !h.starts_with('-')
            && h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !ok {
            return Err(PlanError::BadHostname(v.name.clone(), h.clone()));
        }
    }
    let t = match v.wait {
        ReadyWait::Guest { timeout_s } | ReadyWait::Tcp { timeout_s, .. } => Some(timeout_s),
        ReadyWait::Delay { seconds } => Some(seconds),
        ReadyWait::Running => None,
    };
    if let Some(t) = t {
        if t == 0 || t > MAX_TIMEOUT_S {
            return Err(PlanError::BadTimeout(format!("VM '{}' wait", v.name)));
        }
    }
    Ok(())
}

fn check_step(place: &str, s: &PlanStep) -> Result<(), PlanError> {
    match s {
        PlanStep::Command { command, timeout_s } => {
            if command.trim().is_empty() {
                return Err(PlanError::EmptyStep(place.to_string()));
            }
            if *timeout_s == 0 || *timeout_s > MAX_TIMEOUT_S {
                return Err(PlanError::BadTimeout(format!("{place} command")));
            }
        }
        PlanStep::Wait { seconds } => {
            if *seconds == 0 || *seconds > MAX_TIMEOUT_S {
                return Err(PlanError::BadTimeout(format!("{place} wait")));
            }
        }
        PlanStep::Prompt { message } => {
            if message.trim().is_empty() {
                return Err(PlanError::EmptyStep(place.to_string()));
            }
        }
    }
    Ok(())
}

/// Whether `s` is `A.B.C.D/N` with N in 1..=32.
pub fn is_cidr(s: &str) -> bool {
    let Some((a, n)) = s.split_once('/') else {
        return false;
    };
    a.parse::<std::net::Ipv4Addr>().is_ok() && n.parse::<u8>().is_ok_and(|n| (1..=32).contains(&n))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn vm(name: &str) -> PlanVm {
        PlanVm {
            name: name.into(),
            wait: ReadyWait::default(),
            ip: None,
            hostname: None,
        }
    }

    pub(crate) fn plan(groups: &[&[&str]]) -> Plan {
        Plan {
            version: PLAN_VERSION,
            name: "p".into(),
            protected_site: "a".into(),
            recovery_site: "b".into(),
            groups: groups
                .iter()
                .map(|g| PlanGroup {
                    vms: g.iter().map(|n| vm(n)).collect(),
                    pre_steps: vec![],
                    post_steps: vec![],
                })
                .collect(),
            networks: vec![NetworkMapping {
                protected: "prod".into(),
                recovery: "dr".into(),
                test: None,
            }],
            pre_steps: vec![],
            post_steps: vec![],
            created_ms: 0,
            reprotects: 0,
            state: Default::default(),
            active_run: None,
            last_run: None,
        }
    }

    fn replicas(names: &[&str]) -> Vec<ReplicaFacts> {
        names
            .iter()
            .map(|n| ReplicaFacts {
                vm: n.to_string(),
                source_site: "a".into(),
                networks: vec!["prod".into()],
            })
            .collect()
    }

    fn check(p: &Plan) -> Result<(), PlanError> {
        validate(p, "b", &replicas(&["web", "db", "app"]), &["dr".into()])
    }

    #[test]
    fn a_good_plan_passes() {
        assert_eq!(check(&plan(&[&["db"], &["web", "app"]])), Ok(()));
    }

    #[test]
    fn each_mistake_is_named() {
        assert_eq!(check(&plan(&[])), Err(PlanError::NoGroups));
        assert_eq!(check(&plan(&[&["db"], &[]])), Err(PlanError::EmptyGroup(2)));
        assert_eq!(
            check(&plan(&[&["db"], &["web", "db"]])),
            Err(PlanError::Duplicate("db".into(), 1, 2))
        );
        assert_eq!(
            check(&plan(&[&["nope"]])),
            Err(PlanError::UnknownVm("nope".into()))
        );
        let mut p = plan(&[&["db"]]);
        p.networks[0].recovery = "missing".into();
        assert_eq!(check(&p), Err(PlanError::UnknownNetwork("missing".into())));
        let mut p = plan(&[&["db"]]);
        p.networks.clear();
        assert!(matches!(check(&p), Err(PlanError::Unmapped { .. })));
        let mut p = plan(&[&["db"]]);
        p.networks.push(p.networks[0].clone());
        assert_eq!(check(&p), Err(PlanError::DuplicateMapping("prod".into())));
        let mut p = plan(&[&["db"]]);
        p.protected_site = "b".into();
        assert_eq!(check(&p), Err(PlanError::SameSite("b".into())));
        let mut p = plan(&[&["db"]]);
        p.groups[0].vms[0].ip = Some("10.0.0.1".into());
        assert!(matches!(check(&p), Err(PlanError::BadAddress(..))));
        let mut p = plan(&[&["db"]]);
        p.groups[0].pre_steps.push(PlanStep::Wait { seconds: 0 });
        assert!(matches!(check(&p), Err(PlanError::BadTimeout(..))));
        let mut p = plan(&[&["db"]]);
        p.name = "bad name".into();
        assert!(matches!(check(&p), Err(PlanError::Name(..))));
    }

    #[test]
    fn bubble_names_fit_a_bridge() {
        let (n, b) = bubble_switch("p");
        assert_eq!(n, "p-bubble");
        assert!(b.len() <= 10);
        let long = "x".repeat(63);
        let (n, b) = bubble_switch(&long);
        assert!(n.len() <= 63 && b.len() <= 10);
        assert_ne!(bubble_switch("a").1, bubble_switch("b").1);
    }

    #[test]
    fn a_taken_test_network_is_refused() {
        let p = plan(&[&["db"]]);
        assert_eq!(
            validate(&p, "b", &replicas(&["db"]), &["dr".into(), "p-prod".into()]),
            Err(PlanError::TestNetworkTaken("p-prod".into()))
        );
    }

    #[test]
    fn a_replica_of_another_site_is_refused() {
        let p = plan(&[&["db"]]);
        let mut r = replicas(&["db"]);
        r[0].source_site = "c".into();
        assert!(matches!(
            validate(&p, "b", &r, &["dr".into()]),
            Err(PlanError::OtherSite { .. })
        ));
    }

    #[test]
    fn the_plan_format_round_trips() {
        let mut p = plan(&[&["db"], &["web"]]);
        p.groups[0].vms[0].wait = ReadyWait::Tcp {
            port: 22,
            timeout_s: 60,
        };
        p.groups[1].pre_steps = vec![
            PlanStep::Prompt {
                message: "check db".into(),
            },
            PlanStep::Command {
                command: "true".into(),
                timeout_s: 5,
            },
        ];
        let j = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<Plan>(&j).unwrap(), p);
    }
}
