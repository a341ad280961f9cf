#include <catch2/catch.hpp>

#include <algorithm>

#include "scenarios/scenario.hpp"
#include "tools/search.hpp"

using namespace moesim;

namespace {

// 2 x 8 H100, 12 MoE layers, 16 experts; training with a gradient sync, 2 micro-batches of 1024
// tokens on every GPU, sequences of 2048: 16 sequences a step.
const std::string kTraining =
    "cluster: {nodes: 2, gpus_per_node: 8, gpu: H100-SXM, scale_out: {nic_bandwidth: 400Gbps}}\n"
    "model: {moe_layers: 12, hidden: 1024, expert_ffn: 2048, experts: 16, top_k: 2, attention_heads: 16}\n"
    "parallelism: {ep: 8}\n"
    "workload: {kind: training, tokens_per_gpu: 1024, sequence_length: 2048, micro_batches: 2, gradient_sync: ring}\n";

scenarios::Scenario load(const std::string& text, const std::vector<std::string>& sets = {}) {
  return scenarios::load_scenario_text(text, "s.yaml", sets);
}

}  // namespace

TEST_CASE("A search's space: the sizes the cluster and model allow, at the scenario's batch", "[search]") {
  const auto s = tools::search_space(load(kTraining), {}, 0);
  REQUIRE(s.axes == std::vector<std::string>{"workload.global_batch", "workload.micro_batches", "parallelism.tp", "parallelism.pp",
                                             "parallelism.pipeline_layers", "parallelism.virtual_stages", "parallelism.ep",
                                             "workload.optimizer_sharding", "workload.parameter_sharding"});
  CHECK(s.global_batch == 16);
  CHECK(s.values[0] == std::vector<std::string>{"16"});
  CHECK(s.values[1] == std::vector<std::string>{"~"});
  CHECK(s.values[2] == std::vector<std::string>{"1", "2", "4", "8"});        // powers of two dividing a node's 8 GPUs
  CHECK(s.values[3] == std::vector<std::string>{"1", "2", "4", "8"});        // divisors of 16 GPUs up to the 12 layers
  CHECK(s.values[6] == std::vector<std::string>{"1", "2", "4", "8", "16"});  // divisors of the 16 experts and the 16 GPUs
  // ZeRO's stages, zipped: nothing sharded, the optimizer (ZeRO-1), the weights too (ZeRO-3, FSDP).
  CHECK(s.values[7] == std::vector<std::string>{"false", "true", "true"});
  CHECK(s.values[8] == std::vector<std::string>{"~", "~", "true"});
  CHECK(s.zipped == std::vector<std::vector<std::string>>{{"workload.optimizer_sharding", "workload.parameter_sharding"}});
  CHECK(s.note == "480 points: parallelism.tp in {1, 2, 4, 8}, parallelism.pp in {1, 2, 4, 8}, parallelism.virtual_stages in {1, 2}, "
                  "parallelism.ep in {1, 2, 4, 8, 16}, workload.optimizer_sharding in {false, true, true}, workload.parameter_sharding in "
                  "{~, ~, true} (with workload.optimizer_sharding); every point trains 16 sequences of 2048 tokens a step");
  // Buckets in the scenario: FSDP's points leave them out (it reduce-scatters each layer on
  // its own), the others keep them; the third axis of the zip adds no points.
  const auto buckets = tools::search_space(load(kTraining, {"workload.gradient_sync_buckets=3"}), {"ep", "zero"}, 0);
  REQUIRE(buckets.axes.back() == "workload.gradient_sync_buckets");
  CHECK(buckets.values.back() == std::vector<std::string>{"3", "3", "~"});
  CHECK(buckets.zipped == std::vector<std::vector<std::string>>{
                              {"workload.optimizer_sharding", "workload.parameter_sharding", "workload.gradient_sync_buckets"}});
  CHECK_THAT(buckets.note, Catch::StartsWith("15 points: "));
  CHECK_THAT(buckets.note, Catch::Contains("workload.gradient_sync_buckets in {3, 3, ~} (with workload.optimizer_sharding)"));
  // Hybrid sharding's groups, asked for: the whole stage, or one node (a group of two nodes would
  // be the whole 16-GPU cluster). Only with something sharded, in training with a sync.
  const auto shard = tools::search_space(load(kTraining), {"zero", "shard"}, 0);
  REQUIRE(shard.axes.back() == "workload.shard_group");
  CHECK(shard.values.back() == std::vector<std::string>{"~", "8"});
  CHECK(tools::search_space(load(kTraining, {"workload.optimizer_sharding=true"}), {"ep", "shard"}, 0).values.back() ==
        std::vector<std::string>{"~", "8"});
  // A given batch, a scenario's own global batch, and a choice of dimensions.
  CHECK(tools::search_space(load(kTraining), {"ep"}, 64).values[0] == std::vector<std::string>{"64"});
  const auto own = tools::search_space(load(kTraining, {"workload.micro_batches=~", "workload.global_batch=32"}), {"tp", "ep"}, 0);
  CHECK(own.global_batch == 32);
  CHECK(own.axes == std::vector<std::string>{"workload.global_batch", "workload.micro_batches", "parallelism.tp", "parallelism.ep"});
  // Serving: no stages, no optimizer, no batch to hold.
  const auto decode = tools::search_space(
      load(kTraining, {"workload.kind=decode", "workload.context_length=1024", "workload.sequence_length=~", "workload.micro_batches=~",
                       "workload.gradient_sync=~"}),
      {}, 0);
  CHECK(decode.axes == std::vector<std::string>{"parallelism.tp", "parallelism.ep"});
  CHECK(decode.global_batch == 0);
  // Decode's batch, asked for: powers of two up to twice the scenario's 1024 sequences per GPU.
  const auto batch = tools::search_space(
      load(kTraining, {"workload.kind=decode", "workload.context_length=1024", "workload.sequence_length=~", "workload.micro_batches=~",
                       "workload.gradient_sync=~"}),
      {"batch", "tp"}, 0);
  CHECK(batch.axes == std::vector<std::string>{"parallelism.tp", "workload.tokens_per_gpu"});
  CHECK(batch.values[1].front() == "1");
  CHECK(batch.values[1].back() == "2048");
  CHECK(batch.values[1].size() == 12);
  // What does not apply, or cannot be held, is refused.
  const auto refused = [&](const std::string& text, const std::vector<std::string>& vary, std::int64_t batch) {
    try {
      (void)tools::search_space(load(text), vary, batch);
    } catch (const tools::SearchError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK_THAT(refused(kTraining, {"tp", "dp"}, 0), Catch::Contains("--vary: unknown dimension 'dp' (known: tp, pp, ep, vp, zero, cp, batch, sched, recompute, etp, shard, sync, a2a, nodes, gpu, nic, fabric)"));
  const std::string no_sync = kTraining.substr(0, kTraining.find(", gradient_sync: ring")) + "}\n";
  CHECK_THAT(refused(no_sync, {"zero"}, 0), Catch::Contains("--vary zero: a sharded optimizer needs workload.gradient_sync"));
  CHECK_THAT(refused(no_sync, {"shard"}, 0), Catch::Contains("--vary shard: shard groups need workload.gradient_sync"));
  CHECK_THAT(refused(kTraining, {"ep", "shard"}, 0), Catch::Contains("--vary shard: nothing is sharded: vary zero too"));
  CHECK(tools::search_space(load(no_sync), {}, 0).axes.back() == "parallelism.ep");  // by default just left out
  const std::string half = "cluster: {nodes: 1, gpus_per_node: 2, gpu: H100-SXM}\n"
                           "model: {moe_layers: 2, hidden: 1024, expert_ffn: 2048, experts: 2, top_k: 1, attention_heads: 16}\n"
                           "parallelism: {ep: 2}\nworkload: {kind: training, tokens_per_gpu: 1024, sequence_length: 4096}\n";
  CHECK_THAT(refused(half, {}, 0), Catch::Contains("the scenario's step (2048 tokens) is not a whole number of its 4096-token sequences: "
                                                   "give --global-batch"));
  CHECK(tools::search_space(load(half), {}, 2).global_batch == 2);
  // Context parallelism, asked for: each GPU holds 1/cp of its tokens (zipped), cp up to 16.
  const auto cp = tools::search_space(load(kTraining), {"cp"}, 0);
  CHECK(cp.axes == std::vector<std::string>{"workload.global_batch", "workload.micro_batches", "parallelism.cp", "workload.tokens_per_gpu"});
  CHECK(cp.values[2] == std::vector<std::string>{"1", "2", "4", "8", "16"});
  CHECK(cp.values[3] == std::vector<std::string>{"1024", "512", "256", "128", "64"});
  CHECK(cp.zipped == std::vector<std::vector<std::string>>{{"parallelism.cp", "workload.tokens_per_gpu"}});
  CHECK_THAT(cp.note, Catch::StartsWith("5 points: parallelism.cp in {1, 2, 4, 8, 16}, workload.tokens_per_gpu in {1024, 512, 256, 128, 64} "
                                        "(with parallelism.cp); "));
  CHECK_THAT(tools::search_grid_yaml(cp, "b.yaml"), Catch::EndsWith("zip: [parallelism.cp, workload.tokens_per_gpu]\nskip: [invalid, unfit]\n"));
  const auto all = tools::search_space(load(kTraining), {}, 0).axes;
  CHECK(std::find(all.begin(), all.end(), "parallelism.cp") == all.end());  // not by default
  CHECK_THAT(refused(kTraining, {"cp"}, 0), Catch::Contains("no error"));
  const std::string with_cp = kTraining.substr(0, kTraining.find("parallelism: {ep: 8}")) + "parallelism: {ep: 8, cp: 2}\n" +
                              kTraining.substr(kTraining.find("workload:"));
  CHECK_THAT(refused(with_cp, {"cp"}, 0), Catch::Contains("--vary cp: the scenario has parallelism.cp: 2"));
  CHECK_THAT(refused(kTraining, {"batch"}, 0), Catch::Contains("--vary batch: the batch searched is decode's sequences per GPU"));
  // The pipeline schedule with its virtual stages, zipped, beside cp's pair: two zip groups.
  const auto sched = tools::search_space(load(kTraining), {"pp", "sched", "cp"}, 0);
  CHECK(sched.values[4] == std::vector<std::string>{"~", "1f1b", "zb_h1", "dualpipev", "dualpipe"});
  CHECK(sched.values[5] == std::vector<std::string>{"1", "2", "1", "2", "1"});
  CHECK_THAT(sched.note, Catch::StartsWith("100 points: parallelism.pp in {1, 2, 4, 8}, workload.pipeline_schedule in {~, 1f1b, zb_h1, "
                                           "dualpipev, dualpipe}, parallelism.virtual_stages in {1, 2, 1, 2, 1} (with "
                                           "workload.pipeline_schedule), parallelism.cp in "));
  CHECK_THAT(tools::search_grid_yaml(sched, "b.yaml"),
             Catch::Contains("zip: [[workload.pipeline_schedule, parallelism.virtual_stages], [parallelism.cp, workload.tokens_per_gpu]]\n"));
  CHECK(tools::search_space(load(no_sync), {"sched"}, 0).values[2].back() == "dualpipev");  // DualPipe needs the gradient sync
  CHECK_THAT(refused(kTraining, {"sched", "vp"}, 0), Catch::Contains("--vary: sched and vp together"));
  // Recomputation, asked for: none (the key and its companions removed), of the attention, full.
  const auto re = tools::search_space(load(kTraining), {"recompute"}, 0);
  CHECK(re.axes == std::vector<std::string>{"workload.global_batch", "workload.micro_batches", "workload.recompute",
                                            "workload.recompute_layers", "workload.recompute_modules"});
  CHECK(re.values[2] == std::vector<std::string>{"~", "attention", "full"});
  CHECK_THAT(refused(kTraining, {"recompute"}, 0), Catch::Contains("no error"));
  // Expert tensor parallelism, asked for: the powers of two dividing a node's GPUs and the experts' FFN.
  const auto etp = tools::search_space(load(kTraining), {"ep", "etp"}, 0);
  CHECK(etp.axes == std::vector<std::string>{"workload.global_batch", "workload.micro_batches", "parallelism.ep", "parallelism.etp"});
  CHECK(etp.values[3] == std::vector<std::string>{"1", "2", "4", "8"});
  CHECK(tools::search_space(load(kTraining, {"model.expert_ffn=2050"}), {"etp"}, 0).values[2] == std::vector<std::string>{"1", "2"});
  CHECK(std::find(all.begin(), all.end(), "parallelism.etp") == all.end());  // not by default
  // The built-in H100 profile measures this model's experts whole, not their shards: a note.
  CHECK(etp.caution == "the measured profile times the expert stage at etp 1 and not at etp 2, 4, 8 (the shard's FFN width is not "
                       "in it: the roofline's there), so the points' expert stages come from two sources; --set "
                       "compute.model=roofline compares them like for like");
  CHECK(tools::search_space(load(kTraining, {"compute.model=roofline"}), {"etp"}, 0).caution.empty());
  CHECK(tools::search_space(load(kTraining), {"tp"}, 0).caution.empty());
  // The grid file.
  const std::string yaml = tools::search_grid_yaml(tools::search_space(load(kTraining), {"tp"}, 0), "/a/it's.yaml");
  CHECK_THAT(yaml, Catch::StartsWith("# A layout search written by `moesim search`"));
  CHECK_THAT(yaml, Catch::Contains("base: '/a/it''s.yaml'\naxes:\n  workload.global_batch: [16]\n  workload.micro_batches: [~]\n"
                                   "  parallelism.tp: [1, 2, 4, 8]\nskip: [invalid, unfit]\n"));
}

TEST_CASE("A search over the collectives' algorithms: the gradient sync's and the all-to-all's", "[search]") {
  // The sync: ring, hierarchical and (H100 nodes reduce in their NVSwitch) nvls, each with the
  // keys only it uses: the pipelined algorithms' chunks, the in-switch efficiency.
  const auto sync = tools::search_space(load(kTraining), {"sync"}, 0);
  REQUIRE(sync.axes == std::vector<std::string>{"workload.global_batch", "workload.micro_batches", "workload.gradient_sync",
                                                "workload.gradient_sync_chunks", "network.nvls_efficiency"});
  CHECK(sync.values[2] == std::vector<std::string>{"ring", "hierarchical", "nvls"});
  CHECK(sync.values[3] == std::vector<std::string>{"~", "8", "8"});
  CHECK(sync.values[4] == std::vector<std::string>{"~", "~", "0.84"});
  CHECK(sync.zipped == std::vector<std::vector<std::string>>{
                           {"workload.gradient_sync", "workload.gradient_sync_chunks", "network.nvls_efficiency"}});
  CHECK_THAT(sync.note, Catch::StartsWith("3 points: "));
  // The scenario's own chunks go with the pipelined algorithms.
  CHECK(tools::search_space(load(kTraining, {"workload.gradient_sync=hierarchical", "workload.gradient_sync_chunks=4"}), {"sync"}, 0)
            .values[3] == std::vector<std::string>{"~", "4", "4"});
  // No NVLink SHARP on A100 systems, nor on mesh nodes: ring and hierarchical only.
  for (const char* gpu : {"cluster.gpu=A100", "cluster.gpu=MI300X"}) {
    const auto two = tools::search_space(load(kTraining, {gpu}), {"sync"}, 0);
    REQUIRE(two.axes == std::vector<std::string>{"workload.global_batch", "workload.micro_batches", "workload.gradient_sync",
                                                 "workload.gradient_sync_chunks"});
    CHECK(two.values[2] == std::vector<std::string>{"ring", "hierarchical"});
    CHECK(two.values[3] == std::vector<std::string>{"~", "8"});
  }
  // The all-to-all: direct or DeepEP-style in training, and in decode DeepEP's low-latency
  // kernels with the scenario's per-message cost.
  const auto a2a = tools::search_space(load(kTraining, {"network.all_to_all=hierarchical", "network.forward_chunks=4"}), {"a2a"}, 0);
  REQUIRE(a2a.axes == std::vector<std::string>{"workload.global_batch", "workload.micro_batches", "network.all_to_all",
                                               "network.forward_chunks"});
  CHECK(a2a.values[2] == std::vector<std::string>{"direct", "hierarchical"});
  CHECK(a2a.values[3] == std::vector<std::string>{"~", "4"});
  const auto serving = tools::search_space(
      load(kTraining, {"workload.kind=decode", "workload.context_length=1024", "workload.sequence_length=~", "workload.micro_batches=~",
                       "workload.gradient_sync=~", "network.all_to_all=low_latency", "network.message_overhead=2ns"}),
      {"a2a"}, 0);
  REQUIRE(serving.axes == std::vector<std::string>{"network.all_to_all", "network.forward_chunks", "network.message_overhead"});
  CHECK(serving.values[0] == std::vector<std::string>{"direct", "hierarchical", "low_latency"});
  CHECK(serving.values[1] == std::vector<std::string>{"~", "1", "~"});
  CHECK(serving.values[2] == std::vector<std::string>{"~", "~", "2000ps"});
  // Every point of each is a scenario the loader takes (one zip group: point i takes each
  // axis's value i, or its only value).
  const auto loads = [&](const tools::SearchSpace& space, std::vector<std::string> base) {
    for (std::size_t i = 0; i < space.values[space.axes.size() - 1].size(); ++i) {
      std::vector<std::string> sets = base;
      for (std::size_t a = 0; a < space.axes.size(); ++a)
        sets.push_back(space.axes[a] + "=" + space.values[a][space.values[a].size() == 1 ? 0 : i]);
      INFO(sets.back());
      CHECK_NOTHROW(load(kTraining, sets));
    }
  };
  loads(sync, {});
  loads(a2a, {"network.all_to_all=hierarchical", "network.forward_chunks=4"});
  loads(serving, {"workload.kind=decode", "workload.context_length=1024", "workload.sequence_length=~", "workload.micro_batches=~",
                  "workload.gradient_sync=~", "network.all_to_all=low_latency", "network.message_overhead=2ns"});
  // Not by default; refused where there is nothing to vary.
  const auto all = tools::search_space(load(kTraining), {}, 0).axes;
  CHECK(std::find(all.begin(), all.end(), "workload.gradient_sync") == all.end());
  CHECK(std::find(all.begin(), all.end(), "network.all_to_all") == all.end());
  const std::string no_sync = kTraining.substr(0, kTraining.find(", gradient_sync: ring")) + "}\n";
  try {
    (void)tools::search_space(load(no_sync), {"sync"}, 0);
    FAIL("a search of the sync's algorithm without a sync");
  } catch (const tools::SearchError& e) {
    CHECK_THAT(std::string(e.what()), Catch::Contains("--vary sync: the scenario has no workload.gradient_sync to vary"));
  }
}

TEST_CASE("A search over the cluster's size: the scenario's nodes from an eighth to eight times", "[search]") {
  // 2 nodes: 1, 2, 4, ..., 16 nodes (a half is the smallest whole one), the other dimensions'
  // candidates from the largest cluster (128 GPUs): stages up to the 12 layers that divide it,
  // EP sizes dividing the 16 experts.
  const auto s = tools::search_space(load(kTraining), {"nodes", "pp", "ep"}, 0);
  REQUIRE(s.axes == std::vector<std::string>{"workload.global_batch", "workload.micro_batches", "cluster.nodes", "parallelism.pp",
                                             "parallelism.pipeline_layers", "parallelism.ep"});
  CHECK(s.values[0] == std::vector<std::string>{"16"});  // the batch held: the scenario's 16 sequences
  CHECK(s.values[2] == std::vector<std::string>{"1", "2", "4", "8", "16"});
  CHECK(s.values[3] == std::vector<std::string>{"1", "2", "4", "8"});
  CHECK(s.values[5] == std::vector<std::string>{"1", "2", "4", "8", "16"});
  CHECK(s.zipped.empty());  // one leaf for the whole cluster (nodes_per_leaf left to its default)
  // Leaves of 4 nodes on a cluster of 8: kept, or one leaf holding a smaller cluster.
  const auto leaves = tools::search_space(
      load(kTraining, {"cluster.nodes=8", "cluster.scale_out.nodes_per_leaf=4"}), {"nodes"}, 64);
  REQUIRE(leaves.axes == std::vector<std::string>{"workload.global_batch", "workload.micro_batches", "cluster.nodes",
                                                  "cluster.scale_out.nodes_per_leaf"});
  CHECK(leaves.values[2] == std::vector<std::string>{"1", "2", "4", "8", "16", "32", "64"});
  CHECK(leaves.values[3] == std::vector<std::string>{"1", "2", "4", "4", "4", "4", "4"});
  CHECK(leaves.zipped == std::vector<std::vector<std::string>>{{"cluster.nodes", "cluster.scale_out.nodes_per_leaf"}});
  for (std::size_t i = 0; i < leaves.values[2].size(); ++i)
    CHECK_NOTHROW(load(kTraining, {"cluster.nodes=" + leaves.values[2][i], "cluster.scale_out.nodes_per_leaf=" + leaves.values[3][i]}));
  // A cluster without NICs cannot grow.
  try {
    (void)tools::search_space(load(kTraining, {"cluster.nodes=1", "cluster.scale_out=~"}), {"nodes"}, 0);
    FAIL("a search of the cluster's size without a scale-out network");
  } catch (const tools::SearchError& e) {
    CHECK_THAT(std::string(e.what()), Catch::Contains("--vary nodes: the scenario's cluster has no cluster.scale_out"));
  }
}

TEST_CASE("A search over the GPUs: the presets whose servers hold the scenario's node", "[search]") {
  // 8 GPUs a node: every preset but the GB200 and GB300 (72 to an NVL72 rack); the measured H100 profile
  // times only the H100's MoE stages, which the search says.
  const auto s = tools::search_space(load(kTraining), {"gpu"}, 0);
  REQUIRE(s.axes == std::vector<std::string>{"workload.global_batch", "workload.micro_batches", "cluster.gpu"});
  CHECK(s.values[2] ==
        std::vector<std::string>{"H100-SXM", "H800-SXM", "H200-SXM", "A100-SXM", "B200-SXM", "B300-SXM", "MI300X", "MI325X", "MI355X"});
  CHECK_THAT(s.caution, Catch::Contains("the measured profile times the MoE stages on the H100-SXM only"));
  CHECK(tools::search_space(load(kTraining, {"compute.model=roofline"}), {"gpu"}, 0).caution.empty());
  // One NVL72 rack: its two GPUs, the GB200 and the GB300; 16 GPUs a node: no mesh of 7 links
  // holds them.
  CHECK(tools::search_space(load(kTraining, {"cluster.gpus_per_node=72", "cluster.nodes=1", "cluster.gpu=GB200"}), {"gpu"}, 0)
            .values.back() == std::vector<std::string>{"GB200", "GB300"});
  CHECK_THROWS_WITH(tools::search_space(load(kTraining, {"cluster.gpus_per_node=72", "cluster.nodes=1", "cluster.gpu=GB200",
                                                         "cluster.gpu_hour_price={GB200: 4}"}),
                                        {"gpu"}, 0),
                    Catch::Contains("nothing to search"));
  CHECK(tools::search_space(load(kTraining, {"cluster.gpus_per_node=16"}), {"gpu"}, 0).values.back() ==
        std::vector<std::string>{"H100-SXM", "H800-SXM", "H200-SXM", "A100-SXM", "B200-SXM", "B300-SXM"});
  // A node bandwidth set in the scenario, and one price for all: said.
  CHECK_THAT(tools::search_space(load(kTraining, {"cluster.node.nvlink_bandwidth=370GB/s", "compute.model=roofline"}), {"gpu"}, 0).caution,
             Catch::Contains("the scenario's cluster.node bandwidth applies to every GPU"));
  CHECK_THAT(tools::search_space(load(kTraining, {"cluster.gpu_hour_price=2.5"}), {"gpu"}, 0).caution,
             Catch::Contains("every GPU is priced at the scenario's cluster.gpu_hour_price"));
  // Every point loads.
  for (const auto& gpu : s.values[2]) CHECK_NOTHROW(load(kTraining, {"cluster.gpu=" + gpu}));
  // A price per GPU: the GPUs it prices, each costed at its own, and the others said.
  const auto priced = tools::search_space(load(kTraining, {"cluster.gpu_hour_price={H100: 2.5, H200-SXM: 3.6, MI300X: 2.2}"}), {"gpu"}, 0);
  CHECK(priced.values[2] == std::vector<std::string>{"H100-SXM", "H200-SXM", "MI300X"});
  CHECK_THAT(priced.caution, !Catch::Contains("every GPU is priced"));
  CHECK_THAT(priced.caution, Catch::Contains("left out, without a price in cluster.gpu_hour_price: H800-SXM, A100-SXM, B200-SXM, B300-SXM, MI325X, MI355X"));
  CHECK(load(kTraining, {"cluster.gpu_hour_price={H100: 2.5, H200-SXM: 3.6, MI300X: 2.2}", "cluster.gpu=H200"}).gpu_hour_price == 3.6);
  CHECK(load(kTraining, {"cluster.gpu_hour_price={H100: 2.5, H200-SXM: 3.6, MI300X: 2.2}", "cluster.gpu=MI300X"}).gpu_hour_price == 2.2);
  CHECK_THROWS_WITH(load(kTraining, {"cluster.gpu_hour_price={H100: 2.5}", "cluster.gpu=B200"}),
                    Catch::Contains("cluster.gpu_hour_price: no price for the cluster's GPU 'B200-SXM' (priced: H100)"));
  // A GPU priced under its name and its alias both: still no price for the B200.
  CHECK_THROWS_WITH(load(kTraining, {"cluster.gpu_hour_price={H100: 2.5, H100-SXM: 2.5}", "cluster.gpu=B200"}),
                    Catch::Contains("no price for the cluster's GPU 'B200-SXM' (priced: H100, H100-SXM)"));
  CHECK_THROWS_WITH(load(kTraining, {"cluster.gpu_hour_price={H100: 0}"}),
                    Catch::Contains("--set cluster.gpu_hour_price.H100: must be greater than 0"));
}

TEST_CASE("A search over the scale-out network: the NICs' bandwidth and the topology", "[search]") {
  // 400 Gb/s NICs: half, the same and twice; the four builders of docs/topology.md.
  const auto s = tools::search_space(load(kTraining), {"nic", "fabric"}, 0);
  REQUIRE(s.axes == std::vector<std::string>{"workload.global_batch", "workload.micro_batches", "cluster.scale_out.nic_bandwidth",
                                             "cluster.scale_out.topology"});
  CHECK(s.values[2] == std::vector<std::string>{"200Gbps", "400Gbps", "800Gbps"});
  CHECK(s.values[3] == std::vector<std::string>{"single_switch", "two_tier", "rail", "multi_plane"});
  CHECK_THAT(s.note, Catch::StartsWith("12 points: "));
  for (const auto& nic : s.values[2])
    for (const auto& fabric : s.values[3])
      CHECK_NOTHROW(load(kTraining, {"cluster.scale_out.nic_bandwidth=" + nic, "cluster.scale_out.topology=" + fabric}));
  // More than one leaf: two tiers once more at twice the oversubscription, zipped.
  const auto leaves = tools::search_space(load(kTraining, {"cluster.scale_out.nodes_per_leaf=1"}), {"fabric"}, 0);
  REQUIRE(leaves.axes == std::vector<std::string>{"workload.global_batch", "workload.micro_batches", "cluster.scale_out.topology",
                                                  "cluster.scale_out.oversubscription"});
  CHECK(leaves.values[2] == std::vector<std::string>{"single_switch", "two_tier", "two_tier", "rail", "multi_plane"});
  CHECK(leaves.values[3] == std::vector<std::string>{"1", "1", "2", "1", "1"});
  CHECK(leaves.zipped == std::vector<std::vector<std::string>>{{"cluster.scale_out.topology", "cluster.scale_out.oversubscription"}});
  for (std::size_t i = 0; i < leaves.values[2].size(); ++i)
    CHECK_NOTHROW(load(kTraining, {"cluster.scale_out.nodes_per_leaf=1", "cluster.scale_out.topology=" + leaves.values[2][i],
                                   "cluster.scale_out.oversubscription=" + leaves.values[3][i]}));
  // One node has no scale-out network to vary.
  CHECK_THROWS_WITH(tools::search_space(load(kTraining, {"cluster.nodes=1"}), {"fabric"}, 0),
                    Catch::Contains("--vary fabric: one node: no scale-out network to vary"));
}
