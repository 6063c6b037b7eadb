/* bench_json.c - picks the JSON library by measurement.
 *
 * Debian 12 has four C JSON parsers: yajl, jansson, json-c and cJSON (yyjson
 * is not in bookworm). Each parses representative request bodies many times
 * into our atp_val_t tree in an arena; the time of parse + convert + free is
 * reported as ns/parse and MB/s. yajl is measured through the real code
 * (atp_codec_parse, which builds the tree from yajl's callbacks with every
 * check of the contract). jansson, json-c and cJSON are measured through
 * conversions of their trees written here, including the duplicate key check
 * that json-c and cJSON do not do themselves; jansson's allocations during a
 * parse come from a bump arena, as they did when it was the codec's library.
 *
 * json-c is loaded with dlopen(RTLD_LOCAL): it exports json_object_get and
 * json_object_iter_next like jansson, so the two cannot share one link (or,
 * because of json_object_get's two meanings, one translation unit).
 *
 * A second table probes what each library gives us for correctness, and
 * what atp_codec_parse answers on top of yajl: duplicate keys, int64 range,
 * \u0000 in strings, depth limit, invalid UTF-8, surrogates and error
 * positions.
 *
 *   make build/release/bench/bench_json && build/release/bench/bench_json
 * [seconds_per_case]
 */
#include <cjson/cJSON.h>
#include <dlfcn.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <yajl/yajl_parse.h>
#include <yajl/yajl_version.h>

#include "atp/codec.h"
#include "atp/error.h"
#include "atp/limits.h"

/* --- inputs --------------------------------------------------------------- */

static atp_buf_t make_reservation(int lines) {
  atp_buf_t b;
  atp_buf_init(&b, 0);
  atp_buf_printf(&b, "{\"id\":\"res-7f3a9c2e\",\"lines\":[");
  for (int i = 0; i < lines; i++) {
    atp_buf_printf(&b,
                   "%s{\"sku\":\"SKU-%06d\",\"location\":\"store-%03d\",\"qty\":%d}",
                   i ? "," : "", 1000 + i * 7, i % 40, 1 + i % 3);
  }
  atp_buf_printf(&b, "],\"ttl_ms\":900000,\"channel\":\"web\"}");
  return b;
}

static atp_buf_t make_query(int items) {
  atp_buf_t b;
  atp_buf_init(&b, 0);
  atp_buf_printf(&b, "{\"items\":[");
  for (int i = 0; i < items; i++) {
    if (i % 4 == 3) {
      atp_buf_printf(
          &b,
          "%s{\"sku\":\"gid://shopify/ProductVariant/%d\",\"group\":\"metro-north\"}",
          i ? "," : "", 40000000 + i);
    } else {
      atp_buf_printf(&b, "%s{\"sku\":\"SKU-%06d\",\"location\":\"store-%03d\"}",
                     i ? "," : "", i * 13, i % 120);
    }
  }
  atp_buf_printf(&b, "]}");
  return b;
}

static atp_buf_t make_batch(int ops) {
  atp_buf_t b;
  atp_buf_init(&b, 0);
  atp_buf_printf(&b, "[");
  for (int i = 0; i < ops; i++) {
    atp_buf_printf(&b,
                   "%s{\"op\":\"adjust\",\"flow\":\"erp\",\"id\":\"erp-%08d\",\"sku\":"
                   "\"SKU-%06d\","
                   "\"location\":\"dc-%02d\",\"delta\":%d,\"reason\":\"received\","
                   "\"source\":\"erp\","
                   "\"occurred_at\":%lld,\"ref\":\"PO-%d\"}\n",
                   i ? "," : "", i, i % 50000, i % 12,
                   i % 2 ? -(i % 9) - 1 : i % 100 + 1, 1700000000000LL + i,
                   4500000 + i / 10);
  }
  atp_buf_printf(&b, "]");
  return b;
}

/* --- json-c through dlopen -------------------------------------------------- */

typedef struct jc_obj jc_obj;
typedef struct jc_tok jc_tok;
typedef struct {
  const void *opaque_;
} jc_iter;
enum { JC_NULL, JC_BOOL, JC_DOUBLE, JC_INT, JC_OBJECT, JC_ARRAY, JC_STRING };
enum {
  JC_STRICT = 0x01,
  JC_VALIDATE_UTF8 = 0x10,
  JC_DEFAULT_DEPTH = 32,
  JC_CONTINUE = 1
};

static struct {
  jc_tok *(*tokener_new_ex)(int depth);
  void (*tokener_set_flags)(jc_tok *, int);
  void (*tokener_reset)(jc_tok *);
  jc_obj *(*tokener_parse_ex)(jc_tok *, const char *, int);
  size_t (*tokener_get_parse_end)(jc_tok *);
  int (*tokener_get_error)(jc_tok *);
  void (*tokener_free)(jc_tok *);
  int (*put)(jc_obj *);
  int (*get_type)(const jc_obj *);
  int (*get_boolean)(const jc_obj *);
  int64_t (*get_int64)(const jc_obj *);
  double (*get_double)(const jc_obj *);
  const char *(*get_string)(jc_obj *);
  int (*get_string_len)(const jc_obj *);
  size_t (*array_length)(const jc_obj *);
  jc_obj *(*array_get_idx)(const jc_obj *, size_t);
  int (*object_length)(const jc_obj *);
  jc_iter (*iter_begin)(jc_obj *);
  jc_iter (*iter_end)(const jc_obj *);
  void (*iter_next)(jc_iter *);
  const char *(*iter_peek_name)(const jc_iter *);
  jc_obj *(*iter_peek_value)(const jc_iter *);
  int (*iter_equal)(const jc_iter *, const jc_iter *);
  const char *(*version)(void);
} jc;

static void jc_load(void) {
  void *h = dlopen("libjson-c.so.5", RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    fprintf(stderr, "bench_json: %s (install libjson-c5)\n", dlerror());
    exit(1);
  }
#define JC(field, name)                                       \
  do {                                                        \
    *(void **)&jc.field = dlsym(h, name);                     \
    if (!jc.field) {                                          \
      fprintf(stderr, "bench_json: no %s in json-c\n", name); \
      exit(1);                                                \
    }                                                         \
  } while (0)
  JC(tokener_new_ex, "json_tokener_new_ex");
  JC(tokener_set_flags, "json_tokener_set_flags");
  JC(tokener_reset, "json_tokener_reset");
  JC(tokener_parse_ex, "json_tokener_parse_ex");
  JC(tokener_get_parse_end, "json_tokener_get_parse_end");
  JC(tokener_get_error, "json_tokener_get_error");
  JC(tokener_free, "json_tokener_free");
  JC(put, "json_object_put");
  JC(get_type, "json_object_get_type");
  JC(get_boolean, "json_object_get_boolean");
  JC(get_int64, "json_object_get_int64");
  JC(get_double, "json_object_get_double");
  JC(get_string, "json_object_get_string");
  JC(get_string_len, "json_object_get_string_len");
  JC(array_length, "json_object_array_length");
  JC(array_get_idx, "json_object_array_get_idx");
  JC(object_length, "json_object_object_length");
  JC(iter_begin, "json_object_iter_begin");
  JC(iter_end, "json_object_iter_end");
  JC(iter_next, "json_object_iter_next");
  JC(iter_peek_name, "json_object_iter_peek_name");
  JC(iter_peek_value, "json_object_iter_peek_value");
  JC(iter_equal, "json_object_iter_equal");
  JC(version, "json_c_version");
#undef JC
}

/* --- conversions for json-c and cJSON -------------------------------------- */

static bool dup_keys(const atp_member_t *m, uint32_t n) {
  /* Request objects are small: pairwise, as codec_msgpack.c does up to 8. */
  for (uint32_t i = 1; i < n; i++) {
    for (uint32_t j = 0; j < i; j++) {
      if (m[i].key_len == m[j].key_len && memcmp(m[i].key, m[j].key, m[i].key_len) == 0)
        return true;
    }
  }
  return false;
}

static int jc_convert(atp_arena_t *a, jc_obj *j, atp_val_t *out) {
  switch (jc.get_type(j)) {
    case JC_NULL:
      out->type = ATP_VAL_NULL;
      return 0;
    case JC_BOOL:
      out->type = ATP_VAL_BOOL;
      out->u.b = jc.get_boolean(j);
      return 0;
    case JC_INT:
      out->type = ATP_VAL_INT;
      out->u.i = jc.get_int64(j);
      return 0;
    case JC_DOUBLE:
      out->type = ATP_VAL_FLOAT;
      out->u.f = jc.get_double(j);
      return 0;
    case JC_STRING:
      out->type = ATP_VAL_STR;
      out->len = (uint32_t)jc.get_string_len(j);
      out->u.s = atp_arena_strdup(a, jc.get_string(j), out->len);
      return out->u.s ? 0 : -1;
    case JC_ARRAY: {
      size_t n = jc.array_length(j);
      out->type = ATP_VAL_ARRAY;
      out->len = (uint32_t)n;
      out->u.items = atp_arena_alloc(a, n * sizeof(atp_val_t) + 1);
      for (size_t i = 0; i < n; i++) {
        if (jc_convert(a, jc.array_get_idx(j, i), &out->u.items[i])) return -1;
      }
      return 0;
    }
    case JC_OBJECT: {
      size_t n = (size_t)jc.object_length(j), i = 0;
      out->type = ATP_VAL_OBJECT;
      out->len = (uint32_t)n;
      out->u.members = atp_arena_alloc(a, n * sizeof(atp_member_t) + 1);
      jc_iter it = jc.iter_begin(j), end = jc.iter_end(j);
      for (; !jc.iter_equal(&it, &end); jc.iter_next(&it)) {
        atp_member_t *m = &out->u.members[i++];
        const char *key = jc.iter_peek_name(&it);
        m->key_len = (uint32_t)strlen(key);
        m->key = atp_arena_strdup(a, key, m->key_len);
        if (jc_convert(a, jc.iter_peek_value(&it), &m->val)) return -1;
      }
      return dup_keys(out->u.members, out->len)
                 ? -1
                 : 0; /* never true: json-c keeps the last */
    }
  }
  return -1;
}

static int cj_convert(atp_arena_t *a, const cJSON *j, atp_val_t *out) {
  if (cJSON_IsNull(j)) {
    out->type = ATP_VAL_NULL;
  } else if (cJSON_IsBool(j)) {
    out->type = ATP_VAL_BOOL;
    out->u.b = cJSON_IsTrue(j);
  } else if (cJSON_IsNumber(j)) {
    /* cJSON keeps only a double: integers beyond 2^53 are already rounded. */
    double d = j->valuedouble;
    if (d == floor(d) && fabs(d) < 9.2e18) {
      out->type = ATP_VAL_INT;
      out->u.i = (int64_t)d;
    } else {
      out->type = ATP_VAL_FLOAT;
      out->u.f = d;
    }
  } else if (cJSON_IsString(j)) {
    out->type = ATP_VAL_STR;
    out->len = (uint32_t)strlen(j->valuestring);
    out->u.s = atp_arena_strdup(a, j->valuestring, out->len);
  } else if (cJSON_IsArray(j) || cJSON_IsObject(j)) {
    bool obj = cJSON_IsObject(j);
    uint32_t n = (uint32_t)cJSON_GetArraySize(j), i = 0; /* a list walk */
    out->type = obj ? ATP_VAL_OBJECT : ATP_VAL_ARRAY;
    out->len = n;
    if (obj) {
      out->u.members = atp_arena_alloc(a, n * sizeof(atp_member_t) + 1);
    } else {
      out->u.items = atp_arena_alloc(a, n * sizeof(atp_val_t) + 1);
    }
    for (const cJSON *c = j->child; c; c = c->next, i++) {
      atp_val_t *v = obj ? &out->u.members[i].val : &out->u.items[i];
      if (obj) {
        out->u.members[i].key_len = (uint32_t)strlen(c->string);
        out->u.members[i].key =
            atp_arena_strdup(a, c->string, out->u.members[i].key_len);
      }
      if (cj_convert(a, c, v)) return -1;
    }
    if (obj && dup_keys(out->u.members, n)) return -1;
  } else {
    return -1;
  }
  return 0;
}

/* jansson's tree into atp_val_t, as codec_json.c did while it used jansson
 * (jansson rejects duplicate keys itself). depth: containers open around j. */
static int jn_convert(atp_arena_t *a, json_t *j, atp_val_t *out, uint32_t depth) {
  switch (json_typeof(j)) {
    case JSON_OBJECT: {
      if (depth + 1 > ATP_CODEC_DEPTH_MAX) return -1;
      size_t n = json_object_size(j), i = 0;
      out->type = ATP_VAL_OBJECT;
      out->len = (uint32_t)n;
      out->u.members = atp_arena_alloc(a, n * sizeof(atp_member_t) + 1);
      for (void *it = json_object_iter(j); it; it = json_object_iter_next(j, it), i++) {
        atp_member_t *m = &out->u.members[i];
        m->key_len = (uint32_t)json_object_iter_key_len(it);
        m->key = atp_arena_strdup(a, json_object_iter_key(it), m->key_len);
        if (jn_convert(a, json_object_iter_value(it), &m->val, depth + 1)) return -1;
      }
      return 0;
    }
    case JSON_ARRAY: {
      if (depth + 1 > ATP_CODEC_DEPTH_MAX) return -1;
      size_t n = json_array_size(j);
      out->type = ATP_VAL_ARRAY;
      out->len = (uint32_t)n;
      out->u.items = atp_arena_alloc(a, n * sizeof(atp_val_t) + 1);
      for (size_t i = 0; i < n; i++) {
        if (jn_convert(a, json_array_get(j, i), &out->u.items[i], depth + 1)) return -1;
      }
      return 0;
    }
    case JSON_STRING:
      out->type = ATP_VAL_STR;
      out->len = (uint32_t)json_string_length(j);
      out->u.s = atp_arena_strdup(a, json_string_value(j), out->len);
      return 0;
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
  return -1;
}

/* jansson mallocs every node; during a parse its allocations come from this
 * bump arena and its frees are no-ops (the arena is reset after the parse). */
static atp_arena_t jn_heap;
static bool jn_in_parse;

static void *jn_malloc(size_t n) {
  return jn_in_parse ? atp_arena_alloc(&jn_heap, n) : malloc(n);
}

static void jn_free(void *p) {
  if (!jn_in_parse) free(p);
}

/* --- the four parsers behind one signature ----------------------------------- */

static jc_tok *tokener;

static int parse_yajl_codec(atp_arena_t *a, const char *s, size_t len) {
  atp_val_t *v;
  atp_parse_error_t err;
  return atp_codec_parse(ATP_FORMAT_JSON, s, len, a, &v, &err);
}

static int parse_jansson(atp_arena_t *a, const char *s, size_t len) {
  json_error_t e;
  jn_in_parse = true;
  json_t *j =
      json_loadb(s, len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &e);
  int rc = -1;
  if (j) {
    atp_val_t v;
    rc = jn_convert(a, j, &v, 0);
    json_decref(j);
  }
  jn_in_parse = false;
  atp_arena_reset(&jn_heap);
  return rc;
}

static int parse_jsonc(atp_arena_t *a, const char *s, size_t len) {
  jc.tokener_reset(tokener);
  jc_obj *j = jc.tokener_parse_ex(tokener, s, (int)len);
  if (!j || jc.tokener_get_parse_end(tokener) != len) {
    if (j) jc.put(j);
    return -1;
  }
  atp_val_t v;
  int rc = jc_convert(a, j, &v);
  jc.put(j);
  return rc;
}

static int parse_cjson(atp_arena_t *a, const char *s, size_t len) {
  const char *end = NULL;
  cJSON *j = cJSON_ParseWithLengthOpts(s, len, &end, 0);
  if (!j) return -1;
  atp_val_t v;
  int rc = cj_convert(a, j, &v);
  cJSON_Delete(j);
  return rc;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

typedef int (*parse_fn)(atp_arena_t *, const char *, size_t);

static void measure(const char *lib, parse_fn fn, const char *input, const atp_buf_t *b,
                    double seconds) {
  atp_arena_t a;
  atp_arena_init(&a, 64 * 1024, 0);
  if (fn(&a, b->data, b->len) != 0) {
    printf("%-8s %-22s FAILED TO PARSE\n", lib, input);
    atp_arena_destroy(&a);
    return;
  }
  long iters = 0;
  double start = now_s(), elapsed = 0;
  do {
    for (int k = 0; k < 8; k++) {
      atp_arena_reset(&a);
      fn(&a, b->data, b->len);
    }
    iters += 8;
    elapsed = now_s() - start;
  } while (elapsed < seconds);
  double ns = elapsed * 1e9 / (double)iters;
  printf("%-8s %-22s %9zu B %12.0f ns/parse %8.1f MB/s %9ld parses\n", lib, input,
         b->len, ns, (double)b->len / ns * 1e3, iters);
  atp_arena_destroy(&a);
}

/* Batch bodies go through atp_codec_parse_stream in the server. */
static int count_item(void *ctx, uint32_t index, atp_val_t *val) {
  (void)index, (void)val;
  ++*(uint32_t *)ctx;
  return 0;
}

static void measure_stream(const atp_buf_t *b, double seconds) {
  atp_arena_t a;
  atp_arena_init(&a, 64 * 1024, 0);
  atp_parse_error_t err;
  long iters = 0;
  double start = now_s(), elapsed = 0;
  uint32_t n = 0;
  do {
    n = 0;
    atp_arena_reset(&a);
    if (atp_codec_parse_stream(ATP_FORMAT_JSON, b->data, b->len, &a, ATP_BATCH_OPS_MAX,
                               count_item, &n, &err)) {
      printf("stream failed: %s\n", err.message);
      break;
    }
    iters++;
    elapsed = now_s() - start;
  } while (elapsed < seconds);
  double ns = elapsed * 1e9 / (double)iters;
  printf("%-8s %-22s %9zu B %12.0f ns/parse %8.1f MB/s %9ld parses (%u items)\n",
         "yajl", "batch, parse_stream", b->len, ns, (double)b->len / ns * 1e3, iters,
         n);
  atp_arena_destroy(&a);
}

/* --- correctness probes ------------------------------------------------------- */

typedef struct {
  const char *name;
  const char *body;
  size_t len;
} probe_t;

/* What yajl itself gives: numbers as text, strings decoded, no key check. */
typedef struct {
  char first[48]; /* the first scalar: "text ...", "len N" */
  int keys;       /* keys of the outermost object */
  int depth;      /* containers open */
} yajl_probe_t;

static void yp_first(yajl_probe_t *y, const char *what) {
  if (!y->first[0]) snprintf(y->first, sizeof y->first, "%s", what);
}
static int yp_null(void *c) {
  yp_first(c, "null");
  return 1;
}
static int yp_bool(void *c, int b) {
  yp_first(c, "bool");
  return 1;
}
static int yp_number(void *c, const char *s, size_t n) {
  char text[48];
  snprintf(text, sizeof text, "text %.*s", (int)n, s);
  yp_first(c, text);
  return 1;
}
static int yp_string(void *c, const unsigned char *s, size_t n) {
  char text[48];
  snprintf(text, sizeof text, "len %zu", n);
  yp_first(c, text);
  return 1;
}
static int yp_key(void *c, const unsigned char *s, size_t n) {
  yajl_probe_t *y = c;
  if (y->depth == 1) y->keys++;
  return 1;
}
static int yp_open(void *c) {
  ((yajl_probe_t *)c)->depth++;
  return 1;
}
static int yp_close(void *c) {
  ((yajl_probe_t *)c)->depth--;
  return 1;
}

static void probe_yajl(const probe_t *p, char *out, size_t cap) {
  static const yajl_callbacks cb = {yp_null,   yp_bool,   NULL,    NULL,
                                    yp_number, yp_string, yp_open, yp_key,
                                    yp_close,  yp_open,   yp_close};
  yajl_probe_t y = {{0}, 0, 0};
  yajl_handle h = yajl_alloc(&cb, NULL, &y);
  yajl_status st = yajl_parse(h, (const unsigned char *)p->body, p->len);
  size_t at = yajl_get_bytes_consumed(h);
  if (st == yajl_status_ok) {
    st = yajl_complete_parse(h);
    if (st != yajl_status_ok) at = p->len; /* its count is of a blank after the end */
  }
  if (st != yajl_status_ok)
    snprintf(out, cap, "reject @%zu", at);
  else if (p->body[0] == '{')
    snprintf(out, cap, "accept, %d key(s)", y.keys);
  else
    snprintf(out, cap, "accept %s", y.first[0] ? y.first : "");
  yajl_free(h);
}

/* What atp_codec_parse (on yajl) answers. */
static void probe_codec(const probe_t *p, char *out, size_t cap) {
  atp_arena_t a;
  atp_arena_init(&a, 4096, 0);
  atp_val_t *v;
  atp_parse_error_t err;
  if (atp_codec_parse(ATP_FORMAT_JSON, p->body, p->len, &a, &v, &err)) {
    snprintf(out, cap, "reject @%zu", err.offset);
  } else {
    const atp_val_t *first = v->type == ATP_VAL_ARRAY && v->len ? &v->u.items[0] : v;
    if (first->type == ATP_VAL_INT)
      snprintf(out, cap, "accept int %lld", (long long)first->u.i);
    else if (first->type == ATP_VAL_FLOAT)
      snprintf(out, cap, "accept float %g", first->u.f);
    else if (first->type == ATP_VAL_STR)
      snprintf(out, cap, "accept len %u", first->len);
    else if (v->type == ATP_VAL_OBJECT)
      snprintf(out, cap, "accept, %u key(s)", v->len);
    else
      snprintf(out, cap, "accept");
  }
  atp_arena_destroy(&a);
}

/* What the library itself says: "reject", or "accept" plus what it kept. */
static void probe_jansson(const probe_t *p, char *out, size_t cap) {
  json_error_t e;
  json_t *j = json_loadb(p->body, p->len,
                         JSON_DECODE_ANY | JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &e);
  if (!j) {
    snprintf(out, cap, "reject @%d", e.position);
    return;
  }
  json_t *first = json_is_array(j) && json_array_size(j) ? json_array_get(j, 0) : j;
  if (json_is_integer(first))
    snprintf(out, cap, "accept int %lld", (long long)json_integer_value(first));
  else if (json_is_real(first))
    snprintf(out, cap, "accept float %g", json_real_value(first));
  else if (json_is_string(first))
    snprintf(out, cap, "accept len %zu", json_string_length(first));
  else if (json_is_string(j))
    snprintf(out, cap, "accept len %zu", json_string_length(j));
  else
    snprintf(out, cap, "accept");
  json_decref(j);
}

static void probe_jsonc(const probe_t *p, char *out, size_t cap) {
  jc_tok *t = jc.tokener_new_ex(JC_DEFAULT_DEPTH);
  jc.tokener_set_flags(t, JC_STRICT | JC_VALIDATE_UTF8);
  jc_obj *j = jc.tokener_parse_ex(t, p->body, (int)p->len);
  if (!j) {
    if (jc.tokener_get_error(t) == JC_CONTINUE)
      snprintf(out, cap, "reject (incomplete)");
    else
      snprintf(out, cap, "reject @%zu", jc.tokener_get_parse_end(t));
  } else if (jc.tokener_get_parse_end(t) != p->len) {
    snprintf(out, cap, "stops @%zu", jc.tokener_get_parse_end(t));
  } else if (jc.get_type(j) == JC_ARRAY && jc.array_length(j) &&
             jc.get_type(jc.array_get_idx(j, 0)) == JC_INT) {
    snprintf(out, cap, "accept int %lld",
             (long long)jc.get_int64(jc.array_get_idx(j, 0)));
  } else if (jc.get_type(j) == JC_ARRAY && jc.array_length(j) &&
             jc.get_type(jc.array_get_idx(j, 0)) == JC_DOUBLE) {
    snprintf(out, cap, "accept float %g", jc.get_double(jc.array_get_idx(j, 0)));
  } else if (jc.get_type(j) == JC_ARRAY && jc.array_length(j) &&
             jc.get_type(jc.array_get_idx(j, 0)) == JC_STRING) {
    snprintf(out, cap, "accept len %d", jc.get_string_len(jc.array_get_idx(j, 0)));
  } else if (jc.get_type(j) == JC_OBJECT) {
    snprintf(out, cap, "accept, %d key(s)", jc.object_length(j));
  } else {
    snprintf(out, cap, "accept");
  }
  if (j) jc.put(j);
  jc.tokener_free(t);
}

static void probe_cjson(const probe_t *p, char *out, size_t cap) {
  const char *end = NULL;
  cJSON *j = cJSON_ParseWithLengthOpts(p->body, p->len, &end, 0);
  if (!j) {
    snprintf(out, cap, "reject @%ld", end ? (long)(end - p->body) : -1L);
    return;
  }
  const cJSON *first = cJSON_IsArray(j) && j->child ? j->child : j;
  if (end != p->body + p->len)
    snprintf(out, cap, "stops @%ld", (long)(end - p->body));
  else if (cJSON_IsNumber(first))
    snprintf(out, cap, "accept double %.17g", first->valuedouble);
  else if (cJSON_IsString(first))
    snprintf(out, cap, "accept len %zu", strlen(first->valuestring));
  else if (cJSON_IsObject(j))
    snprintf(out, cap, "accept, %d key(s)", cJSON_GetArraySize(j));
  else
    snprintf(out, cap, "accept");
  cJSON_Delete(j);
}

#define P(name, lit) \
  { name, lit, sizeof(lit) - 1 }

static void probes(void) {
  static char deep[2 * 40 + 1];
  memset(deep, '[', 40);
  memset(deep + 40, ']', 40);
  static char deeper[2 * 3000];
  memset(deeper, '[', 3000);
  memset(deeper + 3000, ']', 3000);
  const probe_t list[] = {
      P("duplicate key", "{\"qty\":1,\"qty\":2}"),
      P("int64 max", "[9223372036854775807]"),
      P("int64 max + 1", "[9223372036854775808]"),
      P("2^53 + 1", "[9007199254740993]"),
      P("1.0 is a float", "[1.0]"),
      P("\\u0000 in string", "[\"a\\u0000b\"]"),
      P("invalid UTF-8", "[\"a\xff\"]"),
      P("lone surrogate", "[\"\\ud800\"]"),
      P("bad pair", "[\"\\ud800\\u0041\"]"),
      P("overlong UTF-8", "[\"\xc0\xaf\"]"),
      {"depth 40", deep, sizeof deep - 1},
      {"depth 3000", deeper, sizeof deeper},
      P("error at 7", "{\"a\":1,}"),
      P("trailing garbage", "{} x"),
  };
  printf("\n%-18s %-28s %-28s %-28s %-28s %-28s\n", "probe", "atp_codec_parse (yajl)",
         "yajl by itself", "jansson", "json-c (strict+utf8)", "cJSON");
  for (size_t i = 0; i < sizeof list / sizeof list[0]; i++) {
    char a[64], b[64], c[64], d[64], e[64];
    probe_codec(&list[i], a, sizeof a);
    probe_yajl(&list[i], b, sizeof b);
    probe_jansson(&list[i], c, sizeof c);
    probe_jsonc(&list[i], d, sizeof d);
    probe_cjson(&list[i], e, sizeof e);
    printf("%-18s %-28s %-28s %-28s %-28s %-28s\n", list[i].name, a, b, c, d, e);
  }
}

int main(int argc, char **argv) {
  double seconds = argc > 1 ? atof(argv[1]) : 0.3;
  jc_load();
  atp_arena_init(&jn_heap, 64 * 1024, 0);
  json_set_alloc_funcs(jn_malloc, jn_free);
  tokener = jc.tokener_new_ex(ATP_CODEC_DEPTH_MAX + 1);
  jc.tokener_set_flags(tokener, JC_STRICT | JC_VALIDATE_UTF8);
  struct {
    const char *name;
    atp_buf_t body;
  } inputs[] = {
      {"reservation, 1 line", make_reservation(1)},
      {"reservation, 100 lines", make_reservation(100)},
      {"query, 1000 items", make_query(1000)},
      {"batch, 20000 ops", make_batch(20000)},
  };
  struct {
    const char *name;
    parse_fn fn;
  } libs[] = {{"yajl", parse_yajl_codec},
              {"jansson", parse_jansson},
              {"json-c", parse_jsonc},
              {"cJSON", parse_cjson}};
  printf("yajl %d.%d.%d, jansson %s, json-c %s, cJSON %d.%d.%d; %.2f s per case\n",
         YAJL_MAJOR, YAJL_MINOR, YAJL_MICRO, JANSSON_VERSION, jc.version(),
         CJSON_VERSION_MAJOR, CJSON_VERSION_MINOR, CJSON_VERSION_PATCH, seconds);
  for (size_t i = 0; i < sizeof inputs / sizeof inputs[0]; i++) {
    for (size_t l = 0; l < sizeof libs / sizeof libs[0]; l++) {
      measure(libs[l].name, libs[l].fn, inputs[i].name, &inputs[i].body, seconds);
    }
  }
  measure_stream(&inputs[3].body, seconds);
  probes();
  for (size_t i = 0; i < sizeof inputs / sizeof inputs[0]; i++)
    atp_buf_free(&inputs[i].body);
  jc.tokener_free(tokener);
  atp_arena_destroy(&jn_heap);
  return 0;
}
