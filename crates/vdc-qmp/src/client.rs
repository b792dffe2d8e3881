//! The QMP connection: handshake, id-matched calls and the event stream.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, oneshot, watch};
use tokio::task::JoinHandle;

use crate::error::QmpError;
use crate::types::{MigrationInfo, QmpEvent, QmpVersion, StatusInfo};

/// How long [`Qmp::execute`] waits for an answer unless told otherwise
/// ([`Qmp::set_default_timeout`], [`Qmp::execute_timeout`]).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest QMP message (one line of JSON) read; a peer sending a longer one
/// is disconnected ([`QmpError::TooLarge`]).
pub const MAX_MESSAGE: usize = 1 << 20;

/// Events kept for a subscriber that falls behind.
const EVENT_BUFFER: usize = 256;

type Reply = Result<Value, QmpError>;

/// Calls waiting for their answer, and whether the connection is gone.
#[derive(Default)]
struct Pending {
    calls: HashMap<u64, oneshot::Sender<Reply>>,
    closed: bool,
}

/// State shared by the callers and the reader task.
struct Shared {
    pending: Mutex<Pending>,
    events: broadcast::Sender<QmpEvent>,
    closed: watch::Sender<bool>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        // A poisoned lock only means a caller panicked while holding it; the
        // map itself is still consistent.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the connection closed and fails every pending call.
    fn close(&self) {
        let calls = {
            let mut p = self.lock();
            p.closed = true;
            std::mem::take(&mut p.calls)
        };
        for (_, tx) in calls {
            let _ = tx.send(Err(QmpError::Disconnected));
        }
        self.closed.send_replace(true);
    }

    /// Dispatches one line from QEMU: an event, or the answer to a call.
    fn dispatch(&self, line: &str) {
        let line = line.trim();
        if line.is_empty() {
            return;
        }
        let msg: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring a QMP line that is not JSON");
                return;
            }
        };
        if msg.get("event").is_some() {
            if let Some(ev) = QmpEvent::from_message(&msg) {
                tracing::debug!(event = %ev.name, "QMP event");
                // No subscriber is not an error.
                let _ = self.events.send(ev);
            }
            return;
        }
        let Some(id) = msg.get("id").and_then(Value::as_u64) else {
            tracing::warn!(message = %line, "ignoring a QMP message without our id");
            return;
        };
        let reply = if let Some(ret) = msg.get("return") {
            Ok(ret.clone())
        } else if let Some(err) = msg.get("error") {
            Err(command_error(err))
        } else {
            Err(QmpError::Protocol(
                "reply has neither return nor error".into(),
            ))
        };
        let waiter = self.lock().calls.remove(&id);
        if let Some(tx) = waiter {
            let _ = tx.send(reply);
        }
    }
}

fn command_error(err: &Value) -> QmpError {
    QmpError::Command {
        class: err
            .get("class")
            .and_then(Value::as_str)
            .unwrap_or("GenericError")
            .to_string(),
        desc: err
            .get("desc")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
    }
}

struct Inner {
    shared: Arc<Shared>,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    next_id: AtomicU64,
    timeout_ms: AtomicU64,
    version: QmpVersion,
    reader: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The reader owns the read half; stopping it closes the socket, which
        // lets another client (an agent restarted later) connect.
        self.reader.abort();
    }
}

/// A QMP connection to one QEMU process. Cheap to clone; all clones share
/// the connection, which closes when the last clone is dropped.
#[derive(Clone)]
pub struct Qmp {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Qmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qmp")
            .field("version", &self.inner.version)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Qmp {
    /// Connects to the QMP socket at `path`, reads the greeting and leaves
    /// capabilities-negotiation mode.
    pub async fn connect(path: &Path) -> Result<Qmp, QmpError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| QmpError::Connect {
                path: path.to_path_buf(),
                source,
            })?;
        Qmp::from_stream(stream).await
    }

    /// Runs the handshake on an already connected stream.
    pub async fn from_stream(stream: UnixStream) -> Result<Qmp, QmpError> {
        let (read, mut write) = stream.into_split();
        let mut reader = BufReader::new(read);
        let version = tokio::time::timeout(DEFAULT_TIMEOUT, handshake(&mut reader, &mut write))
            .await
            .map_err(|_| QmpError::Timeout {
                command: "qmp_capabilities".into(),
                after: DEFAULT_TIMEOUT,
            })??;

        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let (closed, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            events,
            closed,
        });
        let reader = tokio::spawn(read_loop(reader, Arc::clone(&shared)));
        Ok(Qmp {
            inner: Arc::new(Inner {
                shared,
                writer: tokio::sync::Mutex::new(write),
                next_id: AtomicU64::new(1),
                timeout_ms: AtomicU64::new(DEFAULT_TIMEOUT.as_millis() as u64),
                version,
                reader,
            }),
        })
    }

    /// QEMU's version, from the greeting.
    pub fn version(&self) -> QmpVersion {
        self.inner.version
    }

    /// Changes the timeout [`Qmp::execute`] uses (for all clones).
    pub fn set_default_timeout(&self, timeout: Duration) {
        self.inner
            .timeout_ms
            .store(timeout.as_millis() as u64, Ordering::Relaxed);
    }

    /// Receives every event QEMU sends from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<QmpEvent> {
        self.inner.shared.events.subscribe()
    }

    /// Whether the connection is gone.
    pub fn is_closed(&self) -> bool {
        *self.inner.shared.closed.borrow()
    }

    /// Resolves once the connection is gone (at once if it already is).
    pub async fn closed(&self) {
        let mut rx = self.inner.shared.closed.subscribe();
        // The sender lives in `self`, so this cannot fail while we wait.
        let _ = rx.wait_for(|closed| *closed).await;
    }

    /// Runs `command` with `arguments` (`Value::Null` for none) and returns
    /// the `return` member of the answer. Waits at most the default timeout.
    pub async fn execute(&self, command: &str, arguments: Value) -> Result<Value, QmpError> {
        let timeout = Duration::from_millis(self.inner.timeout_ms.load(Ordering::Relaxed));
        self.execute_timeout(command, arguments, timeout).await
    }

    /// Like [`Qmp::execute`] with an explicit timeout.
    pub async fn execute_timeout(
        &self,
        command: &str,
        arguments: Value,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({ "execute": command, "id": id });
        if !arguments.is_null() {
            msg["arguments"] = arguments;
        }
        let mut line = serde_json::to_string(&msg).map_err(QmpError::Json)?;
        line.push('\n');

        let (tx, rx) = oneshot::channel();
        {
            let mut p = self.inner.shared.lock();
            if p.closed {
                return Err(QmpError::Disconnected);
            }
            p.calls.insert(id, tx);
        }
        let written = {
            let mut w = self.inner.writer.lock().await;
            match w.write_all(line.as_bytes()).await {
                Ok(()) => w.flush().await,
                Err(e) => Err(e),
            }
        };
        if let Err(e) = written {
            self.inner.shared.lock().calls.remove(&id);
            return Err(QmpError::Io(e));
        }
        tracing::debug!(command, id, "QMP command sent");
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(QmpError::Disconnected),
            Err(_) => {
                self.inner.shared.lock().calls.remove(&id);
                Err(QmpError::Timeout {
                    command: command.to_string(),
                    after: timeout,
                })
            }
        }
    }

    /// `query-status`: whether the vCPUs run and QEMU's run state.
    pub async fn query_status(&self) -> Result<StatusInfo, QmpError> {
        let v = self.execute("query-status", Value::Null).await?;
        serde_json::from_value(v).map_err(QmpError::Json)
    }

    /// `stop`: pauses the vCPUs (emits `STOP`).
    pub async fn stop(&self) -> Result<(), QmpError> {
        self.execute("stop", Value::Null).await.map(drop)
    }

    /// `cont`: resumes the vCPUs (emits `RESUME`).
    pub async fn cont(&self) -> Result<(), QmpError> {
        self.execute("cont", Value::Null).await.map(drop)
    }

    /// `system_powerdown`: presses the ACPI power button (emits `POWERDOWN`).
    pub async fn system_powerdown(&self) -> Result<(), QmpError> {
        self.execute("system_powerdown", Value::Null)
            .await
            .map(drop)
    }

    /// `system_reset`: resets the machine (emits `RESET`).
    pub async fn system_reset(&self) -> Result<(), QmpError> {
        self.execute("system_reset", Value::Null).await.map(drop)
    }

    /// `quit`: makes QEMU exit at once. A connection that closes before the
    /// answer arrives counts as success, since that is what `quit` does.
    pub async fn quit(&self) -> Result<(), QmpError> {
        match self.execute("quit", Value::Null).await {
            Ok(_) | Err(QmpError::Disconnected) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `migrate-set-capabilities` with `(name, state)` pairs.
    pub async fn migrate_set_capabilities(&self, caps: &[(&str, bool)]) -> Result<(), QmpError> {
        let list: Vec<Value> = caps
            .iter()
            .map(|(name, state)| json!({ "capability": name, "state": state }))
            .collect();
        self.execute("migrate-set-capabilities", json!({ "capabilities": list }))
            .await
            .map(drop)
    }

    /// `migrate`: starts an outgoing migration to `uri` (`tcp:…`, `file:…`).
    pub async fn migrate(&self, uri: &str) -> Result<(), QmpError> {
        self.execute("migrate", json!({ "uri": uri }))
            .await
            .map(drop)
    }

    /// `migrate-incoming`: starts accepting a migration from `uri` on a QEMU
    /// started with `-incoming defer`.
    pub async fn migrate_incoming(&self, uri: &str) -> Result<(), QmpError> {
        self.execute("migrate-incoming", json!({ "uri": uri }))
            .await
            .map(drop)
    }

    /// `migrate-set-parameters` with `params` (a JSON object of QEMU's
    /// parameter names); allowed while a migration runs.
    pub async fn migrate_set_parameters(&self, params: Value) -> Result<(), QmpError> {
        self.execute("migrate-set-parameters", params)
            .await
            .map(drop)
    }

    /// `migrate-continue`: lets a migration paused in `state` (with the
    /// `pause-before-switchover` capability: `pre-switchover`) go on.
    pub async fn migrate_continue(&self, state: &str) -> Result<(), QmpError> {
        self.execute("migrate-continue", json!({ "state": state }))
            .await
            .map(drop)
    }

    /// `migrate-start-postcopy`: switches a running pre-copy migration to
    /// post-copy (needs `postcopy-ram` on both sides).
    pub async fn migrate_start_postcopy(&self) -> Result<(), QmpError> {
        self.execute("migrate-start-postcopy", Value::Null)
            .await
            .map(drop)
    }

    /// `migrate_cancel`: cancels an outgoing migration.
    pub async fn migrate_cancel(&self) -> Result<(), QmpError> {
        self.execute("migrate_cancel", Value::Null).await.map(drop)
    }

    /// `query-migrate`: state and statistics of the current migration.
    pub async fn query_migrate(&self) -> Result<MigrationInfo, QmpError> {
        let v = self.execute("query-migrate", Value::Null).await?;
        serde_json::from_value(v).map_err(QmpError::Json)
    }
}

/// Reads the greeting and negotiates capabilities (none are enabled).
async fn handshake(
    reader: &mut BufReader<OwnedReadHalf>,
    writer: &mut OwnedWriteHalf,
) -> Result<QmpVersion, QmpError> {
    let greeting = read_message(reader).await?;
    let v = greeting
        .get("QMP")
        .and_then(|q| q.get("version"))
        .and_then(|v| v.get("qemu"))
        .ok_or_else(|| QmpError::Protocol("first message is not a QMP greeting".into()))?;
    let part = |name: &str| v.get(name).and_then(Value::as_u64).unwrap_or(0) as u32;
    let version = QmpVersion {
        major: part("major"),
        minor: part("minor"),
        micro: part("micro"),
    };
    writer
        .write_all(b"{\"execute\":\"qmp_capabilities\",\"id\":0}\n")
        .await
        .map_err(QmpError::Io)?;
    writer.flush().await.map_err(QmpError::Io)?;
    loop {
        let msg = read_message(reader).await?;
        if msg.get("event").is_some() {
            continue;
        }
        if msg.get("return").is_some() {
            return Ok(version);
        }
        if let Some(err) = msg.get("error") {
            return Err(command_error(err));
        }
        return Err(QmpError::Protocol(
            "unexpected answer to qmp_capabilities".into(),
        ));
    }
}

/// Reads one line into `line` (newline kept), holding at most `max` bytes:
/// `Ok(false)` at end of stream, [`QmpError::TooLarge`] once the line grows
/// past `max`.
async fn read_line_bounded<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
    max: usize,
) -> Result<bool, QmpError> {
    line.clear();
    loop {
        let available = reader.fill_buf().await.map_err(QmpError::Io)?;
        if available.is_empty() {
            return Ok(!line.is_empty());
        }
        let (take, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        if line.len() + take > max {
            return Err(QmpError::TooLarge { max });
        }
        line.extend_from_slice(&available[..take]);
        reader.consume(take);
        if done {
            return Ok(true);
        }
    }
}

async fn read_message(reader: &mut BufReader<OwnedReadHalf>) -> Result<Value, QmpError> {
    let mut line = Vec::new();
    loop {
        if !read_line_bounded(reader, &mut line, MAX_MESSAGE).await? {
            return Err(QmpError::Disconnected);
        }
        let text = String::from_utf8_lossy(&line);
        if !text.trim().is_empty() {
            return serde_json::from_str(text.trim()).map_err(QmpError::Json);
        }
    }
}

async fn read_loop(mut reader: BufReader<OwnedReadHalf>, shared: Arc<Shared>) {
    let mut line = Vec::new();
    loop {
        match read_line_bounded(&mut reader, &mut line, MAX_MESSAGE).await {
            Ok(false) => break,
            Ok(true) => shared.dispatch(&String::from_utf8_lossy(&line)),
            Err(e @ QmpError::TooLarge { .. }) => {
                tracing::warn!(error = %e, "disconnecting from QEMU's QMP socket");
                break;
            }
            Err(e) => {
                tracing::debug!(error = %e, "QMP read failed");
                break;
            }
        }
    }
    shared.close();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, BufReader};

    /// The QEMU end of a connection, driven by the test.
    struct FakeQemu {
        reader: BufReader<OwnedReadHalf>,
        writer: OwnedWriteHalf,
    }

    impl FakeQemu {
        async fn send(&mut self, v: Value) {
            let mut s = v.to_string();
            s.push('\n');
            self.writer.write_all(s.as_bytes()).await.expect("write");
        }

        async fn recv(&mut self) -> Value {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).await.expect("read");
            assert!(n > 0, "client closed the connection");
            serde_json::from_str(&line).expect("client sent JSON")
        }
    }

    /// Connects a client to a fake QEMU that greets as 10.0.2.
    async fn connected() -> (Qmp, FakeQemu) {
        let (client, server) = UnixStream::pair().expect("pair");
        let (r, w) = server.into_split();
        let mut fake = FakeQemu {
            reader: BufReader::new(r),
            writer: w,
        };
        let server = async move {
            fake.send(
                json!({"QMP": {"version": {"qemu": {"major": 10, "minor": 0, "micro": 2},
                "package": ""}, "capabilities": ["oob"]}}),
            )
            .await;
            let caps = fake.recv().await;
            assert_eq!(caps["execute"], "qmp_capabilities");
            fake.send(json!({"return": {}, "id": caps["id"]})).await;
            fake
        };
        let (qmp, fake) = tokio::join!(Qmp::from_stream(client), server);
        (qmp.expect("handshake"), fake)
    }

    #[tokio::test]
    async fn handshake_reads_version() {
        let (qmp, _fake) = connected().await;
        assert_eq!(qmp.version().to_string(), "10.0.2");
        assert!(!qmp.is_closed());
    }

    #[tokio::test]
    async fn handshake_rejects_non_qmp() {
        let (client, server) = UnixStream::pair().expect("pair");
        let (_r, mut w) = server.into_split();
        w.write_all(b"{\"hello\": 1}\n").await.expect("write");
        let err = Qmp::from_stream(client).await.expect_err("must fail");
        assert!(matches!(err, QmpError::Protocol(_)), "{err:?}");
    }

    #[tokio::test]
    async fn concurrent_calls_get_their_own_answers_and_events_are_broadcast() {
        let (qmp, mut fake) = connected().await;
        let mut events = qmp.subscribe();
        let a = tokio::spawn({
            let qmp = qmp.clone();
            async move { qmp.execute("query-status", Value::Null).await }
        });
        let first = fake.recv().await;
        let b = tokio::spawn({
            let qmp = qmp.clone();
            async move { qmp.execute("query-name", json!({"x": 1})).await }
        });
        let second = fake.recv().await;
        assert_eq!(second["arguments"]["x"], 1);
        assert!(first.get("arguments").is_none());
        assert_ne!(first["id"], second["id"]);
        // Answer in reverse order, with an event in between.
        fake.send(json!({"return": {"name": "vm"}, "id": second["id"]}))
            .await;
        fake.send(json!({"event": "STOP", "data": {"reason": "x"},
            "timestamp": {"seconds": 1, "microseconds": 2000}}))
            .await;
        fake.send(json!({"return": {"running": false, "status": "paused"}, "id": first["id"]}))
            .await;
        let b = b.await.expect("join").expect("answer");
        let a = a.await.expect("join").expect("answer");
        assert_eq!(b["name"], "vm");
        assert_eq!(a["status"], "paused");
        let ev = events.recv().await.expect("event");
        assert_eq!(ev.name, "STOP");
        assert_eq!(ev.data["reason"], "x");
        assert_eq!(ev.timestamp, 1002);
    }

    #[tokio::test]
    async fn errors_map_to_command_error() {
        let (qmp, mut fake) = connected().await;
        let call = tokio::spawn(async move { qmp.execute("nope", Value::Null).await });
        let req = fake.recv().await;
        fake.send(json!({"error": {"class": "CommandNotFound",
            "desc": "The command nope has not been found"}, "id": req["id"]}))
            .await;
        match call.await.expect("join") {
            Err(QmpError::Command { class, desc }) => {
                assert_eq!(class, "CommandNotFound");
                assert!(desc.contains("nope"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn connection_loss_fails_pending_calls() {
        let (qmp, mut fake) = connected().await;
        let call = tokio::spawn({
            let qmp = qmp.clone();
            async move { qmp.execute("query-status", Value::Null).await }
        });
        let _ = fake.recv().await;
        drop(fake);
        let res = call.await.expect("join");
        assert!(matches!(res, Err(QmpError::Disconnected)), "{res:?}");
        tokio::time::timeout(Duration::from_secs(5), qmp.closed())
            .await
            .expect("closed() resolves");
        assert!(qmp.is_closed());
        let later = qmp.execute("query-status", Value::Null).await;
        assert!(matches!(later, Err(QmpError::Disconnected)), "{later:?}");
    }

    /// A peer streaming an endless message is cut off at the cap: pending
    /// calls fail and the connection reports closed.
    #[tokio::test]
    async fn an_oversized_message_disconnects() {
        let (qmp, mut fake) = connected().await;
        let call = tokio::spawn({
            let qmp = qmp.clone();
            async move { qmp.execute("query-status", Value::Null).await }
        });
        let _ = fake.recv().await;
        let chunk = vec![b' '; 64 * 1024];
        let writer = tokio::spawn(async move {
            // Stops when the client hangs up.
            for _ in 0..(4 * MAX_MESSAGE / chunk.len()) {
                if fake.writer.write_all(&chunk).await.is_err() {
                    break;
                }
            }
        });
        let res = tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .expect("the call ends")
            .expect("join");
        assert!(matches!(res, Err(QmpError::Disconnected)), "{res:?}");
        tokio::time::timeout(Duration::from_secs(5), qmp.closed())
            .await
            .expect("closed() resolves");
        writer.abort();
    }

    #[tokio::test]
    async fn reads_lines_up_to_the_cap() {
        let data: &[u8] = b"{\"a\":1}\n0123456789\n";
        let mut r = BufReader::with_capacity(3, data);
        let mut line = Vec::new();
        assert!(read_line_bounded(&mut r, &mut line, 8).await.unwrap());
        assert_eq!(line, b"{\"a\":1}\n");
        assert!(matches!(
            read_line_bounded(&mut r, &mut line, 8).await,
            Err(QmpError::TooLarge { max: 8 })
        ));
    }

    #[tokio::test]
    async fn quit_counts_disconnect_as_success() {
        let (qmp, mut fake) = connected().await;
        let call = tokio::spawn({
            let qmp = qmp.clone();
            async move { qmp.quit().await }
        });
        let req = fake.recv().await;
        assert_eq!(req["execute"], "quit");
        drop(fake);
        call.await.expect("join").expect("quit succeeds");
    }

    #[tokio::test]
    async fn calls_time_out() {
        let (qmp, mut fake) = connected().await;
        let res = tokio::join!(
            qmp.execute_timeout("query-status", Value::Null, Duration::from_millis(100)),
            fake.recv()
        )
        .0;
        assert!(matches!(res, Err(QmpError::Timeout { .. })), "{res:?}");
        assert!(!qmp.is_closed());
    }

    #[tokio::test]
    async fn connect_over_a_socket_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("qmp.sock");
        let listener = tokio::net::UnixListener::bind(&path).expect("bind");
        let server = async move {
            let (s, _) = listener.accept().await.expect("accept");
            let (r, w) = s.into_split();
            let mut fake = FakeQemu {
                reader: BufReader::new(r),
                writer: w,
            };
            fake.send(json!({"QMP": {"version": {"qemu": {"major": 9, "minor": 2, "micro": 0}}}}))
                .await;
            let caps = fake.recv().await;
            fake.send(json!({"return": {}, "id": caps["id"]})).await;
            let req = fake.recv().await;
            fake.send(json!({"return": {"running": true, "status": "running"}, "id": req["id"]}))
                .await;
            fake
        };
        let client = async {
            let qmp = Qmp::connect(&path).await.expect("connect");
            let st = qmp.query_status().await.expect("status");
            (qmp, st)
        };
        let ((qmp, st), _fake) = tokio::join!(client, server);
        assert_eq!(qmp.version().to_string(), "9.2.0");
        assert!(st.running);
        assert_eq!(st.status, "running");
        let missing = Qmp::connect(&dir.path().join("none.sock")).await;
        assert!(matches!(missing, Err(QmpError::Connect { .. })));
    }
}
