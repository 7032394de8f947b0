//! Process models and the daemon's lifecycle, end to end (design.md §3 and §4).
//!
//! - `method=prefork` keeps its pool: `minspare`..`maxspare` idle workers, never more than
//!   `maxchildren`, a killed worker replaced (and logged), `maxrequests` recycling; a worker
//!   working through a full backlog still answers the connection it keeps open.
//! - The signals under load through real nginx: HUP (reload), TERM (graceful stop), USR1
//!   (reopen `errlog=`); TTIN/TTOU adjustments kept across HUP.
//! - Workers that cannot start (a file descriptor limit, set with `prlimit`): a starting
//!   server exits 1 (a daemonizing start too, instead of waiting forever), a serving pool
//!   retries, a failed reload leaves the previous workers serving.
//! - Daemonizing with a pidfile, and the seed document's restart script run twice against a
//!   server that is still answering a slow request.
//! - Web-server-spawned mode: lighttpd `bin-path` and Apache mod_fcgid (the seed's
//!   `.htaccess` and a `site.fcgi` wrapper) start and stop appserver themselves.
//! - `user=`/`group=`, and systemd's socket activation and readiness notification.
//! - `touch_reload=`: touching a file reloads prefork as HUP does and re-executes a threaded
//!   server in place, under load, without a failed request; under mod_fcgid, `touch
//!   site.fcgi` reloads the process mod_fcgid spawned (which mod_fcgid itself does not do).
//!
//! Load tests run a few client threads looping requests through nginx for a couple of
//! seconds and count every failed request; each prints its figures (run with
//! `--nocapture` to see them). Worker processes are observed in `/proc`: a master's live
//! children are its workers.

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use appserver_proto::fcgi::{encode_request, encode_stdin, Role};
use appserver_proto::Params;
use bytes::BytesMut;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::util::cases;
use crate::util::client::{
    cgi_params, fcgi_get, http_get, read_response, try_http_request, Stream,
};
use crate::util::command::{
    appserver_bin, axum_example_bin, unix_accepted, wait_timeout, Listen, Server, TestCommand,
};
use crate::util::load::{page_pid, wait_until, Load, Outcome};
use crate::util::webserver::{sbin, FcgiPass, Nginx, WebServer};

/// How long a pool may take to reach the size the test expects, or a process to exit.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a load runs around the event it tests.
const LOAD_TIME: Duration = Duration::from_millis(1500);

/// Client threads of a load.
const LOAD_THREADS: usize = 4;

// ---------------------------------------------------------------------------------------
// Processes, seen through /proc.

/// State letter and parent pid of `pid`, from `/proc/PID/stat`.
fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything: parse after the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let mut fields = rest.split(' ');
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// When `pid` started, in clock ticks since boot (`/proc/PID/stat` field 22).
fn start_time(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rfind(')')
        .and_then(|at| stat.get(at + 2..))
        .and_then(|rest| rest.split(' ').nth(19))
        .and_then(|t| t.parse().ok())
        .unwrap_or(u64::MAX)
}

/// Whether `pid` runs (a zombie has exited already).
fn alive(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|(state, _)| state != 'Z' && state != 'X')
}

/// The live children of `pid`: a prefork master's workers.
fn children(pid: u32) -> BTreeSet<u32> {
    fs::read_dir("/proc")
        .expect("read /proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| matches!(proc_stat(p), Some((state, ppid)) if ppid == pid && state != 'Z'))
        .collect()
}

/// A pid read from a pidfile.
fn read_pidfile(path: &Path) -> u32 {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{}: {text:?}: {e}", path.display()))
}

/// A background server the test did not start as its own child (a daemon, or a server a
/// web server spawned): stopped on drop, TERM first, then KILL for it and its workers.
struct Daemon {
    pid: u32,
}

impl Daemon {
    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid as i32), signal)
            .unwrap_or_else(|e| panic!("kill -{signal} {}: {e}", self.pid));
    }

    /// Waits until the process is gone (or a zombie: its exit is done).
    fn wait_gone(&self, timeout: Duration) -> bool {
        wait_until(timeout, || !alive(self.pid))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if !alive(self.pid) {
            return;
        }
        let workers = children(self.pid);
        let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM);
        if !self.wait_gone(Duration::from_secs(5)) {
            for pid in workers.into_iter().chain([self.pid]) {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
    }
}

/// Runs `cmd` to completion within `timeout`, collecting its output. A daemon that left the
/// command's stdout or stderr open (a worker holding the terminal's pipe) fails here instead
/// of hanging the test.
fn run_to_exit(mut cmd: Command, timeout: Duration) -> Output {
    let what = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(cmd.output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => out.unwrap_or_else(|e| panic!("{what}: {e}")),
        Err(_) => panic!(
            "{what} did not finish within {timeout:?}: it did not exit, or a process it \
             left behind still holds its stdout/stderr"
        ),
    }
}

/// A command for a program the test runs as a daemon, in `dir`, with the environment
/// variables that change appserver's behaviour removed.
fn daemon_command(bin: &Path, dir: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.current_dir(dir)
        .env_remove("RUST_LOG")
        .env_remove("APPSERVER_LOG")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("FCGI_WEB_SERVER_ADDRS");
    cmd
}

/// `appserver runfcgi method=METHOD` as a daemon in `dir` (daemonize defaults to true), on
/// `dir/app.sock` with pidfile `dir/app.pid`: (command, socket, pidfile).
fn daemon_with_pidfile(dir: &Path, method: &str) -> (Command, PathBuf, PathBuf) {
    let socket = dir.join("app.sock");
    let pidfile = dir.join("app.pid");
    let mut cmd = daemon_command(&appserver_bin(), dir);
    cmd.args([
        "runfcgi".to_owned(),
        format!("method={method}"),
        format!("socket={}", socket.display()),
        format!("pidfile={}", pidfile.display()),
    ]);
    (cmd, socket, pidfile)
}

/// Adds `runfcgi daemonize=false method=METHOD` on `s.sock` with pidfile `app.pid`, both in
/// the command's temporary directory: (socket, pidfile).
fn foreground_with_pidfile(cmd: &mut TestCommand, method: &str) -> (PathBuf, PathBuf) {
    let socket = cmd.path("s.sock");
    let pidfile = cmd.path("app.pid");
    cmd.args([
        "runfcgi".to_owned(),
        "daemonize=false".to_owned(),
        format!("method={method}"),
        format!("socket={}", socket.display()),
        format!("pidfile={}", pidfile.display()),
    ]);
    (socket, pidfile)
}

// ---------------------------------------------------------------------------------------
// Load.

// ---------------------------------------------------------------------------------------
// Servers.

/// `method=prefork` in the foreground, logging at debug level, on a unix socket in its
/// temporary directory, with `options`.
fn prefork(mut cmd: TestCommand, options: &[&str]) -> Server {
    let socket = format!("socket={}", cmd.path("s.sock").display());
    cmd.args(["runfcgi", "daemonize=false", "method=prefork", "debug=true"])
        .arg(socket)
        .args(options);
    cmd.start()
}

/// The socket path of a server started on a unix socket.
fn socket_of(server: &Server) -> PathBuf {
    match server.listen() {
        Listen::Unix(path) => path.clone(),
        other => panic!("expected a unix socket, got {other:?}"),
    }
}

/// One `GET path` through nginx on its own thread.
fn request_in_background(port: u16, path: &str) -> thread::JoinHandle<Result<String, String>> {
    let path = path.to_owned();
    thread::spawn(
        move || match try_http_request(port, "GET", &path, &[], &[]) {
            Ok(r) if r.status == 200 => Ok(r.text()),
            Ok(r) => Err(format!("status {}: {}", r.status, r.text())),
            Err(e) => Err(e.to_string()),
        },
    )
}

/// Joins requests started with [`request_in_background`] and checks that each answered
/// `/slow`'s `done`.
fn assert_all_done(
    slow: Vec<thread::JoinHandle<Result<String, String>>>,
    server: &Server,
    front: &WebServer,
) {
    for (i, handle) in slow.into_iter().enumerate() {
        let body = handle.join().expect("client thread");
        assert_eq!(
            body.as_deref(),
            Ok("done\n"),
            "slow request {i}\n{}",
            cases::logs(server, front)
        );
    }
}

// ---------------------------------------------------------------------------------------
// 1. The prefork pool.

/// minspare=2, maxspare=3, maxchildren=5 with one connection per worker (`maxconns=1`, as
/// Django's prefork served one request per process), so busy and idle are exact: the pool
/// starts at minspare, grows to keep two idle workers beside three busy ones, stops at
/// maxchildren with every worker busy, and shrinks back to maxspare once they are idle.
#[test]
fn prefork_keeps_spare_workers_within_bounds() {
    let server = prefork(
        TestCommand::axum(),
        &["minspare=2", "maxspare=3", "maxchildren=5", "maxconns=1"],
    );
    let master = server.pid();
    let nginx = Nginx::fastcgi(server.listen(), FcgiPass::Close);
    let count = || children(master).len();
    assert!(
        wait_until(SETTLE_TIMEOUT, || count() == 2),
        "pool at start: {} workers, expected minspare=2\n{}",
        count(),
        server.log()
    );

    // Three busy workers: two idle are kept beside them, which is maxchildren.
    let mut slow: Vec<_> = (0..3)
        .map(|_| request_in_background(nginx.port(), "/slow?ms=2500"))
        .collect();
    assert!(
        wait_until(SETTLE_TIMEOUT, || count() == 5),
        "with 3 busy workers: {} workers, expected 3 + minspare=2\n{}",
        count(),
        cases::logs(&server, &nginx)
    );
    // Two more: every worker is busy, no idle one is left, and maxchildren holds.
    slow.extend((0..2).map(|_| request_in_background(nginx.port(), "/slow?ms=1000")));
    let socket = socket_of(&server);
    assert!(
        wait_until(SETTLE_TIMEOUT, || unix_accepted(&socket) == 5),
        "5 slow requests in flight: {} accepted",
        unix_accepted(&socket)
    );
    let mut most = 0;
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_millis(500) {
        most = most.max(count());
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        most, 5,
        "with every worker busy the pool must stay at maxchildren=5"
    );

    assert_all_done(slow, &server, &nginx);
    // Five idle workers: two above maxspare are stopped.
    assert!(
        wait_until(SETTLE_TIMEOUT, || count() == 3),
        "all idle: {} workers, expected maxspare=3\n{}",
        count(),
        server.log()
    );
}

/// How long each request of `prefork_worker_runs_worker_requests_at_once` takes: long enough
/// that the watch below ends before the first of them can.
const WORKER_REQUESTS_SLOW_MS: u64 = 3_000;

/// `worker_requests=2`: the one worker takes two slow requests at once and leaves a third in
/// the listen backlog while both run (its bound), then serves it when one ends. With the
/// default (one) it would hold one connection at a time.
#[test]
fn prefork_worker_runs_worker_requests_at_once() {
    let server = prefork(
        TestCommand::axum(),
        &[
            "minspare=1",
            "maxspare=1",
            "maxchildren=1",
            "worker_requests=2",
        ],
    );
    let nginx = Nginx::fastcgi(server.listen(), FcgiPass::Close);
    let socket = socket_of(&server);
    let started = Instant::now();
    let path = format!("/slow?ms={WORKER_REQUESTS_SLOW_MS}");
    let slow: Vec<_> = (0..3)
        .map(|_| request_in_background(nginx.port(), &path))
        .collect();
    assert!(
        wait_until(SETTLE_TIMEOUT, || unix_accepted(&socket) == 2),
        "worker_requests=2: {} of 3 slow requests accepted\n{}",
        unix_accepted(&socket),
        cases::logs(&server, &nginx)
    );
    let watch_until = started + Duration::from_millis(WORKER_REQUESTS_SLOW_MS * 5 / 6);
    let mut most = 0;
    while Instant::now() < watch_until {
        most = most.max(unix_accepted(&socket));
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(most, 2, "worker_requests=2 took a third request at once");
    assert_all_done(slow, &server, &nginx);
    // The third waited for one of the first two: it ended at least two request times in.
    assert!(
        started.elapsed() >= Duration::from_millis(2 * WORKER_REQUESTS_SLOW_MS),
        "three requests ended after {:?}: the third did not wait",
        started.elapsed()
    );
}

/// A worker killed with SIGKILL under load: the master logs its pid and how it died and
/// starts a replacement; only the request that worker held (maxconns=1: at most one) may
/// fail, and the pool is whole again.
#[test]
fn prefork_replaces_a_killed_worker_under_load() {
    let server = prefork(
        TestCommand::appserver(),
        &["minspare=2", "maxspare=4", "maxchildren=6", "maxconns=1"],
    );
    let master = server.pid();
    let nginx = Nginx::fastcgi(server.listen(), FcgiPass::Close);
    assert!(wait_until(SETTLE_TIMEOUT, || children(master).len() >= 2));

    let load = Load::start(nginx.port(), "/", LOAD_THREADS);
    load.wait_done(50);
    // A worker that dies within a second of its start is taken for one crashing at startup
    // and replaced only after a pause: let the pool age past that, then kill the oldest, so
    // the ordinary path is tested.
    thread::sleep(Duration::from_millis(1100));
    let before = children(master);
    let victim = *before
        .iter()
        .min_by_key(|&&p| start_time(p))
        .expect("a worker");
    kill(Pid::from_raw(victim as i32), Signal::SIGKILL).expect("kill -9 worker");
    let line = format!("worker {victim} was killed by SIGKILL");
    assert!(
        wait_until(SETTLE_TIMEOUT, || server.log().contains(&line)),
        "the master did not log {line:?}:\n{}",
        server.log()
    );
    let killed_at = load.now();
    // The pool is whole again: a new worker beside the survivors, the victim gone.
    assert!(
        wait_until(SETTLE_TIMEOUT, || {
            let now = children(master);
            !now.contains(&victim) && now.len() >= 2 && now.iter().any(|p| !before.contains(p))
        }),
        "no replacement for worker {victim}: {:?}\n{}",
        children(master),
        server.log()
    );
    let settled = load.now();
    thread::sleep(LOAD_TIME / 2);
    let report = load.finish();
    report.print(&format!(
        "SIGKILL of worker {victim} (at {killed_at:.2?}, pool whole at {settled:.2?})"
    ));
    assert!(
        report.failures().len() <= 1,
        "{} requests failed; only the killed worker's one request may:\n{}{}",
        report.failures().len(),
        report.first_failures(),
        cases::logs(&server, &nginx)
    );
    // After the kill, every request that started once the pool was whole succeeded.
    assert!(report
        .outcomes
        .iter()
        .filter(|o| o.start > settled)
        .all(|o| o.result.is_ok()));
    // Idle again, the pool settles between minspare and maxspare.
    assert!(
        wait_until(SETTLE_TIMEOUT, || (2..=4).contains(&children(master).len())),
        "pool of {} outside minspare..maxspare\n{}",
        children(master).len(),
        server.log()
    );
}

/// A master killed outright (SIGKILL: no chance to stop its workers) leaves no orphan
/// workers serving on: the kernel sends them TERM and they exit.
#[test]
fn prefork_workers_stop_when_the_master_is_killed() {
    let mut server = prefork(TestCommand::appserver(), &["minspare=3", "maxspare=3"]);
    let master = server.pid();
    assert!(wait_until(SETTLE_TIMEOUT, || children(master).len() == 3));
    let workers = children(master);
    server.signal(Signal::SIGKILL);
    server.wait_exit(SETTLE_TIMEOUT).expect("master killed");
    let gone = wait_until(SETTLE_TIMEOUT, || workers.iter().all(|&w| !alive(w)));
    if !gone {
        for &w in &workers {
            let _ = kill(Pid::from_raw(w as i32), Signal::SIGKILL);
        }
    }
    assert!(gone, "workers {workers:?} outlived their master");
}

/// Connections queued behind a stopped worker in
/// `prefork_answers_a_kept_connection_while_its_backlog_is_full`: several times the runtime's
/// budget (128), within the default `backlog=` (1024).
const QUEUED: usize = 800;

/// A prefork worker serves each new connection in place, so with connections always waiting
/// in the backlog its accept loop never waits for one; it still gives up its turn once per
/// runtime budget, so a connection it keeps open (a FastCGI keep-conn client between two
/// requests) is read and answered while the backlog is worked through, not after it. The
/// access log says in which order the worker answered.
#[test]
fn prefork_answers_a_kept_connection_while_its_backlog_is_full() {
    let somaxconn: usize = fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4096);
    // A connect to a full backlog would block while the worker is stopped.
    let queued_count = QUEUED.min(somaxconn.saturating_sub(16));
    assert!(
        queued_count >= 400,
        "net.core.somaxconn={somaxconn} is too small for this test"
    );
    let cmd = TestCommand::appserver();
    let access_log = cmd.path("access.log");
    let server = prefork(
        cmd,
        &[
            "maxchildren=1",
            "minspare=1",
            "maxspare=1",
            &format!("accesslog={}", access_log.display()),
        ],
    );
    let path = socket_of(&server);
    let (params, kept_params) = (
        cgi_params("GET", "/", &[]),
        cgi_params("GET", "/?kept", &[]),
    );
    let mut kept = Stream::connect(server.listen());
    let first = fcgi_get(&mut kept, &kept_params, true);
    assert_eq!(first.status, 200, "{}", server.log());
    let worker = *children(server.pid()).first().expect("a worker");

    // Stopped, the worker leaves every new connection, request written, in the backlog, and
    // the kept connection's next request unread: when it continues, the backlog comes first.
    let wire = |params: &Params, keep_conn| {
        let mut wire = BytesMut::new();
        encode_request(1, Role::Responder, keep_conn, params, &mut wire);
        encode_stdin(1, &[], &mut wire);
        wire
    };
    let request = wire(&params, false);
    kill(Pid::from_raw(worker as i32), Signal::SIGSTOP).expect("SIGSTOP");
    let mut queued: Vec<UnixStream> = (0..queued_count)
        .map(|_| {
            let mut s = UnixStream::connect(&path).expect("connect");
            s.set_read_timeout(Some(SETTLE_TIMEOUT)).expect("timeout");
            s.write_all(&request).expect("write");
            s
        })
        .collect();
    kept.write_all(&wire(&kept_params, true))
        .expect("write the kept connection's request");
    kill(Pid::from_raw(worker as i32), Signal::SIGCONT).expect("SIGCONT");
    let resp = read_response(&mut kept, true, &mut |_| {});
    assert_eq!(resp.status, 200, "{}", server.log());
    let answered = queued
        .iter_mut()
        .map(|s| {
            let mut out = Vec::new();
            s.read_to_end(&mut out).is_ok() && !out.is_empty()
        })
        .filter(|&ok| ok)
        .count();
    assert_eq!(
        answered,
        queued_count,
        "queued connections answered\n{}",
        server.log()
    );

    // Every request is logged (the log is written at least once a second), in the order
    // answered: the kept connection's second request came before most of the backlog.
    let lines = || fs::read_to_string(&access_log).unwrap_or_default();
    assert!(
        wait_until(SETTLE_TIMEOUT, || lines().lines().count()
            >= queued_count + 2),
        "{} access log lines, {} requests answered\n{}",
        lines().lines().count(),
        queued_count + 2,
        server.log()
    );
    let log = lines();
    let kept_at: Vec<usize> = log
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains("/?kept"))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        kept_at.len(),
        2,
        "the kept connection's requests in the log:\n{log}"
    );
    let before = kept_at[1] - kept_at[0] - 1;
    eprintln!(
        "the kept connection's second request was answered after {before} of {} queued \
         connections",
        queued_count
    );
    assert!(
        before < queued_count / 2,
        "the kept connection was answered after {before} of the {queued_count} connections \
         queued behind it: its worker did not turn to it while the backlog was full"
    );
}

// ---------------------------------------------------------------------------------------
// 2. maxrequests.

/// `maxrequests=20` under load, nginx opening a connection per request: workers are
/// recycled (many distinct pids serve, none much beyond its budget of 20 plus up to an
/// eighth), and not one request fails.
#[test]
fn prefork_maxrequests_recycles_workers_without_failures() {
    maxrequests_under_load(FcgiPass::Close);
}

/// The same with nginx keeping connections to appserver open (`keepalive`,
/// `fastcgi_keep_conn on`): a retiring worker closes its idle kept-alive connections.
#[test]
fn prefork_maxrequests_with_nginx_keepalive() {
    maxrequests_under_load(FcgiPass::KeepConn);
}

fn maxrequests_under_load(pass: FcgiPass) {
    let server = prefork(
        TestCommand::appserver(),
        &[
            "maxrequests=20",
            "minspare=2",
            "maxspare=4",
            "maxchildren=8",
        ],
    );
    let nginx = Nginx::fastcgi(server.listen(), pass);
    let load = Load::start(nginx.port(), "/", LOAD_THREADS);
    thread::sleep(LOAD_TIME);
    let report = load.finish();
    let per_pid = report.per_pid();
    report.print(&format!(
        "maxrequests=20 recycling, nginx {pass:?} ({} worker pids)",
        per_pid.len()
    ));
    report.assert_none_failed("", &cases::logs(&server, &nginx));
    // Each worker's budget is 20 plus up to an eighth (jitter), plus the few requests it
    // finishes while stopping (bounded below): no worker serves more than 30, so at least
    // sent / 30 workers must have served. (sent / 22 was flaky: overshoot averages ~0.3.)
    let expected = report.sent() / 30;
    assert!(
        per_pid.len() >= expected.max(3),
        "{} requests came from only {} worker pids: not recycled\n{per_pid:?}",
        report.sent(),
        per_pid.len()
    );
    // A worker finishes what it holds when it notices its budget is spent: the request in
    // flight then, the requests waiting for it on its kept-alive connections (a prefork
    // worker runs one at a time; the others wait up to queue_timeout rather than being
    // refused), and any arriving on its connections while it stops. A few at most: at
    // most one per client thread more than before requests queued.
    let most = per_pid.values().max().copied().unwrap_or(0);
    assert!(
        most <= 22 + 8 + LOAD_THREADS,
        "a worker served {most} requests with maxrequests=20: {per_pid:?}"
    );
    assert!(
        server.wait_log("reached maxrequests", 1),
        "{}",
        server.log()
    );
}

// ---------------------------------------------------------------------------------------
// 3. HUP.

/// HUP under load: the master re-executes itself (same pid, same pidfile), new workers take
/// over, the old ones finish and exit; not one request fails.
#[test]
fn prefork_hup_under_load_loses_no_request() {
    hup_under_load(FcgiPass::Close);
}

/// The same with nginx keeping connections to appserver open.
#[test]
fn prefork_hup_with_nginx_keepalive() {
    hup_under_load(FcgiPass::KeepConn);
}

fn hup_under_load(pass: FcgiPass) {
    let cmd = TestCommand::appserver();
    let pidfile = cmd.path("app.pid");
    let pidfile_option = format!("pidfile={}", pidfile.display());
    let server = prefork(
        cmd,
        &[&pidfile_option, "minspare=2", "maxspare=4", "maxchildren=8"],
    );
    let master = server.pid();
    assert_eq!(read_pidfile(&pidfile), master);
    let nginx = Nginx::fastcgi(server.listen(), pass);
    assert!(wait_until(SETTLE_TIMEOUT, || children(master).len() >= 2));

    let load = Load::start(nginx.port(), "/", LOAD_THREADS);
    load.wait_done(50);
    let old = children(master);
    let hup_at = load.now();
    server.signal(Signal::SIGHUP);
    assert!(
        wait_until(SETTLE_TIMEOUT, || {
            let now = children(master);
            now.len() >= 2 && now.is_disjoint(&old)
        }),
        "old workers {old:?} not replaced: {:?}\n{}",
        children(master),
        server.log()
    );
    let replaced_at = load.now();
    thread::sleep(LOAD_TIME / 2);
    let report = load.finish();
    report.print(&format!(
        "HUP at {hup_at:.2?}, nginx {pass:?} (old workers replaced at {replaced_at:.2?})"
    ));
    report.assert_none_failed(" across HUP", &cases::logs(&server, &nginx));
    assert!(alive(master), "the master must survive HUP");
    assert_eq!(
        read_pidfile(&pidfile),
        master,
        "the pidfile names the same master"
    );
    assert_eq!(
        server
            .log()
            .matches("appserver: ready: protocol=fcgi method=prefork listen=unix:")
            .count(),
        2,
        "the re-executed master announces itself once more:\n{}",
        server.log()
    );
    // Requests after the reload came from the new workers only.
    let late: BTreeSet<u32> = report
        .outcomes
        .iter()
        .filter(|o| o.start > replaced_at)
        .filter_map(|o| page_pid(o.result.as_ref().ok()?))
        .collect();
    assert!(!late.is_empty(), "no request after the reload");
    assert!(
        late.is_disjoint(&old),
        "old workers {old:?} served after the reload: {late:?}"
    );
}

/// TTIN and TTOU adjustments survive a reload. From minspare=1 maxspare=2, TTIN twice gives
/// minspare=3 maxspare=4 (three idle workers); after HUP the re-executed master starts three
/// new workers, not the command line's one, and a TTOU then moves on from the kept values.
#[test]
fn prefork_hup_keeps_ttin_ttou_adjustments() {
    let server = prefork(
        TestCommand::appserver(),
        &["minspare=1", "maxspare=2", "maxchildren=10"],
    );
    let master = server.pid();
    assert!(wait_until(SETTLE_TIMEOUT, || children(master).len() == 1));
    // Signals of one kind do not queue: each is sent once the master has taken the last.
    let signal_and_wait = |signal: Signal, line: &str| {
        server.signal(signal);
        assert!(
            wait_until(SETTLE_TIMEOUT, || server.log().contains(line)),
            "no {line:?} after {signal}:\n{}",
            server.log()
        );
    };
    signal_and_wait(Signal::SIGTTIN, "SIGTTIN: minspare=2 maxspare=3");
    signal_and_wait(Signal::SIGTTIN, "SIGTTIN: minspare=3 maxspare=4");
    assert!(
        wait_until(SETTLE_TIMEOUT, || children(master).len() == 3),
        "{} workers after TTIN twice, expected minspare=3\n{}",
        children(master).len(),
        server.log()
    );
    let old = children(master);

    signal_and_wait(
        Signal::SIGHUP,
        "minspare=3 maxspare=4: kept across the reload",
    );
    assert!(
        wait_until(SETTLE_TIMEOUT, || {
            let now = children(master);
            now.len() == 3 && now.is_disjoint(&old)
        }),
        "after HUP: workers {:?} (old {old:?}), expected 3 new ones\n{}",
        children(master),
        server.log()
    );
    signal_and_wait(Signal::SIGTTOU, "SIGTTOU: minspare=2 maxspare=3");
}

/// What a reload passes to the re-executed master is checked: a malformed
/// `APPSERVER_SPARE` is logged and the command line's bounds are used, and an
/// `APPSERVER_RETIRE_PIDS` naming a process that is not this master's child is logged and
/// that process is never signalled.
#[test]
fn prefork_ignores_malformed_reload_variables() {
    let mut bystander = Command::new("sleep").arg("30").spawn().expect("sleep");
    let mut cmd = TestCommand::appserver();
    cmd.env("APPSERVER_SPARE", "5,x")
        .env("APPSERVER_RETIRE_PIDS", &format!("{},x", bystander.id()));
    let server = prefork(cmd, &["minspare=1", "maxspare=2", "maxchildren=10"]);
    // The master takes a TTIN only after the pass through its loop that follows the first
    // worker's readiness, where the previous workers are told to stop.
    server.signal(Signal::SIGTTIN);
    let from_command_line = "SIGTTIN: minspare=2 maxspare=3";
    assert!(
        wait_until(SETTLE_TIMEOUT, || server.log().contains(from_command_line)),
        "no {from_command_line:?}:\n{}",
        server.log()
    );
    let alive = bystander.try_wait().expect("try_wait").is_none();
    let _ = bystander.kill();
    let _ = bystander.wait();
    let log = server.log();
    assert!(
        alive,
        "the master signalled a process it did not start:\n{log}"
    );
    assert!(
        log.contains(r#"APPSERVER_SPARE="5,x" is not MINSPARE,MAXSPARE"#),
        "{log}"
    );
    assert!(
        log.contains("ignoring what names no child process"),
        "{log}"
    );
}

// ---------------------------------------------------------------------------------------
// 4. TERM.

/// TERM under load: slow requests the server had accepted (seen in the kernel's socket
/// table) are all answered, so is every request sent well before the signal; then the
/// server exits 0 and removes its pidfile and socket.
#[test]
fn prefork_term_under_load_answers_accepted_requests_then_cleans_up() {
    term_under_load("prefork");
}

/// The same for `method=threaded`.
#[test]
fn threaded_term_under_load_answers_accepted_requests_then_cleans_up() {
    term_under_load("threaded");
}

fn term_under_load(method: &str) {
    let mut cmd = TestCommand::axum();
    let (socket, pidfile) = foreground_with_pidfile(&mut cmd, method);
    let mut server = cmd.start();
    let nginx = Nginx::fastcgi(server.listen(), FcgiPass::Close);

    const SLOW: usize = 3;
    let slow: Vec<_> = (0..SLOW)
        .map(|_| request_in_background(nginx.port(), "/slow?ms=1500"))
        .collect();
    assert!(
        wait_until(SETTLE_TIMEOUT, || unix_accepted(&socket) >= SLOW),
        "{SLOW} slow requests not accepted: {}",
        unix_accepted(&socket)
    );
    let load = Load::start(nginx.port(), "/slow?ms=50", LOAD_THREADS);
    load.wait_done(20);
    let term_at = load.now();
    server.signal(Signal::SIGTERM);
    thread::sleep(Duration::from_millis(200));
    let report = load.finish();
    let status = server
        .wait_exit(SETTLE_TIMEOUT)
        .unwrap_or_else(|| panic!("still running after TERM:\n{}", server.log()));
    report.print(&format!(
        "TERM ({method}) at {term_at:.2?} with {SLOW} slow requests in flight"
    ));

    for (i, handle) in slow.into_iter().enumerate() {
        assert_eq!(
            handle.join().expect("client thread").as_deref(),
            Ok("done\n"),
            "slow request {i}, accepted before TERM\n{}",
            cases::logs(&server, &nginx)
        );
    }
    // A request sent 250 ms before the signal has long been accepted (they take 50 ms).
    let early_failures: Vec<&Outcome> = report
        .failures()
        .into_iter()
        .filter(|o| o.start + Duration::from_millis(250) < term_at)
        .collect();
    assert!(
        early_failures.is_empty(),
        "requests sent before TERM failed: {early_failures:?}\n{}",
        cases::logs(&server, &nginx)
    );
    let count = |f: &dyn Fn(&Outcome) -> bool| report.outcomes.iter().filter(|o| f(o)).count();
    eprintln!(
        "load: {} in flight at TERM ({} failed); {} sent after TERM ({} refused: the listener \
         is closed)",
        count(&|o| o.start < term_at && o.end > term_at),
        count(&|o| o.start < term_at && o.end > term_at && o.result.is_err()),
        count(&|o| o.start > term_at),
        count(&|o| o.start > term_at && o.result.is_err()),
    );
    assert!(
        status.success(),
        "exit after TERM: {status}\n{}",
        server.log()
    );
    assert!(!pidfile.exists(), "pidfile left behind");
    assert!(!socket.exists(), "socket file left behind");
}

// ---------------------------------------------------------------------------------------
// 5. The seed's restart script.

/// A slow request longer than the time a new server waits for a live socket to go away
/// (listen::IN_USE_WAIT, 3 s): the restart only works if the old server stops listening as
/// soon as it is told to stop, not when its last request is done.
const RESTART_SLOW_MS: u64 = 3500;

/// The seed's restart script (`kill $(cat pidfile); rm -f pidfile; exec appserver runfcgi
/// socket=... pidfile=...`), run twice in a row while the first server answers a slow
/// request: the old servers finish their work and exit, leaving exactly one server on the
/// socket, whose socket file and pidfile they did not remove.
#[test]
fn restart_script_twice_with_a_slow_request_in_flight() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("restart.sh");
    fs::write(&script, include_str!("data/restart.sh")).expect("write restart.sh");
    let socket = dir.path().join("mysite.sock");
    let pidfile = dir.path().join("mysite.pid");
    let restart = |what: &str| -> Daemon {
        let mut cmd = Command::new("bash");
        cmd.arg(&script)
            .current_dir(dir.path())
            .env("PROJDIR", dir.path())
            .env("APPSERVER", axum_example_bin());
        let out = run_to_exit(cmd, SETTLE_TIMEOUT);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{what}: restart.sh {}\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let pid = read_pidfile(&pidfile);
        assert_eq!(
            stdout.trim(),
            format!(
                "appserver: pid {pid} serving fcgi on unix:{}",
                socket.display()
            ),
            "{what}"
        );
        Daemon { pid }
    };

    let first = restart("first start");
    let nginx = Nginx::fastcgi(&Listen::Unix(socket.clone()), FcgiPass::Close);
    assert_eq!(http_get(nginx.port(), "/").text(), "Hello from axum\n");
    let slow = request_in_background(nginx.port(), &format!("/slow?ms={RESTART_SLOW_MS}"));
    assert!(
        wait_until(SETTLE_TIMEOUT, || unix_accepted(&socket) >= 1),
        "the slow request was not accepted"
    );
    let first_workers = children(first.pid);

    let started = Instant::now();
    let second = restart("first restart");
    let third = restart("second restart");
    let restarts = started.elapsed();
    assert_ne!(second.pid, first.pid);
    assert_ne!(third.pid, second.pid);
    assert!(
        alive(first.pid),
        "the first server stopped before its slow request was done"
    );

    let body = slow.join().expect("client thread");
    assert_eq!(
        body.as_deref(),
        Ok("done\n"),
        "the first server's slow request\nnginx: {}",
        nginx.error_log()
    );
    for old in [&first, &second] {
        assert!(
            old.wait_gone(SETTLE_TIMEOUT),
            "old server {} still running",
            old.pid
        );
    }
    assert!(
        first_workers.iter().all(|&w| !alive(w)),
        "workers of the first server outlived it"
    );
    eprintln!(
        "restart script: two restarts in {restarts:.2?} while a {RESTART_SLOW_MS} ms request was in flight"
    );
    // Exactly one server, the last, answers on the socket named in the pidfile.
    assert!(alive(third.pid));
    assert_eq!(read_pidfile(&pidfile), third.pid, "pidfile");
    assert!(
        socket.exists(),
        "the old servers removed the new socket file"
    );
    for _ in 0..5 {
        assert_eq!(http_get(nginx.port(), "/").text(), "Hello from axum\n");
    }

    third.signal(Signal::SIGTERM);
    assert!(third.wait_gone(SETTLE_TIMEOUT), "last server did not stop");
    assert!(!pidfile.exists() && !socket.exists(), "files left at exit");
}

// ---------------------------------------------------------------------------------------
// 6. Daemonizing.

/// `appserver runfcgi socket=... pidfile=...` (daemonize defaults to true) prints one line
/// with the pid and the address and returns 0 once the daemon serves; `kill $(cat pidfile)`
/// stops it, and it removes its pidfile and socket.
#[test]
fn prefork_daemonizes_serves_and_stops_by_pidfile() {
    daemonize_end_to_end("prefork");
}

/// The same for `method=threaded`.
#[test]
fn threaded_daemonizes_serves_and_stops_by_pidfile() {
    daemonize_end_to_end("threaded");
}

fn daemonize_end_to_end(method: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cmd, socket, pidfile) = daemon_with_pidfile(dir.path(), method);
    let started = Instant::now();
    let out = run_to_exit(cmd, SETTLE_TIMEOUT);
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let daemon = Daemon {
        pid: read_pidfile(&pidfile),
    };
    assert_eq!(
        stdout,
        format!(
            "appserver: pid {} serving fcgi on unix:{}\n",
            daemon.pid,
            socket.display()
        ),
        "one line with the pid and the address"
    );
    eprintln!("daemonize ({method}): ready and returned in {took:.2?}");
    assert!(alive(daemon.pid));
    assert_ne!(
        proc_stat(daemon.pid).map(|(_, ppid)| ppid),
        Some(std::process::id()),
        "the daemon must be detached from the command that started it"
    );

    let probe = TestCommand::appserver()
        .args(["probe".to_owned(), socket.display().to_string()])
        .output(SETTLE_TIMEOUT);
    let page = String::from_utf8_lossy(&probe.stdout).into_owned();
    assert!(probe.status.success(), "probe: {}\n{page}", probe.status);
    assert!(page.contains(&format!("method: {method}")), "{page}");
    let served_by = page_pid(&page).expect("pid line");
    let workers = children(daemon.pid);
    if method == "prefork" {
        assert!(
            workers.contains(&served_by),
            "{served_by} not in {workers:?}"
        );
    } else {
        assert_eq!(served_by, daemon.pid);
    }

    let kill = Command::new("sh")
        .arg("-c")
        .arg(format!("kill $(cat {})", pidfile.display()))
        .status()
        .expect("sh");
    assert!(kill.success());
    assert!(daemon.wait_gone(SETTLE_TIMEOUT), "still running after kill");
    assert!(workers.iter().all(|&w| !alive(w)), "workers outlived it");
    assert!(!pidfile.exists(), "pidfile left behind");
    assert!(!socket.exists(), "socket left behind");
}

// ---------------------------------------------------------------------------------------
// 7. USR1.

/// USR1 reopens `errlog=`: after logrotate moved the file away, new lines land in a new file
/// at the configured path, from the workers and from the master.
#[test]
fn prefork_usr1_reopens_errlog() {
    usr1_reopens_errlog("prefork");
}

/// The same for `method=threaded`.
#[test]
fn threaded_usr1_reopens_errlog() {
    usr1_reopens_errlog("threaded");
}

fn usr1_reopens_errlog(method: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let errlog = dir.path().join("app.log");
    let rotated = dir.path().join("app.log.1");
    let (mut cmd, _socket, pidfile) = daemon_with_pidfile(dir.path(), method);
    cmd.arg(format!("errlog={}", errlog.display()));
    let out = run_to_exit(cmd, SETTLE_TIMEOUT);
    assert!(
        out.status.success(),
        "{}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let daemon = Daemon {
        pid: read_pidfile(&pidfile),
    };
    assert!(errlog.exists(), "errlog not created");

    // What logrotate does without copytruncate: move the file, then signal.
    fs::rename(&errlog, &rotated).expect("rotate");
    daemon.signal(Signal::SIGUSR1);
    let read = |p: &Path| fs::read_to_string(p).unwrap_or_default();
    assert!(
        wait_until(SETTLE_TIMEOUT, || read(&errlog).contains("logs reopened")),
        "no new {} after USR1; rotated file:\n{}",
        errlog.display(),
        read(&rotated)
    );
    if method == "prefork" {
        // The master's own lines go to the new file too.
        let worker = *children(daemon.pid).iter().next().expect("a worker");
        kill(Pid::from_raw(worker as i32), Signal::SIGKILL).expect("kill worker");
        let line = format!("worker {worker} was killed by SIGKILL");
        assert!(
            wait_until(SETTLE_TIMEOUT, || read(&errlog).contains(&line)),
            "the master's line is not in the new file:\n{}\nrotated:\n{}",
            read(&errlog),
            read(&rotated)
        );
    }
    let old = read(&rotated);
    assert!(
        !old.contains("logs reopened") && !old.contains("killed by"),
        "lines after USR1 went to the rotated file:\n{old}"
    );
    daemon.signal(Signal::SIGTERM);
    assert!(daemon.wait_gone(SETTLE_TIMEOUT));
}

// ---------------------------------------------------------------------------------------
// 8. Spawned by the web server.

/// lighttpd with `bin-path` running `command` (tests/data/lighttpd-bin-path.conf): it spawns
/// appserver itself, and stops it when it stops.
fn lighttpd_with_bin_path(command: &str) -> WebServer {
    WebServer::start("lighttpd", |dir, port| {
        fs::create_dir(dir.join("htdocs")).expect("htdocs");
        let conf = include_str!("data/lighttpd-bin-path.conf")
            .replace("@DIR@", &dir.display().to_string())
            .replace("@PORT@", &port.to_string())
            .replace("@COMMAND@", command);
        let path = dir.join("lighttpd.conf");
        fs::write(&path, conf).expect("write lighttpd.conf");
        let mut cmd = Command::new(sbin("lighttpd"));
        cmd.arg("-D").arg("-f").arg(path);
        cmd
    })
}

/// Apache with mod_fcgid serving the seed's `.htaccess` and a `site.fcgi` that runs
/// `appserver runfcgi method=METHOD` (tests/data/httpd-fcgid.conf).
fn apache_fcgid(method: &str) -> WebServer {
    apache_fcgid_site(method, false).0
}

/// [`apache_fcgid`], and the directory it runs in (`htdocs/site.fcgi` is the wrapper). With
/// `own_binary`, `site.fcgi` runs a copy of appserver in that directory (`appserver`),
/// which the test may replace.
fn apache_fcgid_site(method: &str, own_binary: bool) -> (WebServer, PathBuf) {
    apache_fcgid_wrapper(own_binary, |bin| {
        include_str!("data/site.fcgi")
            .replace("@APPSERVER@", &bin.display().to_string())
            .replace("@METHOD@", method)
    })
}

/// Apache with mod_fcgid, the seed's `.htaccess` and `htdocs/site.fcgi` as `wrapper` makes it
/// from the path of the appserver binary Apache's user can run.
pub(crate) fn apache_fcgid_wrapper(
    own_binary: bool,
    wrapper: impl FnOnce(&Path) -> String,
) -> (WebServer, PathBuf) {
    let mut site = PathBuf::new();
    let mut wrapper = Some(wrapper);
    let apache = WebServer::start("Apache", |dir, port| {
        site = dir.to_owned();
        let root = nix::unistd::geteuid().is_root();
        // Apache's children run as www-data when the test is root: they must reach the
        // directory, the wrapper and appserver itself.
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        let htdocs = dir.join("htdocs");
        for sub in ["htdocs", "fcgid", "run"] {
            fs::create_dir(dir.join(sub)).expect("mkdir");
            fs::set_permissions(dir.join(sub), fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        if root {
            let www = nix::unistd::User::from_name("www-data")
                .expect("getpwnam")
                .expect("user www-data (Debian's apache2 creates it)");
            nix::unistd::chown(&dir.join("fcgid"), Some(www.uid), Some(www.gid))
                .expect("chown fcgid");
        }
        let bin = if own_binary {
            copy_appserver(&dir.join("appserver"))
        } else {
            reachable_appserver(dir)
        };
        fs::write(
            htdocs.join(".htaccess"),
            include_str!("data/fcgid.htaccess"),
        )
        .expect("write .htaccess");
        let text = wrapper.take().map(|w| w(&bin)).unwrap_or_default();
        let wrapper = htdocs.join("site.fcgi");
        fs::write(&wrapper, text).expect("write site.fcgi");
        fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).expect("chmod");
        let user = if root {
            "User www-data\nGroup www-data"
        } else {
            ""
        };
        let conf = include_str!("data/httpd-fcgid.conf")
            .replace("@DIR@", &dir.display().to_string())
            .replace("@PORT@", &port.to_string())
            .replace("@USER@", user);
        let path = dir.join("httpd.conf");
        fs::write(&path, conf).expect("write httpd.conf");
        let mut cmd = Command::new(sbin("apache2"));
        cmd.arg("-f").arg(path).arg("-DFOREGROUND");
        cmd
    });
    (apache, site)
}

/// The appserver binary, copied into `dir` unless every directory on its path lets others
/// through and the file lets others run it (Apache's user must).
fn reachable_appserver(dir: &Path) -> PathBuf {
    let bin = appserver_bin();
    let others_may =
        |p: &Path, bits: u32| fs::metadata(p).is_ok_and(|m| m.permissions().mode() & bits == bits);
    let reachable = others_may(&bin, 0o005)
        && bin
            .ancestors()
            .skip(1)
            .all(|d| d.as_os_str().is_empty() || others_may(d, 0o001));
    if reachable {
        return bin;
    }
    copy_appserver(&dir.join("appserver"))
}

/// Puts a copy of the appserver binary at `path` (mode 0755) the way a deployment does:
/// written beside it, then renamed over it, so a process running the previous file keeps
/// its (now deleted) image. Returns `path`.
fn copy_appserver(path: &Path) -> PathBuf {
    let tmp = path.with_extension("new");
    fs::copy(appserver_bin(), &tmp).expect("copy appserver");
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).expect("chmod");
    fs::rename(&tmp, path).expect("rename appserver");
    path.to_owned()
}

/// lighttpd's `bin-path` spawns appserver with the listening socket on fd 0; requests under
/// the mount are served with lighttpd's SCRIPT_NAME/PATH_INFO split; when lighttpd stops, it
/// sends TERM and appserver (and for prefork, every worker) stops gracefully and exits.
#[test]
fn lighttpd_bin_path_spawns_threaded() {
    lighttpd_bin_path("threaded");
}

/// The same with `method=prefork`: the master serves fd 0 through its workers.
#[test]
fn lighttpd_bin_path_spawns_prefork() {
    lighttpd_bin_path("prefork");
}

fn lighttpd_bin_path(method: &str) {
    let command = format!(
        "{} runfcgi method={method} debug=true",
        appserver_bin().display()
    );
    let mut lighttpd = lighttpd_with_bin_path(&command);
    let mut pids = BTreeSet::new();
    for i in 0..5 {
        let resp = http_get(lighttpd.port(), &format!("/mysite/page/{i}?n={i}"));
        let body = resp.text();
        assert_eq!(resp.status, 200, "{body}\n{}", lighttpd.error_log());
        assert!(body.contains(&format!("method: {method}")), "{body}");
        assert!(body.contains("SCRIPT_NAME=/mysite\n"), "{body}");
        assert!(body.contains(&format!("PATH_INFO=/page/{i}\n")), "{body}");
        assert!(body.contains(&format!("QUERY_STRING=n={i}\n")), "{body}");
        pids.insert(page_pid(&body).expect("pid line"));
    }
    let lighttpd_pid = lighttpd.pid();
    // The process lighttpd spawned: the server itself, or the prefork master of the worker.
    let served_by = *pids.iter().next().expect("a pid");
    let spawned = if method == "prefork" {
        proc_stat(served_by).expect("worker").1
    } else {
        served_by
    };
    assert_eq!(
        proc_stat(spawned).map(|(_, ppid)| ppid),
        Some(lighttpd_pid),
        "appserver {spawned} is not lighttpd's child"
    );
    let workers = children(spawned);

    // lighttpd's own exit status after TERM varies (0, or 1 when stopped right after its
    // start) and says nothing about appserver: what matters is how appserver stopped.
    assert!(lighttpd.stop().is_some(), "lighttpd did not stop");
    let server = Daemon { pid: spawned };
    assert!(
        server.wait_gone(SETTLE_TIMEOUT),
        "appserver {spawned} outlived lighttpd\n{}",
        lighttpd.error_log()
    );
    assert!(workers.iter().all(|&w| !alive(w)), "workers outlived it");
    let log = lighttpd.error_log();
    assert!(
        log.contains(&format!("listen=fd0 pid={spawned}")),
        "appserver did not announce the fd 0 listener:\n{log}"
    );
    assert!(log.contains("graceful stop"), "no graceful stop:\n{log}");
    assert!(
        !log.contains("panicked") && !log.contains(" ERROR "),
        "errors while stopping:\n{log}"
    );
    if method == "prefork" {
        for w in &workers {
            assert!(
                log.contains(&format!("worker {w} exited with status 0")),
                "worker {w} did not exit cleanly:\n{log}"
            );
        }
    }
}

/// Apache mod_fcgid runs `site.fcgi` (a shell script exec'ing appserver) through the seed's
/// `.htaccess` rewrite, as Apache's user; requests are served, and when Apache stops,
/// mod_fcgid reports that appserver exited with return code 0.
#[test]
fn mod_fcgid_spawns_site_fcgi_threaded() {
    mod_fcgid_site("threaded");
}

/// The same with `method=prefork`.
#[test]
fn mod_fcgid_spawns_site_fcgi_prefork() {
    mod_fcgid_site("prefork");
}

fn mod_fcgid_site(method: &str) {
    let mut apache = apache_fcgid(method);
    let mut served_by = BTreeSet::new();
    for i in 0..5 {
        let resp = http_get(apache.port(), &format!("/some/path/{i}?q={i}"));
        let body = resp.text();
        assert_eq!(resp.status, 200, "{body}\n{}", apache.error_log());
        assert!(body.contains(&format!("method: {method}")), "{body}");
        assert!(
            body.contains(&format!("PATH_INFO=/some/path/{i}\n")),
            "{body}"
        );
        assert!(
            body.contains(&format!("REDIRECT_URL=/some/path/{i}\n")),
            "{body}"
        );
        assert!(body.contains("/htdocs/site.fcgi\n"), "{body}");
        served_by.insert(page_pid(&body).expect("pid line"));
    }
    let spawned: BTreeSet<u32> = served_by
        .iter()
        .map(|&p| {
            if method == "prefork" {
                proc_stat(p).expect("worker").1
            } else {
                p
            }
        })
        .collect();
    if nix::unistd::geteuid().is_root() {
        let www = nix::unistd::User::from_name("www-data")
            .expect("getpwnam")
            .expect("www-data");
        for &pid in served_by.iter().chain(&spawned) {
            let (uid, _, _) = ids_of(&pid.to_string());
            assert_eq!(uid, www.uid.as_raw(), "appserver {pid} not www-data");
        }
    }
    let workers: BTreeSet<u32> = spawned.iter().flat_map(|&p| children(p)).collect();

    assert!(apache.stop().is_some(), "apache did not stop");
    let log = apache.error_log();
    for &pid in &spawned {
        assert!(
            wait_until(SETTLE_TIMEOUT, || !alive(pid)),
            "appserver {pid} outlived Apache"
        );
        // mod_fcgid's process manager waits for what it spawned and says how it ended.
        let line = format!(
            "site.fcgi({pid}) exit(shutting down), terminated by calling exit(), return code: 0"
        );
        assert!(log.contains(&line), "no {line:?} in:\n{log}");
    }
    assert!(workers.iter().all(|&w| !alive(w)), "workers outlived it");
    assert!(!log.contains("panicked"), "{log}");
}

// ---------------------------------------------------------------------------------------
// 9. user= and group=.

/// `Uid:`/`Gid:` (effective) and `Groups:` of `/proc/TASK/status` (`PID` or
/// `PID/task/TID`).
fn ids_of(task: &str) -> (u32, u32, String) {
    let status = fs::read_to_string(format!("/proc/{task}/status")).expect("proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_default()
            .to_owned()
    };
    let effective = |line: String| {
        line.split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .expect("effective id")
    };
    (
        effective(field("Uid:")),
        effective(field("Gid:")),
        field("Groups:").trim().to_owned(),
    )
}

/// As root, `user=nobody group=nogroup` with prefork: the socket is bound as root and handed
/// to that account, then the master and every worker run as it (no root group left), also
/// after a HUP re-executed the master; TERM still removes the pidfile and socket. Not root,
/// the switch is refused with a message and nothing is left behind.
#[test]
fn prefork_switches_user_and_group_after_binding() {
    switch_user("prefork");
}

/// The same with `method=threaded`: every thread of the one process runs as the account.
#[test]
fn threaded_switches_user_and_group_after_binding() {
    switch_user("threaded");
}

fn switch_user(method: &str) {
    use std::os::unix::fs::MetadataExt;

    let mut cmd = TestCommand::appserver();
    let dir = cmd.path("");
    let (socket, pidfile) = foreground_with_pidfile(&mut cmd, method);
    if !nix::unistd::geteuid().is_root() {
        let out = cmd.arg("user=root").output(SETTLE_TIMEOUT);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("only root may switch"), "{stderr}");
        assert!(!socket.exists() && !pidfile.exists(), "files left behind");
        return;
    }
    let nobody = nix::unistd::User::from_name("nobody")
        .expect("getpwnam")
        .expect("user nobody");
    let nogroup = nix::unistd::Group::from_name("nogroup")
        .expect("getgrnam")
        .map_or(nobody.gid, |g| g.gid);
    // The server removes its socket and pidfile at exit as nobody: its directory must let it.
    nix::unistd::chown(&dir, Some(nobody.uid), Some(nogroup)).expect("chown");
    cmd.arg("user=nobody")
        .arg(format!("group={}", nogroup.as_raw()));
    let mut server = cmd.start();
    let master = server.pid();
    let account = (nobody.uid.as_raw(), nogroup.as_raw());

    let meta = fs::metadata(&socket).expect("socket");
    assert_eq!((meta.uid(), meta.gid()), account, "socket owner");
    // Every thread of the process: ids are per thread for the kernel.
    let check = |pid: u32| {
        let tasks: Vec<u32> = fs::read_dir(format!("/proc/{pid}/task"))
            .expect("tasks")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        for task in tasks {
            let (uid, gid, groups) = ids_of(&format!("{pid}/task/{task}"));
            assert_eq!((uid, gid), account, "process {pid} thread {task}");
            assert!(
                !groups.split_whitespace().any(|g| g == "0"),
                "process {pid} kept root's group: Groups: {groups}"
            );
        }
    };
    let probe = |what: &str| -> u32 {
        let out = TestCommand::appserver()
            .args(["probe".to_owned(), socket.display().to_string()])
            .output(SETTLE_TIMEOUT);
        let page = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{what}: {page}\n{}", server.log());
        page_pid(&page).expect("pid line")
    };
    check(probe("first request"));
    check(master);
    if method == "prefork" {
        assert!(wait_until(SETTLE_TIMEOUT, || children(master).len() >= 2));
        let before = children(master);
        before.iter().copied().for_each(check);
        // The re-executed master is already the account: it neither switches again (it
        // could not) nor rewrites the pidfile.
        server.signal(Signal::SIGHUP);
        assert!(
            wait_until(SETTLE_TIMEOUT, || {
                let now = children(master);
                now.len() >= 2 && now.is_disjoint(&before)
            }),
            "no new workers after HUP:\n{}",
            server.log()
        );
        check(master);
        children(master).into_iter().for_each(check);
        check(probe("after HUP"));
        assert_eq!(read_pidfile(&pidfile), master);
    }

    server.signal(Signal::SIGTERM);
    let status = server.wait_exit(SETTLE_TIMEOUT).expect("exit after TERM");
    assert!(status.success(), "{status}\n{}", server.log());
    assert!(!pidfile.exists(), "pidfile left behind");
    assert!(!socket.exists(), "socket left behind");
}

// ---------------------------------------------------------------------------------------
// 10. systemd: socket activation and readiness (Type=notify).

/// Started the way systemd starts `docs/systemd/appserver.service` with its `.socket`: the
/// listening socket on fd 3 (`LISTEN_FDS=1`, `LISTEN_PID`), `NOTIFY_SOCKET` set. appserver
/// stays in the foreground, serves fd 3, says `READY=1` (with its pid as `MAINPID`), around
/// a HUP `RELOADING=1` then `READY=1` again, `STOPPING=1` on TERM, exits 0, and leaves the
/// socket file (systemd's) alone.
#[test]
fn systemd_socket_activation_and_notify() {
    use std::os::unix::net::{UnixDatagram, UnixListener};

    let dir = tempfile::tempdir().expect("tempdir");
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).expect("bind notify socket");
    notify
        .set_read_timeout(Some(SETTLE_TIMEOUT))
        .expect("timeout");
    let socket = dir.path().join("app.sock");
    let listener = UnixListener::bind(&socket).expect("bind");
    // systemd sets LISTEN_PID to the pid it execs: `exec` keeps the shell's pid. The
    // listener arrives on fd 0 and is moved to fd 3, where systemd puts it.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(
            "export LISTEN_PID=$$ LISTEN_FDS=1; \
             exec \"$0\" runfcgi method=prefork debug=true 3<&0 0</dev/null",
        )
        .arg(appserver_bin())
        .current_dir(dir.path())
        .env("NOTIFY_SOCKET", &notify_path)
        .env_remove("APPSERVER_LOG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(listener)))
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            fs::File::create(dir.path().join("stderr.log")).expect("log"),
        ))
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let daemon = Daemon { pid };
    let log = || fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default();
    let next = |what: &str| -> String {
        let mut buf = [0u8; 256];
        let n = notify
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no {what} notification: {e}\n{}", log()));
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(next("READY"), format!("READY=1\nMAINPID={pid}\n"));
    assert!(log().contains("listen=fd3"), "{}", log());

    let probe = || {
        TestCommand::appserver()
            .args(["probe".to_owned(), socket.display().to_string()])
            .output(SETTLE_TIMEOUT)
    };
    let out = probe();
    assert!(out.status.success(), "probe\n{}", log());
    assert!(String::from_utf8_lossy(&out.stdout).contains("method: prefork"));

    daemon.signal(Signal::SIGHUP);
    assert_eq!(next("RELOADING"), format!("RELOADING=1\nMAINPID={pid}\n"));
    assert_eq!(next("READY after HUP"), format!("READY=1\nMAINPID={pid}\n"));
    assert!(probe().status.success(), "probe after HUP\n{}", log());

    daemon.signal(Signal::SIGTERM);
    assert_eq!(next("STOPPING"), format!("STOPPING=1\nMAINPID={pid}\n"));
    let status = wait_timeout(&mut child, SETTLE_TIMEOUT).expect("exit after TERM");
    assert!(status.success(), "{status}\n{}", log());
    assert!(
        socket.exists(),
        "the socket belongs to systemd: it must stay"
    );
}

// ---------------------------------------------------------------------------------------
// 11. Workers that cannot start.
//
// A file descriptor limit makes workers fail at startup with no hook in the server: the
// master needs a few descriptors (stdio, the listener, a signalfd, the status pipe), a
// worker needs more (its runtime's epoll and eventfd, the signal pipe), so some limits let
// the master start and no worker. util-linux `prlimit` sets the limit of a command it runs
// (`--nofile=N:N`) or of a running process (`--pid`).

/// How a start under a file descriptor limit ended.
enum LimitedStart {
    /// The process exited before any worker was ready: its status, its output (stdout and
    /// stderr) and how long it ran.
    Failed(std::process::ExitStatus, String, Duration),
    /// It became ready (and was stopped): a worker could start.
    Ready,
}

/// `prlimit --nofile=LIMIT:LIMIT appserver runfcgi method=prefork debug=true
/// socket=DIR/s.sock OPTIONS`, run in `dir`, the socket file of an earlier try removed.
fn fd_limited(limit: u32, dir: &Path, options: &[&str]) -> Command {
    let _ = fs::remove_file(dir.join("s.sock"));
    let mut cmd = daemon_command(Path::new("prlimit"), dir);
    cmd.arg(format!("--nofile={limit}:{limit}"))
        .arg(appserver_bin())
        .args(["runfcgi", "method=prefork", "debug=true"])
        .arg(format!("socket={}", dir.join("s.sock").display()))
        .args(options);
    cmd
}

/// A foreground start under `limit` descriptors, its stderr in a file of `dir`. A master
/// that neither becomes ready nor exits within SETTLE_TIMEOUT (the behaviour this guards
/// against) fails the test, after being killed with its workers.
fn start_foreground_limited(limit: u32, dir: &Path) -> LimitedStart {
    let log_path = dir.join(format!("stderr.{limit}"));
    let mut cmd = fd_limited(limit, dir, &["daemonize=false"]);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log_path).expect("log file"));
    let started = Instant::now();
    // prlimit execs appserver: the child is the master.
    let mut master = cmd.spawn().expect("spawn prlimit (util-linux)");
    let log = || fs::read_to_string(&log_path).unwrap_or_default();
    loop {
        if let Some(status) = master.try_wait().expect("try_wait") {
            return LimitedStart::Failed(status, log(), started.elapsed());
        }
        let ready = log().contains("appserver: ready: ");
        let hung = started.elapsed() > SETTLE_TIMEOUT;
        if ready || hung {
            let workers = children(master.id());
            let _ = kill(Pid::from_raw(master.id() as i32), Signal::SIGTERM);
            if wait_timeout(&mut master, SETTLE_TIMEOUT).is_none() {
                for pid in workers.into_iter().chain([master.id()]) {
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                }
                let _ = master.wait();
            }
            assert!(
                !hung,
                "with {limit} file descriptors the master neither served nor exited within \
                 {SETTLE_TIMEOUT:?}:\n{}",
                log()
            );
            return LimitedStart::Ready;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A daemonizing start (with `pidfile=DIR/app.pid`) under `limit` descriptors: the
/// command's exit status and output. A command that does not return within SETTLE_TIMEOUT
/// fails the test, and the daemon it left is stopped.
fn start_daemon_limited(limit: u32, dir: &Path) -> LimitedStart {
    /// Stops the server a pidfile names, if any, when dropped (also while panicking).
    struct StopByPidfile(PathBuf);
    impl Drop for StopByPidfile {
        fn drop(&mut self) {
            let pid = fs::read_to_string(&self.0)
                .ok()
                .and_then(|t| t.trim().parse().ok());
            if let Some(pid) = pid {
                drop(Daemon { pid });
            }
        }
    }
    let pidfile = dir.join("app.pid");
    let _stop = StopByPidfile(pidfile.clone());
    let cmd = fd_limited(limit, dir, &[&format!("pidfile={}", pidfile.display())]);
    let started = Instant::now();
    let out = run_to_exit(cmd, SETTLE_TIMEOUT);
    let took = started.elapsed();
    if out.status.success() {
        return LimitedStart::Ready;
    }
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    LimitedStart::Failed(out.status, output, took)
}

/// The lowest file descriptor limit with which the master starts and no worker does, and
/// that start. Below it the master itself cannot start (it exits 1 with its own message);
/// above it a worker serves. Found by trying, not written down: how many descriptors a
/// process has depends on what the test process passes on, and on the build.
fn find_boot_failure(
    mut start: impl FnMut(u32) -> LimitedStart,
) -> (u32, std::process::ExitStatus, String, Duration) {
    for limit in 3..=64 {
        match start(limit) {
            LimitedStart::Failed(status, log, took) if log.contains("the workers cannot start") => {
                return (limit, status, log, took);
            }
            LimitedStart::Failed(status, log, _) => {
                let last = log.lines().last().unwrap_or_default().to_owned();
                eprintln!("{limit} file descriptors: {status}: {last}");
            }
            LimitedStart::Ready => panic!(
                "with {limit} file descriptors a worker starts, with fewer the master does not: \
                 no limit where only the workers fail"
            ),
        }
    }
    panic!("no file descriptor limit up to 64 lets the master start")
}

/// Checks the master's one line about workers that cannot start, in `log`: it names the
/// last worker (one the master started, `worker N started` at debug level) and how it
/// ended, and every worker started is gone.
fn check_boot_failure_line(log: &str) {
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("the workers cannot start"))
        .collect();
    assert_eq!(lines.len(), 1, "one line saying so:\n{log}");
    let line = lines[0];
    let prefix = "appserver: prefork master failed: the workers cannot start: ";
    assert!(line.starts_with(prefix), "{line}");
    let last: u32 = line
        .split("(the last: worker ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no last worker in {line:?}"));
    assert!(
        line.contains(&format!("(the last: worker {last} exited with status 1)")),
        "{line}"
    );
    // Searched for anywhere, not line by line: the check must not depend on how the lines of
    // processes sharing one stderr interleave.
    let started: Vec<u32> = log
        .match_indices("worker ")
        .filter_map(|(at, word)| {
            let (pid, rest) = log[at + word.len()..].split_once(' ')?;
            rest.starts_with("started").then(|| pid.parse().ok())?
        })
        .collect();
    assert!(
        started.len() >= 3 && started.contains(&last),
        "worker {last} is not among those started, {started:?}:\n{log}"
    );
    // Killed workers the master gave up waiting for are gone a moment later; one that is
    // still there then was left running (shown with its /proc line, to tell it from a pid
    // that another process has since been given).
    let left = || {
        started
            .iter()
            .copied()
            .filter(|&w| alive(w))
            .collect::<Vec<_>>()
    };
    assert!(
        wait_until(SETTLE_TIMEOUT, || left().is_empty()),
        "workers left running: {:?}",
        left()
            .iter()
            .map(|w| fs::read_to_string(format!("/proc/{w}/stat")).unwrap_or_default())
            .collect::<Vec<_>>()
    );
}

/// Workers that cannot start stop a starting server instead of leaving it forking
/// replacements forever: after three failures (`prefork::BOOT_FAILURES`) the master stops
/// what is left, says so in one line naming the last worker and how it ended, and exits 1,
/// leaving no worker and no socket file.
#[test]
fn prefork_exits_1_when_no_worker_can_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (limit, status, log, took) = find_boot_failure(|n| start_foreground_limited(n, dir.path()));
    eprintln!("no worker can start with {limit} file descriptors: {status} after {took:.2?}");
    assert_eq!(status.code(), Some(1), "{log}");
    check_boot_failure_line(&log);
    assert!(!log.contains("appserver: ready:"), "{log}");
    assert!(
        !dir.path().join("s.sock").exists(),
        "socket file left behind"
    );
}

/// The same start daemonizing: the command that started it does not wait forever for a
/// readiness that never comes. It shows the master's line, then `the server (pid N) exited
/// with status 1 before it was ready`, and exits 1; nothing is left holding its output, and
/// neither the pidfile nor the socket file is left behind.
#[test]
fn prefork_daemon_start_fails_when_no_worker_can_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (limit, status, output, took) = find_boot_failure(|n| start_daemon_limited(n, dir.path()));
    eprintln!(
        "daemonizing, no worker can start with {limit} file descriptors: {status} after {took:.2?}"
    );
    assert_eq!(status.code(), Some(1), "{output}");
    check_boot_failure_line(&output);
    let daemon: u32 = output
        .lines()
        .find_map(|l| {
            l.strip_prefix("appserver: the server (pid ")?
                .strip_suffix(") exited with status 1 before it was ready")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("the command did not say the server exited:\n{output}"));
    assert!(!alive(daemon), "the daemon {daemon} still runs");
    assert!(!output.contains("serving fcgi"), "{output}");
    assert!(!dir.path().join("app.pid").exists(), "pidfile left behind");
    assert!(
        !dir.path().join("s.sock").exists(),
        "socket file left behind"
    );
}

/// The soft `RLIMIT_NOFILE` of a running process, from `/proc/PID/limits`.
fn nofile_limit(pid: u32) -> u64 {
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).expect("proc limits");
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|soft| soft.parse().ok())
        .unwrap_or_else(|| panic!("no open files limit in:\n{limits}"))
}

/// Sets the soft `RLIMIT_NOFILE` of a running process (its children inherit it).
fn set_nofile_limit(pid: u32, soft: u64) {
    let status = Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={soft}:"))
        .status()
        .expect("prlimit (util-linux)");
    assert!(status.success(), "prlimit --pid={pid} --nofile={soft}:");
}

/// A file descriptor limit for a running master with which it goes on (it opens no
/// descriptor while it runs; one to spare) and a worker it forks cannot start: the master's
/// lowest free descriptor number, plus one.
fn starving_limit(master: u32) -> u64 {
    let open: BTreeSet<u64> = fs::read_dir(format!("/proc/{master}/fd"))
        .expect("proc fd")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    (0..).find(|fd| !open.contains(fd)).unwrap_or(0) + 1
}

/// Once the pool has served, workers that cannot start are only retried, each after a
/// pause: a crash loop must not take down a pool that is serving. With the master's
/// descriptor limit lowered, a killed worker's replacements fail more than three times in a
/// row; the other worker serves on, and once the limit is back the pool is whole again.
#[test]
fn prefork_keeps_serving_while_replacements_cannot_start() {
    let server = prefork(TestCommand::appserver(), &["minspare=2", "maxspare=2"]);
    let master = server.pid();
    assert!(wait_until(SETTLE_TIMEOUT, || children(master).len() == 2));
    let workers = children(master);
    let (victim, survivor) = (
        *workers.first().expect("two"),
        *workers.last().expect("two"),
    );
    let limit = nofile_limit(master);
    set_nofile_limit(master, starving_limit(master));
    kill(Pid::from_raw(victim as i32), Signal::SIGKILL).expect("kill -9 worker");
    let failed = || {
        server
            .log()
            .matches("exited with status 1; starting a replacement")
            .count()
    };
    let started = Instant::now();
    assert!(
        wait_until(SETTLE_TIMEOUT, || failed() > 3),
        "{} replacements failed:\n{}",
        failed(),
        server.log()
    );
    eprintln!(
        "{} replacements failed in {:.2?}",
        failed(),
        started.elapsed()
    );
    assert!(alive(master), "the master stopped:\n{}", server.log());
    let socket = socket_of(&server);
    let probe = || {
        let out = TestCommand::appserver()
            .args(["probe".to_owned(), socket.display().to_string()])
            .output(SETTLE_TIMEOUT);
        assert!(out.status.success(), "probe:\n{}", server.log());
        page_pid(&String::from_utf8_lossy(&out.stdout)).expect("pid line")
    };
    assert_eq!(probe(), survivor);

    set_nofile_limit(master, limit);
    assert!(
        wait_until(SETTLE_TIMEOUT, || {
            let now = children(master);
            now.len() == 2 && now.contains(&survivor) && !now.contains(&victim)
        }),
        "the pool is not whole again: {:?}\n{}",
        children(master),
        server.log()
    );
    probe();
    assert!(
        !server.log().contains("the workers cannot start"),
        "{}",
        server.log()
    );
}

/// A reload (HUP) whose new workers cannot start: the master re-executes with a lowered
/// descriptor limit. It reports the reload failed, once, and the previous workers serve on:
/// they are neither killed nor left unsupervised. Returns the previous workers.
fn failed_reload(server: &Server) -> BTreeSet<u32> {
    let master = server.pid();
    assert!(wait_until(SETTLE_TIMEOUT, || children(master).len() == 2));
    let old = children(master);
    set_nofile_limit(master, starving_limit(master));
    server.signal(Signal::SIGHUP);
    let line = "reload failed: the new workers cannot start";
    assert!(
        wait_until(SETTLE_TIMEOUT, || server.log().contains(line)),
        "no {line:?}:\n{}",
        server.log()
    );
    let socket = socket_of(server);
    for _ in 0..3 {
        let out = TestCommand::appserver()
            .args(["probe".to_owned(), socket.display().to_string()])
            .output(SETTLE_TIMEOUT);
        assert!(out.status.success(), "probe:\n{}", server.log());
        let pid = page_pid(&String::from_utf8_lossy(&out.stdout)).expect("pid line");
        assert!(old.contains(&pid), "served by {pid}, not by {old:?}");
    }
    assert!(old.iter().all(|&w| alive(w)));
    assert!(alive(master));
    assert_eq!(server.log().matches(line).count(), 1, "{}", server.log());
    old
}

/// After a reload whose workers cannot start, the master gives up (exit 1, one line saying
/// the workers cannot start) once the previous workers are gone: here they are killed.
#[test]
fn prefork_failed_reload_exits_1_once_the_previous_workers_are_gone() {
    let mut server = prefork(TestCommand::appserver(), &["minspare=2", "maxspare=2"]);
    let old = failed_reload(&server);
    for &w in &old {
        kill(Pid::from_raw(w as i32), Signal::SIGKILL).expect("kill -9 old worker");
    }
    let status = server
        .wait_exit(SETTLE_TIMEOUT)
        .unwrap_or_else(|| panic!("still running without workers:\n{}", server.log()));
    let log = server.log();
    assert_eq!(status.code(), Some(1), "{log}");
    check_boot_failure_line(&log);
    assert!(
        log.contains("and the previous workers have exited"),
        "{log}"
    );
}

/// After a reload whose workers cannot start, TERM is an ordinary graceful stop: the
/// previous workers stop too, and the master exits 0 only once they are gone.
#[test]
fn prefork_failed_reload_stops_the_previous_workers_on_term() {
    let mut server = prefork(TestCommand::appserver(), &["minspare=2", "maxspare=2"]);
    let old = failed_reload(&server);
    server.signal(Signal::SIGTERM);
    let status = server
        .wait_exit(SETTLE_TIMEOUT)
        .unwrap_or_else(|| panic!("still running after TERM:\n{}", server.log()));
    assert!(status.success(), "{status}\n{}", server.log());
    let left: Vec<u32> = old.iter().copied().filter(|&w| alive(w)).collect();
    assert!(
        left.is_empty(),
        "previous workers {left:?} outlived the master"
    );
}

// ---------------------------------------------------------------------------------------
// 12. touch_reload=.

/// Sets `path`'s modification time 10 s past its current one, as `touch` would a second
/// later: a change even when the previous one was within the same second.
fn touch_later(path: &Path) {
    let file = fs::File::options()
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mtime = file.metadata().and_then(|m| m.modified()).expect("mtime");
    file.set_modified(mtime + Duration::from_secs(10))
        .expect("set_modified");
}

/// The ready lines of process `pid` in `log`: one per image it ran (a reload re-executes it
/// with the same pid).
fn ready_lines(log: &str, pid: u32) -> usize {
    let pid = format!(" pid={pid}");
    log.lines()
        .filter(|l| l.contains("appserver: ready: ") && l.trim_end().ends_with(&pid))
        .count()
}

/// The workers a prefork master named when it re-executed itself for the `nth` time (from
/// 1), which finish their requests and exit: `... re-executing EXE (workers 12,34 finish
/// their requests)`. `None` until that line is logged.
fn retired_workers(log: &str, nth: usize) -> Option<BTreeSet<u32>> {
    let line = log
        .lines()
        .filter(|l| l.contains(": re-executing "))
        .nth(nth.checked_sub(1)?)?;
    let list = line.split("(workers ").nth(1)?.split(' ').next()?;
    Some(list.split(',').filter_map(|p| p.parse().ok()).collect())
}

/// Waits until a prefork master has re-executed itself for the `nth` time and announced
/// itself again (`nth + 1` ready lines), and the workers of the previous image are gone;
/// returns those workers.
fn wait_reloaded(log: impl Fn() -> String, master: u32, nth: usize) -> BTreeSet<u32> {
    let mut retired = BTreeSet::new();
    let done = wait_until(SETTLE_TIMEOUT, || {
        let log = log();
        match retired_workers(&log, nth) {
            Some(workers) => {
                retired = workers;
                ready_lines(&log, master) == nth + 1 && retired.iter().all(|&w| !alive(w))
            }
            None => false,
        }
    });
    assert!(
        done,
        "reload {nth} of {master} not complete (previous workers {retired:?}):\n{}",
        log()
    );
    retired
}

/// The file `pid` runs (`/proc/PID/exe`); ends in ` (deleted)` once that file was replaced.
fn exe_of(pid: u32) -> String {
    fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|e| panic!("/proc/{pid}/exe: {e}"))
}

/// `touch_reload=FILE` with prefork on TCP, under load through nginx: touching the file
/// replaces the workers exactly as HUP does (same master, not one request failed); then
/// nothing happens while the file stays as it is (no reload loop), and replacing the file by
/// another with the same modification time reloads once more.
#[test]
fn prefork_touch_reload_under_load_loses_no_request() {
    let mut cmd = TestCommand::appserver();
    let file = cmd.path("restart.txt");
    fs::write(&file, "").expect("write restart.txt");
    cmd.args([
        "runfcgi",
        "daemonize=false",
        "method=prefork",
        "debug=true",
        "host=127.0.0.1",
        "port=0",
        "minspare=2",
        "maxspare=4",
        "maxchildren=8",
    ])
    .arg(format!("touch_reload={}", file.display()));
    let server = cmd.start();
    let master = server.pid();
    let nginx = Nginx::fastcgi(server.listen(), FcgiPass::Close);
    assert!(wait_until(SETTLE_TIMEOUT, || children(master).len() >= 2));

    let load = Load::start(nginx.port(), "/", LOAD_THREADS);
    load.wait_done(50);
    let touched_at = load.now();
    touch_later(&file);
    let old = wait_reloaded(|| server.log(), master, 1);
    let replaced_at = load.now();
    thread::sleep(LOAD_TIME / 2);
    let report = load.finish();
    report.print(&format!(
        "touch_reload (prefork) at {touched_at:.2?} (old workers replaced at {replaced_at:.2?})"
    ));
    report.assert_none_failed(" across the touch reload", &cases::logs(&server, &nginx));
    let late: BTreeSet<u32> = report
        .outcomes
        .iter()
        .filter(|o| o.start > replaced_at)
        .filter_map(|o| page_pid(o.result.as_ref().ok()?))
        .collect();
    assert!(!late.is_empty(), "no request after the reload");
    assert!(
        late.is_disjoint(&old),
        "old workers {old:?} served after the reload: {late:?}"
    );
    let log = server.log();
    let line = format!("touch_reload: {} changed: re-executing", file.display());
    assert_eq!(log.matches(&line).count(), 1, "{log}");

    // The re-executed master watches from the file's state: nothing reloads while it stays
    // as it is. Idle workers beyond maxspare may be stopped meanwhile; none is started.
    let settled = children(master);
    thread::sleep(Duration::from_millis(2500));
    assert_eq!(ready_lines(&server.log(), master), 2, "{}", server.log());
    assert!(
        children(master).is_subset(&settled),
        "new workers without a change: {:?} (were {settled:?})\n{}",
        children(master),
        server.log()
    );

    // Replaced by a file with the same modification time: its inode tells.
    let mtime = fs::metadata(&file)
        .and_then(|m| m.modified())
        .expect("mtime");
    let new = file.with_extension("new");
    fs::write(&new, "v2").expect("write");
    fs::File::options()
        .write(true)
        .open(&new)
        .and_then(|f| f.set_modified(mtime))
        .expect("set_modified");
    fs::rename(&new, &file).expect("rename");
    let before = wait_reloaded(|| server.log(), master, 2);
    assert_eq!(server.log().matches(&line).count(), 2);
    let pid = page_pid(&http_get(nginx.port(), "/").text()).expect("pid line");
    assert!(
        !before.contains(&pid),
        "worker {pid} of the previous image served"
    );
}

/// `touch_reload=FILE` with `method=threaded` (the axum example, on a unix socket), where the
/// file does not exist at the start: its creation reloads. The process finishes the requests
/// in flight (a slow one among them), re-executes itself with the same pid and the listener
/// inherited, and answers the requests that arrived meanwhile: none fails. Removing the file
/// reloads again; after that nothing reloads while nothing changes.
#[test]
fn threaded_touch_reload_re_executes_without_losing_requests() {
    threaded_touch_reload(FcgiPass::Close);
}

/// The same with nginx keeping connections to appserver open: the reload closes the idle
/// kept-alive connections, as a graceful stop does, and nginx opens new ones.
#[test]
fn threaded_touch_reload_with_nginx_keepalive() {
    threaded_touch_reload(FcgiPass::KeepConn);
}

fn threaded_touch_reload(pass: FcgiPass) {
    let mut cmd = TestCommand::axum();
    let file = cmd.path("restart.txt");
    let socket = cmd.path("s.sock");
    cmd.args([
        "runfcgi",
        "daemonize=false",
        "method=threaded",
        "debug=true",
    ])
    .arg(format!("socket={}", socket.display()))
    .arg(format!("touch_reload={}", file.display()));
    let server = cmd.start();
    let pid = server.pid();
    let missing = format!(
        "touch_reload={}: no such file yet; creating it will reload the server",
        file.display()
    );
    assert!(server.log().contains(&missing), "{}", server.log());
    let nginx = Nginx::fastcgi(server.listen(), pass);

    let slow = request_in_background(nginx.port(), "/slow?ms=1500");
    assert!(
        wait_until(SETTLE_TIMEOUT, || unix_accepted(&socket) >= 1),
        "the slow request was not accepted"
    );
    let load = Load::start(nginx.port(), "/", LOAD_THREADS);
    load.wait_done(20);
    let created_at = load.now();
    fs::write(&file, "").expect("create restart.txt");
    assert!(
        wait_until(SETTLE_TIMEOUT, || ready_lines(&server.log(), pid) == 2),
        "no second ready line after the file was created:\n{}",
        server.log()
    );
    let reloaded_at = load.now();
    thread::sleep(LOAD_TIME / 2);
    let report = load.finish();
    report.print(&format!(
        "touch_reload (threaded) at {created_at:.2?}, nginx {pass:?}, re-executed at \
         {reloaded_at:.2?}"
    ));
    let slowest = report
        .outcomes
        .iter()
        .map(|o| o.end - o.start)
        .max()
        .unwrap_or_default();
    eprintln!("load: slowest request {slowest:.2?} (waited in the backlog during the reload)");
    assert_eq!(
        slow.join().expect("client thread").as_deref(),
        Ok("done\n"),
        "the slow request in flight during the reload\n{}",
        cases::logs(&server, &nginx)
    );
    report.assert_none_failed(" across the touch reload", &cases::logs(&server, &nginx));
    assert!(
        report
            .outcomes
            .iter()
            .any(|o| o.start > reloaded_at && o.result.is_ok()),
        "no request answered after the reload"
    );
    let log = server.log();
    let line = format!("touch_reload: {} changed: re-executing", file.display());
    assert_eq!(log.matches(&line).count(), 1, "{log}");
    assert!(alive(pid));

    fs::remove_file(&file).expect("remove restart.txt");
    assert!(
        wait_until(SETTLE_TIMEOUT, || ready_lines(&server.log(), pid) == 3),
        "no reload after the file was removed:\n{}",
        server.log()
    );
    thread::sleep(Duration::from_millis(2500));
    assert_eq!(ready_lines(&server.log(), pid), 3, "{}", server.log());
    assert_eq!(http_get(nginx.port(), "/").text(), "Hello from axum\n");
}

/// A TERM that arrives while a threaded server finishes its requests before re-executing
/// itself (touch_reload=) stops it instead: the request in flight is answered, the server
/// exits 0 and does not come back as a new image.
#[test]
fn threaded_term_during_touch_reload_stops_instead() {
    let mut cmd = TestCommand::axum();
    let file = cmd.path("restart.txt");
    fs::write(&file, "").expect("write restart.txt");
    let socket = cmd.path("s.sock");
    cmd.args(["runfcgi", "daemonize=false", "method=threaded"])
        .arg(format!("socket={}", socket.display()))
        .arg(format!("touch_reload={}", file.display()));
    let mut server = cmd.start();
    let nginx = Nginx::fastcgi(server.listen(), FcgiPass::Close);
    let slow = request_in_background(nginx.port(), "/slow?ms=2000");
    assert!(
        wait_until(SETTLE_TIMEOUT, || unix_accepted(&socket) >= 1),
        "the slow request was not accepted"
    );
    touch_later(&file);
    assert!(
        wait_until(SETTLE_TIMEOUT, || server
            .log()
            .contains("once the requests in flight are answered")),
        "no reload began:\n{}",
        server.log()
    );
    server.signal(Signal::SIGTERM);
    let status = server
        .wait_exit(SETTLE_TIMEOUT)
        .unwrap_or_else(|| panic!("still running after TERM:\n{}", server.log()));
    let log = server.log();
    assert!(status.success(), "{status}\n{log}");
    assert_eq!(
        slow.join().expect("client thread").as_deref(),
        Ok("done\n"),
        "{log}"
    );
    assert!(
        log.contains("stopping instead of reloading, as a signal asked"),
        "{log}"
    );
    assert_eq!(ready_lines(&log, server.pid()), 1, "{log}");
    assert!(!socket.exists(), "socket file left behind");
}

/// The Django document's advice for shared hosting, "touch mysite.fcgi and Apache will
/// restart your application", which mod_fcgid does not do (it tells its processes apart by
/// the script's inode, so a touched script is the same one): with `touch_reload="$0"` in
/// `site.fcgi`, appserver reloads itself. A new appserver binary is installed (the running
/// one now runs a deleted file), `site.fcgi` touched under load: not one request fails,
/// mod_fcgid keeps talking to the same process, and the requests after the reload are
/// served by the new binary.
#[test]
fn mod_fcgid_touch_site_fcgi_reloads_threaded() {
    mod_fcgid_touch("threaded");
}

/// The same with `method=prefork`: the master re-executes itself, its new workers serve.
#[test]
fn mod_fcgid_touch_site_fcgi_reloads_prefork() {
    mod_fcgid_touch("prefork");
}

fn mod_fcgid_touch(method: &str) {
    let (apache, site) = apache_fcgid_site(method, true);
    let wrapper = site.join("htdocs/site.fcgi");
    let bin = site.join("appserver");
    let resp = http_get(apache.port(), "/first");
    let body = resp.text();
    assert_eq!(resp.status, 200, "{body}\n{}", apache.error_log());
    let first = page_pid(&body).expect("pid line");
    let spawned = match method {
        "prefork" => proc_stat(first).expect("worker").1,
        _ => first,
    };
    copy_appserver(&bin);
    assert_eq!(
        exe_of(spawned),
        format!("{} (deleted)", bin.display()),
        "the running appserver should run the replaced file"
    );

    // mod_fcgid sends one request at a time per process: one client keeps it to one.
    let load = Load::start(apache.port(), "/", 1);
    load.wait_done(20);
    let touched_at = load.now();
    touch_later(&wrapper);
    // Reloaded: announced again, and (prefork) the previous image's workers gone.
    let old_workers = if method == "prefork" {
        wait_reloaded(|| apache.error_log(), spawned, 1)
    } else {
        assert!(
            wait_until(SETTLE_TIMEOUT, || ready_lines(&apache.error_log(), spawned)
                == 2),
            "appserver {spawned} did not reload after `touch site.fcgi`:\n{}",
            apache.error_log()
        );
        BTreeSet::new()
    };
    let reloaded_at = load.now();
    load.wait_done(load.done.load(Ordering::Relaxed) + 20);
    let report = load.finish();
    report.print(&format!(
        "touch site.fcgi (mod_fcgid, {method}) at {touched_at:.2?}, reloaded at \
         {reloaded_at:.2?}"
    ));
    let log = apache.error_log();
    report.assert_none_failed(" across the touch reload", &log);
    // "$0" is the script's absolute path: mod_fcgid runs it by that path.
    let line = format!("touch_reload: {} changed", wrapper.display());
    assert_eq!(log.matches(&line).count(), 1, "{log}");
    assert!(alive(spawned), "appserver {spawned} is gone:\n{log}");
    assert_eq!(
        exe_of(spawned),
        bin.display().to_string(),
        "not re-executed"
    );
    let late: BTreeSet<u32> = report
        .outcomes
        .iter()
        .filter(|o| o.start > reloaded_at)
        .filter_map(|o| page_pid(o.result.as_ref().ok()?))
        .collect();
    assert!(!late.is_empty(), "no request after the reload");
    for &pid in &late {
        if method == "prefork" {
            assert!(!old_workers.contains(&pid), "old worker {pid} served late");
        } else {
            assert_eq!(pid, spawned, "mod_fcgid started another process:\n{log}");
        }
        if alive(pid) {
            assert_eq!(
                exe_of(pid),
                bin.display().to_string(),
                "{pid} runs old code"
            );
        }
    }
    assert!(
        !log.contains(&format!("site.fcgi({spawned}) exit")),
        "mod_fcgid saw appserver {spawned} exit:\n{log}"
    );
}

/// SIGHUP reloads a threaded server as it reloads a prefork master: same pid, listener
/// inherited, the requests in flight answered, none lost. `maxrequests=` in threaded renews
/// the process the same way each time it has served that many requests.
#[test]
fn threaded_hup_and_maxrequests_re_execute_without_losing_requests() {
    const MAX: usize = 400;
    let mut cmd = TestCommand::axum();
    let socket = cmd.path("s.sock");
    cmd.args([
        "runfcgi",
        "daemonize=false",
        "method=threaded",
        "debug=true",
    ])
    .arg(format!("maxrequests={MAX}"))
    .arg(format!("socket={}", socket.display()));
    let server = cmd.start();
    let pid = server.pid();
    let nginx = Nginx::fastcgi(server.listen(), FcgiPass::Close);

    let slow = request_in_background(nginx.port(), "/slow?ms=1000");
    assert!(
        wait_until(SETTLE_TIMEOUT, || unix_accepted(&socket) >= 1),
        "the slow request was not accepted"
    );
    let load = Load::start(nginx.port(), "/", LOAD_THREADS);
    load.wait_done(20);
    kill(Pid::from_raw(pid as i32), Signal::SIGHUP).expect("SIGHUP");
    assert!(
        wait_until(SETTLE_TIMEOUT, || ready_lines(&server.log(), pid) >= 2),
        "no second ready line after SIGHUP:\n{}",
        server.log()
    );
    // Enough requests after the reload to reach maxrequests= at least twice more.
    load.wait_done(3 * MAX + 20);
    let report = load.finish();
    report.print("SIGHUP then maxrequests (threaded)");
    assert_eq!(
        slow.join().expect("client thread").as_deref(),
        Ok("done\n"),
        "the slow request in flight during the reload\n{}",
        cases::logs(&server, &nginx)
    );
    report.assert_none_failed(" across the reloads", &cases::logs(&server, &nginx));
    let recycled = format!("maxrequests={MAX} reached: re-executing");
    assert!(
        server.wait_log(&recycled, 2),
        "fewer than 2 maxrequests reloads:\n{}",
        server.log()
    );
    let log = server.log();
    assert_eq!(log.matches("SIGHUP: re-executing").count(), 1, "{log}");
    assert!(alive(pid), "the same process serves on");
    assert_eq!(http_get(nginx.port(), "/").text(), "Hello from axum\n");
}

// ---------------------------------------------------------------------------------------
// 13. A threaded process's accept loops.

/// How long `/busy` holds its runtime thread in the test below: long enough that an answer
/// queued behind it could not pass for a prompt one.
const BUSY_MS: u64 = 4_000;

/// A threaded process serves a new connection in place on the accept loop's task, so a
/// handler that holds its thread (a blocking call, a long computation) holds that loop. Each
/// runtime thread has a loop of its own: with two threads, a request sent while one handler
/// holds its thread is answered by the other thread's loop, not after the busy one.
///
/// The busy request is written while the process is stopped, so it is whole in the socket
/// when a loop accepts it, and served in place. (One that arrives later waits on a task of its
/// own, woken by the runtime's I/O driver on the thread that then runs it, and the other
/// thread may sleep without polling for I/O until the handler returns: why a handler must not
/// hold its thread, `Handler`'s documentation.)
#[test]
fn threaded_answers_while_a_handler_holds_its_thread() {
    let mut cmd = TestCommand::axum();
    let socket = cmd.path("s.sock");
    cmd.env("TOKIO_WORKER_THREADS", "2")
        .args([
            "runfcgi",
            "daemonize=false",
            "method=threaded",
            "debug=true",
        ])
        .arg(format!("socket={}", socket.display()));
    let server = cmd.start();
    let pid = Pid::from_raw(server.pid() as i32);

    let mut wire = BytesMut::new();
    let params = cgi_params("GET", &format!("/busy?ms={BUSY_MS}"), &[]);
    encode_request(1, Role::Responder, false, &params, &mut wire);
    encode_stdin(1, &[], &mut wire);
    // Connected while stopped too (the connection waits in the backlog): one accepted
    // before its request is written would be polled, find nothing, and wait on a task.
    kill(pid, Signal::SIGSTOP).expect("SIGSTOP");
    let mut busy = Stream::connect(server.listen());
    busy.set_timeouts(SETTLE_TIMEOUT + Duration::from_millis(BUSY_MS));
    busy.write_all(&wire).expect("write the busy request");
    kill(pid, Signal::SIGCONT).expect("SIGCONT");
    assert!(
        wait_until(SETTLE_TIMEOUT, || unix_accepted(&socket) == 1),
        "the busy request was not accepted\n{}",
        server.log()
    );

    let sent = Instant::now();
    let mut hello = Stream::connect(server.listen());
    hello.set_timeouts(SETTLE_TIMEOUT + Duration::from_millis(BUSY_MS));
    let resp = fcgi_get(&mut hello, &cgi_params("GET", "/", &[]), false);
    let took = sent.elapsed();
    assert_eq!(resp.status, 200, "{}", server.log());
    assert_eq!(resp.text(), "Hello from axum\n");
    assert!(
        took < Duration::from_millis(BUSY_MS / 4),
        "hello answered after {took:?}, behind the handler holding its thread\n{}",
        server.log()
    );
    let resp = read_response(&mut busy, true, &mut |_| {});
    assert_eq!(
        (resp.status, resp.text().as_str()),
        (200, "done\n"),
        "{}",
        server.log()
    );
}
