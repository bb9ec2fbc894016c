/* The routing bench's floor: the least a proxy can do between wrk and one instance.
 *
 *     floor_relay UPSTREAM_PORT LISTEN_PORT     (both on 127.0.0.1; LISTEN_PORT 0: any, printed)
 *
 * One epoll loop, one upstream connection per client connection, every read written as is to
 * the other side: no HTTP parsing, no routing, no accounting. Whatever a real router does costs
 * at least this much, so bench_emulator_routing.py prints the router's throughput next to it.
 * Not a product: a bench anchor, built by the bench with gcc into a temporary directory.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAXFD 65536

static int peer[MAXFD];

static struct sockaddr_in loopback(int port) {
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

static void nodelay(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* Writes all of buf; a short write (never seen with small HTTP messages) waits blocking. */
static int write_all(int fd, const char *buf, ssize_t n) {
    int blocking = 0;
    while (n > 0) {
        ssize_t w = write(fd, buf, (size_t)n);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN) return -1;
            fcntl(fd, F_SETFL, 0);
            blocking = 1;
            continue;
        }
        buf += w;
        n -= w;
    }
    if (blocking) fcntl(fd, F_SETFL, O_NONBLOCK);
    return 0;
}

static void watch(int ep, int fd) {
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: floor_relay UPSTREAM_PORT LISTEN_PORT\n");
        return 2;
    }
    struct sockaddr_in up = loopback(atoi(argv[1]));
    struct sockaddr_in me = loopback(atoi(argv[2]));
    int lsock = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(lsock, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lsock, (struct sockaddr *)&me, sizeof me) < 0 || listen(lsock, 1024) < 0) {
        perror("floor_relay: listen");
        return 2;
    }
    socklen_t len = sizeof me;
    getsockname(lsock, (struct sockaddr *)&me, &len);
    printf("%d\n", ntohs(me.sin_port));
    fflush(stdout);

    int ep = epoll_create1(0);
    watch(ep, lsock);
    struct epoll_event events[64];
    static char buf[65536];
    for (;;) {
        int n = epoll_wait(ep, events, 64, -1);
        if (n < 0 && errno != EINTR) return 1;
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == lsock) {
                int c;
                while ((c = accept4(lsock, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    int u = socket(AF_INET, SOCK_STREAM, 0);
                    if (c >= MAXFD || u < 0 || u >= MAXFD ||
                        connect(u, (struct sockaddr *)&up, sizeof up) < 0) {
                        close(c);
                        if (u >= 0) close(u);
                        continue;
                    }
                    fcntl(u, F_SETFL, O_NONBLOCK);
                    nodelay(c);
                    nodelay(u);
                    peer[c] = u;
                    peer[u] = c;
                    watch(ep, c);
                    watch(ep, u);
                }
                continue;
            }
            int other = peer[fd];
            if (other < 0) continue; /* closed earlier in this batch */
            ssize_t r = read(fd, buf, sizeof buf);
            if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            if (r <= 0 || write_all(other, buf, r) < 0) {
                peer[fd] = peer[other] = -1;
                close(other);
                close(fd);
            }
        }
    }
}
