//! The script's environment: which request variables pass, and what the gateway adds.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use std::sync::LazyLock;

use super::{Inner, Vars};
use crate::log_limit::KeyedLimit;

/// The RFC 3875 §4.1 meta-variables: what a CGI script is promised.
pub const RFC3875_NAMES: [&str; 17] = [
    "AUTH_TYPE",
    "CONTENT_LENGTH",
    "CONTENT_TYPE",
    "GATEWAY_INTERFACE",
    "PATH_INFO",
    "PATH_TRANSLATED",
    "QUERY_STRING",
    "REMOTE_ADDR",
    "REMOTE_HOST",
    "REMOTE_IDENT",
    "REMOTE_USER",
    "REQUEST_METHOD",
    "SCRIPT_NAME",
    "SERVER_NAME",
    "SERVER_PORT",
    "SERVER_PROTOCOL",
    "SERVER_SOFTWARE",
];

/// What the web servers in front are known to send besides (nginx's `fastcgi_params`,
/// Apache's mod_proxy_fcgi and mod_rewrite, lighttpd's mod_fastcgi, appserver's own AJP
/// mapping), and scripts read: PHP's `REDIRECT_STATUS`, `HTTPS`, `REQUEST_URI`...
pub const WEB_SERVER_NAMES: [&str; 17] = [
    "CONTEXT_DOCUMENT_ROOT",
    "CONTEXT_PREFIX",
    "DOCUMENT_ROOT",
    "DOCUMENT_URI",
    "HTTPS",
    "REDIRECT_QUERY_STRING",
    "REDIRECT_STATUS",
    "REDIRECT_URL",
    "REMOTE_PORT",
    "REQUEST_SCHEME",
    "REQUEST_URI",
    "SCRIPT_FILENAME",
    "SCRIPT_URI",
    "SCRIPT_URL",
    "SERVER_ADDR",
    "SERVER_ADMIN",
    "SERVER_SIGNATURE",
];

/// Prefixes of request variables that pass: request headers (`HTTP_*`) and mod_ssl's TLS
/// variables (`SSL_*`), minus [`DENIED_NAMES`].
pub const ALLOWED_PREFIXES: [&str; 2] = ["HTTP_", "SSL_"];

/// Names with an allowed prefix that still never pass. `HTTP_PROXY` is a client's `Proxy:`
/// header that HTTP libraries read as their proxy (httpoxy, protocols.md §4);
/// `SSL_CERT_FILE` and `SSL_CERT_DIR` make OpenSSL, and so curl or Python in a script,
/// trust the certificates a sender names.
pub const DENIED_NAMES: [&str; 3] = ["HTTP_PROXY", "SSL_CERT_FILE", "SSL_CERT_DIR"];

/// Names `cgi_vars=` may not add: the ones the dynamic loader or a shell acts on before the
/// script's first line (`LD_PRELOAD`, `BASH_ENV`, `BASH_FUNC_*`...), besides [`DENIED_NAMES`].
pub const NEVER_PREFIXES: [&str; 2] = ["LD_", "BASH_FUNC_"];

/// See [`NEVER_PREFIXES`].
pub const NEVER_NAMES: [&str; 4] = ["BASH_ENV", "ENV", "SHELLOPTS", "PS4"];

/// Whether `name` may be added to the allowlist with `cgi_vars=`.
pub(super) fn may_allow(name: &str) -> bool {
    !DENIED_NAMES.contains(&name)
        && !NEVER_NAMES.contains(&name)
        && !NEVER_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Whether the request variable `name` is on the allowlist: an RFC 3875 name, a name web
/// servers send, `HTTP_*` or `SSL_*` (minus [`DENIED_NAMES`]), or one of `extra`
/// (`cgi_vars=`). Everything else a peer sends stays out of the script's environment.
pub(super) fn allowed(name: &[u8], extra: &[String]) -> bool {
    let Ok(name) = std::str::from_utf8(name) else {
        return false;
    };
    if DENIED_NAMES.contains(&name) {
        return false;
    }
    RFC3875_NAMES.contains(&name)
        || WEB_SERVER_NAMES.contains(&name)
        || ALLOWED_PREFIXES
            .iter()
            .any(|p| name.len() > p.len() && name.starts_with(p))
        || extra.iter().any(|e| e == name)
}

/// Logs the first time each name is left out, process-wide: an operator sees once that the
/// web server sends a variable scripts do not get (and can add it with `cgi_vars=`), and a
/// peer sending thousands of names gets at most [`MAX_NAMES_LOGGED`] lines.
fn dropped_names() -> &'static KeyedLimit {
    static LIMIT: LazyLock<KeyedLimit> = LazyLock::new(|| KeyedLimit::new(1, 0, MAX_NAMES_LOGGED));
    &LIMIT
}

/// Most distinct dropped names logged by one process; see [`dropped_names`].
const MAX_NAMES_LOGGED: usize = 256;

impl Inner {
    /// The script's whole environment: the request's variables on the allowlist, the
    /// CGI variables the gateway itself owes, and the pass-through list.
    pub(super) fn environment(&self, vars: &Vars) -> Vec<(OsString, OsString)> {
        let mut env: Vec<(OsString, OsString)> = Vec::with_capacity(vars.0.len() + 4);
        let path_info = vars.get(b"PATH_INFO").unwrap_or_default();
        let mut dropped: Vec<&[u8]> = Vec::new();
        for (name, value) in &vars.0 {
            if !valid(name, value) || !allowed(name, &self.allow_vars) {
                dropped.push(name);
                continue;
            }
            // RFC 3875 §4.1.5: PATH_INFO is set when the URI has a path-info part.
            if name == b"PATH_INFO" && value.is_empty() {
                continue;
            }
            env.push((os(name), os(value)));
        }
        if !dropped.is_empty() {
            for name in &dropped {
                let name = String::from_utf8_lossy(name);
                if dropped_names().admit(&name).note().is_some() {
                    tracing::info!(
                        "request variable {name:?} not passed to CGI scripts: not on the \
                         allowlist (docs/cgi.md; cgi_vars= adds names)"
                    );
                }
            }
            tracing::debug!(
                "{} request variables not passed to the script: {}",
                dropped.len(),
                dropped
                    .iter()
                    .map(|n| String::from_utf8_lossy(n))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let mut put = |name: &str, value: OsString| {
            env.retain(|(n, _)| n != name);
            env.push((OsString::from(name), value));
        };
        put("GATEWAY_INTERFACE", "CGI/1.1".into());
        if vars.get(b"SERVER_SOFTWARE").is_none() {
            put(
                "SERVER_SOFTWARE",
                concat!("appserver/", env!("CARGO_PKG_VERSION")).into(),
            );
        }
        if vars.get(b"PATH_TRANSLATED").is_none() && !path_info.is_empty() {
            let root = match &self.docroot {
                Some(root) => Some(root.given.as_os_str().as_bytes()),
                None => vars.get(b"DOCUMENT_ROOT").filter(|r| !r.is_empty()),
            };
            if let Some(root) = root {
                let mut translated = root.strip_suffix(b"/").unwrap_or(root).to_vec();
                translated.extend_from_slice(path_info);
                put("PATH_TRANSLATED", os(&translated));
            }
        }
        for (name, value) in &self.pass_env {
            env.retain(|(n, _)| n != name);
            env.push((name.clone(), value.clone()));
        }
        env
    }
}

/// Whether a request variable can be put in an environment at all: a name without `=` or
/// NUL, a value without NUL.
pub(super) fn valid(name: &[u8], value: &[u8]) -> bool {
    !name.is_empty() && !name.contains(&b'=') && !name.contains(&0) && !value.contains(&0)
}

pub(super) fn os(bytes: &[u8]) -> OsString {
    OsStr::from_bytes(bytes).to_os_string()
}
