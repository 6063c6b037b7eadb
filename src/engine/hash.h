/* hash.h - the engine's hashing and short-string equality, inline: every
 * look-up hashes its key, and most keys are a few bytes.
 */
#ifndef ATP_ENGINE_HASH_H
#define ATP_ENGINE_HASH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* A 64-bit hash in the manner of wyhash: 128-bit multiply-folds over 16-byte
 * blocks, and strings of up to 16 bytes (most SKUs, locations and ids) read in
 * a few overlapping loads with no loop and no byte-wise tail. The multiply
 * spreads every input bit over both the low bits (the table index) and the top
 * 32 (the index slot's tag). */
static inline uint64_t hash_fold(uint64_t a, uint64_t b) {
  __uint128_t r = (__uint128_t)a * b;
  return (uint64_t)r ^ (uint64_t)(r >> 64);
}
static inline uint64_t load64(const unsigned char *p) {
  uint64_t v;
  memcpy(&v, p, 8);
  return v;
}
static inline uint64_t load32(const unsigned char *p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}

#define HASH_P0 0xa0761d6478bd642fULL
#define HASH_P1 0xe7037ed1a0b428dbULL
#define HASH_P2 0x8ebc6af09c88c6e3ULL

static inline uint64_t atp__hash_bytes(const void *data, size_t len) {
  const unsigned char *p = data;
  uint64_t seed = HASH_P0 ^ (len * HASH_P2), a, b;
  if (len <= 16) {
    if (len >= 4) {
      size_t quarter = (len >> 3) << 2; /* 0 or 4: the second load's offset */
      a = load32(p) << 32 | load32(p + quarter);
      b = load32(p + len - 4) << 32 | load32(p + len - 4 - quarter);
    } else if (len > 0) {
      a = (uint64_t)p[0] << 16 | (uint64_t)p[len >> 1] << 8 | p[len - 1];
      b = 0;
    } else {
      a = b = 0;
    }
  } else {
    size_t left = len;
    while (left > 16) {
      seed = hash_fold(load64(p) ^ HASH_P1, load64(p + 8) ^ seed);
      p += 16;
      left -= 16;
    }
    a = load64(p + left - 16);
    b = load64(p + left - 8);
  }
  return hash_fold(HASH_P1 ^ len, hash_fold(a ^ HASH_P1, b ^ seed));
}

/* Equality of two strings of len bytes, with a few overlapping word loads for
 * the short strings that identifiers are (memcmp is a call). */
static inline bool str_eq(const char *a, const char *b, uint32_t len) {
  const unsigned char *x = (const unsigned char *)a, *y = (const unsigned char *)b;
  if (len >= 8 && len <= 16)
    return ((load64(x) ^ load64(y)) | (load64(x + len - 8) ^ load64(y + len - 8))) == 0;
  if (len >= 4 && len < 8)
    return ((load32(x) ^ load32(y)) | (load32(x + len - 4) ^ load32(y + len - 4))) == 0;
  return memcmp(a, b, len) == 0;
}

static inline uint64_t atp__hash_mix(uint64_t a, uint64_t b) {
  uint64_t h = a ^ (b + 0x9e3779b97f4a7c15ULL + (a << 6) + (a >> 2));
  h ^= h >> 31;
  h *= 0xbf58476d1ce4e5b9ULL;
  h ^= h >> 29;
  return h;
}

#endif
