//! Real web servers as child processes of the test: [`WebServer`], which starts one from a
//! config written into a temporary directory, on a free loopback port, waits until it accepts
//! connections and stops it by pid; and [`Nginx`] in front of appserver on top of it (Apache,
//! lighttpd, Caddy and h2o are in `apache_proxy`, `lighttpd_gw`, `caddy` and `h2o`).
//!
//! Every file a web server writes (pid, logs, temp paths) is in that directory, so it runs as
//! any user and two tests never share anything.

use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

use super::command::{wait_timeout, Listen};

/// The config template: `@DIR@`, `@PORT@`, `@HTTP@` (http-level directives such as upstream
/// blocks) and `@SERVER@` (locations) are filled in.
const NGINX_CONF: &str = include_str!("../data/nginx.conf");

/// How long a web server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a web server may take to exit after TERM (stopping what it spawned first)
/// before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The nginx binary: `nginx` on PATH, else `/usr/sbin/nginx` (not on a normal user's PATH).
/// A missing web server fails the test: `scripts/test` installs it.
pub(crate) fn nginx_bin() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("nginx"))
            .find(|p| p.is_file())
    });
    let bin = on_path.unwrap_or_else(|| PathBuf::from("/usr/sbin/nginx"));
    if !bin.is_file() {
        let hint = if std::env::var_os("CI").is_some() {
            "CI must run scripts/test, which installs it"
        } else {
            "run scripts/test, which installs it (Debian package nginx-light)"
        };
        panic!("nginx not found on PATH or at /usr/sbin/nginx: {hint}");
    }
    bin
}

/// How nginx talks FastCGI to appserver.
#[derive(Clone, Copy, Debug)]
pub(crate) enum FcgiPass {
    /// `fastcgi_pass ADDR;` straight to the address: one connection per request, closed by
    /// appserver after END_REQUEST.
    Close,
    /// An `upstream` block with `keepalive 8` and `fastcgi_keep_conn on`: nginx sets
    /// FCGI_KEEP_CONN and reuses connections.
    KeepConn,
}

/// A running nginx; stopped (TERM, then KILL) on drop.
#[derive(Debug)]
pub(crate) struct Nginx(WebServer);

impl Nginx {
    /// nginx with `location /` passed to appserver at `listen` the way real configs do it:
    /// `include /etc/nginx/fastcgi_params;` then `fastcgi_pass`.
    pub(crate) fn fastcgi(listen: &Listen, pass: FcgiPass) -> Nginx {
        let addr = listen.nginx_addr();
        let (http, target, keep) = match pass {
            FcgiPass::Close => (String::new(), addr, ""),
            FcgiPass::KeepConn => (
                format!("    upstream appserver {{\n        server {addr};\n        keepalive 8;\n    }}\n"),
                "appserver".to_owned(),
                "            fastcgi_keep_conn on;\n",
            ),
        };
        let server = format!(
            "        location / {{\n            include /etc/nginx/fastcgi_params;\n            fastcgi_pass {target};\n{keep}        }}\n"
        );
        Nginx::start(&http, &server)
    }

    /// nginx with the given http-level directives and server-level locations.
    pub(crate) fn start(http: &str, server: &str) -> Nginx {
        let bin = nginx_bin();
        Nginx(WebServer::start("nginx", |dir, port| {
            let conf = NGINX_CONF
                .replace("@DIR@", &dir.display().to_string())
                .replace("@PORT@", &port.to_string())
                .replace("@HTTP@", http)
                .replace("@SERVER@", server);
            let conf_path = dir.join("nginx.conf");
            std::fs::write(&conf_path, conf).expect("write nginx.conf");
            let mut cmd = Command::new(&bin);
            cmd.arg("-p")
                .arg(dir)
                .arg("-c")
                .arg(&conf_path)
                .arg("-e")
                .arg(dir.join("error.log"));
            cmd
        }))
    }
}

impl Deref for Nginx {
    type Target = WebServer;

    fn deref(&self) -> &WebServer {
        &self.0
    }
}

impl From<Nginx> for WebServer {
    fn from(nginx: Nginx) -> WebServer {
        nginx.0
    }
}

/// A web server running as a child process of the test, from a config in its own temporary
/// directory, on a free loopback port: the one place that starts, waits for and stops nginx,
/// Apache, lighttpd, Caddy and h2o ([`Nginx`], [`ApacheProxy`](super::apache_proxy::ApacheProxy),
/// [`LighttpdGw`](super::lighttpd_gw::LighttpdGw), and the ones that spawn appserver
/// themselves).
///
/// Ready once its port accepts a connection. Its stdout and stderr go to `output.log` in the
/// directory: startup errors (bad config, port taken) before its error log is open, and what
/// a program it spawns writes. Stopped (TERM, then KILL) by pid on drop.
#[derive(Debug)]
pub(crate) struct WebServer {
    name: &'static str,
    child: Option<Child>,
    port: u16,
    dir: TempDir,
}

impl WebServer {
    /// Starts `name` on a free port: `setup` gets a fresh temporary directory and the port,
    /// writes the config there and returns the command to run in the foreground. A port picked
    /// by binding port 0 can be taken by someone else before the server binds it; that is rare,
    /// so a few attempts are plenty. Any other failure fails the test at once.
    pub(crate) fn start(
        name: &'static str,
        mut setup: impl FnMut(&Path, u16) -> Command,
    ) -> WebServer {
        let mut last_error = String::new();
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("tempdir");
            let port = free_port();
            let cmd = setup(dir.path(), port);
            let mut server = WebServer::spawn(name, cmd, port, dir);
            match server.wait_ready() {
                Ok(()) => return server,
                Err(e) => last_error = e,
            }
            if !last_error.contains("Address already in use") {
                break;
            }
        }
        panic!("{name} did not start: {last_error}");
    }

    /// Runs `cmd` with its output in `dir/output.log`, and without the variables that change
    /// how an appserver it spawns logs.
    fn spawn(name: &'static str, mut cmd: Command, port: u16, dir: TempDir) -> WebServer {
        let output = File::create(dir.path().join("output.log")).expect("output.log");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(output.try_clone().expect("dup output.log")))
            .stderr(Stdio::from(output))
            .env_remove("RUST_LOG")
            .env_remove("APPSERVER_LOG");
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name} ({cmd:?}): {e}"));
        WebServer {
            name,
            child: Some(child),
            port,
            dir,
        }
    }

    /// Waits until the port accepts a connection; an error with the logs if the server exits
    /// first or takes longer than [`START_TIMEOUT`].
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            let child = self.child.as_mut().expect("web server child");
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

    /// What the server is (`nginx`, `Apache`, `lighttpd`), for messages.
    pub(crate) fn name(&self) -> &'static str {
        self.name
    }

    /// The loopback port it listens on.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// Its pid; panics once it has been stopped.
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().expect("web server running").id()
    }

    /// Its output and its error log so far (upstream and proxy failures are logged there).
    pub(crate) fn error_log(&self) -> String {
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!("{}{}", read("output.log"), read("error.log"))
    }

    /// Stops the server: TERM (a server stops what it spawned first), KILL after
    /// [`STOP_TIMEOUT`]. Its exit status if it exited on TERM; `None` if it was killed or
    /// had been stopped already.
    pub(crate) fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let status = wait_timeout(&mut child, STOP_TIMEOUT);
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        status
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `/usr/sbin/NAME`, where Debian installs the web servers (not on a normal user's PATH). A
/// missing web server fails the test: `scripts/test` installs it.
pub(crate) fn sbin(name: &str) -> PathBuf {
    let path = PathBuf::from("/usr/sbin").join(name);
    assert!(
        path.is_file(),
        "{} not found: run scripts/test, which installs it (Debian package {name})",
        path.display()
    );
    path
}

/// A loopback port that was free a moment ago.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}
