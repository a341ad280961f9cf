#include "routing/expert_sampler.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

#include "sim/assert.hpp"

namespace moesim::routing {

ExpertSampler::ExpertSampler(const RoutingSpec& spec, int experts, std::uint64_t seed, int layer)
    : experts_(experts), uniform_(spec.distribution == Distribution::uniform) {
  MOESIM_ASSERT(experts >= 1, "no experts");
  weights_.assign(static_cast<std::size_t>(experts), 1.0 / experts);
  if (!uniform_) {
    // Rank permutation: Fisher-Yates with the layer's own stream.
    std::vector<int> expert_of_rank(static_cast<std::size_t>(experts));
    std::iota(expert_of_rank.begin(), expert_of_rank.end(), 0);
    sim::Rng rng(seed, "routing/zipf-ranks/layer" + std::to_string(layer));
    for (int i = experts - 1; i > 0; --i)
      std::swap(expert_of_rank[static_cast<std::size_t>(i)],
                expert_of_rank[rng.uniform_int(static_cast<std::uint64_t>(i) + 1)]);
    double total = 0;
    for (int r = 0; r < experts; ++r) total += std::pow(r + 1.0, -spec.zipf_s);
    for (int r = 0; r < experts; ++r)
      weights_[static_cast<std::size_t>(expert_of_rank[static_cast<std::size_t>(r)])] =
          std::pow(r + 1.0, -spec.zipf_s) / total;
  }
  cdf_.resize(weights_.size());
  std::partial_sum(weights_.begin(), weights_.end(), cdf_.begin());
}

int ExpertSampler::draw_one(sim::Rng& rng) const {
  if (uniform_) return static_cast<int>(rng.uniform_int(static_cast<std::uint64_t>(experts_)));
  const double u = rng.uniform01() * cdf_.back();
  const auto it = std::upper_bound(cdf_.begin(), cdf_.end(), u);
  return static_cast<int>(std::min<std::ptrdiff_t>(it - cdf_.begin(), experts_ - 1));
}

void ExpertSampler::sample_top_k(sim::Rng& rng, std::span<int> out) const {
  const std::size_t k = out.size();
  MOESIM_ASSERT(k <= static_cast<std::size_t>(experts_), "top_k larger than the expert count");
  constexpr int kMaxRejections = 64;
  int rejections = 0;
  for (std::size_t i = 0; i < k;) {
    const int e = draw_one(rng);
    if (std::find(out.begin(), out.begin() + static_cast<std::ptrdiff_t>(i), e) ==
        out.begin() + static_cast<std::ptrdiff_t>(i)) {
      out[i++] = e;
      continue;
    }
    if (++rejections < kMaxRejections) continue;
    // Exact sequential draw over the experts not yet chosen.
    for (; i < k; ++i) {
      double remaining = 0;
      for (int x = 0; x < experts_; ++x)
        if (std::find(out.begin(), out.begin() + static_cast<std::ptrdiff_t>(i), x) ==
            out.begin() + static_cast<std::ptrdiff_t>(i))
          remaining += weights_[static_cast<std::size_t>(x)];
      double u = rng.uniform01() * remaining;
      int pick = -1;
      for (int x = 0; x < experts_; ++x) {
        if (std::find(out.begin(), out.begin() + static_cast<std::ptrdiff_t>(i), x) !=
            out.begin() + static_cast<std::ptrdiff_t>(i))
          continue;
        pick = x;
        u -= weights_[static_cast<std::size_t>(x)];
        if (u < 0) break;
      }
      out[i] = pick;
    }
  }
}

}  // namespace moesim::routing
