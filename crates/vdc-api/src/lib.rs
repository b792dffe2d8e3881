//! The vdc REST API (`/api/v1`), its OpenAPI document, the event stream
//! (Server-Sent Events) and the web page, on top of [`vdc_control`].
//!
//! Every `/api/v1` route but `/version` and `/openapi.json` needs
//! `Authorization: Bearer <token>` (the event stream also takes
//! `?access_token=` because browsers' `EventSource` cannot set headers).
//! Errors are always `{code, message, details?}` with the status chosen in
//! [`error::ApiErr`].

pub mod error;
mod openapi;
mod routes;
mod server;

pub use openapi::ApiDoc;
pub use routes::{router, AppState};
pub use server::{run_server, ServerArgs};
