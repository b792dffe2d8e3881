/*
 * vdc-qga: a tiny QEMU guest agent for the vdc guest image.
 *
 * It answers the subset of the QEMU guest agent protocol (QGA) that vdc
 * uses, on the virtio-serial port named org.qemu.guest_agent.0:
 *   guest-sync-delimited {"id":N} -> 0xFF {"return": N}
 *   guest-sync {"id":N}           -> {"return": N}
 *   guest-ping                    -> {"return": {}}
 *   guest-fsfreeze-status         -> {"return": "thawed"|"frozen"}
 *   guest-fsfreeze-freeze         -> {"return": COUNT}  (FIFREEZE on every
 *                                    ext2/3/4, xfs and btrfs mount)
 *   guest-fsfreeze-thaw           -> {"return": COUNT}  (FITHAW)
 *   vdc-set-identity {"hostname":H,"ip":A/P,"gw":G,"mac":M}
 *                                 -> runs /etc/vdc/set-identity H A G M
 *                                    (empty strings for absent values)
 * Anything else gets {"error":{"class":"CommandNotFound",...}}.
 *
 * Requests are JSON objects, with or without a newline after them; a 0xFF
 * byte resets the parser (as in QGA). A guest left frozen for 10 s without
 * a thaw (the host went away mid-snapshot) thaws itself.
 *
 * While the host side of the port is not connected, read() returns 0 at
 * once; the loop then waits 50 ms and tries again.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PORT_NAME "org.qemu.guest_agent.0"
#define MAX_REQ 4096
#define MAX_FS 16
#define AUTO_THAW_MS 10000

static char frozen_paths[MAX_FS][256];
static int frozen_count = 0;
static int frozen = 0;
static long long frozen_since_ms = 0;

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Opens the agent's port, creating its device node if devtmpfs has none. */
static int open_port(void)
{
    DIR *d = opendir("/sys/class/virtio-ports");
    struct dirent *e;
    int fd = -1;
    if (!d)
        return -1;
    while ((e = readdir(d)) != NULL) {
        char path[512], name[128] = {0}, dev[300];
        FILE *f;
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
        f = fopen(path, "r");
        if (!f)
            continue;
        if (!fgets(name, sizeof name, f))
            name[0] = 0;
        fclose(f);
        name[strcspn(name, "\n")] = 0;
        if (strcmp(name, PORT_NAME) != 0)
            continue;
        snprintf(dev, sizeof dev, "/dev/%s", e->d_name);
        if (access(dev, F_OK) != 0) {
            unsigned maj, min;
            snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/dev", e->d_name);
            f = fopen(path, "r");
            if (f) {
                if (fscanf(f, "%u:%u", &maj, &min) == 2)
                    mknod(dev, S_IFCHR | 0600, makedev(maj, min));
                fclose(f);
            }
        }
        fd = open(dev, O_RDWR | O_CLOEXEC);
        break;
    }
    closedir(d);
    return fd;
}

static void reply(int fd, const char *text)
{
    size_t len = strlen(text), off = 0;
    while (off < len) {
        ssize_t n = write(fd, text + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return;
        off += (size_t)n;
    }
}

static void reply_error(int fd, const char *class, const char *desc)
{
    char buf[1024];
    snprintf(buf, sizeof buf, "{\"error\": {\"class\": \"%s\", \"desc\": \"%s\"}}\n", class, desc);
    reply(fd, buf);
}

/* The string value of "key" in the JSON object `req` (no escapes, at most
 * `cap`-1 bytes), or -1 when absent. */
static int json_string(const char *req, const char *key, char *out, size_t cap)
{
    char pat[64];
    const char *p, *end;
    snprintf(pat, sizeof pat, "\"%s\"", key);
    p = strstr(req, pat);
    if (!p)
        return -1;
    p += strlen(pat);
    while (*p == ' ' || *p == ':' || *p == '\t' || *p == '\n' || *p == '\r')
        p++;
    if (*p != '"')
        return -1;
    p++;
    end = strchr(p, '"');
    if (!end || (size_t)(end - p) >= cap)
        return -1;
    memcpy(out, p, (size_t)(end - p));
    out[end - p] = 0;
    return 0;
}

/* The integer value of "key" in `req`, or -1 when absent. */
static int json_int(const char *req, const char *key, long long *out)
{
    char pat[64];
    const char *p;
    char *end;
    snprintf(pat, sizeof pat, "\"%s\"", key);
    p = strstr(req, pat);
    if (!p)
        return -1;
    p += strlen(pat);
    while (*p == ' ' || *p == ':' || *p == '\t')
        p++;
    *out = strtoll(p, &end, 10);
    return end == p ? -1 : 0;
}

static int thaw_all(void)
{
    int n = 0;
    for (int i = frozen_count - 1; i >= 0; i--) {
        int fd = open(frozen_paths[i], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
            continue;
        if (ioctl(fd, FITHAW, 0) == 0)
            n++;
        close(fd);
    }
    frozen_count = 0;
    frozen = 0;
    return n;
}

/* Freezes every local disk file system; on failure thaws what it froze. */
static int freeze_all(char *why, size_t cap)
{
    FILE *m = fopen("/proc/mounts", "r");
    char dev[256], dir[256], type[64], rest[512];
    if (!m) {
        snprintf(why, cap, "cannot read /proc/mounts");
        return -1;
    }
    frozen_count = 0;
    while (fscanf(m, "%255s %255s %63s %511[^\n]", dev, dir, type, rest) == 4) {
        int fd, dup = 0;
        if (strcmp(type, "ext4") && strcmp(type, "ext3") && strcmp(type, "ext2") &&
            strcmp(type, "xfs") && strcmp(type, "btrfs"))
            continue;
        for (int i = 0; i < frozen_count; i++)
            if (!strcmp(frozen_paths[i], dir))
                dup = 1;
        if (dup || frozen_count >= MAX_FS)
            continue;
        fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
            continue;
        if (ioctl(fd, FIFREEZE, 0) != 0 && errno != EBUSY) {
            snprintf(why, cap, "cannot freeze %s: %s", dir, strerror(errno));
            close(fd);
            fclose(m);
            thaw_all();
            return -1;
        }
        close(fd);
        snprintf(frozen_paths[frozen_count], sizeof frozen_paths[0], "%s", dir);
        frozen_count++;
    }
    fclose(m);
    frozen = 1;
    frozen_since_ms = now_ms();
    return frozen_count;
}

static int safe_arg(const char *s)
{
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '-' || *s == '.' || *s == '/' || *s == ':'))
            return 0;
    return 1;
}

static void set_identity(int fd, const char *req)
{
    char host[128] = "", ip[64] = "", gw[64] = "", mac[32] = "";
    pid_t pid;
    int status = 0;
    json_string(req, "hostname", host, sizeof host);
    json_string(req, "ip", ip, sizeof ip);
    json_string(req, "gw", gw, sizeof gw);
    json_string(req, "mac", mac, sizeof mac);
    if (!safe_arg(host) || !safe_arg(ip) || !safe_arg(gw) || !safe_arg(mac)) {
        reply_error(fd, "InvalidParameter", "bad character in an identity value");
        return;
    }
    pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", O_RDWR);
        if (null >= 0) {
            dup2(null, 0);
            dup2(null, 1);
            dup2(null, 2);
        }
        execl("/etc/vdc/set-identity", "set-identity", host, ip, gw, mac, (char *)NULL);
        _exit(127);
    }
    if (pid < 0 || waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        reply_error(fd, "GenericError", "set-identity failed");
        return;
    }
    reply(fd, "{\"return\": {}}\n");
}

static void handle(int fd, const char *req)
{
    char cmd[64], buf[640];
    long long id;
    if (json_string(req, "execute", cmd, sizeof cmd) != 0) {
        reply_error(fd, "GenericError", "no execute member");
        return;
    }
    if (!strcmp(cmd, "guest-sync-delimited") || !strcmp(cmd, "guest-sync")) {
        if (json_int(req, "id", &id) != 0) {
            reply_error(fd, "GenericError", "guest-sync needs an id");
            return;
        }
        snprintf(buf, sizeof buf, "%s{\"return\": %lld}\n",
                 cmd[10] == '-' ? "\xff" : "", id);
        reply(fd, buf);
    } else if (!strcmp(cmd, "guest-ping")) {
        reply(fd, "{\"return\": {}}\n");
    } else if (!strcmp(cmd, "guest-fsfreeze-status")) {
        reply(fd, frozen ? "{\"return\": \"frozen\"}\n" : "{\"return\": \"thawed\"}\n");
    } else if (!strcmp(cmd, "guest-fsfreeze-freeze")) {
        char why[400];
        int n;
        if (frozen) {
            reply_error(fd, "GenericError", "file systems are already frozen");
            return;
        }
        sync();
        n = freeze_all(why, sizeof why);
        if (n < 0) {
            reply_error(fd, "GenericError", why);
            return;
        }
        snprintf(buf, sizeof buf, "{\"return\": %d}\n", n);
        reply(fd, buf);
    } else if (!strcmp(cmd, "guest-fsfreeze-thaw")) {
        snprintf(buf, sizeof buf, "{\"return\": %d}\n", thaw_all());
        reply(fd, buf);
    } else if (!strcmp(cmd, "vdc-set-identity")) {
        set_identity(fd, req);
    } else {
        snprintf(buf, sizeof buf, "The command %s has not been found", cmd);
        reply_error(fd, "CommandNotFound", buf);
    }
}

int main(void)
{
    static char req[MAX_REQ];
    size_t len = 0;
    int depth = 0, in_str = 0, esc = 0;
    int fd = -1;
    for (;;) {
        unsigned char chunk[512];
        ssize_t n;
        if (frozen && now_ms() - frozen_since_ms > AUTO_THAW_MS)
            thaw_all();
        if (fd < 0) {
            fd = open_port();
            if (fd < 0) {
                usleep(200000);
                continue;
            }
        }
        n = read(fd, chunk, sizeof chunk);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            close(fd);
            fd = -1;
            usleep(200000);
            continue;
        }
        if (n == 0) {
            /* No host connected: nothing to read until one is. */
            usleep(50000);
            continue;
        }
        for (ssize_t i = 0; i < n; i++) {
            unsigned char c = chunk[i];
            if (c == 0xff) {
                len = 0;
                depth = in_str = esc = 0;
                continue;
            }
            if (depth == 0 && c != '{')
                continue;
            if (len + 1 >= sizeof req) {
                len = 0;
                depth = in_str = esc = 0;
                reply_error(fd, "GenericError", "request too long");
                continue;
            }
            req[len++] = (char)c;
            if (in_str) {
                if (esc)
                    esc = 0;
                else if (c == '\\')
                    esc = 1;
                else if (c == '"')
                    in_str = 0;
            } else if (c == '"') {
                in_str = 1;
            } else if (c == '{') {
                depth++;
            } else if (c == '}') {
                depth--;
                if (depth == 0) {
                    req[len] = 0;
                    handle(fd, req);
                    len = 0;
                }
            }
        }
    }
}
