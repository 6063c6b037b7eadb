/* ops.h - the write operations, each one function shared by its single route
 * and by POST /v1/batch (CONTRACT.md 6.1: "the same validation, idempotency
 * and errors as its single route").
 *
 * An op function reads its fields from a parsed object with the request
 * readers (so a refusal names the field the same way), checks ownership and
 * calls the engine once. It returns 0 with *out filled for the answer, or a
 * negative ATP_E* with rq->field / rq->message set (engine errors included)
 * and, where the route's error body carries details, those in *out. It writes
 * no response: the single route writes its body from *out, the batch one
 * result line.
 *
 * flow is empty on single routes: the writer is then the body's `source`
 * (`channel` for reservations), checked on that key. In a batch it is the op's
 * `flow`: `source` / `channel` may be left out (they default to it) or must
 * equal it, and ownership is checked on `flow`. Reservation follow-ups have
 * no flow on their single routes (role check only); in a batch their flow must
 * be a writer of `reservations`.
 *
 * target is the path's {id} / {name} on single routes, the op's `id` / `name`
 * in a batch (empty for ops that take none).
 *
 * Thread: the loop thread running the request.
 */
#ifndef ATP_APP_OPS_H
#define ATP_APP_OPS_H

#include "atp/router.h"

typedef struct {
  int status;    /* success: 200 or 201 (also for a replay) */
  bool replayed; /* an idempotent replay: nothing changed */
  /* ATP_ECONFLICT from change_from: u.adjust / u.count's position is the
   * current one, answered in the error body. */
  bool change_from_conflict;
  atp_result_t result; /* the engine's error details */
  atp_str_t id;        /* adjust, count: the op's id; group: its name */
  union {
    atp_adjust_res_t adjust;
    atp_count_res_t count;
    atp_position_t position; /* safety_stock */
    struct {
      const atp_str_t *locations;
      uint32_t count;
    } group;
    struct {
      atp_reservation_t *reservation; /* the thread's scratch record */
      atp_shortfalls_t *shortfalls;   /* insufficient_stock: the thread's scratch */
    } res;
  } u;
} atp_op_out_t;

typedef int (*atp_op_fn)(atp_req_t *rq, const atp_val_t *body, atp_str_t flow,
                         atp_str_t target, atp_op_out_t *out);

/* Marks out as holding nothing yet (before an op or a failed parse). */
void atp_op_out_init(atp_op_out_t *out);

/* The op's writer for key ("source", "channel"): on single routes the body's
 * value (read with flags); in a batch flow, which a given value must equal. */
int atp_op_writer(atp_req_t *rq, const atp_val_t *body, atp_str_t flow,
                  const char *key, unsigned flags, atp_str_t *out);

/* Ownership of field for the op's writer, on "flow" in a batch, else key. */
int atp_op_owner_check(atp_req_t *rq, atp_field_kind_t field, atp_str_t flow,
                       atp_str_t writer, const char *key);

/* routes_stock.c */
int atp_op_adjust(atp_req_t *rq, const atp_val_t *body, atp_str_t flow,
                  atp_str_t target, atp_op_out_t *out);
int atp_op_count(atp_req_t *rq, const atp_val_t *body, atp_str_t flow,
                 atp_str_t target, atp_op_out_t *out);
int atp_op_safety_stock(atp_req_t *rq, const atp_val_t *body, atp_str_t flow,
                        atp_str_t target, atp_op_out_t *out);
int atp_op_group(atp_req_t *rq, const atp_val_t *body, atp_str_t flow,
                 atp_str_t target, atp_op_out_t *out);

/* routes_reservations.c */
int atp_op_reserve(atp_req_t *rq, const atp_val_t *body, atp_str_t flow,
                   atp_str_t target, atp_op_out_t *out);
int atp_op_commit(atp_req_t *rq, const atp_val_t *body, atp_str_t flow,
                  atp_str_t target, atp_op_out_t *out);
int atp_op_release(atp_req_t *rq, const atp_val_t *body, atp_str_t flow,
                   atp_str_t target, atp_op_out_t *out);
int atp_op_extend(atp_req_t *rq, const atp_val_t *body, atp_str_t flow,
                  atp_str_t target, atp_op_out_t *out);
int atp_op_fulfil(atp_req_t *rq, const atp_val_t *body, atp_str_t flow,
                  atp_str_t target, atp_op_out_t *out);
int atp_op_amend(atp_req_t *rq, const atp_val_t *body, atp_str_t flow,
                 atp_str_t target, atp_op_out_t *out);

/* routes_shopify.c: the batch op shopify_map, PUT /v1/shopify/mappings's
 * body. */
int atp_op_shopify_map(atp_req_t *rq, const atp_val_t *body, atp_str_t flow,
                       atp_str_t target, atp_op_out_t *out);
/* routes_shopify.c: the batch op shopify_webhook, a webhook kept as a dead
 * letter run again ({topic, webhook_id, payload}; flow shopify only). */
int atp_op_shopify_webhook(atp_req_t *rq, const atp_val_t *body, atp_str_t flow,
                           atp_str_t target, atp_op_out_t *out);

/* routes_batch.c: what one op of atp_batch_run_ops gave. */
typedef struct {
  int rc;        /* 0 or the negative ATP_E* it was refused with */
  int status;    /* its HTTP status (202: queued for a paused flow) */
  bool replayed; /* an idempotent replay */
  bool queued;
  char field[ATP_FIELD_BYTES_MAX];
  char message[ATP_MESSAGE_BYTES_MAX];
} atp_batch_op_result_t;

/* Runs ops (a JSON array of batch ops) as POST /v1/batch runs each of its
 * ops, synchronously, inside the caller's durable bracket: ownership, paused
 * flows' queues, dead letters and idempotency as there, except that a
 * transient refusal (full, out of memory, unavailable) is no dead letter: the
 * caller answers 503 and its sender retries. With dead_letters false no
 * rejection is kept at all (a dead letter's replay: its outcome is the
 * replay's). results gets one entry per op (at most results_max; more is
 * ATP_ETOOLARGE and nothing runs), *count how many. 0, or the refusal of
 * the whole array (malformed, too many) recorded on rq. Thread: the loop
 * thread running rq. */
int atp_batch_run_ops(atp_req_t *rq, const char *ops, size_t ops_len,
                      atp_batch_op_result_t *results, uint32_t results_max,
                      bool dead_letters, uint32_t *count);

#endif
