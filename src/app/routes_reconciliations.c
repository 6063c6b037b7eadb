/* routes_reconciliations.c - reconciliation reports over HTTP (CONTRACT.md
 * section 6.5; the logic is src/flows/reconcile.c).
 *
 * POST /v1/reconciliations takes {id, source, as_of, positions} in JSON or
 * msgpack, or text/csv with a header naming the sku, location and on_hand
 * columns (others ignored, any order) and id, source, as_of in the query.
 * Every line is validated before anything is compared, so a refused export
 * leaves no report; errors name "positions[3].on_hand" or, for CSV,
 * "line 7.on_hand" (physical lines, the header is line 1).
 *
 * apply is allowed only when the report's source may write counts under the
 * ownership matrix (403 not_owner otherwise); close records note and by (by
 * defaults to the token's holder). Both record an audit entry (contract 6.6:
 * reconciliation.apply, reconciliation.close) with by, the token's holder
 * and role, inside the request's durable bracket like the report's own
 * records; an apply or close that changed nothing (a replay) records none.
 */
#include <stdio.h>
#include <string.h>

#include "atp/audit.h"
#include "atp/error.h"
#include "atp/limits.h"
#include "atp/log.h"
#include "atp/reconcile.h"
#include "atp/router.h"

#define CSV_COLUMNS_MAX 64

static atp_str_t cstr(const char *s) {
  return (atp_str_t){s, (uint32_t)strlen(s)};
}

/* Records a reconciliation action in the audit trail (target: the report's
 * id). The action itself stands when the entry cannot be kept (the journal
 * refused it): it is logged with who, so it is never unrecorded, and the
 * answer says 503 so the caller retries, which replays. */
static int audit(atp_req_t *rq, const char *action, atp_str_t id, atp_str_t by,
                 atp_str_t detail) {
  const atp_auth_t *auth = rq->app->auth;
  const atp_http_request_t *h = rq->http;
  const char *role =
      auth ? atp_role_name(atp_auth_role(auth, h->authorization,
                                         h->authorization ? h->authorization_len : 0))
           : "anonymous";
  atp_audit_t *a = rq->app->audit;
  if (!a) return 0;
  atp_engine_t *engine = atp_app_engine(rq->app);
  atp_audit_entry_t e = {
      .at = engine ? atp_engine_now_ms(engine) : 0,
      .action = cstr(action),
      .target = id,
      .by = by,
      .role = cstr(role),
      .token_holder = cstr(atp_req_holder(rq)),
      .detail = detail,
  };
  int rc = atp_audit_record(a, &e, NULL);
  if (rc == 0) return 0;
  atp_log("warn",
          "audit entry not kept (%s): action=%s target=%.*s by=%.*s holder=%s role=%s "
          "%.*s",
          atp_strerror(rc), action, (int)id.len, id.ptr, (int)by.len, by.ptr,
          atp_req_holder(rq), role, (int)detail.len, detail.ptr);
  return atp_req_fail(rq, ATP_EUNAVAILABLE, NULL, NULL,
                      "The audit entry could not be kept; retry.");
}

/* `by` from the body, else the token's holder; when neither names one, 400
 * if what is given (close), else empty (apply, which never required it). */
static int read_by(atp_req_t *rq, const char *what, atp_str_t *by) {
  int rc = atp_get_id(rq, rq->body, NULL, "by", ATP_OPTIONAL, by);
  if (rc || by->len) return rc;
  *by = cstr(atp_req_holder(rq));
  if (by->len || !what) return 0;
  return atp_req_fail(rq, ATP_EBADREQ, NULL, "by",
                      "Name who %s the report: this token names no holder.", what);
}

static atp_recon_store_t *store_of(atp_req_t *rq) {
  return rq->app->recon;
}

static int no_store(atp_req_t *rq) {
  return atp_req_fail(rq, ATP_EUNAVAILABLE, NULL, NULL,
                      "Reconciliations are not available on this server.");
}

/* A decimal integer in [min, max], nothing else; ATP_EBADREQ otherwise. */
static int parse_int(const char *s, size_t len, int64_t min, int64_t max,
                     int64_t *out) {
  size_t i = 0;
  bool neg = false;
  if (len && (s[0] == '-' || s[0] == '+')) neg = s[i++] == '-';
  if (i == len || len - i > 19) return ATP_EBADREQ;
  int64_t v = 0;
  for (; i < len; i++) {
    if (s[i] < '0' || s[i] > '9') return ATP_EBADREQ;
    if (v > (INT64_MAX - (s[i] - '0')) / 10) return ATP_EBADREQ;
    v = v * 10 + (s[i] - '0');
  }
  if (neg) v = -v;
  if (v < min || v > max) return ATP_EBADREQ;
  *out = v;
  return 0;
}

/* A query integer, absent: *out unchanged. */
static int query_int(atp_req_t *rq, const char *name, int64_t min, int64_t max,
                     int64_t *out) {
  const atp_str_t *v = atp_req_query(rq, name);
  if (!v) return 0;
  if (parse_int(v->ptr, v->len, min, max, out) != 0)
    return atp_req_fail(rq, ATP_EBADREQ, NULL, name, "Must be an integer %lld..%lld.",
                        (long long)min, (long long)max);
  return 0;
}

/* as_of in the query: integer ms or RFC 3339, not in the future. */
static int query_time(atp_req_t *rq, const char *name, int64_t *out) {
  const atp_str_t *v = atp_req_query(rq, name);
  if (!v || !v->len)
    return atp_req_fail(rq, ATP_EBADREQ, NULL, name, "The parameter is required.");
  if (parse_int(v->ptr, v->len, 0, ATP_TIME_MS_MAX, out) != 0 &&
      (atp_time_parse_rfc3339(v->ptr, v->len, out) != 0 || *out < 0))
    return atp_req_fail(rq, ATP_EBADREQ, NULL, name,
                        "Must be integer milliseconds or an RFC 3339 time.");
  return atp_req_time_check(rq, NULL, name, *out);
}

/* --- POST /v1/reconciliations ------------------------------------------------- */

static int read_json_positions(atp_req_t *rq, atp_recon_request_t *req) {
  const atp_val_t *arr;
  int rc = atp_get_array(rq, rq->body, NULL, "positions", ATP_REQUIRED, 1,
                         ATP_RECON_POSITIONS_MAX, &arr);
  if (rc) return rc;
  atp_recon_position_t *pos =
      atp_arena_alloc(rq->arena, (size_t)arr->len * sizeof *pos);
  if (!pos)
    return atp_req_fail(rq, ATP_ETOOLARGE, NULL, "positions", "Too many positions.");
  for (uint32_t i = 0; i < arr->len; i++) {
    const atp_val_t *item;
    atp_at_t at = {"positions", (int32_t)i, NULL};
    rc = atp_get_item_object(rq, arr, NULL, "positions", i, &item);
    if (rc == 0) rc = atp_get_id(rq, item, &at, "sku", ATP_REQUIRED, &pos[i].sku);
    if (rc == 0)
      rc = atp_get_id(rq, item, &at, "location", ATP_REQUIRED, &pos[i].location);
    if (rc == 0)
      rc = atp_get_int(rq, item, &at, "on_hand", ATP_REQUIRED, 0, ATP_QTY_MAX,
                       &pos[i].on_hand, NULL);
    if (rc) return rc;
    pos[i].line = 0;
  }
  req->positions = pos;
  req->count = arr->len;
  return 0;
}

static int read_json(atp_req_t *rq, atp_recon_request_t *req) {
  int rc = atp_req_parse_body(rq, true);
  const atp_val_t *b = rq->body;
  if (rc == 0) rc = atp_get_id(rq, b, NULL, "id", ATP_REQUIRED, &req->id);
  if (rc == 0) rc = atp_get_id(rq, b, NULL, "source", ATP_REQUIRED, &req->source);
  if (rc == 0)
    rc = atp_get_time(rq, b, NULL, "as_of", ATP_REQUIRED, &req->as_of_ms, NULL);
  if (rc == 0) rc = read_json_positions(rq, req);
  return rc;
}

typedef struct {
  int sku, location, on_hand; /* column indexes, -1 until the header names them */
} csv_columns_t;

static int csv_fail(atp_req_t *rq, uint32_t line, const char *column, const char *fmt,
                    const char *what) {
  atp_req_fail(rq, ATP_EBADREQ, NULL, NULL, fmt, line, what);
  if (column)
    snprintf(rq->field, sizeof rq->field, "line %u.%s", line, column);
  else
    snprintf(rq->field, sizeof rq->field, "line %u", line);
  return ATP_EBADREQ;
}

static bool field_is(const atp_csv_field_t *f, const char *name) {
  return f->len == strlen(name) && memcmp(f->ptr, name, f->len) == 0;
}

static int csv_header(atp_req_t *rq, const atp_csv_field_t *f, uint32_t n,
                      csv_columns_t *c) {
  *c = (csv_columns_t){-1, -1, -1};
  for (uint32_t i = 0; i < n; i++) {
    int *slot = field_is(&f[i], "sku")        ? &c->sku
                : field_is(&f[i], "location") ? &c->location
                : field_is(&f[i], "on_hand")  ? &c->on_hand
                                              : NULL;
    if (slot && *slot >= 0)
      return csv_fail(rq, 1, NULL, "Line %u names the column %s twice.",
                      slot == &c->sku        ? "sku"
                      : slot == &c->location ? "location"
                                             : "on_hand");
    if (slot) *slot = (int)i;
  }
  const char *missing = c->sku < 0        ? "sku"
                        : c->location < 0 ? "location"
                        : c->on_hand < 0  ? "on_hand"
                                          : NULL;
  if (missing)
    return csv_fail(rq, 1, NULL,
                    "Line %u must be a header naming sku, location and on_hand; %s is "
                    "missing.",
                    missing);
  return 0;
}

static int csv_row(atp_req_t *rq, const atp_csv_t *csv, const atp_csv_field_t *f,
                   uint32_t n, const csv_columns_t *c, atp_recon_position_t *p) {
  uint32_t line = csv->line;
  int need = c->sku > c->location ? c->sku : c->location;
  if (c->on_hand > need) need = c->on_hand;
  if ((int)n <= need)
    return csv_fail(rq, line, NULL, "Line %u has fewer fields than the header%s.", "");
  const atp_csv_field_t *sku = &f[c->sku], *loc = &f[c->location],
                        *qty = &f[c->on_hand];
  if (atp_id_check(sku->ptr, sku->len) != 0)
    return csv_fail(rq, line, "sku",
                    "Line %u: %s must be 1..128 bytes of printable UTF-8.", "sku");
  if (atp_id_check(loc->ptr, loc->len) != 0)
    return csv_fail(rq, line, "location",
                    "Line %u: %s must be 1..128 bytes of printable UTF-8.", "location");
  if (parse_int(qty->ptr, qty->len, 0, ATP_QTY_MAX, &p->on_hand) != 0)
    return csv_fail(rq, line, "on_hand",
                    "Line %u: %s must be an integer 0..1000000000000000.", "on_hand");
  p->sku = (atp_str_t){sku->ptr, sku->len};
  p->location = (atp_str_t){loc->ptr, loc->len};
  p->line = line;
  return 0;
}

/* Two passes over the body: the first counts records (so the positions take
 * one arena allocation), the second validates and fills them. */
static int read_csv(atp_req_t *rq, atp_recon_request_t *req) {
  int rc = atp_query_id(rq, "id", ATP_REQUIRED, &req->id);
  if (rc == 0) rc = atp_query_id(rq, "source", ATP_REQUIRED, &req->source);
  if (rc == 0) rc = query_time(rq, "as_of", &req->as_of_ms);
  if (rc) return rc;
  const atp_http_request_t *h = rq->http;
  atp_csv_field_t f[CSV_COLUMNS_MAX];
  uint32_t n = 0, records = 0;
  atp_parse_error_t perr;
  atp_csv_t csv;
  atp_csv_init(&csv, h->body, h->body_len);
  while ((rc = atp_csv_next(&csv, rq->arena, f, CSV_COLUMNS_MAX, &n, &perr)) == 1)
    records++;
  if (rc == ATP_ENOMEM)
    return atp_req_fail(rq, ATP_ETOOLARGE, NULL, NULL,
                        "The body is too large to parse.");
  if (rc < 0) {
    atp_req_fail(rq, ATP_EBADREQ, NULL, NULL, "Malformed CSV at byte %zu: %s",
                 perr.offset, perr.message);
    snprintf(rq->field, sizeof rq->field, "line %u", csv.next_line);
    return ATP_EBADREQ;
  }
  if (records < 2)
    return atp_req_fail(rq, ATP_EBADREQ, NULL, "positions",
                        "The CSV needs a header line (sku,location,on_hand) and at "
                        "least one position.");
  if (records - 1 > ATP_RECON_POSITIONS_MAX)
    return atp_req_fail(rq, ATP_EBADREQ, NULL, "positions",
                        "At most %u positions in one export, not %u.",
                        ATP_RECON_POSITIONS_MAX, records - 1);
  atp_recon_position_t *pos =
      atp_arena_alloc(rq->arena, (size_t)(records - 1) * sizeof *pos);
  if (!pos)
    return atp_req_fail(rq, ATP_ETOOLARGE, NULL, NULL,
                        "The body is too large to parse.");
  csv_columns_t cols;
  atp_csv_init(&csv, h->body, h->body_len);
  for (uint32_t i = 0; i < records; i++) {
    rc = atp_csv_next(&csv, rq->arena, f, CSV_COLUMNS_MAX, &n, &perr);
    if (rc != 1)
      return atp_req_fail(rq, rc == ATP_ENOMEM ? ATP_ETOOLARGE : ATP_EBADREQ, NULL,
                          NULL, "The CSV could not be read again.");
    rc = i == 0 ? csv_header(rq, f, n, &cols)
                : csv_row(rq, &csv, f, n, &cols, &pos[i - 1]);
    if (rc) return rc;
  }
  req->positions = pos;
  req->count = records - 1;
  return 0;
}

int atp_route_reconciliation_create(atp_req_t *rq) {
  atp_recon_store_t *store = store_of(rq);
  if (!store) return no_store(rq);
  atp_recon_request_t req;
  memset(&req, 0, sizeof req);
  int rc;
  if (rq->in_format == ATP_FORMAT_CSV)
    rc = read_csv(rq, &req);
  else if (rq->in_format == ATP_FORMAT_JSON || rq->in_format == ATP_FORMAT_MSGPACK)
    rc = read_json(rq, &req);
  else
    rc = atp_req_fail(rq, ATP_EMEDIATYPE, NULL, NULL,
                      "The body must be application/json, application/msgpack or "
                      "text/csv.");
  if (rc) return rc;
  bool replayed = false;
  atp_result_t result;
  atp_result_init(&result);
  rc = atp_recon_create(store, atp_app_engine(rq->app), &req, &replayed, &result);
  if (rc) return atp_req_fail_result(rq, rc, &result);
  atp_writer_t *w = atp_respond_begin(rq, replayed ? 200 : 201);
  rc = atp_recon_write(store, req.id, 0, ATP_RECON_ITEMS_PAGE_DEFAULT, replayed, w);
  /* A report is only dropped once closed, and this one is new or a replay of
   * an open one; a concurrent close and eviction could still take it. */
  if (rc) return atp_req_fail(rq, rc, NULL, "id", "The report was closed and dropped.");
  return 0;
}

/* --- reads ---------------------------------------------------------------------- */

int atp_route_reconciliation_get(atp_req_t *rq) {
  atp_recon_store_t *store = store_of(rq);
  if (!store) return no_store(rq);
  atp_str_t id;
  int64_t from = 0, limit = ATP_RECON_ITEMS_PAGE_DEFAULT;
  int rc = atp_req_path_id(rq, "id", "reconciliation id", &id);
  if (rc == 0) rc = query_int(rq, "items_from", 0, UINT32_MAX, &from);
  if (rc == 0) rc = query_int(rq, "items_limit", 1, ATP_RECON_ITEMS_PAGE_MAX, &limit);
  if (rc) return rc;
  atp_writer_t *w = atp_respond_begin(rq, 200);
  rc = atp_recon_write(store, id, (uint32_t)from, (uint32_t)limit, false, w);
  if (rc)
    return atp_req_fail(rq, rc, NULL, "id", "No reconciliation %.*s.", (int)id.len,
                        id.ptr);
  return 0;
}

int atp_route_reconciliation_list(atp_req_t *rq) {
  atp_recon_store_t *store = store_of(rq);
  if (!store) return no_store(rq);
  int64_t after = 0, limit = ATP_RECON_LIST_DEFAULT;
  int status = -1;
  int rc = query_int(rq, "cursor", 0, INT64_MAX, &after);
  if (rc == 0) rc = query_int(rq, "limit", 1, ATP_RECON_LIST_MAX, &limit);
  const atp_str_t *s = atp_req_query(rq, "status");
  if (rc == 0 && s) {
    atp_recon_status_t st;
    if (atp_recon_status_parse(*s, &st) != 0)
      return atp_req_fail(rq, ATP_EBADREQ, NULL, "status",
                          "Must be open, applied or closed.");
    status = (int)st;
  }
  if (rc) return rc;
  atp_recon_list_write(store, status, (uint64_t)after, (uint32_t)limit,
                       atp_respond_begin(rq, 200));
  return 0;
}

/* --- apply and close ------------------------------------------------------------ */

int atp_route_reconciliation_apply(atp_req_t *rq) {
  atp_recon_store_t *store = store_of(rq);
  if (!store) return no_store(rq);
  atp_str_t id;
  bool zero = false;
  int rc = atp_req_path_id(rq, "id", "reconciliation id", &id);
  if (rc == 0) rc = atp_req_parse_body(rq, false);
  if (rc == 0)
    rc = atp_get_bool(rq, rq->body, NULL, "zero_missing_there", ATP_OPTIONAL, &zero,
                      NULL);
  atp_str_t by = {"", 0};
  if (rc == 0) rc = read_by(rq, NULL, &by);
  if (rc) return rc;
  char source[ATP_ID_BYTES_MAX + 1];
  if (atp_recon_source(store, id, source) != 0)
    return atp_req_fail(rq, ATP_ENOTFOUND, NULL, "id", "No reconciliation %.*s.",
                        (int)id.len, id.ptr);
  /* The counts are the report's source's writes: it must own on_hand. */
  atp_str_t src = {source, (uint32_t)strlen(source)};
  rc = atp_req_owner_check(rq, ATP_FIELD_COUNTS, src, "source");
  if (rc) return rc;
  atp_recon_apply_t out;
  atp_result_t result;
  atp_result_init(&result);
  bool replayed = false;
  rc = atp_recon_apply(store, atp_app_engine(rq->app), id, zero, &out, &replayed,
                       &result);
  if (rc) return atp_req_fail_result(rq, rc, &result);
  char detail[160];
  snprintf(detail, sizeof detail,
           "applied=%llu stale=%llu replayed=%llu skipped=%llu "
           "failed=%llu",
           (unsigned long long)out.applied, (unsigned long long)out.stale,
           (unsigned long long)out.replayed, (unsigned long long)out.skipped,
           (unsigned long long)out.failed);
  if (!replayed && (rc = audit(rq, "reconciliation.apply", id, by, cstr(detail))) != 0)
    return rc;
  rc = atp_recon_write(store, id, 0, ATP_RECON_ITEMS_PAGE_DEFAULT, replayed,
                       atp_respond_begin(rq, 200));
  if (rc) return atp_req_fail(rq, rc, NULL, "id", "The report was dropped.");
  return 0;
}

int atp_route_reconciliation_close(atp_req_t *rq) {
  atp_recon_store_t *store = store_of(rq);
  if (!store) return no_store(rq);
  atp_str_t id, note = {"", 0}, by = {"", 0};
  int rc = atp_req_path_id(rq, "id", "reconciliation id", &id);
  if (rc == 0) rc = atp_req_parse_body(rq, true);
  if (rc == 0)
    rc = atp_get_text(rq, rq->body, NULL, "note", ATP_REQUIRED,
                      ATP_RECON_NOTE_BYTES_MAX, &note);
  if (rc == 0) rc = read_by(rq, "closes", &by);
  if (rc) return rc;
  bool replayed = false;
  atp_result_t result;
  atp_result_init(&result);
  atp_engine_t *engine = atp_app_engine(rq->app);
  rc = atp_recon_close(store, id, note, by, atp_engine_now_ms(engine), &replayed,
                       &result);
  if (rc) return atp_req_fail_result(rq, rc, &result);
  if (!replayed && (rc = audit(rq, "reconciliation.close", id, by, note)) != 0)
    return rc;
  rc = atp_recon_write(store, id, 0, ATP_RECON_ITEMS_PAGE_DEFAULT, replayed,
                       atp_respond_begin(rq, 200));
  if (rc) return atp_req_fail(rq, rc, NULL, "id", "The report was dropped.");
  return 0;
}
