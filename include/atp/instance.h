/* instance.h - one atpd per listening port and per data dir.
 *
 * Every event loop binds the port with SO_REUSEPORT, so that the kernel spreads
 * connections over the loops. The kernel lets any socket of the same user join
 * such a group, a second atpd included: it would then receive part of the
 * traffic with a state of its own (two processes each granting the same ten
 * units). atp_instance_claim_port keeps that from happening before the loops
 * bind; atp_instance_lock_dir keeps two processes off one state directory,
 * where the journal lives.
 *
 * Thread: main thread, before serving. The claims last until the process
 * exits (the kernel drops them with the process, even on kill -9).
 */
#ifndef ATP_INSTANCE_H
#define ATP_INSTANCE_H

#include <stddef.h>

/* Claims host:port for this process: a probe socket without SO_REUSEPORT must
 * bind it (so nothing listens on it or on an overlapping wildcard address), and
 * an abstract Unix socket named after the port, held for the process's life,
 * must be ours (so two atpd starting at the same moment cannot both pass the
 * probe). The probe is closed before returning: the loops then bind the port
 * themselves. port 0 is resolved to the free port the probe got (*port_out).
 * 0, or ATP_EUNAVAILABLE with a sentence in err ("address in use" when another
 * process holds the port). */
int atp_instance_claim_port(const char *host, int port, int *port_out, char *err,
                            size_t err_len);

/* Creates dir and its parents (mode 0750) if missing. 0, or ATP_EUNAVAILABLE
 * with a sentence in err saying why it cannot be used. */
int atp_instance_make_dir(const char *dir, char *err, size_t err_len);

/* Takes an exclusive, non-blocking lock on DIR/atpd.lock for the process's life
 * and writes our pid into it. 0; ATP_ECONFLICT when another process holds it
 * (err names the dir and that process's pid); ATP_EUNAVAILABLE when the lock
 * file cannot be opened (the dir is not writable). */
int atp_instance_lock_dir(const char *dir, char *err, size_t err_len);

#endif
