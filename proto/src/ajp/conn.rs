//! The server (container) side of one AJP13 connection: a sans-IO state machine
//! ([`Connection`]).
//!
//! It owns request and body accounting and nothing else: no sockets, no clock, no handler.
//! Packets come in through [`Connection::handle_input`], become [`Event`]s, and the driver's
//! answers ([`Connection::send_headers`], [`Connection::send_body`],
//! [`Connection::end_response`], [`Connection::request_body_chunk`]) become queued bytes that
//! [`Connection::poll_transmit`] drains (style rule 7).
//!
//! ```text
//!           CPING → CPONG (stay)
//!          ┌────┐
//!          ▼    │   FORWARD_REQUEST           end_response, body complete (reuse=1)
//!         Idle ─┴──────────────────▶ Active ──────────────────────────────────────▶ Idle
//!          │  secret / attribute refused │ end_response otherwise (reuse=0)
//!          │  ──▶ Active(forbidden) ─────┴──────────────────────────────────────▶ Done
//!          └── SHUTDOWN, PING, unknown code, empty packet, any error ───────────▶ Done
//! ```
//!
//! While `Active`, a packet is read as a body packet only when one is expected: the first
//! one Apache sends unrequested when `Content-Length > 0`, or one asked for with
//! `GET_BODY_CHUNK`. Any other packet is [`ProtocolError::UnexpectedPacket`], so body bytes can
//! never be parsed as a request (digest §3.8 case 4, §4 smuggling). In `Done`, and while a
//! forbidden request is answered, input is discarded.

use std::collections::VecDeque;
use std::fmt;
use std::mem;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::limits::{AJP_DEFAULT_PACKET_SIZE, AJP_MAX_PACKET_SIZE, AJP_MIN_PACKET_SIZE};
use crate::{Limits, Output, Params, ProtocolError};

use super::cgi::cgi_params;
use super::decode::{load_body, BodyFraming, BodyPacket, PacketDecoder};
use super::encode::{
    encode_cpong, encode_end_response, encode_flush, encode_get_body_chunk, encode_send_headers,
    max_body_packet, queue_send_body_chunk,
};
use super::packet::{Code, ForwardRequest, PacketOverflow};

/// `req_attribute` names accepted by default: what Apache's mod_proxy_ajp and mod_jk send
/// (`AJP_REMOTE_PORT`, `AJP_LOCAL_ADDR`, `AJP_SSL_PROTOCOL`, `JK_LB_ACTIVATION`), the TLS
/// attributes Tomcat knows under their `javax.` and `jakarta.` names, and IIS's TLS variables,
/// which is Tomcat's own default allowlist. Anything else is refused with
/// [`Event::Forbidden`] (Ghostcat, CVE-2020-1938).
pub const DEFAULT_ALLOWED_ATTRIBUTES: &[&str] = &[
    "AJP_REMOTE_PORT",
    "AJP_LOCAL_ADDR",
    "AJP_SSL_PROTOCOL",
    "JK_LB_ACTIVATION",
    "javax.servlet.request.cipher_suite",
    "javax.servlet.request.key_size",
    "javax.servlet.request.ssl_session",
    "javax.servlet.request.X509Certificate",
    "jakarta.servlet.request.cipher_suite",
    "jakarta.servlet.request.key_size",
    "jakarta.servlet.request.ssl_session",
    "jakarta.servlet.request.X509Certificate",
    "CERT_ISSUER",
    "CERT_SUBJECT",
    "CERT_COOKIE",
    "HTTPS_SERVER_SUBJECT",
    "CERT_FLAGS",
    "HTTPS_SECRETKEYSIZE",
    "CERT_SERIALNUMBER",
    "HTTPS_SERVER_ISSUER",
    "HTTPS_KEYSIZE",
];

/// The configuration of an AJP connection. Cheap to clone (shared lists), so a driver clones
/// one per connection.
///
/// ```
/// use appserver_proto::ajp::AjpConfig;
///
/// let config = AjpConfig::default().with_packet_size(65536).with_secret("s3cret");
/// assert_eq!(config.packet_size(), 65536);
/// assert_eq!(config.secret(), Some(&b"s3cret"[..]));
/// ```
#[derive(Clone)]
pub struct AjpConfig {
    limits: Limits,
    packet_size: usize,
    secret: Option<Bytes>,
    allowed_attributes: Arc<[Bytes]>,
    lighttpd_framing: bool,
    underscores_in_headers: bool,
}

impl Default for AjpConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            packet_size: AJP_DEFAULT_PACKET_SIZE,
            secret: None,
            allowed_attributes: DEFAULT_ALLOWED_ATTRIBUTES
                .iter()
                .map(|name| Bytes::from_static(name.as_bytes()))
                .collect(),
            lighttpd_framing: true,
            underscores_in_headers: false,
        }
    }
}

impl fmt::Debug for AjpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        f.debug_struct("AjpConfig")
            .field("limits", &self.limits)
            .field("packet_size", &self.packet_size)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("allowed_attributes", &self.allowed_attributes.len())
            .field("lighttpd_framing", &self.lighttpd_framing)
            .field("underscores_in_headers", &self.underscores_in_headers)
            .finish()
    }
}

impl AjpConfig {
    /// Parameter limits applied to headers and `req_attribute`s; default [`Limits::default`].
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The packet size, header included; default [`AJP_DEFAULT_PACKET_SIZE`] (8192). Must
    /// match the web server's (`ProxyIOBufferSize`, mod_jk `max_packet_size`).
    pub fn packet_size(&self) -> usize {
        self.packet_size
    }

    /// The shared secret requests must carry (attribute 0x0C); default none.
    pub fn secret(&self) -> Option<&[u8]> {
        self.secret.as_deref()
    }

    /// The `req_attribute` names accepted; default [`DEFAULT_ALLOWED_ATTRIBUTES`].
    pub fn allowed_attributes(&self) -> &[Bytes] {
        &self.allowed_attributes
    }

    /// Whether lighttpd's request body framing (no inner length) is recognised; default true.
    pub fn lighttpd_framing(&self) -> bool {
        self.lighttpd_framing
    }

    /// Whether request headers whose names contain `_` are kept when they become `HTTP_*`
    /// variables; default false: `X_User` and `X-User` would both be `HTTP_X_USER`, so
    /// they are dropped as nginx and Apache's CGI mapping drop them.
    pub fn underscores_in_headers(&self) -> bool {
        self.underscores_in_headers
    }

    /// Sets the parameter limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets the packet size.
    ///
    /// # Panics
    ///
    /// When `size` is outside [`AJP_MIN_PACKET_SIZE`]..=[`AJP_MAX_PACKET_SIZE`]; the CLI
    /// validates the option before it gets here.
    pub fn with_packet_size(mut self, size: usize) -> Self {
        assert!(
            (AJP_MIN_PACKET_SIZE..=AJP_MAX_PACKET_SIZE).contains(&size),
            "AJP packet size {size} outside {AJP_MIN_PACKET_SIZE}..={AJP_MAX_PACKET_SIZE}"
        );
        self.packet_size = size;
        self
    }

    /// Requires every request to carry `secret` (Apache's `secret=`). Requests without it, or
    /// with another, get [`Event::Forbidden`].
    ///
    /// # Panics
    ///
    /// When `secret` is empty: Apache cannot send an empty secret, so it would be a
    /// configuration mistake that silently disables the check.
    pub fn with_secret(mut self, secret: impl Into<Bytes>) -> Self {
        let secret = secret.into();
        assert!(!secret.is_empty(), "AJP secret must not be empty");
        self.secret = Some(secret);
        self
    }

    /// Replaces the accepted `req_attribute` names (exact, case-sensitive match).
    pub fn with_allowed_attributes<I, B>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = B>,
        B: Into<Bytes>,
    {
        self.allowed_attributes = names.into_iter().map(Into::into).collect();
        self
    }

    /// Keeps (or drops, the default) request headers whose names contain `_`.
    pub fn with_underscores_in_headers(mut self, keep: bool) -> Self {
        self.underscores_in_headers = keep;
        self
    }

    /// Enables or disables recognising lighttpd's request body framing (see the module docs
    /// of [`ajp`](super)).
    pub fn with_lighttpd_framing(mut self, enabled: bool) -> Self {
        self.lighttpd_framing = enabled;
        self
    }
}

/// What the server connection reports to its driver.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A request: start a handler. Its secret, if any, has been checked and cleared. When the
    /// body is empty, [`Event::BodyEnd`] follows at once.
    Request {
        /// The CGI variables for the request ([`cgi_params`]), as for the
        /// other protocols.
        params: Params,
        /// The packet itself, for what the variables do not say.
        request: Box<ForwardRequest>,
    },
    /// A request whose CGI variables exceed the parameter limits: the driver answers 400 the
    /// way it answers [`Event::Forbidden`].
    BadRequest {
        /// What was wrong, for the log line.
        error: ProtocolError,
    },
    /// A request refused before it reached any handler: the driver answers 403 with
    /// [`send_headers`](Connection::send_headers) and
    /// [`end_response`](Connection::end_response), which then closes the connection.
    Forbidden {
        /// Why, for the log line.
        reason: ForbiddenReason,
    },
    /// A chunk of the request body (never empty), a zero-copy slice of the input.
    Body(Bytes),
    /// The request body is complete.
    BodyEnd,
}

/// Why a request was refused with [`Event::Forbidden`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ForbiddenReason {
    /// A secret is configured and the request carries none.
    MissingSecret,
    /// The request's secret differs from the configured one.
    WrongSecret,
    /// A `req_attribute` name that is not on the allowlist (Ghostcat).
    AttributeNotAllowed(Bytes),
}

impl fmt::Display for ForbiddenReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingSecret => f.write_str("request carries no secret"),
            Self::WrongSecret => f.write_str("request carries a wrong secret"),
            Self::AttributeNotAllowed(name) => write!(
                f,
                "request attribute {:?} is not allowed",
                String::from_utf8_lossy(name)
            ),
        }
    }
}

/// The server side of one AJP13 connection.
///
/// # Call order
///
/// The driver repeats, until [`wants_close`](Self::wants_close) and the output is drained, or
/// the peer closes:
///
/// 1. Input: read bytes into a `BytesMut` and call [`handle_input`](Self::handle_input). It
///    consumes every complete packet and leaves a partial one in the buffer; `CPING` is
///    answered here. On EOF call [`handle_eof`](Self::handle_eof) with what is left.
/// 2. Events: call [`poll_event`](Self::poll_event) until `None`. [`Event::Request`] starts a
///    handler, [`Event::Body`] / [`Event::BodyEnd`] feed its body, [`Event::Forbidden`] is
///    answered with a 403.
/// 3. Commands: [`request_body_chunk`](Self::request_body_chunk) when the handler wants more
///    body and nothing is on its way; [`send_headers`](Self::send_headers) once, then
///    [`send_body`](Self::send_body) as the handler produces output, then
///    [`end_response`](Self::end_response).
/// 4. Output: call [`poll_transmit`](Self::poll_transmit) and write what it appended, each
///    packet in one write (or with `TCP_NODELAY`: one `GET_BODY_CHUNK` round trip per 8 KiB
///    otherwise costs Nagle's delay). Stop pulling response data while
///    [`queued_output`](Self::queued_output) exceeds
///    [`MAX_QUEUED_OUTPUT`](crate::limits::MAX_QUEUED_OUTPUT).
///
/// Any `ProtocolError` is fatal: log it and close.
///
/// # Behaviour
///
/// - **Body accounting.** With `Content-Length > 0` the first body packet arrives unrequested;
///   after it, more arrive only for `GET_BODY_CHUNK`, which asks for at most what
///   `Content-Length` has left (never beyond it). A chunked body (`Transfer-Encoding`) has no
///   unrequested packet and ends with an end-of-body packet (both forms accepted). An
///   end-of-body packet before `Content-Length` bytes is [`ProtocolError::TruncatedBody`]; a
///   packet carrying more than is left is [`ProtocolError::BodyOverrun`].
/// - **Reuse.** `END_RESPONSE` says reuse=1 only when the request body was received to its
///   end, `SEND_HEADERS` was sent and the request was not forbidden. Otherwise it says reuse=0
///   and the connection is done: a body the handler did not read is not drained but closed
///   with the connection, so none of its bytes can be taken for the next request.
/// - **Output** is queued only inside a request: `send_headers` once (later calls are
///   no-ops), `send_body` only after it, nothing after `end_response`.
/// - **Idle.** `CPING` is answered with `CPONG` whenever no request is active. `SHUTDOWN`,
///   `PING`, codes only a container sends, unknown codes and empty packets are errors.
#[derive(Debug)]
pub struct Connection {
    config: AjpConfig,
    decoder: PacketDecoder,
    state: State,
    /// The web server's body framing, decided by its first body packet with data.
    framing: BodyFraming,
    /// lighttpd sends an end-of-body packet right after a request with `Content-Length: 0`;
    /// true while that packet may still come.
    stray_end_allowed: bool,
    events: VecDeque<Event>,
    out: Output,
}

/// The connection's one request slot (style rule 6).
#[derive(Debug)]
enum State {
    /// No request: `FORWARD_REQUEST` or `CPING`.
    Idle,
    /// A request was announced to the driver and has not ended.
    Active(Active),
    /// The connection ends once output is drained: a response ended with reuse=0, or an
    /// error occurred. Input is discarded.
    Done,
}

#[derive(Debug)]
struct Active {
    body: Body,
    headers_sent: bool,
    /// [`Event::Forbidden`] was emitted: input is discarded, the response closes.
    forbidden: bool,
}

/// Request body accounting.
#[derive(Debug)]
struct Body {
    /// `Content-Length`; `None` for a chunked body.
    declared: Option<u64>,
    received: u64,
    /// A body packet is on its way: the unrequested first one, or one asked for.
    outstanding: bool,
    /// [`Event::BodyEnd`] was emitted.
    ended: bool,
}

impl Body {
    fn for_request(req: &ForwardRequest) -> Self {
        let declared = req.content_length.filter(|_| !req.chunked);
        let empty = !req.chunked && declared.unwrap_or(0) == 0;
        Self {
            declared,
            received: 0,
            outstanding: !empty && declared.is_some(),
            ended: empty,
        }
    }

    fn remaining(&self) -> Option<u64> {
        self.declared.map(|d| d - self.received)
    }
}

impl Connection {
    /// A new idle connection.
    pub fn new(config: AjpConfig) -> Self {
        Self {
            decoder: PacketDecoder::server(config.packet_size),
            config,
            state: State::Idle,
            framing: BodyFraming::Unknown,
            stray_end_allowed: false,
            events: VecDeque::new(),
            out: Output::new(),
        }
    }

    /// Decodes every complete packet in `src`, consuming them; a partial packet stays.
    ///
    /// Once the connection is done, or while a forbidden request is answered, input is
    /// discarded.
    pub fn handle_input(&mut self, src: &mut BytesMut) -> Result<(), ProtocolError> {
        loop {
            match &self.state {
                State::Done
                | State::Active(Active {
                    forbidden: true, ..
                }) => {
                    src.clear();
                    return Ok(());
                }
                State::Idle | State::Active(_) => {}
            }
            let payload = match self.decoder.decode(src) {
                Ok(Some(payload)) => payload,
                Ok(None) => return Ok(()),
                Err(e) => return Err(self.fail(e)),
            };
            if let Err(e) = self.handle_packet(payload) {
                return Err(self.fail(e));
            }
        }
    }

    /// Next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The event [`poll_event`](Self::poll_event) returns next, left in place.
    pub fn peek_event(&self) -> Option<&Event> {
        self.events.front()
    }

    /// Asks the web server for the next body packet (`GET_BODY_CHUNK` for at most what
    /// `Content-Length` has left, and at most a packet's worth). Returns false, queuing
    /// nothing, when no request is active, the body is complete, or a packet is already on
    /// its way.
    pub fn request_body_chunk(&mut self) -> bool {
        let max = max_body_packet(self.config.packet_size) as u64;
        let State::Active(Active {
            body,
            forbidden: false,
            ..
        }) = &mut self.state
        else {
            return false;
        };
        if body.ended || body.outstanding {
            return false;
        }
        let len = body.remaining().map_or(max, |r| r.min(max));
        // len <= max <= 65 530, so the cast cannot truncate.
        encode_get_body_chunk(len as u16, self.out.buf());
        body.outstanding = true;
        true
    }

    /// Queues `SEND_HEADERS`. Header names with a response code (`Content-Type`, ...) are
    /// coded; control bytes in names and values become spaces; an empty `reason` is sent as
    /// the status number.
    ///
    /// A no-op (`Ok`) when no request is active or the headers were already sent. Fails, queuing
    /// nothing, when the head does not fit one packet: the driver then answers 500 with a
    /// smaller head.
    pub fn send_headers(
        &mut self,
        status: u16,
        reason: &[u8],
        headers: &[(&[u8], &[u8])],
    ) -> Result<(), PacketOverflow> {
        let State::Active(active) = &mut self.state else {
            return Ok(());
        };
        if active.headers_sent {
            return Ok(());
        }
        encode_send_headers(
            status,
            reason,
            headers,
            self.config.packet_size,
            self.out.buf(),
        )?;
        active.headers_sent = true;
        Ok(())
    }

    /// Queues `data` as `SEND_BODY_CHUNK` packets of at most `packet_size - 8` data bytes. A
    /// no-op for empty `data`, before [`send_headers`](Self::send_headers) and outside a
    /// request.
    pub fn send_body(&mut self, data: Bytes) {
        if self.responding() {
            queue_send_body_chunk(data, self.config.packet_size, &mut self.out);
        }
    }

    /// Queues an empty `SEND_BODY_CHUNK`, which asks the web server to flush what it has
    /// buffered to the client. Same no-op rules as [`send_body`](Self::send_body).
    pub fn send_flush(&mut self) {
        if self.responding() {
            encode_flush(self.out.buf());
        }
    }

    /// Ends the response with `END_RESPONSE`; reuse=1 (and the connection idle again) only
    /// when the request body was received to its end, the headers were sent and the request
    /// was not forbidden, else reuse=0 and [`wants_close`](Self::wants_close). A no-op outside
    /// a request.
    pub fn end_response(&mut self) {
        let State::Active(active) = &self.state else {
            return;
        };
        let reuse = active.body.ended && active.headers_sent && !active.forbidden;
        encode_end_response(reuse, self.out.buf());
        self.events.clear();
        self.state = if reuse { State::Idle } else { State::Done };
    }

    /// Moves all queued output behind what `dst` holds and empties the queue.
    pub fn poll_transmit(&mut self, dst: &mut Output) {
        dst.append(&mut self.out);
    }

    /// Bytes of queued output.
    pub fn queued_output(&self) -> usize {
        self.out.len()
    }

    /// True when the connection should close once output is flushed.
    pub fn wants_close(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// True when no request is active.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Idle | State::Done)
    }

    /// The peer closed its side; `src` is what was left unconsumed.
    ///
    /// A partial packet is [`ProtocolError::UnexpectedEof`]; a request whose body has not
    /// ended is [`ProtocolError::TruncatedBody`] (the driver reports it to the handler);
    /// otherwise `Ok(())`.
    pub fn handle_eof(&mut self, src: &BytesMut) -> Result<(), ProtocolError> {
        let result = match &self.state {
            _ if !src.is_empty() && !self.wants_close() => {
                Err(ProtocolError::UnexpectedEof("AJP packet"))
            }
            State::Active(Active {
                body,
                forbidden: false,
                ..
            }) if !body.ended => Err(ProtocolError::TruncatedBody {
                received: body.received,
                expected: body.declared,
            }),
            _ => Ok(()),
        };
        if result.is_err() {
            self.state = State::Done;
        }
        result
    }

    fn fail(&mut self, error: ProtocolError) -> ProtocolError {
        self.state = State::Done;
        error
    }

    fn responding(&self) -> bool {
        matches!(
            self.state,
            State::Active(Active {
                headers_sent: true,
                ..
            })
        )
    }

    /// One packet, by state.
    fn handle_packet(&mut self, payload: Bytes) -> Result<(), ProtocolError> {
        let stray_end_allowed = mem::take(&mut self.stray_end_allowed);
        if payload.is_empty() && stray_end_allowed {
            return Ok(());
        }
        match &mut self.state {
            State::Idle => self.on_idle(payload),
            State::Active(active) => {
                let body = &mut active.body;
                let expecting =
                    body.outstanding || (self.framing == BodyFraming::Raw && !body.ended);
                if !expecting {
                    return Err(ProtocolError::UnexpectedPacket {
                        expected: "no packet until END_RESPONSE",
                        got: describe(&payload),
                    });
                }
                if self.framing == BodyFraming::Unknown && self.config.lighttpd_framing {
                    self.framing = framing_from_length(
                        payload.len(),
                        body.remaining(),
                        max_body_packet(self.config.packet_size),
                    );
                }
                on_body(
                    body,
                    load_body(payload, &mut self.framing, self.config.lighttpd_framing)?,
                    &mut self.events,
                )
            }
            // handle_input never decodes in Done.
            State::Done => Ok(()),
        }
    }

    fn on_idle(&mut self, payload: Bytes) -> Result<(), ProtocolError> {
        const EXPECTED: &str = "FORWARD_REQUEST or CPING";
        let Some(&code) = payload.first() else {
            return Err(ProtocolError::UnexpectedPacket {
                expected: EXPECTED,
                got: "an empty packet",
            });
        };
        match Code::from_u8(code) {
            Code::ForwardRequest => {
                let req = ForwardRequest::load(&payload, &self.config.limits)?;
                self.start(req);
                Ok(())
            }
            Code::CPing if payload.len() == 1 => {
                encode_cpong(self.out.buf());
                Ok(())
            }
            Code::CPing => Err(ProtocolError::TrailingData {
                what: "CPING",
                len: payload.len() - 1,
            }),
            Code::Unknown(c) => Err(ProtocolError::UnknownPacketCode(c)),
            other => Err(ProtocolError::UnexpectedPacket {
                expected: EXPECTED,
                got: other.name(),
            }),
        }
    }

    /// Checks the secret and attributes, then announces the request (or refuses it).
    fn start(&mut self, mut req: ForwardRequest) {
        let secret = req.attributes.secret.take();
        let refused = match (&self.config.secret, secret) {
            (Some(_), None) => Some(ForbiddenReason::MissingSecret),
            (Some(want), Some(got)) if !constant_time_eq(want, &got) => {
                Some(ForbiddenReason::WrongSecret)
            }
            _ => req
                .attributes
                .req_attributes
                .iter()
                .find(|(name, _)| !self.config.allowed_attributes.contains(name))
                .map(|(name, _)| ForbiddenReason::AttributeNotAllowed(name.clone())),
        };
        let body = Body::for_request(&req);
        let refusal = match refused {
            Some(reason) => Some(Event::Forbidden { reason }),
            None => match cgi_params(
                &req,
                &self.config.limits(),
                self.config.underscores_in_headers,
            ) {
                Ok(params) => {
                    self.stray_end_allowed = self.config.lighttpd_framing
                        && !req.chunked
                        && req.content_length == Some(0);
                    let ended = body.ended;
                    self.events.push_back(Event::Request {
                        params,
                        request: Box::new(req),
                    });
                    if ended {
                        self.events.push_back(Event::BodyEnd);
                    }
                    None
                }
                Err(error) => Some(Event::BadRequest { error }),
            },
        };
        let forbidden = refusal.is_some();
        if let Some(event) = refusal {
            self.events.push_back(event);
        }
        self.state = State::Active(Active {
            body,
            headers_sent: false,
            forbidden,
        });
    }
}

/// Accounts one body packet.
fn on_body(
    body: &mut Body,
    packet: BodyPacket,
    events: &mut VecDeque<Event>,
) -> Result<(), ProtocolError> {
    body.outstanding = false;
    match packet {
        BodyPacket::End => {
            if body.remaining().is_some_and(|r| r > 0) {
                return Err(ProtocolError::TruncatedBody {
                    received: body.received,
                    expected: body.declared,
                });
            }
            body.ended = true;
            events.push_back(Event::BodyEnd);
        }
        BodyPacket::Data(data) => {
            let len = data.len() as u64;
            if let Some(remaining) = body.remaining() {
                if len > remaining {
                    return Err(ProtocolError::BodyOverrun { len, remaining });
                }
            }
            body.received += len;
            events.push_back(Event::Body(data));
            if body.remaining() == Some(0) {
                body.ended = true;
                events.push_back(Event::BodyEnd);
            }
        }
    }
    Ok(())
}

/// Names an unexpected packet by its first byte.
fn describe(payload: &[u8]) -> &'static str {
    match payload.first() {
        None => "an empty packet",
        Some(&code) => Code::from_u8(code).name(),
    }
}

/// Compares two secrets in time that depends only on `want`'s length, not on where they
/// differ (the configured secret's length is not secret; Tomcat's compare leaks it too).
fn constant_time_eq(want: &[u8], got: &[u8]) -> bool {
    let mut diff = u8::from(want.len() != got.len());
    for (i, &w) in want.iter().enumerate() {
        diff |= w ^ got.get(i).copied().unwrap_or(!w);
    }
    std::hint::black_box(diff) == 0
}

/// Decides the body framing from the first data packet's length when `Content-Length` says
/// how much is left: a web server sends the whole rest in its first packet when it fits, so
/// a packet of exactly `remaining` bytes is lighttpd's raw framing and one of `remaining + 2`
/// the standard one. Looking at the first two data bytes alone cannot tell them apart for a
/// body that happens to start with its own length minus 2 (a 100-byte body starting
/// `00 62`). Larger bodies, or no `Content-Length`, stay undecided for [`load_body`].
fn framing_from_length(len: usize, remaining: Option<u64>, max_data: usize) -> BodyFraming {
    let Some(remaining) = remaining.and_then(|r| usize::try_from(r).ok()) else {
        return BodyFraming::Unknown;
    };
    if remaining == 0 || remaining > max_data {
        BodyFraming::Unknown
    } else if len == remaining {
        BodyFraming::Raw
    } else if Some(len) == remaining.checked_add(2) {
        BodyFraming::Standard
    } else {
        BodyFraming::Unknown
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::ajp::decode::{ClientDecoder, ContainerPacket};
    use crate::ajp::encode::{encode_body_packet, encode_forward_request};
    use crate::ajp::packet::Attributes;

    /// Digest §3.8 case 2: a minimal GET, payload 0x3F bytes.
    const MINIMAL_GET: &[u8] = b"\x12\x34\x00\x3f\x02\x02\x00\x08HTTP/1.1\x00\
\x00\x01/\x00\x00\x09127.0.0.1\x00\xff\xff\x00\x09localhost\x00\x00\x50\x00\x00\x01\
\xa0\x0b\x00\x09localhost\x00\xff";
    const CPING: &[u8] = b"\x12\x34\x00\x01\x0a";
    const CPONG: &[u8] = b"\x41\x42\x00\x01\x09";
    const END_REUSE: &[u8] = b"\x41\x42\x00\x02\x05\x01";
    const END_CLOSE: &[u8] = b"\x41\x42\x00\x02\x05\x00";

    fn conn() -> Connection {
        Connection::new(AjpConfig::default())
    }

    fn feed(conn: &mut Connection, bytes: &[u8]) -> Result<Vec<Event>, ProtocolError> {
        let mut src = BytesMut::from(bytes);
        conn.handle_input(&mut src)?;
        assert!(src.is_empty(), "a complete packet was left unconsumed");
        Ok(events(conn))
    }

    fn events(conn: &mut Connection) -> Vec<Event> {
        std::iter::from_fn(|| conn.poll_event()).collect()
    }

    fn output(conn: &mut Connection) -> Vec<u8> {
        let mut dst = Output::new();
        conn.poll_transmit(&mut dst);
        dst.to_vec()
    }

    fn request(method: &'static str, headers: &[(&'static str, &'static str)]) -> ForwardRequest {
        ForwardRequest {
            method: Bytes::from_static(method.as_bytes()),
            protocol: Bytes::from_static(b"HTTP/1.1"),
            req_uri: Bytes::from_static(b"/app"),
            remote_addr: Bytes::from_static(b"127.0.0.1"),
            server_name: Bytes::from_static(b"localhost"),
            server_port: 80,
            headers: headers
                .iter()
                .map(|(n, v)| {
                    (
                        Bytes::from_static(n.as_bytes()),
                        Bytes::from_static(v.as_bytes()),
                    )
                })
                .collect(),
            ..ForwardRequest::default()
        }
    }

    fn packet(req: &ForwardRequest) -> Vec<u8> {
        let mut dst = BytesMut::new();
        encode_forward_request(req, &mut dst).unwrap();
        dst.to_vec()
    }

    fn body_packet(data: &[u8]) -> Vec<u8> {
        let mut dst = BytesMut::new();
        encode_body_packet(data, &mut dst);
        dst.to_vec()
    }

    fn post(content_length: &'static str) -> Vec<u8> {
        packet(&request("POST", &[("content-length", content_length)]))
    }

    fn answer(conn: &mut Connection) -> Vec<u8> {
        conn.send_headers(200, b"OK", &[]).unwrap();
        conn.end_response();
        output(conn)
    }

    fn is_request(e: &Event) -> bool {
        matches!(e, Event::Request { .. })
    }

    #[test]
    fn case1_cping_three_times_then_a_request() {
        let mut c = conn();
        assert_eq!(feed(&mut c, &CPING.repeat(3)).unwrap(), []);
        assert_eq!(output(&mut c), CPONG.repeat(3));
        assert!(c.is_idle());
        let ev = feed(&mut c, MINIMAL_GET).unwrap();
        assert_eq!(ev.len(), 2);
        assert!(is_request(&ev[0]));
        assert_eq!(ev[1], Event::BodyEnd);
    }

    #[test]
    fn case2_minimal_get_full_exchange_byte_for_byte() {
        let mut c = conn();
        let ev = feed(&mut c, MINIMAL_GET).unwrap();
        let Event::Request { request: req, .. } = &ev[0] else {
            panic!("expected a request: {ev:?}");
        };
        assert_eq!(req.method, "GET");
        assert_eq!(req.header(b"Host").unwrap(), "localhost");
        assert_eq!(ev[1], Event::BodyEnd);
        assert!(!c.is_idle());
        c.send_headers(200, b"OK", &[(b"Content-Type", b"text/plain")])
            .unwrap();
        c.send_body(Bytes::from_static(b"abc"));
        c.end_response();
        let want: &[u8] = b"\x41\x42\x00\x19\x04\x00\xc8\x00\x02OK\x00\x00\x01\xa0\x01\x00\x0a\
text/plain\x00\x41\x42\x00\x07\x03\x00\x03abc\x00\x41\x42\x00\x02\x05\x01";
        assert_eq!(output(&mut c), want);
        assert!(c.is_idle());
        assert!(!c.wants_close());
        // The connection is reused: CPING, then another request.
        assert_eq!(feed(&mut c, CPING).unwrap(), []);
        assert_eq!(output(&mut c), CPONG);
        assert!(is_request(&feed(&mut c, MINIMAL_GET).unwrap()[0]));
    }

    #[test]
    fn case3_post_with_its_unrequested_body() {
        let mut c = conn();
        let mut wire = post("3");
        wire.extend_from_slice(b"\x12\x34\x00\x05\x00\x03abc");
        let ev = feed(&mut c, &wire).unwrap();
        assert_eq!(ev.len(), 3);
        let Event::Request { request: req, .. } = &ev[0] else {
            panic!("{ev:?}");
        };
        assert_eq!(req.content_length, Some(3));
        assert_eq!(ev[1], Event::Body(Bytes::from_static(b"abc")));
        assert_eq!(ev[2], Event::BodyEnd);
        // Never beyond Content-Length.
        assert!(!c.request_body_chunk());
        assert!(answer(&mut c).ends_with(END_REUSE));
    }

    #[test]
    fn case3_more_body_on_request_only() {
        let mut c = conn();
        let mut wire = post("6");
        wire.extend_from_slice(b"\x12\x34\x00\x05\x00\x03abc");
        let ev = feed(&mut c, &wire).unwrap();
        assert_eq!(ev[1..], [Event::Body(Bytes::from_static(b"abc"))]);
        assert!(c.request_body_chunk());
        // Asks for what is left, not a full packet.
        assert_eq!(output(&mut c), b"\x41\x42\x00\x03\x06\x00\x03");
        assert!(!c.request_body_chunk(), "one request at a time");
        let ev = feed(&mut c, b"\x12\x34\x00\x05\x00\x03def").unwrap();
        assert_eq!(
            ev,
            [Event::Body(Bytes::from_static(b"def")), Event::BodyEnd]
        );
        assert!(!c.request_body_chunk());
        assert!(answer(&mut c).ends_with(END_REUSE));
    }

    #[test]
    fn case3_end_of_body_before_content_length_is_truncation() {
        for end in [&b"\x12\x34\x00\x02\x00\x00"[..], b"\x12\x34\x00\x00"] {
            let mut c = conn();
            let mut wire = post("6");
            wire.extend_from_slice(b"\x12\x34\x00\x05\x00\x03abc");
            feed(&mut c, &wire).unwrap();
            assert!(c.request_body_chunk());
            assert_eq!(
                feed(&mut c, end),
                Err(ProtocolError::TruncatedBody {
                    received: 3,
                    expected: Some(6)
                })
            );
            assert!(c.wants_close());
        }
    }

    #[test]
    fn body_overrun_is_refused() {
        let mut c = conn();
        let mut wire = post("3");
        wire.extend_from_slice(&body_packet(b"abcd"));
        assert_eq!(
            feed(&mut c, &wire),
            Err(ProtocolError::BodyOverrun {
                len: 4,
                remaining: 3
            })
        );
    }

    #[test]
    fn case4_ignored_body_is_never_parsed_as_a_request() {
        let mut c = conn();
        // The first, unrequested packet of a 20 KB body holds a valid-looking FORWARD_REQUEST.
        let mut data = MINIMAL_GET.repeat(8186 / MINIMAL_GET.len());
        data.resize(8186, 0);
        let mut wire = post("20480");
        wire.extend_from_slice(&body_packet(&data));
        let ev = feed(&mut c, &wire).unwrap();
        assert_eq!(ev.len(), 2);
        assert!(is_request(&ev[0]));
        assert_eq!(ev[1], Event::Body(Bytes::from(data.clone())));
        // The handler ignores the rest: reuse=0, and the connection is done.
        assert!(answer(&mut c).ends_with(END_CLOSE));
        assert!(c.wants_close());
        // Whatever the web server still sends is discarded, requests included.
        let mut more = body_packet(&data);
        more.extend_from_slice(MINIMAL_GET);
        assert_eq!(feed(&mut c, &more).unwrap(), []);
        assert_eq!(output(&mut c), b"");
    }

    #[test]
    fn case4_response_before_the_unrequested_packet_closes() {
        let mut c = conn();
        feed(&mut c, &post("20480")).unwrap();
        assert!(answer(&mut c).ends_with(END_CLOSE));
        assert!(c.wants_close());
        // The packet that was on its way, shaped like a request, is discarded.
        assert_eq!(feed(&mut c, MINIMAL_GET).unwrap(), []);
    }

    #[test]
    fn case4_body_packet_starting_with_the_request_code_is_body() {
        // 600 data bytes: the inner length 0x0258 starts the payload with 0x02.
        let mut c = conn();
        let data = vec![0xff; 600];
        let mut wire = post("600");
        wire.extend_from_slice(&body_packet(&data));
        assert_eq!(wire[wire.len() - 602], 0x02);
        let ev = feed(&mut c, &wire).unwrap();
        assert_eq!(ev[1..], [Event::Body(Bytes::from(data)), Event::BodyEnd]);
    }

    #[test]
    fn no_packet_while_a_request_is_active_and_nothing_was_asked() {
        let mut c = conn();
        let mut wire = MINIMAL_GET.to_vec();
        wire.extend_from_slice(MINIMAL_GET);
        assert_eq!(
            feed(&mut c, &wire),
            Err(ProtocolError::UnexpectedPacket {
                expected: "no packet until END_RESPONSE",
                got: "FORWARD_REQUEST",
            })
        );
        let mut c = conn();
        let mut wire = MINIMAL_GET.to_vec();
        wire.extend_from_slice(CPING);
        assert_eq!(
            feed(&mut c, &wire),
            Err(ProtocolError::UnexpectedPacket {
                expected: "no packet until END_RESPONSE",
                got: "CPING",
            })
        );
    }

    #[test]
    fn case5_chunked_body_loops_until_either_end_packet() {
        for end in [&b"\x12\x34\x00\x02\x00\x00"[..], b"\x12\x34\x00\x00"] {
            let mut c = conn();
            let req = request("POST", &[("Transfer-Encoding", "chunked")]);
            let ev = feed(&mut c, &packet(&req)).unwrap();
            assert_eq!(ev.len(), 1, "no body, no BodyEnd yet: {ev:?}");
            let Event::Request { request: req, .. } = &ev[0] else {
                panic!("{ev:?}");
            };
            assert!(req.chunked);
            for chunk in [&b"abc"[..], b"defg"] {
                assert!(c.request_body_chunk());
                assert_eq!(output(&mut c), b"\x41\x42\x00\x03\x06\x1f\xfa");
                let ev = feed(&mut c, &body_packet(chunk)).unwrap();
                assert_eq!(ev, [Event::Body(Bytes::copy_from_slice(chunk))]);
            }
            assert!(c.request_body_chunk());
            output(&mut c);
            assert_eq!(feed(&mut c, end).unwrap(), [Event::BodyEnd]);
            assert!(!c.request_body_chunk());
            assert!(answer(&mut c).ends_with(END_REUSE));
            assert!(c.is_idle() && !c.wants_close());
        }
    }

    #[test]
    fn case5_chunked_body_packet_before_it_was_asked_for() {
        let mut c = conn();
        let mut wire = packet(&request("POST", &[("Transfer-Encoding", "chunked")]));
        wire.extend_from_slice(&body_packet(b"abc"));
        assert_eq!(
            feed(&mut c, &wire),
            Err(ProtocolError::UnexpectedPacket {
                expected: "no packet until END_RESPONSE",
                got: "an unknown code",
            })
        );
    }

    #[test]
    fn case6_attributes_reach_the_driver() {
        let mut req = request("PROPFX", &[]);
        req.attributes = Attributes {
            query_string: Some(Bytes::from_static(b"x=1")),
            ssl_key_size: Some(256),
            req_attributes: vec![(
                Bytes::from_static(b"AJP_REMOTE_PORT"),
                Bytes::from_static(b"54321"),
            )],
            ..Attributes::default()
        };
        let wire = packet(&req);
        // Stored method on the wire: 0xFF, then attribute 0x0D 'PROPFX'.
        assert_eq!(wire[5], 0xff);
        let mut c = conn();
        let ev = feed(&mut c, &wire).unwrap();
        let Event::Request { request: got, .. } = &ev[0] else {
            panic!("{ev:?}");
        };
        assert_eq!(**got, req);
        assert_eq!(got.remote_port(), Some(54321));
        assert_eq!(got.attributes.ssl_key_size, Some(256));
    }

    #[test]
    fn case7_ghostcat_attribute_is_forbidden() {
        let mut req = request("GET", &[]);
        req.attributes.req_attributes = vec![
            (
                Bytes::from_static(b"AJP_REMOTE_PORT"),
                Bytes::from_static(b"1"),
            ),
            (
                Bytes::from_static(b"javax.servlet.include.request_uri"),
                Bytes::from_static(b"/WEB-INF/web.xml"),
            ),
        ];
        let mut c = conn();
        let ev = feed(&mut c, &packet(&req)).unwrap();
        assert_eq!(
            ev,
            [Event::Forbidden {
                reason: ForbiddenReason::AttributeNotAllowed(Bytes::from_static(
                    b"javax.servlet.include.request_uri"
                ))
            }]
        );
        // Nothing more is parsed; the 403 closes the connection.
        assert_eq!(feed(&mut c, MINIMAL_GET).unwrap(), []);
        assert!(!c.request_body_chunk());
        c.send_headers(403, b"Forbidden", &[]).unwrap();
        c.end_response();
        let out = output(&mut c);
        assert!(out.starts_with(b"\x41\x42\x00\x11\x04\x01\x93"));
        assert!(out.ends_with(END_CLOSE));
        assert!(c.wants_close());

        // A custom allowlist replaces the default one.
        let config = AjpConfig::default().with_allowed_attributes(["X_ONLY"]);
        let mut c = Connection::new(config);
        let mut req = request("GET", &[]);
        req.attributes.req_attributes = vec![(Bytes::from_static(b"AJP_LOCAL_ADDR"), Bytes::new())];
        assert!(matches!(
            feed(&mut c, &packet(&req)).unwrap()[..],
            [Event::Forbidden { .. }]
        ));
    }

    #[test]
    fn case8_secret() {
        let config = AjpConfig::default().with_secret("s3cret");
        let with_secret = |secret: Option<&'static [u8]>| {
            let mut req = request("GET", &[]);
            req.attributes.secret = secret.map(Bytes::from_static);
            let mut c = Connection::new(config.clone());
            let ev = feed(&mut c, &packet(&req)).unwrap();
            (c, ev)
        };
        let forbidden = |reason| vec![Event::Forbidden { reason }];
        assert_eq!(
            with_secret(None).1,
            forbidden(ForbiddenReason::MissingSecret)
        );
        assert_eq!(
            with_secret(Some(b"s3creT")).1,
            forbidden(ForbiddenReason::WrongSecret)
        );
        assert_eq!(
            with_secret(Some(b"s3cre")).1,
            forbidden(ForbiddenReason::WrongSecret)
        );
        assert_eq!(
            with_secret(Some(b"s3crets")).1,
            forbidden(ForbiddenReason::WrongSecret)
        );
        assert_eq!(
            with_secret(Some(b"")).1,
            forbidden(ForbiddenReason::WrongSecret)
        );
        let (mut c, ev) = with_secret(Some(b"s3cret"));
        let Event::Request { request: req, .. } = &ev[0] else {
            panic!("{ev:?}");
        };
        assert_eq!(
            req.attributes.secret, None,
            "the secret must not reach the app"
        );
        assert!(answer(&mut c).ends_with(END_REUSE));

        // No secret configured: a received one is ignored (and still not passed on).
        let mut req = request("GET", &[]);
        req.attributes.secret = Some(Bytes::from_static(b"anything"));
        let ev = feed(&mut conn(), &packet(&req)).unwrap();
        let Event::Request { request: req, .. } = &ev[0] else {
            panic!("{ev:?}");
        };
        assert_eq!(req.attributes.secret, None);
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"a", b""));
        // A byte that equals !w must not pass where `got` is short.
        assert!(!constant_time_eq(&[0x00, 0xff], &[0x00]));
    }

    #[test]
    fn case9_malformed_input_closes() {
        let mut two_cl = request("POST", &[("content-length", "3"), ("Content-Length", "3")]);
        let bad_cl = request("POST", &[("content-length", "3x")]);
        let mut no_terminator = packet(&request("GET", &[]));
        no_terminator.pop();
        no_terminator[3] -= 1;
        two_cl.req_uri = Bytes::from_static(b"/");
        let cases: Vec<(Vec<u8>, ProtocolError)> = vec![
            (
                b"\x41\x42\x00\x01\x0a".to_vec(),
                ProtocolError::BadMagic([0x41, 0x42]),
            ),
            (
                b"\x12\x35\x00\x01\x0a".to_vec(),
                ProtocolError::BadMagic([0x12, 0x35]),
            ),
            (
                b"\x12\x34\xff\xff".to_vec(),
                ProtocolError::PacketTooLarge {
                    len: 0xffff,
                    max: 8188,
                },
            ),
            (
                b"\x12\x34\x00\x00".to_vec(),
                ProtocolError::UnexpectedPacket {
                    expected: "FORWARD_REQUEST or CPING",
                    got: "an empty packet",
                },
            ),
            (
                b"\x12\x34\x00\x01\x07".to_vec(),
                ProtocolError::UnexpectedPacket {
                    expected: "FORWARD_REQUEST or CPING",
                    got: "SHUTDOWN",
                },
            ),
            (
                b"\x12\x34\x00\x01\x08".to_vec(),
                ProtocolError::UnexpectedPacket {
                    expected: "FORWARD_REQUEST or CPING",
                    got: "PING",
                },
            ),
            (
                b"\x12\x34\x00\x02\x04\x00".to_vec(),
                ProtocolError::UnexpectedPacket {
                    expected: "FORWARD_REQUEST or CPING",
                    got: "SEND_HEADERS",
                },
            ),
            (
                b"\x12\x34\x00\x01\x0e".to_vec(),
                ProtocolError::UnknownPacketCode(0x0e),
            ),
            (
                b"\x12\x34\x00\x02\x0a\x00".to_vec(),
                ProtocolError::TrailingData {
                    what: "CPING",
                    len: 1,
                },
            ),
            (
                no_terminator,
                ProtocolError::MissingData("attribute list terminator"),
            ),
            (packet(&two_cl), ProtocolError::DuplicateContentLength),
            (
                packet(&bad_cl),
                ProtocolError::InvalidContentLength("not ASCII digits"),
            ),
            (
                b"\x12\x34\x00\x04\x02\x00\xff\xff".to_vec(),
                ProtocolError::UnknownMethod(0),
            ),
        ];
        for (wire, err) in cases {
            let mut c = conn();
            assert_eq!(feed(&mut c, &wire), Err(err), "{wire:02x?}");
            assert!(c.wants_close());
            assert_eq!(output(&mut c), b"");
            // Nothing after an error is parsed.
            assert_eq!(feed(&mut c, MINIMAL_GET).unwrap(), []);
        }
    }

    #[test]
    fn case10_large_response_is_split_at_the_packet_size() {
        for (size, chunk) in [(8192, 8184), (65536, 65528)] {
            let config = AjpConfig::default().with_packet_size(size);
            let mut c = Connection::new(config);
            feed(&mut c, MINIMAL_GET).unwrap();
            c.send_headers(200, b"OK", &[]).unwrap();
            let body: Vec<u8> = (0..100 * 1024).map(|i| (i % 253) as u8).collect();
            c.send_body(Bytes::from(body.clone()));
            c.end_response();
            let mut out = BytesMut::from(&output(&mut c)[..]);
            let mut dec = ClientDecoder::new(size);
            let mut got = Vec::new();
            let mut sizes = Vec::new();
            let mut end = None;
            while let Some(p) = dec.decode(&mut out).unwrap() {
                match p {
                    ContainerPacket::SendBodyChunk(data) => {
                        sizes.push(data.len());
                        got.extend_from_slice(&data);
                    }
                    ContainerPacket::EndResponse { reuse } => end = Some(reuse),
                    ContainerPacket::SendHeaders(h) => assert_eq!(h.status, 200),
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert_eq!(got, body);
            assert!(sizes.iter().all(|&n| n <= chunk));
            assert_eq!(sizes[0], chunk);
            assert_eq!(sizes.len(), body.len().div_ceil(chunk));
            assert_eq!(end, Some(true));
        }
    }

    #[test]
    fn large_body_packets_hold_the_apps_bytes_uncopied() {
        let mut c = Connection::new(AjpConfig::default());
        feed(&mut c, MINIMAL_GET).unwrap();
        c.send_headers(200, b"OK", &[]).unwrap();
        let body = Bytes::from(vec![b'b'; 8184 + 100]);
        c.send_body(body.clone());
        let mut out = Output::new();
        c.poll_transmit(&mut out);
        let mut slices = [std::io::IoSlice::new(&[]); 8];
        let n = bytes::Buf::chunks_vectored(&out, &mut slices);
        // SEND_HEADERS and the first packet's head, its 8 184 data bytes uncopied, then its
        // trailing 0 and the second packet whole (100 bytes, copied).
        assert_eq!(n, 3);
        assert_eq!((slices[1].as_ptr(), slices[1].len()), (body.as_ptr(), 8184));
        assert_eq!(slices[2].len(), 1 + 4 + 3 + 100 + 1);
    }

    #[test]
    fn request_packet_size_at_and_over_the_limit() {
        // A header value sized so the payload is exactly `max`, then one byte more.
        let sized = |payload: usize| {
            let mut req = request("GET", &[]);
            req.headers
                .push((Bytes::from_static(b"x-pad"), Bytes::new()));
            let base = packet(&req).len() - 4;
            req.headers[0].1 = Bytes::from(vec![b'p'; payload - base]);
            let wire = packet(&req);
            assert_eq!(wire.len(), payload + 4);
            wire
        };
        let mut c = conn();
        assert!(is_request(&feed(&mut c, &sized(8188)).unwrap()[0]));
        let mut c = conn();
        assert_eq!(
            feed(&mut c, &sized(8189)),
            Err(ProtocolError::PacketTooLarge {
                len: 8189,
                max: 8188
            })
        );
        // The same packet is fine once both sides use larger packets.
        let mut c = Connection::new(AjpConfig::default().with_packet_size(65536));
        assert!(is_request(&feed(&mut c, &sized(30_000)).unwrap()[0]));
    }

    #[test]
    fn send_headers_that_do_not_fit_queue_nothing() {
        let mut c = conn();
        feed(&mut c, MINIMAL_GET).unwrap();
        let big = vec![b'v'; 8200];
        assert_eq!(
            c.send_headers(200, b"OK", &[(b"X-Big", &big)]),
            Err(PacketOverflow {
                len: 8221,
                max: 8188
            })
        );
        assert_eq!(c.queued_output(), 0);
        c.send_body(Bytes::from_static(b"ignored before headers"));
        assert_eq!(c.queued_output(), 0);
        // The driver falls back to a smaller head.
        c.send_headers(500, b"Internal Server Error", &[]).unwrap();
        c.send_headers(200, b"OK", &[]).unwrap(); // a second head is ignored
        let out = output(&mut c);
        assert_eq!(&out[..7], b"\x41\x42\x00\x1d\x04\x01\xf4");
        c.end_response();
        assert_eq!(output(&mut c), END_REUSE);
        // Nothing after END_RESPONSE.
        c.send_body(Bytes::from_static(b"late"));
        c.send_flush();
        c.end_response();
        assert!(!c.request_body_chunk());
        assert_eq!(c.send_headers(200, b"OK", &[]), Ok(()));
        assert_eq!(output(&mut c), b"");
    }

    #[test]
    fn end_response_without_headers_closes() {
        let mut c = conn();
        feed(&mut c, MINIMAL_GET).unwrap();
        c.end_response();
        assert_eq!(output(&mut c), END_CLOSE);
        assert!(c.wants_close());
    }

    #[test]
    fn flush_packet() {
        let mut c = conn();
        feed(&mut c, MINIMAL_GET).unwrap();
        c.send_headers(200, b"OK", &[]).unwrap();
        output(&mut c);
        c.send_flush();
        assert_eq!(output(&mut c), b"\x41\x42\x00\x04\x03\x00\x00\x00");
    }

    #[test]
    fn lighttpd_stray_end_of_body_after_content_length_zero() {
        let get = packet(&request("GET", &[("content-length", "0")]));
        // Right behind the request, before the response.
        let mut c = conn();
        let mut wire = get.clone();
        wire.extend_from_slice(b"\x12\x34\x00\x00");
        let ev = feed(&mut c, &wire).unwrap();
        assert_eq!(ev.len(), 2);
        assert!(answer(&mut c).ends_with(END_REUSE));
        // Only once.
        assert_eq!(
            feed(&mut c, b"\x12\x34\x00\x00"),
            Err(ProtocolError::UnexpectedPacket {
                expected: "FORWARD_REQUEST or CPING",
                got: "an empty packet",
            })
        );
        // After the response (the packet arrived late).
        let mut c = conn();
        feed(&mut c, &get).unwrap();
        answer(&mut c);
        assert_eq!(feed(&mut c, b"\x12\x34\x00\x00").unwrap(), []);
        assert!(c.is_idle() && !c.wants_close());
        // Disabled: an error.
        let mut c = Connection::new(AjpConfig::default().with_lighttpd_framing(false));
        assert_eq!(
            feed(&mut c, &wire),
            Err(ProtocolError::UnexpectedPacket {
                expected: "no packet until END_RESPONSE",
                got: "an empty packet",
            })
        );
    }

    #[test]
    fn lighttpd_raw_body_framing() {
        let mut c = conn();
        let mut wire = post("3");
        wire.extend_from_slice(b"\x12\x34\x00\x03abc");
        let ev = feed(&mut c, &wire).unwrap();
        assert_eq!(
            ev[1..],
            [Event::Body(Bytes::from_static(b"abc")), Event::BodyEnd]
        );

        // A larger body: lighttpd may answer one GET_BODY_CHUNK with several packets.
        let mut c = conn();
        let mut wire = post("10000");
        wire.extend_from_slice(b"\x12\x34\x1f\xfc");
        wire.extend_from_slice(&[b'a'; 8188]);
        let ev = feed(&mut c, &wire).unwrap();
        assert_eq!(ev.len(), 2);
        assert!(c.request_body_chunk());
        assert_eq!(output(&mut c), b"\x41\x42\x00\x03\x06\x07\x14");
        let mut more = b"\x12\x34\x03\xe8".to_vec();
        more.extend_from_slice(&[b'b'; 1000]);
        more.extend_from_slice(b"\x12\x34\x03\x2c");
        more.extend_from_slice(&[b'c'; 812]);
        let ev = feed(&mut c, &more).unwrap();
        assert_eq!(ev.len(), 3);
        assert_eq!(ev[2], Event::BodyEnd);
        assert!(answer(&mut c).ends_with(END_REUSE));

        // Disabled: refused.
        let mut c = Connection::new(AjpConfig::default().with_lighttpd_framing(false));
        let mut wire = post("3");
        wire.extend_from_slice(b"\x12\x34\x00\x03abc");
        assert_eq!(
            feed(&mut c, &wire),
            Err(ProtocolError::BadBodyPacket {
                len: 3,
                inner: 0x6162
            })
        );
    }

    #[test]
    fn eof_mid_packet_mid_body_and_idle() {
        let mut c = conn();
        let mut src = BytesMut::from(&MINIMAL_GET[..10]);
        c.handle_input(&mut src).unwrap();
        assert_eq!(
            c.handle_eof(&src),
            Err(ProtocolError::UnexpectedEof("AJP packet"))
        );

        let mut c = conn();
        let mut wire = post("6");
        wire.extend_from_slice(b"\x12\x34\x00\x05\x00\x03abc");
        feed(&mut c, &wire).unwrap();
        assert_eq!(
            c.handle_eof(&BytesMut::new()),
            Err(ProtocolError::TruncatedBody {
                received: 3,
                expected: Some(6)
            })
        );
        assert!(c.wants_close());

        let mut c = conn();
        feed(
            &mut c,
            &packet(&request("POST", &[("transfer-encoding", "chunked")])),
        )
        .unwrap();
        assert_eq!(
            c.handle_eof(&BytesMut::new()),
            Err(ProtocolError::TruncatedBody {
                received: 0,
                expected: None
            })
        );

        let mut c = conn();
        assert_eq!(c.handle_eof(&BytesMut::new()), Ok(()));
        feed(&mut c, MINIMAL_GET).unwrap();
        assert_eq!(
            c.handle_eof(&BytesMut::new()),
            Ok(()),
            "body complete, response pending"
        );
        answer(&mut c);
        assert_eq!(c.handle_eof(&BytesMut::new()), Ok(()));
    }

    #[test]
    fn config_floors_and_redacted_debug() {
        let config = AjpConfig::default().with_secret("hunter2");
        assert!(!format!("{config:?}").contains("hunter2"));
        assert_eq!(AjpConfig::default().packet_size(), 8192);
        assert_eq!(
            AjpConfig::default()
                .with_packet_size(AJP_MIN_PACKET_SIZE)
                .packet_size(),
            AJP_MIN_PACKET_SIZE
        );
        assert!(std::panic::catch_unwind(|| AjpConfig::default().with_packet_size(8191)).is_err());
        assert!(std::panic::catch_unwind(|| AjpConfig::default().with_packet_size(65537)).is_err());
        assert!(std::panic::catch_unwind(|| AjpConfig::default().with_secret("")).is_err());
    }

    /// Plays the web server's bytes, segment by segment, each cut at `cuts`, and answers like
    /// a driver: asks for chunked bodies, responds at BodyEnd.
    fn play(segments: &[Vec<u8>], cuts: &[usize]) -> (Vec<Event>, Vec<u8>) {
        let mut c = conn();
        let mut src = BytesMut::new();
        let mut seen = Vec::new();
        for segment in segments {
            let mut points: Vec<usize> = cuts.iter().map(|&p| p % (segment.len() + 1)).collect();
            points.sort_unstable();
            points.push(segment.len());
            let mut last = 0;
            for p in points {
                src.extend_from_slice(&segment[last..p]);
                last = p;
                c.handle_input(&mut src).unwrap();
                while let Some(e) = c.poll_event() {
                    match &e {
                        Event::Request { request: r, .. } if r.chunked => {
                            c.request_body_chunk();
                        }
                        Event::Body(_) => {
                            c.request_body_chunk();
                        }
                        Event::BodyEnd => {
                            c.send_headers(200, b"OK", &[(b"Content-Type", b"text/plain")])
                                .unwrap();
                            c.send_body(Bytes::from_static(b"ok"));
                            c.end_response();
                        }
                        _ => {}
                    }
                    seen.push(e);
                }
            }
        }
        assert!(src.is_empty());
        (seen, output(&mut c))
    }

    proptest! {
        #[test]
        fn same_events_and_output_whatever_the_chunking(
            pings in 0usize..3,
            body in proptest::collection::vec(any::<u8>(), 0..9000),
            chunked in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..50), 0..3),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let mut segments = Vec::new();
            // CPINGs, then a POST whose first body packet comes unrequested.
            let first = body.len().min(8186);
            let cl: &'static str = Box::leak(body.len().to_string().into_boxed_str());
            let mut seg = CPING.repeat(pings);
            seg.extend_from_slice(&post(cl));
            if !body.is_empty() {
                seg.extend_from_slice(&body_packet(&body[..first]));
            }
            segments.push(seg);
            if body.len() > first {
                segments.push(body_packet(&body[first..]));
            }
            // Then a chunked POST, one segment per requested packet.
            let mut seg = CPING.to_vec();
            seg.extend_from_slice(&packet(&request("POST", &[("transfer-encoding", "chunked")])));
            segments.push(seg);
            for data in &chunked {
                segments.push(body_packet(data));
            }
            segments.push(b"\x12\x34\x00\x00".to_vec());
            segments.push(MINIMAL_GET.to_vec());

            let whole = play(&segments, &[]);
            let split = play(&segments, &cuts);
            prop_assert_eq!(&whole, &split);
            let requests = whole.0.iter().filter(|e| is_request(e)).count();
            prop_assert_eq!(requests, 3);
            let ends = whole.0.iter().filter(|e| **e == Event::BodyEnd).count();
            prop_assert_eq!(ends, 3);
            let cpongs = whole.1.windows(5).filter(|w| *w == CPONG).count();
            prop_assert!(cpongs > pings);
        }
    }

    #[test]
    fn lighttpd_small_body_starting_like_a_standard_length_is_raw() {
        // A 100-byte lighttpd body whose first two bytes are 00 62 (= 100 - 2): only the
        // Content-Length tells it from a standard packet of 98 bytes.
        let mut body = vec![0x00, 0x62];
        body.extend_from_slice(&[b'b'; 98]);
        for (framed, expected) in [
            (body.clone(), body.clone()),
            (
                {
                    let mut std = vec![0x00, 100];
                    std.extend_from_slice(&body);
                    std
                },
                body.clone(),
            ),
        ] {
            let mut c = Connection::new(AjpConfig::default());
            let mut src = BytesMut::new();
            src.extend_from_slice(&post("100"));
            src.extend_from_slice(&[0x12, 0x34]);
            src.extend_from_slice(&(framed.len() as u16).to_be_bytes());
            src.extend_from_slice(&framed);
            c.handle_input(&mut src).unwrap();
            let mut got = Vec::new();
            let mut ended = false;
            while let Some(e) = c.poll_event() {
                match e {
                    Event::Body(b) => got.extend_from_slice(&b),
                    Event::BodyEnd => ended = true,
                    _ => {}
                }
            }
            assert_eq!(got, expected);
            assert!(ended, "the whole declared body arrived");
        }
    }
}
