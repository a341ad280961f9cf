// Seeded random streams.
//
// Every consumer draws from its own stream derived from (scenario seed, stream name) by a fixed
// hash (FNV-1a 64 of the name, mixed with the seed through SplitMix64), so adding a consumer or
// reordering draws elsewhere never changes another stream, and the same input gives the same
// output on any machine. The generator is xoshiro256** (Blackman & Vigna, 2018); distributions
// are implemented here, not taken from <random>, whose algorithms differ between libraries.
// Never std::random_device or the wall clock inside models.
#pragma once

#include <cstdint>
#include <string_view>

namespace moesim::sim {

class Rng {
 public:
  Rng(std::uint64_t seed, std::string_view stream_name);

  std::uint64_t next_u64();
  // Uniform in [0, 1) with 53 random bits.
  double uniform01();
  // Uniform integer in [0, n), n > 0, without modulo bias (Lemire 2019).
  std::uint64_t uniform_int(std::uint64_t n);
  // Exponential with the given mean (ziggurat method).
  double exponential(double mean);
  // Standard normal (Marsaglia's polar method; the second variate of each pair is dropped so
  // that a draw never depends on an earlier call).
  double normal();
  // Gamma with the given shape > 0 and scale 1 (Marsaglia & Tsang, 2000; shape < 1 through
  // Gamma(shape + 1) * U^(1/shape)).
  double gamma(double shape);

 private:
  std::uint64_t s_[4];
};

std::uint64_t fnv1a64(std::string_view text);

}  // namespace moesim::sim
