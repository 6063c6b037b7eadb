/* routes_ops.c - /healthz, /readyz and /metrics (CONTRACT.md section 7).
 * Open routes: no token needed. */
#include <time.h>

#include "atp/app.h"
#include "atp/clock.h"
#include "atp/error.h"
#include "atp/reconcile.h"
#include "atp/router.h"

int atp_route_healthz(atp_req_t *rq) {
  atp_writer_t *w = atp_respond_begin(rq, 200);
  atp_w_object_begin(w);
  atp_w_key(w, "status");
  atp_w_cstr(w, "ok");
  atp_w_object_end(w);
  return 0;
}

int atp_route_readyz(atp_req_t *rq) {
  atp_app_t *app = rq->app;
  /* The data dir's own reason first: the journal cannot restore without it. */
  if (app->not_ready)
    return atp_req_fail(rq, ATP_EUNAVAILABLE, NULL, NULL, "%s", app->not_ready);
  if (!atp_app_engine(app) ||
      !atomic_load_explicit(&app->ready, memory_order_acquire)) {
    atp_http_add_header(rq->res, "Retry-After: 1");
    return atp_req_fail(rq, ATP_EUNAVAILABLE, NULL, NULL, "State is not restored yet.");
  }
  atp_journal_t *j = app->durable ? atp_durable_journal(app->durable) : NULL;
  if (j && atp_journal_state(j) != ATP_JOURNAL_OK) {
    atp_http_add_header(rq->res, "Retry-After: 1");
    return atp_req_fail(rq, ATP_EUNAVAILABLE, NULL, NULL,
                        "The journal cannot write to disk; writes are refused.");
  }
  atp_writer_t *w = atp_respond_begin(rq, 200);
  atp_w_object_begin(w);
  atp_w_key(w, "status");
  atp_w_cstr(w, "ready");
  atp_w_object_end(w);
  return 0;
}

int atp_route_metrics(atp_req_t *rq) {
  atp_http_response_t *res = rq->res;
  res->status = 200;
  res->content_type = "text/plain; version=0.0.4; charset=utf-8";
  atp_buf_reset(res->body);
  if (rq->app->metrics)
    atp_metrics_write(rq->app->metrics, atp_app_engine(rq->app), res->body);
  if (rq->app->durable)
    atp_metrics_write_journal(atp_durable_journal(rq->app->durable),
                              atp_app_restore_info(rq->app), res->body);
  if (rq->app->recon) atp_recon_metrics_write(rq->app->recon, res->body);
  if (rq->app->feed) {
    atp_feed_stats_t fs;
    atp_feed_stats(rq->app->feed, &fs);
    atp_feed_sink_t *sink = atp_app_feed_sink(rq->app);
    atp_feed_sink_stats_t ks;
    if (sink) atp_feed_sink_stats(sink, &ks);
    atp_metrics_write_feed(&fs, sink ? &ks : NULL, res->body);
  }
  atp_flows_write_metrics(rq->app, res->body);
  atp_shopify_write_metrics(rq->app, res->body);
  if (rq->app->runtime) {
    atp_app_snapshot_stats_t st;
    atp_app_snapshot_stats(rq->app, &st);
    atp_metrics_snapshot_t ms = {
        .have = st.have,
        .age_ms = st.have ? atp_wall_ms() - st.last.created_at_ms : 0,
        .bytes = st.last.bytes,
        .positions = st.last.counts.positions,
        .lsn = st.last.lsn,
        .duration_ms = st.last.duration_ms,
        .taken = st.taken,
        .failures_local = st.failures_local,
        .failures_redis = st.failures_redis,
        .pushes = st.pushes,
        .redis = st.redis,
        .push_pending = st.push_pending,
        .restore_source = st.restore_source,
        .restore_ms = st.restore_ms};
    atp_metrics_write_snapshot(&ms, res->body);
  }
  if (res->body->failed)
    return atp_req_fail(rq, ATP_ENOMEM, NULL, NULL, "The metrics did not fit.");
  return 0;
}
