/* feed_lag.c - the change feed's ack-to-delivery lag, measured lean (issue 13,
 * item 6; run by bench/bench_feed.py).
 *
 *   feed_lag HOST PORT AFTER SECONDS [INTERVAL_MS [ACKS_FILE [REDIS_PORT KEY]]]
 *
 * Threads on one CLOCK_MONOTONIC: a prober that POSTs one adjustment (id
 * probe-N, SKU PROBE) every INTERVAL_MS (default 20) on a keep-alive
 * connection and stamps the moment its answer is read, and an SSE reader of
 * GET /v1/changes/stream (after AFTER) that stamps each recv() as it returns
 * and only then looks for "cause_id":"probe-N" in what it got. No JSON is
 * parsed, so the reader's own cost is a memmem over the bytes: what it shows
 * is the server's lag, not a consumer's. A reader cut off for falling behind
 * resumes after its last id (counted). With REDIS_PORT and KEY a third thread
 * reads the Redis stream the sink mirrors to the same way (XREADGROUP NOACK
 * BLOCK on a group made at start; replies walked as RESP only to find their
 * end). Prints "name value" lines; ACKS_FILE gets "N ack_ns" a probe.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PROBES_MAX 100000
#define BUF_BYTES  (4u << 20)

static const char *host;
static int port;
static char after[32];
static int seconds, interval_ms = 20;
static int64_t ack_ns[PROBES_MAX], seen_ns[PROBES_MAX];
static _Atomic int probes_sent;
static atomic_bool stopping;
static uint64_t events, bytes, cuts;
static int64_t first_ns, last_ns;

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int dial_port(int p) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)p)};
  inet_pton(AF_INET, host, &a.sin_addr);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
    perror("connect");
    exit(1);
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

static int dial(void) {
  return dial_port(port);
}

static void send_all(int fd, const char *p, size_t n) {
  while (n) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w <= 0) {
      perror("send");
      exit(1);
    }
    p += w;
    n -= (size_t)w;
  }
}

/* Reads one answer (head with Content-Length, then its body). */
static void read_answer(int fd) {
  static char buf[65536];
  size_t len = 0;
  for (;;) {
    ssize_t r = recv(fd, buf + len, sizeof buf - len - 1, 0);
    if (r <= 0) {
      fprintf(stderr, "probe: connection closed\n");
      exit(1);
    }
    len += (size_t)r;
    buf[len] = 0;
    char *end = strstr(buf, "\r\n\r\n");
    if (!end) continue;
    char *cl = strcasestr(buf, "content-length:");
    size_t body = cl ? strtoul(cl + 15, NULL, 10) : 0;
    if (len >= (size_t)(end + 4 - buf) + body) return;
  }
}

static void *prober(void *arg) {
  (void)arg;
  int fd = dial();
  int64_t end = now_ns() + (int64_t)seconds * 1000000000;
  char req[512], body[256];
  for (int i = 0; i < PROBES_MAX && now_ns() < end; i++) {
    int bn = snprintf(body, sizeof body,
                      "{\"id\":\"probe-%d\",\"sku\":\"PROBE\",\"location\":\"L1\","
                      "\"delta\":1,\"reason\":\"received\",\"source\":\"bench\"}",
                      i);
    int n = snprintf(req, sizeof req,
                     "POST /v1/adjustments HTTP/1.1\r\nHost: x\r\nContent-Type: "
                     "application/json\r\nContent-Length: %d\r\n\r\n%s",
                     bn, body);
    send_all(fd, req, (size_t)n);
    read_answer(fd);
    ack_ns[i] = now_ns();
    atomic_store(&probes_sent, i + 1);
    usleep((useconds_t)interval_ms * 1000);
  }
  close(fd);
  return NULL;
}

/* One complete frame "id: S\ndata: {...}" (or a comment), stamped t. */
static void frame(const char *p, size_t n, int64_t t) {
  if (n > 4 && memcmp(p, "id: ", 4) == 0) {
    size_t k = 0;
    while (k < 31 && 4 + k < n && p[4 + k] != '\n') {
      after[k] = p[4 + k];
      k++;
    }
    after[k] = 0;
    events++;
    if (!first_ns) first_ns = t;
    last_ns = t;
  }
  static const char mark[] = "\"cause_id\":\"probe-";
  const char *m = memmem(p, n, mark, sizeof mark - 1);
  if (!m) return;
  int id = atoi(m + sizeof mark - 1);
  if (id >= 0 && id < PROBES_MAX && !seen_ns[id]) seen_ns[id] = t;
}

static void *reader(void *arg) {
  (void)arg;
  char *buf = malloc(BUF_BYTES);
  while (!atomic_load(&stopping)) {
    int fd = dial();
    struct timeval tv = {.tv_sec = 0, .tv_usec = 200000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char req[256];
    int n = snprintf(req, sizeof req,
                     "GET /v1/changes/stream HTTP/1.1\r\nHost: x\r\nAccept: "
                     "text/event-stream\r\nLast-Event-ID: %s\r\n\r\n",
                     after);
    send_all(fd, req, (size_t)n);
    size_t len = 0;
    bool head = false;
    while (!atomic_load(&stopping)) {
      ssize_t r = recv(fd, buf + len, BUF_BYTES - len, 0);
      int64_t t = now_ns(); /* on receipt, before any look at the bytes */
      if (r < 0) continue;  /* the timeout: look at stopping */
      if (r == 0) {
        cuts++;
        break;
      }
      bytes += (size_t)r;
      len += (size_t)r;
      size_t at = 0;
      if (!head) {
        char *e = memmem(buf, len, "\r\n\r\n", 4);
        if (!e) continue;
        head = true;
        at = (size_t)(e + 4 - buf);
      }
      for (;;) {
        char *e = memmem(buf + at, len - at, "\n\n", 2);
        if (!e) break;
        frame(buf + at, (size_t)(e - (buf + at)), t);
        at = (size_t)(e + 2 - buf);
      }
      memmove(buf, buf + at, len - at);
      len -= at;
      if (len == BUF_BYTES) len = 0; /* a frame beyond 4 MiB: none are */
    }
    close(fd);
  }
  free(buf);
  return NULL;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* --- the Redis stream's reader ----------------------------------------------- */

static int redis_port;
static const char *redis_key;
static int64_t rseen_ns[PROBES_MAX], rfirst_ns, rlast_ns;
static uint64_t revents;

/* The end of the RESP value at buf[at..len), or -1 when it is not all there. */
static long resp_end(const char *buf, long len, long at) {
  if (at >= len) return -1;
  const char *eol = memmem(buf + at, (size_t)(len - at), "\r\n", 2);
  if (!eol) return -1;
  long next = eol + 2 - buf, n = strtol(buf + at + 1, NULL, 10);
  switch (buf[at]) {
    case '$':
      if (n < 0) return next;
      return next + n + 2 <= len ? next + n + 2 : -1;
    case '*':
      for (long i = 0; i < n && next >= 0; i++) next = resp_end(buf, len, next);
      return next;
    default:
      return next;
  }
}

static void resp_send(int fd, int argc, const char **argv) {
  char out[1024];
  int n = snprintf(out, sizeof out, "*%d\r\n", argc);
  for (int i = 0; i < argc; i++)
    n += snprintf(out + n, sizeof out - (size_t)n, "$%zu\r\n%s\r\n", strlen(argv[i]),
                  argv[i]);
  send_all(fd, out, (size_t)n);
}

/* Counts events and stamps probes that end in buf[from..len), received at t
 * (one that ends before from was seen by the call before). */
static void redis_scan(const char *buf, long from, long len, int64_t t) {
  static const char ev[] = "{\"specversion\"", mark[] = "\"cause_id\":\"probe-";
  long start = from > 64 ? from - 64 : 0;
  for (const char *p = buf + start;
       (p = memmem(p, (size_t)(buf + len - p), ev, sizeof ev - 1)) != NULL; p++)
    if (p + sizeof ev - 1 > buf + from) {
      revents++;
      if (!rfirst_ns) rfirst_ns = t;
      rlast_ns = t;
    }
  for (const char *p = buf + start;
       (p = memmem(p, (size_t)(buf + len - p), mark, sizeof mark - 1)) != NULL; p++)
    if (p + sizeof mark + 8 > buf + from) { /* the id's digits too */
      const char *d = p + sizeof mark - 1, *e = d;
      while (e < buf + len && *e >= '0' && *e <= '9') e++;
      if (e == buf + len) break; /* its digits end in the next read */
      int id = atoi(d);
      if (id >= 0 && id < PROBES_MAX && !rseen_ns[id]) rseen_ns[id] = t;
    }
}

static void *redis_reader(void *arg) {
  (void)arg;
  char *buf = malloc(BUF_BYTES);
  int fd = dial_port(redis_port);
  const char *create[] = {"XGROUP", "CREATE", redis_key, "feedlag", "$", "MKSTREAM"};
  resp_send(fd, 6, create);
  const char *next[] = {"XREADGROUP", "GROUP", "feedlag", "c",       "COUNT",   "2000",
                        "BLOCK",      "200",   "NOACK",   "STREAMS", redis_key, ">"};
  long len = 0;
  bool created = false;
  while (!atomic_load(&stopping)) {
    ssize_t r = recv(fd, buf + len, BUF_BYTES - (size_t)len, 0);
    int64_t t = now_ns(); /* on receipt, before any look at the bytes */
    if (r <= 0) break;
    if (created) redis_scan(buf, len, len + r, t);
    len += r;
    long end = resp_end(buf, len, 0);
    if (end < 0) {
      if (len == (long)BUF_BYTES) break; /* COUNT keeps a reply far below */
      continue;
    }
    created = true;
    memmove(buf, buf + end, (size_t)(len - end));
    len -= end;
    resp_send(fd, 12, next);
  }
  close(fd);
  free(buf);
  return NULL;
}

static void report(const char *name, const int64_t *seen, int sent, uint64_t n,
                   int64_t first, int64_t last) {
  static double lags[PROBES_MAX];
  int k = 0;
  for (int i = 0; i < sent; i++)
    if (seen[i]) lags[k++] = (double)(seen[i] - ack_ns[i]) / 1e6;
  qsort(lags, (size_t)k, sizeof lags[0], cmp);
  double span = (double)(last - first) / 1e9;
  printf("feed_%s_events %llu\n", name, (unsigned long long)n);
  printf("feed_%s_events_per_s %.0f\n", name, span > 0 ? (double)n / span : 0.0);
  printf("feed_%s_probes_seen %d/%d\n", name, k, sent);
  if (!k) return;
  printf("feed_%s_lag_p50_ms %.2f\n", name, lags[(k - 1) / 2]);
  printf("feed_%s_lag_p99_ms %.2f\n", name, lags[(int)((k - 1) * 0.99 + 0.5)]);
  printf("feed_%s_lag_max_ms %.2f\n", name, lags[k - 1]);
  printf("feed_%s_lag_min_ms %.2f\n", name, lags[0]);
}

int main(int argc, char **argv) {
  if (argc < 5) {
    fprintf(stderr,
            "usage: feed_lag HOST PORT AFTER SECONDS [INTERVAL_MS [ACKS_FILE "
            "[REDIS_PORT KEY]]]\n");
    return 2;
  }
  host = argv[1];
  port = atoi(argv[2]);
  snprintf(after, sizeof after, "%s", argv[3]);
  seconds = atoi(argv[4]);
  if (argc > 5) interval_ms = atoi(argv[5]);
  const char *acks_path = argc > 6 ? argv[6] : NULL;
  if (argc > 8) {
    redis_port = atoi(argv[7]);
    redis_key = argv[8];
  }
  pthread_t pr, rd, rr;
  pthread_create(&rd, NULL, reader, NULL);
  if (redis_key) pthread_create(&rr, NULL, redis_reader, NULL);
  usleep(200000);
  pthread_create(&pr, NULL, prober, NULL);
  pthread_join(pr, NULL);
  usleep(2000000); /* the readers drain */
  atomic_store(&stopping, true);
  pthread_join(rd, NULL);
  if (redis_key) pthread_join(rr, NULL);
  int sent = atomic_load(&probes_sent);
  if (acks_path) {
    FILE *f = fopen(acks_path, "w");
    for (int i = 0; f && i < sent; i++)
      fprintf(f, "%d %lld\n", i, (long long)ack_ns[i]);
    if (f) fclose(f);
  }
  report("sse", seen_ns, sent, events, first_ns, last_ns);
  printf("feed_sse_bytes %llu\n", (unsigned long long)bytes);
  printf("feed_sse_cuts %llu\n", (unsigned long long)cuts);
  if (redis_key) report("redis", rseen_ns, sent, revents, rfirst_ns, rlast_ns);
  return 0;
}
