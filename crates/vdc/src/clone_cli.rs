//! `vdc vm clone`, `vdc vm to-template`, `vdc template show|delete`, and
//! the guest customization flags of `vdc vm create`.

use clap::{Args, Subcommand};
use vdc_types::clone::{CloneVmRequest, TemplateDetails, VmToTemplateRequest};
use vdc_types::VmPowerState;

use crate::cli::WaitArgs;
use crate::commands::{out, out_json, print_started, template_table, Ctx};
use crate::error::CliError;
use crate::wait::wait_task;

/// Guest customization: hostname and the first NIC's address.
#[derive(Debug, Args, Clone, Default)]
pub struct CustomizeArgs {
    /// Hostname given to the guest (default: the VM's name).
    #[arg(long)]
    pub hostname: Option<String>,
    /// Static address of the first NIC, A.B.C.D/N inside the network's
    /// subnet (default: the next free pool address).
    #[arg(long, value_name = "A/N", conflicts_with = "dhcp")]
    pub ip: Option<String>,
    /// The guest asks DHCP for its address instead.
    #[arg(long)]
    pub dhcp: bool,
}

/// `vdc vm clone SRC NEW`.
#[derive(Debug, Args)]
pub struct VmCloneArgs {
    /// The VM to clone: powered off, or running (then through a
    /// snapshot, as `vdc vm clone-running`).
    pub source: String,
    /// Name of the new VM.
    pub name: String,
    /// Instant clone: fork the running source's memory and disks into a
    /// new running VM that takes its own identity (as `vdc vm
    /// instant-clone`).
    #[arg(long, conflicts_with_all = ["linked", "full", "datastore", "start"])]
    pub instant: bool,
    /// Linked clone (an overlay on a read-only base): of a running VM, on
    /// its frozen snapshot image; of a powered-off VM refused, with what
    /// to do instead.
    #[arg(long, conflicts_with = "full")]
    pub linked: bool,
    /// Full copy of every disk (the default).
    #[arg(long)]
    pub full: bool,
    /// Guest customization.
    #[command(flatten)]
    pub custom: CustomizeArgs,
    /// Datastore of the clone (default: the source's).
    #[arg(long)]
    pub datastore: Option<String>,
    /// Power the clone on once made.
    #[arg(long)]
    pub start: bool,
    /// Waiting behaviour.
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// `vdc vm to-template VM`.
#[derive(Debug, Args)]
pub struct VmToTemplateArgs {
    /// The VM (powered off).
    pub vm: String,
    /// Template name (default: the VM's).
    #[arg(long)]
    pub name: Option<String>,
    /// Keep the VM: copy its boot disk into the template instead of
    /// converting the VM (instant; the VM is gone).
    #[arg(long)]
    pub keep_vm: bool,
    /// Waiting behaviour.
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// `vdc vm import-disk NAME FILE`.
#[derive(Debug, Args)]
pub struct VmImportDiskArgs {
    /// Name of the new VM.
    pub name: String,
    /// The image (vmdk, vhd, vhdx, qcow2, raw) or block device: a path on
    /// the importing host, inside one of its import directories.
    pub source: std::path::PathBuf,
    /// Its format (default: what qemu-img finds in it).
    #[arg(long, value_enum)]
    pub format: Option<crate::cli::ImageFormatArg>,
    /// Datastore of the VM.
    #[arg(long)]
    pub datastore: Option<String>,
    /// Host that reads the image.
    #[arg(long)]
    pub host: Option<String>,
    /// Network of the first NIC.
    #[arg(long)]
    pub network: Option<String>,
    /// Memory: MiB, or with a unit (256M, 1G).
    #[arg(long, value_name = "SIZE", value_parser = crate::format::parse_memory_mib)]
    pub memory: Option<u64>,
    /// Virtual CPUs.
    #[arg(long)]
    pub cpus: Option<u32>,
    /// Power the VM on once made.
    #[arg(long)]
    pub start: bool,
    /// Waiting behaviour.
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// Imports a disk image as a new VM, with the conversion's progress.
pub(crate) async fn vm_import_disk(ctx: &Ctx, a: VmImportDiskArgs) -> Result<(), CliError> {
    let source = std::path::absolute(&a.source)
        .map_err(|e| CliError::Io("resolve the image path", e))?
        .to_str()
        .ok_or_else(|| CliError::Usage("the image path is not valid UTF-8".into()))?
        .to_string();
    let req = vdc_types::clone::ImportDiskRequest {
        name: a.name.clone(),
        source,
        format: a.format.map(Into::into),
        host: a.host,
        datastore: a.datastore,
        network: a.network,
        cpus: a.cpus,
        memory_mib: a.memory,
        start: a.start,
    };
    let task = ctx.client.import_disk(&req).await?;
    crate::vm_commands::wait_and_show_vm(ctx, &task, &a.name, &a.wait).await
}

/// `vdc vm export NAME --ova FILE`.
#[derive(Debug, Args)]
pub struct VmExportArgs {
    /// The VM (powered off).
    pub name: String,
    /// The OVA file to write, on the exporting host, inside one of its
    /// import directories.
    #[arg(long, value_name = "FILE")]
    pub ova: std::path::PathBuf,
    /// Host that writes it (default: the VM's owner).
    #[arg(long)]
    pub host: Option<String>,
    /// Waiting behaviour.
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// Exports a VM as an OVA; waits and prints where it went.
pub(crate) async fn vm_export(ctx: &Ctx, a: VmExportArgs) -> Result<(), CliError> {
    let ova = std::path::absolute(&a.ova)
        .map_err(|e| CliError::Io("resolve the OVA path", e))?
        .to_str()
        .ok_or_else(|| CliError::Usage("the OVA path is not valid UTF-8".into()))?
        .to_string();
    let req = vdc_types::ova::ExportVmRequest {
        ova: ova.clone(),
        host: a.host,
    };
    let task = ctx.client.export_vm(&a.name, &req).await?;
    if a.wait.no_wait {
        return print_started(ctx, &task);
    }
    let done = wait_task(&ctx.client, &task, a.wait.timeout()).await?;
    if ctx.json() {
        out_json(&done)
    } else {
        out(&format!("VM {} exported to {ova}\n", a.name))
    }
}

/// `vdc vm import FILE`.
#[derive(Debug, Args)]
pub struct VmImportArgs {
    /// The OVA, on the importing host, inside one of its import
    /// directories.
    pub source: std::path::PathBuf,
    /// Name of the new VM (default: the descriptor's).
    #[arg(long)]
    pub name: Option<String>,
    /// OVA networks mapped to vdc networks: SRC=DST,... (an unmapped
    /// network must exist in vdc under its own name).
    #[arg(long, value_name = "SRC=DST,...", value_delimiter = ',')]
    pub network_map: Vec<String>,
    /// Datastore of the VM.
    #[arg(long)]
    pub datastore: Option<String>,
    /// Host that reads the OVA.
    #[arg(long)]
    pub host: Option<String>,
    /// Power the VM on once made.
    #[arg(long)]
    pub start: bool,
    /// Waiting behaviour.
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// Imports an OVA; prints what was ignored, waits and prints the VM.
pub(crate) async fn vm_import(ctx: &Ctx, a: VmImportArgs) -> Result<(), CliError> {
    let source = std::path::absolute(&a.source)
        .map_err(|e| CliError::Io("resolve the OVA path", e))?
        .to_str()
        .ok_or_else(|| CliError::Usage("the OVA path is not valid UTF-8".into()))?
        .to_string();
    let mut network_map = std::collections::BTreeMap::new();
    for m in &a.network_map {
        let (s, d) = m
            .split_once('=')
            .ok_or_else(|| CliError::Usage(format!("--network-map entry '{m}' must be SRC=DST")))?;
        network_map.insert(s.to_string(), d.to_string());
    }
    let req = vdc_types::ova::ImportOvaRequest {
        source,
        name: a.name,
        network_map,
        datastore: a.datastore,
        host: a.host,
        start: a.start,
    };
    let r = ctx.client.import_ova(&req).await?;
    if !ctx.json() {
        for i in &r.ignored {
            eprintln!("ignored: {i}");
        }
    }
    if a.wait.no_wait {
        return if ctx.json() {
            out_json(&r)
        } else {
            print_started(ctx, &r.task)
        };
    }
    wait_task(&ctx.client, &r.task, a.wait.timeout()).await?;
    let vm = ctx.client.get_vm(&r.vm).await?;
    if ctx.json() {
        out_json(&serde_json::json!({"vm": vm, "ignored": r.ignored}))
    } else {
        out(&crate::vm_commands::vm_table(std::slice::from_ref(&vm)))
    }
}

/// Clones a VM; waits for the clone and prints it.
pub(crate) async fn vm_clone(ctx: &Ctx, a: VmCloneArgs) -> Result<(), CliError> {
    let running = ctx.client.get_vm(&a.source).await?.state == VmPowerState::Running;
    if a.instant || running {
        let custom = &a.custom;
        if custom.hostname.is_some() || custom.ip.is_some() || custom.dhcp {
            return Err(CliError::Usage(format!(
                "a clone of running VM '{}' takes its hostname and address from vdc: leave out --hostname, --ip and --dhcp, or power the source off first",
                a.source
            )));
        }
        if a.instant {
            return crate::snapshot::instant_clone(
                ctx,
                crate::snapshot::InstantCloneArgs {
                    source: a.source,
                    name: a.name,
                    wait: a.wait,
                },
            )
            .await;
        }
        if a.datastore.is_some() || a.start {
            return Err(CliError::Usage(format!(
                "a clone of running VM '{}' stays on its datastore and boots at once: leave out --datastore and --start",
                a.source
            )));
        }
        return crate::snapshot::clone_running(
            ctx,
            crate::snapshot::RunningCloneArgs {
                source: a.source,
                name: a.name,
                linked: a.linked,
                full: a.full,
                wait: a.wait,
            },
        )
        .await;
    }
    let req = CloneVmRequest {
        name: a.name.clone(),
        linked: a.linked,
        hostname: a.custom.hostname,
        ip: a.custom.ip,
        dhcp: a.custom.dhcp,
        datastore: a.datastore,
        start: a.start,
    };
    let task = ctx.client.clone_vm(&a.source, &req).await?;
    crate::vm_commands::wait_and_show_vm(ctx, &task, &a.name, &a.wait).await
}

/// Makes a template of a VM; waits and prints the template.
pub(crate) async fn vm_to_template(ctx: &Ctx, a: VmToTemplateArgs) -> Result<(), CliError> {
    let req = VmToTemplateRequest {
        name: a.name.clone(),
        keep_vm: a.keep_vm,
    };
    let task = ctx.client.vm_to_template(&a.vm, &req).await?;
    if a.wait.no_wait {
        return print_started(ctx, &task);
    }
    wait_task(&ctx.client, &task, a.wait.timeout()).await?;
    template_show(ctx, a.name.as_deref().unwrap_or(&a.vm)).await
}

/// Prints one template and what reads it.
pub(crate) async fn template_show(ctx: &Ctx, name: &str) -> Result<(), CliError> {
    let d = ctx.client.template(name).await?;
    if ctx.json() {
        return out_json(&d);
    }
    out(&template_details(&d))
}

fn template_details(d: &TemplateDetails) -> String {
    let list = |v: &[String]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.join(", ")
        }
    };
    format!(
        "{}from VM:             {}\nbased on template:   {}\nlinked clones:       {}\ndependent templates: {}\nfull clones:         {}\n",
        template_table(std::slice::from_ref(&d.template)),
        d.template.from_vm.as_deref().unwrap_or("-"),
        d.template.base.as_deref().unwrap_or("-"),
        list(&d.linked_clones),
        list(&d.dependent_templates),
        list(&d.full_clones),
    )
}

/// Deletes a template.
pub(crate) async fn template_delete(ctx: &Ctx, name: &str) -> Result<(), CliError> {
    ctx.client.delete_template(name).await?;
    if ctx.json() {
        out_json(&serde_json::json!({"deleted": name}))
    } else {
        out(&format!("template {name} deleted\n"))
    }
}

/// `vdc template ...`
#[derive(Debug, Subcommand)]
pub enum TemplateCmd {
    /// List templates.
    #[command(alias = "ls")]
    List,
    /// Import a disk image (qcow2, raw, vmdk, vhdx…) as a template.
    Import(TemplateImportArgs),
    /// Show a template, its image and the VMs deployed from it.
    Show {
        /// Template name.
        name: String,
    },
    /// Delete a template no linked clone reads.
    #[command(alias = "rm")]
    Delete {
        /// Template name.
        name: String,
    },
}

/// `vdc template import`.
#[derive(Debug, Args)]
pub struct TemplateImportArgs {
    /// Template name.
    pub name: String,
    /// Shared datastore to keep the template in.
    #[arg(long)]
    pub datastore: String,
    /// Image file, a path on the host doing the import, inside one of its
    /// import directories (`vdc agent --import-dir`) or datastores.
    #[arg(long, value_name = "PATH")]
    pub source: std::path::PathBuf,
    /// Format of the image (default: what qemu-img finds in it); a stated
    /// format the file's content contradicts is refused.
    #[arg(long, value_enum)]
    pub format: Option<ImageFormatArg>,
    /// Host that reads the image (default: any connected host).
    #[arg(long)]
    pub host: Option<String>,
    /// Waiting behaviour.
    #[command(flatten)]
    pub wait: crate::cli::WaitArgs,
}

/// `--format` values of `vdc template import`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ImageFormatArg {
    /// Plain disk image.
    Raw,
    /// QEMU copy-on-write v2.
    Qcow2,
    /// VMware, single file.
    Vmdk,
    /// Hyper-V.
    Vhdx,
    /// Virtual PC (.vhd).
    Vpc,
}

impl From<ImageFormatArg> for vdc_types::api::ImageFormat {
    fn from(a: ImageFormatArg) -> Self {
        use vdc_types::api::ImageFormat as F;
        match a {
            ImageFormatArg::Raw => F::Raw,
            ImageFormatArg::Qcow2 => F::Qcow2,
            ImageFormatArg::Vmdk => F::Vmdk,
            ImageFormatArg::Vhdx => F::Vhdx,
            ImageFormatArg::Vpc => F::Vpc,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::cli::{Cli, Command, VmCmd};
    use clap::Parser;

    #[test]
    fn clone_takes_instant_alone() {
        let cli = Cli::try_parse_from(["vdc", "vm", "clone", "web", "web-2", "--instant"])
            .expect("parses");
        match cli.command {
            Command::Vm(VmCmd::Clone(a)) => {
                assert!(a.instant);
                assert_eq!((a.source.as_str(), a.name.as_str()), ("web", "web-2"));
            }
            other => panic!("parsed as {other:?}"),
        }
        for extra in ["--linked", "--full", "--start"] {
            assert!(
                Cli::try_parse_from(["vdc", "vm", "clone", "web", "web-2", "--instant", extra])
                    .is_err(),
                "--instant with {extra} must be refused"
            );
        }
    }
}
