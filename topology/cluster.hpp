// The cluster graph: GPUs, NVSwitches, NICs, leaf and spine switches, and directed links.
//
// Built from a ClusterSpec by one of two builders:
// - single node (nodes == 1, no scale-out): every GPU has one NVLink port to the node's NVSwitch;
// - two-tier: each node as above, plus one NIC per GPU behind a PCIe link, every NIC on the leaf
//   switch of its node's group of `nodes_per_leaf` nodes, and one non-blocking spine joining the
//   leaves when there is more than one (leaf uplink = nodes_per_leaf x gpus_per_node x NIC rate).
// Links are full duplex: each direction is its own Link with its own capacity. A path between
// two GPUs is the fewest-hop route (same node: NVLink via the NVSwitch; other nodes: PCIe, NIC,
// leaf[, spine, leaf], NIC, PCIe); GPUs never forward traffic. Path latency is the sum of its
// links' latencies, its bottleneck the smallest link bandwidth. docs/topology.md lists every hop.
// The graph is a Boost.Graph adjacency_list, kept out of this header.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "sim/ids.hpp"
#include "sim/time.hpp"
#include "topology/gpu_spec.hpp"

namespace moesim::topology {

using GpuId = sim::Id<struct GpuTag>;
using DeviceId = sim::Id<struct DeviceTag>;
using LinkId = sim::Id<struct LinkTag>;

struct NodeFabricSpec {
  sim::Bandwidth nvlink_bandwidth;  // per GPU port, per direction
  sim::Time nvlink_latency;         // per link (GPU->NVSwitch, NVSwitch->GPU)
  sim::Bandwidth pcie_bandwidth;    // GPU <-> NIC, per direction
  sim::Time pcie_latency;
};

struct ScaleOutSpec {
  bool present = false;
  sim::Bandwidth nic_bandwidth;  // per NIC, per direction
  sim::Time link_latency;        // each NIC<->leaf and leaf<->spine link, switch latency included
  int nodes_per_leaf = 1;
  // Leaf downlink capacity (nodes_per_leaf x gpus_per_node x nic_bandwidth) over leaf uplink
  // capacity: 1 is non-blocking, 2 halves the uplink.
  double oversubscription = 1.0;
};

struct ClusterSpec {
  int nodes = 1;
  int gpus_per_node = 8;
  GpuSpec gpu;
  NodeFabricSpec node;
  ScaleOutSpec scale_out;
};

enum class DeviceKind { gpu, nvswitch, nic, leaf, spine };
enum class LinkKind { nvlink, pcie, nic, uplink };

struct Device {
  DeviceKind kind;
  int index;  // within its kind: GPU 5, leaf 1, ...
};

struct Link {
  DeviceId src;
  DeviceId dst;
  LinkKind kind;
  sim::Bandwidth bandwidth;
  sim::Time latency;
};

struct Path {
  std::vector<LinkId> links;
  sim::Time latency;
  sim::Bandwidth bottleneck;
};

class Cluster {
 public:
  explicit Cluster(const ClusterSpec& spec);
  ~Cluster();
  Cluster(const Cluster&) = delete;
  Cluster& operator=(const Cluster&) = delete;

  const ClusterSpec& spec() const { return spec_; }
  int gpu_count() const { return spec_.nodes * spec_.gpus_per_node; }
  int node_of(GpuId g) const { return static_cast<int>(g.value) / spec_.gpus_per_node; }
  const std::vector<Device>& devices() const { return devices_; }
  const std::vector<Link>& links() const { return links_; }
  const Device& device(DeviceId d) const { return devices_[d.index()]; }
  const Link& link(LinkId l) const { return links_[l.index()]; }
  std::string device_name(DeviceId d) const;

  // The route from src to dst (src != dst). Computed by breadth-first search from src on first
  // use and cached per source.
  Path path(GpuId src, GpuId dst) const;

 private:
  struct Graph;
  ClusterSpec spec_;
  std::vector<Device> devices_;
  std::vector<Link> links_;
  std::unique_ptr<Graph> graph_;
};

std::string_view to_string(DeviceKind k);
std::string_view to_string(LinkKind k);

}  // namespace moesim::topology
