/* memory.c - allocation wrappers, arena, growable buffer (see memory.h).
 *
 * jemalloc is linked as the process allocator in release builds (-ljemalloc
 * replaces malloc), so the wrappers call the standard names; sanitizer builds
 * then get their own interposed allocator without a code change. */
#include "atp/memory.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "atp/assert.h"
#include "atp/error.h"

/* The allocation-failure hook (memory.h): allocations left before the one
 * that fails, plus one; 0 when off. Read on every allocation with a relaxed
 * load, a plain load on the machines this runs on, and one predicted branch. */
static _Atomic long fail_countdown;

void atp_memory_fail_after(long n) {
  atomic_store_explicit(&fail_countdown, n < 0 ? 0 : n + 1, memory_order_relaxed);
}

static bool fail_now(void) {
  if (__builtin_expect(atomic_load_explicit(&fail_countdown, memory_order_relaxed) == 0,
                       1))
    return false;
  return atomic_fetch_sub_explicit(&fail_countdown, 1, memory_order_relaxed) == 1;
}

void *atp_malloc(size_t bytes) {
  if (fail_now()) return NULL;
  return malloc(bytes ? bytes : 1);
}
void *atp_calloc(size_t count, size_t bytes) {
  if (fail_now()) return NULL;
  return calloc(count ? count : 1, bytes ? bytes : 1);
}
void *atp_realloc(void *ptr, size_t bytes) {
  if (fail_now()) return NULL;
  return realloc(ptr, bytes ? bytes : 1);
}
void atp_free(void *ptr) {
  free(ptr);
}

#define HUGE_PAGE_BYTES ((size_t)2 << 20)

/* Under AddressSanitizer tables come from calloc: LeakSanitizer scans heap
 * blocks for pointers but not anonymous mappings, so strings and histories
 * referenced only from an mmap'd table would be reported as leaks. */
#if defined(__SANITIZE_ADDRESS__)
#define TABLES_FROM_HEAP 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TABLES_FROM_HEAP 1
#endif
#endif

static size_t table_bytes(size_t count, size_t size) {
  if (!count) count = 1;
  if (!size) size = 1;
  if (count > SIZE_MAX / size / 2) return 0;
  return (count * size + HUGE_PAGE_BYTES - 1) & ~(HUGE_PAGE_BYTES - 1);
}

void *atp_table_alloc(size_t count, size_t size, bool huge) {
  size_t bytes = table_bytes(count, size);
  if (!bytes || fail_now()) return NULL;
#ifdef TABLES_FROM_HEAP
  (void)huge;
  /* Cache-line aligned, as records declared so expect. */
  void *table = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
  if (table) memset(table, 0, bytes);
  return table;
#else
  /* Map one huge page more, then trim both ends to a 2 MiB boundary. */
  char *raw = mmap(NULL, bytes + HUGE_PAGE_BYTES, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (raw == MAP_FAILED) return NULL;
  uintptr_t at = ((uintptr_t)raw + HUGE_PAGE_BYTES - 1) & ~(HUGE_PAGE_BYTES - 1);
  char *table = (char *)at;
  if (table > raw) munmap(raw, (size_t)(table - raw));
  size_t tail = (size_t)(raw + bytes + HUGE_PAGE_BYTES - (table + bytes));
  if (tail) munmap(table + bytes, tail);
  /* Advice only: where THP is off the table still works on small pages. */
  (void)madvise(table, bytes, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
  return table;
#endif
}

void atp_table_free(void *ptr, size_t count, size_t size) {
#ifdef TABLES_FROM_HEAP
  (void)count, (void)size;
  free(ptr);
#else
  if (ptr) munmap(ptr, table_bytes(count, size));
#endif
}

int atp_table_prefault(void *table, size_t from, size_t to) {
  if (from >= to) return 0;
#ifdef TABLES_FROM_HEAP
  (void)table;
  return 0;
#else
  const uintptr_t page = 4096;
  uintptr_t start = ((uintptr_t)table + from) & ~(page - 1);
  uintptr_t end = ((uintptr_t)table + to + page - 1) & ~(page - 1);
#ifdef MADV_POPULATE_WRITE
  if (madvise((void *)start, end - start, MADV_POPULATE_WRITE) == 0) return 0;
#else
  (void)start, (void)end;
#endif
  return ATP_EINTERNAL;
#endif
}

struct atp_arena_chunk {
  atp_arena_chunk_t *next;
  size_t size; /* usable bytes after the header */
  size_t used; /* bytes handed out, 8-aligned */
  max_align_t data[];
};

void atp_arena_init(atp_arena_t *arena, size_t chunk_bytes, size_t bytes_max) {
  ATP_ASSERT(chunk_bytes >= 256);
  memset(arena, 0, sizeof *arena);
  arena->chunk_bytes = chunk_bytes;
  arena->bytes_max = bytes_max;
}

static atp_arena_chunk_t *arena_new_chunk(atp_arena_t *arena, size_t need) {
  /* Reuse a kept chunk when it is big enough: the common, allocation-free case. */
  for (atp_arena_chunk_t **p = &arena->free; *p; p = &(*p)->next) {
    if ((*p)->size >= need) {
      atp_arena_chunk_t *c = *p;
      *p = c->next;
      return c;
    }
  }
  size_t size = need > arena->chunk_bytes ? need : arena->chunk_bytes;
  if (arena->bytes_max && arena->bytes_held + size > arena->bytes_max) return NULL;
  atp_arena_chunk_t *c = atp_malloc(sizeof *c + size);
  if (!c) return NULL;
  c->size = size;
  arena->bytes_held += size;
  return c;
}

void *atp_arena_alloc(atp_arena_t *arena, size_t bytes) {
  size_t need = (bytes + 7) & ~(size_t)7;
  atp_arena_chunk_t *c = arena->head;
  if (!c || c->size - c->used < need) {
    c = arena_new_chunk(arena, need);
    if (!c) return NULL;
    c->used = 0;
    c->next = arena->head;
    arena->head = c;
  }
  void *p = (char *)c->data + c->used;
  c->used += need;
  ATP_ASSERT(c->used <= c->size);
  return p;
}

char *atp_arena_strdup(atp_arena_t *arena, const char *ptr, size_t len) {
  char *s = atp_arena_alloc(arena, len + 1);
  if (!s) return NULL;
  if (len) memcpy(s, ptr, len);
  s[len] = '\0';
  return s;
}

void atp_arena_reset(atp_arena_t *arena) {
  /* Keep up to four normal chunks' worth for the next request; free the rest so
   * that one huge request does not pin its memory on the connection forever. */
  size_t keep = arena->chunk_bytes * 4, kept = 0;
  atp_arena_chunk_t *c = arena->head, *list = arena->free;
  arena->head = NULL;
  arena->free = NULL;
  arena->bytes_held = 0;
  for (int pass = 0; pass < 2; pass++) {
    while (c) {
      atp_arena_chunk_t *next = c->next;
      if (kept + c->size <= keep) {
        c->next = arena->free;
        arena->free = c;
        kept += c->size;
        arena->bytes_held += c->size;
      } else {
        atp_free(c);
      }
      c = next;
    }
    c = list;
  }
}

atp_arena_mark_t atp_arena_mark(const atp_arena_t *arena) {
  return (atp_arena_mark_t){arena->head, arena->head ? arena->head->used : 0};
}

void atp_arena_rewind(atp_arena_t *arena, atp_arena_mark_t mark) {
  /* Chunks taken since the mark sit in front of it on the head list: back to
   * the free list, still counted in bytes_held. */
  while (arena->head != mark.head) {
    atp_arena_chunk_t *c = arena->head;
    ATP_ASSERT(c);
    arena->head = c->next;
    c->next = arena->free;
    arena->free = c;
  }
  if (arena->head) {
    ATP_ASSERT(mark.used <= arena->head->used);
    arena->head->used = mark.used;
  }
}

void atp_arena_destroy(atp_arena_t *arena) {
  atp_arena_chunk_t *lists[2] = {arena->head, arena->free};
  for (int i = 0; i < 2; i++) {
    for (atp_arena_chunk_t *c = lists[i], *next; c; c = next) {
      next = c->next;
      atp_free(c);
    }
  }
  memset(arena, 0, sizeof *arena);
}

void atp_buf_init(atp_buf_t *buf, size_t len_max) {
  memset(buf, 0, sizeof *buf);
  buf->len_max = len_max;
}

char *atp_buf_reserve_slow(atp_buf_t *buf, size_t len) {
  ATP_ASSERT(buf->len <= buf->cap);
  if (buf->failed) return NULL;
  if (buf->len_max && buf->len + len > buf->len_max) {
    buf->failed = ATP_ETOOLARGE;
    return NULL;
  }
  if (buf->cap - buf->len < len) {
    size_t cap = buf->cap ? buf->cap : 256;
    while (cap - buf->len < len) cap *= 2;
    char *data = atp_realloc(buf->data, cap);
    if (!data) {
      buf->failed = ATP_ENOMEM;
      return NULL;
    }
    buf->data = data;
    buf->cap = cap;
  }
  ATP_ASSERT(buf->cap - buf->len >= len);
  return buf->data + buf->len;
}

int atp_buf_printf(atp_buf_t *buf, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n < 0) return buf->failed = ATP_EINTERNAL;
  char *p = atp_buf_reserve(buf, (size_t)n + 1);
  if (!p) return buf->failed;
  va_start(ap, fmt);
  vsnprintf(p, (size_t)n + 1, fmt, ap);
  va_end(ap);
  buf->len += (size_t)n;
  return 0;
}

void atp_buf_reset(atp_buf_t *buf) {
  buf->len = 0;
  buf->failed = 0;
}

void atp_buf_free(atp_buf_t *buf) {
  atp_free(buf->data);
  buf->data = NULL;
  buf->len = buf->cap = 0;
  buf->failed = 0;
}
