//! AJP13 wire types: the packet header, message codes, strings, and the two structured
//! messages, [`ForwardRequest`] (web server → container) and [`SendHeaders`] (container → web
//! server), each with its parser and encoder side by side (`load` / `encode`, style rule 4).
//!
//! Spec references are to "The Apache Tomcat Connectors - AJP Protocol Reference" (AJPv13,
//! `ajpv13a.html`): "Packet Format", "Request Packet Structure", "Response Packet Structure".
//! This module knows nothing of connection state: [`super::decode`] frames packets and
//! [`super::conn`] decides what a packet means.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use crate::limits::{AJP_HEADER_LEN, AJP_MAX_HEADERS, AJP_MAX_PACKET_SIZE};
use crate::params::check_pair;
use crate::reader::Reader;
use crate::scgi::decode::parse_content_length;
use crate::{Limits, ProtocolError};

/// Magic of packets from the web server to the container: `0x12 0x34`.
pub const SERVER_MAGIC: [u8; 2] = [0x12, 0x34];

/// Magic of packets from the container to the web server: `'A' 'B'` (`0x41 0x42`).
pub const CONTAINER_MAGIC: [u8; 2] = [0x41, 0x42];

/// String length that marks a null string: `0xFFFF`, with no bytes and no terminator after it.
pub const NULL_STRING: u16 = 0xffff;

/// Method byte of a "stored method": the real name is in attribute `0x0D`.
pub const STORED_METHOD: u8 = 0xff;

/// The high byte that marks a coded header name (`0xA0xx`).
const HEADER_CODE_PREFIX: u8 = 0xa0;

/// The error of an encoder whose message does not fit one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("ajp message of {len} payload bytes does not fit one packet (at most {max})")]
pub struct PacketOverflow {
    /// The payload length the message needs.
    pub len: usize,
    /// The largest payload the packet size allows.
    pub max: usize,
}

/// A packet header (spec "Packet Format").
///
/// ```text
/// byte:  0      1      2..3
///       +------+------+----------------+---------------------+
///       | magic       | payload length | payload ...         |
///       +------+------+----------------+---------------------+
///        12 34 (web server → container)  first payload byte = message code,
///        41 42 (container → web server)  except request body packets
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketHeader {
    /// The two magic bytes as received.
    pub magic: [u8; 2],
    /// Payload bytes following the header.
    pub len: u16,
}

impl PacketHeader {
    /// Reads the 4 header bytes. Never fails: the decoder checks the magic against the
    /// direction it expects.
    pub fn parse(bytes: &[u8; AJP_HEADER_LEN]) -> Self {
        Self {
            magic: [bytes[0], bytes[1]],
            len: u16::from_be_bytes([bytes[2], bytes[3]]),
        }
    }

    /// Appends the 4 header bytes.
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.put_slice(&self.magic);
        dst.put_u16(self.len);
    }
}

/// A message code: the first payload byte (spec "Packet Format", table of prefix codes).
///
/// Unknown is a value, not an error (style rule 5); what an unknown code means is decided by
/// the connection.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// `JK_AJP13_FORWARD_REQUEST` (2), web server → container.
    ForwardRequest = 0x02,
    /// `JK_AJP13_SEND_BODY_CHUNK` (3), container → web server.
    SendBodyChunk = 0x03,
    /// `JK_AJP13_SEND_HEADERS` (4), container → web server.
    SendHeaders = 0x04,
    /// `JK_AJP13_END_RESPONSE` (5), container → web server.
    EndResponse = 0x05,
    /// `JK_AJP13_GET_BODY_CHUNK` (6), container → web server.
    GetBodyChunk = 0x06,
    /// `JK_AJP13_SHUTDOWN` (7), web server → container; never obeyed from the network.
    Shutdown = 0x07,
    /// `JK_AJP13_PING` (8), web server → container; unused by every web server.
    Ping = 0x08,
    /// `JK_AJP13_CPONG_REPLY` (9), container → web server.
    CPong = 0x09,
    /// `JK_AJP13_CPING_REQUEST` (10), web server → container.
    CPing = 0x0a,
    /// Any other code.
    Unknown(u8),
}

impl Code {
    /// The code for a first payload byte.
    pub fn from_u8(value: u8) -> Self {
        match value {
            0x02 => Self::ForwardRequest,
            0x03 => Self::SendBodyChunk,
            0x04 => Self::SendHeaders,
            0x05 => Self::EndResponse,
            0x06 => Self::GetBodyChunk,
            0x07 => Self::Shutdown,
            0x08 => Self::Ping,
            0x09 => Self::CPong,
            0x0a => Self::CPing,
            other => Self::Unknown(other),
        }
    }

    /// The byte of this code.
    pub fn to_u8(self) -> u8 {
        match self {
            Self::ForwardRequest => 0x02,
            Self::SendBodyChunk => 0x03,
            Self::SendHeaders => 0x04,
            Self::EndResponse => 0x05,
            Self::GetBodyChunk => 0x06,
            Self::Shutdown => 0x07,
            Self::Ping => 0x08,
            Self::CPong => 0x09,
            Self::CPing => 0x0a,
            Self::Unknown(other) => other,
        }
    }

    /// The spec name (`FORWARD_REQUEST`), or `"an unknown code"`.
    pub fn name(self) -> &'static str {
        match self {
            Self::ForwardRequest => "FORWARD_REQUEST",
            Self::SendBodyChunk => "SEND_BODY_CHUNK",
            Self::SendHeaders => "SEND_HEADERS",
            Self::EndResponse => "END_RESPONSE",
            Self::GetBodyChunk => "GET_BODY_CHUNK",
            Self::Shutdown => "SHUTDOWN",
            Self::Ping => "PING",
            Self::CPong => "CPONG",
            Self::CPing => "CPING",
            Self::Unknown(_) => "an unknown code",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unknown(c) => write!(f, "code {c:#04x}"),
            known => f.write_str(known.name()),
        }
    }
}

/// An attribute code of `FORWARD_REQUEST` (spec "Request Packet Structure", attributes table).
///
/// There is no `Unknown`: an attribute's length depends on its code, so an unknown one cannot
/// be skipped and the packet is refused ([`ProtocolError::UnknownAttribute`]).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttributeCode {
    /// `?context` (0x01), obsolete; read and ignored.
    Context = 0x01,
    /// `?servlet_path` (0x02), obsolete; read and ignored.
    ServletPath = 0x02,
    /// `?remote_user` (0x03).
    RemoteUser = 0x03,
    /// `?auth_type` (0x04).
    AuthType = 0x04,
    /// `?query_string` (0x05), without the `?`.
    QueryString = 0x05,
    /// `?route` (0x06), the load balancer's jvmRoute.
    Route = 0x06,
    /// `?ssl_cert` (0x07), PEM.
    SslCert = 0x07,
    /// `?ssl_cipher` (0x08).
    SslCipher = 0x08,
    /// `?ssl_session` (0x09).
    SslSession = 0x09,
    /// `?req_attribute` (0x0A): a name string and a value string.
    ReqAttribute = 0x0a,
    /// `?ssl_key_size` (0x0B): an integer, not a string.
    SslKeySize = 0x0b,
    /// `?secret` (0x0C), Apache's `secret=`.
    Secret = 0x0c,
    /// `?stored_method` (0x0D), the method name when the method byte is 0xFF.
    StoredMethod = 0x0d,
    /// `request_terminator` (0xFF): no more attributes.
    AreDone = 0xff,
}

impl AttributeCode {
    /// The attribute for a code byte, if the protocol defines it.
    pub fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            0x01 => Self::Context,
            0x02 => Self::ServletPath,
            0x03 => Self::RemoteUser,
            0x04 => Self::AuthType,
            0x05 => Self::QueryString,
            0x06 => Self::Route,
            0x07 => Self::SslCert,
            0x08 => Self::SslCipher,
            0x09 => Self::SslSession,
            0x0a => Self::ReqAttribute,
            0x0b => Self::SslKeySize,
            0x0c => Self::Secret,
            0x0d => Self::StoredMethod,
            0xff => Self::AreDone,
            _ => return None,
        })
    }
}

/// Method names by code, 1 (`OPTIONS`) ..= 27 (`MKACTIVITY`) (spec "Request Packet
/// Structure", method table).
const METHODS: [&str; 27] = [
    "OPTIONS",
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "DELETE",
    "TRACE",
    "PROPFIND",
    "PROPPATCH",
    "MKCOL",
    "COPY",
    "MOVE",
    "LOCK",
    "UNLOCK",
    "ACL",
    "REPORT",
    "VERSION-CONTROL",
    "CHECKIN",
    "CHECKOUT",
    "UNCHECKOUT",
    "SEARCH",
    "MKWORKSPACE",
    "UPDATE",
    "LABEL",
    "MERGE",
    "BASELINE-CONTROL",
    "MKACTIVITY",
];

/// The name of method code `code`, for 1..=27.
pub fn method_name(code: u8) -> Option<&'static str> {
    METHODS.get(usize::from(code).checked_sub(1)?).copied()
}

/// The code of method `name` (exact, case-sensitive: HTTP methods are), if it has one.
pub fn method_code(name: &[u8]) -> Option<u8> {
    let i = METHODS.iter().position(|m| m.as_bytes() == name)?;
    // i < 27, so the cast cannot truncate.
    Some(i as u8 + 1)
}

/// Request header names by code, `0xA001` (`accept`) ..= `0xA00E` (`user-agent`), lowercase.
const REQUEST_HEADERS: [&str; 14] = [
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "authorization",
    "connection",
    "content-type",
    "content-length",
    "cookie",
    "cookie2",
    "host",
    "pragma",
    "referer",
    "user-agent",
];

/// Response header names by code, `0xA001` (`Content-Type`) ..= `0xA00B`
/// (`WWW-Authenticate`), lowercase.
const RESPONSE_HEADERS: [&str; 11] = [
    "content-type",
    "content-language",
    "content-length",
    "date",
    "last-modified",
    "location",
    "set-cookie",
    "set-cookie2",
    "servlet-engine",
    "status",
    "www-authenticate",
];

fn header_name(table: &'static [&'static str], code: u16) -> Option<&'static str> {
    let [prefix, index] = code.to_be_bytes();
    if prefix != HEADER_CODE_PREFIX {
        return None;
    }
    table.get(usize::from(index).checked_sub(1)?).copied()
}

fn header_code(table: &[&str], name: &[u8]) -> Option<u16> {
    let i = table
        .iter()
        .position(|n| n.as_bytes().eq_ignore_ascii_case(name))?;
    // i < 14, so the cast cannot truncate.
    Some(0xa001 + i as u16)
}

/// The lowercase name of request header code `code` (`0xA001..=0xA00E`).
pub fn request_header_name(code: u16) -> Option<&'static str> {
    header_name(&REQUEST_HEADERS, code)
}

/// The code of request header `name` (ASCII case-insensitive), if it has one.
pub fn request_header_code(name: &[u8]) -> Option<u16> {
    header_code(&REQUEST_HEADERS, name)
}

/// The lowercase name of response header code `code` (`0xA001..=0xA00B`).
pub fn response_header_name(code: u16) -> Option<&'static str> {
    header_name(&RESPONSE_HEADERS, code)
}

/// The code of response header `name` (ASCII case-insensitive), if it has one.
pub fn response_header_code(name: &[u8]) -> Option<u16> {
    header_code(&RESPONSE_HEADERS, name)
}

/// Reads an AJP string: a 2-byte length `n`, `n` bytes, one `0x00`. Length `0xFFFF` is the
/// null string (`None`) with nothing after it.
///
/// ```text
///   00 03 'a' 'b' 'c' 00      → Some("abc")
///   00 00 00                  → Some("")
///   FF FF                     → None
/// ```
///
/// A string running past the end of its packet is [`ProtocolError::MissingData`]; a byte other
/// than `0x00` after it is [`ProtocolError::UnterminatedString`].
pub fn read_string<'a>(
    r: &mut Reader<'a>,
    what: &'static str,
) -> Result<Option<&'a [u8]>, ProtocolError> {
    let len = r.u16(what)?;
    read_string_after_len(r, len, what)
}

/// Bytes [`put_string`] appends for `s`.
pub fn string_len(s: Option<&[u8]>) -> usize {
    s.map_or(2, |s| s.len() + 3)
}

/// Appends an AJP string (`None` = the null string).
///
/// # Panics
///
/// When `s` is 65 535 bytes or longer: such a string cannot be framed (its length would be the
/// null marker). Callers check the packet size first, which is smaller.
pub fn put_string(s: Option<&[u8]>, dst: &mut BytesMut) {
    match s {
        None => dst.put_u16(NULL_STRING),
        Some(s) => {
            let len = u16::try_from(s.len())
                .ok()
                .filter(|&l| l != NULL_STRING)
                .expect("AJP string longer than a packet");
            dst.put_u16(len);
            dst.put_slice(s);
            dst.put_u8(0);
        }
    }
}

/// A `FORWARD_REQUEST`: the request line, headers and attributes of one request (spec "Request
/// Packet Structure").
///
/// ```text
/// 02 method(byte) protocol(string) req_uri(string) remote_addr(string)
///    remote_host(string) server_name(string) server_port(integer) is_ssl(boolean)
///    num_headers(integer) { name(0xA0xx code | string) value(string) }*
///    { attribute code(byte) value }*  FF
/// ```
///
/// Null strings in the request line and in header values decode as empty (lighttpd sends
/// every empty string as null); only `remote_host` keeps the distinction, since Apache sends it
/// null when it did not resolve the client.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ForwardRequest {
    /// The method name: the name of the method code, or the stored method (code 0xFF +
    /// attribute 0x0D).
    pub method: Bytes,
    /// `protocol`, e.g. `HTTP/1.1`.
    pub protocol: Bytes,
    /// `req_uri`: the path only, still percent-encoded, without the query string.
    pub req_uri: Bytes,
    /// `remote_addr`: the client's address.
    pub remote_addr: Bytes,
    /// `remote_host`: the client's host name; Apache sends null.
    pub remote_host: Option<Bytes>,
    /// `server_name`.
    pub server_name: Bytes,
    /// `server_port`.
    pub server_port: u16,
    /// `is_ssl`.
    pub is_ssl: bool,
    /// Request headers in arrival order. Coded names are their lowercase canonical names
    /// (`0xA00B` → `host`); string names are as sent.
    pub headers: Vec<(Bytes, Bytes)>,
    /// The attributes.
    pub attributes: Attributes,
    /// The body length from the `Content-Length` header, unless the body is chunked. Derived
    /// by [`load`](Self::load); ignored by [`encode`](Self::encode), which sends `headers`.
    pub content_length: Option<u64>,
    /// True when a `Transfer-Encoding` header is present: the body length is unknown and the
    /// body ends with an end-of-body packet. It takes precedence over `Content-Length` (as in
    /// Apache 2.4.54+). Derived by [`load`](Self::load); ignored by [`encode`](Self::encode).
    pub chunked: bool,
}

/// The optional attributes of a [`ForwardRequest`]. `None` means absent; a null string value
/// decodes as empty.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attributes {
    /// `remote_user` (0x03).
    pub remote_user: Option<Bytes>,
    /// `auth_type` (0x04).
    pub auth_type: Option<Bytes>,
    /// `query_string` (0x05), without the `?`.
    pub query_string: Option<Bytes>,
    /// `route` (0x06).
    pub route: Option<Bytes>,
    /// `ssl_cert` (0x07).
    pub ssl_cert: Option<Bytes>,
    /// `ssl_cipher` (0x08).
    pub ssl_cipher: Option<Bytes>,
    /// `ssl_session` (0x09).
    pub ssl_session: Option<Bytes>,
    /// `ssl_key_size` (0x0B).
    pub ssl_key_size: Option<u16>,
    /// `secret` (0x0C). The server connection checks it and clears it before the request
    /// reaches the driver, so the secret never reaches an application.
    pub secret: Option<Bytes>,
    /// `req_attribute`s (0x0A) in arrival order: `AJP_REMOTE_PORT`, `AJP_LOCAL_ADDR`, ...
    pub req_attributes: Vec<(Bytes, Bytes)>,
}

impl ForwardRequest {
    /// The header named `name` (ASCII case-insensitive), first occurrence.
    pub fn header(&self, name: &[u8]) -> Option<&Bytes> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The `req_attribute` named `name` (exact), first occurrence.
    pub fn req_attribute(&self, name: &[u8]) -> Option<&Bytes> {
        self.attributes
            .req_attributes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    /// The client's port, from Apache's `AJP_REMOTE_PORT` req_attribute.
    pub fn remote_port(&self) -> Option<u16> {
        let value = self.req_attribute(b"AJP_REMOTE_PORT")?;
        std::str::from_utf8(value).ok()?.parse().ok()
    }

    /// Parses a `FORWARD_REQUEST` payload (code byte included). Strings and headers are
    /// zero-copy slices of `payload`.
    ///
    /// Besides the framing checks, it enforces: at most [`AJP_MAX_HEADERS`] headers (checked on
    /// `num_headers` before any header is read); each header and `req_attribute` obeys
    /// [`check_pair`] under `limits`; at most one `Content-Length` (coded or named), plain
    /// digits; single-valued attributes at most once; a consistent stored method; nothing
    /// after the `0xFF` terminator.
    pub fn load(payload: &Bytes, limits: &Limits) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(payload);
        let bytes = |s: &[u8]| payload.slice_ref(s);
        let string = |r: &mut Reader<'_>, what| -> Result<Bytes, ProtocolError> {
            Ok(read_string(r, what)?.map_or_else(Bytes::new, bytes))
        };

        let code = r.u8("FORWARD_REQUEST code")?;
        if code != Code::ForwardRequest.to_u8() {
            return Err(ProtocolError::UnexpectedPacket {
                expected: "FORWARD_REQUEST",
                got: Code::from_u8(code).name(),
            });
        }
        let method_code = r.u8("method")?;
        let coded_method = match method_code {
            STORED_METHOD => None,
            c => match method_name(c) {
                Some(name) => Some(Bytes::from_static(name.as_bytes())),
                None => return Err(ProtocolError::UnknownMethod(c)),
            },
        };
        let protocol = string(&mut r, "protocol")?;
        let req_uri = string(&mut r, "req_uri")?;
        let remote_addr = string(&mut r, "remote_addr")?;
        let remote_host = read_string(&mut r, "remote_host")?.map(bytes);
        let server_name = string(&mut r, "server_name")?;
        let server_port = r.u16("server_port")?;
        let is_ssl = r.u8("is_ssl")? != 0;

        let num_headers = usize::from(r.u16("num_headers")?);
        if num_headers > AJP_MAX_HEADERS {
            return Err(ProtocolError::TooManyHeaders {
                count: num_headers,
                max: AJP_MAX_HEADERS,
            });
        }
        let mut headers = Vec::with_capacity(num_headers);
        let mut used = 0;
        let mut content_length = None;
        let mut chunked = false;
        for _ in 0..num_headers {
            let name = match r.peek() {
                Some(HEADER_CODE_PREFIX) => {
                    let code = r.u16("request header name")?;
                    match request_header_name(code) {
                        Some(name) => Bytes::from_static(name.as_bytes()),
                        None => return Err(ProtocolError::UnknownHeaderCode(code)),
                    }
                }
                _ => match read_string(&mut r, "request header name")? {
                    Some(name) if !name.is_empty() => bytes(name),
                    _ => return Err(ProtocolError::EmptyName("AJP request header")),
                },
            };
            let value = string(&mut r, "request header value")?;
            check_pair(name.len(), value.len(), used, headers.len(), limits)?;
            used += name.len() + value.len();
            if name.eq_ignore_ascii_case(b"content-length") {
                if content_length.is_some() {
                    return Err(ProtocolError::DuplicateContentLength);
                }
                content_length = Some(parse_content_length(&value)?);
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                chunked = true;
            }
            headers.push((name, value));
        }

        let mut attributes = Attributes::default();
        let mut stored_method = None;
        loop {
            let code = r.u8("attribute list terminator")?;
            let Some(attribute) = AttributeCode::from_u8(code) else {
                return Err(ProtocolError::UnknownAttribute(code));
            };
            let slot = match attribute {
                AttributeCode::AreDone => break,
                AttributeCode::Context | AttributeCode::ServletPath => {
                    read_string(&mut r, "obsolete attribute")?;
                    continue;
                }
                AttributeCode::ReqAttribute => {
                    let name = match read_string(&mut r, "req_attribute name")? {
                        Some(name) if !name.is_empty() => bytes(name),
                        _ => return Err(ProtocolError::EmptyName("AJP req_attribute")),
                    };
                    let value = string(&mut r, "req_attribute value")?;
                    let count = headers.len() + attributes.req_attributes.len();
                    check_pair(name.len(), value.len(), used, count, limits)?;
                    used += name.len() + value.len();
                    attributes.req_attributes.push((name, value));
                    continue;
                }
                AttributeCode::SslKeySize => {
                    if attributes.ssl_key_size.is_some() {
                        return Err(ProtocolError::DuplicateAttribute(code));
                    }
                    attributes.ssl_key_size = Some(read_key_size(&mut r)?);
                    continue;
                }
                AttributeCode::RemoteUser => &mut attributes.remote_user,
                AttributeCode::AuthType => &mut attributes.auth_type,
                AttributeCode::QueryString => &mut attributes.query_string,
                AttributeCode::Route => &mut attributes.route,
                AttributeCode::SslCert => &mut attributes.ssl_cert,
                AttributeCode::SslCipher => &mut attributes.ssl_cipher,
                AttributeCode::SslSession => &mut attributes.ssl_session,
                AttributeCode::Secret => &mut attributes.secret,
                AttributeCode::StoredMethod => &mut stored_method,
            };
            if slot.is_some() {
                return Err(ProtocolError::DuplicateAttribute(code));
            }
            *slot = Some(string(&mut r, "attribute value")?);
        }
        r.expect_end("FORWARD_REQUEST")?;

        let method = match (coded_method, stored_method) {
            (Some(method), None) => method,
            (None, Some(method)) if !method.is_empty() => method,
            (None, Some(_)) => return Err(ProtocolError::BadStoredMethod("empty stored method")),
            (None, None) => {
                return Err(ProtocolError::BadStoredMethod(
                    "method 0xFF without attribute 0x0D",
                ))
            }
            (Some(_), Some(_)) => {
                return Err(ProtocolError::BadStoredMethod(
                    "attribute 0x0D with a coded method",
                ))
            }
        };
        Ok(Self {
            method,
            protocol,
            req_uri,
            remote_addr,
            remote_host,
            server_name,
            server_port,
            is_ssl,
            headers,
            attributes,
            content_length: if chunked { None } else { content_length },
            chunked,
        })
    }

    /// Appends this request as one packet of at most `packet_size` bytes, attributes in
    /// Apache's order (secret, remote_user, auth_type, query_string, route, ssl_cert,
    /// ssl_cipher, ssl_session, ssl_key_size, stored_method, req_attributes). A method without
    /// a code is sent as 0xFF + attribute 0x0D. `content_length` and `chunked` are not sent:
    /// `headers` carry them.
    ///
    /// On [`PacketOverflow`] nothing is appended.
    pub fn encode(&self, packet_size: usize, dst: &mut BytesMut) -> Result<(), PacketOverflow> {
        let max = max_payload(packet_size);
        let opt = |s: &Option<Bytes>| s.as_deref().map_or(0, |s| 1 + string_len(Some(s)));
        let method_code = method_code(&self.method);
        let a = &self.attributes;
        let mut len = 2
            + [
                &self.protocol,
                &self.req_uri,
                &self.remote_addr,
                &self.server_name,
            ]
            .iter()
            .map(|s| string_len(Some(s)))
            .sum::<usize>()
            + string_len(self.remote_host.as_deref())
            + 2
            + 1
            + 2;
        for (name, value) in &self.headers {
            len += header_name_len(request_header_code(name), name) + string_len(Some(value));
        }
        len += [
            &a.secret,
            &a.remote_user,
            &a.auth_type,
            &a.query_string,
            &a.route,
            &a.ssl_cert,
            &a.ssl_cipher,
            &a.ssl_session,
        ]
        .iter()
        .map(|s| opt(s))
        .sum::<usize>();
        len += a.ssl_key_size.map_or(0, |_| 3);
        if method_code.is_none() {
            len += 1 + string_len(Some(&self.method));
        }
        for (name, value) in &a.req_attributes {
            len += 1 + string_len(Some(name)) + string_len(Some(value));
        }
        len += 1;
        if len > max || self.headers.len() > usize::from(u16::MAX) {
            return Err(PacketOverflow { len, max });
        }

        dst.reserve(AJP_HEADER_LEN + len);
        // len <= max <= 65 532, so the cast cannot truncate.
        PacketHeader {
            magic: SERVER_MAGIC,
            len: len as u16,
        }
        .encode(dst);
        dst.put_u8(Code::ForwardRequest.to_u8());
        dst.put_u8(method_code.unwrap_or(STORED_METHOD));
        put_string(Some(&self.protocol), dst);
        put_string(Some(&self.req_uri), dst);
        put_string(Some(&self.remote_addr), dst);
        put_string(self.remote_host.as_deref(), dst);
        put_string(Some(&self.server_name), dst);
        dst.put_u16(self.server_port);
        dst.put_u8(u8::from(self.is_ssl));
        // Checked above: at most u16::MAX headers.
        dst.put_u16(self.headers.len() as u16);
        for (name, value) in &self.headers {
            put_header_name(request_header_code(name), name, dst);
            put_string(Some(value), dst);
        }
        let mut attr = |code: AttributeCode, s: &Option<Bytes>| {
            if let Some(s) = s {
                dst.put_u8(code as u8);
                put_string(Some(s), dst);
            }
        };
        attr(AttributeCode::Secret, &a.secret);
        attr(AttributeCode::RemoteUser, &a.remote_user);
        attr(AttributeCode::AuthType, &a.auth_type);
        attr(AttributeCode::QueryString, &a.query_string);
        attr(AttributeCode::Route, &a.route);
        attr(AttributeCode::SslCert, &a.ssl_cert);
        attr(AttributeCode::SslCipher, &a.ssl_cipher);
        attr(AttributeCode::SslSession, &a.ssl_session);
        if let Some(size) = a.ssl_key_size {
            dst.put_u8(AttributeCode::SslKeySize as u8);
            dst.put_u16(size);
        }
        if method_code.is_none() {
            dst.put_u8(AttributeCode::StoredMethod as u8);
            put_string(Some(&self.method), dst);
        }
        for (name, value) in &a.req_attributes {
            dst.put_u8(AttributeCode::ReqAttribute as u8);
            put_string(Some(name), dst);
            put_string(Some(value), dst);
        }
        dst.put_u8(AttributeCode::AreDone as u8);
        Ok(())
    }
}

/// Reads `ssl_key_size`: an integer per the spec (Apache, mod_jk). lighttpd's mod_ajp13 sends
/// it as a string of digits instead; that form is recognised without ambiguity, because in the
/// integer form the byte after the two integer bytes is an attribute code (0x01..=0x0D or
/// 0xFF), never an ASCII digit, while in the string form it is the first digit.
fn read_key_size(r: &mut Reader<'_>) -> Result<u16, ProtocolError> {
    const BAD: ProtocolError = ProtocolError::BadAttribute {
        code: AttributeCode::SslKeySize as u8,
        reason: "ssl_key_size string is not a number below 65536",
    };
    let value = r.u16("ssl_key_size")?;
    if !r.peek().is_some_and(|b| b.is_ascii_digit()) {
        return Ok(value);
    }
    let Some(digits) = read_string_after_len(r, value, "ssl_key_size")? else {
        return Err(BAD);
    };
    let n = parse_content_length(digits).map_err(|_| BAD)?;
    u16::try_from(n).map_err(|_| BAD)
}

/// The tail of [`read_string`] once its length `len` has been read.
fn read_string_after_len<'a>(
    r: &mut Reader<'a>,
    len: u16,
    what: &'static str,
) -> Result<Option<&'a [u8]>, ProtocolError> {
    if len == NULL_STRING {
        return Ok(None);
    }
    let s = r.take(usize::from(len), what)?;
    match r.u8(what)? {
        0 => Ok(Some(s)),
        _ => Err(ProtocolError::UnterminatedString(what)),
    }
}

/// The response head: `SEND_HEADERS` (spec "Response Packet Structure").
///
/// ```text
/// 04 http_status_code(integer) http_status_msg(string) num_headers(integer)
///    { name(0xA0xx code | string) value(string) }*
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SendHeaders {
    /// `http_status_code`.
    pub status: u16,
    /// `http_status_msg`.
    pub reason: Bytes,
    /// Response headers in order; coded names decode to lowercase canonical names
    /// (`0xA001` → `content-type`).
    pub headers: Vec<(Bytes, Bytes)>,
}

impl SendHeaders {
    /// Parses a `SEND_HEADERS` payload (code byte included), for the client side.
    pub fn load(payload: &Bytes) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(payload);
        let bytes = |s: &[u8]| payload.slice_ref(s);
        let code = r.u8("SEND_HEADERS code")?;
        if code != Code::SendHeaders.to_u8() {
            return Err(ProtocolError::UnexpectedPacket {
                expected: "SEND_HEADERS",
                got: Code::from_u8(code).name(),
            });
        }
        let status = r.u16("http_status_code")?;
        let reason = read_string(&mut r, "http_status_msg")?.map_or_else(Bytes::new, bytes);
        let count = usize::from(r.u16("num_headers")?);
        // Each header takes at least 5 bytes, so `count` is bounded by the packet.
        let mut headers = Vec::with_capacity(count.min(r.remaining() / 5));
        for _ in 0..count {
            let name = match r.peek() {
                Some(HEADER_CODE_PREFIX) => {
                    let code = r.u16("response header name")?;
                    match response_header_name(code) {
                        Some(name) => Bytes::from_static(name.as_bytes()),
                        None => return Err(ProtocolError::UnknownHeaderCode(code)),
                    }
                }
                _ => match read_string(&mut r, "response header name")? {
                    Some(name) if !name.is_empty() => bytes(name),
                    _ => return Err(ProtocolError::EmptyName("AJP response header")),
                },
            };
            let value =
                read_string(&mut r, "response header value")?.map_or_else(Bytes::new, bytes);
            headers.push((name, value));
        }
        r.expect_end("SEND_HEADERS")?;
        Ok(Self {
            status,
            reason,
            headers,
        })
    }

    /// Appends this head as one packet of at most `packet_size` bytes; see
    /// [`encode_send_headers`].
    pub fn encode(&self, packet_size: usize, dst: &mut BytesMut) -> Result<(), PacketOverflow> {
        let headers: Vec<(&[u8], &[u8])> =
            self.headers.iter().map(|(n, v)| (&n[..], &v[..])).collect();
        encode_send_headers(self.status, &self.reason, &headers, packet_size, dst)
    }
}

/// Appends a `SEND_HEADERS` packet of at most `packet_size` bytes.
///
/// - Names with a response code (`Content-Type`, `Location`, ... ASCII case-insensitive) are
///   sent as the code, others as strings.
/// - An empty `reason` is sent as the status number in text, as Tomcat does: old mod_jk
///   versions fail on a null or empty message.
/// - Control bytes other than tab (CR, LF, NUL, ...) in the reason, names and values are
///   replaced by spaces, as Tomcat does, so no header can split the web server's response.
///
/// On [`PacketOverflow`] (the head does not fit one packet, as the protocol requires) nothing
/// is appended.
pub fn encode_send_headers(
    status: u16,
    reason: &[u8],
    headers: &[(&[u8], &[u8])],
    packet_size: usize,
    dst: &mut BytesMut,
) -> Result<(), PacketOverflow> {
    let max = max_payload(packet_size);
    let status_text = status.to_string();
    let reason = if reason.is_empty() {
        status_text.as_bytes()
    } else {
        reason
    };
    let mut len = 1 + 2 + string_len(Some(reason)) + 2;
    for (name, value) in headers {
        len += header_name_len(response_header_code(name), name) + string_len(Some(value));
    }
    if len > max || headers.len() > usize::from(u16::MAX) {
        return Err(PacketOverflow { len, max });
    }
    dst.reserve(AJP_HEADER_LEN + len);
    // len <= max <= 65 532, so the cast cannot truncate.
    PacketHeader {
        magic: CONTAINER_MAGIC,
        len: len as u16,
    }
    .encode(dst);
    dst.put_u8(Code::SendHeaders.to_u8());
    dst.put_u16(status);
    put_sanitized(reason, dst);
    // Checked above: at most u16::MAX headers.
    dst.put_u16(headers.len() as u16);
    for (name, value) in headers {
        match response_header_code(name) {
            Some(code) => dst.put_u16(code),
            None => put_sanitized(name, dst),
        }
        put_sanitized(value, dst);
    }
    Ok(())
}

/// The largest payload a packet of `packet_size` bytes carries (header excluded), never more
/// than the 16-bit length field allows.
pub fn max_payload(packet_size: usize) -> usize {
    packet_size
        .min(AJP_MAX_PACKET_SIZE)
        .saturating_sub(AJP_HEADER_LEN)
}

fn header_name_len(code: Option<u16>, name: &[u8]) -> usize {
    code.map_or_else(|| string_len(Some(name)), |_| 2)
}

fn put_header_name(code: Option<u16>, name: &[u8], dst: &mut BytesMut) {
    match code {
        Some(code) => dst.put_u16(code),
        None => put_string(Some(name), dst),
    }
}

/// Appends `s` as a string with control bytes other than tab replaced by spaces.
fn put_sanitized(s: &[u8], dst: &mut BytesMut) {
    // Callers checked the packet size, so s.len() < 65 535.
    dst.put_u16(s.len() as u16);
    dst.extend(s.iter().map(|&b| {
        if (b < 0x20 && b != b'\t') || b == 0x7f {
            b' '
        } else {
            b
        }
    }));
    dst.put_u8(0);
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::limits::{AJP_DEFAULT_PACKET_SIZE, MAX_PARAM_VALUE_LEN, MIN_MAX_PARAMS_PAIRS};

    /// Digest §3.8 case 2: a minimal GET, payload 0x3F bytes.
    pub(crate) const MINIMAL_GET: &[u8] = b"\x12\x34\x00\x3f\x02\x02\x00\x08HTTP/1.1\x00\
\x00\x01/\x00\x00\x09127.0.0.1\x00\xff\xff\x00\x09localhost\x00\x00\x50\x00\x00\x01\
\xa0\x0b\x00\x09localhost\x00\xff";

    fn load(payload: &[u8]) -> Result<ForwardRequest, ProtocolError> {
        ForwardRequest::load(&Bytes::copy_from_slice(payload), &Limits::default())
    }

    /// A FORWARD_REQUEST payload up to and including `num_headers`.
    fn head(method: u8, num_headers: u16) -> Vec<u8> {
        let mut p = vec![0x02, method];
        for s in [&b"HTTP/1.1"[..], b"/", b"127.0.0.1"] {
            p.extend_from_slice(&(s.len() as u16).to_be_bytes());
            p.extend_from_slice(s);
            p.push(0);
        }
        p.extend_from_slice(b"\xff\xff"); // remote_host: null
        p.extend_from_slice(b"\x00\x09localhost\x00\x00\x50\x00");
        p.extend_from_slice(&num_headers.to_be_bytes());
        p
    }

    fn string(s: &[u8]) -> Vec<u8> {
        let mut v = (s.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(s);
        v.push(0);
        v
    }

    fn with(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    #[test]
    fn strings_null_empty_and_errors() {
        let read = |b: &[u8]| {
            let mut r = Reader::new(b);
            read_string(&mut r, "s").map(|s| (s.map(<[u8]>::to_vec), r.remaining()))
        };
        assert_eq!(read(b"\x00\x03abc\x00!"), Ok((Some(b"abc".to_vec()), 1)));
        assert_eq!(read(b"\x00\x00\x00"), Ok((Some(vec![]), 0)));
        assert_eq!(read(b"\xff\xff\x00"), Ok((None, 1)));
        // Length past the packet end.
        assert_eq!(read(b"\x00\x05ab"), Err(ProtocolError::MissingData("s")));
        // No 0x00 after the bytes.
        assert_eq!(
            read(b"\x00\x02abx"),
            Err(ProtocolError::UnterminatedString("s"))
        );
        assert_eq!(read(b"\x00\x02ab"), Err(ProtocolError::MissingData("s")));
        assert_eq!(read(b"\x00"), Err(ProtocolError::MissingData("s")));
    }

    #[test]
    fn case2_minimal_get_loads_and_reencodes_byte_for_byte() {
        let req = load(&MINIMAL_GET[4..]).unwrap();
        assert_eq!(req.method, "GET");
        assert_eq!(req.protocol, "HTTP/1.1");
        assert_eq!(req.req_uri, "/");
        assert_eq!(req.remote_addr, "127.0.0.1");
        assert_eq!(req.remote_host, None);
        assert_eq!(req.server_name, "localhost");
        assert_eq!(req.server_port, 80);
        assert!(!req.is_ssl);
        assert_eq!(
            req.headers,
            [(
                Bytes::from_static(b"host"),
                Bytes::from_static(b"localhost")
            )]
        );
        assert_eq!(req.attributes, Attributes::default());
        assert_eq!((req.content_length, req.chunked), (None, false));
        let mut dst = BytesMut::new();
        req.encode(AJP_DEFAULT_PACKET_SIZE, &mut dst).unwrap();
        assert_eq!(&dst[..], MINIMAL_GET);
    }

    #[test]
    fn case6_attributes() {
        let p = with(&[
            &head(0xff, 0),
            b"\x05",
            &string(b"a=1&b=2"),
            b"\x0b\x01\x00",
            b"\x0d",
            &string(b"PROPFX"),
            b"\x0a",
            &string(b"AJP_REMOTE_PORT"),
            &string(b"54321"),
            b"\x03",
            &string(b"alice"),
            b"\x04\xff\xff", // auth_type: null string
            b"\x01",
            &string(b"/obsolete"),
            b"\xff",
        ]);
        let req = load(&p).unwrap();
        assert_eq!(req.method, "PROPFX");
        let a = &req.attributes;
        assert_eq!(a.query_string.as_deref(), Some(&b"a=1&b=2"[..]));
        assert_eq!(a.ssl_key_size, Some(256));
        assert_eq!(a.remote_user.as_deref(), Some(&b"alice"[..]));
        assert_eq!(a.auth_type.as_deref(), Some(&b""[..]));
        assert_eq!(req.remote_port(), Some(54321));
        assert_eq!(req.req_attribute(b"AJP_REMOTE_PORT").unwrap(), "54321");
    }

    #[test]
    fn lighttpd_ssl_key_size_as_a_string() {
        let p = with(&[
            &head(2, 0),
            b"\x0b",
            &string(b"256"),
            b"\x05",
            &string(b"q"),
            b"\xff",
        ]);
        let req = load(&p).unwrap();
        assert_eq!(req.attributes.ssl_key_size, Some(256));
        assert_eq!(req.attributes.query_string.as_deref(), Some(&b"q"[..]));
        let bad = ProtocolError::BadAttribute {
            code: 0x0b,
            reason: "ssl_key_size string is not a number below 65536",
        };
        let p = with(&[&head(2, 0), b"\x0b", &string(b"65536"), b"\xff"]);
        assert_eq!(load(&p), Err(bad.clone()));
        let p = with(&[&head(2, 0), b"\x0b", &string(b"2x"), b"\xff"]);
        assert_eq!(load(&p), Err(bad));
    }

    #[test]
    fn case9_malformed_forward_requests() {
        let cases: Vec<(Vec<u8>, ProtocolError)> = vec![
            (
                with(&[&head(0, 0), b"\xff"]),
                ProtocolError::UnknownMethod(0),
            ),
            (
                with(&[&head(28, 0), b"\xff"]),
                ProtocolError::UnknownMethod(28),
            ),
            (
                with(&[&head(0xfe, 0), b"\xff"]),
                ProtocolError::UnknownMethod(0xfe),
            ),
            (
                with(&[&head(0xff, 0), b"\xff"]),
                ProtocolError::BadStoredMethod("method 0xFF without attribute 0x0D"),
            ),
            (
                with(&[&head(2, 0), b"\x0d", &string(b"GET"), b"\xff"]),
                ProtocolError::BadStoredMethod("attribute 0x0D with a coded method"),
            ),
            (
                with(&[&head(0xff, 0), b"\x0d", &string(b""), b"\xff"]),
                ProtocolError::BadStoredMethod("empty stored method"),
            ),
            (
                with(&[&head(2, 1), b"\xa0\x00", &string(b"x"), b"\xff"]),
                ProtocolError::UnknownHeaderCode(0xa000),
            ),
            (
                with(&[&head(2, 1), b"\xa0\x0f", &string(b"x"), b"\xff"]),
                ProtocolError::UnknownHeaderCode(0xa00f),
            ),
            (
                with(&[&head(2, 0), b"\x0e", &string(b"x"), b"\xff"]),
                ProtocolError::UnknownAttribute(0x0e),
            ),
            (
                with(&[&head(2, 0), b"\x05", &string(b"q")]),
                ProtocolError::MissingData("attribute list terminator"),
            ),
            (
                head(2, 0),
                ProtocolError::MissingData("attribute list terminator"),
            ),
            (
                with(&[&head(2, 2), b"\xa0\x0b", &string(b"h"), b"\xff"]),
                ProtocolError::MissingData("request header name"),
            ),
            (
                with(&[&head(2, 3), b"\xa0\x0b", &string(b"h")]),
                ProtocolError::MissingData("request header name"),
            ),
            (
                with(&[
                    &head(2, 2),
                    b"\xa0\x08",
                    &string(b"3"),
                    &string(b"Content-Length"),
                    &string(b"3"),
                    b"\xff",
                ]),
                ProtocolError::DuplicateContentLength,
            ),
            (
                with(&[&head(2, 1), b"\xa0\x08", &string(b"3x"), b"\xff"]),
                ProtocolError::InvalidContentLength("not ASCII digits"),
            ),
            (
                with(&[&head(2, 1), b"\xa0\x08", &string(b""), b"\xff"]),
                ProtocolError::InvalidContentLength("empty"),
            ),
            (
                with(&[&head(2, 0), b"\xff\x00"]),
                ProtocolError::TrailingData {
                    what: "FORWARD_REQUEST",
                    len: 1,
                },
            ),
            (
                with(&[&head(2, 1), &string(b""), &string(b"v"), b"\xff"]),
                ProtocolError::EmptyName("AJP request header"),
            ),
            (
                with(&[&head(2, 1), b"\xff\xff", &string(b"v"), b"\xff"]),
                ProtocolError::EmptyName("AJP request header"),
            ),
            (
                with(&[&head(2, 0), b"\x0a", &string(b""), &string(b"v"), b"\xff"]),
                ProtocolError::EmptyName("AJP req_attribute"),
            ),
            (
                with(&[
                    &head(2, 0),
                    b"\x05",
                    &string(b"a"),
                    b"\x05",
                    &string(b"b"),
                    b"\xff",
                ]),
                ProtocolError::DuplicateAttribute(0x05),
            ),
            (
                with(&[
                    &head(2, 0),
                    b"\x0c",
                    &string(b"a"),
                    b"\x0c",
                    &string(b"a"),
                    b"\xff",
                ]),
                ProtocolError::DuplicateAttribute(0x0c),
            ),
            (
                with(&[&head(2, 0), b"\x0b\x01\x00\x0b\x01\x00\xff"]),
                ProtocolError::DuplicateAttribute(0x0b),
            ),
            // String without its terminator: the byte after "HTTP/1.1" is not 0x00.
            (
                b"\x02\x02\x00\x08HTTP/1.1X".to_vec(),
                ProtocolError::UnterminatedString("protocol"),
            ),
            // String length past the packet end.
            (
                b"\x02\x02\x00\x30HTTP/1.1\x00".to_vec(),
                ProtocolError::MissingData("protocol"),
            ),
        ];
        for (payload, err) in cases {
            assert_eq!(load(&payload), Err(err), "{payload:02x?}");
        }
    }

    #[test]
    fn content_length_and_transfer_encoding() {
        let p = with(&[&head(4, 1), b"\xa0\x08", &string(b"27"), b"\xff"]);
        let req = load(&p).unwrap();
        assert_eq!((req.content_length, req.chunked), (Some(27), false));
        // Named header, any case.
        let p = with(&[
            &head(4, 1),
            &string(b"CONTENT-length"),
            &string(b"5"),
            b"\xff",
        ]);
        assert_eq!(load(&p).unwrap().content_length, Some(5));
        // Transfer-Encoding wins over Content-Length.
        let p = with(&[
            &head(4, 2),
            b"\xa0\x08",
            &string(b"27"),
            &string(b"Transfer-Encoding"),
            &string(b"chunked"),
            b"\xff",
        ]);
        let req = load(&p).unwrap();
        assert_eq!((req.content_length, req.chunked), (None, true));
    }

    #[test]
    fn header_count_at_and_over_the_limit() {
        let build = |n: u16| {
            let mut p = head(2, n);
            for i in 0..n {
                p.extend_from_slice(&string(format!("x-h{i}").as_bytes()));
                p.extend_from_slice(&string(b"v"));
            }
            p.push(0xff);
            p
        };
        let req = load(&build(AJP_MAX_HEADERS as u16)).unwrap();
        assert_eq!(req.headers.len(), AJP_MAX_HEADERS);
        // Refused from num_headers alone.
        assert_eq!(
            load(&head(2, AJP_MAX_HEADERS as u16 + 1)),
            Err(ProtocolError::TooManyHeaders {
                count: AJP_MAX_HEADERS + 1,
                max: AJP_MAX_HEADERS
            })
        );
    }

    #[test]
    fn params_limits_apply_to_headers_and_req_attributes() {
        let value = vec![b'v'; MAX_PARAM_VALUE_LEN];
        let p = with(&[&head(2, 1), &string(b"x-big"), &string(&value), b"\xff"]);
        assert!(load(&p).is_ok());
        let value = vec![b'v'; MAX_PARAM_VALUE_LEN + 1];
        let p = with(&[&head(2, 1), &string(b"x-big"), &string(&value), b"\xff"]);
        assert_eq!(
            load(&p),
            Err(ProtocolError::ParamValueTooLong {
                len: MAX_PARAM_VALUE_LEN + 1,
                max: MAX_PARAM_VALUE_LEN
            })
        );
        let limits = Limits::default().with_max_params_pairs(MIN_MAX_PARAMS_PAIRS);
        let build = |headers: u16, attrs: usize| {
            let mut p = head(2, headers);
            for i in 0..headers {
                p.extend_from_slice(&string(format!("x-h{i}").as_bytes()));
                p.extend_from_slice(&string(b"v"));
            }
            for _ in 0..attrs {
                p.push(0x0a);
                p.extend_from_slice(&string(b"AJP_LOCAL_ADDR"));
                p.extend_from_slice(&string(b"::1"));
            }
            p.push(0xff);
            ForwardRequest::load(&Bytes::from(p), &limits)
        };
        assert!(build(60, 4).is_ok());
        let over = Err(ProtocolError::TooManyParams {
            max: MIN_MAX_PARAMS_PAIRS,
        });
        assert_eq!(build(60, 5), over);
        assert_eq!(build(65, 0), over);
    }

    #[test]
    fn case2_send_headers_byte_for_byte() {
        let mut dst = BytesMut::new();
        encode_send_headers(
            200,
            b"OK",
            &[(b"Content-Type", b"text/plain")],
            AJP_DEFAULT_PACKET_SIZE,
            &mut dst,
        )
        .unwrap();
        assert_eq!(
            &dst[..],
            b"\x41\x42\x00\x19\x04\x00\xc8\x00\x02OK\x00\x00\x01\xa0\x01\x00\x0atext/plain\x00"
        );
        let back = SendHeaders::load(&dst.split_off(4).freeze()).unwrap();
        assert_eq!(back.status, 200);
        assert_eq!(back.reason, "OK");
        assert_eq!(
            back.headers,
            [(Bytes::from("content-type"), Bytes::from("text/plain"))]
        );
    }

    #[test]
    fn send_headers_sanitizes_and_defaults_the_reason() {
        let mut dst = BytesMut::new();
        encode_send_headers(
            404,
            b"",
            &[(b"X-A\r\n", b"a\r\nSet-Cookie: x\0\tb")],
            AJP_DEFAULT_PACKET_SIZE,
            &mut dst,
        )
        .unwrap();
        let back = SendHeaders::load(&dst.split_off(4).freeze()).unwrap();
        assert_eq!(back.reason, "404");
        assert_eq!(
            back.headers,
            [(Bytes::from("X-A  "), Bytes::from("a  Set-Cookie: x \tb"))]
        );
    }

    #[test]
    fn send_headers_must_fit_one_packet() {
        let max = max_payload(AJP_DEFAULT_PACKET_SIZE);
        // Payload: code 1 + status 2 + "OK" 5 + count 2 + name "X" 4 + value (n + 3).
        let fixed = 1 + 2 + 5 + 2 + 4 + 3;
        let value = vec![b'v'; max - fixed];
        let mut dst = BytesMut::from(&b"prior"[..]);
        encode_send_headers(
            200,
            b"OK",
            &[(b"X", &value)],
            AJP_DEFAULT_PACKET_SIZE,
            &mut dst,
        )
        .unwrap();
        assert_eq!(dst.len(), 5 + AJP_DEFAULT_PACKET_SIZE);
        let value = vec![b'v'; max - fixed + 1];
        let mut dst = BytesMut::from(&b"prior"[..]);
        assert_eq!(
            encode_send_headers(
                200,
                b"OK",
                &[(b"X", &value)],
                AJP_DEFAULT_PACKET_SIZE,
                &mut dst
            ),
            Err(PacketOverflow { len: max + 1, max })
        );
        assert_eq!(&dst[..], b"prior");
    }

    #[test]
    fn code_tables() {
        assert_eq!(method_name(1), Some("OPTIONS"));
        assert_eq!(method_name(27), Some("MKACTIVITY"));
        assert_eq!(method_name(0), None);
        assert_eq!(method_name(28), None);
        assert_eq!(method_code(b"BASELINE-CONTROL"), Some(26));
        assert_eq!(method_code(b"get"), None);
        assert_eq!(request_header_name(0xa00e), Some("user-agent"));
        assert_eq!(request_header_code(b"User-Agent"), Some(0xa00e));
        assert_eq!(response_header_name(0xa00b), Some("www-authenticate"));
        assert_eq!(response_header_name(0xa00c), None);
        assert_eq!(response_header_name(0xb001), None);
        assert_eq!(response_header_code(b"SET-COOKIE"), Some(0xa007));
        for b in 0..=255 {
            assert_eq!(Code::from_u8(b).to_u8(), b);
        }
    }

    fn bytes_strategy(max: usize) -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
    }

    fn name_strategy() -> impl Strategy<Value = Bytes> {
        // Non-empty; a first byte of 0xA0 would read as a header code.
        proptest::collection::vec(any::<u8>(), 1..16)
            .prop_filter("not a code prefix", |n| n[0] != HEADER_CODE_PREFIX)
            .prop_map(Bytes::from)
    }

    prop_compose! {
        fn forward_request()(
            method in prop_oneof![
                (1u8..=27).prop_map(|c| Bytes::from_static(method_name(c).unwrap().as_bytes())),
                "[A-Z]{1,12}".prop_map(Bytes::from),
            ],
            protocol in bytes_strategy(10),
            req_uri in bytes_strategy(40),
            remote_addr in bytes_strategy(20),
            remote_host in proptest::option::of(bytes_strategy(20)),
            server_name in bytes_strategy(20),
            server_port in any::<u16>(),
            is_ssl in any::<bool>(),
            headers in proptest::collection::vec(
                (prop_oneof![
                    name_strategy(),
                    (0usize..14).prop_map(|i| Bytes::from_static(REQUEST_HEADERS[i].as_bytes())),
                ], bytes_strategy(30)),
                0..12,
            ),
            strings in proptest::collection::vec(proptest::option::of(bytes_strategy(20)), 9),
            ssl_key_size in proptest::option::of(any::<u16>()),
            req_attributes in proptest::collection::vec((name_strategy(), bytes_strategy(20)), 0..5),
        ) -> ForwardRequest {
            let headers: Vec<(Bytes, Bytes)> = headers
                .into_iter()
                .filter(|(n, _)| {
                    !n.eq_ignore_ascii_case(b"content-length")
                        && !n.eq_ignore_ascii_case(b"transfer-encoding")
                })
                .collect();
            ForwardRequest {
                method,
                protocol,
                req_uri,
                remote_addr,
                remote_host,
                server_name,
                server_port,
                is_ssl,
                headers,
                attributes: Attributes {
                    remote_user: strings[0].clone(),
                    auth_type: strings[1].clone(),
                    query_string: strings[2].clone(),
                    route: strings[3].clone(),
                    ssl_cert: strings[4].clone(),
                    ssl_cipher: strings[5].clone(),
                    ssl_session: strings[6].clone(),
                    secret: strings[7].clone(),
                    ssl_key_size,
                    req_attributes,
                },
                content_length: None,
                chunked: false,
            }
        }
    }

    proptest! {
        #[test]
        fn string_round_trips(s in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300))) {
            let mut dst = BytesMut::new();
            put_string(s.as_deref(), &mut dst);
            prop_assert_eq!(dst.len(), string_len(s.as_deref()));
            let mut r = Reader::new(&dst);
            prop_assert_eq!(read_string(&mut r, "s").unwrap(), s.as_deref());
            prop_assert!(r.is_empty());
        }

        #[test]
        fn forward_request_round_trips(req in forward_request(), cl in proptest::option::of(any::<u64>())) {
            let mut req = req;
            if let Some(cl) = cl {
                req.headers.push((Bytes::from_static(b"content-length"), Bytes::from(cl.to_string())));
                req.content_length = Some(cl);
            }
            let mut dst = BytesMut::new();
            req.encode(AJP_DEFAULT_PACKET_SIZE, &mut dst).unwrap();
            let len = usize::from(u16::from_be_bytes([dst[2], dst[3]]));
            prop_assert_eq!(&dst[..2], &SERVER_MAGIC);
            prop_assert_eq!(len + 4, dst.len());
            let payload = dst.split_off(4).freeze();
            let back = ForwardRequest::load(&payload, &Limits::default()).unwrap();
            prop_assert_eq!(back, req);
        }

        #[test]
        fn send_headers_round_trip(
            status in any::<u16>(),
            reason in "[ -~]{1,20}",
            headers in proptest::collection::vec(
                (prop_oneof![
                    "[a-z][a-z-]{0,15}".prop_map(Bytes::from),
                    (0usize..11).prop_map(|i| Bytes::from_static(RESPONSE_HEADERS[i].as_bytes())),
                ], "[ -~]{0,30}".prop_map(Bytes::from)),
                0..12,
            ),
        ) {
            let sent = SendHeaders { status, reason: Bytes::from(reason), headers };
            let mut dst = BytesMut::new();
            sent.encode(AJP_DEFAULT_PACKET_SIZE, &mut dst).unwrap();
            let back = SendHeaders::load(&dst.split_off(4).freeze()).unwrap();
            prop_assert_eq!(back, sent);
        }
    }
}
