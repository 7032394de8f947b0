//! The [`Handler`] trait: what appserver calls for every request, whatever the protocol.
//!
//! A handler is async, takes `&self` (one value serves all concurrent requests), and works on
//! the `http` crate's types with streaming bodies (style rule 15). Two adapters cover the other
//! shapes an app comes in: [`service`] for any `tower::Service` (an axum `Router` serves as-is)
//! and [`blocking`] for a plain function run on the blocking thread pool. A handler's error
//! or panic becomes a 500 and a log line; it never takes the worker down.

use std::future::Future;
use std::sync::Arc;

use crate::{Body, BoxError};

/// A request as handlers see it: method, URI, headers and a streaming [`Body`]. The CGI
/// variables the web server sent ride along as an [`Env`](crate::Env) extension.
pub type Request = http::Request<Body>;

/// A response: status, headers and any streaming [`Body`].
pub type Response = http::Response<Body>;

/// An application served by appserver.
///
/// `call`'s future must not hold its thread: a blocking call (a database driver without
/// async, a file read, `std::thread::sleep`) or a long computation goes in [`blocking`] or
/// `tokio::task::spawn_blocking`. A future that holds its runtime thread holds every
/// connection that thread was serving, and, when that thread was the one polling for I/O, can
/// keep the process from noticing new connections until it returns (each runtime thread has
/// an accept loop of its own, so a handler that holds its thread from the accept loop's poll
/// stops that loop only).
///
/// ```
/// use appserver::{Body, BoxError, Handler, Request, Response};
///
/// struct Hello;
///
/// impl Handler for Hello {
///     async fn call(&self, _req: Request) -> Result<Response, BoxError> {
///         Ok(Response::new(Body::from("Hello, world\n")))
///     }
/// }
/// ```
pub trait Handler: Send + Sync + 'static {
    /// Answers one request. An `Err` becomes a 500 response and a log line naming the request.
    fn call(&self, req: Request) -> impl Future<Output = Result<Response, BoxError>> + Send;
}

impl<H: Handler> Handler for Arc<H> {
    fn call(&self, req: Request) -> impl Future<Output = Result<Response, BoxError>> + Send {
        (**self).call(req)
    }
}

/// Serves any `tower::Service` over [`Request`]s, such as an axum `Router`.
///
/// The service is cloned per request (axum routers are cheap `Arc` clones), so `poll_ready`
/// back-pressure is honoured per call.
pub fn service<S>(svc: S) -> ServiceHandler<S> {
    ServiceHandler { svc }
}

/// A [`Handler`] wrapping a `tower::Service`; see [`service`].
#[derive(Clone, Debug)]
pub struct ServiceHandler<S> {
    svc: S,
}

impl<S, B> Handler for ServiceHandler<S>
where
    S: tower_service::Service<Request, Response = http::Response<B>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    async fn call(&self, req: Request) -> Result<Response, BoxError> {
        let mut svc = self.svc.clone();
        std::future::poll_fn(|cx| svc.poll_ready(cx))
            .await
            .map_err(Into::into)?;
        let resp = svc.call(req).await.map_err(Into::into)?;
        Ok(resp.map(Body::new))
    }
}

/// Serves a blocking function, run on tokio's blocking thread pool so it never stalls the
/// connections served by the async workers.
///
/// The function gets the whole [`Request`]; reading its body from blocking code goes through
/// [`Body::collect_bytes`] with `tokio::runtime::Handle::current().block_on(..)`.
pub fn blocking<F>(f: F) -> BlockingHandler<F>
where
    F: Fn(Request) -> Result<Response, BoxError> + Send + Sync + 'static,
{
    BlockingHandler { f: Arc::new(f) }
}

/// A [`Handler`] wrapping a blocking function; see [`blocking`].
#[derive(Debug)]
pub struct BlockingHandler<F> {
    f: Arc<F>,
}

impl<F> Handler for BlockingHandler<F>
where
    F: Fn(Request) -> Result<Response, BoxError> + Send + Sync + 'static,
{
    async fn call(&self, req: Request) -> Result<Response, BoxError> {
        let f = Arc::clone(&self.f);
        // A panic in `f` surfaces as a JoinError and is answered with a 500 like any
        // handler panic.
        match tokio::task::spawn_blocking(move || f(req)).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(e.into()),
        }
    }
}
