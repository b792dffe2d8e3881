//! The guest channel: heartbeats the guest writes on its virtio-serial port
//! `org.vdc.guest.0`, which QEMU exposes as a unix socket
//! ([`VmPaths::guest_socket`]).
//!
//! The guest writes one line per second:
//! `vdc-guest v1 hb seq=N ready=1 hostname=H boot_id=B ip=A`.
//! A background task connects to the socket, parses each line into a
//! [`GuestInfo`] (with `last_heartbeat_ms` set to the time of arrival) and
//! publishes it through a `watch` channel. When the socket closes (QEMU
//! exited, was restarted for a resume) or is not there yet, the task
//! retries every half second, keeping the last information published. It
//! ends when every receiver is dropped.
//!
//! The guest is untrusted: lines are framed by a
//! [`LineFramer`](vdc_types::limits::LineFramer) that holds at most
//! [`MAX_LINE`] bytes, so a guest writing an endless line costs a fixed
//! amount of memory; such a line is dropped and reading resumes after its
//! newline.

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use vdc_types::limits::{Framed, LineFramer};
use vdc_types::GuestInfo;

use crate::spec::VmPaths;

/// Pause between connection attempts.
const RETRY: Duration = Duration::from_millis(500);
/// Longest heartbeat line accepted; longer lines are dropped.
pub const MAX_LINE: usize = 4096;
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 8192;

/// One parsed heartbeat line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// Lines written since the guest booted.
    pub seq: u64,
    /// The guest's services run.
    pub ready: bool,
    /// Hostname.
    pub hostname: Option<String>,
    /// Kernel boot id.
    pub boot_id: Option<String>,
    /// Address of the first NIC, if configured.
    pub ip: Option<String>,
}

/// Parses a `vdc-guest v1 hb …` line; `None` for anything else.
pub fn parse_heartbeat(line: &str) -> Option<Heartbeat> {
    let mut words = line.split_whitespace();
    if words.next()? != "vdc-guest" || words.next()? != "v1" || words.next()? != "hb" {
        return None;
    }
    let mut hb = Heartbeat {
        seq: 0,
        ready: false,
        hostname: None,
        boot_id: None,
        ip: None,
    };
    let mut has_seq = false;
    for word in words {
        let Some((key, value)) = word.split_once('=') else {
            continue;
        };
        let text = (!value.is_empty()).then(|| value.to_string());
        match key {
            "seq" => {
                hb.seq = value.parse().ok()?;
                has_seq = true;
            }
            "ready" => hb.ready = value == "1",
            "hostname" => hb.hostname = text,
            "boot_id" => hb.boot_id = text,
            "ip" => hb.ip = text,
            _ => {}
        }
    }
    has_seq.then_some(hb)
}

impl Heartbeat {
    /// Folds this heartbeat into `info`, received at `now_ms`.
    pub fn apply(&self, info: &mut GuestInfo, now_ms: u64) {
        info.ready = self.ready;
        info.hostname = self.hostname.clone();
        info.address = self.ip.clone();
        info.boot_id = self.boot_id.clone();
        info.last_heartbeat_ms = Some(now_ms);
    }
}

/// A running guest-channel reader; stops when dropped.
#[derive(Debug)]
pub struct GuestChannel {
    info: watch::Receiver<GuestInfo>,
    seq: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

impl GuestChannel {
    /// Starts reading the guest channel of the VM at `paths`.
    pub fn spawn(paths: &VmPaths) -> GuestChannel {
        let (info_tx, info) = watch::channel(GuestInfo::default());
        let (seq_tx, seq) = watch::channel(0);
        let task = tokio::spawn(run(paths.guest_socket(), info_tx, Some(seq_tx)));
        GuestChannel { info, seq, task }
    }

    /// What the guest last reported.
    pub fn info(&self) -> GuestInfo {
        self.info.borrow().clone()
    }

    /// A receiver of every update.
    pub fn subscribe(&self) -> watch::Receiver<GuestInfo> {
        self.info.clone()
    }

    /// The `seq` of the last heartbeat (0 before the first): it counts up
    /// while the guest runs and restarts on a guest reboot.
    pub fn seq(&self) -> watch::Receiver<u64> {
        self.seq.clone()
    }
}

impl Drop for GuestChannel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts reading the guest channel of the VM at `paths`; the task ends
/// when the receiver (and all its clones) is dropped.
pub fn spawn_guest_channel(paths: &VmPaths) -> (watch::Receiver<GuestInfo>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(GuestInfo::default());
    let task = tokio::spawn(run(paths.guest_socket(), tx, None));
    (rx, task)
}

async fn run(
    socket: std::path::PathBuf,
    info: watch::Sender<GuestInfo>,
    seq: Option<watch::Sender<u64>>,
) {
    loop {
        let stream = tokio::select! {
            s = UnixStream::connect(&socket) => s,
            _ = info.closed() => return,
        };
        match stream {
            Ok(mut stream) => {
                tracing::debug!(socket = %socket.display(), "guest channel connected");
                let mut framer = LineFramer::new(MAX_LINE);
                let mut chunk = vec![0u8; READ_CHUNK];
                let mut framed = Vec::new();
                loop {
                    let n = tokio::select! {
                        n = stream.read(&mut chunk) => n,
                        _ = info.closed() => return,
                    };
                    let n = match n {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    framer.push(&chunk[..n], &mut framed);
                    for f in framed.drain(..) {
                        let Framed::Line(line) = f else {
                            tracing::debug!(socket = %socket.display(), max = MAX_LINE, "guest wrote an overlong line; dropped");
                            continue;
                        };
                        if let Some(hb) = parse_heartbeat(&String::from_utf8_lossy(&line)) {
                            let now = vdc_types::now_ms();
                            info.send_modify(|g| hb.apply(g, now));
                            if let Some(seq) = &seq {
                                seq.send_replace(hb.seq);
                            }
                        }
                    }
                }
                tracing::debug!(socket = %socket.display(), "guest channel closed");
            }
            Err(e) => {
                tracing::trace!(socket = %socket.display(), error = %e, "guest channel not available");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = info.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn parses_heartbeats() {
        let hb = parse_heartbeat(
            "vdc-guest v1 hb seq=42 ready=1 hostname=web-1 boot_id=3f2a-11 ip=10.77.0.100",
        )
        .expect("heartbeat");
        assert_eq!(hb.seq, 42);
        assert!(hb.ready);
        assert_eq!(hb.hostname.as_deref(), Some("web-1"));
        assert_eq!(hb.boot_id.as_deref(), Some("3f2a-11"));
        assert_eq!(hb.ip.as_deref(), Some("10.77.0.100"));

        let bare = parse_heartbeat("vdc-guest v1 hb seq=1 ready=0 hostname= boot_id=b ip=")
            .expect("heartbeat");
        assert!(!bare.ready);
        assert_eq!(bare.hostname, None);
        assert_eq!(bare.ip, None);

        assert_eq!(parse_heartbeat("vdc-guest v2 hb seq=1"), None);
        assert_eq!(parse_heartbeat("vdc-guest v1 hb ready=1"), None);
        assert_eq!(parse_heartbeat("vdc-guest v1 hb seq=x"), None);
        assert_eq!(parse_heartbeat("VDC-GUEST-READY"), None);
        assert_eq!(parse_heartbeat(""), None);
    }

    /// A guest writing megabytes without a newline, then a heartbeat: the
    /// overlong line is dropped and the heartbeat after it still counts.
    #[tokio::test]
    async fn an_endless_line_is_dropped_and_reading_resumes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = VmPaths::new(dir.path(), dir.path());
        let listener = tokio::net::UnixListener::bind(paths.guest_socket()).expect("bind");
        let ch = GuestChannel::spawn(&paths);
        let mut rx = ch.subscribe();
        let (mut s, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
            .await
            .expect("channel connects")
            .expect("accept");
        let junk = vec![b'x'; 64 * 1024];
        for _ in 0..64 {
            s.write_all(&junk).await.expect("write");
        }
        s.write_all(b"\nvdc-guest v1 hb seq=7 ready=1 hostname=after boot_id=b ip=\n")
            .await
            .expect("write");
        tokio::time::timeout(
            Duration::from_secs(10),
            rx.wait_for(|g| g.hostname.as_deref() == Some("after")),
        )
        .await
        .expect("heartbeat after the endless line published")
        .expect("channel alive");
        assert_eq!(*ch.seq().borrow(), 7);
    }

    #[tokio::test]
    async fn publishes_and_reconnects() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = VmPaths::new(dir.path(), dir.path());
        // The channel starts before the socket exists, as with a VM booting.
        let ch = GuestChannel::spawn(&paths);
        let mut rx = ch.subscribe();
        for round in 1..=2u64 {
            let listener = tokio::net::UnixListener::bind(paths.guest_socket()).expect("bind");
            let (mut s, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
                .await
                .expect("channel connects")
                .expect("accept");
            let line = format!(
                "noise\nvdc-guest v1 hb seq={round} ready=1 hostname=h{round} boot_id=b ip=\n"
            );
            s.write_all(line.as_bytes()).await.expect("write");
            let info = tokio::time::timeout(
                Duration::from_secs(5),
                rx.wait_for(|g| g.hostname.as_deref() == Some(&format!("h{round}"))),
            )
            .await
            .expect("heartbeat published")
            .expect("channel alive")
            .clone();
            assert!(info.ready);
            assert_eq!(info.boot_id.as_deref(), Some("b"));
            assert!(info.last_heartbeat_ms.is_some());
            assert_eq!(*ch.seq().borrow(), round);
            drop(s);
            drop(listener);
            std::fs::remove_file(paths.guest_socket()).expect("remove socket");
        }
    }
}
