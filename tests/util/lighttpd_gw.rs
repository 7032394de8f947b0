//! lighttpd as a gateway in front of a running appserver: [`LighttpdGw`], mod_scgi or
//! mod_ajp13 with `host`/`port` backends (lighttpd connects; it spawns nothing), started from
//! `tests/data/lighttpd-gw.conf` in a temporary directory on a free loopback port, as a child
//! process of the test (`lighttpd -D -f CONF`).
//!
//! Every file lighttpd writes (pid, error log, buffered request bodies) is in that directory,
//! so it runs as any user, root included. Readiness is a successful connect to the port; the
//! server is stopped (TERM, then KILL) by pid on drop.

use std::fs::File;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

use super::command::{wait_timeout, Listen};
use super::webserver::free_port;

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

/// How long lighttpd may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The lighttpd binary. A missing web server fails the test: `scripts/test` installs it.
pub(crate) fn lighttpd_bin() -> PathBuf {
    let bin = PathBuf::from("/usr/sbin/lighttpd");
    if !bin.is_file() {
        panic!(
            "lighttpd not found at {}: run scripts/test, which installs it (Debian package lighttpd)",
            bin.display()
        );
    }
    bin
}

/// A running lighttpd; stopped (TERM, then KILL) on drop.
#[derive(Debug)]
pub(crate) struct LighttpdGw {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
}

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
        let bin = lighttpd_bin();
        let mut last_error = String::new();
        // A port picked by binding port 0 can be taken before lighttpd binds it; rare, so a
        // few attempts are plenty.
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("tempdir");
            for sub in ["htdocs", "upload"] {
                std::fs::create_dir(dir.path().join(sub)).expect("mkdir");
            }
            let port = free_port();
            let conf = LIGHTTPD_CONF
                .replace("@DIR@", &dir.path().display().to_string())
                .replace("@PORT@", &port.to_string())
                .replace("@MODULES@", modules)
                .replace("@GATEWAY@", gateway);
            let conf_path = dir.path().join("lighttpd.conf");
            std::fs::write(&conf_path, conf).expect("write lighttpd.conf");
            // Errors before server.errorlog is open (bad config, port taken) go to stderr.
            let startup = File::create(dir.path().join("startup.log")).expect("startup.log");
            let child = Command::new(&bin)
                .arg("-D")
                .arg("-f")
                .arg(&conf_path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(startup))
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
            let mut lighttpd = LighttpdGw {
                child: Some(child),
                port,
                dir,
            };
            match lighttpd.wait_ready() {
                Ok(()) => return lighttpd,
                Err(e) => last_error = e,
            }
            if !last_error.contains("Address already in use") {
                break;
            }
        }
        panic!("lighttpd did not start: {last_error}");
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            let child = self.child.as_mut().expect("lighttpd child");
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return Err(format!("exited with {status}; logs:\n{}", self.error_log()));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "not accepting on port {} after {START_TIMEOUT:?}; logs:\n{}",
                    self.port,
                    self.error_log()
                ));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The loopback port lighttpd listens on.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// Startup output and the error log so far.
    pub(crate) fn error_log(&self) -> String {
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!("{}{}", read("startup.log"), read("error.log"))
    }
}

impl Drop for LighttpdGw {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            if wait_timeout(&mut child, Duration::from_secs(5)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// `template` with appserver's TCP address filled in. lighttpd could use a unix socket
/// (`"socket" => PATH`); the tests use TCP like the Apache ones, so the cases compare.
fn gateway(template: &str, listen: &Listen) -> String {
    let addr = listen.tcp();
    template
        .replace("@HOST@", &addr.ip().to_string())
        .replace("@PORT@", &addr.port().to_string())
}
