/* test_codec.c - codec.h: negotiation, both parsers' error paths, the writer,
 * streams and round trips. */
#include <math.h>
#include <stdint.h>

#include "atp/codec.h"
#include "atp/error.h"
#include "atp/limits.h"
#include "test.h"

static atp_arena_t arena;
static atp_parse_error_t perr;

#define S(lit) lit, sizeof(lit) - 1 /* literal with its length (may hold NULs) */

static atp_val_t *parse(atp_format_t f, const char *body, size_t len) {
  atp_arena_reset(&arena);
  atp_val_t *v = NULL;
  memset(&perr, 0, sizeof perr);
  int rc = atp_codec_parse(f, body, len, &arena, &v, &perr);
  if (rc) {
    fprintf(stderr, "  unexpected parse error %d at %zu: %s\n", rc, perr.offset,
            perr.message);
    return NULL;
  }
  return v;
}

/* Expects a parse failure with code rc at offset (SIZE_MAX: any) whose message
 * contains `words`. */
static int parse_fails(atp_format_t f, const char *body, size_t len, int rc,
                       size_t offset, const char *words) {
  atp_arena_reset(&arena);
  atp_val_t *v = NULL;
  memset(&perr, 0, sizeof perr);
  int got = atp_codec_parse(f, body, len, &arena, &v, &perr);
  int ok = got == rc && v == NULL && (offset == SIZE_MAX || perr.offset == offset) &&
           strstr(perr.message, words) != NULL;
  if (!ok) {
    fprintf(stderr,
            "  parse of %zu bytes: rc %d (want %d) offset %zu (want %zu) message "
            "\"%s\" (want \"%s\")\n",
            len, got, rc, perr.offset, offset, perr.message, words);
  }
  return ok;
}
#define JSON_FAILS(lit, off, words) \
  CHECK(parse_fails(ATP_FORMAT_JSON, S(lit), ATP_EBADREQ, off, words))
#define MP_FAILS(lit, off, words) \
  CHECK(parse_fails(ATP_FORMAT_MSGPACK, S(lit), ATP_EBADREQ, off, words))

static bool val_equal(const atp_val_t *a, const atp_val_t *b) {
  if (a->type != b->type) return false;
  switch (a->type) {
    case ATP_VAL_NULL:
      return true;
    case ATP_VAL_BOOL:
      return a->u.b == b->u.b;
    case ATP_VAL_INT:
      return a->u.i == b->u.i;
    case ATP_VAL_FLOAT:
      return a->u.f == b->u.f || (isnan(a->u.f) && isnan(b->u.f));
    case ATP_VAL_STR:
      return a->len == b->len && memcmp(a->u.s, b->u.s, a->len) == 0;
    case ATP_VAL_ARRAY:
      if (a->len != b->len) return false;
      for (uint32_t i = 0; i < a->len; i++) {
        if (!val_equal(&a->u.items[i], &b->u.items[i])) return false;
      }
      return true;
    case ATP_VAL_OBJECT:
      if (a->len != b->len) return false;
      for (uint32_t i = 0; i < a->len; i++) {
        const atp_member_t *x = &a->u.members[i], *y = &b->u.members[i];
        if (x->key_len != y->key_len || memcmp(x->key, y->key, x->key_len) != 0)
          return false;
        if (!val_equal(&x->val, &y->val)) return false;
      }
      return true;
  }
  return false;
}

/* Output of a writer, NUL-terminated for comparisons. */
static atp_buf_t out;
static atp_writer_t w;
static void writer(atp_format_t f) {
  atp_buf_reset(&out);
  atp_writer_init(&w, f, &out);
}
static bool out_is(const char *bytes, size_t len) {
  bool ok = !out.failed && out.len == len && memcmp(out.data, bytes, len) == 0;
  if (!ok) {
    fprintf(stderr, "  output (%zu bytes, failed %d): ", out.len, out.failed);
    for (size_t i = 0; i < out.len; i++) {
      unsigned char c = (unsigned char)out.data[i];
      fprintf(stderr, c >= 0x20 && c < 0x7f ? "%c" : "\\x%02x", c);
    }
    fprintf(stderr, "\n");
  }
  return ok;
}
#define OUT_IS(lit) CHECK(out_is(S(lit)))

/* --- negotiation ------------------------------------------------------------ */

static void test_content_type(void) {
  static const struct {
    const char *value;
    atp_format_t format;
  } table[] = {
      {"application/json", ATP_FORMAT_JSON},
      {"Application/JSON; charset=utf-8", ATP_FORMAT_JSON},
      {"  application/json  ;charset=UTF-8", ATP_FORMAT_JSON},
      {"application/msgpack", ATP_FORMAT_MSGPACK},
      {"application/x-msgpack", ATP_FORMAT_MSGPACK},
      {"application/x-ndjson", ATP_FORMAT_NDJSON},
      {"text/csv; header=present", ATP_FORMAT_CSV},
      {"text/plain", ATP_FORMAT_UNKNOWN},
      {"application/jsonx", ATP_FORMAT_UNKNOWN},
      {"application/jso", ATP_FORMAT_UNKNOWN},
      {"", ATP_FORMAT_UNKNOWN},
      {";", ATP_FORMAT_UNKNOWN},
  };
  for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
    atp_format_t got =
        atp_format_from_content_type(table[i].value, strlen(table[i].value));
    if (got != table[i].format)
      fprintf(stderr, "  content type \"%s\"\n", table[i].value);
    CHECK_EQ(got, table[i].format);
  }
  CHECK_EQ(atp_format_from_content_type(NULL, 0), ATP_FORMAT_UNKNOWN);
  CHECK(strcmp(atp_format_content_type(ATP_FORMAT_JSON), "application/json") == 0);
  CHECK(strcmp(atp_format_content_type(ATP_FORMAT_MSGPACK), "application/msgpack") ==
        0);
}

static void test_accept(void) {
  const atp_format_t J = ATP_FORMAT_JSON, M = ATP_FORMAT_MSGPACK, N = ATP_FORMAT_NDJSON;
  static const struct {
    const char *accept; /* NULL: no header */
    atp_format_t request, response;
  } table[] = {
      {NULL, J, J},
      {NULL, M, M},
      {NULL, N, J},
      {NULL, ATP_FORMAT_CSV, J},
      {NULL, ATP_FORMAT_UNKNOWN, J},
      {"", M, M},
      {"*/*", M, M},
      {"*/*", J, J},
      {"application/*", M, M},
      {"application/json", M, J},
      {"application/msgpack", J, M},
      {"application/x-msgpack", J, M},
      {"APPLICATION/MSGPACK", J, M},
      {"text/html, application/msgpack;q=0.9, application/json", J, M},
      {"application/json;q=0.1, application/msgpack", M, J},
      {"application/msgpack; q=0, application/json", M, J},
      {"application/msgpack;q=0.0", M, M}, /* refused, falls back to the request's */
      {"application/msgpack;q=0.5", J, M},
      {"text/html, */*;q=0.8", M, M},
      {"text/plain", J, J},
      {"application/x-ndjson", M, M},
      {" application/json ,application/msgpack", M, J},
  };
  for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
    const char *a = table[i].accept;
    atp_format_t got = atp_format_for_response(a, a ? strlen(a) : 0, table[i].request);
    if (got != table[i].response)
      fprintf(stderr, "  accept row %zu \"%s\"\n", i, a ? a : "(none)");
    CHECK_EQ(got, table[i].response);
  }
}

/* --- JSON parsing ------------------------------------------------------------- */

static void test_json_values(void) {
  atp_val_t *v = parse(
      ATP_FORMAT_JSON,
      S(" {\"sku\":\"A-1\",\"qty\":3,\"neg\":-9223372036854775808,"
        "\"max\":9223372036854775807,\"f\":1.5,\"e\":1e3,\"t\":true,\"n\":null,"
        "\"arr\":[1,[],{}],\"nul\":\"a\\u0000b\",\"u\":\"\\u00e9\xe2\x82\xac\"} \n"));
  REQUIRE(v && v->type == ATP_VAL_OBJECT && v->len == 11);
  CHECK(strcmp(v->u.members[0].key, "sku") == 0); /* input order */
  CHECK(strcmp(v->u.members[10].key, "u") == 0);
  const atp_val_t *x = atp_val_get(v, "sku");
  REQUIRE(x && x->type == ATP_VAL_STR && x->len == 3);
  CHECK(strcmp(x->u.s, "A-1") == 0);
  x = atp_val_get(v, "qty");
  CHECK(x && x->type == ATP_VAL_INT && x->u.i == 3);
  x = atp_val_get(v, "neg");
  CHECK(x && x->type == ATP_VAL_INT && x->u.i == INT64_MIN);
  x = atp_val_get(v, "max");
  CHECK(x && x->type == ATP_VAL_INT && x->u.i == INT64_MAX);
  x = atp_val_get(v, "f");
  CHECK(x && x->type == ATP_VAL_FLOAT && x->u.f == 1.5);
  x = atp_val_get(v, "e");
  CHECK(x && x->type == ATP_VAL_FLOAT && x->u.f == 1000.0);
  x = atp_val_get(v, "t");
  CHECK(x && x->type == ATP_VAL_BOOL && x->u.b);
  x = atp_val_get(v, "n");
  CHECK(x && x->type == ATP_VAL_NULL);
  x = atp_val_get(v, "arr");
  REQUIRE(x && x->type == ATP_VAL_ARRAY && x->len == 3);
  CHECK(x->u.items[1].type == ATP_VAL_ARRAY && x->u.items[1].len == 0);
  CHECK(x->u.items[2].type == ATP_VAL_OBJECT && x->u.items[2].len == 0);
  x = atp_val_get(v, "nul");
  CHECK(x && x->type == ATP_VAL_STR && x->len == 3 && memcmp(x->u.s, "a\0b", 4) == 0);
  x = atp_val_get(v, "u");
  CHECK(x && x->len == 5 && memcmp(x->u.s, "\xc3\xa9\xe2\x82\xac", 5) == 0);
  CHECK(atp_val_get(v, "missing") == NULL);
  CHECK(atp_val_get(x, "sku") == NULL); /* not an object */
  CHECK(atp_val_get(NULL, "sku") == NULL);
  /* Scalars at the top level are values too; routes check the type. */
  v = parse(ATP_FORMAT_JSON, S("42"));
  CHECK(v && v->type == ATP_VAL_INT && v->u.i == 42);
}

static void test_json_errors(void) {
  JSON_FAILS("", 0, "unexpected end of input");
  JSON_FAILS("   ", 3, "unexpected end of input");
  JSON_FAILS("{\"sku\":\"A\",\"qty\":", 17, "unexpected end of input");
  JSON_FAILS("{\"sku\":\"A", SIZE_MAX, "");
  JSON_FAILS("[1,2", 4, "unexpected end of input");
  JSON_FAILS("{\"a\":}", 5, "");
  JSON_FAILS("[1,]", 3, "");
  JSON_FAILS("{} x", 3, "end of file expected");
  JSON_FAILS("{}{}", 2, "end of file expected");
  JSON_FAILS("tru", 0, "invalid token");
  JSON_FAILS("{'a':1}", SIZE_MAX, "");
  JSON_FAILS("{\"qty\":1,\"qty\":2}", 9, "duplicate key \"qty\"");
  JSON_FAILS(
      "{\"lines\":[{\"sku\":\"A\",\"qty\":1},{\"qty\":1,\"sku\":\"B\",\"qty\":2}]}", 49,
      "duplicate key \"qty\"");
  JSON_FAILS("{\"a\":{\"b\":{\"c\":1,\"c\":1}}}", 17, "duplicate key \"c\"");
  JSON_FAILS("9223372036854775808", 0, "int64");
  JSON_FAILS("{\"qty\":-9223372036854775809}", 7, "int64");
  JSON_FAILS("[1e999]", 1, "overflow");
  JSON_FAILS("\"\xff\"", 1, "");                  /* invalid UTF-8 */
  JSON_FAILS("\"\xc0\xaf\"", SIZE_MAX, "");       /* overlong */
  JSON_FAILS("\"\xed\xa0\x80\"", SIZE_MAX, "");   /* encoded surrogate */
  JSON_FAILS("\"\\ud800\"", SIZE_MAX, "Unicode"); /* lone surrogate escape */
  JSON_FAILS("\"a\x01\"", SIZE_MAX, "control character");
  JSON_FAILS("\"a\0b\"", SIZE_MAX, "");             /* raw NUL byte */
  JSON_FAILS("{\"a\\u0000b\":1}", SIZE_MAX, "NUL"); /* NUL in a key */
  JSON_FAILS("\"\\x\"", SIZE_MAX, "");
}

static void test_json_depth(void) {
  char body[300];
  /* ATP_CODEC_DEPTH_MAX nested arrays parse; one more is refused at the
   * bracket that goes too deep. */
  for (int depth = ATP_CODEC_DEPTH_MAX; depth <= ATP_CODEC_DEPTH_MAX + 1; depth++) {
    size_t n = 0;
    for (int i = 0; i < depth; i++) { /* {"k":[{"k":[ ... */
      if (i % 2) {
        body[n++] = '[';
      } else {
        memcpy(body + n, "{\"k\":", 5);
        n += 5;
      }
    }
    if (depth % 2) body[n++] = '0'; /* the innermost "k" needs a value */
    for (int i = depth - 1; i >= 0; i--) body[n++] = i % 2 ? ']' : '}';
    atp_arena_reset(&arena);
    atp_val_t *v = NULL;
    int rc = atp_codec_parse(ATP_FORMAT_JSON, body, n, &arena, &v, &perr);
    if (depth == ATP_CODEC_DEPTH_MAX) {
      CHECK_EQ(rc, 0);
    } else {
      CHECK_EQ(rc, ATP_EBADREQ);
      CHECK(strstr(perr.message, "nesting deeper than 32") != NULL);
      /* {"k":[{"k":[ ... : the 33rd opener is at 32 openers * 2.5 bytes */
      CHECK_EQ(perr.offset, 16 * 5 + 16 * 1);
    }
  }
  /* Far deeper than the limit: refused at the 33rd bracket, no crash. */
  static char deep[100000];
  memset(deep, '[', sizeof deep);
  CHECK(parse_fails(ATP_FORMAT_JSON, deep, sizeof deep, ATP_EBADREQ, SIZE_MAX,
                    "nesting"));
}

/* An object of n members "k0".."k<n-1>" (in a scrambled order) and, when dup
 * is given, one more member with that key at the end; *dup_at is where that
 * key's quote is. */
static size_t big_object(char *body, size_t cap, int n, const char *dup,
                         size_t *dup_at) {
  size_t len = 0;
  body[len++] = '{';
  for (int i = 0; i < n; i++)
    len += (size_t)snprintf(body + len, cap - len, "%s\"k%d\":%d", i ? "," : "",
                            (i * 7919) % n, i);
  if (dup) {
    body[len++] = ',';
    *dup_at = len;
    len += (size_t)snprintf(body + len, cap - len, "\"%s\":true", dup);
  }
  body[len++] = '}';
  return len;
}

static void test_json_duplicates(void) {
  JSON_FAILS("{\"a\":1,\"b\":2,\"a\":3}", 13, "duplicate key \"a\"");
  JSON_FAILS("{\"\":1,\"\":2}", 6, "duplicate key \"\"");
  /* The same key spelt with and without escapes; the offset is the quote. */
  JSON_FAILS("{\"a\":1,\"\\u0061\":2}", 7, "duplicate key \"a\"");
  JSON_FAILS("{\"k\\\"q\":1,\"k\\\"q\":2}", 10, "duplicate key");
  /* Prefixes and equal lengths are different keys. */
  atp_val_t *v =
      parse(ATP_FORMAT_JSON, S("{\"a\":1,\"ab\":2,\"ba\":3,\"b\":4,\"A\":5}"));
  CHECK(v && v->len == 5);
  /* Objects in different places may share keys. */
  v = parse(ATP_FORMAT_JSON, S("{\"a\":{\"a\":1},\"b\":[{\"a\":1},{\"a\":2}]}"));
  CHECK(v && v->len == 2);
  /* Around the switch from the pairwise scan (16 members) to the hash set. */
  static char body[400000];
  for (int n = 15; n <= 18; n++) {
    size_t at = 0, len = big_object(body, sizeof body, n, NULL, &at);
    v = parse(ATP_FORMAT_JSON, body, len);
    CHECK(v && v->type == ATP_VAL_OBJECT && v->len == (uint32_t)n);
    len = big_object(body, sizeof body, n, "k0", &at);
    CHECK(parse_fails(ATP_FORMAT_JSON, body, len, ATP_EBADREQ, at,
                      "duplicate key \"k0\""));
    len = big_object(body, sizeof body, n, "k", &at); /* no twin */
    v = parse(ATP_FORMAT_JSON, body, len);
    CHECK(v && v->len == (uint32_t)n + 1);
  }
  /* 20000 members: distinct keys parse, in input order; the same with a
   * repeated key at the end (and one spelt with an escape) is refused there. */
  size_t at = 0, len = big_object(body, sizeof body, 20000, NULL, &at);
  v = parse(ATP_FORMAT_JSON, body, len);
  REQUIRE(v && v->len == 20000);
  CHECK(strcmp(v->u.members[0].key, "k0") == 0 &&
        strcmp(v->u.members[1].key, "k7919") == 0);
  CHECK(v->u.members[19999].val.type == ATP_VAL_INT &&
        v->u.members[19999].val.u.i == 19999);
  len = big_object(body, sizeof body, 20000, "k5", &at);
  CHECK(
      parse_fails(ATP_FORMAT_JSON, body, len, ATP_EBADREQ, at, "duplicate key \"k5\""));
  len = big_object(body, sizeof body, 20000, "\\u006b19999", &at);
  CHECK(parse_fails(ATP_FORMAT_JSON, body, len, ATP_EBADREQ, at,
                    "duplicate key \"k19999\""));
  /* Big objects nested in big objects and side by side: each its own set. */
  len = 0;
  body[len++] = '[';
  for (int o = 0; o < 3; o++) {
    size_t inner_at;
    if (o) body[len++] = ',';
    len += big_object(body + len, sizeof body - len, 100, NULL, &inner_at);
  }
  body[len++] = ']';
  v = parse(ATP_FORMAT_JSON, body, len);
  CHECK(v && v->len == 3 && v->u.items[2].len == 100);
}

static void test_json_numbers(void) {
  atp_val_t *v =
      parse(ATP_FORMAT_JSON,
            S("[9223372036854775807,-9223372036854775808,9007199254740993,"
              "-0,0,10,1.0,1e3,1E3,-0.0,1.5e-3,1e-400,2.5E+2,12345678901234567]"));
  REQUIRE(v && v->type == ATP_VAL_ARRAY && v->len == 14);
  const atp_val_t *x = v->u.items;
  CHECK(x[0].type == ATP_VAL_INT && x[0].u.i == INT64_MAX);
  CHECK(x[1].type == ATP_VAL_INT && x[1].u.i == INT64_MIN);
  CHECK(x[2].type == ATP_VAL_INT && x[2].u.i == 9007199254740993LL); /* exact */
  CHECK(x[3].type == ATP_VAL_INT && x[3].u.i == 0);
  CHECK(x[4].type == ATP_VAL_INT && x[4].u.i == 0);
  CHECK(x[5].type == ATP_VAL_INT && x[5].u.i == 10);
  CHECK(x[6].type == ATP_VAL_FLOAT && x[6].u.f == 1.0); /* 1.0 is not 1 */
  CHECK(x[7].type == ATP_VAL_FLOAT && x[7].u.f == 1000.0);
  CHECK(x[8].type == ATP_VAL_FLOAT && x[8].u.f == 1000.0);
  CHECK(x[9].type == ATP_VAL_FLOAT && x[9].u.f == 0.0 && signbit(x[9].u.f));
  CHECK(x[10].type == ATP_VAL_FLOAT && x[10].u.f == 0.0015);
  CHECK(x[11].type == ATP_VAL_FLOAT && x[11].u.f == 0.0); /* underflow is 0 */
  CHECK(x[12].type == ATP_VAL_FLOAT && x[12].u.f == 250.0);
  CHECK(x[13].type == ATP_VAL_INT && x[13].u.i == 12345678901234567LL);
  /* Out of int64 by one, far out, both signs; the offset is the number's. */
  JSON_FAILS("[9223372036854775808]", 1, "integer out of int64 range");
  JSON_FAILS("[-9223372036854775809]", 1, "integer out of int64 range");
  JSON_FAILS("{\"qty\":100000000000000000000000000000}", 7,
             "integer out of int64 range");
  JSON_FAILS("{\"qty\":-100000000000000000000000000000}", 7,
             "integer out of int64 range");
  JSON_FAILS("18446744073709551616", 0, "integer out of int64 range");
  /* A number cut by the end of the body is complete there. */
  v = parse(ATP_FORMAT_JSON, S("-9223372036854775808"));
  CHECK(v && v->type == ATP_VAL_INT && v->u.i == INT64_MIN);
  v = parse(ATP_FORMAT_JSON, S("2.5"));
  CHECK(v && v->type == ATP_VAL_FLOAT && v->u.f == 2.5);
  /* Floats beyond double, and a float text longer than any stack copy. */
  JSON_FAILS("[1e999]", 1, "real number overflow");
  JSON_FAILS("[0, -1.5e999]", 4, "real number overflow");
  char text[200] = "0.";
  memset(text + 2, '0', 150);
  strcpy(text + 152, "125e3");
  v = parse(ATP_FORMAT_JSON, text, strlen(text));
  CHECK(v && v->type == ATP_VAL_FLOAT && v->u.f > 1.2e-148 && v->u.f < 1.3e-148);
  /* The grammar is yajl's: no leading zeros, '+', bare '.', hex, NaN. */
  JSON_FAILS("[01]", 2, "',' or ']' expected");
  JSON_FAILS("[+1]", 1, "invalid token");
  JSON_FAILS("[.5]", 1, "invalid token");
  JSON_FAILS("[1.]", 1, "invalid number");
  JSON_FAILS("[1e]", 1, "invalid number");
  JSON_FAILS("[-]", 1, "invalid number");
  JSON_FAILS("[0x10]", 2, "");
  JSON_FAILS("[NaN]", 1, "invalid token");
  JSON_FAILS("1.", 0, "invalid number");
}

static void test_json_strings(void) {
  /* \u0000 stays inside strings, raw or decoded; keys refuse it. */
  atp_val_t *v =
      parse(ATP_FORMAT_JSON, S("[\"a\\u0000b\",\"\\u0000\",\"x\\n\\u0000\"]"));
  REQUIRE(v && v->len == 3);
  CHECK(v->u.items[0].len == 3 && memcmp(v->u.items[0].u.s, "a\0b", 4) == 0);
  CHECK(v->u.items[1].len == 1 && v->u.items[1].u.s[0] == 0);
  CHECK(v->u.items[2].len == 3 && memcmp(v->u.items[2].u.s, "x\n\0", 4) == 0);
  JSON_FAILS("{\"ok\":1,\"a\\u0000\":1}", 10, "NUL byte in object key");
  JSON_FAILS("[\"a\0b\"]", 3, "control character 0x00");
  JSON_FAILS("[\"a\tb\"]", 3, "control character 0x09");
  /* Escapes decode; a valid surrogate pair is one 4-byte character. */
  v = parse(ATP_FORMAT_JSON,
            S("[\"\\\"\\\\\\/\\b\\f\\n\\r\\t\",\"\\ud83d\\ude00\",\"\\uD83D\\uDE00?\","
              "\"?\",\"\xf0\x9f\x98\x80\\n\",\"\\u00e9\\u20ac\"]"));
  REQUIRE(v && v->len == 6);
  CHECK(v->u.items[0].len == 8 && memcmp(v->u.items[0].u.s, "\"\\/\b\f\n\r\t", 8) == 0);
  CHECK(v->u.items[1].len == 4 &&
        memcmp(v->u.items[1].u.s, "\xf0\x9f\x98\x80", 4) == 0);
  CHECK(v->u.items[2].len == 5 &&
        memcmp(v->u.items[2].u.s, "\xf0\x9f\x98\x80?", 5) == 0);
  CHECK(v->u.items[3].len == 1 && v->u.items[3].u.s[0] == '?');
  CHECK(v->u.items[4].len == 5);
  CHECK(v->u.items[5].len == 5 &&
        memcmp(v->u.items[5].u.s, "\xc3\xa9\xe2\x82\xac", 5) == 0);
  /* Surrogates that are not a high one then a low one: refused at the escape
   * (yajl alone would give '?' or another character). */
  JSON_FAILS("[\"\\ud800\"]", 2, "lone surrogate \\ud800");
  JSON_FAILS("[\"ab\\ud800\"]", 4, "Unicode");
  JSON_FAILS("[\"\\ud800x\"]", 2, "lone surrogate");
  JSON_FAILS("[\"\\udc00\"]", 2, "lone surrogate \\udc00");
  JSON_FAILS("[\"\\ud800\\u0041\"]", 2, "lone surrogate \\ud800");
  JSON_FAILS("[\"\\ud800\\ud800\"]", 2, "lone surrogate");
  JSON_FAILS("[\"\\ude00\\ud83d\"]", 2, "lone surrogate \\ude00");
  JSON_FAILS("[\"\\ud83d\\ude00\\udbff\"]", 14, "lone surrogate \\udbff");
  JSON_FAILS("{\"\\ud800\":1}", 2, "lone surrogate");
  JSON_FAILS("[\"\\\\ud800\\ud800\"]", 9, "lone surrogate"); /* first is "\\" + text */
  /* Invalid UTF-8, at the offending byte, in place or next to escapes. */
  JSON_FAILS("[\"ab\xff\"]", 4, "invalid UTF-8");
  JSON_FAILS("[\"\xc0\xaf\"]", 2, "invalid UTF-8");          /* overlong */
  JSON_FAILS("[\"\xe0\x80\xaf\"]", 2, "invalid UTF-8");      /* overlong, 3 bytes */
  JSON_FAILS("[\"\xed\xa0\x80\"]", 2, "invalid UTF-8");      /* encoded surrogate */
  JSON_FAILS("[\"\xf4\x90\x80\x80\"]", 2, "invalid UTF-8");  /* above U+10FFFF */
  JSON_FAILS("[\"\xe2\x82\"]", 2, "invalid UTF-8");          /* cut sequence */
  JSON_FAILS("[\"\xc3\xa9\xe2\x82x\"]", 4, "invalid UTF-8"); /* after a valid one */
  JSON_FAILS("[\"\xe2", 2, "invalid UTF-8");                 /* cut by the end */
  JSON_FAILS("[\"a\\n\xc0\xaf\"]", 5, "invalid UTF-8");
  JSON_FAILS("[\"\\u00e9\xed\xa0\x80\"]", 8, "invalid UTF-8");
  JSON_FAILS("{\"k\xc0\xaf\":1}", 3, "invalid UTF-8");
  /* Bad escapes. */
  JSON_FAILS("[\"\\x\"]", 3, "invalid escape");
  JSON_FAILS("[\"\\u12g4\"]", 6, "\\u escape");
  JSON_FAILS("[\"ab\\", 5, "");
}

static void test_json_structure(void) {
  /* Trailing bytes after the value. */
  JSON_FAILS("{} x", 3, "end of file expected");
  JSON_FAILS("{}{}", 2, "end of file expected");
  JSON_FAILS("1 2", 2, "end of file expected");
  JSON_FAILS("\"a\" \"b\"", 4, "end of file expected");
  JSON_FAILS("[] ]", 3, "end of file expected");
  JSON_FAILS("{\"a\":1}}", 7, "end of file expected");
  atp_val_t *v = parse(ATP_FORMAT_JSON, S("\r\n\t {} \r\n\t "));
  CHECK(v && v->type == ATP_VAL_OBJECT && v->len == 0 && v->u.members == NULL);
  /* Commas, colons, keys. */
  JSON_FAILS("{\"a\":1,}", 7, "string expected as object key");
  JSON_FAILS("[1,]", 3, "unexpected token");
  JSON_FAILS("[,1]", 1, "unexpected token");
  JSON_FAILS("{,}", 1, "string expected as object key");
  JSON_FAILS("{\"a\" 1}", 5, "':' expected");
  JSON_FAILS("{\"a\":1 \"b\":2}", 7, "',' or '}' expected");
  JSON_FAILS("{\"a\":1 \"bcd\":2}", 7, "',' or '}' expected");
  JSON_FAILS("{\"a\":true false}", 10, "',' or '}' expected");
  JSON_FAILS("[1 2]", 3, "',' or ']' expected");
  JSON_FAILS("[\"a\" {}]", 5, "',' or ']' expected");
  JSON_FAILS("{1:2}", 1, "string expected as object key");
  JSON_FAILS("[1,2x]", 4, "invalid token");
  JSON_FAILS("[truex]", 5, "invalid token"); /* just past "true" */
  JSON_FAILS("/* no */ {}", 0, "invalid token");
  JSON_FAILS("\xef\xbb\xbf{}", 0, "invalid token"); /* no byte order mark */
  /* Truncated bodies: every proper prefix of a valid body is refused, at or
   * before its end, and those cut between tokens at the end exactly. */
  static const char body[] =
      "{\"id\":\"r-1\",\"lines\":[{\"sku\":\"A\\u00e9\",\"qty\":12,\"f\":1.5,"
      "\"t\":true,\"n\":null}],\"ttl_ms\":900000}";
  CHECK(parse(ATP_FORMAT_JSON, body, sizeof body - 1) != NULL);
  for (size_t n = 0; n < sizeof body - 1; n++) {
    atp_arena_reset(&arena);
    atp_val_t *got = NULL;
    int rc = atp_codec_parse(ATP_FORMAT_JSON, body, n, &arena, &got, &perr);
    if (rc != ATP_EBADREQ || perr.offset > n)
      fprintf(stderr, "  prefix %zu: rc %d at %zu: %s\n", n, rc, perr.offset,
              perr.message);
    CHECK(rc == ATP_EBADREQ && got == NULL && perr.offset <= n);
    char last = n ? body[n - 1] : ',';
    if (strchr(",:[{", last)) {
      CHECK_EQ(perr.offset, n);
      CHECK(strstr(perr.message, "unexpected end of input") != NULL);
    }
  }
  JSON_FAILS("{\"qty\":12", 9, "unexpected end of input");
  JSON_FAILS("{\"qty\":tru", 7, "invalid token");
  JSON_FAILS("[\"abc", 5, "unexpected end of input");
}

static void test_json_depth_memory(void) {
  /* 1 MiB of '[' (a body at the size limit) stops at the 33rd bracket, so
   * neither our frames nor yajl's stack grow with the body. */
  size_t len = ATP_HTTP_BODY_BYTES_MAX;
  char *deep = malloc(len);
  REQUIRE(deep);
  memset(deep, '[', len);
  CHECK(parse_fails(ATP_FORMAT_JSON, deep, len, ATP_EBADREQ, ATP_CODEC_DEPTH_MAX,
                    "nesting deeper than 32"));
  memset(deep, '{', len);
  CHECK(parse_fails(ATP_FORMAT_JSON, deep, len, ATP_EBADREQ, 1,
                    "string expected as object key"));
  /* {"a":{"a": ... : objects count as arrays do. */
  size_t n = 0;
  for (int i = 0; i < 40; i++) n += (size_t)snprintf(deep + n, len - n, "{\"a\":");
  CHECK(parse_fails(ATP_FORMAT_JSON, deep, n, ATP_EBADREQ, 32 * 5,
                    "nesting deeper than 32"));
  free(deep);
}

/* --- msgpack parsing ------------------------------------------------------------ */

static void test_msgpack_values(void) {
  /* {"sku":"A","qty":3,"big":uint32 4e9,"neg":int8 -100,"i64":int64 min,
   *  "f32":1.5f,"f64":0.25,"b":false,"n":nil,"a":[],"s8":str8 "xy"} */
  atp_val_t *v = parse(ATP_FORMAT_MSGPACK,
                       S("\x8b\xa3sku\xa1"
                         "A\xa3qty\x03\xa3"
                         "big\xce\xee\x6b\x28\x00"
                         "\xa3neg\xd0\x9c\xa3i64\xd3\x80\x00\x00\x00\x00\x00\x00\x00"
                         "\xa3"
                         "f32\xca\x3f\xc0\x00\x00\xa3"
                         "f64\xcb\x3f\xd0\x00\x00\x00\x00\x00\x00"
                         "\xa1"
                         "b\xc2\xa1n\xc0\xa1"
                         "a\x90\xa2s8\xd9\x02xy"));
  REQUIRE(v && v->type == ATP_VAL_OBJECT && v->len == 11);
  const atp_val_t *x = atp_val_get(v, "sku");
  CHECK(x && x->type == ATP_VAL_STR && x->len == 1 && x->u.s[0] == 'A' &&
        x->u.s[1] == 0);
  x = atp_val_get(v, "qty");
  CHECK(x && x->type == ATP_VAL_INT && x->u.i == 3);
  x = atp_val_get(v, "big");
  CHECK(x && x->type == ATP_VAL_INT && x->u.i == 4000000000LL);
  x = atp_val_get(v, "neg");
  CHECK(x && x->type == ATP_VAL_INT && x->u.i == -100);
  x = atp_val_get(v, "i64");
  CHECK(x && x->type == ATP_VAL_INT && x->u.i == INT64_MIN);
  x = atp_val_get(v, "f32");
  CHECK(x && x->type == ATP_VAL_FLOAT && x->u.f == 1.5);
  x = atp_val_get(v, "f64");
  CHECK(x && x->type == ATP_VAL_FLOAT && x->u.f == 0.25);
  x = atp_val_get(v, "b");
  CHECK(x && x->type == ATP_VAL_BOOL && !x->u.b);
  x = atp_val_get(v, "n");
  CHECK(x && x->type == ATP_VAL_NULL);
  x = atp_val_get(v, "a");
  CHECK(x && x->type == ATP_VAL_ARRAY && x->len == 0);
  x = atp_val_get(v, "s8");
  CHECK(x && x->type == ATP_VAL_STR && x->len == 2 && strcmp(x->u.s, "xy") == 0);
  /* uint64 exactly INT64_MAX is fine. */
  v = parse(ATP_FORMAT_MSGPACK, S("\xcf\x7f\xff\xff\xff\xff\xff\xff\xff"));
  CHECK(v && v->type == ATP_VAL_INT && v->u.i == INT64_MAX);
  /* A string with a NUL inside. */
  v = parse(ATP_FORMAT_MSGPACK, S("\xa3"
                                  "a\0b"));
  CHECK(v && v->type == ATP_VAL_STR && v->len == 3 && memcmp(v->u.s, "a\0b", 4) == 0);
}

static void test_msgpack_errors(void) {
  MP_FAILS("", 0, "unexpected end of input");
  MP_FAILS(
      "\x82\xa1"
      "a\x01",
      4, "unexpected end of input"); /* second pair missing */
  MP_FAILS(
      "\xa5"
      "abc",
      4, "unexpected end of input");                  /* short string */
  MP_FAILS("\xcd\x01", 2, "unexpected end of input"); /* short uint16 */
  MP_FAILS("\xdd\xff\xff\xff\xff", 5,
           "unexpected end of input"); /* 2^32 items announced */
  MP_FAILS("\xdf\x7f\xff\xff\xff\x01", 6, "unexpected end of input");
  MP_FAILS("\x01\x02", 1, "unexpected data after the value");
  MP_FAILS("\x80\xc0", 1, "unexpected data after the value");
  MP_FAILS("\x82\xa3qty\x01\xa3qty\x02", 6, "duplicate key \"qty\"");
  MP_FAILS(
      "\x81\xa1"
      "a\x91\x82\xa1x\x01\xa1x\x02",
      8, "duplicate key \"x\"");
  MP_FAILS("\x82\xa0\x01\xa0\x02", 0,
           "duplicate key \"\""); /* empty: the value's start */
  MP_FAILS("\xcf\x80\x00\x00\x00\x00\x00\x00\x00", 0, "int64");
  MP_FAILS("\x91\xcf\xff\xff\xff\xff\xff\xff\xff\xff", 1, "int64");
  MP_FAILS("\x81\x01\x02", 1, "map key is not a string");
  MP_FAILS(
      "\x81\xa1"
      "a\x81\xc0\x01",
      4, "map key is not a string");
  /* bin is a string when its bytes are UTF-8 (keys too), else refused. */
  atp_val_t *bv = parse(ATP_FORMAT_MSGPACK, S("\x81\xc4\x01"
                                              "a\xc5\x00\x03h\xc3\xa9"));
  CHECK(bv && bv->type == ATP_VAL_OBJECT && bv->len == 1);
  CHECK(bv && !strcmp(bv->u.members[0].key, "a") &&
        bv->u.members[0].val.type == ATP_VAL_STR && bv->u.members[0].val.len == 3 &&
        !memcmp(bv->u.members[0].val.u.s, "h\xc3\xa9", 3));
  bv = parse(ATP_FORMAT_MSGPACK, S("\x91\xc6\x00\x00\x00\x01x"));
  CHECK(bv && bv->type == ATP_VAL_ARRAY && bv->u.items[0].type == ATP_VAL_STR);
  MP_FAILS("\xc4\x01\xff", 2, "invalid UTF-8 in bin");
  MP_FAILS(
      "\x82\xc4\x01"
      "a\x01\xc4\x01"
      "a\x02",
      5, "duplicate key \"a\"");
  /* Refusals inside objects name the field. */
  CHECK(parse_fails(
      ATP_FORMAT_MSGPACK,
      S("\x82\xa2id\x01\xa5lines\x92\x81\xa3sku\xa1x\x81\xa3sku\xc4\x01\xff"),
      ATP_EBADREQ, SIZE_MAX, "invalid UTF-8"));
  CHECK(!strcmp(perr.field, "lines[1].sku"));
  CHECK(parse_fails(ATP_FORMAT_MSGPACK, S("\x81\xa3ref\xd4\x01\x02"), ATP_EBADREQ, 5,
                    "unsupported msgpack type"));
  CHECK(!strcmp(perr.field, "ref"));
  CHECK(
      parse_fails(ATP_FORMAT_MSGPACK, S("\xa1\xff"), ATP_EBADREQ, 1, "invalid UTF-8"));
  CHECK(!strcmp(perr.field, ""));
  MP_FAILS("\xd4\x01\x02", 0, "unsupported msgpack type");  /* fixext1 */
  MP_FAILS("\xc7\x01\x05x", 0, "unsupported msgpack type"); /* ext8 */
  MP_FAILS("\xc1", 0, "invalid msgpack byte");
  MP_FAILS("\xa2\xc3\x28", 1, "invalid UTF-8");
  MP_FAILS(
      "\x81\xa2"
      "a\xff\x01",
      3, "invalid UTF-8");
  /* Every proper prefix of a valid body is refused as truncated. */
  static const char body[] =
      "\x83\xa3sku\xa1"
      "A\xa5lines\x91\x82\xa3qty\xcd\x01\x00\xa1x\xcb"
      "\x3f\xd0\x00\x00\x00\x00\x00\x00\xa1t\xc3";
  CHECK(parse(ATP_FORMAT_MSGPACK, body, sizeof body - 1) != NULL);
  for (size_t n = 0; n < sizeof body - 1; n++) {
    CHECK(parse_fails(ATP_FORMAT_MSGPACK, body, n, ATP_EBADREQ, n,
                      "unexpected end of input"));
  }
}

static void test_msgpack_depth_and_big_maps(void) {
  char body[64];
  memset(body, '\x91', sizeof body);
  body[ATP_CODEC_DEPTH_MAX] = '\xc0';
  CHECK(parse(ATP_FORMAT_MSGPACK, body, ATP_CODEC_DEPTH_MAX + 1) != NULL);
  memset(body, '\x91', sizeof body);
  body[ATP_CODEC_DEPTH_MAX + 1] = '\xc0';
  CHECK(parse_fails(ATP_FORMAT_MSGPACK, body, ATP_CODEC_DEPTH_MAX + 2, ATP_EBADREQ,
                    ATP_CODEC_DEPTH_MAX, "nesting deeper than 32"));
  /* A map of 20000 distinct keys parses (sorted duplicate check), and the
   * same with one key repeated at the end is refused at that key. */
  atp_buf_t b;
  atp_buf_init(&b, 0);
  atp_writer_t mw;
  atp_writer_init(&mw, ATP_FORMAT_MSGPACK, &b);
  atp_w_object_begin(&mw);
  for (int i = 0; i < 20000; i++) {
    char key[16];
    snprintf(key, sizeof key, "k%d", (i * 7919) % 20000);
    atp_w_key(&mw, key);
    atp_w_int(&mw, i);
  }
  atp_w_object_end(&mw);
  REQUIRE(!b.failed);
  atp_val_t *v = parse(ATP_FORMAT_MSGPACK, b.data, b.len);
  CHECK(v && v->type == ATP_VAL_OBJECT && v->len == 20000);
  size_t at = b.len;
  atp_writer_init(&mw, ATP_FORMAT_MSGPACK, &b);
  mw.depth = 1, mw.is_object[0] = true, mw.count[0] = 20000, mw.header_at[0] = 0;
  atp_w_key(&mw, "k5");
  atp_w_int(&mw, 1);
  atp_w_object_end(&mw);
  CHECK(parse_fails(ATP_FORMAT_MSGPACK, b.data, b.len, ATP_EBADREQ, at,
                    "duplicate key \"k5\""));
  atp_buf_free(&b);
}

static void test_arena_exhausted(void) {
  atp_arena_t small;
  atp_arena_init(&small, 256, 1024);
  atp_val_t *v;
  char body[4096];
  size_t n = 0;
  body[n++] = '[';
  for (int i = 0; i < 500; i++)
    n += (size_t)snprintf(body + n, sizeof body - n, "%s%d", i ? "," : "", i);
  body[n++] = ']';
  CHECK_EQ(atp_codec_parse(ATP_FORMAT_JSON, body, n, &small, &v, &perr), ATP_ENOMEM);
  CHECK_EQ(atp_codec_parse(ATP_FORMAT_MSGPACK,
                           S("\xdc\x01\xf4"
                             "0123456789"),
                           &small, &v, &perr),
           ATP_EBADREQ); /* truncated: refused before any allocation */
  atp_arena_destroy(&small);
  CHECK_EQ(atp_codec_parse(ATP_FORMAT_CSV, S("a,b"), &arena, &v, &perr), ATP_EBADREQ);
}

/* The byte buffer under the writer: the inline reserve and its slow path agree
 * on growth, the length limit and the sticky failure. */
static void test_buf_limits(void) {
  atp_buf_t b;
  atp_buf_init(&b, 10);
  CHECK_EQ(atp_buf_append(&b, "12345678", 8), 0);
  CHECK_EQ(b.len, 8);
  CHECK_EQ(atp_buf_append(&b, "90", 2), 0); /* exactly at the limit */
  CHECK_EQ(b.len, 10);
  CHECK_EQ(atp_buf_append(&b, "x", 1), ATP_ETOOLARGE);
  CHECK(atp_buf_reserve(&b, 0) == NULL); /* failure is sticky */
  CHECK_EQ(b.len, 10);
  CHECK(memcmp(b.data, "1234567890", 10) == 0);
  atp_buf_reset(&b);
  CHECK_EQ(b.failed, 0);
  CHECK_EQ(atp_buf_append(&b, "ab", 2), 0);
  atp_buf_free(&b);
  /* No limit: growth across many small appends keeps every byte. */
  atp_buf_init(&b, 0);
  for (int i = 0; i < 5000; i++) CHECK_EQ(atp_buf_append(&b, "abc", 3), 0);
  CHECK_EQ(b.len, 15000);
  CHECK(b.data[14999] == 'c' && b.data[3000] == 'a');
  atp_buf_free(&b);
}

/* Engine tables: zeroed, writable to the end, and (outside the sanitizer
 * builds, which take them from the heap) aligned for huge pages. */
static void test_table_alloc(void) {
  for (int huge = 0; huge < 2; huge++) {
    size_t count = 3 * 1000 * 1000 + 7;
    uint32_t *t = atp_table_alloc(count, sizeof *t, huge);
    REQUIRE(t != NULL);
#if !defined(__SANITIZE_ADDRESS__)
    CHECK(((uintptr_t)t & ((2u << 20) - 1)) == 0);
#endif
    CHECK(t[0] == 0 && t[count / 2] == 0 && t[count - 1] == 0);
    t[0] = 1, t[count - 1] = 2;
    CHECK(t[0] == 1 && t[count - 1] == 2);
    atp_table_free(t, count, sizeof *t);
  }
}

/* --- writer -------------------------------------------------------------------- */

static void test_writer_json(void) {
  writer(ATP_FORMAT_JSON);
  atp_w_object_begin(&w);
  atp_w_key(&w, "s");
  atp_w_str(&w, S("q\"b\\s/\n\r\t\b\f\x01\x1f\x7f\xc3\xa9\xf0\x9f\x98\x80"));
  atp_w_key(&w, "bad");
  atp_w_str(&w, S("a\xff"
                  "b\xe2\x82"));
  atp_w_key(&w, "n");
  atp_w_array_begin(&w);
  atp_w_int(&w, 0);
  atp_w_int(&w, -1);
  atp_w_int(&w, INT64_MIN);
  atp_w_int(&w, INT64_MAX);
  atp_w_uint(&w, UINT64_MAX);
  atp_w_int(&w, 1234567890);
  atp_w_float(&w, 1.5);
  atp_w_float(&w, 3.0);
  atp_w_float(&w, 0.1);
  atp_w_float(&w, NAN);
  atp_w_bool(&w, true);
  atp_w_bool(&w, false);
  atp_w_null(&w);
  atp_w_array_end(&w);
  atp_w_key(&w, "e");
  atp_w_object_begin(&w);
  atp_w_object_end(&w);
  atp_w_keyn(&w, S("k\0"));
  atp_w_cstr(&w, "");
  atp_w_object_end(&w);
  OUT_IS(
      "{\"s\":\"q\\\"b\\\\s/"
      "\\n\\r\\t\\b\\f\\u0001\\u001f\x7f\xc3\xa9\xf0\x9f\x98\x80\","
      "\"bad\":\"a\\ufffdb\\ufffd\\ufffd\","
      "\"n\":[0,-1,-9223372036854775808,9223372036854775807,18446744073709551615,"
      "1234567890,"
      "1.5,3.0,0.1,null,true,false,null],\"e\":{},\"k\\u0000\":\"\"}");
  /* Every control character is escaped; the output parses back. */
  char all[32];
  for (int i = 0; i < 32; i++) all[i] = (char)i;
  writer(ATP_FORMAT_JSON);
  atp_w_str(&w, all, sizeof all);
  atp_val_t *v = parse(ATP_FORMAT_JSON, out.data, out.len);
  CHECK(v && v->type == ATP_VAL_STR && v->len == 32 && memcmp(v->u.s, all, 32) == 0);
  /* A long string crosses the writer's 4 KiB slices intact. */
  static char long_str[10000];
  for (size_t i = 0; i < sizeof long_str; i++)
    long_str[i] = i % 3 == 0 ? '"' : (i % 3 == 1 ? '\xc3' : '\xa9');
  writer(ATP_FORMAT_JSON);
  atp_w_str(&w, long_str, sizeof long_str - 1); /* ends after a full \xc3\xa9 pair */
  v = parse(ATP_FORMAT_JSON, out.data, out.len);
  CHECK(v && v->len == sizeof long_str - 1 && memcmp(v->u.s, long_str, v->len) == 0);
}

static void test_writer_msgpack(void) {
  writer(ATP_FORMAT_MSGPACK);
  atp_w_array_begin(&w);
  atp_w_int(&w, 0);
  atp_w_int(&w, 127);
  atp_w_int(&w, 128);
  atp_w_int(&w, 256);
  atp_w_int(&w, 65536);
  atp_w_int(&w, 4294967296LL);
  atp_w_int(&w, -1);
  atp_w_int(&w, -32);
  atp_w_int(&w, -33);
  atp_w_int(&w, -129);
  atp_w_int(&w, -32769);
  atp_w_int(&w, -2147483649LL);
  atp_w_uint(&w, UINT64_MAX);
  atp_w_bool(&w, true);
  atp_w_null(&w);
  atp_w_float(&w, 1.0);
  atp_w_array_end(&w);
  OUT_IS(
      "\xdd\x00\x00\x00\x10\x00\x7f\xcc\x80\xcd\x01\x00\xce\x00\x01\x00\x00"
      "\xcf\x00\x00\x00\x01\x00\x00\x00\x00\xff\xe0\xd0\xdf\xd1\xff\x7f\xd2\xff\xff\x7f"
      "\xff"
      "\xd3\xff\xff\xff\xff\x7f\xff\xff\xff\xcf\xff\xff\xff\xff\xff\xff\xff\xff\xc3\xc0"
      "\xcb\x3f\xf0\x00\x00\x00\x00\x00\x00");
  /* Strings: fixstr, str8, str16, str32 boundaries. */
  static char s[70000];
  memset(s, 'x', sizeof s);
  static const struct {
    size_t len;
    size_t header;
    unsigned char first;
  } sizes[] = {{0, 1, 0xa0},   {31, 1, 0xbf},    {32, 2, 0xd9},   {255, 2, 0xd9},
               {256, 3, 0xda}, {65535, 3, 0xda}, {65536, 5, 0xdb}};
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    writer(ATP_FORMAT_MSGPACK);
    atp_w_str(&w, s, sizes[i].len);
    CHECK_EQ(out.len, sizes[i].len + sizes[i].header);
    CHECK_EQ((unsigned char)out.data[0], sizes[i].first);
    atp_val_t *v = parse(ATP_FORMAT_MSGPACK, out.data, out.len);
    CHECK(v && v->type == ATP_VAL_STR && v->len == sizes[i].len);
  }
  /* Nested containers: map32 headers patched with their member counts. */
  writer(ATP_FORMAT_MSGPACK);
  atp_w_object_begin(&w);
  atp_w_key(&w, "a");
  atp_w_object_begin(&w);
  atp_w_object_end(&w);
  atp_w_key(&w, "b");
  atp_w_array_begin(&w);
  atp_w_cstr(&w, "x");
  atp_w_cstr(&w, "y");
  atp_w_array_end(&w);
  atp_w_object_end(&w);
  OUT_IS(
      "\xdf\x00\x00\x00\x02\xa1"
      "a\xdf\x00\x00\x00\x00\xa1"
      "b\xdd\x00\x00\x00\x02\xa1x\xa1y");
}

static void test_writer_buffer_limit(void) {
  atp_buf_t small;
  atp_buf_init(&small, 8);
  atp_writer_t sw;
  atp_writer_init(&sw, ATP_FORMAT_MSGPACK, &small);
  atp_w_object_begin(&sw);
  atp_w_key(&sw, "a-long-key");
  atp_w_int(&sw, 1);
  atp_w_object_end(&sw); /* no patch past the end of what was written */
  CHECK_EQ(small.failed, ATP_ETOOLARGE);
  atp_buf_free(&small);
}

/* --- round trips ------------------------------------------------------------------ */

static void round_trip(const char *json, size_t len, const char *canonical) {
  atp_arena_t a2;
  atp_arena_init(&a2, 4096, 0);
  atp_val_t *from_json = NULL, *from_msgpack = NULL, *again = NULL;
  REQUIRE(atp_codec_parse(ATP_FORMAT_JSON, json, len, &a2, &from_json, &perr) == 0);
  writer(ATP_FORMAT_MSGPACK);
  atp_w_val(&w, from_json);
  REQUIRE(!out.failed);
  int rc =
      atp_codec_parse(ATP_FORMAT_MSGPACK, out.data, out.len, &a2, &from_msgpack, &perr);
  if (rc) fprintf(stderr, "  msgpack back: %s at %zu\n", perr.message, perr.offset);
  REQUIRE(rc == 0);
  CHECK(val_equal(from_json, from_msgpack));
  writer(ATP_FORMAT_JSON);
  atp_w_val(&w, from_msgpack);
  CHECK(out_is(canonical, strlen(canonical)));
  REQUIRE(atp_codec_parse(ATP_FORMAT_JSON, out.data, out.len, &a2, &again, &perr) == 0);
  CHECK(val_equal(from_json, again));
  atp_arena_destroy(&a2);
}

static void test_round_trip(void) {
  round_trip(
      S("{\"id\":\"r-1\",\"lines\":[{\"sku\":\"gid://shopify/ProductVariant/"
        "123\",\"location\":\"L1\","
        "\"qty\":2,\"allow_split\":true}],\"ttl_ms\":900000,\"order_ref\":null,"
        "\"neg\":-5,\"big\":-9223372036854775808,\"f\":-0.5,\"e\":1e+300,\"g\":2.0}"),
      "{\"id\":\"r-1\",\"lines\":[{\"sku\":\"gid://shopify/ProductVariant/"
      "123\",\"location\":\"L1\","
      "\"qty\":2,\"allow_split\":true}],\"ttl_ms\":900000,\"order_ref\":null,"
      "\"neg\":-5,\"big\":-9223372036854775808,\"f\":-0.5,\"e\":1e+300,\"g\":2.0}");
  round_trip(S(" [ \"\\u0000\\\"\\n\\u00e9\", [], {}, [[[]]], 0 ] "),
             "[\"\\u0000\\\"\\n\xc3\xa9\",[],{},[[[]]],0]");
  /* 20 members and 20 items: map16/array16 headers in atp_w_val. */
  char body[1024];
  size_t n = 0;
  body[n++] = '{';
  for (int i = 0; i < 20; i++)
    n +=
        (size_t)snprintf(body + n, sizeof body - n, "%s\"k%d\":%d", i ? "," : "", i, i);
  n += (size_t)snprintf(body + n, sizeof body - n, ",\"arr\":[");
  for (int i = 0; i < 20; i++)
    n += (size_t)snprintf(body + n, sizeof body - n, "%s%d", i ? "," : "", i * 1000);
  body[n++] = ']';
  body[n++] = '}';
  body[n] = 0;
  round_trip(body, n, body);
  /* A parsed value nested inside the writer's own containers. */
  atp_val_t *v = parse(ATP_FORMAT_JSON, S("{\"op\":\"adjust\",\"delta\":-3}"));
  REQUIRE(v);
  writer(ATP_FORMAT_JSON);
  atp_w_object_begin(&w);
  atp_w_key(&w, "payload");
  atp_w_val(&w, v);
  atp_w_key(&w, "n");
  atp_w_int(&w, 1);
  atp_w_object_end(&w);
  OUT_IS("{\"payload\":{\"op\":\"adjust\",\"delta\":-3},\"n\":1}");
}

/* --- streams -----------------------------------------------------------------------
 */

typedef struct {
  uint32_t count;
  uint32_t stop_at; /* return 99 at this index */
  int64_t sum;      /* of each item's "n" (or the item if an int) */
  bool indexes_ok;
} collect_t;

static int collect(void *ctx, uint32_t index, atp_val_t *val) {
  collect_t *c = ctx;
  if (index != c->count) c->indexes_ok = false;
  c->count++;
  const atp_val_t *n = val->type == ATP_VAL_OBJECT ? atp_val_get(val, "n") : val;
  if (n && n->type == ATP_VAL_INT) c->sum += n->u.i;
  atp_arena_reset(&arena); /* the caller's right: values are done with */
  return index == c->stop_at ? 99 : 0;
}

static int stream(atp_format_t f, const char *body, size_t len, uint32_t max_items,
                  collect_t *c) {
  memset(c, 0, sizeof *c);
  c->stop_at = UINT32_MAX;
  c->indexes_ok = true;
  memset(&perr, 0, sizeof perr);
  return atp_codec_parse_stream(f, body, len, &arena, max_items, collect, c, &perr);
}

static void test_stream_json(void) {
  collect_t c;
  CHECK_EQ(
      stream(ATP_FORMAT_NDJSON, S("{\"n\":1}\n\n  \r\n{\"n\":2}\r\n{\"n\":3}"), 10, &c),
      0);
  CHECK(c.count == 3 && c.sum == 6 && c.indexes_ok);
  CHECK_EQ(stream(ATP_FORMAT_NDJSON, S("{\"n\":1}\n{\"n\":2}\n"), 10, &c), 0);
  CHECK_EQ(c.count, 2);
  CHECK_EQ(stream(ATP_FORMAT_NDJSON, S(""), 10, &c), 0);
  CHECK_EQ(c.count, 0);
  /* The error offset is in the whole body, not the line. */
  CHECK_EQ(
      stream(ATP_FORMAT_NDJSON, S("{\"n\":1}\n{\"n\":2}\n{\"n\":3,\"n\":4}\n"), 10, &c),
      ATP_EBADREQ);
  CHECK_EQ(c.count, 2);
  CHECK_EQ(perr.offset, 16 + 7);
  CHECK(strstr(perr.message, "duplicate key") != NULL);
  CHECK_EQ(stream(ATP_FORMAT_NDJSON, S("{\"n\":1} {\"n\":2}\n"), 10, &c), ATP_EBADREQ);
  CHECK_EQ(perr.offset, 8);
  /* A JSON array yields its items. */
  CHECK_EQ(stream(ATP_FORMAT_JSON, S(" [ {\"n\":1} , {\"n\":2},3 ] "), 10, &c), 0);
  CHECK(c.count == 3 && c.sum == 6 && c.indexes_ok);
  CHECK_EQ(stream(ATP_FORMAT_JSON, S("[]"), 10, &c), 0);
  CHECK_EQ(c.count, 0);
  CHECK_EQ(stream(ATP_FORMAT_JSON, S("[1 2]"), 10, &c), ATP_EBADREQ);
  CHECK_EQ(perr.offset, 3);
  CHECK_EQ(stream(ATP_FORMAT_JSON, S("[1,2"), 10, &c), ATP_EBADREQ);
  CHECK_EQ(perr.offset, 4);
  CHECK_EQ(stream(ATP_FORMAT_JSON, S("[1,]"), 10, &c), ATP_EBADREQ);
  CHECK_EQ(stream(ATP_FORMAT_JSON, S("[1] x"), 10, &c), ATP_EBADREQ);
  CHECK_EQ(perr.offset, 4);
  CHECK(strstr(perr.message, "after the array") != NULL);
  /* Concatenated JSON values (and so NDJSON sent as JSON) stream too. */
  CHECK_EQ(stream(ATP_FORMAT_JSON, S("{\"n\":1}\n{\"n\":2}"), 10, &c), 0);
  CHECK_EQ(c.count, 2);
  /* Items count towards depth inside the array. */
  char deep[80];
  for (int d = ATP_CODEC_DEPTH_MAX; d <= ATP_CODEC_DEPTH_MAX + 1; d++) {
    memset(deep, '[', (size_t)d);
    memset(deep + d, ']', (size_t)d);
    int rc = stream(ATP_FORMAT_JSON, deep, 2 * (size_t)d, 10, &c);
    CHECK_EQ(rc, d > ATP_CODEC_DEPTH_MAX ? ATP_EBADREQ : 0);
    if (rc) {
      CHECK(strstr(perr.message, "nesting") != NULL);
      CHECK_EQ(perr.offset, ATP_CODEC_DEPTH_MAX);
    }
  }
  /* max_items, and fn's own return. */
  CHECK_EQ(stream(ATP_FORMAT_JSON, S("[1,2,3]"), 2, &c), ATP_ETOOLARGE);
  CHECK_EQ(c.count, 2);
  CHECK_EQ(stream(ATP_FORMAT_NDJSON, S("1\n2\n3\n"), 2, &c), ATP_ETOOLARGE);
  CHECK_EQ(perr.offset, 4);
  CHECK_EQ(stream(ATP_FORMAT_NDJSON, S("1\n2\n"), 2, &c), 0);
  memset(&c, 0, sizeof c);
  c.stop_at = 1;
  CHECK_EQ(atp_codec_parse_stream(ATP_FORMAT_JSON, S("[1,2,3]"), &arena, 10, collect,
                                  &c, &perr),
           99);
  CHECK_EQ(c.count, 2);
}

static void test_stream_msgpack(void) {
  collect_t c;
  /* Concatenated objects. */
  CHECK_EQ(stream(ATP_FORMAT_MSGPACK, S("\x81\xa1n\x01\x81\xa1n\x02\x05"), 10, &c), 0);
  CHECK(c.count == 3 && c.sum == 8 && c.indexes_ok);
  /* One array. */
  CHECK_EQ(stream(ATP_FORMAT_MSGPACK, S("\x93\x81\xa1n\x01\x02\x03"), 10, &c), 0);
  CHECK(c.count == 3 && c.sum == 6);
  CHECK_EQ(stream(ATP_FORMAT_MSGPACK, S("\xdc\x00\x02\x01\x02"), 10, &c), 0);
  CHECK_EQ(c.count, 2);
  CHECK_EQ(stream(ATP_FORMAT_MSGPACK, S(""), 10, &c), 0);
  CHECK_EQ(c.count, 0);
  CHECK_EQ(stream(ATP_FORMAT_MSGPACK, S("\x90"), 10, &c), 0);
  CHECK_EQ(c.count, 0);
  /* Errors carry offsets in the body. */
  CHECK_EQ(stream(ATP_FORMAT_MSGPACK, S("\x81\xa1n\x01\x82\xa1n\x01\xa1n\x02"), 10, &c),
           ATP_EBADREQ);
  CHECK_EQ(c.count, 1);
  CHECK_EQ(perr.offset, 8);
  CHECK(strstr(perr.message, "duplicate key \"n\"") != NULL);
  CHECK_EQ(stream(ATP_FORMAT_MSGPACK, S("\x93\x01\x02"), 10, &c), ATP_EBADREQ);
  CHECK_EQ(perr.offset, 3);
  CHECK_EQ(stream(ATP_FORMAT_MSGPACK, S("\x92\x01\x02\x03"), 10, &c), ATP_EBADREQ);
  CHECK_EQ(perr.offset, 3);
  CHECK_EQ(stream(ATP_FORMAT_MSGPACK, S("\xdd\x00\x00"), 10, &c), ATP_EBADREQ);
  CHECK_EQ(stream(ATP_FORMAT_MSGPACK, S("\x01\xc1"), 10, &c), ATP_EBADREQ);
  CHECK_EQ(perr.offset, 1);
  /* Depth counts the enclosing array. */
  char deep[64];
  memset(deep, '\x91', sizeof deep);
  deep[ATP_CODEC_DEPTH_MAX] = '\xc0';
  CHECK_EQ(stream(ATP_FORMAT_MSGPACK, deep, ATP_CODEC_DEPTH_MAX + 1, 10, &c), 0);
  deep[ATP_CODEC_DEPTH_MAX] = '\x91';
  deep[ATP_CODEC_DEPTH_MAX + 1] = '\xc0';
  CHECK_EQ(stream(ATP_FORMAT_MSGPACK, deep, ATP_CODEC_DEPTH_MAX + 2, 10, &c),
           ATP_EBADREQ);
  /* max_items: an array announcing too many is refused before any item. */
  CHECK_EQ(stream(ATP_FORMAT_MSGPACK, S("\x93\x01\x02\x03"), 2, &c), ATP_ETOOLARGE);
  CHECK_EQ(c.count, 0);
  CHECK_EQ(stream(ATP_FORMAT_MSGPACK, S("\x01\x02\x03"), 2, &c), ATP_ETOOLARGE);
  CHECK_EQ(c.count, 2);
  memset(&c, 0, sizeof c);
  c.stop_at = 0;
  CHECK_EQ(atp_codec_parse_stream(ATP_FORMAT_MSGPACK, S("\x01\x02"), &arena, 10,
                                  collect, &c, &perr),
           99);
  CHECK_EQ(c.count, 1);
}

/* JSON streams: offsets in the whole body, limits, the item-at-a-time memory. */
static void test_stream_json_items(void) {
  collect_t c;
  /* Items of every kind; a number last in the array or body is complete. */
  CHECK_EQ(stream(ATP_FORMAT_JSON,
                  S("[{\"n\":1,\"s\":\"\\u00e9\"},[],\"x\",null,true,22]"), 10, &c),
           0);
  CHECK(c.count == 6 && c.sum == 23 && c.indexes_ok);
  CHECK_EQ(stream(ATP_FORMAT_JSON, S("1 2\n3"), 10, &c), 0);
  CHECK(c.count == 3 && c.sum == 6);
  CHECK_EQ(stream(ATP_FORMAT_JSON, S("\n[\n1\n,\n2\n]\n"), 10, &c), 0);
  CHECK(c.count == 2 && c.sum == 3);
  /* Errors inside an item carry the body's offset; earlier items were handed
   * over. */
  static const char dup[] = "[{\"n\":1},{\"n\":2},{\"n\":3,\"n\":4}]";
  CHECK_EQ(stream(ATP_FORMAT_JSON, dup, sizeof dup - 1, 10, &c), ATP_EBADREQ);
  CHECK_EQ(c.count, 2);
  CHECK_EQ(perr.offset, 24);
  CHECK(strstr(perr.message, "duplicate key \"n\"") != NULL);
  CHECK_EQ(stream(ATP_FORMAT_JSON, S("[\"a\",\"b\xff\"]"), 10, &c), ATP_EBADREQ);
  CHECK_EQ(perr.offset, 7);
  CHECK_EQ(stream(ATP_FORMAT_JSON, S("[1,\"\\ud800\"]"), 10, &c), ATP_EBADREQ);
  CHECK_EQ(perr.offset, 4);
  CHECK(strstr(perr.message, "surrogate") != NULL);
  CHECK_EQ(stream(ATP_FORMAT_JSON, S("[1,99999999999999999999]"), 10, &c), ATP_EBADREQ);
  CHECK_EQ(perr.offset, 3);
  CHECK(strstr(perr.message, "int64") != NULL);
  CHECK_EQ(stream(ATP_FORMAT_JSON, S("[{\"n\":1},{\"n\":"), 10, &c), ATP_EBADREQ);
  CHECK_EQ(perr.offset, 14);
  CHECK(strstr(perr.message, "unexpected end of input") != NULL);
  CHECK_EQ(stream(ATP_FORMAT_JSON, S("[{\"n\":1}"), 10, &c), ATP_EBADREQ);
  CHECK_EQ(perr.offset, 8);
  CHECK_EQ(stream(ATP_FORMAT_JSON, S("{\"n\":1} x"), 10, &c), ATP_EBADREQ);
  CHECK_EQ(c.count, 1);
  CHECK_EQ(perr.offset, 8);
  CHECK_EQ(stream(ATP_FORMAT_NDJSON, S("{\"n\":1}\n{\"n\":2} x\n"), 10, &c),
           ATP_EBADREQ);
  CHECK_EQ(perr.offset, 16);
  CHECK(strstr(perr.message, "end of file expected") != NULL);
  CHECK_EQ(stream(ATP_FORMAT_NDJSON, S("{\"n\":1}\n{\"n\":\n"), 10, &c), ATP_EBADREQ);
  CHECK_EQ(perr.offset, 13);
  CHECK(strstr(perr.message, "unexpected end of input") != NULL);
  /* max_items: exactly max is fine; one more is refused at that item. */
  CHECK_EQ(stream(ATP_FORMAT_JSON, S("[1,2]"), 2, &c), 0);
  CHECK_EQ(stream(ATP_FORMAT_JSON, S("[1, 2, 3]"), 2, &c), ATP_ETOOLARGE);
  CHECK_EQ(perr.offset, 7);
  CHECK(strstr(perr.message, "more than 2 items") != NULL);
  CHECK_EQ(stream(ATP_FORMAT_JSON, S("1 2 3"), 2, &c), ATP_ETOOLARGE);
  CHECK_EQ(perr.offset, 4);
  CHECK_EQ(stream(ATP_FORMAT_JSON, S("[]"), 0, &c), 0);
  CHECK_EQ(stream(ATP_FORMAT_JSON, S("[1]"), 0, &c), ATP_ETOOLARGE);
  /* Memory of one item: 20000 items of about 100 bytes stream through an
   * arena capped at 8 KiB, as the caller resets it after each item. */
  atp_buf_t b;
  atp_buf_init(&b, 0);
  atp_buf_printf(&b, "[");
  for (int i = 0; i < 20000; i++)
    atp_buf_printf(
        &b, "%s{\"op\":\"adjust\",\"sku\":\"SKU-%06d\",\"n\":1,\"s\":\"\\u00e9\"}",
        i ? "," : "", i);
  atp_buf_printf(&b, "]");
  REQUIRE(!b.failed);
  atp_arena_t saved = arena;
  atp_arena_init(&arena, 4096, 8192);
  CHECK_EQ(stream(ATP_FORMAT_JSON, b.data, b.len, ATP_BATCH_OPS_MAX, &c), 0);
  CHECK(c.count == 20000 && c.sum == 20000);
  atp_arena_reset(&arena);
  atp_val_t *v = NULL;
  CHECK_EQ(atp_codec_parse(ATP_FORMAT_JSON, b.data, b.len, &arena, &v, &perr),
           ATP_ENOMEM); /* the whole body as one value does not fit */
  atp_arena_destroy(&arena);
  arena = saved;
  atp_buf_free(&b);
}

/* A large batch: linear, item at a time, in both formats. */
static void test_stream_large(void) {
  enum { ITEMS = 100000 };
  atp_buf_t jb, mb;
  atp_buf_init(&jb, 0);
  atp_buf_init(&mb, 0);
  atp_writer_t jw, mw;
  atp_writer_init(&jw, ATP_FORMAT_JSON, &jb);
  atp_writer_init(&mw, ATP_FORMAT_MSGPACK, &mb);
  atp_writer_t *ws[2] = {&jw, &mw};
  for (int k = 0; k < 2; k++) {
    atp_w_array_begin(ws[k]);
    for (int i = 0; i < ITEMS; i++) {
      atp_w_object_begin(ws[k]);
      atp_w_key(ws[k], "op");
      atp_w_cstr(ws[k], "adjust");
      atp_w_key(ws[k], "sku");
      atp_w_cstr(ws[k], "SKU-000123");
      atp_w_key(ws[k], "n");
      atp_w_int(ws[k], 1);
      atp_w_object_end(ws[k]);
    }
    atp_w_array_end(ws[k]);
  }
  REQUIRE(!jb.failed && !mb.failed);
  collect_t c;
  CHECK_EQ(stream(ATP_FORMAT_JSON, jb.data, jb.len, ATP_BATCH_OPS_MAX, &c), 0);
  CHECK(c.count == ITEMS && c.sum == ITEMS);
  CHECK_EQ(stream(ATP_FORMAT_MSGPACK, mb.data, mb.len, ATP_BATCH_OPS_MAX, &c), 0);
  CHECK(c.count == ITEMS && c.sum == ITEMS);
  /* The same bodies as one value. */
  atp_val_t *v = parse(ATP_FORMAT_MSGPACK, mb.data, mb.len);
  CHECK(v && v->len == ITEMS);
  v = parse(ATP_FORMAT_JSON, jb.data, jb.len);
  CHECK(v && v->len == ITEMS);
  atp_buf_free(&jb);
  atp_buf_free(&mb);
}

TEST_MAIN({
  atp_arena_init(&arena, 64 * 1024, 0);
  atp_buf_init(&out, 0);
  RUN(test_content_type);
  RUN(test_accept);
  RUN(test_json_values);
  RUN(test_json_errors);
  RUN(test_json_depth);
  RUN(test_json_duplicates);
  RUN(test_json_numbers);
  RUN(test_json_strings);
  RUN(test_json_structure);
  RUN(test_json_depth_memory);
  RUN(test_msgpack_values);
  RUN(test_msgpack_errors);
  RUN(test_msgpack_depth_and_big_maps);
  RUN(test_arena_exhausted);
  RUN(test_buf_limits);
  RUN(test_table_alloc);
  RUN(test_writer_json);
  RUN(test_writer_msgpack);
  RUN(test_writer_buffer_limit);
  RUN(test_round_trip);
  RUN(test_stream_json);
  RUN(test_stream_json_items);
  RUN(test_stream_msgpack);
  RUN(test_stream_large);
  atp_buf_free(&out);
  atp_arena_destroy(&arena);
})
