//! Process models: how many processes serve, and how they start and stop.
//!
//! `process` knows workers and signals but no protocol bytes: it accepts connections and
//! hands each to the driver of the configured protocol.
//!
//! - [`hooks`]: the moments an app must act in (preload, fork, serve start).
//! - [`control`]: the one signal vocabulary ([`Control`](control::Control)) of every model.
//! - [`image`]: what a reload re-executes ([`Image`](image::Image)).
//! - `lend`: a prefork worker's runtime, lent to the thread an app runs a request on.
//! - [`threaded`]: one process, a multi-threaded tokio runtime (`method=threaded`).
//! - [`prefork`]: a master forking single-threaded workers (`method=prefork`, the default).

pub mod control;
pub mod hooks;
pub mod image;
pub(crate) mod lend;
pub mod prefork;
pub mod threaded;
