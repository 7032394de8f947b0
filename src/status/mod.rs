//! Observability: the scoreboard every process shares, and the ways to read it and log from
//! it (design.md §6).
//!
//! - [`scoreboard`]: the counters and per-worker slots, in memory shared across fork and kept
//!   across a reload's re-exec.
//! - `render`: the scoreboard as text, JSON and OpenMetrics.
//! - [`layer`]: [`Observed`], the handler wrapper that counts requests, answers
//!   `status_path=`, writes the access log and the slow-request log.
//! - `accesslog`: the buffered `accesslog=` writer.
//! - `http`: the `metrics=` listener (hyper), answering `GET /metrics` and `GET /status`.
//! - [`client`]: `appserver status ADDRESS`, the table.
//!
//! The connection engine, the accept loop and the process models only call [`recorder`]
//! (a copyable handle; every method is a few relaxed atomic adds, and a no-op when no
//! scoreboard was set up, as in unit tests) and the `worker_*` functions; none of them knows
//! how the figures are kept or shown.
//!
//! # What survives a reload
//!
//! A reload re-executes the process (prefork master on HUP, a threaded server on HUP or
//! `maxrequests=`); the scoreboard's memory file and the `metrics=` listener are kept open
//! across the exec (`handover`) and taken back by the new image, so every total carries on
//! and the previous image's workers, still finishing their requests, write into the same
//! memory. `appserver_reloads_total` counts the reloads. Nothing resets but the access log's
//! unwritten buffer, which is flushed before the exec.

pub(crate) mod accesslog;
pub mod client;
pub(crate) mod http;
pub mod layer;
pub(crate) mod queue;
pub(crate) mod render;
pub mod scoreboard;
mod stream;

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

pub use layer::Observed;
pub use scoreboard::{Scoreboard, Snapshot, WorkerState, CLOSE_REASONS};
pub use stream::Metered;

use crate::config::Config;
use crate::sys::{self, StatusFd};
use scoreboard::Slot;

/// Environment variable naming the scoreboard's memory file a re-executed image takes back.
pub const SCOREBOARD_FD_ENV: &str = "APPSERVER_SCOREBOARD_FD";

/// Environment variable naming the `metrics=` listener a re-executed image takes back.
pub const METRICS_FD_ENV: &str = "APPSERVER_METRICS_FD";

/// What this process serves, shown with the figures.
#[derive(Clone, Debug, Default)]
struct Server {
    method: &'static str,
    protocol: &'static str,
    listen: String,
}

static BOARD: OnceLock<scoreboard::Mapped> = OnceLock::new();
static SLOT: OnceLock<Slot> = OnceLock::new();
static SERVER: OnceLock<Server> = OnceLock::new();
static METRICS: OnceLock<http::MetricsListener> = OnceLock::new();

/// Sets up this process's scoreboard (taking back the one a previous image kept across exec,
/// else making a new one) and the `metrics=` listener. Call once, before forking workers or
/// starting threads. A scoreboard that cannot be made is logged, and the server serves on
/// without figures; a `metrics=` address that cannot be bound is an error.
pub(crate) fn init(config: &Config, listen: &str) -> io::Result<()> {
    let _ = SERVER.set(Server {
        method: config.method.name(),
        protocol: config.protocol.name(),
        listen: listen.to_owned(),
    });
    let inherited = take_env_fd(SCOREBOARD_FD_ENV, StatusFd::Scoreboard);
    let mapped = match inherited.map(scoreboard::Scoreboard::inherit) {
        Some(Ok(mapped)) => Ok(mapped),
        Some(Err(e)) => {
            tracing::warn!("the previous image's scoreboard cannot be used ({e}): starting afresh");
            Scoreboard::create()
        }
        None => Scoreboard::create(),
    };
    match mapped {
        Ok(mapped) => {
            let _ = BOARD.set(mapped);
        }
        Err(e) => tracing::error!("cannot make the status scoreboard: {e}; serving without it"),
    }
    if let Some(addr) = &config.metrics {
        let listener = match take_env_fd(METRICS_FD_ENV, StatusFd::Metrics) {
            Some(fd) => http::MetricsListener::from_fd(fd, addr),
            None => http::MetricsListener::bind(addr)?,
        };
        let _ = METRICS.set(listener);
    }
    accesslog::init(config)?;
    Ok(())
}

fn take_env_fd(name: &str, kind: StatusFd) -> Option<OwnedFd> {
    let value = std::env::var(name).ok();
    std::env::remove_var(name);
    let fd = value?.parse().ok()?;
    match sys::take_status_fd(fd, kind) {
        Ok(fd) => Some(fd),
        Err(e) => {
            tracing::warn!("{name}={fd}: {e}: ignored");
            None
        }
    }
}

/// Before a reload's exec: keeps the scoreboard and the `metrics=` listener open across it,
/// flushes the access log, and returns the environment naming them for the new image.
pub(crate) fn handover() -> Vec<(&'static str, String)> {
    accesslog::flush();
    let mut env = Vec::new();
    let mut keep = |name: &'static str, fd: BorrowedFd<'_>| {
        let raw = fd.as_raw_fd();
        match sys::set_cloexec(raw, false) {
            Ok(()) => env.push((name, raw.to_string())),
            Err(e) => tracing::warn!("cannot keep {name} across the reload: {e}"),
        }
    };
    if let Some(mapped) = BOARD.get() {
        keep(SCOREBOARD_FD_ENV, mapped.file.as_fd());
    }
    if let Some(metrics) = METRICS.get() {
        keep(METRICS_FD_ENV, metrics.as_fd());
    }
    env
}

/// After a failed exec: the descriptors [`handover`] kept are close-on-exec again, so a CGI
/// script started later does not inherit them.
pub(crate) fn handover_failed() {
    if let Some(mapped) = BOARD.get() {
        let _ = sys::set_cloexec(mapped.file.as_raw_fd(), true);
    }
    if let Some(metrics) = METRICS.get() {
        let _ = sys::set_cloexec(metrics.as_fd().as_raw_fd(), true);
    }
}

/// The recording handle of this process.
pub fn recorder() -> Recorder {
    Recorder {
        board: BOARD.get().map(|m| m.board),
        slot: SLOT.get().copied(),
    }
}

/// Where the connection engine, the accept loop and the process models report what happens;
/// copy it freely. Every method is a no-op without a scoreboard.
#[derive(Clone, Copy, Debug, Default)]
pub struct Recorder {
    board: Option<Scoreboard>,
    slot: Option<Slot>,
}

impl Recorder {
    /// A connection was accepted (and allowed).
    pub fn connection_opened(&self) {
        if let Some(b) = &self.board {
            b.connection_opened();
        }
        if let Some(s) = &self.slot {
            s.state_if_idle(WorkerState::Reading);
        }
    }

    /// A connection ended, normally or not.
    pub fn connection_closed(&self) {
        if let Some(b) = &self.board {
            b.connection_closed();
        }
        if let Some(s) = &self.slot {
            s.connection_closed();
        }
    }

    /// A connection ended early, for `reason` (the engine's name for it, one of
    /// [`CLOSE_REASONS`]), besides [`Self::connection_closed`].
    pub fn connection_failed(&self, reason: &str) {
        if let Some(b) = &self.board {
            b.connection_failed(reason);
        }
    }

    /// A request was refused as overloaded (its process ran all the requests it may).
    pub fn overloaded(&self) {
        if let Some(b) = &self.board {
            b.overloaded();
        }
    }

    /// Bytes read from a connection.
    pub fn bytes_in(&self, n: usize) {
        if let Some(b) = &self.board {
            b.bytes_in(n as u64);
        }
    }

    /// Bytes written to a connection.
    pub fn bytes_out(&self, n: usize) {
        if let Some(b) = &self.board {
            b.bytes_out(n as u64);
        }
    }

    /// A request started: counted in flight and shown as this worker's current request.
    pub fn request_started(&self, method: &[u8], uri: &[u8]) {
        if let Some(b) = &self.board {
            b.request_started();
        }
        if let Some(s) = &self.slot {
            s.request_started(method, uri);
        }
    }

    /// The request's response head is out.
    pub fn responding(&self) {
        if let Some(s) = &self.slot {
            s.responding();
        }
    }

    /// A request finished with `status` after `elapsed`.
    pub fn request_finished(&self, protocol: &str, status: u16, elapsed: Duration) {
        if let Some(s) = &self.slot {
            s.request_finished();
        }
        if let Some(b) = &self.board {
            b.request_finished(protocol, status, elapsed);
        }
    }

    /// A request the server answered itself without the app (a 400 for a request it could
    /// not build): started and finished at once.
    pub fn answered_by_server(&self, protocol: &str, status: u16) {
        if let Some(b) = &self.board {
            b.request_started();
            b.request_finished(protocol, status, Duration::ZERO);
        }
    }
}

/// This serving process's pid, set by [`worker_started`]: the access log writes it on every
/// line, and asking the kernel each time is a system call (glibc does not cache `getpid`).
/// Set after the fork, in the process that serves, so a worker never shows its master's.
static PID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// This process's pid: the one [`worker_started`] recorded, else asked of the kernel.
pub(crate) fn pid() -> u32 {
    match PID.load(std::sync::atomic::Ordering::Relaxed) {
        0 => std::process::id(),
        pid => pid,
    }
}

/// A worker process (or a threaded server) starts serving: it claims its slot.
pub(crate) fn worker_started() {
    let pid = std::process::id();
    PID.store(pid, std::sync::atomic::Ordering::Relaxed);
    if let Some(mapped) = BOARD.get() {
        if let Some(slot) = mapped.board.claim_slot(pid) {
            let _ = SLOT.set(slot);
        }
    }
}

/// This worker is finishing its requests before it exits.
pub(crate) fn worker_stopping() {
    if let Ok(mut fd) = QUEUE_LISTENER.lock() {
        fd.take();
    }
    if let Some(slot) = SLOT.get() {
        slot.state(WorkerState::Stopping);
    }
}

/// This worker exits: the access log is flushed and its slot freed.
pub(crate) fn worker_exiting() {
    accesslog::flush();
    if let Some(slot) = SLOT.get() {
        slot.release();
    }
}

/// The master reaped worker `pid`: its slot is freed if it did not free it itself.
pub(crate) fn worker_exited(pid: u32) {
    if let Some(mapped) = BOARD.get() {
        mapped.board.release_pid(pid);
    }
}

/// Measures the listen queue of `listener` into the scoreboard (prefork: the master, on
/// every turn of its loop; threaded: a task, every [`queue::SAMPLE_INTERVAL`]).
pub(crate) fn sample_listen_queue(listener: BorrowedFd<'_>) {
    if let (Some(mapped), Some((waiting, limit))) = (BOARD.get(), queue::measure(listener)) {
        mapped.board.listen_queue(waiting, limit);
    }
}

/// The threaded server's second handle on its listener, for measuring the queue; dropped
/// as soon as a stop begins ([`worker_stopping`]): a handle left open would keep the socket
/// listening, and the socket file (which is removed only once nobody listens) behind.
static QUEUE_LISTENER: Mutex<Option<OwnedFd>> = Mutex::new(None);

/// A threaded server measures its listen queue every [`queue::SAMPLE_INTERVAL`] (a prefork
/// master measures its own on every turn of its loop). Call inside the runtime.
pub(crate) fn watch_listen_queue(listener: &impl AsFd) {
    let Ok(fd) = listener.as_fd().try_clone_to_owned() else {
        return;
    };
    if let Ok(mut slot) = QUEUE_LISTENER.lock() {
        *slot = Some(fd);
    }
    tokio::spawn(async {
        let mut tick = tokio::time::interval(queue::SAMPLE_INTERVAL);
        loop {
            tick.tick().await;
            let Ok(guard) = QUEUE_LISTENER.lock() else {
                return;
            };
            match guard.as_ref() {
                Some(fd) => sample_listen_queue(fd.as_fd()),
                None => return,
            }
        }
    });
}

/// Starts this process's part of the status machinery on its runtime: the `metrics=` listener
/// and the access log's flusher. Call inside the runtime of every serving process.
pub(crate) fn spawn_tasks() {
    if let Some(metrics) = METRICS.get() {
        http::spawn(metrics);
    }
    accesslog::spawn_flusher();
}

/// Reopens the access log (SIGUSR1), writing what is buffered first.
pub(crate) fn reopen_logs() -> io::Result<()> {
    accesslog::reopen()
}

/// Everything the scoreboard holds now, with what this process knows about the server and
/// each worker's RSS; `None` without a scoreboard.
pub fn snapshot() -> Option<Snapshot> {
    let mapped = BOARD.get()?;
    let mut snap = mapped.board.snapshot();
    let server = SERVER.get().cloned().unwrap_or_default();
    snap.method = server.method;
    snap.protocol = server.protocol;
    snap.listen = server.listen;
    for w in &mut snap.workers {
        w.rss_bytes = rss_bytes(w.pid);
    }
    Some(snap)
}

/// Resident set size of `pid` from `/proc/PID/statm` (pages × page size).
fn rss_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// What the criterion benchmarks measure (`benches/status.rs`); not an API.
#[doc(hidden)]
pub mod bench {
    use std::time::Duration;

    use super::scoreboard::{Scoreboard, Slot};

    /// An access log appending to `path`, buffered as `accesslog=` is.
    #[derive(Debug)]
    pub struct Log(super::accesslog::AccessLog);

    impl Log {
        /// Opens `path`.
        pub fn open(path: std::path::PathBuf, json: bool) -> std::io::Result<Self> {
            let format = if json {
                crate::config::AccessLogFormat::Json
            } else {
                crate::config::AccessLogFormat::Combined
            };
            super::accesslog::AccessLog::open(path, format).map(Self)
        }

        /// Logs one typical request (formatted, buffered, written every 64 KiB).
        pub fn log_one(&self) {
            super::accesslog::bench_log(&self.0);
        }
    }

    /// Sets up this process's scoreboard and worker slot, and the access log at `accesslog`,
    /// as `runfcgi` does: what the end-to-end benchmark's observed variant runs with.
    pub fn install(accesslog: Option<std::path::PathBuf>) -> std::io::Result<()> {
        let _ = super::BOARD.set(Scoreboard::create()?);
        super::worker_started();
        if let Some(path) = accesslog {
            super::accesslog::install(super::accesslog::AccessLog::open(
                path,
                crate::config::AccessLogFormat::Combined,
            )?);
        }
        Ok(())
    }

    /// A scoreboard of its own, with a worker slot.
    #[derive(Debug)]
    pub struct Board {
        recorder: super::Recorder,
    }

    impl Board {
        /// A fresh scoreboard in shared memory.
        pub fn new() -> std::io::Result<Self> {
            let board: Scoreboard = Scoreboard::create()?.board;
            let slot: Option<Slot> = board.claim_slot(std::process::id());
            Ok(Self {
                recorder: super::Recorder {
                    board: Some(board),
                    slot,
                },
            })
        }

        /// Everything one request on its own connection records.
        pub fn one_request(&self) {
            let r = &self.recorder;
            r.connection_opened();
            r.bytes_in(600);
            r.request_started(b"GET", b"/articles/2026/12/some-article/?page=2");
            r.responding();
            r.bytes_out(5200);
            r.request_finished("fcgi", 200, Duration::from_micros(734));
            r.connection_closed();
        }
    }
}
