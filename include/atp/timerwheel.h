/* timerwheel.h - a hierarchical timer wheel that knows nothing of what it
 * times, in the manner of h2o's: modules willing to use timers embed an
 * atp_timer_t in their own records and get it back in the fire callback
 * (container_of).
 *
 * Four levels of 256 slots of 64 ms ticks (16 s, 70 min, 12 days, 8.7 years).
 * A timer sits in at most one slot; cascading moves it down a level as its
 * time approaches, so each timer is touched a bounded number of times and a
 * run costs the timers due plus at most four slot cascades, whatever the
 * number of timers filed. A timer further away than the top level reaches is
 * filed at its far end and filed again from its own due time when it gets
 * there.
 *
 * The wheel's callbacks see a timer after it left the wheel: fire may file it
 * again (atp_timerwheel_add). Firing walks a slot's list with a look-ahead
 * window: each timer is fetched ATP_TIMERWHEEL_AHEAD steps before its turn,
 * and the optional `ahead` callback is told of it then (steps ==
 * ATP_TIMERWHEEL_AHEAD) and again ATP_TIMERWHEEL_SOON steps before its turn,
 * so the owner can fetch the memory its fire will touch.
 *
 * Thread: a wheel belongs to one thread; nothing here is atomic.
 */
#ifndef ATP_TIMERWHEEL_H
#define ATP_TIMERWHEEL_H

#include <stdbool.h>
#include <stdint.h>

#define ATP_TIMERWHEEL_LEVELS  4
#define ATP_TIMERWHEEL_SLOTS   256
#define ATP_TIMERWHEEL_TICK_MS 64
#define ATP_TIMERWHEEL_AHEAD   8
#define ATP_TIMERWHEEL_SOON    3

/* Embed one in whatever needs a timer. */
typedef struct atp_timer {
  struct atp_timer *next;   /* the next timer of its slot */
  struct atp_timer **pprev; /* the link that points here; NULL: not filed */
  int64_t due_ms;           /* when it fires, while filed */
} atp_timer_t;

typedef struct atp_timerwheel atp_timerwheel_t;

/* A timer's time came; it is out of the wheel. */
typedef void (*atp_timer_fire_cb)(atp_timerwheel_t *w, atp_timer_t *t, int64_t now_ms,
                                  void *ctx);
/* A timer will fire in `steps` steps of this run (a hint for prefetching). */
typedef void (*atp_timer_ahead_cb)(const atp_timer_t *t, uint32_t steps, int64_t now_ms,
                                   void *ctx);

struct atp_timerwheel {
  atp_timer_t *slots[ATP_TIMERWHEEL_LEVELS][ATP_TIMERWHEEL_SLOTS];
  int64_t now_tick; /* every slot up to this tick has been run */
  bool started;
  atp_timer_fire_cb fire;
  atp_timer_ahead_cb ahead; /* may be NULL */
  void *ctx;
};

void atp_timerwheel_init(atp_timerwheel_t *w, atp_timer_fire_cb fire,
                         atp_timer_ahead_cb ahead, void *ctx);
/* Sets the wheel's time on the first call; later calls change nothing. */
void atp_timerwheel_start(atp_timerwheel_t *w, int64_t now_ms);
/* Files t (not filed) to fire at the first tick at or after due_ms, whatever
 * the level and however many cascades bring it down; a time already past
 * fires at the next tick. */
void atp_timerwheel_add(atp_timerwheel_t *w, atp_timer_t *t, int64_t due_ms);
/* Takes t out of the wheel if it is in it. */
void atp_timerwheel_remove(atp_timerwheel_t *w, atp_timer_t *t);
/* Runs every tick up to now_ms: cascades, then fires what is due. Returns the
 * number of timers fired. */
uint64_t atp_timerwheel_run(atp_timerwheel_t *w, int64_t now_ms);

static inline void atp_timer_init(atp_timer_t *t) {
  t->next = 0;
  t->pprev = 0;
  t->due_ms = INT64_MIN;
}
static inline bool atp_timer_is_filed(const atp_timer_t *t) {
  return t->pprev != 0;
}

#endif
