//! FastCGI end to end: real nginx in front of the axum example and of the plain `appserver`
//! binary, `cgi-fcgi` as a second independent client, a direct client for the
//! constant-memory proof, and the fd-0 (spawned) listener mode.
//!
//! The nginx cases run against four configurations, each a module of its own: unix socket or
//! TCP, each with `fastcgi_keep_conn on` behind an `upstream { keepalive 8; }` (nginx reuses
//! connections, FCGI_KEEP_CONN set) and without (one connection per request).

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use sha2::{Digest, Sha256};

use crate::util::apache_proxy::ApacheProxy;
use crate::util::cases::{self, env_lines, env_value, Stack};
use crate::util::client::{
    cgi_params, fcgi_get, fcgi_request, hex, http_get, http_request, pattern_bytes,
    pattern_matches, sha256_hex, PatternReader, Stream,
};
use crate::util::command::{Server, TestCommand};
use crate::util::webserver::{FcgiPass, Nginx};

/// Where appserver listens.
#[derive(Clone, Copy, Debug)]
enum Transport {
    Tcp,
    Unix,
}

/// Adds the listener options for `transport` (the socket goes into the server's tempdir).
fn listen_on(cmd: &mut TestCommand, transport: Transport) {
    match transport {
        Transport::Tcp => cmd.args(["host=127.0.0.1", "port=0"]),
        Transport::Unix => {
            let socket = format!("socket={}", cmd.path("s.sock").display());
            cmd.args([socket])
        }
    };
}

/// The axum example, in the foreground, room for 256 requests in flight.
fn axum_server(transport: Transport) -> Server {
    let mut cmd = TestCommand::axum();
    cmd.args(["runfcgi", "daemonize=false", "maxchildren=256"]);
    listen_on(&mut cmd, transport);
    cmd.start()
}

/// The axum example behind nginx.
fn axum_behind_nginx(transport: Transport, pass: FcgiPass) -> Stack {
    let server = axum_server(transport);
    let front = Nginx::fastcgi(server.listen(), pass).into();
    Stack { server, front }
}

/// GET with a query string and a non-ASCII percent-encoded path: REQUEST_URI and
/// QUERY_STRING arrive raw, DOCUMENT_URI decoded (protocols.md §6), and the request model
/// sees the method. Three times, so a keep-alive configuration reuses its connection.
fn env_raw_uri(transport: Transport, pass: FcgiPass) {
    let stack = axum_behind_nginx(transport, pass);
    let uri = "/env/caf%C3%A9/a%20b?q=caf%C3%A9&x=1%2B1&empty=";
    for _ in 0..3 {
        let resp = http_get(stack.port(), uri);
        assert_eq!(resp.status, 200, "{}\n{}", resp.text(), stack.logs());
        let lines = env_lines(&resp.text());
        assert_eq!(env_value(&lines, "REQUEST_URI"), Some(uri), "{lines:?}");
        assert_eq!(
            env_value(&lines, "QUERY_STRING"),
            Some("q=caf%C3%A9&x=1%2B1&empty="),
            "{lines:?}"
        );
        assert_eq!(
            env_value(&lines, "DOCUMENT_URI"),
            Some("/env/café/a b"),
            "{lines:?}"
        );
        assert_eq!(env_value(&lines, "REQUEST_METHOD"), Some("GET"));
        // nginx sends CONTENT_LENGTH empty on a GET: set-but-empty must survive.
        assert_eq!(env_value(&lines, "CONTENT_LENGTH"), Some(""), "{lines:?}");
    }
}

/// Many requests one after another: with keep-alive nginx reuses upstream connections, so a
/// server that leaves bytes after END_REQUEST or closes a kept connection shows up here.
fn sequential_20(transport: Transport, pass: FcgiPass) {
    let stack = axum_behind_nginx(transport, pass);
    for i in 0..20 {
        cases::get_hello(&stack, i);
    }
    if let FcgiPass::KeepConn = pass {
        // Sequential requests reuse one cached connection, which appserver must keep open
        // after END_REQUEST (FCGI_KEEP_CONN). A server that closed it would leave 0.
        assert_eq!(
            stack.server.open_connections(),
            1,
            "kept-alive upstream connections after 20 sequential requests\n{}",
            stack.logs()
        );
    }
    // An upstream error that nginx retried on a fresh connection would still look like a
    // success to the client; its error log tells.
    let errors = stack.front.error_log();
    assert!(
        !errors.contains("upstream"),
        "nginx logged upstream trouble:\n{errors}"
    );
}

/// The nginx case set for one configuration as module `$name`: this file's [`env_raw_uri`]
/// and [`sequential_20`], and the cases every web server runs ([`cases::common_cases!`]).
macro_rules! nginx_suite {
    ($name:ident, $transport:expr, $pass:expr) => {
        mod $name {
            use super::*;

            #[test]
            fn env_raw_uri() {
                super::env_raw_uri($transport, $pass)
            }

            cases::common_cases!(axum_behind_nginx($transport, $pass));

            #[test]
            fn sequential_20() {
                super::sequential_20($transport, $pass)
            }
        }
    };
}

nginx_suite!(nginx_unix_keepalive, Transport::Unix, FcgiPass::KeepConn);
nginx_suite!(nginx_unix_close, Transport::Unix, FcgiPass::Close);
nginx_suite!(nginx_tcp_keepalive, Transport::Tcp, FcgiPass::KeepConn);
nginx_suite!(nginx_tcp_close, Transport::Tcp, FcgiPass::Close);

/// The axum example behind Apache's mod_proxy_fcgi, over TCP (Apache's `www-data` workers
/// cannot reach a socket in the test's root-owned tempdir).
fn axum_behind_apache() -> Stack {
    let server = axum_server(Transport::Tcp);
    let front = ApacheProxy::fcgi(server.listen()).into();
    Stack { server, front }
}

// Apache mod_proxy_fcgi (`ProxyPass "/" "fcgi://..."`, as php-fpm sites have it): SCRIPT_NAME
// is the whole decoded path and no PATH_INFO is sent; a GET carries no CONTENT_LENGTH.
cases::gateway_suite!(
    apache,
    axum_behind_apache(),
    cases::EnvShape {
        script_name: "/env/caf\u{e9}/a b",
        content_length: None,
    }
);

#[test]
fn concurrent_200_unix_keepalive() {
    cases::concurrent_200(&axum_behind_nginx(Transport::Unix, FcgiPass::KeepConn));
}

#[test]
fn concurrent_200_unix_close() {
    cases::concurrent_200(&axum_behind_nginx(Transport::Unix, FcgiPass::Close));
}

#[test]
fn concurrent_200_tcp_keepalive() {
    cases::concurrent_200(&axum_behind_nginx(Transport::Tcp, FcgiPass::KeepConn));
}

/// A marker in the server's environment that must never reach a response.
const ENV_MARKER: (&str, &str) = ("APPSERVER_TEST_PROCESS_SECRET", "proc-env-7f3a9c");

/// The plain `appserver` binary (the default info app) in the foreground, with
/// [`ENV_MARKER`] in its environment.
fn info_server(transport: Transport) -> Server {
    let mut cmd = TestCommand::appserver();
    cmd.args(["runfcgi", "daemonize=false"])
        .env(ENV_MARKER.0, ENV_MARKER.1);
    listen_on(&mut cmd, transport);
    cmd.start()
}

/// The default info app through nginx: protocol fcgi, the request's own variables, and none
/// of the process environment.
#[test]
fn info_app_behind_nginx_shows_request_not_process_env() {
    let server = info_server(Transport::Unix);
    let nginx = Nginx::fastcgi(server.listen(), FcgiPass::KeepConn);
    let resp = http_request(
        nginx.port(),
        "GET",
        "/info/page?marker=q-5d21",
        &[("X-Test-Header", "hdr-81c4")],
        &[],
    );
    let body = resp.text();
    assert_eq!(resp.status, 200, "{body}\n{}", cases::logs(&server, &nginx));
    assert!(
        body.to_lowercase().contains("protocol") && body.contains("fcgi"),
        "no protocol in:\n{body}"
    );
    assert!(body.contains("QUERY_STRING"), "no QUERY_STRING in:\n{body}");
    assert!(body.contains("marker=q-5d21"), "query missing in:\n{body}");
    assert!(
        body.contains("HTTP_X_TEST_HEADER"),
        "header var missing:\n{body}"
    );
    assert!(body.contains("hdr-81c4"), "header value missing:\n{body}");
    assert!(
        !body.contains(ENV_MARKER.0) && !body.contains(ENV_MARKER.1),
        "the process environment leaked into the page:\n{body}"
    );
}

/// `cgi-fcgi` from libfcgi, a second independent client: the info app answers it.
#[test]
fn cgi_fcgi_client_gets_info_page() {
    let server = info_server(Transport::Tcp);
    let out = cgi_fcgi(
        &server,
        &[
            ("REQUEST_METHOD", "GET"),
            ("SCRIPT_NAME", "/cgi"),
            ("REQUEST_URI", "/cgi?via=cgi-fcgi-42"),
            ("QUERY_STRING", "via=cgi-fcgi-42"),
        ],
        b"",
    );
    assert!(out.contains("fcgi"), "{out}\n{}", server.log());
    assert!(out.contains("via=cgi-fcgi-42"), "{out}");
    assert!(!out.contains(ENV_MARKER.1), "process env leaked:\n{out}");
}

/// `cgi-fcgi` sends a body on STDIN with CONTENT_LENGTH; the axum example hashes it.
#[test]
fn cgi_fcgi_client_posts_to_axum() {
    let server = axum_server(Transport::Tcp);
    let body = b"hello from cgi-fcgi\n";
    let out = cgi_fcgi(
        &server,
        &[
            ("REQUEST_METHOD", "POST"),
            ("SCRIPT_NAME", ""),
            ("REQUEST_URI", "/echo"),
            ("QUERY_STRING", ""),
            ("CONTENT_LENGTH", &body.len().to_string()),
            ("CONTENT_TYPE", "text/plain"),
        ],
        body,
    );
    assert!(out.contains(&sha256_hex(body)), "{out}\n{}", server.log());
    assert!(out.to_ascii_lowercase().contains("x-body-len: 20"), "{out}");
}

/// Runs `cgi-fcgi -bind -connect ADDR` with exactly the given CGI environment.
fn cgi_fcgi(server: &Server, vars: &[(&str, &str)], stdin: &[u8]) -> String {
    let mut cmd = std::process::Command::new("cgi-fcgi");
    cmd.args(["-bind", "-connect", &server.listen().tcp().to_string()])
        .env_clear()
        .envs([
            ("SERVER_NAME", "localhost"),
            ("SERVER_PORT", "80"),
            ("SERVER_PROTOCOL", "HTTP/1.1"),
            ("GATEWAY_INTERFACE", "CGI/1.1"),
            ("REMOTE_ADDR", "127.0.0.1"),
        ])
        .envs(vars.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .expect("cgi-fcgi (Debian package libfcgi-bin; scripts/test installs it)");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "cgi-fcgi failed: {}\nstdout: {text}\nstderr: {}\nappserver:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    text
}

/// SHA-256 of 1 GiB of the pattern (byte `i` = `i % 251`), computed once with
/// `python3 -c 'import sys; p=bytes(range(251))*4177; ...' | sha256sum` and checked against a
/// second implementation; hashing 1 GiB in a debug test build would cost more than the
/// transfer itself.
const SHA256_1GIB_PATTERN: &str =
    "9cc5601236c455c6af19a76e64d2d95953a93b10eeb8b8b756a57090e1499b3e";

/// How long one side of a 1 GiB transfer may wait for the other.
const GIB_TRANSFER_TIMEOUT: Duration = Duration::from_secs(300);

/// The memory bound of design.md §1: the server's peak RSS.
const MAX_PEAK_RSS: u64 = 64 << 20;

/// The proof of streaming: a 1 GiB upload and a 1 GiB download, straight over
/// FastCGI to the axum example, leave the server's peak RSS (VmHWM) under 64 MiB.
#[test]
fn rss_stays_bounded_for_1gib_upload_and_download() {
    const GIB: u64 = 1 << 30;
    let server = axum_server(Transport::Unix);
    let rss_idle = server.rss();

    // Upload: 1 GiB of STDIN produced as it is sent; /echo hashes it as it arrives. The
    // response is read while the upload runs, so its read waits for the whole upload: a
    // debug build on a busy 2-core machine can take longer than the usual IO timeout.
    let mut stream = Stream::connect(server.listen());
    stream.set_timeouts(GIB_TRANSFER_TIMEOUT);
    let params = cgi_params(
        "POST",
        "/echo",
        &[
            ("CONTENT_LENGTH", &GIB.to_string()),
            ("CONTENT_TYPE", "application/octet-stream"),
        ],
    );
    let started = Instant::now();
    let resp = fcgi_request(
        &mut stream,
        &params,
        false,
        &mut PatternReader::new(GIB),
        true,
        &mut |_| {},
    );
    let upload = started.elapsed();
    assert_eq!(resp.status, 200, "{}\n{}", resp.text(), server.log());
    assert_eq!(resp.stdin_sent, GIB);
    assert_eq!(resp.header("x-body-len"), Some("1073741824"));
    assert_eq!(resp.text(), SHA256_1GIB_PATTERN);
    let rss_after_upload = server.peak_rss();

    // Download: 1 GiB of STDOUT checked against the pattern as it arrives, never kept.
    let mut stream = Stream::connect(server.listen());
    stream.set_timeouts(GIB_TRANSFER_TIMEOUT);
    let params = cgi_params("GET", &format!("/bytes/{GIB}"), &[]);
    let mut offset = 0u64;
    let mut in_order = true;
    let started = Instant::now();
    let resp = fcgi_request(
        &mut stream,
        &params,
        false,
        &mut std::io::empty(),
        false,
        &mut |chunk| {
            in_order &= pattern_matches(offset, chunk);
            offset += chunk.len() as u64;
        },
    );
    let download = started.elapsed();
    assert_eq!(resp.status, 200, "{}", server.log());
    assert_eq!(resp.body_len, GIB);
    assert!(in_order, "downloaded bytes differ from the pattern");

    let peak = server.peak_rss();
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    let rate = |d: Duration| 1024.0 / d.as_secs_f64();
    eprintln!(
        "1 GiB upload {upload:.2?} ({:.0} MiB/s), 1 GiB download {download:.2?} ({:.0} MiB/s); \
         server RSS idle {:.1} MiB, peak after upload {:.1} MiB, peak after download {:.1} MiB \
         (limit {:.0} MiB)",
        rate(upload),
        rate(download),
        mib(rss_idle),
        mib(rss_after_upload),
        mib(peak),
        mib(MAX_PEAK_RSS),
    );
    assert!(
        peak < MAX_PEAK_RSS,
        "server peak RSS {:.1} MiB is over {:.0} MiB",
        mib(peak),
        mib(MAX_PEAK_RSS)
    );
}

/// Spawned mode (mod_fcgid, lighttpd `bin-path`, spawn-fcgi): the listening socket is fd 0,
/// stdout and stderr lead nowhere. No address is given; the server accepts on fd 0.
#[test]
fn fd0_listening_unix_socket_serves() {
    let mut cmd = TestCommand::appserver();
    let path = cmd.path("spawned.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    cmd.args(["runfcgi", "daemonize=false"])
        .stdin(Stdio::from(OwnedFd::from(listener)))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut server = cmd.spawn();
    // The socket listens already (the test made it), so connecting needs no readiness
    // signal: the connection waits in the backlog until appserver accepts.
    for _ in 0..2 {
        let mut stream =
            Stream::Unix(std::os::unix::net::UnixStream::connect(&path).expect("connect"));
        stream.set_timeouts(Duration::from_secs(20));
        let resp = fcgi_get(&mut stream, &cgi_params("GET", "/?spawned=1", &[]), false);
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert!(resp.text().contains("fcgi"), "{}", resp.text());
        assert!(resp.text().contains("spawned=1"), "{}", resp.text());
    }
    server.signal(Signal::SIGTERM);
    let status = server
        .wait_exit(Duration::from_secs(10))
        .expect("exit after TERM");
    assert!(status.success(), "exit after TERM: {status}");
}

/// A pipe on fd 0 is not a listener: appserver refuses with a message naming fd 0.
#[test]
fn fd0_pipe_is_refused() {
    let out = TestCommand::appserver()
        .args(["runfcgi", "daemonize=false"])
        .stdin(Stdio::piped())
        .output(Duration::from_secs(10));
    let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(
        !out.status.success(),
        "exit {} with a pipe on fd 0",
        out.status
    );
    assert!(
        stderr.contains("fd 0") || stderr.contains("fd0"),
        "message does not name fd 0: {stderr}"
    );
}

/// A direct FastCGI request with KEEP_CONN: two requests on one connection.
#[test]
fn direct_keep_conn_two_requests_one_connection() {
    let server = axum_server(Transport::Tcp);
    let mut stream = Stream::connect(server.listen());
    for _ in 0..2 {
        let resp = fcgi_get(&mut stream, &cgi_params("GET", "/", &[]), true);
        assert_eq!(resp.status, 200, "{}", server.log());
        assert_eq!(resp.text(), "Hello from axum\n");
    }
    let mut hasher = Sha256::new();
    let resp = fcgi_request(
        &mut stream,
        &cgi_params("GET", "/bytes/200000", &[]),
        true,
        &mut std::io::empty(),
        false,
        &mut |chunk| hasher.update(chunk),
    );
    assert_eq!(resp.body_len, 200_000);
    assert_eq!(hex(&hasher.finalize()), sha256_hex(&pattern_bytes(200_000)));
}
