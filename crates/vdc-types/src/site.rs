//! Sites: independent vdc installations paired for replication and
//! disaster recovery.
//!
//! Every installation has a site name (`vdc server --site-name`). Two
//! installations are paired once (`vdc site pair URL --token T`); each then
//! keeps a [`SiteRecord`] of the other with the token it calls the other
//! with. The token is a secret: it is in the store only, never in an API
//! answer or an event.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::UnixMillis;

/// Current format version of a stored [`SiteRecord`].
pub const SITE_RECORD_VERSION: u32 = 1;

/// The site name of an installation started without `--site-name`.
pub const DEFAULT_SITE_NAME: &str = "default";

/// This installation, as `GET /api/v1/sites/local` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LocalSite {
    /// The site name.
    pub name: String,
    /// The URL the peer sites call this one at (`--site-url`), if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// A paired site as the store keeps it (`/sites/<name>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteRecord {
    /// Format version ([`SITE_RECORD_VERSION`]).
    pub version: u32,
    /// The peer's site name.
    pub name: String,
    /// The peer's API URL.
    pub url: String,
    /// The token this site calls the peer with (a secret).
    pub token: String,
    /// When the pairing was made.
    pub paired_ms: UnixMillis,
}

/// A paired site as the API shows it (no token).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Site {
    /// The peer's site name.
    pub name: String,
    /// The peer's API URL.
    pub url: String,
    /// When the pairing was made.
    pub paired_ms: UnixMillis,
    /// Whether the last call to the peer answered.
    pub reachable: bool,
    /// When the peer last answered, if ever since this server started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_ms: Option<UnixMillis>,
    /// Round-trip time of the last answered call, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<u64>,
}

/// `POST /api/v1/sites/pair`: pair this site with the site at `url`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PairSiteRequest {
    /// The peer's API URL.
    pub url: String,
    /// An API token of the peer.
    pub token: String,
    /// The peer's site name as expected (refused if the peer has another).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The URL the peer should call this site at (default: this server's
    /// `--site-url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_url: Option<String>,
}

/// `POST /api/v1/sites/pair-request`: what a site pairing with this one
/// sends (its name, its URL and the token this site will call it with).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SitePairRequest {
    /// The requesting site's name.
    pub name: String,
    /// The requesting site's API URL.
    pub url: String,
    /// The token to call the requesting site with.
    pub token: String,
}
