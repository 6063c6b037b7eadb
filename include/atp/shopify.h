/* shopify.h - the Shopify connector (CONTRACT.md section 11): its
 * configuration, its durable state (mappings, the quantities last known to be
 * in Shopify, webhook dedupe) and the push of availability to the Admin
 * GraphQL API.
 *
 * Two halves, two modules:
 *   - src/flows/shopify.c owns the configuration and the state. Webhooks
 *     (src/app/routes_shopify.c) become ops of the flow "shopify", applied
 *     through the batch path, so ownership, dead letters, pause and resume
 *     apply to them as to any flow.
 *   - src/flows/shopify_push.c is a consumer of the change feed on its own
 *     thread and libuv loop (libcurl's multi interface, src/flows/
 *     http_client.c): it coalesces each mapped position's newest `available`
 *     and sends inventorySetQuantities, paced by the cost bucket Shopify
 *     reports, and records what Shopify now holds with
 *     atp_shopify_level_set.
 *
 * Ids. Shopify ids exceed 2^53: they are uint64_t everywhere here, parsed
 * from digits or from a GID ("gid://shopify/InventoryItem/123") and never
 * through a double.
 *
 * Durable records: journal kinds 48..55 are the state's (shopify.c), 56..59
 * the push's (shopify_push.c); proto/journal.md lists them.
 *
 * Thread: the lookups and level calls from any thread (the state
 * synchronises itself); create and destroy once.
 */
#ifndef ATP_SHOPIFY_H
#define ATP_SHOPIFY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "atp/codec.h"
#include "atp/durability.h"

#define ATP_SHOPIFY_SECRETS_MAX     2u
#define ATP_SHOPIFY_KIND_FIRST      48u /* shopify.c: 48..55 */
#define ATP_SHOPIFY_KIND_LAST       55u
#define ATP_SHOPIFY_PUSH_KIND_FIRST 56u /* shopify_push.c: 56..59 */
#define ATP_SHOPIFY_PUSH_KIND_LAST  59u

/* --shopify FILE, as CONTRACT.md section 11. */
typedef struct {
  char shop[256];       /* "example.myshopify.com" */
  char api_version[16]; /* "2026-10" */
  char admin_url[512];  /* the GraphQL endpoint; defaults to the shop's */
  char *access_token;   /* heap; from access_token_file or ATPD_SHOPIFY_TOKEN;
                           never logged, never answered */
  char secrets[ATP_SHOPIFY_SECRETS_MAX][256]; /* current first, then previous */
  uint32_t secret_count;
  char reservation_attribute[64]; /* note_attributes entry naming the hold */
  bool push_enabled;
  uint32_t points_per_second; /* atpd's share of the shop's restore rate */
  bool fetch_mappings;        /* push.fetch_mappings: the push maps every variant with
                                 a SKU and every location (by name) from Shopify at
                                 start (src/flows/shopify_push.c) */
} atp_shopify_config_t;

/* Reads and checks the file. 0, or ATP_EBADREQ with a sentence in err naming
 * the file and the field. */
int atp_shopify_config_load(const char *path, atp_shopify_config_t *out, char *err,
                            size_t err_len);
void atp_shopify_config_free(atp_shopify_config_t *config);

/* "gid://shopify/<Type>/<digits>" or bare digits -> *out (nonzero, 64-bit).
 * ATP_EBADREQ otherwise (also for a GID of another type when type is not
 * NULL). */
int atp_shopify_id_parse(atp_str_t text, const char *type, uint64_t *out);

typedef struct atp_shopify atp_shopify_t;

/* Registers the state's durable section with d (before restore). */
int atp_shopify_create(const atp_shopify_config_t *config, atp_durable_t *d,
                       atp_shopify_t **out);
void atp_shopify_destroy(atp_shopify_t *s);
const atp_shopify_config_t *atp_shopify_config(const atp_shopify_t *s);

/* Mappings. false when sku / location is not mapped. */
bool atp_shopify_item_of_sku(atp_shopify_t *s, atp_str_t sku,
                             uint64_t *inventory_item_id, uint64_t *variant_id);
bool atp_shopify_location_of(atp_shopify_t *s, atp_str_t location,
                             uint64_t *shopify_location_id);

/* The `available` quantity last known to be in Shopify at (item, location):
 * what atpd last pushed there, or what Shopify reported on a re-read. false
 * when none is known. */
bool atp_shopify_level_get(atp_shopify_t *s, uint64_t inventory_item_id,
                           uint64_t shopify_location_id, int64_t *quantity);
/* Records it (journaled). ATP_EFULL at the bound, ATP_ENOMEM. */
int atp_shopify_level_set(atp_shopify_t *s, uint64_t inventory_item_id,
                          uint64_t shopify_location_id, int64_t quantity);

/* The push's figures (GET /v1/shopify/status `push`, /metrics). The route
 * and the metrics read them through struct atp_app's shopify_push_stats
 * callback, which shopify_push.c fills, so the state half links without the
 * push half. */
typedef struct {
  bool enabled;
  uint64_t pending;          /* mapped positions whose newest value is not out */
  int64_t lag_ms;            /* age of the oldest pending change; 0 when none */
  uint64_t cursor;           /* the durable feed cursor (a sequence) */
  double points_available;   /* Shopify's bucket, as last reported */
  double restore_rate;       /* points/s, as last reported */
  uint64_t throttled;        /* THROTTLED answers (HTTP 200 or 429) */
  uint64_t stale_retries;    /* CHANGE_FROM_QUANTITY_STALE re-reads */
  uint64_t calls;            /* GraphQL calls sent */
  uint64_t positions_pushed; /* quantities Shopify accepted */
  uint64_t points_spent;     /* actualQueryCost summed */
  uint64_t errors;           /* transport errors and 5xx */
  char last_error[256];      /* "" when none */
} atp_shopify_push_stats_t;

typedef void (*atp_shopify_push_stats_fn)(void *ctx, atp_shopify_push_stats_t *out);

/* --- the state half's further calls (src/flows/shopify.c) ----------------
 *
 * Mappings are one-to-one: mapping a SKU to a variant replaces whatever the
 * SKU or the variant (or its inventory item) was mapped to before; the same
 * for locations. Each call journals one record; ATP_EFULL at the table's
 * bound (limits.h), ATP_ENOMEM, or the journal's error. Thread: any. */
int atp_shopify_map_item(atp_shopify_t *s, atp_str_t sku, uint64_t variant_id,
                         uint64_t inventory_item_id);
int atp_shopify_map_location(atp_shopify_t *s, atp_str_t location,
                             uint64_t shopify_location_id);
/* Moves whenever a mapping changes (served or replayed): the push walks
 * every position again when it sees it move, so a position mapped after its
 * last change still reaches Shopify. Thread: any. */
uint64_t atp_shopify_mappings_generation(atp_shopify_t *s);
/* Reverse lookups: the SKU (location) into buf (cap >= ATP_ID_BYTES_MAX + 1),
 * NUL-terminated; false when not mapped. */
bool atp_shopify_sku_of_variant(atp_shopify_t *s, uint64_t variant_id, char *buf,
                                size_t cap);
bool atp_shopify_sku_of_item(atp_shopify_t *s, uint64_t inventory_item_id, char *buf,
                             size_t cap);
bool atp_shopify_location_of_shopify(atp_shopify_t *s, uint64_t shopify_location_id,
                                     char *buf, size_t cap);
/* Table sizes, for the mappings answer and /metrics. */
void atp_shopify_counts(atp_shopify_t *s, uint64_t *items, uint64_t *locations,
                        uint64_t *levels, uint64_t *webhooks);

/* Webhook outcomes (the answer's `outcome`, the status figures). */
typedef enum {
  ATP_SHOPIFY_APPLIED = 0,
  ATP_SHOPIFY_REPLAYED,
  ATP_SHOPIFY_IGNORED,
  ATP_SHOPIFY_DEAD_LETTER,
  ATP_SHOPIFY_QUEUED,
  ATP_SHOPIFY_UNAUTHORIZED, /* counted only: refused 401 */
  ATP_SHOPIFY_OUTCOME_COUNT_
} atp_shopify_outcome_t;
const char *atp_shopify_outcome_name(atp_shopify_outcome_t outcome);

/* The topics handled; anything else counts as "other" (and is ignored). */
typedef enum {
  ATP_SHOPIFY_ORDERS_CREATE = 0,
  ATP_SHOPIFY_ORDERS_CANCELLED,
  ATP_SHOPIFY_FULFILLMENTS_CREATE,
  ATP_SHOPIFY_REFUNDS_CREATE,
  ATP_SHOPIFY_INVENTORY_LEVELS_UPDATE,
  ATP_SHOPIFY_TOPIC_OTHER,
  ATP_SHOPIFY_TOPIC_COUNT_
} atp_shopify_topic_t;
const char *atp_shopify_topic_name(atp_shopify_topic_t topic);
atp_shopify_topic_t atp_shopify_topic_of(atp_str_t header);

/* Dedupe. A webhook is first looked up by its X-Shopify-Webhook-Id, then by
 * its content key (atp_shopify_content_key: the topic and raw body), and
 * true with the first outcome when either was recorded within
 * ATP_SHOPIFY_WEBHOOK_RETENTION_MS. record keeps both (journaled):
 * ATP_EFULL when the table is at its bound after dropping expired entries. */
bool atp_shopify_webhook_seen(atp_shopify_t *s, atp_str_t webhook_id,
                              const uint8_t content_key[32],
                              atp_shopify_outcome_t *first);
int atp_shopify_webhook_record(atp_shopify_t *s, atp_str_t webhook_id,
                               const uint8_t content_key[32],
                               atp_shopify_outcome_t outcome);

/* Watermarks: the newest time (ms) applied per resource ("order:<id>",
 * "level:<item>:<location>", ...). older is true when at_ms lies before the
 * resource's watermark; advance raises it (journaled; never lowers). */
bool atp_shopify_mark_older(atp_shopify_t *s, atp_str_t resource, int64_t at_ms,
                            int64_t *mark_ms);
int atp_shopify_mark_advance(atp_shopify_t *s, atp_str_t resource, int64_t at_ms);

/* Orders seen by orders/create: whether atpd holds stock for them (the hold's
 * id) or booked them as a POS sale, so a fulfilment or refund later knows
 * what to do. */
typedef enum {
  ATP_SHOPIFY_ORDER_HOLD = 1, /* reservation names the hold */
  ATP_SHOPIFY_ORDER_POS,      /* booked as sale adjustments */
  ATP_SHOPIFY_ORDER_UNTRACKED /* online without a hold: atpd holds nothing */
} atp_shopify_order_kind_t;
int atp_shopify_order_set(atp_shopify_t *s, uint64_t order_id,
                          atp_shopify_order_kind_t kind, atp_str_t reservation);
/* false when unknown; reservation into buf (cap >= ATP_ID_BYTES_MAX + 1). */
bool atp_shopify_order_get(atp_shopify_t *s, uint64_t order_id,
                           atp_shopify_order_kind_t *kind, char *buf, size_t cap);

/* Webhook figures kept in memory since start (status and /metrics). */
void atp_shopify_webhook_count(atp_shopify_t *s, atp_shopify_topic_t topic,
                               atp_shopify_outcome_t outcome);
uint64_t atp_shopify_webhook_figure(atp_shopify_t *s, atp_shopify_topic_t topic,
                                    atp_shopify_outcome_t outcome);

/* --- HMAC and content keys (src/flows/shopify_hmac.c, the only file that
 * includes OpenSSL) ------------------------------------------------------- */

/* Whether signature (the X-Shopify-Hmac-Sha256 header: base64 of the
 * HMAC-SHA256 of body) matches under any of the configured secrets. The
 * comparison takes the same time wherever the bytes differ. Thread: any. */
bool atp_shopify_hmac_valid(const atp_shopify_config_t *config, const char *body,
                            size_t body_len, const char *signature,
                            size_t signature_len);
/* SHA-256 over the topic, a NUL and the body: a delivery's content key. */
void atp_shopify_content_key(atp_str_t topic, const char *body, size_t body_len,
                             uint8_t out[32]);

#endif
