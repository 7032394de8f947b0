//! The script's environment: which request variables pass, and what the gateway adds.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use super::{Inner, Vars};

/// Request variables never put in a script's environment, whoever sent them. `HTTP_PROXY`
/// is a client's `Proxy:` header that HTTP libraries read as their proxy (httpoxy); the
/// others make the dynamic loader or the shell run code of the sender's choosing before the
/// script's first line.
pub(super) const DENIED_NAMES: [&str; 3] = ["HTTP_PROXY", "BASH_ENV", "ENV"];

/// Prefixes of request variables never put in a script's environment; see [`DENIED_NAMES`].
pub(super) const DENIED_PREFIXES: [&str; 2] = ["LD_", "BASH_FUNC_"];
impl Inner {
    /// The script's whole environment: the request's variables (minus the denied ones), the
    /// CGI variables the gateway itself owes, and the pass-through list.
    pub(super) fn environment(&self, vars: &Vars) -> Vec<(OsString, OsString)> {
        let mut env: Vec<(OsString, OsString)> = Vec::with_capacity(vars.0.len() + 4);
        let path_info = vars.get(b"PATH_INFO").unwrap_or_default();
        for (name, value) in &vars.0 {
            if !passable(name, value) {
                tracing::debug!(
                    "not passing request variable {} to the script",
                    String::from_utf8_lossy(name)
                );
                continue;
            }
            // RFC 3875 §4.1.5: PATH_INFO is set when the URI has a path-info part.
            if name == b"PATH_INFO" && value.is_empty() {
                continue;
            }
            env.push((os(name), os(value)));
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

/// Whether a request variable may enter a script's environment.
pub(super) fn passable(name: &[u8], value: &[u8]) -> bool {
    let valid =
        !name.is_empty() && !name.contains(&b'=') && !name.contains(&0) && !value.contains(&0);
    valid
        && !DENIED_NAMES.iter().any(|d| name == d.as_bytes())
        && !DENIED_PREFIXES
            .iter()
            .any(|p| name.starts_with(p.as_bytes()))
}

pub(super) fn os(bytes: &[u8]) -> OsString {
    OsStr::from_bytes(bytes).to_os_string()
}
