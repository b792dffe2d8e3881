//! `vdc site local|list|show|pair|unpair`.

use clap::Subcommand;
use vdc_types::site::{PairSiteRequest, Site};

use crate::commands::{out, out_json, Ctx};
use crate::error::CliError;
use crate::format::{age, key_values, utc_time, Table};

/// `vdc site ...`
#[derive(Debug, Subcommand)]
pub enum SiteCmd {
    /// This installation's site name.
    Local,
    /// The paired sites and their links.
    #[command(alias = "ls")]
    List,
    /// One paired site.
    Show {
        /// Site name.
        name: String,
    },
    /// Pair this site with another installation (both store the pairing).
    Pair {
        /// The other site's API URL.
        url: String,
        /// An API token of the other site.
        #[arg(long)]
        token: String,
        /// The other site's name as expected (refused if it differs).
        #[arg(long)]
        name: Option<String>,
        /// Where the other site reaches this one (default: the server's
        /// --site-url).
        #[arg(long)]
        local_url: Option<String>,
    },
    /// Forget a paired site here (refused while a replication uses it).
    #[command(alias = "rm")]
    Unpair {
        /// Site name.
        name: String,
    },
}

fn site_table(sites: &[Site]) -> String {
    let now = vdc_types::now_ms();
    let mut t = Table::new(&["NAME", "URL", "REACHABLE", "LAST SEEN", "RTT", "PAIRED"]);
    for s in sites {
        t.row(vec![
            s.name.clone(),
            s.url.clone(),
            if s.reachable { "yes" } else { "no" }.into(),
            s.last_seen_ms.map_or("-".into(), |m| age(m, now)),
            s.rtt_ms.map_or("-".into(), |r| format!("{r} ms")),
            utc_time(s.paired_ms),
        ]);
    }
    t.render()
}

/// Runs `vdc site ...`.
pub(crate) async fn site(ctx: &Ctx, cmd: SiteCmd) -> Result<(), CliError> {
    match cmd {
        SiteCmd::Local => {
            let l = ctx.client.local_site().await?;
            if ctx.json() {
                return out_json(&l);
            }
            out(&key_values(&[
                ("name", l.name),
                ("url", l.url.unwrap_or_else(|| "-".into())),
            ]))
        }
        SiteCmd::List => {
            let sites = ctx.client.list_sites().await?;
            if ctx.json() {
                return out_json(&sites);
            }
            out(&site_table(&sites))
        }
        SiteCmd::Show { name } => {
            let s = ctx.client.get_site(&name).await?;
            if ctx.json() {
                return out_json(&s);
            }
            out(&site_table(std::slice::from_ref(&s)))
        }
        SiteCmd::Pair {
            url,
            token,
            name,
            local_url,
        } => {
            let s = ctx
                .client
                .pair_site(&PairSiteRequest {
                    url,
                    token,
                    name,
                    local_url,
                })
                .await?;
            if ctx.json() {
                return out_json(&s);
            }
            out(&site_table(std::slice::from_ref(&s)))
        }
        SiteCmd::Unpair { name } => {
            ctx.client.unpair_site(&name).await?;
            if ctx.json() {
                return out_json(&serde_json::json!({"unpaired": name}));
            }
            out(&format!("unpaired site {name}\n"))
        }
    }
}
