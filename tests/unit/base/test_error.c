/* test_error.c - the one error table (include/atp/error.h): every code has its
 * contract string, HTTP status and message, and the look-ups agree with it. */
#include <stdbool.h>
#include <string.h>

#include "atp/error.h"
#include "atp/limits.h"
#include "test.h"

typedef struct {
  int value;
  const char *code;
  int status;
  const char *message;
} row_t;

static const row_t rows[] = {
#define ROW(name, value, code, status, message) {value, code, status, message},
    ATP_ERRNO_MAP(ROW)
#undef ROW
};
#define ROWS (sizeof rows / sizeof rows[0])

/* Each value from -1 down to ATP_ERRNO_MIN appears exactly once, so no code
 * can shadow another and ATP_ERRNO_MIN is the table's real end. */
static void test_values_dense_and_unique(void) {
  CHECK_EQ(ROWS, -ATP_ERRNO_MIN);
  for (int v = -1; v >= ATP_ERRNO_MIN; v--) {
    int seen = 0;
    for (size_t i = 0; i < ROWS; i++) seen += rows[i].value == v;
    CHECK_EQ(seen, 1);
  }
}

/* The look-ups return the table's columns, and every row has all of them. */
static void test_lookups_follow_the_table(void) {
  for (size_t i = 0; i < ROWS; i++) {
    const row_t *r = &rows[i];
    CHECK(strcmp(atp_strerror_code(r->value), r->code) == 0);
    CHECK_EQ(atp_error_http_status(r->value), r->status);
    CHECK(strcmp(atp_strerror(r->value), r->message) == 0);
    CHECK(r->status >= 400 && r->status <= 599);
    size_t n = strlen(r->message);
    CHECK(n > 1 && r->message[n - 1] == '.');
  }
  CHECK(strcmp(atp_strerror(ATP_EBADREQ), "The request is malformed.") == 0);
  CHECK(strcmp(atp_strerror_code(ATP_EURITOOLONG), "uri_too_long") == 0);
  CHECK_EQ(atp_error_http_status(ATP_EURITOOLONG), 414);
}

/* Values outside the table (0 is success, not an error) are "internal". */
static void test_unknown_is_internal(void) {
  const int unknown[] = {0, 1, ATP_ERRNO_MIN - 1, -1000};
  for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
    CHECK(strcmp(atp_strerror_code(unknown[i]), "internal") == 0);
    CHECK_EQ(atp_error_http_status(unknown[i]), 500);
    CHECK(strcmp(atp_strerror(unknown[i]), "Internal error.") == 0);
  }
}

/* The messages that quote a limit quote the one in limits.h. */
static void test_messages_match_limits(void) {
  CHECK_EQ(ATP_HTTP_HEADER_BYTES_MAX, 64 * 1024);
  CHECK(strstr(atp_strerror(ATP_EHEADERS), "64 KiB") != NULL);
  CHECK_EQ(ATP_HTTP_URL_BYTES_MAX, 8 * 1024);
  CHECK(strstr(atp_strerror(ATP_EURITOOLONG), "8 KiB") != NULL);
}

TEST_MAIN({
  RUN(test_values_dense_and_unique);
  RUN(test_lookups_follow_the_table);
  RUN(test_unknown_is_internal);
  RUN(test_messages_match_limits);
})
