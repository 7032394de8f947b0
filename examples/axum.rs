//! An axum `Router` served as-is by appserver: the app the interop tests put behind nginx.
//!
//! It gets appserver's whole command line from one call, [`appserver::run`], so it starts
//! exactly like the `appserver` binary:
//!
//! ```text
//! cargo build --release --example axum
//! target/release/examples/axum runfcgi daemonize=false socket=/run/axum/app.sock umask=0002
//! ```
//!
//! and nginx points at the socket:
//!
//! ```text
//! location / {
//!     include /etc/nginx/fastcgi_params;
//!     fastcgi_pass unix:/run/axum/app.sock;
//! }
//! ```
//!
//! Behind Apache it is `ProxyPass "/" "unix:/run/axum/app.sock|fcgi://localhost/"`.
//!
//! Routes:
//!
//! - `/`: a greeting.
//! - `POST /echo`: the lowercase hex SHA-256 of the request body, with `x-body-len: N`; the
//!   body is hashed as it streams in, never held whole.
//! - `/bytes/{n}`: `n` bytes where byte `i` is `i % 251`, produced in 64 KiB chunks.
//! - `/status/{code}`: that status with a short body.
//! - `/redirect`: `302` to `/target`.
//! - `/cookies`: three `Set-Cookie` headers.
//! - `/env`, `/env/{*rest}`: the CGI variables (appserver's `Env`) as `NAME=value` lines.
//! - `/inspect`, `/inspect/{*rest}`, any method: what the handler received, one item per line:
//!   `method M`, `uri U`, `version V`, `header name: value` (sorted), `body-len N`,
//!   `body-sha256 HEX`, then `env NAME=value` for every CGI variable in arrival order. The
//!   protocol-equivalence tests compare it across FastCGI, SCGI and AJP13.
//! - `/slow?ms=N`: waits `N` milliseconds, then answers `done`.
//! - `/busy?ms=N`: holds its thread `N` milliseconds without yielding to the runtime (as a
//!   blocking call or a long computation in a handler does), then answers `done`.

use std::collections::HashMap;
use std::pin::Pin;
use std::process::ExitCode;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, Request};
use axum::http::header::{CONTENT_TYPE, LOCATION, SET_COOKIE};
use axum::http::StatusCode;
use axum::response::{AppendHeaders, IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};

fn main() -> ExitCode {
    appserver::run(appserver::handler::service(router()))
}

/// The application: every route the tests use.
fn router() -> Router {
    Router::new()
        .route("/", get(|| async { "Hello from axum\n" }))
        .route("/echo", post(echo))
        .route("/bytes/{n}", get(bytes))
        .route("/status/{code}", get(status))
        .route(
            "/redirect",
            get(|| async { (StatusCode::FOUND, [(LOCATION, "/target")], "see /target\n") }),
        )
        .route("/cookies", get(cookies))
        .route("/env", get(env))
        .route("/env/{*rest}", get(env))
        .route("/inspect", any(inspect))
        .route("/inspect/{*rest}", any(inspect))
        .route("/slow", get(slow))
        .route("/busy", get(busy))
}

/// Hashes the body frame by frame, so a 1 GiB upload costs one frame of memory.
async fn echo(body: Body) -> Response {
    let mut body = body;
    let mut hasher = Sha256::new();
    let mut len: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => {
                return (StatusCode::BAD_REQUEST, format!("body: {e}\n")).into_response();
            }
        };
        if let Ok(data) = frame.into_data() {
            len += data.len() as u64;
            hasher.update(&data);
        }
    }
    let hex: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    ([("x-body-len", len.to_string())], hex).into_response()
}

async fn bytes(Path(n): Path<u64>) -> Response {
    (
        [(CONTENT_TYPE, "application/octet-stream")],
        Body::new(Pattern { offset: 0, len: n }),
    )
        .into_response()
}

async fn status(Path(code): Path<u16>) -> Response {
    match StatusCode::from_u16(code) {
        Ok(status) => (status, format!("status {code}\n")).into_response(),
        Err(_) => (StatusCode::BAD_REQUEST, "no such status\n").into_response(),
    }
}

async fn cookies() -> impl IntoResponse {
    (
        AppendHeaders([
            (SET_COOKIE, "a=1"),
            (SET_COOKIE, "b=2"),
            (SET_COOKIE, "c=3"),
        ]),
        "three cookies\n",
    )
}

async fn env(req: Request) -> Response {
    let Some(env) = req.extensions().get::<appserver::Env>() else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "no Env extension\n").into_response();
    };
    let mut text = String::new();
    for (name, value) in env.iter() {
        text.push_str(&String::from_utf8_lossy(name));
        text.push('=');
        text.push_str(&String::from_utf8_lossy(value));
        text.push('\n');
    }
    ([(CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
}

async fn inspect(req: Request) -> Response {
    let (parts, mut body) = req.into_parts();
    let mut text = format!(
        "method {}\nuri {}\nversion {:?}\n",
        parts.method, parts.uri, parts.version
    );
    let mut headers: Vec<String> = parts
        .headers
        .iter()
        .map(|(name, value)| format!("{name}: {}", String::from_utf8_lossy(value.as_bytes())))
        .collect();
    headers.sort();
    for header in headers {
        text.push_str(&format!("header {header}\n"));
    }
    let mut hasher = Sha256::new();
    let mut len: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    len += data.len() as u64;
                    hasher.update(&data);
                }
            }
            Err(e) => return (StatusCode::BAD_REQUEST, format!("body: {e}\n")).into_response(),
        }
    }
    let hex: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    text.push_str(&format!("body-len {len}\nbody-sha256 {hex}\n"));
    if let Some(env) = parts.extensions.get::<appserver::Env>() {
        for (name, value) in env.iter() {
            text.push_str(&format!(
                "env {}={}\n",
                String::from_utf8_lossy(name),
                String::from_utf8_lossy(value)
            ));
        }
    }
    ([(CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
}

async fn slow(Query(q): Query<HashMap<String, String>>) -> Response {
    let Some(Ok(ms)) = q.get("ms").map(|ms| ms.parse::<u64>()) else {
        return (StatusCode::BAD_REQUEST, "slow needs ms=N\n").into_response();
    };
    tokio::time::sleep(Duration::from_millis(ms)).await;
    "done\n".into_response()
}

async fn busy(Query(q): Query<HashMap<String, String>>) -> Response {
    let Some(Ok(ms)) = q.get("ms").map(|ms| ms.parse::<u64>()) else {
        return (StatusCode::BAD_REQUEST, "busy needs ms=N\n").into_response();
    };
    std::thread::sleep(Duration::from_millis(ms));
    "done\n".into_response()
}

/// Chunk size of `/bytes/{n}`: a response is produced 64 KiB at a time, never as one buffer.
const CHUNK: u64 = 64 * 1024;

/// The `/bytes/{n}` body: byte `i` of the stream is `i % 251`, so any offset error shows.
struct Pattern {
    offset: u64,
    len: u64,
}

impl http_body::Body for Pattern {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let left = self.len - self.offset;
        if left == 0 {
            return Poll::Ready(None);
        }
        let n = left.min(CHUNK) as usize;
        // Each chunk is a fresh buffer, as an app producing data would make it; filled a
        // period at a time because a per-byte loop is slow in debug builds.
        let period: [u8; 251] = std::array::from_fn(|i| i as u8);
        let mut chunk = vec![0; n];
        let mut at = (self.offset % 251) as usize;
        let mut done = 0;
        while done < n {
            let take = (251 - at).min(n - done);
            chunk[done..done + take].copy_from_slice(&period[at..at + take]);
            done += take;
            at = 0;
        }
        self.offset += n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }

    fn is_end_stream(&self) -> bool {
        self.offset == self.len
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len - self.offset)
    }
}
