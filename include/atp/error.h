/* error.h - the one table of atpd's error codes.
 *
 * Every fallible function returns int: 0 on success or a negative ATP_E* code.
 * The same table gives each code its contract string (CONTRACT.md section 1) and
 * its HTTP status, so the server never maps errors by hand. Codes that are not
 * contract errors (ATP_ENOMEM, ATP_EFULL, ...) map to the nearest contract code.
 *
 * Thread: everything here is pure and may be called from any thread.
 */
#ifndef ATP_ERROR_H
#define ATP_ERROR_H

/* X(name, value, contract code string, http status, message): the message is
 * a short English sentence for a client that gets nothing more specific. */
#define ATP_ERRNO_MAP(X)                                                               \
  X(BADREQ, -1, "bad_request", 400, "The request is malformed.")                       \
  X(UNAUTH, -2, "unauthorized", 401, "A valid bearer token is required.")              \
  X(FORBIDDEN, -3, "forbidden", 403, "This token's role may not call this route.")     \
  X(NOTOWNER, -4, "not_owner", 403, "This source does not own the field it writes.")   \
  X(NOTFOUND, -5, "not_found", 404, "Not found.")                                      \
  X(INSUFFICIENT, -6, "insufficient_stock", 409,                                       \
    "Not enough stock to fill the request.")                                           \
  X(CONFLICT, -7, "conflict", 409, "The action is not allowed in the current state.")  \
  X(TOOLARGE, -8, "payload_too_large", 413,                                            \
    "The request body is over this route's limit.")                                    \
  X(MEDIATYPE, -9, "unsupported_media_type", 415,                                      \
    "The body must be JSON or MessagePack.")                                           \
  X(IDEMPOTENCY, -10, "idempotency_mismatch", 422,                                     \
    "This id was already used with different content.")                                \
  X(TOOMANY, -11, "too_many_requests", 429, "Too many requests; retry later.")         \
  X(UNAVAILABLE, -12, "unavailable", 503, "The service is not available yet.")         \
  /* Not contract codes: resource limits of the engine, reported as 429 or             \
   * 503 so that a client backs off instead of treating them as its bug. */            \
  X(FULL, -13, "too_many_requests", 429, "A capacity limit was reached; retry later.") \
  X(NOMEM, -14, "unavailable", 503, "Out of memory.")                                  \
  X(OVERFLOW, -15, "bad_request", 400,                                                 \
    "The quantity would leave the supported range.")                                   \
  X(HEADERS, -16, "bad_request", 431, "The request headers are over 64 KiB.")          \
  X(INTERNAL, -17, "internal", 500, "Internal error.")                                 \
  X(URITOOLONG, -18, "uri_too_long", 414, "The request target is over 8 KiB.")         \
  /* Not contract codes: the HTTP server's framing refusals, with the                  \
   * status HTTP gives them and the code of a malformed request. */                    \
  X(TIMEOUT, -19, "bad_request", 408, "The request was not received in time.")         \
  X(VERSION, -20, "bad_request", 505, "Only HTTP/1.x is served.")                      \
  X(NOTIMPL, -21, "bad_request", 501,                                                  \
    "The request uses a feature this server does not implement.")                      \
  X(EXPIRED, -22, "cursor_expired", 410,                                               \
    "The cursor is older than what the change feed retains.")

typedef enum {
#define ATP_ERRNO_ENUM(name, value, code, status, message) ATP_E##name = value,
  ATP_ERRNO_MAP(ATP_ERRNO_ENUM)
#undef ATP_ERRNO_ENUM
      ATP_ERRNO_MIN = -22
} atp_errno_t;

/* The contract's error code string for err ("bad_request", ...); "internal" for
 * anything unknown. Never NULL. */
const char *atp_strerror_code(int err);

/* The HTTP status for err; 500 for anything unknown. */
int atp_error_http_status(int err);

/* A short English sentence for err, used when the caller has nothing better. */
const char *atp_strerror(int err);

#endif
