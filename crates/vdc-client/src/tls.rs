//! The live migration settings (stream encryption, the cluster CA, each
//! host's certificate).

use vdc_types::migration::{MigrationSettingsView, SetMigrationSettingsRequest};

use crate::{Client, ClientError};

impl Client {
    /// `GET /migration/settings`.
    pub async fn migration_settings(&self) -> Result<MigrationSettingsView, ClientError> {
        self.get("/migration/settings").await
    }

    /// `PUT /migration/settings`.
    pub async fn set_migration_settings(
        &self,
        req: &SetMigrationSettingsRequest,
    ) -> Result<MigrationSettingsView, ClientError> {
        self.send(
            self.req(reqwest::Method::PUT, "/migration/settings")
                .json(req),
        )
        .await
    }
}
