//! The lab's migration network (`vdc lab up --migration-network`): a second
//! "physical" network that only carries live migration streams, as a
//! vSphere vMotion network does.
//!
//! ```text
//!  root namespace            namespace vdc-<id>-h<i>
//!  <id>br1 (no address) ── <id>m<i> ══ mig0 10.78.N.(10+i)/24
//! ```
//!
//! The root-namespace bridge has no address (nothing but the hosts talk on
//! it), so its subnet cannot clash with the machine's routes; each host's
//! `mig0` is a plain interface in its namespace, and its agent runs with
//! `--migration-address` = that address: migrations to the host come in on
//! `mig0`, and the sending host, which has an address in the same subnet,
//! routes them out of its own `mig0`.

use std::net::Ipv4Addr;

use crate::error::Result;
use crate::ip::{ip, ip_delete, ip_in};
use crate::plan::{HostPlan, LabPlan};

/// The migration interface inside every host namespace.
pub const MIGRATION_IFACE: &str = "mig0";

/// The migration bridge of lab `lab_id`, `<id>br1`.
pub fn bridge_name(lab_id: &str) -> String {
    format!("{lab_id}br1")
}

/// Root-namespace side of host `i`'s migration veth, `<id>m<i>`.
pub fn veth_name(lab_id: &str, host: usize) -> String {
    format!("{lab_id}m{host}")
}

/// Host `host`'s migration address, `10.78.N.(10+i)`.
pub fn address(plan: &LabPlan, host: &HostPlan) -> Ipv4Addr {
    Ipv4Addr::new(10, 78, plan.subnet_index, host.address.octets()[3])
}

/// Creates the migration network of `plan` (after the lab network: the
/// namespaces exist).
pub fn create(plan: &LabPlan) -> Result<()> {
    let br = bridge_name(&plan.lab_id);
    ip(&["link", "add", &br, "type", "bridge"])?;
    ip(&["link", "set", &br, "up"])?;
    for host in &plan.hosts {
        let veth = veth_name(&plan.lab_id, host.index);
        let ns = host.netns.as_str();
        ip(&[
            "link",
            "add",
            &veth,
            "type",
            "veth",
            "peer",
            "name",
            MIGRATION_IFACE,
            "netns",
            ns,
        ])?;
        ip(&["link", "set", &veth, "master", &br])?;
        ip(&["link", "set", &veth, "up"])?;
        let addr = format!("{}/24", address(plan, host));
        ip_in(ns, &["addr", "add", &addr, "dev", MIGRATION_IFACE])?;
        ip_in(ns, &["link", "set", MIGRATION_IFACE, "up"])?;
    }
    Ok(())
}

/// Removes lab `lab_id`'s migration bridge (the veths go with the
/// namespaces). Idempotent.
pub fn destroy(lab_id: &str) -> Result<()> {
    ip_delete(&["link", "delete", &bridge_name(lab_id)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_addresses() {
        let plan = LabPlan::new(
            "t1",
            2,
            7,
            8500,
            std::path::Path::new("/s"),
            std::path::Path::new("/d"),
        )
        .unwrap();
        assert_eq!(bridge_name("t1"), "t1br1");
        assert_eq!(veth_name("t1", 2), "t1m2");
        assert_eq!(address(&plan, &plan.hosts[1]), Ipv4Addr::new(10, 78, 7, 12));
    }
}
