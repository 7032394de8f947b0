//! appserver's integration tests: the one test binary (style rule 19).
//!
//! Every test drives the real `appserver` binary, or the axum example built on the library,
//! through [`util::command::TestCommand`], and where the point is interoperability, puts a
//! real web server in front of it. Each test owns its processes and temporary directories, so
//! tests run in parallel and in any order. Regression tests are named `rNNN` after the issue.

mod util;

mod ajp;
mod benches;
mod cgi;
mod cli;
mod engine;
mod fcgi;
mod fronts;
mod process;
mod protocols;
mod scgi;
mod security;
mod seed;
mod status;
#[cfg(feature = "wsgi")]
mod wsgi;
