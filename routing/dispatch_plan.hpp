// One MoE layer's routing outcome for one expert-parallel (EP) group and micro-batch: who sends
// how many token copies to whom, how many each expert computes, and what was dropped.
//
// Each of the group's `ep` GPUs holds `tokens_per_gpu` tokens, each routed to top_k distinct
// experts (a TokenBatch from routing/token_router.hpp). The placement gives every GPU of the
// group the same number of expert slots; an expert may have several slots (replicas). Policies:
// `contiguous` puts experts [i*E/ep, (i+1)*E/ep) on the group's i-th GPU; `round_robin` puts
// expert e on GPU e mod ep; `greedy` packs experts onto GPUs by load (heaviest first, each to the
// lightest GPU with a free slot; no replicas); `eplb` runs DeepSeek's EPLB (routing/eplb.hpp) on
// the layer's load with `redundant_experts` extra slots: hierarchical when `expert_groups`
// divide over the group's nodes, global otherwise. The load is the routing law's expected
// per-expert load, a count-level trace's counts, or the mean routed counts of earlier steps.
// Replica choice: a kept assignment goes to a replica on the sending GPU's node if there is one,
// else to any replica; among the candidates, round-robin per (sending GPU, expert), or the
// least loaded so far (fewest rows in this plan; lowest slot on ties).
// Capacity (DESIGN.md): capacity = ceil(capacity_factor * tokens * top_k / experts) per expert,
// tokens = ep * tokens_per_gpu (the whole group's micro-batch). Drop policies:
//   position  an expert keeps the first `capacity` assignments in group order (GPU, then token,
//             then k-position) and drops the rest;
//   gate      an expert keeps the `capacity` assignments with the highest gate weights (ties:
//             group order) and drops the rest;
//   pad       GShard's fixed-shape dispatch: every source GPU has a buffer of
//             ceil(capacity_factor * tokens_per_gpu * top_k / experts) rows for every expert;
//             an expert keeps a source's first assignments up to that size (group order), and
//             the rest of each buffer is padding, sent to the expert (one replica per source
//             and expert, chosen as above) and computed like tokens.
// Dropless: no capacity. A dropped assignment is neither sent nor computed.
// Conservation: routed = computed + dropped, per expert and in total; rows sent (and computed)
// = computed + padded.
// A kept assignment is sent as one copy of the token (so a token with two experts on the same
// GPU is sent twice, as a permute-then-all-to-all implementation does).
#pragma once

#include <cstdint>
#include <vector>

#include "routing/eplb.hpp"
#include "routing/moe_spec.hpp"
#include "routing/traces.hpp"

namespace moesim::routing {

struct Placement {
  int experts = 0;
  int ep = 1;
  int slots_per_gpu = 0;
  int gpus_per_node = 0;                      // node size, for locality and node counts; 0: one node
  bool replica_locality = true;               // prefer replicas on the sender's node
  ReplicaChoice replica_choice = ReplicaChoice::round_robin;
  std::vector<int> slot_expert;               // [slot]: slot s is on the group's GPU s / slots_per_gpu
  std::vector<int> slot_replica;              // [slot]: which replica of its expert
  std::vector<std::vector<int>> expert_slots;  // [expert]: its slots, by replica
  std::vector<double> load;                   // [expert]: the load it was made for (placement_load)
  int gpu_of_slot(int slot) const { return slot / slots_per_gpu; }  // rank in the group
  int slots() const { return static_cast<int>(slot_expert.size()); }
};

// The per-expert load a load-driven placement (greedy, eplb) balances in one layer: the spec's
// layer_load when it has one (a trace's counts, or observed counts), else the routing law's
// expected load at the routing's step.
std::vector<double> placement_load(const PlacementSpec& spec, const RoutingSpec& routing, int experts, int ep,
                                   std::uint64_t seed, int layer);

// The placement for one layer (eplb placements follow the layer's expected load). Throws
// PlacementError (routing/eplb.hpp) when the shape does not divide.
Placement make_placement(const PlacementSpec& spec, const RoutingSpec& routing, int experts, int ep,
                         int gpus_per_node, std::uint64_t seed, int layer);

struct DispatchPlan {
  int ep = 0;
  std::int64_t tokens_per_gpu = 0;
  std::int64_t capacity = -1;                 // per expert; -1 when dropless
  std::int64_t source_capacity = -1;          // pad: buffer rows per (source GPU, expert)
  std::vector<std::int64_t> sends;            // [src * ep + dst]: rows src -> dst (kept + padding)
  std::vector<std::int64_t> expert_routed;    // [expert]
  std::vector<std::int64_t> expert_computed;  // [expert]
  std::vector<std::int64_t> expert_padded;    // [expert]: pad: padding rows
  std::vector<std::int64_t> slot_computed;    // [slot]: the tokens each replica computes
  std::vector<std::int64_t> slot_padded;      // [slot]: and its padding rows
  std::vector<std::int64_t> gpu_routed;       // [src]: assignments of src's tokens
  std::vector<std::int64_t> gpu_dropped;      // [src]: of those, dropped
  // Token level, for all-to-all algorithms that send a token once per GPU or node however many
  // of its experts are there (padding rows count as tokens of their own):
  int nodes = 1;                              // nodes the group spans
  std::vector<int> node_of_rank;              // [rank]: its node, 0..nodes-1
  std::vector<std::int64_t> token_sends;      // [src * ep + dst]: distinct rows src -> dst
  std::vector<std::int64_t> node_sends;       // [src * nodes + node]: distinct rows src -> node

  std::int64_t send(int src, int dst) const {
    return sends[static_cast<std::size_t>(src * ep + dst)];
  }
  // Rows GPU `dst` receives and computes (its experts' kept tokens and padding).
  std::int64_t received(int dst) const;
  // Rows of GPU `src` (what comes back to it in the combine).
  std::int64_t kept(int src) const;
  // Token assignments (no padding) GPU `rank` computes.
  std::int64_t computed_on(int rank) const;
  std::int64_t routed() const;
  std::int64_t dropped() const;
};

// The plan for one layer of the EP group whose first GPU has global index `first_gpu`, from the
// group's routed tokens (batch.ranks == placement.ep).
DispatchPlan make_dispatch_plan(const RoutingSpec& routing, const Placement& placement, int first_gpu,
                                const TokenBatch& batch);

// Routes the layer (TokenRouter, with gates when the drop policy needs them) and plans it.
DispatchPlan make_dispatch_plan(const MoeModelSpec& model, const RoutingSpec& routing,
                                const Placement& placement, std::uint64_t seed, int layer,
                                int first_gpu, std::int64_t tokens_per_gpu);

}  // namespace moesim::routing
