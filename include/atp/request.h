/* request.h - what every route handler shares: the request context, field
 * readers on the parsed body, query-string parsing and response writers.
 *
 * A handler receives an atp_req_t, reads its fields with the readers below and
 * either writes a 2xx body or returns a negative ATP_E* code. Every reader that
 * refuses a value records the offending field's full path ("lines[2].qty") and
 * a sentence in the context, so the dispatcher can answer the contract's error
 * body without the handler formatting anything. Paths are built lazily: a
 * reader gets the key and an atp_at_t chain naming the enclosing arrays, and
 * only formats the path when it fails, so the success path costs nothing.
 *
 * Everything a handler allocates comes from the request arena, cleared in one
 * shot after the response is queued.
 *
 * Thread: a context belongs to the loop thread running its request.
 */
#ifndef ATP_REQUEST_H
#define ATP_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "atp/codec.h"
#include "atp/engine.h"
#include "atp/http.h"
#include "atp/records.h"
#include "atp/wire.h"

typedef struct atp_app atp_app_t;
typedef struct atp_route atp_route_t;

#define ATP_ROUTE_PARAMS_MAX  4
#define ATP_FIELD_BYTES_MAX   64
#define ATP_MESSAGE_BYTES_MAX 200

/* One level of a field path: the array item name[index] holding the object
 * being read (index < 0: a plain object member "name"). parent is the level
 * above, NULL at the top. */
typedef struct atp_at {
  const char *name;
  int32_t index;
  const struct atp_at *parent;
} atp_at_t;

typedef struct {
  atp_str_t name;  /* decoded */
  atp_str_t value; /* decoded */
} atp_query_param_t;

typedef struct {
  atp_app_t *app;
  const atp_http_request_t *http;
  atp_http_response_t *res;
  atp_arena_t *arena;
  const atp_route_t *route;               /* NULL when nothing matched */
  atp_format_t in_format;                 /* of the body; JSON when there is none */
  atp_format_t out_format;                /* JSON or MSGPACK */
  atp_str_t params[ATP_ROUTE_PARAMS_MAX]; /* path params, decoded, in order */
  uint32_t param_count;
  atp_query_param_t query[ATP_QUERY_PARAMS_MAX];
  uint32_t query_count;
  atp_val_t *body;     /* parsed body, NULL when there is none */
  atp_writer_t writer; /* the response body's writer */
  /* The request's identifiers for the change feed, filled by the op functions
   * before their engine call (atp_durable_set_context points at it). */
  atp_change_ctx_t change_ctx;
  /* Error details of the last refusal; field "" when it concerns no field. */
  char field[ATP_FIELD_BYTES_MAX];
  char message[ATP_MESSAGE_BYTES_MAX];
  /* The last refusal's code (0: none), also when the handler wrote that
   * error body itself and returned 0 (a conflict with its position). */
  int err;
} atp_req_t;

/* Reader flags. */
#define ATP_OPTIONAL 0u
#define ATP_REQUIRED 1u
/* atp_get_time only: the time may lie in the future (a filter bound, not a
 * fact about stock). Without it a time past the allowed clock skew is a 400. */
#define ATP_FUTURE_OK 2u

/* --- errors -------------------------------------------------------------- */

/* Records a refusal and returns err. field_key may be NULL. */
int atp_req_fail(atp_req_t *rq, int err, const atp_at_t *at, const char *key,
                 const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* Copies an engine result's field and message into the context; returns err. */
int atp_req_fail_result(atp_req_t *rq, int err, const atp_result_t *result);

/* An engine result before a call: no field, no message, no status. */
void atp_result_init(atp_result_t *result);

/* The path's first {param} as an identifier, or a 400 naming field ("id") and
 * saying "The <what> must be 1..128 bytes of printable UTF-8." */
int atp_req_path_id(atp_req_t *rq, const char *field, const char *what, atp_str_t *out);

/* --- body ---------------------------------------------------------------- */

/* Parses the body by its Content-Type into rq->body. A missing body is fine
 * when required is false (rq->body stays NULL). 415 for a body in neither
 * format, 400 naming the offset for malformed input, 400 when the top level is
 * not an object (when object is true). */
int atp_req_parse_body(atp_req_t *rq, bool required);

/* --- field readers (on an object; obj may be NULL = all absent) ---------- */
/* Each returns 0 (value set, or absent optional: *present false), or
 * ATP_EBADREQ with the field recorded. present may be NULL. */

/* An identifier: 1..ATP_ID_BYTES_MAX bytes of printable UTF-8. */
int atp_get_id(atp_req_t *rq, const atp_val_t *obj, const atp_at_t *at, const char *key,
               unsigned flags, atp_str_t *out);
/* Any string of 0..max_bytes bytes of valid UTF-8 (reason texts, notes). */
int atp_get_text(atp_req_t *rq, const atp_val_t *obj, const atp_at_t *at,
                 const char *key, unsigned flags, uint32_t max_bytes, atp_str_t *out);
int atp_get_int(atp_req_t *rq, const atp_val_t *obj, const atp_at_t *at,
                const char *key, unsigned flags, int64_t min, int64_t max, int64_t *out,
                bool *present);
int atp_get_bool(atp_req_t *rq, const atp_val_t *obj, const atp_at_t *at,
                 const char *key, unsigned flags, bool *out, bool *present);
/* Integer ms since the epoch, or an RFC 3339 string. Unless flags has
 * ATP_FUTURE_OK, a time more than the allowed clock skew after the server's
 * clock is refused (atp_req_time_check). */
int atp_get_time(atp_req_t *rq, const atp_val_t *obj, const atp_at_t *at,
                 const char *key, unsigned flags, int64_t *out_ms, bool *present);
/* An array of min..max items; *out NULL when absent and optional. */
int atp_get_array(atp_req_t *rq, const atp_val_t *obj, const atp_at_t *at,
                  const char *key, unsigned flags, uint32_t min, uint32_t max,
                  const atp_val_t **out);
/* An array item that must be an object (path "key[i]"). */
int atp_get_item_object(atp_req_t *rq, const atp_val_t *array, const atp_at_t *at,
                        const char *key, uint32_t index, const atp_val_t **out);

/* 0 when at_ms lies at most the app's clock skew (--clock-skew-ms) after the
 * engine's clock, else ATP_EBADREQ naming key under at (CONTRACT.md section 1:
 * a count or sale "from the future" would corrupt every later count). Every
 * time a route accepts goes through here, from a body (atp_get_time) or a
 * query string. Without an app or engine (unit tests) the real-time clock and
 * the default skew apply. */
int atp_req_time_check(atp_req_t *rq, const atp_at_t *at, const char *key,
                       int64_t at_ms);

/* Validates an identifier's bytes; 0 or ATP_EBADREQ (no recording). */
int atp_id_check(const char *s, size_t len);

/* Parses RFC 3339 ("2024-05-01T10:00:00Z", "...+02:00", fractions to ms).
 * 0 or ATP_EBADREQ. */
int atp_time_parse_rfc3339(const char *s, size_t len, int64_t *out_ms);

/* Formats the path of key under at into buf ("lines[2].qty"). */
void atp_field_path(char *buf, size_t cap, const atp_at_t *at, const char *key);

/* --- query string ------------------------------------------------------- */

/* Splits rq->http->query into rq->query, percent-decoding names and values
 * ('+' is a space, as in HTML forms). ATP_EBADREQ for bad escapes or more than
 * ATP_QUERY_PARAMS_MAX parameters. */
int atp_req_parse_query(atp_req_t *rq);

/* Percent-decodes [s, s+len) into the arena; plus_is_space for query strings.
 * ATP_EBADREQ for a malformed escape, ATP_ENOMEM. */
int atp_percent_decode(atp_arena_t *arena, const char *s, size_t len,
                       bool plus_is_space, atp_str_t *out);

/* The query parameter's value, or NULL. */
const atp_str_t *atp_req_query(const atp_req_t *rq, const char *name);

/* A query id parameter (validated like atp_get_id). */
int atp_query_id(atp_req_t *rq, const char *name, unsigned flags, atp_str_t *out);

/* --- responses ---------------------------------------------------------- */

/* Starts a body in the response format with the status; returns the writer
 * (valid for this request only). */
atp_writer_t *atp_respond_begin(atp_req_t *rq, int status);
/* A body-less response (204). */
void atp_respond_empty(atp_req_t *rq, int status);

/* Writes the error body for err from rq->field / rq->message (or the table's
 * sentence). */
void atp_respond_error(atp_req_t *rq, int err);
/* Like atp_respond_error but leaves the "error" object open so details can be
 * added; close it with atp_respond_error_end. */
atp_writer_t *atp_respond_error_begin(atp_req_t *rq, int err);
void atp_respond_error_end(atp_req_t *rq, atp_writer_t *w);

/* The objects' wire shapes (atp_write_position, ...): atp/wire.h. */

/* The current request's large scratch records: one per thread, reused. */
atp_reservation_t *atp_req_reservation(void);
atp_shortfalls_t *atp_req_shortfalls(void);

#endif
