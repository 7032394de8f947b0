//! Caddy as a reverse proxy in front of appserver over FastCGI: [`Caddy`], `reverse_proxy`
//! with `transport fastcgi`, started from `tests/data/Caddyfile` in a temporary directory on a
//! free loopback port, as a child process of the test
//! (`caddy run --config Caddyfile --adapter caddyfile`).
//!
//! Every file Caddy writes (its storage, its autosaved config) is in that directory: the
//! Caddyfile sets the storage there, and `HOME`, `XDG_DATA_HOME` and `XDG_CONFIG_HOME` point
//! there too. Caddy never switches users, so it runs as the tests do and reaches appserver's
//! unix socket in the test's own directory, the way a site runs both as one user. Starting,
//! readiness and stopping are [`WebServer`]'s.

use std::ops::Deref;
use std::path::PathBuf;
use std::process::Command;

use super::command::Listen;
use super::webserver::WebServer;

/// The config template: `@DIR@`, `@PORT@` and `@PROXY@` are filled in.
const CADDYFILE: &str = include_str!("../data/Caddyfile");

/// Where Debian's `caddy` package installs the binary.
const CADDY_BIN: &str = "/usr/bin/caddy";

/// The site's proxy directive the tests use, as a non-PHP app needs it: plain `reverse_proxy`
/// with the FastCGI transport (`php_fastcgi` adds PHP's index.php rewrites and `.php` path
/// splitting on top). `@UPSTREAM@` is `unix//PATH` or `host:port`. With no `split_path`,
/// Caddy sends an empty SCRIPT_NAME and the whole decoded path as PATH_INFO.
pub(crate) const CADDY_REVERSE_PROXY: &str = "reverse_proxy @UPSTREAM@ {
	transport fastcgi
}";

/// A running Caddy; stopped (TERM, then KILL) on drop.
#[derive(Debug)]
pub(crate) struct Caddy(WebServer);

impl Caddy {
    /// Caddy passing every request to appserver at `listen` over FastCGI
    /// ([`CADDY_REVERSE_PROXY`]).
    pub(crate) fn fastcgi(listen: &Listen) -> Caddy {
        Caddy::start(&CADDY_REVERSE_PROXY.replace("@UPSTREAM@", &upstream(listen)))
    }

    /// Caddy serving the site with the given directives.
    pub(crate) fn start(proxy: &str) -> Caddy {
        let bin = PathBuf::from(CADDY_BIN);
        assert!(
            bin.is_file(),
            "{CADDY_BIN} not found: run scripts/test, which installs it (Debian package caddy)"
        );
        // The site block's directives are indented one tab, as `caddy fmt` has them (Caddy
        // warns about an unformatted Caddyfile).
        let proxy = proxy.replace('\n', "\n\t");
        Caddy(WebServer::start("Caddy", |dir, port| {
            let conf = CADDYFILE
                .replace("@DIR@", &dir.display().to_string())
                .replace("@PORT@", &port.to_string())
                .replace("@PROXY@", &proxy);
            let conf_path = dir.join("Caddyfile");
            std::fs::write(&conf_path, conf).expect("write Caddyfile");
            let mut cmd = Command::new(&bin);
            cmd.arg("run")
                .arg("--config")
                .arg(&conf_path)
                .arg("--adapter")
                .arg("caddyfile")
                // Without a `root`, DOCUMENT_ROOT and SCRIPT_FILENAME are the working directory.
                .current_dir(dir)
                .env_clear()
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                .env("HOME", dir)
                .env("XDG_DATA_HOME", dir.join("data"))
                .env("XDG_CONFIG_HOME", dir.join("config"));
            cmd
        }))
    }
}

impl Deref for Caddy {
    type Target = WebServer;

    fn deref(&self) -> &WebServer {
        &self.0
    }
}

impl From<Caddy> for WebServer {
    fn from(caddy: Caddy) -> WebServer {
        caddy.0
    }
}

/// The upstream address as Caddy writes it: `unix//PATH` (the network, a slash, then the
/// absolute path) or `host:port`.
fn upstream(listen: &Listen) -> String {
    match listen {
        Listen::Unix(path) => format!("unix/{}", path.display()),
        other => other.tcp().to_string(),
    }
}
