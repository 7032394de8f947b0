//! The engine against hostile and broken peers, on a paused clock: floods that never read,
//! silent connections, trickled bodies, heads at the size limit, answers before the body,
//! handlers past `request_timeout`, requests waiting for a slot; and a graceful stop.

use std::sync::Arc;
use std::time::Duration;

use appserver_proto::ajp::encode_cping;
use appserver_proto::fcgi::{
    encode_request, encode_stdin, ClientDecoder, ProtocolStatus, ResponseRecord, Role,
};
use appserver_proto::params::ParamsBuilder;
use appserver_proto::scgi::encode_request as scgi_request;
use appserver_proto::{Limits, Output};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::time::Instant;

use crate::driver::{ajp, fcgi, scgi, test_shared, Shared, Timeouts};
use crate::{Body, BoxError, Handler, Request, Response};

/// Reads the body to its end, then answers how many bytes it had.
struct Count;
impl Handler for Count {
    async fn call(&self, req: Request) -> Result<Response, BoxError> {
        let n = req.into_body().collect_bytes().await?.len();
        Ok(Response::new(Body::from(n.to_string())))
    }
}

/// Never answers.
struct Hang;
impl Handler for Hang {
    async fn call(&self, _req: Request) -> Result<Response, BoxError> {
        std::future::pending().await
    }
}

fn fcgi_request(pairs: &[(&str, &str)], body: Option<&[u8]>) -> BytesMut {
    fcgi_request_kept(pairs, body, false)
}

/// A request, with `FCGI_KEEP_CONN` when `keep_conn`; `body: Some(b"")` sends the empty
/// STDIN alone.
fn fcgi_request_kept(pairs: &[(&str, &str)], body: Option<&[u8]>, keep_conn: bool) -> BytesMut {
    let mut p = ParamsBuilder::new(Limits::default());
    for (n, v) in pairs {
        p.push(n.as_bytes(), v.as_bytes()).unwrap();
    }
    let mut out = BytesMut::new();
    encode_request(1, Role::Responder, keep_conn, &p.finish(), &mut out);
    if let Some(body) = body {
        if !body.is_empty() {
            encode_stdin(1, body, &mut out);
        }
        encode_stdin(1, b"", &mut out);
    }
    out
}

/// Reads records until END_REQUEST: (stdout, protocol status), or `None` at EOF.
async fn fcgi_response(io: &mut DuplexStream) -> Option<(String, ProtocolStatus)> {
    let mut dec = ClientDecoder::default();
    let mut buf = BytesMut::new();
    let mut stdout = Vec::new();
    loop {
        while let Some(rec) = dec.decode(&mut buf).unwrap() {
            match rec {
                ResponseRecord::Stdout { data, .. } => stdout.extend_from_slice(&data),
                ResponseRecord::EndRequest {
                    protocol_status, ..
                } => return Some((String::from_utf8(stdout).unwrap(), protocol_status)),
                _ => {}
            }
        }
        if io.read_buf(&mut buf).await.unwrap_or(0) == 0 {
            return None;
        }
    }
}

fn spawn_fcgi<H: Handler>(shared: Arc<Shared<H>>) -> (DuplexStream, tokio::task::JoinHandle<()>) {
    let (client, server) = tokio::io::duplex(64 * 1024);
    (
        client,
        tokio::spawn(fcgi::serve(server, "test-peer", shared)),
    )
}

/// Writes `chunk` until the server stops reading (a write makes no progress for a second)
/// or closes; returns the bytes written.
async fn flood(io: &mut DuplexStream, chunk: &[u8], limit: usize) -> usize {
    let mut sent = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(1), io.write_all(chunk)).await {
            Ok(Ok(())) => sent += chunk.len(),
            Ok(Err(_)) | Err(_) => return sent,
        }
        assert!(sent < limit, "the server kept reading: {sent} bytes");
    }
}

#[tokio::test(start_paused = true)]
async fn a_management_record_flood_that_never_reads_is_bounded_and_cut_at_send_timeout() {
    let mut shared = test_shared(Count, 4, "fcgi");
    // No head deadline either, so the send deadline alone must end it.
    Arc::get_mut(&mut shared).unwrap().timeouts.header = Duration::from_secs(3600);
    let (mut io, task) = spawn_fcgi(shared);
    // Unknown management type 0x20, each answered with a 16-byte FCGI_UNKNOWN_TYPE.
    let chunk = [1u8, 0x20, 0, 0, 0, 0, 0, 0].repeat(1024);
    let sent = flood(&mut io, &chunk, 4 << 20).await;
    // Input stops once MAX_QUEUED_OUTPUT (256 KiB) of replies is owed: about 128 KiB of
    // records, plus what the pipe and one read buffer hold.
    assert!(sent < 1 << 20, "{sent}");
    let stalled = Instant::now();
    task.await.unwrap();
    let waited = stalled.elapsed();
    let send = Timeouts::default().send;
    assert!(
        waited <= send && waited + Duration::from_secs(2) >= send,
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_cping_flood_that_never_reads_is_bounded_and_cut_at_send_timeout() {
    let mut shared = test_shared(Count, 4, "ajp");
    Arc::get_mut(&mut shared).unwrap().timeouts.header = Duration::from_secs(3600);
    let (mut io, server) = tokio::io::duplex(64 * 1024);
    let config = appserver_proto::ajp::AjpConfig::default();
    let task = tokio::spawn(ajp::serve(server, "test-peer", shared, config));
    let mut chunk = BytesMut::new();
    for _ in 0..2048 {
        encode_cping(&mut chunk);
    }
    let sent = flood(&mut io, &chunk, 4 << 20).await;
    assert!(sent < 1 << 20, "{sent}");
    let stalled = Instant::now();
    task.await.unwrap();
    assert!(stalled.elapsed() <= Timeouts::default().send);
}

#[tokio::test(start_paused = true)]
async fn a_silent_connection_is_closed_at_header_timeout_from_accept() {
    let shared = test_shared(Count, 4, "fcgi");
    let header = shared.timeouts.header;
    let (mut io, task) = spawn_fcgi(shared);
    let accepted = Instant::now();
    let mut rest = Vec::new();
    io.read_to_end(&mut rest).await.unwrap();
    task.await.unwrap();
    assert_eq!(accepted.elapsed(), header);
    assert!(rest.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_trickled_body_frees_its_slot_at_body_timeout() {
    let shared = test_shared(Count, 1, "fcgi");
    let (mut io, task) = spawn_fcgi(Arc::clone(&shared));
    io.write_all(&fcgi_request(&[("CONTENT_LENGTH", "100000")], None))
        .await
        .unwrap();
    let started = Instant::now();
    // One byte every 3 s: never a 20 s pause, but far below body_min_rate.
    let mut one = BytesMut::new();
    encode_stdin(1, b"x", &mut one);
    while !task.is_finished() {
        if io.write_all(&one).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    task.await.unwrap();
    let body = Timeouts::default().body;
    let took = started.elapsed();
    assert!(
        took >= body && took <= body + Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(shared.requests.available_permits(), 1, "the slot is free");
}

#[tokio::test(start_paused = true)]
async fn a_body_at_the_minimum_rate_is_served() {
    let (mut io, task) = spawn_fcgi(test_shared(Count, 1, "fcgi"));
    // 40 s at 600 B/s: past body_timeout, above body_min_rate.
    io.write_all(&fcgi_request(&[("CONTENT_LENGTH", "24000")], None))
        .await
        .unwrap();
    let mut chunk = BytesMut::new();
    encode_stdin(1, &[b'x'; 600], &mut chunk);
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        io.write_all(&chunk).await.unwrap();
    }
    let mut end = BytesMut::new();
    encode_stdin(1, b"", &mut end);
    io.write_all(&end).await.unwrap();
    let (out, _) = fcgi_response(&mut io).await.expect("answered");
    assert!(out.ends_with("24000"), "{out}");
    drop(io);
    task.await.unwrap();
}

fn scgi_head_of(bytes: usize) -> BytesMut {
    let mut p = ParamsBuilder::new(Limits::default().with_max_params_bytes(1 << 20));
    p.push(b"REQUEST_URI", b"/").unwrap();
    // Values are capped at 32 KiB each: several headers make the size.
    for i in 0..bytes / (30 * 1024) {
        p.push(format!("HTTP_X_BIG_{i}").as_bytes(), &[b'a'; 30 * 1024])
            .unwrap();
    }
    let mut out = BytesMut::new();
    scgi_request(&p.finish(), 0, &mut out);
    out
}

async fn scgi_exchange(max_params: usize, head: &[u8]) -> String {
    let mut shared = test_shared(Count, 1, "scgi");
    Arc::get_mut(&mut shared).unwrap().limits = Limits::default().with_max_params_bytes(max_params);
    let (mut io, server) = tokio::io::duplex(64 * 1024);
    let task = tokio::spawn(scgi::serve(server, "test-peer", shared));
    let (mut rd, mut wr) = tokio::io::split(&mut io);
    let write = async {
        let _ = wr.write_all(head).await;
    };
    let mut out = Vec::new();
    let read = rd.read_to_end(&mut out);
    let (_, read) = tokio::join!(write, read);
    read.unwrap();
    task.await.unwrap();
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn an_scgi_head_up_to_maxparams_is_served_beyond_it_closed() {
    // 200 KiB of headers, three times the read buffer.
    let head = scgi_head_of(200 * 1024);
    let out = scgi_exchange(262_144, &head).await;
    assert!(out.starts_with("Status: 200 OK\r\n"), "{out:.100}");
    let out = scgi_exchange(128 * 1024, &head).await;
    assert!(out.is_empty(), "{out:.100}");
}

#[tokio::test(start_paused = true)]
async fn request_timeout_cancels_the_handler_and_answers_504() {
    let mut shared = test_shared(Hang, 1, "fcgi");
    Arc::get_mut(&mut shared).unwrap().timeouts.request = Some(Duration::from_secs(7));
    let (mut io, task) = spawn_fcgi(Arc::clone(&shared));
    let started = Instant::now();
    io.write_all(&fcgi_request(&[("REQUEST_URI", "/slow")], Some(b"")))
        .await
        .unwrap();
    let (out, status) = fcgi_response(&mut io).await.expect("answered");
    assert_eq!(started.elapsed(), Duration::from_secs(7));
    assert_eq!(status, ProtocolStatus::RequestComplete);
    assert!(out.starts_with("Status: 504 Gateway Timeout\r\n"), "{out}");
    drop(io);
    task.await.unwrap();
    assert_eq!(shared.requests.available_permits(), 1, "the slot is free");
}

struct Gate(Arc<tokio::sync::Notify>);
impl Handler for Gate {
    async fn call(&self, _req: Request) -> Result<Response, BoxError> {
        self.0.notified().await;
        Ok(Response::new(Body::from("released")))
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_over_the_limit_waits_queue_timeout_for_a_slot() {
    let gate = Arc::new(tokio::sync::Notify::new());
    let mut shared = test_shared(Gate(Arc::clone(&gate)), 1, "fcgi");
    Arc::get_mut(&mut shared).unwrap().timeouts.queue = Duration::from_secs(10);
    let (mut first, _t1) = spawn_fcgi(Arc::clone(&shared));
    first
        .write_all(&fcgi_request(&[], Some(b"")))
        .await
        .unwrap();
    while shared.requests.available_permits() != 0 {
        tokio::task::yield_now().await;
    }
    // The second waits; when the first ends within the wait, it is served.
    let (mut second, _t2) = spawn_fcgi(Arc::clone(&shared));
    second
        .write_all(&fcgi_request(&[], Some(b"")))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(9)).await;
    gate.notify_one();
    let (out, status) = fcgi_response(&mut first).await.unwrap();
    assert_eq!(status, ProtocolStatus::RequestComplete, "{out}");
    gate.notify_one();
    let (out, status) = fcgi_response(&mut second).await.unwrap();
    assert_eq!(status, ProtocolStatus::RequestComplete);
    assert!(out.ends_with("released"), "{out}");
    // A third, with the slot held past queue_timeout, is refused after exactly that.
    let (mut third, _t3) = spawn_fcgi(Arc::clone(&shared));
    let (mut fourth, _t4) = spawn_fcgi(Arc::clone(&shared));
    third
        .write_all(&fcgi_request(&[], Some(b"")))
        .await
        .unwrap();
    while shared.requests.available_permits() != 0 {
        tokio::task::yield_now().await;
    }
    let asked = Instant::now();
    fourth
        .write_all(&fcgi_request(&[], Some(b"")))
        .await
        .unwrap();
    let (out, status) = fcgi_response(&mut fourth).await.unwrap();
    assert_eq!(status, ProtocolStatus::Overloaded);
    assert!(out.is_empty());
    assert_eq!(asked.elapsed(), Duration::from_secs(10));
}

/// A connection accepted as `arrival` of `shared`'s process, served on its own task.
fn spawn_arriving<H: Handler>(
    shared: &Arc<Shared<H>>,
) -> (DuplexStream, tokio::task::JoinHandle<()>) {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let arrival = shared.load.arrive();
    let shared = Arc::clone(shared);
    let task = tokio::spawn(async move {
        crate::driver::serve(server, "test-peer", shared, None, Some(arrival)).await;
    });
    (client, task)
}

/// Whether `load.room(capacity)` is there now (after letting every task run).
async fn room_now(shared: &Arc<Shared<Gate>>, capacity: usize) -> bool {
    tokio::time::timeout(Duration::ZERO, shared.load.room(capacity))
        .await
        .is_ok()
}

#[tokio::test(start_paused = true)]
async fn a_connection_counts_against_the_room_until_its_request_is_admitted() {
    let gate = Arc::new(tokio::sync::Notify::new());
    let shared = test_shared(Gate(Arc::clone(&gate)), 1, "fcgi");
    let (mut io, _task) = spawn_arriving(&shared);
    // Accepted, nothing read yet: a prefork worker (room for one request) takes no other.
    let grace = crate::driver::ARRIVAL_GRACE;
    tokio::time::sleep(grace / 4).await;
    assert!(!room_now(&shared, 1).await);
    // Half a head, and a pause within the grace: still arriving.
    let request = fcgi_request(&[("REQUEST_METHOD", "GET")], Some(b""));
    let (first, rest) = request.split_at(12);
    io.write_all(first).await.unwrap();
    tokio::time::sleep(grace / 2).await;
    assert!(!room_now(&shared, 1).await);
    // Admitted: in flight, no longer arriving (room for a second of two).
    io.write_all(rest).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(shared.load.in_flight(), 1);
    assert!(!room_now(&shared, 1).await);
    assert!(room_now(&shared, 2).await);
    gate.notify_one();
    let (out, status) = fcgi_response(&mut io).await.unwrap();
    assert_eq!(status, ProtocolStatus::RequestComplete, "{out}");
    assert!(room_now(&shared, 1).await);
}

#[tokio::test(start_paused = true)]
async fn a_silent_connection_stops_counting_against_the_room_after_the_grace() {
    let shared = test_shared(Gate(Arc::new(tokio::sync::Notify::new())), 1, "fcgi");
    let accepted = Instant::now();
    let (_io, _task) = spawn_arriving(&shared);
    shared.load.room(1).await;
    assert_eq!(accepted.elapsed(), crate::driver::ARRIVAL_GRACE);
}

/// A stream that counts the writes made to it.
struct CountWrites {
    inner: DuplexStream,
    writes: Arc<std::sync::atomic::AtomicUsize>,
}

impl tokio::io::AsyncRead for CountWrites {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for CountWrites {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Answers a fixed short body.
struct Hello;
impl Handler for Hello {
    async fn call(&self, _req: Request) -> Result<Response, BoxError> {
        Ok(Response::new(Body::from("Hello, world\n")))
    }
}

#[tokio::test]
async fn a_short_response_goes_out_in_one_write() {
    let shared = test_shared(Hello, 4, "fcgi");
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let writes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let io = CountWrites {
        inner: server,
        writes: Arc::clone(&writes),
    };
    let task = tokio::spawn(fcgi::serve(io, "test-peer", shared));
    client
        .write_all(&fcgi_request(&[("REQUEST_METHOD", "GET")], Some(b"")))
        .await
        .unwrap();
    let (out, status) = fcgi_response(&mut client).await.unwrap();
    assert_eq!(status, ProtocolStatus::RequestComplete);
    assert!(out.ends_with("Hello, world\n"), "{out}");
    task.await.unwrap();
    // Head, body and END_REQUEST: one write, not one each.
    assert_eq!(writes.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn output_joins_unwritten_bytes_up_to_max_coalesced_output() {
    use super::{joins_write_buffer, MAX_COALESCED_OUTPUT};
    // An empty write buffer takes any amount (the buffers are swapped).
    assert!(joins_write_buffer(0, 10 * MAX_COALESCED_OUTPUT));
    // Behind unwritten bytes: up to the limit together, not a byte more.
    assert!(joins_write_buffer(1, MAX_COALESCED_OUTPUT - 1));
    assert!(!joins_write_buffer(1, MAX_COALESCED_OUTPUT));
    // Nothing queued: nothing to move.
    assert!(!joins_write_buffer(0, 0));
}

#[test]
fn a_waiting_connection_keeps_output_buffers_up_to_idle_output_keep() {
    use super::{keep_while_idle, IDLE_OUTPUT_KEEP};
    let mut at_limit = Output::new();
    at_limit.buf().reserve(IDLE_OUTPUT_KEEP);
    let kept = at_limit.capacity();
    keep_while_idle(&mut at_limit);
    assert_eq!(at_limit.capacity(), kept);
    let mut over = Output::new();
    over.buf().reserve(IDLE_OUTPUT_KEEP + 1);
    assert!(over.capacity() > IDLE_OUTPUT_KEEP);
    keep_while_idle(&mut over);
    assert_eq!(over.capacity(), 0);
}

/// Answers at once, or for `PATH_INFO=/slow` once `gate` is opened (saying so on `started`).
struct Gated {
    started: Arc<tokio::sync::Notify>,
    gate: Arc<tokio::sync::Notify>,
}
impl Handler for Gated {
    async fn call(&self, req: Request) -> Result<Response, BoxError> {
        if req.uri().path() == "/slow" {
            self.started.notify_one();
            self.gate.notified().await;
        }
        Ok(Response::new(Body::from(req.uri().path().to_owned())))
    }
}

fn keep_conn_request(path: &str) -> BytesMut {
    fcgi_request_kept(&[("PATH_INFO", path)], Some(b""), true)
}

/// A graceful stop (`Shared::shutdown`) closes a connection that waits between requests at
/// once, and lets one whose request is in flight answer it first.
#[tokio::test(start_paused = true)]
async fn a_graceful_stop_closes_waiting_connections_and_lets_busy_ones_answer() {
    let started = Arc::new(tokio::sync::Notify::new());
    let gate = Arc::new(tokio::sync::Notify::new());
    let handler = Gated {
        started: Arc::clone(&started),
        gate: Arc::clone(&gate),
    };
    let shared = test_shared(handler, 4, "fcgi");
    let (mut waiting, waiting_task) = spawn_fcgi(Arc::clone(&shared));
    waiting
        .write_all(&keep_conn_request("/quick"))
        .await
        .unwrap();
    let (out, _) = fcgi_response(&mut waiting).await.expect("answered");
    assert!(out.ends_with("/quick"), "{out}");
    let (mut busy, busy_task) = spawn_fcgi(Arc::clone(&shared));
    busy.write_all(&keep_conn_request("/slow")).await.unwrap();
    started.notified().await;

    let stop = Instant::now();
    shared.shutdown.cancel();
    assert!(shared.shutdown.is_cancelled());
    let closed = tokio::time::timeout(Duration::from_secs(1), fcgi_response(&mut waiting))
        .await
        .expect("the waiting connection is closed at the stop");
    assert_eq!(closed, None, "closed, not served");
    waiting_task.await.unwrap();
    assert_eq!(stop.elapsed(), Duration::ZERO, "at once");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        !busy_task.is_finished(),
        "the busy connection waits for its answer"
    );
    gate.notify_one();
    let (out, _) = fcgi_response(&mut busy).await.expect("answered");
    assert!(out.ends_with("/slow"), "{out}");
    assert_eq!(fcgi_response(&mut busy).await, None, "then closed");
    busy_task.await.unwrap();
}
