//! [`ProtocolError`]: the one error type of every decoder and state machine in this crate.
//!
//! A `ProtocolError` means the peer sent bytes that break the protocol; the driver logs it with
//! the peer's address and closes that connection. An incomplete input is not an error: decoders
//! return `Ok(None)` for it (style rule 2).

/// A protocol violation by the peer.
///
/// Messages are lowercase, name the offending value, and are not a stable interface.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// Occurs when a length-prefixed field or fixed-size body ends before its declared end.
    #[error("missing data: {0} is truncated")]
    MissingData(&'static str),

    /// Occurs when bytes remain after a field or body that must be consumed exactly.
    #[error("{len} trailing bytes after {what}")]
    TrailingData {
        /// What was being parsed.
        what: &'static str,
        /// How many bytes were left over.
        len: usize,
    },

    /// Occurs when a FastCGI record header carries a version other than `FCGI_VERSION_1`.
    #[error("unsupported fastcgi version {0} (expected 1)")]
    UnsupportedVersion(u8),

    /// Occurs when an `FCGI_BEGIN_REQUEST` or other fixed-size body has the wrong length.
    #[error("{record} body is {len} bytes (expected {expected})")]
    BadBodyLength {
        /// The record type, in spec vocabulary (`FCGI_BEGIN_REQUEST`).
        record: &'static str,
        /// The contentLength received.
        len: usize,
        /// The length the spec fixes.
        expected: usize,
    },

    /// Occurs when an application record (`FCGI_BEGIN_REQUEST`, `FCGI_PARAMS`, ...) uses the
    /// null request id 0, which is reserved for management records.
    #[error("{record} with the null request id 0")]
    NullRequestId {
        /// The record type, in spec vocabulary.
        record: &'static str,
    },

    /// Occurs when a record does not fit the state of its request (`FCGI_STDIN` before the
    /// PARAMS terminator, PARAMS after it) or is a type only an application sends
    /// (`FCGI_STDOUT`, `FCGI_END_REQUEST`, ...).
    #[error("unexpected {got} for request {request_id} (expected {expected})")]
    UnexpectedRecord {
        /// What the request's state accepts.
        expected: &'static str,
        /// The record type received, in spec vocabulary or as `type N`.
        got: String,
        /// The request id of the record.
        request_id: u16,
    },

    /// Occurs when a request's parameters exceed the configured byte cap.
    #[error("parameters of {len} bytes exceed the limit of {max}")]
    ParamsTooLarge {
        /// Bytes announced or accumulated so far.
        len: usize,
        /// The configured cap.
        max: usize,
    },

    /// Occurs when a request carries more parameters than the configured cap.
    #[error("more than {max} parameters")]
    TooManyParams {
        /// The configured cap.
        max: usize,
    },

    /// Occurs when a parameter name is longer than `MAX_PARAM_NAME_LEN`.
    #[error("parameter name of {len} bytes exceeds the limit of {max}")]
    ParamNameTooLong {
        /// The announced length.
        len: usize,
        /// The cap.
        max: usize,
    },

    /// Occurs when a parameter value is longer than `MAX_PARAM_VALUE_LEN`.
    #[error("parameter value of {len} bytes exceeds the limit of {max}")]
    ParamValueTooLong {
        /// The announced length.
        len: usize,
        /// The cap.
        max: usize,
    },

    /// Occurs when the connection ends in the middle of a record, packet or header block.
    #[error("connection closed mid-{0}")]
    UnexpectedEof(&'static str),

    /// Occurs when an SCGI netstring's length prefix is malformed (empty, a non-digit, a
    /// leading zero, more than `SCGI_MAX_LENGTH_DIGITS` digits) or its header block is not
    /// followed by `,`.
    #[error("bad scgi netstring: {0}")]
    BadNetstring(&'static str),

    /// Occurs when an SCGI header block does not start with `CONTENT_LENGTH`, which the spec
    /// requires first even when it is `0` (an empty block `0:,` included).
    #[error("scgi header block does not start with CONTENT_LENGTH")]
    MissingContentLength,

    /// Occurs when SCGI's `CONTENT_LENGTH` or an AJP `Content-Length` header is not a plain
    /// decimal number: empty, signed, padded with spaces, not ASCII digits, or beyond `u64`.
    #[error("invalid content length: {0}")]
    InvalidContentLength(&'static str),

    /// Occurs when an SCGI header block repeats a name, which the spec forbids.
    #[error("duplicate scgi header {0:?}")]
    DuplicateParam(String),

    /// Occurs when an SCGI header, an AJP request header or an AJP `req_attribute` has an empty
    /// or null name.
    #[error("empty {0} name")]
    EmptyName(&'static str),

    /// Occurs when the SCGI header `SCGI` is present with a value other than `1`.
    #[error("unsupported scgi version {0:?} (expected \"1\")")]
    UnsupportedScgiVersion(String),

    /// Occurs when the request body ends before its declared length: the connection closes
    /// mid-body (SCGI, AJP), or an AJP end-of-body packet arrives before `Content-Length`
    /// bytes did. The driver reports it to the handler as a truncated body.
    #[error("request body truncated after {received} bytes")]
    TruncatedBody {
        /// Body bytes delivered before the end.
        received: u64,
        /// The declared length, when there was one.
        expected: Option<u64>,
    },

    /// Occurs when an AJP packet does not start with the magic of its direction (`12 34` from
    /// the web server, `41 42` from the container).
    #[error("bad ajp packet magic {0:02x?}")]
    BadMagic([u8; 2]),

    /// Occurs when an AJP packet announces a payload longer than the configured packet size
    /// allows; nothing is buffered for it.
    #[error("ajp packet payload of {len} bytes exceeds the limit of {max}")]
    PacketTooLarge {
        /// The announced payload length.
        len: usize,
        /// The largest payload the configured packet size allows.
        max: usize,
    },

    /// Occurs when an AJP packet does not fit the connection's state: `SHUTDOWN` or `PING`
    /// from the network, an empty packet while idle, a container-to-server code, any packet
    /// while a request is active and no body packet is expected.
    #[error("unexpected ajp {got} (expected {expected})")]
    UnexpectedPacket {
        /// What the state accepts.
        expected: &'static str,
        /// What arrived, in spec vocabulary (`SHUTDOWN`, `an empty packet`, ...).
        got: &'static str,
    },

    /// Occurs when an AJP packet's first payload byte is not a message code of the protocol.
    #[error("unknown ajp message code {0:#04x}")]
    UnknownPacketCode(u8),

    /// Occurs when an AJP string is not followed by its `0x00` terminator.
    #[error("ajp string {0} lacks its 0x00 terminator")]
    UnterminatedString(&'static str),

    /// Occurs when an AJP header name is a code (`0xA0xx`) the protocol does not define.
    #[error("unknown ajp header code {0:#06x}")]
    UnknownHeaderCode(u16),

    /// Occurs when an AJP `FORWARD_REQUEST` carries a method code outside 1..=27 and 0xFF.
    #[error("unknown ajp method code {0:#04x}")]
    UnknownMethod(u8),

    /// Occurs when the AJP stored method is inconsistent: method 0xFF without attribute
    /// `0x0D`, attribute `0x0D` with a coded method, or an empty stored method.
    #[error("bad ajp stored method: {0}")]
    BadStoredMethod(&'static str),

    /// Occurs when an AJP attribute code is not one the protocol defines; its length is unknown,
    /// so the rest of the packet cannot be parsed.
    #[error("unknown ajp attribute code {0:#04x}")]
    UnknownAttribute(u8),

    /// Occurs when an AJP attribute's value is malformed (an `ssl_key_size` string that is
    /// not a number below 65 536).
    #[error("bad ajp attribute {code:#04x}: {reason}")]
    BadAttribute {
        /// The attribute code.
        code: u8,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// Occurs when a single-valued AJP attribute (`query_string`, `secret`, ...) appears twice.
    #[error("duplicate ajp attribute {0:#04x}")]
    DuplicateAttribute(u8),

    /// Occurs when an AJP request announces more headers than `AJP_MAX_HEADERS`.
    #[error("{count} ajp request headers exceed the limit of {max}")]
    TooManyHeaders {
        /// The announced `num_headers`.
        count: usize,
        /// The cap.
        max: usize,
    },

    /// Occurs when an AJP request carries two `Content-Length` headers (coded or named).
    #[error("duplicate content-length header")]
    DuplicateContentLength,

    /// Occurs when an AJP request body packet's inner length is not its payload length minus
    /// two (and the packet is not lighttpd's framing, or that framing is disabled).
    #[error("ajp body packet of {len} payload bytes announces {inner} data bytes")]
    BadBodyPacket {
        /// The packet's payload length.
        len: usize,
        /// The inner data length it announces.
        inner: u16,
    },

    /// Occurs when an AJP body packet carries more bytes than `Content-Length` has left.
    #[error("ajp body packet of {len} bytes exceeds the {remaining} bytes left")]
    BodyOverrun {
        /// Data bytes in the packet.
        len: u64,
        /// Bytes the declared length still allowed.
        remaining: u64,
    },
}
