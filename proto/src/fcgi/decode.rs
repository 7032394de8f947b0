//! FastCGI decoding: record framing ([`RecordDecoder`]), the streaming PARAMS parser
//! ([`ParamsDecoder`]) and the client-side response decoder ([`ClientDecoder`]).
//!
//! Decoders follow style rule 2: `decode(&mut self, src: &mut BytesMut)` returns `Ok(None)`
//! while a record is incomplete, consumes bytes only when it returns a record, and validates a
//! header (version, fixed body lengths, null request id) as soon as its 8 bytes are in, before
//! reserving room for the content. They hold no request state: what a record means for a
//! request is decided in [`super::conn`].
//!
//! Record contents are returned as [`Bytes`] split off the input buffer, so decoding copies
//! nothing and allocates nothing per record.

use bytes::{Buf, Bytes, BytesMut};

use crate::limits::FCGI_HEADER_LEN;
use crate::params::{check_pair, Span};
use crate::{Limits, Params, ProtocolError};

use super::record::{
    parse_pair_len, EndRequest, Header, PairLen, ProtocolStatus, RecordType, UnknownType,
    FCGI_NULL_REQUEST_ID, FIXED_BODY_LEN,
};

/// One whole record: its header and its content, padding already skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The parsed header. `padding_length` is what the peer sent.
    pub header: Header,
    /// The `contentLength` bytes of content, a zero-copy slice of the input.
    pub content: Bytes,
}

/// Frames FastCGI records out of a byte stream.
///
/// ```
/// use appserver_proto::fcgi::decode::RecordDecoder;
/// use appserver_proto::fcgi::RecordType;
/// use bytes::BytesMut;
///
/// let mut src = BytesMut::from(&[0x01, 0x05, 0x00, 0x01, 0x00, 0x02, 0x06][..]);
/// let mut dec = RecordDecoder::new();
/// assert_eq!(dec.decode(&mut src), Ok(None)); // header incomplete: nothing consumed
/// src.extend_from_slice(&[0x00, b'h', b'i', 0, 0, 0, 0, 0, 0]);
/// let rec = dec.decode(&mut src).unwrap().unwrap();
/// assert_eq!(rec.header.record_type, RecordType::Stdin);
/// assert_eq!(&rec.content[..], b"hi");
/// assert!(src.is_empty()); // content and padding consumed together
/// ```
#[derive(Debug, Default)]
pub struct RecordDecoder {
    _private: (),
}

impl RecordDecoder {
    /// A decoder at a record boundary.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes the next record, or returns `Ok(None)` (consuming nothing) while it is
    /// incomplete.
    ///
    /// The header is validated before anything is reserved: a version other than 1, a
    /// fixed-size body (`FCGI_BEGIN_REQUEST`, `FCGI_END_REQUEST`, `FCGI_UNKNOWN_TYPE`) whose
    /// contentLength is not 8, or `FCGI_BEGIN_REQUEST` with the null request id fail at once.
    /// At most 8 + 65 535 + 255 bytes are ever reserved.
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Record>, ProtocolError> {
        let Some(head) = src.first_chunk::<FCGI_HEADER_LEN>() else {
            return Ok(None);
        };
        let header = Header::parse(head)?;
        validate(&header)?;
        let total = header.record_len();
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        let content_len = header.content_length as usize;
        let content = if content_len == 0 {
            src.advance(total);
            Bytes::new()
        } else {
            let mut record = src.split_to(total);
            record.advance(FCGI_HEADER_LEN);
            record.truncate(content_len);
            record.freeze()
        };
        Ok(Some(Record { header, content }))
    }
}

/// Header checks that need no request state (style rule 10: reject before buffering).
fn validate(header: &Header) -> Result<(), ProtocolError> {
    let fixed = match header.record_type {
        RecordType::BeginRequest => Some("FCGI_BEGIN_REQUEST"),
        RecordType::EndRequest => Some("FCGI_END_REQUEST"),
        RecordType::UnknownType => Some("FCGI_UNKNOWN_TYPE"),
        _ => None,
    };
    if let Some(record) = fixed {
        if header.content_length as usize != FIXED_BODY_LEN {
            return Err(ProtocolError::BadBodyLength {
                record,
                len: header.content_length as usize,
                expected: FIXED_BODY_LEN,
            });
        }
    }
    if header.record_type == RecordType::BeginRequest && header.request_id == FCGI_NULL_REQUEST_ID {
        return Err(ProtocolError::NullRequestId {
            record: "FCGI_BEGIN_REQUEST",
        });
    }
    Ok(())
}

/// Collects one request's `FCGI_PARAMS` stream and parses its name-value pairs as they
/// complete.
///
/// The stream is copied into one buffer per request; pairs become [`Span`]s into that buffer,
/// so a request costs one buffer and one span vector, never an allocation per pair. Record
/// boundaries carry no meaning: a pair, or even one 4-byte length, may be split across
/// records. Limits are checked as early as the bytes allow:
///
/// - a record that would take the buffer past [`Limits::max_params_bytes`] is refused before
///   it is copied;
/// - each length is checked by [`check_pair`] as soon as it is complete, before the name or
///   value bytes arrive, so a value length of `FF FF FF FF` fails at once.
///
/// Duplicate names are kept; [`Params::get`] returns the last one.
#[derive(Debug)]
pub struct ParamsDecoder {
    buf: BytesMut,
    spans: Vec<Span>,
    /// Offset in `buf` of the first byte of the next unparsed pair.
    parsed: usize,
    limits: Limits,
}

/// Pairs in a typical request are longer than this, so sizing the span vector by it avoids
/// regrowing it while parsing one PARAMS record.
const MIN_PAIR_LEN_ESTIMATE: usize = 16;

impl ParamsDecoder {
    /// An empty stream bounded by `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            buf: BytesMut::new(),
            spans: Vec::new(),
            parsed: 0,
            limits,
        }
    }

    /// Appends the content of one non-empty `FCGI_PARAMS` record and parses every pair it
    /// completes.
    pub fn push(&mut self, content: &[u8]) -> Result<(), ProtocolError> {
        let max = self.limits.max_params_bytes();
        let len = self.buf.len().saturating_add(content.len());
        if len > max {
            return Err(ProtocolError::ParamsTooLarge { len, max });
        }
        if self.buf.capacity() == 0 {
            // The first record usually holds every pair (nginx, lighttpd, mod_fcgid): size
            // both buffers for it so the request allocates each exactly once.
            self.buf.reserve(content.len() + crate::params::SET_ROOM);
            let estimate =
                (content.len() / MIN_PAIR_LEN_ESTIMATE).clamp(1, self.limits.max_params_pairs());
            self.spans.reserve(estimate);
        }
        self.buf.extend_from_slice(content);
        self.parse()
    }

    /// Bytes of the stream received so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True when no PARAMS content has been received.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Ends the stream (the empty `FCGI_PARAMS` record), failing if it cuts a pair short.
    pub fn finish(self) -> Result<Params, ProtocolError> {
        if self.parsed != self.buf.len() {
            return Err(ProtocolError::MissingData("FCGI_PARAMS name-value pair"));
        }
        Ok(Params::from_parts(self.buf.freeze(), self.spans))
    }

    fn parse(&mut self) -> Result<(), ProtocolError> {
        loop {
            let rest = &self.buf[self.parsed..];
            if rest.is_empty() {
                return Ok(());
            }
            let PairLen::Complete {
                len: name_len,
                size: name_size,
            } = parse_pair_len(rest)
            else {
                return Ok(());
            };
            // Refuse an oversized name (or one pair too many) before waiting for more bytes.
            let count = self.spans.len();
            check_pair(name_len, 0, self.parsed + name_size, count, &self.limits)?;
            let PairLen::Complete {
                len: value_len,
                size: value_size,
            } = parse_pair_len(&rest[name_size..])
            else {
                return Ok(());
            };
            let name_start = self.parsed + name_size + value_size;
            // `used` counts the length prefixes too, so the check bounds the buffer itself.
            check_pair(name_len, value_len, name_start, count, &self.limits)?;
            // check_pair bounded both ends by max_params_bytes (<= 16 MiB): no overflow.
            let value_start = name_start + name_len;
            let end = value_start + value_len;
            if end > self.buf.len() {
                return Ok(());
            }
            self.spans
                .push(Span::new(name_start..value_start, value_start..end));
            self.parsed = end;
        }
    }
}

/// A record as the client decodes it.
#[derive(Debug, PartialEq, Eq)]
pub enum ResponseRecord {
    /// STDOUT bytes (empty = terminator).
    Stdout {
        /// Request id.
        id: u16,
        /// Bytes.
        data: Bytes,
    },
    /// STDERR bytes (empty = terminator).
    Stderr {
        /// Request id.
        id: u16,
        /// Bytes.
        data: Bytes,
    },
    /// END_REQUEST.
    EndRequest {
        /// Request id.
        id: u16,
        /// appStatus.
        app_status: u32,
        /// protocolStatus.
        protocol_status: ProtocolStatus,
    },
    /// GET_VALUES_RESULT.
    GetValuesResult(Params),
    /// UNKNOWN_TYPE.
    UnknownType(u8),
}

/// Client-side decoder: the records an application sends to a web server.
///
/// Used by `appserver probe` and by tests that play the web server. Any record type a web
/// server would send (`FCGI_BEGIN_REQUEST`, `FCGI_STDIN`, ...) is
/// [`ProtocolError::UnexpectedRecord`].
#[derive(Debug, Default)]
pub struct ClientDecoder {
    records: RecordDecoder,
}

impl ClientDecoder {
    /// Decodes one record.
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<ResponseRecord>, ProtocolError> {
        let Some(Record { header, content }) = self.records.decode(src)? else {
            return Ok(None);
        };
        let id = header.request_id;
        let record = match header.record_type {
            RecordType::Stdout => ResponseRecord::Stdout { id, data: content },
            RecordType::Stderr => ResponseRecord::Stderr { id, data: content },
            RecordType::EndRequest => {
                let end = EndRequest::load(&header, &content)?;
                ResponseRecord::EndRequest {
                    id,
                    app_status: end.app_status,
                    protocol_status: end.protocol_status,
                }
            }
            RecordType::GetValuesResult => {
                let mut pairs = ParamsDecoder::new(Limits::default());
                if !content.is_empty() {
                    pairs.push(&content)?;
                }
                ResponseRecord::GetValuesResult(pairs.finish()?)
            }
            RecordType::UnknownType => {
                ResponseRecord::UnknownType(UnknownType::load(&header, &content)?.record_type)
            }
            other => {
                return Err(ProtocolError::UnexpectedRecord {
                    expected: "a record an application sends",
                    got: other.to_string(),
                    request_id: id,
                })
            }
        };
        Ok(Some(record))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::encode;
    use super::super::record::{encode_pair, MAX_PAIR_FIELD_LEN};
    use super::*;
    use crate::limits::{MAX_PARAM_NAME_LEN, MAX_PARAM_VALUE_LEN, MIN_MAX_PARAMS_PAIRS};

    fn decode_all(src: &mut BytesMut) -> Vec<Record> {
        let mut dec = RecordDecoder::new();
        let mut out = Vec::new();
        while let Some(r) = dec.decode(src).unwrap() {
            out.push(r);
        }
        out
    }

    #[test]
    fn incomplete_records_consume_nothing_and_reserve_the_announced_length() {
        let mut dec = RecordDecoder::new();
        let mut src = BytesMut::from(&[0x01, 0x05, 0x00, 0x01, 0x10, 0x00, 0x00, 0x00, b'x'][..]);
        assert_eq!(dec.decode(&mut src), Ok(None));
        assert_eq!(src.len(), 9);
        assert!(src.capacity() >= 8 + 0x1000);
    }

    #[test]
    fn padding_with_junk_and_reserved_byte_are_skipped() {
        let mut src = BytesMut::new();
        src.extend_from_slice(&[0x01, 0x05, 0x00, 0x01, 0x00, 0x01, 0xff, 0xff, b'a']);
        src.extend_from_slice(&[0xaa; 255]);
        src.extend_from_slice(&[0x01, 0x05, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00]);
        let recs = decode_all(&mut src);
        assert_eq!(recs.len(), 2);
        assert_eq!(&recs[0].content[..], b"a");
        assert_eq!(recs[0].header.padding_length, 255);
        assert!(recs[1].content.is_empty());
        assert!(src.is_empty());
    }

    #[test]
    fn header_errors_come_before_content_arrives() {
        let mut dec = RecordDecoder::new();
        for v in [0u8, 2] {
            let mut src = BytesMut::from(&[v, 0x05, 0, 1, 0xff, 0xff, 0, 0][..]);
            assert_eq!(
                dec.decode(&mut src),
                Err(ProtocolError::UnsupportedVersion(v))
            );
            // Nothing was reserved for the claimed 64 KiB.
            assert!(src.capacity() < 0xffff);
        }
        for len in [7u8, 9] {
            let mut src = BytesMut::from(&[1, 1, 0, 1, 0, len, 0, 0][..]);
            assert_eq!(
                dec.decode(&mut src),
                Err(ProtocolError::BadBodyLength {
                    record: "FCGI_BEGIN_REQUEST",
                    len: len as usize,
                    expected: 8
                })
            );
        }
        let mut src = BytesMut::from(&[1, 1, 0, 0, 0, 8, 0, 0][..]);
        assert_eq!(
            dec.decode(&mut src),
            Err(ProtocolError::NullRequestId {
                record: "FCGI_BEGIN_REQUEST"
            })
        );
    }

    #[test]
    fn largest_record_decodes() {
        let mut src = BytesMut::new();
        encode::encode_stream(RecordType::Stdin, 1, &[7u8; 0xffff], &mut src);
        let recs = decode_all(&mut src);
        let total: usize = recs.iter().map(|r| r.content.len()).sum();
        assert_eq!(total, 0xffff);
        let mut raw = BytesMut::from(&[1, 5, 0, 1, 0xff, 0xff, 0, 0][..]);
        raw.extend_from_slice(&[7u8; 0xffff]);
        let recs = decode_all(&mut raw);
        assert_eq!(recs[0].content.len(), 0xffff);
    }

    fn pairs_bytes(pairs: &[(&[u8], &[u8])]) -> BytesMut {
        let mut b = BytesMut::new();
        for (n, v) in pairs {
            encode_pair(n, v, &mut b);
        }
        b
    }

    #[test]
    fn params_decoder_handles_length_forms_and_splits() {
        // value length 80 00 00 80 (128-byte value) and a small length in 4-byte form.
        let mut stream = BytesMut::new();
        stream.extend_from_slice(&[0x04, 0x80, 0x00, 0x00, 0x80]);
        stream.extend_from_slice(b"LONG");
        stream.extend_from_slice(&[b'v'; 128]);
        stream.extend_from_slice(&[0x80, 0x00, 0x00, 0x02, 0x02, b'A', b'B', b'c', b'd']);
        // Every split point, including inside both 4-byte lengths.
        for cut in 0..=stream.len() {
            let mut p = ParamsDecoder::new(Limits::default());
            if cut > 0 {
                p.push(&stream[..cut]).unwrap();
            }
            if cut < stream.len() {
                p.push(&stream[cut..]).unwrap();
            }
            let params = p.finish().unwrap();
            assert_eq!(params.get(b"LONG"), Some(&[b'v'; 128][..]), "cut {cut}");
            assert_eq!(params.get(b"AB"), Some(&b"cd"[..]));
            assert_eq!(params.len(), 2);
        }
    }

    #[test]
    fn params_truncated_at_terminator_is_an_error() {
        let stream = pairs_bytes(&[(b"A", b"xyz")]);
        for cut in 1..stream.len() {
            let mut p = ParamsDecoder::new(Limits::default());
            p.push(&stream[..cut]).unwrap();
            assert_eq!(
                p.finish(),
                Err(ProtocolError::MissingData("FCGI_PARAMS name-value pair"))
            );
        }
    }

    #[test]
    fn huge_value_length_is_rejected_before_its_bytes() {
        let mut p = ParamsDecoder::new(Limits::default());
        assert_eq!(
            p.push(&[0x01, 0xff, 0xff, 0xff, 0xff]),
            Err(ProtocolError::ParamValueTooLong {
                len: MAX_PAIR_FIELD_LEN,
                max: MAX_PARAM_VALUE_LEN
            })
        );
        let mut p = ParamsDecoder::new(Limits::default());
        // The name length alone is enough to refuse.
        assert_eq!(
            p.push(&[0xff, 0xff, 0xff, 0xff]),
            Err(ProtocolError::ParamNameTooLong {
                len: MAX_PAIR_FIELD_LEN,
                max: MAX_PARAM_NAME_LEN
            })
        );
    }

    #[test]
    fn name_and_value_length_at_and_over_limit() {
        let name = vec![b'N'; MAX_PARAM_NAME_LEN];
        let mut p = ParamsDecoder::new(Limits::default());
        p.push(&pairs_bytes(&[(&name, b"")])).unwrap();
        assert_eq!(p.finish().unwrap().len(), 1);
        let name = vec![b'N'; MAX_PARAM_NAME_LEN + 1];
        let mut p = ParamsDecoder::new(Limits::default());
        assert!(matches!(
            p.push(&pairs_bytes(&[(&name, b"")])),
            Err(ProtocolError::ParamNameTooLong { .. })
        ));
        let value = vec![b'v'; MAX_PARAM_VALUE_LEN];
        let mut p = ParamsDecoder::new(Limits::default());
        p.push(&pairs_bytes(&[(b"V", &value)])).unwrap();
        assert_eq!(
            p.finish().unwrap().get(b"V").map(<[u8]>::len),
            Some(value.len())
        );
        let value = vec![b'v'; MAX_PARAM_VALUE_LEN + 1];
        let mut p = ParamsDecoder::new(Limits::default());
        assert!(matches!(
            p.push(&pairs_bytes(&[(b"V", &value)])),
            Err(ProtocolError::ParamValueTooLong { .. })
        ));
    }

    /// A PARAMS stream of exactly `total` bytes.
    fn stream_of_len(total: usize) -> BytesMut {
        let mut b = BytesMut::new();
        while total - b.len() > 30_010 {
            encode_pair(b"P", &[b'x'; 30_000], &mut b);
        }
        let rest = total - b.len();
        if rest >= 134 {
            // 1-byte name length, 4-byte value length.
            encode_pair(b"Z", &vec![b'z'; rest - 6], &mut b);
        } else {
            let name_len = rest.saturating_sub(2 + 127).max(1);
            encode_pair(
                &vec![b'Z'; name_len],
                &vec![b'z'; rest - 2 - name_len],
                &mut b,
            );
        }
        assert_eq!(b.len(), total);
        b
    }

    #[test]
    fn params_bytes_at_and_over_limit() {
        let limits = Limits::default();
        let max = limits.max_params_bytes();
        let stream = stream_of_len(max);
        let mut p = ParamsDecoder::new(limits);
        for chunk in stream.chunks(0xffff) {
            p.push(chunk).unwrap();
        }
        let params = p.finish().unwrap();
        assert_eq!(
            params.get(b"Z").map(<[u8]>::len),
            Some(max - 2 * 30_006 - 6)
        );

        let stream = stream_of_len(max + 1);
        let mut p = ParamsDecoder::new(limits);
        // The last pair's announced lengths already exceed the cap, so the first record fails
        // before the second one arrives.
        assert_eq!(
            p.push(&stream[..0xffff]),
            Err(ProtocolError::ParamsTooLarge { len: max + 1, max })
        );
        // Without announced lengths (a bare byte count), the record that crosses the cap is
        // refused before it is copied.
        let mut p = ParamsDecoder::new(limits);
        p.push(&stream[..0x10]).unwrap();
        assert_eq!(
            p.push(&vec![0; max + 1 - 0x10]),
            Err(ProtocolError::ParamsTooLarge { len: max + 1, max })
        );
    }

    #[test]
    fn pair_count_at_and_over_limit() {
        let limits = Limits::default().with_max_params_pairs(MIN_MAX_PARAMS_PAIRS);
        let pair = pairs_bytes(&[(b"A", b"1")]);
        let mut p = ParamsDecoder::new(limits);
        for _ in 0..MIN_MAX_PARAMS_PAIRS {
            p.push(&pair).unwrap();
        }
        assert_eq!(p.finish().unwrap().len(), MIN_MAX_PARAMS_PAIRS);
        let mut p = ParamsDecoder::new(limits);
        for _ in 0..MIN_MAX_PARAMS_PAIRS {
            p.push(&pair).unwrap();
        }
        assert_eq!(
            p.push(&pair),
            Err(ProtocolError::TooManyParams {
                max: MIN_MAX_PARAMS_PAIRS
            })
        );
    }

    #[test]
    fn client_decoder_reads_app_records() {
        let mut src = BytesMut::new();
        encode::encode_stdout(1, b"Status: 200 OK\r\n\r\n", &mut src);
        encode::encode_stream_end(RecordType::Stdout, 1, &mut src);
        encode::encode_stderr(1, b"oops", &mut src);
        encode::encode_end_request(1, 7, ProtocolStatus::RequestComplete, &mut src);
        encode::encode_get_values_result(&[(b"FCGI_MPXS_CONNS", b"0")], &mut src);
        encode::encode_unknown_type(0x0c, &mut src);
        let mut dec = ClientDecoder::default();
        let mut got = Vec::new();
        while let Some(r) = dec.decode(&mut src).unwrap() {
            got.push(r);
        }
        assert_eq!(got.len(), 6);
        assert_eq!(
            got[0],
            ResponseRecord::Stdout {
                id: 1,
                data: Bytes::from_static(b"Status: 200 OK\r\n\r\n")
            }
        );
        assert_eq!(
            got[1],
            ResponseRecord::Stdout {
                id: 1,
                data: Bytes::new()
            }
        );
        assert_eq!(
            got[2],
            ResponseRecord::Stderr {
                id: 1,
                data: Bytes::from_static(b"oops")
            }
        );
        assert_eq!(
            got[3],
            ResponseRecord::EndRequest {
                id: 1,
                app_status: 7,
                protocol_status: ProtocolStatus::RequestComplete
            }
        );
        let ResponseRecord::GetValuesResult(values) = &got[4] else {
            panic!("{:?}", got[4]);
        };
        assert_eq!(values.get(b"FCGI_MPXS_CONNS"), Some(&b"0"[..]));
        assert_eq!(got[5], ResponseRecord::UnknownType(0x0c));
    }

    #[test]
    fn client_decoder_rejects_server_records() {
        let mut src = BytesMut::new();
        encode::encode_stdin(1, b"x", &mut src);
        assert_eq!(
            ClientDecoder::default().decode(&mut src),
            Err(ProtocolError::UnexpectedRecord {
                expected: "a record an application sends",
                got: "FCGI_STDIN".into(),
                request_id: 1
            })
        );
    }

    fn arb_pairs() -> impl Strategy<Value = Vec<(Vec<u8>, Vec<u8>)>> {
        prop::collection::vec(
            (
                prop::collection::vec(any::<u8>(), 0..200),
                prop::collection::vec(any::<u8>(), 0..300),
            ),
            0..20,
        )
    }

    fn arb_record() -> impl Strategy<Value = (u8, u16, Vec<u8>, u8)> {
        (
            any::<u8>(),
            any::<u16>(),
            prop::collection::vec(any::<u8>(), 0..600),
            any::<u8>(),
        )
            .prop_map(|(t, id, mut content, pad)| {
                // Fixed-size bodies must be 8 bytes and BEGIN must have an id.
                let rt = RecordType::from_u8(t);
                if matches!(
                    rt,
                    RecordType::BeginRequest | RecordType::EndRequest | RecordType::UnknownType
                ) {
                    content.resize(8, 0);
                }
                let id = if rt == RecordType::BeginRequest && id == 0 {
                    1
                } else {
                    id
                };
                (t, id, content, pad)
            })
    }

    proptest! {
        #[test]
        fn name_value_pairs_round_trip(pairs in arb_pairs(), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6)) {
            let refs: Vec<(&[u8], &[u8])> = pairs.iter().map(|(n, v)| (&n[..], &v[..])).collect();
            let stream = pairs_bytes(&refs);
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
            points.push(0);
            points.push(stream.len());
            points.sort_unstable();
            let mut p = ParamsDecoder::new(Limits::default());
            for w in points.windows(2) {
                if w[0] < w[1] {
                    p.push(&stream[w[0]..w[1]]).unwrap();
                }
            }
            let params = p.finish().unwrap();
            let got: Vec<(Vec<u8>, Vec<u8>)> = params.iter().map(|(n, v)| (n.to_vec(), v.to_vec())).collect();
            prop_assert_eq!(got, pairs);
        }

        #[test]
        fn records_round_trip((t, id, content, pad) in arb_record(), split in any::<prop::sample::Index>()) {
            let header = Header {
                record_type: RecordType::from_u8(t),
                request_id: id,
                content_length: content.len() as u16,
                padding_length: pad,
            };
            let mut wire = BytesMut::new();
            header.encode(&mut wire);
            wire.extend_from_slice(&content);
            wire.extend_from_slice(&vec![0xee; pad as usize]);
            let total = wire.len();
            // Fed in two arbitrary pieces, the record appears only once complete.
            let cut = split.index(total + 1);
            let mut src = BytesMut::from(&wire[..cut]);
            let mut dec = RecordDecoder::new();
            let first = dec.decode(&mut src).unwrap();
            if cut < total {
                prop_assert!(first.is_none());
                prop_assert_eq!(src.len(), cut);
                src.extend_from_slice(&wire[cut..]);
                let rec = dec.decode(&mut src).unwrap().unwrap();
                prop_assert_eq!(rec, Record { header, content: Bytes::from(content) });
            } else {
                prop_assert_eq!(first, Some(Record { header, content: Bytes::from(content) }));
            }
            prop_assert!(src.is_empty());
        }
    }
}
