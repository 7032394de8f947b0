//! [`Observed`]: the handler wrapper that sees every request the app answers. It counts each
//! in the scoreboard (status class, duration, the worker's current request), answers
//! `status_path=` itself, writes the access log line and the slow-request log line.
//!
//! It wraps the app, not the connection engine: it learns the status from the response and
//! the end from the response body, which it wraps to count bytes and to notice the last
//! frame (or the body dropped, when the client went away).
//!
//! A slow request (`slowlog=SECONDS`) is logged once, to the error log, when it has run that
//! long, whether the app is still computing its response or still streaming its body:
//!
//! ```text
//! WARN slow request: GET /report?year=2026 running for 5.0s (worker 4242; script /srv/cgi/report.cgi pid 4321)
//! ```
//!
//! An app that runs the request's code on a thread of its own (`app=wsgi`) gives a
//! [`SlowDetail`] with [`note_detail`]: the slow line then carries what it shows (the Python
//! stack), taken on a thread of its own so the connection engine never waits for it, and
//! given up after [`SLOW_DETAIL_WAIT`].

use std::future::Future;
use std::pin::Pin;
use std::sync::mpsc::{self as std_mpsc, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{header, StatusCode};
use http_body::{Frame, SizeHint};

use super::accesslog::{self, Entry};
use super::render::{self, Format};
use super::Recorder;
use crate::{Body, BoxError, Env, Handler, Request, Response};

/// The status reserved for a request whose client went away before any response: it is
/// counted and logged (as nginx's 499) but never sent.
pub const CLIENT_CLOSED: u16 = 499;

/// Wraps an app with the status page, the request counters, the access log and the slow
/// log; [`crate::run`] puts every app in one.
#[derive(Debug)]
pub struct Observed<H> {
    inner: H,
    status_path: Option<String>,
    slowlog: Option<Duration>,
    protocol: &'static str,
}

impl<H> Observed<H> {
    /// `inner` observed: `status_path=` answered at that path, `slowlog=` after that long.
    pub fn new(
        inner: H,
        status_path: Option<String>,
        slowlog: Option<Duration>,
        protocol: &'static str,
    ) -> Self {
        Self {
            inner,
            status_path,
            slowlog,
            protocol,
        }
    }
}

tokio::task_local! {
    static RUNNING: Arc<Running>;
}

/// What the app tells about a request while it runs, for the slow log.
#[derive(Default)]
struct Running {
    child: Mutex<Option<(String, u32)>>,
    detail: Mutex<Option<Arc<dyn SlowDetail>>>,
}

/// What an app that runs a request's code on a thread of its own can show about it when the
/// request is found slow (`app=wsgi`: that thread's Python stack, as php-fpm's slowlog shows
/// the PHP backtrace). The status layer knows no more of the app than this.
pub trait SlowDetail: Send + Sync {
    /// What the detail is, for the line that says it could not be taken ("Python stack").
    fn what(&self) -> &'static str;
    /// The detail, as lines to print under the slow line, each indented. Called once per
    /// slow request, on a thread of its own; it may block (for Python's GIL), and is given up
    /// on after [`SLOW_DETAIL_WAIT`].
    fn take(&self) -> String;
}

/// How long the slow log waits for an app's [`SlowDetail`] before it logs the slow line
/// without it: Python hands the GIL over within its switch interval (5 ms) to a waiting
/// thread even from a busy loop, so a second only runs out when the request's thread holds
/// the GIL inside C code; the slow line must not wait on that.
pub const SLOW_DETAIL_WAIT: Duration = Duration::from_secs(1);

/// Slow requests whose detail may wait at once to be taken: details are taken one after the
/// other on one thread (each in milliseconds), so this is only reached when that thread is
/// stuck (a request's thread holds the GIL in C code); the ones beyond it are logged at once,
/// without their detail, and the queue never grows.
pub const MAX_DETAILS_WAITING: usize = 16;

/// Whether the request being handled is watched by `slowlog=`: an app asks before it builds
/// a [`SlowDetail`], so that without `slowlog=` a request costs nothing for it.
pub fn slow_log_watches() -> bool {
    RUNNING.try_with(|_| ()).is_ok()
}

/// Called by an app that runs the request's code on a thread of its own (`app=wsgi`): the
/// slow log shows `detail` under its line. Does nothing outside a request or without
/// `slowlog=`.
pub fn note_detail(detail: Arc<dyn SlowDetail>) {
    let _ = RUNNING.try_with(|r| {
        if let Ok(mut slot) = r.detail.lock() {
            *slot = Some(detail);
        }
    });
}

/// Called by an app that runs a program for the request (`app=cgi`): the slow log names the
/// script and its pid. Does nothing outside a request or without `slowlog=`.
pub fn note_child(script: &str, pid: u32) {
    let _ = RUNNING.try_with(|r| {
        if let Ok(mut child) = r.child.lock() {
            *child = Some((script.to_owned(), pid));
        }
    });
}

impl<H: Handler> Handler for Observed<H> {
    async fn call(&self, req: Request) -> Result<Response, BoxError> {
        let recorder = super::recorder();
        let uri = request_target(req.uri());
        recorder.request_started(req.method().as_str().as_bytes(), uri.as_bytes());
        let done = Done {
            recorder,
            start: Instant::now(),
            protocol: self.protocol,
            status: CLIENT_CLOSED,
            bytes: 0,
            access: accesslog::get().map(|log| (log, AccessFields::of(&req, &uri))),
            finished: false,
        };
        let is_status = self
            .status_path
            .as_deref()
            .is_some_and(|p| p == req.uri().path());
        if is_status {
            let resp = status_page(req.uri().query().unwrap_or(""));
            return Ok(done.respond(resp, None));
        }
        let Some(after) = self.slowlog else {
            let resp = self.inner.call(req).await;
            return done.outcome(resp, None);
        };
        let slow = Slow {
            what: format!("{} {uri}", req.method()),
            running: Arc::new(Running::default()),
            start: done.start,
            sleep: Some(Box::pin(tokio::time::sleep(after))),
        };
        let running = Arc::clone(&slow.running);
        let call = RUNNING.scope(running, self.inner.call(req));
        tokio::pin!(call);
        let mut slow = slow;
        let resp = std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = call.as_mut().poll(cx) {
                return Poll::Ready(r);
            }
            slow.poll(cx);
            Poll::Pending
        })
        .await;
        done.outcome(resp, Some(slow))
    }
}

/// The request target as the web server sent it, for the worker's slot and the log lines:
/// a request's URI comes from `REQUEST_URI`, a path and query, which is borrowed as it is;
/// only a URI with a scheme or authority is formatted (as `Display` writes it).
fn request_target(uri: &http::Uri) -> std::borrow::Cow<'_, str> {
    match uri.path_and_query() {
        Some(pq) if uri.scheme().is_none() && uri.authority().is_none() => pq.as_str().into(),
        _ => uri.to_string().into(),
    }
}

/// The request's bookkeeping until its response body ends (or is dropped).
struct Done {
    recorder: Recorder,
    start: Instant,
    protocol: &'static str,
    status: u16,
    bytes: u64,
    access: Option<(&'static accesslog::AccessLog, AccessFields)>,
    finished: bool,
}

impl Done {
    fn outcome(
        mut self,
        resp: Result<Response, BoxError>,
        slow: Option<Slow>,
    ) -> Result<Response, BoxError> {
        match resp {
            Ok(resp) => Ok(self.respond(resp, slow)),
            Err(e) => {
                // The driver answers an error with a 500.
                self.status = StatusCode::INTERNAL_SERVER_ERROR.as_u16();
                Err(e)
            }
        }
    }

    fn respond(mut self, resp: Response, slow: Option<Slow>) -> Response {
        self.status = resp.status().as_u16();
        self.recorder.responding();
        resp.map(|body| {
            Body::new(Counted {
                body,
                done: Some(self),
                slow,
            })
        })
    }

    fn finish(&mut self) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        if self.status == CLIENT_CLOSED && std::thread::panicking() {
            // The app panicked: the driver answers 500.
            self.status = StatusCode::INTERNAL_SERVER_ERROR.as_u16();
        }
        let elapsed = self.start.elapsed();
        self.recorder
            .request_finished(self.protocol, self.status, elapsed);
        if let Some((log, f)) = &self.access {
            log.log(&Entry {
                remote_addr: &f.remote_addr,
                remote_user: &f.remote_user,
                method: &f.method,
                uri: &f.uri,
                http_version: &f.http_version,
                status: self.status,
                bytes: self.bytes,
                referer: &f.referer,
                user_agent: &f.user_agent,
                duration: elapsed,
                time: SystemTime::now(),
                pid: super::pid(),
                protocol: self.protocol,
            });
        }
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The request's fields the access log needs, taken before the app gets the request.
struct AccessFields {
    remote_addr: String,
    remote_user: String,
    method: String,
    uri: String,
    http_version: String,
    referer: String,
    user_agent: String,
}

impl AccessFields {
    fn of(req: &Request, uri: &str) -> Self {
        let env = req.extensions().get::<Env>();
        let var = |name: &str| {
            env.and_then(|e| e.get_str(name))
                .unwrap_or_default()
                .to_owned()
        };
        let header = |name: header::HeaderName| {
            req.headers()
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default()
        };
        Self {
            remote_addr: var("REMOTE_ADDR"),
            remote_user: var("REMOTE_USER"),
            method: req.method().as_str().to_owned(),
            uri: uri.to_owned(),
            http_version: var("SERVER_PROTOCOL"),
            referer: header(header::REFERER),
            user_agent: header(header::USER_AGENT),
        }
    }
}

/// The slow-log timer of one request.
struct Slow {
    what: String,
    running: Arc<Running>,
    start: Instant,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Slow {
    /// Logs the request once its time has come (once).
    fn poll(&mut self, cx: &mut Context<'_>) {
        let Some(sleep) = self.sleep.as_mut() else {
            return;
        };
        if sleep.as_mut().poll(cx).is_pending() {
            return;
        }
        self.sleep = None;
        let child = self
            .running
            .child
            .lock()
            .ok()
            .and_then(|c| c.clone())
            .map(|(script, pid)| format!("; script {script} pid {pid}"))
            .unwrap_or_default();
        let line = format!(
            "slow request: {} running for {:.1}s (worker {}{child})",
            self.what,
            self.start.elapsed().as_secs_f64(),
            super::pid()
        );
        match self.running.detail.lock().ok().and_then(|d| d.clone()) {
            Some(detail) => log_with_detail(line, detail),
            None => tracing::warn!("{line}"),
        }
    }
}

/// Logs `line` with the app's detail under it, taken on the detail thread while a task of the
/// runtime waits at most [`SLOW_DETAIL_WAIT`] for it: the connection engine goes on serving
/// meanwhile, and the line is logged (once) whatever the detail does.
fn log_with_detail(line: String, detail: Arc<dyn SlowDetail>) {
    let what = detail.what();
    let rx = match queue_detail(detail) {
        Ok(rx) => rx,
        Err(why) => {
            tracing::warn!("{line}\n  ({what} not taken: {why})");
            return;
        }
    };
    tokio::spawn(async move {
        match tokio::time::timeout(SLOW_DETAIL_WAIT, rx).await {
            Ok(Ok(text)) => tracing::warn!("{line}\n{text}"),
            Ok(Err(_)) => tracing::warn!("{line}\n  ({what} not taken: taking it panicked)"),
            Err(_) => tracing::warn!(
                "{line}\n  ({what} not taken within {:.1}s: the request's thread does not let go of it)",
                SLOW_DETAIL_WAIT.as_secs_f64()
            ),
        }
    });
}

/// Queues `detail` for the detail thread, whose answer `rx` gets; refused, saying why, when
/// [`MAX_DETAILS_WAITING`] details already wait.
fn queue_detail(
    detail: Arc<dyn SlowDetail>,
) -> Result<tokio::sync::oneshot::Receiver<String>, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    match detail_queue() {
        None => Err("cannot start its thread".to_owned()),
        Some(queue) => queue
            .try_send((detail, tx))
            .map(|()| rx)
            .map_err(|e| match e {
                TrySendError::Full(_) => {
                    format!("{MAX_DETAILS_WAITING} slow requests already wait for theirs")
                }
                TrySendError::Disconnected(_) => "its thread is gone".to_owned(),
            }),
    }
}

/// A detail to take, and where its text goes.
type DetailJob = (Arc<dyn SlowDetail>, tokio::sync::oneshot::Sender<String>);

/// The queue of the thread that takes details, started with the first slow request that has
/// one (in the serving process: a prefork master serves no request).
fn detail_queue() -> Option<&'static SyncSender<DetailJob>> {
    static QUEUE: OnceLock<Option<SyncSender<DetailJob>>> = OnceLock::new();
    QUEUE
        .get_or_init(|| {
            let (tx, rx) = std_mpsc::sync_channel::<DetailJob>(MAX_DETAILS_WAITING);
            std::thread::Builder::new()
                .name("slowlog-detail".into())
                .spawn(move || {
                    for (detail, reply) in rx {
                        if reply.is_closed() {
                            // Given up on while it waited behind a stuck one.
                            continue;
                        }
                        // A panic drops `reply`: the line says so.
                        let taken = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            detail.take()
                        }));
                        if let Ok(text) = taken {
                            let _ = reply.send(text);
                        }
                    }
                })
                .ok()
                .map(|_| tx)
        })
        .as_ref()
}

/// A response body that counts its bytes and finishes the request's bookkeeping at its end.
struct Counted {
    body: Body,
    done: Option<Done>,
    slow: Option<Slow>,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(slow) = this.slow.as_mut() {
            slow.poll(cx);
        }
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(done)) = (frame.data_ref(), this.done.as_mut()) {
                    done.bytes += data.len() as u64;
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                this.slow = None;
                if let Some(mut done) = this.done.take() {
                    done.finish();
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The `status_path=` page: text by default, `?json`, `?openmetrics` (or `?prometheus`),
/// `?full` for the per-worker table.
fn status_page(query: &str) -> Response {
    let has = |word: &str| query.split('&').any(|q| q == word);
    let format = if has("json") {
        Format::Json
    } else if has("openmetrics") {
        Format::OpenMetrics
    } else if has("prometheus") {
        Format::Prometheus
    } else {
        Format::Text
    };
    let Some(snap) = super::snapshot() else {
        return crate::response::plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "no status scoreboard in this process",
        );
    };
    let mut resp = Response::new(Body::from(render::render(&snap, format, has("full"))));
    if let Ok(v) = header::HeaderValue::from_str(format.content_type()) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    // Figures of this moment: no cache may keep them.
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::{
        queue_detail, request_target, slow_log_watches, Observed, SlowDetail, MAX_DETAILS_WAITING,
    };
    use crate::{Body, BoxError, Handler, Request, Response};

    /// A detail whose taking says it started, then waits until `release` is sent (or
    /// dropped): the detail thread stuck, as behind a request that holds the GIL in C code.
    struct Stuck {
        started: std::sync::mpsc::SyncSender<()>,
        release: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
    }
    impl SlowDetail for Stuck {
        fn what(&self) -> &'static str {
            "stuck"
        }
        fn take(&self) -> String {
            let _ = self.started.send(());
            let _ = self.release.lock().unwrap().recv();
            "stuck".into()
        }
    }

    struct Quick;
    impl SlowDetail for Quick {
        fn what(&self) -> &'static str {
            "quick"
        }
        fn take(&self) -> String {
            "quick".into()
        }
    }

    #[test]
    fn details_wait_up_to_their_bound_behind_a_stuck_one_and_the_next_is_refused() {
        let (started_tx, started) = std::sync::mpsc::sync_channel(1);
        let (release, release_rx) = std::sync::mpsc::channel();
        let stuck = Arc::new(Stuck {
            started: started_tx,
            release: std::sync::Mutex::new(release_rx),
        });
        let stuck_rx = queue_detail(stuck).unwrap();
        // The detail thread holds the stuck one: the queue behind it is empty.
        started.recv_timeout(Duration::from_secs(10)).unwrap();
        let waiting: Vec<_> = (0..MAX_DETAILS_WAITING)
            .map(|i| queue_detail(Arc::new(Quick)).unwrap_or_else(|e| panic!("detail {i}: {e}")))
            .collect();
        let refused = queue_detail(Arc::new(Quick)).unwrap_err();
        assert_eq!(
            refused,
            format!("{MAX_DETAILS_WAITING} slow requests already wait for theirs")
        );
        drop(release);
        assert_eq!(stuck_rx.blocking_recv().unwrap(), "stuck");
        for rx in waiting {
            assert_eq!(rx.blocking_recv().unwrap(), "quick");
        }
    }

    /// Records whether the slow log watched the request it handled.
    struct Watched(Arc<AtomicBool>);
    impl Handler for Watched {
        async fn call(&self, _req: Request) -> Result<Response, BoxError> {
            self.0.store(slow_log_watches(), Ordering::SeqCst);
            Ok(Response::new(Body::empty()))
        }
    }

    #[tokio::test]
    async fn only_a_request_under_slowlog_is_watched() {
        assert!(!slow_log_watches(), "outside any request");
        for (slowlog, watched) in [(None, false), (Some(Duration::from_secs(5)), true)] {
            let seen = Arc::new(AtomicBool::new(!watched));
            let observed = Observed::new(Watched(Arc::clone(&seen)), None, slowlog, "fcgi");
            observed.call(Request::new(Body::empty())).await.unwrap();
            assert_eq!(seen.load(Ordering::SeqCst), watched, "slowlog={slowlog:?}");
        }
    }

    #[test]
    fn the_request_target_is_what_the_uri_displays() {
        for uri in [
            "/",
            "/caf%C3%A9?x=1&y",
            "/a/b?",
            "*",
            "http://example.com/p?q",
            "http://example.com",
        ] {
            let parsed: http::Uri = uri.parse().unwrap();
            assert_eq!(request_target(&parsed), parsed.to_string(), "{uri}");
        }
        // Origin-form, as request::build makes every request's URI: borrowed, not formatted.
        let parsed: http::Uri = "/p?q".parse().unwrap();
        assert!(matches!(
            request_target(&parsed),
            std::borrow::Cow::Borrowed("/p?q")
        ));
    }
}
