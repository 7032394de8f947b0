/* The peer benchmark's floor (docs/performance.md): the least CPU a FastCGI or SCGI responder
 * can spend on each of the benchmark's pages, and so the most any backend can get through the
 * same nginx. One thread, no parsing beyond record boundaries (FastCGI) or the netstring and
 * CONTENT_LENGTH (SCGI), and canned answers built once at start:
 *   /        the 13-byte hello in one write (FastCGI: STDOUT, empty STDOUT, END_REQUEST);
 *   /big     10 MiB (FastCGI: in STDOUT records of 65528 bytes) from one prebuilt buffer,
 *            written as the socket takes it;
 *   /upload  the body read and dropped (FastCGI: STDIN content skipped as it arrives, never
 *            copied), then its length.
 * FastCGI connections close after the answer unless the web server set FCGI_KEEP_CONN; SCGI
 * connections always do. Like appserver, it reads a new connection at once and registers it
 * with epoll only when a read would block. The page is told by "/big" or "/upload" anywhere in
 * the request's parameters: the benchmark's URIs are the only ones it gets.
 * With --procs N it forks N-1 more processes after listen, each with its own epoll on the
 * shared listener, as appserver's prefork workers and uWSGI's processes are: what a pool of N
 * processes can reach, which is less than one (each runs dry and sleeps more often). A pool
 * process waits as well as we know how: the listener is registered EPOLLEXCLUSIVE (a new
 * connection wakes one sleeper, not all), and a process that runs dry gives its CPU away once
 * (sched_yield) before it sleeps, as appserver's prefork workers do: behind nginx on the same
 * cores the next connection is usually there when it looks again. One process does neither:
 * for it, the yield only costs (measured: 65 against 77-80 thousand requests/s).
 * With --serial a process has one answer in flight at a time, as a prefork worker (Django's
 * prefork, uWSGI's processes, php-fpm's children, appserver's prefork pool) serves one request
 * at a time: while an answer is owed it waits for that socket alone, accepting and reading
 * nothing else. It only matters for /big (the other answers go out in one write): what a pool
 * of N such processes can relay, against N processes that interleave all fifty.
 * Usage: floor [--procs N] [--serial] [--scgi] SOCKET_PATH */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stddef.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define BIG_LEN (10u << 20)   /* the benchmark's /big and /upload, 10 MiB */
#define STDOUT_CHUNK 65528u   /* the largest multiple of 8 a FastCGI record holds: no padding */
#define MAX_CONNS 65536

enum page { HELLO, BIG, UPLOAD };
struct conn {  /* the state before `buf` is zeroed for each new connection */
    size_t len;
    int keep, registered, writing;
    enum page page;
    size_t skip;              /* bytes still to drop: STDIN content and padding, or SCGI body */
    size_t body;              /* body bytes seen */
    int headed;               /* SCGI: the netstring is in */
    const unsigned char *out; size_t out_len;
    unsigned char buf[16384];
    unsigned char small[256];
};
static struct conn *conns[MAX_CONNS];
static int ep, scgi, serial;
static int busy = -1;        /* --serial: the connection whose answer is owed, or -1 */
static unsigned char *big;    /* the whole /big answer, for request id 1 (nginx's only id) */
static size_t big_len;

static size_t fcgi_header(unsigned char *h, int type, unsigned id, size_t clen, size_t pad) {
    unsigned char r[8] = {1, type, id >> 8, id & 255, clen >> 8, clen & 255, pad, 0};
    memcpy(h, r, 8);
    return 8;
}

/* A FastCGI answer of STDOUT `head` + `body_len` bytes of 'x', empty STDOUT, END_REQUEST. */
static size_t fcgi_answer(unsigned char *out, unsigned id, const char *head, size_t body_len) {
    size_t n = 0, hlen = strlen(head), pad = (8 - hlen % 8) % 8;
    n += fcgi_header(out + n, 6, id, hlen, pad);
    memcpy(out + n, head, hlen); n += hlen; memset(out + n, 0, pad); n += pad;
    for (size_t left = body_len; left; ) {
        size_t c = left < STDOUT_CHUNK ? left : STDOUT_CHUNK, p = (8 - c % 8) % 8;
        n += fcgi_header(out + n, 6, id, c, p);
        memset(out + n, 'x', c); n += c; memset(out + n, 0, p); n += p;
        left -= c;
    }
    n += fcgi_header(out + n, 6, id, 0, 0);
    n += fcgi_header(out + n, 3, id, 8, 0);
    memset(out + n, 0, 8); n += 8;
    return n;
}

static const char HELLO_HEAD[] = "Status: 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, world\n";
static const char BIG_HEAD[] = "Status: 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 10485760\r\n\r\n";

static void watch(int fd, struct conn *k, unsigned events) {
    struct epoll_event ce = {.events = events, .data.fd = fd};
    epoll_ctl(ep, k->registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &ce);
    k->registered = 1;
}

static void finish(int fd) { conns[fd]->writing = 0; close(fd); }  /* also leaves the epoll set */

/* Writes what is owed; 1 when all of it is out, 0 when the socket is full (then it waits
 * for EPOLLOUT), -1 on error. */
static int flush(int fd, struct conn *k) {
    while (k->out_len) {
        ssize_t w = write(fd, k->out, k->out_len);
        if (w < 0) {
            if (errno != EAGAIN) return -1;
            if (!k->writing) { k->writing = 1; watch(fd, k, EPOLLOUT); }
            return 0;
        }
        k->out += w; k->out_len -= w;
    }
    if (k->writing) { k->writing = 0; watch(fd, k, EPOLLIN); }
    return 1;
}

/* Starts the answer to the request in `k`; 1 if the connection is done with (closed). */
static int answer(int fd, struct conn *k, unsigned id) {
    if (k->page == BIG) {
        if (!scgi && id != 1) { fprintf(stderr, "floor: request id %u, not 1\n", id); finish(fd); return 1; }
        k->out = big; k->out_len = big_len;
    } else {
        char length[128];
        const char *head = HELLO_HEAD;
        if (k->page == UPLOAD) {
            snprintf(length, sizeof length, "Status: 200 OK\r\nContent-Type: text/plain\r\n\r\n%zu\n", k->body);
            head = length;
        }
        k->out = k->small;
        k->out_len = scgi ? (size_t)snprintf((char *)k->small, sizeof k->small, "%s", head)
                          : fcgi_answer(k->small, id, head, 0);
    }
    int r = flush(fd, k);
    if (r < 0 || (r == 1 && (scgi || !k->keep))) { finish(fd); return 1; }
    return 0;
}

static enum page page_of(const unsigned char *p, size_t n) {
    if (memmem(p, n, "/big", 4)) return BIG;
    if (memmem(p, n, "/upload", 7)) return UPLOAD;
    return HELLO;
}

/* Consumes the FastCGI records in the buffer; 1 if the connection was closed. */
static int fcgi_records(int fd, struct conn *k) {
    size_t at = 0;
    for (;;) {
        if (k->skip) {
            size_t s = k->len - at < k->skip ? k->len - at : k->skip;
            k->skip -= s; at += s;
            if (k->skip) break;
        }
        if (k->len - at < 8) break;
        unsigned char *h = k->buf + at;
        size_t clen = (h[4] << 8) | h[5], pad = h[6];
        unsigned id = (h[2] << 8) | h[3];
        if (h[1] == 5 && clen) {  /* STDIN content: counted, dropped as it comes */
            k->body += clen; k->skip = clen + pad; at += 8;
            continue;
        }
        if (k->len - at < 8 + clen + pad) break;
        if (h[1] == 1) { k->keep = h[8 + 2] & 1; k->page = HELLO; k->body = 0; }
        if (h[1] == 4 && clen && k->page == HELLO) k->page = page_of(h + 8, clen);
        at += 8 + clen + pad;
        if (h[1] == 5 && answer(fd, k, id)) return 1;
        if (k->out_len) break;  /* nginx sends nothing more before the answer is out */
    }
    memmove(k->buf, k->buf + at, k->len - at); k->len -= at;
    return 0;
}

/* Consumes the SCGI request in the buffer; 1 if the connection was closed. */
static int scgi_request(int fd, struct conn *k) {
    size_t at = 0;
    if (!k->headed) {
        unsigned char *colon = memchr(k->buf, ':', k->len);
        if (!colon) return 0;
        size_t hlen = strtoul((char *)k->buf, NULL, 10), start = colon + 1 - k->buf;
        if (k->len < start + hlen + 1) return 0;
        /* The first header is CONTENT_LENGTH (SCGI's rule). */
        k->skip = strtoul((char *)k->buf + start + sizeof "CONTENT_LENGTH", NULL, 10);
        k->body = k->skip;
        k->page = page_of(k->buf + start, hlen);
        k->headed = 1;
        at = start + hlen + 1;
    }
    size_t s = k->len - at < k->skip ? k->len - at : k->skip;
    k->skip -= s;
    k->len = 0;
    if (!k->skip) return answer(fd, k, 0);
    return 0;
}

static void handle(int fd, unsigned events) {
    struct conn *k = conns[fd];
    if (k->writing) {
        if (!(events & EPOLLOUT)) return;
        int r = flush(fd, k);
        if (r == 0) return;
        if (r < 0 || scgi || !k->keep) { finish(fd); return; }
    }
    for (;;) {
        ssize_t r = read(fd, k->buf + k->len, sizeof k->buf - k->len);
        if (r < 0) { if (!k->registered) watch(fd, k, EPOLLIN); return; }
        if (r == 0) { finish(fd); return; }
        k->len += r;
        if (scgi ? scgi_request(fd, k) : fcgi_records(fd, k)) return;
        if (k->writing) return;
    }
}

int main(int argc, char **argv) {
    int procs = 1;
    if (argc >= 4 && !strcmp(argv[1], "--procs")) { procs = atoi(argv[2]); argv += 2; argc -= 2; }
    if (argc >= 3 && !strcmp(argv[1], "--serial")) { serial = 1; argv++; argc--; }
    if (argc == 3 && !strcmp(argv[1], "--scgi")) { scgi = 1; argv++; argc--; }
    if (argc != 2 || procs < 1) {
        fprintf(stderr, "usage: floor [--procs N] [--serial] [--scgi] SOCKET_PATH\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);  /* nginx closes a connection mid-answer when wrk stops */
    big = malloc(BIG_LEN + BIG_LEN / STDOUT_CHUNK * 8 + 1024);
    if (scgi) {
        big_len = strlen(BIG_HEAD);
        memcpy(big, BIG_HEAD, big_len);
        memset(big + big_len, 'x', BIG_LEN); big_len += BIG_LEN;
    } else {
        big_len = fcgi_answer(big, 1, BIG_HEAD, BIG_LEN);
    }
    int l = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(argv[1]) >= sizeof a.sun_path) { fprintf(stderr, "floor: path too long\n"); return 2; }
    strcpy(a.sun_path, argv[1]);
    unlink(argv[1]);
    if (bind(l, (void *)&a, sizeof a) || listen(l, 1024)) { perror("floor: listen"); return 1; }
    /* The other processes share the listener, as prefork workers do; each has its own epoll
     * and dies with the first, which the benchmark stops by its pid. */
    for (int i = 1; i < procs; i++) {
        pid_t pid = fork();
        if (pid < 0) { perror("floor: fork"); return 1; }
        if (pid == 0) { prctl(PR_SET_PDEATHSIG, SIGTERM); break; }
    }
    ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN | (procs > 1 ? EPOLLEXCLUSIVE : 0), .data.fd = l};
    epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev);
    struct epoll_event evs[64];
    for (;;) {
        if (busy >= 0) {  /* --serial: the owed answer first, and nothing else meanwhile */
            struct pollfd p = {.fd = busy, .events = POLLOUT};
            if (poll(&p, 1, -1) < 0) continue;
            int fd = busy;
            handle(fd, EPOLLOUT);  /* an error or hang-up fails the write: closed */
            if (!conns[fd]->writing) busy = -1;
            continue;
        }
        int n = epoll_wait(ep, evs, 64, procs > 1 ? 0 : -1);
        if (n == 0) {
            sched_yield();
            n = epoll_wait(ep, evs, 64, -1);
        }
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == l) {
                int c;
                while ((c = accept4(l, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                    if (c >= MAX_CONNS) { close(c); continue; }
                    if (!conns[c]) conns[c] = malloc(sizeof(struct conn));
                    memset(conns[c], 0, offsetof(struct conn, buf));
                    handle(c, EPOLLIN);
                    if (serial && conns[c]->writing) { busy = c; break; }
                }
                if (busy >= 0) break;  /* the rest of the events come back: level-triggered */
                continue;
            }
            handle(fd, evs[i].events);
            if (serial && conns[fd]->writing) { busy = fd; break; }
        }
    }
}
