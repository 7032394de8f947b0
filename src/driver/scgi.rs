//! The SCGI driver: one connection, one request, around `appserver_proto::scgi::Connection`.
//!
//! SCGI has no framing on the way back: the response is the CGI head (`Status:` first, as
//! for FastCGI) and the body, and closing the connection ends it. Beyond `maxchildren` the
//! answer is a 503 (SCGI has no overload signal). The request body streams to the handler
//! with the same backpressure as FastCGI; bytes after it are never parsed.

use std::fmt::Display;
use std::sync::Arc;

use appserver_proto::limits::MAX_QUEUED_OUTPUT;
use appserver_proto::scgi::{Connection, Event};
use appserver_proto::ProtocolError;
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::exchange::{self, Exchange, Progress};
use super::{awaiting_body, close_lingering, write_some, ConnError, Shared, READ_BUF_SIZE};
use crate::response::into_cgi;
use crate::Handler;

/// Serves one SCGI connection: reads the request, answers it, closes.
pub async fn serve<S, H>(io: S, peer: impl Display + Send + Sync, shared: Arc<Shared<H>>)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
    H: Handler,
{
    let mut exchange = None;
    let result = run(io, &peer, &shared, &mut exchange).await;
    super::finish("scgi", &peer, result, exchange);
}

async fn run<S, H>(
    io: S,
    peer: &(dyn Display + Sync),
    shared: &Arc<Shared<H>>,
    exchange: &mut Option<Exchange>,
) -> Result<(), ConnError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
    H: Handler,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let mut conn = Connection::new(shared.limits);
    let mut rbuf = BytesMut::with_capacity(READ_BUF_SIZE);
    let mut wbuf = BytesMut::new();
    let mut read_closed = false;
    let mut finished = false;
    let deadline = Instant::now() + shared.header_timeout;
    let mut body_deadline = deadline;

    loop {
        while let Some(event) = conn.poll_event() {
            match event {
                Event::Request {
                    params,
                    scgi_missing,
                    ..
                } => {
                    if scgi_missing {
                        tracing::debug!(peer = %peer, "scgi request without SCGI=1 (accepted)");
                    }
                    *exchange = Some(match shared.try_admit() {
                        Some(admission) => Exchange::start(shared, admission, params, peer),
                        None => Exchange::overloaded(shared, peer),
                    });
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
        if finished && wbuf.is_empty() {
            if read_closed {
                let _ = wr.shutdown().await;
            } else {
                // The rest of a body the handler did not read may still be arriving.
                close_lingering(&mut rd, &mut wr, &mut rbuf).await;
            }
            return Ok(());
        }

        // Once the body is complete nothing more is read: SCGI carries one request, and a
        // half-close after the body (lighttpd) is not an abort.
        let can_read = !read_closed
            && !conn.is_done()
            && !exchange.as_ref().is_some_and(Exchange::is_blocked)
            && rbuf.len() < READ_BUF_SIZE;
        let room = wbuf.len() < MAX_QUEUED_OUTPUT;
        let waiting = exchange.is_none();
        let stalled_body = !read_closed && awaiting_body(exchange);

        tokio::select! {
            written = write_some(&mut wr, &mut wbuf), if !wbuf.is_empty() => written?,
            read = rd.read_buf(&mut rbuf), if can_read => {
                if read? == 0 {
                    read_closed = true;
                    match conn.handle_eof(&rbuf) {
                        Ok(()) if waiting => return Ok(()),
                        Ok(()) => {}
                        Err(ProtocolError::TruncatedBody { .. }) => {
                            // The client went away mid-upload: the handler sees a truncated
                            // body; nobody is left to answer.
                            tracing::debug!(peer = %peer, "web server closed the connection mid-body");
                            return Ok(());
                        }
                        Err(e) => return Err(e.into()),
                    }
                } else {
                    body_deadline = Instant::now() + shared.idle_timeout;
                    conn.handle_input(&mut rbuf)?;
                }
            }
            progress = exchange::progress(exchange, room, peer), if !waiting => {
                match progress {
                    Progress::BodyMoved => {}
                    Progress::Response(resp) => {
                        let (head, body) = into_cgi(resp);
                        wbuf.extend_from_slice(&head);
                        if let Some(ex) = exchange.as_mut() {
                            ex.stream(body);
                        }
                    }
                    Progress::Data(data) => wbuf.extend_from_slice(&data),
                    Progress::Done => {
                        *exchange = None;
                        finished = true;
                    }
                    Progress::Failed(e) => return Err(ConnError::ResponseBody(e)),
                }
            }
            () = tokio::time::sleep_until(body_deadline), if stalled_body => {
                return Err(ConnError::BodyStalled(shared.idle_timeout));
            }
            () = shared.shutdown.cancelled(), if waiting && rbuf.is_empty() => return Ok(()),
            () = tokio::time::sleep_until(deadline), if waiting => {
                tracing::warn!(peer = %peer, "scgi request head not received within {}s: closing", shared.header_timeout.as_secs());
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use appserver_proto::params::ParamsBuilder;
    use appserver_proto::scgi::encode_request;
    use appserver_proto::Limits;
    use tokio::io::DuplexStream;

    use super::*;
    use crate::{Body, BoxError, Request, Response};

    struct Echo;
    impl Handler for Echo {
        async fn call(&self, req: Request) -> Result<Response, BoxError> {
            let uri = req.uri().to_string();
            let body = match req.into_body().collect_bytes().await {
                Ok(b) => format!("{uri} {}", String::from_utf8_lossy(&b)),
                Err(e) => format!("body error: {e}"),
            };
            Ok(Response::new(Body::from(body)))
        }
    }

    fn spawn(max_requests: usize) -> DuplexStream {
        let shared = super::super::test_shared(Echo, max_requests, "scgi");
        let (client, server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(serve(server, "test-peer", shared));
        client
    }

    fn request(uri: &str, body: &[u8]) -> BytesMut {
        let mut p = ParamsBuilder::new(Limits::default());
        p.push(b"REQUEST_METHOD", b"POST").unwrap();
        p.push(b"REQUEST_URI", uri.as_bytes()).unwrap();
        let mut out = BytesMut::new();
        encode_request(&p.finish(), body.len() as u64, &mut out);
        out.extend_from_slice(body);
        out
    }

    async fn exchange(io: &mut DuplexStream, bytes: &[u8]) -> String {
        io.write_all(bytes).await.unwrap();
        let mut out = Vec::new();
        io.read_to_end(&mut out).await.unwrap();
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn answers_with_a_cgi_head_and_closes() {
        let mut io = spawn(4);
        let text = exchange(&mut io, &request("/deep?x", b"What is the answer to life?")).await;
        assert!(text.starts_with("Status: 200 OK\r\n"), "{text}");
        assert!(
            text.ends_with("\r\n\r\n/deep?x What is the answer to life?"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn bytes_after_the_body_are_never_a_second_request() {
        let mut io = spawn(4);
        let mut bytes = request("/first", b"abc");
        bytes.extend_from_slice(&request("/second", b"def"));
        let text = exchange(&mut io, &bytes).await;
        assert!(text.ends_with("/first abc"), "{text}");
        assert!(!text.contains("/second"));
    }

    #[tokio::test]
    async fn half_close_after_the_body_is_still_answered() {
        let mut io = spawn(4);
        io.write_all(&request("/h", b"xyz")).await.unwrap();
        io.shutdown().await.unwrap();
        let mut out = Vec::new();
        io.read_to_end(&mut out).await.unwrap();
        assert!(out.ends_with(b"/h xyz"));
    }

    #[tokio::test]
    async fn beyond_maxchildren_is_503() {
        let mut io = spawn(0);
        let text = exchange(&mut io, &request("/", b"")).await;
        assert!(
            text.starts_with("Status: 503 Service Unavailable\r\n"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn malformed_netstring_closes_without_answer() {
        let mut io = spawn(4);
        let text = exchange(&mut io, b"070:CONTENT_LENGTH\x000\x00,").await;
        assert_eq!(text, "");
    }
}
