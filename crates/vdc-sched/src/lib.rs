//! Pure scheduling decisions: where a VM should run.
//!
//! Nothing here does I/O, so the rules can be unit- and property-tested in
//! milliseconds. The control plane gathers a [`HostCapacity`] per host from
//! the agents' reports and asks [`place`] for a host.
//!
//! Initial placement:
//! 1. keep the hosts that are connected, not in maintenance, and reach the
//!    VM's datastore;
//! 2. keep those with room for the VM's memory (what the host reports free,
//!    less what other placements have already promised but not yet started,
//!    less a per-VM overhead for QEMU itself);
//! 3. prefer the host with the most memory left afterwards (compared in
//!    [`MEMORY_BUCKET_MIB`] steps, so that report noise does not decide),
//!    then the lowest vCPU commitment per core, then the name (so the
//!    choice is stable).
//!
//! Evacuation of a host entering maintenance: [`evacuate::plan_evacuation`].

pub mod cpu_baseline;

pub mod evacuate;

pub mod ha;

pub mod ha_order;
pub mod lease_watch;

/// Memory QEMU itself needs beyond the guest's RAM, MiB (device model,
/// TCG translation cache); measured ~100 MiB under TCG for small guests.
pub const QEMU_OVERHEAD_MIB: u64 = 128;

/// Granularity of free-memory comparisons between hosts, MiB.
pub const MEMORY_BUCKET_MIB: u64 = 512;

/// What placement needs to know about one host.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HostCapacity {
    /// Host name.
    pub name: String,
    /// Whether the host accepts new VMs (connected and not in maintenance).
    pub available: bool,
    /// Logical CPUs.
    pub cpus: u32,
    /// Physical memory, MiB.
    pub memory_mib: u64,
    /// Memory the host reports available, MiB.
    pub memory_free_mib: u64,
    /// Memory promised to VMs being started there but not yet counted in
    /// `memory_free_mib`, MiB.
    pub memory_pending_mib: u64,
    /// vCPUs of the VMs running there.
    pub vcpus_committed: u32,
    /// Datastores the host reaches.
    pub datastores: Vec<String>,
    /// The host's CPU (`None`: not reported, not checked).
    pub cpu: Option<cpu_baseline::HostCpu>,
    /// Switches the host realizes (`None`: not reported, not checked).
    pub switches: Option<Vec<String>>,
}

/// What a VM asks of a host.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Demand {
    /// vCPUs.
    pub cpus: u32,
    /// Memory, MiB.
    pub memory_mib: u64,
    /// Datastores the host must reach (home and disks).
    pub datastores: Vec<String>,
    /// The VM's CPU model (`None`: not checked).
    pub cpu_model: Option<String>,
    /// Switches of the VM's port groups the host must realize.
    pub switches: Vec<String>,
}

/// The first of `demand`'s switches `host` does not realize, if any.
pub fn missing_switch<'a>(demand: &'a Demand, host: &HostCapacity) -> Option<&'a String> {
    let have = host.switches.as_ref()?;
    demand.switches.iter().find(|s| !have.contains(s))
}

/// Why `host` cannot run the CPU model `demand` asks for, if it cannot.
pub fn cpu_refusal(demand: &Demand, host: &HostCapacity) -> Option<String> {
    let (Some(model), Some(cpu)) = (&demand.cpu_model, &host.cpu) else {
        return None;
    };
    let fit = cpu_baseline::check_model(model, cpu);
    (!fit.ok()).then(|| fit.reason(model))
}

/// Why no host fits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// No host is connected.
    #[error("no host is connected")]
    NoHosts,
    /// No connected host reaches the datastores.
    #[error("no connected host reaches datastore(s) {0}")]
    NoDatastoreAccess(String),
    /// The VM is larger than any host.
    #[error("{needed} MiB of memory is more than any host has (largest: {largest} MiB)")]
    TooLarge {
        /// Memory asked, with overhead.
        needed: u64,
        /// Largest host memory.
        largest: u64,
    },
    /// Every host that could run it is too full now.
    #[error("no host has {needed} MiB of memory free (most free: {most_free} MiB on '{host}')")]
    NoRoom {
        /// Memory asked, with overhead.
        needed: u64,
        /// Most free memory on an eligible host.
        most_free: u64,
        /// That host.
        host: String,
    },
    /// More vCPUs than any host has logical CPUs.
    #[error("{0} vCPUs is more than any host has CPUs")]
    TooManyCpus(u32),
    /// The chosen host takes no new VMs.
    #[error("host '{0}' takes no new VMs (in maintenance, or disconnected); choose another host")]
    Unavailable(String),
    /// The chosen host's CPU cannot run the VM's CPU model.
    #[error("host '{host}' cannot run the VM's CPU model: {reason}; choose a host that meets the cluster's CPU baseline")]
    CpuIncompatible {
        /// The host.
        host: String,
        /// Which flags it lacks.
        reason: String,
    },
    /// A host lacks a switch of the VM's port groups.
    #[error("host '{host}' does not realize switch '{switch}' of the VM's port groups; see `vdc switch show {switch}`")]
    NoSwitchOn {
        /// The host.
        host: String,
        /// The switch.
        switch: String,
    },
    /// No connected host realizes a switch of the VM's port groups.
    #[error(
        "no connected host realizes switch(es) {0} of the VM's port groups; see `vdc switch list`"
    )]
    NoSwitch(String),
    /// No host that reaches the datastores can run the VM's CPU model.
    #[error("no connected host can run CPU model {0}; add a host that meets it (see `vdc host cpu-baseline`)")]
    NoCpuMatch(String),
}

/// Memory a VM occupies on a host, guest RAM plus QEMU's own.
pub fn footprint_mib(memory_mib: u64) -> u64 {
    memory_mib.saturating_add(QEMU_OVERHEAD_MIB)
}

/// Whether a VM could ever fit on any of `hosts` (ignoring current load):
/// used to reject impossible requests before any work starts.
pub fn check_fits_any(demand: &Demand, hosts: &[HostCapacity]) -> Result<(), PlacementError> {
    if hosts.is_empty() {
        return Err(PlacementError::NoHosts);
    }
    let largest = hosts.iter().map(|h| h.memory_mib).max().unwrap_or(0);
    let needed = footprint_mib(demand.memory_mib);
    if needed > largest {
        return Err(PlacementError::TooLarge { needed, largest });
    }
    let max_cpus = hosts.iter().map(|h| h.cpus).max().unwrap_or(0);
    if demand.cpus > max_cpus {
        return Err(PlacementError::TooManyCpus(demand.cpus));
    }
    if !demand.switches.is_empty() && hosts.iter().all(|h| missing_switch(demand, h).is_some()) {
        return Err(PlacementError::NoSwitch(demand.switches.join(", ")));
    }
    Ok(())
}

/// Checks one given host (the administrator chose it).
pub fn check_host(demand: &Demand, host: &HostCapacity) -> Result<(), PlacementError> {
    if !host.available {
        return Err(PlacementError::Unavailable(host.name.clone()));
    }
    if let Some(sw) = missing_switch(demand, host) {
        return Err(PlacementError::NoSwitchOn {
            host: host.name.clone(),
            switch: sw.clone(),
        });
    }
    check_fits_any(demand, std::slice::from_ref(host))?;
    if let Some(reason) = cpu_refusal(demand, host) {
        return Err(PlacementError::CpuIncompatible {
            host: host.name.clone(),
            reason,
        });
    }
    if let Some(ds) = demand
        .datastores
        .iter()
        .find(|d| !host.datastores.contains(d))
    {
        return Err(PlacementError::NoDatastoreAccess(ds.clone()));
    }
    let needed = footprint_mib(demand.memory_mib);
    let free = host.memory_free_mib.saturating_sub(host.memory_pending_mib);
    if needed > free {
        return Err(PlacementError::NoRoom {
            needed,
            most_free: free,
            host: host.name.clone(),
        });
    }
    Ok(())
}

/// Picks the best host for `demand`.
pub fn place(demand: &Demand, hosts: &[HostCapacity]) -> Result<String, PlacementError> {
    let live: Vec<&HostCapacity> = hosts.iter().filter(|h| h.available).collect();
    if live.is_empty() {
        return Err(PlacementError::NoHosts);
    }
    let reach: Vec<&HostCapacity> = live
        .into_iter()
        .filter(|h| demand.datastores.iter().all(|d| h.datastores.contains(d)))
        .collect();
    if reach.is_empty() {
        return Err(PlacementError::NoDatastoreAccess(
            demand.datastores.join(", "),
        ));
    }
    let reach: Vec<&HostCapacity> = reach
        .into_iter()
        .filter(|h| missing_switch(demand, h).is_none())
        .collect();
    if reach.is_empty() {
        return Err(PlacementError::NoSwitch(demand.switches.join(", ")));
    }
    let reach: Vec<&HostCapacity> = reach
        .into_iter()
        .filter(|h| cpu_refusal(demand, h).is_none())
        .collect();
    if reach.is_empty() {
        return Err(PlacementError::NoCpuMatch(
            demand.cpu_model.clone().unwrap_or_default(),
        ));
    }
    let needed = footprint_mib(demand.memory_mib);
    let free = |h: &HostCapacity| h.memory_free_mib.saturating_sub(h.memory_pending_mib);
    let fitting: Vec<&HostCapacity> = reach
        .iter()
        .copied()
        .filter(|h| free(h) >= needed && demand.cpus <= h.cpus)
        .collect();
    if fitting.is_empty() {
        let owned: Vec<HostCapacity> = reach.iter().map(|h| (*h).clone()).collect();
        check_fits_any(demand, &owned)?;
        let best = reach
            .iter()
            .max_by_key(|h| free(h))
            .map(|h| (free(h), h.name.clone()))
            .unwrap_or((0, String::new()));
        return Err(PlacementError::NoRoom {
            needed,
            most_free: best.0,
            host: best.1,
        });
    }
    let best = fitting
        .into_iter()
        .max_by(|a, b| {
            // Memory left, in buckets: a few MiB of noise between two
            // reports must not outweigh a real difference in CPU load.
            let left = |h: &HostCapacity| (free(h) - needed) / MEMORY_BUCKET_MIB;
            let cpu_load = |h: &HostCapacity| {
                (h.vcpus_committed as f64 + demand.cpus as f64) / h.cpus.max(1) as f64
            };
            left(a)
                .cmp(&left(b))
                .then(
                    cpu_load(b)
                        .partial_cmp(&cpu_load(a))
                        .unwrap_or(std::cmp::Ordering::Equal),
                )
                .then(b.name.cmp(&a.name))
        })
        .map(|h| h.name.clone());
    best.ok_or(PlacementError::NoHosts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn host(name: &str, free: u64) -> HostCapacity {
        HostCapacity {
            switches: None,
            name: name.into(),
            available: true,
            cpus: 2,
            memory_mib: 24_000,
            memory_free_mib: free,
            memory_pending_mib: 0,
            vcpus_committed: 0,
            datastores: vec!["shared".into()],
            cpu: None,
        }
    }

    fn demand(mem: u64) -> Demand {
        Demand {
            switches: vec![],
            cpus: 1,
            memory_mib: mem,
            datastores: vec!["shared".into()],
            cpu_model: None,
        }
    }

    fn cpu(name: &str, flags: &[&str]) -> Option<cpu_baseline::HostCpu> {
        Some(cpu_baseline::HostCpu {
            name: name.into(),
            emulated: false,
            flags: flags.iter().map(|f| f.to_string()).collect(),
        })
    }

    #[test]
    fn hosts_without_the_vms_switches_are_skipped_or_refused() {
        let mut d = demand(512);
        d.switches = vec!["vsw".into()];
        let mut without = host("h1", 8_000);
        without.switches = Some(vec!["vmbr0".into()]);
        let mut with = host("h2", 4_000);
        with.switches = Some(vec!["vmbr0".into(), "vsw".into()]);
        let unknown = host("h3", 2_000);
        assert_eq!(place(&d, &[without.clone(), with.clone()]).unwrap(), "h2");
        assert!(matches!(
            check_host(&d, &without),
            Err(PlacementError::NoSwitchOn { ref switch, .. }) if switch == "vsw"
        ));
        check_host(&d, &with).unwrap();
        // A host that reports no switches (an older agent) is not checked.
        check_host(&d, &unknown).unwrap();
        assert_eq!(
            place(&d, std::slice::from_ref(&without)),
            Err(PlacementError::NoSwitch("vsw".into()))
        );
        assert_eq!(
            check_fits_any(&d, std::slice::from_ref(&without)),
            Err(PlacementError::NoSwitch("vsw".into()))
        );
    }

    #[test]
    fn a_host_that_cannot_run_the_cpu_model_is_skipped_or_refused() {
        let nehalem: Vec<&str> = cpu_baseline::required_flags("Nehalem-v1")
            .unwrap()
            .into_iter()
            .collect();
        let mut old = host("old", 9000);
        old.cpu = cpu("old", &["lm", "sse2", "pni", "cx16"]);
        let mut new = host("new", 1000);
        new.cpu = cpu("new", &nehalem);
        let d = Demand {
            cpu_model: Some("Nehalem-v1".into()),
            ..demand(256)
        };
        assert_eq!(place(&d, &[old.clone(), new]).unwrap(), "new");
        assert_eq!(
            place(&d, std::slice::from_ref(&old)),
            Err(PlacementError::NoCpuMatch("Nehalem-v1".into()))
        );
        let e = check_host(&d, &old).unwrap_err();
        assert!(
            e.to_string()
                .contains("host 'old' cannot run the VM's CPU model")
                && e.to_string().contains("ssse3"),
            "{e}"
        );
        // Not reported, or no model asked: not checked.
        old.cpu = None;
        assert!(check_host(&d, &old).is_ok());
        assert!(check_host(&demand(256), &host("x", 9000)).is_ok());
    }

    #[test]
    fn picks_most_free() {
        let hosts = [host("a", 1000), host("b", 5000), host("c", 3000)];
        assert_eq!(place(&demand(256), &hosts).unwrap(), "b");
    }

    #[test]
    fn pending_memory_counts() {
        let mut b = host("b", 5000);
        b.memory_pending_mib = 4500;
        let hosts = [host("a", 1000), b];
        assert_eq!(place(&demand(256), &hosts).unwrap(), "a");
    }

    #[test]
    fn skips_unavailable_and_unreachable() {
        let mut a = host("a", 9000);
        a.available = false;
        let mut b = host("b", 9000);
        b.datastores = vec!["local-b".into()];
        let hosts = [a, b, host("c", 1000)];
        assert_eq!(place(&demand(256), &hosts).unwrap(), "c");
    }

    #[test]
    fn too_large_is_reported() {
        let hosts = [host("a", 1000)];
        assert!(matches!(
            place(&demand(100_000), &hosts),
            Err(PlacementError::TooLarge { .. })
        ));
        assert!(matches!(
            place(&demand(2000), &hosts),
            Err(PlacementError::NoRoom { .. })
        ));
    }

    #[test]
    fn equal_memory_goes_to_the_least_loaded_cpu() {
        let mut a = host("a", 5000);
        a.vcpus_committed = 2;
        let b = host("b", 5010);
        let mut c = host("c", 5020);
        c.vcpus_committed = 1;
        assert_eq!(place(&demand(256), &[a, b, c]).unwrap(), "b");
    }

    #[test]
    fn no_hosts() {
        assert_eq!(place(&demand(1), &[]), Err(PlacementError::NoHosts));
    }

    proptest! {
        #[test]
        fn chosen_host_always_fits(frees in proptest::collection::vec(0u64..10_000, 1..8), mem in 1u64..4000) {
            let hosts: Vec<HostCapacity> = frees.iter().enumerate().map(|(i, f)| host(&format!("h{i}"), *f)).collect();
            match place(&demand(mem), &hosts) {
                Ok(name) => {
                    let h = hosts.iter().find(|h| h.name == name).unwrap();
                    prop_assert!(h.memory_free_mib >= footprint_mib(mem));
                    let bucket = |f: u64| (f - footprint_mib(mem)) / MEMORY_BUCKET_MIB;
                    prop_assert!(hosts.iter().filter(|o| o.memory_free_mib >= footprint_mib(mem)).all(|o| bucket(o.memory_free_mib) <= bucket(h.memory_free_mib)));
                }
                Err(_) => prop_assert!(hosts.iter().all(|h| h.memory_free_mib < footprint_mib(mem))),
            }
        }
    }
}
