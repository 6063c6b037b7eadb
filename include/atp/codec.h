/* codec.h - request bodies in, response bodies out, in JSON or MessagePack.
 *
 * In: atp_codec_parse() turns a body into a small tree of atp_val_t in the
 * request's arena, the same tree for both formats, so routes read fields one
 * way. It refuses what the contract calls bad input with the place it found it:
 * malformed or truncated bytes, duplicate object keys, nesting deeper than
 * ATP_CODEC_DEPTH_MAX, integers outside int64, non-string map keys.
 *
 * Out: atp_writer_t is a streaming writer with one API and two encodings.
 * Objects and arrays are opened and closed without knowing their sizes: the
 * MessagePack encoding writes map32/array32 headers and patches their counts
 * on close (valid MessagePack, a few bytes longer than minimal).
 *
 * JSON is parsed with the Debian library chosen by measurement (README);
 * msgpack with msgpack-c. Only codec_json.c and codec_msgpack.c include them.
 *
 * Thread: every function works on its own arguments only; any thread.
 */
#ifndef ATP_CODEC_H
#define ATP_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "atp/memory.h"

typedef enum {
  ATP_FORMAT_JSON = 0,
  ATP_FORMAT_MSGPACK = 1,
  ATP_FORMAT_NDJSON = 2, /* input only: one JSON value per line (batch) */
  ATP_FORMAT_CSV = 3,    /* input only: not parsed by this module */
  ATP_FORMAT_UNKNOWN = -1,
} atp_format_t;

/* Maps a Content-Type header value (parameters such as "; charset=utf-8" are
 * ignored, case-insensitive) to a format; ATP_FORMAT_UNKNOWN otherwise.
 * "application/json", "application/msgpack", "application/x-msgpack",
 * "application/x-ndjson", "text/csv". */
atp_format_t atp_format_from_content_type(const char *value, size_t len);

/* The response format for an Accept header (may be NULL/0) and the request's
 * format: the first of JSON or msgpack that Accept names, else the request's
 * format if it is JSON or msgpack, else JSON. List order decides, not q; an
 * entry with q=0 (explicitly refused) is skipped. */
atp_format_t atp_format_for_response(const char *accept, size_t accept_len,
                                     atp_format_t request_format);

/* "application/json" or "application/msgpack". */
const char *atp_format_content_type(atp_format_t format);

typedef enum {
  ATP_VAL_NULL,
  ATP_VAL_BOOL,
  ATP_VAL_INT,   /* fits int64 */
  ATP_VAL_FLOAT, /* a number with a fraction or exponent; never a quantity */
  ATP_VAL_STR,
  ATP_VAL_ARRAY,
  ATP_VAL_OBJECT,
} atp_val_type_t;

typedef struct atp_val atp_val_t;
typedef struct atp_member atp_member_t;

struct atp_val {
  atp_val_type_t type;
  uint32_t len; /* STR: bytes; ARRAY: items; OBJECT: members */
  union {
    bool b;
    int64_t i;
    double f;
    const char *s;         /* NUL-terminated copy in the arena; may hold NULs */
    atp_val_t *items;      /* ARRAY */
    atp_member_t *members; /* OBJECT, in input order, keys unique */
  } u;
};

struct atp_member {
  const char *key; /* NUL-terminated */
  uint32_t key_len;
  atp_val_t val;
};

typedef struct {
  size_t offset;     /* byte offset in the body where parsing failed */
  char message[128]; /* "unexpected end of input", "duplicate key \"qty\"" */
  char field[64];    /* msgpack: "lines[0].sku" of a refused value, or "" */
} atp_parse_error_t;

/* Parses one value in format JSON or MSGPACK (the whole body must be one value,
 * trailing whitespace allowed for JSON). 0, or ATP_EBADREQ with *err filled, or
 * ATP_ENOMEM when the arena is exhausted. */
int atp_codec_parse(atp_format_t format, const char *body, size_t len,
                    atp_arena_t *arena, atp_val_t **out, atp_parse_error_t *err);

/* Parses a stream of values: NDJSON lines, or concatenated msgpack objects (a
 * single msgpack or JSON array is also accepted and yields its items). Calls fn
 * for each value in order with its index; stops at the first parse error (*err,
 * ATP_EBADREQ, err->offset says where) or when fn returns non-zero (that value
 * is returned). max_items bounds the count (ATP_ETOOLARGE beyond).
 * The arena is reset by fn's caller as it likes: values are valid during fn
 * only if fn resets it.
 * JSON: a body starting with '[' yields the array's items, anything else is a
 * sequence of whitespace-separated values. NDJSON: one value per line, blank
 * lines skipped. Memory is one item's tree at a time, the body is read once.
 * Items inside an array count it towards ATP_CODEC_DEPTH_MAX. */
int atp_codec_parse_stream(atp_format_t format, const char *body, size_t len,
                           atp_arena_t *arena, uint32_t max_items,
                           int (*fn)(void *ctx, uint32_t index, atp_val_t *val),
                           void *ctx, atp_parse_error_t *err);

/* --- element splitter (batch bodies) --------------------------------------- */

/* Finds the elements of a batch body one by one without parsing them, so a
 * 64 MiB body is never held twice as a tree: the caller parses each element
 * with atp_codec_parse_element into a scratch arena it resets between them.
 * JSON: the body is one array; a depth- and string-aware scan finds each
 * item's bytes (an item that is not valid JSON is still found, and refused
 * when parsed). NDJSON: one element per line, blank lines skipped.
 * MessagePack: one array, or a stream of concatenated values; each element
 * passes the codec's structural check, since a msgpack element's length is
 * known only by walking it (a failure there stops the whole body: what
 * follows cannot be found). */
typedef struct {
  atp_format_t format; /* JSON, NDJSON or MSGPACK */
  const char *body;
  size_t len;
  size_t pos;     /* next byte to scan */
  uint64_t left;  /* msgpack array: items still to find; UINT64_MAX: a stream */
  uint32_t count; /* elements found so far */
  uint8_t state;  /* 0: before the first element, 1: inside, 2: at the end,
                     3: JSON only, after the closing bracket */
  uint8_t depth;  /* containers around each element: 1 inside an array */
} atp_splitter_t;

/* A splitter at the start of body. */
void atp_splitter_init(atp_splitter_t *s, atp_format_t format, const char *body,
                       size_t len);

/* 1 with the next element at body[*start, *end); 0 at the end of the body;
 * ATP_EBADREQ with *err (offset in the body) when the body's framing is broken
 * (not an array, an unterminated string or array, bytes after the array, a
 * msgpack element that fails the structural check). */
int atp_splitter_next(atp_splitter_t *s, size_t *start, size_t *end,
                      atp_parse_error_t *err);

/* Parses the element body[start, end) that s found, as atp_codec_parse does
 * (offsets in *err are the body's). 0, ATP_EBADREQ or ATP_ENOMEM. */
int atp_codec_parse_element(const atp_splitter_t *s, size_t start, size_t end,
                            atp_arena_t *arena, atp_val_t **out,
                            atp_parse_error_t *err);

/* Object look-up by key; NULL when absent. O(members): objects are small. */
const atp_val_t *atp_val_getn(const atp_val_t *object, const char *key, size_t key_len);
/* Inline so that the length of a literal key is folded at compile time. */
static inline const atp_val_t *atp_val_get(const atp_val_t *object, const char *key) {
  return key ? atp_val_getn(object, key, __builtin_strlen(key)) : NULL;
}

/* --- writer ---------------------------------------------------------------- */

#define ATP_WRITER_DEPTH_MAX 32

typedef struct {
  atp_format_t format;                    /* JSON or MSGPACK */
  atp_buf_t *buf;                         /* output, appended to */
  uint32_t depth;                         /* open containers */
  uint32_t count[ATP_WRITER_DEPTH_MAX];   /* items/members in each open one */
  size_t header_at[ATP_WRITER_DEPTH_MAX]; /* msgpack: where its header is */
  bool is_object[ATP_WRITER_DEPTH_MAX];
  bool want_value; /* a key was written, its value is next */
} atp_writer_t;

void atp_writer_init(atp_writer_t *w, atp_format_t format, atp_buf_t *buf);
/* In an object, a key must precede every value; the writer asserts it. Errors
 * (memory, buffer limit) are sticky in buf->failed. */
void atp_w_object_begin(atp_writer_t *w);
void atp_w_object_end(atp_writer_t *w);
void atp_w_array_begin(atp_writer_t *w);
void atp_w_array_end(atp_writer_t *w);
/* A key with its length (may hold NULs), e.g. a parsed member's key. */
void atp_w_keyn(atp_writer_t *w, const char *key, size_t len);
/* Inline so that a literal key's length is folded at compile time. */
static inline void atp_w_key(atp_writer_t *w, const char *key) {
  atp_w_keyn(w, key, __builtin_strlen(key));
}
/* JSON escapes quotes, backslash and control characters (\u00XX) and passes
 * UTF-8 through; bytes that are not valid UTF-8 are written as \ufffd so the
 * output is always valid JSON. */
void atp_w_str(atp_writer_t *w, const char *s, size_t len);
static inline void atp_w_cstr(atp_writer_t *w, const char *s) {
  atp_w_str(w, s, __builtin_strlen(s));
}
void atp_w_int(atp_writer_t *w, int64_t v);
void atp_w_uint(atp_writer_t *w, uint64_t v);
/* Shortest form that reads back as the same double and as a float ("3.0");
 * NaN and infinities are written as JSON null (MessagePack keeps them). */
void atp_w_float(atp_writer_t *w, double v);
void atp_w_bool(atp_writer_t *w, bool v);
void atp_w_null(atp_writer_t *w);
/* Writes bytes that already hold one complete value in w's format (a nested
 * writer's output), counting it as one value. */
void atp_w_raw(atp_writer_t *w, const char *bytes, size_t len);
/* Writes an already-parsed value back out (dead letter payloads). */
void atp_w_val(atp_writer_t *w, const atp_val_t *val);

#endif
