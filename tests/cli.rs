//! The command line: `runfcgi help`, option errors (exit 2, naming the option and what it
//! accepts), the ready line, TERM, and `appserver probe`.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::util::command::{Server, TestCommand};
use crate::util::webserver::free_port;

/// Every option `runfcgi` takes: Django's, then appserver's own.
const OPTIONS: &[&str] = &[
    "protocol",
    "host",
    "port",
    "socket",
    "method",
    "maxrequests",
    "maxspare",
    "minspare",
    "maxchildren",
    "daemonize",
    "pidfile",
    "workdir",
    "debug",
    "outlog",
    "errlog",
    "umask",
    "app",
    "script_name",
    "allow",
    "backlog",
];

const RUN_TIMEOUT: Duration = Duration::from_secs(20);

#[test]
fn help_lists_every_option() {
    let out = TestCommand::appserver()
        .args(["runfcgi", "help"])
        .output(RUN_TIMEOUT);
    assert!(out.status.success(), "runfcgi help: {}", out.status);
    // Help may go to either stream; it goes somewhere.
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let missing: Vec<_> = OPTIONS.iter().filter(|o| !text.contains(*o)).collect();
    assert!(missing.is_empty(), "help lacks {missing:?}:\n{text}");
}

/// Runs `appserver runfcgi ARGS` expecting a usage error: exit 2 and a message containing
/// each of `needles` (case-insensitive). ARGS say `daemonize=false` where a server could
/// start if the check were missing, so a missed error cannot leave a daemon behind.
fn assert_usage_error(args: &[&str], needles: &[&str]) {
    let out = TestCommand::appserver()
        .arg("runfcgi")
        .args(args)
        .output(RUN_TIMEOUT);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{args:?}: {} (a bad option must not start a server)\nstderr: {stderr}",
        out.status
    );
    let lower = stderr.to_lowercase();
    for needle in needles {
        assert!(
            lower.contains(&needle.to_lowercase()),
            "{args:?}: message lacks {needle:?}: {stderr}"
        );
    }
}

/// Without the cargo feature, app=wsgi is a usage error naming the feature.
#[cfg(not(feature = "wsgi"))]
#[test]
fn app_wsgi_without_the_feature_names_it() {
    assert_usage_error(
        &["daemonize=false", "app=wsgi", "module=mysite.wsgi"],
        &["option \"app\"", "feature wsgi", "docs/wsgi.md"],
    );
}

/// app=wsgi needs module=, and its options belong to it.
#[test]
fn wsgi_options_are_checked() {
    if cfg!(feature = "wsgi") {
        assert_usage_error(&["daemonize=false", "app=wsgi"], &["module", "mysite.wsgi"]);
        assert_usage_error(
            &["daemonize=false", "app=wsgi", "module=a-b"],
            &["module", "not a Python module path"],
        );
        assert_usage_error(
            &[
                "daemonize=false",
                "app=wsgi",
                "module=m",
                "method=threaded",
                "preload=true",
            ],
            &["preload", "method=prefork"],
        );
    }
    assert_usage_error(&["daemonize=false", "module=m"], &["module", "app=wsgi"]);
}

#[test]
fn bad_method_names_the_choices() {
    assert_usage_error(
        &["daemonize=false", "method=forky"],
        &["method", "forky", "prefork", "threaded"],
    );
}

#[test]
fn bad_port_is_refused() {
    assert_usage_error(
        &["daemonize=false", "host=127.0.0.1", "port=x"],
        &["port", "65535"],
    );
}

#[test]
fn port_over_65535_is_refused() {
    assert_usage_error(
        &["daemonize=false", "host=127.0.0.1", "port=65536"],
        &["port", "65535"],
    );
}

#[test]
fn bad_daemonize_names_the_choices() {
    assert_usage_error(
        &["daemonize=maybe"],
        &["daemonize", "maybe", "true", "false"],
    );
}

#[test]
fn bad_umask_says_octal() {
    assert_usage_error(
        &["daemonize=false", "umask=9", "socket=never.sock"],
        &["umask", "octal"],
    );
}

#[test]
fn bad_protocol_names_the_choices() {
    assert_usage_error(
        &["daemonize=false", "protocol=http"],
        &["protocol", "fcgi", "scgi", "ajp"],
    );
}

#[test]
fn host_without_port_is_refused() {
    assert_usage_error(&["daemonize=false", "host=127.0.0.1"], &["port"]);
}

#[test]
fn host_with_socket_is_refused() {
    assert_usage_error(
        &[
            "daemonize=false",
            "host=127.0.0.1",
            "port=0",
            "socket=never.sock",
        ],
        &["host", "socket"],
    );
}

#[test]
fn unknown_option_is_named() {
    assert_usage_error(&["daemonize=false", "frobnicate=1"], &["frobnicate"]);
}

#[test]
fn option_without_value_is_named() {
    assert_usage_error(&["daemonize=false", "maxchildren"], &["maxchildren"]);
}

/// `touch_reload=` takes a file, or one to be created in an existing directory (watched for
/// its creation, as uWSGI's touch-reload does): a directory, a path under a directory that
/// does not exist, and an empty value are refused before anything starts.
#[test]
fn touch_reload_needs_a_file_in_an_existing_directory() {
    assert_usage_error(
        &["daemonize=false", "touch_reload=."],
        &["option \"touch_reload\"", "is a directory; name a file"],
    );
    assert_usage_error(
        &[
            "daemonize=false",
            "touch_reload=/nonexistent-appserver-dir/restart.txt",
        ],
        &[
            "option \"touch_reload\"",
            "/nonexistent-appserver-dir/restart.txt: its directory does not exist",
        ],
    );
    assert_usage_error(
        &["daemonize=false", "touch_reload="],
        &["option \"touch_reload\"", "must not be empty"],
    );
}

/// The info app on an ephemeral loopback port.
fn tcp_server() -> Server {
    let mut cmd = TestCommand::appserver();
    cmd.args(["runfcgi", "daemonize=false", "host=127.0.0.1", "port=0"]);
    cmd.start()
}

#[test]
fn ready_line_then_term_exits_zero_promptly() {
    let mut server = tcp_server();
    let line = server.ready_line().to_owned();
    assert!(line.contains("protocol=fcgi"), "{line}");
    assert!(line.contains("method="), "{line}");
    assert!(line.contains(&format!("pid={}", server.pid())), "{line}");
    let addr = server.listen().tcp();
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
    assert_ne!(addr.port(), 0, "port=0 must show the real port: {line}");
    std::net::TcpStream::connect(addr).expect("the ready line means it accepts");

    let started = Instant::now();
    server.signal(Signal::SIGTERM);
    let status = server
        .wait_exit(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("still running 5 s after TERM:\n{}", server.log()));
    assert!(
        status.success(),
        "exit after TERM: {status}\n{}",
        server.log()
    );
    eprintln!("TERM to exit: {:?}", started.elapsed());
    assert_eq!(
        server.log().matches("appserver: ready: ").count(),
        1,
        "exactly one ready line:\n{}",
        server.log()
    );
}

#[test]
fn unix_socket_ready_line_and_cleanup() {
    let mut cmd = TestCommand::appserver();
    let path = cmd.path("app.sock");
    cmd.args([
        "runfcgi".to_owned(),
        "daemonize=false".to_owned(),
        format!("socket={}", path.display()),
    ]);
    let mut server = cmd.start();
    assert_eq!(
        server.listen().nginx_addr(),
        format!("unix:{}", path.display())
    );
    assert!(path.exists());
    server.signal(Signal::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(5)).expect("exit");
    assert!(status.success(), "{status}");
    assert!(!path.exists(), "socket file left behind after TERM");
}

#[test]
fn probe_prints_the_info_page() {
    let server = tcp_server();
    let out = TestCommand::appserver()
        .args(["probe", &server.listen().tcp().to_string()])
        .output(RUN_TIMEOUT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "probe: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("fcgi"), "{stdout}");
    assert!(stdout.contains("REQUEST_METHOD"), "{stdout}");
}

#[test]
fn probe_over_unix_socket_with_path() {
    let mut cmd = TestCommand::appserver();
    let path = cmd.path("p.sock");
    cmd.args([
        "runfcgi".to_owned(),
        "daemonize=false".to_owned(),
        format!("socket={}", path.display()),
    ]);
    let server = cmd.start();
    let out = TestCommand::appserver()
        .args([
            "probe".to_owned(),
            path.display().to_string(),
            "/probe/path?x=1".to_owned(),
        ])
        .output(RUN_TIMEOUT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "probe: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    assert!(stdout.contains("/probe/path"), "{stdout}");
}

#[test]
fn probe_closed_port_fails_with_a_message() {
    let addr = format!("127.0.0.1:{}", free_port());
    let out = TestCommand::appserver()
        .args(["probe", &addr])
        .output(RUN_TIMEOUT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "probe of a closed port succeeded");
    assert!(
        stderr.contains(&addr),
        "message does not name {addr}: {stderr}"
    );
}
