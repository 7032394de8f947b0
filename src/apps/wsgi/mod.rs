//! `app=wsgi`: a Python WSGI app (Django's `mysite.wsgi`) in an embedded interpreter, PEP
//! 3333 exactly (cargo feature `wsgi`).
//!
//! [`Wsgi`] is a plain [`Handler`]: the driver gives it a request, it hands the request to a
//! Python thread of its pool (or, in a prefork worker, runs it on its own thread) and streams
//! back what the app produces. Python runs only
//! on those threads, each attached to the interpreter once for its life (so thread-locals
//! such as Django's database connections survive between requests) and releasing the GIL
//! around every wait: for a job, for a request-body chunk, for room in the response channel.
//!
//! ```text
//! driver ─▶ Wsgi::call ──Job──▶ Python thread: environ, app(environ, start_response)
//!            ▲   (async)            │ wsgi.input ◀── request Body (bounded channel)
//!            └──── Out::Head/Data/End/Fail ◀─┘  (bounded channel, GIL released while full)
//! ```
//!
//! - `environ`: the `environ` dict.
//! - `input`: `wsgi.input`, `wsgi.errors`.
//! - `response`: `start_response`, `write()`, iteration, `close()`, `wsgi.file_wrapper`.
//! - `interp`: the interpreter's life in a process (start, import, signals).
//! - `stack`: the Python stack of a slow request's thread, for `slowlog=`.
//!
//! Process models: prefork starts Python in each worker after the fork and serves one
//! request at a time per worker, as Django's prefork: a request without a body (a GET, most
//! of a site's traffic) runs on the worker's own thread (`Wsgi::call_inline`, no hand-off),
//! one with a body on the worker's one Python thread, where `wsgi.input` can wait for the
//! driver. With `worker_requests=N` above 1 a worker runs every request on up to N Python
//! threads instead, as a threaded process does. With `preload=true` the master imports the
//! app before forking, with the interpreter's fork hooks around each fork. threaded runs
//! every request on up to `maxchildren` Python threads, started as requests need them.

mod environ;
mod input;
mod interp;
mod response;
mod stack;

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;
use pyo3::prelude::*;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use self::environ::{Flags, Vars};
use self::response::{AppCall, Head, Out, Sink, StartResponse};
use self::stack::{PythonStack, RunningOn};
use crate::config::{Config, Method};
use crate::process::hooks::ProcessHooks;
use crate::process::lend;
use crate::response::ReasonPhrase;
use crate::{Body, BoxError, Handler, Request, Response};

/// How many response chunks may wait between a Python thread and the connection: with the
/// app's chunks (Django's default 8 KiB, file chunks 64 KiB) this pins well under 1 MiB per
/// request, and a Python thread blocks (GIL released) rather than run ahead of a slow client.
const RESPONSE_CHANNEL_CHUNKS: usize = 4;

/// Stack of each Python thread: Python code recurses on the C stack; 8 MiB is what the main
/// thread gets on Linux, so an app behaves as under `python3 manage.py runserver`.
const PYTHON_THREAD_STACK: usize = 8 * 1024 * 1024;

/// The `app=wsgi` handler.
#[derive(Clone)]
pub struct Wsgi {
    inner: Arc<Inner>,
}

struct Inner {
    settings: interp::Settings,
    preload: bool,
    /// `script_name=` is set: the resolved `SCRIPT_NAME` is that prefix.
    forced_script_name: bool,
    flags: Flags,
    /// Python threads this process may run: `maxchildren` (threaded), `worker_requests`
    /// (prefork, 1 by default).
    threads: usize,
    /// A request without a body may run on the connection's own thread (see
    /// [`Wsgi::call_inline`]): prefork with one request per worker, without
    /// `request_timeout=`.
    inline: bool,
    /// The app called `write()` while running on the connection's thread: its requests run
    /// on a Python thread from then on (see [`response::MAX_HELD_WRITE`]).
    write_seen: Arc<AtomicBool>,
    /// The app's callable, once imported in this process (or its preloading master).
    app: OnceLock<Py<PyAny>>,
    /// The Python threads, once started in the serving process.
    pool: OnceLock<Pool>,
}

impl std::fmt::Debug for Wsgi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wsgi")
            .field("module", &self.inner.settings.module)
            .field("callable", &self.inner.settings.callable)
            .finish_non_exhaustive()
    }
}

impl Wsgi {
    /// The handler for `config`'s `module=` and process model. Nothing Python happens yet:
    /// the interpreter starts in the serving process (see [`Wsgi::hooks`]).
    pub fn from_config(config: &Config) -> Self {
        let threaded = config.method == Method::Threaded;
        // Python threads: the requests this process runs at once.
        let threads = config.requests_per_process();
        Self::new(
            interp::Settings {
                module: config.wsgi.module.clone(),
                callable: config.wsgi.callable.clone(),
                pythonpath: config.wsgi.pythonpath.clone(),
                virtualenv: config.wsgi.virtualenv.clone(),
            },
            config.wsgi.preload,
            config.script_name.is_some(),
            Flags {
                multithread: threads > 1,
                multiprocess: !threaded,
            },
            threads,
            // On the worker's own thread only where nothing else waits for it.
            !threaded && threads == 1 && config.timeouts.request.is_none(),
        )
    }

    fn new(
        settings: interp::Settings,
        preload: bool,
        forced_script_name: bool,
        flags: Flags,
        threads: usize,
        inline: bool,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings,
                preload,
                forced_script_name,
                flags,
                threads,
                inline,
                write_seen: Arc::new(AtomicBool::new(false)),
                app: OnceLock::new(),
                pool: OnceLock::new(),
            }),
        }
    }

    /// The process-model hooks that start Python where it must run; install them with
    /// [`hooks::install`](crate::process::hooks::install) before serving.
    pub fn hooks(&self) -> impl ProcessHooks {
        WsgiHooks(Arc::clone(&self.inner))
    }

    /// Starts the interpreter, imports the app and starts the pool in this process.
    fn start(&self) -> Result<(), String> {
        let inner = &self.inner;
        interp::start(&inner.settings)?;
        if inner.app.get().is_none() {
            let app = interp::load_app(&inner.settings)?;
            let _ = inner.app.set(app);
        }
        let _ = inner.pool.set(Pool::new(inner.threads));
        Ok(())
    }
}

struct WsgiHooks(Arc<Inner>);

impl ProcessHooks for WsgiHooks {
    fn preload(&self) -> Result<(), String> {
        if !self.0.preload {
            return Ok(());
        }
        interp::start(&self.0.settings)?;
        let app = interp::load_app(&self.0.settings)?;
        let _ = self.0.app.set(app);
        let threads = interp::python_threads();
        if threads > 1 {
            return Err(format!(
                "preload=true: importing {} started {} Python threads; a forked worker would \
                 not have them. Use preload=false (the app is then imported in each worker)",
                self.0.settings.module,
                threads - 1
            ));
        }
        Ok(())
    }

    fn before_fork(&self) {
        crate::sys::python::before_fork();
    }

    fn after_fork(&self, child: bool) {
        crate::sys::python::after_fork(child);
    }

    fn serve_start(&self) -> Result<(), String> {
        Wsgi {
            inner: Arc::clone(&self.0),
        }
        .start()
    }

    fn serve_stop(&self) {
        if self.0.pool.get().is_some() {
            interp::run_atexit(ATEXIT_DEADLINE);
        }
    }
}

/// How long the app's `atexit` handlers may run when a serving process exits: they close
/// connections and flush what they hold, but one that hangs must not keep a stopping
/// worker (or a reload) waiting forever.
const ATEXIT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

impl Handler for Wsgi {
    async fn call(&self, req: Request) -> Result<Response, BoxError> {
        let Some(pool) = self.inner.pool.get() else {
            return Err("the Python interpreter was not started in this process".into());
        };
        let (parts, body) = req.into_parts();
        let head_request = parts.method == http::Method::HEAD;
        let vars = environ::vars(&parts, self.inner.forced_script_name);
        let watched = crate::status::layer::slow_log_watches();
        if self.inner.inline
            && !watched
            && lend::at_home()
            && http_body::Body::is_end_stream(&body)
            && !self.inner.write_seen.load(Ordering::Relaxed)
        {
            return self.call_inline(vars, &parts, head_request);
        }
        let permit = Arc::clone(&pool.permits).acquire_owned().await?;
        // Where the app would run on this thread, its thread drives the connection instead
        // while it runs: no body chunk or response chunk then changes threads.
        let loan = if self.inner.inline && !watched {
            lend::borrow()
        } else {
            None
        };
        let (tx, mut rx) = mpsc::channel(RESPONSE_CHANNEL_CHUNKS);
        // Where the request runs, for its Python stack in the slow log: only with slowlog=.
        let running_on = watched.then(|| {
            let running_on = RunningOn::default();
            crate::status::layer::note_detail(Arc::new(PythonStack(running_on.clone())));
            running_on
        });
        let job = Job {
            vars,
            body,
            waiter: lend::waiter(),
            out: tx,
            errors: input::Errors::new(&parts),
            head_request,
            running_on,
            _loan: loan,
            _permit: permit,
        };
        pool.submit(job, &self.inner)?;
        let head = expect_head(rx.recv().await)?;
        Ok(response(head, Body::new(OutBody { rx, done: false })))
    }
}

impl Wsgi {
    /// Runs the app for a request without a body on the connection's own thread, with no
    /// hand-off to a Python thread and back: the two thread wake-ups that would cost are most
    /// of a short request's time. Only where nothing else waits for this thread: a prefork
    /// worker runs one request at a time, and its one Python thread (which requests with a
    /// body still use, as `wsgi.input` waits for the driver) is idle meanwhile. The app is
    /// called and iterated up to its first non-empty chunk here; [`InlineBody`] takes the
    /// rest a chunk at a time as the driver has room for it.
    ///
    /// Not used with `request_timeout=` or `slowlog=`: their timers run on this thread, which
    /// the app holds while it runs.
    fn call_inline(
        &self,
        vars: Vars,
        parts: &http::request::Parts,
        head_request: bool,
    ) -> Result<Response, BoxError> {
        let Some(app) = self.inner.app.get() else {
            return Err("the WSGI app was not loaded in this process".into());
        };
        Python::attach(|py| {
            let setup = || -> PyResult<_> {
                let start = Bound::new(
                    py,
                    StartResponse::new(Sink::held(Arc::clone(&self.inner.write_seen))),
                )?;
                let errors = input::Errors::new(parts);
                let environ = environ::dict(
                    py,
                    &vars,
                    self.inner.flags,
                    Bound::new(py, input::Input::ended())?.into_any(),
                    Bound::new(py, errors)?.into_any(),
                    py.get_type::<response::FileWrapper>().into_any(),
                )?;
                Ok((environ, start))
            };
            let (environ, start) = match setup() {
                Ok(made) => made,
                Err(e) => {
                    let tb = interp::traceback(py, &e);
                    return Err(format!("the WSGI app failed:\n{tb}").into());
                }
            };
            let mut call = AppCall::new(app.bind(py), environ.into_any(), &start, head_request);
            // Up to the head: the first non-empty chunk, the end, or a failure.
            let first = loop {
                match start.get().take_held() {
                    None if !call.is_done() => {
                        call.step(py);
                    }
                    first => break first,
                }
            };
            let head = expect_head(first)?;
            let body = InlineBody {
                call,
                start: start.unbind(),
                yielded: false,
            };
            Ok(response(head, Body::new(body)))
        })
    }
}

/// The response body of an app running on the connection's thread: each poll takes what the
/// app already produced, or runs it one step further (one chunk of its iterable). A client
/// that goes away drops the body, which calls the app's `close()`.
///
/// Before a step that runs app code (a generator may sleep between chunks), the body yields
/// once, so the driver writes what it holds first: a streamed chunk reaches the client when
/// it is made, not with the next one. Stepping through a list runs no app code, so a short
/// response still goes out with its end in one write.
struct InlineBody {
    call: AppCall,
    start: Py<StartResponse>,
    /// This poll follows a yield: take the step now.
    yielded: bool,
}

impl http_body::Body for InlineBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        Python::attach(|py| loop {
            match this.start.get().take_held() {
                Some(msg) => return Poll::Ready(after_head(Some(msg))),
                None if this.call.is_done() => return Poll::Ready(None),
                None if this.call.next_step_runs_app_code() && !this.yielded => {
                    this.yielded = true;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                None => {
                    this.yielded = false;
                    this.call.step(py);
                }
            }
        })
    }
}

impl Drop for InlineBody {
    fn drop(&mut self) {
        if !self.call.is_done() {
            Python::attach(|py| self.call.abandon(py));
        }
    }
}

fn response(head: Head, body: Body) -> Response {
    let mut resp = Response::new(body);
    *resp.status_mut() = head.status;
    if let Some(reason) = head.reason {
        resp.extensions_mut().insert::<ReasonPhrase>(reason);
    }
    let headers = resp.headers_mut();
    for (name, value) in head.headers {
        headers.append(name, value);
    }
    resp
}

/// The response body: the Python thread's chunks, ending at `End`; `Fail` or a thread that
/// stopped early is an error, which makes the driver abort the response.
struct OutBody {
    rx: mpsc::Receiver<Out>,
    done: bool,
}

impl http_body::Body for OutBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        self.rx.poll_recv(cx).map(|msg| {
            let frame = after_head(msg);
            // After the end or a failure, nothing more comes.
            self.done = !matches!(frame, Some(Ok(_)));
            frame
        })
    }
}

/// The app's first message: its head, or the error the driver answers 500 for (with the
/// app's traceback in the log).
fn expect_head(first: Option<Out>) -> Result<Head, BoxError> {
    match first {
        Some(Out::Head(head)) => Ok(head),
        Some(Out::Fail(tb)) => Err(format!("the WSGI app failed:\n{tb}").into()),
        Some(other) => Err(format!("the WSGI app sent {other:?} before its head").into()),
        None => Err("the WSGI app ended without a response".into()),
    }
}

/// What a message after the head is for the response body: a chunk, its end (`None`), or
/// a failure that makes the driver abort the response. No message at all (`msg` is `None`)
/// means the channel closed before the end: the Python thread stopped.
fn after_head(msg: Option<Out>) -> Option<Result<Frame<Bytes>, BoxError>> {
    match msg {
        Some(Out::Data(data)) => Some(Ok(Frame::data(data))),
        Some(Out::End) => None,
        Some(Out::Fail(tb)) => Some(Err(format!(
            "the WSGI app failed after sending its head:\n{tb}"
        )
        .into())),
        Some(Out::Head(_)) => Some(Err("the WSGI app sent a second head".into())),
        None => Some(Err(
            "the response ended early: its Python thread stopped".into()
        )),
    }
}

/// One request for a Python thread.
struct Job {
    vars: Vars,
    body: Body,
    /// How the Python thread waits for the connection's task.
    waiter: lend::Waiter,
    out: mpsc::Sender<Out>,
    /// Its `wsgi.errors`, naming the request.
    errors: input::Errors,
    head_request: bool,
    /// Where the thread that runs the request says so, for the slow log (`None` without
    /// `slowlog=`).
    running_on: Option<RunningOn>,
    /// The worker's runtime, lent to the Python thread for the time of the job: given back
    /// when the job is dropped, after its last wait.
    _loan: Option<lend::Loan>,
    /// A place among the requests the pool runs at once, given back when the job is done.
    _permit: OwnedSemaphorePermit,
}

/// The Python threads of this process and the queue that feeds them. Threads start as
/// requests need them, up to the limit, and live as long as the process.
struct Pool {
    permits: Arc<Semaphore>,
    jobs: std_mpsc::SyncSender<Job>,
    queue: Arc<Mutex<std_mpsc::Receiver<Job>>>,
    started: AtomicUsize,
    idle: Arc<AtomicUsize>,
    max: usize,
}

impl Pool {
    fn new(max: usize) -> Self {
        // The queue holds at most `max` jobs: a job is queued only with one of `max` permits.
        let (jobs, queue) = std_mpsc::sync_channel(max);
        Self {
            permits: Arc::new(Semaphore::new(max)),
            jobs,
            queue: Arc::new(Mutex::new(queue)),
            started: AtomicUsize::new(0),
            idle: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    fn submit(&self, job: Job, inner: &Arc<Inner>) -> Result<(), BoxError> {
        // Claim an idle thread for this job, or start one: counting idle threads without
        // claiming would let two requests count on the same thread and run one after the
        // other while the pool could have run both.
        let claimed = self
            .idle
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |i| i.checked_sub(1))
            .is_ok();
        if !claimed {
            let n = self.started.fetch_add(1, Ordering::SeqCst);
            if n < self.max {
                self.spawn(n, inner)?;
            } else {
                // All threads busy: the job waits in the queue for the first one free.
                self.started.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.jobs
            .try_send(job)
            .map_err(|e| format!("cannot queue the request for Python: {e}").into())
    }

    fn spawn(&self, n: usize, inner: &Arc<Inner>) -> std::io::Result<()> {
        let queue = Arc::clone(&self.queue);
        let idle = Arc::clone(&self.idle);
        let inner = Arc::clone(inner);
        std::thread::Builder::new()
            .name(format!("python-{n}"))
            .stack_size(PYTHON_THREAD_STACK)
            .spawn(move || python_thread(&inner, &queue, &idle))
            .map(drop)
    }
}

/// A Python thread: attached once, it waits for jobs with the GIL released and runs them.
fn python_thread(inner: &Inner, queue: &Mutex<std_mpsc::Receiver<Job>>, idle: &AtomicUsize) {
    Python::attach(|py| {
        let Some(app) = inner.app.get() else {
            return;
        };
        let app = app.bind(py);
        // This thread's ident, the key of `sys._current_frames()`: from `_thread`, built in
        // and loaded with the interpreter, not `threading`, whose import would add its
        // modules to every worker's memory for one number.
        let ident = py
            .import("_thread")
            .and_then(|t| t.call_method0("get_ident"))
            .and_then(|i| i.extract::<u64>())
            .unwrap_or(0);
        // The request this thread was started for is already queued for it; after each job
        // the thread counts itself idle, and whoever queues the next job claims it.
        let mut first = true;
        loop {
            if !first {
                idle.fetch_add(1, Ordering::SeqCst);
            }
            first = false;
            let job = py.detach(|| {
                let queue = lock(queue);
                queue.recv().ok()
            });
            let Some(job) = job else {
                return;
            };
            run_job(py, app, inner.flags, ident, job);
        }
    });
}

fn run_job(py: Python<'_>, app: &Bound<'_, PyAny>, flags: Flags, ident: u64, job: Job) {
    if job.out.is_closed() {
        // The client went away while the request waited for a thread.
        return;
    }
    let running_on = job.running_on.clone();
    if let Some(r) = &running_on {
        r.start(py, ident);
    }
    run_request(py, app, flags, job);
    if let Some(r) = &running_on {
        r.end(py);
    }
}

fn run_request(py: Python<'_>, app: &Bound<'_, PyAny>, flags: Flags, job: Job) {
    let setup = || -> PyResult<_> {
        let input = Bound::new(py, input::Input::new(job.body, job.waiter.clone()))?;
        let errors = Bound::new(py, job.errors)?;
        let start = Bound::new(
            py,
            response::StartResponse::new(Sink::Channel(job.out.clone(), job.waiter.clone())),
        )?;
        let wrapper = py.get_type::<response::FileWrapper>();
        let environ = environ::dict(
            py,
            &job.vars,
            flags,
            input.clone().into_any(),
            errors.into_any(),
            wrapper.into_any(),
        )?;
        Ok((input, start, environ))
    };
    match setup() {
        Ok((input, start, environ)) => {
            AppCall::new(app, environ.into_any(), &start, job.head_request).run(py);
            input.get().release();
        }
        Err(e) => {
            let tb = interp::traceback(py, &e);
            py.detach(|| {
                let _ = job.waiter.block_on(job.out.send(Out::Fail(tb)));
            });
        }
    }
}

/// Locks `m`, poisoned or not: a panic while one of these locks was held (a stream's buffer,
/// a response's state, the job queue) cannot leave what it guards half-updated in a way that
/// matters more than losing the request it belonged to, which has already failed.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
