// Analytical network: no contention. A flow of B bytes on a path with summed latency L and
// smallest link bandwidth W completes after
//     t = L + ceil(B / W)
// whatever else is in flight. Concurrent flows through one link each get the full link, so
// this is optimistic wherever links are shared (an all-to-all's flows share their source's
// port): use it for quick sweeps; the max-min model is the contended one. A flow in parts has
// part j at L + ceil(b_j / W), b_j its last byte.
#pragma once

#include "models/network.hpp"
#include "sim/simulator.hpp"

namespace moesim::models {

class AnalyticalNetwork final : public NetworkModel {
 public:
  AnalyticalNetwork(sim::Simulator& sim, const topology::Cluster& cluster)
      : sim_(sim), cluster_(cluster) {}
  void start_flow(const Flow& flow, Done on_done) override;
  void start_flow_in_parts(const Flow& flow, std::uint32_t parts, Part on_part, Done on_done) override;
  std::string_view name() const override { return "analytical"; }
  double last_completion_s() const override { return last_completion_s_; }
  // The time a flow takes alone on its path.
  sim::Time flow_time(const Flow& flow) const;

 private:
  sim::Simulator& sim_;
  const topology::Cluster& cluster_;
  double last_completion_s_ = 0;
};

}  // namespace moesim::models
