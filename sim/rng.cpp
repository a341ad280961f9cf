#include "sim/rng.hpp"

#include <cmath>

#include "sim/time.hpp"

namespace moesim::sim {

// Ziggurat tables for the standard exponential density f(x) = exp(-x) (Marsaglia & Tsang, 2000,
// "The Ziggurat Method for Generating Random Variables", 256 layers of equal area v, rightmost
// edge r). Edge x[i] is the right end of layer i: x[0] = v / f(r) is the base layer's virtual
// width (its part beyond r stands for the tail), x[1] = r, x[i+1] = f^-1(v / x[i] + f(x[i])),
// x[256] = 0. Computed once, in double precision, by the same recurrence on every machine.
ExpZiggurat::ExpZiggurat() {
  x[0] = v / std::exp(-r);
  x[1] = r;
  for (int i = 1; i < 255; ++i) x[i + 1] = -std::log(v / x[i] + std::exp(-x[i]));
  x[256] = 0.0;
  for (int i = 0; i <= 256; ++i) f[i] = std::exp(-x[i]);
}

const ExpZiggurat kExpZiggurat;

namespace {

std::uint64_t splitmix64(std::uint64_t& x) {
  std::uint64_t z = (x += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

}  // namespace

std::uint64_t fnv1a64(std::string_view text, std::uint64_t h) {
  for (unsigned char c : text) {
    h ^= c;
    h *= 0x100000001B3ULL;
  }
  return h;
}

Rng::Rng(std::uint64_t seed, std::string_view stream_name) {
  std::uint64_t x = seed;
  const std::uint64_t mixed = splitmix64(x) ^ fnv1a64(stream_name);
  x = mixed;
  for (auto& s : s_) s = splitmix64(x);
}


double Rng::exponential_rest(double mean, int i, double x) {
  // Layer i from the low 8 bits, a 53-bit position from the high bits of the same draw (no
  // bits shared, unlike the original's 32-bit version). A point left of the next layer's edge
  // lies under the curve and is taken at once (97.8 % of draws, inline in the header);
  // otherwise the base layer means the tail (r plus a fresh exponential, by memorylessness)
  // and the others test the wedge between the curve and the layer's top.
  const ExpZiggurat& z = kExpZiggurat;
  for (;;) {
    if (x < z.x[i + 1]) return mean * x;
    if (i == 0) return mean * (ExpZiggurat::r - std::log1p(-uniform01()));
    if (z.f[i] + uniform01() * (z.f[i + 1] - z.f[i]) < std::exp(-x)) return mean * x;
    const std::uint64_t u = next_u64();
    i = static_cast<int>(u & 255);
    x = static_cast<double>(u >> 11) * 0x1.0p-53 * z.x[i];
  }
}

double Rng::normal() {
  for (;;) {
    const double u = 2 * uniform01() - 1, v = 2 * uniform01() - 1;
    const double s = u * u + v * v;
    if (s > 0 && s < 1) return u * std::sqrt(-2 * std::log(s) / s);
  }
}

double Rng::gamma(double shape) {
  if (shape < 1) {
    const double u = uniform01();
    return gamma(shape + 1) * std::pow(u > 0 ? u : 0x1.0p-53, 1 / shape);
  }
  const double d = shape - 1.0 / 3, c = 1 / std::sqrt(9 * d);
  for (;;) {
    double x, v;
    do {
      x = normal();
      v = 1 + c * x;
    } while (v <= 0);
    v = v * v * v;
    const double u = uniform01();
    if (u < 1 - 0.0331 * x * x * x * x) return d * v;
    if (u > 0 && std::log(u) < 0.5 * x * x + d * (1 - v + std::log(v))) return d * v;
  }
}

}  // namespace moesim::sim
