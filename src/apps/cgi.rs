//! `app=cgi`: a CGI/1.1 gateway (RFC 3875), the job fcgiwrap does, with limits.
//!
//! For each request it picks the script (`script=`, else the web server's `SCRIPT_FILENAME`,
//! else `docroot=` plus the script-name walk), checks it (inside `docroot=` after resolving
//! symlinks, a regular executable file, no `nph-` prefix), builds its environment, starts it
//! without a shell in a process group of its own, and then runs three streams at once:
//!
//! ```text
//! request body ─(stdin task)─▶ stdin ─┐                     ┌─ stdout ─▶ CGI head, then the
//!                                     └─ script (own pgid) ─┤            body, streamed
//!                                                           └─ stderr ─▶ log, line by line
//! ```
//!
//! The environment is the request's CGI variables plus the `cgi_env=` list taken from
//! appserver's own environment, never the rest of it, and never `HTTP_PROXY` (httpoxy,
//! protocols.md §4) nor the variables a dynamic loader or shell acts on before the script
//! runs (`LD_*`, `BASH_ENV`, `ENV`, `BASH_FUNC_*`).
//!
//! A script never outlives its request: `cgi_timeout=` (TERM to the group, KILL
//! [`KILL_GRACE`] later, 504 when no header was sent yet), a client abort (the handler future
//! or the response body dropped) and a failed request body all stop the whole process group,
//! and every script is waited for, so no zombie is left. What this module must not do: run a
//! shell, hand the process environment to scripts, or follow a request out of `docroot=`.

use std::borrow::Cow;
use std::ffi::{OsStr, OsString};
use std::future::Future as _;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue, LOCATION};
use http::{HeaderMap, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::{access, AccessFlags, Pid};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader, ReadBuf};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use tokio::task::AbortHandle;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::config::{Config, ConfigError};
use crate::request::{percent_decode, Env};
use crate::response::{plain, ReasonPhrase};
use crate::{Body, BoxError, Handler, Request, Response};

/// How long a script's process group has between SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(2);

/// Most bytes of CGI header a script may send before the blank line: lighttpd's limit, and
/// far beyond the 4-8 KiB nginx itself accepts from a FastCGI app. Bounds what one request
/// buffers before its body streams.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Most local redirects (`Location: /path` without `Status`) one request follows, as Apache's
/// `LimitInternalRecursion` default: a script redirecting to itself ends in a 500.
pub const MAX_LOCAL_REDIRECTS: usize = 10;

/// Most output kept while the script still reads its input: nginx sends no more request
/// body once it has the response head, so the head waits for the end of the input and the
/// output meanwhile waits here. Sixteen pipe buffers' worth covers scripts that answer as they
/// read; beyond it the head goes out (and a web server like nginx stops sending: the
/// script's `cgi_timeout=` ends it).
pub const MAX_EARLY_OUTPUT: usize = 1024 * 1024;

/// Longest stderr line logged as one line; longer ones are split (mod_fcgid buffers 8000).
const STDERR_LINE_MAX: usize = 8 * 1024;

/// Bytes read from a script's stdout at a time.
const READ_CHUNK: usize = 64 * 1024;

/// Request variables never put in a script's environment, whoever sent them. `HTTP_PROXY`
/// is a client's `Proxy:` header that HTTP libraries read as their proxy (httpoxy); the
/// others make the dynamic loader or the shell run code of the sender's choosing before the
/// script's first line.
const DENIED_NAMES: [&str; 3] = ["HTTP_PROXY", "BASH_ENV", "ENV"];

/// Prefixes of request variables never put in a script's environment; see [`DENIED_NAMES`].
const DENIED_PREFIXES: [&str; 2] = ["LD_", "BASH_FUNC_"];

/// Options of the CGI gateway. [`Cgi::from_config`] fills them from the `runfcgi` options;
/// a program embedding the gateway sets them itself:
///
/// ```no_run
/// use std::process::ExitCode;
///
/// use appserver::apps::cgi::{Cgi, CgiOptions};
///
/// fn main() -> ExitCode {
///     let mut options = CgiOptions::default();
///     options.docroot = Some("/usr/lib/cgi-bin".into());
///     options.pass_env = vec![("PATH".into(), "/usr/bin:/bin".into())];
///     match Cgi::new(options) {
///         // myapp runfcgi socket=/run/cgi.sock
///         Ok(cgi) => appserver::run(cgi),
///         Err(e) => {
///             eprintln!("{e}");
///             ExitCode::from(2)
///         }
///     }
/// }
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CgiOptions {
    /// `script=`: the script every request runs. Default none.
    pub script: Option<PathBuf>,
    /// `docroot=`: scripts chosen by the request must resolve inside it; without
    /// `SCRIPT_FILENAME` the script-name walk starts here. Default none.
    pub docroot: Option<PathBuf>,
    /// `cgi_timeout=`: how long a script may run. Default 60 s.
    pub timeout: Duration,
    /// Variables of appserver's own environment passed to every script (`cgi_env=`); they
    /// win over request variables of the same name. Default none.
    pub pass_env: Vec<(OsString, OsString)>,
}

impl Default for CgiOptions {
    fn default() -> Self {
        Self {
            script: None,
            docroot: None,
            timeout: Duration::from_secs(60),
            pass_env: Vec::new(),
        }
    }
}

/// The CGI gateway handler; see the module docs.
#[derive(Clone, Debug)]
pub struct Cgi {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    script: Option<PathBuf>,
    docroot: Option<Docroot>,
    timeout: Duration,
    pass_env: Vec<(OsString, OsString)>,
}

/// `docroot=` as given (absolute) and with every symlink resolved.
#[derive(Debug)]
struct Docroot {
    given: PathBuf,
    canonical: PathBuf,
}

impl Cgi {
    /// Checks the options: `docroot=` must be a directory and `script=` an executable file.
    pub fn new(options: CgiOptions) -> Result<Cgi, ConfigError> {
        let docroot = match options.docroot {
            Some(given) => {
                let canonical = std::fs::canonicalize(&given).map_err(|e| {
                    ConfigError::new("docroot", format!("{}: {e}", given.display()))
                })?;
                if !canonical.is_dir() {
                    return Err(ConfigError::new(
                        "docroot",
                        format!("{} is not a directory", given.display()),
                    ));
                }
                Some(Docroot { given, canonical })
            }
            None => None,
        };
        if let Some(script) = &options.script {
            if let Err(refusal) = check_script(script) {
                return Err(ConfigError::new("script", refusal.why));
            }
        }
        Ok(Cgi {
            inner: Arc::new(Inner {
                script: options.script,
                docroot,
                timeout: options.timeout,
                pass_env: options.pass_env,
            }),
        })
    }

    /// The gateway `runfcgi app=cgi` serves: `script=`, `docroot=`, `cgi_timeout=`, and the
    /// `cgi_env=` variables read from this process's environment now.
    pub fn from_config(config: &Config) -> Result<Cgi, ConfigError> {
        let pass_env = config
            .cgi_env
            .iter()
            .filter_map(|name| std::env::var_os(name).map(|v| (OsString::from(name), v)))
            .collect();
        Cgi::new(CgiOptions {
            script: config.script.clone(),
            docroot: config.docroot.clone(),
            timeout: config.cgi_timeout,
            pass_env,
        })
    }
}

impl Handler for Cgi {
    async fn call(&self, req: Request) -> Result<Response, BoxError> {
        let (parts, mut body) = req.into_parts();
        let what = format!("{} {}", parts.method, parts.uri);
        let mut vars = parts
            .extensions
            .get::<Env>()
            .map(Vars::from_env)
            .unwrap_or_default();
        for _ in 0..=MAX_LOCAL_REDIRECTS {
            let script = match self.inner.resolve(&mut vars) {
                Ok(script) => script,
                Err(refusal) => return Ok(refusal.answer(&what)),
            };
            let body = std::mem::take(&mut body);
            match self.inner.run(&script, &vars, body, &what).await? {
                Outcome::Response(resp) => return Ok(resp),
                Outcome::LocalRedirect(location) => self.inner.redirect(&mut vars, &location),
            }
        }
        tracing::warn!(
            request = %what,
            "more than {MAX_LOCAL_REDIRECTS} local redirects: answering 500"
        );
        Ok(plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal Server Error",
        ))
    }
}

/// The request's CGI variables, editable: ordered, byte-exact, one value per name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Vars(Vec<(Vec<u8>, Vec<u8>)>);

impl Vars {
    fn from_env(env: &Env) -> Vars {
        let mut vars = Vars::default();
        for (name, value) in env.iter() {
            vars.set(name, value);
        }
        vars
    }

    fn get(&self, name: &[u8]) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// Sets `name`, keeping its position when it exists (the last value sent wins, as
    /// [`Env::get`] has it).
    fn set(&mut self, name: &[u8], value: &[u8]) {
        match self.0.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v = value.to_vec(),
            None => self.0.push((name.to_vec(), value.to_vec())),
        }
    }

    fn remove(&mut self, name: &[u8]) {
        self.0.retain(|(n, _)| n != name);
    }
}

/// A script a request may run.
#[derive(Debug, PartialEq, Eq)]
struct Script {
    /// The file to execute: with `docroot=`, the path with symlinks resolved (the one that was
    /// checked).
    exec: PathBuf,
}

/// Why a request runs no script: the status it gets and the log line saying why.
#[derive(Debug, PartialEq, Eq)]
struct Refusal {
    status: StatusCode,
    why: String,
}

impl Refusal {
    fn new(status: StatusCode, why: impl Into<String>) -> Refusal {
        Refusal {
            status,
            why: why.into(),
        }
    }

    /// Logs the refusal with the request and answers with its status.
    fn answer(self, what: &str) -> Response {
        let status = self.status;
        if status == StatusCode::NOT_FOUND {
            tracing::info!(request = %what, "{}: answering {status}", self.why);
        } else {
            tracing::warn!(request = %what, "{}: answering {status}", self.why);
        }
        plain(status, status.canonical_reason().unwrap_or("Error"))
    }
}

/// What one run of a script came to.
enum Outcome {
    Response(Response),
    /// `Location: /path` with no `Status`: run the request again as a GET of that path.
    LocalRedirect(Vec<u8>),
}

impl Outcome {
    /// A plain-text error response with the status's reason phrase.
    fn error(status: StatusCode) -> Outcome {
        Outcome::Response(plain(status, status.canonical_reason().unwrap_or("Error")))
    }
}

impl Inner {
    /// Picks the request's script and fixes `SCRIPT_FILENAME` (and, after a walk,
    /// `SCRIPT_NAME`/`PATH_INFO`) in `vars` to match.
    fn resolve(&self, vars: &mut Vars) -> Result<Script, Refusal> {
        if let Some(script) = &self.script {
            vars.set(b"SCRIPT_FILENAME", script.as_os_str().as_bytes());
            check_script(script)?;
            return Ok(Script {
                exec: script.clone(),
            });
        }
        let sent = vars
            .get(b"SCRIPT_FILENAME")
            .and_then(sent_filename)
            .map(Cow::into_owned);
        let path = match (sent, &self.docroot) {
            (Some(file), docroot) => {
                vars.set(b"SCRIPT_FILENAME", &file);
                let path = PathBuf::from(OsStr::from_bytes(&file));
                if !path.is_absolute() {
                    return Err(Refusal::new(
                        StatusCode::FORBIDDEN,
                        format!("SCRIPT_FILENAME {} is not an absolute path", path.display()),
                    ));
                }
                if let Some(root) = docroot {
                    if !root.contains_lexically(&path) {
                        return Err(Refusal::new(
                            StatusCode::FORBIDDEN,
                            format!(
                                "SCRIPT_FILENAME {} is outside docroot {}",
                                path.display(),
                                root.given.display()
                            ),
                        ));
                    }
                }
                split_path_info(path, vars)
            }
            (None, Some(root)) => root.walk(vars)?,
            (None, None) => {
                return Err(Refusal::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "no SCRIPT_FILENAME from the web server, and neither script= nor docroot= \
                     is set",
                ))
            }
        };
        let exec = match &self.docroot {
            Some(root) => root.confine(&path)?,
            None => path,
        };
        check_script(&exec)?;
        Ok(Script { exec })
    }

    /// Rewrites `vars` for the GET that a local redirect to `location` runs (RFC 3875
    /// §6.2.2). With `docroot=` (and no `script=`) the new path is walked afresh; otherwise
    /// the same script runs with the new path.
    fn redirect(&self, vars: &mut Vars, location: &[u8]) {
        let (path, query) = match location.iter().position(|&b| b == b'?') {
            Some(at) => (&location[..at], &location[at + 1..]),
            None => (location, &b""[..]),
        };
        let decoded = percent_decode(path);
        vars.set(b"REQUEST_METHOD", b"GET");
        vars.set(b"QUERY_STRING", query);
        vars.set(b"REQUEST_URI", location);
        vars.set(b"DOCUMENT_URI", &decoded);
        for name in [
            &b"CONTENT_LENGTH"[..],
            b"CONTENT_TYPE",
            b"HTTP_CONTENT_LENGTH",
            b"HTTP_CONTENT_TYPE",
            b"PATH_TRANSLATED",
        ] {
            vars.remove(name);
        }
        if self.script.is_none() && self.docroot.is_some() {
            vars.remove(b"SCRIPT_FILENAME");
            vars.set(b"SCRIPT_NAME", &decoded);
            vars.set(b"PATH_INFO", b"");
            return;
        }
        let script_name = vars.get(b"SCRIPT_NAME").unwrap_or_default().to_vec();
        let under_script = !script_name.is_empty()
            && decoded.starts_with(&script_name)
            && matches!(decoded.get(script_name.len()), None | Some(b'/'));
        if under_script {
            vars.set(b"PATH_INFO", &decoded[script_name.len()..]);
        } else {
            vars.set(b"SCRIPT_NAME", b"");
            vars.set(b"PATH_INFO", &decoded);
        }
    }

    /// The script's whole environment: the request's variables (minus the denied ones), the
    /// CGI variables the gateway itself owes, and the pass-through list.
    fn environment(&self, vars: &Vars) -> Vec<(OsString, OsString)> {
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

    /// Runs `script` once: until its CGI head has been read (then the body streams from the
    /// returned response), or until it failed, timed out or asked for a local redirect.
    async fn run(
        &self,
        script: &Script,
        vars: &Vars,
        body: Body,
        what: &str,
    ) -> Result<Outcome, BoxError> {
        let shown = script.exec.display().to_string();
        let mut cmd = Command::new(&script.exec);
        cmd.env_clear()
            .envs(self.environment(vars))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group, so a timeout or an abort reaches whatever the script started.
            .process_group(0)
            .kill_on_drop(true);
        // RFC 3875 §7.2 (and fcgiwrap, Apache): the script runs in its own directory.
        if let Some(dir) = script.exec.parent().filter(|d| !d.as_os_str().is_empty()) {
            cmd.current_dir(dir);
        }
        let deadline = Instant::now() + self.timeout;
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => {
                let status = if e.kind() == io::ErrorKind::PermissionDenied {
                    StatusCode::FORBIDDEN
                } else {
                    StatusCode::BAD_GATEWAY
                };
                let why = format!("cannot execute {shown}: {e}");
                return Ok(Outcome::Response(Refusal::new(status, why).answer(what)));
            }
        };
        let (Some(pid), Some(stdin), Some(mut stdout), Some(stderr)) = (
            child.id(),
            child.stdin.take(),
            child.stdout.take(),
            child.stderr.take(),
        ) else {
            // Spawned with three pipes, and not waited for: every one is there.
            return Err("script started without its pipes".into());
        };
        let group = Pid::from_raw(i32::try_from(pid).map_err(|_| "pid out of range")?);
        let log = Arc::new(LogContext {
            script: shown,
            request: what.to_owned(),
        });
        let failed = CancellationToken::new();
        let mut stdin_task =
            tokio::spawn(feed_stdin(body, stdin, failed.clone(), Arc::clone(&log)));
        let run = Run {
            child: Some(child),
            group,
            deadline,
            timeout: self.timeout,
            stdin_task: Some(stdin_task.abort_handle()),
            log: Arc::clone(&log),
        };
        tokio::spawn(log_stderr(stderr, Arc::clone(&log)));

        let head = tokio::select! {
            head = read_head(&mut stdout) => head,
            () = tokio::time::sleep_until(deadline) => {
                let why = format!("no CGI header within cgi_timeout={}s", self.timeout.as_secs());
                return Ok(run.refuse(StatusCode::GATEWAY_TIMEOUT, &why).await);
            }
            () = failed.cancelled() => return Err(run.body_failed().await),
        };
        let (head, leftover) = match head {
            Ok(head) => head,
            Err(e) => {
                let why = format!("bad CGI response: {e}");
                return Ok(run.refuse(StatusCode::BAD_GATEWAY, &why).await);
            }
        };
        let head = match parse_head(&head) {
            Ok(head) => head,
            Err(e) => {
                let why = format!("bad CGI response: {e}");
                return Ok(run.refuse(StatusCode::BAD_GATEWAY, &why).await);
            }
        };
        let status = match (head.status, &head.location) {
            (Some(status), _) => status,
            (None, Some(location)) if is_local(location) => {
                // RFC 3875 §6.2.2: the response ends here; the body, if any, is not read.
                drop(stdout);
                run.finish();
                return Ok(Outcome::LocalRedirect(location.clone()));
            }
            (None, Some(_)) => StatusCode::FOUND,
            (None, None) => StatusCode::OK,
        };

        // nginx stops sending the request body once it has the response head, so the head
        // waits until the script has all of its input (or stopped reading it). Output that
        // comes meanwhile is kept, up to MAX_EARLY_OUTPUT; beyond it the head goes out anyway.
        let mut early = BytesMut::from(&leftover[..]);
        let mut stdout_open = true;
        while stdout_open && early.len() < MAX_EARLY_OUTPUT {
            early.reserve(READ_CHUNK);
            tokio::select! {
                _ = &mut stdin_task => break,
                read = stdout.read_buf(&mut early) => match read {
                    Ok(0) => stdout_open = false,
                    Ok(_) => {}
                    Err(e) => {
                        let why = format!("reading its output: {e}");
                        return Ok(run.refuse(StatusCode::BAD_GATEWAY, &why).await);
                    }
                },
                () = tokio::time::sleep_until(deadline) => {
                    let why = format!(
                        "input not consumed within cgi_timeout={}s",
                        self.timeout.as_secs()
                    );
                    return Ok(run.refuse(StatusCode::GATEWAY_TIMEOUT, &why).await);
                }
                () = failed.cancelled() => return Err(run.body_failed().await),
            }
        }
        if early.len() >= MAX_EARLY_OUTPUT {
            tracing::debug!(
                script = %log.script, request = %log.request,
                "{MAX_EARLY_OUTPUT} bytes of output before the end of its input: answering now"
            );
        }
        let mut resp = Response::new(Body::new(ScriptBody {
            leftover: Some(early.freeze()).filter(|b| !b.is_empty()),
            stdout,
            buf: vec![0; READ_CHUNK],
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            failed: Box::pin(failed.cancelled_owned()),
            run: Some(run),
        }));
        *resp.status_mut() = status;
        *resp.headers_mut() = head.headers;
        if let Some(reason) = head.reason {
            resp.extensions_mut().insert(reason);
        }
        Ok(Outcome::Response(resp))
    }
}

impl Docroot {
    /// Whether `path` is inside the docroot before any symlink is looked at: absolute, no
    /// `..`, under the docroot as given or resolved. Checked first so that a request cannot
    /// even learn which files exist outside.
    fn contains_lexically(&self, path: &Path) -> bool {
        path.is_absolute()
            && !path.components().any(|c| c == Component::ParentDir)
            && (path.starts_with(&self.given) || path.starts_with(&self.canonical))
    }

    /// `path` with every symlink resolved, when that is still inside the docroot.
    fn confine(&self, path: &Path) -> Result<PathBuf, Refusal> {
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
    fn walk(&self, vars: &mut Vars) -> Result<PathBuf, Refusal> {
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
fn check_script(path: &Path) -> Result<(), Refusal> {
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
fn stat_refusal(path: &Path, e: &io::Error) -> Refusal {
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
fn sent_filename(sent: &[u8]) -> Option<Cow<'_, [u8]>> {
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
fn split_path_info(path: PathBuf, vars: &mut Vars) -> PathBuf {
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

/// Whether a request variable may enter a script's environment.
fn passable(name: &[u8], value: &[u8]) -> bool {
    let valid =
        !name.is_empty() && !name.contains(&b'=') && !name.contains(&0) && !value.contains(&0);
    valid
        && !DENIED_NAMES.iter().any(|d| name == d.as_bytes())
        && !DENIED_PREFIXES
            .iter()
            .any(|p| name.starts_with(p.as_bytes()))
}

fn os(bytes: &[u8]) -> OsString {
    OsStr::from_bytes(bytes).to_os_string()
}

/// `Location: /path` (not `//host/...`, which a browser reads as another host).
fn is_local(location: &[u8]) -> bool {
    location.starts_with(b"/") && !location.starts_with(b"//")
}

/// Names a script and its request in log lines.
#[derive(Debug)]
struct LogContext {
    script: String,
    request: String,
}

/// Copies the request body to the script's stdin; closing stdin at the end is the script's
/// end of input. A failed body (client abort, short upload) cancels `failed`, which stops the
/// script. A script that stops reading just ends the copy: the driver discards the rest.
async fn feed_stdin(
    mut body: Body,
    mut stdin: ChildStdin,
    failed: CancellationToken,
    log: Arc<LogContext>,
) {
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    if stdin.write_all(&data).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(
                    script = %log.script, request = %log.request,
                    "request body failed: {e}: stopping the script"
                );
                failed.cancel();
                return;
            }
        }
    }
}

/// Logs the script's stderr, one `warn` line per line (long lines split), until it closes.
async fn log_stderr(stderr: ChildStderr, log: Arc<LogContext>) {
    let mut reader = BufReader::with_capacity(STDERR_LINE_MAX, stderr);
    let mut line = Vec::with_capacity(256);
    let emit = |line: &[u8]| {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        tracing::warn!(
            script = %log.script, request = %log.request,
            "stderr: {}", String::from_utf8_lossy(line)
        );
    };
    while let Ok(buf) = reader.fill_buf().await {
        if buf.is_empty() {
            break;
        }
        let wanted = match buf.iter().position(|&b| b == b'\n') {
            Some(at) => at + 1,
            None => buf.len(),
        };
        let take = wanted.min(STDERR_LINE_MAX - line.len());
        line.extend_from_slice(&buf[..take]);
        reader.consume(take);
        if line.ends_with(b"\n") || line.len() >= STDERR_LINE_MAX {
            emit(&line);
            line.clear();
        }
    }
    if !line.is_empty() {
        emit(&line);
    }
}

/// Why a script's output is not a CGI response.
#[derive(Debug, thiserror::Error)]
enum HeadError {
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
async fn read_head<R: AsyncRead + Unpin>(stdout: &mut R) -> Result<(Bytes, Bytes), HeadError> {
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
fn head_end(buf: &[u8]) -> Option<(usize, usize)> {
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
struct Head {
    status: Option<StatusCode>,
    /// The `Status` line's own reason phrase, when it is not the standard one.
    reason: Option<ReasonPhrase>,
    location: Option<Vec<u8>>,
    /// Every field but `Status`, in order, repeated names kept (three `Set-Cookie`).
    headers: HeaderMap,
}

/// Parses header lines. A line without a colon, a continuation line, a bad name or a value
/// with control characters makes the response invalid (502): passing it on could split the
/// response the web server writes.
fn parse_head(head: &[u8]) -> Result<Head, String> {
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
fn parse_status(value: &[u8]) -> Option<(StatusCode, Option<ReasonPhrase>)> {
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

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// One running script: its process (and group) until it has been waited for.
///
/// Dropped before [`Run::finish`] or [`Run::terminate`] (the handler future or the response
/// body dropped: a client abort), it stops the whole group in the background.
struct Run {
    child: Option<Child>,
    /// The script's process group: its pid, as it was started with `process_group(0)`.
    group: Pid,
    deadline: Instant,
    timeout: Duration,
    stdin_task: Option<AbortHandle>,
    log: Arc<LogContext>,
}

impl Run {
    /// Gives up on the script: stops its process group, logs `why` with the script, the
    /// request and how the script ended, and answers `status` (502, 504).
    async fn refuse(self, status: StatusCode, why: &str) -> Outcome {
        let log = Arc::clone(&self.log);
        let ended = self.terminate().await;
        let exit = ended.map(|s| format!(" ({s})")).unwrap_or_default();
        tracing::warn!(
            script = %log.script, request = %log.request,
            "{why}{exit}: process group stopped, answering {}",
            status.as_u16()
        );
        Outcome::error(status)
    }

    /// The request body failed (client abort): stops the script's group.
    async fn body_failed(self) -> BoxError {
        self.terminate().await;
        "the request body failed before the script answered".into()
    }

    /// Stops the whole group now (TERM, KILL after [`KILL_GRACE`]) and waits for the script;
    /// returns how it ended.
    async fn terminate(mut self) -> Option<ExitStatus> {
        if let Some(task) = self.stdin_task.take() {
            task.abort();
        }
        let child = self.child.take()?;
        stop_group(child, self.group).await
    }

    /// The script's output was taken whole: wait for it in the background, and stop its
    /// group if it is still running at the deadline.
    fn finish(mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let (group, deadline, timeout) = (self.group, self.deadline, self.timeout);
        let stdin_task = self.stdin_task.take();
        let log = Arc::clone(&self.log);
        tokio::spawn(async move {
            match tokio::time::timeout_at(deadline, child.wait()).await {
                Ok(Ok(status)) if !status.success() => {
                    tracing::warn!(script = %log.script, request = %log.request, "script {status}");
                }
                Ok(_) => {}
                Err(_) => {
                    tracing::warn!(
                        script = %log.script, request = %log.request,
                        "still running at cgi_timeout={}s after its output ended: stopping its process group",
                        timeout.as_secs()
                    );
                    stop_group(child, group).await;
                }
            }
            if let Some(task) = stdin_task {
                task.abort();
            }
        });
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(task) = self.stdin_task.take() {
            task.abort();
        }
        let Some(child) = self.child.take() else {
            return;
        };
        tracing::debug!(
            script = %self.log.script, request = %self.log.request,
            "request ended before the script: stopping its process group"
        );
        signal_group(self.group, Signal::SIGTERM);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(stop_group(child, self.group));
            }
            Err(_) => {
                // No runtime left to wait in: kill now; `kill_on_drop` and tokio's orphan
                // reaping take care of the leader.
                signal_group(self.group, Signal::SIGKILL);
                drop(child);
            }
        }
    }
}

/// TERM to the group, up to [`KILL_GRACE`] for the script to exit, then KILL to whatever is
/// left of the group (members that ignored TERM or outlived the script), and the script
/// reaped.
///
/// The group id is the script's pid, which cannot be reused while any member of the group is
/// alive or the script is unreaped; KILL right after reaping a group with no members left can
/// only miss (ESRCH).
async fn stop_group(mut child: Child, group: Pid) -> Option<ExitStatus> {
    signal_group(group, Signal::SIGTERM);
    let exited = match tokio::time::timeout(KILL_GRACE, child.wait()).await {
        Ok(Ok(status)) => Some(status),
        _ => None,
    };
    signal_group(group, Signal::SIGKILL);
    match exited {
        Some(status) => Some(status),
        None => child.wait().await.ok(),
    }
}

fn signal_group(group: Pid, signal: Signal) {
    // ESRCH: the group is gone already, which is the point.
    let _ = killpg(group, signal);
}

/// The response body: stdout after the head, read as the driver asks for it. Ends with an
/// error at the deadline or when the request body failed; dropping it early stops the script.
struct ScriptBody {
    leftover: Option<Bytes>,
    stdout: ChildStdout,
    buf: Vec<u8>,
    deadline: Pin<Box<Sleep>>,
    failed: Pin<Box<WaitForCancellationFutureOwned>>,
    /// `None` once the output ended (the script is then waited for by [`Run::finish`]).
    run: Option<Run>,
}

impl http_body::Body for ScriptBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(data) = this.leftover.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        let Some(run) = this.run.as_ref() else {
            return Poll::Ready(None);
        };
        if this.deadline.as_mut().poll(cx).is_ready() {
            tracing::warn!(
                script = %run.log.script, request = %run.log.request,
                "cgi_timeout={}s reached while sending the body: stopping its process group",
                run.timeout.as_secs()
            );
            // Dropping the run stops the group.
            this.run = None;
            return Poll::Ready(Some(Err("cgi_timeout reached mid-response".into())));
        }
        if this.failed.as_mut().poll(cx).is_ready() {
            this.run = None;
            return Poll::Ready(Some(Err("the request body failed".into())));
        }
        let mut read = ReadBuf::new(&mut this.buf);
        match Pin::new(&mut this.stdout).poll_read(cx, &mut read) {
            Poll::Ready(Ok(())) if read.filled().is_empty() => {
                if let Some(run) = this.run.take() {
                    run.finish();
                }
                Poll::Ready(None)
            }
            Poll::Ready(Ok(())) => {
                Poll::Ready(Some(Ok(Frame::data(Bytes::copy_from_slice(read.filled())))))
            }
            Poll::Ready(Err(e)) => {
                this.run = None;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.leftover.is_none() && self.run.is_none()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{symlink, PermissionsExt};

    use appserver_proto::params::ParamsBuilder;
    use appserver_proto::Limits;

    use super::*;
    use crate::request::{build, Gateway, RequestOptions};

    // --- the CGI head

    #[test]
    fn head_end_takes_lf_crlf_and_mixed() {
        assert_eq!(head_end(b"A: 1\n\nbody"), Some((5, 6)));
        assert_eq!(head_end(b"A: 1\r\n\r\nbody"), Some((6, 8)));
        assert_eq!(head_end(b"A: 1\r\n\nbody"), Some((6, 7)));
        assert_eq!(head_end(b"A: 1\n\r\nbody"), Some((5, 7)));
        assert_eq!(head_end(b"\r\nbody"), Some((0, 2)));
        assert_eq!(head_end(b"\nbody"), Some((0, 1)));
        assert_eq!(head_end(b"A: 1\r\n\r"), None);
        assert_eq!(head_end(b"A: 1\r\nB: 2\r\n"), None);
    }

    #[test]
    fn head_fields_status_location_and_repeats() {
        let head = parse_head(
            b"Status: 404 Gone Fishing\r\nContent-Type: text/plain\r\nSet-Cookie: a=1\n\
              Set-Cookie: b=2\r\nset-cookie:c=3\t\r\nX-Empty:\r\n",
        )
        .unwrap();
        assert_eq!(head.status, Some(StatusCode::NOT_FOUND));
        assert_eq!(
            head.reason,
            Some(ReasonPhrase::new("Gone Fishing").unwrap())
        );
        assert_eq!(head.location, None);
        assert_eq!(head.headers["content-type"], "text/plain");
        let cookies: Vec<_> = head.headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2", "c=3"]);
        assert_eq!(head.headers["x-empty"], "");
        assert!(!head.headers.contains_key("status"));

        let head = parse_head(b"Location: https://example.com/x\n").unwrap();
        assert_eq!(head.status, None);
        assert_eq!(
            head.location.as_deref(),
            Some(&b"https://example.com/x"[..])
        );
        assert_eq!(head.headers["location"], "https://example.com/x");
        // obs-text in a value passes (non-ASCII file names in Content-Disposition).
        assert!(parse_head("X-Name: caf\u{e9}\n".as_bytes()).is_ok());
    }

    #[test]
    fn bad_heads_are_refused() {
        for (head, why) in [
            (&b"HTTP/1.1 200 OK\r\n"[..], "without a colon"),
            (b"A: 1\r\n continued\r\n", "continuation"),
            (b"Bad Name: 1\r\n", "bad header name"),
            (b"A: x\x01y\r\n", "bad header value"),
            (b"Status: 2000\r\n", "bad"),
            (b"Status: abc\r\n", "bad"),
            (b"Status: 099\r\n", "bad"),
            (b"Status: 200\r\nStatus: 302\r\n", "twice"),
            (b"", "empty"),
        ] {
            let err = parse_head(head).unwrap_err();
            assert!(err.contains(why), "{head:?}: {err}");
        }
    }

    #[test]
    fn status_values() {
        let code = |v: &[u8]| parse_status(v).map(|(s, _)| s.as_u16());
        let phrase = |v: &[u8]| {
            parse_status(v)
                .and_then(|(_, r)| r)
                .map(|r| r.as_bytes().to_vec())
        };
        assert_eq!(parse_status(b"200"), Some((StatusCode::OK, None)));
        assert_eq!(parse_status(b"302 Found"), Some((StatusCode::FOUND, None)));
        assert_eq!(code(b"999 Mine"), Some(999));
        assert_eq!(phrase(b"999 Mine"), Some(b"Mine".to_vec()));
        assert_eq!(
            phrase(b"403 Access Denied \t"),
            Some(b"Access Denied".to_vec())
        );
        assert_eq!(
            phrase(b"404 Not Found"),
            None,
            "the standard phrase needs no extension"
        );
        assert_eq!(code(b"404 Bad\x01Phrase"), None);
        assert_eq!(code(b"20"), None);
        assert_eq!(code(b"2000"), None);
        assert_eq!(code(b" 200"), None);
    }

    #[tokio::test]
    async fn head_is_bounded() {
        // A head of exactly MAX_HEAD_BYTES, blank line included, passes.
        let mut at_limit = vec![b'a'; MAX_HEAD_BYTES - 4];
        at_limit.extend_from_slice(b":1\n\nbody");
        assert_eq!(at_limit.len(), MAX_HEAD_BYTES + 4);
        let (head, body) = read_head(&mut &at_limit[..]).await.unwrap();
        assert_eq!(head.len(), MAX_HEAD_BYTES - 1);
        assert!(b"body".starts_with(&body), "{body:?}");

        // One byte more: refused, even when it arrives in the same read.
        let mut over = vec![b'a'; MAX_HEAD_BYTES - 3];
        over.extend_from_slice(b":1\n\nbody");
        assert!(matches!(
            read_head(&mut &over[..]).await,
            Err(HeadError::TooLarge)
        ));
        assert!(matches!(
            read_head(&mut &b"A: 1\n"[..]).await,
            Err(HeadError::Eof(5))
        ));
    }

    // --- choosing the script

    #[test]
    fn apache_proxy_urls_name_a_file_only_for_fastcgi() {
        let file = |sent: &[u8]| sent_filename(sent).map(Cow::into_owned);
        assert_eq!(
            file(b"proxy:fcgi://127.0.0.1:9000/srv/cgi/x.sh"),
            Some(b"/srv/cgi/x.sh".to_vec())
        );
        assert_eq!(
            file(b"proxy:fcgi://[::1]:9000/a%20b/caf%C3%A9"),
            Some("/a b/caf\u{e9}".as_bytes().to_vec())
        );
        assert_eq!(file(b"/srv/x%20.sh"), Some(b"/srv/x%20.sh".to_vec()));
        assert_eq!(file(b"proxy:fcgi://host"), None);
        assert_eq!(file(b"proxy:scgi://127.0.0.1:9000/cgi/x.sh"), None);
        assert_eq!(file(b""), None);
    }

    /// A docroot with a script, a subdirectory, and things that must not run.
    struct Tree {
        _dir: tempfile::TempDir,
        root: PathBuf,
        outside: PathBuf,
    }

    fn script(path: &Path, body: &str, mode: u32) {
        std::fs::write(path, body).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn tree() -> Tree {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        let ok = "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nok\\n'\n";
        script(&root.join("sub/run.sh"), ok, 0o755);
        script(&root.join("plain.txt"), "text", 0o644);
        script(&root.join("nph-raw.sh"), ok, 0o755);
        script(&outside.join("evil.sh"), ok, 0o755);
        symlink(outside.join("evil.sh"), root.join("link.sh")).unwrap();
        symlink(&outside, root.join("linkdir")).unwrap();
        Tree {
            _dir: dir,
            root,
            outside,
        }
    }

    fn gateway(options: CgiOptions) -> Cgi {
        Cgi::new(options).unwrap()
    }

    fn docroot_gateway(root: &Path) -> Cgi {
        gateway(CgiOptions {
            docroot: Some(root.to_owned()),
            ..CgiOptions::default()
        })
    }

    fn vars(pairs: &[(&str, &str)]) -> Vars {
        let mut v = Vars::default();
        for (n, val) in pairs {
            v.set(n.as_bytes(), val.as_bytes());
        }
        v
    }

    fn get<'a>(v: &'a Vars, name: &str) -> Option<&'a str> {
        v.get(name.as_bytes())
            .map(|b| std::str::from_utf8(b).unwrap())
    }

    #[test]
    fn walk_finds_the_first_file_and_splits_path_info() {
        let t = tree();
        let cgi = docroot_gateway(&t.root);
        let mut v = vars(&[("SCRIPT_NAME", "/sub/run.sh/a/b"), ("PATH_INFO", "/c")]);
        let found = cgi.inner.resolve(&mut v).unwrap();
        let real_root = std::fs::canonicalize(&t.root).unwrap();
        assert_eq!(found.exec, real_root.join("sub/run.sh"));
        assert_eq!(get(&v, "SCRIPT_NAME"), Some("/sub/run.sh"));
        assert_eq!(get(&v, "PATH_INFO"), Some("/a/b/c"));
        assert_eq!(
            v.get(b"SCRIPT_FILENAME"),
            Some(real_root.join("sub/run.sh").as_os_str().as_bytes())
        );

        let mut v = vars(&[("SCRIPT_NAME", "//sub/./run.sh"), ("PATH_INFO", "")]);
        cgi.inner.resolve(&mut v).unwrap();
        assert_eq!(get(&v, "SCRIPT_NAME"), Some("//sub/./run.sh"));
        assert_eq!(get(&v, "PATH_INFO"), Some(""));
    }

    #[test]
    fn walk_refusals() {
        let t = tree();
        let cgi = docroot_gateway(&t.root);
        let status = |script_name: &str| {
            let mut v = vars(&[("SCRIPT_NAME", script_name)]);
            cgi.inner.resolve(&mut v).unwrap_err().status
        };
        assert_eq!(status("/missing.sh"), StatusCode::NOT_FOUND);
        assert_eq!(status("/sub/missing/x"), StatusCode::NOT_FOUND);
        assert_eq!(
            status("/plain.txt/x"),
            StatusCode::FORBIDDEN,
            "not executable"
        );
        assert_eq!(status("/sub"), StatusCode::FORBIDDEN, "a directory");
        assert_eq!(status("/sub/../../outside/evil.sh"), StatusCode::FORBIDDEN);
        assert_eq!(status("/link.sh"), StatusCode::FORBIDDEN, "symlink out");
        assert_eq!(status("/linkdir/evil.sh"), StatusCode::FORBIDDEN);
        assert_eq!(status("/nph-raw.sh"), StatusCode::BAD_GATEWAY);
        // `..` is refused before anything outside is looked at: no 404 oracle.
        assert_eq!(status("/../outside/missing"), StatusCode::FORBIDDEN);
    }

    #[test]
    fn script_filename_is_confined_to_docroot() {
        let t = tree();
        let cgi = docroot_gateway(&t.root);
        let status = |filename: &Path| {
            let mut v = vars(&[("SCRIPT_FILENAME", filename.to_str().unwrap())]);
            cgi.inner
                .resolve(&mut v)
                .map(|s| s.exec)
                .map_err(|r| r.status)
        };
        assert!(status(&t.root.join("sub/run.sh")).is_ok());
        assert_eq!(
            status(&t.root.join("sub/../../outside/evil.sh")),
            Err(StatusCode::FORBIDDEN)
        );
        assert_eq!(
            status(&t.outside.join("evil.sh")),
            Err(StatusCode::FORBIDDEN)
        );
        assert_eq!(
            status(&t.outside.join("missing")),
            Err(StatusCode::FORBIDDEN),
            "outside is refused before it is looked at"
        );
        assert_eq!(status(&t.root.join("link.sh")), Err(StatusCode::FORBIDDEN));
        assert_eq!(status(&t.root.join("missing")), Err(StatusCode::NOT_FOUND));
        assert_eq!(status(Path::new("rel/x.sh")), Err(StatusCode::FORBIDDEN));

        let proxied = format!(
            "proxy:fcgi://127.0.0.1:9000{}",
            t.root.join("sub/run.sh").display()
        );
        let mut v = vars(&[("SCRIPT_FILENAME", &proxied)]);
        cgi.inner.resolve(&mut v).unwrap();
        assert_eq!(
            v.get(b"SCRIPT_FILENAME"),
            Some(t.root.join("sub/run.sh").as_os_str().as_bytes())
        );
        // Encoded as mod_proxy_fcgi sends it; an encoded `..` is still a climb out.
        for (encoded, expect) in [
            ("sub/run%2Esh", Ok(())),
            (
                "sub/%2E%2E/%2E%2E/outside/evil.sh",
                Err(StatusCode::FORBIDDEN),
            ),
        ] {
            let proxied = format!("proxy:fcgi://h:1{}/{encoded}", t.root.display());
            let mut v = vars(&[("SCRIPT_FILENAME", &proxied)]);
            assert_eq!(
                cgi.inner.resolve(&mut v).map(|_| ()).map_err(|r| r.status),
                expect,
                "{encoded}"
            );
        }
    }

    /// mod_proxy_fcgi's `SCRIPT_FILENAME` for `/sub/run.sh/a b/c`: the script is
    /// `sub/run.sh`, the rest becomes PATH_INFO and leaves SCRIPT_NAME.
    #[test]
    fn trailing_path_info_is_split_off_script_filename() {
        let t = tree();
        let cgi = docroot_gateway(&t.root);
        let run = t.root.join("sub/run.sh");
        let proxied = format!("proxy:fcgi://h:1{}/a%20b/c", run.display());
        let mut v = vars(&[
            ("SCRIPT_FILENAME", &proxied),
            ("SCRIPT_NAME", "/sub/run.sh/a b/c"),
        ]);
        let script = cgi.inner.resolve(&mut v).unwrap();
        assert_eq!(script.exec, run.canonicalize().unwrap());
        assert_eq!(get(&v, "SCRIPT_FILENAME"), run.to_str());
        assert_eq!(get(&v, "PATH_INFO"), Some("/a b/c"));
        assert_eq!(get(&v, "SCRIPT_NAME"), Some("/sub/run.sh"));

        // PATH_INFO the web server sent is kept.
        let filename = format!("{}/x", run.display());
        let mut v = vars(&[("SCRIPT_FILENAME", &filename), ("PATH_INFO", "/given")]);
        cgi.inner.resolve(&mut v).unwrap();
        assert_eq!(get(&v, "PATH_INFO"), Some("/given"));

        // Below a directory, or below nothing: not found, as before.
        for missing in ["sub/missing/x", "missing/x"] {
            let filename = format!("{}/{missing}", t.root.display());
            let mut v = vars(&[("SCRIPT_FILENAME", &filename)]);
            assert_eq!(
                cgi.inner.resolve(&mut v).map(|_| ()).map_err(|r| r.status),
                Err(StatusCode::NOT_FOUND),
                "{missing}"
            );
        }
    }

    #[test]
    fn without_docroot_script_filename_runs_as_sent() {
        let t = tree();
        let cgi = gateway(CgiOptions::default());
        let link = t.root.join("link.sh");
        let mut v = vars(&[("SCRIPT_FILENAME", link.to_str().unwrap())]);
        assert_eq!(cgi.inner.resolve(&mut v).unwrap().exec, link);
        let mut v = vars(&[("SCRIPT_NAME", "/x")]);
        assert_eq!(
            cgi.inner.resolve(&mut v).unwrap_err().status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn script_option_wins_and_is_checked_at_start() {
        let t = tree();
        let cgi = gateway(CgiOptions {
            script: Some(t.root.join("sub/run.sh")),
            ..CgiOptions::default()
        });
        let mut v = vars(&[("SCRIPT_FILENAME", "/bin/sh")]);
        assert_eq!(
            cgi.inner.resolve(&mut v).unwrap().exec,
            t.root.join("sub/run.sh")
        );
        assert_eq!(
            v.get(b"SCRIPT_FILENAME"),
            Some(t.root.join("sub/run.sh").as_os_str().as_bytes())
        );

        let e = Cgi::new(CgiOptions {
            script: Some(t.root.join("plain.txt")),
            ..CgiOptions::default()
        })
        .unwrap_err();
        assert_eq!(e.option(), "script");
        assert!(e.message().contains("not executable"), "{e}");
        let e = Cgi::new(CgiOptions {
            docroot: Some(t.root.join("plain.txt")),
            ..CgiOptions::default()
        })
        .unwrap_err();
        assert!(e.message().contains("not a directory"), "{e}");
    }

    // --- the environment

    fn env_of(cgi: &Cgi, v: &Vars) -> Vec<(String, String)> {
        cgi.inner
            .environment(v)
            .into_iter()
            .map(|(n, v)| (n.into_string().unwrap(), v.into_string().unwrap()))
            .collect()
    }

    fn env_get<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
        env.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn environment_is_cgi_vars_and_pass_through_only() {
        let cgi = gateway(CgiOptions {
            pass_env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            ..CgiOptions::default()
        });
        let v = vars(&[
            ("REQUEST_METHOD", "GET"),
            ("CONTENT_LENGTH", ""),
            ("HTTP_PROXY", "http://evil:8080"),
            ("HTTP_X_OK", "yes"),
            ("LD_PRELOAD", "/tmp/evil.so"),
            ("BASH_ENV", "/tmp/evil.sh"),
            ("BASH_FUNC_ls%%", "() { evil; }"),
            ("PATH", "/tmp/evil"),
            ("PATH_INFO", ""),
            ("SERVER_SOFTWARE", "nginx/1.22.1"),
            ("GATEWAY_INTERFACE", "CGI/9.9"),
            ("GIT_HTTP_EXPORT_ALL", ""),
            ("A=B", "x"),
            ("NUL", "a\0b"),
        ]);
        let env = env_of(&cgi, &v);
        let names: Vec<&str> = env.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "REQUEST_METHOD",
                "CONTENT_LENGTH",
                "HTTP_X_OK",
                "SERVER_SOFTWARE",
                "GIT_HTTP_EXPORT_ALL",
                "GATEWAY_INTERFACE",
                "PATH"
            ]
        );
        assert_eq!(env_get(&env, "CONTENT_LENGTH"), Some(""), "set but empty");
        assert_eq!(
            env_get(&env, "PATH"),
            Some("/usr/bin:/bin"),
            "the operator's PATH wins"
        );
        assert_eq!(env_get(&env, "GATEWAY_INTERFACE"), Some("CGI/1.1"));
        assert_eq!(env_get(&env, "SERVER_SOFTWARE"), Some("nginx/1.22.1"));
        assert!(!env.iter().any(|(_, v)| v.contains("evil")));

        let env = env_of(&cgi, &vars(&[("PATH_INFO", "/x")]));
        assert!(env_get(&env, "SERVER_SOFTWARE")
            .unwrap()
            .starts_with("appserver/"));
        assert_eq!(env_get(&env, "PATH_INFO"), Some("/x"));
    }

    #[test]
    fn path_translated_needs_a_document_root_and_path_info() {
        let t = tree();
        let cgi = docroot_gateway(&t.root);
        let env = env_of(&cgi, &vars(&[("PATH_INFO", "/a b")]));
        let expected = format!("{}/a b", t.root.display());
        assert_eq!(env_get(&env, "PATH_TRANSLATED"), Some(expected.as_str()));
        let env = env_of(&cgi, &vars(&[("PATH_INFO", "")]));
        assert_eq!(env_get(&env, "PATH_TRANSLATED"), None);

        let cgi = gateway(CgiOptions::default());
        let env = env_of(
            &cgi,
            &vars(&[("PATH_INFO", "/x"), ("DOCUMENT_ROOT", "/srv/")]),
        );
        assert_eq!(env_get(&env, "PATH_TRANSLATED"), Some("/srv/x"));
        let env = env_of(&cgi, &vars(&[("PATH_INFO", "/x")]));
        assert_eq!(env_get(&env, "PATH_TRANSLATED"), None);
        let env = env_of(
            &cgi,
            &vars(&[("PATH_INFO", "/x"), ("PATH_TRANSLATED", "/sent")]),
        );
        assert_eq!(env_get(&env, "PATH_TRANSLATED"), Some("/sent"));
    }

    #[test]
    fn local_redirect_rewrites_the_request_as_a_get() {
        let t = tree();
        let before = [
            ("REQUEST_METHOD", "POST"),
            ("CONTENT_LENGTH", "5"),
            ("CONTENT_TYPE", "text/plain"),
            ("HTTP_CONTENT_LENGTH", "5"),
            ("SCRIPT_NAME", "/app"),
            ("PATH_INFO", "/form"),
            ("SCRIPT_FILENAME", "/srv/app.cgi"),
            ("QUERY_STRING", "a=1"),
            ("REQUEST_URI", "/app/form?a=1"),
        ];
        // Same script, new path under its SCRIPT_NAME.
        let cgi = gateway(CgiOptions::default());
        let mut v = vars(&before);
        cgi.inner.redirect(&mut v, b"/app/caf%C3%A9?x=%20");
        assert_eq!(get(&v, "REQUEST_METHOD"), Some("GET"));
        assert_eq!(get(&v, "CONTENT_LENGTH"), None);
        assert_eq!(get(&v, "CONTENT_TYPE"), None);
        assert_eq!(get(&v, "HTTP_CONTENT_LENGTH"), None);
        assert_eq!(get(&v, "SCRIPT_NAME"), Some("/app"));
        assert_eq!(get(&v, "PATH_INFO"), Some("/caf\u{e9}"));
        assert_eq!(get(&v, "QUERY_STRING"), Some("x=%20"));
        assert_eq!(get(&v, "REQUEST_URI"), Some("/app/caf%C3%A9?x=%20"));
        assert_eq!(get(&v, "SCRIPT_FILENAME"), Some("/srv/app.cgi"));
        // Elsewhere: the whole path is PATH_INFO.
        let mut v = vars(&before);
        cgi.inner.redirect(&mut v, b"/application");
        assert_eq!(get(&v, "SCRIPT_NAME"), Some(""));
        assert_eq!(get(&v, "PATH_INFO"), Some("/application"));
        assert_eq!(get(&v, "QUERY_STRING"), Some(""));
        // With docroot=: walked afresh.
        let cgi = docroot_gateway(&t.root);
        let mut v = vars(&before);
        cgi.inner.redirect(&mut v, b"/sub/run.sh/x");
        assert_eq!(get(&v, "SCRIPT_FILENAME"), None);
        cgi.inner.resolve(&mut v).unwrap();
        assert_eq!(get(&v, "SCRIPT_NAME"), Some("/sub/run.sh"));
        assert_eq!(get(&v, "PATH_INFO"), Some("/x"));
    }

    #[test]
    fn local_locations() {
        assert!(is_local(b"/x"));
        assert!(is_local(b"/"));
        assert!(!is_local(b"//evil.example/x"));
        assert!(!is_local(b"http://example.com/"));
        assert!(!is_local(b"x"));
    }

    // --- running scripts

    fn request(pairs: &[(&str, &str)], body: Body) -> Request {
        let mut b = ParamsBuilder::new(Limits::default());
        for (n, v) in pairs {
            b.push(n.as_bytes(), v.as_bytes()).unwrap();
        }
        let gw = Gateway {
            protocol: "fcgi",
            method: "threaded",
        };
        build(b.finish(), body, &RequestOptions::default(), gw).unwrap()
    }

    /// A gateway running `body` as its one script, in a fresh directory.
    fn one_script(body: &str, timeout_secs: u64) -> (tempfile::TempDir, Cgi) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sh");
        script(&path, &format!("#!/bin/sh\n{body}"), 0o755);
        let cgi = gateway(CgiOptions {
            script: Some(path),
            timeout: Duration::from_secs(timeout_secs),
            pass_env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            ..CgiOptions::default()
        });
        (dir, cgi)
    }

    async fn text(resp: Response) -> String {
        let bytes = resp.into_body().collect_bytes().await.unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    /// Live (not zombie) processes in process group `pgid`, from `/proc`.
    fn group_members(pgid: i32) -> usize {
        let pgid = pgid.to_string();
        let mut n = 0;
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
            let Some(after) = stat.rfind(')').and_then(|i| stat.get(i + 2..)) else {
                continue;
            };
            let f: Vec<&str> = after.split_whitespace().collect();
            if f.len() > 2 && f[2] == pgid && f[0] != "Z" {
                n += 1;
            }
        }
        n
    }

    /// Waits (at most 5 s) for the group to empty: killed processes exit asynchronously.
    async fn group_gone(pgid: i32) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while group_members(pgid) > 0 {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    fn pid_in(dir: &Path) -> i32 {
        std::fs::read_to_string(dir.join("pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    #[tokio::test]
    async fn script_output_becomes_the_response() {
        let (_dir, cgi) = one_script(
            "printf 'Status: 201 Made\\r\\nSet-Cookie: a=1\\r\\nSet-Cookie: b=2\\r\\n\\r\\n'\n\
             printf '%s|%s|' \"$QUERY_STRING\" \"$(cat)\"\necho oops >&2\n",
            10,
        );
        let req = request(
            &[
                ("REQUEST_METHOD", "POST"),
                ("QUERY_STRING", "q=1"),
                ("CONTENT_LENGTH", "5"),
            ],
            Body::from("hello"),
        );
        let resp = cgi.call(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        let cookies: Vec<_> = resp.headers().get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert_eq!(text(resp).await, "q=1|hello|");
    }

    #[tokio::test]
    async fn bare_locations() {
        let (_dir, cgi) = one_script("printf 'Location: https://example.com/\\n\\n'\n", 10);
        let resp = cgi.call(request(&[], Body::empty())).await.unwrap();
        assert_eq!(resp.status(), StatusCode::FOUND);
        assert_eq!(resp.headers()["location"], "https://example.com/");

        // A local redirect runs the request again as a GET of the new path.
        let (_dir, cgi) = one_script(
            "if [ \"$PATH_INFO\" = /target ]; then\n\
             printf 'Content-Type: text/plain\\n\\n%s %s %s' \"$REQUEST_METHOD\" \
             \"$QUERY_STRING\" \"$CONTENT_LENGTH\"\n\
             else\n\
             printf 'Location: /target?x=1\\n\\n'\n\
             fi\n",
            10,
        );
        let req = request(
            &[("REQUEST_METHOD", "POST"), ("CONTENT_LENGTH", "3")],
            Body::from("abc"),
        );
        let resp = cgi.call(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(text(resp).await, "GET x=1 ");

        // A script that always redirects ends in a 500, after MAX_LOCAL_REDIRECTS.
        let (dir, cgi) = one_script("echo run >> runs\nprintf 'Location: /again\\n\\n'\n", 10);
        let resp = cgi.call(request(&[], Body::empty())).await.unwrap();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let runs = std::fs::read_to_string(dir.path().join("runs")).unwrap();
        assert_eq!(runs.lines().count(), MAX_LOCAL_REDIRECTS + 1);
    }

    #[tokio::test]
    async fn broken_output_is_a_502() {
        for out in [
            "exit 3\n",
            "echo 'no blank line'\n",
            "echo 'HTTP/1.1 200 OK'; echo\n",
            "printf '\\n\\nbody'\n",
        ] {
            let (_dir, cgi) = one_script(out, 10);
            let resp = cgi.call(request(&[], Body::empty())).await.unwrap();
            assert_eq!(resp.status(), StatusCode::BAD_GATEWAY, "{out}");
        }
    }

    #[tokio::test]
    async fn timeout_before_the_head_is_a_504_and_kills_the_group() {
        let (dir, cgi) = one_script("echo $$ > pid\nsleep 60 &\ntrap '' TERM\nsleep 60\n", 1);
        let started = Instant::now();
        let resp = cgi.call(request(&[], Body::empty())).await.unwrap();
        assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
        // The shell ignores TERM: KILL comes KILL_GRACE later.
        assert!(started.elapsed() >= Duration::from_secs(1) + KILL_GRACE);
        assert!(group_gone(pid_in(dir.path())).await, "process group alive");
    }

    #[tokio::test]
    async fn timeout_mid_body_fails_the_body_and_kills_the_group() {
        let (dir, cgi) = one_script(
            "echo $$ > pid\nprintf 'Content-Type: text/plain\\n\\nstart'\nsleep 60\n",
            1,
        );
        let resp = cgi.call(request(&[], Body::empty())).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let err = resp.into_body().collect_bytes().await.unwrap_err();
        assert!(err.to_string().contains("cgi_timeout"), "{err}");
        assert!(group_gone(pid_in(dir.path())).await, "process group alive");
    }

    #[tokio::test]
    async fn dropping_the_response_kills_the_group() {
        let (dir, cgi) = one_script(
            "echo $$ > pid\nsleep 60 &\nprintf 'Content-Type: text/plain\\n\\nstart'\n\
             sleep 60\n",
            60,
        );
        let resp = cgi.call(request(&[], Body::empty())).await.unwrap();
        let pgid = pid_in(dir.path());
        assert!(group_members(pgid) >= 2, "sh and its background sleep");
        drop(resp);
        assert!(group_gone(pgid).await, "process group alive");
    }

    #[tokio::test]
    async fn dropping_the_call_kills_the_group() {
        let (dir, cgi) = one_script("echo $$ > pid.tmp; mv pid.tmp pid\nsleep 60\n", 60);
        let pid_file = dir.path().join("pid");
        let call = cgi.call(request(&[], Body::empty()));
        tokio::select! {
            _ = call => panic!("the script answered"),
            () = async {
                while !pid_file.exists() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            } => {}
        }
        assert!(group_gone(pid_in(dir.path())).await, "process group alive");
    }

    #[tokio::test]
    async fn failed_request_body_kills_the_script() {
        let (dir, cgi) = one_script(
            "echo $$ > pid.tmp; mv pid.tmp pid\ncat > /dev/null\necho 'Status: 200'; echo\n",
            60,
        );
        let (tx, body) = crate::body::channel(Some(10));
        let req = request(
            &[("REQUEST_METHOD", "POST"), ("CONTENT_LENGTH", "10")],
            body,
        );
        let pid_file = dir.path().join("pid");
        let feed = async {
            tx.send(Ok(Bytes::from_static(b"12345"))).await.unwrap();
            while !pid_file.exists() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tx.send(Err(crate::body::BodyError::Truncated { received: 5 }))
                .await
                .unwrap();
        };
        let started = Instant::now();
        let (answer, ()) = tokio::join!(cgi.call(req), feed);
        assert!(answer.is_err());
        assert!(started.elapsed() < Duration::from_secs(30));
        assert!(group_gone(pid_in(dir.path())).await, "process group alive");
    }
}
