//! Entry points for the fuzz targets in `fuzz/` (style rule 20). Compiled only with
//! `--cfg fuzzing`, which `cargo fuzz` sets; nothing here is part of the normal API.
//!
//! Each function takes the raw fuzzer input, must never panic on any input, and panics (which
//! the fuzzer reports) only when an invariant of the codec breaks: a round trip that changes
//! bytes, output after `FCGI_END_REQUEST`, an oversized record.

use bytes::{Bytes, BytesMut};

use crate::fcgi::conn::{ConnConfig, Connection, Event};
use crate::fcgi::decode::{ClientDecoder, ParamsDecoder, Record, RecordDecoder, ResponseRecord};
use crate::fcgi::record::{encode_pair, BeginRequest, EndRequest, RecordType, UnknownType};
use crate::limits::{FCGI_HEADER_LEN, FCGI_MAX_CONTENT_LEN};
use crate::Output;
use crate::{Limits, ProtocolError};

pub use crate::fcgi;
pub use crate::params::{check_pair, ParamsBuilder, Span};
pub use crate::reader::Reader;

/// `fcgi_decode`: frames records out of `data` and parses every typed body and PARAMS stream.
pub fn fcgi_decode(data: &[u8]) {
    let mut src = BytesMut::from(data);
    let mut dec = RecordDecoder::new();
    let mut params = ParamsDecoder::new(Limits::default());
    while let Ok(Some(record)) = dec.decode(&mut src) {
        assert!(record.content.len() <= FCGI_MAX_CONTENT_LEN);
        let h = &record.header;
        match h.record_type {
            RecordType::BeginRequest => {
                let _ = BeginRequest::load(h, &record.content);
            }
            RecordType::EndRequest => {
                let _ = EndRequest::load(h, &record.content);
            }
            RecordType::UnknownType => {
                let _ = UnknownType::load(h, &record.content);
            }
            RecordType::Params if record.content.is_empty() => {
                let done = std::mem::replace(&mut params, ParamsDecoder::new(Limits::default()));
                if let Ok(p) = done.finish() {
                    for (name, value) in p.iter() {
                        let _ = (name.len(), value.len());
                    }
                }
            }
            RecordType::Params if params.push(&record.content).is_err() => {
                params = ParamsDecoder::new(Limits::default());
            }
            _ => {}
        }
    }
    let mut client = ClientDecoder::default();
    let mut src = BytesMut::from(data);
    while let Ok(Some(_)) = client.decode(&mut src) {}
}

/// `fcgi_conn`: plays `data` as a web server against a [`Connection`], in chunks sized by the
/// input's last byte (so raw captures are valid seeds), answering every request like a driver
/// would, and checks the output.
pub fn fcgi_conn(data: &[u8]) {
    let chunk = 1 + 3 * usize::from(data.last().copied().unwrap_or(0));
    let mut conn = Connection::new(ConnConfig {
        limits: Limits::default(),
        max_conns: 10,
        max_reqs: 1,
    });
    let mut src = BytesMut::new();
    let mut check = OutputCheck::default();
    for piece in data.chunks(chunk) {
        src.extend_from_slice(piece);
        let result = conn.handle_input(&mut src);
        check.drain(&mut conn);
        if result.is_err() {
            assert!(conn.wants_close());
            return;
        }
        while let Some(event) = conn.poll_event() {
            match event {
                Event::Request { id, params, .. } => {
                    check.begun(id);
                    if params.len() % 3 == 0 {
                        conn.send_stdout(id, Bytes::from_static(b"Status: 200 OK\r\n\r\n"));
                    }
                    if params.len() % 5 == 1 {
                        conn.send_stderr(id, b"log");
                    }
                    if params.len() % 7 == 2 {
                        conn.end_request(id, 0);
                    }
                }
                Event::Stdin { id, data } => {
                    assert!(!data.is_empty());
                    conn.send_stdout(id, data);
                }
                Event::StdinEnd { id } | Event::Abort { id } => conn.end_request(id, 0),
            }
            check.drain(&mut conn);
        }
    }
    let _ = conn.handle_eof(&src);
    check.drain(&mut conn);
    assert!(check.buf.is_empty(), "connection emitted a partial record");
}

/// Decodes the connection's output as a web server would, as it is produced: it must be
/// well-formed records, and no STDOUT/STDERR may follow a request's `FCGI_END_REQUEST` until
/// a new request with that id has begun.
#[derive(Default)]
struct OutputCheck {
    buf: BytesMut,
    dec: ClientDecoder,
    ended: Vec<u16>,
}

impl OutputCheck {
    fn begun(&mut self, id: u16) {
        self.ended.retain(|e| *e != id);
    }

    fn drain(&mut self, conn: &mut Connection) {
        let mut out = Output::new();
        conn.poll_transmit(&mut out);
        assert_eq!(conn.queued_output(), 0);
        self.buf.extend_from_slice(&out.to_vec());
        loop {
            match self.dec.decode(&mut self.buf) {
                Ok(Some(ResponseRecord::EndRequest { id, .. })) => self.ended.push(id),
                Ok(Some(ResponseRecord::Stdout { id, .. } | ResponseRecord::Stderr { id, .. })) => {
                    assert!(!self.ended.contains(&id), "stream record after END_REQUEST");
                }
                Ok(Some(_)) => {}
                Ok(None) => return,
                Err(e) => panic!("connection emitted an invalid record: {e}"),
            }
        }
    }
}

/// `fcgi_roundtrip`: every record decoded from `data` re-encodes to the bytes it was decoded
/// from (padding bytes and the reserved byte aside, which the receiver ignores), and every
/// complete PARAMS stream re-encodes to pairs that decode to the same list.
pub fn fcgi_roundtrip(data: &[u8]) {
    let mut src = BytesMut::from(data);
    let mut dec = RecordDecoder::new();
    let mut offset = 0;
    let mut params = ParamsDecoder::new(Limits::default());
    loop {
        let Ok(Some(record)) = dec.decode(&mut src) else {
            break;
        };
        let consumed = &data[offset..offset + record.header.record_len()];
        offset += record.header.record_len();
        let mut again = BytesMut::new();
        encode_record(&record, &mut again);
        assert_eq!(again.len(), consumed.len());
        assert_eq!(again[..7], consumed[..7], "header changed in a round trip");
        let content_end = FCGI_HEADER_LEN + record.content.len();
        assert_eq!(
            again[FCGI_HEADER_LEN..content_end],
            consumed[FCGI_HEADER_LEN..content_end]
        );
        let reparsed = RecordDecoder::new().decode(&mut again);
        assert_eq!(reparsed, Ok(Some(record.clone())));

        if record.header.record_type == RecordType::Params {
            if record.content.is_empty() {
                let done = std::mem::replace(&mut params, ParamsDecoder::new(Limits::default()));
                if let Ok(list) = done.finish() {
                    let mut stream = BytesMut::new();
                    for (name, value) in list.iter() {
                        encode_pair(name, value, &mut stream);
                    }
                    let mut back = ParamsDecoder::new(Limits::default());
                    if !stream.is_empty() {
                        must(back.push(&stream));
                    }
                    let back = must(back.finish());
                    assert!(
                        back.iter().eq(list.iter()),
                        "params changed in a round trip"
                    );
                }
            } else if params.push(&record.content).is_err() {
                params = ParamsDecoder::new(Limits::default());
            }
        }
    }
}

/// Re-encodes a decoded record with its original padding length and zero padding bytes.
fn encode_record(record: &Record, dst: &mut BytesMut) {
    record.header.encode(dst);
    dst.extend_from_slice(&record.content);
    dst.resize(dst.len() + record.header.padding_length as usize, 0);
}

fn must<T>(r: Result<T, ProtocolError>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("re-encoded params failed to decode: {e}"),
    }
}

/// `scgi_conn`: plays `data` as a web server against an SCGI [`scgi::Connection`] in
/// input-chosen chunks: no panic, body never longer than `CONTENT_LENGTH`, the body's end
/// exactly at it, nothing accepted after it. The head is checked against a byte-by-byte
/// reading of the same block ([`naive_scgi_pairs`]): an accepted head holds exactly its
/// pairs, none named twice, and a head refused as a duplicate does name a repeated name.
pub fn scgi_conn(data: &[u8]) {
    use crate::scgi::{Connection as ScgiConnection, Event as ScgiEvent};

    let chunk = 1 + 3 * usize::from(data.last().copied().unwrap_or(0));
    let mut conn = ScgiConnection::new(Limits::default());
    let mut src = BytesMut::new();
    let mut declared = None;
    let mut received = 0u64;
    for piece in data.chunks(chunk) {
        src.extend_from_slice(piece);
        if let Err(e) = conn.handle_input(&mut src) {
            assert!(conn.is_done());
            if let ProtocolError::DuplicateParam(name) = e {
                let pairs = naive_scgi_pairs(data).expect("a duplicate in a whole block");
                let named = pairs
                    .iter()
                    .filter(|(n, _)| String::from_utf8_lossy(n) == name)
                    .count();
                assert!(
                    named >= 2,
                    "{name:?} refused as a duplicate, named {named} times"
                );
            }
            return;
        }
        while let Some(event) = conn.poll_event() {
            match event {
                ScgiEvent::Request {
                    content_length,
                    params,
                    ..
                } => {
                    assert!(declared.is_none(), "one request per connection");
                    declared = Some(content_length);
                    let pairs = naive_scgi_pairs(data).expect("an accepted block is whole");
                    assert!(params.iter().eq(pairs.iter().copied()), "pairs differ");
                    let mut names: Vec<&[u8]> = pairs.iter().map(|(n, _)| *n).collect();
                    names.sort_unstable();
                    assert!(names.windows(2).all(|w| w[0] != w[1]), "a repeat accepted");
                }
                ScgiEvent::Body(bytes) => {
                    received += bytes.len() as u64;
                    assert!(Some(received) <= declared, "body beyond CONTENT_LENGTH");
                }
                ScgiEvent::BodyEnd => assert_eq!(Some(received), declared),
            }
        }
    }
    let _ = conn.handle_eof(&src);
}

/// The `name NUL value NUL` pairs of the netstring at the start of `data`, read byte by byte;
/// `None` when the netstring or a pair's NUL is missing.
fn naive_scgi_pairs(data: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    let colon = data.iter().position(|&b| b == b':')?;
    let len: usize = std::str::from_utf8(&data[..colon]).ok()?.parse().ok()?;
    let block = data.get(colon + 1..colon + 1 + len)?;
    let mut fields = block.split(|&b| b == 0);
    let mut pairs = Vec::new();
    // A whole block ends in a NUL, so `split` leaves one empty field after the last pair.
    let mut rest = block.len();
    while rest > 0 {
        let name = fields.next()?;
        let value = fields.next()?;
        rest = rest.checked_sub(name.len() + value.len() + 2)?;
        pairs.push((name, value));
    }
    Some(pairs)
}

/// `ajp_conn`: plays `data` as a web server against an AJP13 [`ajp::Connection`] (secret
/// `fuzz`) in input-chosen chunks, answering every request like a driver would (asking for
/// body as long as it flows, then a response): no panic, every output byte a well-framed
/// container packet, body never beyond the declared `Content-Length` and complete at its end,
/// no request event while a request is active, and the CGI variables of every request carrying
/// its method.
///
/// The input's last byte sizes the chunks (low 7 bits) and, in its top bit, turns off the
/// recognition of lighttpd's body framing (on by default).
pub fn ajp_conn(data: &[u8]) {
    ajp_play(data);
}

/// What [`ajp_conn`] saw, so a test can tell that seeds reach the request body.
#[derive(Debug, Default, PartialEq, Eq)]
struct AjpTally {
    requests: usize,
    body_ends: usize,
    refused: usize,
}

fn ajp_play(data: &[u8]) -> AjpTally {
    use crate::ajp::{AjpConfig, ClientDecoder, Connection as AjpConnection, Event as AjpEvent};
    use crate::limits::AJP_DEFAULT_PACKET_SIZE;

    let last = data.last().copied().unwrap_or(0);
    let chunk = 1 + 3 * usize::from(last & 0x7f);
    let config = AjpConfig::default()
        .with_secret(&b"fuzz"[..])
        .with_lighttpd_framing(last & 0x80 == 0);
    let mut conn = AjpConnection::new(config);
    let mut src = BytesMut::new();
    let mut out = BytesMut::new();
    let mut client = ClientDecoder::new(AJP_DEFAULT_PACKET_SIZE);
    // (declared Content-Length, body bytes received) of the active request.
    let mut active: Option<(Option<u64>, u64)> = None;
    let mut tally = AjpTally::default();
    for piece in data.chunks(chunk) {
        src.extend_from_slice(piece);
        let result = conn.handle_input(&mut src);
        while let Some(event) = conn.poll_event() {
            match event {
                AjpEvent::Request { params, request } => {
                    assert!(active.is_none(), "a request while one is active");
                    assert_eq!(params.get(b"REQUEST_METHOD"), Some(&request.method[..]));
                    assert!(request.attributes.secret.is_none(), "secret not cleared");
                    active = Some((request.content_length, 0));
                    tally.requests += 1;
                    conn.request_body_chunk();
                }
                AjpEvent::Body(bytes) => {
                    assert!(!bytes.is_empty());
                    let Some((declared, received)) = active.as_mut() else {
                        panic!("body outside a request");
                    };
                    *received += bytes.len() as u64;
                    if let Some(declared) = declared {
                        assert!(*received <= *declared, "body beyond Content-Length");
                    }
                    conn.request_body_chunk();
                }
                AjpEvent::BodyEnd => {
                    if let Some((Some(declared), received)) = active {
                        assert_eq!(received, declared, "body ended short of Content-Length");
                    }
                    ajp_respond(&mut conn);
                    active = None;
                    tally.body_ends += 1;
                }
                AjpEvent::Forbidden { .. } | AjpEvent::BadRequest { .. } => {
                    tally.refused += 1;
                    ajp_respond(&mut conn);
                    active = None;
                }
            }
        }
        let mut queued = Output::new();
        conn.poll_transmit(&mut queued);
        out.extend_from_slice(&queued.to_vec());
        while let Some(packet) = client
            .decode(&mut out)
            .expect("container output is well framed")
        {
            let _ = packet;
        }
        if result.is_err() {
            assert!(conn.wants_close());
            return tally;
        }
    }
    let _ = conn.handle_eof(&src);
    tally
}

/// Answers the active AJP request as a driver would: 200, a body, `END_RESPONSE`.
fn ajp_respond(conn: &mut crate::ajp::Connection) {
    let _ = conn.send_headers(200, b"OK", &[(&b"content-type"[..], &b"x"[..])]);
    conn.send_body(Bytes::from_static(b"fuzz"));
    conn.end_response();
}

/// `ajp_cgi`: loads `data` as a `FORWARD_REQUEST` payload and maps it to CGI variables
/// ([`ajp::cgi_params`], with and without `underscores_in_headers`): no panic; the variables carry the method, the URI and every header
/// (as `HTTP_*`, or `CONTENT_*`), and `CONTENT_LENGTH` exactly when the body has a length. It
/// also checks the packet's round trip: encoding a loaded request and loading it again gives
/// the same request (header names aside, which a coded name turns to lowercase), and a second
/// round trip changes nothing.
pub fn ajp_cgi(data: &[u8]) {
    use crate::ajp::{cgi_params, header_var, ForwardRequest};
    use crate::limits::AJP_MAX_PACKET_SIZE;

    let limits = Limits::default();
    let payload = bytes::Bytes::copy_from_slice(data);
    let Ok(req) = ForwardRequest::load(&payload, &limits) else {
        return;
    };

    for underscores in [false, true] {
        let Ok(params) = cgi_params(&req, &limits, underscores) else {
            continue;
        };
        assert_eq!(params.get(b"REQUEST_METHOD"), Some(&req.method[..]));
        let uri = params
            .get(b"REQUEST_URI")
            .expect("REQUEST_URI is always sent");
        assert!(uri.starts_with(&req.req_uri) || req.req_uri.is_empty());
        let query = params
            .get(b"QUERY_STRING")
            .expect("QUERY_STRING is always sent");
        assert_eq!(query, req.attributes.query_string.as_deref().unwrap_or(b""));
        assert_eq!(
            params.get(b"CONTENT_LENGTH").is_some(),
            req.header(b"content-length").is_some() && !req.chunked
        );
        for (name, value) in &req.headers {
            if name.eq_ignore_ascii_case(b"content-length")
                || name.eq_ignore_ascii_case(b"content-type")
            {
                continue;
            }
            let Some(cgi) = header_var(name, underscores) else {
                assert!(!underscores && name.contains(&b'_'));
                continue;
            };
            let merged = params.get(&cgi).expect("every header becomes HTTP_*");
            assert!(
                merged.windows(value.len().max(1)).any(|w| w == &value[..]) || value.is_empty(),
                "header value lost in the CGI mapping"
            );
        }
        for (name, _) in params.iter() {
            if let Some(header) = name.strip_prefix(b"HTTP_") {
                assert!(!header.iter().any(|b| b.is_ascii_lowercase() || *b == b'-'));
            }
        }
    }

    let reencode = |req: &ForwardRequest| {
        let mut buf = BytesMut::new();
        req.encode(AJP_MAX_PACKET_SIZE, &mut buf).ok()?;
        let payload = buf.split_off(crate::limits::AJP_HEADER_LEN).freeze();
        Some(ForwardRequest::load(&payload, &limits).expect("an encoded request loads"))
    };
    let Some(again) = reencode(&req) else {
        return;
    };
    let mut names_aside = again.clone();
    names_aside.headers = req.headers.clone();
    assert_eq!(names_aside, req, "FORWARD_REQUEST changed in a round trip");
    assert!(req
        .headers
        .iter()
        .zip(&again.headers)
        .all(|((a, _), (b, _))| a.eq_ignore_ascii_case(b)));
    assert_eq!(reencode(&again).as_ref(), Some(&again));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ajp_conn seeds carry the target's secret, so their requests reach the handler and
    /// their bodies' ends instead of a 403.
    #[test]
    fn ajp_seeds_reach_the_body() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/ajp_conn");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let tally = ajp_play(&std::fs::read(&path).unwrap());
            assert_eq!(tally.refused, 0, "{}", path.display());
            assert!(tally.requests > 0, "{}", path.display());
            assert_eq!(tally.body_ends, tally.requests, "{}", path.display());
            seen += 1;
        }
        assert!(seen >= 3);
    }

    const GET: &[u8] = include_bytes!("../testdata/fcgi-nginx-get.bin");
    const POST: &[u8] = include_bytes!("../testdata/fcgi-nginx-post.bin");

    /// A smoke run of the targets over the captures and cheap deterministic mutations, so
    /// `--cfg fuzzing` builds are exercised without a fuzzer.
    #[test]
    fn targets_survive_captures_and_mutations() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for capture in [GET, POST] {
            fcgi_conn(capture);
            for step in [2u8, 8, 200] {
                let mut input = capture.to_vec();
                input.push(step);
                fcgi_conn(&input);
            }
            fcgi_decode(capture);
            fcgi_roundtrip(capture);
            for _ in 0..300 {
                let mut m = capture[..capture.len().min(2048)].to_vec();
                for _ in 0..4 {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let at = (seed as usize) % m.len();
                    m[at] = (seed >> 32) as u8;
                }
                fcgi_decode(&m);
                fcgi_roundtrip(&m);
                fcgi_conn(&m);
            }
        }
    }
}
