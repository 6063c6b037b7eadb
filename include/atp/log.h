/* log.h - one-line JSON logs on stderr.
 *
 * Every line is a JSON object written with a single write(2), so lines from
 * different threads never interleave. The access log carries request_id,
 * method, the route pattern (never the raw URL), status and ms; no header is
 * ever logged, so tokens cannot leak into logs.
 *
 * Thread: any.
 */
#ifndef ATP_LOG_H
#define ATP_LOG_H

#include <stddef.h>
#include <stdint.h>

/* {"ts":MS,"level":LEVEL,"msg":"..."}; the message is JSON-escaped. */
void atp_log(const char *level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* {"ts","level":"info","request_id","method","route","status","ms","bytes"}. */
void atp_log_access(uint64_t request_id, const char *method, const char *route,
                    int status, int64_t elapsed_ns, size_t body_bytes);

#endif
