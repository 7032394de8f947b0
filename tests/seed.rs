//! The Django document's web-server configurations (`../shared/seed/`), run as written: the
//! ones users bring when they move from `manage.py runfcgi` to appserver.
//!
//! - lighttpd: a running server on a unix socket behind `fastcgi.server`, every URL rewritten
//!   onto `/mysite.fcgi` except `/media`, which lighttpd serves itself; and several sites on
//!   one lighttpd, one `$HTTP["host"]` block and one appserver each.
//! - Apache: the document's `<VirtualHost>` with its mod_rewrite rules, `FastCGIExternalServer`
//!   translated to mod_proxy_fcgi (tests/data/seed/apache-site.conf says how and why).
//!
//! In each, the application must see the public URL: `REQUEST_URI` and the request's URI as
//! the client sent them, `SCRIPT_NAME` empty (the site is mounted at `/`, not at the rewrite
//! target) and `PATH_INFO` the decoded path. The restart script and the shared-hosting
//! `.htaccess` (mod_fcgid) are in tests/process.rs.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::util::apache_proxy::ApacheProxy;
use crate::util::cases::{env_lines, env_value};
use crate::util::client::{http_request, pattern_bytes, sha256_hex, HttpResponse};
use crate::util::command::{Server, TestCommand};
use crate::util::webserver::{sbin, WebServer};

/// The document's lighttpd configuration, paths left as placeholders.
const LIGHTTPD_SEED: &str = include_str!("data/seed/lighttpd.conf");

/// The document's multi-site lighttpd configuration.
const LIGHTTPD_SITES: &str = include_str!("data/seed/lighttpd-sites.conf");

/// The document's Apache `<VirtualHost>`, with mod_proxy_fcgi for mod_fastcgi.
const APACHE_SITE: &str = include_str!("data/seed/apache-site.conf");

/// A request path with a query, a space and a non-ASCII segment, as clients send them.
const URI: &str = "/env/caf%C3%A9/a%20b?q=caf%C3%A9&x=1";

/// The axum example started as the document starts Django: `runfcgi` with `socket=` (or
/// `host=`/`port=`) and `pidfile=`, in the foreground so the test owns it.
fn site(unix: bool, extra: &[&str]) -> Server {
    let mut cmd = TestCommand::axum();
    cmd.args(["runfcgi", "daemonize=false"]);
    if unix {
        let socket = format!("socket={}", cmd.path("mysite.sock").display());
        cmd.arg(socket);
    } else {
        cmd.args(["host=127.0.0.1", "port=0"]);
    }
    let pidfile = format!("pidfile={}", cmd.path("mysite.pid").display());
    cmd.arg(pidfile).args(extra);
    cmd.start()
}

/// A directory of static files, readable by every user (Apache serves it as `www-data`).
fn static_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, content) in files {
        std::fs::write(dir.path().join(name), content).expect("write static file");
    }
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

/// lighttpd from the config `conf` makes for its directory (`@PORT@` filled in).
pub(crate) fn lighttpd(conf: impl Fn(&Path) -> String) -> WebServer {
    let bin = sbin("lighttpd");
    WebServer::start("lighttpd", |dir, port| {
        let text = conf(dir).replace("@PORT@", &port.to_string());
        let path = dir.join("lighttpd.conf");
        std::fs::write(&path, text).expect("write lighttpd.conf");
        let mut cmd = Command::new(&bin);
        cmd.arg("-D").arg("-f").arg(&path);
        cmd
    })
}

/// Asserts that the app saw [`URI`] as the public URL of a site mounted at `/`.
fn assert_public_view(resp: &HttpResponse, context: &str) {
    assert_eq!(resp.status, 200, "{}\n{context}", resp.text());
    let lines = env_lines(&resp.text());
    let var = |name| env_value(&lines, name);
    assert_eq!(var("REQUEST_URI"), Some(URI), "{lines:?}");
    assert_eq!(var("QUERY_STRING"), Some("q=caf%C3%A9&x=1"), "{lines:?}");
    assert_eq!(
        var("SCRIPT_NAME"),
        Some(""),
        "the rewrite target leaked: {lines:?}"
    );
    assert_eq!(var("PATH_INFO"), Some("/env/caf\u{e9}/a b"), "{lines:?}");
}

/// An 8 MiB upload through the rewrite reaches the app whole.
fn assert_upload(port: u16, context: &str) {
    let body = pattern_bytes(8 << 20);
    let resp = http_request(port, "POST", "/echo", &[], &body);
    assert_eq!(resp.status, 200, "{}\n{context}", resp.text());
    assert_eq!(resp.header("x-body-len"), Some("8388608"), "{context}");
    assert_eq!(resp.text(), sha256_hex(&body), "{context}");
}

/// `/media/base.css` comes from the media directory: the web server serves it itself, and the
/// app (which has no such route) never sees it.
fn assert_media_served(port: u16, context: &str) {
    let css = http_request(port, "GET", "/media/base.css", &[], &[]);
    assert_eq!(
        (css.status, css.text().as_str()),
        (200, MEDIA_CSS),
        "{context}"
    );
}

/// The one static file the tests put in the media directory.
const MEDIA_CSS: &str = "body { color: black }\n";

#[test]
fn lighttpd_socket_and_rewrite_as_the_document_has_them() {
    let server = site(true, &["method=prefork"]);
    let socket = server.listen().nginx_addr();
    let socket = socket.strip_prefix("unix:").expect("a unix socket");
    let media = static_dir(&[("base.css", MEDIA_CSS)]);
    let docroot = static_dir(&[]);
    let front = lighttpd(|dir| {
        LIGHTTPD_SEED
            .replace("@DIR@", &dir.display().to_string())
            .replace("@DOCROOT@", &docroot.path().display().to_string())
            .replace("@SOCKET@", socket)
            .replace("@MEDIA@", &media.path().display().to_string())
    });
    let context = || format!("{}\n{}", server.log(), front.error_log());

    assert_public_view(
        &http_request(front.port(), "GET", URI, &[], &[]),
        &context(),
    );
    let root = http_request(front.port(), "GET", "/", &[], &[]);
    assert_eq!(
        (root.status, root.text().as_str()),
        (200, "Hello from axum\n"),
        "{}",
        context()
    );
    assert_upload(front.port(), &context());
    assert_media_served(front.port(), &context());
    let missing = http_request(front.port(), "GET", "/media/missing.css", &[], &[]);
    assert_eq!(missing.status, 404, "{}", context());
}

#[test]
fn lighttpd_one_host_block_and_one_server_per_site() {
    let sites = [site(true, &[]), site(true, &["method=threaded"])];
    let sockets: Vec<String> = sites
        .iter()
        .map(|s| s.listen().nginx_addr().replace("unix:", ""))
        .collect();
    let roots = [static_dir(&[]), static_dir(&[])];
    let front = lighttpd(|dir| {
        LIGHTTPD_SITES
            .replace("@DIR@", &dir.display().to_string())
            .replace("@ROOT1@", &roots[0].path().display().to_string())
            .replace("@ROOT2@", &roots[1].path().display().to_string())
            .replace("@SOCKET1@", &sockets[0])
            .replace("@SOCKET2@", &sockets[1])
    });
    for (i, host) in ["www.example1.com", "www.example2.com"].iter().enumerate() {
        let resp = http_request(front.port(), "GET", URI, &[("Host", host)], &[]);
        let context = format!("{host}\n{}\n{}", sites[i].log(), front.error_log());
        assert_public_view(&resp, &context);
        let lines = env_lines(&resp.text());
        assert_eq!(env_value(&lines, "HTTP_HOST"), Some(*host));
        // Each host reached its own server: the document root lighttpd sent is that site's.
        let root = roots[i].path().display().to_string();
        assert_eq!(
            env_value(&lines, "DOCUMENT_ROOT"),
            Some(root.as_str()),
            "{context}"
        );
    }
}

#[test]
fn apache_virtual_host_with_the_document_rewrite_rules() {
    let server = site(false, &[]);
    let media = static_dir(&[("base.css", MEDIA_CSS)]);
    let docroot = static_dir(&[]);
    let front = ApacheProxy::start(
        &APACHE_SITE
            .replace("@DOCROOT@", &docroot.path().display().to_string())
            .replace("@MEDIA@", &media.path().display().to_string())
            .replace("@ADDR@", &server.listen().tcp().to_string()),
    );
    let context = || format!("{}\n{}", server.log(), front.error_log());

    assert_public_view(
        &http_request(front.port(), "GET", URI, &[], &[]),
        &context(),
    );
    assert_upload(front.port(), &context());
    assert_media_served(front.port(), &context());
}
