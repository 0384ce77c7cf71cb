/*
 * accept_loop: the floor for "accept a TCP connection, record it, close it".
 *
 * Listens on every given port of one address, accepts whatever epoll reports
 * and closes it at once, counting accepts. This is the least work any pool
 * port server can do per hit, so knocker's pool can be compared with it.
 *
 * usage: accept_loop [-a ADDR] [-t SECONDS] [-b BACKLOG] PORTS...
 *   PORTS are numbers or LO-HI ranges. Runs until SIGTERM/SIGINT or the time
 *   bound (default 60 s), then prints one JSON line with the accept count and
 *   the CPU time it used (getrusage), so cost per accept can be derived.
 *   It prints "ready" on stderr once every port listens.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_PORTS 4096

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int add_ports(const char *arg, int *ports, int n)
{
    int lo, hi;
    char dash;
    if (sscanf(arg, "%d%c%d", &lo, &dash, &hi) == 3 && dash == '-') {
    } else if (sscanf(arg, "%d", &lo) == 1) {
        hi = lo;
    } else {
        fprintf(stderr, "bad port spec: %s\n", arg);
        exit(2);
    }
    if (lo < 1 || hi > 65535 || lo > hi) {
        fprintf(stderr, "bad port range: %s\n", arg);
        exit(2);
    }
    for (int p = lo; p <= hi; p++) {
        if (n >= MAX_PORTS) {
            fprintf(stderr, "too many ports (max %d)\n", MAX_PORTS);
            exit(2);
        }
        ports[n++] = p;
    }
    return n;
}

int main(int argc, char **argv)
{
    const char *addr = "127.0.0.1";
    double limit = 60.0;
    int backlog = 4096;
    static int ports[MAX_PORTS];
    int nports = 0;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-a") == 0 && i + 1 < argc)
            addr = argv[++i];
        else if (strcmp(argv[i], "-t") == 0 && i + 1 < argc)
            limit = atof(argv[++i]);
        else if (strcmp(argv[i], "-b") == 0 && i + 1 < argc)
            backlog = atoi(argv[++i]);
        else
            nports = add_ports(argv[i], ports, nports);
    }
    if (nports == 0) {
        fprintf(stderr, "usage: %s [-a ADDR] [-t SECONDS] [-b BACKLOG] PORTS...\n", argv[0]);
        return 2;
    }

    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) { perror("epoll_create1"); return 1; }

    for (int i = 0; i < nports; i++) {
        int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        int one = 1;
        setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        struct sockaddr_in sin = {0};
        sin.sin_family = AF_INET;
        sin.sin_port = htons(ports[i]);
        if (inet_pton(AF_INET, addr, &sin.sin_addr) != 1) {
            fprintf(stderr, "bad address %s\n", addr);
            return 2;
        }
        if (bind(s, (struct sockaddr *)&sin, sizeof sin) < 0 || listen(s, backlog) < 0) {
            fprintf(stderr, "port %d: %s\n", ports[i], strerror(errno));
            return 1;
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = s};
        epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev);
    }
    fprintf(stderr, "ready\n");

    unsigned long long accepts = 0, errors = 0;
    double start = now(), first = 0, last = 0;
    struct epoll_event evs[256];
    while (!stop) {
        double left = limit - (now() - start);
        if (left <= 0)
            break;
        int timeout = left > 0.2 ? 200 : (int)(left * 1000) + 1;
        int n = epoll_wait(ep, evs, 256, timeout);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            perror("epoll_wait");
            break;
        }
        for (int i = 0; i < n; i++) {
            /* Drain the backlog: one wakeup may cover many connections. */
            for (;;) {
                int c = accept4(evs[i].data.fd, NULL, NULL, SOCK_CLOEXEC);
                if (c < 0) {
                    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                        errors++;
                    break;
                }
                close(c);
                accepts++;
                last = now();
                if (accepts == 1)
                    first = last;
            }
        }
    }

    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double user = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6;
    double sys = ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
    double active = accepts > 1 ? last - first : 0;
    printf("{\"tool\": \"accept_loop\", \"ports\": %d, \"accepts\": %llu, \"errors\": %llu, "
           "\"wall_s\": %.3f, \"active_s\": %.3f, \"cpu_user_s\": %.3f, \"cpu_sys_s\": %.3f, "
           "\"cpu_us_per_accept\": %.2f}\n",
           nports, accepts, errors, now() - start, active, user, sys,
           accepts ? (user + sys) * 1e6 / accepts : 0.0);
    fflush(stdout);
    return 0;
}
