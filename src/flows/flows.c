/* flows.c - the default plug-in points of the integration flows (flows.h):
 * nothing is kept and no flow is paused until dead letters and flow queues
 * fill an atp_flows_t of their own. */
#include "atp/flows.h"

#include "atp/assert.h"
#include "atp/error.h"

const atp_flows_t atp_flows_none = {NULL, NULL, NULL, NULL};

void atp_flows_reject(const atp_flows_t *flows, const atp_rejection_t *rejection) {
  ATP_ASSERT(rejection && rejection->err < 0);
  if (flows && flows->reject) flows->reject(flows->ctx, rejection);
}

bool atp_flows_paused(const atp_flows_t *flows, atp_str_t flow) {
  return flows && flows->paused && flow.len > 0 && flows->paused(flows->ctx, flow);
}

int atp_flows_enqueue(const atp_flows_t *flows, const atp_queued_op_t *op) {
  ATP_ASSERT(op && flows && flows->paused && flows->enqueue &&
             "atp_flows: a flow that can pause must have a queue");
  return flows->enqueue(flows->ctx, op);
}
