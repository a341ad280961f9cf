#include "routing/dispatch_plan.hpp"

#include <cmath>
#include <numeric>
#include <string>

#include "routing/expert_sampler.hpp"
#include "sim/assert.hpp"

namespace moesim::routing {

Placement make_placement(const PlacementSpec& spec, int experts, int ep) {
  MOESIM_ASSERT(spec.policy == PlacementPolicy::contiguous, "unknown placement policy");
  MOESIM_ASSERT(ep >= 1 && experts % ep == 0, "experts do not divide over the EP group");
  return Placement{experts, ep, experts / ep};
}

std::int64_t DispatchPlan::received(int dst) const {
  std::int64_t n = 0;
  for (int s = 0; s < ep; ++s) n += send(s, dst);
  return n;
}

std::int64_t DispatchPlan::kept(int src) const {
  std::int64_t n = 0;
  for (int d = 0; d < ep; ++d) n += send(src, d);
  return n;
}

std::int64_t DispatchPlan::routed() const {
  return std::accumulate(expert_routed.begin(), expert_routed.end(), std::int64_t{0});
}

std::int64_t DispatchPlan::dropped() const {
  return routed() - std::accumulate(expert_computed.begin(), expert_computed.end(), std::int64_t{0});
}

DispatchPlan make_dispatch_plan(const MoeModelSpec& model, const RoutingSpec& routing,
                                const Placement& placement, std::uint64_t seed, int layer,
                                int first_gpu, std::int64_t tokens_per_gpu) {
  const int ep = placement.ep;
  const int experts = model.experts;
  const int k = model.top_k;
  DispatchPlan plan;
  plan.ep = ep;
  plan.tokens_per_gpu = tokens_per_gpu;
  plan.sends.assign(static_cast<std::size_t>(ep) * ep, 0);
  plan.expert_routed.assign(static_cast<std::size_t>(experts), 0);
  plan.expert_computed.assign(static_cast<std::size_t>(experts), 0);
  plan.gpu_routed.assign(static_cast<std::size_t>(ep), 0);
  plan.gpu_dropped.assign(static_cast<std::size_t>(ep), 0);
  if (routing.capacity_factor) {
    // ceil(cf * tokens * k / E). The factor is the decimal the user wrote, so a binary
    // representation error (1.1 is stored as 1.1000000000000000888) must not round 1100.0000001
    // up to 1101: values within a relative 1e-12 of an integer count as that integer.
    const long double exact = static_cast<long double>(*routing.capacity_factor) *
                              static_cast<long double>(tokens_per_gpu * ep * k) / experts;
    plan.capacity = static_cast<std::int64_t>(std::ceil(exact * (1 - 1e-12L)));
  }

  const ExpertSampler sampler(routing, experts, seed, layer);
  std::vector<int> chosen(static_cast<std::size_t>(k));
  for (int src = 0; src < ep; ++src) {
    sim::Rng rng(seed, "routing/layer" + std::to_string(layer) + "/gpu" + std::to_string(first_gpu + src));
    for (std::int64_t t = 0; t < tokens_per_gpu; ++t) {
      sampler.sample_top_k(rng, chosen);
      for (const int e : chosen) {
        const auto ue = static_cast<std::size_t>(e);
        ++plan.expert_routed[ue];
        ++plan.gpu_routed[static_cast<std::size_t>(src)];
        if (plan.capacity >= 0 && plan.expert_computed[ue] >= plan.capacity) {
          ++plan.gpu_dropped[static_cast<std::size_t>(src)];
          continue;
        }
        ++plan.expert_computed[ue];
        ++plan.sends[static_cast<std::size_t>(src * ep + placement.gpu_of_expert(e))];
      }
    }
  }
  return plan;
}

}  // namespace moesim::routing
