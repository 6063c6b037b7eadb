/* limits.h - every limit of atpd in one place.
 *
 * TigerBeetle's rule: put a limit on everything. Tables, slabs and buffers are
 * sized from these at start; requests beyond them are refused at the boundary
 * with a clear error. Units are last in the names.
 */
#ifndef ATP_LIMITS_H
#define ATP_LIMITS_H

/* Identifiers (sku, location, group names, every id): 1..128 bytes. */
#define ATP_ID_BYTES_MAX 128

/* Reservations. */
#define ATP_RESERVATION_LINES_MAX     100      /* lines in one request */
#define ATP_RESERVATION_POSITIONS_MAX 1000     /* lines after group split */
#define ATP_TTL_MS_DEFAULT            900000LL /* 15 min */
#define ATP_TTL_MS_MIN                1000LL
#define ATP_TTL_MS_MAX                604800000LL /* 7 days */

/* Groups. */
#define ATP_GROUP_LOCATIONS_MAX 1000
#define ATP_GROUPS_MAX          65536

/* Quantities: every counter stays within +-ATP_QTY_MAX, so that no sum of two
 * of them can overflow int64; a change that would leave that range is refused
 * with ATP_EOVERFLOW. */
#define ATP_QTY_MAX 1000000000000000LL /* 1e15 */

/* Retention defaults (configurable in atp_engine_config_t). */
#define ATP_IDEMPOTENCY_TTL_MS_DEFAULT 86400000LL  /* 24 h */
#define ATP_ENDED_TTL_MS_DEFAULT       86400000LL  /* 24 h */
#define ATP_HISTORY_WINDOW_MS_DEFAULT  259200000LL /* 72 h */
#define ATP_HISTORY_ENTRIES_MAX        1024        /* per position */

/* Input times (counted_at, occurred_at, as_of) may lie at most this far past
 * the server's clock (--clock-skew-ms): a count "from the future" would absorb
 * every later sale until that date. */
#define ATP_CLOCK_SKEW_MS_DEFAULT 300000LL   /* 5 min */
#define ATP_CLOCK_SKEW_MS_MAX     86400000LL /* 1 day */

/* Engine capacities (defaults; configurable). */
#define ATP_POSITIONS_MAX_DEFAULT (1u << 21) /* 2M */
/* Reservations are kept 24 h after they end: 4M covers ~46 a second all day.
 * Records are allocated up front but touched only when used (~430 bytes each). */
#define ATP_RESERVATIONS_MAX_DEFAULT (1u << 22) /* 4M, live plus retained */
#define ATP_IDEMPOTENCY_MAX_DEFAULT  (1u << 22) /* 4M adjustment/count/fulfil ids */
#define ATP_IDEMPOTENCY_MAX_MAX                         \
  (1u << 26) /* --idempotency-max: 64M, reserved lazily \
              */

/* HTTP. */
#define ATP_HTTP_HEADER_BYTES_MAX    (64 * 1024)
#define ATP_HTTP_BODY_BYTES_MAX      (1024 * 1024)
#define ATP_HTTP_BULK_BODY_BYTES_MAX (64 * 1024 * 1024) /* batch, reconciliations */
#define ATP_HTTP_URL_BYTES_MAX       8192
#define ATP_HTTP_CONNECTIONS_MAX     10000 /* per event-loop thread */
#define ATP_HTTP_PIPELINE_MAX        64    /* requests parsed ahead of responses */
#define ATP_HTTP_IDLE_TIMEOUT_MS     60000
#define ATP_HTTP_HEADER_TIMEOUT_MS   10000 /* whole request head */
#define ATP_HTTP_BODY_TIMEOUT_MS     30000 /* gap between body bytes */
#define ATP_HTTP_THREADS_MAX         64
#define ATP_HTTP_RESPONSE_BYTES_MAX  (256u << 20) /* one response body */
/* One connection's request arena: the bulk body and what its parse needs. */
#define ATP_HTTP_ARENA_BYTES_MAX (4u * ATP_HTTP_BULK_BODY_BYTES_MAX)
/* Queued output beyond which a connection's parsing pauses: a client that
 * does not read its answers is slowed, not buffered. */
#define ATP_HTTP_OUT_HIGH_WATER_BYTES (1024 * 1024)
/* After the last response of a closing connection: how long, and how many
 * bytes, to wait for the client's FIN before a reset. */
#define ATP_HTTP_LINGER_MS        2000
#define ATP_HTTP_LINGER_BYTES_MAX (4u << 20)
/* Stop: grace for in-flight requests before connections are closed. */
#define ATP_HTTP_STOP_TIMEOUT_MS 5000
#define ATP_QUERY_PARAMS_MAX     16 /* query parameters one request may carry */

/* Access: the tokens file (CONTRACT.md section 9) and the ownership file. */
#define ATP_AUTH_TOKENS_MAX       1024
#define ATP_AUTH_TOKEN_BYTES_MAX  256
#define ATP_AUTH_TOKEN_BYTES_MIN  16 /* CONTRACT.md section 9 */
#define ATP_AUTH_HOLDER_BYTES_MAX ATP_ID_BYTES_MAX
#define ATP_OWNERSHIP_WRITERS_MAX 64 /* flows that may write one field */

/* The whole request body, from the end of the head: 64 MiB at ~560 KB/s. A
 * client dripping bytes just inside the gap timeout cannot hold it longer. */
#define ATP_HTTP_BODY_TOTAL_TIMEOUT_MS 120000

/* Codecs. */
#define ATP_CODEC_DEPTH_MAX 32 /* nesting of arrays and objects */
#define ATP_QUERY_ITEMS_MAX 1000
/* Positions one availability answer may carry (a group item counts as its
 * locations): about 150 bytes of JSON each, so 1.5 MB at most, encoded in a
 * few ms, where 1,000 group items over 1,000-location groups built 149 MB. */
#define ATP_QUERY_POSITIONS_MAX 10000
/* Locations an endless-aisle answer lists (the most available first); more
 * are cut with "truncated": true. The engine keeps the top ones by insertion,
 * so its cost grows with this bound times the SKU's locations. */
#define ATP_SKU_LOCATIONS_MAX 1000
#define ATP_BATCH_OPS_MAX     100000

/* Journal (include/atp/journal.h). A record is one change of the engine, so
 * even a 1000-position reservation stays far below the record limit; atp_journal_admit
 * refuses new mutations while the queue holds more than its limit. */
#define ATP_JOURNAL_RECORD_BYTES_MAX      (16u * 1024 * 1024)
#define ATP_JOURNAL_SEGMENT_BYTES_DEFAULT (64ull * 1024 * 1024)
#define ATP_JOURNAL_QUEUE_BYTES_DEFAULT   (64ull * 1024 * 1024)
/* A thread that commits its own groups (atp_journal_commit) writes at most
 * this much while its loop waits; a larger backlog (a big batch) goes to the
 * writer thread, which writes it while the loop goes on. */
#define ATP_JOURNAL_COMMIT_BYTES_MAX (64u * 1024)
/* batch, one loop: a turn's group waits for more requests only while they
 * keep coming, one within this gap of the last (a closed loop of clients
 * answers within a few microseconds each); sparse traffic pays it once. */
#define ATP_COMMIT_GAP_NS        30000
#define ATP_JOURNAL_SEGMENTS_MAX 100000 /* files one directory may hold */

/* Input times (counted_at, occurred_at, as_of, ...) in ms since the epoch:
 * from the epoch to the end of year 9999, the last RFC 3339 can write. */
#define ATP_TIME_MS_MAX 253402300799999LL /* 9999-12-31T23:59:59.999Z */

/* Free text a client may attach (a release's "reason"). */
#define ATP_REASON_BYTES_MAX 256

/* One JSON log line on stderr, the message itself at most half of it; a
 * longer message is cut, so a log line is one write. */
#define ATP_LOG_LINE_BYTES_MAX 1024

/* --snapshot-interval-s: at most a week between snapshots. */
#define ATP_SNAPSHOT_INTERVAL_S_MAX (7 * 86400)

/* Integration flows (CONTRACT.md 6.3, 6.4, 6.6): every piece of their state
 * is bounded. Dead letters: the count is --dead-letters-max; when full the
 * oldest closed (replayed, resolved) ones go first, then the oldest open one
 * (counted in /metrics and logged). Their bytes are bounded too. */
#define ATP_DEAD_LETTERS_MAX_DEFAULT      10000
#define ATP_DEAD_LETTERS_MAX_MAX          1000000
#define ATP_DEAD_LETTERS_BYTES_MAX        (256u * 1024 * 1024)
#define ATP_DEAD_LETTER_MESSAGE_BYTES_MAX 512
/* Flows known by name (paused or seen); a flow beyond it is not tracked. */
#define ATP_FLOWS_MAX 256
/* Ops one paused flow may queue (--flow-queue-max) and their bytes; beyond,
 * 429 too_many_requests with Retry-After. */
#define ATP_FLOW_QUEUE_OPS_DEFAULT 10000
#define ATP_FLOW_QUEUE_OPS_MAX     1000000
#define ATP_FLOW_QUEUE_BYTES_MAX   (64u * 1024 * 1024)
/* Audit entries kept (--audit-max); the oldest go first when full. */
#define ATP_AUDIT_ENTRIES_DEFAULT 100000
#define ATP_AUDIT_ENTRIES_MAX     10000000
/* Free text an operator attaches (a pause's reason, a resolve's note). */
#define ATP_NOTE_BYTES_MAX 1024
/* Answers of the listing routes (dead letters, audit): ?limit= default, max. */
#define ATP_LIST_LIMIT_DEFAULT 100
#define ATP_LIST_LIMIT_MAX     1000

/* bin/atpctl: the answer it reads, and how long it waits for one (--timeout-ms,
 * connect included; connecting alone is cut shorter) before saying the server
 * cannot be reached. */
#define ATP_CTL_RESPONSE_BYTES_MAX (64u << 20)
#define ATP_CTL_TIMEOUT_MS         10000
#define ATP_CTL_CONNECT_TIMEOUT_MS 3000
/* atpctl import: ops per POST /v1/batch by default (--chunk), the rejections
 * its summary lists, the retries of a chunk answered 429 or 503 (waiting the
 * Retry-After, at most the wait below), the columns of a CSV file, and how
 * often a progress bar is redrawn. */
#define ATP_CTL_CHUNK_OPS_DEFAULT    1000
#define ATP_CTL_REJECTIONS_SHOWN     10
#define ATP_CTL_RETRIES_MAX          5
#define ATP_CTL_RETRY_WAIT_S_MAX     10
#define ATP_CTL_CSV_COLUMNS_MAX      64
#define ATP_CTL_PROGRESS_INTERVAL_MS 100

/* The change feed's retention (--feed-retention-h), in hours. */
#define ATP_FEED_RETENTION_H_DEFAULT 72
#define ATP_FEED_RETENTION_H_MAX     8760
/* Threads alive at once that call the engine: each takes a reader slot (one
 * cache line in every engine) on its first call and gives it back when it
 * exits (src/engine/epoch.c). One more is a programmer error that stops the
 * process: a thread without a slot could not be waited for by the engine's
 * memory reclamation. */
#define ATP_ENGINE_THREADS_MAX 1024

/* The Shopify connector's state (src/flows/shopify.c, CONTRACT.md section
 * 11). Each table grows as it fills, up to its bound; at the bound a new
 * entry is refused with a sentence naming the limit (mappings: 429 to the
 * caller; webhooks: 503, so Shopify retries after the oldest expire).
 * Webhook ids, content keys and resource watermarks are kept 72 h: Shopify
 * retries for 4 h and can deliver a day late. Orders are remembered 30 days
 * so that a late fulfilment or refund still finds its hold. */
#define ATP_SHOPIFY_ITEMS_MAX            1000000u
#define ATP_SHOPIFY_LOCATIONS_MAX        10000u
#define ATP_SHOPIFY_LEVELS_MAX           4000000u
#define ATP_SHOPIFY_WEBHOOKS_MAX         2000000u /* ids and content keys */
#define ATP_SHOPIFY_MARKS_MAX            2000000u /* resource watermarks */
#define ATP_SHOPIFY_ORDERS_MAX           2000000u
#define ATP_SHOPIFY_WEBHOOK_RETENTION_MS (72LL * 3600 * 1000)
#define ATP_SHOPIFY_ORDER_RETENTION_MS   (30LL * 24 * 3600 * 1000)
#define ATP_SHOPIFY_MAPPINGS_PER_PUT_MAX 10000u /* items plus locations */
#define ATP_SHOPIFY_WEBHOOK_OPS_MAX      250u   /* ops one webhook becomes */
#define ATP_SHOPIFY_CONFIG_BYTES_MAX     (64u * 1024)

/* The Shopify push (src/flows/shopify_push.c): quantities a call carries
 * (Shopify's input lists hold at most 250), items one re-read query asks for,
 * pending positions kept at most (beyond, the feed waits: backpressure, never
 * a drop), entries one call's build examines, journaled calls sent again at
 * start, and the time a call may take (connect included). */
#define ATP_SHOPIFY_PUSH_BATCH_MAX       250
#define ATP_SHOPIFY_PUSH_REREAD_MAX      25
#define ATP_SHOPIFY_PUSH_PENDING_MAX     1000000
#define ATP_SHOPIFY_PUSH_EXAMINE_MAX     5000
#define ATP_SHOPIFY_PUSH_SAVED_CALLS_MAX 4
#define ATP_SHOPIFY_PUSH_TIMEOUT_MS      10000

#endif
