/* demo.h - the demo catalogue behind `atpd --demo` and `make run`.
 *
 * 3000 SKUs (every tenth one a Shopify GID, gid://shopify/ProductVariant/N)
 * over ten stores store-01..store-10, grouped as "north" (01-05) and "south"
 * (06-10). Stock is pseudo-random but the same on every run; SKU-00001 ..
 * SKU-00010 are held at every store so examples always find them.
 *
 * Thread: once, before serving.
 */
#ifndef ATP_DEMO_H
#define ATP_DEMO_H

#include <stdint.h>

#include "atp/engine.h"

#define ATP_DEMO_SKUS   3000
#define ATP_DEMO_STORES 10

/* Loads the catalogue when the engine holds no position; *positions gets how
 * many were created (0 when it was not empty). 0 or a negative ATP_E*. */
int atp_demo_load(atp_engine_t *engine, uint32_t *positions);

#endif
