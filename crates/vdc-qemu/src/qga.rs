//! The QEMU guest agent channel (QGA): quiesce the guest's file systems
//! around a snapshot or a backup, and tell a guest a new identity.
//!
//! The VM's virtio-serial port `org.qemu.guest_agent.0` is a unix socket on
//! the host ([`crate::VmPaths::guest_agent_socket`], present where
//! [`crate::MachineSpec::guest_agent`]). A guest agent (QEMU's own, or the
//! vdc guest image's `vdc-qga`) answers JSON commands on it. Nothing in the
//! guest has to answer: a guest without an agent, or one that is busy,
//! simply never replies, so every exchange has a deadline and "no answer"
//! is an ordinary outcome ([`Quiesce::CrashConsistent`]), not a failure of
//! the snapshot.
//!
//! Each exchange opens its own connection and starts with
//! `guest-sync-delimited` (a random id; everything before the 0xFF
//! delimiter and any reply with another id is stale and skipped), so a
//! reply left over from an earlier, abandoned exchange is never taken for
//! this one's.
//!
//! For snapshots and backups: [`freeze`] then, whatever happened,
//! [`thaw`]. The guest image's agent thaws by itself 10 s after a freeze
//! that was never followed by a thaw.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// How long [`freeze`] and [`thaw`] wait for the guest by default: a
/// guest that has not answered by then is treated as having no agent.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(1500);

/// What went wrong talking to the guest agent.
#[derive(Debug, thiserror::Error)]
pub enum QgaError {
    /// The socket could not be reached (no such VM process, or a VM
    /// without the channel).
    #[error("cannot connect to the guest agent socket")]
    Connect(#[source] std::io::Error),
    /// Reading or writing the socket failed.
    #[error("guest agent channel failed")]
    Io(#[source] std::io::Error),
    /// The guest did not answer in time.
    #[error("the guest agent did not answer within {0:?}")]
    Timeout(Duration),
    /// The guest answered with an error.
    #[error("the guest agent refused {command}: {class}: {desc}")]
    Refused {
        /// Command sent.
        command: String,
        /// QGA error class.
        class: String,
        /// QGA error text.
        desc: String,
    },
    /// The guest answered something that is not QGA.
    #[error("the guest agent answered {0:?}")]
    Malformed(String),
}

/// How a snapshot (or backup) saw the guest's file systems.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Quiesce {
    /// The guest agent froze this many file systems: they are consistent.
    Quiesced {
        /// File systems frozen.
        frozen: u64,
    },
    /// No agent answered (or it could not freeze): the image is what a
    /// power cut would leave, which journaling file systems recover from.
    CrashConsistent {
        /// Why the guest was not quiesced.
        reason: String,
    },
}

impl Quiesce {
    /// Whether the guest's file systems were frozen.
    pub fn is_quiesced(&self) -> bool {
        matches!(self, Quiesce::Quiesced { .. })
    }
}

/// One connection to a guest agent.
pub struct GuestAgent {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
    timeout: Duration,
}

impl GuestAgent {
    /// Connects to the agent at `socket` and synchronises with it
    /// (`guest-sync-delimited`), each step within `timeout`.
    pub async fn connect(socket: &Path, timeout: Duration) -> Result<GuestAgent, QgaError> {
        let stream = tokio::time::timeout(timeout, UnixStream::connect(socket))
            .await
            .map_err(|_| QgaError::Timeout(timeout))?
            .map_err(QgaError::Connect)?;
        let (r, w) = stream.into_split();
        let mut agent = GuestAgent {
            reader: BufReader::new(r),
            writer: w,
            timeout,
        };
        tokio::time::timeout(timeout, agent.sync())
            .await
            .map_err(|_| QgaError::Timeout(timeout))??;
        Ok(agent)
    }

    async fn sync(&mut self) -> Result<(), QgaError> {
        let id: u32 = rand_id();
        // A leading 0xFF makes the agent drop any half-read request.
        let mut msg = vec![0xffu8];
        msg.extend_from_slice(
            json!({"execute": "guest-sync-delimited", "arguments": {"id": id}})
                .to_string()
                .as_bytes(),
        );
        msg.push(b'\n');
        self.writer.write_all(&msg).await.map_err(QgaError::Io)?;
        loop {
            // Skip up to the delimiter, then read one reply.
            let mut skipped = Vec::new();
            let n = self
                .reader
                .read_until(0xff, &mut skipped)
                .await
                .map_err(QgaError::Io)?;
            if n == 0 {
                return Err(QgaError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            let reply = self.read_reply().await?;
            if reply.get("return").and_then(Value::as_u64) == Some(u64::from(id)) {
                return Ok(());
            }
        }
    }

    async fn read_reply(&mut self) -> Result<Value, QgaError> {
        loop {
            let mut raw = Vec::new();
            let n = self
                .reader
                .read_until(b'\n', &mut raw)
                .await
                .map_err(QgaError::Io)?;
            if n == 0 {
                return Err(QgaError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            let line = String::from_utf8_lossy(&raw);
            let text = line.trim_matches(|c: char| c.is_whitespace() || c == '\u{fffd}');
            if text.is_empty() {
                continue;
            }
            return serde_json::from_str(text).map_err(|_| QgaError::Malformed(text.to_string()));
        }
    }

    /// Runs `command` with `arguments` and returns its `return` value.
    pub async fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, QgaError> {
        let timeout = self.timeout;
        tokio::time::timeout(timeout, async {
            let mut req = json!({ "execute": command });
            if !arguments.is_null() {
                req["arguments"] = arguments;
            }
            let mut msg = req.to_string().into_bytes();
            msg.push(b'\n');
            self.writer.write_all(&msg).await.map_err(QgaError::Io)?;
            let reply = self.read_reply().await?;
            if let Some(ret) = reply.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = reply.get("error") {
                return Err(QgaError::Refused {
                    command: command.to_string(),
                    class: err["class"].as_str().unwrap_or("").to_string(),
                    desc: err["desc"].as_str().unwrap_or("").to_string(),
                });
            }
            Err(QgaError::Malformed(reply.to_string()))
        })
        .await
        .map_err(|_| QgaError::Timeout(timeout))?
    }

    /// `guest-ping`.
    pub async fn ping(&mut self) -> Result<(), QgaError> {
        self.execute("guest-ping", Value::Null).await.map(|_| ())
    }

    /// `guest-fsfreeze-freeze`: the number of file systems frozen.
    pub async fn fsfreeze_freeze(&mut self) -> Result<u64, QgaError> {
        let v = self.execute("guest-fsfreeze-freeze", Value::Null).await?;
        v.as_u64().ok_or_else(|| QgaError::Malformed(v.to_string()))
    }

    /// `guest-fsfreeze-thaw`: the number of file systems thawed.
    pub async fn fsfreeze_thaw(&mut self) -> Result<u64, QgaError> {
        let v = self.execute("guest-fsfreeze-thaw", Value::Null).await?;
        v.as_u64().ok_or_else(|| QgaError::Malformed(v.to_string()))
    }

    /// `guest-fsfreeze-status`: `"thawed"` or `"frozen"`.
    pub async fn fsfreeze_status(&mut self) -> Result<String, QgaError> {
        let v = self.execute("guest-fsfreeze-status", Value::Null).await?;
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| QgaError::Malformed(v.to_string()))
    }

    /// `vdc-set-identity` (vdc guest image only): new hostname, address
    /// (`ADDR/PREFIX`), gateway and MAC for `eth0`; `None` leaves a value
    /// as it is.
    pub async fn set_identity(&mut self, identity: &GuestIdentity) -> Result<(), QgaError> {
        let args = json!({
            "hostname": identity.hostname.as_deref().unwrap_or(""),
            "ip": identity.address.as_deref().unwrap_or(""),
            "gw": identity.gateway.as_deref().unwrap_or(""),
            "mac": identity.mac.as_deref().unwrap_or(""),
        });
        self.execute("vdc-set-identity", args).await.map(|_| ())
    }
}

/// The identity vdc gives a guest after an instant clone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestIdentity {
    /// Hostname.
    pub hostname: Option<String>,
    /// Address of `eth0`, `ADDR/PREFIX`.
    pub address: Option<String>,
    /// Default gateway.
    pub gateway: Option<String>,
    /// MAC address of `eth0`.
    pub mac: Option<String>,
}

/// Freezes the guest's file systems through the agent at `socket`,
/// waiting at most `timeout` ([`DEFAULT_TIMEOUT`] is a good value).
/// Never fails: a guest that does not answer, or cannot freeze, is
/// [`Quiesce::CrashConsistent`] with the reason. Call [`thaw`] afterwards
/// in every case.
pub async fn freeze(socket: &Path, timeout: Duration) -> Quiesce {
    let result = async {
        let mut agent = GuestAgent::connect(socket, timeout).await?;
        agent.fsfreeze_freeze().await
    }
    .await;
    match result {
        Ok(frozen) => Quiesce::Quiesced { frozen },
        Err(e) => Quiesce::CrashConsistent {
            reason: error_chain(&e),
        },
    }
}

/// Thaws the guest's file systems (after [`freeze`]): the number thawed.
pub async fn thaw(socket: &Path, timeout: Duration) -> Result<u64, QgaError> {
    let mut agent = GuestAgent::connect(socket, timeout).await?;
    agent.fsfreeze_thaw().await
}

fn error_chain(e: &QgaError) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn rand_id() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    (h.finish() & 0x7fff_ffff) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A fake agent for protocol tests: answers with stale bytes first.
    async fn serve(listener: tokio::net::UnixListener, freeze_reply: &'static str) {
        let (mut s, _) = listener.accept().await.expect("accept");
        let mut buf = vec![0u8; 4096];
        let mut seen = String::new();
        loop {
            let n = s.read(&mut buf).await.expect("read");
            if n == 0 {
                return;
            }
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            while let Some(end) = seen.find('\n') {
                let line: String = seen.drain(..=end).collect();
                let line = line.trim_start_matches('\u{fffd}');
                let v: Value = serde_json::from_str(line.trim()).expect("json");
                let reply = match v["execute"].as_str().unwrap_or("") {
                    "guest-sync-delimited" => {
                        let id = &v["arguments"]["id"];
                        // A stale reply of an earlier exchange, then ours.
                        format!("{{\"return\": 1}}\n\u{ff}{{\"return\": 7}}\n\u{ff}{{\"return\": {id}}}\n")
                    }
                    "guest-fsfreeze-freeze" => freeze_reply.to_string(),
                    "guest-fsfreeze-thaw" => "{\"return\": 1}\n".to_string(),
                    _ => "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"no\"}}\n"
                        .to_string(),
                };
                let bytes: Vec<u8> = reply
                    .chars()
                    .map(|c| if c == '\u{ff}' { 0xff } else { c as u8 })
                    .collect();
                s.write_all(&bytes).await.expect("write");
            }
        }
    }

    #[tokio::test]
    async fn freeze_skips_stale_replies_and_reports_quiesced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("qga.sock");
        let l = tokio::net::UnixListener::bind(&sock).expect("bind");
        tokio::spawn(serve(l, "{\"return\": 2}\n"));
        assert_eq!(
            freeze(&sock, Duration::from_secs(5)).await,
            Quiesce::Quiesced { frozen: 2 }
        );
    }

    #[tokio::test]
    async fn a_refusal_is_crash_consistent_with_the_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("qga.sock");
        let l = tokio::net::UnixListener::bind(&sock).expect("bind");
        tokio::spawn(serve(
            l,
            "{\"error\": {\"class\": \"GenericError\", \"desc\": \"cannot freeze /\"}}\n",
        ));
        match freeze(&sock, Duration::from_secs(5)).await {
            Quiesce::CrashConsistent { reason } => assert!(reason.contains("cannot freeze /")),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_silent_guest_is_crash_consistent_after_the_timeout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("qga.sock");
        let l = tokio::net::UnixListener::bind(&sock).expect("bind");
        // Accepts and never answers, like a guest without an agent.
        let _keep = tokio::spawn(async move {
            let (s, _) = l.accept().await.expect("accept");
            std::future::pending::<()>().await;
            drop(s);
        });
        match freeze(&sock, Duration::from_millis(200)).await {
            Quiesce::CrashConsistent { reason } => assert!(reason.contains("did not answer")),
            other => panic!("unexpected {other:?}"),
        }
        // No socket at all: also crash-consistent.
        let missing = dir.path().join("none.sock");
        assert!(!freeze(&missing, Duration::from_millis(200))
            .await
            .is_quiesced());
    }
}
