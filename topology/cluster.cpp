#include "topology/cluster.hpp"

#include <boost/graph/adjacency_list.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <deque>
#include <limits>

#include "sim/assert.hpp"

namespace moesim::topology {

struct Cluster::Graph {
  // Out-edges keep insertion order (vecS), which makes the search, and so every path, deterministic.
  using G = boost::adjacency_list<boost::vecS, boost::vecS, boost::directedS, boost::no_property,
                                  boost::property<boost::edge_index_t, std::uint32_t>>;
  explicit Graph(std::size_t vertices) : g(vertices) {}
  G g;
  // pred[src gpu][vertex] = link that first reached the vertex from src (or none).
  mutable std::vector<std::vector<std::uint32_t>> pred;
};

namespace {
constexpr std::uint32_t kNone = std::numeric_limits<std::uint32_t>::max();
}

Cluster::Cluster(const ClusterSpec& spec) : spec_(spec) {
  MOESIM_ASSERT(spec.nodes >= 1 && spec.gpus_per_node >= 1, "cluster without GPUs");
  MOESIM_ASSERT(spec.nodes == 1 || spec.scale_out.present, "several nodes need a scale-out fabric");
  const int gpus = gpu_count();
  auto add_device = [&](DeviceKind kind, int index) {
    devices_.push_back(Device{kind, index});
    return DeviceId(static_cast<std::uint32_t>(devices_.size() - 1));
  };
  auto add_duplex = [&](DeviceId a, DeviceId b, LinkKind kind, sim::Bandwidth bw, sim::Time lat) {
    MOESIM_ASSERT(!bw.is_zero(), "zero-capacity link");
    links_.push_back(Link{a, b, kind, bw, lat});
    links_.push_back(Link{b, a, kind, bw, lat});
  };

  // GPUs first, so DeviceId(g) == GpuId(g).
  for (int g = 0; g < gpus; ++g) add_device(DeviceKind::gpu, g);
  for (int n = 0; n < spec.nodes; ++n) {
    const DeviceId sw = add_device(DeviceKind::nvswitch, n);
    for (int i = 0; i < spec.gpus_per_node; ++i)
      add_duplex(DeviceId(static_cast<std::uint32_t>(n * spec.gpus_per_node + i)), sw,
                 LinkKind::nvlink, spec.node.nvlink_bandwidth, spec.node.nvlink_latency);
  }
  if (spec.scale_out.present) {
    const auto& so = spec.scale_out;
    MOESIM_ASSERT(so.nodes_per_leaf >= 1 && spec.nodes % so.nodes_per_leaf == 0,
                  "nodes do not divide into leaves");
    const int leaves = spec.nodes / so.nodes_per_leaf;
    std::vector<DeviceId> leaf_ids;
    for (int l = 0; l < leaves; ++l) leaf_ids.push_back(add_device(DeviceKind::leaf, l));
    for (int g = 0; g < gpus; ++g) {
      const DeviceId nic = add_device(DeviceKind::nic, g);
      add_duplex(DeviceId(static_cast<std::uint32_t>(g)), nic, LinkKind::pcie,
                 spec.node.pcie_bandwidth, spec.node.pcie_latency);
      const int leaf = g / spec.gpus_per_node / so.nodes_per_leaf;
      add_duplex(nic, leaf_ids[leaf], LinkKind::nic, so.nic_bandwidth, so.link_latency);
    }
    if (leaves > 1) {
      const DeviceId spine = add_device(DeviceKind::spine, 0);
      MOESIM_ASSERT(so.oversubscription >= 1.0, "oversubscription below 1");
      const sim::Bandwidth uplink(static_cast<std::int64_t>(
          std::llround(static_cast<double>(so.nic_bandwidth.bytes_per_s()) * so.nodes_per_leaf *
                       spec.gpus_per_node / so.oversubscription)));
      for (const DeviceId leaf : leaf_ids) add_duplex(leaf, spine, LinkKind::uplink, uplink, so.link_latency);
    }
  }

  graph_ = std::make_unique<Graph>(devices_.size());
  for (std::uint32_t i = 0; i < links_.size(); ++i)
    boost::add_edge(links_[i].src.value, links_[i].dst.value, i, graph_->g);
  graph_->pred.resize(static_cast<std::size_t>(gpus));
}

Cluster::~Cluster() = default;

Path Cluster::path(GpuId src, GpuId dst) const {
  MOESIM_ASSERT(src != dst, "path from a GPU to itself");
  MOESIM_ASSERT(src.index() < graph_->pred.size() && dst.index() < graph_->pred.size(),
                "path to an unknown GPU");
  auto& pred = graph_->pred[src.index()];
  if (pred.empty()) {
    // Breadth-first search from src; GPUs other than src are endpoints and never expanded.
    pred.assign(devices_.size(), kNone);
    std::vector<bool> seen(devices_.size(), false);
    std::deque<std::uint32_t> queue{src.value};
    seen[src.value] = true;
    const auto edge_index = boost::get(boost::edge_index, graph_->g);
    while (!queue.empty()) {
      const std::uint32_t v = queue.front();
      queue.pop_front();
      if (v != src.value && devices_[v].kind == DeviceKind::gpu) continue;
      for (auto [e, end] = boost::out_edges(v, graph_->g); e != end; ++e) {
        const auto w = static_cast<std::uint32_t>(boost::target(*e, graph_->g));
        if (seen[w]) continue;
        seen[w] = true;
        pred[w] = edge_index[*e];
        queue.push_back(w);
      }
    }
  }
  Path p;
  p.bottleneck = sim::Bandwidth(std::numeric_limits<std::int64_t>::max());
  for (std::uint32_t v = dst.value; v != src.value;) {
    const std::uint32_t l = pred[v];
    MOESIM_ASSERT(l != kNone, "GPUs not connected");
    p.links.push_back(LinkId(l));
    p.latency += links_[l].latency;
    if (links_[l].bandwidth < p.bottleneck) p.bottleneck = links_[l].bandwidth;
    v = links_[l].src.value;
  }
  std::reverse(p.links.begin(), p.links.end());
  return p;
}

std::string Cluster::device_name(DeviceId d) const {
  const Device& dev = devices_[d.index()];
  return fmt::format("{}{}", to_string(dev.kind), dev.index);
}

std::string_view to_string(DeviceKind k) {
  switch (k) {
    case DeviceKind::gpu: return "gpu";
    case DeviceKind::nvswitch: return "nvswitch";
    case DeviceKind::nic: return "nic";
    case DeviceKind::leaf: return "leaf";
    case DeviceKind::spine: return "spine";
  }
  return "?";
}

std::string_view to_string(LinkKind k) {
  switch (k) {
    case LinkKind::nvlink: return "nvlink";
    case LinkKind::pcie: return "pcie";
    case LinkKind::nic: return "nic";
    case LinkKind::uplink: return "uplink";
  }
  return "?";
}

}  // namespace moesim::topology
