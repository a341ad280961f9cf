#include <catch2/catch.hpp>

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
  CHECK(sim::format_bandwidth(h100->nvlink_bandwidth) == "450GB/s");
  CHECK(find_gpu_preset("H800")->nvlink_bandwidth == sim::parse_bandwidth("200GB/s"));
  CHECK(find_gpu_preset("B300") == nullptr);
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
