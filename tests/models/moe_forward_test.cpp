#include <catch2/catch.hpp>

#include <sstream>
#include <string>

#include "models/analytical_network.hpp"
#include "models/moe_forward.hpp"
#include "models/recorder.hpp"
#include "scenarios/experiment.hpp"
#include "scenarios/scenario.hpp"
#include "tools/report.hpp"

using namespace moesim;
using models::Stage;
using sim::Time;

namespace {

// 2 GPUs on one NVSwitch, 2 experts (one per GPU), top_k 2: every token goes to both experts,
// so the routing is the same for every seed. Round numbers: 100 TFLOP/s, 1 TB/s, 100 GB/s.
std::string tiny(const std::string& capacity, int layers) {
  return R"(
cluster:
  nodes: 1
  gpus_per_node: 2
  gpu: {name: toy, peak_bf16: 100TFLOP/s, memory_bandwidth: 1TB/s, nvlink_bandwidth: 100GB/s}
  node: {nvlink_latency: 1us}
model:
  moe_layers: )" + std::to_string(layers) + R"(
  hidden: 1024
  expert_ffn: 1024
  experts: 2
  top_k: 2
  attention_heads: 8
parallelism: {ep: 2}
workload: {tokens_per_gpu: 1000, sequence_length: 1000}
routing: {capacity_factor: )" + capacity + R"(}
compute: {flops_efficiency: 1, memory_efficiency: 1}
)";
}

std::size_t idx(Stage s) { return static_cast<std::size_t>(s); }

}  // namespace

TEST_CASE("A tiny scenario's step time matches the hand derivation exactly", "[models][forward]") {
  // T = 1000 tokens per GPU, H = F = 1024, 8 heads x 128 = q = kv = 1024, S = 1000, b = 2.
  // attention FLOPs = 2*T*H*(q+2kv) + 2*T*q*H + 2*T*q*(S+1)
  //                 = 6,291,456,000 + 2,097,152,000 + 2,050,048,000 = 10,438,656,000
  //   -> 104.38656 us at 100 TFLOP/s (its 24,772,608 bytes take only 24.77 us at 1 TB/s).
  // router bytes = 2*(H*E + T*H) + 4*T*E = 2,052,096 + 8,000 = 2,060,096 -> 2.060096 us
  //   (memory-bound: its 4,096,000 FLOPs take 0.04096 us).
  // Both GPUs finish routing at 106,446,656 ps.
  const Time routed = Time::ps(104'386'560 + 2'060'096);
  // A flow of 1000 token copies = 2,048,000 B at 100 GB/s = 20.48 us, plus 2 NVLink hops of
  // 1 us: 22,480,000 ps.
  const Time flow = Time::ps(22'480'000);
  // One expert on n = 1000 tokens: 6*n*H*F = 6,291,456,000 FLOPs -> 62,914,560 ps
  // (bytes 22,675,456 -> 22.68 us, compute-bound).
  const Time expert1000 = Time::ps(62'914'560);

  SECTION("capacity factor 0.5: GPU 1's tokens are all dropped, so the GPUs wait on each other") {
    // capacity = ceil(0.5 * 2000 * 2 / 2) = 1000 per expert; by position both experts keep
    // GPU 0's 1000 tokens and drop GPU 1's. GPU 0 keeps 1000 copies locally and sends 1000 to
    // GPU 1; GPU 1 sends nothing.
    // GPU 1: waits for GPU 0's dispatch until routed + flow = 128,926,656; experts until
    //   191,841,216; sends 1000 outputs back to GPU 0; nothing comes back to it (all its
    //   assignments were dropped): reduce over r = 0 copies, bytes 2*H*(0+T) = 2,048,000 ->
    //   2.048 us; finishes at 193,889,216.
    // GPU 0: experts right after routing, until 169,361,216; waits for GPU 1's combine flow,
    //   which arrives at 191,841,216 + 22,480,000 = 214,321,216; reduce over r = 2000 copies:
    //   bytes 2*H*(2000+1000) = 6,144,000 -> 6.144 us (FLOPs 4,096,000 -> 0.04 us);
    //   finishes at 220,465,216 ps: the step time.
    const auto sc = scenarios::load_scenario_text(tiny("0.5", 1), "tiny.yaml");
    const auto r = scenarios::run_experiment(sc);
    const auto& g0 = r.stats.gpus()[0];
    const auto& g1 = r.stats.gpus()[1];
    CHECK(g1.finish == Time::ps(193'889'216));
    CHECK(g0.finish == Time::ps(220'465'216));
    CHECK(r.stats.step_time() == Time::ps(220'465'216));
    CHECK(r.stats.critical_gpu() == 0);
    CHECK(g1.stage_total[idx(Stage::dispatch)] == flow);
    CHECK(g0.stage_total[idx(Stage::dispatch)] == Time::zero());
    CHECK(g0.stage_total[idx(Stage::experts)] == expert1000);
    CHECK(g0.stage_total[idx(Stage::combine)] == Time::ps(214'321'216) - (routed + expert1000));
    CHECK(g1.stage_total[idx(Stage::combine)] == Time::zero());
    const auto& layer = r.stats.layers()[0];
    CHECK(layer.routed == 4000);
    CHECK(layer.computed == 2000);
    CHECK(layer.dropped == 2000);
    CHECK(layer.network_bytes == 2 * 2'048'000);  // one dispatch and one combine flow
    CHECK(layer.flows == 2);
  }

  SECTION("dropless, 3 layers: every layer is the same 283,379,776 ps") {
    // Each GPU sends 1000 copies to the other (arrive at routed + flow = 128,926,656), computes
    // its expert on n = 2000 tokens (12,582,912,000 FLOPs -> 125,829,120 ps) until 254,755,776,
    // gets its 1000 outputs back at 277,235,776 and reduces 2000 copies (6.144 us):
    // 283,379,776 ps per layer, 850,139,328 for three.
    const auto sc = scenarios::load_scenario_text(tiny("dropless", 3), "tiny.yaml");
    const auto r = scenarios::run_experiment(sc);
    CHECK(r.stats.step_time() == Time::ps(3 * 283'379'776LL));
    for (int l = 0; l < 3; ++l) {
      const auto& layer = r.stats.layers()[static_cast<std::size_t>(l)];
      CHECK(layer.start == Time::ps(l * 283'379'776LL));
      CHECK(layer.end - layer.start == Time::ps(283'379'776));
      CHECK(layer.dropped == 0);
    }
  }
}

TEST_CASE("Each GPU's stages add up to its finish time", "[models][forward]") {
  // Zipf routing on 2 nodes: GPUs wait for the overloaded ones, and every wait is accounted.
  auto sc = scenarios::load_scenario_text(R"(
cluster:
  nodes: 2
  gpus_per_node: 4
  gpu: H100
  scale_out: {nic_bandwidth: 400Gbps}
model: {moe_layers: 4, hidden: 2048, expert_ffn: 4096, experts: 16, top_k: 2, attention_heads: 16}
parallelism: {ep: 8}
workload: {tokens_per_gpu: 512}
routing: {distribution: zipf, zipf_s: 1.0, capacity_factor: 1.5}
)", "zipf.yaml");
  const auto r = scenarios::run_experiment(sc);
  Time latest;
  for (const auto& g : r.stats.gpus()) {
    Time total;
    for (const auto t : g.stage_total) total += t;
    CHECK(total == g.finish);
    latest = sim::max(latest, g.finish);
  }
  CHECK(latest == r.stats.step_time());
}

TEST_CASE("An overloaded GPU delays every GPU that waits for its outputs", "[models][forward]") {
  // Build the run by hand to see every stage of every GPU.
  struct Capture final : models::Recorder {
    std::vector<models::StageRecord> stages;
    std::vector<routing::DispatchPlan> plans;
    void on_stage(const models::StageRecord& r) override { stages.push_back(r); }
    void on_routing(int, int, const routing::DispatchPlan& p) override { plans.push_back(p); }
    void on_flow(int, Stage, sim::Bytes) override {}
  };
  const auto sc = scenarios::load_scenario_text(R"(
cluster: {nodes: 1, gpus_per_node: 4, gpu: H100}
model: {moe_layers: 1, hidden: 2048, expert_ffn: 4096, experts: 8, top_k: 2, attention_heads: 16}
parallelism: {ep: 4}
workload: {tokens_per_gpu: 2048}
routing: {distribution: zipf, zipf_s: 1.5}
)", "skew.yaml");
  const topology::Cluster cluster(sc.cluster);
  sim::Simulator simulator;
  models::AnalyticalNetwork network(simulator, cluster);
  const models::Roofline roofline(sc.cluster.gpu, sc.roofline);
  Capture cap;
  models::MoeForward fwd(simulator, cluster, network, roofline, sc.forward, cap);
  fwd.start();
  simulator.run();
  REQUIRE(fwd.finished());
  auto stage_of = [&](int gpu, Stage s) {
    for (const auto& r : cap.stages)
      if (r.gpu.value == static_cast<std::uint32_t>(gpu) && r.stage == s) return r;
    FAIL("missing stage");
    return cap.stages.front();
  };
  int busiest = 0;
  for (int g = 1; g < 4; ++g)
    if (stage_of(g, Stage::experts).end > stage_of(busiest, Stage::experts).end) busiest = g;
  const Time busiest_done = stage_of(busiest, Stage::experts).end;
  int waited = 0;
  for (int g = 0; g < 4; ++g) {
    if (g == busiest || cap.plans[0].send(g, busiest) == 0) continue;
    // g's combine cannot end before the busiest GPU has computed g's tokens.
    CHECK(stage_of(g, Stage::combine).end > busiest_done);
    if (stage_of(g, Stage::experts).end < busiest_done) {
      ++waited;
      CHECK(stage_of(g, Stage::combine).end - stage_of(g, Stage::combine).start > Time::zero());
    }
  }
  CHECK(waited > 0);  // zipf(1.5) over 8 experts: the others finish their experts earlier
}

TEST_CASE("Same seed gives identical reports and another seed changes the routing", "[models][forward]") {
  const std::string text = R"(
cluster: {nodes: 1, gpus_per_node: 4, gpu: H100}
model: {moe_layers: 3, hidden: 1024, expert_ffn: 2048, experts: 8, top_k: 2, attention_heads: 8}
parallelism: {ep: 4}
workload: {tokens_per_gpu: 256, seed: 11}
routing: {distribution: zipf, zipf_s: 1.1, capacity_factor: 1.0}
)";
  auto run = [&](std::uint64_t seed) {
    auto sc = scenarios::load_scenario_text(text, "det.yaml");
    sc.forward.seed = seed;
    const auto r = scenarios::run_experiment(sc);
    std::ostringstream out;
    tools::write_summary_csv(out, sc, r);
    tools::write_layers_csv(out, sc, r);
    return out.str();
  };
  const std::string a = run(11), b = run(11), c = run(12);
  CHECK(a == b);
  CHECK(a != c);
}
