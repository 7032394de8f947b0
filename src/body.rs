//! [`Body`]: the streaming body of requests and responses.
//!
//! A request body is fed by the driver from STDIN records, SCGI bytes or AJP body packets
//! through a small bounded channel, so a handler that reads slowly slows the web server down
//! instead of making appserver buffer (design.md §1). A response body is any
//! [`http_body::Body`]; the driver pulls frames only while its output queue has room (less
//! than [`MAX_QUEUED_OUTPUT`](appserver_proto::limits::MAX_QUEUED_OUTPUT), 256 KiB, owed to
//! the web server). A frame of [`SHARE_MIN`](appserver_proto::output::SHARE_MIN) (4 KiB) or
//! more is written from the app's own buffer, not copied (where the protocol's records split
//! it, a piece under 4 KiB is): a download served from shared [`Bytes`] (a static buffer, a
//! cache of files) costs only the kernel's copy into the socket. Smaller frames are copied
//! into the connection's buffer beside the protocol's framing, so a page goes out in one
//! write.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use tokio::sync::mpsc;

use crate::BoxError;

/// A streaming body of [`Bytes`] frames, for requests and responses alike.
pub struct Body {
    inner: UnsyncBoxBody<Bytes, BoxError>,
}

impl Body {
    /// Wraps any [`http_body::Body`] whose data is [`Bytes`].
    pub fn new<B>(body: B) -> Self
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        Self {
            inner: body.map_err(Into::into).boxed_unsync(),
        }
    }

    /// A body with no bytes.
    pub fn empty() -> Self {
        Self::new(http_body_util::Empty::<Bytes>::new())
    }

    /// Reads the whole body into memory. For small bodies only: it defeats streaming.
    pub async fn collect_bytes(self) -> Result<Bytes, BoxError> {
        Ok(self.collect().await?.to_bytes())
    }
}

impl Default for Body {
    fn default() -> Self {
        Self::empty()
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Body").finish_non_exhaustive()
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl From<Bytes> for Body {
    fn from(bytes: Bytes) -> Self {
        Self::new(http_body_util::Full::new(bytes))
    }
}

impl From<Vec<u8>> for Body {
    fn from(bytes: Vec<u8>) -> Self {
        Bytes::from(bytes).into()
    }
}

impl From<String> for Body {
    fn from(s: String) -> Self {
        Bytes::from(s).into()
    }
}

impl From<&'static str> for Body {
    fn from(s: &'static str) -> Self {
        Bytes::from_static(s.as_bytes()).into()
    }
}

impl From<&'static [u8]> for Body {
    fn from(s: &'static [u8]) -> Self {
        Bytes::from_static(s).into()
    }
}

/// Why a request body ended early or did not match its announced length.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// Occurs when the web server closed the connection (or aborted the request) before the
    /// body's end marker.
    #[error("request body truncated: the web server closed the connection after {received} bytes")]
    Truncated {
        /// Bytes delivered before the end.
        received: u64,
    },
    /// Occurs when the body's length differs from `CONTENT_LENGTH`, e.g. a client that died
    /// mid-upload behind a buffering web server (FastCGI spec §6.2: an updating responder
    /// must abort the update).
    #[error("request body is {received} bytes but CONTENT_LENGTH said {expected}")]
    LengthMismatch {
        /// Bytes delivered.
        received: u64,
        /// The announced `CONTENT_LENGTH`.
        expected: u64,
    },
}

/// How many body batches may wait in the channel between driver and handler. A batch is the
/// web server's records or packets as they arrived, together at most 64 KiB unless one alone
/// is larger (the driver's `MAX_BODY_BATCH`), so a request pins at most 4 batches of unread
/// body, and the read buffers they are slices of: about 512 KiB.
pub(crate) const BODY_CHANNEL_BATCHES: usize = 4;

/// Body chunks the driver hands over at once, uncopied slices of what it read.
pub(crate) type BodyBatch = Vec<Bytes>;

/// The sending half the driver holds for one request body.
pub(crate) type BodySender = mpsc::Sender<Result<BodyBatch, BodyError>>;

/// A request body fed by a driver, with its announced length as size hint.
pub(crate) fn channel(content_length: Option<u64>) -> (BodySender, Body) {
    let (tx, rx) = mpsc::channel(BODY_CHANNEL_BATCHES);
    (
        tx,
        Body::new(ChannelBody {
            rx,
            batch: Vec::new().into_iter(),
            content_length,
        }),
    )
}

struct ChannelBody {
    rx: mpsc::Receiver<Result<BodyBatch, BodyError>>,
    /// What is left of the batch received last: each chunk is a frame of its own.
    batch: std::vec::IntoIter<Bytes>,
    content_length: Option<u64>,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        loop {
            if let Some(data) = self.batch.next() {
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            match std::task::ready!(self.rx.poll_recv(cx)) {
                Some(Ok(batch)) => self.batch = batch.into_iter(),
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => return Poll::Ready(None),
            }
        }
    }

    /// True once the driver delivered everything and closed the channel: a handler can tell
    /// a request that has no body (or all of it already waiting) without waiting for it.
    fn is_end_stream(&self) -> bool {
        self.batch.len() == 0 && self.rx.is_closed() && self.rx.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        match self.content_length {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn channel_body_streams_and_reports_errors() {
        let (tx, body) = channel(Some(3));
        assert_eq!(http_body::Body::size_hint(&body).exact(), Some(3));
        tx.send(Ok(vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")]))
            .await
            .unwrap();
        assert!(
            !http_body::Body::is_end_stream(&body),
            "the sender is still open"
        );
        tx.send(Err(BodyError::Truncated { received: 2 }))
            .await
            .unwrap();
        drop(tx);
        assert!(
            !http_body::Body::is_end_stream(&body),
            "closed, but chunks still wait"
        );
        let err = body.collect_bytes().await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "request body truncated: the web server closed the connection after 2 bytes"
        );
    }

    #[tokio::test]
    async fn a_closed_empty_channel_is_the_end_of_the_stream() {
        let (tx, body) = channel(Some(0));
        assert!(!http_body::Body::is_end_stream(&body));
        drop(tx);
        assert!(http_body::Body::is_end_stream(&body));
        assert!(body.collect_bytes().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn from_impls_carry_bytes() {
        assert_eq!(Body::from("hi").collect_bytes().await.unwrap(), "hi");
        assert!(Body::empty().collect_bytes().await.unwrap().is_empty());
    }
}
