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
//! Everything goes to the async side as [`Out`] messages through a [`Sink`]. From a Python
//! thread, that is a bounded channel: the thread waits for room with the GIL released, so a
//! slow client slows the app down instead of filling memory. When the app runs on the
//! connection's own thread ([`AppCall`] advanced by the response body as the driver asks for
//! more), the messages are held for the body to take, one step of the app at a time.

use std::collections::VecDeque;
use std::io::{Read, Seek};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use pyo3::exceptions::{PyAssertionError, PyOSError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyIterator, PyString};
use tokio::sync::mpsc;

use super::interp::traceback;
use super::lock;
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

/// How many bytes `write()` may hold while the app runs on the connection's thread, which
/// cannot send them before the app returns. `write()` is the legacy way to answer (Django,
/// Flask and most apps return an iterable instead); an app that writes more than this in
/// one call gets an `OSError`, and from then on this process runs every request on a
/// Python thread, where `write()` streams with the channel's bound.
pub(crate) const MAX_HELD_WRITE: usize = 4 * 1024 * 1024;

/// Where the response goes.
pub(crate) enum Sink {
    /// To the connection's task over a bounded channel: the app runs on a Python thread.
    Channel(mpsc::Sender<Out>, crate::process::lend::Waiter),
    /// Held for the connection's task to take: the app runs on that task's thread.
    Held(Mutex<Held>),
}

impl Sink {
    /// A sink that holds the messages for [`StartResponse::take_held`]; `write_seen` is set
    /// when the app calls `write()`, so that its later requests run on a Python thread.
    pub(crate) fn held(write_seen: Arc<AtomicBool>) -> Self {
        Self::Held(Mutex::new(Held {
            queue: VecDeque::new(),
            bytes: 0,
            write_seen,
        }))
    }
}

pub(crate) struct Held {
    queue: VecDeque<Out>,
    /// Data bytes in `queue`.
    bytes: usize,
    write_seen: Arc<AtomicBool>,
}

/// The `start_response` callable given to the app; its `write` attribute is the `write()`
/// callable `start_response` returns.
#[pyclass(frozen, module = "appserver")]
pub(crate) struct StartResponse {
    state: Mutex<State>,
    sink: Sink,
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
    pub(crate) fn new(sink: Sink) -> Self {
        Self {
            state: Mutex::new(State {
                head: None,
                head_sent: false,
                written: 0,
                gone: false,
                overflow: false,
            }),
            sink,
        }
    }

    /// The next held message (a [`Sink::Held`] sink only).
    pub(crate) fn take_held(&self) -> Option<Out> {
        let Sink::Held(held) = &self.sink else {
            return None;
        };
        let mut held = lock(held);
        let msg = held.queue.pop_front()?;
        if let Out::Data(data) = &msg {
            held.bytes -= data.len();
        }
        Some(msg)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Sends `msg`, waiting for room with the GIL released (or holds it); false when the
    /// client is gone.
    fn post(&self, py: Python<'_>, msg: Out) -> bool {
        let ok = match &self.sink {
            Sink::Channel(out, waiter) => py.detach(|| waiter.block_on(out.send(msg)).is_ok()),
            Sink::Held(held) => {
                let mut held = lock(held);
                if let Out::Data(data) = &msg {
                    held.bytes += data.len();
                }
                held.queue.push_back(msg);
                true
            }
        };
        if !ok {
            self.lock().gone = true;
        }
        ok
    }

    /// The client went away: nothing more is sent.
    pub(crate) fn set_gone(&self) {
        self.lock().gone = true;
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

    /// The `write()` callable: sends `data` at once (the head first), or holds it until
    /// the app returns when it runs on the connection's thread.
    fn write(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let bytes = data
            .cast::<PyBytes>()
            .map_err(|_| PyTypeError::new_err("write() takes bytes"))?;
        if let Sink::Held(held) = &self.sink {
            let held_bytes = {
                let held = lock(held);
                held.write_seen.store(true, Ordering::Relaxed);
                held.bytes
            };
            if held_bytes + bytes.as_bytes().len() > MAX_HELD_WRITE {
                return Err(PyOSError::new_err(format!(
                    "appserver: write() would hold more than {MAX_HELD_WRITE} bytes until \
                     the app returns (it runs on the connection's thread for a request \
                     without a body); this process runs the app's later requests on a \
                     Python thread, where write() streams"
                )));
            }
        }
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

/// One call of the app, taken a step at a time: the call itself, then one chunk of the
/// result (or of a `wsgi.file_wrapper` file) per step, then the end and `close()`. Every
/// outcome ends in `End` or `Fail` through the sink (or nothing, when the client went away),
/// and `close()` is called exactly once.
///
/// A Python thread takes the steps in a row ([`AppCall::run`]), waiting for room in the
/// channel; on the connection's thread, the response body takes one whenever the driver
/// wants more, so the app never runs ahead of the client.
pub(crate) struct AppCall {
    start: Py<StartResponse>,
    head_request: bool,
    state: CallState,
}

enum CallState {
    /// `app(environ, start_response)` is still to be called.
    Calling { app: Py<PyAny>, environ: Py<PyAny> },
    /// Iterating the result.
    Iterating {
        result: Py<PyAny>,
        iter: Py<PyIterator>,
        /// The iterator walks a list or tuple (what most apps return, Django's
        /// `HttpResponse` included): taking an item runs no app code, so it cannot block.
        plain: bool,
    },
    /// Reading a file wrapper's descriptor with the GIL released.
    File {
        result: Py<PyAny>,
        file: std::fs::File,
    },
    /// Over: the end or the failure was sent, and `close()` called.
    Done,
}

impl AppCall {
    pub(crate) fn new(
        app: &Bound<'_, PyAny>,
        environ: Bound<'_, PyAny>,
        start: &Bound<'_, StartResponse>,
        head_request: bool,
    ) -> Self {
        Self {
            start: start.clone().unbind(),
            head_request,
            state: CallState::Calling {
                app: app.clone().unbind(),
                environ: environ.unbind(),
            },
        }
    }

    /// Takes every step, on a Python thread.
    pub(crate) fn run(mut self, py: Python<'_>) {
        while self.step(py) {}
    }

    /// True once the call is over.
    pub(crate) fn is_done(&self) -> bool {
        matches!(self.state, CallState::Done)
    }

    /// True when the next step runs app code (a generator, Django's streaming response), which
    /// may take its time: what was produced before should go out first.
    pub(crate) fn next_step_runs_app_code(&self) -> bool {
        match &self.state {
            CallState::Calling { .. } => true,
            CallState::Iterating { plain, .. } => !plain,
            CallState::File { .. } | CallState::Done => false,
        }
    }

    /// Takes one step; false once the call is over.
    pub(crate) fn step(&mut self, py: Python<'_>) -> bool {
        let start = self.start.clone_ref(py);
        let sr = start.get();
        match std::mem::replace(&mut self.state, CallState::Done) {
            CallState::Done => {}
            CallState::Calling { app, environ } => {
                match app.bind(py).call1((environ, start.bind(py))) {
                    Ok(result) => self.state = self.first_state(py, result),
                    Err(e) => fail(py, sr, &e),
                }
            }
            CallState::Iterating {
                result,
                iter,
                plain,
            } => {
                let sent = match iter.bind(py).clone().next() {
                    Some(Ok(item)) => match item.cast::<PyBytes>() {
                        Ok(bytes) => sr.send(py, bytes.as_bytes()),
                        Err(_) => Err(PyTypeError::new_err("the app's iterable must yield bytes")),
                    },
                    None => return self.end(py, result, sr.finish(py, self.head_request)),
                    Some(Err(e)) => Err(e),
                };
                match sent {
                    Ok(true) => {
                        self.state = CallState::Iterating {
                            result,
                            iter,
                            plain,
                        }
                    }
                    // The client went away: close() and stop.
                    Ok(false) => return self.end(py, result, Ok(())),
                    Err(e) => return self.end(py, result, Err(e)),
                }
            }
            CallState::File { result, mut file } => {
                let mut buf = vec![0u8; FILE_CHUNK];
                let read = py
                    .detach(|| file.read(&mut buf))
                    .map_err(|e| PyOSError::new_err(format!("reading the file: {e}")));
                let sent = match read {
                    Ok(0) => return self.end(py, result, sr.finish(py, self.head_request)),
                    Ok(n) => sr.send(py, &buf[..n]),
                    Err(e) => Err(e),
                };
                match sent {
                    Ok(true) => self.state = CallState::File { result, file },
                    Ok(false) => return self.end(py, result, Ok(())),
                    Err(e) => return self.end(py, result, Err(e)),
                }
            }
        }
        !self.is_done()
    }

    /// What follows the app's return: its file wrapper's descriptor, or its iterator.
    fn first_state(&mut self, py: Python<'_>, result: Bound<'_, PyAny>) -> CallState {
        let sr = self.start.get();
        if let Ok(wrapper) = result.cast_exact::<FileWrapper>() {
            if let Some(file) = wrapper_file(py, wrapper.get()) {
                return match sr.send_head(py) {
                    Ok(true) => CallState::File {
                        result: result.unbind(),
                        file,
                    },
                    Ok(false) => {
                        self.end(py, result.unbind(), Ok(()));
                        CallState::Done
                    }
                    Err(e) => {
                        self.end(py, result.unbind(), Err(e));
                        CallState::Done
                    }
                };
            }
        }
        match result.try_iter() {
            Ok(iter) => CallState::Iterating {
                plain: iter
                    .get_type()
                    .name()
                    .is_ok_and(|n| n == "list_iterator" || n == "tuple_iterator"),
                result: result.unbind(),
                iter: iter.unbind(),
            },
            Err(e) => {
                self.end(py, result.unbind(), Err(e));
                CallState::Done
            }
        }
    }

    /// Ends the call: `close()` exactly once, whatever happened while iterating, then a
    /// failure of either reported. Returns false (the call is over).
    fn end(&mut self, py: Python<'_>, result: Py<PyAny>, streamed: PyResult<()>) -> bool {
        self.state = CallState::Done;
        let result = result.bind(py);
        let closed = match result.hasattr("close") {
            Ok(true) => result.call_method0("close").map(drop),
            Ok(false) => Ok(()),
            Err(e) => Err(e),
        };
        match (streamed, closed) {
            (Err(e), _) | (Ok(()), Err(e)) => fail(py, self.start.get(), &e),
            (Ok(()), Ok(())) => {}
        }
        false
    }

    /// The client went away before the call was over: nothing more is sent, and `close()`
    /// is called (once) if the app had returned.
    pub(crate) fn abandon(&mut self, py: Python<'_>) {
        self.start.get().set_gone();
        match std::mem::replace(&mut self.state, CallState::Done) {
            CallState::Iterating { result, .. } | CallState::File { result, .. } => {
                self.end(py, result, Ok(()));
            }
            CallState::Calling { .. } | CallState::Done => {}
        }
    }
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
