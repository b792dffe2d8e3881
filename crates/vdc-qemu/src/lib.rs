//! vdc-qemu
