//! The AJP13 → CGI mapping: the variables Apache's mod_proxy_fcgi would send over FastCGI for
//! the request a `FORWARD_REQUEST` describes, so one request model serves all three protocols.

use crate::params::{Params, ParamsBuilder};
use crate::{Limits, ProtocolError};

use super::ForwardRequest;

/// The CGI variables Apache's mod_proxy_fcgi would send for the request this
/// `FORWARD_REQUEST` describes, so one request model serves all protocols.
///
/// `REQUEST_URI` is `req_uri` plus the query string; `SCRIPT_NAME` is not sent (AJP carries no
/// mount point), so the script-name rule derives `PATH_INFO` from the decoded path. Headers
/// become `HTTP_*` (names upper-cased, `-` → `_`), except `Content-Type`/`Content-Length`,
/// which become `CONTENT_TYPE`/`CONTENT_LENGTH`; a repeated header is joined with `, `.
/// `AJP_REMOTE_PORT` → `REMOTE_PORT`, `AJP_LOCAL_ADDR` → `SERVER_ADDR`, `is_ssl` →
/// `HTTPS=on`, and the TLS attributes become mod_ssl's `SSL_*` names. A header whose name
/// has `_` is left out unless `underscores` ([`header_var`]).
pub fn cgi_params(
    req: &ForwardRequest,
    limits: &Limits,
    underscores: bool,
) -> Result<Params, ProtocolError> {
    let mut p = ParamsBuilder::new(*limits);
    let a = &req.attributes;
    let query = a.query_string.as_deref().unwrap_or(b"");
    // lighttpd with fix-root-scriptname sends an empty req_uri for the mount's root.
    let mut uri = if req.req_uri.is_empty() {
        b"/".to_vec()
    } else {
        req.req_uri.to_vec()
    };
    if !query.is_empty() {
        uri.push(b'?');
        uri.extend_from_slice(query);
    }
    let content_length = req.header(b"content-length");
    if let Some(len) = content_length.filter(|_| !req.chunked) {
        p.push(b"CONTENT_LENGTH", len)?;
    }
    if let Some(ct) = req.header(b"content-type") {
        p.push(b"CONTENT_TYPE", ct)?;
    }
    p.push(b"GATEWAY_INTERFACE", b"CGI/1.1")?;
    p.push(b"REQUEST_METHOD", &req.method)?;
    p.push(b"REQUEST_URI", &uri)?;
    p.push(b"QUERY_STRING", query)?;
    p.push(b"SERVER_PROTOCOL", &req.protocol)?;
    p.push(b"SERVER_NAME", &req.server_name)?;
    p.push(b"SERVER_PORT", req.server_port.to_string().as_bytes())?;
    p.push(b"REMOTE_ADDR", &req.remote_addr)?;
    if let Some(port) = req.remote_port() {
        p.push(b"REMOTE_PORT", port.to_string().as_bytes())?;
    }
    if let Some(host) = req.remote_host.as_deref().filter(|h| !h.is_empty()) {
        p.push(b"REMOTE_HOST", host)?;
    }
    if let Some(local) = req.req_attribute(b"AJP_LOCAL_ADDR") {
        p.push(b"SERVER_ADDR", local)?;
    }
    if let Some(user) = &a.remote_user {
        p.push(b"REMOTE_USER", user)?;
    }
    if let Some(auth) = &a.auth_type {
        p.push(b"AUTH_TYPE", auth)?;
    }
    if req.is_ssl {
        p.push(b"HTTPS", b"on")?;
        if let Some(v) = req.req_attribute(b"AJP_SSL_PROTOCOL") {
            p.push(b"SSL_PROTOCOL", v)?;
        }
        if let Some(v) = &a.ssl_cipher {
            p.push(b"SSL_CIPHER", v)?;
        }
        if let Some(v) = &a.ssl_session {
            p.push(b"SSL_SESSION_ID", v)?;
        }
        if let Some(v) = a.ssl_key_size {
            p.push(b"SSL_CIPHER_USEKEYSIZE", v.to_string().as_bytes())?;
        }
        if let Some(v) = &a.ssl_cert {
            p.push(b"SSL_CLIENT_CERT", v)?;
        }
    }
    // Headers, merged per name in first-seen order.
    let mut seen: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(req.headers.len());
    for (name, value) in &req.headers {
        if name.eq_ignore_ascii_case(b"content-length")
            || name.eq_ignore_ascii_case(b"content-type")
        {
            continue;
        }
        let Some(cgi) = header_var(name, underscores) else {
            continue;
        };
        match seen.iter_mut().find(|(n, _)| *n == cgi) {
            Some((_, v)) => {
                v.extend_from_slice(b", ");
                v.extend_from_slice(value);
            }
            None => seen.push((cgi, value.to_vec())),
        }
    }
    for (name, value) in &seen {
        p.push(name, value)?;
    }
    Ok(p.finish())
}

/// The CGI variable for request header `name`: `HTTP_` + the name upper-cased with `-` as
/// `_` (RFC 3875 §4.1.18). A name with `_` gives `None` unless `underscores`: `X_User` and
/// `X-User` would both be `HTTP_X_USER`, and Apache passes underscore headers over AJP, so
/// a client could forge a header the app trusts (the reason nginx ignores them by default
/// and Apache 2.4 leaves them out of CGI variables).
pub fn header_var(name: &[u8], underscores: bool) -> Option<Vec<u8>> {
    if !underscores && name.contains(&b'_') {
        return None;
    }
    let mut cgi = Vec::with_capacity(name.len() + 5);
    cgi.extend_from_slice(b"HTTP_");
    cgi.extend(name.iter().map(|&b| {
        if b == b'-' {
            b'_'
        } else {
            b.to_ascii_uppercase()
        }
    }));
    Some(cgi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_with_underscores_are_dropped_unless_kept() {
        assert_eq!(
            header_var(b"X-Foo", false).as_deref(),
            Some(&b"HTTP_X_FOO"[..])
        );
        assert_eq!(
            header_var(b"accept", false).as_deref(),
            Some(&b"HTTP_ACCEPT"[..])
        );
        // issue 12, finding 5: X_Foo forged HTTP_X_FOO.
        assert_eq!(header_var(b"X_Foo", false), None);
        assert_eq!(header_var(b"_", false), None);
        assert_eq!(
            header_var(b"X_Foo", true).as_deref(),
            Some(&b"HTTP_X_FOO"[..])
        );
    }
}
