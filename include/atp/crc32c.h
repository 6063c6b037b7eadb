/* crc32c.h - CRC-32C (Castagnoli), the checksum of journal records.
 *
 * The polynomial is 0x1EDC6F41 (reflected 0x82F63B78), the one iSCSI, ext4 and
 * SSE4.2's crc32 instruction use, so it runs at several bytes a cycle on x86-64.
 * On CPUs with SSE4.2 (checked once at start) the instruction does the work;
 * elsewhere a slicing-by-8 table does, about 1 byte a cycle. Both give the
 * same values; the unit tests hold them to each other and to known vectors.
 *
 * The running value is zlib-style: start from 0, feed pieces in order, the
 * result of one call is the starting value of the next; the pre- and
 * post-inversion of the standard CRC-32C happen inside. So
 * atp_crc32c(0, "123456789", 9) == 0xE3069283.
 *
 * Thread: pure, any thread.
 */
#ifndef ATP_CRC32C_H
#define ATP_CRC32C_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* crc continued over [data, data+len); the fastest implementation present. */
uint32_t atp_crc32c(uint32_t crc, const void *data, size_t len);

/* The table implementation alone, for tests and CPUs without SSE4.2. */
uint32_t atp_crc32c_sw(uint32_t crc, const void *data, size_t len);

/* Whether atp_crc32c uses the crc32 instruction. */
bool atp_crc32c_hw(void);

#endif
