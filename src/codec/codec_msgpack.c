/* codec_msgpack.c - MessagePack bodies into atp_val_t, with msgpack-c.
 *
 * Two passes. First our own structural check walks the bytes once with an
 * explicit stack: it finds where the value ends and refuses, with the exact
 * offset, truncation, bad bytes, nesting beyond ATP_CODEC_DEPTH_MAX, integers
 * outside int64, non-string map keys, ext types and invalid UTF-8, naming the
 * field (err->field, "lines[0].sku") where the value sits inside an object. It
 * comes first because msgpack-c allocates each container from its declared
 * count before reading the items: five bytes announcing 2^32 items would
 * otherwise ask for 64 GiB. Once the check passed, the counts are backed by
 * real bytes, so msgpack-c's tree is at most a small multiple of the body.
 * Then msgpack-c unpacks the checked bytes and we convert its tree into the
 * arena, rejecting duplicate keys by sorting (O(n log n) for any input).
 *
 * bin is read as a string when its bytes are valid UTF-8: older clients (and
 * msgpack libraries packing with the pre-2013 spec's raw type turned bin)
 * send every string that way. Anything else in a bin is refused as invalid
 * UTF-8, the same as in a str, since no field of the contract takes bytes.
 */
#include <msgpack.h>
#include <stdlib.h>
#include <string.h>

#include "atp/assert.h"
#include "atp/error.h"
#include "atp/limits.h"
#include "codec_internal.h"

/* --- structural check -------------------------------------------------------- */

typedef struct {
  uint64_t left;   /* items still to read; a map counts keys and values */
  uint64_t total;  /* items at the start: an array's item index is total - left */
  const char *key; /* map: the last key read, in the body (for err->field) */
  uint32_t key_len;
  bool is_map; /* then an even `left` means a key comes next */
} frame_t;

/* The path of the value being read, "lines[0].sku", into err->field; empty at
 * the top level. Keys are printable (the field is echoed in answers). */
static void name_field(atp_parse_error_t *err, const frame_t *stack, uint32_t top) {
  if (!err) return;
  size_t n = 0, cap = sizeof err->field;
  err->field[0] = '\0';
  for (uint32_t i = 0; i < top && n + 1 < cap; i++) {
    const frame_t *f = &stack[i];
    int w;
    if (!f->is_map)
      w = snprintf(err->field + n, cap - n, "[%llu]",
                   (unsigned long long)(f->total - f->left));
    else if (f->key)
      w = snprintf(err->field + n, cap - n, "%s%.*s", n ? "." : "",
                   (int)(f->key_len > 64 ? 64 : f->key_len), f->key);
    else
      break; /* inside a key: the object is the field */
    if (w < 0) break;
    n += (size_t)w < cap - n ? (size_t)w : cap - n - 1;
  }
  for (char *c = err->field; *c; c++)
    if ((unsigned char)*c < 0x20 || (unsigned char)*c >= 0x7f) *c = '?';
}

static uint64_t be(const unsigned char *p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; i++) v = (v << 8) | p[i];
  return v;
}

/* The walk of check_value: the body, where it is, and the open containers. */
typedef struct {
  const char *body;
  size_t len;
  size_t p; /* the next byte to read; p <= len */
  frame_t stack[ATP_CODEC_DEPTH_MAX];
  uint32_t top;   /* frames in use */
  uint32_t depth; /* containers open around the checked value */
  atp_parse_error_t *err;
} checker_t;

/* What a value's first bytes say about it. */
typedef struct {
  uint64_t str_len; /* string or bin bytes that follow; UINT64_MAX: not one */
  uint64_t count;   /* a container's entries (pairs for a map) */
  bool container, is_map;
} head_t;

/* Names the field being read, then fails at offset at. */
#define CHECK_FAIL_AT(c, at, ...)              \
  (name_field((c)->err, (c)->stack, (c)->top), \
   atp_codec_fail((c)->err, (at), __VA_ARGS__))

/* Reads the type byte t's length or value bytes (t itself is read, at is
 * where it was) into h. 0 or ATP_EBADREQ. */
static int read_head(checker_t *c, size_t at, unsigned char t, head_t *h) {
  h->str_len = UINT64_MAX, h->count = 0, h->container = h->is_map = false;
  if (t <= 0x7f || t >= 0xe0 || t == 0xc0 || t == 0xc2 || t == 0xc3) return 0;
  if (t >= 0xa0 && t <= 0xbf) {
    h->str_len = t & 0x1f;
    return 0;
  }
  if (t >= 0x80 && t <= 0x9f) {
    h->container = true, h->is_map = t < 0x90, h->count = t & 0x0f;
    return 0;
  }
  static const int extra[] = {
      [0xc4] = 1, [0xc5] = 2, [0xc6] = 4, [0xca] = 4, [0xcb] = 8,
      [0xcc] = 1, [0xcd] = 2, [0xce] = 4, [0xcf] = 8, [0xd0] = 1,
      [0xd1] = 2, [0xd2] = 4, [0xd3] = 8, [0xd9] = 1, [0xda] = 2,
      [0xdb] = 4, [0xdc] = 2, [0xdd] = 4, [0xde] = 2, [0xdf] = 4};
  if (t == 0xc1) return CHECK_FAIL_AT(c, at, "invalid msgpack byte 0xc1");
  if ((t >= 0xc7 && t <= 0xc9) || (t >= 0xd4 && t <= 0xd8))
    return CHECK_FAIL_AT(c, at, "unsupported msgpack type 0x%02x (ext)", t);
  int size_bytes = extra[t];
  ATP_ASSERT(size_bytes > 0);
  if (c->len - c->p < (size_t)size_bytes)
    return atp_codec_fail(c->err, c->len, "unexpected end of input");
  uint64_t v = be((const unsigned char *)c->body + c->p, size_bytes);
  c->p += (size_t)size_bytes;
  if (t == 0xcf && v > INT64_MAX)
    return CHECK_FAIL_AT(c, at, "integer out of int64 range");
  if ((t >= 0xd9 && t <= 0xdb) || (t >= 0xc4 && t <= 0xc6)) h->str_len = v;
  if (t >= 0xdc) h->container = true, h->is_map = t >= 0xde, h->count = v;
  return 0;
}

/* Checks the h->str_len bytes of a string or bin (type byte t) are there and
 * are UTF-8, remembering a map key for err->field. 0 or ATP_EBADREQ. */
static int check_string(checker_t *c, const head_t *h, unsigned char t, bool is_key) {
  if (c->len - c->p < h->str_len)
    return atp_codec_fail(c->err, c->len, "unexpected end of input");
  size_t valid = atp_codec_utf8_prefix(c->body + c->p, (size_t)h->str_len);
  if (valid != h->str_len)
    return CHECK_FAIL_AT(c, c->p + valid, "invalid UTF-8 in %s",
                         t >= 0xc4 && t <= 0xc6 ? "bin" : "string");
  if (is_key) {
    c->stack[c->top - 1].key = c->body + c->p;
    c->stack[c->top - 1].key_len = (uint32_t)h->str_len;
  }
  c->p += (size_t)h->str_len;
  return 0;
}

/* Opens the container h (its head at offset at): pushes a frame when it has
 * entries. 0 or ATP_EBADREQ. */
static int open_container(checker_t *c, const head_t *h, size_t at, bool *pushed) {
  *pushed = false;
  if (c->depth + c->top + 1 > ATP_CODEC_DEPTH_MAX)
    return atp_codec_fail(c->err, at, "nesting deeper than %d", ATP_CODEC_DEPTH_MAX);
  uint64_t items = h->is_map ? h->count * 2 : h->count;
  /* Every item takes at least one byte: a count the body cannot back is
   * truncated input, refused before anything is allocated for it. */
  if (items > c->len - c->p)
    return atp_codec_fail(c->err, c->len, "unexpected end of input");
  if (items == 0) return 0;
  frame_t *f = &c->stack[c->top++];
  f->left = f->total = items;
  f->key = NULL;
  f->key_len = 0;
  f->is_map = h->is_map;
  *pushed = true;
  ATP_ASSERT(c->top <= ATP_CODEC_DEPTH_MAX);
  return 0;
}

/* A value is complete: counts it in its container, closing finished ones.
 * True when that completes the top-level value. */
static bool value_done(checker_t *c) {
  for (;;) {
    if (c->top == 0) return true;
    ATP_ASSERT(c->stack[c->top - 1].left > 0);
    if (--c->stack[c->top - 1].left > 0) return false;
    c->top--;
  }
}

/* Checks the value at body[start, len) opened inside `depth` containers and
 * sets *end just past it. 0 or ATP_EBADREQ. */
static int check_value(const char *body, size_t start, size_t len, uint32_t depth,
                       size_t *end, atp_parse_error_t *err) {
  ATP_ASSERT(start <= len && depth <= ATP_CODEC_DEPTH_MAX);
  /* Fields one by one: the stack is written before it is read, and a stream
   * checks each of up to ATP_BATCH_OPS_MAX items with a fresh checker. */
  checker_t c;
  c.body = body, c.len = len, c.p = start, c.top = 0, c.depth = depth, c.err = err;
  for (;;) {
    if (c.p >= len) return atp_codec_fail(err, len, "unexpected end of input");
    size_t at = c.p;
    unsigned char t = (unsigned char)body[c.p++];
    const frame_t *in = c.top > 0 ? &c.stack[c.top - 1] : NULL;
    bool want_key = in && in->is_map && in->left % 2 == 0;
    head_t h;
    int rc = read_head(&c, at, t, &h);
    if (rc) return rc;
    if (want_key && h.str_len == UINT64_MAX)
      return atp_codec_fail(err, at, "map key is not a string");
    if (h.str_len != UINT64_MAX && (rc = check_string(&c, &h, t, want_key))) return rc;
    if (h.container) {
      bool pushed;
      if ((rc = open_container(&c, &h, at, &pushed))) return rc;
      if (pushed) continue;
    }
    if (value_done(&c)) {
      ATP_ASSERT(c.p > start && c.p <= len);
      *end = c.p;
      return 0;
    }
  }
}

/* --- conversion --------------------------------------------------------------- */

typedef struct {
  atp_arena_t *arena;
  const char *body; /* the bytes msgpack-c's strings point into */
  size_t start;     /* where the value being converted starts */
  atp_parse_error_t *err;
} convert_t;

typedef struct {
  const char *key; /* in the body */
  uint32_t key_len;
  uint32_t index; /* position in the object, to report the later twin */
} key_ref_t;

/* A str, or a bin accepted as one (check_value validated its UTF-8). */
static msgpack_object_str as_str(const msgpack_object *o) {
  if (o->type == MSGPACK_OBJECT_BIN)
    return (msgpack_object_str){.size = o->via.bin.size, .ptr = o->via.bin.ptr};
  return o->via.str;
}

/* Keys of equal length are equal bytes; msgpack-c gives empty strings a NULL
 * pointer, which memcmp must not see. */
static bool same_key(const char *a, const char *b, uint32_t len) {
  return len == 0 || memcmp(a, b, len) == 0;
}

static int key_ref_cmp(const void *a, const void *b) {
  const key_ref_t *x = a, *y = b;
  if (x->key_len != y->key_len) return x->key_len < y->key_len ? -1 : 1;
  int c = x->key_len ? memcmp(x->key, y->key, x->key_len) : 0;
  if (c) return c;
  return x->index < y->index ? -1 : x->index > y->index;
}

/* Sorting instead of hashing: bounded O(n log n) whatever keys a client
 * chooses. Small objects (the common case) compare pairwise. */
static int check_duplicates(convert_t *c, const msgpack_object_map *map) {
  uint32_t n = map->size, dup = UINT32_MAX;
  if (n <= 8) {
    for (uint32_t i = 1; i < n && dup == UINT32_MAX; i++) {
      msgpack_object_str ki = as_str(&map->ptr[i].key);
      for (uint32_t j = 0; j < i; j++) {
        msgpack_object_str kj = as_str(&map->ptr[j].key);
        if (ki.size == kj.size && same_key(ki.ptr, kj.ptr, ki.size)) {
          dup = i;
          break;
        }
      }
    }
  } else {
    key_ref_t *refs = atp_arena_alloc(c->arena, (size_t)n * sizeof *refs);
    if (!refs) return ATP_ENOMEM;
    for (uint32_t i = 0; i < n; i++) {
      msgpack_object_str k = as_str(&map->ptr[i].key);
      refs[i] = (key_ref_t){k.ptr, k.size, i};
    }
    qsort(refs, n, sizeof *refs, key_ref_cmp);
    for (uint32_t i = 1; i < n; i++) {
      if (refs[i].key_len == refs[i - 1].key_len &&
          same_key(refs[i].key, refs[i - 1].key, refs[i].key_len) &&
          refs[i].index < dup) {
        dup = refs[i].index;
      }
    }
  }
  if (dup == UINT32_MAX) return 0;
  msgpack_object_str ks = as_str(&map->ptr[dup].key);
  const msgpack_object_str *k = &ks;
  /* Report the key's type byte: its header size assuming the minimal form
   * (a bin has no fixed form: one more byte from the start).
   * An empty key has no pointer into the body: report the value's start. */
  size_t header = k->size < 32 && map->ptr[dup].key.type == MSGPACK_OBJECT_STR ? 1
                  : k->size <= UINT8_MAX                                       ? 2
                  : k->size <= UINT16_MAX                                      ? 3
                                                                               : 5;
  size_t at = k->size ? (size_t)(k->ptr - c->body) - header : c->start;
  return atp_codec_fail(c->err, at, "duplicate key \"%.*s\"",
                        (int)(k->size > 64 ? 64 : k->size), k->size ? k->ptr : "");
}

static int convert(convert_t *c, const msgpack_object *o, atp_val_t *out);

/* Converts a msgpack array and its items into an array value. */
static int convert_array(convert_t *c, const msgpack_object_array *a, atp_val_t *out) {
  uint32_t n = a->size;
  out->type = ATP_VAL_ARRAY;
  out->len = n;
  out->u.items = n ? atp_arena_alloc(c->arena, (size_t)n * sizeof(atp_val_t)) : NULL;
  if (n && !out->u.items) return ATP_ENOMEM;
  for (uint32_t i = 0; i < n; i++) {
    int rc = convert(c, &a->ptr[i], &out->u.items[i]);
    if (rc) return rc;
  }
  return 0;
}

/* Converts a msgpack map (keys unique, each a string) into an object value. */
static int convert_map(convert_t *c, const msgpack_object_map *map, atp_val_t *out) {
  uint32_t n = map->size;
  int rc = check_duplicates(c, map);
  if (rc) return rc;
  out->type = ATP_VAL_OBJECT;
  out->len = n;
  out->u.members =
      n ? atp_arena_alloc(c->arena, (size_t)n * sizeof(atp_member_t)) : NULL;
  if (n && !out->u.members) return ATP_ENOMEM;
  for (uint32_t i = 0; i < n; i++) {
    const msgpack_object_kv *kv = &map->ptr[i];
    /* checked in check_value */
    ATP_ASSERT(kv->key.type == MSGPACK_OBJECT_STR ||
               kv->key.type == MSGPACK_OBJECT_BIN);
    atp_member_t *m = &out->u.members[i];
    msgpack_object_str key = as_str(&kv->key);
    m->key_len = key.size;
    m->key = atp_arena_strdup(c->arena, key.ptr, m->key_len);
    if (!m->key) return ATP_ENOMEM;
    rc = convert(c, &kv->val, &m->val);
    if (rc) return rc;
  }
  return 0;
}

static int convert(convert_t *c, const msgpack_object *o, atp_val_t *out) {
  switch (o->type) {
    case MSGPACK_OBJECT_NIL:
      out->type = ATP_VAL_NULL;
      return 0;
    case MSGPACK_OBJECT_BOOLEAN:
      out->type = ATP_VAL_BOOL;
      out->u.b = o->via.boolean;
      return 0;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
      ATP_ASSERT(o->via.u64 <= INT64_MAX); /* checked in check_value */
      out->type = ATP_VAL_INT;
      out->u.i = (int64_t)o->via.u64;
      return 0;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
      out->type = ATP_VAL_INT;
      out->u.i = o->via.i64;
      return 0;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
      out->type = ATP_VAL_FLOAT;
      out->u.f = o->via.f64;
      return 0;
    case MSGPACK_OBJECT_STR:
    case MSGPACK_OBJECT_BIN: {
      msgpack_object_str str = as_str(o);
      out->type = ATP_VAL_STR;
      out->len = str.size;
      out->u.s = atp_arena_strdup(c->arena, str.ptr, str.size);
      return out->u.s ? 0 : ATP_ENOMEM;
    }
    case MSGPACK_OBJECT_ARRAY:
      return convert_array(c, &o->via.array, out);
    case MSGPACK_OBJECT_MAP:
      return convert_map(c, &o->via.map, out);
    default:
      /* ext is refused by check_value. */
      return atp_codec_fail(c->err, 0, "unsupported msgpack type");
  }
}

/* The checked value body[start, end) into the arena. */
static int unpack_checked(const char *body, size_t start, size_t end,
                          atp_arena_t *arena, atp_val_t **out, atp_parse_error_t *err) {
  msgpack_unpacked unpacked;
  msgpack_unpacked_init(&unpacked);
  size_t off = 0;
  /* Strings in the result point into body (msgpack-c references them). */
  msgpack_unpack_return ur =
      msgpack_unpack_next(&unpacked, body + start, end - start, &off);
  int rc;
  if (ur == MSGPACK_UNPACK_NOMEM_ERROR) {
    atp_codec_fail(err, start, "out of memory");
    rc = ATP_ENOMEM;
  } else if (ur != MSGPACK_UNPACK_SUCCESS || off != end - start) {
    rc = atp_codec_fail(err, start + off,
                        "malformed msgpack"); /* not expected after the check */
  } else {
    convert_t c = {.arena = arena, .body = body, .start = start, .err = err};
    atp_val_t *val = atp_arena_alloc(arena, sizeof *val);
    rc = val ? convert(&c, &unpacked.data, val) : ATP_ENOMEM;
    if (rc == ATP_ENOMEM)
      atp_codec_fail(err, start, "request too large to parse (arena exhausted)");
    if (!rc) *out = val;
  }
  msgpack_unpacked_destroy(&unpacked);
  return rc;
}

static int parse_one(const char *body, size_t start, size_t len, uint32_t depth,
                     atp_arena_t *arena, atp_val_t **out, size_t *end,
                     atp_parse_error_t *err) {
  int rc = check_value(body, start, len, depth, end, err);
  if (rc) return rc;
  return unpack_checked(body, start, *end, arena, out, err);
}

int atp_codec_msgpack_parse(const char *body, size_t len, atp_arena_t *arena,
                            atp_val_t **out, atp_parse_error_t *err) {
  if (err) err->field[0] = '\0';
  size_t end;
  int rc = parse_one(body, 0, len, 0, arena, out, &end, err);
  if (rc) return rc;
  if (end != len) {
    *out = NULL;
    return atp_codec_fail(err, end, "unexpected data after the value");
  }
  return 0;
}

int atp_codec_msgpack_stream(const char *body, size_t len, atp_arena_t *arena,
                             uint32_t max_items,
                             int (*fn)(void *, uint32_t, atp_val_t *), void *ctx,
                             atp_parse_error_t *err) {
  const unsigned char *b = (const unsigned char *)body;
  size_t p = 0;
  uint64_t items = UINT64_MAX; /* array mode: items still to read */
  if (err) err->field[0] = '\0';
  if (len > 0 && ((b[0] >= 0x90 && b[0] <= 0x9f) || b[0] == 0xdc || b[0] == 0xdd)) {
    /* A single array: its items are the stream, nothing may follow it. */
    int size_bytes = b[0] <= 0x9f ? 0 : b[0] == 0xdc ? 2 : 4;
    if (len < 1 + (size_t)size_bytes)
      return atp_codec_fail(err, len, "unexpected end of input");
    items = size_bytes ? be(b + 1, size_bytes) : (uint64_t)(b[0] & 0x0f);
    p = 1 + (size_t)size_bytes;
    if (items > max_items) {
      atp_codec_fail(err, 0, "more than %u items", max_items);
      return ATP_ETOOLARGE;
    }
  }
  uint32_t index = 0;
  while (items == UINT64_MAX ? p < len : index < items) {
    if (index >= max_items) {
      atp_codec_fail(err, p, "more than %u items", max_items);
      return ATP_ETOOLARGE;
    }
    atp_val_t *val;
    size_t end;
    int rc =
        parse_one(body, p, len, items == UINT64_MAX ? 0 : 1, arena, &val, &end, err);
    if (rc) return rc;
    rc = fn(ctx, index++, val);
    if (rc) return rc;
    p = end;
  }
  if (p < len) return atp_codec_fail(err, p, "unexpected data after the array");
  return 0;
}

/* --- element splitter -------------------------------------------------------- */

int atp_codec_msgpack_split(atp_splitter_t *s, size_t *start, size_t *end,
                            atp_parse_error_t *err) {
  const unsigned char *b = (const unsigned char *)s->body;
  size_t len = s->len;
  if (s->state == 0) {
    s->state = 1;
    if (len > 0 && ((b[0] >= 0x90 && b[0] <= 0x9f) || b[0] == 0xdc || b[0] == 0xdd)) {
      /* A single array: its items are the elements, nothing may follow it. */
      int size_bytes = b[0] <= 0x9f ? 0 : b[0] == 0xdc ? 2 : 4;
      if (len < 1 + (size_t)size_bytes)
        return atp_codec_fail(err, len, "unexpected end of input");
      s->left = size_bytes ? be(b + 1, size_bytes) : (uint64_t)(b[0] & 0x0f);
      s->pos = 1 + (size_t)size_bytes;
      s->depth = 1;
    }
  }
  if (s->left == 0) {
    if (s->pos < len)
      return atp_codec_fail(err, s->pos, "unexpected data after the array");
    return 0;
  }
  if (s->left == UINT64_MAX && s->pos >= len) return 0;
  size_t stop;
  int rc = check_value(s->body, s->pos, len, s->depth, &stop, err);
  if (rc) return rc;
  *start = s->pos;
  *end = stop;
  s->pos = stop;
  if (s->left != UINT64_MAX) s->left--;
  return 1;
}

/* --- decoding an element the splitter checked -------------------------------- */

/* The splitter ran check_value over every element it found, so an element
 * handed to atp_codec_msgpack_element is known to be well framed, in range and
 * valid UTF-8: decoding it again through check_value and msgpack-c's tree (two
 * more walks and a malloc'd zone an op) is the batch's largest parsing cost.
 * This decoder reads it once straight into the arena, allocating what convert
 * allocates in the same order. It still checks every length against the end
 * (a caller's wrong span cannot make it read past), and it gives up on
 * anything that is not the plain success case: a duplicate key, a map too
 * large to compare pairwise, an exhausted arena, any byte it does not expect.
 * Then the arena goes back to where it was and the element takes the checked
 * path above, which words the refusal exactly as before. */

#define FAST_PAIRWISE_MAX 32 /* larger maps take the checked path (qsort) */

typedef struct {
  const unsigned char *p, *end;
  atp_arena_t *arena;
  uint32_t depth;
} fast_t;

static bool fast_take(fast_t *f, size_t n, const unsigned char **at) {
  if ((size_t)(f->end - f->p) < n) return false;
  *at = f->p;
  f->p += n;
  return true;
}

/* Reads a string's or bin's length from type byte t; false: not one. */
static bool fast_str_len(fast_t *f, unsigned char t, uint64_t *len) {
  const unsigned char *b;
  if (t >= 0xa0 && t <= 0xbf) {
    *len = t & 0x1f;
    return true;
  }
  int n = t == 0xd9 || t == 0xc4   ? 1
          : t == 0xda || t == 0xc5 ? 2
          : t == 0xdb || t == 0xc6 ? 4
                                   : 0;
  if (!n || !fast_take(f, (size_t)n, &b)) return false;
  *len = be(b, n);
  return true;
}

static bool fast_value(fast_t *f, atp_val_t *out);

static bool fast_string(fast_t *f, uint64_t n, const char **s) {
  const unsigned char *b;
  if (!fast_take(f, n, &b)) return false;
  *s = atp_arena_strdup(f->arena, (const char *)b, (size_t)n);
  return *s != NULL;
}

static bool fast_map(fast_t *f, uint64_t n, atp_val_t *out) {
  if (n > FAST_PAIRWISE_MAX || ++f->depth > ATP_CODEC_DEPTH_MAX) return false;
  out->type = ATP_VAL_OBJECT;
  out->len = (uint32_t)n;
  out->u.members =
      n ? atp_arena_alloc(f->arena, (size_t)n * sizeof(atp_member_t)) : NULL;
  if (n && !out->u.members) return false;
  for (uint32_t i = 0; i < n; i++) {
    atp_member_t *m = &out->u.members[i];
    const unsigned char *t;
    uint64_t len;
    if (!fast_take(f, 1, &t) || !fast_str_len(f, *t, &len) || len > UINT32_MAX)
      return false;
    const char *key;
    if (!fast_string(f, len, &key)) return false;
    for (uint32_t j = 0; j < i; j++)
      if (out->u.members[j].key_len == len &&
          memcmp(out->u.members[j].key, key, len) == 0)
        return false; /* a duplicate: the checked path names it */
    m->key = key;
    m->key_len = (uint32_t)len;
    if (!fast_value(f, &m->val)) return false;
  }
  f->depth--;
  return true;
}

static bool fast_array(fast_t *f, uint64_t n, atp_val_t *out) {
  /* An item takes a byte at least. */
  if (n > (uint64_t)(f->end - f->p) || ++f->depth > ATP_CODEC_DEPTH_MAX) return false;
  out->type = ATP_VAL_ARRAY;
  out->len = (uint32_t)n;
  out->u.items = n ? atp_arena_alloc(f->arena, (size_t)n * sizeof(atp_val_t)) : NULL;
  if (n && !out->u.items) return false;
  for (uint32_t i = 0; i < n; i++)
    if (!fast_value(f, &out->u.items[i])) return false;
  f->depth--;
  return true;
}

static bool fast_value(fast_t *f, atp_val_t *out) {
  const unsigned char *b;
  if (!fast_take(f, 1, &b)) return false;
  unsigned char t = *b;
  out->len = 0;
  if (t <= 0x7f) {
    out->type = ATP_VAL_INT;
    out->u.i = t;
    return true;
  }
  if (t >= 0xe0) {
    out->type = ATP_VAL_INT;
    out->u.i = (int8_t)t;
    return true;
  }
  bool ok = true;
  uint64_t n;
  if (t <= 0x8f) {
    ok = fast_map(f, t & 0x0f, out);
  } else if (t <= 0x9f) {
    ok = fast_array(f, t & 0x0f, out);
  } else if (t <= 0xbf || t == 0xd9 || t == 0xda || t == 0xdb ||
             (t >= 0xc4 && t <= 0xc6)) {
    const char *s;
    ok = fast_str_len(f, t, &n) && n <= UINT32_MAX && fast_string(f, n, &s);
    if (ok) out->type = ATP_VAL_STR, out->len = (uint32_t)n, out->u.s = s;
  } else if (t == 0xc0) {
    out->type = ATP_VAL_NULL;
  } else if (t == 0xc2 || t == 0xc3) {
    out->type = ATP_VAL_BOOL;
    out->u.b = t == 0xc3;
  } else if (t >= 0xcc && t <= 0xcf) {
    int w = 1 << (t - 0xcc);
    ok = fast_take(f, (size_t)w, &b);
    if (ok) n = be(b, w), ok = n <= INT64_MAX;
    if (ok) out->type = ATP_VAL_INT, out->u.i = (int64_t)n;
  } else if (t >= 0xd0 && t <= 0xd3) {
    int w = 1 << (t - 0xd0);
    ok = fast_take(f, (size_t)w, &b);
    if (ok) {
      n = be(b, w);
      /* Sign-extend from w bytes. */
      int64_t v = w == 8 ? (int64_t)n : (int64_t)(n << (64 - 8 * w)) >> (64 - 8 * w);
      out->type = ATP_VAL_INT, out->u.i = v;
    }
  } else if (t == 0xca || t == 0xcb) {
    ok = fast_take(f, t == 0xca ? 4 : 8, &b);
    if (ok && t == 0xca) {
      uint32_t bits = (uint32_t)be(b, 4);
      float x;
      memcpy(&x, &bits, sizeof x);
      out->type = ATP_VAL_FLOAT, out->u.f = x;
    } else if (ok) {
      uint64_t bits = be(b, 8);
      double x;
      memcpy(&x, &bits, sizeof x);
      out->type = ATP_VAL_FLOAT, out->u.f = x;
    }
  } else if (t == 0xdc || t == 0xdd || t == 0xde || t == 0xdf) {
    int w = t == 0xdc || t == 0xde ? 2 : 4;
    ok = fast_take(f, (size_t)w, &b);
    if (ok) {
      n = be(b, w);
      ok = t <= 0xdd ? fast_array(f, n, out) : fast_map(f, n, out);
    }
  } else {
    ok = false; /* 0xc1, ext: refused by the check, worded there */
  }
  return ok;
}

int atp_codec_msgpack_element(const char *body, size_t start, size_t end,
                              uint32_t depth, atp_arena_t *arena, atp_val_t **out,
                              atp_parse_error_t *err) {
  ATP_ASSERT(start <= end);
  atp_arena_mark_t mark = atp_arena_mark(arena);
  fast_t f = {(const unsigned char *)body + start, (const unsigned char *)body + end,
              arena, depth};
  atp_val_t *val = atp_arena_alloc(arena, sizeof *val);
  if (val && fast_value(&f, val) && f.p == f.end) {
    *out = val;
    return 0;
  }
  atp_arena_rewind(arena, mark);
  size_t stop;
  int rc = parse_one(body, start, end, depth, arena, out, &stop, err);
  if (rc == 0 && stop != end) {
    *out = NULL;
    return atp_codec_fail(err, stop, "unexpected data after the value");
  }
  return rc;
}
