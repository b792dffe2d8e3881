//! vdc-net
