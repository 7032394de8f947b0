//! `wsgi.input` and `wsgi.errors` (PEP 3333, "Input and Error Streams").
//!
//! [`Input`] reads the request body as the driver delivers it, through the body's bounded
//! channel: nothing is read ahead of what the app asks for beyond one chunk (at most one
//! record or packet), so an upload moves only as fast as the app consumes it and AJP asks the
//! web server for the next chunk only when Python reads. The wait for a chunk releases the
//! GIL. The stream ends at the body's end, which the driver puts at `CONTENT_LENGTH` or at the
//! protocol's end marker for bodies without a length. A truncated body raises `OSError`.
//!
//! [`Errors`] writes whole lines to appserver's log.

use std::sync::Mutex;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use crate::Body;

/// `wsgi.input`: `read(size=-1)`, `readline(size=-1)`, `readlines(hint=-1)`, iteration.
#[pyclass(frozen, module = "appserver")]
pub(crate) struct Input {
    state: Mutex<InputState>,
    /// Where the body's channel lives: the Python thread waits on it with `block_on`.
    runtime: tokio::runtime::Handle,
}

struct InputState {
    /// `None` while a thread waits for the next chunk (it holds the body), and once
    /// [`Input::release`] gave the body back.
    body: Option<Body>,
    buf: BytesMut,
    eof: bool,
    released: bool,
}

impl Input {
    pub(crate) fn new(body: Body, runtime: tokio::runtime::Handle) -> Self {
        Self {
            state: Mutex::new(InputState {
                body: Some(body),
                buf: BytesMut::new(),
                eof: false,
                released: false,
            }),
            runtime,
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

    /// Reads one more chunk into the buffer; false at the end. The GIL is released while
    /// waiting, and the state lock is not held (another thread may touch the stream).
    fn fill(&self, py: Python<'_>) -> PyResult<bool> {
        let mut body = {
            let mut st = lock(&self.state);
            if st.eof {
                return Ok(false);
            }
            match st.body.take() {
                Some(b) => b,
                None => {
                    return Err(PyOSError::new_err(
                        "wsgi.input is being read by another thread",
                    ))
                }
            }
        };
        let runtime = self.runtime.clone();
        let frame = py.detach(|| runtime.block_on(body.frame()));
        let mut st = lock(&self.state);
        if !st.released {
            st.body = Some(body);
        }
        match frame {
            None => {
                st.eof = true;
                Ok(false)
            }
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    st.buf.extend_from_slice(&data);
                }
                Ok(true)
            }
            Some(Err(e)) => {
                st.eof = true;
                Err(PyOSError::new_err(format!("appserver: {e}")))
            }
        }
    }

    fn take(&self, n: usize) -> Bytes {
        let mut st = lock(&self.state);
        let n = n.min(st.buf.len());
        st.buf.split_to(n).freeze()
    }

    /// Bytes buffered, and whether the end was seen.
    fn buffered(&self) -> (usize, bool) {
        let st = lock(&self.state);
        (st.buf.len(), st.eof)
    }

    fn newline_within(&self, limit: usize) -> Option<usize> {
        let st = lock(&self.state);
        let end = st.buf.len().min(limit);
        st.buf[..end].iter().position(|&b| b == b'\n')
    }

    fn readline_bytes(&self, py: Python<'_>, size: Option<isize>) -> PyResult<Bytes> {
        let limit = limit(size);
        loop {
            if let Some(i) = self.newline_within(limit) {
                return Ok(self.take(i + 1));
            }
            let (len, eof) = self.buffered();
            if len >= limit || eof {
                return Ok(self.take(limit));
            }
            self.fill(py)?;
        }
    }
}

/// `size` as a byte count: negative or absent means no limit.
fn limit(size: Option<isize>) -> usize {
    match size {
        Some(n) if n >= 0 => n.unsigned_abs(),
        _ => usize::MAX,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the buffer half-updated in a way that
    // matters more than losing the request, which has already failed.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
            self.fill(py)?;
        }
        Ok(PyBytes::new(py, &self.take(limit)))
    }

    /// Reads one line, up to and including `\n`, or at most `size` bytes.
    #[pyo3(signature = (size = None))]
    fn readline<'py>(&self, py: Python<'py>, size: Option<isize>) -> PyResult<Bound<'py, PyBytes>> {
        Ok(PyBytes::new(py, &self.readline_bytes(py, size)?))
    }

    /// Reads lines until the end, or until `hint` bytes were read.
    #[pyo3(signature = (hint = None))]
    fn readlines<'py>(&self, py: Python<'py>, hint: Option<isize>) -> PyResult<Bound<'py, PyList>> {
        let hint = limit(hint);
        let lines = PyList::empty(py);
        let mut total = 0usize;
        loop {
            let line = self.readline_bytes(py, None)?;
            if line.is_empty() {
                break;
            }
            total = total.saturating_add(line.len());
            lines.append(PyBytes::new(py, &line))?;
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
        Ok((!line.is_empty()).then(|| PyBytes::new(py, &line)))
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
    what: String,
}

impl Errors {
    pub(crate) fn new(what: String) -> Self {
        Self {
            pending: Mutex::new(String::new()),
            what,
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
