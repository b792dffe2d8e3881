//! Talking to the benchmark guest from a host's network namespace: its TCP
//! service (to start and stop the memory load) and its UDP service (the
//! poller that measures how long the guest stops answering).
//!
//! A namespace switch (`setns`) affects only the calling thread, so each
//! conversation runs on a thread of its own that enters the namespace
//! first; the rest of the program stays where it is.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};

use crate::error::BenchError;

/// The guest's TCP and UDP service port.
pub const SERVICE_PORT: u16 = vdc_types::GUEST_SERVICE_PORT;

fn enter_netns(netns: &str) -> Result<(), BenchError> {
    let err = |source| BenchError::Netns {
        netns: netns.to_string(),
        source,
    };
    let file = File::open(format!("/run/netns/{netns}")).map_err(err)?;
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| err(e.into()))
}

fn guest_io<'a>(addr: &'a str, what: &'static str) -> impl Fn(std::io::Error) -> BenchError + 'a {
    move |source| BenchError::Guest {
        addr: addr.to_string(),
        what,
        source,
    }
}

/// Sends one line to the guest's TCP service from namespace `netns` and
/// returns its answer (the line after the greeting).
pub fn command(netns: &str, addr: &str, line: &str) -> Result<String, BenchError> {
    let netns = netns.to_string();
    let addr = addr.to_string();
    let line = line.to_string();
    std::thread::spawn(move || {
        enter_netns(&netns)?;
        let sock: SocketAddr = format!("{addr}:{SERVICE_PORT}")
            .parse()
            .map_err(|_| BenchError::BadAddress(addr.clone()))?;
        let timeout = Duration::from_secs(60);
        let stream = TcpStream::connect_timeout(&sock, Duration::from_secs(5))
            .map_err(guest_io(&addr, "connect"))?;
        stream
            .set_read_timeout(Some(timeout))
            .map_err(guest_io(&addr, "set timeout"))?;
        let mut writer = stream
            .try_clone()
            .map_err(guest_io(&addr, "clone socket"))?;
        let mut reader = BufReader::new(stream);
        let mut greeting = String::new();
        reader
            .read_line(&mut greeting)
            .map_err(guest_io(&addr, "read"))?;
        writer
            .write_all(format!("{line}\n").as_bytes())
            .map_err(guest_io(&addr, "write"))?;
        let mut answer = String::new();
        reader
            .read_line(&mut answer)
            .map_err(guest_io(&addr, "read"))?;
        Ok(answer.trim_end().to_string())
    })
    .join()
    .map_err(|_| BenchError::Thread)?
}

/// Asks the guest's UDP service once; its answer `BOOT_ID COUNTER PAYLOAD`
/// or an error after `timeout`.
pub fn udp_probe(netns: &str, addr: &str, timeout: Duration) -> Result<String, BenchError> {
    let netns = netns.to_string();
    let addr = addr.to_string();
    std::thread::spawn(move || {
        enter_netns(&netns)?;
        let sock = UdpSocket::bind("0.0.0.0:0").map_err(guest_io(&addr, "bind"))?;
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .map_err(guest_io(&addr, "set timeout"))?;
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 512];
        loop {
            sock.send_to(b"probe", (addr.as_str(), SERVICE_PORT))
                .map_err(guest_io(&addr, "send"))?;
            match sock.recv(&mut buf) {
                Ok(n) => return Ok(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(guest_io(&addr, "receive")(e));
                }
                Err(_) => {}
            }
        }
    })
    .join()
    .map_err(|_| BenchError::Thread)?
}

/// What a [`Poller`] saw.
#[derive(Debug, Clone, Default)]
pub struct PollLog {
    /// When each answer arrived, from the poller's start, in order.
    pub answers: Vec<Duration>,
    /// The boot ids the answers carried, each once, in order.
    pub boot_ids: Vec<String>,
    /// Requests sent.
    pub sent: u64,
}

/// A client on another host polling the guest's UDP service every
/// `interval`, recording when answers arrive, until stopped.
pub struct Poller {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<PollLog>>,
    thread: JoinHandle<Result<(), BenchError>>,
    started: Instant,
}

impl Poller {
    /// Starts polling `addr` from namespace `netns`.
    pub fn start(netns: &str, addr: &str, interval: Duration) -> Poller {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(PollLog::default()));
        let (flag, shared) = (stop.clone(), log.clone());
        let netns = netns.to_string();
        let addr = addr.to_string();
        let started = Instant::now();
        let thread = std::thread::spawn(move || {
            enter_netns(&netns)?;
            let sock = UdpSocket::bind("0.0.0.0:0").map_err(guest_io(&addr, "bind"))?;
            sock.connect((addr.as_str(), SERVICE_PORT))
                .map_err(guest_io(&addr, "connect"))?;
            let mut next = Instant::now();
            let mut sent = 0u64;
            let mut buf = [0u8; 512];
            while !flag.load(Ordering::Relaxed) {
                let now = Instant::now();
                if now >= next {
                    // A send may fail while the address moves (no ARP
                    // answer yet); the gap shows it, so keep going.
                    if sock.send(format!("poll {sent}").as_bytes()).is_ok() {
                        sent += 1;
                    }
                    next += interval;
                    if next < now {
                        next = now + interval;
                    }
                    continue;
                }
                sock.set_read_timeout(Some(next - now))
                    .map_err(guest_io(&addr, "set timeout"))?;
                if let Ok(n) = sock.recv(&mut buf) {
                    let at = started.elapsed();
                    let text = String::from_utf8_lossy(&buf[..n]);
                    let id = text.split(' ').next().unwrap_or("").to_string();
                    let mut log = shared.lock().map_err(|_| BenchError::Thread)?;
                    log.answers.push(at);
                    log.sent = sent;
                    if log.boot_ids.last() != Some(&id) {
                        log.boot_ids.push(id);
                    }
                }
            }
            Ok(())
        });
        Poller {
            stop,
            log,
            thread,
            started,
        }
    }

    /// Time since the poller started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// When the last answer arrived (from the poller's start).
    pub fn last_answer(&self) -> Option<Duration> {
        self.log.lock().ok()?.answers.last().copied()
    }

    /// Stops polling and returns what was seen.
    pub fn stop(self) -> Result<PollLog, BenchError> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().map_err(|_| BenchError::Thread)??;
        let log = self.log.lock().map_err(|_| BenchError::Thread)?;
        Ok(log.clone())
    }
}
