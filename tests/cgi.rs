//! `app=cgi` end to end: real nginx in front of the real `appserver app=cgi`, running the
//! shell scripts of `tests/data/cgi`, git's own CGI program (`git-http-backend`) for a clone
//! and a push, and fcgiwrap running the same scripts behind the same nginx for a
//! differential check (the deliberate differences are listed in docs/cgi.md).
//!
//! Every test builds its own document root in a temporary directory: the scripts are copied
//! there and made executable, so the checkout's file modes do not matter, and the cases that
//! must not run (a symlink out of the docroot, a non-executable file, an NPH script) are made
//! next to them.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::util::apache_proxy::ApacheProxy;
use crate::util::client::{
    cgi_params, fcgi_get, http_get, http_request, sha256_hex, HttpResponse, PatternReader, Stream,
};
use crate::util::command::{wait_timeout, Server, TestCommand};
use crate::util::webserver::Nginx;

/// The scripts, as checked in.
const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/cgi");

/// The CGI program git ships for smart HTTP.
const GIT_HTTP_BACKEND: &str = "/usr/lib/git-core/git-http-backend";

/// A marker put into appserver's own environment: no script may see it.
const SECRET: (&str, &str) = ("APPSERVER_CGI_TEST_SECRET", "s3cret");

/// How long a killed process group may take to disappear: SIGKILL is delivered at once, but
/// the processes exit when the scheduler gets to them.
const GONE_TIMEOUT: Duration = Duration::from_secs(5);

/// `root/cgi/*.sh` from tests/data/cgi (mode 0755), plus `cgi/café.sh` (env.sh under a
/// non-ASCII name), `cgi/nph-hello.sh`, `cgi/noexec.sh` (mode 0644), and `cgi/link.sh`, a
/// symlink to `outside/evil.sh`, which leaves a file `ran` next to itself if it ever runs.
struct Docroot {
    dir: TempDir,
}

impl Docroot {
    fn new() -> Docroot {
        let dir = tempfile::tempdir().expect("tempdir");
        let cgi = dir.path().join("root/cgi");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&cgi).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        for entry in std::fs::read_dir(DATA).unwrap() {
            let path = entry.unwrap().path();
            install(&path, &cgi.join(path.file_name().unwrap()), 0o755);
        }
        install(&cgi.join("env.sh"), &cgi.join("caf\u{e9}.sh"), 0o755);
        install(&cgi.join("hello.sh"), &cgi.join("nph-hello.sh"), 0o755);
        install(&cgi.join("hello.sh"), &cgi.join("noexec.sh"), 0o644);
        std::fs::write(
            outside.join("evil.sh"),
            "#!/bin/sh\ntouch \"$(dirname \"$0\")/ran\"\n\
             printf 'Content-Type: text/plain\\r\\n\\r\\nescaped\\n'\n",
        )
        .unwrap();
        chmod(&outside.join("evil.sh"), 0o755);
        symlink(outside.join("evil.sh"), cgi.join("link.sh")).unwrap();
        Docroot { dir }
    }

    /// The document root (`docroot=`, nginx's `root`).
    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// Whether the script outside the docroot ever ran.
    fn escaped(&self) -> bool {
        self.dir.path().join("outside/ran").exists()
    }
}

fn install(from: &Path, to: &Path, mode: u32) {
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    chmod(to, mode);
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `appserver runfcgi app=cgi` on a unix socket, with [`SECRET`] in its environment.
fn appserver(args: &[&str]) -> Server {
    let mut cmd = TestCommand::appserver();
    let socket = format!("socket={}", cmd.path("cgi.sock").display());
    cmd.args(["runfcgi", "app=cgi", "daemonize=false", &socket])
        .args(args)
        .env(SECRET.0, SECRET.1);
    cmd.start()
}

/// `location /cgi/` passed to `listen` with the stock `fastcgi_params` (no SCRIPT_FILENAME,
/// no PATH_INFO: appserver walks SCRIPT_NAME under docroot=), plus `more` locations.
fn nginx_cgi(server: &Server, more: &str) -> Nginx {
    let pass = server.listen().nginx_addr();
    Nginx::start(
        "",
        &format!(
            "        location /cgi/ {{\n\
             \x20           include /etc/nginx/fastcgi_params;\n\
             \x20           fastcgi_pass {pass};\n\
             \x20       }}\n{more}"
        ),
    )
}

/// A docroot, appserver with `docroot=` (and `args`) on it, and nginx in front.
struct Setup {
    docroot: Docroot,
    server: Server,
    nginx: Nginx,
}

impl Setup {
    fn new(args: &[&str]) -> Setup {
        Setup::with_locations(args, |_, _| String::new())
    }

    /// With extra nginx locations, made from the docroot and the `fastcgi_pass` target.
    fn with_locations(args: &[&str], more: impl Fn(&Path, &str) -> String) -> Setup {
        let docroot = Docroot::new();
        let root = format!("docroot={}", docroot.root().display());
        let mut all = vec![root.as_str()];
        all.extend_from_slice(args);
        let server = appserver(&all);
        let nginx = nginx_cgi(
            &server,
            &more(&docroot.root(), &server.listen().nginx_addr()),
        );
        Setup {
            docroot,
            server,
            nginx,
        }
    }

    fn get(&self, path: &str) -> HttpResponse {
        http_get(self.nginx.port(), path)
    }

    /// Failure context: both logs.
    fn logs(&self) -> String {
        format!(
            "--- appserver stderr ---\n{}--- nginx error.log ---\n{}",
            self.server.log(),
            self.nginx.error_log()
        )
    }

    /// Asserts the status, with the body and both logs on failure.
    fn expect(&self, resp: &HttpResponse, status: u16) {
        assert_eq!(resp.status, status, "{}\n{}", resp.text(), self.logs());
    }
}

/// env.sh's output: its environment, and what it read on stdin.
fn script_env(resp: &HttpResponse) -> (BTreeMap<String, String>, String) {
    let text = resp.text();
    let (env, stdin) = text
        .split_once("--- stdin\n")
        .unwrap_or_else(|| panic!("not env.sh output: {text}"));
    let env = env
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect();
    (env, stdin.to_owned())
}

fn var<'a>(env: &'a BTreeMap<String, String>, name: &str) -> Option<&'a str> {
    env.get(name).map(String::as_str)
}

/// One process, from `/proc/PID/stat`.
#[derive(Debug)]
struct Proc {
    pid: i32,
    ppid: i32,
    pgrp: i32,
    state: char,
    comm: String,
}

fn processes() -> Vec<Proc> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        if f.len() < 3 {
            continue;
        }
        all.push(Proc {
            pid,
            ppid: f[1].parse().unwrap_or(0),
            pgrp: f[2].parse().unwrap_or(0),
            state: f[0].chars().next().unwrap_or('?'),
            comm: stat[open + 1..close].to_owned(),
        });
    }
    all
}

/// Every descendant of `root` (its workers, their scripts, ...).
fn descendants(root: i32) -> Vec<Proc> {
    let all = processes();
    let mut found: Vec<Proc> = Vec::new();
    let mut parents = vec![root];
    while let Some(parent) = parents.pop() {
        for p in all.iter().filter(|p| p.ppid == parent) {
            parents.push(p.pid);
            found.push(Proc {
                pid: p.pid,
                ppid: p.ppid,
                pgrp: p.pgrp,
                state: p.state,
                comm: p.comm.clone(),
            });
        }
    }
    found
}

/// Live (not zombie) members of process group `pgid`.
fn group_members(pgid: i32) -> Vec<Proc> {
    processes()
        .into_iter()
        .filter(|p| p.pgrp == pgid && p.state != 'Z')
        .collect()
}

/// Polls `done` every 20 ms until it holds or `timeout` passes; returns whether it held. For
/// conditions the kernel settles asynchronously (a killed process exiting), which offer no
/// readiness signal to wait on.
fn eventually(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the server's log contains `needle`: the log is read from its stderr by a
/// thread, so a line written before a response may land after it.
fn log_has(server: &Server, needle: &str) -> bool {
    server.wait_log(needle, 1)
}

/// The pid a script told on stderr (`pid=N`), from the server's log, once it is there.
fn script_pid(server: &Server, nth: usize) -> i32 {
    let mut pid = None;
    let found = eventually(GONE_TIMEOUT, || {
        pid = server
            .log()
            .match_indices("stderr: pid=")
            .nth(nth)
            .and_then(|(at, m)| {
                let rest = &server.log()[at + m.len()..];
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                digits.parse().ok()
            });
        pid.is_some()
    });
    assert!(found, "no stderr pid line in the log:\n{}", server.log());
    pid.unwrap()
}

// --- the basics

/// A GET with a query string and path info: the script sees RFC 3875's variables (PATH_INFO
/// decoded, QUERY_STRING raw, PATH_TRANSLATED from docroot=), nginx's own, and nothing of
/// appserver's environment but PATH.
#[test]
fn get_with_query_and_path_info() {
    let s = Setup::new(&[]);
    let resp = s.get("/cgi/env.sh/extra/caf%C3%A9?q=caf%C3%A9&x=%20&empty=");
    s.expect(&resp, 200);
    assert_eq!(resp.header("content-type"), Some("text/plain"));
    let (env, stdin) = script_env(&resp);
    let root = std::fs::canonicalize(s.docroot.root()).unwrap();
    assert_eq!(var(&env, "REQUEST_METHOD"), Some("GET"));
    assert_eq!(var(&env, "QUERY_STRING"), Some("q=caf%C3%A9&x=%20&empty="));
    assert_eq!(
        var(&env, "REQUEST_URI"),
        Some("/cgi/env.sh/extra/caf%C3%A9?q=caf%C3%A9&x=%20&empty=")
    );
    assert_eq!(var(&env, "SCRIPT_NAME"), Some("/cgi/env.sh"));
    assert_eq!(var(&env, "PATH_INFO"), Some("/extra/caf\u{e9}"));
    let translated = format!("{}/extra/caf\u{e9}", s.docroot.root().display());
    assert_eq!(var(&env, "PATH_TRANSLATED"), Some(translated.as_str()));
    let filename = root.join("cgi/env.sh").display().to_string();
    assert_eq!(var(&env, "SCRIPT_FILENAME"), Some(filename.as_str()));
    assert_eq!(var(&env, "GATEWAY_INTERFACE"), Some("CGI/1.1"));
    assert!(var(&env, "SERVER_SOFTWARE").is_some_and(|s| s.starts_with("nginx/")));
    assert_eq!(
        var(&env, "CONTENT_LENGTH"),
        Some(""),
        "set but empty on a GET"
    );
    assert_eq!(var(&env, "HTTP_HOST"), Some("localhost"));
    assert!(var(&env, "PATH").is_some(), "cgi_env=PATH by default");
    assert_eq!(var(&env, SECRET.0), None, "appserver's environment leaked");
    for name in ["HOME", "USER", "CARGO", "RUST_LOG", "LANG"] {
        assert_eq!(var(&env, name), None, "{name} leaked");
    }
    assert_eq!(stdin, "");
    // The script ran in its own directory.
    assert_eq!(
        var(&env, "PWD").map(PathBuf::from),
        Some(root.join("cgi")),
        "{env:?}"
    );
}

/// An 8 MiB upload reaches the script's stdin whole: its SHA-256 comes back. sha.sh sends
/// its header before it reads its input, and nginx stops sending a request body once it has
/// the response head: this is the test that the head waits for the end of the input.
#[test]
fn post_8mib_reaches_the_script() {
    let s = Setup::new(&[]);
    let mut body = vec![0; 8 << 20];
    PatternReader::new(body.len() as u64)
        .read_exact(&mut body)
        .unwrap();
    let resp = http_request(
        s.nginx.port(),
        "POST",
        "/cgi/sha.sh",
        &[("Content-Type", "application/octet-stream")],
        &body,
    );
    s.expect(&resp, 200);
    assert_eq!(resp.text().trim(), sha256_hex(&body));
}

/// A 32 MiB response streams out whole.
#[test]
fn response_32mib_streams_out() {
    let s = Setup::new(&[]);
    let n = 32 << 20;
    let resp = s.get(&format!("/cgi/zeros.sh?{n}"));
    s.expect(&resp, 200);
    assert_eq!(
        resp.header("content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(resp.body.len(), n);
    assert_eq!(sha256_hex(&resp.body), sha256_hex(&vec![0; n]));
}

/// What cannot run gets a status and a log line: missing 404, not executable or a
/// directory 403, NPH 502.
#[test]
fn refusals() {
    let s = Setup::new(&[]);
    s.expect(&s.get("/cgi/missing.sh"), 404);
    s.expect(&s.get("/cgi/missing.sh/more"), 404);
    s.expect(&s.get("/cgi/noexec.sh"), 403);
    s.expect(&s.get("/cgi/"), 403);
    s.expect(&s.get("/cgi/nph-hello.sh"), 502);
    for line in [
        "not found",
        "is not executable",
        "is a directory",
        "is an NPH script",
    ] {
        assert!(log_has(&s.server, line), "{line}: {}", s.logs());
    }
}

/// Redirects: Status 302 with Location, a bare absolute Location (302 too), and a local
/// Location, which runs that path as a GET instead (RFC 3875 §6.2.2).
#[test]
fn redirects() {
    let s = Setup::new(&[]);
    let resp = s.get("/cgi/redirect.sh?client");
    s.expect(&resp, 302);
    assert_eq!(resp.header("location"), Some("http://example.com/target"));
    let resp = s.get("/cgi/redirect.sh?bare");
    s.expect(&resp, 302);
    assert_eq!(resp.header("location"), Some("http://example.com/bare"));

    let resp = http_request(
        s.nginx.port(),
        "POST",
        "/cgi/redirect.sh?local",
        &[],
        b"abc",
    );
    s.expect(&resp, 200);
    assert_eq!(resp.header("location"), None);
    let (env, stdin) = script_env(&resp);
    assert_eq!(var(&env, "REQUEST_METHOD"), Some("GET"));
    assert_eq!(var(&env, "QUERY_STRING"), Some("from=local"));
    assert_eq!(var(&env, "SCRIPT_NAME"), Some("/cgi/env.sh"));
    assert_eq!(var(&env, "PATH_INFO"), Some("/redirected"));
    assert_eq!(
        var(&env, "REQUEST_URI"),
        Some("/cgi/env.sh/redirected?from=local")
    );
    assert_eq!(var(&env, "CONTENT_LENGTH"), None);
    assert_eq!(stdin, "", "a local redirect is a GET without body");
}

/// Three Set-Cookie header fields stay three, in order.
#[test]
fn three_cookies() {
    let s = Setup::new(&[]);
    let resp = s.get("/cgi/cookies.sh");
    s.expect(&resp, 200);
    assert_eq!(resp.headers_all("set-cookie"), ["a=1", "b=2", "c=3"]);
    assert_eq!(resp.text(), "cookies\n");
}

/// A script with a non-ASCII name, and non-ASCII path info.
#[test]
fn non_ascii_path() {
    let s = Setup::new(&[]);
    let resp = s.get("/cgi/caf%C3%A9.sh/%C3%BC%20x?caf%C3%A9");
    s.expect(&resp, 200);
    let (env, _) = script_env(&resp);
    assert_eq!(var(&env, "SCRIPT_NAME"), Some("/cgi/caf\u{e9}.sh"));
    assert_eq!(var(&env, "PATH_INFO"), Some("/\u{fc} x"));
    assert_eq!(var(&env, "QUERY_STRING"), Some("caf%C3%A9"));
}

/// The same script behind Apache over each protocol, as Apache sites configure them:
/// mod_proxy_fcgi sends `SCRIPT_FILENAME` as a `proxy:fcgi://` URL with the path info still
/// on it (and no PATH_INFO), which appserver splits off; over SCGI and AJP (`secret=`) no
/// SCRIPT_FILENAME arrives and `docroot=` walks the path. Every way, the script sees the same
/// split, the query raw, and its request body.
#[test]
fn apache_runs_the_script_over_fastcgi_scgi_and_ajp() {
    let docroot = Docroot::new();
    let root = docroot.root();
    let docroot_arg = format!("docroot={}", root.display());
    let real = std::fs::canonicalize(&root).unwrap();
    for protocol in ["fcgi", "scgi", "ajp"] {
        let mut cmd = TestCommand::appserver();
        cmd.args([
            "runfcgi",
            "app=cgi",
            "daemonize=false",
            "host=127.0.0.1",
            "port=0",
        ])
        .args([format!("protocol={protocol}"), docroot_arg.clone()]);
        if protocol == "ajp" {
            cmd.arg("secret=cgi-secret");
        }
        let server = cmd.start();
        let addr = server.listen().tcp();
        let apache = match protocol {
            "fcgi" => ApacheProxy::start(&format!(
                r#"ProxyPass "/cgi/" "fcgi://{addr}{}/cgi/""#,
                root.display()
            )),
            "scgi" => ApacheProxy::scgi(server.listen()),
            _ => ApacheProxy::ajp(server.listen(), "secret=cgi-secret"),
        };
        let logs = || format!("{}\n{}", server.log(), apache.error_log());
        let resp = http_request(
            apache.port(),
            "POST",
            "/cgi/env.sh/extra/caf%C3%A9?q=caf%C3%A9&x=%20",
            &[("Content-Type", "text/plain")],
            b"posted body",
        );
        assert_eq!(resp.status, 200, "{protocol}: {}\n{}", resp.text(), logs());
        let (env, stdin) = script_env(&resp);
        let filename = real.join("cgi/env.sh").display().to_string();
        for (name, want) in [
            ("REQUEST_METHOD", "POST"),
            ("SCRIPT_NAME", "/cgi/env.sh"),
            ("PATH_INFO", "/extra/caf\u{e9}"),
            ("QUERY_STRING", "q=caf%C3%A9&x=%20"),
            ("SCRIPT_FILENAME", &filename),
            ("CONTENT_LENGTH", "11"),
            ("CONTENT_TYPE", "text/plain"),
            ("GATEWAY_INTERFACE", "CGI/1.1"),
        ] {
            assert_eq!(var(&env, name), Some(want), "{protocol}: {name}\n{env:?}");
        }
        assert_eq!(stdin, "posted body", "{protocol}");
        let resp = http_get(apache.port(), "/cgi/missing.sh/x");
        assert_eq!(resp.status, 404, "{protocol}: {}\n{}", resp.text(), logs());
        // The script's own reason phrase reaches the client (SEND_HEADERS carries it in AJP).
        let resp = http_get(apache.port(), "/cgi/status.sh");
        assert_eq!(
            (resp.status, resp.reason.as_str()),
            (403, "Access Denied By Policy"),
            "{protocol}"
        );
    }
}

// --- safety

/// Nothing outside docroot= runs: not through a symlink, not through `..` in a
/// SCRIPT_FILENAME the web server built from the request, not through `..` in SCRIPT_NAME.
#[test]
fn docroot_escapes_are_403() {
    // `location = /raw` builds SCRIPT_FILENAME from a raw query argument, as a careless
    // config might: nginx normalizes `..` in paths, but not in arguments.
    let s = Setup::with_locations(&[], |root, pass| {
        format!(
            "        location = /raw {{\n\
             \x20           root {};\n\
             \x20           include /etc/nginx/fastcgi_params;\n\
             \x20           fastcgi_param SCRIPT_FILENAME $document_root/$arg_f;\n\
             \x20           fastcgi_pass {pass};\n\
             \x20       }}\n",
            root.display()
        )
    });
    s.expect(&s.get("/cgi/link.sh"), 403);
    s.expect(&s.get("/raw?f=cgi/hello.sh"), 200);
    s.expect(&s.get("/raw?f=cgi/../../outside/evil.sh"), 403);
    s.expect(&s.get("/raw?f=cgi/link.sh"), 403);

    // `..` in SCRIPT_NAME, which nginx never sends: straight to appserver.
    let params = cgi_params("GET", "/cgi/../../outside/evil.sh", &[]);
    let resp = fcgi_get(&mut Stream::connect(s.server.listen()), &params, false);
    assert_eq!(resp.status, 403, "{}", s.logs());

    assert!(!s.docroot.escaped(), "the script outside docroot ran");
    assert!(log_has(&s.server, "outside docroot"), "{}", s.logs());
    assert!(log_has(&s.server, "climbs out of docroot"), "{}", s.logs());
}

/// A script that sends no header within cgi_timeout= gets a 504, and its whole process
/// group (the script ignores SIGTERM, its background sleep does not) is gone.
#[test]
fn timeout_is_504_and_the_group_is_gone() {
    let s = Setup::new(&["cgi_timeout=1"]);
    let started = Instant::now();
    let resp = s.get("/cgi/hang.sh");
    s.expect(&resp, 504);
    assert!(started.elapsed() >= Duration::from_secs(1));
    let pgid = script_pid(&s.server, 0);
    assert!(
        eventually(GONE_TIMEOUT, || group_members(pgid).is_empty()),
        "still running: {:?}",
        group_members(pgid)
    );
    assert!(log_has(&s.server, "cgi_timeout=1s"), "{}", s.logs());
    let log = s.server.log();
    // Stderr lines are logged with the script and the request.
    let line = log.lines().find(|l| l.contains("stderr: pid=")).unwrap();
    assert!(
        line.contains("hang.sh") && line.contains("GET /cgi/hang.sh"),
        "{line}"
    );
}

/// httpoxy: a client's `Proxy:` header never becomes the script's HTTP_PROXY (nginx passes
/// it on; appserver drops it), while other headers arrive.
#[test]
fn proxy_header_never_reaches_the_script() {
    let s = Setup::new(&[]);
    let resp = http_request(
        s.nginx.port(),
        "GET",
        "/cgi/env.sh",
        &[("Proxy", "http://evil.example:3128"), ("X-Check", "1")],
        b"",
    );
    s.expect(&resp, 200);
    let (env, _) = script_env(&resp);
    assert_eq!(var(&env, "HTTP_X_CHECK"), Some("1"));
    assert_eq!(var(&env, "HTTP_PROXY"), None);
    assert!(!resp.text().contains("evil.example"));
}

/// A client that goes away mid-response takes the script's process group with it, and after
/// timeouts, aborts, redirects and plain runs not one zombie is left under the server.
#[test]
fn client_abort_kills_the_group_and_no_zombies_remain() {
    // Long enough that the client's hang-up, not the timeout, ends slow.sh on a loaded
    // machine (with 1 s the timeout could come first, and nginx then reset the client's
    // connection mid-read); hang.sh below still ends by it.
    let s = Setup::new(&["cgi_timeout=3"]);

    // Client abort: read the first line, then hang up.
    let mut stream = TcpStream::connect(("127.0.0.1", s.nginx.port())).unwrap();
    stream
        .write_all(b"GET /cgi/slow.sh HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    while line != "started\n" {
        line.clear();
        let n = reader
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("reading slow.sh's response: {e}\n{}", s.logs()));
        assert!(n > 0, "connection closed before the body: {}", s.logs());
    }
    drop(reader);
    let pgid = script_pid(&s.server, 0);
    assert!(
        eventually(GONE_TIMEOUT, || group_members(pgid).is_empty()),
        "still running after the client left: {:?}\n{}",
        group_members(pgid),
        s.logs()
    );

    // Everything else, a few times.
    for _ in 0..3 {
        s.expect(&s.get("/cgi/env.sh"), 200);
        s.expect(&s.get("/cgi/redirect.sh?local"), 200);
        s.expect(&s.get("/cgi/zeros.sh?100000"), 200);
        s.expect(&s.get("/cgi/missing.sh"), 404);
    }
    s.expect(&s.get("/cgi/hang.sh"), 504);

    let server = i32::try_from(s.server.pid()).unwrap();
    let zombies = || {
        descendants(server)
            .into_iter()
            .filter(|p| p.state == 'Z')
            .collect::<Vec<_>>()
    };
    assert!(
        eventually(GONE_TIMEOUT, || zombies().is_empty()),
        "zombies under the server: {:?}",
        zombies()
    );
    // And no script is left running either: only appserver's own processes remain.
    let left: Vec<Proc> = descendants(server)
        .into_iter()
        .filter(|p| p.comm != "appserver")
        .collect();
    assert!(left.is_empty(), "left running: {left:?}");
}

// --- git over smart HTTP

/// `git` with no user or system configuration and no proxy.
fn git(home: &Path, dir: &Path, args: &[&str]) -> String {
    let mut cmd = Command::new("git");
    cmd.args([
        "-c",
        "user.name=appserver",
        "-c",
        "user.email=test@appserver",
    ])
    .args(["-c", "init.defaultBranch=main", "-c", "protocol.version=2"])
    .args(args)
    .current_dir(dir)
    .env("HOME", home)
    .env("GIT_CONFIG_NOSYSTEM", "1")
    .env("GIT_TERMINAL_PROMPT", "0")
    .stdin(Stdio::null());
    for proxy in [
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
    ] {
        cmd.env_remove(proxy);
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("git {args:?}: {e}"));
    assert!(
        out.status.success(),
        "git {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `git clone` and `git push` through nginx → appserver app=cgi → git-http-backend, set up
/// the way fcgiwrap users do it: SCRIPT_FILENAME, GIT_PROJECT_ROOT and an empty
/// GIT_HTTP_EXPORT_ALL from fastcgi_param, which `cgi_vars=` adds to the allowlist.
#[test]
fn git_clone_and_push_through_git_http_backend() {
    let tmp = tempfile::tempdir().unwrap();
    let projects = tmp.path().join("projects");
    std::fs::create_dir(&projects).unwrap();
    git(
        tmp.path(),
        &projects,
        &["init", "--bare", "--quiet", "repo.git"],
    );
    git(
        tmp.path(),
        &projects.join("repo.git"),
        &["config", "http.receivepack", "true"],
    );

    let server = appserver(&["cgi_vars=GIT_PROJECT_ROOT,GIT_HTTP_EXPORT_ALL"]);
    let pass = server.listen().nginx_addr();
    let nginx = Nginx::start(
        "",
        &format!(
            "        location ~ ^/git(/.*)$ {{\n\
             \x20           include /etc/nginx/fastcgi_params;\n\
             \x20           fastcgi_param SCRIPT_FILENAME {GIT_HTTP_BACKEND};\n\
             \x20           fastcgi_param PATH_INFO $1;\n\
             \x20           fastcgi_param GIT_PROJECT_ROOT {};\n\
             \x20           fastcgi_param GIT_HTTP_EXPORT_ALL \"\";\n\
             \x20           fastcgi_pass {pass};\n\
             \x20       }}\n",
            projects.display()
        ),
    );
    let url = format!("http://127.0.0.1:{}/git/repo.git", nginx.port());
    let logs = || format!("{}\n{}", server.log(), nginx.error_log());

    // Clone the empty repository, commit a file big enough for a chunked push, push.
    git(tmp.path(), tmp.path(), &["clone", "--quiet", &url, "one"]);
    let one = tmp.path().join("one");
    let mut big = vec![0; 3 << 20];
    PatternReader::new(big.len() as u64)
        .read_exact(&mut big)
        .unwrap();
    // Make it incompressible enough that the pack stays above git's 1 MiB postBuffer.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    for b in big.iter_mut() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *b ^= state as u8;
    }
    std::fs::write(one.join("big.bin"), &big).unwrap();
    std::fs::write(one.join("README"), "pushed through appserver\n").unwrap();
    git(tmp.path(), &one, &["add", "."]);
    git(tmp.path(), &one, &["commit", "--quiet", "-m", "first"]);
    git(tmp.path(), &one, &["push", "--quiet", "origin", "main"]);

    // A fresh clone has it.
    git(tmp.path(), tmp.path(), &["clone", "--quiet", &url, "two"]);
    let two = tmp.path().join("two");
    assert_eq!(
        std::fs::read_to_string(two.join("README")).unwrap(),
        "pushed through appserver\n",
        "{}",
        logs()
    );
    assert_eq!(
        sha256_hex(&std::fs::read(two.join("big.bin")).unwrap()),
        sha256_hex(&big)
    );
    let head = git(tmp.path(), &two, &["log", "--format=%s", "-1"]);
    assert_eq!(head.trim(), "first");
}

// --- fcgiwrap, side by side

/// fcgiwrap on a unix socket, in a process group of its own (its prefork master does not
/// pass SIGTERM on to its children): stopped by signalling that group, by pid.
struct Fcgiwrap {
    child: Child,
    socket: PathBuf,
    _dir: TempDir,
}

impl Fcgiwrap {
    fn start(children: u32, path: &str) -> Fcgiwrap {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("fcgiwrap.sock");
        let child = Command::new(fcgiwrap_bin())
            .arg("-s")
            .arg(format!("unix:{}", socket.display()))
            .arg("-c")
            .arg(children.to_string())
            .env_clear()
            .env("PATH", path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn fcgiwrap");
        let mut wrap = Fcgiwrap {
            child,
            socket,
            _dir: dir,
        };
        // Ready once it accepts connections on its socket.
        let ready = eventually(Duration::from_secs(10), || {
            UnixStream::connect(&wrap.socket).is_ok()
        });
        if !ready {
            let status = wrap.child.try_wait();
            panic!(
                "fcgiwrap not accepting on {}: {status:?}",
                wrap.socket.display()
            );
        }
        wrap
    }
}

impl Drop for Fcgiwrap {
    fn drop(&mut self) {
        let group = Pid::from_raw(self.child.id() as i32);
        let _ = killpg(group, Signal::SIGTERM);
        if wait_timeout(&mut self.child, Duration::from_secs(5)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = killpg(group, Signal::SIGKILL);
    }
}

/// The fcgiwrap binary: on PATH, else `/usr/sbin/fcgiwrap` (Debian's place, not on a normal
/// user's PATH).
fn fcgiwrap_bin() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("fcgiwrap"))
            .find(|p| p.is_file())
    });
    let bin = on_path.unwrap_or_else(|| PathBuf::from("/usr/sbin/fcgiwrap"));
    assert!(
        bin.is_file(),
        "fcgiwrap not found on PATH or at /usr/sbin/fcgiwrap: run scripts/test, which \
         installs it (Debian package fcgiwrap)"
    );
    bin
}

/// One nginx, two backends: `X-Backend: fcgiwrap` picks fcgiwrap, anything else appserver.
/// Same location, same params (the classic fcgiwrap config, with SCRIPT_FILENAME), same
/// nginx, so the only difference a script can see is the gateway.
fn side_by_side(root: &Path, wrap: &Fcgiwrap, server: &Server) -> Nginx {
    Nginx::start(
        &format!(
            "    upstream fcgiwrap {{\n        server unix:{};\n    }}\n\
             \x20   upstream appserver {{\n        server {};\n    }}\n\
             \x20   map $http_x_backend $backend {{\n        default appserver;\n        \
             fcgiwrap fcgiwrap;\n    }}\n",
            wrap.socket.display(),
            server.listen().nginx_addr()
        ),
        &format!(
            "        location /cgi/ {{\n\
             \x20           root {};\n\
             \x20           include /etc/nginx/fastcgi_params;\n\
             \x20           fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name;\n\
             \x20           fastcgi_pass $backend;\n\
             \x20       }}\n",
            root.display()
        ),
    )
}

/// The same request through both gateways.
fn both(
    nginx: &Nginx,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (HttpResponse, HttpResponse) {
    let with = |backend: &str| {
        let mut all = vec![("X-Backend", backend)];
        all.extend_from_slice(headers);
        http_request(nginx.port(), method, path, &all, body)
    };
    (with("fcgiwrap"), with("appserver"))
}

/// Variables that differ between any two requests, or name the backend.
const PER_REQUEST: [&str; 2] = ["REMOTE_PORT", "HTTP_X_BACKEND"];

/// The same scripts behind the same nginx through fcgiwrap and through appserver: same
/// statuses, bodies and CGI variables, except for the differences docs/cgi.md lists, which
/// are asserted here as they are.
#[test]
fn differential_against_fcgiwrap() {
    let docroot = Docroot::new();
    let path = "/usr/local/bin:/usr/bin:/bin";
    let wrap = Fcgiwrap::start(1, path);
    // docroot= as a migration should add it: SCRIPT_FILENAME still picks the script, but
    // only inside the docroot, and local redirects can reach other scripts.
    let mut cmd = TestCommand::appserver();
    let socket = format!("socket={}", cmd.path("cgi.sock").display());
    let root = format!("docroot={}", docroot.root().display());
    cmd.args(["runfcgi", "app=cgi", "daemonize=false", &socket, &root])
        .env("PATH", path);
    let server = cmd.start();
    let nginx = side_by_side(&docroot.root(), &wrap, &server);
    let logs = || format!("{}\n{}", server.log(), nginx.error_log());

    let compare_env = |fw: &HttpResponse, app: &HttpResponse| {
        let (mut fw_env, fw_stdin) = script_env(fw);
        let (mut app_env, app_stdin) = script_env(app);
        for name in PER_REQUEST {
            assert!(fw_env.remove(name).is_some(), "{name}");
            assert!(app_env.remove(name).is_some(), "{name}");
        }
        // libfcgi, under fcgiwrap, tells the script its FastCGI role.
        assert_eq!(fw_env.remove("FCGI_ROLE").as_deref(), Some("RESPONDER"));
        assert_eq!(fw_env, app_env, "{}", logs());
        assert_eq!(fw_stdin, app_stdin);
    };

    // Same: a GET with a query, a POST with a body, cookies, redirects, a bigger body.
    let (fw, app) = both(&nginx, "GET", "/cgi/env.sh?q=caf%C3%A9&x=1", &[], b"");
    assert_eq!((fw.status, app.status), (200, 200), "{}", logs());
    compare_env(&fw, &app);

    let form = b"name=caf%C3%A9&x=1";
    let ct = [("Content-Type", "application/x-www-form-urlencoded")];
    let (fw, app) = both(&nginx, "POST", "/cgi/env.sh", &ct, form);
    assert_eq!((fw.status, app.status), (200, 200), "{}", logs());
    compare_env(&fw, &app);
    assert!(fw.text().ends_with("name=caf%C3%A9&x=1"));

    for path in [
        "/cgi/cookies.sh",
        "/cgi/redirect.sh?client",
        "/cgi/redirect.sh?bare",
        "/cgi/redirect.sh?nonsense",
        "/cgi/zeros.sh?1000000",
        "/cgi/zeros.sh?x",
        "/cgi/status.sh",
    ] {
        let (fw, app) = both(&nginx, "GET", path, &[], b"");
        assert_eq!(fw.status, app.status, "{path}\n{}", logs());
        // A bare Location gets nginx's own phrase through fcgiwrap ("Moved Temporarily") and
        // appserver's explicit `Status: 302 Found` otherwise; every phrase a script sends is
        // kept by both.
        if !path.ends_with("?bare") {
            assert_eq!(fw.reason, app.reason, "{path}");
        }
        if path == "/cgi/status.sh" {
            assert_eq!(app.reason, "Access Denied By Policy");
        }
        assert_eq!(fw.body, app.body, "{path}");
        for name in ["content-type", "location"] {
            assert_eq!(fw.header(name), app.header(name), "{path}: {name}");
        }
        assert_eq!(
            fw.headers_all("set-cookie"),
            app.headers_all("set-cookie"),
            "{path}"
        );
    }

    let (fw, app) = both(&nginx, "GET", "/cgi/caf%C3%A9.sh?caf%C3%A9", &[], b"");
    assert_eq!((fw.status, app.status), (200, 200), "{}", logs());
    compare_env(&fw, &app);

    // Different, on purpose (docs/cgi.md, "Differences from fcgiwrap").
    // 1. A missing script: fcgiwrap answers 403 for every failure to find one.
    let (fw, app) = both(&nginx, "GET", "/cgi/missing.sh", &[], b"");
    assert_eq!((fw.status, app.status), (403, 404));
    // 2. httpoxy: fcgiwrap passes nginx's HTTP_PROXY on.
    let proxy = [("Proxy", "http://evil.example:3128")];
    let (fw, app) = both(&nginx, "GET", "/cgi/env.sh", &proxy, b"");
    assert_eq!(
        var(&script_env(&fw).0, "HTTP_PROXY"),
        Some("http://evil.example:3128")
    );
    assert_eq!(var(&script_env(&app).0, "HTTP_PROXY"), None);
    // 3. A local Location: nginx turns fcgiwrap's into a 302; appserver runs the new path.
    let (fw, app) = both(&nginx, "GET", "/cgi/redirect.sh?local", &[], b"");
    assert_eq!((fw.status, app.status), (302, 200));
    assert_eq!(
        fw.header("location"),
        Some("/cgi/env.sh/redirected?from=local")
    );
    // 4. NPH: fcgiwrap runs it like any script; appserver refuses it.
    let (fw, app) = both(&nginx, "GET", "/cgi/nph-hello.sh", &[], b"");
    assert_eq!((fw.status, app.status), (200, 502));
}

// --- throughput

/// Requests per second `wrk` measures against `url` with `header`.
fn wrk(url: &str, header: &str) -> f64 {
    let out = Command::new("wrk")
        .args(["-t2", "-c8", "-d5s", "-H", header, url])
        .output()
        .expect("wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    let rate = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|r| r.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in wrk output:\n{text}"));
    let errors = text.lines().find(|l| l.contains("Non-2xx"));
    assert!(errors.is_none(), "{url} {header}: {text}");
    rate
}

/// fcgiwrap against appserver, same script, same nginx, 8 workers each, same run:
/// `cargo test --release --test tests cgi::throughput -- --ignored --nocapture`.
/// The figures go to docs/cgi.md.
#[test]
#[ignore = "a benchmark: run by hand, see docs/cgi.md"]
fn throughput_against_fcgiwrap() {
    let docroot = Docroot::new();
    let path = "/usr/local/bin:/usr/bin:/bin";
    let wrap = Fcgiwrap::start(8, path);
    for method in [
        &[
            "method=prefork",
            "maxchildren=8",
            "minspare=8",
            "maxspare=8",
        ][..],
        &["method=threaded", "maxchildren=8"][..],
    ] {
        let mut cmd = TestCommand::appserver();
        let socket = format!("socket={}", cmd.path("cgi.sock").display());
        cmd.args(["runfcgi", "app=cgi", "daemonize=false", &socket])
            .args(method)
            .env("PATH", path)
            .env("APPSERVER_LOG", "warn");
        let server = cmd.start();
        let nginx = side_by_side(&docroot.root(), &wrap, &server);
        let url = format!("http://127.0.0.1:{}/cgi/hello.sh", nginx.port());
        // Warm up both, then alternate.
        wrk(&url, "X-Backend: fcgiwrap");
        wrk(&url, "X-Backend: appserver");
        let fw = wrk(&url, "X-Backend: fcgiwrap");
        let app = wrk(&url, "X-Backend: appserver");
        println!(
            "hello.sh, wrk -t2 -c8 -d5s: fcgiwrap -c 8: {fw:.0} req/s; appserver {}: {app:.0} req/s",
            method.join(" ")
        );
    }
}

/// Where the environment differs from fcgiwrap's on purpose (issue 12, finding 2): a peer
/// that speaks FastCGI directly (no nginx to forward only `HTTP_*` names) sends
/// `SHELLOPTS=xtrace` and `PS4='$(touch ran)'` to a bash script. fcgiwrap passes every param
/// on, so bash runs the command; appserver passes only its allowlist.
#[test]
fn hostile_params_run_code_under_fcgiwrap_and_not_under_appserver() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("env.sh");
    std::fs::write(
        &script,
        "#!/bin/bash\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\nenv\n",
    )
    .unwrap();
    chmod(&script, 0o755);
    let marker = dir.path().join("ran");
    let ps4 = format!("$(touch {})", marker.display());
    let filename = script.display().to_string();
    let extra = [
        ("SCRIPT_FILENAME", filename.as_str()),
        ("SHELLOPTS", "xtrace"),
        ("PS4", ps4.as_str()),
        ("PERL5OPT", "-Mhostile"),
    ];
    let params = cgi_params("GET", "/env.sh", &extra);

    let wrap = Fcgiwrap::start(1, "/usr/bin:/bin");
    let mut stream = Stream::Unix(UnixStream::connect(&wrap.socket).unwrap());
    let resp = fcgi_get(&mut stream, &params, false);
    assert!(
        resp.text().contains("PERL5OPT=-Mhostile"),
        "{}",
        resp.text()
    );
    // bash took SHELLOPTS from the peer: xtrace is on.
    assert!(
        resp.text()
            .lines()
            .any(|l| l.starts_with("SHELLOPTS=") && l.contains("xtrace")),
        "{}",
        resp.text()
    );
    // bash ignores PS4 from the environment when it runs as root; as anyone else it runs
    // the command in it.
    if !nix::unistd::geteuid().is_root() {
        assert!(
            eventually(GONE_TIMEOUT, || marker.exists()),
            "fcgiwrap's bash did not run PS4"
        );
        std::fs::remove_file(&marker).unwrap();
    }

    let root = format!("docroot={}", dir.path().display());
    let server = appserver(&[&root]);
    let mut stream = Stream::connect(server.listen());
    let resp = fcgi_get(&mut stream, &params, false);
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(!resp.text().contains("PERL5OPT"), "{}", resp.text());
    assert!(!resp.text().contains("SHELLOPTS"), "{}", resp.text());
    assert!(!marker.exists(), "appserver's script ran PS4");
    assert!(
        !server.log().contains("stderr: "),
        "xtrace: {}",
        server.log()
    );
}
