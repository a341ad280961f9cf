#include "models/analytical_network.hpp"

namespace moesim::models {

sim::Time AnalyticalNetwork::flow_time(const Flow& flow) const {
  if (flow.src == flow.dst) return sim::Time::zero();
  const topology::Path p = cluster_.path(flow.src, flow.dst);
  return p.latency + sim::transfer_time(flow.size, p.bottleneck);
}

void AnalyticalNetwork::start_flow(const Flow& flow, Done on_done) {
  sim_.schedule_in(flow_time(flow), std::move(on_done));
}

}  // namespace moesim::models
