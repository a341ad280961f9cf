#include "routing/expert_sampler.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

#include "routing/traces.hpp"
#include "sim/assert.hpp"

namespace moesim::routing {

namespace {

// Seeded random permutation: Fisher-Yates with the layer's own stream.
void shuffle(std::vector<int>& v, std::uint64_t seed, int layer) {
  // (The stream keeps its first name, so Zipf runs reproduce across versions.)
  sim::Rng rng(seed, "routing/zipf-ranks/layer" + std::to_string(layer));
  for (int i = static_cast<int>(v.size()) - 1; i > 0; --i)
    std::swap(v[static_cast<std::size_t>(i)], v[rng.uniform_int(static_cast<std::uint64_t>(i) + 1)]);
}

}  // namespace

LayerLaw layer_law(const RoutingSpec& spec, int experts, int ep, std::uint64_t seed, int layer) {
  MOESIM_ASSERT(experts >= 1, "no experts");
  const auto n = static_cast<std::size_t>(experts);
  LayerLaw law;
  law.expert_of_rank.resize(n);
  std::iota(law.expert_of_rank.begin(), law.expert_of_rank.end(), 0);
  std::vector<double> by_rank(n, 1.0 / experts);
  switch (spec.distribution) {
    case Distribution::uniform:
      break;
    case Distribution::zipf: {
      shuffle(law.expert_of_rank, seed, layer);
      double total = 0;
      for (int r = 0; r < experts; ++r) total += std::pow(r + 1.0, -spec.zipf_s);
      for (int r = 0; r < experts; ++r) by_rank[static_cast<std::size_t>(r)] = std::pow(r + 1.0, -spec.zipf_s) / total;
      break;
    }
    case Distribution::hot_experts:
    case Distribution::hot_ranks: {
      int hot = 0;
      if (spec.distribution == Distribution::hot_experts) {
        shuffle(law.expert_of_rank, seed, layer);
        hot = std::clamp(spec.hot_experts, 1, experts);
      } else {
        // Blocks of E/ep experts (what contiguous placement puts on one rank), in random order.
        MOESIM_ASSERT(ep >= 1 && experts % ep == 0, "hot_ranks needs experts divisible by the EP size");
        const int block = experts / ep;
        std::vector<int> blocks(static_cast<std::size_t>(ep));
        std::iota(blocks.begin(), blocks.end(), 0);
        shuffle(blocks, seed, layer);
        for (int b = 0; b < ep; ++b)
          for (int i = 0; i < block; ++i)
            law.expert_of_rank[static_cast<std::size_t>(b * block + i)] = blocks[static_cast<std::size_t>(b)] * block + i;
        hot = std::clamp(spec.hot_ranks, 1, ep) * block;
      }
      for (int r = 0; r < experts; ++r)
        by_rank[static_cast<std::size_t>(r)] =
            r < hot ? spec.hot_fraction / hot : (hot < experts ? (1 - spec.hot_fraction) / (experts - hot) : 0.0);
      break;
    }
    case Distribution::lognormal: {
      shuffle(law.expert_of_rank, seed, layer);
      sim::Rng rng(seed, "routing/lognormal/layer" + std::to_string(layer));
      double total = 0;
      for (auto& w : by_rank) total += (w = std::exp(spec.lognormal_sigma * rng.normal()));
      for (auto& w : by_rank) w /= total;
      std::sort(by_rank.begin(), by_rank.end(), std::greater<>());
      break;
    }
    case Distribution::trace: {
      MOESIM_ASSERT(spec.trace, "trace routing without a trace");
      const auto l = static_cast<std::size_t>(layer);
      std::vector<double> from_tokens;
      if (!spec.trace->layer_tokens.empty()) {  // a token-level trace: its tokens' counts
        MOESIM_ASSERT(l < spec.trace->layer_tokens.size(), "a token trace without the layer");
        from_tokens.assign(n, 0.0);
        for (const int e : spec.trace->layer_tokens[l].experts) from_tokens[static_cast<std::size_t>(e)] += 1;
      } else {
        MOESIM_ASSERT(l < spec.trace->layer_counts.size(), "a count trace without the layer");
      }
      const auto& c = from_tokens.empty() ? spec.trace->layer_counts[l] : from_tokens;
      const double total = std::accumulate(c.begin(), c.end(), 0.0);
      MOESIM_ASSERT(total > 0, "a trace layer without counts");
      // Rank by count, ties by expert id.
      std::stable_sort(law.expert_of_rank.begin(), law.expert_of_rank.end(), [&](int a, int b) {
        return c[static_cast<std::size_t>(a)] > c[static_cast<std::size_t>(b)];
      });
      for (std::size_t r = 0; r < n; ++r) by_rank[r] = c[static_cast<std::size_t>(law.expert_of_rank[r])] / total;
      break;
    }
  }
  if (spec.rotate != 0 && spec.step != 0) {
    const auto shift = static_cast<std::size_t>(
        ((static_cast<std::int64_t>(spec.step) * spec.rotate) % experts + experts) % experts);
    std::rotate(law.expert_of_rank.begin(), law.expert_of_rank.begin() + static_cast<std::ptrdiff_t>(shift),
                law.expert_of_rank.end());
  }
  law.weights.assign(n, 0.0);
  law.rank_of_expert.assign(n, 0);
  for (std::size_t r = 0; r < n; ++r) {
    const auto e = static_cast<std::size_t>(law.expert_of_rank[r]);
    law.weights[e] = by_rank[r];
    law.rank_of_expert[e] = static_cast<int>(r);
  }
  return law;
}

ExpertSampler::ExpertSampler(std::vector<double> weights)
    : experts_(static_cast<int>(weights.size())), weights_(std::move(weights)) {
  MOESIM_ASSERT(experts_ >= 1, "no experts");
  const double total = std::accumulate(weights_.begin(), weights_.end(), 0.0);
  MOESIM_ASSERT(total > 0, "expert weights sum to zero");
  const bool equal = std::all_of(weights_.begin(), weights_.end(), [&](double w) { return w == weights_[0]; });
  // Weights that already sum to 1 up to rounding are kept as given (bit-identical draws).
  if (std::abs(total - 1.0) > 1e-12 && !equal)
    for (auto& w : weights_) w /= total;
  const auto n = static_cast<std::size_t>(experts_);
  if (equal) {
    weights_.assign(n, 1.0 / experts_);
    return;  // no columns: a draw is one uniform integer
  }
  // Vose's alias construction.
  std::vector<double> keep(n, 1.0);
  std::vector<int> alias(n);
  std::iota(alias.begin(), alias.end(), 0);
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
    keep[us] = scaled[us];
    alias[us] = l;
    scaled[ul] = (scaled[ul] + scaled[us]) - 1.0;
    if (scaled[ul] < 1.0) {
      large.pop_back();
      small.push_back(l);
    }
  }
  // Leftovers (rounding) keep themselves: their keep stays 1.
  columns_.resize(n);
  for (std::size_t i = 0; i < n; ++i)
    columns_[i] = Column{static_cast<std::uint64_t>(std::ceil(std::ldexp(keep[i], 53))), alias[i]};
}

namespace {

bool contains(std::span<const int> v, int x) { return std::find(v.begin(), v.end(), x) != v.end(); }

bool has(const std::uint64_t* set, int e) { return ((set[e >> 6] >> (e & 63)) & 1U) != 0; }

}  // namespace

int ExpertSampler::exact_draw(sim::Rng& rng, const std::uint64_t* allowed) const {
  double remaining = 0;
  int last = -1, left = 0;
  for (int x = 0; x < experts_; ++x)
    if (has(allowed, x)) {
      remaining += weights_[static_cast<std::size_t>(x)];
      last = x;
      ++left;
    }
  MOESIM_ASSERT(last >= 0, "no expert left to draw");
  if (!(remaining > 0)) {  // only zero-weight experts left: uniformly among them
    std::uint64_t i = rng.uniform_int(static_cast<std::uint64_t>(left));
    for (int x = 0; x < experts_; ++x)
      if (has(allowed, x) && i-- == 0) return x;
  }
  double u = rng.uniform01() * remaining;
  for (int x = 0; x < experts_; ++x) {
    if (!has(allowed, x)) continue;
    u -= weights_[static_cast<std::size_t>(x)];
    if (u < 0 && weights_[static_cast<std::size_t>(x)] > 0) return x;
  }
  return last;  // rounding: the last candidate
}

__attribute__((always_inline)) inline void ExpertSampler::top_k(sim::Rng& rng, int* out, std::size_t k) const {
  constexpr int kMaxRejections = 64;
  int rejections = 0;
  for (std::size_t i = 0; i < k;) {
    const std::span<const int> taken(out, i);
    const int e = draw_one(rng);
    if (!contains(taken, e)) {
      out[i++] = e;
      continue;
    }
    if (++rejections < kMaxRejections) continue;
    // Frequent repeats (a few experts hold most of the weight): exact draws from what is left.
    std::vector<std::uint64_t> left(static_cast<std::size_t>(words()), 0);
    for (int x = 0; x < experts_; ++x) left[static_cast<std::size_t>(x >> 6)] |= std::uint64_t{1} << (x & 63);
    for (std::size_t j = 0; j < i; ++j) left[static_cast<std::size_t>(out[j] >> 6)] &= ~(std::uint64_t{1} << (out[j] & 63));
    for (; i < k; ++i) {
      out[i] = exact_draw(rng, left.data());
      left[static_cast<std::size_t>(out[i] >> 6)] &= ~(std::uint64_t{1} << (out[i] & 63));
    }
  }
}

void ExpertSampler::sample_top_k(sim::Rng& rng, std::span<int> out) const {
  MOESIM_ASSERT(out.size() <= static_cast<std::size_t>(experts_), "top_k larger than the expert count");
  top_k(rng, out.data(), out.size());
}

void ExpertSampler::sample_tokens(sim::Rng& rng, std::span<int> out, int k) const {
  // The generator's state in a local copy (registers) for the whole run of tokens.
  sim::Rng local = rng;
  const auto uk = static_cast<std::size_t>(k);
  MOESIM_ASSERT(k <= experts_, "top_k larger than the expert count");
  for (std::size_t at = 0; at + uk <= out.size(); at += uk) top_k(local, out.data() + at, uk);
  rng = local;
}

}  // namespace moesim::routing
