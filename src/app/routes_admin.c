/* routes_admin.c - POST and GET /admin/snapshot (CONTRACT.md section 7; role
 * ops, section 8).
 *
 * A snapshot takes seconds on a large state, so the POST never runs it on the
 * loop: it queues the request with the snapshot thread (src/app/app.c) and
 * defers its answer, which that thread delivers through the HTTP server once
 * the snapshot is written (and, with Redis, pushed). The loop goes on serving
 * every other connection meanwhile.
 *
 * The POST is an operator action: its audit entry ("snapshot", by the
 * body's `by` or the token's holder) is recorded when the request is
 * queued, inside the request's durable bracket, so the snapshot that
 * follows holds it. */
#include <string.h>

#include "atp/app.h"
#include "atp/audit.h"
#include "atp/error.h"
#include "atp/log.h"
#include "atp/router.h"

static atp_str_t cstr(const char *s) {
  return (atp_str_t){s, (uint32_t)strlen(s)};
}

static int audit_snapshot(atp_req_t *rq) {
  atp_audit_t *a = rq->app->audit;
  if (!a) return 0;
  int rc = atp_req_parse_body(rq, false);
  atp_str_t by = {"", 0};
  if (rc == 0) rc = atp_get_id(rq, rq->body, NULL, "by", ATP_OPTIONAL, &by);
  if (rc) return rc;
  if (!by.len) by = cstr(atp_req_holder(rq));
  const atp_auth_t *auth = rq->app->auth;
  const atp_http_request_t *h = rq->http;
  const char *role =
      auth ? atp_role_name(atp_auth_role(auth, h->authorization,
                                         h->authorization ? h->authorization_len : 0))
           : "anonymous";
  atp_engine_t *engine = atp_app_engine(rq->app);
  atp_audit_entry_t e = {
      .at = engine ? atp_engine_now_ms(engine) : 0,
      .action = cstr("snapshot"),
      .target = cstr("snapshot"),
      .by = by,
      .role = cstr(role),
      .token_holder = cstr(atp_req_holder(rq)),
      .detail = cstr(""),
  };
  rc = atp_audit_record(a, &e, NULL);
  if (rc == 0) return 0;
  atp_log("warn", "audit entry for a snapshot request not kept: %s", atp_strerror(rc));
  return atp_req_fail(rq, ATP_EUNAVAILABLE, NULL, NULL,
                      "The audit entry could not be kept; retry.");
}

static int not_ready(atp_req_t *rq) {
  atp_http_add_header(rq->res, "Retry-After: 1");
  return atp_req_fail(rq, ATP_EUNAVAILABLE, NULL, NULL,
                      "The service is starting; retry shortly.");
}

int atp_route_admin_snapshot_post(atp_req_t *rq) {
  atp_app_t *app = rq->app;
  if (!atomic_load_explicit(&app->ready, memory_order_acquire)) return not_ready(rq);
  int rc = audit_snapshot(rq);
  if (rc) return rc;
  rc = atp_app_snapshot_request(app, rq->http->thread_index, rq->http->request_id,
                                rq->out_format);
  if (rc == ATP_ETOOMANY) {
    atp_http_add_header(rq->res, "Retry-After: 1");
    return atp_req_fail(rq, rc, NULL, NULL, "Too many snapshot requests are waiting.");
  }
  if (rc != 0) return not_ready(rq);
  rq->res->defer = true;
  return 0;
}

int atp_route_admin_snapshot_get(atp_req_t *rq) {
  atp_app_snapshot_stats_t st;
  atp_app_snapshot_stats(rq->app, &st);
  if (!st.have)
    return atp_req_fail(rq, ATP_ENOTFOUND, NULL, NULL, "No snapshot has been taken.");
  atp_app_snapshot_write_info(atp_respond_begin(rq, 200), &st);
  return 0;
}
