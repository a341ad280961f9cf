#include "models/analytical_network.hpp"

namespace moesim::models {

sim::Time AnalyticalNetwork::flow_time(const Flow& flow) const {
  if (flow.leg == Leg::whole && flow.src == flow.dst) return sim::Time::zero();
  const topology::Path p = flow.leg == Leg::whole ? cluster_.path(flow.src, flow.dst)
                                                  : cluster_.switch_leg(flow.src, flow.leg == Leg::to_switch);
  return p.latency + sim::transfer_time(flow.size, p.bottleneck);
}

void AnalyticalNetwork::start_flow(const Flow& flow, Done on_done) {
  sim_.schedule_in(flow_time(flow), [this, cb = std::move(on_done)]() mutable {
    last_completion_s_ = static_cast<double>(sim_.now().count_ps()) * 1e-12;
    cb();
  });
}

}  // namespace moesim::models
