//! vdc-store
