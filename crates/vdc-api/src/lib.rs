//! The vdc REST API (`/api/v1`), its OpenAPI document, the event stream
//! (Server-Sent Events) and the web page, on top of [`vdc_control`].
//!
//! Every `/api/v1` route but `/version` and `/openapi.json` needs
//! `Authorization: Bearer <secret>` (the event stream also takes
//! `?access_token=` because browsers' `EventSource` cannot set headers):
//! a user token for the user routes, a host's agent credential for the
//! agent routes (see [`auth`] and [`credentials`]).
//! Errors are always `{code, message, details?}` with the status chosen in
//! [`error::ApiErr`].

pub mod auth;
mod backup;
mod control_plane;
mod cpu_baseline;
pub mod credentials;
pub(crate) mod dr;
pub mod error;
mod events;
pub mod forward;
mod ha;
mod join;
mod maintenance;
mod migration;
mod nics;
mod openapi;
mod replication;
mod routes;
mod server;
mod sites;
mod snapshots;
pub mod store_url;
mod switches;
mod templates_vm;
pub mod tls;

pub use credentials::Credentials;
pub use openapi::ApiDoc;
pub use routes::{router, AppState, API_BODY_MAX};
pub use server::{run_server, ServerArgs};
