/* shopify_push.h - availability out to Shopify (CONTRACT.md section 11,
 * "Availability out"): a consumer of the change feed on its own thread and
 * libuv loop that sends inventorySetQuantities for every mapped position
 * whose `available` changed.
 *
 * How it works (src/flows/shopify_push.c has the details):
 *   - Coalescing. Each atpd.position.changed event of a mapped position marks
 *     the (inventory item, Shopify location) pending; a call takes the
 *     position's `available` from the engine at the moment it is built, so
 *     however many changes a position had, one quantity goes out with the
 *     newest value. A position whose value equals what Shopify holds
 *     (atp_shopify_level_get) is settled without a call.
 *   - Calls. Up to 250 quantities a call, the oldest pending first, with
 *     changeFromQuantity = the value last known in Shopify (re-read from
 *     Shopify first when none is known or when Shopify answers
 *     CHANGE_FROM_QUANTITY_STALE), referenceDocumentUri naming the newest
 *     change the call carries and an idempotency key that is a hash of the
 *     call's input, so the same call sent again (after a timeout, or after a
 *     crash: the call is journaled before it is sent and sent again first at
 *     restart) is the same call to Shopify.
 *   - Pacing. The cost bucket Shopify reports (extensions.cost.throttleStatus)
 *     and atpd's share (push.points_per_second) both have to hold a call's
 *     cost before it is sent; throttles, 5xx and transport errors back off
 *     with jitter.
 *   - Durable cursor. The feed cursor below which every change is pushed (or
 *     found already in Shopify) is journaled (kinds 56..59, proto/journal.md);
 *     a restart reads the feed from there again, so nothing is lost, and
 *     changeFromQuantity plus the idempotency key keep a repeated call from
 *     applying twice.
 *
 * Thread: create (before restore) and start (after) from the thread that
 * starts the app; stats from any thread; destroy once.
 */
#ifndef ATP_SHOPIFY_PUSH_H
#define ATP_SHOPIFY_PUSH_H

#include "atp/durability.h"
#include "atp/engine.h"
#include "atp/feed.h"
#include "atp/shopify.h"

typedef struct atp_shopify_push atp_shopify_push_t;

/* Registers the push's durable section (its cursor and calls in flight) with
 * d; call before restore. ATP_ENOMEM, ATP_ETOOMANY. */
int atp_shopify_push_create(atp_shopify_t *shopify, atp_durable_t *d,
                            atp_shopify_push_t **out);

/* Starts the thread once restore opened the journal. ATP_EUNAVAILABLE when
 * the thread or its loop cannot start, ATP_ENOMEM. */
int atp_shopify_push_start(atp_shopify_push_t *push, atp_feed_t *feed,
                           atp_engine_t *engine);

/* Stops the thread (a call in flight is cancelled: it is sent again at the
 * next start) after journaling the cursor. The durable section stays
 * registered (a snapshot still exports the cursor), so the push is freed
 * only by destroy, once the journal is closed. NULL or not started:
 * nothing. */
void atp_shopify_push_stop(atp_shopify_push_t *push);
/* Stops (if started) and frees. NULL: nothing. */
void atp_shopify_push_destroy(atp_shopify_push_t *push);

/* The figures; an atp_shopify_push_stats_fn (ctx: the push). */
void atp_shopify_push_stats(void *ctx, atp_shopify_push_stats_t *out);

#endif
