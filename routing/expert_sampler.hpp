// Token -> top-k expert assignment, drawn at token level.
//
// uniform: every expert equally likely. zipf(s): the expert of popularity rank r (1-based) has
// weight r^-s. hot_experts(H, f): the H experts of the first ranks share weight f equally, the
// others share 1 - f. Which expert holds which rank is a seeded random permutation per layer,
// so the hot experts differ between layers as in real routers. A token's k experts are distinct: they
// are drawn one after another from the weights renormalised over the experts not yet chosen
// (sampling without replacement; implemented by rejecting repeats, which has exactly that law,
// with an exact fallback when repeats are frequent). Single draws use Walker's alias method.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "routing/moe_spec.hpp"
#include "sim/rng.hpp"

namespace moesim::routing {

class ExpertSampler {
 public:
  ExpertSampler(const RoutingSpec& spec, int experts, std::uint64_t seed, int layer);

  // Writes k distinct expert ids into out (k = out.size() <= experts).
  void sample_top_k(sim::Rng& rng, std::span<int> out) const;

  // Probability of each expert being any one draw (the normalised weights).
  const std::vector<double>& weights() const { return weights_; }

 private:
  int draw_one(sim::Rng& rng) const;
  int experts_;
  bool uniform_;
  std::vector<double> weights_;
  // Walker's alias table (Vose's construction): draw i uniformly, keep it with probability
  // keep_[i], else take alias_[i]. O(1) per draw, exact up to floating-point rounding.
  std::vector<double> keep_;
  std::vector<int> alias_;
};

}  // namespace moesim::routing
