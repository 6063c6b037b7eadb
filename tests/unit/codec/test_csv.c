/* test_csv.c - codec.h's CSV splitter: fields, quoting, line breaks, line
 * numbers and every refusal. */
#include <stdint.h>

#include "atp/codec.h"
#include "atp/error.h"
#include "test.h"

static atp_arena_t arena;
static atp_parse_error_t perr;
static atp_csv_t csv;
static atp_csv_field_t f[8];
static uint32_t n;

#define S(lit) lit, sizeof(lit) - 1

static void start(const char *body, size_t len) {
  atp_arena_reset(&arena);
  memset(&perr, 0, sizeof perr);
  atp_csv_init(&csv, body, len);
}

static int next(void) {
  return atp_csv_next(&csv, &arena, f, 8, &n, &perr);
}

static int field_is(uint32_t i, const char *text) {
  return i < n && f[i].len == strlen(text) && memcmp(f[i].ptr, text, f[i].len) == 0;
}

static void test_plain_records(void) {
  start(S("sku,location,on_hand\nA,L1,5\r\nB,L2,-3\n"));
  CHECK_EQ(next(), 1);
  CHECK_EQ(n, 3);
  CHECK(field_is(0, "sku") && field_is(1, "location") && field_is(2, "on_hand"));
  CHECK_EQ(csv.line, 1);
  CHECK_EQ(next(), 1);
  CHECK(field_is(0, "A") && field_is(1, "L1") && field_is(2, "5"));
  CHECK_EQ(csv.line, 2);
  CHECK_EQ(next(), 1);
  CHECK(field_is(2, "-3")); /* CRLF ended the line before: no CR in "5" */
  CHECK_EQ(csv.line, 3);
  CHECK_EQ(next(), 0);
  CHECK_EQ(next(), 0);
  CHECK_EQ(csv.records, 3);
}

static void test_no_final_newline_blank_lines_bom(void) {
  start(
      S("\xef\xbb\xbf"
        "a,b\n\n\r\nc,d"));
  CHECK_EQ(next(), 1);
  CHECK(field_is(0, "a")); /* the byte order mark is not part of the field */
  CHECK_EQ(next(), 1);
  CHECK(field_is(0, "c") && field_is(1, "d"));
  CHECK_EQ(csv.line, 4); /* blank lines still count */
  CHECK_EQ(next(), 0);
  start(S(""));
  CHECK_EQ(next(), 0);
  start(S("\n\n"));
  CHECK_EQ(next(), 0);
}

static void test_empty_fields(void) {
  start(S(",x,\n"));
  CHECK_EQ(next(), 1);
  CHECK_EQ(n, 3);
  CHECK(field_is(0, "") && field_is(1, "x") && field_is(2, ""));
  start(S("a,"));
  CHECK_EQ(next(), 1);
  CHECK_EQ(n, 2);
  CHECK(field_is(1, ""));
}

static void test_quoted(void) {
  start(
      S("\"gid://shopify/ProductVariant/1\",\"Store, Main\",\"4\"\n"
        "\"say \"\"hi\"\"\",\"two\nlines\",\"\"\n"
        "next,row,1\n"));
  CHECK_EQ(next(), 1);
  CHECK(field_is(0, "gid://shopify/ProductVariant/1") && field_is(1, "Store, Main") &&
        field_is(2, "4"));
  CHECK_EQ(next(), 1);
  CHECK(field_is(0, "say \"hi\"") && field_is(1, "two\nlines") && field_is(2, ""));
  CHECK_EQ(csv.line, 2);
  CHECK_EQ(next(), 1);
  CHECK(field_is(0, "next"));
  CHECK_EQ(csv.line, 4); /* the quoted line break counted */
  /* A quote inside an unquoted field is data. */
  start(S("5\" pipe,L\n"));
  CHECK_EQ(next(), 1);
  CHECK(field_is(0, "5\" pipe"));
}

static void test_refusals(void) {
  start(S("a,b\n\"open,c\nd\n"));
  CHECK_EQ(next(), 1);
  CHECK_EQ(next(), ATP_EBADREQ);
  CHECK(strstr(perr.message, "line 2") != NULL);
  CHECK(strstr(perr.message, "not closed") != NULL);
  CHECK_EQ(perr.offset, 4);
  start(S("ok\n\"x\"y,z\n"));
  CHECK_EQ(next(), 1);
  CHECK_EQ(next(), ATP_EBADREQ);
  CHECK(strstr(perr.message, "line 2") != NULL);
  start(S("1,2,3,4,5,6,7,8,9\n"));
  CHECK_EQ(next(), ATP_EBADREQ);
  CHECK(strstr(perr.message, "more than 8 fields") != NULL);
  /* Escaped fields need the arena: a full one is ATP_ENOMEM, not a crash. */
  atp_arena_t tiny;
  atp_arena_init(&tiny, 256, 256);
  static char big[600];
  memset(big, '"', sizeof big); /* "" escapes all the way: 298 quotes inside */
  atp_csv_init(&csv, big, sizeof big);
  CHECK_EQ(atp_csv_next(&csv, &tiny, f, 8, &n, &perr), ATP_ENOMEM);
  atp_arena_destroy(&tiny);
}

TEST_MAIN({
  atp_arena_init(&arena, 4096, 1 << 20);
  RUN(test_plain_records);
  RUN(test_no_final_newline_blank_lines_bom);
  RUN(test_empty_fields);
  RUN(test_quoted);
  RUN(test_refusals);
  atp_arena_destroy(&arena);
})
