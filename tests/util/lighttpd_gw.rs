//! lighttpd as a gateway in front of a running appserver: [`LighttpdGw`], mod_scgi or
//! mod_ajp13 with `host`/`port` backends (lighttpd connects; it spawns nothing), started from
//! `tests/data/lighttpd-gw.conf` in a temporary directory on a free loopback port, as a child
//! process of the test (`lighttpd -D -f CONF`).
//!
//! Every file lighttpd writes (pid, error log, buffered request bodies) is in that directory,
//! so it runs as any user, root included. Starting, readiness and stopping are
//! [`WebServer`]'s.

use std::ops::Deref;
use std::path::PathBuf;
use std::process::Command;

use super::command::Listen;
use super::webserver::{sbin, WebServer};

/// The config template: `@DIR@`, `@PORT@`, `@MODULES@` and `@GATEWAY@` are filled in.
const LIGHTTPD_CONF: &str = include_str!("../data/lighttpd-gw.conf");

/// The SCGI gateway the tests use; `@HOST@` and `@PORT@` are appserver's. Mounted at `/` with
/// `fix-root-scriptname`, so SCRIPT_NAME is empty and PATH_INFO the whole decoded path
/// (without it lighttpd takes the first path segment for SCRIPT_NAME).
pub(crate) const SCGI_SERVER: &str = r#"scgi.server = ( "/" => ((
    "host" => "@HOST@",
    "port" => @PORT@,
    "check-local" => "disable",
    "fix-root-scriptname" => "enable",
)) )"#;

/// The AJP13 gateway the tests use. No `fix-root-scriptname`: mod_ajp13 sends lighttpd's
/// SCRIPT_NAME as `req_uri`, which that option would make empty (see docs/protocols/ajp13.md).
pub(crate) const AJP13_SERVER: &str = r#"ajp13.server = ( "/" => ((
    "host" => "@HOST@",
    "port" => @PORT@,
    "check-local" => "disable",
)) )"#;

/// A running lighttpd; stopped (TERM, then KILL) on drop.
#[derive(Debug)]
pub(crate) struct LighttpdGw(WebServer);

impl LighttpdGw {
    /// lighttpd passing every request to appserver at `listen` over SCGI ([`SCGI_SERVER`]).
    pub(crate) fn scgi(listen: &Listen) -> LighttpdGw {
        LighttpdGw::start(r#""mod_scgi""#, &gateway(SCGI_SERVER, listen))
    }

    /// lighttpd passing every request to appserver at `listen` over AJP13
    /// ([`AJP13_SERVER`]).
    pub(crate) fn ajp13(listen: &Listen) -> LighttpdGw {
        let module = PathBuf::from("/usr/lib/lighttpd/mod_ajp13.so");
        assert!(
            module.is_file(),
            "{} is missing: lighttpd 1.4.59 or later ships it (run scripts/test)",
            module.display()
        );
        LighttpdGw::start(r#""mod_ajp13""#, &gateway(AJP13_SERVER, listen))
    }

    /// lighttpd loading `modules` (a quoted, comma-separated list) with the `gateway`
    /// directive.
    pub(crate) fn start(modules: &str, gateway: &str) -> LighttpdGw {
        let bin = sbin("lighttpd");
        LighttpdGw(WebServer::start("lighttpd", |dir, port| {
            for sub in ["htdocs", "upload"] {
                std::fs::create_dir(dir.join(sub)).expect("mkdir");
            }
            let conf = LIGHTTPD_CONF
                .replace("@DIR@", &dir.display().to_string())
                .replace("@PORT@", &port.to_string())
                .replace("@MODULES@", modules)
                .replace("@GATEWAY@", gateway);
            let conf_path = dir.join("lighttpd.conf");
            std::fs::write(&conf_path, conf).expect("write lighttpd.conf");
            let mut cmd = Command::new(&bin);
            cmd.arg("-D").arg("-f").arg(&conf_path);
            cmd
        }))
    }
}

impl Deref for LighttpdGw {
    type Target = WebServer;

    fn deref(&self) -> &WebServer {
        &self.0
    }
}

impl From<LighttpdGw> for WebServer {
    fn from(lighttpd: LighttpdGw) -> WebServer {
        lighttpd.0
    }
}

/// `template` ([`SCGI_SERVER`], [`AJP13_SERVER`]) with appserver's TCP address filled in.
/// lighttpd could use a unix socket (`"socket" => PATH`); the tests use TCP like the Apache
/// ones, so the cases compare.
pub(crate) fn gateway(template: &str, listen: &Listen) -> String {
    let addr = listen.tcp();
    template
        .replace("@HOST@", &addr.ip().to_string())
        .replace("@PORT@", &addr.port().to_string())
}
