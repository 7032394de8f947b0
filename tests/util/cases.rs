//! The end-to-end case set every web-server suite runs: tests/fcgi.rs behind nginx and
//! Apache, tests/fronts.rs behind Caddy and h2o, tests/scgi.rs behind nginx, Apache and
//! lighttpd, tests/ajp.rs behind Apache. A [`Stack`] is
//! appserver with the web server in front of it; each case is one function on it, and
//! [`common_cases!`] and [`gateway_suite!`] turn them into `#[test]` functions.
//!
//! The cases: a GET whose raw query and non-ASCII path arrive intact, an 8 MiB upload, a
//! 32 MiB download, a 404 and a 302 passed through, three `Set-Cookie` headers kept apart, and
//! 200 concurrent requests without an error.

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Instant;

use super::client::{http_get, http_request, pattern_bytes, sha256_hex, try_http_request};
use super::command::Server;
use super::webserver::WebServer;

/// appserver and the web server in front of it.
#[derive(Debug)]
pub(crate) struct Stack {
    /// The app speaking the protocol under test.
    pub(crate) server: Server,
    /// The web server.
    pub(crate) front: WebServer,
}

impl Stack {
    /// The port clients use.
    pub(crate) fn port(&self) -> u16 {
        self.front.port()
    }

    /// Failure context: both sides' logs.
    pub(crate) fn logs(&self) -> String {
        logs(&self.server, &self.front)
    }
}

/// Failure context: appserver's stderr and the web server's logs.
pub(crate) fn logs(server: &Server, front: &WebServer) -> String {
    format!(
        "--- appserver stderr ---\n{}--- {} logs ---\n{}",
        server.log(),
        front.name(),
        front.error_log()
    )
}

/// Parses `/env` output into (name, value) lines.
pub(crate) fn env_lines(body: &str) -> Vec<(String, String)> {
    body.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect()
}

/// The last value of `name` in `/env` lines.
pub(crate) fn env_value<'a>(lines: &'a [(String, String)], name: &str) -> Option<&'a str> {
    lines
        .iter()
        .rev()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// What one web server sends for `GET /env/café/a b?...`: where it splits SCRIPT_NAME from
/// PATH_INFO, and `CONTENT_LENGTH` on a GET (`None`: not sent).
#[derive(Clone, Copy, Debug)]
pub(crate) struct EnvShape {
    /// SCRIPT_NAME as the handler sees it; PATH_INFO is the rest of the decoded path.
    pub(crate) script_name: &'static str,
    /// CONTENT_LENGTH of a GET.
    pub(crate) content_length: Option<&'static str>,
}

/// GET with a query string and a non-ASCII percent-encoded path: REQUEST_URI and
/// QUERY_STRING arrive raw, SCRIPT_NAME + PATH_INFO is the decoded path, split where this web
/// server splits it. Twice, so a pooled connection (AJP) is used again.
pub(crate) fn env_raw_uri(stack: &Stack, shape: EnvShape) {
    let uri = "/env/caf%C3%A9/a%20b?q=caf%C3%A9&x=1%2B1&empty=";
    let path = "/env/café/a b";
    for _ in 0..2 {
        let resp = http_get(stack.port(), uri);
        assert_eq!(resp.status, 200, "{}\n{}", resp.text(), stack.logs());
        let lines = env_lines(&resp.text());
        let var = |name| env_value(&lines, name);
        assert_eq!(var("REQUEST_URI"), Some(uri), "{lines:?}");
        assert_eq!(
            var("QUERY_STRING"),
            Some("q=caf%C3%A9&x=1%2B1&empty="),
            "{lines:?}"
        );
        assert_eq!(var("REQUEST_METHOD"), Some("GET"), "{lines:?}");
        assert_eq!(var("SCRIPT_NAME"), Some(shape.script_name), "{lines:?}");
        assert_eq!(
            var("PATH_INFO"),
            path.strip_prefix(shape.script_name),
            "{lines:?}"
        );
        assert_eq!(var("CONTENT_LENGTH"), shape.content_length, "{lines:?}");
    }
}

/// An 8 MiB upload reaches the app whole: its SHA-256 and length come back.
pub(crate) fn echo_8mib(stack: &Stack) {
    let body = pattern_bytes(8 << 20);
    let resp = http_request(
        stack.port(),
        "POST",
        "/echo",
        &[("Content-Type", "application/octet-stream")],
        &body,
    );
    assert_eq!(resp.status, 200, "{}\n{}", resp.text(), stack.logs());
    assert_eq!(resp.header("x-body-len"), Some("8388608"));
    assert_eq!(resp.text(), sha256_hex(&body));
}

/// A 32 MiB streamed response arrives whole and in order.
pub(crate) fn bytes_32mib(stack: &Stack) {
    let n: usize = 32 << 20;
    let resp = http_get(stack.port(), &format!("/bytes/{n}"));
    assert_eq!(resp.status, 200, "{}", stack.logs());
    assert_eq!(
        resp.header("content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(resp.body.len(), n, "{}", stack.logs());
    assert_eq!(sha256_hex(&resp.body), sha256_hex(&pattern_bytes(n)));
}

/// An app's 404 (and 503) is the client's, body included.
pub(crate) fn status_404(stack: &Stack) {
    let resp = http_get(stack.port(), "/status/404");
    assert_eq!(resp.status, 404, "{}\n{}", resp.text(), stack.logs());
    assert_eq!(resp.text(), "status 404\n");
    let resp = http_get(stack.port(), "/status/503");
    assert_eq!(resp.status, 503, "{}", stack.logs());
}

/// A redirect keeps its status and Location.
pub(crate) fn redirect_302(stack: &Stack) {
    let resp = http_get(stack.port(), "/redirect");
    assert_eq!(resp.status, 302, "{}\n{}", resp.text(), stack.logs());
    assert_eq!(resp.header("location"), Some("/target"));
}

/// Three Set-Cookie headers stay three headers, in order.
pub(crate) fn three_cookies(stack: &Stack) {
    let resp = http_get(stack.port(), "/cookies");
    assert_eq!(resp.status, 200, "{}", stack.logs());
    assert_eq!(resp.headers_all("set-cookie"), ["a=1", "b=2", "c=3"]);
}

/// `GET /` answers the axum example's greeting; `i` numbers the request in a series.
pub(crate) fn get_hello(stack: &Stack, i: usize) {
    let resp = http_get(stack.port(), "/");
    assert_eq!(
        (resp.status, resp.text().as_str()),
        (200, "Hello from axum\n"),
        "request {i}\n{}",
        stack.logs()
    );
}

/// 200 requests at once, each held 200 ms by the app, all answered: none refused by a short
/// accept backlog (nginx's unix-socket connect does not wait), none lost.
pub(crate) fn concurrent_200(stack: &Stack) {
    const N: usize = 200;
    let port = stack.port();
    let barrier = Arc::new(Barrier::new(N));
    let started = Instant::now();
    let handles: Vec<_> = (0..N)
        .map(|i| {
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                barrier.wait();
                match try_http_request(port, "GET", "/slow?ms=200", &[], &[]) {
                    Ok(r) if r.status == 200 && r.text() == "done\n" => Ok(()),
                    Ok(r) => Err(format!("request {i}: {} {:?}", r.status, r.text())),
                    Err(e) => Err(format!("request {i}: {e}")),
                }
            })
        })
        .collect();
    let errors: Vec<String> = handles
        .into_iter()
        .filter_map(|h| h.join().expect("client thread").err())
        .collect();
    eprintln!(
        "{N} concurrent requests through {}: {} errors in {:?}",
        stack.front.name(),
        errors.len(),
        started.elapsed()
    );
    assert!(
        errors.is_empty(),
        "{} of {N} failed, first: {:?}\n{}",
        errors.len(),
        &errors[..errors.len().min(5)],
        stack.logs()
    );
}

/// The cases every suite runs the same way ([`echo_8mib`], [`bytes_32mib`], [`status_404`],
/// [`redirect_302`], [`three_cookies`]) as `#[test]` functions, each on a fresh [`Stack`]
/// from `$setup`. Invoked inside a suite's module.
macro_rules! common_cases {
    ($setup:expr) => {
        #[test]
        fn echo_8mib() {
            $crate::util::cases::echo_8mib(&$setup)
        }

        #[test]
        fn bytes_32mib() {
            $crate::util::cases::bytes_32mib(&$setup)
        }

        #[test]
        fn status_404() {
            $crate::util::cases::status_404(&$setup)
        }

        #[test]
        fn redirect_302() {
            $crate::util::cases::redirect_302(&$setup)
        }

        #[test]
        fn three_cookies() {
            $crate::util::cases::three_cookies(&$setup)
        }
    };
}
pub(crate) use common_cases;

/// The whole case set for one web server as module `$name`: `$setup` builds the [`Stack`],
/// `$shape` is the [`EnvShape`] that server produces.
macro_rules! gateway_suite {
    ($name:ident, $setup:expr, $shape:expr) => {
        mod $name {
            use super::*;

            #[test]
            fn env_raw_uri() {
                $crate::util::cases::env_raw_uri(&$setup, $shape)
            }

            $crate::util::cases::common_cases!($setup);

            #[test]
            fn concurrent_200() {
                $crate::util::cases::concurrent_200(&$setup)
            }
        }
    };
}
pub(crate) use gateway_suite;
