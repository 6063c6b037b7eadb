/* assert.c - the failure path of ATP_ASSERT (see atp/assert.h). */
#include "atp/assert.h"

#include <stdio.h>
#include <stdlib.h>

_Noreturn void atp_assert_fail(const char *expr, const char *file, int line,
                               const char *func) {
  fprintf(stderr, "atpd: assertion failed: %s (%s:%d, %s)\n", expr, file, line, func);
  fflush(stderr);
  abort();
}
