//! vdc-agent
