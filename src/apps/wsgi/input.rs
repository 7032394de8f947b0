//! `wsgi.input` and `wsgi.errors` (PEP 3333, "Input and Error Streams").
//!
//! [`Input`] reads the request body as the driver delivers it, through the body's bounded
//! channel: nothing is read ahead of what the app asks for beyond one chunk (at most one
//! record or packet), so an upload moves only as fast as the app consumes it and AJP asks the
//! web server for the next chunk only when Python reads. The wait for a chunk releases the
//! GIL; chunks already waiting in the channel are taken with it, up to what the read asked
//! for, so a `read(65536)` wakes the Python thread once, not once per chunk. The stream ends
//! at the body's end, which the driver puts at `CONTENT_LENGTH` or at the protocol's end
//! marker for bodies without a length. A truncated body raises `OSError`.
//!
//! [`Errors`] writes whole lines to appserver's log.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;
use http_body_util::BodyExt;
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use super::lock;
use crate::process::lend;
use crate::Body;

/// `wsgi.input`: `read(size=-1)`, `readline(size=-1)`, `readlines(hint=-1)`, iteration.
#[pyclass(frozen, module = "appserver")]
pub(crate) struct Input {
    state: Mutex<InputState>,
    /// How the Python thread waits for the body's channel: it drives the runtime itself
    /// when a prefork worker lent it ([`lend`]) (`None` for a request without a body).
    waiter: Option<lend::Waiter>,
}

struct InputState {
    /// `None` while a thread waits for the next chunk (it holds the body), and once
    /// [`Input::release`] gave the body back.
    body: Option<Body>,
    buf: Chunks,
    eof: bool,
    released: bool,
}

impl Input {
    pub(crate) fn new(body: Body, waiter: lend::Waiter) -> Self {
        Self {
            state: Mutex::new(InputState {
                body: Some(body),
                buf: Chunks::default(),
                eof: false,
                released: false,
            }),
            waiter: Some(waiter),
        }
    }

    /// The stream of a request without a body: at its end from the start, so reading never
    /// waits (the app may run on the connection's thread, which cannot wait for a body).
    pub(crate) fn ended() -> Self {
        Self {
            state: Mutex::new(InputState {
                body: None,
                buf: Chunks::default(),
                eof: true,
                released: true,
            }),
            waiter: None,
        }
    }

    /// Drops the body when the request is over, even if Python code still holds the stream:
    /// the driver then reads and discards what the app left unread instead of waiting for a
    /// reader that will never come. Later reads see the end of the stream.
    pub(crate) fn release(&self) {
        let mut st = lock(&self.state);
        st.body = None;
        st.released = true;
        st.eof = true;
    }

    /// Reads one more chunk into the buffer, and the chunks already waiting behind it while
    /// the buffer holds fewer than `want` bytes; false at the end. The GIL is released while
    /// waiting, and the state lock is not held (another thread may touch the stream).
    fn fill(&self, py: Python<'_>, want: usize) -> PyResult<bool> {
        let Some(waiter) = self.waiter.clone() else {
            // A request without a body: nothing to wait for.
            return Ok(false);
        };
        let (mut body, buffered) = {
            let mut st = lock(&self.state);
            if st.eof {
                return Ok(false);
            }
            match st.body.take() {
                Some(b) => (b, st.buf.len()),
                None => {
                    return Err(PyOSError::new_err(
                        "wsgi.input is being read by another thread",
                    ))
                }
            }
        };
        let need = want.saturating_sub(buffered);
        let frames = py.detach(|| waiter.block_on(next_frames(&mut body, need)));
        let mut st = lock(&self.state);
        let mut result = Ok(true);
        for frame in frames {
            match frame {
                None => {
                    st.eof = true;
                    result = Ok(false);
                }
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        st.buf.push(data);
                    }
                }
                Some(Err(e)) => {
                    st.eof = true;
                    result = Err(PyOSError::new_err(format!("appserver: {e}")));
                }
            }
        }
        if !st.released {
            st.body = Some(body);
        }
        result
    }

    /// Takes up to `n` buffered bytes as a `bytes` object, copying each byte once.
    fn take<'py>(&self, py: Python<'py>, n: usize) -> PyResult<Bound<'py, PyBytes>> {
        // Split off under the lock (no copy), copy without it: allocating the object may
        // run Python code (a collection), which might touch this stream.
        let parts = lock(&self.state).buf.split_to(n);
        crate::sys::python::bytes_from_parts(py, &parts)
    }

    /// Bytes buffered, and whether the end was seen.
    fn buffered(&self) -> (usize, bool) {
        let st = lock(&self.state);
        (st.buf.len(), st.eof)
    }

    fn newline_within(&self, limit: usize) -> Option<usize> {
        lock(&self.state).buf.newline_within(limit)
    }

    fn readline_bytes<'py>(
        &self,
        py: Python<'py>,
        size: Option<isize>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let limit = limit(size);
        loop {
            if let Some(i) = self.newline_within(limit) {
                return self.take(py, i + 1);
            }
            let (len, eof) = self.buffered();
            if len >= limit || eof {
                return self.take(py, limit);
            }
            // A line's length is unknown: one chunk at a time.
            self.fill(py, 0)?;
        }
    }
}

/// Body bytes received and not yet read, in the chunks the driver delivered them in, so
/// that reading copies each byte once.
#[derive(Default)]
struct Chunks {
    parts: VecDeque<Bytes>,
    len: usize,
}

impl Chunks {
    fn push(&mut self, data: Bytes) {
        if !data.is_empty() {
            self.len += data.len();
            self.parts.push_back(data);
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    /// Where the first `\n` is, if there is one among the first `limit` bytes.
    fn newline_within(&self, limit: usize) -> Option<usize> {
        let mut seen = 0;
        for part in &self.parts {
            if seen >= limit {
                break;
            }
            let end = part.len().min(limit - seen);
            if let Some(i) = part[..end].iter().position(|&b| b == b'\n') {
                return Some(seen + i);
            }
            seen += part.len();
        }
        None
    }

    /// Removes the first `n` bytes (all, when fewer are held), without copying them.
    fn split_to(&mut self, n: usize) -> Vec<Bytes> {
        let mut want = n.min(self.len);
        self.len -= want;
        let mut out = Vec::new();
        while want > 0 {
            let Some(front) = self.parts.front_mut() else {
                break;
            };
            if front.len() <= want {
                want -= front.len();
                out.extend(self.parts.pop_front());
            } else {
                out.push(front.split_to(want));
                want = 0;
            }
        }
        out
    }
}

type Frame = Option<Result<http_body::Frame<Bytes>, crate::BoxError>>;

/// The body's next frame, waited for, and the frames already waiting behind it while
/// together they hold fewer than `need` bytes; the last one is the end or an error if one
/// came. The waiting ones are taken inside the wait, not after it: on a runtime a prefork
/// worker lent ([`lend`]) that is where the room they free in the channel wakes the
/// connection's task without a system call (from outside the runtime each wake-up writes to
/// the runtime's eventfd: 148 writes per 10 MiB upload, 17 since).
async fn next_frames(body: &mut Body, need: usize) -> Vec<Frame> {
    let mut frames = Vec::new();
    let mut got = 0;
    let mut next = body.frame().await;
    loop {
        let more = match &next {
            Some(Ok(f)) => {
                got += f.data_ref().map_or(0, Bytes::len);
                got < need
            }
            _ => false,
        };
        frames.push(next);
        if !more {
            return frames;
        }
        match ready_frame(body) {
            Some(frame) => next = frame,
            None => return frames,
        }
    }
}

/// The body's next frame if it is already waiting in the channel, without waiting for one
/// (`Some(None)` at the end).
fn ready_frame(body: &mut Body) -> Option<Frame> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match http_body::Body::poll_frame(std::pin::Pin::new(body), &mut cx) {
        std::task::Poll::Ready(frame) => Some(frame),
        std::task::Poll::Pending => None,
    }
}

/// `size` as a byte count: negative or absent means no limit.
fn limit(size: Option<isize>) -> usize {
    match size {
        Some(n) if n >= 0 => n.unsigned_abs(),
        _ => usize::MAX,
    }
}

#[pymethods]
impl Input {
    /// Reads at most `size` bytes (all that remain without one), fewer only at the end.
    #[pyo3(signature = (size = None))]
    fn read<'py>(&self, py: Python<'py>, size: Option<isize>) -> PyResult<Bound<'py, PyBytes>> {
        let limit = limit(size);
        loop {
            let (len, eof) = self.buffered();
            if len >= limit || eof {
                break;
            }
            self.fill(py, limit)?;
        }
        self.take(py, limit)
    }

    /// Reads one line, up to and including `\n`, or at most `size` bytes.
    #[pyo3(signature = (size = None))]
    fn readline<'py>(&self, py: Python<'py>, size: Option<isize>) -> PyResult<Bound<'py, PyBytes>> {
        self.readline_bytes(py, size)
    }

    /// Reads lines until the end, or until `hint` bytes were read.
    #[pyo3(signature = (hint = None))]
    fn readlines<'py>(&self, py: Python<'py>, hint: Option<isize>) -> PyResult<Bound<'py, PyList>> {
        let hint = limit(hint);
        let lines = PyList::empty(py);
        let mut total = 0usize;
        loop {
            let line = self.readline_bytes(py, None)?;
            let len = line.as_bytes().len();
            if len == 0 {
                break;
            }
            total = total.saturating_add(len);
            lines.append(line)?;
            if total >= hint {
                break;
            }
        }
        Ok(lines)
    }

    fn __iter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let line = self.readline_bytes(py, None)?;
        Ok((!line.as_bytes().is_empty()).then_some(line))
    }
}

/// The longest partial line `wsgi.errors` keeps before logging it anyway: an app that never
/// writes a newline must not grow the buffer without bound.
const MAX_ERRORS_LINE: usize = 8 * 1024;

/// `wsgi.errors`: `write(str)`, `writelines(seq)`, `flush()`; each line is one log entry
/// naming the request.
#[pyclass(frozen, module = "appserver")]
pub(crate) struct Errors {
    pending: Mutex<String>,
    what: RequestLine,
}

/// The request a `wsgi.errors` line names, formatted only when a line is logged (most
/// requests log none).
struct RequestLine {
    method: http::Method,
    uri: http::Uri,
}

impl std::fmt::Display for RequestLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.uri)
    }
}

impl Errors {
    /// The stream of the request `parts` belongs to.
    pub(crate) fn new(parts: &http::request::Parts) -> Self {
        Self {
            pending: Mutex::new(String::new()),
            what: RequestLine {
                method: parts.method.clone(),
                uri: parts.uri.clone(),
            },
        }
    }

    fn log_lines(&self, all: bool) {
        let mut pending = lock(&self.pending);
        while let Some(i) = pending.find('\n') {
            let line: String = pending.drain(..=i).collect();
            tracing::warn!(request = %self.what, "wsgi.errors: {}", line.trim_end());
        }
        if (all && !pending.is_empty()) || pending.len() > MAX_ERRORS_LINE {
            tracing::warn!(request = %self.what, "wsgi.errors: {}", pending.as_str());
            pending.clear();
        }
    }
}

#[pymethods]
impl Errors {
    fn write(&self, s: &Bound<'_, PyAny>) -> PyResult<()> {
        let Ok(text) = s.extract::<String>() else {
            return Err(PyValueError::new_err("wsgi.errors.write() takes a str"));
        };
        lock(&self.pending).push_str(&text);
        self.log_lines(false);
        Ok(())
    }

    fn writelines(&self, lines: &Bound<'_, PyAny>) -> PyResult<()> {
        for line in lines.try_iter()? {
            self.write(&line?)?;
        }
        Ok(())
    }

    fn flush(&self) {
        self.log_lines(true);
    }
}

impl Drop for Errors {
    fn drop(&mut self) {
        self.log_lines(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(parts: &[&'static str]) -> Chunks {
        let mut c = Chunks::default();
        for p in parts {
            c.push(Bytes::from_static(p.as_bytes()));
        }
        c
    }

    fn split(c: &mut Chunks, n: usize) -> String {
        c.split_to(n)
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect()
    }

    #[test]
    fn reads_span_chunks_and_keep_the_rest() {
        let mut c = held(&["abc", "", "de", "fgh"]);
        assert_eq!(c.len(), 8);
        assert_eq!(split(&mut c, 4), "abcd");
        assert_eq!(c.len(), 4);
        assert_eq!(split(&mut c, 1), "e");
        assert_eq!(split(&mut c, 100), "fgh");
        assert_eq!((c.len(), split(&mut c, 1)), (0, String::new()));
    }

    #[test]
    fn a_newline_is_found_across_chunks_within_the_limit_only() {
        let c = held(&["ab", "c\nd", "\n"]);
        assert_eq!(c.newline_within(usize::MAX), Some(3));
        assert_eq!(c.newline_within(4), Some(3));
        assert_eq!(c.newline_within(3), None);
        assert_eq!(held(&["xy", "z"]).newline_within(usize::MAX), None);
    }
}
