//! Turning a protocol's CGI variables into the one request model handlers see.
//!
//! Every driver ends up with a [`Params`] list (FastCGI and SCGI receive it; AJP builds it
//! from its fields) and calls [`build`]. That is why a handler cannot tell the protocols apart
//! unless it asks: method, URI, headers and the CGI variables mean the same everywhere.
//!
//! The script-name rule (design.md §1, Django's `get_script_name`): `script_name=` wins; else
//! `SCRIPT_URL` or `REDIRECT_URL` minus `PATH_INFO` (Apache + mod_rewrite, the seed's
//! `.htaccess` setup); else, when lighttpd rewrote the request (`REDIRECT_URI` set), the
//! decoded `REQUEST_URI` path minus `PATH_INFO`; else `SCRIPT_NAME`. A missing `PATH_INFO` is
//! empty when `SCRIPT_NAME` was sent (Apache's mod_proxy_fcgi puts the whole path there) and
//! otherwise derived from the decoded path: `DOCUMENT_URI` (nginx), else the percent-decoded
//! path of `REQUEST_URI`. The resolved values replace `SCRIPT_NAME`/`PATH_INFO` in the
//! [`Env`].

use appserver_proto::Params;
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Uri, Version};

use crate::{Body, Request};

/// The CGI variables of a request, in the order the web server sent them, byte-exact.
///
/// Found in every request's extensions. Values are raw bytes: non-UTF-8 and empty values are
/// kept as sent (an empty variable is set, not absent). `SCRIPT_NAME` and `PATH_INFO` hold the
/// values resolved by the script-name rule.
#[derive(Clone, Debug, Default)]
pub struct Env {
    params: Params,
}

impl Env {
    /// Wraps a parameter list.
    pub fn new(params: Params) -> Self {
        Self { params }
    }

    /// The value of `name` (the last one, if the web server sent it twice).
    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        self.params.get(name)
    }

    /// The value of `name` when present and valid UTF-8.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.params.get_str(name)
    }

    /// Every variable in arrival order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.params.iter()
    }

    /// Number of variables.
    pub fn len(&self) -> usize {
        self.params.len()
    }

    /// True when the web server sent no variables.
    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    /// The underlying parameter list.
    pub fn params(&self) -> &Params {
        &self.params
    }
}

/// Which gateway carried a request, for apps that want to show or log it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gateway {
    /// `fcgi`, `scgi` or `ajp`.
    pub protocol: &'static str,
    /// `threaded` or `prefork`.
    pub method: &'static str,
}

/// Why a request could not be built; the driver answers 400 and logs it.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// Occurs when `REQUEST_METHOD` is not an HTTP token.
    #[error("REQUEST_METHOD {0:?} is not a valid method")]
    BadMethod(String),
    /// Occurs when `REQUEST_URI` (or the path rebuilt from the CGI variables) is not a URI.
    #[error("request URI {0:?} is not valid")]
    BadUri(String),
    /// Occurs when `CONTENT_LENGTH` is neither empty nor a decimal number.
    #[error("CONTENT_LENGTH {0:?} is not a decimal number")]
    BadContentLength(String),
}

/// Options of the request model that come from the command line.
#[derive(Clone, Debug, Default)]
pub struct RequestOptions {
    /// `script_name=`: the forced `SCRIPT_NAME` (Django's FORCE_SCRIPT_NAME).
    pub script_name: Option<String>,
}

/// `CONTENT_LENGTH` as a number: `None` when absent or empty (nginx without request
/// buffering, Apache with a chunked body) or `-1` (Caddy with a chunked body), which means
/// "read the body to its end marker".
pub fn content_length(params: &Params) -> Result<Option<u64>, BuildError> {
    parse_length(params.get(b"CONTENT_LENGTH"))
}

fn parse_length(value: Option<&[u8]>) -> Result<Option<u64>, BuildError> {
    match value {
        None | Some(b"" | b"-1") => Ok(None),
        Some(v) if v.iter().all(u8::is_ascii_digit) && v.len() <= 19 => {
            // 19 digits always fit in a u64; all bytes are ASCII digits, so both steps succeed.
            let s = std::str::from_utf8(v).map_err(|_| bad_len(v))?;
            s.parse().map(Some).map_err(|_| bad_len(v))
        }
        Some(v) => Err(bad_len(v)),
    }
}

fn bad_len(v: &[u8]) -> BuildError {
    BuildError::BadContentLength(String::from_utf8_lossy(v).into_owned())
}

/// The variables the request model reads, found in one pass over the list; the last of a
/// name wins, as with [`Params::get`]. Looking each up in turn scanned the list a dozen
/// times per request (docs/performance.md, "The hot path").
#[derive(Default)]
struct Vars<'a> {
    request_method: Option<&'a [u8]>,
    content_length: Option<&'a [u8]>,
    content_type: Option<&'a [u8]>,
    script_name: Option<&'a [u8]>,
    path_info: Option<&'a [u8]>,
    document_uri: Option<&'a [u8]>,
    script_url: Option<&'a [u8]>,
    redirect_url: Option<&'a [u8]>,
    redirect_uri: Option<&'a [u8]>,
    request_uri: Option<&'a [u8]>,
    query_string: Option<&'a [u8]>,
    server_protocol: Option<&'a [u8]>,
    /// How many `HTTP_` variables there are.
    http: usize,
}

impl<'a> Vars<'a> {
    fn of(params: &'a Params) -> Self {
        let mut vars = Self::default();
        for (name, value) in params.iter() {
            let slot = match name {
                b"REQUEST_METHOD" => &mut vars.request_method,
                b"CONTENT_LENGTH" => &mut vars.content_length,
                b"CONTENT_TYPE" => &mut vars.content_type,
                b"SCRIPT_NAME" => &mut vars.script_name,
                b"PATH_INFO" => &mut vars.path_info,
                b"DOCUMENT_URI" => &mut vars.document_uri,
                b"SCRIPT_URL" => &mut vars.script_url,
                b"REDIRECT_URL" => &mut vars.redirect_url,
                b"REDIRECT_URI" => &mut vars.redirect_uri,
                b"REQUEST_URI" => &mut vars.request_uri,
                b"QUERY_STRING" => &mut vars.query_string,
                b"SERVER_PROTOCOL" => &mut vars.server_protocol,
                _ => {
                    vars.http += usize::from(name.starts_with(b"HTTP_"));
                    continue;
                }
            };
            *slot = Some(value);
        }
        vars
    }
}

/// Builds the handler's request from the CGI variables and the streaming body.
pub fn build(
    params: Params,
    body: Body,
    options: &RequestOptions,
    gateway: Gateway,
) -> Result<Request, BuildError> {
    build_with_body(params, |_| body, options, gateway)
}

/// [`build`], with the body made by `body` from the request's
/// [`content_length`](content_length()) once that is parsed (a driver sizes its body channel by
/// it): the variable is found and parsed once per request, not once for the channel and again
/// for the request.
pub fn build_with_body(
    mut params: Params,
    body: impl FnOnce(Option<u64>) -> Body,
    options: &RequestOptions,
    gateway: Gateway,
) -> Result<Request, BuildError> {
    let vars = Vars::of(&params);
    let content_length = parse_length(vars.content_length)?;
    let method = match vars.request_method {
        None | Some(b"") => Method::GET,
        Some(m) => Method::from_bytes(m)
            .map_err(|_| BuildError::BadMethod(String::from_utf8_lossy(m).into_owned()))?,
    };

    let (script_name, path_info) = resolve(&vars, options.script_name.as_deref());
    let uri = request_uri(&params, &vars, &script_name, &path_info)?;
    let version = match vars.server_protocol {
        Some(b"HTTP/1.0") => Version::HTTP_10,
        Some(b"HTTP/0.9") => Version::HTTP_09,
        Some(b"HTTP/2" | b"HTTP/2.0") => Version::HTTP_2,
        Some(b"HTTP/3" | b"HTTP/3.0") => Version::HTTP_3,
        _ => Version::HTTP_11,
    };
    // Header values share the variables' buffer (`share`): no copy and no allocation each.
    let content_type = vars
        .content_type
        .filter(|v| !v.is_empty())
        .and_then(|v| HeaderValue::from_maybe_shared(params.share(v)).ok());
    // The sent digits themselves when they spell the number as `HeaderValue::from` would (no
    // leading zero): shared rather than formatted into a new buffer.
    let length_value = content_length.map(|len| match vars.content_length {
        Some(v) if v.len() == 1 || v[0] != b'0' => {
            HeaderValue::from_maybe_shared(params.share(v)).unwrap_or_else(|_| len.into())
        }
        _ => HeaderValue::from(len),
    });
    let count = vars.http;
    if vars.script_name != Some(&script_name[..]) || vars.path_info != Some(&path_info[..]) {
        params.set_all(&[(b"SCRIPT_NAME", &script_name), (b"PATH_INFO", &path_info)]);
    }

    let mut req = Request::new(body(content_length));
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    let headers = req.headers_mut();
    // Sized once for every HTTP_ variable (a browser sends ten or more) instead of growing;
    // past the map's own bound (32 768) it is left to grow, as before.
    let _ = headers.try_reserve(count + 2);
    // Header names are mapped on the stack (in a Vec kept across the loop past 64 bytes): no
    // allocation per header, and none at all for the names browsers send.
    let mut short = [0u8; 64];
    let mut long = Vec::new();
    for (name, value) in params.iter() {
        let Some(header) = name.strip_prefix(b"HTTP_") else {
            continue;
        };
        let mapped = header.iter().map(|&b| {
            if b == b'_' {
                b'-'
            } else {
                b.to_ascii_lowercase()
            }
        });
        let lower: &[u8] = if header.len() <= short.len() {
            for (to, b) in short.iter_mut().zip(mapped) {
                *to = b;
            }
            &short[..header.len()]
        } else {
            long.clear();
            long.extend(mapped);
            &long
        };
        // nginx also sends the body headers as HTTP_CONTENT_*; the CGI variables are the
        // authoritative ones (they describe the body actually forwarded). Compared after the
        // mapping, so no other spelling (`HTTP_Content_Length`, `HTTP_CONTENT-LENGTH`) can
        // smuggle in a length the body does not have.
        if lower == b"content-length" || lower == b"content-type" {
            continue;
        }
        // Names or values a web server would never produce are skipped, not fatal: the
        // raw variable stays visible in the Env.
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(lower),
            HeaderValue::from_maybe_shared(params.share(value)),
        ) {
            headers.insert(n, v);
        }
    }
    if let Some(v) = content_type {
        headers.insert(CONTENT_TYPE, v);
    }
    if let Some(v) = length_value {
        headers.insert(CONTENT_LENGTH, v);
    }
    req.extensions_mut().insert(gateway);
    req.extensions_mut().insert(Env::new(params));
    Ok(req)
}

/// Applies the script-name rule; returns `(SCRIPT_NAME, PATH_INFO)`. The fuzz targets'
/// oracle; [`build`] applies the rule to the variables it has already found.
#[cfg(fuzzing)]
pub(crate) fn resolve_script_name(params: &Params, forced: Option<&str>) -> (Vec<u8>, Vec<u8>) {
    resolve(&Vars::of(params), forced)
}

fn resolve(vars: &Vars<'_>, forced: Option<&str>) -> (Vec<u8>, Vec<u8>) {
    let sent_script = vars.script_name;
    let mut path_info = match (vars.path_info, sent_script) {
        (Some(p), _) => p.to_vec(),
        (None, Some(_)) => Vec::new(),
        (None, None) => match vars.document_uri {
            Some(d) => d.to_vec(),
            None => path_of(vars.request_uri),
        },
    };
    if let Some(forced) = forced {
        let forced = forced.trim_end_matches('/').as_bytes();
        if vars.path_info.is_none() && sent_script.is_none() {
            if let Some(rest) = path_info.strip_prefix(forced) {
                if rest.is_empty() || rest.starts_with(b"/") {
                    path_info = rest.to_vec();
                }
            }
        }
        return (forced.to_vec(), path_info);
    }
    let script_url = vars
        .script_url
        .filter(|v| !v.is_empty())
        .or_else(|| vars.redirect_url.filter(|v| !v.is_empty()));
    if let Some(url) = script_url {
        let url = collapse_slashes(url);
        let script = if !path_info.is_empty() && url.ends_with(&path_info) {
            url[..url.len() - path_info.len()].to_vec()
        } else {
            url
        };
        return (script, path_info);
    }
    // lighttpd's url.rewrite onto the script (the seed's lighttpd setup: `^(/.*)$` =>
    // `/mysite.fcgi$1`) sends the rewritten URI as REDIRECT_URI and keeps the public one in
    // REQUEST_URI: the public script name is that path minus PATH_INFO, as with SCRIPT_URL.
    if vars.redirect_uri.is_some_and(|v| !v.is_empty()) {
        let public = collapse_slashes(&path_of(vars.request_uri));
        if let Some(script) = public.strip_suffix(path_info.as_slice()) {
            return (script.to_vec(), path_info);
        }
    }
    (sent_script.unwrap_or(b"").to_vec(), path_info)
}

/// The percent-decoded path of `REQUEST_URI` (`/` when it was not sent).
#[cfg(fuzzing)]
pub(crate) fn request_path(params: &Params) -> Vec<u8> {
    path_of(params.get(b"REQUEST_URI"))
}

fn path_of(request_uri: Option<&[u8]>) -> Vec<u8> {
    let raw = request_uri.unwrap_or(b"/");
    percent_decode(raw.split(|&b| b == b'?').next().unwrap_or(raw))
}

/// The URI handlers route on: the public `REQUEST_URI` when sent, else rebuilt from the
/// resolved script name, path and query string.
fn request_uri(
    params: &Params,
    vars: &Vars<'_>,
    script: &[u8],
    path_info: &[u8],
) -> Result<Uri, BuildError> {
    let sent = vars.request_uri.filter(|v| !v.is_empty());
    // The common case: a REQUEST_URI with nothing to escape is parsed where it lies, in the
    // variables' buffer, not copied into a new one.
    if let Some(r) = sent.filter(|r| r.iter().all(|&b| URI_KEEP[usize::from(b)])) {
        if let Ok(uri) = Uri::from_maybe_shared(params.share(r)) {
            return Ok(uri);
        }
    }
    // Made again for the error's text rather than copied for every request that has none.
    let raw = || match sent {
        Some(r) => escape_uri(r),
        None => {
            let mut s = escape_uri(script);
            s.extend_from_slice(&escape_uri(path_info));
            if s.is_empty() {
                s.push(b'/');
            }
            if let Some(q) = vars.query_string.filter(|q| !q.is_empty()) {
                s.push(b'?');
                s.extend_from_slice(&escape_uri(q));
            }
            s
        }
    };
    Uri::from_maybe_shared(bytes::Bytes::from(raw()))
        .map_err(|_| BuildError::BadUri(String::from_utf8_lossy(&raw()).into_owned()))
}

/// The bytes [`escape_uri`] keeps as they are: ASCII letters and digits, and
/// `-._~!$&'()*+,;=:@/?%`. A table, so a URI is checked in one lookup per byte.
const URI_KEEP: [bool; 256] = {
    let mut keep = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        keep[b] = c.is_ascii_alphanumeric();
        b += 1;
    }
    let marks = b"-._~!$&'()*+,;=:@/?%";
    let mut i = 0;
    while i < marks.len() {
        keep[marks[i] as usize] = true;
        i += 1;
    }
    keep
};

/// Percent-encodes every byte `http::Uri` would refuse (non-ASCII, controls, space and the
/// few ASCII characters RFC 3986 excludes), leaving existing escapes and delimiters alone.
pub(crate) fn escape_uri(raw: &[u8]) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Vec::with_capacity(raw.len());
    for &b in raw {
        if URI_KEEP[usize::from(b)] {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
        }
    }
    out
}

/// Decodes `%XX` escapes; malformed escapes are kept literally, as web servers do.
pub(crate) fn percent_decode(raw: &[u8]) -> Vec<u8> {
    fn hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' && i + 2 < raw.len() {
            if let (Some(h), Some(l)) = (hex(raw[i + 1]), hex(raw[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(raw[i]);
        i += 1;
    }
    out
}

fn collapse_slashes(url: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(url.len());
    for &b in url {
        if !(b == b'/' && out.last() == Some(&b'/')) {
            out.push(b);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use appserver_proto::params::ParamsBuilder;
    use appserver_proto::Limits;

    const GW: Gateway = Gateway {
        protocol: "fcgi",
        method: "threaded",
    };

    fn params(pairs: &[(&str, &str)]) -> Params {
        let mut b = ParamsBuilder::new(Limits::default());
        for (n, v) in pairs {
            b.push(n.as_bytes(), v.as_bytes()).unwrap();
        }
        b.finish()
    }

    fn build_with(pairs: &[(&str, &str)], forced: Option<&str>) -> Request {
        let options = RequestOptions {
            script_name: forced.map(str::to_owned),
        };
        build(params(pairs), Body::empty(), &options, GW).unwrap()
    }

    fn env_of<'a>(req: &'a Request, name: &str) -> &'a [u8] {
        req.extensions()
            .get::<Env>()
            .unwrap()
            .get(name.as_bytes())
            .unwrap()
    }

    #[test]
    fn nginx_request_maps_method_uri_headers() {
        let req = build_with(
            &[
                ("REQUEST_METHOD", "POST"),
                ("REQUEST_URI", "/a%20b/caf\u{e9}?x=1"),
                ("QUERY_STRING", "x=1"),
                ("CONTENT_TYPE", "text/plain"),
                ("CONTENT_LENGTH", "5"),
                ("HTTP_CONTENT_LENGTH", "5"),
                ("HTTP_X_FORWARDED_FOR", "10.0.0.1"),
                ("HTTP_HOST", "example.com"),
                ("SERVER_PROTOCOL", "HTTP/1.0"),
            ],
            None,
        );
        assert_eq!(req.method(), Method::POST);
        assert_eq!(req.uri().path(), "/a%20b/caf%C3%A9");
        assert_eq!(req.uri().query(), Some("x=1"));
        assert_eq!(req.version(), Version::HTTP_10);
        assert_eq!(req.headers()["x-forwarded-for"], "10.0.0.1");
        assert_eq!(req.headers()["host"], "example.com");
        assert_eq!(req.headers()["content-length"], "5");
        assert_eq!(req.headers()["content-type"], "text/plain");
        assert_eq!(req.headers().get_all("content-length").iter().count(), 1);
    }

    /// A name sent twice (nginx repeats a `fastcgi_param` from an included file): the last
    /// value counts, as `Env::get` answers, for every variable the model reads.
    #[test]
    fn a_variable_sent_twice_takes_its_last_value() {
        let req = build_with(
            &[
                ("REQUEST_METHOD", "GET"),
                ("REQUEST_URI", "/first"),
                ("SCRIPT_NAME", "/first"),
                ("CONTENT_TYPE", "text/plain"),
                ("SERVER_PROTOCOL", "HTTP/1.0"),
                ("REQUEST_METHOD", "PUT"),
                ("REQUEST_URI", "/app/x"),
                ("SCRIPT_NAME", "/app"),
                ("PATH_INFO", "/x"),
                ("CONTENT_TYPE", "text/html"),
                ("SERVER_PROTOCOL", "HTTP/1.1"),
            ],
            None,
        );
        assert_eq!(req.method(), Method::PUT);
        assert_eq!(req.uri(), "/app/x");
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.headers()["content-type"], "text/html");
        assert_eq!(env_of(&req, "SCRIPT_NAME"), b"/app");
        assert_eq!(env_of(&req, "PATH_INFO"), b"/x");
    }

    #[test]
    fn minimal_params_default_to_get_slash() {
        let req = build_with(&[("SERVER_PORT", "80")], None);
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri(), "/");
    }

    #[test]
    fn script_name_rule_follows_django() {
        // Apache + mod_rewrite to mysite.fcgi (the seed's setup).
        let req = build_with(
            &[
                ("SCRIPT_NAME", "/mysite.fcgi"),
                ("PATH_INFO", "/blog/1"),
                ("SCRIPT_URL", "/prefix//blog/1"),
                ("REQUEST_URI", "/prefix/blog/1"),
            ],
            None,
        );
        assert_eq!(env_of(&req, "SCRIPT_NAME"), b"/prefix");
        assert_eq!(env_of(&req, "PATH_INFO"), b"/blog/1");
        assert_eq!(req.uri(), "/prefix/blog/1");

        // REDIRECT_URL when SCRIPT_URL is absent.
        let req = build_with(
            &[
                ("SCRIPT_NAME", "/mysite.fcgi"),
                ("PATH_INFO", "/x"),
                ("REDIRECT_URL", "/app/x"),
            ],
            None,
        );
        assert_eq!(env_of(&req, "SCRIPT_NAME"), b"/app");

        // lighttpd's url.rewrite onto /mysite.fcgi: REQUEST_URI public, REDIRECT_URI rewritten.
        let lighttpd = |uri: &str, rewritten: &str, path_info: &str| {
            let req = build_with(
                &[
                    ("REQUEST_URI", uri),
                    ("REDIRECT_URI", rewritten),
                    ("SCRIPT_NAME", "/mysite.fcgi"),
                    ("PATH_INFO", path_info),
                ],
                None,
            );
            let script = env_of(&req, "SCRIPT_NAME").to_vec();
            (String::from_utf8(script).unwrap(), req.uri().to_string())
        };
        assert_eq!(
            lighttpd(
                "/blog/caf%C3%A9?q=1",
                "/mysite.fcgi/blog/caf%C3%A9?q=1",
                "/blog/caf\u{e9}"
            ),
            (String::new(), "/blog/caf%C3%A9?q=1".to_owned())
        );
        assert_eq!(
            lighttpd("/site/x", "/mysite.fcgi/x", "/x").0,
            "/site",
            "mounted under a prefix"
        );
        assert_eq!(
            lighttpd("/other", "/mysite.fcgi/x", "/x").0,
            "/mysite.fcgi",
            "a rewrite that does not keep the path: SCRIPT_NAME as sent"
        );

        // script_name= wins over everything.
        let req = build_with(
            &[
                ("SCRIPT_NAME", "/mysite.fcgi"),
                ("PATH_INFO", "/x"),
                ("SCRIPT_URL", "/app/x"),
            ],
            Some(""),
        );
        assert_eq!(env_of(&req, "SCRIPT_NAME"), b"");
        assert_eq!(env_of(&req, "PATH_INFO"), b"/x");
    }

    #[test]
    fn missing_path_info_is_derived_only_without_script_name() {
        // Apache mod_proxy_fcgi: the whole path is SCRIPT_NAME; PATH_INFO stays empty.
        let req = build_with(&[("SCRIPT_NAME", "/a/b"), ("REQUEST_URI", "/a/b")], None);
        assert_eq!(env_of(&req, "PATH_INFO"), b"");
        // nginx SCGI stock params: decoded DOCUMENT_URI, never the raw REQUEST_URI.
        let req = build_with(
            &[
                ("DOCUMENT_URI", "/caf\u{e9}"),
                ("REQUEST_URI", "/caf%C3%A9?q"),
            ],
            None,
        );
        assert_eq!(env_of(&req, "PATH_INFO"), "/caf\u{e9}".as_bytes());
        // Only REQUEST_URI: its decoded path, minus a forced prefix.
        let req = build_with(&[("REQUEST_URI", "/app/x%2Fy?q=1")], Some("/app"));
        assert_eq!(env_of(&req, "PATH_INFO"), b"/x/y");
        assert_eq!(env_of(&req, "SCRIPT_NAME"), b"/app");
    }

    #[test]
    fn content_length_forms() {
        assert_eq!(content_length(&params(&[])), Ok(None));
        assert_eq!(content_length(&params(&[("CONTENT_LENGTH", "")])), Ok(None));
        assert_eq!(
            content_length(&params(&[("CONTENT_LENGTH", "-1")])),
            Ok(None)
        );
        assert_eq!(
            content_length(&params(&[("CONTENT_LENGTH", "18446744073709551615")])),
            Err(BuildError::BadContentLength(
                "18446744073709551615".to_owned()
            ))
        );
        assert_eq!(
            content_length(&params(&[("CONTENT_LENGTH", "9999999999999999999")])),
            Ok(Some(9_999_999_999_999_999_999))
        );
        for bad in ["-2", "+5", " 5", "0x10", "5 "] {
            assert!(content_length(&params(&[("CONTENT_LENGTH", bad)])).is_err());
        }
    }

    /// Found by the request_build fuzz target: `HTTP_CONTENT_LENGtH` became a
    /// `Content-Length` header that no CGI variable backed.
    #[test]
    fn body_headers_come_only_from_the_cgi_variables() {
        for spelling in [
            "HTTP_CONTENT_LENGtH",
            "HTTP_content_length",
            "HTTP_CONTENT-LENGTH",
        ] {
            let req = build_with(&[("REQUEST_METHOD", "POST"), (spelling, "40000")], None);
            assert!(!req.headers().contains_key("content-length"), "{spelling}");
        }
        let req = build_with(
            &[
                ("CONTENT_TYPE", "text/plain"),
                ("HTTP_Content_Type", "text/html"),
            ],
            None,
        );
        let types: Vec<_> = req.headers().get_all("content-type").iter().collect();
        assert_eq!(types, ["text/plain"]);
    }

    #[test]
    fn bad_method_and_uri_are_errors() {
        let p = params(&[("REQUEST_METHOD", "GE T")]);
        assert!(matches!(
            build(p, Body::empty(), &RequestOptions::default(), GW),
            Err(BuildError::BadMethod(_))
        ));
    }

    /// A REQUEST_URI with nothing to escape becomes the URI where it lies: the path points
    /// into the variables' buffer (one with an escape is copied; see above).
    #[test]
    fn a_plain_request_uri_is_shared_not_copied() {
        let p = params(&[("REQUEST_URI", "/a/b?x=1"), ("PATH_INFO", "/a/b")]);
        let sent = p.get(b"REQUEST_URI").unwrap().as_ptr();
        let req = build(p, Body::empty(), &RequestOptions::default(), GW).unwrap();
        assert_eq!(req.uri(), "/a/b?x=1");
        assert_eq!(req.uri().path().as_ptr(), sent);
    }

    /// Header values, and a `CONTENT_LENGTH` spelled as its number, share the variables'
    /// buffer; a length with leading zeros is written as its number.
    #[test]
    fn header_values_share_the_variables_buffer() {
        let p = params(&[
            ("SCRIPT_NAME", ""),
            ("PATH_INFO", "/x"),
            ("HTTP_HOST", "example.com"),
            ("CONTENT_TYPE", "text/plain"),
            ("CONTENT_LENGTH", "12"),
        ]);
        let sent = |name: &[u8]| p.get(name).unwrap().as_ptr();
        let (host, kind, length) = (
            sent(b"HTTP_HOST"),
            sent(b"CONTENT_TYPE"),
            sent(b"CONTENT_LENGTH"),
        );
        let req = build(p, Body::empty(), &RequestOptions::default(), GW).unwrap();
        let header = |name: &str| req.headers()[name].as_bytes().as_ptr();
        assert_eq!(header("host"), host);
        assert_eq!(header("content-type"), kind);
        assert_eq!(header("content-length"), length);
        assert_eq!(req.headers()["content-length"], "12");

        let p = params(&[("CONTENT_LENGTH", "007")]);
        let req = build(p, Body::empty(), &RequestOptions::default(), GW).unwrap();
        assert_eq!(req.headers()["content-length"], "7");
    }

    /// The body is made from the length the request declares, parsed once; a bad one is the
    /// error before any body is made.
    #[test]
    fn the_body_is_made_from_the_declared_length() {
        let mut seen = None;
        let p = params(&[("CONTENT_LENGTH", "7")]);
        let req = build_with_body(
            p,
            |n| {
                seen = Some(n);
                Body::empty()
            },
            &RequestOptions::default(),
            GW,
        )
        .unwrap();
        assert_eq!(seen, Some(Some(7)));
        assert_eq!(req.headers()["content-length"], "7");
        let p = params(&[("CONTENT_LENGTH", "7x")]);
        let made = build_with_body(p, |_| unreachable!(), &RequestOptions::default(), GW);
        assert!(matches!(made, Err(BuildError::BadContentLength(_))));
    }

    #[test]
    fn percent_decode_keeps_malformed_escapes() {
        assert_eq!(percent_decode(b"%41%zz%4"), b"A%zz%4");
        assert_eq!(percent_decode(b"%"), b"%");
    }
}
