//! h2o in front of appserver over FastCGI: [`H2o`], `fastcgi.connect` to a running appserver
//! (h2o connects; it spawns nothing), started from `tests/data/h2o.conf` in a temporary
//! directory on a free loopback port, as a child process of the test (`h2o -c CONF`).
//!
//! Every file h2o writes (pid, logs, buffered bodies) is in that directory. Started as root,
//! h2o switches to `nobody` unless the config names a user; the harness names root then, so
//! h2o runs as the tests do (root or not) and reaches appserver's unix socket in the test's
//! own directory, the way a site runs both as one user. Starting, readiness and stopping are
//! [`WebServer`]'s.

use std::ops::Deref;
use std::path::PathBuf;
use std::process::Command;

use super::command::Listen;
use super::webserver::WebServer;

/// The config template: `@DIR@`, `@PORT@`, `@USER@` and `@HOSTS@` are filled in.
const H2O_CONF: &str = include_str!("../data/h2o.conf");

/// Where Debian's `h2o` package installs the binary.
const H2O_BIN: &str = "/usr/bin/h2o";

/// The hosts block the tests use: every path of the default host goes to appserver.
/// `@PORT@` and `@TYPE@` are a socket path and `unix`, or a TCP port and `tcp` (the host
/// defaults to 127.0.0.1). h2o sends an empty SCRIPT_NAME and the whole decoded path as
/// PATH_INFO.
pub(crate) const H2O_FASTCGI_CONNECT: &str = "hosts:
  default:
    paths:
      /:
        fastcgi.connect:
          port: @PORT@
          type: @TYPE@";

/// A running h2o; stopped (TERM, then KILL) on drop.
#[derive(Debug)]
pub(crate) struct H2o(WebServer);

impl H2o {
    /// h2o passing every request to appserver at `listen` over FastCGI
    /// ([`H2O_FASTCGI_CONNECT`]).
    pub(crate) fn fastcgi(listen: &Listen) -> H2o {
        let (port, kind) = match listen {
            Listen::Unix(path) => (path.display().to_string(), "unix"),
            other => {
                let addr = other.tcp();
                assert!(
                    addr.ip().is_loopback() && addr.is_ipv4(),
                    "the h2o config leaves the host at its default 127.0.0.1, not {addr}"
                );
                (addr.port().to_string(), "tcp")
            }
        };
        H2o::start(
            &H2O_FASTCGI_CONNECT
                .replace("@PORT@", &port)
                .replace("@TYPE@", kind),
        )
    }

    /// h2o with the given top-level `hosts` block.
    pub(crate) fn start(hosts: &str) -> H2o {
        let bin = PathBuf::from(H2O_BIN);
        assert!(
            bin.is_file(),
            "{H2O_BIN} not found: run scripts/test, which installs it (Debian package h2o)"
        );
        H2o(WebServer::start("h2o", |dir, port| {
            std::fs::create_dir(dir.join("tmp")).expect("mkdir tmp");
            let user = if nix::unistd::geteuid().is_root() {
                "user: root"
            } else {
                ""
            };
            let conf = H2O_CONF
                .replace("@DIR@", &dir.display().to_string())
                .replace("@PORT@", &port.to_string())
                .replace("@USER@", user)
                .replace("@HOSTS@", hosts);
            let conf_path = dir.join("h2o.conf");
            std::fs::write(&conf_path, conf).expect("write h2o.conf");
            let mut cmd = Command::new(&bin);
            cmd.arg("-c")
                .arg(&conf_path)
                .current_dir(dir)
                .env_clear()
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                .env("HOME", dir);
            cmd
        }))
    }
}

impl Deref for H2o {
    type Target = WebServer;

    fn deref(&self) -> &WebServer {
        &self.0
    }
}

impl From<H2o> for WebServer {
    fn from(h2o: H2o) -> WebServer {
        h2o.0
    }
}
