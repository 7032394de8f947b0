//! `method=prefork` (Django's default): a master that forks workers and keeps them in number.
//!
//! The master binds the listener, then forks workers **before any tokio runtime or other
//! thread exists** (a fork copies only the calling thread; locks held by others would stay
//! locked forever in the child) and never runs handler code itself. It stays single-threaded
//! for its whole life: signals arrive through a `signalfd`, worker reports through one pipe,
//! and a `poll` loop serves both, so it can fork again at any time.
//!
//! Each worker builds its own current-thread runtime and accepts on the shared listener.
//! It reports over the status pipe (8-byte messages, atomic below `PIPE_BUF`):
//!
//! ```text
//! +------+-------------+-------------------+
//! | kind | 0x00 × 3    | worker pid (u32)  |   kind: b'I' idle, b'B' busy, b'R' retiring
//! +------+-------------+-------------------+
//! ```
//!
//! The master keeps between `minspare` and `maxspare` idle workers, never more than
//! `maxchildren` serving, replaces dead workers (logging how they died) and recycles a worker
//! that reached `maxrequests` (jittered, so workers do not all restart at once). Missing idle
//! workers are forked at once; surplus ones are stopped one per [`TRIM_DELAY`], once the
//! surplus has lasted that long, so a pool under load does not fork and stop in a loop.
//!
//! | signal to the master | effect |
//! |---|---|
//! | TERM, INT | workers finish their requests (bounded by `graceful_timeout=`), then exit 0 |
//! | QUIT | workers stop at once |
//! | HUP | re-exec the binary in place (same pid, listener kept open): new code is loaded, new workers start, then the old ones finish and exit |
//! | USR1 | reopen `outlog=`/`errlog=`, in the master and every worker |
//! | TTIN, TTOU | one idle worker more / fewer (`minspare` and `maxspare` move together) |

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{pipe2, Pid};

use crate::config::Config;
use crate::listen::{StdListener, REEXEC_FD_ENV};
use crate::process::control::{Control, CONTROL_SIGNALS};
use crate::process::threaded::Exit;
use crate::sys::{self, Forked};

/// Environment variable naming the workers of the previous image after a reload: the
/// re-executed master stops them once its own workers serve.
pub const RETIRE_PIDS_ENV: &str = "APPSERVER_RETIRE_PIDS";

/// A worker that dies this soon after it started is crashing at startup: the master waits
/// this long before the next spawn instead of forking in a tight loop.
pub const CRASH_BACKOFF: Duration = Duration::from_secs(1);

/// How long more than `maxspare` workers must have been idle before one is stopped; then one
/// more per period while the surplus lasts (Apache's prefork trims one child per second too).
pub const TRIM_DELAY: Duration = Duration::from_secs(1);

/// How long workers get after QUIT before they are killed.
const QUIT_GRACE: Duration = Duration::from_secs(2);

/// How often the master wakes up with nothing to do, to re-check its targets and deadlines.
const TICK: Duration = Duration::from_millis(500);

const STATUS_LEN: usize = 8;

/// What a worker reports to the master.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Report {
    /// No request in flight.
    Idle,
    /// At least one request in flight.
    Busy,
    /// Reached `maxrequests`: finishing what it holds, then exiting; start a replacement.
    Retiring,
}

impl Report {
    fn encode(self, pid: u32) -> [u8; STATUS_LEN] {
        let kind = match self {
            Self::Idle => b'I',
            Self::Busy => b'B',
            Self::Retiring => b'R',
        };
        let p = pid.to_be_bytes();
        [kind, 0, 0, 0, p[0], p[1], p[2], p[3]]
    }

    fn decode(msg: &[u8; STATUS_LEN]) -> Option<(Self, u32)> {
        let kind = match msg[0] {
            b'I' => Self::Idle,
            b'B' => Self::Busy,
            b'R' => Self::Retiring,
            _ => return None,
        };
        Some((kind, u32::from_be_bytes([msg[4], msg[5], msg[6], msg[7]])))
    }
}

/// The worker's end of the status pipe.
#[derive(Debug)]
pub struct StatusPipe {
    file: File,
}

impl StatusPipe {
    /// Tells the master about a state change. A full pipe (master busy) or a closed one
    /// (master re-executed) loses the message, never blocks the worker: the master also
    /// learns from `SIGCHLD`.
    pub fn report(&self, report: Report) {
        let _ = (&self.file).write(&report.encode(std::process::id()));
    }
}

/// The state of one worker as the master sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Forked, not yet reported: counted as idle so it is not spawned twice.
    Starting,
    Idle,
    Busy,
    /// Told to stop (or reached maxrequests): no longer counted.
    Leaving,
}

#[derive(Debug)]
struct Worker {
    state: State,
    started: Instant,
}

/// What the master needs to fork a worker: runs in the child and never returns.
pub type WorkerMain<'a> = dyn FnMut(StdListener, StatusPipe, u64) -> i32 + 'a;

/// The process image to re-execute on HUP.
#[derive(Clone, Debug)]
pub struct Image {
    /// The executable's path as resolved at startup (so a binary replaced on disk is loaded).
    pub exe: PathBuf,
    /// The command line, unchanged.
    pub args: Vec<OsString>,
}

impl Image {
    /// This process's image.
    pub fn current() -> io::Result<Self> {
        Ok(Self {
            exe: std::env::current_exe()?,
            args: std::env::args_os().collect(),
        })
    }
}

/// The prefork master.
pub struct Master<'a> {
    config: &'a Config,
    /// Closed (`None`) once a stop begins, so the socket stops taking connections as soon as
    /// the workers close theirs, however long their last requests take.
    listener: Option<StdListener>,
    image: Image,
    workers: HashMap<i32, Worker>,
    minspare: usize,
    maxspare: usize,
    status_rd: File,
    status_wr: OwnedFd,
    signals: SignalFd,
    /// Workers of the previous image (after a reload), stopped once ours serve.
    retire: Vec<Pid>,
    spawn_after: Instant,
    /// Since when more than `maxspare` workers have been idle.
    surplus_since: Option<Instant>,
    announced: bool,
}

impl std::fmt::Debug for Master<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Master")
            .field("workers", &self.workers)
            .field("minspare", &self.minspare)
            .field("maxspare", &self.maxspare)
            .finish_non_exhaustive()
    }
}

impl<'a> Master<'a> {
    /// Prepares the master: blocks the control signals (they are read from a signalfd) and
    /// opens the status pipe. Call before any thread exists.
    pub fn new(config: &'a Config, listener: StdListener, image: Image) -> io::Result<Self> {
        let mut mask = SigSet::empty();
        for sig in CONTROL_SIGNALS.into_iter().chain([libc::SIGCHLD]) {
            if let Ok(sig) = Signal::try_from(sig) {
                mask.add(sig);
            }
        }
        mask.thread_block()?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        let (rd, wr) = pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        let retire = std::env::var(RETIRE_PIDS_ENV)
            .ok()
            .map(|v| {
                v.split(',')
                    .filter_map(|p| p.parse::<i32>().ok())
                    .map(Pid::from_raw)
                    .collect()
            })
            .unwrap_or_default();
        std::env::remove_var(RETIRE_PIDS_ENV);
        Ok(Self {
            minspare: config.minspare,
            maxspare: config.maxspare,
            config,
            listener: Some(listener),
            image,
            workers: HashMap::new(),
            status_rd: File::from(rd),
            status_wr: wr,
            signals,
            retire,
            spawn_after: Instant::now(),
            surplus_since: None,
            announced: false,
        })
    }

    /// Runs until stopped. `worker` is the body of every worker process (it gets its own
    /// handle on the listener, the status pipe and its jittered request budget, 0 meaning no
    /// limit, and returns the exit code); `ready` runs once, when the first worker serves.
    pub fn run(
        mut self,
        worker: &mut WorkerMain<'_>,
        ready: &mut dyn FnMut(),
        notify: &dyn Fn(&str),
    ) -> io::Result<Exit> {
        loop {
            self.maintain(worker)?;
            let mut fds = [
                PollFd::new(self.signals.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.status_rd.as_fd(), PollFlags::POLLIN),
            ];
            match poll(
                &mut fds,
                PollTimeout::try_from(TICK).unwrap_or(PollTimeout::MAX),
            ) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
            self.read_reports();
            if !self.announced && self.workers.values().any(|w| w.state == State::Idle) {
                self.announced = true;
                ready();
            }
            while let Some(info) = self.signals.read_signal()? {
                let signo = i32::try_from(info.ssi_signo).unwrap_or(0);
                if signo == libc::SIGCHLD {
                    self.reap();
                    continue;
                }
                let Some(control) = Control::from_signal(signo) else {
                    continue;
                };
                match control {
                    Control::GracefulStop => {
                        notify("STOPPING=1");
                        let grace = self.config.graceful_timeout;
                        return Ok(self.stop(Signal::SIGTERM, grace));
                    }
                    Control::ImmediateStop => {
                        notify("STOPPING=1");
                        return Ok(self.stop(Signal::SIGQUIT, QUIT_GRACE));
                    }
                    Control::Reload => {
                        notify("RELOADING=1");
                        let e = self.reexec();
                        tracing::error!(
                            "SIGHUP: cannot re-execute {}: {e}",
                            self.image.exe.display()
                        );
                        notify("READY=1");
                    }
                    Control::ReopenLogs => {
                        if let Err(e) = crate::daemon::reopen_logs(self.config) {
                            tracing::error!("SIGUSR1: cannot reopen logs: {e}");
                        }
                        self.signal_all(Signal::SIGUSR1);
                    }
                    Control::MoreWorkers => {
                        self.maxspare = (self.maxspare + 1).min(self.config.maxchildren);
                        self.minspare = (self.minspare + 1).min(self.maxspare);
                        tracing::info!(
                            "SIGTTIN: minspare={} maxspare={}",
                            self.minspare,
                            self.maxspare
                        );
                    }
                    Control::FewerWorkers => {
                        self.minspare = self.minspare.saturating_sub(1);
                        self.maxspare = self.maxspare.saturating_sub(1).max(self.minspare).max(1);
                        tracing::info!(
                            "SIGTTOU: minspare={} maxspare={}",
                            self.minspare,
                            self.maxspare
                        );
                    }
                }
            }
        }
    }

    /// Spawns or stops workers to bring the idle count within `minspare..=maxspare`.
    fn maintain(&mut self, worker: &mut WorkerMain<'_>) -> io::Result<()> {
        let idle = self.count(|s| matches!(s, State::Starting | State::Idle));
        let serving = self.count(|s| s != State::Leaving);
        let wanted = self.minspare.max(usize::from(serving == 0));
        if idle < wanted && serving < self.config.maxchildren {
            if Instant::now() < self.spawn_after {
                return Ok(());
            }
            for _ in 0..(wanted - idle).min(self.config.maxchildren - serving) {
                self.spawn(worker)?;
            }
        }
        if idle > self.maxspare {
            // One idle worker at a time, and only once the surplus has lasted TRIM_DELAY:
            // under load the idle count swings with every request, and stopping workers at
            // each swing would fork new ones a moment later, over and over.
            let now = Instant::now();
            let since = *self.surplus_since.get_or_insert(now);
            if now.duration_since(since) >= TRIM_DELAY {
                self.surplus_since = Some(now);
                let extra = self
                    .workers
                    .iter()
                    .find(|(_, w)| w.state == State::Idle)
                    .map(|(&pid, _)| pid);
                if let Some(pid) = extra {
                    tracing::debug!(
                        "worker {pid}: {idle} idle above maxspare={}, stopping it",
                        self.maxspare
                    );
                    self.send(pid, Signal::SIGTERM);
                }
            }
        } else {
            self.surplus_since = None;
        }
        // The previous image's workers stop once one of ours serves: no request is refused.
        if !self.retire.is_empty() && self.workers.values().any(|w| w.state == State::Idle) {
            for pid in std::mem::take(&mut self.retire) {
                let _ = kill(pid, Signal::SIGTERM);
            }
        }
        Ok(())
    }

    fn count(&self, f: impl Fn(State) -> bool) -> usize {
        self.workers.values().filter(|w| f(w.state)).count()
    }

    fn spawn(&mut self, worker: &mut WorkerMain<'_>) -> io::Result<()> {
        if self.listener.is_none() {
            return Err(io::Error::other("the listener is closed: stopping"));
        }
        let budget = jittered(u64::from(self.config.maxrequests));
        let master = nix::unistd::getpid();
        match sys::fork()? {
            Forked::Parent(pid) => {
                let pid = i32::try_from(pid).unwrap_or(i32::MAX);
                tracing::debug!("worker {pid} started");
                self.workers.insert(
                    pid,
                    Worker {
                        state: State::Starting,
                        started: Instant::now(),
                    },
                );
                Ok(())
            }
            Forked::Child => {
                // The control signals stay blocked (as in the master) until the worker's
                // handlers are installed: threaded::serve unblocks them, so a TERM sent
                // before that is a graceful stop, not death by the default action.
                //
                // A worker stops with its master: one whose master was killed (SIGKILL, OOM)
                // must not serve on unsupervised. The check after covers a master that died
                // before the request took effect.
                let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGTERM);
                if nix::unistd::getppid() != master {
                    std::process::exit(0);
                }
                // A daemon's workers are forked before the master reports readiness, which is
                // when the master points its stdout/stderr at outlog=/errlog=: do it now, or
                // workers would log to the terminal and keep the pipes of whoever started the
                // daemon open (a script reading its output would never see the end).
                if let Err(e) = crate::daemon::reopen_logs(self.config) {
                    eprintln!("appserver: worker {}: {e}", std::process::id());
                    std::process::exit(1);
                }
                // The fork copied the master's handle on the listener too. The worker accepts
                // on an unguarded handle of its own and closes the copy, or a stopping worker
                // would keep the socket open (listening, connections queuing in the backlog)
                // until it exits. The copy's socket-file guard is the master's business:
                // forgotten, not dropped (dropping it would probe the socket).
                let listener = match self.listener.take() {
                    Some(inherited) => {
                        let own = inherited.try_clone_unguarded();
                        std::mem::forget(inherited.close());
                        own
                    }
                    None => Err(io::Error::other("the listener is closed")),
                };
                let code = match (listener, self.status_wr.try_clone()) {
                    (Ok(listener), Ok(status)) => {
                        let status = StatusPipe {
                            file: File::from(status),
                        };
                        // A panic must not unwind into the master's frames (and run their
                        // destructors) in this process.
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            worker(listener, status, budget)
                        }))
                        .unwrap_or(1)
                    }
                    (Err(e), _) | (_, Err(e)) => {
                        eprintln!("appserver: worker {}: {e}", std::process::id());
                        1
                    }
                };
                // Exit without unwinding: the master's pidfile and socket guard live in the
                // frames below and belong to the master.
                std::process::exit(code)
            }
        }
    }

    fn read_reports(&mut self) {
        let mut buf = [0u8; STATUS_LEN * 64];
        loop {
            let n = match self.status_rd.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            // Writes of at most PIPE_BUF bytes are atomic, so messages never interleave and
            // every read returns whole messages.
            for msg in buf[..n].chunks_exact(STATUS_LEN) {
                let Ok(msg) = <&[u8; STATUS_LEN]>::try_from(msg) else {
                    continue;
                };
                let Some((report, pid)) = Report::decode(msg) else {
                    continue;
                };
                let Some(w) = i32::try_from(pid)
                    .ok()
                    .and_then(|p| self.workers.get_mut(&p))
                else {
                    continue;
                };
                if w.state == State::Leaving {
                    continue;
                }
                w.state = match report {
                    Report::Idle => State::Idle,
                    Report::Busy => State::Busy,
                    Report::Retiring => {
                        tracing::info!("worker {pid}: reached maxrequests, recycling it");
                        State::Leaving
                    }
                };
            }
        }
    }

    /// Collects every exited worker and logs how it died.
    fn reap(&mut self) {
        loop {
            let (pid, how) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, Died::Exit(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, Died::Signal(sig)),
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            };
            let raw = pid.as_raw();
            let Some(w) = self.workers.remove(&raw) else {
                // A worker of the previous image (after a reload).
                tracing::debug!("old worker {raw} {how}");
                continue;
            };
            let expected = w.state == State::Leaving && how == Died::Exit(0);
            if expected {
                tracing::debug!("worker {raw} {how}");
            } else {
                tracing::warn!("worker {raw} {how}; starting a replacement");
                if w.started.elapsed() < CRASH_BACKOFF {
                    self.spawn_after = Instant::now() + CRASH_BACKOFF;
                }
            }
        }
    }

    fn send(&mut self, pid: i32, sig: Signal) {
        if let Some(w) = self.workers.get_mut(&pid) {
            w.state = State::Leaving;
        }
        let _ = kill(Pid::from_raw(pid), sig);
    }

    fn signal_all(&self, sig: Signal) {
        for &pid in self.workers.keys() {
            let _ = kill(Pid::from_raw(pid), sig);
        }
    }

    /// Stops every worker with `sig`, waits up to `grace` for them, then kills the rest.
    ///
    /// The master's handle on the listener closes first: once the workers have closed theirs
    /// (as soon as they get the signal) new connections are refused, and a new server may
    /// bind the address, while requests in flight finish. The socket file is removed (if it
    /// is still ours) when the workers are gone.
    fn stop(mut self, sig: Signal, grace: Duration) -> Exit {
        let _guard = self.listener.take().and_then(StdListener::close);
        let pids: Vec<i32> = self.workers.keys().copied().collect();
        for pid in pids {
            self.send(pid, sig);
        }
        for pid in std::mem::take(&mut self.retire) {
            let _ = kill(pid, sig);
        }
        let deadline = Instant::now() + grace;
        while !self.workers.is_empty() && Instant::now() < deadline {
            let mut fds = [PollFd::new(self.signals.as_fd(), PollFlags::POLLIN)];
            let _ = poll(&mut fds, PollTimeout::from(100u16));
            while let Ok(Some(_)) = self.signals.read_signal() {}
            self.reap();
        }
        if self.workers.is_empty() {
            return Exit::Graceful;
        }
        tracing::warn!(
            "{} worker(s) still running after {}s: killing them",
            self.workers.len(),
            grace.as_secs()
        );
        self.signal_all(Signal::SIGKILL);
        let kill_deadline = Instant::now() + Duration::from_secs(1);
        while !self.workers.is_empty() && Instant::now() < kill_deadline {
            std::thread::sleep(Duration::from_millis(10));
            self.reap();
        }
        Exit::Forced
    }

    /// Re-executes this binary in place (same pid), keeping the listener open and naming the
    /// current workers so the new image retires them. Returns only on failure.
    fn reexec(&mut self) -> io::Error {
        let Some(listener) = &self.listener else {
            return io::Error::other("the listener is closed: stopping");
        };
        let fd = match listener.keep_across_exec() {
            Ok(fd) => fd,
            Err(e) => return e,
        };
        let mut pids: Vec<String> = self.workers.keys().map(ToString::to_string).collect();
        pids.extend(self.retire.iter().map(|p| p.as_raw().to_string()));
        tracing::info!(
            "SIGHUP: re-executing {} (workers {} finish their requests)",
            self.image.exe.display(),
            pids.join(",")
        );
        std::env::set_var(REEXEC_FD_ENV, fd.to_string());
        std::env::set_var(RETIRE_PIDS_ENV, pids.join(","));
        let err = sys::exec(&self.image.exe, &self.image.args);
        // Still here: the old image keeps serving.
        std::env::remove_var(REEXEC_FD_ENV);
        std::env::remove_var(RETIRE_PIDS_ENV);
        if let Err(e) = listener
            .keep_across_exec()
            .and_then(|fd| sys::set_cloexec(fd, true))
        {
            tracing::warn!("cannot restore close-on-exec on the listener: {e}");
        }
        err
    }
}

/// How a worker ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Died {
    Exit(i32),
    Signal(Signal),
}

impl std::fmt::Display for Died {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exit(code) => write!(f, "exited with status {code}"),
            Self::Signal(sig) => write!(f, "was killed by {sig}"),
        }
    }
}

/// `maxrequests` plus up to an eighth more, different per worker, so workers started
/// together do not all recycle at the same moment (gunicorn's `max_requests_jitter`).
fn jittered(max: u64) -> u64 {
    if max == 0 {
        return 0;
    }
    let spread = max / 8;
    if spread == 0 {
        return max;
    }
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    max + u64::from(seed) % (spread + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip() {
        for r in [Report::Idle, Report::Busy, Report::Retiring] {
            assert_eq!(
                Report::decode(&r.encode(0x0102_0304)),
                Some((r, 0x0102_0304))
            );
        }
        assert_eq!(Report::decode(&[b'X', 0, 0, 0, 0, 0, 0, 1]), None);
    }

    #[test]
    fn jitter_stays_within_an_eighth() {
        assert_eq!(jittered(0), 0);
        assert_eq!(jittered(1), 1);
        assert_eq!(jittered(7), 7);
        for _ in 0..100 {
            let j = jittered(800);
            assert!((800..=900).contains(&j), "{j}");
        }
    }
}
