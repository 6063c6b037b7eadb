/* test.h - the unit tests' tiny runner.
 *
 * A test is a void function; CHECK records a failure with its place and goes
 * on, REQUIRE stops the test. main() is TEST_MAIN(RUN(a); RUN(b); ...). The last
 * line printed is "N passed, N failed" (tests/run.sh sums those lines); the exit
 * status is 1 when anything failed. A test whose name is given in argv[1] runs
 * alone.
 */
#ifndef ATP_TEST_H
#define ATP_TEST_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int test_failed_now;
static int tests_passed;
static int tests_failed;

#define CHECK(cond)                                                              \
  do {                                                                           \
    if (!(cond)) {                                                               \
      fprintf(stderr, "  %s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
      test_failed_now = 1;                                                       \
    }                                                                            \
  } while (0)

#define CHECK_EQ(a, b)                                                                \
  do {                                                                                \
    long long check_a_ = (long long)(a), check_b_ = (long long)(b);                   \
    if (check_a_ != check_b_) {                                                       \
      fprintf(stderr, "  %s:%d: %s == %s failed: %lld != %lld\n", __FILE__, __LINE__, \
              #a, #b, check_a_, check_b_);                                            \
      test_failed_now = 1;                                                            \
    }                                                                                 \
  } while (0)

#define REQUIRE(cond)                                                              \
  do {                                                                             \
    if (!(cond)) {                                                                 \
      fprintf(stderr, "  %s:%d: REQUIRE(%s) failed\n", __FILE__, __LINE__, #cond); \
      test_failed_now = 1;                                                         \
      return;                                                                      \
    }                                                                              \
  } while (0)

#define RUN(fn)                                            \
  do {                                                     \
    if (test_only_ && strcmp(test_only_, #fn) != 0) break; \
    test_failed_now = 0;                                   \
    fn();                                                  \
    if (test_failed_now) {                                 \
      tests_failed++;                                      \
      printf("FAIL %s\n", #fn);                            \
    } else {                                               \
      tests_passed++;                                      \
      printf("ok   %s\n", #fn);                            \
    }                                                      \
    fflush(stdout);                                        \
  } while (0)

#define TEST_MAIN(body)                                           \
  int main(int argc, char **argv) {                               \
    const char *test_only_ = argc > 1 ? argv[1] : NULL;           \
    setvbuf(stdout, NULL, _IOLBF, 0);                             \
    body;                                                         \
    printf("%d passed, %d failed\n", tests_passed, tests_failed); \
    return tests_failed ? 1 : 0;                                  \
  }

#endif
