#!/usr/bin/env python3
"""Writes the seed corpora in fuzz/corpus/<target>/ from the web-server captures in
proto/testdata/*.bin and tests/data/captures/*.bin (docs/fuzzing.md says which seed reaches
what). Run from anywhere: `python3 fuzz/seeds.py`. Deterministic; it only rewrites the files
it owns (names starting with `cap-` or `hand-`).

What it changes in the captures, and why:
- AJP requests get the secret `fuzz` (what the ajp_conn target configures; Apache's capture
  carries `capture-secret`, lighttpd's none), else every request would be refused with 403
  and the body paths never reached.
- Long bodies (40 000 bytes over FastCGI, 10 000 over AJP) are cut to a few hundred bytes
  in several packets/records, with Content-Length to match: small seeds fuzz faster and still
  reach every body path (more body packets asked for, the body's end).
"""

import os
import struct

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")
SECRET = b"fuzz"
BODY = 600  # bytes of body a shortened seed keeps
PIECE = 250  # bytes per body packet/record in a shortened seed


def read(rel):
    with open(os.path.join(ROOT, rel), "rb") as f:
        return f.read()


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def clean(target):
    d = os.path.join(CORPUS, target)
    if os.path.isdir(d):
        for n in os.listdir(d):
            if n.startswith(("cap-", "hand-")):
                os.remove(os.path.join(d, n))


# --- FastCGI


def fcgi_records(data):
    i, out = 0, []
    while i + 8 <= len(data):
        ver, typ, rid, clen, plen = struct.unpack(">BBHHB", data[i : i + 7])
        out.append((typ, rid, data[i + 8 : i + 8 + clen]))
        i += 8 + clen + plen
    return out


def fcgi_record(typ, rid, content):
    pad = (-len(content)) % 8
    return struct.pack(">BBHHBB", 1, typ, rid, len(content), pad, 0) + content + b"\0" * pad


def fcgi_pairs(content):
    def length(i):
        if content[i] & 0x80:
            return struct.unpack(">I", content[i : i + 4])[0] & 0x7FFFFFFF, i + 4
        return content[i], i + 1

    i, out = 0, []
    while i < len(content):
        n, i = length(i)
        v, i = length(i)
        out.append((content[i : i + n], content[i + n : i + n + v]))
        i += n + v
    return out


def fcgi_encode_pairs(pairs):
    def length(n):
        return bytes([n]) if n < 128 else struct.pack(">I", n | 0x80000000)

    return b"".join(length(len(n)) + length(len(v)) + n + v for n, v in pairs)


def fcgi_params_of(capture):
    content = b"".join(c for t, _, c in fcgi_records(capture) if t == 4)
    return fcgi_pairs(content)


def fcgi_request(pairs, body, rid=1, keep_conn=False):
    out = fcgi_record(1, rid, struct.pack(">HB5x", 1, 1 if keep_conn else 0))
    out += fcgi_record(4, rid, fcgi_encode_pairs(pairs)) + fcgi_record(4, rid, b"")
    for i in range(0, len(body), PIECE):
        out += fcgi_record(5, rid, body[i : i + PIECE])
    return out + fcgi_record(5, rid, b"")


def with_param(pairs, name, value):
    return [(n, value if n == name else v) for n, v in pairs]


# --- AJP13


def ajp_packets(data):
    i, out = 0, []
    while i + 4 <= len(data):
        (n,) = struct.unpack(">H", data[i + 2 : i + 4])
        out.append(data[i + 4 : i + 4 + n])
        i += 4 + n
    return out


def ajp_packet(payload):
    return b"\x12\x34" + struct.pack(">H", len(payload)) + payload


def ajp_string(p, i):
    (n,) = struct.unpack(">H", p[i : i + 2])
    return (i + 2) if n == 0xFFFF else (i + 2 + n + 1)


def ajp_forward(payload, content_length=None):
    """The FORWARD_REQUEST with the secret `fuzz` (replacing any) and, when given, a new
    Content-Length value; returns (payload, declared length or None, chunked)."""
    i = 2
    for _ in range(5):
        i = ajp_string(payload, i)
    i += 3  # server_port, is_ssl
    (count,) = struct.unpack(">H", payload[i : i + 2])
    head, i = payload[:i], i + 2
    headers, declared, chunked = [], None, False
    for _ in range(count):
        start = i
        if payload[i] == 0xA0:
            code = payload[i + 1]
            name = {0x08: b"content-length"}.get(code, b"")
            i += 2
        else:
            j = ajp_string(payload, i)
            name, i = payload[i + 2 : j - 1].lower(), j
        vstart, i = i, ajp_string(payload, i)
        value = payload[vstart + 2 : i - 1]
        if name == b"content-length":
            declared = int(value)
            if content_length is not None:
                declared = content_length
                v = str(content_length).encode()
                headers.append(payload[start:vstart] + struct.pack(">H", len(v)) + v + b"\0")
                continue
        if name == b"transfer-encoding":
            chunked = True
        headers.append(payload[start:i])
    attrs = []
    while payload[i] != 0xFF:
        code, start = payload[i], i
        i += 1
        if code == 0x0A:
            i = ajp_string(payload, ajp_string(payload, i))
        elif code == 0x0B:
            i += 2
        else:
            i = ajp_string(payload, i)
        if code != 0x0C:
            attrs.append(payload[start:i])
    secret = b"\x0c" + struct.pack(">H", len(SECRET)) + SECRET + b"\0"
    out = head + struct.pack(">H", len(headers)) + b"".join(headers)
    out += secret + b"".join(attrs) + b"\xff"
    return out, declared, chunked


def ajp_session(capture, raw_framing):
    """The capture with the secret set and each long body cut to BODY bytes, in packets of
    PIECE bytes, framed as the web server framed them."""
    out, packets, k = b"", ajp_packets(capture), 0
    while k < len(packets):
        p = packets[k]
        k += 1
        if not p or p[0] != 0x02:
            out += ajp_packet(p)
            continue
        _, declared, chunked = ajp_forward(p)
        if not declared or chunked:
            out += ajp_packet(ajp_forward(p)[0])
            continue
        keep = min(declared, BODY)
        out += ajp_packet(ajp_forward(p, keep)[0])
        body, got = b"", 0
        while got < declared and k < len(packets):
            data = packets[k] if raw_framing else packets[k][2:]
            body, got, k = body + data, got + len(data), k + 1
        for i in range(0, keep, PIECE):
            piece = body[i : min(i + PIECE, keep)]
            out += ajp_packet(piece if raw_framing else struct.pack(">H", len(piece)) + piece)
    return out


# --- SCGI


def scgi_pairs(capture):
    colon = capture.index(b":")
    n = int(capture[:colon])
    fields = capture[colon + 1 : colon + 1 + n].split(b"\0")[:-1]
    return list(zip(fields[0::2], fields[1::2]))


def nul_pairs(pairs, forced=None):
    head = b"\x01" + forced + b"\0" if forced is not None else b"\x00"
    return head + b"".join(n + b"\0" + v + b"\0" for n, v in pairs)


def main():
    for t in os.listdir(CORPUS):
        clean(t)
    get = read("proto/testdata/fcgi-nginx-get.bin")
    post = read("proto/testdata/fcgi-nginx-post.bin")
    post_pairs = with_param(fcgi_params_of(post), b"CONTENT_LENGTH", str(BODY).encode())
    post_body = b"".join(c for t, _, c in fcgi_records(post) if t == 5)[:BODY]
    short_post = fcgi_request(post_pairs, post_body)
    two = fcgi_request(fcgi_params_of(get), b"", rid=1, keep_conn=True) + fcgi_request(
        post_pairs, post_body, rid=1, keep_conn=True
    )
    for t in ("fcgi_conn", "fcgi_decode", "fcgi_roundtrip"):
        write(t, "cap-nginx-post-short.bin", short_post)
        write(t, "cap-nginx-keepconn-get-post.bin", two)

    scgi = {s: read(f"tests/data/captures/scgi-{s}-post.bin") for s in ("nginx", "apache", "lighttpd")}
    for s, data in scgi.items():
        write("scgi_conn", f"cap-{s}-post.bin", data)

    apache = ajp_session(read("tests/data/captures/ajp-apache-session.bin"), raw_framing=False)
    lget = ajp_session(read("tests/data/captures/ajp-lighttpd-get.bin"), raw_framing=True)
    lpost = ajp_session(read("tests/data/captures/ajp-lighttpd-post.bin"), raw_framing=True)
    # The target's last input byte sizes the chunks; an extra byte (a partial packet at the
    # end) picks 1 + 3 * 0x15 = 64-byte chunks for one copy of each.
    for name, data in (("apache-session", apache), ("lighttpd-get", lget), ("lighttpd-post", lpost)):
        write("ajp_conn", f"cap-{name}.bin", data)
        write("ajp_conn", f"cap-{name}-chunk64.bin", data + b"\x15")
    for name, data in (("apache", apache), ("lighttpd-get", lget), ("lighttpd-post", lpost)):
        for n, p in enumerate(q for q in ajp_packets(data) if q and q[0] == 0x02):
            write("ajp_cgi", f"cap-{name}-{n}.bin", p)

    params = {
        "fcgi-nginx-get": fcgi_params_of(get),
        "fcgi-nginx-post": fcgi_params_of(post),
        **{f"scgi-{s}-post": scgi_pairs(d) for s, d in scgi.items()},
    }
    hand = {
        "apache-rewrite": [
            (b"SCRIPT_NAME", b"/mysite.fcgi"),
            (b"PATH_INFO", b"/blog/1"),
            (b"SCRIPT_URL", b"/prefix//blog/1"),
            (b"REQUEST_URI", b"/prefix/blog/1"),
        ],
        "lighttpd-rewrite": [
            (b"REQUEST_URI", b"/blog/caf%C3%A9?q=1"),
            (b"REDIRECT_URI", b"/mysite.fcgi/blog/caf%C3%A9?q=1"),
            (b"SCRIPT_NAME", b"/mysite.fcgi"),
            (b"PATH_INFO", "/blog/caf\u00e9".encode()),
        ],
        "redirect-url": [
            (b"SCRIPT_NAME", b"/mysite.fcgi"),
            (b"PATH_INFO", b"/x"),
            (b"REDIRECT_URL", b"/app/x"),
        ],
        "no-request-uri": [
            (b"SCRIPT_NAME", b"/app"),
            (b"PATH_INFO", "/caf\u00e9 x".encode()),
            (b"QUERY_STRING", b"a=1&b=%20"),
            (b"CONTENT_LENGTH", b"-1"),
        ],
    }
    for t in ("request_build", "request_script_name"):
        for name, pairs in {**params, **hand}.items():
            prefix = "cap" if name in params else "hand"
            write(t, f"{prefix}-{name}.bin", nul_pairs(pairs))
        write(t, "hand-forced-app.bin", nul_pairs([(b"REQUEST_URI", b"/app/x%2Fy?q=1")], b"/app/"))

    for n, uri in enumerate(
        [v for pairs in params.values() for k, v in pairs if k in (b"REQUEST_URI", b"DOCUMENT_URI")]
    ):
        write("percent_decode", f"cap-uri-{n}.bin", uri)
    write("percent_decode", "hand-malformed.bin", b"%41%zz%4%")

    heads = {
        "status-reason-cookies": b"Status: 404 Gone Fishing\r\nContent-Type: text/plain\r\n"
        b"Set-Cookie: a=1\nSet-Cookie: b=2\r\nset-cookie:c=3\t\r\nX-Empty:\r\n\r\nbody",
        "location": b"Location: https://example.com/x\n\n",
        "local-redirect": b"Location: /other?x=1\r\n\r\n",
        "html": b"Content-type: text/html; charset=utf-8\n\n<html></html>\n",
        "mixed-endings": b"Status: 200\r\nX-A: 1\n\r\nbody",
        "nph-like": b"HTTP/1.1 200 OK\r\n\r\n",
    }
    for name, head in heads.items():
        write("cgi_head", f"hand-{name}.bin", head)


if __name__ == "__main__":
    main()
