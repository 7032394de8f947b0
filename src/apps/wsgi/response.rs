//! The response side of PEP 3333: `start_response` and `write()`, iterating the app's
//! result, `close()`, `wsgi.file_wrapper`.
//!
//! The status and headers are held until the first non-empty chunk (or the end of an empty
//! body), so `start_response` may be called again with `exc_info` while nothing was sent, and
//! may be called during the first iteration. Once sent, `start_response(..., exc_info)`
//! re-raises. Header values must be latin-1 (a value that is not is an error, never silently
//! dropped). A `Content-Length` the app declared is enforced: bytes beyond it are not sent,
//! and a body shorter than it fails the response. `close()` is called exactly once, on
//! success, on an exception and when the client went away.
//!
//! Everything goes to the async side as [`Out`] messages over a bounded channel; the Python
//! thread waits for room with the GIL released, so a slow client slows the app down instead
//! of filling memory.

use std::io::{Read, Seek};
use std::sync::Mutex;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use pyo3::exceptions::{PyAssertionError, PyOSError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};
use tokio::sync::mpsc;

use super::interp::traceback;
use crate::response::ReasonPhrase;

/// What the Python thread tells the async side, in order: `Head`, `Data`*, then `End` or
/// `Fail` (`Fail` alone when the app failed before its head).
#[derive(Debug)]
pub(crate) enum Out {
    /// The status line and headers.
    Head(Head),
    /// A chunk of body.
    Data(Bytes),
    /// The body is complete.
    End,
    /// The app failed; the message is the traceback. Before the head: a 500. After: the
    /// response is aborted.
    Fail(String),
}

/// A response head as `start_response` received it, checked.
#[derive(Clone, Debug)]
pub(crate) struct Head {
    pub(crate) status: StatusCode,
    pub(crate) reason: Option<ReasonPhrase>,
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    content_length: Option<u64>,
}

/// How much of a `wsgi.file_wrapper` file the fast path reads at once, without the GIL.
const FILE_CHUNK: usize = 64 * 1024;

/// The `start_response` callable given to the app; its `write` attribute is the `write()`
/// callable `start_response` returns.
#[pyclass(frozen, module = "appserver")]
pub(crate) struct StartResponse {
    state: Mutex<State>,
    out: mpsc::Sender<Out>,
}

struct State {
    head: Option<Head>,
    head_sent: bool,
    written: u64,
    /// The client went away (the async side dropped its receiver).
    gone: bool,
    /// The app produced more than its Content-Length (logged once, the rest dropped).
    overflow: bool,
}

impl StartResponse {
    pub(crate) fn new(out: mpsc::Sender<Out>) -> Self {
        Self {
            state: Mutex::new(State {
                head: None,
                head_sent: false,
                written: 0,
                gone: false,
                overflow: false,
            }),
            out,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sends `msg`, waiting for room with the GIL released; false when the client is gone.
    fn post(&self, py: Python<'_>, msg: Out) -> bool {
        let out = self.out.clone();
        let ok = py.detach(move || out.blocking_send(msg).is_ok());
        if !ok {
            self.lock().gone = true;
        }
        ok
    }

    /// Sends the head if not yet sent; an error when `start_response` was not called.
    fn send_head(&self, py: Python<'_>) -> PyResult<bool> {
        let head = {
            let mut st = self.lock();
            if st.head_sent {
                return Ok(!st.gone);
            }
            let Some(head) = st.head.clone() else {
                return Err(PyAssertionError::new_err(
                    "the app sent body data before calling start_response()",
                ));
            };
            st.head_sent = true;
            head
        };
        Ok(self.post(py, Out::Head(head)))
    }

    /// Sends one chunk of body (the head first, if this is the first non-empty chunk);
    /// false when the client is gone.
    pub(crate) fn send(&self, py: Python<'_>, data: &[u8]) -> PyResult<bool> {
        if data.is_empty() {
            return Ok(!self.lock().gone);
        }
        if !self.send_head(py)? {
            return Ok(false);
        }
        let chunk = {
            let mut st = self.lock();
            let declared = st.head.as_ref().and_then(|h| h.content_length);
            let room = declared.map_or(u64::MAX, |n| n.saturating_sub(st.written));
            let take = usize::try_from(room).unwrap_or(usize::MAX).min(data.len());
            if take < data.len() && !st.overflow {
                st.overflow = true;
                tracing::error!(
                    "the WSGI app sent more than its Content-Length of {} bytes: the excess \
                     is not sent",
                    declared.unwrap_or(0)
                );
            }
            st.written += take as u64;
            Bytes::copy_from_slice(&data[..take])
        };
        if chunk.is_empty() {
            return Ok(true);
        }
        Ok(self.post(py, Out::Data(chunk)))
    }

    /// Ends the response: the head if still held (an empty body), then `End`, or a failure
    /// when the body is shorter than its declared Content-Length.
    fn finish(&self, py: Python<'_>, head_request: bool) -> PyResult<()> {
        if !self.send_head(py)? {
            return Ok(());
        }
        let short = {
            let st = self.lock();
            match st.head.as_ref().and_then(|h| h.content_length) {
                Some(n) if st.written < n && !head_request => Some((st.written, n)),
                _ => None,
            }
        };
        if let Some((written, declared)) = short {
            return Err(PyValueError::new_err(format!(
                "the WSGI app declared Content-Length: {declared} but its body ended after \
                 {written} bytes"
            )));
        }
        self.post(py, Out::End);
        Ok(())
    }

    fn gone(&self) -> bool {
        self.lock().gone
    }
}

#[pymethods]
impl StartResponse {
    /// `start_response(status, response_headers, exc_info=None)`: returns `write`.
    #[pyo3(signature = (status, headers, exc_info = None))]
    fn __call__(
        slf: &Bound<'_, Self>,
        status: &Bound<'_, PyAny>,
        headers: &Bound<'_, PyAny>,
        exc_info: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let this = slf.get();
        let exc_info = exc_info.filter(|e| !e.is_none());
        {
            let st = this.lock();
            match exc_info {
                Some(exc) if st.head_sent => {
                    // PEP 3333: too late to change the response; re-raise the app's error.
                    drop(st);
                    let value = exc.get_item(1)?;
                    let value = value.call_method1("with_traceback", (exc.get_item(2)?,))?;
                    return Err(PyErr::from_value(value));
                }
                None if st.head.is_some() => {
                    return Err(PyAssertionError::new_err(
                        "start_response() called a second time without exc_info",
                    ));
                }
                _ => {}
            }
        }
        let head = parse_head(status, headers)?;
        this.lock().head = Some(head);
        Ok(slf.getattr("write")?.unbind())
    }

    /// The `write()` callable: sends `data` at once (the head first).
    fn write(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let bytes = data
            .cast::<PyBytes>()
            .map_err(|_| PyTypeError::new_err("write() takes bytes"))?;
        if !self.send(py, bytes.as_bytes())? {
            return Err(PyOSError::new_err("appserver: the client went away"));
        }
        Ok(())
    }
}

/// Checks `start_response`'s arguments: `"NNN reason"` and a list of `(name, value)` str
/// pairs, values latin-1 and free of control characters.
fn parse_head(status: &Bound<'_, PyAny>, headers: &Bound<'_, PyAny>) -> PyResult<Head> {
    let status = status
        .cast::<PyString>()
        .map_err(|_| PyTypeError::new_err("status must be a str such as '200 OK'"))?
        .to_str()?;
    let bad_status = || PyValueError::new_err(format!("status {status:?} is not 'NNN reason'"));
    let (code, reason) = status.split_once(' ').ok_or_else(bad_status)?;
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad_status());
    }
    let code = StatusCode::from_bytes(code.as_bytes()).map_err(|_| bad_status())?;
    let reason = if reason.is_empty() || Some(reason) == code.canonical_reason() {
        None
    } else {
        Some(ReasonPhrase::new(latin1_bytes("status", reason)?).map_err(|_| bad_status())?)
    };
    let mut out = Vec::new();
    let mut content_length = None;
    if !headers.is_exact_instance_of::<pyo3::types::PyList>() {
        return Err(PyTypeError::new_err("response_headers must be a list"));
    }
    for item in headers.try_iter()? {
        let item = item?;
        let (name, value): (Bound<'_, PyAny>, Bound<'_, PyAny>) = item.extract().map_err(|_| {
            PyTypeError::new_err("each response header must be a (name, value) tuple")
        })?;
        let (Ok(name), Ok(value)) = (name.cast::<PyString>(), value.cast::<PyString>()) else {
            return Err(PyTypeError::new_err("header names and values must be str"));
        };
        let (name, value) = (name.to_str()?, value.to_str()?);
        let hname = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| PyValueError::new_err(format!("{name:?} is not a header name")))?;
        let hvalue = HeaderValue::from_bytes(&latin1_bytes(name, value)?).map_err(|_| {
            PyValueError::new_err(format!(
                "header {name}: {value:?} holds a control character"
            ))
        })?;
        if hname == http::header::CONTENT_LENGTH {
            content_length = Some(value.trim().parse::<u64>().map_err(|_| {
                PyValueError::new_err(format!("Content-Length {value:?} is not a number"))
            })?);
        }
        out.push((hname, hvalue));
    }
    Ok(Head {
        status: code,
        reason,
        headers: out,
        content_length,
    })
}

/// A native string's bytes: PEP 3333 headers are latin-1; anything beyond is an error.
fn latin1_bytes(what: &str, s: &str) -> PyResult<Vec<u8>> {
    s.chars()
        .map(|c| u8::try_from(u32::from(c)).ok())
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(|| {
            PyValueError::new_err(format!(
                "{what}: {s:?} is not latin-1 (PEP 3333: encode the value first)"
            ))
        })
}

/// `wsgi.file_wrapper(filelike, blksize=8192)`: iterates `filelike.read(blksize)`; `close()`
/// closes the file. Returned by the app as is, it is sent from the file's descriptor with the
/// GIL released.
#[pyclass(frozen, module = "appserver")]
pub(crate) struct FileWrapper {
    filelike: Py<PyAny>,
    blksize: usize,
}

#[pymethods]
impl FileWrapper {
    #[new]
    #[pyo3(signature = (filelike, blksize = 8192))]
    fn new(filelike: Py<PyAny>, blksize: usize) -> Self {
        Self {
            filelike,
            blksize: blksize.max(1),
        }
    }

    fn __iter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let data = self
            .filelike
            .bind(py)
            .call_method1("read", (self.blksize,))?;
        Ok((data.len()? > 0).then_some(data))
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let f = self.filelike.bind(py);
        if f.hasattr("close")? {
            f.call_method0("close")?;
        }
        Ok(())
    }
}

/// Calls the app for one request and streams its response; every outcome ends in `End` or
/// `Fail` on the channel (or nothing, when the client went away).
pub(crate) fn run(
    py: Python<'_>,
    app: &Bound<'_, PyAny>,
    environ: Bound<'_, PyAny>,
    start: &Bound<'_, StartResponse>,
    head_request: bool,
) {
    let sr = start.get();
    let result = match app.call1((environ, start)) {
        Ok(r) => r,
        Err(e) => return fail(py, sr, &e),
    };
    let streamed = stream(py, &result, sr, head_request);
    // close() exactly once, whatever happened while iterating.
    let closed = match result.hasattr("close") {
        Ok(true) => result.call_method0("close").map(drop),
        Ok(false) => Ok(()),
        Err(e) => Err(e),
    };
    match (streamed, closed) {
        (Err(e), _) | (Ok(()), Err(e)) => fail(py, sr, &e),
        (Ok(()), Ok(())) => {}
    }
}

/// Iterates the result (or reads a file wrapper's descriptor) and finishes the response.
fn stream(
    py: Python<'_>,
    result: &Bound<'_, PyAny>,
    sr: &StartResponse,
    head_request: bool,
) -> PyResult<()> {
    if let Ok(wrapper) = result.cast_exact::<FileWrapper>() {
        if let Some(file) = wrapper_file(py, wrapper.get()) {
            if !sr.send_head(py)? {
                return Ok(());
            }
            let mut file = file;
            loop {
                let mut buf = vec![0u8; FILE_CHUNK];
                let n = py
                    .detach(|| file.read(&mut buf))
                    .map_err(|e| PyOSError::new_err(format!("reading the file: {e}")))?;
                if n == 0 || !sr.send(py, &buf[..n])? {
                    break;
                }
            }
            return if sr.gone() {
                Ok(())
            } else {
                sr.finish(py, head_request)
            };
        }
    }
    for item in result.try_iter()? {
        let item = item?;
        let bytes = item
            .cast::<PyBytes>()
            .map_err(|_| PyTypeError::new_err("the app's iterable must yield bytes"))?;
        if !sr.send(py, bytes.as_bytes())? {
            return Ok(());
        }
    }
    sr.finish(py, head_request)
}

/// The wrapper's file as a descriptor of our own, when it has a real one.
fn wrapper_file(py: Python<'_>, wrapper: &FileWrapper) -> Option<std::fs::File> {
    let fd: i32 = wrapper
        .filelike
        .bind(py)
        .call_method0("fileno")
        .ok()?
        .extract()
        .ok()?;
    let mut file = crate::sys::dup_file(fd).ok()?;
    // Only regular files: a socket or pipe behind fileno() is left to Python's read().
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    // A buffered Python file may have read ahead: start where Python says it is.
    let pos: u64 = wrapper
        .filelike
        .bind(py)
        .call_method0("tell")
        .ok()?
        .extract()
        .ok()?;
    file.seek(std::io::SeekFrom::Start(pos)).ok()?;
    Some(file)
}

/// Reports an app error: the traceback goes to the async side, which answers 500 (before
/// the head) or aborts the response (after it). A client that went away gets nothing.
fn fail(py: Python<'_>, sr: &StartResponse, err: &PyErr) {
    let text = traceback(py, err);
    if sr.gone() {
        tracing::info!("the client went away; the WSGI app then failed:\n{text}");
        return;
    }
    sr.post(py, Out::Fail(text));
}
