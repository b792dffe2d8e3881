//! Facts about this host's QEMU: which binary, which version, which
//! accelerator, which machine types and CPU models it offers.
//!
//! The accelerator decision is a pure function ([`choose_accelerator`]) of
//! what the host offers so that it can be tested; [`detect_accelerator`]
//! only gathers the inputs. KVM is chosen only when `/dev/kvm` opens
//! read-write *and* the CPU advertises hardware virtualization (`vmx` or
//! `svm`): some nested setups expose a `/dev/kvm` that cannot run a stock
//! guest, and they lack those flags.

use std::path::{Path, PathBuf};

use vdc_types::Accelerator;

use crate::error::QemuError;

/// Environment variable naming the QEMU binary.
pub const ENV_QEMU: &str = "VDC_QEMU";
/// Environment variable forcing the accelerator (`kvm` or `tcg`).
pub const ENV_ACCEL: &str = "VDC_ACCEL";
/// Binary used when [`ENV_QEMU`] is not set.
pub const DEFAULT_QEMU: &str = "qemu-system-x86_64";

/// Chooses the accelerator: an explicit `override_` wins, then the value of
/// `VDC_ACCEL` (`env`, ignored unless `kvm` or `tcg`), then KVM if
/// `kvm_openable` and `cpuinfo` (the text of `/proc/cpuinfo`) lists the
/// `vmx` or `svm` flag, else TCG.
pub fn choose_accelerator(
    override_: Option<Accelerator>,
    env: Option<&str>,
    kvm_openable: bool,
    cpuinfo: &str,
) -> Accelerator {
    if let Some(a) = override_ {
        return a;
    }
    match env.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
        Some("kvm") => return Accelerator::Kvm,
        Some("tcg") => return Accelerator::Tcg,
        _ => {}
    }
    if kvm_openable && cpu_has_virtualization(cpuinfo) {
        Accelerator::Kvm
    } else {
        Accelerator::Tcg
    }
}

/// Whether a `flags` line of `/proc/cpuinfo` lists `vmx` or `svm`.
pub fn cpu_has_virtualization(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.trim() == "flags")
        .any(|(_, flags)| flags.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

/// Decides the accelerator for this host (see [`choose_accelerator`]).
pub fn detect_accelerator(override_: Option<Accelerator>) -> Accelerator {
    let env = std::env::var(ENV_ACCEL).ok();
    let kvm_openable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let accel = choose_accelerator(override_, env.as_deref(), kvm_openable, &cpuinfo);
    tracing::info!(
        accelerator = accel.as_str(),
        kvm_openable,
        "accelerator chosen"
    );
    accel
}

/// The QEMU binary: `$VDC_QEMU`, else `qemu-system-x86_64` found in `PATH`
/// (the bare name if it is not there, so that spawning reports the error).
pub fn qemu_binary() -> PathBuf {
    if let Some(p) = std::env::var_os(ENV_QEMU).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(DEFAULT_QEMU))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| PathBuf::from(DEFAULT_QEMU))
}

/// The version of a QEMU binary, e.g. `10.0.2`, from `--version`.
pub async fn qemu_version(binary: &Path) -> Result<String, QemuError> {
    let out = tokio::process::Command::new(binary)
        .arg("--version")
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| QemuError::Spawn {
            binary: binary.to_path_buf(),
            source,
        })?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    parse_qemu_version(&text).ok_or(QemuError::Version { output: text })
}

/// The machine types and CPU models a QEMU binary offers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QemuModels {
    /// Machine types (`-machine help`), aliases included.
    pub machine_types: Vec<String>,
    /// CPU models (`-cpu help`), aliases included.
    pub cpu_models: Vec<String>,
    /// The host CPU's feature flags (`/proc/cpuinfo`).
    pub cpu_flags: Vec<String>,
}

impl QemuModels {
    /// Whether a VM with this machine type and CPU model can run here; the
    /// sentence saying what is missing if not.
    pub fn check(&self, machine_type: &str, cpu_model: &str) -> Result<(), String> {
        if !self.machine_types.iter().any(|m| m == machine_type) {
            return Err(format!(
                "this host's QEMU offers no machine type '{machine_type}'"
            ));
        }
        if !self.cpu_models.iter().any(|c| c == cpu_model) {
            return Err(format!(
                "this host's QEMU offers no CPU model '{cpu_model}'"
            ));
        }
        Ok(())
    }
}

/// Asks a QEMU binary which machine types and CPU models it offers.
pub async fn qemu_models(binary: &Path) -> Result<QemuModels, QemuError> {
    let help = |what: &'static str| async move {
        let out = tokio::process::Command::new(binary)
            .args([what, "help"])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|source| QemuError::Spawn {
                binary: binary.to_path_buf(),
                source,
            })?;
        Ok::<_, QemuError>(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    Ok(QemuModels {
        machine_types: parse_machine_help(&help("-machine").await?),
        cpu_models: parse_cpu_help(&help("-cpu").await?),
        cpu_flags: parse_cpu_flags(
            &tokio::fs::read_to_string("/proc/cpuinfo")
                .await
                .unwrap_or_default(),
        ),
    })
}

/// The feature flags of the first CPU in `/proc/cpuinfo` text (its first
/// `flags` line), sorted.
pub fn parse_cpu_flags(cpuinfo: &str) -> Vec<String> {
    let mut flags: Vec<String> = cpuinfo
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim() == "flags")
        .map(|(_, v)| v.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    flags.sort();
    flags.dedup();
    flags
}

/// Machine type names from `-machine help` (the first word of each line
/// after the heading).
pub fn parse_machine_help(output: &str) -> Vec<String> {
    output
        .lines()
        .skip_while(|l| !l.starts_with("Supported machines"))
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// CPU model names from `-cpu help` (the first word of each indented line
/// of the `Available CPUs:` section).
pub fn parse_cpu_help(output: &str) -> Vec<String> {
    output
        .lines()
        .skip_while(|l| !l.starts_with("Available CPUs"))
        .skip(1)
        .take_while(|l| l.starts_with(' '))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Extracts `X.Y.Z` from `QEMU emulator version X.Y.Z (…)`.
pub fn parse_qemu_version(output: &str) -> Option<String> {
    let rest = output.split("version").nth(1)?;
    let word = rest.split_whitespace().next()?;
    let ok = !word.is_empty()
        && word.chars().all(|c| c.is_ascii_digit() || c == '.')
        && word.chars().next().is_some_and(|c| c.is_ascii_digit());
    ok.then(|| word.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const WITH_VMX: &str = "processor\t: 0\nflags\t\t: fpu vme de vmx sse2\n\nprocessor\t: 1\n";
    const NO_VIRT: &str =
        "processor\t: 0\nflags\t\t: fpu vme de sse2 hypervisor\nbugs\t\t: svm_gone\n";

    #[test]
    fn kvm_needs_device_and_cpu_flag() {
        assert_eq!(
            choose_accelerator(None, None, true, WITH_VMX),
            Accelerator::Kvm
        );
        assert_eq!(
            choose_accelerator(None, None, true, "flags : svm lm"),
            Accelerator::Kvm
        );
        assert_eq!(
            choose_accelerator(None, None, false, WITH_VMX),
            Accelerator::Tcg
        );
        assert_eq!(
            choose_accelerator(None, None, true, NO_VIRT),
            Accelerator::Tcg
        );
        assert_eq!(choose_accelerator(None, None, true, ""), Accelerator::Tcg);
    }

    #[test]
    fn overrides_take_precedence() {
        assert_eq!(
            choose_accelerator(Some(Accelerator::Tcg), Some("kvm"), true, WITH_VMX),
            Accelerator::Tcg
        );
        assert_eq!(
            choose_accelerator(Some(Accelerator::Kvm), None, false, NO_VIRT),
            Accelerator::Kvm
        );
        assert_eq!(
            choose_accelerator(None, Some("TCG"), true, WITH_VMX),
            Accelerator::Tcg
        );
        assert_eq!(
            choose_accelerator(None, Some("kvm"), false, ""),
            Accelerator::Kvm
        );
        // Unknown values are ignored.
        assert_eq!(
            choose_accelerator(None, Some("auto"), true, WITH_VMX),
            Accelerator::Kvm
        );
    }

    #[test]
    fn model_lists_are_parsed() {
        let machines = "Supported machines are:\nmicrovm              microvm (i386)\n\
                        q35                  Standard PC (Q35 + ICH9, 2009) (alias of pc-q35-10.0)\n\
                        pc-q35-10.0          Standard PC (Q35 + ICH9, 2009)\n";
        assert_eq!(
            parse_machine_help(machines),
            ["microvm", "q35", "pc-q35-10.0"]
        );
        let cpus = "Available CPUs:\n  486                   (alias configured by machine type)\n\
                    \x20 Nehalem-v1            Intel Core i7 9xx (Nehalem Class Core i7)\n\
                    \nRecognized CPUID flags:\n  3dnow 3dnowext\n";
        assert_eq!(parse_cpu_help(cpus), ["486", "Nehalem-v1"]);
        let m = QemuModels {
            machine_types: parse_machine_help(machines),
            cpu_models: parse_cpu_help(cpus),
            cpu_flags: parse_cpu_flags(WITH_VMX),
        };
        assert_eq!(m.cpu_flags, ["de", "fpu", "sse2", "vme", "vmx"]);
        assert!(m.check("pc-q35-10.0", "Nehalem-v1").is_ok());
        assert!(m
            .check("pc-q35-1.0", "Nehalem-v1")
            .unwrap_err()
            .contains("pc-q35-1.0"));
        assert!(m
            .check("pc-q35-10.0", "host-x")
            .unwrap_err()
            .contains("CPU model"));
    }

    /// The cluster defaults are offered by this host's QEMU.
    #[tokio::test]
    async fn this_hosts_qemu_offers_the_cluster_defaults() {
        let models = qemu_models(&qemu_binary()).await.unwrap();
        models
            .check(
                vdc_types::vm::DEFAULT_MACHINE_TYPE,
                vdc_types::vm::DEFAULT_CPU_MODEL,
            )
            .unwrap();
    }

    #[test]
    fn version_parsing() {
        assert_eq!(
            parse_qemu_version(
                "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\nCopyright"
            )
            .as_deref(),
            Some("10.0.2")
        );
        assert_eq!(parse_qemu_version("garbage"), None);
        assert_eq!(parse_qemu_version("version (x)"), None);
    }
}
