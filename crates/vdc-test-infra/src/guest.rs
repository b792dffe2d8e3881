//! Talking to a guest's TCP service from inside a host's network namespace.
//!
//! Guests live on a host's `vmbr0`. The test connects from the namespace
//! the test names, as a client on that host would: a dedicated thread
//! enters the namespace with `setns` (a namespace switch affects only the
//! calling thread, so the test's other threads stay where they are), then
//! uses an ordinary `TcpStream` with timeouts.
//!
//! Protocol (see the guest image docs): the guest answers one line on
//! connect and one line per line received.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use nix::sched::{setns, CloneFlags};

use crate::error::TestInfraError;

/// Default timeout of [`guest_request`] for connecting and for each answer.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects from namespace `netns` to `addr:port`, sends `lines` one by one
/// and returns every answer line: the greeting first, then one per line
/// sent.
pub fn guest_request(
    netns: &str,
    addr: &str,
    port: u16,
    lines: &[&str],
) -> Result<Vec<String>, TestInfraError> {
    guest_request_timeout(netns, addr, port, lines, DEFAULT_TIMEOUT)
}

/// [`guest_request`] with an explicit timeout for the connection and for
/// each answer.
pub fn guest_request_timeout(
    netns: &str,
    addr: &str,
    port: u16,
    lines: &[&str],
    timeout: Duration,
) -> Result<Vec<String>, TestInfraError> {
    let netns = netns.to_string();
    let target = format!("{addr}:{port}");
    let lines: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    std::thread::spawn(move || {
        enter_netns(&netns)?;
        exchange(&target, &lines, timeout)
    })
    .join()
    .map_err(|_| TestInfraError::Thread)?
}

fn enter_netns(netns: &str) -> Result<(), TestInfraError> {
    let err = |source| TestInfraError::Netns {
        netns: netns.to_string(),
        source,
    };
    let file = File::open(format!("/run/netns/{netns}")).map_err(err)?;
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| err(e.into()))
}

fn exchange(
    target: &str,
    lines: &[String],
    timeout: Duration,
) -> Result<Vec<String>, TestInfraError> {
    let io = |what| {
        let addr = target.to_string();
        move |source| TestInfraError::Guest { addr, what, source }
    };
    let sock: SocketAddr = target.parse().map_err(|_| TestInfraError::Guest {
        addr: target.to_string(),
        what: "parse address",
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })?;
    let stream = TcpStream::connect_timeout(&sock, timeout).map_err(io("connect"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(io("set timeout"))?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(io("set timeout"))?;
    let mut writer = stream.try_clone().map_err(io("clone socket"))?;
    let mut reader = BufReader::new(stream);
    let mut answers = Vec::with_capacity(lines.len() + 1);
    let mut read_line = |answers: &mut Vec<String>| -> Result<(), TestInfraError> {
        let mut line = String::new();
        let n = reader.read_line(&mut line).map_err(io("read"))?;
        if n == 0 {
            return Err(TestInfraError::GuestClosed(target.to_string()));
        }
        answers.push(line.trim_end_matches(['\r', '\n']).to_string());
        Ok(())
    };
    read_line(&mut answers)?;
    for l in lines {
        writer
            .write_all(format!("{l}\n").as_bytes())
            .map_err(io("write"))?;
        read_line(&mut answers)?;
    }
    Ok(answers)
}

/// Sends `bytes` bytes to the guest's `sink` command at `addr:port` from
/// namespace `netns` and returns how long they took, from the first byte
/// written to the guest's `sink ok` answer (see the guest image docs).
pub fn guest_sink(
    netns: &str,
    addr: &str,
    port: u16,
    bytes: usize,
    timeout: Duration,
) -> Result<Duration, TestInfraError> {
    let netns = netns.to_string();
    let target = format!("{addr}:{port}");
    std::thread::spawn(move || {
        enter_netns(&netns)?;
        let io = |what| {
            let addr = target.clone();
            move |source| TestInfraError::Guest { addr, what, source }
        };
        let sock: SocketAddr = target.parse().map_err(|_| TestInfraError::Guest {
            addr: target.clone(),
            what: "parse address",
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        })?;
        let stream = TcpStream::connect_timeout(&sock, timeout).map_err(io("connect"))?;
        stream
            .set_read_timeout(Some(timeout))
            .map_err(io("set timeout"))?;
        stream
            .set_write_timeout(Some(timeout))
            .map_err(io("set timeout"))?;
        let mut writer = stream.try_clone().map_err(io("clone socket"))?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).map_err(io("read"))?;
        writer
            .write_all(format!("sink {bytes}\n").as_bytes())
            .map_err(io("write"))?;
        let chunk = vec![0x5au8; 64 * 1024];
        let started = std::time::Instant::now();
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len());
            writer.write_all(&chunk[..n]).map_err(io("write"))?;
            left -= n;
        }
        line.clear();
        reader.read_line(&mut line).map_err(io("read"))?;
        if !line.starts_with("sink ok") {
            return Err(TestInfraError::GuestClosed(format!("{target}: {line}")));
        }
        Ok(started.elapsed())
    })
    .join()
    .map_err(|_| TestInfraError::Thread)?
}

/// Has the guest at `addr:port` send `bytes` bytes (its `source`
/// command) to a listener this call opens in namespace `netns` on
/// `listen` (an address of that namespace and a port); returns how long
/// the bytes received after the first `skip` took, and how many those
/// were (a policer's initial bucket passes at line rate).
pub fn guest_source(
    netns: &str,
    addr: &str,
    port: u16,
    listen: SocketAddr,
    (bytes, skip): (usize, usize),
    timeout: Duration,
) -> Result<(Duration, usize), TestInfraError> {
    let netns = netns.to_string();
    let target = format!("{addr}:{port}");
    std::thread::spawn(move || {
        enter_netns(&netns)?;
        let io = |what| {
            let addr = target.clone();
            move |source| TestInfraError::Guest { addr, what, source }
        };
        let listener = std::net::TcpListener::bind(listen).map_err(io("listen"))?;
        let sock: SocketAddr = target.parse().map_err(|_| TestInfraError::Guest {
            addr: target.clone(),
            what: "parse address",
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        })?;
        let stream = TcpStream::connect_timeout(&sock, timeout).map_err(io("connect"))?;
        stream
            .set_read_timeout(Some(timeout))
            .map_err(io("set timeout"))?;
        let mut writer = stream.try_clone().map_err(io("clone socket"))?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).map_err(io("read"))?;
        writer
            .write_all(format!("source {} {} {bytes}\n", listen.ip(), listen.port()).as_bytes())
            .map_err(io("write"))?;
        listener.set_nonblocking(false).map_err(io("listen"))?;
        let (mut data, _) = listener.accept().map_err(io("accept"))?;
        data.set_read_timeout(Some(timeout))
            .map_err(io("set timeout"))?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0usize;
        let mut started = None;
        while got < bytes {
            let n = std::io::Read::read(&mut data, &mut buf).map_err(io("receive"))?;
            if n == 0 {
                break;
            }
            got += n;
            if got >= skip && started.is_none() {
                started = Some((std::time::Instant::now(), got));
            }
        }
        let (took, counted) = started
            .map(|(s, at)| (s.elapsed(), got - at))
            .unwrap_or_default();
        drop(data);
        line.clear();
        reader.read_line(&mut line).map_err(io("read"))?;
        if got < bytes || !line.starts_with("source ok") {
            return Err(TestInfraError::GuestClosed(format!(
                "{target}: {got} of {bytes} bytes, then: {line}"
            )));
        }
        Ok((took, counted))
    })
    .join()
    .map_err(|_| TestInfraError::Thread)?
}

/// Sends one datagram with `payload` from namespace `netns` to the guest's
/// UDP service at `addr:port` and returns its answer, `BOOT_ID COUNTER
/// PAYLOAD` (see the guest image docs). Waits up to `timeout`.
pub fn guest_udp_request(
    netns: &str,
    addr: &str,
    port: u16,
    payload: &str,
    timeout: Duration,
) -> Result<String, TestInfraError> {
    let netns = netns.to_string();
    let target = format!("{addr}:{port}");
    let payload = payload.to_string();
    std::thread::spawn(move || {
        enter_netns(&netns)?;
        let io = |what| {
            let addr = target.clone();
            move |source| TestInfraError::Guest { addr, what, source }
        };
        let sock = std::net::UdpSocket::bind("0.0.0.0:0").map_err(io("bind"))?;
        sock.set_read_timeout(Some(timeout))
            .map_err(io("set timeout"))?;
        sock.send_to(payload.as_bytes(), &target)
            .map_err(io("send"))?;
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).map_err(io("receive"))?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
    .join()
    .map_err(|_| TestInfraError::Thread)?
}

/// One TCP connection to a guest's service held open from inside a host's
/// namespace (by a thread of its own), to show that a connection lives
/// through a migration: each [`GuestSession::ask`] sends a line on the same
/// connection and returns the answer.
pub struct GuestSession {
    requests: std::sync::mpsc::Sender<(String, std::sync::mpsc::Sender<Result<String, String>>)>,
    greeting: String,
}

impl GuestSession {
    /// Connects from namespace `netns` to `addr:port`; each answer must
    /// come within `timeout`.
    pub fn open(
        netns: &str,
        addr: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<GuestSession, TestInfraError> {
        let netns = netns.to_string();
        let target = format!("{addr}:{port}");
        let (tx, rx) =
            std::sync::mpsc::channel::<(String, std::sync::mpsc::Sender<Result<String, String>>)>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<String, TestInfraError>>();
        std::thread::spawn(move || {
            let opened = (|| -> Result<_, TestInfraError> {
                enter_netns(&netns)?;
                let sock: SocketAddr = target.parse().map_err(|_| TestInfraError::Guest {
                    addr: target.clone(),
                    what: "parse address",
                    source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
                })?;
                let io = |what| {
                    let addr = target.clone();
                    move |source| TestInfraError::Guest { addr, what, source }
                };
                let stream = TcpStream::connect_timeout(&sock, timeout).map_err(io("connect"))?;
                stream
                    .set_read_timeout(Some(timeout))
                    .map_err(io("set timeout"))?;
                let writer = stream.try_clone().map_err(io("clone socket"))?;
                let mut reader = BufReader::new(stream);
                let mut greeting = String::new();
                reader.read_line(&mut greeting).map_err(io("read"))?;
                Ok((writer, reader, greeting.trim_end().to_string()))
            })();
            let (mut writer, mut reader) = match opened {
                Ok((w, r, g)) => {
                    let _ = ready_tx.send(Ok(g));
                    (w, r)
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            for (line, answer) in rx {
                let r = writer
                    .write_all(format!("{line}\n").as_bytes())
                    .map_err(|e| format!("write: {e}"))
                    .and_then(|()| {
                        let mut got = String::new();
                        match reader.read_line(&mut got) {
                            Ok(0) => Err("the guest closed the connection".to_string()),
                            Ok(_) => Ok(got.trim_end().to_string()),
                            Err(e) => Err(format!("read: {e}")),
                        }
                    });
                let _ = answer.send(r);
            }
        });
        let greeting = ready_rx.recv().map_err(|_| TestInfraError::Thread)??;
        Ok(GuestSession {
            requests: tx,
            greeting,
        })
    }

    /// The line the guest answered on connect.
    pub fn greeting(&self) -> &str {
        &self.greeting
    }

    /// Sends `line` on the connection and returns the answer line.
    pub fn ask(&self, line: &str) -> Result<String, String> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.requests
            .send((line.to_string(), tx))
            .map_err(|_| "the session ended".to_string())?;
        rx.recv().map_err(|_| "the session ended".to_string())?
    }
}
