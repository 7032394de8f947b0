//! [`Exchange`]: one request in flight, the part every protocol driver shares.
//!
//! It owns the handler call, the request-body channel and the response body. A driver feeds
//! it body chunks as its protocol delivers them, and polls it for progress: a chunk moved to
//! the handler, the handler's response (whose head the driver encodes its own way: a CGI head
//! for FastCGI and SCGI, SEND_HEADERS for AJP), response data to frame, the end. Body chunks
//! wait in `pending` until the channel has room; while they wait, the driver stops reading
//! its socket, which is the backpressure that keeps uploads in constant memory.

use std::collections::VecDeque;
use std::fmt::Display;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use appserver_proto::Params;
use bytes::{Bytes, BytesMut};
use http::StatusCode;
use http_body::Body as _;
use tokio_util::sync::PollSender;

use super::{Admission, Call, Shared};
use crate::body::{self, BodyError};
use crate::request;
use crate::response::plain;
use crate::{Body, BoxError, Handler, Response};

/// The largest request-body chunk made by joining the web server's smaller ones: the size
/// of the largest single record or packet, so the body channel's bound
/// ([`BODY_CHANNEL_CHUNKS`](body::BODY_CHANNEL_CHUNKS) chunks) stays what it was.
pub(crate) const MAX_JOINED_BODY_CHUNK: usize = 64 * 1024;

/// One request in flight.
pub(crate) struct Exchange {
    /// Where request-body chunks go; `None` once the body is complete or the handler dropped
    /// it (the driver then reads and discards the rest, keeping the connection in sync).
    body_tx: Option<PollSender<Result<Bytes, BodyError>>>,
    /// Chunks waiting for room in the body channel.
    pending: VecDeque<Result<Bytes, BodyError>>,
    body_done: bool,
    received: u64,
    content_length: Option<u64>,
    phase: Phase,
    _admission: Option<Admission>,
}

enum Phase {
    Calling(Call),
    /// A response the server made itself (400, 403, 503), not yet handed to the driver.
    Ready(Option<Response>),
    Streaming(Body),
}

/// What one poll of an exchange produced.
pub(crate) enum Progress {
    /// A body chunk went to the handler (or the handler stopped reading).
    BodyMoved,
    /// The response to write the head of; then call [`Exchange::stream`] with its body.
    Response(Response),
    /// Response bytes to send.
    Data(Bytes),
    /// The response body ended.
    Done,
    /// The response body failed: the response cannot be completed honestly.
    Failed(BoxError),
}

impl Exchange {
    /// Builds the request from `params` and starts the handler. A request that cannot be
    /// built (bad method, URI or `CONTENT_LENGTH`) is answered 400 with a log line.
    pub(crate) fn start<H: Handler>(
        shared: &Arc<Shared<H>>,
        admission: Admission,
        params: Params,
        peer: &(dyn Display + Sync),
    ) -> Self {
        let built = request::content_length(&params).and_then(|content_length| {
            let (tx, body) = body::channel(content_length);
            let req = request::build(params, body, &shared.options, shared.gateway)?;
            Ok((req, tx, content_length))
        });
        match built {
            Ok((req, tx, content_length)) => Self {
                body_tx: Some(PollSender::new(tx)),
                pending: VecDeque::new(),
                body_done: false,
                received: 0,
                content_length,
                phase: Phase::Calling(Call::start(shared, req)),
                _admission: Some(admission),
            },
            Err(e) => {
                tracing::warn!(peer = %peer, "bad request: {e}");
                crate::status::recorder().answered_by_server(shared.gateway.protocol, 400);
                Self::respond(
                    plain(StatusCode::BAD_REQUEST, "Bad Request"),
                    Some(admission),
                )
            }
        }
    }

    /// An exchange that answers `resp` without calling the handler; the request body is
    /// read and discarded.
    pub(crate) fn respond(resp: Response, admission: Option<Admission>) -> Self {
        Self {
            body_tx: None,
            pending: VecDeque::new(),
            body_done: false,
            received: 0,
            content_length: None,
            phase: Phase::Ready(Some(resp)),
            _admission: admission,
        }
    }

    /// A chunk of request body from the web server.
    pub(crate) fn push_body(&mut self, data: Bytes) {
        self.received += data.len() as u64;
        if self.body_tx.is_some() {
            self.pending.push_back(Ok(data));
        }
    }

    /// The body's end marker arrived; a length different from `CONTENT_LENGTH` reaches the
    /// handler as [`BodyError::LengthMismatch`].
    pub(crate) fn end_body(&mut self) {
        self.body_done = true;
        if let Some(expected) = self.content_length.filter(|&n| n != self.received) {
            if self.body_tx.is_some() {
                self.pending.push_back(Err(BodyError::LengthMismatch {
                    received: self.received,
                    expected,
                }));
            }
        }
    }

    /// The request's method and URI, for log lines; `None` for a response the server made.
    pub(crate) fn what(&self) -> Option<Arc<str>> {
        match &self.phase {
            Phase::Calling(call) => Some(Arc::clone(call.what())),
            _ => None,
        }
    }

    /// Body bytes still to come by `CONTENT_LENGTH`, when it was given.
    pub(crate) fn body_remaining(&self) -> Option<u64> {
        self.content_length
            .map(|len| len.saturating_sub(self.received))
    }

    /// True once the body's end marker arrived.
    pub(crate) fn body_done(&self) -> bool {
        self.body_done
    }

    /// True while body chunks wait for the handler: the driver must not read more input.
    pub(crate) fn is_blocked(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Starts streaming the response body, once the driver has written the head.
    pub(crate) fn stream(&mut self, body: Body) {
        self.phase = Phase::Streaming(body);
    }

    /// Polls for the next step; response frames are pulled only with `room` for output.
    pub(crate) fn poll_progress(
        &mut self,
        cx: &mut Context<'_>,
        room: bool,
        peer: &(dyn Display + Sync),
    ) -> Poll<Progress> {
        if let Some(tx) = self.body_tx.as_mut() {
            if let Some(item) = self.pending.front() {
                let is_err = item.is_err();
                match tx.poll_reserve(cx) {
                    Poll::Ready(Ok(())) => {
                        if let Some(item) = next_body_chunk(&mut self.pending) {
                            // The slot was just reserved, so sending cannot fail for lack of
                            // room; a closed receiver only means the handler stopped reading.
                            let _ = tx.send_item(item);
                        }
                        if is_err {
                            self.body_tx = None;
                        }
                        return Poll::Ready(Progress::BodyMoved);
                    }
                    Poll::Ready(Err(_)) => {
                        // The handler dropped the body: discard the rest.
                        self.body_tx = None;
                        self.pending.clear();
                        return Poll::Ready(Progress::BodyMoved);
                    }
                    Poll::Pending => {}
                }
            } else if self.body_done {
                // Everything delivered: closing the channel ends the handler's body.
                self.body_tx = None;
                return Poll::Ready(Progress::BodyMoved);
            }
        } else if !self.pending.is_empty() {
            self.pending.clear();
            return Poll::Ready(Progress::BodyMoved);
        }

        match &mut self.phase {
            Phase::Ready(resp) => match resp.take() {
                Some(resp) => Poll::Ready(Progress::Response(resp)),
                None => Poll::Pending,
            },
            Phase::Calling(call) => call.poll_response(cx, peer).map(Progress::Response),
            Phase::Streaming(body) if room => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if !data.is_empty() => Poll::Ready(Progress::Data(data)),
                    // Empty data frames and trailers carry nothing a gateway response holds.
                    _ => {
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                },
                Poll::Ready(Some(Err(e))) => Poll::Ready(Progress::Failed(e)),
                Poll::Ready(None) => Poll::Ready(Progress::Done),
                Poll::Pending => Poll::Pending,
            },
            Phase::Streaming(_) => Poll::Pending,
        }
    }

    /// Stops the handler and tells a body reader the request is gone (client abort).
    pub(crate) fn cancel(self) {
        // Dropping the call (with `self`) stops the handler.
        if let Some(tx) = self.body_tx.and_then(|tx| tx.get_ref().cloned()) {
            let _ = tx.try_send(Err(BodyError::Truncated {
                received: self.received,
            }));
        }
    }
}

/// The next chunk for the body channel: the first pending one, joined with the data
/// chunks behind it while together they stay within [`MAX_JOINED_BODY_CHUNK`]. A web
/// server's records are often smaller than what one read brings (nginx: 32 KiB), and each
/// chunk the channel carries may wake the handler's thread once.
fn next_body_chunk(
    pending: &mut VecDeque<Result<Bytes, BodyError>>,
) -> Option<Result<Bytes, BodyError>> {
    let first = pending.pop_front()?;
    let Ok(first) = first else {
        return Some(first);
    };
    // How many data chunks behind it fit, and their joined length.
    let mut len = first.len();
    let mut behind = 0;
    for next in pending.iter() {
        match next {
            Ok(b) if len + b.len() <= MAX_JOINED_BODY_CHUNK => {
                len += b.len();
                behind += 1;
            }
            _ => break,
        }
    }
    if behind == 0 {
        return Some(Ok(first));
    }
    let mut joined = BytesMut::with_capacity(len);
    joined.extend_from_slice(&first);
    for next in pending.drain(..behind).flatten() {
        joined.extend_from_slice(&next);
    }
    Some(Ok(joined.freeze()))
}

/// Polls an optional exchange (pending forever when there is none), for `select!` branches.
pub(crate) async fn progress(
    exchange: Option<&mut Exchange>,
    room: bool,
    peer: &(dyn Display + Sync),
) -> Progress {
    let mut exchange = exchange;
    std::future::poll_fn(|cx| match exchange.as_mut() {
        Some(ex) => ex.poll_progress(cx, room, peer),
        None => Poll::Pending,
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(sizes: &[usize]) -> VecDeque<Result<Bytes, BodyError>> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| Ok(Bytes::from(vec![i as u8; n])))
            .collect()
    }

    fn sizes(pending: &mut VecDeque<Result<Bytes, BodyError>>) -> Vec<usize> {
        std::iter::from_fn(|| next_body_chunk(pending))
            .map(|c| c.map_or(usize::MAX, |b| b.len()))
            .collect()
    }

    #[test]
    fn body_chunks_are_joined_up_to_the_bound_and_not_beyond() {
        const HALF: usize = MAX_JOINED_BODY_CHUNK / 2;
        // nginx's 32 KiB records: two make one chunk.
        assert_eq!(
            sizes(&mut chunks(&[HALF, HALF, HALF])),
            [MAX_JOINED_BODY_CHUNK, HALF]
        );
        // One byte over the bound stays apart.
        assert_eq!(sizes(&mut chunks(&[HALF, HALF + 1])), [HALF, HALF + 1]);
        assert_eq!(
            sizes(&mut chunks(&[MAX_JOINED_BODY_CHUNK, 1])),
            [MAX_JOINED_BODY_CHUNK, 1]
        );
        // Small records (Apache's 8 KiB) fill a chunk.
        assert_eq!(sizes(&mut chunks(&[8192; 9])), [65536, 8192]);
    }

    #[test]
    fn joined_chunks_keep_the_bytes_in_order_and_an_error_is_never_joined() {
        let mut pending = chunks(&[3, 2]);
        pending.push_back(Err(BodyError::Truncated { received: 5 }));
        pending.push_back(Ok(Bytes::from_static(b"zz")));
        let first = next_body_chunk(&mut pending).unwrap().unwrap();
        assert_eq!(&first[..], &[0, 0, 0, 1, 1]);
        assert!(next_body_chunk(&mut pending).unwrap().is_err());
        assert_eq!(next_body_chunk(&mut pending).unwrap().unwrap(), "zz");
        assert!(next_body_chunk(&mut pending).is_none());
    }
}
