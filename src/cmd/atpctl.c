/* atpctl.c - bin/atpctl, the operator's command line for atpd.
 *
 *   atpctl [--url URL] [--token T] get SKU [LOCATION]
 *   atpctl [--url URL] [--token T] group SKU GROUP
 *   atpctl [--url URL] [--token T] reserve ID SKU LOCATION QTY [TTL_MS]
 *   atpctl [--url URL] [--token T] commit|release|show ID
 *   atpctl [--url URL] health | metrics
 *
 * URL defaults to $ATPD_URL or http://127.0.0.1:8080, the token to $ATPD_TOKEN.
 * One plain-socket HTTP/1.1 request per run with Connection: close; the body is
 * printed on stdout. Exit status: 0 for 2xx, 1 for any other answer, 2 for a
 * usage or connection error.
 */
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "atp/memory.h"

#define REQUEST_BYTES_MAX  8192
#define RESPONSE_BYTES_MAX (64u << 20)
#define TIMEOUT_S          10

typedef struct {
  char host[256];
  char port[8];
} target_t;

static int usage(void) {
  fputs(
      "usage: atpctl [--url URL] [--token T] COMMAND\n"
      "  get SKU [LOCATION]                   availability at a location or "
      "everywhere\n"
      "  group SKU GROUP                      availability over a location group\n"
      "  reserve ID SKU LOCATION QTY [TTL_MS] hold stock for a checkout\n"
      "  show ID | commit ID | release ID     a reservation\n"
      "  health                               /healthz and /readyz\n"
      "  metrics                              the Prometheus text\n"
      "URL defaults to $ATPD_URL or http://127.0.0.1:8080, the token to $ATPD_TOKEN.\n",
      stderr);
  return 2;
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

/* Sends one request, prints the body; returns the HTTP status or -1. */
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
    fprintf(stderr, "atpctl: request too long\n");
    return -1;
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
  return status < 0 ? 2 : status < 300 ? 0 : 1;
}

int main(int argc, char **argv) {
  const char *url = getenv("ATPD_URL");
  const char *token = getenv("ATPD_TOKEN");
  int a = 1;
  for (; a < argc && argv[a][0] == '-'; a++) {
    if (!strcmp(argv[a], "--url") && a + 1 < argc)
      url = argv[++a];
    else if (!strcmp(argv[a], "--token") && a + 1 < argc)
      token = argv[++a];
    else
      return usage();
  }
  if (token && !*token) token = NULL;
  target_t t;
  if (parse_url(url ? url : "http://127.0.0.1:8080", &t) != 0) {
    fprintf(stderr, "atpctl: the URL must look like http://HOST:PORT\n");
    return 2;
  }
  if (a >= argc) return usage();
  const char *cmd = argv[a++];
  int rest = argc - a;
  char path[4096] = "", body[4096] = "";
  if (!strcmp(cmd, "get") && (rest == 1 || rest == 2)) {
    strcpy(path, "/v1/availability?sku=");
    url_encode(path, sizeof path, argv[a]);
    if (rest == 2) {
      strcat(path, "&location=");
      url_encode(path, sizeof path, argv[a + 1]);
    }
    return exit_code(http_call(&t, token, "GET", path, NULL));
  }
  if (!strcmp(cmd, "group") && rest == 2) {
    strcpy(path, "/v1/availability?sku=");
    url_encode(path, sizeof path, argv[a]);
    strcat(path, "&group=");
    url_encode(path, sizeof path, argv[a + 1]);
    return exit_code(http_call(&t, token, "GET", path, NULL));
  }
  if (!strcmp(cmd, "reserve") && (rest == 4 || rest == 5)) {
    char *end = NULL;
    long long qty = strtoll(argv[a + 3], &end, 10);
    if (*end || qty < 1) return usage();
    strcpy(body, "{\"id\":");
    json_str(body, sizeof body, argv[a]);
    strcat(body, ",\"lines\":[{\"sku\":");
    json_str(body, sizeof body, argv[a + 1]);
    strcat(body, ",\"location\":");
    json_str(body, sizeof body, argv[a + 2]);
    snprintf(body + strlen(body), sizeof body - strlen(body), ",\"qty\":%lld}]", qty);
    if (rest == 5) {
      long long ttl = strtoll(argv[a + 4], &end, 10);
      if (*end || ttl < 1) return usage();
      snprintf(body + strlen(body), sizeof body - strlen(body), ",\"ttl_ms\":%lld",
               ttl);
    }
    strcat(body, ",\"channel\":\"atpctl\"}");
    return exit_code(http_call(&t, token, "POST", "/v1/reservations", body));
  }
  if ((!strcmp(cmd, "show") || !strcmp(cmd, "commit") || !strcmp(cmd, "release")) &&
      rest == 1) {
    strcpy(path, "/v1/reservations/");
    url_encode(path, sizeof path, argv[a]);
    if (!strcmp(cmd, "show")) return exit_code(http_call(&t, token, "GET", path, NULL));
    strcat(path, !strcmp(cmd, "commit") ? "/commit" : "/release");
    return exit_code(http_call(&t, token, "POST", path, "{}"));
  }
  if (!strcmp(cmd, "health") && rest == 0) {
    int s = http_call(&t, token, "GET", "/healthz", NULL);
    if (s < 0) return 2;
    int r = http_call(&t, token, "GET", "/readyz", NULL);
    return exit_code(s >= 300 ? s : r);
  }
  if (!strcmp(cmd, "metrics") && rest == 0)
    return exit_code(http_call(&t, token, "GET", "/metrics", NULL));
  return usage();
}
