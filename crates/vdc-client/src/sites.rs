//! Site calls of the REST API: this site, pairing, paired sites.

use vdc_types::site::{LocalSite, PairSiteRequest, Site, SitePairRequest};

use crate::{seg, Client, ClientError};

impl Client {
    /// `GET /sites/local`: this installation's site name.
    pub async fn local_site(&self) -> Result<LocalSite, ClientError> {
        self.get("/sites/local").await
    }

    /// `GET /sites`: the paired sites with their link state.
    pub async fn list_sites(&self) -> Result<Vec<Site>, ClientError> {
        self.get("/sites").await
    }

    /// `GET /sites/{name}`.
    pub async fn get_site(&self, name: &str) -> Result<Site, ClientError> {
        self.get(&format!("/sites/{}", seg(name))).await
    }

    /// `POST /sites/pair`: pairs this site with the site at `req.url`.
    pub async fn pair_site(&self, req: &PairSiteRequest) -> Result<Site, ClientError> {
        self.post("/sites/pair", req).await
    }

    /// `POST /sites/pair-request`: the call a pairing site makes to its
    /// peer.
    pub async fn site_pair_request(&self, req: &SitePairRequest) -> Result<Site, ClientError> {
        self.post("/sites/pair-request", req).await
    }

    /// `DELETE /sites/{name}`: unpairs a site.
    pub async fn unpair_site(&self, name: &str) -> Result<(), ClientError> {
        self.send(self.req(reqwest::Method::DELETE, &format!("/sites/{}", seg(name))))
            .await
    }
}
