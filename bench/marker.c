/*
 * marker: the "success action" every peer runs when it opens.
 *
 * It appends one line, "<CLOCK_MONOTONIC ns> <args...>", to a stamp file, so
 * the benchmark can compare that instant with the CLOCK_MONOTONIC reading it
 * took just before spawning the client. It is C rather than a script so the
 * action itself adds well under a millisecond to the figure being measured.
 *
 * The stamp file is "-o FILE" if given first, else "<argv[0]>.stamp".  The
 * default matters for knocker, whose on-success argv is fixed
 * ([script, ip, client, index]): a copy of this binary per peer, each
 * writing beside itself, needs no arguments of its own.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);

    char path[4096];
    int first = 1;
    if (argc >= 3 && strcmp(argv[1], "-o") == 0) {
        snprintf(path, sizeof path, "%s", argv[2]);
        first = 3;
    } else {
        snprintf(path, sizeof path, "%s.stamp", argv[0]);
    }

    char line[4096];
    int n = snprintf(line, sizeof line, "%lld",
                     (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec);
    for (int i = first; i < argc && n < (int)sizeof line - 2; i++)
        n += snprintf(line + n, sizeof line - n, " %s", argv[i]);
    if (n > (int)sizeof line - 2)
        n = sizeof line - 2;
    line[n++] = '\n';

    /* O_APPEND keeps each stamp a whole line even if two runs overlap. */
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd < 0) {
        perror(path);
        return 1;
    }
    if (write(fd, line, n) != n) {
        perror("write");
        return 1;
    }
    close(fd);
    return 0;
}
