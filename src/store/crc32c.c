/* crc32c.c - CRC-32C by the SSE4.2 instruction or slicing-by-8 tables.
 *
 * Slicing-by-8: table[0] is the classic byte-at-a-time table of the reflected
 * polynomial; table[k][b] is the CRC of byte b followed by k zero bytes, so
 * eight input bytes are folded with eight independent lookups instead of a
 * chain of eight dependent ones. The tables (8 KiB) are built once, before
 * main, together with the CPU check.
 */
#include "atp/crc32c.h"

#include <string.h>

#define POLY_REFLECTED 0x82F63B78u

static uint32_t table[8][256];
static bool use_hw;

__attribute__((constructor)) static void crc32c_init(void) {
  for (uint32_t b = 0; b < 256; b++) {
    uint32_t crc = b;
    for (int bit = 0; bit < 8; bit++)
      crc = (crc >> 1) ^ (POLY_REFLECTED & (0u - (crc & 1)));
    table[0][b] = crc;
  }
  for (uint32_t b = 0; b < 256; b++)
    for (int k = 1; k < 8; k++)
      table[k][b] = (table[k - 1][b] >> 8) ^ table[0][table[k - 1][b] & 0xff];
#if defined(__x86_64__)
  __builtin_cpu_init();
  use_hw = __builtin_cpu_supports("sse4.2");
#endif
}

/* Little-endian load that any alignment allows. */
static inline uint64_t load64(const unsigned char *p) {
  uint64_t v;
  memcpy(&v, p, 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  v = __builtin_bswap64(v);
#endif
  return v;
}

uint32_t atp_crc32c_sw(uint32_t crc, const void *data, size_t len) {
  const unsigned char *p = data;
  crc = ~crc;
  while (len >= 8) {
    uint64_t v = load64(p) ^ crc;
    crc = table[7][v & 0xff] ^ table[6][(v >> 8) & 0xff] ^ table[5][(v >> 16) & 0xff] ^
          table[4][(v >> 24) & 0xff] ^ table[3][(v >> 32) & 0xff] ^
          table[2][(v >> 40) & 0xff] ^ table[1][(v >> 48) & 0xff] ^ table[0][v >> 56];
    p += 8;
    len -= 8;
  }
  while (len--) crc = (crc >> 8) ^ table[0][(crc ^ *p++) & 0xff];
  return ~crc;
}

#if defined(__x86_64__)
/* One dependency chain of 8-byte crc32 instructions (3 cycles each): about
 * 2.7 bytes a cycle, far more than the journal's disk can take. Interleaving
 * three streams would triple it but needs a combine step; not worth it here. */
__attribute__((target("sse4.2"))) static uint32_t crc32c_hw(uint32_t crc,
                                                            const void *data,
                                                            size_t len) {
  const unsigned char *p = data;
  uint64_t c = ~crc;
  while (len >= 8) {
    uint64_t v;
    memcpy(&v, p, 8);
    c = __builtin_ia32_crc32di(c, v);
    p += 8;
    len -= 8;
  }
  uint32_t c32 = (uint32_t)c;
  while (len--) c32 = __builtin_ia32_crc32qi(c32, *p++);
  return ~c32;
}
#endif

uint32_t atp_crc32c(uint32_t crc, const void *data, size_t len) {
#if defined(__x86_64__)
  if (use_hw) return crc32c_hw(crc, data, len);
#endif
  return atp_crc32c_sw(crc, data, len);
}

bool atp_crc32c_hw(void) {
  return use_hw;
}
