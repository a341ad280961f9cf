// Token-level routing of one EP group's micro-batch, layer by layer (RoutingSpec's generators).
//
// Synthetic laws (routing/expert_sampler.hpp) are drawn token by token: each source GPU has its
// own random stream per (layer, step, micro-batch), so a GPU's tokens do not depend on the
// others. On top of a law, per batch (one EP group, one layer, one step, one micro-batch):
//   dirichlet_concentration c   the batch's weights are Dirichlet(c x law weights): mean the law,
//                               variance w(1 - w)/(c + 1) per expert;
//   burst_probability p,        with probability p the batch has a burst: a uniformly chosen
//   burst_fraction f            expert takes share f, the rest scaled by 1 - f.
// Per token:
//   max_groups M (of `groups`)  the token first draws M distinct expert groups (consecutive
//                               expert ids; by the groups' summed weights, without replacement)
//                               and its k experts only inside them, as DeepSeek-V3's
//                               group-limited routing does (with contiguous placement and one group
//                               per node, its experts span at most M nodes);
//   group_choice                how those M groups are chosen: `draw` (above), or from scores as
//                               a router does: each expert scores log(w) + Gumbel noise (so that
//                               the top k of all experts would be a draw of k by weight without
//                               replacement, the Gumbel-top-k trick), a group scores its best
//                               expert (`best_expert`, DeepSeek-V2 and DeepEP's benchmark) or its
//                               best two summed (`best_two`, DeepSeek-V3), the M best groups are
//                               chosen and the token takes the k best experts in them, so it
//                               reaches more of its M groups than a draw within them does
//                               (best_expert is drawn without scores, at the same law: see
//                               route_synthetic);
//   layer_correlation rho       at layer l > 0, each of the token's k choices keeps, with
//                               probability rho, the popularity rank of the token's choice in the
//                               same position at layer l - 1 (the expert of that rank at layer
//                               l; skipped when taken or outside its groups), else is drawn
//                               afresh. With rank-based laws this keeps each layer's law and
//                               makes a token's experts at consecutive layers dependent.
// Gate weights, when wanted: k independent Exp(1) values, normalised and sorted so that the
// first expert drawn (the likeliest) has the largest (a flat Dirichlet's order statistics).
//
// Trace-driven routing: a token-level trace is replayed as is (every EP group replays the same
// tokens); a count-level trace drives token routing by dealing: the batch's N x k assignments are
// split over the experts in proportion to the counts (largest remainder, at most N per expert,
// the excess spread over the others), listed by expert and dealt so that token t gets entries
// t, t + N, ..., t + (k - 1) N (distinct experts, since no expert has more than N); tokens are
// then shuffled over the group's GPUs and each token's k experts shuffled among its positions.
// The batch's totals match the counts' shares exactly; what varies is which GPU holds which token.
#pragma once

#include <cstdint>
#include <vector>

#include "routing/expert_sampler.hpp"
#include "routing/moe_spec.hpp"
#include "routing/traces.hpp"

namespace moesim::routing {

class TokenRouter {
 public:
  // `gates`: draw gate weights (a token-level trace always brings its own).
  TokenRouter(const MoeModelSpec& model, const RoutingSpec& spec, int ep, std::uint64_t seed, bool gates);

  // Layer l's law at spec.step: its weights are the expected per-expert load.
  const LayerLaw& law(int layer) const { return laws_[static_cast<std::size_t>(layer)]; }
  // True when a layer's routing depends on the previous layer's (route the layers in order).
  bool layers_depend() const { return spec_.layer_correlation > 0; }

  // Routes `layer` for the EP group whose first GPU is first_gpu. `previous` is the same group's
  // batch at layer - 1 (of the same micro-batch) when layers_depend(), else ignored (may be
  // null). Each micro-batch of a step (gradient accumulation) draws from its own streams, so
  // micro-batches differ as batches of different groups do; a token-level trace is replayed
  // by every micro-batch.
  void route(int layer, int first_gpu, std::int64_t tokens_per_rank, const TokenBatch* previous,
             TokenBatch& out, int micro_batch = 0) const;

 private:
  std::vector<double> batch_weights(int layer, int first_gpu, int micro_batch) const;
  void route_synthetic(int layer, int first_gpu, int micro_batch, const TokenBatch* previous, TokenBatch& out) const;
  void deal_counts(int layer, int first_gpu, int micro_batch, TokenBatch& out) const;
  void draw_gates(int layer, int first_gpu, int micro_batch, TokenBatch& out) const;
  std::string stream(const std::string& what, int layer, int unit, int micro_batch) const;

  MoeModelSpec model_;
  RoutingSpec spec_;
  int ep_;
  std::uint64_t seed_;
  bool gates_;
  std::vector<LayerLaw> laws_;
  std::vector<ExpertSampler> samplers_;  // [layer], on the law's weights
};

// Per layer, the mean over steps [step - history, step - 1] of the per-expert routed counts of all
// `groups` EP groups and the steps' `micro_batches` micro-batches (what a placement computed from
// recent steps balances). history >= 1 and spec.step >= history. layer_first_gpu: per layer, the
// first GPU of its groups (with pipeline stages, its stage's); empty: 0 for every layer.
std::vector<std::vector<double>> observed_load(const MoeModelSpec& model, const RoutingSpec& spec, int ep, int groups,
                                               std::int64_t tokens_per_rank, std::uint64_t seed, int history,
                                               int micro_batches = 1,
                                               const std::vector<int>& layer_first_gpu = {});

}  // namespace moesim::routing
