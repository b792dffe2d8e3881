//! Replication of VMs to a paired site (see `docs/architecture.md`).

/// Store prefix of the replication records (`/replications/<vm>`).
pub const REPLICATIONS_PREFIX: &str = "/replications/";
