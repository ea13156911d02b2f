/*
 * A redis-server whose wall clock stands still, for the tests that count
 * (test/support/redis-server.cjs starts one with LD_PRELOAD naming this,
 * built on first use). The Redis store's scripts move a generation to the
 * larger of one more and the server's clock (TIME) in microseconds; with
 * the clock held still every change is exactly one more, so a test can
 * check that N acknowledged changes moved a key by exactly N. Redis reads
 * its wall clock through gettimeofday(); its event loop and timers use the
 * monotonic clock, which this leaves alone.
 */
#include <stdlib.h>
#include <sys/time.h>

int gettimeofday(struct timeval *tv, void *tz) {
  (void)tz;
  const char *at = getenv("GENSYNC_FROZEN_CLOCK_US");
  long long us = at != NULL ? atoll(at) : 1700000000000000LL;
  if (tv != NULL) {
    tv->tv_sec = us / 1000000;
    tv->tv_usec = us % 1000000;
  }
  return 0;
}
