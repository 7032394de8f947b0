//! Writing a handler's response as a CGI response: the form all three protocols carry.
//!
//! The head is always `Status: NNN reason` first, then the headers, then one empty line, all
//! with CRLF: Apache's mod_proxy_fcgi recognises only `\r\n\r\n` or `\n\n` as the end of the
//! headers and turns no bare `Location:` into a redirect, so the explicit `Status:` and
//! consistent line endings are what make every web server read it the same (protocols.md
//! §1.12). Header names and values come from the `http` crate, which already refuses CR, LF
//! and NUL, so no response splitting can pass through here.

use http::header::{CONNECTION, TRANSFER_ENCODING};
use http::{HeaderName, StatusCode};

use crate::{Body, Response};

/// Hop-by-hop headers that describe the handler's own framing, not the response the web
/// server sends: the gateway protocol frames the body, so these would be wrong there.
const HOP_BY_HOP: [HeaderName; 3] = [
    CONNECTION,
    TRANSFER_ENCODING,
    HeaderName::from_static("keep-alive"),
];

/// True for headers a gateway response must not carry: hop-by-hop framing headers and a
/// handler-set `status` (the status line is made from the response's status code).
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name) || name.as_str() == "status"
}

/// Appends the CGI head of `resp` to `dst`.
pub fn encode_cgi_head(resp: &http::response::Parts, dst: &mut Vec<u8>) {
    let status = resp.status;
    dst.extend_from_slice(b"Status: ");
    dst.extend_from_slice(status.as_str().as_bytes());
    dst.push(b' ');
    dst.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    dst.extend_from_slice(b"\r\n");
    for (name, value) in &resp.headers {
        if is_hop_by_hop(name) {
            continue;
        }
        dst.extend_from_slice(name.as_str().as_bytes());
        dst.extend_from_slice(b": ");
        dst.extend_from_slice(value.as_bytes());
        dst.extend_from_slice(b"\r\n");
    }
    dst.extend_from_slice(b"\r\n");
}

/// Splits `resp` into its encoded CGI head and its body, ready to stream after it.
pub fn into_cgi(resp: Response) -> (Vec<u8>, Body) {
    let (parts, body) = resp.into_parts();
    let mut head = Vec::with_capacity(256);
    encode_cgi_head(&parts, &mut head);
    (head, body)
}

/// A plain-text response the server itself produces (400, 403, 500, 503).
pub fn plain(status: StatusCode, message: &str) -> Response {
    let mut resp = Response::new(Body::from(format!("{message}\n")));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_has_status_first_crlf_and_no_hop_by_hop() {
        let resp = http::Response::builder()
            .status(302)
            .header("Location", "/target")
            .header("Set-Cookie", "a=1")
            .header("Set-Cookie", "b=2")
            .header("Transfer-Encoding", "chunked")
            .header("Connection", "close")
            .body(())
            .unwrap();
        let (parts, ()) = resp.into_parts();
        let mut out = Vec::new();
        encode_cgi_head(&parts, &mut out);
        assert_eq!(
            out,
            b"Status: 302 Found\r\nlocation: /target\r\nset-cookie: a=1\r\nset-cookie: b=2\r\n\r\n"
        );
    }

    #[test]
    fn unknown_status_gets_a_reason() {
        let (parts, _) = http::Response::builder()
            .status(599)
            .body(())
            .unwrap()
            .into_parts();
        let mut out = Vec::new();
        encode_cgi_head(&parts, &mut out);
        assert!(out.starts_with(b"Status: 599 Unknown\r\n"));
    }
}
