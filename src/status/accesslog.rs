//! `accesslog=FILE|-`: one line per request, in the combined log format (default) or JSON
//! (`accesslog_format=json`), with the request's duration, the worker's pid and the gateway
//! protocol.
//!
//! Lines are formatted into a per-process buffer and written with one `write` (the file is
//! opened `O_APPEND`, so lines of several workers never interleave) once the buffer holds
//! [`BUFFER_BYTES`], every [`FLUSH_INTERVAL`], before a reload's exec and when a worker
//! exits. SIGUSR1 reopens the file (logrotate), as it does `outlog=`/`errlog=`.
//!
//! ```text
//! 127.0.0.1 - - [03/Dec/2026:13:30:42 +0000] "GET /a?b=1 HTTP/1.1" 200 512 "-" "curl/8.5" 0.000734 4242 fcgi
//! └ REMOTE_ADDR  └ REMOTE_USER                └ request line       │   │   └ Referer └ User-Agent │     │    └ protocol
//!                                                           status ┘   └ body bytes   duration (s) ┘     └ worker pid
//! ```

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::{AccessLogFormat, Config};

/// Bytes of log lines held before they are written: one `write` per this much, so a busy
/// server pays one syscall per hundreds of requests. A 64 KiB write to an `O_APPEND` file is
/// still one atomic append on local file systems.
pub(crate) const BUFFER_BYTES: usize = 64 * 1024;

/// How late a line may be written at most when traffic is light.
pub(crate) const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Longest field (URI, referer, user agent) written; longer ones are cut, so one request
/// cannot make a line of megabytes.
pub(crate) const MAX_FIELD_BYTES: usize = 4096;

/// One request, as the access log records it.
#[derive(Debug)]
pub(crate) struct Entry<'a> {
    /// `REMOTE_ADDR`.
    pub(crate) remote_addr: &'a str,
    /// `REMOTE_USER`.
    pub(crate) remote_user: &'a str,
    /// The request's method.
    pub(crate) method: &'a str,
    /// The request's URI (path and query).
    pub(crate) uri: &'a str,
    /// `SERVER_PROTOCOL` (`HTTP/1.1`).
    pub(crate) http_version: &'a str,
    /// The response status.
    pub(crate) status: u16,
    /// Response body bytes.
    pub(crate) bytes: u64,
    /// The `Referer` header.
    pub(crate) referer: &'a str,
    /// The `User-Agent` header.
    pub(crate) user_agent: &'a str,
    /// From the request's start to the end of its response body.
    pub(crate) duration: Duration,
    /// When the request ended.
    pub(crate) time: SystemTime,
    /// The worker's pid.
    pub(crate) pid: u32,
    /// Gateway protocol.
    pub(crate) protocol: &'a str,
}

#[derive(Debug)]
enum Target {
    Stderr,
    File(PathBuf),
}

/// The access log of one process.
#[derive(Debug)]
pub(crate) struct AccessLog {
    target: Target,
    format: AccessLogFormat,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    file: Option<File>,
    buf: Vec<u8>,
    clock: Clock,
}

/// The last second's formatted timestamp: a busy log formats the date once a second, not once
/// a line.
#[derive(Debug, Default)]
struct Clock {
    second: u64,
    text: Vec<u8>,
}

impl Clock {
    /// Appends `t`'s timestamp as the format wants it.
    fn put(&mut self, out: &mut Vec<u8>, t: SystemTime, format: AccessLogFormat) {
        let second = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if second != self.second || self.text.is_empty() {
            self.second = second;
            self.text.clear();
            match format {
                AccessLogFormat::Combined => clf_time(&mut self.text, t),
                AccessLogFormat::Json => iso_time(&mut self.text, t),
            }
        }
        out.extend_from_slice(&self.text);
    }
}

static LOG: OnceLock<AccessLog> = OnceLock::new();
static FLUSHER: AtomicBool = AtomicBool::new(false);

/// Opens `accesslog=` if given (before forking: workers share the open file).
pub(crate) fn init(config: &Config) -> io::Result<()> {
    let Some(path) = &config.accesslog else {
        return Ok(());
    };
    let log = if path.as_os_str() == "-" {
        AccessLog::stderr(config.accesslog_format)
    } else {
        AccessLog::open(path.clone(), config.accesslog_format)?
    };
    let _ = LOG.set(log);
    Ok(())
}

/// Makes `log` the process's access log (the benchmark's setup).
pub(crate) fn install(log: AccessLog) {
    let _ = LOG.set(log);
}

/// The process's access log, when `accesslog=` is set.
pub(crate) fn get() -> Option<&'static AccessLog> {
    LOG.get()
}

/// Writes what is buffered.
pub(crate) fn flush() {
    if let Some(log) = LOG.get() {
        if let Err(e) = log.flush() {
            tracing::error!("accesslog: {e}");
        }
    }
}

/// Reopens the file (SIGUSR1, after logrotate moved it).
pub(crate) fn reopen() -> io::Result<()> {
    match LOG.get() {
        Some(log) => log.reopen(),
        None => Ok(()),
    }
}

/// Starts the task that writes the buffer every [`FLUSH_INTERVAL`], once per process.
pub(crate) fn spawn_flusher() {
    if LOG.get().is_none() || FLUSHER.swap(true, Ordering::AcqRel) {
        return;
    }
    tokio::spawn(async {
        let mut tick = tokio::time::interval(FLUSH_INTERVAL);
        loop {
            tick.tick().await;
            flush();
        }
    });
}

impl AccessLog {
    /// A log appended to `path` (created if missing).
    pub(crate) fn open(path: PathBuf, format: AccessLogFormat) -> io::Result<Self> {
        let file = open_append(&path)?;
        Ok(Self {
            target: Target::File(path),
            format,
            inner: Mutex::new(Inner {
                file: Some(file),
                buf: Vec::with_capacity(BUFFER_BYTES + MAX_FIELD_BYTES * 4),
                clock: Clock::default(),
            }),
        })
    }

    /// A log written to standard error (`accesslog=-`).
    pub(crate) fn stderr(format: AccessLogFormat) -> Self {
        Self {
            target: Target::Stderr,
            format,
            inner: Mutex::new(Inner {
                file: None,
                buf: Vec::with_capacity(BUFFER_BYTES + MAX_FIELD_BYTES * 4),
                clock: Clock::default(),
            }),
        }
    }

    /// Formats `entry` into the buffer; writes the buffer once it holds [`BUFFER_BYTES`].
    pub(crate) fn log(&self, entry: &Entry<'_>) {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let inner = &mut *guard;
        match self.format {
            AccessLogFormat::Combined => combined(&mut inner.buf, &mut inner.clock, entry),
            AccessLogFormat::Json => json(&mut inner.buf, &mut inner.clock, entry),
        }
        if inner.buf.len() >= BUFFER_BYTES {
            if let Err(e) = self.write_out(inner) {
                drop(guard);
                tracing::error!("accesslog: {e}");
            }
        }
    }

    /// Writes what is buffered.
    pub(crate) fn flush(&self) -> io::Result<()> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        self.write_out(&mut inner)
    }

    fn write_out(&self, inner: &mut Inner) -> io::Result<()> {
        if inner.buf.is_empty() {
            return Ok(());
        }
        let result = match (&self.target, inner.file.as_mut()) {
            (Target::File(_), Some(file)) => file.write_all(&inner.buf),
            _ => io::stderr().lock().write_all(&inner.buf),
        };
        // A failing disk must not grow the buffer without bound: what could not be written
        // is dropped (and the error logged by the caller).
        inner.buf.clear();
        result
    }

    /// Writes what is buffered, then reopens the file.
    pub(crate) fn reopen(&self) -> io::Result<()> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self.write_out(&mut inner);
        if let Target::File(path) = &self.target {
            inner.file = Some(open_append(path)?);
        }
        Ok(())
    }
}

fn open_append(path: &std::path::Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("accesslog={}: {e}", path.display())))
}

/// `s` cut at [`MAX_FIELD_BYTES`], with `"`, `\` and control bytes escaped as `\xHH` (as
/// nginx does), so a field can never end the quotes it sits in or forge a line.
fn quoted(out: &mut Vec<u8>, s: &str) {
    if s.is_empty() {
        out.push(b'-');
        return;
    }
    let bytes = &s.as_bytes()[..s.len().min(MAX_FIELD_BYTES)];
    let plain = |b: &u8| *b != b'"' && *b != b'\\' && *b >= 0x20 && *b != 0x7f;
    if bytes.iter().all(plain) {
        out.extend_from_slice(bytes);
        return;
    }
    for &b in bytes {
        if b == b'"' || b == b'\\' || b < 0x20 || b == 0x7f {
            let _ = write!(out, "\\x{b:02X}");
        } else {
            out.push(b);
        }
    }
}

fn combined(out: &mut Vec<u8>, clock: &mut Clock, e: &Entry<'_>) {
    quoted(out, e.remote_addr);
    out.extend_from_slice(b" - ");
    quoted(out, e.remote_user);
    out.extend_from_slice(b" [");
    clock.put(out, e.time, AccessLogFormat::Combined);
    out.extend_from_slice(b"] \"");
    quoted(out, e.method);
    out.push(b' ');
    quoted(out, e.uri);
    out.push(b' ');
    quoted(out, e.http_version);
    let _ = write!(out, "\" {} ", e.status);
    if e.bytes == 0 {
        out.push(b'-');
    } else {
        let _ = write!(out, "{}", e.bytes);
    }
    out.extend_from_slice(b" \"");
    quoted(out, e.referer);
    out.extend_from_slice(b"\" \"");
    quoted(out, e.user_agent);
    let micros = e.duration.as_micros();
    let _ = writeln!(
        out,
        "\" {}.{:06} {} {}",
        micros / 1_000_000,
        micros % 1_000_000,
        e.pid,
        e.protocol
    );
}

fn json(out: &mut Vec<u8>, clock: &mut Clock, e: &Entry<'_>) {
    let s = |out: &mut Vec<u8>, v: &str| {
        let v = &v[..floor_char_boundary(v, MAX_FIELD_BYTES)];
        // Most fields need no escaping: copied as they are, which is several times faster
        // than the general escaper.
        if v.bytes().all(|b| b != b'"' && b != b'\\' && b >= 0x20) {
            out.push(b'"');
            out.extend_from_slice(v.as_bytes());
            out.push(b'"');
        } else {
            let _ = serde_json::to_writer(&mut *out, v);
        }
    };
    out.extend_from_slice(b"{\"time\":\"");
    clock.put(out, e.time, AccessLogFormat::Json);
    out.extend_from_slice(b"\",\"remote_addr\":");
    s(out, e.remote_addr);
    out.extend_from_slice(b",\"remote_user\":");
    s(out, e.remote_user);
    out.extend_from_slice(b",\"method\":");
    s(out, e.method);
    out.extend_from_slice(b",\"uri\":");
    s(out, e.uri);
    out.extend_from_slice(b",\"http_version\":");
    s(out, e.http_version);
    let _ = write!(out, ",\"status\":{},\"bytes\":{}", e.status, e.bytes);
    out.extend_from_slice(b",\"referer\":");
    s(out, e.referer);
    out.extend_from_slice(b",\"user_agent\":");
    s(out, e.user_agent);
    let micros = e.duration.as_micros();
    let _ = write!(
        out,
        ",\"duration\":{}.{:06},\"pid\":{},\"protocol\":",
        micros / 1_000_000,
        micros % 1_000_000,
        e.pid
    );
    s(out, e.protocol);
    out.extend_from_slice(b"}\n");
}

fn floor_char_boundary(s: &str, max: usize) -> usize {
    if s.len() <= max {
        return s.len();
    }
    (0..=max)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0)
}

/// (year, month 1-12, day, hour, minute, second) in UTC.
fn civil(t: SystemTime) -> (i64, u32, u32, u32, u32, u32) {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        month as u32,
        day as u32,
        (rem / 3600) as u32,
        (rem % 3600 / 60) as u32,
        (rem % 60) as u32,
    )
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `03/Dec/2026:13:30:42 +0000`.
fn clf_time(out: &mut Vec<u8>, t: SystemTime) {
    let (y, mo, d, h, mi, s) = civil(t);
    let month = MONTHS[(mo as usize).clamp(1, 12) - 1];
    let _ = write!(out, "{d:02}/{month}/{y}:{h:02}:{mi:02}:{s:02} +0000");
}

/// `2026-12-03T13:30:42Z`.
fn iso_time(out: &mut Vec<u8>, t: SystemTime) {
    let (y, mo, d, h, mi, s) = civil(t);
    let _ = write!(out, "{y}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z");
}

/// Logs one typical line to `log`, for the benchmark.
pub(crate) fn bench_log(log: &AccessLog) {
    log.log(&sample_entry());
}

fn sample_entry() -> Entry<'static> {
    Entry {
        remote_addr: "127.0.0.1",
        remote_user: "",
        method: "GET",
        uri: "/articles/2026/12/some-article/?page=2",
        http_version: "HTTP/1.1",
        status: 200,
        bytes: 5120,
        referer: "https://example.org/articles/",
        user_agent: "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0",
        duration: Duration::from_micros(734),
        time: SystemTime::now(),
        pid: 4242,
        protocol: "fcgi",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combined_line() {
        let mut e = sample_entry();
        e.time = UNIX_EPOCH + Duration::from_secs(1_796_304_642); // 2026-12-03 13:30:42
        let mut out = Vec::new();
        combined(&mut out, &mut Clock::default(), &e);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "127.0.0.1 - - [03/Dec/2026:13:30:42 +0000] \"GET /articles/2026/12/some-article/?page=2 \
             HTTP/1.1\" 200 5120 \"https://example.org/articles/\" \"Mozilla/5.0 (X11; Linux x86_64; \
             rv:120.0) Gecko/20100101 Firefox/120.0\" 0.000734 4242 fcgi\n"
        );
    }

    #[test]
    fn fields_cannot_forge_lines_or_quotes() {
        let mut e = sample_entry();
        e.user_agent = "evil\" \n127.0.0.1 - - [x] \"GET /";
        let mut out = Vec::new();
        combined(&mut out, &mut Clock::default(), &e);
        let line = String::from_utf8(out).unwrap();
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        assert!(line.contains("evil\\x22 \\x0A127.0.0.1"), "{line}");
        let mut out = Vec::new();
        json(&mut out, &mut Clock::default(), &e);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["user_agent"], e.user_agent);
        assert_eq!(v["duration"], 0.000734);
        assert_eq!(v["pid"], 4242);
    }

    #[test]
    fn long_fields_are_cut_at_the_limit() {
        let long = "a".repeat(MAX_FIELD_BYTES + 1);
        let exact = "a".repeat(MAX_FIELD_BYTES);
        for (uri, kept) in [(&long, MAX_FIELD_BYTES), (&exact, MAX_FIELD_BYTES)] {
            let mut e = sample_entry();
            e.uri = uri;
            let mut out = Vec::new();
            json(&mut out, &mut Clock::default(), &e);
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(v["uri"].as_str().unwrap().len(), kept);
        }
    }

    #[test]
    fn dates() {
        let at = |s: u64| {
            let mut out = Vec::new();
            iso_time(&mut out, UNIX_EPOCH + Duration::from_secs(s));
            String::from_utf8(out).unwrap()
        };
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_796_304_642), "2026-12-03T13:30:42Z");
    }

    #[test]
    fn buffered_until_flushed_then_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::open(path.clone(), AccessLogFormat::Combined).unwrap();
        log.log(&sample_entry());
        assert_eq!(std::fs::read(&path).unwrap().len(), 0, "buffered");
        log.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
        // logrotate: the file moves away, USR1 reopens a new one.
        let rotated = dir.path().join("access.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        log.log(&sample_entry());
        log.reopen().unwrap();
        log.log(&sample_entry());
        log.flush().unwrap();
        assert_eq!(
            std::fs::read_to_string(&rotated).unwrap().lines().count(),
            2
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
        // A full buffer is written without a flush.
        let big = dir.path().join("big.log");
        let log = AccessLog::open(big.clone(), AccessLogFormat::Json).unwrap();
        let mut n = 0;
        while std::fs::metadata(&big).unwrap().len() == 0 {
            log.log(&sample_entry());
            n += 1;
            assert!(n < BUFFER_BYTES, "never written");
        }
        assert!(std::fs::metadata(&big).unwrap().len() >= BUFFER_BYTES as u64);
    }
}
