//! Entry points for the fuzz targets in `fuzz/` that reach the request model and `app=cgi`
//! (style rule 20). Compiled only with `--cfg fuzzing`, which `cargo fuzz` sets; nothing here
//! is part of the normal API. The codecs' own targets are in `appserver_proto::fuzzing`.
//!
//! Each function takes the raw fuzzer input, must never panic on any input, and panics (which
//! the fuzzer reports) only when an invariant breaks: a request whose method, URI, headers or
//! `SCRIPT_NAME`/`PATH_INFO` disagree with the CGI variables it was built from, a decoder that
//! loses bytes, a CGI head that parses differently once written out again.
//!
//! The request targets read their input as an options byte, then CGI variables as
//! `NAME\0VALUE\0` pairs (an SCGI header block): bit 0 of the options byte forces
//! `script_name=` to the first `\0`-terminated string after it.

use appserver_proto::params::ParamsBuilder;
use appserver_proto::{Limits, Params};
use http::header::{HeaderName, CONTENT_LENGTH};
use http::{Method, Uri};

use crate::apps::cgi::head::{head_end, parse_head};
use crate::request::{
    build, content_length, escape_uri, percent_decode, request_path, resolve_script_name, Env,
    Gateway, RequestOptions,
};
use crate::Body;

/// Splits a request target's input into the forced `script_name=` and the CGI variables
/// (stopping at the first pair the default limits refuse, as a protocol decoder would).
fn request_input(data: &[u8]) -> (Option<String>, Params) {
    let Some((&options, mut rest)) = data.split_first() else {
        return (None, Params::new());
    };
    let mut forced = None;
    if options & 1 == 1 {
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        forced = Some(String::from_utf8_lossy(&rest[..end]).into_owned());
        rest = rest.get(end + 1..).unwrap_or(b"");
    }
    let mut builder = ParamsBuilder::new(Limits::default());
    let mut fields = rest.split(|&b| b == 0);
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        if name.is_empty() || builder.push(name, value).is_err() {
            break;
        }
    }
    (forced, builder.finish())
}

/// `request_build`: builds a request from arbitrary CGI variables with
/// [`build`](crate::request::build). When it succeeds: the method is `REQUEST_METHOD` (GET
/// when absent or empty), `Content-Length` is `CONTENT_LENGTH`, the [`Env`] holds the
/// script-name rule's `SCRIPT_NAME`/`PATH_INFO`, every valid `HTTP_*` variable is a header,
/// and a sent `REQUEST_URI` path and query decode to what the URI's path and query decode to.
pub fn request_build(data: &[u8]) {
    let (forced, params) = request_input(data);
    let options = RequestOptions {
        script_name: forced.clone(),
    };
    let gateway = Gateway {
        protocol: "fcgi",
        method: "threaded",
    };
    let Ok(req) = build(params.clone(), Body::empty(), &options, gateway) else {
        return;
    };

    match params.get(b"REQUEST_METHOD") {
        None | Some(b"") => assert_eq!(req.method(), Method::GET),
        Some(m) => assert_eq!(req.method().as_str().as_bytes(), m),
    }
    let declared = content_length(&params).expect("build accepted CONTENT_LENGTH");
    let header = req.headers().get(CONTENT_LENGTH).map(|v| v.as_bytes());
    assert_eq!(
        header,
        declared
            .map(|n| n.to_string())
            .as_deref()
            .map(str::as_bytes)
    );

    let env = req
        .extensions()
        .get::<Env>()
        .expect("every request has an Env");
    let (script, path_info) = resolve_script_name(&params, forced.as_deref());
    assert_eq!(env.get(b"SCRIPT_NAME"), Some(&script[..]));
    assert_eq!(env.get(b"PATH_INFO"), Some(&path_info[..]));

    for (name, value) in params.iter() {
        let Some(header) = name.strip_prefix(b"HTTP_") else {
            continue;
        };
        let lower: Vec<u8> = header
            .iter()
            .map(|&b| match b {
                b'_' => b'-',
                b => b.to_ascii_lowercase(),
            })
            .collect();
        if lower == b"content-length" || lower == b"content-type" {
            continue;
        }
        if let (Ok(name), Ok(_)) = (
            HeaderName::from_bytes(&lower),
            http::HeaderValue::from_bytes(value),
        ) {
            assert!(req.headers().contains_key(name), "HTTP_* variable lost");
        }
    }

    if let Some(sent) = params.get(b"REQUEST_URI").filter(|u| u.starts_with(b"/")) {
        let (path, query) = match sent.iter().position(|&b| b == b'?') {
            Some(q) => (&sent[..q], Some(&sent[q + 1..])),
            None => (sent, None),
        };
        assert_eq!(
            percent_decode(req.uri().path().as_bytes()),
            percent_decode(path),
            "REQUEST_URI path changed"
        );
        let got = req.uri().query().map(|q| percent_decode(q.as_bytes()));
        let want = query.map(percent_decode);
        assert_eq!(
            got.filter(|q| !q.is_empty()),
            want.filter(|q| !q.is_empty()),
            "REQUEST_URI query changed"
        );
    }
}

/// `request_script_name`: the script-name rule on arbitrary CGI variables. A sent `PATH_INFO`
/// is kept; a forced `script_name=` wins, without its trailing slashes; without any rewrite
/// variable (`SCRIPT_URL`, `REDIRECT_URL`, `REDIRECT_URI`) the sent `SCRIPT_NAME` is kept;
/// a `PATH_INFO` derived from the path is a suffix of it.
pub fn request_script_name(data: &[u8]) {
    let (forced, params) = request_input(data);
    let (script, path_info) = resolve_script_name(&params, forced.as_deref());
    let sent_script = params.get(b"SCRIPT_NAME");
    let sent_path_info = params.get(b"PATH_INFO");
    if let Some(sent) = sent_path_info {
        assert_eq!(path_info, sent, "sent PATH_INFO changed");
    }
    if sent_path_info.is_none() && sent_script.is_some() {
        assert!(
            path_info.is_empty(),
            "PATH_INFO invented next to SCRIPT_NAME"
        );
    }
    if let Some(forced) = &forced {
        assert_eq!(script, forced.trim_end_matches('/').as_bytes());
        if sent_path_info.is_none() && sent_script.is_none() {
            let derived = match params.get(b"DOCUMENT_URI") {
                Some(d) => d.to_vec(),
                None => request_path(&params),
            };
            assert!(derived.ends_with(&path_info), "PATH_INFO not from the path");
        }
        return;
    }
    let rewritten = [&b"SCRIPT_URL"[..], b"REDIRECT_URL", b"REDIRECT_URI"]
        .iter()
        .any(|n| params.get(n).is_some_and(|v| !v.is_empty()));
    if !rewritten {
        assert_eq!(script, sent_script.unwrap_or(b""), "SCRIPT_NAME changed");
    }
}

/// `percent_decode`: the request model's percent-decoder and URI escaper on arbitrary bytes.
/// Decoding never grows its input and leaves input without `%` alone; decoding an input with
/// every byte escaped gives the input back; escaping for a URI does not change what a path
/// decodes to, and the escaped path is always a valid URI.
pub fn percent_decoding(data: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let decoded = percent_decode(data);
    assert!(decoded.len() <= data.len());
    if !data.contains(&b'%') {
        assert_eq!(decoded, data);
    }
    let mut all: Vec<u8> = Vec::with_capacity(data.len() * 3);
    for &b in data {
        all.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
    }
    assert_eq!(
        percent_decode(&all),
        data,
        "escaped bytes did not decode back"
    );

    let escaped = escape_uri(data);
    assert_eq!(
        percent_decode(&escaped),
        decoded,
        "escaping changed the decoded bytes"
    );
    let mut path = b"/".to_vec();
    path.extend_from_slice(&escaped);
    if path.len() < usize::from(u16::MAX) - 1 {
        if let Err(e) = Uri::try_from(path.as_slice()) {
            panic!("escaped path is not a URI: {e}");
        }
    }
}

/// `cgi_head`: the `app=cgi` response-head parser on arbitrary script output. The head ends at
/// the first empty line (LF or CRLF); a parsed head written out again as `Status:` and
/// `name: value` lines parses to the same status, reason, `Location` and fields.
pub fn cgi_head(data: &[u8]) {
    let head = match head_end(data) {
        Some((end, body)) => {
            assert!(end < body && body <= data.len());
            assert!(matches!(&data[end..body], b"\n" | b"\r\n"));
            assert!(end == 0 || data[end - 1] == b'\n');
            assert_eq!(head_end(&data[..body - 1]), None, "an earlier empty line");
            &data[..end]
        }
        None => data,
    };
    let Ok(parsed) = parse_head(head) else {
        return;
    };
    let mut out = Vec::new();
    if let Some(status) = parsed.status {
        out.extend_from_slice(format!("Status: {}", status.as_u16()).as_bytes());
        if let Some(reason) = &parsed.reason {
            out.push(b' ');
            out.extend_from_slice(reason.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in &parsed.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let again = match parse_head(&out) {
        Ok(again) => again,
        Err(e) => panic!("a written-out head no longer parses: {e}"),
    };
    assert_eq!(again.status, parsed.status);
    assert_eq!(again.reason, parsed.reason);
    assert_eq!(again.location, parsed.location);
    assert_eq!(again.headers, parsed.headers);
}
