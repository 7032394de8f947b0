//! Sans-IO codecs and connection state machines for the three gateway protocols appserver
//! speaks to web servers: FastCGI 1.0, SCGI and AJP13.
//!
//! This crate does no network IO, starts no threads and never reads a clock: bytes go in
//! through `handle_input`, events come out of `poll_event`, and output bytes are drained with
//! `poll_transmit`. Every bug therefore reproduces from a byte slice. The async shell that owns
//! sockets lives in the `appserver` crate (`driver::{fcgi,scgi,ajp}`).
//!
//! ```text
//!  web server bytes ──▶ decode (Header::parse, Record) ──▶ conn state machine ──▶ Event
//!                                                                  ▲                │
//!  web server ◀── poll_transmit ◀── encode (Stdout, EndRequest) ◀──┘ send_stdout ◀──┘ (handler)
//! ```
//!
//! # Layout
//!
//! - [`limits`]: every bound this crate enforces, with its reason.
//! - [`error`]: [`ProtocolError`], the one error type of all decoders.
//! - [`reader`]: a bounded cursor for length-prefixed fields (`sub`, `expect_end`).
//! - [`params`]: [`Params`], the ordered, byte-exact CGI variable list shared by all protocols.
//! - [`fcgi`]: FastCGI 1.0 records, the server connection and the client codec.
//! - [`scgi`]: SCGI netstring headers, the one-request server connection and the client
//!   encoder.
//! - [`ajp`]: AJP13 packets, the container-side connection (CPING, body accounting, secret
//!   and attribute allowlist) and the web-server-side codec.
#![forbid(unsafe_code)]

pub mod ajp;
pub mod error;
pub mod fcgi;
pub mod limits;
pub mod params;
pub mod reader;
pub mod scgi;

#[cfg(fuzzing)]
pub mod fuzzing;

pub use error::ProtocolError;
pub use limits::Limits;
pub use params::Params;

/// Moves queued output into the caller's buffer: hands the buffer over when the caller's is
/// empty (no copy; `out` keeps the caller's capacity), appends otherwise. The
/// `poll_transmit` of every connection.
fn transmit(out: &mut bytes::BytesMut, dst: &mut bytes::BytesMut) {
    if dst.is_empty() {
        std::mem::swap(dst, out);
    } else {
        dst.extend_from_slice(out);
        out.clear();
    }
}
