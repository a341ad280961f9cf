#include "topology/cluster.hpp"

#include <boost/graph/adjacency_list.hpp>
#include <boost/graph/breadth_first_search.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "sim/assert.hpp"

namespace moesim::topology {

namespace {

// SplitMix64's finaliser: the ECMP hash of a (source GPU, destination GPU) pair.
std::uint64_t mix(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

}  // namespace

DeviceId Cluster::add_device(DeviceKind kind, int index, int plane) {
  devices_.push_back(Device{kind, index, plane});
  return DeviceId(static_cast<std::uint32_t>(devices_.size() - 1));
}

Cluster::Duplex Cluster::add_duplex(DeviceId a, DeviceId b, LinkKind kind, sim::Bandwidth bw, sim::Time lat) {
  MOESIM_ASSERT(!bw.is_zero(), "zero-capacity link");
  links_.push_back(Link{a, b, kind, bw, lat});
  links_.push_back(Link{b, a, kind, bw, lat});
  return Duplex{LinkId(static_cast<std::uint32_t>(links_.size() - 2)),
                LinkId(static_cast<std::uint32_t>(links_.size() - 1))};
}

Cluster::Cluster(const ClusterSpec& spec) : spec_(spec) {
  MOESIM_ASSERT(spec.nodes >= 1 && spec.gpus_per_node >= 1, "cluster without GPUs");
  MOESIM_ASSERT(spec.nodes == 1 || spec.scale_out.present, "several nodes need a scale-out fabric");
  const int gpus = gpu_count();
  // GPUs first, so DeviceId(g) == GpuId(g).
  for (int g = 0; g < gpus; ++g) add_device(DeviceKind::gpu, g);
  const int gpn = spec.gpus_per_node;
  if (mesh()) {
    // One duplex link per pair of a node's GPUs.
    mesh_.assign(static_cast<std::size_t>(gpus) * static_cast<std::size_t>(gpn), LinkId());
    for (int n = 0; n < spec.nodes; ++n)
      for (int i = 0; i < gpn; ++i)
        for (int j = i + 1; j < gpn; ++j) {
          const int a = n * gpn + i, b = n * gpn + j;
          const Duplex d = add_duplex(DeviceId(static_cast<std::uint32_t>(a)), DeviceId(static_cast<std::uint32_t>(b)),
                                      LinkKind::mesh, spec.node.link_bandwidth, spec.node.link_latency);
          mesh_[static_cast<std::size_t>(a * gpn + j)] = d.up;
          mesh_[static_cast<std::size_t>(b * gpn + i)] = d.down;
        }
  } else {
    for (int n = 0; n < spec.nodes; ++n) {
      const DeviceId sw = add_device(DeviceKind::nvswitch, n);
      for (int i = 0; i < gpn; ++i)
        nvlink_.push_back(add_duplex(DeviceId(static_cast<std::uint32_t>(n * gpn + i)), sw, LinkKind::nvlink,
                                     spec.node.nvlink_bandwidth, spec.node.nvlink_latency));
    }
  }
  if (spec.scale_out.present) build_scale_out();
  check_connected();
}

Cluster::~Cluster() = default;

int Cluster::leaf_of(int g) const {
  const auto& so = spec_.scale_out;
  const int node = g / spec_.gpus_per_node;
  const int idx = g % spec_.gpus_per_node;
  switch (so.topology) {
    case ScaleOutTopology::single_switch: return 0;
    case ScaleOutTopology::two_tier: return node / so.nodes_per_leaf;
    case ScaleOutTopology::rail: return (node / so.nodes_per_leaf) * spec_.gpus_per_node + idx;
    case ScaleOutTopology::multi_plane: return idx * (spec_.nodes / so.nodes_per_leaf) + node / so.nodes_per_leaf;
  }
  return 0;
}

void Cluster::build_scale_out() {
  const auto& so = spec_.scale_out;
  const int gpus = gpu_count();
  MOESIM_ASSERT(so.nodes_per_leaf >= 1 && spec_.nodes % so.nodes_per_leaf == 0, "nodes do not divide into leaves");
  MOESIM_ASSERT(so.oversubscription >= 1.0, "oversubscription below 1");
  MOESIM_ASSERT(so.spines >= 1, "no spine");
  MOESIM_ASSERT(so.nic_speed.empty() || static_cast<int>(so.nic_speed.size()) == gpus, "a NIC speed per GPU");
  const int pods = spec_.nodes / so.nodes_per_leaf;
  int fabrics = 1;         // independent leaf/spine fabrics (planes)
  int leaves_per_fabric = pods;
  int nics_per_leaf = so.nodes_per_leaf * spec_.gpus_per_node;
  switch (so.topology) {
    case ScaleOutTopology::single_switch:
      leaves_per_fabric = 1;
      nics_per_leaf = gpus;
      break;
    case ScaleOutTopology::two_tier: break;
    case ScaleOutTopology::rail:
      leaves_per_fabric = pods * spec_.gpus_per_node;
      nics_per_leaf = so.nodes_per_leaf;
      break;
    case ScaleOutTopology::multi_plane:
      fabrics = spec_.gpus_per_node;
      nics_per_leaf = so.nodes_per_leaf;
      break;
  }
  for (int f = 0; f < fabrics; ++f)
    for (int l = 0; l < leaves_per_fabric; ++l)
      leaf_ids_.push_back(add_device(DeviceKind::leaf, l, fabrics > 1 ? f : -1));
  for (int g = 0; g < gpus; ++g) {
    const DeviceId nic = add_device(DeviceKind::nic, g);
    pcie_.push_back(add_duplex(DeviceId(static_cast<std::uint32_t>(g)), nic, LinkKind::pcie,
                               spec_.node.pcie_bandwidth, spec_.node.pcie_latency));
    const double speed = so.nic_speed.empty() ? 1.0 : so.nic_speed[static_cast<std::size_t>(g)];
    // At least a byte a second, however small the share (a link of no capacity is no link).
    const sim::Bandwidth bw = speed == 1.0 ? so.nic_bandwidth
                                           : sim::Bandwidth(std::max<std::int64_t>(
                                                 1, std::llround(static_cast<double>(so.nic_bandwidth.bytes_per_s()) * speed)));
    nic_.push_back(add_duplex(nic, leaf_ids_[static_cast<std::size_t>(leaf_of(g))], LinkKind::nic, bw, so.link_latency));
  }
  uplink_.assign(leaf_ids_.size(), {});
  if (leaves_per_fabric > 1) {
    // Each leaf's uplink capacity, its NICs' total over the oversubscription, split evenly over
    // the spines (rounded to the byte per second).
    const sim::Bandwidth uplink(static_cast<std::int64_t>(
        std::llround(static_cast<double>(so.nic_bandwidth.bytes_per_s()) * nics_per_leaf /
                     (so.oversubscription * so.spines))));
    for (int f = 0; f < fabrics; ++f) {
      std::vector<DeviceId> spines;
      for (int s = 0; s < so.spines; ++s) spines.push_back(add_device(DeviceKind::spine, s, fabrics > 1 ? f : -1));
      for (int l = 0; l < leaves_per_fabric; ++l) {
        const std::size_t leaf = static_cast<std::size_t>(f * leaves_per_fabric + l);
        for (const DeviceId sp : spines)
          uplink_[leaf].push_back(add_duplex(leaf_ids_[leaf], sp, LinkKind::uplink, uplink, so.link_latency));
      }
    }
  }
}

void Cluster::check_connected() const {
  // Every device must be reachable from GPU 0 (the builders guarantee it; this guards them).
  using G = boost::adjacency_list<boost::vecS, boost::vecS, boost::directedS>;
  G g(devices_.size());
  for (const auto& l : links_) boost::add_edge(l.src.value, l.dst.value, g);
  std::vector<boost::default_color_type> color(devices_.size());
  boost::breadth_first_search(
      g, boost::vertex(0, g),
      boost::color_map(boost::make_iterator_property_map(color.begin(), boost::get(boost::vertex_index, g))));
  for (std::size_t v = 0; v < devices_.size(); ++v)
    MOESIM_ASSERT(color[v] != boost::white_color, "the fabric is not connected: " + device_name(DeviceId(static_cast<std::uint32_t>(v))) + " is unreachable");
}

int Cluster::ecmp_spine(GpuId src, GpuId dst) const {
  const int spines = spec_.scale_out.spines;
  if (spines <= 1) return 0;
  return static_cast<int>(mix((static_cast<std::uint64_t>(src.value) << 32) | dst.value) %
                          static_cast<std::uint64_t>(spines));
}

void Cluster::append_network(std::vector<LinkId>& links, int from, int to, GpuId src, GpuId dst) const {
  const auto a = static_cast<std::size_t>(leaf_of(from));
  const auto b = static_cast<std::size_t>(leaf_of(to));
  links.push_back(nic_[static_cast<std::size_t>(from)].up);
  if (a != b) {
    MOESIM_ASSERT(!uplink_[a].empty() && uplink_[a].size() == uplink_[b].size(), "leaves in different fabrics");
    const auto s = static_cast<std::size_t>(ecmp_spine(src, dst));
    links.push_back(uplink_[a][s].up);
    links.push_back(uplink_[b][s].down);
  }
  links.push_back(nic_[static_cast<std::size_t>(to)].down);
}

void Cluster::append_local(std::vector<LinkId>& links, int from, int to) const {
  if (mesh()) {
    links.push_back(mesh_[static_cast<std::size_t>(from * spec_.gpus_per_node + to % spec_.gpus_per_node)]);
  } else {
    links.push_back(nvlink_[static_cast<std::size_t>(from)].up);
    links.push_back(nvlink_[static_cast<std::size_t>(to)].down);
  }
}

Path Cluster::switch_leg(GpuId gpu, bool up) const {
  MOESIM_ASSERT(!mesh(), "a switch leg in a node without a switch");
  MOESIM_ASSERT(static_cast<int>(gpu.value) < gpu_count(), "a switch leg of an unknown GPU");
  const Duplex& d = nvlink_[gpu.index()];
  const LinkId l = up ? d.up : d.down;
  return Path{{l}, links_[l.index()].latency, links_[l.index()].bandwidth};
}

Path Cluster::path(GpuId src, GpuId dst) const {
  MOESIM_ASSERT(src != dst, "path from a GPU to itself");
  const int gpus = gpu_count();
  const int s = static_cast<int>(src.value), d = static_cast<int>(dst.value);
  MOESIM_ASSERT(s < gpus && d < gpus, "path to an unknown GPU");
  const int gpn = spec_.gpus_per_node;
  Path p;
  if (s / gpn == d / gpn) {
    append_local(p.links, s, d);
  } else {
    p.links.push_back(pcie_[static_cast<std::size_t>(s)].up);
    if (spec_.scale_out.topology == ScaleOutTopology::multi_plane && s % gpn != d % gpn) {
      // Across planes: through the sender's plane to the receiving node's GPU of the sender's
      // index, which forwards over NVLink (its mesh link).
      const int relay = (d / gpn) * gpn + s % gpn;
      append_network(p.links, s, relay, src, dst);
      p.links.push_back(pcie_[static_cast<std::size_t>(relay)].down);
      append_local(p.links, relay, d);
    } else {
      append_network(p.links, s, d, src, dst);
      p.links.push_back(pcie_[static_cast<std::size_t>(d)].down);
    }
  }
  p.bottleneck = sim::Bandwidth(std::numeric_limits<std::int64_t>::max());
  for (const LinkId l : p.links) {
    p.latency += links_[l.index()].latency;
    if (links_[l.index()].bandwidth < p.bottleneck) p.bottleneck = links_[l.index()].bandwidth;
  }
  return p;
}

std::string Cluster::device_name(DeviceId d) const {
  const Device& dev = devices_[d.index()];
  if (dev.plane >= 0) return fmt::format("{}{}.{}", to_string(dev.kind), dev.plane, dev.index);
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
    case LinkKind::mesh: return "mesh";
  }
  return "?";
}

}  // namespace moesim::topology
