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
use bytes::Bytes;
use http::StatusCode;
use http_body::Body as _;
use tokio_util::sync::PollSender;

use super::{Admission, Call, Shared, What};
use crate::body::{self, BodyBatch, BodyError};
use crate::request;
use crate::response::plain;
use crate::{Body, BoxError, Handler, Response};

/// The most request-body bytes handed to the handler as one batch (unless one record or
/// packet alone is larger): the web server's records are often smaller than what one read
/// brings (nginx: 32 KiB), and each item the body channel carries may wake the handler's
/// thread once. A batch holds the records uncopied, so this bounds what the channel's
/// [`BODY_CHANNEL_BATCHES`](body::BODY_CHANNEL_BATCHES) items pin.
pub(crate) const MAX_BODY_BATCH: usize = 64 * 1024;

/// One request in flight.
pub(crate) struct Exchange {
    /// Where request-body chunks go; `None` once the body is complete or the handler dropped
    /// it (the driver then reads and discards the rest, keeping the connection in sync).
    body_tx: Option<PollSender<Result<BodyBatch, BodyError>>>,
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
    ///
    /// `empty`: the body's end marker is the driver's next event. A request that announced
    /// no length or length 0 then gets an empty body and no channel: most requests (a GET
    /// through nginx) skip the channel's allocations and its wake-ups. The marker still
    /// arrives as [`end_body`](Self::end_body).
    pub(crate) fn start<H: Handler>(
        shared: &Arc<Shared<H>>,
        admission: Admission,
        params: Params,
        empty: bool,
        peer: &(dyn Display + Sync),
    ) -> Self {
        let mut body_tx = None;
        let mut content_length = None;
        let make_body = |length: Option<u64>| {
            content_length = length;
            if empty && length.is_none_or(|n| n == 0) {
                Body::empty()
            } else {
                let (tx, body) = body::channel(length);
                body_tx = Some(PollSender::new(tx));
                body
            }
        };
        let built = request::build_with_body(params, make_body, &shared.options, shared.gateway);
        match built {
            Ok(req) => Self {
                body_tx,
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

    /// The request's method and URI, for log lines; empty for a response the server made.
    pub(crate) fn what(&self) -> What {
        match &self.phase {
            Phase::Calling(call) => call.what().clone(),
            _ => What::default(),
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
                        if let Some(item) = next_body_batch(&mut self.pending) {
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

/// The next item for the body channel: the first pending chunk, with the data chunks behind
/// it while together they stay within [`MAX_BODY_BATCH`]; an error goes alone.
fn next_body_batch(
    pending: &mut VecDeque<Result<Bytes, BodyError>>,
) -> Option<Result<BodyBatch, BodyError>> {
    let first = match pending.pop_front()? {
        Ok(first) => first,
        Err(e) => return Some(Err(e)),
    };
    let mut len = first.len();
    let mut batch = vec![first];
    while let Some(Ok(next)) = pending.front() {
        if len + next.len() > MAX_BODY_BATCH {
            break;
        }
        len += next.len();
        batch.extend(pending.pop_front().and_then(Result::ok));
    }
    Some(Ok(batch))
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
        std::iter::from_fn(|| next_body_batch(pending))
            .map(|c| c.map_or(usize::MAX, |b| b.iter().map(Bytes::len).sum()))
            .collect()
    }

    #[test]
    fn body_chunks_are_batched_up_to_the_bound_and_not_beyond() {
        const HALF: usize = MAX_BODY_BATCH / 2;
        // nginx's 32 KiB records: two make one batch.
        assert_eq!(
            sizes(&mut chunks(&[HALF, HALF, HALF])),
            [MAX_BODY_BATCH, HALF]
        );
        // One byte over the bound stays apart.
        assert_eq!(sizes(&mut chunks(&[HALF, HALF + 1])), [HALF, HALF + 1]);
        assert_eq!(
            sizes(&mut chunks(&[MAX_BODY_BATCH, 1])),
            [MAX_BODY_BATCH, 1]
        );
        // Small records (Apache's 8 KiB) fill a batch.
        assert_eq!(sizes(&mut chunks(&[8192; 9])), [65536, 8192]);
    }

    #[tokio::test]
    async fn log_lines_name_a_call_by_method_and_uri_and_a_server_answer_by_nothing() {
        struct Ok200;
        impl Handler for Ok200 {
            async fn call(&self, _req: crate::Request) -> Result<Response, crate::BoxError> {
                Ok(Response::new(Body::empty()))
            }
        }
        let shared = super::super::test_shared(Ok200, 1, "fcgi");
        let mut p = appserver_proto::params::ParamsBuilder::new(appserver_proto::Limits::default());
        p.push(b"REQUEST_METHOD", b"PATCH").unwrap();
        p.push(b"REQUEST_URI", b"/a/b?c=d").unwrap();
        let call = Exchange::start(
            &shared,
            shared.try_admit().unwrap(),
            p.finish(),
            true,
            &"peer",
        );
        assert!(call.what().is_call());
        assert_eq!(call.what().to_string(), "PATCH /a/b?c=d");
        let answer = Exchange::respond(
            crate::response::plain(http::StatusCode::BAD_REQUEST, "x"),
            None,
        );
        assert!(!answer.what().is_call());
        assert_eq!(answer.what().to_string(), "");
    }

    #[test]
    fn batches_keep_the_chunks_in_order_and_an_error_goes_alone() {
        let mut pending = chunks(&[3, 2]);
        pending.push_back(Err(BodyError::Truncated { received: 5 }));
        pending.push_back(Ok(Bytes::from_static(b"zz")));
        let first = next_body_batch(&mut pending).unwrap().unwrap();
        assert_eq!(first, [&[0u8, 0, 0][..], &[1, 1][..]]);
        assert!(next_body_batch(&mut pending).unwrap().is_err());
        assert_eq!(next_body_batch(&mut pending).unwrap().unwrap(), ["zz"]);
        assert!(next_body_batch(&mut pending).is_none());
    }
}
