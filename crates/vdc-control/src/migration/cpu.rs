//! Whether a host's CPU can run a VM's CPU model, from the flags its agent
//! reports (the rule itself: [`vdc_sched::cpu_baseline`]).

use vdc_sched::cpu_baseline::{check_model, HostCpu};
use vdc_types::agent::HostReport;
use vdc_types::Accelerator;

/// Why the host of `report` cannot run `cpu_model`, naming the missing
/// flags; `None` when it can, runs TCG, or reported no flags (an older
/// agent: not checked).
pub(crate) fn cpu_refusal(report: &HostReport, cpu_model: &str) -> Option<String> {
    let flags = &report.qemu_models.as_ref()?.cpu_flags;
    if flags.is_empty() {
        return None;
    }
    let host = HostCpu {
        name: report.name.clone(),
        emulated: report.accelerator == Accelerator::Tcg,
        flags: flags.iter().cloned().collect(),
    };
    let fit = check_model(cpu_model, &host);
    (!fit.ok()).then(|| fit.reason(cpu_model))
}
