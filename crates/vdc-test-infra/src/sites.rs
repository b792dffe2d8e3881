//! Two sites for replication and DR tests: two labs, linked and paired
//! (see `vdc_lab::sites`).

use crate::{error_chain, TestLab, TestLabBuilder};

/// Two paired installations: site `a` and site `b`, each a [`TestLab`]
/// (its own server, hosts, datastores, client). Torn down on drop.
pub struct TwoSiteLab {
    /// Site `a` (the protected site in most tests).
    pub a: TestLab,
    /// Site `b` (the recovery site in most tests).
    pub b: TestLab,
}

impl TwoSiteLab {
    /// Starts site `a` from `a` and site `b` from `b` (their site names
    /// are set here), links and pairs them.
    ///
    /// # Panics
    /// If a site cannot be started, linked or paired.
    pub async fn start(a: TestLabBuilder, b: TestLabBuilder) -> TwoSiteLab {
        let a = a.site_name(vdc_lab::sites::SITE_NAMES[0]).start().await;
        let b = b.site_name(vdc_lab::sites::SITE_NAMES[1]).start().await;
        if let Err(e) = vdc_lab::sites::link(&a.info, &b.info) {
            panic!("linking the sites: {}", error_chain(&e));
        }
        if let Err(e) = vdc_lab::sites::pair(&a.info, &b.info).await {
            panic!("pairing the sites: {}", error_chain(&e));
        }
        TwoSiteLab { a, b }
    }

    /// Two sites of `hosts` hosts each, the guest image imported at both.
    pub async fn start_hosts(hosts: usize) -> TwoSiteLab {
        Self::start(TestLab::builder(hosts), TestLab::builder(hosts)).await
    }

    /// Kills site `site` (`a` or `b`) at once: server, agents, QEMUs.
    ///
    /// # Panics
    /// If the site is unknown or its processes survive.
    pub fn kill_site(&self, site: &str) -> String {
        let lab = match site {
            "a" => &self.a,
            "b" => &self.b,
            other => panic!("no site '{other}' in a two-site lab"),
        };
        match vdc_lab::sites::kill_site(&lab.info.lab_id, &lab.spec.state_root) {
            Ok(m) => m,
            Err(e) => panic!("killing site {site}: {}", error_chain(&e)),
        }
    }
}
