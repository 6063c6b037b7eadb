/* auth.c - bearer tokens, roles and the ownership matrix (see auth.h). */
#include "atp/auth.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "atp/codec.h"
#include "atp/error.h"
#include "atp/limits.h"
#include "atp/memory.h"

static const char *const role_names[] = {"none", "read", "checkout", "integration",
                                         "ops"};

atp_role_t atp_role_parse(const char *name, size_t len) {
  for (int r = ATP_ROLE_READ; r <= ATP_ROLE_OPS; r++) {
    if (strlen(role_names[r]) == len && memcmp(role_names[r], name, len) == 0)
      return (atp_role_t)r;
  }
  return ATP_ROLE_NONE;
}

const char *atp_role_name(atp_role_t role) {
  return role >= ATP_ROLE_NONE && role <= ATP_ROLE_OPS ? role_names[role] : "none";
}

bool atp_role_allows(atp_role_t role, atp_access_t access) {
  switch (access) {
    case ATP_ACCESS_OPEN:
      return true;
    case ATP_ACCESS_READ:
      return role != ATP_ROLE_NONE;
    case ATP_ACCESS_CHECKOUT:
      return role == ATP_ROLE_CHECKOUT || role == ATP_ROLE_OPS;
    case ATP_ACCESS_INTEGRATION:
      return role == ATP_ROLE_INTEGRATION || role == ATP_ROLE_OPS;
    case ATP_ACCESS_OPS:
      return role == ATP_ROLE_OPS;
  }
  return false;
}

static bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\r';
}

/* Printable ASCII without the space: what a token or a holder may hold. */
static bool is_token_byte(uint8_t b) {
  return b > 0x20 && b < 0x7f;
}

static bool is_printable(const char *s, size_t len) {
  for (size_t i = 0; i < len; i++)
    if (!is_token_byte((uint8_t)s[i])) return false;
  return true;
}

/* Cuts the comment off a line and splits it into words: the first three
 * land in words, the count of all of them is returned. */
static uint32_t split_words(const char *line, size_t len, const char *words[3],
                            size_t word_len[3]) {
  const char *hash = memchr(line, '#', len);
  size_t stop = hash ? (size_t)(hash - line) : len;
  uint32_t n = 0;
  for (size_t k = 0; k < stop;) {
    while (k < stop && is_space(line[k])) k++;
    if (k >= stop) break;
    size_t start = k;
    while (k < stop && !is_space(line[k])) k++;
    if (n < 3) {
      words[n] = line + start;
      word_len[n] = k - start;
    }
    n++;
  }
  return n;
}

/* Parses one line of the tokens file into auth; a blank or comment line adds
 * nothing. */
static int parse_line(atp_auth_t *auth, const char *text, size_t len, uint32_t line,
                      char *err, size_t err_len) {
  const char *words[3];
  size_t word_len[3];
  uint32_t n = split_words(text, len, words, word_len);
  if (n == 0) return 0;
  if (n != 2 && n != 3) {
    snprintf(err, err_len, "line %u: expected \"TOKEN ROLE [HOLDER]\"", line);
    return ATP_EBADREQ;
  }
  atp_role_t role = atp_role_parse(words[1], word_len[1]);
  if (role == ATP_ROLE_NONE) {
    snprintf(err, err_len,
             "line %u: unknown role \"%.*s\" (read, checkout, integration, ops)", line,
             (int)word_len[1] > 32 ? 32 : (int)word_len[1], words[1]);
    return ATP_EBADREQ;
  }
  if (word_len[0] > ATP_AUTH_TOKEN_BYTES_MAX) {
    snprintf(err, err_len, "line %u: token longer than %d bytes", line,
             ATP_AUTH_TOKEN_BYTES_MAX);
    return ATP_EBADREQ;
  }
  if (n == 3 && (word_len[2] > ATP_AUTH_HOLDER_BYTES_MAX ||
                 !is_printable(words[2], word_len[2]))) {
    snprintf(err, err_len, "line %u: the holder must be 1..%d bytes of printable ASCII",
             line, ATP_AUTH_HOLDER_BYTES_MAX);
    return ATP_EBADREQ;
  }
  for (uint32_t t = 0; t < auth->count; t++) {
    if (auth->entries[t].len == word_len[0] &&
        memcmp(auth->entries[t].token, words[0], word_len[0]) == 0) {
      snprintf(err, err_len, "line %u: duplicate token", line);
      return ATP_EBADREQ;
    }
  }
  if (auth->count == ATP_AUTH_TOKENS_MAX) {
    snprintf(err, err_len, "line %u: more than %d tokens", line, ATP_AUTH_TOKENS_MAX);
    return ATP_EBADREQ;
  }
  atp_auth_entry_t *e = &auth->entries[auth->count];
  memcpy(e->token, words[0], word_len[0]);
  e->len = (uint32_t)word_len[0];
  e->role = role;
  e->line = line;
  if (n == 3) {
    memcpy(e->holder, words[2], word_len[2]);
    e->holder[word_len[2]] = '\0';
  }
  auth->count++;
  return 0;
}

int atp_auth_parse(atp_auth_t *auth, const char *text, size_t len, char *err,
                   size_t err_len) {
  memset(auth, 0, sizeof *auth);
  size_t i = 0;
  for (uint32_t line = 1; i < len; line++) {
    size_t end = i;
    while (end < len && text[end] != '\n') end++;
    int rc = parse_line(auth, text + i, end - i, line, err, err_len);
    if (rc) return rc;
    i = end + 1;
  }
  if (auth->count == 0) {
    snprintf(err, err_len, "no tokens: the file would lock every client out");
    return ATP_EBADREQ;
  }
  return 0;
}

/* The placeholders deploy/tokens.example ships: a copied example must not
 * become a live credential. */
#define PLACEHOLDER_PREFIX "REPLACE-"

int atp_auth_token_check(const uint8_t *token, size_t len, char *why, size_t why_len) {
  if (len >= sizeof PLACEHOLDER_PREFIX - 1 &&
      memcmp(token, PLACEHOLDER_PREFIX, sizeof PLACEHOLDER_PREFIX - 1) == 0) {
    snprintf(why, why_len,
             "token is the shipped placeholder \"" PLACEHOLDER_PREFIX
             "...\": generate one (head -c 32 /dev/urandom | base64)");
    return ATP_EBADREQ;
  }
  for (size_t i = 0; i < len; i++) {
    if (!is_token_byte(token[i])) {
      snprintf(why, why_len,
               "token byte %zu is 0x%02x: tokens are printable ASCII without control "
               "characters",
               i + 1, token[i]);
      return ATP_EBADREQ;
    }
  }
  if (len < ATP_AUTH_TOKEN_BYTES_MIN) {
    snprintf(why, why_len, "token is %zu bytes: tokens must be at least %d bytes", len,
             ATP_AUTH_TOKEN_BYTES_MIN);
    return ATP_EBADREQ;
  }
  return 0;
}

/* Reads a whole small file into a malloc'd NUL-terminated buffer. */
static char *read_file(const char *path, size_t *len, char *err, size_t err_len) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    snprintf(err, err_len, "cannot open %s: %s", path, strerror(errno));
    return NULL;
  }
  size_t cap = 4096, n = 0;
  char *buf = atp_malloc(cap);
  while (buf) {
    size_t got = fread(buf + n, 1, cap - n - 1, f);
    n += got;
    if (got == 0) break;
    if (n + 1 == cap) {
      if (cap >= (16u << 20)) {
        snprintf(err, err_len, "%s is larger than 16 MiB", path);
        atp_free(buf);
        fclose(f);
        return NULL;
      }
      char *bigger = atp_realloc(buf, cap * 2);
      if (!bigger) atp_free(buf);
      buf = bigger;
      cap *= 2;
    }
  }
  fclose(f);
  if (!buf) {
    snprintf(err, err_len, "out of memory reading %s", path);
    return NULL;
  }
  buf[n] = '\0';
  *len = n;
  return buf;
}

int atp_auth_load(atp_auth_t *auth, const char *path, char *err, size_t err_len) {
  size_t len = 0;
  char *text = read_file(path, &len, err, err_len);
  if (!text) return ATP_EBADREQ;
  char inner[200];
  int rc = atp_auth_parse(auth, text, len, inner, sizeof inner);
  if (rc != 0) snprintf(err, err_len, "%s: %s", path, inner);
  /* The grammar accepts any token; a running server takes only strong ones. */
  for (uint32_t e = 0; rc == 0 && e < auth->count; e++) {
    char why[160];
    rc = atp_auth_token_check(auth->entries[e].token, auth->entries[e].len, why,
                              sizeof why);
    if (rc != 0)
      snprintf(err, err_len, "%s: line %u: %s", path, auth->entries[e].line, why);
  }
  if (rc != 0) memset(auth, 0, sizeof *auth);
  /* The file held secrets: wipe the copy before freeing it. */
  memset(text, 0, len);
  atp_free(text);
  return rc;
}

atp_role_t atp_auth_role(const atp_auth_t *auth, const char *header, size_t len) {
  const char *holder;
  return atp_auth_identify(auth, header, len, &holder);
}

atp_role_t atp_auth_identify(const atp_auth_t *auth, const char *header, size_t len,
                             const char **holder) {
  *holder = "";
  if (!header || len < 7 || strncasecmp(header, "Bearer ", 7) != 0)
    return ATP_ROLE_NONE;
  const char *t = header + 7;
  size_t n = len - 7;
  while (n && is_space(*t)) t++, n--;
  while (n && is_space(t[n - 1])) n--;
  if (n == 0 || n > ATP_AUTH_TOKEN_BYTES_MAX) return ATP_ROLE_NONE;
  uint8_t given[ATP_AUTH_TOKEN_BYTES_MAX];
  memset(given, 0, sizeof given);
  memcpy(given, t, n);
  /* Every configured token is compared over its full padded width, and the
   * match is folded in with masks, so timing reveals neither how many bytes
   * matched nor which entry did. The holder is picked the same way, by the
   * index folded in with the mask (tokens are unique: at most one matches). */
  uint32_t role = ATP_ROLE_NONE, match = 0;
  for (uint32_t e = 0; e < auth->count; e++) {
    const uint8_t *tok = auth->entries[e].token;
    uint32_t diff = (uint32_t)(auth->entries[e].len ^ (uint32_t)n);
    for (size_t k = 0; k < ATP_AUTH_TOKEN_BYTES_MAX; k++)
      diff |= (uint32_t)(tok[k] ^ given[k]);
    /* mask is all ones when diff == 0, else zero. */
    uint32_t mask = (uint32_t)(((uint64_t)diff - 1) >> 32);
    role |= mask & (uint32_t)auth->entries[e].role;
    match |= mask & e;
  }
  if (role != ATP_ROLE_NONE) *holder = auth->entries[match].holder;
  return (atp_role_t)role;
}

int atp_auth_check(const atp_auth_t *auth, atp_access_t access, const char *header,
                   size_t header_len) {
  if (!auth || access == ATP_ACCESS_OPEN) return 0;
  atp_role_t role = atp_auth_role(auth, header, header_len);
  if (role == ATP_ROLE_NONE) return ATP_EUNAUTH;
  return atp_role_allows(role, access) ? 0 : ATP_EFORBIDDEN;
}

/* --- ownership ------------------------------------------------------------------ */

static const char *const field_names[ATP_FIELD_COUNT_] = {
    "counts", "adjustments",  "safety_stock",
    "groups", "reservations", "shopify_mappings"};

const char *atp_field_name(atp_field_kind_t field) {
  return field >= 0 && field < ATP_FIELD_COUNT_ ? field_names[field] : "none";
}

static int parse_field(atp_ownership_field_t *f, const char *name, const atp_val_t *v,
                       char *err, size_t err_len) {
  if (v->type != ATP_VAL_OBJECT) {
    snprintf(err, err_len, "fields.%s must be an object", name);
    return ATP_EBADREQ;
  }
  const atp_val_t *writers = atp_val_get(v, "writers");
  const atp_val_t *owner = atp_val_get(v, "owner");
  if (writers) {
    if (writers->type != ATP_VAL_ARRAY || writers->len > ATP_OWNERSHIP_WRITERS_MAX) {
      snprintf(err, err_len,
               "fields.%s.writers must be an array of at most %d flow names", name,
               ATP_OWNERSHIP_WRITERS_MAX);
      return ATP_EBADREQ;
    }
    for (uint32_t i = 0; i < writers->len; i++) {
      const atp_val_t *w = &writers->u.items[i];
      if (w->type != ATP_VAL_STR || w->len == 0 || w->len > ATP_ID_BYTES_MAX) {
        snprintf(err, err_len, "fields.%s.writers[%u] must be a flow name", name, i);
        return ATP_EBADREQ;
      }
      memcpy(f->writers[i], w->u.s, w->len);
      f->writers[i][w->len] = '\0';
    }
    f->writer_count = writers->len;
    f->configured = true;
  }
  if (owner) {
    if (owner->type != ATP_VAL_STR || owner->len == 0 ||
        owner->len > ATP_ID_BYTES_MAX) {
      snprintf(err, err_len, "fields.%s.owner must be a team name", name);
      return ATP_EBADREQ;
    }
    memcpy(f->owner, owner->u.s, owner->len);
    f->owner[owner->len] = '\0';
  }
  return 0;
}

int atp_ownership_parse(atp_ownership_t *own, const char *text, size_t len, char *err,
                        size_t err_len) {
  memset(own, 0, sizeof *own);
  atp_arena_t arena;
  atp_arena_init(&arena, 64 * 1024, 64u << 20);
  atp_val_t *root = NULL;
  atp_parse_error_t perr;
  int rc = atp_codec_parse(ATP_FORMAT_JSON, text, len, &arena, &root, &perr);
  if (rc != 0) {
    snprintf(err, err_len, "not valid JSON at byte %zu: %s", perr.offset, perr.message);
    goto done;
  }
  rc = ATP_EBADREQ;
  const atp_val_t *fields =
      root && root->type == ATP_VAL_OBJECT ? atp_val_get(root, "fields") : NULL;
  if (!fields || fields->type != ATP_VAL_OBJECT) {
    snprintf(err, err_len, "expected {\"fields\": {...}}");
    goto done;
  }
  for (uint32_t m = 0; m < fields->len; m++) {
    const atp_member_t *mem = &fields->u.members[m];
    int k = 0;
    while (k < ATP_FIELD_COUNT_ && strcmp(field_names[k], mem->key) != 0) k++;
    if (k == ATP_FIELD_COUNT_) {
      /* Fields of later modules (dead letters, reconciliations...) are
       * tolerated so one file serves every version. */
      continue;
    }
    if (parse_field(&own->fields[k], field_names[k], &mem->val, err, err_len) != 0)
      goto done;
  }
  rc = 0;
done:
  atp_arena_destroy(&arena);
  return rc;
}

int atp_ownership_load(atp_ownership_t *own, const char *path, char *err,
                       size_t err_len) {
  size_t len = 0;
  char *text = read_file(path, &len, err, err_len);
  if (!text) return ATP_EBADREQ;
  char inner[200];
  int rc = atp_ownership_parse(own, text, len, inner, sizeof inner);
  if (rc != 0) snprintf(err, err_len, "%s: %s", path, inner);
  atp_free(text);
  return rc;
}

bool atp_ownership_allows(const atp_ownership_t *own, atp_field_kind_t field,
                          atp_str_t flow) {
  if (!own || field < 0 || field >= ATP_FIELD_COUNT_) return true;
  const atp_ownership_field_t *f = &own->fields[field];
  if (!f->configured) return true;
  if (flow.len == 0) return false;
  for (uint32_t i = 0; i < f->writer_count; i++) {
    if (strlen(f->writers[i]) == flow.len &&
        memcmp(f->writers[i], flow.ptr, flow.len) == 0)
      return true;
  }
  return false;
}

atp_str_t atp_ownership_owner(const atp_ownership_t *own, atp_field_kind_t field,
                              atp_str_t flow) {
  if (own && field >= 0 && field < ATP_FIELD_COUNT_ && own->fields[field].owner[0]) {
    const char *o = own->fields[field].owner;
    return (atp_str_t){o, (uint32_t)strlen(o)};
  }
  return flow;
}
