//! The server side of one SCGI connection: a sans-IO state machine ([`Connection`]).
//!
//! An SCGI connection carries exactly one request, so the machine is a straight line:
//!
//! ```text
//!              netstring + ','             CONTENT_LENGTH bytes
//! ReadingHeader ──────────────▶ ReadingBody ──────────────────▶ Done
//!       │   Request event        (Body events)      BodyEnd event  ▲
//!       └──────── CONTENT_LENGTH = 0: Request + BodyEnd ───────────┘
//! ```
//!
//! In `Done` every input byte is discarded: bytes after the body are never parsed as a second
//! request (SCGI has no keep-alive; digest §2.4 case 5, §4 smuggling). A protocol error also
//! leads to `Done`.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use crate::{Limits, Params, ProtocolError};

use super::decode::HeaderDecoder;

/// What the server connection reports to its driver.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// The request head is complete.
    Request {
        /// Every header in arrival order, `CONTENT_LENGTH` and `SCGI` included.
        params: Params,
        /// Body bytes that follow; the body is complete after exactly this many.
        content_length: u64,
        /// True when the request has no `SCGI` header (nginx without the stock
        /// `scgi_params`): accepted; the driver may log a warning.
        scgi_missing: bool,
    },
    /// A non-empty chunk of the body, a zero-copy slice of the input buffer. All chunks
    /// together are never longer than `content_length`.
    Body(Bytes),
    /// The body is complete (right after [`Event::Request`] when `content_length` is 0).
    BodyEnd,
}

/// The server side of one SCGI connection.
///
/// # Call order
///
/// 1. Input: read bytes into a `BytesMut` and call [`handle_input`](Self::handle_input). It
///    consumes the head once complete and then every body byte; a partial head stays in the
///    buffer. On EOF call [`handle_eof`](Self::handle_eof) with what is left.
/// 2. Events: call [`poll_event`](Self::poll_event) until `None`. [`Event::Request`] starts a
///    handler, [`Event::Body`] and [`Event::BodyEnd`] feed its body. Stop reading the socket
///    while the handler's body channel is full: body bytes are only consumed when read.
/// 3. Output: SCGI responses are raw CGI output the driver writes itself; after the response
///    it closes the connection (the protocol has no other end-of-response signal).
///
/// Any `ProtocolError` is fatal: log it and close without a response, except
/// [`ProtocolError::TruncatedBody`] from `handle_eof`, which the driver reports to the handler
/// as a body error.
///
/// # Behaviour
///
/// - **Header cap.** The netstring may not exceed [`Limits::max_params_bytes`] (the block *is*
///   the request's parameters) nor 7 digits; the length is refused before the block is
///   buffered.
/// - **Missing `SCGI` header** is accepted ([`Event::Request::scgi_missing`]); any value but
///   `1` is refused. Position is free (lighttpd sends it last).
/// - **Duplicates** are refused ([`ProtocolError::DuplicateParam`]), as the spec says.
/// - **Trailing bytes** after the body are discarded, and so is a half-close: the driver
///   still answers.
#[derive(Debug)]
pub struct Connection {
    decoder: HeaderDecoder,
    state: State,
    events: VecDeque<Event>,
}

/// Where the connection is in its one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the complete netstring.
    ReadingHeader,
    /// [`Event::Request`] was emitted; `received` of `expected` body bytes have been seen.
    ReadingBody { received: u64, expected: u64 },
    /// The body is complete or an error occurred: input is discarded.
    Done,
}

impl Connection {
    /// A connection waiting for its request head, bounded by `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            decoder: HeaderDecoder::new(limits),
            state: State::ReadingHeader,
            events: VecDeque::new(),
        }
    }

    /// Consumes the head once it is complete and every body byte in `src`; in `Done`, discards
    /// `src`.
    pub fn handle_input(&mut self, src: &mut BytesMut) -> Result<(), ProtocolError> {
        loop {
            match self.state {
                State::ReadingHeader => {
                    let head = match self.decoder.decode(src) {
                        Ok(Some(head)) => head,
                        Ok(None) => return Ok(()),
                        Err(e) => {
                            self.state = State::Done;
                            return Err(e);
                        }
                    };
                    let expected = head.content_length;
                    self.events.push_back(Event::Request {
                        params: head.params,
                        content_length: expected,
                        scgi_missing: head.scgi_missing,
                    });
                    self.state = if expected == 0 {
                        self.events.push_back(Event::BodyEnd);
                        State::Done
                    } else {
                        State::ReadingBody {
                            received: 0,
                            expected,
                        }
                    };
                }
                State::ReadingBody { received, expected } => {
                    if src.is_empty() {
                        return Ok(());
                    }
                    let remaining = expected - received;
                    // When remaining does not fit usize it is larger than any buffer.
                    let n = usize::try_from(remaining).map_or(src.len(), |r| r.min(src.len()));
                    self.events.push_back(Event::Body(src.split_to(n).freeze()));
                    // n <= remaining, so this cannot pass `expected`.
                    let received = received + n as u64;
                    self.state = if received == expected {
                        self.events.push_back(Event::BodyEnd);
                        State::Done
                    } else {
                        State::ReadingBody { received, expected }
                    };
                }
                State::Done => {
                    src.clear();
                    return Ok(());
                }
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

    /// The peer closed its side; `src` is what was left unconsumed.
    ///
    /// - Before the head is complete: [`ProtocolError::UnexpectedEof`], unless not one byte
    ///   arrived (a connect-and-close, like a health check), which is `Ok(())`.
    /// - Mid-body: [`ProtocolError::TruncatedBody`] with the bytes received and expected.
    /// - After the body: `Ok(())` (lighttpd may half-close after sending the body).
    pub fn handle_eof(&mut self, src: &BytesMut) -> Result<(), ProtocolError> {
        let result = match self.state {
            State::ReadingHeader if src.is_empty() => Ok(()),
            State::ReadingHeader => Err(ProtocolError::UnexpectedEof("SCGI header netstring")),
            State::ReadingBody { received, expected } => Err(ProtocolError::TruncatedBody {
                received,
                expected: Some(expected),
            }),
            State::Done => Ok(()),
        };
        self.state = State::Done;
        result
    }

    /// True once the body is complete (or an error occurred): every further input byte is
    /// discarded.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::scgi::encode::{encode_netstring, encode_request};

    /// Digest §2.4 case 1, byte for byte.
    const SPEC_EXAMPLE: &[u8] = b"70:CONTENT_LENGTH\x0027\x00SCGI\x001\x00\
REQUEST_METHOD\x00POST\x00REQUEST_URI\x00/deepthought\x00,What is the answer to life?";

    /// Feeds `chunks` one by one and collects the events, stopping at the first error.
    fn run(chunks: &[&[u8]]) -> (Connection, Vec<Event>, Result<(), ProtocolError>) {
        let mut conn = Connection::new(Limits::default());
        let mut src = BytesMut::new();
        let mut events = Vec::new();
        for chunk in chunks {
            src.extend_from_slice(chunk);
            let r = conn.handle_input(&mut src);
            while let Some(e) = conn.poll_event() {
                events.push(e);
            }
            if r.is_err() {
                return (conn, events, r);
            }
        }
        (conn, events, Ok(()))
    }

    fn body_of(events: &[Event]) -> Vec<u8> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Body(b) => Some(&b[..]),
                _ => None,
            })
            .flatten()
            .copied()
            .collect()
    }

    fn request(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut block = Vec::new();
        for (n, v) in pairs {
            block.extend_from_slice(n);
            block.push(0);
            block.extend_from_slice(v);
            block.push(0);
        }
        let mut dst = BytesMut::new();
        encode_netstring(&block, &mut dst);
        dst.to_vec()
    }

    #[test]
    fn case1_spec_example_gives_a_27_byte_body() {
        let (conn, events, r) = run(&[SPEC_EXAMPLE]);
        r.unwrap();
        assert_eq!(events.len(), 3);
        let Event::Request {
            params,
            content_length,
            scgi_missing,
        } = &events[0]
        else {
            panic!("expected a request, got {:?}", events[0]);
        };
        assert_eq!(*content_length, 27);
        assert!(!scgi_missing);
        assert_eq!(params.get(b"REQUEST_URI"), Some(&b"/deepthought"[..]));
        assert_eq!(
            events[1],
            Event::Body(Bytes::from_static(b"What is the answer to life?"))
        );
        assert_eq!(events[2], Event::BodyEnd);
        assert!(conn.is_done());
    }

    #[test]
    fn case2_nginx_without_scgi_lighttpd_scgi_last_and_scgi_2() {
        // nginx without the stock scgi_params: no SCGI header at all.
        let nginx = request(&[(b"CONTENT_LENGTH", b"0"), (b"REQUEST_METHOD", b"GET")]);
        let (_, events, r) = run(&[&nginx]);
        r.unwrap();
        assert!(matches!(
            events[0],
            Event::Request {
                scgi_missing: true,
                content_length: 0,
                ..
            }
        ));
        assert_eq!(events[1], Event::BodyEnd);

        let lighttpd = request(&[
            (b"CONTENT_LENGTH", b"0"),
            (b"REQUEST_METHOD", b"GET"),
            (b"SCGI", b"1"),
        ]);
        let (_, events, r) = run(&[&lighttpd]);
        r.unwrap();
        assert!(matches!(
            events[0],
            Event::Request {
                scgi_missing: false,
                ..
            }
        ));

        let v2 = request(&[(b"CONTENT_LENGTH", b"0"), (b"SCGI", b"2")]);
        let (conn, events, r) = run(&[&v2]);
        assert_eq!(r, Err(ProtocolError::UnsupportedScgiVersion("2".into())));
        assert!(events.is_empty());
        assert!(conn.is_done());
    }

    #[test]
    fn case3_rejects_close_without_reading_further() {
        let cases: &[(&[u8], ProtocolError)] = &[
            (
                b"070:",
                ProtocolError::BadNetstring("leading zero in length"),
            ),
            (
                b"7a:",
                ProtocolError::BadNetstring("length is not ASCII digits"),
            ),
            (b":", ProtocolError::BadNetstring("empty length")),
            (
                b"65537:",
                ProtocolError::ParamsTooLarge {
                    len: 65537,
                    max: 65536,
                },
            ),
            (b"0:,", ProtocolError::MissingContentLength),
            (
                b"0:;",
                ProtocolError::BadNetstring("missing ',' after the header block"),
            ),
        ];
        for (raw, err) in cases {
            let mut conn = Connection::new(Limits::default());
            let mut src = BytesMut::from(*raw);
            assert_eq!(conn.handle_input(&mut src).as_ref(), Err(err), "{raw:?}");
            assert!(conn.is_done());
            assert_eq!(conn.poll_event(), None);
            // Whatever follows is discarded, never parsed.
            let mut more = BytesMut::from(SPEC_EXAMPLE);
            conn.handle_input(&mut more).unwrap();
            assert!(more.is_empty());
            assert_eq!(conn.poll_event(), None);
        }
    }

    #[test]
    fn case4_eof_mid_body_is_a_truncated_body() {
        let (mut conn, events, r) = run(&[&SPEC_EXAMPLE[..SPEC_EXAMPLE.len() - 17]]);
        r.unwrap();
        assert_eq!(body_of(&events), b"What is th");
        assert_eq!(
            conn.handle_eof(&BytesMut::new()),
            Err(ProtocolError::TruncatedBody {
                received: 10,
                expected: Some(27)
            })
        );
        // Right after the head, before any body byte.
        let (mut conn, _, _) = run(&[&SPEC_EXAMPLE[..SPEC_EXAMPLE.len() - 27]]);
        assert_eq!(
            conn.handle_eof(&BytesMut::new()),
            Err(ProtocolError::TruncatedBody {
                received: 0,
                expected: Some(27)
            })
        );
    }

    #[test]
    fn eof_in_the_head_or_before_any_byte() {
        let mut conn = Connection::new(Limits::default());
        let mut src = BytesMut::from(&SPEC_EXAMPLE[..10]);
        conn.handle_input(&mut src).unwrap();
        assert_eq!(
            conn.handle_eof(&src),
            Err(ProtocolError::UnexpectedEof("SCGI header netstring"))
        );
        // A connect-and-close is not a protocol error.
        let mut conn = Connection::new(Limits::default());
        assert_eq!(conn.handle_eof(&BytesMut::new()), Ok(()));
    }

    #[test]
    fn case5_bytes_after_the_body_are_ignored_and_half_close_is_fine() {
        // A whole second request after the body: never parsed.
        let (mut conn, events, r) = run(&[SPEC_EXAMPLE, SPEC_EXAMPLE]);
        r.unwrap();
        assert_eq!(events.len(), 3);
        assert_eq!(body_of(&events), b"What is the answer to life?");
        assert_eq!(conn.handle_eof(&BytesMut::new()), Ok(()));

        // In the same buffer: the Body event stops at CONTENT_LENGTH.
        let mut both = SPEC_EXAMPLE.to_vec();
        both.extend_from_slice(b"70:CONTENT_LENGTH\x00");
        let (conn, events, r) = run(&[&both]);
        r.unwrap();
        assert_eq!(body_of(&events), b"What is the answer to life?");
        assert!(conn.is_done());
    }

    #[test]
    fn case6_one_megabyte_body_in_one_byte_writes() {
        const LEN: usize = 1_048_576;
        let body: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
        let mut conn = Connection::new(Limits::default());
        let mut wire = request(&[(b"CONTENT_LENGTH", b"1048576"), (b"SCGI", b"1")]);
        wire.extend_from_slice(&body);
        let mut src = BytesMut::new();
        let mut got = Vec::with_capacity(LEN);
        let mut ends = 0;
        for &b in &wire {
            src.extend_from_slice(&[b]);
            conn.handle_input(&mut src).unwrap();
            while let Some(e) = conn.poll_event() {
                match e {
                    Event::Request { content_length, .. } => assert_eq!(content_length, 1_048_576),
                    Event::Body(data) => got.extend_from_slice(&data),
                    Event::BodyEnd => ends += 1,
                }
            }
        }
        assert_eq!(ends, 1);
        assert!(got == body, "body corrupted");
    }

    proptest! {
        #[test]
        fn same_events_whatever_the_chunking(
            body in proptest::collection::vec(any::<u8>(), 0..300),
            trailing in proptest::collection::vec(any::<u8>(), 0..20),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let mut params = Params::new();
            params.set(b"REQUEST_METHOD", b"POST");
            params.set(b"EMPTY", b"");
            let mut wire = BytesMut::new();
            encode_request(&params, body.len() as u64, &mut wire);
            wire.extend_from_slice(&body);
            wire.extend_from_slice(&trailing);

            let (_, whole, r) = run(&[&wire]);
            prop_assert!(r.is_ok());
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
            points.sort_unstable();
            let mut chunks = Vec::new();
            let mut last = 0;
            for p in points {
                chunks.push(&wire[last..p]);
                last = p;
            }
            chunks.push(&wire[last..]);
            let (_, split, r) = run(&chunks);
            prop_assert!(r.is_ok());

            prop_assert_eq!(&whole[0], &split[0]);
            prop_assert_eq!(whole.last(), Some(&Event::BodyEnd));
            prop_assert_eq!(split.last(), Some(&Event::BodyEnd));
            prop_assert_eq!(body_of(&whole), body.clone());
            prop_assert_eq!(body_of(&split), body);
            prop_assert!(split.iter().all(|e| !matches!(e, Event::Body(b) if b.is_empty())));
        }
    }
}
