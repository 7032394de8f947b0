//! The WSGI `environ` (PEP 3333, "environ Variables"): a plain `dict` of native strings.
//!
//! The CGI variables come from the request's [`Env`], byte-exact, decoded as latin-1 (PEP
//! 3333's rule for native strings: every byte maps to the code point of the same value, so
//! nothing is lost and the app re-encodes as it wishes). `HTTP_CONTENT_TYPE` and
//! `HTTP_CONTENT_LENGTH` (nginx sends both) are dropped: the CGI variables describe the body
//! actually forwarded. An empty `CONTENT_LENGTH` (or Caddy's `-1`) is dropped, so "no length"
//! reads as absent. `SCRIPT_NAME` and `PATH_INFO` are the values the script-name rule
//! resolved, and `SCRIPT_NAME` is never `/` (that is `SCRIPT_NAME=""`, `PATH_INFO="/..."`).
//!
//! One case needs more than that rule. WSGI apps route on `PATH_INFO`, and a web server that
//! knows nothing of a mount point sends none: nginx's stock `fastcgi_params` and Apache's
//! `ProxyPass / fcgi://...` put the whole path in `SCRIPT_NAME`. When `PATH_INFO` came out
//! empty and nothing says where the app is mounted (no `SCRIPT_URL`, `REDIRECT_URL` or
//! `REDIRECT_URI`), the path is the request's decoded path (`DOCUMENT_URI`, else
//! `REQUEST_URI`'s), minus `script_name=` when that is set, and `SCRIPT_NAME` is empty or the
//! forced prefix: what the app would see mounted at the root, or at the forced prefix.
//! Built without the GIL: the Python thread only turns the pairs into a `dict`.

use http::request::Parts;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};

use crate::request::Env;

/// The CGI part of an environ: (name, value) pairs in arrival order, raw bytes.
pub(crate) type Vars = Vec<(Vec<u8>, Vec<u8>)>;

/// What the process model tells the app through `wsgi.multithread` / `wsgi.multiprocess`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Flags {
    /// `wsgi.multithread`: other threads of this process may call the app at the same time.
    pub(crate) multithread: bool,
    /// `wsgi.multiprocess`: other processes may call an equivalent app at the same time.
    pub(crate) multiprocess: bool,
}

/// The CGI variables of a request as WSGI wants them; `forced` when `script_name=` is set.
pub(crate) fn vars(parts: &Parts, forced: bool) -> Vars {
    let mut vars: Vars = Vec::with_capacity(32);
    match parts.extensions.get::<Env>() {
        Some(env) => {
            for (name, value) in env.iter() {
                let dropped = match name {
                    b"HTTP_CONTENT_TYPE" | b"HTTP_CONTENT_LENGTH" => true,
                    b"CONTENT_LENGTH" => value.is_empty() || value == b"-1",
                    b"CONTENT_TYPE" => value.is_empty(),
                    _ => false,
                };
                if !dropped {
                    vars.push((name.to_vec(), value.to_vec()));
                }
            }
        }
        // A request that did not come through a driver (a Rust test, an embedding program):
        // the variables a web server would have sent.
        None => {
            vars.push((b"REQUEST_METHOD".to_vec(), parts.method.as_str().into()));
            vars.push((
                b"PATH_INFO".to_vec(),
                crate::request::percent_decode(parts.uri.path().as_bytes()),
            ));
            vars.push((
                b"QUERY_STRING".to_vec(),
                parts.uri.query().unwrap_or("").into(),
            ));
            for (name, value) in &parts.headers {
                let cgi = match name.as_str() {
                    "content-type" => "CONTENT_TYPE".to_owned(),
                    "content-length" => "CONTENT_LENGTH".to_owned(),
                    other => format!("HTTP_{}", other.to_ascii_uppercase().replace('-', "_")),
                };
                vars.push((cgi.into_bytes(), value.as_bytes().to_vec()));
            }
        }
    }
    whole_path_without_mount(&mut vars, forced);
    fix_script_name(&mut vars);
    let host = get(&vars, b"HTTP_HOST").map(|h| {
        let h = h.to_vec();
        match h.iter().rposition(|&b| b == b':') {
            Some(i) if !h.ends_with(b"]") => h[..i].to_vec(),
            _ => h,
        }
    });
    let https = matches!(get(&vars, b"HTTPS"), Some(b"on" | b"ON" | b"1"))
        || get(&vars, b"REQUEST_SCHEME") == Some(b"https");
    // PEP 3333 requires these; a web server that left one out gets the CGI default.
    let defaults: [(&[u8], Vec<u8>); 7] = [
        (b"REQUEST_METHOD", b"GET".to_vec()),
        (b"SCRIPT_NAME", Vec::new()),
        (b"PATH_INFO", Vec::new()),
        (b"QUERY_STRING", Vec::new()),
        (
            b"SERVER_NAME",
            host.unwrap_or_else(|| b"localhost".to_vec()),
        ),
        (
            b"SERVER_PORT",
            if https {
                b"443".to_vec()
            } else {
                b"80".to_vec()
            },
        ),
        (b"SERVER_PROTOCOL", b"HTTP/1.1".to_vec()),
    ];
    for (name, value) in defaults {
        if get(&vars, name).is_none() {
            vars.push((name.to_vec(), value));
        }
    }
    vars
}

/// `wsgi.url_scheme`: `https` when the web server said the request came over TLS.
pub(crate) fn url_scheme(vars: &Vars) -> &'static str {
    let https = matches!(get(vars, b"HTTPS"), Some(b"on" | b"ON" | b"1"))
        || get(vars, b"REQUEST_SCHEME") == Some(b"https");
    if https {
        "https"
    } else {
        "http"
    }
}

fn get<'a>(vars: &'a Vars, name: &[u8]) -> Option<&'a [u8]> {
    vars.iter()
        .rev()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_slice())
}

fn set(vars: &mut Vars, name: &[u8], value: Vec<u8>) {
    vars.retain(|(n, _)| n != name);
    vars.push((name.to_vec(), value));
}

/// See the module doc: an empty `PATH_INFO` with no mount information becomes the request's
/// path (minus a forced `SCRIPT_NAME`).
fn whole_path_without_mount(vars: &mut Vars, forced: bool) {
    let mounted = [&b"SCRIPT_URL"[..], b"REDIRECT_URL", b"REDIRECT_URI"]
        .iter()
        .any(|n| get(vars, n).is_some_and(|v| !v.is_empty()));
    if mounted || !get(vars, b"PATH_INFO").unwrap_or(b"").is_empty() {
        return;
    }
    let path = match get(vars, b"DOCUMENT_URI") {
        Some(d) if !d.is_empty() => d.to_vec(),
        _ => {
            let raw = get(vars, b"REQUEST_URI").unwrap_or(b"");
            let path = raw.split(|&b| b == b'?').next().unwrap_or(raw);
            crate::request::percent_decode(path)
        }
    };
    if path.is_empty() {
        return;
    }
    if forced {
        let script = get(vars, b"SCRIPT_NAME").unwrap_or(b"").to_vec();
        if let Some(rest) = path.strip_prefix(script.as_slice()) {
            if rest.starts_with(b"/") {
                set(vars, b"PATH_INFO", rest.to_vec());
            }
        }
    } else {
        set(vars, b"SCRIPT_NAME", Vec::new());
        set(vars, b"PATH_INFO", path);
    }
}

/// PEP 3333: `SCRIPT_NAME` is empty or starts with `/` and never ends with one (the root is
/// `""`); `PATH_INFO` is empty or starts with `/`. A trailing slash moves to `PATH_INFO`.
fn fix_script_name(vars: &mut Vars) {
    let script = get(vars, b"SCRIPT_NAME").unwrap_or(b"").to_vec();
    let path = get(vars, b"PATH_INFO").unwrap_or(b"").to_vec();
    if script.ends_with(b"/") {
        let trimmed = script.trim_ascii_end();
        let mut cut = trimmed.len();
        while cut > 0 && trimmed[cut - 1] == b'/' {
            cut -= 1;
        }
        let mut new_path = b"/".to_vec();
        new_path.extend_from_slice(path.strip_prefix(b"/").unwrap_or(&path));
        set(vars, b"SCRIPT_NAME", script[..cut].to_vec());
        set(vars, b"PATH_INFO", new_path);
    } else if !path.is_empty() && !path.starts_with(b"/") {
        let mut new_path = b"/".to_vec();
        new_path.extend_from_slice(&path);
        set(vars, b"PATH_INFO", new_path);
    }
}

/// A byte string as a native string: latin-1, one code point per byte.
pub(crate) fn latin1<'py>(py: Python<'py>, bytes: &[u8]) -> Bound<'py, PyString> {
    if bytes.is_ascii() {
        // ASCII is latin-1 and valid UTF-8: the common case needs no decoding.
        PyString::new(py, std::str::from_utf8(bytes).unwrap_or_default())
    } else {
        let s: String = bytes.iter().map(|&b| char::from(b)).collect();
        PyString::new(py, &s)
    }
}

/// Builds the environ `dict`: the CGI variables plus the `wsgi.*` keys.
pub(crate) fn dict<'py>(
    py: Python<'py>,
    vars: &Vars,
    flags: Flags,
    input: Bound<'py, PyAny>,
    errors: Bound<'py, PyAny>,
    file_wrapper: Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyDict>> {
    let environ = PyDict::new(py);
    for (name, value) in vars {
        environ.set_item(latin1(py, name), latin1(py, value))?;
    }
    environ.set_item("wsgi.version", PyTuple::new(py, [1, 0])?)?;
    environ.set_item("wsgi.url_scheme", url_scheme(vars))?;
    environ.set_item("wsgi.input", input)?;
    // The server makes the input end at the body's end whether or not a length was sent
    // (chunked uploads through nginx or Apache): mod_wsgi's extension, which Django reads.
    environ.set_item("wsgi.input_terminated", true)?;
    environ.set_item("wsgi.errors", errors)?;
    environ.set_item("wsgi.multithread", flags.multithread)?;
    environ.set_item("wsgi.multiprocess", flags.multiprocess)?;
    environ.set_item("wsgi.run_once", false)?;
    environ.set_item("wsgi.file_wrapper", file_wrapper)?;
    Ok(environ)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_vars(pairs: &[(&str, &str)]) -> Vars {
        let mut b = appserver_proto::params::ParamsBuilder::new(appserver_proto::Limits::default());
        for (n, v) in pairs {
            b.push(n.as_bytes(), v.as_bytes()).unwrap();
        }
        let mut req = http::Request::new(());
        req.extensions_mut().insert(Env::new(b.finish()));
        vars(&req.into_parts().0, false)
    }

    fn value<'a>(vars: &'a Vars, name: &str) -> Option<&'a str> {
        get(vars, name.as_bytes()).map(|v| std::str::from_utf8(v).unwrap())
    }

    #[test]
    fn body_headers_and_empty_lengths_are_dropped() {
        let v = env_vars(&[
            ("CONTENT_LENGTH", ""),
            ("CONTENT_TYPE", ""),
            ("HTTP_CONTENT_LENGTH", "5"),
            ("HTTP_CONTENT_TYPE", "text/plain"),
            ("HTTP_X_A", "1"),
        ]);
        for gone in [
            "CONTENT_LENGTH",
            "CONTENT_TYPE",
            "HTTP_CONTENT_LENGTH",
            "HTTP_CONTENT_TYPE",
        ] {
            assert_eq!(value(&v, gone), None, "{gone}");
        }
        assert_eq!(value(&v, "HTTP_X_A"), Some("1"));
        let v = env_vars(&[("CONTENT_LENGTH", "-1")]);
        assert_eq!(value(&v, "CONTENT_LENGTH"), None);
        let v = env_vars(&[("CONTENT_LENGTH", "12")]);
        assert_eq!(value(&v, "CONTENT_LENGTH"), Some("12"));
    }

    #[test]
    fn script_name_is_never_a_slash() {
        let v = env_vars(&[("SCRIPT_NAME", "/"), ("PATH_INFO", "x")]);
        assert_eq!(
            (value(&v, "SCRIPT_NAME"), value(&v, "PATH_INFO")),
            (Some(""), Some("/x"))
        );
        let v = env_vars(&[("SCRIPT_NAME", "/app/"), ("PATH_INFO", "")]);
        assert_eq!(
            (value(&v, "SCRIPT_NAME"), value(&v, "PATH_INFO")),
            (Some("/app"), Some("/"))
        );
        let v = env_vars(&[("SCRIPT_NAME", "/app"), ("PATH_INFO", "/a")]);
        assert_eq!(
            (value(&v, "SCRIPT_NAME"), value(&v, "PATH_INFO")),
            (Some("/app"), Some("/a"))
        );
    }

    #[test]
    fn a_whole_path_in_script_name_becomes_path_info() {
        // nginx's stock fastcgi_params: SCRIPT_NAME is the whole (decoded) path.
        let v = env_vars(&[
            ("SCRIPT_NAME", "/blog/caf\u{e9}/"),
            ("PATH_INFO", ""),
            ("REQUEST_URI", "/blog/caf%C3%A9/?q"),
            ("DOCUMENT_URI", "/blog/caf\u{e9}/"),
        ]);
        assert_eq!(value(&v, "SCRIPT_NAME"), Some(""));
        assert_eq!(value(&v, "PATH_INFO"), Some("/blog/caf\u{e9}/"));
        // Apache mod_proxy_fcgi: no DOCUMENT_URI; the decoded REQUEST_URI path.
        let v = env_vars(&[
            ("SCRIPT_NAME", "/a b"),
            ("PATH_INFO", ""),
            ("REQUEST_URI", "/a%20b?x"),
        ]);
        assert_eq!(
            (value(&v, "SCRIPT_NAME"), value(&v, "PATH_INFO")),
            (Some(""), Some("/a b"))
        );
        // Mount information present: the resolved values stand.
        let v = env_vars(&[
            ("SCRIPT_NAME", "/app"),
            ("PATH_INFO", ""),
            ("SCRIPT_URL", "/app"),
            ("REQUEST_URI", "/app"),
        ]);
        assert_eq!(
            (value(&v, "SCRIPT_NAME"), value(&v, "PATH_INFO")),
            (Some("/app"), Some(""))
        );
    }

    #[test]
    fn a_forced_script_name_is_cut_from_the_path() {
        let mut b = appserver_proto::params::ParamsBuilder::new(appserver_proto::Limits::default());
        for (n, v) in [
            ("SCRIPT_NAME", "/site"),
            ("PATH_INFO", ""),
            ("REQUEST_URI", "/site/blog/x/"),
        ] {
            b.push(n.as_bytes(), v.as_bytes()).unwrap();
        }
        let mut req = http::Request::new(());
        req.extensions_mut().insert(Env::new(b.finish()));
        let v = vars(&req.into_parts().0, true);
        assert_eq!(
            (value(&v, "SCRIPT_NAME"), value(&v, "PATH_INFO")),
            (Some("/site"), Some("/blog/x/"))
        );
    }

    #[test]
    fn required_variables_get_defaults() {
        let v = env_vars(&[("HTTP_HOST", "example.com:8080"), ("HTTPS", "on")]);
        assert_eq!(value(&v, "SERVER_NAME"), Some("example.com"));
        assert_eq!(value(&v, "SERVER_PORT"), Some("443"));
        assert_eq!(value(&v, "REQUEST_METHOD"), Some("GET"));
        assert_eq!(value(&v, "QUERY_STRING"), Some(""));
        assert_eq!(url_scheme(&v), "https");
        let v = env_vars(&[("SERVER_NAME", "a"), ("SERVER_PORT", "81")]);
        assert_eq!(
            (value(&v, "SERVER_NAME"), value(&v, "SERVER_PORT")),
            (Some("a"), Some("81"))
        );
        assert_eq!(url_scheme(&v), "http");
    }
}
