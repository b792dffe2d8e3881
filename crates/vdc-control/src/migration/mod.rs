//! VM migration: a request (`POST /api/v1/vms/{name}/migrate`, `vdc vm
//! migrate`) becomes one kind of move, chosen here from the VM's power
//! state and the request ([`pick_kind`], pure), and carried out by that
//! kind's module as a `vm.migrate` task:
//!
//! | VM | request | kind | module |
//! |---|---|---|---|
//! | any | `datastore` given | storage migration | `storage` |
//! | running, paused | a host move | live migration | `live` |
//! | stopped | a host move | cold migration | `cold` |
//! | suspended | a host move | suspended migration (the saved state moves) | `cold` |
//!
//! Live migration's files: `live` (checks, the task body, the commit),
//! `live_jobs` (its agent jobs as the server runs them), `live_restart`
//! (a server restarted mid-way), `limits` (concurrent migrations), `tls`
//! (the stream's encryption: setting, choice, certificate checks).
//!
//! Every kind checks what it can before anything moves (a clear 4xx with
//! nothing changed) and claims the VM through the lifecycle
//! ([`crate::lifecycle::decide`], operation `migrating {source, target}`).

mod cold;
pub mod limits;
pub(crate) mod live;
mod live_jobs;
mod live_restart;
mod live_storage;
mod storage;
mod target;
pub mod tls;

pub use limits::MigrationSettings;

use std::sync::Arc;

use vdc_types::migration::{MigrateRequest, MigrationKind};
use vdc_types::names::validate_name;
use vdc_types::{ApiError, Task, VmAction, VmPowerState};

use crate::Cluster;

/// The kind of move a request for a VM in `state` becomes; `None` when the
/// VM's state allows no migration (the lifecycle says why).
pub fn pick_kind(state: VmPowerState, req: &MigrateRequest) -> Option<MigrationKind> {
    if req.datastore.is_some() {
        return Some(MigrationKind::Storage);
    }
    match state {
        VmPowerState::Running | VmPowerState::Paused => Some(MigrationKind::Live),
        VmPowerState::Stopped => Some(MigrationKind::Cold),
        VmPowerState::Suspended => Some(MigrationKind::Suspended),
        _ => None,
    }
}

impl Cluster {
    /// Migrates VM `name` as `req` asks (a `vm.migrate` task): checks the
    /// request, picks the kind of move and hands it to that kind's flow.
    pub async fn migrate_vm(
        self: &Arc<Self>,
        name: &str,
        req: MigrateRequest,
    ) -> Result<Task, ApiError> {
        for (what, v) in [("host", &req.to), ("datastore", &req.datastore)] {
            if let Some(v) = v {
                validate_name(what, v).map_err(ApiError::invalid)?;
            }
        }
        let rec = self.record(name).await?;
        let Some(kind) = pick_kind(rec.state, &req) else {
            // The lifecycle's refusal says what state is needed.
            rec.decide(VmAction::Migrate, Some("another host"))?;
            return Err(ApiError::invalid_state(format!(
                "VM '{name}' cannot migrate while it is {}",
                rec.state
            )));
        };
        match kind {
            MigrationKind::Live => self.live_migration(name, rec, req).await,
            MigrationKind::Storage => self.storage_migration(name, rec, req).await,
            MigrationKind::Cold => self.cold_migration(name, rec, req).await,
            MigrationKind::Suspended => self.suspended_migration(name, rec, req).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use VmPowerState as S;

    #[test]
    fn the_kind_follows_state_and_request() {
        let host = MigrateRequest {
            to: Some("b".into()),
            ..Default::default()
        };
        let ds = MigrateRequest {
            datastore: Some("fast".into()),
            ..Default::default()
        };
        assert_eq!(pick_kind(S::Running, &host), Some(MigrationKind::Live));
        assert_eq!(pick_kind(S::Paused, &host), Some(MigrationKind::Live));
        assert_eq!(pick_kind(S::Stopped, &host), Some(MigrationKind::Cold));
        assert_eq!(
            pick_kind(S::Suspended, &host),
            Some(MigrationKind::Suspended)
        );
        assert_eq!(pick_kind(S::Running, &ds), Some(MigrationKind::Storage));
        assert_eq!(pick_kind(S::Stopped, &ds), Some(MigrationKind::Storage));
        for s in [
            S::Starting,
            S::ShuttingDown,
            S::Suspending,
            S::Crashed,
            S::Unknown,
        ] {
            assert_eq!(pick_kind(s, &host), None, "{s}");
        }
    }
}
