//! The cluster's CPU baseline as the control plane keeps and shows it: the
//! model new VMs get, and how each host's CPU meets it (the rules
//! themselves, pure: [`vdc_sched::cpu_baseline`]).
//!
//! The baseline is `auto` by default: the newest QEMU CPU model that every
//! connected host with hardware virtualization can run, from the flags
//! their agents report; a cluster of emulated (TCG) hosts keeps
//! [`vdc_types::vm::DEFAULT_CPU_MODEL`]. A VM keeps the model it was
//! created with (it is part of its pinned device model); placement and
//! migration skip or refuse a host whose CPU lacks the flags of a VM's
//! model, and such a host is shown as not meeting the baseline, never used
//! silently.

use vdc_sched::cpu_baseline::{check_model, effective_baseline, BaselineMode, HostCpu, ModelFit};
use vdc_types::agent::HostReport;
use vdc_types::host::{CpuBaseline, HostCpuBaseline, HostCpuFit};
use vdc_types::Accelerator;

use crate::Cluster;

/// The host's CPU as the rules need it; `None` when its agent reported no
/// flags (an older agent: not checked).
pub(crate) fn host_cpu(report: &HostReport) -> Option<HostCpu> {
    let flags = &report.qemu_models.as_ref()?.cpu_flags;
    if flags.is_empty() {
        return None;
    }
    Some(HostCpu {
        name: report.name.clone(),
        emulated: report.accelerator == Accelerator::Tcg,
        flags: flags.iter().cloned().collect(),
    })
}

/// Why the host of `report` cannot run `cpu_model`, naming the missing
/// flags; `None` when it can, runs TCG, or reported no flags.
pub(crate) fn cpu_refusal(report: &HostReport, cpu_model: &str) -> Option<String> {
    let fit = check_model(cpu_model, &host_cpu(report)?);
    (!fit.ok()).then(|| fit.reason(cpu_model))
}

/// How `host` meets `model`, for the views.
fn fit_view(model: &str, host: &HostCpu) -> HostCpuFit {
    let fit = check_model(model, host);
    HostCpuFit {
        meets: fit.ok(),
        emulated: host.emulated,
        missing_flags: match &fit {
            ModelFit::Missing(f) => f.clone(),
            _ => Vec::new(),
        },
        reason: fit.reason(model),
    }
}

impl Cluster {
    /// Sets how the baseline is chosen (server flag `--cpu-baseline`).
    pub fn set_cpu_baseline_mode(&self, mode: BaselineMode) {
        *self.cpu_baseline.write().unwrap_or_else(|e| e.into_inner()) = mode;
    }

    fn cpu_baseline_mode(&self) -> BaselineMode {
        self.cpu_baseline
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The connected hosts' CPUs that were reported.
    async fn connected_cpus(&self) -> Vec<HostCpu> {
        let live = self.live.read().await;
        let mut cpus: Vec<HostCpu> = live
            .values()
            .filter(|l| l.connected)
            .filter_map(|l| host_cpu(&l.report))
            .collect();
        cpus.sort_by(|a, b| a.name.cmp(&b.name));
        cpus
    }

    /// The CPU model a VM created now gets.
    pub(crate) async fn vm_cpu_model(&self) -> &'static str {
        effective_baseline(
            &self.cpu_baseline_mode(),
            &self.connected_cpus().await,
            vdc_types::vm::DEFAULT_CPU_MODEL,
        )
    }

    /// How `report`'s host meets the current baseline (for the host views).
    pub(crate) fn host_cpu_fit(&self, report: &HostReport, model: &str) -> Option<HostCpuFit> {
        host_cpu(report).map(|h| fit_view(model, &h))
    }

    /// The baseline, the newest model all hosts could run, and each host's
    /// fit (`GET /api/v1/cpu-baseline`).
    pub async fn cpu_baseline(&self) -> CpuBaseline {
        let cpus = self.connected_cpus().await;
        let mode = self.cpu_baseline_mode();
        let model = effective_baseline(&mode, &cpus, vdc_types::vm::DEFAULT_CPU_MODEL);
        let real: Vec<HostCpu> = cpus.iter().filter(|h| !h.emulated).cloned().collect();
        CpuBaseline {
            mode: mode.as_str().to_string(),
            model: model.to_string(),
            newest_common: vdc_sched::cpu_baseline::cluster_baseline(&real).map(str::to_string),
            hosts: cpus
                .iter()
                .map(|h| HostCpuBaseline {
                    host: h.name.clone(),
                    fit: fit_view(model, h),
                })
                .collect(),
        }
    }

    /// Publishes `host.cpu_below_baseline` when a host that just connected
    /// cannot run the baseline model: it stays usable for the VMs whose
    /// models it can run, and placement skips it for the others.
    pub(crate) async fn note_cpu_baseline(&self, host: &str) {
        let model = self.vm_cpu_model().await;
        let fit = {
            let live = self.live.read().await;
            live.get(host)
                .and_then(|l| self.host_cpu_fit(&l.report, model))
        };
        if let Some(fit) = fit.filter(|f| !f.meets) {
            self.events
                .publish(
                    "host.cpu_below_baseline",
                    host,
                    format!(
                        "host {host} does not meet the CPU baseline {model}: {}",
                        fit.reason
                    ),
                    serde_json::json!({"model": model, "missing_flags": fit.missing_flags}),
                )
                .await;
        }
    }
}
