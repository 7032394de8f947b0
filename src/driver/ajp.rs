//! AJP13 on the connection engine: `appserver_proto::ajp::Connection` as a `Wire`.
//!
//! A `FORWARD_REQUEST` arrives as the same CGI variables Apache would have sent over FastCGI
//! (`appserver_proto::ajp::cgi_params`), so handlers cannot tell AJP from the other
//! protocols. The body arrives in packets the connection accounts for: the first
//! unrequested, the rest one `GET_BODY_CHUNK` at a time, asked for only while the handler's
//! body channel has room (backpressure). The response goes out as `SEND_HEADERS`,
//! `SEND_BODY_CHUNK`s and `END_RESPONSE`; reuse is offered only when the body was read to its
//! end, otherwise the connection closes, so no body byte is ever taken for a request.
//! Forbidden requests (secret, attribute allowlist) get a 403, heads over the parameter
//! limits a 400, requests beyond `maxchildren` a 503. CPING is answered by the connection.

use std::fmt::Display;
use std::sync::Arc;

use appserver_proto::ajp::{AjpConfig, Connection, Event};
use appserver_proto::{Output, ProtocolError};
use bytes::{Bytes, BytesMut};
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite};

use super::engine::{Incoming, Wire};
use super::Shared;
use crate::response::plain;
use crate::{Body, Handler, Response};

/// Serves one AJP13 connection until the web server closes it, a response ends with
/// reuse=0, an error occurs, a deadline passes, or a stop finds it idle.
pub async fn serve<S, H>(
    io: S,
    peer: impl Display + Send + Sync,
    shared: Arc<Shared<H>>,
    config: AjpConfig,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
    H: Handler,
{
    super::engine::run(io, &peer, &shared, Ajp::new(config), None, None).await;
}

/// The AJP13 side of a connection.
pub(crate) struct Ajp {
    conn: Connection,
}

impl Ajp {
    pub(crate) fn new(config: AjpConfig) -> Self {
        Self {
            conn: Connection::new(config),
        }
    }
}

impl Wire for Ajp {
    const NAME: &'static str = "ajp";

    fn handle_input(&mut self, src: &mut BytesMut) -> Result<(), ProtocolError> {
        self.conn.handle_input(src)
    }

    fn handle_eof(&mut self, src: &BytesMut) -> Result<(), ProtocolError> {
        self.conn.handle_eof(src)
    }

    fn poll_event(&mut self) -> Option<Incoming> {
        Some(match self.conn.poll_event()? {
            Event::Request { params, .. } => Incoming::Request(params),
            Event::Forbidden { reason } => Incoming::Refused {
                status: StatusCode::FORBIDDEN,
                why: reason.to_string(),
            },
            Event::BadRequest { error } => Incoming::Refused {
                status: StatusCode::BAD_REQUEST,
                why: error.to_string(),
            },
            Event::Body(data) => Incoming::Body(data),
            Event::BodyEnd => Incoming::BodyEnd,
        })
    }

    fn body_ends_next(&self) -> bool {
        matches!(self.conn.peek_event(), Some(Event::BodyEnd))
    }

    fn want_body(&mut self) {
        self.conn.request_body_chunk();
    }

    fn poll_transmit(&mut self, dst: &mut Output) {
        self.conn.poll_transmit(dst);
    }

    fn queued_output(&self) -> usize {
        self.conn.queued_output()
    }

    fn wants_close(&self) -> bool {
        self.conn.wants_close()
    }

    fn is_idle(&self) -> bool {
        self.conn.is_idle()
    }

    fn send_head(&mut self, resp: Response, peer: &(dyn Display + Sync)) -> Body {
        let (parts, body) = resp.into_parts();
        let headers: Vec<(&[u8], &[u8])> = parts
            .headers
            .iter()
            .filter(|(name, _)| !crate::response::is_hop_by_hop(name))
            .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
            .collect();
        let reason = crate::response::reason(&parts);
        match self
            .conn
            .send_headers(parts.status.as_u16(), reason, &headers)
        {
            Ok(()) => body,
            Err(e) => {
                tracing::error!(peer = %peer, "response head does not fit one AJP packet ({e}): answering 500");
                let (parts, body) =
                    plain(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error").into_parts();
                let headers: Vec<(&[u8], &[u8])> = parts
                    .headers
                    .iter()
                    .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
                    .collect();
                // A two-header head always fits the smallest packet.
                let _ = self
                    .conn
                    .send_headers(500, b"Internal Server Error", &headers);
                body
            }
        }
    }

    fn send_data(&mut self, data: Bytes) {
        self.conn.send_body(data);
    }

    fn end_response(&mut self) {
        self.conn.end_response();
    }

    fn overloaded(&mut self) -> Option<Response> {
        Some(plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable",
        ))
    }
}

#[cfg(test)]
mod tests {
    use appserver_proto::ajp::{
        encode_body_packet, encode_cping, encode_forward_request, Attributes, ClientDecoder,
        ContainerPacket, ForwardRequest,
    };
    use bytes::Bytes;
    use tokio::io::DuplexStream;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
