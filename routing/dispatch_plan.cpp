#include "routing/dispatch_plan.hpp"

#include <fmt/format.h>

#include <cmath>
#include <numeric>
#include <string>

#include "routing/expert_sampler.hpp"
#include "sim/assert.hpp"

namespace moesim::routing {

std::vector<double> placement_load(const PlacementSpec& spec, const RoutingSpec& routing, int experts,
                                   std::uint64_t seed, int layer) {
  if (!spec.layer_load.empty()) return spec.layer_load.at(static_cast<std::size_t>(layer));
  return ExpertSampler(routing, experts, seed, layer).weights();
}

Placement make_placement(const PlacementSpec& spec, const RoutingSpec& routing, int experts, int ep,
                         int gpus_per_node, std::uint64_t seed, int layer) {
  Placement p;
  p.experts = experts;
  p.ep = ep;
  p.gpus_per_node = gpus_per_node;
  p.replica_choice = spec.replica_choice;
  switch (spec.policy) {
    case PlacementPolicy::contiguous:
    case PlacementPolicy::round_robin: {
      if (ep < 1 || experts % ep != 0)
        throw PlacementError(fmt::format("{} experts do not divide over {} GPUs", experts, ep));
      p.slots_per_gpu = experts / ep;
      p.slot_expert.resize(static_cast<std::size_t>(experts));
      for (int e = 0; e < experts; ++e) {
        const int slot = spec.policy == PlacementPolicy::contiguous ? e : (e % ep) * p.slots_per_gpu + e / ep;
        p.slot_expert[static_cast<std::size_t>(slot)] = e;
      }
      p.slot_replica.assign(static_cast<std::size_t>(experts), 0);
      break;
    }
    case PlacementPolicy::greedy: {
      // Balanced packing of the experts onto the GPUs by load, no replicas.
      if (ep < 1 || experts % ep != 0)
        throw PlacementError(fmt::format("{} experts do not divide over {} GPUs", experts, ep));
      const Packing packing = balanced_packing(placement_load(spec, routing, experts, seed, layer), ep);
      p.slots_per_gpu = experts / ep;
      p.slot_expert.resize(static_cast<std::size_t>(experts));
      for (int e = 0; e < experts; ++e)
        p.slot_expert[static_cast<std::size_t>(packing.pack[static_cast<std::size_t>(e)] * p.slots_per_gpu +
                                               packing.rank[static_cast<std::size_t>(e)])] = e;
      p.slot_replica.assign(static_cast<std::size_t>(experts), 0);
      break;
    }
    case PlacementPolicy::eplb: {
      const int nodes = gpus_per_node > 0 && ep % gpus_per_node == 0 ? ep / gpus_per_node : 1;
      const ExpertPlacement e = eplb_placement(placement_load(spec, routing, experts, seed, layer),
                                               experts + spec.redundant_experts, spec.expert_groups, nodes, ep);
      p.slots_per_gpu = e.slots_per_gpu();
      p.slot_expert = e.physical_to_logical;
      p.slot_replica = e.replica_rank;
      break;
    }
  }
  p.expert_slots.assign(static_cast<std::size_t>(experts), {});
  for (int s = 0; s < p.slots(); ++s) {
    auto& v = p.expert_slots[static_cast<std::size_t>(p.slot_expert[static_cast<std::size_t>(s)])];
    const auto r = static_cast<std::size_t>(p.slot_replica[static_cast<std::size_t>(s)]);
    if (v.size() <= r) v.resize(r + 1, -1);
    v[r] = s;
  }
  return p;
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
  plan.slot_computed.assign(static_cast<std::size_t>(placement.slots()), 0);
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
  // Replica candidates per (sending GPU, expert): the replicas on the sender's node if any,
  // else all of them; taken round-robin.
  const int gpn = placement.gpus_per_node;
  auto node_of_rank = [&](int rank) { return gpn > 0 ? (first_gpu + rank) / gpn : 0; };
  std::vector<std::vector<int>> candidates(static_cast<std::size_t>(experts));
  std::vector<std::uint32_t> turn(static_cast<std::size_t>(experts));
  for (int src = 0; src < ep; ++src) {
    for (int e = 0; e < experts; ++e) {
      const auto& slots = placement.expert_slots[static_cast<std::size_t>(e)];
      auto& c = candidates[static_cast<std::size_t>(e)];
      c.clear();
      for (const int sl : slots)
        if (node_of_rank(placement.gpu_of_slot(sl)) == node_of_rank(src)) c.push_back(sl);
      if (c.empty()) c = slots;
      turn[static_cast<std::size_t>(e)] = 0;
    }
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
        const auto& c = candidates[ue];
        int slot = c[0];
        if (c.size() > 1) {
          if (placement.replica_choice == ReplicaChoice::least_loaded) {
            for (const int cand : c)
              if (plan.slot_computed[static_cast<std::size_t>(cand)] < plan.slot_computed[static_cast<std::size_t>(slot)])
                slot = cand;
          } else {
            slot = c[turn[ue]++ % c.size()];
          }
        }
        ++plan.slot_computed[static_cast<std::size_t>(slot)];
        ++plan.sends[static_cast<std::size_t>(src * ep + placement.gpu_of_slot(slot))];
      }
    }
  }
  return plan;
}

}  // namespace moesim::routing
