/* router.c - the route table, dispatch, auth and ownership gates, and the
 * access log / metrics hook (see router.h). */
#include "atp/router.h"

#include <stdio.h>
#include <string.h>

#include "atp/app.h"
#include "atp/assert.h"
#include "atp/error.h"
#include "atp/limits.h"
#include "atp/log.h"

#define ONE_MIB ATP_HTTP_BODY_BYTES_MAX
#define BULK    ATP_HTTP_BULK_BODY_BYTES_MAX

/* Order matters only for speed: the hottest routes come first, since matching
 * is a linear scan (about twenty short string compares at worst). */
static const atp_route_t routes[] = {
    {ATP_HTTP_GET, "/v1/availability", ATP_ACCESS_READ, ATP_FIELD_NONE, ONE_MIB,
     atp_route_availability_get},
    {ATP_HTTP_POST, "/v1/availability/query", ATP_ACCESS_READ, ATP_FIELD_NONE, ONE_MIB,
     atp_route_availability_query},
    {ATP_HTTP_POST, "/v1/reservations", ATP_ACCESS_CHECKOUT, ATP_FIELD_RESERVATIONS,
     ONE_MIB, atp_route_reservation_create},
    {ATP_HTTP_GET, "/v1/reservations/{id}", ATP_ACCESS_CHECKOUT, ATP_FIELD_NONE,
     ONE_MIB, atp_route_reservation_get},
    {ATP_HTTP_POST, "/v1/reservations/{id}/commit", ATP_ACCESS_CHECKOUT, ATP_FIELD_NONE,
     ONE_MIB, atp_route_reservation_commit},
    {ATP_HTTP_POST, "/v1/reservations/{id}/release", ATP_ACCESS_CHECKOUT,
     ATP_FIELD_NONE, ONE_MIB, atp_route_reservation_release},
    {ATP_HTTP_POST, "/v1/reservations/{id}/extend", ATP_ACCESS_CHECKOUT, ATP_FIELD_NONE,
     ONE_MIB, atp_route_reservation_extend},
    {ATP_HTTP_POST, "/v1/reservations/{id}/fulfil", ATP_ACCESS_CHECKOUT, ATP_FIELD_NONE,
     ONE_MIB, atp_route_reservation_fulfil},
    {ATP_HTTP_POST, "/v1/reservations/{id}/amend", ATP_ACCESS_CHECKOUT, ATP_FIELD_NONE,
     ONE_MIB, atp_route_reservation_amend},
    {ATP_HTTP_POST, "/v1/adjustments", ATP_ACCESS_INTEGRATION, ATP_FIELD_ADJUSTMENTS,
     ONE_MIB, atp_route_adjustment},
    {ATP_HTTP_POST, "/v1/counts", ATP_ACCESS_INTEGRATION, ATP_FIELD_COUNTS, ONE_MIB,
     atp_route_count},
    {ATP_HTTP_POST, "/v1/safety-stock", ATP_ACCESS_INTEGRATION, ATP_FIELD_SAFETY_STOCK,
     ONE_MIB, atp_route_safety_stock},
    {ATP_HTTP_PUT, "/v1/groups/{name}", ATP_ACCESS_INTEGRATION, ATP_FIELD_GROUPS,
     ONE_MIB, atp_route_group_put},
    {ATP_HTTP_GET, "/v1/groups/{name}", ATP_ACCESS_READ, ATP_FIELD_NONE, ONE_MIB,
     atp_route_group_get},
    {ATP_HTTP_DELETE, "/v1/groups/{name}", ATP_ACCESS_INTEGRATION, ATP_FIELD_GROUPS,
     ONE_MIB, atp_route_group_delete},
    {ATP_HTTP_GET, "/v1/dead-letters", ATP_ACCESS_OPS, ATP_FIELD_NONE, ONE_MIB,
     atp_route_dead_letters_list},
    {ATP_HTTP_POST, "/v1/dead-letters/{dl_id}/replay", ATP_ACCESS_OPS, ATP_FIELD_NONE,
     ONE_MIB, atp_route_dead_letter_replay},
    {ATP_HTTP_POST, "/v1/dead-letters/{dl_id}/resolve", ATP_ACCESS_OPS, ATP_FIELD_NONE,
     ONE_MIB, atp_route_dead_letter_resolve},
    {ATP_HTTP_GET, "/v1/flows", ATP_ACCESS_OPS, ATP_FIELD_NONE, ONE_MIB,
     atp_route_flows_list},
    {ATP_HTTP_POST, "/v1/flows/{name}/pause", ATP_ACCESS_OPS, ATP_FIELD_NONE, ONE_MIB,
     atp_route_flow_pause},
    {ATP_HTTP_POST, "/v1/flows/{name}/resume", ATP_ACCESS_OPS, ATP_FIELD_NONE, ONE_MIB,
     atp_route_flow_resume},
    {ATP_HTTP_GET, "/v1/audit", ATP_ACCESS_OPS, ATP_FIELD_NONE, ONE_MIB,
     atp_route_audit_list},
    {ATP_HTTP_POST, "/v1/batch", ATP_ACCESS_INTEGRATION, ATP_FIELD_NONE, BULK,
     atp_route_batch},
    {ATP_HTTP_POST, "/v1/reconciliations", ATP_ACCESS_INTEGRATION, ATP_FIELD_NONE, BULK,
     atp_route_reconciliation_create},
    {ATP_HTTP_GET, "/v1/reconciliations", ATP_ACCESS_INTEGRATION, ATP_FIELD_NONE,
     ONE_MIB, atp_route_reconciliation_list},
    {ATP_HTTP_GET, "/v1/reconciliations/{id}", ATP_ACCESS_INTEGRATION, ATP_FIELD_NONE,
     ONE_MIB, atp_route_reconciliation_get},
    {ATP_HTTP_POST, "/v1/reconciliations/{id}/apply", ATP_ACCESS_INTEGRATION,
     ATP_FIELD_NONE, ONE_MIB, atp_route_reconciliation_apply},
    {ATP_HTTP_POST, "/v1/reconciliations/{id}/close", ATP_ACCESS_INTEGRATION,
     ATP_FIELD_NONE, ONE_MIB, atp_route_reconciliation_close},
    {ATP_HTTP_GET, "/v1/changes", ATP_ACCESS_READ, ATP_FIELD_NONE, ONE_MIB,
     atp_route_changes},
    {ATP_HTTP_GET, "/v1/changes/stream", ATP_ACCESS_READ, ATP_FIELD_NONE, ONE_MIB,
     atp_route_changes_stream},
    {ATP_HTTP_GET, "/v1/changes/snapshot", ATP_ACCESS_READ, ATP_FIELD_NONE, ONE_MIB,
     atp_route_changes_snapshot},
    /* Authenticated by its HMAC signature, not by a bearer token. */
    {ATP_HTTP_POST, "/v1/shopify/webhooks", ATP_ACCESS_OPEN, ATP_FIELD_NONE, ONE_MIB,
     atp_route_shopify_webhook},
    {ATP_HTTP_PUT, "/v1/shopify/mappings", ATP_ACCESS_INTEGRATION, ATP_FIELD_NONE,
     ONE_MIB, atp_route_shopify_mappings_put},
    {ATP_HTTP_GET, "/v1/shopify/mappings", ATP_ACCESS_READ, ATP_FIELD_NONE, ONE_MIB,
     atp_route_shopify_mappings_get},
    {ATP_HTTP_GET, "/v1/shopify/status", ATP_ACCESS_READ, ATP_FIELD_NONE, ONE_MIB,
     atp_route_shopify_status},
    {ATP_HTTP_GET, "/healthz", ATP_ACCESS_OPEN, ATP_FIELD_NONE, ONE_MIB,
     atp_route_healthz},
    {ATP_HTTP_GET, "/readyz", ATP_ACCESS_OPEN, ATP_FIELD_NONE, ONE_MIB,
     atp_route_readyz},
    {ATP_HTTP_GET, "/metrics", ATP_ACCESS_OPEN, ATP_FIELD_NONE, ONE_MIB,
     atp_route_metrics},
    {ATP_HTTP_POST, "/admin/snapshot", ATP_ACCESS_OPS, ATP_FIELD_NONE, ONE_MIB,
     atp_route_admin_snapshot_post},
    {ATP_HTTP_GET, "/admin/snapshot", ATP_ACCESS_OPS, ATP_FIELD_NONE, ONE_MIB,
     atp_route_admin_snapshot_get},
};
#define ROUTE_COUNT ((uint32_t)(sizeof routes / sizeof routes[0]))
_Static_assert(ROUTE_COUNT < ATP_METRICS_ROUTES_MAX, "metrics label table too small");

const atp_route_t *atp_routes(uint32_t *count) {
  *count = ROUTE_COUNT;
  return routes;
}

uint32_t atp_route_index(const atp_route_t *route) {
  if (!route) return ROUTE_COUNT;
  ATP_ASSERT(route >= routes && route < routes + ROUTE_COUNT);
  return (uint32_t)(route - routes);
}

void atp_router_print(FILE *out) {
  for (uint32_t i = 0; i < ROUTE_COUNT; i++)
    fprintf(out, "%s %s\n", atp_http_method_name(routes[i].method), routes[i].pattern);
}

/* Compares a pattern with a raw path; {param} matches one non-empty segment.
 * Params are recorded raw (still percent-encoded). */
static bool pattern_match(const char *pat, const char *path, size_t len,
                          atp_str_t *params, uint32_t *param_count) {
  size_t i = 0;
  uint32_t n = 0;
  for (const char *p = pat; *p;) {
    if (*p == '{') {
      size_t start = i;
      while (i < len && path[i] != '/') i++;
      if (i == start || n == ATP_ROUTE_PARAMS_MAX) return false;
      params[n].ptr = path + start;
      params[n].len = (uint32_t)(i - start);
      n++;
      p = strchr(p, '}');
      ATP_ASSERT(p);
      p++;
    } else {
      if (i >= len || path[i] != *p) return false;
      i++;
      p++;
    }
  }
  if (i != len) return false;
  ATP_ASSERT(n <= ATP_ROUTE_PARAMS_MAX);
  *param_count = n;
  return true;
}

const atp_route_t *atp_router_match(atp_http_method_t method, const char *path,
                                    size_t path_len, atp_arena_t *arena,
                                    atp_str_t *params, uint32_t *param_count,
                                    bool *path_known, int *err) {
  *path_known = false;
  *err = 0;
  *param_count = 0;
  atp_str_t raw[ATP_ROUTE_PARAMS_MAX];
  uint32_t n = 0;
  for (uint32_t r = 0; r < ROUTE_COUNT; r++) {
    if (!pattern_match(routes[r].pattern, path, path_len, raw, &n)) continue;
    /* HEAD is served as GET; the server sends the head without the body. */
    bool head_of_get = method == ATP_HTTP_HEAD && routes[r].method == ATP_HTTP_GET;
    if (routes[r].method != method && !head_of_get) {
      *path_known = true;
      continue;
    }
    for (uint32_t k = 0; k < n; k++) {
      if (!arena) {
        params[k] = raw[k];
        continue;
      }
      int rc = atp_percent_decode(arena, raw[k].ptr, raw[k].len, false, &params[k]);
      if (rc != 0) {
        *err = rc == ATP_ENOMEM ? ATP_ENOMEM : ATP_EBADREQ;
        return NULL;
      }
    }
    ATP_ASSERT(n <= ATP_ROUTE_PARAMS_MAX && routes[r].handler);
    *param_count = n;
    return &routes[r];
  }
  return NULL;
}

/* --- per-thread route memory for the log hook -------------------------------- */

/* The log hook learns only the request, not the route the handler matched; a
 * small per-thread ring keyed by request_id carries it over. The hook runs on
 * the same loop thread shortly after the handler, so 64 slots are ample even
 * with a full pipeline. */
#define ROUTE_RING 64
static _Thread_local struct {
  uint64_t request_id;
  uint32_t route;
} route_ring[ROUTE_RING];

static void remember_route(uint64_t request_id, uint32_t route) {
  route_ring[request_id % ROUTE_RING].request_id = request_id;
  route_ring[request_id % ROUTE_RING].route = route;
}

static uint32_t recall_route(uint64_t request_id) {
  if (route_ring[request_id % ROUTE_RING].request_id == request_id)
    return route_ring[request_id % ROUTE_RING].route;
  return ROUTE_COUNT;
}

/* --- dispatch ------------------------------------------------------------------ */

static bool is_v1(const atp_http_request_t *h) {
  return h->path_len >= 4 && memcmp(h->path, "/v1/", 4) == 0;
}

/* Whether a path lies under a prefix that needs a token (contract section 8):
 * "/v1", "/v1/...", "/admin", "/admin/...". */
static bool is_guarded(const char *path, size_t len) {
  static const struct {
    const char *prefix;
    size_t len;
  } guarded[] = {{"/v1", 3}, {"/admin", 6}};
  for (size_t i = 0; i < sizeof guarded / sizeof guarded[0]; i++) {
    size_t n = guarded[i].len;
    if (len >= n && memcmp(path, guarded[i].prefix, n) == 0 &&
        (len == n || path[n] == '/'))
      return true;
  }
  return false;
}

static int fail_unauthorized(atp_req_t *rq) {
  atp_http_add_header(rq->res, "WWW-Authenticate: Bearer");
  return atp_req_fail(rq, ATP_EUNAUTH, NULL, NULL,
                      "A valid bearer token is required (Authorization: Bearer ...).");
}

static int gate(atp_req_t *rq, const atp_route_t *route) {
  atp_app_t *app = rq->app;
  const atp_http_request_t *h = rq->http;
  if (route->access != ATP_ACCESS_OPEN && app->auth) {
    int rc = atp_auth_check(app->auth, route->access, h->authorization,
                            h->authorization ? h->authorization_len : 0);
    if (rc == ATP_EUNAUTH) return fail_unauthorized(rq);
    if (rc != 0)
      return atp_req_fail(rq, rc, NULL, NULL, "This token's role may not call %s %s.",
                          atp_http_method_name(route->method), route->pattern);
  }
  if (is_v1(h) && (!atp_app_engine(app) ||
                   !atomic_load_explicit(&app->ready, memory_order_acquire))) {
    atp_http_add_header(rq->res, "Retry-After: 1");
    return atp_req_fail(rq, ATP_EUNAVAILABLE, NULL, NULL,
                        "The service is starting; retry shortly.");
  }
  /* A body is JSON or msgpack whatever the method; a bodiless request is fine.
   * Bulk routes take more formats (NDJSON, CSV) and check their own. */
  if (h->body_len > 0 && route->body_bytes_max != BULK &&
      rq->in_format != ATP_FORMAT_JSON && rq->in_format != ATP_FORMAT_MSGPACK)
    return atp_req_fail(rq, ATP_EMEDIATYPE, NULL, NULL,
                        "The body must be application/json or application/msgpack.");
  return 0;
}

/* Whether the route changes state (and so is journaled and waits). */
static bool mutates(const atp_route_t *route) {
  return route->method != ATP_HTTP_GET &&
         route->handler != atp_route_availability_query;
}

/* The journal failed or its queue is full: nothing is changed, 503. */
static int refuse_unjournaled(atp_req_t *rq, int rc) {
  atp_http_add_header(rq->res, "Retry-After: 1");
  return atp_req_fail(rq, ATP_EUNAVAILABLE, NULL, NULL, "%s",
                      rc == ATP_EFULL
                          ? "The journal is behind the disk; retry shortly."
                          : "The journal cannot write to disk; retry shortly.");
}

int atp_req_owner_check(atp_req_t *rq, atp_field_kind_t field, atp_str_t flow,
                        const char *flow_key) {
  const atp_ownership_t *own = rq->app->ownership;
  if (atp_ownership_allows(own, field, flow)) return 0;
  if (flow.len == 0)
    return atp_req_fail(
        rq, ATP_ENOTOWNER, NULL, flow_key,
        "Writes to %s are restricted to their owners: name the sending flow.",
        atp_field_name(field));
  return atp_req_fail(rq, ATP_ENOTOWNER, NULL, flow_key,
                      "Flow \"%.*s\" may not write %s.", (int)flow.len, flow.ptr,
                      atp_field_name(field));
}

/* "Allow: GET, PUT" for a path some route serves, in the arena (it lives until
 * the response is queued). NULL when out of memory. */
static const char *allow_header(atp_arena_t *arena, const char *path, size_t len) {
  char *out = atp_arena_alloc(arena, 64);
  if (!out) return NULL;
  size_t used = (size_t)snprintf(out, 64, "Allow:");
  atp_str_t params[ATP_ROUTE_PARAMS_MAX];
  uint32_t n = 0;
  for (uint32_t r = 0; r < ROUTE_COUNT; r++) {
    if (!pattern_match(routes[r].pattern, path, len, params, &n)) continue;
    int w = snprintf(out + used, 64 - used, "%s %s", used > 6 ? "," : "",
                     atp_http_method_name(routes[r].method));
    if (w < 0 || (size_t)w >= 64 - used) break;
    used += (size_t)w;
  }
  return out;
}

/* A context for req: formats from Content-Type and Accept (contract section 1). */
static void req_init(atp_req_t *rq, atp_app_t *app, const atp_http_request_t *req,
                     atp_http_response_t *res) {
  rq->app = app;
  rq->http = req;
  rq->res = res;
  rq->arena = req->arena;
  rq->route = NULL;
  rq->param_count = 0;
  rq->query_count = 0;
  rq->body = NULL;
  rq->field[0] = '\0';
  rq->message[0] = '\0';
  memset(&rq->change_ctx, 0, sizeof rq->change_ctx);
  if (req->x_request_id && req->x_request_id_len <= ATP_ID_BYTES_MAX)
    rq->change_ctx.request_id =
        (atp_str_t){req->x_request_id, (uint32_t)req->x_request_id_len};
  rq->err = 0;
  rq->in_format = req->content_type ? atp_format_from_content_type(
                                          req->content_type, req->content_type_len)
                                    : ATP_FORMAT_UNKNOWN;
  rq->out_format = atp_format_for_response(
      req->accept, req->accept ? req->accept_len : 0, rq->in_format);
  if (rq->out_format != ATP_FORMAT_MSGPACK) rq->out_format = ATP_FORMAT_JSON;
  if (rq->in_format == ATP_FORMAT_UNKNOWN && req->body_len == 0)
    rq->in_format = ATP_FORMAT_JSON;
}

const char *atp_req_holder(const atp_req_t *rq) {
  const atp_auth_t *auth = rq->app->auth;
  const atp_http_request_t *h = rq->http;
  const char *holder = "";
  if (auth)
    (void)atp_auth_identify(auth, h->authorization,
                            h->authorization ? h->authorization_len : 0, &holder);
  return holder;
}

void atp_router_error(void *ctx, const atp_http_request_t *req, int err,
                      const char *message, atp_http_response_t *res) {
  atp_req_t rq;
  req_init(&rq, ctx, req, res);
  snprintf(rq.message, sizeof rq.message, "%s", message ? message : "");
  atp_respond_error(&rq, err);
}

void atp_router_handle(void *ctx, const atp_http_request_t *req,
                       atp_http_response_t *res) {
  atp_req_t rq;
  req_init(&rq, ctx, req, res);
  atp_app_t *app = ctx;

  bool path_known = false;
  int rc = 0;
  rq.route = atp_router_match(req->method, req->path, req->path_len, rq.arena,
                              rq.params, &rq.param_count, &path_known, &rc);
  remember_route(req->request_id, atp_route_index(rq.route));
  /* Authenticate before telling a missing route from a missing method, so an
   * anonymous client cannot map the route table behind /v1 and /admin. */
  if (!rq.route && app->auth && is_guarded(req->path, req->path_len) &&
      atp_auth_role(app->auth, req->authorization,
                    req->authorization ? req->authorization_len : 0) == ATP_ROLE_NONE) {
    atp_respond_error(&rq, fail_unauthorized(&rq));
    return;
  }
  if (!rq.route) {
    if (rc != 0) {
      atp_req_fail(&rq, rc, NULL, NULL, "Malformed percent-encoding in the path.");
      atp_respond_error(&rq, rc);
      return;
    }
    if (path_known) {
      atp_req_fail(&rq, ATP_ENOTFOUND, NULL, NULL, "%s is not allowed on this path.",
                   req->method_name ? req->method_name : "This method");
      atp_respond_error(&rq, ATP_ENOTFOUND);
      res->status = 405;
      const char *allow = allow_header(rq.arena, req->path, req->path_len);
      if (allow) atp_http_add_header(res, allow);
      return;
    }
    atp_req_fail(&rq, ATP_ENOTFOUND, NULL, NULL, "No such route.");
    atp_respond_error(&rq, ATP_ENOTFOUND);
    return;
  }
  rc = gate(&rq, rq.route);
  if (rc == 0) rc = atp_req_parse_query(&rq);
  atp_durable_t *d = app->durable;
  bool bracketed = false;
  if (rc == 0 && d && mutates(rq.route)) {
    if ((rc = atp_durable_admit(d)) != 0) {
      rc = refuse_unjournaled(&rq, rc);
    } else {
      atp_durable_begin(d, (uint32_t)req->thread_index);
      bracketed = true;
      atp_durable_set_context(&rq.change_ctx);
    }
  }
  /* A write names its flow: a paused flow's is queued instead (1: answered
   * 202), and every outcome is counted for the flow and kept if rejected. */
  bool flow_route = rc == 0 && mutates(rq.route) && rq.route->owned != ATP_FIELD_NONE;
  int queued = flow_route ? atp_flows_before(&rq) : 0;
  if (queued < 0) rc = queued;
  if (rc == 0 && queued == 0) {
    rc = rq.route->handler(&rq);
    if (flow_route) atp_flows_after(&rq, rc, true);
  }
  if (bracketed) {
    atp_durable_set_context(NULL); /* rq dies with this call */
    /* Whatever the outcome, the answer may reveal state that is visible and
     * not yet durable (a replay, a conflict): it waits like a success. */
    res->hold_until = atp_durable_end(d, (uint32_t)req->thread_index);
  }
  if (rc != 0) atp_respond_error(&rq, rc);
}

void atp_router_turn(void *ctx, int thread_index) {
  atp_app_t *app = ctx;
  atp_journal_t *j = app->durable ? atp_durable_journal(app->durable) : NULL;
  if (!j) return; /* the restore has not opened it yet */
  /* The loop's thread commits for its slot from its first turn on. */
  static _Thread_local const atp_journal_t *owned;
  if (owned != j) {
    atp_journal_own_commits(j, (uint32_t)thread_index);
    owned = j;
  }
  /* batch may gather: while requests keep arriving (one within
   * ATP_COMMIT_GAP_NS of the last) the group waits for them, up to the
   * journal's bound, so that a closed loop of clients shares one fdatasync
   * instead of splitting into the ones that happened to be ready. The next
   * turn handles them and comes back here. */
  int64_t left = atp_journal_gather_ns(j);
  if (left > 0) {
    atp_http_server_t *server = atp_app_server(app);
    int64_t wait = left < ATP_COMMIT_GAP_NS ? left : ATP_COMMIT_GAP_NS;
    if (server && atp_http_server_io_ready(server, thread_index, wait)) return;
  }
  (void)atp_journal_commit(j);
}

int atp_router_run_stored(atp_app_t *app, const atp_http_request_t *req,
                          atp_http_response_t *res, bool keep_rejection,
                          atp_router_outcome_t *out) {
  atp_req_t rq;
  req_init(&rq, app, req, res);
  bool path_known = false;
  int rc = 0;
  memset(out, 0, sizeof *out);
  rq.route = atp_router_match(req->method, req->path, req->path_len, rq.arena,
                              rq.params, &rq.param_count, &path_known, &rc);
  if (!rq.route) {
    rc = atp_req_fail(&rq, ATP_ENOTFOUND, NULL, NULL, "No such route.");
  } else {
    rc = atp_req_parse_query(&rq);
    /* The stored request names its own writer in the feed's events. */
    const atp_change_ctx_t *outer = atp_durable_context();
    atp_durable_set_context(&rq.change_ctx);
    if (rc == 0) rc = rq.route->handler(&rq);
    atp_durable_set_context(outer);
    if (rq.route->owned != ATP_FIELD_NONE) atp_flows_after(&rq, rc, keep_rejection);
  }
  if (rc != 0) atp_respond_error(&rq, rc);
  /* A handler that wrote its own error body returned 0; rq.err names it. */
  if (rc == 0 && res->status >= 400 && rq.err < 0) rc = rq.err;
  out->rc = rc;
  out->status = res->status;
  snprintf(out->code, sizeof out->code, "%s", rc ? atp_strerror_code(rc) : "");
  snprintf(out->field, sizeof out->field, "%s", rc ? rq.field : "");
  snprintf(out->message, sizeof out->message, "%s",
           !rc             ? ""
           : rq.message[0] ? rq.message
                           : atp_strerror(rc));
  return 0;
}

size_t atp_router_body_limit(void *ctx, atp_http_method_t method, const char *path,
                             size_t path_len) {
  atp_str_t params[ATP_ROUTE_PARAMS_MAX];
  uint32_t n = 0;
  bool known = false;
  int err = 0;
  const atp_route_t *r =
      atp_router_match(method, path, path_len, NULL, params, &n, &known, &err);
  /* Each route's limit is in the table; the bulk routes are served now, so
   * an unknown path needs no more than the default. */
  return r ? r->body_bytes_max : ONE_MIB;
}

/* --- access log and metrics ---------------------------------------------------- */

void atp_router_log(void *ctx, const atp_http_request_t *req, int status,
                    size_t body_bytes, int64_t elapsed_ns) {
  atp_app_t *app = ctx;
  uint32_t route = recall_route(req->request_id);
  if (route == ROUTE_COUNT && req->path && req->path_len) {
    /* A deferred answer (POST /admin/snapshot) comes long after its handler:
     * the ring may have moved on, the path still names the route. */
    atp_str_t params[ATP_ROUTE_PARAMS_MAX];
    uint32_t n = 0;
    bool known = false;
    int err = 0;
    route = atp_route_index(atp_router_match(req->method, req->path, req->path_len,
                                             NULL, params, &n, &known, &err));
  }
  if (app->metrics)
    atp_metrics_record(app->metrics, (uint32_t)req->thread_index, route, status,
                       elapsed_ns);
  if (!app->access_log) return;
  /* The route pattern is logged, never the raw URL or headers, so neither
   * tokens nor ids in query strings reach the log. */
  atp_log_access(req->request_id, atp_http_method_name(req->method),
                 route < ROUTE_COUNT ? routes[route].pattern : "unmatched", status,
                 elapsed_ns, body_bytes);
}
