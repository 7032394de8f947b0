//! SCGI end to end: the axum example behind nginx (`scgi_pass` with the stock `scgi_params`,
//! over a unix socket), Apache (`mod_proxy_scgi`) and lighttpd (`mod_scgi`), both over TCP.
//!
//! Every web server runs the case set of util::cases (as tests/fcgi.rs and tests/ajp.rs do): a
//! GET whose raw query and non-ASCII path arrive intact, an 8 MiB upload, a 32 MiB download, a
//! 404 and a 302 passed through, three `Set-Cookie` headers kept apart, and 200 concurrent
//! requests without an error.
//!
//! The CGI variables differ per web server, and each suite states what its server sends
//! (protocols.md §6): where SCRIPT_NAME ends and PATH_INFO starts, and whether a GET carries
//! `CONTENT_LENGTH`. What every server agrees on is checked the same way everywhere:
//! REQUEST_URI and QUERY_STRING raw, SCRIPT_NAME + PATH_INFO the decoded path.

use crate::util::apache_proxy::ApacheProxy;
use crate::util::cases::{gateway_suite, EnvShape, Stack};
use crate::util::command::{Server, TestCommand};
use crate::util::lighttpd_gw::LighttpdGw;
use crate::util::webserver::Nginx;

/// nginx's SCGI location, as in docs/protocols/scgi.md; `@ADDR@` is `unix:PATH` or
/// `host:port`.
pub(crate) const NGINX_SCGI_LOCATION: &str = "location / {
    include /etc/nginx/scgi_params;
    scgi_pass @ADDR@;
}";

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
    let front = Nginx::start("", &location).into();
    Stack { server, front }
}

fn apache_scgi() -> Stack {
    let server = axum_server("scgi", false, &[]);
    let front = ApacheProxy::scgi(server.listen()).into();
    Stack { server, front }
}

fn lighttpd_scgi() -> Stack {
    let server = axum_server("scgi", false, &[]);
    let front = LighttpdGw::scgi(server.listen()).into();
    Stack { server, front }
}

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
