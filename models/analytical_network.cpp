#include "models/analytical_network.hpp"

namespace moesim::models {

sim::Time AnalyticalNetwork::flow_time(const Flow& flow) const {
  if (flow.leg == Leg::whole && flow.src == flow.dst) return sim::Time::zero();
  const topology::Path p = flow.leg == Leg::whole ? cluster_.path(flow.src, flow.dst)
                                                  : cluster_.switch_leg(flow.src, flow.leg == Leg::to_switch);
  return p.latency + sim::transfer_time(flow.size, p.bottleneck);
}

void AnalyticalNetwork::start_flow_in_parts(const Flow& flow, std::uint32_t parts, Part on_part, Done on_done) {
  // Part j: the time of a flow of its last byte's length (a local copy's parts all at once, in order).
  for (std::uint32_t j = 0; j + 1 < parts; ++j) {
    Flow part = flow;
    part.size = sim::Bytes(flow.size.count() * static_cast<std::int64_t>(j + 1) / static_cast<std::int64_t>(parts));
    sim_.schedule_in(flow_time(part), [this, on_part, j] {
      last_completion_s_ = static_cast<double>(sim_.now().count_ps()) * 1e-12;
      on_part(j);
    });
  }
  start_flow(flow, std::move(on_done));
}

void AnalyticalNetwork::start_flow(const Flow& flow, Done on_done) {
  sim_.schedule_in(flow_time(flow), [this, cb = std::move(on_done)]() mutable {
    last_completion_s_ = static_cast<double>(sim_.now().count_ps()) * 1e-12;
    cb();
  });
}

}  // namespace moesim::models
