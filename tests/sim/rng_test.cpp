#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "sim/rng.hpp"

using moesim::sim::Rng;

TEST_CASE("A stream is a pure function of seed and name", "[sim][rng]") {
  Rng a(42, "routing/layer0"), b(42, "routing/layer0");
  Rng other_name(42, "routing/layer1"), other_seed(43, "routing/layer0");
  bool differs_name = false, differs_seed = false;
  for (int i = 0; i < 100; ++i) {
    const auto x = a.next_u64();
    REQUIRE(x == b.next_u64());
    differs_name |= x != other_name.next_u64();
    differs_seed |= x != other_seed.next_u64();
  }
  CHECK(differs_name);
  CHECK(differs_seed);
}

TEST_CASE("The streams' values are fixed across machines and releases", "[sim][rng]") {
  // Pinned: a change here changes every scenario's routing. Regenerate goldens if intended.
  // The values were recorded from this implementation when the goldens were made.
  Rng r(1, "test");
  CHECK(r.next_u64() == 0xE13B0FC31BE18AF3ULL);
  CHECK(r.next_u64() == 0xB2C8217BF0AA0B1FULL);
  CHECK(moesim::sim::fnv1a64("") == 0xCBF29CE484222325ULL);
  CHECK(moesim::sim::fnv1a64("a") == 0xAF63DC4C8601EC8CULL);
}

TEST_CASE("Uniform integers stay in range and are balanced", "[sim][rng]") {
  Rng r(7, "uniform");
  std::vector<int> counts(10, 0);
  const int n = 100'000;
  for (int i = 0; i < n; ++i) {
    const auto v = r.uniform_int(10);
    REQUIRE(v < 10);
    ++counts[v];
  }
  // Chi-square with 9 degrees of freedom; 27.9 is the 0.999 quantile. Fixed seed: no flakiness.
  double chi2 = 0;
  for (int c : counts) chi2 += (c - n / 10.0) * (c - n / 10.0) / (n / 10.0);
  CHECK(chi2 < 27.9);
}

TEST_CASE("Uniform doubles lie in the unit interval and exponentials have their mean", "[sim][rng]") {
  Rng r(9, "doubles");
  double sum = 0;
  for (int i = 0; i < 100'000; ++i) {
    const double u = r.uniform01();
    REQUIRE(u >= 0.0);
    REQUIRE(u < 1.0);
    sum += r.exponential(2.0);
  }
  CHECK(sum / 100'000 == Approx(2.0).epsilon(0.02));
}
