// Benchmark of EPLB placement: 256 experts x 61 layers onto 2048 GPUs (one slot per GPU, 1792
// redundant), DeepSeek-V3's shape (8 expert groups; 256 nodes of 8 GPUs, so groups do not divide
// over nodes and the global policy applies), loads drawn per layer from a Zipf(1.0) profile over
// a seeded random expert order. Prints the wall time and the worst GPU max/mean load.
//   moesim-bench-place [--layers L] [--gpus G] [--experts E]
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <numeric>
#include <string_view>
#include <vector>

#include "routing/eplb.hpp"
#include "sim/rng.hpp"

using namespace moesim;

int main(int argc, char** argv) {
  int layers = 61, gpus = 2048, experts = 256;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string_view a = argv[i];
    if (a == "--layers") layers = std::atoi(argv[i + 1]);
    else if (a == "--gpus") gpus = std::atoi(argv[i + 1]);
    else if (a == "--experts") experts = std::atoi(argv[i + 1]);
    else {
      fmt::print(stderr, "usage: moesim-bench-place [--layers L] [--gpus G] [--experts E]\n");
      return 2;
    }
  }
  if (layers < 1 || experts < 8 || experts % 8 != 0 || gpus < 1 || gpus % 8 != 0) {
    fmt::print(stderr, "moesim-bench-place: need layers >= 1, experts and gpus multiples of 8\n");
    return 2;
  }
  std::vector<std::vector<double>> loads(static_cast<std::size_t>(layers));
  for (int l = 0; l < layers; ++l) {
    sim::Rng rng(1, fmt::format("bench/place/layer{}", l));
    std::vector<int> rank(static_cast<std::size_t>(experts));
    std::iota(rank.begin(), rank.end(), 1);
    for (int i = experts - 1; i > 0; --i)
      std::swap(rank[static_cast<std::size_t>(i)], rank[rng.uniform_int(static_cast<std::uint64_t>(i + 1))]);
    for (int e = 0; e < experts; ++e) loads[static_cast<std::size_t>(l)].push_back(1e6 / rank[static_cast<std::size_t>(e)]);
  }
  const int physical = (experts + gpus - 1) / gpus * gpus;  // fewest whole slots per GPU
  const auto t0 = std::chrono::steady_clock::now();
  double worst = 0;
  for (const auto& load : loads) {
    const routing::ExpertPlacement p = routing::eplb_placement(load, physical, 8, gpus / 8, gpus);
    std::vector<double> gpu(static_cast<std::size_t>(gpus), 0.0);
    for (int s = 0; s < physical; ++s) {
      const int e = p.physical_to_logical[static_cast<std::size_t>(s)];
      gpu[static_cast<std::size_t>(p.gpu_of_slot(s))] += load[static_cast<std::size_t>(e)] / p.replica_count[static_cast<std::size_t>(e)];
    }
    const double mean = std::accumulate(load.begin(), load.end(), 0.0) / gpus;
    worst = std::max(worst, *std::max_element(gpu.begin(), gpu.end()) / mean);
  }
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  fmt::print("EPLB placement: {} experts x {} layers onto {} GPUs ({} slots): {:.3f} s wall, worst GPU max/mean {:.3f}\n",
             experts, layers, gpus, physical, wall, worst);
  return 0;
}
