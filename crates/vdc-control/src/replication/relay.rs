//! A TCP relay on this server: the protected site's host writes a point
//! into the relay, which forwards every connection to the NBD server of
//! this site's host (see `vdc_lab::sites` for why the traffic goes
//! through the server). Streams are copied as they come; nothing is
//! buffered beyond the socket buffers.

use std::net::{IpAddr, SocketAddr};

use tokio::net::{TcpListener, TcpStream};
use vdc_types::{ApiError, ErrorCode};

/// A running relay; it stops when dropped.
#[derive(Debug)]
pub(crate) struct Relay {
    /// The port it listens on.
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Listens on `bind:0` and forwards each connection to `to`.
pub(crate) async fn start(bind: IpAddr, to: SocketAddr) -> Result<Relay, ApiError> {
    let listener = TcpListener::bind((bind, 0)).await.map_err(|e| {
        ApiError::new(
            ErrorCode::Internal,
            format!("cannot open a replication relay on {bind}: {e}"),
        )
    })?;
    let port = listener
        .local_addr()
        .map_err(|e| ApiError::internal(format!("relay address: {e}")))?
        .port();
    let task = tokio::spawn(async move {
        loop {
            let (mut inbound, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "replication relay accept");
                    continue;
                }
            };
            tokio::spawn(async move {
                let mut outbound = match TcpStream::connect(to).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(%peer, %to, error = %e, "replication relay cannot reach the host");
                        return;
                    }
                };
                if let Err(e) = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await {
                    tracing::debug!(%peer, error = %e, "replication relay connection ended");
                }
            });
        }
    });
    Ok(Relay { port, task })
}
