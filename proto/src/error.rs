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
}
