// The popularity law of one MoE layer, and draws of a token's top-k experts from it.
//
// A law gives every expert a weight (its probability of being any one draw) and a popularity
// rank (0 = most popular). The synthetic laws, for E experts:
//   uniform              every expert 1/E;
//   zipf(s)              rank r weighs (r + 1)^-s;
//   hot_experts(H, f)    ranks 0..H-1 share f equally, the others share 1 - f;
//   lognormal(sigma)     E weights exp(sigma Z), Z standard normal, ranked by size (so expert
//                        loads, and per-rank loads which sum a few of them, are log-normal);
//   hot_ranks(R, f)      the experts of R whole EP ranks (under contiguous placement, E/ep
//                        experts each) share f equally, the others share 1 - f;
//   trace                the shares of a trace's counts (of a token-level trace: its tokens').
// Which expert holds which rank is a seeded random permutation per layer (hot_ranks: a random
// order of the rank blocks), so hot experts differ between layers as in real routers; a trace
// ranks its experts by count. With `rotate`, at step s the expert holding rank r is the one that
// held rank (r + s * rotate) mod E at step 0: the hotspot moves across steps.
//
// A token's k experts are distinct: they are drawn one after another from the weights
// renormalised over the experts not yet chosen (sampling without replacement; implemented by
// rejecting repeats, which has exactly that law, with an exact fallback when repeats are
// frequent). A draw may be restricted to a set of experts (group-limited routing: the experts of
// the token's groups not yet chosen), held as a bit set. Single draws use Walker's alias method.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "routing/moe_spec.hpp"
#include "sim/rng.hpp"

namespace moesim::routing {

struct LayerLaw {
  std::vector<double> weights;         // [expert], summing to 1
  std::vector<int> expert_of_rank;     // [popularity rank]
  std::vector<int> rank_of_expert;     // [expert]
};

// The law of `layer` at spec.step. `ep` sizes hot_ranks' blocks. trace: spec.trace's counts.
LayerLaw layer_law(const RoutingSpec& spec, int experts, int ep, std::uint64_t seed, int layer);

class ExpertSampler {
 public:
  // weights >= 0, not all zero; normalised here.
  explicit ExpertSampler(std::vector<double> weights);

  int draw_one(sim::Rng& rng) const;
  // Writes k distinct expert ids into out (k = out.size() <= experts).
  void sample_top_k(sim::Rng& rng, std::span<int> out) const;
  // sample_top_k for out.size() / k tokens one after another (the same draws), faster.
  void sample_tokens(sim::Rng& rng, std::span<int> out, int k) const;
  // One expert from those whose bit is set in `allowed` (expert e is bit e % 64 of word e / 64;
  // words() words), by the weights renormalised over them: draws by weight until one is allowed,
  // after 64 rejections an exact draw. At least one expert must be allowed; zero-weight ones are
  // drawn only when all allowed ones weigh 0. Inline: group-limited routing makes billions.
  int draw_allowed(sim::Rng& rng, const std::uint64_t* allowed) const;
  // k calls of draw_allowed in a row, each drawn expert taken out of `allowed` and written to
  // out[0..k): the same draws, so the same experts, but with no branch on whether a draw is
  // allowed (about half are not once a token's groups are chosen, a branch the processor cannot
  // predict). after(e, ok) runs after every draw, ok 1 when e was taken and 0 when it was
  // rejected; it may narrow `allowed` further (group-limited routing, once the token's groups
  // are known) and should itself not branch on ok.
  template <class After>
  void draw_allowed_run(sim::Rng& rng, std::uint64_t* allowed, int* out, int k, After after) const;
  // The words of an `allowed` set: one bit an expert.
  int words() const { return (experts_ + 63) / 64; }

  const std::vector<double>& weights() const { return weights_; }
  int experts() const { return static_cast<int>(weights_.size()); }

 private:
  void top_k(sim::Rng& rng, int* out, std::size_t k) const;
  int exact_draw(sim::Rng& rng, const std::uint64_t* allowed) const;
  int experts_;
  std::vector<double> weights_;
  // Walker's alias table (Vose's construction): draw column i uniformly, keep i with
  // probability keep, else take the column's alias. O(1) per draw, exact up to floating-point
  // rounding. keep is stored as a threshold on the 53-bit integer U of a uniform u = U 2^-53
  // (u < keep exactly when U < ceil(keep 2^53)); both fields together, one load per draw.
  // Empty for equal weights: a draw is one uniform integer.
  struct Column {
    std::uint64_t keep_below;
    std::int64_t alias;
  };
  std::vector<Column> columns_;
};

// Inline: every routed token makes k or more of these.
__attribute__((always_inline)) inline int ExpertSampler::draw_one(sim::Rng& rng) const {
  if (columns_.empty()) return static_cast<int>(rng.uniform_int(static_cast<std::uint64_t>(experts_)));
  // One 64-bit draw x gives both the column, floor(x n / 2^64), and the uniform within it, the
  // fractional part of x n / 2^64 (its top 53 bits); the column's bias is below n / 2^64.
  __extension__ using uint128 = unsigned __int128;
  const uint128 m = static_cast<uint128>(rng.next_u64()) * static_cast<std::uint64_t>(experts_);
  const auto i = static_cast<std::size_t>(m >> 64);
  // Both outcomes loaded, then selected: the comparison is a coin flip, a branch would often
  // be mispredicted.
  const Column c = columns_[i];
  const std::int64_t stay = static_cast<std::int64_t>(i);
  return static_cast<int>((static_cast<std::uint64_t>(m) >> 11) < c.keep_below ? stay : c.alias);
}

__attribute__((always_inline)) inline int ExpertSampler::draw_allowed(sim::Rng& rng, const std::uint64_t* allowed) const {
  constexpr int kMaxRejections = 64;
  for (int i = 0; i < kMaxRejections; ++i) {
    const int e = draw_one(rng);
    if ((allowed[e >> 6] >> (e & 63)) & 1U) return e;
  }
  return exact_draw(rng, allowed);
}

template <class After>
__attribute__((always_inline)) inline void ExpertSampler::draw_allowed_run(sim::Rng& rng, std::uint64_t* allowed, int* out,
                                                                         int k, After after) const {
  constexpr std::uint64_t kMaxRejections = 64;  // as draw_allowed
  // The generator's state in a local whose address is never taken, so that it stays in
  // registers: the stores into `allowed` could otherwise be the generator's words.
  sim::Rng local = rng;
  std::uint64_t rejections = 0;
  for (int j = 0; j < k;) {
    const int e = draw_one(local);
    std::uint64_t& word = allowed[e >> 6];
    const std::uint64_t ok = (word >> (e & 63)) & 1U;
    out[j] = e;  // kept only when ok: j moves on
    word &= ~(ok << (e & 63));
    j += static_cast<int>(ok);
    rejections = (rejections + 1) & (ok - 1);  // zero when taken
    after(e, ok);
    if (rejections == kMaxRejections) [[unlikely]] {
      rng = local;
      const int x = exact_draw(rng, allowed);
      local = rng;
      out[j++] = x;
      allowed[x >> 6] &= ~(std::uint64_t{1} << (x & 63));
      rejections = 0;
      after(x, std::uint64_t{1});
    }
  }
  rng = local;
}

}  // namespace moesim::routing
