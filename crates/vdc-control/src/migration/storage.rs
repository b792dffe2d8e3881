//! Storage migration of a VM's disks to another datastore (with or without
//! a host move). Not built yet.

use std::sync::Arc;

use vdc_types::migration::{MigrateRequest, MigrationKind};
use vdc_types::{ApiError, Task};

use crate::{Cluster, VmRecord};

impl Cluster {
    /// Moves VM `name`'s disks to `req.datastore` (a `vm.migrate` task).
    pub(crate) async fn storage_migration(
        self: &Arc<Self>,
        _name: &str,
        _rec: VmRecord,
        _req: MigrateRequest,
    ) -> Result<Task, ApiError> {
        Err(super::not_available(MigrationKind::Storage))
    }
}
