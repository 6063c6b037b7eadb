/* fuzz_codec.c - libFuzzer harness for the codec (codec.h).
 *
 * The first byte picks what the rest is fed to: JSON, msgpack or NDJSON, as
 * one value or as a stream. Beyond "never crash, never read out of bounds"
 * (ASan/UBSan) it checks a property on every accepted body: written back in
 * its own format and in msgpack (lossless for any parsed tree) it parses
 * again to an equal tree. JSON output of a msgpack tree is only required not
 * to crash: msgpack may carry NaN or keys with NUL, which JSON cannot.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "atp/codec.h"
#include "atp/error.h"

static bool val_equal(const atp_val_t *a, const atp_val_t *b) {
  if (a->type != b->type) return false;
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
      return a->len == b->len && memcmp(a->u.s, b->u.s, a->len) == 0;
    case ATP_VAL_ARRAY:
    case ATP_VAL_OBJECT:
      if (a->len != b->len) return false;
      for (uint32_t i = 0; i < a->len; i++) {
        if (a->type == ATP_VAL_ARRAY) {
          if (!val_equal(&a->u.items[i], &b->u.items[i])) return false;
          continue;
        }
        const atp_member_t *x = &a->u.members[i], *y = &b->u.members[i];
        if (x->key_len != y->key_len || memcmp(x->key, y->key, x->key_len) != 0)
          return false;
        if (!val_equal(&x->val, &y->val)) return false;
      }
      return true;
  }
  return false;
}

static atp_arena_t arena, arena2;
static atp_buf_t out;

static void fail(const char *what, const atp_parse_error_t *err) {
  fprintf(stderr, "fuzz_codec: %s (%s at %zu)\n", what, err ? err->message : "",
          err ? err->offset : 0);
  abort();
}

/* Writes val in format f and parses it back; must_match: the result must
 * parse and equal val. */
static void check_round_trip(const atp_val_t *val, atp_format_t f, bool must_match) {
  atp_buf_reset(&out);
  atp_writer_t w;
  atp_writer_init(&w, f, &out);
  atp_w_val(&w, val);
  if (out.failed) fail("writer failed", NULL);
  atp_arena_reset(&arena2);
  atp_val_t *again = NULL;
  atp_parse_error_t err;
  int rc = atp_codec_parse(f, out.data, out.len, &arena2, &again, &err);
  if (!must_match) return;
  if (rc) fail("written output does not parse", &err);
  if (!val_equal(val, again)) fail("round trip changed the value", NULL);
}

static atp_format_t input_format;

static void check_value(const atp_val_t *val) {
  check_round_trip(val, ATP_FORMAT_MSGPACK, true);
  check_round_trip(val, ATP_FORMAT_JSON, input_format != ATP_FORMAT_MSGPACK);
}

static int on_item(void *ctx, uint32_t index, atp_val_t *val) {
  uint32_t *count = ctx;
  if (index != (*count)++) fail("stream index out of order", NULL);
  check_value(val);
  atp_arena_reset(&arena);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static bool ready;
  if (!ready) {
    atp_arena_init(&arena, 64 * 1024, 256u << 20);
    atp_arena_init(&arena2, 64 * 1024, 256u << 20);
    atp_buf_init(&out, 256u << 20);
    ready = true;
  }
  if (size < 1) return 0;
  uint8_t mode = data[0];
  /* A copy of exactly the body's size, so ASan sees any read past its end. */
  size_t len = size - 1;
  char *body = malloc(len ? len : 1);
  if (!body) return 0;
  memcpy(body, data + 1, len);
  static const atp_format_t formats[3] = {ATP_FORMAT_JSON, ATP_FORMAT_MSGPACK,
                                          ATP_FORMAT_NDJSON};
  input_format = formats[(mode & 0x7f) % 3];
  atp_parse_error_t err;
  atp_arena_reset(&arena);
  if (mode & 0x80) {
    uint32_t count = 0;
    int rc = atp_codec_parse_stream(input_format, body, len, &arena, 1000, on_item,
                                    &count, &err);
    if (rc == ATP_EBADREQ && err.offset > len) fail("error offset past the end", &err);
  } else {
    atp_val_t *val = NULL;
    int rc = atp_codec_parse(input_format, body, len, &arena, &val, &err);
    if (rc == 0) {
      check_value(val);
    } else if (rc == ATP_EBADREQ && err.offset > len) {
      fail("error offset past the end", &err);
    }
  }
  free(body);
  return 0;
}
