//! vdc-qmp
