/* http_client.h - an HTTP client on a libuv loop: libcurl's multi interface
 * driven by the loop (curl_multi_socket_action with one uv_poll_t per socket
 * curl opens and one uv_timer_t for the timeout curl asks for), so a module
 * with a loop of its own (the Shopify push) sends requests without a thread
 * per request and without blocking the loop.
 *
 * Every request is bounded: a total timeout (connect included) and a bound
 * on the answer's body; a request that passes either ends with a transport
 * error, never a hang. Connections are kept alive and reused by curl's
 * connection cache. The answer (status and body, or the transport error) is
 * handed to the request's callback on the loop's thread, once per request.
 *
 * libcurl lives in this file only among the flows (scripts/check-layers.sh);
 * the header names no curl or uv type, so its users include neither.
 *
 * Thread: everything on the loop's thread, the one that runs the loop.
 */
#ifndef ATP_HTTP_CLIENT_H
#define ATP_HTTP_CLIENT_H

#include <stddef.h>
#include <stdint.h>

struct uv_loop_s;
typedef struct atp_http_client atp_http_client_t;

/* Requests in flight at most per client: one more is ATP_EFULL. */
#define ATP_HTTP_CLIENT_REQUESTS_MAX 64u
/* Request headers a call may pass. */
#define ATP_HTTP_CLIENT_HEADERS_MAX 16u

typedef struct {
  int status;         /* the HTTP status; 0 on a transport error */
  const char *body;   /* the answer's body (NUL-terminated); valid during the
                         callback only */
  size_t body_bytes;  /* its length */
  const char *error;  /* "" or the transport error (curl's words: "Operation
                         timed out after 5000 milliseconds ...", or
                         "answer over 4194304 bytes", "cancelled") */
  int64_t elapsed_ms; /* from the call to the end */
} atp_http_response_t;

/* The request ended (answered, failed or cancelled by close). */
typedef void (*atp_http_done_fn)(void *ctx, const atp_http_response_t *response);

typedef struct {
  uint32_t connect_timeout_ms; /* 0: 5000 */
  size_t body_bytes_max;       /* of an answer; 0: 4 MiB */
} atp_http_client_config_t;

/* A client on loop (which must outlive it). ATP_ENOMEM, or ATP_EINTERNAL when
 * libcurl cannot start. */
int atp_http_client_create(struct uv_loop_s *loop,
                           const atp_http_client_config_t *config,
                           atp_http_client_t **out);

/* POSTs body (body_bytes, may hold any bytes) to url with the headers
 * ("Name: value" each, at most ATP_HTTP_CLIENT_HEADERS_MAX; the strings are
 * copied) and calls done with the answer within timeout_ms (> 0). 0: done
 * will be called exactly once; ATP_EFULL beyond
 * ATP_HTTP_CLIENT_REQUESTS_MAX in flight, ATP_ENOMEM, ATP_EUNAVAILABLE when
 * closing: done will not be called. */
int atp_http_client_post(atp_http_client_t *client, const char *url,
                         const char *const *headers, uint32_t header_count,
                         const char *body, size_t body_bytes, uint32_t timeout_ms,
                         atp_http_done_fn done, void *ctx);

/* Requests in flight. */
uint32_t atp_http_client_in_flight(const atp_http_client_t *client);

/* Ends every request in flight (their callbacks run with status 0 and the
 * error "cancelled"), closes the client's handles and, once they are closed
 * (a few loop iterations later: keep running the loop), calls closed and
 * frees the client. */
void atp_http_client_close(atp_http_client_t *client, void (*closed)(void *ctx),
                           void *ctx);

#endif
