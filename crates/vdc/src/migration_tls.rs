//! `vdc migration settings [--encryption on|off]`: the cluster's live
//! migration encryption, the cluster CA and each host's certificate with
//! its expiry; and how a certificate's expiry is written in host views.

use vdc_types::auth::HostCertificate;
use vdc_types::migration::{MigrationEncryption, MigrationSettingsView};

use crate::commands::{out, out_json, Ctx};
use crate::error::CliError;
use crate::format::Table;

/// `vdc migration ...`.
#[derive(Debug, clap::Subcommand)]
pub enum MigrationCmd {
    /// Show (or with --encryption set) whether live migration streams are
    /// encrypted with TLS, the cluster CA and each host's certificate.
    Settings {
        /// Encrypt live migration streams by default (a migration may say
        /// otherwise with --tls / --no-tls).
        #[arg(long, value_name = "on|off")]
        encryption: Option<MigrationEncryption>,
    },
}

/// Runs a `vdc migration` command.
pub(crate) async fn run(ctx: &Ctx, cmd: MigrationCmd) -> Result<(), CliError> {
    let MigrationCmd::Settings { encryption } = cmd;
    let view = match encryption {
        Some(encryption) => {
            ctx.client
                .set_migration_settings(&vdc_types::migration::SetMigrationSettingsRequest {
                    encryption,
                })
                .await?
        }
        None => ctx.client.migration_settings().await?,
    };
    if ctx.json() {
        return out_json(&view);
    }
    out(&settings_text(&view, vdc_types::now_ms()))
}

/// A day count since the Unix epoch as `YYYY-MM-DD` (proleptic Gregorian).
fn date(ms: u64) -> String {
    let z = (ms / 86_400_000) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// A certificate's expiry for tables: `2027-11-27 (364d)`, `expired`, `-`.
pub fn expiry(cert: Option<&HostCertificate>, now_ms: u64) -> String {
    match cert {
        None => "-".into(),
        Some(c) if c.not_after_ms <= now_ms => format!("expired {}", date(c.not_after_ms)),
        Some(c) => format!(
            "{} ({}d)",
            date(c.not_after_ms),
            (c.not_after_ms - now_ms) / 86_400_000
        ),
    }
}

/// A host's certificate for `vdc host show`.
pub fn certificate_text(cert: Option<&HostCertificate>, now_ms: u64) -> String {
    match cert {
        Some(c) => format!("expires {}; {}", expiry(Some(c), now_ms), c.sans.join(", ")),
        None => "none (TLS migrations to or from it are refused)".into(),
    }
}

/// The settings as text: the setting, the CA, a table of hosts.
pub fn settings_text(v: &MigrationSettingsView, now_ms: u64) -> String {
    let mut s = format!("encryption: {}\n", v.encryption.as_str());
    match &v.ca {
        Some(ca) => {
            s += &format!(
                "cluster CA: made {}, expires {}, SHA-256 {}\n\n",
                date(ca.created_ms),
                date(ca.not_after_ms),
                ca.fingerprint
            )
        }
        None => s += "cluster CA: none\n\n",
    }
    let mut t = Table::new(&["HOST", "CERT-EXPIRES", "NAMES"]);
    for h in &v.hosts {
        t.row(vec![
            h.host.clone(),
            expiry(h.certificate.as_ref(), now_ms),
            h.certificate
                .as_ref()
                .map_or("-".into(), |c| c.sans.join(",")),
        ]);
    }
    s + &t.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_expiry() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(1_800_000_000_000), "2027-01-15");
        let c = HostCertificate {
            not_after_ms: 1_800_000_000_000 + 10 * 86_400_000,
            fingerprint: "f".into(),
            ca_fingerprint: "c".into(),
            sans: vec!["DNS:host-1".into(), "IP:10.0.0.1".into()],
        };
        assert_eq!(expiry(Some(&c), 1_800_000_000_000), "2027-01-25 (10d)");
        assert_eq!(expiry(None, 0), "-");
        assert!(expiry(Some(&c), 1_900_000_000_000).starts_with("expired"));
        let v = MigrationSettingsView {
            encryption: MigrationEncryption::On,
            ca: None,
            hosts: vec![vdc_types::migration::HostTlsStatus {
                host: "host-1".into(),
                certificate: Some(c),
            }],
        };
        let text = settings_text(&v, 1_800_000_000_000);
        assert!(text.starts_with("encryption: on\n"), "{text}");
        assert!(text.contains("host-1"), "{text}");
        assert!(text.contains("DNS:host-1,IP:10.0.0.1"), "{text}");
    }
}
