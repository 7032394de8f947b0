//! FastCGI behind the other front ends appserver is meant to sit behind: Caddy
//! (`reverse_proxy` with `transport fastcgi`) and h2o (`fastcgi.connect`), both as Debian 12
//! ships them (Caddy 2.6, h2o 2.2), in front of the axum example.
//!
//! Each runs the case set of util::cases, as nginx and Apache do in tests/fcgi.rs, over a unix
//! socket (each front end runs as the same user as appserver, as a site runs them), plus the
//! variable check once over TCP so both address forms of the documented configs are used.
//! Both open a FastCGI connection per request, so 200 quick requests in a row check that
//! appserver ends each one in a way the front end can live with. The rest pins what each
//! sends that nginx does not (docs/protocols/fastcgi.md, "What Caddy sends" and "What h2o
//! sends"), and how appserver's request model takes it: Caddy's duplicated body headers and
//! invented `CONTENT_TYPE`, h2o's buffered chunked uploads.

use crate::scgi::axum_server;
use crate::util::caddy::Caddy;
use crate::util::cases::{self, env_lines, env_value, EnvShape, Stack};
use crate::util::client::{chunked_inspect, http_request};
use crate::util::h2o::H2o;

/// The axum example speaking FastCGI behind Caddy, on a unix socket or on loopback TCP.
fn axum_behind_caddy(unix: bool) -> Stack {
    let server = axum_server("fcgi", unix, &[]);
    let front = Caddy::fastcgi(server.listen()).into();
    Stack { server, front }
}

/// The axum example speaking FastCGI behind h2o, on a unix socket or on loopback TCP.
fn axum_behind_h2o(unix: bool) -> Stack {
    let server = axum_server("fcgi", unix, &[]);
    let front = H2o::fastcgi(server.listen()).into();
    Stack { server, front }
}

/// Caddy without `split_path` (which only `php_fastcgi` sets up): SCRIPT_NAME empty, PATH_INFO
/// the whole decoded path; CONTENT_LENGTH is always sent, `0` on a GET.
const CADDY_SHAPE: EnvShape = EnvShape {
    script_name: "",
    content_length: Some("0"),
};

/// h2o mounted at `/`: SCRIPT_NAME empty (the mount path), PATH_INFO the whole decoded path;
/// no CONTENT_LENGTH on a GET.
const H2O_SHAPE: EnvShape = EnvShape {
    script_name: "",
    content_length: None,
};

cases::gateway_suite!(caddy, axum_behind_caddy(true), CADDY_SHAPE);
cases::gateway_suite!(h2o, axum_behind_h2o(true), H2O_SHAPE);

#[test]
fn caddy_tcp_env_raw_uri() {
    cases::env_raw_uri(&axum_behind_caddy(false), CADDY_SHAPE);
}

#[test]
fn h2o_tcp_env_raw_uri() {
    cases::env_raw_uri(&axum_behind_h2o(false), H2O_SHAPE);
}

/// 200 quick requests one after another, each on a new FastCGI connection, all answered.
/// Caddy writes each record in its own `write()`, the empty FCGI_STDIN last, and reads the
/// response only after that: a server that answers a GET and closes the connection before
/// that record arrives makes the write fail (EPIPE on a unix socket, which Caddy answers
/// 502). A fast handler and many requests make that race show.
#[test]
fn caddy_sequential_200() {
    let stack = axum_behind_caddy(true);
    for i in 0..200 {
        cases::get_hello(&stack, i);
    }
}

/// The same against h2o, which opens a new connection per request too.
#[test]
fn h2o_sequential_200() {
    let stack = axum_behind_h2o(true);
    for i in 0..200 {
        cases::get_hello(&stack, i);
    }
}

/// What `/inspect` reported: the CGI variables as they arrived, and the handler's headers.
struct Inspected {
    env: Vec<(String, String)>,
    headers: Vec<String>,
    text: String,
}

impl Inspected {
    fn parse(text: String) -> Inspected {
        let env: String = text
            .lines()
            .filter_map(|l| l.strip_prefix("env "))
            .map(|l| format!("{l}\n"))
            .collect();
        let headers = text
            .lines()
            .filter_map(|l| l.strip_prefix("header "))
            .map(str::to_owned)
            .collect();
        Inspected {
            env: env_lines(&env),
            headers,
            text,
        }
    }

    /// The last value of the CGI variable `name`.
    fn var(&self, name: &str) -> Option<&str> {
        env_value(&self.env, name)
    }

    /// The values of the handler's header `name` (lower case), in order.
    fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter_map(|h| h.strip_prefix(name)?.strip_prefix(": "))
            .collect()
    }
}

/// `method /inspect` with `headers` and `body`, answered 200.
fn inspect(stack: &Stack, method: &str, headers: &[(&str, &str)], body: &[u8]) -> Inspected {
    let resp = http_request(stack.port(), method, "/inspect", headers, body);
    assert_eq!(resp.status, 200, "{}\n{}", resp.text(), stack.logs());
    Inspected::parse(resp.text())
}

/// Caddy sends a request's body headers twice, as CONTENT_* and as HTTP_CONTENT_*: the
/// handler sees each once, from the CGI variables. A body-less PUT gets a `CONTENT_TYPE` Caddy
/// made up, which the handler cannot tell from a real one. The app's `Status` response
/// header reaches the client too (nginx, Apache, lighttpd and h2o drop it).
#[test]
fn caddy_body_headers_and_status() {
    let stack = axum_behind_caddy(true);
    let seen = inspect(&stack, "POST", &[("Content-Type", "text/plain")], b"abc");
    let text = &seen.text;
    assert_eq!(seen.var("CONTENT_LENGTH"), Some("3"), "{text}");
    assert_eq!(seen.var("HTTP_CONTENT_LENGTH"), Some("3"), "{text}");
    assert_eq!(seen.var("CONTENT_TYPE"), Some("text/plain"), "{text}");
    assert_eq!(seen.var("HTTP_CONTENT_TYPE"), Some("text/plain"), "{text}");
    assert_eq!(seen.header("content-length"), ["3"], "{text}");
    assert_eq!(seen.header("content-type"), ["text/plain"], "{text}");
    assert!(text.contains("\nbody-len 3\n"), "{text}");

    let seen = inspect(&stack, "PUT", &[], b"");
    let text = &seen.text;
    assert_eq!(seen.var("CONTENT_LENGTH"), Some("0"), "{text}");
    assert_eq!(seen.var("HTTP_CONTENT_TYPE"), None, "{text}");
    assert_eq!(
        seen.var("CONTENT_TYPE"),
        Some("application/x-www-form-urlencoded"),
        "{text}"
    );
    assert_eq!(
        seen.header("content-type"),
        ["application/x-www-form-urlencoded"],
        "{text}"
    );

    let resp = http_request(stack.port(), "GET", "/status/404", &[], b"");
    assert_eq!(resp.status, 404, "{}", stack.logs());
    assert_eq!(resp.headers_all("status"), ["404 Not Found"]);
}

/// Caddy's other additions: `X-Forwarded-*` headers of its own (a client's
/// `X-Forwarded-For` replaced, no proxy being trusted), no DOCUMENT_URI, and a client's
/// `Proxy:` header passed on as HTTP_PROXY.
#[test]
fn caddy_forwarded_headers() {
    let stack = axum_behind_caddy(true);
    let seen = inspect(
        &stack,
        "GET",
        &[("X-Forwarded-For", "192.0.2.7"), ("Proxy", "http://evil")],
        b"",
    );
    let text = &seen.text;
    assert_eq!(
        seen.var("HTTP_X_FORWARDED_FOR"),
        Some("127.0.0.1"),
        "{text}"
    );
    assert_eq!(seen.var("HTTP_X_FORWARDED_PROTO"), Some("http"), "{text}");
    assert_eq!(
        seen.var("HTTP_X_FORWARDED_HOST"),
        Some("localhost"),
        "{text}"
    );
    assert_eq!(seen.var("DOCUMENT_URI"), Some(""), "{text}");
    assert_eq!(seen.var("HTTP_PROXY"), Some("http://evil"), "{text}");
    assert_eq!(seen.var("GATEWAY_INTERFACE"), Some("CGI/1.1"), "{text}");
}

/// h2o sends the CGI core only: no GATEWAY_INTERFACE, DOCUMENT_ROOT or SCRIPT_FILENAME, and
/// SERVER_NAME is the name of the `hosts` entry (`default`), not the Host header's. A
/// client's `Proxy:` header is passed on as HTTP_PROXY. A body's headers arrive once.
#[test]
fn h2o_sends_the_cgi_core() {
    let stack = axum_behind_h2o(true);
    let seen = inspect(&stack, "GET", &[("Proxy", "http://evil")], b"");
    let text = &seen.text;
    assert_eq!(seen.var("SERVER_NAME"), Some("default"), "{text}");
    assert_eq!(seen.var("HTTP_HOST"), Some("localhost"), "{text}");
    for absent in ["GATEWAY_INTERFACE", "DOCUMENT_ROOT", "SCRIPT_FILENAME"] {
        assert_eq!(seen.var(absent), None, "{absent}\n{text}");
    }
    assert_eq!(seen.var("HTTP_PROXY"), Some("http://evil"), "{text}");

    let seen = inspect(&stack, "POST", &[("Content-Type", "text/plain")], b"abc");
    let text = &seen.text;
    assert_eq!(seen.var("CONTENT_LENGTH"), Some("3"), "{text}");
    assert_eq!(seen.var("HTTP_CONTENT_LENGTH"), None, "{text}");
    assert_eq!(seen.header("content-length"), ["3"], "{text}");
    assert_eq!(seen.header("content-type"), ["text/plain"], "{text}");
}

/// `POST /inspect` with a chunked 3-byte body ([`chunked_inspect`]), answered 200: what the
/// handler saw, and the page.
fn chunked_upload(stack: &Stack) -> (Inspected, String) {
    let (status, body) = chunked_inspect(stack.port());
    assert_eq!(status, 200, "{body}\n{}", stack.logs());
    (Inspected::parse(body.clone()), body)
}

/// A `Transfer-Encoding: chunked` upload through h2o: h2o reads the whole body first, so it
/// arrives with CONTENT_LENGTH and the handler sees a length. curl sends it (an independent
/// client, and one that really chunks).
#[test]
fn h2o_chunked_upload_arrives_with_length() {
    let stack = axum_behind_h2o(true);
    let (seen, body) = chunked_upload(&stack);
    assert_eq!(seen.var("CONTENT_LENGTH"), Some("3"), "{body}");
    assert_eq!(seen.var("HTTP_TRANSFER_ENCODING"), None, "{body}");
    assert_eq!(seen.header("content-length"), ["3"], "{body}");
    assert!(body.contains("\nbody-len 3\n"), "{body}");
}

/// A `Transfer-Encoding: chunked` upload through Caddy: Caddy streams it with
/// `CONTENT_LENGTH=-1`, which appserver takes as "length unknown" (the body ends at the empty
/// FCGI_STDIN), so the handler gets the whole body and no made-up length.
#[test]
fn caddy_chunked_upload_streams_with_unknown_length() {
    let stack = axum_behind_caddy(true);
    let (seen, body) = chunked_upload(&stack);
    assert_eq!(seen.var("CONTENT_LENGTH"), Some("-1"), "{body}");
    assert!(seen.header("content-length").is_empty(), "{body}");
    assert!(body.contains("\nbody-len 3\n"), "{body}");
}
