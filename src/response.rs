//! Writing a handler's response as a CGI response: the form all three protocols carry.
//!
//! The head is always `Status: NNN reason` first, then the headers, then one empty line, all
//! with CRLF: Apache's mod_proxy_fcgi recognises only `\r\n\r\n` or `\n\n` as the end of the
//! headers and turns no bare `Location:` into a redirect, so the explicit `Status:` and
//! consistent line endings are what make every web server read it the same (protocols.md
//! §1.12). Header names and values come from the `http` crate, which already refuses CR, LF
//! and NUL, so no response splitting can pass through here.

use bytes::BufMut;
use http::header::{CONNECTION, TRANSFER_ENCODING};
use http::{HeaderName, HeaderValue, StatusCode};

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

/// A reason phrase other than the standard one for a response's status, carried as a
/// response extension: `Status: 403 Access Denied by Policy`. Without it a response gets its
/// status's standard phrase. The CGI gateway keeps a script's own phrase this way.
///
/// ```
/// use appserver::response::ReasonPhrase;
///
/// let mut resp = appserver::Response::new(appserver::Body::empty());
/// *resp.status_mut() = http::StatusCode::FORBIDDEN;
/// resp.extensions_mut().insert(ReasonPhrase::new("Access Denied").unwrap());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReasonPhrase(HeaderValue);

/// Occurs when a reason phrase is empty or holds a byte HTTP does not allow in one (a control
/// character such as CR or LF).
#[derive(Debug, thiserror::Error)]
#[error("invalid reason phrase: empty, or a control character in it")]
pub struct InvalidReasonPhrase;

impl ReasonPhrase {
    /// A reason phrase of visible characters, spaces and tabs (RFC 9112 §4: `reason-phrase`);
    /// bytes from 0x80 up are accepted as obs-text.
    pub fn new(phrase: impl AsRef<[u8]>) -> Result<ReasonPhrase, InvalidReasonPhrase> {
        let phrase = phrase.as_ref();
        if phrase.is_empty() {
            return Err(InvalidReasonPhrase);
        }
        // A header value's bytes are exactly those: HTAB, SP, VCHAR and obs-text.
        HeaderValue::from_bytes(phrase)
            .map(ReasonPhrase)
            .map_err(|_| InvalidReasonPhrase)
    }

    /// The phrase's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// The reason phrase `resp` goes out with: its [`ReasonPhrase`], else its status's standard
/// one.
pub fn reason(resp: &http::response::Parts) -> &[u8] {
    match resp.extensions.get::<ReasonPhrase>() {
        Some(phrase) => phrase.as_bytes(),
        None => resp
            .status
            .canonical_reason()
            .unwrap_or("Unknown")
            .as_bytes(),
    }
}

/// Appends the CGI head of `resp` to `dst`: a `Vec<u8>`, or a wire's output buffer directly
/// (SCGI's response is its CGI head and body as they are).
pub fn encode_cgi_head(resp: &http::response::Parts, dst: &mut impl BufMut) {
    let status = resp.status;
    dst.put_slice(b"Status: ");
    dst.put_slice(status.as_str().as_bytes());
    dst.put_u8(b' ');
    dst.put_slice(reason(resp));
    dst.put_slice(b"\r\n");
    for (name, value) in &resp.headers {
        if is_hop_by_hop(name) {
            continue;
        }
        dst.put_slice(name.as_str().as_bytes());
        dst.put_slice(b": ");
        dst.put_slice(value.as_bytes());
        dst.put_slice(b"\r\n");
    }
    dst.put_slice(b"\r\n");
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
    fn a_reason_phrase_extension_replaces_the_standard_one() {
        let mut resp = http::Response::builder().status(403).body(()).unwrap();
        resp.extensions_mut()
            .insert(ReasonPhrase::new("Access Denied \u{e9}t\u{e9}").unwrap());
        let mut head = Vec::new();
        encode_cgi_head(&resp.into_parts().0, &mut head);
        assert_eq!(
            head,
            "Status: 403 Access Denied \u{e9}t\u{e9}\r\n\r\n".as_bytes()
        );
    }

    #[test]
    fn reason_phrases_refuse_control_characters_and_emptiness() {
        for bad in [&b""[..], b"Split\r\nSet-Cookie: x=1", b"Nul\0", b"Del\x7f"] {
            assert!(ReasonPhrase::new(bad).is_err(), "{bad:?}");
        }
        assert!(ReasonPhrase::new("Tab\tand space ok").is_ok());
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
