//! Drivers: the only code that reads and writes connection sockets (style rule 8).
//!
//! One driver per protocol, each generic over `AsyncRead + AsyncWrite` so tests can run it on
//! `tokio::io::duplex`. A driver feeds bytes to the protocol's sans-IO connection from
//! `appserver-proto`, turns its events into [`Request`]s for the handler and
//! writes the handler's response back, with backpressure both ways. Drivers know sockets but
//! not process models: the accept loop in `process` hands them connections.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use appserver_proto::Limits;
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::request::{Gateway, RequestOptions};
use crate::response::plain;
use crate::{BoxError, Handler, Request, Response};

/// How long a connection that closes after its response keeps reading, and discarding, what
/// the web server still sends: a request body the handler did not read, or the end of a
/// request the web server writes after the response was complete (Caddy writes the empty
/// FCGI_STDIN in a write of its own, after the response may already be out).
///
/// Closing a socket with unread input makes the kernel reset a TCP connection, which can
/// destroy the response before the web server reads it, and fails the web server's next write
/// to a unix socket with EPIPE; either way the client gets a 502. So the write side is shut
/// first (the web server sees the response end) and the read side drained until the web
/// server closes, as Apache's lingering close and libfcgi do. Bounded in time and bytes, so a
/// peer that never closes holds the connection no longer than this.
pub const LINGER_TIMEOUT: Duration = Duration::from_secs(2);

/// At most this much input is read and discarded while lingering ([`LINGER_TIMEOUT`]); a web
/// server still sending beyond it is cut off.
pub const LINGER_MAX_BYTES: usize = 1 << 20;

/// Ends a connection after its last response: shuts the write side, then drains the read side
/// until the peer closes, [`LINGER_TIMEOUT`] passes or [`LINGER_MAX_BYTES`] were discarded.
/// `buf` is the connection's read buffer, reused.
pub async fn close_lingering<R, W>(rd: &mut R, wr: &mut W, buf: &mut BytesMut)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if wr.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut discarded = buf.len();
        while discarded < LINGER_MAX_BYTES {
            buf.clear();
            match rd.read_buf(buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => discarded += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIMEOUT, drain).await;
}

pub mod ajp;
mod exchange;
pub mod fcgi;
pub mod scgi;

/// Bytes read from a socket at a time: one full FastCGI record (8-byte header + 65 535 content
/// + 255 padding) fits, so a record never needs more than two reads.
pub(crate) const READ_BUF_SIZE: usize = 64 * 1024 + 512;

/// How long one socket write may stall before the connection is dropped: a web server that
/// stops reading for a minute has gone away without closing.
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a connection ended early; drivers log it with the peer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    #[error("protocol error: {0}")]
    Protocol(#[from] appserver_proto::ProtocolError),
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
    #[error("write stalled for {}s", WRITE_TIMEOUT.as_secs())]
    WriteTimeout,
    #[error("response body failed mid-stream: {0}")]
    ResponseBody(BoxError),
    #[error("request body stalled: no bytes from the web server for {}s (idle_timeout)", .0.as_secs())]
    BodyStalled(Duration),
}

/// Ends a connection's task: logs why it closed early (naming the protocol and the peer) and
/// cancels a request still in flight, so its handler stops and a body reader sees a
/// truncated body.
pub(crate) fn finish(
    protocol: &str,
    peer: &(dyn std::fmt::Display + Sync),
    result: Result<(), ConnError>,
    exchange: Option<exchange::Exchange>,
) {
    if let Err(e) = result {
        tracing::warn!(peer = %peer, "{protocol} connection closed: {e}");
    }
    if let Some(ex) = exchange {
        ex.cancel();
    }
}

/// True while the request in flight waits for body bytes from the web server (not for the
/// handler to take the ones it has): the time the idle timeout guards.
pub(crate) fn awaiting_body(exchange: &Option<exchange::Exchange>) -> bool {
    exchange
        .as_ref()
        .is_some_and(|ex| !ex.body_done() && !ex.is_blocked())
}

/// Writes some of `buf` (advancing it), failing when the peer stops reading for
/// [`WRITE_TIMEOUT`].
pub(crate) async fn write_some<W>(wr: &mut W, buf: &mut bytes::BytesMut) -> Result<(), ConnError>
where
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    match tokio::time::timeout(WRITE_TIMEOUT, wr.write_buf(buf)).await {
        Ok(Ok(0)) => Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into()),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(ConnError::WriteTimeout),
    }
}

/// What every connection of one server shares.
pub struct Shared<H> {
    /// The application.
    pub handler: H,
    /// Requests in flight across all connections (`maxchildren`): beyond it FastCGI answers
    /// `FCGI_OVERLOADED` and SCGI/AJP a 503, never a hang (design.md §3).
    pub requests: Arc<Semaphore>,
    /// `maxchildren`, for log lines and FastCGI's `FCGI_MAX_REQS`.
    pub max_requests: u32,
    /// `maxconns`, advertised as FastCGI's `FCGI_MAX_CONNS`.
    pub max_conns: u32,
    /// Script-name handling.
    pub options: RequestOptions,
    /// Protocol and process model, shown to handlers.
    pub gateway: Gateway,
    /// Parameter limits.
    pub limits: Limits,
    /// `idle_timeout=`: how long a kept-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// `header_timeout=`: how long a request may take to deliver its parameters.
    pub header_timeout: Duration,
    /// Cancelled on graceful stop: idle connections close, busy ones finish first.
    pub shutdown: CancellationToken,
    /// Requests in flight and served, watched by prefork workers to report busy/idle and to
    /// retire after `maxrequests`.
    pub load: Arc<Load>,
}

impl<H: Handler> Shared<H> {
    /// Takes one request slot, or `None` when `maxchildren` requests are in flight.
    pub(crate) fn try_admit(&self) -> Option<Admission> {
        let permit = Arc::clone(&self.requests).try_acquire_owned().ok()?;
        self.load.in_flight.fetch_add(1, Ordering::Relaxed);
        self.load.served.fetch_add(1, Ordering::Relaxed);
        self.load.changed.notify_one();
        Some(Admission {
            _permit: permit,
            load: Arc::clone(&self.load),
        })
    }
}

/// Counters of one process's requests; see [`Shared::load`].
#[derive(Debug, Default)]
pub struct Load {
    in_flight: AtomicUsize,
    served: AtomicU64,
    changed: Notify,
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

    /// Waits until a request starts or ends.
    pub async fn changed(&self) {
        self.changed.notified().await;
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
    }
}

/// A handler call running on its own task, so a panic is contained and reported.
pub(crate) struct Call {
    task: JoinHandle<Result<Response, BoxError>>,
    what: String,
}

impl Call {
    /// Starts the handler on `req`.
    pub(crate) fn spawn<H: Handler>(shared: &Arc<Shared<H>>, req: Request) -> Self {
        let what = format!("{} {}", req.method(), req.uri());
        let shared = Arc::clone(shared);
        let task = tokio::spawn(async move { shared.handler.call(req).await });
        Self { task, what }
    }

    /// Stops the handler (client abort).
    pub(crate) fn abort(&self) {
        self.task.abort();
    }

    /// The handler's task, to poll.
    pub(crate) fn task_mut(&mut self) -> &mut JoinHandle<Result<Response, BoxError>> {
        &mut self.task
    }

    /// Turns the task's outcome into a response: errors and panics become a 500 and a log line
    /// naming the request and the peer; the worker carries on.
    pub(crate) fn outcome(
        &self,
        result: Result<Result<Response, BoxError>, tokio::task::JoinError>,
        peer: &(dyn std::fmt::Display + Sync),
    ) -> Response {
        match result {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => {
                tracing::error!(peer = %peer, request = %self.what, "handler error: {e}");
                plain(
                    http::StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal Server Error",
                )
            }
            Err(e) if e.is_panic() => {
                let panic = e.into_panic();
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic payload".to_owned());
                tracing::error!(peer = %peer, request = %self.what, "handler panicked: {msg}");
                plain(
                    http::StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal Server Error",
                )
            }
            Err(e) => {
                tracing::error!(peer = %peer, request = %self.what, "handler task failed: {e}");
                plain(
                    http::StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal Server Error",
                )
            }
        }
    }
}

/// A [`Shared`] for driver tests: `max_requests` slots, 5 s timeouts, default limits.
#[cfg(test)]
pub(crate) fn test_shared<H: Handler>(
    handler: H,
    max_requests: usize,
    protocol: &'static str,
) -> Arc<Shared<H>> {
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
        idle_timeout: Duration::from_secs(5),
        header_timeout: Duration::from_secs(5),
        shutdown: CancellationToken::new(),
        load: Arc::default(),
    })
}
