//! Observability end to end (issue 11): the scoreboard's figures equal what clients saw
//! through nginx while prefork workers recycle and the server reloads; the metrics pass a
//! real Prometheus parser; the listen queue is the kernel's; `appserver status` prints the
//! table; the access log has one line per request and is reopened on USR1; the slow log names
//! the request, the worker and the CGI script.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::util::client::try_http_request;
use crate::util::command::{appserver_bin, Server, TestCommand};
use crate::util::webserver::{free_port, FcgiPass, Nginx};

/// How long a figure may take to settle (connections linger up to 2 s after their response).
const SETTLE: Duration = Duration::from_secs(15);

/// The Python with `prometheus_client` that `scripts/test` installs into the test
/// virtualenv (`APPSERVER_TEST_VENV`, else `target/wsgi-venv`).
fn python() -> PathBuf {
    let venv = std::env::var_os("APPSERVER_TEST_VENV").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/wsgi-venv"),
        PathBuf::from,
    );
    let python = venv.join("bin/python");
    assert!(
        python.is_file(),
        "{} not found: run scripts/test, which creates the venv with prometheus_client",
        python.display()
    );
    python
}

fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// `GET path` from the metrics listener, with an optional Accept header.
fn metrics_get(port: u16, path: &str, accept: Option<&str>) -> (u16, String, String) {
    let headers: Vec<(&str, &str)> = accept.map(|a| ("Accept", a)).into_iter().collect();
    let r = try_http_request(port, "GET", path, &headers, &[]).expect("metrics listener");
    let ctype = r.header("content-type").unwrap_or_default().to_owned();
    (r.status, ctype, r.text())
}

fn status_json(port: u16) -> Value {
    let (status, _, body) = metrics_get(port, "/status", None);
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Sends exactly `total` GETs through nginx from `threads` threads; `at(i)` runs once when
/// the `i`th request has completed. Returns the statuses the clients saw, by status.
fn send_exactly(
    port: u16,
    total: usize,
    threads: usize,
    mut at: impl FnMut(usize) + Send,
) -> BTreeMap<u16, usize> {
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let next = Arc::clone(&next);
            let done = Arc::clone(&done);
            thread::spawn(move || {
                let mut seen = BTreeMap::new();
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    let status = match try_http_request(port, "GET", "/", &[], &[]) {
                        Ok(r) => r.status,
                        Err(_) => 0,
                    };
                    *seen.entry(status).or_insert(0) += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                seen
            })
        })
        .collect();
    let mut fired = 0;
    while fired < total && !workers.iter().all(|w| w.is_finished()) {
        let d = done.load(Ordering::Relaxed);
        while fired < d {
            fired += 1;
            at(fired);
        }
        thread::sleep(Duration::from_millis(2));
    }
    let mut all = BTreeMap::new();
    for w in workers {
        for (status, count) in w.join().expect("client thread") {
            *all.entry(status).or_insert(0) += count;
        }
    }
    all
}

/// A CGI script in `cmd`'s directory that answers after `secs` seconds.
fn slow_script(cmd: &TestCommand, secs: u32) -> PathBuf {
    let script = cmd.path("slow.cgi");
    std::fs::write(
        &script,
        format!("#!/bin/sh\nsleep {secs}\nprintf 'Content-Type: text/plain\\r\\n\\r\\ndone\\n'\n"),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

fn start(method: &str, extra: &[&str]) -> (Server, u16, PathBuf) {
    let mut cmd = TestCommand::appserver();
    let socket = format!("socket={}", cmd.path("s.sock").display());
    let access = cmd.path("access.log");
    let metrics_port = free_port();
    cmd.args(["runfcgi", "daemonize=false"])
        .arg(format!("method={method}"))
        .arg(socket)
        .arg(format!("metrics=127.0.0.1:{metrics_port}"))
        .arg(format!("accesslog={}", access.display()))
        .args(extra);
    (cmd.start(), metrics_port, access)
}

/// N requests through nginx to a prefork pool that recycles workers (`maxrequests=`) and is
/// reloaded (HUP) twice meanwhile: the scoreboard counts exactly N answered requests, all
/// 2xx, as many connections closed as accepted, and the access log has N lines.
#[test]
fn prefork_counts_are_exact_across_recycling_and_reload() {
    exact_under_load(
        "prefork",
        &[
            "maxrequests=20",
            "minspare=2",
            "maxspare=4",
            "maxchildren=6",
        ],
    );
}

/// The same for a threaded server, which re-executes itself on HUP and every
/// `maxrequests=`.
#[test]
fn threaded_counts_are_exact_across_reexec() {
    exact_under_load("threaded", &["maxrequests=150"]);
}

fn exact_under_load(method: &str, options: &[&str]) {
    const TOTAL: usize = 600;
    let (server, metrics, access) = start(method, options);
    let nginx = Nginx::fastcgi(server.listen(), FcgiPass::Close);
    let master = server.pid();
    let seen = send_exactly(nginx.port(), TOTAL, 4, |i| {
        if i == TOTAL / 3 || i == 2 * TOTAL / 3 {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(master as i32), Signal::SIGHUP)
                .expect("HUP");
        }
    });
    assert_eq!(
        seen.get(&200).copied().unwrap_or(0),
        TOTAL,
        "every request answered 200: {seen:?}\n{}",
        server.log()
    );
    // Connections linger after their response: wait until all are closed.
    let mut last = Value::Null;
    let settled = wait_until(SETTLE, || {
        last = status_json(metrics);
        n(&last["active_connections"]) == 0 && n(&last["requests_in_flight"]) == 0
    });
    assert!(settled, "connections or requests still open: {last:#}");
    let s = status_json(metrics);
    assert_eq!(n(&s["requests_total"]), TOTAL as u64, "{s:#}");
    assert_eq!(n(&s["requests"]["fcgi"]["2xx"]), TOTAL as u64, "{s:#}");
    for class in ["1xx", "3xx", "4xx", "5xx"] {
        assert_eq!(n(&s["requests"]["fcgi"][class]), 0, "{class}: {s:#}");
    }
    assert_eq!(
        n(&s["accepted_connections"]),
        TOTAL as u64,
        "one per request: {s:#}"
    );
    assert_eq!(n(&s["duration"]["count"]), TOTAL as u64);
    assert!(n(&s["reloads"]) >= 2, "two HUPs: {s:#}");
    assert!(n(&s["bytes_in"]) > 0 && n(&s["bytes_out"]) > 0);
    if method == "prefork" {
        // Recycled workers' requests still count: more workers served than are alive.
        let served: u64 = s["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| n(&w["requests"]))
            .sum();
        assert!(
            served < TOTAL as u64,
            "live workers served {served} of {TOTAL}"
        );
    }
    let server_log = server.log();
    // Every worker flushes its access log lines when it exits, and on a reload's exec.
    let mut server = server;
    server.signal(Signal::SIGTERM);
    assert!(server.wait_exit(SETTLE).is_some(), "server did not stop");
    let lines = std::fs::read_to_string(&access).unwrap();
    let lines: Vec<&str> = lines.lines().collect();
    assert_eq!(lines.len(), TOTAL, "access log lines\n{server_log}");
    assert!(lines
        .iter()
        .all(|l| l.contains("\"GET / HTTP/1.1\" 200 ") && l.ends_with(" fcgi")));
}

/// `/metrics` in both formats goes through prometheus_client's parsers (the OpenMetrics one
/// is strict), and the parsed values are the server's real figures.
#[test]
fn metrics_pass_the_prometheus_parsers() {
    let (server, metrics, _) = start("threaded", &["status_path=/status"]);
    for i in 0..5 {
        let probe = Command::new(appserver_bin())
            .args(["probe", &server.listen().nginx_addr().replace("unix:", "")])
            .arg(format!("/page{i}"))
            .output()
            .unwrap();
        assert!(probe.status.success());
    }
    assert!(wait_until(SETTLE, || n(
        &status_json(metrics)["requests_total"]
    ) == 5));
    let parse = |kind: &str, text: &str| -> String {
        let script = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families as prom
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om
parse = om if sys.argv[1] == "om" else prom
for family in parse(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        print(f"{family.type} {s.name}{{{labels}}} {float(s.value)}")
"#;
        let mut child = Command::new(python())
            .args(["-c", script, kind])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{kind} parser refused the metrics: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let (status, ctype, om) = metrics_get(
        metrics,
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0"),
    );
    assert_eq!(status, 200);
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    let parsed = parse("om", &om);
    assert!(
        parsed.contains("counter appserver_requests_total{code_class=2xx,protocol=fcgi} 5.0"),
        "{parsed}"
    );
    assert!(parsed.contains("histogram appserver_request_duration_seconds_bucket{le=+Inf} 5.0"));
    assert!(
        parsed.contains("gauge appserver_listen_queue_limit{} "),
        "{parsed}"
    );
    let (_, ctype, prom) = metrics_get(metrics, "/metrics", None);
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    let parsed = parse("prom", &prom);
    assert!(
        parsed.contains("counter appserver_requests_total{code_class=2xx,protocol=fcgi} 5.0"),
        "{parsed}"
    );
    // status_path= answers the same OpenMetrics in-protocol.
    let probe = Command::new(appserver_bin())
        .args(["probe", &server.listen().nginx_addr().replace("unix:", "")])
        .arg("/status?openmetrics")
        .output()
        .unwrap();
    let text = String::from_utf8(probe.stdout).unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1;
    parse("om", body);
    // Anything else on the metrics listener is refused.
    assert_eq!(metrics_get(metrics, "/other", None).0, 404);
    let r = try_http_request(metrics, "POST", "/metrics", &[], b"x").unwrap();
    assert_eq!(r.status, 405);
}

/// The listen queue is the kernel's: a threaded server serving one connection at a time
/// (`maxconns=1`) busy with a slow CGI request leaves the next connections in the backlog
/// (a busy connection cannot be evicted to make room; each of its two accept loops, one per
/// runtime thread, holds one while it waits for a slot), and the status says how many.
#[test]
fn listen_queue_counts_waiting_connections() {
    for listen in ["tcp", "unix"] {
        let mut cmd = TestCommand::appserver();
        let script = slow_script(&cmd, 3);
        let address = match listen {
            "tcp" => vec!["host=127.0.0.1".to_owned(), format!("port={}", free_port())],
            _ => vec![format!("socket={}", cmd.path("q.sock").display())],
        };
        let metrics = free_port();
        cmd.env("TOKIO_WORKER_THREADS", "2")
            .args([
                "runfcgi",
                "daemonize=false",
                "method=threaded",
                "maxconns=1",
            ])
            .args(["app=cgi".to_owned(), format!("script={}", script.display())])
            .args(address)
            .arg(format!("metrics=127.0.0.1:{metrics}"));
        let server = cmd.start();
        let target = server.listen().nginx_addr().replace("unix:", "");
        let mut busy = Command::new(appserver_bin())
            .args(["probe", &target, "/slow"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        assert!(wait_until(SETTLE, || n(
            &status_json(metrics)["requests_in_flight"]
        ) == 1));
        let connect = || crate::util::client::Stream::connect(server.listen());
        // Each accept loop takes one more and waits for a slot with it; two stay queued.
        let waiting: Vec<_> = (0..4).map(|_| connect()).collect();
        let mut last = Value::Null;
        let seen = wait_until(SETTLE, || {
            last = status_json(metrics);
            last["listen_queue"]["waiting"] == 2
        });
        assert!(seen, "{listen}: {last:#}");
        assert!(n(&last["listen_queue"]["max_seen"]) >= 2);
        assert!(n(&last["listen_queue"]["limit"]) > 0);
        assert_eq!(
            n(&last["accepted_connections"]),
            1,
            "the others wait unaccepted"
        );
        drop(waiting);
        assert!(busy.wait().unwrap().success());
    }
}

/// `appserver status` prints the table, through the metrics listener and through
/// status_path= over FastCGI.
#[test]
fn status_command_prints_the_table() {
    let (server, metrics, _) = start(
        "prefork",
        &["status_path=/fcgi-status", "minspare=2", "maxspare=2"],
    );
    let socket = server.listen().nginx_addr().replace("unix:", "");
    assert!(wait_until(SETTLE, || status_json(metrics)["workers"]
        .as_array()
        .is_some_and(|w| w.len() >= 2)));
    for args in [
        vec![format!("127.0.0.1:{metrics}")],
        vec![socket.clone(), "--path".into(), "/fcgi-status".into()],
    ] {
        let out = Command::new(appserver_bin())
            .arg("status")
            .args(&args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{args:?}: {text}");
        assert!(
            text.starts_with(&format!("appserver prefork fcgi unix:{socket}")),
            "{text}"
        );
        assert!(text.contains("PID STATE"), "{text}");
        let rows = text
            .lines()
            .filter(|l| l.contains(" idle ") || l.contains(" handling "))
            .count();
        assert!(rows >= 2, "a row per worker: {text}");
    }
    let out = Command::new(appserver_bin())
        .args(["status", "127.0.0.1:1", "--timeout", "2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

/// `appserver status --watch 1` keeps printing the table, each one after the terminal's
/// home-and-clear sequence: read from its stdout as it comes, a table printed after requests
/// were answered counts them, then the watcher is stopped by its pid.
#[test]
fn status_watch_refreshes_the_table() {
    /// What `--watch` prints before each table (home, clear), as top does.
    const CLEAR: &str = "\x1b[H\x1b[2J";
    /// The `requests` figure of one table.
    fn requests(table: &str) -> u64 {
        let line = table
            .lines()
            .find(|l| l.starts_with("requests "))
            .unwrap_or_else(|| panic!("no requests line: {table:?}"));
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    let (server, metrics, _) = start("prefork", &["minspare=1"]);
    let socket = server.listen().nginx_addr().replace("unix:", "");
    let mut watch = Command::new(appserver_bin())
        .args(["status", &format!("127.0.0.1:{metrics}"), "--watch", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Tables as they are printed: a table is whole once the next one has begun.
    let (tx, tables) = std::sync::mpsc::channel::<String>();
    let mut stdout = watch.stdout.take().unwrap();
    let reader = thread::spawn(move || {
        use std::io::Read as _;
        let mut pending = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = stdout.read(&mut buf) {
            pending.extend_from_slice(&buf[..n]);
            // Every table follows a clear; one is whole once the next clear is here.
            while let Some(at) = pending.get(CLEAR.len()..).and_then(|rest| {
                rest.windows(CLEAR.len())
                    .position(|w| w == CLEAR.as_bytes())
            }) {
                let screen = pending.drain(..CLEAR.len() + at).collect::<Vec<u8>>();
                let _ = tx.send(String::from_utf8_lossy(&screen).into_owned());
            }
        }
    });
    let next = || {
        let screen = tables
            .recv_timeout(SETTLE)
            .expect("appserver status --watch printed no new table");
        screen
            .strip_prefix(CLEAR)
            .unwrap_or_else(|| panic!("a table not after a clear: {screen:?}"))
            .to_owned()
    };
    let first = next();
    assert!(first.starts_with("appserver prefork fcgi unix:"), "{first}");
    assert!(first.contains("PID STATE"), "{first}");
    let before = requests(&first);
    const SENT: u64 = 3;
    for i in 0..SENT {
        let out = Command::new(appserver_bin())
            .args(["probe", &socket, &format!("/watched/{i}")])
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    let mut refreshed = 1;
    let after = loop {
        let table = next();
        refreshed += 1;
        assert!(table.contains("PID STATE"), "{table}");
        let now = requests(&table);
        assert!(now >= before, "the count went back: {before} then {table}");
        if now >= before + SENT {
            break now;
        }
        assert!(refreshed < 30, "{SENT} requests never counted: {table}");
    };
    assert_eq!(after, before + SENT, "only the probes were sent");
    assert!(refreshed >= 2);
    // Still running: it watches until stopped.
    assert!(watch.try_wait().unwrap().is_none());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(watch.id() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    let status = crate::util::command::wait_timeout(&mut watch, SETTLE).expect("stopped");
    assert!(!status.success(), "killed by SIGTERM: {status:?}");
    reader.join().unwrap();
    let mut stderr = String::new();
    use std::io::Read as _;
    watch
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(stderr.is_empty(), "{stderr}");
}

/// USR1 reopens the access log after logrotate moved it; JSON lines carry the fields.
#[test]
fn usr1_reopens_the_access_log() {
    let (server, metrics, access) = start("prefork", &["accesslog_format=json", "minspare=1"]);
    let socket = server.listen().nginx_addr().replace("unix:", "");
    let probe = |path: &str| {
        assert!(Command::new(appserver_bin())
            .args(["probe", &socket, path])
            .output()
            .unwrap()
            .status
            .success());
    };
    probe("/before");
    let line_count = |p: &Path| {
        std::fs::read_to_string(p)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    // Written within FLUSH_INTERVAL (1 s).
    assert!(wait_until(SETTLE, || line_count(&access) == 1));
    let rotated = access.with_extension("log.1");
    std::fs::rename(&access, &rotated).unwrap();
    server.signal(Signal::SIGUSR1);
    assert!(
        server.wait_log("SIGUSR1: logs reopened", 1),
        "{}",
        server.log()
    );
    probe("/after");
    assert!(wait_until(SETTLE, || line_count(&access) == 1), "new file");
    assert_eq!(line_count(&rotated), 1);
    let v: Value = serde_json::from_str(std::fs::read_to_string(&access).unwrap().trim()).unwrap();
    assert_eq!(v["uri"], "/after");
    assert_eq!(v["status"], 200);
    assert_eq!(v["protocol"], "fcgi");
    assert!(v["duration"].as_f64().unwrap() > 0.0);
    // A worker's own pid (its parent is the master), not the master's it was forked from.
    let pid = n(&v["pid"]);
    assert!(pid != u64::from(server.pid()), "a worker's pid");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let ppid = stat
        .rsplit(')')
        .next()
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|p| p.parse::<u32>().ok());
    assert_eq!(
        ppid,
        Some(server.pid()),
        "pid {pid} is the master's child: {stat}"
    );
    let _ = metrics;
}

/// slowlog=1: a CGI request still running after a second is logged once, with its method,
/// URI, worker pid, elapsed time, the script and the script's pid.
#[test]
fn slow_cgi_request_is_logged_once_with_its_script() {
    let mut cmd = TestCommand::appserver();
    let script = slow_script(&cmd, 2);
    let socket = format!("socket={}", cmd.path("s.sock").display());
    cmd.args([
        "runfcgi",
        "daemonize=false",
        "method=prefork",
        "app=cgi",
        "slowlog=1",
    ])
    .arg(socket)
    .arg(format!("script={}", script.display()));
    let server = cmd.start();
    let socket = server.listen().nginx_addr().replace("unix:", "");
    let out = Command::new(appserver_bin())
        .args(["probe", &socket, "/report?year=2026"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(server.wait_log("slow request: GET /report?year=2026 running for ", 1));
    let log = server.log();
    let line = log
        .lines()
        .find(|l| l.contains("slow request:"))
        .unwrap()
        .to_owned();
    assert!(
        line.contains(&format!("; script {} pid ", script.display())),
        "{line}"
    );
    assert!(line.contains("(worker "), "{line}");
    // Once, though the request ran on past the second.
    thread::sleep(Duration::from_millis(300));
    assert_eq!(server.log().matches("slow request:").count(), 1, "{log}");
}

/// Connections closed for a reason are counted by the engine's reason: bytes that are not
/// FastCGI (protocol_error), and a request head that never completes (header_timeout).
#[test]
fn early_closes_are_counted_by_reason() {
    use std::io::Read as _;
    let (server, metrics, _) = start("threaded", &["header_timeout=1"]);
    let mut garbage = crate::util::client::Stream::connect(server.listen());
    garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let mut sink = Vec::new();
    let _ = garbage.read_to_end(&mut sink);
    // Half a FastCGI record header, then nothing.
    let mut partial = crate::util::client::Stream::connect(server.listen());
    partial.write_all(&[1, 1, 0]).unwrap();
    let _ = partial.read_to_end(&mut sink);
    let mut last = Value::Null;
    let counted = wait_until(SETTLE, || {
        last = status_json(metrics);
        n(&last["closed_early"]["protocol_error"]) == 1
            && n(&last["closed_early"]["header_timeout"]) == 1
    });
    assert!(counted, "{last:#}\n{}", server.log());
    assert_eq!(n(&last["requests_total"]), 0);
}
