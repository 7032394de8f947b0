//! A running script: its process group, its stdin and stderr, and its output as the
//! response body.

use std::future::Future as _;
use std::pin::Pin;
use std::process::ExitStatus;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body::Frame;
use http_body_util::BodyExt;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader, ReadBuf};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout};
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::log_limit::{Suppressed, TokenBucket, Verdict};
use crate::{Body, BoxError};

use super::Outcome;

/// How long a script's process group has between SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(2);

/// Most bytes of one stderr line that reach the log (mod_fcgid buffers 8000); the rest of a
/// longer line is cut and counted, so one line without a newline cannot fill the log.
pub const STDERR_LINE_MAX: usize = 8 * 1024;

/// Stderr lines of one script logged at once before the rate applies: a Python traceback
/// or a shell's error report fits whole.
pub const STDERR_LINE_BURST: u32 = 100;

/// Stderr lines of one script logged per second once [`STDERR_LINE_BURST`] is spent: a
/// script writing to stderr in a loop costs this much log, not what it writes. The lines
/// left out are counted and the count logged.
pub const STDERR_LINES_PER_SEC: u32 = 20;

/// Names a script and its request in log lines.
#[derive(Debug)]
pub(super) struct LogContext {
    pub(super) script: String,
    pub(super) request: String,
}

/// Copies the request body to the script's stdin; closing stdin at the end is the script's
/// end of input. A failed body (client abort, short upload) cancels `failed`, which stops the
/// script. A script that stops reading just ends the copy: the driver discards the rest.
pub(super) async fn feed_stdin(
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

/// Logs the script's stderr until it closes: one `warn` line per line, each cut at
/// [`STDERR_LINE_MAX`] bytes, at most [`STDERR_LINE_BURST`] lines and then
/// [`STDERR_LINES_PER_SEC`] a second; what is left out is counted and summarised, and the
/// rest of stderr is still read so the script never blocks on it.
pub(super) async fn log_stderr(stderr: ChildStderr, log: Arc<LogContext>) {
    let mut reader = BufReader::with_capacity(STDERR_LINE_MAX, stderr);
    let mut lines = StderrLines::new(std::time::Instant::now());
    while let Ok(buf) = reader.fill_buf().await {
        if buf.is_empty() {
            break;
        }
        let taken = lines.push(buf, std::time::Instant::now(), &|line| {
            tracing::warn!(script = %log.script, request = %log.request, "stderr: {line}");
        });
        reader.consume(taken);
    }
    lines.finish(std::time::Instant::now(), &|line| {
        tracing::warn!(script = %log.script, request = %log.request, "stderr: {line}");
    });
    if let Some(summary) = lines.summary() {
        tracing::warn!(script = %log.script, request = %log.request, "{summary}");
    }
}

/// Splits a script's stderr into log lines and applies the bounds of [`log_stderr`]; time is
/// a parameter, so the bounds are tested without a clock.
#[derive(Debug)]
pub(super) struct StderrLines {
    /// The line being read, at most [`STDERR_LINE_MAX`] bytes.
    line: Vec<u8>,
    /// Bytes of the line being read beyond [`STDERR_LINE_MAX`].
    cut: usize,
    bucket: TokenBucket,
    /// Lines left out by the rate since the last logged line, and their bytes.
    dropped_lines: u64,
    dropped_bytes: u64,
}

impl StderrLines {
    pub(super) fn new(now: std::time::Instant) -> StderrLines {
        StderrLines {
            line: Vec::with_capacity(256),
            cut: 0,
            bucket: TokenBucket::new(STDERR_LINE_BURST, STDERR_LINES_PER_SEC, now),
            dropped_lines: 0,
            dropped_bytes: 0,
        }
    }

    /// Takes bytes of `buf` up to and including its first newline (or all of it); calls
    /// `emit` for a line that ends there and may be logged. Returns how many bytes it took.
    pub(super) fn push(
        &mut self,
        buf: &[u8],
        now: std::time::Instant,
        emit: &dyn Fn(&str),
    ) -> usize {
        let (chunk, complete) = match buf.iter().position(|&b| b == b'\n') {
            Some(at) => (&buf[..=at], true),
            None => (buf, false),
        };
        let room = STDERR_LINE_MAX - self.line.len();
        let keep = chunk.len().min(room);
        self.line.extend_from_slice(&chunk[..keep]);
        self.cut += chunk.len() - keep;
        if complete {
            self.end_line(now, emit);
        }
        chunk.len()
    }

    /// Ends the stream: a last line without a newline is still a line.
    pub(super) fn finish(&mut self, now: std::time::Instant, emit: &dyn Fn(&str)) {
        if !self.line.is_empty() || self.cut > 0 {
            self.end_line(now, emit);
        }
    }

    /// The summary of what the rate left out since the last logged line, if anything was.
    pub(super) fn summary(&mut self) -> Option<String> {
        self.bucket.take_suppressed();
        (self.dropped_lines > 0).then(|| {
            format!(
                "{} stderr lines ({} bytes) not logged: more than {STDERR_LINE_BURST} lines, \
                 then {STDERR_LINES_PER_SEC} a second",
                self.dropped_lines, self.dropped_bytes
            )
        })
    }

    fn end_line(&mut self, now: std::time::Instant, emit: &dyn Fn(&str)) {
        let bytes = self.line.len() + self.cut;
        match self.bucket.admit(now) {
            Verdict::Log { suppressed } => {
                let line = self.line.strip_suffix(b"\n").unwrap_or(&self.line);
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                let text = String::from_utf8_lossy(line);
                let cut = match self.cut {
                    0 => String::new(),
                    n => format!(" [{n} more bytes cut]"),
                };
                emit(&format!("{text}{cut}{}", Suppressed(suppressed)));
                // That line said how many were left out before it.
                self.dropped_lines = 0;
                self.dropped_bytes = 0;
            }
            Verdict::Suppress => {
                self.dropped_lines += 1;
                self.dropped_bytes += bytes as u64;
            }
        }
        self.line.clear();
        self.cut = 0;
    }
}

/// How often the group of a script that exited is checked for members while they have
/// [`KILL_GRACE`] to go: the kernel signals nobody when a process group empties (its members
/// are children of init by then), so polling is the only way to know.
const GROUP_POLL: Duration = Duration::from_millis(50);

/// How the script ended, once it has: `Some(None)` when waiting for it failed.
type Exited = watch::Receiver<Option<Option<ExitStatus>>>;

/// Starts the task that waits for the script and, when it exits, ends what it left in its
/// process group (unless `background`); returns where its exit status will appear.
pub(super) fn reap(mut child: Child, group: Pid, background: bool, log: Arc<LogContext>) -> Exited {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        let status = child.wait().await.ok();
        let _ = tx.send(Some(status));
        if !background {
            end_leftovers(group, &log).await;
        }
    });
    rx
}

/// After the script itself exited: SIGTERM to what is left of its process group, SIGKILL to
/// what is still there [`KILL_GRACE`] later. A process that left the group (`setsid`, a
/// double-forked daemon) is out of reach.
///
/// The group id is the script's pid; the kernel does not give it to a new process while any
/// member of the group is alive, and the check for members comes first, so no unrelated
/// process is signalled.
pub(super) async fn end_leftovers(group: Pid, log: &LogContext) {
    if killpg(group, None).is_err() {
        return;
    }
    tracing::info!(
        script = %log.script, request = %log.request,
        "the script exited leaving processes in its group: SIGTERM to them, SIGKILL in {}s \
         (cgi_background=true leaves them running)",
        KILL_GRACE.as_secs()
    );
    signal_group(group, Signal::SIGTERM);
    let deadline = Instant::now() + KILL_GRACE;
    while Instant::now() < deadline {
        tokio::time::sleep(GROUP_POLL).await;
        if killpg(group, None).is_err() {
            return;
        }
    }
    signal_group(group, Signal::SIGKILL);
}

/// One running script: its process group until the script has exited.
///
/// Dropped before [`Run::finish`] or [`Run::terminate`] (the handler future or the response
/// body dropped: a client abort), it stops the whole group in the background.
pub(super) struct Run {
    /// The script's process group: its pid, as it was started with `process_group(0)`.
    pub(super) group: Pid,
    /// The script's exit, from the task that waits for it ([`reap`]).
    pub(super) exited: Exited,
    /// False once the run was finished or terminated.
    pub(super) live: bool,
    pub(super) deadline: Instant,
    pub(super) timeout: Duration,
    pub(super) stdin_task: Option<AbortHandle>,
    pub(super) log: Arc<LogContext>,
}

impl Run {
    /// Gives up on the script: stops its process group, logs `why` with the script, the
    /// request and how the script ended, and answers `status` (502, 504).
    pub(super) async fn refuse(self, status: StatusCode, why: &str) -> Outcome {
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
    pub(super) async fn body_failed(self) -> BoxError {
        self.terminate().await;
        "the request body failed before the script answered".into()
    }

    /// Stops the whole group now (TERM, KILL after [`KILL_GRACE`]) and waits for the script;
    /// returns how it ended.
    pub(super) async fn terminate(mut self) -> Option<ExitStatus> {
        self.live = false;
        if let Some(task) = self.stdin_task.take() {
            task.abort();
        }
        stop_group(self.exited.clone(), self.group).await
    }

    /// The script's output was taken whole: wait for it in the background, and stop its
    /// group if it is still running at the deadline. What it leaves in its group when it
    /// exits is ended by [`reap`].
    pub(super) fn finish(mut self) {
        self.live = false;
        let (group, deadline, timeout) = (self.group, self.deadline, self.timeout);
        let stdin_task = self.stdin_task.take();
        let log = Arc::clone(&self.log);
        let mut exited = self.exited.clone();
        tokio::spawn(async move {
            let waited = tokio::time::timeout_at(deadline, exited.wait_for(Option::is_some))
                .await
                .map(|status| status.ok().and_then(|s| *s).flatten());
            match waited {
                Ok(Some(status)) if !status.success() => {
                    tracing::warn!(script = %log.script, request = %log.request, "script {status}");
                }
                Ok(_) => {}
                Err(_) => {
                    tracing::warn!(
                        script = %log.script, request = %log.request,
                        "still running at cgi_timeout={}s after its output ended: stopping its process group",
                        timeout.as_secs()
                    );
                    stop_group(exited, group).await;
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
        if !self.live {
            return;
        }
        self.live = false;
        tracing::debug!(
            script = %self.log.script, request = %self.log.request,
            "request ended before the script: stopping its process group"
        );
        if self.exited.borrow().is_none() {
            signal_group(self.group, Signal::SIGTERM);
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(stop_group(self.exited.clone(), self.group));
            }
            Err(_) => {
                // No runtime left to wait in: kill now; `kill_on_drop` and tokio's orphan
                // reaping take care of the leader.
                signal_group(self.group, Signal::SIGKILL);
            }
        }
    }
}

/// TERM to the group, up to [`KILL_GRACE`] for the script to exit, then KILL to whatever is
/// left of the group (members that ignored TERM or outlived the script), and the script's
/// exit awaited.
///
/// The group id is the script's pid, which cannot be reused while any member of the group is
/// alive or the script is unreaped; KILL right after reaping a group with no members left can
/// only miss (ESRCH).
pub(super) async fn stop_group(mut exited: Exited, group: Pid) -> Option<ExitStatus> {
    signal_group(group, Signal::SIGTERM);
    let _ = tokio::time::timeout(KILL_GRACE, exited.wait_for(Option::is_some)).await;
    signal_group(group, Signal::SIGKILL);
    let status = exited.wait_for(Option::is_some).await.ok()?;
    status.flatten()
}

pub(super) fn signal_group(group: Pid, signal: Signal) {
    // ESRCH: the group is gone already, which is the point.
    let _ = killpg(group, signal);
}

/// The response body: stdout after the head, read as the driver asks for it. Ends with an
/// error at the deadline or when the request body failed; dropping it early stops the script.
pub(super) struct ScriptBody {
    pub(super) leftover: Option<Bytes>,
    pub(super) stdout: ChildStdout,
    pub(super) buf: Vec<u8>,
    pub(super) deadline: Pin<Box<Sleep>>,
    pub(super) failed: Pin<Box<WaitForCancellationFutureOwned>>,
    /// `None` once the output ended (the script is then waited for by [`Run::finish`]).
    pub(super) run: Option<Run>,
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
