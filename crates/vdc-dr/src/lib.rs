//! Disaster-recovery plans and runs, as data: the plan format and its
//! validation ([`plan`]), the steps an operation takes ([`steps`]), the run
//! record with its measured RTO and RPO ([`run`]) and the readable report
//! ([`report`]). No I/O: the control plane (`vdc-control/src/dr`) stores
//! these records and performs the steps.

pub mod plan;
pub mod report;
pub mod run;
pub mod steps;

pub use plan::{NetworkMapping, Plan, PlanError, PlanGroup, PlanStep, PlanVm, ReadyWait};
pub use run::{Operation, PlanState, Run, RunState, StepOutcome, StepRecord, VmOutcome};
pub use steps::Step;
