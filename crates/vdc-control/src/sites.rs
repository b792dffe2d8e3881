//! Sites: this installation's name and its paired peers.
//!
//! # Pairing (run at site A against site B)
//! 1. A asks B for its name (`GET /api/v1/sites/local` with B's token);
//! 2. the API layer mints a token for B to call A with (A keeps only its
//!    hash);
//! 3. A calls B's `POST /api/v1/sites/pair-request` with its name, URL and
//!    that token; B stores its record of A;
//! 4. A stores its record of B (with B's token). Both publish `site.paired`.
//!
//! Records: `/sites/<name>` ([`SiteRecord`], v1; a newer version is
//! refused). The token is never in an answer or an event.
//!
//! # Link monitor
//! Every [`PROBE_INTERVAL`] the server calls each peer's
//! `GET /api/v1/sites/local` and keeps whether it answered, when, and the
//! round trip; a change publishes `site.unreachable` / `site.reachable`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use vdc_client::{Client, ClientError};
use vdc_store::{StoreError, StoreExt};
use vdc_types::site::{
    LocalSite, PairSiteRequest, Site, SitePairRequest, SiteRecord, DEFAULT_SITE_NAME,
    SITE_RECORD_VERSION,
};
use vdc_types::{now_ms, ApiError, ErrorCode, UnixMillis};

use crate::{store_err, Cluster};

/// Store prefix of the site records.
pub const SITES_PREFIX: &str = "/sites/";
/// How often each peer is probed.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// Longest wait for a probe's answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// What the server knows of sites at run time.
#[derive(Debug)]
pub struct SiteState {
    local: std::sync::RwLock<LocalSite>,
    relay: std::sync::RwLock<Option<std::net::IpAddr>>,
    links: std::sync::Mutex<HashMap<String, Link>>,
}

impl Default for SiteState {
    fn default() -> Self {
        SiteState {
            local: std::sync::RwLock::new(LocalSite {
                name: DEFAULT_SITE_NAME.to_string(),
                url: None,
            }),
            links: Default::default(),
            relay: Default::default(),
        }
    }
}

/// The last probe of one peer.
#[derive(Debug, Clone, Copy, Default)]
struct Link {
    reachable: bool,
    last_seen_ms: Option<UnixMillis>,
    rtt_ms: Option<u64>,
    probed: bool,
}

fn site_key(name: &str) -> String {
    format!("{SITES_PREFIX}{name}")
}

/// The API error of a failed call to peer `site`: an unreachable peer is
/// 503 `site_unreachable`; the peer's own errors pass through, naming it.
pub fn site_error(site: &str, e: ClientError) -> ApiError {
    match e {
        ClientError::Api(mut err) => {
            err.message = format!("site '{site}' answered: {}", err.message);
            err
        }
        ClientError::Transport { .. } => ApiError::new(
            ErrorCode::SiteUnreachable,
            format!(
                "site '{site}' does not answer ({e}); check its server and the link, then retry"
            ),
        ),
        other => ApiError::new(
            ErrorCode::SiteUnreachable,
            format!("site '{site}' gave an answer this server cannot use: {other}"),
        ),
    }
}

impl Cluster {
    /// Sets this installation's site name and the URL peers call it at.
    pub fn set_local_site(&self, name: &str, url: Option<String>) {
        let mut local = self.sites.local.write().unwrap_or_else(|p| p.into_inner());
        *local = LocalSite {
            name: name.to_string(),
            url,
        };
    }

    /// Sets the address of this server peer sites' hosts reach (replication
    /// relays listen there).
    pub fn set_relay_address(&self, addr: Option<std::net::IpAddr>) {
        *self.sites.relay.write().unwrap_or_else(|p| p.into_inner()) = addr;
    }

    /// The address replication relays listen on, if set.
    pub(crate) fn relay_address(&self) -> Option<std::net::IpAddr> {
        *self.sites.relay.read().unwrap_or_else(|p| p.into_inner())
    }

    /// `GET /api/v1/sites/local`.
    pub fn local_site(&self) -> LocalSite {
        self.sites
            .local
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The stored record of peer `name`; 404 if not paired.
    pub(crate) async fn site_record(&self, name: &str) -> Result<SiteRecord, ApiError> {
        let rec: SiteRecord = self
            .store
            .get_json(&site_key(name))
            .await
            .map_err(store_err)?
            .ok_or_else(|| ApiError::not_found("site", name))?;
        if rec.version > SITE_RECORD_VERSION {
            return Err(ApiError::internal(format!(
                "site record '{name}' has version {}; this server reads up to {SITE_RECORD_VERSION}",
                rec.version
            )));
        }
        Ok(rec)
    }

    /// A client of peer `name`'s API with the stored token; 404 if not
    /// paired, 503 `site_unreachable` if the last probe found it down.
    pub async fn site_client(&self, name: &str) -> Result<Client, ApiError> {
        let rec = self.site_record(name).await?;
        let link = self.link(name);
        if link.probed && !link.reachable {
            return Err(ApiError::new(
                ErrorCode::SiteUnreachable,
                format!("site '{name}' does not answer at {}; check its server and the link, then retry", rec.url),
            ));
        }
        Ok(Client::new(&rec.url, Some(rec.token)))
    }

    fn link(&self, name: &str) -> Link {
        self.sites
            .links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .copied()
            .unwrap_or_default()
    }

    /// `GET /api/v1/sites`: every paired site with its link state.
    pub async fn list_sites(&self) -> Result<Vec<Site>, ApiError> {
        let recs: Vec<SiteRecord> = self.list_values(SITES_PREFIX).await?;
        Ok(recs.into_iter().map(|r| self.site_view(r)).collect())
    }

    /// `GET /api/v1/sites/{name}`.
    pub async fn get_site(&self, name: &str) -> Result<Site, ApiError> {
        let rec = self.site_record(name).await?;
        Ok(self.site_view(rec))
    }

    fn site_view(&self, r: SiteRecord) -> Site {
        let link = self.link(&r.name);
        Site {
            reachable: link.reachable,
            last_seen_ms: link.last_seen_ms,
            rtt_ms: link.rtt_ms,
            name: r.name,
            url: r.url,
            paired_ms: r.paired_ms,
        }
    }

    /// Steps 1, 3 and 4 of the pairing (module docs); `token_for_peer` is
    /// the token minted for the peer to call this site with. Returns the
    /// peer's name first, through `peer_name`, so the caller can mint the
    /// token for it.
    pub async fn peer_site_name(&self, req: &PairSiteRequest) -> Result<String, ApiError> {
        check_url(&req.url)?;
        let local = self.local_site();
        let peer = Client::new(&req.url, Some(req.token.clone()));
        let info = peer
            .local_site()
            .await
            .map_err(|e| site_error(req.name.as_deref().unwrap_or(&req.url), e))?;
        if let Some(expected) = &req.name {
            if *expected != info.name {
                return Err(ApiError::invalid(format!(
                    "the site at {} is named '{}', not '{expected}'; check the URL or leave out --name",
                    req.url, info.name
                )));
            }
        }
        if info.name == local.name {
            return Err(ApiError::invalid(format!(
                "the site at {} has this site's own name '{}'; give each installation its own --site-name",
                req.url, info.name
            )));
        }
        if self
            .store
            .get_json::<SiteRecord>(&site_key(&info.name))
            .await
            .map_err(store_err)?
            .is_some()
        {
            return Err(ApiError::new(
                ErrorCode::AlreadyExists,
                format!(
                    "site '{}' is already paired; unpair it first ('vdc site unpair {}')",
                    info.name, info.name
                ),
            ));
        }
        Ok(info.name)
    }

    /// Calls the peer's pair-request and stores the pairing here.
    pub async fn pair_site(
        &self,
        req: &PairSiteRequest,
        peer_name: &str,
        token_for_peer: String,
    ) -> Result<Site, ApiError> {
        let local = self.local_site();
        let local_url = req.local_url.clone().or(local.url.clone()).ok_or_else(|| {
            ApiError::invalid(
                "this server has no --site-url; say where the peer reaches this site with --local-url",
            )
        })?;
        check_url(&local_url)?;
        let peer = Client::new(&req.url, Some(req.token.clone()));
        peer.site_pair_request(&SitePairRequest {
            name: local.name.clone(),
            url: local_url,
            token: token_for_peer,
        })
        .await
        .map_err(|e| site_error(peer_name, e))?;
        let rec = SiteRecord {
            version: SITE_RECORD_VERSION,
            name: peer_name.to_string(),
            url: req.url.trim_end_matches('/').to_string(),
            token: req.token.clone(),
            paired_ms: now_ms(),
        };
        self.store_pairing(&rec).await?;
        Ok(self.site_view(rec))
    }

    /// `POST /api/v1/sites/pair-request`: the peer's side of a pairing.
    pub async fn accept_pair_request(&self, req: &SitePairRequest) -> Result<Site, ApiError> {
        vdc_types::names::validate_name("site", &req.name).map_err(ApiError::invalid)?;
        check_url(&req.url)?;
        if req.name == self.local_site().name {
            return Err(ApiError::invalid(format!(
                "the requesting site has this site's own name '{}'; give each installation its own --site-name",
                req.name
            )));
        }
        let rec = SiteRecord {
            version: SITE_RECORD_VERSION,
            name: req.name.clone(),
            url: req.url.trim_end_matches('/').to_string(),
            token: req.token.clone(),
            paired_ms: now_ms(),
        };
        self.store_pairing(&rec).await?;
        Ok(self.site_view(rec))
    }

    async fn store_pairing(&self, rec: &SiteRecord) -> Result<(), ApiError> {
        match self.store.create_json(&site_key(&rec.name), rec).await {
            Ok(_) => {}
            Err(StoreError::AlreadyExists(_)) => {
                return Err(ApiError::new(
                    ErrorCode::AlreadyExists,
                    format!(
                        "site '{}' is already paired; unpair it first ('vdc site unpair {}')",
                        rec.name, rec.name
                    ),
                ))
            }
            Err(e) => return Err(store_err(e)),
        }
        self.events
            .publish(
                "site.paired",
                &rec.name,
                format!("paired with site {} at {}", rec.name, rec.url),
                json!({"site": rec.name, "url": rec.url}),
            )
            .await;
        Ok(())
    }

    /// `DELETE /api/v1/sites/{name}`: forgets the pairing here (the peer
    /// keeps its own record until unpaired there). Refused while a
    /// replication or a replica uses the site.
    pub async fn unpair_site(&self, name: &str) -> Result<(), ApiError> {
        self.site_record(name).await?;
        let users = self.site_users(name).await?;
        if !users.is_empty() {
            return Err(ApiError::invalid_state(format!(
                "site '{name}' is used by the replication of {}; disable it first ('vdc replication disable VM')",
                users.join(", ")
            )));
        }
        self.store
            .delete(&site_key(name))
            .await
            .map_err(store_err)?;
        self.sites
            .links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        self.events
            .publish(
                "site.unpaired",
                name,
                format!("unpaired from site {name}"),
                json!({"site": name}),
            )
            .await;
        Ok(())
    }

    /// The VMs replicated to `site` from here.
    async fn site_users(&self, site: &str) -> Result<Vec<String>, ApiError> {
        let all: Vec<serde_json::Value> = self
            .list_values(crate::replication::REPLICATIONS_PREFIX)
            .await?;
        Ok(all
            .into_iter()
            .filter(|r| r.get("site").and_then(|s| s.as_str()) == Some(site))
            .filter_map(|r| r.get("vm").and_then(|v| v.as_str()).map(str::to_string))
            .collect())
    }

    /// Probes every peer every [`PROBE_INTERVAL`] (module docs).
    pub fn spawn_site_monitor(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROBE_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                me.probe_sites().await;
            }
        })
    }

    async fn probe_sites(&self) {
        let recs: Vec<SiteRecord> = match self.list_values(SITES_PREFIX).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the paired sites");
                return;
            }
        };
        for rec in recs {
            let peer = Client::new(&rec.url, Some(rec.token.clone()));
            let started = Instant::now();
            let answer = tokio::time::timeout(PROBE_TIMEOUT, peer.local_site()).await;
            let rtt = started.elapsed().as_millis() as u64;
            let (ok, why) = match answer {
                Ok(Ok(_)) => (true, String::new()),
                Ok(Err(e)) => (false, e.to_string()),
                Err(_) => (
                    false,
                    format!("no answer within {} s", PROBE_TIMEOUT.as_secs()),
                ),
            };
            let before = {
                let mut links = self.sites.links.lock().unwrap_or_else(|p| p.into_inner());
                let link = links.entry(rec.name.clone()).or_default();
                let before = (link.probed, link.reachable);
                link.probed = true;
                link.reachable = ok;
                if ok {
                    link.last_seen_ms = Some(now_ms());
                    link.rtt_ms = Some(rtt);
                }
                before
            };
            let (was_probed, was_reachable) = before;
            if ok && !(was_probed && was_reachable) {
                self.events
                    .publish(
                        "site.reachable",
                        &rec.name,
                        format!("site {} answers ({rtt} ms)", rec.name),
                        json!({"site": rec.name, "rtt_ms": rtt}),
                    )
                    .await;
            } else if !ok && (!was_probed || was_reachable) {
                self.events
                    .publish(
                        "site.unreachable",
                        &rec.name,
                        format!("site {} does not answer: {why}", rec.name),
                        json!({"site": rec.name, "error": why}),
                    )
                    .await;
            }
        }
    }
}

fn check_url(url: &str) -> Result<(), ApiError> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "the site URL '{url}' must start with http:// or https://"
        )))
    }
}
