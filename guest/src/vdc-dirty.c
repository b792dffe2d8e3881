/*
 * vdc-dirty: dirty guest memory at a set rate, for live-migration tests and
 * benchmarks.
 *
 * Why: how long a live migration takes, how long the guest stops, and
 * whether it converges at all depend on how fast the guest rewrites its
 * memory. This program gives tests a known, repeatable load: it allocates a
 * buffer, fills every page with non-zero data (so no page is a "zero page"
 * that the migration stream can skip), then rewrites one 64-bit word in each
 * page, page after page, round the buffer, at RATE MiB of pages per second
 * or as fast as it can ("max"). Rate 0 keeps the buffer allocated and idle.
 *
 * Steps:
 *   1. parse and check the options (exit 2 with a message on bad input);
 *   2. allocate and fill the buffer (mmap, non-zero pseudo-random words);
 *   3. write the pid file and a first stats file: from then on it dirties;
 *   4. loop: dirty the pages that are due by the clock (CLOCK_MONOTONIC,
 *      a token bucket holding at most 100 ms of pages; sleep 1 ms when
 *      none is due), rewrite the stats file about once a
 *      second (temp file + rename), stop after PAGES pages if -n was given.
 *
 * Stats file, one line:
 *   rate=R buffer_mib=B pages=N mib=M mib_s=S elapsed_ms=T
 * R is the asked rate ("max" or MiB/s), N the pages dirtied since the fill,
 * M = N * 4 KiB in MiB, S the rate over the last interval, T the time
 * since the fill.
 *
 * Built static with gcc by scripts/build-guest-image.sh into /bin/vdc-dirty;
 * the guest's TCP service starts and stops it (`dirty ...`, see
 * guest/README.md). It also runs on the host, which its checks use.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096u
#define WORDS_PER_PAGE (PAGE / sizeof(uint64_t))
#define MAX_BUFFER_MIB 4096u
#define MAX_RATE_MIB_S 1000000u

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

static void usage(const char *why)
{
    if (why)
        fprintf(stderr, "vdc-dirty: %s\n", why);
    fprintf(stderr,
            "usage: vdc-dirty [-r RATE] [-b MIB] [-n PAGES] [-s FILE] [-p FILE]\n"
            "  -r RATE   MiB/s of pages to dirty, 0 (idle) or max (default max)\n"
            "  -b MIB    buffer size in MiB, 1-%u (default 64)\n"
            "  -n PAGES  stop after dirtying PAGES pages (default: until killed)\n"
            "  -s FILE   write stats to FILE about once a second\n"
            "  -p FILE   write the pid to FILE once the buffer is filled\n",
            MAX_BUFFER_MIB);
    exit(2);
}

/* Parses a decimal number in [min, max]; returns 0 on success. */
static int parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
    char *end;
    unsigned long long v;
    if (!s || !*s || *s < '0' || *s > '9')
        return -1;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno || *end || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Writes `text` to `path` through a temporary file and a rename, so a
 * reader never sees a half-written file. */
static int write_file(const char *path, const char *text)
{
    char tmp[4096];
    FILE *f;
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return -1;
    f = fopen(tmp, "w");
    if (!f)
        return -1;
    if (fputs(text, f) < 0) {
        fclose(f);
        return -1;
    }
    if (fclose(f) != 0)
        return -1;
    return rename(tmp, path);
}

struct opts {
    int max;          /* dirty as fast as possible */
    uint64_t rate;    /* MiB/s when !max */
    uint64_t buffer;  /* MiB */
    uint64_t limit;   /* pages; 0 = no limit */
    const char *stats;
    const char *pidfile;
};

static void write_stats(const struct opts *o, uint64_t pages, uint64_t elapsed_ns,
                        double mib_s)
{
    char line[256], rate[32];
    if (!o->stats)
        return;
    if (o->max)
        snprintf(rate, sizeof rate, "max");
    else
        snprintf(rate, sizeof rate, "%llu", (unsigned long long)o->rate);
    snprintf(line, sizeof line,
             "rate=%s buffer_mib=%llu pages=%llu mib=%llu mib_s=%.1f elapsed_ms=%llu\n", rate,
             (unsigned long long)o->buffer, (unsigned long long)pages,
             (unsigned long long)(pages * PAGE >> 20), mib_s,
             (unsigned long long)(elapsed_ns / 1000000ull));
    if (write_file(o->stats, line) != 0)
        fprintf(stderr, "vdc-dirty: cannot write %s: %s\n", o->stats, strerror(errno));
}

int main(int argc, char **argv)
{
    struct opts o = {.max = 1, .rate = 0, .buffer = 64, .limit = 0};
    uint64_t *buf, npages, i, x = 0x9e3779b97f4a7c15ull;
    uint64_t start, prev, last_stats, last_pages = 0, pages = 0, cursor = 0, gen = 1;
    double credit = 0.0;
    char pid[32];
    int c;

    while ((c = getopt(argc, argv, "r:b:n:s:p:")) != -1) {
        switch (c) {
        case 'r':
            if (strcmp(optarg, "max") == 0) {
                o.max = 1;
            } else if (parse_u64(optarg, 0, MAX_RATE_MIB_S, &o.rate) == 0) {
                o.max = 0;
            } else {
                usage("-r: give a rate in MiB/s (0 to 1000000) or max");
            }
            break;
        case 'b':
            if (parse_u64(optarg, 1, MAX_BUFFER_MIB, &o.buffer) != 0)
                usage("-b: give a buffer size in MiB (1 to 4096)");
            break;
        case 'n':
            if (parse_u64(optarg, 1, UINT64_MAX, &o.limit) != 0)
                usage("-n: give a number of pages (1 or more)");
            break;
        case 's':
            o.stats = optarg;
            break;
        case 'p':
            o.pidfile = optarg;
            break;
        default:
            usage(NULL);
        }
    }
    if (optind != argc)
        usage("unexpected argument");

    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);

    npages = o.buffer * (1024 * 1024 / PAGE);
    buf = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED) {
        fprintf(stderr, "vdc-dirty: cannot allocate %llu MiB: %s\n",
                (unsigned long long)o.buffer, strerror(errno));
        return 1;
    }
    /* Fill: xorshift64 words with the low bit set, so none is zero. */
    for (i = 0; i < npages * WORDS_PER_PAGE; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf[i] = x | 1;
    }

    if (o.pidfile) {
        snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
        if (write_file(o.pidfile, pid) != 0) {
            fprintf(stderr, "vdc-dirty: cannot write %s: %s\n", o.pidfile, strerror(errno));
            return 1;
        }
    }
    start = last_stats = now_ns();
    write_stats(&o, 0, 0, 0.0);

    prev = start;
    while (!stop) {
        uint64_t t = now_ns(), batch;
        if (o.max) {
            batch = 256;
        } else {
            /* A token bucket: rate MiB/s = rate * 256 pages/s, at most
             * 100 ms of backlog, so a guest paused for a while (or a slow
             * vCPU) does not burst afterwards. */
            double per_s = (double)o.rate * 256.0, cap = per_s / 10.0;
            credit += per_s * (double)(t - prev) / 1e9;
            if (credit > cap)
                credit = cap < 1.0 ? 1.0 : cap;
            batch = (uint64_t)credit;
            credit -= (double)batch;
        }
        prev = t;
        if (o.limit && pages + batch > o.limit)
            batch = o.limit - pages;
        if (batch > 4096)
            batch = 4096; /* keep the stats and the stop check timely */
        for (i = 0; i < batch; i++) {
            /* A new non-zero value at a moving offset in the page. */
            buf[cursor * WORDS_PER_PAGE + (gen % WORDS_PER_PAGE)] = (gen << 1) | 1;
            if (++cursor == npages) {
                cursor = 0;
                gen++;
            }
        }
        pages += batch;
        if (t - last_stats >= 1000000000ull) {
            write_stats(&o, pages, t - start,
                        (double)(pages - last_pages) * PAGE / 1048576.0 /
                            ((double)(t - last_stats) / 1e9));
            last_stats = t;
            last_pages = pages;
        }
        if (o.limit && pages >= o.limit)
            break;
        if (batch == 0) {
            /* Idle (rate 0) wakes 10 times a second, a paced rate 1000. */
            struct timespec ms = {0, o.rate == 0 ? 100000000 : 1000000};
            nanosleep(&ms, NULL);
        }
    }
    {
        uint64_t t = now_ns();
        double secs = (double)(t - start) / 1e9;
        write_stats(&o, pages, t - start,
                    secs > 0 ? (double)pages * PAGE / 1048576.0 / secs : 0.0);
    }
    /* Every page must still hold non-zero data (the check of -n runs). */
    for (i = 0; i < npages; i++) {
        uint64_t w, nonzero = 0;
        for (w = 0; w < WORDS_PER_PAGE; w++)
            nonzero |= buf[i * WORDS_PER_PAGE + w];
        if (!nonzero) {
            fprintf(stderr, "vdc-dirty: page %llu is zero\n", (unsigned long long)i);
            return 1;
        }
    }
    return 0;
}
