//! FastCGI wire types: the 8-byte record [`Header`], the type and status enums, the fixed-size
//! bodies ([`BeginRequest`], [`EndRequest`], [`UnknownType`]) and the name-value pair length
//! forms (spec §3.3, §3.4, §5.1, §5.5, §4.2).
//!
//! Each message type has its parser and its encoder side by side (`load` / `encode`, style
//! rule 4). This module knows nothing of streams or request state: [`super::decode`] frames
//! records and [`super::conn`] decides what a record means.

use std::fmt;

use bytes::{BufMut, BytesMut};

use crate::limits::{FCGI_HEADER_LEN, FCGI_MAX_CONTENT_LEN};
use crate::reader::Reader;
use crate::ProtocolError;

use super::FCGI_VERSION_1;

/// `FCGI_KEEP_CONN`: bit 0 of the `FCGI_BEGIN_REQUEST` flags (spec §5.1).
pub const FCGI_KEEP_CONN: u8 = 0x01;

/// `FCGI_NULL_REQUEST_ID`: the request id of management records (spec §3.3).
pub const FCGI_NULL_REQUEST_ID: u16 = 0;

/// Length of the fixed bodies of `FCGI_BEGIN_REQUEST`, `FCGI_END_REQUEST` and
/// `FCGI_UNKNOWN_TYPE` (spec §5.1, §5.5, §4.2).
pub const FIXED_BODY_LEN: usize = 8;

/// Largest length a name-value pair length field can carry: 31 bits (spec §3.4).
pub const MAX_PAIR_FIELD_LEN: usize = 0x7fff_ffff;

/// A record header (`FCGI_Header`, spec §3.3).
///
/// ```text
/// byte:  0         1      2..3        4..5           6              7
///       +---------+------+-----------+---------------+--------------+----------+
///       | version | type | requestId | contentLength | paddingLength| reserved |
///       +---------+------+-----------+---------------+--------------+----------+
/// ```
///
/// The version is not stored: [`Header::parse`] accepts only `FCGI_VERSION_1` and
/// [`Header::encode`] always writes it. The reserved byte is ignored on receive and sent as 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The record type.
    pub record_type: RecordType,
    /// `requestId`; 0 is `FCGI_NULL_REQUEST_ID` (management records).
    pub request_id: u16,
    /// `contentLength`: content bytes following the header.
    pub content_length: u16,
    /// `paddingLength`: bytes after the content that the receiver skips.
    pub padding_length: u8,
}

impl Header {
    /// A header for `content_length` bytes of content, padded so the whole record is a multiple
    /// of 8 bytes (what the spec recommends and nginx and libfcgi do).
    pub fn new(record_type: RecordType, request_id: u16, content_length: u16) -> Self {
        Self {
            record_type,
            request_id,
            content_length,
            padding_length: padding_for(content_length as usize),
        }
    }

    /// Parses the 8 header bytes, rejecting any version other than `FCGI_VERSION_1`.
    ///
    /// Lengths need no check here: the 16-bit contentLength cannot exceed
    /// [`FCGI_MAX_CONTENT_LEN`], so a record never makes a decoder reserve more than
    /// 8 + 65 535 + 255 bytes.
    pub fn parse(bytes: &[u8; FCGI_HEADER_LEN]) -> Result<Self, ProtocolError> {
        if bytes[0] != FCGI_VERSION_1 {
            return Err(ProtocolError::UnsupportedVersion(bytes[0]));
        }
        Ok(Self {
            record_type: RecordType::from_u8(bytes[1]),
            request_id: u16::from_be_bytes([bytes[2], bytes[3]]),
            content_length: u16::from_be_bytes([bytes[4], bytes[5]]),
            padding_length: bytes[6],
        })
    }

    /// Appends the 8 header bytes to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.put_slice(&self.to_bytes());
    }

    /// The header's eight bytes on the wire.
    pub fn to_bytes(&self) -> [u8; FCGI_HEADER_LEN] {
        let id = self.request_id.to_be_bytes();
        let len = self.content_length.to_be_bytes();
        [
            FCGI_VERSION_1,
            self.record_type.to_u8(),
            id[0],
            id[1],
            len[0],
            len[1],
            self.padding_length,
            0,
        ]
    }

    /// Bytes of the whole record: header, content and padding.
    pub fn record_len(&self) -> usize {
        FCGI_HEADER_LEN + self.content_length as usize + self.padding_length as usize
    }
}

/// Padding that brings a record with `content_length` bytes of content to a multiple of 8.
pub fn padding_for(content_length: usize) -> u8 {
    // The result is in 0..8, so the cast cannot truncate.
    ((8 - content_length % 8) % 8) as u8
}

/// A record type: the `type` byte of the header (spec §8, `FCGI_BEGIN_REQUEST` ..
/// `FCGI_UNKNOWN_TYPE`).
///
/// Unknown is a value, not an error (style rule 5): a management record of an unknown type is
/// answered with `FCGI_UNKNOWN_TYPE`. [`RecordType::from_u8`] never produces `Unknown` for a
/// value 1..=11.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordType {
    /// `FCGI_BEGIN_REQUEST` (1).
    BeginRequest = 0x01,
    /// `FCGI_ABORT_REQUEST` (2).
    AbortRequest = 0x02,
    /// `FCGI_END_REQUEST` (3).
    EndRequest = 0x03,
    /// `FCGI_PARAMS` (4).
    Params = 0x04,
    /// `FCGI_STDIN` (5).
    Stdin = 0x05,
    /// `FCGI_STDOUT` (6).
    Stdout = 0x06,
    /// `FCGI_STDERR` (7).
    Stderr = 0x07,
    /// `FCGI_DATA` (8).
    Data = 0x08,
    /// `FCGI_GET_VALUES` (9).
    GetValues = 0x09,
    /// `FCGI_GET_VALUES_RESULT` (10).
    GetValuesResult = 0x0a,
    /// `FCGI_UNKNOWN_TYPE` (11).
    UnknownType = 0x0b,
    /// Any other type byte.
    Unknown(u8),
}

impl RecordType {
    /// The type for a header's `type` byte.
    pub fn from_u8(value: u8) -> Self {
        match value {
            0x01 => Self::BeginRequest,
            0x02 => Self::AbortRequest,
            0x03 => Self::EndRequest,
            0x04 => Self::Params,
            0x05 => Self::Stdin,
            0x06 => Self::Stdout,
            0x07 => Self::Stderr,
            0x08 => Self::Data,
            0x09 => Self::GetValues,
            0x0a => Self::GetValuesResult,
            0x0b => Self::UnknownType,
            other => Self::Unknown(other),
        }
    }

    /// The `type` byte of this record type.
    pub fn to_u8(self) -> u8 {
        match self {
            Self::BeginRequest => 0x01,
            Self::AbortRequest => 0x02,
            Self::EndRequest => 0x03,
            Self::Params => 0x04,
            Self::Stdin => 0x05,
            Self::Stdout => 0x06,
            Self::Stderr => 0x07,
            Self::Data => 0x08,
            Self::GetValues => 0x09,
            Self::GetValuesResult => 0x0a,
            Self::UnknownType => 0x0b,
            Self::Unknown(other) => other,
        }
    }

    /// The spec name (`FCGI_STDIN`), or `None` for an unknown type.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::BeginRequest => "FCGI_BEGIN_REQUEST",
            Self::AbortRequest => "FCGI_ABORT_REQUEST",
            Self::EndRequest => "FCGI_END_REQUEST",
            Self::Params => "FCGI_PARAMS",
            Self::Stdin => "FCGI_STDIN",
            Self::Stdout => "FCGI_STDOUT",
            Self::Stderr => "FCGI_STDERR",
            Self::Data => "FCGI_DATA",
            Self::GetValues => "FCGI_GET_VALUES",
            Self::GetValuesResult => "FCGI_GET_VALUES_RESULT",
            Self::UnknownType => "FCGI_UNKNOWN_TYPE",
            Self::Unknown(_) => return None,
        })
    }

    /// True for the types only an application sends (`FCGI_END_REQUEST`, `FCGI_STDOUT`,
    /// `FCGI_STDERR`, `FCGI_GET_VALUES_RESULT`, `FCGI_UNKNOWN_TYPE`).
    pub fn is_app_to_server(self) -> bool {
        matches!(
            self,
            Self::EndRequest
                | Self::Stdout
                | Self::Stderr
                | Self::GetValuesResult
                | Self::UnknownType
        )
    }
}

impl fmt::Display for RecordType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "record type {}", self.to_u8()),
        }
    }
}

/// The role of a request, from `FCGI_BEGIN_REQUEST` (spec §5.1, §6).
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `FCGI_RESPONDER` (1).
    Responder = 0x0001,
    /// `FCGI_AUTHORIZER` (2).
    Authorizer = 0x0002,
    /// `FCGI_FILTER` (3).
    Filter = 0x0003,
    /// Any other role value.
    Unknown(u16),
}

impl Role {
    /// The role for a `role` field.
    pub fn from_u16(value: u16) -> Self {
        match value {
            0x0001 => Self::Responder,
            0x0002 => Self::Authorizer,
            0x0003 => Self::Filter,
            other => Self::Unknown(other),
        }
    }

    /// The `role` field of this role.
    pub fn to_u16(self) -> u16 {
        match self {
            Self::Responder => 0x0001,
            Self::Authorizer => 0x0002,
            Self::Filter => 0x0003,
            Self::Unknown(other) => other,
        }
    }
}

/// `protocolStatus` of `FCGI_END_REQUEST` (spec §5.5).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolStatus {
    /// `FCGI_REQUEST_COMPLETE` (0).
    RequestComplete = 0x00,
    /// `FCGI_CANT_MPX_CONN` (1).
    CantMpxConn = 0x01,
    /// `FCGI_OVERLOADED` (2).
    Overloaded = 0x02,
    /// `FCGI_UNKNOWN_ROLE` (3).
    UnknownRole = 0x03,
    /// Any other value.
    Unknown(u8),
}

impl ProtocolStatus {
    /// The status for a `protocolStatus` byte.
    pub fn from_u8(value: u8) -> Self {
        match value {
            0x00 => Self::RequestComplete,
            0x01 => Self::CantMpxConn,
            0x02 => Self::Overloaded,
            0x03 => Self::UnknownRole,
            other => Self::Unknown(other),
        }
    }

    /// The `protocolStatus` byte of this status.
    pub fn to_u8(self) -> u8 {
        match self {
            Self::RequestComplete => 0x00,
            Self::CantMpxConn => 0x01,
            Self::Overloaded => 0x02,
            Self::UnknownRole => 0x03,
            Self::Unknown(other) => other,
        }
    }
}

/// The body of `FCGI_BEGIN_REQUEST` (`FCGI_BeginRequestBody`, spec §5.1).
///
/// ```text
/// +--------+--------+-------+---------------+
/// | roleB1 | roleB0 | flags | reserved[5]   |
/// +--------+--------+-------+---------------+
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BeginRequest {
    /// The role the web server asks the application to play.
    pub role: Role,
    /// The flags byte; only [`FCGI_KEEP_CONN`] is defined.
    pub flags: u8,
}

impl BeginRequest {
    /// Parses the body of a `FCGI_BEGIN_REQUEST` record.
    ///
    /// The spec fixes contentLength at 8 and forbids the null request id; either is a protocol
    /// error.
    pub fn load(header: &Header, payload: &[u8]) -> Result<Self, ProtocolError> {
        if payload.len() != FIXED_BODY_LEN {
            return Err(ProtocolError::BadBodyLength {
                record: "FCGI_BEGIN_REQUEST",
                len: payload.len(),
                expected: FIXED_BODY_LEN,
            });
        }
        if header.request_id == FCGI_NULL_REQUEST_ID {
            return Err(ProtocolError::NullRequestId {
                record: "FCGI_BEGIN_REQUEST",
            });
        }
        let mut r = Reader::new(payload);
        let role = Role::from_u16(r.u16("FCGI_BEGIN_REQUEST role")?);
        let flags = r.u8("FCGI_BEGIN_REQUEST flags")?;
        Ok(Self { role, flags })
    }

    /// True when `FCGI_KEEP_CONN` is set: the web server owns the connection's lifetime.
    pub fn keep_conn(&self) -> bool {
        self.flags & FCGI_KEEP_CONN != 0
    }

    /// Appends the whole record (header and body) for request `id` to `dst`.
    pub fn encode(&self, id: u16, dst: &mut BytesMut) {
        Header::new(RecordType::BeginRequest, id, FIXED_BODY_LEN as u16).encode(dst);
        let role = self.role.to_u16().to_be_bytes();
        dst.put_slice(&[role[0], role[1], self.flags, 0, 0, 0, 0, 0]);
    }
}

/// The body of `FCGI_END_REQUEST` (`FCGI_EndRequestBody`, spec §5.5).
///
/// ```text
/// +-------------+-------------+-------------+-------------+----------------+-------------+
/// | appStatusB3 | appStatusB2 | appStatusB1 | appStatusB0 | protocolStatus | reserved[3] |
/// +-------------+-------------+-------------+-------------+----------------+-------------+
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndRequest {
    /// `appStatus`: the CGI exit status.
    pub app_status: u32,
    /// `protocolStatus`.
    pub protocol_status: ProtocolStatus,
}

impl EndRequest {
    /// Parses the body of a `FCGI_END_REQUEST` record (client side).
    pub fn load(header: &Header, payload: &[u8]) -> Result<Self, ProtocolError> {
        let _ = header;
        if payload.len() != FIXED_BODY_LEN {
            return Err(ProtocolError::BadBodyLength {
                record: "FCGI_END_REQUEST",
                len: payload.len(),
                expected: FIXED_BODY_LEN,
            });
        }
        let mut r = Reader::new(payload);
        let app_status = r.u32("FCGI_END_REQUEST appStatus")?;
        let protocol_status = ProtocolStatus::from_u8(r.u8("FCGI_END_REQUEST protocolStatus")?);
        Ok(Self {
            app_status,
            protocol_status,
        })
    }

    /// Appends the whole record (header and body) for request `id` to `dst`.
    pub fn encode(&self, id: u16, dst: &mut BytesMut) {
        Header::new(RecordType::EndRequest, id, FIXED_BODY_LEN as u16).encode(dst);
        dst.put_u32(self.app_status);
        dst.put_slice(&[self.protocol_status.to_u8(), 0, 0, 0]);
    }
}

/// The body of `FCGI_UNKNOWN_TYPE` (`FCGI_UnknownTypeBody`, spec §4.2): the management record
/// type the application did not understand, then 7 reserved bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownType {
    /// The unrecognised `type` byte.
    pub record_type: u8,
}

impl UnknownType {
    /// Parses the body of a `FCGI_UNKNOWN_TYPE` record (client side).
    pub fn load(header: &Header, payload: &[u8]) -> Result<Self, ProtocolError> {
        let _ = header;
        if payload.len() != FIXED_BODY_LEN {
            return Err(ProtocolError::BadBodyLength {
                record: "FCGI_UNKNOWN_TYPE",
                len: payload.len(),
                expected: FIXED_BODY_LEN,
            });
        }
        Ok(Self {
            record_type: payload[0],
        })
    }

    /// Appends the whole management record to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        Header::new(
            RecordType::UnknownType,
            FCGI_NULL_REQUEST_ID,
            FIXED_BODY_LEN as u16,
        )
        .encode(dst);
        dst.put_slice(&[self.record_type, 0, 0, 0, 0, 0, 0, 0]);
    }
}

/// Bytes a name-value pair length field takes: 1 for 0..=127, else 4 (spec §3.4).
pub fn pair_len_size(len: usize) -> usize {
    if len <= 0x7f {
        1
    } else {
        4
    }
}

/// Appends one length field: one byte iff `len <= 127`, else four bytes with the high bit set.
///
/// # Panics
/// When `len` exceeds [`MAX_PAIR_FIELD_LEN`] (31 bits). Callers encode lengths of buffers they
/// own, bounded far below that by the params limits.
pub fn encode_pair_len(len: usize, dst: &mut BytesMut) {
    assert!(
        len <= MAX_PAIR_FIELD_LEN,
        "name-value length {len} exceeds 31 bits"
    );
    if len <= 0x7f {
        // len <= 127, so the cast cannot truncate.
        dst.put_u8(len as u8);
    } else {
        // len <= 0x7fff_ffff, so the cast cannot truncate.
        dst.put_u32(len as u32 | 0x8000_0000);
    }
}

/// Bytes one encoded pair takes.
pub fn pair_encoded_len(name: &[u8], value: &[u8]) -> usize {
    pair_len_size(name.len()) + pair_len_size(value.len()) + name.len() + value.len()
}

/// Appends one name-value pair (`FCGI_NameValuePair11` .. `44`, spec §3.4).
///
/// ```text
/// nameLength (1 or 4 bytes) | valueLength (1 or 4 bytes) | name bytes | value bytes
/// ```
pub fn encode_pair(name: &[u8], value: &[u8], dst: &mut BytesMut) {
    encode_pair_len(name.len(), dst);
    encode_pair_len(value.len(), dst);
    dst.put_slice(name);
    dst.put_slice(value);
}

/// Result of reading one length field from the front of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PairLen {
    /// The length and how many bytes its field took.
    Complete {
        /// The decoded length (31 bits at most).
        len: usize,
        /// 1 or 4.
        size: usize,
    },
    /// The buffer ends inside the field (a 4-byte form split across records).
    Partial,
}

/// Reads one length field from the start of `buf` without consuming it.
///
/// Decoders accept the 4-byte form for any value, as the spec requires.
pub fn parse_pair_len(buf: &[u8]) -> PairLen {
    match buf {
        [] => PairLen::Partial,
        [b0, ..] if b0 & 0x80 == 0 => PairLen::Complete {
            len: *b0 as usize,
            size: 1,
        },
        [b0, b1, b2, b3, ..] => PairLen::Complete {
            len: u32::from_be_bytes([b0 & 0x7f, *b1, *b2, *b3]) as usize,
            size: 4,
        },
        _ => PairLen::Partial,
    }
}

/// Iterates the complete name-value pairs of one record body (`FCGI_GET_VALUES`,
/// `FCGI_GET_VALUES_RESULT`), failing on a truncated pair.
///
/// Management records carry their pairs in one record, so unlike PARAMS they need no
/// streaming parser. Every length is bounded by the record through [`Reader::sub`]; nothing is
/// allocated.
#[derive(Clone, Debug)]
pub struct Pairs<'a> {
    reader: Reader<'a>,
}

impl<'a> Pairs<'a> {
    /// Pairs of `content`.
    pub fn new(content: &'a [u8]) -> Self {
        Self {
            reader: Reader::new(content),
        }
    }

    fn read_len(&mut self) -> Result<usize, ProtocolError> {
        match parse_pair_len(self.reader.rest()) {
            PairLen::Complete { len, size } => {
                self.reader.take(size, "name-value length")?;
                Ok(len)
            }
            PairLen::Partial => Err(ProtocolError::MissingData("name-value length")),
        }
    }

    fn read_pair(&mut self) -> Result<(&'a [u8], &'a [u8]), ProtocolError> {
        let name_len = self.read_len()?;
        let value_len = self.read_len()?;
        let name = self.reader.take(name_len, "name-value name")?;
        let value = self.reader.take(value_len, "name-value value")?;
        Ok((name, value))
    }
}

impl<'a> Iterator for Pairs<'a> {
    type Item = Result<(&'a [u8], &'a [u8]), ProtocolError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.reader.is_empty() {
            return None;
        }
        let item = self.read_pair();
        if item.is_err() {
            // Stop after the first error: the rest of the body has no framing.
            self.reader = Reader::new(&[]);
        }
        Some(item)
    }
}

// FCGI_MAX_CONTENT_LEN is u16::MAX; the `as u16` casts of content lengths in the encoders rely
// on it.
const _: () = assert!(FCGI_MAX_CONTENT_LEN == u16::MAX as usize);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_parse_and_encode_are_inverse() {
        let bytes = [0x01, 0x05, 0x00, 0x01, 0x01, 0x02, 0x06, 0xff];
        let h = Header::parse(&bytes).unwrap();
        assert_eq!(
            h,
            Header {
                record_type: RecordType::Stdin,
                request_id: 1,
                content_length: 0x0102,
                padding_length: 6,
            }
        );
        assert_eq!(h.record_len(), 8 + 0x0102 + 6);
        let mut out = BytesMut::new();
        h.encode(&mut out);
        // The reserved byte is sent as 0.
        assert_eq!(&out[..], &[0x01, 0x05, 0x00, 0x01, 0x01, 0x02, 0x06, 0x00]);
    }

    #[test]
    fn header_rejects_versions_other_than_1() {
        for v in [0u8, 2, 0xff] {
            assert_eq!(
                Header::parse(&[v, 1, 0, 1, 0, 8, 0, 0]),
                Err(ProtocolError::UnsupportedVersion(v))
            );
        }
    }

    #[test]
    fn padding_rounds_records_to_multiples_of_8() {
        assert_eq!(padding_for(0), 0);
        assert_eq!(padding_for(1), 7);
        assert_eq!(padding_for(8), 0);
        assert_eq!(padding_for(0x0f), 1);
        assert_eq!(padding_for(0xffff), 1);
        assert_eq!(Header::new(RecordType::Stdout, 1, 13).padding_length, 3);
    }

    #[test]
    fn record_type_bytes_round_trip_and_unknown_is_a_value() {
        for b in 0..=u8::MAX {
            let t = RecordType::from_u8(b);
            assert_eq!(t.to_u8(), b);
            assert_eq!(matches!(t, RecordType::Unknown(_)), !(1..=11).contains(&b));
        }
        assert_eq!(RecordType::Stdin.to_string(), "FCGI_STDIN");
        assert_eq!(RecordType::Unknown(12).to_string(), "record type 12");
        let app: Vec<u8> = (0..=u8::MAX)
            .filter(|b| RecordType::from_u8(*b).is_app_to_server())
            .collect();
        assert_eq!(app, [3, 6, 7, 10, 11]);
    }

    #[test]
    fn role_and_status_round_trip() {
        for v in 0..=10u16 {
            assert_eq!(Role::from_u16(v).to_u16(), v);
        }
        assert_eq!(Role::from_u16(7), Role::Unknown(7));
        for v in 0..=u8::MAX {
            assert_eq!(ProtocolStatus::from_u8(v).to_u8(), v);
        }
        assert_eq!(ProtocolStatus::from_u8(3), ProtocolStatus::UnknownRole);
    }

    #[test]
    fn begin_request_load_checks_length_and_id() {
        let h = Header::new(RecordType::BeginRequest, 1, 8);
        let b = BeginRequest::load(&h, &[0x00, 0x02, 0x01, 9, 9, 9, 9, 9]).unwrap();
        assert_eq!(b.role, Role::Authorizer);
        assert!(b.keep_conn());
        for len in [7usize, 9] {
            assert_eq!(
                BeginRequest::load(&h, &vec![0; len]),
                Err(ProtocolError::BadBodyLength {
                    record: "FCGI_BEGIN_REQUEST",
                    len,
                    expected: 8
                })
            );
        }
        let h0 = Header::new(RecordType::BeginRequest, 0, 8);
        assert_eq!(
            BeginRequest::load(&h0, &[0, 1, 0, 0, 0, 0, 0, 0]),
            Err(ProtocolError::NullRequestId {
                record: "FCGI_BEGIN_REQUEST"
            })
        );
    }

    #[test]
    fn begin_request_encode_is_the_spec_bytes() {
        let mut out = BytesMut::new();
        BeginRequest {
            role: Role::Responder,
            flags: FCGI_KEEP_CONN,
        }
        .encode(1, &mut out);
        assert_eq!(
            &out[..],
            &[1, 1, 0, 1, 0, 8, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0][..]
        );
    }

    #[test]
    fn end_request_encode_and_load() {
        let mut out = BytesMut::new();
        let e = EndRequest {
            app_status: 0x0102_0304,
            protocol_status: ProtocolStatus::Overloaded,
        };
        e.encode(1, &mut out);
        assert_eq!(
            &out[..],
            &[1, 3, 0, 1, 0, 8, 0, 0, 1, 2, 3, 4, 2, 0, 0, 0][..]
        );
        let h = Header::parse(out[..8].try_into().unwrap()).unwrap();
        assert_eq!(EndRequest::load(&h, &out[8..]), Ok(e));
        assert!(matches!(
            EndRequest::load(&h, &out[8..15]),
            Err(ProtocolError::BadBodyLength { len: 7, .. })
        ));
    }

    #[test]
    fn unknown_type_encode_is_the_spec_bytes() {
        let mut out = BytesMut::new();
        UnknownType { record_type: 0x0c }.encode(&mut out);
        assert_eq!(
            &out[..],
            &[1, 0x0b, 0, 0, 0, 8, 0, 0, 0x0c, 0, 0, 0, 0, 0, 0, 0][..]
        );
        let h = Header::parse(out[..8].try_into().unwrap()).unwrap();
        assert_eq!(
            UnknownType::load(&h, &out[8..]),
            Ok(UnknownType { record_type: 0x0c })
        );
    }

    #[test]
    fn pair_length_forms() {
        let mut out = BytesMut::new();
        encode_pair_len(127, &mut out);
        encode_pair_len(128, &mut out);
        encode_pair_len(MAX_PAIR_FIELD_LEN, &mut out);
        assert_eq!(
            &out[..],
            &[0x7f, 0x80, 0, 0, 0x80, 0xff, 0xff, 0xff, 0xff][..]
        );
        assert_eq!(
            parse_pair_len(&[0x7f]),
            PairLen::Complete { len: 127, size: 1 }
        );
        // The 4-byte form is accepted for small values.
        assert_eq!(
            parse_pair_len(&[0x80, 0, 0, 2, 9]),
            PairLen::Complete { len: 2, size: 4 }
        );
        assert_eq!(
            parse_pair_len(&[0xff, 0xff, 0xff, 0xff]),
            PairLen::Complete {
                len: MAX_PAIR_FIELD_LEN,
                size: 4
            }
        );
        assert_eq!(parse_pair_len(&[]), PairLen::Partial);
        assert_eq!(parse_pair_len(&[0x80, 0, 0]), PairLen::Partial);
        assert_eq!(pair_len_size(127), 1);
        assert_eq!(pair_len_size(128), 4);
    }

    #[test]
    #[should_panic(expected = "exceeds 31 bits")]
    fn pair_length_over_31_bits_is_a_caller_bug() {
        encode_pair_len(MAX_PAIR_FIELD_LEN + 1, &mut BytesMut::new());
    }

    #[test]
    fn pairs_iterates_and_reports_truncation() {
        let mut out = BytesMut::new();
        encode_pair(b"FCGI_MAX_CONNS", b"", &mut out);
        encode_pair(b"A", &[b'x'; 200], &mut out);
        assert_eq!(
            out.len(),
            pair_encoded_len(b"FCGI_MAX_CONNS", b"") + 2 + 4 + 200
        );
        let pairs: Vec<_> = Pairs::new(&out).collect::<Result<_, _>>().unwrap();
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs[0], (&b"FCGI_MAX_CONNS"[..], &b""[..]));
        assert_eq!(pairs[1].1.len(), 200);

        let mut it = Pairs::new(&out[..out.len() - 1]);
        assert!(it.next().unwrap().is_ok());
        assert_eq!(
            it.next(),
            Some(Err(ProtocolError::MissingData("name-value value")))
        );
        assert_eq!(it.next(), None);
        // A huge announced length fails without allocating.
        assert_eq!(
            Pairs::new(&[0x01, 0xff, 0xff, 0xff, 0xff, b'A']).next(),
            Some(Err(ProtocolError::MissingData("name-value value")))
        );
        assert_eq!(
            Pairs::new(&[0x80, 0x00]).next(),
            Some(Err(ProtocolError::MissingData("name-value length")))
        );
    }
}
