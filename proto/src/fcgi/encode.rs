//! FastCGI encoding: the records an application sends (STDOUT/STDERR streams,
//! `FCGI_END_REQUEST`, `FCGI_GET_VALUES_RESULT`, `FCGI_UNKNOWN_TYPE`) and, for the client side
//! (`appserver probe`, tests), the records a web server sends.
//!
//! Every encoder appends to `dst` and never overwrites (style rule 2). Stream data is split into
//! records of at most [`STREAM_CHUNK_LEN`] content bytes, each padded to a multiple of 8 as the
//! spec recommends. An empty slice encodes nothing; the stream terminator is
//! [`encode_stream_end`].

use bytes::{BufMut, Bytes, BytesMut};

use crate::limits::{FCGI_HEADER_LEN, FCGI_MAX_CONTENT_LEN};
use crate::{Output, Params};

use super::record::{
    encode_pair, pair_encoded_len, BeginRequest, EndRequest, Header, ProtocolStatus, RecordType,
    Role, UnknownType, FCGI_KEEP_CONN, FCGI_NULL_REQUEST_ID,
};

/// Largest content we put in one stream record: 65 528 bytes, [`FCGI_MAX_CONTENT_LEN`]
/// rounded down to a multiple of 8, so full records need no padding.
pub const STREAM_CHUNK_LEN: usize = FCGI_MAX_CONTENT_LEN & !7;

/// Appends `data` as records of type `record_type` (`FCGI_STDOUT`, `FCGI_STDIN`, ...), split at
/// [`STREAM_CHUNK_LEN`] and padded to 8. Empty `data` appends nothing.
pub fn encode_stream(record_type: RecordType, id: u16, data: &[u8], dst: &mut BytesMut) {
    if data.is_empty() {
        return;
    }
    let records = data.len().div_ceil(STREAM_CHUNK_LEN);
    dst.reserve(data.len() + records * (FCGI_HEADER_LEN + 7));
    for chunk in data.chunks(STREAM_CHUNK_LEN) {
        // chunk.len() <= STREAM_CHUNK_LEN < 65 536, so the cast cannot truncate.
        let header = Header::new(record_type, id, chunk.len() as u16);
        header.encode(dst);
        dst.put_slice(chunk);
        dst.put_bytes(0, header.padding_length as usize);
    }
}

/// Appends the empty record that terminates a stream.
pub fn encode_stream_end(record_type: RecordType, id: u16, dst: &mut BytesMut) {
    Header::new(record_type, id, 0).encode(dst);
}

/// Appends `data` as `FCGI_STDOUT` records (empty = nothing; see [`encode_stream_end`]).
pub fn encode_stdout(id: u16, data: &[u8], dst: &mut BytesMut) {
    encode_stream(RecordType::Stdout, id, data, dst);
}

/// Queues `data` as `FCGI_STDOUT` records in `out`: the same records as [`encode_stdout`],
/// with each record's content handed to [`Output::put`] (uncopied when large).
pub fn queue_stdout(id: u16, mut data: Bytes, out: &mut Output) {
    let records = data.len().div_ceil(STREAM_CHUNK_LEN);
    out.reserve_for(data.len(), records * (FCGI_HEADER_LEN + 7));
    while !data.is_empty() {
        let content = data.split_to(data.len().min(STREAM_CHUNK_LEN));
        // content.len() <= STREAM_CHUNK_LEN < 65 536, so the cast cannot truncate.
        let header = Header::new(RecordType::Stdout, id, content.len() as u16);
        header.encode(out.buf());
        out.put(content);
        out.buf().put_bytes(0, header.padding_length as usize);
    }
}

/// Queues as `FCGI_STDOUT` what `write` appends to the buffer it is handed: a response head
/// encoded where it goes out, with no buffer of its own. Content up to [`STREAM_CHUNK_LEN`]
/// (any head a web server takes) is one record whose header is filled in after, over the
/// eight bytes this appended for it (nothing queued before is touched); longer content is
/// moved into as many records as it needs. `room` bytes (the content expected, with its
/// padding) are reserved behind the header before anything is written, so the buffer grows
/// once.
pub fn queue_stdout_with(
    id: u16,
    room: usize,
    out: &mut Output,
    write: impl FnOnce(&mut BytesMut),
) {
    let buf = out.buf();
    buf.reserve(FCGI_HEADER_LEN + room);
    let start = buf.len();
    buf.put_bytes(0, FCGI_HEADER_LEN);
    write(buf);
    let content = buf.len() - start - FCGI_HEADER_LEN;
    if content == 0 {
        buf.truncate(start);
    } else if content <= STREAM_CHUNK_LEN {
        // content <= STREAM_CHUNK_LEN < 65 536, so the cast cannot truncate.
        let header = Header::new(RecordType::Stdout, id, content as u16);
        buf[start..start + FCGI_HEADER_LEN].copy_from_slice(&header.to_bytes());
        buf.put_bytes(0, header.padding_length as usize);
    } else {
        let data = buf.split_off(start + FCGI_HEADER_LEN);
        buf.truncate(start);
        encode_stdout(id, &data, buf);
    }
}

/// Appends `data` as `FCGI_STDERR` records (empty = nothing; see [`encode_stream_end`]).
pub fn encode_stderr(id: u16, data: &[u8], dst: &mut BytesMut) {
    encode_stream(RecordType::Stderr, id, data, dst);
}

/// Appends `FCGI_END_REQUEST` for request `id`.
pub fn encode_end_request(
    id: u16,
    app_status: u32,
    protocol_status: ProtocolStatus,
    dst: &mut BytesMut,
) {
    EndRequest {
        app_status,
        protocol_status,
    }
    .encode(id, dst);
}

/// Appends one `FCGI_GET_VALUES_RESULT` management record holding `pairs`.
///
/// # Panics
/// When the pairs do not fit one record (65 535 bytes); the connection answers at most the three
/// standard names, a few dozen bytes.
pub fn encode_get_values_result(pairs: &[(&[u8], &[u8])], dst: &mut BytesMut) {
    encode_pairs_record(RecordType::GetValuesResult, pairs, dst);
}

/// Appends `FCGI_UNKNOWN_TYPE` naming the management record type `record_type`.
pub fn encode_unknown_type(record_type: u8, dst: &mut BytesMut) {
    UnknownType { record_type }.encode(dst);
}

/// Client side: appends a whole request head: `FCGI_BEGIN_REQUEST`, the `FCGI_PARAMS` stream
/// and its empty terminator. STDIN follows with [`encode_stdin`].
pub fn encode_request(id: u16, role: Role, keep_conn: bool, params: &Params, dst: &mut BytesMut) {
    let flags = if keep_conn { FCGI_KEEP_CONN } else { 0 };
    BeginRequest { role, flags }.encode(id, dst);
    encode_params(id, params, dst);
}

/// Client side: appends the `FCGI_PARAMS` stream of `params` and its empty terminator.
pub fn encode_params(id: u16, params: &Params, dst: &mut BytesMut) {
    let len: usize = params.iter().map(|(n, v)| pair_encoded_len(n, v)).sum();
    let mut stream = BytesMut::with_capacity(len);
    for (name, value) in params.iter() {
        encode_pair(name, value, &mut stream);
    }
    encode_stream(RecordType::Params, id, &stream, dst);
    encode_stream_end(RecordType::Params, id, dst);
}

/// Client side: encodes STDIN bytes (empty = terminator).
pub fn encode_stdin(id: u16, data: &[u8], dst: &mut BytesMut) {
    if data.is_empty() {
        encode_stream_end(RecordType::Stdin, id, dst);
    } else {
        encode_stream(RecordType::Stdin, id, data, dst);
    }
}

/// Client side: appends `FCGI_ABORT_REQUEST` for request `id`.
pub fn encode_abort_request(id: u16, dst: &mut BytesMut) {
    encode_stream_end(RecordType::AbortRequest, id, dst);
}

/// Client side: appends one `FCGI_GET_VALUES` record asking for `names`.
///
/// # Panics
/// When the names do not fit one record (65 535 bytes).
pub fn encode_get_values(names: &[&[u8]], dst: &mut BytesMut) {
    let pairs: Vec<(&[u8], &[u8])> = names.iter().map(|n| (*n, &b""[..])).collect();
    encode_pairs_record(RecordType::GetValues, &pairs, dst);
}

fn encode_pairs_record(record_type: RecordType, pairs: &[(&[u8], &[u8])], dst: &mut BytesMut) {
    let len: usize = pairs.iter().map(|(n, v)| pair_encoded_len(n, v)).sum();
    let Ok(len16) = u16::try_from(len) else {
        panic!("{record_type} of {len} bytes does not fit one record");
    };
    let header = Header::new(record_type, FCGI_NULL_REQUEST_ID, len16);
    dst.reserve(header.record_len());
    header.encode(dst);
    for (name, value) in pairs {
        encode_pair(name, value, dst);
    }
    dst.put_bytes(0, header.padding_length as usize);
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::decode::{ClientDecoder, RecordDecoder, ResponseRecord};
    use super::*;
    use crate::params::ParamsBuilder;
    use crate::Limits;

    #[test]
    fn stdout_is_split_padded_and_keeps_the_id() {
        let data = vec![0x5a; 200 * 1024];
        let mut out = BytesMut::new();
        encode_stdout(1, &data, &mut out);
        encode_stream_end(RecordType::Stdout, 1, &mut out);
        let mut dec = RecordDecoder::new();
        let mut total = 0;
        let mut records = 0;
        while let Some(rec) = dec.decode(&mut out).unwrap() {
            assert_eq!(rec.header.record_type, RecordType::Stdout);
            assert_eq!(rec.header.request_id, 1);
            assert!(rec.content.len() <= FCGI_MAX_CONTENT_LEN);
            assert_eq!(rec.header.record_len() % 8, 0);
            total += rec.content.len();
            records += 1;
        }
        assert_eq!(total, data.len());
        assert_eq!(records, 4 + 1);
    }

    #[test]
    fn short_stdout_bytes() {
        let mut out = BytesMut::new();
        encode_stdout(1, b"hello", &mut out);
        assert_eq!(
            &out[..],
            &[1, 6, 0, 1, 0, 5, 3, 0, b'h', b'e', b'l', b'l', b'o', 0, 0, 0][..]
        );
        let mut out = BytesMut::new();
        encode_stdout(1, b"", &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn encoders_append() {
        let mut out = BytesMut::from(&b"keep"[..]);
        encode_unknown_type(0x0c, &mut out);
        assert_eq!(&out[..4], b"keep");
        assert_eq!(out.len(), 4 + 16);
    }

    #[test]
    fn request_encodes_begin_params_terminator() {
        let mut b = ParamsBuilder::new(Limits::default());
        b.push(b"SERVER_PORT", b"80").unwrap();
        let mut out = BytesMut::new();
        encode_request(1, Role::Responder, false, &b.finish(), &mut out);
        encode_stdin(1, b"", &mut out);
        // The minimal GET of the conformance list, with padding added.
        let mut expected = vec![1, 1, 0, 1, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        expected.extend_from_slice(&[1, 4, 0, 1, 0, 0x0f, 1, 0, 0x0b, 0x02]);
        expected.extend_from_slice(b"SERVER_PORT80\0");
        expected.extend_from_slice(&[1, 4, 0, 1, 0, 0, 0, 0, 1, 5, 0, 1, 0, 0, 0, 0]);
        assert_eq!(&out[..], &expected[..]);
    }

    #[test]
    fn get_values_and_result_records() {
        let mut out = BytesMut::new();
        encode_get_values(&[b"FCGI_MAX_CONNS"], &mut out);
        assert_eq!(
            &out[..8],
            &[1, 9, 0, 0, 0, 0x10, 0, 0][..],
            "14-byte name + 2 length bytes"
        );
        let mut out = BytesMut::new();
        encode_get_values_result(&[(b"FCGI_MPXS_CONNS", b"0")], &mut out);
        let rec = ClientDecoder::default().decode(&mut out).unwrap().unwrap();
        let ResponseRecord::GetValuesResult(p) = rec else {
            panic!("{rec:?}")
        };
        assert_eq!(p.get(b"FCGI_MPXS_CONNS"), Some(&b"0"[..]));
        assert!(out.is_empty());
    }

    /// Lengths around the record boundaries, filled with a pattern: generating 200 KB of
    /// arbitrary bytes per case would make this test take seconds without finding more.
    fn arb_stream() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            0usize..100,
            (1usize..4).prop_flat_map(|n| (n * STREAM_CHUNK_LEN - 9)..(n * STREAM_CHUNK_LEN + 9)),
            0usize..200_000,
        ]
        .prop_map(|len| (0..len).map(|i| (i * 31 % 251) as u8).collect())
    }

    proptest! {
        #[test]
        fn streams_round_trip(data in arb_stream(), id in 1u16..) {
            let mut out = BytesMut::new();
            encode_stdout(id, &data, &mut out);
            encode_stream_end(RecordType::Stdout, id, &mut out);
            let mut dec = ClientDecoder::default();
            let mut got = Vec::new();
            loop {
                match dec.decode(&mut out).unwrap() {
                    Some(ResponseRecord::Stdout { id: rid, data }) => {
                        prop_assert_eq!(rid, id);
                        if data.is_empty() {
                            break;
                        }
                        got.extend_from_slice(&data);
                    }
                    other => prop_assert!(false, "{:?}", other),
                }
            }
            prop_assert_eq!(got, data);
            prop_assert!(out.is_empty());
        }
    }
}
