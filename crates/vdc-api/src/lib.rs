//! vdc-api
