//! `app=info`, the default app: a page that shows the chain works.
//!
//! It shows the protocol, the process model, the worker's pid and the request's CGI
//! variables, as HTML for browsers (`Accept: text/html`) and plain text otherwise (curl, the
//! probe). It never shows the process environment: on a shared host that holds secrets the
//! web server's client has no business seeing.

use http::header::{ACCEPT, CONTENT_TYPE};
use http::HeaderValue;

use crate::request::{Env, Gateway};
use crate::{Body, BoxError, Handler, Request, Response};

/// The info page handler.
#[derive(Clone, Copy, Debug, Default)]
pub struct Info;

impl Handler for Info {
    async fn call(&self, req: Request) -> Result<Response, BoxError> {
        let html = req
            .headers()
            .get(ACCEPT)
            .and_then(|a| a.to_str().ok())
            .is_some_and(|a| a.contains("text/html"));
        let gateway = req.extensions().get::<Gateway>().copied();
        let env = req.extensions().get::<Env>().cloned().unwrap_or_default();
        let (protocol, method) = gateway.map_or(("unknown", "unknown"), |g| (g.protocol, g.method));
        let pid = std::process::id();
        let summary = [
            ("protocol", protocol.to_owned()),
            ("method", method.to_owned()),
            ("pid", pid.to_string()),
            ("request", format!("{} {}", req.method(), req.uri())),
        ];

        let mut out = String::with_capacity(4096);
        if html {
            out.push_str("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>appserver</title></head>\n<body>\n<h1>appserver is serving</h1>\n<table>\n");
            for (k, v) in &summary {
                out.push_str(&format!("<tr><th>{k}</th><td>{}</td></tr>\n", escape(v)));
            }
            out.push_str("</table>\n<h2>CGI variables</h2>\n<table>\n");
            for (name, value) in env.iter() {
                out.push_str(&format!(
                    "<tr><th>{}</th><td>{}</td></tr>\n",
                    escape(&String::from_utf8_lossy(name)),
                    escape(&String::from_utf8_lossy(value))
                ));
            }
            out.push_str("</table>\n</body></html>\n");
        } else {
            out.push_str("appserver is serving\n\n");
            for (k, v) in &summary {
                out.push_str(&format!("{k}: {v}\n"));
            }
            out.push_str("\nCGI variables:\n");
            for (name, value) in env.iter() {
                out.push_str(&format!(
                    "{}={}\n",
                    String::from_utf8_lossy(name),
                    String::from_utf8_lossy(value).escape_debug()
                ));
            }
        }
        let mut resp = Response::new(Body::from(out));
        let ct = if html {
            "text/html; charset=utf-8"
        } else {
            "text/plain; charset=utf-8"
        };
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(ct));
        Ok(resp)
    }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{build, RequestOptions};
    use appserver_proto::params::ParamsBuilder;
    use appserver_proto::Limits;

    async fn page(accept: &str) -> String {
        let mut b = ParamsBuilder::new(Limits::default());
        b.push(b"REQUEST_URI", b"/x?<b>").unwrap();
        b.push(b"HTTP_ACCEPT", accept.as_bytes()).unwrap();
        b.push(b"HTTP_X_MARK", b"<script>").unwrap();
        let gw = Gateway {
            protocol: "fcgi",
            method: "threaded",
        };
        let req = build(b.finish(), Body::empty(), &RequestOptions::default(), gw).unwrap();
        let resp = Info.call(req).await.unwrap();
        let bytes = resp.into_body().collect_bytes().await.unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn plain_text_shows_gateway_and_variables_not_process_env() {
        std::env::set_var("APPSERVER_INFO_TEST_SECRET", "s3cret");
        let text = page("*/*").await;
        assert!(text.contains("protocol: fcgi\n"), "{text}");
        assert!(text.contains("method: threaded\n"));
        assert!(text.contains(&format!("pid: {}\n", std::process::id())));
        assert!(text.contains("HTTP_X_MARK=<script>\n"));
        assert!(!text.contains("s3cret"));
    }

    #[tokio::test]
    async fn html_escapes_values() {
        let html = page("text/html,*/*").await;
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.contains("&lt;script&gt;"));
        assert!(!html.contains("<script>"));
    }
}
