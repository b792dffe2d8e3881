//! The size cap on what an agent answers: the server reads an agent's
//! answer through [`read_agent_answer`] only, so a broken or hostile agent
//! cannot make the server buffer without limit.

use vdc_types::limits::{read_capped, BoundedError};
use vdc_types::{ApiError, ErrorCode};

/// Largest agent answer the server reads (the largest legitimate one is a
/// console read of at most a few MiB).
pub const AGENT_ANSWER_MAX: usize = 8 << 20;

/// The body of `resp`, an answer of host `host`'s agent, if it is at most
/// [`AGENT_ANSWER_MAX`] bytes.
pub async fn read_agent_answer(host: &str, resp: reqwest::Response) -> Result<Vec<u8>, ApiError> {
    read_capped(resp.bytes_stream(), AGENT_ANSWER_MAX)
        .await
        .map_err(|e| match e {
            BoundedError::TooLarge { max } => ApiError::new(
                ErrorCode::HostError,
                format!("host '{host}' sent an answer larger than {max} bytes; it was dropped"),
            ),
            e => ApiError::new(
                ErrorCode::HostUnavailable,
                format!("host '{host}' broke off its answer: {}", error_chain(&e)),
            ),
        })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An "agent" that answers with an endless body: the server stops
    /// reading at the cap and says so.
    #[tokio::test]
    async fn an_oversized_answer_is_dropped() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = [0u8; 1024];
            let _ = s.read(&mut req).await;
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
                64 * AGENT_ANSWER_MAX
            );
            s.write_all(head.as_bytes()).await.unwrap();
            let chunk = vec![b'x'; 64 * 1024];
            while s.write_all(&chunk).await.is_ok() {}
        });
        let resp = reqwest::get(format!("http://{addr}/agent/v1/host"))
            .await
            .unwrap();
        let e = read_agent_answer("host-1", resp).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::HostError);
        assert!(e.message.contains("larger than"), "{}", e.message);
    }
}
