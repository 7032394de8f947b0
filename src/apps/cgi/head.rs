//! The CGI head a script writes (RFC 3875 §6.3): reading it, bounded, and parsing it.

use std::io;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue, LOCATION};
use http::{HeaderMap, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::response::ReasonPhrase;

/// Most bytes of CGI header a script may send before the blank line: lighttpd's limit, and
/// far beyond the 4-8 KiB nginx itself accepts from a FastCGI app. Bounds what one request
/// buffers before its body streams.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Why a script's output is not a CGI response.
#[derive(Debug, thiserror::Error)]
pub(super) enum HeadError {
    #[error("output ended after {0} bytes, before the blank line that ends the CGI header")]
    Eof(usize),
    #[error("CGI header longer than {MAX_HEAD_BYTES} bytes")]
    TooLarge,
    #[error("reading its output: {0}")]
    Io(#[from] io::Error),
}

/// Reads stdout up to the blank line after the CGI head, which must end within
/// [`MAX_HEAD_BYTES`]; returns the head (without the blank line) and the body bytes read with
/// it.
pub(super) async fn read_head<R: AsyncRead + Unpin>(
    stdout: &mut R,
) -> Result<(Bytes, Bytes), HeadError> {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        if let Some((head_end, body_start)) = head_end(&buf) {
            if body_start > MAX_HEAD_BYTES {
                return Err(HeadError::TooLarge);
            }
            let mut all = buf.freeze();
            let body = all.split_off(body_start);
            all.truncate(head_end);
            return Ok((all, body));
        }
        if buf.len() >= MAX_HEAD_BYTES {
            return Err(HeadError::TooLarge);
        }
        buf.reserve(8192);
        if stdout.read_buf(&mut buf).await? == 0 {
            return Err(HeadError::Eof(buf.len()));
        }
    }
}

/// Where the head ends (after its last line's LF) and the body starts: at the first empty
/// line, with LF or CRLF endings, mixed as they come.
pub(crate) fn head_end(buf: &[u8]) -> Option<(usize, usize)> {
    if buf.starts_with(b"\n") {
        return Some((0, 1));
    }
    if buf.starts_with(b"\r\n") {
        return Some((0, 2));
    }
    for (i, _) in buf.iter().enumerate().filter(|(_, &b)| b == b'\n') {
        match &buf[i + 1..] {
            [b'\n', ..] => return Some((i + 1, i + 2)),
            [b'\r', b'\n', ..] => return Some((i + 1, i + 3)),
            _ => {}
        }
    }
    None
}

/// A parsed CGI head (RFC 3875 §6.3).
#[derive(Debug)]
pub(crate) struct Head {
    pub(crate) status: Option<StatusCode>,
    /// The `Status` line's own reason phrase, when it is not the standard one.
    pub(crate) reason: Option<ReasonPhrase>,
    pub(crate) location: Option<Vec<u8>>,
    /// Every field but `Status`, in order, repeated names kept (three `Set-Cookie`).
    pub(crate) headers: HeaderMap,
}

/// Parses header lines. A line without a colon, a continuation line, a bad name or a value
/// with control characters makes the response invalid (502): passing it on could split the
/// response the web server writes.
pub(crate) fn parse_head(head: &[u8]) -> Result<Head, String> {
    let mut parsed = Head {
        status: None,
        reason: None,
        location: None,
        headers: HeaderMap::new(),
    };
    for raw in head.split(|&b| b == b'\n') {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.is_empty() {
            continue;
        }
        let shown = || String::from_utf8_lossy(line).into_owned();
        if line[0] == b' ' || line[0] == b'\t' {
            return Err(format!("continuation line {:?}", shown()));
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(format!("header line without a colon: {:?}", shown()));
        };
        let name = HeaderName::from_bytes(&line[..colon])
            .map_err(|_| format!("bad header name in {:?}", shown()))?;
        let value = trim(&line[colon + 1..]);
        if name.as_str() == "status" {
            if parsed.status.is_some() {
                return Err("Status sent twice".to_owned());
            }
            let (status, reason) =
                parse_status(value).ok_or_else(|| format!("bad {:?}", shown()))?;
            parsed.status = Some(status);
            parsed.reason = reason;
            continue;
        }
        let value = HeaderValue::from_bytes(value)
            .map_err(|_| format!("bad header value in {:?}", shown()))?;
        if name == LOCATION {
            parsed.location = Some(value.as_bytes().to_vec());
        }
        parsed.headers.append(name, value);
    }
    if parsed.status.is_none() && parsed.location.is_none() && parsed.headers.is_empty() {
        return Err("empty CGI header".to_owned());
    }
    Ok(parsed)
}

/// `Status: 404 Not Found` → 404: three digits, then the end or a space, then the reason
/// phrase, kept when it is not the standard one (`Status: 403 Access Denied`). A phrase with
/// control characters makes the line invalid.
pub(super) fn parse_status(value: &[u8]) -> Option<(StatusCode, Option<ReasonPhrase>)> {
    let code = value.get(..3)?;
    if !code.iter().all(u8::is_ascii_digit) || !matches!(value.get(3), None | Some(b' ' | b'\t')) {
        return None;
    }
    let status = StatusCode::from_bytes(code).ok()?;
    let phrase = trim(&value[3..]);
    let standard = status.canonical_reason().map(str::as_bytes);
    if phrase.is_empty() || standard == Some(phrase) {
        return Some((status, None));
    }
    Some((status, Some(ReasonPhrase::new(phrase).ok()?)))
}

pub(super) fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}
