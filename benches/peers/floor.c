/* fcgi-floor, the peer benchmark's floor (docs/performance.md): the least CPU a FastCGI
 * responder can spend on a request. One thread, no parsing beyond record boundaries, the
 * same canned hello for every request in one write (STDOUT, empty STDOUT, END_REQUEST), the
 * connection closed after it unless the web server set FCGI_KEEP_CONN. Like appserver, it
 * reads a new connection at once and registers it with epoll only when a read would block.
 * It serves `/` only: its backend CPU per request is the floor of that column, what the
 * kernel costs for accept, read, write and close. Usage: fcgi-floor SOCKET_PATH */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

struct conn { unsigned char buf[16384]; size_t len; int keep; };
static struct conn *conns[65536];

static size_t response(unsigned char *out, unsigned id) {
    static const char body[] = "Status: 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, world\n";
    size_t blen = sizeof body - 1, pad = (8 - blen % 8) % 8, n = 0;
    unsigned char h[8] = {1, 6, id >> 8, id & 255, blen >> 8, blen & 255, pad, 0};
    memcpy(out + n, h, 8); n += 8; memcpy(out + n, body, blen); n += blen; memset(out + n, 0, pad); n += pad;
    unsigned char e[8] = {1, 6, id >> 8, id & 255, 0, 0, 0, 0}; memcpy(out + n, e, 8); n += 8;
    unsigned char end[16] = {1, 3, id >> 8, id & 255, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    memcpy(out + n, end, 16); n += 16;
    return n;
}

static int ep;
/* Reads what is there and answers complete requests; registers the connection with epoll
 * only when a read would block (as appserver does). */
static void handle(int fd, int registered) {
    static unsigned char out[256];
    struct conn *k = conns[fd];
    for (;;) {
        ssize_t r = read(fd, k->buf + k->len, sizeof k->buf - k->len);
        if (r < 0 && !registered) {
            struct epoll_event ce = {.events = EPOLLIN, .data.fd = fd};
            epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ce);
            return;
        }
        if (r < 0) return;
        if (r == 0) { close(fd); return; }
        k->len += r;
        size_t at = 0; int closeit = 0;
        while (k->len - at >= 8) {
            unsigned char *h = k->buf + at;
            size_t clen = (h[4] << 8) | h[5], rlen = 8 + clen + h[6];
            if (k->len - at < rlen) break;
            unsigned id = (h[2] << 8) | h[3];
            if (h[1] == 1) k->keep = h[8 + 2] & 1;
            if (h[1] == 5 && clen == 0) {
                size_t m = response(out, id);
                if (write(fd, out, m) != (ssize_t)m) closeit = 1;
                if (!k->keep) closeit = 1;
            }
            at += rlen;
        }
        memmove(k->buf, k->buf + at, k->len - at); k->len -= at;
        if (closeit) { close(fd); return; }
        if (registered) return;
    }
}

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: fcgi-floor SOCKET_PATH\n"); return 2; }
    int l = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(argv[1]) >= sizeof a.sun_path) { fprintf(stderr, "fcgi-floor: path too long\n"); return 2; }
    strcpy(a.sun_path, argv[1]);
    unlink(argv[1]);
    if (bind(l, (void *)&a, sizeof a) || listen(l, 1024)) { perror("fcgi-floor: listen"); return 1; }
    ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = l};
    epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev);
    struct epoll_event evs[64];
    for (;;) {
        int n = epoll_wait(ep, evs, 64, -1);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == l) {
                int c;
                while ((c = accept4(l, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                    if (c >= 65536) { close(c); continue; }
                    if (!conns[c]) conns[c] = malloc(sizeof(struct conn));
                    conns[c]->len = 0; conns[c]->keep = 0;
                    handle(c, 0);
                }
                continue;
            }
            handle(fd, 1);
        }
    }
}
