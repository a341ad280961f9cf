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

// Ziggurat tables for the standard exponential (sim/rng.cpp says how they are built).
struct ExpZiggurat {
  static constexpr double r = 7.69711747013104972;
  static constexpr double v = 3.949659822581572e-3;
  double x[257];
  double f[257];
  ExpZiggurat();
};
extern const ExpZiggurat kExpZiggurat;

class Rng {
 public:
  Rng(std::uint64_t seed, std::string_view stream_name);

  // Inline: routing draws hundreds of millions of these per large run.
  std::uint64_t next_u64() {
    const std::uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const std::uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
  }
  // Uniform in [0, 1) with 53 random bits.
  double uniform01() { return static_cast<double>(next_u64() >> 11) * 0x1.0p-53; }
  // Uniform integer in [0, n), n > 0, without modulo bias (Lemire 2019).
  std::uint64_t uniform_int(std::uint64_t n) {
    __extension__ using uint128 = unsigned __int128;
    uint128 m = static_cast<uint128>(next_u64()) * n;
    std::uint64_t low = static_cast<std::uint64_t>(m);
    if (low < n) [[unlikely]] {
      const std::uint64_t threshold = -n % n;
      while (low < threshold) {
        m = static_cast<uint128>(next_u64()) * n;
        low = static_cast<std::uint64_t>(m);
      }
    }
    return static_cast<std::uint64_t>(m >> 64);
  }
  // Exponential with the given mean (ziggurat method). The common case (97.8 % of draws) inline.
  double exponential(double mean) {
    const std::uint64_t u = next_u64();
    const int i = static_cast<int>(u & 255);
    const double x = static_cast<double>(u >> 11) * 0x1.0p-53 * kExpZiggurat.x[i];
    if (x < kExpZiggurat.x[i + 1]) [[likely]] return mean * x;
    return exponential_rest(mean, i, x);
  }
  // Standard normal (Marsaglia's polar method; the second variate of each pair is dropped so
  // that a draw never depends on an earlier call).
  double normal();
  // Gamma with the given shape > 0 and scale 1 (Marsaglia & Tsang, 2000; shape < 1 through
  // Gamma(shape + 1) * U^(1/shape)).
  double gamma(double shape);

 private:
  double exponential_rest(double mean, int i, double x);
  static constexpr std::uint64_t rotl(std::uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  std::uint64_t s_[4];
};

// FNV-1a (64 bits) of `text`; pass the last result as `h` to continue a hash over several pieces.
constexpr std::uint64_t kFnv1a64Offset = 0xCBF29CE484222325ULL;
std::uint64_t fnv1a64(std::string_view text, std::uint64_t h = kFnv1a64Offset);

}  // namespace moesim::sim
