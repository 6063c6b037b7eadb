/* auth.h - bearer tokens with roles, and the ownership (source-of-truth) matrix.
 *
 * Tokens file: one "TOKEN ROLE [HOLDER]" line each, '#' starts a comment, blank
 * lines ignored. HOLDER names the person or system behind the token, for the
 * audit trail. Roles: read (availability), checkout (reservations + read),
 * integration (stock changes, groups, batch, reconciliations + read), ops
 * (everything). A request's token is compared with every configured token in
 * constant time (the work does not depend on where the first differing byte
 * is, nor on which token matched), and tokens are never logged. Loading a file
 * at start also refuses weak tokens (atp_auth_token_check): shorter than
 * ATP_AUTH_TOKEN_BYTES_MIN, bytes outside printable ASCII, or the shipped
 * placeholders of deploy/tokens.example, so a copied example never goes live.
 *
 * Ownership file (CONTRACT.md section 9): per field, the flows that may write
 * it and the team owning its rejections. A field without an entry, or no file
 * at all, lets every flow write. A write without a flow (no `source` /
 * `channel`) to a field with a writer list is refused: an anonymous write
 * cannot prove it comes from an owner.
 *
 * Thread: load on the main thread; the checks are read-only, any thread.
 */
#ifndef ATP_AUTH_H
#define ATP_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "atp/engine.h"
#include "atp/limits.h"

typedef enum {
  ATP_ROLE_NONE = 0, /* no valid token */
  ATP_ROLE_READ,
  ATP_ROLE_CHECKOUT,
  ATP_ROLE_INTEGRATION,
  ATP_ROLE_OPS,
} atp_role_t;

/* What a route needs. */
typedef enum {
  ATP_ACCESS_OPEN = 0,    /* no token needed (/healthz, /readyz, /metrics) */
  ATP_ACCESS_READ,        /* any role */
  ATP_ACCESS_CHECKOUT,    /* checkout, ops */
  ATP_ACCESS_INTEGRATION, /* integration, ops */
  ATP_ACCESS_OPS,         /* ops */
} atp_access_t;

/* The tokens file's bounds: limits.h (ATP_AUTH_*). */

typedef struct {
  uint8_t token[ATP_AUTH_TOKEN_BYTES_MAX]; /* zero-padded */
  uint32_t len;
  atp_role_t role;
  uint32_t line;                              /* in the file, for messages */
  char holder[ATP_AUTH_HOLDER_BYTES_MAX + 1]; /* "" when the line names none */
} atp_auth_entry_t;

typedef struct {
  uint32_t count;
  atp_auth_entry_t entries[ATP_AUTH_TOKENS_MAX];
} atp_auth_t;

/* "read", ... -> role; ATP_ROLE_NONE for an unknown name. */
atp_role_t atp_role_parse(const char *name, size_t len);
const char *atp_role_name(atp_role_t role);

/* Parses a tokens file's text: the grammar only (any token length). ATP_EBADREQ
 * with "line N: ..." in err for a malformed line, an unknown role, a holder
 * that is not 1..128 bytes of printable ASCII, a duplicate token or too many. */
int atp_auth_parse(atp_auth_t *auth, const char *text, size_t len, char *err,
                   size_t err_len);
/* Reads and parses path, then refuses weak tokens (atp_auth_token_check): err
 * names the file and the line ("PATH: line N: ..."). */
int atp_auth_load(atp_auth_t *auth, const char *path, char *err, size_t err_len);

/* 0 when token is fit to guard a server, else ATP_EBADREQ with the reason in
 * why: shorter than ATP_AUTH_TOKEN_BYTES_MIN, a byte outside printable ASCII
 * (0x21..0x7e), or a placeholder ("REPLACE-..."). */
int atp_auth_token_check(const uint8_t *token, size_t len, char *why, size_t why_len);

/* The role of an Authorization header value ("Bearer T"); ATP_ROLE_NONE when
 * absent, malformed or unknown. Constant time in the configured tokens. */
atp_role_t atp_auth_role(const atp_auth_t *auth, const char *header, size_t len);

/* Like atp_auth_role, and *holder gets the matched token's holder ("" when its
 * line names none, or when no token matched); the string lives as long as
 * auth. Constant time in the configured tokens, like the role. */
atp_role_t atp_auth_identify(const atp_auth_t *auth, const char *header, size_t len,
                             const char **holder);

/* Whether role may call a route needing access. */
bool atp_role_allows(atp_role_t role, atp_access_t access);

/* 0, ATP_EUNAUTH or ATP_EFORBIDDEN for a request. auth NULL: auth is off. */
int atp_auth_check(const atp_auth_t *auth, atp_access_t access, const char *header,
                   size_t header_len);

/* --- ownership ------------------------------------------------------------ */

typedef enum {
  ATP_FIELD_NONE = -1,
  ATP_FIELD_COUNTS = 0,
  ATP_FIELD_ADJUSTMENTS,
  ATP_FIELD_SAFETY_STOCK,
  ATP_FIELD_GROUPS,
  ATP_FIELD_RESERVATIONS,
  ATP_FIELD_SHOPIFY_MAPPINGS, /* the Shopify connector's mappings (shopify_map) */
  ATP_FIELD_COUNT_            /* number of fields */
} atp_field_kind_t;

/* Writers per field: ATP_OWNERSHIP_WRITERS_MAX in limits.h. */

typedef struct {
  bool configured; /* false: every flow may write */
  uint32_t writer_count;
  char writers[ATP_OWNERSHIP_WRITERS_MAX][ATP_ID_BYTES_MAX + 1];
  char owner[ATP_ID_BYTES_MAX + 1]; /* "" : the flow's own name */
} atp_ownership_field_t;

typedef struct {
  atp_ownership_field_t fields[ATP_FIELD_COUNT_];
} atp_ownership_t;

/* "counts", ... */
const char *atp_field_name(atp_field_kind_t field);

/* Parses the JSON file text. ATP_EBADREQ with a sentence naming the place. */
int atp_ownership_parse(atp_ownership_t *own, const char *text, size_t len, char *err,
                        size_t err_len);
int atp_ownership_load(atp_ownership_t *own, const char *path, char *err,
                       size_t err_len);

/* Whether flow (len 0: none given) may write field. own NULL: yes. */
bool atp_ownership_allows(const atp_ownership_t *own, atp_field_kind_t field,
                          atp_str_t flow);

/* The team owning rejections of field for flow: the configured owner, else the
 * flow's name. */
atp_str_t atp_ownership_owner(const atp_ownership_t *own, atp_field_kind_t field,
                              atp_str_t flow);

#endif
