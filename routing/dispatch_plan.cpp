#include "routing/dispatch_plan.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>

#include "routing/token_router.hpp"
#include "sim/assert.hpp"

namespace moesim::routing {

std::vector<double> placement_load(const PlacementSpec& spec, const RoutingSpec& routing, int experts, int ep,
                                   std::uint64_t seed, int layer) {
  if (!spec.layer_load.empty()) return spec.layer_load.at(static_cast<std::size_t>(layer));
  return layer_law(routing, experts, ep, seed, layer).weights;
}

Placement make_placement(const PlacementSpec& spec, const RoutingSpec& routing, int experts, int ep,
                         int gpus_per_node, std::uint64_t seed, int layer) {
  Placement p;
  p.experts = experts;
  p.ep = ep;
  p.gpus_per_node = gpus_per_node;
  p.replica_locality = spec.replica_locality;
  p.replica_choice = spec.replica_choice;
  p.load = placement_load(spec, routing, experts, ep, seed, layer);
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
      const Packing packing = balanced_packing(p.load, ep);
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
      const ExpertPlacement e = eplb_placement(p.load,
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

std::int64_t DispatchPlan::computed_on(int rank) const {
  const std::size_t per = slot_computed.size() / static_cast<std::size_t>(ep);
  const auto first = slot_computed.begin() + static_cast<std::ptrdiff_t>(per * static_cast<std::size_t>(rank));
  return std::accumulate(first, first + static_cast<std::ptrdiff_t>(per), std::int64_t{0});
}

std::int64_t DispatchPlan::routed() const {
  return std::accumulate(expert_routed.begin(), expert_routed.end(), std::int64_t{0});
}

std::int64_t DispatchPlan::dropped() const {
  return routed() - std::accumulate(expert_computed.begin(), expert_computed.end(), std::int64_t{0});
}

namespace {

// ceil(cf * rows / experts). The factor is the decimal the user wrote, so a binary representation
// error (1.1 is stored as 1.1000000000000000888) must not round 1100.0000001 up to 1101: values
// within a relative 1e-12 of an integer count as that integer.
std::int64_t capacity_of(double factor, std::int64_t rows, int experts) {
  const long double exact = static_cast<long double>(factor) * static_cast<long double>(rows) / experts;
  return static_cast<std::int64_t>(std::ceil(exact * (1 - 1e-12L)));
}

// A kept assignment of token t to GPU dst: counts dst, and dst's node, once per token.
__attribute__((always_inline)) inline void count_destination(int dst, std::int64_t t, std::int64_t* seen_gpu,
                                                             std::int64_t* token_sends, const int* node_of,
                                                             std::int64_t* seen_node, std::int64_t* node_sends) {
  if (seen_gpu[dst] == t) return;
  seen_gpu[dst] = t;
  ++token_sends[dst];
  const int b = node_of[dst];
  if (seen_node[b] == t) return;
  seen_node[b] = t;
  ++node_sends[b];
}

// Experts on several slots for the current source, each row sent to the next in turn (round
// robin): expert e's candidate slots are slots[first[e] .. first[e] + count[e]), turn[e] the next.
// Each row's slot and destination are counted as it goes.
struct RoundRobin {
  const int* first;
  const int* count;
  const int* slots;
  std::uint32_t* turn;
  const int* dst_of_slot;
  const int* node_of_rank;
  std::int64_t* slot_computed;
  std::int64_t* sends;
};

// The common case of make_dispatch_plan's main loop, on its own so that everything it touches
// fits in registers: no gate or pad drops, and every expert on one slot for this source
// (dst_of_expert[e] >= 0) or chosen among its replicas in turn (-1: `rr`). room[e]: assignments
// of expert e this source can still keep (counted down past zero: the rest are dropped);
// dst_of_expert[e]: its GPU, node_of_expert[e] that GPU's node. Counts each token's distinct
// destination GPUs and nodes; with at most 64 of each, the destinations a token has reached are
// bit masks kept in registers (Masks), otherwise stamps in arrays.
template <bool Masks>
void plan_source_fast(const int* experts_of, std::size_t assignments, int k, std::int64_t* room,
                      const int* dst_of_expert, const int* node_of_expert, const RoundRobin& rr, std::int64_t* seen_gpu,
                      std::int64_t* seen_node, std::int64_t* token_sends, std::int64_t* node_sends, std::int64_t* token) {
  std::int64_t t = *token;
  for (std::size_t i = 0; i < assignments; i += static_cast<std::size_t>(k)) {
    ++t;
    std::uint64_t gpus = 0, nodes = 0;
    for (std::size_t j = i; j < i + static_cast<std::size_t>(k); ++j) {
      const auto e = static_cast<std::size_t>(experts_of[j]);
      if (room[e]-- <= 0) continue;
      int dst = dst_of_expert[e], b = node_of_expert[e];
      if (dst < 0) {  // replicas: the next in turn
        std::uint32_t& next = rr.turn[e];
        const int slot = rr.slots[rr.first[e] + static_cast<int>(next)];
        if (static_cast<int>(++next) == rr.count[e]) next = 0;
        ++rr.slot_computed[slot];
        dst = rr.dst_of_slot[slot];
        ++rr.sends[dst];
        b = rr.node_of_rank[dst];
      }
      if constexpr (Masks) {
        // Without branches (whether a token has reached a GPU or node already is a coin flip to
        // the processor). A GPU already reached means its node was too, so the node's test
        // need not wait for the GPU's.
        token_sends[dst] += static_cast<std::int64_t>(~gpus >> dst & 1U);
        gpus |= std::uint64_t{1} << dst;
        node_sends[b] += static_cast<std::int64_t>(~nodes >> b & 1U);
        nodes |= std::uint64_t{1} << b;
      } else {
        if (seen_gpu[dst] == t) continue;
        seen_gpu[dst] = t;
        ++token_sends[dst];
        if (seen_node[b] == t) continue;
        seen_node[b] = t;
        ++node_sends[b];
      }
    }
  }
  *token = t;
}

}  // namespace

DispatchPlan make_dispatch_plan(const RoutingSpec& routing, const Placement& placement, int first_gpu,
                                const TokenBatch& batch) {
  const int ep = placement.ep;
  const int experts = placement.experts;
  const int k = batch.top_k;
  MOESIM_ASSERT(batch.ranks == ep, "a batch for another EP size");
  const std::int64_t tokens_per_gpu = batch.tokens_per_rank;
  const auto ue_count = static_cast<std::size_t>(experts);
  DispatchPlan plan;
  plan.ep = ep;
  plan.tokens_per_gpu = tokens_per_gpu;
  plan.sends.assign(static_cast<std::size_t>(ep) * ep, 0);
  plan.expert_routed.assign(ue_count, 0);
  plan.expert_computed.assign(ue_count, 0);
  plan.expert_padded.assign(ue_count, 0);
  plan.slot_computed.assign(static_cast<std::size_t>(placement.slots()), 0);
  plan.slot_padded.assign(static_cast<std::size_t>(placement.slots()), 0);
  plan.gpu_routed.assign(static_cast<std::size_t>(ep), 0);
  plan.gpu_dropped.assign(static_cast<std::size_t>(ep), 0);
  const bool pad = routing.drop_policy == DropPolicy::pad && routing.capacity_factor;
  if (routing.capacity_factor) {
    plan.capacity = capacity_of(*routing.capacity_factor, tokens_per_gpu * ep * k, experts);
    if (pad) plan.source_capacity = capacity_of(*routing.capacity_factor, tokens_per_gpu * k, experts);
  }

  // Which assignments are kept (entry i of batch.experts): with gate drops decided here; with
  // position (group-wide) or pad (per source) drops, the first assignments in group order,
  // decided in the main loop below, which goes through the batch in that order.
  const std::size_t n = batch.experts.size();
  const bool gate_drops = plan.capacity >= 0 && routing.drop_policy == DropPolicy::gate;
  const bool order_drops = plan.capacity >= 0 && !gate_drops;
  std::vector<char> keep;
  if (gate_drops) {
    MOESIM_ASSERT(batch.gates.size() == n, "gate drops need gate weights");
    keep.assign(n, 1);
    std::vector<std::vector<std::uint32_t>> by_expert(ue_count);
    for (std::size_t i = 0; i < n; ++i) by_expert[static_cast<std::size_t>(batch.experts[i])].push_back(static_cast<std::uint32_t>(i));
    for (auto& v : by_expert) {
      if (static_cast<std::int64_t>(v.size()) <= plan.capacity) continue;
      const auto cut = v.begin() + plan.capacity;
      std::nth_element(v.begin(), cut, v.end(), [&](std::uint32_t a, std::uint32_t b) {
        return batch.gates[a] != batch.gates[b] ? batch.gates[a] > batch.gates[b] : a < b;
      });
      for (auto it = cut; it != v.end(); ++it) keep[*it] = 0;
    }
  }
  // Per expert: its assignments from the current source (count), from the sources before it
  // (before; position drops only: the source's first limit - before are kept), and with gate
  // drops the current source's kept ones.
  std::vector<std::int64_t> count(ue_count), before(ue_count, 0), gate_kept(ue_count), room(ue_count);
  std::vector<int> dst_of_expert(ue_count), node_of_expert(ue_count);
  const std::int64_t limit = !order_drops ? std::numeric_limits<std::int64_t>::max() : pad ? plan.source_capacity : plan.capacity;

  // Replica candidates per (sending GPU, expert): the replicas on the sender's node if any
  // (with replica locality), else all of them.
  const int gpn = placement.gpus_per_node;
  auto node_of_rank = [&](int rank) { return gpn > 0 ? (first_gpu + rank) / gpn : 0; };
  const int first_node = node_of_rank(0);
  plan.nodes = node_of_rank(ep - 1) - first_node + 1;
  plan.node_of_rank.resize(static_cast<std::size_t>(ep));
  for (int r = 0; r < ep; ++r) plan.node_of_rank[static_cast<std::size_t>(r)] = node_of_rank(r) - first_node;
  plan.token_sends.assign(static_cast<std::size_t>(ep) * ep, 0);
  plan.node_sends.assign(static_cast<std::size_t>(ep) * static_cast<std::size_t>(plan.nodes), 0);
  std::vector<std::vector<int>> candidates(ue_count);
  std::vector<std::uint32_t> turn(ue_count);
  std::vector<int> rr_first, rr_count, rr_slots;  // the fast loop's round robin (RoundRobin)
  std::vector<std::int64_t> rows(ue_count);  // pad: this source's kept rows per expert
  std::vector<int> block_slot(ue_count);     // pad: the replica that gets the source's buffer
  auto least_loaded = [&](const std::vector<int>& c) {
    int slot = c[0];
    for (const int cand : c) {
      const auto uc = static_cast<std::size_t>(cand), us = static_cast<std::size_t>(slot);
      if (plan.slot_computed[uc] + plan.slot_padded[uc] < plan.slot_computed[us] + plan.slot_padded[us]) slot = cand;
    }
    return slot;
  };
  // Distinct destination GPUs and nodes per token: the token that last counted each GPU and
  // node (tokens are numbered from 1 across the batch).
  std::vector<std::int64_t> gpu_seen(static_cast<std::size_t>(ep), 0), node_seen(static_cast<std::size_t>(plan.nodes), 0);
  // Per expert, its only candidate slot for the current source (-1: several, choose per row).
  std::vector<int> only_slot(ue_count);
  std::vector<int> dst_of_slot(static_cast<std::size_t>(placement.slots()));
  for (int s = 0; s < placement.slots(); ++s) dst_of_slot[static_cast<std::size_t>(s)] = placement.gpu_of_slot(s);
  std::int64_t token = 0;  // 1-based token number across the batch
  for (int src = 0; src < ep; ++src) {
    for (int e = 0; e < experts; ++e) {
      const auto& slots = placement.expert_slots[static_cast<std::size_t>(e)];
      auto& c = candidates[static_cast<std::size_t>(e)];
      c.clear();
      if (placement.replica_locality)
        for (const int sl : slots)
          if (node_of_rank(placement.gpu_of_slot(sl)) == node_of_rank(src)) c.push_back(sl);
      if (c.empty()) c = slots;
      turn[static_cast<std::size_t>(e)] = 0;
      only_slot[static_cast<std::size_t>(e)] = c.size() == 1 ? c[0] : -1;
      // pad: the source's fixed buffer for each expert goes whole to one replica.
      if (pad)
        block_slot[static_cast<std::size_t>(e)] = c.size() == 1 ? c[0]
                                                  : placement.replica_choice == ReplicaChoice::least_loaded
                                                      ? least_loaded(c)
                                                      : c[static_cast<std::size_t>(src) % c.size()];
    }
    std::fill(count.begin(), count.end(), 0);
    std::fill(gate_kept.begin(), gate_kept.end(), 0);
    const std::size_t begin = static_cast<std::size_t>(src * tokens_per_gpu * k);
    const std::size_t end = begin + static_cast<std::size_t>(tokens_per_gpu * k);
    plan.gpu_routed[static_cast<std::size_t>(src)] = tokens_per_gpu * k;
    const bool fast = !gate_drops && !pad &&
                      (placement.replica_choice == ReplicaChoice::round_robin ||
                       std::all_of(only_slot.begin(), only_slot.end(), [](int x) { return x >= 0; }));
    if (fast) {
      rr_first.clear();
      rr_count.clear();
      rr_slots.clear();
      for (std::size_t e = 0; e < ue_count; ++e) {
        room[e] = limit - before[e];
        const int only = only_slot[e];
        dst_of_expert[e] = only >= 0 ? dst_of_slot[static_cast<std::size_t>(only)] : -1;
        node_of_expert[e] = only >= 0 ? plan.node_of_rank[static_cast<std::size_t>(dst_of_expert[e])] : -1;
        rr_first.push_back(static_cast<int>(rr_slots.size()));
        rr_count.push_back(only >= 0 ? 1 : static_cast<int>(candidates[e].size()));
        if (only < 0) rr_slots.insert(rr_slots.end(), candidates[e].begin(), candidates[e].end());
      }
      const RoundRobin rr{rr_first.data(), rr_count.data(), rr_slots.data(), turn.data(), dst_of_slot.data(),
                          plan.node_of_rank.data(), plan.slot_computed.data(),
                          plan.sends.data() + static_cast<std::ptrdiff_t>(src) * ep};
      const auto fast_loop = ep <= 64 && plan.nodes <= 64 ? &plan_source_fast<true> : &plan_source_fast<false>;
      fast_loop(batch.experts.data() + begin, end - begin, k, room.data(), dst_of_expert.data(), node_of_expert.data(), rr,
                gpu_seen.data(), node_seen.data(), plan.token_sends.data() + static_cast<std::ptrdiff_t>(src) * ep,
                plan.node_sends.data() + static_cast<std::ptrdiff_t>(src) * plan.nodes, &token);
      for (std::size_t e = 0; e < ue_count; ++e) count[e] = limit - before[e] - room[e];
    }
    // The hot loop (once per assignment of the run): plain pointers, so that no store is
    // thought to move a vector, and per assignment only the source's count of its expert and
    // the distinct-destination counts change; the rest is added up per expert after the source.
    std::int64_t* const sends = plan.sends.data() + static_cast<std::ptrdiff_t>(src) * ep;
    std::int64_t* const tsends = plan.token_sends.data() + static_cast<std::ptrdiff_t>(src) * ep;
    std::int64_t* const nsends = plan.node_sends.data() + static_cast<std::ptrdiff_t>(src) * plan.nodes;
    std::int64_t* const slot_computed = plan.slot_computed.data();
    std::int64_t* const seen_gpu = gpu_seen.data();
    std::int64_t* const seen_node = node_seen.data();
    std::int64_t* const counts = count.data();
    std::int64_t* const kept_by_gate = gate_kept.data();
    const std::int64_t* const earlier = before.data();
    const int* const expert_of = batch.experts.data();
    const int* const only = only_slot.data();
    const int* const block = block_slot.data();
    const int* const dst_of = dst_of_slot.data();
    const int* const node_of = plan.node_of_rank.data();
    const char* const keep_gate = gate_drops ? keep.data() : nullptr;
    const bool least = placement.replica_choice == ReplicaChoice::least_loaded;
    for (std::size_t i = fast ? end : begin; i < end; i += static_cast<std::size_t>(k)) {
      ++token;
      for (std::size_t j = i; j < i + static_cast<std::size_t>(k); ++j) {
        const auto ue = static_cast<std::size_t>(expert_of[j]);
        const std::int64_t nth = counts[ue]++;
        if (gate_drops) {
          if (!keep_gate[j]) continue;
          ++kept_by_gate[ue];
        } else if (earlier[ue] + nth >= limit) {
          continue;
        }
        int slot;
        if (pad) {
          slot = block[ue];
        } else {
          slot = only[ue];
          if (slot < 0) {  // replicas: chosen per row
            const auto& c = candidates[ue];
            slot = least ? least_loaded(c) : c[turn[ue]++ % c.size()];
            ++slot_computed[slot];
            ++sends[dst_of[slot]];
          }
        }
        count_destination(dst_of[slot], token, seen_gpu, tsends, node_of, seen_node, nsends);
      }
    }
    // The source's totals per expert.
    std::int64_t dropped = 0;
    for (std::size_t e = 0; e < ue_count; ++e) {
      const std::int64_t n_e = count[e];
      const std::int64_t kept = gate_drops ? gate_kept[e] : std::clamp(limit - before[e], std::int64_t{0}, n_e);
      plan.expert_routed[e] += n_e;
      plan.expert_computed[e] += kept;
      dropped += n_e - kept;
      if (order_drops && !pad) before[e] += n_e;
      if (pad) {
        rows[e] = kept;
      } else if (only_slot[e] >= 0) {
        plan.slot_computed[static_cast<std::size_t>(only_slot[e])] += kept;
        sends[dst_of_slot[static_cast<std::size_t>(only_slot[e])]] += kept;
      }
    }
    plan.gpu_dropped[static_cast<std::size_t>(src)] = dropped;
    if (!pad) continue;
    for (std::size_t e = 0; e < ue_count; ++e) {
      const int slot = block_slot[e];
      const int dst = placement.gpu_of_slot(slot);
      const std::int64_t padding = plan.source_capacity - rows[e];
      plan.slot_computed[static_cast<std::size_t>(slot)] += rows[e];
      plan.slot_padded[static_cast<std::size_t>(slot)] += padding;
      plan.expert_padded[e] += padding;
      plan.sends[static_cast<std::size_t>(src * ep + dst)] += plan.source_capacity;
      // Padding rows travel like tokens of their own.
      plan.token_sends[static_cast<std::size_t>(src * ep + dst)] += padding;
      plan.node_sends[static_cast<std::size_t>(src * plan.nodes + plan.node_of_rank[static_cast<std::size_t>(dst)])] += padding;
    }
  }
  return plan;
}

DispatchPlan make_dispatch_plan(const MoeModelSpec& model, const RoutingSpec& routing,
                                const Placement& placement, std::uint64_t seed, int layer,
                                int first_gpu, std::int64_t tokens_per_gpu) {
  MoeModelSpec shape = model;  // enough layers for `layer`
  shape.moe_layers = std::max(model.moe_layers, layer + 1);
  const TokenRouter router(shape, routing, placement.ep, seed, routing.drop_policy == DropPolicy::gate);
  TokenBatch batch, previous;
  for (int l = router.layers_depend() ? 0 : layer; l <= layer; ++l) {
    std::swap(batch, previous);
    router.route(l, first_gpu, tokens_per_gpu, &previous, batch);
  }
  return make_dispatch_plan(routing, placement, first_gpu, batch);
}

}  // namespace moesim::routing
