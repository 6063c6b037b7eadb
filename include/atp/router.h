/* router.h - the route table and the HTTP handler of atpd.
 *
 * One static table lists every served route: method, path pattern with
 * {params}, the access class a token's role must allow, the metrics label and
 * the body limit. The same table drives dispatch, `atpd --routes`, auth, metrics
 * labels and the server's per-route body limit, so they cannot disagree.
 *
 * Matching splits the raw path at '/' and compares literal segments; a {param}
 * segment is percent-decoded into the request arena (so "gid%3A%2F%2F..." is a
 * usable id). No allocation besides that, no regex. An unknown path answers
 * 404 not_found; a known path with another method answers 405 with the same
 * error shape and code "not_found" (the contract has no code of its own for
 * it) plus an Allow header. With auth on, a path under /v1 or /admin is
 * authenticated first: without a valid token even an unknown route is 401,
 * so the route table cannot be mapped anonymously.
 *
 * Thread: the handler runs on every loop thread at once; the table and the app
 * are read-only after start (except the atomics and per-thread metrics).
 */
#ifndef ATP_ROUTER_H
#define ATP_ROUTER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>

#include "atp/auth.h"
#include "atp/durability.h"
#include "atp/engine.h"
#include "atp/flows.h"
#include "atp/http.h"
#include "atp/metrics.h"
#include "atp/request.h"
#include "atp/shopify.h"

/* Handlers return 0 after writing a 2xx response, or a negative ATP_E* code
 * with rq->field/message set; the dispatcher then writes the error body. */
typedef int (*atp_route_fn)(atp_req_t *rq);

struct atp_route {
  atp_http_method_t method;
  const char *pattern;    /* "/v1/reservations/{id}/commit" */
  atp_access_t access;    /* which roles may call it */
  atp_field_kind_t owned; /* ownership field it writes, or ATP_FIELD_NONE */
  size_t body_bytes_max;
  atp_route_fn handler;
};

/* The application: everything handlers share. Read-only once serving, except
 * the atomics. */
struct atp_app {
  _Atomic(atp_engine_t *) engine;   /* NULL until created: /readyz answers 503 */
  atomic_bool ready;                /* state restored, serving writes */
  const atp_auth_t *auth;           /* NULL: auth off */
  const atp_ownership_t *ownership; /* NULL: everyone may write */
  const atp_flows_t *flows;         /* dead letters, paused flows; NULL: none */
  atp_metrics_t *metrics;           /* NULL: none kept */
  bool access_log;
  int64_t clock_skew_ms; /* input times may lie this far past the clock; 0:
                            ATP_CLOCK_SKEW_MS_DEFAULT (--clock-skew-ms) */
  const char *not_ready; /* NULL, or why /readyz answers 503 (data dir unusable) */
  /* Durability (src/app/app.c): NULL when there is none (tests). Mutations
   * are admitted by it and their answers park until durable. */
  atp_durable_t *durable;
  struct atp_app_runtime *runtime; /* atp_app_start's threads and state */
  struct atp_recon_store *recon; /* reconciliation reports; NULL: 503 on their routes */
  /* The change feed (src/app/app.c creates it with the journal); NULL: its
   * routes answer 503. server answers its parked long polls. */
  struct atp_feed *feed;
  atp_http_server_t *server;
  /* Integration flows' state (src/flows, created by atp_app_start; NULL in
   * tests without it): dead letters, flows with their queues, the audit. */
  struct atp_deadletters *dead_letters;
  struct atp_flowstate *flow_state;
  struct atp_audit *audit;
  /* The Shopify connector (CONTRACT.md section 11): its state, NULL when
   * --shopify is absent (its routes answer 503); the push's figures through
   * shopify_push_stats, NULL when the push is off. */
  struct atp_shopify *shopify;
  atp_shopify_push_stats_fn shopify_push_stats;
  void *shopify_push_ctx;
};

/* The table, and its size. Index i is the route's metrics label index. */
const atp_route_t *atp_routes(uint32_t *count);

/* The route index for metrics, or the count for "unmatched". */
uint32_t atp_route_index(const atp_route_t *route);

/* Finds the route for method and raw path, decoding params into params[] in
 * the arena. Returns the route, or NULL with *path_known telling whether
 * another method serves that path (405) or nothing does (404). *err gets
 * ATP_EBADREQ for a bad escape in a param. */
const atp_route_t *atp_router_match(atp_http_method_t method, const char *path,
                                    size_t path_len, atp_arena_t *arena,
                                    atp_str_t *params, uint32_t *param_count,
                                    bool *path_known, int *err);

/* Prints "METHOD /path/{param}" per line. */
void atp_router_print(FILE *out);

/* atp_http_config_t callbacks; ctx is the atp_app_t. */
void atp_router_handle(void *ctx, const atp_http_request_t *req,
                       atp_http_response_t *res);
size_t atp_router_body_limit(void *ctx, atp_http_method_t method, const char *path,
                             size_t path_len);
void atp_router_log(void *ctx, const atp_http_request_t *req, int status,
                    size_t body_bytes, int64_t elapsed_ns);
/* The end of a loop's turn (atp_http_turn_fn): with one loop and durable
 * answers (batch, always), the loop writes and syncs the turn's records
 * itself, so each turn's answers leave with one fdatasync and no hand-off
 * to the journal's writer thread (include/atp/journal.h, atp_journal_commit).
 * Installed by atpd only with --threads 1. */
void atp_router_turn(void *ctx, int thread_index);
/* The server's own refusals, in the contract's error shape and the format
 * Content-Type and Accept ask for (atp_http_error_fn). */
void atp_router_error(void *ctx, const atp_http_request_t *req, int err,
                      const char *message, atp_http_response_t *res);

/* 0 when flow may write field under the app's ownership matrix, else
 * ATP_ENOTOWNER recorded on flow_key. */
int atp_req_owner_check(atp_req_t *rq, atp_field_kind_t field, atp_str_t flow,
                        const char *flow_key);

/* The holder named on the request's token line (tokens file, contract section
 * 9): "" when auth is off, the token is unknown or its line names none. For
 * the audit trail. */
const char *atp_req_holder(const atp_req_t *rq);

/* Route handlers (routes_*.c). */
int atp_route_availability_get(atp_req_t *rq);
int atp_route_availability_query(atp_req_t *rq);
int atp_route_reservation_create(atp_req_t *rq);
int atp_route_reservation_get(atp_req_t *rq);
int atp_route_reservation_commit(atp_req_t *rq);
int atp_route_reservation_release(atp_req_t *rq);
int atp_route_reservation_extend(atp_req_t *rq);
int atp_route_reservation_fulfil(atp_req_t *rq);
int atp_route_reservation_amend(atp_req_t *rq);
int atp_route_adjustment(atp_req_t *rq);
int atp_route_count(atp_req_t *rq);
int atp_route_safety_stock(atp_req_t *rq);
int atp_route_group_put(atp_req_t *rq);
int atp_route_group_get(atp_req_t *rq);
int atp_route_group_delete(atp_req_t *rq);
int atp_route_dead_letters_list(atp_req_t *rq);
int atp_route_dead_letter_replay(atp_req_t *rq);
int atp_route_dead_letter_resolve(atp_req_t *rq);
int atp_route_flows_list(atp_req_t *rq);
int atp_route_flow_pause(atp_req_t *rq);
int atp_route_flow_resume(atp_req_t *rq);
int atp_route_audit_list(atp_req_t *rq);
int atp_route_batch(atp_req_t *rq);
int atp_route_healthz(atp_req_t *rq);
int atp_route_readyz(atp_req_t *rq);
int atp_route_metrics(atp_req_t *rq);
int atp_route_reconciliation_create(atp_req_t *rq);
int atp_route_reconciliation_list(atp_req_t *rq);
int atp_route_reconciliation_get(atp_req_t *rq);
int atp_route_reconciliation_apply(atp_req_t *rq);
int atp_route_reconciliation_close(atp_req_t *rq);
int atp_route_changes(atp_req_t *rq);
int atp_route_changes_snapshot(atp_req_t *rq);
int atp_route_changes_stream(atp_req_t *rq);

/* --- integration flows around the single routes (routes_flows.c) -------- */

/* Before a write route's handler: when the flow it names (`source`, or
 * `channel` for reservations) is paused, the request is queued and answered
 * 202 (or 429 when the queue is full): returns 1 then (response written), 0
 * to go on, or a negative ATP_E* for an error answer. */
int atp_flows_before(atp_req_t *rq);
/* After it: counts the op for its flow, keeps a rejection as a dead letter
 * (when keep_rejection), and audits a manual adjustment or count by an ops
 * token. */
void atp_flows_after(atp_req_t *rq, int rc, bool keep_rejection);
/* The batch adapter's plug-in points backed by the app's dead letters and
 * flow queues (set as app->flows by atp_app_start). */
const atp_flows_t *atp_flows_plug(atp_app_t *app);
/* The flows' figures for /metrics. */
void atp_flows_write_metrics(atp_app_t *app, atp_buf_t *out);

/* What running a stored request gave. */
typedef struct {
  int rc;     /* the handler's: 0 or a negative ATP_E* */
  int status; /* the answer's HTTP status */
  char code[32];
  char field[ATP_FIELD_BYTES_MAX];
  char message[ATP_MESSAGE_BYTES_MAX];
} atp_router_outcome_t;

/* Runs a stored request (a queued op, a dead letter's) through its route as
 * if it had just come, without the token check (the caller's was checked)
 * or the pause gate, inside the caller's durable bracket; the answer goes
 * to res. ATP_ENOTFOUND when no route serves it. Thread: a loop thread. */
int atp_router_run_stored(atp_app_t *app, const atp_http_request_t *req,
                          atp_http_response_t *res, bool keep_rejection,
                          atp_router_outcome_t *out);
/* The Shopify connector's routes (routes_shopify.c) and its /metrics lines. */
int atp_route_shopify_mappings_put(atp_req_t *rq);
int atp_route_shopify_mappings_get(atp_req_t *rq);
int atp_route_shopify_webhook(atp_req_t *rq);
int atp_route_shopify_status(atp_req_t *rq);
void atp_shopify_write_metrics(atp_app_t *app, atp_buf_t *out);
int atp_route_admin_snapshot_post(atp_req_t *rq);
int atp_route_admin_snapshot_get(atp_req_t *rq);

/* The engine, or NULL (handlers behind /v1 are only dispatched once ready). */
static inline atp_engine_t *atp_app_engine(atp_app_t *app) {
  /* acquire: pairs with the release store in main after the engine is built,
   * so its tables are visible before it is used. */
  return atomic_load_explicit(&app->engine, memory_order_acquire);
}

#endif
