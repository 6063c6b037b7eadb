/* test_timerwheel.c - unit tests of the timer wheel alone
 * (include/atp/timerwheel.h, src/engine/timerwheel.c): timers embedded in a
 * test's own records fire once, at their time and not before, through every
 * level's cascade; removal from anywhere in a slot; refiling from the fire
 * callback; a clock jump; and the look-ahead hints.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "atp/timerwheel.h"
#include "test.h"

#define TICK ATP_TIMERWHEEL_TICK_MS
#define T0   1700000000000LL /* a multiple of TICK */

/* A record of the test's own, with the timer embedded. */
typedef struct {
  int id;
  int fired;
  int64_t fired_at;
  int64_t refile_ms; /* fire files it again at this time, 0: no */
  atp_timer_t timer;
} item_t;

#define item_of(t) ((item_t *)((char *)(t)-offsetof(item_t, timer)))

static int fired_total, hints_ahead, hints_soon;

static void on_fire(atp_timerwheel_t *w, atp_timer_t *t, int64_t now_ms, void *ctx) {
  (void)ctx;
  item_t *it = item_of(t);
  CHECK(!atp_timer_is_filed(t));
  CHECK(t->due_ms <= now_ms);
  it->fired++;
  it->fired_at = now_ms;
  fired_total++;
  if (it->refile_ms) {
    int64_t at = it->refile_ms;
    it->refile_ms = 0;
    atp_timerwheel_add(w, t, at);
  }
}

static void on_ahead(const atp_timer_t *t, uint32_t steps, int64_t now_ms, void *ctx) {
  (void)t, (void)now_ms, (void)ctx;
  if (steps == ATP_TIMERWHEEL_AHEAD) hints_ahead++;
  if (steps == ATP_TIMERWHEEL_SOON) hints_soon++;
}

static atp_timerwheel_t W;

static void setup(void) {
  fired_total = hints_ahead = hints_soon = 0;
  atp_timerwheel_init(&W, on_fire, on_ahead, NULL);
  atp_timerwheel_start(&W, T0);
}

/* Runs the wheel tick by tick from..to (ms). */
static void run_to(int64_t from, int64_t to) {
  for (int64_t t = from; t <= to; t += TICK) atp_timerwheel_run(&W, t);
  atp_timerwheel_run(&W, to);
}

static void test_fires_once_at_its_time_on_every_level(void) {
  setup();
  /* One timer per level and a few in between: 1 tick, 16 s, 70 min, 12 days. */
  static const int64_t after[] = {
      1,          TICK,         TICK * 255,     TICK * 256,
      TICK * 257, 70 * 60000LL, TICK * 65536LL, 13 * 86400000LL};
  enum { N = sizeof after / sizeof after[0] };
  item_t items[N];
  for (int i = 0; i < N; i++) {
    items[i] = (item_t){.id = i};
    atp_timer_init(&items[i].timer);
    CHECK(!atp_timer_is_filed(&items[i].timer));
    atp_timerwheel_add(&W, &items[i].timer, T0 + after[i]);
    CHECK(atp_timer_is_filed(&items[i].timer));
  }
  int64_t now = T0;
  for (int i = 0; i < N; i++) {
    int64_t due = T0 + after[i];
    int64_t at = (due + TICK - 1) / TICK * TICK; /* the first tick at or after */
    if (at > now) {
      if (at - TICK > now) {
        run_to(now, at - TICK); /* every tick before it: not yet */
        now = at - TICK;
      }
      CHECK_EQ(items[i].fired, 0);
      run_to(now, at);
      now = at;
    }
    CHECK_EQ(items[i].fired, 1); /* at it: fired, once */
    CHECK(items[i].fired_at >= due);
    CHECK(!atp_timer_is_filed(&items[i].timer));
  }
  CHECK_EQ(fired_total, N);
}

static void test_remove_from_anywhere(void) {
  setup();
  item_t items[5];
  for (int i = 0; i < 5; i++) {
    items[i] = (item_t){.id = i};
    atp_timer_init(&items[i].timer);
    atp_timerwheel_add(&W, &items[i].timer, T0 + 10 * TICK); /* one slot */
  }
  atp_timerwheel_remove(&W, &items[2].timer); /* the middle */
  atp_timerwheel_remove(&W, &items[4].timer); /* the head (pushed last) */
  atp_timerwheel_remove(&W, &items[0].timer); /* the tail */
  atp_timerwheel_remove(&W, &items[0].timer); /* not filed: nothing */
  CHECK(!atp_timer_is_filed(&items[2].timer));
  run_to(T0, T0 + 20 * TICK);
  CHECK_EQ(items[1].fired, 1);
  CHECK_EQ(items[3].fired, 1);
  CHECK_EQ(items[0].fired + items[2].fired + items[4].fired, 0);
  CHECK_EQ(fired_total, 2);
}

static void test_refile_from_fire_and_past_times(void) {
  setup();
  item_t a = {.id = 1, .refile_ms = T0 + 100 * TICK}, b = {.id = 2};
  atp_timer_init(&a.timer);
  atp_timer_init(&b.timer);
  atp_timerwheel_add(&W, &a.timer, T0 + 2 * TICK);
  atp_timerwheel_add(&W, &b.timer, T0 - 5000); /* already past: the next tick */
  atp_timerwheel_run(&W, T0);
  CHECK_EQ(b.fired, 0);
  atp_timerwheel_run(&W, T0 + TICK);
  CHECK_EQ(b.fired, 1);
  run_to(T0 + TICK, T0 + 2 * TICK);
  CHECK_EQ(a.fired, 1);
  CHECK(atp_timer_is_filed(&a.timer)); /* filed again by its callback */
  run_to(T0 + 2 * TICK, T0 + 99 * TICK);
  CHECK_EQ(a.fired, 1);
  run_to(T0 + 99 * TICK, T0 + 100 * TICK);
  CHECK_EQ(a.fired, 2);
  CHECK(!atp_timer_is_filed(&a.timer));
}

static void test_clock_jump_and_far_future(void) {
  setup();
  item_t soon = {.id = 1}, later = {.id = 2}, far = {.id = 3};
  atp_timer_init(&soon.timer);
  atp_timer_init(&later.timer);
  atp_timer_init(&far.timer);
  int64_t far_ms = T0 + 20LL * 365 * 86400000; /* beyond the top level */
  atp_timerwheel_add(&W, &soon.timer, T0 + 1000);
  atp_timerwheel_add(&W, &later.timer, T0 + 400LL * 86400000);
  atp_timerwheel_add(&W, &far.timer, far_ms);
  /* A year in one step: what is due fires, the rest stays filed. */
  atp_timerwheel_run(&W, T0 + 365LL * 86400000);
  CHECK_EQ(soon.fired, 1);
  CHECK_EQ(later.fired, 0);
  CHECK_EQ(far.fired, 0);
  CHECK(atp_timer_is_filed(&later.timer) && atp_timer_is_filed(&far.timer));
  atp_timerwheel_run(&W, T0 + 401LL * 86400000);
  CHECK_EQ(later.fired, 1);
  atp_timerwheel_run(&W, far_ms - 86400000);
  CHECK_EQ(far.fired, 0);
  atp_timerwheel_run(&W, far_ms + TICK);
  CHECK_EQ(far.fired, 1);
}

static void test_many_in_one_slot_with_hints(void) {
  setup();
  enum { N = 1000 };
  static item_t items[N];
  for (int i = 0; i < N; i++) {
    items[i] = (item_t){.id = i};
    atp_timer_init(&items[i].timer);
    atp_timerwheel_add(&W, &items[i].timer, T0 + 5 * TICK - (i % 3));
  }
  run_to(T0, T0 + 5 * TICK);
  CHECK_EQ(fired_total, N);
  for (int i = 0; i < N; i++) CHECK_EQ(items[i].fired, 1);
  /* Every timer is announced when it enters the window; all but the last few
   * again shortly before its turn. */
  CHECK_EQ(hints_ahead, N);
  CHECK_EQ(hints_soon, N - ATP_TIMERWHEEL_SOON);
}

/* --- the exact tick
 * Tick k is the time k * TICK; a timer due at d fires at the first tick at or
 * after d, ceil(d / TICK), never sooner and never later, whichever level it
 * was filed on and however many cascades bring it down. A cascade files a
 * timer again from the tick being run, so one due on that very tick (its due
 * tick a multiple of the level's span) is where a wheel goes one tick late:
 * the distances below reach each level boundary from several starting
 * alignments, and land due ticks on multiples of 2^8, 2^16 and 2^24. */

enum { EXACT_MAX = 160 };
static item_t exact[EXACT_MAX];
static int exact_n;

static void exact_file(int64_t due_ms) {
  REQUIRE(exact_n < EXACT_MAX);
  item_t *it = &exact[exact_n];
  *it = (item_t){.id = exact_n};
  atp_timer_init(&it->timer);
  atp_timerwheel_add(&W, &it->timer, due_ms);
  exact_n++;
}

/* Starts a wheel at start_tick, files every distance, runs it tick by tick
 * (now_ms on each tick exactly) and checks each timer fired once, at its
 * tick. */
static void exact_run(int64_t start_tick, const int64_t *after_ms, int n) {
  fired_total = 0;
  exact_n = 0;
  atp_timerwheel_init(&W, on_fire, NULL, NULL);
  int64_t start_ms = start_tick * TICK;
  atp_timerwheel_start(&W, start_ms);
  int64_t last = start_tick;
  for (int i = 0; i < n; i++) {
    exact_file(start_ms + after_ms[i]);
    int64_t at = (start_ms + after_ms[i] + TICK - 1) / TICK;
    if (at > last) last = at;
  }
  for (int64_t k = start_tick + 1; k <= last + 1; k++) atp_timerwheel_run(&W, k * TICK);
  CHECK_EQ(fired_total, exact_n);
  for (int i = 0; i < exact_n; i++) {
    int64_t due = start_ms + after_ms[i];
    int64_t at = (due + TICK - 1) / TICK;
    if (at <= start_tick) at = start_tick + 1; /* past: the next tick */
    if (exact[i].fired != 1 || exact[i].fired_at != at * TICK)
      fprintf(stderr,
              "  start tick %lld, +%lld ms: fired %d at tick %lld, due at %lld\n",
              (long long)start_tick, (long long)after_ms[i], exact[i].fired,
              (long long)(exact[i].fired_at / TICK), (long long)at);
    CHECK_EQ(exact[i].fired, 1);
    CHECK_EQ(exact[i].fired_at, at * TICK);
  }
}

/* Distances (ms) from start: just under, at and over each level's span, ones
 * landing on the next multiples of 2^8 and 2^16 ticks, odd milliseconds, and
 * up to hours. */
static int exact_distances(int64_t start_tick, int64_t *out) {
  int n = 0;
  static const int64_t spans[] = {1LL << 8, 1LL << 16};
  for (int s = 0; s < 2; s++) {
    for (int64_t d = -2; d <= 2; d++) {
      out[n++] = (spans[s] + d) * TICK;
      out[n++] = (spans[s] + d) * TICK - 1;
      out[n++] = (spans[s] + d) * TICK + 1;
    }
    /* the next few multiples of the span, and a tick either side */
    int64_t m = (start_tick / spans[s] + 1) * spans[s];
    for (int j = 0; j < 4; j++, m += spans[s]) {
      for (int64_t d = -1; d <= 1; d++) {
        int64_t ticks = m + d - start_tick;
        if (ticks > 0) out[n++] = ticks * TICK;
      }
      out[n++] = (m - start_tick) * TICK - TICK / 2; /* within the tick before */
    }
  }
  static const int64_t fixed[] = {
      0,       1,       TICK - 1, TICK,    TICK + 1,        1000,
      15999,   16000,   16384,    16385,   60000,           3600000,
      4194303, 4194304, 4194305,  7200001, 3 * 3600000 + 17};
  for (unsigned i = 0; i < sizeof fixed / sizeof fixed[0]; i++) out[n++] = fixed[i];
  return n;
}

static void test_exact_tick_through_every_cascade(void) {
  /* T0's own alignment, and starts on and just off multiples of 2^8 and 2^16 */
  const int64_t t0 = T0 / TICK;
  const int64_t starts[] = {t0,
                            t0 - t0 % 256,
                            t0 - t0 % 256 + 255,
                            t0 - t0 % 65536,
                            t0 - t0 % 65536 + 1,
                            t0 - t0 % 65536 + 65535,
                            (t0 / 65536 + 1) * 65536 - 300};
  for (unsigned s = 0; s < sizeof starts / sizeof starts[0]; s++) {
    int64_t after[EXACT_MAX];
    int n = exact_distances(starts[s], after);
    REQUIRE(n <= EXACT_MAX);
    exact_run(starts[s], after, n);
  }
}

/* The third level's span (2^24 ticks, about 12 days): timers filed on level
 * 3 come down through levels 2 and 1; the start sits a little before a
 * multiple of 2^24 so the run stays near 2^24 ticks. */
static void test_exact_tick_from_the_top_level(void) {
  const int64_t span = 1LL << 24;
  int64_t m = (T0 / TICK / span + 1) * span;
  int64_t start = m - 1000;
  int64_t after[] = {
      (span - 1) * TICK,
      span * TICK,
      (span + 1) * TICK,
      (m - start) * TICK,
      (m - start - 1) * TICK,
      (m - start + 1) * TICK,
      (m + span - start) * TICK - TICK / 2, /* a multiple of 2^24 ticks on level 3 */
      (m + span - start) * TICK,
      (m + span - start + 256) * TICK,
      (m + span - start + 65536) * TICK + 5,
  };
  exact_run(start, after, sizeof after / sizeof after[0]);
}

TEST_MAIN({
  RUN(test_fires_once_at_its_time_on_every_level);
  RUN(test_remove_from_anywhere);
  RUN(test_refile_from_fire_and_past_times);
  RUN(test_clock_jump_and_far_future);
  RUN(test_many_in_one_slot_with_hints);
  RUN(test_exact_tick_through_every_cascade);
  RUN(test_exact_tick_from_the_top_level);
})
