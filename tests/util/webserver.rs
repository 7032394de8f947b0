//! Real web servers in front of appserver: [`Nginx`], started from a config written into a
//! temporary directory, on a free loopback port, as a child process of the test.
//!
//! Every file nginx writes (pid, logs, temp paths) is in that directory, so it runs as any
//! user and two tests never share anything. Readiness is a successful connect to its port.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

use super::command::{wait_timeout, Listen};

/// The config template: `@DIR@`, `@PORT@`, `@HTTP@` (http-level directives such as upstream
/// blocks) and `@SERVER@` (locations) are filled in.
const NGINX_CONF: &str = include_str!("../data/nginx.conf");

/// How long nginx may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);

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
pub(crate) struct Nginx {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
}

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
        let mut last_error = String::new();
        // A port picked by binding port 0 can be taken by someone else before nginx binds it;
        // that is rare, so a few attempts are plenty.
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("tempdir");
            let port = free_port();
            let conf = NGINX_CONF
                .replace("@DIR@", &dir.path().display().to_string())
                .replace("@PORT@", &port.to_string())
                .replace("@HTTP@", http)
                .replace("@SERVER@", server);
            let conf_path = dir.path().join("nginx.conf");
            std::fs::write(&conf_path, conf).expect("write nginx.conf");
            let child = Command::new(&bin)
                .arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(&conf_path)
                .arg("-e")
                .arg(dir.path().join("error.log"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
            let mut nginx = Nginx {
                child: Some(child),
                port,
                dir,
            };
            match nginx.wait_ready() {
                Ok(()) => return nginx,
                Err(e) => last_error = e,
            }
            if !last_error.contains("Address already in use") {
                break;
            }
        }
        panic!("nginx did not start: {last_error}");
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            let child = self.child.as_mut().expect("nginx child");
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return Err(format!(
                    "exited with {status}; error.log:\n{}",
                    self.error_log()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "not accepting on port {} after {START_TIMEOUT:?}; error.log:\n{}",
                    self.port,
                    self.error_log()
                ));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The loopback port nginx listens on.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// The error log so far (nginx logs upstream failures there).
    pub(crate) fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
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

/// A loopback port that was free a moment ago.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}
