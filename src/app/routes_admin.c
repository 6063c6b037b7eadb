/* routes_admin.c - POST and GET /admin/snapshot (CONTRACT.md section 7; role
 * ops, section 8).
 *
 * A snapshot takes seconds on a large state, so the POST never runs it on the
 * loop: it queues the request with the snapshot thread (src/app/app.c) and
 * defers its answer, which that thread delivers through the HTTP server once
 * the snapshot is written (and, with Redis, pushed). The loop goes on serving
 * every other connection meanwhile. */
#include "atp/app.h"
#include "atp/error.h"
#include "atp/router.h"

static int not_ready(atp_req_t *rq) {
  if (rq->res->extra_header_count < ATP_HTTP_EXTRA_HEADERS_MAX)
    rq->res->extra_headers[rq->res->extra_header_count++] = "Retry-After: 1";
  return atp_req_fail(rq, ATP_EUNAVAILABLE, NULL, NULL,
                      "The service is starting; retry shortly.");
}

int atp_route_admin_snapshot_post(atp_req_t *rq) {
  atp_app_t *app = rq->app;
  if (!atomic_load_explicit(&app->ready, memory_order_acquire)) return not_ready(rq);
  int rc = atp_app_snapshot_request(app, rq->http->thread_index, rq->http->request_id,
                                    rq->out_format);
  if (rc == ATP_ETOOMANY) {
    if (rq->res->extra_header_count < ATP_HTTP_EXTRA_HEADERS_MAX)
      rq->res->extra_headers[rq->res->extra_header_count++] = "Retry-After: 1";
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
