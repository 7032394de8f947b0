//! SCGI on the connection engine: `appserver_proto::scgi::Connection` as a `Wire`.
//!
//! One connection, one request. SCGI has no framing on the way back: the response is the CGI
//! head (`Status:` first, as for FastCGI) and the body, and closing the connection ends it.
//! Beyond `maxchildren` the answer is a 503 (SCGI has no overload signal). Once the body is
//! complete nothing more is parsed, and a half-close after it (lighttpd) is not an abort.

use std::fmt::Display;
use std::sync::Arc;

use appserver_proto::scgi::{Connection, Event};
use appserver_proto::{Output, ProtocolError};
use bytes::{Bytes, BytesMut};
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite};

use super::engine::{Incoming, Wire};
use super::{Shared, FIRST_OUTPUT, READ_BUF_SIZE};
use crate::response::{encode_cgi_head, plain};
use crate::{Body, Handler, Response};

/// Serves one SCGI connection: reads the request, answers it, closes.
pub async fn serve<S, H>(io: S, peer: impl Display + Send + Sync, shared: Arc<Shared<H>>)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
    H: Handler,
{
    super::engine::run(io, &peer, &shared, Scgi::new(&shared), None, None).await;
}

/// The SCGI side of a connection.
pub(crate) struct Scgi {
    conn: Connection,
    out: Output,
    requested: bool,
    ended: bool,
    /// A whole head must fit the read buffer: the netstring's digits, `:` and `,` around at
    /// most `maxparams` bytes.
    input_bound: usize,
}

/// Room for a netstring's length digits, `:` and `,` beyond its content.
const NETSTRING_OVERHEAD: usize = 16;

impl Scgi {
    pub(crate) fn new<H>(shared: &Shared<H>) -> Self {
        Self {
            conn: Connection::new(shared.limits),
            out: Output::new(),
            requested: false,
            ended: false,
            input_bound: READ_BUF_SIZE.max(shared.limits.max_params_bytes() + NETSTRING_OVERHEAD),
        }
    }
}

impl Wire for Scgi {
    const NAME: &'static str = "scgi";

    fn handle_input(&mut self, src: &mut BytesMut) -> Result<(), ProtocolError> {
        self.conn.handle_input(src)
    }

    fn handle_eof(&mut self, src: &BytesMut) -> Result<(), ProtocolError> {
        self.conn.handle_eof(src)
    }

    fn poll_event(&mut self) -> Option<Incoming> {
        Some(match self.conn.poll_event()? {
            Event::Request { params, .. } => {
                self.requested = true;
                Incoming::Request(params)
            }
            Event::Body(data) => Incoming::Body(data),
            Event::BodyEnd => Incoming::BodyEnd,
        })
    }

    fn body_ends_next(&self) -> bool {
        matches!(self.conn.peek_event(), Some(Event::BodyEnd))
    }

    fn poll_transmit(&mut self, dst: &mut Output) {
        dst.append(&mut self.out);
    }

    fn queued_output(&self) -> usize {
        self.out.len()
    }

    fn wants_close(&self) -> bool {
        self.ended
    }

    fn input_done(&self) -> bool {
        self.conn.is_done()
    }

    fn is_idle(&self) -> bool {
        !self.requested
    }

    fn input_bound(&self) -> usize {
        self.input_bound
    }

    fn send_head(&mut self, resp: Response, _peer: &(dyn Display + Sync)) -> Body {
        let (parts, body) = resp.into_parts();
        // The head goes straight into the output, sized once for it and a small body: built
        // apart and copied in, it cost a request three allocations.
        self.out.buf().reserve(FIRST_OUTPUT);
        encode_cgi_head(&parts, self.out.buf());
        body
    }

    fn send_data(&mut self, data: Bytes) {
        self.out.put(data);
    }

    fn end_response(&mut self) {
        self.ended = true;
    }

    fn overloaded(&mut self) -> Option<Response> {
        Some(plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable",
        ))
    }
}

#[cfg(test)]
mod tests {
    use appserver_proto::params::ParamsBuilder;
    use appserver_proto::scgi::encode_request;
    use appserver_proto::Limits;
    use tokio::io::DuplexStream;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::{Body, BoxError, Request, Response};

    struct Echo;
    impl Handler for Echo {
        async fn call(&self, req: Request) -> Result<Response, BoxError> {
            let uri = req.uri().to_string();
            let body = match req.into_body().collect_bytes().await {
                Ok(b) => format!("{uri} {}", String::from_utf8_lossy(&b)),
                Err(e) => format!("body error: {e}"),
            };
            Ok(Response::new(Body::from(body)))
        }
    }

    fn spawn(max_requests: usize) -> DuplexStream {
        let shared = super::super::test_shared(Echo, max_requests, "scgi");
        let (client, server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(serve(server, "test-peer", shared));
        client
    }

    fn request(uri: &str, body: &[u8]) -> BytesMut {
        let mut p = ParamsBuilder::new(Limits::default());
        p.push(b"REQUEST_METHOD", b"POST").unwrap();
        p.push(b"REQUEST_URI", uri.as_bytes()).unwrap();
        let mut out = BytesMut::new();
        encode_request(&p.finish(), body.len() as u64, &mut out);
        out.extend_from_slice(body);
        out
    }

    async fn exchange(io: &mut DuplexStream, bytes: &[u8]) -> String {
        io.write_all(bytes).await.unwrap();
        let mut out = Vec::new();
        io.read_to_end(&mut out).await.unwrap();
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn answers_with_a_cgi_head_and_closes() {
        let mut io = spawn(4);
        let text = exchange(&mut io, &request("/deep?x", b"What is the answer to life?")).await;
        assert!(text.starts_with("Status: 200 OK\r\n"), "{text}");
        assert!(
            text.ends_with("\r\n\r\n/deep?x What is the answer to life?"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn bytes_after_the_body_are_never_a_second_request() {
        let mut io = spawn(4);
        let mut bytes = request("/first", b"abc");
        bytes.extend_from_slice(&request("/second", b"def"));
        let text = exchange(&mut io, &bytes).await;
        assert!(text.ends_with("/first abc"), "{text}");
        assert!(!text.contains("/second"));
    }

    #[tokio::test]
    async fn half_close_after_the_body_is_still_answered() {
        let mut io = spawn(4);
        io.write_all(&request("/h", b"xyz")).await.unwrap();
        io.shutdown().await.unwrap();
        let mut out = Vec::new();
        io.read_to_end(&mut out).await.unwrap();
        assert!(out.ends_with(b"/h xyz"));
    }

    #[tokio::test]
    async fn beyond_maxchildren_is_503() {
        let mut io = spawn(0);
        let text = exchange(&mut io, &request("/", b"")).await;
        assert!(
            text.starts_with("Status: 503 Service Unavailable\r\n"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn malformed_netstring_closes_without_answer() {
        let mut io = spawn(4);
        let text = exchange(&mut io, b"070:CONTENT_LENGTH\x000\x00,").await;
        assert_eq!(text, "");
    }

    /// A request on a new connection costs no read buffer of its own: the connection reads
    /// into the buffer the last one parked, and parks it again once the request that held its
    /// header block (a slice of the buffer) is gone.
    #[tokio::test]
    async fn connections_one_after_another_share_one_read_buffer() {
        let shared = super::super::test_shared(Echo, 4, "scgi");
        let mut first = None;
        for _ in 0..3 {
            let (mut io, server) = tokio::io::duplex(64 * 1024);
            let task = tokio::spawn(serve(server, "test-peer", shared.clone()));
            let text = exchange(&mut io, &request("/p", b"body")).await;
            assert!(text.ends_with("/p body"), "{text}");
            task.await.unwrap();
            let parked = crate::driver::readbuf::parked_ptr();
            assert!(parked.is_some(), "the connection parked no read buffer");
            assert_eq!(*first.get_or_insert(parked), parked);
        }
    }
}
