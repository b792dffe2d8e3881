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
