//! vdc-disk
