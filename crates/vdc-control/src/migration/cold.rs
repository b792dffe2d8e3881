//! Cold migration of a stopped VM and migration of a suspended VM (its
//! saved state moves with it) to another host. Not built yet.

use std::sync::Arc;

use vdc_types::migration::{MigrateRequest, MigrationKind};
use vdc_types::{ApiError, Task};

use crate::{Cluster, VmRecord};

impl Cluster {
    /// Moves stopped VM `name` to another host (a `vm.migrate` task).
    pub(crate) async fn cold_migration(
        self: &Arc<Self>,
        _name: &str,
        _rec: VmRecord,
        _req: MigrateRequest,
    ) -> Result<Task, ApiError> {
        Err(super::not_available(MigrationKind::Cold))
    }

    /// Moves suspended VM `name` and its saved state to another host (a
    /// `vm.migrate` task).
    pub(crate) async fn suspended_migration(
        self: &Arc<Self>,
        _name: &str,
        _rec: VmRecord,
        _req: MigrateRequest,
    ) -> Result<Task, ApiError> {
        Err(super::not_available(MigrationKind::Suspended))
    }
}
