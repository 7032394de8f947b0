//! The server side of one FastCGI connection: a sans-IO state machine ([`Connection`]).
//!
//! It owns request state and nothing else: no sockets, no clock, no handler. Records come in
//! through [`Connection::handle_input`], become [`Event`]s, and the driver's answers
//! ([`Connection::send_stdout`], [`Connection::end_request`], ...) become queued bytes that
//! [`Connection::poll_transmit`] drains (style rule 7).
//!
//! The request moves through explicit states, one record per transition (style rule 6):
//!
//! ```text
//!                 BEGIN_REQUEST          empty PARAMS            empty STDIN
//! ExpectBeginRequest ──────▶ ReadingParams ──────▶ ReadingStdin ──────▶ Responding
//!        ▲                  (PARAMS: stay)   │     (STDIN: Stdin event)      │
//!        │                                   │ Authorizer: Request +         │
//!        │                                   └──── StdinEnd at once ─────────┤
//!        │        end_request / reject_request (from ReadingStdin or Responding)
//!        ├───────────────────────── KEEP_CONN set ◀───────────────────────────┤
//!      Done ◀────────────────────── KEEP_CONN clear ◀─────────────────────────┘
//! ```
//!
//! A record that does not fit the current state is [`ProtocolError::UnexpectedRecord`], and so
//! is any record type only an application sends. After any error the connection is `Done`.

use std::collections::VecDeque;
use std::mem;

use bytes::{Buf, Bytes, BytesMut};

use crate::limits::FCGI_HEADER_LEN;
use crate::{Decimal, Limits, Output, Params, ProtocolError};

use super::decode::{ParamsDecoder, Record, RecordDecoder};
use super::encode::{
    encode_end_request, encode_get_values_result, encode_stderr, encode_stream_end,
    encode_unknown_type, queue_stdout, queue_stdout_with,
};
use super::record::{
    BeginRequest, Header, Pairs, ProtocolStatus, RecordType, Role, FCGI_NULL_REQUEST_ID,
};

/// Values the connection advertises in `FCGI_GET_VALUES_RESULT`.
#[derive(Clone, Copy, Debug)]
pub struct ConnConfig {
    /// Parameter limits.
    pub limits: Limits,
    /// `FCGI_MAX_CONNS`.
    pub max_conns: u32,
    /// `FCGI_MAX_REQS`.
    pub max_reqs: u32,
}

/// What the server connection reports to its driver.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A request whose PARAMS are complete.
    Request {
        /// Request id.
        id: u16,
        /// Responder or Authorizer.
        role: Role,
        /// `FCGI_KEEP_CONN`.
        keep_conn: bool,
        /// The CGI variables.
        params: Params,
    },
    /// A non-empty chunk of STDIN.
    Stdin {
        /// Request id.
        id: u16,
        /// The bytes.
        data: Bytes,
    },
    /// The STDIN terminator.
    StdinEnd {
        /// Request id.
        id: u16,
    },
    /// `FCGI_ABORT_REQUEST` for an active request.
    Abort {
        /// Request id.
        id: u16,
    },
}

impl Event {
    /// The request id the event belongs to.
    pub fn id(&self) -> u16 {
        match self {
            Self::Request { id, .. }
            | Self::Stdin { id, .. }
            | Self::StdinEnd { id }
            | Self::Abort { id } => *id,
        }
    }
}

/// The server side of one FastCGI connection.
///
/// # Call order
///
/// The driver repeats, until [`wants_close`](Self::wants_close) and the output is drained, or
/// the peer closes:
///
/// 1. Input: read bytes into a `BytesMut` and call [`handle_input`](Self::handle_input). It
///    consumes every complete record and leaves a partial one in the buffer. On EOF call
///    [`handle_eof`](Self::handle_eof) with what is left.
/// 2. Events: call [`poll_event`](Self::poll_event) until `None`. [`Event::Request`] starts a
///    handler; [`Event::Stdin`] and [`Event::StdinEnd`] feed its body; [`Event::Abort`] cancels
///    it.
/// 3. Commands: [`send_stdout`](Self::send_stdout) / [`send_stderr`](Self::send_stderr) queue
///    output as the handler produces it; [`end_request`](Self::end_request) finishes the
///    response (also after an abort); [`reject_request`](Self::reject_request) refuses it
///    (`FCGI_OVERLOADED`) instead of any output.
/// 4. Output: call [`poll_transmit`](Self::poll_transmit) and write what it appended. Stop
///    pulling response data from the handler while [`queued_output`](Self::queued_output)
///    exceeds [`MAX_QUEUED_OUTPUT`](crate::limits::MAX_QUEUED_OUTPUT).
///
/// Any `ProtocolError` is fatal: log it and close.
///
/// # Behaviour
///
/// - **No multiplexing.** Every web server uses request id 1, one request at a time
///   ([`FCGI_MAX_REQUESTS_PER_CONN`](crate::limits::FCGI_MAX_REQUESTS_PER_CONN)). A
///   `FCGI_BEGIN_REQUEST` for another id while a request is active is answered with
///   `FCGI_END_REQUEST{FCGI_CANT_MPX_CONN}` (libfcgi's behaviour) and its records are ignored;
///   `FCGI_GET_VALUES` reports `FCGI_MPXS_CONNS=0`.
/// - **Roles.** Responder and Authorizer. Filter is answered `FCGI_UNKNOWN_ROLE` like any
///   unknown role, since no web server implements it; the rejected id's later records are
///   ignored. An Authorizer gets [`Event::Request`] then [`Event::StdinEnd`] at once: Apache's
///   mod_authnz_fcgi sends no STDIN at all, lighttpd an empty one, which is ignored.
/// - **Inactive ids.** `FCGI_PARAMS`, `FCGI_STDIN`, `FCGI_DATA` and `FCGI_ABORT_REQUEST` for
///   an id that is not active are ignored (spec §3.3). This also drains what a web server still
///   sends for a request that was ended early; the next request's STDIN cannot be confused
///   with it, because STDIN before that request's PARAMS terminator is an error.
/// - **Abort.** `FCGI_ABORT_REQUEST` while PARAMS are still arriving (the driver has not seen
///   the request) ends it here: `FCGI_END_REQUEST{0, FCGI_REQUEST_COMPLETE}` and no STDOUT,
///   since no output was started. Later it becomes [`Event::Abort`], and the
///   driver answers with [`end_request`](Self::end_request).
/// - **Output.** Stream data goes out in records of at most 65 528 bytes, padded to 8. Nothing
///   is ever queued for a request after its `FCGI_END_REQUEST`: commands for an id that is not
///   active are no-ops. Queued events of a request are dropped when it ends.
/// - **Unread STDIN** is bounded by what the driver reads: [`Event::Stdin`] data are zero-copy
///   slices of the input buffer, so the driver stops reading while its handler's body channel
///   is full ([`queued_stdin`](Self::queued_stdin) tells how much is waiting here). The
///   request's STDIN content is delivered as it arrives, a record's first bytes before its
///   last: a record cut by the end of a read is not held back (and moved to a new buffer
///   with the next read) until it is whole.
#[derive(Debug)]
pub struct Connection {
    config: ConnConfig,
    decoder: RecordDecoder,
    state: State,
    events: VecDeque<Event>,
    /// Bytes of [`Event::Stdin`] data in `events`.
    queued_stdin: usize,
    /// The `FCGI_STDIN` record whose start was delivered and whose rest has yet to arrive.
    stdin_rest: Option<StdinRest>,
    out: Output,
}

/// What is left of a partly delivered `FCGI_STDIN` record: its content, then its padding.
#[derive(Debug, Clone, Copy)]
struct StdinRest {
    header: Header,
    content: usize,
    padding: usize,
}

/// The connection's one request slot (style rule 6).
#[derive(Debug)]
enum State {
    /// No active request: only `FCGI_BEGIN_REQUEST` (and management records) matter.
    ExpectBeginRequest,
    /// Collecting the `FCGI_PARAMS` stream.
    ReadingParams(ReadingParams),
    /// [`Event::Request`] was emitted; `FCGI_STDIN` records become events.
    ReadingStdin(ReadingStdin),
    /// STDIN is complete; only the application's output remains.
    Responding(Responding),
    /// The last request ended without `FCGI_KEEP_CONN`, or a protocol error occurred: the
    /// driver closes once output is drained. Input is discarded.
    Done,
}

/// What every active state knows about its request.
#[derive(Debug, Clone, Copy)]
struct Active {
    id: u16,
    role: Role,
    keep_conn: bool,
    stderr_sent: bool,
}

#[derive(Debug)]
struct ReadingParams {
    req: Active,
    params: ParamsDecoder,
}

#[derive(Debug)]
struct ReadingStdin {
    req: Active,
}

#[derive(Debug)]
struct Responding {
    req: Active,
}

/// Where transitions put their results.
struct Queues<'a> {
    events: &'a mut VecDeque<Event>,
    queued_stdin: &'a mut usize,
    out: &'a mut BytesMut,
}

impl Queues<'_> {
    fn push(&mut self, event: Event) {
        if let Event::Stdin { data, .. } = &event {
            *self.queued_stdin += data.len();
        }
        self.events.push_back(event);
    }
}

impl Connection {
    /// A new idle connection.
    pub fn new(config: ConnConfig) -> Self {
        Self {
            config,
            decoder: RecordDecoder::new(),
            state: State::ExpectBeginRequest,
            events: VecDeque::new(),
            queued_stdin: 0,
            stdin_rest: None,
            out: Output::new(),
        }
    }

    /// Decodes every complete record in `src`, consuming them; a partial record stays.
    ///
    /// Once the connection is done (see [`wants_close`](Self::wants_close)), input is
    /// discarded.
    pub fn handle_input(&mut self, src: &mut BytesMut) -> Result<(), ProtocolError> {
        loop {
            if matches!(self.state, State::Done) {
                src.clear();
                return Ok(());
            }
            if let Some(rest) = self.stdin_rest {
                if !self.continue_stdin(rest, src)? {
                    return Ok(());
                }
                continue;
            }
            if let Some(rest) = self.start_partial_stdin(src) {
                self.stdin_rest = Some(rest);
                continue;
            }
            let record = match self.decoder.decode(src) {
                Ok(Some(record)) => record,
                Ok(None) => return Ok(()),
                Err(e) => return Err(self.fail(e)),
            };
            if let Err(e) = self.handle_record(record) {
                return Err(self.fail(e));
            }
        }
    }

    /// The start of an incomplete `FCGI_STDIN` record of the request reading its body, when
    /// `src` begins with one: its header is consumed and what is left of it returned, for
    /// [`continue_stdin`](Self::continue_stdin) to deliver. Anything else (a whole record,
    /// another type, another id, a header that does not parse) goes to the record decoder.
    fn start_partial_stdin(&self, src: &mut BytesMut) -> Option<StdinRest> {
        let State::ReadingStdin(reading) = &self.state else {
            return None;
        };
        let header = Header::parse(src.first_chunk::<FCGI_HEADER_LEN>()?).ok()?;
        let partial = header.record_type == RecordType::Stdin
            && header.request_id == reading.req.id
            && header.content_length > 0
            && src.len() > FCGI_HEADER_LEN
            && src.len() < header.record_len();
        if !partial {
            return None;
        }
        src.advance(FCGI_HEADER_LEN);
        Some(StdinRest {
            header,
            content: header.content_length as usize,
            padding: header.padding_length as usize,
        })
    }

    /// Delivers what `src` holds of the partly delivered STDIN record as [`Event::Stdin`]
    /// and skips its padding; false when `src` ran out before the record's end.
    fn continue_stdin(
        &mut self,
        mut rest: StdinRest,
        src: &mut BytesMut,
    ) -> Result<bool, ProtocolError> {
        if rest.content > 0 {
            let n = rest.content.min(src.len());
            if n == 0 {
                return Ok(false);
            }
            rest.content -= n;
            let content = src.split_to(n).freeze();
            if let Err(e) = self.handle_record(Record {
                header: rest.header,
                content,
            }) {
                return Err(self.fail(e));
            }
        }
        let n = rest.padding.min(src.len());
        src.advance(n);
        rest.padding -= n;
        if rest.content > 0 || rest.padding > 0 {
            self.stdin_rest = Some(rest);
            return Ok(false);
        }
        self.stdin_rest = None;
        Ok(true)
    }

    /// Next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        let event = self.events.pop_front()?;
        if let Event::Stdin { data, .. } = &event {
            self.queued_stdin -= data.len();
        }
        Some(event)
    }

    /// The event [`poll_event`](Self::poll_event) returns next, left in place.
    pub fn peek_event(&self) -> Option<&Event> {
        self.events.front()
    }

    /// Queues `data` as `FCGI_STDOUT` records for request `id`.
    ///
    /// A no-op for empty `data` (the terminator is sent by [`end_request`](Self::end_request))
    /// and for an id that is not active or whose [`Event::Request`] has not been emitted.
    /// Data of [`SHARE_MIN`](crate::output::SHARE_MIN) bytes or more is queued uncopied.
    pub fn send_stdout(&mut self, id: u16, data: Bytes) {
        if data.is_empty() || self.responding_mut(id).is_none() {
            return;
        }
        queue_stdout(id, data, &mut self.out);
    }

    /// Queues as `FCGI_STDOUT` records for request `id` what `write` appends to the buffer it
    /// is handed (a response head, encoded in place), with room for `room` bytes of it made
    /// first. Same no-op rules as [`send_stdout`](Self::send_stdout): `write` is not called
    /// for an inactive id.
    pub fn send_stdout_with(&mut self, id: u16, room: usize, write: impl FnOnce(&mut BytesMut)) {
        if self.responding_mut(id).is_none() {
            return;
        }
        queue_stdout_with(id, room, &mut self.out, write);
    }

    /// Queues `data` as `FCGI_STDERR` records for request `id`; the web server logs them.
    ///
    /// Same no-op rules as [`send_stdout`](Self::send_stdout).
    pub fn send_stderr(&mut self, id: u16, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let Some(req) = self.responding_mut(id) else {
            return;
        };
        req.stderr_sent = true;
        encode_stderr(id, data, self.out.buf());
    }

    /// Ends request `id` normally: queues the empty `FCGI_STDOUT` (always, even when nothing
    /// was sent), the empty `FCGI_STDERR` if any STDERR was sent, then
    /// `FCGI_END_REQUEST{app_status, FCGI_REQUEST_COMPLETE}`. The id becomes inactive. A no-op
    /// for an id that is not active.
    pub fn end_request(&mut self, id: u16, app_status: u32) {
        let Some(req) = self.active(id) else {
            return;
        };
        encode_stream_end(RecordType::Stdout, id, self.out.buf());
        if req.stderr_sent {
            encode_stream_end(RecordType::Stderr, id, self.out.buf());
        }
        encode_end_request(
            id,
            app_status,
            ProtocolStatus::RequestComplete,
            self.out.buf(),
        );
        self.finish(req);
    }

    /// Rejects request `id` with `FCGI_END_REQUEST{0, status}` and no STDOUT (the driver uses
    /// `FCGI_OVERLOADED`). The id becomes inactive. A no-op for an id that is not active.
    pub fn reject_request(&mut self, id: u16, status: ProtocolStatus) {
        let Some(req) = self.active(id) else {
            return;
        };
        encode_end_request(id, 0, status, self.out.buf());
        self.finish(req);
    }

    /// Moves all queued output behind what `dst` holds and empties the queue.
    pub fn poll_transmit(&mut self, dst: &mut Output) {
        dst.append(&mut self.out);
    }

    /// Bytes of queued output.
    pub fn queued_output(&self) -> usize {
        self.out.len()
    }

    /// Bytes of STDIN in events not yet returned by [`poll_event`](Self::poll_event).
    pub fn queued_stdin(&self) -> usize {
        self.queued_stdin
    }

    /// True when the connection should close once output is flushed: a request without
    /// `FCGI_KEEP_CONN` has ended, or a protocol error occurred.
    pub fn wants_close(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// True when no request is active.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::ExpectBeginRequest | State::Done)
    }

    /// The peer closed its side; `src` is what was left unconsumed.
    ///
    /// A partial record is [`ProtocolError::UnexpectedEof`] naming where it was cut ("record
    /// header", "record content" or "padding"); an empty buffer is `Ok(())`, whether or not a
    /// request was in flight (the driver knows whether it was).
    pub fn handle_eof(&mut self, src: &BytesMut) -> Result<(), ProtocolError> {
        if let Some(rest) = self.stdin_rest {
            let part = if rest.content > 0 {
                "record content"
            } else {
                "padding"
            };
            return Err(self.fail(ProtocolError::UnexpectedEof(part)));
        }
        if src.is_empty() {
            return Ok(());
        }
        let Some(head) = src.first_chunk::<FCGI_HEADER_LEN>() else {
            return Err(self.fail(ProtocolError::UnexpectedEof("record header")));
        };
        let content_end = FCGI_HEADER_LEN + u16::from_be_bytes([head[4], head[5]]) as usize;
        let part = if src.len() < content_end {
            "record content"
        } else {
            "padding"
        };
        Err(self.fail(ProtocolError::UnexpectedEof(part)))
    }

    fn fail(&mut self, error: ProtocolError) -> ProtocolError {
        self.state = State::Done;
        error
    }

    /// Routes one record: management records, records only an application sends, records for
    /// ids that are not active, then the state's own transition.
    fn handle_record(&mut self, record: Record) -> Result<(), ProtocolError> {
        let header = record.header;
        let id = header.request_id;
        if id == FCGI_NULL_REQUEST_ID {
            return self.handle_management(&record);
        }
        if header.record_type.is_app_to_server() {
            return Err(unexpected(
                "a record a web server sends",
                header.record_type,
                id,
            ));
        }
        let is_begin = header.record_type == RecordType::BeginRequest;
        match self.state.active_id() {
            Some(active) if active != id => {
                if is_begin {
                    encode_end_request(id, 0, ProtocolStatus::CantMpxConn, self.out.buf());
                }
                // Otherwise a record for an id that is not active: ignored.
                return Ok(());
            }
            None if !is_begin => return Ok(()),
            _ => {}
        }
        let mut queues = Queues {
            events: &mut self.events,
            queued_stdin: &mut self.queued_stdin,
            out: self.out.buf(),
        };
        let state = mem::replace(&mut self.state, State::Done);
        self.state = state.on_record(record, &self.config, &mut queues)?;
        Ok(())
    }

    /// Records with the null request id (spec §4).
    fn handle_management(&mut self, record: &Record) -> Result<(), ProtocolError> {
        let record_type = record.header.record_type;
        match record_type {
            RecordType::GetValues => self.answer_get_values(&record.content),
            RecordType::BeginRequest
            | RecordType::AbortRequest
            | RecordType::Params
            | RecordType::Stdin
            | RecordType::Data => Err(ProtocolError::NullRequestId {
                record: record_type.name().unwrap_or("application record"),
            }),
            RecordType::EndRequest | RecordType::Stdout | RecordType::Stderr => Err(unexpected(
                "a record a web server sends",
                record_type,
                FCGI_NULL_REQUEST_ID,
            )),
            // GET_VALUES_RESULT, UNKNOWN_TYPE and unknown types are management types this side
            // does not understand.
            RecordType::GetValuesResult | RecordType::UnknownType | RecordType::Unknown(_) => {
                encode_unknown_type(record_type.to_u8(), self.out.buf());
                Ok(())
            }
        }
    }

    /// Answers `FCGI_GET_VALUES` with the known names, each at most once, in request order.
    fn answer_get_values(&mut self, content: &[u8]) -> Result<(), ProtocolError> {
        let max_conns = Decimal::new(u64::from(self.config.max_conns));
        let max_reqs = Decimal::new(u64::from(self.config.max_reqs));
        let mut answered: [(&[u8], &[u8]); 3] = [(b"", b""); 3];
        let mut count = 0;
        for pair in Pairs::new(content) {
            let (name, _) = pair?;
            let value: &[u8] = match name {
                b"FCGI_MAX_CONNS" => max_conns.as_bytes(),
                b"FCGI_MAX_REQS" => max_reqs.as_bytes(),
                b"FCGI_MPXS_CONNS" => b"0",
                _ => continue,
            };
            if answered[..count].iter().all(|(n, _)| *n != name) {
                answered[count] = (name, value);
                count += 1;
            }
        }
        encode_get_values_result(&answered[..count], self.out.buf());
        Ok(())
    }

    /// The active request `id`, if it has been announced to the driver.
    fn responding_mut(&mut self, id: u16) -> Option<&mut Active> {
        match &mut self.state {
            State::ReadingStdin(ReadingStdin { req }) | State::Responding(Responding { req })
                if req.id == id =>
            {
                Some(req)
            }
            _ => None,
        }
    }

    fn active(&self, id: u16) -> Option<Active> {
        let req = match &self.state {
            State::ReadingParams(s) => s.req,
            State::ReadingStdin(s) => s.req,
            State::Responding(s) => s.req,
            State::ExpectBeginRequest | State::Done => return None,
        };
        (req.id == id).then_some(req)
    }

    /// The request's END_REQUEST is queued: drop its pending events and free the slot.
    fn finish(&mut self, req: Active) {
        let before = self.events.len();
        self.events.retain(|e| e.id() != req.id);
        if self.events.len() != before {
            self.queued_stdin = self
                .events
                .iter()
                .map(|e| match e {
                    Event::Stdin { data, .. } => data.len(),
                    _ => 0,
                })
                .sum();
        }
        self.state = if req.keep_conn {
            State::ExpectBeginRequest
        } else {
            State::Done
        };
    }
}

impl State {
    fn active_id(&self) -> Option<u16> {
        match self {
            Self::ReadingParams(s) => Some(s.req.id),
            Self::ReadingStdin(s) => Some(s.req.id),
            Self::Responding(s) => Some(s.req.id),
            Self::ExpectBeginRequest | Self::Done => None,
        }
    }

    /// One transition: the state consumes itself and one record for its request (or a
    /// `FCGI_BEGIN_REQUEST` while idle).
    fn on_record(
        self,
        record: Record,
        config: &ConnConfig,
        q: &mut Queues<'_>,
    ) -> Result<State, ProtocolError> {
        match self {
            Self::ExpectBeginRequest => expect_begin_request(record, config, q),
            Self::ReadingParams(s) => s.on_record(record, q),
            Self::ReadingStdin(s) => s.on_record(record, q),
            Self::Responding(s) => s.on_record(record, q),
            // handle_input never decodes in Done.
            Self::Done => Ok(Self::Done),
        }
    }
}

fn expect_begin_request(
    record: Record,
    config: &ConnConfig,
    q: &mut Queues<'_>,
) -> Result<State, ProtocolError> {
    let header = record.header;
    if header.record_type != RecordType::BeginRequest {
        return Err(unexpected(
            "FCGI_BEGIN_REQUEST",
            header.record_type,
            header.request_id,
        ));
    }
    let begin = BeginRequest::load(&header, &record.content)?;
    let id = header.request_id;
    match begin.role {
        Role::Responder | Role::Authorizer => Ok(State::ReadingParams(ReadingParams {
            req: Active {
                id,
                role: begin.role,
                keep_conn: begin.keep_conn(),
                stderr_sent: false,
            },
            params: ParamsDecoder::new(config.limits),
        })),
        Role::Filter | Role::Unknown(_) => {
            encode_end_request(id, 0, ProtocolStatus::UnknownRole, q.out);
            Ok(if begin.keep_conn() {
                State::ExpectBeginRequest
            } else {
                State::Done
            })
        }
    }
}

impl ReadingParams {
    fn on_record(mut self, record: Record, q: &mut Queues<'_>) -> Result<State, ProtocolError> {
        let req = self.req;
        match record.header.record_type {
            RecordType::Params if record.content.is_empty() => {
                q.push(Event::Request {
                    id: req.id,
                    role: req.role,
                    keep_conn: req.keep_conn,
                    params: self.params.finish()?,
                });
                if req.role == Role::Authorizer {
                    q.push(Event::StdinEnd { id: req.id });
                    Ok(State::Responding(Responding { req }))
                } else {
                    Ok(State::ReadingStdin(ReadingStdin { req }))
                }
            }
            RecordType::Params => {
                self.params.push(&record.content)?;
                Ok(State::ReadingParams(self))
            }
            RecordType::AbortRequest => {
                // The driver has not seen this request: answer the abort here, with no
                // output stream since none was started (like a rejection).
                encode_end_request(req.id, 0, ProtocolStatus::RequestComplete, q.out);
                Ok(if req.keep_conn {
                    State::ExpectBeginRequest
                } else {
                    State::Done
                })
            }
            other => Err(unexpected("FCGI_PARAMS", other, req.id)),
        }
    }
}

impl ReadingStdin {
    fn on_record(self, record: Record, q: &mut Queues<'_>) -> Result<State, ProtocolError> {
        let id = self.req.id;
        match record.header.record_type {
            RecordType::Stdin if record.content.is_empty() => {
                q.push(Event::StdinEnd { id });
                Ok(State::Responding(Responding { req: self.req }))
            }
            RecordType::Stdin => {
                q.push(Event::Stdin {
                    id,
                    data: record.content,
                });
                Ok(State::ReadingStdin(self))
            }
            RecordType::AbortRequest => {
                q.push(Event::Abort { id });
                Ok(State::ReadingStdin(self))
            }
            other => Err(unexpected("FCGI_STDIN", other, id)),
        }
    }
}

impl Responding {
    fn on_record(self, record: Record, q: &mut Queues<'_>) -> Result<State, ProtocolError> {
        let id = self.req.id;
        match record.header.record_type {
            // lighttpd sends an Authorizer an empty STDIN, Apache none: either way it is not
            // part of the request.
            RecordType::Stdin if self.req.role == Role::Authorizer => Ok(State::Responding(self)),
            RecordType::AbortRequest => {
                q.push(Event::Abort { id });
                Ok(State::Responding(self))
            }
            other => Err(unexpected("FCGI_ABORT_REQUEST or nothing", other, id)),
        }
    }
}

fn unexpected(expected: &'static str, got: RecordType, request_id: u16) -> ProtocolError {
    ProtocolError::UnexpectedRecord {
        expected,
        got: got.to_string(),
        request_id,
    }
}

#[cfg(test)]
mod tests;
