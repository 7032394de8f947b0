//! The FastCGI driver: one connection's socket IO around `appserver_proto::fcgi::Connection`.
//!
//! One task per connection runs a single `select!` loop over: writing queued output, reading
//! input (paused while request-body chunks wait for the handler, which is the backpressure that
//! keeps a 1 GiB upload in constant memory), progress of the current request (delivering body
//! chunks, the handler's response, response body frames — pulled only while the output queue
//! is below `MAX_QUEUED_OUTPUT`), the idle/header deadline and the shutdown token. Reading and
//! writing are never blocked by each other: Apache sends STDIN while it reads STDOUT.

use std::fmt::Display;
use std::sync::Arc;

use appserver_proto::fcgi::{ConnConfig, Connection, Event, ProtocolStatus};
use appserver_proto::limits::MAX_QUEUED_OUTPUT;
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::exchange::{self, Exchange, Progress};
use super::{awaiting_body, close_lingering, write_some, ConnError, Shared, READ_BUF_SIZE};
use crate::response::into_cgi;
use crate::Handler;

/// Serves one FastCGI connection until the web server closes it, the protocol says to close,
/// an error occurs, or shutdown is requested and no request is in flight. Every reason to
/// drop the connection early is logged with the peer.
pub async fn serve<S, H>(io: S, peer: impl Display + Send + Sync, shared: Arc<Shared<H>>)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
    H: Handler,
{
    let mut driver = Driver::new(&shared);
    let result = driver.run(io, &peer, &shared).await;
    super::finish("fastcgi", &peer, result, driver.exchange.take());
}

struct Driver {
    conn: Connection,
    /// The one request in flight (web servers never multiplex, see proto's fcgi docs) and
    /// its request id.
    exchange: Option<Exchange>,
    id: u16,
    /// When an idle connection (or a request still sending its params) is given up.
    deadline: Instant,
    /// Set once bytes of a new request arrived: the header timeout runs instead of idle.
    request_started: bool,
}

impl Driver {
    fn new<H: Handler>(shared: &Shared<H>) -> Self {
        Self {
            conn: Connection::new(ConnConfig {
                limits: shared.limits,
                max_conns: shared.max_conns,
                max_reqs: shared.max_requests,
            }),
            exchange: None,
            id: 0,
            deadline: Instant::now() + shared.idle_timeout,
            request_started: false,
        }
    }

    async fn run<S, H>(
        &mut self,
        io: S,
        peer: &(dyn Display + Sync),
        shared: &Arc<Shared<H>>,
    ) -> Result<(), ConnError>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
        H: Handler,
    {
        let (mut rd, mut wr) = tokio::io::split(io);
        let mut rbuf = BytesMut::with_capacity(READ_BUF_SIZE);
        let mut wbuf = BytesMut::new();
        let mut read_closed = false;
        let mut closing = false;
        let mut body_deadline = Instant::now() + shared.idle_timeout;

        loop {
            while let Some(event) = self.conn.poll_event() {
                self.on_event(event, peer, shared);
            }
            self.conn.poll_transmit(&mut wbuf);

            let flushed = wbuf.is_empty();
            if flushed
                && self.exchange.is_none()
                && (self.conn.wants_close()
                    || read_closed
                    // A request that has started arriving is served even during a stop.
                    || (closing && rbuf.is_empty() && !self.request_started))
            {
                if self.conn.wants_close() && !read_closed {
                    // The end of the request may still be on its way (Caddy writes the empty
                    // FCGI_STDIN after the response can be complete).
                    close_lingering(&mut rd, &mut wr, &mut rbuf).await;
                } else {
                    let _ = wr.shutdown().await;
                }
                return Ok(());
            }

            let can_read = !read_closed
                && !self.exchange.as_ref().is_some_and(Exchange::is_blocked)
                && rbuf.len() < READ_BUF_SIZE;
            let room = wbuf.len() + self.conn.queued_output() < MAX_QUEUED_OUTPUT;
            let waiting = self.exchange.is_none();
            let stalled_body = !read_closed && awaiting_body(&self.exchange);

            tokio::select! {
                written = write_some(&mut wr, &mut wbuf), if !flushed => written?,
                read = rd.read_buf(&mut rbuf), if can_read => {
                    if read? == 0 {
                        read_closed = true;
                        self.conn.handle_eof(&rbuf)?;
                        if self.exchange.as_ref().is_some_and(|ex| !ex.body_done()) {
                            // The web server gave up on the request (client abort): nginx and
                            // Apache close the connection instead of sending
                            // FCGI_ABORT_REQUEST.
                            tracing::debug!(peer = %peer, "web server closed the connection mid-request");
                            return Ok(());
                        }
                    } else {
                        body_deadline = Instant::now() + shared.idle_timeout;
                        if self.exchange.is_none() && !self.request_started {
                            self.request_started = true;
                            self.deadline = Instant::now() + shared.header_timeout;
                        }
                        self.conn.handle_input(&mut rbuf)?;
                    }
                }
                progress = exchange::progress(&mut self.exchange, room, peer), if !waiting => {
                    self.on_progress(progress, shared)?;
                }
                () = tokio::time::sleep_until(self.deadline), if waiting => {
                    if self.request_started {
                        tracing::warn!(peer = %peer, "fastcgi request params not received within {}s: closing", shared.header_timeout.as_secs());
                    }
                    return Ok(());
                }
                () = tokio::time::sleep_until(body_deadline), if stalled_body => {
                    return Err(ConnError::BodyStalled(shared.idle_timeout));
                }
                () = shared.shutdown.cancelled(), if !closing => {
                    closing = true;
                }
            }
        }
    }

    fn on_event<H: Handler>(
        &mut self,
        event: Event,
        peer: &(dyn Display + Sync),
        shared: &Arc<Shared<H>>,
    ) {
        match event {
            Event::Request { id, params, .. } => {
                self.request_started = false;
                let Some(admission) = shared.try_admit() else {
                    tracing::warn!(
                        peer = %peer,
                        "maxchildren={} requests in flight: answering FCGI_OVERLOADED",
                        shared.max_requests
                    );
                    self.conn.reject_request(id, ProtocolStatus::Overloaded);
                    return;
                };
                self.id = id;
                self.exchange = Some(Exchange::start(shared, admission, params, peer));
            }
            Event::Stdin { id, data } => {
                if let Some(ex) = self.exchange.as_mut().filter(|_| id == self.id) {
                    ex.push_body(data);
                }
            }
            Event::StdinEnd { id } => {
                if let Some(ex) = self.exchange.as_mut().filter(|_| id == self.id) {
                    ex.end_body();
                }
            }
            Event::Abort { id } => {
                if id == self.id {
                    if let Some(ex) = self.exchange.take() {
                        tracing::debug!(peer = %peer, "FCGI_ABORT_REQUEST for request {id}");
                        ex.cancel();
                        self.conn.end_request(id, 0);
                        self.request_finished(shared);
                    }
                }
            }
        }
    }

    fn on_progress<H: Handler>(
        &mut self,
        progress: Progress,
        shared: &Arc<Shared<H>>,
    ) -> Result<(), ConnError> {
        match progress {
            Progress::BodyMoved => {}
            Progress::Response(resp) => {
                let (head, body) = into_cgi(resp);
                self.conn.send_stdout(self.id, &head);
                if let Some(ex) = self.exchange.as_mut() {
                    ex.stream(body);
                }
            }
            Progress::Data(data) => self.conn.send_stdout(self.id, &data),
            Progress::Done => {
                self.exchange = None;
                self.conn.end_request(self.id, 0);
                self.request_finished(shared);
            }
            // Closing without END_REQUEST tells the web server the response is incomplete
            // (nginx logs "upstream prematurely closed"); a normal end would pass a truncated
            // body off as whole.
            Progress::Failed(e) => return Err(ConnError::ResponseBody(e)),
        }
        Ok(())
    }

    fn request_finished<H: Handler>(&mut self, shared: &Shared<H>) {
        self.request_started = false;
        self.deadline = Instant::now() + shared.idle_timeout;
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
    /// sends it in a write of its own): the server answers, and the client reads to the end.
    async fn answered_before_the_request_ended() -> (DuplexStream, tokio::task::JoinHandle<()>) {
        let (mut io, server) = tokio::io::duplex(64 * 1024);
        let task = tokio::spawn(serve(server, "test-peer", shared(Hello, 4)));
        let mut p = ParamsBuilder::new(Limits::default());
        p.push(b"REQUEST_URI", b"/").unwrap();
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
        let (mut io, task) = answered_before_the_request_ended().await;
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
    async fn lingering_is_bounded_in_time() {
        let (_io, task) = answered_before_the_request_ended().await;
        // The client never closes: the server gives up after LINGER_TIMEOUT.
        let started = tokio::time::Instant::now();
        task.await.unwrap();
        let waited = started.elapsed();
        assert!(
            waited >= super::super::LINGER_TIMEOUT
                && waited < super::super::LINGER_TIMEOUT + Duration::from_secs(1),
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn lingering_is_bounded_in_bytes() {
        let (mut io, task) = answered_before_the_request_ended().await;
        // A client that keeps sending is cut off once LINGER_MAX_BYTES were discarded.
        let chunk = vec![0u8; 64 * 1024];
        let mut sent = 0;
        while io.write_all(&chunk).await.is_ok() {
            sent += chunk.len();
            assert!(sent <= 4 * super::super::LINGER_MAX_BYTES, "never cut off");
        }
        assert!(
            sent >= super::super::LINGER_MAX_BYTES,
            "cut off early: {sent}"
        );
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
