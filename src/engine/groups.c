/* groups.c - location groups: a name and an ordered list of locations,
 * replaced whole by a put (the old version is retired and freed once no
 * reader in an epoch bracket may hold it) and looked up by reservations that
 * name a group.
 */
#include <stdio.h>
#include <string.h>

#include "atp/memory.h"
#include "engine_internal.h"

static uint32_t group_find(const atp_engine_t *e, atp_str_t name) {
  uint32_t id = atp__intern_find(e, name, atp__hash_bytes(name.ptr, name.len));
  if (id == UINT32_MAX) return UINT32_MAX;
  uint64_t h = e->interns[id]->hash;
  for (uint32_t i = (uint32_t)h & e->group_mask;; i = (i + 1) & e->group_mask) {
    uint32_t v = atomic_load_explicit(&e->group_index[i], memory_order_acquire);
    if (v == 0) return UINT32_MAX;
    if (e->groups[v - 1].name == id) return v - 1;
  }
}

int atp__group_resolve(const atp_engine_t *e, atp_str_t name,
                       const atp_group_version_t **out) {
  uint32_t entry = group_find(e, name);
  if (entry == UINT32_MAX) return ATP_ENOTFOUND;
  /* seq_cst: see keyed.c on why loads of a retirable pointer are. */
  *out = atomic_load_explicit(&e->groups[entry].current, memory_order_seq_cst);
  return *out ? 0 : ATP_ENOTFOUND;
}

static int group_get_in_epoch(const atp_engine_t *e, atp_str_t name, atp_str_t *out,
                              uint32_t out_max, uint32_t *count) {
  const atp_group_version_t *g;
  *count = 0;
  if (!atp__id_valid(name) || atp__group_resolve(e, name, &g)) return ATP_ENOTFOUND;
  for (uint32_t i = 0; i < g->count && i < out_max; i++)
    out[i] = atp__intern_str(e, g->locations[i]);
  *count = g->count;
  return 0;
}

/* In an epoch bracket (epoch.c): the version read may be replaced and retired
 * meanwhile. Puts and deletes need none: they only swap the pointer under
 * create_lock and never read the version they retire. */
int atp_group_get(const atp_engine_t *e, atp_str_t name, atp_str_t *out,
                  uint32_t out_max, uint32_t *count) {
  atp__epoch_enter(e);
  int rc = group_get_in_epoch(e, name, out, out_max, count);
  atp__epoch_exit(e);
  return rc;
}

void atp_group_each(const atp_engine_t *e,
                    void (*fn)(void *ctx, atp_str_t name, const atp_str_t *locations,
                               uint32_t count),
                    void *ctx) {
  uint32_t n = atomic_load_explicit(&e->group_count, memory_order_acquire);
  atp_str_t *locs = atp_malloc(sizeof(atp_str_t) * ATP_GROUP_LOCATIONS_MAX);
  if (!locs) return;
  for (uint32_t s = 0; s < n; s++) {
    /* One bracket a group, left before fn: the locations are copied out (as
     * interned strings, never freed), so a slow fn holds back no reuse. */
    atp__epoch_enter(e);
    const atp_group_version_t *g =
        atomic_load_explicit(&e->groups[s].current, memory_order_seq_cst);
    uint32_t count = g ? g->count : 0;
    for (uint32_t i = 0; i < count; i++) locs[i] = atp__intern_str(e, g->locations[i]);
    atp__epoch_exit(e);
    if (g) fn(ctx, atp__intern_str(e, e->groups[s].name), locs, count);
  }
  atp_free(locs);
}

/* Installs version g (NULL: delete) under create_lock; emits the change. */
int atp__group_install(atp_engine_t *e, atp_str_t name, atp_group_version_t *g,
                       const atp_str_t *locations, atp_result_t *result, bool emit) {
  pthread_mutex_lock(&e->create_lock);
  uint32_t entry = group_find(e, name);
  int rc = 0;
  if (entry == UINT32_MAX) {
    uint32_t name_id;
    uint32_t n = atomic_load_explicit(&e->group_count, memory_order_relaxed);
    if (!g) {
      rc = ATP_ENOTFOUND;
    } else if (n >= ATP_GROUPS_MAX) {
      rc = ATP_EFULL;
    } else if ((rc = atp__intern_locked(e, name, &name_id)) == 0) {
      e->groups[n].name = name_id;
      atomic_init(&e->groups[n].current, NULL);
      atomic_store_explicit(&e->group_count, n + 1, memory_order_release);
      uint32_t i = (uint32_t)e->interns[name_id]->hash & e->group_mask;
      while (atomic_load_explicit(&e->group_index[i], memory_order_relaxed))
        i = (i + 1) & e->group_mask;
      atomic_store_explicit(&e->group_index[i], n + 1, memory_order_release);
      entry = n;
    }
  }
  if (rc == 0) {
    atp_group_version_t *old =
        atomic_exchange_explicit(&e->groups[entry].current, g, memory_order_seq_cst);
    if (!g && !old) rc = ATP_ENOTFOUND;
    if (old) atp__retire(e, old);
    if (rc == 0 && emit) {
      atp_change_t c;
      memset(&c, 0, sizeof c);
      c.kind = ATP_CHANGE_GROUP;
      c.cause = ATP_CAUSE_GROUP;
      c.cause_id = name;
      c.at_ms = atp__now(e);
      c.u.group.name = name;
      c.u.group.locations = locations;
      c.u.group.location_count = g ? g->count : 0;
      atp__emit(e, &c, 1);
    }
  }
  pthread_mutex_unlock(&e->create_lock);
  if (rc) {
    if (g) atp_free(g);
    atp__result_set(result, "", "%s",
                    rc == ATP_ENOTFOUND ? "Unknown group." : atp_strerror(rc));
  }
  return rc;
}

int atp__group_put(atp_engine_t *e, atp_str_t name, const atp_str_t *locations,
                   uint32_t count, atp_result_t *result, bool emit) {
  if (!atp__id_valid(name)) {
    atp__result_set(result, "name", "Must be 1..128 bytes of printable UTF-8.");
    return ATP_EBADREQ;
  }
  if (count == 0 || count > ATP_GROUP_LOCATIONS_MAX) {
    atp__result_set(result, "locations", "A group has 1..%d locations.",
                    ATP_GROUP_LOCATIONS_MAX);
    return ATP_EBADREQ;
  }
  for (uint32_t i = 0; i < count; i++) {
    char field[32];
    snprintf(field, sizeof field, "locations[%u]", i);
    if (!atp__id_valid(locations[i])) {
      atp__result_set(result, field, "Must be 1..128 bytes of printable UTF-8.");
      return ATP_EBADREQ;
    }
    /* O(count^2) duplicate check, at most 1000^2/2 short compares on a rare call */
    for (uint32_t j = 0; j < i; j++) {
      if (locations[j].len == locations[i].len &&
          memcmp(locations[j].ptr, locations[i].ptr, locations[i].len) == 0) {
        atp__result_set(result, field, "Duplicate location.");
        return ATP_EBADREQ;
      }
    }
  }
  atp_group_version_t *g = atp_malloc(sizeof *g + count * sizeof g->locations[0]);
  if (!g) return ATP_ENOMEM;
  g->count = count;
  pthread_mutex_lock(&e->create_lock);
  int rc = 0;
  for (uint32_t i = 0; i < count && rc == 0; i++)
    rc = atp__intern_locked(e, locations[i], &g->locations[i]);
  pthread_mutex_unlock(&e->create_lock);
  if (rc) {
    atp_free(g);
    atp__result_set(result, "", "%s", atp_strerror(rc));
    return rc;
  }
  return atp__group_install(e, name, g, locations, result, emit);
}

int atp_group_put(atp_engine_t *e, atp_str_t name, const atp_str_t *locations,
                  uint32_t count, atp_result_t *result) {
  return atp__group_put(e, name, locations, count, result, true);
}

int atp_group_delete(atp_engine_t *e, atp_str_t name, atp_result_t *result) {
  if (!atp__id_valid(name)) {
    atp__result_set(result, "name", "Unknown group.");
    return ATP_ENOTFOUND;
  }
  return atp__group_install(e, name, NULL, NULL, result, true);
}
