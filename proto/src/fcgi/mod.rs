//! FastCGI 1.0 (Open Market, Mark R. Brown, 1996): records, the server connection and the
//! client codec.
//!
//! # The protocol in brief
//!
//! Everything travels in records (spec §3.3): an 8-byte header, `contentLength` bytes of
//! content (0..=65 535), then `paddingLength` bytes the receiver skips. Request id 0 carries
//! management records (`FCGI_GET_VALUES`, spec §4); ids >= 1 carry requests, and every web
//! server we serve uses id 1, one request at a time.
//!
//! ```text
//! record:   version(1) type(1) requestId(2) contentLength(2) paddingLength(1) reserved(1)
//!           content[contentLength] padding[paddingLength]
//!
//! web server ──▶ app                              app ──▶ web server
//!   FCGI_BEGIN_REQUEST {role, flags}                FCGI_STDOUT "Status: 200 OK\r\n..."
//!   FCGI_PARAMS  name-value pairs ...               FCGI_STDOUT  (empty: terminator)
//!   FCGI_PARAMS  (empty: terminator)                [FCGI_STDERR ... + empty]
//!   FCGI_STDIN   request body ...                   FCGI_END_REQUEST {appStatus, protocolStatus}
//!   FCGI_STDIN   (empty: terminator)
//!
//! name-value pair (spec §3.4):
//!   nameLength  (1 byte 0..=127, or 4 bytes with the top bit set: 31-bit length)
//!   valueLength (same forms)
//!   name bytes, value bytes
//! ```
//!
//! PARAMS and STDIN are streams: the contents of their records concatenate, and record
//! boundaries mean nothing (a pair may be split anywhere, even inside a 4-byte length).
//!
//! # Modules
//!
//! - [`record`]: the wire types ([`Header`], [`RecordType`], [`Role`], [`BeginRequest`],
//!   [`EndRequest`], [`ProtocolStatus`], [`UnknownType`], pair length forms), `load`/`encode`
//!   side by side.
//! - [`decode`]: [`RecordDecoder`] (framing), [`ParamsDecoder`] (streaming pairs, bounded by
//!   [`Limits`](crate::Limits)) and the client's [`ClientDecoder`].
//! - [`encode`]: STDOUT/STDERR streams, END_REQUEST, management answers, and the client's
//!   [`encode_request`] / [`encode_stdin`].
//! - [`conn`]: [`Connection`], the server state machine, and its [`Event`]s.
//!
//! Deviations and choices (no multiplexing, Filter refused, Authorizer without STDIN) are
//! documented on [`Connection`].

pub mod conn;
pub mod decode;
pub mod encode;
pub mod record;

pub use conn::{ConnConfig, Connection, Event};
pub use decode::{ClientDecoder, ParamsDecoder, Record, RecordDecoder, ResponseRecord};
pub use encode::{encode_request, encode_stdin};
pub use record::{
    BeginRequest, EndRequest, Header, ProtocolStatus, RecordType, Role, UnknownType,
    FCGI_KEEP_CONN, FCGI_NULL_REQUEST_ID,
};

/// `FCGI_VERSION_1`.
pub const FCGI_VERSION_1: u8 = 1;
