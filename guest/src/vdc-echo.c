/*
 * vdc-echo: the guest's UDP service, for clients that poll the guest every
 * few milliseconds (the live-migration benchmark measures the longest gap
 * in the answers).
 *
 * Why UDP: a client polling over TCP that loses a request while the guest
 * stops waits for TCP's retransmission timer (at least 200 ms), so the gap
 * it sees says more about TCP than about the guest. Over UDP every request
 * stands alone: the first one the guest receives after it resumes is
 * answered at once.
 *
 * Protocol: each datagram received on UDP port PORT (default 7777) is
 * answered, to its sender, with one datagram
 *   BOOT_ID COUNTER PAYLOAD
 * where BOOT_ID is /proc/sys/kernel/random/boot_id, COUNTER the guest's
 * counter (/run/vdc/counter, 0 if unreadable) and PAYLOAD the request's
 * bytes (at most 256 are kept). Started by /etc/vdc/rc.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Reads the first line of `path` into `out` (without the newline). */
static void read_line(const char *path, char *out, size_t size, const char *fallback)
{
    int fd = open(path, O_RDONLY);
    ssize_t n = -1;
    if (fd >= 0) {
        n = read(fd, out, size - 1);
        close(fd);
    }
    if (n <= 0) {
        snprintf(out, size, "%s", fallback);
        return;
    }
    out[n] = 0;
    out[strcspn(out, "\r\n")] = 0;
    if (!*out)
        snprintf(out, size, "%s", fallback);
}

int main(int argc, char **argv)
{
    struct sockaddr_in addr = {0};
    char boot_id[64], counter[32], req[257], reply[400];
    long port = 7777;
    int fd;

    if (argc > 2 || (argc == 2 && ((port = strtol(argv[1], NULL, 10)) < 1 || port > 65535))) {
        fprintf(stderr, "usage: vdc-echo [PORT]\n");
        return 2;
    }
    read_line("/proc/sys/kernel/random/boot_id", boot_id, sizeof boot_id, "unknown");
    fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) {
        perror("vdc-echo: socket");
        return 1;
    }
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)port);
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        perror("vdc-echo: bind");
        return 1;
    }
    for (;;) {
        struct sockaddr_in from;
        socklen_t len = sizeof from;
        ssize_t n = recvfrom(fd, req, sizeof req - 1, 0, (struct sockaddr *)&from, &len);
        int m;
        if (n < 0) {
            if (errno == EINTR)
                continue;
            perror("vdc-echo: recvfrom");
            return 1;
        }
        req[n] = 0;
        req[strcspn(req, "\r\n")] = 0;
        read_line("/run/vdc/counter", counter, sizeof counter, "0");
        m = snprintf(reply, sizeof reply, "%s %s %s", boot_id, counter, req);
        if (m > (int)sizeof reply - 1)
            m = sizeof reply - 1;
        sendto(fd, reply, (size_t)m, 0, (struct sockaddr *)&from, len);
    }
}
