//! Drivers: the only code that reads and writes connection sockets (style rule 8).
//!
//! One connection engine (`engine.rs`) serves every protocol: it feeds bytes to the protocol's
//! sans-IO connection from `appserver-proto` (through a small `Wire` per protocol in
//! `fcgi.rs`, `scgi.rs`, `ajp.rs`), turns its events into [`Request`]s for the
//! handler and writes the handler's response back, with backpressure both ways and a deadline
//! for every phase ([`deadlines`]). Drivers know sockets but not process models: the accept
//! loop in `process` hands them connections through `serve`, the one place that matches on
//! the protocol.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use appserver_proto::ajp::AjpConfig;
use appserver_proto::Limits;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::request::{Gateway, RequestOptions};
use crate::response::plain;
use crate::{BoxError, Handler, Request, Response};

pub mod ajp;
pub mod deadlines;
pub(crate) mod engine;
mod exchange;
pub mod fcgi;
mod readbuf;
pub mod scgi;
pub(crate) mod slots;

pub use deadlines::Timeouts;
pub use engine::{LINGER_MAX_BYTES, LINGER_TIMEOUT, MAX_DISCARDED_BODY};
pub(crate) use slots::{Slot, Slots};

/// The output room a response starts with: a head and a small page's body, in one
/// allocation small enough for glibc's per-thread cache (1 032 bytes).
pub(crate) const FIRST_OUTPUT: usize = 1024;

/// Bytes read from a socket at a time: one full FastCGI record (8-byte header + 65 535 content
/// + 255 padding) fits, so a record never needs more than two reads.
pub(crate) const READ_BUF_SIZE: usize = 64 * 1024 + 512;

/// How long a connection just accepted counts against its process's room for requests
/// ([`Load::room`]) before its request is admitted. A web server writes its request right
/// after its connect, but the process may read the connection before those bytes are there,
/// or between two parts of a head: without this, a prefork worker that looks idle in that
/// moment takes a second connection whose request then waits behind the first while other
/// workers are idle. Short, because a connection that sends nothing (or a head a byte at a
/// time) holds that worker's accept loop back this long (the other workers go on accepting):
/// 20 ms covers a web server descheduled between its connect and its write on a busy machine.
pub const ARRIVAL_GRACE: std::time::Duration = std::time::Duration::from_millis(20);

/// The protocol a server speaks, with what it needs to know.
#[derive(Clone, Debug)]
pub enum Protocol {
    /// FastCGI.
    Fcgi,
    /// SCGI.
    Scgi,
    /// AJP13.
    Ajp {
        /// `secret=`: the shared secret every request must carry.
        secret: Option<Bytes>,
        /// `packetsize=`.
        packet_size: usize,
        /// `underscores_in_headers=`: keep header names with `_`.
        underscores_in_headers: bool,
    },
}

/// Serves one accepted connection with the server's protocol until it ends; `slot` is its
/// `maxconns` slot, through which the slot table may evict it while it waits for a request,
/// and `arrival` counts it against the process's room until its request is admitted.
pub(crate) async fn serve<S, H>(
    io: S,
    peer: impl std::fmt::Display + Send + Sync,
    shared: Arc<Shared<H>>,
    slot: Option<&Slot>,
    arrival: Option<Arrival>,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
    H: Handler,
{
    match &shared.protocol {
        Protocol::Fcgi => {
            engine::run(io, &peer, &shared, fcgi::Fcgi::new(&shared), slot, arrival).await;
        }
        Protocol::Scgi => {
            engine::run(io, &peer, &shared, scgi::Scgi::new(&shared), slot, arrival).await;
        }
        Protocol::Ajp {
            secret,
            packet_size,
            underscores_in_headers,
        } => {
            let mut config = AjpConfig::default()
                .with_limits(shared.limits)
                .with_packet_size(*packet_size)
                .with_underscores_in_headers(*underscores_in_headers);
            if let Some(secret) = secret {
                config = config.with_secret(secret.clone());
            }
            engine::run(io, &peer, &shared, ajp::Ajp::new(config), slot, arrival).await;
        }
    }
}

/// What every connection of one server shares.
pub struct Shared<H> {
    /// The application.
    pub handler: H,
    /// Requests in flight across all connections of this process (`maxchildren` threaded, one
    /// per prefork worker): beyond it a request waits up to `queue_timeout` for a slot, then
    /// FastCGI answers `FCGI_OVERLOADED` and SCGI/AJP a 503, never a hang (design.md §3).
    pub requests: Arc<Semaphore>,
    /// The size of `requests`, for log lines and FastCGI's `FCGI_MAX_REQS`.
    pub max_requests: u32,
    /// `maxconns`, advertised as FastCGI's `FCGI_MAX_CONNS`.
    pub max_conns: u32,
    /// Script-name handling.
    pub options: RequestOptions,
    /// Protocol and process model, shown to handlers.
    pub gateway: Gateway,
    /// Parameter limits.
    pub limits: Limits,
    /// The protocol and its settings.
    pub protocol: Protocol,
    /// The deadline of every phase of a connection.
    pub timeouts: Timeouts,
    /// Set on graceful stop: idle connections close, busy ones finish first.
    pub shutdown: Shutdown,
    /// Requests in flight and served, watched by prefork workers to report busy/idle and to
    /// retire after `maxrequests`.
    pub load: Arc<Load>,
}

impl<H: Handler> Shared<H> {
    /// Takes one request slot, or `None` when `maxchildren` requests are in flight.
    pub(crate) fn try_admit(&self) -> Option<Admission> {
        let permit = Arc::clone(&self.requests).try_acquire_owned().ok()?;
        Some(self.admit(permit))
    }

    /// Counts a request admitted with `permit`.
    pub(crate) fn admit(&self, permit: OwnedSemaphorePermit) -> Admission {
        self.load.in_flight.fetch_add(1, Ordering::Relaxed);
        self.load.served.fetch_add(1, Ordering::Relaxed);
        self.load.changed.notify_one();
        Admission {
            _permit: permit,
            load: Arc::clone(&self.load),
        }
    }
}

/// The graceful stop every connection watches ([`Shared::shutdown`]): set once, never unset.
///
/// The engine looks at it at every turn of every connection, several times per request, and
/// in a threaded process from every runtime thread. `tokio_util`'s `CancellationToken` takes a
/// mutex for each look, a write to one cache line that the runtime threads took from each
/// other six times per request; this is a flag that is only read until the stop, and a
/// `Notify` for the connections that wait.
#[derive(Debug, Default)]
pub struct Shutdown {
    stopped: AtomicBool,
    stop: Notify,
}

impl Shutdown {
    /// Starts the stop: wakes every connection that waits in [`cancelled`](Self::cancelled).
    pub fn cancel(&self) {
        self.stopped.store(true, Ordering::Release);
        self.stop.notify_waiters();
    }

    /// Whether the stop has started.
    pub fn is_cancelled(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Returns once the stop has started.
    pub async fn cancelled(&self) {
        // A `Notified` receives `notify_waiters` from its creation on, polled or not, so a
        // stop between it and the check is not missed.
        let stop = self.stop.notified();
        if self.is_cancelled() {
            return;
        }
        stop.await;
    }
}

/// Counters of one process's requests; see [`Shared::load`].
#[derive(Debug, Default)]
pub struct Load {
    in_flight: AtomicUsize,
    /// Connections accepted less than [`ARRIVAL_GRACE`] ago whose request is not admitted yet.
    arriving: AtomicUsize,
    served: AtomicU64,
    /// Requests the process may admit before it retires (a prefork worker's `maxrequests=`,
    /// jittered); 0: no limit.
    budget: AtomicU64,
    changed: Notify,
    /// Every waiter is woken when a request ends.
    freed: Notify,
}

impl Load {
    /// Requests being handled now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests admitted since start.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Sets the request budget (0: none); see [`spent`](Self::spent).
    pub fn set_budget(&self, budget: u64) {
        self.budget.store(budget, Ordering::Relaxed);
    }

    /// Whether the process has admitted its whole request budget: it then takes no new
    /// connection, and a connection waiting between requests closes instead of taking the
    /// next one (the engine checks at every turn, so a retiring worker's kept-alive
    /// connections stop at once, not after the stop has made its way round every task).
    pub fn spent(&self) -> bool {
        let budget = self.budget.load(Ordering::Relaxed);
        budget > 0 && self.served() >= budget
    }

    /// Waits until a request starts or ends.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Returns once fewer than `capacity` requests are in flight or arriving (see
    /// [`Arrival`]).
    pub async fn room(&self, capacity: usize) {
        loop {
            // Registered before the check, so an end in between is not missed.
            let freed = self.freed.notified();
            if self.in_flight() + self.arriving.load(Ordering::Acquire) < capacity {
                return;
            }
            freed.await;
        }
    }

    /// Counts a connection just accepted as arriving until the returned guard is dropped or
    /// [`ARRIVAL_GRACE`] has passed, whichever is first.
    pub fn arrive(self: &Arc<Self>) -> Arrival {
        self.arriving.fetch_add(1, Ordering::AcqRel);
        Arrival {
            load: Arc::clone(self),
            until: tokio::time::Instant::now() + ARRIVAL_GRACE,
        }
    }
}

/// A connection accepted whose request has not been admitted yet: the accept loop does not
/// take another one it may not have room for until this one has said what it is. The engine
/// drops it once the request is admitted or queued, once the connection waits between
/// requests, at its close, or [`ARRIVAL_GRACE`] after it was accepted.
#[derive(Debug)]
pub struct Arrival {
    load: Arc<Load>,
    until: tokio::time::Instant,
}

impl Arrival {
    /// When the connection stops counting as arriving even without a request.
    pub(crate) fn until(&self) -> tokio::time::Instant {
        self.until
    }
}

impl Drop for Arrival {
    fn drop(&mut self) {
        self.load.arriving.fetch_sub(1, Ordering::AcqRel);
        self.load.freed.notify_waiters();
    }
}

/// One admitted request: holds its `maxchildren` slot and counts as in flight until dropped.
#[derive(Debug)]
pub(crate) struct Admission {
    _permit: OwnedSemaphorePermit,
    load: Arc<Load>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.load.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.load.changed.notify_one();
        self.load.freed.notify_waiters();
    }
}

/// A request's method and URI for log lines, or nothing for a response the server made.
/// Kept as they are and written out only when a line is logged: formatting them for every
/// request cost more than the rest of starting its call (docs/performance.md, "The hot
/// path").
#[derive(Clone, Debug, Default)]
pub(crate) struct What(Option<(http::Method, http::Uri)>);

impl What {
    /// True for a request's handler call.
    pub(crate) fn is_call(&self) -> bool {
        self.0.is_some()
    }
}

impl std::fmt::Display for What {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some((method, uri)) => write!(f, "{method} {uri}"),
            None => Ok(()),
        }
    }
}

/// A handler call, polled by its connection's task (no task of its own: no cross-thread
/// wake-up per request); a panic is caught at each poll, contained and reported.
pub(crate) struct Call {
    future: Pin<Box<dyn Future<Output = Result<Response, BoxError>> + Send>>,
    /// Method and URI, for the engine's log lines.
    what: What,
}

impl Call {
    /// Starts the handler on `req`.
    pub(crate) fn start<H: Handler>(shared: &Arc<Shared<H>>, req: Request) -> Self {
        let what = What(Some((req.method().clone(), req.uri().clone())));
        let shared = Arc::clone(shared);
        let future = Box::pin(async move { shared.handler.call(req).await });
        Self { future, what }
    }

    /// The request's method and URI.
    pub(crate) fn what(&self) -> &What {
        &self.what
    }

    /// Polls the handler: its response, or for an error or a panic a 500 and a log line
    /// naming the request and the peer (the worker carries on). Not to be polled again once
    /// ready.
    pub(crate) fn poll_response(
        &mut self,
        cx: &mut Context<'_>,
        peer: &(dyn std::fmt::Display + Sync),
    ) -> Poll<Response> {
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| self.future.as_mut().poll(cx)));
        let failure = match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(Ok(resp))) => return Poll::Ready(resp),
            Ok(Poll::Ready(Err(e))) => format!("handler error: {e}"),
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic payload".to_owned());
                format!("handler panicked: {msg}")
            }
        };
        tracing::error!(peer = %peer, request = %self.what, "{failure}");
        Poll::Ready(plain(
            http::StatusCode::INTERNAL_SERVER_ERROR,
            "Internal Server Error",
        ))
    }
}

/// A [`Shared`] for driver tests: `max_requests` slots, 5 s head and idle timeouts, no
/// waiting for a slot, default limits.
#[cfg(test)]
pub(crate) fn test_shared<H: Handler>(
    handler: H,
    max_requests: usize,
    protocol: &'static str,
) -> Arc<Shared<H>> {
    use std::time::Duration;
    Arc::new(Shared {
        handler,
        requests: Arc::new(Semaphore::new(max_requests)),
        max_requests: u32::try_from(max_requests).unwrap_or(u32::MAX),
        max_conns: 16,
        options: RequestOptions::default(),
        gateway: Gateway {
            protocol,
            method: "threaded",
        },
        limits: Limits::default(),
        protocol: match protocol {
            "scgi" => Protocol::Scgi,
            "ajp" => Protocol::Ajp {
                secret: None,
                packet_size: 8192,
                underscores_in_headers: false,
            },
            _ => Protocol::Fcgi,
        },
        timeouts: Timeouts {
            header: Duration::from_secs(5),
            idle: Duration::from_secs(5),
            queue: Duration::ZERO,
            ..Timeouts::default()
        },
        shutdown: Shutdown::default(),
        load: Arc::default(),
    })
}

#[cfg(test)]
mod shutdown_tests {
    use std::time::Duration;

    use super::Shutdown;

    /// A waiter already waiting when the stop comes, and one that starts after it, both
    /// return; before the stop, none does.
    #[tokio::test(start_paused = true)]
    async fn every_waiter_sees_the_stop() {
        let shutdown = Shutdown::default();
        assert!(!shutdown.is_cancelled());
        let early = shutdown.cancelled();
        let mut early = std::pin::pin!(early);
        assert!(
            tokio::time::timeout(Duration::from_secs(1), early.as_mut())
                .await
                .is_err(),
            "no stop yet"
        );
        shutdown.cancel();
        assert!(shutdown.is_cancelled());
        tokio::time::timeout(Duration::from_secs(1), early)
            .await
            .expect("a waiter from before the stop returns");
        tokio::time::timeout(Duration::from_secs(1), shutdown.cancelled())
            .await
            .expect("a waiter from after it returns at once");
    }
}
