// The cluster graph: GPUs, NVSwitches, NICs, leaf (or rail) switches, spines, directed links.
//
// Inside a node, one of two fabrics: every GPU has one NVLink port to the node's NVSwitch
// (`nvswitch`), or every pair of the node's GPUs has a link of its own and no switch (`mesh`:
// AMD Instinct's Infinity Fabric, xGMI, where each GPU has one link to each of its 7 peers).
// Between nodes, one of
// four scale-out builders (docs/topology.md lists every link a flow crosses in each):
// - single_switch: every NIC on one switch;
// - two_tier: a leaf per group of nodes_per_leaf nodes, `spines` spines, every leaf with one
//   uplink to every spine (capacity divided by the oversubscription ratio);
// - rail: rail-optimised; NIC i of every node in a pod of nodes_per_leaf nodes is on rail
//   switch (pod, i); rail switches join through the spines;
// - multi_plane: NIC i of every node is in plane i, its own two-tier fabric; traffic between
//   GPUs of different in-node index crosses the network in the sender's plane and is forwarded
//   over NVLink (or its mesh link) by the receiving node's GPU of the sender's index (as DeepEP
//   does).
// Every GPU has a NIC behind a PCIe link. Routes are explicit (not searched): the same node
// goes over NVLink (the mesh link); otherwise through the sender's NIC. Where several spines give equal-cost
// paths, ECMP picks one per (source GPU, destination GPU) pair by a fixed hash. Links are full
// duplex: each direction is its own Link. The graph is a Boost.Graph adjacency_list kept out of
// this header and used to check that the fabric is connected.
#pragma once

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
  sim::Bandwidth nvlink_bandwidth;  // nvswitch: per GPU port, per direction
  sim::Time nvlink_latency;         // nvswitch: per link (GPU->NVSwitch, NVSwitch->GPU)
  sim::Bandwidth pcie_bandwidth;    // GPU <-> NIC, per direction
  sim::Time pcie_latency;
  NodeFabric fabric = NodeFabric::nvswitch;
  sim::Bandwidth link_bandwidth{};  // mesh: per GPU pair, per direction
  sim::Time link_latency{};         // mesh: GPU -> GPU
};

enum class ScaleOutTopology { single_switch, two_tier, rail, multi_plane };

struct ScaleOutSpec {
  bool present = false;
  sim::Bandwidth nic_bandwidth;  // per NIC, per direction
  sim::Time link_latency;        // each NIC<->leaf and leaf<->spine link, switch latency included
  int nodes_per_leaf = 1;
  // Leaf downlink capacity (nodes_per_leaf x gpus_per_node x nic_bandwidth) over leaf uplink
  // capacity: 1 is non-blocking, 2 halves the uplink.
  double oversubscription = 1.0;
  int spines = 1;  // two_tier, rail, multi_plane (per plane): equal-cost paths for ECMP
  ScaleOutTopology topology = ScaleOutTopology::two_tier;
  // Per GPU, its NIC's link to the leaf at this share of nic_bandwidth (a port trained down, a
  // degraded cable); empty: every NIC at nic_bandwidth. Leaf uplinks stay sized by nic_bandwidth.
  std::vector<double> nic_speed{};
};

struct ClusterSpec {
  int nodes = 1;
  int gpus_per_node = 8;
  GpuSpec gpu;
  NodeFabricSpec node;
  ScaleOutSpec scale_out;
};

enum class DeviceKind { gpu, nvswitch, nic, leaf, spine };  // a rail switch is a leaf
enum class LinkKind { nvlink, pcie, nic, uplink, mesh };

struct Device {
  DeviceKind kind;
  int index;       // within its kind (and plane): GPU 5, leaf 1, ...
  int plane = -1;  // multi_plane switches: the plane; -1 elsewhere
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

  // The route from src to dst (src != dst), by the rules in docs/topology.md.
  Path path(GpuId src, GpuId dst) const;
  // The one NVLink link between a GPU and its node's NVSwitch: up (towards the switch) or down.
  // Only with the nvswitch fabric.
  Path switch_leg(GpuId gpu, bool up) const;
  bool mesh() const { return spec_.node.fabric == NodeFabric::mesh; }
  // The spine ECMP picks for traffic from src to dst (0 with one spine).
  int ecmp_spine(GpuId src, GpuId dst) const;

 private:
  struct Duplex {
    LinkId up, down;  // towards the switch, back from it
  };
  DeviceId add_device(DeviceKind kind, int index, int plane = -1);
  Duplex add_duplex(DeviceId a, DeviceId b, LinkKind kind, sim::Bandwidth bw, sim::Time lat);
  void build_scale_out();
  void check_connected() const;
  int leaf_of(int gpu) const;   // the leaf or rail switch (index into leaf_ids_) of a GPU's NIC
  // NIC of from_gpu -> ... -> NIC of to_gpu, both in one fabric; ECMP keyed on (src, dst).
  void append_network(std::vector<LinkId>& links, int from_gpu, int to_gpu, GpuId src, GpuId dst) const;
  // GPU from -> GPU to of the same node (from != to): through the NVSwitch, or their mesh link.
  void append_local(std::vector<LinkId>& links, int from, int to) const;

  ClusterSpec spec_;
  std::vector<Device> devices_;
  std::vector<Link> links_;
  std::vector<Duplex> nvlink_;     // per GPU: GPU <-> its NVSwitch (nvswitch fabric)
  std::vector<LinkId> mesh_;       // mesh fabric: [g * gpus_per_node + j]: GPU g -> GPU j of its node
  std::vector<Duplex> pcie_;       // per GPU: GPU <-> its NIC
  std::vector<Duplex> nic_;        // per GPU: NIC <-> its leaf
  std::vector<DeviceId> leaf_ids_;
  std::vector<std::vector<Duplex>> uplink_;  // [leaf][k]: to the k-th spine of the leaf's fabric
};

std::string_view to_string(DeviceKind k);
std::string_view to_string(LinkKind k);

}  // namespace moesim::topology
