/* bench_batch_post.c - the client of bench/bench_batch.py: posts pre-built
 * HTTP requests over a few keep-alive connections and counts the answers.
 *
 *   bench_batch_post PORT CONNS SECONDS OPS_PER_REQUEST FILE
 *
 * FILE holds the requests, each as an 8-byte little-endian length and the
 * request's bytes (bench_batch.py writes it before the clock starts). Each
 * connection sends one request, reads its whole answer, then sends the next
 * one not yet sent, until the time is up or the requests run out: every
 * request is sent once, so no op id is ever replayed. One thread and epoll:
 * the client costs a write and a read a batch, so the server, not a Python
 * client sharing the two cores, sets the pace. A 503 (journal behind) is
 * retried after 5 ms and counted apart. Prints "ops N", "batches N",
 * "non200 N", "refused503 N" and "seconds S".
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CONNS_MAX  64
#define READ_BYTES (1 << 16)

typedef struct {
  int fd;
  const char *req; /* the request being sent */
  size_t req_len, sent;
  char in[READ_BYTES]; /* the answer so far */
  size_t in_len;
  double retry_at; /* after a 503: when to send the same request again; 0: none */
} conn_t;

static const char **reqs;
static size_t *req_lens, req_count, req_next;
static uint64_t done_batches, non200, refused;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what) {
  perror(what);
  exit(1);
}

/* Starts the next request on c; false when none is left. */
static bool start_next(conn_t *c) {
  if (req_next == req_count) return false;
  c->req = reqs[req_next];
  c->req_len = req_lens[req_next];
  req_next++;
  c->sent = 0;
  c->in_len = 0;
  return true;
}

/* Writes what the socket takes; true when the request is all sent. */
static bool send_some(conn_t *c) {
  while (c->sent < c->req_len) {
    ssize_t n = send(c->fd, c->req + c->sent, c->req_len - c->sent, MSG_NOSIGNAL);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return false;
    if (n < 0) die("send");
    c->sent += (size_t)n;
  }
  return true;
}

/* Reads; true when a whole answer is in (its status counted). A 503 (the
 * journal is behind the disk: nothing was applied) is not counted: the same
 * request goes again after RETRY_S, as a client that backs off would. */
#define RETRY_S 0.005
static bool read_some(conn_t *c) {
  for (;;) {
    if (c->in_len + 1 >= sizeof c->in) { /* one byte stays for the NUL */
      fprintf(stderr, "answer larger than %d bytes\n", READ_BYTES);
      exit(1);
    }
    ssize_t n = recv(c->fd, c->in + c->in_len, sizeof c->in - c->in_len - 1, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return false;
    if (n < 0) die("recv");
    if (n == 0) {
      fprintf(stderr, "server closed the connection\n");
      exit(1);
    }
    c->in_len += (size_t)n;
    c->in[c->in_len] = '\0';
    char *end = strstr(c->in, "\r\n\r\n");
    if (!end) continue;
    size_t head = (size_t)(end + 4 - c->in);
    size_t body = 0;
    char *cl = strcasestr(c->in, "\r\ncontent-length:");
    if (cl && cl < end) body = strtoul(cl + 17, NULL, 10);
    if (c->in_len < head + body) continue;
    if (c->in_len > head + body) {
      fprintf(stderr, "unexpected bytes after an answer\n");
      exit(1);
    }
    if (strncmp(c->in + 9, "503", 3) == 0) {
      refused++;
      c->retry_at = now_s() + RETRY_S;
      c->sent = c->in_len = 0;
      return false;
    }
    if (strncmp(c->in + 9, "200", 3) != 0 && non200++ == 0)
      fprintf(stderr, "first non-200 answer: %.300s\n", c->in);
    done_batches++;
    return true;
  }
}

int main(int argc, char **argv) {
  if (argc != 6) {
    fprintf(stderr, "usage: %s PORT CONNS SECONDS OPS_PER_REQUEST FILE\n", argv[0]);
    return 2;
  }
  int port = atoi(argv[1]), nconns = atoi(argv[2]);
  double seconds = atof(argv[3]);
  uint64_t ops_per = strtoull(argv[4], NULL, 10);
  if (nconns < 1 || nconns > CONNS_MAX) nconns = CONNS_MAX;
  int fd = open(argv[5], O_RDONLY);
  if (fd < 0) die("open");
  struct stat st;
  if (fstat(fd, &st) != 0) die("fstat");
  const char *map =
      mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0);
  if (map == MAP_FAILED) die("mmap");
  size_t cap = 1024;
  reqs = malloc(cap * sizeof *reqs);
  req_lens = malloc(cap * sizeof *req_lens);
  for (size_t p = 0; p + 8 <= (size_t)st.st_size;) {
    uint64_t n;
    memcpy(&n, map + p, 8);
    if (req_count == cap) {
      cap *= 2;
      reqs = realloc(reqs, cap * sizeof *reqs);
      req_lens = realloc(req_lens, cap * sizeof *req_lens);
    }
    reqs[req_count] = map + p + 8;
    req_lens[req_count++] = n;
    p += 8 + n;
  }
  int ep = epoll_create1(0);
  static conn_t conns[CONNS_MAX];
  for (int i = 0; i < nconns; i++) {
    conn_t *c = &conns[i];
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(0x7f000001);
    if (connect(c->fd, (struct sockaddr *)&a, sizeof a) != 0) die("connect");
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(c->fd, F_SETFL, O_NONBLOCK);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) != 0) die("epoll_ctl");
  }
  double t0 = now_s(), stop = t0 + seconds;
  int active = 0;
  for (int i = 0; i < nconns; i++)
    if (start_next(&conns[i])) {
      active++;
      send_some(&conns[i]);
    } else {
      conns[i].req = NULL;
    }
  while (active > 0) {
    struct epoll_event evs[CONNS_MAX];
    int n = epoll_wait(ep, evs, CONNS_MAX, 1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) die("epoll_wait");
    double t = now_s();
    for (int i = 0; i < nconns; i++) {
      conn_t *c = &conns[i];
      if (c->req && c->retry_at && t >= c->retry_at) {
        c->retry_at = 0;
        send_some(c);
      }
    }
    for (int i = 0; i < n; i++) {
      conn_t *c = evs[i].data.ptr;
      if (!c->req || c->retry_at) continue;
      if (c->sent < c->req_len) {
        if (!send_some(c)) continue;
      }
      while (c->req && read_some(c)) {
        if (now_s() >= stop || !start_next(c)) {
          c->req = NULL;
          active--;
          break;
        }
        if (!send_some(c)) break;
      }
    }
  }
  double elapsed = now_s() - t0;
  printf("ops %llu\nbatches %llu\nnon200 %llu\nrefused503 %llu\nseconds %.3f\n",
         (unsigned long long)((done_batches - non200) * ops_per),
         (unsigned long long)done_batches, (unsigned long long)non200,
         (unsigned long long)refused, elapsed);
  if (req_next == req_count && elapsed < seconds)
    fprintf(stderr, "bench_batch_post: requests ran out after %.2f s\n", elapsed);
  return 0;
}
