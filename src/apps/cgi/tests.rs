//! Unit tests of the CGI gateway.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use appserver_proto::params::ParamsBuilder;
use appserver_proto::Limits;
use bytes::Bytes;

use super::child::*;
use super::head::*;
use super::script::*;
use super::*;
use crate::request::{build, Gateway, RequestOptions};
use crate::response::ReasonPhrase;

// --- the CGI head

#[test]
fn head_end_takes_lf_crlf_and_mixed() {
    assert_eq!(head_end(b"A: 1\n\nbody"), Some((5, 6)));
    assert_eq!(head_end(b"A: 1\r\n\r\nbody"), Some((6, 8)));
    assert_eq!(head_end(b"A: 1\r\n\nbody"), Some((6, 7)));
    assert_eq!(head_end(b"A: 1\n\r\nbody"), Some((5, 7)));
    assert_eq!(head_end(b"\r\nbody"), Some((0, 2)));
    assert_eq!(head_end(b"\nbody"), Some((0, 1)));
    assert_eq!(head_end(b"A: 1\r\n\r"), None);
    assert_eq!(head_end(b"A: 1\r\nB: 2\r\n"), None);
}

#[test]
fn head_fields_status_location_and_repeats() {
    let head = parse_head(
        b"Status: 404 Gone Fishing\r\nContent-Type: text/plain\r\nSet-Cookie: a=1\n\
          Set-Cookie: b=2\r\nset-cookie:c=3\t\r\nX-Empty:\r\n",
    )
    .unwrap();
    assert_eq!(head.status, Some(StatusCode::NOT_FOUND));
    assert_eq!(
        head.reason,
        Some(ReasonPhrase::new("Gone Fishing").unwrap())
    );
    assert_eq!(head.location, None);
    assert_eq!(head.headers["content-type"], "text/plain");
    let cookies: Vec<_> = head.headers.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2", "c=3"]);
    assert_eq!(head.headers["x-empty"], "");
    assert!(!head.headers.contains_key("status"));

    let head = parse_head(b"Location: https://example.com/x\n").unwrap();
    assert_eq!(head.status, None);
    assert_eq!(
        head.location.as_deref(),
        Some(&b"https://example.com/x"[..])
    );
    assert_eq!(head.headers["location"], "https://example.com/x");
    // obs-text in a value passes (non-ASCII file names in Content-Disposition).
    assert!(parse_head("X-Name: caf\u{e9}\n".as_bytes()).is_ok());
}

#[test]
fn bad_heads_are_refused() {
    for (head, why) in [
        (&b"HTTP/1.1 200 OK\r\n"[..], "without a colon"),
        (b"A: 1\r\n continued\r\n", "continuation"),
        (b"Bad Name: 1\r\n", "bad header name"),
        (b"A: x\x01y\r\n", "bad header value"),
        (b"Status: 2000\r\n", "bad"),
        (b"Status: abc\r\n", "bad"),
        (b"Status: 099\r\n", "bad"),
        (b"Status: 200\r\nStatus: 302\r\n", "twice"),
        (b"", "empty"),
    ] {
        let err = parse_head(head).unwrap_err();
        assert!(err.contains(why), "{head:?}: {err}");
    }
}

#[test]
fn status_values() {
    let code = |v: &[u8]| parse_status(v).map(|(s, _)| s.as_u16());
    let phrase = |v: &[u8]| {
        parse_status(v)
            .and_then(|(_, r)| r)
            .map(|r| r.as_bytes().to_vec())
    };
    assert_eq!(parse_status(b"200"), Some((StatusCode::OK, None)));
    assert_eq!(parse_status(b"302 Found"), Some((StatusCode::FOUND, None)));
    assert_eq!(code(b"999 Mine"), Some(999));
    assert_eq!(phrase(b"999 Mine"), Some(b"Mine".to_vec()));
    assert_eq!(
        phrase(b"403 Access Denied \t"),
        Some(b"Access Denied".to_vec())
    );
    assert_eq!(
        phrase(b"404 Not Found"),
        None,
        "the standard phrase needs no extension"
    );
    assert_eq!(code(b"404 Bad\x01Phrase"), None);
    assert_eq!(code(b"20"), None);
    assert_eq!(code(b"2000"), None);
    assert_eq!(code(b" 200"), None);
}

#[tokio::test]
async fn head_is_bounded() {
    // A head of exactly MAX_HEAD_BYTES, blank line included, passes.
    let mut at_limit = vec![b'a'; MAX_HEAD_BYTES - 4];
    at_limit.extend_from_slice(b":1\n\nbody");
    assert_eq!(at_limit.len(), MAX_HEAD_BYTES + 4);
    let (head, body) = read_head(&mut &at_limit[..]).await.unwrap();
    assert_eq!(head.len(), MAX_HEAD_BYTES - 1);
    assert!(b"body".starts_with(&body), "{body:?}");

    // One byte more: refused, even when it arrives in the same read.
    let mut over = vec![b'a'; MAX_HEAD_BYTES - 3];
    over.extend_from_slice(b":1\n\nbody");
    assert!(matches!(
        read_head(&mut &over[..]).await,
        Err(HeadError::TooLarge)
    ));
    assert!(matches!(
        read_head(&mut &b"A: 1\n"[..]).await,
        Err(HeadError::Eof(5))
    ));
}

// --- choosing the script

#[test]
fn apache_proxy_urls_name_a_file_only_for_fastcgi() {
    let file = |sent: &[u8]| sent_filename(sent).map(Cow::into_owned);
    assert_eq!(
        file(b"proxy:fcgi://127.0.0.1:9000/srv/cgi/x.sh"),
        Some(b"/srv/cgi/x.sh".to_vec())
    );
    assert_eq!(
        file(b"proxy:fcgi://[::1]:9000/a%20b/caf%C3%A9"),
        Some("/a b/caf\u{e9}".as_bytes().to_vec())
    );
    assert_eq!(file(b"/srv/x%20.sh"), Some(b"/srv/x%20.sh".to_vec()));
    assert_eq!(file(b"proxy:fcgi://host"), None);
    assert_eq!(file(b"proxy:scgi://127.0.0.1:9000/cgi/x.sh"), None);
    assert_eq!(file(b""), None);
}

/// A docroot with a script, a subdirectory, and things that must not run.
struct Tree {
    _dir: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
}

fn script(path: &Path, body: &str, mode: u32) {
    std::fs::write(path, body).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn tree() -> Tree {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    let ok = "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nok\\n'\n";
    script(&root.join("sub/run.sh"), ok, 0o755);
    script(&root.join("plain.txt"), "text", 0o644);
    script(&root.join("nph-raw.sh"), ok, 0o755);
    script(&outside.join("evil.sh"), ok, 0o755);
    symlink(outside.join("evil.sh"), root.join("link.sh")).unwrap();
    symlink(&outside, root.join("linkdir")).unwrap();
    Tree {
        _dir: dir,
        root,
        outside,
    }
}

fn gateway(options: CgiOptions) -> Cgi {
    Cgi::new(options).unwrap()
}

fn docroot_gateway(root: &Path) -> Cgi {
    gateway(CgiOptions {
        docroot: Some(root.to_owned()),
        ..CgiOptions::default()
    })
}

fn vars(pairs: &[(&str, &str)]) -> Vars {
    let mut v = Vars::default();
    for (n, val) in pairs {
        v.set(n.as_bytes(), val.as_bytes());
    }
    v
}

fn get<'a>(v: &'a Vars, name: &str) -> Option<&'a str> {
    v.get(name.as_bytes())
        .map(|b| std::str::from_utf8(b).unwrap())
}

#[test]
fn walk_finds_the_first_file_and_splits_path_info() {
    let t = tree();
    let cgi = docroot_gateway(&t.root);
    let mut v = vars(&[("SCRIPT_NAME", "/sub/run.sh/a/b"), ("PATH_INFO", "/c")]);
    let found = cgi.inner.resolve(&mut v).unwrap();
    let real_root = std::fs::canonicalize(&t.root).unwrap();
    assert_eq!(found.exec, real_root.join("sub/run.sh"));
    assert_eq!(get(&v, "SCRIPT_NAME"), Some("/sub/run.sh"));
    assert_eq!(get(&v, "PATH_INFO"), Some("/a/b/c"));
    assert_eq!(
        v.get(b"SCRIPT_FILENAME"),
        Some(real_root.join("sub/run.sh").as_os_str().as_bytes())
    );

    let mut v = vars(&[("SCRIPT_NAME", "//sub/./run.sh"), ("PATH_INFO", "")]);
    cgi.inner.resolve(&mut v).unwrap();
    assert_eq!(get(&v, "SCRIPT_NAME"), Some("//sub/./run.sh"));
    assert_eq!(get(&v, "PATH_INFO"), Some(""));
}

#[test]
fn walk_refusals() {
    let t = tree();
    let cgi = docroot_gateway(&t.root);
    let status = |script_name: &str| {
        let mut v = vars(&[("SCRIPT_NAME", script_name)]);
        cgi.inner.resolve(&mut v).unwrap_err().status
    };
    assert_eq!(status("/missing.sh"), StatusCode::NOT_FOUND);
    assert_eq!(status("/sub/missing/x"), StatusCode::NOT_FOUND);
    assert_eq!(
        status("/plain.txt/x"),
        StatusCode::FORBIDDEN,
        "not executable"
    );
    assert_eq!(status("/sub"), StatusCode::FORBIDDEN, "a directory");
    assert_eq!(status("/sub/../../outside/evil.sh"), StatusCode::FORBIDDEN);
    assert_eq!(status("/link.sh"), StatusCode::FORBIDDEN, "symlink out");
    assert_eq!(status("/linkdir/evil.sh"), StatusCode::FORBIDDEN);
    assert_eq!(status("/nph-raw.sh"), StatusCode::BAD_GATEWAY);
    // `..` is refused before anything outside is looked at: no 404 oracle.
    assert_eq!(status("/../outside/missing"), StatusCode::FORBIDDEN);
}

#[test]
fn script_filename_is_confined_to_docroot() {
    let t = tree();
    let cgi = docroot_gateway(&t.root);
    let status = |filename: &Path| {
        let mut v = vars(&[("SCRIPT_FILENAME", filename.to_str().unwrap())]);
        cgi.inner
            .resolve(&mut v)
            .map(|s| s.exec)
            .map_err(|r| r.status)
    };
    assert!(status(&t.root.join("sub/run.sh")).is_ok());
    assert_eq!(
        status(&t.root.join("sub/../../outside/evil.sh")),
        Err(StatusCode::FORBIDDEN)
    );
    assert_eq!(
        status(&t.outside.join("evil.sh")),
        Err(StatusCode::FORBIDDEN)
    );
    assert_eq!(
        status(&t.outside.join("missing")),
        Err(StatusCode::FORBIDDEN),
        "outside is refused before it is looked at"
    );
    assert_eq!(status(&t.root.join("link.sh")), Err(StatusCode::FORBIDDEN));
    assert_eq!(status(&t.root.join("missing")), Err(StatusCode::NOT_FOUND));
    assert_eq!(status(Path::new("rel/x.sh")), Err(StatusCode::FORBIDDEN));

    let proxied = format!(
        "proxy:fcgi://127.0.0.1:9000{}",
        t.root.join("sub/run.sh").display()
    );
    let mut v = vars(&[("SCRIPT_FILENAME", &proxied)]);
    cgi.inner.resolve(&mut v).unwrap();
    assert_eq!(
        v.get(b"SCRIPT_FILENAME"),
        Some(t.root.join("sub/run.sh").as_os_str().as_bytes())
    );
    // Encoded as mod_proxy_fcgi sends it; an encoded `..` is still a climb out.
    for (encoded, expect) in [
        ("sub/run%2Esh", Ok(())),
        (
            "sub/%2E%2E/%2E%2E/outside/evil.sh",
            Err(StatusCode::FORBIDDEN),
        ),
    ] {
        let proxied = format!("proxy:fcgi://h:1{}/{encoded}", t.root.display());
        let mut v = vars(&[("SCRIPT_FILENAME", &proxied)]);
        assert_eq!(
            cgi.inner.resolve(&mut v).map(|_| ()).map_err(|r| r.status),
            expect,
            "{encoded}"
        );
    }
}

/// mod_proxy_fcgi's `SCRIPT_FILENAME` for `/sub/run.sh/a b/c`: the script is
/// `sub/run.sh`, the rest becomes PATH_INFO and leaves SCRIPT_NAME.
#[test]
fn trailing_path_info_is_split_off_script_filename() {
    let t = tree();
    let cgi = docroot_gateway(&t.root);
    let run = t.root.join("sub/run.sh");
    let proxied = format!("proxy:fcgi://h:1{}/a%20b/c", run.display());
    let mut v = vars(&[
        ("SCRIPT_FILENAME", &proxied),
        ("SCRIPT_NAME", "/sub/run.sh/a b/c"),
    ]);
    let script = cgi.inner.resolve(&mut v).unwrap();
    assert_eq!(script.exec, run.canonicalize().unwrap());
    assert_eq!(get(&v, "SCRIPT_FILENAME"), run.to_str());
    assert_eq!(get(&v, "PATH_INFO"), Some("/a b/c"));
    assert_eq!(get(&v, "SCRIPT_NAME"), Some("/sub/run.sh"));

    // PATH_INFO the web server sent is kept.
    let filename = format!("{}/x", run.display());
    let mut v = vars(&[("SCRIPT_FILENAME", &filename), ("PATH_INFO", "/given")]);
    cgi.inner.resolve(&mut v).unwrap();
    assert_eq!(get(&v, "PATH_INFO"), Some("/given"));

    // Below a directory, or below nothing: not found, as before.
    for missing in ["sub/missing/x", "missing/x"] {
        let filename = format!("{}/{missing}", t.root.display());
        let mut v = vars(&[("SCRIPT_FILENAME", &filename)]);
        assert_eq!(
            cgi.inner.resolve(&mut v).map(|_| ()).map_err(|r| r.status),
            Err(StatusCode::NOT_FOUND),
            "{missing}"
        );
    }
}

#[test]
fn without_docroot_script_filename_runs_as_sent() {
    let t = tree();
    let cgi = gateway(CgiOptions::default());
    let link = t.root.join("link.sh");
    let mut v = vars(&[("SCRIPT_FILENAME", link.to_str().unwrap())]);
    assert_eq!(cgi.inner.resolve(&mut v).unwrap().exec, link);
    let mut v = vars(&[("SCRIPT_NAME", "/x")]);
    assert_eq!(
        cgi.inner.resolve(&mut v).unwrap_err().status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
}

#[test]
fn script_option_wins_and_is_checked_at_start() {
    let t = tree();
    let cgi = gateway(CgiOptions {
        script: Some(t.root.join("sub/run.sh")),
        ..CgiOptions::default()
    });
    let mut v = vars(&[("SCRIPT_FILENAME", "/bin/sh")]);
    assert_eq!(
        cgi.inner.resolve(&mut v).unwrap().exec,
        t.root.join("sub/run.sh")
    );
    assert_eq!(
        v.get(b"SCRIPT_FILENAME"),
        Some(t.root.join("sub/run.sh").as_os_str().as_bytes())
    );

    let e = Cgi::new(CgiOptions {
        script: Some(t.root.join("plain.txt")),
        ..CgiOptions::default()
    })
    .unwrap_err();
    assert_eq!(e.option(), "script");
    assert!(e.message().contains("not executable"), "{e}");
    let e = Cgi::new(CgiOptions {
        docroot: Some(t.root.join("plain.txt")),
        ..CgiOptions::default()
    })
    .unwrap_err();
    assert!(e.message().contains("not a directory"), "{e}");
}

// --- the environment

fn env_of(cgi: &Cgi, v: &Vars) -> Vec<(String, String)> {
    cgi.inner
        .environment(v)
        .into_iter()
        .map(|(n, v)| (n.into_string().unwrap(), v.into_string().unwrap()))
        .collect()
}

fn env_get<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    env.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

#[test]
fn environment_is_cgi_vars_and_pass_through_only() {
    let cgi = gateway(CgiOptions {
        pass_env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        allow_vars: vec!["GIT_HTTP_EXPORT_ALL".into()],
        ..CgiOptions::default()
    });
    let v = vars(&[
        ("REQUEST_METHOD", "GET"),
        // What a shell, Perl, Python, Node, curl or glibc act on (issue 12, finding 2).
        ("SHELLOPTS", "xtrace"),
        ("PS4", "$(id > /tmp/evil)"),
        ("http_proxy", "http://evil:8080"),
        ("HTTPS_PROXY", "http://evil:8080"),
        ("PERL5OPT", "-Mevil"),
        ("PERL5LIB", "/tmp/evil"),
        ("NODE_OPTIONS", "--require /tmp/evil.js"),
        ("PYTHONPATH", "/tmp/evil"),
        ("PYTHONSTARTUP", "/tmp/evil.py"),
        ("GCONV_PATH", "/tmp/evil"),
        ("IFS", "evil"),
        ("SSL_CERT_FILE", "/tmp/evil.pem"),
        ("HTTP_", "evil"),
        ("SSL_CIPHER", "TLS_AES_128_GCM_SHA256"),
        ("REDIRECT_STATUS", "200"),
        ("CONTENT_LENGTH", ""),
        ("HTTP_PROXY", "http://evil:8080"),
        ("HTTP_X_OK", "yes"),
        ("LD_PRELOAD", "/tmp/evil.so"),
        ("BASH_ENV", "/tmp/evil.sh"),
        ("BASH_FUNC_ls%%", "() { evil; }"),
        ("PATH", "/tmp/evil"),
        ("PATH_INFO", ""),
        ("SERVER_SOFTWARE", "nginx/1.22.1"),
        ("GATEWAY_INTERFACE", "CGI/9.9"),
        ("GIT_HTTP_EXPORT_ALL", ""),
        ("A=B", "x"),
        ("NUL", "a\0b"),
    ]);
    let env = env_of(&cgi, &v);
    let names: Vec<&str> = env.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "REQUEST_METHOD",
            "SSL_CIPHER",
            "REDIRECT_STATUS",
            "CONTENT_LENGTH",
            "HTTP_X_OK",
            "SERVER_SOFTWARE",
            "GIT_HTTP_EXPORT_ALL",
            "GATEWAY_INTERFACE",
            "PATH"
        ]
    );
    assert_eq!(env_get(&env, "CONTENT_LENGTH"), Some(""), "set but empty");
    assert_eq!(
        env_get(&env, "PATH"),
        Some("/usr/bin:/bin"),
        "the operator's PATH wins"
    );
    assert_eq!(env_get(&env, "GATEWAY_INTERFACE"), Some("CGI/1.1"));
    assert_eq!(env_get(&env, "SERVER_SOFTWARE"), Some("nginx/1.22.1"));
    assert!(!env.iter().any(|(_, v)| v.contains("evil")));

    // Without cgi_vars= the web server's own variables stay out too.
    let plain = gateway(CgiOptions::default());
    assert_eq!(env_get(&env_of(&plain, &v), "GIT_HTTP_EXPORT_ALL"), None);

    let env = env_of(&cgi, &vars(&[("PATH_INFO", "/x")]));
    assert!(env_get(&env, "SERVER_SOFTWARE")
        .unwrap()
        .starts_with("appserver/"));
    assert_eq!(env_get(&env, "PATH_INFO"), Some("/x"));
}

#[test]
fn path_translated_needs_a_document_root_and_path_info() {
    let t = tree();
    let cgi = docroot_gateway(&t.root);
    let env = env_of(&cgi, &vars(&[("PATH_INFO", "/a b")]));
    let expected = format!("{}/a b", t.root.display());
    assert_eq!(env_get(&env, "PATH_TRANSLATED"), Some(expected.as_str()));
    let env = env_of(&cgi, &vars(&[("PATH_INFO", "")]));
    assert_eq!(env_get(&env, "PATH_TRANSLATED"), None);

    let cgi = gateway(CgiOptions::default());
    let env = env_of(
        &cgi,
        &vars(&[("PATH_INFO", "/x"), ("DOCUMENT_ROOT", "/srv/")]),
    );
    assert_eq!(env_get(&env, "PATH_TRANSLATED"), Some("/srv/x"));
    let env = env_of(&cgi, &vars(&[("PATH_INFO", "/x")]));
    assert_eq!(env_get(&env, "PATH_TRANSLATED"), None);
    let env = env_of(
        &cgi,
        &vars(&[("PATH_INFO", "/x"), ("PATH_TRANSLATED", "/sent")]),
    );
    assert_eq!(env_get(&env, "PATH_TRANSLATED"), Some("/sent"));
}

#[test]
fn local_redirect_rewrites_the_request_as_a_get() {
    let t = tree();
    let before = [
        ("REQUEST_METHOD", "POST"),
        ("CONTENT_LENGTH", "5"),
        ("CONTENT_TYPE", "text/plain"),
        ("HTTP_CONTENT_LENGTH", "5"),
        ("SCRIPT_NAME", "/app"),
        ("PATH_INFO", "/form"),
        ("SCRIPT_FILENAME", "/srv/app.cgi"),
        ("QUERY_STRING", "a=1"),
        ("REQUEST_URI", "/app/form?a=1"),
    ];
    // Same script, new path under its SCRIPT_NAME.
    let cgi = gateway(CgiOptions::default());
    let mut v = vars(&before);
    cgi.inner.redirect(&mut v, b"/app/caf%C3%A9?x=%20");
    assert_eq!(get(&v, "REQUEST_METHOD"), Some("GET"));
    assert_eq!(get(&v, "CONTENT_LENGTH"), None);
    assert_eq!(get(&v, "CONTENT_TYPE"), None);
    assert_eq!(get(&v, "HTTP_CONTENT_LENGTH"), None);
    assert_eq!(get(&v, "SCRIPT_NAME"), Some("/app"));
    assert_eq!(get(&v, "PATH_INFO"), Some("/caf\u{e9}"));
    assert_eq!(get(&v, "QUERY_STRING"), Some("x=%20"));
    assert_eq!(get(&v, "REQUEST_URI"), Some("/app/caf%C3%A9?x=%20"));
    assert_eq!(get(&v, "SCRIPT_FILENAME"), Some("/srv/app.cgi"));
    // Elsewhere: the whole path is PATH_INFO.
    let mut v = vars(&before);
    cgi.inner.redirect(&mut v, b"/application");
    assert_eq!(get(&v, "SCRIPT_NAME"), Some(""));
    assert_eq!(get(&v, "PATH_INFO"), Some("/application"));
    assert_eq!(get(&v, "QUERY_STRING"), Some(""));
    // With docroot=: walked afresh.
    let cgi = docroot_gateway(&t.root);
    let mut v = vars(&before);
    cgi.inner.redirect(&mut v, b"/sub/run.sh/x");
    assert_eq!(get(&v, "SCRIPT_FILENAME"), None);
    cgi.inner.resolve(&mut v).unwrap();
    assert_eq!(get(&v, "SCRIPT_NAME"), Some("/sub/run.sh"));
    assert_eq!(get(&v, "PATH_INFO"), Some("/x"));
}

#[test]
fn local_locations() {
    assert!(is_local(b"/x"));
    assert!(is_local(b"/"));
    assert!(!is_local(b"//evil.example/x"));
    assert!(!is_local(b"http://example.com/"));
    assert!(!is_local(b"x"));
}

// --- running scripts

fn request(pairs: &[(&str, &str)], body: Body) -> Request {
    let mut b = ParamsBuilder::new(Limits::default());
    for (n, v) in pairs {
        b.push(n.as_bytes(), v.as_bytes()).unwrap();
    }
    let gw = Gateway {
        protocol: "fcgi",
        method: "threaded",
    };
    build(b.finish(), body, &RequestOptions::default(), gw).unwrap()
}

/// A gateway running `body` as its one script, in a fresh directory.
fn one_script(body: &str, timeout_secs: u64) -> (tempfile::TempDir, Cgi) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.sh");
    script(&path, &format!("#!/bin/sh\n{body}"), 0o755);
    let cgi = gateway(CgiOptions {
        script: Some(path),
        timeout: Duration::from_secs(timeout_secs),
        pass_env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        ..CgiOptions::default()
    });
    (dir, cgi)
}

async fn text(resp: Response) -> String {
    let bytes = resp.into_body().collect_bytes().await.unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// Live (not zombie) processes in process group `pgid`, from `/proc`.
fn group_members(pgid: i32) -> usize {
    let pgid = pgid.to_string();
    let mut n = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        let Some(after) = stat.rfind(')').and_then(|i| stat.get(i + 2..)) else {
            continue;
        };
        let f: Vec<&str> = after.split_whitespace().collect();
        if f.len() > 2 && f[2] == pgid && f[0] != "Z" {
            n += 1;
        }
    }
    n
}

/// Waits (at most 5 s) for the group to empty: killed processes exit asynchronously.
async fn group_gone(pgid: i32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while group_members(pgid) > 0 {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

fn pid_in(dir: &Path) -> i32 {
    std::fs::read_to_string(dir.join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn script_output_becomes_the_response() {
    let (_dir, cgi) = one_script(
        "printf 'Status: 201 Made\\r\\nSet-Cookie: a=1\\r\\nSet-Cookie: b=2\\r\\n\\r\\n'\n\
         printf '%s|%s|' \"$QUERY_STRING\" \"$(cat)\"\necho oops >&2\n",
        10,
    );
    let req = request(
        &[
            ("REQUEST_METHOD", "POST"),
            ("QUERY_STRING", "q=1"),
            ("CONTENT_LENGTH", "5"),
        ],
        Body::from("hello"),
    );
    let resp = cgi.call(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let cookies: Vec<_> = resp.headers().get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
    assert_eq!(text(resp).await, "q=1|hello|");
}

#[tokio::test]
async fn bare_locations() {
    let (_dir, cgi) = one_script("printf 'Location: https://example.com/\\n\\n'\n", 10);
    let resp = cgi.call(request(&[], Body::empty())).await.unwrap();
    assert_eq!(resp.status(), StatusCode::FOUND);
    assert_eq!(resp.headers()["location"], "https://example.com/");

    // A local redirect runs the request again as a GET of the new path.
    let (_dir, cgi) = one_script(
        "if [ \"$PATH_INFO\" = /target ]; then\n\
         printf 'Content-Type: text/plain\\n\\n%s %s %s' \"$REQUEST_METHOD\" \
         \"$QUERY_STRING\" \"$CONTENT_LENGTH\"\n\
         else\n\
         printf 'Location: /target?x=1\\n\\n'\n\
         fi\n",
        10,
    );
    let req = request(
        &[("REQUEST_METHOD", "POST"), ("CONTENT_LENGTH", "3")],
        Body::from("abc"),
    );
    let resp = cgi.call(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(text(resp).await, "GET x=1 ");

    // A script that always redirects ends in a 500, after MAX_LOCAL_REDIRECTS.
    let (dir, cgi) = one_script("echo run >> runs\nprintf 'Location: /again\\n\\n'\n", 10);
    let resp = cgi.call(request(&[], Body::empty())).await.unwrap();
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let runs = std::fs::read_to_string(dir.path().join("runs")).unwrap();
    assert_eq!(runs.lines().count(), MAX_LOCAL_REDIRECTS + 1);
}

#[tokio::test]
async fn broken_output_is_a_502() {
    for out in [
        "exit 3\n",
        "echo 'no blank line'\n",
        "echo 'HTTP/1.1 200 OK'; echo\n",
        "printf '\\n\\nbody'\n",
    ] {
        let (_dir, cgi) = one_script(out, 10);
        let resp = cgi.call(request(&[], Body::empty())).await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY, "{out}");
    }
}

#[tokio::test]
async fn timeout_before_the_head_is_a_504_and_kills_the_group() {
    let (dir, cgi) = one_script("echo $$ > pid\nsleep 60 &\ntrap '' TERM\nsleep 60\n", 1);
    let started = Instant::now();
    let resp = cgi.call(request(&[], Body::empty())).await.unwrap();
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    // The shell ignores TERM: KILL comes KILL_GRACE later.
    assert!(started.elapsed() >= Duration::from_secs(1) + KILL_GRACE);
    assert!(group_gone(pid_in(dir.path())).await, "process group alive");
}

#[tokio::test]
async fn timeout_mid_body_fails_the_body_and_kills_the_group() {
    let (dir, cgi) = one_script(
        "echo $$ > pid\nprintf 'Content-Type: text/plain\\n\\nstart'\nsleep 60\n",
        1,
    );
    let resp = cgi.call(request(&[], Body::empty())).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let err = resp.into_body().collect_bytes().await.unwrap_err();
    assert!(err.to_string().contains("cgi_timeout"), "{err}");
    assert!(group_gone(pid_in(dir.path())).await, "process group alive");
}

#[tokio::test]
async fn dropping_the_response_kills_the_group() {
    let (dir, cgi) = one_script(
        "echo $$ > pid\nsleep 60 &\nprintf 'Content-Type: text/plain\\n\\nstart'\n\
         sleep 60\n",
        60,
    );
    let resp = cgi.call(request(&[], Body::empty())).await.unwrap();
    let pgid = pid_in(dir.path());
    assert!(group_members(pgid) >= 2, "sh and its background sleep");
    drop(resp);
    assert!(group_gone(pgid).await, "process group alive");
}

#[tokio::test]
async fn dropping_the_call_kills_the_group() {
    let (dir, cgi) = one_script("echo $$ > pid.tmp; mv pid.tmp pid\nsleep 60\n", 60);
    let pid_file = dir.path().join("pid");
    let call = cgi.call(request(&[], Body::empty()));
    tokio::select! {
        _ = call => panic!("the script answered"),
        () = async {
            while !pid_file.exists() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        } => {}
    }
    assert!(group_gone(pid_in(dir.path())).await, "process group alive");
}

#[tokio::test]
async fn failed_request_body_kills_the_script() {
    let (dir, cgi) = one_script(
        "echo $$ > pid.tmp; mv pid.tmp pid\ncat > /dev/null\necho 'Status: 200'; echo\n",
        60,
    );
    let (tx, body) = crate::body::channel(Some(10));
    let req = request(
        &[("REQUEST_METHOD", "POST"), ("CONTENT_LENGTH", "10")],
        body,
    );
    let pid_file = dir.path().join("pid");
    let feed = async {
        tx.send(Ok(vec![Bytes::from_static(b"12345")]))
            .await
            .unwrap();
        while !pid_file.exists() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tx.send(Err(crate::body::BodyError::Truncated { received: 5 }))
            .await
            .unwrap();
    };
    let started = Instant::now();
    let (answer, ()) = tokio::join!(cgi.call(req), feed);
    assert!(answer.is_err());
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(group_gone(pid_in(dir.path())).await, "process group alive");
}

// --- stderr, bounded

/// Feeds `input` to a fresh [`StderrLines`] at one instant and returns the logged lines.
fn stderr_lines(input: &[u8], now: std::time::Instant) -> (Vec<String>, Option<String>) {
    let logged = std::cell::RefCell::new(Vec::new());
    let emit = |line: &str| logged.borrow_mut().push(line.to_owned());
    let mut lines = StderrLines::new(now);
    let mut rest = input;
    while !rest.is_empty() {
        let taken = lines.push(rest, now, &emit);
        rest = &rest[taken..];
    }
    lines.finish(now, &emit);
    let summary = lines.summary();
    (logged.into_inner(), summary)
}

#[test]
fn stderr_lines_are_cut_at_the_limit() {
    let now = std::time::Instant::now();
    let at_limit = format!("{}\n", "a".repeat(STDERR_LINE_MAX - 1));
    let (logged, summary) = stderr_lines(at_limit.as_bytes(), now);
    assert_eq!(logged, [at_limit.trim_end()]);
    assert_eq!(summary, None);

    let over = format!("{}\r\nlast", "b".repeat(STDERR_LINE_MAX + 10));
    let (logged, _) = stderr_lines(over.as_bytes(), now);
    assert_eq!(logged.len(), 2);
    assert_eq!(
        logged[0],
        format!("{} [12 more bytes cut]", "b".repeat(STDERR_LINE_MAX))
    );
    assert_eq!(logged[1], "last", "a last line without newline is logged");
}

#[test]
fn stderr_lines_beyond_the_burst_are_counted_not_logged() {
    let now = std::time::Instant::now();
    let burst = STDERR_LINE_BURST as usize;
    let at_limit = "x\n".repeat(burst);
    let (logged, summary) = stderr_lines(at_limit.as_bytes(), now);
    assert_eq!(logged.len(), burst);
    assert_eq!(summary, None);

    let over = "y\n".repeat(burst + 5000);
    let (logged, summary) = stderr_lines(over.as_bytes(), now);
    assert_eq!(logged.len(), burst);
    assert_eq!(
        summary.as_deref(),
        Some(
            format!(
                "5000 stderr lines (10000 bytes) not logged: more than {STDERR_LINE_BURST} \
                 lines, then {STDERR_LINES_PER_SEC} a second"
            )
            .as_str()
        )
    );
}

#[test]
fn stderr_rate_refills_and_says_how_many_were_left_out() {
    let t0 = std::time::Instant::now();
    let logged = std::cell::RefCell::new(Vec::new());
    let emit = |line: &str| logged.borrow_mut().push(line.to_owned());
    let mut lines = StderrLines::new(t0);
    for _ in 0..STDERR_LINE_BURST + 3 {
        lines.push(b"z\n", t0, &emit);
    }
    let t1 = t0 + std::time::Duration::from_secs(1);
    lines.push(b"again\n", t1, &emit);
    assert_eq!(lines.summary(), None, "the count was logged with the line");
    let logged = logged.into_inner();
    assert_eq!(logged.len(), STDERR_LINE_BURST as usize + 1);
    assert_eq!(
        logged.last().map(String::as_str),
        Some("again (3 similar lines suppressed)")
    );
}

#[test]
fn cgi_vars_cannot_add_what_runs_code() {
    for name in [
        "LD_PRELOAD",
        "BASH_FUNC_x%%",
        "BASH_ENV",
        "HTTP_PROXY",
        "SSL_CERT_DIR",
        "PS4",
    ] {
        let err = Cgi::new(CgiOptions {
            allow_vars: vec![name.into()],
            ..CgiOptions::default()
        })
        .unwrap_err();
        assert!(
            err.to_string().starts_with(&format!(
                "runfcgi: option \"cgi_vars\": \"{name}\" is a variable"
            )),
            "{err}"
        );
    }
}

#[tokio::test]
async fn a_script_busy_for_a_moment_runs_one_busy_for_longer_is_a_502() {
    let (dir, cgi) = one_script("printf 'Content-Type: text/plain\\n\\nran'\n", 10);
    let path = dir.path().join("t.sh");
    // Open for writing, the script cannot be executed (ETXTBSY) until the descriptor closes.
    let writer = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    let released = tokio::spawn(async move {
        tokio::time::sleep(EXEC_BUSY_WAIT / 4).await;
        drop(writer);
    });
    let resp = cgi.call(request(&[], Body::empty())).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(text(resp).await, "ran");
    released.await.unwrap();

    let writer = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    let started = Instant::now();
    let resp = cgi.call(request(&[], Body::empty())).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert!(started.elapsed() >= EXEC_BUSY_WAIT, "gave up early");
    drop(writer);
}
