//! vdc-control
