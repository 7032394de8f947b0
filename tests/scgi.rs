//! SCGI end to end: the axum example behind nginx (`scgi_pass` with the stock `scgi_params`,
//! over a unix socket), Apache (`mod_proxy_scgi`) and lighttpd (`mod_scgi`), both over TCP.
//!
//! Every web server runs the case set of tests/fcgi.rs: a GET whose raw query and non-ASCII
//! path arrive intact, an 8 MiB upload, a 32 MiB download, a 404 and a 302 passed through,
//! three `Set-Cookie` headers kept apart, and 200 concurrent requests without an error. The
//! case functions are shared with tests/ajp.rs, which runs them behind Apache's AJP13.
//!
//! The CGI variables differ per web server, and each suite states what its server sends
//! (protocols.md §6): where SCRIPT_NAME ends and PATH_INFO starts, and whether a GET carries
//! `CONTENT_LENGTH`. What every server agrees on is checked the same way everywhere:
//! REQUEST_URI and QUERY_STRING raw, SCRIPT_NAME + PATH_INFO the decoded path.

use std::io::Read;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Instant;

use crate::util::apache_proxy::ApacheProxy;
use crate::util::client::{http_get, http_request, sha256_hex, try_http_request, PatternReader};
use crate::util::command::{Server, TestCommand};
use crate::util::lighttpd_gw::LighttpdGw;
use crate::util::webserver::Nginx;

/// nginx's SCGI location, as in docs/protocols/scgi.md; `@ADDR@` is `unix:PATH` or
/// `host:port`.
pub(crate) const NGINX_SCGI_LOCATION: &str = "location / {
    include /etc/nginx/scgi_params;
    scgi_pass @ADDR@;
}";

/// A web server in front of appserver, whichever it is.
pub(crate) trait Front {
    /// The loopback port clients use.
    fn port(&self) -> u16;
    /// What the web server logged (failure context).
    fn error_log(&self) -> String;
}

impl Front for Nginx {
    fn port(&self) -> u16 {
        Nginx::port(self)
    }
    fn error_log(&self) -> String {
        Nginx::error_log(self)
    }
}

impl Front for ApacheProxy {
    fn port(&self) -> u16 {
        ApacheProxy::port(self)
    }
    fn error_log(&self) -> String {
        ApacheProxy::error_log(self)
    }
}

impl Front for LighttpdGw {
    fn port(&self) -> u16 {
        LighttpdGw::port(self)
    }
    fn error_log(&self) -> String {
        LighttpdGw::error_log(self)
    }
}

/// appserver and the web server in front of it.
pub(crate) struct Stack {
    /// The axum example speaking the protocol under test.
    pub(crate) server: Server,
    /// The web server.
    pub(crate) front: Box<dyn Front>,
}

impl Stack {
    /// The port clients use.
    pub(crate) fn port(&self) -> u16 {
        self.front.port()
    }

    /// Failure context: both sides' logs.
    pub(crate) fn logs(&self) -> String {
        format!(
            "--- appserver stderr ---\n{}--- web server logs ---\n{}",
            self.server.log(),
            self.front.error_log()
        )
    }
}

/// The axum example speaking `protocol`, on a unix socket in its tempdir or on loopback TCP,
/// with room for 256 requests in flight, plus `extra` options.
pub(crate) fn axum_server(protocol: &str, unix: bool, extra: &[&str]) -> Server {
    let mut cmd = TestCommand::axum();
    cmd.args([
        "runfcgi",
        "daemonize=false",
        "maxchildren=256",
        &format!("protocol={protocol}"),
    ]);
    if unix {
        let socket = format!("socket={}", cmd.path("s.sock").display());
        cmd.arg(socket);
    } else {
        cmd.args(["host=127.0.0.1", "port=0"]);
    }
    cmd.args(extra);
    cmd.start()
}

fn nginx_scgi() -> Stack {
    let server = axum_server("scgi", true, &[]);
    let location = NGINX_SCGI_LOCATION.replace("@ADDR@", &server.listen().nginx_addr());
    let front = Box::new(Nginx::start("", &location));
    Stack { server, front }
}

fn apache_scgi() -> Stack {
    let server = axum_server("scgi", false, &[]);
    let front = Box::new(ApacheProxy::scgi(server.listen()));
    Stack { server, front }
}

fn lighttpd_scgi() -> Stack {
    let server = axum_server("scgi", false, &[]);
    let front = Box::new(LighttpdGw::scgi(server.listen()));
    Stack { server, front }
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
    let mut body = vec![0; 8 << 20];
    PatternReader::new(body.len() as u64)
        .read_exact(&mut body)
        .unwrap();
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
    let mut expected = vec![0; n];
    PatternReader::new(n as u64)
        .read_exact(&mut expected)
        .unwrap();
    assert_eq!(sha256_hex(&resp.body), sha256_hex(&expected));
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

/// 200 requests at once, each held 200 ms by the app, all answered.
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
        "{N} concurrent requests: {} errors in {:?}",
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

/// The shared case set for one web server: `$setup` builds the [`Stack`], `$shape` is the
/// [`EnvShape`] that server produces.
macro_rules! gateway_suite {
    ($name:ident, $setup:expr, $shape:expr) => {
        mod $name {
            use super::*;

            #[test]
            fn env_raw_uri() {
                $crate::scgi::env_raw_uri(&$setup, $shape)
            }

            #[test]
            fn echo_8mib() {
                $crate::scgi::echo_8mib(&$setup)
            }

            #[test]
            fn bytes_32mib() {
                $crate::scgi::bytes_32mib(&$setup)
            }

            #[test]
            fn status_404() {
                $crate::scgi::status_404(&$setup)
            }

            #[test]
            fn redirect_302() {
                $crate::scgi::redirect_302(&$setup)
            }

            #[test]
            fn three_cookies() {
                $crate::scgi::three_cookies(&$setup)
            }

            #[test]
            fn concurrent_200() {
                $crate::scgi::concurrent_200(&$setup)
            }
        }
    };
}
pub(crate) use gateway_suite;

// nginx with the stock scgi_params: no SCRIPT_NAME, no PATH_INFO; appserver derives PATH_INFO
// from the decoded DOCUMENT_URI. CONTENT_LENGTH is always sent ("0" on a GET).
gateway_suite!(
    nginx,
    nginx_scgi(),
    EnvShape {
        script_name: "",
        content_length: Some("0"),
    }
);

// Apache mod_proxy_scgi: SCRIPT_NAME is the whole decoded path, no PATH_INFO.
gateway_suite!(
    apache,
    apache_scgi(),
    EnvShape {
        script_name: "/env/café/a b",
        content_length: Some("0"),
    }
);

// lighttpd with fix-root-scriptname: SCRIPT_NAME empty, PATH_INFO the decoded path.
gateway_suite!(
    lighttpd,
    lighttpd_scgi(),
    EnvShape {
        script_name: "",
        content_length: Some("0"),
    }
);
