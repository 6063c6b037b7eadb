/* clock.h - the wall and monotonic clocks in milliseconds, and a sleep.
 *
 * Wall time (CLOCK_REALTIME) is what the contract's times are: ms since the
 * Unix epoch. Monotonic time (CLOCK_MONOTONIC) measures durations and
 * deadlines, which a clock step must not move. Inline: each is one vDSO call.
 *
 * Thread: any.
 */
#ifndef ATP_CLOCK_H
#define ATP_CLOCK_H

#include <errno.h>
#include <stdint.h>
#include <time.h>

/* ms since the Unix epoch. */
static inline int64_t atp_wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ms on the monotonic clock (an arbitrary origin). */
static inline int64_t atp_mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Sleeps ms (>= 0), resuming after signals: the whole time passes. */
static inline void atp_sleep_ms(int64_t ms) {
  struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
  }
}

#endif
