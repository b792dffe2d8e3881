//! The event history read in pages.

use vdc_types::Event;

use crate::{seg, Client, ClientError};

impl Client {
    /// `GET /events?after=…&topics=…&limit=…`: stored events with a
    /// sequence number above `after`, oldest first, at most `limit`.
    pub async fn events_after(
        &self,
        after: u64,
        topics: &str,
        limit: usize,
    ) -> Result<Vec<Event>, ClientError> {
        self.get(&format!(
            "/events?after={after}&topics={}&limit={limit}",
            seg(topics)
        ))
        .await
    }

    /// The sequence number of the newest stored event (0 if none).
    pub async fn last_event_seq(&self) -> Result<u64, ClientError> {
        let mut after = 0;
        loop {
            let page = self.events_after(after, "", 2000).await?;
            match page.last() {
                Some(e) if page.len() == 2000 => after = e.seq,
                Some(e) => return Ok(e.seq),
                None => return Ok(after),
            }
        }
    }
}
