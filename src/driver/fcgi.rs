//! FastCGI on the connection engine: `appserver_proto::fcgi::Connection` as a `Wire`.
//!
//! Web servers never multiplex (every one uses request id 1), so the wire tracks the one
//! active id and passes on only its records; a second concurrent `FCGI_BEGIN_REQUEST` is
//! answered `FCGI_CANT_MPX_CONN` by the connection itself. The response is a CGI head
//! (`Status:` first, CRLF) and body on `FCGI_STDOUT`, ended by `FCGI_END_REQUEST`; beyond
//! `maxchildren` the answer is `FCGI_OVERLOADED`.

use std::fmt::Display;
use std::sync::Arc;

use appserver_proto::fcgi::{ConnConfig, Connection, Event, ProtocolStatus};
use appserver_proto::{Output, ProtocolError};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};

use super::engine::{Incoming, Wire};
use super::{Shared, FIRST_OUTPUT};
use crate::response::encode_cgi_head;
use crate::{Body, Handler, Response};

/// Serves one FastCGI connection until the web server closes it, the protocol says to close,
/// an error occurs or a deadline passes (each logged with the peer), or a stop finds it
/// without a request.
pub async fn serve<S, H>(io: S, peer: impl Display + Send + Sync, shared: Arc<Shared<H>>)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
    H: Handler,
{
    super::engine::run(io, &peer, &shared, Fcgi::new(&shared), None, None).await;
}

/// The FastCGI side of a connection.
pub(crate) struct Fcgi {
    conn: Connection,
    /// The active request's id.
    id: u16,
}

impl Fcgi {
    pub(crate) fn new<H>(shared: &Shared<H>) -> Self {
        Self {
            conn: Connection::new(ConnConfig {
                limits: shared.limits,
                max_conns: shared.max_conns,
                max_reqs: shared.max_requests,
            }),
            id: 0,
        }
    }
}

impl Wire for Fcgi {
    const NAME: &'static str = "fastcgi";

    fn handle_input(&mut self, src: &mut BytesMut) -> Result<(), ProtocolError> {
        self.conn.handle_input(src)
    }

    fn handle_eof(&mut self, src: &BytesMut) -> Result<(), ProtocolError> {
        self.conn.handle_eof(src)
    }

    fn poll_event(&mut self) -> Option<Incoming> {
        loop {
            let ev = self.conn.poll_event()?;
            return Some(match ev {
                Event::Request { id, params, .. } => {
                    self.id = id;
                    Incoming::Request(params)
                }
                Event::Stdin { id, data } if id == self.id => Incoming::Body(data),
                Event::StdinEnd { id } if id == self.id => Incoming::BodyEnd,
                Event::Abort { id } if id == self.id => Incoming::Abort,
                _ => continue,
            });
        }
    }

    fn body_ends_next(&self) -> bool {
        matches!(self.conn.peek_event(), Some(Event::StdinEnd { id }) if *id == self.id)
    }

    fn poll_transmit(&mut self, dst: &mut Output) {
        self.conn.poll_transmit(dst);
    }

    fn queued_output(&self) -> usize {
        self.conn.queued_output()
    }

    fn wants_close(&self) -> bool {
        self.conn.wants_close()
    }

    fn is_idle(&self) -> bool {
        self.conn.is_idle()
    }

    fn send_head(&mut self, resp: Response, _peer: &(dyn Display + Sync)) -> Body {
        let (parts, body) = resp.into_parts();
        self.conn
            .send_stdout_with(self.id, FIRST_OUTPUT, |buf| encode_cgi_head(&parts, buf));
        body
    }

    fn send_data(&mut self, data: Bytes) {
        self.conn.send_stdout(self.id, data);
    }

    fn end_response(&mut self) {
        self.conn.end_request(self.id, 0);
    }

    fn overloaded(&mut self) -> Option<Response> {
        self.conn
            .reject_request(self.id, ProtocolStatus::Overloaded);
        None
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use appserver_proto::fcgi::{
        encode_request, encode_stdin, ClientDecoder, ResponseRecord, Role,
    };
    use appserver_proto::params::ParamsBuilder;
    use appserver_proto::Limits;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;
    use crate::{Body, BoxError, Request, Response};

    fn shared<H: Handler>(handler: H, max_requests: usize) -> Arc<Shared<H>> {
        super::super::test_shared(handler, max_requests, "fcgi")
    }

    fn request_bytes(id: u16, keep_conn: bool, pairs: &[(&str, &str)], body: &[u8]) -> BytesMut {
        let mut p = ParamsBuilder::new(Limits::default());
        for (n, v) in pairs {
            p.push(n.as_bytes(), v.as_bytes()).unwrap();
        }
        let mut out = BytesMut::new();
        encode_request(id, Role::Responder, keep_conn, &p.finish(), &mut out);
        if !body.is_empty() {
            encode_stdin(id, body, &mut out);
        }
        encode_stdin(id, b"", &mut out);
        out
    }

    /// Reads records until END_REQUEST; returns (stdout, protocol status).
    async fn read_response(io: &mut DuplexStream) -> (Vec<u8>, ProtocolStatus) {
        let mut dec = ClientDecoder::default();
        let mut buf = BytesMut::new();
        let mut stdout = Vec::new();
        loop {
            while let Some(rec) = dec.decode(&mut buf).unwrap() {
                match rec {
                    ResponseRecord::Stdout { data, .. } => stdout.extend_from_slice(&data),
                    ResponseRecord::EndRequest {
                        protocol_status, ..
                    } => return (stdout, protocol_status),
                    _ => {}
                }
            }
            let n = io.read_buf(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed before END_REQUEST");
        }
    }

    struct Echo;
    impl Handler for Echo {
        async fn call(&self, req: Request) -> Result<Response, BoxError> {
            if req.uri().path() == "/panic" {
                panic!("boom");
            }
            if req.uri().path() == "/error" {
                return Err("handler failed".into());
            }
            if req.uri().path() == "/hint" {
                // What the body says of itself before it is read.
                let body = req.body();
                let hint = format!(
                    "{} {:?}",
                    http_body::Body::is_end_stream(body),
                    http_body::Body::size_hint(body).exact()
                );
                return Ok(Response::new(Body::from(hint)));
            }
            let uri = req.uri().to_string();
            match req.into_body().collect_bytes().await {
                Ok(b) => Ok(Response::new(Body::from(format!("{uri} {}", b.len())))),
                Err(e) => Ok(Response::new(Body::from(format!("body error: {e}")))),
            }
        }
    }

    fn spawn<H: Handler>(shared: Arc<Shared<H>>) -> DuplexStream {
        let (client, server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(serve(server, "test-peer", shared));
        client
    }

    #[tokio::test]
    async fn get_then_close_without_keep_conn() {
        let mut io = spawn(shared(Echo, 4));
        io.write_all(&request_bytes(1, false, &[("REQUEST_URI", "/a?b")], b""))
            .await
            .unwrap();
        let (out, status) = read_response(&mut io).await;
        assert_eq!(status, ProtocolStatus::RequestComplete);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("Status: 200 OK\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n/a?b 0"), "{text}");
        let mut rest = Vec::new();
        io.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "nothing may follow END_REQUEST");
    }

    /// A request whose empty body came with its params (nginx's GET) gets a body that is
    /// over before it is read; one whose body is still to come, or that announced a length,
    /// gets the channel, and a body shorter than its length is still an error.
    #[tokio::test]
    async fn a_body_known_empty_is_over_at_once() {
        /// Sends `bytes` and returns the response's text.
        async fn answer(io: &mut DuplexStream, bytes: &[u8]) -> String {
            io.write_all(bytes).await.unwrap();
            String::from_utf8(read_response(io).await.0).unwrap()
        }
        let mut io = spawn(shared(Echo, 4));
        let hint = [("REQUEST_URI", "/hint")];
        let out = answer(&mut io, &request_bytes(1, true, &hint, b"")).await;
        assert!(out.ends_with("\r\n\r\ntrue Some(0)"), "{out}");

        // The params alone: the body's end is not known yet.
        let mut head = request_bytes(1, true, &hint, b"");
        let end = head.split_off(head.len() - 8);
        let out = answer(&mut io, &head).await;
        assert!(out.ends_with("\r\n\r\nfalse None"), "{out}");
        io.write_all(&end).await.unwrap();

        let with_body = [("REQUEST_URI", "/hint"), ("CONTENT_LENGTH", "3")];
        let out = answer(&mut io, &request_bytes(1, true, &with_body, b"xyz")).await;
        assert!(out.ends_with("\r\n\r\nfalse Some(3)"), "{out}");

        let short = [("REQUEST_URI", "/short"), ("CONTENT_LENGTH", "5")];
        let out = answer(&mut io, &request_bytes(1, true, &short, b"")).await;
        assert!(out.contains("body error:"), "{out}");
    }

    #[tokio::test]
    async fn keep_conn_serves_many_requests_and_panics_become_500() {
        let mut io = spawn(shared(Echo, 4));
        for (path, expect) in [
            ("/one", "Status: 200 OK"),
            ("/panic", "Status: 500 Internal Server Error"),
            ("/error", "Status: 500 Internal Server Error"),
            ("/two", "Status: 200 OK"),
        ] {
            let body = b"xyz";
            io.write_all(&request_bytes(
                1,
                true,
                &[("REQUEST_URI", path), ("CONTENT_LENGTH", "3")],
                body,
            ))
            .await
            .unwrap();
            let (out, status) = read_response(&mut io).await;
            assert_eq!(status, ProtocolStatus::RequestComplete);
            let text = String::from_utf8(out).unwrap();
            assert!(text.starts_with(expect), "{path}: {text}");
        }
    }

    /// A process that has admitted its request budget (a retiring prefork worker) closes a
    /// kept-alive connection after its request instead of waiting for the next one, with no
    /// stop signalled; with budget left, the connection stays open.
    #[tokio::test]
    async fn keep_conn_closes_once_the_budget_is_spent() {
        let shared = shared(Echo, 4);
        shared.load.set_budget(2);
        let mut io = spawn(Arc::clone(&shared));
        for (i, path) in ["/one", "/two"].into_iter().enumerate() {
            io.write_all(&request_bytes(1, true, &[("REQUEST_URI", path)], b""))
                .await
                .unwrap();
            let (out, status) = read_response(&mut io).await;
            assert_eq!(status, ProtocolStatus::RequestComplete);
            let text = String::from_utf8(out).unwrap();
            assert!(text.ends_with(&format!("{path} 0")), "{text}");
            if i == 0 {
                assert!(!shared.load.spent());
                let mut byte = [0u8; 1];
                let idle =
                    tokio::time::timeout(std::time::Duration::from_millis(50), io.read(&mut byte))
                        .await;
                assert!(idle.is_err(), "open while budget is left: {idle:?}");
            }
        }
        assert!(shared.load.spent());
        assert!(!shared.shutdown.is_cancelled());
        let mut rest = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(5), io.read_to_end(&mut rest))
            .await
            .expect("the connection closes once the budget is spent")
            .unwrap();
        assert!(rest.is_empty(), "{rest:?}");
    }

    #[tokio::test]
    async fn content_length_mismatch_reaches_the_handler() {
        let mut io = spawn(shared(Echo, 4));
        io.write_all(&request_bytes(
            1,
            false,
            &[("REQUEST_URI", "/"), ("CONTENT_LENGTH", "10")],
            b"short",
        ))
        .await
        .unwrap();
        let (out, _) = read_response(&mut io).await;
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.ends_with("body error: request body is 5 bytes but CONTENT_LENGTH said 10"),
            "{text}"
        );
    }

    struct Gate(Arc<tokio::sync::Notify>);
    impl Handler for Gate {
        async fn call(&self, _req: Request) -> Result<Response, BoxError> {
            self.0.notified().await;
            Ok(Response::new(Body::from("released")))
        }
    }

    #[tokio::test]
    async fn beyond_maxchildren_is_overloaded_not_a_hang() {
        let gate = Arc::new(tokio::sync::Notify::new());
        let shared = shared(Gate(Arc::clone(&gate)), 1);
        let mut first = spawn(Arc::clone(&shared));
        first
            .write_all(&request_bytes(1, false, &[], b""))
            .await
            .unwrap();
        // Wait until the first request holds the only slot.
        while shared.requests.available_permits() != 0 {
            tokio::task::yield_now().await;
        }
        let mut second = spawn(Arc::clone(&shared));
        second
            .write_all(&request_bytes(1, false, &[], b""))
            .await
            .unwrap();
        let (out, status) = read_response(&mut second).await;
        assert_eq!(status, ProtocolStatus::Overloaded);
        assert!(out.is_empty());
        gate.notify_one();
        let (out, status) = read_response(&mut first).await;
        assert_eq!(status, ProtocolStatus::RequestComplete);
        assert!(out.ends_with(b"released"));
    }

    struct IgnoreBody;
    impl Handler for IgnoreBody {
        async fn call(&self, _req: Request) -> Result<Response, BoxError> {
            Ok(Response::new(Body::from("ignored")))
        }
    }

    #[tokio::test]
    async fn unread_body_is_drained_and_connection_reused() {
        let mut io = spawn(shared(IgnoreBody, 4));
        let body = vec![7u8; 300 * 1024];
        let len = body.len().to_string();
        for _ in 0..2 {
            let req = request_bytes(1, true, &[("CONTENT_LENGTH", &len)], &body);
            // Write and read concurrently: the server answers before reading the body.
            let (mut rd, mut wr) = tokio::io::split(&mut io);
            let writer = async move { wr.write_all(&req).await.unwrap() };
            let reader = async {
                let mut dec = ClientDecoder::default();
                let mut buf = BytesMut::new();
                loop {
                    while let Some(rec) = dec.decode(&mut buf).unwrap() {
                        if let ResponseRecord::EndRequest {
                            protocol_status, ..
                        } = rec
                        {
                            return protocol_status;
                        }
                    }
                    assert!(rd.read_buf(&mut buf).await.unwrap() > 0);
                }
            };
            let ((), status) = tokio::join!(writer, reader);
            assert_eq!(status, ProtocolStatus::RequestComplete);
        }
    }

    #[tokio::test]
    async fn malformed_record_closes_only_that_connection() {
        let shared = shared(Echo, 4);
        let mut bad = spawn(Arc::clone(&shared));
        bad.write_all(&[2, 1, 0, 1, 0, 8, 0, 0]).await.unwrap();
        let mut rest = Vec::new();
        bad.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        let mut good = spawn(shared);
        good.write_all(&request_bytes(1, false, &[], b""))
            .await
            .unwrap();
        let (_, status) = read_response(&mut good).await;
        assert_eq!(status, ProtocolStatus::RequestComplete);
    }

    /// Answers without reading the request body, as a GET handler does.
    struct Hello;
    impl Handler for Hello {
        async fn call(&self, _req: Request) -> Result<Response, BoxError> {
            Ok(Response::new(Body::from("hello")))
        }
    }

    /// A request without FCGI_KEEP_CONN whose empty FCGI_STDIN has not been sent yet (Caddy
    /// sends it in a write of its own), with a body of `content_length` when given: the
    /// server answers, and the client reads to the end.
    async fn answered_before_the_request_ended(
        content_length: Option<&str>,
    ) -> (DuplexStream, tokio::task::JoinHandle<()>) {
        let (mut io, server) = tokio::io::duplex(64 * 1024);
        let task = tokio::spawn(serve(server, "test-peer", shared(Hello, 4)));
        let mut p = ParamsBuilder::new(Limits::default());
        p.push(b"REQUEST_URI", b"/").unwrap();
        if let Some(len) = content_length {
            p.push(b"CONTENT_LENGTH", len.as_bytes()).unwrap();
        }
        let mut out = BytesMut::new();
        encode_request(1, Role::Responder, false, &p.finish(), &mut out);
        io.write_all(&out).await.unwrap();
        let (out, status) = read_response(&mut io).await;
        assert_eq!(status, ProtocolStatus::RequestComplete);
        assert!(out.ends_with(b"hello"));
        let mut rest = Vec::new();
        io.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "nothing may follow END_REQUEST");
        (io, task)
    }

    #[tokio::test]
    async fn the_end_of_a_request_sent_after_its_response_is_still_read() {
        let (mut io, task) = answered_before_the_request_ended(None).await;
        let mut end = BytesMut::new();
        encode_stdin(1, b"", &mut end);
        // A server that closed at END_REQUEST fails this write (EPIPE on a unix socket, a
        // reset over TCP): the web server answers 502.
        io.write_all(&end)
            .await
            .expect("the server still reads after its response");
        drop(io);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn discarding_an_unread_body_is_bounded_by_the_body_deadline() {
        let (_io, task) = answered_before_the_request_ended(Some("1000000")).await;
        // The client sends nothing more and never closes: the body deadline (body_timeout
        // without a byte) ends the wait.
        let started = tokio::time::Instant::now();
        task.await.unwrap();
        let waited = started.elapsed();
        let body = crate::driver::Timeouts::default().body;
        assert!(
            waited >= body && waited < body + Duration::from_secs(1),
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn an_unread_declared_body_is_discarded_whole_and_no_more() {
        // 8 MiB declared and not read by the handler: all of it is taken (a web server
        // still sending it would otherwise fail its request), then the connection ends.
        const DECLARED: u64 = 8 << 20;
        let (mut io, task) = answered_before_the_request_ended(Some("8388608")).await;
        let chunk = vec![0u8; 64 * 1024];
        let mut sent = 0u64;
        while io.write_all(&chunk).await.is_ok() {
            sent += chunk.len() as u64;
            assert!(sent <= 2 * DECLARED, "never cut off");
        }
        assert!(sent >= DECLARED, "cut off before the declared body: {sent}");
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn stalled_request_body_closes_after_idle_timeout() {
        let mut io = spawn(shared(Echo, 4));
        let mut p = ParamsBuilder::new(Limits::default());
        p.push(b"CONTENT_LENGTH", b"10").unwrap();
        let mut out = BytesMut::new();
        encode_request(1, Role::Responder, false, &p.finish(), &mut out);
        encode_stdin(1, b"12345", &mut out);
        io.write_all(&out).await.unwrap();
        // No more STDIN ever comes: the paused clock runs to the 5 s idle timeout.
        let started = tokio::time::Instant::now();
        let mut rest = Vec::new();
        io.read_to_end(&mut rest).await.unwrap();
        assert!(started.elapsed() >= Duration::from_secs(5));
        assert!(
            !rest.windows(2).any(|w| w == [1, 3]),
            "no END_REQUEST for a request whose body never came"
        );
    }

    /// An endless response body that counts what the driver pulled from it.
    struct Endless(Arc<std::sync::atomic::AtomicUsize>);

    impl http_body::Body for Endless {
        type Data = bytes::Bytes;
        type Error = BoxError;

        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, BoxError>>> {
            self.0
                .fetch_add(FRAME, std::sync::atomic::Ordering::Relaxed);
            std::task::Poll::Ready(Some(Ok(http_body::Frame::data(bytes::Bytes::from_static(
                &[b'x'; FRAME],
            )))))
        }
    }

    const FRAME: usize = 16 * 1024;

    struct Stream(Arc<std::sync::atomic::AtomicUsize>);
    impl Handler for Stream {
        async fn call(&self, _req: Request) -> Result<Response, BoxError> {
            Ok(Response::new(Body::new(Endless(Arc::clone(&self.0)))))
        }
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_stops_the_response_body_at_max_queued_output() {
        use appserver_proto::limits::MAX_QUEUED_OUTPUT;
        let pulled = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(serve(
            server,
            "test-peer",
            super::super::test_shared(Stream(Arc::clone(&pulled)), 4, "fcgi"),
        ));
        client
            .write_all(&request_bytes(1, false, &[], b""))
            .await
            .unwrap();
        // The client never reads: give the driver every chance to run ahead.
        for _ in 0..10_000 {
            tokio::task::yield_now().await;
        }
        let pulled = pulled.load(std::sync::atomic::Ordering::Relaxed);
        // At the limit: the output queue, the duplex pipe and the frame that crossed it.
        assert!(pulled >= MAX_QUEUED_OUTPUT, "pulled only {pulled}");
        assert!(
            pulled <= MAX_QUEUED_OUTPUT + 64 * 1024 + 2 * FRAME,
            "pulled {pulled} bytes from a body nobody reads"
        );
        drop(client);
    }
}
