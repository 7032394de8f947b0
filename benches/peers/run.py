"""The peer benchmark's runner: `benches/peers.sh` installs and builds, then runs this.

One nginx (2 workers) on a free loopback port puts every backend under its own prefix
(`/uwsgi-fcgi/`, `/appserver-prefork-fcgi-kc/`, ...). Round after round, each backend in turn
is started, waited for (its socket accepts, its process tree has its workers, a request
through nginx answers), checked against the contract (`/` is exactly b"Hello, world\\n" as
text/plain, `/big` is 10 MiB, `/upload` answers the length of a 10 MiB body), loaded with
`wrk` on each page, and stopped by pid. Around each wrk run the CPU time (utime + stime,
children included) of the backend's process tree and of nginx's is read from /proc, and the
tree's RSS is sampled while wrk runs. The result is a markdown table of medians over the
rounds and a JSON file with every run.

Only the standard library; Linux only (/proc).
"""

import argparse
import datetime
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

BIG_LEN = 10 * 1024 * 1024
HELLO = b"Hello, world\n"
MIB = 1024 * 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
# How long a backend may take to accept connections and fork its workers, and to stop.
START_DEADLINE = 30.0
STOP_DEADLINE = 10.0
# How often the RSS sampler reads the process tree while wrk runs: often enough to see the
# peak of a 2 s run, rarely enough not to cost the backends a measurable share of 2 cores.
RSS_PERIOD = 0.2
# How often wrk's byte counters are read: /proc/PID/io is one small file, and the error on a
# rate is at most one period out of the run.
IO_PERIOD = 0.02
PAGES = ("hello", "big", "upload")
PAGE_PATH = {"hello": "", "big": "big", "upload": "upload"}
REFERENCE = "uwsgi-fcgi"

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


class Backend:
    """One row of the table: a server, how nginx reaches it, and how many processes it runs."""

    def __init__(self, name, label, protocol, keep_conn, procs, argv=None, php=False):
        self.name = name
        self.label = label
        self.protocol = protocol  # "fcgi", "scgi" or None (nginx itself)
        self.keep_conn = keep_conn
        self.procs = procs  # processes in the tree once ready (master + workers)
        self.argv = argv  # function(dir, socket) -> argv, None for nginx-direct
        self.php = php


def appserver(method, protocol, worker_requests=1):
    def argv(d, sock):
        args = [
            os.path.join(ROOT, "target/release/examples/bench"),
            "runfcgi",
            "method=" + method,
            "protocol=" + protocol,
            "daemonize=false",
            "socket=" + sock,
        ]
        if method == "prefork":
            args += ["minspare=2", "maxspare=2", "maxchildren=2"]
        if worker_requests > 1:
            args += ["worker_requests=%d" % worker_requests]
        return args

    return argv


def uwsgi(protocol):
    def argv(d, sock):
        return [
            "uwsgi",
            "--plugin",
            "python3",
            "--%s-socket" % ("fastcgi" if protocol == "fcgi" else "scgi"),
            sock,
            "--master",
            "--processes",
            "2",
            "--wsgi-file",
            os.path.join(HERE, "app.py"),
            "--disable-logging",
            "--die-on-term",
            "--need-app",
        ]

    return argv


def php_fpm(d, sock):
    conf = os.path.join(d, "php-fpm.conf")
    root = os.getuid() == 0
    with open(conf, "w") as f:
        f.write(
            "[global]\npid = %s/php-fpm.pid\nerror_log = %s/php-fpm.log\ndaemonize = no\n"
            "[bench]\n%slisten = %s\npm = static\npm.max_children = 2\n"
            "php_admin_flag[enable_post_data_reading] = off\n"
            % (d, d, "user = root\ngroup = root\n" if root else "", sock)
        )
    return [find_php_fpm(), "-F", "-y", conf] + (["-R"] if root else [])


def go_peer(d, sock):
    return [os.path.join(d, "go-peer"), sock]


def floor(protocol, procs=1, serial=False):
    def argv(d, sock):
        args = [os.path.join(d, "floor")]
        if procs > 1:
            args += ["--procs", str(procs)]
        if serial:
            args += ["--serial"]
        return args + (["--scgi"] if protocol == "scgi" else []) + [sock]
    return argv


BACKENDS = [
    Backend("nginx-direct", "nginx alone (the ceiling)", None, None, 3),
    Backend("uwsgi-fcgi", "uWSGI 2.0 python3, 2 processes", "fcgi", False, 3, uwsgi("fcgi")),
    Backend("uwsgi-scgi", "uWSGI 2.0 python3, 2 processes", "scgi", False, 3, uwsgi("scgi")),
    Backend("php-fpm", "php-fpm, static pool of 2", "fcgi", False, 3, php_fpm, php=True),
    Backend("go-fcgi", "Go net/http/fcgi", "fcgi", False, 1, go_peer),
    # The floor (floor.c): the least a responder can spend on each page.
    Backend("fcgi-floor", "floor.c, one thread", "fcgi", False, 1, floor("fcgi")),
    Backend("fcgi-floor-kc", "floor.c, one thread", "fcgi", True, 1, floor("fcgi")),
    Backend("scgi-floor", "floor.c, one thread", "scgi", False, 1, floor("scgi")),
    # What a pool of two processes can reach (appserver's prefork pool, uWSGI's processes).
    Backend("fcgi-floor-kc-2", "floor.c, 2 processes", "fcgi", True, 2, floor("fcgi", 2)),
    Backend("scgi-floor-2", "floor.c, 2 processes", "scgi", False, 2, floor("scgi", 2)),
    # The same pool with one answer in flight per process, as a prefork worker serves one
    # request at a time: what such a pool can relay of /big.
    Backend(
        "fcgi-floor-kc-2-serial",
        "floor.c, 2 processes, one answer each at a time",
        "fcgi",
        True,
        2,
        floor("fcgi", 2, serial=True),
    ),
    Backend(
        "appserver-threaded-fcgi",
        "appserver threaded",
        "fcgi",
        False,
        1,
        appserver("threaded", "fcgi"),
    ),
    Backend(
        "appserver-threaded-fcgi-kc",
        "appserver threaded",
        "fcgi",
        True,
        1,
        appserver("threaded", "fcgi"),
    ),
    Backend(
        "appserver-prefork-fcgi",
        "appserver prefork, 2 workers",
        "fcgi",
        False,
        3,
        appserver("prefork", "fcgi"),
    ),
    Backend(
        "appserver-prefork-fcgi-kc",
        "appserver prefork, 2 workers",
        "fcgi",
        True,
        3,
        appserver("prefork", "fcgi"),
    ),
    Backend(
        "appserver-threaded-scgi",
        "appserver threaded",
        "scgi",
        False,
        1,
        appserver("threaded", "scgi"),
    ),
    Backend(
        "appserver-prefork-scgi",
        "appserver prefork, 2 workers",
        "scgi",
        False,
        3,
        appserver("prefork", "scgi"),
    ),
    # The pool with each worker running 25 requests at once (worker_requests=25): two
    # workers take all fifty of wrk's connections, as the threaded process does.
] + [
    Backend(
        "appserver-prefork-wr25-" + variant,
        "appserver prefork, 2 workers, worker_requests=25",
        protocol,
        keep_conn,
        3,
        appserver("prefork", protocol, worker_requests=25),
    )
    for variant, protocol, keep_conn in [
        ("fcgi", "fcgi", False),
        ("fcgi-kc", "fcgi", True),
        ("scgi", "scgi", False),
    ]
]


def find_php_fpm():
    found = shutil.which("php-fpm")
    if found:
        return found
    for name in sorted(os.listdir("/usr/sbin"), reverse=True):
        if re.fullmatch(r"php-fpm[0-9.]+", name):
            return os.path.join("/usr/sbin", name)
    raise SystemExit("peers: php-fpm is missing")


# ---------------------------------------------------------------------------------------------
# /proc: process trees, CPU time, RSS


def read_stat(pid):
    """(ppid, cpu ticks of the process and its reaped children) or None if it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 of proc(5): state; ppid is 4; utime 14, stime 15, cutime 16, cstime 17.
    return int(fields[1]), sum(int(x) for x in fields[11:15])


def tree(root):
    """The pids of `root` and all its descendants, root first."""
    parent = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = read_stat(int(entry))
            if st:
                parent[int(entry)] = st[0]
    pids = [root] if root in parent else []
    frontier = list(pids)
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        pids += kids
        frontier += kids
    return pids


def cpu_ticks(pids):
    total = 0
    for p in pids:
        st = read_stat(p)
        if st:
            total += st[1]
    return total


def rss(pid):
    try:
        with open("/proc/%d/statm" % pid) as f:
            return int(f.read().split()[1]) * PAGE
    except (FileNotFoundError, ProcessLookupError):
        return 0


class RssSampler(threading.Thread):
    """Samples the tree's RSS every RSS_PERIOD until stopped; keeps each process's peak."""

    def __init__(self, root):
        super().__init__(daemon=True)
        self.root = root
        self.peak = {}
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            for p in tree(self.root):
                self.peak[p] = max(self.peak.get(p, 0), rss(p))
            self.done.wait(RSS_PERIOD)

    def stop(self):
        self.done.set()
        self.join()
        return split_rss(self.root, self.peak)


def split_rss(root, by_pid):
    """{"master": MiB, "workers": [MiB, ...]}: the root, then its descendants largest first."""
    return {
        "master": round(by_pid.get(root, 0) / MIB, 1),
        "workers": sorted((round(v / MIB, 1) for p, v in by_pid.items() if p != root), reverse=True),
    }


def idle_rss(root):
    return split_rss(root, {p: rss(p) for p in tree(root)})


# ---------------------------------------------------------------------------------------------
# Processes


class Proc:
    """A process this script started, stopped by its pid (and its tree's pids) at the end."""

    def __init__(self, name, argv, d, env=None):
        self.name = name
        self.log = os.path.join(d, name + ".log")
        with open(self.log, "wb") as log:
            self.popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env
            )
        self.pid = self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    def log_tail(self):
        try:
            with open(self.log, "rb") as f:
                return f.read()[-2000:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self, sig=signal.SIGTERM):
        pids = tree(self.pid)
        if self.alive():
            self.popen.send_signal(sig)
            try:
                self.popen.wait(STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                print("peers: %s ignored %s for %ss; killing it" % (self.name, sig.name, STOP_DEADLINE),
                      file=sys.stderr)
                self.popen.kill()
                self.popen.wait()
        # Workers that outlived their master (none should) go by their own pids.
        for p in pids[1:]:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass


def wait_until(what, proc, check, deadline=START_DEADLINE):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc is not None and not proc.alive():
            raise RuntimeError("%s exited while waiting for %s:\n%s" % (proc.name, what, proc.log_tail()))
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.02)  # poll interval of a readiness check, not a wait for readiness
    raise RuntimeError("%s: no %s within %ss:\n%s" % (proc.name if proc else "", what, deadline,
                                                      proc.log_tail() if proc else ""))


def unix_accepts(path):
    if not os.path.exists(path):
        return False
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(1)
        s.connect(path)
    return True


def tcp_accepts(port):
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# HTTP: probe and contract


def request(port, method, path, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Content-Type": "application/octet-stream"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type") or "", resp.read()
    finally:
        conn.close()


def check_contract(port, prefix, upload_body):
    """None, or what the backend under `prefix` got wrong."""
    status, ctype, body = request(port, "GET", prefix)
    if status != 200 or body != HELLO or not ctype.startswith("text/plain"):
        return "/ answered %d %r %r, not 200 text/plain %r" % (status, ctype, body[:80], HELLO)
    status, _, body = request(port, "GET", prefix + "big")
    if status != 200 or len(body) != BIG_LEN:
        return "/big answered %d with %d bytes, not 200 with %d" % (status, len(body), BIG_LEN)
    status, _, body = request(port, "POST", prefix + "upload", upload_body)
    if status != 200 or body.strip() != str(BIG_LEN).encode():
        return "/upload answered %d %r, not 200 %d" % (status, body[:80], BIG_LEN)
    return None


# ---------------------------------------------------------------------------------------------
# nginx


def nginx_conf(d, port):
    peers = HERE
    lines = [
        "worker_processes 2;",
        "daemon off;",
        "pid %s/nginx.pid;" % d,
        "error_log %s/nginx-error.log;" % d,
        "events { worker_connections 4096; }",
        "http {",
        "    access_log off;",
        "    sendfile on;  # nginx-direct's /big, as in the stock nginx.conf",
        "    client_body_temp_path %s/nginx-tmp/body;" % d,
        "    fastcgi_temp_path %s/nginx-tmp/fastcgi;" % d,
        "    scgi_temp_path %s/nginx-tmp/scgi;" % d,
        "    proxy_temp_path %s/nginx-tmp/proxy;" % d,
        "    uwsgi_temp_path %s/nginx-tmp/uwsgi;" % d,
        # Uploads of any size; the backends get the body as it arrives (request buffering
        # off) and nginx never spills a response to disk (max_temp_file_size 0), so no row
        # measures the disk.
        "    client_max_body_size 0;",
        "    map $uri $php_script { ~/big$ big.php; ~/upload$ upload.php; default hello.php; }",
    ]
    if os.getuid() == 0:
        lines.insert(0, "user root;")  # the temp dir is 0700; workers must reach its sockets
    for b in BACKENDS:
        if b.protocol:
            keepalive = " keepalive 16;" if b.keep_conn else ""
            lines.append("    upstream %s { server unix:%s/%s.sock;%s }" % (b.name, d, b.name, keepalive))
    lines += ["    server {", "        listen 127.0.0.1:%d;" % port]
    # nginx-direct: `return` for `/`, a static file (sendfile) for `/big`. For `/upload`, a
    # bare `return` would answer first and only then discard the body, 4 KiB per read, so
    # nginx is made to read it all before answering: `mirror_request_body on` reads the whole
    # body (into one 11 MiB memory buffer: no disk) before the mirror subrequest, a no-op
    # `return 204`, is made; the content phase then finds no file, and `error_page 404 =200`
    # answers 200 with the length, as the backends do.
    lines += [
        "        location = /nginx-direct/ { default_type text/plain; return 200 \"Hello, world\\n\"; }",
        "        location = /nginx-direct/big { default_type application/octet-stream; alias %s/big.bin; }" % d,
        "        location = /nginx-direct/upload {",
        "            client_body_buffer_size 11m;",
        "            mirror /nginx-direct/read-body;",
        "            mirror_request_body on;",
        "            root %s/no-such-dir;" % d,
        "            log_not_found off;",
        "            error_page 404 =200 @nginx-direct-uploaded;",
        "        }",
        "        location = /nginx-direct/read-body { internal; return 204; }",
        "        location @nginx-direct-uploaded { default_type text/plain; return 200 \"$content_length\\n\"; }",
    ]
    for b in BACKENDS:
        if not b.protocol:
            continue
        p = "fastcgi" if b.protocol == "fcgi" else "scgi"
        lines.append("        location /%s/ {" % b.name)
        lines.append("            include /etc/nginx/%s_params;" % p)
        if b.php:
            lines.append("            fastcgi_param SCRIPT_FILENAME %s/$php_script;" % peers)
        if b.keep_conn:
            lines.append("            fastcgi_keep_conn on;")
        if b.protocol == "fcgi":
            lines.append("            fastcgi_request_buffering off;")
        else:
            # nginx (1.22) with scgi_request_buffering off sends as CONTENT_LENGTH the bytes
            # it has received so far, not the request's length, and the backend rightly stops
            # reading there. So SCGI rows buffer the whole body first, in memory (no disk).
            lines.append("            client_body_buffer_size 11m;")
        lines.append("            %s_max_temp_file_size 0;" % p)
        lines.append("            %s_pass %s;" % (p, b.name))
        lines.append("        }")
    lines += ["    }", "}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# wrk


class IoSampler(threading.Thread):
    """Reads wrk's byte counters (/proc/PID/io: rchar, wchar; wrk uses read(2) and write(2))
    every IO_PERIOD while it runs. A 10 MiB page at 50 connections completes too few
    requests in a few seconds for req/s to be a throughput: up to 50 partial transfers
    are in flight when wrk stops, and wrk counts none of them. Bytes moved per second are
    exact whatever is in flight."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid = pid
        self.first = self.last = None
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            try:
                with open("/proc/%d/io" % self.pid) as f:
                    io = dict(line.split(": ") for line in f.read().splitlines())
            except (OSError, ValueError):
                break  # wrk exited
            sample = (time.monotonic(), int(io["rchar"]), int(io["wchar"]))
            if self.first is None:
                self.first = sample
            self.last = sample
            self.done.wait(IO_PERIOD)

    def rates(self):
        """(read MiB/s, written MiB/s) between the first and the last sample."""
        self.done.set()
        self.join()
        if not self.first or self.last[0] - self.first[0] < IO_PERIOD:
            return None, None
        dt = self.last[0] - self.first[0]
        return ((self.last[1] - self.first[1]) / dt / MIB, (self.last[2] - self.first[2]) / dt / MIB)


def run_wrk(args, port, prefix, page, d):
    argv = [
        "wrk",
        "-t%d" % args.threads,
        "-c%d" % args.connections,
        "-d%ds" % args.duration,
        "--timeout",
        "30s",
    ]
    if page == "upload":
        argv += ["-s", os.path.join(d, "upload.lua")]
    argv.append("http://127.0.0.1:%d%s%s" % (port, prefix, PAGE_PATH[page]))
    wrk = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    io = IoSampler(wrk.pid)
    io.start()
    try:
        stdout, stderr = wrk.communicate(timeout=args.duration + 60)
    except subprocess.TimeoutExpired:
        wrk.kill()
        wrk.wait()
        raise RuntimeError("wrk did not finish within %ds" % (args.duration + 60))
    except BaseException:  # interrupted: wrk goes too, by its pid
        wrk.kill()
        wrk.wait()
        raise
    finally:
        read_mib, written_mib = io.rates()
    if wrk.returncode != 0:
        raise RuntimeError("wrk failed (%d): %s" % (wrk.returncode, stderr))
    result = parse_wrk(stdout)
    result["read_mib_per_s"] = read_mib
    result["written_mib_per_s"] = written_mib
    return result


def parse_wrk(text):
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", text)
    if not m:
        raise RuntimeError("wrk output without a request count:\n" + text)
    secs = float(m.group(2)) * {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60}[m.group(3)]
    result = {
        "requests": int(m.group(1)),
        "seconds": secs,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),
        "non_2xx": 0,
        "socket_errors": 0,
    }
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        result["non_2xx"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        result["socket_errors"] = sum(int(x) for x in m.groups())
    return result


# ---------------------------------------------------------------------------------------------
# The run


def versions():
    def first_line(argv):
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (out.stdout + out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return None

    return {
        "nginx": first_line(["nginx", "-v"]),
        "uwsgi": first_line(["uwsgi", "--version"]),
        "php-fpm": first_line([find_php_fpm(), "-v"]),
        "go": first_line(["go", "version"]),
        "wrk": first_line(["wrk", "-v"]),
        "rustc": first_line(["rustc", "-V"]),
    }


def build_go(d):
    env = dict(os.environ, GOCACHE=d + "/gocache", GOPATH=d + "/gopath", GOPROXY="off", GOFLAGS="")
    subprocess.run(["go", "build", "-o", os.path.join(d, "go-peer"), "."], cwd=os.path.join(HERE, "go"),
                   env=env, check=True)


def measure(backend, proc, nginx, args, port, d, upload_body):
    """One round of one backend: contract check, idle RSS, then wrk on each page."""
    root = proc.pid if proc else nginx.pid
    prefix = "/%s/" % backend.name
    record = {"backend": backend.name, "idle_rss": idle_rss(root), "pages": {}}
    wrong = check_contract(port, prefix, upload_body)
    if wrong:
        record["error"] = wrong
        return record
    for page in PAGES:
        pids = tree(root)
        nginx_pids = tree(nginx.pid)
        cpu0, ncpu0 = cpu_ticks(pids), cpu_ticks(nginx_pids)
        sampler = RssSampler(root)
        sampler.start()
        try:
            w = run_wrk(args, port, prefix, page, d)
        finally:
            peak = sampler.stop()
        # Processes born during the run (a respawned worker) count too.
        pids = sorted(set(pids) | set(tree(root)))
        cpu1, ncpu1 = cpu_ticks(pids), cpu_ticks(nginx_pids)
        cpu_us, ncpu_us = (cpu1 - cpu0) / CLK_TCK * 1e6, (ncpu1 - ncpu0) / CLK_TCK * 1e6
        if page == "hello":
            n = max(w["requests"], 1)
            w["cpu_us_per_req"], w["nginx_cpu_us_per_req"] = cpu_us / n, ncpu_us / n
            w["mib_per_s"] = None
        else:
            # Few 10 MiB requests complete in a run (see IoSampler): CPU per MiB moved.
            w["mib_per_s"] = w["read_mib_per_s"] if page == "big" else w["written_mib_per_s"]
            mib = max((w["mib_per_s"] or 0) * w["seconds"], 1)
            w["cpu_us_per_mib"], w["nginx_cpu_us_per_mib"] = cpu_us / mib, ncpu_us / mib
        w["peak_rss"] = peak
        record["pages"][page] = w
    return record


def run(args):
    selected = [b for b in BACKENDS if not args.only or b.name in args.only]
    unknown = set(args.only or ()) - {b.name for b in BACKENDS}
    if unknown:
        raise SystemExit("peers: unknown backend(s) %s; known: %s"
                         % (", ".join(sorted(unknown)), ", ".join(b.name for b in BACKENDS)))
    d = tempfile.mkdtemp(prefix="appserver-peers-")
    started = []
    results = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "loadavg_start": os.getloadavg()},
        "settings": {
            "duration_s": args.duration,
            "rounds": args.rounds,
            "wrk_threads": args.threads,
            "connections": args.connections,
            "nginx_workers": 2,
        },
        "runs": [],
    }

    def on_signal(signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        os.makedirs(d + "/nginx-tmp")
        with open(d + "/big.bin", "wb") as f:
            f.write(b"x" * BIG_LEN)
        with open(d + "/upload.lua", "w") as f:
            f.write('wrk.method = "POST"\n'
                    'wrk.headers["Content-Type"] = "application/octet-stream"\n'
                    'wrk.body = string.rep("x", %d)\n' % BIG_LEN)
        upload_body = b"x" * BIG_LEN
        results["versions"] = versions()
        if any(b.name == "go-fcgi" for b in selected):
            build_go(d)
        if any("floor" in b.name for b in selected):
            subprocess.run(["gcc", "-O2", "-o", os.path.join(d, "floor"), os.path.join(HERE, "floor.c")],
                           check=True)

        port = free_port()
        with open(d + "/nginx.conf", "w") as f:
            f.write(nginx_conf(d, port))
        nginx = Proc("nginx", ["nginx", "-p", d, "-c", d + "/nginx.conf", "-e", d + "/nginx-error.log"], d)
        started.append(nginx)
        wait_until("listening nginx", nginx, lambda: tcp_accepts(port))
        wait_until("2 nginx workers", nginx, lambda: len(tree(nginx.pid)) >= 3)

        for rnd in range(1, args.rounds + 1):
            for b in selected:
                print("peers: round %d/%d: %s" % (rnd, args.rounds, b.name), file=sys.stderr, flush=True)
                proc = None
                record = {"round": rnd, "backend": b.name}
                try:
                    if b.argv:
                        sock = "%s/%s.sock" % (d, b.name)
                        if os.path.exists(sock):
                            os.unlink(sock)
                        proc = Proc(b.name, b.argv(d, sock), d)
                        started.append(proc)
                        wait_until("socket accepting", proc, lambda: unix_accepts(sock))
                        wait_until("%d processes" % b.procs, proc, lambda: len(tree(proc.pid)) >= b.procs)
                        wait_until("answer through nginx", proc,
                                   lambda: request(port, "GET", "/%s/" % b.name)[0] == 200)
                    record.update(measure(b, proc, nginx, args, port, d, upload_body))
                except RuntimeError as e:
                    record["error"] = str(e)
                finally:
                    if proc:
                        proc.stop()
                        started.remove(proc)
                if "error" in record:
                    print("peers: %s: %s" % (b.name, record["error"]), file=sys.stderr)
                results["runs"].append(record)
        nginx.stop(signal.SIGQUIT)
        started.remove(nginx)
    finally:
        for p in reversed(started):
            p.stop()
        shutil.rmtree(d, ignore_errors=True)

    results["machine"]["loadavg_end"] = os.getloadavg()
    results["summary"] = summarize(results, selected)
    return results


# ---------------------------------------------------------------------------------------------
# Summary and table


def median_of(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def median_rss(samples):
    if not samples:
        return None
    return {
        "master": median_of([s["master"] for s in samples]),
        "workers": [median_of(ws) for ws in zip(*[s["workers"] for s in samples])],
    }


def summarize(results, selected):
    summary = {}
    for b in selected:
        runs = [r for r in results["runs"]
                if r["backend"] == b.name and "pages" in r and len(r["pages"]) == len(PAGES)]
        s = {
            "label": b.label,
            "protocol": b.protocol,
            "keep_conn": b.keep_conn,
            "rounds_ok": len(runs),
            "errors": [r["error"] for r in results["runs"] if r["backend"] == b.name and "error" in r],
            "idle_rss": median_rss([r["idle_rss"] for r in runs]),
        }
        for page in PAGES:
            ws = [r["pages"][page] for r in runs if page in r["pages"]]
            s[page] = {
                "rps": median_of([w["rps"] for w in ws]),
                "mib_per_s": median_of([w["mib_per_s"] for w in ws]),
                "cpu_us_per_req": median_of([w.get("cpu_us_per_req") for w in ws]),
                "nginx_cpu_us_per_req": median_of([w.get("nginx_cpu_us_per_req") for w in ws]),
                "cpu_us_per_mib": median_of([w.get("cpu_us_per_mib") for w in ws]),
                "nginx_cpu_us_per_mib": median_of([w.get("nginx_cpu_us_per_mib") for w in ws]),
                "peak_rss": median_rss([w["peak_rss"] for w in ws]),
                "non_2xx": sum(w["non_2xx"] for w in ws),
                "socket_errors": sum(w["socket_errors"] for w in ws),
            }
        summary[b.name] = s
    for name, s in summary.items():
        for ref in ("uwsgi-fcgi", "uwsgi-scgi"):
            r = summary.get(ref)
            key = "vs_" + ref.replace("-", "_")
            s[key] = {}
            for page, field in (("hello", "rps"), ("big", "mib_per_s"), ("upload", "mib_per_s")):
                a = s[page][field]
                b = r[page][field] if r else None
                s[key][page] = round(a / b, 2) if a and b else None
    return summary


def fmt_num(v, digits=0):
    return "–" if v is None else "{:,.{}f}".format(v, digits)


def fmt_ratio(v):
    return "–" if v is None else "%.2f" % v


def fmt_rss(r):
    if not r or r["master"] is None:
        return "–"
    return " + ".join("%.1f" % x for x in [r["master"]] + r["workers"])


def table(results):
    st = results["settings"]
    lines = [
        "Medians of %d interleaved round(s), `wrk -t%d -c%d -d%ds` through one nginx (2 workers); "
        "ratios against uWSGI over FastCGI. %s, %d CPUs, load average %.1f at the start."
        % (st["rounds"], st["wrk_threads"], st["connections"], st["duration_s"], results["date"],
           results["machine"]["cpus"], results["machine"]["loadavg_start"][0]),
        "",
        "| backend | proto | keep-conn | `/` req/s | vs uWSGI | backend µs/req | nginx µs/req "
        "| `/big` MiB/s | vs uWSGI | `/upload` MiB/s | vs uWSGI | idle RSS MiB | peak RSS MiB | non-2xx |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    scgi = []
    for name, s in results["summary"].items():
        h = s["hello"]
        vs = s["vs_uwsgi_fcgi"]
        peaks = [s[p]["peak_rss"] for p in PAGES if s[p]["peak_rss"]]
        peak = max(peaks, key=lambda r: r["master"] + sum(r["workers"])) if peaks else None
        non_2xx = sum(s[p]["non_2xx"] for p in PAGES)
        errors = sum(s[p]["socket_errors"] for p in PAGES)
        flag = "" if not s["errors"] else " (%d round(s) failed)" % len(s["errors"])
        lines.append(
            "| %s%s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |"
            % (
                name,
                flag,
                {"fcgi": "FastCGI", "scgi": "SCGI"}.get(s["protocol"], "HTTP"),
                "–" if s["keep_conn"] is None else ("on" if s["keep_conn"] else "off"),
                fmt_num(h["rps"]),
                fmt_ratio(vs["hello"]),
                fmt_num(h["cpu_us_per_req"]) if s["protocol"] else "–",
                fmt_num(h["nginx_cpu_us_per_req"]),
                fmt_num(s["big"]["mib_per_s"]),
                fmt_ratio(vs["big"]),
                fmt_num(s["upload"]["mib_per_s"]),
                fmt_ratio(vs["upload"]),
                fmt_rss(s["idle_rss"]),
                fmt_rss(peak),
                "%d%s" % (non_2xx, " (+%d socket errors)" % errors if errors else ""),
            )
        )
        if s["protocol"] == "scgi" and name != "uwsgi-scgi":
            v = s["vs_uwsgi_scgi"]
            scgi.append("%s %s / %s / %s" % (name, fmt_ratio(v["hello"]), fmt_ratio(v["big"]), fmt_ratio(v["upload"])))
    if scgi:
        lines += ["", "Against uWSGI over SCGI (`/` req/s, `/big`, `/upload` MiB/s): " + "; ".join(scgi) + "."]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default="target/peers.json")
    ap.add_argument("--markdown", default="target/peers.md")
    ap.add_argument("--only", type=lambda s: [x for x in s.split(",") if x])
    ap.add_argument("--nginx-conf", metavar="DIR",
                    help="write the nginx.conf a run would use into DIR (for `nginx -t`) and exit")
    args = ap.parse_args()
    if args.nginx_conf:
        os.makedirs(os.path.join(args.nginx_conf, "nginx-tmp"), exist_ok=True)
        with open(os.path.join(args.nginx_conf, "nginx.conf"), "w") as f:
            f.write(nginx_conf(os.path.abspath(args.nginx_conf), free_port()))
        return 0
    try:
        results = run(args)
    except KeyboardInterrupt:
        print("peers: interrupted; everything started was stopped", file=sys.stderr)
        return 130
    except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
        print("peers: %s" % e, file=sys.stderr)
        return 1
    md = table(results)
    for path, text in ((args.json, json.dumps(results, indent=2) + "\n"), (args.markdown, md)):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    print(md)
    print("peers: wrote %s and %s" % (args.markdown, args.json), file=sys.stderr)
    failed = [n for n, s in results["summary"].items() if s["errors"]]
    if failed:
        print("peers: failed: %s" % ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
