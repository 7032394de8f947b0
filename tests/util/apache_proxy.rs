//! Apache httpd as a reverse proxy in front of appserver: [`ApacheProxy`], mod_proxy_fcgi,
//! mod_proxy_scgi or mod_proxy_ajp, started from `tests/data/apache-proxy.conf` in a temporary directory on a
//! free loopback port, as a child process of the test (`apache2 -f CONF -DFOREGROUND`).
//!
//! Every file Apache writes (pid, logs, mutexes, runtime files) is in that directory. When the
//! tests run as root, Apache's workers run as `www-data` (it refuses to serve as root), so the
//! directory is made world-readable and appserver is reached over TCP, which needs no file
//! permissions. Starting, readiness and stopping are [`WebServer`]'s.

use std::ops::Deref;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use super::command::Listen;
use super::webserver::{sbin, WebServer};

/// The config template: `@DIR@`, `@PORT@`, `@USER@` and `@PROXY@` are filled in.
const APACHE_CONF: &str = include_str!("../data/apache-proxy.conf");

/// The FastCGI mapping the tests use, as php-fpm sites configure mod_proxy_fcgi; `@ADDR@` is
/// appserver's `host:port`.
pub(crate) const FCGI_PROXY_PASS: &str = r#"ProxyPass "/" "fcgi://@ADDR@/""#;

/// The SCGI mapping the tests use; `@ADDR@` is appserver's `host:port`. The whole site goes to
/// the app, so the app sees the paths clients asked for (see docs/protocols/scgi.md for
/// mounting under a prefix).
pub(crate) const SCGI_PROXY_PASS: &str = r#"ProxyPass "/" "scgi://@ADDR@/""#;

/// The AJP13 mapping the tests use; `@OPTIONS@` are worker parameters such as `secret=TEXT`
/// and `ping=1` (CPING before every request).
pub(crate) const AJP_PROXY_PASS: &str = r#"ProxyPass "/" "ajp://@ADDR@/" @OPTIONS@"#;

/// A running Apache; stopped (TERM, then KILL) on drop.
#[derive(Debug)]
pub(crate) struct ApacheProxy(WebServer);

impl ApacheProxy {
    /// Apache passing every request to appserver at `listen` over FastCGI
    /// ([`FCGI_PROXY_PASS`]).
    pub(crate) fn fcgi(listen: &Listen) -> ApacheProxy {
        ApacheProxy::start(&FCGI_PROXY_PASS.replace("@ADDR@", &addr(listen)))
    }

    /// Apache passing every request to appserver at `listen` over SCGI
    /// ([`SCGI_PROXY_PASS`]).
    pub(crate) fn scgi(listen: &Listen) -> ApacheProxy {
        ApacheProxy::start(&SCGI_PROXY_PASS.replace("@ADDR@", &addr(listen)))
    }

    /// Apache passing every request to appserver at `listen` over AJP13 with the worker
    /// parameters `options` (e.g. `secret=s3cret ping=1`) ([`AJP_PROXY_PASS`]).
    pub(crate) fn ajp(listen: &Listen, options: &str) -> ApacheProxy {
        ApacheProxy::start(
            &AJP_PROXY_PASS
                .replace("@ADDR@", &addr(listen))
                .replace("@OPTIONS@", options),
        )
    }

    /// Apache with the given proxy directives.
    pub(crate) fn start(proxy: &str) -> ApacheProxy {
        let bin = sbin("apache2");
        ApacheProxy(WebServer::start("Apache", |dir, port| {
            // Apache's workers (www-data when root) must reach the directory.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                .expect("chmod tempdir");
            std::fs::create_dir(dir.join("htdocs")).expect("mkdir htdocs");
            let user = if nix::unistd::geteuid().is_root() {
                "User www-data\nGroup www-data"
            } else {
                ""
            };
            let conf = APACHE_CONF
                .replace("@DIR@", &dir.display().to_string())
                .replace("@PORT@", &port.to_string())
                .replace("@USER@", user)
                .replace("@PROXY@", proxy);
            let conf_path = dir.join("httpd.conf");
            std::fs::write(&conf_path, conf).expect("write httpd.conf");
            let mut cmd = Command::new(&bin);
            cmd.arg("-f")
                .arg(&conf_path)
                .arg("-DFOREGROUND")
                .env_clear()
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
            cmd
        }))
    }
}

impl Deref for ApacheProxy {
    type Target = WebServer;

    fn deref(&self) -> &WebServer {
        &self.0
    }
}

impl From<ApacheProxy> for WebServer {
    fn from(apache: ApacheProxy) -> WebServer {
        apache.0
    }
}

/// `host:port` of a TCP listener. The tests put appserver on TCP behind Apache: a unix socket
/// in a root-owned temporary directory would not be connectable by Apache's `www-data` workers.
fn addr(listen: &Listen) -> String {
    listen.tcp().to_string()
}
