//! `method=prefork` (Django's default): a master that forks workers and keeps them in number.
//!
//! The master binds the listener, then forks workers **before any tokio runtime or other
//! thread exists** (a fork copies only the calling thread; locks held by others would stay
//! locked forever in the child) and never runs handler code itself. It stays single-threaded
//! for its whole life: signals arrive through a `signalfd`, worker reports through one pipe,
//! and a `poll` loop serves both, so it can fork again at any time.
//!
//! Each worker builds its own current-thread runtime and accepts on the shared listener;
//! the runtime gives the CPU away once before it sleeps (`sys::give_way`), so a
//! busy web server's next connection usually finds the worker still awake.
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
//! A worker that cannot start (its runtime cannot be built, its listener cannot be
//! registered) would fail the same way on every retry. While no worker has served yet, the
//! master therefore gives up after [`BOOT_FAILURES`] such deaths: it stops what is left and
//! [`Master::run`] fails, so the process exits 1 instead of forking forever while a
//! daemonizing start or systemd waits for a readiness that never comes. Once a worker has
//! served, a crash loop only backs off ([`CRASH_BACKOFF`]): it must not take down a pool that
//! is serving. After a reload (HUP) the previous image's workers count as serving: if the new
//! image's workers cannot start, the reload is reported failed and the previous workers go
//! on serving until they exit; only then does the master give up.
//!
//! | signal to the master | effect |
//! |---|---|
//! | TERM, INT | workers finish their requests (bounded by `graceful_timeout=`), then exit 0 |
//! | QUIT | workers stop at once |
//! | HUP | re-exec the binary in place (same pid, listener kept open): new code is loaded, new workers start, then the old ones finish and exit (if the new ones cannot start, the old ones serve on) |
//! | (none) | `touch_reload=FILE`: the master looks at the file once per [`TOUCH_RELOAD_INTERVAL`]; when it changed, the same as HUP |
//! | USR1 | reopen `outlog=`/`errlog=`, in the master and every worker |
//! | TTIN, TTOU | one idle worker more / fewer (`minspare` and `maxspare` move together; kept across HUP) |

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::{pipe2, Pid};

use crate::config::Config;
use crate::listen::StdListener;
use crate::process::control::{Control, TouchReload, CONTROL_SIGNALS, TOUCH_RELOAD_INTERVAL};
use crate::process::image::Image;
use crate::process::threaded::Exit;
use crate::sys::{self, Forked};

/// Environment variable naming the workers of the previous image after a reload: the
/// re-executed master stops them once its own workers serve.
pub const RETIRE_PIDS_ENV: &str = "APPSERVER_RETIRE_PIDS";

/// Environment variable carrying `MINSPARE,MAXSPARE` across a reload, so that SIGTTIN and
/// SIGTTOU adjustments survive it: the command line the new image parses still holds the
/// values they replaced.
pub const SPARE_ENV: &str = "APPSERVER_SPARE";

/// How many workers may fail before any worker is ready (each dying, or failing to fork,
/// before it reports idle) until the master gives up and exits 1, as gunicorn's arbiter halts
/// on a worker boot error.
///
/// A worker that cannot start fails the same way on every retry, and a master that forks
/// replacements forever never becomes ready: a daemonizing start would wait for it forever,
/// and so would systemd. More than one, so that a worker killed during the start (the OOM
/// killer, a stray `kill`) does not abort it; few, so that a start that cannot work fails
/// within about a second ([`CRASH_BACKOFF`] between rounds of `minspare` workers).
pub const BOOT_FAILURES: u32 = 3;

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
    /// Workers of the previous image (after a reload) that have not exited yet: told to stop
    /// once one of ours serves, serving on meanwhile.
    previous: Vec<Pid>,
    /// Whether `previous` were told to stop.
    previous_stopping: bool,
    /// Workers that failed before any worker of this image was ready, and how the last one
    /// did: while no worker serves, [`BOOT_FAILURES`] of them stop the master.
    boot_failures: u32,
    last_boot_failure: String,
    /// Whether this image's workers were reported unable to start while the previous
    /// image's workers serve on (a failed reload).
    reload_failed: bool,
    spawn_after: Instant,
    /// Since when more than `maxspare` workers have been idle.
    surplus_since: Option<Instant>,
    announced: bool,
    /// `touch_reload=`: the watched file, and when to look at it next.
    touch: Option<(TouchReload, Instant)>,
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
        let previous = inherited_workers();
        let (minspare, maxspare) = inherited_spare(config);
        Ok(Self {
            minspare,
            maxspare,
            config,
            listener: Some(listener),
            image,
            workers: HashMap::new(),
            status_rd: File::from(rd),
            status_wr: wr,
            signals,
            previous,
            previous_stopping: false,
            boot_failures: 0,
            last_boot_failure: String::new(),
            reload_failed: false,
            spawn_after: Instant::now(),
            surplus_since: None,
            announced: false,
            touch: config.touch_reload.clone().map(|path| {
                (
                    TouchReload::new(path),
                    Instant::now() + TOUCH_RELOAD_INTERVAL,
                )
            }),
        })
    }

    /// Runs until stopped. `worker` is the body of every worker process (it gets its own
    /// handle on the listener, the status pipe and its jittered request budget, 0 meaning no
    /// limit, and returns the exit code); `ready` runs once, when the first worker serves.
    ///
    /// Fails when the workers cannot start (see [`BOOT_FAILURES`]), after stopping them.
    pub fn run(
        mut self,
        worker: &mut WorkerMain<'_>,
        ready: &mut dyn FnMut(),
        notify: &dyn Fn(&str),
    ) -> io::Result<Exit> {
        loop {
            self.maintain(worker);
            let mut fds = [
                PollFd::new(self.signals.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.status_rd.as_fd(), PollFlags::POLLIN),
            ];
            // Woken for touch_reload= too, so the file is looked at once per interval.
            let tick = match &self.touch {
                Some((_, due)) => TICK.min(due.saturating_duration_since(Instant::now())),
                None => TICK,
            };
            match poll(
                &mut fds,
                PollTimeout::try_from(tick).unwrap_or(PollTimeout::MAX),
            ) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
            self.read_reports();
            if let Some(listener) = &self.listener {
                crate::status::sample_listen_queue(listener.as_fd());
            }
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
                    Control::Reload => self.reload("SIGHUP", notify),
                    Control::ReopenLogs => {
                        if let Err(e) = crate::daemon::reopen_logs(self.config) {
                            tracing::error!("SIGUSR1: cannot reopen logs: {e}");
                        }
                        if let Err(e) = crate::status::reopen_logs() {
                            tracing::error!("SIGUSR1: cannot reopen the access log: {e}");
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
            if let Some(e) = self.boot_failed(notify) {
                let _ = self.stop(Signal::SIGTERM, QUIT_GRACE);
                return Err(e);
            }
            if let Some(why) = self.touched() {
                self.reload(&why, notify);
            }
        }
    }

    /// Looks at the `touch_reload=` file when it is time to: what to log as the reason for a
    /// reload when it changed.
    fn touched(&mut self) -> Option<String> {
        let (watch, due) = self.touch.as_mut()?;
        let now = Instant::now();
        if now < *due {
            return None;
        }
        *due = now + TOUCH_RELOAD_INTERVAL;
        watch
            .changed()
            .then(|| format!("touch_reload: {} changed", watch.path().display()))
    }

    /// A graceful reload (HUP, `touch_reload=`): re-executes the master; on failure the
    /// current image goes on serving. `why` starts the log lines.
    fn reload(&mut self, why: &str, notify: &dyn Fn(&str)) {
        notify("RELOADING=1");
        let e = self.reexec(why);
        tracing::error!("{why}: cannot re-execute {}: {e}", self.image.exe.display());
        notify("READY=1");
    }

    /// Whether a worker serves: one of ours has been ready, or the previous image's are still
    /// at work (after a reload). Until then, failing workers count towards [`BOOT_FAILURES`].
    fn serving(&self) -> bool {
        self.announced || (!self.previous.is_empty() && !self.previous_stopping)
    }

    /// Counts a worker that failed before any was ready.
    fn boot_failure(&mut self, what: String) {
        if !self.announced {
            self.boot_failures += 1;
            self.last_boot_failure = what;
        }
    }

    /// Whether the master is to give up: [`BOOT_FAILURES`] workers failed and none serves.
    fn giving_up(&self) -> bool {
        !self.serving() && self.boot_failures >= BOOT_FAILURES
    }

    /// The error to stop with once the workers cannot start. After a reload, while the
    /// previous workers still serve, the reload is reported failed instead (once; systemd
    /// gets its `READY=1`) and their serving goes on.
    fn boot_failed(&mut self, notify: &dyn Fn(&str)) -> Option<io::Error> {
        if self.announced || self.boot_failures < BOOT_FAILURES {
            return None;
        }
        if self.serving() {
            if !self.reload_failed {
                self.reload_failed = true;
                let pids: Vec<String> = self.previous.iter().map(ToString::to_string).collect();
                tracing::error!(
                    "reload failed: the new workers cannot start ({} in a row failed, the last: \
                     {}); the previous workers {} serve on until they exit, and new workers \
                     are tried every {}s: fix the cause, then send HUP again (or stop the \
                     server)",
                    self.boot_failures,
                    self.last_boot_failure,
                    pids.join(","),
                    CRASH_BACKOFF.as_secs()
                );
                notify("READY=1\nSTATUS=reload failed: the new workers cannot start");
            }
            return None;
        }
        let hint = match (&self.config.errlog, self.config.daemonize) {
            (_, false) => String::new(),
            (Some(path), true) => format!("; their messages are in {}", path.display()),
            (None, true) => "; their messages were discarded (no errlog=): set errlog= or \
                             start with daemonize=false to see them"
                .to_owned(),
        };
        let gone = if self.reload_failed {
            ", and the previous workers have exited"
        } else {
            ""
        };
        Some(io::Error::other(format!(
            "the workers cannot start: {} in a row failed before one was ready (the last: \
             {}){gone}{hint}",
            self.boot_failures, self.last_boot_failure
        )))
    }

    /// Spawns or stops workers to bring the idle count within `minspare..=maxspare`.
    fn maintain(&mut self, worker: &mut WorkerMain<'_>) {
        let idle = self.count(|s| matches!(s, State::Starting | State::Idle));
        let serving = self.count(|s| s != State::Leaving);
        let wanted = self.minspare.max(usize::from(serving == 0));
        if idle < wanted && serving < self.config.maxchildren {
            if Instant::now() < self.spawn_after {
                return;
            }
            for _ in 0..(wanted - idle).min(self.config.maxchildren - serving) {
                // A failed fork (EAGAIN: a process limit, memory) is retried like a crash at
                // startup, not the end of a pool that may be serving.
                if let Err(e) = self.spawn(worker) {
                    tracing::error!(
                        "cannot fork a worker: {e}; trying again in {}s",
                        CRASH_BACKOFF.as_secs()
                    );
                    self.boot_failure(format!("fork failed: {e}"));
                    self.spawn_after = Instant::now() + CRASH_BACKOFF;
                    break;
                }
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
        if !self.previous_stopping && self.workers.values().any(|w| w.state == State::Idle) {
            self.previous_stopping = true;
            for &pid in &self.previous {
                let _ = kill(pid, Signal::SIGTERM);
            }
        }
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
        super::hooks::before_fork();
        let forked = sys::fork();
        super::hooks::after_fork(matches!(forked, Ok(Forked::Child)));
        match forked? {
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
                    worker_failed(&e);
                    std::process::exit(1);
                }
                // The app starts here, after the fork (app=wsgi: the interpreter and the import),
                // so a failure is this worker's, reported like any worker that cannot start.
                if let Err(e) = super::hooks::serve_start() {
                    worker_failed(&e);
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
                        worker_failed(&e);
                        1
                    }
                };
                super::hooks::serve_stop();
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
            crate::status::worker_exited(raw.unsigned_abs());
            let Some(w) = self.workers.remove(&raw) else {
                // A worker of the previous image (after a reload).
                self.previous.retain(|p| *p != pid);
                if !self.reload_failed || self.previous_stopping {
                    tracing::debug!("old worker {raw} {how}");
                } else {
                    // Nothing replaces it: the new image's workers cannot start.
                    tracing::warn!(
                        "old worker {raw} {how}; {} old worker(s) left serving",
                        self.previous.len()
                    );
                }
                continue;
            };
            let expected = w.state == State::Leaving && how == Died::Exit(0);
            if expected {
                tracing::debug!("worker {raw} {how}");
            } else {
                if w.state == State::Starting {
                    self.boot_failure(format!("worker {raw} {how}"));
                }
                // Giving up: the error that follows names this worker.
                if !self.giving_up() {
                    tracing::warn!("worker {raw} {how}; starting a replacement");
                }
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

    /// Signals every worker, the previous image's included.
    fn signal_all(&self, sig: Signal) {
        for &pid in self.workers.keys() {
            let _ = kill(Pid::from_raw(pid), sig);
        }
        for &pid in &self.previous {
            let _ = kill(pid, sig);
        }
    }

    /// Workers not yet exited, the previous image's included.
    fn alive(&self) -> usize {
        self.workers.len() + self.previous.len()
    }

    /// Stops every worker with `sig`, the previous image's included, waits up to `grace` for
    /// them, then kills the rest. The master exits after its last worker: under systemd
    /// (`KillMode=mixed`) whatever outlives it is killed.
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
        for &pid in &self.previous {
            let _ = kill(pid, sig);
        }
        let deadline = Instant::now() + grace;
        while self.alive() > 0 && Instant::now() < deadline {
            let mut fds = [PollFd::new(self.signals.as_fd(), PollFlags::POLLIN)];
            let _ = poll(&mut fds, PollTimeout::from(100u16));
            while let Ok(Some(_)) = self.signals.read_signal() {}
            self.reap();
        }
        if self.alive() == 0 {
            return Exit::Graceful;
        }
        tracing::warn!(
            "{} worker(s) still running after {}s: killing them",
            self.alive(),
            grace.as_secs()
        );
        self.signal_all(Signal::SIGKILL);
        let kill_deadline = Instant::now() + Duration::from_secs(1);
        while self.alive() > 0 && Instant::now() < kill_deadline {
            std::thread::sleep(Duration::from_millis(10));
            self.reap();
        }
        Exit::Forced
    }

    /// Re-executes this binary in place (same pid), keeping the listener open, naming the
    /// current workers so the new image retires them, and passing the pool bounds on (SIGTTIN
    /// and SIGTTOU may have moved them) and the `touch_reload=` file's state. Returns only on
    /// failure.
    fn reexec(&mut self, why: &str) -> io::Error {
        let Some(listener) = &self.listener else {
            return io::Error::other("the listener is closed: stopping");
        };
        let mut pids: Vec<String> = self.workers.keys().map(ToString::to_string).collect();
        pids.extend(self.previous.iter().map(ToString::to_string));
        tracing::info!(
            "{why}: re-executing {} (workers {} finish their requests)",
            self.image.exe.display(),
            pids.join(",")
        );
        let mut env = vec![
            (RETIRE_PIDS_ENV, pids.join(",")),
            (SPARE_ENV, format!("{},{}", self.minspare, self.maxspare)),
        ];
        env.extend(self.touch.as_ref().and_then(|(watch, _)| watch.handover()));
        // Still here on failure: the old image keeps serving.
        self.image.reexec(listener, env)
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

/// The previous image's workers named in [`RETIRE_PIDS_ENV`] (which is removed): those that
/// are children of this process, as they are after a reload. Anything else in the variable
/// (a value leaked from another environment) is ignored, so no other process is ever
/// signalled.
fn inherited_workers() -> Vec<Pid> {
    let Some(value) = std::env::var_os(RETIRE_PIDS_ENV) else {
        return Vec::new();
    };
    std::env::remove_var(RETIRE_PIDS_ENV);
    let value = value.to_string_lossy();
    let (ours, others): (Vec<Pid>, Vec<Pid>) = parse_pids(&value).into_iter().partition(|&pid| {
        // WNOWAIT leaves an exited worker to be reaped (and logged) as usual.
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        waitid(Id::Pid(pid), flags).is_ok()
    });
    let named = value.split(',').filter(|p| !p.is_empty()).count();
    if !others.is_empty() || ours.len() != named {
        tracing::warn!("{RETIRE_PIDS_ENV}={value:?}: ignoring what names no child process");
    }
    ours
}

/// The positive pids of a comma-separated list; anything else is dropped (0 and negative
/// numbers would signal process groups).
fn parse_pids(value: &str) -> Vec<Pid> {
    value
        .split(',')
        .filter_map(|p| p.parse::<i32>().ok())
        .filter(|&p| p > 0)
        .map(Pid::from_raw)
        .collect()
}

/// The pool bounds to start with: those a reload carried over in [`SPARE_ENV`] (which is
/// removed), or else the command line's. A malformed value is logged and ignored.
fn inherited_spare(config: &Config) -> (usize, usize) {
    let configured = (config.minspare, config.maxspare);
    let Some(value) = std::env::var_os(SPARE_ENV) else {
        return configured;
    };
    std::env::remove_var(SPARE_ENV);
    match value
        .to_str()
        .and_then(|v| parse_spare(v, config.maxchildren))
    {
        Some(spare) => {
            if spare != configured {
                tracing::info!(
                    "minspare={} maxspare={}: kept across the reload (set by SIGTTIN/SIGTTOU)",
                    spare.0,
                    spare.1
                );
            }
            spare
        }
        None => {
            tracing::warn!(
                "{SPARE_ENV}={value:?} is not MINSPARE,MAXSPARE with MINSPARE <= MAXSPARE, \
                 1 <= MAXSPARE <= maxchildren={}: ignored, using minspare={} maxspare={}",
                config.maxchildren,
                configured.0,
                configured.1
            );
            configured
        }
    }
}

/// `MINSPARE,MAXSPARE` as [`SPARE_ENV`] carries them, if they are bounds SIGTTIN/SIGTTOU
/// could have set: `minspare <= maxspare`, `1 <= maxspare <= maxchildren`.
fn parse_spare(value: &str, maxchildren: usize) -> Option<(usize, usize)> {
    let (min, max) = value.split_once(',')?;
    let number = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<usize>().ok())
            .flatten()
    };
    let (min, max) = (number(min)?, number(max)?);
    (min <= max && (1..=maxchildren).contains(&max)).then_some((min, max))
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

/// Says on stderr why this worker cannot go on, in one write: the master and the workers
/// share stderr, and a line written in pieces (as `eprintln!` does with its arguments) can
/// get another process's line in its middle.
pub fn worker_failed(e: &dyn std::fmt::Display) {
    use std::io::Write as _;
    let line = format!("appserver: worker {}: {e}\n", std::process::id());
    let _ = std::io::stderr().write_all(line.as_bytes());
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
    fn spare_bounds_from_a_reload() {
        assert_eq!(parse_spare("2,5", 50), Some((2, 5)));
        assert_eq!(parse_spare("0,1", 50), Some((0, 1)));
        assert_eq!(parse_spare("7,7", 50), Some((7, 7)));
        // maxspare at maxchildren, and one over.
        assert_eq!(parse_spare("3,10", 10), Some((3, 10)));
        assert_eq!(parse_spare("3,11", 10), None);
        // minspare above maxspare, and maxspare 0 (TTOU never goes below 1).
        assert_eq!(parse_spare("4,3", 10), None);
        assert_eq!(parse_spare("0,0", 10), None);
        for bad in [
            "", "3", "3,", ",3", "3,4,5", " 3,4", "3,4\n", "+3,4", "-1,4", "x,4",
        ] {
            assert_eq!(parse_spare(bad, 10), None, "{bad:?}");
        }
    }

    #[test]
    fn pids_from_a_reload() {
        let raw = |v: &str| -> Vec<i32> { parse_pids(v).iter().map(|p| p.as_raw()).collect() };
        assert_eq!(raw("12,34"), [12, 34]);
        assert_eq!(raw(""), Vec::<i32>::new());
        // 0 and -1 would signal a process group, or every process.
        assert_eq!(raw("0,-1,x,56,"), [56]);
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
