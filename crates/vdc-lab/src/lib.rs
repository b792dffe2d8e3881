//! vdc-lab
