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

/// One running script: its process (and group) until it has been waited for.
///
/// Dropped before [`Run::finish`] or [`Run::terminate`] (the handler future or the response
/// body dropped: a client abort), it stops the whole group in the background.
pub(super) struct Run {
    pub(super) child: Option<Child>,
    /// The script's process group: its pid, as it was started with `process_group(0)`.
    pub(super) group: Pid,
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
        if let Some(task) = self.stdin_task.take() {
            task.abort();
        }
        let child = self.child.take()?;
        stop_group(child, self.group).await
    }

    /// The script's output was taken whole: wait for it in the background, and stop its
    /// group if it is still running at the deadline.
    pub(super) fn finish(mut self) {
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
pub(super) async fn stop_group(mut child: Child, group: Pid) -> Option<ExitStatus> {
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
