/* log.c - one-line JSON logs to stderr (see log.h). */
#include "atp/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#include "atp/limits.h"

static long long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void emit(const char *line, size_t len) {
  ssize_t w = write(STDERR_FILENO, line, len);
  (void)w; /* a full or closed stderr must not stop serving */
}

void atp_log(const char *level, const char *fmt, ...) {
  char msg[ATP_LOG_LINE_BYTES_MAX / 2];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  char line[ATP_LOG_LINE_BYTES_MAX];
  int used = snprintf(line, sizeof line, "{\"ts\":%lld,\"level\":\"%s\",\"msg\":\"",
                      now_ms(), level);
  /* Escape the message: quotes, backslashes and control bytes. */
  for (const char *p = msg; *p && used < (int)sizeof line - 16; p++) {
    unsigned char c = (unsigned char)*p;
    if (c == '"' || c == '\\') {
      line[used++] = '\\';
      line[used++] = (char)c;
    } else if (c < 0x20) {
      used += snprintf(line + used, sizeof line - (size_t)used, "\\u%04x", c);
    } else {
      line[used++] = (char)c;
    }
  }
  used += snprintf(line + used, sizeof line - (size_t)used, "\"}\n");
  if (used > (int)sizeof line) used = (int)sizeof line;
  emit(line, (size_t)used);
}

void atp_log_access(uint64_t request_id, const char *method, const char *route,
                    int status, int64_t elapsed_ns, size_t body_bytes) {
  char line[384];
  /* method and route come from the static route table: no escaping needed. */
  int n =
      snprintf(line, sizeof line,
               "{\"ts\":%lld,\"level\":\"info\",\"request_id\":%llu,\"method\":\"%s\","
               "\"route\":\"%s\",\"status\":%d,\"ms\":%.3f,\"bytes\":%zu}\n",
               now_ms(), (unsigned long long)request_id, method, route, status,
               (double)elapsed_ns / 1e6, body_bytes);
  if (n > 0 && (size_t)n < sizeof line) emit(line, (size_t)n);
}
