//! Apache httpd as a reverse proxy in front of appserver: [`ApacheProxy`], mod_proxy_scgi or
//! mod_proxy_ajp, started from `tests/data/apache-proxy.conf` in a temporary directory on a
//! free loopback port, as a child process of the test (`apache2 -f CONF -DFOREGROUND`).
//!
//! Every file Apache writes (pid, logs, mutexes, runtime files) is in that directory. When the
//! tests run as root, Apache's workers run as `www-data` (it refuses to serve as root), so the
//! directory is made world-readable and appserver is reached over TCP, which needs no file
//! permissions. Readiness is a successful connect to the port; the server is stopped (TERM,
//! then KILL) by pid on drop.

use std::fs::File;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

use super::command::{wait_timeout, Listen};
use super::webserver::free_port;

/// The config template: `@DIR@`, `@PORT@`, `@USER@` and `@PROXY@` are filled in.
const APACHE_CONF: &str = include_str!("../data/apache-proxy.conf");

/// The SCGI mapping the tests use; `@ADDR@` is appserver's `host:port`. The whole site goes to
/// the app, so the app sees the paths clients asked for (see docs/protocols/scgi.md for
/// mounting under a prefix).
pub(crate) const SCGI_PROXY_PASS: &str = r#"ProxyPass "/" "scgi://@ADDR@/""#;

/// The AJP13 mapping the tests use; `@OPTIONS@` are worker parameters such as `secret=TEXT`
/// and `ping=1` (CPING before every request).
pub(crate) const AJP_PROXY_PASS: &str = r#"ProxyPass "/" "ajp://@ADDR@/" @OPTIONS@"#;

/// How long Apache may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The Apache binary. A missing web server fails the test: `scripts/test` installs it.
pub(crate) fn apache_bin() -> PathBuf {
    let bin = PathBuf::from("/usr/sbin/apache2");
    if !bin.is_file() {
        panic!(
            "Apache not found at {}: run scripts/test, which installs it (Debian package apache2)",
            bin.display()
        );
    }
    bin
}

/// A running Apache; stopped (TERM, then KILL) on drop.
#[derive(Debug)]
pub(crate) struct ApacheProxy {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
}

impl ApacheProxy {
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
        let bin = apache_bin();
        let mut last_error = String::new();
        // A port picked by binding port 0 can be taken before Apache binds it; rare, so a few
        // attempts are plenty.
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("tempdir");
            // Apache's workers (www-data when root) must reach the directory.
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
                .expect("chmod tempdir");
            std::fs::create_dir(dir.path().join("htdocs")).expect("mkdir htdocs");
            let port = free_port();
            let user = if nix::unistd::geteuid().is_root() {
                "User www-data\nGroup www-data"
            } else {
                ""
            };
            let conf = APACHE_CONF
                .replace("@DIR@", &dir.path().display().to_string())
                .replace("@PORT@", &port.to_string())
                .replace("@USER@", user)
                .replace("@PROXY@", proxy);
            let conf_path = dir.path().join("httpd.conf");
            std::fs::write(&conf_path, conf).expect("write httpd.conf");
            // Startup errors (bad config, port taken) go to stderr before ErrorLog is open.
            let startup = File::create(dir.path().join("startup.log")).expect("startup.log");
            let child = Command::new(&bin)
                .arg("-f")
                .arg(&conf_path)
                .arg("-DFOREGROUND")
                .env_clear()
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(startup))
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
            let mut apache = ApacheProxy {
                child: Some(child),
                port,
                dir,
            };
            match apache.wait_ready() {
                Ok(()) => return apache,
                Err(e) => last_error = e,
            }
            if !last_error.contains("Address already in use") {
                break;
            }
        }
        panic!("Apache did not start: {last_error}");
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            let child = self.child.as_mut().expect("apache child");
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

    /// The loopback port Apache listens on.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// Startup output and the error log so far (proxy errors are logged there).
    pub(crate) fn error_log(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.path(name)).unwrap_or_default();
        format!("{}{}", read("startup.log"), read("error.log"))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for ApacheProxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // TERM to the parent stops its children too.
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            if wait_timeout(&mut child, Duration::from_secs(5)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// `host:port` of a TCP listener. The tests put appserver on TCP behind Apache: a unix socket
/// in a root-owned temporary directory would not be connectable by Apache's `www-data` workers.
fn addr(listen: &Listen) -> String {
    listen.tcp().to_string()
}
