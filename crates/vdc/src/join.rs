//! `vdc host add` and `vdc host agents`: adding a host makes the credential
//! its agent joins the cluster with; the list shows which agents joined.

use std::io::Write;

use crate::commands::{check_name, out, out_json, Ctx};
use crate::error::CliError;
use crate::format::Table;

/// `vdc host add NAME [--credential-file FILE] [--replace]`.
pub(crate) async fn host_add(
    ctx: &Ctx,
    name: &str,
    credential_file: Option<&std::path::Path>,
    replace: bool,
) -> Result<(), CliError> {
    check_name("host", name)?;
    let added = if replace {
        ctx.client.replace_host_credential(name).await?
    } else {
        ctx.client.add_host(name).await?
    };
    let Some(path) = credential_file else {
        if ctx.json() {
            return out_json(&added);
        }
        return out(&format!(
            "{}\n# the agent credential of host '{}'; shown only now: give it to the agent with --credential-file\n",
            added.credential, added.host
        ));
    };
    write_private(path, &format!("{}\n", added.credential))
        .map_err(|e| CliError::Io("write the credential file", e))?;
    out(&format!(
        "host '{}' added; its agent credential is in {}\n",
        added.host,
        path.display()
    ))
}

/// Writes a secret file (mode 0600) so that it survives a crash whole:
/// temporary file, fsync, rename, fsync of the directory.
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("credential")
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// `vdc host agents`.
pub(crate) async fn host_agents(ctx: &Ctx) -> Result<(), CliError> {
    let agents = ctx.client.list_agents().await?;
    if ctx.json() {
        return out_json(&agents);
    }
    let mut t = Table::new(&["HOST", "ADDED", "JOINED"]);
    for a in &agents {
        t.row(vec![
            a.host.clone(),
            crate::format::utc_time(a.added_ms),
            a.joined_ms
                .map(crate::format::utc_time)
                .unwrap_or_else(|| "not yet".to_string()),
        ]);
    }
    out(&t.render())
}
