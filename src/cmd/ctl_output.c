/* ctl_output.c - atpctl's answers for people, or raw with --json.
 *
 * One rendering for every route instead of one per command: an object is
 * "key  value" lines (nested objects indented), an array of objects is a
 * table with a column per key, an error object is "code: message", and an
 * integer time (a key ending in "_at", "at" or "as_of") is shown in UTC. The
 * routes' shapes may grow fields; the rendering follows without a change.
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "atp/assert.h"
#include "atp/codec.h"
#include "atp/limits.h"
#include "ctl.h"

/* A table shows at most this many columns (the first keys seen) and cuts a
 * cell at this many bytes: a dead letter's payload is for `--json`. */
#define TABLE_COLUMNS_MAX 16
#define CELL_BYTES_MAX    48

static bool is_time_key(const char *key) {
  size_t n = strlen(key);
  return (n > 3 && !strcmp(key + n - 3, "_at")) || !strcmp(key, "as_of") ||
         !strcmp(key, "at") || !strcmp(key, "since");
}

/* {code, message, ...}: shown as one "code: message" cell. */
static bool is_error(const atp_val_t *v) {
  const atp_val_t *code = atp_val_get(v, "code"), *msg = atp_val_get(v, "message");
  return code && msg && code->type == ATP_VAL_STR && msg->type == ATP_VAL_STR;
}

/* Appends v's text for a cell or a line: scalars as they are, times in UTC,
 * errors as "code: message", anything else as compact JSON. */
static void text_of(atp_buf_t *out, const char *key, const atp_val_t *v) {
  switch (v->type) {
    case ATP_VAL_NULL:
      atp_buf_append(out, "-", 1);
      return;
    case ATP_VAL_BOOL:
      atp_buf_printf(out, "%s", v->u.b ? "true" : "false");
      return;
    case ATP_VAL_INT:
      if (key && is_time_key(key) && v->u.i > 0) {
        time_t s = (time_t)(v->u.i / 1000);
        struct tm tm;
        char when[32];
        gmtime_r(&s, &tm);
        strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
        atp_buf_printf(out, "%s.%03dZ", when, (int)(v->u.i % 1000));
      } else {
        atp_buf_printf(out, "%lld", (long long)v->u.i);
      }
      return;
    case ATP_VAL_FLOAT:
      atp_buf_printf(out, "%g", v->u.f);
      return;
    case ATP_VAL_STR:
      atp_buf_append(out, v->u.s, v->len);
      return;
    case ATP_VAL_OBJECT:
      if (is_error(v)) {
        const atp_val_t *field = atp_val_get(v, "field");
        atp_buf_printf(out, "%s: %s", atp_val_get(v, "code")->u.s,
                       atp_val_get(v, "message")->u.s);
        if (field && field->type == ATP_VAL_STR)
          atp_buf_printf(out, " (field %s)", field->u.s);
        return;
      }
      break;
    case ATP_VAL_ARRAY:
      break;
  }
  atp_writer_t w;
  atp_writer_init(&w, ATP_FORMAT_JSON, out);
  atp_w_val(&w, v);
}

/* Writes one cell's text into cell (cut to CELL_BYTES_MAX with "..."). */
static void cell_of(char *cell, size_t cap, const char *key, const atp_val_t *v) {
  atp_buf_t b;
  atp_buf_init(&b, 0);
  if (v) text_of(&b, key, v);
  size_t n = b.failed ? 0 : b.len;
  if (n > CELL_BYTES_MAX) n = CELL_BYTES_MAX - 3;
  ATP_ASSERT(cap > CELL_BYTES_MAX);
  if (n && b.data) memcpy(cell, b.data, n);
  if (n < b.len) memcpy(cell + n, "...", 3), n += 3;
  cell[n] = '\0';
  for (char *p = cell; *p; p++)
    if (*p == '\n' || *p == '\t' || *p == '\r') *p = ' ';
  atp_buf_free(&b);
}

/* An array of objects as a table: a header, then a row an item. */
static void print_table(FILE *f, int indent, const atp_val_t *arr) {
  const char *cols[TABLE_COLUMNS_MAX];
  size_t width[TABLE_COLUMNS_MAX];
  int ncols = 0;
  for (uint32_t i = 0; i < arr->len; i++) {
    const atp_val_t *row = &arr->u.items[i];
    if (row->type != ATP_VAL_OBJECT) continue;
    for (uint32_t m = 0; m < row->len && ncols < TABLE_COLUMNS_MAX; m++) {
      int c = 0;
      while (c < ncols && strcmp(cols[c], row->u.members[m].key)) c++;
      if (c == ncols) cols[ncols] = row->u.members[m].key, width[ncols++] = 0;
    }
  }
  char cell[CELL_BYTES_MAX + 1];
  for (int c = 0; c < ncols; c++) width[c] = strlen(cols[c]);
  for (uint32_t i = 0; i < arr->len; i++)
    for (int c = 0; c < ncols; c++) {
      cell_of(cell, sizeof cell, cols[c], atp_val_get(&arr->u.items[i], cols[c]));
      if (strlen(cell) > width[c]) width[c] = strlen(cell);
    }
  fprintf(f, "%*s", indent, "");
  for (int c = 0; c < ncols; c++)
    fprintf(f, c + 1 < ncols ? "%-*s  " : "%-*s\n", (int)(c + 1 < ncols ? width[c] : 0),
            cols[c]);
  for (uint32_t i = 0; i < arr->len; i++) {
    fprintf(f, "%*s", indent, "");
    for (int c = 0; c < ncols; c++) {
      cell_of(cell, sizeof cell, cols[c], atp_val_get(&arr->u.items[i], cols[c]));
      fprintf(f, c + 1 < ncols ? "%-*s  " : "%-*s\n",
              (int)(c + 1 < ncols ? width[c] : 0), cell);
    }
  }
}

static bool all_objects(const atp_val_t *arr) {
  for (uint32_t i = 0; i < arr->len; i++)
    if (arr->u.items[i].type != ATP_VAL_OBJECT) return false;
  return arr->len > 0;
}

static void print_value(FILE *f, int indent, const atp_val_t *v);

static void print_object(FILE *f, int indent, const atp_val_t *obj) {
  size_t kw = 0;
  for (uint32_t m = 0; m < obj->len; m++)
    if (obj->u.members[m].key_len > kw) kw = obj->u.members[m].key_len;
  atp_buf_t line;
  atp_buf_init(&line, 0);
  for (uint32_t m = 0; m < obj->len; m++) {
    const atp_member_t *mem = &obj->u.members[m];
    const atp_val_t *v = &mem->val;
    if (v->type == ATP_VAL_ARRAY && all_objects(v)) {
      fprintf(f, "%*s%s:\n", indent, "", mem->key);
      print_table(f, indent + 2, v);
    } else if (v->type == ATP_VAL_OBJECT && !is_error(v) && v->len) {
      fprintf(f, "%*s%s:\n", indent, "", mem->key);
      print_object(f, indent + 2, v);
    } else {
      atp_buf_reset(&line);
      if (v->type == ATP_VAL_ARRAY && !v->len)
        atp_buf_printf(&line, "(none)");
      else if (v->type == ATP_VAL_ARRAY)
        for (uint32_t i = 0; i < v->len; i++) {
          if (i) atp_buf_append(&line, ", ", 2);
          text_of(&line, mem->key, &v->u.items[i]);
        }
      else
        text_of(&line, mem->key, v);
      fprintf(f, "%*s%-*s  %.*s\n", indent, "", (int)kw, mem->key,
              line.failed ? 0 : (int)line.len, line.data ? line.data : "");
    }
  }
  atp_buf_free(&line);
}

static void print_value(FILE *f, int indent, const atp_val_t *v) {
  if (v->type == ATP_VAL_OBJECT) {
    print_object(f, indent, v);
  } else if (v->type == ATP_VAL_ARRAY && all_objects(v)) {
    print_table(f, indent, v);
  } else if (v->type == ATP_VAL_ARRAY) {
    for (uint32_t i = 0; i < v->len; i++) print_value(f, indent, &v->u.items[i]);
  } else {
    atp_buf_t b;
    atp_buf_init(&b, 0);
    text_of(&b, NULL, v);
    fprintf(f, "%*s%.*s\n", indent, "", b.failed ? 0 : (int)b.len,
            b.data ? b.data : "");
    atp_buf_free(&b);
  }
}

static bool is_json(const ctl_resp_t *resp) {
  return !strncmp(resp->content_type, "application/json", 16);
}

static void print_raw(const ctl_resp_t *resp) {
  fwrite(resp->body.data ? resp->body.data : "", 1, resp->body.len, stdout);
  if (resp->body.len && resp->body.data[resp->body.len - 1] != '\n')
    fputc('\n', stdout);
}

int ctl_print_answer(const ctl_resp_t *resp, bool json) {
  bool ok = resp->status >= 200 && resp->status < 300;
  atp_arena_t arena;
  atp_arena_init(&arena, 64 << 10, ATP_CTL_RESPONSE_BYTES_MAX * 4ull);
  atp_val_t *val = NULL;
  atp_parse_error_t perr;
  bool parsed = is_json(resp) && resp->body.len &&
                atp_codec_parse(ATP_FORMAT_JSON, resp->body.data, resp->body.len,
                                &arena, &val, &perr) == 0;
  if (json || !parsed) {
    print_raw(resp);
    if (!ok) fprintf(stderr, "atpctl: HTTP %d\n", resp->status);
  } else if (ok) {
    print_value(stdout, 0, val);
  } else {
    const atp_val_t *err = atp_val_get(val, "error");
    atp_buf_t b;
    atp_buf_init(&b, 0);
    if (err && is_error(err)) text_of(&b, NULL, err);
    fprintf(stderr, "atpctl: HTTP %d %.*s\n", resp->status, b.failed ? 0 : (int)b.len,
            b.data ? b.data : "");
    atp_buf_free(&b);
    /* The details beside code and message (shortfalls, the position). */
    if (err && err->type == ATP_VAL_OBJECT)
      for (uint32_t m = 0; m < err->len; m++) {
        const char *k = err->u.members[m].key;
        if (!strcmp(k, "code") || !strcmp(k, "message") || !strcmp(k, "field"))
          continue;
        atp_val_t one = {
            .type = ATP_VAL_OBJECT, .len = 1, .u.members = &err->u.members[m]};
        print_value(stderr, 2, &one);
      }
  }
  atp_arena_destroy(&arena);
  return ok ? 0 : EXIT_ANSWER;
}
