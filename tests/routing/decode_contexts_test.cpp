#include <catch2/catch.hpp>

#include <algorithm>
#include <vector>

#include "routing/decode_contexts.hpp"

using namespace moesim::routing;

namespace {
DecodeContexts contexts(double sigma, bool balanced, int groups, std::int64_t sequences) {
  DecodeContexts d;
  d.mean = 4096;
  d.sigma = sigma;
  d.balanced = balanced;
  d.groups = groups;
  d.sequences = sequences;
  return d;
}
std::pair<double, double> spread(const std::vector<ContextLoad>& loads) {
  double lo = 1e300, hi = 0;
  for (const auto& l : loads) {
    lo = std::min(lo, l.sum);
    hi = std::max(hi, l.sum);
  }
  return {lo, hi};
}
}  // namespace

TEST_CASE("Decode contexts: one length without spread, a log-normal law of that mean with it", "[routing][contexts]") {
  const auto same = context_loads(contexts(0, false, 8, 16), 1, 0);
  REQUIRE(same.size() == 8);
  for (const auto& l : same) {
    CHECK(l.sum == 16 * 4096.0);
    CHECK(l.window == l.sum);
    CHECK(l.longest == 4096);
  }
  // 64 groups of 256 sequences at sigma 1: the mean of all draws is the context length (the law's
  // mean, within the sampling error of 16,384 draws of a coefficient of variation of 1.31), and a
  // group's mean context spreads by about 1.31 / 16.
  auto d = contexts(1, false, 64, 256);
  d.micro_batches = 2;
  const auto loads = context_loads(d, 7, 0);
  REQUIRE(loads.size() == 128);
  double total = 0;
  for (const auto& l : loads) total += l.sum;
  CHECK(total / (128.0 * 256) == Approx(4096).epsilon(0.03));
  const auto [lo, hi] = spread(loads);
  CHECK(hi / 256 > 4096 * 1.1);
  CHECK(lo / 256 < 4096 * 0.9);
  // The same seed and step give the same draws; another step, others.
  CHECK(context_loads(d, 7, 0)[5].sum == loads[5].sum);
  CHECK(context_loads(d, 7, 1)[5].sum != loads[5].sum);
  // A window and a top-k cap what a sequence counts: min(context, cap).
  d.window = 1024;
  d.top = 2048;
  for (const auto& l : context_loads(d, 7, 0)) {
    CHECK(l.window <= 1024.0 * 256);
    CHECK(l.window < l.top);
    CHECK(l.top < l.sum);
    CHECK(l.longest > 4096);
  }
}

TEST_CASE("Decode contexts dealt to even out the caches: the groups' totals nearly equal", "[routing][contexts]") {
  const auto as_they_come = context_loads(contexts(1, false, 72, 112), 3, 0);
  const auto balanced = context_loads(contexts(1, true, 72, 112), 3, 0);
  const auto [lo, hi] = spread(as_they_come);
  const auto [blo, bhi] = spread(balanced);
  // Longest first to the group with the fewest cached tokens: the spread is at most about one
  // sequence's context, against many as they come.
  std::int64_t longest = 0;
  double total = 0;
  for (const auto& l : balanced) {
    longest = std::max(longest, l.longest);
    total += l.sum;
  }
  CHECK(bhi - blo <= static_cast<double>(longest));
  CHECK((bhi - blo) * 10 < hi - lo);
  CHECK(total / (72.0 * 112) == Approx(4096).epsilon(0.05));
}
