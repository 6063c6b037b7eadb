/* timerwheel.c - the hierarchical timer wheel (include/atp/timerwheel.h).
 *
 * A slot is a list through the timers' own links, with a pointer to the
 * link that points at each timer, so taking one out costs two stores
 * wherever it is. Running a slot detaches its whole list first: the fire
 * callback may file a timer again, even in the slot being run.
 */
#include "atp/timerwheel.h"

#include <stddef.h>

#include "atp/assert.h"

#define SLOT_BITS          8
#define JUMP_REBUILD_TICKS (1LL << 24)
#define WINDOW             ATP_TIMERWHEEL_AHEAD

_Static_assert(ATP_TIMERWHEEL_SLOTS == 1 << SLOT_BITS, "slots are 2^SLOT_BITS");
_Static_assert(ATP_TIMERWHEEL_SOON < WINDOW, "soon lies inside the window");

void atp_timerwheel_init(atp_timerwheel_t *w, atp_timer_fire_cb fire,
                         atp_timer_ahead_cb ahead, void *ctx) {
  ATP_ASSERT(fire);
  for (uint32_t l = 0; l < ATP_TIMERWHEEL_LEVELS; l++)
    for (uint32_t i = 0; i < ATP_TIMERWHEEL_SLOTS; i++) w->slots[l][i] = NULL;
  w->now_tick = 0;
  w->started = false;
  w->fire = fire;
  w->ahead = ahead;
  w->ctx = ctx;
}

void atp_timerwheel_start(atp_timerwheel_t *w, int64_t now_ms) {
  if (w->started) return;
  w->now_tick = now_ms / ATP_TIMERWHEEL_TICK_MS;
  w->started = true;
}

/* Files t to fire at due_ms, on no tick before `earliest`. A caller files
 * from after the tick just run, so earliest is the next one; a cascade files
 * from the tick being run, whose level-0 slot runs right after the
 * cascades, so a timer due on that very tick (its due tick a multiple of
 * the outer level's span) still fires on it rather than a tick late. */
static void file(atp_timerwheel_t *w, atp_timer_t *t, int64_t due_ms,
                 int64_t earliest) {
  ATP_ASSERT(!atp_timer_is_filed(t));
  ATP_ASSERT(earliest == w->now_tick || earliest == w->now_tick + 1);
  int64_t due_tick =
      due_ms / ATP_TIMERWHEEL_TICK_MS + (due_ms % ATP_TIMERWHEEL_TICK_MS > 0);
  if (due_tick < earliest) due_tick = earliest;
  int64_t delta = due_tick - w->now_tick;
  uint32_t level = 0;
  while (level < ATP_TIMERWHEEL_LEVELS - 1 &&
         delta >= (1LL << (SLOT_BITS * (level + 1))))
    level++;
  if (delta >= (1LL << (SLOT_BITS * ATP_TIMERWHEEL_LEVELS)))
    due_tick = w->now_tick + (1LL << (SLOT_BITS * ATP_TIMERWHEEL_LEVELS)) -
               1; /* filed again from due_ms when it gets there */
  uint32_t index =
      (uint32_t)(due_tick >> (SLOT_BITS * level)) & (ATP_TIMERWHEEL_SLOTS - 1);
  atp_timer_t **head = &w->slots[level][index];
  t->next = *head;
  if (t->next) t->next->pprev = &t->next;
  t->pprev = head;
  *head = t;
  t->due_ms = due_ms;
  ATP_ASSERT(atp_timer_is_filed(t) && *t->pprev == t);
}

void atp_timerwheel_add(atp_timerwheel_t *w, atp_timer_t *t, int64_t due_ms) {
  file(w, t, due_ms, w->now_tick + 1);
}

void atp_timerwheel_remove(atp_timerwheel_t *w, atp_timer_t *t) {
  (void)w;
  if (!atp_timer_is_filed(t)) return;
  ATP_ASSERT(*t->pprev == t);
  *t->pprev = t->next;
  if (t->next) t->next->pprev = t->pprev;
  t->next = NULL;
  t->pprev = NULL;
}

/* --- walking a detached list with look-ahead
 * The timers of a slot were filed long before they fire, so each is a cache
 * miss. The walk keeps a window of the next WINDOW timers, each fetched as it
 * enters (its link is read then, which is why the window is filled ahead of
 * the timer being handled), and tells the owner of each one on entering and
 * ATP_TIMERWHEEL_SOON steps before its turn. Handling a timer never changes
 * the links of the timers behind it in the window: they were read already. */

typedef struct {
  atp_timer_t *ring[WINDOW];
  uint32_t at, count;
  atp_timer_t *rest; /* the list after the window */
  bool hints;        /* tell the owner (a firing run) */
  int64_t now_ms;
} walk_t;

static void walk_fill(atp_timerwheel_t *w, walk_t *k) {
  while (k->count < WINDOW && k->rest) {
    atp_timer_t *t = k->rest;
    k->ring[(k->at + k->count++) % WINDOW] = t;
    __builtin_prefetch(t, 1);
    if (k->hints && w->ahead) w->ahead(t, WINDOW, k->now_ms, w->ctx);
    k->rest = t->next;
  }
}

static atp_timer_t *walk_next(atp_timerwheel_t *w, walk_t *k) {
  if (!k->count) return NULL;
  atp_timer_t *t = k->ring[k->at];
  k->at = (k->at + 1) % WINDOW;
  k->count--;
  walk_fill(w, k);
  if (k->hints && w->ahead && k->count >= ATP_TIMERWHEEL_SOON)
    w->ahead(k->ring[(k->at + ATP_TIMERWHEEL_SOON - 1) % WINDOW], ATP_TIMERWHEEL_SOON,
             k->now_ms, w->ctx);
  return t;
}

/* Runs a detached list: fires what is due (fire_due) and files the rest
 * again from its own time. A cascade (not fire_due) runs before the tick's
 * level-0 slot, so it may file on the tick being run; a firing run may not:
 * that slot is being run or was run already. */
static uint64_t run_list(atp_timerwheel_t *w, atp_timer_t *list, int64_t now_ms,
                         bool fire_due) {
  uint64_t fired = 0;
  walk_t k = {.rest = list, .hints = fire_due, .now_ms = now_ms};
  walk_fill(w, &k);
  for (atp_timer_t *t; (t = walk_next(w, &k));) {
    t->next = NULL;
    t->pprev = NULL; /* detached with its whole list */
    if (fire_due && t->due_ms <= now_ms) {
      w->fire(w, t, now_ms, w->ctx);
      fired++;
    } else {
      file(w, t, t->due_ms, w->now_tick + fire_due);
    }
  }
  return fired;
}

static atp_timer_t *take_slot(atp_timerwheel_t *w, uint32_t level, uint32_t index) {
  atp_timer_t *list = w->slots[level][index];
  w->slots[level][index] = NULL;
  if (list) list->pprev = NULL;
  return list;
}

uint64_t atp_timerwheel_run(atp_timerwheel_t *w, int64_t now_ms) {
  ATP_ASSERT(w->started);
  int64_t target = now_ms / ATP_TIMERWHEEL_TICK_MS;
  uint64_t fired = 0;
  if (target - w->now_tick > JUMP_REBUILD_TICKS) {
    /* The clock jumped (tests, a suspended VM): take everything out and file
     * it again from the new time instead of walking every tick between. */
    atp_timer_t *all = NULL;
    for (uint32_t l = 0; l < ATP_TIMERWHEEL_LEVELS; l++) {
      for (uint32_t i = 0; i < ATP_TIMERWHEEL_SLOTS; i++) {
        for (atp_timer_t *list = take_slot(w, l, i), *t; list;) {
          t = list;
          list = t->next;
          t->next = all;
          all = t;
        }
      }
    }
    w->now_tick = target;
    return run_list(w, all, now_ms, true);
  }
  while (w->now_tick < target) {
    int64_t t = ++w->now_tick;
    for (uint32_t l = ATP_TIMERWHEEL_LEVELS - 1; l > 0; l--) {
      /* level l cascades when every lower level's index wrapped to 0 */
      if ((t & ((1LL << (SLOT_BITS * l)) - 1)) == 0) {
        uint32_t index = (uint32_t)(t >> (SLOT_BITS * l)) & (ATP_TIMERWHEEL_SLOTS - 1);
        run_list(w, take_slot(w, l, index), now_ms, false);
      }
    }
    fired += run_list(w, take_slot(w, 0, (uint32_t)t & (ATP_TIMERWHEEL_SLOTS - 1)),
                      now_ms, true);
  }
  return fired;
}
