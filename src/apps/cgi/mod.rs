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

mod child;
mod env;
pub(crate) mod head;
mod script;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use http::StatusCode;
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
use crate::request::{percent_decode, Env};
use crate::response::plain;
use crate::{Body, BoxError, Handler, Request, Response};

pub use child::{KILL_GRACE, STDERR_LINES_PER_SEC, STDERR_LINE_BURST, STDERR_LINE_MAX};
pub use env::{
    ALLOWED_PREFIXES, DENIED_NAMES, NEVER_NAMES, NEVER_PREFIXES, RFC3875_NAMES, WEB_SERVER_NAMES,
};
pub use head::MAX_HEAD_BYTES;

use child::{feed_stdin, log_stderr, reap, LogContext, Run, ScriptBody};
use head::{parse_head, read_head};
use script::{check_script, sent_filename, split_path_info, Docroot};

/// Most local redirects (`Location: /path` without `Status`) one request follows, as Apache's
/// `LimitInternalRecursion` default: a script redirecting to itself ends in a 500.
pub const MAX_LOCAL_REDIRECTS: usize = 10;

/// Most output kept while the script still reads its input: nginx sends no more request
/// body once it has the response head, so the head waits for the end of the input and the
/// output meanwhile waits here. Sixteen pipe buffers' worth covers scripts that answer as they
/// read; beyond it the head goes out (and a web server like nginx stops sending: the
/// script's `cgi_timeout=` ends it).
pub const MAX_EARLY_OUTPUT: usize = 1024 * 1024;

/// Bytes read from a script's stdout at a time.
const READ_CHUNK: usize = 64 * 1024;

/// How long a script that cannot be executed because it is open for writing somewhere
/// (`ETXTBSY`) is tried again: a deploy that is writing it, or, in any multi-threaded process
/// that starts programs, another thread's child between its fork and its exec, which holds
/// a copy of every descriptor for that moment. Both pass within milliseconds; a script that
/// stays busy longer is answered 502 like any that cannot run.
pub const EXEC_BUSY_WAIT: Duration = Duration::from_millis(100);

/// The pause between two tries within [`EXEC_BUSY_WAIT`].
const EXEC_BUSY_RETRY: Duration = Duration::from_millis(5);

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
    /// Request variables passed to scripts besides the allowlist (`cgi_vars=`): what the
    /// web server is configured to send (`fastcgi_param APP_ENV ...`). Default none.
    pub allow_vars: Vec<String>,
    /// `cgi_background=true`: processes a script leaves running in its process group when
    /// it exits are left alone. Default false: they get SIGTERM, then SIGKILL after
    /// [`KILL_GRACE`]. A timeout or an aborted request stops the group either way.
    pub background: bool,
}

impl Default for CgiOptions {
    fn default() -> Self {
        Self {
            script: None,
            docroot: None,
            timeout: Duration::from_secs(60),
            pass_env: Vec::new(),
            allow_vars: Vec::new(),
            background: false,
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
    allow_vars: Vec<String>,
    background: bool,
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
        if let Some(name) = options.allow_vars.iter().find(|n| !env::may_allow(n)) {
            return Err(ConfigError::new(
                "cgi_vars",
                format!(
                    "{name:?} is a variable the dynamic loader, a shell or an HTTP library \
                     acts on before the script's own code runs; it is never passed"
                ),
            ));
        }
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
                allow_vars: options.allow_vars,
                background: options.background,
            }),
        })
    }

    /// The gateway `runfcgi app=cgi` serves: `script=`, `docroot=`, `cgi_timeout=`,
    /// `cgi_vars=`, `cgi_background=`, and the `cgi_env=` variables read from this process's
    /// environment now.
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
            allow_vars: config.cgi_vars.clone(),
            background: config.cgi_background,
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
        let mut child = match spawn(&mut cmd).await {
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
        crate::status::layer::note_child(&shown, pid);
        let group = Pid::from_raw(i32::try_from(pid).map_err(|_| "pid out of range")?);
        let log = Arc::new(LogContext {
            script: shown,
            request: what.to_owned(),
        });
        let failed = CancellationToken::new();
        let mut stdin_task =
            tokio::spawn(feed_stdin(body, stdin, failed.clone(), Arc::clone(&log)));
        let run = Run {
            group,
            exited: reap(child, group, self.background, Arc::clone(&log)),
            live: true,
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
/// `Location: /path` (not `//host/...`, which a browser reads as another host).
fn is_local(location: &[u8]) -> bool {
    location.starts_with(b"/") && !location.starts_with(b"//")
}

/// Starts `cmd`, trying again for up to [`EXEC_BUSY_WAIT`] while the script is busy.
async fn spawn(cmd: &mut Command) -> io::Result<tokio::process::Child> {
    let give_up = Instant::now() + EXEC_BUSY_WAIT;
    loop {
        match cmd.spawn() {
            Err(e) if e.kind() == io::ErrorKind::ExecutableFileBusy && Instant::now() < give_up => {
                tokio::time::sleep(EXEC_BUSY_RETRY).await;
            }
            spawned => return spawned,
        }
    }
}
