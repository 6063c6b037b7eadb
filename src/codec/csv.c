/* csv.c - a CSV record splitter (RFC 4180), see codec.h.
 *
 * One pass over the body: a record is read field by field; an unquoted field
 * is the bytes up to the next comma or line break, a quoted one the bytes up
 * to the closing quote, with doubled quotes turned into one (the only case
 * that copies). The body is never modified, so a failed request leaves it as
 * it came. Cost: O(bytes), no allocation except escaped fields.
 */
#include <string.h>

#include "atp/assert.h"
#include "atp/codec.h"
#include "atp/error.h"
#include "codec_internal.h"

void atp_csv_init(atp_csv_t *c, const char *body, size_t len) {
  memset(c, 0, sizeof *c);
  c->body = body ? body : "";
  c->len = body ? len : 0;
  c->line = 0;
  c->next_line = 1;
  if (c->len >= 3 && memcmp(c->body, "\xef\xbb\xbf", 3) == 0) c->pos = 3;
}

/* At a line break at pos: its length (1 for LF, 2 for CRLF), else 0. A lone
 * CR is data: some exports put one inside a field. */
static size_t line_break(const atp_csv_t *c, size_t pos) {
  if (pos < c->len && c->body[pos] == '\n') return 1;
  if (pos + 1 < c->len && c->body[pos] == '\r' && c->body[pos + 1] == '\n') return 2;
  if (pos + 1 == c->len && c->body[pos] == '\r') return 1; /* CR at the very end */
  return 0;
}

/* A quoted field starting at c->pos (on the opening quote). Leaves pos after
 * the closing quote. */
static int quoted_field(atp_csv_t *c, atp_arena_t *arena, atp_csv_field_t *f,
                        atp_parse_error_t *err) {
  size_t start = ++c->pos, escapes = 0;
  uint32_t first_line = c->next_line;
  for (;;) {
    const char *q =
        c->pos < c->len ? memchr(c->body + c->pos, '"', c->len - c->pos) : NULL;
    if (!q)
      return atp_codec_fail(err, start - 1,
                            "line %u: a quoted field is not closed before the end",
                            first_line);
    for (const char *n = c->body + c->pos; n < q; n++) c->next_line += *n == '\n';
    c->pos = (size_t)(q - c->body) + 1;
    if (c->pos < c->len && c->body[c->pos] == '"') {
      escapes++;
      c->pos++;
      continue;
    }
    break;
  }
  size_t end = c->pos - 1; /* the closing quote */
  if (end - start > UINT32_MAX)
    return atp_codec_fail(err, start, "line %u: a field is too long", first_line);
  if (!escapes) {
    f->ptr = c->body + start;
    f->len = (uint32_t)(end - start);
    return 0;
  }
  char *out = atp_arena_alloc(arena, end - start - escapes + 1);
  if (!out) return ATP_ENOMEM;
  size_t n = 0;
  for (size_t i = start; i < end; i++) {
    out[n++] = c->body[i];
    if (c->body[i] == '"') i++; /* the second of a doubled quote */
  }
  out[n] = '\0';
  f->ptr = out;
  f->len = (uint32_t)n;
  return 0;
}

int atp_csv_next(atp_csv_t *c, atp_arena_t *arena, atp_csv_field_t *fields,
                 uint32_t max, uint32_t *count, atp_parse_error_t *err) {
  ATP_ASSERT(c && fields && count && max > 0);
  *count = 0;
  size_t br;
  while (c->pos < c->len && (br = line_break(c, c->pos)) != 0) {
    c->pos += br; /* blank lines */
    c->next_line++;
  }
  if (c->pos >= c->len) return 0;
  c->line = c->next_line;
  for (;;) {
    if (*count == max)
      return atp_codec_fail(err, c->pos, "line %u has more than %u fields", c->line,
                            max);
    atp_csv_field_t *f = &fields[(*count)++];
    if (c->pos < c->len && c->body[c->pos] == '"') {
      int rc = quoted_field(c, arena, f, err);
      if (rc) return rc;
      if (c->pos < c->len && c->body[c->pos] != ',' && !line_break(c, c->pos))
        return atp_codec_fail(
            err, c->pos, "line %u: a closing quote must end its field", c->next_line);
    } else {
      size_t start = c->pos;
      while (c->pos < c->len && c->body[c->pos] != ',' && !line_break(c, c->pos))
        c->pos++;
      if (c->pos - start > UINT32_MAX)
        return atp_codec_fail(err, start, "line %u: a field is too long", c->line);
      f->ptr = c->body + start;
      f->len = (uint32_t)(c->pos - start);
    }
    if (c->pos < c->len && c->body[c->pos] == ',') {
      c->pos++;
      continue;
    }
    if ((br = line_break(c, c->pos)) != 0) {
      c->pos += br;
      c->next_line++;
    }
    c->records++;
    return 1;
  }
}
