/* fuzz_batch.c - libFuzzer harness for the batch element splitter (codec.h).
 *
 * The first byte picks the format (JSON array, NDJSON, msgpack array or
 * stream); the rest is the body. Beyond "never crash, never read out of
 * bounds" (ASan/UBSan) it checks that elements come in order inside the body,
 * and that whenever the codec's whole-body stream parser accepts the body, the
 * splitter finds the same number of elements and each parses on its own to
 * the same tree.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "atp/codec.h"
#include "atp/error.h"

#define ELEMENTS_MAX 4096

static bool val_equal(const atp_val_t *a, const atp_val_t *b) {
  if (a->type != b->type || (a->type >= ATP_VAL_STR && a->len != b->len)) return false;
  switch (a->type) {
    case ATP_VAL_NULL:
      return true;
    case ATP_VAL_BOOL:
      return a->u.b == b->u.b;
    case ATP_VAL_INT:
      return a->u.i == b->u.i;
    case ATP_VAL_FLOAT:
      return a->u.f == b->u.f || (isnan(a->u.f) && isnan(b->u.f));
    case ATP_VAL_STR:
      return memcmp(a->u.s, b->u.s, a->len) == 0;
    case ATP_VAL_ARRAY:
      for (uint32_t i = 0; i < a->len; i++)
        if (!val_equal(&a->u.items[i], &b->u.items[i])) return false;
      return true;
    case ATP_VAL_OBJECT:
      for (uint32_t i = 0; i < a->len; i++) {
        const atp_member_t *x = &a->u.members[i], *y = &b->u.members[i];
        if (x->key_len != y->key_len || memcmp(x->key, y->key, x->key_len) != 0)
          return false;
        if (!val_equal(&x->val, &y->val)) return false;
      }
      return true;
  }
  return false;
}

static atp_arena_t arena, stream_arena;
static size_t starts[ELEMENTS_MAX], ends[ELEMENTS_MAX];

typedef struct {
  const atp_splitter_t *split;
  uint32_t count; /* elements the splitter found */
} check_t;

/* For each item of the whole-body stream: the splitter's element parses to
 * the same tree. */
static int compare_item(void *ctx, uint32_t index, atp_val_t *val) {
  check_t *c = ctx;
  atp_arena_reset(&arena);
  atp_val_t *mine = NULL;
  atp_parse_error_t err;
  int rc = atp_codec_parse_element(c->split, starts[index], ends[index], &arena, &mine,
                                   &err);
  if (rc == ATP_ENOMEM) return 1; /* arena bound: nothing to compare */
  if (rc != 0 || !val_equal(mine, val)) {
    fprintf(stderr, "fuzz_batch: element %u differs from the stream's (%d: %s)\n",
            index, rc, rc ? err.message : "");
    abort();
  }
  return 0;
}

static int count_item(void *ctx, uint32_t index, atp_val_t *val) {
  (void)val;
  *(uint32_t *)ctx = index + 1;
  atp_arena_reset(&stream_arena);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static bool ready;
  if (!ready) {
    atp_arena_init(&arena, 16 * 1024, 16 << 20);
    atp_arena_init(&stream_arena, 16 * 1024, 16 << 20);
    ready = true;
  }
  if (size < 1) return 0;
  static const atp_format_t formats[] = {ATP_FORMAT_JSON, ATP_FORMAT_NDJSON,
                                         ATP_FORMAT_MSGPACK};
  atp_format_t f = formats[data[0] % 3];
  const char *body = (const char *)data + 1;
  size_t len = size - 1;

  atp_splitter_t s;
  atp_splitter_init(&s, f, body, len);
  uint32_t count = 0;
  size_t last_end = 0;
  int rc;
  atp_parse_error_t err;
  for (;;) {
    size_t a = 0, b = 0;
    rc = atp_splitter_next(&s, &a, &b, &err);
    if (rc != 1) break;
    if (a < last_end || b < a || b > len) {
      fprintf(stderr, "fuzz_batch: element %u at [%zu, %zu) after %zu\n", count, a, b,
              last_end);
      abort();
    }
    last_end = b;
    if (count < ELEMENTS_MAX) starts[count] = a, ends[count] = b;
    count++;
    atp_arena_reset(&arena);
    atp_val_t *v = NULL;
    (void)atp_codec_parse_element(&s, a, b, &arena, &v, &err);
  }
  if (rc == ATP_EBADREQ && err.offset > len) {
    fprintf(stderr, "fuzz_batch: error offset %zu beyond %zu\n", err.offset, len);
    abort();
  }
  if (rc != 0 || count > ELEMENTS_MAX) return 0;
  /* The whole-body stream accepts JSON sequences the splitter refuses (a batch
   * in JSON is an array), so compare only array bodies there. */
  if (f == ATP_FORMAT_JSON) {
    size_t p = 0;
    while (p < len &&
           (body[p] == ' ' || body[p] == '\t' || body[p] == '\n' || body[p] == '\r'))
      p++;
    if (p >= len || body[p] != '[') return 0;
  }
  /* The stream hands over items before it finds a fault after them, so it
   * must accept the whole body before its items are compared. */
  uint32_t items = 0;
  atp_arena_reset(&stream_arena);
  if (atp_codec_parse_stream(f, body, len, &stream_arena, ELEMENTS_MAX, count_item,
                             &items, &err) != 0)
    return 0;
  if (items != count) {
    fprintf(stderr, "fuzz_batch: the stream has %u items, the splitter %u\n", items,
            count);
    abort();
  }
  check_t c = {&s, count};
  atp_arena_reset(&stream_arena);
  rc = atp_codec_parse_stream(f, body, len, &stream_arena, ELEMENTS_MAX, compare_item,
                              &c, &err);
  if (rc != 0 && rc != 1) {
    fprintf(stderr, "fuzz_batch: the stream failed the second time (%d)\n", rc);
    abort();
  }
  return 0;
}
