/* engine_test_util.h - helpers shared by the engine's test suites
 * (test_engine.c, test_engine_model.c, test_engine_stress.c).
 *
 * An injectable clock (config.clock), string helpers for atp_str_t, the
 * position formulas of CONTRACT.md section 2, and a small deterministic PRNG
 * (splitmix64) so that the randomised suites replay from a printed seed.
 *
 * Everything is static: each suite is one translation unit.
 */
#ifndef ATP_ENGINE_TEST_UTIL_H
#define ATP_ENGINE_TEST_UTIL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "atp/engine.h"

/* 2023-11-14T22:13:20Z, a multiple of 4000 ms (the model test relies on it). */
#define ET_T0_MS 1700000000000LL

/* --- clock ------------------------------------------------------------------ */

/* A manual clock: the test moves it, the engine reads it from any thread. */
typedef struct {
  _Atomic int64_t now_ms;
} et_clock_t;

static inline int64_t et_clock_read(void *ctx) {
  /* acquire pairs with et_clock_set's release: whatever the test did before
   * moving the clock is visible to an engine thread that sees the new time. */
  return atomic_load_explicit(&((et_clock_t *)ctx)->now_ms, memory_order_acquire);
}

static inline void et_clock_set(et_clock_t *clock, int64_t now_ms) {
  atomic_store_explicit(&clock->now_ms, now_ms, memory_order_release);
}

static inline int64_t et_clock_add(et_clock_t *clock, int64_t delta_ms) {
  return atomic_fetch_add_explicit(&clock->now_ms, delta_ms, memory_order_acq_rel) +
         delta_ms;
}

/* A config with small tables (so that ASan and TSan builds stay light) and the
 * manual clock. Callers change what they need before atp_engine_create. */
static inline atp_engine_config_t et_config(et_clock_t *clock) {
  atp_engine_config_t config;
  memset(&config, 0, sizeof config);
  config.positions_max = 1u << 14;
  config.reservations_max = 1u << 15;
  config.idempotency_max = 1u << 15;
  config.clock = et_clock_read;
  config.clock_ctx = clock;
  return config;
}

/* --- strings ---------------------------------------------------------------- */

static inline atp_str_t et_str(const char *text) {
  return (atp_str_t){text, (uint32_t)strlen(text)};
}

static inline bool et_str_is(atp_str_t s, const char *text) {
  size_t len = strlen(text);
  return s.len == len && (len == 0 || memcmp(s.ptr, text, len) == 0);
}

static inline bool et_str_eq(atp_str_t a, atp_str_t b) {
  return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0);
}

/* memcmp order, shorter first on a common prefix: the listing's "location
 * ascending". */
static inline int et_str_cmp(atp_str_t a, atp_str_t b) {
  uint32_t n = a.len < b.len ? a.len : b.len;
  int c = n ? memcmp(a.ptr, b.ptr, n) : 0;
  if (c != 0) return c;
  return a.len < b.len ? -1 : a.len > b.len ? 1 : 0;
}

/* --- positions -------------------------------------------------------------- */

static inline int64_t et_max0(int64_t v) {
  return v > 0 ? v : 0;
}

static inline int64_t et_available(int64_t on_hand, int64_t safety, int64_t reserved,
                                   int64_t committed) {
  return et_max0(on_hand - safety - reserved - committed);
}

static inline int64_t et_shortfall(int64_t on_hand, int64_t reserved,
                                   int64_t committed) {
  return et_max0(reserved + committed - on_hand);
}

/* The derived fields of p agree with its counters (CONTRACT.md section 2). */
static inline bool et_position_consistent(const atp_position_t *p) {
  return p->available ==
             et_available(p->on_hand, p->safety_stock, p->reserved, p->committed) &&
         p->shortfall == et_shortfall(p->on_hand, p->reserved, p->committed) &&
         p->available >= 0 && p->shortfall >= 0 && p->safety_stock >= 0 &&
         p->reserved >= 0 && p->committed >= 0 && p->version != 0;
}

/* --- reservations ----------------------------------------------------------- */

static inline const atp_res_line_t *et_res_line(const atp_reservation_t *r,
                                                atp_str_t sku, atp_str_t location) {
  for (uint32_t i = 0; i < r->line_count; i++)
    if (et_str_eq(r->lines[i].sku, sku) && et_str_eq(r->lines[i].location, location))
      return &r->lines[i];
  return NULL;
}

static inline int64_t et_line_remaining(const atp_res_line_t *line) {
  return line->qty - line->fulfilled - line->released;
}

/* --- PRNG ------------------------------------------------------------------- */

typedef struct {
  uint64_t state;
} et_rng_t;

static inline uint64_t et_rng_next(et_rng_t *rng) {
  uint64_t z = (rng->state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/* Uniform in [0, n); n > 0. */
static inline uint32_t et_rng_below(et_rng_t *rng, uint32_t n) {
  return (uint32_t)(((et_rng_next(rng) >> 32) * (uint64_t)n) >> 32);
}

/* Uniform in [lo, hi]. */
static inline int64_t et_rng_range(et_rng_t *rng, int64_t lo, int64_t hi) {
  return lo + (int64_t)(et_rng_next(rng) % (uint64_t)(hi - lo + 1));
}

/* true with probability pct/100. */
static inline bool et_rng_pct(et_rng_t *rng, uint32_t pct) {
  return et_rng_below(rng, 100) < pct;
}

#endif
