//! The event stream (Server-Sent Events): frames, resuming after the
//! server said this subscriber lagged, and across servers.

use std::time::{Duration, Instant};

use futures::Stream;
use vdc_types::{ApiError, Event};

use crate::{seg, Client, ClientError, EVENT_FRAME_MAX, RESUME_PATIENCE};

impl Client {
    /// Subscribes to the event stream (Server-Sent Events), filtered by topic
    /// patterns such as `vm.*` (all events when `topics` is empty).
    ///
    /// When the server says this subscriber fell behind (an `event: lagged`
    /// frame), the stream reconnects by itself and resumes after the last
    /// event it delivered, from the server's history. A client of several
    /// servers also resumes on another server when the stream breaks:
    /// event numbers are the same on every server, so nothing is missed or
    /// repeated.
    pub async fn events(
        &self,
        topics: &[String],
    ) -> Result<impl Stream<Item = Result<Event, ClientError>>, ClientError> {
        let topics = topics.to_vec();
        let several = self.servers.len() > 1;
        // Where the stream starts, so that a resume elsewhere starts there.
        let start = if several {
            self.latest_event_seq().await?
        } else {
            None
        };
        let first = self.open_event_stream(&topics, start).await?;
        let me = self.clone();
        Ok(async_stream::stream! {
            use futures::StreamExt;
            let mut resp = first;
            let mut last: Option<u64> = start;
            loop {
                let mut body = resp.bytes_stream();
                let mut buf: Vec<u8> = Vec::new();
                let mut resume = false;
                'read: while let Some(chunk) = body.next().await {
                    let chunk = match chunk {
                        Ok(c) => c,
                        Err(source) if several => {
                            drop(source);
                            me.servers.next();
                            resume = true;
                            break 'read;
                        }
                        Err(source) => {
                            yield Err(me.transport(source));
                            return;
                        }
                    };
                    buf.extend_from_slice(&chunk);
                    if buf.len() > EVENT_FRAME_MAX && !buf.windows(2).any(|w| w == b"\n\n") {
                        yield Err(ClientError::TooLarge { url: me.servers.current().to_string(), max: EVENT_FRAME_MAX });
                        return;
                    }
                    while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
                        let frame: Vec<u8> = buf.drain(..end + 2).collect();
                        let frame = String::from_utf8_lossy(&frame);
                        match sse_frame(&frame) {
                            SseFrame::Lagged => {
                                resume = true;
                                break 'read;
                            }
                            SseFrame::Data(data) => {
                                let ev = serde_json::from_str::<Event>(&data).map_err(ClientError::Decode);
                                if let Ok(e) = &ev {
                                    last = Some(e.seq);
                                }
                                yield ev;
                            }
                            SseFrame::Other => {}
                        }
                    }
                }
                if !resume && !several {
                    return;
                }
                if !resume {
                    // The server ended the stream (it stopped): the next.
                    me.servers.next();
                }
                resp = match me.reopen_event_stream(&topics, last.unwrap_or(0)).await {
                    Ok(r) => r,
                    Err(e) => {
                        yield Err(e);
                        return;
                    }
                };
            }
        })
    }

    /// Opens the stream again after `after`, on any server, for up to
    /// [`RESUME_PATIENCE`] (an election may be running).
    async fn reopen_event_stream(
        &self,
        topics: &[String],
        after: u64,
    ) -> Result<reqwest::Response, ClientError> {
        let deadline = Instant::now() + RESUME_PATIENCE;
        loop {
            match self.open_event_stream(topics, Some(after)).await {
                Ok(r) => return Ok(r),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(ClientError::Transport { .. }) => {
                    self.servers.next();
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The number of the newest stored event, if any.
    async fn latest_event_seq(&self) -> Result<Option<u64>, ClientError> {
        let v: Vec<Event> = self.get("/events?limit=1").await?;
        Ok(Some(v.last().map(|e| e.seq).unwrap_or(0)))
    }

    async fn open_event_stream(
        &self,
        topics: &[String],
        after: Option<u64>,
    ) -> Result<reqwest::Response, ClientError> {
        let mut query = Vec::new();
        if !topics.is_empty() {
            query.push(format!(
                "topics={}",
                topics.iter().map(|t| seg(t)).collect::<Vec<_>>().join(",")
            ));
        }
        if let Some(a) = after {
            query.push(format!("after={a}"));
        }
        let mut path = "/events/stream".to_string();
        if !query.is_empty() {
            path.push('?');
            path.push_str(&query.join("&"));
        }
        let resp = self.execute(self.req(reqwest::Method::GET, &path)).await?;
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            return Err(ClientError::Api(
                serde_json::from_str(&text)
                    .unwrap_or_else(|_| ApiError::internal(format!("server answered {status}"))),
            ));
        }
        Ok(resp)
    }
}

/// What one SSE frame carries.
#[derive(Debug, PartialEq, Eq)]
enum SseFrame {
    /// The server dropped events for this subscriber.
    Lagged,
    /// An event's JSON.
    Data(String),
    /// A comment or keep-alive.
    Other,
}

fn sse_frame(frame: &str) -> SseFrame {
    let kind = frame
        .lines()
        .find_map(|l| l.strip_prefix("event:"))
        .map(str::trim);
    if kind == Some("lagged") {
        return SseFrame::Lagged;
    }
    match sse_data(frame) {
        Some(d) => SseFrame::Data(d),
        None => SseFrame::Other,
    }
}

/// The `data:` payload of one SSE frame, if it has one.
fn sse_data(frame: &str) -> Option<String> {
    let lines: Vec<&str> = frame
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|l| l.strip_prefix(' ').unwrap_or(l))
        .collect();
    if lines.is_empty() {
        None
    } else {
        Some(lines.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_frames() {
        assert_eq!(
            sse_data("data: {\"a\":1}\n\n").as_deref(),
            Some("{\"a\":1}")
        );
        assert_eq!(sse_data(": keep-alive\n\n"), None);
        assert_eq!(
            sse_data("event: x\ndata:a\ndata: b\n\n").as_deref(),
            Some("a\nb")
        );
    }

    #[test]
    fn lagged_frames_are_recognised() {
        assert_eq!(
            sse_frame("event: lagged\ndata: 3 events were dropped\n\n"),
            SseFrame::Lagged
        );
        assert_eq!(
            sse_frame("id: 4\nevent: vm.created\ndata: {}\n\n"),
            SseFrame::Data("{}".into())
        );
        assert_eq!(sse_frame(": keep-alive\n\n"), SseFrame::Other);
    }
}
