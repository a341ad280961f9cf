// Differential check of the max-min network model against SimGrid 3.32 (flow-level, CM02).
//
// Builds one of moesim's fabrics twice, as a moesim Cluster and as a SimGrid platform with the
// same directed links (bandwidth, latency) and the same routes, starts the same random flows in
// both, and compares every flow's completion time. SimGrid is configured for pure max-min:
// CM02, TCP-gamma 0, cross-traffic 0, optim Full (its default Lazy mode does not give max-min
// shares), precision 1e-12. CM02 divides a link in inverse proportion to the flows' path
// latencies, so every fabric here gives the flows that can share a link equal path latencies
// (scale-out link latency 0; inter-node flows pay 2 x PCIe latency, intra-node 2 x NVLink or,
// on mesh nodes, one link of their own, which no inter-node flow crosses).
// SimGrid's engine is one per process: one run per invocation.
//   moesim-simgrid-check --fabric node|leaf|spine|mesh|bench256 [--seed S] [--flows N]
// Exit 0 when every flow agrees within --tolerance (default 1e-9, relative to its duration).
#include <fmt/format.h>
#include <simgrid/s4u.hpp>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "models/maxmin_network.hpp"
#include "sim/rng.hpp"
#include "sim/simulator.hpp"
#include "sim/units.hpp"
#include "topology/cluster.hpp"

namespace sg4 = simgrid::s4u;
using namespace moesim;

namespace {

struct FlowSpec {
  int src, dst;
  std::int64_t bytes;
  std::int64_t start_ps;
};

topology::ClusterSpec fabric(const std::string& name) {
  topology::ClusterSpec s;
  s.gpu = *topology::find_gpu_preset("H100");
  s.node = {sim::parse_bandwidth("450GB/s"), sim::parse_time("1us"), sim::parse_bandwidth("64GB/s"),
            sim::parse_time("0.5us")};
  if (name == "node") {
    s.nodes = 1;
    s.gpus_per_node = 8;
  } else if (name == "leaf") {  // 4 nodes on one leaf switch
    s.nodes = 4;
    s.gpus_per_node = 4;
    s.scale_out = {true, sim::parse_bandwidth("50GB/s"), sim::Time::zero(), 4, 1.0};
  } else if (name == "spine") {  // 8 nodes, 2 per leaf, 4 leaves, 2:1 oversubscribed uplinks
    s.nodes = 8;
    s.gpus_per_node = 4;
    s.scale_out = {true, sim::parse_bandwidth("25GB/s"), sim::Time::zero(), 2, 2.0};
  } else if (name == "mesh") {  // 4 mesh nodes of 4 GPUs (a link per pair, no switch) on one leaf
    s.nodes = 4;
    s.gpus_per_node = 4;
    s.node.fabric = topology::NodeFabric::mesh;
    s.node.link_bandwidth = sim::parse_bandwidth("64GB/s");
    s.node.link_latency = sim::parse_time("1us");
    s.scale_out = {true, sim::parse_bandwidth("50GB/s"), sim::Time::zero(), 4, 1.0};
  } else if (name == "bench256") {
    // The flows benchmark's fabric (moesim-bench-flows) with its 3 us NIC and uplink latency
    // moved onto the PCIe links, so that every inter-node flow has the same path latency (6 us)
    // and CM02's latency weighting does not enter.
    s.nodes = 32;
    s.gpus_per_node = 8;
    s.node.pcie_latency = sim::parse_time("3us");
    s.scale_out = {true, sim::parse_bandwidth("50GB/s"), sim::Time::zero(), 4, 2.0};
  } else {
    fmt::print(stderr, "unknown fabric '{}' (node, leaf, spine, mesh, bench256)\n", name);
    std::exit(2);
  }
  return s;
}

std::vector<FlowSpec> random_flows(int gpus, int n, std::uint64_t seed) {
  sim::Rng rng(seed, "simgrid-check/flows");
  std::vector<FlowSpec> flows;
  for (int i = 0; i < n; ++i) {
    const int src = static_cast<int>(rng.uniform_int(static_cast<std::uint64_t>(gpus)));
    int dst = static_cast<int>(rng.uniform_int(static_cast<std::uint64_t>(gpus - 1)));
    if (dst >= src) ++dst;
    const std::int64_t bytes = rng.uniform_int(10) == 0 ? 0 : 1 + static_cast<std::int64_t>(rng.uniform_int(8u << 20));
    const std::int64_t start = rng.uniform_int(3) == 0 ? 0 : static_cast<std::int64_t>(rng.uniform_int(200'000'000));
    flows.push_back({src, dst, bytes, start});
  }
  return flows;
}

std::vector<FlowSpec> all_to_all(int gpus) {
  sim::Rng rng(1, "bench/flows");
  std::vector<FlowSpec> flows;
  for (int s = 0; s < gpus; ++s)
    for (int d = 0; d < gpus; ++d)
      if (s != d) flows.push_back({s, d, 256 * 1024 * static_cast<std::int64_t>(1 + rng.uniform_int(4)), 0});
  return flows;
}

std::vector<double> run_moesim(const topology::Cluster& cluster, const std::vector<FlowSpec>& flows) {
  sim::Simulator simulator;
  models::MaxMinNetwork net(simulator, cluster);
  std::vector<double> end(flows.size(), -1);
  for (std::size_t i = 0; i < flows.size(); ++i) {
    const FlowSpec f = flows[i];
    simulator.schedule_at(sim::Time::ps(f.start_ps), [&, i, f] {
      net.start_flow({topology::GpuId(static_cast<std::uint32_t>(f.src)),
                      topology::GpuId(static_cast<std::uint32_t>(f.dst)), sim::Bytes(f.bytes)},
                     [&, i] { end[i] = net.last_completion_s(); });
    });
  }
  simulator.run();
  return end;
}

std::vector<double> run_simgrid(int argc, char** argv, const topology::Cluster& cluster,
                                const std::vector<FlowSpec>& flows) {
  sg4::Engine e(&argc, argv);
  for (const char* cfg : {"network/model:CM02", "network/TCP-gamma:0", "network/crosstraffic:0",
                          "network/optim:Full", "surf/precision:1e-12",
                          "contexts/guard-size:0", "contexts/stack-size:64"})
    e.set_config(cfg);
  auto* zone = sg4::create_full_zone("fabric");
  std::vector<sg4::Host*> hosts;
  for (int g = 0; g < cluster.gpu_count(); ++g) hosts.push_back(zone->create_host(fmt::format("gpu{}", g), 1e9));
  std::vector<sg4::Link*> links;
  for (std::size_t i = 0; i < cluster.links().size(); ++i) {
    const auto& l = cluster.links()[i];
    auto* link = zone->create_link(fmt::format("link{}", i), static_cast<double>(l.bandwidth.bytes_per_s()));
    link->set_latency(static_cast<double>(l.latency.count_ps()) * 1e-12);
    links.push_back(link->seal());
  }
  for (int s = 0; s < cluster.gpu_count(); ++s)
    for (int d = 0; d < cluster.gpu_count(); ++d) {
      if (s == d) continue;
      std::vector<sg4::LinkInRoute> route;
      for (const auto l : cluster.path(topology::GpuId(static_cast<std::uint32_t>(s)),
                                       topology::GpuId(static_cast<std::uint32_t>(d)))
                              .links)
        route.emplace_back(links[l.index()]);
      zone->add_route(hosts[static_cast<std::size_t>(s)]->get_netpoint(),
                      hosts[static_cast<std::size_t>(d)]->get_netpoint(), nullptr, nullptr, route, false);
    }
  zone->seal();

  std::vector<double> end(flows.size(), -1);
  static int token = 0;
  for (std::size_t i = 0; i < flows.size(); ++i) {
    const FlowSpec f = flows[i];
    const std::string box = fmt::format("flow{}", i);
    sg4::Actor::create(fmt::format("recv{}", i), hosts[static_cast<std::size_t>(f.dst)], [box, &end, i] {
      sg4::Mailbox::by_name(box)->get<int>();
      end[i] = sg4::Engine::get_clock();
    });
    sg4::Actor::create(fmt::format("send{}", i), hosts[static_cast<std::size_t>(f.src)], [box, f] {
      if (f.start_ps > 0) sg4::this_actor::sleep_until(static_cast<double>(f.start_ps) * 1e-12);
      sg4::Mailbox::by_name(box)->put(&token, static_cast<std::uint64_t>(f.bytes));
    });
  }
  e.run();
  return end;
}

}  // namespace

int main(int argc, char** argv) {
  std::string name = "node";
  std::uint64_t seed = 1;
  int n = 200;
  double tolerance = 1e-9;
  std::vector<char*> sg_args{argv[0]};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--fabric" && i + 1 < argc) name = argv[++i];
    else if (a == "--seed" && i + 1 < argc) seed = std::strtoull(argv[++i], nullptr, 10);
    else if (a == "--flows" && i + 1 < argc) n = std::atoi(argv[++i]);
    else if (a == "--tolerance" && i + 1 < argc) tolerance = std::atof(argv[++i]);
    else sg_args.push_back(argv[i]);  // SimGrid's own --cfg=/--log= options
  }
  std::string quiet = "--log=root.thres:critical";
  sg_args.push_back(quiet.data());
  const topology::Cluster cluster(fabric(name));
  const auto flows = name == "bench256" ? all_to_all(cluster.gpu_count()) : random_flows(cluster.gpu_count(), n, seed);

  auto t0 = std::chrono::steady_clock::now();
  const auto ours = run_moesim(cluster, flows);
  const double ours_wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  t0 = std::chrono::steady_clock::now();
  int sg_argc = static_cast<int>(sg_args.size());
  const auto theirs = run_simgrid(sg_argc, sg_args.data(), cluster, flows);
  const double sg_wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  double worst = 0;
  std::size_t worst_i = 0;
  for (std::size_t i = 0; i < flows.size(); ++i) {
    const double start = static_cast<double>(flows[i].start_ps) * 1e-12;
    const double rel = std::abs(ours[i] - theirs[i]) / std::max(theirs[i] - start, 1e-15);
    if (!(rel <= worst)) {
      worst = rel;
      worst_i = i;
    }
  }
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  fmt::print("fabric {} ({} GPUs), seed {}, {} flows: moesim {:.3f} s, SimGrid {:.3f} s wall; process peak {:.0f} MiB\n",
             name, cluster.gpu_count(), seed, flows.size(), ours_wall, sg_wall, static_cast<double>(ru.ru_maxrss) / 1024.0);
  const auto& w = flows[worst_i];
  fmt::print("largest relative difference {:.3g} (flow {}: {}->{} {} B at {} ps: moesim {:.12g} s, SimGrid {:.12g} s)\n",
             worst, worst_i, w.src, w.dst, w.bytes, w.start_ps, ours[worst_i], theirs[worst_i]);
  return worst <= tolerance ? 0 : 1;
}
