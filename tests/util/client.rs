//! Tiny clients: HTTP/1.1 to talk to a web server, FastCGI to talk to appserver directly.
//!
//! Both are blocking, std-only and deliberately small. The HTTP client sends one request per
//! connection (`Connection: close`) and decodes `Content-Length`, chunked and close-delimited
//! bodies. The FastCGI client uses `appserver_proto`'s client codec and streams both ways:
//! the request body is written from a thread while the response is read and handed to a sink
//! as it arrives, so gigabytes pass through in constant memory.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use appserver_proto::fcgi::{encode_request, encode_stdin, ClientDecoder, ProtocolStatus};
use appserver_proto::fcgi::{ResponseRecord, Role};
use appserver_proto::params::ParamsBuilder;
use appserver_proto::{Limits, Params};
use bytes::BytesMut;
use sha2::{Digest, Sha256};

use super::command::Listen;

/// Read and write timeout of every test connection: a hung server fails the test instead of
/// hanging it.
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// A whole HTTP response.
#[derive(Debug)]
pub(crate) struct HttpResponse {
    /// Status code.
    pub(crate) status: u16,
    /// The status line's reason phrase.
    pub(crate) reason: String,
    /// Header fields in order, names lower-cased.
    pub(crate) headers: Vec<(String, String)>,
    /// Decoded body.
    pub(crate) body: Vec<u8>,
}

impl HttpResponse {
    /// The first header named `name` (lower case).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every header named `name` (lower case), in order.
    pub(crate) fn headers_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The body as (lossy) UTF-8.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `GET path` on `127.0.0.1:port`.
pub(crate) fn http_get(port: u16, path: &str) -> HttpResponse {
    http_request(port, "GET", path, &[], &[])
}

/// One request on its own connection. `path` is sent as is (percent-encoding included);
/// `Host: localhost` unless `headers` name another.
pub(crate) fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    try_http_request(port, method, path, headers, body)
        .unwrap_or_else(|e| panic!("{method} {path} on port {port}: {e}"))
}

/// [`http_request`] returning IO and framing errors instead of panicking.
pub(crate) fn try_http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<HttpResponse> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        head.push_str("Host: localhost\r\n");
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_http_response(&raw, method == "HEAD")
}

fn parse_http_response(raw: &[u8], head_only: bool) -> io::Result<HttpResponse> {
    let end = find(raw, b"\r\n\r\n").ok_or_else(|| bad("no end of header block"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("non-UTF-8 header block"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let status = parts
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(&format!("bad status line {status_line:?}")))?;
    let reason = parts.next().unwrap_or_default().to_owned();
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| bad(&format!("bad header line {line:?}")))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let rest = &raw[end + 4..];
    let mut resp = HttpResponse {
        status,
        reason,
        headers,
        body: Vec::new(),
    };
    if head_only {
        return Ok(resp);
    }
    resp.body = if resp
        .header("transfer-encoding")
        .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
    {
        dechunk(rest)?
    } else if let Some(len) = resp.header("content-length") {
        let len: usize = len.parse().map_err(|_| bad("bad Content-Length"))?;
        if rest.len() < len {
            return Err(bad(&format!(
                "body of {} bytes, Content-Length {len}",
                rest.len()
            )));
        }
        rest[..len].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(resp)
}

fn dechunk(mut src: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = find(src, b"\r\n").ok_or_else(|| bad("truncated chunk size"))?;
        let size_field = std::str::from_utf8(&src[..eol]).map_err(|_| bad("bad chunk size"))?;
        let size_hex = size_field.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| bad("bad chunk size"))?;
        src = &src[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if src.len() < size + 2 {
            return Err(bad("truncated chunk"));
        }
        out.extend_from_slice(&src[..size]);
        src = &src[size + 2..];
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}

/// Lower-case hex of a SHA-256 digest.
pub(crate) fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of `data`, lower-case hex.
pub(crate) fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// One period of the `/bytes/{n}` and upload pattern: byte `i` is `i % 251`.
fn period() -> &'static [u8; 251] {
    static PERIOD: std::sync::OnceLock<[u8; 251]> = std::sync::OnceLock::new();
    PERIOD.get_or_init(|| std::array::from_fn(|i| i as u8))
}

/// Fills `buf` with the pattern starting at stream offset `offset` (slice copies, so a
/// debug build still produces hundreds of MB/s).
pub(crate) fn pattern_fill(offset: u64, buf: &mut [u8]) {
    let period = period();
    let mut at = (offset % 251) as usize;
    let mut done = 0;
    while done < buf.len() {
        let n = (251 - at).min(buf.len() - done);
        buf[done..done + n].copy_from_slice(&period[at..at + n]);
        done += n;
        at = 0;
    }
}

/// The first `len` bytes of the pattern, as one buffer (what a [`PatternReader`] of `len`
/// bytes produces).
pub(crate) fn pattern_bytes(len: usize) -> Vec<u8> {
    let mut bytes = vec![0; len];
    pattern_fill(0, &mut bytes);
    bytes
}

/// True when `data` is the pattern starting at stream offset `offset`.
pub(crate) fn pattern_matches(offset: u64, data: &[u8]) -> bool {
    let period = period();
    let mut at = (offset % 251) as usize;
    let mut done = 0;
    while done < data.len() {
        let n = (251 - at).min(data.len() - done);
        if data[done..done + n] != period[at..at + n] {
            return false;
        }
        done += n;
        at = 0;
    }
    true
}

/// `n` bytes of the pattern, produced as they are read: a request body of any size that
/// costs one buffer.
#[derive(Debug)]
pub(crate) struct PatternReader {
    offset: u64,
    len: u64,
}

impl PatternReader {
    /// `len` bytes of the pattern.
    pub(crate) fn new(len: u64) -> PatternReader {
        PatternReader { offset: 0, len }
    }
}

impl Read for PatternReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.len - self.offset).min(buf.len() as u64) as usize;
        pattern_fill(self.offset, &mut buf[..n]);
        self.offset += n as u64;
        Ok(n)
    }
}

/// A connected stream to appserver, TCP or unix.
#[derive(Debug)]
pub(crate) enum Stream {
    /// TCP.
    Tcp(TcpStream),
    /// AF_UNIX.
    Unix(UnixStream),
}

impl Stream {
    /// Connects to a server's listener.
    pub(crate) fn connect(listen: &Listen) -> Stream {
        let stream = match listen {
            Listen::Tcp(addr) => Stream::Tcp(TcpStream::connect(addr).expect("connect")),
            Listen::Unix(path) => Stream::Unix(
                UnixStream::connect(path)
                    .unwrap_or_else(|e| panic!("connect {}: {e}", path.display())),
            ),
            Listen::Fd0 => panic!("cannot connect to fd0 by address"),
        };
        stream.set_timeouts(IO_TIMEOUT);
        stream
    }

    /// Sets read and write timeouts.
    pub(crate) fn set_timeouts(&self, timeout: Duration) {
        match self {
            Stream::Tcp(s) => {
                s.set_read_timeout(Some(timeout)).expect("timeout");
                s.set_write_timeout(Some(timeout)).expect("timeout");
            }
            Stream::Unix(s) => {
                s.set_read_timeout(Some(timeout)).expect("timeout");
                s.set_write_timeout(Some(timeout)).expect("timeout");
            }
        }
    }

    fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

/// The CGI variables a typical web server sends for `method uri`, plus `extra`.
pub(crate) fn cgi_params(method: &str, uri: &str, extra: &[(&str, &str)]) -> Params {
    let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
    let mut b = ParamsBuilder::new(Limits::default());
    let mut push = |n: &str, v: &str| b.push(n.as_bytes(), v.as_bytes()).expect("param");
    push("QUERY_STRING", query);
    push("REQUEST_METHOD", method);
    push("CONTENT_TYPE", "");
    push("SCRIPT_NAME", path);
    push("REQUEST_URI", uri);
    push("DOCUMENT_URI", path);
    push("SERVER_PROTOCOL", "HTTP/1.1");
    push("REQUEST_SCHEME", "http");
    push("GATEWAY_INTERFACE", "CGI/1.1");
    push("REMOTE_ADDR", "127.0.0.1");
    push("REMOTE_PORT", "40000");
    push("SERVER_ADDR", "127.0.0.1");
    push("SERVER_PORT", "80");
    push("SERVER_NAME", "localhost");
    push("HTTP_HOST", "localhost");
    for (n, v) in extra {
        push(n, v);
    }
    b.finish()
}

/// What came back for one FastCGI request.
#[derive(Debug, Default)]
pub(crate) struct FcgiResponse {
    /// From `Status:`; 302 for a bare `Location:`, else 200 (the CGI rules nginx applies).
    pub(crate) status: u16,
    /// CGI header fields in order, names lower-cased (`Status` included).
    pub(crate) headers: Vec<(String, String)>,
    /// Body bytes, when the request asked to keep them.
    pub(crate) body: Vec<u8>,
    /// Body length.
    pub(crate) body_len: u64,
    /// STDERR bytes.
    pub(crate) stderr: Vec<u8>,
    /// `appStatus` of END_REQUEST.
    pub(crate) app_status: u32,
    /// `protocolStatus` of END_REQUEST.
    pub(crate) protocol_status: Option<ProtocolStatus>,
    /// Bytes the client wrote on STDIN.
    pub(crate) stdin_sent: u64,
}

impl FcgiResponse {
    /// The first header named `name` (lower case).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as (lossy) UTF-8.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One FastCGI request over `stream`, request id 1.
///
/// The body is copied from `body` in 32 KiB STDIN records by a second thread while this one
/// reads the response, as a web server does; each body chunk of the response goes to `sink`,
/// and is also kept in `FcgiResponse::body` when `keep_body` is set.
pub(crate) fn fcgi_request(
    stream: &mut Stream,
    params: &Params,
    keep_conn: bool,
    body: &mut (dyn Read + Send),
    keep_body: bool,
    sink: &mut dyn FnMut(&[u8]),
) -> FcgiResponse {
    let mut writer = stream.try_clone().expect("clone stream");
    thread::scope(|scope| {
        let sender = scope.spawn(move || -> io::Result<u64> {
            let mut out = BytesMut::new();
            encode_request(1, Role::Responder, keep_conn, params, &mut out);
            writer.write_all(&out)?;
            let mut chunk = vec![0; 32 * 1024];
            let mut sent = 0;
            loop {
                let n = body.read(&mut chunk)?;
                out.clear();
                encode_stdin(1, &chunk[..n], &mut out);
                writer.write_all(&out)?;
                if n == 0 {
                    return Ok(sent);
                }
                sent += n as u64;
            }
        });
        let mut resp = read_response(stream, keep_body, sink);
        match sender.join().expect("stdin writer thread") {
            Ok(sent) => resp.stdin_sent = sent,
            // A server may answer before reading the whole body and close; the response
            // is what the test checks then.
            Err(e) if resp.protocol_status.is_some() => {
                eprintln!("stdin writer stopped early: {e}");
            }
            Err(e) => panic!("writing the request: {e}"),
        }
        resp
    })
}

/// A GET (empty body) over `stream`, keeping the body.
pub(crate) fn fcgi_get(stream: &mut Stream, params: &Params, keep_conn: bool) -> FcgiResponse {
    fcgi_request(
        stream,
        params,
        keep_conn,
        &mut io::empty(),
        true,
        &mut |_| {},
    )
}

/// Reads records until END_REQUEST for id 1.
pub(crate) fn read_response(
    stream: &mut Stream,
    keep_body: bool,
    sink: &mut dyn FnMut(&[u8]),
) -> FcgiResponse {
    let mut decoder = ClientDecoder::default();
    let mut buf = BytesMut::with_capacity(128 * 1024);
    let mut resp = FcgiResponse::default();
    // Header bytes until the blank line; afterwards STDOUT is body.
    let mut head: Option<Vec<u8>> = Some(Vec::new());
    let mut read_buf = vec![0; 128 * 1024];
    loop {
        while let Some(record) = decoder
            .decode(&mut buf)
            .unwrap_or_else(|e| panic!("bad record from appserver: {e}"))
        {
            match record {
                ResponseRecord::Stdout { id, data } => {
                    assert_eq!(id, 1, "STDOUT for request id {id}");
                    let body = match head.as_mut() {
                        Some(h) => {
                            h.extend_from_slice(&data);
                            match split_head(h) {
                                Some((fields, rest)) => {
                                    parse_cgi_head(&fields, &mut resp);
                                    head = None;
                                    rest
                                }
                                None => continue,
                            }
                        }
                        None => data.to_vec(),
                    };
                    if !body.is_empty() {
                        resp.body_len += body.len() as u64;
                        sink(&body);
                        if keep_body {
                            resp.body.extend_from_slice(&body);
                        }
                    }
                }
                ResponseRecord::Stderr { id, data } => {
                    assert_eq!(id, 1, "STDERR for request id {id}");
                    resp.stderr.extend_from_slice(&data);
                }
                ResponseRecord::EndRequest {
                    id,
                    app_status,
                    protocol_status,
                } => {
                    assert_eq!(id, 1, "END_REQUEST for request id {id}");
                    assert!(
                        buf.is_empty(),
                        "{} bytes after END_REQUEST (nginx would drop the connection)",
                        buf.len()
                    );
                    if let Some(h) = head {
                        assert!(
                            protocol_status != ProtocolStatus::RequestComplete,
                            "END_REQUEST before the end of the CGI header block: {:?}",
                            String::from_utf8_lossy(&h)
                        );
                    }
                    resp.app_status = app_status;
                    resp.protocol_status = Some(protocol_status);
                    return resp;
                }
                other => panic!("unexpected record from appserver: {other:?}"),
            }
        }
        let n = stream
            .read(&mut read_buf)
            .unwrap_or_else(|e| panic!("reading the response: {e}"));
        assert!(n != 0, "connection closed before END_REQUEST");
        buf.extend_from_slice(&read_buf[..n]);
    }
}

/// Splits a CGI header block from the body bytes that followed it in the same records.
fn split_head(h: &[u8]) -> Option<(String, Vec<u8>)> {
    let (end, sep) = match (find(h, b"\r\n\r\n"), find(h, b"\n\n")) {
        (Some(a), Some(b)) if b < a => (b, 2),
        (Some(a), _) => (a, 4),
        (None, Some(b)) => (b, 2),
        (None, None) => return None,
    };
    let fields = String::from_utf8_lossy(&h[..end]).into_owned();
    Some((fields, h[end + sep..].to_vec()))
}

fn parse_cgi_head(fields: &str, resp: &mut FcgiResponse) {
    for line in fields.lines() {
        let (name, value) = line
            .split_once(':')
            .unwrap_or_else(|| panic!("CGI header line without a colon: {line:?}"));
        resp.headers
            .push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    resp.status = match resp.header("status") {
        Some(s) => s
            .get(..3)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("bad Status: {s:?}")),
        None if resp.header("location").is_some() => 302,
        None => 200,
    };
}

/// `POST /inspect` with a 3-byte body sent `Transfer-Encoding: chunked` by curl (an
/// independent client, and one that really chunks): (status, body).
pub(crate) fn chunked_inspect(port: u16) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30", "-w", "\n%{http_code}"])
        .args(["-H", "Transfer-Encoding: chunked", "-H", "Expect:"])
        .args(["--data-binary", "abc", "-X", "POST"])
        .arg(format!("http://127.0.0.1:{port}/inspect"))
        .stdin(Stdio::null())
        .output()
        .expect("curl (Debian package curl; scripts/test installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", ""));
    (status.parse().unwrap_or(0), body.to_owned())
}
