//! vdc-client
