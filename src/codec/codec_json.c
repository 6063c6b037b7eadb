/* codec_json.c - JSON bodies into atp_val_t, with yajl 2.1.
 *
 * yajl was chosen by measurement (bench/RESULTS.md, "JSON library"): it is an
 * event parser, so its callbacks build our tree directly in the request's
 * arena with no library tree in between; a 1-line reservation parses in about
 * 0.95 us against jansson's 3.4 us. yajl checks the grammar (RFC 8259: no
 * comments, leading zeros or trailing commas) and the shape of UTF-8; what
 * else the contract needs is done here, in the callbacks, at the token:
 *  - numbers arrive as text: integers are read exactly and refused outside
 *    int64; a number with '.', 'e' or 'E' is a float (jansson's rule);
 *  - duplicate keys: a linear scan while an object has at most 16 members,
 *    then a hash set keyed by a per-process random SipHash key, so that no
 *    choice of keys makes an object quadratic;
 *  - nesting beyond ATP_CODEC_DEPTH_MAX: the opening bracket's callback stops
 *    the parse before yajl pushes the level, so its own stack stays small;
 *  - strings: yajl accepts overlong forms, encoded surrogates and code points
 *    above U+10FFFF, decodes a lone "\ud800" to '?' and a high surrogate
 *    followed by any \u escape to some other character. Every string goes
 *    through atp_codec_utf8_prefix; one whose escapes may have hidden a bad
 *    surrogate (its decoded text holds '?' or a 4-byte character, or fails
 *    that check) is read again from the body. Strings keep \u0000; keys
 *    refuse it, as jansson did.
 * Error offsets are byte offsets in the body at the start of the offending
 * token (or at the offending byte inside a string): in a callback yajl has
 * consumed the input just past the token, and tokens are found back from there.
 *
 * Memory: yajl's handle and buffers and our scratch stack (the children of
 * the containers still open) come from a per-thread arena reset after each
 * parse, so once warm a parse calls no malloc. A yajl handle cannot be reset,
 * so each parse makes one: a few bump allocations. yajl uses its allocations
 * unchecked, so running out of memory inside yajl aborts the process.
 *
 * Streams (batch bodies up to 64 MiB) keep the outer scan of the array or the
 * lines and parse one item at a time with a fresh handle that stops after the
 * value, so memory stays proportional to one item and the body is read once.
 *
 * Thread: any thread. yajl has no global state (libyajl's only writable data
 * belong to the C runtime's start-up code); ours is per thread, but for the
 * hash key written once.
 */
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>
#include <yajl/yajl_parse.h>

#include "atp/assert.h"
#include "atp/error.h"
#include "atp/limits.h"
#include "codec_internal.h"

/* --- per-thread heap -------------------------------------------------------- */

#define HEAP_CHUNK_BYTES    (64 * 1024)
#define SCRATCH_ENTRIES_MIN 64

typedef struct {
  atp_arena_t arena; /* yajl's memory, scratch stack, key sets; reset per parse */
  bool in_parse;     /* a parse runs on this thread (parses never nest) */
} heap_t;

static pthread_once_t heap_once = PTHREAD_ONCE_INIT;
static pthread_key_t heap_key;
static _Thread_local heap_t *tl_heap;
static uint64_t key_hash_seed[2]; /* SipHash key; written once under heap_once */

static void heap_destroy(void *ptr) {
  heap_t *h = ptr;
  atp_arena_destroy(&h->arena);
  atp_free(h);
}

static void heap_setup(void) {
  int rc = pthread_key_create(&heap_key, heap_destroy);
  ATP_ASSERT(rc == 0);
  (void)rc;
  if (getrandom(key_hash_seed, sizeof key_hash_seed, 0) != sizeof key_hash_seed) {
    /* No kernel entropy: the time and an address are still unknown outside. */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    key_hash_seed[0] = (uint64_t)ts.tv_nsec << 32 ^ (uint64_t)ts.tv_sec;
    key_hash_seed[1] = (uint64_t)(uintptr_t)&ts ^ (uint64_t)getpid();
  }
}

/* This thread's heap, marked in use; NULL when out of memory. */
static heap_t *heap_enter(void) {
  pthread_once(&heap_once, heap_setup);
  heap_t *h = tl_heap;
  if (!h) {
    h = atp_calloc(1, sizeof *h);
    if (!h) return NULL;
    atp_arena_init(&h->arena, HEAP_CHUNK_BYTES, 0);
    pthread_setspecific(heap_key, h);
    tl_heap = h;
  }
  ATP_ASSERT(!h->in_parse); /* fn of a stream runs between parses, never inside */
  h->in_parse = true;
  return h;
}

static void heap_leave(heap_t *h) {
  ATP_ASSERT(h->in_parse);
  h->in_parse = false;
  atp_arena_reset(&h->arena);
}

/* yajl's allocator. Each block carries its size for realloc; free is a no-op
 * because the arena is reset after the parse. */
static void *yajl_heap_malloc(void *ctx, size_t bytes) {
  heap_t *h = ctx;
  size_t *block = atp_arena_alloc(&h->arena, sizeof(size_t) + bytes);
  if (!block) {
    fputs("atpd: out of memory inside the JSON parser\n", stderr);
    abort();
  }
  block[0] = bytes;
  return block + 1;
}

static void *yajl_heap_realloc(void *ctx, void *ptr, size_t bytes) {
  if (!ptr) return yajl_heap_malloc(ctx, bytes);
  size_t had = ((size_t *)ptr)[-1];
  if (bytes <= had) return ptr;
  void *grown = yajl_heap_malloc(ctx, bytes);
  memcpy(grown, ptr, had);
  return grown;
}

static void yajl_heap_free(void *ctx, void *ptr) {
  (void)ctx, (void)ptr;
}

/* --- key hash: SipHash-1-3 ------------------------------------------------------ */

static inline uint64_t rotl64(uint64_t x, int bits) {
  return x << bits | x >> (64 - bits);
}

static inline void sip_round(uint64_t v[4]) {
  v[0] += v[1], v[1] = rotl64(v[1], 13), v[1] ^= v[0], v[0] = rotl64(v[0], 32);
  v[2] += v[3], v[3] = rotl64(v[3], 16), v[3] ^= v[2];
  v[0] += v[3], v[3] = rotl64(v[3], 21), v[3] ^= v[0];
  v[2] += v[1], v[1] = rotl64(v[1], 17), v[1] ^= v[2], v[2] = rotl64(v[2], 32);
}

/* Keyed so that a client cannot choose keys that collide. */
static uint32_t key_hash(const char *s, size_t len) {
  uint64_t k0 = key_hash_seed[0], k1 = key_hash_seed[1];
  uint64_t v[4] = {k0 ^ 0x736f6d6570736575ull, k1 ^ 0x646f72616e646f6dull,
                   k0 ^ 0x6c7967656e657261ull, k1 ^ 0x7465646279746573ull};
  size_t i = 0;
  for (; i + 8 <= len; i += 8) {
    uint64_t word;
    memcpy(&word, s + i, 8);
    v[3] ^= word;
    sip_round(v);
    v[0] ^= word;
  }
  uint64_t last = (uint64_t)len << 56;
  for (size_t k = 0; i + k < len; k++)
    last |= (uint64_t)(unsigned char)s[i + k] << 8 * k;
  v[3] ^= last;
  sip_round(v);
  v[0] ^= last;
  v[2] ^= 0xff;
  sip_round(v), sip_round(v), sip_round(v);
  return (uint32_t)(v[0] ^ v[1] ^ v[2] ^ v[3]);
}

/* --- parser state ------------------------------------------------------------ */

#define ROOT_TARGET        UINT32_MAX
#define LINEAR_MEMBERS_MAX 16 /* objects up to this size check keys pairwise */
#define KEY_SET_SLOTS_MIN  64

typedef struct {
  uint32_t hash;   /* key_hash of the member's key */
  uint32_t member; /* index in the object + 1; 0: empty slot */
} key_slot_t;

typedef struct {
  uint32_t first;       /* scratch index of the container's first child */
  uint32_t target;      /* scratch index of the entry it fills; ROOT_TARGET: root */
  bool is_object;       /* else an array */
  uint32_t key_mask;    /* slots - 1 of the key set in use; 0: none (small object) */
  key_slot_t *key_set;  /* this depth's key-set buffer, reused by later objects */
  uint32_t key_set_cap; /* slots in that buffer */
} frame_t;

typedef struct {
  const char *chunk;      /* the bytes given to yajl: body + base */
  size_t chunk_len;       /* chunk's length */
  size_t base;            /* chunk's offset in the body, added to error offsets */
  uint32_t depth_outside; /* containers open around the chunk's value */
  bool finishing;         /* inside yajl_complete_parse: tokens end at chunk_len */
  size_t value_end;       /* chunk offset just past the last value completed */
  yajl_handle yajl;       /* this parse's handle */
  heap_t *heap;           /* this thread's heap */
  atp_arena_t *arena;     /* the request's: the tree, its keys and strings */
  atp_member_t *scratch;  /* children of the open containers, innermost last */
  uint32_t scratch_used;  /* entries in use */
  uint32_t scratch_cap;   /* entries allocated */
  uint32_t open;          /* frames in use: open containers of this value */
  uint32_t frames_ready;  /* frames[0, frames_ready) have key_set fields set */
  int rc;                 /* why a callback stopped the parse (0: none) */
  atp_parse_error_t *err; /* where errors go */
  atp_val_t root;         /* the value, once complete */
  frame_t frames[ATP_CODEC_DEPTH_MAX];
} parser_t;

static bool failed(parser_t *p, size_t at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Records an error at chunk offset `at`; false, for a callback to return. */
static bool failed(parser_t *p, size_t at, const char *fmt, ...) {
  char message[sizeof p->err->message];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(message, sizeof message, fmt, ap);
  va_end(ap);
  p->rc = atp_codec_fail(p->err, p->base + at, "%s", message);
  return false;
}

static bool exhausted(parser_t *p) {
  atp_codec_fail(p->err, p->base, "request too large to parse (arena exhausted)");
  p->rc = ATP_ENOMEM;
  return false;
}

/* --- positions --------------------------------------------------------------- */

/* Chunk offset just past the token a callback is handed. Only a number can be
 * handed over while finishing: it was cut by the end of the input. */
static size_t token_end(const parser_t *p) {
  return p->finishing ? p->chunk_len : yajl_get_bytes_consumed(p->yajl);
}

/* The opening quote of the string whose closing quote is at `close`: the
 * nearest quote before it preceded by an even run of backslashes (inside a
 * valid string every quote is escaped). Linear in the string's length. */
static size_t string_open(const char *s, size_t close) {
  for (size_t i = close; i-- > 0;) {
    if (s[i] != '"') continue;
    size_t run = 0;
    while (run < i && s[i - 1 - run] == '\\') run++;
    if (run % 2 == 0) return i;
  }
  return 0;
}

static bool is_word_byte(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         c == '.' || c == '+' || c == '-';
}

/* Where the token ending at `end` starts: a string, a run of number or
 * literal bytes, or else the single byte before end. */
static size_t token_start(const char *s, size_t end) {
  if (end == 0) return 0;
  if (s[end - 1] == '"') return string_open(s, end - 1);
  if (!is_word_byte(s[end - 1])) return end - 1;
  size_t i = end - 1;
  while (i > 0 && is_word_byte(s[i - 1])) i--;
  return i;
}

static bool is_ws(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static size_t skip_ws(const char *s, size_t p, size_t len) {
  while (p < len && is_ws(s[p])) p++;
  return p;
}

/* --- strings ----------------------------------------------------------------- */

/* The 4 hex digits of a \u escape (yajl checked that they are hex). */
static uint32_t hex4(const char *s) {
  uint32_t v = 0;
  for (int i = 0; i < 4; i++) {
    char c = s[i];
    v = v << 4 | (uint32_t)(c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10);
  }
  return v;
}

/* Reads the string just lexed again from the body, to find the first of: a
 * \u escape of a surrogate that is not a high one followed by a low one, in a
 * key \u0000, an invalid UTF-8 sequence. true when there is none. */
static bool check_escapes(parser_t *p, bool is_key) {
  ATP_ASSERT(!p->finishing); /* strings never end inside yajl_complete_parse */
  const char *s = p->chunk;
  size_t close = yajl_get_bytes_consumed(p->yajl) - 1, open = string_open(s, close);
  ATP_ASSERT(s[close] == '"' && s[open] == '"');
  size_t bad = open + 1 + atp_codec_utf8_prefix(s + open + 1, close - open - 1);
  for (size_t i = open + 1; i < bad; i++) { /* escapes are ASCII: all before bad */
    if (s[i] != '\\') continue;
    if (s[i + 1] != 'u') {
      i++;
      continue;
    }
    uint32_t cp = hex4(s + i + 2);
    if (cp == 0 && is_key) return failed(p, i, "NUL byte in object key not supported");
    if (cp >= 0xd800 && cp <= 0xdbff && s[i + 6] == '\\' && s[i + 7] == 'u') {
      uint32_t low = hex4(s + i + 8);
      if (low >= 0xdc00 && low <= 0xdfff) {
        i += 11;
        continue;
      }
    }
    if (cp >= 0xd800 && cp <= 0xdfff)
      return failed(p, i, "invalid Unicode: lone surrogate \\u%04x", (unsigned)cp);
    i += 5;
  }
  if (bad < close) return failed(p, bad, "invalid UTF-8 in string");
  return true;
}

/* yajl hands a string over in place (no escapes: the body's own bytes) or
 * decoded into its buffer. In place, the UTF-8 check gives the exact offset.
 * Decoded, a lone high surrogate became '?', a high one followed by any \u
 * escape a 4-byte character, a lone low one an encoded surrogate that the
 * check refuses: only then is the body read again. */
static bool check_text(parser_t *p, const unsigned char *text, size_t len,
                       bool is_key) {
  const char *s = (const char *)text;
  size_t valid = atp_codec_utf8_prefix(s, len);
  uintptr_t at = (uintptr_t)s, chunk = (uintptr_t)p->chunk;
  if (at >= chunk && at - chunk < p->chunk_len) {
    if (valid == len) return true;
    return failed(p, (size_t)(at - chunk) + valid, "invalid UTF-8 in string");
  }
  bool suspect = valid < len;
  for (size_t i = 0; i < len && !suspect; i++) {
    unsigned char c = text[i];
    suspect = c == '?' || c >= 0xf0 || (c == 0 && is_key);
  }
  return !suspect || check_escapes(p, is_key);
}

/* --- building the tree ------------------------------------------------------- */

static atp_member_t *scratch_push(parser_t *p) {
  if (p->scratch_used == p->scratch_cap) {
    uint32_t cap = p->scratch_cap ? p->scratch_cap * 2 : SCRATCH_ENTRIES_MIN;
    atp_member_t *grown = atp_arena_alloc(&p->heap->arena, (size_t)cap * sizeof *grown);
    if (!grown) {
      exhausted(p);
      return NULL;
    }
    if (p->scratch_used) memcpy(grown, p->scratch, p->scratch_used * sizeof *grown);
    p->scratch = grown;
    p->scratch_cap = cap;
  }
  return &p->scratch[p->scratch_used++];
}

/* Where the next value goes: the root, the member whose key came last, or a
 * new array item. NULL when out of memory. */
static atp_val_t *value_slot(parser_t *p) {
  if (p->open == 0) return &p->root;
  if (p->frames[p->open - 1].is_object) {
    ATP_ASSERT(p->scratch_used > p->frames[p->open - 1].first); /* yajl gave a key */
    return &p->scratch[p->scratch_used - 1].val;
  }
  atp_member_t *item = scratch_push(p);
  return item ? &item->val : NULL;
}

static bool open_container(parser_t *p, bool is_object) {
  if (p->depth_outside + p->open + 1 > ATP_CODEC_DEPTH_MAX) {
    /* Stopping here keeps yajl from pushing the level: its stack stays small. */
    return failed(p, yajl_get_bytes_consumed(p->yajl) - 1, "nesting deeper than %d",
                  ATP_CODEC_DEPTH_MAX);
  }
  uint32_t target = ROOT_TARGET;
  if (p->open > 0) {
    if (!value_slot(p)) return false;
    target = p->scratch_used - 1;
  }
  frame_t *f = &p->frames[p->open];
  if (p->open == p->frames_ready) {
    f->key_set = NULL;
    f->key_set_cap = 0;
    p->frames_ready++;
  }
  f->first = p->scratch_used;
  f->target = target;
  f->is_object = is_object;
  f->key_mask = 0;
  p->open++;
  return true;
}

/* Moves the container's children from the scratch into the request arena. */
static bool close_container(parser_t *p) {
  ATP_ASSERT(p->open > 0);
  frame_t *f = &p->frames[--p->open];
  uint32_t n = p->scratch_used - f->first;
  atp_val_t *v = f->target == ROOT_TARGET ? &p->root : &p->scratch[f->target].val;
  v->type = f->is_object ? ATP_VAL_OBJECT : ATP_VAL_ARRAY;
  v->len = n;
  v->u.items = NULL;
  /* (The scratch is still NULL when no container had children.) */
  const atp_member_t *children = n > 0 ? p->scratch + f->first : NULL;
  if (n > 0 && f->is_object) {
    atp_member_t *members = atp_arena_alloc(p->arena, (size_t)n * sizeof *members);
    if (!members) return exhausted(p);
    memcpy(members, children, (size_t)n * sizeof *members);
    v->u.members = members;
  } else if (n > 0) {
    atp_val_t *items = atp_arena_alloc(p->arena, (size_t)n * sizeof *items);
    if (!items) return exhausted(p);
    for (uint32_t i = 0; i < n; i++) items[i] = children[i].val;
    v->u.items = items;
  }
  p->scratch_used = f->first;
  return true;
}

static bool same_key(const atp_member_t *m, const char *key, uint32_t len) {
  return m->key_len == len && memcmp(m->key, key, len) == 0;
}

/* Adds member `index` of f to its key set; false when an equal key is in it. */
static bool key_set_add(const parser_t *p, const frame_t *f, uint32_t index) {
  const atp_member_t *members = p->scratch + f->first, *m = &members[index];
  uint32_t hash = key_hash(m->key, m->key_len);
  for (uint32_t i = hash & f->key_mask;; i = (i + 1) & f->key_mask) {
    key_slot_t *slot = &f->key_set[i];
    if (slot->member == 0) {
      *slot = (key_slot_t){hash, index + 1};
      return true;
    }
    if (slot->hash == hash && same_key(&members[slot->member - 1], m->key, m->key_len))
      return false;
  }
}

/* A key set of twice as many slots (at least KEY_SET_SLOTS_MIN) holding the
 * `count` members before the newest, which are distinct. Rebuilding from the
 * keys costs O(count), amortised O(1) per member; the buffer is the depth's,
 * allocated anew only when a larger one is needed. */
static bool key_set_grow(parser_t *p, frame_t *f, uint32_t count) {
  uint32_t slots = f->key_mask ? (f->key_mask + 1) * 2 : KEY_SET_SLOTS_MIN;
  if (slots > f->key_set_cap) {
    f->key_set = atp_arena_alloc(&p->heap->arena, (size_t)slots * sizeof *f->key_set);
    if (!f->key_set) {
      f->key_set_cap = 0;
      return exhausted(p);
    }
    f->key_set_cap = slots;
  }
  memset(f->key_set, 0, (size_t)slots * sizeof *f->key_set);
  f->key_mask = slots - 1;
  for (uint32_t i = 0; i < count; i++) {
    bool added = key_set_add(p, f, i);
    ATP_ASSERT(added);
    (void)added;
  }
  return true;
}

/* The newest member of object f (last in the scratch) against the others. */
static bool check_duplicate(parser_t *p, frame_t *f) {
  uint32_t n = p->scratch_used - f->first - 1; /* members before the newest */
  const atp_member_t *members = p->scratch + f->first, *newest = &members[n];
  bool unique = true;
  if (n < LINEAR_MEMBERS_MAX) {
    for (uint32_t i = 0; i < n && unique; i++)
      unique = !same_key(&members[i], newest->key, newest->key_len);
  } else {
    if ((n + 1) * 2 > f->key_mask + 1 && !key_set_grow(p, f, n)) return false;
    unique = key_set_add(p, f, n);
  }
  if (unique) return true;
  size_t close = yajl_get_bytes_consumed(p->yajl) - 1;
  return failed(p, string_open(p->chunk, close), "duplicate key \"%.*s\"",
                (int)(newest->key_len > 64 ? 64 : newest->key_len), newest->key);
}

/* --- numbers ------------------------------------------------------------------ */

/* yajl checked the grammar: -?(0|[1-9][0-9]*), nothing else. */
static bool read_integer(parser_t *p, atp_val_t *v, const char *s, size_t len,
                         size_t at) {
  bool negative = s[0] == '-';
  uint64_t limit = negative ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
  uint64_t magnitude = 0;
  for (size_t i = negative; i < len; i++) {
    uint64_t digit = (uint64_t)(s[i] - '0');
    ATP_ASSERT(digit <= 9);
    if (magnitude > (limit - digit) / 10) {
      return failed(p, at, "integer out of int64 range near '%.*s'",
                    (int)(len > 40 ? 40 : len), s);
    }
    magnitude = magnitude * 10 + digit;
  }
  v->type = ATP_VAL_INT;
  v->u.i = negative && magnitude ? -(int64_t)(magnitude - 1) - 1 : (int64_t)magnitude;
  return true;
}

/* strtod needs a terminated copy; it reads '.' as the decimal point because
 * atpd never calls setlocale (the C locale). */
static bool read_float(parser_t *p, atp_val_t *v, const char *s, size_t len,
                       size_t at) {
  char small[64];
  char *text = small;
  if (len < sizeof small) {
    memcpy(small, s, len);
    small[len] = '\0';
  } else if (!(text = atp_arena_strdup(&p->heap->arena, s, len))) {
    return exhausted(p);
  }
  double d = strtod(text, NULL);
  if (isinf(d)) {
    return failed(p, at, "real number overflow near '%.*s'", (int)(len > 40 ? 40 : len),
                  s);
  }
  v->type = ATP_VAL_FLOAT;
  v->u.f = d;
  return true;
}

/* --- yajl callbacks (non-zero: go on) --------------------------------------- */

static int on_null(void *ctx) {
  parser_t *p = ctx;
  p->value_end = token_end(p);
  atp_val_t *v = value_slot(p);
  if (v) v->type = ATP_VAL_NULL;
  return v != NULL;
}

static int on_boolean(void *ctx, int value) {
  parser_t *p = ctx;
  p->value_end = token_end(p);
  atp_val_t *v = value_slot(p);
  if (!v) return 0;
  v->type = ATP_VAL_BOOL;
  v->u.b = value != 0;
  return 1;
}

static int on_number(void *ctx, const char *s, size_t len) {
  parser_t *p = ctx;
  ATP_ASSERT(len > 0);
  p->value_end = token_end(p);
  size_t at = p->value_end - len;
  atp_val_t *v = value_slot(p);
  if (!v) return 0;
  for (size_t i = 0; i < len; i++) {
    if (s[i] == '.' || s[i] == 'e' || s[i] == 'E') return read_float(p, v, s, len, at);
  }
  return read_integer(p, v, s, len, at);
}

static int on_string(void *ctx, const unsigned char *s, size_t len) {
  parser_t *p = ctx;
  p->value_end = token_end(p);
  if (!check_text(p, s, len, false)) return 0;
  atp_val_t *v = value_slot(p);
  if (!v) return 0;
  v->type = ATP_VAL_STR;
  v->len = (uint32_t)len;
  v->u.s = atp_arena_strdup(p->arena, (const char *)s, len);
  return v->u.s ? 1 : exhausted(p);
}

static int on_key(void *ctx, const unsigned char *s, size_t len) {
  parser_t *p = ctx;
  ATP_ASSERT(p->open > 0 && p->frames[p->open - 1].is_object);
  if (!check_text(p, s, len, true)) return 0;
  atp_member_t *m = scratch_push(p);
  if (!m) return 0;
  m->key = atp_arena_strdup(p->arena, (const char *)s, len);
  if (!m->key) return exhausted(p);
  m->key_len = (uint32_t)len;
  return check_duplicate(p, &p->frames[p->open - 1]);
}

static int on_start_map(void *ctx) {
  return open_container(ctx, true);
}

static int on_start_array(void *ctx) {
  return open_container(ctx, false);
}

static int on_end(void *ctx) {
  parser_t *p = ctx;
  p->value_end = token_end(p);
  return close_container(p);
}

static const yajl_callbacks callbacks = {
    .yajl_null = on_null,
    .yajl_boolean = on_boolean,
    .yajl_number = on_number, /* given, yajl_integer and yajl_double are unused */
    .yajl_string = on_string,
    .yajl_start_map = on_start_map,
    .yajl_map_key = on_key,
    .yajl_end_map = on_end,
    .yajl_start_array = on_start_array,
    .yajl_end_array = on_end,
};

/* --- yajl's errors ------------------------------------------------------------ */

typedef enum {
  AT_BYTE,     /* yajl stopped at the offending byte (inside a string) */
  AT_PREVIOUS, /* yajl stopped just past it */
  AT_UTF8,     /* in the string yajl stopped in, the first invalid UTF-8 */
  AT_TOKEN,    /* the token yajl just read */
  AT_NEXT,     /* the token after the last value (yajl moves its count there) */
  AT_END,      /* the end of the input */
} error_place_t;

/* yajl 2.1 has no error codes, only its messages (fixed in that version). */
static const struct {
  const char *yajl; /* part of yajl's message */
  const char *ours;
  error_place_t place;
} yajl_errors[] = {
    {"premature EOF", "unexpected end of input", AT_END},
    {"invalid bytes in UTF8", "invalid UTF-8 in string", AT_UTF8},
    {"invalid character inside string", "control character in string", AT_BYTE},
    {"before a character which it may not", "invalid escape in string", AT_BYTE},
    {"non-hex", "invalid \\u escape in string", AT_BYTE},
    {"malformed number", "invalid number", AT_TOKEN},
    {"comments are not enabled", "invalid token", AT_TOKEN},
    {"invalid string in json text", "invalid token", AT_TOKEN},
    {"invalid char in json text", "invalid token", AT_PREVIOUS},
    {"I expect ',' or ']'", "',' or ']' expected", AT_NEXT},
    {"I expect ',' or '}'", "',' or '}' expected", AT_NEXT},
    {"separated by a colon", "':' expected", AT_TOKEN},
    {"invalid object key", "string expected as object key", AT_TOKEN},
    {"unallowed token", "unexpected token", AT_TOKEN},
};

/* yajl's error into ours. While finishing, yajl's count is of the blank it
 * was fed after the input: what failed there ends at the input's end. */
static int yajl_fail(parser_t *p) {
  unsigned char *text = yajl_get_error(p->yajl, 0, NULL, 0);
  const char *said = text ? (const char *)text : "unknown error";
  const char *ours = NULL;
  error_place_t place = AT_TOKEN;
  for (size_t i = 0; i < sizeof yajl_errors / sizeof yajl_errors[0] && !ours; i++) {
    if (strstr(said, yajl_errors[i].yajl)) {
      ours = yajl_errors[i].ours;
      place = yajl_errors[i].place;
    }
  }
  size_t end = token_end(p), at;
  switch (place) {
    case AT_BYTE:
      at = end;
      break;
    case AT_PREVIOUS:
      at = p->finishing || end == 0 ? end : end - 1;
      break;
    case AT_UTF8: /* yajl stopped after the byte that broke the sequence */
      at = end > 0 ? string_open(p->chunk, end - 1) + 1 : 0;
      at += atp_codec_utf8_prefix(p->chunk + at, end - at);
      if (at >= end && end > 0) at = end - 1; /* (ours is the stricter check) */
      break;
    case AT_TOKEN:
      at = token_start(p->chunk, end);
      break;
    case AT_NEXT:
      at = skip_ws(p->chunk, p->value_end, p->chunk_len);
      break;
    default:
      at = p->chunk_len;
      break;
  }
  ATP_ASSERT(at <= p->chunk_len);
  if (!ours) { /* a message this table does not know: yajl's own words */
    failed(p, at, "%.*s", (int)strcspn(said, "\n"), said);
  } else if (place == AT_BYTE && at < p->chunk_len && strstr(ours, "control")) {
    failed(p, at, "control character 0x%02x in string", (unsigned char)p->chunk[at]);
  } else {
    failed(p, at, "%s", ours);
  }
  if (text) yajl_free_error(p->yajl, text);
  return p->rc;
}

/* --- parsing ------------------------------------------------------------------- */

/* One value from body[start, end). With prefix, trailing bytes are left for
 * the caller and *used says how many bytes the value took; otherwise only
 * whitespace may follow. depth: containers open around the value. */
static int parse_one(const char *body, size_t start, size_t end, bool prefix,
                     uint32_t depth, atp_arena_t *arena, atp_val_t **out, size_t *used,
                     atp_parse_error_t *err) {
  heap_t *heap = heap_enter();
  if (!heap) {
    atp_codec_fail(err, start, "out of memory");
    return ATP_ENOMEM;
  }
  /* Field by field: the frames are set up as containers open, not zeroed. */
  parser_t p;
  p.chunk = body + start;
  p.chunk_len = end - start;
  p.base = start;
  p.depth_outside = depth;
  p.finishing = false;
  p.value_end = 0;
  p.heap = heap;
  p.arena = arena;
  p.scratch = NULL;
  p.scratch_used = p.scratch_cap = 0;
  p.open = p.frames_ready = 0;
  p.rc = 0;
  p.err = err;
  p.root.type = ATP_VAL_NULL;
  yajl_alloc_funcs funcs = {yajl_heap_malloc, yajl_heap_realloc, yajl_heap_free, heap};
  p.yajl = yajl_alloc(&callbacks, &funcs, &p);
  /* yajl stops after the value; whether more may follow is decided below. */
  yajl_config(p.yajl, yajl_allow_trailing_garbage, 1);
  yajl_status status = yajl_parse(p.yajl, (const unsigned char *)p.chunk, p.chunk_len);
  size_t consumed = yajl_get_bytes_consumed(p.yajl);
  if (status == yajl_status_ok) {
    p.finishing = true; /* a number at the very end is complete only now */
    status = yajl_complete_parse(p.yajl);
  }
  int rc = 0;
  if (status == yajl_status_client_canceled) {
    ATP_ASSERT(p.rc != 0);
    rc = p.rc;
  } else if (status != yajl_status_ok) {
    rc = yajl_fail(&p);
  } else if (!prefix && skip_ws(p.chunk, consumed, p.chunk_len) < p.chunk_len) {
    rc = atp_codec_fail(err, start + skip_ws(p.chunk, consumed, p.chunk_len),
                        "end of file expected");
  } else {
    ATP_ASSERT(p.open == 0);
    atp_val_t *val = atp_arena_alloc(arena, sizeof *val);
    if (val) {
      *val = p.root;
      *out = val;
      if (used) *used = consumed;
    } else {
      exhausted(&p);
      rc = p.rc;
    }
  }
  yajl_free(p.yajl);
  heap_leave(heap);
  return rc;
}

int atp_codec_json_parse(const char *body, size_t len, atp_arena_t *arena,
                         atp_val_t **out, atp_parse_error_t *err) {
  return parse_one(body, 0, len, false, 0, arena, out, NULL, err);
}

static int too_many(atp_parse_error_t *err, size_t at, uint32_t max_items) {
  atp_codec_fail(err, at, "more than %u items", max_items);
  return ATP_ETOOLARGE;
}

/* "[item, item, ...]": each item parsed and handed over on its own. */
static int stream_array(const char *body, size_t len, size_t p, atp_arena_t *arena,
                        uint32_t max_items, int (*fn)(void *, uint32_t, atp_val_t *),
                        void *ctx, atp_parse_error_t *err) {
  ATP_ASSERT(body[p] == '[');
  p = skip_ws(body, p + 1, len);
  uint32_t index = 0;
  if (p < len && body[p] == ']') {
    p++;
  } else {
    for (;;) {
      if (index >= max_items) return too_many(err, p, max_items);
      atp_val_t *val;
      size_t used;
      int rc = parse_one(body, p, len, true, 1, arena, &val, &used, err);
      if (rc) return rc;
      rc = fn(ctx, index++, val);
      if (rc) return rc;
      p = skip_ws(body, p + used, len);
      if (p >= len) return atp_codec_fail(err, len, "unexpected end of input");
      if (body[p] == ']') {
        p++;
        break;
      }
      if (body[p] != ',') return atp_codec_fail(err, p, "',' or ']' expected");
      p = skip_ws(body, p + 1, len);
    }
  }
  p = skip_ws(body, p, len);
  if (p < len) return atp_codec_fail(err, p, "unexpected data after the array");
  return 0;
}

int atp_codec_json_stream(bool ndjson, const char *body, size_t len, atp_arena_t *arena,
                          uint32_t max_items, int (*fn)(void *, uint32_t, atp_val_t *),
                          void *ctx, atp_parse_error_t *err) {
  size_t p = skip_ws(body, 0, len);
  if (!ndjson && p < len && body[p] == '[') {
    return stream_array(body, len, p, arena, max_items, fn, ctx, err);
  }
  uint32_t index = 0;
  while (p < len) {
    size_t end = len, used = 0;
    if (ndjson) {
      /* One value per line; a JSON string cannot hold a raw newline. */
      const char *nl = memchr(body + p, '\n', len - p);
      end = nl ? (size_t)(nl - body) : len;
      if (skip_ws(body, p, end) == end) { /* blank line */
        p = end + 1;
        continue;
      }
    }
    if (index >= max_items) return too_many(err, p, max_items);
    atp_val_t *val;
    int rc = parse_one(body, p, end, !ndjson, 0, arena, &val, &used, err);
    if (rc) return rc;
    rc = fn(ctx, index++, val);
    if (rc) return rc;
    p = ndjson ? end + 1 : skip_ws(body, p + used, len);
  }
  return 0;
}

/* --- element splitter -------------------------------------------------------- */

/* Where the string opened at body[p] (a quote) ends: just past its closing
 * quote, or len when it is unterminated. memchr finds each quote; one after an
 * odd run of backslashes is escaped. */
static size_t string_end(const char *body, size_t p, size_t len) {
  size_t i = p + 1;
  for (;;) {
    const char *q = i < len ? memchr(body + i, '"', len - i) : NULL;
    if (!q) return len;
    size_t at = (size_t)(q - body), slashes = 0;
    while (at - slashes > p + 1 && body[at - slashes - 1] == '\\') slashes++;
    if (slashes % 2 == 0) return at + 1;
    i = at + 1;
  }
}

/* The end of the array item starting at p: the ',' or ']' that closes it at
 * depth 0, or len when the body ends first. Brackets of either kind count as
 * one depth, so an item whose brackets do not match is still delimited, and
 * refused by its own parse. O(bytes), one pass, strings skipped by memchr. */
static size_t item_end(const char *body, size_t p, size_t len) {
  size_t depth = 0;
  while (p < len) {
    char c = body[p];
    if (c == '"') {
      p = string_end(body, p, len);
      continue;
    }
    if (c == '[' || c == '{') {
      depth++;
    } else if (c == ']' || c == '}') {
      if (depth == 0 && c == ']') return p;
      if (depth > 0) depth--;
    } else if (c == ',' && depth == 0) {
      return p;
    }
    p++;
  }
  return len;
}

int atp_codec_json_split(atp_splitter_t *s, size_t *start, size_t *end,
                         atp_parse_error_t *err) {
  const char *b = s->body;
  size_t len = s->len;
  if (s->format == ATP_FORMAT_NDJSON) {
    /* One value per line; a JSON string cannot hold a raw newline. */
    while (s->pos < len) {
      const char *nl = memchr(b + s->pos, '\n', len - s->pos);
      size_t line_end = nl ? (size_t)(nl - b) : len, from = s->pos;
      s->pos = nl ? line_end + 1 : len;
      size_t first = skip_ws(b, from, line_end);
      if (first == line_end) continue; /* blank line */
      size_t last = line_end;
      while (last > first && is_ws(b[last - 1])) last--;
      *start = first;
      *end = last;
      return 1;
    }
    return 0;
  }
  if (s->state == 0) {
    size_t p = skip_ws(b, 0, len);
    if (p >= len || b[p] != '[')
      return atp_codec_fail(err, p, "a JSON batch is an array of ops");
    s->depth = 1;
    s->state = 1;
    s->pos = skip_ws(b, p + 1, len);
    if (s->pos < len && b[s->pos] == ']') {
      s->pos++;
      s->state = 3;
    }
  }
  if (s->state == 3) { /* after the closing bracket only blanks may follow */
    size_t p = skip_ws(b, s->pos, len);
    if (p < len) return atp_codec_fail(err, p, "unexpected data after the array");
    return 0;
  }
  size_t from = s->pos, to = item_end(b, from, len);
  if (to >= len) return atp_codec_fail(err, len, "unexpected end of input");
  size_t last = to;
  while (last > from && is_ws(b[last - 1])) last--;
  *start = from;
  *end = last;
  if (b[to] == ']') {
    s->pos = to + 1;
    s->state = 3;
  } else {
    s->pos = skip_ws(b, to + 1, len);
  }
  return 1;
}

int atp_codec_json_element(const char *body, size_t start, size_t end, uint32_t depth,
                           atp_arena_t *arena, atp_val_t **out,
                           atp_parse_error_t *err) {
  if (start == end) return atp_codec_fail(err, start, "empty item");
  return parse_one(body, start, end, false, depth, arena, out, NULL, err);
}
