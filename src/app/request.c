/* request.c - field readers, query strings and response writers shared by
 * every route (see request.h). */
#include "atp/request.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "atp/assert.h"
#include "atp/error.h"
#include "atp/limits.h"
#include "atp/router.h"

/* --- scratch records ------------------------------------------------------- */

/* atp_reservation_t is ~60 KiB: one per loop thread, reused by every request,
 * so no handler puts it on the stack or allocates it. A handler finishes with
 * it before returning, so requests on one thread never share it. */
static _Thread_local atp_reservation_t thread_reservation;
static _Thread_local atp_shortfalls_t thread_shortfalls;

atp_reservation_t *atp_req_reservation(void) {
  return &thread_reservation;
}
atp_shortfalls_t *atp_req_shortfalls(void) {
  return &thread_shortfalls;
}

/* --- errors ---------------------------------------------------------------- */

void atp_field_path(char *buf, size_t cap, const atp_at_t *at, const char *key) {
  /* Levels are linked child -> parent; collect them to print parent first. */
  const atp_at_t *levels[8];
  uint32_t n = 0;
  for (const atp_at_t *l = at; l && n < 8; l = l->parent) levels[n++] = l;
  size_t used = 0;
  buf[0] = '\0';
  for (uint32_t i = n; i-- > 0;) {
    const atp_at_t *l = levels[i];
    int w = l->index >= 0
                ? snprintf(buf + used, cap - used, "%s%s[%d]", used ? "." : "", l->name,
                           (int)l->index)
                : snprintf(buf + used, cap - used, "%s%s", used ? "." : "", l->name);
    if (w < 0 || (size_t)w >= cap - used) return;
    used += (size_t)w;
  }
  if (key) snprintf(buf + used, cap - used, "%s%s", used ? "." : "", key);
}

int atp_req_fail(atp_req_t *rq, int err, const atp_at_t *at, const char *key,
                 const char *fmt, ...) {
  ATP_ASSERT(err < 0);
  rq->err = err;
  if (key || at)
    atp_field_path(rq->field, sizeof rq->field, at, key);
  else
    rq->field[0] = '\0';
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(rq->message, sizeof rq->message, fmt, ap);
  va_end(ap);
  return err;
}

void atp_result_init(atp_result_t *result) {
  result->field[0] = result->message[0] = '\0';
  result->status = -1;
  result->current_on_hand = 0;
}

int atp_req_path_id(atp_req_t *rq, const char *field, const char *what,
                    atp_str_t *out) {
  if (rq->param_count < 1 || atp_id_check(rq->params[0].ptr, rq->params[0].len) != 0)
    return atp_req_fail(rq, ATP_EBADREQ, NULL, field,
                        "The %s must be 1..%d bytes of printable UTF-8.", what,
                        ATP_ID_BYTES_MAX);
  *out = rq->params[0];
  return 0;
}

int atp_req_fail_result(atp_req_t *rq, int err, const atp_result_t *result) {
  rq->err = err;
  snprintf(rq->field, sizeof rq->field, "%s", result->field);
  snprintf(rq->message, sizeof rq->message, "%s",
           result->message[0] ? result->message : atp_strerror(err));
  return err;
}

/* --- body ------------------------------------------------------------------ */

/* The codec refuses a msgpack uint64 above INT64_MAX as malformed input,
 * without a field. When the refused value sits right after a short str key,
 * name that key, so "delta": 2^64-1 is reported on "delta" like any other out
 * of range value. Best effort: only the key, not its full path. */
static void msgpack_error_field(atp_req_t *rq, const char *body, size_t len,
                                size_t offset) {
  if (rq->in_format != ATP_FORMAT_MSGPACK || offset >= len || offset < 2) return;
  if ((unsigned char)body[offset] != 0xcf) return; /* uint64 */
  for (size_t n = 1; n <= 31 && n + 1 <= offset; n++) {
    if ((unsigned char)body[offset - n - 1] != (0xa0 | n)) continue;
    if (atp_id_check(body + offset - n, n) != 0) continue;
    snprintf(rq->field, sizeof rq->field, "%.*s", (int)n, body + offset - n);
    snprintf(rq->message, sizeof rq->message, "Must be an integer within int64.");
    return;
  }
}

int atp_req_parse_body(atp_req_t *rq, bool required) {
  const atp_http_request_t *h = rq->http;
  if (h->body_len == 0) {
    rq->body = NULL;
    if (required)
      return atp_req_fail(rq, ATP_EBADREQ, NULL, NULL,
                          "A JSON or MessagePack object body is required.");
    return 0;
  }
  if (rq->in_format != ATP_FORMAT_JSON && rq->in_format != ATP_FORMAT_MSGPACK)
    return atp_req_fail(rq, ATP_EMEDIATYPE, NULL, NULL,
                        "The body must be application/json or application/msgpack.");
  atp_parse_error_t perr;
  memset(&perr, 0, sizeof perr);
  int rc =
      atp_codec_parse(rq->in_format, h->body, h->body_len, rq->arena, &rq->body, &perr);
  if (rc == ATP_ENOMEM)
    return atp_req_fail(rq, ATP_ETOOLARGE, NULL, NULL,
                        "The body is too large to parse.");
  if (rc != 0) {
    atp_req_fail(rq, ATP_EBADREQ, NULL, NULL, "Malformed body at byte %zu: %s",
                 perr.offset, perr.message);
    if (perr.field[0]) snprintf(rq->field, sizeof rq->field, "%s", perr.field);
    msgpack_error_field(rq, h->body, h->body_len, perr.offset);
    return ATP_EBADREQ;
  }
  if (!rq->body || rq->body->type != ATP_VAL_OBJECT)
    return atp_req_fail(rq, ATP_EBADREQ, NULL, NULL, "The body must be an object.");
  return 0;
}

/* --- identifiers ----------------------------------------------------------- */

/* Decodes one UTF-8 sequence at s (n bytes left); returns its length, or 0 if
 * it is malformed (overlong, surrogate, beyond U+10FFFF, truncated). */
static uint32_t utf8_decode(const unsigned char *s, size_t n, uint32_t *cp) {
  unsigned char c = s[0];
  if (c < 0x80) {
    *cp = c;
    return 1;
  }
  uint32_t len, min;
  uint32_t v;
  if ((c & 0xE0) == 0xC0) {
    len = 2;
    min = 0x80;
    v = c & 0x1F;
  } else if ((c & 0xF0) == 0xE0) {
    len = 3;
    min = 0x800;
    v = c & 0x0F;
  } else if ((c & 0xF8) == 0xF0) {
    len = 4;
    min = 0x10000;
    v = c & 0x07;
  } else
    return 0;
  if (n < len) return 0;
  for (uint32_t i = 1; i < len; i++) {
    if ((s[i] & 0xC0) != 0x80) return 0;
    v = (v << 6) | (s[i] & 0x3F);
  }
  if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
  *cp = v;
  return len;
}

/* Valid UTF-8; with printable, no C0, DEL or C1 control characters. */
static int text_check(const char *s, size_t len, bool printable) {
  const unsigned char *p = (const unsigned char *)s;
  size_t i = 0;
  while (i < len) {
    if (p[i] >= 0x20 && p[i] < 0x7F) { /* the common case: printable ASCII */
      i++;
      continue;
    }
    uint32_t cp = 0;
    uint32_t n = utf8_decode(p + i, len - i, &cp);
    if (n == 0) return ATP_EBADREQ;
    if (printable && (cp < 0x20 || (cp >= 0x7F && cp <= 0x9F))) return ATP_EBADREQ;
    i += n;
  }
  return 0;
}

int atp_id_check(const char *s, size_t len) {
  if (len < 1 || len > ATP_ID_BYTES_MAX) return ATP_EBADREQ;
  return text_check(s, len, true);
}

/* --- readers ----------------------------------------------------------------- */

static const char *type_name(atp_val_type_t t) {
  switch (t) {
    case ATP_VAL_NULL:
      return "null";
    case ATP_VAL_BOOL:
      return "a boolean";
    case ATP_VAL_INT:
      return "an integer";
    case ATP_VAL_FLOAT:
      return "a fractional number";
    case ATP_VAL_STR:
      return "a string";
    case ATP_VAL_ARRAY:
      return "an array";
    case ATP_VAL_OBJECT:
      return "an object";
  }
  return "a value";
}

/* The member, or NULL when absent or null. Fails for a required absent one. */
static int lookup(atp_req_t *rq, const atp_val_t *obj, const atp_at_t *at,
                  const char *key, unsigned flags, const atp_val_t **out) {
  const atp_val_t *v = obj ? atp_val_get(obj, key) : NULL;
  if (v && v->type == ATP_VAL_NULL) v = NULL;
  *out = v;
  if (!v && (flags & ATP_REQUIRED))
    return atp_req_fail(rq, ATP_EBADREQ, at, key, "The field is required.");
  return 0;
}

int atp_get_id(atp_req_t *rq, const atp_val_t *obj, const atp_at_t *at, const char *key,
               unsigned flags, atp_str_t *out) {
  const atp_val_t *v;
  out->ptr = "";
  out->len = 0;
  int rc = lookup(rq, obj, at, key, flags, &v);
  if (rc || !v) return rc;
  if (v->type != ATP_VAL_STR)
    return atp_req_fail(rq, ATP_EBADREQ, at, key, "Must be a string, not %s.",
                        type_name(v->type));
  if (atp_id_check(v->u.s, v->len) != 0)
    return atp_req_fail(rq, ATP_EBADREQ, at, key,
                        "Must be 1..%d bytes of printable UTF-8.", ATP_ID_BYTES_MAX);
  out->ptr = v->u.s;
  out->len = v->len;
  return 0;
}

int atp_get_text(atp_req_t *rq, const atp_val_t *obj, const atp_at_t *at,
                 const char *key, unsigned flags, uint32_t max_bytes, atp_str_t *out) {
  const atp_val_t *v;
  out->ptr = "";
  out->len = 0;
  int rc = lookup(rq, obj, at, key, flags, &v);
  if (rc || !v) return rc;
  if (v->type != ATP_VAL_STR)
    return atp_req_fail(rq, ATP_EBADREQ, at, key, "Must be a string, not %s.",
                        type_name(v->type));
  if (v->len > max_bytes || text_check(v->u.s, v->len, false) != 0)
    return atp_req_fail(rq, ATP_EBADREQ, at, key, "Must be at most %u bytes of UTF-8.",
                        max_bytes);
  out->ptr = v->u.s;
  out->len = v->len;
  return 0;
}

int atp_get_int(atp_req_t *rq, const atp_val_t *obj, const atp_at_t *at,
                const char *key, unsigned flags, int64_t min, int64_t max, int64_t *out,
                bool *present) {
  const atp_val_t *v;
  if (present) *present = false;
  int rc = lookup(rq, obj, at, key, flags, &v);
  if (rc || !v) return rc;
  if (v->type != ATP_VAL_INT)
    return atp_req_fail(rq, ATP_EBADREQ, at, key, "Must be an integer, not %s.",
                        type_name(v->type));
  if (v->u.i < min || v->u.i > max)
    return atp_req_fail(rq, ATP_EBADREQ, at, key, "Must be in %lld..%lld.",
                        (long long)min, (long long)max);
  *out = v->u.i;
  if (present) *present = true;
  return 0;
}

int atp_get_bool(atp_req_t *rq, const atp_val_t *obj, const atp_at_t *at,
                 const char *key, unsigned flags, bool *out, bool *present) {
  const atp_val_t *v;
  if (present) *present = false;
  int rc = lookup(rq, obj, at, key, flags, &v);
  if (rc || !v) return rc;
  if (v->type != ATP_VAL_BOOL)
    return atp_req_fail(rq, ATP_EBADREQ, at, key, "Must be a boolean, not %s.",
                        type_name(v->type));
  *out = v->u.b;
  if (present) *present = true;
  return 0;
}

int atp_get_time(atp_req_t *rq, const atp_val_t *obj, const atp_at_t *at,
                 const char *key, unsigned flags, int64_t *out_ms, bool *present) {
  const atp_val_t *v;
  if (present) *present = false;
  int rc = lookup(rq, obj, at, key, flags, &v);
  if (rc || !v) return rc;
  if (v->type == ATP_VAL_INT) {
    if (v->u.i < 0 || v->u.i > ATP_TIME_MS_MAX)
      return atp_req_fail(rq, ATP_EBADREQ, at, key,
                          "Must be milliseconds since the epoch, 0..%lld.",
                          (long long)ATP_TIME_MS_MAX);
    *out_ms = v->u.i;
  } else if (v->type == ATP_VAL_STR) {
    if (atp_time_parse_rfc3339(v->u.s, v->len, out_ms) != 0 || *out_ms < 0)
      return atp_req_fail(rq, ATP_EBADREQ, at, key,
                          "Must be an RFC 3339 time such as 2024-05-01T10:00:00Z.");
  } else {
    return atp_req_fail(rq, ATP_EBADREQ, at, key,
                        "Must be integer milliseconds or an RFC 3339 string, not %s.",
                        type_name(v->type));
  }
  if (!(flags & ATP_FUTURE_OK)) {
    rc = atp_req_time_check(rq, at, key, *out_ms);
    if (rc != 0) return rc;
  }
  if (present) *present = true;
  return 0;
}

int atp_req_time_check(atp_req_t *rq, const atp_at_t *at, const char *key,
                       int64_t at_ms) {
  atp_engine_t *engine = rq->app ? atp_app_engine(rq->app) : NULL;
  int64_t skew_ms = rq->app && rq->app->clock_skew_ms > 0 ? rq->app->clock_skew_ms
                                                          : ATP_CLOCK_SKEW_MS_DEFAULT;
  int64_t now_ms;
  if (engine) {
    now_ms = atp_engine_now_ms(engine); /* the clock the engine judges by */
  } else {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    now_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
  }
  if (at_ms <= now_ms + skew_ms) return 0;
  return atp_req_fail(rq, ATP_EBADREQ, at, key,
                      "Must not lie in the future: it is %lld ms after the server's "
                      "clock, and at most %lld ms of clock skew are allowed.",
                      (long long)(at_ms - now_ms), (long long)skew_ms);
}

int atp_get_array(atp_req_t *rq, const atp_val_t *obj, const atp_at_t *at,
                  const char *key, unsigned flags, uint32_t min, uint32_t max,
                  const atp_val_t **out) {
  const atp_val_t *v;
  *out = NULL;
  int rc = lookup(rq, obj, at, key, flags, &v);
  if (rc || !v) return rc;
  if (v->type != ATP_VAL_ARRAY)
    return atp_req_fail(rq, ATP_EBADREQ, at, key, "Must be an array, not %s.",
                        type_name(v->type));
  if (v->len < min || v->len > max)
    return atp_req_fail(rq, ATP_EBADREQ, at, key, "Must hold %u..%u items, not %u.",
                        min, max, v->len);
  *out = v;
  return 0;
}

int atp_get_item_object(atp_req_t *rq, const atp_val_t *array, const atp_at_t *at,
                        const char *key, uint32_t index, const atp_val_t **out) {
  ATP_ASSERT(array && array->type == ATP_VAL_ARRAY && index < array->len);
  const atp_val_t *v = &array->u.items[index];
  if (v->type != ATP_VAL_OBJECT) {
    atp_at_t item = {key, (int32_t)index, at};
    return atp_req_fail(rq, ATP_EBADREQ, &item, NULL, "Must be an object, not %s.",
                        type_name(v->type));
  }
  *out = v;
  return 0;
}

/* --- RFC 3339 ---------------------------------------------------------------- */

/* The n decimal digits at s into *out; ATP_EBADREQ when one is not a digit. */
static int digits(const char *s, size_t n, int *out) {
  int v = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9') return ATP_EBADREQ;
    v = v * 10 + (s[i] - '0');
  }
  *out = v;
  return 0;
}

/* Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar
 * (H. Hinnant's days_from_civil). */
static int64_t days_from_civil(int64_t y, int m, int d) {
  y -= m <= 2;
  int64_t era = (y >= 0 ? y : y - 399) / 400;
  int64_t yoe = y - era * 400;
  int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

int atp_time_parse_rfc3339(const char *s, size_t len, int64_t *out_ms) {
  static const int month_days[12] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  int y, mo, d, h, mi, sec;
  if (len < 20) return ATP_EBADREQ;
  if (digits(s, 4, &y) || s[4] != '-' || digits(s + 5, 2, &mo) || s[7] != '-' ||
      digits(s + 8, 2, &d) || (s[10] != 'T' && s[10] != 't' && s[10] != ' ') ||
      digits(s + 11, 2, &h) || s[13] != ':' || digits(s + 14, 2, &mi) || s[16] != ':' ||
      digits(s + 17, 2, &sec))
    return ATP_EBADREQ;
  if (y < 1 || mo < 1 || mo > 12 || d < 1 || d > month_days[mo - 1] || h > 23 ||
      mi > 59 || sec > 60)
    return ATP_EBADREQ;
  bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
  if (mo == 2 && d == 29 && !leap) return ATP_EBADREQ;
  size_t i = 19;
  int64_t frac_ms = 0;
  if (i < len && s[i] == '.') {
    i++;
    size_t start = i;
    int scale = 100;
    while (i < len && s[i] >= '0' && s[i] <= '9') {
      frac_ms += (s[i] - '0') * scale;
      scale /= 10;
      i++;
    }
    if (i == start) return ATP_EBADREQ;
  }
  int64_t offset_min = 0;
  if (i < len && (s[i] == 'Z' || s[i] == 'z')) {
    i++;
  } else if (i + 6 == len && (s[i] == '+' || s[i] == '-') && s[i + 3] == ':') {
    int oh, om;
    if (digits(s + i + 1, 2, &oh) || digits(s + i + 4, 2, &om) || oh > 23 || om > 59)
      return ATP_EBADREQ;
    offset_min = (oh * 60 + om) * (s[i] == '-' ? -1 : 1);
    i += 6;
  } else {
    return ATP_EBADREQ;
  }
  if (i != len) return ATP_EBADREQ;
  int64_t days = days_from_civil(y, mo, d);
  int64_t secs = days * 86400 + h * 3600 + mi * 60 + sec - offset_min * 60;
  *out_ms = secs * 1000 + frac_ms;
  return 0;
}

/* --- query strings ------------------------------------------------------------ */

/* What hex_value gives for a character that is not a hex digit: no digit is
 * negative, and this is not an ATP_E* code (the caller makes that). */
#define NOT_HEX (-1)

/* The value 0..15 of hex digit c, or NOT_HEX. */
static int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return NOT_HEX;
}

int atp_percent_decode(atp_arena_t *arena, const char *s, size_t len,
                       bool plus_is_space, atp_str_t *out) {
  /* Fast path: nothing to decode, point at the input itself. */
  bool plain = true;
  for (size_t i = 0; i < len; i++) {
    if (s[i] == '%' || (plus_is_space && s[i] == '+')) {
      plain = false;
      break;
    }
  }
  if (plain) {
    out->ptr = s;
    out->len = (uint32_t)len;
    return 0;
  }
  char *d = atp_arena_alloc(arena, len + 1);
  if (!d) return ATP_ENOMEM;
  size_t n = 0;
  for (size_t i = 0; i < len; i++) {
    char c = s[i];
    if (c == '%') {
      int hi = i + 1 < len ? hex_value(s[i + 1]) : NOT_HEX;
      int lo = i + 2 < len ? hex_value(s[i + 2]) : NOT_HEX;
      if (hi == NOT_HEX || lo == NOT_HEX) return ATP_EBADREQ;
      d[n++] = (char)(hi * 16 + lo);
      i += 2;
    } else if (c == '+' && plus_is_space) {
      d[n++] = ' ';
    } else {
      d[n++] = c;
    }
  }
  ATP_ASSERT(n <= len); /* decoding never lengthens */
  d[n] = '\0';
  out->ptr = d;
  out->len = (uint32_t)n;
  return 0;
}

int atp_req_parse_query(atp_req_t *rq) {
  const char *q = rq->http->query;
  size_t len = rq->http->query_len;
  rq->query_count = 0;
  size_t i = 0;
  while (i < len) {
    size_t end = i;
    while (end < len && q[end] != '&') end++;
    if (end > i) {
      if (rq->query_count == ATP_QUERY_PARAMS_MAX)
        return atp_req_fail(rq, ATP_EBADREQ, NULL, NULL, "At most %d query parameters.",
                            ATP_QUERY_PARAMS_MAX);
      const char *eq = memchr(q + i, '=', end - i);
      size_t name_end = eq ? (size_t)(eq - q) : end;
      atp_query_param_t *p = &rq->query[rq->query_count];
      int rc = atp_percent_decode(rq->arena, q + i, name_end - i, true, &p->name);
      if (rc == 0)
        rc = eq ? atp_percent_decode(rq->arena, eq + 1, end - name_end - 1, true,
                                     &p->value)
                : (p->value = (atp_str_t){"", 0}, 0);
      if (rc != 0)
        return atp_req_fail(rq, rc == ATP_ENOMEM ? ATP_ENOMEM : ATP_EBADREQ, NULL, NULL,
                            "Malformed percent-encoding in the query string.");
      /* A repeated name is ambiguous (which one did a cache or proxy see?):
       * refused rather than taking either. At most 16 names: O(n^2) is fine. */
      for (uint32_t k = 0; k < rq->query_count; k++) {
        const atp_str_t *seen = &rq->query[k].name;
        if (seen->len != p->name.len || memcmp(seen->ptr, p->name.ptr, seen->len) != 0)
          continue;
        int shown = p->name.len > 64 ? 64 : (int)p->name.len;
        atp_req_fail(rq, ATP_EBADREQ, NULL, NULL,
                     "The query parameter \"%.*s\" is given more than once.", shown,
                     p->name.ptr);
        snprintf(rq->field, sizeof rq->field, "%.*s", shown, p->name.ptr);
        return ATP_EBADREQ;
      }
      rq->query_count++;
      ATP_ASSERT(rq->query_count <= ATP_QUERY_PARAMS_MAX);
    }
    i = end + 1;
  }
  return 0;
}

const atp_str_t *atp_req_query(const atp_req_t *rq, const char *name) {
  size_t n = strlen(name);
  for (uint32_t i = 0; i < rq->query_count; i++) {
    const atp_query_param_t *p = &rq->query[i];
    if (p->name.len == n && memcmp(p->name.ptr, name, n) == 0) return &p->value;
  }
  return NULL;
}

int atp_query_id(atp_req_t *rq, const char *name, unsigned flags, atp_str_t *out) {
  const atp_str_t *v = atp_req_query(rq, name);
  out->ptr = "";
  out->len = 0;
  if (!v) {
    if (flags & ATP_REQUIRED)
      return atp_req_fail(rq, ATP_EBADREQ, NULL, name,
                          "The query parameter is required.");
    return 0;
  }
  if (atp_id_check(v->ptr, v->len) != 0)
    return atp_req_fail(rq, ATP_EBADREQ, NULL, name,
                        "Must be 1..%d bytes of printable UTF-8.", ATP_ID_BYTES_MAX);
  *out = *v;
  return 0;
}

/* --- responses ------------------------------------------------------------------ */

atp_writer_t *atp_respond_begin(atp_req_t *rq, int status) {
  atp_http_response_t *res = rq->res;
  res->status = status;
  res->content_type = atp_format_content_type(rq->out_format);
  atp_buf_reset(res->body);
  atp_writer_init(&rq->writer, rq->out_format, res->body);
  return &rq->writer;
}

void atp_respond_empty(atp_req_t *rq, int status) {
  rq->res->status = status;
  rq->res->content_type = NULL;
  atp_buf_reset(rq->res->body);
}

atp_writer_t *atp_respond_error_begin(atp_req_t *rq, int err) {
  atp_writer_t *w = atp_respond_begin(rq, atp_error_http_status(err));
  atp_w_object_begin(w);
  atp_w_key(w, "error");
  atp_w_object_begin(w);
  atp_w_key(w, "code");
  atp_w_cstr(w, atp_strerror_code(err));
  atp_w_key(w, "message");
  atp_w_cstr(w, rq->message[0] ? rq->message : atp_strerror(err));
  if (rq->field[0]) {
    atp_w_key(w, "field");
    atp_w_cstr(w, rq->field);
  }
  return w;
}

void atp_respond_error_end(atp_req_t *rq, atp_writer_t *w) {
  atp_w_object_end(w);
  atp_w_object_end(w);
}

void atp_respond_error(atp_req_t *rq, int err) {
  atp_respond_error_end(rq, atp_respond_error_begin(rq, err));
}
