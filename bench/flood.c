/*
 * flood: a bounded TCP connect flood against loopback ports.
 *
 * Opens non-blocking connections to the given ports at a target rate and
 * closes each as soon as it completes (established or refused), so a daemon
 * under test sees a steady stream of SYNs / accepted connections. It stands
 * in for a scanner or an attacker; it never sends payload.
 *
 * usage: flood [-d DST] [-s SRC[-SRC]] [-r RATE] [-n COUNT] [-t SECONDS]
 *              [-c INFLIGHT] [-x] [-R] PORTS...
 *   -d DST    destination IPv4 (default 127.0.0.1); must be loopback
 *   -s A-B    source addresses to cycle through, e.g. 127.0.0.2-127.0.0.200,
 *             so the flood looks like other hosts and reuses fewer 4-tuples
 *   -r RATE   target connection attempts per second (0 = as fast as possible)
 *   -n COUNT  stop after COUNT attempts (default 100000)
 *   -t SEC    stop after SEC seconds (default 10); whichever comes first
 *   -c N      most connections in flight at once (default 512)
 *   -x        pick ports at random (default: round robin)
 *   -R        close with RST (SO_LINGER 0) so no TIME_WAIT piles up
 *   PORTS     numbers or LO-HI ranges
 * Prints one JSON line: attempts, established, refused, timeouts, errors and
 * completed/s (established + refused per second of the flood).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define MAX_PORTS 65536
#define MAX_FD 65536
#define CONNECT_TIMEOUT 2.0

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint64_t rng = 0x9e3779b97f4a7c15ULL;
static uint64_t next_rand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static int ports[MAX_PORTS];
static int nports;
static double started_at[MAX_FD]; /* 0 = slot free */

static void add_ports(const char *arg)
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
    for (int p = lo; p <= hi && nports < MAX_PORTS; p++)
        ports[nports++] = p;
}

static uint32_t parse_ip(const char *s)
{
    struct in_addr a;
    if (inet_pton(AF_INET, s, &a) != 1) {
        fprintf(stderr, "bad address: %s\n", s);
        exit(2);
    }
    return ntohl(a.s_addr);
}

int main(int argc, char **argv)
{
    uint32_t dst = parse_ip("127.0.0.1");
    uint32_t src_lo = 0, src_hi = 0;
    double rate = 0, limit = 10;
    long long count = 100000;
    int inflight_max = 512, random_ports = 0, rst = 0;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-d") && i + 1 < argc) {
            dst = parse_ip(argv[++i]);
        } else if (!strcmp(a, "-s") && i + 1 < argc) {
            char buf[64];
            snprintf(buf, sizeof buf, "%s", argv[++i]);
            char *dash = strchr(buf, '-');
            if (dash) {
                *dash = 0;
                src_lo = parse_ip(buf);
                src_hi = parse_ip(dash + 1);
            } else {
                src_lo = src_hi = parse_ip(buf);
            }
        } else if (!strcmp(a, "-r") && i + 1 < argc) {
            rate = atof(argv[++i]);
        } else if (!strcmp(a, "-n") && i + 1 < argc) {
            count = atoll(argv[++i]);
        } else if (!strcmp(a, "-t") && i + 1 < argc) {
            limit = atof(argv[++i]);
        } else if (!strcmp(a, "-c") && i + 1 < argc) {
            inflight_max = atoi(argv[++i]);
        } else if (!strcmp(a, "-x")) {
            random_ports = 1;
        } else if (!strcmp(a, "-R")) {
            rst = 1;
        } else {
            add_ports(a);
        }
    }
    /* Loopback only: this tool must never aim at another host. */
    if ((dst >> 24) != 127 || (src_lo && ((src_lo >> 24) != 127 || (src_hi >> 24) != 127))) {
        fprintf(stderr, "flood: only 127.0.0.0/8 addresses are allowed\n");
        return 2;
    }
    if (nports == 0 || limit <= 0 || count <= 0 || src_hi < src_lo) {
        fprintf(stderr, "usage: %s [-d DST] [-s SRC[-SRC]] [-r RATE] [-n COUNT] "
                        "[-t SECONDS] [-c INFLIGHT] [-x] [-R] PORTS...\n", argv[0]);
        return 2;
    }

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max < MAX_FD ? rl.rlim_max : MAX_FD;
        setrlimit(RLIMIT_NOFILE, &rl);
        if ((long)rl.rlim_cur - 64 < inflight_max)
            inflight_max = (int)rl.rlim_cur - 64;
    }
    rng ^= (uint64_t)getpid() << 32 ^ (uint64_t)(now() * 1e6);

    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    int ep = epoll_create1(EPOLL_CLOEXEC);
    long long attempts = 0, established = 0, refused = 0, timeouts = 0, errors = 0;
    long long first_errno = 0;
    int inflight = 0, port_i = 0;
    uint32_t src = src_lo;
    double start = now(), last_sweep = start;
    struct epoll_event evs[512];
    struct linger lin = {.l_onoff = 1, .l_linger = 0};

#define FINISH(fd) do { \
        if (rst) setsockopt((fd), SOL_SOCKET, SO_LINGER, &lin, sizeof lin); \
        close(fd); started_at[fd] = 0; inflight--; } while (0)

    for (;;) {
        double t = now();
        int sending = !stop && attempts < count && t - start < limit;
        if (!sending && inflight == 0)
            break;
        if (!sending && t - start > limit + CONNECT_TIMEOUT + 1)
            break; /* hard bound even if the sweep misses something */

        /* Start as many connects as the rate and the in-flight cap allow. */
        long long due = rate > 0 ? (long long)((t - start) * rate) + 1 : count;
        while (sending && attempts < due && attempts < count && inflight < inflight_max) {
            int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
            if (fd < 0 || fd >= MAX_FD) {
                if (fd >= 0) close(fd);
                errors++;
                if (!first_errno) first_errno = errno;
                break;
            }
            attempts++;
            inflight++;
            started_at[fd] = t;
            if (src_lo) {
                int one = 1;
                setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
                struct sockaddr_in sb = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(src)};
                bind(fd, (struct sockaddr *)&sb, sizeof sb);
                src = src >= src_hi ? src_lo : src + 1;
            }
            int port = random_ports ? ports[next_rand() % nports] : ports[port_i++ % nports];
            struct sockaddr_in sd = {.sin_family = AF_INET, .sin_port = htons(port),
                                     .sin_addr.s_addr = htonl(dst)};
            if (connect(fd, (struct sockaddr *)&sd, sizeof sd) == 0) {
                established++;
                FINISH(fd);
            } else if (errno == EINPROGRESS) {
                struct epoll_event ev = {.events = EPOLLOUT, .data.fd = fd};
                epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
            } else if (errno == ECONNREFUSED) {
                refused++;
                FINISH(fd);
            } else {
                if (!first_errno) first_errno = errno;
                errors++;
                FINISH(fd);
            }
        }

        int wait_ms = 1;
        if (!sending)
            wait_ms = 50;
        else if (rate <= 0 && inflight < inflight_max)
            wait_ms = 0;
        int n = epoll_wait(ep, evs, 512, wait_ms);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            int err = 0;
            socklen_t len = sizeof err;
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
            if (err == 0)
                established++;
            else if (err == ECONNREFUSED)
                refused++;
            else {
                if (!first_errno) first_errno = err;
                errors++;
            }
            FINISH(fd); /* close() also removes it from the epoll set */
        }

        /* Give up on connects the target never answered (full backlog). */
        t = now();
        if (t - last_sweep > 0.1) {
            last_sweep = t;
            for (int fd = 0; fd < MAX_FD; fd++) {
                if (started_at[fd] > 0 && t - started_at[fd] > CONNECT_TIMEOUT) {
                    timeouts++;
                    FINISH(fd);
                }
            }
        }
    }

    double wall = now() - start;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    long long done = established + refused;
    printf("{\"tool\": \"flood\", \"target_rate\": %.0f, \"attempts\": %lld, "
           "\"established\": %lld, \"refused\": %lld, \"timeouts\": %lld, \"errors\": %lld, "
           "\"first_error\": \"%s\", \"wall_s\": %.3f, \"completed_per_s\": %.0f, "
           "\"cpu_s\": %.3f}\n",
           rate, attempts, established, refused, timeouts, errors,
           first_errno ? strerror((int)first_errno) : "", wall, wall > 0 ? done / wall : 0.0,
           ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6);
    fflush(stdout);
    return 0;
}
