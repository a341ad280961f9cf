#include <catch2/catch.hpp>

#include <functional>
#include <map>
#include <utility>
#include <vector>

#include "models/collectives.hpp"
#include "models/maxmin_network.hpp"
#include "sim/rng.hpp"
#include "sim/simulator.hpp"
#include "sim/units.hpp"
#include "topology/cluster.hpp"

using namespace moesim;
using namespace moesim::models;
using sim::Time;

namespace {

// Nodes of `gpn` GPUs: NVLink 100 GB/s and 1 us per port and direction (a GPU -> GPU flow in a
// node: 2 links, 2 us); PCIe 64 GB/s and 0.25 us; one 50 GB/s NIC per GPU, 1 us per link, all
// nodes on one leaf (a flow across nodes: PCIe, NIC -> leaf, leaf -> NIC, PCIe: 2.5 us, 50 GB/s).
topology::ClusterSpec cluster(int nodes, int gpn) {
  topology::ClusterSpec s;
  s.nodes = nodes;
  s.gpus_per_node = gpn;
  s.gpu = *topology::find_gpu_preset("H100");
  s.node = {sim::parse_bandwidth("100GB/s"), sim::parse_time("1us"), sim::parse_bandwidth("64GB/s"), sim::parse_time("0.25us")};
  s.scale_out.present = nodes > 1;
  s.scale_out.nic_bandwidth = sim::parse_bandwidth("50GB/s");
  s.scale_out.link_latency = sim::parse_time("1us");
  s.scale_out.nodes_per_leaf = nodes;
  return s;
}

struct Flows : Recorder {
  std::vector<FlowRecord> flows;
  void on_stage(const StageRecord&) override {}
  void on_routing(int, int, int, const routing::DispatchPlan&, int) override {}
  void on_flow(const FlowRecord& r) override { flows.push_back(r); }
  std::int64_t bytes() const {
    std::int64_t b = 0;
    for (const auto& f : flows) b += f.flow.size.count();
    return b;
  }
};

struct Outcome {
  std::vector<Time> done;  // per GPU
  std::int64_t bytes = 0;
};

// Runs one collective over every GPU of the cluster (ring order 0, 1, ...); join_at[g]: when g joins.
// mesh_paths false: mesh nodes' rings take the switch's order through a node (the model before
// its channels took link-disjoint paths there).
Outcome run(int nodes, int gpn, CollectiveAlgorithm a, CollectiveKind kind, std::int64_t bytes, int chunks = 1,
            std::vector<Time> join_at = {}, const topology::ClusterSpec* spec = nullptr, double switch_efficiency = 1.0,
            bool mesh_paths = true) {
  const topology::Cluster c(spec ? *spec : cluster(nodes, gpn));
  sim::Simulator sim;
  MaxMinNetwork net(sim, c);
  Flows rec;
  const int n = nodes * gpn;
  std::vector<int> members(static_cast<std::size_t>(n));
  for (int g = 0; g < n; ++g) members[static_cast<std::size_t>(g)] = g;
  Outcome out;
  out.done.assign(static_cast<std::size_t>(n), Time::max());
  CollectiveContext ctx{sim, net, rec, gpn, switch_efficiency};
  ctx.mesh = c.mesh() && mesh_paths;
  auto coll = make_collective(ctx, a, kind, members, sim::Bytes(bytes),
                              [&](int g) {
                                REQUIRE(out.done[static_cast<std::size_t>(g)] == Time::max());  // once per GPU
                                out.done[static_cast<std::size_t>(g)] = sim.now();
                              },
                              chunks);
  join_at.resize(static_cast<std::size_t>(n), Time::zero());
  for (int g = 0; g < n; ++g) sim.schedule_at(join_at[static_cast<std::size_t>(g)], [&, g] { coll->join(g); });
  sim.run();
  for (const Time t : out.done) REQUIRE(t != Time::max());
  out.bytes = rec.bytes();
  return out;
}

Time last(const Outcome& o) {
  Time t = Time::zero();
  for (const Time d : o.done) t = sim::max(t, d);
  return t;
}

// A network of `nodes` x `gpn` test nodes, recording its flows, to build collectives on.
struct Bench {
  Flows rec;
  topology::Cluster cluster;
  sim::Simulator sim;
  MaxMinNetwork net;
  CollectiveContext ctx;
  Bench(int nodes, int gpn) : cluster(::cluster(nodes, gpn)), net(sim, cluster), ctx{sim, net, rec, gpn} {}
};

}  // namespace

// The same nodes as a full mesh (AMD Infinity Fabric): a 100 GB/s, 1 us link per GPU pair.
topology::ClusterSpec mesh(int nodes, int gpn, const char* link = "100GB/s") {
  topology::ClusterSpec s = cluster(nodes, gpn);
  s.node.fabric = topology::NodeFabric::mesh;
  s.node.link_bandwidth = sim::parse_bandwidth(link);
  s.node.link_latency = sim::parse_time("1us");
  return s;
}

TEST_CASE("In a mesh node, collectives send every peer its share over their own link", "[models][collectives]") {
  // 4 GPUs, S = 4,000,000 B: a share is 1,000,000 B. Reduce-scatter: each GPU sends its 3 peers
  // their shares at once, each over its own link: 1 + 10 us; all-gather the same; all-reduce
  // both, one after the other. A ring would take 3 (6) steps of 1 + 10 us.
  const topology::ClusterSpec m = mesh(1, 4);
  for (const auto a : {CollectiveAlgorithm::ring, CollectiveAlgorithm::hierarchical}) {
    const auto ar = run(1, 4, a, CollectiveKind::all_reduce, 4'000'000, 1, {}, &m);
    for (const Time t : ar.done) CHECK(t == sim::parse_time("22us"));
    CHECK(ar.bytes == 2 * 4 * 3 * 1'000'000);  // what a ring moves too
    CHECK(last(run(1, 4, a, CollectiveKind::reduce_scatter, 4'000'000, 1, {}, &m)) == sim::parse_time("11us"));
    CHECK(last(run(1, 4, a, CollectiveKind::all_gather, 4'000'000, 1, {}, &m)) == sim::parse_time("11us"));
  }
  // GPU 3 joins at 10 us and sends its shares (moving from 11 us). It has the others' shares
  // at 11 us and sends its all-gather share to each at once, over the same links: from 12 us
  // the two flows on each of its links share it, so its reduce-scatter shares arrive at 30 us
  // (0.1 MB alone, 0.9 MB at half rate) and its all-gather shares at 31 us. The others then
  // send theirs: 30 + 1 + 10 us, and everyone is done at 41 us.
  const auto late = run(1, 4, CollectiveAlgorithm::ring, CollectiveKind::all_reduce, 4'000'000, 1,
                        {Time::zero(), Time::zero(), Time::zero(), sim::parse_time("10us")}, &m);
  for (const Time t : late.done) CHECK(t == sim::parse_time("41us"));
  // One GPU alone is done when it joins.
  const topology::ClusterSpec one = mesh(1, 1);
  CHECK(last(run(1, 1, CollectiveAlgorithm::ring, CollectiveKind::all_reduce, 4'000'000, 1, {sim::parse_time("3us")}, &one)) ==
        sim::parse_time("3us"));
  // Across mesh nodes, the hierarchical phases inside a node are direct: 2 nodes x 2 GPUs, the
  // in-node reduce-scatter 1 + 20 us, the 45 us across nodes as with an NVSwitch, the
  // all-gather 21 us.
  const topology::ClusterSpec m2 = mesh(2, 2);
  CHECK(last(run(2, 2, CollectiveAlgorithm::hierarchical, CollectiveKind::all_reduce, 4'000'000, 1, {}, &m2)) ==
        sim::parse_time("87us"));
}

TEST_CASE("In one node, NVLink SHARP all-reduce moves S + S/k each way where a ring moves 2(k-1)/k S", "[models][collectives]") {
  // 4 GPUs, S = 4,000,000 B. NVLS: every GPU sends 5,000,000 B up its port and receives as much
  // down it, all at once: 1 us + 50 us. Ring: 6 steps of a 1,000,000 B chunk, each 2 us + 10 us.
  const auto nvls = run(1, 4, CollectiveAlgorithm::nvls, CollectiveKind::all_reduce, 4'000'000);
  for (const Time t : nvls.done) CHECK(t == sim::parse_time("51us"));
  CHECK(nvls.bytes == 4 * 2 * 5'000'000);
  const auto ring = run(1, 4, CollectiveAlgorithm::ring, CollectiveKind::all_reduce, 4'000'000);
  CHECK(last(ring) == sim::parse_time("72us"));
  CHECK(ring.bytes == 6 * 4 * 1'000'000);
  // Reduce-scatter: S up, S/k down (1 + 40 us); all-gather: S/k up, S down; rings: 3 steps.
  CHECK(last(run(1, 4, CollectiveAlgorithm::nvls, CollectiveKind::reduce_scatter, 4'000'000)) == sim::parse_time("41us"));
  CHECK(last(run(1, 4, CollectiveAlgorithm::nvls, CollectiveKind::all_gather, 4'000'000)) == sim::parse_time("41us"));
  CHECK(last(run(1, 4, CollectiveAlgorithm::ring, CollectiveKind::reduce_scatter, 4'000'000)) == sim::parse_time("36us"));
  CHECK(run(1, 4, CollectiveAlgorithm::ring, CollectiveKind::all_gather, 4'000'000).bytes == 3 * 4 * 1'000'000);
  // The switch needs everyone's data: a GPU joining at 10 us holds back all of them.
  const auto late = run(1, 4, CollectiveAlgorithm::nvls, CollectiveKind::all_reduce, 4'000'000, 1,
                        {Time::zero(), Time::zero(), Time::zero(), sim::parse_time("10us")});
  for (const Time t : late.done) CHECK(t == sim::parse_time("61us"));
}

TEST_CASE("Hierarchical all-reduce: in-node reduce-scatter, all-reduce across nodes, in-node all-gather", "[models][collectives]") {
  // 2 nodes x 2 GPUs, S = 4,000,000 B, unpipelined. Ring reduce-scatter in each node: 1 step of
  // 2,000,000 B (2 + 20 us); across nodes GPUs 0-2 and 1-3 all-reduce 2,000,000 B: 2 steps of
  // 1,000,000 B, each 2.5 + 20 us, on their own NICs; ring all-gather in each node: 22 us.
  const auto h = run(2, 2, CollectiveAlgorithm::hierarchical, CollectiveKind::all_reduce, 4'000'000);
  for (const Time t : h.done) CHECK(t == sim::parse_time("89us"));
  CHECK(h.bytes == 4 * 2'000'000 + 2 * 2 * 2 * 1'000'000 + 4 * 2'000'000);
  // NVLS in the nodes: reduce-scatter 4,000,000 up and 2,000,000 down (1 + 40 us), the same
  // 45 us across nodes, all-gather 2,000,000 up and 4,000,000 down: 41 us. With two GPUs a
  // node the switch moves more than a ring does.
  CHECK(last(run(2, 2, CollectiveAlgorithm::nvls, CollectiveKind::all_reduce, 4'000'000)) == sim::parse_time("127us"));
  // Reduce-scatter stops after the nodes' phase, all-gather starts with it.
  CHECK(last(run(2, 2, CollectiveAlgorithm::hierarchical, CollectiveKind::reduce_scatter, 4'000'000)) ==
        sim::parse_time("22us") + sim::parse_time("22.5us"));
  CHECK(last(run(2, 2, CollectiveAlgorithm::hierarchical, CollectiveKind::all_gather, 4'000'000)) ==
        sim::parse_time("22.5us") + sim::parse_time("22us"));
}

TEST_CASE("Pipelined chunks overlap the phases but never beat the busiest link", "[models][collectives]") {
  for (const auto a : {CollectiveAlgorithm::hierarchical, CollectiveAlgorithm::nvls}) {
    for (const int gpn : {2, 4, 8}) {
      INFO(to_string(a) << " " << gpn << " GPUs a node");
      const std::int64_t s = 64'000'000;  // large enough that latency does not dominate a chunk
      const auto whole = run(2, gpn, a, CollectiveKind::all_reduce, s, 1);
      const auto piped = run(2, gpn, a, CollectiveKind::all_reduce, s, 8);
      INFO(last(whole).to_seconds() * 1e6 << " us unpipelined, " << last(piped).to_seconds() * 1e6 << " us in 8 chunks");
      CHECK(last(piped) < last(whole));
      // Across nodes each NIC carries 2 (N - 1) / N x S / gpn bytes each way, at 50 GB/s.
      const double nic_s = static_cast<double>(s) / gpn / 50e9;
      CHECK(last(piped).to_seconds() >= nic_s);
      CHECK(piped.bytes == whole.bytes);
    }
  }
  // Eight GPUs a node: NVLS beats the in-node rings once pipelined.
  CHECK(last(run(2, 8, CollectiveAlgorithm::nvls, CollectiveKind::all_reduce, 64'000'000, 8)) <
        last(run(2, 8, CollectiveAlgorithm::hierarchical, CollectiveKind::all_reduce, 64'000'000, 8)));
}

TEST_CASE("A ring across nodes runs as channels that cross through every NIC, rail to rail", "[models][collectives]") {
  // 2 nodes x 4 GPUs, S = 8,000,000 B: 4 channels of 2,000,000 B, each a ring over all 8 GPUs
  // (14 steps of 250,000 B). Every GPU's NIC carries one channel each way, and every crossing
  // joins GPUs at the same position on their nodes.
  Bench b(2, 4);
  auto& [rec, cl, sim, net, ctx] = b;
  int done = 0;
  auto ring = make_collective(ctx, CollectiveAlgorithm::ring, CollectiveKind::all_reduce, {0, 1, 2, 3, 4, 5, 6, 7},
                              sim::Bytes(8'000'000), [&](int) { ++done; });
  for (int g = 0; g < 8; ++g) ring->join(g);
  sim.run();
  CHECK(done == 8);
  std::vector<std::int64_t> out(8, 0), in(8, 0);
  for (const auto& f : rec.flows) {
    CHECK(f.flow.size.count() == 250'000);
    const int src = static_cast<int>(f.flow.src.value), dst = static_cast<int>(f.flow.dst.value);
    if (src / 4 == dst / 4) continue;
    CHECK(src % 4 == dst % 4);
    out[static_cast<std::size_t>(src)] += f.flow.size.count();
    in[static_cast<std::size_t>(dst)] += f.flow.size.count();
  }
  CHECK(rec.bytes() == std::int64_t{14} * 8'000'000);  // 2(n - 1) S, as one ring moves
  for (int g = 0; g < 8; ++g) {
    CHECK(out[static_cast<std::size_t>(g)] == 14 * 250'000);
    CHECK(in[static_cast<std::size_t>(g)] == 14 * 250'000);
  }
  // One ring would send all of a node's crossing bytes (14 x 1,000,000 B) through one NIC at
  // 50 GB/s: at least 280 us. The channels' bottleneck is each GPU's NVLink port, which carries
  // three channels' steps at once (14 x 750,000 B at 100 GB/s: 105 us).
  INFO("channels: " << sim.now().to_us() << " us");
  CHECK(sim.now() >= sim::parse_time("105us"));
  CHECK(sim.now() < sim::parse_time("150us"));

  // A ring whose order goes back and forth between the nodes, or with different counts on
  // them, stays one ring: every flow a whole chunk of S / n; so does a chain of point-to-point
  // sends (channels off: the third).
  const std::vector<std::vector<int>> orders{{0, 4, 1, 5, 2, 6, 3, 7}, {0, 1, 2, 4}, {0, 1, 2, 3, 4, 5, 6, 7}};
  for (const auto& order : orders) {
    Bench one(2, 4);
    one.ctx.channels = &order != &orders.back();
    auto r1 = make_collective(one.ctx, CollectiveAlgorithm::ring, CollectiveKind::all_reduce, order, sim::Bytes(8'000'000),
                              [](int) {});
    for (const int g : order) r1->join(g);
    one.sim.run();
    REQUIRE(!one.rec.flows.empty());
    for (const auto& f : one.rec.flows) CHECK(f.flow.size.count() == 8'000'000 / static_cast<std::int64_t>(order.size()));
  }
}

TEST_CASE("Strided collectives: one per tensor-parallel rank, each among its own GPUs", "[models][collectives]") {
  // 2 nodes x 4 GPUs in TP pairs (0-1, 2-3, ...): rank 0's GPUs 0, 2, 4, 6 and rank 1's 1, 3, 5,
  // 7 each all-reduce their own 4,000,000 B; with shard groups of 4 GPUs (2 of each rank, one
  // node), each rank reduce-scatters within its node and all-reduces its halves across.
  for (const std::size_t group : {std::size_t{0}, std::size_t{4}}) {
    Bench b(2, 4);
    auto& [rec, cl, sim, net, ctx] = b;
    int done = 0;
    const auto kind = group ? CollectiveKind::reduce_scatter : CollectiveKind::all_reduce;
    auto coll = make_strided_collective(ctx, CollectiveAlgorithm::ring, kind, {0, 1, 2, 3, 4, 5, 6, 7}, 2, group,
                                        sim::Bytes(4'000'000), [&](int) { ++done; });
    for (int g = 0; g < 8; ++g) coll->join(g);
    sim.run();
    CHECK(done == 8);
    for (const auto& f : rec.flows) CHECK(f.flow.src.value % 2 == f.flow.dst.value % 2);
    // Unsharded: two rings of 4 (2 channels of 2,000,000 B, 6 steps of 500,000 B): 2 x 6 x 4 MB.
    // Sharded: in each node a pair reduce-scatters (1 step of 2,000,000 B each way), then the
    // halves' all-reduce across the nodes (2 steps of 1,000,000 B each way): 4 x (4 + 4) MB.
    CHECK(rec.bytes() == (group ? std::int64_t{4} * 8'000'000 : std::int64_t{2} * 6 * 4'000'000));
  }
}

TEST_CASE("All-reduce bus bandwidth on 8 x H100: ring and NVLink SHARP as NCCL measures them", "[models][collectives][validation]") {
  // docs/validation.md: NCCL reaches ~370 GB/s all-reduce busbw with the ring and ~480 GB/s with
  // NVLS on one 8 x H100 node. With NVLink at the 370 GB/s NCCL achieves (the calibration
  // docs/validation.md gives for the all-to-all) and kNvlsEfficiency, 2 GiB all-reduced:
  topology::ClusterSpec h100 = cluster(1, 8);
  h100.node.nvlink_bandwidth = sim::parse_bandwidth("370GB/s");
  h100.node.nvlink_latency = sim::parse_time("0.5us");
  const std::int64_t s = std::int64_t{2} << 30;
  const auto busbw = [&](CollectiveAlgorithm a) {
    const Time t = last(run(1, 8, a, CollectiveKind::all_reduce, s, 1, {}, &h100, kNvlsEfficiency));
    return static_cast<double>(s) / t.to_seconds() * 2 * 7 / 8 / 1e9;
  };
  const double ring = busbw(CollectiveAlgorithm::ring), nvls = busbw(CollectiveAlgorithm::nvls);
  INFO("ring " << ring << " GB/s, nvls " << nvls << " GB/s");
  CHECK(ring == Approx(370).epsilon(0.01));
  CHECK(nvls == Approx(480).epsilon(0.02));
  CHECK(nvls / ring == Approx(1.30).epsilon(0.02));
}

TEST_CASE("All-gather bus bandwidth on 8 x H100: the ring as NCCL measures it", "[models][collectives][validation]") {
  // docs/validation.md: NCCL's all_gather_perf saturates at ~360 GB/s busbw on one 8 x H100
  // node (NVIDIA's answer in NVIDIA/nccl-tests issue 326), the tensor-parallel collective's
  // algorithm here. With the same 370 GB/s calibration, 2 GiB gathered: busbw = S (n - 1)/n / t.
  topology::ClusterSpec h100 = cluster(1, 8);
  h100.node.nvlink_bandwidth = sim::parse_bandwidth("370GB/s");
  h100.node.nvlink_latency = sim::parse_time("0.5us");
  const std::int64_t s = std::int64_t{2} << 30;
  const Time t = last(run(1, 8, CollectiveAlgorithm::ring, CollectiveKind::all_gather, s, 1, {}, &h100, kNvlsEfficiency));
  const double busbw = static_cast<double>(s) / t.to_seconds() * 7 / 8 / 1e9;
  INFO("ring all-gather " << busbw << " GB/s");
  CHECK(busbw == Approx(360).epsilon(0.03));
}

TEST_CASE("Ring all-reduce bus bandwidth across two DGX-A100 as NCCL measures it", "[models][collectives][validation]") {
  // docs/validation.md: NVIDIA measures 192 GB/s all-reduce busbw with the ring across two
  // DGX-A100, 8 x 200 Gb/s InfiniBand NICs each (NVIDIA/nccl issue 812). NVLink at the
  // 232.5 GB/s an 8 x A100 node's ring reaches in NCCL (NVIDIA/nccl-tests issue 175), the NICs
  // at their nominal 25 GB/s, 4 GiB all-reduced over the 16 GPUs:
  topology::ClusterSpec a100 = cluster(2, 8);
  a100.gpu = *topology::find_gpu_preset("A100");
  a100.node.nvlink_bandwidth = sim::parse_bandwidth("232.5GB/s");
  a100.node.nvlink_latency = sim::parse_time("0.5us");
  a100.scale_out.nic_bandwidth = sim::parse_bandwidth("25GB/s");
  const std::int64_t s = std::int64_t{4} << 30;
  const Time t = last(run(2, 8, CollectiveAlgorithm::ring, CollectiveKind::all_reduce, s, 1, {}, &a100));
  const double busbw = static_cast<double>(s) / t.to_seconds() * 2 * 15 / 16 / 1e9;
  INFO("ring across two nodes " << busbw << " GB/s");
  // The 8 channels cross through all 8 NICs: each NIC carries 2(n - 1)/n x S / 8 each way, so
  // the busbw is the NICs' 8 x 25 = 200 GB/s (one ring through one NIC would reach 25). 4 %
  // above NCCL's measured 192: its NICs deliver about 24 GB/s of their 25.
  CHECK(busbw == Approx(200).epsilon(0.01));
  CHECK(busbw / 192 == Approx(1.04).epsilon(0.01));
}

TEST_CASE("A ring across mesh nodes: its channels take link-disjoint paths through each node", "[models][collectives]") {
  // 8 GPUs a node joined by a mesh (one link per pair): channel c zigzags through each node from
  // member c (or c + 4) to c + 4 (or c), so that each of a node's 56 directed links carries one
  // channel, as each NIC does, and each crossing joins GPUs at the same position. With NCCL's
  // switch order (c, c + 1, ..., c - 1) every channel would take the same 7 links.
  for (const int nodes : {2, 3, 4}) {
    const topology::ClusterSpec m = mesh(nodes, 8);
    const topology::Cluster c(m);
    sim::Simulator sim;
    MaxMinNetwork net(sim, c);
    Flows rec;
    CollectiveContext ctx{sim, net, rec, 8};
    ctx.mesh = true;
    const int n = nodes * 8;
    std::vector<int> members(static_cast<std::size_t>(n));
    for (int g = 0; g < n; ++g) members[static_cast<std::size_t>(g)] = g;
    int done = 0;
    const std::int64_t size = std::int64_t{8} * n * 1'000;  // 8 channels, n steps' chunks of 1,000 B
    auto ring = make_collective(ctx, CollectiveAlgorithm::ring, CollectiveKind::all_reduce, members, sim::Bytes(size),
                                [&](int) { ++done; });
    for (int g = 0; g < n; ++g) ring->join(g);
    sim.run();
    CHECK(done == n);
    const std::int64_t steps = 2 * (n - 1);
    std::map<std::pair<int, int>, std::int64_t> pair_bytes;
    std::vector<std::int64_t> nic_out(static_cast<std::size_t>(n), 0);
    int wraps = 0;
    for (const auto& f : rec.flows) {
      CHECK(f.flow.size.count() == 1'000);
      const int src = static_cast<int>(f.flow.src.value), dst = static_cast<int>(f.flow.dst.value);
      if (src / 8 == dst / 8) {
        pair_bytes[{src, dst}] += f.flow.size.count();
      } else {
        nic_out[static_cast<std::size_t>(src)] += f.flow.size.count();
        if (src % 8 != dst % 8) ++wraps;
      }
    }
    CHECK(pair_bytes.size() == static_cast<std::size_t>(nodes * 56));  // every directed link of every node
    for (const auto& [pair, bytes] : pair_bytes) CHECK(bytes == steps * 1'000);  // one channel each
    for (const std::int64_t b : nic_out) CHECK(b == steps * 1'000);
    // Rail to rail, but for the wrap from the last node to the first with an odd node count.
    CHECK(wraps == (nodes % 2 == 1 ? 8 * static_cast<int>(steps) : 0));
  }
}

TEST_CASE("All-reduce bus bandwidth on MI300X meshes as RCCL measures it", "[models][collectives][validation]") {
  // docs/validation.md: rccl-tests' all_reduce_perf at 8 GiB reaches a busbw of 315.7 GB/s on one
  // 8 x MI300X node and 356.1 GB/s on two (hisohara/ai-scripts, training/01_rccl-smoketest;
  // 8 x 400 Gb/s NICs a node). moesim's links at the 48 GB/s AMD states as usable of xGMI's 64
  // (ROCm blog, "Understanding RCCL Bandwidth and xGMI Performance on AMD Instinct MI300X"):
  const std::int64_t s = std::int64_t{8} << 30;
  const auto busbw = [&](int nodes, const char* link) {
    const topology::ClusterSpec m = mesh(nodes, 8, link);
    const int n = nodes * 8;
    const Time t = last(run(nodes, 8, CollectiveAlgorithm::hierarchical, CollectiveKind::all_reduce, s, 8, {}, &m));
    return static_cast<double>(s) / t.to_seconds() * 2 * (n - 1) / n / 1e9;
  };
  const double one = busbw(1, "48GB/s"), two = busbw(2, "48GB/s"), nominal = busbw(1, "64GB/s");
  INFO("one node " << one << " GB/s, two nodes " << two << " GB/s, one node at 64 GB/s links " << nominal << " GB/s");
  // One node: 7 links of 48 GB/s carry S/8 each way per phase: busbw 7 x 48 = 336.
  CHECK(one == Approx(336).epsilon(0.01));
  CHECK(nominal == Approx(448).epsilon(0.01));
  // 6.4 % above the measured 315.7: RCCL reaches 94 % of the links' usable 336 GB/s.
  CHECK(one / 315.7 == Approx(1.064).epsilon(0.005));
  // Two nodes (8 chunks, the gradient sync's default): the in-node reduce-scatter and
  // all-gather share the links while the 50 GB/s NICs carry S/8 each way per GPU: 349.5 GB/s,
  // 1.9 % under the measured 356.1.
  CHECK(two == Approx(349.5).epsilon(0.002));
  CHECK(two / 356.1 == Approx(0.981).epsilon(0.005));
  // The ring across the two nodes (the MI325X's links are the MI300X's; rccl-tests with
  // NCCL_ALGO=Ring there: 349.2 GB/s): 8 channels, each over one link a hop in a node and one
  // NIC between them, so each moves at the 48 GB/s links' pace: busbw 8 x 48 = 384.
  const topology::ClusterSpec m2 = mesh(2, 8, "48GB/s");
  const auto ring_busbw = [&](bool mesh_paths) {
    const Time t = last(run(2, 8, CollectiveAlgorithm::ring, CollectiveKind::all_reduce, s, 1, {}, &m2, 1.0, mesh_paths));
    return static_cast<double>(s) / t.to_seconds() * 2 * 15 / 16 / 1e9;
  };
  const double ring = ring_busbw(true), switch_order = ring_busbw(false);
  INFO("ring across two nodes " << ring << " GB/s; in the switch's order " << switch_order << " GB/s");
  CHECK(ring == Approx(384).epsilon(0.01));
  CHECK(ring / 349.2 == Approx(1.10).epsilon(0.01));
  // In the switch's order all 8 channels cross a node over the same 7 links: 54.9 GB/s.
  CHECK(switch_order == Approx(54.9).epsilon(0.01));
}


TEST_CASE("A member that joins late delays a ring by its lateness, not by more", "[models][collectives]") {
  // A ring member's steps go to its successor one at a time: joining late with several steps'
  // chunks already in, it forwards them in order, and the ring ends its lateness after it would
  // have. (Sent all at once, sharing the member's link, the first would arrive only with the
  // last; on 8 x 8 GPUs one GPU joining 2 ms late once made the hierarchical all-gather end
  // 89 ms later, its delay compounding hop after hop.)
  const std::int64_t bytes = 2'818'572'288;  // Mixtral-8x7B's layer, bf16
  const Time late = Time::ps(2'000'000'000);
  for (const int chunks : {1, 8}) {
    const Time on_time = last(run(8, 8, CollectiveAlgorithm::hierarchical, CollectiveKind::all_gather, bytes, chunks));
    std::vector<Time> at(64, Time::zero());
    at[5] = late;
    const Outcome o = run(8, 8, CollectiveAlgorithm::hierarchical, CollectiveKind::all_gather, bytes, chunks, at);
    INFO("chunks " << chunks << ": on time " << on_time.to_us() << " us, one late " << last(o).to_us() << " us");
    // Within 1 us of the lateness; chunked, 0.2 ms (its chunks' phases overlap the others' less: 0.11 ms).
    CHECK(last(o) <= on_time + late + Time::ps(chunks == 1 ? 1'000'000 : 200'000'000));
    CHECK(last(o) > on_time);
    // Joins spread over 2 ms: at most the spread later.
    sim::Rng rng(3, "test/late");
    std::vector<Time> spread;
    for (int g = 0; g < 64; ++g) spread.push_back(Time::ps(static_cast<std::int64_t>(rng.uniform01() * 2e9)));
    CHECK(last(run(8, 8, CollectiveAlgorithm::hierarchical, CollectiveKind::all_gather, bytes, chunks, spread)) <= on_time + late);
  }
  // A flat ring too.
  const Time ring = last(run(1, 8, CollectiveAlgorithm::ring, CollectiveKind::all_reduce, 800'000'000));
  std::vector<Time> at(8, Time::zero());
  at[3] = late;
  CHECK(last(run(1, 8, CollectiveAlgorithm::ring, CollectiveKind::all_reduce, 800'000'000, 1, at)) <= ring + late + Time::ps(1'000'000));
}
