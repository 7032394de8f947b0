//! Requests per second through a real unix socket: the FastCGI driver, the request model and a
//! hello handler, against a client that speaks FastCGI like nginx: with `fastcgi_keep_conn on`
//! (one connection, request after request) and without it (a connection per request, closed
//! by the server after its response: accept, read, write, close, as most sites run it).
//!
//! Run with `cargo bench --bench end_to_end`. The figure to compare is the time per request
//! against the codec-only figure of `proto/benches/codec.rs` in the same run: the difference
//! is what the socket, the runtime and the handler call cost. `_observed` runs the handler as
//! `runfcgi` does, inside `status::Observed` with a scoreboard and an access log: the
//! difference to the bare one is what observability costs per request. `prefork_` rows run
//! the appserver binary itself (`method=prefork`, one worker, the `info` app): the process
//! model and its accept loop on top, as a site runs it. `end_to_end_download` is a 1 MiB
//! response in 64 KiB chunks over a kept-alive connection: the output path per byte.
#![allow(missing_docs)] // criterion_group!/criterion_main! generate undocumented items

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use appserver::driver::{self, Shared};
use appserver::request::{Gateway, RequestOptions};
use appserver::{Body, BoxError, Handler, Request, Response};
use appserver_proto::fcgi::{encode_request, encode_stdin, ClientDecoder, ResponseRecord, Role};
use appserver_proto::params::ParamsBuilder;
use appserver_proto::Limits;
use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tokio::sync::Semaphore;

struct Hello;

impl Handler for Hello {
    async fn call(&self, _req: Request) -> Result<Response, BoxError> {
        Ok(Response::new(Body::from("Hello, world\n")))
    }
}

/// The size of [`Download`]'s response: 1 MiB.
const DOWNLOAD_LEN: usize = 1024 * 1024;

/// The chunk [`Download`] hands over, 64 KiB of one static buffer: no allocation and no copy
/// in the app, so the row shows what the server does with a large body.
static CHUNK: [u8; 64 * 1024] = [b'x'; 64 * 1024];

/// A 1 MiB response in 64 KiB chunks of [`CHUNK`].
struct Download;

impl Handler for Download {
    async fn call(&self, _req: Request) -> Result<Response, BoxError> {
        Ok(Response::new(Body::new(Chunks { left: DOWNLOAD_LEN })))
    }
}

/// [`Download`]'s body: `left` more bytes of [`CHUNK`].
struct Chunks {
    left: usize,
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        let n = self.left.min(CHUNK.len());
        self.left -= n;
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(
            &CHUNK[..n],
        )))))
    }
}

/// A hello request; `keep_conn` as nginx's `fastcgi_keep_conn`.
fn request(keep_conn: bool) -> BytesMut {
    let mut p = ParamsBuilder::new(Limits::default());
    for (n, v) in [
        ("REQUEST_METHOD", "GET"),
        ("REQUEST_URI", "/hello?x=1"),
        ("QUERY_STRING", "x=1"),
        ("SCRIPT_NAME", "/hello"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("SERVER_NAME", "localhost"),
        ("SERVER_PORT", "80"),
        ("REMOTE_ADDR", "127.0.0.1"),
        ("CONTENT_LENGTH", ""),
        ("HTTP_HOST", "localhost"),
        ("HTTP_USER_AGENT", "bench"),
        ("HTTP_ACCEPT", "*/*"),
    ] {
        p.push(n.as_bytes(), v.as_bytes())
            .expect("bench params fit the limits");
    }
    let mut out = BytesMut::new();
    encode_request(1, Role::Responder, keep_conn, &p.finish(), &mut out);
    encode_stdin(1, b"", &mut out);
    out
}

/// Serves `handler` over FastCGI on a unix socket at `path` on `runtime`.
fn serve<H: Handler>(runtime: &tokio::runtime::Runtime, path: &std::path::Path, handler: H) {
    let listener = {
        let _guard = runtime.enter();
        tokio::net::UnixListener::bind(path).expect("bind")
    };
    let shared = Arc::new(Shared {
        handler,
        requests: Arc::new(Semaphore::new(64)),
        max_requests: 64,
        max_conns: 64,
        options: RequestOptions::default(),
        gateway: Gateway {
            protocol: "fcgi",
            method: "threaded",
        },
        limits: Limits::default(),
        protocol: driver::Protocol::Fcgi,
        timeouts: driver::Timeouts::default(),
        shutdown: Default::default(),
        load: Arc::default(),
    });
    runtime.spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(driver::fcgi::serve(stream, "bench", Arc::clone(&shared)));
        }
    });
}

/// One request after the other on one kept-alive connection to `path`.
fn keepalive_requests(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    path: &std::path::Path,
) {
    let mut stream = UnixStream::connect(path).expect("connect");
    let req = request(true);
    let mut decoder = ClientDecoder::default();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    group.bench_function(name, |b| {
        b.iter(|| {
            stream.write_all(&req).expect("write");
            loop {
                if let Some(ResponseRecord::EndRequest { .. }) =
                    decoder.decode(&mut buf).expect("valid response")
                {
                    break;
                }
                if decoder_has_more(&buf) {
                    continue;
                }
                let n = stream.read(&mut chunk).expect("read");
                assert!(n > 0, "server closed the connection");
                buf.extend_from_slice(&chunk[..n]);
            }
        });
    });
}

/// One request per connection, as nginx without `fastcgi_keep_conn`: connect, send the
/// request, read until the server closes.
fn one_request_per_connection(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    path: &std::path::Path,
) {
    let req = request(false);
    let mut chunk = vec![0u8; 64 * 1024];
    group.bench_function(name, |b| {
        b.iter(|| {
            let mut stream = UnixStream::connect(path).expect("connect");
            stream.write_all(&req).expect("write");
            let mut got = 0;
            loop {
                let n = stream.read(&mut chunk).expect("read");
                if n == 0 {
                    break;
                }
                got += n;
            }
            assert!(got > 0, "the server closed without a response");
        });
    });
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("end_to_end");
    group.throughput(Throughput::Elements(1));
    // Before: the bare handler, no scoreboard in the process.
    let plain = dir.path().join("bench.sock");
    serve(&runtime, &plain, Hello);
    keepalive_requests(&mut group, "fcgi_keepalive_hello_unix", &plain);
    one_request_per_connection(&mut group, "fcgi_connection_per_request_hello_unix", &plain);
    // After: what runfcgi runs, the app observed (scoreboard, counters, access log).
    appserver::status::bench::install(Some(dir.path().join("access.log"))).expect("status");
    let observed = dir.path().join("observed.sock");
    serve(
        &runtime,
        &observed,
        appserver::status::Observed::new(Hello, None, None, "fcgi"),
    );
    keepalive_requests(&mut group, "fcgi_keepalive_hello_unix_observed", &observed);
    one_request_per_connection(
        &mut group,
        "fcgi_connection_per_request_hello_unix_observed",
        &observed,
    );
    // The whole server: a prefork worker's accept loop, the process model, the info app.
    let prefork = dir.path().join("prefork.sock");
    let _server = PreforkServer::start(&prefork);
    keepalive_requests(&mut group, "prefork_keepalive_info_unix", &prefork);
    one_request_per_connection(
        &mut group,
        "prefork_connection_per_request_info_unix",
        &prefork,
    );
    group.finish();

    // A large body: what the output path costs per byte. One connection keeps its buffers in
    // cache, so the copy of every chunk the output used to make showed here as only 2-8 %
    // (264-270 µs per MiB against 245-265 without), where behind nginx with fifty
    // connections it was nearly half the server's CPU (docs/performance.md, "The hot path").
    let mut group = c.benchmark_group("end_to_end_download");
    group.throughput(Throughput::Bytes(DOWNLOAD_LEN as u64));
    let download = dir.path().join("download.sock");
    serve(&runtime, &download, Download);
    keepalive_requests(&mut group, "fcgi_keepalive_1mib_unix", &download);
    group.finish();
}

/// How long the prefork server may take to say it is ready.
const READY_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// `appserver runfcgi method=prefork` with one worker on a unix socket, stopped on drop.
struct PreforkServer(Child);

impl PreforkServer {
    /// Starts the server and returns once it says it is ready, within [`READY_WITHIN`].
    fn start(socket: &std::path::Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_appserver"))
            .args([
                "runfcgi",
                "method=prefork",
                "maxchildren=1",
                "minspare=1",
                "maxspare=1",
                "daemonize=false",
            ])
            .arg(format!("socket={}", socket.display()))
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start appserver");
        let stderr = child.stderr.take().expect("stderr");
        let server = PreforkServer(child);
        // Its lines are read (and later ones drained, so that a full pipe never stops it) on
        // a thread of their own, so a server that never says it is ready fails the bench
        // instead of hanging it.
        let (ready_tx, ready) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("ready:") {
                    let _ = ready_tx.send(());
                }
            }
        });
        if ready.recv_timeout(READY_WITHIN).is_err() {
            panic!("appserver did not say it was ready within {READY_WITHIN:?} (or exited)");
        }
        server
    }
}

impl Drop for PreforkServer {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.0.wait();
    }
}

/// True when a whole record header is buffered, so decoding again may yield a record.
fn decoder_has_more(buf: &BytesMut) -> bool {
    if buf.len() < 8 {
        return false;
    }
    let content = usize::from(u16::from_be_bytes([buf[4], buf[5]]));
    buf.len() >= 8 + content + usize::from(buf[6])
}

criterion_group!(benches, bench);
criterion_main!(benches);
