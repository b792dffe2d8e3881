//! vdc-test-infra
