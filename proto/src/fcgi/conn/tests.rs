//! Connection tests: a scripted web server in bytes. The numbered tests are the FastCGI
//! conformance list of the protocol digest (§1.15), with exact bytes where it gives them.

use proptest::prelude::*;

use super::super::encode::{encode_abort_request, encode_params, STREAM_CHUNK_LEN};
use super::super::record::{encode_pair, Header};
use super::super::{encode_request, encode_stdin, ClientDecoder, ResponseRecord};
use super::*;
use crate::limits::{FCGI_MAX_CONTENT_LEN, MAX_PARAM_VALUE_LEN, MIN_MAX_PARAMS_PAIRS};
use crate::params::ParamsBuilder;

const BEGIN_1: [u8; 16] = [1, 1, 0, 1, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
const BEGIN_1_KEEP: [u8; 16] = [1, 1, 0, 1, 0, 8, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0];
const PARAMS_END_1: [u8; 8] = [1, 4, 0, 1, 0, 0, 0, 0];
const STDIN_END_1: [u8; 8] = [1, 5, 0, 1, 0, 0, 0, 0];
const STDOUT_END_1: [u8; 8] = [1, 6, 0, 1, 0, 0, 0, 0];
const END_REQUEST_1_OK: [u8; 16] = [1, 3, 0, 1, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
const RESPONSE: &[u8] = b"Status: 200 OK\r\nContent-Type: text/plain\r\n\r\nhello";

/// `01 04 00 01 00 0F 01 00` + `0B 02 'SERVER_PORT' '80'` + 1 byte of padding.
fn params_min() -> Vec<u8> {
    let mut v = vec![1, 4, 0, 1, 0, 0x0f, 1, 0, 0x0b, 0x02];
    v.extend_from_slice(b"SERVER_PORT80");
    v.push(0);
    v
}

fn minimal_get(begin: &[u8; 16]) -> Vec<u8> {
    let mut v = begin.to_vec();
    v.extend_from_slice(&params_min());
    v.extend_from_slice(&PARAMS_END_1);
    v.extend_from_slice(&STDIN_END_1);
    v
}

fn config() -> ConnConfig {
    ConnConfig {
        limits: Limits::default(),
        max_conns: 10,
        max_reqs: 1,
    }
}

fn conn() -> Connection {
    Connection::new(config())
}

/// Feeds `bytes` and returns the events; the input must be consumed whole.
fn feed(c: &mut Connection, bytes: &[u8]) -> Result<Vec<Event>, ProtocolError> {
    let mut src = BytesMut::from(bytes);
    c.handle_input(&mut src)?;
    assert!(src.is_empty(), "{} bytes left", src.len());
    Ok(events(c))
}

fn events(c: &mut Connection) -> Vec<Event> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

/// `events` with each run of one request's [`Event::Stdin`] joined into one: how a record's
/// content is cut into events depends on how the input was cut into reads.
fn joined_stdin(events: Vec<Event>) -> Vec<Event> {
    let mut out: Vec<Event> = Vec::new();
    for ev in events {
        if let (
            Some(Event::Stdin {
                id: prev,
                data: held,
            }),
            Event::Stdin { id, data },
        ) = (out.last_mut(), &ev)
        {
            if prev == id {
                let mut both = held.to_vec();
                both.extend_from_slice(data);
                *held = Bytes::from(both);
                continue;
            }
        }
        out.push(ev);
    }
    out
}

fn transmit(c: &mut Connection) -> Vec<u8> {
    let mut dst = Output::new();
    c.poll_transmit(&mut dst);
    assert_eq!(c.queued_output(), 0);
    dst.to_vec()
}

/// `Params` compare by buffer layout; requests compare by their pairs.
fn assert_request(
    event: &Event,
    want_id: u16,
    want_role: Role,
    want_keep: bool,
    pairs: &[(&[u8], &[u8])],
) {
    let Event::Request {
        id,
        role,
        keep_conn,
        params,
    } = event
    else {
        panic!("not a request: {event:?}");
    };
    assert_eq!((*id, *role, *keep_conn), (want_id, want_role, want_keep));
    assert!(params.iter().eq(pairs.iter().copied()), "{params:?}");
}

fn same(a: &Params, b: &Params) -> bool {
    a.iter().eq(b.iter())
}

fn params_of(pairs: &[(&[u8], &[u8])]) -> Params {
    let mut b = ParamsBuilder::new(Limits::default());
    for (n, v) in pairs {
        b.push(n, v).unwrap();
    }
    b.finish()
}

/// The bytes `send_stdout(1, RESPONSE)` must produce: one record, padded to 8.
fn stdout_response_1() -> Vec<u8> {
    let len = RESPONSE.len();
    let pad = (8 - len % 8) % 8;
    let mut v = vec![1, 6, 0, 1, 0, len as u8, pad as u8, 0];
    v.extend_from_slice(RESPONSE);
    v.extend(std::iter::repeat_n(0, pad));
    v
}

fn expect_err(bytes: &[u8], expected: ProtocolError) {
    let mut c = conn();
    assert_eq!(feed(&mut c, bytes), Err(expected), "input {bytes:02x?}");
    assert!(c.wants_close());
}

// 1. Minimal GET.
#[test]
fn c01_minimal_get() {
    let mut c = conn();
    let ev = feed(&mut c, &minimal_get(&BEGIN_1)).unwrap();
    assert_eq!(ev.len(), 2);
    assert_request(
        &ev[0],
        1,
        Role::Responder,
        false,
        &[(b"SERVER_PORT", b"80")],
    );
    assert_eq!(ev[1], Event::StdinEnd { id: 1 });
    assert!(!c.is_idle());
    c.send_stdout(1, Bytes::from_static(RESPONSE));
    c.end_request(1, 0);
    let mut expected = stdout_response_1();
    expected.extend_from_slice(&STDOUT_END_1);
    expected.extend_from_slice(&END_REQUEST_1_OK);
    assert_eq!(transmit(&mut c), expected);
    // KEEP_CONN was clear: close once drained.
    assert!(c.wants_close());
    assert!(c.is_idle());
}

// 2. KEEP_CONN twice on one connection.
#[test]
fn c02_keep_conn_serves_two_requests() {
    let mut c = conn();
    let mut answers = Vec::new();
    for _ in 0..2 {
        let ev = feed(&mut c, &minimal_get(&BEGIN_1_KEEP)).unwrap();
        assert!(matches!(
            ev[0],
            Event::Request {
                keep_conn: true,
                ..
            }
        ));
        assert_eq!(ev[1], Event::StdinEnd { id: 1 });
        c.send_stdout(1, Bytes::from_static(RESPONSE));
        c.end_request(1, 0);
        answers.push(transmit(&mut c));
        assert!(!c.wants_close());
        assert!(c.is_idle());
    }
    assert_eq!(answers[0], answers[1]);
    // END_REQUEST is the last thing sent: nothing more is queued.
    assert!(answers[0].ends_with(&END_REQUEST_1_OK));
    assert_eq!(c.queued_output(), 0);
}

fn get_values_query(extra: &[u8]) -> Vec<u8> {
    let mut content = vec![0x0e, 0x00];
    content.extend_from_slice(b"FCGI_MAX_CONNS");
    content.extend_from_slice(&[0x0d, 0x00]);
    content.extend_from_slice(b"FCGI_MAX_REQS");
    content.extend_from_slice(&[0x0f, 0x00]);
    content.extend_from_slice(b"FCGI_MPXS_CONNS");
    content.extend_from_slice(extra);
    let mut v = vec![1, 9, 0, 0, 0, content.len() as u8, 0, 0];
    v.extend_from_slice(&content);
    v
}

fn get_values_answer() -> Vec<u8> {
    let mut content = vec![0x0e, 0x02];
    content.extend_from_slice(b"FCGI_MAX_CONNS10");
    content.extend_from_slice(&[0x0d, 0x01]);
    content.extend_from_slice(b"FCGI_MAX_REQS1");
    content.extend_from_slice(&[0x0f, 0x01]);
    content.extend_from_slice(b"FCGI_MPXS_CONNS0");
    assert_eq!(content.len(), 0x34);
    let mut v = vec![1, 0x0a, 0, 0, 0, 0x34, 4, 0];
    v.extend_from_slice(&content);
    v.extend_from_slice(&[0; 4]);
    v
}

// 3. GET_VALUES, with and without an unknown name.
#[test]
fn c03_get_values() {
    let query = get_values_query(b"");
    assert_eq!(query[5], 0x30);
    let mut c = conn();
    assert_eq!(feed(&mut c, &query).unwrap(), []);
    assert_eq!(transmit(&mut c), get_values_answer());

    let query = get_values_query(b"\x03\x00FOO");
    assert_eq!(query[5], 0x35);
    let mut c = conn();
    feed(&mut c, &query).unwrap();
    assert_eq!(transmit(&mut c), get_values_answer());
    // Management records do not disturb the request slot.
    assert!(c.is_idle() && !c.wants_close());
}

#[test]
fn get_values_answers_each_name_once_and_during_a_request() {
    let mut c = conn();
    feed(&mut c, &BEGIN_1).unwrap();
    let mut q = BytesMut::new();
    super::super::encode::encode_get_values(&[&b"FCGI_MPXS_CONNS"[..]; 3000], &mut q);
    feed(&mut c, &q).unwrap();
    let mut out = BytesMut::from(&transmit(&mut c)[..]);
    let Some(ResponseRecord::GetValuesResult(p)) =
        ClientDecoder::default().decode(&mut out).unwrap()
    else {
        panic!("no GET_VALUES_RESULT");
    };
    assert_eq!(p.len(), 1);
    assert_eq!(p.get(b"FCGI_MPXS_CONNS"), Some(&b"0"[..]));
    // The request carries on.
    let mut rest = params_min();
    rest.extend_from_slice(&PARAMS_END_1);
    assert!(matches!(
        feed(&mut c, &rest).unwrap()[0],
        Event::Request { .. }
    ));
}

#[test]
fn get_values_with_a_truncated_pair_is_an_error() {
    expect_err(
        &[1, 9, 0, 0, 0, 3, 0, 0, 0x05, 0x00, b'F'],
        ProtocolError::MissingData("name-value name"),
    );
}

// 4. Unknown management type.
#[test]
fn c04_unknown_management_type() {
    let mut c = conn();
    feed(&mut c, &[1, 0x0c, 0, 0, 0, 0, 0, 0]).unwrap();
    assert_eq!(
        transmit(&mut c),
        [1, 0x0b, 0, 0, 0, 8, 0, 0, 0x0c, 0, 0, 0, 0, 0, 0, 0]
    );
    // GET_VALUES_RESULT and UNKNOWN_TYPE are app-side management types: unknown to us.
    feed(&mut c, &[1, 0x0a, 0, 0, 0, 0, 0, 0]).unwrap();
    assert_eq!(transmit(&mut c)[8], 0x0a);
}

const UNKNOWN_ROLE_1: [u8; 16] = [1, 3, 0, 1, 0, 8, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0];

// 5. Unknown role 7; later PARAMS/STDIN for id 1 are ignored.
#[test]
fn c05_unknown_role() {
    let mut c = conn();
    let mut input = vec![1, 1, 0, 1, 0, 8, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0];
    input.extend_from_slice(&params_min());
    input.extend_from_slice(&PARAMS_END_1);
    input.extend_from_slice(&STDIN_END_1);
    assert_eq!(feed(&mut c, &input).unwrap(), []);
    assert_eq!(transmit(&mut c), UNKNOWN_ROLE_1);
    assert!(c.wants_close());
}

#[test]
fn unknown_role_and_filter_with_keep_conn_ignore_the_id_then_serve_the_next_request() {
    for role in [0x07u8, 0x03] {
        let mut c = conn();
        let mut input = vec![1, 1, 0, 1, 0, 8, 0, 0, 0, role, 1, 0, 0, 0, 0, 0];
        input.extend_from_slice(&params_min());
        input.extend_from_slice(&PARAMS_END_1);
        input.extend_from_slice(&[1, 5, 0, 1, 0, 1, 7, 0, b'x', 0, 0, 0, 0, 0, 0, 0]);
        input.extend_from_slice(&STDIN_END_1);
        input.extend_from_slice(&[1, 8, 0, 1, 0, 0, 0, 0]);
        assert_eq!(feed(&mut c, &input).unwrap(), []);
        assert_eq!(transmit(&mut c), UNKNOWN_ROLE_1);
        assert!(!c.wants_close() && c.is_idle());
        let ev = feed(&mut c, &minimal_get(&BEGIN_1)).unwrap();
        assert_eq!(ev.len(), 2);
    }
}

// 6. A concurrent BEGIN for id 2 while id 1 is active.
#[test]
fn c06_concurrent_begin_is_cant_mpx_conn() {
    let mut c = conn();
    feed(&mut c, &BEGIN_1).unwrap();
    let mut input = vec![1, 1, 0, 2, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    // id 2's records are then ignored.
    input.extend_from_slice(&[1, 4, 0, 2, 0, 0, 0, 0, 1, 5, 0, 2, 0, 0, 0, 0]);
    assert_eq!(feed(&mut c, &input).unwrap(), []);
    assert_eq!(
        transmit(&mut c),
        [1, 3, 0, 2, 0, 8, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]
    );
    // id 1 is unaffected.
    let mut rest = params_min();
    rest.extend_from_slice(&PARAMS_END_1);
    rest.extend_from_slice(&STDIN_END_1);
    assert_eq!(feed(&mut c, &rest).unwrap().len(), 2);
    assert!(!c.wants_close());
}

#[test]
fn a_second_begin_for_the_active_id_is_unexpected() {
    let mut input = BEGIN_1.to_vec();
    input.extend_from_slice(&BEGIN_1);
    expect_err(
        &input,
        ProtocolError::UnexpectedRecord {
            expected: "FCGI_PARAMS",
            got: "FCGI_BEGIN_REQUEST".into(),
            request_id: 1,
        },
    );
}

/// Feeds BEGIN, the given raw PARAMS records and the terminators; returns the params.
fn params_from_records(records: &[u8]) -> Params {
    let mut input = BEGIN_1.to_vec();
    input.extend_from_slice(records);
    input.extend_from_slice(&PARAMS_END_1);
    let mut c = conn();
    match feed(&mut c, &input).unwrap().pop() {
        Some(Event::Request { params, .. }) => params,
        other => panic!("{other:?}"),
    }
}

fn raw_record(record_type: u8, id: u16, content: &[u8], padding: u8, reserved: u8) -> Vec<u8> {
    let id = id.to_be_bytes();
    let len = (content.len() as u16).to_be_bytes();
    let mut v = vec![
        1,
        record_type,
        id[0],
        id[1],
        len[0],
        len[1],
        padding,
        reserved,
    ];
    v.extend_from_slice(content);
    v.extend((0..padding).map(|i| i.wrapping_mul(37) | 0x80));
    v
}

// 7. Length encodings, splits, padding and the reserved byte all parse identically.
#[test]
fn c07_length_encodings_parse_identically() {
    let value = [b'v'; 128];
    let mut canonical = BytesMut::new();
    encode_pair(b"LONG", &value, &mut canonical);
    encode_pair(b"AB", b"cd", &mut canonical);
    let expected = params_from_records(&raw_record(4, 1, &canonical, 0, 0));
    assert_eq!(expected.get(b"LONG"), Some(&value[..]));
    assert_eq!(&canonical[1..5], &[0x80, 0, 0, 0x80]);

    // Small length in the 4-byte form.
    let mut four = canonical[..canonical.len() - 6].to_vec();
    four.extend_from_slice(&[0x80, 0, 0, 2, 0x80, 0, 0, 2]);
    four.extend_from_slice(b"ABcd");
    assert!(same(
        &params_from_records(&raw_record(4, 1, &four, 0, 0)),
        &expected
    ));

    // A pair split across two records in the middle of its 4-byte length.
    let mut split = raw_record(4, 1, &canonical[..3], 0, 0);
    split.extend_from_slice(&raw_record(4, 1, &canonical[3..], 0, 0));
    assert!(same(&params_from_records(&split), &expected));

    // Padding 255 with junk bytes, and reserved byte 0xFF.
    let junk = raw_record(4, 1, &canonical, 255, 0xff);
    assert!(same(&params_from_records(&junk), &expected));
}

// 8. Malformed input: each is a protocol error, with nothing allocated for claimed sizes.
#[test]
fn c08_bad_version() {
    for v in [0u8, 2] {
        let mut input = BEGIN_1;
        input[0] = v;
        expect_err(&input, ProtocolError::UnsupportedVersion(v));
    }
}

#[test]
fn c08_begin_with_bad_length() {
    for len in [7u8, 9] {
        let mut input = vec![1, 1, 0, 1, 0, len, 0, 0];
        input.extend(std::iter::repeat_n(0, len as usize));
        expect_err(
            &input,
            ProtocolError::BadBodyLength {
                record: "FCGI_BEGIN_REQUEST",
                len: len as usize,
                expected: 8,
            },
        );
    }
}

#[test]
fn c08_begin_with_id_0() {
    expect_err(
        &[1, 1, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0],
        ProtocolError::NullRequestId {
            record: "FCGI_BEGIN_REQUEST",
        },
    );
}

#[test]
fn c08_stdin_before_params_terminator() {
    let mut input = BEGIN_1.to_vec();
    input.extend_from_slice(&params_min());
    input.extend_from_slice(&STDIN_END_1);
    expect_err(
        &input,
        ProtocolError::UnexpectedRecord {
            expected: "FCGI_PARAMS",
            got: "FCGI_STDIN".into(),
            request_id: 1,
        },
    );
}

#[test]
fn c08_params_after_terminator() {
    let mut input = BEGIN_1.to_vec();
    input.extend_from_slice(&PARAMS_END_1);
    input.extend_from_slice(&params_min());
    expect_err(
        &input,
        ProtocolError::UnexpectedRecord {
            expected: "FCGI_STDIN",
            got: "FCGI_PARAMS".into(),
            request_id: 1,
        },
    );
}

#[test]
fn c08_pair_truncated_at_terminator() {
    let mut input = BEGIN_1.to_vec();
    input.extend_from_slice(&raw_record(4, 1, &[0x0b, 0x02, b'S', b'E'], 0, 0));
    input.extend_from_slice(&PARAMS_END_1);
    expect_err(
        &input,
        ProtocolError::MissingData("FCGI_PARAMS name-value pair"),
    );
}

#[test]
fn c08_value_length_ffffffff() {
    let mut input = BEGIN_1.to_vec();
    input.extend_from_slice(&raw_record(
        4,
        1,
        &[0x01, 0xff, 0xff, 0xff, 0xff, b'A'],
        0,
        0,
    ));
    expect_err(
        &input,
        ProtocolError::ParamValueTooLong {
            len: 0x7fff_ffff,
            max: MAX_PARAM_VALUE_LEN,
        },
    );
}

#[test]
fn c08_app_record_types_from_the_server() {
    for t in [3u8, 6, 7, 10, 11] {
        let content: &[u8] = if t == 3 || t == 11 { &[0; 8] } else { b"" };
        let got = RecordType::from_u8(t).to_string();
        // Whether or not id 1 is active.
        for prefix in [&[][..], &BEGIN_1[..]] {
            let mut input = prefix.to_vec();
            input.extend_from_slice(&raw_record(t, 1, content, 0, 0));
            expect_err(
                &input,
                ProtocolError::UnexpectedRecord {
                    expected: "a record a web server sends",
                    got: got.clone(),
                    request_id: 1,
                },
            );
        }
    }
}

#[test]
fn stdin_content_is_delivered_as_it_arrives_and_its_padding_skipped() {
    let mut c = conn();
    feed(&mut c, &[&BEGIN_1[..], &PARAMS_END_1[..]].concat()).unwrap();
    let record = raw_record(5, 1, b"abcdefgh", 3, 0);
    let mut src = BytesMut::new();
    let mut got = Vec::new();
    // Header and 2 bytes, 5 more, the last byte and 1 of 3 padding bytes, the rest of the
    // padding with the next record's whole.
    let mut tail = record[16..].to_vec();
    tail.extend_from_slice(&raw_record(5, 1, b"ij", 0, 0));
    for part in [&record[..10], &record[10..15], &record[15..16], &tail[..]] {
        src.extend_from_slice(part);
        c.handle_input(&mut src).unwrap();
        assert!(
            src.is_empty(),
            "nothing of a STDIN record waits for its end"
        );
        got.extend(events(&mut c).into_iter().map(|ev| match ev {
            Event::Stdin { id: 1, data } => String::from_utf8(data.to_vec()).unwrap(),
            other => panic!("{other:?}"),
        }));
    }
    assert_eq!(got, ["ab", "cdefg", "h", "ij"]);
    assert_eq!(c.queued_stdin(), 0);
    // A record of another type keeps waiting until it is whole.
    let mut src = BytesMut::from(&raw_record(2, 1, &[], 0, 0)[..7]);
    c.handle_input(&mut src).unwrap();
    assert_eq!(src.len(), 7);
}

#[test]
fn eof_inside_a_partly_delivered_stdin_record() {
    let record = raw_record(5, 1, b"abc", 5, 0);
    for (cut, part) in [(9, "record content"), (12, "padding")] {
        let mut c = conn();
        feed(&mut c, &[&BEGIN_1[..], &PARAMS_END_1[..]].concat()).unwrap();
        let mut src = BytesMut::from(&record[..cut]);
        c.handle_input(&mut src).unwrap();
        assert!(src.is_empty());
        assert_eq!(c.handle_eof(&src), Err(ProtocolError::UnexpectedEof(part)));
        assert!(c.wants_close());
    }
}

#[test]
fn c08_eof_mid_header_content_and_padding() {
    let record = raw_record(5, 1, b"abc", 5, 0);
    for (cut, part) in [(3, "record header"), (9, "record content"), (12, "padding")] {
        let mut c = conn();
        let mut src = BytesMut::from(&record[..cut]);
        c.handle_input(&mut src).unwrap();
        assert_eq!(src.len(), cut, "partial records are not consumed");
        assert_eq!(c.handle_eof(&src), Err(ProtocolError::UnexpectedEof(part)));
        assert!(c.wants_close());
    }
    // EOF at a record boundary is not an error, even mid-request.
    let mut c = conn();
    feed(&mut c, &BEGIN_1).unwrap();
    assert_eq!(c.handle_eof(&BytesMut::new()), Ok(()));
}

#[test]
fn management_ids_and_data_records_out_of_place() {
    for t in [2u8, 4, 5, 8] {
        expect_err(
            &raw_record(t, 0, b"", 0, 0),
            ProtocolError::NullRequestId {
                record: RecordType::from_u8(t).name().unwrap(),
            },
        );
    }
    expect_err(
        &raw_record(6, 0, b"", 0, 0),
        ProtocolError::UnexpectedRecord {
            expected: "a record a web server sends",
            got: "FCGI_STDOUT".into(),
            request_id: 0,
        },
    );
    let mut input = minimal_get(&BEGIN_1);
    input.truncate(input.len() - 8);
    input.extend_from_slice(&raw_record(8, 1, b"", 0, 0));
    expect_err(
        &input,
        ProtocolError::UnexpectedRecord {
            expected: "FCGI_STDIN",
            got: "FCGI_DATA".into(),
            request_id: 1,
        },
    );
}

// 9. Records for a never-begun id are ignored.
#[test]
fn c09_records_for_never_begun_id_are_ignored() {
    let mut c = conn();
    let mut input = Vec::new();
    input.extend_from_slice(&raw_record(5, 5, b"body", 0, 0));
    input.extend_from_slice(&raw_record(4, 5, &params_min()[8..], 0, 0));
    input.extend_from_slice(&[1, 2, 0, 5, 0, 0, 0, 0]);
    input.extend_from_slice(&raw_record(8, 5, b"data", 0, 0));
    input.extend_from_slice(&raw_record(0x20, 5, b"?", 0, 0));
    assert_eq!(feed(&mut c, &input).unwrap(), []);
    assert_eq!(transmit(&mut c), b"");
    // And while id 1 is active.
    feed(&mut c, &BEGIN_1).unwrap();
    assert_eq!(feed(&mut c, &input).unwrap(), []);
    let mut rest = params_min();
    rest.extend_from_slice(&PARAMS_END_1);
    rest.extend_from_slice(&STDIN_END_1);
    assert_eq!(feed(&mut c, &rest).unwrap().len(), 2);
    assert_eq!(transmit(&mut c), b"");
}

// 10. ABORT during a slow request.
#[test]
fn c10_abort_during_a_request() {
    let mut c = conn();
    let mut input = minimal_get(&BEGIN_1_KEEP);
    input.truncate(input.len() - 8); // still reading STDIN
    feed(&mut c, &input).unwrap();
    assert_eq!(
        feed(&mut c, &[1, 2, 0, 1, 0, 0, 0, 0]).unwrap(),
        [Event::Abort { id: 1 }]
    );
    c.end_request(1, 0);
    let mut expected = STDOUT_END_1.to_vec();
    expected.extend_from_slice(&END_REQUEST_1_OK);
    assert_eq!(transmit(&mut c), expected);
    assert!(c.is_idle());

    // Once STDIN is complete, too.
    let mut c = conn();
    feed(&mut c, &minimal_get(&BEGIN_1)).unwrap();
    c.send_stdout(1, Bytes::from_static(b"Status: 200 OK\r\n"));
    assert_eq!(
        feed(&mut c, &[1, 2, 0, 1, 0, 0, 0, 0]).unwrap(),
        [Event::Abort { id: 1 }]
    );
    c.end_request(1, 0);
    assert!(transmit(&mut c).ends_with(&END_REQUEST_1_OK));
}

#[test]
fn abort_while_params_arrive_is_answered_by_the_connection() {
    let mut c = conn();
    let mut input = BEGIN_1_KEEP.to_vec();
    input.extend_from_slice(&params_min());
    input.extend_from_slice(&[1, 2, 0, 1, 0, 0, 0, 0]);
    // The rest of the request is for an inactive id now.
    input.extend_from_slice(&PARAMS_END_1);
    input.extend_from_slice(&STDIN_END_1);
    assert_eq!(feed(&mut c, &input).unwrap(), []);
    assert_eq!(transmit(&mut c), END_REQUEST_1_OK);
    assert!(c.is_idle() && !c.wants_close());
}

// 11. STDIN is the body whatever CONTENT_LENGTH says, delivered as zero-copy slices.
#[test]
fn c11_stdin_is_the_stream_whatever_content_length_says() {
    for (content_length, body_len) in [(&b""[..], 100 * 1024), (&b"10"[..], 20), (&b"10"[..], 5)] {
        let params = params_of(&[
            (b"REQUEST_METHOD", b"POST"),
            (b"CONTENT_LENGTH", content_length),
        ]);
        let body: Vec<u8> = (0..body_len).map(|i| i as u8).collect();
        let mut input = BytesMut::new();
        encode_request(1, Role::Responder, false, &params, &mut input);
        // nginx-sized STDIN records.
        for chunk in body.chunks(32 * 1024) {
            encode_stdin(1, chunk, &mut input);
        }
        encode_stdin(1, b"", &mut input);
        let range = input.as_ptr() as usize..input.as_ptr() as usize + input.len();
        let mut c = conn();
        c.handle_input(&mut input).unwrap();
        assert!(c.queued_stdin() == body_len);
        let mut got = Vec::new();
        let mut ended = false;
        for e in events(&mut c) {
            match e {
                Event::Request { params: p, .. } => {
                    assert_eq!(p.get(b"CONTENT_LENGTH"), Some(content_length))
                }
                Event::Stdin { id: 1, data } => {
                    assert!(range.contains(&(data.as_ptr() as usize)), "copied");
                    got.extend_from_slice(&data);
                }
                Event::StdinEnd { id: 1 } => ended = true,
                other => panic!("{other:?}"),
            }
        }
        assert!(ended);
        assert_eq!(got, body);
        assert_eq!(c.queued_stdin(), 0);
    }
}

// 12. A 200 KB response.
#[test]
fn c12_large_response_is_split_into_records() {
    let mut c = conn();
    feed(&mut c, &minimal_get(&BEGIN_1)).unwrap();
    let body = vec![b'x'; 200 * 1024];
    c.send_stdout(1, Bytes::from_static(b"Status: 200 OK\r\n\r\n"));
    c.send_stdout(1, Bytes::from(body.clone()));
    c.end_request(1, 0);
    let mut out = BytesMut::from(&transmit(&mut c)[..]);
    let mut dec = ClientDecoder::default();
    let mut total = 0;
    let mut end = None;
    while let Some(r) = dec.decode(&mut out).unwrap() {
        match r {
            ResponseRecord::Stdout { id, data } => {
                assert_eq!(id, 1);
                assert!(data.len() <= FCGI_MAX_CONTENT_LEN);
                total += data.len();
            }
            ResponseRecord::EndRequest {
                id,
                protocol_status,
                ..
            } => end = Some((id, protocol_status)),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(total, body.len() + 18);
    assert_eq!(end, Some((1, ProtocolStatus::RequestComplete)));
    assert!(body.len().div_ceil(STREAM_CHUNK_LEN) >= 4);
}

/// The records in `out`, as (stdout content) and whether END_REQUEST came last.
fn stdout_records(out: &[u8]) -> (Vec<Vec<u8>>, bool) {
    let mut out = BytesMut::from(out);
    let mut dec = ClientDecoder::default();
    let (mut records, mut ended) = (Vec::new(), false);
    while let Some(r) = dec.decode(&mut out).unwrap() {
        assert!(!ended, "a record after END_REQUEST");
        match r {
            ResponseRecord::Stdout { data, .. } => records.push(data.to_vec()),
            ResponseRecord::EndRequest { .. } => ended = true,
            other => panic!("{other:?}"),
        }
    }
    (records, ended)
}

#[test]
fn large_stdout_data_is_queued_uncopied_between_its_headers() {
    let mut c = conn();
    feed(&mut c, &minimal_get(&BEGIN_1)).unwrap();
    // Two records' worth: the first full record's content, then the rest, both uncopied.
    let body = Bytes::from(vec![b'x'; STREAM_CHUNK_LEN + crate::output::SHARE_MIN]);
    c.send_stdout(1, body.clone());
    c.end_request(1, 0);
    let mut out = Output::new();
    c.poll_transmit(&mut out);
    let mut slices = [std::io::IoSlice::new(&[]); 8];
    let n = bytes::Buf::chunks_vectored(&out, &mut slices);
    let at = |i: usize| slices[i].as_ptr();
    // header, content, header, content, stream end and END_REQUEST.
    assert_eq!(
        n,
        5,
        "{:?}",
        slices[..n].iter().map(|s| s.len()).collect::<Vec<_>>()
    );
    assert_eq!((at(1), slices[1].len()), (body.as_ptr(), STREAM_CHUNK_LEN));
    assert_eq!(at(3), body[STREAM_CHUNK_LEN..].as_ptr());
    let (records, ended) = stdout_records(&out.to_vec());
    assert!(ended);
    assert_eq!(records.concat(), body);
    assert_eq!(records.len(), 3, "two with content and the empty end");
}

#[test]
fn a_head_written_in_place_is_the_record_send_stdout_makes() {
    let mut c = conn();
    feed(&mut c, &minimal_get(&BEGIN_1)).unwrap();
    c.send_stdout_with(1, 0, |buf| buf.extend_from_slice(RESPONSE));
    // Nothing written, nothing queued: not even an empty record, which would end the stream.
    c.send_stdout_with(1, 0, |_| {});
    assert_eq!(transmit(&mut c), stdout_response_1());

    // An inactive id: `write` is not called.
    c.send_stdout_with(2, 0, |_| panic!("called for an inactive id"));
    assert_eq!(c.queued_output(), 0);
}

#[test]
fn a_head_written_in_place_longer_than_a_record_is_split() {
    let mut c = conn();
    feed(&mut c, &minimal_get(&BEGIN_1)).unwrap();
    let head: Vec<u8> = (0..STREAM_CHUNK_LEN + 100)
        .map(|i| (i % 251) as u8)
        .collect();
    c.send_stdout_with(1, 0, |buf| buf.extend_from_slice(&head[..STREAM_CHUNK_LEN]));
    c.send_stdout_with(1, 0, |buf| buf.extend_from_slice(&head));
    c.end_request(1, 0);
    let (records, ended) = stdout_records(&transmit(&mut c));
    assert!(ended);
    // At the bound: one record. One past it: a full record and the rest.
    let lens: Vec<usize> = records.iter().map(Vec::len).collect();
    assert_eq!(lens, [STREAM_CHUNK_LEN, STREAM_CHUNK_LEN, 100, 0]);
    assert_eq!(records[1..3].concat(), head);
}

#[test]
fn authorizer_gets_request_and_stdin_end_without_stdin() {
    let mut begin = BEGIN_1;
    begin[9] = 2;
    // Apache mod_authnz_fcgi: no STDIN at all.
    let mut input = begin.to_vec();
    input.extend_from_slice(&params_min());
    input.extend_from_slice(&PARAMS_END_1);
    let mut c = conn();
    let ev = feed(&mut c, &input).unwrap();
    assert!(matches!(
        ev[0],
        Event::Request {
            role: Role::Authorizer,
            ..
        }
    ));
    assert_eq!(ev[1], Event::StdinEnd { id: 1 });
    // lighttpd: an empty STDIN follows, and is ignored.
    assert_eq!(feed(&mut c, &STDIN_END_1).unwrap(), []);
    c.send_stdout(1, Bytes::from_static(b"Status: 200 OK\r\n\r\n"));
    c.end_request(1, 0);
    assert!(transmit(&mut c).ends_with(&END_REQUEST_1_OK));
}

#[test]
fn stdin_after_its_terminator_is_unexpected_for_a_responder() {
    let mut input = minimal_get(&BEGIN_1);
    input.extend_from_slice(&STDIN_END_1);
    expect_err(
        &input,
        ProtocolError::UnexpectedRecord {
            expected: "FCGI_ABORT_REQUEST or nothing",
            got: "FCGI_STDIN".into(),
            request_id: 1,
        },
    );
}

#[test]
fn end_request_sends_stderr_terminator_only_after_stderr() {
    let mut c = conn();
    feed(&mut c, &minimal_get(&BEGIN_1_KEEP)).unwrap();
    c.end_request(1, 0);
    let mut expected = STDOUT_END_1.to_vec();
    expected.extend_from_slice(&END_REQUEST_1_OK);
    assert_eq!(transmit(&mut c), expected, "empty STDOUT always sent");

    feed(&mut c, &minimal_get(&BEGIN_1_KEEP)).unwrap();
    c.send_stderr(1, b"warn");
    c.send_stdout(1, Bytes::from_static(b""));
    c.end_request(1, 0x0102_0304);
    let mut expected = vec![1, 7, 0, 1, 0, 4, 4, 0, b'w', b'a', b'r', b'n', 0, 0, 0, 0];
    expected.extend_from_slice(&STDOUT_END_1);
    expected.extend_from_slice(&[1, 7, 0, 1, 0, 0, 0, 0]);
    expected.extend_from_slice(&[1, 3, 0, 1, 0, 8, 0, 0, 1, 2, 3, 4, 0, 0, 0, 0]);
    assert_eq!(transmit(&mut c), expected);
}

#[test]
fn reject_request_sends_only_end_request() {
    let mut c = conn();
    feed(&mut c, &minimal_get(&BEGIN_1)).unwrap();
    c.reject_request(1, ProtocolStatus::Overloaded);
    assert_eq!(
        transmit(&mut c),
        [1, 3, 0, 1, 0, 8, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0]
    );
    assert!(c.wants_close());
}

#[test]
fn nothing_is_sent_after_end_request() {
    let mut c = conn();
    feed(&mut c, &minimal_get(&BEGIN_1_KEEP)).unwrap();
    c.end_request(1, 0);
    let sent = transmit(&mut c);
    c.send_stdout(1, Bytes::from_static(b"late"));
    c.send_stderr(1, b"late");
    c.end_request(1, 0);
    c.reject_request(1, ProtocolStatus::Overloaded);
    assert_eq!(c.queued_output(), 0);
    assert!(sent.ends_with(&END_REQUEST_1_OK));
    // Output for the wrong id, or before the request was announced, is dropped too.
    let mut input = BEGIN_1_KEEP.to_vec();
    input.extend_from_slice(&params_min());
    feed(&mut c, &input).unwrap();
    c.send_stdout(1, Bytes::from_static(b"early"));
    c.send_stdout(2, Bytes::from_static(b"other"));
    assert_eq!(c.queued_output(), 0);
}

#[test]
fn ending_a_request_drops_its_pending_events() {
    let mut c = conn();
    let mut input = minimal_get(&BEGIN_1_KEEP);
    input.truncate(input.len() - 8);
    input.extend_from_slice(&raw_record(5, 1, b"unread", 0, 0));
    input.extend_from_slice(&STDIN_END_1);
    let mut src = BytesMut::from(&input[..]);
    c.handle_input(&mut src).unwrap();
    assert!(matches!(c.poll_event(), Some(Event::Request { .. })));
    assert_eq!(c.queued_stdin(), 6);
    c.end_request(1, 0);
    assert_eq!(c.poll_event(), None);
    assert_eq!(c.queued_stdin(), 0);
}

#[test]
fn poll_transmit_appends() {
    let mut c = conn();
    feed(&mut c, &[1, 0x0c, 0, 0, 0, 0, 0, 0]).unwrap();
    let mut dst = Output::new();
    dst.buf().extend_from_slice(b"xx");
    c.poll_transmit(&mut dst);
    assert_eq!(&dst.to_vec()[..2], b"xx");
    assert_eq!(dst.len(), 2 + 16);
}

#[test]
fn input_after_done_is_discarded() {
    let mut c = conn();
    feed(&mut c, &minimal_get(&BEGIN_1)).unwrap();
    c.end_request(1, 0);
    assert!(c.wants_close());
    let mut src = BytesMut::from(&minimal_get(&BEGIN_1)[..]);
    src.extend_from_slice(&[0xff, 0xff]);
    c.handle_input(&mut src).unwrap();
    assert!(src.is_empty());
    assert_eq!(c.poll_event(), None);
}

/// Limits through the connection: params bytes and pair count at and one over.
#[test]
fn params_limits_at_and_over_through_the_connection() {
    let limits = Limits::default()
        .with_max_params_bytes(crate::limits::MIN_MAX_PARAMS_BYTES)
        .with_max_params_pairs(MIN_MAX_PARAMS_PAIRS);
    let cfg = ConnConfig { limits, ..config() };
    let max = limits.max_params_bytes();
    for (len, ok) in [(max, true), (max + 1, false)] {
        // One pair: 1-byte name length, 4-byte value length, 1-byte name.
        let mut stream = BytesMut::new();
        encode_pair(b"A", &vec![b'a'; len - 6], &mut stream);
        assert_eq!(stream.len(), len);
        let mut input = BEGIN_1.to_vec();
        input.extend_from_slice(&raw_record(4, 1, &stream, 0, 0));
        input.extend_from_slice(&PARAMS_END_1);
        let mut c = Connection::new(cfg);
        let r = feed(&mut c, &input);
        if ok {
            assert_eq!(r.unwrap().len(), 1);
        } else {
            assert_eq!(r, Err(ProtocolError::ParamsTooLarge { len, max }));
        }
    }
    for (pairs, ok) in [
        (MIN_MAX_PARAMS_PAIRS, true),
        (MIN_MAX_PARAMS_PAIRS + 1, false),
    ] {
        let mut stream = BytesMut::new();
        for _ in 0..pairs {
            encode_pair(b"A", b"1", &mut stream);
        }
        let mut input = BEGIN_1.to_vec();
        input.extend_from_slice(&raw_record(4, 1, &stream, 0, 0));
        input.extend_from_slice(&PARAMS_END_1);
        let r = feed(&mut Connection::new(cfg), &input);
        if ok {
            let Event::Request { params, .. } = &r.unwrap()[0] else {
                panic!()
            };
            assert_eq!(params.len(), pairs);
        } else {
            assert_eq!(
                r,
                Err(ProtocolError::TooManyParams {
                    max: MIN_MAX_PARAMS_PAIRS
                })
            );
        }
    }
}

/// Captured from nginx (see `proto/testdata/README.md`).
const NGINX_GET: &[u8] = include_bytes!("../../../testdata/fcgi-nginx-get.bin");
const NGINX_POST: &[u8] = include_bytes!("../../../testdata/fcgi-nginx-post.bin");

fn decode_capture(bytes: &[u8]) -> (Params, Vec<u8>) {
    let mut c = conn();
    let ev = feed(&mut c, bytes).unwrap();
    let mut params = None;
    let mut body = Vec::new();
    let mut ended = false;
    for e in ev {
        match e {
            Event::Request {
                id: 1,
                role: Role::Responder,
                params: p,
                ..
            } => params = Some(p),
            Event::Stdin { id: 1, data } => body.extend_from_slice(&data),
            Event::StdinEnd { id: 1 } => ended = true,
            other => panic!("{other:?}"),
        }
    }
    assert!(ended);
    (params.unwrap(), body)
}

#[test]
fn captured_nginx_get() {
    let (p, body) = decode_capture(NGINX_GET);
    assert_eq!(p.get(b"REQUEST_METHOD"), Some(&b"GET"[..]));
    assert_eq!(p.get(b"QUERY_STRING"), Some(&b"a=1&b=%20two"[..]));
    assert_eq!(p.get(b"CONTENT_LENGTH"), Some(&b""[..]));
    assert_eq!(p.get(b"REQUEST_URI"), Some(&b"/app/hello?a=1&b=%20two"[..]));
    assert_eq!(p.get(b"GATEWAY_INTERFACE"), Some(&b"CGI/1.1"[..]));
    assert!(body.is_empty());
}

#[test]
fn captured_nginx_post() {
    let (p, body) = decode_capture(NGINX_POST);
    assert_eq!(p.get(b"REQUEST_METHOD"), Some(&b"POST"[..]));
    assert_eq!(p.get(b"QUERY_STRING"), Some(&b"x=y"[..]));
    assert_eq!(
        p.get(b"CONTENT_TYPE"),
        Some(&b"application/x-www-form-urlencoded"[..])
    );
    assert_eq!(
        p.get(b"CONTENT_LENGTH"),
        Some(format!("{}", body.len()).as_bytes())
    );
    assert_eq!(body.len(), 40_000);
    assert!(body.starts_with(b"field=0123456789"));
}

#[test]
fn captured_nginx_bytes_decode_in_any_chunking() {
    for capture in [NGINX_GET, NGINX_POST] {
        let whole = joined_stdin(feed(&mut conn(), capture).unwrap());
        for size in [1, 7, 8, 9, 100, 4096] {
            let mut c = conn();
            let mut src = BytesMut::new();
            let mut got = Vec::new();
            for chunk in capture.chunks(size) {
                src.extend_from_slice(chunk);
                c.handle_input(&mut src).unwrap();
                got.extend(events(&mut c));
            }
            assert!(src.is_empty());
            assert_eq!(joined_stdin(got), whole, "chunk size {size}");
        }
    }
}

/// Pairs, STDIN records, KEEP_CONN, PARAMS record length.
type ArbRequest = (Vec<(Vec<u8>, Vec<u8>)>, Vec<Vec<u8>>, bool, usize);

fn arb_request() -> impl Strategy<Value = ArbRequest> {
    (
        prop::collection::vec(
            (
                prop::collection::vec(any::<u8>(), 0..40),
                prop::collection::vec(any::<u8>(), 0..300),
            ),
            0..12,
        ),
        prop::collection::vec(prop::collection::vec(any::<u8>(), 1..500), 0..5),
        any::<bool>(),
        1usize..400,
    )
}

/// The wire bytes of a request whose PARAMS stream is cut into records of `record_len`.
fn request_bytes(
    pairs: &[(Vec<u8>, Vec<u8>)],
    stdin: &[Vec<u8>],
    keep: bool,
    record_len: usize,
) -> Vec<u8> {
    let mut out = BytesMut::new();
    let mut begin = BEGIN_1;
    begin[10] = keep as u8;
    out.extend_from_slice(&begin);
    let mut stream = BytesMut::new();
    for (n, v) in pairs {
        encode_pair(n, v, &mut stream);
    }
    for chunk in stream.chunks(record_len) {
        Header::new(RecordType::Params, 1, chunk.len() as u16).encode(&mut out);
        out.extend_from_slice(chunk);
        out.extend_from_slice(&vec![
            0;
            Header::new(RecordType::Params, 1, chunk.len() as u16).padding_length
                as usize
        ]);
    }
    out.extend_from_slice(&PARAMS_END_1);
    for s in stdin {
        encode_stdin(1, s, &mut out);
    }
    encode_stdin(1, b"", &mut out);
    out.to_vec()
}

proptest! {
    /// Feeding the same bytes in any chunking gives the same events, and they are the request.
    #[test]
    fn split_anywhere_gives_the_same_events(
        (pairs, stdin, keep, record_len) in arb_request(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let wire = request_bytes(&pairs, &stdin, keep, record_len);
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
        points.push(0);
        points.push(wire.len());
        points.sort_unstable();
        let mut c = conn();
        let mut src = BytesMut::new();
        let mut got = Vec::new();
        for w in points.windows(2) {
            src.extend_from_slice(&wire[w[0]..w[1]]);
            c.handle_input(&mut src).unwrap();
            got.extend(events(&mut c));
        }
        prop_assert!(src.is_empty());
        let mut expected = vec![Event::Request {
            id: 1,
            role: Role::Responder,
            keep_conn: keep,
            params: {
                let mut b = ParamsBuilder::new(Limits::default());
                for (n, v) in &pairs {
                    b.push(n, v).unwrap();
                }
                b.finish()
            },
        }];
        for s in &stdin {
            expected.push(Event::Stdin { id: 1, data: Bytes::from(s.clone()) });
        }
        expected.push(Event::StdinEnd { id: 1 });
        let (got, expected) = (joined_stdin(got), joined_stdin(expected));
        // Params compare by content, not by how their buffer was built.
        prop_assert_eq!(got.len(), expected.len());
        for (g, e) in got.iter().zip(&expected) {
            match (g, e) {
                (Event::Request { params: gp, keep_conn: gk, .. }, Event::Request { params: ep, keep_conn: ek, .. }) => {
                    prop_assert_eq!(gk, ek);
                    prop_assert!(gp.iter().eq(ep.iter()));
                }
                _ => prop_assert_eq!(g, e),
            }
        }
    }

    /// The client encoder and the server connection agree on any request.
    #[test]
    fn client_request_round_trips_through_connection((pairs, stdin, keep, _) in arb_request()) {
        let mut b = ParamsBuilder::new(Limits::default());
        for (n, v) in &pairs {
            b.push(n, v).unwrap();
        }
        let params = b.finish();
        let mut wire = BytesMut::new();
        encode_request(7, Role::Responder, keep, &params, &mut wire);
        for s in &stdin {
            encode_stdin(7, s, &mut wire);
        }
        encode_stdin(7, b"", &mut wire);
        encode_abort_request(7, &mut wire);
        let mut c = conn();
        c.handle_input(&mut wire).unwrap();
        let ev = events(&mut c);
        let Event::Request { id: 7, params: got, keep_conn, .. } = &ev[0] else {
            panic!("{:?}", ev[0]);
        };
        prop_assert_eq!(*keep_conn, keep);
        prop_assert!(got.iter().eq(params.iter()));
        prop_assert_eq!(ev.last(), Some(&Event::Abort { id: 7 }));
        let mut body = Vec::new();
        for e in &ev[1..ev.len() - 2] {
            let Event::Stdin { data, .. } = e else { panic!("{e:?}") };
            body.extend_from_slice(data);
        }
        prop_assert_eq!(body, stdin.concat());
        let mut p = BytesMut::new();
        encode_params(7, &params, &mut p);
        prop_assert!(p.ends_with(&[1, 4, 0, 7, 0, 0, 0, 0]));
    }
}
