// The MoE model shape, the router's behaviour and the expert placement, as validated specs.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace moesim::routing {

struct MoeModelSpec {
  std::string name;
  int moe_layers = 1;
  std::int64_t hidden = 0;      // model dimension
  std::int64_t expert_ffn = 0;  // intermediate size of one routed (and shared) expert
  int experts = 1;              // routed experts per layer
  int top_k = 1;
  int shared_experts = 0;       // always-on experts every token passes through (DeepSeek)
  int dtype_bytes = 2;          // activations and weights (bf16)
  int attention_heads = 1;
  int kv_heads = 1;
  std::int64_t head_dim = 0;
};

enum class Distribution { uniform, zipf, hot_experts };
enum class DropPolicy { position };

struct RoutingSpec {
  Distribution distribution = Distribution::uniform;
  double zipf_s = 1.0;                    // exponent, when distribution == zipf
  int hot_experts = 1;                    // hot_experts: how many experts are hot
  double hot_fraction = 0.5;              // hot_experts: share of the routing they draw together
  std::optional<double> capacity_factor;  // nullopt: dropless
  DropPolicy drop_policy = DropPolicy::position;
};

enum class PlacementPolicy { contiguous, round_robin, greedy, eplb };
enum class ReplicaChoice { round_robin, least_loaded };

struct PlacementSpec {
  PlacementPolicy policy = PlacementPolicy::contiguous;
  int redundant_experts = 0;  // eplb: extra expert slots per EP group, for replicas
  int expert_groups = 1;      // eplb: hierarchical when the groups divide over the group's nodes
  ReplicaChoice replica_choice = ReplicaChoice::round_robin;  // among a token's candidate replicas
  // greedy, eplb: per MoE layer, the load to balance (from a count-level trace); empty: the
  // routing distribution's expected load.
  std::vector<std::vector<double>> layer_load;
};

}  // namespace moesim::routing
