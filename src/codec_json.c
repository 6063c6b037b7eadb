/* codec_json.c - JSON bodies into atp_val_t, with jansson.
 *
 * jansson was chosen by measurement (bench/RESULTS.md, "JSON library"): it is
 * the only one of Debian's three C JSON libraries that rejects duplicate keys
 * itself (hashed, so no input makes it quadratic), detects integers outside
 * int64, validates UTF-8, keeps \u0000 inside strings and reports a byte
 * position with every error. Its tree is converted into the request's arena
 * and freed at once; our own depth limit is applied while converting
 * (jansson's recursion stops at 2048 levels by itself).
 *
 * Streams (batch bodies up to 64 MiB) are parsed one item at a time with
 * JSON_DISABLE_EOF_CHECK, so memory stays proportional to one item and the
 * whole body is read once.
 */
#include <assert.h>
#include <jansson.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "atp/error.h"
#include "atp/limits.h"
#include "codec_internal.h"

#define JSON_FLAGS (JSON_DECODE_ANY | JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL)

/* jansson mallocs every node, key and string, and a parsed tree lives only
 * until it is converted. During a parse its allocations come from a per-thread
 * bump arena and its frees are no-ops; the arena is reset after the tree is
 * released: a request's parse then makes no malloc call (about a fifth of
 * jansson's cost). The hooks are process-wide, so outside a parse (no thread
 * of ours calls jansson there, but a library might) they are plain malloc and
 * free. The arena's chunks are freed when the thread exits. */
#define JANSSON_CHUNK_BYTES (64 * 1024)

typedef struct {
  atp_arena_t arena;
  bool in_parse;
} jansson_heap_t;

static pthread_once_t jansson_once = PTHREAD_ONCE_INIT;
static pthread_key_t jansson_key;
static _Thread_local jansson_heap_t *tl_heap;

static void *jansson_malloc(size_t n) {
  if (tl_heap && tl_heap->in_parse) return atp_arena_alloc(&tl_heap->arena, n);
  return malloc(n);
}

static void jansson_free(void *p) {
  if (!(tl_heap && tl_heap->in_parse)) free(p);
}

static void jansson_heap_destroy(void *p) {
  jansson_heap_t *h = p;
  atp_arena_destroy(&h->arena);
  free(h);
}

static void jansson_setup(void) {
  json_set_alloc_funcs(jansson_malloc, jansson_free);
  int rc = pthread_key_create(&jansson_key, jansson_heap_destroy);
  assert(rc == 0);
  (void)rc;
}

/* This thread's heap, in parse mode; NULL when out of memory. */
static jansson_heap_t *jansson_enter(void) {
  pthread_once(&jansson_once, jansson_setup);
  if (!tl_heap) {
    jansson_heap_t *h = calloc(1, sizeof *h);
    if (!h) return NULL;
    atp_arena_init(&h->arena, JANSSON_CHUNK_BYTES, 0);
    pthread_setspecific(jansson_key, h);
    tl_heap = h;
  }
  tl_heap->in_parse = true;
  return tl_heap;
}

static void jansson_leave(jansson_heap_t *h) {
  h->in_parse = false;
  atp_arena_reset(&h->arena);
}

typedef struct {
  atp_arena_t *arena;
  bool too_deep; /* set when the tree nests beyond the limit */
} convert_t;

static int convert(convert_t *c, json_t *j, atp_val_t *out, uint32_t depth);

static int convert_object(convert_t *c, json_t *j, atp_val_t *out, uint32_t depth) {
  size_t n = json_object_size(j);
  out->type = ATP_VAL_OBJECT;
  out->len = (uint32_t)n;
  out->u.members = NULL;
  if (n == 0) return 0;
  atp_member_t *members = atp_arena_alloc(c->arena, n * sizeof *members);
  if (!members) return ATP_ENOMEM;
  out->u.members = members;
  size_t i = 0;
  /* jansson iterates in insertion order, which is the input order. */
  for (void *it = json_object_iter(j); it; it = json_object_iter_next(j, it), i++) {
    assert(i < n);
    size_t key_len = json_object_iter_key_len(it);
    members[i].key = atp_arena_strdup(c->arena, json_object_iter_key(it), key_len);
    if (!members[i].key) return ATP_ENOMEM;
    members[i].key_len = (uint32_t)key_len;
    int rc = convert(c, json_object_iter_value(it), &members[i].val, depth);
    if (rc) return rc;
  }
  return 0;
}

static int convert_array(convert_t *c, json_t *j, atp_val_t *out, uint32_t depth) {
  size_t n = json_array_size(j);
  out->type = ATP_VAL_ARRAY;
  out->len = (uint32_t)n;
  out->u.items = NULL;
  if (n == 0) return 0;
  atp_val_t *items = atp_arena_alloc(c->arena, n * sizeof *items);
  if (!items) return ATP_ENOMEM;
  out->u.items = items;
  for (size_t i = 0; i < n; i++) {
    int rc = convert(c, json_array_get(j, i), &items[i], depth);
    if (rc) return rc;
  }
  return 0;
}

/* depth: containers open around j. */
static int convert(convert_t *c, json_t *j, atp_val_t *out, uint32_t depth) {
  switch (json_typeof(j)) {
    case JSON_OBJECT:
    case JSON_ARRAY:
      if (depth + 1 > ATP_CODEC_DEPTH_MAX) {
        c->too_deep = true;
        return ATP_EBADREQ;
      }
      return json_is_object(j) ? convert_object(c, j, out, depth + 1)
                               : convert_array(c, j, out, depth + 1);
    case JSON_STRING: {
      size_t len = json_string_length(j);
      out->type = ATP_VAL_STR;
      out->len = (uint32_t)len;
      out->u.s = atp_arena_strdup(c->arena, json_string_value(j), len);
      return out->u.s ? 0 : ATP_ENOMEM;
    }
    case JSON_INTEGER:
      out->type = ATP_VAL_INT;
      out->u.i = (int64_t)json_integer_value(j);
      return 0;
    case JSON_REAL:
      out->type = ATP_VAL_FLOAT;
      out->u.f = json_real_value(j);
      return 0;
    case JSON_TRUE:
    case JSON_FALSE:
      out->type = ATP_VAL_BOOL;
      out->u.b = json_is_true(j);
      return 0;
    case JSON_NULL:
      out->type = ATP_VAL_NULL;
      return 0;
  }
  assert(!"jansson: unknown type");
  return ATP_EINTERNAL;
}

/* Where the bracket nesting of valid JSON s first exceeds max (only called
 * once jansson has accepted s, so strings are well formed). */
static size_t depth_offset(const char *s, size_t len, uint32_t max) {
  uint32_t depth = 0;
  for (size_t i = 0; i < len; i++) {
    switch (s[i]) {
      case '"':
        for (i++; i < len && s[i] != '"'; i++) {
          if (s[i] == '\\') i++;
        }
        break;
      case '[':
      case '{':
        if (++depth > max) return i;
        break;
      case ']':
      case '}':
        depth--;
        break;
      default:
        break;
    }
  }
  return len;
}

/* jansson's error into ours. Its position is just past the offending token;
 * where the message quotes that token ("near '...'") we step back to the
 * token's first byte, which is what a client wants to look at. */
static int json_fail(const json_error_t *e, size_t base, atp_parse_error_t *err) {
  size_t pos = e->position > 0 ? (size_t)e->position : 0;
  enum json_error_code code = json_error_code(e);
  const char *near = strstr(e->text, " near '");
  size_t text_len = strnlen(e->text, sizeof e->text);
  size_t token_len = 0;
  if (near && text_len < sizeof e->text - 2 && e->text[text_len - 1] == '\'') {
    token_len = (size_t)(e->text + text_len - 1 - (near + 7));
  }
  bool at_token =
      code == json_error_duplicate_key || code == json_error_numeric_overflow ||
      code == json_error_end_of_input_expected ||
      (code == json_error_invalid_syntax && strncmp(e->text, "control", 7) != 0);
  if (at_token && token_len <= pos) pos -= token_len;
  switch (code) {
    case json_error_premature_end_of_input:
      return atp_codec_fail(err, base + pos, "unexpected end of input");
    case json_error_duplicate_key:
      if (near)
        return atp_codec_fail(err, base + pos, "duplicate key %.*s", (int)token_len,
                              near + 7);
      return atp_codec_fail(err, base + pos, "duplicate key");
    case json_error_stack_overflow:
      return atp_codec_fail(err, base + pos, "nesting deeper than %d",
                            ATP_CODEC_DEPTH_MAX);
    case json_error_out_of_memory:
      atp_codec_fail(err, base + pos, "out of memory");
      return ATP_ENOMEM;
    case json_error_numeric_overflow:
      if (strncmp(e->text, "too big", 7) == 0) {
        return atp_codec_fail(err, base + pos, "integer out of int64 range%s",
                              near ? near : "");
      }
      return atp_codec_fail(err, base + pos, "%s", e->text);
    default:
      return atp_codec_fail(err, base + pos, "%s", e->text);
  }
}

/* One value from body[start, end). With prefix, trailing bytes are left for
 * the caller and *used says how many bytes the value took; otherwise only
 * whitespace may follow. depth: containers open around the value. */
static int parse_one(const char *body, size_t start, size_t end, bool prefix,
                     uint32_t depth, atp_arena_t *arena, atp_val_t **out, size_t *used,
                     atp_parse_error_t *err) {
  json_error_t e;
  size_t flags = JSON_FLAGS | (prefix ? JSON_DISABLE_EOF_CHECK : 0);
  jansson_heap_t *heap = jansson_enter();
  if (!heap) {
    atp_codec_fail(err, start, "out of memory");
    return ATP_ENOMEM;
  }
  json_t *j = json_loadb(body + start, end - start, flags, &e);
  if (!j) {
    jansson_leave(heap);
    return json_fail(&e, start, err);
  }
  if (used) *used = e.position > 0 ? (size_t)e.position : 0;
  atp_val_t *val = atp_arena_alloc(arena, sizeof *val);
  convert_t c = {.arena = arena, .too_deep = false};
  int rc = val ? convert(&c, j, val, depth) : ATP_ENOMEM;
  json_decref(j);
  jansson_leave(heap);
  if (rc == ATP_ENOMEM) {
    atp_codec_fail(err, start, "request too large to parse (arena exhausted)");
    return ATP_ENOMEM;
  }
  if (c.too_deep) {
    size_t at = depth_offset(body + start, end - start, ATP_CODEC_DEPTH_MAX - depth);
    return atp_codec_fail(err, start + at, "nesting deeper than %d",
                          ATP_CODEC_DEPTH_MAX);
  }
  if (rc) return rc;
  *out = val;
  return 0;
}

int atp_codec_json_parse(const char *body, size_t len, atp_arena_t *arena,
                         atp_val_t **out, atp_parse_error_t *err) {
  return parse_one(body, 0, len, false, 0, arena, out, NULL, err);
}

static bool is_ws(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static size_t skip_ws(const char *s, size_t p, size_t len) {
  while (p < len && is_ws(s[p])) p++;
  return p;
}

static int too_many(atp_parse_error_t *err, size_t at, uint32_t max_items) {
  atp_codec_fail(err, at, "more than %u items", max_items);
  return ATP_ETOOLARGE;
}

/* "[item, item, ...]": each item parsed and handed over on its own. */
static int stream_array(const char *body, size_t len, size_t p, atp_arena_t *arena,
                        uint32_t max_items, int (*fn)(void *, uint32_t, atp_val_t *),
                        void *ctx, atp_parse_error_t *err) {
  assert(body[p] == '[');
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
