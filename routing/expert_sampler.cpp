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
    // (The stream keeps its first name, so Zipf runs reproduce across versions.)
    sim::Rng rng(seed, "routing/zipf-ranks/layer" + std::to_string(layer));
    for (int i = experts - 1; i > 0; --i)
      std::swap(expert_of_rank[static_cast<std::size_t>(i)],
                expert_of_rank[rng.uniform_int(static_cast<std::uint64_t>(i) + 1)]);
    if (spec.distribution == Distribution::zipf) {
      double total = 0;
      for (int r = 0; r < experts; ++r) total += std::pow(r + 1.0, -spec.zipf_s);
      for (int r = 0; r < experts; ++r)
        weights_[static_cast<std::size_t>(expert_of_rank[static_cast<std::size_t>(r)])] =
            std::pow(r + 1.0, -spec.zipf_s) / total;
    } else {
      // hot_experts: the first `hot` ranks share hot_fraction equally, the rest share the rest.
      const int hot = std::clamp(spec.hot_experts, 1, experts);
      for (int r = 0; r < experts; ++r)
        weights_[static_cast<std::size_t>(expert_of_rank[static_cast<std::size_t>(r)])] =
            r < hot ? spec.hot_fraction / hot
                    : (hot < experts ? (1 - spec.hot_fraction) / (experts - hot) : 0.0);
    }
  }
  // Vose's alias construction.
  const auto n = static_cast<std::size_t>(experts);
  keep_.assign(n, 1.0);
  alias_.resize(n);
  std::iota(alias_.begin(), alias_.end(), 0);
  std::vector<double> scaled(n);
  std::vector<int> small, large;
  for (std::size_t i = 0; i < n; ++i) {
    scaled[i] = weights_[i] * static_cast<double>(n);
    (scaled[i] < 1.0 ? small : large).push_back(static_cast<int>(i));
  }
  while (!small.empty() && !large.empty()) {
    const int s = small.back();
    small.pop_back();
    const int l = large.back();
    const auto us = static_cast<std::size_t>(s), ul = static_cast<std::size_t>(l);
    keep_[us] = scaled[us];
    alias_[us] = l;
    scaled[ul] = (scaled[ul] + scaled[us]) - 1.0;
    if (scaled[ul] < 1.0) {
      large.pop_back();
      small.push_back(l);
    }
  }
  // Leftovers (rounding) keep themselves: keep_ stays 1.
}

int ExpertSampler::draw_one(sim::Rng& rng) const {
  if (uniform_) return static_cast<int>(rng.uniform_int(static_cast<std::uint64_t>(experts_)));
  const auto i = static_cast<std::size_t>(rng.uniform_int(static_cast<std::uint64_t>(experts_)));
  return rng.uniform01() < keep_[i] ? static_cast<int>(i) : alias_[i];
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
