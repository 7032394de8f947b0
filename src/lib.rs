//! appserver: a FastCGI, SCGI and AJP13 application server: Django's `manage.py runfcgi`,
//! done in Rust.
//!
//! A web server (nginx, Apache httpd, lighttpd, ...) forwards requests over one of the three
//! gateway protocols; appserver turns each into an [`http::Request`] with a streaming body,
//! calls your [`Handler`], and streams the [`http::Response`] back.
//!
//! ```text
//! listener ──accept──▶ driver (per protocol) ──▶ Request ──▶ Handler ──▶ Response ──▶ driver ──▶ socket
//!  TCP / unix / fd 0    bytes ⇄ sans-IO conn      http::Request          any app     http::Response
//!                       (appserver-proto)          + Env extension                    streamed out
//! ```
//!
//! A program of your own gets the whole `runfcgi` command line with one call:
//!
//! ```no_run
//! use appserver::{Body, BoxError, Handler, Request, Response};
//!
//! struct Hello;
//!
//! impl Handler for Hello {
//!     async fn call(&self, _req: Request) -> Result<Response, BoxError> {
//!         Ok(Response::new(Body::from("Hello, world\n")))
//!     }
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     // myapp runfcgi method=threaded socket=/run/myapp.sock
//!     appserver::run(Hello)
//! }
//! ```
//!
//! # Layout
//!
//! - [`handler`]: the [`Handler`] trait and the `tower::Service` and blocking adapters.
//! - [`body`], [`request`], [`response`]: the protocol-agnostic request model.
//! - [`driver`]: the only socket IO, one module per protocol.
//! - [`process`]: process models (prefork, threaded) and the signal vocabulary.
//! - [`listen`]: TCP, unix sockets and the listener inherited on fd 0.
//! - [`config`]: the `runfcgi` option table, parsing and validation.
//! - [`daemon`]: daemonizing and the pidfile.
//! - `log_limit`: rate limits on the log lines peers and scripts can cause.
//! - `exposure`: the setups refused or warned about at start, given the bound listener.
//! - [`apps`]: built-in apps (`info`, `cgi`).
//! - [`probe`]: the `appserver probe` client.
//! - [`status`]: the shared scoreboard, status page, metrics, access and slow logs.
//! - [`cli`]: the command line shared by `appserver` and your own binaries.
//! - `fuzzing` (only under `--cfg fuzzing`): entry points for the fuzz targets in `fuzz/`.
//! - `sys`: the only `unsafe` code (fork, fd handling), each block justified.
//!
//! Dependencies point one way: `cli → process → driver → appserver-proto`.

pub mod apps;
pub mod body;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod driver;
pub(crate) mod exposure;
#[cfg(fuzzing)]
pub mod fuzzing;
pub mod handler;
pub mod listen;
pub(crate) mod log_limit;
pub mod probe;
pub mod process;
pub mod request;
pub mod response;
pub mod status;
mod sys;

pub use body::Body;
pub use cli::run;
pub use handler::{Handler, Request, Response};
pub use request::{Env, Gateway};

/// The error type handlers and bodies return: anything that is an error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
