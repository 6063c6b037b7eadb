/* version.h - the one place atpd's release number lives.
 *
 * Both binaries print it for --version ("atpd 0.1.0", "atpctl 0.1.0"). Bump it
 * here, nowhere else.
 */
#ifndef ATP_VERSION_H
#define ATP_VERSION_H

#define ATP_VERSION "0.1.0"

#endif
