//! The server's credential registry: the user token, one agent credential
//! per host, and the server credential agents learn when they join.
//!
//! # Join
//! 1. An administrator adds the host (`vdc host add NAME`,
//!    `POST /api/v1/hosts`): the server mints the agent credential
//!    `vdca.<host>.<secret>`, keeps only its SHA-256 under
//!    `/credentials/agents/<host>` and shows the credential once.
//! 2. The host's agent starts with that credential (`--credential-file`) and
//!    calls `POST /api/v1/agent/join`; the server checks the credential
//!    against its host, records the join (`host.joined`) and answers with
//!    the server credential.
//! 3. From then on the agent reports with its credential (only for its own
//!    host) and accepts calls to its API only with the server credential.
//!
//! Store records (versioned; a newer version is refused):
//!
//! | key | value |
//! |---|---|
//! | `/credentials/agents/<host>` | [`AgentCredentialRecord`] |
//! | `/credentials/server` | [`ServerCredentialRecord`] |
//! | `/credentials/sites/<site>` | [`SiteCredentialRecord`] |
//!
//! # Site tokens
//! Pairing with a peer site mints `vdcs.<site>.<secret>` for the peer to
//! call this site with (kept only as its SHA-256); it acts as an operator.

use std::sync::Arc;

use rand::RngCore;
use serde::{Deserialize, Serialize};
use vdc_store::{Store, StoreError, StoreExt};
use vdc_types::auth::{
    agent_credential, agent_credential_host, HostJoin, Principal, Role, SecretHash,
};
use vdc_types::{ApiError, ErrorCode, UnixMillis};

/// Version of the credential records.
pub const CREDENTIALS_VERSION: u32 = 1;
const AGENTS_PREFIX: &str = "/credentials/agents/";
const SERVER_KEY: &str = "/credentials/server";
const SITES_PREFIX: &str = "/credentials/sites/";
/// First part of a site token.
const SITE_TOKEN_PREFIX: &str = "vdcs.";

/// The token a paired site calls this one with, as the server keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteCredentialRecord {
    /// Record format version ([`CREDENTIALS_VERSION`]).
    pub version: u32,
    /// The peer site the token was made for.
    pub site: String,
    /// SHA-256 of the token.
    pub hash: SecretHash,
    /// When it was made.
    pub added_ms: UnixMillis,
}

/// A host's agent credential as the server keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentCredentialRecord {
    /// Record format version ([`CREDENTIALS_VERSION`]).
    pub version: u32,
    /// The host the credential is bound to.
    pub host: String,
    /// SHA-256 of the credential.
    pub hash: SecretHash,
    /// When it was made.
    pub added_ms: UnixMillis,
    /// When the agent last joined.
    pub joined_ms: Option<UnixMillis>,
}

/// The server credential (kept in clear: the server presents it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerCredentialRecord {
    /// Record format version ([`CREDENTIALS_VERSION`]).
    pub version: u32,
    /// The credential.
    pub credential: String,
}

/// Errors of the registry.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The store failed.
    #[error("credential store failed")]
    Store(#[from] StoreError),
    /// A record was written by a newer server.
    #[error("credential record '{key}' has version {found}; this server reads up to {CREDENTIALS_VERSION}")]
    NewerVersion {
        /// Key of the record.
        key: String,
        /// Version found.
        found: u32,
    },
}

impl From<CredentialError> for ApiError {
    fn from(e: CredentialError) -> ApiError {
        match &e {
            CredentialError::Store(s) => ApiError::internal(format!("{e}: {s}")),
            CredentialError::NewerVersion { .. } => ApiError::internal(e.to_string()),
        }
    }
}

/// The registry (see the module docs).
pub struct Credentials {
    store: Arc<dyn Store>,
    user: SecretHash,
    server_credential: String,
}

/// A fresh 128-bit secret, hex.
fn new_secret() -> String {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn check_version(key: &str, found: u32) -> Result<(), CredentialError> {
    if found > CREDENTIALS_VERSION {
        return Err(CredentialError::NewerVersion {
            key: key.to_string(),
            found,
        });
    }
    Ok(())
}

/// The site a site token names, if `token` has the site form.
fn site_token_site(token: &str) -> Option<&str> {
    let rest = token.strip_prefix(SITE_TOKEN_PREFIX)?;
    let (site, secret) = rest.rsplit_once('.')?;
    (!site.is_empty() && !secret.is_empty()).then_some(site)
}

impl Credentials {
    /// Opens the registry; `user_token` is the administrator's token. The
    /// server credential is made on first use and kept in the store.
    pub async fn open(
        store: Arc<dyn Store>,
        user_token: &str,
    ) -> Result<Credentials, CredentialError> {
        let fresh = ServerCredentialRecord {
            version: CREDENTIALS_VERSION,
            credential: new_secret(),
        };
        let server_credential = match store.create_json(SERVER_KEY, &fresh).await {
            Ok(_) => fresh.credential,
            Err(StoreError::AlreadyExists(_)) => {
                let rec: ServerCredentialRecord = store
                    .get_json(SERVER_KEY)
                    .await?
                    .ok_or_else(|| StoreError::NotFound(SERVER_KEY.to_string()))?;
                check_version(SERVER_KEY, rec.version)?;
                rec.credential
            }
            Err(e) => return Err(e.into()),
        };
        Ok(Credentials {
            store,
            user: SecretHash::of(user_token),
            server_credential,
        })
    }

    /// The credential the server presents to agents.
    pub fn server_credential(&self) -> &str {
        &self.server_credential
    }

    /// Who holds `bearer`, or `None` for an unknown secret.
    pub async fn authenticate(&self, bearer: &str) -> Result<Option<Principal>, CredentialError> {
        if let Some(site) = site_token_site(bearer) {
            let key = format!("{SITES_PREFIX}{site}");
            let Some(rec) = self.store.get_json::<SiteCredentialRecord>(&key).await? else {
                return Ok(None);
            };
            check_version(&key, rec.version)?;
            return Ok(rec.hash.matches(bearer).then_some(Principal::User {
                role: Role::Operator,
            }));
        }
        if let Some(host) = agent_credential_host(bearer) {
            let Some(rec) = self.agent_record(host).await? else {
                return Ok(None);
            };
            return Ok(rec.hash.matches(bearer).then(|| Principal::Agent {
                host: rec.host.clone(),
            }));
        }
        Ok(self.user.matches(bearer).then_some(Principal::User {
            role: Role::Administrator,
        }))
    }

    async fn agent_record(
        &self,
        host: &str,
    ) -> Result<Option<AgentCredentialRecord>, CredentialError> {
        if vdc_types::names::validate_name("host", host).is_err() {
            return Ok(None);
        }
        let key = format!("{AGENTS_PREFIX}{host}");
        let rec: Option<AgentCredentialRecord> = self.store.get_json(&key).await?;
        if let Some(r) = &rec {
            check_version(&key, r.version)?;
        }
        Ok(rec)
    }

    /// Mints the agent credential of a host; 409 if the host has one,
    /// unless `replace`, which makes the old one stop working.
    pub async fn add_host(&self, host: &str, replace: bool) -> Result<String, ApiError> {
        vdc_types::names::validate_name("host", host).map_err(ApiError::invalid)?;
        let credential = agent_credential(host, &new_secret());
        let rec = AgentCredentialRecord {
            version: CREDENTIALS_VERSION,
            host: host.to_string(),
            hash: SecretHash::of(&credential),
            added_ms: vdc_types::now_ms(),
            joined_ms: None,
        };
        let key = format!("{AGENTS_PREFIX}{host}");
        if replace {
            self.store
                .put_json(&key, &rec)
                .await
                .map_err(CredentialError::Store)?;
            return Ok(credential);
        }
        match self.store.create_json(&key, &rec).await {
            Ok(_) => Ok(credential),
            Err(StoreError::AlreadyExists(_)) => Err(ApiError::new(
                ErrorCode::AlreadyExists,
                format!(
                    "host '{host}' was already added; its agent keeps the credential it was given"
                ),
            )),
            Err(e) => Err(CredentialError::Store(e).into()),
        }
    }

    /// Mints the token paired site `site` calls this site with, replacing
    /// any earlier one.
    pub async fn add_site(&self, site: &str) -> Result<String, ApiError> {
        vdc_types::names::validate_name("site", site).map_err(ApiError::invalid)?;
        let token = format!("{SITE_TOKEN_PREFIX}{site}.{}", new_secret());
        let rec = SiteCredentialRecord {
            version: CREDENTIALS_VERSION,
            site: site.to_string(),
            hash: SecretHash::of(&token),
            added_ms: vdc_types::now_ms(),
        };
        self.store
            .put_json(&format!("{SITES_PREFIX}{site}"), &rec)
            .await
            .map_err(CredentialError::Store)?;
        Ok(token)
    }

    /// Revokes the token of paired site `site` (nothing if it has none).
    pub async fn remove_site(&self, site: &str) -> Result<(), CredentialError> {
        self.store.delete(&format!("{SITES_PREFIX}{site}")).await?;
        Ok(())
    }

    /// Records that `host`'s agent joined.
    pub async fn record_join(&self, host: &str) -> Result<(), CredentialError> {
        let now = vdc_types::now_ms();
        self.store
            .update_json::<AgentCredentialRecord, CredentialError, _>(
                &format!("{AGENTS_PREFIX}{host}"),
                |mut r| {
                    r.joined_ms = Some(now);
                    Ok(r)
                },
            )
            .await?;
        Ok(())
    }

    /// Every added host and when it joined, by name.
    pub async fn hosts(&self) -> Result<Vec<HostJoin>, CredentialError> {
        let recs: Vec<(String, AgentCredentialRecord)> =
            self.store.list_json(AGENTS_PREFIX).await?;
        recs.into_iter()
            .map(|(key, r)| {
                check_version(&key, r.version)?;
                Ok(HostJoin {
                    host: r.host,
                    added_ms: r.added_ms,
                    joined_ms: r.joined_ms,
                })
            })
            .collect()
    }
}
