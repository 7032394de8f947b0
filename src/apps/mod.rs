//! Built-in apps, chosen with `app=`: plain [`Handler`](crate::Handler) impls like any user's.
//!
//! - [`info`] (the default): shows that the chain web server → appserver works.
//! - [`cgi`]: a CGI/1.1 gateway that runs scripts, in place of fcgiwrap.
//! - `wsgi` (cargo feature `wsgi`): a Python WSGI app (Django) in an embedded interpreter.

pub mod cgi;
pub mod info;
#[cfg(feature = "wsgi")]
pub mod wsgi;
