//! Built-in apps, chosen with `app=`: plain [`Handler`](crate::Handler) impls like any user's.
//!
//! - [`info`] (the default): shows that the chain web server → appserver works.

pub mod info;
