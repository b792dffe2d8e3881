//! Several servers of one control plane behind one client: `VDC_URL` may
//! list them, separated by commas. Calls go to the server that answered
//! last; a call that cannot reach it (connection refused or timed out
//! before anything was sent) goes to the next, so the request is never
//! carried out twice. Any server answers: followers forward to the leader.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::{Client, ClientError};

/// The servers a client knows, and the one it uses now.
#[derive(Debug)]
pub(crate) struct Servers {
    urls: Vec<String>,
    current: AtomicUsize,
}

impl Servers {
    /// `list`: one URL or several separated by commas.
    pub(crate) fn parse(list: &str) -> Servers {
        let mut urls: Vec<String> = list
            .split(',')
            .map(|u| u.trim().trim_end_matches('/').to_string())
            .filter(|u| !u.is_empty())
            .collect();
        if urls.is_empty() {
            urls.push(list.trim_end_matches('/').to_string());
        }
        Servers {
            urls,
            current: AtomicUsize::new(0),
        }
    }

    /// Every server.
    pub(crate) fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The server in use.
    pub(crate) fn current(&self) -> &str {
        &self.urls[self.current.load(Ordering::Relaxed) % self.urls.len()]
    }

    /// The server in use did not answer: the next one.
    pub(crate) fn next(&self) {
        self.current.fetch_add(1, Ordering::Relaxed);
    }

    /// How many.
    pub(crate) fn len(&self) -> usize {
        self.urls.len()
    }
}

/// Whether `e` means the request never reached the server.
fn unreached(e: &reqwest::Error) -> bool {
    e.is_connect() || (e.is_timeout() && e.status().is_none() && e.is_request())
}

impl Client {
    /// Sends `rb`, trying the next server when one cannot be reached.
    pub(crate) async fn execute(
        &self,
        rb: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let req = rb.build().map_err(|source| self.transport(source))?;
        let n = self.servers.len();
        for attempt in 0..n {
            let from = self.servers.current().to_string();
            let mut r = match req.try_clone() {
                Some(r) => r,
                None => return self.http.execute(req).await.map_err(|s| self.transport(s)),
            };
            if attempt > 0 {
                if let Some(rest) = req.url().as_str().strip_prefix(self.servers_first_of(&req)) {
                    if let Ok(u) = reqwest::Url::parse(&format!("{from}{rest}")) {
                        *r.url_mut() = u;
                    }
                }
            }
            match self.http.execute(r).await {
                Ok(resp) => return Ok(resp),
                Err(e) if unreached(&e) && attempt + 1 < n => self.servers.next(),
                Err(e) => {
                    if unreached(&e) {
                        self.servers.next();
                    }
                    return Err(self.transport(e));
                }
            }
        }
        Err(ClientError::Config("no server to send to".to_string()))
    }

    /// The server `req` was built for (a prefix of its URL).
    fn servers_first_of<'a>(&'a self, req: &reqwest::Request) -> &'a str {
        self.servers
            .urls()
            .iter()
            .find(|u| req.url().as_str().starts_with(u.as_str()))
            .map(|s| s.as_str())
            .unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list() {
        let s = Servers::parse("http://a:1/, http://b:2");
        assert_eq!(s.urls(), ["http://a:1", "http://b:2"]);
        assert_eq!(s.current(), "http://a:1");
        s.next();
        assert_eq!(s.current(), "http://b:2");
        s.next();
        assert_eq!(s.current(), "http://a:1");
        assert_eq!(Servers::parse("http://a:1").len(), 1);
    }
}
