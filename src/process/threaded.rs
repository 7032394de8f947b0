//! `method=threaded`: one process, a multi-threaded tokio runtime.
//!
//! Each runtime thread runs an accept loop (a prefork worker's runtime has one thread). A loop
//! serves a new connection in place, on its own task, and gives it a task of its own only if
//! it has to wait, so a handler that holds its thread there stops that loop only. The loops
//! accept only while the process has room for another request (`maxchildren` threaded,
//! `worker_requests` per prefork worker), so connections wait in the listen backlog, where
//! another worker can take them, instead of queueing behind a busy process. At most
//! `maxconns` connections are open: when all are, a new one evicts the one that has waited
//! longest for a request.
//! Signals map to [`Control`]: a graceful stop stops accepting, lets busy connections finish
//! within `graceful_timeout=`, then returns.
//!
//! The process reloads itself in place ([`Reload`]) on SIGHUP, when the `touch_reload=` file
//! changes, and after every `maxrequests=` requests: it stops accepting but keeps the listener open (new connections wait in its
//! backlog), finishes the requests in flight as a graceful stop does, then re-executes its
//! binary with the listener inherited, and the new image accepts the connections that waited.
//! The pid stays the same, so a web server that spawned the process (mod_fcgid) or a pidfile
//! still names it.

use std::future::Future;
use std::io;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::driver::{self, Shared, Slot, Slots};
use crate::listen::{AllowList, Listener, StdListener};
use crate::process::control::{
    Control, Signals, TouchReload, CONTROL_SIGNALS, TOUCH_RELOAD_INTERVAL,
};
use crate::process::image::Image;
use crate::Handler;

/// How long a graceful stop waits, at most, for connections it accepted but whose first bytes
/// were not read yet, before idle connections are closed.
///
/// A web server sends its request right after connecting, but the connection's task reads it
/// only after a turn of the runtime, and a driver closes a connection that holds no request
/// once shutdown is cancelled: a request accepted just before the stop would be lost (nginx
/// answers 502). So a graceful stop first stops accepting, then waits until every accepted
/// connection has read (microseconds, usually), then cancels shutdown. The bound only matters
/// for a peer that connects and sends nothing.
pub const FIRST_REQUEST_GRACE: Duration = Duration::from_millis(50);

/// How long a stopping accept loop waits for the next queued connection before it concludes
/// the listen backlog is empty: long enough for the runtime to see readiness the kernel has
/// already signalled, short enough not to delay a stop.
pub const BACKLOG_DRAIN_WAIT: Duration = Duration::from_millis(5);

/// The longest a stopping accept loop keeps taking queued connections: under steady load the
/// backlog never empties, and a stop must still happen.
pub const BACKLOG_DRAIN_LIMIT: Duration = Duration::from_millis(200);

/// How the accept loop runs; resolved from the configuration.
#[derive(Clone)]
pub struct ServeOptions {
    /// `maxconns=`: connections served at once.
    pub max_conns: usize,
    /// Who may connect (`allow=`, `FCGI_WEB_SERVER_ADDRS`).
    pub allow: AllowList,
    /// `graceful_timeout=`: how long a graceful stop waits for requests in flight.
    pub graceful_timeout: Duration,
    /// Reopens `outlog=`/`errlog=` on SIGUSR1.
    pub reopen_logs: Arc<dyn Fn() -> io::Result<()> + Send + Sync>,
    /// Tells the service manager about state changes (`STOPPING=1`).
    pub notify: Arc<dyn Fn(&str) + Send + Sync>,
    /// Cancelled to stop gracefully without a signal: a prefork worker that reached
    /// `maxrequests`.
    pub retire: CancellationToken,
    /// `threaded` or `prefork`, for log lines.
    pub method: &'static str,
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("max_conns", &self.max_conns)
            .field("allow", &self.allow)
            .field("graceful_timeout", &self.graceful_timeout)
            .finish_non_exhaustive()
    }
}

/// What a `method=threaded` server needs to reload itself in place: on SIGHUP, when the
/// `touch_reload=` file changes, or after `maxrequests=` requests. Never given to a prefork
/// worker: only its master reloads.
#[derive(Debug)]
pub struct Reload {
    /// The `touch_reload=` file, when one is watched.
    pub watch: Option<TouchReload>,
    /// `maxrequests=`: requests served before the process renews itself (0: never).
    pub max_requests: u64,
    /// The image to re-execute.
    pub image: Image,
    /// A second handle on the listener, without the socket-file guard: the one the new image
    /// inherits. Closed as soon as a stop begins, so that it does not keep the socket open.
    pub listener: StdListener,
}

impl Reload {
    /// Re-executes the process with the listener inherited and the watched file's state
    /// handed over. Returns only on failure.
    fn exec(self) -> io::Error {
        let env = self.watch.as_ref().and_then(TouchReload::handover);
        self.image.reexec(&self.listener, env.into_iter().collect())
    }
}

/// The accepted connections whose first bytes have not been read yet (see
/// [`FIRST_REQUEST_GRACE`]).
#[derive(Debug, Default)]
struct Unread {
    count: AtomicUsize,
    read: Notify,
}

impl Unread {
    /// Returns once every counted connection has read, or at `deadline`.
    async fn wait(&self, deadline: tokio::time::Instant) {
        loop {
            // Registered before the check, so a read in between is not missed.
            let read = self.read.notified();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            tokio::select! {
                () = read => {}
                () = tokio::time::sleep_until(deadline) => return,
            }
        }
    }
}

/// An accepted stream that leaves the [`Unread`] count at its first completed read (data,
/// end of file or error), or when dropped.
struct FirstRead<S> {
    inner: S,
    unread: Option<Arc<Unread>>,
}

impl<S> FirstRead<S> {
    fn new(inner: S, unread: &Arc<Unread>) -> Self {
        unread.count.fetch_add(1, Ordering::AcqRel);
        Self {
            inner,
            unread: Some(Arc::clone(unread)),
        }
    }

    fn has_read(&mut self) {
        if let Some(unread) = self.unread.take() {
            unread.count.fetch_sub(1, Ordering::AcqRel);
            unread.read.notify_waiters();
        }
    }
}

impl<S> Drop for FirstRead<S> {
    fn drop(&mut self) {
        self.has_read();
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FirstRead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if polled.is_ready() {
            this.has_read();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FirstRead<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// How a connection just accepted gets its `maxconns` slot.
enum SlotFor {
    /// A free one.
    Free(Slot),
    /// The one of a connection that was waiting for a request, told to close: the new
    /// connection's task waits the moment it takes that connection to go, and the accept
    /// loop goes on (thousands of silent connections in the backlog are worked through
    /// without a wait each).
    Evicted,
}

/// Polls a new connection once on the accept loop's task, and gives it a task of its own only
/// if it has to wait. Moving it after a poll loses no wake-up: what it waits on (socket
/// readiness, a notification, a timer) keeps its state, and the task's first poll registers
/// its own waker; a wake-up before that reaches the accept loop, which re-checks what it waits
/// for. A panic that escapes the driver ends that connection, as it would end its task, not
/// the accept loop.
///
/// The connection comes in the box it is polled in, so that it can move to a task after a
/// poll; one that ended in place leaves its box in `home`, the accept loop's spare, for the
/// next connection. The future is a few KiB, past what glibc keeps in its per-thread cache, so
/// a new box for every connection cost the allocator's slow path twice per connection
/// (docs/performance.md, "The hot path"). A connection that ended holds nothing: the next one
/// replaces it in place.
async fn serve_in_place<F>(
    mut conn: Pin<Box<F>>,
    home: &mut Option<Pin<Box<F>>>,
    tracker: &TaskTracker,
) where
    F: Future<Output = ()> + Send + 'static,
{
    let mut panicked = false;
    let waits = std::future::poll_fn(|cx| {
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| conn.as_mut().poll(cx)));
        Poll::Ready(match polled {
            Ok(poll) => poll.is_pending(),
            Err(_) => {
                tracing::error!("a connection panicked outside its handler: closed");
                panicked = true;
                false
            }
        })
    })
    .await;
    if waits {
        tracker.spawn(conn);
    } else if !panicked {
        *home = Some(conn);
    }
}

/// `conn` in the spare box `home` holds (replacing the connection that ended there), or in a
/// new one.
fn boxed<F>(conn: F, home: &mut Option<Pin<Box<F>>>) -> Pin<Box<F>> {
    match home.take() {
        Some(mut spare) => {
            spare.as_mut().set(conn);
            spare
        }
        None => Box::pin(conn),
    }
}

/// A `maxconns` slot for a connection just accepted: a free one, or the slot of the
/// connection that has waited longest for a request, evicted for it; with every connection
/// busy, the wait for one to end or to start waiting. `None` when a stop comes first (the
/// connection is then dropped).
async fn take_slot(
    slots: &Arc<Slots>,
    max_conns: usize,
    stop: &CancellationToken,
    drain_until: Option<tokio::time::Instant>,
) -> Option<SlotFor> {
    if let Some(slot) = slots.try_take() {
        return Some(SlotFor::Free(slot));
    }
    if slots.evict_oldest() {
        return Some(SlotFor::Evicted);
    }
    tracing::warn!(
        "maxconns={max_conns} connections are busy with requests: the new one waits for a slot"
    );
    let slot = match drain_until {
        Some(until) => tokio::time::timeout_at(until, slots.take_or_evict())
            .await
            .ok()?,
        None => tokio::select! {
            slot = slots.take_or_evict() => slot,
            () = stop.cancelled() => return None,
        },
    };
    Some(slot.map_or(SlotFor::Evicted, SlotFor::Free))
}

/// Unblocks the control signals and SIGCHLD in this thread, once their handlers exist.
///
/// A prefork worker is forked with the master's mask, in which they are blocked (the master
/// reads them from a signalfd), and keeps it until here: a TERM that arrives between the
/// fork and the handlers waits, pending, and then means a graceful stop instead of death by
/// the default action. For `method=threaded` nothing is blocked and this changes nothing.
fn unblock_control_signals() {
    let mut set = nix::sys::signal::SigSet::empty();
    for sig in CONTROL_SIGNALS.into_iter().chain([libc::SIGCHLD]) {
        if let Ok(sig) = nix::sys::signal::Signal::try_from(sig) {
            set.add(sig);
        }
    }
    if let Err(e) = set.thread_unblock() {
        tracing::warn!("cannot unblock the control signals: {e}");
    }
}

/// Why serving ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Graceful stop completed: every request in flight was answered.
    Graceful,
    /// Graceful stop timed out with requests still running, or an immediate stop.
    Forced,
}

/// What woke the control loop.
enum Wake {
    Signal(Control),
    /// `ServeOptions::retire` was cancelled.
    Retire,
    /// A reload is due (`touch_reload=` file changed, `maxrequests=` reached), for this reason.
    Reload(String),
}

/// Accepts and serves until a stop is requested. `ready` runs once the loop is about to
/// accept (signal handlers are installed by then), to print the ready line. With `reload`
/// (a threaded server, not a prefork worker), SIGHUP, a change of the `touch_reload=` file or
/// `maxrequests=` re-executes the process once the requests in flight are answered, and this
/// returns only if that fails.
pub async fn serve<H: Handler>(
    listener: Listener,
    shared: Arc<Shared<H>>,
    options: ServeOptions,
    mut reload: Option<Reload>,
    ready: impl FnOnce(),
) -> io::Result<Exit> {
    let mut signals = Signals::install()?;
    unblock_control_signals();
    let slots = Slots::new(options.max_conns);
    let tracker = TaskTracker::new();
    let stop_accepting = CancellationToken::new();
    ready();

    // A reload keeps a handle on the listener until the exec, so the socket stays open and
    // new connections wait in its backlog for the new image; a stop drops it first, and the
    // socket closes with the accept loop.
    let listener = Arc::new(listener);
    let mut kept_listener = reload.as_ref().map(|_| Arc::clone(&listener));
    let unread = Arc::new(Unread::default());
    // Set before a stop that closes the listener for good (a signal), so the backlog is
    // drained; a retiring prefork worker leaves it to the workers that keep accepting.
    let drain = Arc::new(AtomicBool::new(false));
    let accept_loop = || {
        let drain = Arc::clone(&drain);
        let unread = Arc::clone(&unread);
        let tracker = tracker.clone();
        let shared = Arc::clone(&shared);
        let stop = stop_accepting.clone();
        let options = options.clone();
        let listener = Arc::clone(&listener);
        let slots = Arc::clone(&slots);
        // Prefork workers share the listener (see driver::ARRIVAL_GRACE).
        let siblings = options.method == "prefork";
        async move {
            // When the listener is about to close (a signalled graceful stop, not a worker
            // retiring while others keep accepting), the connections already waiting in the
            // listen backlog are still taken and served for up to BACKLOG_DRAIN_LIMIT (the
            // kernel accepted them; closing the listener would reset them and the web server
            // would answer 502), then the loop ends.
            let mut drain_until: Option<tokio::time::Instant> = None;
            let mut home = None;
            loop {
                if drain_until.is_none() && stop.is_cancelled() {
                    if !drain.load(Ordering::Acquire) {
                        return;
                    }
                    drain_until = Some(tokio::time::Instant::now() + BACKLOG_DRAIN_LIMIT);
                }
                let accepted = match drain_until {
                    Some(until) => {
                        if tokio::time::Instant::now() >= until {
                            return;
                        }
                        match tokio::time::timeout(BACKLOG_DRAIN_WAIT, listener.accept()).await {
                            Ok(a) => a,
                            Err(_) => return,
                        }
                    }
                    None if shared.load.spent() => {
                        // A prefork worker that served its maxrequests= budget (Load::spent)
                        // takes no more connections; its watcher retires it.
                        stop.cancelled().await;
                        continue;
                    }
                    None => {
                        // A process running all the requests it may (a prefork worker also
                        // counts the one a connection just accepted is about to bring)
                        // leaves new connections in the backlog, to a worker with room.
                        tokio::select! {
                            () = shared.load.room(shared.max_requests as usize) => {}
                            () = stop.cancelled() => continue,
                        }
                        tokio::select! {
                            a = listener.accept() => a,
                            () = stop.cancelled() => continue,
                        }
                    }
                };
                let (stream, peer) = match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning; the backlog
                        // holds the connection until descriptors free up.
                        tracing::error!("accept failed: {e}");
                        if drain_until.is_some() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if !options.allow.permits(&peer) {
                    tracing::warn!(peer = %peer, "connection refused: peer not in allow= / FCGI_WEB_SERVER_ADDRS");
                    continue;
                }
                // Counted from here, so the next turn's room() sees this connection. Only
                // where other workers share the listener: one threaded process has nobody to
                // leave a connection to, and would only accept silent ones more slowly.
                let arrival = siblings.then(|| shared.load.arrive());
                let Some(slot) = take_slot(&slots, options.max_conns, &stop, drain_until).await
                else {
                    continue;
                };
                crate::status::recorder().connection_opened();
                let stream = crate::status::Metered::new(FirstRead::new(stream, &unread));
                let shared = Arc::clone(&shared);
                let slots = Arc::clone(&slots);
                let conn = async move {
                    let slot = match slot {
                        SlotFor::Free(slot) => slot,
                        SlotFor::Evicted => slots.take().await,
                    };
                    driver::serve(stream, peer, shared, Some(&slot), arrival).await;
                    drop(slot);
                    crate::status::recorder().connection_closed();
                };
                // The new connection is served in place until it waits: its request is
                // usually in the socket already and its answer fits the socket's buffer, so
                // a connection per request ends here without a task of its own (it used to
                // get one: in a prefork worker, then a yield so it could read its request
                // before the next accept, 5 system calls per request where there are now 4;
                // in a threaded process, a futex wake-up of the runtime thread it was handed
                // to, 0.5 per request), and a worker whose request slot it takes stops
                // accepting (room() above). One that waits (more body, a slow app, the next
                // keep-conn request) goes on on its own task. While the backlog never
                // empties the loop still gives up its turn once per runtime budget (128
                // connections), so the runtime's other tasks (kept-alive connections,
                // signals, status reports) run.
                serve_in_place(boxed(conn, &mut home), &mut home, &tracker).await;
                tokio::task::consume_budget().await;
            }
        }
    };
    // One accept loop per runtime thread (a prefork worker has one): a handler that holds
    // its thread (a blocking call, a long computation) while the loop serves it in place
    // stops that loop only, and the other threads' loops accept and answer on, as each of
    // uWSGI's threads accepts for itself. (With one loop, it stopped accepting altogether.)
    let loops = tokio::runtime::Handle::current().metrics().num_workers();
    let accept_tasks: Vec<_> = (0..loops).map(|_| tokio::spawn(accept_loop())).collect();
    // The loops (and a reload's kept handle) hold the listener now: a stop closes the socket
    // as soon as they end, not when the last request is answered.
    drop(listener);
    let accept_tasks = async move {
        for task in accept_tasks {
            let _ = task.await;
        }
    };

    // Finishes the requests in flight once the accept loops have ended: connections accepted a
    // moment ago read their request before idle ones are closed, then the busy ones get up
    // to graceful_timeout=.
    let finish = || async {
        unread
            .wait(tokio::time::Instant::now() + FIRST_REQUEST_GRACE)
            .await;
        shared.shutdown.cancel();
        tracker.close();
        match tokio::time::timeout(options.graceful_timeout, tracker.wait()).await {
            Ok(()) => Exit::Graceful,
            Err(_) => {
                tracing::warn!(
                    "graceful_timeout={}s reached with requests still running: stopping them",
                    options.graceful_timeout.as_secs()
                );
                Exit::Forced
            }
        }
    };

    let mut touch_tick = tokio::time::interval(TOUCH_RELOAD_INTERVAL);
    touch_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let exit = loop {
        let wake = tokio::select! {
            c = signals.recv() => Wake::Signal(c),
            () = options.retire.cancelled() => Wake::Retire,
            _ = touch_tick.tick(), if reload.as_ref().is_some_and(|r| r.watch.is_some()) => {
                let Some(watch) = reload.as_mut().and_then(|r| r.watch.as_mut()) else {
                    continue;
                };
                if !watch.changed() {
                    continue;
                }
                Wake::Reload(format!("touch_reload: {} changed", watch.path().display()))
            }
            () = shared.load.changed(), if reload.as_ref().is_some_and(|r| r.max_requests > 0) => {
                let max = reload.as_ref().map_or(0, |r| r.max_requests);
                if shared.load.served() >= max {
                    Wake::Reload(format!("maxrequests={max} reached"))
                } else {
                    continue;
                }
            }
        };
        let control = match &wake {
            Wake::Signal(control) => *control,
            Wake::Retire => Control::GracefulStop,
            Wake::Reload(_) => Control::Reload,
        };
        // A reload (SIGHUP, touch_reload=, maxrequests=): every way out of it leaves the loop,
        // or starts it over when the image cannot run.
        if let Some(r) = reload.take_if(|_| control == Control::Reload) {
            let reason = match wake {
                Wake::Reload(reason) => reason,
                _ => "SIGHUP".to_owned(),
            };
            // An image that cannot run is not worth stopping for.
            if let Err(e) = r.image.executable() {
                tracing::error!(
                    "{reason}, but the server cannot re-execute itself: {e}; serving on"
                );
                reload = Some(r);
                continue;
            }
            tracing::info!(
                "{reason}: re-executing {} once the requests in flight are answered",
                r.image.exe.display()
            );
            (options.notify)("RELOADING=1");
            crate::status::worker_stopping();
            // The backlog waits for the new image, on the listener kept open until the
            // exec.
            drain.store(false, Ordering::Release);
            stop_accepting.cancel();
            accept_tasks.await;
            // A stop asked for meanwhile wins: the process must not come back as a new
            // image (the signal would be lost with this one).
            let finishing = finish();
            tokio::pin!(finishing);
            let mut stop = false;
            let exit = loop {
                tokio::select! {
                    exit = &mut finishing => break exit,
                    c = signals.recv() => match c {
                        Control::GracefulStop => stop = true,
                        Control::ImmediateStop => {
                            stop = true;
                            break Exit::Forced;
                        }
                        Control::ReopenLogs => {
                            if let Err(e) = (options.reopen_logs)() {
                                tracing::error!("SIGUSR1: cannot reopen logs: {e}");
                            }
                        }
                        other => tracing::debug!("{other:?} while reloading: ignored"),
                    },
                }
            };
            if stop {
                tracing::info!("stopping instead of reloading, as a signal asked");
                (options.notify)("STOPPING=1");
                break exit;
            }
            let exe = r.image.exe.clone();
            let e = r.exec();
            drop(kept_listener);
            return Err(io::Error::new(
                e.kind(),
                format!("{reason}: cannot re-execute {}: {e}", exe.display()),
            ));
        }
        match control {
            Control::GracefulStop => {
                tracing::debug!("graceful stop: finishing requests in flight");
                crate::status::worker_stopping();
                (options.notify)("STOPPING=1");
                // The socket closes with the accept loop's handle.
                drop(reload.take());
                drop(kept_listener.take());
                drain.store(matches!(wake, Wake::Signal(_)), Ordering::Release);
                stop_accepting.cancel();
                accept_tasks.await;
                break finish().await;
            }
            Control::ImmediateStop => {
                tracing::info!("immediate stop");
                crate::status::worker_stopping();
                (options.notify)("STOPPING=1");
                drop(reload.take());
                drop(kept_listener.take());
                break Exit::Forced;
            }
            Control::Reload => {
                // Only a prefork worker gets here: a threaded server reloads above.
                tracing::warn!("SIGHUP to a prefork worker: ignored; send it to the master");
            }
            Control::MoreWorkers | Control::FewerWorkers => {
                tracing::info!(
                    "SIGTTIN/SIGTTOU: method={} has no worker pool to resize here",
                    options.method
                );
            }
            Control::ReopenLogs => match (options.reopen_logs)() {
                Ok(()) => tracing::info!("SIGUSR1: logs reopened"),
                Err(e) => tracing::error!("SIGUSR1: cannot reopen logs: {e}"),
            },
        }
    };
    Ok(exit)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection that ends in place leaves its box for the next; one that waits takes its
    /// box to its own task, which finishes it.
    #[tokio::test]
    async fn a_box_is_reused_while_connections_end_in_place() {
        let tracker = TaskTracker::new();
        let mut home = None;
        let conn = |wait: Option<tokio::sync::oneshot::Receiver<()>>| async move {
            if let Some(rx) = wait {
                let _ = rx.await;
            }
        };
        // What a connection holds (its stream, its Arcs) goes when it ends, not when the
        // next connection replaces it in the box.
        let held = Arc::new(());
        let holder = Arc::clone(&held);
        let ended = Box::pin(async move {
            let _keep = holder;
        });
        let mut spare = None;
        serve_in_place(ended, &mut spare, &tracker).await;
        assert!(spare.is_some());
        assert_eq!(
            Arc::strong_count(&held),
            1,
            "an ended connection holds nothing"
        );

        serve_in_place(Box::pin(conn(None)), &mut home, &tracker).await;
        let first: *const _ = &**home
            .as_ref()
            .expect("a connection that ended leaves its box");
        serve_in_place(boxed(conn(None), &mut home), &mut home, &tracker).await;
        let second: *const _ = &**home.as_ref().expect("and the next one leaves it again");
        assert_eq!(first, second, "the same box");

        let (tx, rx) = tokio::sync::oneshot::channel();
        serve_in_place(boxed(conn(Some(rx)), &mut home), &mut home, &tracker).await;
        assert!(home.is_none(), "a waiting connection took its box along");
        assert_eq!(tracker.len(), 1);
        tx.send(()).unwrap();
        tracker.close();
        tracker.wait().await;
    }
}
