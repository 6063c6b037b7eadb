/* memory.h - allocation: jemalloc behind one pair of wrappers, a per-request
 * arena cleared in one shot, and a growable byte buffer.
 *
 * atp_malloc/atp_free are the only way the project allocates (jemalloc is linked
 * as the process allocator, so these are thin; they exist so that an
 * out-of-memory is handled in one place). An arena hands out memory from
 * chunks it keeps across resets, so a request's parsing and response building
 * allocate nothing once the arena has warmed up.
 *
 * Thread: an arena or a buffer belongs to one thread at a time.
 */
#ifndef ATP_MEMORY_H
#define ATP_MEMORY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Tests only: the n-th allocation from now (0: the next one) through
 * atp_malloc, atp_calloc, atp_realloc or atp_table_alloc fails, once; n < 0
 * turns a pending failure off. Compiled into every build, it costs each
 * allocation one predicted branch. */
void atp_memory_fail_after(long n);

/* NULL on failure (never aborts). */
void *atp_malloc(size_t bytes);
void *atp_calloc(size_t count, size_t bytes);
void *atp_realloc(void *ptr, size_t bytes);
void atp_free(void *ptr);

/* Large zeroed tables that live as long as the engine, mapped directly;
 * untouched pages cost address space only. Freed with the same count and
 * size. With huge, the table is aligned to 2 MiB and asks for transparent
 * huge pages (MADV_HUGEPAGE), so a random probe into tens of MiB costs a cache
 * miss without a page walk: for tables read at random. Tables filled in order
 * as records are created stay on small pages: a first touch of a huge page
 * zeroes 2 MiB at once, a stall of the request that makes it. */
void *atp_table_alloc(size_t count, size_t size, bool huge);
void atp_table_free(void *ptr, size_t count, size_t size);
/* Maps bytes [from, to) of a table in, zeroed and writable, as first writes
 * would (MADV_POPULATE_WRITE), without changing what is there: a thread other
 * than the writers takes the page faults ahead of them. Rounds out to whole
 * pages. 0, or ATP_EINTERNAL where the kernel cannot (before Linux 5.14).
 * Sanitizer builds take tables from the heap, zeroed at allocation: 0. */
int atp_table_prefault(void *table, size_t from, size_t to);

typedef struct atp_arena_chunk atp_arena_chunk_t;

typedef struct {
  atp_arena_chunk_t *head; /* chunk being filled; NULL before the first alloc */
  atp_arena_chunk_t *free; /* chunks kept by reset for reuse */
  size_t chunk_bytes;      /* size of a normal chunk */
  size_t bytes_max;        /* total the arena may hold; allocs beyond fail */
  size_t bytes_held;       /* sum of chunk sizes owned (head + free lists) */
} atp_arena_t;

void atp_arena_init(atp_arena_t *arena, size_t chunk_bytes, size_t bytes_max);
/* 8-byte aligned; NULL when bytes_max would be exceeded or memory is out. */
void *atp_arena_alloc(atp_arena_t *arena, size_t bytes);
/* Copy of [ptr, ptr+len) with a NUL after it. */
char *atp_arena_strdup(atp_arena_t *arena, const char *ptr, size_t len);
/* Forgets every allocation, keeps the chunks (up to chunk_bytes * 4). */
void atp_arena_reset(atp_arena_t *arena);
void atp_arena_destroy(atp_arena_t *arena);
/* A point in an arena's allocations, and a return to it: what was allocated
 * since is forgotten (its chunks kept for reuse), what came before stays. For
 * a fast path that may give up and hand over to a slower one. */
typedef struct {
  atp_arena_chunk_t *head;
  size_t used;
} atp_arena_mark_t;
atp_arena_mark_t atp_arena_mark(const atp_arena_t *arena);
void atp_arena_rewind(atp_arena_t *arena, atp_arena_mark_t mark);

typedef struct {
  char *data;     /* NULL until the first append */
  size_t len;     /* bytes used */
  size_t cap;     /* bytes allocated */
  size_t len_max; /* appends beyond fail; 0: no limit */
  int failed;     /* an append failed (limit or memory); sticky until reset */
} atp_buf_t;

void atp_buf_init(atp_buf_t *buf, size_t len_max);
int atp_buf_printf(atp_buf_t *buf, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Growing, limits and failure: the out-of-line part of atp_buf_reserve. */
char *atp_buf_reserve_slow(atp_buf_t *buf, size_t len);

/* Ensures room for len more bytes and returns where to write them; the caller
 * then adds to buf->len. NULL on failure. Inline: the response writer calls it
 * for every token, and there is room nearly always. */
static inline char *atp_buf_reserve(atp_buf_t *buf, size_t len) {
  if (!buf->failed && buf->data && buf->cap - buf->len >= len &&
      (!buf->len_max || buf->len + len <= buf->len_max))
    return buf->data + buf->len;
  return atp_buf_reserve_slow(buf, len);
}

/* 0 or ATP_ENOMEM / ATP_ETOOLARGE; on failure the buffer is marked failed. */
static inline int atp_buf_append(atp_buf_t *buf, const void *data, size_t len) {
  char *p = atp_buf_reserve(buf, len);
  if (!p) return buf->failed;
  if (len) __builtin_memcpy(p, data, len);
  buf->len += len;
  return 0;
}
void atp_buf_reset(atp_buf_t *buf); /* len = 0, failed = 0, keeps memory */
void atp_buf_free(atp_buf_t *buf);

#endif
