//! The connection engine against hostile and broken peers, end to end (issue 8): a running
//! server keeps answering real traffic through nginx while peers flood it without reading,
//! hold thousands of silent connections and trickle request bodies; prefork's `maxchildren`
//! is the server's limit, not each worker's; an answer sent before the request body was read
//! still reaches the client, over every protocol.
//!
//! Every load is bounded in time and stays on loopback.

use std::io::Write;
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use crate::util::apache_proxy::ApacheProxy;
use crate::util::cases;
use crate::util::client::{try_http_request, Stream};
use crate::util::command::{Listen, Server, TestCommand};
use crate::util::load::Load;
use crate::util::webserver::{FcgiPass, Nginx};

/// The memory bound under attack (issue 8): the server's peak RSS stays below this.
const MAX_RSS_UNDER_ATTACK: u64 = 32 << 20;

/// Silent connections opened at once: twice the default `maxconns=1024`.
const SILENT_CONNECTIONS: usize = 2000;

/// The longest a request through nginx may take while the silent connections are open.
const ANSWER_WITHIN: Duration = Duration::from_secs(1);

/// The axum example, `method=threaded`, on loopback TCP with `options`.
fn threaded(options: &[&str]) -> Server {
    let mut cmd = TestCommand::axum();
    cmd.args([
        "runfcgi",
        "daemonize=false",
        "method=threaded",
        "host=127.0.0.1",
        "port=0",
    ])
    .args(options);
    cmd.start()
}

/// Connections that write unknown FastCGI management records as fast as the server takes
/// them and never read a reply; returns the threads, which end when the server closes.
fn management_flood(listen: &Listen, conns: usize) -> Vec<thread::JoinHandle<u64>> {
    (0..conns)
        .map(|_| {
            let mut stream = Stream::connect(listen);
            stream.set_timeouts(Duration::from_secs(30));
            thread::spawn(move || {
                // Unknown management type 0x20: each 8-byte record owes a 16-byte reply.
                let chunk = [1u8, 0x20, 0, 0, 0, 0, 0, 0].repeat(4096);
                let mut sent = 0u64;
                while stream.write_all(&chunk).is_ok() {
                    sent += chunk.len() as u64;
                }
                sent
            })
        })
        .collect()
}

/// FastCGI requests to `/echo` (which reads its body) with a declared body that send one
/// STDIN byte every `every`, reading nothing; each thread returns how long the server took to close the connection.
fn trickle(listen: &Listen, conns: usize, every: Duration) -> Vec<thread::JoinHandle<Duration>> {
    (0..conns)
        .map(|_| {
            let mut stream = Stream::connect(listen);
            stream.set_timeouts(Duration::from_secs(30));
            thread::spawn(move || {
                let params = crate::util::client::cgi_params(
                    "POST",
                    "/echo",
                    &[("CONTENT_LENGTH", "1000000")],
                );
                let mut head = bytes::BytesMut::new();
                appserver_proto::fcgi::encode_request(
                    1,
                    appserver_proto::fcgi::Role::Responder,
                    false,
                    &params,
                    &mut head,
                );
                let started = Instant::now();
                stream.write_all(&head).expect("request head");
                let mut one = bytes::BytesMut::new();
                appserver_proto::fcgi::encode_stdin(1, b"x", &mut one);
                // Until a write fails: the server closed (a reset, or EPIPE after a FIN).
                while stream.write_all(&one).is_ok() {
                    thread::sleep(every);
                    if started.elapsed() > Duration::from_secs(60) {
                        break;
                    }
                }
                started.elapsed()
            })
        })
        .collect()
}

/// Hostile peers (issue 8, findings 1 to 3) against one running server while nginx serves
/// normal traffic: two connections flood management records and never read, 2,000
/// connections send nothing, two trickle a body a byte a second. Normal traffic sees no
/// error, a request is answered within a second while the silent connections are open, the
/// flood and the trickle are cut off, and the server's RSS stays under 32 MiB.
#[test]
fn hostile_peers_do_not_stop_the_server_or_grow_it() {
    let server = threaded(&["body_timeout=2", "send_timeout=3", "maxchildren=8"]);
    let listen = server.listen().clone();
    let nginx = Nginx::fastcgi(&listen, FcgiPass::Close);
    let load = Load::start(nginx.port(), "/", 2);
    load.wait_done(20);

    let floods = management_flood(&listen, 2);
    let trickles = trickle(&listen, 2, Duration::from_millis(500));
    let addr = listen.tcp();
    let mut silent = Vec::with_capacity(SILENT_CONNECTIONS);
    for _ in 0..SILENT_CONNECTIONS {
        match TcpStream::connect(addr) {
            Ok(s) => silent.push(s),
            Err(e) => panic!("silent connection {}: {e}", silent.len()),
        }
    }
    // With 2,000 silent connections open (and being evicted), one more request.
    let asked = Instant::now();
    let resp = try_http_request(nginx.port(), "GET", "/?under-attack", &[], &[])
        .expect("a request under attack");
    let took = asked.elapsed();
    assert_eq!(resp.status, 200, "{}", resp.text());

    // The trickled bodies free their slots after body_timeout=2 (plus scheduling).
    for t in trickles {
        let held = t.join().expect("trickle thread");
        assert!(
            held < Duration::from_secs(10),
            "a trickled body held its connection for {held:?}"
        );
    }
    // The floods are cut off once send_timeout=3 passes without the peer reading.
    for f in floods {
        let sent = f.join().expect("flood thread");
        assert!(sent < 64 << 20, "the server read {sent} bytes of flood");
    }
    let report = load.finish();
    report.print("floods, 2000 silent connections and trickled bodies");
    report.assert_none_failed("", &cases::logs(&server, &nginx));
    let peak = server.peak_rss();
    eprintln!(
        "answered in {took:?} with {SILENT_CONNECTIONS} silent connections; peak RSS {} KiB",
        peak / 1024
    );
    assert!(
        took < ANSWER_WITHIN,
        "a request took {took:?} with {SILENT_CONNECTIONS} silent connections open"
    );
    assert!(
        peak < MAX_RSS_UNDER_ATTACK,
        "peak RSS {} KiB under attack",
        peak / 1024
    );
    assert!(server.wait_log("output stalled", 1), "{}", server.log());
    assert!(
        server.wait_log("request body too slow", 2),
        "{}",
        server.log()
    );
    drop(silent);
}

/// A server that answers before it reads the request body (issue 8, finding 6): `examples/
/// hello` and a 10 MiB POST, one connection per request, through nginx over FastCGI (with
/// and without `fastcgi_keep_conn`) and SCGI, and Apache over AJP. Every response is the
/// handler's 200: none is a 502.
#[test]
fn an_answer_before_the_body_is_read_is_delivered_over_every_protocol() {
    let body = vec![b'b'; 10 << 20];
    let hello = |protocol: &str| {
        let mut cmd = TestCommand::hello();
        cmd.args([
            "runfcgi",
            "daemonize=false",
            "method=threaded",
            "host=127.0.0.1",
            "port=0",
            &format!("protocol={protocol}"),
        ]);
        cmd.start()
    };
    let post_all = |port: u16, what: &str, logs: &dyn Fn() -> String| {
        let mut statuses = Vec::new();
        for _ in 0..8 {
            let status = match try_http_request(port, "POST", "/upload", &[], &body) {
                Ok(r) => r.status,
                Err(e) => panic!("{what}: {e}\n{}", logs()),
            };
            statuses.push(status);
        }
        assert!(
            statuses.iter().all(|&s| s == 200),
            "{what}: {statuses:?}\n{}",
            logs()
        );
    };
    for pass in [FcgiPass::Close, FcgiPass::KeepConn] {
        let server = hello("fcgi");
        let nginx = Nginx::fastcgi(server.listen(), pass);
        post_all(nginx.port(), &format!("nginx fastcgi {pass:?}"), &|| {
            cases::logs(&server, &nginx)
        });
    }
    let server = hello("scgi");
    let location =
        crate::scgi::NGINX_SCGI_LOCATION.replace("@ADDR@", &server.listen().nginx_addr());
    let nginx = Nginx::start("", &location);
    post_all(nginx.port(), "nginx scgi", &|| cases::logs(&server, &nginx));
    let server = hello("ajp");
    let apache = ApacheProxy::ajp(server.listen(), "");
    post_all(apache.port(), "apache ajp", &|| {
        cases::logs(&server, &apache)
    });
}

/// `maxchildren` in prefork is the number of worker processes, each running one request at
/// a time, and a busy worker leaves new connections to the others (issue 8, finding 4):
/// 50 clients through nginx against `maxchildren=2` and `=4` (and threaded with
/// `maxchildren=4`) get no error, with and without `fastcgi_keep_conn`.
#[test]
fn maxchildren_queues_requests_instead_of_refusing_them() {
    for (method, children) in [("prefork", "2"), ("prefork", "4"), ("threaded", "4")] {
        for pass in [FcgiPass::Close, FcgiPass::KeepConn] {
            let mut cmd = TestCommand::appserver();
            let socket = format!("socket={}", cmd.path("s.sock").display());
            cmd.args([
                "runfcgi",
                "daemonize=false",
                &format!("method={method}"),
                &format!("maxchildren={children}"),
                "minspare=1",
                &format!("maxspare={children}"),
            ])
            .arg(socket);
            let server = cmd.start();
            let nginx = Nginx::fastcgi(server.listen(), pass);
            let load = Load::start(nginx.port(), "/", 50);
            load.wait_done(500);
            let report = load.finish();
            let what = format!(" with method={method} maxchildren={children}, nginx {pass:?}");
            report.print(&what);
            report.assert_none_failed(&what, &cases::logs(&server, &nginx));
            if method == "prefork" {
                let pids = report.per_pid();
                assert!(
                    pids.len() <= children.parse().unwrap(),
                    "{} workers served{what}: {pids:?}",
                    pids.len()
                );
            }
        }
    }
}
