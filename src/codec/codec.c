/* codec.c - format negotiation, parse dispatch, value look-up and the
 * streaming writer for JSON and MessagePack (see codec.h).
 *
 * The writer keeps one small frame per open container: JSON needs the count
 * to place commas, MessagePack needs where the map32/array32 header is so
 * that its count can be patched on close. Scalars use the most compact
 * MessagePack encoding. Integers are formatted by hand, two digits at a time;
 * only floats (never quantities) go through snprintf.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "atp/assert.h"
#include "atp/codec.h"
#include "atp/error.h"
#include "atp/limits.h"
#include "codec_internal.h"

/* --- errors and UTF-8 ------------------------------------------------------ */

int atp_codec_fail(atp_parse_error_t *err, size_t offset, const char *fmt, ...) {
  if (!err) return ATP_EBADREQ;
  err->offset = offset;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err->message, sizeof err->message, fmt, ap);
  va_end(ap);
  /* Library messages quote input ("near '...'"): keep the message printable
   * ASCII so that it can go into any response or log line as it is. */
  for (char *c = err->message; *c; c++) {
    if ((unsigned char)*c < 0x20 || (unsigned char)*c >= 0x7f) *c = '?';
  }
  return ATP_EBADREQ;
}

size_t atp_codec_utf8_prefix(const char *str, size_t len) {
  const unsigned char *s = (const unsigned char *)str;
  size_t i = 0;
  while (i < len) {
    /* ASCII runs are the common case: eight bytes per step. */
    while (i + 8 <= len) {
      uint64_t word;
      memcpy(&word, s + i, 8);
      if (word & 0x8080808080808080ull) break;
      i += 8;
    }
    if (i >= len) break;
    unsigned char c = s[i];
    if (c < 0x80) {
      i++;
      continue;
    }
    size_t n;
    uint32_t cp, min;
    if (c >= 0xc2 && c <= 0xdf) {
      n = 2, cp = c & 0x1f, min = 0x80;
    } else if (c >= 0xe0 && c <= 0xef) {
      n = 3, cp = c & 0x0f, min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
      n = 4, cp = c & 0x07, min = 0x10000;
    } else {
      return i;
    }
    if (len - i < n) return i;
    for (size_t k = 1; k < n; k++) {
      if ((s[i + k] & 0xc0) != 0x80) return i;
      cp = (cp << 6) | (s[i + k] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return i;
    i += n;
  }
  return len;
}

/* --- negotiation ------------------------------------------------------------ */

/* [*start, *end) trimmed of spaces and tabs. */
static void trim(const char **start, const char **end) {
  while (*start < *end && (**start == ' ' || **start == '\t')) (*start)++;
  while (*end > *start && ((*end)[-1] == ' ' || (*end)[-1] == '\t')) (*end)--;
}

static bool token_is(const char *s, size_t len, const char *lit) {
  return strlen(lit) == len && strncasecmp(s, lit, len) == 0;
}

/* A bare media type (no parameters) to a format. */
static atp_format_t media_type_format(const char *s, size_t len) {
  if (token_is(s, len, "application/json")) return ATP_FORMAT_JSON;
  if (token_is(s, len, "application/msgpack")) return ATP_FORMAT_MSGPACK;
  if (token_is(s, len, "application/x-msgpack")) return ATP_FORMAT_MSGPACK;
  if (token_is(s, len, "application/x-ndjson")) return ATP_FORMAT_NDJSON;
  if (token_is(s, len, "text/csv")) return ATP_FORMAT_CSV;
  return ATP_FORMAT_UNKNOWN;
}

atp_format_t atp_format_from_content_type(const char *value, size_t len) {
  if (!value) return ATP_FORMAT_UNKNOWN;
  const char *start = value, *end = value + len;
  const char *semi = memchr(value, ';', len);
  if (semi) end = semi;
  trim(&start, &end);
  return media_type_format(start, (size_t)(end - start));
}

/* True when the parameters of one Accept entry ([p, end), after the media
 * type) carry q=0, the client's way of saying "never this one". */
static bool accept_q_is_zero(const char *p, const char *end) {
  while (p < end) {
    const char *semi = memchr(p, ';', (size_t)(end - p));
    const char *param_end = semi ? semi : end;
    const char *s = p, *e = param_end;
    trim(&s, &e);
    if (e - s >= 2 && (s[0] == 'q' || s[0] == 'Q') && s[1] == '=') {
      s += 2;
      bool zero = s < e;
      for (; s < e; s++) {
        if (*s != '0' && *s != '.') zero = false;
      }
      return zero;
    }
    p = semi ? semi + 1 : end;
  }
  return false;
}

atp_format_t atp_format_for_response(const char *accept, size_t accept_len,
                                     atp_format_t request_format) {
  /* Contract 1: the first of the two that Accept names wins (order, not q:
   * a client names what it prefers first; q=0 still means "not this"). */
  const char *p = accept, *end = accept ? accept + accept_len : NULL;
  while (p && p < end) {
    const char *comma = memchr(p, ',', (size_t)(end - p));
    const char *entry_end = comma ? comma : end;
    const char *type_end = memchr(p, ';', (size_t)(entry_end - p));
    if (!type_end) type_end = entry_end;
    const char *s = p, *e = type_end;
    trim(&s, &e);
    atp_format_t f = media_type_format(s, (size_t)(e - s));
    if ((f == ATP_FORMAT_JSON || f == ATP_FORMAT_MSGPACK) &&
        !accept_q_is_zero(type_end, entry_end)) {
      return f;
    }
    p = comma ? comma + 1 : end;
  }
  if (request_format == ATP_FORMAT_MSGPACK) return ATP_FORMAT_MSGPACK;
  return ATP_FORMAT_JSON;
}

const char *atp_format_content_type(atp_format_t format) {
  return format == ATP_FORMAT_MSGPACK ? "application/msgpack" : "application/json";
}

/* --- parse dispatch --------------------------------------------------------- */

int atp_codec_parse(atp_format_t format, const char *body, size_t len,
                    atp_arena_t *arena, atp_val_t **out, atp_parse_error_t *err) {
  ATP_ASSERT(arena && out);
  *out = NULL;
  if (!body) len = 0, body = "";
  switch (format) {
    case ATP_FORMAT_JSON:
    case ATP_FORMAT_NDJSON: /* one line of NDJSON is one JSON value */
      return atp_codec_json_parse(body, len, arena, out, err);
    case ATP_FORMAT_MSGPACK:
      return atp_codec_msgpack_parse(body, len, arena, out, err);
    default:
      return atp_codec_fail(err, 0, "body format not parsed by the codec");
  }
}

int atp_codec_parse_stream(atp_format_t format, const char *body, size_t len,
                           atp_arena_t *arena, uint32_t max_items,
                           int (*fn)(void *ctx, uint32_t index, atp_val_t *val),
                           void *ctx, atp_parse_error_t *err) {
  ATP_ASSERT(arena && fn);
  if (!body) len = 0, body = "";
  switch (format) {
    case ATP_FORMAT_JSON:
    case ATP_FORMAT_NDJSON:
      return atp_codec_json_stream(format == ATP_FORMAT_NDJSON, body, len, arena,
                                   max_items, fn, ctx, err);
    case ATP_FORMAT_MSGPACK:
      return atp_codec_msgpack_stream(body, len, arena, max_items, fn, ctx, err);
    default:
      return atp_codec_fail(err, 0, "body format not parsed by the codec");
  }
}

/* --- element splitter ---------------------------------------------------------- */

void atp_splitter_init(atp_splitter_t *s, atp_format_t format, const char *body,
                       size_t len) {
  ATP_ASSERT(s && (format == ATP_FORMAT_JSON || format == ATP_FORMAT_NDJSON ||
                   format == ATP_FORMAT_MSGPACK));
  memset(s, 0, sizeof *s);
  s->format = format;
  s->body = body ? body : "";
  s->len = body ? len : 0;
  s->left = UINT64_MAX;
}

int atp_splitter_next(atp_splitter_t *s, size_t *start, size_t *end,
                      atp_parse_error_t *err) {
  ATP_ASSERT(s && start && end);
  if (err) err->field[0] = '\0';
  if (s->state == 2) return 0;
  int rc;
  switch (s->format) {
    case ATP_FORMAT_JSON:
    case ATP_FORMAT_NDJSON:
      rc = atp_codec_json_split(s, start, end, err);
      break;
    default:
      rc = atp_codec_msgpack_split(s, start, end, err);
      break;
  }
  if (rc == 1) {
    ATP_ASSERT(*start <= *end && *end <= s->len);
    s->count++;
  } else {
    s->state = 2; /* the end, or a broken body: nothing more is found */
  }
  return rc;
}

int atp_codec_parse_element(const atp_splitter_t *s, size_t start, size_t end,
                            atp_arena_t *arena, atp_val_t **out,
                            atp_parse_error_t *err) {
  ATP_ASSERT(s && arena && out && start <= end && end <= s->len);
  *out = NULL;
  if (err) err->field[0] = '\0';
  if (s->format == ATP_FORMAT_MSGPACK)
    return atp_codec_msgpack_element(s->body, start, end, s->depth, arena, out, err);
  return atp_codec_json_element(s->body, start, end, s->depth, arena, out, err);
}

const atp_val_t *atp_val_getn(const atp_val_t *object, const char *key,
                              size_t key_len) {
  if (!object || object->type != ATP_VAL_OBJECT || !key) return NULL;
  /* The first byte first: an op's fields are read one by one, each a scan of
   * a few short keys, and most keys of the same length differ there (a call
   * to memcmp per candidate was a twentieth of a batch's loop). */
  for (uint32_t i = 0; i < object->len; i++) {
    const atp_member_t *m = &object->u.members[i];
    if (m->key_len == key_len && (key_len == 0 || m->key[0] == key[0]) &&
        memcmp(m->key, key, key_len) == 0)
      return &m->val;
  }
  return NULL;
}

/* --- writer: raw emitters ----------------------------------------------------- */

static void put(atp_writer_t *w, const void *data, size_t len) {
  atp_buf_append(w->buf, data, len); /* failure is sticky in buf->failed */
}

static void put_byte(atp_writer_t *w, uint8_t byte) {
  char *p = atp_buf_reserve(w->buf, 1);
  if (!p) return;
  *p = (char)byte;
  w->buf->len++;
  ATP_ASSERT(w->buf->len <= w->buf->cap);
}

/* MessagePack type byte then a big-endian integer of n bytes. */
static void put_be(atp_writer_t *w, uint8_t type, uint64_t v, int n) {
  char *p = atp_buf_reserve(w->buf, (size_t)n + 1);
  if (!p) return;
  p[0] = (char)type;
  for (int i = 0; i < n; i++) p[1 + i] = (char)(v >> (8 * (n - 1 - i)));
  w->buf->len += (size_t)n + 1;
  ATP_ASSERT(w->buf->len <= w->buf->cap);
}

static const char digit_pairs[201] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

/* Decimal digits of v written backwards from end; returns the first digit. */
static char *format_u64(char *end, uint64_t v) {
  char *p = end;
  while (v >= 100) {
    unsigned pair = (unsigned)(v % 100) * 2;
    v /= 100;
    *--p = digit_pairs[pair + 1];
    *--p = digit_pairs[pair];
  }
  if (v >= 10) {
    *--p = digit_pairs[v * 2 + 1];
    *--p = digit_pairs[v * 2];
  } else {
    *--p = (char)('0' + v);
  }
  return p;
}

static void raw_json_int(atp_writer_t *w, bool negative, uint64_t magnitude) {
  char tmp[24];
  char *end = tmp + sizeof tmp;
  char *p = format_u64(end, magnitude);
  if (negative) *--p = '-';
  put(w, p, (size_t)(end - p));
}

static void raw_uint(atp_writer_t *w, uint64_t v) {
  if (w->format != ATP_FORMAT_MSGPACK) return raw_json_int(w, false, v);
  if (v < 128) return put_byte(w, (uint8_t)v);
  if (v <= UINT8_MAX) return put_be(w, 0xcc, v, 1);
  if (v <= UINT16_MAX) return put_be(w, 0xcd, v, 2);
  if (v <= UINT32_MAX) return put_be(w, 0xce, v, 4);
  put_be(w, 0xcf, v, 8);
}

static void raw_int(atp_writer_t *w, int64_t v) {
  if (v >= 0) return raw_uint(w, (uint64_t)v);
  uint64_t magnitude = (uint64_t)0 - (uint64_t)v; /* exact even for INT64_MIN */
  if (w->format != ATP_FORMAT_MSGPACK) return raw_json_int(w, true, magnitude);
  if (v >= -32) return put_byte(w, (uint8_t)(int8_t)v);
  if (v >= INT8_MIN) return put_be(w, 0xd0, (uint64_t)v & 0xff, 1);
  if (v >= INT16_MIN) return put_be(w, 0xd1, (uint64_t)v & 0xffff, 2);
  if (v >= INT32_MIN) return put_be(w, 0xd2, (uint64_t)v & 0xffffffff, 4);
  put_be(w, 0xd3, (uint64_t)v, 8);
}

static void raw_float(atp_writer_t *w, double v) {
  if (w->format == ATP_FORMAT_MSGPACK) {
    uint64_t bits;
    memcpy(&bits, &v, sizeof bits);
    return put_be(w, 0xcb, bits, 8);
  }
  if (!isfinite(v)) return put(w, "null", 4); /* JSON has no NaN/Infinity */
  /* Shortest of 15..17 significant digits that reads back exactly. */
  char tmp[40];
  int n = 0;
  for (int digits = 15; digits <= 17; digits++) {
    n = snprintf(tmp, sizeof tmp - 3, "%.*g", digits, v);
    if (strtod(tmp, NULL) == v) break;
  }
  /* Keep it a float on the way back in: "3" would parse as an integer. */
  if (!strpbrk(tmp, ".eE")) {
    memcpy(tmp + n, ".0", 3);
    n += 2;
  }
  put(w, tmp, (size_t)n);
}

static const char hex_digits[] = "0123456789abcdef";

/* A byte JSON takes as it is in a string. */
static inline bool json_plain(unsigned char c) {
  return c >= 0x20 && c < 0x80 && c != '"' && c != '\\';
}

/* Writes the escape of c (a quote, a backslash or a control byte) at o and
 * returns the end: at most 6 bytes. */
static char *json_escape_byte(char *o, unsigned char c) {
  static const char short_escapes[] = {
      ['"'] = '"',  ['\\'] = '\\', ['\n'] = 'n', ['\r'] = 'r',
      ['\t'] = 't', ['\b'] = 'b',  ['\f'] = 'f'};
  *o++ = '\\';
  if (c < sizeof short_escapes && short_escapes[c]) {
    *o++ = short_escapes[c];
    return o;
  }
  memcpy(o, "u00", 3);
  o[3] = hex_digits[c >> 4];
  o[4] = hex_digits[c & 15];
  return o + 5;
}

/* JSON string body with escapes; invalid UTF-8 becomes U+FFFD so that the
 * output is always valid JSON. Works in slices so that the reservation stays
 * bounded for huge strings. */
static void raw_json_string(atp_writer_t *w, const char *str, size_t len) {
  const unsigned char *s = (const unsigned char *)str;
  /* Fast path: identifiers are printable ASCII with nothing to escape. */
  size_t plain = 0;
  while (plain < len && json_plain(s[plain])) plain++;
  if (plain == len) {
    char *o = atp_buf_reserve(w->buf, len + 2);
    if (!o) return;
    o[0] = '"';
    memcpy(o + 1, s, len);
    o[len + 1] = '"';
    w->buf->len += len + 2;
    return;
  }
  put_byte(w, '"');
  put(w, s, plain); /* the plain prefix is not scanned again */
  size_t i = plain;
  while (i < len) {
    size_t slice_end = len - i > 4096 ? i + 4096 : len;
    char *out = atp_buf_reserve(w->buf, (slice_end - i) * 6 + 8);
    if (!out) return;
    char *o = out;
    while (i < slice_end) {
      unsigned char c = s[i];
      if (json_plain(c)) {
        *o++ = (char)c;
        i++;
      } else if (c >= 0x80) {
        size_t valid =
            atp_codec_utf8_prefix((const char *)s + i, len - i < 4 ? len - i : 4);
        size_t n = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2;
        if (valid >= n) {
          memcpy(o, s + i, n); /* may overrun slice_end by 3: reserved +8 */
          o += n;
          i += n;
        } else {
          memcpy(o, "\\ufffd", 6);
          o += 6;
          i++;
        }
      } else {
        o = json_escape_byte(o, c);
        i++;
      }
    }
    w->buf->len += (size_t)(o - out);
  }
  put_byte(w, '"');
}

static void raw_str(atp_writer_t *w, const char *s, size_t len) {
  if (w->format != ATP_FORMAT_MSGPACK) return raw_json_string(w, s, len);
  if (len < 32) {
    put_byte(w, (uint8_t)(0xa0 | len));
  } else if (len <= UINT8_MAX) {
    put_be(w, 0xd9, len, 1);
  } else if (len <= UINT16_MAX) {
    put_be(w, 0xda, len, 2);
  } else {
    ATP_ASSERT(len <= UINT32_MAX);
    put_be(w, 0xdb, len, 4);
  }
  put(w, s, len);
}

/* --- writer: structure ------------------------------------------------------- */

void atp_writer_init(atp_writer_t *w, atp_format_t format, atp_buf_t *buf) {
  ATP_ASSERT(buf && (format == ATP_FORMAT_JSON || format == ATP_FORMAT_MSGPACK));
  memset(w, 0, sizeof *w);
  w->format = format;
  w->buf = buf;
}

/* Called before every value: an object member's value follows its key; an
 * array item gets its comma. */
static void before_value(atp_writer_t *w) {
  if (w->depth == 0) return;
  uint32_t d = w->depth - 1;
  if (w->is_object[d]) {
    ATP_ASSERT(w->want_value && "atp_writer: a value in an object needs a key first");
    w->want_value = false;
    return;
  }
  if (w->format != ATP_FORMAT_MSGPACK && w->count[d]) put_byte(w, ',');
  w->count[d]++;
}

static void container_begin(atp_writer_t *w, bool is_object) {
  before_value(w);
  ATP_ASSERT(w->depth < ATP_WRITER_DEPTH_MAX && "atp_writer: nesting too deep");
  uint32_t d = w->depth++;
  ATP_ASSERT(w->depth <= ATP_WRITER_DEPTH_MAX);
  w->is_object[d] = is_object;
  w->count[d] = 0;
  w->header_at[d] = w->buf->len;
  w->want_value = false;
  if (w->format == ATP_FORMAT_MSGPACK) {
    put_be(w, is_object ? 0xdf : 0xdd, 0, 4); /* count patched on close */
  } else {
    put_byte(w, is_object ? '{' : '[');
  }
}

static void container_end(atp_writer_t *w, bool is_object) {
  ATP_ASSERT(w->depth > 0 && w->is_object[w->depth - 1] == is_object &&
             "atp_writer: close does not match open");
  ATP_ASSERT(!w->want_value && "atp_writer: key without a value");
  uint32_t d = --w->depth;
  if (w->format != ATP_FORMAT_MSGPACK) return put_byte(w, is_object ? '}' : ']');
  size_t at = w->header_at[d];
  if (w->buf->failed) return;
  /* The 5-byte header was written at open and nothing since cut the buffer. */
  ATP_ASSERT(at + 5 <= w->buf->len);
  uint32_t n = w->count[d];
  unsigned char *p = (unsigned char *)w->buf->data + at + 1;
  p[0] = (unsigned char)(n >> 24), p[1] = (unsigned char)(n >> 16);
  p[2] = (unsigned char)(n >> 8), p[3] = (unsigned char)n;
}

void atp_w_object_begin(atp_writer_t *w) {
  container_begin(w, true);
}
void atp_w_object_end(atp_writer_t *w) {
  container_end(w, true);
}
void atp_w_array_begin(atp_writer_t *w) {
  container_begin(w, false);
}
void atp_w_array_end(atp_writer_t *w) {
  container_end(w, false);
}

void atp_w_keyn(atp_writer_t *w, const char *key, size_t len) {
  ATP_ASSERT(w->depth > 0 && w->is_object[w->depth - 1] &&
             "atp_writer: key outside an object");
  ATP_ASSERT(!w->want_value && "atp_writer: two keys in a row");
  uint32_t d = w->depth - 1;
  if (w->format != ATP_FORMAT_MSGPACK && w->count[d]) put_byte(w, ',');
  w->count[d]++;
  raw_str(w, key, len);
  if (w->format != ATP_FORMAT_MSGPACK) put_byte(w, ':');
  w->want_value = true;
}

void atp_w_str(atp_writer_t *w, const char *s, size_t len) {
  before_value(w);
  raw_str(w, s, len);
}

void atp_w_int(atp_writer_t *w, int64_t v) {
  before_value(w);
  raw_int(w, v);
}

void atp_w_uint(atp_writer_t *w, uint64_t v) {
  before_value(w);
  raw_uint(w, v);
}

void atp_w_float(atp_writer_t *w, double v) {
  before_value(w);
  raw_float(w, v);
}

void atp_w_bool(atp_writer_t *w, bool v) {
  before_value(w);
  if (w->format == ATP_FORMAT_MSGPACK) return put_byte(w, v ? 0xc3 : 0xc2);
  put(w, v ? "true" : "false", v ? 4 : 5);
}

void atp_w_null(atp_writer_t *w) {
  before_value(w);
  if (w->format == ATP_FORMAT_MSGPACK) return put_byte(w, 0xc0);
  put(w, "null", 4);
}

/* A parsed tree knows its sizes, so it is written with exact, compact headers
 * and without the writer's frame stack (which a deep payload nested inside
 * the caller's own containers could overflow). Depth is bounded by the parser
 * (ATP_CODEC_DEPTH_MAX); a hand-built deeper tree fails the buffer instead. */
static void raw_val(atp_writer_t *w, const atp_val_t *v, uint32_t depth) {
  if (depth > 2 * ATP_CODEC_DEPTH_MAX) {
    if (!w->buf->failed) w->buf->failed = ATP_EINTERNAL;
    return;
  }
  bool mp = w->format == ATP_FORMAT_MSGPACK;
  switch (v->type) {
    case ATP_VAL_NULL:
      return mp ? put_byte(w, 0xc0) : put(w, "null", 4);
    case ATP_VAL_BOOL:
      if (mp) return put_byte(w, v->u.b ? 0xc3 : 0xc2);
      return put(w, v->u.b ? "true" : "false", v->u.b ? 4 : 5);
    case ATP_VAL_INT:
      return raw_int(w, v->u.i);
    case ATP_VAL_FLOAT:
      return raw_float(w, v->u.f);
    case ATP_VAL_STR:
      return raw_str(w, v->u.s, v->len);
    case ATP_VAL_ARRAY:
    case ATP_VAL_OBJECT: {
      bool obj = v->type == ATP_VAL_OBJECT;
      if (!mp) {
        put_byte(w, obj ? '{' : '[');
      } else if (v->len < 16) {
        put_byte(w, (uint8_t)((obj ? 0x80 : 0x90) | v->len));
      } else if (v->len <= UINT16_MAX) {
        put_be(w, obj ? 0xde : 0xdc, v->len, 2);
      } else {
        put_be(w, obj ? 0xdf : 0xdd, v->len, 4);
      }
      for (uint32_t i = 0; i < v->len && !w->buf->failed; i++) {
        if (!mp && i) put_byte(w, ',');
        if (obj) {
          const atp_member_t *m = &v->u.members[i];
          raw_str(w, m->key, m->key_len);
          if (!mp) put_byte(w, ':');
          raw_val(w, &m->val, depth + 1);
        } else {
          raw_val(w, &v->u.items[i], depth + 1);
        }
      }
      if (!mp) put_byte(w, obj ? '}' : ']');
      return;
    }
  }
  ATP_ASSERT(!"atp_w_val: bad value type");
}

void atp_w_val(atp_writer_t *w, const atp_val_t *val) {
  before_value(w);
  raw_val(w, val, 0);
}

void atp_w_raw(atp_writer_t *w, const char *bytes, size_t len) {
  before_value(w);
  put(w, bytes, len);
}
