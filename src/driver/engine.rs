//! The connection engine: the one loop that serves a connection of any protocol.
//!
//! It owns everything a protocol does not: reading and writing the socket, backpressure both
//! ways, the deadlines of every [`Phase`](super::deadlines::Phase), admission (`maxchildren`,
//! with a bounded wait for a slot), eviction when `maxconns` are taken, the request in flight
//! ([`Exchange`]), the lingering close and the close-reason log line. A protocol supplies a
//! [`Wire`]: its sans-IO connection from `appserver-proto` with its events translated into
//! [`Incoming`] and the response encoded its own way (`driver::{fcgi,scgi,ajp}`).
//!
//! One `select!` per turn over: writing what is owed, reading (only while less than
//! [`MAX_QUEUED_OUTPUT`] is owed, while the handler can take body bytes and while no request
//! waits for a slot), the request's progress, the phase's deadline, the slot table's eviction
//! and the graceful stop ([`Shutdown`](super::Shutdown)). Reading never waits for writing or
//! the other way round: Apache sends STDIN while it reads STDOUT.

use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use appserver_proto::limits::MAX_QUEUED_OUTPUT;
use appserver_proto::{Output, Params, ProtocolError};
use bytes::{Bytes, BytesMut};
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{AcquireError, OwnedSemaphorePermit};
use tokio::time::Instant;

use super::deadlines::{Aim, Phase, RateClock};
use super::exchange::{self, Exchange, Progress};
use super::readbuf::ReadBuf;
use super::slots::Slot;
use super::{Arrival, Shared, What, READ_BUF_SIZE};
use crate::response::plain;
use crate::{Body, BoxError, Handler, Response};

/// What a protocol's sans-IO connection tells the engine, in the engine's words.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// A request head is complete: admit it and start the handler.
    Request(Params),
    /// A request refused before any handler sees it (AJP's secret and attribute checks, a
    /// head whose variables exceed the limits): answered with `status`, logged with `why`.
    Refused {
        /// 400 or 403.
        status: StatusCode,
        /// For the log line.
        why: String,
    },
    /// A chunk of the request body.
    Body(Bytes),
    /// The request body is complete.
    BodyEnd,
    /// The web server aborted the request (`FCGI_ABORT_REQUEST`).
    Abort,
}

/// One protocol's side of a connection: its sans-IO state machine behind the engine's
/// vocabulary. `driver::{fcgi,scgi,ajp}` implement it.
pub(crate) trait Wire: Send + 'static {
    /// `fastcgi`, `scgi` or `ajp`, for log lines.
    const NAME: &'static str;

    /// Consumes complete input from `src`.
    fn handle_input(&mut self, src: &mut BytesMut) -> Result<(), ProtocolError>;
    /// The peer closed its side, leaving `src` unparsed.
    fn handle_eof(&mut self, src: &BytesMut) -> Result<(), ProtocolError>;
    /// The next thing that happened.
    fn poll_event(&mut self) -> Option<Incoming>;
    /// True when the next event is the end of the body of the request just returned: the
    /// web server sent the request and its empty body together (nginx's FastCGI GET: the
    /// params and an empty `FCGI_STDIN`; SCGI's `CONTENT_LENGTH: 0`).
    fn body_ends_next(&self) -> bool;
    /// The handler can take more body: a protocol that sends body only when asked (AJP's
    /// `GET_BODY_CHUNK`) asks now.
    fn want_body(&mut self) {}
    /// Moves queued output to `dst`.
    fn poll_transmit(&mut self, dst: &mut Output);
    /// Output queued in the connection, not yet moved by [`Self::poll_transmit`].
    fn queued_output(&self) -> usize;
    /// True once the connection must close after its output is written.
    fn wants_close(&self) -> bool;
    /// True when the protocol expects no more input now (SCGI once its one body is read);
    /// the engine stops reading, so a half-close is not taken for an abort.
    fn input_done(&self) -> bool {
        false
    }
    /// True while no request is partly received.
    fn is_idle(&self) -> bool;
    /// The most input the connection may need buffered at once to make progress.
    fn input_bound(&self) -> usize {
        READ_BUF_SIZE
    }
    /// Encodes the response head; returns the body to stream.
    fn send_head(&mut self, resp: Response, peer: &(dyn Display + Sync)) -> Body;
    /// Encodes response body bytes.
    fn send_data(&mut self, data: Bytes);
    /// Ends the response (also after an abort).
    fn end_response(&mut self);
    /// Refuses a request beyond the in-flight limit: FastCGI answers `FCGI_OVERLOADED`
    /// itself (`None`); the others need a response (`Some`).
    fn overloaded(&mut self) -> Option<Response>;
}

/// Why a connection ended; one log line names the peer and this.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Close {
    /// Normal: the protocol ended it, the peer closed between requests, or a stop.
    #[error("closed")]
    Done,
    /// The web server gave up on a request in flight (client abort).
    #[error("the web server closed the connection mid-request")]
    Aborted,
    /// A new connection had no request within `header_timeout`.
    #[error("no request within header_timeout={}s", .0.as_secs())]
    Silent(Duration),
    /// A request head did not complete within `header_timeout`.
    #[error("request head incomplete after header_timeout={}s", .0.as_secs())]
    HeadTimeout(Duration),
    /// Kept alive without a request for `idle_timeout`.
    #[error("idle for idle_timeout={}s", .0.as_secs())]
    Idle(Duration),
    /// The request body stopped, or came in below `body_min_rate`.
    #[error("request body {what}: {bytes} bytes in {}s (body_timeout={}s, body_min_rate={rate})", .elapsed.as_secs(), .timeout.as_secs())]
    BodyTimeout {
        /// "stalled" or "too slow".
        what: &'static str,
        /// Bytes received.
        bytes: u64,
        /// Time counted.
        elapsed: Duration,
        /// The option.
        timeout: Duration,
        /// The option.
        rate: u64,
    },
    /// The web server stopped reading what it was sent, or read below `send_min_rate`.
    #[error("output {what}: {owed} bytes owed, {bytes} taken in {}s (send_timeout={}s, send_min_rate={rate})", .elapsed.as_secs(), .timeout.as_secs())]
    SendTimeout {
        /// "stalled" or "too slow".
        what: &'static str,
        /// Bytes still owed.
        owed: usize,
        /// Bytes taken.
        bytes: u64,
        /// Time counted.
        elapsed: Duration,
        /// The option.
        timeout: Duration,
        /// The option.
        rate: u64,
    },
    /// `maxconns` connections were open and a new one needed this one's slot.
    #[error("evicted while waiting for a request: maxconns connections are open")]
    Evicted,
    /// The handler ran past `request_timeout`, after its head was sent.
    #[error("{request} ran past request_timeout={}s after its head was sent", .timeout.as_secs())]
    RequestTimeout {
        /// Method and URI.
        request: String,
        /// The option.
        timeout: Duration,
    },
    /// Malformed input.
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    /// The socket failed.
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
    /// The response body failed after its head was sent: closing without the protocol's end
    /// marker tells the web server the response is incomplete.
    #[error("response body failed mid-stream: {0}")]
    ResponseBody(BoxError),
}

impl Close {
    /// The short name of the reason, for counters.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::Aborted => "aborted",
            Self::Silent(_) => "silent",
            Self::HeadTimeout(_) => "header_timeout",
            Self::Idle(_) => "idle_timeout",
            Self::BodyTimeout { .. } => "body_timeout",
            Self::SendTimeout { .. } => "send_timeout",
            Self::Evicted => "evicted",
            Self::RequestTimeout { .. } => "request_timeout",
            Self::Protocol(_) => "protocol_error",
            Self::Io(_) => "io_error",
            Self::ResponseBody(_) => "response_failed",
        }
    }
}

/// The most request body discarded after an early response (a handler that answered
/// without reading it), so that the web server, still sending, sees its request taken
/// and passes the answer on: 1 GiB, Apache's `LimitRequestBody` default. Beyond it (or past
/// the body deadline) the connection is closed and the web server may answer 502.
pub const MAX_DISCARDED_BODY: u64 = 1 << 30;

/// How long a connection that closes after its last response keeps reading, and
/// discarding, what the web server still sends when no request body is owed (Caddy writes
/// the empty FCGI_STDIN in a write of its own, after the response may be out).
///
/// Closing a socket with unread input makes the kernel reset a TCP connection, which can
/// destroy the response before the web server reads it, and fails the web server's next write
/// to a unix socket with EPIPE; either way the client gets a 502. So the write side is shut
/// first (the web server sees the response end) and the read side drained until the web
/// server closes, as Apache's lingering close and libfcgi do.
pub const LINGER_TIMEOUT: Duration = Duration::from_secs(2);

/// At most this much input is discarded while lingering when no request body is owed.
pub const LINGER_MAX_BYTES: u64 = 1 << 20;

/// Output appended to the write buffer behind bytes not yet written, at most: enough for a
/// response's head, a small body and the end marker to share one write, small enough that
/// a large body never walks through the buffer (see the engine loop).
const MAX_COALESCED_OUTPUT: usize = 16 * 1024;

/// Output buffer capacity a connection keeps while it waits between requests: what a page
/// with its head needs, so ordinary responses reuse their buffers; beyond it (after a large
/// response) the buffers are freed and grown again by the next large one.
const IDLE_OUTPUT_KEEP: usize = 64 * 1024;

/// A request waiting for a `maxchildren` slot.
struct Queued {
    params: Params,
    until: Instant,
    permit: Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>,
}

/// The request in flight and what the engine tracks of it.
struct Active {
    exchange: Exchange,
    /// Method and URI of a handler's request, for log lines; empty for a response the
    /// server made.
    what: What,
    started: Instant,
    /// A handler runs (`request_timeout` applies), not a response the server made.
    calling: bool,
    head_sent: bool,
    body: RateClock,
}

/// Serves one connection with `wire` until it ends; logs why if that was not a normal end.
pub(crate) async fn run<S, H, W>(
    io: S,
    peer: &(dyn Display + Sync),
    shared: &Arc<Shared<H>>,
    wire: W,
    slot: Option<&Slot>,
    arrival: Option<Arrival>,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
    H: Handler,
    W: Wire,
{
    let mut engine = Engine {
        wire,
        shared,
        peer,
        active: None,
        queued: None,
        clean_end: false,
        phase: Phase::Fresh,
        phase_since: Instant::now(),
        arrival,
    };
    let close = engine.serve(io, slot).await;
    if !matches!(close, Close::Done) {
        crate::status::recorder().connection_failed(close.reason());
    }
    if let Some(active) = engine.active.take() {
        active.exchange.cancel();
    }
    match &close {
        Close::Done => {}
        Close::Aborted | Close::Idle(_) | Close::Evicted => {
            tracing::debug!(peer = %peer, reason = close.reason(), "{} connection closed: {close}", W::NAME);
        }
        _ => {
            let limit = crate::log_limit::peer_warnings();
            if let Some(more) = limit
                .admit(crate::log_limit::peer_key(&peer.to_string()))
                .note()
            {
                tracing::warn!(peer = %peer, reason = close.reason(), "{} connection closed: {close}{more}", W::NAME);
            }
        }
    }
}

struct Engine<'a, H, W> {
    wire: W,
    shared: &'a Arc<Shared<H>>,
    peer: &'a (dyn Display + Sync),
    active: Option<Active>,
    queued: Option<Queued>,
    /// The last response ended with its request wholly received: nothing more is due
    /// from the web server on a connection that closes.
    clean_end: bool,
    /// What the connection waits for while no request is in flight.
    phase: Phase,
    phase_since: Instant,
    /// Held from accept until the first request is admitted or queued, the connection waits
    /// between requests, or [`Arrival::until`]: see [`crate::driver::ARRIVAL_GRACE`].
    arrival: Option<Arrival>,
}

impl<H: Handler, W: Wire> Engine<'_, H, W> {
    async fn serve<S>(&mut self, io: S, slot: Option<&Slot>) -> Close
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (mut rd, mut wr) = tokio::io::split(io);
        let mut parked = ReadBuf::take();
        let rbuf: &mut BytesMut = &mut parked;
        let mut wbuf = Output::new();
        let mut read_closed = false;
        let mut closing = false;
        // The output owed to the web server, while there is some.
        let mut send: Option<RateClock> = None;
        let t = self.shared.timeouts;
        let peer = self.peer;
        let shared = self.shared;
        let mut evictable = false;
        // One timer and one stop watch for the connection's life, re-aimed rather than made
        // anew each turn: a new timer went into tokio's timer wheel and out again, and a new
        // stop watch joined and left the stop's waiter list, each under a lock, several
        // times per request (docs/performance.md, "The hot path"). The timer is aimed only
        // when a turn waits on it ([`Aim`]).
        let mut timer = std::pin::pin!(tokio::time::sleep_until(Instant::now()));
        let mut aimed: Option<Instant> = None;
        let mut stopped = std::pin::pin!(shared.shutdown.cancelled());

        // A web server sends its request with its connect. Until a read has found nothing,
        // a connection is not taken for a silent one (and not evicted as one): it may only
        // be that this process had not read it yet.
        match tokio::time::timeout(Duration::ZERO, rd.read_buf(rbuf)).await {
            Err(_) => {}
            Ok(Ok(0)) => {
                read_closed = true;
                if let Err(close) = self.on_eof(rbuf) {
                    return close;
                }
            }
            Ok(Ok(_)) => {
                self.set_phase(Phase::Head, Instant::now());
                if let Err(e) = self.wire.handle_input(rbuf) {
                    return e.into();
                }
            }
            Ok(Err(e)) => return Close::Io(e),
        }

        loop {
            let now = Instant::now();
            // The select below is biased, its stop branch last: on a connection whose next
            // request is always there by the time it looks (a prefork worker that yields
            // before it sleeps, under nginx's keep-conn load), that branch would never be
            // taken and a retiring worker would never close it. A worker that has admitted
            // its request budget closes a connection between requests at once too, without
            // waiting for its stop to be signalled (a fresh connection's first request is
            // still served: it was accepted before the budget ran out).
            if !closing
                && (self.shared.shutdown.is_cancelled()
                    || (self.phase != Phase::Fresh && self.shared.load.spent()))
            {
                closing = true;
            }
            if self.queued.is_none() {
                while let Some(ev) = self.wire.poll_event() {
                    if let Err(close) = self.on_event(ev, now) {
                        return close;
                    }
                    if self.queued.is_some() {
                        break;
                    }
                }
            }
            if let Some(active) = self.active.as_mut() {
                let blocked = active.exchange.is_blocked();
                active.body.set_paused(now, blocked);
                if !blocked && !active.exchange.body_done() {
                    self.wire.want_body();
                }
            }
            // Output moves to the write buffer when that is empty (the two buffers are
            // swapped) or when both together are small (a response head, its body and the
            // end marker, queued one after the other, go out in one write). Large output is
            // never appended behind bytes still being written: data walking through one
            // buffer as it is written at the front and appended at the back touched the
            // whole allocation, 1 MiB resident per slow reader of a large body (a large body's
            // chunks are queued uncopied, `Output`, so only framing and small data are
            // appended). Either way an empty write buffer means nothing is owed.
            if joins_write_buffer(wbuf.len(), self.wire.queued_output()) {
                self.wire.poll_transmit(&mut wbuf);
            }
            match (&mut send, wbuf.is_empty()) {
                (None, false) => send = Some(RateClock::new(now, t.send, t.send_min_rate)),
                (Some(_), true) => send = None,
                _ => {}
            }

            let busy = self.active.is_some() || self.queued.is_some();
            if !busy && (!self.wire.is_idle() || !rbuf.is_empty()) && self.phase != Phase::Head {
                self.set_phase(Phase::Head, now);
            }
            // Waiting for a request, with nothing partly received or owed: evictable, and
            // closed by a stop.
            let waiting = !busy
                && self.phase != Phase::Head
                && self.wire.is_idle()
                && rbuf.is_empty()
                && wbuf.is_empty();
            if self.arrival.is_some() && (busy || (waiting && self.phase != Phase::Fresh)) {
                self.arrival = None;
            }
            if waiting != evictable {
                evictable = waiting;
                if let Some(slot) = slot {
                    slot.set_evictable(waiting, now);
                }
                if waiting {
                    self.release_idle_buffers(&mut wbuf);
                }
            }

            if wbuf.is_empty() && !busy {
                if self.wire.wants_close() {
                    if read_closed {
                        let _ = wr.shutdown().await;
                    } else if self.clean_end && rbuf.is_empty() {
                        // The web server sent the whole request and nothing else is due:
                        // closing cannot reset a connection with unread input, so no
                        // lingering read (and no wait for the web server's close).
                    } else {
                        let clock = RateClock::total(now, LINGER_TIMEOUT);
                        linger(&mut rd, &mut wr, rbuf, LINGER_MAX_BYTES, clock).await;
                    }
                    return Close::Done;
                }
                // A request that has started arriving is served even during a stop.
                if read_closed || (closing && waiting) {
                    let _ = wr.shutdown().await;
                    return Close::Done;
                }
            }

            let owed = wbuf.len() + self.wire.queued_output();
            let can_read = !read_closed
                && !self.wire.input_done()
                && self.queued.is_none()
                && owed < MAX_QUEUED_OUTPUT
                && !self
                    .active
                    .as_ref()
                    .is_some_and(|a| a.exchange.is_blocked())
                && rbuf.len() < self.wire.input_bound();
            if can_read {
                rbuf.reserve(READ_BUF_SIZE.min(self.wire.input_bound() - rbuf.len()));
            }
            let room = owed < MAX_QUEUED_OUTPUT;
            let deadline = self.deadline(send.as_ref(), read_closed);
            // Aimed only if polled: a turn that does not wait leaves the timer alone.
            let alarm = Aim::new(
                timer.as_mut(),
                &mut aimed,
                deadline.map_or(now, |(at, _)| at),
            );

            // Biased: the request's progress first, so a response head, its body and the
            // protocol's end marker that are ready together go out in one write.
            tokio::select! {
                biased;
                progress = exchange::progress(self.active.as_mut().map(|a| &mut a.exchange), room, peer), if self.active.is_some() => {
                    match self.on_progress(progress) {
                        Ok(None) => {}
                        Ok(Some(owed_body)) => {
                            // An early answer: the rest of the body is still on its way.
                            if !read_closed && self.wire.wants_close() {
                                let _ = self.flush(&mut wr, &mut wbuf).await;
                                // Framing (record headers, padding) comes on top of the body.
                                let max = owed_body.saturating_add(owed_body / 16);
                                let clock = RateClock::new(Instant::now(), t.body, t.body_min_rate);
                                linger(&mut rd, &mut wr, rbuf, max, clock).await;
                                return Close::Done;
                            }
                        }
                        Err(close) => {
                            // A response that failed mid-body: what it produced still goes
                            // out (the client gets it truncated), without the end marker.
                            let _ = self.flush(&mut wr, &mut wbuf).await;
                            return close;
                        }
                    }
                }
                written = wr.write_buf(&mut wbuf), if !wbuf.is_empty() => match written {
                    Ok(0) => return Close::Io(std::io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        if let Some(s) = send.as_mut() {
                            s.progress(Instant::now(), n);
                        }
                    }
                    Err(e) => return Close::Io(e),
                },
                read = rd.read_buf(rbuf), if can_read => match read {
                    Ok(0) => {
                        read_closed = true;
                        if let Err(close) = self.on_eof(rbuf) {
                            return close;
                        }
                    }
                    Ok(n) => {
                        let now = Instant::now();
                        match self.active.as_mut() {
                            Some(a) => a.body.progress(now, n),
                            None if self.phase != Phase::Head => self.set_phase(Phase::Head, now),
                            None => {}
                        }
                        if let Err(e) = self.wire.handle_input(rbuf) {
                            return e.into();
                        }
                    }
                    Err(e) => return Close::Io(e),
                },
                permit = poll_queued(&mut self.queued), if self.queued.is_some() => {
                    self.admit_queued(permit.ok(), Instant::now());
                }
                () = alarm, if deadline.is_some() => {
                    if let Some((_, why)) = deadline {
                        match self.expire(why, send.as_ref(), wbuf.len(), Instant::now()) {
                            Some(close) => return close,
                            None => continue,
                        }
                    }
                }
                () = evicted(slot), if waiting => return Close::Evicted,
                () = &mut stopped, if !closing => closing = true,
            }
        }
    }

    fn set_phase(&mut self, phase: Phase, now: Instant) {
        self.phase = phase;
        self.phase_since = now;
    }

    /// The earliest deadline now, and what it guards.
    fn deadline(&self, send: Option<&RateClock>, read_closed: bool) -> Option<(Instant, Due)> {
        let t = &self.shared.timeouts;
        let mut due: Option<(Instant, Due)> = None;
        let mut consider = |at: Option<Instant>, why: Due| {
            if let Some(at) = at {
                if due.is_none_or(|(d, _)| at < d) {
                    due = Some((at, why));
                }
            }
        };
        consider(send.and_then(RateClock::deadline), Due::Send);
        consider(self.arrival.as_ref().map(Arrival::until), Due::Arrival);
        match (&self.active, &self.queued) {
            (Some(a), _) => {
                if !read_closed && !a.exchange.body_done() {
                    consider(a.body.deadline(), Due::Body);
                }
                if a.calling {
                    consider(t.request.map(|d| a.started + d), Due::Request);
                }
            }
            (None, Some(q)) => consider(Some(q.until), Due::Queue),
            (None, None) => {
                let limit = match self.phase {
                    Phase::Fresh | Phase::Head => t.header,
                    Phase::Idle => t.idle,
                };
                consider(Some(self.phase_since + limit), Due::Wait);
            }
        }
        due
    }

    /// A deadline passed: the close, or `None` when the engine carries on (a queued request
    /// refused, a handler cancelled with a 504).
    fn expire(
        &mut self,
        why: Due,
        send: Option<&RateClock>,
        owed: usize,
        now: Instant,
    ) -> Option<Close> {
        let t = self.shared.timeouts;
        match why {
            Due::Arrival => {
                self.arrival = None;
                None
            }
            Due::Send => {
                let s = send?;
                Some(Close::SendTimeout {
                    what: if s.too_slow() { "too slow" } else { "stalled" },
                    owed,
                    bytes: s.bytes(),
                    elapsed: s.elapsed(now),
                    timeout: t.send,
                    rate: t.send_min_rate,
                })
            }
            Due::Body => {
                let a = self.active.as_ref()?;
                Some(Close::BodyTimeout {
                    what: if a.body.too_slow() {
                        "too slow"
                    } else {
                        "stalled"
                    },
                    bytes: a.body.bytes(),
                    elapsed: a.body.elapsed(now),
                    timeout: t.body,
                    rate: t.body_min_rate,
                })
            }
            Due::Request => {
                let timeout = t.request.unwrap_or_default();
                let a = self.active.as_ref()?;
                if a.head_sent {
                    let request = a.what.to_string();
                    return Some(Close::RequestTimeout { request, timeout });
                }
                let a = self.active.take()?;
                tracing::warn!(
                    peer = %self.peer,
                    request = %a.what,
                    "request_timeout={}s: cancelled after {:.1}s, answering 504",
                    timeout.as_secs(),
                    now.saturating_duration_since(a.started).as_secs_f64()
                );
                let body_done = a.exchange.body_done();
                a.exchange.cancel();
                let mut ex =
                    Exchange::respond(plain(StatusCode::GATEWAY_TIMEOUT, "Gateway Timeout"), None);
                if body_done {
                    ex.end_body();
                }
                self.active = Some(Active {
                    exchange: ex,
                    what: a.what,
                    started: a.started,
                    calling: false,
                    head_sent: false,
                    body: a.body,
                });
                None
            }
            Due::Queue => {
                self.admit_queued(None, now);
                None
            }
            Due::Wait => Some(match self.phase {
                Phase::Fresh => Close::Silent(t.header),
                Phase::Head => Close::HeadTimeout(t.header),
                Phase::Idle => Close::Idle(t.idle),
            }),
        }
    }

    fn on_event(&mut self, ev: Incoming, now: Instant) -> Result<(), Close> {
        match ev {
            Incoming::Request(params) => match self.shared.try_admit() {
                Some(admission) => self.start(params, Some(admission), now),
                None if self.shared.timeouts.queue.is_zero() => self.overloaded(now),
                None => {
                    self.queued = Some(Queued {
                        params,
                        until: now + self.shared.timeouts.queue,
                        permit: Box::pin(Arc::clone(&self.shared.requests).acquire_owned()),
                    });
                }
            },
            Incoming::Refused { status, why } => {
                tracing::warn!(peer = %self.peer, "{} request refused with {}: {why}", W::NAME, status.as_u16());
                crate::status::recorder()
                    .answered_by_server(self.shared.gateway.protocol, status.as_u16());
                let reason = status.canonical_reason().unwrap_or("Refused");
                self.begin(
                    Exchange::respond(plain(status, reason), None),
                    What::default(),
                    now,
                );
            }
            Incoming::Body(data) => {
                if let Some(a) = self.active.as_mut() {
                    a.exchange.push_body(data);
                }
            }
            Incoming::BodyEnd => {
                if let Some(a) = self.active.as_mut() {
                    a.exchange.end_body();
                }
            }
            Incoming::Abort => {
                if let Some(a) = self.active.take() {
                    tracing::debug!(peer = %self.peer, "the web server aborted {}", a.what);
                    a.exchange.cancel();
                    self.wire.end_response();
                    self.set_phase(Phase::Idle, now);
                }
            }
        }
        Ok(())
    }

    /// Starts the handler on `params`. The request's events wait behind it (a queued one's
    /// too), so the wire's next event tells whether its body is over already.
    fn start(&mut self, params: Params, admission: Option<super::Admission>, now: Instant) {
        let ex = match admission {
            Some(admission) => {
                let empty = self.wire.body_ends_next();
                Exchange::start(self.shared, admission, params, empty, self.peer)
            }
            None => return self.overloaded(now),
        };
        let what = ex.what();
        self.begin(ex, what, now);
    }

    fn begin(&mut self, exchange: Exchange, what: What, now: Instant) {
        self.clean_end = false;
        let t = &self.shared.timeouts;
        self.active = Some(Active {
            calling: what.is_call(),
            exchange,
            what,
            started: now,
            head_sent: false,
            body: RateClock::new(now, t.body, t.body_min_rate),
        });
    }

    fn overloaded(&mut self, now: Instant) {
        crate::status::recorder().overloaded();
        tracing::warn!(
            peer = %self.peer,
            "maxchildren={} requests in flight for queue_timeout={}s: refusing",
            self.shared.max_requests,
            self.shared.timeouts.queue.as_secs()
        );
        self.clean_end = false;
        match self.wire.overloaded() {
            Some(resp) => self.begin(Exchange::respond(resp, None), What::default(), now),
            None => self.set_phase(Phase::Idle, now),
        }
    }

    fn admit_queued(&mut self, permit: Option<OwnedSemaphorePermit>, now: Instant) {
        let Some(q) = self.queued.take() else {
            return;
        };
        let admission = permit.map(|p| self.shared.admit(p));
        self.start(q.params, admission, now);
    }

    fn on_eof(&mut self, rbuf: &BytesMut) -> Result<(), Close> {
        match self.wire.handle_eof(rbuf) {
            Ok(()) => {}
            Err(ProtocolError::TruncatedBody { .. }) => return Err(Close::Aborted),
            Err(e) => return Err(e.into()),
        }
        if self.queued.is_some()
            || self
                .active
                .as_ref()
                .is_some_and(|a| !a.exchange.body_done())
        {
            // nginx and Apache close the connection instead of sending an abort.
            return Err(Close::Aborted);
        }
        Ok(())
    }

    /// Handles the request's progress; `Ok(Some(n))` when the response ended before the
    /// request body did, with `n` the most body bytes still to discard.
    fn on_progress(&mut self, progress: Progress) -> Result<Option<u64>, Close> {
        match progress {
            Progress::BodyMoved => {}
            Progress::Response(resp) => {
                let body = self.wire.send_head(resp, self.peer);
                if let Some(a) = self.active.as_mut() {
                    a.head_sent = true;
                    a.exchange.stream(body);
                }
            }
            Progress::Data(data) => self.wire.send_data(data),
            Progress::Done => {
                let Some(a) = self.active.take() else {
                    return Ok(None);
                };
                self.wire.end_response();
                self.set_phase(Phase::Idle, Instant::now());
                self.clean_end = a.exchange.body_done();
                if !a.exchange.body_done() {
                    let rest = a.exchange.body_remaining().unwrap_or(MAX_DISCARDED_BODY);
                    return Ok(Some(rest.min(MAX_DISCARDED_BODY)));
                }
            }
            Progress::Failed(e) => return Err(Close::ResponseBody(e)),
        }
        Ok(None)
    }

    /// Frees the output buffers of a connection that now waits for its next request, when a
    /// large response grew them past [`IDLE_OUTPUT_KEEP`]: a prefork worker holds many
    /// kept-alive connections from its web server, each would otherwise keep what its
    /// largest response needed (17 to 32 MiB per worker after 10 MiB downloads). Both are
    /// empty here, and the wire's transmit swaps an empty buffer with its own, so two turns
    /// look at both.
    fn release_idle_buffers(&mut self, wbuf: &mut Output) {
        for _ in 0..2 {
            keep_while_idle(wbuf);
            self.wire.poll_transmit(wbuf);
        }
    }

    /// Writes everything owed, within the send timeout.
    async fn flush<Wr: AsyncWrite + Unpin>(
        &mut self,
        wr: &mut Wr,
        wbuf: &mut Output,
    ) -> std::io::Result<()> {
        self.wire.poll_transmit(wbuf);
        let t = self.shared.timeouts.send;
        tokio::time::timeout(t, wr.write_all_buf(wbuf))
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
    }
}

/// Whether the output queued in the wire joins the write buffer, which holds `unwritten`
/// bytes: when there is some, and the write buffer is empty or both fit in
/// [`MAX_COALESCED_OUTPUT`]. Nothing queued moves nothing: the loop asks every turn, several
/// times a request.
fn joins_write_buffer(unwritten: usize, queued: usize) -> bool {
    queued > 0 && (unwritten == 0 || unwritten + queued <= MAX_COALESCED_OUTPUT)
}

/// Frees an empty output buffer of a waiting connection if it grew past [`IDLE_OUTPUT_KEEP`].
fn keep_while_idle(buf: &mut Output) {
    if buf.capacity() > IDLE_OUTPUT_KEEP {
        *buf = Output::new();
    }
}

/// What a deadline guards.
#[derive(Clone, Copy, Debug)]
enum Due {
    /// [`Arrival::until`]: the connection stops counting as arriving; nothing closes.
    Arrival,
    Send,
    Body,
    Request,
    Queue,
    Wait,
}

/// Ends a connection after its last response: shuts the write side, then reads and
/// discards until the peer closes, `max` bytes (at least [`LINGER_MAX_BYTES`]) were
/// discarded or `clock` runs out.
async fn linger<R, W>(rd: &mut R, wr: &mut W, buf: &mut BytesMut, max: u64, mut clock: RateClock)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if wr.shutdown().await.is_err() {
        return;
    }
    let max = max.max(LINGER_MAX_BYTES);
    let mut discarded = buf.len() as u64;
    while discarded < max {
        let Some(deadline) = clock.deadline() else {
            return;
        };
        buf.clear();
        match tokio::time::timeout_at(deadline, rd.read_buf(buf)).await {
            Ok(Ok(0) | Err(_)) | Err(_) => return,
            Ok(Ok(n)) => {
                discarded += n as u64;
                clock.progress(Instant::now(), n);
            }
        }
    }
}

async fn poll_queued(queued: &mut Option<Queued>) -> Result<OwnedSemaphorePermit, AcquireError> {
    match queued.as_mut() {
        Some(q) => q.permit.as_mut().await,
        None => std::future::pending().await,
    }
}

async fn evicted(slot: Option<&Slot>) {
    match slot {
        Some(slot) => slot.evicted().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
