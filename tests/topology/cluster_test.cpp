#include <catch2/catch.hpp>

#include <cstdlib>
#include <string>
#include <vector>

#include "sim/units.hpp"
#include "topology/cluster.hpp"

using namespace moesim;
using namespace moesim::topology;

namespace {

ClusterSpec two_tier(int nodes, int gpus_per_node, int nodes_per_leaf) {
  ClusterSpec s;
  s.nodes = nodes;
  s.gpus_per_node = gpus_per_node;
  s.gpu = *find_gpu_preset("H100");
  s.node = {sim::parse_bandwidth("450GB/s"), sim::parse_time("0.5us"), sim::parse_bandwidth("64GB/s"),
            sim::parse_time("0.25us")};
  s.scale_out = {true, sim::parse_bandwidth("400Gbps"), sim::parse_time("1us"), nodes_per_leaf};
  return s;
}

GpuId gpu(int i) { return GpuId(static_cast<std::uint32_t>(i)); }

}  // namespace

TEST_CASE("GPU presets carry their datasheet figures", "[topology]") {
  const GpuSpec* h100 = find_gpu_preset("h100-sxm");
  REQUIRE(h100 != nullptr);
  CHECK(h100->name == "H100-SXM");
  CHECK(sim::format_flop_rate(h100->peak_bf16) == "989.4TFLOP/s");
  CHECK(sim::format_flop_rate(h100->peak_fp8) == "1978.8TFLOP/s");  // dense; 3,958 with sparsity
  CHECK(find_gpu_preset("H800")->peak_fp8 == h100->peak_fp8);
  CHECK(find_gpu_preset("A100")->peak_fp8.flop_per_s() == 0);  // no FP8 tensor cores
  CHECK(sim::format_bandwidth(h100->nvlink_bandwidth) == "450GB/s");
  CHECK(find_gpu_preset("H800")->nvlink_bandwidth == sim::parse_bandwidth("200GB/s"));
  CHECK(find_gpu_preset("H20") == nullptr);
}

TEST_CASE("Blackwell presets: HGX B200 and the GB200 of an NVL72 rack", "[topology]") {
  const GpuSpec* b200 = find_gpu_preset("b200");  // short for B200-SXM
  REQUIRE(b200 != nullptr);
  CHECK(b200->name == "B200-SXM");
  CHECK(sim::format_flop_rate(b200->peak_bf16) == "2.25PFLOP/s");  // dense; 4.5 PFLOPS with sparsity
  CHECK(sim::format_flop_rate(b200->peak_fp8) == "4.5PFLOP/s");
  CHECK(b200->memory == sim::parse_bytes("180GB"));
  CHECK(b200->memory_bandwidth == sim::parse_bandwidth("7.7TB/s"));
  CHECK(sim::format_bandwidth(b200->nvlink_bandwidth) == "900GB/s");  // NVLink 5: 1.8 TB/s both ways
  CHECK(b200->sm_count == 148);
  const GpuSpec* gb200 = find_gpu_preset("GB200");
  REQUIRE(gb200 != nullptr);
  CHECK(sim::format_flop_rate(gb200->peak_bf16) == "2.5PFLOP/s");
  CHECK(sim::format_flop_rate(gb200->peak_fp8) == "5PFLOP/s");
  CHECK(gb200->memory == sim::parse_bytes("186GB"));
  CHECK(gb200->memory_bandwidth == sim::parse_bandwidth("8TB/s"));
  CHECK(gb200->nvlink_bandwidth == b200->nvlink_bandwidth);
  CHECK(find_gpu_preset("GB200-SXM") == nullptr);  // a superchip's GPU, not an SXM module
}

TEST_CASE("Blackwell Ultra presets: HGX B300 and the GB300 of an NVL72 rack", "[topology]") {
  const GpuSpec* b300 = find_gpu_preset("b300");  // short for B300-SXM
  REQUIRE(b300 != nullptr);
  CHECK(b300->name == "B300-SXM");
  const GpuSpec* b200 = find_gpu_preset("B200");
  CHECK(b300->peak_bf16 == b200->peak_bf16);  // 36 PFLOPS BF16 per 8 GPUs with sparsity, as the B200
  CHECK(b300->peak_fp8 == b200->peak_fp8);
  CHECK(sim::format_flop_rate(b300->peak_fp4) == "13.5PFLOP/s");  // 108 PFLOPS dense per 8 GPUs
  CHECK(b300->memory == sim::parse_bytes("288GB"));
  CHECK(b300->memory_bandwidth == sim::parse_bandwidth("8TB/s"));
  CHECK(b300->sm_count == 160);
  CHECK(b300->board_power_w == 1100);
  const GpuSpec* gb300 = find_gpu_preset("GB300");
  const GpuSpec* gb200 = find_gpu_preset("GB200");
  REQUIRE(gb300 != nullptr);
  CHECK(gb300->peak_bf16 == gb200->peak_bf16);  // 360 PFLOPS with sparsity a rack, as the GB200's
  CHECK(gb300->peak_fp8 == gb200->peak_fp8);
  CHECK(sim::format_flop_rate(gb300->peak_fp4) == "15PFLOP/s");  // 1,080 PFLOPS dense a rack
  CHECK(gb300->memory == sim::parse_bytes("288GB"));
  CHECK(gb300->nvlink_bandwidth == gb200->nvlink_bandwidth);
  CHECK(gb300->board_power_w == 1400);
  CHECK(gb300->fabric == NodeFabric::nvswitch);
}

TEST_CASE("AMD Instinct presets: 8-GPU meshes of Infinity Fabric links", "[topology]") {
  const GpuSpec* mi300x = find_gpu_preset("mi300x");
  REQUIRE(mi300x != nullptr);
  CHECK(mi300x->name == "MI300X");
  CHECK(sim::format_flop_rate(mi300x->peak_bf16) == "1307.4TFLOP/s");  // dense; 2,614.9 with sparsity
  CHECK(sim::format_flop_rate(mi300x->peak_fp8) == "2614.9TFLOP/s");
  CHECK(mi300x->peak_fp4.flop_per_s() == 0);
  CHECK(mi300x->memory == sim::parse_bytes("192GB"));
  CHECK(mi300x->fabric == NodeFabric::mesh);
  CHECK(mi300x->peer_links == 7);
  CHECK(mi300x->link_bandwidth == sim::parse_bandwidth("64GB/s"));  // 128 GB/s both ways
  CHECK(mi300x->nvlink_bandwidth == sim::parse_bandwidth("448GB/s"));
  CHECK(mi300x->sm_count == 304);
  const GpuSpec* mi325x = find_gpu_preset("MI325X");
  REQUIRE(mi325x != nullptr);
  CHECK(mi325x->peak_bf16 == mi300x->peak_bf16);
  CHECK(mi325x->memory == sim::parse_bytes("256GB"));
  CHECK(mi325x->memory_bandwidth == sim::parse_bandwidth("6TB/s"));
  const GpuSpec* mi355x = find_gpu_preset("MI355X");
  REQUIRE(mi355x != nullptr);
  CHECK(sim::format_flop_rate(mi355x->peak_fp8) == "5033.2TFLOP/s");
  CHECK(mi355x->peak_fp4.flop_per_s() > 0);  // MXFP4
  CHECK(mi355x->link_bandwidth == sim::parse_bandwidth("76.8GB/s"));
  CHECK(find_gpu_preset("H100")->fabric == NodeFabric::nvswitch);
}

TEST_CASE("A mesh node joins every pair of its GPUs by a link of their own", "[topology]") {
  ClusterSpec s = two_tier(1, 8, 1);
  s.scale_out.present = false;
  s.node.fabric = NodeFabric::mesh;
  s.node.link_bandwidth = sim::parse_bandwidth("64GB/s");
  s.node.link_latency = sim::parse_time("1us");
  const Cluster c(s);
  CHECK(c.mesh());
  CHECK(c.links().size() == 8 * 7);  // 28 pairs x 2 directions, no switch
  for (const auto& d : c.devices()) CHECK(d.kind == DeviceKind::gpu);
  const Path p = c.path(gpu(2), gpu(5));
  REQUIRE(p.links.size() == 1);
  CHECK(c.link(p.links[0]).kind == LinkKind::mesh);
  CHECK(c.device_name(c.link(p.links[0]).src) == "gpu2");
  CHECK(c.device_name(c.link(p.links[0]).dst) == "gpu5");
  CHECK(p.latency == sim::parse_time("1us"));
  CHECK(p.bottleneck == sim::parse_bandwidth("64GB/s"));
  // Every ordered pair has its own link: the reverse direction and other pairs differ.
  CHECK(c.path(gpu(5), gpu(2)).links[0] != p.links[0]);
  CHECK(c.path(gpu(2), gpu(6)).links[0] != p.links[0]);
  CHECK(c.device_name(c.link(c.path(gpu(5), gpu(2)).links[0]).dst) == "gpu2");
}

TEST_CASE("A single node routes every pair through its NVSwitch", "[topology]") {
  ClusterSpec s = two_tier(1, 8, 1);
  s.scale_out.present = false;
  const Cluster c(s);
  CHECK(c.gpu_count() == 8);
  CHECK(c.links().size() == 16);  // 8 ports x 2 directions
  const Path p = c.path(gpu(2), gpu(5));
  REQUIRE(p.links.size() == 2);
  CHECK(c.link(p.links[0]).kind == LinkKind::nvlink);
  CHECK(c.device_name(c.link(p.links[0]).src) == "gpu2");
  CHECK(c.device_name(c.link(p.links[0]).dst) == "nvswitch0");
  CHECK(c.device_name(c.link(p.links[1]).dst) == "gpu5");
  CHECK(p.latency == sim::parse_time("1us"));  // 2 hops x 0.5us
  CHECK(p.bottleneck == sim::parse_bandwidth("450GB/s"));
}

TEST_CASE("A two-tier cluster routes across nodes through NICs and leaves and the spine", "[topology]") {
  const Cluster c(two_tier(4, 2, 2));  // 8 GPUs, leaves {node0,node1} and {node2,node3}
  SECTION("same node: NVLink only") {
    const Path p = c.path(gpu(0), gpu(1));
    CHECK(p.links.size() == 2);
    CHECK(c.link(p.links[0]).kind == LinkKind::nvlink);
  }
  SECTION("same leaf: PCIe, NIC, leaf, NIC, PCIe") {
    const Path p = c.path(gpu(0), gpu(3));
    REQUIRE(p.links.size() == 4);
    CHECK(c.link(p.links[0]).kind == LinkKind::pcie);
    CHECK(c.link(p.links[1]).kind == LinkKind::nic);
    CHECK(c.device_name(c.link(p.links[1]).dst) == "leaf0");
    CHECK(c.link(p.links[3]).kind == LinkKind::pcie);
    // 0.25 + 1 + 1 + 0.25 us
    CHECK(p.latency == sim::parse_time("2.5us"));
    CHECK(p.bottleneck == sim::parse_bandwidth("400Gbps"));  // 50 GB/s < 64 GB/s PCIe
  }
  SECTION("other leaf: through the spine") {
    const Path p = c.path(gpu(1), gpu(6));
    REQUIRE(p.links.size() == 6);
    CHECK(c.link(p.links[2]).kind == LinkKind::uplink);
    CHECK(c.device_name(c.link(p.links[2]).dst) == "spine0");
    CHECK(c.device_name(c.link(p.links[3]).dst) == "leaf1");
    CHECK(p.latency == sim::parse_time("4.5us"));  // 0.25 + 1 + 1 + 1 + 1 + 0.25
    // The uplink is non-blocking: 2 nodes x 2 GPUs x 50 GB/s.
    CHECK(c.link(p.links[2]).bandwidth == sim::parse_bandwidth("200GB/s"));
  }
  SECTION("links are full duplex: the reverse path uses the opposite links") {
    const Path there = c.path(gpu(0), gpu(3));
    const Path back = c.path(gpu(3), gpu(0));
    REQUIRE(back.links.size() == there.links.size());
    for (std::size_t i = 0; i < there.links.size(); ++i) {
      const Link& a = c.link(there.links[i]);
      const Link& b = c.link(back.links[there.links.size() - 1 - i]);
      CHECK(a.src == b.dst);
      CHECK(a.dst == b.src);
      CHECK(there.links[i] != back.links[there.links.size() - 1 - i]);
    }
  }
}

namespace {
std::vector<std::string> hops(const Cluster& c, int a, int b) {
  std::vector<std::string> out;
  for (const auto l : c.path(gpu(a), gpu(b)).links)
    out.push_back(c.device_name(c.link(l).src) + ">" + c.device_name(c.link(l).dst));
  return out;
}
}  // namespace

TEST_CASE("A single switch joins every NIC directly", "[topology]") {
  ClusterSpec s = two_tier(4, 2, 1);
  s.scale_out.topology = ScaleOutTopology::single_switch;
  const Cluster c(s);
  CHECK(hops(c, 0, 7) == std::vector<std::string>{"gpu0>nic0", "nic0>leaf0", "leaf0>nic7", "nic7>gpu7"});
  for (const auto& l : c.links()) CHECK(l.kind != LinkKind::uplink);
}

TEST_CASE("Several spines split each leaf's uplink and ECMP spreads GPU pairs over them", "[topology]") {
  ClusterSpec s = two_tier(8, 4, 2);  // 4 leaves of 8 NICs at 50 GB/s
  s.scale_out.spines = 4;
  s.scale_out.oversubscription = 2.0;
  const Cluster c(s);
  // 8 x 50 GB/s / (2 x 4 spines) = 50 GB/s per leaf-spine link.
  std::vector<int> per_spine(4, 0);
  for (int a = 0; a < 32; ++a)
    for (int b = 0; b < 32; ++b) {
      if (a / 8 == b / 8) continue;
      const Path p = c.path(gpu(a), gpu(b));
      REQUIRE(p.links.size() == 6);
      const Link& up = c.link(p.links[2]);
      CHECK(up.kind == LinkKind::uplink);
      CHECK(up.bandwidth == sim::parse_bandwidth("50GB/s"));
      const int spine = c.ecmp_spine(gpu(a), gpu(b));
      CHECK(c.device_name(up.dst) == "spine" + std::to_string(spine));
      CHECK(c.link(p.links[3]).src == up.dst);  // down from the same spine
      ++per_spine[static_cast<std::size_t>(spine)];
    }
  // 768 cross-leaf pairs; a fair hash puts 192 on each spine, give or take.
  for (int n : per_spine) CHECK(std::abs(n - 192) < 50);
}

TEST_CASE("A rail-optimised fabric keeps same-index traffic on its rail", "[topology]") {
  ClusterSpec s = two_tier(4, 4, 4);  // one pod of 4 nodes: rails 0..3
  s.scale_out.topology = ScaleOutTopology::rail;
  const Cluster c(s);
  // GPU 1 of node 0 to GPU 1 of node 3: rail 1 only.
  CHECK(hops(c, 1, 13) == std::vector<std::string>{"gpu1>nic1", "nic1>leaf1", "leaf1>nic13", "nic13>gpu13"});
  // GPU 1 of node 0 to GPU 2 of node 3: rail 1, spine, rail 2.
  CHECK(hops(c, 1, 14) == std::vector<std::string>{"gpu1>nic1", "nic1>leaf1", "leaf1>spine0", "spine0>leaf2",
                                                   "leaf2>nic14", "nic14>gpu14"});
  // Each rail's uplink carries its 4 NICs (non-blocking).
  CHECK(c.link(c.path(gpu(1), gpu(14)).links[2]).bandwidth == sim::parse_bandwidth("200GB/s"));
}

TEST_CASE("A multi-plane fabric forwards cross-plane traffic over the receiver's NVLink", "[topology]") {
  ClusterSpec s = two_tier(4, 4, 2);  // 4 planes, each 2 leaves of 2 NICs and a spine
  s.scale_out.topology = ScaleOutTopology::multi_plane;
  const Cluster c(s);
  CHECK(hops(c, 1, 13) == std::vector<std::string>{"gpu1>nic1", "nic1>leaf1.0", "leaf1.0>spine1.0",
                                                   "spine1.0>leaf1.1", "leaf1.1>nic13", "nic13>gpu13"});
  // GPU 1 (plane 1) of node 0 to GPU 2 of node 1: plane 1 to GPU 5, then NVLink to GPU 6.
  CHECK(hops(c, 1, 6) == std::vector<std::string>{"gpu1>nic1", "nic1>leaf1.0", "leaf1.0>nic5", "nic5>gpu5",
                                                  "gpu5>nvswitch1", "nvswitch1>gpu6"});
  const Path p = c.path(gpu(1), gpu(6));
  // 0.25 + 1 + 1 + 0.25 (PCIe, NIC links) + 0.5 + 0.5 (NVLink) us
  CHECK(p.latency == sim::parse_time("3.5us"));
}

TEST_CASE("A multi-plane fabric of mesh nodes forwards over the relay's own link", "[topology]") {
  ClusterSpec s = two_tier(4, 4, 2);
  s.scale_out.topology = ScaleOutTopology::multi_plane;
  s.node.fabric = NodeFabric::mesh;
  s.node.link_bandwidth = sim::parse_bandwidth("64GB/s");
  s.node.link_latency = sim::parse_time("1us");
  const Cluster c(s);
  CHECK(hops(c, 1, 6) == std::vector<std::string>{"gpu1>nic1", "nic1>leaf1.0", "leaf1.0>nic5", "nic5>gpu5", "gpu5>gpu6"});
  CHECK(hops(c, 1, 2) == std::vector<std::string>{"gpu1>gpu2"});
  CHECK(c.path(gpu(1), gpu(6)).latency == sim::parse_time("3.5us"));  // 0.25 + 1 + 1 + 0.25 + 1
}

TEST_CASE("A slowed NIC carries its share of the NIC bandwidth both ways; the uplinks keep theirs", "[topology]") {
  ClusterSpec s = two_tier(4, 2, 2);  // 8 GPUs, 2 leaves, a spine
  s.scale_out.nic_speed.assign(8, 1.0);
  s.scale_out.nic_speed[5] = 0.25;
  const Cluster c(s);
  const Path out = c.path(gpu(5), gpu(0));
  const Path in = c.path(gpu(0), gpu(5));
  CHECK(out.bottleneck == sim::parse_bandwidth("12.5GB/s"));  // 400 Gb/s x 0.25
  CHECK(in.bottleneck == sim::parse_bandwidth("12.5GB/s"));
  CHECK(c.path(gpu(4), gpu(0)).bottleneck == sim::parse_bandwidth("50GB/s"));  // its node's other NIC
  // The leaf's uplink is sized by the nominal NICs: 4 x 50 GB/s.
  CHECK(c.link(out.links[2]).kind == LinkKind::uplink);
  CHECK(c.link(out.links[2]).bandwidth == sim::parse_bandwidth("200GB/s"));
}
