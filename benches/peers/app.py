"""The WSGI app benches/peers.sh serves through uWSGI: the same three pages as appserver's
examples/bench.rs, written the way a WSGI app would write them.

- `/` (any other path too): b"Hello, world\n" as text/plain, 13 bytes;
- a path ending in `/big`: 10 MiB, yielded in 64 KiB chunks of one module-level buffer;
- a path ending in `/upload`: reads wsgi.input to the end in 64 KiB reads and answers the
  length in decimal.

Routing looks at the end of the path (REQUEST_URI; nginx's fastcgi_params and scgi_params set
no PATH_INFO) because the benchmark's nginx puts each backend under its own prefix.
"""

BIG_LEN = 10 * 1024 * 1024
CHUNK = b"x" * (64 * 1024)
HELLO = b"Hello, world\n"


def big():
    for _ in range(BIG_LEN // len(CHUNK)):
        yield CHUNK


def application(environ, start_response):
    path = environ.get("PATH_INFO") or environ.get("REQUEST_URI", "/").split("?", 1)[0]
    if path.endswith("/big"):
        start_response(
            "200 OK",
            [("Content-Type", "application/octet-stream"), ("Content-Length", str(BIG_LEN))],
        )
        return big()
    if path.endswith("/upload"):
        stream = environ["wsgi.input"]
        n = 0
        while True:
            chunk = stream.read(64 * 1024)
            if not chunk:
                break
            n += len(chunk)
        body = b"%d\n" % n
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "13")])
    return [HELLO]
