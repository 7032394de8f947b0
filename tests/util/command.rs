//! [`TestCommand`]: the real `appserver` binary (or the axum example) as a child process.
//!
//! A server is ready when it prints its one ready line on stderr
//! (`appserver: ready: protocol=fcgi method=threaded listen=ADDR pid=N`); nothing here sleeps
//! to wait for it. After that line a thread keeps draining stderr into a buffer, so a chatty
//! server never blocks on a full pipe and tests can assert on its log lines.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

/// How long a server may take to print its ready line. Generous: a debug build on a loaded
/// 2-core machine can be slow to start, and a timeout only matters when something is broken.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The `appserver` binary cargo built for this test run.
pub(crate) fn appserver_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_appserver"))
}

/// The axum example binary, `target/<profile>/examples/axum`, built on first use.
///
/// `cargo test` with no target filter builds examples (so does `--all-targets`, which is
/// how `scripts/test` runs), but a filtered run (`cargo test --test tests fcgi::`) does not,
/// and a stale example would test yesterday's library. So the first test that needs it runs
/// `cargo build --example axum` for the test binary's profile: a no-op when it is fresh.
/// Cargo has released its build lock by the time tests run, so this cannot deadlock.
pub(crate) fn axum_example_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| build_example("axum")).clone()
}

/// The hello example binary, built on first use as [`axum_example_bin`] is.
pub(crate) fn hello_example_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| build_example("hello")).clone()
}

/// The bench example (the peer benchmark's app), built on first use as [`axum_example_bin`] is.
pub(crate) fn bench_example_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| build_example("bench")).clone()
}

/// Runs `cargo build --example NAME` for the test binary's profile; returns the binary.
fn build_example(name: &str) -> PathBuf {
    // current_exe = target/<profile>/deps/tests-HASH
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--quiet", "--example", name])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    match profile_dir.file_name().and_then(|p| p.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(profile) => {
            cmd.args(["--profile", profile]);
        }
    }
    let status = cmd.status().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed: {status}");
    let bin = profile_dir.join("examples").join(name);
    assert!(
        bin.exists(),
        "{name} example not found at {}",
        bin.display()
    );
    bin
}

/// Where a started server listens, parsed from its ready line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Listen {
    /// `listen=127.0.0.1:43125`
    Tcp(SocketAddr),
    /// `listen=unix:/path`
    Unix(PathBuf),
    /// `listen=fd0`
    Fd0,
}

impl Listen {
    fn parse(s: &str) -> Listen {
        if s == "fd0" {
            Listen::Fd0
        } else if let Some(path) = s.strip_prefix("unix:") {
            Listen::Unix(PathBuf::from(path))
        } else {
            Listen::Tcp(
                s.parse()
                    .unwrap_or_else(|e| panic!("ready line listen={s:?}: {e}")),
            )
        }
    }

    /// The TCP address; panics for other listeners.
    pub(crate) fn tcp(&self) -> SocketAddr {
        match self {
            Listen::Tcp(addr) => *addr,
            other => panic!("expected a TCP listener, got {other:?}"),
        }
    }

    /// The form nginx's `fastcgi_pass` and `appserver probe` take.
    pub(crate) fn nginx_addr(&self) -> String {
        match self {
            Listen::Tcp(addr) => addr.to_string(),
            Listen::Unix(path) => format!("unix:{}", path.display()),
            Listen::Fd0 => panic!("an fd 0 listener has no address"),
        }
    }
}

/// Builds the command line of a server or a one-shot run of the binary.
#[derive(Debug)]
pub(crate) struct TestCommand {
    cmd: Command,
    dir: TempDir,
}

impl TestCommand {
    /// The `appserver` binary, with a fresh temporary directory as its working directory.
    pub(crate) fn appserver() -> TestCommand {
        TestCommand::new(appserver_bin())
    }

    /// The axum example binary.
    pub(crate) fn axum() -> TestCommand {
        TestCommand::new(axum_example_bin())
    }

    /// The hello example binary: answers every request without reading its body.
    pub(crate) fn hello() -> TestCommand {
        TestCommand::new(hello_example_bin())
    }

    /// The bench example binary: `/`, `/big` and `/upload` as `benches/peers.sh` drives them.
    pub(crate) fn bench() -> TestCommand {
        TestCommand::new(bench_example_bin())
    }

    /// Any program (`manage.py runfcgi` under the test virtualenv's Python, which execs
    /// appserver), with a fresh temporary directory as its working directory.
    pub(crate) fn new(bin: PathBuf) -> TestCommand {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new(bin);
        cmd.current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // The server's own log filtering must not depend on the developer's shell.
            .env_remove("RUST_LOG")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("FCGI_WEB_SERVER_ADDRS");
        TestCommand { cmd, dir }
    }

    /// A path inside the temporary directory.
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Appends one argument.
    pub(crate) fn arg(&mut self, arg: impl AsRef<std::ffi::OsStr>) -> &mut TestCommand {
        self.cmd.arg(arg);
        self
    }

    /// Appends arguments.
    pub(crate) fn args<I, S>(&mut self, args: I) -> &mut TestCommand
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.cmd.args(args);
        self
    }

    /// Sets an environment variable of the child.
    pub(crate) fn env(&mut self, name: &str, value: &str) -> &mut TestCommand {
        self.cmd.env(name, value);
        self
    }

    /// Sets the child's stdin (fd 0).
    pub(crate) fn stdin(&mut self, stdin: Stdio) -> &mut TestCommand {
        self.cmd.stdin(stdin);
        self
    }

    /// Runs to completion (at most `timeout`) and returns what it printed.
    pub(crate) fn output(&mut self, timeout: Duration) -> Output {
        let mut child = self.cmd.spawn().expect("spawn");
        let stdout = drain(child.stdout.take().expect("stdout piped"));
        let stderr = drain(child.stderr.take().expect("stderr piped"));
        let status = wait_timeout(&mut child, timeout).unwrap_or_else(|| {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{:?} did not exit within {timeout:?}", self.cmd)
        });
        Output {
            status,
            stdout: stdout.join().expect("stdout reader"),
            stderr: stderr.join().expect("stderr reader"),
        }
    }

    /// Sets the child's stdout.
    pub(crate) fn stdout(&mut self, stdout: Stdio) -> &mut TestCommand {
        self.cmd.stdout(stdout);
        self
    }

    /// Sets the child's stderr. Without a piped stderr there is no ready line to wait for:
    /// use [`TestCommand::spawn`].
    pub(crate) fn stderr(&mut self, stderr: Stdio) -> &mut TestCommand {
        self.cmd.stderr(stderr);
        self
    }

    /// Starts a server and waits for its ready line.
    pub(crate) fn start(self) -> Server {
        let what = format!("{:?}", self.cmd);
        let (mut server, ready_rx) = self.spawn_inner();
        let ready_rx = ready_rx.expect("start() needs a piped stderr");
        match ready_rx.recv_timeout(READY_TIMEOUT) {
            Ok(line) => {
                let listen = line
                    .split_whitespace()
                    .find_map(|f| f.strip_prefix("listen="))
                    .unwrap_or_else(|| panic!("ready line without listen=: {line}"));
                server.listen = Listen::parse(listen);
                server.ready_line = line;
                server
            }
            Err(_) => {
                let status = server.kill();
                panic!(
                    "{what} printed no ready line within {READY_TIMEOUT:?} (exit: {status:?}); stderr:\n{}",
                    server.log()
                );
            }
        }
    }

    /// Starts the child without waiting for anything (for fd-0 mode, where the test owns the
    /// listening socket and so knows it is connectable already).
    pub(crate) fn spawn(self) -> Server {
        self.spawn_inner().0
    }

    fn spawn_inner(mut self) -> (Server, Option<mpsc::Receiver<String>>) {
        let mut child = self.cmd.spawn().expect("spawn server");
        let pid = child.id();
        let log = Arc::new(Log::default());
        let mut ready_rx = None;
        let reader = child.stderr.take().map(|stderr| {
            let (ready_tx, rx) = mpsc::channel();
            ready_rx = Some(rx);
            let log = Arc::clone(&log);
            thread::spawn(move || {
                let mut ready = Some(ready_tx);
                let mut lines = BufReader::new(stderr);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    match lines.read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    let text = String::from_utf8_lossy(&line).into_owned();
                    log.push(&text);
                    if let Some(at) = text.find("appserver: ready: ") {
                        if let Some(tx) = ready.take() {
                            let _ = tx.send(text[at..].trim_end().to_owned());
                        }
                    }
                }
            })
        });
        let stdout = child.stdout.take().map(drain);
        let server = Server {
            child: Some(child),
            pid,
            listen: Listen::Fd0,
            ready_line: String::new(),
            log,
            reader,
            stdout,
            _dir: self.dir,
        };
        (server, ready_rx)
    }
}

/// How long [`Server::wait_log`] waits for a line.
const LOG_TIMEOUT: Duration = Duration::from_secs(10);

/// The server's stderr as read so far, and a signal for each line added.
#[derive(Debug, Default)]
struct Log {
    text: Mutex<String>,
    grew: Condvar,
}

impl Log {
    fn push(&self, line: &str) {
        self.text.lock().unwrap().push_str(line);
        self.grew.notify_all();
    }
}

/// A running server; killed (SIGKILL) on drop if still running.
#[derive(Debug)]
pub(crate) struct Server {
    child: Option<Child>,
    pid: u32,
    listen: Listen,
    ready_line: String,
    log: Arc<Log>,
    reader: Option<thread::JoinHandle<()>>,
    stdout: Option<thread::JoinHandle<Vec<u8>>>,
    /// Held so the directory (socket, pidfile) lives as long as the server.
    _dir: TempDir,
}

impl Server {
    /// Where it listens.
    pub(crate) fn listen(&self) -> &Listen {
        &self.listen
    }

    /// The ready line as printed.
    pub(crate) fn ready_line(&self) -> &str {
        &self.ready_line
    }

    /// The server's pid.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Everything the server wrote to stderr so far, as far as the reader thread has taken
    /// it in: a line the server wrote a moment ago may not be here yet (see
    /// [`Server::wait_log`]).
    pub(crate) fn log(&self) -> String {
        self.log.text.lock().unwrap().clone()
    }

    /// Waits until the log holds `needle` at least `count` times; false if it does not within
    /// [`LOG_TIMEOUT`]. What a test asserts about a line the server logs while answering a
    /// request: the client can have the response before the line has crossed the pipe.
    pub(crate) fn wait_log(&self, needle: &str, count: usize) -> bool {
        let deadline = Instant::now() + LOG_TIMEOUT;
        let mut text = self.log.text.lock().unwrap();
        while text.matches(needle).count() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            text = self.log.grew.wait_timeout(text, left).unwrap().0;
        }
        true
    }

    /// Sends a signal.
    pub(crate) fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid as i32), signal)
            .unwrap_or_else(|e| panic!("kill -{signal} {}: {e}", self.pid));
    }

    /// Waits for the server to exit; `None` if it is still running after `timeout`. Once it
    /// has exited, its whole stderr is in [`Server::log`].
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let status = wait_timeout(child, timeout)?;
        self.child = None;
        self.finish_readers();
        Some(status)
    }

    /// Connections the server has accepted and not yet closed, counted from the kernel's
    /// socket tables (`/proc/net/tcp`, `/proc/net/unix`): how a test sees whether a web
    /// server's keep-alive connection stayed open.
    pub(crate) fn open_connections(&self) -> usize {
        match &self.listen {
            Listen::Tcp(addr) => {
                let table = if addr.is_ipv4() {
                    "/proc/net/tcp"
                } else {
                    "/proc/net/tcp6"
                };
                tcp_peers(table, addr.port()).len()
            }
            Listen::Unix(path) => unix_accepted(path),
            Listen::Fd0 => panic!("open_connections needs an address"),
        }
    }

    /// Peak resident set size (`VmHWM`) in bytes, from `/proc/PID/status`.
    pub(crate) fn peak_rss(&self) -> u64 {
        peak_rss_of(self.pid)
    }

    /// Current resident set size (`VmRSS`) in bytes.
    pub(crate) fn rss(&self) -> u64 {
        rss_of(self.pid)
    }

    /// Stops the server: TERM (so a master can take its workers down), KILL after 2 s.
    fn kill(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM);
        let status = match wait_timeout(&mut child, Duration::from_secs(2)) {
            Some(status) => Some(status),
            None => {
                let _ = child.kill();
                child.wait().ok()
            }
        };
        self.finish_readers();
        status
    }

    /// Lets the stderr reader take in the last lines. Bounded: a worker process that outlived
    /// the server would hold the pipes open forever.
    fn finish_readers(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        if let Some(reader) = self.reader.take() {
            join_until(reader, deadline);
        }
        if let Some(stdout) = self.stdout.take() {
            join_until(stdout, deadline);
        }
    }
}

/// Joins `handle` if it finishes before `deadline`; otherwise leaves it detached.
fn join_until<T>(handle: thread::JoinHandle<T>, deadline: Instant) {
    while !handle.is_finished() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    if handle.is_finished() {
        let _ = handle.join();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The remote ends (as the kernel's `table` writes them, `/proc/net/tcp` or `/proc/net/tcp6`)
/// of the established TCP connections whose local port is `port`.
pub(crate) fn tcp_peers(table: &str, port: u16) -> Vec<String> {
    let port = format!(":{port:04X}");
    stable_rows(table, |f| {
        // local_address ends in our port; st 01 = ESTABLISHED
        (f.len() > 3 && f[1].ends_with(&port) && f[3] == "01").then(|| format!("{} {}", f[1], f[2]))
    })
    .into_iter()
    .map(|row| {
        row.split_once(' ')
            .map(|(_, remote)| remote.to_owned())
            .unwrap_or(row)
    })
    .collect()
}

/// Connections accepted on the unix socket `path` and still open, from `/proc/net/unix`: an
/// accepted server-side socket carries the listener's path and state 03 (connected); one
/// still waiting in the backlog shows 02.
pub(crate) fn unix_accepted(path: &Path) -> usize {
    let path = path.display().to_string();
    stable_rows("/proc/net/unix", |f| {
        // the inode (column 6) tells two connections on one path apart
        (f.len() > 7 && f[7] == path && f[5] == "03").then(|| f[6].to_owned())
    })
    .len()
}

/// The distinct rows of a kernel socket table that `pick` keys, from a consistent view.
///
/// The kernel writes these tables a page per `read()` and walks its hash tables afresh for
/// each page, so while other sockets come and go one read can list a socket twice or miss
/// it. The table is therefore read until two reads in a row agree, and keys are deduplicated.
fn stable_rows(table: &str, pick: impl Fn(&[&str]) -> Option<String>) -> BTreeSet<String> {
    let read = || -> BTreeSet<String> {
        std::fs::read_to_string(table)
            .unwrap_or_else(|e| panic!("read {table}: {e}"))
            .lines()
            .skip(1)
            .filter_map(|l| pick(&l.split_whitespace().collect::<Vec<_>>()))
            .collect()
    };
    let mut last = read();
    for _ in 0..MAX_TABLE_READS {
        let next = read();
        if next == last {
            return next;
        }
        last = next;
    }
    last
}

/// Reads of a socket table before taking the last one as it is. Each read takes
/// microseconds; only a table that changes on every read (heavy load) exhausts this, and
/// callers that look at a busy table poll it anyway.
const MAX_TABLE_READS: usize = 100;

/// Current resident set size (`VmRSS`) of process `pid` in bytes.
pub(crate) fn rss_of(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS:") * 1024
}

/// Peak resident set size (`VmHWM`) of process `pid` in bytes.
pub(crate) fn peak_rss_of(pid: u32) -> u64 {
    proc_status_kib(pid, "VmHWM:") * 1024
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn drain(mut r: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

/// `Child::wait` with a deadline: polls `try_wait` every 10 ms. Polling a child's exit is a
/// readiness check, not a sleep standing in for one: std offers no blocking wait with a timeout.
pub(crate) fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}
