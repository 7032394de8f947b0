//! `metrics=HOST:PORT|PATH`: a small HTTP/1 listener (hyper) answering `GET /metrics`
//! (OpenMetrics when the scraper asks for it, else the Prometheus text format) and
//! `GET /status` (JSON, with the per-worker table), for a Prometheus scrape or
//! `appserver status` that does not go through the web server.
//!
//! Who serves it: the process that binds it is the one that binds the main listener (the
//! prefork master, before forking, or the threaded server), and every serving process
//! accepts on it from its own runtime: each prefork worker, as it accepts on the main
//! listener. The master stays single-threaded and runs no server code (it must be able to
//! fork at any time); any worker can answer, since every worker sees the whole scoreboard.
//! A reload keeps the socket open across the exec, so a scrape never finds the port closed.

use std::convert::Infallible;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::sync::Semaphore;

use super::render::{self, Format};
use crate::config::MetricsAddr;

/// Connections the metrics listener serves at once per process; more wait in its backlog.
/// A scraper needs one; a handful covers a person running `appserver status --watch` too.
pub(crate) const MAX_METRICS_CONNS: usize = 8;

/// How long one metrics connection may stay open: a scrape takes milliseconds, and a client
/// that sends nothing must not hold one of [`MAX_METRICS_CONNS`].
pub(crate) const METRICS_CONN_TIMEOUT: Duration = Duration::from_secs(10);

/// The bound `metrics=` socket.
#[derive(Debug)]
pub(crate) enum MetricsListener {
    /// `metrics=HOST:PORT`.
    Tcp(std::net::TcpListener),
    /// `metrics=/PATH`.
    Unix(std::os::unix::net::UnixListener),
}

impl MetricsListener {
    /// Binds `addr`. A unix socket file left by a previous run is replaced when nothing
    /// answers on it.
    pub(crate) fn bind(addr: &MetricsAddr) -> io::Result<Self> {
        let context = |e: io::Error| io::Error::new(e.kind(), format!("metrics={addr}: {e}"));
        match addr {
            MetricsAddr::Tcp(a) => std::net::TcpListener::bind(a.as_str())
                .map(Self::Tcp)
                .map_err(context),
            MetricsAddr::Unix(path) => {
                if path.exists() && std::os::unix::net::UnixStream::connect(path).is_err() {
                    let _ = std::fs::remove_file(path);
                }
                std::os::unix::net::UnixListener::bind(path)
                    .map(Self::Unix)
                    .map_err(context)
            }
        }
    }

    /// The listener a previous image kept across exec.
    pub(crate) fn from_fd(fd: OwnedFd, addr: &MetricsAddr) -> Self {
        match addr {
            MetricsAddr::Tcp(_) => Self::Tcp(fd.into()),
            MetricsAddr::Unix(_) => Self::Unix(fd.into()),
        }
    }
}

impl AsFd for MetricsListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Self::Tcp(l) => l.as_fd(),
            Self::Unix(l) => l.as_fd(),
        }
    }
}

/// Serves the listener on the current runtime, until the process exits.
pub(crate) fn spawn(listener: &MetricsListener) {
    let accept = match listener {
        MetricsListener::Tcp(l) => l
            .try_clone()
            .and_then(|l| {
                l.set_nonblocking(true)?;
                tokio::net::TcpListener::from_std(l)
            })
            .map(Accept::Tcp),
        MetricsListener::Unix(l) => l
            .try_clone()
            .and_then(|l| {
                l.set_nonblocking(true)?;
                tokio::net::UnixListener::from_std(l)
            })
            .map(Accept::Unix),
    };
    let accept = match accept {
        Ok(a) => a,
        Err(e) => {
            tracing::error!("metrics: cannot serve the listener: {e}");
            return;
        }
    };
    tokio::spawn(async move {
        let room = Arc::new(Semaphore::new(MAX_METRICS_CONNS));
        loop {
            let Ok(permit) = Arc::clone(&room).acquire_owned().await else {
                return;
            };
            let served = match &accept {
                Accept::Tcp(l) => l.accept().await.map(|(s, _)| {
                    tokio::spawn(serve_conn(TokioIo::new(s), permit));
                }),
                Accept::Unix(l) => l.accept().await.map(|(s, _)| {
                    tokio::spawn(serve_conn(TokioIo::new(s), permit));
                }),
            };
            if let Err(e) = served {
                tracing::warn!("metrics: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
}

enum Accept {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

async fn serve_conn<S>(io: TokioIo<S>, _permit: tokio::sync::OwnedSemaphorePermit)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .serve_connection(io, hyper::service::service_fn(answer));
    if let Ok(Err(e)) = tokio::time::timeout(METRICS_CONN_TIMEOUT, conn).await {
        tracing::debug!("metrics: connection failed: {e}");
    }
}

async fn answer(req: hyper::Request<Incoming>) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    Ok(respond(req.method(), req.uri().path(), req.headers()))
}

/// The answer to one request of the metrics listener.
pub(crate) fn respond(
    method: &Method,
    path: &str,
    headers: &http::HeaderMap,
) -> hyper::Response<Full<Bytes>> {
    let plain = |status: StatusCode, text: &'static str| {
        let mut resp = hyper::Response::new(Full::new(Bytes::from_static(text.as_bytes())));
        *resp.status_mut() = status;
        resp
    };
    if method != Method::GET && method != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "GET /metrics or /status\n");
    }
    let format = match path {
        "/metrics" => {
            let om = headers.get_all(header::ACCEPT).iter().any(|v| {
                v.as_bytes()
                    .windows(21)
                    .any(|w| w == b"application/openmetri")
            });
            if om {
                Format::OpenMetrics
            } else {
                Format::Prometheus
            }
        }
        "/status" => Format::Json,
        _ => return plain(StatusCode::NOT_FOUND, "GET /metrics or /status\n"),
    };
    let Some(snap) = super::snapshot() else {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "no scoreboard\n");
    };
    let body = render::render(&snap, format, format == Format::Json);
    let mut resp = hyper::Response::new(Full::new(Bytes::from(body)));
    if let Ok(v) = header::HeaderValue::from_str(format.content_type()) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp
}
