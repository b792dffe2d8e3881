//! vdc-sched
