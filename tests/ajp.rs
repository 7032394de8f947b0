//! AJP13 end to end: the axum example behind Apache's mod_proxy_ajp and lighttpd's mod_ajp13.
//!
//! Apache runs the case set of util::cases (as tests/fcgi.rs and tests/scgi.rs do) with
//! `secret=` and `ping=1`, so every request is preceded by a CPING on a pooled connection. On
//! top of it: a chunked upload (no Content-Length: Apache de-chunks and appserver asks for
//! every packet), 100 sequential requests on one reused connection, and a wrong or missing
//! secret → 403.
//!
//! lighttpd's mod_ajp13 is a smaller client (protocols.md §3.6, §6): no connection reuse, body
//! packets without the inner length, only the first path segment as `req_uri`, and no secret
//! over plain HTTP. Its tests pin down what it sends and that its POSTs arrive intact.

use std::io::Read;
use std::process::{Command, Stdio};

use crate::scgi::axum_server;
use crate::util::apache_proxy::ApacheProxy;
use crate::util::cases::{env_lines, env_value, gateway_suite, get_hello, EnvShape, Stack};
use crate::util::client::{chunked_inspect, http_get, http_request, pattern_bytes, sha256_hex};
use crate::util::command::tcp_peers;
use crate::util::lighttpd_gw::{self, LighttpdGw};

/// The secret appserver and Apache share in these tests.
const SECRET: &str = "s3cret-4f1c";

fn apache_ajp() -> Stack {
    let server = axum_server("ajp", false, &[&format!("secret={SECRET}")]);
    let front = ApacheProxy::ajp(server.listen(), &format!("secret={SECRET} ping=1")).into();
    Stack { server, front }
}

// Apache mod_proxy_ajp: req_uri is the encoded path, the query an attribute. AJP carries no
// SCRIPT_NAME, so it is empty and PATH_INFO the decoded path. A GET has no Content-Length.
gateway_suite!(
    apache,
    apache_ajp(),
    EnvShape {
        script_name: "",
        content_length: None,
    }
);

/// `Transfer-Encoding: chunked` upload through Apache: no body packet arrives unasked and no
/// CONTENT_LENGTH is set; appserver asks for each packet until the empty end-of-body packet.
/// curl sends it (an independent client, and one that really chunks).
#[test]
fn apache_chunked_upload() {
    let stack = apache_ajp();
    let dir = tempfile::tempdir().expect("tempdir");
    let body = pattern_bytes((8 << 20) + 12_345);
    let file = dir.path().join("upload.bin");
    std::fs::write(&file, &body).unwrap();
    let head_file = dir.path().join("head.txt");
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "60",
            "-H",
            "Transfer-Encoding: chunked",
        ])
        // No "Expect: 100-continue" round trip: the test is about the body.
        .args([
            "-H",
            "Expect:",
            "-H",
            "Content-Type: application/octet-stream",
        ])
        .arg("-D")
        .arg(&head_file)
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg(format!("http://127.0.0.1:{}/echo", stack.port()))
        .stdin(Stdio::null())
        .output()
        .expect("curl (Debian package curl; scripts/test installs it)");
    let head = std::fs::read_to_string(&head_file).unwrap_or_default();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        stack.logs()
    );
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "{head}{text}\n{}",
        stack.logs()
    );
    let head_lower = head.to_ascii_lowercase();
    assert!(
        head_lower.contains(&format!("x-body-len: {}\r\n", body.len())),
        "{head}"
    );
    assert_eq!(text, sha256_hex(&body), "{}", stack.logs());

    // The handler saw no length: none was known when the request started.
    let (status, seen) = chunked_inspect(stack.port());
    assert_eq!(status, 200, "{seen}\n{}", stack.logs());
    let env: String = seen
        .lines()
        .filter_map(|l| l.strip_prefix("env "))
        .map(|l| format!("{l}\n"))
        .collect();
    let lines = env_lines(&env);
    assert_eq!(env_value(&lines, "CONTENT_LENGTH"), None, "{seen}");
    assert!(!seen.contains("header content-length"), "{seen}");
    assert!(seen.contains("\nbody-len 3\n"), "{seen}");
    assert_eq!(
        env_value(&lines, "HTTP_TRANSFER_ENCODING"),
        Some("chunked"),
        "{seen}"
    );
}

/// 100 requests one after another travel on one AJP connection: Apache pools it (one child
/// process, so one pool), CPINGs it before each request (`ping=1`), and appserver keeps it
/// open after every END_RESPONSE (reuse=1). A server that closed it, or answered a CPING
/// wrongly, would make Apache open a new one: the peer port would change.
#[test]
fn apache_100_sequential_requests_reuse_one_connection() {
    let stack = apache_ajp();
    let port = stack.server.listen().tcp().port();
    let mut first_peer = None;
    for i in 0..100 {
        get_hello(&stack, i);
        let peers = tcp_peers("/proc/net/tcp", port);
        assert_eq!(
            peers.len(),
            1,
            "after request {i}: connections {peers:?}\n{}",
            stack.logs()
        );
        match &first_peer {
            None => first_peer = Some(peers[0].clone()),
            Some(first) => assert_eq!(
                &peers[0],
                first,
                "request {i} came on a new connection\n{}",
                stack.logs()
            ),
        }
    }
    assert_eq!(stack.server.open_connections(), 1);
    let errors = stack.front.error_log();
    assert!(
        !errors.contains("[proxy"),
        "Apache logged proxy trouble:\n{errors}"
    );
}

/// Apache configured with another secret than appserver, or with none: 403 for every
/// request, the handler never runs, and appserver says why.
#[test]
fn apache_wrong_or_missing_secret_is_403() {
    let server = axum_server("ajp", false, &["secret=right-secret"]);
    for (options, why) in [
        ("secret=wrong-secret ping=1", "wrong secret"),
        ("ping=1", "no secret"),
    ] {
        let apache = ApacheProxy::ajp(server.listen(), options);
        for path in ["/", "/env"] {
            let resp = http_get(apache.port(), path);
            assert_eq!(
                resp.status,
                403,
                "{options} {path}: {}\n{}\n{}",
                resp.text(),
                server.log(),
                apache.error_log()
            );
            assert!(
                !resp.text().contains("Hello") && !resp.text().contains("REQUEST_URI"),
                "the handler ran: {}",
                resp.text()
            );
        }
        assert!(
            server.wait_log(why, 1),
            "no {why:?} in the log:\n{}",
            server.log()
        );
    }
}

/// lighttpd's mod_ajp13, AJP without a secret (it cannot send one over plain HTTP, see
/// [`lighttpd_sends_no_secret_over_http`]); appserver listens on loopback.
fn lighttpd_ajp() -> Stack {
    let server = axum_server("ajp", false, &[]);
    let front = LighttpdGw::ajp13(server.listen()).into();
    Stack { server, front }
}

/// A GET through lighttpd: the query arrives raw, a `Content-Length: 0` header comes along
/// (lighttpd adds one to every request), and `req_uri` is what lighttpd calls SCRIPT_NAME:
/// mounted at `/`, only the first path segment. The rest of the path never reaches the app.
#[test]
fn lighttpd_get() {
    let stack = lighttpd_ajp();
    let resp = http_get(stack.port(), "/env?q=caf%C3%A9&x=1%2B1");
    assert_eq!(resp.status, 200, "{}\n{}", resp.text(), stack.logs());
    let lines = env_lines(&resp.text());
    let var = |name| env_value(&lines, name);
    assert_eq!(var("REQUEST_METHOD"), Some("GET"), "{lines:?}");
    assert_eq!(
        var("REQUEST_URI"),
        Some("/env?q=caf%C3%A9&x=1%2B1"),
        "{lines:?}"
    );
    assert_eq!(
        var("QUERY_STRING"),
        Some("q=caf%C3%A9&x=1%2B1"),
        "{lines:?}"
    );
    assert_eq!(var("PATH_INFO"), Some("/env"), "{lines:?}");
    assert_eq!(var("CONTENT_LENGTH"), Some("0"), "{lines:?}");

    // lighttpd 1.4.69 sends `/env` for `/env/café/a b`: the path after the first segment is
    // lost (PATH_INFO in lighttpd's terms), so only single-segment routes work over it.
    let resp = http_get(stack.port(), "/env/caf%C3%A9/a%20b?q=1");
    assert_eq!(resp.status, 200, "{}\n{}", resp.text(), stack.logs());
    let lines = env_lines(&resp.text());
    assert_eq!(
        env_value(&lines, "REQUEST_URI"),
        Some("/env?q=1"),
        "lighttpd's req_uri changed: update docs/protocols/ajp13.md\n{lines:?}"
    );

    // Redirects and cookies come back as for Apache.
    let resp = http_get(stack.port(), "/redirect");
    assert_eq!(resp.status, 302, "{}", stack.logs());
    assert_eq!(resp.header("location"), Some("/target"));
    let resp = http_get(stack.port(), "/cookies");
    assert_eq!(resp.headers_all("set-cookie"), ["a=1", "b=2", "c=3"]);
}

/// POSTs through lighttpd arrive intact despite its body framing (`12 34 <len>` + data, no
/// inner length): an empty body (followed by lighttpd's stray `12 34 00 00`), one packet, and
/// 100 000 bytes over 13 packets, each asked for with GET_BODY_CHUNK.
#[test]
fn lighttpd_post() {
    let stack = lighttpd_ajp();
    let big = pattern_bytes(100_000);
    for body in [&b""[..], &b"hello from lighttpd"[..], &big] {
        let resp = http_request(
            stack.port(),
            "POST",
            "/echo",
            &[("Content-Type", "application/octet-stream")],
            body,
        );
        assert_eq!(
            resp.status,
            200,
            "{} bytes: {}\n{}",
            body.len(),
            resp.text(),
            stack.logs()
        );
        assert_eq!(
            resp.header("x-body-len"),
            Some(body.len().to_string().as_str())
        );
        assert_eq!(resp.text(), sha256_hex(body), "{} bytes", body.len());
    }
}

/// A large body lighttpd's framing cannot be told from the standard one: the first packet
/// holds 8188 data bytes, and these start `1F FA` (8186, its payload length minus 2), which
/// only a binary body can. appserver reads that packet in the standard framing; the next packet
/// then breaks it and the connection closes (lighttpd answers 500). The point: an error, never
/// a wrong body passed off as whole.
#[test]
fn lighttpd_post_with_ambiguous_first_packet_is_refused_not_corrupted() {
    let stack = lighttpd_ajp();
    let mut body = pattern_bytes(20_000);
    body[..2].copy_from_slice(&[0x1f, 0xfa]);
    let (status, text) = post_with_deadline(stack.port(), &body)
        .unwrap_or_else(|e| panic!("POST: {e}\n{}", stack.logs()));
    assert!(
        status != 200 || text == sha256_hex(&body),
        "a corrupted body was accepted: {status} {text}\n{}",
        stack.logs()
    );
}

/// Small binary bodies whose first two bytes equal their length minus 2 (`00 62` + 98 bytes,
/// or the two bytes `00 00`): lighttpd always sends Content-Length, and for bodies under 8188
/// bytes the two framings give different packet lengths, so these are not ambiguous at all.
///
/// Ignored until appserver-proto decides the framing with Content-Length: today
/// `ajp::load_body` looks at the first two bytes only, takes the standard framing, and then
/// asks for the 2 bytes it thinks are missing; lighttpd has sent everything and never answers,
/// so the request hangs. The 2-byte body is taken for Apache's end-of-body packet, and the
/// request fails (truncated body: connection closed, lighttpd answers 500).
#[test]
fn lighttpd_post_small_binary_body_framed_by_content_length() {
    let stack = lighttpd_ajp();
    let mut body = pattern_bytes(100);
    body[..2].copy_from_slice(&[0x00, 0x62]);
    for body in [body, vec![0, 0]] {
        let (status, text) = post_with_deadline(stack.port(), &body)
            .unwrap_or_else(|e| panic!("{} bytes: {e}\n{}", body.len(), stack.logs()));
        assert_eq!(
            (status, text.as_str()),
            (200, sha256_hex(&body).as_str()),
            "{} bytes\n{}",
            body.len(),
            stack.logs()
        );
    }
}

/// `POST /echo` with a 10 s deadline: (status, body). Short, so a request that hangs fails
/// the test in seconds.
fn post_with_deadline(port: u16, body: &[u8]) -> std::io::Result<(u16, String)> {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    write!(
        stream,
        "POST /echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body)?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let (head, text) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, text.to_owned()))
}

/// lighttpd takes the AJP secret from the request environment variable `AJP13_SECRET`
/// (`setenv.add-environment`), but 1.4.69 only builds that environment for https requests:
/// over plain HTTP no secret is sent, so appserver with `secret=` answers 403.
#[test]
fn lighttpd_sends_no_secret_over_http() {
    let server = axum_server("ajp", false, &["secret=lighttpd-secret"]);
    let gateway = lighttpd_gw::gateway(lighttpd_gw::AJP13_SERVER, server.listen());
    let lighttpd = LighttpdGw::start(
        r#""mod_setenv", "mod_ajp13""#,
        &format!("setenv.add-environment = ( \"AJP13_SECRET\" => \"lighttpd-secret\" )\n{gateway}"),
    );
    let resp = http_get(lighttpd.port(), "/");
    assert_eq!(
        resp.status,
        403,
        "lighttpd sent the secret after all: update docs/protocols/ajp13.md\n{}",
        resp.text()
    );
    assert!(server.wait_log("no secret", 1), "{}", server.log());
}
