"""The one WSGI app every server in scripts/bench-wsgi serves (docs/performance.md).

/        a short hello
/big     10 MiB in 64 KiB chunks
/upload  reads the request body in 64 KiB reads and answers its length
"""

HELLO = b"Hello, world\n"
CHUNK = b"x" * 65536
BIG_CHUNKS = 160  # 10 MiB


def application(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path == "/big":
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(len(CHUNK) * BIG_CHUNKS))])
        return (CHUNK for _ in range(BIG_CHUNKS))
    if path == "/upload":
        stream = environ["wsgi.input"]
        total = 0
        while True:
            data = stream.read(65536)
            if not data:
                break
            total += len(data)
        body = str(total).encode()
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(HELLO)))])
    return [HELLO]
