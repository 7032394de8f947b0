//! PEP 3333 tests against the real interpreter: each app (tests/data/wsgi/testapps.py) runs
//! wrapped in `wsgiref.validate.validator`, so both sides of the interface are checked.

use std::path::PathBuf;
use std::time::Duration;

use appserver_proto::params::ParamsBuilder;
use appserver_proto::Limits;
use bytes::Bytes;
use http_body_util::BodyExt;

use super::*;
use crate::body::{self, BodySender};
use crate::request::{build, Gateway, RequestOptions};

const GW: Gateway = Gateway {
    protocol: "fcgi",
    method: "threaded",
};

fn apps_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/wsgi"))
}

/// A started handler serving `testapps:<name>` with `threads` Python threads.
fn app(name: &str, threads: usize) -> Wsgi {
    make(name, threads, false)
}

/// The same as prefork serves it: a request without a body runs on the caller's thread.
fn inline_app(name: &str) -> Wsgi {
    make(name, 1, true)
}

/// `testapps:<name>` both ways a request without a body may run: on a Python thread, and on
/// the connection's thread; with a label for failure messages.
fn both(name: &str) -> [(&'static str, Wsgi); 2] {
    [
        ("python thread", app(name, 1)),
        ("inline", inline_app(name)),
    ]
}

fn make(name: &str, threads: usize, inline: bool) -> Wsgi {
    let w = Wsgi::new(
        interp::Settings {
            module: "testapps".into(),
            callable: name.into(),
            pythonpath: vec![apps_dir()],
            virtualenv: None,
        },
        false,
        false,
        Flags {
            multithread: threads > 1,
            multiprocess: inline,
        },
        threads,
        inline,
    );
    // The interpreter is process-wide: the first test to get here starts it.
    static START: Mutex<()> = Mutex::new(());
    let _one_at_a_time = lock(&START);
    w.start().unwrap();
    w
}

fn request(pairs: &[(&str, &[u8])], body: Body) -> Request {
    let mut b = ParamsBuilder::new(Limits::default());
    for (n, v) in pairs {
        b.push(n.as_bytes(), v).unwrap();
    }
    build(b.finish(), body, &RequestOptions::default(), GW).unwrap()
}

fn get(query: &str) -> Request {
    request(
        &[
            ("REQUEST_METHOD", b"GET"),
            ("REQUEST_URI", format!("/x?{query}").as_bytes()),
            ("QUERY_STRING", query.as_bytes()),
            ("SERVER_NAME", b"localhost"),
            ("SERVER_PORT", b"80"),
            ("SERVER_PROTOCOL", b"HTTP/1.1"),
        ],
        Body::empty(),
    )
}

async fn text(resp: Response) -> String {
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// A Python expression's value as a string, evaluated in module `testapps`.
fn py_eval(expr: &str) -> String {
    Python::attach(|py| {
        let m = py.import("testapps").unwrap();
        let globals = m.dict();
        let code = std::ffi::CString::new(expr).unwrap();
        py.eval(&code, Some(&globals), None)
            .unwrap()
            .str()
            .unwrap()
            .to_string()
    })
}

#[tokio::test]
async fn environ_is_a_dict_of_native_strings_with_the_wsgi_keys() {
    let w = app("environ_app", 2);
    let req = request(
        &[
            ("REQUEST_METHOD", b"POST"),
            ("REQUEST_URI", b"/app/caf%C3%A9?q=1"),
            ("QUERY_STRING", b"q=1"),
            ("SCRIPT_NAME", b"/app"),
            ("PATH_INFO", b"/caf\xc3\xa9"),
            ("CONTENT_LENGTH", b"0"),
            ("HTTP_CONTENT_LENGTH", b"0"),
            ("HTTP_CONTENT_TYPE", b"text/plain"),
            ("CONTENT_TYPE", b""),
            ("HTTP_X_RAW", b"\xff\x80"),
            ("SERVER_NAME", b"example.com"),
            ("SERVER_PORT", b"443"),
            ("HTTPS", b"on"),
        ],
        Body::empty(),
    );
    let resp = w.call(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = text(resp).await;
    let env: Vec<(String, String)> = Python::attach(|py| {
        let json = py.import("json").unwrap();
        let d = json.call_method1("loads", (body.as_str(),)).unwrap();
        let d = d.cast_into::<pyo3::types::PyDict>().unwrap();
        d.iter()
            .map(|(k, v)| (k.to_string(), v.str().unwrap().to_string()))
            .collect()
    });
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(get("_dict"), Some("True"));
    // Every key, and every CGI variable's value, is a native str.
    assert_eq!(get("_types"), Some("['str']"));
    // latin-1: every byte is the code point of the same value.
    assert_eq!(get("HTTP_X_RAW"), Some("\u{ff}\u{80}"));
    assert_eq!(get("PATH_INFO"), Some("/caf\u{c3}\u{a9}"));
    assert_eq!(get("SCRIPT_NAME"), Some("/app"));
    assert_eq!(get("HTTP_CONTENT_LENGTH"), None);
    assert_eq!(get("HTTP_CONTENT_TYPE"), None);
    assert_eq!(get("CONTENT_TYPE"), None);
    assert_eq!(get("CONTENT_LENGTH"), Some("0"));
    assert_eq!(get("wsgi.url_scheme"), Some("https"));
    assert_eq!(get("wsgi.version"), Some("[1, 0]"));
    assert_eq!(get("wsgi.multithread"), Some("True"));
    assert_eq!(get("wsgi.multiprocess"), Some("False"));
    assert_eq!(get("wsgi.run_once"), Some("False"));
    assert_eq!(get("wsgi.input_terminated"), Some("True"));
    // No Python SIGINT handler, even though the app imported `signal`.
    assert_eq!(get("_sigint"), Some("<Handlers.SIG_DFL: 0>"));
}

#[tokio::test]
async fn one_python_thread_serves_request_after_request() {
    let w = app("environ_app", 1);
    let mut idents = Vec::new();
    for _ in 0..3 {
        let body = text(w.call(get("")).await.unwrap()).await;
        let at = body.find("\"_ident\": ").unwrap() + 10;
        let end = body[at..].find([',', '}']).unwrap();
        idents.push(body[at..at + end].to_owned());
    }
    assert!(idents.windows(2).all(|w| w[0] == w[1]), "{idents:?}");
}

/// A POST whose body arrives in `chunks` through the driver's bounded channel.
async fn post(w: &Wsgi, how: &str, chunks: &[&[u8]]) -> String {
    let total: usize = chunks.iter().map(|c| c.len()).sum();
    let (tx, body): (BodySender, Body) = body::channel(Some(total as u64));
    let req = request(
        &[
            ("REQUEST_METHOD", b"POST"),
            ("REQUEST_URI", format!("/?{how}").as_bytes()),
            ("QUERY_STRING", how.as_bytes()),
            ("CONTENT_LENGTH", total.to_string().as_bytes()),
            ("SERVER_NAME", b"localhost"),
            ("SERVER_PORT", b"80"),
        ],
        body,
    );
    let chunks: Vec<Bytes> = chunks.iter().map(|c| Bytes::copy_from_slice(c)).collect();
    let feeder = tokio::spawn(async move {
        for c in chunks {
            if tx.send(Ok(vec![c])).await.is_err() {
                break;
            }
        }
    });
    let resp = w.call(req).await.unwrap();
    let out = text(resp).await;
    feeder.await.unwrap();
    out
}

#[tokio::test]
async fn wsgi_input_read_readline_readlines_and_iteration() {
    let w = app("input_app", 1);
    let chunks: &[&[u8]] = &[b"ab\ncd", b"e\n", b"", b"fgh\nij"];
    assert_eq!(post(&w, "read", chunks).await, r#"["ab\ncde\nfgh\nij"]"#);
    assert_eq!(
        post(&w, "read3", chunks).await,
        r#"["ab\n", "cde", "\nfg", "h\ni", "j"]"#
    );
    let lines = r#"["ab\n", "cde\n", "fgh\n", "ij"]"#;
    assert_eq!(post(&w, "readline", chunks).await, lines);
    assert_eq!(post(&w, "readlines", chunks).await, lines);
    assert_eq!(post(&w, "iter", chunks).await, lines);
    assert_eq!(
        post(&w, "readline2", chunks).await,
        r#"["ab", "\n", "cd", "e\n", "fg", "h\n", "ij"]"#
    );
}

#[tokio::test]
async fn a_truncated_body_raises_in_the_app_and_answers_500() {
    let w = app("input_app", 1);
    let (tx, body) = body::channel(Some(10));
    let req = request(
        &[
            ("REQUEST_METHOD", b"POST"),
            ("QUERY_STRING", b"read"),
            ("CONTENT_LENGTH", b"10"),
        ],
        body,
    );
    tx.send(Ok(vec![Bytes::from_static(b"abc")])).await.unwrap();
    tx.send(Err(crate::body::BodyError::Truncated { received: 3 }))
        .await
        .unwrap();
    let err = w.call(req).await.unwrap_err().to_string();
    assert!(
        err.contains("OSError") && err.contains("truncated"),
        "{err}"
    );
}

#[tokio::test]
async fn start_response_may_come_during_the_first_iteration() {
    for (how, w) in both("late_start") {
        let resp = w.call(get("")).await.unwrap();
        assert_eq!(resp.status(), 201, "{how}");
        assert_eq!(text(resp).await, "late", "{how}");
    }
}

#[tokio::test]
async fn the_head_is_held_until_the_first_non_empty_chunk() {
    for (how, w) in both("held_head") {
        let resp = w.call(get("")).await.unwrap();
        assert_eq!(resp.status(), 503, "{how}");
        assert_eq!(text(resp).await, "sorry", "{how}");
    }
}

#[tokio::test]
async fn exc_info_after_the_head_is_re_raised_and_aborts_the_response() {
    for (how, w) in both("exc_after_head") {
        let resp = w.call(get("")).await.unwrap();
        assert_eq!(resp.status(), 200, "{how}");
        let mut body = resp.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "partial", "{how}");
        let err = body.frame().await.unwrap().unwrap_err().to_string();
        assert!(err.contains("ValueError: boom after head"), "{how}: {err}");
    }
}

#[tokio::test]
async fn an_exception_before_the_head_is_an_error_with_the_traceback() {
    for (how, w) in both("raises") {
        let err = w.call(get("")).await.unwrap_err().to_string();
        assert!(
            err.contains("Traceback (most recent call last)"),
            "{how}: {err}"
        );
        assert!(
            err.contains("KeyError: 'no such thing in the app'"),
            "{how}: {err}"
        );
    }
}

#[tokio::test]
async fn write_callable_sends_before_the_iterable() {
    for (how, w) in both("write_app") {
        let resp = w.call(get("")).await.unwrap();
        assert_eq!(text(resp).await, "one,two,three", "{how}");
    }
}

/// Waits until the Python expression `expr` reads `value` (close() runs on the Python
/// thread after the response's end went out), failing after a deadline.
async fn wait_for_py(expr: &str, value: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = py_eval(expr);
        if now == value {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{expr} is {now}, expected {value}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn close_is_called_exactly_once_on_success_error_and_abort() {
    for (how, w) in both("counted") {
        // Keys of their own per way, in the app's shared counters.
        let key = |k: &str| format!("{k}-{}", how.replace(' ', "-"));
        let ok = w
            .call(get(&format!("key={}&n=3", key("ok"))))
            .await
            .unwrap();
        assert_eq!(text(ok).await, "x".repeat(30), "{how}");
        wait_for_py(&format!("closes['{}']", key("ok")), "1").await;

        let fail = format!("key={}&n=3&fail=1", key("fail"));
        let resp = w.call(get(&fail)).await.unwrap();
        assert!(resp.into_body().collect().await.is_err(), "{how}");
        wait_for_py(&format!("closes['{}']", key("fail")), "1").await;

        // The client goes away after the first chunk: the app is stopped and closed, not
        // run to the end.
        let abort = format!("key={}&n=1000&size=65536", key("abort"));
        let resp = w.call(get(&abort)).await.unwrap();
        let mut body = resp.into_body();
        body.frame().await.unwrap().unwrap();
        drop(body);
        wait_for_py(&format!("closes['{}']", key("abort")), "1").await;
        let produced: usize = py_eval(&format!("produced['{}']", key("abort")))
            .parse()
            .unwrap();
        assert!(
            produced < 20,
            "{how}: the app ran on after the client left: {produced} chunks"
        );
        assert_eq!(
            py_eval(&format!("closes['{}']", key("abort"))),
            "1",
            "{how}"
        );
    }
}

#[tokio::test]
async fn a_slow_client_holds_the_app_back_with_bounded_chunks() {
    for (how, w) in both("counted") {
        let key = format!("slow-{}", how.replace(' ', "-"));
        let resp = w
            .call(get(&format!("key={key}&n=1000&size=1024")))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let produced: usize = py_eval(&format!("produced['{key}']")).parse().unwrap();
        // The channel's chunks plus the one the thread holds while it waits, plus the head;
        // inline, the app has made only the chunk that let the head go.
        let bound = if how == "inline" {
            1
        } else {
            RESPONSE_CHANNEL_CHUNKS + 2
        };
        assert!(
            produced <= bound,
            "{how}: the app ran ahead of the client: {produced} chunks"
        );
        assert_eq!(text(resp).await.len(), 1000 * 1024, "{how}");
    }
}

#[tokio::test]
async fn content_length_is_enforced_both_ways() {
    for (how, short) in both("short_length") {
        let resp = short.call(get("")).await.unwrap();
        let err = resp.into_body().collect().await.unwrap_err().to_string();
        assert!(
            err.contains("Content-Length: 10") && err.contains("after 5 bytes"),
            "{how}: {err}"
        );
    }
    for (how, long) in both("long_length") {
        let resp = long.call(get("")).await.unwrap();
        assert_eq!(text(resp).await, "123", "{how}");
    }
}

#[tokio::test]
async fn header_values_must_be_latin1() {
    for (how, w) in both("bad_header") {
        let err = w.call(get("")).await.unwrap_err().to_string();
        assert!(err.contains("not latin-1"), "{how}: {err}");
    }
    for (how, w) in both("latin1_header") {
        let resp = w.call(get("")).await.unwrap();
        assert_eq!(resp.headers()["x-name"].as_bytes(), b"caf\xe9", "{how}");
    }
}

#[tokio::test]
async fn file_wrapper_streams_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.bin");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    for (how, w) in both("file_app") {
        let resp = w.call(get(path.to_str().unwrap())).await.unwrap();
        let got = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(
            got == data,
            "{how}: file content differs ({} bytes)",
            got.len()
        );
    }
}

#[tokio::test]
async fn threads_serve_requests_concurrently_up_to_the_limit() {
    let w = app("counted", 2);
    // Two slow requests (1 s each) at once finish in about the time of one, not two.
    let started = std::time::Instant::now();
    let a = w.call(get("key=c1&n=2&delay=0.5"));
    let b = w.call(get("key=c2&n=2&delay=0.5"));
    let (a, b) = tokio::join!(a, b);
    let (a, b) = tokio::join!(text(a.unwrap()), text(b.unwrap()));
    assert_eq!((a.len(), b.len()), (20, 20));
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1700),
        "not concurrent: {took:?}"
    );
}

#[tokio::test]
async fn inline_a_request_without_a_body_runs_on_the_callers_thread_one_with_a_body_does_not() {
    let w = inline_app("thread_ident");
    let here = py_eval("__import__('threading').get_ident()");
    let resp = w.call(get("")).await.unwrap();
    assert_eq!(
        text(resp).await,
        here,
        "a GET runs on the connection's thread"
    );
    let there = post(&w, "", &[b"some", b"body"]).await;
    assert_ne!(there, here, "a POST with a body runs on a Python thread");
    // The thread-path handler never runs the app on the caller's thread.
    let w = app("thread_ident", 1);
    assert_ne!(text(w.call(get("")).await.unwrap()).await, here);
}

#[tokio::test]
async fn inline_write_holds_up_to_its_bound_then_the_app_moves_to_a_python_thread() {
    let w = inline_app("big_write");
    let at_bound = format!("{}", response::MAX_HELD_WRITE);
    let resp = w.call(get(&at_bound)).await.unwrap();
    assert_eq!(text(resp).await.len(), response::MAX_HELD_WRITE);

    let w = inline_app("big_write");
    let over = format!("{}", response::MAX_HELD_WRITE + 1);
    let err = w.call(get(&over)).await.unwrap_err().to_string();
    assert!(
        err.contains("OSError") && err.contains("write() would hold more than"),
        "{err}"
    );
    // The app used write(): from now on it runs on a Python thread, where write() streams.
    let resp = w.call(get(&over)).await.unwrap();
    assert_eq!(text(resp).await.len(), response::MAX_HELD_WRITE + 1);
}

/// Polls `body` once without a waker to speak of: `Some(frame)`, `None` at its end, or
/// "pending".
fn poll_once(body: &mut Body) -> Result<Option<Bytes>, &'static str> {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match http_body::Body::poll_frame(Pin::new(body), &mut cx) {
        Poll::Ready(Some(Ok(frame))) => Ok(Some(frame.into_data().unwrap())),
        Poll::Ready(None) => Ok(None),
        Poll::Ready(Some(Err(e))) => panic!("{e}"),
        Poll::Pending => Err("pending"),
    }
}

#[tokio::test]
async fn inline_a_generator_yields_before_each_step_and_a_list_does_not() {
    // A generator's next chunk may take its time: the body yields first, so the driver
    // writes what it holds.
    let w = inline_app("counted");
    let resp = w.call(get("key=yield&n=2")).await.unwrap();
    let mut body = resp.into_body();
    assert_eq!(poll_once(&mut body), Ok(Some(Bytes::from("x".repeat(10)))));
    assert_eq!(poll_once(&mut body), Err("pending"));
    assert_eq!(
        py_eval("produced['yield']"),
        "1",
        "no step taken while yielding"
    );
    assert_eq!(poll_once(&mut body), Ok(Some(Bytes::from("x".repeat(10)))));
    assert_eq!(poll_once(&mut body), Err("pending"));
    assert_eq!(poll_once(&mut body), Ok(None));

    // A list runs no app code: its chunks and its end come without a yield, so a short
    // response goes out in one write.
    let w = inline_app("plain_list");
    let mut body = w.call(get("")).await.unwrap().into_body();
    assert_eq!(poll_once(&mut body), Ok(Some(Bytes::from("a"))));
    assert_eq!(poll_once(&mut body), Ok(Some(Bytes::from("b"))));
    assert_eq!(poll_once(&mut body), Ok(None));
}

/// The slow log's Python stack of a Python thread held `depth` calls deep: the frames it
/// shows and the outer frames it says it left out.
fn stack_at_depth(depth: usize) -> (usize, usize, String) {
    let _started = app("hello", 1);
    Python::attach(|py| {
        // The recursion limit above the depth: Python's default is 1000 (pure-Python calls
        // use no C stack, so the thread's stack is not the bound).
        let code = std::ffi::CString::new(format!(
            "import sys, threading, _thread\n\
             sys.setrecursionlimit(max(sys.getrecursionlimit(), {depth} + 1000))\n\
             ready = threading.Event()\n\
             release = threading.Event()\n\
             seen = {{}}\n\
             def rec(n):\n    \
                 if n == 0:\n        \
                     seen['ident'] = _thread.get_ident()\n        \
                     ready.set()\n        \
                     release.wait()\n        \
                     return\n    \
                 rec(n - 1)\n\
             t = threading.Thread(target=rec, args=({depth},))\n\
             t.start()\n\
             ready.wait()\n"
        ))
        .unwrap();
        let globals = pyo3::types::PyDict::new(py);
        py.run(&code, Some(&globals), None).unwrap();
        let get = |name: &str| globals.get_item(name).unwrap().unwrap();
        let ident: u64 = get("seen").get_item("ident").unwrap().extract().unwrap();
        let on = stack::RunningOn::default();
        on.start(py, ident);
        let text = crate::status::layer::SlowDetail::take(&stack::PythonStack(on));
        get("release").call_method0("set").unwrap();
        get("t").call_method0("join").unwrap();
        let shown = text.matches("  File ").count();
        let left_out = text
            .split("... ")
            .nth(1)
            .map(|rest| rest.trim_start_matches("at least "))
            .and_then(|rest| rest.split(' ').next())
            .map_or(0, |n| n.parse().unwrap());
        assert!(text.contains("in rec"), "{text}");
        (shown, left_out, text)
    })
}

#[tokio::test]
async fn the_slow_logs_python_stack_shows_max_stack_frames_and_counts_the_rest() {
    // The frames a thread has beyond rec's own (threading's bootstrap, Event.wait).
    let (base, left_out, text) = stack_at_depth(0);
    assert_eq!(left_out, 0, "{text}");
    let at_limit = stack::MAX_STACK_FRAMES - base;
    let (shown, left_out, text) = stack_at_depth(at_limit);
    assert_eq!((shown, left_out), (stack::MAX_STACK_FRAMES, 0), "{text}");
    let (shown, left_out, text) = stack_at_depth(at_limit + 1);
    assert_eq!((shown, left_out), (stack::MAX_STACK_FRAMES, 1), "{text}");
    // The innermost frames are the ones kept: the last is where the thread waits.
    assert!(text.trim_end().ends_with("waiter.acquire()"), "{text}");
    // Counting stops at MAX_COUNTED_DEPTH: exact up to there, "at least" beyond.
    let head = |text: &str| text.lines().take(2).collect::<Vec<_>>().join("\n");
    let deepest = stack::MAX_COUNTED_DEPTH - base;
    let (_, left_out, text) = stack_at_depth(deepest);
    let counted = stack::MAX_COUNTED_DEPTH - stack::MAX_STACK_FRAMES;
    assert_eq!(left_out, counted, "{}", head(&text));
    assert!(!text.contains("at least"), "{}", head(&text));
    let (_, left_out, text) = stack_at_depth(deepest + 1);
    assert_eq!(left_out, counted, "{}", head(&text));
    assert!(
        text.contains(&format!("... at least {counted} outer frames left out")),
        "{}",
        head(&text)
    );
}
