//! The app `benches/peers.sh` puts behind nginx next to uWSGI, php-fpm and Go's net/http/fcgi,
//! all serving the same three pages:
//!
//! - `/` (any other path too): `Hello, world\n` as text/plain, 13 bytes;
//! - a path ending in `/big`: 10 MiB, streamed in 64 KiB chunks of one static buffer, so a
//!   chunk costs no allocation and no copy in the app;
//! - a path ending in `/upload`: reads the whole request body as it streams in, keeping only
//!   its length, and answers that length in decimal (`10485760\n`).
//!
//! Routing looks only at the end of the path because the benchmark's nginx puts each backend
//! under its own prefix (`/appserver-threaded-fcgi/big`, ...).
//!
//! Run it behind nginx:
//!
//! ```text
//! cargo run --release --example bench -- runfcgi method=threaded daemonize=false socket=/tmp/bench.sock
//! # nginx: location / { include fastcgi_params; fastcgi_pass unix:/tmp/bench.sock; }
//! ```
//!
//! or check it with no web server: `appserver probe /tmp/bench.sock`.

use std::pin::Pin;
use std::task::{Context, Poll};

use appserver::{Body, BoxError, Handler, Request, Response};
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;

/// The size of `/big`: 10 MiB, the figure the peer benchmark's MiB/s column is about.
const BIG_LEN: usize = 10 * 1024 * 1024;

/// The size of one `/big` chunk: 64 KiB, one full FastCGI record's worth (65 528 bytes of
/// content per record) and a common socket write size.
const CHUNK_LEN: usize = 64 * 1024;

/// The bytes every `/big` chunk shares: `Bytes::from_static` points into it.
static CHUNK: [u8; CHUNK_LEN] = [b'x'; CHUNK_LEN];

struct Bench;

impl Handler for Bench {
    async fn call(&self, req: Request) -> Result<Response, BoxError> {
        let path = req.uri().path();
        if path.ends_with("/big") {
            Ok(response(
                Body::new(Big { left: BIG_LEN }),
                BIG_LEN,
                "application/octet-stream",
            ))
        } else if path.ends_with("/upload") {
            let mut body = req.into_body();
            let mut len: u64 = 0;
            while let Some(frame) = body.frame().await {
                if let Some(data) = frame?.data_ref() {
                    len += data.len() as u64;
                }
            }
            let text = format!("{len}\n");
            let n = text.len();
            Ok(response(Body::from(text), n, "text/plain"))
        } else {
            Ok(response(
                Body::from("Hello, world\n"),
                "Hello, world\n".len(),
                "text/plain",
            ))
        }
    }
}

fn response(body: Body, len: usize, content_type: &'static str) -> Response {
    let mut resp = Response::new(body);
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    resp
}

/// `/big`'s body: `left` more bytes, handed out as slices of [`CHUNK`].
struct Big {
    left: usize,
}

impl http_body::Body for Big {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(CHUNK_LEN);
        self.left -= n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK[..n])))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left as u64)
    }
}

fn main() -> std::process::ExitCode {
    appserver::run(Bench)
}
