"""WSGI apps for appserver's app=wsgi tests (src/apps/wsgi/tests.rs, tests/wsgi.rs).

Every app is wrapped in wsgiref.validate.validator, which asserts PEP 3333 on both sides:
what the server gives the app and what the app gives back.
"""
import json
import os
import signal
import sys
import threading
import time
from wsgiref.validate import validator

# Counters the tests read back through the interpreter.
closes = {}
produced = {}


def _text(start_response, body, status="200 OK", extra=()):
    data = body.encode("utf-8")
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(data)))] + list(extra))
    return [data]


@validator
def environ_app(environ, start_response):
    """The environ as JSON, with the type of each value."""
    out = {}
    for k, v in environ.items():
        if isinstance(v, str):
            out[k] = v
        elif k in ("wsgi.multithread", "wsgi.multiprocess", "wsgi.run_once",
                   "wsgi.input_terminated"):
            out[k] = v
        elif k == "wsgi.version":
            out[k] = list(v)
    out["_types"] = sorted({type(k).__name__ for k in environ} |
                           {type(environ[k]).__name__ for k in environ if k.isupper()})
    out["_dict"] = type(environ) is dict
    out["_pid"] = os.getpid()
    out["_sigint"] = repr(signal.getsignal(signal.SIGINT))
    out["_thread"] = threading.current_thread().name
    out["_ident"] = threading.get_ident()
    return _text(start_response, json.dumps(out))


@validator
def input_app(environ, start_response):
    """Reads the body the way QUERY_STRING says and echoes what it read, as JSON."""
    inp = environ["wsgi.input"]
    how = environ["QUERY_STRING"]
    if how == "read":
        parts = [inp.read(-1)]
    elif how == "read3":
        parts = []
        while True:
            b = inp.read(3)
            if not b:
                break
            parts.append(b)
    elif how == "readline":
        parts = []
        while True:
            line = inp.readline()
            if not line:
                break
            parts.append(line)
    elif how == "readline2":
        parts = []
        while True:
            line = inp.readline(2)
            if not line:
                break
            parts.append(line)
    elif how == "readlines":
        parts = inp.readlines()
    elif how == "iter":
        parts = list(inp)
    elif how == "sha":
        import hashlib
        h = hashlib.sha256()
        n = 0
        while True:
            b = inp.read(65536)
            if not b:
                break
            h.update(b)
            n += len(b)
        return _text(start_response, json.dumps({"len": n, "sha256": h.hexdigest()}))
    else:
        parts = []
    return _text(start_response, json.dumps([p.decode("latin-1") for p in parts]))


@validator
def late_start(environ, start_response):
    """start_response called during the first iteration, not before the app returns."""
    def gen():
        start_response("201 Created", [("Content-Type", "text/plain")])
        yield b""
        yield b"late"
    return gen()


@validator
def held_head(environ, start_response):
    """Changes its mind with exc_info while nothing was sent: the second head wins."""
    def gen():
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b""
        try:
            raise RuntimeError("changed my mind")
        except RuntimeError:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")],
                           sys.exc_info())
        yield b"sorry"
    return gen()


@validator
def exc_after_head(environ, start_response):
    """exc_info after data went out: start_response must re-raise."""
    def gen():
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"partial"
        try:
            raise ValueError("boom after head")
        except ValueError:
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")],
                           sys.exc_info())
        yield b"never"
    return gen()


@validator
def raises(environ, start_response):
    raise KeyError("no such thing in the app")


def write_app(environ, start_response):
    """The write() callable, then an iterable (not validated: validator forbids nothing
    here, but keep the raw callable to check write() itself)."""
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"one,")
    write(b"two,")
    return [b"three"]


write_app = validator(write_app)


class Counted:
    """An iterable whose close() calls are counted under a key."""

    def __init__(self, key, chunks, fail_at=None, delay=0):
        self.key, self.chunks, self.fail_at, self.delay = key, chunks, fail_at, delay
        closes[key] = 0
        produced[key] = 0

    def __iter__(self):
        for i, c in enumerate(self.chunks):
            if i == self.fail_at:
                raise RuntimeError("failed while iterating")
            if self.delay:
                time.sleep(self.delay)
            produced[self.key] += 1
            yield c

    def close(self):
        closes[self.key] += 1


@validator
def counted(environ, start_response):
    q = dict(p.split("=") for p in environ["QUERY_STRING"].split("&") if p)
    n = int(q.get("n", "3"))
    fail = int(q["fail"]) if "fail" in q else None
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return Counted(q["key"], [b"x" * int(q.get("size", "10"))] * n, fail,
                   float(q.get("delay", "0")))


@validator
def short_length(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "10")])
    return [b"12345"]


@validator
def long_length(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
    return [b"1234567890"]


@validator
def bad_header(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-Name", "caf\u20ac")])
    return [b"x"]


@validator
def latin1_header(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-Name", "caf\u00e9")])
    return [b"x"]


@validator
def file_app(environ, start_response):
    path = environ["QUERY_STRING"]
    f = open(path, "rb")
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return environ["wsgi.file_wrapper"](f, 4096)


@validator
def big(environ, start_response):
    """QUERY_STRING MiB of zeros in 64 KiB chunks."""
    mib = int(environ["QUERY_STRING"] or "1")
    chunk = b"\0" * 65536
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(mib * 1024 * 1024))])
    return (chunk for _ in range(mib * 16))


@validator
def hello(environ, start_response):
    return _text(start_response, "Hello, world\n")


# preload=true: what the interpreter's fork hooks do in each worker. The random module
# registered its own after_in_child handler (a reseed) when it was imported, before this one.
if os.environ.get("APPSERVER_TEST_FORK_LOG"):
    import random

    def _after_fork():
        with open(os.environ["APPSERVER_TEST_FORK_LOG"], "a") as log:
            log.write(f"{os.getpid()} {random.random()}\n")

    os.register_at_fork(after_in_child=_after_fork)

# preload=true must refuse an app whose import starts a thread.
if os.environ.get("APPSERVER_TEST_IMPORT_THREAD"):
    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()

if os.environ.get("APPSERVER_TEST_IMPORT_FAILS"):
    raise ImportError("this app cannot be imported (on purpose)")


@validator
def crash(environ, start_response):
    """Dies in C, as a broken extension would: a segmentation fault."""
    import ctypes

    ctypes.string_at(0)
    return _text(start_response, "unreachable")

# Worker exit runs atexit handlers, under a deadline.
if os.environ.get("APPSERVER_TEST_ATEXIT_LOG"):
    import atexit

    def _at_exit():
        with open(os.environ["APPSERVER_TEST_ATEXIT_LOG"], "a") as log:
            log.write(f"{os.getpid()}\n")
        if os.environ.get("APPSERVER_TEST_ATEXIT_HANG"):
            time.sleep(600)

    atexit.register(_at_exit)


# Two requests meet here when a process runs them at the same time (`pair`).
_pair = threading.Barrier(2)


@validator
def pair(environ, start_response):
    """Waits up to 10 s for a second request to be in the app at the same time: "met" with
    the thread's ident if one came, "alone" if none did."""
    try:
        _pair.wait(timeout=10)
        answer = "met %d" % threading.get_ident()
    except threading.BrokenBarrierError:
        _pair.reset()
        answer = "alone"
    return _text(start_response, answer)


@validator
def thread_ident(environ, start_response):
    """The ident of the thread the app runs on; reads the body first."""
    environ["wsgi.input"].read(65536)
    return _text(start_response, str(threading.get_ident()))


@validator
def big_write(environ, start_response):
    """write() of `n` bytes (query string) in one call, then an empty iterable."""
    n = int(environ["QUERY_STRING"] or "0")
    write = start_response("200 OK", [("Content-Type", "application/octet-stream")])
    write(b"w" * n)
    return []


def plain_list(environ, start_response):
    """A list of two chunks, unwrapped: the validator would wrap the list in an iterator of
    its own, and this app is about what a bare list allows (tests/wsgi.rs, inline)."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"a", b"b"]


@validator
def errors_app(environ, start_response):
    """Writes a whole line and a partial one to wsgi.errors, then answers."""
    errors = environ["wsgi.errors"]
    errors.write("first line\n")
    errors.write("unfinished")
    return _text(start_response, "logged")
