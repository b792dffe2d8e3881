//! Reading a peer's answer with a size cap, so that no peer (an agent, the
//! server, anything answering on a socket) can make its reader buffer
//! without limit.

use futures::{Stream, StreamExt};

/// Errors of [`read_capped`].
#[derive(Debug, thiserror::Error)]
pub enum BoundedError {
    /// The answer is longer than the reader accepts.
    #[error("the answer is larger than {max} bytes")]
    TooLarge {
        /// The cap.
        max: usize,
    },
    /// Reading the answer failed.
    #[error("the answer broke off")]
    Read(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The answer is not the JSON expected.
    #[error("the answer is not the JSON expected")]
    Decode(#[source] serde_json::Error),
}

/// Reads a body given as a stream of chunks (e.g. reqwest's
/// `Response::bytes_stream`) into memory, failing as soon as it grows past
/// `max` bytes: at most `max` plus one chunk is ever held.
pub async fn read_capped<S, B, E>(body: S, max: usize) -> Result<Vec<u8>, BoundedError>
where
    S: Stream<Item = Result<B, E>>,
    B: AsRef<[u8]>,
    E: std::error::Error + Send + Sync + 'static,
{
    let mut body = std::pin::pin!(body);
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| BoundedError::Read(Box::new(e)))?;
        let chunk = chunk.as_ref();
        if out.len() + chunk.len() > max {
            return Err(BoundedError::TooLarge { max });
        }
        out.extend_from_slice(chunk);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(n: usize, size: usize) -> impl Stream<Item = Result<Vec<u8>, std::io::Error>> {
        futures::stream::iter((0..n).map(move |_| Ok(vec![b'x'; size])))
    }

    #[tokio::test]
    async fn reads_up_to_the_cap() {
        let v = read_capped(chunks(4, 256), 1024).await.unwrap();
        assert_eq!(v.len(), 1024);
    }

    #[tokio::test]
    async fn stops_past_the_cap() {
        let e = read_capped(chunks(1_000_000, 4096), 1024)
            .await
            .unwrap_err();
        assert!(matches!(e, BoundedError::TooLarge { max: 1024 }));
    }

    #[tokio::test]
    async fn passes_read_errors_on() {
        let s = futures::stream::iter(vec![Ok(vec![1u8]), Err(std::io::Error::other("reset"))]);
        assert!(matches!(
            read_capped(s, 10).await,
            Err(BoundedError::Read(_))
        ));
    }
}

/// What a [`LineFramer`] found in the bytes pushed into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framed {
    /// A complete line, without its newline.
    Line(Vec<u8>),
    /// A line grew past the cap; its bytes are dropped up to the next
    /// newline, where framing resumes. Reported once per such line, as
    /// soon as it is seen (a reader that disconnects need not wait for the
    /// newline).
    Overlong,
}

/// Splits a byte stream into newline-terminated lines, holding at most
/// `max` bytes of an unfinished line: a peer writing an endless line costs
/// a fixed amount of memory. Pure: the reader feeds it whatever it read.
#[derive(Debug)]
pub struct LineFramer {
    max: usize,
    partial: Vec<u8>,
    /// Inside an overlong line: dropping bytes until the next newline.
    dropping: bool,
}

impl LineFramer {
    /// A framer for lines of at most `max` bytes (newline excluded).
    pub fn new(max: usize) -> LineFramer {
        LineFramer {
            max,
            partial: Vec::new(),
            dropping: false,
        }
    }

    /// Bytes of an unfinished line held now (never more than `max`).
    pub fn held(&self) -> usize {
        self.partial.len()
    }

    /// Feeds `data`; what it completes is appended to `out`.
    pub fn push(&mut self, mut data: &[u8], out: &mut Vec<Framed>) {
        while !data.is_empty() {
            let (part, rest, ends) = match data.iter().position(|&b| b == b'\n') {
                Some(i) => (&data[..i], &data[i + 1..], true),
                None => (data, &data[data.len()..], false),
            };
            if !self.dropping && self.partial.len() + part.len() > self.max {
                self.dropping = true;
                self.partial = Vec::new();
                out.push(Framed::Overlong);
            }
            if !self.dropping {
                self.partial.extend_from_slice(part);
            }
            if ends {
                if !self.dropping {
                    out.push(Framed::Line(std::mem::take(&mut self.partial)));
                }
                self.dropping = false;
            }
            data = rest;
        }
    }
}

#[cfg(test)]
mod framer_tests {
    use super::*;

    fn feed(f: &mut LineFramer, chunks: &[&[u8]]) -> Vec<Framed> {
        let mut out = Vec::new();
        for c in chunks {
            f.push(c, &mut out);
        }
        out
    }

    fn line(s: &str) -> Framed {
        Framed::Line(s.as_bytes().to_vec())
    }

    #[test]
    fn splits_lines_across_chunks() {
        let mut f = LineFramer::new(8);
        let out = feed(&mut f, &[b"ab", b"c\nde", b"\n\nfg"]);
        assert_eq!(out, vec![line("abc"), line("de"), line("")]);
        assert_eq!(f.held(), 2);
    }

    #[test]
    fn an_endless_line_holds_at_most_the_cap_and_framing_resumes() {
        let mut f = LineFramer::new(8);
        let mut out = Vec::new();
        f.push(b"ok\n", &mut out);
        for _ in 0..10_000 {
            f.push(b"xxxxxxxxxxxxxxxx", &mut out);
            assert!(f.held() <= 8);
        }
        f.push(b"tail\nnext\n", &mut out);
        assert_eq!(out, vec![line("ok"), Framed::Overlong, line("next")]);
    }

    #[test]
    fn a_line_of_exactly_the_cap_passes() {
        let mut f = LineFramer::new(4);
        let out = feed(&mut f, &[b"abcd\nabcde\nz\n"]);
        assert_eq!(out, vec![line("abcd"), Framed::Overlong, line("z")]);
    }

    #[test]
    fn any_chunking_gives_the_same_lines() {
        let text = b"one\ntwo-too-long-for-it\nthree\n\nfour\n";
        let mut whole = LineFramer::new(6);
        let expected = feed(&mut whole, &[text]);
        for size in 1..text.len() {
            let mut f = LineFramer::new(6);
            let chunks: Vec<&[u8]> = text.chunks(size).collect();
            assert_eq!(feed(&mut f, &chunks), expected, "chunks of {size}");
        }
    }
}
