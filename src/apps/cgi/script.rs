//! Which script a request runs: `docroot=` confinement, the script-name walk, and the
//! checks every script passes before it starts.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use http::StatusCode;
use nix::unistd::{access, AccessFlags};

use crate::request::percent_decode;

use super::{Refusal, Vars};

/// `docroot=` as given (absolute) and with every symlink resolved.
#[derive(Debug)]
pub(super) struct Docroot {
    pub(super) given: PathBuf,
    pub(super) canonical: PathBuf,
}
impl Docroot {
    /// Whether `path` is inside the docroot before any symlink is looked at: absolute, no
    /// `..`, under the docroot as given or resolved. Checked first so that a request cannot
    /// even learn which files exist outside.
    pub(super) fn contains_lexically(&self, path: &Path) -> bool {
        path.is_absolute()
            && !path.components().any(|c| c == Component::ParentDir)
            && (path.starts_with(&self.given) || path.starts_with(&self.canonical))
    }

    /// `path` with every symlink resolved, when that is still inside the docroot.
    pub(super) fn confine(&self, path: &Path) -> Result<PathBuf, Refusal> {
        match std::fs::canonicalize(path) {
            Ok(real) if real.starts_with(&self.canonical) => Ok(real),
            Ok(real) => Err(Refusal::new(
                StatusCode::FORBIDDEN,
                format!(
                    "script {} resolves to {}, outside docroot {}",
                    path.display(),
                    real.display(),
                    self.given.display()
                ),
            )),
            Err(e) => Err(stat_refusal(path, &e)),
        }
    }

    /// The script-name walk: the first regular file along `SCRIPT_NAME` + `PATH_INFO` under
    /// the docroot is the script, the rest is `PATH_INFO`. Sets `SCRIPT_NAME`, `PATH_INFO`
    /// and `SCRIPT_FILENAME` to match.
    pub(super) fn walk(&self, vars: &mut Vars) -> Result<PathBuf, Refusal> {
        let mut full = vars.get(b"SCRIPT_NAME").unwrap_or_default().to_vec();
        full.extend_from_slice(vars.get(b"PATH_INFO").unwrap_or_default());
        let shown = || String::from_utf8_lossy(&full).into_owned();
        let mut path = self.canonical.clone();
        let mut end = 0;
        for segment in full.split(|&b| b == b'/') {
            let start = end;
            end = start + segment.len() + 1;
            match segment {
                b"" | b"." => continue,
                b".." => {
                    return Err(Refusal::new(
                        StatusCode::FORBIDDEN,
                        format!("path {:?} climbs out of docroot with ..", shown()),
                    ))
                }
                _ => {}
            }
            path.push(OsStr::from_bytes(segment));
            match std::fs::metadata(&path) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    let split = (start + segment.len()).min(full.len());
                    vars.set(b"SCRIPT_NAME", &full[..split]);
                    vars.set(b"PATH_INFO", &full[split..]);
                    vars.set(b"SCRIPT_FILENAME", path.as_os_str().as_bytes());
                    return Ok(path);
                }
                Err(e) => return Err(stat_refusal(&path, &e)),
            }
        }
        Err(Refusal::new(
            StatusCode::FORBIDDEN,
            format!("path {:?} is a directory, not a script", shown()),
        ))
    }
}

/// Checks that `path` can run as a script: a regular file, executable, not NPH.
pub(super) fn check_script(path: &Path) -> Result<(), Refusal> {
    let meta = std::fs::metadata(path).map_err(|e| stat_refusal(path, &e))?;
    if !meta.is_file() {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            format!("script {} is not a regular file", path.display()),
        ));
    }
    if access(path, AccessFlags::X_OK).is_err() {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            format!("script {} is not executable", path.display()),
        ));
    }
    // Non-parsed-header scripts write a raw HTTP response, which no gateway protocol can
    // carry: the web server in front parses a CGI head.
    let nph = path
        .file_name()
        .is_some_and(|n| n.as_bytes().starts_with(b"nph-"));
    if nph {
        return Err(Refusal::new(
            StatusCode::BAD_GATEWAY,
            format!(
                "script {} is an NPH script (nph- prefix), which app=cgi does not run",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// 404 for a path that does not exist, 403 for one that cannot be looked at.
pub(super) fn stat_refusal(path: &Path, e: &io::Error) -> Refusal {
    match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => Refusal::new(
            StatusCode::NOT_FOUND,
            format!("script {} not found", path.display()),
        ),
        _ => Refusal::new(
            StatusCode::FORBIDDEN,
            format!("script {}: {e}", path.display()),
        ),
    }
}

/// The file a web server's `SCRIPT_FILENAME` names, if it names one.
///
/// Apache's mod_proxy_fcgi (default `ProxyFCGIBackendType FPM`) sends
/// `proxy:fcgi://HOST:PORT/path`, the path still percent-encoded, and sites point it at the
/// file system as PHP-FPM expects (`ProxyPass /cgi-bin/ fcgi://HOST:PORT/srv/cgi-bin/`): the
/// file is the decoded `/path`. Other `proxy:` URLs (mod_proxy_scgi sends
/// `proxy:scgi://HOST:PORT/` + the request path) name no file: `None`, as when nothing was
/// sent, and `docroot=` walks the request path instead.
pub(super) fn sent_filename(sent: &[u8]) -> Option<Cow<'_, [u8]>> {
    if sent.is_empty() {
        return None;
    }
    let Some(url) = sent.strip_prefix(b"proxy:") else {
        return Some(Cow::Borrowed(sent));
    };
    let authority = url.strip_prefix(b"fcgi://")?;
    let slash = authority.iter().position(|&b| b == b'/')?;
    Some(Cow::Owned(percent_decode(&authority[slash..])))
}

/// Splits trailing path info off a `SCRIPT_FILENAME` that names a path below a file, as
/// PHP-FPM's `cgi.fix_pathinfo` does: Apache's mod_proxy_fcgi sends
/// `/srv/cgi-bin/x.sh/a/b` for `/cgi-bin/x.sh/a/b` (and `SCRIPT_NAME=/cgi-bin/x.sh/a/b`, no
/// `PATH_INFO`). The first file along the path is the script; the rest becomes `PATH_INFO`
/// when the web server sent none, and is taken off the end of `SCRIPT_NAME`. A path that
/// exists, or does not exist at all, is returned unchanged for the usual checks.
pub(super) fn split_path_info(path: PathBuf, vars: &mut Vars) -> PathBuf {
    match std::fs::metadata(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => {}
        _ => return path,
    }
    let full = path.as_os_str().as_bytes();
    let mut end = 0;
    let file = loop {
        let Some(slash) = full[end + 1..].iter().position(|&b| b == b'/') else {
            return path;
        };
        end += 1 + slash;
        match std::fs::metadata(OsStr::from_bytes(&full[..end])) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => break &full[..end],
            Err(_) => return path,
        }
    };
    let info = &full[end..];
    if vars.get(b"PATH_INFO").is_none_or(<[u8]>::is_empty) {
        vars.set(b"PATH_INFO", info);
    }
    if let Some(name) = vars.get(b"SCRIPT_NAME").and_then(|n| n.strip_suffix(info)) {
        let name = name.to_vec();
        vars.set(b"SCRIPT_NAME", &name);
    }
    vars.set(b"SCRIPT_FILENAME", file);
    PathBuf::from(OsStr::from_bytes(file))
}
