//! `app=wsgi` (cargo feature `wsgi`): the real `appserver` binary serving a real Django
//! project (tests/data/django) from a virtualenv with a pinned Django LTS, behind real web
//! servers, with every response also passing through `wsgiref.validate.validator`.
//!
//! The virtualenv is made by `scripts/test` (`APPSERVER_TEST_VENV`, else `target/wsgi-venv`);
//! a missing one fails these tests, it never skips them. The site's database and collected
//! static files are made once per test run under `CARGO_TARGET_TMPDIR`.
//!
//! The case set behind each front end: a page with a reversed URL (the script-name rule), the
//! admin login (CSRF-protected form POST and session cookie), a 3 MiB upload spooled to disk
//! by Django and checked by sha256, a `StreamingHttpResponse` whose chunks arrive over time,
//! a `FileResponse`, a static file served by the web server's alias, and a view that raises
//! (500, the traceback in appserver's log, naming the request).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::util::apache_proxy::ApacheProxy;
use crate::util::cases::Stack;
use crate::util::client::{http_get, http_request, pattern_bytes, sha256_hex};
use crate::util::command::{peak_rss_of, rss_of, Server, TestCommand};
use crate::util::webserver::Nginx;

/// The admin user the site is created with.
const ADMIN: (&str, &str) = ("admin", "appserver-test-password");

/// The Django project.
fn project() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/django"))
}

/// The virtualenv with Django in it; a missing one fails the test.
pub(crate) fn venv() -> PathBuf {
    let venv = std::env::var_os("APPSERVER_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/wsgi-venv")));
    let ok = Command::new(venv.join("bin/python"))
        .args(["-c", "import django"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "no virtualenv with Django at {} (APPSERVER_TEST_VENV): run scripts/test, which makes it",
        venv.display()
    );
    venv
}

/// The site's data directory (database with an admin user, collected static files), made
/// once per test run.
fn site_data() -> &'static Path {
    static DATA: OnceLock<PathBuf> = OnceLock::new();
    DATA.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("django-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let python = venv().join("bin/python");
        for args in [
            &["migrate", "--noinput", "-v0"][..],
            &["collectstatic", "--noinput", "-v0"],
            &[
                "createsuperuser",
                "--noinput",
                "--username",
                ADMIN.0,
                "--email",
                "a@example.com",
            ],
        ] {
            let out = Command::new(&python)
                .arg(project().join("manage.py"))
                .args(args)
                .env("APPSERVER_TEST_DATA", &dir)
                .env("DJANGO_SUPERUSER_PASSWORD", ADMIN.1)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "manage.py {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // Apache's workers (www-data when the tests run as root) read the static files.
        let _ = Command::new("chmod")
            .args(["-R", "a+rX"])
            .arg(&dir)
            .status();
        dir
    })
}

/// appserver serving the Django site over `protocol` on loopback TCP, plus `extra` options.
pub(crate) fn django_server(protocol: &str, extra: &[&str]) -> Server {
    let mut cmd = TestCommand::appserver();
    cmd.args([
        "runfcgi",
        "app=wsgi",
        "module=mysite.wsgi",
        "daemonize=false",
        "host=127.0.0.1",
        "port=0",
        &format!("protocol={protocol}"),
        &format!("pythonpath={}", project().display()),
        &format!("virtualenv={}", venv().display()),
    ]);
    cmd.args(extra);
    cmd.env("APPSERVER_TEST_DATA", site_data().to_str().unwrap())
        .env("APPSERVER_TEST_VALIDATE", "1");
    cmd.start()
}

/// nginx's `location /` passing to appserver with the stock `fastcgi_params`.
fn nginx_fcgi_location(server: &Server) -> String {
    format!(
        "        location / {{\n            include /etc/nginx/fastcgi_params;\n            fastcgi_pass {};\n        }}\n",
        server.listen().nginx_addr()
    )
}

/// nginx's location for the collected static files.
fn nginx_static() -> String {
    format!(
        "        location /static/ {{\n            alias {}/static/;\n        }}\n",
        site_data().display()
    )
}

fn nginx_fcgi(extra: &[&str]) -> Stack {
    let server = django_server("fcgi", extra);
    let location = nginx_static() + &nginx_fcgi_location(&server);
    let front = Nginx::start("", &location).into();
    Stack { server, front }
}

fn nginx_scgi() -> Stack {
    let server = django_server("scgi", &[]);
    let location = format!(
        "{}        location / {{\n            include /etc/nginx/scgi_params;\n            scgi_pass {};\n        }}\n",
        nginx_static(),
        server.listen().nginx_addr()
    );
    let front = Nginx::start("", &location).into();
    Stack { server, front }
}

/// Apache with the static alias and `proxy` (a `ProxyPass` line) for the rest.
fn apache(server: Server, proxy: &str) -> Stack {
    let conf = format!(
        "LoadModule alias_module /usr/lib/apache2/modules/mod_alias.so\n\
         ProxyPass \"/static/\" \"!\"\n\
         Alias \"/static/\" \"{data}/static/\"\n\
         <Directory \"{data}/static\">\n    Require all granted\n</Directory>\n\
         {proxy}\n",
        data = site_data().display(),
    );
    let front = ApacheProxy::start(&conf).into();
    Stack { server, front }
}

fn apache_proxy(protocol: &str, scheme: &str, options: &[&str], params: &str) -> Stack {
    let server = django_server(protocol, options);
    let addr = server.listen().tcp();
    apache(
        server,
        &format!("ProxyPass \"/\" \"{scheme}://{addr}/\" {params}"),
    )
}

/// Every Django case, through `stack`, whose web server serves the collected static files
/// under `static_url`.
fn django_cases(stack: &Stack) {
    let logs = || stack.logs();
    django_cases_at(stack.port(), "/static/", &logs);
}

/// The Django cases through a web server on `port`; `logs` shows appserver's and the web
/// server's logs (where the failing view's traceback must appear).
fn django_cases_at(port: u16, static_url: &str, logs: &dyn Fn() -> String) {
    let ctx = logs;

    // A reversed URL: the script name is empty at the root.
    let resp = http_get(port, "/");
    assert_eq!(resp.status, 200, "{}", ctx());
    assert!(
        resp.text().contains("article=/blog/hello/\n"),
        "{}\n{}",
        resp.text(),
        ctx()
    );
    let resp = http_get(port, "/blog/caf%C3%A9/");
    assert_eq!(
        resp.status,
        404,
        "a non-slug path is Django's 404: {}",
        resp.text()
    );
    let resp = http_get(port, "/blog/good-slug/");
    assert_eq!(resp.text(), "article good-slug at /blog/good-slug/\n");

    admin_login(port, ctx);

    // An upload over FILE_UPLOAD_MAX_MEMORY_SIZE: Django spools it to disk.
    let data = pattern_bytes(3 * 1024 * 1024 + 17);
    let boundary = "appserverBoundary7MA4YWxkTrZu0gW";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.bin\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(&data);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let ct = format!("multipart/form-data; boundary={boundary}");
    let resp = http_request(port, "POST", "/upload/", &[("Content-Type", &ct)], &body);
    assert_eq!(resp.status, 200, "{}\n{}", resp.text(), ctx());
    let text = resp.text();
    assert!(
        text.contains(&format!("\"sha256\": \"{}\"", sha256_hex(&data))),
        "{text}"
    );
    assert!(
        text.contains(&format!("\"size\": {}", data.len())),
        "{text}"
    );
    assert!(text.contains("\"on_disk\": true"), "{text}");

    streaming(port, ctx);

    // FileResponse (through wsgi.file_wrapper) and the same file as a static file served by
    // the web server: Django's headers tell them apart.
    let css = std::fs::read(project().join("mysite/static/mysite/site.css")).unwrap();
    let resp = http_get(port, "/file/");
    assert_eq!((resp.status, &resp.body), (200, &css), "{}", ctx());
    assert_eq!(resp.header("x-frame-options"), Some("DENY"));
    let resp = http_get(port, &format!("{static_url}mysite/site.css"));
    assert_eq!((resp.status, &resp.body), (200, &css), "{}", ctx());
    assert_eq!(
        resp.header("x-frame-options"),
        None,
        "static files bypass Django"
    );
    let resp = http_get(port, &format!("{static_url}admin/css/base.css"));
    assert_eq!(resp.status, 200, "collectstatic copied the admin's files");

    // A view that raises: Django's own 500 page, its traceback in the log (Django logs it
    // to stderr, appserver's log).
    let resp = http_get(port, "/raise/");
    assert_eq!(resp.status, 500, "{}", ctx());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ctx().contains("RuntimeError: this view fails on purpose") {
        assert!(
            Instant::now() < deadline,
            "no traceback in the log:\n{}",
            ctx()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The admin login: GET the form (CSRF cookie and token), POST it, follow to the index with
/// the session cookie.
fn admin_login(port: u16, logs: &dyn Fn() -> String) {
    let form = http_get(port, "/admin/login/?next=/admin/");
    assert_eq!(form.status, 200, "{}", logs());
    let cookie = form
        .headers_all("set-cookie")
        .into_iter()
        .find_map(|c| c.strip_prefix("csrftoken="))
        .and_then(|c| c.split(';').next())
        .expect("csrftoken cookie")
        .to_owned();
    let html = form.text();
    let at = html
        .find("name=\"csrfmiddlewaretoken\" value=\"")
        .expect("csrf token in form")
        + 34;
    let token = &html[at..at + html[at..].find('"').unwrap()];
    let body = format!(
        "csrfmiddlewaretoken={token}&username={}&password={}&next=%2Fadmin%2F",
        ADMIN.0, ADMIN.1
    );
    let resp = http_request(
        port,
        "POST",
        "/admin/login/?next=/admin/",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Cookie", &format!("csrftoken={cookie}")),
        ],
        body.as_bytes(),
    );
    assert_eq!(
        resp.status,
        302,
        "login refused: {}\n{}",
        resp.text(),
        logs()
    );
    assert_eq!(resp.header("location"), Some("/admin/"));
    let session = resp
        .headers_all("set-cookie")
        .into_iter()
        .find_map(|c| c.strip_prefix("sessionid="))
        .and_then(|c| c.split(';').next())
        .expect("session cookie")
        .to_owned();
    let index = http_request(
        port,
        "GET",
        "/admin/",
        &[(
            "Cookie",
            &format!("csrftoken={cookie}; sessionid={session}"),
        )],
        b"",
    );
    assert_eq!(index.status, 200, "{}", logs());
    assert!(
        index.text().contains("Site administration"),
        "{}",
        index.text()
    );

    // Without the token: Django's CSRF protection answers 403.
    let resp = http_request(
        port,
        "POST",
        "/admin/login/",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"username=admin&password=x",
    );
    assert_eq!(resp.status, 403);
}

/// The streaming view's four chunks, 0.3 s apart, reach the client as they are made: the
/// first arrives well before the last is produced.
fn streaming(port: u16, logs: &dyn Fn() -> String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET /stream/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let started = Instant::now();
    let mut seen = Vec::new();
    let mut first_chunk = None;
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
        if first_chunk.is_none() && String::from_utf8_lossy(&seen).contains("chunk 0 at") {
            first_chunk = Some(started.elapsed());
        }
    }
    let total = started.elapsed();
    let text = String::from_utf8_lossy(&seen);
    assert!(text.contains("chunk 3 at"), "{text}\n{}", logs());
    let first = first_chunk.unwrap();
    assert!(
        total >= Duration::from_millis(900) && first < total - Duration::from_millis(500),
        "chunks did not arrive over time: first after {first:?}, all after {total:?}"
    );
}

#[test]
fn django_behind_nginx_fastcgi() {
    django_cases(&nginx_fcgi(&["method=threaded"]));
}

#[test]
fn django_behind_nginx_fastcgi_prefork() {
    django_cases(&nginx_fcgi(&[
        "method=prefork",
        "maxchildren=3",
        "minspare=2",
        "maxspare=3",
    ]));
}

#[test]
fn django_behind_nginx_scgi() {
    django_cases(&nginx_scgi());
}

#[test]
fn django_behind_apache_proxy_fcgi() {
    django_cases(&apache_proxy("fcgi", "fcgi", &[], "flushpackets=on"));
}

#[test]
fn django_behind_apache_proxy_scgi() {
    django_cases(&apache_proxy("scgi", "scgi", &[], ""));
}

#[test]
fn django_behind_apache_proxy_ajp_with_secret() {
    django_cases(&apache_proxy(
        "ajp",
        "ajp",
        &["secret=s3cret-for-tests"],
        "secret=s3cret-for-tests flushpackets=on",
    ));
}

/// Mounted under a prefix: appserver's `script_name=` (FORCE_SCRIPT_NAME) makes Django's
/// reversed URLs carry it.
#[test]
fn django_under_a_prefix_reverses_urls_with_it() {
    let server = django_server("fcgi", &["script_name=/site"]);
    let location = format!(
        "        location /site/ {{\n            include /etc/nginx/fastcgi_params;\n            fastcgi_pass {};\n        }}\n",
        server.listen().nginx_addr()
    );
    let stack = Stack {
        server,
        front: Nginx::start("", &location).into(),
    };
    let resp = http_get(stack.port(), "/site/");
    assert_eq!(resp.status, 200, "{}", stack.logs());
    let text = resp.text();
    assert!(text.contains("article=/site/blog/hello/\n"), "{text}");
    assert!(
        text.contains("script_name=/site\n") && text.contains("path_info=/\n"),
        "{text}"
    );
    let resp = http_get(stack.port(), "/site/blog/x/");
    assert_eq!(resp.text(), "article x at /site/blog/x/\n");
}

/// appserver serving `testapps:<callable>` (tests/data/wsgi, stdlib only) with `extra`
/// options and environment.
fn testapp(callable: &str, extra: &[&str], env: &[(&str, &str)]) -> TestCommand {
    let mut cmd = TestCommand::appserver();
    cmd.args([
        "runfcgi",
        "app=wsgi",
        &format!("module=testapps:{callable}"),
        "daemonize=false",
        "host=127.0.0.1",
        "port=0",
        &format!(
            "pythonpath={}",
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/wsgi")
        ),
    ]);
    cmd.args(extra);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// `GET /` straight to appserver over FastCGI (no web server): the response body.
fn fcgi_get_root(server: &Server) -> String {
    let mut stream = crate::util::client::Stream::connect(server.listen());
    let params = crate::util::client::cgi_params("GET", "/", &[]);
    crate::util::client::fcgi_get(&mut stream, &params, false).text()
}

/// appserver serving `liveapp:application` from `dir` (a module the test rewrites).
fn liveapp_server(dir: &Path, extra: &[&str]) -> Server {
    let mut cmd = TestCommand::appserver();
    cmd.args([
        "runfcgi",
        "app=wsgi",
        "module=liveapp",
        "daemonize=false",
        "host=127.0.0.1",
        "port=0",
        &format!("pythonpath={}", dir.display()),
    ]);
    cmd.args(extra);
    cmd.start()
}

/// `./manage.py runfcgi` (python/appserver_django) fills in app=, module=, pythonpath= and
/// virtualenv= and execs appserver: the process Django started is the server.
#[test]
fn manage_py_runfcgi_execs_appserver() {
    let mut cmd = TestCommand::new(venv().join("bin/python"));
    cmd.arg(project().join("manage.py")).args([
        "runfcgi",
        "method=threaded",
        "host=127.0.0.1",
        "port=0",
        "daemonize=false",
    ]);
    cmd.env(
        "APPSERVER_BIN",
        crate::util::command::appserver_bin().to_str().unwrap(),
    )
    .env("APPSERVER_TEST_DATA", site_data().to_str().unwrap());
    let server = cmd.start();
    assert!(
        server
            .ready_line()
            .ends_with(&format!("pid={}", server.pid())),
        "not exec'd in place: {}",
        server.ready_line()
    );
    let front: crate::util::webserver::WebServer =
        Nginx::start("", &nginx_fcgi_location(&server)).into();
    let stack = Stack { server, front };
    let resp = http_get(stack.port(), "/");
    assert_eq!(resp.status, 200, "{}", stack.logs());
    assert!(
        resp.text().contains("article=/blog/hello/"),
        "{}",
        resp.text()
    );
}

/// A module that cannot be imported stops the start with its traceback and exit status 1,
/// in the threaded server and in the prefork master (whose workers cannot start).
#[test]
fn an_import_error_stops_the_start_with_the_traceback() {
    for method in ["threaded", "prefork"] {
        let out = testapp(
            "hello",
            &[&format!("method={method}")],
            &[("APPSERVER_TEST_IMPORT_FAILS", "1")],
        )
        .output(Duration::from_secs(60));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{method}: {stderr}");
        assert!(
            stderr.contains("Traceback (most recent call last)")
                && stderr.contains("ImportError: this app cannot be imported (on purpose)"),
            "{method}: {stderr}"
        );
        assert!(!stderr.contains("ready:"), "{method}: {stderr}");
    }
}

/// preload=true imports in the master and runs the interpreter's fork hooks in every
/// worker: `os.register_at_fork` handlers run, and `random` is reseeded per worker.
#[test]
fn preload_runs_the_fork_hooks_in_each_worker() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("forks.log");
    let server = testapp(
        "hello",
        &[
            "method=prefork",
            "preload=true",
            "minspare=3",
            "maxspare=3",
            "maxchildren=3",
        ],
        &[("APPSERVER_TEST_FORK_LOG", log.to_str().unwrap())],
    )
    .start();
    let deadline = Instant::now() + Duration::from_secs(20);
    let lines = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        if lines.len() >= 3 || Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(lines.len(), 3, "{lines:?}\n{}", server.log());
    let pids: std::collections::BTreeSet<&str> =
        lines.iter().filter_map(|l| l.split(' ').next()).collect();
    let randoms: std::collections::BTreeSet<&str> =
        lines.iter().filter_map(|l| l.split(' ').nth(1)).collect();
    assert_eq!((pids.len(), randoms.len()), (3, 3), "{lines:?}");
    assert!(!pids.contains(server.pid().to_string().as_str()));
}

/// preload=true refuses an app whose import started a thread: a forked worker would not
/// have it.
#[test]
fn preload_refuses_an_import_that_starts_threads() {
    let out = testapp(
        "hello",
        &["method=prefork", "preload=true"],
        &[("APPSERVER_TEST_IMPORT_THREAD", "1")],
    )
    .output(Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("started 1 Python threads"), "{stderr}");
}

/// Python installs no signal handler: SIGINT is appserver's graceful stop, also once the app
/// has imported `signal` (which would otherwise install Python's KeyboardInterrupt handler).
#[test]
fn sigint_stops_gracefully_with_python_loaded() {
    for method in ["threaded", "prefork"] {
        let mut server = testapp("environ_app", &[&format!("method={method}")], &[]).start();
        let mut stream = crate::util::client::Stream::connect(server.listen());
        let params = crate::util::client::cgi_params("GET", "/", &[]);
        let resp = crate::util::client::fcgi_get(&mut stream, &params, false);
        assert!(
            resp.text().contains("<Handlers.SIG_DFL: 0>"),
            "{}",
            resp.text()
        );
        server.signal(nix::sys::signal::Signal::SIGINT);
        let status = server.wait_exit(Duration::from_secs(30)).expect("stopped");
        assert!(status.success(), "{method}: {status:?}\n{}", server.log());
        assert!(
            !server.log().contains("KeyboardInterrupt"),
            "{}",
            server.log()
        );
    }
}

/// An error after the head aborts the response: appserver closes the connection without
/// END_REQUEST / END_RESPONSE, never ending the response as if it were whole. What each front
/// end then passes on to the client (a chunked body without its last chunk, i.e. a truncated
/// response the client can tell from a complete one) is pinned here and in docs/wsgi.md:
/// SCGI ends every response by closing, so no front end can tell there; nginx tells a
/// premature FastCGI close only with `fastcgi_keep_conn on` (without it, the close is its end
/// of the response too); Apache tells it over FastCGI and AJP.
#[test]
fn an_error_after_the_head_truncates_the_response_at_every_front_end() {
    use crate::util::webserver::{FcgiPass, WebServer};
    type Front = fn(&crate::util::command::Listen) -> WebServer;
    let nginx_keep: Front = |l| Nginx::fastcgi(l, FcgiPass::KeepConn).into();
    let nginx_close: Front = |l| Nginx::fastcgi(l, FcgiPass::Close).into();
    let nginx_scgi: Front = |l| {
        let location = crate::scgi::NGINX_SCGI_LOCATION.replace("@ADDR@", &l.nginx_addr());
        Nginx::start("", &location).into()
    };
    let apache_fcgi: Front = |l| ApacheProxy::fcgi(l).into();
    let apache_scgi: Front = |l| ApacheProxy::scgi(l).into();
    let apache_ajp: Front = |l| ApacheProxy::ajp(l, "").into();
    // (front end, protocol, how it starts, whether the client can tell)
    let fronts: [(&str, &str, Front, bool); 6] = [
        ("nginx fastcgi_keep_conn", "fcgi", nginx_keep, true),
        ("nginx fastcgi", "fcgi", nginx_close, false),
        ("nginx scgi", "scgi", nginx_scgi, false),
        ("apache fcgi", "fcgi", apache_fcgi, true),
        ("apache scgi", "scgi", apache_scgi, false),
        ("apache ajp", "ajp", apache_ajp, true),
    ];
    let mut seen = Vec::new();
    for (name, protocol, front, _) in fronts {
        let server = testapp("exc_after_head", &[&format!("protocol={protocol}")], &[]).start();
        let front = front(server.listen());
        let mut s = TcpStream::connect(("127.0.0.1", front.port())).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        let text = String::from_utf8_lossy(&raw);
        let logs = crate::util::cases::logs(&server, &front);
        assert!(text.starts_with("HTTP/1.1 200"), "{name}: {text}\n{logs}");
        // "partial" went out before the error, but whether it reaches the client before the
        // close depends on when the engine wrote it: only what follows the error is pinned.
        assert!(!text.contains("never"), "{name}: {text}\n{logs}");
        assert!(
            server.wait_log("ValueError: boom after head", 1),
            "{name}: {}",
            server.log()
        );
        // Truncated: the chunked body lacks its last chunk.
        seen.push((name, !text.ends_with("0\r\n\r\n")));
    }
    let expected: Vec<(&str, bool)> = fronts.iter().map(|f| (f.0, f.3)).collect();
    assert_eq!(
        seen, expected,
        "(front end, client sees a truncated response)"
    );
}

/// The document's lighttpd setup as written (tests/data/seed/lighttpd.conf: `fastcgi.server`
/// on a unix socket, everything rewritten onto `/mysite.fcgi` except `/media`, which lighttpd
/// serves from the collected static files) in front of Django under prefork.
#[test]
fn django_behind_the_documents_lighttpd_setup() {
    let mut cmd = TestCommand::appserver();
    let socket = cmd.path("mysite.sock");
    cmd.args([
        "runfcgi",
        "app=wsgi",
        "module=mysite.wsgi",
        "daemonize=false",
        "method=prefork",
        &format!("socket={}", socket.display()),
        &format!("pythonpath={}", project().display()),
        &format!("virtualenv={}", venv().display()),
    ]);
    cmd.env("APPSERVER_TEST_DATA", site_data().to_str().unwrap())
        .env("APPSERVER_TEST_VALIDATE", "1");
    let server = cmd.start();
    let docroot = tempfile::tempdir().unwrap();
    let front = crate::seed::lighttpd(|dir| {
        include_str!("data/seed/lighttpd.conf")
            .replace("@DIR@", &dir.display().to_string())
            .replace("@DOCROOT@", &docroot.path().display().to_string())
            .replace("@SOCKET@", &socket.display().to_string())
            .replace("@MEDIA@", &site_data().join("static").display().to_string())
            // lighttpd buffers a whole response before sending it unless told to stream,
            // which a site with StreamingHttpResponse views sets (docs/wsgi.md).
            + "server.stream-response-body = 2\n"
    });
    let logs = || crate::util::cases::logs(&server, &front);
    django_cases_at(front.port(), "/media/", &logs);
}

/// lighttpd spawning appserver itself (`bin-path`, the listener on fd 0), mounted at
/// `/mysite`: Django's reversed URLs carry the mount lighttpd sends as SCRIPT_NAME.
#[test]
fn django_spawned_by_lighttpd_bin_path_under_a_mount() {
    let command = format!(
        "/usr/bin/env APPSERVER_TEST_DATA={} APPSERVER_TEST_VALIDATE=1 {} runfcgi app=wsgi \
         module=mysite.wsgi pythonpath={} virtualenv={} method=prefork",
        site_data().display(),
        crate::util::command::appserver_bin().display(),
        project().display(),
        venv().display()
    );
    let front = crate::seed::lighttpd(|dir| {
        std::fs::create_dir_all(dir.join("htdocs")).unwrap();
        include_str!("data/lighttpd-bin-path.conf")
            .replace("@DIR@", &dir.display().to_string())
            .replace("@COMMAND@", &command)
    });
    let resp = http_get(front.port(), "/mysite/");
    assert_eq!(resp.status, 200, "{}", front.error_log());
    assert!(
        resp.text().contains("article=/mysite/blog/hello/\n"),
        "{}",
        resp.text()
    );
    let resp = http_get(front.port(), "/mysite/blog/x/");
    assert_eq!(
        resp.text(),
        "article x at /mysite/blog/x/\n",
        "{}",
        front.error_log()
    );
}

/// Apache mod_fcgid with the document's `.htaccess`: mod_fcgid spawns `site.fcgi`, which
/// execs appserver serving Django (as Apache's user when the tests run as root).
#[test]
fn django_spawned_by_mod_fcgid_with_the_documents_htaccess() {
    let (front, _site) = crate::process::apache_fcgid_wrapper(false, |bin| {
        format!(
            "#!/bin/sh\nexport APPSERVER_TEST_DATA={} APPSERVER_TEST_VALIDATE=1\n\
             exec {} runfcgi app=wsgi module=mysite.wsgi pythonpath={} virtualenv={} \
             method=prefork daemonize=false\n",
            site_data().display(),
            bin.display(),
            project().display(),
            venv().display()
        )
    });
    let resp = http_get(front.port(), "/");
    assert_eq!(resp.status, 200, "{}", front.error_log());
    // The rewrite onto site.fcgi does not leak: the site is mounted at the root.
    assert!(
        resp.text().contains("article=/blog/hello/\n"),
        "{}",
        resp.text()
    );
    let resp = http_get(front.port(), "/blog/x/?q=1");
    assert_eq!(
        resp.text(),
        "article x at /blog/x/\n",
        "{}",
        front.error_log()
    );
    let css = std::fs::read(project().join("mysite/static/mysite/site.css")).unwrap();
    let resp = http_get(front.port(), "/file/");
    assert_eq!(
        (resp.status, &resp.body),
        (200, &css),
        "{}",
        front.error_log()
    );
}

/// A worker that dies inside C code (a segfault, as a broken extension would) is logged and
/// replaced; the server goes on serving.
#[test]
fn a_worker_that_dies_in_c_is_replaced() {
    let server = testapp(
        "crash",
        &[
            "method=prefork",
            "maxchildren=2",
            "minspare=2",
            "maxspare=2",
        ],
        &[],
    )
    .start();
    let front: crate::util::webserver::WebServer =
        Nginx::fastcgi(server.listen(), crate::util::webserver::FcgiPass::Close).into();
    let resp = http_get(front.port(), "/");
    assert_eq!(resp.status, 502, "nginx saw the worker die mid-request");
    assert!(
        server.wait_log("SIGSEGV", 1),
        "no log of the crash:\n{}",
        server.log()
    );
    assert!(
        server.wait_log("starting a replacement", 1),
        "{}",
        server.log()
    );
}

/// HUP makes the server serve the code now on disk, in both process models.
#[test]
fn hup_picks_up_changed_python_code() {
    for method in ["prefork", "threaded"] {
        let dir = tempfile::tempdir().unwrap();
        let app = |version: &str| {
            format!(
                "def application(environ, start_response):\n    \
                 start_response('200 OK', [('Content-Type', 'text/plain')])\n    \
                 return [b'{version}']\n"
            )
        };
        std::fs::write(dir.path().join("liveapp.py"), app("version one")).unwrap();
        let server = liveapp_server(dir.path(), &[&format!("method={method}")]);
        let get = || fcgi_get_root(&server);
        assert_eq!(get(), "version one");
        // A different size, so a cached .pyc cannot pass for the new source.
        std::fs::write(dir.path().join("liveapp.py"), app("version two, longer")).unwrap();
        server.signal(nix::sys::signal::Signal::SIGHUP);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = get();
            if now == "version two, longer" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{method}: still {now:?}\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `worker_requests=2`: one prefork worker runs two requests at once, each on a Python thread
/// of its own (a worker running one would hold the second in its backlog, and the first would
/// answer "alone" after 10 s), and tells the app so (`wsgi.multithread`).
#[test]
fn a_prefork_worker_runs_worker_requests_on_python_threads() {
    let one_worker = [
        "method=prefork",
        "maxchildren=1",
        "minspare=1",
        "maxspare=1",
        "worker_requests=2",
    ];
    let server = testapp("pair", &one_worker, &[]).start();
    let answers: Vec<String> = (0..2)
        .map(|_| {
            let listen = server.listen().clone();
            std::thread::spawn(move || {
                let mut stream = crate::util::client::Stream::connect(&listen);
                let params = crate::util::client::cgi_params("GET", "/", &[]);
                crate::util::client::fcgi_get(&mut stream, &params, false).text()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().expect("client thread"))
        .collect();
    assert!(
        answers.iter().all(|a| a.starts_with("met ")),
        "{answers:?}\n{}",
        server.log()
    );
    assert_ne!(answers[0], answers[1], "both ran on one Python thread");
    drop(server);
    let server = testapp("environ_app", &one_worker, &[]).start();
    let environ = fcgi_get_root(&server);
    for flag in [
        r#""wsgi.multithread": true"#,
        r#""wsgi.multiprocess": true"#,
    ] {
        assert!(environ.contains(flag), "{flag} not in {environ}");
    }
}

/// A 1 GiB upload read by the app and a 1 GiB streamed download each keep appserver's
/// resident memory within 32 MiB of what it was idle, with Python loaded (through nginx,
/// curl on the other side): the threaded server, and a prefork worker (whose Python thread
/// reads the upload, while its own thread runs the download's app).
#[test]
fn gigabyte_transfers_keep_memory_bounded() {
    const GIB: u64 = 1 << 30;
    // One prefork worker, so that its memory is the one measured.
    for model in [
        &["method=threaded"][..],
        &["method=prefork", "maxchildren=1"],
    ] {
        let method = model[0];
        let upload = testapp("input_app", model, &[]).start();
        let download = testapp("big", model, &[]).start();
        for (server, what) in [(&upload, "upload"), (&download, "download")] {
            let front: crate::util::webserver::WebServer =
                Nginx::fastcgi(server.listen(), crate::util::webserver::FcgiPass::Close).into();
            // Warm up: Python's first request allocates what it keeps.
            assert_eq!(
                http_get(front.port(), "/?1").status,
                200,
                "{}",
                server.log()
            );
            // The process that serves: the threaded server, or the prefork master's worker.
            let children =
                std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", server.pid()))
                    .unwrap_or_default();
            let children: Vec<u32> = children
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect();
            let pid = match children.as_slice() {
                [] => server.pid(),
                [worker] => *worker,
                more => panic!("{method}: one worker expected, found {more:?}"),
            };
            let idle = rss_of(pid);
            let url = format!("http://127.0.0.1:{}/", front.port());
            let out = if what == "upload" {
                Command::new("sh")
                    .arg("-c")
                    .arg(format!(
                        "head -c {GIB} /dev/zero | curl -sS --max-time 300 -T - -X POST \
                         -H 'Content-Type: application/octet-stream' '{url}?sha'"
                    ))
                    .output()
                    .unwrap()
            } else {
                Command::new("curl")
                    .args([
                        "-sS",
                        "--max-time",
                        "300",
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{size_download}",
                    ])
                    .arg(format!("{url}?{}", GIB >> 20))
                    .output()
                    .unwrap()
            };
            let text = String::from_utf8_lossy(&out.stdout);
            if what == "upload" {
                assert!(
                    text.contains(&format!("\"len\": {GIB}")),
                    "{method} {what}: {text}\n{}",
                    server.log()
                );
            } else {
                assert_eq!(text, GIB.to_string(), "{}", server.log());
            }
            let peak = peak_rss_of(pid);
            eprintln!(
                "{method} {what}: idle {} KiB, peak {} KiB, after {} KiB",
                idle / 1024,
                peak / 1024,
                rss_of(pid) / 1024
            );
            assert!(
                peak < idle + (32 << 20),
                "{method} {what}: peak RSS {} KiB, idle {} KiB",
                peak / 1024,
                idle / 1024
            );
        }
    }
}

/// A stopping server runs the app's `atexit` handlers (each prefork worker, the threaded
/// server), and one that hangs does not keep it from exiting.
#[test]
fn exit_runs_atexit_handlers_under_a_deadline() {
    for (method, hang) in [("prefork", false), ("threaded", false), ("threaded", true)] {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("atexit.log");
        let mut env = vec![("APPSERVER_TEST_ATEXIT_LOG", log.to_str().unwrap())];
        if hang {
            env.push(("APPSERVER_TEST_ATEXIT_HANG", "1"));
        }
        let extra = [
            format!("method={method}"),
            "maxchildren=2".into(),
            "minspare=2".into(),
            "maxspare=2".into(),
        ];
        let extra: Vec<&str> = if method == "prefork" {
            extra.iter().map(String::as_str).collect()
        } else {
            vec![extra[0].as_str()]
        };
        let mut server = testapp("hello", &extra, &env).start();
        assert!(fcgi_get_root(&server).contains("Hello"));
        let started = Instant::now();
        server.signal(nix::sys::signal::Signal::SIGTERM);
        let status = server.wait_exit(Duration::from_secs(30)).expect("stopped");
        assert!(status.success(), "{method}: {status:?}\n{}", server.log());
        let pids = std::fs::read_to_string(&log).unwrap_or_default();
        let expected = if method == "prefork" { 2 } else { 1 };
        assert_eq!(
            pids.lines().count(),
            expected,
            "{method}: {pids:?}\n{}",
            server.log()
        );
        if hang {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{:?}",
                started.elapsed()
            );
            assert!(
                server.log().contains("atexit handlers still running"),
                "{}",
                server.log()
            );
        }
    }
}

/// `wsgi.errors` goes to appserver's log a line at a time, each naming its request; a line
/// left unfinished is logged when the request ends. Both where the app runs: on the
/// prefork worker's own thread and on a threaded server's Python thread.
#[test]
fn wsgi_errors_lines_reach_the_log_naming_the_request() {
    for method in ["prefork", "threaded"] {
        let server = testapp("errors_app", &[&format!("method={method}")], &[]).start();
        let mut stream = crate::util::client::Stream::connect(server.listen());
        let params = crate::util::client::cgi_params("GET", "/why?x=1", &[]);
        let body = crate::util::client::fcgi_get(&mut stream, &params, false).text();
        assert!(body.ends_with("logged"), "{method}: {body}");
        for text in ["wsgi.errors: first line", "wsgi.errors: unfinished"] {
            assert!(
                server.wait_log(text, 1),
                "{method}: no {text:?} in\n{}",
                server.log()
            );
            let log = server.log();
            let line = log.lines().find(|l| l.contains(text)).unwrap();
            assert!(line.contains("GET /why?x=1"), "{method}: {line}");
        }
    }
}

/// A HUP whose new code cannot be imported leaves the previous workers serving the previous
/// code (prefork: the reload's workers fail to start and the master reports it).
#[test]
fn a_reload_whose_import_fails_keeps_the_old_workers_serving() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("liveapp.py"),
        "def application(environ, start_response):\n    \
         start_response('200 OK', [('Content-Type', 'text/plain')])\n    \
         return [b'still the old code']\n",
    )
    .unwrap();
    let server = liveapp_server(
        dir.path(),
        &[
            "method=prefork",
            "maxchildren=2",
            "minspare=2",
            "maxspare=2",
        ],
    );
    let get = || fcgi_get_root(&server);
    assert_eq!(get(), "still the old code");
    std::fs::write(
        dir.path().join("liveapp.py"),
        "raise ImportError('the new code is broken (on purpose)')\n",
    )
    .unwrap();
    server.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(
        server.wait_log("ImportError: the new code is broken (on purpose)", 1),
        "{}",
        server.log()
    );
    assert!(server.wait_log("reload failed", 1), "{}", server.log());
    for _ in 0..5 {
        assert_eq!(get(), "still the old code", "{}", server.log());
    }
}

/// The slow-log entry (`slowlog=`) whose first line holds `needle`: that line and the
/// indented lines under it.
fn slow_entry(log: &str, needle: &str) -> Option<String> {
    let mut lines = log.lines().skip_while(|l| !l.contains(needle));
    let first = lines.next()?;
    let mut entry = first.to_owned();
    for line in lines.take_while(|l| l.starts_with("  ")) {
        entry.push('\n');
        entry.push_str(line);
    }
    Some(entry)
}

/// slowlog=1 with Django behind nginx, threaded: a view sleeping in `slow_inner` and one
/// spinning in a CPU-bound loop in `spin_inner` (holding the GIL but for Python's switch
/// interval) run at once; each is logged once with the Python stack of its own thread, the
/// frame's function and file in it, and both still answer 200.
#[test]
fn slow_wsgi_request_is_logged_with_its_python_stack() {
    let stack = nginx_fcgi(&["method=threaded", "slowlog=1"]);
    let port = stack.port();
    let get = |path: &'static str| std::thread::spawn(move || http_get(port, path));
    let sleeping = get("/slow/?s=3");
    let spinning = get("/spin/?s=3");
    for (handle, body) in [(sleeping, "slept\n"), (spinning, "spun\n")] {
        let resp = handle.join().unwrap();
        assert_eq!(resp.status, 200, "{}", stack.logs());
        assert_eq!(resp.text(), body);
    }
    for (uri, function, other) in [
        ("/slow/?s=3", "in slow_inner", "in spin_inner"),
        ("/spin/?s=3", "in spin_inner", "in slow_inner"),
    ] {
        let needle = format!("slow request: GET {uri} running for ");
        // Its innermost frame: the entry has crossed the pipe up to there.
        assert!(
            stack.server.wait_log(&format!("{function}\n"), 1),
            "{}",
            stack.logs()
        );
        let log = stack.server.log();
        assert_eq!(log.matches(&needle).count(), 1, "once: {log}");
        let entry = slow_entry(&log, &needle).unwrap();
        assert!(
            entry.contains("  Python stack of thread "),
            "{uri}: {entry}"
        );
        let frame = entry
            .lines()
            .position(|l| l.ends_with(function))
            .unwrap_or_else(|| panic!("{uri}: no frame {function}: {entry}"));
        assert!(
            entry
                .lines()
                .nth(frame)
                .unwrap()
                .contains("mysite/views.py\", line "),
            "{uri}: {entry}"
        );
        assert!(
            !entry.contains(other),
            "{uri}: another thread's stack: {entry}"
        );
    }
}

/// A request whose thread holds the GIL in C code (libc's sleep through `ctypes.PyDLL`) the
/// whole time: the slow line is still logged, within `SLOW_DETAIL_WAIT` (1 s) of being due
/// and while the request still runs, saying the stack was not taken; the request answers 200
/// and the next slow request in the same worker has its stack again.
#[test]
fn a_slow_request_holding_the_gil_is_logged_without_its_stack() {
    let stack = nginx_fcgi(&["slowlog=1", "minspare=1", "maxspare=1", "maxchildren=1"]);
    let port = stack.port();
    let holding = std::thread::spawn(move || http_get(port, "/hold-gil/?s=4"));
    let needle = "slow request: GET /hold-gil/?s=4 running for ";
    assert!(
        stack.server.wait_log("(Python stack not taken within", 1),
        "{}",
        stack.logs()
    );
    assert!(
        !holding.is_finished(),
        "logged only once the request was done: {}",
        stack.logs()
    );
    let entry = slow_entry(&stack.server.log(), needle).unwrap();
    assert!(
        entry.contains(
            "(Python stack not taken within 1.0s: the request's thread does not let go of it)"
        ),
        "{entry}"
    );
    let resp = holding.join().unwrap();
    assert_eq!(resp.status, 200, "{}", stack.logs());
    assert_eq!(resp.text(), "held\n");

    let resp = http_get(port, "/slow/?s=2");
    assert_eq!(resp.status, 200, "{}", stack.logs());
    let needle = "slow request: GET /slow/?s=2 running for ";
    assert!(
        stack.server.wait_log("in slow_inner\n", 1),
        "{}",
        stack.logs()
    );
    let entry = slow_entry(&stack.server.log(), needle).unwrap();
    assert!(entry.contains("in slow_inner"), "{entry}");
    assert_eq!(stack.server.log().matches("slow request:").count(), 2);
}
