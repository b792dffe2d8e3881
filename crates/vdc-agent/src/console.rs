//! A VM's serial console: reading `console.log` and typing into the guest.
//!
//! QEMU exposes the guest's ttyS0 as a unix socket server
//! (`<run-dir>/console.sock`) and appends everything the guest writes to
//! `console.log`. Output is therefore always read from the log, by offset
//! (a follower never misses or repeats bytes) or as a tail; the log is kept
//! bounded by rotation (`console_log`).
//!
//! Input goes through the socket, and the socket has two traps, seen on
//! QEMU 10:
//! - it serves one client at a time; a second client's connection waits in
//!   the backlog until the first leaves;
//! - QEMU drops a client as soon as it hangs up, before reading what the
//!   guest has not taken yet (the guest's UART takes 16 bytes at a time), so
//!   "connect, write, close" loses most of a command line.
//!
//! So the agent holds **one connection per VM** while the VM's process
//! lives ([`ConsoleLinks`]). Each connection is one task that:
//! 1. drains and discards what QEMU sends to the client (the log has it
//!    already) so the guest's serial port never stalls on an unread socket;
//! 2. writes each input, in order, with a deadline (a guest that does not
//!    read cannot block an API call for long);
//! 3. ends when QEMU closes the socket (the VM stopped or restarted); the
//!    next input then connects again.
//!
//! Concurrent inputs to one VM are serialized by the task's queue; inputs to
//! different VMs are independent.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use vdc_types::api::ConsoleInputRequest;
use vdc_types::ApiError;

use crate::agent::Agent;
use crate::console_log::{ConsoleLog, ConsoleRange};
use crate::error::host_error;

/// How long connecting to the console socket may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one input may wait for the guest to take it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Inputs queued per VM before callers wait.
const QUEUE_DEPTH: usize = 16;

/// Why console input failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConsoleError {
    /// The console socket cannot be reached.
    #[error("cannot connect to the console socket {path}")]
    Connect {
        /// The socket.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Writing to the console socket failed.
    #[error("cannot write to the console socket")]
    Write(#[source] std::io::Error),
    /// The guest did not take the input in time.
    #[error("the guest did not take the console input within {0:?} (is it paused or hung?)")]
    Timeout(Duration),
}

/// One input waiting for its connection task.
struct Input {
    data: Vec<u8>,
    done: oneshot::Sender<Result<(), ConsoleError>>,
}

/// The agent's console connections, one per VM that received input.
#[derive(Default)]
pub(crate) struct ConsoleLinks {
    links: Mutex<HashMap<String, mpsc::Sender<Input>>>,
    /// Held while connecting, so that concurrent first inputs share one
    /// connection (a second one would wait in QEMU's backlog).
    connecting: tokio::sync::Mutex<()>,
}

impl ConsoleLinks {
    fn links(&self) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::Sender<Input>>> {
        self.links.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops VM `id`'s connection (the VM is forgotten).
    pub fn forget(&self, id: &str) {
        self.links().remove(id);
    }

    /// Writes `data` to VM `id`'s console socket `socket`, connecting if
    /// there is no live connection. A connection found dead (QEMU
    /// restarted) is replaced once.
    pub async fn write(&self, id: &str, socket: &Path, data: &[u8]) -> Result<(), ConsoleError> {
        let mut retried = false;
        loop {
            let sender = self.sender(id, socket).await?;
            let (done, answer) = oneshot::channel();
            let input = Input {
                data: data.to_vec(),
                done,
            };
            let result = match sender.send(input).await {
                Ok(()) => match answer.await {
                    Ok(r) => r,
                    // The task ended mid-write: QEMU closed the socket.
                    Err(_) => Err(ConsoleError::Write(std::io::Error::from(
                        std::io::ErrorKind::BrokenPipe,
                    ))),
                },
                Err(_) => Err(ConsoleError::Write(std::io::Error::from(
                    std::io::ErrorKind::BrokenPipe,
                ))),
            };
            match result {
                Err(ConsoleError::Write(_)) if !retried => {
                    retried = true;
                    self.drop_if_same(id, &sender);
                }
                other => return other,
            }
        }
    }

    fn drop_if_same(&self, id: &str, sender: &mpsc::Sender<Input>) {
        let mut links = self.links();
        if links.get(id).is_some_and(|s| s.same_channel(sender)) {
            links.remove(id);
        }
    }

    /// The live connection of `id`, or a new one.
    async fn sender(&self, id: &str, socket: &Path) -> Result<mpsc::Sender<Input>, ConsoleError> {
        if let Some(s) = self.live(id) {
            return Ok(s);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(s) = self.live(id) {
            return Ok(s);
        }
        let connect_err = |source| ConsoleError::Connect {
            path: socket.display().to_string(),
            source,
        };
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, UnixStream::connect(socket))
            .await
            .map_err(|_| connect_err(std::io::ErrorKind::TimedOut.into()))?
            .map_err(connect_err)?;
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(run_link(stream, rx, id.to_string()));
        self.links().insert(id.to_string(), tx.clone());
        Ok(tx)
    }

    /// The connection of `id` if its task still runs.
    fn live(&self, id: &str) -> Option<mpsc::Sender<Input>> {
        self.links().get(id).filter(|s| !s.is_closed()).cloned()
    }
}

/// One connection: drain the output, write the inputs, until either side
/// ends.
async fn run_link(stream: UnixStream, mut inputs: mpsc::Receiver<Input>, id: String) {
    let (mut reader, mut writer) = stream.into_split();
    let drain = async {
        let mut buf = [0u8; 4096];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    let write = async {
        while let Some(input) = inputs.recv().await {
            let result =
                match tokio::time::timeout(WRITE_TIMEOUT, writer.write_all(&input.data)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(ConsoleError::Write(e)),
                    Err(_) => Err(ConsoleError::Timeout(WRITE_TIMEOUT)),
                };
            let failed = result.is_err();
            let _ = input.done.send(result);
            if failed {
                break;
            }
        }
    };
    tokio::select! {
        _ = drain => tracing::debug!(vm = %id, "console socket closed by QEMU"),
        _ = write => tracing::debug!(vm = %id, "console connection ended"),
    }
}

impl Agent {
    /// `GET /vms/{id}/console`: bytes of `console.log` and the offset just
    /// past them.
    pub fn console_read(&self, id: &str, range: ConsoleRange) -> Result<(Vec<u8>, u64), ApiError> {
        let slot = self.slot(id)?;
        let config = slot.inner().config.clone();
        let layout = self.layout(&config)?;
        ConsoleLog::new(layout.vm_dir.console_log())
            .read(range)
            .map_err(|e| host_error("cannot read console.log", &e))
    }

    /// `POST /vms/{id}/console/input`: types `req.data` on the VM's serial
    /// console. The VM must have a process.
    pub async fn console_input(&self, id: &str, req: &ConsoleInputRequest) -> Result<(), ApiError> {
        req.validate().map_err(ApiError::invalid)?;
        let slot = self.slot(id)?;
        let state = slot.state();
        let name = slot.inner().config.name.clone();
        if !state.has_process() || slot.vm().is_none() {
            return Err(ApiError::invalid_state(format!(
                "VM '{name}' is {state}: its serial console takes input only while it runs; start it first"
            )));
        }
        let socket = vdc_qemu::VmPaths::new(self.run_dir(id), Path::new("")).console_socket();
        self.consoles
            .write(id, &socket, req.data.as_bytes())
            .await
            .map_err(|e| host_error(format!("cannot type on the console of VM '{name}'"), &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn input_reaches_the_socket_over_one_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let links = Arc::new(ConsoleLinks::default());
        // Two writes, concurrently: both arrive, over one connection.
        let (a, b) = tokio::join!(
            links.write("vm1", &path, b"first\n"),
            links.write("vm1", &path, b"second\n")
        );
        a.unwrap();
        b.unwrap();
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut got = vec![0u8; 13];
        conn.read_exact(&mut got).await.unwrap();
        let got = String::from_utf8(got).unwrap();
        assert!(got.contains("first\n") && got.contains("second\n"), "{got}");
        // The server (QEMU) goes away and comes back: the next input
        // reconnects.
        drop(conn);
        drop(listener);
        std::fs::remove_file(&path).unwrap();
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let accept = tokio::spawn(async move {
            let (mut c, _) = listener.accept().await.unwrap();
            let mut got = vec![0u8; 6];
            c.read_exact(&mut got).await.unwrap();
            got
        });
        // Let the old connection's task see the hang-up or not: either way
        // the write must land on the new server.
        links.write("vm1", &path, b"third\n").await.unwrap();
        assert_eq!(accept.await.unwrap(), b"third\n");
    }

    #[tokio::test]
    async fn a_missing_socket_is_a_connect_error() {
        let dir = tempfile::tempdir().unwrap();
        let links = ConsoleLinks::default();
        let err = links
            .write("vm1", &dir.path().join("none.sock"), b"x")
            .await
            .unwrap_err();
        assert!(matches!(err, ConsoleError::Connect { .. }), "{err}");
    }
}
