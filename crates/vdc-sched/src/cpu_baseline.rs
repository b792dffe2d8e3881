//! The cluster CPU baseline: the newest QEMU CPU model every host can run.
//!
//! A VM migrated live keeps the CPU it booted with, so every host it may
//! land on must offer that CPU's features (like vSphere's EVC). The agents
//! report their CPU's flags (`/proc/cpuinfo`); this module decides, without
//! I/O:
//! 1. which named models a host can run: all the key flags of the model
//!    (and of the older models it builds on) are among the host's flags;
//! 2. the cluster baseline: the newest model in [`CPU_MODELS`] every host
//!    can run;
//! 3. for each host, whether it meets the model the cluster's VMs use, and
//!    which flags it lacks.
//!
//! Under TCG (no KVM) QEMU emulates the CPU, so such a host meets every
//! model. The table lists each model's *distinguishing* flags, as a check;
//! it is not QEMU's full definition of the model.

use std::collections::BTreeSet;

/// A QEMU named x86-64 CPU model, as a check on the host's flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuModel {
    /// QEMU's name (`-cpu NAME`).
    pub name: &'static str,
    /// The older model whose flags it also needs.
    pub based_on: Option<&'static str>,
    /// Flags it adds, in `/proc/cpuinfo` spelling.
    pub flags: &'static [&'static str],
}

/// Models that matter, oldest first; the baseline is the last one every
/// host can run.
pub const CPU_MODELS: &[CpuModel] = &[
    CpuModel {
        name: "qemu64",
        based_on: None,
        flags: &["lm", "sse2", "pni", "cx16"],
    },
    CpuModel {
        name: "Nehalem-v1",
        based_on: Some("qemu64"),
        flags: &["ssse3", "sse4_1", "sse4_2", "popcnt", "lahf_lm"],
    },
    CpuModel {
        name: "Westmere-v1",
        based_on: Some("Nehalem-v1"),
        flags: &["aes", "pclmulqdq"],
    },
    CpuModel {
        name: "SandyBridge-v1",
        based_on: Some("Westmere-v1"),
        flags: &["avx", "xsave"],
    },
    CpuModel {
        name: "IvyBridge-v1",
        based_on: Some("SandyBridge-v1"),
        flags: &["f16c", "rdrand", "fsgsbase", "smep", "erms"],
    },
    CpuModel {
        name: "Haswell-noTSX-v1",
        based_on: Some("IvyBridge-v1"),
        flags: &["avx2", "fma", "bmi1", "bmi2", "movbe", "invpcid"],
    },
    CpuModel {
        name: "Broadwell-noTSX-v1",
        based_on: Some("Haswell-noTSX-v1"),
        flags: &["adx", "rdseed", "smap", "3dnowprefetch"],
    },
    CpuModel {
        name: "Skylake-Client-noTSX-IBRS",
        based_on: Some("Broadwell-noTSX-v1"),
        flags: &["xsavec", "xgetbv1", "ibrs"],
    },
    CpuModel {
        name: "EPYC-v1",
        based_on: Some("SandyBridge-v1"),
        flags: &[
            "f16c",
            "rdrand",
            "fsgsbase",
            "smep",
            "avx2",
            "fma",
            "bmi1",
            "bmi2",
            "movbe",
            "adx",
            "rdseed",
            "smap",
            "sha_ni",
            "sse4a",
            "misalignsse",
            "xsavec",
        ],
    },
];

/// What the baseline needs to know about one host's CPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCpu {
    /// Host name.
    pub name: String,
    /// Whether QEMU emulates the CPU there (TCG): every model runs.
    pub emulated: bool,
    /// The host CPU's flags, `/proc/cpuinfo` spelling.
    pub flags: BTreeSet<String>,
}

/// Whether a host can run a CPU model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelFit {
    /// The host has every key flag of the model.
    Meets,
    /// QEMU emulates the CPU there (TCG), so any model runs.
    Emulated,
    /// The host lacks these flags.
    Missing(Vec<String>),
    /// The model is not in [`CPU_MODELS`]: nothing can be said.
    UnknownModel,
}

impl ModelFit {
    /// Whether the host can run the model (an unknown model is not refused).
    pub fn ok(&self) -> bool {
        !matches!(self, ModelFit::Missing(_))
    }

    /// One sentence for the administrator.
    pub fn reason(&self, model: &str) -> String {
        match self {
            ModelFit::Meets => format!("CPU has every flag of {model}"),
            ModelFit::Emulated => format!("TCG emulates any CPU model, {model} included"),
            ModelFit::Missing(flags) => {
                format!("CPU lacks flags of {model}: {}", flags.join(", "))
            }
            ModelFit::UnknownModel => format!("{model} is not in the CPU model table; not checked"),
        }
    }
}

/// Every key flag a model needs, its older models' included; `None` for a
/// model not in [`CPU_MODELS`].
pub fn required_flags(model: &str) -> Option<BTreeSet<&'static str>> {
    let mut out = BTreeSet::new();
    let mut next = Some(model);
    let mut found = false;
    while let Some(name) = next {
        let m = CPU_MODELS.iter().find(|m| m.name == name)?;
        found = true;
        out.extend(m.flags.iter().copied());
        next = m.based_on;
    }
    found.then_some(out)
}

/// Whether `host` can run `model`.
pub fn check_model(model: &str, host: &HostCpu) -> ModelFit {
    let Some(required) = required_flags(model) else {
        return ModelFit::UnknownModel;
    };
    if host.emulated {
        return ModelFit::Emulated;
    }
    let missing: Vec<String> = required
        .into_iter()
        .filter(|f| !host.flags.contains(*f))
        .map(str::to_string)
        .collect();
    if missing.is_empty() {
        ModelFit::Meets
    } else {
        ModelFit::Missing(missing)
    }
}

/// The newest model in [`CPU_MODELS`] every host can run; `None` when
/// there is no host or a host cannot run even the oldest.
pub fn cluster_baseline(hosts: &[HostCpu]) -> Option<&'static str> {
    if hosts.is_empty() {
        return None;
    }
    CPU_MODELS
        .iter()
        .rev()
        .find(|m| hosts.iter().all(|h| check_model(m.name, h).ok()))
        .map(|m| m.name)
}

/// How the cluster's CPU baseline is chosen.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum BaselineMode {
    /// The newest model every host with hardware virtualization can run
    /// ([`cluster_baseline`] over them); `fallback` when there is none
    /// (every host emulates, or none reported its flags yet).
    #[default]
    Auto,
    /// A model the administrator chose (from [`CPU_MODELS`]).
    Fixed(&'static str),
}

impl BaselineMode {
    /// Parses `auto` or a model name of [`CPU_MODELS`].
    pub fn parse(s: &str) -> Result<BaselineMode, String> {
        if s == "auto" {
            return Ok(BaselineMode::Auto);
        }
        CPU_MODELS
            .iter()
            .find(|m| m.name == s)
            .map(|m| BaselineMode::Fixed(m.name))
            .ok_or_else(|| {
                let names: Vec<&str> = CPU_MODELS.iter().map(|m| m.name).collect();
                format!(
                    "unknown CPU baseline '{s}': use auto or one of {}",
                    names.join(", ")
                )
            })
    }

    /// `auto` or the model's name.
    pub fn as_str(&self) -> &'static str {
        match self {
            BaselineMode::Auto => "auto",
            BaselineMode::Fixed(m) => m,
        }
    }
}

/// The model new VMs get under `mode`, given the hosts' CPUs; `fallback`
/// when `auto` has no host with hardware virtualization to go by. Emulated
/// hosts do not raise or lower an automatic baseline: TCG runs any model,
/// but slower the newer it is, so a cluster of emulated hosts keeps the
/// fallback.
pub fn effective_baseline(
    mode: &BaselineMode,
    hosts: &[HostCpu],
    fallback: &'static str,
) -> &'static str {
    match mode {
        BaselineMode::Fixed(m) => m,
        BaselineMode::Auto => {
            let real: Vec<HostCpu> = hosts.iter().filter(|h| !h.emulated).cloned().collect();
            if real.is_empty() {
                fallback
            } else {
                cluster_baseline(&real).unwrap_or(CPU_MODELS[0].name)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kvm(name: &str, model: &str) -> HostCpu {
        HostCpu {
            name: name.into(),
            emulated: false,
            flags: required_flags(model)
                .unwrap()
                .into_iter()
                .map(str::to_string)
                .collect(),
        }
    }

    fn tcg(name: &str) -> HostCpu {
        HostCpu {
            name: name.into(),
            emulated: true,
            flags: BTreeSet::new(),
        }
    }

    #[test]
    fn every_model_builds_on_a_known_one() {
        for m in CPU_MODELS {
            assert!(required_flags(m.name).is_some(), "{}", m.name);
        }
        assert!(required_flags("Nehalem-v1").unwrap().contains("sse4_2"));
        assert!(required_flags("Haswell-noTSX-v1")
            .unwrap()
            .contains("sse4_2"));
        assert_eq!(required_flags("Pentium-v1"), None);
    }

    #[test]
    fn kvm_host_without_sse4_2_cannot_run_nehalem() {
        let mut h = kvm("old", "Nehalem-v1");
        h.flags.remove("sse4_2");
        let fit = check_model("Nehalem-v1", &h);
        assert_eq!(fit, ModelFit::Missing(vec!["sse4_2".into()]));
        assert!(fit.reason("Nehalem-v1").contains("sse4_2"));
        assert_eq!(cluster_baseline(&[h]), Some("qemu64"));
    }

    #[test]
    fn tcg_meets_every_model() {
        let h = tcg("lab");
        for m in CPU_MODELS {
            assert_eq!(check_model(m.name, &h), ModelFit::Emulated);
        }
        assert_eq!(cluster_baseline(&[h]), Some("EPYC-v1"));
    }

    #[test]
    fn baseline_is_the_oldest_hosts_model() {
        let hosts = [
            kvm("a", "Broadwell-noTSX-v1"),
            kvm("b", "IvyBridge-v1"),
            tcg("c"),
        ];
        assert_eq!(cluster_baseline(&hosts), Some("IvyBridge-v1"));
    }

    #[test]
    fn intel_and_amd_meet_on_a_common_model() {
        let hosts = [
            kvm("intel", "Skylake-Client-noTSX-IBRS"),
            kvm("amd", "EPYC-v1"),
        ];
        // EPYC lacks ERMS/INVPCID in the table, Skylake lacks SSE4a.
        assert_eq!(cluster_baseline(&hosts), Some("SandyBridge-v1"));
        assert_eq!(cluster_baseline(&hosts[1..]), Some("EPYC-v1"));
    }

    #[test]
    fn no_hosts_or_a_bare_cpu_has_no_baseline() {
        assert_eq!(cluster_baseline(&[]), None);
        let bare = HostCpu {
            name: "bare".into(),
            emulated: false,
            flags: BTreeSet::new(),
        };
        assert_eq!(cluster_baseline(&[bare]), None);
    }

    proptest! {
        #[test]
        fn every_host_meets_the_baseline(picks in proptest::collection::vec((0usize..CPU_MODELS.len(), any::<bool>(), 0usize..8), 1..6)) {
            let hosts: Vec<HostCpu> = picks.iter().enumerate().map(|(i, (m, emulated, drop))| {
                let mut h = kvm(&format!("h{i}"), CPU_MODELS[*m].name);
                h.emulated = *emulated;
                if let Some(f) = h.flags.iter().nth(*drop).cloned() {
                    h.flags.remove(&f);
                }
                h
            }).collect();
            if let Some(base) = cluster_baseline(&hosts) {
                prop_assert!(hosts.iter().all(|h| check_model(base, h).ok()));
                let pos = CPU_MODELS.iter().position(|m| m.name == base).unwrap();
                for newer in &CPU_MODELS[pos + 1..] {
                    prop_assert!(hosts.iter().any(|h| !check_model(newer.name, h).ok()));
                }
            } else {
                prop_assert!(hosts.iter().any(|h| !check_model("qemu64", h).ok()));
            }
        }
    }

    #[test]
    fn the_automatic_baseline_follows_the_real_hosts_only() {
        let hosts = [
            kvm("a", "Haswell-noTSX-v1"),
            kvm("b", "IvyBridge-v1"),
            HostCpu {
                name: "tcg".into(),
                emulated: true,
                flags: BTreeSet::new(),
            },
        ];
        assert_eq!(
            effective_baseline(&BaselineMode::Auto, &hosts, "Nehalem-v1"),
            "IvyBridge-v1"
        );
        assert_eq!(
            effective_baseline(&BaselineMode::Auto, &hosts[2..], "Nehalem-v1"),
            "Nehalem-v1"
        );
        let fixed = BaselineMode::parse("Westmere-v1").unwrap();
        assert_eq!(
            effective_baseline(&fixed, &hosts, "Nehalem-v1"),
            "Westmere-v1"
        );
        assert_eq!(fixed.as_str(), "Westmere-v1");
        let e = BaselineMode::parse("Pentium").unwrap_err();
        assert!(e.contains("use auto or one of qemu64"), "{e}");
    }
}
