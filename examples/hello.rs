//! The smallest appserver app: every request gets `Hello, world\n` as text/plain.
//!
//! It is also the app load benchmarks compare with other servers' hellos.
//!
//! Run it behind nginx:
//!
//! ```text
//! cargo run --release --example hello -- runfcgi method=threaded daemonize=false socket=/tmp/hello.sock umask=0002
//! # nginx: location / { include fastcgi_params; fastcgi_pass unix:/tmp/hello.sock; }
//! ```
//!
//! or check it with no web server: `appserver probe /tmp/hello.sock`.

use appserver::{Body, BoxError, Handler, Request, Response};
use http::header::{HeaderValue, CONTENT_TYPE};

struct Hello;

impl Handler for Hello {
    async fn call(&self, _req: Request) -> Result<Response, BoxError> {
        let mut resp = Response::new(Body::from("Hello, world\n"));
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        Ok(resp)
    }
}

fn main() -> std::process::ExitCode {
    appserver::run(Hello)
}
