//! `vdc backup sync --from STORE --to STORE [--vm NAME]`: off-site copy of
//! one store's backups into another.

use clap::Args;
use vdc_types::backup::SyncRequest;

use crate::commands::{out, out_json, Ctx};
use crate::error::CliError;

/// Options of `vdc backup sync`.
#[derive(Debug, Clone, Args)]
pub(crate) struct SyncArgs {
    /// The store to copy from.
    #[arg(long)]
    from: String,
    /// The store to copy to (unencrypted like the source, or with the
    /// same key file).
    #[arg(long)]
    to: String,
    /// Only this VM's backups.
    #[arg(long)]
    vm: Option<String>,
}

/// Sends the backups `--to` lacks and prints what was sent.
pub(crate) async fn sync(ctx: &Ctx, a: SyncArgs) -> Result<(), CliError> {
    let req = SyncRequest {
        to: a.to.clone(),
        vm: a.vm,
    };
    let r = ctx.client.sync_backup_stores(&a.from, &req).await?;
    if ctx.json() {
        return out_json(&r);
    }
    let mut s = format!(
        "{} → {}: {} backup(s) copied, {} already there; {} chunk(s) sent ({} bytes), {} already there\n",
        a.from,
        a.to,
        r.backups_copied.len(),
        r.backups_present,
        r.chunks_sent,
        r.bytes_sent,
        r.chunks_present
    );
    for id in &r.backups_copied {
        s.push_str(&format!("  copied {id}\n"));
    }
    for id in &r.backups_skipped_damaged {
        s.push_str(&format!(
            "  skipped {id}: damaged (verify found a bad chunk)\n"
        ));
    }
    out(&s)
}
