//! One request model whatever the protocol: a table of requests sent over FastCGI, SCGI and
//! AJP13 with appserver-proto's own client encoders, straight to the axum example's
//! `/inspect` route, must reach the handler identically: method, URI, headers, body and the
//! core CGI variables. Requests captured from nginx, Apache and lighttpd (tests/data/captures)
//! are replayed the same way, so our encoders are not the only source of bytes. Plus SCGI in
//! spawned (fd 0) mode, `appserver probe --protocol scgi|ajp`, and a check that
//! docs/protocols/*.md show the web-server configs the interop tests run.
//!
//! The clients play a web server the way Apache does: no SCRIPT_NAME or PATH_INFO (appserver
//! derives them from REQUEST_URI for all three), `CONTENT_TYPE`/`CONTENT_LENGTH` only when the
//! request has them. The one difference the protocols impose: SCGI requires `CONTENT_LENGTH`
//! on every request, so a request without a body carries `CONTENT_LENGTH=0` (and the handler a
//! `content-length: 0` header) over SCGI only. The comparison checks that and then sets it
//! aside.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::Stdio;
use std::time::Duration;

use appserver_proto::ajp::{
    encode_body_packet, encode_forward_request, Attributes, ClientDecoder, ContainerPacket,
    ForwardRequest,
};
use appserver_proto::params::ParamsBuilder;
use appserver_proto::{Limits, Params};
use bytes::{Bytes, BytesMut};
use nix::sys::signal::Signal;

use crate::scgi::{axum_server, NGINX_SCGI_LOCATION};
use crate::util::apache_proxy::{AJP_PROXY_PASS, FCGI_PROXY_PASS, SCGI_PROXY_PASS};
use crate::util::caddy::CADDY_REVERSE_PROXY;
use crate::util::client::{fcgi_request, sha256_hex, PatternReader, Stream, IO_TIMEOUT};
use crate::util::command::{Server, TestCommand};
use crate::util::h2o::H2O_FASTCGI_CONNECT;
use crate::util::lighttpd_gw::{AJP13_SERVER, SCGI_SERVER};

/// The client's address as every protocol reports it.
const REMOTE_ADDR: &str = "192.0.2.7";
/// The client's port.
const REMOTE_PORT: u16 = 50123;
/// The virtual host.
const SERVER_NAME: &str = "app.example";

/// The CGI variables every protocol must deliver alike.
const CORE_VARS: &[&str] = &[
    "REQUEST_METHOD",
    "REQUEST_URI",
    "QUERY_STRING",
    "SCRIPT_NAME",
    "PATH_INFO",
    "REMOTE_ADDR",
    "REMOTE_PORT",
    "SERVER_NAME",
    "SERVER_PORT",
    "SERVER_PROTOCOL",
    "HTTPS",
    "CONTENT_TYPE",
    "CONTENT_LENGTH",
];

/// One request of the table.
struct Row {
    method: &'static str,
    /// Path and query as on the request line (percent-encoding included).
    uri: &'static str,
    https: bool,
    /// Request headers; `Content-Length` is added for a non-empty body.
    headers: &'static [(&'static str, &'static str)],
    body: Vec<u8>,
}

impl Row {
    fn path(&self) -> &str {
        self.uri.split_once('?').map_or(self.uri, |(p, _)| p)
    }

    fn query(&self) -> &str {
        self.uri.split_once('?').map_or("", |(_, q)| q)
    }

    fn server_port(&self) -> u16 {
        if self.https {
            443
        } else {
            80
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }
}

fn pattern(len: usize) -> Vec<u8> {
    let mut body = vec![0; len];
    PatternReader::new(len as u64)
        .read_exact(&mut body)
        .unwrap();
    body
}

fn rows() -> Vec<Row> {
    vec![
        Row {
            method: "GET",
            uri: "/inspect/caf%C3%A9/a%20b/x%2Fy?q=caf%C3%A9&x=1%2B1&empty=",
            https: false,
            headers: &[
                ("Host", "app.example"),
                ("User-Agent", "protocol-table/1"),
                ("Accept", "text/plain"),
                ("Accept-Language", "de-CH, en;q=0.5"),
                ("Cookie", "a=1; b=2"),
                ("X-Custom-Header", "v1"),
                ("X-Unicode", "caf\u{e9}"),
            ],
            body: Vec::new(),
        },
        Row {
            method: "POST",
            uri: "/inspect/form?debug=1",
            https: false,
            headers: &[
                ("Host", "app.example"),
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Referer", "http://app.example/inspect"),
            ],
            body: b"a=1&b=caf%C3%A9&c=".to_vec(),
        },
        // Over AJP: a first body packet sent unasked, then two asked for with GET_BODY_CHUNK.
        Row {
            method: "PUT",
            uri: "/inspect/blob",
            https: false,
            headers: &[
                ("Host", "app.example"),
                ("Content-Type", "application/octet-stream"),
            ],
            body: pattern(20_000),
        },
        Row {
            method: "DELETE",
            uri: "/inspect/item/42?force=true",
            https: false,
            headers: &[("Host", "app.example"), ("Authorization", "Bearer t0ken")],
            body: Vec::new(),
        },
        // No AJP method code: sent as a stored method (0xFF + attribute 0x0D).
        Row {
            method: "PATCH",
            uri: "/inspect/item/42",
            https: true,
            headers: &[
                ("Host", "app.example"),
                ("Content-Type", "application/json"),
                ("X-Forwarded-Proto", "https"),
            ],
            body: br#"{"name":"caf\u00e9"}"#.to_vec(),
        },
        Row {
            method: "GET",
            uri: "/inspect",
            https: true,
            headers: &[("Host", "app.example:8443")],
            body: Vec::new(),
        },
    ]
}

/// The CGI variables a web server sends for `row` over FastCGI or SCGI.
fn cgi_params(row: &Row) -> Params {
    let mut b = ParamsBuilder::new(Limits::default());
    let mut push = |n: &str, v: &str| b.push(n.as_bytes(), v.as_bytes()).expect("param");
    push("GATEWAY_INTERFACE", "CGI/1.1");
    push("REQUEST_METHOD", row.method);
    push("REQUEST_URI", row.uri);
    push("QUERY_STRING", row.query());
    push("SERVER_PROTOCOL", "HTTP/1.1");
    push("SERVER_NAME", SERVER_NAME);
    push("SERVER_PORT", &row.server_port().to_string());
    push("REMOTE_ADDR", REMOTE_ADDR);
    push("REMOTE_PORT", &REMOTE_PORT.to_string());
    if row.https {
        push("HTTPS", "on");
    }
    if let Some(ct) = row.header("content-type") {
        push("CONTENT_TYPE", ct);
    }
    if !row.body.is_empty() {
        push("CONTENT_LENGTH", &row.body.len().to_string());
    }
    for (name, value) in row.headers {
        if name.eq_ignore_ascii_case("content-type") {
            continue;
        }
        let cgi = format!("HTTP_{}", name.to_ascii_uppercase().replace('-', "_"));
        push(&cgi, value);
    }
    b.finish()
}

/// The `FORWARD_REQUEST` Apache sends for `row`.
fn forward_request(row: &Row) -> ForwardRequest {
    let mut headers: Vec<(Bytes, Bytes)> = row
        .headers
        .iter()
        .map(|(n, v)| {
            (
                Bytes::from_static(n.as_bytes()),
                Bytes::from_static(v.as_bytes()),
            )
        })
        .collect();
    if !row.body.is_empty() {
        headers.push((
            Bytes::from_static(b"Content-Length"),
            Bytes::from(row.body.len().to_string()),
        ));
    }
    ForwardRequest {
        method: Bytes::from_static(row.method.as_bytes()),
        protocol: Bytes::from_static(b"HTTP/1.1"),
        req_uri: Bytes::from(row.path().to_owned()),
        remote_addr: Bytes::from_static(REMOTE_ADDR.as_bytes()),
        remote_host: None,
        server_name: Bytes::from_static(SERVER_NAME.as_bytes()),
        server_port: row.server_port(),
        is_ssl: row.https,
        headers,
        attributes: Attributes {
            query_string: (!row.query().is_empty()).then(|| Bytes::from(row.query().to_owned())),
            req_attributes: vec![(
                Bytes::from_static(b"AJP_REMOTE_PORT"),
                Bytes::from(REMOTE_PORT.to_string()),
            )],
            ..Attributes::default()
        },
        content_length: None,
        chunked: false,
    }
}

/// A response as the client saw it.
#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: Option<String>,
    body: String,
}

/// A CGI response (SCGI): `Status:` line, headers, blank line, body.
fn parse_cgi(raw: &[u8]) -> Answer {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of CGI head: {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut status = 200;
    let mut content_type = None;
    for line in head.lines() {
        let (name, value) = line.split_once(':').expect("CGI header line");
        match name.trim().to_ascii_lowercase().as_str() {
            "status" => status = value.trim()[..3].parse().expect("status code"),
            "content-type" => content_type = Some(value.trim().to_owned()),
            _ => {}
        }
    }
    Answer {
        status,
        content_type,
        body: String::from_utf8_lossy(&raw[end + 4..]).into_owned(),
    }
}

fn send_fcgi(server: &Server, row: &Row) -> Answer {
    let mut stream = Stream::connect(server.listen());
    let resp = fcgi_request(
        &mut stream,
        &cgi_params(row),
        false,
        &mut &row.body[..],
        true,
        &mut |_| {},
    );
    Answer {
        status: resp.status,
        content_type: resp.header("content-type").map(str::to_owned),
        body: resp.text(),
    }
}

fn send_scgi(server: &Server, row: &Row) -> Answer {
    let mut stream = TcpStream::connect(server.listen().tcp()).expect("connect");
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut out = BytesMut::new();
    appserver_proto::scgi::encode_request(&cgi_params(row), row.body.len() as u64, &mut out);
    out.extend_from_slice(&row.body);
    stream.write_all(&out).expect("write");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read");
    parse_cgi(&raw)
}

/// Largest body packet data at the default packet size (8192 - 6).
const AJP_BODY_CHUNK: usize = 8186;

fn send_ajp(server: &Server, row: &Row) -> Answer {
    let mut stream = TcpStream::connect(server.listen().tcp()).expect("connect");
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut out = BytesMut::new();
    encode_forward_request(&forward_request(row), &mut out).expect("request fits a packet");
    let mut rest = &row.body[..];
    if !rest.is_empty() {
        // With a Content-Length, the first packet goes unasked.
        let n = rest.len().min(AJP_BODY_CHUNK);
        encode_body_packet(&rest[..n], &mut out);
        rest = &rest[n..];
    }
    stream.write_all(&out).expect("write");

    let mut decoder = ClientDecoder::new(8192);
    let mut buf = BytesMut::new();
    let mut answer = Answer {
        status: 0,
        content_type: None,
        body: String::new(),
    };
    let mut body = Vec::new();
    let mut chunk = vec![0; 64 * 1024];
    loop {
        while let Some(packet) = decoder.decode(&mut buf).expect("packet from appserver") {
            match packet {
                ContainerPacket::SendHeaders(head) => {
                    answer.status = head.status;
                    answer.content_type = head
                        .headers
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case(b"content-type"))
                        .map(|(_, v)| String::from_utf8_lossy(v).into_owned());
                }
                ContainerPacket::SendBodyChunk(data) => body.extend_from_slice(&data),
                ContainerPacket::GetBodyChunk(n) => {
                    let n = rest.len().min(usize::from(n)).min(AJP_BODY_CHUNK);
                    assert!(n > 0, "GET_BODY_CHUNK beyond Content-Length");
                    let mut pkt = BytesMut::new();
                    encode_body_packet(&rest[..n], &mut pkt);
                    rest = &rest[n..];
                    stream.write_all(&pkt).expect("write body packet");
                }
                ContainerPacket::EndResponse { reuse } => {
                    // The handler read the whole body: the connection may carry another request.
                    assert!(reuse, "END_RESPONSE reuse=0 after a fully read body");
                    assert!(buf.is_empty(), "bytes after END_RESPONSE");
                    answer.body = String::from_utf8_lossy(&body).into_owned();
                    return answer;
                }
                ContainerPacket::CPong => panic!("CPONG without a CPING"),
            }
        }
        let n = stream.read(&mut chunk).expect("read");
        assert!(n > 0, "connection closed before END_RESPONSE");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// What `/inspect` reported.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    /// `method`, `uri`, `version`, `body-len`, `body-sha256`.
    fields: BTreeMap<String, String>,
    /// `header name: value` lines, sorted.
    headers: Vec<String>,
    /// The core CGI variables and every `HTTP_*` one.
    env: BTreeMap<String, String>,
}

fn parse_inspect(body: &str) -> Seen {
    let mut seen = Seen {
        fields: BTreeMap::new(),
        headers: Vec::new(),
        env: BTreeMap::new(),
    };
    for line in body.lines() {
        let (key, rest) = line.split_once(' ').unwrap_or((line, ""));
        match key {
            "header" => seen.headers.push(rest.to_owned()),
            "env" => {
                let (name, value) = rest.split_once('=').unwrap_or((rest, ""));
                if CORE_VARS.contains(&name) || name.starts_with("HTTP_") {
                    seen.env.insert(name.to_owned(), value.to_owned());
                }
            }
            _ => {
                seen.fields.insert(key.to_owned(), rest.to_owned());
            }
        }
    }
    seen
}

/// Every row of the table reaches the handler identically over FastCGI, SCGI and AJP13, and
/// as sent.
#[test]
fn one_request_model_for_all_three_protocols() {
    let fcgi = axum_server("fcgi", false, &[]);
    let scgi = axum_server("scgi", false, &[]);
    let ajp = axum_server("ajp", false, &[]);
    let logs = || {
        format!(
            "--- fcgi ---\n{}--- scgi ---\n{}--- ajp ---\n{}",
            fcgi.log(),
            scgi.log(),
            ajp.log()
        )
    };
    for row in rows() {
        let what = format!("{} {}", row.method, row.uri);
        let answers = [
            ("fcgi", send_fcgi(&fcgi, &row)),
            ("scgi", send_scgi(&scgi, &row)),
            ("ajp", send_ajp(&ajp, &row)),
        ];
        let mut views = Vec::new();
        for (protocol, answer) in answers {
            assert_eq!(
                (answer.status, answer.content_type.as_deref()),
                (200, Some("text/plain; charset=utf-8")),
                "{what} over {protocol}: {}\n{}",
                answer.body,
                logs()
            );
            let mut seen = parse_inspect(&answer.body);
            if protocol == "scgi" && row.body.is_empty() {
                // SCGI's mandatory CONTENT_LENGTH, the one protocol difference: check it,
                // then set it aside.
                assert_eq!(
                    seen.env.remove("CONTENT_LENGTH").as_deref(),
                    Some("0"),
                    "{what}"
                );
                let at = seen.headers.iter().position(|h| h == "content-length: 0");
                seen.headers
                    .remove(at.expect("content-length: 0 over SCGI"));
            }
            views.push((protocol, seen));
        }

        // Identical whichever protocol carried it ...
        let (_, first) = &views[0];
        for (protocol, seen) in &views[1..] {
            assert_eq!(
                seen, first,
                "{what}: {protocol} differs from fcgi\n{protocol}: {seen:#?}\nfcgi: {first:#?}"
            );
        }

        // ... and what was sent.
        let field = |name: &str| first.fields.get(name).map(String::as_str);
        let env = |name: &str| first.env.get(name).map(String::as_str);
        assert_eq!(field("method"), Some(row.method), "{what}");
        assert_eq!(field("uri"), Some(row.uri), "{what}");
        assert_eq!(field("version"), Some("HTTP/1.1"), "{what}");
        assert_eq!(
            field("body-len"),
            Some(row.body.len().to_string().as_str()),
            "{what}"
        );
        assert_eq!(
            field("body-sha256"),
            Some(sha256_hex(&row.body).as_str()),
            "{what}"
        );
        assert_eq!(env("REQUEST_URI"), Some(row.uri), "{what}");
        assert_eq!(env("QUERY_STRING"), Some(row.query()), "{what}");
        assert_eq!(env("SCRIPT_NAME"), Some(""), "{what}");
        let decoded = row
            .path()
            .replace("%C3%A9", "\u{e9}")
            .replace("%20", " ")
            .replace("%2F", "/");
        assert_eq!(env("PATH_INFO"), Some(decoded.as_str()), "{what}");
        assert_eq!(env("REMOTE_ADDR"), Some(REMOTE_ADDR), "{what}");
        assert_eq!(
            env("REMOTE_PORT"),
            Some(REMOTE_PORT.to_string().as_str()),
            "{what}"
        );
        assert_eq!(env("SERVER_NAME"), Some(SERVER_NAME), "{what}");
        assert_eq!(
            env("SERVER_PORT"),
            Some(row.server_port().to_string().as_str()),
            "{what}"
        );
        assert_eq!(env("HTTPS"), row.https.then_some("on"), "{what}");
        assert_eq!(env("CONTENT_TYPE"), row.header("content-type"), "{what}");
        for (name, value) in row.headers {
            let lower = name.to_ascii_lowercase();
            assert!(
                first.headers.contains(&format!("{lower}: {value}")),
                "{what}: header {name} missing from {:?}",
                first.headers
            );
        }
        if !row.body.is_empty() {
            assert!(
                first
                    .headers
                    .contains(&format!("content-length: {}", row.body.len())),
                "{what}: {:?}",
                first.headers
            );
        }
    }
}

/// A request captured from a real web server (tests/data/captures/README.md) and what the
/// handler must see when it is replayed.
struct Captured {
    method: &'static str,
    uri: &'static str,
    body: Vec<u8>,
    /// `SCRIPT_NAME` + `PATH_INFO`: the decoded path, however the server split it.
    path: &'static str,
    /// `CONTENT_LENGTH` as the handler sees it.
    content_length: Option<&'static str>,
}

impl Captured {
    fn check(&self, what: &str, answer: &Answer) {
        assert_eq!(answer.status, 200, "{what}: {}", answer.body);
        let seen = parse_inspect(&answer.body);
        let field = |name: &str| seen.fields.get(name).map(String::as_str);
        let env = |name: &str| seen.env.get(name).map(String::as_str);
        assert_eq!(field("method"), Some(self.method), "{what}: {seen:#?}");
        assert_eq!(field("uri"), Some(self.uri), "{what}: {seen:#?}");
        assert_eq!(
            field("body-len"),
            Some(self.body.len().to_string().as_str()),
            "{what}"
        );
        assert_eq!(
            field("body-sha256"),
            Some(sha256_hex(&self.body).as_str()),
            "{what}"
        );
        assert!(
            seen.headers.contains(&"x-test: captured".to_owned()),
            "{what}: {:?}",
            seen.headers
        );
        let path = format!(
            "{}{}",
            env("SCRIPT_NAME").unwrap_or_default(),
            env("PATH_INFO").unwrap_or_default()
        );
        assert_eq!(path, self.path, "{what}: {seen:#?}");
        assert_eq!(env("CONTENT_LENGTH"), self.content_length, "{what}");
    }
}

fn capture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/data/captures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Replays captured AJP packets on one connection, paced like the web server that sent them:
/// a `CPING` waits for the `CPONG`; a `FORWARD_REQUEST` is followed at once by its first body
/// packet when it announces a `Content-Length` (and by lighttpd's stray empty packet when the
/// length is 0); every other packet waits for a `GET_BODY_CHUNK`. Returns each response and
/// its reuse flag.
fn replay_ajp(server: &Server, bytes: &[u8]) -> Vec<(Answer, bool)> {
    let mut packets = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        assert_eq!(&rest[..2], [0x12, 0x34], "capture out of step");
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        packets.push(&rest[..4 + len]);
        rest = &rest[4 + len..];
    }
    let mut stream = TcpStream::connect(server.listen().tcp()).expect("connect");
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut decoder = ClientDecoder::new(8192);
    let mut buf = BytesMut::new();
    let mut chunk = vec![0; 64 * 1024];
    let mut next = |stream: &mut TcpStream, buf: &mut BytesMut| loop {
        if let Some(packet) = decoder.decode(buf).expect("packet from appserver") {
            return packet;
        }
        let n = stream.read(&mut chunk).expect("read");
        assert!(n > 0, "appserver closed the connection\n{}", server.log());
        buf.extend_from_slice(&chunk[..n]);
    };
    let mut answers = Vec::new();
    let mut i = 0;
    while i < packets.len() {
        let packet = packets[i];
        i += 1;
        stream.write_all(packet).expect("write");
        match packet.get(4) {
            Some(0x0a) => assert_eq!(
                next(&mut stream, &mut buf),
                ContainerPacket::CPong,
                "answer to CPING"
            ),
            Some(0x02) => {
                let req =
                    ForwardRequest::load(&Bytes::copy_from_slice(&packet[4..]), &Limits::default())
                        .expect("captured FORWARD_REQUEST");
                let unasked = match req.content_length {
                    Some(0) => packets.get(i).is_some_and(|p| p.len() == 4),
                    Some(_) => !req.chunked,
                    None => false,
                };
                if unasked {
                    stream.write_all(packets[i]).expect("write");
                    i += 1;
                }
                let mut answer = Answer {
                    status: 0,
                    content_type: None,
                    body: String::new(),
                };
                let mut body = Vec::new();
                loop {
                    match next(&mut stream, &mut buf) {
                        ContainerPacket::SendHeaders(head) => answer.status = head.status,
                        ContainerPacket::SendBodyChunk(data) => body.extend_from_slice(&data),
                        ContainerPacket::GetBodyChunk(_) => {
                            let packet = packets.get(i).expect("GET_BODY_CHUNK beyond the capture");
                            stream.write_all(packet).expect("write");
                            i += 1;
                        }
                        ContainerPacket::EndResponse { reuse } => {
                            answer.body = String::from_utf8_lossy(&body).into_owned();
                            answers.push((answer, reuse));
                            break;
                        }
                        ContainerPacket::CPong => panic!("CPONG without a CPING"),
                    }
                }
            }
            _ => panic!("packet {i} of the capture is not a request: {packet:02x?}"),
        }
    }
    answers
}

/// Requests captured from nginx, Apache and lighttpd (tests/data/captures), replayed straight
/// to appserver: the handler sees what the live interop tests see. These bytes come from the
/// web servers, not from appserver-proto's encoders, so an encoder and a decoder that agree
/// on a misreading cannot hide it.
#[test]
fn captured_web_server_requests_reach_the_handler_intact() {
    let post = |path: &'static str| Captured {
        method: "POST",
        uri: "/inspect/caf%C3%A9?x=1",
        body: b"hello scgi".to_vec(),
        path,
        content_length: Some("10"),
    };
    let scgi = axum_server("scgi", false, &[]);
    for name in [
        "scgi-nginx-post.bin",
        "scgi-apache-post.bin",
        "scgi-lighttpd-post.bin",
    ] {
        let mut stream = TcpStream::connect(scgi.listen().tcp()).expect("connect");
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.write_all(&capture(name)).expect("write");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).expect("read");
        post("/inspect/café").check(name, &parse_cgi(&raw));
    }

    // Apache: three requests on one pooled connection, each after a CPING: a GET, a POST with
    // Content-Length (one packet unasked, one asked for) and a chunked POST.
    let ajp = axum_server("ajp", false, &["secret=capture-secret"]);
    let answers = replay_ajp(&ajp, &capture("ajp-apache-session.bin"));
    let expected = [
        Captured {
            method: "GET",
            uri: "/inspect?x=1",
            body: Vec::new(),
            path: "/inspect",
            content_length: None,
        },
        Captured {
            method: "POST",
            uri: "/inspect/caf%C3%A9?x=1",
            body: pattern(10_000),
            path: "/inspect/café",
            content_length: Some("10000"),
        },
        Captured {
            method: "POST",
            uri: "/inspect/chunked",
            body: b"abc".to_vec(),
            path: "/inspect/chunked",
            content_length: None,
        },
    ];
    assert_eq!(answers.len(), expected.len(), "{}", ajp.log());
    for (i, ((answer, reuse), want)) in answers.iter().zip(&expected).enumerate() {
        want.check(&format!("Apache AJP request {i}"), answer);
        assert!(reuse, "Apache AJP request {i}: END_RESPONSE reuse=0");
    }

    // lighttpd: a GET followed by its stray empty packet, and a POST in its framing; only the
    // first path segment survives as req_uri.
    let ajp = axum_server("ajp", false, &[]);
    let get = replay_ajp(&ajp, &capture("ajp-lighttpd-get.bin"));
    let post = replay_ajp(&ajp, &capture("ajp-lighttpd-post.bin"));
    Captured {
        method: "GET",
        uri: "/inspect?x=1",
        body: Vec::new(),
        path: "/inspect",
        content_length: Some("0"),
    }
    .check("lighttpd AJP GET", &get[0].0);
    Captured {
        method: "POST",
        uri: "/inspect?x=1",
        body: pattern(10_000),
        path: "/inspect",
        content_length: Some("10000"),
    }
    .check("lighttpd AJP POST", &post[0].0);
}

/// Spawned mode over SCGI (lighttpd `bin-path`, spawn-fcgi): the listening socket is fd 0,
/// stdout and stderr lead nowhere, and the info app answers on it.
#[test]
fn scgi_fd0_listening_unix_socket_serves() {
    let mut cmd = TestCommand::appserver();
    let path = cmd.path("spawned.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    cmd.args(["runfcgi", "daemonize=false", "protocol=scgi"])
        .stdin(Stdio::from(OwnedFd::from(listener)))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut server = cmd.spawn();
    // The socket listens already (the test made it): a connection waits in the backlog until
    // appserver accepts, so no readiness signal is needed.
    for i in 0..2 {
        let mut stream = UnixStream::connect(&path).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut params = ParamsBuilder::new(Limits::default());
        for (n, v) in [
            ("REQUEST_METHOD", "GET"),
            ("REQUEST_URI", "/spawned?fd0=yes"),
            ("QUERY_STRING", "fd0=yes"),
            ("SERVER_NAME", "localhost"),
            ("SERVER_PORT", "80"),
            ("REMOTE_ADDR", "127.0.0.1"),
        ] {
            params.push(n.as_bytes(), v.as_bytes()).unwrap();
        }
        let mut out = BytesMut::new();
        appserver_proto::scgi::encode_request(&params.finish(), 0, &mut out);
        stream.write_all(&out).expect("write");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).expect("read");
        let answer = parse_cgi(&raw);
        assert_eq!(answer.status, 200, "request {i}: {}", answer.body);
        assert!(answer.body.contains("scgi"), "{}", answer.body);
        assert!(answer.body.contains("fd0=yes"), "{}", answer.body);
    }
    server.signal(Signal::SIGTERM);
    let status = server
        .wait_exit(Duration::from_secs(10))
        .expect("exit after TERM");
    assert!(status.success(), "exit after TERM: {status}");
}

/// The plain `appserver` binary (the info app) speaking `protocol` on loopback TCP.
fn appserver_on_tcp(protocol: &str) -> Server {
    let mut cmd = TestCommand::appserver();
    cmd.args(["runfcgi", "daemonize=false", "host=127.0.0.1", "port=0"])
        .arg(format!("protocol={protocol}"));
    cmd.start()
}

/// `appserver probe --protocol P ADDR PATH` against appserver speaking P: the info page,
/// exit 0. The protocol flag matters: probing an SCGI server over FastCGI fails.
#[test]
fn probe_speaks_scgi_and_ajp() {
    for protocol in ["scgi", "ajp"] {
        let server = appserver_on_tcp(protocol);
        let addr = server.listen().tcp().to_string();
        let out = TestCommand::appserver()
            .args(["probe", "--protocol", protocol, &addr, "/probe/path?x=1"])
            .output(Duration::from_secs(20));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "probe --protocol {protocol}: {}\nstdout: {stdout}\nstderr: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            server.log()
        );
        assert!(stdout.starts_with("Status: 200"), "{stdout}");
        assert!(stdout.contains(protocol), "{stdout}");
        assert!(stdout.contains("/probe/path"), "{stdout}");
        assert!(stdout.contains("x=1"), "{stdout}");
    }

    let server = appserver_on_tcp("scgi");
    let out = TestCommand::appserver()
        .args(["probe", &server.listen().tcp().to_string()])
        .output(Duration::from_secs(20));
    assert!(
        !out.status.success(),
        "a FastCGI probe of an SCGI server succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// True when the lines of `snippet` (trimmed, blank ones skipped) appear in `doc` in a row.
fn doc_shows(doc: &str, snippet: &str) -> bool {
    let want: Vec<&str> = snippet
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let have: Vec<&str> = doc.lines().map(str::trim).collect();
    have.windows(want.len()).any(|w| w == want.as_slice())
}

fn read_doc(name: &str) -> String {
    let path = format!("{}/docs/protocols/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The web-server snippets in docs/protocols/*.md are the ones the interop tests run, with
/// the example addresses the docs use filled in.
#[test]
fn docs_show_the_configs_the_interop_tests_use() {
    let scgi = read_doc("scgi.md");
    let ajp = read_doc("ajp13.md");
    let fastcgi = read_doc("fastcgi.md");
    let checks = [
        (
            "scgi.md",
            &scgi,
            NGINX_SCGI_LOCATION.replace("@ADDR@", "unix:/run/myapp/app.sock"),
        ),
        (
            "scgi.md",
            &scgi,
            SCGI_PROXY_PASS.replace("@ADDR@", "127.0.0.1:8000"),
        ),
        (
            "scgi.md",
            &scgi,
            SCGI_SERVER
                .replace("@HOST@", "127.0.0.1")
                .replace("@PORT@", "8000"),
        ),
        (
            "ajp13.md",
            &ajp,
            AJP_PROXY_PASS
                .replace("@ADDR@", "127.0.0.1:8009")
                .replace("@OPTIONS@", "secret=CHANGE-ME ping=1"),
        ),
        (
            "ajp13.md",
            &ajp,
            AJP13_SERVER
                .replace("@HOST@", "127.0.0.1")
                .replace("@PORT@", "8009"),
        ),
        (
            "fastcgi.md",
            &fastcgi,
            "location / {\ninclude /etc/nginx/fastcgi_params;\nfastcgi_pass unix:/run/myapp/app.sock;\n}"
                .to_owned(),
        ),
        (
            "fastcgi.md",
            &fastcgi,
            "upstream appserver {\nserver unix:/run/myapp/app.sock;\nkeepalive 8;\n}".to_owned(),
        ),
        (
            "fastcgi.md",
            &fastcgi,
            "location / {\ninclude /etc/nginx/fastcgi_params;\nfastcgi_pass appserver;\nfastcgi_keep_conn on;\n}"
                .to_owned(),
        ),
        (
            "fastcgi.md",
            &fastcgi,
            FCGI_PROXY_PASS.replace("@ADDR@", "127.0.0.1:8000"),
        ),
        (
            "fastcgi.md",
            &fastcgi,
            CADDY_REVERSE_PROXY.replace("@UPSTREAM@", "unix//run/myapp/app.sock"),
        ),
        (
            "fastcgi.md",
            &fastcgi,
            H2O_FASTCGI_CONNECT
                .replace("@PORT@", "/run/myapp/app.sock")
                .replace("@TYPE@", "unix"),
        ),
    ];
    for (name, doc, snippet) in checks {
        assert!(
            doc_shows(doc, &snippet),
            "docs/protocols/{name} does not show the tested config:\n{snippet}"
        );
    }
    // The module lines the Apache and lighttpd harnesses load.
    for module in ["proxy_module", "proxy_fcgi_module"] {
        assert!(
            fastcgi.contains(module),
            "fastcgi.md does not load {module}"
        );
    }
    for module in ["proxy_module", "proxy_scgi_module"] {
        assert!(scgi.contains(module), "scgi.md does not load {module}");
    }
    for module in ["proxy_module", "proxy_ajp_module"] {
        assert!(ajp.contains(module), "ajp13.md does not load {module}");
    }
    assert!(ajp.contains(r#""mod_ajp13""#), "ajp13.md: lighttpd module");
}
