/* clockshift: an LD_PRELOAD library for the fault campaign (lab only, never production).
 *
 * It moves a process's wall clock, and only its wall clock, by a number of seconds read from a
 * file: CLOCK_REALTIME (and _COARSE) through clock_gettime, gettimeofday and time.  Every
 * other clock (CLOCK_MONOTONIC above all) and every sleep or timed wait is left to the C
 * library untouched, so a process's timers keep running as on a host whose wall clock was
 * stepped (what NTP or an operator does).
 *
 * File: CLOCKSHIFT_FILE, one signed integer of seconds ("+0", "+3600", "-3600"), re-read at
 * most once a second (checked on the monotonic clock) with open/read/close only, which are
 * async-signal-safe.  A missing or unreadable file keeps the last offset (0 at start).
 *
 * Why not libfaketime: its 0.9.10 (Debian 12) with FAKETIME_DONT_FAKE_MONOTONIC=1 turns an
 * absolute CLOCK_MONOTONIC clock_nanosleep (Python 3.11's time.sleep) into EINVAL and
 * disturbs timed waits; see docs/reliability.md.
 *
 * Built by lab/faultnet.py:  gcc -shared -fPIC -O2 -o clockshift.so clockshift.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static int (*real_clock_gettime)(clockid_t, struct timespec *);
static long long offset_ns;   /* read and written with __atomic builtins */
static long long checked_at = -1;

static void init_real(void) {
    if (!real_clock_gettime)
        real_clock_gettime = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
}

static void refresh(void) {
    struct timespec mono;
    if (real_clock_gettime(CLOCK_MONOTONIC_COARSE, &mono) != 0)
        return;
    long long sec = (long long)mono.tv_sec;
    long long prev = __atomic_load_n(&checked_at, __ATOMIC_RELAXED);
    if (prev == sec || !__atomic_compare_exchange_n(&checked_at, &prev, sec, 0, __ATOMIC_RELAXED,
                                                    __ATOMIC_RELAXED))
        return;  /* checked this second, or another thread is checking now */
    const char *path = getenv("CLOCKSHIFT_FILE");
    if (!path)
        return;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    char buf[32];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return;
    buf[n] = 0;
    char *end;
    long long v = strtoll(buf, &end, 10);
    if (end != buf && v > -100000000LL && v < 100000000LL)
        __atomic_store_n(&offset_ns, v * 1000000000LL, __ATOMIC_RELAXED);
}

static void shift(struct timespec *ts) {
    /* wall-clock times are positive and below 2^63 ns (year 2262) */
    long long t = (long long)ts->tv_sec * 1000000000LL + ts->tv_nsec
                  + __atomic_load_n(&offset_ns, __ATOMIC_RELAXED);
    ts->tv_sec = (time_t)(t / 1000000000LL);
    ts->tv_nsec = (long)(t % 1000000000LL);
}

int clock_gettime(clockid_t clk, struct timespec *ts) {
    init_real();
    int rc = real_clock_gettime(clk, ts);
    if (rc == 0 && (clk == CLOCK_REALTIME || clk == CLOCK_REALTIME_COARSE)) {
        refresh();
        shift(ts);
    }
    return rc;
}

#pragma GCC diagnostic ignored "-Wnonnull-compare"  /* a caller may still pass NULL */
int gettimeofday(struct timeval *tv, void *tz) {
    struct timespec ts;
    (void)tz;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
        return -1;
    if (tv) {
        tv->tv_sec = ts.tv_sec;
        tv->tv_usec = ts.tv_nsec / 1000;
    }
    return 0;
}

time_t time(time_t *out) {
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
        return (time_t)-1;
    if (out)
        *out = ts.tv_sec;
    return ts.tv_sec;
}
