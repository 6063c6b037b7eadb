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

#include "atp/assert.h"
#include "atp/limits.h"
#include "atp/memory.h"
#include "atp/version.h"

/* Positional arguments one command line may carry (the longest command
 * takes six); more is a usage error, not a bigger array. */
#define ARGS_MAX 16

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

/* http://HOST[:PORT][/...] into t; false when url is not of that shape. */
static bool parse_url(const char *url, target_t *t) {
  if (strncmp(url, "http://", 7) != 0) return false;
  const char *h = url + 7;
  size_t n = strcspn(h, ":/");
  if (n == 0 || n >= sizeof t->host) return false;
  memcpy(t->host, h, n);
  t->host[n] = '\0';
  strcpy(t->port, "80");
  if (h[n] == ':') {
    size_t p = strcspn(h + n + 1, "/");
    if (p == 0 || p >= sizeof t->port) return false;
    memcpy(t->port, h + n + 1, p);
    t->port[p] = '\0';
  }
  return true;
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

/* A connected socket, or -1 (said on stderr) when no address of t answers. */
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
    struct timeval tv = {ATP_CTL_TIMEOUT_MS / 1000, (ATP_CTL_TIMEOUT_MS % 1000) * 1000};
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

/* Writes all n bytes; false (errno set) when the socket refuses them. */
static bool write_all(int fd, const char *p, size_t n) {
  while (n) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= (size_t)w;
  }
  return true;
}

/* What http_call returns when there is no HTTP status to return: negative,
 * so no status (100..599) can be mistaken for them. */
enum {
  CALL_UNREACHABLE = -1, /* the server cannot be reached or its answer read */
  CALL_TOO_LONG = -2,    /* the arguments make a request over the limit */
};

/* Sends one request, prints the body; returns the HTTP status or a CALL_*. */
static int http_call(const target_t *t, const char *token, const char *method,
                     const char *path, const char *body) {
  char req[ATP_CTL_REQUEST_BYTES_MAX];
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
            ATP_CTL_REQUEST_BYTES_MAX);
    return CALL_TOO_LONG;
  }
  if (body) memcpy(req + n, body, body_len);
  int fd = connect_to(t);
  if (fd < 0) return CALL_UNREACHABLE;
  if (!write_all(fd, req, (size_t)n + body_len)) {
    fprintf(stderr, "atpctl: write: %s\n", strerror(errno));
    close(fd);
    return CALL_UNREACHABLE;
  }
  size_t cap = 65536, len = 0;
  char *buf = atp_malloc(cap);
  for (;;) {
    if (!buf) break;
    if (len + 1 == cap) {
      if (cap >= ATP_CTL_RESPONSE_BYTES_MAX) break;
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
  int status = CALL_UNREACHABLE;
  if (buf) {
    buf[len] = '\0';
    char *head_end = strstr(buf, "\r\n\r\n");
    if (sscanf(buf, "HTTP/1.%*d %d", &status) != 1 || !head_end) {
      fprintf(stderr, "atpctl: malformed response\n");
      status = CALL_UNREACHABLE;
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
  return status == CALL_TOO_LONG ? EXIT_USAGE
         : status < 0            ? EXIT_UNREACHABLE
         : status < 300          ? 0
                                 : EXIT_ANSWER;
}

/* A positive integer argument; false after a usage error naming it. */
static bool positive(const char *name, const char *text, long long *out) {
  char *end = NULL;
  errno = 0;
  long long v = strtoll(text, &end, 10);
  if (!*text || *end || errno || v < 1) {
    usage_error("%s must be a positive integer, got '%s'", name, text);
    return false;
  }
  *out = v;
  return true;
}

/* One parsed command line: the options and the positional arguments. */
typedef struct {
  const char *url;     /* NULL: the default */
  const char *token;   /* NULL: no Authorization header */
  const char *channel; /* NULL: DEFAULT_CHANNEL; only reserve takes it */
  char *pos[ARGS_MAX]; /* pos[0] is the command */
  int npos;
} args_t;

/* What a command runs with: where to, as whom, its arguments. */
typedef struct {
  target_t target;
  const char *token;
  const char *channel;
  char **argv; /* the command's own arguments, after its name */
  int argc;
} call_t;

typedef struct {
  const char *name;
  int min, max; /* positional arguments after the command */
  const char *args;
  int (*run)(const call_t *c); /* returns the exit status */
} command_t;

/* get SKU [LOCATION] */
static int run_get(const call_t *c) {
  char path[4096] = "/v1/availability?sku=";
  url_encode(path, sizeof path, c->argv[0]);
  if (c->argc == 2) {
    strcat(path, "&location=");
    url_encode(path, sizeof path, c->argv[1]);
  }
  return exit_code(http_call(&c->target, c->token, "GET", path, NULL));
}

/* group SKU GROUP */
static int run_group(const call_t *c) {
  char path[4096] = "/v1/availability?sku=";
  url_encode(path, sizeof path, c->argv[0]);
  strcat(path, "&group=");
  url_encode(path, sizeof path, c->argv[1]);
  return exit_code(http_call(&c->target, c->token, "GET", path, NULL));
}

/* reserve ID SKU LOCATION QTY [TTL_MS]: one line, the channel's hold. */
static int run_reserve(const call_t *c) {
  long long qty = 0, ttl = 0;
  if (!positive("QTY", c->argv[3], &qty)) return EXIT_USAGE;
  if (c->argc == 5 && !positive("TTL_MS", c->argv[4], &ttl)) return EXIT_USAGE;
  char body[4096] = "{\"id\":";
  json_str(body, sizeof body, c->argv[0]);
  strcat(body, ",\"lines\":[{\"sku\":");
  json_str(body, sizeof body, c->argv[1]);
  strcat(body, ",\"location\":");
  json_str(body, sizeof body, c->argv[2]);
  snprintf(body + strlen(body), sizeof body - strlen(body), ",\"qty\":%lld}]", qty);
  if (c->argc == 5)
    snprintf(body + strlen(body), sizeof body - strlen(body), ",\"ttl_ms\":%lld", ttl);
  strcat(body, ",\"channel\":");
  json_str(body, sizeof body, c->channel ? c->channel : DEFAULT_CHANNEL);
  strcat(body, "}");
  return exit_code(http_call(&c->target, c->token, "POST", "/v1/reservations", body));
}

/* show ID */
static int run_show(const call_t *c) {
  char path[4096] = "/v1/reservations/";
  url_encode(path, sizeof path, c->argv[0]);
  return exit_code(http_call(&c->target, c->token, "GET", path, NULL));
}

/* commit ID | release ID: POST /v1/reservations/ID/ACTION with an empty body. */
static int reservation_action(const call_t *c, const char *action) {
  char path[4096] = "/v1/reservations/";
  url_encode(path, sizeof path, c->argv[0]);
  strcat(path, action);
  return exit_code(http_call(&c->target, c->token, "POST", path, "{}"));
}

static int run_commit(const call_t *c) {
  return reservation_action(c, "/commit");
}

static int run_release(const call_t *c) {
  return reservation_action(c, "/release");
}

/* health: /healthz, then /readyz; the first answer that is not 2xx decides. */
static int run_health(const call_t *c) {
  int s = http_call(&c->target, c->token, "GET", "/healthz", NULL);
  if (s < 0) return exit_code(s);
  int r = http_call(&c->target, c->token, "GET", "/readyz", NULL);
  return exit_code(s >= 300 ? s : r);
}

static int run_metrics(const call_t *c) {
  return exit_code(http_call(&c->target, c->token, "GET", "/metrics", NULL));
}

static const command_t commands[] = {
    {"get", 1, 2, "SKU [LOCATION]", run_get},
    {"group", 2, 2, "SKU GROUP", run_group},
    {"reserve", 4, 5, "ID SKU LOCATION QTY [TTL_MS]", run_reserve},
    {"show", 1, 1, "ID", run_show},
    {"commit", 1, 1, "ID", run_commit},
    {"release", 1, 1, "ID", run_release},
    {"health", 0, 0, "no arguments", run_health},
    {"metrics", 0, 0, "no arguments", run_metrics},
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

/* Reads options (anywhere on the line, "--" ends them) and positional
 * arguments into args. Returns true to go on; false when the run ends here
 * (--help, --version, a usage error) with its exit status in *exit_status. */
static bool parse_args(int argc, char **argv, args_t *args, int *exit_status) {
  args->url = getenv("ATPD_URL");
  args->token = getenv("ATPD_TOKEN");
  args->channel = NULL;
  args->npos = 0;
  bool options_done = false;
  *exit_status = EXIT_USAGE;
  for (int a = 1; a < argc; a++) {
    const char *arg = argv[a];
    if (options_done || arg[0] != '-' || !strcmp(arg, "-")) {
      if (args->npos == ARGS_MAX) return usage_error("too many arguments"), false;
      args->pos[args->npos++] = argv[a];
      continue;
    }
    if (!strcmp(arg, "--")) {
      options_done = true;
      continue;
    }
    if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
      fputs(usage_text, stdout);
      *exit_status = 0;
      return false;
    }
    if (!strcmp(arg, "--version")) {
      puts("atpctl " ATP_VERSION);
      *exit_status = 0;
      return false;
    }
    bool missing = false;
    const char *v;
    if ((v = option_value(argc, argv, &a, "--url", &missing)))
      args->url = v;
    else if ((v = option_value(argc, argv, &a, "--token", &missing)))
      args->token = v;
    else if ((v = option_value(argc, argv, &a, "--channel", &missing)))
      args->channel = v;
    else if (missing)
      return usage_error("%s needs a value", arg), false;
    else
      return usage_error("unknown option '%s'", arg), false;
  }
  if (args->token && !*args->token) args->token = NULL;
  ATP_ASSERT(args->npos <= ARGS_MAX);
  return true;
}

/* The command args names, checked against its arity and options; NULL after
 * a usage error. */
static const command_t *find_command(const args_t *args) {
  if (args->npos == 0) return usage_error("no command given"), NULL;
  const char *cmd = args->pos[0];
  const command_t *known = NULL;
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    if (!strcmp(cmd, commands[i].name)) known = &commands[i];
  if (!known) return usage_error("unknown command '%s'", cmd), NULL;
  int rest = args->npos - 1;
  if (rest < known->min || rest > known->max)
    return usage_error("%s takes %s", cmd, known->args), NULL;
  if (args->channel && known->run != run_reserve)
    return usage_error("--channel only applies to reserve"), NULL;
  if (args->channel && !*args->channel)
    return usage_error("--channel needs a value"), NULL;
  return known;
}

int main(int argc, char **argv) {
  args_t args;
  int exit_status;
  if (!parse_args(argc, argv, &args, &exit_status)) return exit_status;
  call_t call = {.token = args.token, .channel = args.channel};
  if (!parse_url(args.url ? args.url : "http://127.0.0.1:8080", &call.target))
    return usage_error("the URL must look like http://HOST:PORT, got '%s'", args.url);
  const command_t *command = find_command(&args);
  if (!command) return EXIT_USAGE;
  call.argv = args.pos + 1;
  call.argc = args.npos - 1;
  ATP_ASSERT(call.argc >= command->min && call.argc <= command->max);
  return command->run(&call);
}
