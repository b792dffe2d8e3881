//! `vdc vm clone`, `vdc vm to-template`, `vdc template show|delete`, and
//! the guest customization flags of `vdc vm create`.

use clap::Args;
use vdc_types::clone::{CloneVmRequest, TemplateDetails, VmToTemplateRequest};

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
    /// The VM to clone (powered off).
    pub source: String,
    /// Name of the new VM.
    pub name: String,
    /// Linked clone (an overlay on a read-only base; only templates are
    /// one: refused for a VM, with what to do instead).
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
    if a.wait.no_wait {
        return print_started(ctx, &task);
    }
    wait_task(&ctx.client, &task, a.wait.timeout()).await?;
    let vm = ctx.client.get_vm(&a.name).await?;
    if ctx.json() {
        out_json(&vm)
    } else {
        out(&crate::vm_commands::vm_table(std::slice::from_ref(&vm)))
    }
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

/// Clones a VM; waits for the clone and prints it.
pub(crate) async fn vm_clone(ctx: &Ctx, a: VmCloneArgs) -> Result<(), CliError> {
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
    if a.wait.no_wait {
        return print_started(ctx, &task);
    }
    wait_task(&ctx.client, &task, a.wait.timeout()).await?;
    let vm = ctx.client.get_vm(&a.name).await?;
    if ctx.json() {
        out_json(&vm)
    } else {
        out(&crate::vm_commands::vm_table(std::slice::from_ref(&vm)))
    }
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
