//! The supervisor process: take the lease, learn QEMU's pid, renew, fence.
//!
//! One task owns all state (`Supervisor`); everything else (renewals on
//! the lease I/O thread, control connections, stdin) talks to it through
//! channels, so the fence check is never blocked behind I/O.

use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot};
use vdc_disk::lock::rule::{holder_deadline, holding, must_fence, Holding};
use vdc_disk::lock::{acquire_after, monotonic_now, TakeOver};

use crate::control::{bind, read_qemu_pid, serve_control};
use crate::reaction::{react, Reaction};
use vdc_disk::{DiskError, Lease, LeaseIo, LeaseTiming, VmLock};
use vdc_qemu::process::Process;
use vdc_qemu::VmPaths;

use crate::{
    write_atomic, ControlReply, ControlRequest, FenceKind, FenceRecord, Hello, SupervisorArgs,
    SupervisorError, SupervisorStatus, FENCE_FILE, FENCE_VERSION, PID_FILE, SOCKET_FILE,
};

/// How often the holder checks its fence deadline.
const FENCE_CHECK: Duration = Duration::from_millis(200);
/// Longest wait for the final release of the lease.
const RELEASE_WAIT: Duration = Duration::from_secs(10);
/// Pause between attempts of a release that found a renewal in flight.
const RELEASE_RETRY: Duration = Duration::from_millis(20);

/// Runs the supervisor until QEMU is gone (or the start was abandoned).
pub async fn run(args: SupervisorArgs) -> Result<(), SupervisorError> {
    let timing = args.timing();
    timing.check().map_err(SupervisorError::Config)?;
    args.lease_seen()?;
    std::fs::create_dir_all(&args.run_dir).map_err(SupervisorError::io(&args.run_dir))?;
    let pidfile = args.run_dir.join(PID_FILE);
    write_atomic(&pidfile, std::process::id().to_string().as_bytes())
        .map_err(SupervisorError::io(&pidfile))?;
    let result = supervise(&args, timing).await;
    for f in [PID_FILE, SOCKET_FILE] {
        let path = args.run_dir.join(f);
        if let Err(e) = std::fs::remove_file(&path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove");
            }
        }
    }
    result
}

/// Prints the hello line (the agent may be gone: then nobody reads it).
fn hello(h: &Hello) {
    use std::io::Write;
    let line = serde_json::to_string(h).unwrap_or_default();
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
        tracing::warn!(error = %e, "nobody reads the supervisor's answer");
    }
}

async fn supervise(args: &SupervisorArgs, timing: LeaseTiming) -> Result<(), SupervisorError> {
    let holder = format!(
        "{}-{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let io = Arc::new(
        LeaseIo::start("lease-io", timing.ttl.saturating_sub(timing.margin))
            .map_err(SupervisorError::io("lease I/O thread"))?,
    );
    let lock = VmLock::new(&args.vm_dir);
    let paths = VmPaths::new(&args.run_dir, &args.vm_dir);
    let mut term = signal(SignalKind::terminate()).map_err(SupervisorError::io("SIGTERM"))?;

    let acquired = tokio::select! {
        a = take_lease(args, &io, &lock, &holder, &timing) => a,
        _ = term.recv() => {
            hello(&Hello::Failed { message: "stopped while taking the lease".into() });
            return Ok(());
        }
    };
    let acquired = match acquired {
        Ok(a) => a,
        Err(e) => {
            let h = match &e {
                DiskError::Locked {
                    holder_host,
                    generation,
                } => Hello::Locked {
                    holder_host: holder_host.clone(),
                    generation: *generation,
                },
                other => Hello::Failed {
                    message: chain(other),
                },
            };
            hello(&h);
            if let Some(pid) = args.qemu_pid {
                // Re-attaching to a QEMU whose lease we cannot hold: it
                // must not keep running.
                let mut sup = Supervisor::new(args, timing, holder, io, lock, paths, None);
                sup.qemu = Some(Arc::new(Process::from_pid(pid)));
                sup.fence(
                    FenceKind::Fenced,
                    format!("cannot hold the lease on re-attach: {}", chain(&e)),
                );
                if let Some(q) = &sup.qemu {
                    q.wait_for(Duration::from_secs(30)).await;
                }
            }
            return Err(SupervisorError::Lease(e));
        }
    };
    tracing::info!(vm = %args.vm_id, generation = acquired.lease.generation, took_over = ?acquired.took_over, "lease taken");
    hello(&Hello::Leased {
        generation: acquired.lease.generation,
        took_over: acquired.took_over.map(|t| match t {
            TakeOver::HandedOver => "handed_over".to_string(),
            TakeOver::Stale => "stale".to_string(),
        }),
    });
    let mut sup = Supervisor::new(args, timing, holder, io, lock, paths, Some(acquired));
    if let Some(pid) = args.qemu_pid {
        sup.attach(pid);
    }
    sup.main_loop(term).await
}

/// Takes the lease; when re-attaching to a running QEMU, another host's
/// lease means the VM was taken over meanwhile: refused at once, without
/// watching it (that QEMU must stop now), unless that lease names this
/// host as its successor (the destination of a live migration guarding
/// the QEMU that just received the VM).
async fn take_lease(
    args: &SupervisorArgs,
    io: &LeaseIo,
    lock: &VmLock,
    holder: &str,
    timing: &LeaseTiming,
) -> Result<vdc_disk::lock::Acquired, DiskError> {
    if args.qemu_pid.is_some() {
        let l = lock.clone();
        if let Some(current) = io.run(move || l.read()).await? {
            if current.host != args.host && current.successor.as_deref() != Some(&args.host) {
                return Err(DiskError::Locked {
                    holder_host: current.host,
                    generation: current.generation,
                });
            }
        }
    }
    // Checked at start (`run`): a bad value never gets here.
    let prior = args.lease_seen().ok().flatten();
    if let Some(p) = &prior {
        tracing::info!(vm = %args.vm_id, holder_host = %p.key.host, generation = p.key.generation,
            watched_ms = monotonic_now().saturating_sub(p.since).as_millis() as u64,
            "continuing the agent's watch of the lease");
    }
    acquire_after(io, lock, &args.host, holder, timing, prior.as_ref()).await
}

/// Result of one renewal (or, while handing over, one look at the lease):
/// when it started, whether it wrote, and the lease if still ours.
type Renewal = (Duration, bool, Result<Option<Lease>, DiskError>);

struct Supervisor<'a> {
    args: &'a SupervisorArgs,
    timing: LeaseTiming,
    holder: String,
    io: Arc<LeaseIo>,
    lock: VmLock,
    paths: VmPaths,
    lease: Option<Lease>,
    last_ok: Duration,
    /// Successor to name in the lease.
    successor: Option<String>,
    /// The lease names the successor: renewals stopped, the lease is only
    /// watched for the successor taking it.
    handed: bool,
    renewing: bool,
    renew_again: bool,
    waiting_reply: Option<oneshot::Sender<ControlReply>>,
    qemu: Option<Arc<Process>>,
    fenced: Option<FenceRecord>,
}

impl<'a> Supervisor<'a> {
    fn new(
        args: &'a SupervisorArgs,
        timing: LeaseTiming,
        holder: String,
        io: Arc<LeaseIo>,
        lock: VmLock,
        paths: VmPaths,
        acquired: Option<vdc_disk::lock::Acquired>,
    ) -> Self {
        let (lease, last_ok) = match acquired {
            Some(a) => (Some(a.lease), a.started),
            None => (None, monotonic_now()),
        };
        Supervisor {
            args,
            timing,
            holder,
            io,
            lock,
            paths,
            lease,
            last_ok,
            successor: None,
            handed: false,
            renewing: false,
            renew_again: false,
            waiting_reply: None,
            qemu: None,
            fenced: None,
        }
    }

    async fn main_loop(
        mut self,
        mut term: tokio::signal::unix::Signal,
    ) -> Result<(), SupervisorError> {
        let (renewal_tx, mut renewal_rx) = mpsc::channel::<Renewal>(4);
        let (ctl_tx, mut ctl_rx) =
            mpsc::channel::<(ControlRequest, oneshot::Sender<ControlReply>)>(8);
        let socket = self.args.run_dir.join(SOCKET_FILE);
        // Without its control socket the supervisor still guards QEMU; only
        // hand-overs and status requests are unavailable.
        match bind(&socket) {
            Ok(listener) => {
                tokio::spawn(serve_control(listener, ctl_tx));
            }
            Err(e) => {
                tracing::error!(error = %chain(&e), "no control socket; hand-overs are unavailable")
            }
        }

        let (pid_tx, mut pid_rx) = mpsc::channel::<Option<u32>>(1);
        if self.qemu.is_none() {
            tokio::spawn(read_qemu_pid(pid_tx));
        }
        let launch_deadline =
            tokio::time::Instant::now() + Duration::from_secs(self.args.launch_timeout_s);
        let mut renew = tokio::time::interval(self.timing.renew_every);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut check = tokio::time::interval(FENCE_CHECK);

        loop {
            let qemu = self.qemu.clone();
            let qemu_exit = async move {
                match qemu {
                    Some(q) => q.wait().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = qemu_exit => break,
                pid = pid_rx.recv(), if self.qemu.is_none() => match pid.flatten() {
                    Some(pid) => self.attach(pid),
                    // The agent gave up, or died between launching QEMU
                    // and naming it: guard the QEMU of this VM if one runs.
                    None => match vdc_qemu::running_pid(&self.paths) {
                        Some(pid) => self.attach(pid),
                        None => {
                            tracing::info!(vm = %self.args.vm_id, "start abandoned before QEMU ran; releasing the lease");
                            return self.release().await;
                        }
                    },
                },
                _ = tokio::time::sleep_until(launch_deadline), if self.qemu.is_none() => {
                    match vdc_qemu::running_pid(&self.paths) {
                        Some(pid) => self.attach(pid),
                        None => {
                            tracing::warn!(vm = %self.args.vm_id, "no QEMU in time; releasing the lease");
                            return self.release().await;
                        }
                    }
                }
                _ = term.recv() => {
                    if self.qemu.is_none() {
                        return self.release().await;
                    }
                    tracing::warn!(vm = %self.args.vm_id, "SIGTERM ignored: the supervisor stays while QEMU runs");
                }
                _ = renew.tick() => self.start_renewal(&renewal_tx),
                Some((started, wrote, result)) = renewal_rx.recv() => {
                    self.renewed(started, wrote, result);
                    if std::mem::take(&mut self.renew_again) {
                        self.start_renewal(&renewal_tx);
                    }
                }
                Some((req, reply)) = ctl_rx.recv() => self.control(req, reply, &renewal_tx),
                _ = check.tick() => {
                    if self.fenced.is_none() && must_fence(monotonic_now(), self.last_ok, &self.timing) {
                        let since = monotonic_now().saturating_sub(self.last_ok);
                        self.fence(FenceKind::Fenced, format!(
                            "lease not renewed for {} ms (TTL {} ms, margin {} ms); the datastore may hang",
                            since.as_millis(), self.timing.ttl.as_millis(), self.timing.margin.as_millis()));
                    }
                }
            }
        }
        tracing::info!(vm = %self.args.vm_id, fenced = ?self.fenced, "QEMU exited");
        if self.fenced.is_some() {
            // The lease is left to expire (fenced) or belongs to the
            // successor (handed over).
            return Ok(());
        }
        self.release().await
    }

    fn attach(&mut self, pid: u32) {
        let qemu = Arc::new(Process::from_pid(pid));
        tracing::info!(vm = %self.args.vm_id, pid, "supervising QEMU");
        if self.fenced.is_some() {
            qemu.signal(libc::SIGKILL);
        }
        self.qemu = Some(qemu);
    }

    fn start_renewal(&mut self, tx: &mpsc::Sender<Renewal>) {
        if self.fenced.is_some() {
            return;
        }
        if self.renewing {
            self.renew_again = self.waiting_reply.is_some();
            return;
        }
        let Some(last) = self.lease.clone() else {
            return;
        };
        self.renewing = true;
        let io = self.io.clone();
        let lock = self.lock.clone();
        let host = self.args.host.clone();
        let holder = self.holder.clone();
        let successor = self.successor.clone();
        let ttl = self.timing.ttl;
        let write = !self.handed;
        let tx = tx.clone();
        tokio::spawn(async move {
            let started = monotonic_now();
            let result = io
                .run(move || {
                    if !write {
                        // Handing over: only look whether the successor
                        // took the lease.
                        let current = lock.read()?;
                        return match holding(current.as_ref(), &host, &holder) {
                            Holding::Ours => Ok(current),
                            Holding::Vanished => Ok(None),
                            Holding::Lost { holder_host, .. } => {
                                Err(DiskError::LeaseLost { holder_host })
                            }
                        };
                    }
                    match lock.renew(&host, &holder, successor) {
                        // Removed by hand: create it again.
                        Err(DiskError::LeaseLost { holder_host }) if holder_host.is_empty() => {
                            let lease = Lease::new(&host, &holder, ttl, Some(&last));
                            if lock.create(&lease)? {
                                lock.verify(&lease).map(Some)
                            } else {
                                Err(DiskError::LeaseLost {
                                    holder_host: lock.read()?.map(|l| l.host).unwrap_or_default(),
                                })
                            }
                        }
                        other => other.map(Some),
                    }
                })
                .await;
            if tx.send((started, write, result)).await.is_err() {
                tracing::debug!("renewal finished after the supervisor stopped");
            }
        });
    }

    fn renewed(
        &mut self,
        started: Duration,
        wrote: bool,
        result: Result<Option<Lease>, DiskError>,
    ) {
        self.renewing = false;
        match react(self.successor.as_deref(), wrote, &result) {
            Reaction::Renewed { handing_over } => {
                self.last_ok = self.last_ok.max(started);
                self.handed = handing_over;
                if let Ok(Some(lease)) = result {
                    tracing::debug!(generation = lease.generation, "lease renewed");
                    let asked = lease.successor == self.successor;
                    self.lease = Some(lease);
                    // Answer a hand-over (or its cancel) once the lease says so.
                    if let Some(reply) = self.waiting_reply.take_if(|_| asked) {
                        let status = self.status();
                        if reply.send(ControlReply::Status(status)).is_err() {
                            tracing::debug!("control client left before the answer");
                        }
                    }
                }
            }
            Reaction::Unchanged => {}
            Reaction::Fence(kind, reason) => {
                self.answer_error(reason.clone());
                self.fence(kind, reason);
            }
            Reaction::Retry(why) => {
                let deadline = holder_deadline(self.last_ok, &self.timing);
                tracing::warn!(vm = %self.args.vm_id, error = %why,
                    fence_in_ms = deadline.saturating_sub(monotonic_now()).as_millis() as u64,
                    "cannot renew the lease");
                self.answer_error(why);
            }
        }
    }

    fn answer_error(&mut self, message: String) {
        if let Some(reply) = self.waiting_reply.take() {
            if reply.send(ControlReply::Error { message }).is_err() {
                tracing::debug!("control client left before the answer");
            }
        }
    }

    fn control(
        &mut self,
        req: ControlRequest,
        reply: oneshot::Sender<ControlReply>,
        tx: &mpsc::Sender<Renewal>,
    ) {
        let refuse = |reply: oneshot::Sender<ControlReply>, message: String| {
            if reply.send(ControlReply::Error { message }).is_err() {
                tracing::debug!("control client left before the answer");
            }
        };
        if !matches!(req, ControlRequest::Status) {
            if let Some(f) = &self.fenced {
                return refuse(reply, format!("QEMU was stopped: {}", f.reason));
            }
            if self.waiting_reply.is_some() {
                return refuse(reply, "another lease change is in progress".into());
            }
        }
        match req {
            ControlRequest::Status => {
                if reply.send(ControlReply::Status(self.status())).is_err() {
                    tracing::debug!("control client left before the answer");
                }
            }
            ControlRequest::HandOver { successor } => {
                if successor == self.args.host {
                    return refuse(reply, "the successor is this host".into());
                }
                if self.qemu.is_none() {
                    return refuse(reply, "QEMU does not run yet".into());
                }
                tracing::info!(vm = %self.args.vm_id, %successor, "handing the lease over");
                self.successor = Some(successor);
                self.waiting_reply = Some(reply);
                self.start_renewal(tx);
            }
            ControlRequest::CancelHandOver => {
                self.successor = None;
                self.handed = false;
                self.waiting_reply = Some(reply);
                self.start_renewal(tx);
            }
        }
    }

    fn status(&self) -> SupervisorStatus {
        SupervisorStatus {
            host: self.args.host.clone(),
            generation: self.lease.as_ref().map_or(0, |l| l.generation),
            successor: self.successor.clone(),
            qemu_pid: self.qemu.as_ref().map(|q| q.pid()),
            fenced: self.fenced.as_ref().map(|f| f.reason.clone()),
            deadline_in_ms: holder_deadline(self.last_ok, &self.timing)
                .saturating_sub(monotonic_now())
                .as_millis() as u64,
        }
    }

    /// Stops QEMU at once (SIGKILL: a hung disk can hang `quit`) and
    /// records why.
    fn fence(&mut self, kind: FenceKind, reason: String) {
        if self.fenced.is_some() {
            return;
        }
        match &self.qemu {
            Some(q) => q.signal(libc::SIGKILL),
            None => {
                if let Some(pid) = vdc_qemu::running_pid(&self.paths) {
                    Process::from_pid(pid).signal(libc::SIGKILL);
                }
            }
        }
        tracing::error!(vm = %self.args.vm_id, ?kind, %reason, "QEMU stopped by its supervisor");
        let record = FenceRecord {
            version: FENCE_VERSION,
            kind,
            reason,
            at_ms: vdc_types::now_ms(),
            generation: self.lease.as_ref().map_or(0, |l| l.generation),
        };
        let path = self.args.run_dir.join(FENCE_FILE);
        let written = serde_json::to_vec(&record)
            .map_err(std::io::Error::other)
            .and_then(|b| write_atomic(&path, &b));
        if let Err(e) = written {
            tracing::error!(path = %path.display(), error = %e, "cannot record why QEMU was stopped");
        }
        self.fenced = Some(record);
    }

    /// Gives the lease up (QEMU is gone or never ran).
    /// Gives the lease up. A renewal still in flight on the lease I/O
    /// thread (one may have started just before) is waited for, within
    /// [`RELEASE_WAIT`] overall: a release refused as "pending" would leave
    /// the lease to expire, keeping the VM from starting anywhere for a TTL.
    async fn release(&self) -> Result<(), SupervisorError> {
        let deadline = tokio::time::Instant::now() + RELEASE_WAIT;
        let attempt = async {
            loop {
                let lock = self.lock.clone();
                let host = self.args.host.clone();
                let holder = self.holder.clone();
                match self
                    .io
                    .run(move || lock.release(&host, Some(&holder)))
                    .await
                {
                    Err(DiskError::LeaseIoPending) => {
                        tokio::time::sleep(RELEASE_RETRY).await;
                    }
                    other => return other,
                }
            }
        };
        match tokio::time::timeout_at(deadline, attempt).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(SupervisorError::Lease(e)),
            Err(_) => Err(SupervisorError::Lease(DiskError::LeaseIoTimeout {
                after: RELEASE_WAIT,
            })),
        }
    }
}

/// "what: cause: cause…".
pub(crate) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        s.push_str(": ");
        s.push_str(&e.to_string());
        cur = e.source();
    }
    s
}
