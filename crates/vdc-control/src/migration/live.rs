//! Live migration of a running VM to another host.

use std::sync::Arc;

use vdc_types::migration::{MigrateRequest, MigrationKind};
use vdc_types::{ApiError, Task};

use crate::{Cluster, VmRecord};

impl Cluster {
    /// Moves running VM `name` to another host while it runs (a
    /// `vm.migrate` task).
    pub(crate) async fn live_migration(
        self: &Arc<Self>,
        _name: &str,
        _rec: VmRecord,
        _req: MigrateRequest,
    ) -> Result<Task, ApiError> {
        Err(super::not_available(MigrationKind::Live))
    }
}
