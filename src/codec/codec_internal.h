/* codec_internal.h - what codec.c, codec_json.c and codec_msgpack.c share.
 *
 * codec.c owns the public entry points (format negotiation, dispatch, the
 * writer); each format file parses its bytes into atp_val_t and keeps its
 * third-party library to itself (yajl in codec_json.c, msgpack-c in
 * codec_msgpack.c). Not a public header: only the three codec files include it.
 */
#ifndef ATP_CODEC_INTERNAL_H
#define ATP_CODEC_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "atp/codec.h"

/* Fills *err (message sanitised to printable ASCII) and returns ATP_EBADREQ. */
int atp_codec_fail(atp_parse_error_t *err, size_t offset, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Length of the longest valid UTF-8 prefix of s (== len when all of s is
 * valid). Rejects overlong forms, surrogates and code points above U+10FFFF. */
size_t atp_codec_utf8_prefix(const char *s, size_t len);

/* JSON (codec_json.c). */
int atp_codec_json_parse(const char *body, size_t len, atp_arena_t *arena,
                         atp_val_t **out, atp_parse_error_t *err);
int atp_codec_json_stream(bool ndjson, const char *body, size_t len,
                          atp_arena_t *arena, uint32_t max_items,
                          int (*fn)(void *ctx, uint32_t index, atp_val_t *val),
                          void *ctx, atp_parse_error_t *err);

/* The splitter's per-format steps (atp_splitter_next's contract, without the
 * count) and the parse of one element inside `depth` containers. */
int atp_codec_json_split(atp_splitter_t *s, size_t *start, size_t *end,
                         atp_parse_error_t *err);
int atp_codec_json_element(const char *body, size_t start, size_t end, uint32_t depth,
                           atp_arena_t *arena, atp_val_t **out, atp_parse_error_t *err);

/* MessagePack (codec_msgpack.c). */
int atp_codec_msgpack_parse(const char *body, size_t len, atp_arena_t *arena,
                            atp_val_t **out, atp_parse_error_t *err);
int atp_codec_msgpack_stream(const char *body, size_t len, atp_arena_t *arena,
                             uint32_t max_items,
                             int (*fn)(void *ctx, uint32_t index, atp_val_t *val),
                             void *ctx, atp_parse_error_t *err);

int atp_codec_msgpack_split(atp_splitter_t *s, size_t *start, size_t *end,
                            atp_parse_error_t *err);
int atp_codec_msgpack_element(const char *body, size_t start, size_t end,
                              uint32_t depth, atp_arena_t *arena, atp_val_t **out,
                              atp_parse_error_t *err);

#endif
