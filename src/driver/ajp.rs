//! The AJP13 driver: one persistent connection's socket IO around
//! `appserver_proto::ajp::Connection`.
//!
//! A `FORWARD_REQUEST` becomes the same CGI variables Apache would have sent over FastCGI
//! ([`cgi_params`]), so handlers cannot tell AJP from the other protocols. The body arrives in
//! packets the connection accounts for: the first unrequested, the rest one `GET_BODY_CHUNK`
//! at a time, asked for only while the handler's body channel has room (backpressure). The
//! response goes out as `SEND_HEADERS`, `SEND_BODY_CHUNK`s and `END_RESPONSE`; reuse is offered
//! only when the body was read to its end, otherwise the connection closes, so no body byte is
//! ever taken for a request. Forbidden requests (secret, attribute allowlist) get a 403,
//! requests beyond `maxchildren` a 503. CPING is answered by the connection itself.

use std::fmt::Display;
use std::sync::Arc;

use appserver_proto::ajp::{AjpConfig, Connection, Event, ForwardRequest};
use appserver_proto::limits::MAX_QUEUED_OUTPUT;
use appserver_proto::params::{Params, ParamsBuilder};
use appserver_proto::{Limits, ProtocolError};
use bytes::BytesMut;
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::exchange::{self, Exchange, Progress};
use super::{awaiting_body, close_lingering, write_some, ConnError, Shared, READ_BUF_SIZE};
use crate::response::plain;
use crate::{Handler, Response};

/// Serves one AJP13 connection until the web server closes it, a response ends with
/// reuse=0, an error occurs, the idle timeout passes, or shutdown is requested while idle.
pub async fn serve<S, H>(
    io: S,
    peer: impl Display + Send + Sync,
    shared: Arc<Shared<H>>,
    config: AjpConfig,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
    H: Handler,
{
    let mut exchange = None;
    let result = run(io, &peer, &shared, config, &mut exchange).await;
    super::finish("ajp", &peer, result, exchange);
}

async fn run<S, H>(
    io: S,
    peer: &(dyn Display + Sync),
    shared: &Arc<Shared<H>>,
    config: AjpConfig,
    exchange: &mut Option<Exchange>,
) -> Result<(), ConnError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
    H: Handler,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let limits = config.limits();
    let mut conn = Connection::new(config);
    let mut rbuf = BytesMut::with_capacity(READ_BUF_SIZE);
    let mut wbuf = BytesMut::new();
    let mut read_closed = false;
    let mut closing = false;
    let mut deadline = Instant::now() + shared.idle_timeout;
    let mut body_deadline = deadline;
    let mut partial_since: Option<Instant> = None;

    loop {
        while let Some(event) = conn.poll_event() {
            match event {
                Event::Request(req) => {
                    *exchange = Some(start(shared, &req, &limits, peer));
                }
                Event::Forbidden { reason } => {
                    tracing::warn!(peer = %peer, "ajp request refused with 403: {reason}");
                    *exchange = Some(Exchange::respond(
                        plain(StatusCode::FORBIDDEN, "Forbidden"),
                        None,
                    ));
                }
                Event::Body(data) => {
                    if let Some(ex) = exchange.as_mut() {
                        ex.push_body(data);
                    }
                }
                Event::BodyEnd => {
                    if let Some(ex) = exchange.as_mut() {
                        ex.end_body();
                    }
                }
            }
        }
        // Ask for the next body packet only while the handler's channel has room.
        if exchange
            .as_ref()
            .is_some_and(|ex| !ex.is_blocked() && !ex.body_done())
        {
            conn.request_body_chunk();
        }
        conn.poll_transmit(&mut wbuf);

        let flushed = wbuf.is_empty();
        // A request that has started arriving is served even during a stop.
        let stop = closing && rbuf.is_empty();
        if flushed && exchange.is_none() && (conn.wants_close() || read_closed || stop) {
            if conn.wants_close() && !read_closed {
                // Body packets the handler did not ask for may still be arriving.
                close_lingering(&mut rd, &mut wr, &mut rbuf).await;
            } else {
                let _ = wr.shutdown().await;
            }
            return Ok(());
        }

        let can_read = !read_closed
            && !exchange.as_ref().is_some_and(Exchange::is_blocked)
            && rbuf.len() < READ_BUF_SIZE;
        let room = wbuf.len() + conn.queued_output() < MAX_QUEUED_OUTPUT;
        let waiting = exchange.is_none();
        let stalled_body = !read_closed && awaiting_body(exchange);
        // A request head that started arriving must complete within header_timeout.
        let idle_until = match partial_since {
            Some(t) if waiting && !rbuf.is_empty() => deadline.min(t + shared.header_timeout),
            _ => deadline,
        };

        tokio::select! {
            written = write_some(&mut wr, &mut wbuf), if !flushed => written?,
            read = rd.read_buf(&mut rbuf), if can_read => {
                if read? == 0 {
                    read_closed = true;
                    match conn.handle_eof(&rbuf) {
                        Ok(()) => {}
                        Err(ProtocolError::TruncatedBody { .. }) => {
                            tracing::debug!(peer = %peer, "web server closed the connection mid-body");
                            return Ok(());
                        }
                        Err(e) => return Err(e.into()),
                    }
                    if exchange.is_some() {
                        // Apache closed a connection with a request in flight: the client
                        // went away.
                        return Ok(());
                    }
                } else {
                    body_deadline = Instant::now() + shared.idle_timeout;
                    if partial_since.is_none() || rbuf.is_empty() {
                        partial_since = Some(Instant::now());
                    }
                    conn.handle_input(&mut rbuf)?;
                    if rbuf.is_empty() {
                        partial_since = None;
                    }
                }
            }
            progress = exchange::progress(exchange, room, peer), if !waiting => {
                match progress {
                    Progress::BodyMoved => {}
                    Progress::Response(resp) => {
                        let body = send_headers(&mut conn, resp, peer);
                        if let Some(ex) = exchange.as_mut() {
                            ex.stream(body);
                        }
                    }
                    Progress::Data(data) => conn.send_body(&data),
                    Progress::Done => {
                        *exchange = None;
                        conn.end_response();
                        deadline = Instant::now() + shared.idle_timeout;
                    }
                    // Closing without END_RESPONSE makes Apache fail the request instead of
                    // passing a truncated body off as whole.
                    Progress::Failed(e) => return Err(ConnError::ResponseBody(e)),
                }
            }
            () = tokio::time::sleep_until(body_deadline), if stalled_body => {
                return Err(ConnError::BodyStalled(shared.idle_timeout));
            }
            () = tokio::time::sleep_until(idle_until), if waiting => {
                // Apache keeps pooled connections open; an idle one costs a task, no thread,
                // and is closed here after idle_timeout (Apache reconnects as needed).
                return Ok(());
            }
            () = shared.shutdown.cancelled(), if !closing => closing = true,
        }
    }
}

/// Admits the request (503 beyond `maxchildren`) and starts its handler.
fn start<H: Handler>(
    shared: &Arc<Shared<H>>,
    req: &ForwardRequest,
    limits: &Limits,
    peer: &(dyn Display + Sync),
) -> Exchange {
    let Some(admission) = shared.try_admit() else {
        return Exchange::overloaded(shared, peer);
    };
    match cgi_params(req, limits) {
        Ok(params) => Exchange::start(shared, admission, params, peer),
        Err(e) => {
            tracing::warn!(peer = %peer, "ajp request refused with 400: {e}");
            Exchange::respond(
                plain(StatusCode::BAD_REQUEST, "Bad Request"),
                Some(admission),
            )
        }
    }
}

/// Queues `SEND_HEADERS` for `resp` and returns its body; a head too large for one packet is
/// replaced by a 500 (and a log line).
fn send_headers(conn: &mut Connection, resp: Response, peer: &(dyn Display + Sync)) -> crate::Body {
    let (parts, body) = resp.into_parts();
    let headers: Vec<(&[u8], &[u8])> = parts
        .headers
        .iter()
        .filter(|(name, _)| !crate::response::is_hop_by_hop(name))
        .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
        .collect();
    let reason = crate::response::reason(&parts);
    match conn.send_headers(parts.status.as_u16(), reason, &headers) {
        Ok(()) => body,
        Err(e) => {
            tracing::error!(peer = %peer, "response head does not fit one AJP packet ({e}): answering 500");
            let fallback = plain(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error");
            let (parts, body) = fallback.into_parts();
            let headers: Vec<(&[u8], &[u8])> = parts
                .headers
                .iter()
                .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
                .collect();
            // A two-header head always fits the smallest packet.
            let _ = conn.send_headers(500, b"Internal Server Error", &headers);
            body
        }
    }
}

/// The CGI variables Apache's mod_proxy_fcgi would send for the request this
/// `FORWARD_REQUEST` describes, so one request model serves all protocols.
///
/// `REQUEST_URI` is `req_uri` plus the query string; `SCRIPT_NAME` is not sent (AJP carries no
/// mount point), so the script-name rule derives `PATH_INFO` from the decoded path. Headers
/// become `HTTP_*` (names upper-cased, `-` → `_`), except `Content-Type`/`Content-Length`,
/// which become `CONTENT_TYPE`/`CONTENT_LENGTH`; a repeated header is joined with `, `.
/// `AJP_REMOTE_PORT` → `REMOTE_PORT`, `AJP_LOCAL_ADDR` → `SERVER_ADDR`, `is_ssl` →
/// `HTTPS=on`, and the TLS attributes become mod_ssl's `SSL_*` names.
pub fn cgi_params(req: &ForwardRequest, limits: &Limits) -> Result<Params, ProtocolError> {
    let mut p = ParamsBuilder::new(*limits);
    let a = &req.attributes;
    let query = a.query_string.as_deref().unwrap_or(b"");
    // lighttpd with fix-root-scriptname sends an empty req_uri for the mount's root.
    let mut uri = if req.req_uri.is_empty() {
        b"/".to_vec()
    } else {
        req.req_uri.to_vec()
    };
    if !query.is_empty() {
        uri.push(b'?');
        uri.extend_from_slice(query);
    }
    let content_length = req.header(b"content-length");
    if let Some(len) = content_length.filter(|_| !req.chunked) {
        p.push(b"CONTENT_LENGTH", len)?;
    }
    if let Some(ct) = req.header(b"content-type") {
        p.push(b"CONTENT_TYPE", ct)?;
    }
    p.push(b"GATEWAY_INTERFACE", b"CGI/1.1")?;
    p.push(b"REQUEST_METHOD", &req.method)?;
    p.push(b"REQUEST_URI", &uri)?;
    p.push(b"QUERY_STRING", query)?;
    p.push(b"SERVER_PROTOCOL", &req.protocol)?;
    p.push(b"SERVER_NAME", &req.server_name)?;
    p.push(b"SERVER_PORT", req.server_port.to_string().as_bytes())?;
    p.push(b"REMOTE_ADDR", &req.remote_addr)?;
    if let Some(port) = req.remote_port() {
        p.push(b"REMOTE_PORT", port.to_string().as_bytes())?;
    }
    if let Some(host) = req.remote_host.as_deref().filter(|h| !h.is_empty()) {
        p.push(b"REMOTE_HOST", host)?;
    }
    if let Some(local) = req.req_attribute(b"AJP_LOCAL_ADDR") {
        p.push(b"SERVER_ADDR", local)?;
    }
    if let Some(user) = &a.remote_user {
        p.push(b"REMOTE_USER", user)?;
    }
    if let Some(auth) = &a.auth_type {
        p.push(b"AUTH_TYPE", auth)?;
    }
    if req.is_ssl {
        p.push(b"HTTPS", b"on")?;
        if let Some(v) = req.req_attribute(b"AJP_SSL_PROTOCOL") {
            p.push(b"SSL_PROTOCOL", v)?;
        }
        if let Some(v) = &a.ssl_cipher {
            p.push(b"SSL_CIPHER", v)?;
        }
        if let Some(v) = &a.ssl_session {
            p.push(b"SSL_SESSION_ID", v)?;
        }
        if let Some(v) = a.ssl_key_size {
            p.push(b"SSL_CIPHER_USEKEYSIZE", v.to_string().as_bytes())?;
        }
        if let Some(v) = &a.ssl_cert {
            p.push(b"SSL_CLIENT_CERT", v)?;
        }
    }
    // Headers, merged per name in first-seen order.
    let mut seen: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(req.headers.len());
    for (name, value) in &req.headers {
        if name.eq_ignore_ascii_case(b"content-length")
            || name.eq_ignore_ascii_case(b"content-type")
        {
            continue;
        }
        let mut cgi = Vec::with_capacity(name.len() + 5);
        cgi.extend_from_slice(b"HTTP_");
        cgi.extend(name.iter().map(|&b| {
            if b == b'-' {
                b'_'
            } else {
                b.to_ascii_uppercase()
            }
        }));
        match seen.iter_mut().find(|(n, _)| *n == cgi) {
            Some((_, v)) => {
                v.extend_from_slice(b", ");
                v.extend_from_slice(value);
            }
            None => seen.push((cgi, value.to_vec())),
        }
    }
    for (name, value) in &seen {
        p.push(name, value)?;
    }
    Ok(p.finish())
}

#[cfg(test)]
mod tests {
    use appserver_proto::ajp::{
        encode_body_packet, encode_cping, encode_forward_request, Attributes, ClientDecoder,
        ContainerPacket,
    };
    use bytes::Bytes;
    use tokio::io::DuplexStream;

    use super::*;
    use crate::request::Env;
    use crate::{Body, BoxError, Request};

    /// Answers with the request line, the body and a few CGI variables.
    struct Echo;
    impl Handler for Echo {
        async fn call(&self, req: Request) -> Result<Response, BoxError> {
            let env = req.extensions().get::<Env>().cloned().unwrap_or_default();
            let vars: Vec<String> = ["REMOTE_PORT", "HTTPS", "HTTP_X_A", "PATH_INFO"]
                .iter()
                .map(|n| format!("{n}={}", env.get_str(n).unwrap_or("-")))
                .collect();
            let head = format!("{} {} {}", req.method(), req.uri(), vars.join(" "));
            if req.uri().path() == "/ignore-body" {
                return Ok(Response::new(Body::from(head)));
            }
            let body = req.into_body().collect_bytes().await?;
            Ok(Response::new(Body::from(format!(
                "{head} body={}",
                String::from_utf8_lossy(&body)
            ))))
        }
    }

    fn spawn(config: AjpConfig) -> DuplexStream {
        let shared = super::super::test_shared(Echo, 8, "ajp");
        let (client, server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(serve(server, "test-peer", shared, config));
        client
    }

    fn forward(method: &str, uri: &str, body_len: Option<usize>, secret: Option<&str>) -> BytesMut {
        let mut headers = vec![
            (
                Bytes::from_static(b"host"),
                Bytes::from_static(b"localhost"),
            ),
            (Bytes::from_static(b"X-A"), Bytes::from_static(b"1")),
            (Bytes::from_static(b"x-a"), Bytes::from_static(b"2")),
        ];
        if let Some(n) = body_len {
            headers.push((
                Bytes::from_static(b"content-length"),
                Bytes::from(n.to_string()),
            ));
        }
        let req = ForwardRequest {
            method: Bytes::from(method.to_owned()),
            protocol: Bytes::from_static(b"HTTP/1.1"),
            req_uri: Bytes::from(uri.to_owned()),
            remote_addr: Bytes::from_static(b"127.0.0.1"),
            remote_host: None,
            server_name: Bytes::from_static(b"localhost"),
            server_port: 80,
            is_ssl: true,
            headers,
            attributes: Attributes {
                query_string: Some(Bytes::from_static(b"q=1")),
                secret: secret.map(|s| Bytes::from(s.to_owned())),
                req_attributes: vec![(
                    Bytes::from_static(b"AJP_REMOTE_PORT"),
                    Bytes::from_static(b"54321"),
                )],
                ..Attributes::default()
            },
            content_length: None,
            chunked: false,
        };
        let mut out = BytesMut::new();
        encode_forward_request(&req, &mut out).unwrap();
        out
    }

    /// Reads packets until END_RESPONSE, answering GET_BODY_CHUNK from `body`.
    async fn response(io: &mut DuplexStream, mut body: &[u8]) -> (u16, String, bool) {
        let mut dec = ClientDecoder::new(8192);
        let mut buf = BytesMut::new();
        let (mut status, mut out) = (0, Vec::new());
        loop {
            while let Some(p) = dec.decode(&mut buf).unwrap() {
                match p {
                    ContainerPacket::SendHeaders(h) => status = h.status,
                    ContainerPacket::SendBodyChunk(d) => out.extend_from_slice(&d),
                    ContainerPacket::GetBodyChunk(n) => {
                        let n = usize::from(n).min(body.len());
                        let mut pkt = BytesMut::new();
                        encode_body_packet(&body[..n], &mut pkt);
                        body = &body[n..];
                        // The server may already have answered and closed (unread body).
                        let _ = io.write_all(&pkt).await;
                    }
                    ContainerPacket::EndResponse { reuse } => {
                        return (status, String::from_utf8(out).unwrap(), reuse)
                    }
                    ContainerPacket::CPong => {}
                }
            }
            assert!(io.read_buf(&mut buf).await.unwrap() > 0, "closed early");
        }
    }

    #[tokio::test]
    async fn cping_then_get_with_connection_reuse() {
        let mut io = spawn(AjpConfig::default());
        for _ in 0..3 {
            let mut ping = BytesMut::new();
            encode_cping(&mut ping);
            io.write_all(&ping).await.unwrap();
            let mut pong = [0u8; 5];
            io.read_exact(&mut pong).await.unwrap();
            assert_eq!(pong, [0x41, 0x42, 0x00, 0x01, 0x09]);
        }
        for _ in 0..2 {
            io.write_all(&forward("GET", "/caf%C3%A9", None, None))
                .await
                .unwrap();
            let (status, text, reuse) = response(&mut io, b"").await;
            assert_eq!(status, 200);
            assert!(reuse);
            assert_eq!(
                text,
                "GET /caf%C3%A9?q=1 REMOTE_PORT=54321 HTTPS=on HTTP_X_A=1, 2 PATH_INFO=/caf\u{e9} body="
            );
        }
    }

    #[tokio::test]
    async fn post_body_flows_through_get_body_chunk() {
        let mut io = spawn(AjpConfig::default());
        let body = vec![b'z'; 20_000];
        let mut req = forward("POST", "/p", Some(body.len()), None);
        // The first body packet arrives unrequested, as Apache sends it.
        encode_body_packet(&body[..8186], &mut req);
        io.write_all(&req).await.unwrap();
        let (status, text, reuse) = response(&mut io, &body[8186..]).await;
        assert_eq!(status, 200);
        assert!(text.ends_with(&format!("body={}", "z".repeat(20_000))));
        assert!(reuse);
    }

    #[tokio::test]
    async fn unread_body_ends_with_reuse_0_and_close() {
        let mut io = spawn(AjpConfig::default());
        let mut req = forward("POST", "/ignore-body", Some(20_000), None);
        // A valid-looking FORWARD_REQUEST hidden in the body must never be parsed.
        let hidden = forward("GET", "/smuggled", None, None);
        let mut first = hidden.to_vec();
        first.resize(8186, b'x');
        encode_body_packet(&first, &mut req);
        io.write_all(&req).await.unwrap();
        let (status, text, reuse) = response(&mut io, &[b'y'; 20_000 - 8186]).await;
        assert_eq!(status, 200);
        assert!(!text.contains("smuggled"));
        assert!(!reuse);
        let mut rest = Vec::new();
        io.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "nothing after END_RESPONSE reuse=0");
    }

    #[tokio::test]
    async fn wrong_or_missing_secret_is_403() {
        for secret in [None, Some("wrong")] {
            let mut io = spawn(AjpConfig::default().with_secret(&b"right"[..]));
            io.write_all(&forward("GET", "/", None, secret))
                .await
                .unwrap();
            let (status, _, reuse) = response(&mut io, b"").await;
            assert_eq!(status, 403, "{secret:?}");
            assert!(!reuse);
        }
        let mut io = spawn(AjpConfig::default().with_secret(&b"right"[..]));
        io.write_all(&forward("GET", "/", None, Some("right")))
            .await
            .unwrap();
        assert_eq!(response(&mut io, b"").await.0, 200);
    }

    #[tokio::test]
    async fn empty_req_uri_is_the_root() {
        // lighttpd with fix-root-scriptname sends a null req_uri for the mount's root.
        let mut io = spawn(AjpConfig::default());
        io.write_all(&forward("GET", "", None, None)).await.unwrap();
        let (status, text, _) = response(&mut io, b"").await;
        assert_eq!(status, 200);
        assert!(text.starts_with("GET /?q=1 "), "{text}");
    }
}
