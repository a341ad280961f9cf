#include <catch2/catch.hpp>

#include <fmt/format.h>

#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <tuple>
#include <string>

#include "models/analytical_network.hpp"
#include "models/moe_costs.hpp"
#include "models/moe_forward.hpp"
#include "models/recorder.hpp"
#include "routing/token_router.hpp"
#include "sim/rng.hpp"
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

// `yaml` with `from` replaced by `to` (once; it must be there).
std::string replaced(std::string yaml, const std::string& from, const std::string& to) {
  const auto at = yaml.find(from);
  REQUIRE(at != std::string::npos);
  return yaml.replace(at, from.size(), to);
}

// The tiny layer, dropless, with both GPUs one tensor-parallel group (tp: 2), and `model_lines`
// (e.g. "  shared_experts: 1\n") added to its model.
std::string tiny_tp(const std::string& model_lines = "") {
  return replaced(replaced(tiny("dropless", 1), "{ep: 2}", "{ep: 2, tp: 2}"), "  attention_heads: 8\n",
                  "  attention_heads: 8\n" + model_lines);
}

// The field `name` of data row `row` (from 0) of a report's CSV text.
std::string csv_value(const std::string& csv, const std::string& name, int row = 0) {
  std::istringstream in(csv);
  std::string header, line;
  std::getline(in, header);
  for (int r = 0; r <= row; ++r) std::getline(in, line);
  const auto h = tools::csv_fields(header), v = tools::csv_fields(line);
  const auto at = static_cast<std::size_t>(std::find(h.begin(), h.end(), name) - h.begin());
  REQUIRE(at < h.size());
  return v.at(at);
}

std::string summary_csv(const scenarios::Scenario& sc, const scenarios::RunResult& r) {
  std::ostringstream out;
  tools::write_summary_csv(out, sc, r);
  return out.str();
}

// summary.csv's memory_gb_max of a run of the scenario text `yaml`.
double memory_gb_max(const std::string& yaml) {
  const auto sc = scenarios::load_scenario_text(yaml, "d.yaml");
  return std::stod(csv_value(summary_csv(sc, scenarios::run_experiment(sc)), "memory_gb_max"));
}

// Every GPU's stages add up to its finish time, and the last GPU to finish ends the step.
void check_stages_tile(const scenarios::RunResult& r) {
  Time latest;
  for (const auto& g : r.stats.gpus()) {
    Time total;
    for (const auto t : g.stage_total) total += t;
    CHECK(total == g.finish);
    latest = sim::max(latest, g.finish);
  }
  CHECK(latest == r.stats.step_time());
}

// A small random training scenario of the fuzz tests below: `parallelism` follows "ep: 2" (e.g.
// ", pp: 4"), `workload` the micro-batches (keys ending in ", ", e.g. "pipeline_schedule: zb_h1, "),
// the rest fixed.
std::string fuzz_yaml(int nodes, int layers, std::uint64_t shared, std::uint64_t dense, const std::string& vocab,
                      const std::string& parallelism, std::uint64_t tokens, int batches, const std::string& workload, int seed,
                      const std::string& all_to_all = "direct") {
  return fmt::format(R"(
cluster: {{nodes: {}, gpus_per_node: 2, gpu: H100, scale_out: {{nic_bandwidth: 400Gbps, nodes_per_leaf: 1, spines: 2}}}}
model: {{moe_layers: {}, hidden: 256, expert_ffn: 512, experts: 4, top_k: 2, attention_heads: 4, shared_experts: {}, dense_layers: {}, dense_ffn: 512{}}}
parallelism: {{ep: 2{}}}
workload: {{kind: training, tokens_per_gpu: {}, micro_batches: {}, {}seed: {}}}
routing: {{distribution: zipf, zipf_s: 1.1}}
network: {{model: maxmin, all_to_all: {}}}
compute: {{jitter: 0.05, straggler_probability: 0.3, straggler_speed: 0.6}}
output: {{timeline: off}}
)",
                     nodes, layers, shared, dense, vocab, parallelism, tokens, batches, workload, seed, all_to_all);
}

// The draws the pipeline fuzz tests share after their stages, layers and micro-batches: gradient
// sync, shared experts, dense layers, the LM head, one or two EP groups per stage, tokens per GPU.
struct FuzzStep {
  std::string sync;
  std::uint64_t shared, dense;
  std::string vocab;
  int nodes;
  std::uint64_t tokens;
};
FuzzStep draw_fuzz_step(sim::Rng& pick, int pp) {
  const char* syncs[] = {"", "gradient_sync: ring, ", "gradient_sync: hierarchical, gradient_sync_buckets: 2, ",
                         "gradient_sync: ring, optimizer_sharding: true, "};
  FuzzStep f;
  f.sync = syncs[pick.uniform_int(4)];
  f.shared = pick.uniform_int(2);
  f.dense = pick.uniform_int(2);
  f.vocab = pick.uniform_int(2) ? ", vocab: 1000" : "";
  f.nodes = pp * (1 + static_cast<int>(pick.uniform_int(2)));
  f.tokens = 2 * (8 + pick.uniform_int(60));
  return f;
}

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

TEST_CASE("Expert tensor parallelism gathers the rows, splits the FFN and reduce-scatters, as derived by hand",
          "[models][etp]") {
  // The tiny dropless layer above (routed at 106,446,656 ps) with ep 1 and etp 2: each GPU is an
  // EP group of its own holding both experts, half of each expert's FFN columns on each GPU. No
  // all-to-all: each GPU's 1000 tokens go to both of its experts, 2000 rows. Gather: each GPU
  // sends its 2000 rows to the other, 4,096,000 B at 100 GB/s + 2 hops of 1 us = 42,960,000 ps,
  // until 149,406,656. Experts: each of the two on both GPUs' 1000 rows, 2000 rows at F / 2 = 512:
  // 6 x 2000 x 1024 x 512 = 6,291,456,000 FLOPs -> 62,914,560 ps each, 125,829,120 for both, until
  // 275,235,776. Reduce-scatter: each GPU sends the other the partial outputs of its 2000 rows,
  // 42,960,000 ps again, until 318,195,776. Reduce over 2000 copies (6,144,000): 324,339,776.
  const std::string text = replaced(tiny("dropless", 1), "parallelism: {ep: 2}", "parallelism: {ep: 1, etp: 2}");
  const auto sc = scenarios::load_scenario_text(text, "etp.yaml");
  const auto r = scenarios::run_experiment(sc);
  CHECK(r.stats.step_time() == Time::ps(324'339'776));
  for (const auto& g : r.stats.gpus()) {
    CHECK(g.finish == Time::ps(324'339'776));
    CHECK(g.stage_total[idx(Stage::tp)] == Time::ps(2 * 42'960'000LL));
    CHECK(g.stage_total[idx(Stage::experts)] == Time::ps(125'829'120));
    CHECK(g.stage_total[idx(Stage::dispatch)] == Time::zero());
    CHECK(g.computed == 2000);  // the rows it received (its own), computed in halves by both GPUs
  }
  const std::string summary = summary_csv(sc, r);
  CHECK(csv_value(summary, "etp") == "2");
  CHECK(csv_value(summary, "tp_bytes") == std::to_string(4 * 4'096'000));
  CHECK(r.stats.layers()[0].computed == 4000);

  SECTION("each GPU holds half of every expert, and its gradients are synchronised with the other EP groups' holders") {
    // Training with gradient sync on 4 GPUs, ep 2, etp 2: GPUs 0 and 1 hold rank 0's expert (the
    // first of two), halves 0 and 1; GPUs 2 and 3 rank 1's. One block, so no expert sync ring;
    // with two nodes of 4 (two blocks) GPU g syncs its half with GPU g + 4.
    std::string t = replaced(tiny("dropless", 1), "parallelism: {ep: 2}", "parallelism: {ep: 2, etp: 2}");
    t = replaced(t, "nodes: 1\n  gpus_per_node: 2", "nodes: 2\n  gpus_per_node: 4\n  scale_out: {nic_bandwidth: 400Gbps}");
    t = replaced(t, "workload: {tokens_per_gpu: 1000, sequence_length: 1000}",
                 "workload: {kind: training, gradient_sync: ring, tokens_per_gpu: 1000, sequence_length: 1000}");
    const auto two = scenarios::load_scenario_text(t, "etp2.yaml");
    const models::GpuParams held = models::stage_params(two.forward, scenarios::compute_placements(two), 0);
    CHECK(held.experts == 3 * 1024 * 1024 / 2);
    const auto rr = scenarios::run_experiment(two);
    check_stages_tile(rr);
    // Replicated: attention 4,194,304 and router 2,048 parameters, 8,392,704 B over a ring of
    // all 8 GPUs: 14 steps x 8 GPUs x 1,049,088 B. Expert halves: 1,572,864 parameters,
    // 3,145,728 B over 4 rings of 2: 2 steps x 2 GPUs x 1,572,864 B each.
    CHECK(rr.stats.gradient_sync_bytes() == 14 * 8 * 1'049'088LL + 4 * (2 * 2 * 1'572'864LL));
    // Without expert tensor parallelism the 4 EP groups sync whole experts over 2 rings of 4.
    const auto whole = scenarios::run_experiment(scenarios::load_scenario_text(replaced(t, "etp: 2", "etp: 1"), "etp1.yaml"));
    CHECK(whole.stats.gradient_sync_bytes() == 14 * 8 * 1'049'088LL + 2 * (6 * 4 * 1'572'864LL));

    // Two-batch overlap: each half gathers and reduce-scatters its own rows, the same bytes in all.
    const auto tbo = scenarios::run_experiment(scenarios::load_scenario_text(
        replaced(t, "workload: {kind: training,", "workload: {kind: training, overlap: two_batch,"), "etp-tbo.yaml"));
    check_stages_tile(tbo);
    CHECK(tbo.stats.tp_bytes() == rr.stats.tp_bytes());
    CHECK(tbo.stats.gradient_sync_bytes() == rr.stats.gradient_sync_bytes());
  }
}

TEST_CASE("A tiny training step matches the hand derivation exactly", "[models][training]") {
  // The dropless tiny scenario above: its forward layer ends at F = 283,379,776 ps on both GPUs.
  // Backward, both GPUs alike: the reduce's gradient (same cost, 6,144,000) until 289,523,776;
  // the combine's gradients go to the experts (2,048,000 B, 22,480,000) until 312,003,776; the
  // expert GEMMs twice (input and weight gradients, 2 x 125,829,120) until 563,662,016; the
  // dispatch's gradients come back (22,480,000) until 586,142,016; the router's backward (2 x
  // 2,060,096) until 590,262,208; the attention's (2 x 104,386,560) until 799,035,328.
  // Optimizer: per GPU, attention weights H(q + 2kv) + qH = 4,194,304, router H E = 2,048,
  // one expert 3 H F = 3,145,728: 7,342,080 parameters x 28 B = 205,578,240 B at 1 TB/s
  // (its 12 FLOPs per parameter take 0.88 us): 205,578,240 ps. Step: 1,004,613,568 ps.
  std::string text = tiny("dropless", 1);
  text.replace(text.find("workload: {tokens_per_gpu: 1000, sequence_length: 1000}"),
               std::string("workload: {tokens_per_gpu: 1000, sequence_length: 1000}").size(),
               "workload: {kind: training, tokens_per_gpu: 1000, sequence_length: 1000}");
  const auto r = scenarios::run_experiment(scenarios::load_scenario_text(text, "train.yaml"));
  CHECK(r.stats.step_time() == Time::ps(1'004'613'568));
  for (const auto& g : r.stats.gpus()) {
    CHECK(g.finish == Time::ps(1'004'613'568));
    CHECK(g.stage_total[idx(Stage::optimizer)] == Time::ps(205'578'240));
    CHECK(g.backward_total == Time::ps(799'035'328 - 283'379'776));
    CHECK(g.stage_total[idx(Stage::experts)] == Time::ps(3 * 125'829'120LL));
  }
  const auto& fwd = r.stats.layers()[0];
  const auto& bwd = r.stats.backward_layers()[0];
  CHECK(fwd.end == Time::ps(283'379'776));
  CHECK(bwd.start == Time::ps(283'379'776));
  CHECK(bwd.end == Time::ps(799'035'328));
  CHECK(bwd.network_bytes == fwd.network_bytes);  // the same rows back, in bf16
  CHECK(fwd.flows == 4);  // each GPU to the other, dispatch and combine
  CHECK(bwd.flows == 4);
}

TEST_CASE("Each GPU's stages add up to its finish time", "[models][forward]") {
  // Zipf routing on 2 nodes: GPUs wait for the overloaded ones, and every wait is accounted,
  // in a forward pass and in a training step, with either all-to-all.
  for (const char* extra : {"", "workload: {kind: training, tokens_per_gpu: 512}\nnetwork: {all_to_all: hierarchical}\n"}) {
  std::string text = R"(
cluster:
  nodes: 2
  gpus_per_node: 4
  gpu: H100
  scale_out: {nic_bandwidth: 400Gbps}
model: {moe_layers: 4, hidden: 2048, expert_ffn: 4096, experts: 16, top_k: 2, attention_heads: 16}
parallelism: {ep: 8}
routing: {distribution: zipf, zipf_s: 1.0, capacity_factor: 1.5}
)";
  if (*extra) text += extra;
  else text += "workload: {tokens_per_gpu: 512}\n";
  const auto r = scenarios::run_experiment(scenarios::load_scenario_text(text, "zipf.yaml"));
  check_stages_tile(r);
  }
}

TEST_CASE("An overloaded GPU delays every GPU that waits for its outputs", "[models][forward]") {
  // Build the run by hand to see every stage of every GPU.
  struct Capture final : models::Recorder {
    std::vector<models::StageRecord> stages;
    std::vector<routing::DispatchPlan> plans;
    void on_stage(const models::StageRecord& r) override { stages.push_back(r); }
    void on_routing(int, int, int, const routing::DispatchPlan& p, int) override { plans.push_back(p); }
    void on_flow(const models::FlowRecord&) override {}
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

// 2 nodes x 2 GPUs, one expert per GPU, top_k 4, 1000 tokens per GPU: the all-to-all tests'
// hand derivations below.
const std::string kTwoByTwo = R"(
cluster:
  nodes: 2
  gpus_per_node: 2
  gpu: {name: toy, peak_bf16: 100TFLOP/s, memory_bandwidth: 1TB/s, nvlink_bandwidth: 100GB/s}
  node: {nvlink_latency: 1us, pcie_bandwidth: 100GB/s, pcie_latency: 1us}
  scale_out: {nic_bandwidth: 400Gbps, link_latency: 1us, nodes_per_leaf: 2}
model: {moe_layers: 1, hidden: 1024, expert_ffn: 1024, experts: 4, top_k: 4, attention_heads: 8}
parallelism: {ep: 4}
workload: {tokens_per_gpu: 1000, sequence_length: 1000}
compute: {flops_efficiency: 1, memory_efficiency: 1}
)";

TEST_CASE("Hierarchical all-to-all on 2 nodes matches the hand derivation exactly", "[models][forward][all_to_all]") {
  // 2 nodes x 2 GPUs, one expert per GPU, top_k 4: every token goes to every expert, so each
  // GPU receives T = 1000 rows from each GPU (2,048,000 B in bf16). NVLink 100 GB/s, 1 us per hop;
  // PCIe 100 GB/s, 1 us; NIC 50 GB/s (400 Gb/s), 1 us; one leaf. Max-min network.
  //   same node: 2 us + bytes / 100 GB/s; other node: 4 us + bytes / the NIC's share.
  // hierarchical dispatch: a GPU sends T rows to its node peer (22.48 us) and T rows once to
  //   the other node's GPU on its rail (one flow per NIC each way: 44.96 us), which forwards
  //   them to its peer (22.48 us, alone on those NVLink ports): the last rows arrive after
  //   67.44 us on every GPU.
  // hierarchical combine: a GPU sends its node peer two flows at once (the peer's own rows, and
  //   the rows of the remote source whose rail the peer is on), sharing the NVLink port: 2 us +
  //   2,048,000 B at 50 GB/s = 42.96 us; the forwarding GPU then sends one reduced row per
  //   token over the network (44.96 us): complete after 87.92 us.
  // direct: a GPU sends T rows to each of the 3 others; the two remote flows share its NIC and
  //   the receiver's (25 GB/s each): 4 us + 81.92 us = 85.92 us, both phases.
  // Scale-out bytes per phase: hierarchical 4 flows of T rows, direct 8.
  const std::string base = kTwoByTwo;
  const auto hier = scenarios::run_experiment(scenarios::load_scenario_text(base + "network: {all_to_all: hierarchical}\n", "h.yaml"));
  const auto direct = scenarios::run_experiment(scenarios::load_scenario_text(base, "d.yaml"));
  for (const auto& g : hier.stats.gpus()) {
    CHECK(g.stage_total[idx(Stage::dispatch)] == Time::ps(67'440'000));
    CHECK(g.stage_total[idx(Stage::combine)] == Time::ps(87'920'000));
  }
  for (const auto& g : direct.stats.gpus()) {
    CHECK(g.stage_total[idx(Stage::dispatch)] == Time::ps(85'920'000));
    CHECK(g.stage_total[idx(Stage::combine)] == Time::ps(85'920'000));
  }
  CHECK(hier.stats.layers()[0].scale_out_bytes == 2 * 4 * 2'048'000);
  CHECK(direct.stats.layers()[0].scale_out_bytes == 2 * 8 * 2'048'000);
  // Dispatch: 4 local + 4 scale-out + 4 forwarded flows; combine: 4 local + 4 to a relay + 4 out.
  CHECK(hier.stats.layers()[0].flows == 24);
  CHECK(direct.stats.layers()[0].flows == 24);
  CHECK(hier.stats.step_time() - direct.stats.step_time() == Time::ps(67'440'000 + 87'920'000 - 2 * 85'920'000));
}

TEST_CASE("Hierarchical all-to-all forwarding in chunks matches the hand derivation exactly", "[models][forward][all_to_all]") {
  // The 2 x 2 cluster above with network.forward_chunks: 2 (and 4, which changes nothing here but
  // the chunks' count: every scale-out flow is 1000 rows).
  // dispatch: part 0 of the 2,048,000 B scale-out flow (half) reaches the forwarding GPU after
  //   4 us + 1,024,000 B at 50 GB/s = 24.48 us; it forwards those 500 rows at once (2 us +
  //   10.24 us, alone on its NVLink port: its own flow to its peer ended at 22.48 us), done at
  //   36.72 us; part 1 arrives at 44.96 us and its 500 rows at 44.96 + 12.24 = 57.2 us (was
  //   67.44 us storing the whole flow first).
  // combine: a GPU's two flows to its peer share its NVLink port (50 GB/s each); part 0 of the
  //   one the peer forwards arrives after 2 + 20.48 = 22.48 us, and the peer sends chunk 0 (500
  //   reduced rows) over the network: 4 us + 20.48 us, done at 46.96 us; part 1 arrives at
  //   42.96 us, chunk 1 is active from 46.96 us, when chunk 0 leaves the NIC: done at 67.44 us
  //   (was 87.92 us).
  const std::string base = kTwoByTwo;
  const auto two = scenarios::run_experiment(
      scenarios::load_scenario_text(base + "network: {all_to_all: hierarchical, forward_chunks: 2}\n", "h2.yaml"));
  for (const auto& g : two.stats.gpus()) {
    CHECK(g.stage_total[idx(Stage::dispatch)] == Time::ps(57'200'000));
    CHECK(g.stage_total[idx(Stage::combine)] == Time::ps(67'440'000));
  }
  CHECK(two.stats.layers()[0].scale_out_bytes == 2 * 4 * 2'048'000);
  // Dispatch: 4 local + 4 scale-out + 4 x 2 forwarded; combine: 4 local + 4 to a relay + 4 x 2 out.
  CHECK(two.stats.layers()[0].flows == 32);
  const auto four = scenarios::run_experiment(
      scenarios::load_scenario_text(base + "network: {all_to_all: hierarchical, forward_chunks: 4}\n", "h4.yaml"));
  CHECK(four.stats.layers()[0].flows == 48);
  CHECK(four.stats.layers()[0].scale_out_bytes == 2 * 4 * 2'048'000);
  CHECK(four.stats.step_time() < two.stats.step_time());
}

TEST_CASE("Hierarchical all-to-all never sends more across nodes than direct", "[models][forward][all_to_all]") {
  sim::Rng pick(31, "test/hierarchical");
  int etp_trials = 0;
  for (int trial = 0; trial < 12; ++trial) {
    const int gpn = 2 << pick.uniform_int(2);             // 2 or 4
    const int nodes = 2 + static_cast<int>(pick.uniform_int(2));
    const int ep = gpn * nodes;
    const int experts = ep * (1 + static_cast<int>(pick.uniform_int(2)));
    const int top_k = 1 + static_cast<int>(pick.uniform_int(4));
    std::string yaml = fmt::format(R"(
cluster:
  nodes: {}
  gpus_per_node: {}
  gpu: H100
  scale_out: {{nic_bandwidth: 400Gbps, nodes_per_leaf: 1, spines: 2}}
model: {{moe_layers: 2, hidden: 512, expert_ffn: 1024, experts: {}, top_k: {}, attention_heads: 4}}
parallelism: {{ep: {}}}
workload: {{tokens_per_gpu: {}, seed: {}}}
routing: {{distribution: zipf, zipf_s: {}, capacity_factor: {}, drop_policy: {}}}
placement: {{policy: {}}}
)", nodes, gpn, experts, top_k, ep, 16 + pick.uniform_int(200), trial, 0.5 + pick.uniform01(),
                                         1 + pick.uniform01(), pick.uniform_int(2) ? "pad" : "position",
                                         pick.uniform_int(2) ? "eplb, redundant_experts: " + std::to_string(ep) : "contiguous");
    // Every other trial on 4-GPU nodes halves EP and splits each expert over 2 GPUs: EP groups
    // of ranks 2 GPUs apart, 2 of them a node (by the trial: the draws stay).
    if (trial % 2 == 0 && gpn == 4) {
      yaml = replaced(yaml, fmt::format("parallelism: {{ep: {}}}", ep), fmt::format("parallelism: {{ep: {}, etp: 2}}", ep / 2));
      ++etp_trials;
    }
    INFO(yaml);
    const auto d = scenarios::run_experiment(scenarios::load_scenario_text(yaml, "d.yaml"));
    const auto h = scenarios::run_experiment(
        scenarios::load_scenario_text(yaml + "network: {all_to_all: hierarchical, dispatch_dtype: bf16}\n", "h.yaml"));
    for (std::size_t l = 0; l < 2; ++l) {
      const auto& a = d.stats.layers()[l];
      const auto& b = h.stats.layers()[l];
      CHECK(b.routed == a.routed);
      CHECK(b.computed == a.computed);
      CHECK(b.padded == a.padded);
      CHECK(b.scale_out_bytes <= a.scale_out_bytes);
      if (top_k > 1 && a.scale_out_bytes > 0) CHECK(b.scale_out_bytes < a.scale_out_bytes);
    }
  }
  CHECK(etp_trials >= 2);
}

TEST_CASE("fp8 dispatch sends values plus a scale per 128 channels", "[models][all_to_all]") {
  CHECK(models::row_bytes(7168, 1) == 7168 + 56 * 4);
  CHECK(models::row_bytes(7168, 2) == 14336);
  CHECK(models::row_bytes(100, 1) == 100 + 4);
  const std::string base = tiny("dropless", 1);
  const auto bf16 = scenarios::run_experiment(scenarios::load_scenario_text(base, "a.yaml"));
  const auto fp8 = scenarios::run_experiment(
      scenarios::load_scenario_text(base + "network: {dispatch_dtype: fp8}\n", "b.yaml"));
  // One dispatch and one combine flow each way: dispatch rows shrink from 2048 to 1024 + 32 bytes.
  CHECK(bf16.stats.layers()[0].network_bytes == 4 * 1000 * 2048);
  CHECK(fp8.stats.layers()[0].network_bytes == 2 * 1000 * 1056 + 2 * 1000 * 2048);
}

TEST_CASE("A slow GPU delays the step as derived by hand", "[models][stragglers]") {
  // The dropless tiny scenario with GPU 1 at half speed: its compute stages take twice as long.
  // GPU 1 routes at 2 x 106,446,656 = 212,893,312; GPU 0's rows reach it at 128,926,656, its own
  // reach GPU 0 at 235,373,312. GPU 0 computes 125,829,120 until 361,202,432; GPU 1 computes
  // 251,658,240 until 464,551,552. GPU 1's outputs reach GPU 0 at 487,031,552; GPU 0 reduces
  // (6,144,000) until 493,175,552, the step. GPU 1 has GPU 0's outputs since 383,682,432 and
  // reduces (12,288,000) until 476,839,552.
  std::string text = tiny("dropless", 1);
  const std::string from = "compute: {flops_efficiency: 1, memory_efficiency: 1}";
  text.replace(text.find(from), from.size(), "compute: {flops_efficiency: 1, memory_efficiency: 1, gpu_speed: {1: 0.5}}");
  const auto r = scenarios::run_experiment(scenarios::load_scenario_text(text, "slow.yaml"));
  CHECK(r.stats.gpus()[0].finish == Time::ps(493'175'552));
  CHECK(r.stats.gpus()[1].finish == Time::ps(476'839'552));
  CHECK(r.stats.gpus()[0].stage_total[idx(Stage::dispatch)] == Time::ps(235'373'312 - 106'446'656));

  // Every GPU a straggler (probability 1) at half speed is the same as both at 0.5.
  std::string all = tiny("dropless", 1);
  all.replace(all.find(from), from.size(),
              "compute: {flops_efficiency: 1, memory_efficiency: 1, straggler_probability: 1, straggler_speed: 0.5}");
  std::string both = tiny("dropless", 1);
  both.replace(both.find(from), from.size(), "compute: {flops_efficiency: 1, memory_efficiency: 1, gpu_speed: {0: 0.5, 1: 0.5}}");
  CHECK(scenarios::run_experiment(scenarios::load_scenario_text(all, "a.yaml")).stats.step_time() ==
        scenarios::run_experiment(scenarios::load_scenario_text(both, "b.yaml")).stats.step_time());
}

TEST_CASE("Jitter varies compute stages around their nominal time, reproducibly", "[models][stragglers]") {
  std::string text = tiny("dropless", 200);
  const std::string from = "compute: {flops_efficiency: 1, memory_efficiency: 1}";
  const auto nominal = scenarios::run_experiment(scenarios::load_scenario_text(text, "n.yaml"));
  text.replace(text.find(from), from.size(), "compute: {flops_efficiency: 1, memory_efficiency: 1, jitter: 0.1}");
  const auto a = scenarios::run_experiment(scenarios::load_scenario_text(text, "j.yaml"));
  const auto b = scenarios::run_experiment(scenarios::load_scenario_text(text, "j.yaml"));
  CHECK(a.stats.step_time() == b.stats.step_time());
  const auto expert_time = [](const scenarios::RunResult& r) {
    return static_cast<double>(r.stats.gpus()[0].stage_total[idx(Stage::experts)].count_ps());
  };
  // 200 draws of a mean-1 log-normal with sigma 0.1: the sum is within 3 % of nominal (3 sigma).
  CHECK(expert_time(a) / expert_time(nominal) == Approx(1.0).margin(0.03));
  CHECK(expert_time(a) != expert_time(nominal));
  // Waiting for the slowest of two jittered GPUs makes the step longer than nominal.
  CHECK(a.stats.step_time() > nominal.stats.step_time());
}

namespace {

// An attention block of 8 query heads and 2 kv heads of 128, H = 1024, bf16.
routing::MoeModelSpec gqa_attention() {
  routing::MoeModelSpec m;
  m.hidden = 1024;
  m.attention_heads = 8;
  m.kv_heads = 2;
  m.head_dim = 128;
  m.dtype_bytes = 2;
  return m;
}

}  // namespace

TEST_CASE("Decode attention reads the KV cache", "[models][decode]") {
  const routing::MoeModelSpec m = gqa_attention();
  // T = 4 sequences, C = 1000 cached tokens: q = 1024, kv = 256.
  const auto c = models::decode_attention_cost(m, 4, 1000);
  CHECK(c.flops == 2 * 4 * 1024 * (1024 + 512) + 2 * 4 * 1024 * 1024 + 4 * 4 * 1024 * 1000);
  CHECK(c.bytes == 2 * (1024 * 1536 + 1024 * 1024) + 2 * 4 * 1000 * 2 * 256 + 2 * 4 * (2048 + 2 * 1536));
  const auto sc = scenarios::load_scenario_text(R"(
cluster: {nodes: 1, gpus_per_node: 2, gpu: H100}
model: {moe_layers: 2, hidden: 1024, expert_ffn: 1024, experts: 2, top_k: 1, attention_heads: 8}
parallelism: {ep: 2}
workload: {kind: decode, tokens_per_gpu: 32, context_length: 4096}
)", "d.yaml");
  CHECK(sc.forward.context_length == 4096);
  const auto r = scenarios::run_experiment(sc);
  CHECK(r.stats.step_time() > Time::zero());
}

TEST_CASE("Decode contexts that differ: each GPU's attention reads its own sequences, the longest sets the pace", "[models][decode][contexts]") {
  const std::string base = R"(
cluster: {nodes: 2, gpus_per_node: 8, gpu: H100, scale_out: {nic_bandwidth: 400Gbps}}
model: {moe_layers: 4, hidden: 2048, expert_ffn: 1024, experts: 16, top_k: 2, attention_heads: 16, kv_heads: 4}
parallelism: {ep: 16}
routing: {distribution: uniform}
network: {model: analytical}
output: {timeline: off}
workload: {kind: decode, tokens_per_gpu: 64, context_length: 8192)";
  const auto run = [&](const std::string& extra) {
    const auto sc = scenarios::load_scenario_text(base + extra + "}\n", "d.yaml");
    return std::make_pair(sc, scenarios::run_experiment(sc));
  };
  const auto [same_sc, same] = run("");
  const auto [varied_sc, varied] = run(", context_sigma: 1");
  const auto [even_sc, even] = run(", context_sigma: 1, context_balance: kv_cache");
  CHECK(varied_sc.forward.context_sigma == 1);
  CHECK(even_sc.forward.context_balanced);
  const auto attention = [](const scenarios::RunResult& r, int g) {
    return r.stats.gpus()[static_cast<std::size_t>(g)].stage_total[idx(Stage::attention)];
  };
  // Every GPU's attention is its own sequences' mean context's: the GPU with the most context has
  // the longest attention, the one with the least the shortest.
  const auto loads = models::decode_context_loads(varied_sc.forward, 16);
  REQUIRE(loads.size() == 16);
  REQUIRE(varied.contexts.size() == 16);  // the run's own draws, which its reports read
  for (std::size_t g = 0; g < 16; ++g) CHECK(varied.contexts[g].sum == loads[g].sum);
  CHECK(same.contexts.empty());
  // With several steps the run keeps the last step's draws (routing.step + steps - 1).
  const auto [steps_sc, two_steps] = run(", context_sigma: 1, steps: 2");
  auto last = steps_sc.forward;
  last.routing.step += 1;
  const auto last_draws = models::decode_context_loads(last, 16);
  REQUIRE(two_steps.contexts.size() == 16);
  for (std::size_t g = 0; g < 16; ++g) CHECK(two_steps.contexts[g].sum == last_draws[g].sum);
  CHECK(two_steps.contexts[0].sum != loads[0].sum);
  int most = 0, least = 0;
  for (int g = 1; g < 16; ++g) {
    if (loads[static_cast<std::size_t>(g)].sum > loads[static_cast<std::size_t>(most)].sum) most = g;
    if (loads[static_cast<std::size_t>(g)].sum < loads[static_cast<std::size_t>(least)].sum) least = g;
  }
  for (int g = 0; g < 16; ++g) {
    CHECK(attention(varied, g) <= attention(varied, most));
    CHECK(attention(varied, g) >= attention(varied, least));
  }
  CHECK(attention(varied, most) > attention(same, most));
  CHECK(attention(varied, least) < attention(same, least));
  // Each layer waits for the all-to-all, so the GPU with the most context sets the step; dealt to
  // even out the caches, every GPU's mean context is within 1 % of the others' (the pool's mean
  // itself off the context length by the sampling of a heavy tail), and the step comes back near
  // the one of equal contexts.
  CHECK(varied.stats.step_time().to_us() > same.stats.step_time().to_us() * 1.2);
  const auto dealt = models::decode_context_loads(even_sc.forward, 16);
  double lo = 1e300, hi = 0;
  for (const auto& l : dealt) {
    lo = std::min(lo, l.sum);
    hi = std::max(hi, l.sum);
  }
  CHECK(hi / lo < 1.01);
  CHECK(even.stats.step_time() < varied.stats.step_time());
  CHECK(even.stats.step_time().to_us() == Approx(same.stats.step_time().to_us() * hi / (64 * 8192.0)).epsilon(0.01));
  // Memory holds each GPU's own caches: the busiest is the one with the most context, by its
  // context beyond 64 sequences of 8192 tokens, in every one of the 4 layers.
  const tools::MemoryFloor floor_same = tools::memory_floor(same_sc), floor_varied = tools::memory_floor(varied_sc);
  CHECK(floor_varied.gpu == most);
  const double token_bytes = static_cast<double>(routing::kv_cache_token_bytes(varied_sc.forward.model)) * 4;
  CHECK(floor_varied.bytes - floor_same.bytes ==
        Approx(token_bytes * (loads[static_cast<std::size_t>(most)].sum - 64 * 8192.0)).epsilon(1e-9));
  // With several steps the floor reads the draws the run keeps, the last step's.
  int most_last = 0;
  for (int g = 1; g < 16; ++g)
    if (last_draws[static_cast<std::size_t>(g)].sum > last_draws[static_cast<std::size_t>(most_last)].sum) most_last = g;
  const tools::MemoryFloor floor_steps = tools::memory_floor(steps_sc);
  CHECK(floor_steps.gpu == most_last);
  CHECK(floor_steps.bytes - floor_same.bytes ==
        Approx(token_bytes * (last_draws[static_cast<std::size_t>(most_last)].sum - 64 * 8192.0)).epsilon(1e-9));
}

namespace {

// DeepSeek-V3's attention (config.json: hidden 7168, 128 heads, q_lora_rank 1536, kv_lora_rank
// 512, qk_nope_head_dim 128, qk_rope_head_dim 64, v_head_dim 128), bf16.
routing::MoeModelSpec deepseek_v3_mla() {
  routing::MoeModelSpec m;
  m.hidden = 7168;
  m.attention_heads = 128;
  m.kv_heads = 128;
  m.mla = {.q_lora_rank = 1536, .kv_lora_rank = 512, .qk_nope_head_dim = 128, .qk_rope_head_dim = 64, .v_head_dim = 128};
  m.dtype_bytes = 2;
  return m;
}

}  // namespace

TEST_CASE("DeepSeek Sparse Attention: MLA absorbed over the top-k keys and the indexer over all, as derived by hand", "[models][mla][dsa]") {
  routing::MoeModelSpec m = deepseek_v3_mla();
  m.mla.index_topk = 2048;
  m.mla.index_n_heads = 64;
  m.mla.index_head_dim = 128;
  REQUIRE(routing::is_sparse_mla(m));
  CHECK_FALSE(routing::is_sparse_mla(deepseek_v3_mla()));
  // The indexer's weights: 1536 x 64 x 128 + 7168 x 128 + 7168 x 64 = 13,959,168 a layer.
  CHECK(routing::indexer_weights(m) == 13'959'168);
  CHECK(routing::attention_weights(m) == 187'105'280 + 13'959'168);
  // Its cache: 128 FP8 values and one fp32 scale, 132 bytes a token, beside MLA's 576 x 2.
  CHECK(routing::index_cache_token_bytes(m) == 132);
  CHECK(routing::kv_cache_token_bytes(m) == 1152 + 132);
  // Absorbed widths: Q = 128 x (512 + 64) = 73,728, O = 128 x 512 = 65,536, the latent as K.
  const routing::AttentionWidths a = routing::attention_widths(m);
  CHECK(a.q == 73'728);
  CHECK(a.out == 65'536);
  CHECK(a.k == 576);
  CHECK(a.v == 0);
  const std::int64_t qo = 73'728 + 65'536, w = 187'105'280 + 13'959'168;
  // Decode, 4 sequences of 10,000 cached tokens: the indexer scores all 10,000 (2 x 64 x 128 FLOPs
  // a key, its 132-byte keys read), the attention the top 2048 (their 1152-byte latents).
  const auto d = models::decode_attention_cost(m, 4, 10'000);
  CHECK(d.core_flops == 2 * 4 * 2048 * qo);
  CHECK(d.gemm_flops == 2 * 4 * w + std::int64_t{2} * 4 * 10'000 * 64 * 128);
  CHECK(d.flops == d.gemm_flops + d.core_flops);
  const auto d_dense = models::decode_attention_cost(deepseek_v3_mla(), 4, 10'000);
  const std::int64_t activations = d_dense.bytes - routing::linear_weight_bytes(deepseek_v3_mla(), 187'105'280) - 4 * 10'000 * 1152;
  CHECK(d.bytes == routing::linear_weight_bytes(m, w) + 4 * (2048 * 1152 + 10'000 * 132) + activations);
  // A context shorter than the top-k: every key.
  CHECK(models::decode_attention_cost(m, 4, 1000).core_flops == 2 * 4 * 1000 * qo);
  // Prefill of 32,768-token prompts, in the sparse mode: token i attends to min(i, 2048) keys (the
  // first 2048 all of theirs), the indexer scores (S + 1) / 2 on average.
  const std::int64_t s = 32'768;
  const std::int64_t keys2 = 2 * (std::int64_t{2048} * 2049 / 2 + (s - 2048) * 2048);  // x 2 over the prompt's tokens
  REQUIRE(routing::sparse_mode(m, s, 0));
  const auto p = models::attention_cost(m, s, s);
  CHECK(p.core_flops == keys2 * qo);
  CHECK(p.gemm_flops == 2 * s * w + s * (s + 1) * 64 * 128);
  // Short prompts run the masked MHA mode, V3's expanded attention over every earlier key (Q + O
  // = 128 x 192 + 128 x 128 = 40,960 a pair, against 139,264 absorbed), with the indexer
  // besides: 4096-token prompts cost V3's attention plus the indexer's weights and scores. The
  // sparse mode takes over where it does fewer core FLOPs: from 12,813 tokens.
  CHECK_FALSE(routing::sparse_mode(m, 4096, 0));
  const auto short_p = models::attention_cost(m, 4096, 4096), v3 = models::attention_cost(deepseek_v3_mla(), 4096, 4096);
  CHECK(short_p.core_flops == v3.core_flops);
  CHECK(short_p.core_flops == std::int64_t{4096} * 4097 * 40'960);
  CHECK(short_p.gemm_flops - v3.gemm_flops == std::int64_t{2} * 4096 * 13'959'168 + std::int64_t{4096} * 4097 * 64 * 128);
  CHECK(short_p.bytes - v3.bytes == routing::linear_weight_bytes(m, 13'959'168));
  CHECK_FALSE(routing::sparse_mode(m, 12'812, 0));
  CHECK(routing::sparse_mode(m, 12'813, 0));
  // After a 30,000-token cached prefix (2 prompts of 500 new tokens), the sparse mode: every
  // token over the top 2048, and of each prefix the indexer reads all 30,000 keys, the attention
  // 2048 latents.
  REQUIRE(routing::sparse_mode(m, 500, 30'000));
  const auto c1 = models::attention_cost(m, 1000, 500, 30'000);
  CHECK(c1.core_flops == std::int64_t{1000} * 2 * 2048 * qo);
  CHECK(c1.gemm_flops == 2 * 1000 * w + std::int64_t{1000} * 60'501 * 64 * 128);
  CHECK(c1.bytes == routing::linear_weight_bytes(m, w) + 1000 * 2 * (2 * 7168 + 2 * (2112 + 73'728 + 576)) +
                        2 * (std::int64_t{2048} * 1152 + 30'000 * 132));
}

TEST_CASE("MLA's weights, FLOPs and bytes follow DeepSeek-V3's config", "[models][mla]") {
  routing::MoeModelSpec m = deepseek_v3_mla();
  // Weights: queries' down 7168 x 1536 = 11,010,048 and up 1536 x 128 x (128 + 64) = 37,748,736;
  // keys' and values' down 7168 x (512 + 64) = 4,128,768 and up 512 x 128 x (128 + 128) =
  // 16,777,216; output 128 x 128 x 7168 = 117,440,512: 187,105,280, the count of DeepSeek-V3's
  // 671 B parameters' attention blocks.
  CHECK(routing::attention_weights(m) == 187'105'280);
  CHECK(routing::mla_down_weights(m) == 11'010'048 + 4'128'768);
  CHECK(routing::kv_cache_width(m) == 576);
  const std::int64_t w = 187'105'280;
  // Widths per token: latents L = 1536 + 512 + 64 = 2112, Q = 128 x 192 = 24,576,
  // K = 128 x 128 + 64 = 16,448, V = O = 128 x 128 = 16,384.
  SECTION("prefill: every weight once per token, the core over per-head keys and values") {
    // T = 1000 tokens of 4096-token sequences: 2 T W + T (S + 1)(Q + O).
    const auto c = models::attention_cost(m, 1000, 4096);
    CHECK(c.flops == 2 * 1000 * w + std::int64_t{1000} * 4097 * (24'576 + 16'384));
    CHECK(c.bytes == 2 * w + 2 * 1000 * (2 * 7168 + 2 * (2112 + 24'576 + 16'448 + 16'384)));
    // The projections take 2 FLOPs per weight and token: 374.2 MFLOP a token, where multi-head
    // attention of 128 heads of 128 on H = 7168 would take 939.5 MFLOP.
    CHECK(models::attention_projection_cost(m, 1).flops == 374'210'560);
    routing::MoeModelSpec mha = m;
    mha.mla = {};
    mha.head_dim = 128;
    CHECK(models::attention_projection_cost(mha, 1).flops == 2 * (7168 * 3 * 16'384 + 16'384 * 7168));
  }
  SECTION("decode: absorbed, against the cached latent and RoPE key") {
    // T = 4 sequences, C = 1000 cached tokens: each head scores a 576-wide query against the
    // cache and sums 512-wide latents: 2 T C x 128 x (576 + 512); the cache read 2 x 4 x 1000 x 576 B.
    const auto c = models::decode_attention_cost(m, 4, 1000);
    CHECK(c.flops == 2 * 4 * w + std::int64_t{2} * 4 * 1000 * 128 * (576 + 512));
    CHECK(c.bytes == 2 * w + 2 * 4 * 1000 * 576 + 2 * 4 * (2 * 7168 + 2 * (2112 + 128 * 576 + 128 * 512)));
  }
  SECTION("tensor parallelism splits the heads, every GPU runs the down projections whole") {
    m.tp = 4;
    // 15,138,816 down + 171,966,464 / 4 = 58,130,432 per GPU; a GPU's 32 heads see the group's 4 T tokens.
    CHECK(routing::attention_weights(m) == 15'138'816 + 42'991'616);
    CHECK(routing::kv_cache_width(m) == 576);
    const auto one = models::attention_projection_cost(deepseek_v3_mla(), 1000), four = models::attention_projection_cost(m, 1000);
    CHECK(four.flops == std::int64_t{2} * 4000 * (15'138'816 + 42'991'616));
    // The same FLOPs as without tensor parallelism, plus three more GPUs' worth of down projections.
    CHECK(four.flops - one.flops == std::int64_t{2} * 3000 * 15'138'816);
    const auto a = routing::attention_widths(m);
    CHECK(a.q == 32 * 192);
    CHECK(a.k == 32 * 128 + 64);
    CHECK(a.latent == 2112);
  }
  SECTION("with the rest of DeepSeek-V3's config the weights add up to its 671 B parameters") {
    m.moe_layers = 58;
    m.dense_layers = 3;
    m.dense_ffn = 18432;
    m.expert_ffn = 2048;
    m.experts = 256;
    m.top_k = 8;
    m.shared_experts = 1;
    m.vocab = 129280;
    // Per MoE layer MLA 187,105,280, router 7168 x 256, the shared expert and 256 routed ones of
    // 3 x 7168 x 2048 each; per dense layer MLA and 3 x 7168 x 18432; embedding and LM head
    // 129,280 x 7168 each: 671,025,397,760 (the DeepSeek-V3 report: 671 B, without the
    // multi-token-prediction module), as the memory model counts them.
    const std::int64_t expert = 3 * 7168 * 2048;
    CHECK(models::moe_layer_replicated(m, 0) == 187'105'280 + 7168 * 256 + expert);
    const std::int64_t total = 58 * (models::moe_layer_replicated(m, 0) + 256 * expert) + models::dense_layers_params(m) +
                               2 * models::embedding_params(m);
    CHECK(total == 671'025'397'760);
    // What validate prints: the same total, and per token the attention, router, 8 routed and the
    // shared expert of each MoE layer, the dense layers and the LM head: 58 x 585,302,016 +
    // 3 x 583,467,008 + 926,679,040 = 36,624,596,992.
    CHECK(models::model_params(m).total == total);
    CHECK(models::model_params(m).active == 36'624'596'992);
    // Its multi-token-prediction module (num_nextn_predict_layers: 1), counted apart: one more
    // MoE layer, 187,105,280 + 1,835,008 + 257 x 44,040,192 = 11,507,269,632, and the projection
    // 2 x 7168 x 7168 = 102,760,448: 11,610,030,080 (the model card's 14 B also counts the
    // module's own copies of the embedding and the head, 2 x 926,679,040: 13,463,388,160).
    CHECK(models::model_params(m).mtp == 0);
    m.mtp_modules = 1;
    CHECK(models::model_params(m).mtp == 11'610'030'080);
    CHECK(models::model_params(m).total == total);  // the main model's, as run without the module
    m.mtp_layers = 1;  // run (training): the module is moe_layers' last, not the main model's
    m.moe_layers = 59;
    CHECK(models::model_params(m).total == total);
    CHECK(models::model_params(m).active == 36'624'596'992);
  }
  SECTION("without a query latent the queries come from the hidden state") {
    m.mla.q_lora_rank = 0;  // DeepSeek-V2-Lite's shape
    CHECK(routing::attention_weights(m) == 7168 * 576 + 128 * (7168 * 192 + 512 * 256 + 128 * 7168));
  }
}

TEST_CASE("FP8 GEMMs run the linear layers at the FP8 peak, the rest as before, as derived by hand", "[models][fp8]") {
  // The tiny dropless layer on a GPU of 100 TFLOP/s BF16 and 200 FP8, every efficiency 1. Its
  // BF16 step is 283,379,776 ps (attention 104,386,560, router 2,060,096, dispatch 22,480,000,
  // experts 125,829,120, combine 22,480,000, reduce 6,144,000). With FP8 GEMMs the attention's
  // projections, 2 x 1000 x 4,194,304 = 8,388,608,000 FLOPs, take 41,943,040 ps and its core,
  // 2 x 1000 x 1024 x 1001 = 2,050,048,000 FLOPs, still 20,500,480 ps: 62,443,520 ps (its
  // 24,772,608 bytes take less); the experts' 12,582,912,000 FLOPs on 2000 rows 62,914,560 ps
  // (39,059,456 bytes take less); the router (not a linear layer's GEMM in DeepSeek's FP8
  // recipe) and the reduce as before: 178,522,176 ps.
  std::string text = replaced(tiny("dropless", 1), "peak_bf16: 100TFLOP/s,", "peak_bf16: 100TFLOP/s, peak_fp8: 200TFLOP/s,");
  text = replaced(text, "compute: {flops_efficiency: 1,", "compute: {gemm_dtype: fp8, flops_efficiency: 1,");
  const auto sc = scenarios::load_scenario_text(text, "tiny.yaml");
  CHECK(sc.roofline.gemm_dtype == models::GemmDtype::fp8);
  const auto r = scenarios::run_experiment(sc);
  CHECK(r.stats.step_time() == Time::ps(178'522'176));
  for (const auto& g : r.stats.gpus()) {
    CHECK(g.stage_total[idx(Stage::attention)] == Time::ps(62'443'520));
    CHECK(g.stage_total[idx(Stage::experts)] == Time::ps(62'914'560));
    CHECK(g.stage_total[idx(Stage::router)] == Time::ps(2'060'096));
  }
  check_stages_tile(r);
  // The model's FLOPs are the same; only their time changes.
  const auto bf16 = scenarios::run_experiment(scenarios::load_scenario_text(tiny("dropless", 1), "tiny.yaml"));
  CHECK(bf16.stats.step_time() == Time::ps(283'379'776));
  CHECK(r.model_flops == bf16.model_flops);
}

TEST_CASE("FP4 GEMMs and NVFP4 weights, as derived by hand", "[models][fp4]") {
  // The tiny dropless layer (above) on a GPU of 400 TFLOP/s FP4 and 1 TB/s. FP4 GEMMs: the
  // attention's projections, 8,388,608,000 FLOPs, take 20,971,520 ps and its core still
  // 20,500,480: 41,472,000 ps (its bytes take less). The experts' 12,582,912,000 FLOPs take
  // 31,457,280 ps, less than their 39,059,456 bytes; with NVFP4 weights (9 bytes per 16) the
  // expert's 3,145,728 weights are 1,769,472 bytes instead of 6,291,456: 34,537,472 ps. The
  // router, the all-to-alls and the reduce as before: the step 129,173,568 ps.
  std::string text = replaced(tiny("dropless", 1), "peak_bf16: 100TFLOP/s,", "peak_bf16: 100TFLOP/s, peak_fp4: 400TFLOP/s,");
  text = replaced(text, "compute: {flops_efficiency: 1,", "compute: {gemm_dtype: fp4, flops_efficiency: 1,");
  const auto gemms = scenarios::load_scenario_text(text, "tiny.yaml");
  CHECK(gemms.roofline.gemm_dtype == models::GemmDtype::fp4);
  const auto r4 = scenarios::run_experiment(gemms);
  CHECK(r4.stats.gpus()[0].stage_total[idx(Stage::attention)] == Time::ps(41'472'000));
  CHECK(r4.stats.gpus()[0].stage_total[idx(Stage::experts)] == Time::ps(39'059'456));
  const auto sc = scenarios::load_scenario_text(replaced(text, "  top_k: 2\n", "  top_k: 2\n  weight_dtype: fp4\n"), "tiny.yaml");
  CHECK(sc.forward.model.weight_bytes32 == 18);
  const auto r = scenarios::run_experiment(sc);
  CHECK(r.stats.step_time() == Time::ps(129'173'568));
  for (const auto& g : r.stats.gpus()) {
    CHECK(g.stage_total[idx(Stage::attention)] == Time::ps(41'472'000));
    CHECK(g.stage_total[idx(Stage::experts)] == Time::ps(34'537'472));
    CHECK(g.stage_total[idx(Stage::router)] == Time::ps(2'060'096));
  }
  check_stages_tile(r);
  // The bytes of the fused kernel: the GEMMs' and the SwiGLU's between them.
  const auto e = models::expert_cost(sc.forward.model, 2000);
  CHECK(e.bytes + e.activation_bytes == 34'537'472);
}

TEST_CASE("compute.attention_efficiency times the attention core apart, as derived by hand", "[models][attention]") {
  // The tiny layer's attention: projections 8,388,608,000 FLOPs (83,886,080 ps at 100 TFLOP/s)
  // and the core 2,050,048,000 (20,500,480 ps). With the core at half the peak it takes
  // 41,000,960 ps: the attention 124,887,040 ps and the step 20,500,480 ps longer than
  // 283,379,776; with FP8 GEMMs as well (projections 41,943,040 ps) the attention takes
  // 82,944,000 and the step 178,522,176 + 20,500,480 ps.
  const auto a = models::attention_cost(scenarios::load_scenario_text(tiny("dropless", 1), "t.yaml").forward.model, 1000, 1000);
  CHECK(a.core_flops == 2'050'048'000);
  CHECK(a.flops - a.core_flops == 8'388'608'000);
  const std::string half = replaced(tiny("dropless", 1), "compute: {flops_efficiency: 1,", "compute: {attention_efficiency: 0.5, flops_efficiency: 1,");
  const auto sc = scenarios::load_scenario_text(half, "tiny.yaml");
  CHECK(sc.roofline.attention_efficiency == 0.5);
  const auto r = scenarios::run_experiment(sc);
  CHECK(r.stats.gpus()[0].stage_total[idx(Stage::attention)] == Time::ps(124'887'040));
  CHECK(r.stats.step_time() == Time::ps(283'379'776 + 20'500'480));
  std::string fp8 = replaced(half, "peak_bf16: 100TFLOP/s,", "peak_bf16: 100TFLOP/s, peak_fp8: 200TFLOP/s,");
  fp8 = replaced(fp8, "compute: {", "compute: {gemm_dtype: fp8, ");
  const auto r8 = scenarios::run_experiment(scenarios::load_scenario_text(fp8, "tiny.yaml"));
  CHECK(r8.stats.gpus()[0].stage_total[idx(Stage::attention)] == Time::ps(82'944'000));
  CHECK(r8.stats.step_time() == Time::ps(178'522'176 + 20'500'480));
  // Decode: the core is the scores and values over the cache, 2 T C (Q + O).
  const auto d = models::decode_attention_cost(gqa_attention(), 4, 1000);
  CHECK(d.core_flops == 2 * 4 * 1000 * (1024 + 1024));
  // Left unset, or equal to flops_efficiency, nothing changes.
  CHECK(scenarios::run_experiment(scenarios::load_scenario_text(replaced(half, "attention_efficiency: 0.5", "attention_efficiency: 1"),
                                                                "t.yaml"))
            .stats.step_time() == Time::ps(283'379'776));
}

TEST_CASE("Sliding-window attention attends to and caches the window only, as derived by hand", "[models][sliding_window]") {
  const routing::MoeModelSpec g = gqa_attention();  // Q + O = 2048, K + V = 512 a token
  // T = 1000 tokens of 500-token sequences, a window of 100: the first 100 positions attend to
  // 1..100 keys, the other 400 to 100, 45,050 keys a sequence, 90.1 a token on average: the core
  // T x 2 x 90.1 x (Q + O); the projections and the bytes as without the window.
  const auto plain = models::attention_cost(g, 1000, 500), slid = models::attention_cost(g, 1000, 500, 0, 100);
  CHECK(slid.core_flops == std::int64_t{1000} * 2 * 45'050 / 500 * 2048);
  CHECK(slid.core_flops == 369'049'600);
  CHECK(slid.gemm_flops == plain.gemm_flops);
  CHECK(slid.flops - slid.core_flops == plain.flops - plain.core_flops);
  CHECK(slid.bytes == plain.bytes);
  // A window no shorter than the sequence changes nothing.
  CHECK(models::attention_cost(g, 1000, 500, 0, 500).core_flops == plain.core_flops);
  // After a 3000-token cached prefix every token attends to the window, 100 keys, and of each
  // prompt's prefix only the last 100 tokens' cache is read (2 prompts x 100 x 512 x 2 B).
  const auto cached = models::attention_cost(g, 1000, 500, 3000, 100);
  CHECK(cached.core_flops == std::int64_t{1000} * 2 * 100 * 2048);
  CHECK(cached.bytes - plain.bytes == std::int64_t{2} * 100 * 512 * 2);
  // Decode: a query reads the window's keys of its cache, as if the context were the window.
  const auto d = models::decode_attention_cost(g, 4, 1000, 1, 128), d128 = models::decode_attention_cost(g, 4, 128);
  CHECK(d.core_flops == 2 * 4 * 128 * 2048);
  CHECK(d.bytes == d128.bytes);
  CHECK(d.flops == d128.flops);
  CHECK(models::decode_attention_cost(g, 4, 100, 1, 128).bytes == models::decode_attention_cost(g, 4, 100).bytes);
  // Which layers slide: every second one attends fully (GPT-OSS), counting the dense layers first.
  routing::MoeModelSpec oss = g;
  oss.sliding_window = 128;
  oss.full_attention_every = 2;
  CHECK(routing::sliding_layer(oss, 0));
  CHECK_FALSE(routing::sliding_layer(oss, 1));
  CHECK(routing::sliding_layer(oss, 2));
  CHECK(routing::cached_keys(oss, 0, 1000) == 128);
  CHECK(routing::cached_keys(oss, 1, 1000) == 1000);
  CHECK(routing::cached_keys(oss, 0, 100) == 100);
  oss.full_attention_every = 0;  // all of them
  CHECK(routing::sliding_layer(oss, 1));
  CHECK_FALSE(routing::sliding_layer(g, 0));
  // A run: 2 MoE layers of the tiny model over 1000-token sequences, the first within a window
  // of 100, the second fully: the attention stage takes the windowed layer's roofline time and
  // the full one's.
  const std::string full = tiny("dropless", 2);
  const std::string windowed = replaced(full, "  attention_heads: 8\n", "  attention_heads: 8\n  sliding_window: 100\n  full_attention_every: 2\n");
  const auto sc = scenarios::load_scenario_text(windowed, "w.yaml");
  const auto r = scenarios::run_experiment(sc), r_full = scenarios::run_experiment(scenarios::load_scenario_text(full, "f.yaml"));
  const models::Roofline roofline(sc.cluster.gpu, sc.roofline);
  const Time one_full = roofline.time(models::attention_cost(sc.forward.model, 1000, 1000)),
             one_slid = roofline.time(models::attention_cost(sc.forward.model, 1000, 1000, 0, 100));
  CHECK(one_slid < one_full);
  CHECK(r_full.stats.gpus()[0].stage_total[idx(Stage::attention)] == one_full + one_full);
  CHECK(r.stats.gpus()[0].stage_total[idx(Stage::attention)] == one_slid + one_full);
  // Decode: the sliding layer caches 100 of each sequence's 1000 keys (4 sequences a GPU, 2 x 8 x
  // 128 x 2 B = 4096 bytes a key), 14,745,600 bytes less than without the window.
  const std::string decode = "workload: {kind: decode, tokens_per_gpu: 4, context_length: 1000}";
  const std::string d_full = replaced(full, "workload: {tokens_per_gpu: 1000, sequence_length: 1000}", decode),
                    d_slid = replaced(windowed, "workload: {tokens_per_gpu: 1000, sequence_length: 1000}", decode);
  CHECK(memory_gb_max(d_full) - memory_gb_max(d_slid) == Approx(4 * 900 * 4096 / 1e9).margin(2e-3));
}

TEST_CASE("A prefill after a cached prefix attends to it and reads its cache, as derived by hand", "[models][prefill]") {
  // Grouped-query attention (8 query heads and 2 kv heads of 128, H = 1024): T = 1000 new tokens
  // of 500-token prompts (2 prompts) after a 3000-token prefix each: every token also attends to
  // the 3000, the core 2 (P + (S + 1) / 2) keys x (Q + O) = T (2P + S + 1)(Q + O), and the two
  // prefixes' caches are read, 6000 tokens x 2 x 256 x 2 B.
  const routing::MoeModelSpec g = gqa_attention();
  const auto plain = models::attention_cost(g, 1000, 500), cached = models::attention_cost(g, 1000, 500, 3000);
  CHECK(plain.core_flops == std::int64_t{1000} * 501 * (1024 + 1024));
  CHECK(cached.core_flops == std::int64_t{1000} * (6000 + 501) * (1024 + 1024));
  CHECK(cached.gemm_flops == plain.gemm_flops);
  CHECK(cached.bytes - plain.bytes == std::int64_t{6000} * 2 * 256 * 2);
  // MLA (DeepSeek-V3): the cached latents (576 a token) are read, expanded into the heads' keys
  // and values by their up projection, 2 x 6000 x 512 x 128 x (128 + 128) FLOPs, and those keys
  // (128 x 128 + 64 wide) and values (128 x 128) written and read.
  const routing::MoeModelSpec m = deepseek_v3_mla();
  const auto p0 = models::attention_cost(m, 1000, 500), p1 = models::attention_cost(m, 1000, 500, 3000);
  CHECK(p1.core_flops == std::int64_t{1000} * 6501 * (24'576 + 16'384));
  CHECK(p1.gemm_flops - p0.gemm_flops == std::int64_t{2} * 6000 * 512 * 128 * 256);
  CHECK(p1.flops - p0.flops == p1.gemm_flops - p0.gemm_flops + p1.core_flops - p0.core_flops);
  CHECK(p1.bytes - p0.bytes == std::int64_t{6000} * 576 * 2 + std::int64_t{2} * 2 * 6000 * (16'448 + 16'384));
  // Only prefill takes a prefix.
  const auto err = [](const std::string& yaml) {
    try {
      (void)scenarios::load_scenario_text(yaml, "p.yaml");
    } catch (const scenarios::ScenarioError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  const std::string base = replaced(tiny("dropless", 1), "workload: {tokens_per_gpu: 1000, sequence_length: 1000}",
                                    "workload: {kind: prefill, tokens_per_gpu: 1000, sequence_length: 500, cached_prefix: 3000}");
  CHECK(scenarios::load_scenario_text(base, "p.yaml").forward.cached_prefix == 3000);
  CHECK_THAT(err(replaced(base, "kind: prefill", "kind: forward")),
             Catch::Contains("workload.cached_prefix: only used with 'kind: prefill'"));
}

TEST_CASE("Model FLOPs count every compute stage once, padding and optimizer aside", "[models][forward]") {
  // Dropless tiny layer, per GPU: attention 10,438,656,000 + router 2 T H E = 4,096,000 +
  // expert on 2000 tokens 12,582,912,000 + reduce over 2000 copies 2 r H = 4,096,000.
  const auto r = scenarios::run_experiment(scenarios::load_scenario_text(tiny("dropless", 1), "tiny.yaml"));
  CHECK(r.model_flops == 2.0 * (10'438'656'000.0 + 4'096'000.0 + 12'582'912'000.0 + 4'096'000.0));
  // A training step adds the backward at twice the GEMM FLOPs (the reduce's gradient once).
  std::string text = tiny("dropless", 1);
  const std::string from = "workload: {tokens_per_gpu: 1000, sequence_length: 1000}";
  text.replace(text.find(from), from.size(), "workload: {kind: training, tokens_per_gpu: 1000, sequence_length: 1000}");
  const auto t = scenarios::run_experiment(scenarios::load_scenario_text(text, "train.yaml"));
  CHECK(t.model_flops == 2.0 * (3 * (10'438'656'000.0 + 4'096'000.0 + 12'582'912'000.0) + 2 * 4'096'000.0));
}

TEST_CASE("Low-latency all-to-all pays a fixed cost per message", "[models][all_to_all]") {
  // The dropless tiny scenario: each GPU sends one flow of 1000 rows per phase. With a 10 ns
  // message overhead the flow starts 10 us later, in dispatch and in combine.
  const auto direct = scenarios::run_experiment(scenarios::load_scenario_text(tiny("dropless", 1), "d.yaml"));
  const auto ll = scenarios::run_experiment(scenarios::load_scenario_text(
      tiny("dropless", 1) + "network: {all_to_all: low_latency, message_overhead: 10ns}\n", "l.yaml"));
  const auto ll0 = scenarios::run_experiment(
      scenarios::load_scenario_text(tiny("dropless", 1) + "network: {all_to_all: low_latency}\n", "l0.yaml"));
  CHECK(ll0.stats.step_time() == direct.stats.step_time());
  CHECK(ll.stats.step_time() - direct.stats.step_time() == Time::us(20));
  for (const auto& g : ll.stats.gpus()) CHECK(g.stage_total[idx(Stage::dispatch)] == Time::ps(22'480'000 + 10'000'000));
}

TEST_CASE("Two-batch overlap on the tiny layer matches the hand derivation exactly", "[models][overlap]") {
  // Halves of 500 tokens, no SMs taken by communication (comm_sm_fraction 0):
  //   attention(500) 52,193,280 (compute-bound), router(500) 1,032,096 (memory-bound);
  //   a half's dispatch: 500 rows each way, 1,024,000 B at 100 GB/s + 2 us = 12,240,000.
  // A: attention until 52,193,280, router until 53,225,376, its rows arrive at 65,465,376;
  // B: attention until 105,418,656, router until 106,450,752, rows arrive at 118,690,752;
  // experts A (1000 tokens, 62,914,560) until 169,365,312, outputs back at 181,605,312;
  // experts B until 232,279,872, outputs back at 244,519,872;
  // reduce A (1000 copies: 3,072,000) until 235,351,872; wait for B's outputs 9,168,000;
  // reduce B until 247,591,872: the step, against 283,379,776 without overlap.
  std::string text = tiny("dropless", 1);
  const std::string from = "workload: {tokens_per_gpu: 1000, sequence_length: 1000}";
  text.replace(text.find(from), from.size(),
               "workload: {tokens_per_gpu: 1000, sequence_length: 1000, overlap: two_batch, comm_sm_fraction: 0}");
  const auto r = scenarios::run_experiment(scenarios::load_scenario_text(text, "tbo.yaml"));
  CHECK(r.stats.step_time() == Time::ps(247'591'872));
  for (const auto& g : r.stats.gpus()) {
    CHECK(g.stage_total[idx(Stage::dispatch)] == Time::zero());
    CHECK(g.stage_total[idx(Stage::combine)] == Time::ps(9'168'000));
    CHECK(g.stage_total[idx(Stage::experts)] == Time::ps(2 * 62'914'560));
  }
  CHECK(r.stats.layers()[0].routed == 4000);  // both halves' routing reported together
  CHECK(r.stats.layers()[0].network_bytes == 4 * 2 * 1'024'000);
  // With the default SM share (20 of 132) every compute stage runs 132/112 times slower.
  text.replace(text.find(", comm_sm_fraction: 0"), std::string(", comm_sm_fraction: 0").size(), "");
  const auto slow = scenarios::run_experiment(scenarios::load_scenario_text(text, "tbo2.yaml"));
  CHECK(slow.stats.gpus()[0].stage_total[idx(Stage::experts)] ==
        Time::ps(2 * std::llround(62'914'560.0 * 132 / 112)));
}

TEST_CASE("Staggered two-batch overlap on two tiny layers matches the hand derivation exactly", "[models][overlap]") {
  // The tiny layer's halves as above (attention 52,193,280, router 1,032,096, experts 62,914,560,
  // reduce 3,072,000; each all-to-all 12,240,000 and alone on its links), two layers, the second
  // half half a layer behind. Layer 0: A's attention and router until 53,225,376 (A's rows
  // arrive at 65,465,376, waited for); A's experts until 128,379,936 (outputs back at
  // 140,619,936); B's attention and router until 181,605,312 (rows at 193,845,312).
  // Layer 1: A's reduce of layer 0 until 184,677,312; A's attention and router until
  // 237,902,688 (rows at 250,142,688); B's experts of layer 0 until 300,817,248 (outputs at
  // 313,057,248); A's experts until 363,731,808 (outputs at 375,971,808); B's reduce of layer
  // 0 until 366,803,808; B's attention and router until 420,029,184 (rows at 432,269,184).
  // The last layer finishes: A's reduce until 423,101,184; B's rows waited for 9,168,000, its
  // experts until 495,183,744, its outputs waited for 12,240,000, its reduce until 510,495,744.
  std::string text = tiny("dropless", 2);
  text = replaced(text, "workload: {tokens_per_gpu: 1000, sequence_length: 1000}",
                  "workload: {tokens_per_gpu: 1000, sequence_length: 1000, overlap: two_batch_staggered, comm_sm_fraction: 0}");
  const auto r = scenarios::run_experiment(scenarios::load_scenario_text(text, "stagger.yaml"));
  CHECK(r.stats.step_time() == Time::ps(510'495'744));
  for (const auto& g : r.stats.gpus()) {
    CHECK(g.stage_total[idx(Stage::dispatch)] == Time::ps(12'240'000 + 9'168'000));
    CHECK(g.stage_total[idx(Stage::combine)] == Time::ps(12'240'000));
    CHECK(g.stage_total[idx(Stage::experts)] == Time::ps(4 * 62'914'560));
    CHECK(g.stage_total[idx(Stage::reduce)] == Time::ps(4 * 3'072'000));
  }
  // Each stage is recorded with its own layer: both halves' experts and reduces are layer 0's
  // and layer 1's, though half B's of layer 0 ran in layer 1's program.
  for (const auto& l : r.stats.layers()) {
    CHECK(l.stage_sum[idx(Stage::experts)] == Time::ps(2 * 2 * 62'914'560));
    CHECK(l.stage_sum[idx(Stage::reduce)] == Time::ps(2 * 2 * 3'072'000));
  }
  CHECK(r.stats.layers()[0].stage_sum[idx(Stage::dispatch)] == Time::ps(2 * 12'240'000));
  CHECK(r.stats.layers()[1].stage_sum[idx(Stage::dispatch)] == Time::ps(2 * 9'168'000));
  CHECK(r.stats.layers()[1].stage_sum[idx(Stage::combine)] == Time::ps(2 * 12'240'000));
  // Unstaggered, each layer is the one-layer step above: 2 x 247,591,872.
  const auto plain = scenarios::run_experiment(
      scenarios::load_scenario_text(replaced(text, "two_batch_staggered", "two_batch"), "tbo.yaml"));
  CHECK(plain.stats.step_time() == Time::ps(2 * 247'591'872));
}

TEST_CASE("Overlap never makes a step shorter than its GPUs' compute", "[models][overlap]") {
  for (const char* kind : {"forward", "training"})
  for (const char* net : {"direct", "hierarchical"}) {
    INFO(kind << " " << net);
    const auto r = scenarios::run_experiment(scenarios::load_scenario_text(fmt::format(R"(
cluster: {{nodes: 2, gpus_per_node: 4, gpu: H100, scale_out: {{nic_bandwidth: 400Gbps}}}}
model: {{moe_layers: 3, hidden: 2048, expert_ffn: 4096, experts: 16, top_k: 4, attention_heads: 16, shared_experts: 1}}
parallelism: {{ep: 8}}
workload: {{kind: {}, tokens_per_gpu: 512, overlap: two_batch}}
routing: {{distribution: zipf, zipf_s: 1.0, capacity_factor: 1.5}}
network: {{all_to_all: {}}}
)", kind, net), "o.yaml"));
    Time latest;
    for (const auto& g : r.stats.gpus()) {
      Time total, busy;
      for (const Stage s : models::kStages) {
        total += g.stage_total[idx(s)];
        if (!models::is_network_wait(s)) busy += g.stage_total[idx(s)];
      }
      CHECK(total == g.finish);  // compute and waits tile the GPU's time
      CHECK(r.stats.step_time() >= busy);
      latest = sim::max(latest, g.finish);
    }
    CHECK(latest == r.stats.step_time());
  }
}

TEST_CASE("Gradient sync by ring all-reduce matches the hand derivation exactly", "[models][training]") {
  // The tiny training step with `gradient_sync: ring`: both GPUs end their backward at
  // 799,035,328 ps. The replicated weights (attention 4,194,304 + router 2,048 parameters, bf16
  // gradients: 8,392,704 B) are all-reduced over the 2-GPU ring: 2 steps of a 4,196,352 B chunk
  // each way (2 us + 41,963,520 ps): done at 886,962,368. One EP group: no expert ring. Then the
  // optimizer (205,578,240): step 1,092,540,608 ps.
  std::string text = tiny("dropless", 1);
  const std::string from = "workload: {tokens_per_gpu: 1000, sequence_length: 1000}";
  text.replace(text.find(from), from.size(),
               "workload: {kind: training, gradient_sync: ring, tokens_per_gpu: 1000, sequence_length: 1000}");
  const auto r = scenarios::run_experiment(scenarios::load_scenario_text(text, "sync.yaml"));
  CHECK(r.stats.step_time() == Time::ps(1'092'540'608));
  for (const auto& g : r.stats.gpus()) CHECK(g.stage_total[idx(Stage::grad_sync)] == Time::ps(87'927'040));
  CHECK(r.stats.gradient_sync_bytes() == 4 * 4'196'352);
}

TEST_CASE("A sharded optimizer reduce-scatters, updates its share and all-gathers, as derived by hand", "[models][training]") {
  // The tiny training step of the test above with `optimizer_sharding: true`: backward ends at
  // 799,035,328 ps; the reduce-scatter over the 2-GPU ring is one step of the 4,196,352 B chunk
  // (43,963,520 ps); each GPU updates half the 4,196,352 replicated parameters and all
  // 3,145,728 expert parameters of its (only) EP group: 5,243,904 x 28 B = 146,829,312 ps; the
  // all-gather is one step again. Step: 1,033,791,680 ps; grad_sync as long as the all-reduce's.
  std::string text = tiny("dropless", 1);
  const std::string from = "workload: {tokens_per_gpu: 1000, sequence_length: 1000}";
  text.replace(text.find(from), from.size(),
               "workload: {kind: training, gradient_sync: ring, optimizer_sharding: true, tokens_per_gpu: 1000, "
               "sequence_length: 1000}");
  const auto r = scenarios::run_experiment(scenarios::load_scenario_text(text, "zero.yaml"));
  CHECK(r.stats.step_time() == Time::ps(1'033'791'680));
  for (const auto& g : r.stats.gpus()) {
    CHECK(g.stage_total[idx(Stage::grad_sync)] == Time::ps(2 * 43'963'520));
    CHECK(g.stage_total[idx(Stage::optimizer)] == Time::ps(146'829'312));
  }
  CHECK(r.stats.gradient_sync_bytes() == 4 * 4'196'352);
}

TEST_CASE("Gradient sync algorithms: hierarchical and NVLS beat a flat ring on dense weights across nodes", "[models][training]") {
  // EP over all 16 GPUs (one group): only the replicated weights are synchronised, over 2 nodes.
  const auto step = [](const std::string& algorithm) {
    return scenarios::run_experiment(scenarios::load_scenario_text(R"(
cluster: {nodes: 2, gpus_per_node: 8, gpu: H100, scale_out: {nic_bandwidth: 400Gbps}}
model: {moe_layers: 2, hidden: 1024, expert_ffn: 1024, experts: 16, top_k: 2, attention_heads: 8}
parallelism: {ep: 16}
workload: {kind: training, gradient_sync: )" + algorithm + R"(, tokens_per_gpu: 256}
)", algorithm + ".yaml"));
  };
  const auto sync = [](const scenarios::RunResult& r) { return r.stats.gpus()[0].stage_total[idx(Stage::grad_sync)]; };
  const auto ring = step("ring"), hier = step("hierarchical"), nvls = step("nvls");
  CHECK(sync(hier) < sync(ring));
  CHECK(sync(nvls) < sync(hier));
  CHECK(hier.stats.gradient_sync_bytes() == ring.stats.gradient_sync_bytes());  // the same bytes, fewer across nodes
  CHECK(nvls.stats.gradient_sync_bytes() > hier.stats.gradient_sync_bytes());   // up and down the switch ports
}

TEST_CASE("Expert gradients are all-reduced across EP groups, dense ones across all GPUs", "[models][training]") {
  const auto r = scenarios::run_experiment(scenarios::load_scenario_text(R"(
cluster: {nodes: 2, gpus_per_node: 2, gpu: H100, scale_out: {nic_bandwidth: 400Gbps}}
model: {moe_layers: 2, hidden: 256, expert_ffn: 512, experts: 4, top_k: 2, attention_heads: 4}
parallelism: {ep: 2}
workload: {kind: training, gradient_sync: ring, tokens_per_gpu: 64}
)", "groups.yaml"));
  // Dense: attention 256 x (256 + 512) + 256 x 256 = 262,144 and router 1,024 per layer, x 2
  // layers, 2 bytes: 1,052,672 B over a 4-GPU ring: 6 steps x 4 GPUs x 263,168 B.
  // Experts: 2 slots x 3 x 256 x 512 per layer, x 2 layers, 2 bytes: 3,145,728 B over 2-GPU rings
  // (one per EP rank): 2 steps x 2 GPUs x 1,572,864 B, twice.
  CHECK(r.stats.gradient_sync_bytes() == 6 * 4 * 263'168 + 2 * (2 * 2 * 1'572'864));
  for (const auto& g : r.stats.gpus()) CHECK(g.stage_total[idx(Stage::grad_sync)] > Time::zero());
}

TEST_CASE("With tensor parallelism each TP rank all-reduces its own part of the replicated weights", "[models][training]") {
  // The test above with tp: 2 (TP pairs 0-1 on node 0, 2-3 on node 1). Each GPU holds half the
  // attention, 256 x (128 + 256) + 128 x 256 = 131,072, and the whole router, 1,024, per layer:
  // x 2 layers x 2 B = 528,384 B, all-reduced with the other GPU of its TP rank (0 with 2, 1 with
  // 3): 2 steps x 2 GPUs x 264,192 B per rank. One ring over all four GPUs would all-reduce
  // halves that differ from GPU to GPU. Experts as above, over the same pairs.
  const auto r = scenarios::run_experiment(scenarios::load_scenario_text(R"(
cluster: {nodes: 2, gpus_per_node: 2, gpu: H100, scale_out: {nic_bandwidth: 400Gbps}}
model: {moe_layers: 2, hidden: 256, expert_ffn: 512, experts: 4, top_k: 2, attention_heads: 4}
parallelism: {ep: 2, tp: 2}
workload: {kind: training, gradient_sync: ring, tokens_per_gpu: 64}
output: {timeline: on}
)", "tp-sync.yaml"));
  CHECK(r.stats.gradient_sync_bytes() == 2 * (2 * 2 * 264'192) + 2 * (2 * 2 * 1'572'864));
  int flows = 0;
  for (const auto& f : r.timeline->flows()) {
    if (f.stage != Stage::grad_sync) continue;
    ++flows;
    CHECK(f.flow.src.value % 2 == f.flow.dst.value % 2);  // within a TP rank
    CHECK(f.flow.src.value / 2 != f.flow.dst.value / 2);  // which spans the two nodes
  }
  CHECK(flows == 16);
}

TEST_CASE("Dense layers run before the MoE layers and after them backward", "[models][training]") {
  // One dense layer with a 1024-wide FFN on the tiny model: attention (104,386,560) + FFN on
  // 1000 tokens (6 x 1000 x 1024 x 1024 FLOPs: 62,914,560) = 167,301,120 ps before layer 0.
  std::string text = tiny("dropless", 1);
  const std::string from = "  attention_heads: 8\n";
  text.replace(text.find(from), from.size(), from + "  dense_layers: 1\n  dense_ffn: 1024\n");
  const auto fwd = scenarios::run_experiment(scenarios::load_scenario_text(text, "dense.yaml"));
  CHECK(fwd.stats.step_time() == Time::ps(167'301'120 + 283'379'776));
  CHECK(fwd.stats.gpus()[0].stage_total[idx(Stage::dense)] == Time::ps(167'301'120));
  CHECK(fwd.stats.layers()[0].start == Time::ps(167'301'120));
  // Training: forward 450,680,896; MoE backward 515,655,552; dense backward 2 x 167,301,120;
  // optimizer over 7,342,080 + 7,340,032 parameters x 28 B = 411,099,136 ps.
  const std::string w = "workload: {tokens_per_gpu: 1000, sequence_length: 1000}";
  text.replace(text.find(w), w.size(), "workload: {kind: training, tokens_per_gpu: 1000, sequence_length: 1000}");
  const auto train = scenarios::run_experiment(scenarios::load_scenario_text(text, "dense-train.yaml"));
  CHECK(train.stats.step_time() == Time::ps(450'680'896LL + 515'655'552LL + 2 * 167'301'120LL + 411'099'136LL));
  CHECK(train.stats.gpus()[0].stage_total[idx(Stage::dense)] == Time::ps(3 * 167'301'120LL));
}

TEST_CASE("Random scenarios over every feature run to the end and account for every GPU's time", "[models][fuzz]") {
  // Workload kinds, all-to-all algorithms, overlap, drop policies, placements, routing laws,
  // stragglers: the step must finish, each GPU's stages must tile its time, and the routing
  // must be conserved.
  sim::Rng pick(99, "test/fuzz");
  int fp4_trials = 0, chunked_trials = 0, scored_trials = 0, staggered_trials = 0, cp_trials = 0, etp_trials = 0, etp_overlap_trials = 0,
      sharded_trials = 0;
  for (int trial = 0; trial < 64; ++trial) {
    const int gpn = 2 << pick.uniform_int(2);  // 2 or 4
    const int nodes = 1 + static_cast<int>(pick.uniform_int(3));
    const int gpus = gpn * nodes;
    const int ep = pick.uniform_int(2) ? gpus : gpn;
    const int experts = ep * (1 + static_cast<int>(pick.uniform_int(3)));
    const int top_k = 1 + static_cast<int>(pick.uniform_int(static_cast<std::uint64_t>(std::min(experts, 4))));
    const char* kinds[] = {"forward", "training", "decode"};
    const std::string kind = kinds[pick.uniform_int(3)];
    const bool tbo = pick.uniform_int(2);
    const char* algos[] = {"direct", "hierarchical", "low_latency"};
    const char* laws[] = {"distribution: uniform", "distribution: zipf, zipf_s: 1.1", "distribution: lognormal, sigma: 0.7",
                          "distribution: hot_experts, hot_experts: 1, hot_fraction: 0.5"};
    const char* drops[] = {"capacity_factor: dropless", "capacity_factor: 1.0, drop_policy: position",
                           "capacity_factor: 1.2, drop_policy: gate", "capacity_factor: 1.5, drop_policy: pad"};
    const bool eplb = pick.uniform_int(2);
    // Training: gradient sync by any algorithm, in 1 or 2 buckets, with or without a sharded optimizer.
    // Two or three MoE layers; two pipeline stages where they divide into whole EP groups (not
    // with two-batch overlap), the layers split evenly, unevenly or as drawn.
    // With four layers on two stages, two model chunks per stage (the interleaved schedule) or one.
    const int layers = 2 + static_cast<int>(pick.uniform_int(3));
    const int pp = !tbo && (gpus / 2) % ep == 0 && pick.uniform_int(2) ? 2 : 1;
    const int virtual_stages = pp == 2 && layers == 4 && pick.uniform_int(2) ? 2 : 1;
    const std::string split = virtual_stages == 2 ? ", virtual_stages: 2"
                              : pp == 2 && pick.uniform_int(2) ? fmt::format(", pipeline_layers: [{}, {}]", layers - 1, 1)
                                                               : "";
    const char* syncs[] = {"ring", "hierarchical", "nvls"};
    const std::string sync =
        kind != "training" || pick.uniform_int(3) == 0
            ? std::string()
            : fmt::format("gradient_sync: {}, gradient_sync_buckets: {}, optimizer_sharding: {}, ", syncs[pick.uniform_int(3)],
                          pp == 1 ? 1 + pick.uniform_int(2) : 1, pick.uniform_int(2) ? "true" : "false");
    // Training: activation recomputation of either kind (full: of every layer, or of each
    // chunk's first), or none.
    const char* recomputes[] = {"", "recompute: attention, ", "recompute: full, ", "recompute: full, recompute_layers: 1, "};
    std::string recompute = kind == "training" ? recomputes[pick.uniform_int(4)] : "";
    // Training on two stages of one chunk each without recomputation: 1F1B or ZB-H1.
    const std::string schedule =
        kind == "training" && pp == 2 && virtual_stages == 1 && recompute.empty() && pick.uniform_int(2) ? "pipeline_schedule: zb_h1, " : "";
    // Training: one or two micro-batches (gradient accumulation); two with the interleaved schedule.
    const int batches = virtual_stages == 2 ? 2 : kind == "training" ? 1 + static_cast<int>(pick.uniform_int(2)) : 1;
    // Tensor parallelism over 2 GPUs, or none.
    const int tp = (gpus / pp) % 2 == 0 && pick.uniform_int(2) ? 2 : 1;
    // Multi-head or latent attention (MLA, with or without a query latent); BF16 or FP8 GEMMs.
    const char* attentions[] = {"", ", mla: {q_lora_rank: 64, kv_lora_rank: 32, qk_nope_head_dim: 16, qk_rope_head_dim: 8, v_head_dim: 16}",
                                ", mla: {kv_lora_rank: 32, qk_nope_head_dim: 16, qk_rope_head_dim: 8, v_head_dim: 16}"};
    const std::string attention = attentions[pick.uniform_int(3)];
    std::string gemms = pick.uniform_int(2) ? "gemm_dtype: fp8, " : "";
    if (trial % 3 == 1) gemms += "attention_efficiency: 0.6, ";  // by the trial: the draws stay
    // Prefill and decode: every other trial with an FP8 KV cache (by the trial, so the draws stay those above).
    const std::string cache = (kind == "decode" || kind == "prefill") && trial % 2 ? ", kv_cache_dtype: fp8" : "";
    // Every fourth trial (without layer counts given per stage) an MTP module: trained as one
    // more layer, or drafting a token per sequence in decode (run in neither elsewhere).
    const bool mtp = trial % 4 == 3 && split.find("pipeline_layers") == std::string::npos;
    const int mtp_run = mtp && (kind == "training" || kind == "decode") ? 1 : 0;
    const int draft = mtp && kind == "decode" ? 1 : 0;
    std::string mtp_keys = mtp ? ", vocab: 1000, mtp_modules: 1" : "";
    // Every third trial on an HGX B200 (by the trial: the draws stay), half of those outside
    // training with NVFP4 weights and FP4 GEMMs.
    const std::string gpu = trial % 3 == 0 ? "B200" : "H100";
    if (gpu == "B200" && kind != "training" && trial % 2 == 0) {
      const std::string fp8 = "gemm_dtype: fp8, ";
      if (gemms.rfind(fp8, 0) == 0) gemms.erase(0, fp8.size());
      gemms = "gemm_dtype: fp4, " + gemms;
      mtp_keys += ", weight_dtype: fp4";
      ++fp4_trials;
    }
    // Every fifth training trial recomputes selectively instead (by the trial: the draws stay),
    // with FP8 activations where the GEMMs are FP8.
    if (kind == "training" && trial % 5 == 2)
      recompute = fmt::format("recompute: selective, recompute_modules: [layernorm, moe_act{}], {}",
                              attention.empty() ? "" : ", mla_up_proj",
                              gemms.find("fp8") == std::string::npos ? "" : "activation_dtype: fp8, ");
    std::string yaml = fmt::format(R"(
cluster: {{nodes: {}, gpus_per_node: {}, gpu: {}, scale_out: {{nic_bandwidth: 400Gbps, nodes_per_leaf: 1, spines: 2}}}}
model: {{moe_layers: {}, hidden: 256, expert_ffn: 512, experts: {}, top_k: {}, attention_heads: 4, shared_experts: {}, dense_layers: {}, dense_ffn: 512{}{}{}}}
parallelism: {{ep: {}, pp: {}, tp: {}{}}}
workload: {{kind: {}, tokens_per_gpu: {}, micro_batches: {}, {}{}{}{}{}{}seed: {}}}
routing: {{{}, {}, layer_correlation: {}}}
placement: {{{}}}
network: {{model: {}, all_to_all: {}, dispatch_dtype: fp8{}}}
compute: {{{}jitter: 0.05, straggler_probability: 0.3, straggler_speed: 0.6}}
output: {{timeline: off}}
)",
        nodes, gpn, gpu, layers, experts, top_k, pick.uniform_int(2), pick.uniform_int(2), attention, cache, mtp_keys, ep, pp, tp, split, kind, 2 * (8 + pick.uniform_int(60)), batches,
        kind == "decode" ? "context_length: 512, " : "", draft ? "draft_tokens: 1, acceptance_rate: 0.7, " : "",
        !tbo ? "" : kind != "training" && trial % 2 ? "overlap: two_batch_staggered, " : "overlap: two_batch, ", sync, recompute, schedule, trial, laws[pick.uniform_int(4)],
        drops[pick.uniform_int(4)], pick.uniform_int(2) ? 0.5 : 0.0,
        eplb ? "policy: eplb, redundant_experts: " + std::to_string(ep) : std::string("policy: contiguous"),
        pick.uniform_int(2) ? "maxmin" : "analytical", algos[pick.uniform_int(3)],
        kind == "training" && trial % 2 ? ", gradient_dispatch_dtype: fp8" : "", gemms);
    // Every fourth trial without layer correlation limits tokens to one of two expert groups,
    // chosen by scores (by the trial: the draws stay).
    const std::string uncorrelated = "layer_correlation: 0}";
    if (const auto at = yaml.find(uncorrelated); at != std::string::npos && trial % 4 == 1 && experts / 2 >= top_k) {
      yaml.insert(at + uncorrelated.size() - 1,
                  fmt::format(", groups: 2, max_groups: 1, group_choice: {}", trial % 8 == 1 ? "best_expert" : "best_two"));
      ++scored_trials;
    }
    // Every other hierarchical trial forwards in chunks (by the trial: the draws stay).
    const std::string hier = "all_to_all: hierarchical";
    if (const auto at = yaml.find(hier); at != std::string::npos && trial % 2 == 0) {
      yaml.insert(at + hier.size(), ", forward_chunks: 3");
      ++chunked_trials;
    }
    staggered_trials += yaml.find("two_batch_staggered") != std::string::npos;
    // Every third trial outside decode whose stages split into groups of 2 x tp spreads sequences
    // of twice the GPU's tokens over 2 GPUs (context parallelism), every other one of those around
    // a ring beside the attention (by the trial: the draws stay).
    if (kind != "decode" && trial % 3 == 2 && (gpus / pp) % (2 * tp) == 0) {
      const std::int64_t t = std::stoll(yaml.substr(yaml.find("tokens_per_gpu: ") + 16));
      yaml.insert(yaml.find("tokens_per_gpu: "), fmt::format("sequence_length: {}, ", 2 * t));
      yaml.insert(yaml.find("tp: ") + 4 + std::to_string(tp).size(), trial % 2 ? ", cp: 2, cp_comm: ring" : ", cp: 2");
      ++cp_trials;
    }
    // Every fourth trial splits each expert over 2 GPUs (expert tensor parallelism) and halves
    // the EP size (by the trial: the draws stay).
    if (trial % 4 == 0) {
      yaml = replaced(yaml, fmt::format("parallelism: {{ep: {},", ep), fmt::format("parallelism: {{ep: {}, etp: 2,", ep / 2));
      ++etp_trials;
      etp_overlap_trials += tbo;
    }
    // Every other synchronised training trial on one stage without overlap shards its weights
    // too (FSDP), with no buckets (by the trial: the draws stay).
    if (!sync.empty() && pp == 1 && !tbo && trial % 2 == 0) {
      const std::size_t from = yaml.find("gradient_sync_buckets: "), to = yaml.find("optimizer_sharding: ");
      yaml = replaced(yaml, yaml.substr(from, yaml.find(", ", to) + 2 - from), "parameter_sharding: true, ");
      ++sharded_trials;
    }
    INFO(yaml);
    const auto r = scenarios::run_experiment(scenarios::load_scenario_text(yaml, "fuzz.yaml"));
    check_stages_tile(r);
    std::int64_t gpu_routed = 0, gpu_computed = 0, gpu_dropped = 0;
    for (const auto& g : r.stats.gpus()) {
      gpu_routed += g.routed;  // of its tokens
      gpu_dropped += g.dropped;
      gpu_computed += g.computed;  // by its experts
    }
    CHECK(gpu_routed == gpu_computed + gpu_dropped);
    std::int64_t routed = 0, computed = 0, dropped = 0;
    for (const auto& l : r.stats.layers()) {
      routed += l.routed;
      computed += l.computed;
      dropped += l.dropped;
    }
    // Each layer is routed by its pipeline stage's GPUs (the MTP layer too, and with a draft
    // token two tokens per sequence).
    CHECK(routed == static_cast<std::int64_t>(layers + mtp_run) * batches * (gpus / pp) *
                        std::stoll(yaml.substr(yaml.find("tokens_per_gpu: ") + 16)) * (1 + draft) * top_k);
    CHECK(routed == computed + dropped);
  }
  CHECK(fp4_trials >= 4);  // the draws above give some FP4 inference trials
  CHECK(chunked_trials >= 4);  // and some hierarchical ones forwarding in chunks
  CHECK(scored_trials >= 4);   // and some with groups chosen by scores
  CHECK(staggered_trials >= 4);  // and some forward passes with staggered two-batch overlap
  CHECK(cp_trials >= 4);         // and some with context parallelism
  CHECK(etp_trials >= 4);        // and some with expert tensor parallelism
  CHECK(etp_overlap_trials >= 2);  // some of those with two-batch overlap
  CHECK(sharded_trials >= 3);      // and some with sharded weights
}

TEST_CASE("Two-batch overlap in training hides all-to-all time in both passes", "[models][overlap][training]") {
  // A network-bound training step (wide rows, small experts, slow NICs): with no SMs taken by
  // communication, overlapping the halves leaves less time waiting on the network, forward and
  // backward, and the routing and bytes are those of the step without overlap.
  const auto run = [](const std::string& overlap) {
    return scenarios::run_experiment(scenarios::load_scenario_text(R"(
cluster: {nodes: 2, gpus_per_node: 4, gpu: H100, scale_out: {nic_bandwidth: 100Gbps}}
model: {moe_layers: 4, hidden: 4096, expert_ffn: 1024, experts: 16, top_k: 4, attention_heads: 32}
parallelism: {ep: 8}
workload: {kind: training, tokens_per_gpu: 1024, )" + overlap + R"(}
)", "t.yaml"));
  };
  const auto plain = run("seed: 1"), tbo = run("overlap: two_batch, comm_sm_fraction: 0");
  const auto waits = [](const scenarios::RunResult& r) {
    Time w;
    for (const auto& g : r.stats.gpus()) w += g.stage_total[idx(Stage::dispatch)] + g.stage_total[idx(Stage::combine)];
    return w;
  };
  CHECK(waits(tbo) < waits(plain));
  CHECK(tbo.stats.step_time() < plain.stats.step_time());
  CHECK(tbo.stats.backward_layers().size() == plain.stats.backward_layers().size());
  for (std::size_t l = 0; l < plain.stats.layers().size(); ++l) {
    CHECK(tbo.stats.backward_layers()[l].network_bytes == plain.stats.backward_layers()[l].network_bytes);
    CHECK(tbo.stats.layers()[l].routed == plain.stats.layers()[l].routed);
  }
  CHECK(tbo.stats.gpus()[0].backward_total > Time::zero());
}

TEST_CASE("Gradient sync in buckets overlaps the backward pass", "[models][training]") {
  // Four MoE layers, experts synchronised across two EP groups: in 4 buckets each layer's
  // gradients start as soon as its backward is done, and less of the sync is left at the end.
  const auto run = [](int buckets) {
    return scenarios::run_experiment(scenarios::load_scenario_text(fmt::format(R"(
cluster: {{nodes: 2, gpus_per_node: 4, gpu: H100, scale_out: {{nic_bandwidth: 400Gbps}}}}
model: {{moe_layers: 4, hidden: 2048, expert_ffn: 4096, experts: 8, top_k: 2, attention_heads: 16, dense_layers: 1, dense_ffn: 4096}}
parallelism: {{ep: 4}}
workload: {{kind: training, tokens_per_gpu: 2048, gradient_sync: ring, gradient_sync_buckets: {}}}
)", buckets), "b.yaml"));
  };
  const auto one = run(1), four = run(4);
  const auto sync = [](const scenarios::RunResult& r) { return r.stats.gpus()[0].stage_total[idx(Stage::grad_sync)]; };
  CHECK(sync(four) < sync(one));
  CHECK(four.stats.step_time() < one.stats.step_time());
  // The same gradients in all: per bucket a ring over all 8 GPUs and one per EP rank, their
  // chunks rounded up, so at least as many bytes and at most a few more per ring step.
  CHECK(four.stats.gradient_sync_bytes() >= one.stats.gradient_sync_bytes());
  CHECK(four.stats.gradient_sync_bytes() <= one.stats.gradient_sync_bytes() + 4 * (14 * 8 + 4 * 2 * 2) * 2);
  check_stages_tile(four);
}

namespace {

// The tiny training step (1 layer, dropless) with extra workload keys.
std::string tiny_training(const std::string& keys, bool dense = false) {
  std::string text = tiny("dropless", 1);
  const std::string from = "workload: {tokens_per_gpu: 1000, sequence_length: 1000}";
  text.replace(text.find(from), from.size(), "workload: {kind: training, tokens_per_gpu: 1000, sequence_length: 1000" + keys + "}");
  if (dense) {
    const std::string heads = "  attention_heads: 8\n";
    text.replace(text.find(heads), heads.size(), heads + "  dense_layers: 1\n  dense_ffn: 1024\n");
  }
  return text;
}

}  // namespace

namespace {

// 4 GPUs on 2 nodes, EP2 (a block of 2 GPUs per node), 4 layers, 2 micro-batches of training
// with a ring gradient sync and the given workload keys (how the state is sharded).
std::string sharded_4gpu(const std::string& sharding) {
  return R"(
cluster: {nodes: 2, gpus_per_node: 2, gpu: H100, scale_out: {nic_bandwidth: 400Gbps}}
model: {moe_layers: 4, hidden: 256, expert_ffn: 512, experts: 4, top_k: 2, attention_heads: 4}
parallelism: {ep: 2}
workload: {kind: training, gradient_sync: ring, tokens_per_gpu: 64, micro_batches: 2, )" +
         sharding + R"(}
)";
}

}  // namespace

TEST_CASE("Sharded weights are gathered before each pass and their gradients scattered after, as derived by hand",
          "[models][training][fsdp]") {
  // The tiny training step of the tests above with `parameter_sharding: true` (FSDP): the layer's
  // 4,196,352 replicated parameters are all-gathered over the 2-GPU ring before its forward, one
  // step of a 4,196,352 B chunk (43,963,520 ps, exposed: nothing runs before it), and again for
  // its backward, started once the forward's is done and over before the forward's dispatch
  // (attention alone takes 104 us), so hidden. The experts stay whole (one EP group holds each
  // once). Backward ends 43,963,520 ps later than without (at 843 us); then the reduce-scatter
  // (one step, 43,963,520 ps) and the update of half the replicated and all the expert weights
  // (146,829,312 ps), and no all-gather after it: the same step as the sharded optimizer's, the
  // gather moved from its end to its start.
  const std::string text = tiny_training(", gradient_sync: ring, parameter_sharding: true");
  const auto sc = scenarios::load_scenario_text(text, "fsdp.yaml");
  CHECK(sc.forward.optimizer_sharding);  // implied
  const auto r = scenarios::run_experiment(sc);
  CHECK(r.stats.step_time() == Time::ps(1'033'791'680));
  for (const auto& g : r.stats.gpus()) {
    CHECK(g.stage_total[idx(Stage::param_gather)] == Time::ps(43'963'520));
    CHECK(g.stage_total[idx(Stage::grad_sync)] == Time::ps(43'963'520));
    CHECK(g.stage_total[idx(Stage::optimizer)] == Time::ps(146'829'312));
  }
  CHECK(r.stats.param_gather_bytes() == 4 * 4'196'352);  // two all-gathers, 2 GPUs x one chunk each
  CHECK(r.stats.gradient_sync_bytes() == 2 * 4'196'352);  // one reduce-scatter
  CHECK(r.stats.layers()[0].stage_max[idx(Stage::param_gather)] == Time::ps(43'963'520));  // the forward's
  CHECK(r.stats.backward_layers()[0].stage_max[idx(Stage::param_gather)] == Time::zero());  // the backward's: prefetched
  const std::string csv = summary_csv(sc, r);
  CHECK(csv_value(csv, "parameter_sharding") == "yes");
  CHECK(csv_value(csv, "param_gather_wait_us") == "43.963520");
  CHECK(csv_value(csv, "param_gather_bytes") == "16785408");
  check_stages_tile(r);
}

TEST_CASE("Sharded weights: every layer gathered in each micro-batch and direction, expert shards over the blocks",
          "[models][training][fsdp]") {
  // 4 GPUs on 2 nodes, EP2: 2 blocks, each expert shard (2 experts) on one GPU of each. 4 layers,
  // 2 micro-batches: 16 all-gathers of a layer's weights (each micro-batch, forward and
  // backward), 8 reduce-scatters of its gradients (each micro-batch). Ring: an all-gather or
  // reduce-scatter of S over n GPUs moves n (n - 1) ceil(S / n) bytes.
  const auto yaml = sharded_4gpu;
  const auto sc = scenarios::load_scenario_text(yaml("parameter_sharding: true"), "fsdp.yaml");
  const auto r = scenarios::run_experiment(sc);
  const std::int64_t dense = models::moe_layer_replicated(sc.forward.model, 0) * 2;  // bytes, bf16
  const std::int64_t experts = 2 * 3 * 256 * 512 * 2;                             // a GPU's 2 experts, bf16
  const auto ring = [](std::int64_t n, std::int64_t s) { return n * (n - 1) * ((s + n - 1) / n); };
  const std::int64_t per_layer = ring(4, dense) + 2 * ring(2, experts);  // the stage's ring and the 2 shards' rings
  CHECK(r.stats.param_gather_bytes() == 16 * per_layer);
  CHECK(r.stats.gradient_sync_bytes() == 8 * per_layer);  // bf16 gradients: the same sizes
  for (const auto& g : r.stats.gpus()) CHECK(g.stage_total[idx(Stage::param_gather)] > Time::zero());
  check_stages_tile(r);
  // Sharding the weights needs less memory than sharding the optimizer alone, once there are
  // enough layers that a share of all of them and two whole ones are less than all of them.
  CHECK(memory_gb_max(yaml("parameter_sharding: true")) < memory_gb_max(yaml("optimizer_sharding: true")));
  CHECK(memory_gb_max(yaml("optimizer_sharding: true")) < memory_gb_max(yaml("optimizer_sharding: false")));
  // With expert tensor parallelism (2 x 4 GPUs, EP2 ETP2: 2 blocks of 4) a GPU gathers its half
  // of its 2 experts, over the 2 GPUs holding the same half.
  std::string etp = replaced(yaml("parameter_sharding: true"), "nodes: 2, gpus_per_node: 2", "nodes: 2, gpus_per_node: 4");
  etp = replaced(etp, "parallelism: {ep: 2}", "parallelism: {ep: 2, etp: 2}");
  const auto split = scenarios::run_experiment(scenarios::load_scenario_text(etp, "etp.yaml"));
  CHECK(split.stats.param_gather_bytes() == 16 * (ring(8, dense) + 4 * ring(2, experts / 2)));
  check_stages_tile(split);
}

TEST_CASE("FP8 weight gathers: the linear layers' and experts' weights at one byte, the router's at model.dtype",
          "[models][training][fsdp]") {
  // The 4-GPU step above with FP8 GEMMs, its weights gathered in FP8 (workload.param_gather_dtype:
  // fp8): a layer's replicated weights R are the attention's and the router's 256 x 4 (no vocab,
  // no dense layers here), so the gather moves (R - 1024) + 2 x 1024 bytes of them, and a GPU's
  // 2 experts at a byte a weight. The gradients' reduce-scatters keep their bf16 bytes.
  const auto yaml = [](const std::string& sharding) { return sharded_4gpu(sharding) + "compute: {gemm_dtype: fp8}\n"; };
  const auto ring = [](std::int64_t n, std::int64_t s) { return n * (n - 1) * ((s + n - 1) / n); };
  const auto bf16_sc = scenarios::load_scenario_text(yaml("parameter_sharding: true"), "fsdp.yaml");
  const auto fp8_sc = scenarios::load_scenario_text(yaml("parameter_sharding: true, param_gather_dtype: fp8"), "fsdp8.yaml");
  CHECK(fp8_sc.forward.fp8_param_gather);
  const std::int64_t replicated = models::moe_layer_replicated(fp8_sc.forward.model, 0), router = 256 * 4;
  const std::int64_t experts = 2 * 3 * 256 * 512;  // a GPU's 2 experts' weights
  const auto bf16 = scenarios::run_experiment(bf16_sc), fp8 = scenarios::run_experiment(fp8_sc);
  CHECK(bf16.stats.param_gather_bytes() == 16 * (ring(4, 2 * replicated) + 2 * ring(2, 2 * experts)));
  CHECK(fp8.stats.param_gather_bytes() == 16 * (ring(4, replicated - router + 2 * router) + 2 * ring(2, experts)));
  CHECK(fp8.stats.gradient_sync_bytes() == bf16.stats.gradient_sync_bytes());
  CHECK(fp8.stats.step_time() < bf16.stats.step_time());
  check_stages_tile(fp8);
  CHECK(csv_value(summary_csv(fp8_sc, fp8), "param_gather_dtype") == "fp8");
  CHECK(csv_value(summary_csv(bf16_sc, bf16), "param_gather_dtype").empty());
  // The two layers held gathered take half the bytes.
  CHECK(memory_gb_max(yaml("parameter_sharding: true, param_gather_dtype: fp8")) < memory_gb_max(yaml("parameter_sharding: true")));
  // A sharded optimizer (ZeRO-1) gathers the stage's updated weights after the optimizer, in FP8,
  // and holds them so (Megatron-Core's --fp8-param-gather): 4 layers' worth.
  const auto z_bf16 = scenarios::run_experiment(scenarios::load_scenario_text(yaml("optimizer_sharding: true"), "z.yaml"));
  const auto z_fp8 =
      scenarios::run_experiment(scenarios::load_scenario_text(yaml("optimizer_sharding: true, param_gather_dtype: fp8"), "z8.yaml"));
  const std::int64_t gather_bf16 = ring(4, 4 * 2 * replicated) + 2 * ring(2, 4 * 2 * experts);
  const std::int64_t gather_fp8 = ring(4, 4 * (replicated - router) + 4 * 2 * router) + 2 * ring(2, 4 * experts);
  CHECK(z_bf16.stats.gradient_sync_bytes() - z_fp8.stats.gradient_sync_bytes() == gather_bf16 - gather_fp8);
  CHECK(memory_gb_max(yaml("optimizer_sharding: true, param_gather_dtype: fp8")) < memory_gb_max(yaml("optimizer_sharding: true")));
}

TEST_CASE("Hybrid sharding: gathers within a shard group, reduce-scatters there and all-reduces each shard across groups",
          "[models][training][fsdp]") {
  // The 4-GPU FSDP step above (2 nodes of 2, EP2: a block is a node) in shard groups of 2 GPUs,
  // one node each: a group holds the replicated weights sharded over its 2 GPUs and each expert
  // shard on its one GPU (a group of one block: not sharded, nothing to gather). Per layer and
  // micro-batch: the replicated gradients reduce-scattered in each node, then each half
  // all-reduced across the nodes by the GPUs at the same place; each expert shard's gradients
  // all-reduced over its 2 blocks. Ring: a reduce-scatter or all-gather of S over n GPUs moves
  // n (n - 1) ceil(S / n) bytes, an all-reduce twice that.
  const auto yaml = sharded_4gpu;
  const auto ring = [](std::int64_t n, std::int64_t s) { return n * (n - 1) * ((s + n - 1) / n); };
  const auto hsdp = scenarios::load_scenario_text(yaml("parameter_sharding: true, shard_group: 2"), "hsdp.yaml");
  CHECK(hsdp.forward.shard_group == 2);
  const std::int64_t dense = models::moe_layer_replicated(hsdp.forward.model, 0) * 2;  // bytes, bf16
  const std::int64_t experts = 2 * 3 * 256 * 512 * 2;                               // a GPU's 2 experts, bf16
  const auto r = scenarios::run_experiment(hsdp);
  CHECK(r.stats.param_gather_bytes() == 16 * 2 * ring(2, dense));  // 16 gathers, in each of the 2 nodes
  const std::int64_t synced = 2 * ring(2, dense) + 2 * 2 * ring(2, (dense + 1) / 2) + 2 * 2 * ring(2, experts);
  CHECK(r.stats.gradient_sync_bytes() == 8 * synced);
  // Every GPU then waits for its all-reduce across the nodes after the last backward.
  for (const auto& g : r.stats.gpus()) CHECK(g.stage_total[idx(Stage::grad_sync)] > Time::zero());
  check_stages_tile(r);
  CHECK(csv_value(summary_csv(hsdp, r), "shard_group") == "2");
  const auto fsdp_sc = scenarios::load_scenario_text(yaml("parameter_sharding: true"), "fsdp.yaml");
  const auto fsdp = scenarios::run_experiment(fsdp_sc);
  CHECK(csv_value(summary_csv(fsdp_sc, fsdp), "shard_group") == "4");
  // Sharded over fewer GPUs, a GPU holds more than under FSDP across the whole cluster, and a
  // group of all 4 is FSDP itself.
  CHECK(memory_gb_max(yaml("parameter_sharding: true, shard_group: 2")) > memory_gb_max(yaml("parameter_sharding: true")));
  const auto whole = scenarios::run_experiment(scenarios::load_scenario_text(yaml("parameter_sharding: true, shard_group: 4"), "g4.yaml"));
  CHECK(whole.stats.step_time() == fsdp.stats.step_time());
  CHECK(whole.stats.gradient_sync_bytes() == fsdp.stats.gradient_sync_bytes());
  // ZeRO-1 in groups (Megatron-Core's distributed optimizer instances): the same reduce-scatter
  // and all-reduce once a step, and the updated weights all-gathered in each group.
  const auto zero1 = scenarios::run_experiment(scenarios::load_scenario_text(yaml("optimizer_sharding: true, shard_group: 2"), "z.yaml"));
  const std::int64_t replicated4 = dense * 4 + (models::dense_layers_params(hsdp.forward.model) + 2 * models::embedding_params(hsdp.forward.model)) * 2;
  CHECK(zero1.stats.gradient_sync_bytes() ==
        2 * ring(2, replicated4) + 2 * 2 * ring(2, (replicated4 + 1) / 2) + 2 * 2 * ring(2, 4 * experts) + 2 * ring(2, replicated4));
  CHECK(memory_gb_max(yaml("optimizer_sharding: true, shard_group: 2")) > memory_gb_max(yaml("optimizer_sharding: true")));
  check_stages_tile(zero1);
}

TEST_CASE("A sharded optimizer shards a GPU's tensor-parallel share over the GPUs of its tensor-parallel rank",
          "[models][training][fsdp]") {
  // TP2 and EP2 on 2 GPUs: each GPU holds its half of the attention, which no other GPU holds,
  // and its expert, which no other GPU holds: there is nothing to shard, so the update and the
  // memory are the unsharded optimizer's (sharding the half over both GPUs would halve it).
  const auto yaml = [](const std::string& keys) {
    return replaced(tiny_tp(), "workload: {tokens_per_gpu: 1000, sequence_length: 1000}",
                    "workload: {kind: training, tokens_per_gpu: 1000, sequence_length: 1000, gradient_sync: ring" + keys + "}");
  };
  const auto run = [&](const std::string& keys) { return scenarios::run_experiment(scenarios::load_scenario_text(yaml(keys), "tp.yaml")); };
  const auto whole = run(""), zero1 = run(", optimizer_sharding: true"), fsdp = run(", parameter_sharding: true");
  for (std::size_t g = 0; g < 2; ++g) {
    CHECK(whole.stats.gpus()[g].stage_total[idx(Stage::optimizer)] > Time::zero());
    CHECK(zero1.stats.gpus()[g].stage_total[idx(Stage::optimizer)] == whole.stats.gpus()[g].stage_total[idx(Stage::optimizer)]);
    CHECK(fsdp.stats.gpus()[g].stage_total[idx(Stage::optimizer)] == whole.stats.gpus()[g].stage_total[idx(Stage::optimizer)]);
  }
  CHECK(memory_gb_max(yaml(", optimizer_sharding: true")) == memory_gb_max(yaml("")));
}

TEST_CASE("compute.elementwise_kernels: the memory-bound kernels between the GEMMs, as derived by hand", "[models][elementwise]") {
  // The tiny dropless layer (BF16 step 283,379,776 ps, above) at 1 TB/s with the kernels between
  // its GEMMs apart. Attention: its two norms, 8 x 2 B x 1024 x 1000 tokens = 16,384,000 B, and
  // the rotary embedding of its 1024-wide queries and keys, 2 x 2 B x 1000 x 2048 = 8,192,000 B:
  // 24,576,000 ps after its 104,386,560. Router: the permutation, 1000 rows read and 2000
  // written, 6,144,000 B after its 2,060,096 ps. Experts: the SwiGLU over 2000 rows, 2 x 1024
  // read and 1024 written, 12,288,000 B after the GEMMs' 125,829,120 ps (the rest of the bytes
  // fewer). The all-to-alls and the reduce as before.
  const std::string on = replaced(tiny("dropless", 1), "compute: {flops_efficiency: 1,", "compute: {elementwise_kernels: true, flops_efficiency: 1,");
  const auto sc = scenarios::load_scenario_text(on, "tiny.yaml");
  CHECK(sc.roofline.elementwise_kernels);
  const auto r = scenarios::run_experiment(sc);
  for (const auto& g : r.stats.gpus()) {
    CHECK(g.stage_total[idx(Stage::attention)] == Time::ps(104'386'560 + 24'576'000));
    CHECK(g.stage_total[idx(Stage::router)] == Time::ps(2'060'096 + 6'144'000));
    CHECK(g.stage_total[idx(Stage::experts)] == Time::ps(125'829'120 + 12'288'000));
  }
  CHECK(r.stats.step_time() == Time::ps(283'379'776 + 24'576'000 + 6'144'000 + 12'288'000));
  check_stages_tile(r);
  // Off (the default) nothing changes, and the FLOPs are the same either way.
  const auto off = scenarios::run_experiment(scenarios::load_scenario_text(tiny("dropless", 1), "tiny.yaml"));
  CHECK(off.stats.step_time() == Time::ps(283'379'776));
  CHECK(r.model_flops == off.model_flops);
  std::ostringstream text;
  tools::print_human_summary(text, sc, r, {});
  CHECK_THAT(text.str(), Catch::Contains("rotary embeddings, permutations and SwiGLU activations as memory-bound kernels of their own"));

  // Training: the backward moves the norms', the rotary embedding's and the permutation's bytes
  // once more and the SwiGLU's twice: 24,576,000 + 6,144,000 + 2 x 12,288,000 ps; with
  // recompute_modules moe_act the SwiGLU's once more, with layernorm the norms' (16,384,000).
  const auto step = [](const std::string& keys, bool elementwise) {
    std::string text = tiny_training(keys);
    if (elementwise) text = replaced(text, "compute: {flops_efficiency: 1,", "compute: {elementwise_kernels: true, flops_efficiency: 1,");
    return scenarios::run_experiment(scenarios::load_scenario_text(text, "t.yaml")).stats.step_time();
  };
  const Time forward = Time::ps(24'576'000 + 6'144'000 + 12'288'000), backward = Time::ps(24'576'000 + 6'144'000 + 2 * 12'288'000);
  CHECK(step("", true) - step("", false) == forward + backward);
  CHECK(step(", recompute: selective, recompute_modules: [moe_act]", true) - step(", recompute: selective, recompute_modules: [moe_act]", false) ==
        forward + backward + Time::ps(12'288'000));
  CHECK(step(", recompute: selective, recompute_modules: [layernorm]", true) -
            step(", recompute: selective, recompute_modules: [layernorm]", false) ==
        forward + backward + Time::ps(16'384'000));
  CHECK_THROWS_WITH(scenarios::load_scenario_text(replaced(tiny("dropless", 1), "compute: {", "compute: {elementwise_kernels: yes, "), "e.yaml"),
                    Catch::Contains("compute.elementwise_kernels"));
  // Each kernel apart is a launch: with a kernel_overhead of 1 us the forward's attention, router,
  // expert and reduce kernels take 4 us, and the norms, rotary embedding, permutation and SwiGLU
  // 5 us more.
  const auto forward_step = [](bool elementwise, const char* overhead) {
    std::string text = replaced(tiny("dropless", 1), "compute: {flops_efficiency: 1,",
                                fmt::format("compute: {{kernel_overhead: {}, elementwise_kernels: {}, flops_efficiency: 1,", overhead,
                                            elementwise ? "true" : "false"));
    return scenarios::run_experiment(scenarios::load_scenario_text(text, "o.yaml")).stats.step_time();
  };
  CHECK(forward_step(false, "1us") - forward_step(false, "0us") == Time::us(4));
  CHECK(forward_step(true, "1us") - forward_step(true, "0us") == Time::us(9));
}

TEST_CASE("The backward's gradients go to the experts in gradient_dispatch_dtype rows, as derived by hand", "[models][all_to_all]") {
  const std::string base = tiny("dropless", 1);
  // Training: the backward's gradients go to the experts in combine_dtype rows, or in
  // gradient_dispatch_dtype's (DeepSeek-V3: fp8), and come back in combine_dtype's.
  const auto training = [](const std::string& network) {
    return scenarios::run_experiment(scenarios::load_scenario_text(tiny_training("") + network, "t.yaml"));
  };
  const auto plain = training("network: {dispatch_dtype: fp8}\n");
  CHECK(plain.stats.backward_layers()[0].network_bytes == 4 * 1000 * 2048);
  const auto ds = training("network: {dispatch_dtype: fp8, gradient_dispatch_dtype: fp8}\n");
  CHECK(ds.stats.layers()[0].network_bytes == 2 * 1000 * 1056 + 2 * 1000 * 2048);
  CHECK(ds.stats.backward_layers()[0].network_bytes == 2 * 1000 * 1056 + 2 * 1000 * 2048);
  // The gradients reach the experts 9.92 us sooner (1,056,000 instead of 2,048,000 B at 100 GB/s).
  CHECK(ds.stats.step_time() == plain.stats.step_time() - Time::ps(9'920'000));
  CHECK_THROWS_WITH(scenarios::load_scenario_text(base + "network: {gradient_dispatch_dtype: fp8}\n", "f.yaml"),
                    Catch::Contains("network.gradient_dispatch_dtype: only used with 'workload.kind: training'"));
}

TEST_CASE("FP32 gradients and BF16 Adam moments change the optimizer's bytes, the sync and memory, as derived by hand",
          "[models][training]") {
  // The tiny training step's optimizer: 7,342,080 parameters a GPU x 28 B (bf16 gradient read,
  // fp32 master and moments read and written, bf16 weight written) = 205,578,240 ps on 1 TB/s.
  CHECK(models::adam_cost(1000).bytes == 28'000);
  CHECK(models::adam_cost(1000, 4, 2, 2).bytes == (4 + 8 + 8 + 2) * 1000);
  const auto run = [](const std::string& keys) {
    const auto sc = scenarios::load_scenario_text(tiny_training(", gradient_sync: ring" + keys), "g.yaml");
    auto r = scenarios::run_experiment(sc);
    return std::pair{std::stod(csv_value(summary_csv(sc, r), "memory_gb_max")), std::move(r)};
  };
  const auto [gb, plain] = run("");
  REQUIRE(plain.stats.gpus()[0].stage_total[idx(Stage::optimizer)] == Time::ps(205'578'240));
  const auto [moments_gb, moments] = run(", adam_moments_dtype: bf16");
  CHECK(moments.stats.gpus()[0].stage_total[idx(Stage::optimizer)] == Time::ps(7'342'080LL * 20));
  CHECK(gb - moments_gb == Approx(7'342'080 * 4 / 1e9).margin(0.0011));  // two moments, 2 B less each
  CHECK(moments.stats.gradient_sync_bytes() == plain.stats.gradient_sync_bytes());
  const auto [fp32_gb, fp32] = run(", gradient_dtype: fp32");
  CHECK(fp32.stats.gpus()[0].stage_total[idx(Stage::optimizer)] == Time::ps(7'342'080LL * 30));
  CHECK(fp32_gb - gb == Approx(7'342'080 * 2 / 1e9).margin(0.0011));
  // The gradients are all-reduced in fp32: twice the bytes, and a longer sync.
  CHECK(fp32.stats.gradient_sync_bytes() == 2 * plain.stats.gradient_sync_bytes());
  CHECK(fp32.stats.gpus()[0].stage_total[idx(Stage::grad_sync)] > plain.stats.gpus()[0].stage_total[idx(Stage::grad_sync)]);
  // With a sharded optimizer the weights come back in the model dtype: the gradients'
  // reduce-scatter doubles, the all-gather does not.
  const auto s16 = run(", optimizer_sharding: true").second;
  const auto s32 = run(", optimizer_sharding: true, gradient_dtype: fp32").second;
  CHECK(s32.stats.gradient_sync_bytes() * 2 == 3 * s16.stats.gradient_sync_bytes());
}

TEST_CASE("Gradient accumulation runs the micro-batches one after the other and syncs once, as derived by hand",
          "[models][training]") {
  // The tiny step routes every token to both experts, so every micro-batch is the same: forward
  // and backward end at 799,035,328 ps (the tiny training step above), the next micro-batch
  // starts there. With gradient_sync: ring the gradients are all-reduced once, after the last
  // (87,927,040 ps, the same bytes as without accumulation), then the optimizer once
  // (205,578,240). Three micro-batches: 3 x 799,035,328 + 87,927,040 + 205,578,240 ps.
  const auto one = scenarios::run_experiment(scenarios::load_scenario_text(tiny_training(", gradient_sync: ring"), "one.yaml"));
  const auto r =
      scenarios::run_experiment(scenarios::load_scenario_text(tiny_training(", gradient_sync: ring, micro_batches: 3"), "acc.yaml"));
  CHECK(r.stats.step_time() == Time::ps(3 * 799'035'328LL + 87'927'040LL + 205'578'240LL));
  for (const auto& g : r.stats.gpus()) {
    CHECK(g.stage_total[idx(Stage::grad_sync)] == Time::ps(87'927'040));
    CHECK(g.stage_total[idx(Stage::optimizer)] == Time::ps(205'578'240));
    CHECK(g.stage_total[idx(Stage::experts)] == Time::ps(3 * 3 * 125'829'120LL));
    CHECK(g.backward_total == Time::ps(3 * (799'035'328LL - 283'379'776LL)));
  }
  CHECK(r.stats.gradient_sync_bytes() == one.stats.gradient_sync_bytes());
  REQUIRE(r.stats.micro_batches() == 3);
  REQUIRE(r.stats.layers().size() == 3);
  for (std::size_t m = 0; m < 3; ++m) {
    const Time start = Time::ps(static_cast<std::int64_t>(m) * 799'035'328LL);
    CHECK(r.stats.layers()[m].start == start);
    CHECK(r.stats.layers()[m].end == start + Time::ps(283'379'776));
    CHECK(r.stats.backward_layers()[m].end == start + Time::ps(799'035'328));
    CHECK(r.stats.layers()[m].routed == 4000);
    CHECK(r.stats.layers()[m].flows == 4);
  }
  CHECK(r.model_flops == Approx(3 * one.model_flops).epsilon(1e-12));

  SECTION("each micro-batch runs the dense layers forward first and backward last") {
    // Per micro-batch 450,680,896 forward (dense 167,301,120 first), 515,655,552 MoE backward,
    // 2 x 167,301,120 dense backward; then the optimizer (411,099,136), as in the dense test above.
    const auto d = scenarios::run_experiment(scenarios::load_scenario_text(tiny_training(", micro_batches: 2", true), "d.yaml"));
    const std::int64_t batch = 450'680'896LL + 515'655'552LL + 2 * 167'301'120LL;
    CHECK(d.stats.step_time() == Time::ps(2 * batch + 411'099'136LL));
    CHECK(d.stats.gpus()[0].stage_total[idx(Stage::dense)] == Time::ps(6 * 167'301'120LL));
    CHECK(d.stats.layers()[1].start == Time::ps(batch + 167'301'120LL));  // micro-batch 1's layer 0
  }
  SECTION("the reports count every micro-batch's tokens, and one micro-batch's activations") {
    const auto sc1 = scenarios::load_scenario_text(tiny_training(""), "one.yaml");
    const auto sc2 = scenarios::load_scenario_text(tiny_training(", micro_batches: 2"), "two.yaml");
    const auto r1 = scenarios::run_experiment(sc1), r2 = scenarios::run_experiment(sc2);
    const auto column = [](const scenarios::Scenario& sc, const scenarios::RunResult& run, const std::string& name) {
      return csv_value(summary_csv(sc, run), name);
    };
    CHECK(column(sc2, r2, "micro_batches") == "2");
    CHECK(column(sc1, r1, "tokens_per_step") == "2000");
    CHECK(column(sc2, r2, "tokens_per_step") == "4000");
    CHECK(column(sc2, r2, "routed") == "8000");
    // Weights, optimizer state and one micro-batch's activations: the same memory.
    CHECK(column(sc2, r2, "memory_gb_max") == column(sc1, r1, "memory_gb_max"));
    CHECK(r2.stats.peak_batch_rows(0) == r1.stats.peak_batch_rows(0));
    CHECK(r2.stats.gpus()[0].computed == 2 * r1.stats.gpus()[0].computed);
    // layers.csv: a row per micro-batch, layer and pass, in the order they ran.
    std::ostringstream out;
    tools::write_layers_csv(out, sc2, r2);
    std::istringstream in(out.str());
    std::string line;
    std::getline(in, line);
    CHECK(line.rfind("layer,pass,micro_batch,", 0) == 0);
    std::vector<std::string> rows;
    while (std::getline(in, line)) {
      const auto v = tools::csv_fields(line);
      rows.push_back(v.at(0) + "," + v.at(1) + "," + v.at(2) + "," + v.at(3));
    }
    CHECK(rows == std::vector<std::string>{"0,forward,0,0.000000", "0,backward,0,283.379776", "0,forward,1,799.035328",
                                           "0,backward,1,1082.415104"});
  }
}

TEST_CASE("Forward-backward overlap runs a backward with the next forward, as derived by hand", "[models][overlap][training]") {
  // The tiny training step, two micro-batches, no SMs taken by communication. Its passes: forward
  // F = attention A 104,386,560 + router Q 2,060,096 + dispatch d 22,480,000 + experts E
  // 125,829,120 + combine d + reduce R 6,144,000 = 283,379,776; backward R + d + 2E + d + 2Q + 2A
  // = 515,655,552. Micro-batch 0's forward alone (F), then micro-batch 1's forward with
  // micro-batch 0's backward: B's reduce gradient (R; its dispatch leaves), F's attention and
  // router (A + Q; its dispatch leaves; B's arrived long ago), B's experts (2E; B's combine
  // leaves), F's experts (E; F's combine leaves, B's is back since d < E), B's router and
  // attention (2Q + 2A), F's reduce (R; F's combine back since d < 2Q + 2A): 2R + 3A + 3Q + 3E =
  // 709,115,328, the two passes' compute without their four all-to-all waits (4d = 89,920,000
  // less than F + B). Then micro-batch 1's backward alone and the optimizer (205,578,240).
  const Time d = Time::ps(22'480'000);
  const auto r = scenarios::run_experiment(
      scenarios::load_scenario_text(tiny_training(", micro_batches: 2, overlap: forward_backward, comm_sm_fraction: 0"), "fb.yaml"));
  CHECK(r.stats.step_time() == Time::ps(283'379'776LL + 709'115'328LL + 515'655'552LL + 205'578'240LL));
  for (const auto& g : r.stats.gpus()) {
    CHECK(g.stage_total[idx(Stage::dispatch)] == d * 2);  // the passes alone: micro-batch 0's forward, 1's backward
    CHECK(g.stage_total[idx(Stage::combine)] == d * 2);
    CHECK(g.stage_total[idx(Stage::experts)] == Time::ps(2 * 3 * 125'829'120LL));
    CHECK(g.backward_total == Time::ps(2 * (515'655'552LL - 2 * 22'480'000LL)) + d * 2);
  }
  check_stages_tile(r);
  // The same work and routing as without overlap, and micro-batch 1's forward starts with the
  // pair, after micro-batch 0's reduce gradient.
  const auto plain = scenarios::run_experiment(scenarios::load_scenario_text(tiny_training(", micro_batches: 2"), "plain.yaml"));
  CHECK(plain.stats.step_time() - r.stats.step_time() == d * 4);
  CHECK(r.model_flops == Approx(plain.model_flops).epsilon(1e-12));
  CHECK(r.stats.layers()[1].start == Time::ps(283'379'776LL + 6'144'000LL));
  CHECK(r.stats.backward_layers()[0].start == Time::ps(283'379'776LL));
  CHECK(r.stats.layers()[1].routed == plain.stats.layers()[1].routed);

  SECTION("the dense layers run forward before the pair and backward after it") {
    // Dense forward 167,301,120 before each micro-batch's first layer, backward twice that after
    // each one's last: the pair still saves exactly 4d.
    const auto fb = scenarios::run_experiment(scenarios::load_scenario_text(
        tiny_training(", micro_batches: 2, overlap: forward_backward, comm_sm_fraction: 0", true), "fbd.yaml"));
    const auto dense = scenarios::run_experiment(scenarios::load_scenario_text(tiny_training(", micro_batches: 2", true), "d.yaml"));
    CHECK(dense.stats.step_time() - fb.stats.step_time() == d * 4);
    CHECK(fb.stats.gpus()[0].stage_total[idx(Stage::dense)] == Time::ps(6 * 167'301'120LL));
    check_stages_tile(fb);
  }
  SECTION("the all-to-all kernels' SMs slow the pair's compute, not the passes alone") {
    // Default share 20/132: the pair's expert stages (E and 2E) run 132/112 times slower.
    const auto slow = scenarios::run_experiment(
        scenarios::load_scenario_text(tiny_training(", micro_batches: 2, overlap: forward_backward"), "slow.yaml"));
    CHECK(slow.stats.gpus()[0].stage_total[idx(Stage::experts)] ==
          Time::ps(3 * 125'829'120LL + std::llround(2 * 125'829'120.0 * 132 / 112) + std::llround(125'829'120.0 * 132 / 112)));
  }
  SECTION("two micro-batches' activations are held at once, and the reports say so") {
    const auto sc = scenarios::load_scenario_text(tiny_training(", micro_batches: 2, overlap: forward_backward"), "fb.yaml");
    const auto plain_sc = scenarios::load_scenario_text(tiny_training(", micro_batches: 2"), "plain.yaml");
    CHECK(models::pipeline_held_layers(sc.forward, 0) == 2);
    CHECK(models::pipeline_held_layers(plain_sc.forward, 0) == 1);
    const auto run = scenarios::run_experiment(sc);
    CHECK(csv_value(summary_csv(sc, run), "overlap") == "forward_backward");
    CHECK(csv_value(summary_csv(plain_sc, plain), "overlap") == "none");
    CHECK(std::stod(csv_value(summary_csv(sc, run), "memory_gb_max")) > std::stod(csv_value(summary_csv(plain_sc, plain), "memory_gb_max")));
    std::ostringstream printed;
    tools::print_human_summary(printed, sc, run, {});
    CHECK_THAT(printed.str(), Catch::Contains("forward-backward (combined 1F1B): 1 of the stage's 2 backward passes ran together"));
  }
}

TEST_CASE("Forward-backward overlap schedules one forward more first and pairs each later backward with a forward",
          "[models][overlap][pipeline]") {
  models::ForwardSpec f;
  f.model.moe_layers = 4;
  f.micro_batches = 4;
  f.training = true;
  f.forward_backward_overlap = true;
  using It = models::PipelineItem;
  const auto F = [](int mb, int c) { return It{mb, c, false}; };
  const auto B = [](int mb, int c, bool with = false) { return It{mb, c, true, false, with}; };
  // No pipeline stages: Megatron-LM's combined 1F1B without pipelining.
  CHECK(models::pipeline_order(f, 0) ==
        std::vector<It>{F(0, 0), F(1, 0), B(0, 0, true), F(2, 0), B(1, 0, true), F(3, 0), B(2, 0, true), B(3, 0)});
  // Interleaved, PP2 with 2 chunks per stage: stage 0 runs 4 + 1 forwards first, stage 1 2 + 1.
  f.pp = 2;
  f.virtual_stages = 2;
  CHECK(models::pipeline_order(f, 0) == std::vector<It>{F(0, 0), F(1, 0), F(0, 2), F(1, 2), F(2, 0), F(3, 0), B(0, 2, true),
                                                        F(2, 2), B(1, 2, true), F(3, 2), B(0, 0, true), B(1, 0), B(2, 2), B(3, 2),
                                                        B(2, 0), B(3, 0)});
  CHECK(models::pipeline_held_layers(f, 0) == 6);  // one chunk more than without overlap (5)
  CHECK(models::pipeline_held_layers(f, 1) == 4);  // (3)
  // Never a backward with the forward it needs: in every order, an overlapped backward's own
  // forward (same micro-batch and chunk) comes before the forward it runs with.
  for (const int pp : {1, 2, 3, 4})
    for (const int v : {1, 2, 3})
      for (int batches = 2; batches <= 9; ++batches) {
        if (pp == 1 && v > 1) continue;
        if (v > 1 && batches % pp != 0) continue;
        f.pp = pp;
        f.virtual_stages = v;
        f.micro_batches = batches;
        f.model.moe_layers = pp * v;
        for (int st = 0; st < pp; ++st) {
          INFO("pp " << pp << " v " << v << " micro-batches " << batches << " stage " << st);
          const auto order = models::pipeline_order(f, st);
          int overlapped = 0, alone = 0;
          for (std::size_t i = 0; i < order.size(); ++i) {
            alone += order[i].backward && !order[i].overlapped;
            if (!order[i].overlapped) continue;
            ++overlapped;
            REQUIRE(i > 0);
            CHECK(!order[i - 1].backward);
            const auto own = std::find(order.begin(), order.end(), F(order[i].micro_batch, order[i].chunk));
            CHECK(own - order.begin() < static_cast<std::ptrdiff_t>(i) - 1);
          }
          // The backwards alone are the cooldown, as many as the warm-up's forwards (those before the
          // first backward, less the one it runs with).
          const auto first_back = std::find_if(order.begin(), order.end(), [](const It& it) { return it.backward; });
          CHECK(alone == (first_back - order.begin()) - (overlapped > 0 ? 1 : 0));
          if (st == pp - 1) CHECK(overlapped > 0);  // the last stage pairs whenever it has a micro-batch per stage
        }
      }
}

TEST_CASE("Random training runs with forward-backward overlap account for every GPU's time", "[models][fuzz][overlap]") {
  // No stages or interleaved stages, 2 to 6 micro-batches, the dense layers, the LM head, shared
  // experts, attention recomputation, gradient sync (in buckets too), tensor parallelism,
  // stragglers and jitter: each run finishes,
  // each GPU's stages tile its time, and the model work and routing are those without overlap.
  sim::Rng pick(11, "test/fuzz-forward-backward");
  int etp_trials = 0;
  for (int trial = 0; trial < 12; ++trial) {
    const int pp = static_cast<int>(pick.uniform_int(3)) == 0 ? 1 : pick.uniform_int(2) ? 2 : 4;
    const int v = pp == 1 ? 1 : 2;
    const int layers = pp * v + static_cast<int>(pick.uniform_int(3));
    const int batches = pp == 1 ? 2 + static_cast<int>(pick.uniform_int(5)) : pp * (1 + static_cast<int>(pick.uniform_int(2)));
    const char* syncs[] = {"", "gradient_sync: ring, ", "gradient_sync: hierarchical, optimizer_sharding: true, ",
                           "gradient_sync: ring, gradient_sync_buckets: 2, "};
    const std::string sync = syncs[layers >= 2 * pp ? pick.uniform_int(4) : pick.uniform_int(3)];
    const std::string recompute = pick.uniform_int(2) ? "recompute: attention, " : "";
    const auto shared = pick.uniform_int(2), dense = pick.uniform_int(2);
    const std::string vocab = pick.uniform_int(2) ? ", vocab: 1000" : "";
    const int nodes = pp * (1 + static_cast<int>(pick.uniform_int(2)));
    const auto tokens = 8 + pick.uniform_int(120);
    const char* algos[] = {"direct", "hierarchical"};
    const char* algo = algos[pick.uniform_int(2)];
    const int tp = pick.uniform_int(2) ? 2 : 1;  // tensor parallelism over each node's 2 GPUs, or none
    std::string stages = (pp == 1 ? "" : fmt::format(", pp: {}, virtual_stages: {}", pp, v)) + fmt::format(", tp: {}", tp);
    // Every other trial whose stages have 4 GPUs splits each expert over 2 of them (expert tensor
    // parallelism; by the trial: the draws stay).
    if (trial % 2 == 0 && nodes * 2 / pp == 4) {
      stages += ", etp: 2";
      ++etp_trials;
    }
    const auto run = [&](const std::string& overlap) {
      const std::string yaml = fuzz_yaml(nodes, layers, shared, dense, vocab, stages, tokens, batches, sync + recompute + overlap,
                                         trial, algo);
      INFO(yaml);
      return scenarios::run_experiment(scenarios::load_scenario_text(yaml, "fuzz.yaml"));
    };
    const auto fb = run("overlap: forward_backward, "), plain = run("");
    check_stages_tile(fb);
    CHECK(fb.model_flops == Approx(plain.model_flops));
    CHECK(fb.stats.tp_bytes() == plain.stats.tp_bytes());  // every tensor-parallel collective once
    REQUIRE(fb.stats.layers().size() == plain.stats.layers().size());
    for (std::size_t l = 0; l < plain.stats.layers().size(); ++l) CHECK(fb.stats.layers()[l].routed == plain.stats.layers()[l].routed);
  }
  CHECK(etp_trials >= 2);
}

TEST_CASE("Each micro-batch draws its own routing, with capacity per micro-batch", "[models][training]") {
  const auto run = [](int batches) {
    return scenarios::run_experiment(scenarios::load_scenario_text(fmt::format(R"(
cluster: {{nodes: 1, gpus_per_node: 4, gpu: H100}}
model: {{moe_layers: 2, hidden: 1024, expert_ffn: 2048, experts: 8, top_k: 2, attention_heads: 8}}
parallelism: {{ep: 4}}
workload: {{kind: training, tokens_per_gpu: 512, micro_batches: {}}}
routing: {{distribution: zipf, zipf_s: 1.2, capacity_factor: 1.0, dirichlet_concentration: 50}}
)", batches), "mb.yaml"));
  };
  const auto one = run(1), two = run(2);
  REQUIRE(two.stats.layers().size() == 4);
  for (std::size_t l = 0; l < 2; ++l) {
    const auto& a = one.stats.layers()[l];
    const auto& first = two.stats.layers()[l];
    const auto& second = two.stats.layers()[2 + l];
    // Micro-batch 0 keeps the routing of a step without accumulation; its capacity is that of
    // one micro-batch (as many drops), not of the step's tokens.
    CHECK(first.routed == a.routed);
    CHECK(first.dropped == a.dropped);
    CHECK(first.max_expert_tokens == a.max_expert_tokens);
    CHECK(first.dropped > 0);
    // Micro-batch 1 draws other tokens: the same number, another routing.
    CHECK(second.routed == first.routed);
    CHECK((second.dropped != first.dropped || second.max_expert_tokens != first.max_expert_tokens ||
           second.max_gpu_tokens != first.max_gpu_tokens));
  }
  check_stages_tile(two);
}

TEST_CASE("With gradient accumulation, bucketed gradient sync starts in the last micro-batch only", "[models][training]") {
  const auto run = [](int buckets) {
    auto sc = scenarios::load_scenario_text(fmt::format(R"(
cluster: {{nodes: 2, gpus_per_node: 4, gpu: H100, scale_out: {{nic_bandwidth: 400Gbps}}}}
model: {{moe_layers: 4, hidden: 2048, expert_ffn: 4096, experts: 8, top_k: 2, attention_heads: 16}}
parallelism: {{ep: 4}}
workload: {{kind: training, tokens_per_gpu: 1024, micro_batches: 2, gradient_sync: ring, gradient_sync_buckets: {}}}
output: {{timeline: on}}
)", buckets), "b.yaml");
    return scenarios::run_experiment(sc);
  };
  const auto one = run(1), four = run(4);
  const auto first_sync = [](const scenarios::RunResult& r) {
    Time first = Time::max();
    for (const auto& f : r.timeline->flows())
      if (f.stage == Stage::grad_sync) first = sim::min(first, f.start);
    return first;
  };
  // Micro-batch 0's backward (layers() index 0..3) ends before any gradient moves; with buckets
  // the sync starts inside micro-batch 1's backward, without them after it.
  Time batch0_end, batch1_backward_start = Time::max(), batch1_end;
  for (std::size_t l = 0; l < 4; ++l) {
    batch0_end = sim::max(batch0_end, four.stats.backward_layers()[l].end);
    batch1_backward_start = sim::min(batch1_backward_start, four.stats.backward_layers()[4 + l].start);
    batch1_end = sim::max(batch1_end, four.stats.backward_layers()[4 + l].end);
  }
  CHECK(first_sync(four) > batch0_end);
  CHECK(first_sync(four) > batch1_backward_start);
  CHECK(first_sync(four) < batch1_end);
  // One bucket: a GPU joins when its whole backward is done (layer 0 last), so nothing moves
  // before micro-batch 1's last backward layer has started somewhere.
  CHECK(first_sync(one) > one.stats.backward_layers()[4].start);
  CHECK(first_sync(four) < first_sync(one));
  CHECK(four.stats.gpus()[0].stage_total[idx(Stage::grad_sync)] < one.stats.gpus()[0].stage_total[idx(Stage::grad_sync)]);
}

namespace {

// Two GPUs, one per pipeline stage (EP 1: both experts on every GPU, every token to both, so no
// all-to-all), two layers, one per stage (or `layers` split as `parallelism` says).
std::string two_stages(const std::string& workload, int layers = 2, const std::string& parallelism = "") {
  std::string text = tiny("dropless", layers);
  text.replace(text.find("parallelism: {ep: 2}"), std::string("parallelism: {ep: 2}").size(),
               "parallelism: {ep: 1, pp: 2" + parallelism + "}");
  const std::string from = "workload: {tokens_per_gpu: 1000, sequence_length: 1000}";
  text.replace(text.find(from), from.size(), "workload: {tokens_per_gpu: 1000, sequence_length: 1000" + workload + "}");
  return text;
}

}  // namespace

TEST_CASE("The LM head ends the forward pass and starts the backward pass, as derived by hand", "[models][training]") {
  // V = 32,000, T = 1000, H = 1024 on the toy GPU (100 TFLOP/s, 1 TB/s). The projection:
  // 2*T*H*V = 65,536,000,000 FLOPs -> 655,360,000 ps (its 2*(H*V + T*H + T*V) = 131,584,000
  // bytes take 131.584 us: compute-bound). With the loss (training): + 4*T*V = 128,000,000 FLOPs
  // -> 656,640,000 ps. Backward: twice the projection, 1,310,720,000 ps. The optimizer's extra
  // 2 x H*V = 65,536,000 parameters (embedding and LM head) x 28 B -> 1,835,008,000 ps.
  const auto with_vocab = [](std::string text) {
    const std::string heads = "  attention_heads: 8\n";
    return text.replace(text.find(heads), heads.size(), heads + "  vocab: 32000\n");
  };
  SECTION("forward") {
    const auto r = scenarios::run_experiment(scenarios::load_scenario_text(with_vocab(tiny("dropless", 1)), "v.yaml"));
    CHECK(r.stats.step_time() == Time::ps(283'379'776LL + 655'360'000LL));
    CHECK(r.stats.gpus()[1].stage_total[idx(Stage::lm_head)] == Time::ps(655'360'000));
    CHECK(r.stats.layers()[0].end == Time::ps(283'379'776));  // not part of the MoE layer
  }
  SECTION("training") {
    const auto plain_sc = scenarios::load_scenario_text(tiny_training(""), "t.yaml");
    const auto sc = scenarios::load_scenario_text(with_vocab(tiny_training("")), "v.yaml");
    const auto plain = scenarios::run_experiment(plain_sc), r = scenarios::run_experiment(sc);
    CHECK(r.stats.step_time() == plain.stats.step_time() + Time::ps(656'640'000LL + 1'310'720'000LL + 1'835'008'000LL));
    const auto& g = r.stats.gpus()[0];
    CHECK(g.stage_total[idx(Stage::lm_head)] == Time::ps(656'640'000LL + 1'310'720'000LL));
    CHECK(g.backward_total == plain.stats.gpus()[0].backward_total + Time::ps(1'310'720'000));
    // The backward pass starts after the head's: layer 0's backward begins at forward + head both ways.
    CHECK(r.stats.backward_layers()[0].start == Time::ps(283'379'776LL + 656'640'000LL + 1'310'720'000LL));
    CHECK(r.model_flops == Approx(plain.model_flops + 2 * (65'664'000'000.0 + 131'072'000'000.0)).epsilon(1e-12));
    // Memory: the two V x H matrices' weights, gradients and Adam state (2 + 2 + 12 B each),
    // and the fp32 logits, 4 * T * V: 1.176576 GB more.
    const auto memory = [](const scenarios::Scenario& s, const scenarios::RunResult& run) {
      return std::stod(csv_value(summary_csv(s, run), "memory_gb_max"));
    };
    CHECK(memory(sc, r) - memory(plain_sc, plain) == Approx(1.176576).margin(0.0011));
  }
  SECTION("with pipeline stages: the embedding on the first stage, the head on the last") {
    // Stage 0's optimizer: its layer's 293,658,624 ps plus the embedding's 32,768,000 x 28 B;
    // stage 1's the same plus the LM head's; only stage 1 runs the head, once per micro-batch.
    std::string text = with_vocab(tiny("dropless", 2));
    text.replace(text.find("parallelism: {ep: 2}"), std::string("parallelism: {ep: 2}").size(), "parallelism: {ep: 1, pp: 2}");
    const std::string from = "workload: {tokens_per_gpu: 1000, sequence_length: 1000}";
    text.replace(text.find(from), from.size(), "workload: {kind: training, micro_batches: 2, tokens_per_gpu: 1000, sequence_length: 1000}");
    const auto r = scenarios::run_experiment(scenarios::load_scenario_text(text, "pp.yaml"));
    CHECK(r.stats.gpus()[0].stage_total[idx(Stage::lm_head)] == Time::zero());
    CHECK(r.stats.gpus()[1].stage_total[idx(Stage::lm_head)] == Time::ps(2 * (656'640'000LL + 1'310'720'000LL)));
    CHECK(r.stats.gpus()[0].stage_total[idx(Stage::optimizer)] == Time::ps(293'658'624LL + 917'504'000LL));
    CHECK(r.stats.gpus()[1].stage_total[idx(Stage::optimizer)] == Time::ps(293'658'624LL + 917'504'000LL));
  }
  SECTION("prefill: the logits of each prompt's last token only") {
    // 1000 tokens in prompts of 250: 4 tokens' logits, 2*4*H*V = 262,144,000 FLOPs (2.62144 us)
    // while reading the H x V weights takes 2*(H*V + 4*H + 4*V) = 65,800,192 B -> 65.800192 us.
    std::string text = with_vocab(tiny("dropless", 1));
    const std::string from = "workload: {tokens_per_gpu: 1000, sequence_length: 1000}";
    text.replace(text.find(from), from.size(), "workload: {kind: prefill, tokens_per_gpu: 1000, sequence_length: 250}");
    const auto r = scenarios::run_experiment(scenarios::load_scenario_text(text, "p.yaml"));
    CHECK(r.stats.gpus()[0].stage_total[idx(Stage::lm_head)] == Time::ps(65'800'192));
  }
}

TEST_CASE("An MTP module trains as one more MoE layer with its projection and a second head, as derived by hand",
          "[models][training][mtp]") {
  // H = 1024, T = 1000, V = 32,000 on the toy GPU (100 TFLOP/s, 1 TB/s). The MTP projection
  // (2H -> H): 2*T*2H*H = 4,194,304,000 FLOPs, 2*(2H*H + 3*T*H) = 10,338,304 bytes. After the
  // last layer: the head with its loss, then the projection and the head with its loss again:
  // 2 x 65,664,000,000 + 4,194,304,000 = 135,522,304,000 FLOPs (1,355,223,040 ps, compute-bound:
  // 2 x 259,584,000 + 10,338,304 bytes), against the one head's 656,640,000 ps. Backward, twice
  // the heads and the projection without the loss: 2 x (2 x 65,536,000,000 + 4,194,304,000)
  // FLOPs = 2,705,326,080 ps against 1,310,720,000. The optimizer: the projection's 2,097,152
  // parameters x 28 B more = 58,720,256 ps. The module's MoE layer is the model's last: the step
  // is that of two MoE layers plus 698,583,040 + 1,394,606,080 + 58,720,256 ps.
  routing::MoeModelSpec m;
  m.hidden = 1024;
  m.vocab = 32000;
  m.mtp_layers = 1;
  const auto heads = models::heads_cost(m, 1000, true);
  CHECK(heads.flops == 135'522'304'000);
  CHECK(heads.bytes == 2 * 259'584'000 + 10'338'304);
  CHECK(heads.gemm_flops == 4'194'304'000);  // the projection's; the head stays BF16
  CHECK(models::heads_cost(m, 1000, false).flops == 2 * 65'536'000'000 + 4'194'304'000);
  const auto with = [](std::string text, const std::string& extra) {
    const std::string heads_key = "  attention_heads: 8\n";
    return text.replace(text.find(heads_key), heads_key.size(), heads_key + "  vocab: 32000\n" + extra);
  };
  const auto two_layers = scenarios::load_scenario_text(with(replaced(tiny_training(""), "moe_layers: 1", "moe_layers: 2"), ""), "two.yaml");
  const auto mtp = scenarios::load_scenario_text(with(tiny_training(""), "  mtp_modules: 1\n"), "mtp.yaml");
  CHECK(mtp.forward.model.moe_layers == 2);
  CHECK(mtp.forward.model.mtp_layers == 1);
  const auto plain = scenarios::run_experiment(two_layers), r = scenarios::run_experiment(mtp);
  CHECK(r.stats.step_time() == plain.stats.step_time() + Time::ps(698'583'040LL + 1'394'606'080LL + 58'720'256LL));
  CHECK(r.stats.gpus()[0].stage_total[idx(Stage::lm_head)] == Time::ps(1'355'223'040LL + 2'705'326'080LL));
  CHECK(r.stats.layers().size() == 2);
  const std::string summary = summary_csv(mtp, r);
  CHECK(csv_value(summary, "moe_layers") == "2");  // the layers run, the module's included
  CHECK(csv_value(summary, "tokens_per_step") == "2000");  // it adds no tokens
  // Inference without draft tokens runs and holds the main model only.
  const auto fwd = scenarios::load_scenario_text(with(tiny("dropless", 1), "  mtp_modules: 1\n"), "f.yaml");
  CHECK(fwd.forward.model.moe_layers == 1);
  CHECK(fwd.forward.model.mtp_layers == 0);
}

TEST_CASE("Speculative decoding verifies a draft token per sequence and drafts the next with the MTP layer", "[models][decode][mtp]") {
  // Two tokens per sequence read its cache once: 4 tokens of 2 sequences read half the cache
  // bytes of 4 sequences (2 x 4 x 1000 x 2 x 256 / 2 = 2,048,000 B less), with the same FLOPs.
  const routing::MoeModelSpec g = gqa_attention();
  CHECK(models::decode_attention_cost(g, 4, 1000).bytes - models::decode_attention_cost(g, 4, 1000, 2).bytes == 2'048'000);
  CHECK(models::decode_attention_cost(g, 4, 1000).flops == models::decode_attention_cost(g, 4, 1000, 2).flops);
  const std::string base = R"(
cluster: {nodes: 1, gpus_per_node: 2, gpu: H100}
model: {moe_layers: 2, hidden: 1024, expert_ffn: 1024, experts: 2, top_k: 2, attention_heads: 8, vocab: 32000, mtp_modules: 1}
parallelism: {ep: 2}
workload: {kind: decode, tokens_per_gpu: 32, context_length: 4096DRAFT}
network: {model: analytical}
)";
  const auto plain_sc = scenarios::load_scenario_text(replaced(base, "DRAFT", ""), "d.yaml");
  const auto sc = scenarios::load_scenario_text(replaced(base, "DRAFT", ", draft_tokens: 1, acceptance_rate: 0.8"), "s.yaml");
  // 32 sequences, 64 tokens through the 2 MoE layers and the MTP layer.
  CHECK(sc.forward.tokens_per_gpu == 64);
  CHECK(sc.forward.sequences() == 32);
  CHECK(sc.forward.model.moe_layers == 3);
  CHECK(plain_sc.forward.model.moe_layers == 2);
  const auto r = scenarios::run_experiment(sc);
  std::int64_t routed = 0;
  for (const auto& l : r.stats.layers()) routed += l.routed;
  CHECK(routed == 3 * 64 * 2 * 2);  // layers x tokens x GPUs x top_k
  // Every layer's attention (the 2 MoE layers' and the MTP layer's) over 64 tokens of 32 sequences.
  const models::Roofline roofline(sc.cluster.gpu, sc.roofline);
  CHECK(r.stats.gpus()[0].stage_total[idx(Stage::attention)] ==
        Time::ps(3 * roofline.time(models::decode_attention_cost(sc.forward.model, 64, 4096, 2)).count_ps()));
  // A step gains 1 + 0.8 tokens per sequence: 32 x 1.8 x 2 GPUs = 115.2.
  const std::string summary = summary_csv(sc, r);
  CHECK(csv_value(summary, "tokens_per_gpu") == "32");
  CHECK(csv_value(summary, "tokens_per_step") == "115.20");
  CHECK(std::stod(csv_value(summary, "tokens_per_s")) == Approx(115.2 / r.stats.step_time().to_seconds()).epsilon(1e-3));
  // A sequence's tokens come every step / 1.8; without drafts every step.
  CHECK(std::stod(csv_value(summary, "time_per_token_us")) == Approx(r.stats.step_time().to_us() / 1.8).epsilon(1e-9));
  const auto plain = scenarios::run_experiment(plain_sc);
  const std::string plain_summary = summary_csv(plain_sc, plain);
  CHECK(csv_value(plain_summary, "time_per_token_us") == csv_value(plain_summary, "step_time_us"));
  // The KV cache: 32 sequences x 4096 x 2 x 1024 x 2 B for each of the 3 layers (the MTP layer's
  // own too); without drafting 2 layers'.
  CHECK(std::stod(csv_value(summary, "memory_gb_max")) - memory_gb_max(replaced(base, "DRAFT", "")) ==
        Approx(32.0 * 4096 * 2 * 1024 * 2 / 1e9).margin(0.06));
}

TEST_CASE("Chunked prefill runs prompt tokens in each decode step, as derived by hand", "[models][decode][chunked_prefill]") {
  const routing::MoeModelSpec g = gqa_attention();  // Q + O = 2048, a cached token 2 x 256 x 2 = 1024 B, weights 2,621,440
  // 4 decode tokens over 1000 cached keys, and 512 tokens of a chunk of 512 of 2048-token prompts:
  // at the mean offset, (2048 - 512) / 2 = 768 tokens in, token i of the chunk attends to 768 + i
  // keys, T (2P + S + 1) (Q + O) = 512 x 2049 x 2048 FLOPs of core, and reads the 768 earlier
  // tokens' cache (786,432 B); the projections' weights (5,242,880 B) are read once for both.
  const auto mixed = models::mixed_attention_cost(g, 4, 1000, 1, 512, 512, 2048);
  const auto decode = models::decode_attention_cost(g, 4, 1000);
  const auto chunk = models::attention_cost(g, 512, 512, 768);
  CHECK(chunk.core_flops == std::int64_t{512} * 2049 * 2048);
  CHECK(chunk.bytes - models::attention_cost(g, 512, 512).bytes == 768 * 1024);
  CHECK(mixed.core_flops == 2 * 4 * 1000 * 2048 + std::int64_t{512} * 2049 * 2048);
  CHECK(mixed.flops == decode.flops + chunk.flops);
  CHECK(mixed.bytes == decode.bytes + chunk.bytes - 5'242'880);
  CHECK(mixed.elementwise_launches == 3);
  // A chunk as long as two prompts: whole 256-token prompts, none cached.
  CHECK(models::mixed_attention_cost(g, 4, 1000, 1, 512, 512, 256).core_flops ==
        2 * 4 * 1000 * 2048 + std::int64_t{512} * 257 * 2048);
  // No decode tokens (a half of a two-batch split may have none): the chunk alone.
  CHECK(models::mixed_attention_cost(g, 0, 1000, 1, 512, 512, 2048).bytes == chunk.bytes);

  const std::string base = R"(
cluster: {nodes: 1, gpus_per_node: 2, gpu: H100}
model: {moe_layers: 2, hidden: 1024, expert_ffn: 1024, experts: 2, top_k: 2, attention_heads: 8, kv_heads: 2, vocab: 32000}
parallelism: {ep: 2}
workload: {kind: decode, tokens_per_gpu: 32, context_length: 4096CHUNK}
network: {model: analytical}
)";
  const auto plain_sc = scenarios::load_scenario_text(replaced(base, "CHUNK", ""), "d.yaml");
  const auto sc = scenarios::load_scenario_text(replaced(base, "CHUNK", ", prefill_chunk: 96, sequence_length: 2048"), "c.yaml");
  CHECK(sc.forward.tokens_per_gpu == 128);  // 32 decode tokens and 96 prompt tokens, routed together
  CHECK(sc.forward.sequences() == 32);
  CHECK(sc.forward.prefill_prompts() == 1);
  // By default the prompts are as long as the decode's context.
  CHECK(scenarios::load_scenario_text(replaced(base, "CHUNK", ", prefill_chunk: 96"), "c.yaml").forward.sequence_length == 4096);
  const auto r = scenarios::run_experiment(sc);
  std::int64_t routed = 0;
  for (const auto& l : r.stats.layers()) routed += l.routed;
  CHECK(routed == 2 * 128 * 2 * 2);  // layers x tokens x GPUs x top_k
  const models::Roofline roofline(sc.cluster.gpu, sc.roofline);
  CHECK(r.stats.gpus()[0].stage_total[idx(Stage::attention)] ==
        Time::ps(2 * roofline.time(models::mixed_attention_cost(sc.forward.model, 32, 4096, 1, 96, 96, 2048)).count_ps()));
  // The LM head gives logits to the 32 sequences and to the one prompt a step finishes (at most).
  CHECK(r.stats.gpus()[0].stage_total[idx(Stage::lm_head)] ==
        roofline.time(models::lm_head_cost(sc.forward.model, 33, false)));
  // Throughput counts the decode's tokens; the prompts' are their own column: 96 x 2 GPUs a step.
  const std::string summary = summary_csv(sc, r);
  CHECK(csv_value(summary, "tokens_per_gpu") == "32");
  CHECK(csv_value(summary, "tokens_per_step") == "64");
  CHECK(csv_value(summary, "prefill_chunk") == "96");
  CHECK(std::stod(csv_value(summary, "prompt_tokens_per_s")) == Approx(192 / r.stats.step_time().to_seconds()).epsilon(1e-3));
  CHECK(csv_value(summary_csv(plain_sc, scenarios::run_experiment(plain_sc)), "prefill_chunk").empty());
  // The prompt being prefilled holds its cache up to its whole length: at 6144 tokens 2 layers x
  // 4096 x 1024 B more than at 2048.
  CHECK(memory_gb_max(replaced(base, "CHUNK", ", prefill_chunk: 96, sequence_length: 6144")) -
            std::stod(csv_value(summary, "memory_gb_max")) ==
        Approx(2.0 * 4096 * 1024 / 1e9).margin(0.0011));  // each rounded to 1 MB
  // With a draft token the sequences' tokens double, the chunk's do not.
  std::string drafted = replaced(base, "CHUNK", ", prefill_chunk: 96, draft_tokens: 1, acceptance_rate: 0.5");
  drafted = replaced(drafted, "vocab: 32000}", "vocab: 32000, mtp_modules: 1}");
  const auto dsc = scenarios::load_scenario_text(drafted, "s.yaml");
  CHECK(dsc.forward.tokens_per_gpu == 2 * 32 + 96);
  CHECK(dsc.forward.sequences() == 32);
  // Where it is not used.
  CHECK_THROWS_WITH(scenarios::load_scenario_text(replaced(replaced(base, "CHUNK", ", prefill_chunk: 96"), "kind: decode", "kind: prefill"),
                                                  "p.yaml"),
                    Catch::Contains("prefill_chunk: only used with 'kind: decode'"));
  CHECK_THROWS_WITH(scenarios::load_scenario_text(replaced(base, "CHUNK", ", sequence_length: 2048"), "p.yaml"),
                    Catch::Contains("with workload.prefill_chunk as the prompts' length"));
}

TEST_CASE("Pipeline stages pass activations and gradients, as derived by hand", "[models][pipeline]") {
  // One layer forward on a GPU: attention 104,386,560 + router 2,060,096 + both experts on its
  // 1000 tokens (2 x 62,914,560) + reduce 6,144,000 = F = 238,419,776 ps (the tiny layer without
  // its two flows). Backward: B = 6,144,000 + 2 x 125,829,120 + 2 x 2,060,096 + 2 x 104,386,560 =
  // 470,695,552. Between the stages a micro-batch's 1000 rows of 2,048 B cross GPU 0 -> GPU 1 (or
  // back) in d = 20.48 us + 2 x 1 us = 22,480,000 ps.
  const std::int64_t F = 238'419'776, B = 470'695'552, d = 22'480'000;
  SECTION("forward: stage 1 waits for stage 0's activations") {
    const auto r = scenarios::run_experiment(scenarios::load_scenario_text(two_stages(""), "pp.yaml"));
    CHECK(r.stats.step_time() == Time::ps(2 * F + d));
    CHECK(r.stats.gpus()[1].stage_total[idx(Stage::pipeline)] == Time::ps(F + d));
    CHECK(r.stats.gpus()[0].finish == Time::ps(F));
    CHECK(r.stats.layers()[1].start == Time::ps(F + d));
    CHECK(r.stats.pipeline_bytes() == 2'048'000);
    CHECK(r.stats.layers()[0].routed == 2000);  // each layer routed once, by its own stage's GPU
    CHECK(r.stats.gpus()[0].routed == 2000);
    CHECK(r.stats.gpus()[1].routed == 2000);
  }
  SECTION("forward, 2 micro-batches pipelined: stage 0 runs the second while stage 1 runs the first") {
    // GPU 0: F0 until F, F1 until 2F. GPU 1: F0 from F + d, F1 from 2F + d (its input arrives
    // then, as GPU 1 finishes F0) until 3F + d.
    const auto sc = scenarios::load_scenario_text(two_stages(", micro_batches: 2"), "pp.yaml");
    const auto r = scenarios::run_experiment(sc);
    CHECK(r.stats.step_time() == Time::ps(3 * F + d));
    CHECK(r.stats.gpus()[0].finish == Time::ps(2 * F));
    CHECK(r.stats.gpus()[1].stage_total[idx(Stage::pipeline)] == Time::ps(F + d));
    CHECK(r.stats.pipeline_bytes() == 2 * 2'048'000);
    CHECK(r.stats.layers()[3].start == Time::ps(2 * F + d));  // micro-batch 1's layer 1
    const std::string summary = summary_csv(sc, r);
    CHECK(csv_value(summary, "micro_batches") == "2");
    CHECK(csv_value(summary, "tokens_per_step") == "2000");  // 2 x 1000 on each stage's one GPU
    CHECK(csv_value(summary, "pipeline_schedule") == "pipelined");
    CHECK(csv_value(summary, "virtual_stages") == "1");
  }
  SECTION("training, 2 micro-batches, 1F1B and GPipe") {
    // Optimizer per GPU: its stage's layer, attention 4,194,304 + router 2,048 + two experts
    // 6,291,456 parameters, x 28 B = 293,658,624 ps.
    // 1F1B: GPU 0 runs F0 F1 B0 B1, GPU 1 F0 B0 F1 B1. GPU 1: F0 from F + d, B0 at 2F + d, F1
    // at 2F + d + B, B1 until 3F + d + 2B; its gradients reach GPU 0 at 2F + 2d + B and
    // 3F + 2d + 2B. GPU 0: B0 from 2F + 2d + B, B1 from 3F + 2d + 2B (waiting for it), done at
    // 3F + 2d + 3B, then the optimizer. GPipe (F0 F1 B0 B1 on both) takes as long here: GPU 1's
    // B1 ends at 3F + d + 2B too.
    const std::int64_t step = 3 * F + 2 * d + 3 * B + 293'658'624;
    for (const char* schedule : {"1f1b", "gpipe"}) {
      INFO(schedule);
      const auto r = scenarios::run_experiment(scenarios::load_scenario_text(
          two_stages(std::string(", kind: training, micro_batches: 2, pipeline_schedule: ") + schedule), "pp.yaml"));
      CHECK(r.stats.step_time() == Time::ps(step));
      CHECK(r.stats.gpus()[1].finish == Time::ps(3 * F + d + 2 * B + 293'658'624));
      CHECK(r.stats.gpus()[0].stage_total[idx(Stage::optimizer)] == Time::ps(293'658'624));
      CHECK(r.stats.pipeline_bytes() == 4 * 2'048'000);  // two activations forward, two gradients back
      // GPU 0 waits for gradients: B0 from 2F to 2F + 2d + B, B1 from 2F + 2d + 2B to 3F + 2d + 2B.
      CHECK(r.stats.gpus()[0].stage_total[idx(Stage::pipeline)] == Time::ps(2 * d + B + F));
      check_stages_tile(r);
    }
  }
}

TEST_CASE("Two-batch overlap with pipeline stages sends each micro-batch whole, as derived by hand", "[models][pipeline][overlap]") {
  // The two stages above (one GPU each, its experts local: no all-to-all) in halves of 500
  // tokens, no SMs taken: the same compute, except that each half's router reads the router's
  // weights again (H E x 2 B = 4,096 B, 4,096 ps; twice that backward). F' = F + 4,096,
  // B' = B + 8,192. A stage sends the micro-batch's activations (and gradients) once both halves
  // are done, as without overlap.
  const std::int64_t F = 238'419'776 + 4'096, B = 470'695'552 + 8'192, d = 22'480'000, opt = 293'658'624;
  const auto forward = scenarios::run_experiment(
      scenarios::load_scenario_text(two_stages(", overlap: two_batch, comm_sm_fraction: 0"), "pp-tbo.yaml"));
  CHECK(forward.stats.step_time() == Time::ps(2 * F + d));
  CHECK(forward.stats.gpus()[1].stage_total[idx(Stage::pipeline)] == Time::ps(F + d));
  CHECK(forward.stats.pipeline_bytes() == 2'048'000);
  // Training, 1F1B with 2 micro-batches: 3F' + 2d + 3B' and the optimizer, as derived above.
  const auto training = scenarios::run_experiment(scenarios::load_scenario_text(
      two_stages(", kind: training, micro_batches: 2, overlap: two_batch, comm_sm_fraction: 0"), "pp-tbo-train.yaml"));
  CHECK(training.stats.step_time() == Time::ps(3 * F + 2 * d + 3 * B + opt));
  CHECK(training.stats.gpus()[0].stage_total[idx(Stage::pipeline)] == Time::ps(2 * d + B + F));
  CHECK(training.stats.pipeline_bytes() == 4 * 2'048'000);
  check_stages_tile(training);
}

TEST_CASE("Pipeline stages of unequal layer runs, as derived by hand", "[models][pipeline]") {
  // F, d as in the test above. Three layers: by default stage 0 runs layer 0 and stage 1 layers 1
  // and 2 (the later stage takes the one left over); pipeline_layers [2, 1] the other way round.
  const std::int64_t F = 238'419'776, d = 22'480'000;
  const auto even = scenarios::run_experiment(scenarios::load_scenario_text(two_stages("", 3), "pp.yaml"));
  const auto given = scenarios::run_experiment(scenarios::load_scenario_text(two_stages("", 3, ", pipeline_layers: [2, 1]"), "pp.yaml"));
  CHECK(even.stats.step_time() == Time::ps(3 * F + d));
  CHECK(given.stats.step_time() == Time::ps(3 * F + d));
  CHECK(even.stats.gpus()[0].finish == Time::ps(F));
  CHECK(given.stats.gpus()[0].finish == Time::ps(2 * F));
  CHECK(even.stats.gpus()[1].stage_total[idx(Stage::pipeline)] == Time::ps(F + d));
  CHECK(given.stats.gpus()[1].stage_total[idx(Stage::pipeline)] == Time::ps(2 * F + d));
  CHECK(even.stats.layers()[1].start == Time::ps(F + d));  // layer 1 on stage 1, after the transfer
  CHECK(given.stats.layers()[1].start == Time::ps(F));     // layer 1 on stage 0, straight after layer 0
  CHECK(given.stats.layers()[2].start == Time::ps(2 * F + d));
  // Each layer routed once, by its own stage's GPU.
  CHECK(even.stats.gpus()[0].routed == 2000);
  CHECK(even.stats.gpus()[1].routed == 4000);
  CHECK(given.stats.gpus()[0].routed == 4000);
  CHECK(given.stats.gpus()[1].routed == 2000);
  // The printed summary shows each stage's compute (2F and F) and the stage to unload.
  std::ostringstream printed;
  tools::print_human_summary(printed, scenarios::load_scenario_text(two_stages("", 3, ", pipeline_layers: [2, 1]"), "pp.yaml"), given,
                             {});
  CHECK_THAT(printed.str(), Catch::Contains("stages      compute of each pipeline stage's busiest GPU (ms): 0: 0.477, 1: 0.238; "
                                            "stage 0 does 1.33x the mean (parallelism.pipeline_layers can give it fewer MoE layers; that evens "
                                            "the compute, but where the stages' all-to-alls share links it can make the step slower: "
                                            "compare the steps)"));
  // Training, 2 micro-batches, 1F1B, B and the optimizer's 293,658,624 ps per layer as in the
  // test above. Stage 1 (layer 2): F0 from 2F + d, B0 at 3F + d, F1 at 3F + d + B (its input came
  // at 4F + d, earlier, as B > F), B1 until 4F + d + 2B, then its optimizer. Stage 0 (layers 0
  // and 1): F0 F1 until 4F, waits for B0's gradients until 3F + 2d + B, runs B0 and B1 (whose
  // gradients came at 4F + 2d + 2B, earlier) over two layers each until 3F + 2d + 5B, then the
  // optimizer over two layers.
  const std::int64_t B = 470'695'552, opt = 293'658'624;
  const auto trained = scenarios::run_experiment(scenarios::load_scenario_text(
      two_stages(", kind: training, micro_batches: 2", 3, ", pipeline_layers: [2, 1]"), "pp.yaml"));
  CHECK(trained.stats.gpus()[1].finish == Time::ps(4 * F + d + 2 * B + opt));
  CHECK(trained.stats.gpus()[0].finish == Time::ps(3 * F + 2 * d + 5 * B + 2 * opt));
  CHECK(trained.stats.step_time() == Time::ps(3 * F + 2 * d + 5 * B + 2 * opt));
  CHECK(trained.stats.gpus()[0].stage_total[idx(Stage::pipeline)] == Time::ps(2 * d + B - F));
  CHECK(trained.stats.pipeline_bytes() == 4 * 2'048'000);
  check_stages_tile(trained);
}

TEST_CASE("A pipeline stage holds its layers' weights and its in-flight micro-batches' activations", "[models][pipeline]") {
  const auto memory = [](const std::string& workload, int gpu) {
    std::string text = two_stages(workload);
    if (workload.find("decode") != std::string::npos) text.erase(text.find(", sequence_length: 1000"), 23);
    const auto sc = scenarios::load_scenario_text(text, "pp.yaml");
    const auto r = scenarios::run_experiment(sc);
    std::ostringstream out;
    tools::write_gpus_csv(out, sc, r);
    return std::stod(csv_value(out.str(), "memory_gb", gpu));
  };
  const std::string f1b = ", kind: training, micro_batches: 4";
  // 1F1B: stage 0 holds 2 micro-batches' activations, stage 1 one; GPipe all 4 on both.
  CHECK(memory(f1b, 0) > memory(f1b, 1));
  CHECK(memory(f1b + ", pipeline_schedule: gpipe", 0) > memory(f1b, 0));
  CHECK(memory(f1b + ", pipeline_schedule: gpipe", 1) == Approx(memory(f1b + ", pipeline_schedule: gpipe", 0)));
  // Decode: every micro-batch's sequences keep their KV cache, T * C * 2 kv * b per layer =
  // 1000 * 512 * 2048 * 2 B = 2.097152 GB more for the second micro-batch.
  const std::string decode = ", kind: decode, context_length: 512";
  CHECK(memory(decode + ", micro_batches: 2", 1) - memory(decode, 1) == Approx(2.097152).margin(0.0011));
}

TEST_CASE("The routed counts without simulating match a run with pipeline stages and micro-batches", "[models][pipeline]") {
  // Each layer is routed by the EP groups of its own stage, each micro-batch afresh: the counts
  // `moesim trace --counts` writes are what the run's experts report; also with unequal stages.
  const std::string split = GENERATE(std::string(), std::string(", pipeline_layers: [3, 1]"));
  INFO(split);
  const auto sc = scenarios::load_scenario_text(R"(
cluster: {nodes: 2, gpus_per_node: 4, gpu: H100, scale_out: {nic_bandwidth: 400Gbps}}
model: {moe_layers: 4, hidden: 512, expert_ffn: 1024, experts: 8, top_k: 2, attention_heads: 8}
parallelism: {ep: 2, pp: 2)" + split + R"(}
workload: {kind: training, tokens_per_gpu: 256, micro_batches: 3}
routing: {distribution: zipf, zipf_s: 1.1, layer_correlation: 0.5, capacity_factor: 1.0}
)", "c.yaml");
  const auto r = scenarios::run_experiment(sc);
  const auto counts = scenarios::routed_counts(sc);
  REQUIRE(counts.size() == 4);
  std::int64_t total = 0;
  for (std::size_t l = 0; l < 4; ++l)
    for (std::size_t e = 0; e < 8; ++e) {
      CHECK(counts[l][e] == r.stats.experts()[l][e].routed);
      total += counts[l][e];
    }
  CHECK(total == 4LL * 3 * 4 * 256 * 2);  // layers x micro-batches x a stage's 4 GPUs x tokens x top_k
  // The load an observed placement balances (one step of history) is the previous step's counts,
  // each layer routed by its own stage's groups.
  auto before = sc;
  before.forward.routing.step = 1;
  auto now = sc.forward;
  now.routing.step = 2;
  std::vector<int> first;
  for (int l = 0; l < 4; ++l) first.push_back(models::group_first_gpu(now, 8, l, 0));
  const auto load = routing::observed_load(now.model, now.routing, now.ep, 2, now.tokens_per_gpu, now.seed, 1,
                                           now.micro_batches, first);
  const auto earlier = scenarios::routed_counts(before);
  for (std::size_t l = 0; l < 4; ++l)
    for (std::size_t e = 0; e < 8; ++e) CHECK(load[l][e] == static_cast<double>(earlier[l][e]));
}

TEST_CASE("The interleaved schedule takes micro-batches in groups of pp through each chunk, as Megatron-LM's", "[models][pipeline]") {
  // PP2, 2 chunks per stage (stage 0: chunks 0 and 2, stage 1: chunks 1 and 3), 4 micro-batches.
  // Stage 0 runs (2 - 1 - 0) * 2 + (2 - 1) * 2 = 4 forwards first, stage 1 2; then one forward
  // and one backward in turn; backward takes the groups from the stage's last chunk.
  models::ForwardSpec f;
  f.model.moe_layers = 4;
  f.pp = 2;
  f.virtual_stages = 2;
  f.micro_batches = 4;
  f.training = true;
  using It = models::PipelineItem;
  const auto F = [](int mb, int c) { return It{mb, c, false}; };
  const auto B = [](int mb, int c) { return It{mb, c, true}; };
  CHECK(models::pipeline_order(f, 0) == std::vector<It>{F(0, 0), F(1, 0), F(0, 2), F(1, 2), F(2, 0), B(0, 2), F(3, 0), B(1, 2),
                                                        F(2, 2), B(0, 0), F(3, 2), B(1, 0), B(2, 2), B(3, 2), B(2, 0), B(3, 0)});
  CHECK(models::pipeline_order(f, 1) == std::vector<It>{F(0, 1), F(1, 1), F(0, 3), B(0, 3), F(1, 3), B(1, 3), F(2, 1), B(0, 1),
                                                        F(3, 1), B(1, 1), F(2, 3), B(2, 3), F(3, 3), B(3, 3), B(2, 1), B(3, 1)});
  // Activations held at most: 5 chunks' (one layer each) on stage 0, 3 on stage 1; without
  // chunks (2 layers per stage) 1F1B holds 2 and 1 micro-batches of 2 layers.
  CHECK(models::pipeline_held_layers(f, 0) == 5);
  CHECK(models::pipeline_held_layers(f, 1) == 3);
  // As many micro-batches as stages: stage 0's 4 forwards first are all of them; stage 1 still
  // starts the backward after 2 (as Megatron-Core; older Megatron-LM ran every forward first).
  f.micro_batches = 2;
  CHECK(models::pipeline_order(f, 0) == std::vector<It>{F(0, 0), F(1, 0), F(0, 2), F(1, 2), B(0, 2), B(1, 2), B(0, 0), B(1, 0)});
  CHECK(models::pipeline_order(f, 1) == std::vector<It>{F(0, 1), F(1, 1), F(0, 3), B(0, 3), F(1, 3), B(1, 3), B(0, 1), B(1, 1)});
  f.training = false;
  CHECK(models::pipeline_order(f, 0) == std::vector<It>{F(0, 0), F(1, 0), F(0, 2), F(1, 2)});
  // One chunk per stage: 1F1B and GPipe as before.
  f.virtual_stages = 1;
  f.micro_batches = 4;
  f.training = true;
  CHECK(models::pipeline_order(f, 0) == std::vector<It>{F(0, 0), F(1, 0), B(0, 0), F(2, 0), B(1, 0), F(3, 0), B(2, 0), B(3, 0)});
  CHECK(models::pipeline_held_layers(f, 0) == 4);
  CHECK(models::pipeline_held_layers(f, 1) == 2);
  f.pipeline_schedule = models::PipelineSchedule::gpipe;
  CHECK(models::pipeline_held_layers(f, 1) == 8);
}

namespace {

// A pipeline stage's schedule written as "F0 B0 W0 ...": forward, input-gradient (backward) and
// weight pass of a micro-batch through the stage's one chunk.
std::vector<models::PipelineItem> items(int stage, const std::string& text) {
  std::vector<models::PipelineItem> out;
  std::istringstream in(text);
  for (std::string w; in >> w;) out.push_back(models::PipelineItem{std::stoi(w.substr(1)), stage, w[0] == 'B', w[0] == 'W'});
  return out;
}

// The time the stages' orders (pipeline_order(), chunks on their stages as chunk_stage() says)
// take when every forward takes f, every whole backward b, a split backward's input-gradient
// pass b - w and its weight pass w, a forward with the backward overlapped with it `pair`, and
// nothing else costs time: a stage starts an entry (a pair: both) when it is done with the one
// before and its inputs are there (a chunk's forward: the previous chunk's forward of the
// micro-batch; its backward: the next chunk's backward, or on the last chunk its own forward);
// both passes of a pair end with it.
double chunk_makespan(const models::ForwardSpec& spec, double f, double b, double w, double pair) {
  const int chunks = spec.pp * spec.virtual_stages;
  std::vector<std::vector<models::PipelineItem>> orders;
  std::set<std::pair<int, int>> split;
  for (int s = 0; s < spec.pp; ++s) {
    orders.push_back(models::pipeline_order(spec, s));
    for (const auto& it : orders.back()) {
      REQUIRE(models::chunk_stage(spec, it.chunk, it.micro_batch) == s);
      if (it.weight) split.insert({it.micro_batch, it.chunk});
    }
  }
  std::map<std::tuple<int, int, int>, double> done;  // (kind 0 F 1 B 2 W, micro-batch, chunk)
  const auto kind = [](const models::PipelineItem& it) { return it.weight ? 2 : it.backward ? 1 : 0; };
  const auto ready = [&](const models::PipelineItem& it) -> std::optional<double> {
    if (it.weight || (!it.backward && it.chunk == 0)) return 0.0;
    const auto dep = !it.backward                ? std::tuple{0, it.micro_batch, it.chunk - 1}
                     : it.chunk + 1 == chunks ? std::tuple{0, it.micro_batch, it.chunk}
                                                : std::tuple{1, it.micro_batch, it.chunk + 1};
    const auto at = done.find(dep);
    return at == done.end() ? std::nullopt : std::optional<double>(at->second);
  };
  const auto time = [&](const models::PipelineItem& it) {
    return it.weight ? w : !it.backward ? f : split.count({it.micro_batch, it.chunk}) > 0 ? b - w : b;
  };
  std::vector<std::size_t> next(orders.size(), 0);
  std::vector<double> free(orders.size(), 0);
  for (bool progress = true; progress;) {
    progress = false;
    for (std::size_t s = 0; s < orders.size(); ++s)
      for (const auto& o = orders[s]; next[s] < o.size();) {
        const std::size_t n = next[s] + 1 < o.size() && o[next[s] + 1].overlapped ? 2 : 1;
        double start = free[s];
        bool there = true;
        for (std::size_t i = 0; i < n && there; ++i) {
          const auto t = ready(o[next[s] + i]);
          there = t.has_value();
          if (there) start = std::max(start, *t);
        }
        if (!there) break;
        free[s] = start + (n == 2 ? pair : time(o[next[s]]));
        for (std::size_t i = 0; i < n; ++i) {
          const auto& it = o[next[s] + i];
          done[{kind(it), it.micro_batch, it.chunk}] = free[s];
        }
        next[s] += n;
        progress = true;
      }
  }
  for (std::size_t s = 0; s < orders.size(); ++s) REQUIRE(next[s] == orders[s].size());  // no order waits forever
  return *std::max_element(free.begin(), free.end());
}

}  // namespace

TEST_CASE("ZB-H1 holds back stage s's first s weight passes and shrinks the bubble to (pp - 1)(F + B - W)", "[models][pipeline]") {
  // PP4, 8 micro-batches: 1F1B's forwards and backwards; stage s runs the weight pass of
  // micro-batch k - s after its k-th backward (k >= s), one after each backward of the
  // cool-down, the rest at the end.
  models::ForwardSpec f;
  f.model.moe_layers = 4;
  f.pp = 4;
  f.micro_batches = 8;
  f.training = true;
  f.pipeline_schedule = models::PipelineSchedule::zb_h1;
  const std::vector<std::vector<models::PipelineItem>> zb{
      items(0, "F0 F1 F2 F3 B0 W0 F4 B1 W1 F5 B2 W2 F6 B3 W3 F7 B4 W4 B5 W5 B6 W6 B7 W7"),
      items(1, "F0 F1 F2 B0 F3 B1 W0 F4 B2 W1 F5 B3 W2 F6 B4 W3 F7 B5 W4 B6 W5 B7 W6 W7"),
      items(2, "F0 F1 B0 F2 B1 F3 B2 W0 F4 B3 W1 F5 B4 W2 F6 B5 W3 F7 B6 W4 B7 W5 W6 W7"),
      items(3, "F0 B0 F1 B1 F2 B2 F3 B3 W0 F4 B4 W1 F5 B5 W2 F6 B6 W3 F7 B7 W4 W5 W6 W7")};
  for (int s = 0; s < 4; ++s) CHECK(models::pipeline_order(f, s) == zb[static_cast<std::size_t>(s)]);
  // Every stage holds up to pp micro-batches between forward and weight pass (1F1B: pp - s).
  for (int s = 0; s < 4; ++s) CHECK(models::pipeline_held_layers(f, s) == 4);
  models::ForwardSpec one_f_one_b = f;
  one_f_one_b.pipeline_schedule = models::PipelineSchedule::one_f_one_b;
  for (int s = 0; s < 4; ++s) CHECK(models::pipeline_held_layers(one_f_one_b, s) == 4 - s);
  // The bubble with uniform pass times, as the paper derives it: 1F1B idles (pp - 1)(F + B + W)
  // of the step, ZB-H1 (pp - 1)(F + B - W) (where W <= F and W <= B, here each case).
  for (const auto& [fw, bw, ww] : {std::tuple{1.0, 1.0, 1.0}, {1.0, 1.2, 0.8}, {1.0, 2.0, 1.0}, {1.0, 1.5, 0.5}}) {
    INFO(fw << " " << bw << " " << ww);
    CHECK(chunk_makespan(f, fw, bw + ww, ww, 0) == Approx(8 * (fw + bw + ww) + 3 * (fw + bw - ww)));
    CHECK(chunk_makespan(one_f_one_b, fw, bw + ww, 0, 0) == Approx(8 * (fw + bw + ww) + 3 * (fw + bw + ww)));
  }
  // Fewer micro-batches than stages: every stage runs all its forwards first.
  f.micro_batches = 2;
  CHECK(models::pipeline_order(f, 0) == items(0, "F0 F1 B0 W0 B1 W1"));
  CHECK(models::pipeline_order(f, 2) == items(2, "F0 F1 B0 B1 W0 W1"));
  CHECK(models::pipeline_order(f, 3) == items(3, "F0 B0 F1 B1 W0 W1"));
}

TEST_CASE("ZB-H1 splits each backward into input and weight gradients, as derived by hand", "[models][pipeline]") {
  // The two-stage 1F1B case above (F, B, d, the optimizer) with ZB-H1. B splits into the input
  // gradients Bi = reduce 6,144,000 + experts 125,829,120 (once) + router 2,060,096 (once) +
  // attention 124,887,040 (its core twice and its projections once: 2 x 10,438,656,000 -
  // 8,388,608,000 FLOPs, compute-bound) = 258,920,256 ps, and the weight gradients W =
  // attention projections 83,886,080 + router 2,060,096 + experts 125,829,120 = 211,775,296 ps
  // (Bi + W = B). GPU 0 runs F0 F1 B0 W0 B1 W1, GPU 1 F0 B0 F1 B1 W0 W1. GPU 1: F0 from F + d,
  // B0 from 2F + d, F1, B1 until 3F + d + 2Bi, its weight passes until 3F + d + 2Bi + 2W. GPU 0:
  // B0 from 2F + 2d + Bi, W0 until 2F + 2d + 2Bi + W, waits for B1's gradients until
  // 3F + 2d + 2Bi (W < F), then B1 and W1: done at 3F + 2d + 3Bi + W, the step's end with the
  // optimizer: 1F1B's less 2W.
  const std::int64_t F = 238'419'776, B = 470'695'552, d = 22'480'000, opt = 293'658'624;
  const std::int64_t Bi = 258'920'256, W = 211'775'296;
  REQUIRE(Bi + W == B);
  const auto run = [&](const char* schedule) {
    const auto sc = scenarios::load_scenario_text(
        two_stages(std::string(", kind: training, micro_batches: 2, pipeline_schedule: ") + schedule), "pp.yaml");
    return std::pair{sc, scenarios::run_experiment(sc)};
  };
  const auto [sc, r] = run("zb_h1");
  CHECK(r.stats.step_time() == Time::ps(3 * F + 2 * d + 3 * Bi + W + opt));
  CHECK(r.stats.gpus()[1].finish == Time::ps(3 * F + d + 2 * Bi + 2 * W + opt));
  CHECK(r.stats.gpus()[0].stage_total[idx(Stage::pipeline)] == Time::ps(2 * d + Bi + F - W));
  CHECK(r.stats.gpus()[1].stage_total[idx(Stage::pipeline)] == Time::ps(F + d));
  CHECK(r.stats.pipeline_bytes() == 4 * 2'048'000);  // weight passes send nothing
  const auto [sc1, r1] = run("1f1b");
  CHECK(r1.stats.step_time() - r.stats.step_time() == Time::ps(2 * W));
  CHECK(r.model_flops == Approx(r1.model_flops));  // the same work, split
  for (std::size_t g = 0; g < 2; ++g) CHECK(r.stats.gpus()[g].backward_total == r1.stats.gpus()[g].backward_total -
                                                                                   r1.stats.gpus()[g].stage_total[idx(Stage::pipeline)] +
                                                                                   r.stats.gpus()[g].stage_total[idx(Stage::pipeline)]);
  // Each GPU's weight passes: attention, router and experts per micro-batch, recorded as backward.
  REQUIRE(r.timeline);
  std::array<int, 2> weight{};
  for (const auto& s : r.timeline->stages())
    if (s.weight) {
      CHECK(s.backward);
      CHECK((s.stage == Stage::attention || s.stage == Stage::router || s.stage == Stage::experts));
      ++weight.at(s.gpu.index());
    }
  CHECK(weight == std::array<int, 2>{6, 6});
  CHECK(csv_value(summary_csv(sc, r), "pipeline_schedule") == "zb_h1");
}

TEST_CASE("compute.elementwise_kernels: ZB-H1's weight passes run none of them, its backward as much as 1F1B's", "[models][elementwise]") {
  const auto run = [&](const char* schedule, bool elementwise) {
    std::string text = two_stages(std::string(", kind: training, micro_batches: 2, pipeline_schedule: ") + schedule) +
                       "output: {timeline: on}\n";
    if (elementwise) text = replaced(text, "compute: {flops_efficiency: 1,", "compute: {elementwise_kernels: true, flops_efficiency: 1,");
    return scenarios::run_experiment(scenarios::load_scenario_text(text, "pp.yaml"));
  };
  const auto zb = run("zb_h1", true), zb_off = run("zb_h1", false), one = run("1f1b", true);
  for (std::size_t g = 0; g < 2; ++g)
    CHECK(zb.stats.gpus()[g].backward_total == one.stats.gpus()[g].backward_total - one.stats.gpus()[g].stage_total[idx(Stage::pipeline)] +
                                                   zb.stats.gpus()[g].stage_total[idx(Stage::pipeline)]);
  // The weight passes' attention and router: their GEMMs alone, the same with the kernels apart or not.
  const auto weight_time = [](const scenarios::RunResult& r, Stage stage) {
    Time t;
    for (const auto& s : r.timeline->stages())
      if (s.weight && s.stage == stage) t += s.end - s.start;
    return t;
  };
  REQUIRE(zb.timeline);
  REQUIRE(zb_off.timeline);
  for (const Stage stage : {Stage::attention, Stage::router}) {
    CHECK(weight_time(zb, stage) > Time::zero());
    CHECK(weight_time(zb, stage) == weight_time(zb_off, stage));
  }
  CHECK(zb.stats.step_time() > zb_off.stats.step_time());
}

namespace {

// A pipeline stage's schedule written as "F0:3 B0:3 W0:3 &B1:0 ...": forward, backward (a split
// one's input-gradient pass) and weight pass of micro-batch 0 through chunk 3; "&" marks a
// backward overlapped with the forward before it.
std::vector<models::PipelineItem> chunk_items(const std::string& text) {
  std::vector<models::PipelineItem> out;
  std::istringstream in(text);
  for (std::string w; in >> w;) {
    const bool overlapped = w[0] == '&';
    if (overlapped) w = w.substr(1);
    const auto colon = w.find(':');
    out.push_back(models::PipelineItem{std::stoi(w.substr(1, colon - 1)), std::stoi(w.substr(colon + 1)), w[0] == 'B', w[0] == 'W',
                                       overlapped});
  }
  return out;
}

models::ForwardSpec dualpipev_spec(int pp, int micro_batches, bool overlap) {
  models::ForwardSpec f;
  f.model.moe_layers = 2 * pp;
  f.pp = pp;
  f.virtual_stages = 2;
  f.micro_batches = micro_batches;
  f.training = true;
  f.pipeline_schedule = models::PipelineSchedule::dualpipev;
  f.forward_backward_overlap = overlap;
  return f;
}

}  // namespace

TEST_CASE("DualPipeV's order runs the V's two arms as deepseek-ai/DualPipe's dualpipev.py does", "[models][pipeline]") {
  // PP2, 4 micro-batches; stage 0 holds chunks 0 and 3, stage 1 chunks 1 and 2. Stage 0 (r = 0):
  // 2 forwards of chunk 0; one of chunk 0 and one of chunk 3; a split backward of chunk 3, its
  // weight pass, a forward of chunk 3; one round of the pairs (F3:0 with B1:3, F2:3 with B0:0);
  // a backward of chunk 3 and the pair F3:3 with B1:0; the backwards B3:3 and B2:0, the second
  // split; the weight pass W2:0 and a split B3:0; its weight pass. Stage 1 (r = 1): two rounds
  // of a forward of each chunk; two rounds of the pairs, the first not overlapped (the last
  // stage runs its first pair one after the other); 4 backwards, the last two split; their
  // weight passes.
  auto f = dualpipev_spec(2, 4, false);
  CHECK(models::pipeline_order(f, 0) ==
        chunk_items("F0:0 F1:0 F2:0 F0:3 B0:3 W0:3 F1:3 F3:0 B1:3 F2:3 B0:0 B2:3 F3:3 B1:0 B3:3 B2:0 W2:0 B3:0 W3:0"));
  CHECK(models::pipeline_order(f, 1) ==
        chunk_items("F0:1 F0:2 F1:1 F1:2 F2:1 B0:2 F2:2 B0:1 F3:1 B1:2 F3:2 B1:1 B2:2 B2:1 B3:2 B3:1 W3:2 W3:1"));
  // Stage 0 holds at most 5 chunks' activations (after F3:0, and after F2:3 and F3:3), a split
  // backward's until its weight pass; so does stage 1 (after F2:1, F2:2, F3:1, F3:2).
  CHECK(models::pipeline_held_layers(f, 0) == 5);
  CHECK(models::pipeline_held_layers(f, 1) == 5);
  f.forward_backward_overlap = true;
  CHECK(models::pipeline_order(f, 0) ==
        chunk_items("F0:0 F1:0 F2:0 F0:3 B0:3 W0:3 F1:3 F3:0 &B1:3 F2:3 &B0:0 B2:3 F3:3 &B1:0 B3:3 B2:0 W2:0 B3:0 W3:0"));
  CHECK(models::pipeline_order(f, 1) ==
        chunk_items("F0:1 F0:2 F1:1 F1:2 F2:1 B0:2 F2:2 &B0:1 F3:1 &B1:2 F3:2 &B1:1 B2:2 B2:1 B3:2 B3:1 W3:2 W3:1"));
  // Over 2 to 6 stages and 2 pp to 2 pp + 4 micro-batches: every stage runs each micro-batch
  // once forward and once backward through each of its two chunks, the backward after the
  // forward, a weight pass after the backward for exactly 2 pp - 1 - r of its 2 N backwards; an
  // overlapped backward comes right after a forward of the stage's other chunk.
  for (int pp = 2; pp <= 6; ++pp)
    for (int n = 2 * pp; n <= 2 * pp + 4; ++n)
      for (const bool overlap : {false, true}) {
        f = dualpipev_spec(pp, n, overlap);
        for (int r = 0; r < pp; ++r) {
          INFO(pp << " stages, " << n << " micro-batches, stage " << r << (overlap ? ", overlap" : ""));
          const auto order = models::pipeline_order(f, r);
          std::map<std::tuple<int, int, int>, std::size_t> at;  // (kind, micro-batch, chunk) -> position
          int overlapped = 0;
          for (std::size_t i = 0; i < order.size(); ++i) {
            const auto& it = order[i];
            CHECK((it.chunk == r || it.chunk == 2 * pp - 1 - r));
            CHECK(at.emplace(std::tuple{it.weight ? 2 : it.backward ? 1 : 0, it.micro_batch, it.chunk}, i).second);
            if (it.overlapped) {
              ++overlapped;
              CHECK((i > 0 && !order[i - 1].backward && !order[i - 1].weight && order[i - 1].chunk != it.chunk));
            }
          }
          int weights = 0;
          for (int mb = 0; mb < n; ++mb)
            for (const int c : {r, 2 * pp - 1 - r}) {
              REQUIRE(at.count({0, mb, c}) == 1);
              REQUIRE(at.count({1, mb, c}) == 1);
              CHECK(at[{0, mb, c}] < at[{1, mb, c}]);
              if (at.count({2, mb, c}) > 0) {
                ++weights;
                CHECK(at[{1, mb, c}] < at[{2, mb, c}]);
              }
            }
          CHECK(order.size() == static_cast<std::size_t>(4 * n + weights));
          CHECK(weights == 2 * pp - 1 - r);
          // The pairs: two per round of the main part, one per round of the part after it.
          CHECK(overlapped == (overlap ? 2 * (n - 2 * pp + r + 1) + (pp - 1 - r) - (r == pp - 1 ? 1 : 0) : 0));
        }
      }
}

TEST_CASE("DualPipeV's bubble is (P - 1)(F&B + B - 3W), a third of 1F1B's on the same stages", "[models][pipeline]") {
  // With a chunk's forward F = 1, its whole backward B = 2 (an input-gradient pass 1 and a
  // weight pass W = 1) and a pair F&B = F + B = 3 (nothing hidden), every stage works 2N(F + B)
  // and idles (P - 1)(F&B + B - 3W) = 2(P - 1), DualPipe's bubble (DeepSeek-V3 report, table 2,
  // PP/2 = P). 1F1B on the same P stages, each a chunk twice the size (forward 2, backward 4),
  // idles (P - 1)(2F + 2B) = 6(P - 1).
  for (int pp = 2; pp <= 6; ++pp)
    for (int n = 2 * pp; n <= 2 * pp + 4; ++n) {
      INFO(pp << " stages, " << n << " micro-batches");
      CHECK(chunk_makespan(dualpipev_spec(pp, n, true), 1, 2, 1, 3) == Approx(6 * n + 2 * (pp - 1)));
      models::ForwardSpec one = dualpipev_spec(pp, n, false);
      one.virtual_stages = 1;
      one.pipeline_schedule = models::PipelineSchedule::one_f_one_b;
      CHECK(chunk_makespan(one, 2, 4, 0, 0) == Approx(6 * n + 6 * (pp - 1)));
    }
}

TEST_CASE("DualPipeV runs its V with split backwards and a hand-off at the turn, as derived by hand", "[models][pipeline]") {
  // F, B (= Bi + W, the split backward's input-gradient and weight passes), d and the optimizer's
  // time per layer as in the tests above. Four layers, one per chunk, PP2: GPU 0 holds chunks 0
  // and 3 (layers 0 and 3), GPU 1 chunks 1 and 2; chunk 1 hands its output to chunk 2 (and
  // chunk 2 its gradients to chunk 1) on GPU 1 without a transfer. The orders (test above):
  //   GPU 0: F0:0 F1:0 F2:0 F0:3 B0:3 W0:3 F1:3 F3:0 B1:3 F2:3 B0:0 B2:3 F3:3 B1:0 B3:3 B2:0 W2:0 B3:0 W3:0
  //   GPU 1: F0:1 F0:2 F1:1 F1:2 F2:1 B0:2 F2:2 B0:1 F3:1 B1:2 F3:2 B1:1 B2:2 B2:1 B3:2 B3:1 W3:2 W3:1
  // GPU 1 starts at F + d and runs without a wait through B1:1 (8F + 4B): every input is there
  // by then. B1:0 on GPU 0 waits for B1:1's gradients until 9F + 4B + 2d, then GPU 0 runs B1:0
  // and B3:3 (whole backwards) to 9F + 6B + 2d; B3:3's gradients reach GPU 1 at 9F + 6B + 3d,
  // which runs B3:2 and B3:1 (split) and their weight passes: done at 9F + 6B + 3d + 2Bi + 2W.
  // GPU 0 meanwhile runs B2:0 and W2:0, waits for B3:1's gradients until 9F + 6B + 4d + 2Bi,
  // runs B3:0 and W3:0: done at 9F + 6B + 4d + 3Bi + W, then the optimizer (two layers).
  const std::int64_t F = 238'419'776, B = 470'695'552, d = 22'480'000, opt = 293'658'624;
  const std::int64_t Bi = 258'920'256, W = 211'775'296;
  REQUIRE(Bi + W == B);
  const auto load = [](const std::string& schedule, const std::string& extra = "") {
    return scenarios::load_scenario_text(
        two_stages(", kind: training, micro_batches: 4" + schedule + extra, 4, ", virtual_stages: 2"), "pp.yaml");
  };
  const auto sc = load(", pipeline_schedule: dualpipev");
  const auto r = scenarios::run_experiment(sc);
  CHECK(r.stats.step_time() == Time::ps(9 * F + 6 * B + 4 * d + 3 * Bi + W + 2 * opt));
  CHECK(r.stats.gpus()[1].finish == Time::ps(9 * F + 6 * B + 3 * d + 2 * Bi + 2 * W + 2 * opt));
  CHECK(r.stats.gpus()[1].stage_total[idx(Stage::pipeline)] == Time::ps(F + 3 * d));  // F + d first, 2d before B3:2
  // GPU 0 works 8F + 8B (forwards, whole backwards, split ones and weight passes) and waits the rest.
  CHECK(r.stats.gpus()[0].stage_total[idx(Stage::pipeline)] == Time::ps(F - 2 * B + 4 * d + 3 * Bi + W));
  check_stages_tile(r);
  // Two transfers each way per micro-batch (chunk 0 -> 1, 2 -> 3 and back); none at the turn.
  CHECK(r.stats.pipeline_bytes() == 4 * 4 * 2'048'000);
  // Weight passes: attention, router and experts each, recorded as backward work: three on GPU 0, two on GPU 1.
  REQUIRE(r.timeline);
  std::array<int, 2> weight{};
  for (const auto& s : r.timeline->stages())
    if (s.weight) {
      CHECK(s.backward);
      ++weight.at(s.gpu.index());
    }
  CHECK(weight == std::array<int, 2>{9, 6});
  // The same work as the interleaved 1F1B with these chunks (stage s holding chunks s and s + 2).
  const auto interleaved = scenarios::run_experiment(load(""));
  CHECK(r.model_flops == Approx(interleaved.model_flops));
  CHECK(csv_value(summary_csv(sc, r), "pipeline_schedule") == "dualpipev");
  // Both GPUs compute 8F + 8B and the optimizer (6.260 ms): the printed summary says so.
  std::ostringstream printed;
  tools::print_human_summary(printed, sc, r, {});
  CHECK_THAT(printed.str(), Catch::Contains("PP2 (2 chunks per stage, DualPipeV, chunks in a V)"));
  CHECK_THAT(printed.str(), Catch::Contains("stages      compute of each pipeline stage's busiest GPU (ms): 0: 6.260, 1: 6.260; "
                                            "stage 0 does 1.00x the mean\n"));
  // With forward-backward overlap (the all-to-all kernels taking no SMs; with EP 1 there is no
  // all-to-all to hide) a pair takes F + B, its backward done before the forward's reduce (r =
  // 6,144,000 ps) and its forward at the end. GPU 1 runs as before through F3:2 & B1:1 (9F + 4B
  // + d: F0:1 at F + d, five forwards, B0:2 and three pairs), whose gradients (B1:1's) and
  // activations (F3:2's) leave r apart on the same link and share it: F3:2's arrive c =
  // 14,336,000 ps after d (alone for r, then half the bandwidth). GPU 0's pair F3:3 & B1:0 starts
  // at 9F + 4B + 2d + c (both inputs there) and B3:3 follows: done at 10F + 6B + 2d + c; then as
  // without overlap: GPU 1 ends at 10F + 6B + 3d + c + 2Bi + 2W, GPU 0 at 10F + 6B + 4d + c +
  // 3Bi + W, then the optimizer: F + c longer, as nothing is hidden here. The same work.
  const std::int64_t c = 14'336'000;
  const auto fb_sc = load(", pipeline_schedule: dualpipev", ", overlap: forward_backward, comm_sm_fraction: 0");
  const auto fb = scenarios::run_experiment(fb_sc);
  CHECK(fb.stats.step_time() == Time::ps(10 * F + 6 * B + 4 * d + c + 3 * Bi + W + 2 * opt));
  CHECK(fb.stats.gpus()[1].finish == Time::ps(10 * F + 6 * B + 3 * d + c + 2 * Bi + 2 * W + 2 * opt));
  check_stages_tile(fb);
  CHECK(fb.model_flops == Approx(r.model_flops));
  std::ostringstream fb_printed;
  tools::print_human_summary(fb_printed, fb_sc, fb, {});
  CHECK_THAT(fb_printed.str(), Catch::Contains("forward-backward (DualPipeV's pairs): 3 of the stage's 8 backward passes"));
  CHECK(csv_value(summary_csv(fb_sc, fb), "overlap") == "forward_backward");
}

TEST_CASE("Random pipeline training runs under every schedule account for every GPU's time", "[models][fuzz][pipeline]") {
  // Two or four stages, 1 to 5 micro-batches, the dense layers, the LM head, shared experts,
  // gradient sync in buckets, stragglers and jitter: each schedule (1F1B and GPipe also with
  // two-batch overlap) finishes, each GPU's stages tile its time, and the schedules do the same
  // model work (ZB-H1 split into two passes).
  sim::Rng pick(7, "test/fuzz-pipeline");
  for (int trial = 0; trial < 12; ++trial) {
    const int pp = pick.uniform_int(2) ? 4 : 2;
    const int layers = 2 * pp + static_cast<int>(pick.uniform_int(3));  // at least 2 per stage (gradient buckets)
    const int batches = 1 + static_cast<int>(pick.uniform_int(5));
    const auto [sync, shared, dense, vocab, nodes, tokens] = draw_fuzz_step(pick, pp);
    const char* algos[] = {"direct", "hierarchical"};
    const char* algo = algos[pick.uniform_int(2)];
    double flops = -1;
    for (const char* schedule : {"1f1b", "gpipe", "zb_h1", "1f1b, overlap: two_batch", "gpipe, overlap: two_batch"}) {
      const std::string yaml = fuzz_yaml(nodes, layers, shared, dense, vocab, fmt::format(", pp: {}", pp), tokens, batches,
                                         fmt::format("pipeline_schedule: {}, {}", schedule, sync), trial, algo);
      INFO(yaml);
      const auto r = scenarios::run_experiment(scenarios::load_scenario_text(yaml, "fuzz.yaml"));
      check_stages_tile(r);
      if (flops < 0) flops = r.model_flops;
      CHECK(r.model_flops == Approx(flops));
    }
  }
}

TEST_CASE("DualPipe runs DualPipeV's order on each pair of stages, one arm per direction", "[models][pipeline]") {
  // PP4, 8 micro-batches: 0-3 enter at stage 0 (chunk c on stage c), 4-7 at stage 3 (chunk c on
  // stage 3 - c). Stages 0 and 3 run DualPipeV's stage 0 of PP2 with 4 micro-batches per arm,
  // stages 1 and 2 its stage 1 (the orders of the DualPipeV test above); on stages 0 and 1 the
  // first arm is the first half's, on stages 2 and 3 the second half's (dualpipe.py: phase ^
  // is_in_second_half).
  models::ForwardSpec f;
  f.model.moe_layers = 4;
  f.pp = 4;
  f.micro_batches = 8;
  f.training = true;
  f.pipeline_schedule = models::PipelineSchedule::dualpipe;
  CHECK(models::pipeline_order(f, 0) ==
        chunk_items("F0:0 F1:0 F2:0 F4:3 B4:3 W4:3 F5:3 F3:0 B5:3 F6:3 B0:0 B6:3 F7:3 B1:0 B7:3 B2:0 W2:0 B3:0 W3:0"));
  CHECK(models::pipeline_order(f, 3) ==
        chunk_items("F4:0 F5:0 F6:0 F0:3 B0:3 W0:3 F1:3 F7:0 B1:3 F2:3 B4:0 B2:3 F3:3 B5:0 B3:3 B6:0 W6:0 B7:0 W7:0"));
  CHECK(models::pipeline_order(f, 1) ==
        chunk_items("F0:1 F4:2 F1:1 F5:2 F2:1 B4:2 F6:2 B0:1 F3:1 B5:2 F7:2 B1:1 B6:2 B2:1 B7:2 B3:1 W7:2 W3:1"));
  CHECK(models::pipeline_order(f, 2) ==
        chunk_items("F4:1 F0:2 F5:1 F1:2 F6:1 B0:2 F2:2 B4:1 F7:1 B1:2 F3:2 B5:1 B2:2 B6:1 B3:2 B7:1 W3:2 W7:1"));
  for (const auto& [chunk, mb, stage] : {std::tuple{0, 0, 0}, {0, 4, 3}, {3, 3, 3}, {3, 7, 0}, {1, 2, 1}, {1, 6, 2}})
    CHECK(models::chunk_stage(f, chunk, mb) == stage);
  CHECK(models::stage_layers(f, 0) == std::vector<int>{0, 3});  // both copies' chunks
  CHECK(models::stage_layers(f, 3) == std::vector<int>{0, 3});
  CHECK(models::stage_layers(f, 1) == std::vector<int>{1, 2});
  CHECK(models::last_micro_batch(f, 0, 0) == 3);  // chunk 0 runs the first half on stage 0
  CHECK(models::last_micro_batch(f, 0, 3) == 7);
  CHECK(models::sync_stage(f, 3) == 0);
  // The bubble over 4 to 12 stages (PP/2 = 2 to 6), as DualPipeV's over half the stages: with
  // F = 1, B = 2, W = 1 and a pair taking F + B, (PP/2 - 1)(F&B + B - 3W) = PP - 2 (DeepSeek-V3
  // report, table 2); 1F1B on the same stages idles (PP - 1)(F + B).
  for (int pp = 4; pp <= 12; pp += 2)
    for (int n = 2 * pp; n <= 2 * pp + 6; n += 2) {
      INFO(pp << " stages, " << n << " micro-batches");
      f.pp = pp;
      f.model.moe_layers = pp;
      f.micro_batches = n;
      f.pipeline_schedule = models::PipelineSchedule::dualpipe;
      f.forward_backward_overlap = true;
      CHECK(chunk_makespan(f, 1, 2, 1, 3) == Approx(3 * n + (pp - 2)));
      f.pipeline_schedule = models::PipelineSchedule::one_f_one_b;
      f.forward_backward_overlap = false;
      CHECK(chunk_makespan(f, 1, 2, 0, 0) == Approx(3 * n + 3 * (pp - 1)));
    }
}

TEST_CASE("DualPipeV synchronises the embedding's and the LM head's gradients on stage 0, which holds both", "[models][pipeline]") {
  // PP2, four MoE layers (one per chunk: stage 0 holds layers 0 and 3, stage 1 layers 1 and 2),
  // each stage two EP groups of 2 over 4 GPUs, ring all-reduce: every GPU of a stage sends
  // 2 (n - 1) / n = 1.5 times its stage's replicated gradients. Stage 0 holds the embedding and
  // the LM head (V x H each, 2 bytes per weight) besides what stage 1 holds as much of, so its
  // GPUs send 4 x 1.5 x 2 x 1000 x 256 x 2 = 6,144,000 bytes more; with interleaved 1F1B the
  // embedding is on stage 0 and the LM head on stage 1, and both send as much.
  const auto bytes = [](const std::string& schedule) {
    const auto r = scenarios::run_experiment(scenarios::load_scenario_text(fmt::format(R"(
cluster: {{nodes: 4, gpus_per_node: 2, gpu: H100, scale_out: {{nic_bandwidth: 400Gbps, nodes_per_leaf: 1, spines: 2}}}}
model: {{moe_layers: 4, hidden: 256, expert_ffn: 512, experts: 4, top_k: 2, attention_heads: 4, vocab: 1000}}
parallelism: {{ep: 2, pp: 2, virtual_stages: 2}}
workload: {{kind: training, tokens_per_gpu: 64, micro_batches: 4, gradient_sync: ring{}}}
network: {{model: analytical}}
)", schedule), "sync.yaml"));
    REQUIRE(r.timeline);
    std::array<std::int64_t, 2> sent{};
    for (const auto& fl : r.timeline->flows())
      if (fl.stage == Stage::grad_sync && fl.flow.src.index() < 8) sent.at(fl.flow.src.index() / 4) += fl.flow.size.count();
    return sent;
  };
  const auto v = bytes(", pipeline_schedule: dualpipev"), interleaved = bytes("");
  CHECK(v[0] - v[1] == 6'144'000);
  CHECK(interleaved[0] == interleaved[1]);
  CHECK(v[0] + v[1] == interleaved[0] + interleaved[1]);
}

TEST_CASE("Random DualPipeV training runs account for every GPU's time and do 1F1B's work", "[models][fuzz][pipeline]") {
  // Two to four stages, 2 pp to 2 pp + 3 micro-batches, the dense layers and the LM head (both
  // on stage 0, the V's ends), shared experts, gradient sync in buckets, stragglers and jitter:
  // DualPipeV, with and without forward-backward overlap, finishes, each GPU's stages tile its
  // time, and it does the same model work as 1F1B without chunks.
  sim::Rng pick(11, "test/fuzz-dualpipev");
  for (int trial = 0; trial < 10; ++trial) {
    const int pp = 2 + static_cast<int>(pick.uniform_int(3));
    const int layers = 2 * pp + static_cast<int>(pick.uniform_int(4));
    const int batches = 2 * pp + static_cast<int>(pick.uniform_int(4));
    const auto [sync, shared, dense, vocab, nodes, tokens] = draw_fuzz_step(pick, pp);
    // DualPipeV's chunks: an even split, or each chunk one layer and the rest at random.
    std::string split;
    if (pick.uniform_int(2)) {
      std::vector<int> per(static_cast<std::size_t>(2 * pp), 1);
      for (int l = 2 * pp; l < layers; ++l) ++per[pick.uniform_int(per.size())];
      split = fmt::format(", pipeline_layers: [{}]", fmt::join(per, ", "));
    }
    const int tp = pick.uniform_int(2) ? 2 : 1;  // tensor parallelism over each node's 2 GPUs, or none
    double flops = -1;
    std::int64_t tp_bytes = -1;  // every schedule runs each tensor-parallel collective once
    for (const char* schedule : {"1f1b", "dualpipev", "dualpipev, overlap: forward_backward"}) {
      const std::string yaml = fuzz_yaml(
          nodes, layers, shared, dense, vocab,
          fmt::format(", pp: {}, tp: {}{}", pp, tp, std::string(schedule) == "1f1b" ? std::string() : ", virtual_stages: 2" + split),
          tokens, batches, fmt::format("pipeline_schedule: {}, {}", schedule, sync), trial);
      INFO(yaml);
      const auto r = scenarios::run_experiment(scenarios::load_scenario_text(yaml, "fuzz.yaml"));
      check_stages_tile(r);
      if (flops < 0) flops = r.model_flops;
      CHECK(r.model_flops == Approx(flops));
      if (tp_bytes < 0) tp_bytes = r.stats.tp_bytes();
      CHECK(r.stats.tp_bytes() == tp_bytes);
    }
  }
}

TEST_CASE("DualPipe sends half the micro-batches each way, as derived by hand", "[models][pipeline]") {
  // F, B = Bi + W, d as in the tests above. Two layers (chunk 0 = layer 0, chunk 1 = layer 1),
  // PP2, 4 micro-batches: 0 and 1 run layer 0 on GPU 0 and layer 1 on GPU 1, 2 and 3 the other
  // way round; both GPUs hold both layers. DualPipeV's order over one stage, 2 micro-batches per
  // arm:
  //   GPU 0: F0:0 F2:1 F1:0 B2:1 F3:1 B0:0 B3:1 B1:0 W1:0   (B1:0 split)
  //   GPU 1: F2:0 F0:1 F3:0 B0:1 F1:1 B2:0 B1:1 B3:0 W3:0   (B3:0 split)
  // Each GPU: its first forward until F, the other direction's second chunk from F + d (its
  // input's transfer) to 2F + d, its second micro-batch's first chunk to 3F + d, the backward of
  // its other-direction micro-batch's last chunk to 3F + d + B; the forward whose input came at
  // 3F + 2d to 4F + d + B; the backward whose gradients came at 3F + 2d + B to 4F + d + 2B; the
  // last chunk's backward to 4F + d + 3B; then the split backward waits for the other GPU's
  // gradients until 4F + 2d + 3B: its input and weight passes end at 4F + 2d + 4B, where both
  // GPUs start the gradient sync of both layers (then the optimizer). 1F1B, where GPU 0 runs F0
  // F1 B0 F2 B1 F3 B2 B3 and waits for B0's, B2's and B3's gradients: 5F + 4d + 5B.
  const std::int64_t F = 238'419'776, B = 470'695'552, d = 22'480'000;
  const auto r = scenarios::run_experiment(scenarios::load_scenario_text(
      two_stages(", kind: training, micro_batches: 4, gradient_sync: ring, pipeline_schedule: dualpipe"), "pp.yaml"));
  for (const auto& g : r.stats.gpus()) {
    CHECK(g.finish - g.stage_total[idx(Stage::grad_sync)] - g.stage_total[idx(Stage::optimizer)] == Time::ps(4 * F + 2 * d + 4 * B));
    CHECK(g.stage_total[idx(Stage::pipeline)] == Time::ps(2 * d));  // F2:1's (F0:1's) input, and the split backward's
  }
  check_stages_tile(r);
  CHECK(r.stats.pipeline_bytes() == 4 * 2 * 2'048'000);  // every micro-batch crosses once each way
  const auto one = scenarios::run_experiment(scenarios::load_scenario_text(
      two_stages(", kind: training, micro_batches: 4, gradient_sync: ring"), "pp.yaml"));
  const auto& last = one.stats.gpus()[0];
  CHECK(last.finish - last.stage_total[idx(Stage::grad_sync)] - last.stage_total[idx(Stage::optimizer)] ==
        Time::ps(5 * F + 4 * d + 5 * B));
}

TEST_CASE("DualPipe holds two copies of each chunk and synchronises them across each pair of stages", "[models][pipeline]") {
  // PP2, four MoE layers in two chunks: with DualPipe both stages hold both chunks (the whole
  // model here), and all 8 GPUs synchronise it together: a ring all-reduce of the replicated
  // weights over 8 GPUs (each sends 2 x 7/8 of them) and per EP rank a ring over the 4 groups
  // of both stages (2 x 3/4 of that rank's experts). 1F1B: each stage its own chunk over its 4
  // GPUs.
  const auto run = [](const std::string& schedule, const std::string& keys) {
    const auto sc = scenarios::load_scenario_text(fmt::format(R"(
cluster: {{nodes: 4, gpus_per_node: 2, gpu: H100, scale_out: {{nic_bandwidth: 400Gbps, nodes_per_leaf: 1, spines: 2}}}}
model: {{moe_layers: 4, hidden: 256, expert_ffn: 512, experts: 4, top_k: 2, attention_heads: 4, vocab: 1000}}
parallelism: {{ep: 2, pp: 2}}
workload: {{kind: training, tokens_per_gpu: 64, micro_batches: 4, gradient_sync: ring, pipeline_schedule: {}{}}}
network: {{model: analytical}}
)", schedule, keys), "sync.yaml");
    return std::pair{sc, scenarios::run_experiment(sc)};
  };
  const auto [dp_sc, dp] = run("dualpipe", "");
  const auto [one_sc, one] = run("1f1b", "");
  const models::GpuParams both = models::stage_params(dp_sc.forward, dp.placements, 0);
  const models::GpuParams first = models::stage_params(one_sc.forward, one.placements, 0),
                          second = models::stage_params(one_sc.forward, one.placements, 1);
  CHECK(models::stage_params(dp_sc.forward, dp.placements, 1).total() == both.total());
  CHECK(both.replicated == first.replicated + second.replicated);
  CHECK(both.experts == first.experts + second.experts);
  REQUIRE(dp.timeline);
  double sent = 0;
  for (const auto& fl : dp.timeline->flows())
    if (fl.stage == Stage::grad_sync) sent += static_cast<double>(fl.flow.size.count());
  CHECK(sent == Approx(8 * 2.0 * (1.75 * static_cast<double>(both.replicated) + 1.5 * static_cast<double>(both.experts))));
  check_stages_tile(dp);
  CHECK(dp.model_flops == Approx(one.model_flops));

  // With a sharded optimizer the two copies share one optimizer (each GPU updates 1/8 of the
  // replicated weights, 1/4 of its EP rank's experts): its reduce-scatter and all-gather run
  // over all 8 GPUs (a ring of 2 channels, 2 GPUs a node, each 1/8 of its half), and per EP
  // rank over the 4 groups (1/4 a chunk), 2 bytes a parameter; not within each stage and then
  // across the copies, which would move chunks of 1/4 of the half and 1/2 of the experts.
  const auto zero = run("dualpipe", ", optimizer_sharding: true").second;
  REQUIRE(zero.timeline);
  std::set<std::int64_t> sizes;
  for (const auto& fl : zero.timeline->flows())
    if (fl.stage == Stage::grad_sync) sizes.insert(fl.flow.size.count());
  CHECK(sizes == std::set<std::int64_t>{(both.replicated + 7) / 8, (2 * both.experts + 3) / 4});
}

TEST_CASE("Random DualPipe training runs account for every GPU's time and do 1F1B's work", "[models][fuzz][pipeline]") {
  // Two or four stages, 2 pp to 2 pp + 4 micro-batches (even), the dense layers and the LM head
  // (both on the first and the last stage), shared experts, gradient sync (which DualPipe needs:
  // its two copies of each chunk) in buckets or with a sharded optimizer, stragglers and jitter:
  // DualPipe, with and without forward-backward overlap, finishes, each GPU's stages tile its
  // time, and it does the same model work as 1F1B.
  sim::Rng pick(13, "test/fuzz-dualpipe");
  for (int trial = 0; trial < 10; ++trial) {
    const int pp = pick.uniform_int(2) ? 4 : 2;
    const int layers = 2 * pp + static_cast<int>(pick.uniform_int(3));  // 1F1B: at least 2 per stage (gradient buckets)
    const int batches = 2 * pp + 2 * static_cast<int>(pick.uniform_int(3));
    const char* syncs[] = {"gradient_sync: ring, ", "gradient_sync: hierarchical, gradient_sync_buckets: 2, ",
                           "gradient_sync: ring, optimizer_sharding: true, "};
    const std::string sync = syncs[pick.uniform_int(3)];
    const auto shared = pick.uniform_int(2), dense = pick.uniform_int(2);
    const std::string vocab = pick.uniform_int(2) ? ", vocab: 1000" : "";
    const int nodes = pp * (1 + static_cast<int>(pick.uniform_int(2)));
    const auto tokens = 2 * (8 + pick.uniform_int(60));
    // DualPipe's chunks: an even split, or each chunk one layer and the rest at random (1F1B's
    // stages split evenly: one layer would not hold two gradient buckets).
    std::string split;
    if (pick.uniform_int(2)) {
      std::vector<int> per(static_cast<std::size_t>(pp), 1);
      for (int l = pp; l < layers; ++l) ++per[pick.uniform_int(per.size())];
      split = fmt::format(", pipeline_layers: [{}]", fmt::join(per, ", "));
    }
    double flops = -1;
    for (const char* schedule : {"1f1b", "dualpipe", "dualpipe, overlap: forward_backward"}) {
      const std::string yaml =
          fuzz_yaml(nodes, layers, shared, dense, vocab, fmt::format(", pp: {}{}", pp, std::string(schedule) == "1f1b" ? "" : split),
                    tokens, batches, fmt::format("pipeline_schedule: {}, {}", schedule, sync), trial);
      INFO(yaml);
      const auto sc = scenarios::load_scenario_text(yaml, "fuzz.yaml");
      const auto r = scenarios::run_experiment(sc);
      check_stages_tile(r);
      if (flops < 0) flops = r.model_flops;
      CHECK(r.model_flops == Approx(flops));
      // Each layer is routed once per micro-batch, by the stage that runs it for that micro-batch.
      const auto counts = scenarios::routed_counts(sc);
      for (std::size_t l = 0; l < counts.size(); ++l)
        for (std::size_t e = 0; e < counts[l].size(); ++e) CHECK(counts[l][e] == r.stats.experts()[l][e].routed);
    }
  }
}

TEST_CASE("Interleaved pipeline stages pass each chunk's activations and gradients, as derived by hand", "[models][pipeline]") {
  // F, B, d and the optimizer's time per layer as in the tests above. Four layers, PP2 with 2
  // chunks per stage: GPU 0 runs layers 0 and 2, GPU 1 layers 1 and 3; every chunk boundary is a
  // transfer between the GPUs.
  const std::int64_t F = 238'419'776, B = 470'695'552, d = 22'480'000, opt = 293'658'624;
  SECTION("forward, 2 micro-batches") {
    // GPU 0: L0 of micro-batches 0 and 1 until 2F; L2 of 0 when L1's output is back, at 2F + 2d,
    // and of 1 at 3F + 2d. GPU 1: L1 of 0 from F + d, of 1 from 2F + d; L3 of 0 from 3F + 3d, of
    // 1 from 4F + 3d until 5F + 3d. Without chunks (layers 0-1 and 2-3): 6F + d.
    const auto sc = scenarios::load_scenario_text(two_stages(", micro_batches: 2", 4, ", virtual_stages: 2"), "pp.yaml");
    const auto r = scenarios::run_experiment(sc);
    CHECK(r.stats.step_time() == Time::ps(5 * F + 3 * d));
    CHECK(r.stats.gpus()[0].finish == Time::ps(4 * F + 2 * d));
    CHECK(r.stats.gpus()[0].stage_total[idx(Stage::pipeline)] == Time::ps(2 * d));
    CHECK(r.stats.gpus()[1].stage_total[idx(Stage::pipeline)] == Time::ps(F + 3 * d));
    CHECK(r.stats.pipeline_bytes() == 6 * 2'048'000);  // three boundaries, two micro-batches
    CHECK(r.stats.gpus()[0].routed == 2 * 2 * 2000);    // layers 0 and 2, two micro-batches
    const auto plain = scenarios::run_experiment(scenarios::load_scenario_text(two_stages(", micro_batches: 2", 4), "pp.yaml"));
    CHECK(plain.stats.step_time() == Time::ps(6 * F + d));
  }
  SECTION("training, 2 micro-batches") {
    // GPU 0 runs every forward, then every backward: F(0, L0) F(1, L0) F(0, L2) F(1, L2) B(0, L2)
    // B(1, L2) B(0, L0) B(1, L0); GPU 1 F(0, L1) F(1, L1) F(0, L3) B(0, L3) F(1, L3) B(1, L3)
    // B(0, L1) B(1, L1). Forward as above until GPU 1's F(0, L3), 3F + 3d to 4F + 3d. GPU 1: B(0,
    // L3) until 4F + 3d + B, F(1, L3) (its input came at 4F + 3d) until 5F + 3d + B, B(1, L3)
    // until 5F + 3d + 2B. Their gradients reach GPU 0 at 4F + 4d + B and 5F + 4d + 2B: GPU 0 runs
    // B(0, L2) from 4F + 4d + B (idle since 4F + 2d), B(1, L2) from 5F + 4d + 2B to 5F + 4d + 3B;
    // those reach GPU 1 at 4F + 5d + 2B and 5F + 5d + 3B: GPU 1 runs B(0, L1) from 5F + 3d + 2B,
    // B(1, L1) from 5F + 5d + 3B until 5F + 5d + 4B, then its optimizer (two layers). Their
    // gradients reach GPU 0 at 5F + 4d + 3B (as its B(1, L2) ends) and 5F + 6d + 4B: B(0, L0)
    // until 5F + 4d + 4B, B(1, L0) from 5F + 6d + 4B to 5F + 6d + 5B, then its optimizer. Waits:
    // GPU 0 2d + (2d + B) + F + 2d, GPU 1 (F + d) + 2d + 2d.
    const auto r = scenarios::run_experiment(scenarios::load_scenario_text(
        two_stages(", kind: training, micro_batches: 2", 4, ", virtual_stages: 2"), "pp.yaml"));
    CHECK(r.stats.gpus()[1].finish == Time::ps(5 * F + 5 * d + 4 * B + 2 * opt));
    CHECK(r.stats.gpus()[0].finish == Time::ps(5 * F + 6 * d + 5 * B + 2 * opt));
    CHECK(r.stats.step_time() == Time::ps(5 * F + 6 * d + 5 * B + 2 * opt));
    CHECK(r.stats.gpus()[0].stage_total[idx(Stage::pipeline)] == Time::ps(F + B + 6 * d));
    CHECK(r.stats.gpus()[1].stage_total[idx(Stage::pipeline)] == Time::ps(F + 5 * d));
    CHECK(r.stats.pipeline_bytes() == 12 * 2'048'000);
    // Without chunks: 3F' + 2d + 3B' + opt' with F' = 2F, B' = 2B, opt' = 2 opt.
    const auto plain = scenarios::run_experiment(
        scenarios::load_scenario_text(two_stages(", kind: training, micro_batches: 2", 4), "pp.yaml"));
    CHECK(plain.stats.step_time() == Time::ps(6 * F + 2 * d + 6 * B + 2 * opt));
  }
  SECTION("training, 4 micro-batches: shorter than without chunks, every GPU's time accounted") {
    const auto run = [](const std::string& parallelism) {
      const auto sc = scenarios::load_scenario_text(two_stages(", kind: training, micro_batches: 4", 4, parallelism), "pp.yaml");
      return std::pair{sc, scenarios::run_experiment(sc)};
    };
    const auto [isc, interleaved] = run(", virtual_stages: 2");
    const auto [psc, plain] = run("");
    CHECK(interleaved.stats.step_time() < plain.stats.step_time());
    CHECK(interleaved.stats.pipeline_bytes() == 24 * 2'048'000);
    check_stages_tile(interleaved);
    for (const auto& g : interleaved.stats.gpus()) CHECK(g.stage_total[idx(Stage::optimizer)] == Time::ps(2 * opt));
    // Stage 0 holds 5 layers' activations at once (against 4 without chunks).
    const auto memory = [](const scenarios::Scenario& sc, const scenarios::RunResult& r, int gpu) {
      std::ostringstream out;
      tools::write_gpus_csv(out, sc, r);
      return std::stod(csv_value(out.str(), "memory_gb", gpu));
    };
    CHECK(memory(isc, interleaved, 0) > memory(psc, plain, 0));
    CHECK(memory(isc, interleaved, 1) > memory(psc, plain, 1));
    CHECK(csv_value(summary_csv(isc, interleaved), "virtual_stages") == "2");
    CHECK(csv_value(summary_csv(isc, interleaved), "pipeline_schedule") == "interleaved_1f1b");
    CHECK(csv_value(summary_csv(psc, plain), "pipeline_schedule") == "1f1b");
  }
}

TEST_CASE("With interleaved stages a gradient bucket holds a stage's layers in backward order, across its chunks",
          "[models][pipeline][training]") {
  // The tiny layer (EP2, with its all-to-all) on each of 2 stages of 2 GPUs, 2 chunks per stage:
  // stage 0 holds layers 0 and 2, whose backward comes in the order 2, 0. In 2 buckets, layer 2's
  // gradients are all-reduced as soon as its last backward is done, long before layer 0's ends,
  // so after the backward pass only layer 0's are left: its replicated weights' 8,392,704 B over
  // the 2-GPU ring, 2 x (2 us + 41,963,520 ps) = 87,927,040 ps, as in the ring test above. In one
  // bucket both layers' 16,785,408 B wait for the end: 2 x (2 us + 83,927,040) = 171,854,080.
  // Stage 1 (layers 3, 1) the same, except that its ring's first step shares GPU 2's (and 3's)
  // NVLink port with the 2,048,000 B of gradients it sends to stage 0 at the same moment, 20.48
  // us more.
  const auto run = [](int buckets) {
    std::string text = tiny("dropless", 4);
    text.replace(text.find("gpus_per_node: 2"), 16, "gpus_per_node: 4");
    text.replace(text.find("parallelism: {ep: 2}"), 20, "parallelism: {ep: 2, pp: 2, virtual_stages: 2}");
    const std::string from = "workload: {tokens_per_gpu: 1000, sequence_length: 1000}";
    text.replace(text.find(from), from.size(),
                 fmt::format("workload: {{kind: training, micro_batches: 2, gradient_sync: ring, gradient_sync_buckets: {}, "
                             "tokens_per_gpu: 1000, sequence_length: 1000}}",
                             buckets));
    return scenarios::run_experiment(scenarios::load_scenario_text(text, "vb.yaml"));
  };
  const auto two = run(2), one = run(1);
  for (int g = 0; g < 4; ++g) {
    INFO("GPU " << g);
    const std::int64_t shared = g < 2 ? 0 : 20'480'000;
    CHECK(two.stats.gpus()[static_cast<std::size_t>(g)].stage_total[idx(Stage::grad_sync)] == Time::ps(87'927'040 + shared));
    CHECK(one.stats.gpus()[static_cast<std::size_t>(g)].stage_total[idx(Stage::grad_sync)] == Time::ps(171'854'080 + shared));
  }
  CHECK(two.stats.step_time() < one.stats.step_time());
}

TEST_CASE("Activation recomputation runs forward work again in the backward pass, as derived by hand",
          "[models][training][recompute]") {
  // The tiny training step above: forward F = 283,379,776 ps (of which the two flows' waits are
  // 2 x 22,480,000: its compute is attention 104,386,560 + router 2,060,096 + experts 125,829,120
  // + reduce 6,144,000 = 238,419,776), backward 515,655,552, optimizer 205,578,240: 1,004,613,568.
  // The time recomputing (recompute_total) counts the recomputed all-to-alls' waits too.
  const auto plain = scenarios::run_experiment(scenarios::load_scenario_text(tiny_training(""), "t.yaml"));
  REQUIRE(plain.stats.step_time() == Time::ps(1'004'613'568));
  SECTION("attention: its forward again before its backward") {
    const auto r = scenarios::run_experiment(scenarios::load_scenario_text(tiny_training(", recompute: attention"), "a.yaml"));
    CHECK(r.stats.step_time() == Time::ps(1'004'613'568 + 104'386'560));
    for (const auto& g : r.stats.gpus()) {
      CHECK(g.recompute_total == Time::ps(104'386'560));
      CHECK(g.backward_total == Time::ps(515'655'552 + 104'386'560));
      CHECK(g.stage_total[idx(Stage::attention)] == Time::ps(4 * 104'386'560LL));  // forward, again, twice backward
    }
    CHECK(r.model_flops == plain.model_flops);  // recomputation is not model work
    CHECK(r.stats.backward_layers()[0].stage_max[idx(Stage::attention)] == Time::ps(2 * 104'386'560LL));
  }
  SECTION("full: the whole layer forward again, its all-to-alls included, before its backward") {
    const auto sc = scenarios::load_scenario_text(tiny_training(", recompute: full"), "f.yaml");
    const auto r = scenarios::run_experiment(sc);
    CHECK(r.stats.step_time() == Time::ps(1'004'613'568 + 283'379'776));
    for (const auto& g : r.stats.gpus()) {
      CHECK(g.recompute_total == Time::ps(283'379'776));  // its compute and its all-to-all waits
      CHECK(g.backward_total == Time::ps(515'655'552 + 283'379'776));
      CHECK(g.stage_total[idx(Stage::experts)] == Time::ps(4 * 125'829'120LL));
      CHECK(g.stage_total[idx(Stage::dispatch)] == Time::ps(3 * 22'480'000LL));
      CHECK(g.stage_total[idx(Stage::combine)] == Time::ps(3 * 22'480'000LL));
    }
    CHECK(r.model_flops == plain.model_flops);
    const auto& fwd = r.stats.layers()[0];
    const auto& bwd = r.stats.backward_layers()[0];
    CHECK(fwd.flows == 4);  // the forward row keeps the forward's flows only
    CHECK(fwd.routed == 4000);  // routed once
    CHECK(bwd.start == Time::ps(283'379'776));
    CHECK(bwd.end == Time::ps(283'379'776LL + 283'379'776LL + 515'655'552LL));
    CHECK(bwd.flows == 8);  // the recomputed forward's and the backward's
    CHECK(bwd.network_bytes == 2 * fwd.network_bytes);
    const std::string summary = summary_csv(sc, r);
    CHECK(csv_value(summary, "recompute") == "full");
    CHECK(csv_value(summary, "recompute_us") == "283.379776");
    CHECK(csv_value(summary, "backward_us") == "799.035328");
  }
  SECTION("full, recompute_layers: only the first that many layers of each model chunk") {
    // Three identical layers: each recomputed one adds F (its forward again) to the step; a kept
    // one holds its activations: per_layer 16,392,000 B (attention b T (2H + 2q + 2kv)
    // 12,288,000, norm and router inputs b T 2H 4,096,000, logits 4 T E 8,000) and its 2000
    // expert rows x b (2H + 3F) 20,480,000 B, where a recomputed one holds its input b T H
    // 2,048,000 B: 34,824,000 B more per layer kept.
    std::string text = tiny("dropless", 3);
    const std::string from = "workload: {tokens_per_gpu: 1000, sequence_length: 1000}";
    text.replace(text.find(from), from.size(), "workload: {kind: training, tokens_per_gpu: 1000, sequence_length: 1000, recompute: full");
    const auto run = [&](const std::string& keys) {
      const auto sc = scenarios::load_scenario_text(std::string(text).replace(text.find(", recompute: full"), 17, keys + "}"), "p.yaml");
      const auto r = scenarios::run_experiment(sc);
      return std::pair{std::stod(csv_value(summary_csv(sc, r), "memory_gb_max")), r};
    };
    const auto [none_gb, none] = run("");
    const auto [all_gb, all] = run(", recompute: full");
    for (const int n : {1, 2, 3, 4}) {
      INFO(n);
      const auto [gb, r] = run(", recompute: full, recompute_layers: " + std::to_string(n));
      const int rebuilt = std::min(n, 3);
      CHECK(r.stats.step_time() == none.stats.step_time() + Time::ps(rebuilt * 283'379'776LL));
      for (const auto& g : r.stats.gpus()) CHECK(g.recompute_total == Time::ps(rebuilt * 283'379'776LL));
      CHECK(gb - all_gb == Approx((3 - rebuilt) * 0.034824).margin(0.0011));
      for (const auto& s : r.timeline->stages())
        if (s.recompute) CHECK(s.layer < n);  // the first layers
    }
    CHECK(all.stats.step_time() == none.stats.step_time() + Time::ps(3 * 283'379'776LL));
    CHECK(none_gb > all_gb);
  }
  SECTION("full, recompute_layers with pipeline stages: the first layers of each stage") {
    const auto r = scenarios::run_experiment(
        scenarios::load_scenario_text(two_stages(", kind: training, micro_batches: 2, recompute: full, recompute_layers: 1", 4), "pp.yaml"));
    std::set<int> layers;
    for (const auto& s : r.timeline->stages())
      if (s.recompute) layers.insert(s.layer);
    CHECK(layers == std::set<int>{0, 2});  // stage 0 holds layers 0 and 1, stage 1 layers 2 and 3
  }
  SECTION("dense layers: their forward (full) or attention (attention) again before their backward") {
    // The dense layer of the test above: attention 104,386,560 + FFN 62,914,560 = D = 167,301,120;
    // the plain training step 450,680,896 + 515,655,552 + 2D + 411,099,136.
    const std::int64_t D = 167'301'120, step = 450'680'896LL + 515'655'552LL + 2 * D + 411'099'136LL;
    const auto full = scenarios::run_experiment(scenarios::load_scenario_text(tiny_training(", recompute: full", true), "d.yaml"));
    CHECK(full.stats.step_time() == Time::ps(step + 283'379'776 + D));
    CHECK(full.stats.gpus()[0].stage_total[idx(Stage::dense)] == Time::ps(4 * D));
    CHECK(full.stats.gpus()[0].recompute_total == Time::ps(283'379'776 + D));
    const auto attn = scenarios::run_experiment(scenarios::load_scenario_text(tiny_training(", recompute: attention", true), "d.yaml"));
    CHECK(attn.stats.step_time() == Time::ps(step + 2 * 104'386'560LL));
    CHECK(attn.stats.gpus()[0].stage_total[idx(Stage::dense)] == Time::ps(3 * D + 104'386'560));
    CHECK(attn.stats.gpus()[0].recompute_total == Time::ps(2 * 104'386'560LL));
  }
  SECTION("with the LM head: the head's backward first, then the last layer's recomputed forward") {
    // The head's forward with the loss 656,640,000 and its backward 1,310,720,000 (the LM head test).
    std::string text = tiny_training(", recompute: full");
    const std::string heads = "  attention_heads: 8\n";
    text.replace(text.find(heads), heads.size(), heads + "  vocab: 32000\n");
    const auto r = scenarios::run_experiment(scenarios::load_scenario_text(text, "v.yaml"));
    CHECK(r.stats.backward_layers()[0].start == Time::ps(283'379'776LL + 656'640'000LL + 1'310'720'000LL));
    CHECK(r.stats.gpus()[0].recompute_total == Time::ps(283'379'776));
    CHECK(r.stats.gpus()[0].stage_total[idx(Stage::lm_head)] == Time::ps(656'640'000LL + 1'310'720'000LL));
    // The head's work is model work whatever pass comes next.
    std::string without = text;
    without.replace(without.find(", recompute: full"), std::string(", recompute: full").size(), "");
    CHECK(r.model_flops == scenarios::run_experiment(scenarios::load_scenario_text(without, "v.yaml")).model_flops);
  }
  SECTION("two-batch overlap: each half's work again, with both recomputation kinds") {
    for (const char* kind : {"attention", "full"}) {
      INFO(kind);
      const auto tbo = scenarios::run_experiment(
          scenarios::load_scenario_text(tiny_training(", overlap: two_batch, comm_sm_fraction: 0"), "o.yaml"));
      const auto r = scenarios::run_experiment(scenarios::load_scenario_text(
          tiny_training(std::string(", overlap: two_batch, comm_sm_fraction: 0, recompute: ") + kind), "o.yaml"));
      // Attention on 500 tokens: 2*500*H*(q+2kv) + 2*500*q*H + 2*500*q*1001 = 5,219,328,000 FLOPs.
      const std::int64_t half_attention = 52'193'280;
      check_stages_tile(r);
      for (const auto& g : r.stats.gpus()) {
        if (std::string(kind) == "attention") CHECK(g.recompute_total == Time::ps(2 * half_attention));
        else CHECK(g.recompute_total > Time::ps(2 * half_attention));
      }
      CHECK(r.stats.step_time() > tbo.stats.step_time());
      CHECK(r.model_flops == tbo.model_flops);
    }
  }
  SECTION("memory: a layer keeps its input, and one layer's activations are rebuilt at a time") {
    // 3 layers, b = 2, T = 1000, H = 1024, q = kv = 1024, F = 1024, 2 experts: per layer the
    // attention's b T (2H + 2q + 2kv) = 12,288,000, the MoE block's norm and router inputs
    // b T 2H = 4,096,000 and the router's logits 4 T E = 8,000 B: 16,392,000; the GPU's expert
    // rows, 2000 a layer, b n (2H + 3F) = 20,480,000 B a layer. none: 3 x 16,392,000 +
    // 3 x 20,480,000 = 110,616,000. full: 3 inputs b T H = 3 x 2,048,000, plus one layer's
    // 16,392,000 + 20,480,000: 43,016,000 (67,600,000 less). attention: each layer's attention
    // replaced by its input, plus one layer's attention: 110,616,000 - 3 x 10,240,000 +
    // 12,288,000 = 92,184,000 (18,432,000 less).
    const auto run = [](const std::string& keys) {
      std::string text = tiny("dropless", 3);
      const std::string from = "workload: {tokens_per_gpu: 1000, sequence_length: 1000}";
      text.replace(text.find(from), from.size(), "workload: {kind: training, tokens_per_gpu: 1000, sequence_length: 1000" + keys + "}");
      const auto sc = scenarios::load_scenario_text(text, "m.yaml");
      return std::stod(csv_value(summary_csv(sc, scenarios::run_experiment(sc)), "memory_gb_max"));
    };
    const double none = run(""), full = run(", recompute: full"), attention = run(", recompute: attention");
    CHECK(none - full == Approx(0.0676).margin(0.0011));
    CHECK(none - attention == Approx(0.018432).margin(0.0011));
  }
}

TEST_CASE("Selective recomputation rebuilds MLA's up projections and keeps fewer activations, as derived by hand",
          "[models][training][recompute][mla]") {
  // DeepSeek-V3's up projections: 128 heads x (1536 x 192 + 512 x 256) = 54,525,952 weights, the
  // attention's weights less its down projections (15,138,816) and output projection (128 x 128 x 7168).
  routing::MoeModelSpec ds = deepseek_v3_mla();
  const models::KernelCost up = models::mla_up_projection_cost(ds, 1000);
  CHECK(routing::attention_weights(ds) - routing::mla_down_weights(ds) - 128LL * 128 * 7168 == 54'525'952);
  CHECK(up.flops == 2LL * 1000 * 54'525'952);
  CHECK(up.gemm_flops == up.flops);
  // Weights once; per token the latents in (1536 + 512) and q, k_nope, v out (128 x (192 + 128 + 128)).
  CHECK(up.bytes == 2LL * 54'525'952 + 2LL * 1000 * (2048 + 128 * 448));
  ds.mla.q_lora_rank = 0;  // no query latent: only the keys' and values' up projection
  CHECK(models::mla_up_projection_cost(ds, 1000).flops == 2LL * 1000 * 128 * 512 * 256);
  ds = deepseek_v3_mla();
  ds.tp = 2;  // half the heads over the group's 2000 tokens: the same FLOPs, half the weights
  CHECK(models::mla_up_projection_cost(ds, 1000).flops == up.flops);
  CHECK(models::mla_up_projection_cost(ds, 1000).bytes == 54'525'952 + 2LL * 2000 * (2048 + 64 * 448));
  CHECK(models::mla_up_projection_cost(routing::MoeModelSpec{}, 1000).flops == 0);  // no MLA, nothing to rebuild

  // The tiny training step with a small MLA (8 heads, rq 64, rkv 32, dn 16, dr 8, dv 16) and
  // T = 100,000 tokens: up projections Wu = 8 x (64 x 24 + 32 x 32) = 20,480 weights; rebuilt:
  // 2 T Wu = 4.096e9 FLOPs (40.96 us) against 2 Wu + 2 T (96 + 8 x 24 + 8 x 32) = 108,840,960
  // bytes (108.84 us on 1 TB/s): 108,840,960 ps before each attention's backward.
  const std::int64_t U = 108'840'960;
  const auto text = [](const std::string& keys, bool dense = false) {
    std::string t = tiny_training(keys, dense);
    t.replace(t.find("tokens_per_gpu: 1000"), 20, "tokens_per_gpu: 100000");
    const std::string heads = "  attention_heads: 8\n";
    return t.replace(t.find(heads), heads.size(),
                     heads + "  mla: {q_lora_rank: 64, kv_lora_rank: 32, qk_nope_head_dim: 16, qk_rope_head_dim: 8, v_head_dim: 16}\n");
  };
  const auto run = [&](const std::string& keys, bool dense = false) {
    const auto sc = scenarios::load_scenario_text(text(keys, dense), "s.yaml");
    auto r = scenarios::run_experiment(sc);
    return std::pair{std::stod(csv_value(summary_csv(sc, r), "memory_gb_max")), std::move(r)};
  };
  const auto [plain_gb, plain] = run("");
  SECTION("the up projections' time, before the attention's backward, not model work") {
    const auto sc = scenarios::load_scenario_text(text(", recompute: selective, recompute_modules: [moe_act, mla_up_proj]"), "s.yaml");
    const auto r = scenarios::run_experiment(sc);
    CHECK(r.stats.step_time() == plain.stats.step_time() + Time::ps(U));
    const std::string summary = summary_csv(sc, r);
    CHECK(csv_value(summary, "recompute") == "selective:mla_up_proj+moe_act");
    CHECK(csv_value(summary, "recompute_us") == "108.840960");
    for (const auto& g : r.stats.gpus()) CHECK(g.recompute_total == Time::ps(U));
    CHECK(r.model_flops == plain.model_flops);
    // The dense layer's attention too, before its backward.
    const auto dense_plain = run("", true).second;
    const auto dense = run(", recompute: selective, recompute_modules: [mla_up_proj]", true).second;
    CHECK(dense.stats.step_time() == dense_plain.stats.step_time() + Time::ps(2 * U));
    CHECK(dense.stats.gpus()[0].recompute_total == Time::ps(2 * U));
  }
  SECTION("layernorm and moe_act cost no time (norms and SwiGLU are not kernels of their own here)") {
    const auto [gb, r] = run(", recompute: selective, recompute_modules: [layernorm, moe_act]");
    CHECK(r.stats.step_time() == plain.stats.step_time());
    CHECK(r.stats.gpus()[0].recompute_total == Time::ps(0));
  }
  SECTION("two-batch overlap: each half's up projections again") {
    const auto tbo = run(", overlap: two_batch, comm_sm_fraction: 0").second;
    const auto r = run(", overlap: two_batch, comm_sm_fraction: 0, recompute: selective, recompute_modules: [mla_up_proj]").second;
    // Each half: 2 Wu + 2 x 50,000 x 544 = 54,440,960 bytes (54.44 us; 20.48 us of FLOPs).
    check_stages_tile(r);
    for (const auto& g : r.stats.gpus()) CHECK(g.recompute_total == Time::ps(2 * 54'440'960LL));
    CHECK(r.stats.step_time() == tbo.stats.step_time() + Time::ps(2 * 54'440'960LL));
  }
  SECTION("tensor parallelism: no all-gather for them (each GPU keeps its group's latents)") {
    const auto two = [&](const std::string& keys) {
      std::string t = text(keys);
      return scenarios::run_experiment(scenarios::load_scenario_text(t.replace(t.find("parallelism: {ep: 2}"), 20, "parallelism: {ep: 2, tp: 2}"), "t.yaml"));
    };
    const auto tp_plain = two(""), r = two(", recompute: selective, recompute_modules: [mla_up_proj]");
    check_stages_tile(r);
    const auto collectives = [](const scenarios::RunResult& run) {
      return std::count_if(run.timeline->stages().begin(), run.timeline->stages().end(),
                           [](const auto& s) { return s.stage == Stage::tp; });
    };
    CHECK(collectives(r) == collectives(tp_plain));
    // 4 heads over 200,000 tokens: 2 x 10,240 + 2 x 200,000 x (96 + 4 x 24 + 4 x 32) = 128,020,480 bytes.
    for (const auto& g : r.stats.gpus()) CHECK(g.recompute_total == Time::ps(128'020'480));
    CHECK(r.stats.step_time() == tp_plain.stats.step_time() + Time::ps(128'020'480));
  }
  SECTION("memory: what each module and FP8 activations keep, per token and expert row") {
    // Per token (b = 2): attention block b (2H + L + Q + K + V + O) with L = 104, Q = 192, K = 136,
    // V = O = 128: 5472 B; MoE block b 2H + 4E: 4104 B; per expert row b (2H + 3F): 10,240 B, and
    // each GPU's 200,000 rows. layernorm: the two norms' outputs, b 2H = 4096 B a token; mla_up_proj:
    // Q, K less the RoPE key, V: b (192 + 128 + 128) = 896 B a token; moe_act: b F = 2048 B a row.
    const auto gb = [&](const std::string& keys, const std::string& compute = "") {
      std::string t = text(keys);
      if (!compute.empty()) {
        t.replace(t.find("compute: {"), 10, "compute: {" + compute + ", ");
        t.replace(t.find("peak_bf16: 100TFLOP/s"), 21, "peak_bf16: 100TFLOP/s, peak_fp8: 200TFLOP/s");
      }
      const auto sc = scenarios::load_scenario_text(t, "m.yaml");
      return std::stod(csv_value(summary_csv(sc, scenarios::run_experiment(sc)), "memory_gb_max"));
    };
    const std::string sel = ", recompute: selective, recompute_modules: ";
    CHECK(plain_gb - gb(sel + "[layernorm]") == Approx(0.4096).margin(0.0011));
    CHECK(plain_gb - gb(sel + "[mla_up_proj]") == Approx(0.0896).margin(0.0011));
    CHECK(plain_gb - gb(sel + "[moe_act]") == Approx(0.4096).margin(0.0011));
    // FP8 (1 + 4/128 = 1.03125 B an element for the linear layers' and SwiGLU inputs, 1.5 for the
    // attention output): attention b H + 1.03125 H + b (L + Q + K + V) + 1.5 O = 4416 B (1056 less
    // a token), an expert row 1.03125 (H + 3F) + b H = 6272 B (3968 less): 0.8992 GB less.
    const std::string fp8 = "gemm_dtype: fp8";
    CHECK(gb("", fp8) - gb(", activation_dtype: fp8", fp8) == Approx(0.8992).margin(0.0011));
    // All of it: attention b H + b (L + Q + K + V - 448) + 1.5 O = 2464 B, the MoE block b H + 4E =
    // 2056 B, a row 1.03125 (H + 2F) + b H = 5216 B: 1.5104 GB less than without.
    CHECK(gb("", fp8) - gb(sel + "[layernorm, mla_up_proj, moe_act], activation_dtype: fp8", fp8) ==
          Approx(1.5104).margin(0.0011));
  }
}

TEST_CASE("A dense layer keeps its FFN's activations for the backward pass, as derived by hand", "[models][training]") {
  // The tiny training step with its dense layer at T = 100,000 tokens: doubling dense_ffn from
  // 1024 to 2048 adds b T 3 x 1024 = 614,400,000 B of the FFN's gate, up and SwiGLU outputs,
  // and 3 H x 1024 = 3,145,728 weights at 16 B (weight, gradient, master and moments).
  const auto gb = [](int ffn) {
    std::string t = tiny_training("", true);
    t.replace(t.find("tokens_per_gpu: 1000"), 20, "tokens_per_gpu: 100000");
    t.replace(t.find("dense_ffn: 1024"), 15, "dense_ffn: " + std::to_string(ffn));
    const auto sc = scenarios::load_scenario_text(t, "d.yaml");
    return std::stod(csv_value(summary_csv(sc, scenarios::run_experiment(sc)), "memory_gb_max"));
  };
  CHECK(gb(2048) - gb(1024) == Approx((614'400'000 + 3'145'728 * 16) / 1e9).margin(0.0011));
}

TEST_CASE("A weight pass keeps what selective recomputation rebuilt for it; the logits stay with the head's micro-batches",
          "[models][training][recompute][pipeline]") {
  routing::MoeModelSpec m;
  m.moe_layers = 4;
  models::ForwardSpec f;
  f.model = m;
  f.training = true;
  f.pp = 2;
  f.micro_batches = 4;
  f.pipeline_schedule = models::PipelineSchedule::one_f_one_b;
  // 1F1B frees a layer at its backward: the factor changes nothing.
  for (int s = 0; s < 2; ++s) CHECK(models::pipeline_held_layers(f, s, 2.0) == models::pipeline_held_layers(f, s));
  f.pipeline_schedule = models::PipelineSchedule::zb_h1;
  // ZB-H1 (2 layers a stage). Stage 1 holds back its first weight pass: F0 B0 F1 B1 W0 F2 B2 W1
  // F3 B3 W2 W3. A layer between its backward and weight pass counting 1.5: F0 2, B0 3, F1 5,
  // B1 6 (the peak), W0 3, ...; counting 1, the peak is 4. Stage 0: F0 F1 B0 W0 F2 B1 W1 ...:
  // F0 F1 4, B0 5 (the peak), W0 2, ...
  CHECK(models::pipeline_held_layers(f, 1) == 4);
  CHECK(models::pipeline_held_layers(f, 1, 1.5) == 6);
  CHECK(models::pipeline_held_layers(f, 0) == 4);
  CHECK(models::pipeline_held_layers(f, 0, 1.5) == 5);
  // The head's chunk: the last stage holds one micro-batch from its forward to its backward.
  CHECK(models::pipeline_held_head(f, 1) == 1);
  CHECK(models::pipeline_held_head(f, 0) == 0);
  f.pipeline_schedule = models::PipelineSchedule::gpipe;
  CHECK(models::pipeline_held_head(f, 1) == 4);  // every micro-batch forward first
}

TEST_CASE("With pipeline stages a recomputed forward waits for its backward's gradients, as derived by hand",
          "[models][pipeline][recompute]") {
  // The 2-stage, 2-micro-batch 1F1B case above (F = 238,419,776 per layer on one GPU, B =
  // 470,695,552, d = 22,480,000), with full recomputation: every backward becomes F + B (the layer
  // forward again, on one GPU without flows, then its backward), started when the gradients have
  // arrived. GPU 1: F0 F + d..2F + d, B0 until 3F + d + B, F1 until 4F + d + B, B1 until
  // 5F + d + 2B; its gradients reach GPU 0 at 3F + 2d + B and 5F + 2d + 2B; GPU 0 waits for each,
  // and is done at 6F + 2d + 3B, then the optimizer.
  const std::int64_t F = 238'419'776, B = 470'695'552, d = 22'480'000, opt = 293'658'624;
  const auto r = scenarios::run_experiment(
      scenarios::load_scenario_text(two_stages(", kind: training, micro_batches: 2, recompute: full"), "pp.yaml"));
  CHECK(r.stats.step_time() == Time::ps(6 * F + 2 * d + 3 * B + opt));
  CHECK(r.stats.gpus()[1].finish == Time::ps(5 * F + d + 2 * B + opt));
  CHECK(r.stats.gpus()[0].stage_total[idx(Stage::pipeline)] == Time::ps(2 * F + 2 * d + B));
  CHECK(r.stats.pipeline_bytes() == 4 * 2'048'000);  // recomputation sends nothing between stages
  for (const auto& g : r.stats.gpus()) CHECK(g.recompute_total == Time::ps(2 * F));
}

TEST_CASE("The LM head and the dense layers' backward are recorded with the pass they follow", "[models][training]") {
  // 4 MoE layers on 2 pipeline stages of one GPU, GPipe, 2 micro-batches, with the dense layer
  // and the LM head: every LM head slice belongs to layer 3 and every dense slice to layer 0,
  // each in its own micro-batch, although the GPU's next pass is another micro-batch's other
  // layer (stage 1 runs micro-batch 1's layer 2 after micro-batch 0's head, stage 0 micro-batch
  // 1's layer 1 backward after micro-batch 0's dense backward).
  for (const char* recompute : {"", ", recompute: full"}) {
    INFO(recompute);
    std::string text = two_stages(std::string(", kind: training, micro_batches: 2, pipeline_schedule: gpipe") + recompute, 4);
    const std::string heads = "  attention_heads: 8\n";
    text.replace(text.find(heads), heads.size(), heads + "  vocab: 32000\n  dense_layers: 1\n  dense_ffn: 1024\n");
    const auto r = scenarios::run_experiment(scenarios::load_scenario_text(text, "h.yaml"));
    REQUIRE(r.timeline);
    int heads_seen = 0, dense_seen = 0;
    std::array<int, 2> head_forward{}, dense_backward{};
    for (const auto& s : r.timeline->stages()) {
      if (s.stage == Stage::lm_head) {
        ++heads_seen;
        CHECK(s.layer == 3);
        CHECK_FALSE(s.recompute);
        if (!s.backward) ++head_forward.at(static_cast<std::size_t>(s.micro_batch));
      }
      if (s.stage == Stage::dense) {
        ++dense_seen;
        CHECK(s.layer == 0);
        if (s.backward && !s.recompute) ++dense_backward.at(static_cast<std::size_t>(s.micro_batch));
      }
    }
    CHECK(heads_seen == 2 * 2);  // stage 1's GPU: 2 micro-batches, forward and backward
    CHECK(dense_seen == 2 * (std::string(recompute).empty() ? 2 : 3));  // stage 0's GPU (and the recompute)
    CHECK(head_forward == std::array<int, 2>{1, 1});
    CHECK(dense_backward == std::array<int, 2>{1, 1});
  }
}

TEST_CASE("Context parallelism gathering MLA's latent: fewer bytes, the other GPUs' keys and values expanded, as derived by hand",
          "[models][context_parallel][mla]") {
  // The tiny layer with MLA (8 heads, kv_lora_rank 512, nope 64, rope 64, values 64) and
  // 2000-token sequences over cp: 2. Gathering the keys and values: each GPU's 1000 tokens x (K =
  // 8 x 64 + 64, V = 8 x 64: 1088) x 2 B = 2,176,000 B, one ring step at 100 GB/s + 2 hops of
  // 1 us: 23,760,000 ps. Gathering the latent: 1000 x (512 + 64) x 2 B = 1,152,000 B, 13,520,000
  // ps; then the attention expands the other GPU's 1000 latents: 2 x 1000 x 512 x 8 x 128 =
  // 1,048,576,000 FLOPs, 10,485,760 ps at 100 TFLOP/s (its 4,376,576 bytes take less).
  std::string base = replaced(tiny("dropless", 1), "sequence_length: 1000", "sequence_length: 2000");
  base = replaced(base, "  attention_heads: 8\n",
                  "  attention_heads: 8\n  mla: {q_lora_rank: 256, kv_lora_rank: 512, qk_nope_head_dim: 64, qk_rope_head_dim: 64, v_head_dim: 64}\n");
  const auto run = [&](const std::string& par) {
    return scenarios::run_experiment(scenarios::load_scenario_text(replaced(base, "{ep: 2}", par), "mla.yaml"));
  };
  const auto kv = run("{ep: 2, cp: 2}"), latent = run("{ep: 2, cp: 2, cp_gather: latent}");
  CHECK(kv.stats.cp_bytes() == 2 * 2'176'000);
  CHECK(latent.stats.cp_bytes() == 2 * 1'152'000);
  for (std::size_t g = 0; g < 2; ++g) {
    CHECK(kv.stats.gpus()[g].stage_total[idx(Stage::cp)] == Time::ps(23'760'000));
    CHECK(latent.stats.gpus()[g].stage_total[idx(Stage::cp)] == Time::ps(13'520'000));
    CHECK(latent.stats.gpus()[g].stage_total[idx(Stage::attention)] ==
          kv.stats.gpus()[g].stage_total[idx(Stage::attention)] + Time::ps(10'485'760));
  }
  CHECK(latent.stats.step_time() == kv.stats.step_time() - Time::ps(23'760'000 - 13'520'000) + Time::ps(10'485'760));
  check_stages_tile(latent);
  // Training: three exchanges of latents (or their gradients), the expansion twice more in the backward.
  const auto train = [&](const std::string& par) {
    return scenarios::run_experiment(scenarios::load_scenario_text(
        replaced(replaced(base, "{ep: 2}", par), "{tokens_per_gpu: 1000,", "{kind: training, tokens_per_gpu: 1000,"), "mla.yaml"));
  };
  const auto t_kv = train("{ep: 2, cp: 2}"), t_latent = train("{ep: 2, cp: 2, cp_gather: latent}");
  CHECK(t_latent.stats.cp_bytes() == 3 * 2 * 1'152'000);
  CHECK(t_latent.stats.step_time() == t_kv.stats.step_time() - Time::ps(3 * (23'760'000 - 13'520'000)) + Time::ps(3 * 10'485'760));
  // Without MLA there is no latent; without cp nothing to gather.
  CHECK_THROWS_WITH(scenarios::load_scenario_text(replaced(replaced(tiny("dropless", 1), "sequence_length: 1000", "sequence_length: 2000"),
                                                           "{ep: 2}", "{ep: 2, cp: 2, cp_gather: latent}"),
                                                  "t.yaml"),
                    Catch::Contains("parallelism.cp_gather: latent gathers multi-head latent attention's kv latent: set model.mla"));
  CHECK_THROWS_WITH(scenarios::load_scenario_text(replaced(base, "{ep: 2}", "{ep: 2, cp_gather: latent}"), "t.yaml"),
                    Catch::Contains("only used with parallelism.cp > 1"));
}

TEST_CASE("Context parallelism gathers each attention's keys and values from the sequence's GPUs, as derived by hand",
          "[models][context_parallel]") {
  // The tiny layer with 2000-token sequences, 1000 tokens a GPU: without context parallelism the
  // attention runs the FLOPs of the whole sequence and nothing is exchanged; with cp: 2 both GPUs
  // hold one sequence's halves, and before the attention they all-gather its keys and values:
  // each GPU's 1000 tokens x (K + V: 2 x 8 heads x 128) x 2 B = 4,096,000 B, one ring step to the
  // other GPU: 40.96 us at 100 GB/s + 2 NVLink hops of 1 us = 42,960,000 ps, exposed. Nothing else
  // changes.
  const std::string base = replaced(tiny("dropless", 1), "sequence_length: 1000", "sequence_length: 2000");
  const auto plain = scenarios::run_experiment(scenarios::load_scenario_text(base, "tiny.yaml"));
  const auto sc = scenarios::load_scenario_text(replaced(base, "{ep: 2}", "{ep: 2, cp: 2}"), "tiny.yaml");
  CHECK(sc.forward.cp == 2);
  const auto r = scenarios::run_experiment(sc);
  CHECK(r.stats.step_time() == plain.stats.step_time() + Time::ps(42'960'000));
  for (const auto& g : r.stats.gpus()) {
    CHECK(g.stage_total[idx(Stage::cp)] == Time::ps(42'960'000));
    CHECK(g.stage_total[idx(Stage::attention)] == plain.stats.gpus()[0].stage_total[idx(Stage::attention)]);
  }
  check_stages_tile(r);
  CHECK(r.stats.cp_bytes() == 2 * 4'096'000);
  CHECK(plain.stats.cp_bytes() == 0);
  const std::string csv = summary_csv(sc, r);
  CHECK(csv_value(csv, "cp") == "2");
  CHECK(csv_value(csv, "cp_wait_us") == "42.960000");
  CHECK(csv_value(csv, "cp_bytes") == "8192000");

  SECTION("training: the backward gathers them again and reduce-scatters their gradients") {
    // Forward: one all-gather; backward: an all-gather and a reduce-scatter of the same size (one
    // ring step each way), 3 x 42,960,000 ps in all.
    const auto train = [&](const std::string& yaml) {
      return scenarios::run_experiment(scenarios::load_scenario_text(replaced(yaml, "{tokens_per_gpu: 1000,", "{kind: training, tokens_per_gpu: 1000,"), "tiny.yaml"));
    };
    const auto t_plain = train(base);
    const auto t = train(replaced(base, "{ep: 2}", "{ep: 2, cp: 2}"));
    CHECK(t.stats.step_time() == t_plain.stats.step_time() + Time::ps(3 * 42'960'000));
    CHECK(t.stats.cp_bytes() == 3 * 2 * 4'096'000);
    for (const auto& g : t.stats.gpus()) CHECK(g.stage_total[idx(Stage::cp)] == Time::ps(3 * 42'960'000));
    check_stages_tile(t);
  }

  SECTION("cp_comm: ring passes them on while the attention computes: only what outlasts it is waited for") {
    // At 100 GB/s the exchange (42.96 us) is shorter than the attention: nothing is waited for,
    // the same bytes move. At 1 GB/s it takes 4096 us + 2 us, and the GPUs wait for what is left
    // after the attention.
    const std::string ring = replaced(base, "{ep: 2}", "{ep: 2, cp: 2, cp_comm: ring}");
    const auto fast = scenarios::run_experiment(scenarios::load_scenario_text(ring, "tiny.yaml"));
    CHECK(fast.stats.step_time() == plain.stats.step_time());
    CHECK(fast.stats.cp_bytes() == 2 * 4'096'000);
    for (const auto& g : fast.stats.gpus()) CHECK(g.stage_total[idx(Stage::cp)] == Time::zero());
    check_stages_tile(fast);
    const auto slow = [](const std::string& yaml) { return replaced(yaml, "nvlink_bandwidth: 100GB/s", "nvlink_bandwidth: 1GB/s"); };
    const auto slow_plain = scenarios::run_experiment(scenarios::load_scenario_text(slow(base), "tiny.yaml"));
    const auto slow_ring = scenarios::run_experiment(scenarios::load_scenario_text(slow(ring), "tiny.yaml"));
    const Time attention = slow_plain.stats.gpus()[0].stage_total[idx(Stage::attention)];
    const Time exchange = Time::ps(4'096'000'000 + 2'000'000);
    REQUIRE(exchange > attention);
    CHECK(slow_ring.stats.step_time() == slow_plain.stats.step_time() + (exchange - attention));
    for (const auto& g : slow_ring.stats.gpus()) CHECK(g.stage_total[idx(Stage::cp)] == exchange - attention);
    check_stages_tile(slow_ring);
    // In training the backward's ring carries the gradients too: twice the bytes beside it.
    const auto train = [&](const std::string& yaml) {
      return scenarios::run_experiment(scenarios::load_scenario_text(replaced(yaml, "{tokens_per_gpu: 1000,", "{kind: training, tokens_per_gpu: 1000,"), "tiny.yaml"));
    };
    const auto t = train(ring);
    CHECK(t.stats.cp_bytes() == 3 * 2 * 4'096'000);
    check_stages_tile(t);
  }
}

TEST_CASE("Tensor parallelism gathers the group's tokens for attention and scatters them back, as derived by hand",
          "[models][tensor_parallel]") {
  // The tiny layer, dropless, with tp: 2: both GPUs form one tensor-parallel group. Attention
  // runs over both GPUs' 2000 tokens with 4 of the 8 heads each: q = kv = 512, FLOPs
  // 2*2000*1024*1536 + 2*2000*512*1024 + 2*2000*512*1001 = 10,438,656,000, as without tensor
  // parallelism (104,386,560 ps), weights 2*(1024*1536 + 512*1024) = 4,194,304 B (half).
  // Before it a ring all-gather of 2 x 1000 rows of 2048 B: one step, each GPU sends its
  // 2,048,000 B to the other: 20.48 us + 2 NVLink hops of 1 us = 22,480,000 ps; after it a
  // reduce-scatter of the same size, as long. Then the layer as without it (router 2,060,096,
  // dispatch 22,480,000, experts on 2000 tokens 125,829,120, combine 22,480,000, reduce
  // 6,144,000): 283,379,776 + 2 x 22,480,000 = 328,339,776 ps.
  const auto sc = scenarios::load_scenario_text(tiny_tp(), "tiny.yaml");
  CHECK(sc.forward.model.tp == 2);
  const auto a = models::attention_cost(sc.forward.model, 1000, 1000);
  CHECK(a.flops == 10'438'656'000);
  CHECK(a.bytes == 4'194'304 + 2 * 2000 * (2 * 1024 + 2 * 1536));
  const auto r = scenarios::run_experiment(sc);
  CHECK(r.stats.step_time() == Time::ps(328'339'776));
  for (const auto& g : r.stats.gpus()) {
    CHECK(g.stage_total[idx(Stage::tp)] == Time::ps(2 * 22'480'000));
    CHECK(g.stage_total[idx(Stage::attention)] == Time::ps(104'386'560));
  }
  check_stages_tile(r);
  CHECK(r.stats.layers()[0].stage_max[idx(Stage::tp)] == Time::ps(22'480'000));
  CHECK(r.stats.tp_bytes() == 4 * 2'048'000);
  CHECK(r.stats.layers()[0].network_bytes == 2 * 2 * 2'048'000);  // the all-to-all's alone
  const std::string csv = summary_csv(sc, r);
  CHECK(csv_value(csv, "tp") == "2");
  CHECK(csv_value(csv, "tp_wait_us") == "44.960000");
  CHECK(csv_value(csv, "tp_bytes") == "8192000");

  SECTION("in the NVSwitch (network.tp_collectives: nvls)") {
    // The all-gather: each GPU sends its 2,048,000 B up its port and receives the 4,096,000 B
    // buffer down it, at 0.84 of the port (4,876,190 B in the network's terms): 48,761,900 ps +
    // one 1 us hop, 49,761,900 ps; the reduce-scatter the mirror image, as long. With two GPUs
    // the switch moves more than the ring's 2,048,000 B each way.
    const auto nvls = scenarios::run_experiment(scenarios::load_scenario_text(
        replaced(tiny_tp(), "compute:", "network: {tp_collectives: nvls}\ncompute:"),
        "tiny.yaml"));
    for (const auto& g : nvls.stats.gpus()) CHECK(g.stage_total[idx(Stage::tp)] == Time::ps(2 * 49'761'900));
    CHECK(nvls.stats.step_time() == Time::ps(283'379'776 + 2 * 49'761'900));
  }
  SECTION("in a mesh node, over the pair's own link") {
    // Two GPUs joined by one 100 GB/s link of 2 us: every flow (the exchanges and the
    // all-to-all's) takes what it took through the switch's two 1 us hops; the exchanges are
    // the direct collective's (each GPU sends the other its share), the same bytes.
    const auto mesh_sc = scenarios::load_scenario_text(
        replaced(tiny_tp(), "node: {nvlink_latency: 1us}",
                 "node: {fabric: mesh, link_bandwidth: 100GB/s, link_latency: 2us}"),
        "tiny.yaml");
    const auto mesh = scenarios::run_experiment(mesh_sc);
    CHECK(mesh.stats.step_time() == Time::ps(328'339'776));
    for (const auto& g : mesh.stats.gpus()) CHECK(g.stage_total[idx(Stage::tp)] == Time::ps(2 * 22'480'000));
    CHECK(mesh.stats.tp_bytes() == 4 * 2'048'000);
    CHECK(csv_value(summary_csv(mesh_sc, mesh), "node_fabric") == "mesh");
  }
}

TEST_CASE("Tensor parallelism splits the shared experts around their own collectives, unless replicated, as derived by hand",
          "[models][tensor_parallel]") {
  // The tiny tensor-parallel layer above with one shared expert (F = 1024). Both GPUs finish the
  // attention's reduce-scatter at 22,480,000 + 104,386,560 + 22,480,000 = 149,346,560 and the
  // router at 151,406,656, then send their dispatch flows (1000 copies, 2,048,000 B) and start
  // the shared expert's all-gather (2,048,000 B to the other GPU) at once: the two flows share
  // each direction's links, 50 GB/s each, and both end at 151,406,656 + 2 us + 40.96 us =
  // 194,366,656. The shared expert on both GPUs' 2000 tokens at half its columns: 6 x 2000 x 1024
  // x 512 FLOPs = 62,914,560 ps, until 257,281,216; its reduce-scatter alone on the links,
  // 22,480,000, until 279,761,216. The dispatch is in: experts (125,829,120) until 405,590,336,
  // combine (22,480,000) until 428,070,336, reduce (6,144,000) until 434,214,336.
  const std::string yaml = tiny_tp("  shared_experts: 1\n");
  const auto sc = scenarios::load_scenario_text(yaml, "shared.yaml");
  const auto r = scenarios::run_experiment(sc);
  CHECK(r.stats.step_time() == Time::ps(434'214'336));
  for (const auto& g : r.stats.gpus()) {
    CHECK(g.stage_total[idx(Stage::shared_experts)] == Time::ps(62'914'560));
    CHECK(g.stage_total[idx(Stage::tp)] == Time::ps(2 * 22'480'000 + 42'960'000 + 22'480'000));
  }
  CHECK(r.stats.tp_bytes() == 8 * 2'048'000);
  check_stages_tile(r);
  // Each GPU holds half the shared expert: 3 x 1024 x 512 parameters fewer than replicated.
  const auto rep = scenarios::load_scenario_text(replaced(yaml, "tp: 2}", "tp: 2, shared_experts: replicated}"), "rep.yaml");
  CHECK(models::stage_params(rep.forward, scenarios::compute_placements(rep), 0).replicated -
            models::stage_params(sc.forward, scenarios::compute_placements(sc), 0).replicated ==
        3 * 1024 * 512);

  SECTION("replicated: each GPU runs it whole over its own tokens, no collectives") {
    // The same FLOPs (1000 tokens, all 1024 columns) right after the router, beside the
    // dispatch: 151,406,656 + 62,914,560 = 214,321,216; experts until 340,150,336, combine until
    // 362,630,336, reduce until 368,774,336.
    const auto rr = scenarios::run_experiment(rep);
    CHECK(rr.stats.step_time() == Time::ps(368'774'336));
    for (const auto& g : rr.stats.gpus()) CHECK(g.stage_total[idx(Stage::tp)] == Time::ps(2 * 22'480'000));
  }
}

TEST_CASE("Tensor parallelism splits the dense layers and the LM head too, each around its own collectives",
          "[models][tensor_parallel]") {
  // One dense layer (all-gather, attention, reduce-scatter, all-gather, FFN, reduce-scatter) and
  // the LM head (all-gather, then its vocabulary share over the group's rows): 5 more
  // collectives of the same 22.48 us, recorded outside the MoE layer.
  const std::string yaml = tiny_tp("  dense_layers: 1\n  dense_ffn: 2048\n  vocab: 1000\n");
  const auto sc = scenarios::load_scenario_text(yaml, "tiny.yaml");
  const auto r = scenarios::run_experiment(sc);
  for (const auto& g : r.stats.gpus()) CHECK(g.stage_total[idx(Stage::tp)] == Time::ps(7 * 22'480'000));
  CHECK(r.stats.layers()[0].stage_max[idx(Stage::tp)] == Time::ps(22'480'000));
  CHECK(r.stats.tp_bytes() == 14 * 2'048'000);
  check_stages_tile(r);
  // Per GPU the dense FFN's FLOPs are those without tensor parallelism (2000 rows x 1024 of its
  // 2048 columns), its weights half; the LM head's the same over 500 of the 1000 words.
  routing::MoeModelSpec one = sc.forward.model;
  one.tp = 1;
  const auto f2 = models::dense_ffn_cost(sc.forward.model, 1000), f1 = models::dense_ffn_cost(one, 1000);
  CHECK(f2.flops == f1.flops);
  CHECK(f2.bytes - 2 * 2000 * (2 * 1024 + 3 * 1024) == (f1.bytes - 2 * 1000 * (2 * 1024 + 3 * 2048)) / 2);
  CHECK(f2.activation_bytes == 2 * 2000 * 3 * 1024);
  CHECK(f1.activation_bytes == 2 * 1000 * 3 * 2048);
  const auto h2 = models::lm_head_cost(sc.forward.model, 1000, false), h1 = models::lm_head_cost(one, 1000, false);
  CHECK(h2.flops == h1.flops);
  CHECK(models::embedding_params(sc.forward.model) == 500 * 1024);
}

TEST_CASE("Tensor-parallel decode reads its kv heads' cache, or a latent cache whole", "[models][tensor_parallel][decode]") {
  const routing::MoeModelSpec m = gqa_attention();
  routing::MoeModelSpec t2 = m, t4 = m, t8 = m;
  t2.tp = 2;
  t4.tp = 4;
  t8.tp = 8;
  // T = 4 sequences per GPU, C = 1000 cached tokens. kv heads split over 2: the same KV bytes per
  // GPU (2 x 4 sequences, half the kv width); over 4 or 8 each GPU holds one kv head (replicated),
  // for 4 x 4 or 8 x 4 sequences: 2 or 4 times the bytes.
  const auto kv_bytes = [](const routing::MoeModelSpec& s) { return 2 * s.tp * 4 * 1000 * routing::kv_cache_width(s); };
  CHECK(kv_bytes(t2) == kv_bytes(m));
  CHECK(kv_bytes(t4) == 2 * kv_bytes(m));
  CHECK(kv_bytes(t8) == 4 * kv_bytes(m));
  CHECK(models::decode_attention_cost(t2, 4, 1000).flops == models::decode_attention_cost(m, 4, 1000).flops);
  // A kv_cache_dim latent is cached whole on every GPU of the group (as MLA's, below).
  routing::MoeModelSpec mla = m, mla2 = m;
  mla.kv_cache_dim = mla2.kv_cache_dim = 576;
  mla2.tp = 2;
  const auto one = models::decode_attention_cost(mla, 4, 1000), two = models::decode_attention_cost(mla2, 4, 1000);
  const std::int64_t weights1 = 2 * routing::attention_weights(mla), weights2 = 2 * routing::attention_weights(mla2);
  CHECK(weights2 * 2 == weights1);
  const std::int64_t rows1 = 2 * 4 * (2 * 1024 + 2 * (1024 + 2 * 256)), rows2 = 2 * 8 * (2 * 1024 + 2 * (512 + 2 * 128));
  CHECK(one.bytes - weights1 - rows1 == 2 * 4 * 1000 * 576);
  CHECK(two.bytes - weights2 - rows2 == 2 * 2 * 4 * 1000 * 576);
  // The memory estimate follows: the latent cache doubles with tp: 2 (weights and the rest barely move).
  const std::string base = R"(
cluster: {nodes: 1, gpus_per_node: 2, gpu: H100}
model: {moe_layers: 4, hidden: 1024, expert_ffn: 1024, experts: 2, top_k: 1, attention_heads: 8, kv_cache_dim: 576}
parallelism: {ep: 2}
workload: {kind: decode, tokens_per_gpu: 256, context_length: 65536}
network: {model: analytical}
)";
  // KV cache: 256 sequences x 65536 x 576 x 2 B x 4 layers = 77.3 GB per GPU, 154.6 GB with tp: 2.
  const double without = memory_gb_max(base), with = memory_gb_max(replaced(base, "{ep: 2}", "{ep: 2, tp: 2}"));
  CHECK(with - without == Approx(77.309).margin(0.1));
}

namespace {

// Decode of 256 sequences x 65536 cached tokens per GPU through 4 MoE layers with a small MLA
// (query latent 256, kv latent 512, head dims 64 + 64 and 64, 8 heads), one expert per GPU.
const std::string kMlaDecode = R"(
cluster: {nodes: 1, gpus_per_node: 2, gpu: H100}
model:
  moe_layers: 4
  hidden: 1024
  expert_ffn: 1024
  experts: 2
  top_k: 1
  attention_heads: 8
  mla: {q_lora_rank: 256, kv_lora_rank: 512, qk_nope_head_dim: 64, qk_rope_head_dim: 64, v_head_dim: 64}
parallelism: {ep: 2}
workload: {kind: decode, tokens_per_gpu: 256, context_length: 65536}
network: {model: analytical}
)";

}  // namespace

TEST_CASE("MLA's latent KV cache sets decode memory, whole on every tensor-parallel GPU", "[models][mla]") {
  const std::string base = kMlaDecode;
  // KV cache: 256 sequences x 65536 x (512 + 64) x 2 B x 4 layers = 77.3 GB per GPU; with tp: 2
  // each GPU caches both GPUs' sequences: 154.6 GB. The rest is under 0.1 GB (the weights: 4
  // layers x (attention 2,162,688 + router 2,048 + an expert 3,145,728) x 2 B = 42.5 MB), and
  // barely moves: the attention's 1,310,720 up and output weights split by heads, the 851,968 of
  // its down projections not (4 layers x 655,360 x 2 B = 5.2 MB less).
  const double without = memory_gb_max(base), with = memory_gb_max(replaced(base, "{ep: 2}", "{ep: 2, tp: 2}"));
  CHECK(without == Approx(77.309).margin(0.1));
  CHECK(with - without == Approx(77.309 - 0.0052).margin(0.01));
}

TEST_CASE("FP8 weights halve the linear layers' weight bytes in memory and in their reads", "[models][fp8][fp4]") {
  const std::string base = kMlaDecode;
  const auto bf16 = scenarios::load_scenario_text(base, "d.yaml");
  const auto fp8 = scenarios::load_scenario_text(replaced(base, "  top_k: 1\n", "  top_k: 1\n  weight_dtype: fp8\n"), "d.yaml");
  CHECK(bf16.forward.model.weight_bytes32 == 64);
  CHECK(fp8.forward.model.weight_bytes32 == 32);
  // A GPU's weights: 4 layers of attention 2,162,688, router 2,048 and one expert slot of
  // 3,145,728. BF16: 2 B each, 42,483,712 B; FP8: the attention and the expert 1 B, the router 2 B:
  // 4 x (5,308,416 + 4,096) = 21,250,048 B.
  const auto r = scenarios::run_experiment(fp8);
  const models::GpuParams held = models::stage_params(fp8.forward, r.placements, 0);
  CHECK(models::weight_bytes(bf16.forward.model, held) == 42'483'712);
  CHECK(models::weight_bytes(fp8.forward.model, held) == 21'250'048);
  // NVFP4: 9 bytes per 16 of the linear layers' 4 x 5,308,416 weights, the routers' at 2 B.
  const auto fp4 = scenarios::load_scenario_text(replaced(base, "  top_k: 1\n", "  top_k: 1\n  weight_dtype: fp4\n"), "d.yaml");
  CHECK(models::weight_bytes(fp4.forward.model, held) == 11'943'936 + 16'384);
  // The reports print GB to the MB.
  CHECK(memory_gb_max(base) - memory_gb_max(replaced(base, "  top_k: 1\n", "  top_k: 1\n  weight_dtype: fp8\n")) ==
        Approx(0.021234).margin(0.0011));
  // The weight reads of an expert and of the attention follow; the activations' bytes do not.
  const auto& m8 = fp8.forward.model;
  const auto& m16 = bf16.forward.model;
  CHECK(models::expert_cost(m16, 100).bytes - models::expert_cost(m8, 100).bytes == 3 * 1024 * 1024);
  CHECK(models::decode_attention_cost(m16, 4, 1000).bytes - models::decode_attention_cost(m8, 4, 1000).bytes == 2'162'688);
  CHECK(models::router_cost(m16, 100).bytes == models::router_cost(m8, 100).bytes);
  // model.expert_weight_dtype: the routed experts' alone, as GPT-OSS ships them (MXFP4 experts,
  // BF16 attention). The attention and the router at 2 B, 17,317,888 B; the expert slot's 4 x
  // 3,145,728 at 9 B per 16, 7,077,888 B.
  const auto experts = scenarios::load_scenario_text(replaced(base, "  top_k: 1\n", "  top_k: 1\n  expert_weight_dtype: fp4\n"), "d.yaml");
  const auto& m4 = experts.forward.model;
  CHECK(m4.weight_bytes32 == 64);
  CHECK(m4.expert_weight_bytes32 == 18);
  CHECK(models::weight_bytes(m4, held) == 17'317'888 + 7'077'888);
  // A routed expert's reads are 4-bit; a shared expert's, the attention's and the router's not.
  CHECK(models::routed_expert_cost(m16, 100).bytes - models::routed_expert_cost(m4, 100).bytes == 3 * 1024 * 1024 * 2 - 1'769'472);
  CHECK(models::expert_cost(m4, 100).bytes == models::expert_cost(m16, 100).bytes);
  CHECK(models::decode_attention_cost(m4, 4, 1000).bytes == models::decode_attention_cost(m16, 4, 1000).bytes);
  CHECK(scenarios::run_experiment(experts).stats.step_time() < scenarios::run_experiment(bf16).stats.step_time());
  CHECK(fp4.forward.model.expert_weight_bytes32 == 18);  // weight_dtype takes the experts too
  // Training refuses it, naming the key.
  CHECK_THROWS_WITH(scenarios::load_scenario_text(replaced(tiny_training(""), "  top_k: 2\n", "  top_k: 2\n  expert_weight_dtype: fp8\n"), "t.yaml"),
                    Catch::Contains("model.expert_weight_dtype: only used in inference"));
}

TEST_CASE("An FP8 KV cache: FlashMLA's layout for MLA, one byte an element otherwise", "[models][fp8]") {
  const std::string base = kMlaDecode;
  const auto bf16 = scenarios::load_scenario_text(base, "d.yaml");
  const std::string fp8_yaml = replaced(base, "  top_k: 1\n", "  top_k: 1\n  kv_cache_dtype: fp8\n");
  const auto fp8 = scenarios::load_scenario_text(fp8_yaml, "d.yaml");
  // MLA, kv_lora_rank 512 and a 64-wide RoPE key: bf16 2 x 576 = 1152 bytes a token and layer;
  // fp8: 512 latent bytes, 4 fp32 scales (one per 128 channels) and the RoPE key in bf16, 128 bytes:
  // 656 (DeepSeek-V3's in FlashMLA).
  CHECK(routing::kv_cache_token_bytes(bf16.forward.model) == 1152);
  CHECK(routing::kv_cache_token_bytes(fp8.forward.model) == 656);
  // A decode step reads 496 bytes less per cached token: 4 sequences x 1000 tokens; FLOPs equal.
  const auto& m16 = bf16.forward.model;
  const auto& m8 = fp8.forward.model;
  CHECK(models::decode_attention_cost(m16, 4, 1000).bytes - models::decode_attention_cost(m8, 4, 1000).bytes == 4 * 1000 * 496);
  CHECK(models::decode_attention_cost(m16, 4, 1000).flops == models::decode_attention_cost(m8, 4, 1000).flops);
  // Memory: 256 sequences x 65536 tokens x 496 bytes x 4 layers = 33,285,996,544 B less.
  CHECK(memory_gb_max(base) - memory_gb_max(fp8_yaml) == Approx(33.285997).margin(0.0011));
  // Grouped-query attention: 2 kv heads of 64, keys and values: 256 elements, 512 bytes in bf16, 256 in fp8.
  routing::MoeModelSpec gqa;
  gqa.attention_heads = 8;
  gqa.kv_heads = 2;
  gqa.head_dim = 64;
  CHECK(routing::kv_cache_token_bytes(gqa) == 512);
  gqa.kv_cache_bytes = 1;
  CHECK(routing::kv_cache_token_bytes(gqa) == 256);
}

TEST_CASE("Tensor parallelism: what the loader refuses", "[scenarios][tensor_parallel]") {
  const std::string base = R"(
cluster: {nodes: 1, gpus_per_node: 8, gpu: H100}
model: {moe_layers: 2, hidden: 1536, expert_ffn: 1024, experts: 8, top_k: 2, attention_heads: HEADS, kv_heads: KV, head_dim: 64}
parallelism: {ep: 8, tp: TP}
workload:
  kind: KIND
  tokens_per_gpu: 64
)";
  const auto error_of = [&](const std::string& tp, const std::string& kind, const std::string& extra = "",
                            const std::string& heads = "24", const std::string& kv = "2") {
    const std::string yaml = replaced(replaced(replaced(replaced(base, "TP", tp), "KIND", kind), "HEADS", heads), "KV", kv) + extra;
    try {
      scenarios::load_scenario_text(yaml, "t.yaml");
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  CHECK(error_of("2", "forward").empty());
  CHECK(error_of("4", "prefill").empty());  // kv heads replicated: 4 GPUs, 2 kv heads
  CHECK(error_of("2", "decode", "  context_length: 1024\n").empty());
  CHECK(error_of("2", "training").empty());
  CHECK(error_of("2", "training", "  recompute: full\n").empty());
  CHECK(error_of("2", "training", "  micro_batches: 2\n  overlap: forward_backward\n").empty());
  CHECK_THAT(error_of("3", "forward"),
             Catch::Contains("parallelism.tp: 3 does not divide the 8 GPUs of a node: a tensor-parallel group stays inside a node"));
  CHECK_THAT(error_of("8", "forward", "", "12"), Catch::Contains("parallelism.tp: 8 does not divide model.attention_heads (12)"));
  CHECK_THAT(error_of("4", "forward", "", "24", "6"), Catch::Contains("parallelism.tp: 4 and model.kv_heads (6) must divide one another"));
  CHECK(error_of("2", "forward", "  overlap: two_batch\n").empty());
  CHECK_THAT(error_of("1", "forward", "network: {tp_collectives: nvls}\n"),
             Catch::Contains("network.tp_collectives: only used with parallelism.tp > 1"));
  // Shared experts split over the group need their width to divide; replicated they need not.
  const auto shared = [&](const std::string& tp, const std::string& ffn, const std::string& how) {
    std::string yaml = replaced(replaced(replaced(replaced(base, "TP", tp + how), "KIND", "forward"), "HEADS", "24"), "KV", "2");
    yaml = replaced(yaml, "expert_ffn: 1024,", "expert_ffn: " + ffn + ", shared_experts: 1,");
    try {
      scenarios::load_scenario_text(yaml, "t.yaml");
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  CHECK(shared("2", "1024", "").empty());
  CHECK_THAT(shared("8", "1020", ""), Catch::Contains("parallelism.tp: 8 does not divide model.expert_ffn (1020), the shared experts' "
                                                     "width it splits (or hold them whole on every GPU: "
                                                     "parallelism.shared_experts: replicated)"));
  CHECK(shared("8", "1020", ", shared_experts: replicated").empty());
  CHECK_THAT(shared("1", "1024", ", shared_experts: split"), Catch::Contains("parallelism.shared_experts: only used with parallelism.tp > 1"));
  CHECK_THAT(error_of("2, shared_experts: replicated", "forward"),
             Catch::Contains("parallelism.shared_experts: only used with model.shared_experts"));
}

TEST_CASE("A tensor-parallel training step mirrors each collective in the backward pass, as derived by hand",
          "[models][tensor_parallel][training]") {
  // The tiny training step with tp: 2. Forward as in the inference case above: 328,339,776 ps.
  // Backward as without tensor parallelism up to the router's (+ 44,960,000: 635,222,208), then
  // an all-gather of the attention output's gradients (22,480,000) until 657,702,208, the
  // attention's backward (2 x 104,386,560) until 866,475,328 and a reduce-scatter of its input's
  // gradients until 888,955,328. The optimizer over half the attention weights: 2,097,152 +
  // 2,048 + 3,145,728 = 5,244,928 parameters x 28 B = 146,857,984 ps. Step: 1,035,813,312 ps.
  std::string text = tiny_tp();
  text = replaced(text, "workload: {tokens_per_gpu", "workload: {kind: training, tokens_per_gpu");
  const auto r = scenarios::run_experiment(scenarios::load_scenario_text(text, "train.yaml"));
  CHECK(r.stats.step_time() == Time::ps(1'035'813'312));
  for (const auto& g : r.stats.gpus()) {
    CHECK(g.stage_total[idx(Stage::tp)] == Time::ps(4 * 22'480'000));
    CHECK(g.stage_total[idx(Stage::optimizer)] == Time::ps(146'857'984));
  }
  CHECK(r.stats.backward_layers()[0].end == Time::ps(888'955'328));
  CHECK(r.stats.backward_layers()[0].stage_max[idx(Stage::tp)] == Time::ps(22'480'000));
  CHECK(r.stats.tp_bytes() == 8 * 2'048'000);
  check_stages_tile(r);

  SECTION("with the attention recomputed: its input all-gathered again first") {
    // After the router's backward (635,222,208): the all-gather of the attention's input again
    // (22,480,000), its forward again (104,386,560) until 762,088,768, then the backward as above
    // (all-gather, 2 x 104,386,560, reduce-scatter) until 1,015,821,888, and the optimizer:
    // 1,162,679,872 ps. The recomputation is the all-gather and the forward: 126,866,560 ps.
    const auto again = scenarios::run_experiment(
        scenarios::load_scenario_text(replaced(text, "kind: training,", "kind: training, recompute: attention,"), "train.yaml"));
    CHECK(again.stats.step_time() == Time::ps(1'162'679'872));
    for (const auto& g : again.stats.gpus()) {
      CHECK(g.recompute_total == Time::ps(126'866'560));
      CHECK(g.stage_total[idx(Stage::tp)] == Time::ps(5 * 22'480'000));
    }
    check_stages_tile(again);
  }
}

TEST_CASE("Random tensor-parallel training under 1F1B, GPipe and ZB-H1, with two-batch overlap too, does the model work of the "
          "same step without it",
          "[models][fuzz][tensor_parallel]") {
  // The dense layers, the LM head, shared experts, gradient sync, recomputation, stragglers and
  // jitter, on one to four stages: with tp: 2 (attention heads, kv heads, dense FFN and vocabulary all divide)
  // every GPU's stages still tile its time, the GPUs wait for the tensor-parallel collectives,
  // and the model FLOPs are those of the same step without tensor parallelism.
  sim::Rng pick(11, "test/fuzz-tp");
  for (int trial = 0; trial < 8; ++trial) {
    const int pp = 1 << pick.uniform_int(3);
    const int layers = 2 * pp + static_cast<int>(pick.uniform_int(3));
    const int batches = 1 + static_cast<int>(pick.uniform_int(4));
    const auto [sync, shared, dense, vocab, nodes, tokens] = draw_fuzz_step(pick, pp);
    // ZB-H1 without recomputation; the others with any (recomputed work is not model work).
    const char* schedules[] = {"1f1b", "gpipe", "zb_h1"};
    const char* recomputes[] = {"", "recompute: attention, ", "recompute: full, ", "recompute: full, recompute_layers: 1, "};
    const std::string drawn = schedules[pick.uniform_int(3)];
    const std::string recompute = drawn == "zb_h1" && pp > 1 ? "" : recomputes[pick.uniform_int(4)];
    const std::string schedule = (pp > 1 ? fmt::format("pipeline_schedule: {}, ", drawn) : "") + recompute;
    const auto run = [&](int tp) {
      const std::string yaml = fuzz_yaml(nodes, layers, shared, dense, vocab, fmt::format(", pp: {}, tp: {}", pp, tp), tokens,
                                         batches, schedule + sync, trial, pick.uniform_int(2) ? "direct" : "hierarchical");
      INFO(yaml);
      return scenarios::run_experiment(scenarios::load_scenario_text(yaml, "fuzz.yaml"));
    };
    const auto without = run(1), with = run(2);
    check_stages_tile(with);
    CHECK(with.model_flops == Approx(without.model_flops).epsilon(1e-12));
    CHECK(with.stats.tp_bytes() > 0);
    for (const auto& g : with.stats.gpus()) CHECK(g.stage_total[idx(Stage::tp)] > Time::zero());
    if (drawn != "zb_h1") {
      // Two-batch overlap: each half's attention between its own collectives, of half the rows.
      const std::string yaml = fuzz_yaml(nodes, layers, shared, dense, vocab, fmt::format(", pp: {}, tp: 2", pp), tokens, batches,
                                         schedule + sync + "overlap: two_batch, ", trial);
      INFO(yaml);
      const auto halves = scenarios::run_experiment(scenarios::load_scenario_text(yaml, "fuzz.yaml"));
      check_stages_tile(halves);
      CHECK(halves.model_flops == Approx(without.model_flops).epsilon(1e-12));
      CHECK(halves.stats.tp_bytes() == with.stats.tp_bytes());
    }
  }
}

TEST_CASE("summary.csv gives the busiest pipeline stage's compute over the stages' mean", "[models][pipeline]") {
  // Three of four MoE layers on stage 0: its busiest GPU computes much more than stage 1's.
  const auto sc = scenarios::load_scenario_text(
      fuzz_yaml(2, 4, 0, 0, "", ", pp: 2, pipeline_layers: [3, 1]", 64, 2, "", 1), "uneven.yaml");
  const auto r = scenarios::run_experiment(sc);
  std::array<Time, 2> busy{};
  for (std::size_t g = 0; g < r.stats.gpus().size(); ++g) {
    Time b;
    for (const Stage s : models::kStages)
      if (!models::is_network_wait(s)) b += r.stats.gpus()[g].stage_total[idx(s)];
    busy[g / 2] = sim::max(busy[g / 2], b);
  }
  const double over = busy[0].to_us() / ((busy[0].to_us() + busy[1].to_us()) / 2);
  CHECK(over > 1.2);
  CHECK(std::stod(csv_value(summary_csv(sc, r), "stage_compute_imbalance")) == Approx(over).margin(1e-4));
  // Without pipeline stages the column is empty.
  const auto flat = scenarios::load_scenario_text(fuzz_yaml(2, 4, 0, 0, "", "", 64, 2, "", 1), "flat.yaml");
  CHECK(csv_value(summary_csv(flat, scenarios::run_experiment(flat)), "stage_compute_imbalance").empty());
}

TEST_CASE("DualPipe holds PP + 1 micro-batches' activations on every stage, 1F1B PP on its first, as DeepSeek-V3's table 2",
          "[models][pipeline][validation]") {
  // DeepSeek-V3's report, table 2: per device, in micro-batches of one stage's layers, 1F1B and
  // ZB1P hold PP, DualPipe PP + 1 (its chunks are a stage's layers: 4 here).
  for (const int pp : {4, 8, 16}) {
    INFO("pp " << pp);
    routing::MoeModelSpec m;
    m.moe_layers = pp * 4;
    models::ForwardSpec f;
    f.model = m;
    f.training = true;
    f.pp = pp;
    f.micro_batches = 4 * pp;
    f.gradient_sync = true;
    f.pipeline_schedule = models::PipelineSchedule::dualpipe;
    for (int s = 0; s < pp; ++s) CHECK(models::pipeline_held_layers(f, s) == 4 * (pp + 1));
    f.pipeline_schedule = models::PipelineSchedule::one_f_one_b;
    for (int s = 0; s < pp; ++s) CHECK(models::pipeline_held_layers(f, s) == 4 * (pp - s));
    f.pipeline_schedule = models::PipelineSchedule::zb_h1;
    for (int s = 0; s < pp; ++s) CHECK(models::pipeline_held_layers(f, s) == 4 * pp);
  }
}

TEST_CASE("Linear attention: Gated DeltaNet's weights, state and FLOPs as derived by hand and as Megatron-LM counts them",
          "[models][linear]") {
  // Qwen3-Next-80B-A3B's layers (its config.json: hidden 2048; linear layers 16 key heads and 32
  // value heads of 128, a 4-wide convolution; every 4th layer 16 query heads of 256 over 2 kv heads
  // with an output gate).
  const std::string scenario = R"(
cluster: {nodes: 1, gpus_per_node: 8, gpu: H100}
model: {moe_layers: 8, hidden: 2048, expert_ffn: 512, experts: 64, top_k: 10, shared_experts: 1, attention_heads: 16, kv_heads: 2,
        head_dim: 256, attention_output_gate: true, full_attention_every: 4, vocab: 151936,
        linear_attention: {key_heads: 16, value_heads: 32, key_dim: 128, value_dim: 128}}
parallelism: {ep: 8}
routing: {distribution: uniform}
network: {model: analytical}
output: {timeline: off}
workload: {)";
  const auto sc = scenarios::load_scenario_text(scenario + "kind: training, tokens_per_gpu: 4096, sequence_length: 4096}\n", "l.yaml");
  const auto& m = sc.forward.model;
  REQUIRE(routing::has_linear_attention(m));
  // Layers 3 and 7 attend fully, the other six are linear.
  CHECK(routing::linear_layers(m, 0, 8) == 6);
  CHECK_FALSE(routing::linear_layer(m, 3));
  CHECK(routing::linear_layer(m, 4));
  // Weights: in_proj 2048 x (2 x 2048 + 2 x 4096 + 2 x 32), conv 4 x (2 x 2048 + 4096), out_proj
  // 4096 x 2048: 33,718,272 (the checkpoint's norms, A_log and dt_bias aside).
  CHECK(routing::linear_attention_weights(m) == 2048LL * 12352 + 4 * 8192 + 4096LL * 2048);
  CHECK(routing::linear_attention_weights(m) == 33'718'272);
  CHECK(routing::layer_attention_weights(m, 3) == 27'262'976);
  // The state a sequence keeps: 32 heads of 128 x 128 in fp32, and the convolution's last three
  // inputs of 8192 channels in bf16.
  CHECK(routing::linear_state_bytes(m) == 32LL * 128 * 128 * 4 + 3LL * 8192 * 2);
  CHECK(routing::cached_keys(m, 2, 100000) == 0);
  CHECK(routing::cached_keys(m, 3, 100000) == 100000);
  // The layer's FLOPs do not depend on the sequence's length (a softmax layer's do) or, in decode,
  // on the context; decode reads and writes each sequence's state once.
  const std::int64_t t = 4096;
  const auto lin = [&](std::int64_t s) { return models::attention_cost(m, t, s, 0, routing::kLinearLayer); };
  CHECK(lin(1024).flops == lin(4096).flops);
  CHECK(lin(4096).flops == 2 * t * 33'718'272 + 8 * t * 32 * 128 * 128);
  CHECK(models::attention_cost(m, t, 4096).flops > models::attention_cost(m, t, 1024).flops);
  const auto dec = [&](std::int64_t c) { return models::decode_attention_cost(m, 64, c, 1, routing::kLinearLayer); };
  CHECK(dec(1000).flops == dec(100000).flops);
  CHECK(dec(1000).bytes == dec(100000).bytes);
  CHECK(dec(1000).bytes - models::decode_attention_cost(m, 32, 1000, 1, routing::kLinearLayer).bytes >=
        32 * 2 * routing::linear_state_bytes(m));
  // A training step's model FLOPs per token, against the same model with every layer full: each
  // of the six linear layers, forward and backward (3x), 2 W + 8 hv dk dv, Megatron-LM's count of a
  // Gated DeltaNet layer (num_floating_point_operations with gated_delta_net: in_proj, conv1d, 4 hv
  // dv^2 and out_proj, 2 FLOPs a multiply-add), where the full layer took 2 W + (S + 1)(q + o)
  // (the optimizer's work is not model FLOPs).
  const auto r = scenarios::run_experiment(sc);
  const auto all_full = scenarios::load_scenario_text(scenario + "kind: training, tokens_per_gpu: 4096, sequence_length: 4096}\n", "f.yaml",
                                                      {"model.linear_attention=~", "model.full_attention_every=~"});
  const auto r_full = scenarios::run_experiment(all_full);
  const double tokens = 8 * 4096.0;
  const double gdn = 2 * 33'718'272.0 + 8 * 32 * 128.0 * 128, full = 2 * 27'262'976.0 + 4097.0 * 2 * 4096;
  CHECK((r.model_flops - r_full.model_flops) / tokens == Approx(3 * 6 * (gdn - full)).epsilon(1e-12));
}

TEST_CASE("Linear attention: decode memory holds a state per sequence, not keys; the loader's checks", "[models][linear][memory]") {
  const std::string base = R"(
cluster: {nodes: 1, gpus_per_node: 8, gpu: H100}
model: {moe_layers: 8, hidden: 2048, expert_ffn: 512, experts: 64, top_k: 10, attention_heads: 16, kv_heads: 2, head_dim: 256,
        full_attention_every: 4, linear_attention: {key_heads: 16, value_heads: 32, key_dim: 128, value_dim: 128, state_dtype: bf16}}
parallelism: {ep: 8}
routing: {distribution: uniform}
network: {model: analytical}
output: {timeline: off}
)";
  const auto floor = [&](std::int64_t context) {
    const auto sc = scenarios::load_scenario_text(base + fmt::format("workload: {{kind: decode, tokens_per_gpu: 64, context_length: {}}}\n", context), "d.yaml");
    return tools::memory_floor(sc).bytes;
  };
  const auto sc = scenarios::load_scenario_text(base + "workload: {kind: decode, tokens_per_gpu: 64, context_length: 1000}\n", "d.yaml");
  const auto& m = sc.forward.model;
  CHECK(m.linear.state_bytes == 2);
  // From 1,000 to 101,000 tokens of context only the two full layers' caches grow: 64 sequences x
  // 100,000 tokens x 2 layers x 2 kv heads x 256 x 2 (keys, values) x 2 bytes.
  CHECK(floor(101000) - floor(1000) == Approx(64.0 * 100000 * 2 * 2048).epsilon(1e-12));
  // The states: 64 sequences x 6 linear layers x 32 heads of 128 x 128, at 4 bytes against 2.
  const auto fp32_sc = scenarios::load_scenario_text(base + "workload: {kind: decode, tokens_per_gpu: 64, context_length: 1000}\n",
                                                     "f.yaml", {"model.linear_attention.state_dtype=fp32"});
  CHECK(tools::memory_floor(fp32_sc).bytes - tools::memory_floor(sc).bytes == Approx(64.0 * 6 * 32 * 128 * 128 * 2).epsilon(1e-12));
  const auto error = [&](const std::string& extra, const std::vector<std::string>& sets = {}) {
    try {
      scenarios::load_scenario_text(base + "workload: {kind: training, tokens_per_gpu: 4096, sequence_length: 4096}\n" + extra, "e.yaml", sets);
    } catch (const scenarios::ScenarioError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  CHECK(error("", {"parallelism.cp=2"}).find("not modelled with model.linear_attention") != std::string::npos);
  CHECK(error("", {"model.sliding_window=128"}).find("not with model.sliding_window") != std::string::npos);
  CHECK(error("", {"model.linear_attention.value_heads=24"}).find("24 value heads do not share 16 key heads evenly") != std::string::npos);
  CHECK(error("", {"parallelism.tp=8", "parallelism.ep=1", "model.linear_attention.key_heads=4", "model.linear_attention.value_heads=8"})
            .find("does not divide model.linear_attention.key_heads (4)") != std::string::npos);
  CHECK(error("", {"model.linear_attention.key_dim=~"}).find("key_dim") != std::string::npos);
  CHECK(error("", {"model.attention_output_gate=true", "model.attention_params=1000000"})
            .find("not with model.attention_params, which gives the block's weights whole") != std::string::npos);
  CHECK(error("", {"model.attention_output_gate=maybe"}).find("attention_output_gate") != std::string::npos);
  CHECK(error("", {"model.linear_attention=~", "model.sliding_window=~"}).find("only used with model.sliding_window or model.linear_attention") !=
        std::string::npos);
}
