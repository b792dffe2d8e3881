//! The supervisor's inputs besides the lease: QEMU's pid on stdin and the
//! control socket.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};

use crate::{ControlReply, ControlRequest, SupervisorError, MAX_LINE};

pub(crate) fn bind(socket: &PathBuf) -> Result<UnixListener, SupervisorError> {
    match std::fs::remove_file(socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(SupervisorError::Io {
                path: socket.clone(),
                source: e,
            })
        }
        _ => {}
    }
    UnixListener::bind(socket).map_err(SupervisorError::io(socket))
}

/// Reads `qemu PID` from stdin; `None` on EOF, `abort` or nonsense.
pub(crate) async fn read_qemu_pid(tx: mpsc::Sender<Option<u32>>) {
    let mut line = String::new();
    let mut stdin = BufReader::new(tokio::io::stdin().take(MAX_LINE as u64));
    let pid = match stdin.read_line(&mut line).await {
        Ok(_) => line
            .trim()
            .strip_prefix("qemu ")
            .and_then(|p| p.parse::<u32>().ok())
            .filter(|p| *p > 0),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read stdin");
            None
        }
    };
    if tx.send(pid).await.is_err() {
        tracing::debug!("supervisor stopped before QEMU's pid arrived");
    }
}

/// Serves the control socket: one JSON request line, one JSON answer line.
pub(crate) async fn serve_control(
    listener: UnixListener,
    tx: mpsc::Sender<(ControlRequest, oneshot::Sender<ControlReply>)>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader = BufReader::new(read.take(MAX_LINE as u64));
            let answer = match reader.read_line(&mut line).await {
                Ok(_) => match serde_json::from_str::<ControlRequest>(line.trim()) {
                    Ok(req) => {
                        let (reply_tx, reply_rx) = oneshot::channel();
                        if tx.send((req, reply_tx)).await.is_err() {
                            return;
                        }
                        reply_rx.await.unwrap_or(ControlReply::Error {
                            message: "the supervisor is stopping".into(),
                        })
                    }
                    Err(e) => ControlReply::Error {
                        message: format!("not a control request: {e}"),
                    },
                },
                Err(e) => ControlReply::Error {
                    message: format!("cannot read the request: {e}"),
                },
            };
            let mut out = serde_json::to_string(&answer).unwrap_or_default();
            out.push('\n');
            if let Err(e) = write.write_all(out.as_bytes()).await {
                tracing::debug!(error = %e, "control client left");
            }
        });
    }
}
