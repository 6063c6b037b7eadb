/* atpctl.c - bin/atpctl, the operator's command line for atpd.
 *
 *   atpctl [--url URL] [--token T] get SKU [LOCATION]
 *   atpctl [--url URL] [--token T] group SKU GROUP
 *   atpctl [--url URL] [--token T] reserve [--channel C] ID SKU LOCATION QTY [TTL_MS]
 *   atpctl [--url URL] [--token T] commit|release|show ID
 *   atpctl [--url URL] health | metrics
 *   atpctl --help | --version
 *
 * URL defaults to $ATPD_URL or http://127.0.0.1:8080, the token to $ATPD_TOKEN.
 * Options may come anywhere on the line ("--" ends them). One plain-socket
 * HTTP/1.1 request per run with Connection: close; the body is printed on
 * stdout. Exit status: 0 for 2xx, 1 for any other answer, 2 for a usage error
 * (what was wrong, then the usage, on stderr), 3 when the server cannot be
 * reached or its answer cannot be read.
 */
#include <assert.h>
#include <errno.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "atp/memory.h"
#include "atp/version.h"

#define REQUEST_BYTES_MAX  8192
#define RESPONSE_BYTES_MAX (64u << 20)
#define TIMEOUT_S          10
#define ARGS_MAX           16

#define EXIT_ANSWER      1 /* the server answered, not 2xx */
#define EXIT_USAGE       2
#define EXIT_UNREACHABLE 3

/* The shipped deploy/ownership.example.json lets "checkout" write
 * reservations; a channel it refuses would make the first try a 403. */
#define DEFAULT_CHANNEL "checkout"

typedef struct {
  char host[256];
  char port[8];
} target_t;

static const char usage_text[] =
    "usage: atpctl [--url URL] [--token T] COMMAND\n"
    "  get SKU [LOCATION]                   availability at a location or everywhere\n"
    "  group SKU GROUP                      availability over a location group\n"
    "  reserve ID SKU LOCATION QTY [TTL_MS] hold stock for a checkout\n"
    "      [--channel C]                    the sales channel, default " DEFAULT_CHANNEL
    "\n"
    "  show ID | commit ID | release ID     a reservation\n"
    "  health                               /healthz and /readyz\n"
    "  metrics                              the Prometheus text\n"
    "  --help | --version\n"
    "URL defaults to $ATPD_URL or http://127.0.0.1:8080, the token to $ATPD_TOKEN.\n"
    "Exit status: 0 for a 2xx answer, 1 for any other answer, 2 for a usage error,\n"
    "3 when the server cannot be reached.\n";

/* Says what was wrong, then the usage, on stderr; returns the usage code. */
static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("atpctl: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  fputs(usage_text, stderr);
  return EXIT_USAGE;
}

static int parse_url(const char *url, target_t *t) {
  if (strncmp(url, "http://", 7) != 0) return -1;
  const char *h = url + 7;
  size_t n = strcspn(h, ":/");
  if (n == 0 || n >= sizeof t->host) return -1;
  memcpy(t->host, h, n);
  t->host[n] = '\0';
  strcpy(t->port, "80");
  if (h[n] == ':') {
    size_t p = strcspn(h + n + 1, "/");
    if (p == 0 || p >= sizeof t->port) return -1;
    memcpy(t->port, h + n + 1, p);
    t->port[p] = '\0';
  }
  return 0;
}

/* Appends s percent-encoded for a query string. */
static void url_encode(char *out, size_t cap, const char *s) {
  static const char hex[] = "0123456789ABCDEF";
  size_t n = strlen(out);
  for (; *s && n + 4 < cap; s++) {
    unsigned char c = (unsigned char)*s;
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
        c == '-' || c == '_' || c == '.' || c == '~') {
      out[n++] = (char)c;
    } else {
      out[n++] = '%';
      out[n++] = hex[c >> 4];
      out[n++] = hex[c & 15];
    }
  }
  out[n] = '\0';
}

/* Appends s as a JSON string. */
static void json_str(char *out, size_t cap, const char *s) {
  size_t n = strlen(out);
  if (n + 2 >= cap) return;
  out[n++] = '"';
  for (; *s && n + 8 < cap; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') {
      out[n++] = '\\';
      out[n++] = (char)c;
    } else if (c < 0x20) {
      n += (size_t)snprintf(out + n, cap - n, "\\u%04x", c);
    } else {
      out[n++] = (char)c;
    }
  }
  out[n++] = '"';
  out[n] = '\0';
}

static int connect_to(const target_t *t) {
  struct addrinfo hints, *res = NULL;
  memset(&hints, 0, sizeof hints);
  hints.ai_socktype = SOCK_STREAM;
  int rc = getaddrinfo(t->host, t->port, &hints, &res);
  if (rc != 0) {
    fprintf(stderr, "atpctl: %s: %s\n", t->host, gai_strerror(rc));
    return -1;
  }
  int fd = -1;
  for (struct addrinfo *a = res; a; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
    if (fd < 0) continue;
    struct timeval tv = {TIMEOUT_S, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) break;
    close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  if (fd < 0)
    fprintf(stderr, "atpctl: cannot connect to %s:%s: %s\n", t->host, t->port,
            strerror(errno));
  return fd;
}

static int write_all(int fd, const char *p, size_t n) {
  while (n) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return -1;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* Sends one request, prints the body; returns the HTTP status, -1 when the
 * server cannot be reached or read, -2 when the request is too long. */
static int http_call(const target_t *t, const char *token, const char *method,
                     const char *path, const char *body) {
  char req[REQUEST_BYTES_MAX];
  size_t body_len = body ? strlen(body) : 0;
  int n = snprintf(
      req, sizeof req,
      "%s %s HTTP/1.1\r\nHost: %s:%s\r\nAccept: application/json\r\n"
      "Connection: close\r\n%s%s%s%s%zu\r\n\r\n",
      method, path, t->host, t->port, token ? "Authorization: Bearer " : "",
      token ? token : "", token ? "\r\n" : "",
      body ? "Content-Type: application/json\r\nContent-Length: " : "Content-Length: ",
      body_len);
  if (n < 0 || (size_t)n + body_len >= sizeof req) {
    fprintf(stderr, "atpctl: the arguments make a request over %d bytes\n",
            REQUEST_BYTES_MAX);
    return -2;
  }
  if (body) memcpy(req + n, body, body_len);
  int fd = connect_to(t);
  if (fd < 0) return -1;
  if (write_all(fd, req, (size_t)n + body_len) != 0) {
    fprintf(stderr, "atpctl: write: %s\n", strerror(errno));
    close(fd);
    return -1;
  }
  size_t cap = 65536, len = 0;
  char *buf = atp_malloc(cap);
  for (;;) {
    if (!buf) break;
    if (len + 1 == cap) {
      if (cap >= RESPONSE_BYTES_MAX) break;
      char *bigger = atp_realloc(buf, cap * 2);
      if (!bigger) break;
      buf = bigger;
      cap *= 2;
    }
    ssize_t r = read(fd, buf + len, cap - len - 1);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    len += (size_t)r;
  }
  close(fd);
  int status = -1;
  if (buf) {
    buf[len] = '\0';
    char *head_end = strstr(buf, "\r\n\r\n");
    if (sscanf(buf, "HTTP/1.%*d %d", &status) != 1 || !head_end) {
      fprintf(stderr, "atpctl: malformed response\n");
      status = -1;
    } else {
      fwrite(head_end + 4, 1, len - (size_t)(head_end + 4 - buf), stdout);
      if (len && buf[len - 1] != '\n') fputc('\n', stdout);
    }
  }
  atp_free(buf);
  if (status >= 300) fprintf(stderr, "atpctl: HTTP %d\n", status);
  return status;
}

static int exit_code(int status) {
  return status == -2   ? EXIT_USAGE
         : status < 0   ? EXIT_UNREACHABLE
         : status < 300 ? 0
                        : EXIT_ANSWER;
}

/* A positive integer argument, or a usage error naming it. */
static int positive(const char *name, const char *text, long long *out) {
  char *end = NULL;
  errno = 0;
  long long v = strtoll(text, &end, 10);
  if (!*text || *end || errno || v < 1) {
    usage_error("%s must be a positive integer, got '%s'", name, text);
    return -1;
  }
  *out = v;
  return 0;
}

typedef struct {
  const char *name;
  int min, max; /* positional arguments after the command */
  const char *args;
} command_t;

static const command_t commands[] = {
    {"get", 1, 2, "SKU [LOCATION]"},
    {"group", 2, 2, "SKU GROUP"},
    {"reserve", 4, 5, "ID SKU LOCATION QTY [TTL_MS]"},
    {"show", 1, 1, "ID"},
    {"commit", 1, 1, "ID"},
    {"release", 1, 1, "ID"},
    {"health", 0, 0, "no arguments"},
    {"metrics", 0, 0, "no arguments"},
};

/* --name VALUE or --name=VALUE at argv[*a]; NULL when argv[*a] is not it. */
static const char *option_value(int argc, char **argv, int *a, const char *name,
                                bool *missing) {
  size_t n = strlen(name);
  const char *arg = argv[*a];
  if (strncmp(arg, name, n) != 0) return NULL;
  if (arg[n] == '=') return arg + n + 1;
  if (arg[n] != '\0') return NULL;
  if (*a + 1 >= argc) {
    *missing = true;
    return NULL;
  }
  return argv[++*a];
}

int main(int argc, char **argv) {
  const char *url = getenv("ATPD_URL");
  const char *token = getenv("ATPD_TOKEN");
  const char *channel = NULL;
  char *pos[ARGS_MAX];
  int npos = 0;
  bool options_done = false;
  for (int a = 1; a < argc; a++) {
    const char *arg = argv[a];
    if (options_done || arg[0] != '-' || !strcmp(arg, "-")) {
      if (npos == ARGS_MAX) return usage_error("too many arguments");
      pos[npos++] = argv[a];
      continue;
    }
    if (!strcmp(arg, "--")) {
      options_done = true;
      continue;
    }
    if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
      fputs(usage_text, stdout);
      return 0;
    }
    if (!strcmp(arg, "--version")) {
      puts("atpctl " ATP_VERSION);
      return 0;
    }
    bool missing = false;
    const char *v;
    if ((v = option_value(argc, argv, &a, "--url", &missing)))
      url = v;
    else if ((v = option_value(argc, argv, &a, "--token", &missing)))
      token = v;
    else if ((v = option_value(argc, argv, &a, "--channel", &missing)))
      channel = v;
    else if (missing)
      return usage_error("%s needs a value", arg);
    else
      return usage_error("unknown option '%s'", arg);
  }
  if (token && !*token) token = NULL;
  target_t t;
  if (parse_url(url ? url : "http://127.0.0.1:8080", &t) != 0)
    return usage_error("the URL must look like http://HOST:PORT, got '%s'", url);
  if (npos == 0) return usage_error("no command given");
  const char *cmd = pos[0];
  const command_t *known = NULL;
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    if (!strcmp(cmd, commands[i].name)) known = &commands[i];
  if (!known) return usage_error("unknown command '%s'", cmd);
  int rest = npos - 1;
  if (rest < known->min || rest > known->max)
    return usage_error("%s takes %s", cmd, known->args);
  if (channel && strcmp(cmd, "reserve") != 0)
    return usage_error("--channel only applies to reserve");
  if (channel && !*channel) return usage_error("--channel needs a value");
  argv = pos;
  int a = 1;
  char path[4096] = "", body[4096] = "";
  if (!strcmp(cmd, "get")) {
    strcpy(path, "/v1/availability?sku=");
    url_encode(path, sizeof path, argv[a]);
    if (rest == 2) {
      strcat(path, "&location=");
      url_encode(path, sizeof path, argv[a + 1]);
    }
    return exit_code(http_call(&t, token, "GET", path, NULL));
  }
  if (!strcmp(cmd, "group")) {
    strcpy(path, "/v1/availability?sku=");
    url_encode(path, sizeof path, argv[a]);
    strcat(path, "&group=");
    url_encode(path, sizeof path, argv[a + 1]);
    return exit_code(http_call(&t, token, "GET", path, NULL));
  }
  if (!strcmp(cmd, "reserve")) {
    long long qty = 0, ttl = 0;
    if (positive("QTY", argv[a + 3], &qty) != 0) return EXIT_USAGE;
    if (rest == 5 && positive("TTL_MS", argv[a + 4], &ttl) != 0) return EXIT_USAGE;
    strcpy(body, "{\"id\":");
    json_str(body, sizeof body, argv[a]);
    strcat(body, ",\"lines\":[{\"sku\":");
    json_str(body, sizeof body, argv[a + 1]);
    strcat(body, ",\"location\":");
    json_str(body, sizeof body, argv[a + 2]);
    snprintf(body + strlen(body), sizeof body - strlen(body), ",\"qty\":%lld}]", qty);
    if (rest == 5)
      snprintf(body + strlen(body), sizeof body - strlen(body), ",\"ttl_ms\":%lld",
               ttl);
    strcat(body, ",\"channel\":");
    json_str(body, sizeof body, channel ? channel : DEFAULT_CHANNEL);
    strcat(body, "}");
    return exit_code(http_call(&t, token, "POST", "/v1/reservations", body));
  }
  if (!strcmp(cmd, "show") || !strcmp(cmd, "commit") || !strcmp(cmd, "release")) {
    strcpy(path, "/v1/reservations/");
    url_encode(path, sizeof path, argv[a]);
    if (!strcmp(cmd, "show")) return exit_code(http_call(&t, token, "GET", path, NULL));
    strcat(path, !strcmp(cmd, "commit") ? "/commit" : "/release");
    return exit_code(http_call(&t, token, "POST", path, "{}"));
  }
  if (!strcmp(cmd, "health")) {
    int s = http_call(&t, token, "GET", "/healthz", NULL);
    if (s < 0) return EXIT_UNREACHABLE;
    int r = http_call(&t, token, "GET", "/readyz", NULL);
    return exit_code(s >= 300 ? s : r);
  }
  assert(!strcmp(cmd, "metrics"));
  return exit_code(http_call(&t, token, "GET", "/metrics", NULL));
}
