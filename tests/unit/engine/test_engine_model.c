/* test_engine_model.c - a seeded randomised model test of the engine.
 *
 * A deliberately simple reference model (plain arrays, one thread) of
 * positions, reservations, groups and idempotency ids follows CONTRACT.md
 * sections 2, 4 and 5. A long random sequence of operations is applied to both
 * the model and the engine, and every answer is compared: error codes,
 * statuses, shortfalls, reservation lines, and after every step every position
 * field (the version must only increase, and strictly when the model says the
 * position changed). The engine's change hook feeds a replica engine through
 * atp_engine_apply; at the end the replica must equal the engine.
 *
 *   test_engine_model [SEED]     or ATP_SEED=...; default: the time
 *   ATP_MODEL_STEPS=N            steps per seed (default 6000), 3 seeds
 *
 * Times: the clock starts at ET_T0_MS (a multiple of 4000) and moves by
 * multiples of 4000; every ttl is 2000 mod 4000. So now - expires_at is never
 * within 2 s of 0, and "expired within 1 s after expires_at" is exact. Counts
 * are always strictly in the past and never within 1 s of the history window's
 * edge, so stale/approximate/absorbed are exact too.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "atp/engine.h"
#include "engine_test_util.h"

#define NSKU      6
#define NLOC      5
#define NPOS      (NSKU * NLOC)
#define NGRP      3
#define MAXRES    8192
#define MAXL      32
#define MAXH      4096
#define MAXIDS    8192
#define WINDOW_MS 600000LL

static const char *SKU[NSKU] = {"S0", "S1", "S2", "S3", "S4", "S5"};
static const char *LOC[NLOC] = {"L0", "L1", "L2", "L3", "L4"};
static const char *GRP[NGRP] = {"G0", "G1", "G2"};

/* --- model ----------------------------------------------------------------------- */

typedef struct {
  int64_t at, delta;
} hist_t;

typedef struct {
  bool exists;
  bool dirty; /* a field changed since the last comparison */
  int64_t on_hand, safety, reserved, committed, counted_at;
  uint64_t version; /* the engine's, at the last comparison */
  int nhist;
  hist_t hist[MAXH]; /* every applied on-hand change */
} mpos_t;

typedef struct {
  int sku, loc, grp; /* loc or grp is -1 */
  int64_t qty;
  bool split;
} mreq_t;

typedef struct {
  int pos;
  int64_t qty, fulfilled, released;
} mline_t;

typedef struct {
  char id[16];
  int status;
  int64_t created_at, expires_at, ttl, ended_at;
  bool ttl_known;
  int nreq;
  mreq_t req[3];
  int64_t req_ttl;
  int ref_kind;
  bool has_order_id;
  int nlines;
  mline_t lines[MAXL];
} mres_t;

typedef struct {
  int pos;
  int64_t qty;
} mqty_t;

typedef struct {
  char id[16];
  int pos;
  int64_t delta;
  int reason;
  int64_t occurred_at;
  bool has_cf;
  int64_t cf;
  bool applied, absorbed;
  int64_t o_on_hand, o_safety, o_reserved, o_committed, o_counted_at;
  uint64_t o_version;
} madj_t;

typedef struct {
  char id[16];
  int pos;
  int64_t on_hand, counted_at;
  bool has_cf;
  int64_t cf;
  bool applied, stale, approximate;
  int64_t o_on_hand;
  uint64_t o_version;
} mcount_t;

typedef struct {
  char id[16];
  int res;
  int n;
  mqty_t lines[2];
} mful_t;

typedef struct {
  char id[16];
  int res;
  int n;
  mqty_t lines[2];
} mrel_t; /* a release with a release_id */

typedef struct {
  char id[16];
  int res;
  int nrel;
  mqty_t rel[2];
  int nadd;
  mreq_t add[2];
} mamend_t;

typedef struct {
  bool exists;
  int n;
  int locs[NLOC];
} mgroup_t;

typedef struct {
  mpos_t pos[NPOS];
  mgroup_t grp[NGRP];
  mres_t res[MAXRES];
  int nres;
  int next_res_id;
  madj_t adj[MAXIDS];
  int nadj;
  mcount_t cnt[MAXIDS];
  int ncnt;
  mful_t ful[MAXIDS];
  int nful;
  mamend_t amd[MAXIDS];
  int namd;
  mrel_t rel[MAXIDS];
  int nrel;
  int id_seq;
} model_t;

static model_t *M;
static et_clock_t CLK;
static atp_engine_t *E;
static atp_engine_t *REP; /* replica fed by the change hook */
static et_rng_t RNG;
static uint64_t SEED;
static int STEP;
static char OP[512];
static int REPLICA_ERRORS;
static atp_reservation_t OUT, GOT;
static atp_shortfalls_t SF;
static atp_result_t RES;

/* Outcome counters, printed per seed: evidence the run exercised each path. */
enum {
  C_RES_OK,
  C_RES_SHORT,
  C_SPLIT,
  C_EXPIRED,
  C_COMMIT,
  C_RELEASE,
  C_FULFIL,
  C_AMEND,
  C_AMEND_SHORT,
  C_ABSORBED,
  C_STALE,
  C_APPROX,
  C_COUNT,
  C_CONFLICT,
  C_REPLAY,
  C_MISMATCH,
  C_N
};
static const char *COUNTER_NAMES[C_N] = {
    "reserved",  "insufficient", "split",
    "expired",   "committed",    "released",
    "fulfilled", "amended",      "amend_insufficient",
    "absorbed",  "stale",        "approximate",
    "counted",   "conflicts",    "replays",
    "mismatches"};
static uint64_t COUNTERS[C_N];

static int64_t now(void) {
  return et_clock_read(&CLK);
}

static bool fail(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "  seed %" PRIu64 " step %d: %s\n    ", SEED, STEP, OP);
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n  replay with ATP_SEED=%" PRIu64 "\n", SEED);
  va_end(ap);
  return false;
}

#define EXPECT(cond, ...)                  \
  do {                                     \
    if (!(cond)) return fail(__VA_ARGS__); \
  } while (0)

static atp_str_t S(const char *s) {
  return et_str(s);
}
static int pos_of(int sku, int loc) {
  return sku * NLOC + loc;
}
static int pos_sku(int p) {
  return p / NLOC;
}
static int pos_loc(int p) {
  return p % NLOC;
}

static int64_t mavail(int p) {
  const mpos_t *m = &M->pos[p];
  if (!m->exists) return 0;
  return et_available(m->on_hand, m->safety, m->reserved, m->committed);
}

static void mpos_touch(int p) {
  if (!M->pos[p].exists) {
    M->pos[p].exists = true;
    M->pos[p].counted_at = ATP_TIME_NONE;
  }
  M->pos[p].dirty = true;
}

static void mpos_hist(int p, int64_t at, int64_t delta) {
  mpos_t *m = &M->pos[p];
  if (m->nhist < MAXH) m->hist[m->nhist++] = (hist_t){at, delta};
}

static void mres_units(mres_t *r, int p, int64_t q) {
  /* q units of reservation r at p enter (q > 0) or leave (q < 0) its bucket */
  if (r->status == ATP_STATUS_HELD)
    M->pos[p].reserved += q;
  else
    M->pos[p].committed += q;
  M->pos[p].dirty = true;
}

static int64_t mline_rem(const mline_t *l) {
  return l->qty - l->fulfilled - l->released;
}

static int64_t mres_remaining(const mres_t *r) {
  int64_t sum = 0;
  for (int i = 0; i < r->nlines; i++) sum += mline_rem(&r->lines[i]);
  return sum;
}

static mline_t *mres_line(mres_t *r, int p) {
  for (int i = 0; i < r->nlines; i++)
    if (r->lines[i].pos == p) return &r->lines[i];
  return NULL;
}

/* --- allocation of request lines (reserve and amend's add) --------------------- */

typedef struct {
  int n;
  mqty_t items[NLOC];
} alloc_t;

typedef struct {
  uint32_t line;
  int64_t requested, available;
  int best_loc;            /* group line without split: -1 when none has any */
  int64_t split_available; /* group line without split, else -1 */
} mshort_t;

/* Plans every line with the policy (whole-first or greedy split). Returns the
 * number of shortfalls; allocs[i] is line i's allocation when it fits. */
static int plan_lines(const mreq_t *req, int n, bool greedy, alloc_t *allocs,
                      mshort_t *shorts) {
  int nshort = 0;
  for (int i = 0; i < n; i++) {
    const mreq_t *l = &req[i];
    alloc_t *a = &allocs[i];
    a->n = 0;
    if (l->loc >= 0) {
      int p = pos_of(l->sku, l->loc);
      if (mavail(p) >= l->qty) {
        a->items[a->n++] = (mqty_t){p, l->qty};
      } else {
        shorts[nshort++] = (mshort_t){(uint32_t)i, l->qty, mavail(p), -1, -1};
      }
      continue;
    }
    const mgroup_t *g = &M->grp[l->grp];
    int64_t sum = 0;
    for (int k = 0; k < g->n; k++) sum += mavail(pos_of(l->sku, g->locs[k]));
    int whole = -1, best = -1;
    for (int k = 0; k < g->n && whole < 0; k++)
      if (mavail(pos_of(l->sku, g->locs[k])) >= l->qty) whole = k;
    for (int k = 0; k < g->n; k++)
      if (mavail(pos_of(l->sku, g->locs[k])) >
          (best < 0 ? 0 : mavail(pos_of(l->sku, g->locs[best]))))
        best = k;
    if (whole >= 0 && (!l->split || !greedy)) {
      a->items[a->n++] = (mqty_t){pos_of(l->sku, g->locs[whole]), l->qty};
    } else if (l->split && sum >= l->qty) {
      int64_t need = l->qty;
      for (int k = 0; k < g->n && need > 0; k++) {
        int p = pos_of(l->sku, g->locs[k]);
        int64_t take = mavail(p) < need ? mavail(p) : need;
        if (take > 0) {
          a->items[a->n++] = (mqty_t){p, take};
          need -= take;
        }
      }
    } else if (l->split) {
      shorts[nshort++] = (mshort_t){(uint32_t)i, l->qty, sum, -1, -1};
    } else {
      /* whole to one location: the best single one's, and what a split has */
      int64_t b = best < 0 ? 0 : mavail(pos_of(l->sku, g->locs[best]));
      shorts[nshort++] =
          (mshort_t){(uint32_t)i, l->qty, b, best < 0 ? -1 : g->locs[best], sum};
    }
  }
  return nshort;
}

static atp_line_req_t to_line_req(const mreq_t *m) {
  atp_line_req_t l;
  memset(&l, 0, sizeof l);
  l.sku = S(SKU[m->sku]);
  if (m->loc >= 0) l.location = S(LOC[m->loc]);
  if (m->grp >= 0) l.group = S(GRP[m->grp]);
  l.qty = m->qty;
  l.allow_split = m->split;
  return l;
}

static bool check_shortfalls(const mreq_t *req, const mshort_t *shorts, int nshort) {
  EXPECT(SF.count == (uint32_t)nshort, "shortfalls: got %u, want %d", SF.count, nshort);
  for (int i = 0; i < nshort; i++) {
    const atp_shortfall_t *s = &SF.items[i];
    const mreq_t *l = &req[shorts[i].line];
    EXPECT(s->line == shorts[i].line, "shortfall %d: line %u, want %u", i, s->line,
           shorts[i].line);
    EXPECT(s->requested == shorts[i].requested && s->available == shorts[i].available,
           "shortfall %d (line %u): requested/available %lld/%lld, want %lld/%lld", i,
           s->line, (long long)s->requested, (long long)s->available,
           (long long)shorts[i].requested, (long long)shorts[i].available);
    EXPECT(et_str_is(s->sku, SKU[l->sku]), "shortfall %d: sku", i);
    if (l->loc >= 0)
      EXPECT(et_str_is(s->location, LOC[l->loc]) && s->group.len == 0,
             "shortfall %d: location", i);
    else
      EXPECT(et_str_is(s->group, GRP[l->grp]) && s->location.len == 0,
             "shortfall %d: group", i);
    EXPECT(s->split_available == shorts[i].split_available,
           "shortfall %d: split_available %lld, want %lld", i,
           (long long)s->split_available, (long long)shorts[i].split_available);
    if (shorts[i].best_loc >= 0)
      EXPECT(et_str_is(s->best_location, LOC[shorts[i].best_loc]),
             "shortfall %d: best_location %.*s, want %s", i, (int)s->best_location.len,
             s->best_location.ptr ? s->best_location.ptr : "", LOC[shorts[i].best_loc]);
    else
      EXPECT(s->best_location.len == 0, "shortfall %d: best_location set", i);
  }
  return true;
}

/* --- comparisons --------------------------------------------------------------------
 */

static int find_pos_index(atp_str_t sku, atp_str_t loc) {
  for (int p = 0; p < NPOS; p++)
    if (et_str_is(sku, SKU[pos_sku(p)]) && et_str_is(loc, LOC[pos_loc(p)])) return p;
  return -1;
}

/* The engine's lines equal the model's lines (as a set by position). */
static bool lines_match(const mline_t *lines, int n, const atp_reservation_t *got,
                        char *why, size_t why_len) {
  if ((int)got->line_count != n) {
    snprintf(why, why_len, "line_count %u, want %d", got->line_count, n);
    return false;
  }
  for (uint32_t i = 0; i < got->line_count; i++) {
    int p = find_pos_index(got->lines[i].sku, got->lines[i].location);
    const mline_t *m = NULL;
    for (int k = 0; k < n && p >= 0; k++)
      if (lines[k].pos == p) m = &lines[k];
    if (!m) {
      snprintf(why, why_len, "line %u (%.*s@%.*s) not expected", i,
               (int)got->lines[i].sku.len, got->lines[i].sku.ptr,
               (int)got->lines[i].location.len, got->lines[i].location.ptr);
      return false;
    }
    if (got->lines[i].qty != m->qty || got->lines[i].fulfilled != m->fulfilled ||
        got->lines[i].released != m->released) {
      snprintf(why, why_len,
               "line %s@%s qty/fulfilled/released %lld/%lld/%lld, want %lld/%lld/%lld",
               SKU[pos_sku(p)], LOC[pos_loc(p)], (long long)got->lines[i].qty,
               (long long)got->lines[i].fulfilled, (long long)got->lines[i].released,
               (long long)m->qty, (long long)m->fulfilled, (long long)m->released);
      return false;
    }
    for (uint32_t j = 0; j < i; j++)
      if (et_str_eq(got->lines[j].sku, got->lines[i].sku) &&
          et_str_eq(got->lines[j].location, got->lines[i].location)) {
        snprintf(why, why_len, "two lines for one position");
        return false;
      }
  }
  return true;
}

static bool check_res_fields(const mres_t *m, const atp_reservation_t *got) {
  char why[256];
  EXPECT(et_str_is(got->id, m->id), "reservation id");
  EXPECT((int)got->status == m->status, "reservation %s: status %s, want %s", m->id,
         atp_status_name(got->status), atp_status_name((atp_status_t)m->status));
  EXPECT(got->created_at_ms == m->created_at, "reservation %s: created_at", m->id);
  int64_t want_exp = m->status == ATP_STATUS_HELD ? m->expires_at : ATP_TIME_NONE;
  EXPECT(got->expires_at_ms == want_exp, "reservation %s: expires_at %lld, want %lld",
         m->id, (long long)got->expires_at_ms, (long long)want_exp);
  if (m->ttl_known)
    EXPECT(got->ttl_ms == m->ttl, "reservation %s: ttl_ms %lld, want %lld", m->id,
           (long long)got->ttl_ms, (long long)m->ttl);
  bool ended = m->status >= ATP_STATUS_RELEASED;
  if (!ended)
    EXPECT(got->ended_at_ms == ATP_TIME_NONE, "reservation %s: ended_at set", m->id);
  else
    EXPECT(got->ended_at_ms == m->ended_at, "reservation %s: ended_at %lld, want %lld",
           m->id, (long long)got->ended_at_ms, (long long)m->ended_at);
  if (m->has_order_id) {
    char want[24];
    snprintf(want, sizeof want, "O%s", m->id);
    EXPECT(et_str_is(got->order_id, want), "reservation %s: order_id", m->id);
  } else {
    EXPECT(got->order_id.len == 0, "reservation %s: order_id set", m->id);
  }
  EXPECT(lines_match(m->lines, m->nlines, got, why, sizeof why), "reservation %s: %s",
         m->id, why);
  return true;
}

static bool check_res(int ri) {
  const mres_t *m = &M->res[ri];
  int rc = atp_reservation_get(E, S(m->id), &GOT);
  EXPECT(rc == 0, "get %s: rc %d", m->id, rc);
  EXPECT(!GOT.replayed, "get %s: replayed set", m->id);
  return check_res_fields(m, &GOT);
}

static bool check_pos(int p) {
  mpos_t *m = &M->pos[p];
  atp_position_t got;
  int rc = atp_position_get(E, S(SKU[pos_sku(p)]), S(LOC[pos_loc(p)]), &got);
  if (!m->exists) {
    EXPECT(rc == ATP_ENOTFOUND, "position %s@%s: rc %d, want not found",
           SKU[pos_sku(p)], LOC[pos_loc(p)], rc);
    return true;
  }
  EXPECT(rc == 0, "position %s@%s: rc %d", SKU[pos_sku(p)], LOC[pos_loc(p)], rc);
  EXPECT(got.on_hand == m->on_hand && got.safety_stock == m->safety &&
             got.reserved == m->reserved && got.committed == m->committed &&
             got.counted_at_ms == m->counted_at,
         "position %s@%s: on_hand/safety/reserved/committed/counted_at "
         "%lld/%lld/%lld/%lld/%lld, want %lld/%lld/%lld/%lld/%lld",
         SKU[pos_sku(p)], LOC[pos_loc(p)], (long long)got.on_hand,
         (long long)got.safety_stock, (long long)got.reserved, (long long)got.committed,
         (long long)got.counted_at_ms, (long long)m->on_hand, (long long)m->safety,
         (long long)m->reserved, (long long)m->committed, (long long)m->counted_at);
  EXPECT(
      got.available == et_available(m->on_hand, m->safety, m->reserved, m->committed) &&
          got.shortfall == et_shortfall(m->on_hand, m->reserved, m->committed),
      "position %s@%s: available/shortfall %lld/%lld", SKU[pos_sku(p)], LOC[pos_loc(p)],
      (long long)got.available, (long long)got.shortfall);
  EXPECT(
      et_str_is(got.sku, SKU[pos_sku(p)]) && et_str_is(got.location, LOC[pos_loc(p)]),
      "position strings");
  if (m->dirty)
    EXPECT(got.version > m->version, "position %s@%s changed, version %llu not > %llu",
           SKU[pos_sku(p)], LOC[pos_loc(p)], (unsigned long long)got.version,
           (unsigned long long)m->version);
  else
    EXPECT(got.version >= m->version && got.version > 0,
           "position %s@%s: version went back %llu < %llu", SKU[pos_sku(p)],
           LOC[pos_loc(p)], (unsigned long long)got.version,
           (unsigned long long)m->version);
  m->version = got.version;
  m->dirty = false;
  return true;
}

static bool check_listing(int sku) {
  atp_position_t list[NLOC + 1];
  uint32_t n = 0;
  int rc = atp_sku_positions(E, S(SKU[sku]), list, NLOC + 1, &n);
  EXPECT(rc == 0, "listing %s: rc %d", SKU[sku], rc);
  int want[NLOC], nw = 0;
  for (int l = 0; l < NLOC; l++)
    if (M->pos[pos_of(sku, l)].exists) want[nw++] = l;
  /* insertion sort: available desc, then location asc */
  for (int i = 1; i < nw; i++)
    for (int j = i; j > 0; j--) {
      int64_t a = mavail(pos_of(sku, want[j - 1])), b = mavail(pos_of(sku, want[j]));
      if (a < b || (a == b && strcmp(LOC[want[j - 1]], LOC[want[j]]) > 0)) {
        int t = want[j];
        want[j] = want[j - 1];
        want[j - 1] = t;
      }
    }
  EXPECT((int)n == nw, "listing %s: %u positions, want %d", SKU[sku], n, nw);
  for (int i = 0; i < nw; i++)
    EXPECT(et_str_is(list[i].location, LOC[want[i]]) &&
               list[i].available == mavail(pos_of(sku, want[i])),
           "listing %s: entry %d is %.*s, want %s", SKU[sku], i,
           (int)list[i].location.len, list[i].location.ptr, LOC[want[i]]);
  return true;
}

/* --- operations
 * ----------------------------------------------------------------------- */

static void ref_strings(const mres_t *m, int ri, atp_reserve_req_t *req, char *buf,
                        size_t len) {
  snprintf(buf, len, "cart-%d", ri);
  if (m->ref_kind == 1) req->order_ref = S(buf);
  if (m->ref_kind == 2) {
    req->channel = ATP_STR("web");
    req->customer_id = S(buf);
  }
}

static int random_group(void) {
  int g = (int)et_rng_below(&RNG, NGRP);
  for (int k = 0; k < NGRP; k++, g = (g + 1) % NGRP)
    if (M->grp[g].exists) return g;
  return -1;
}

static void random_req_line(mreq_t *l, int sku) {
  l->sku = sku;
  l->loc = l->grp = -1;
  l->split = false;
  int g = et_rng_pct(&RNG, 35) ? random_group() : -1;
  if (g >= 0) {
    l->grp = g;
    l->split = et_rng_pct(&RNG, 50);
  } else {
    l->loc = (int)et_rng_below(&RNG, NLOC);
  }
  l->qty = et_rng_range(&RNG, 1, 6);
}

static void describe_req(const mreq_t *req, int n) {
  for (int i = 0; i < n; i++) {
    size_t len = strlen(OP);
    snprintf(OP + len, sizeof OP - len, " %s@%s%s x%lld", SKU[req[i].sku],
             req[i].loc >= 0 ? LOC[req[i].loc] : GRP[req[i].grp],
             req[i].split ? "(split)" : "", (long long)req[i].qty);
  }
}

/* Lines the reservation would have after adding allocs (merging by position). */
static void lines_with(const mres_t *r, const alloc_t *allocs, int n, mline_t *out,
                       int *nout) {
  memcpy(out, r->lines, sizeof r->lines[0] * (size_t)r->nlines);
  *nout = r->nlines;
  for (int i = 0; i < n; i++)
    for (int k = 0; k < allocs[i].n; k++) {
      int found = -1;
      for (int j = 0; j < *nout; j++)
        if (out[j].pos == allocs[i].items[k].pos) found = j;
      if (found >= 0) {
        out[found].qty += allocs[i].items[k].qty;
      } else {
        out[*nout] = (mline_t){allocs[i].items[k].pos, allocs[i].items[k].qty, 0, 0};
        (*nout)++;
      }
    }
}

/* Picks the allocation policy that explains the engine's lines: whole-first
 * (CONTRACT.md's reading) or greedy split (what the lead may implement). */
static bool choose_allocs(const mres_t *base, const mreq_t *req, int n,
                          alloc_t *allocs) {
  static mline_t lines[MAXL * 2];
  int nl;
  char why[256], why2[256];
  plan_lines(req, n, false, allocs, (mshort_t[NLOC * 3]){{0}});
  lines_with(base, allocs, n, lines, &nl);
  if (lines_match(lines, nl, &OUT, why, sizeof why)) return true;
  plan_lines(req, n, true, allocs, (mshort_t[NLOC * 3]){{0}});
  lines_with(base, allocs, n, lines, &nl);
  if (lines_match(lines, nl, &OUT, why2, sizeof why2)) return true;
  return fail("lines: %s (greedy: %s)", why, why2);
}

static bool op_reserve(void) {
  if (M->nres >= MAXRES) return true;
  int ri = M->nres;
  mres_t *m = &M->res[ri];
  memset(m, 0, sizeof *m);
  snprintf(m->id, sizeof m->id, "R%d", M->next_res_id);
  int skus[NSKU];
  for (int i = 0; i < NSKU; i++) skus[i] = i;
  for (int i = NSKU - 1; i > 0; i--) {
    int j = (int)et_rng_below(&RNG, (uint32_t)i + 1), t = skus[i];
    skus[i] = skus[j];
    skus[j] = t;
  }
  m->nreq = 1 + (int)et_rng_below(&RNG, 3);
  for (int i = 0; i < m->nreq; i++) random_req_line(&m->req[i], skus[i]);
  m->req_ttl = 2000 + 4000 * et_rng_range(&RNG, 0, 40);
  m->ref_kind = (int)et_rng_below(&RNG, 3);
  snprintf(OP, sizeof OP, "reserve %s ttl %lld:", m->id, (long long)m->req_ttl);
  describe_req(m->req, m->nreq);

  atp_line_req_t lines[3];
  for (int i = 0; i < m->nreq; i++) lines[i] = to_line_req(&m->req[i]);
  atp_reserve_req_t req;
  memset(&req, 0, sizeof req);
  req.id = S(m->id);
  req.lines = lines;
  req.line_count = (uint32_t)m->nreq;
  req.ttl_ms = m->req_ttl;
  char buf[32];
  ref_strings(m, ri, &req, buf, sizeof buf);
  int rc = atp_reserve(E, &req, &OUT, &SF, &RES);

  alloc_t allocs[3];
  mshort_t shorts[3];
  int nshort = plan_lines(m->req, m->nreq, false, allocs, shorts);
  if (nshort) {
    EXPECT(rc == ATP_EINSUFFICIENT, "rc %d, want insufficient", rc);
    COUNTERS[C_RES_SHORT]++;
    return check_shortfalls(m->req, shorts, nshort); /* the id stays unused */
  }
  EXPECT(rc == 0, "rc %d (%s), want 0", rc, RES.message);
  EXPECT(!OUT.replayed && OUT.status == ATP_STATUS_HELD, "new reservation state");
  mres_t empty;
  memset(&empty, 0, sizeof empty);
  if (!choose_allocs(&empty, m->req, m->nreq, allocs)) return false;
  m->status = ATP_STATUS_HELD;
  m->created_at = now();
  m->ttl = m->req_ttl;
  m->ttl_known = true;
  m->expires_at = now() + m->ttl;
  m->ended_at = ATP_TIME_NONE;
  for (int i = 0; i < m->nreq; i++)
    for (int k = 0; k < allocs[i].n; k++) {
      m->lines[m->nlines++] =
          (mline_t){allocs[i].items[k].pos, allocs[i].items[k].qty, 0, 0};
      mres_units(m, allocs[i].items[k].pos, allocs[i].items[k].qty);
    }
  M->nres++;
  M->next_res_id++;
  COUNTERS[C_RES_OK]++;
  for (int i = 0; i < m->nreq; i++) COUNTERS[C_SPLIT] += allocs[i].n > 1;
  if (!check_res_fields(m, &OUT)) return false;
  return check_res(ri);
}

static bool op_reserve_again(bool mismatch) {
  if (M->nres == 0) return true;
  int ri = (int)et_rng_below(&RNG, (uint32_t)M->nres);
  mres_t *m = &M->res[ri];
  snprintf(OP, sizeof OP, "reserve %s again%s", m->id, mismatch ? " (other qty)" : "");
  atp_line_req_t lines[3];
  for (int i = 0; i < m->nreq; i++) lines[i] = to_line_req(&m->req[i]);
  if (mismatch) lines[0].qty += 1;
  atp_reserve_req_t req;
  memset(&req, 0, sizeof req);
  req.id = S(m->id);
  req.lines = lines;
  req.line_count = (uint32_t)m->nreq;
  req.ttl_ms = m->req_ttl;
  char buf[32];
  ref_strings(m, ri, &req, buf, sizeof buf);
  int rc = atp_reserve(E, &req, &OUT, &SF, &RES);
  if (mismatch) {
    EXPECT(rc == ATP_EIDEMPOTENCY, "rc %d, want idempotency_mismatch", rc);
    COUNTERS[C_MISMATCH]++;
    return true;
  }
  EXPECT(rc == 0 && OUT.replayed, "rc %d replayed %d, want a replay", rc, OUT.replayed);
  COUNTERS[C_REPLAY]++;
  return check_res_fields(m, &OUT);
}

/* Mostly a live (held or committed) reservation, sometimes any. */
static int pick_res(void) {
  if (M->nres == 0) return -1;
  if (et_rng_pct(&RNG, 80)) {
    int live[64], n = 0;
    for (int i = M->nres - 1; i >= 0 && n < 64; i--)
      if (M->res[i].status <= ATP_STATUS_COMMITTED) live[n++] = i;
    if (n) return live[et_rng_below(&RNG, (uint32_t)n)];
  }
  return (int)et_rng_below(&RNG, (uint32_t)M->nres);
}

static bool expect_conflict(int rc, const mres_t *m) {
  EXPECT(rc == ATP_ECONFLICT, "rc %d, want conflict (status %s)", rc,
         atp_status_name((atp_status_t)m->status));
  EXPECT(RES.status == m->status, "conflict status %d, want %d", RES.status, m->status);
  COUNTERS[C_CONFLICT]++;
  return true;
}

static void mres_commit(mres_t *m) {
  for (int i = 0; i < m->nlines; i++) {
    int64_t rem = mline_rem(&m->lines[i]);
    if (rem) {
      M->pos[m->lines[i].pos].reserved -= rem;
      M->pos[m->lines[i].pos].committed += rem;
      M->pos[m->lines[i].pos].dirty = true;
    }
  }
  m->status = ATP_STATUS_COMMITTED;
}

static bool op_commit(void) {
  int ri = pick_res();
  if (ri < 0) return true;
  mres_t *m = &M->res[ri];
  /* Mostly the reservation's own order id "O<id>"; sometimes none; and on a
   * reservation that has one, sometimes another ("X<id>"): a conflict. */
  int kind = et_rng_pct(&RNG, 15) ? 1 : et_rng_pct(&RNG, 15) ? 2 : 0;
  if (kind == 2 && !(m->status == ATP_STATUS_COMMITTED && m->has_order_id)) kind = 0;
  char order_id[20] = "";
  if (kind != 1) snprintf(order_id, sizeof order_id, "%c%s", kind ? 'X' : 'O', m->id);
  snprintf(OP, sizeof OP, "commit %s (%s) order_id '%s'", m->id,
           atp_status_name((atp_status_t)m->status), order_id);
  RES.status = -1;
  int rc = atp_commit(E, S(m->id), S(order_id), &OUT, &RES);
  if (m->status == ATP_STATUS_HELD) {
    EXPECT(rc == 0 && !OUT.replayed, "rc %d, want 0", rc);
    mres_commit(m);
    m->has_order_id = kind == 0;
    COUNTERS[C_COMMIT]++;
  } else if (m->status == ATP_STATUS_COMMITTED && kind == 2) {
    return expect_conflict(rc, m) && check_res(ri);
  } else if (m->status == ATP_STATUS_COMMITTED && kind == 0 && !m->has_order_id) {
    EXPECT(rc == 0 && !OUT.replayed, "rc %d replayed %d, want the order_id set", rc,
           OUT.replayed);
    m->has_order_id = true;
  } else if (m->status == ATP_STATUS_COMMITTED) {
    EXPECT(rc == 0 && OUT.replayed, "rc %d replayed %d, want a replay", rc,
           OUT.replayed);
    COUNTERS[C_REPLAY]++;
  } else {
    return expect_conflict(rc, m);
  }
  return check_res_fields(m, &OUT) && check_res(ri);
}

/* Ends m if nothing remains, the way the op named. */
static void mres_maybe_end(mres_t *m, int status) {
  if (mres_remaining(m) > 0) return;
  m->status = status;
  m->ended_at = now();
}

/* Qty lines naming parts of m: mode 0 valid, 1 more than remains, 2 a stranger. */
static int make_qty_lines(const mres_t *m, int mode, mqty_t *out) {
  if (mode == 2) {
    for (int p = 0; p < NPOS; p++) {
      int q = (int)et_rng_below(&RNG, NPOS);
      bool in = false;
      for (int i = 0; i < m->nlines; i++) in |= m->lines[i].pos == q;
      if (!in) {
        out[0] = (mqty_t){q, 1};
        return 1;
      }
      (void)p;
    }
    return 0;
  }
  if (mode == 1) {
    const mline_t *l = &m->lines[et_rng_below(&RNG, (uint32_t)m->nlines)];
    out[0] = (mqty_t){l->pos, mline_rem(l) + 1};
    return 1;
  }
  int idx[MAXL], n = 0;
  for (int i = 0; i < m->nlines; i++)
    if (mline_rem(&m->lines[i]) > 0) idx[n++] = i;
  if (n == 0) return 0;
  int want = 1 + (int)et_rng_below(&RNG, 2), got = 0;
  for (int k = 0; k < want && n > 0; k++) {
    int j = (int)et_rng_below(&RNG, (uint32_t)n);
    const mline_t *l = &m->lines[idx[j]];
    out[got++] = (mqty_t){l->pos, et_rng_range(&RNG, 1, mline_rem(l))};
    idx[j] = idx[--n];
  }
  return got;
}

static void to_qty_lines(const mqty_t *q, int n, atp_qty_line_t *out) {
  for (int i = 0; i < n; i++)
    out[i] = (atp_qty_line_t){S(SKU[pos_sku(q[i].pos)]), S(LOC[pos_loc(q[i].pos)]),
                              q[i].qty};
}

static void describe_qty(const mqty_t *q, int n) {
  for (int i = 0; i < n; i++) {
    size_t len = strlen(OP);
    snprintf(OP + len, sizeof OP - len, " %s@%s x%lld", SKU[pos_sku(q[i].pos)],
             LOC[pos_loc(q[i].pos)], (long long)q[i].qty);
  }
}

static bool op_release(void) {
  int ri = pick_res();
  if (ri < 0) return true;
  mres_t *m = &M->res[ri];
  bool live = m->status == ATP_STATUS_HELD || m->status == ATP_STATUS_COMMITTED;
  int mode = !live                  ? -1
             : et_rng_pct(&RNG, 40) ? -1
             : et_rng_pct(&RNG, 85) ? 0
                                    : (int)et_rng_range(&RNG, 1, 2);
  mqty_t q[2] = {{0, 0}, {0, 0}};
  int n = mode >= 0 ? make_qty_lines(m, mode, q) : 0;
  if (mode >= 0 && n == 0) mode = -1;
  snprintf(OP, sizeof OP, "release %s (%s) %s", m->id,
           atp_status_name((atp_status_t)m->status),
           mode < 0    ? "whole"
           : mode == 0 ? "lines"
           : mode == 1 ? "too many"
                       : "stranger");
  describe_qty(q, n);
  atp_qty_line_t lines[2];
  to_qty_lines(q, n, lines);
  RES.status = -1;
  /* Half the releases carry a release_id; one that changes something is
   * remembered (op_release_again). */
  mrel_t *k = M->nrel < MAXIDS && et_rng_pct(&RNG, 50) ? &M->rel[M->nrel] : NULL;
  if (k) {
    snprintf(k->id, sizeof k->id, "E%d", ++M->id_seq);
    size_t len = strlen(OP);
    snprintf(OP + len, sizeof OP - len, " release_id %s", k->id);
  }
  int rc = atp_release_keyed(E, S(m->id), k ? S(k->id) : (atp_str_t){NULL, 0}, lines,
                             (uint32_t)n, &OUT, &RES);
  if (m->status == ATP_STATUS_RELEASED) {
    EXPECT(rc == 0 && OUT.replayed, "rc %d replayed %d, want a replay", rc,
           OUT.replayed);
    COUNTERS[C_REPLAY]++;
    return check_res_fields(m, &OUT);
  }
  if (!live) return expect_conflict(rc, m);
  if (mode == 1) return expect_conflict(rc, m) && check_res(ri);
  if (mode == 2) {
    EXPECT(rc == ATP_EBADREQ, "rc %d, want bad_request", rc);
    return check_res(ri);
  }
  EXPECT(rc == 0 && !OUT.replayed, "rc %d (%s), want 0", rc, RES.message);
  if (mode < 0) {
    for (int i = 0; i < m->nlines; i++) {
      int64_t rem = mline_rem(&m->lines[i]);
      if (rem) {
        mres_units(m, m->lines[i].pos, -rem);
        m->lines[i].released += rem;
      }
    }
  } else {
    for (int i = 0; i < n; i++) {
      mline_t *l = mres_line(m, q[i].pos);
      mres_units(m, q[i].pos, -q[i].qty);
      l->released += q[i].qty;
    }
  }
  COUNTERS[C_RELEASE]++;
  if (mres_remaining(m) == 0) {
    mres_maybe_end(m, ATP_STATUS_RELEASED);
  }
  if (k) {
    k->res = ri;
    k->n = n;
    memcpy(k->lines, q, sizeof q);
    M->nrel++;
  }
  return check_res_fields(m, &OUT) && check_res(ri);
}

/* A remembered release_id again: a replay that changes nothing and answers the
 * reservation as it is now, or (other lines) a mismatch. */
static bool op_release_again(atp_engine_t *engine, bool mismatch) {
  if (M->nrel == 0) return true;
  mrel_t *k = &M->rel[et_rng_below(&RNG, (uint32_t)M->nrel)];
  mres_t *m = &M->res[k->res];
  snprintf(OP, sizeof OP, "release %s %s again%s%s", m->id, k->id,
           mismatch ? " (other content)" : "", engine == REP ? " (replica)" : "");
  atp_qty_line_t lines[3];
  to_qty_lines(k->lines, k->n, lines);
  int n = k->n;
  if (mismatch) {
    if (n > 0)
      lines[0].qty += 1;
    else
      lines[n++] = (atp_qty_line_t){S(SKU[pos_sku(m->lines[0].pos)]),
                                    S(LOC[pos_loc(m->lines[0].pos)]), 1};
  }
  int rc =
      atp_release_keyed(engine, S(m->id), S(k->id), lines, (uint32_t)n, &OUT, &RES);
  if (mismatch) {
    EXPECT(rc == ATP_EIDEMPOTENCY, "rc %d, want idempotency_mismatch", rc);
    COUNTERS[C_MISMATCH]++;
    return engine == REP || check_res(k->res);
  }
  EXPECT(rc == 0 && OUT.replayed, "rc %d replayed %d, want a replay", rc, OUT.replayed);
  COUNTERS[C_REPLAY]++;
  return check_res_fields(m, &OUT);
}

static bool op_extend(void) {
  int ri = pick_res();
  if (ri < 0) return true;
  mres_t *m = &M->res[ri];
  bool invalid = et_rng_pct(&RNG, 5);
  int64_t ttl = invalid ? 999 : 2000 + 4000 * et_rng_range(&RNG, 0, 12);
  snprintf(OP, sizeof OP, "extend %s (%s) ttl %lld", m->id,
           atp_status_name((atp_status_t)m->status), (long long)ttl);
  RES.status = -1;
  int rc = atp_extend(E, S(m->id), ttl, &OUT, &RES);
  if (invalid) {
    EXPECT(rc == ATP_EBADREQ, "rc %d, want bad_request", rc);
    return check_res(ri);
  }
  if (m->status != ATP_STATUS_HELD) return expect_conflict(rc, m);
  EXPECT(rc == 0, "rc %d, want 0", rc);
  m->expires_at = now() + ttl;
  m->ttl_known = false; /* whether ttl_ms follows the extension is not specified */
  return check_res_fields(m, &OUT) && check_res(ri);
}

static bool op_fulfil(void) {
  int ri = pick_res();
  if (ri < 0 || M->nful >= MAXIDS) return true;
  mres_t *m = &M->res[ri];
  bool live = m->status == ATP_STATUS_HELD || m->status == ATP_STATUS_COMMITTED;
  int mode = !live                  ? -1
             : et_rng_pct(&RNG, 40) ? -1
             : et_rng_pct(&RNG, 85) ? 0
                                    : (int)et_rng_range(&RNG, 1, 2);
  mqty_t q[2] = {{0, 0}, {0, 0}};
  int n = mode >= 0 ? make_qty_lines(m, mode, q) : 0;
  if (mode >= 0 && n == 0) mode = -1;
  mful_t *f = &M->ful[M->nful];
  snprintf(f->id, sizeof f->id, "F%d", ++M->id_seq);
  snprintf(OP, sizeof OP, "fulfil %s (%s) %s %s", m->id,
           atp_status_name((atp_status_t)m->status), f->id,
           mode < 0    ? "whole"
           : mode == 0 ? "lines"
           : mode == 1 ? "too many"
                       : "stranger");
  describe_qty(q, n);
  atp_qty_line_t lines[2];
  to_qty_lines(q, n, lines);
  RES.status = -1;
  int rc = atp_fulfil(E, S(m->id), S(f->id), lines, (uint32_t)n, &OUT, &RES);
  if (!live) return expect_conflict(rc, m);
  if (mode == 1) return expect_conflict(rc, m) && check_res(ri);
  if (mode == 2) {
    EXPECT(rc == ATP_EBADREQ, "rc %d, want bad_request", rc);
    return check_res(ri);
  }
  EXPECT(rc == 0 && !OUT.replayed, "rc %d (%s), want 0", rc, RES.message);
  if (m->status == ATP_STATUS_HELD) mres_commit(m);
  mqty_t all[MAXL];
  if (mode < 0) {
    n = 0;
    for (int i = 0; i < m->nlines; i++)
      if (mline_rem(&m->lines[i]) > 0)
        all[n++] = (mqty_t){m->lines[i].pos, mline_rem(&m->lines[i])};
  } else {
    memcpy(all, q, sizeof q[0] * (size_t)n);
  }
  for (int i = 0; i < n; i++) {
    mline_t *l = mres_line(m, all[i].pos);
    l->fulfilled += all[i].qty;
    mpos_t *p = &M->pos[all[i].pos];
    p->committed -= all[i].qty;
    p->on_hand -= all[i].qty;
    p->dirty = true;
    mpos_hist(all[i].pos, now(), -all[i].qty);
  }
  mres_maybe_end(m, ATP_STATUS_FULFILLED);
  COUNTERS[C_FULFIL]++;
  f->res = ri;
  f->n = mode < 0 ? 0 : n;
  memcpy(f->lines, q, sizeof q);
  M->nful++;
  return check_res_fields(m, &OUT) && check_res(ri);
}

static bool op_fulfil_again(bool mismatch) {
  if (M->nful == 0) return true;
  mful_t *f = &M->ful[et_rng_below(&RNG, (uint32_t)M->nful)];
  mres_t *m = &M->res[f->res];
  snprintf(OP, sizeof OP, "fulfil %s %s again%s", m->id, f->id,
           mismatch ? " (other content)" : "");
  atp_qty_line_t lines[3];
  to_qty_lines(f->lines, f->n, lines);
  int n = f->n;
  if (mismatch) {
    if (n > 0)
      lines[0].qty += 1;
    else
      lines[n++] = (atp_qty_line_t){S(SKU[pos_sku(m->lines[0].pos)]),
                                    S(LOC[pos_loc(m->lines[0].pos)]), 1};
  }
  int rc = atp_fulfil(E, S(m->id), S(f->id), lines, (uint32_t)n, &OUT, &RES);
  if (mismatch) {
    EXPECT(rc == ATP_EIDEMPOTENCY, "rc %d, want idempotency_mismatch", rc);
    COUNTERS[C_MISMATCH]++;
    return check_res(f->res);
  }
  EXPECT(rc == 0 && OUT.replayed, "rc %d replayed %d, want a replay", rc, OUT.replayed);
  COUNTERS[C_REPLAY]++;
  return check_res_fields(m, &OUT);
}

static bool op_amend(void) {
  int ri = pick_res();
  if (ri < 0 || M->namd >= MAXIDS) return true;
  mres_t *m = &M->res[ri];
  bool live = m->status == ATP_STATUS_HELD || m->status == ATP_STATUS_COMMITTED;
  mamend_t *a = &M->amd[M->namd];
  memset(a, 0, sizeof *a);
  snprintf(a->id, sizeof a->id, "M%d", ++M->id_seq);
  a->res = ri;
  if (live) a->nrel = make_qty_lines(m, 0, a->rel);
  if (live && a->nrel > 0 && et_rng_pct(&RNG, 30)) a->nrel = 0; /* add-only amends */
  /* Add lines: skus distinct from each other and from the released ones. */
  bool used[NSKU] = {false};
  for (int i = 0; i < a->nrel; i++) used[pos_sku(a->rel[i].pos)] = true;
  int want = 1 + (int)et_rng_below(&RNG, 2);
  for (int k = 0; k < want; k++) {
    int s = (int)et_rng_below(&RNG, NSKU);
    for (int t = 0; t < NSKU && used[s]; t++) s = (s + 1) % NSKU;
    if (used[s]) break;
    used[s] = true;
    random_req_line(&a->add[a->nadd++], s);
  }
  if (!live) a->nrel = 0;
  snprintf(OP, sizeof OP, "amend %s (%s) %s release", m->id,
           atp_status_name((atp_status_t)m->status), a->id);
  describe_qty(a->rel, a->nrel);
  strncat(OP, " add", sizeof OP - strlen(OP) - 1);
  describe_req(a->add, a->nadd);
  atp_qty_line_t rel[2];
  atp_line_req_t add[2];
  to_qty_lines(a->rel, a->nrel, rel);
  for (int i = 0; i < a->nadd; i++) add[i] = to_line_req(&a->add[i]);
  RES.status = -1;
  int rc = atp_amend(E, S(m->id), S(a->id), rel, (uint32_t)a->nrel, add,
                     (uint32_t)a->nadd, &OUT, &SF, &RES);
  if (!live) return expect_conflict(rc, m);
  alloc_t allocs[2];
  mshort_t shorts[2];
  int nshort = plan_lines(a->add, a->nadd, false, allocs, shorts);
  if (nshort) {
    EXPECT(rc == ATP_EINSUFFICIENT, "rc %d, want insufficient", rc);
    COUNTERS[C_AMEND_SHORT]++;
    return check_shortfalls(a->add, shorts, nshort) && check_res(ri);
  }
  EXPECT(rc == 0 && !OUT.replayed, "rc %d (%s), want 0", rc, RES.message);
  for (int i = 0; i < a->nrel; i++) {
    mline_t *l = mres_line(m, a->rel[i].pos);
    mres_units(m, a->rel[i].pos, -a->rel[i].qty);
    l->released += a->rel[i].qty;
  }
  if (!choose_allocs(m, a->add, a->nadd, allocs)) return false;
  for (int i = 0; i < a->nadd; i++)
    for (int k = 0; k < allocs[i].n; k++) {
      mqty_t it = allocs[i].items[k];
      mline_t *l = mres_line(m, it.pos);
      if (l)
        l->qty += it.qty;
      else
        m->lines[m->nlines++] = (mline_t){it.pos, it.qty, 0, 0};
      mres_units(m, it.pos, it.qty);
    }
  M->namd++;
  COUNTERS[C_AMEND]++;
  return check_res_fields(m, &OUT) && check_res(ri);
}

static bool op_amend_again(bool mismatch) {
  if (M->namd == 0) return true;
  mamend_t *a = &M->amd[et_rng_below(&RNG, (uint32_t)M->namd)];
  mres_t *m = &M->res[a->res];
  snprintf(OP, sizeof OP, "amend %s %s again%s", m->id, a->id,
           mismatch ? " (other content)" : "");
  atp_qty_line_t rel[2];
  atp_line_req_t add[2];
  to_qty_lines(a->rel, a->nrel, rel);
  for (int i = 0; i < a->nadd; i++) add[i] = to_line_req(&a->add[i]);
  if (mismatch) add[0].qty += 1;
  int rc = atp_amend(E, S(m->id), S(a->id), rel, (uint32_t)a->nrel, add,
                     (uint32_t)a->nadd, &OUT, &SF, &RES);
  if (mismatch) {
    EXPECT(rc == ATP_EIDEMPOTENCY, "rc %d, want idempotency_mismatch", rc);
    COUNTERS[C_MISMATCH]++;
    return check_res(a->res);
  }
  EXPECT(rc == 0 && OUT.replayed, "rc %d replayed %d, want a replay", rc, OUT.replayed);
  COUNTERS[C_REPLAY]++;
  return check_res_fields(m, &OUT);
}

static void snapshot_outcome(madj_t *a, int p) {
  const mpos_t *m = &M->pos[p];
  a->o_on_hand = m->on_hand;
  a->o_safety = m->safety;
  a->o_reserved = m->reserved;
  a->o_committed = m->committed;
  a->o_counted_at = m->counted_at;
}

static bool op_adjust(void) {
  if (M->nadj >= MAXIDS) return true;
  madj_t *a = &M->adj[M->nadj];
  memset(a, 0, sizeof *a);
  snprintf(a->id, sizeof a->id, "A%d", ++M->id_seq);
  a->pos = (int)et_rng_below(&RNG, NPOS);
  mpos_t *m = &M->pos[a->pos];
  do a->delta = et_rng_range(&RNG, -5, 12);
  while (a->delta == 0);
  a->reason = (int)et_rng_below(&RNG, ATP_REASON_COUNT_);
  a->occurred_at = ATP_TIME_NONE;
  if (et_rng_pct(&RNG, 30)) {
    if (m->exists && m->counted_at != ATP_TIME_NONE && et_rng_pct(&RNG, 50))
      a->occurred_at = m->counted_at + et_rng_range(&RNG, -2, 2);
    else
      a->occurred_at = now() - et_rng_range(&RNG, 0, 300000);
    if (a->occurred_at > now()) a->occurred_at = now();
  }
  int cf = m->exists ? (int)et_rng_below(&RNG, 100) : 100;
  if (cf < 15) {
    a->has_cf = true;
    a->cf = cf < 10 ? m->on_hand : m->on_hand + 1;
  }
  snprintf(OP, sizeof OP, "adjust %s %s@%s %+lld at %lld%s", a->id,
           SKU[pos_sku(a->pos)], LOC[pos_loc(a->pos)], (long long)a->delta,
           a->occurred_at == ATP_TIME_NONE ? 0LL : (long long)(a->occurred_at - now()),
           a->has_cf ? (a->cf == m->on_hand ? " change_from ok" : " change_from wrong")
                     : "");
  atp_adjust_req_t req;
  memset(&req, 0, sizeof req);
  req.id = S(a->id);
  req.sku = S(SKU[pos_sku(a->pos)]);
  req.location = S(LOC[pos_loc(a->pos)]);
  req.delta = a->delta;
  req.reason = (atp_reason_t)a->reason;
  req.source = ATP_STR("model");
  req.occurred_at_ms = a->occurred_at;
  req.has_change_from = a->has_cf;
  req.change_from = a->cf;
  atp_adjust_res_t out;
  memset(&out, 0, sizeof out);
  int rc = atp_adjust(E, &req, &out, &RES);
  if (a->has_cf && a->cf != m->on_hand) {
    EXPECT(rc == ATP_ECONFLICT, "rc %d, want conflict", rc);
    EXPECT(RES.current_on_hand == m->on_hand, "current_on_hand %lld, want %lld",
           (long long)RES.current_on_hand, (long long)m->on_hand);
    return true;
  }
  EXPECT(rc == 0 && !out.replayed, "rc %d (%s), want 0", rc, RES.message);
  int64_t at = a->occurred_at == ATP_TIME_NONE ? now() : a->occurred_at;
  bool absorbed = m->exists && m->counted_at != ATP_TIME_NONE && at <= m->counted_at;
  if (!absorbed) {
    mpos_touch(a->pos);
    m->on_hand += a->delta;
    mpos_hist(a->pos, at, a->delta);
  }
  COUNTERS[C_ABSORBED] += absorbed;
  a->applied = !absorbed;
  a->absorbed = absorbed;
  EXPECT(out.applied == a->applied && out.absorbed == a->absorbed,
         "applied/absorbed %d/%d, want %d/%d", out.applied, out.absorbed, a->applied,
         a->absorbed);
  EXPECT(out.position.on_hand == m->on_hand && out.position.reserved == m->reserved &&
             out.position.committed == m->committed,
         "answer's position on_hand %lld, want %lld", (long long)out.position.on_hand,
         (long long)m->on_hand);
  snapshot_outcome(a, a->pos);
  a->o_version = out.position.version;
  M->nadj++;
  return true;
}

static bool op_adjust_again(bool mismatch) {
  if (M->nadj == 0) return true;
  madj_t *a = &M->adj[et_rng_below(&RNG, (uint32_t)M->nadj)];
  snprintf(OP, sizeof OP, "adjust %s again%s", a->id, mismatch ? " (other delta)" : "");
  atp_adjust_req_t req;
  memset(&req, 0, sizeof req);
  req.id = S(a->id);
  req.sku = S(SKU[pos_sku(a->pos)]);
  req.location = S(LOC[pos_loc(a->pos)]);
  req.delta = a->delta + (mismatch ? 1 : 0);
  if (req.delta == 0) req.delta = 2;
  req.reason = (atp_reason_t)a->reason;
  req.source = ATP_STR("model");
  req.occurred_at_ms = a->occurred_at;
  req.has_change_from = a->has_cf;
  req.change_from = a->cf;
  atp_adjust_res_t out;
  int rc = atp_adjust(E, &req, &out, &RES);
  if (mismatch) {
    EXPECT(rc == ATP_EIDEMPOTENCY, "rc %d, want idempotency_mismatch", rc);
    COUNTERS[C_MISMATCH]++;
    return true;
  }
  EXPECT(rc == 0 && out.replayed, "rc %d replayed %d, want a replay", rc, out.replayed);
  COUNTERS[C_REPLAY]++;
  EXPECT(out.applied == a->applied && out.absorbed == a->absorbed, "replayed flags");
  EXPECT(out.position.on_hand == a->o_on_hand && out.position.version == a->o_version &&
             out.position.reserved == a->o_reserved &&
             out.position.committed == a->o_committed,
         "replayed position on_hand %lld v%llu, want the original %lld v%llu",
         (long long)out.position.on_hand, (unsigned long long)out.position.version,
         (long long)a->o_on_hand, (unsigned long long)a->o_version);
  return true;
}

static bool op_count(void) {
  if (M->ncnt >= MAXIDS) return true;
  mcount_t *c = &M->cnt[M->ncnt];
  memset(c, 0, sizeof *c);
  snprintf(c->id, sizeof c->id, "C%d", ++M->id_seq);
  c->pos = (int)et_rng_below(&RNG, NPOS);
  mpos_t *m = &M->pos[c->pos];
  c->on_hand = et_rng_range(&RNG, 0, 40);
  if (et_rng_pct(&RNG, 15))
    c->counted_at = now() - WINDOW_MS - et_rng_range(&RNG, 2000, 200000);
  else
    c->counted_at = now() - et_rng_range(&RNG, 1, 300000);
  if (m->exists && c->counted_at == m->counted_at) c->counted_at -= 1;
  int cf = m->exists ? (int)et_rng_below(&RNG, 100) : 100;
  if (cf < 10) {
    c->has_cf = true;
    c->cf = cf < 7 ? m->on_hand : m->on_hand - 1;
  }
  snprintf(
      OP, sizeof OP, "count %s %s@%s = %lld at now%lld (position counted_at now%lld)%s",
      c->id, SKU[pos_sku(c->pos)], LOC[pos_loc(c->pos)], (long long)c->on_hand,
      (long long)(c->counted_at - now()),
      m->exists && m->counted_at != ATP_TIME_NONE ? (long long)(m->counted_at - now())
                                                  : 0LL,
      c->has_cf ? " change_from" : "");
  atp_count_req_t req;
  memset(&req, 0, sizeof req);
  req.id = S(c->id);
  req.sku = S(SKU[pos_sku(c->pos)]);
  req.location = S(LOC[pos_loc(c->pos)]);
  req.on_hand = c->on_hand;
  req.counted_at_ms = c->counted_at;
  req.source = ATP_STR("model");
  req.has_change_from = c->has_cf;
  req.change_from = c->cf;
  atp_count_res_t out;
  memset(&out, 0, sizeof out);
  int rc = atp_count(E, &req, &out, &RES);
  if (c->has_cf && c->cf != m->on_hand) {
    EXPECT(rc == ATP_ECONFLICT, "rc %d, want conflict", rc);
    EXPECT(RES.current_on_hand == m->on_hand, "current_on_hand");
    return true;
  }
  EXPECT(rc == 0 && !out.replayed, "rc %d (%s), want 0", rc, RES.message);
  bool stale =
      m->exists && m->counted_at != ATP_TIME_NONE && c->counted_at < m->counted_at;
  if (stale) {
    EXPECT(out.stale && !out.applied, "stale/applied %d/%d, want stale", out.stale,
           out.applied);
    c->stale = true;
    COUNTERS[C_STALE]++;
  } else {
    bool approximate = c->counted_at < now() - WINDOW_MS;
    EXPECT(out.applied && !out.stale && out.approximate == approximate,
           "applied/stale/approximate %d/%d/%d, want 1/0/%d", out.applied, out.stale,
           out.approximate, approximate);
    mpos_touch(c->pos);
    int64_t v = c->on_hand;
    for (int i = 0; i < m->nhist; i++)
      if (m->hist[i].at > c->counted_at) v += m->hist[i].delta;
    if (approximate) {
      /* "applied as best known": the history before the window may be gone. */
      v = out.position.on_hand;
    }
    m->on_hand = v;
    m->counted_at = c->counted_at;
    c->applied = true;
    c->approximate = approximate;
    COUNTERS[C_COUNT]++;
    COUNTERS[C_APPROX] += approximate;
  }
  EXPECT(
      out.position.on_hand == m->on_hand && out.position.counted_at_ms == m->counted_at,
      "answer's position on_hand %lld counted_at %lld, want %lld %lld",
      (long long)out.position.on_hand, (long long)out.position.counted_at_ms,
      (long long)m->on_hand, (long long)m->counted_at);
  c->o_on_hand = m->on_hand;
  c->o_version = out.position.version;
  M->ncnt++;
  return true;
}

static bool op_count_again(bool mismatch) {
  if (M->ncnt == 0) return true;
  mcount_t *c = &M->cnt[et_rng_below(&RNG, (uint32_t)M->ncnt)];
  snprintf(OP, sizeof OP, "count %s again%s", c->id, mismatch ? " (other figure)" : "");
  atp_count_req_t req;
  memset(&req, 0, sizeof req);
  req.id = S(c->id);
  req.sku = S(SKU[pos_sku(c->pos)]);
  req.location = S(LOC[pos_loc(c->pos)]);
  req.on_hand = c->on_hand + (mismatch ? 1 : 0);
  req.counted_at_ms = c->counted_at;
  req.source = ATP_STR("model");
  req.has_change_from = c->has_cf;
  req.change_from = c->cf;
  atp_count_res_t out;
  int rc = atp_count(E, &req, &out, &RES);
  if (mismatch) {
    EXPECT(rc == ATP_EIDEMPOTENCY, "rc %d, want idempotency_mismatch", rc);
    COUNTERS[C_MISMATCH]++;
    return true;
  }
  EXPECT(rc == 0 && out.replayed, "rc %d replayed %d, want a replay", rc, out.replayed);
  COUNTERS[C_REPLAY]++;
  EXPECT(out.applied == c->applied && out.stale == c->stale &&
             (c->stale || out.approximate == c->approximate),
         "replayed flags");
  EXPECT(out.position.on_hand == c->o_on_hand && out.position.version == c->o_version,
         "replayed position on_hand %lld, want the original %lld",
         (long long)out.position.on_hand, (long long)c->o_on_hand);
  return true;
}

/* Adjustments and counts share one id namespace: an adjustment's id sent as a
 * count, or a count's as an adjustment, is a mismatch and changes nothing. */
static bool op_cross_kind(void) {
  bool as_count = et_rng_pct(&RNG, 50);
  if (as_count ? M->nadj == 0 : M->ncnt == 0) return true;
  int p = (int)et_rng_below(&RNG, NPOS);
  int rc;
  if (as_count) {
    madj_t *a = &M->adj[et_rng_below(&RNG, (uint32_t)M->nadj)];
    snprintf(OP, sizeof OP, "count with adjustment id %s", a->id);
    atp_count_req_t req;
    memset(&req, 0, sizeof req);
    req.id = S(a->id);
    req.sku = S(SKU[pos_sku(p)]);
    req.location = S(LOC[pos_loc(p)]);
    req.on_hand = 3;
    req.counted_at_ms = now() - 1000;
    req.source = ATP_STR("model");
    atp_count_res_t out;
    rc = atp_count(E, &req, &out, &RES);
  } else {
    mcount_t *c = &M->cnt[et_rng_below(&RNG, (uint32_t)M->ncnt)];
    snprintf(OP, sizeof OP, "adjust with count id %s", c->id);
    atp_adjust_req_t req;
    memset(&req, 0, sizeof req);
    req.id = S(c->id);
    req.sku = S(SKU[pos_sku(p)]);
    req.location = S(LOC[pos_loc(p)]);
    req.delta = 1;
    req.reason = ATP_REASON_RECEIVED;
    req.source = ATP_STR("model");
    req.occurred_at_ms = ATP_TIME_NONE;
    atp_adjust_res_t out;
    rc = atp_adjust(E, &req, &out, &RES);
  }
  EXPECT(rc == ATP_EIDEMPOTENCY, "rc %d, want idempotency_mismatch", rc);
  COUNTERS[C_MISMATCH]++;
  return true;
}

static bool op_safety(void) {
  int p = (int)et_rng_below(&RNG, NPOS);
  int64_t v = et_rng_range(&RNG, 0, 6);
  snprintf(OP, sizeof OP, "safety %s@%s = %lld", SKU[pos_sku(p)], LOC[pos_loc(p)],
           (long long)v);
  atp_position_t out;
  int rc =
      atp_safety_stock_set(E, S(SKU[pos_sku(p)]), S(LOC[pos_loc(p)]), v, &out, &RES);
  EXPECT(rc == 0, "rc %d", rc);
  mpos_t *m = &M->pos[p];
  bool changed = !m->exists || m->safety != v;
  if (!m->exists) mpos_touch(p);
  m->safety = v;
  if (changed) m->dirty = true;
  EXPECT(out.safety_stock == v && out.on_hand == m->on_hand, "answer's position");
  return true;
}

static bool op_group(void) {
  int g = (int)et_rng_below(&RNG, NGRP);
  mgroup_t *m = &M->grp[g];
  if (m->exists && et_rng_pct(&RNG, 15)) {
    snprintf(OP, sizeof OP, "group delete %s", GRP[g]);
    EXPECT(atp_group_delete(E, S(GRP[g]), &RES) == 0, "rc");
    m->exists = false;
    return true;
  }
  int locs[NLOC];
  for (int i = 0; i < NLOC; i++) locs[i] = i;
  for (int i = NLOC - 1; i > 0; i--) {
    int j = (int)et_rng_below(&RNG, (uint32_t)i + 1), t = locs[i];
    locs[i] = locs[j];
    locs[j] = t;
  }
  m->n = 1 + (int)et_rng_below(&RNG, NLOC);
  memcpy(m->locs, locs, sizeof locs);
  m->exists = true;
  atp_str_t names[NLOC];
  snprintf(OP, sizeof OP, "group put %s:", GRP[g]);
  for (int i = 0; i < m->n; i++) {
    names[i] = S(LOC[m->locs[i]]);
    strncat(OP, " ", sizeof OP - strlen(OP) - 1);
    strncat(OP, LOC[m->locs[i]], sizeof OP - strlen(OP) - 1);
  }
  EXPECT(atp_group_put(E, S(GRP[g]), names, (uint32_t)m->n, &RES) == 0, "rc");
  atp_str_t out[NLOC];
  uint32_t n = 0;
  EXPECT(atp_group_get(E, S(GRP[g]), out, NLOC, &n) == 0 && (int)n == m->n,
         "group get");
  for (int i = 0; i < m->n; i++)
    EXPECT(et_str_is(out[i], LOC[m->locs[i]]), "group order");
  return true;
}

static bool op_tick(void) {
  int64_t step = 4000 * et_rng_range(&RNG, 1, 4);
  et_clock_add(&CLK, step);
  snprintf(OP, sizeof OP, "clock +%lld ms, tick", (long long)step);
  uint32_t expired = atp_engine_tick(E);
  uint32_t want = 0;
  for (int i = 0; i < M->nres; i++) {
    mres_t *m = &M->res[i];
    if (m->status != ATP_STATUS_HELD || m->expires_at > now()) continue;
    for (int k = 0; k < m->nlines; k++) {
      int64_t rem = mline_rem(&m->lines[k]);
      if (rem) {
        mres_units(m, m->lines[k].pos, -rem);
        m->lines[k].released += rem;
      }
    }
    m->status = ATP_STATUS_EXPIRED;
    m->ended_at = now();
    want++;
  }
  EXPECT(expired == want, "tick expired %u, want %u", expired, want);
  COUNTERS[C_EXPIRED] += want;
  return true;
}

/* --- replica -----------------------------------------------------------------------
 */

static void replica_hook(void *ctx, const atp_change_t *records, uint32_t count) {
  (void)ctx;
  if (count == 0 || atp_engine_apply(REP, records, count) != 0) REPLICA_ERRORS++;
}

static bool check_replica(void) {
  snprintf(OP, sizeof OP, "replica comparison");
  EXPECT(REPLICA_ERRORS == 0, "%d hook groups failed to apply", REPLICA_ERRORS);
  for (int p = 0; p < NPOS; p++) {
    atp_position_t a, b;
    int ra = atp_position_get(E, S(SKU[pos_sku(p)]), S(LOC[pos_loc(p)]), &a);
    int rb = atp_position_get(REP, S(SKU[pos_sku(p)]), S(LOC[pos_loc(p)]), &b);
    EXPECT(ra == rb, "position %s@%s: rc %d vs replica %d", SKU[pos_sku(p)],
           LOC[pos_loc(p)], ra, rb);
    if (ra) continue;
    EXPECT(
        a.on_hand == b.on_hand && a.safety_stock == b.safety_stock &&
            a.reserved == b.reserved && a.committed == b.committed &&
            a.available == b.available && a.shortfall == b.shortfall &&
            a.counted_at_ms == b.counted_at_ms && a.version == b.version,
        "position %s@%s differs in the replica: on_hand %lld/%lld reserved %lld/%lld "
        "committed %lld/%lld version %llu/%llu",
        SKU[pos_sku(p)], LOC[pos_loc(p)], (long long)a.on_hand, (long long)b.on_hand,
        (long long)a.reserved, (long long)b.reserved, (long long)a.committed,
        (long long)b.committed, (unsigned long long)a.version,
        (unsigned long long)b.version);
  }
  for (int i = 0; i < M->nres; i++) {
    int rb = atp_reservation_get(REP, S(M->res[i].id), &GOT);
    EXPECT(rb == 0, "reservation %s missing in the replica", M->res[i].id);
    if (!check_res_fields(&M->res[i], &GOT)) return false;
  }
  /* The remembered keys came through the records too: every release_id and
   * fulfillment_id is a replay in the replica, never a second release. */
  for (int i = 0; i < M->nrel; i++) {
    const mrel_t *k = &M->rel[i];
    atp_qty_line_t lines[2];
    to_qty_lines(k->lines, k->n, lines);
    snprintf(OP, sizeof OP, "replica: release %s %s again", M->res[k->res].id, k->id);
    int rc = atp_release_keyed(REP, S(M->res[k->res].id), S(k->id), lines,
                               (uint32_t)k->n, &OUT, &RES);
    EXPECT(rc == 0 && OUT.replayed, "rc %d replayed %d, want a replay", rc,
           OUT.replayed);
    if (!check_res_fields(&M->res[k->res], &OUT)) return false;
  }
  for (int i = 0; i < M->nful; i++) {
    const mful_t *f = &M->ful[i];
    atp_qty_line_t lines[2];
    to_qty_lines(f->lines, f->n, lines);
    snprintf(OP, sizeof OP, "replica: fulfil %s %s again", M->res[f->res].id, f->id);
    int rc = atp_fulfil(REP, S(M->res[f->res].id), S(f->id), lines, (uint32_t)f->n,
                        &OUT, &RES);
    EXPECT(rc == 0 && OUT.replayed, "rc %d replayed %d, want a replay", rc,
           OUT.replayed);
  }
  return true;
}

/* --- driver -------------------------------------------------------------------------
 */

static bool step_once(void) {
  uint32_t r = et_rng_below(&RNG, 1000);
  bool ok;
  if (r < 220)
    ok = op_reserve();
  else if (r < 240)
    ok = op_reserve_again(false);
  else if (r < 250)
    ok = op_reserve_again(true);
  else if (r < 330)
    ok = op_commit();
  else if (r < 420)
    ok = op_release();
  else if (r < 460)
    ok = op_extend();
  else if (r < 540)
    ok = op_fulfil();
  else if (r < 555)
    ok = op_fulfil_again(false);
  else if (r < 565)
    ok = op_fulfil_again(true);
  else if (r < 615)
    ok = op_amend();
  else if (r < 625)
    ok = op_amend_again(false);
  else if (r < 630)
    ok = op_amend_again(true);
  else if (r < 760)
    ok = op_adjust();
  else if (r < 775)
    ok = op_adjust_again(false);
  else if (r < 785)
    ok = op_adjust_again(true);
  else if (r < 845)
    ok = op_count();
  else if (r < 860)
    ok = op_count_again(false);
  else if (r < 865)
    ok = op_count_again(true);
  else if (r < 895)
    ok = op_safety();
  else if (r < 910)
    ok = op_group();
  else if (r < 925)
    ok = op_release_again(E, false);
  else if (r < 930)
    ok = op_release_again(E, true);
  else if (r < 935)
    ok = op_cross_kind();
  else
    ok = op_tick();
  if (!ok) return false;
  for (int p = 0; p < NPOS; p++)
    if (!check_pos(p)) return false;
  if (STEP % 25 == 0) {
    snprintf(OP, sizeof OP, "periodic check after step %d", STEP);
    for (int i = 0; i < M->nres; i++)
      if (!check_res(i)) return false;
    if (!check_listing((int)et_rng_below(&RNG, NSKU))) return false;
  }
  return true;
}

static bool run_seed(uint64_t seed, int steps) {
  SEED = seed;
  RNG.state = seed;
  STEP = 0;
  REPLICA_ERRORS = 0;
  memset(M, 0, sizeof *M);
  et_clock_set(&CLK, ET_T0_MS);
  atp_engine_config_t config = et_config(&CLK);
  config.history_window_ms = WINDOW_MS;
  config.on_change = replica_hook;
  atp_engine_config_t rconfig = et_config(&CLK);
  rconfig.history_window_ms = WINDOW_MS;
  if (atp_engine_create(&config, &E) != 0 || atp_engine_create(&rconfig, &REP) != 0) {
    fprintf(stderr, "  cannot create the engines\n");
    return false;
  }
  atp_engine_tick(E); /* the server ticks from the start */
  bool ok = true;
  for (STEP = 0; STEP < steps && ok; STEP++) ok = step_once();
  if (ok) {
    snprintf(OP, sizeof OP, "final check");
    for (int i = 0; i < M->nres && ok; i++) ok = check_res(i);
    for (int s = 0; s < NSKU && ok; s++) ok = check_listing(s);
    if (ok) ok = check_replica();
  }
  atp_engine_destroy(E);
  atp_engine_destroy(REP);
  E = REP = NULL;
  printf("     seed %" PRIu64 ":", seed);
  for (int i = 0; i < C_N; i++) printf(" %s=%" PRIu64, COUNTER_NAMES[i], COUNTERS[i]);
  printf("\n");
  memset(COUNTERS, 0, sizeof COUNTERS);
  return ok;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  uint64_t seed = (uint64_t)time(NULL) ^ ((uint64_t)clock() << 20);
  const char *env = getenv("ATP_SEED");
  if (argc > 1)
    seed = strtoull(argv[1], NULL, 10);
  else if (env && *env)
    seed = strtoull(env, NULL, 10);
  int steps = 6000;
  const char *env_steps = getenv("ATP_MODEL_STEPS");
  if (env_steps && atoi(env_steps) > 0) steps = atoi(env_steps);
  int seeds = (argc > 1 || (env && *env)) ? 1 : 3;
  printf("model test: seed %" PRIu64 ", %d steps x %d seeds\n", seed, steps, seeds);
  M = calloc(1, sizeof *M);
  if (!M) return 1;
  int passed = 0, failed = 0;
  for (int i = 0; i < seeds; i++) {
    uint64_t s = seed + (uint64_t)i;
    if (run_seed(s, steps)) {
      passed++;
      printf("ok   seed %" PRIu64 "\n", s);
    } else {
      failed++;
      printf("FAIL seed %" PRIu64 " (replay with ATP_SEED=%" PRIu64 ")\n", s, s);
    }
  }
  free(M);
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
