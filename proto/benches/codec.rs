//! Codec throughput: how long decoding a web server's request and encoding a response take,
//! with no IO involved.
//!
//! Run: `cargo bench -p appserver-proto --bench codec -- --warm-up-time 1 --measurement-time 3`.
//! Results are discussed in `docs/performance.md` ("Codec").
//!
//! - `fcgi/decode/nginx-get`: a GET captured from nginx 1.22 (stock `fastcgi_params` plus 14
//!   browser headers: 34 params, 1 072 bytes) through a fresh [`Connection`] until its events
//!   are drained. The input is copied into the (reused) read buffer each iteration, as a socket
//!   read would.
//! - `fcgi/encode/response-4k`: a typical response (an 80-byte header block, a 4 KiB body, the
//!   STDOUT terminator and `FCGI_END_REQUEST`) with the record encoders into a reused buffer.
//! - `fcgi/cycle/keep-alive`: both through one `KEEP_CONN` connection: request in, events out,
//!   response queued and drained with `poll_transmit`.

use std::hint::black_box;

use appserver_proto::fcgi::encode::{encode_end_request, encode_stdout, encode_stream_end};
use appserver_proto::fcgi::{ConnConfig, Connection, Event, ProtocolStatus, RecordType};
use appserver_proto::{Limits, Output};
use bytes::{Buf, Bytes, BytesMut};
use criterion::{Criterion, Throughput};

const NGINX_GET: &[u8] = include_bytes!("../testdata/fcgi-nginx-get.bin");

const HEADERS: &[u8] =
    b"Status: 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: 4096\r\n\r\n";

fn config() -> ConnConfig {
    ConnConfig {
        limits: Limits::default(),
        max_conns: 64,
        max_reqs: 64,
    }
}

/// Drains the events, touching each so none is optimised away; returns how many there were.
fn drain(conn: &mut Connection) -> usize {
    let mut n = 0;
    while let Some(event) = conn.poll_event() {
        if let Event::Request { params, .. } = &event {
            black_box(params.get(b"REQUEST_METHOD"));
        }
        black_box(&event);
        n += 1;
    }
    n
}

fn fcgi(c: &mut Criterion) {
    let body = vec![b'x'; 4096];
    let mut g = c.benchmark_group("fcgi");

    g.throughput(Throughput::Bytes(NGINX_GET.len() as u64));
    let mut src = BytesMut::with_capacity(16 * 1024);
    g.bench_function("decode/nginx-get", |b| {
        b.iter(|| {
            src.clear();
            src.extend_from_slice(NGINX_GET);
            let mut conn = Connection::new(config());
            conn.handle_input(&mut src)
                .expect("captured request decodes");
            assert_eq!(drain(&mut conn), 2);
        })
    });

    g.throughput(Throughput::Bytes((HEADERS.len() + body.len()) as u64));
    let mut out = BytesMut::with_capacity(16 * 1024);
    g.bench_function("encode/response-4k", |b| {
        b.iter(|| {
            out.clear();
            encode_stdout(1, black_box(HEADERS), &mut out);
            encode_stdout(1, black_box(&body), &mut out);
            encode_stream_end(RecordType::Stdout, 1, &mut out);
            encode_end_request(1, 0, ProtocolStatus::RequestComplete, &mut out);
            black_box(&out);
        })
    });

    // The same request with FCGI_KEEP_CONN set (flags byte of BEGIN_REQUEST's body).
    let mut keep = NGINX_GET.to_vec();
    keep[8 + 2] = 0x01;
    let mut conn = Connection::new(config());
    let shared_body = Bytes::from(body.clone());
    let mut queued = Output::new();
    g.throughput(Throughput::Elements(1));
    g.bench_function("cycle/keep-alive", |b| {
        b.iter(|| {
            src.clear();
            src.extend_from_slice(&keep);
            conn.handle_input(&mut src)
                .expect("captured request decodes");
            assert_eq!(drain(&mut conn), 2);
            conn.send_stdout(1, Bytes::from_static(HEADERS));
            conn.send_stdout(1, shared_body.clone());
            conn.end_request(1, 0);
            queued.advance(queued.remaining());
            conn.poll_transmit(&mut queued);
            black_box(&queued);
        })
    });
    g.finish();
}

// What `criterion_group!`/`criterion_main!` expand to, without their undocumented `pub fn`.
fn main() {
    let mut c = Criterion::default().configure_from_args();
    fcgi(&mut c);
    c.final_summary();
}
