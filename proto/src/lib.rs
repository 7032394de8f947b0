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
//! - [`output`]: [`Output`], what a connection owes its web server, large data uncopied.
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
pub mod output;
pub mod params;
pub mod reader;
pub mod scgi;

#[cfg(fuzzing)]
pub mod fuzzing;

pub use error::ProtocolError;
pub use limits::Limits;
pub use output::Output;
pub use params::Params;

/// A number in decimal ASCII without allocating: SCGI's netstring lengths and
/// `CONTENT_LENGTH`, FastCGI's `FCGI_MAX_CONNS`/`FCGI_MAX_REQS` values.
struct Decimal {
    digits: [u8; 20],
    start: usize,
}

impl Decimal {
    fn new(mut n: u64) -> Self {
        let mut digits = [b'0'; 20];
        let mut start = digits.len();
        loop {
            start -= 1;
            // n % 10 < 10, so the cast cannot truncate.
            digits[start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        Self { digits, start }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.digits[self.start..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_covers_zero_and_the_extremes() {
        assert_eq!(Decimal::new(0).as_bytes(), b"0");
        assert_eq!(Decimal::new(10).as_bytes(), b"10");
        assert_eq!(Decimal::new(1_048_576).as_bytes(), b"1048576");
        assert_eq!(Decimal::new(u64::from(u32::MAX)).as_bytes(), b"4294967295");
        assert_eq!(Decimal::new(u64::MAX).as_bytes(), b"18446744073709551615");
    }
}
