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
use crate::util::command::{Server, TestCommand};
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

/// nginx's location for the collected static files.
fn nginx_static() -> String {
    format!(
        "        location /static/ {{\n            alias {}/static/;\n        }}\n",
        site_data().display()
    )
}

fn nginx_fcgi(extra: &[&str]) -> Stack {
    let server = django_server("fcgi", extra);
    let location = format!(
        "{}        location / {{\n            include /etc/nginx/fastcgi_params;\n            fastcgi_pass {};\n        }}\n",
        nginx_static(),
        server.listen().nginx_addr()
    );
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

/// Every Django case, through `stack`.
fn django_cases(stack: &Stack) {
    let ctx = || stack.logs();
    let port = stack.port();

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

    admin_login(stack);

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

    streaming(stack);

    // FileResponse (through wsgi.file_wrapper) and the same file as a static file served by
    // the web server: Django's headers tell them apart.
    let css = std::fs::read(project().join("mysite/static/mysite/site.css")).unwrap();
    let resp = http_get(port, "/file/");
    assert_eq!((resp.status, &resp.body), (200, &css), "{}", ctx());
    assert_eq!(resp.header("x-frame-options"), Some("DENY"));
    let resp = http_get(port, "/static/mysite/site.css");
    assert_eq!((resp.status, &resp.body), (200, &css), "{}", ctx());
    assert_eq!(
        resp.header("x-frame-options"),
        None,
        "static files bypass Django"
    );
    let resp = http_get(port, "/static/admin/css/base.css");
    assert_eq!(resp.status, 200, "collectstatic copied the admin's files");

    // A view that raises: Django's own 500 page, its traceback in the log (Django logs it;
    // appserver's stderr is the log).
    let resp = http_get(port, "/raise/");
    assert_eq!(resp.status, 500, "{}", ctx());
    assert!(
        stack
            .server
            .wait_log("RuntimeError: this view fails on purpose", 1),
        "{}",
        ctx()
    );
}

/// The admin login: GET the form (CSRF cookie and token), POST it, follow to the index with
/// the session cookie.
fn admin_login(stack: &Stack) {
    let port = stack.port();
    let form = http_get(port, "/admin/login/?next=/admin/");
    assert_eq!(form.status, 200, "{}", stack.logs());
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
        stack.logs()
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
    assert_eq!(index.status, 200, "{}", stack.logs());
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
fn streaming(stack: &Stack) {
    let mut s = TcpStream::connect(("127.0.0.1", stack.port())).unwrap();
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
    assert!(text.contains("chunk 3 at"), "{text}\n{}", stack.logs());
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
