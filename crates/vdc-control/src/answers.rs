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
