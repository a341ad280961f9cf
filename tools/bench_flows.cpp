// Benchmark of the max-min network model: one all-to-all on a two-tier fat-tree.
// Default case: 32 nodes x 8 GPUs, NVLink 450 GB/s and 1 us per GPU port, one 50 GB/s NIC per
// GPU with 3 us per NIC-leaf and leaf-spine link (PCIe 64 GB/s, 0 us), 4 nodes per leaf, 2:1
// oversubscribed leaf uplinks; every ordered GPU pair sends one flow of 256, 512, 768 or
// 1024 KiB (uniform, seeded), all starting at 0. Prints wall time, flows/s, re-solves, the
// last completion and peak memory.
//   moesim-bench-flows [--nodes N] [--resolve-interval T] [--csv FILE]
// (--resolve-interval: the max-min model's network.resolve_interval, e.g. 100ns; --csv: per-flow
// src,dst,bytes,end_us)
#include <fmt/format.h>
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "models/maxmin_network.hpp"
#include "sim/rng.hpp"
#include "sim/simulator.hpp"
#include "sim/units.hpp"
#include "topology/cluster.hpp"

using namespace moesim;

int main(int argc, char** argv) {
  int nodes = 32;
  std::string csv;
  sim::Time interval = sim::Time::zero();
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string_view a = argv[i];
    if (a == "--nodes") nodes = std::atoi(argv[i + 1]);
    else if (a == "--csv") csv = argv[i + 1];
    else if (a == "--resolve-interval") interval = sim::parse_time(argv[i + 1]);
    else {
      fmt::print(stderr, "usage: moesim-bench-flows [--nodes N] [--resolve-interval T] [--csv FILE]\n");
      return 2;
    }
  }
  if (nodes < 4 || nodes % 4 != 0) {
    fmt::print(stderr, "moesim-bench-flows: --nodes must be a positive multiple of 4\n");
    return 2;
  }
  topology::ClusterSpec spec;
  spec.nodes = nodes;
  spec.gpus_per_node = 8;
  spec.gpu = *topology::find_gpu_preset("H100");
  spec.node = {sim::parse_bandwidth("450GB/s"), sim::parse_time("1us"), sim::parse_bandwidth("64GB/s"),
               sim::parse_time("0us")};
  spec.scale_out = {true, sim::parse_bandwidth("50GB/s"), sim::parse_time("3us"), 4, 2.0};
  const auto t0 = std::chrono::steady_clock::now();
  const topology::Cluster cluster(spec);
  sim::Simulator simulator;
  models::MaxMinNetwork net(simulator, cluster, interval);
  sim::Rng rng(1, "bench/flows");
  const int gpus = cluster.gpu_count();
  struct Rec {
    int src, dst;
    std::int64_t bytes;
    double end_s = -1;
  };
  std::vector<Rec> recs;
  recs.reserve(static_cast<std::size_t>(gpus) * static_cast<std::size_t>(gpus - 1));
  for (int s = 0; s < gpus; ++s)
    for (int d = 0; d < gpus; ++d) {
      if (s == d) continue;
      const std::int64_t kib = 256 * static_cast<std::int64_t>(1 + rng.uniform_int(4));
      recs.push_back({s, d, kib * 1024});
    }
  for (std::size_t i = 0; i < recs.size(); ++i) {
    const auto& r = recs[i];
    net.start_flow({topology::GpuId(static_cast<std::uint32_t>(r.src)), topology::GpuId(static_cast<std::uint32_t>(r.dst)),
                    sim::Bytes(r.bytes)},
                   [&recs, &net, i] { recs[i].end_s = net.last_completion_s(); });
  }
  simulator.run();
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  double last = 0;
  for (const auto& r : recs) last = std::max(last, r.end_s);
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  fmt::print("all-to-all on {} GPUs ({} nodes x 8, fat-tree 4 nodes/leaf, 2:1): {} flows\n", gpus, nodes,
             recs.size());
  fmt::print("wall {:.3f} s, {:.0f} flows/s, {} re-solves, last flow ends at {:.6f} us, peak RSS {:.0f} MiB\n",
             wall, static_cast<double>(recs.size()) / wall, net.solves(), last * 1e6,
             static_cast<double>(ru.ru_maxrss) / 1024.0);
  if (!csv.empty()) {
    std::FILE* f = std::fopen(csv.c_str(), "w");
    if (f == nullptr) {
      fmt::print(stderr, "moesim-bench-flows: cannot write {}\n", csv);
      return 1;
    }
    fmt::print(f, "src,dst,bytes,end_us\n");
    for (const auto& r : recs) fmt::print(f, "{},{},{},{:.9f}\n", r.src, r.dst, r.bytes, r.end_s * 1e6);
    std::fclose(f);
  }
  return 0;
}
