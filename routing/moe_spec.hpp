// The MoE model shape, the router's behaviour and the expert placement, as validated specs.
#pragma once

#include <cstdint>
#include <memory>
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
  std::int64_t kv_cache_dim = 0;      // elements cached per token and layer; 0: 2 * kv_heads * head_dim
  std::int64_t attention_params = 0;  // weights of one attention block; 0: H (q + 2 kv) + q H
  int dense_layers = 0;           // dense transformer layers before the MoE layers (DeepSeek-V3: 3)
  std::int64_t dense_ffn = 0;     // their FFN intermediate size
  // Vocabulary size: the input embedding (on the first pipeline stage) and the untied output
  // projection, the LM head, with the loss in training (on the last); 0: neither modelled.
  std::int64_t vocab = 0;
  // Tensor parallelism (parallelism.tp): the attention of every layer, the dense layers' FFN and
  // the LM head are split over this many GPUs (heads, FFN columns, vocabulary), each of them
  // running its share over the tokens of all of them; the figures below are one GPU's.
  int tp = 1;
};

// One GPU's query width and key/value width of a layer's attention: the heads split over the
// tensor-parallel GPUs (kv heads that do not divide are replicated: each GPU holds
// ceil(kv_heads / tp)).
inline std::int64_t query_width(const MoeModelSpec& m) {
  return static_cast<std::int64_t>(m.attention_heads / m.tp) * m.head_dim;
}
inline std::int64_t kv_width(const MoeModelSpec& m) {
  return static_cast<std::int64_t>((m.kv_heads + m.tp - 1) / m.tp) * m.head_dim;
}
// Elements one GPU caches per token and layer: its kv heads' keys and values, or a given
// kv_cache_dim (DeepSeek's MLA latent), which every tensor-parallel GPU caches whole.
inline std::int64_t kv_cache_width(const MoeModelSpec& m) { return m.kv_cache_dim > 0 ? m.kv_cache_dim : 2 * kv_width(m); }

// Weights of one layer's attention block on one GPU: the given count (e.g. DeepSeek's MLA; with
// tensor parallelism its 1/tp share, rounded up), else those of multi-head attention with the
// GPU's head counts (Q, K, V and output projections).
inline std::int64_t attention_weights(const MoeModelSpec& m) {
  if (m.attention_params > 0) return (m.attention_params + m.tp - 1) / m.tp;
  const std::int64_t q = query_width(m), kv = kv_width(m);
  return m.hidden * (q + 2 * kv) + q * m.hidden;
}

enum class Distribution { uniform, zipf, hot_experts, lognormal, hot_ranks, trace };
// Over capacity: drop the latest assignments in group order (position), the ones with the lowest
// gate weight (gate), or use GShard's fixed-shape dispatch with padding (pad). See dispatch_plan.hpp.
enum class DropPolicy { position, gate, pad };

struct RoutingTrace;  // routing/traces.hpp

// Token -> expert routing law (routing/token_router.hpp documents every generator).
struct RoutingSpec {
  Distribution distribution = Distribution::uniform;
  double zipf_s = 1.0;                    // zipf: exponent
  int hot_experts = 1;                    // hot_experts: how many experts are hot
  double hot_fraction = 0.5;              // hot_experts, hot_ranks: the hot share of the routing
  int hot_ranks = 1;                      // hot_ranks: how many EP ranks' experts are hot
  double lognormal_sigma = 1.0;           // lognormal: sigma of log(expert weight)
  int step = 0;                           // the training/inference step this run routes
  int rotate = 0;                         // popularity ranks move by this many experts per step
  double dirichlet_concentration = 0;     // > 0: per-batch weights ~ Dirichlet(this x weights)
  double burst_probability = 0;           // per batch, chance of a burst on one random expert
  double burst_fraction = 0;              // the share of the batch's routing the burst takes
  double layer_correlation = 0;           // chance a token keeps its popularity rank at l+1
  int groups = 1;                         // contiguous expert groups, for max_groups
  int max_groups = 0;                     // > 0: a token's experts span at most this many groups
  std::optional<double> capacity_factor;  // nullopt: dropless
  DropPolicy drop_policy = DropPolicy::position;
  std::shared_ptr<const RoutingTrace> trace;  // distribution == trace
};

enum class PlacementPolicy { contiguous, round_robin, greedy, eplb };
enum class ReplicaChoice { round_robin, least_loaded };

struct PlacementSpec {
  PlacementPolicy policy = PlacementPolicy::contiguous;
  int redundant_experts = 0;  // eplb: extra expert slots per EP group, for replicas
  int expert_groups = 1;      // eplb: hierarchical when the groups divide over the group's nodes
  ReplicaChoice replica_choice = ReplicaChoice::round_robin;  // among a token's candidate replicas
  bool replica_locality = true;  // candidates: the replicas on the sender's node when there are any
  // greedy, eplb: per MoE layer, the load to balance (from a count-level trace); empty: the
  // routing distribution's expected load.
  std::vector<std::vector<double>> layer_load;
};

}  // namespace moesim::routing
