/* test_splitter.c - codec.h's element splitter for batch bodies: element
 * boundaries in JSON arrays, NDJSON and both msgpack framings, broken framing
 * refused with its offset, and each element parsed on its own. */
#include <stdint.h>

#include "atp/codec.h"
#include "atp/error.h"
#include "test.h"

#define S(lit)       lit, sizeof(lit) - 1 /* literal with its length (may hold NULs) */
#define ELEMENTS_MAX 16

static atp_arena_t arena;
static atp_parse_error_t perr;

typedef struct {
  int rc; /* 0: the end was reached, else the failing call's code */
  uint32_t count;
  size_t start[ELEMENTS_MAX], end[ELEMENTS_MAX];
} split_t;

static split_t split(atp_format_t f, const char *body, size_t len) {
  split_t out;
  memset(&out, 0, sizeof out);
  memset(&perr, 0, sizeof perr);
  atp_splitter_t s;
  atp_splitter_init(&s, f, body, len);
  for (;;) {
    size_t a = 0, b = 0;
    int rc = atp_splitter_next(&s, &a, &b, &perr);
    if (rc != 1) {
      out.rc = rc;
      /* After the end or a failure the splitter stays there. */
      if (atp_splitter_next(&s, &a, &b, NULL) != 0) out.rc = 12345;
      break;
    }
    if (out.count < ELEMENTS_MAX) out.start[out.count] = a, out.end[out.count] = b;
    out.count++;
    if (s.count != out.count) out.rc = 54321;
  }
  return out;
}

/* Whether element i of body is the text want. */
static bool element_is(const split_t *sp, const char *body, uint32_t i,
                       const char *want) {
  size_t n = strlen(want);
  return i < sp->count && sp->end[i] - sp->start[i] == n &&
         memcmp(body + sp->start[i], want, n) == 0;
}

static void test_json_array(void) {
  const char *b =
      " [ {\"op\":\"adjust\",\"s\":\"a,]}\\\"[\"} ,\n[1,{\"x\":[2]}],3 ,\"\\\\\"] ";
  split_t sp = split(ATP_FORMAT_JSON, b, strlen(b));
  CHECK_EQ(sp.rc, 0);
  CHECK_EQ(sp.count, 4u);
  CHECK(element_is(&sp, b, 0, "{\"op\":\"adjust\",\"s\":\"a,]}\\\"[\"}"));
  CHECK(element_is(&sp, b, 1, "[1,{\"x\":[2]}]"));
  CHECK(element_is(&sp, b, 2, "3"));
  CHECK(element_is(&sp, b, 3, "\"\\\\\""));
  sp = split(ATP_FORMAT_JSON, S("[]"));
  CHECK(sp.rc == 0 && sp.count == 0);
  sp = split(ATP_FORMAT_JSON, S("  [ \n ]  \n"));
  CHECK(sp.rc == 0 && sp.count == 0);
  /* Items that are not valid JSON are still delimited: their parse refuses
   * them, and the next ones are found. */
  const char *bad = "[{\"a\":1}}, nope, , {\"b\":2}]";
  sp = split(ATP_FORMAT_JSON, bad, strlen(bad));
  CHECK_EQ(sp.rc, 0);
  CHECK_EQ(sp.count, 4u);
  CHECK(element_is(&sp, bad, 0, "{\"a\":1}}"));
  CHECK(element_is(&sp, bad, 1, "nope"));
  CHECK(element_is(&sp, bad, 2, ""));
  CHECK(element_is(&sp, bad, 3, "{\"b\":2}"));
}

static void test_json_framing(void) {
  split_t sp = split(ATP_FORMAT_JSON, S("{\"op\":\"adjust\"}"));
  CHECK(sp.rc == ATP_EBADREQ && sp.count == 0 && perr.offset == 0);
  CHECK(strstr(perr.message, "array") != NULL);
  sp = split(ATP_FORMAT_JSON, S(""));
  CHECK(sp.rc == ATP_EBADREQ && perr.offset == 0);
  sp = split(ATP_FORMAT_JSON, S("[1,2"));
  CHECK(sp.rc == ATP_EBADREQ && sp.count == 1 && perr.offset == 4);
  sp = split(ATP_FORMAT_JSON, S("[1,\"2]"));
  CHECK(sp.rc == ATP_EBADREQ && sp.count == 1 && perr.offset == 6);
  sp = split(ATP_FORMAT_JSON, S("[[1,2]"));
  CHECK(sp.rc == ATP_EBADREQ && sp.count == 0);
  sp = split(ATP_FORMAT_JSON, S("[1] x"));
  CHECK(sp.rc == ATP_EBADREQ && sp.count == 1 && perr.offset == 4);
  CHECK(strstr(perr.message, "after the array") != NULL);
  sp = split(ATP_FORMAT_JSON, S("[] []"));
  CHECK(sp.rc == ATP_EBADREQ && sp.count == 0 && perr.offset == 3);
}

static void test_ndjson(void) {
  const char *b = "{\"n\":1}\r\n\n   \n  {\"n\":2}  \nnot json\n{\"n\":3}";
  split_t sp = split(ATP_FORMAT_NDJSON, b, strlen(b));
  CHECK_EQ(sp.rc, 0);
  CHECK_EQ(sp.count, 4u);
  CHECK(element_is(&sp, b, 0, "{\"n\":1}"));
  CHECK(element_is(&sp, b, 1, "{\"n\":2}"));
  CHECK(element_is(&sp, b, 2, "not json"));
  CHECK(element_is(&sp, b, 3, "{\"n\":3}"));
  sp = split(ATP_FORMAT_NDJSON, S(""));
  CHECK(sp.rc == 0 && sp.count == 0);
  sp = split(ATP_FORMAT_NDJSON, S("\n\n \n"));
  CHECK(sp.rc == 0 && sp.count == 0);
}

static void test_msgpack(void) {
  /* [{"n":1}, 2, "ab"] as an array, then the same as a stream. */
  const char arr[] =
      "\x93\x81\xa1n\x01\x02\xa2"
      "ab";
  split_t sp = split(ATP_FORMAT_MSGPACK, arr, sizeof arr - 1);
  CHECK_EQ(sp.rc, 0);
  CHECK_EQ(sp.count, 3u);
  CHECK(sp.start[0] == 1 && sp.end[0] == 5 && sp.start[1] == 5 && sp.end[1] == 6);
  CHECK(sp.start[2] == 6 && sp.end[2] == 9);
  sp = split(ATP_FORMAT_MSGPACK, arr + 1, sizeof arr - 2);
  CHECK(sp.rc == 0 && sp.count == 3 && sp.start[0] == 0 && sp.end[2] == 8);
  /* array16 with 2 items */
  sp = split(ATP_FORMAT_MSGPACK, S("\xdc\x00\x02\x01\x02"));
  CHECK(sp.rc == 0 && sp.count == 2 && sp.start[0] == 3);
  sp = split(ATP_FORMAT_MSGPACK, S("\x90"));
  CHECK(sp.rc == 0 && sp.count == 0);
  sp = split(ATP_FORMAT_MSGPACK, S(""));
  CHECK(sp.rc == 0 && sp.count == 0);
  /* An array announcing more items than the body holds. */
  sp = split(ATP_FORMAT_MSGPACK, S("\x93\x01\x02"));
  CHECK(sp.rc == ATP_EBADREQ && sp.count == 2 && perr.offset == 3);
  /* 2^32-1 items announced in five bytes: found lazily, never allocated. */
  sp = split(ATP_FORMAT_MSGPACK, S("\xdd\xff\xff\xff\xff\x01"));
  CHECK(sp.rc == ATP_EBADREQ && sp.count == 1);
  sp = split(ATP_FORMAT_MSGPACK, S("\x92\x01\x02\x03"));
  CHECK(sp.rc == ATP_EBADREQ && sp.count == 2 && perr.offset == 3);
  /* A stream whose second value is cut short; an ext value. */
  sp = split(ATP_FORMAT_MSGPACK, S("\x81\xa1n\x01\x81\xa1n"));
  CHECK(sp.rc == ATP_EBADREQ && sp.count == 1 && perr.offset == 7);
  sp = split(ATP_FORMAT_MSGPACK, S("\x01\xd4\x01\x00"));
  CHECK(sp.rc == ATP_EBADREQ && sp.count == 1 && perr.offset == 1);
  sp = split(ATP_FORMAT_MSGPACK, S("\xdc\x00"));
  CHECK(sp.rc == ATP_EBADREQ && sp.count == 0);
}

/* Parses element i of body as split by s; NULL on failure (perr set). */
static atp_val_t *element(atp_format_t f, const char *body, size_t len, uint32_t i,
                          int *rc) {
  atp_splitter_t s;
  atp_splitter_init(&s, f, body, len);
  size_t a = 0, b = 0;
  for (uint32_t k = 0; k <= i; k++) {
    if (atp_splitter_next(&s, &a, &b, &perr) != 1) {
      *rc = 999;
      return NULL;
    }
  }
  atp_arena_reset(&arena);
  atp_val_t *v = NULL;
  memset(&perr, 0, sizeof perr);
  *rc = atp_codec_parse_element(&s, a, b, &arena, &v, &perr);
  return v;
}

static void test_parse_element(void) {
  int rc = 0;
  const char *j = "[{\"a\":1} , {\"a\":1,\"a\":2}, [1,2}, ]";
  atp_val_t *v = element(ATP_FORMAT_JSON, j, strlen(j), 0, &rc);
  CHECK(rc == 0 && v && v->type == ATP_VAL_OBJECT && v->len == 1);
  v = element(ATP_FORMAT_JSON, j, strlen(j), 1, &rc);
  CHECK(rc == ATP_EBADREQ && !v && strstr(perr.message, "duplicate key"));
  CHECK_EQ(perr.offset, 18u); /* offsets are the body's, not the item's */
  v = element(ATP_FORMAT_JSON, j, strlen(j), 2, &rc);
  CHECK(rc == ATP_EBADREQ && !v);
  v = element(ATP_FORMAT_JSON, j, strlen(j), 3, &rc);
  CHECK(rc == ATP_EBADREQ && !v && strstr(perr.message, "empty item"));
  /* Array items count one level towards the depth limit: 31 more fit. */
  char deep[128];
  for (int inner = 31; inner <= 32; inner++) {
    size_t n = 0;
    deep[n++] = '[';
    for (int k = 0; k < inner; k++) deep[n++] = '[';
    for (int k = 0; k < inner; k++) deep[n++] = ']';
    deep[n++] = ']';
    v = element(ATP_FORMAT_JSON, deep, n, 0, &rc);
    CHECK(inner == 31 ? rc == 0 && v : rc == ATP_EBADREQ && !v);
  }
  const char *nd = "{\"n\":1}\n{\"n\":\n";
  v = element(ATP_FORMAT_NDJSON, nd, strlen(nd), 0, &rc);
  CHECK(rc == 0 && v && v->type == ATP_VAL_OBJECT);
  v = element(ATP_FORMAT_NDJSON, nd, strlen(nd), 1, &rc);
  CHECK(rc == ATP_EBADREQ && !v && perr.offset >= 8);
  const char mp[] = "\x92\x81\xa1n\x01\xa1x";
  v = element(ATP_FORMAT_MSGPACK, mp, sizeof mp - 1, 0, &rc);
  CHECK(rc == 0 && v && v->type == ATP_VAL_OBJECT && v->u.members[0].val.u.i == 1);
  v = element(ATP_FORMAT_MSGPACK, mp, sizeof mp - 1, 1, &rc);
  CHECK(rc == 0 && v && v->type == ATP_VAL_STR && v->len == 1);
}

static bool val_equal(const atp_val_t *a, const atp_val_t *b) {
  if (a->type != b->type || (a->type >= ATP_VAL_STR && a->len != b->len)) return false;
  switch (a->type) {
    case ATP_VAL_NULL:
      return true;
    case ATP_VAL_BOOL:
      return a->u.b == b->u.b;
    case ATP_VAL_INT:
      return a->u.i == b->u.i;
    case ATP_VAL_FLOAT:
      return a->u.f == b->u.f;
    case ATP_VAL_STR:
      return memcmp(a->u.s, b->u.s, a->len) == 0 && a->u.s[a->len] == '\0';
    case ATP_VAL_ARRAY:
      for (uint32_t i = 0; i < a->len; i++)
        if (!val_equal(&a->u.items[i], &b->u.items[i])) return false;
      return true;
    case ATP_VAL_OBJECT:
      for (uint32_t i = 0; i < a->len; i++) {
        const atp_member_t *x = &a->u.members[i], *y = &b->u.members[i];
        if (x->key_len != y->key_len || memcmp(x->key, y->key, x->key_len) != 0 ||
            x->key[x->key_len] != '\0')
          return false;
        if (!val_equal(&x->val, &y->val)) return false;
      }
      return true;
  }
  return false;
}

/* A msgpack element (decoded once, straight into the arena, since the
 * splitter checked it) gives the tree, or the refusal at the body's offset,
 * that the checked whole-value parse gives for its bytes. */
static void same_as_parse(const char *body, size_t len, uint32_t i) {
  int rc = 0;
  atp_val_t *v = element(ATP_FORMAT_MSGPACK, body, len, i, &rc);
  atp_parse_error_t mine = perr;
  REQUIRE(rc != 999);
  /* The element's bytes, found again. */
  atp_splitter_t s;
  atp_splitter_init(&s, ATP_FORMAT_MSGPACK, body, len);
  size_t a = 0, b = 0;
  for (uint32_t k = 0; k <= i; k++) REQUIRE(atp_splitter_next(&s, &a, &b, NULL) == 1);
  static atp_arena_t other;
  if (!other.chunk_bytes) atp_arena_init(&other, 64 * 1024, 0);
  atp_arena_reset(&other);
  atp_val_t *w = NULL;
  atp_parse_error_t theirs;
  memset(&theirs, 0, sizeof theirs);
  int want = atp_codec_parse(ATP_FORMAT_MSGPACK, body + a, b - a, &other, &w, &theirs);
  CHECK_EQ(rc, want);
  if (rc == 0) {
    CHECK(v && w && val_equal(v, w));
  } else {
    CHECK_EQ(mine.offset, a + theirs.offset);
    CHECK(strcmp(mine.message, theirs.message) == 0);
  }
}

static void test_msgpack_element_decoder(void) {
  /* Every scalar form, a nested array and map, str8 and bin keys and values,
   * empty strings, array16 and map16 headers. */
  const char every[] =
      "\x93"
      "\x8f"
      "\xa1"
      "a\x7f" /* positive fixint */
      "\xa1"
      "b\xe0" /* negative fixint -32 */
      "\xa1"
      "c\xd0\x80" /* int8 -128 */
      "\xa1"
      "d\xd1\xff\x00" /* int16 -256 */
      "\xa1"
      "e\xd2\x80\x00\x00\x00" /* int32 min */
      "\xa1"
      "f\xd3\xff\xff\xff\xff\xff\xff\xff\xfe"      /* int64 -2 */
      "\xa1g\xcc\xc8"                              /* uint8 200 */
      "\xa1h\xcd\xff\xff"                          /* uint16 */
      "\xa1i\xce\xff\xff\xff\xff"                  /* uint32 */
      "\xa1j\xcf\x7f\xff\xff\xff\xff\xff\xff\xff"  /* uint64 INT64_MAX */
      "\xa1k\xca\x3f\xc0\x00\x00"                  /* float32 1.5 */
      "\xa1l\xcb\x40\x09\x21\xfb\x54\x44\x2d\x18"  /* float64 pi */
      "\xa1m\xc0"                                  /* nil */
      "\xc4\x01n\xc3"                              /* bin key, true */
      "\xd9\x01o\x92\xc2\xa0"                      /* str8 key, [false, ""] */
      "\xdc\x00\x02\xc4\x02hi\xde\x00\x01\xa0\x80" /* array16 [bin "hi", {"": {}}] */
      "\x90";                                      /* [] */
  for (uint32_t i = 0; i < 3; i++) same_as_parse(every, sizeof every - 1, i);
  /* A stream of objects, not an array. */
  const char stream[] =
      "\x81\xa2op\xa6"
      "adjust\x82\xa1x\x01\xa1y\xd0\xff";
  same_as_parse(stream, sizeof stream - 1, 0);
  same_as_parse(stream, sizeof stream - 1, 1);
  /* Duplicate keys are handed to the checked path, which names the first
   * map's twin in document order even when a map inside it also has one. */
  const char dups[] =
      "\x92"
      "\x83\xa1"
      "a\x82\xa1z\x01\xa1z\x02\xa1"
      "a\x01\xa1"
      "b\x01"                            /* outer twin "a" */
      "\x81\xa1q\x82\xa1z\x01\xa1z\x02"; /* inner twin "z" */
  same_as_parse(dups, sizeof dups - 1, 0);
  CHECK(strstr(perr.message, "\"a\""));
  same_as_parse(dups, sizeof dups - 1, 1);
  CHECK(strstr(perr.message, "\"z\""));
  /* A map beyond pairwise comparison takes the checked path, same tree. */
  atp_buf_t b;
  atp_buf_init(&b, 0);
  atp_buf_append(&b, "\xde\x00\x28", 3);
  for (int k = 0; k < 40; k++) {
    char kv[8] = {(char)0xa2, (char)('a' + k / 26), (char)('a' + k % 26), (char)k};
    atp_buf_append(&b, kv, 4);
  }
  REQUIRE(!b.failed);
  same_as_parse(b.data, b.len, 0);
  atp_buf_free(&b);
}

/* A long body: elements found in one pass, the count right. */
static void test_many(void) {
  atp_buf_t b;
  atp_buf_init(&b, 0);
  atp_buf_append(&b, "[", 1);
  for (int i = 0; i < 100000; i++)
    atp_buf_printf(&b, "%s{\"op\":\"adjust\",\"i\":%d,\"s\":\"[,\\\"]\"}", i ? "," : "",
                   i);
  atp_buf_append(&b, "]", 1);
  REQUIRE(!b.failed);
  split_t sp = split(ATP_FORMAT_JSON, b.data, b.len);
  CHECK(sp.rc == 0 && sp.count == 100000);
  atp_buf_free(&b);
}

TEST_MAIN({
  atp_arena_init(&arena, 64 * 1024, 0);
  RUN(test_json_array);
  RUN(test_json_framing);
  RUN(test_ndjson);
  RUN(test_msgpack);
  RUN(test_parse_element);
  RUN(test_msgpack_element_decoder);
  RUN(test_many);
  atp_arena_destroy(&arena);
})
