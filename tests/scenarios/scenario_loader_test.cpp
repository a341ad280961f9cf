#include <catch2/catch.hpp>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "scenarios/scenario.hpp"
#include "sim/units.hpp"

using namespace moesim;
using scenarios::load_scenario_file;
using scenarios::load_scenario_text;
using scenarios::ScenarioError;

namespace {

// A valid scenario; tests replace one line at a time. Line numbers below are 1-based.
const std::string kBase =
    "cluster:\n"                      // 1
    "  nodes: 2\n"                    // 2
    "  gpus_per_node: 8\n"            // 3
    "  gpu: H100\n"                   // 4
    "  scale_out:\n"                  // 5
    "    nic_bandwidth: 400Gbps\n"    // 6
    "model:\n"                        // 7
    "  moe_layers: 4\n"               // 8
    "  hidden: 4096\n"                // 9
    "  expert_ffn: 14336\n"           // 10
    "  experts: 8\n"                  // 11
    "  top_k: 2\n"                    // 12
    "  attention_heads: 32\n"         // 13
    "parallelism:\n"                  // 14
    "  ep: 8\n"                       // 15
    "workload:\n"                     // 16
    "  tokens_per_gpu: 1024\n"        // 17
    "routing:\n"                      // 18
    "  capacity_factor: 1.25\n";      // 19

std::string with(const std::string& from, const std::string& to) {
  std::string s = kBase;
  const auto at = s.find(from);
  REQUIRE(at != std::string::npos);
  s.replace(at, from.size(), to);
  return s;
}

std::string replaced_text(std::string s, const std::string& from, const std::string& to) {
  const auto at = s.find(from);
  REQUIRE(at != std::string::npos);
  return s.replace(at, from.size(), to);
}

std::string error_of(const std::string& yaml) {
  try {
    load_scenario_text(yaml, "s.yaml");
  } catch (const ScenarioError& e) {
    return e.what();
  }
  return "no error";
}

// The same with --set overrides.
std::string error_of_with(const std::string& yaml, const std::vector<std::string>& overrides) {
  try {
    load_scenario_text(yaml, "s.yaml", overrides);
  } catch (const ScenarioError& e) {
    return e.what();
  }
  return "no error";
}

}  // namespace

TEST_CASE("model.mla sets DeepSeek's latent attention and refuses the keys it derives", "[scenarios][mla]") {
  const std::string mla =
      "  attention_heads: 32\n"
      "  mla:\n"
      "    q_lora_rank: 1536\n"
      "    kv_lora_rank: 512\n"
      "    qk_nope_head_dim: 128\n"
      "    qk_rope_head_dim: 64\n"
      "    v_head_dim: 128\n";
  const auto sc = load_scenario_text(with("  attention_heads: 32\n", mla), "s.yaml");
  const auto& m = sc.forward.model;
  CHECK(routing::is_mla(m));
  CHECK(m.mla.q_lora_rank == 1536);
  CHECK(m.mla.kv_lora_rank == 512);
  CHECK(m.mla.qk_nope_head_dim == 128);
  CHECK(m.mla.qk_rope_head_dim == 64);
  CHECK(m.mla.v_head_dim == 128);
  CHECK(routing::kv_cache_width(m) == 576);
  CHECK_FALSE(routing::is_mla(load_scenario_text(kBase, "s.yaml").forward.model));
  // q_lora_rank may be left out (0: no query latent); the others are required.
  CHECK(load_scenario_text(with("  attention_heads: 32\n", replaced_text(mla, "    q_lora_rank: 1536\n", "")), "s.yaml")
            .forward.model.mla.q_lora_rank == 0);
  CHECK(error_of(with("  attention_heads: 32\n", replaced_text(mla, "    kv_lora_rank: 512\n", ""))) ==
        "s.yaml:15:5: model.mla: missing required key 'kv_lora_rank'");
  CHECK(error_of(with("  attention_heads: 32\n", mla + "  head_dim: 128\n  kv_cache_dim: 576\n")) ==
        "s.yaml:20:13: model.head_dim: not used with model.mla, which sets the attention's shape; remove 'head_dim'\n"
        "s.yaml:21:17: model.kv_cache_dim: not used with model.mla, which sets the attention's shape; remove 'kv_cache_dim'");
  CHECK_THAT(error_of(with("  attention_heads: 32\n", mla + "  attention_params: 1000\n  kv_heads: 8\n")),
             Catch::Contains("model.kv_heads: not used with model.mla") && Catch::Contains("model.attention_params: not used with model.mla"));
  CHECK_THAT(error_of(with("  attention_heads: 32\n", mla + "    rope_dim: 64\n")),
             Catch::Contains("model.mla.rope_dim: unknown key"));
}

TEST_CASE("model.sliding_window and model.full_attention_every set the layers' attention windows", "[scenarios][sliding_window]") {
  const auto m = load_scenario_text(kBase, "s.yaml", {"model.sliding_window=128", "model.full_attention_every=2"}).forward.model;
  CHECK(m.sliding_window == 128);
  CHECK(m.full_attention_every == 2);
  CHECK(load_scenario_text(kBase, "s.yaml", {"model.sliding_window=4096"}).forward.model.full_attention_every == 0);  // all slide
  CHECK(load_scenario_text(kBase, "s.yaml").forward.model.sliding_window == 0);
  CHECK_THAT(error_of_with(kBase, {"model.full_attention_every=2"}),
             Catch::Contains("model.full_attention_every: only used with model.sliding_window"));
  CHECK_THAT(error_of_with(kBase, {"model.sliding_window=128", "model.full_attention_every=1"}), Catch::Contains("model.full_attention_every"));
  CHECK_THAT(error_of_with(kBase, {"model.sliding_window=0"}), Catch::Contains("model.sliding_window"));
  CHECK_THAT(error_of_with(kBase, {"model.sliding_window=128", "model.mla={kv_lora_rank: 512, qk_nope_head_dim: 128, qk_rope_head_dim: 64, "
                                                               "v_head_dim: 128}"}),
             Catch::Contains("model.sliding_window: not used with model.mla"));
}

TEST_CASE("model.mla's index keys switch on DeepSeek Sparse Attention, all three or none", "[scenarios][mla][dsa]") {
  const std::string v3 = "scenarios/deepseek-v3-decode-ep144.yaml";
  const auto path = std::string(MOESIM_SOURCE_DIR) + "/" + v3;
  const std::vector<std::string> dsa{"model.mla.index_topk=2048", "model.mla.index_n_heads=64", "model.mla.index_head_dim=128"};
  const auto m = load_scenario_file(path, dsa).forward.model;
  CHECK(routing::is_sparse_mla(m));
  CHECK(m.mla.index_topk == 2048);
  CHECK_FALSE(routing::is_sparse_mla(load_scenario_file(path).forward.model));
  const auto error = [&](const std::vector<std::string>& sets) {
    try {
      (void)load_scenario_file(path, sets);
    } catch (const ScenarioError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  CHECK_THAT(error({"model.mla.index_topk=2048"}), Catch::Contains("sparse attention needs all of index_topk, index_n_heads and index_head_dim"));
  auto no_q = dsa;
  no_q.push_back("model.mla.q_lora_rank=0");
  CHECK_THAT(error(no_q), Catch::Contains("projects its queries from the query latent: set q_lora_rank"));
  auto cp = dsa;
  cp.insert(cp.end(), {"workload.kind=prefill", "workload.context_length=~", "workload.tokens_per_gpu=4096", "workload.sequence_length=8192",
                       "parallelism.cp=2"});
  CHECK_THAT(error(cp), Catch::Contains("parallelism.cp: not modelled with sparse attention"));
  auto up = dsa;
  up.insert(up.end(), {"workload.kind=training", "workload.context_length=~", "workload.tokens_per_gpu=4096", "workload.recompute=selective",
                       "workload.recompute_modules=[mla_up_proj]"});
  CHECK_THAT(error(up), Catch::Contains("mla_up_proj: not modelled with sparse attention (model.mla.index_topk)"));
}

TEST_CASE("compute.gemm_dtype: fp8 needs FP8 tensor cores and the roofline", "[scenarios][fp8]") {
  const auto sc = load_scenario_text(kBase + "compute: {gemm_dtype: fp8}\n", "s.yaml");
  CHECK(sc.roofline.gemm_dtype == models::GemmDtype::fp8);
  CHECK(sc.cluster.gpu.peak_fp8.flop_per_s() == 2 * sc.cluster.gpu.peak_bf16.flop_per_s());
  CHECK(sc.forward.profile == nullptr);  // the H100's measured profile is of BF16 GEMMs
  CHECK(load_scenario_text(kBase, "s.yaml").forward.profile != nullptr);
  CHECK(load_scenario_text(kBase + "compute: {gemm_dtype: bf16}\n", "s.yaml").roofline.gemm_dtype == models::GemmDtype::bf16);
  CHECK(error_of(with("gpu: H100", "gpu: A100") + "compute: {gemm_dtype: fp8}\n") ==
        "s.yaml:20:23: compute.gemm_dtype: the A100-SXM has no FP8 tensor cores (set cluster.gpu.peak_fp8 for a custom GPU)");
  CHECK(error_of(kBase + "compute: {model: profile, gemm_dtype: fp8}\n") ==
        "s.yaml:20:39: compute.gemm_dtype: fp8 is not used with 'model: profile' (the measured profile's GEMMs are BF16): use "
        "'model: auto' or 'roofline'");
  CHECK(error_of(kBase + "compute: {gemm_dtype: fp4}\n") ==
        "s.yaml:20:23: compute.gemm_dtype: the H100-SXM has no FP4 tensor cores (set cluster.gpu.peak_fp4 for a custom GPU)");
  CHECK_THAT(error_of(kBase + "compute: {gemm_dtype: fp6}\n"), Catch::Contains("compute.gemm_dtype: expected one of bf16, fp8, fp4"));
  // Blackwell's FP4 (NVFP4): inference only; the measured profile's GEMMs are BF16.
  const auto b200 = load_scenario_text(with("gpu: H100", "gpu: B200") + "compute: {gemm_dtype: fp4}\n", "s.yaml");
  CHECK(b200.roofline.gemm_dtype == models::GemmDtype::fp4);
  CHECK(b200.cluster.gpu.peak_fp4.flop_per_s() == 9'000'000'000'000'000);
  CHECK_THAT(error_of(replaced_text(with("gpu: H100", "gpu: B200"), "  tokens_per_gpu: 1024\n", "  kind: training\n  tokens_per_gpu: 1024\n") +
                      "compute: {gemm_dtype: fp4}\n"),
             Catch::Contains("compute.gemm_dtype: fp4 is modelled for inference (forward, prefill, decode); FP8 training: fp8"));
  CHECK(error_of(kBase + "compute: {model: profile, gemm_dtype: fp4}\n").find("the H100-SXM has no FP4 tensor cores") != std::string::npos);
  // A custom GPU states its FP8 peak.
  const std::string custom = "gpu: {name: toy, peak_bf16: 100TFLOP/s, memory_bandwidth: 1TB/s, nvlink_bandwidth: 100GB/s}";
  CHECK_THAT(error_of(with("gpu: H100", custom) + "compute: {gemm_dtype: fp8}\n"), Catch::Contains("the toy has no FP8 tensor cores"));
  const auto toy = load_scenario_text(
      with("gpu: H100", "gpu: {name: toy, peak_bf16: 100TFLOP/s, peak_fp8: 200TFLOP/s, memory_bandwidth: 1TB/s, nvlink_bandwidth: "
                        "100GB/s}") + "compute: {gemm_dtype: fp8}\n", "s.yaml");
  CHECK(toy.cluster.gpu.peak_fp8.flop_per_s() == 200'000'000'000'000);
  CHECK(load_scenario_text(with("gpu: H100", "gpu: {preset: H100, peak_fp4: 3PFLOP/s}") + "compute: {gemm_dtype: fp4}\n", "s.yaml")
            .roofline.gemm_dtype == models::GemmDtype::fp4);
}

TEST_CASE("model.weight_dtype sets the linear layers' weight bytes, in inference only", "[scenarios][fp8]") {
  CHECK(load_scenario_text(kBase, "s.yaml").forward.model.weight_bytes32 == 64);  // model.dtype's
  CHECK(load_scenario_text(with("  top_k: 2\n", "  top_k: 2\n  weight_dtype: fp8\n"), "s.yaml").forward.model.weight_bytes32 == 32);
  CHECK(error_of(replaced_text(with("  top_k: 2\n", "  top_k: 2\n  weight_dtype: fp8\n"), "  tokens_per_gpu: 1024\n",
                               "  kind: training\n  tokens_per_gpu: 1024\n")) ==
        "s.yaml:13:17: model.weight_dtype: only used in inference (forward, prefill, decode): training keeps its weights in "
        "model.dtype (FP8 training's GEMMs: compute.gemm_dtype: fp8)");
  // NVFP4: 4-bit values and an 8-bit scale per 16; MXFP4: per 32.
  CHECK(load_scenario_text(with("  top_k: 2\n", "  top_k: 2\n  weight_dtype: fp4\n"), "s.yaml").forward.model.weight_bytes32 == 18);
  CHECK(load_scenario_text(with("  top_k: 2\n", "  top_k: 2\n  weight_dtype: mxfp4\n"), "s.yaml").forward.model.weight_bytes32 == 17);
  // The measured profile's kernels read BF16 weights: other weights take the roofline.
  CHECK(load_scenario_text(with("  top_k: 2\n", "  top_k: 2\n  weight_dtype: fp8\n"), "s.yaml").forward.profile == nullptr);
  CHECK_THAT(error_of(with("  top_k: 2\n", "  top_k: 2\n  weight_dtype: fp8\n") + "compute: {model: profile}\n"),
             Catch::Contains("model.weight_dtype: weights in another dtype than model.dtype take the roofline, not compute.model: "
                             "profile (the measured profile's kernels read BF16 weights): use compute.model: auto or roofline"));
}

TEST_CASE("model.kv_cache_dtype sets the KV cache's bytes, in prefill and decode only", "[scenarios][fp8]") {
  const std::string decode = replaced_text(kBase, "  tokens_per_gpu: 1024\n", "  kind: decode\n  tokens_per_gpu: 1024\n  context_length: 4096\n");
  CHECK(load_scenario_text(decode, "s.yaml").forward.model.kv_cache_bytes == 2);  // model.dtype's
  CHECK(load_scenario_text(replaced_text(decode, "  top_k: 2\n", "  top_k: 2\n  kv_cache_dtype: fp8\n"), "s.yaml").forward.model.kv_cache_bytes == 1);
  CHECK(load_scenario_text(replaced_text(decode, "  top_k: 2\n", "  top_k: 2\n  kv_cache_dtype: fp32\n"), "s.yaml").forward.model.kv_cache_bytes == 4);
  const std::string prefill = replaced_text(kBase, "  tokens_per_gpu: 1024\n", "  kind: prefill\n  tokens_per_gpu: 1024\n  sequence_length: 512\n");
  CHECK(load_scenario_text(replaced_text(prefill, "  top_k: 2\n", "  top_k: 2\n  kv_cache_dtype: fp8\n"), "s.yaml").forward.model.kv_cache_bytes == 1);
  CHECK(error_of(with("  top_k: 2\n", "  top_k: 2\n  kv_cache_dtype: fp8\n")) ==
        "s.yaml:13:19: model.kv_cache_dtype: only used in prefill and decode (workload.kind), whose steps write, read and hold the KV cache");
  CHECK_THAT(error_of(replaced_text(decode, "  top_k: 2\n", "  top_k: 2\n  kv_cache_dtype: int4\n")),
             Catch::Contains("model.kv_cache_dtype: expected one of bf16, fp16, fp8, fp32"));
}

TEST_CASE("MTP modules and draft tokens: where they run and what the loader refuses", "[scenarios][mtp]") {
  const std::string mtp = with("  top_k: 2\n", "  top_k: 2\n  vocab: 32000\n  mtp_modules: 1\n");
  const std::string decode =
      replaced_text(mtp, "  tokens_per_gpu: 1024\n", "  kind: decode\n  tokens_per_gpu: 64\n  context_length: 4096\nDRAFT");
  const auto draft = [&](const std::string& keys) { return replaced_text(decode, "DRAFT", keys); };
  // Forward: the main model only; training: the module as the last MoE layer; decode with a draft
  // token: that layer, and two tokens per sequence.
  CHECK(load_scenario_text(mtp, "s.yaml").forward.model.moe_layers == 4);
  CHECK(load_scenario_text(mtp, "s.yaml").forward.model.mtp_modules == 1);
  const auto training = load_scenario_text(replaced_text(mtp, "  tokens_per_gpu: 1024\n", "  kind: training\n  tokens_per_gpu: 1024\n"), "s.yaml");
  CHECK(training.forward.model.moe_layers == 5);
  CHECK(training.forward.model.mtp_layers == 1);
  CHECK(load_scenario_text(draft(""), "s.yaml").forward.model.moe_layers == 4);
  const auto spec = load_scenario_text(draft("  draft_tokens: 1\n  acceptance_rate: 0.85\n"), "s.yaml");
  CHECK(spec.forward.model.moe_layers == 5);
  CHECK(spec.forward.tokens_per_gpu == 128);
  CHECK(spec.forward.sequences() == 64);
  CHECK(spec.forward.acceptance_rate == 0.85);
  // Refusals.
  CHECK(error_of(with("  top_k: 2\n", "  top_k: 2\n  mtp_modules: 1\n")) ==
        "s.yaml:13:16: model.mtp_modules: the MTP modules predict through the LM head: set model.vocab");
  CHECK(error_of(replaced_text(mtp, "  tokens_per_gpu: 1024\n", "  tokens_per_gpu: 1024\n  draft_tokens: 1\n")) ==
        "s.yaml:20:17: workload.draft_tokens: only used with 'kind: decode' (speculative decoding)");
  CHECK(error_of(draft("  draft_tokens: 2\n  acceptance_rate: 0.8\n")) ==
        "s.yaml:22:17: workload.draft_tokens: 2 draft tokens: only 1 is modelled (one MTP module drafting one token a step, as "
        "DeepSeek-V3 is served); more need the module run again for each");
  CHECK(error_of(replaced_text(replaced_text(draft("  draft_tokens: 1\n  acceptance_rate: 0.8\n"), "  mtp_modules: 1\n", ""),
                               "  vocab: 32000\n", "")) ==
        "s.yaml:20:17: workload.draft_tokens: the draft tokens come from the model's MTP module: set model.mtp_modules");
  CHECK_THAT(error_of(draft("  draft_tokens: 1\n")), Catch::Contains("missing required key 'acceptance_rate'"));
  CHECK(error_of(draft("  acceptance_rate: 0.8\n")) == "s.yaml:22:20: workload.acceptance_rate: only used with workload.draft_tokens");
  // draft_tokens: 0 is no speculation, with or without an acceptance rate (a sweep's baseline).
  const auto none = load_scenario_text(draft("  draft_tokens: 0\n  acceptance_rate: 0.8\n"), "s.yaml");
  CHECK(none.forward.model.moe_layers == 4);
  CHECK(none.forward.tokens_per_gpu == 64);
  CHECK(load_scenario_text(draft("  draft_tokens: 0\n"), "s.yaml").forward.draft_tokens == 0);
  CHECK_THAT(error_of(draft("  draft_tokens: 1\n  acceptance_rate: 1.5\n")), Catch::Contains("workload.acceptance_rate: must be in (0, 1]"));
}

TEST_CASE("A valid scenario loads with its values and documented defaults", "[scenarios]") {
  const auto sc = load_scenario_text(kBase, "s.yaml");
  CHECK(sc.cluster.nodes == 2);
  CHECK(sc.cluster.gpu.name == "H100-SXM");
  CHECK(sc.cluster.node.nvlink_bandwidth.bytes_per_s() == 450'000'000'000);  // from the GPU
  CHECK(sc.cluster.scale_out.nic_bandwidth.bytes_per_s() == 50'000'000'000);
  CHECK(sc.cluster.scale_out.nodes_per_leaf == 2);  // default: one leaf
  CHECK(sc.forward.model.head_dim == 128);          // 4096 / 32
  CHECK(sc.forward.model.kv_heads == 32);
  CHECK(sc.forward.routing.capacity_factor == 1.25);
  CHECK(sc.forward.sequence_length == 1024);
  CHECK(sc.forward.seed == 1);
  CHECK(sc.network_model == "maxmin");
  CHECK(sc.roofline.flops_efficiency == 0.7);
}

TEST_CASE("The shipped scenarios are valid", "[scenarios]") {
  int shipped = 0;
  for (const auto& entry : std::filesystem::directory_iterator(std::string(MOESIM_SOURCE_DIR) + "/scenarios")) {
    if (entry.path().extension() != ".yaml") continue;
    INFO(entry.path().string());
    const auto sc = load_scenario_file(entry.path().string());
    CHECK(!sc.description.empty());
    ++shipped;
  }
  CHECK(shipped >= 3);
  const auto q = load_scenario_file(std::string(MOESIM_SOURCE_DIR) + "/scenarios/quickstart.yaml");
  CHECK(q.forward.model.experts == 8);
  CHECK(q.forward.model.top_k == 2);
  CHECK(q.forward.model.hidden == 4096);
  CHECK(q.forward.model.expert_ffn == 14336);
  CHECK(q.forward.model.moe_layers == 32);
  CHECK(q.cluster.nodes * q.cluster.gpus_per_node == 16);
  const auto d = load_scenario_file(std::string(MOESIM_SOURCE_DIR) + "/scenarios/deepseek-v3-h800.yaml");
  CHECK(d.forward.model.experts == 256);
  CHECK(d.forward.model.top_k == 8);
  CHECK(d.forward.model.hidden == 7168);
  CHECK(d.forward.model.expert_ffn == 2048);
  CHECK(d.forward.model.moe_layers == 58);
  CHECK(d.cluster.nodes == 32);
  CHECK(d.cluster.gpu.name == "H800-SXM");
}

TEST_CASE("Errors name the file position and key path", "[scenarios][errors]") {
  SECTION("missing unit") {
    CHECK(error_of(with("nic_bandwidth: 400Gbps", "nic_bandwidth: 400")) ==
          "s.yaml:6:20: cluster.scale_out.nic_bandwidth: expected a bandwidth like '400Gbps' or "
          "'50GB/s', got '400' (the unit is missing)");
  }
  SECTION("unknown key with the closest known key") {
    CHECK(error_of(with("capacity_factor: 1.25", "capacity_factr: 1.25")) ==
          "s.yaml:19:3: routing.capacity_factr: unknown key; did you mean 'capacity_factor'?");
    CHECK(error_of(kBase + "modle: {}\n") ==
          "s.yaml:20:1: modle: unknown key; did you mean 'model'?");
  }
  SECTION("unknown key far from any known key lists the known ones") {
    CHECK_THAT(error_of(with("  ep: 8\n", "  ep: 8\n  flux: 3\n")),
               Catch::Contains("parallelism.flux: unknown key (known here: ep, tp, etp, shared_experts, pp, cp, cp_comm, cp_gather, virtual_stages, pipeline_layers)"));
  }
  SECTION("wrong types") {
    CHECK(error_of(with("nodes: 2", "nodes: two")) ==
          "s.yaml:2:10: cluster.nodes: expected a whole number like '7168', got 'two'");
    CHECK(error_of(with("nodes: 2", "nodes: [1, 2]")) ==
          "s.yaml:2:10: cluster.nodes: expected a single value, got a list");
    CHECK_THAT(error_of(with("parallelism:\n  ep: 8", "parallelism: 8\nfoo_unused: 1")),
               Catch::Contains("s.yaml:14:14: parallelism: expected a section (a mapping of keys), got '8'"));
    CHECK_THAT(error_of(with("gpu: H100", "gpu: H20")),
               Catch::Contains("s.yaml:4:8: cluster.gpu: unknown GPU 'H20' (presets: H100-SXM,"));
  }
  SECTION("missing keys and sections") {
    CHECK(error_of(with("  hidden: 4096\n", "")) == "s.yaml:8:3: model: missing required key 'hidden'");
    CHECK(error_of(with("workload:\n  tokens_per_gpu: 1024\n", "")) ==
          "s.yaml:1:1: workload: missing required section");
    CHECK_THAT(error_of(with("  scale_out:\n    nic_bandwidth: 400Gbps\n", "")),
               Catch::Contains("cluster.nodes: 2 nodes need a cluster.scale_out section"));
  }
  SECTION("out-of-range values") {
    CHECK(error_of(with("top_k: 2", "top_k: 9")) == "s.yaml:12:10: model.top_k: top_k 9 is larger than experts 8");
    CHECK(error_of(with("ep: 8", "ep: 3")) ==
          "s.yaml:15:7: parallelism.ep: experts (8) are not divisible by the EP size 3 (or fill the slots with redundant "
          "experts: placement: {policy: eplb, redundant_experts: 1} gives 3 per GPU)\n"
          "s.yaml:15:7: parallelism.ep: the cluster's 16 GPUs do not divide into EP groups of 3");
    CHECK(error_of(with("capacity_factor: 1.25", "capacity_factor: 0")) ==
          "s.yaml:19:20: routing.capacity_factor: must be greater than 0 (or 'dropless'), got 0");
    CHECK(error_of(with("capacity_factor: 1.25", "capacity_factor: -1")) ==
          "s.yaml:19:20: routing.capacity_factor: must be greater than 0 (or 'dropless'), got -1");
    CHECK(error_of(with("nic_bandwidth: 400Gbps", "nic_bandwidth: 0Gbps")) ==
          "s.yaml:6:20: cluster.scale_out.nic_bandwidth: must be greater than zero, got '0Gbps'");
    CHECK(error_of(with("tokens_per_gpu: 1024", "tokens_per_gpu: 0")) ==
          "s.yaml:17:19: workload.tokens_per_gpu: must be at least 1, got 0");
    CHECK(error_of(with("attention_heads: 32", "attention_heads: 24")) ==
          "s.yaml:13:20: model.attention_heads: hidden 4096 does not divide into 24 heads; set model.head_dim");
    CHECK(load_scenario_text(with("attention_heads: 32", "attention_heads: 24\n  head_dim: 128"), "s.yaml")
              .forward.model.head_dim == 128);
    CHECK_THAT(error_of(kBase + "compute: {flops_efficiency: 1.5}\n"),
               Catch::Contains("compute.flops_efficiency: must be in (0, 1], got 1.5"));
  }
  SECTION("enumerations suggest the closest value") {
    CHECK(error_of(kBase + "  distribution: zipff\n") ==
          "s.yaml:20:17: routing.distribution: expected one of uniform, zipf, hot_experts, lognormal, hot_ranks, trace, got 'zipff'; did you mean 'zipf'?");
    CHECK_THAT(error_of(kBase + "  distribution: zipf\n"),
               Catch::Contains("routing.distribution: zipf needs routing.zipf_s"));
    CHECK_THAT(error_of(kBase + "  zipf_s: 1.2\n"),
               Catch::Contains("routing.zipf_s: only used with 'distribution: zipf'"));
  }
  SECTION("all problems of a file are reported together") {
    const std::string e = error_of(with("nodes: 2", "nodes: x").append("  top_k_: 1\n"));
    CHECK_THAT(e, Catch::Contains("cluster.nodes"));
    CHECK_THAT(e, Catch::Contains("routing.top_k_: unknown key"));
  }
}

TEST_CASE("Files that are not scenarios are rejected clearly", "[scenarios][errors]") {
  SECTION("empty") {
    CHECK_THAT(error_of(""), Catch::Contains("s.yaml:1:1: the file is empty"));
    CHECK_THAT(error_of("# only a comment\n"), Catch::Contains("the file is empty"));
  }
  SECTION("not YAML") {
    CHECK_THAT(error_of("cluster: [1, 2\n"), Catch::StartsWith("s.yaml:2:1: not valid YAML:"));
    CHECK_THAT(error_of("just some text"),
               Catch::Contains("expected a scenario (a mapping of sections such as 'cluster:' and 'model:'), got a plain text"));
    CHECK_THAT(error_of("- a\n- b\n"), Catch::Contains("got a list"));
  }
  SECTION("missing file") {
    CHECK_THROWS_WITH(load_scenario_file("/nonexistent/dir/x.yaml"),
                      "/nonexistent/dir/x.yaml: cannot open the scenario file: No such file or directory");
  }
  SECTION("binary file") {
    const auto path = std::filesystem::temp_directory_path() / "moesim-binary-test.yaml";
    {
      std::ofstream out(path, std::ios::binary);
      out << std::string("\x7f" "ELF\0\0\x01", 7);
    }
    CHECK_THROWS_WITH(load_scenario_file(path.string()), Catch::Contains("not a YAML text file"));
    std::filesystem::remove(path);
  }
}

TEST_CASE("Network model and leaf oversubscription are read and checked", "[scenarios]") {
  CHECK(load_scenario_text(kBase, "s.yaml").network_model == "maxmin");
  CHECK(load_scenario_text(kBase + "network:\n  model: analytical\n", "s.yaml").network_model == "analytical");
  CHECK_THAT(error_of(kBase + "network:\n  model: packet\n"),
             Catch::Contains("s.yaml:21:10: network.model:") && Catch::Contains("maxmin"));
  const auto sc = load_scenario_text(with("    nic_bandwidth: 400Gbps\n",
                                          "    nic_bandwidth: 400Gbps\n    oversubscription: 2.5\n"),
                                     "s.yaml");
  CHECK(sc.cluster.scale_out.oversubscription == 2.5);
  CHECK(error_of(with("    nic_bandwidth: 400Gbps\n", "    nic_bandwidth: 400Gbps\n    oversubscription: 0.5\n")) ==
        "s.yaml:7:23: cluster.scale_out.oversubscription: must be at least 1, got 0.5");
}

TEST_CASE("Scale-out topologies and spine counts are read and checked", "[scenarios]") {
  auto with_so = [](const std::string& extra) {
    return with("    nic_bandwidth: 400Gbps\n", "    nic_bandwidth: 400Gbps\n" + extra);
  };
  using moesim::topology::ScaleOutTopology;
  CHECK(load_scenario_text(kBase, "s.yaml").cluster.scale_out.topology == ScaleOutTopology::two_tier);
  CHECK(load_scenario_text(with_so("    topology: rail\n"), "s.yaml").cluster.scale_out.topology == ScaleOutTopology::rail);
  CHECK(load_scenario_text(with_so("    topology: multi_plane\n"), "s.yaml").cluster.scale_out.topology ==
        ScaleOutTopology::multi_plane);
  CHECK(load_scenario_text(with_so("    topology: single_switch\n"), "s.yaml").cluster.scale_out.topology ==
        ScaleOutTopology::single_switch);
  CHECK(load_scenario_text(with_so("    spines: 4\n"), "s.yaml").cluster.scale_out.spines == 4);
  CHECK_THAT(error_of(with_so("    topology: torus\n")),
             Catch::Contains("s.yaml:7:15: cluster.scale_out.topology:") && Catch::Contains("multi_plane"));
  CHECK_THAT(error_of(with_so("    spines: 0\n")), Catch::Contains("s.yaml:7:13: cluster.scale_out.spines:"));
  CHECK_THAT(error_of(with_so("    nodes_per_leaf: 3\n")),
             Catch::Contains("cluster.scale_out.nodes_per_leaf: 2 nodes do not divide into leaves of 3"));
  std::string one = kBase;
  one.replace(one.find("nodes: 2"), 8, "nodes: 1");
  one.replace(one.find("nic_bandwidth: 400Gbps"), 22, "nic_bandwidth: 400Gbps\n    nodes_per_leaf: 4");
  CHECK_THAT(error_of(one), Catch::Contains("1 node does not divide into leaves of 4 (one node needs no scale-out network"));
}

TEST_CASE("Placement policies and redundant experts are read and checked", "[scenarios]") {
  using moesim::routing::PlacementPolicy;
  CHECK(load_scenario_text(kBase, "s.yaml").forward.placement.policy == PlacementPolicy::contiguous);
  const auto rr = load_scenario_text(kBase + "placement:\n  policy: round_robin\n", "s.yaml");
  CHECK(rr.forward.placement.policy == PlacementPolicy::round_robin);
  const auto eplb = load_scenario_text(kBase + "placement:\n  policy: eplb\n  redundant_experts: 8\n  expert_groups: 4\n", "s.yaml");
  CHECK(eplb.forward.placement.policy == PlacementPolicy::eplb);
  CHECK(eplb.forward.placement.redundant_experts == 8);
  CHECK(eplb.forward.placement.expert_groups == 4);
  CHECK_THAT(error_of(kBase + "placement:\n  policy: eplb\n  redundant_experts: 3\n"),
             Catch::Contains("placement.redundant_experts: experts + redundant experts (8 + 3) are not divisible by the EP size 8"));
  CHECK_THAT(error_of(kBase + "placement:\n  redundant_experts: 8\n"),
             Catch::Contains("s.yaml:21:22: placement.redundant_experts: only used with 'policy: eplb'"));
  CHECK_THAT(error_of(kBase + "placement:\n  policy: eplb\n  expert_groups: 3\n"),
             Catch::Contains("placement.expert_groups: experts (8) do not divide into 3 groups"));
  CHECK(load_scenario_text(kBase + "placement:\n  policy: greedy\n", "s.yaml").forward.placement.policy == PlacementPolicy::greedy);
  CHECK_THAT(error_of(kBase + "placement:\n  policy: packed\n"), Catch::Contains("placement.policy:"));
}

TEST_CASE("EPLB placement can balance a count-level trace next to the scenario", "[scenarios]") {
  const auto dir = std::filesystem::temp_directory_path() / ("moesim-loader-trace-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  {
    std::ofstream t(dir / "counts.csv");
    t << "layer,expert,count\n";
    for (int l = 0; l < 4; ++l)
      for (int e = 0; e < 8; ++e) t << l << "," << e << "," << (e == l ? 1000 : 10) << "\n";
  }
  const std::string yaml = kBase + "placement:\n  policy: eplb\n  redundant_experts: 8\n  load: trace\n  trace: counts.csv\n";
  {
    std::ofstream(dir / "s.yaml") << yaml;
  }
  const auto sc = load_scenario_file((dir / "s.yaml").string());
  REQUIRE(sc.forward.placement.layer_load.size() == 4);
  CHECK(sc.forward.placement.layer_load[2][2] == 1000);
  {
    std::ofstream t(dir / "counts.csv", std::ios::trunc);
    t << "layer,expert,count\n0,0,1\n";
  }
  try {
    load_scenario_file((dir / "s.yaml").string());
    FAIL("no error");
  } catch (const ScenarioError& e) {
    CHECK_THAT(std::string(e.what()), Catch::Contains("placement.trace:") && Catch::Contains("no counts for MoE layer 1 (the model has 4)"));
  }
  {
    // Training with an MTP module: the trace needs the module's layer, MoE layer 4, too.
    std::ofstream t(dir / "counts.csv", std::ios::trunc);
    t << "layer,expert,count\n";
    for (int l = 0; l < 4; ++l)
      for (int e = 0; e < 8; ++e) t << l << "," << e << ",10\n";
    std::ofstream(dir / "s.yaml") << replaced_text(with("  top_k: 2\n", "  top_k: 2\n  vocab: 1000\n  mtp_modules: 1\n"),
                                                   "  tokens_per_gpu: 1024\n", "  kind: training\n  tokens_per_gpu: 1024\n") +
                                         "placement:\n  policy: eplb\n  redundant_experts: 8\n  load: trace\n  trace: counts.csv\n";
  }
  try {
    load_scenario_file((dir / "s.yaml").string());
    FAIL("no error");
  } catch (const ScenarioError& e) {
    CHECK_THAT(std::string(e.what()), Catch::Contains("no counts for MoE layer 4 (the model has 5)") &&
                                          Catch::Contains("(the MTP module runs as MoE layer 4: the trace needs 5 layers)"));
  }
  CHECK_THAT(error_of(kBase + "placement:\n  policy: eplb\n  load: trace\n"),
             Catch::Contains("placement.load: 'load: trace' needs placement.trace"));
  CHECK_THAT(error_of(kBase + "placement:\n  load: trace\n  trace: x.csv\n"),
             Catch::Contains("placement.load: only used with 'policy: greedy' or 'policy: eplb'"));
  std::filesystem::remove_all(dir);
}

TEST_CASE("Hot-expert routing keys are read and checked", "[scenarios]") {
  const auto sc = load_scenario_text(kBase + "  distribution: hot_experts\n  hot_experts: 2\n  hot_fraction: 0.7\n", "s.yaml");
  CHECK(sc.forward.routing.distribution == moesim::routing::Distribution::hot_experts);
  CHECK(sc.forward.routing.hot_experts == 2);
  CHECK(sc.forward.routing.hot_fraction == 0.7);
  CHECK_THAT(error_of(kBase + "  distribution: hot_experts\n  hot_fraction: 0.7\n"),
             Catch::Contains("routing.distribution: hot_experts needs routing.hot_experts"));
  CHECK_THAT(error_of(kBase + "  distribution: hot_experts\n  hot_experts: 8\n  hot_fraction: 0.7\n"),
             Catch::Contains("routing.hot_experts: hot_experts 8 must be fewer than the 8 experts"));
  CHECK_THAT(error_of(kBase + "  hot_experts: 2\n"), Catch::Contains("only used with 'distribution: hot_experts'"));
}

TEST_CASE("Replica choice is read and checked", "[scenarios]") {
  const auto sc = load_scenario_text(kBase + "placement:\n  policy: eplb\n  redundant_experts: 8\n  replica_choice: least_loaded\n", "s.yaml");
  CHECK(sc.forward.placement.replica_choice == moesim::routing::ReplicaChoice::least_loaded);
  CHECK_THAT(error_of(kBase + "placement:\n  replica_choice: least_loaded\n"),
             Catch::Contains("placement.replica_choice: only used with 'policy: eplb'"));
  CHECK_THAT(error_of(kBase + "placement:\n  policy: eplb\n  replica_choice: random\n"),
             Catch::Contains("placement.replica_choice:"));
}

TEST_CASE("Routing generators' keys are read and checked", "[scenarios][routing]") {
  using moesim::routing::Distribution;
  const auto ln = load_scenario_text(kBase + "  distribution: lognormal\n  sigma: 0.8\n  dirichlet_concentration: 50\n"
                                             "  burst_probability: 0.1\n  burst_fraction: 0.4\n  layer_correlation: 0.3\n"
                                             "  step: 3\n  rotate: 2\n", "s.yaml");
  const auto& r = ln.forward.routing;
  CHECK(r.distribution == Distribution::lognormal);
  CHECK(r.lognormal_sigma == 0.8);
  CHECK(r.dirichlet_concentration == 50);
  CHECK(r.burst_probability == 0.1);
  CHECK(r.burst_fraction == 0.4);
  CHECK(r.layer_correlation == 0.3);
  CHECK(r.step == 3);
  CHECK(r.rotate == 2);
  CHECK_THAT(error_of(kBase + "  distribution: lognormal\n"), Catch::Contains("lognormal needs routing.sigma"));
  CHECK_THAT(error_of(kBase + "  sigma: 1\n"), Catch::Contains("routing.sigma: only used with 'distribution: lognormal'"));
  CHECK_THAT(error_of(kBase + "  burst_probability: 0.1\n"), Catch::Contains("bursts need both"));
  CHECK_THAT(error_of(kBase + "  layer_correlation: 1.5\n"), Catch::Contains("routing.layer_correlation: must be in [0, 1]"));
  CHECK_THAT(error_of(kBase + "  dirichlet_concentration: 0\n"), Catch::Contains("must be greater than 0"));

  const auto hr = load_scenario_text(kBase + "  distribution: hot_ranks\n  hot_ranks: 1\n  hot_fraction: 0.4\n", "s.yaml");
  CHECK(hr.forward.routing.distribution == Distribution::hot_ranks);
  CHECK(hr.forward.routing.hot_ranks == 1);
  CHECK_THAT(error_of(kBase + "  distribution: hot_ranks\n  hot_ranks: 8\n  hot_fraction: 0.4\n"),
             Catch::Contains("routing.hot_ranks: hot_ranks 8 must be fewer than the EP size 8"));
  CHECK_THAT(error_of(kBase + "  distribution: hot_ranks\n  hot_fraction: 0.4\n"), Catch::Contains("hot_ranks needs routing.hot_ranks"));

  const auto gl = load_scenario_text(kBase + "  groups: 4\n  max_groups: 2\n", "s.yaml");
  CHECK(gl.forward.routing.groups == 4);
  CHECK(gl.forward.routing.max_groups == 2);
  CHECK_THAT(error_of(kBase + "  max_groups: 2\n"), Catch::Contains("routing.max_groups: needs routing.groups"));
  CHECK_THAT(error_of(kBase + "  groups: 4\n"), Catch::Contains("routing.groups: only used with routing.max_groups"));
  CHECK(load_scenario_text(kBase + "  groups: 4\n  max_groups: 2\n  group_choice: best_two\n", "s.yaml").forward.routing.group_choice ==
        moesim::routing::GroupChoice::best_two);
  CHECK_THAT(error_of(kBase + "  group_choice: best_expert\n"), Catch::Contains("routing.group_choice: only used with routing.max_groups"));
  CHECK_THAT(error_of(kBase + "  groups: 4\n  max_groups: 2\n  layer_correlation: 0.5\n  group_choice: best_expert\n"),
             Catch::Contains("routing.group_choice: only 'draw' is used with routing.layer_correlation"));
  CHECK_THAT(error_of(kBase + "  groups: 4\n  max_groups: 2\n  group_choice: best_tow\n"),
             Catch::Contains("did you mean 'best_two'?"));
  CHECK_THAT(error_of(kBase + "  groups: 3\n  max_groups: 2\n"), Catch::Contains("experts (8) do not divide into 3 groups"));
  CHECK_THAT(error_of(kBase + "  groups: 8\n  max_groups: 1\n"),
             Catch::Contains("1 groups of 1 experts hold fewer than top_k = 2 experts"));
}

TEST_CASE("Drop policies are read and need a capacity factor", "[scenarios][routing]") {
  using moesim::routing::DropPolicy;
  CHECK(load_scenario_text(kBase + "  drop_policy: gate\n", "s.yaml").forward.routing.drop_policy == DropPolicy::gate);
  CHECK(load_scenario_text(kBase + "  drop_policy: pad\n", "s.yaml").forward.routing.drop_policy == DropPolicy::pad);
  CHECK_THAT(error_of(with("  capacity_factor: 1.25\n", "  capacity_factor: dropless\n  drop_policy: pad\n")),
             Catch::Contains("routing.drop_policy: needs a routing.capacity_factor"));
  CHECK_THAT(error_of(kBase + "  drop_policy: lowest\n"), Catch::Contains("expected one of position, gate, pad"));
}

TEST_CASE("Trace routing and observed placement are read and checked", "[scenarios][routing]") {
  const auto dir = std::filesystem::temp_directory_path() / ("moesim-loader-routing-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  auto load_with = [&](const std::string& extra) { std::ofstream(dir / "s.yaml") << kBase + extra; };
  auto error_in_dir = [&](const std::string& extra) {
    load_with(extra);
    try {
      load_scenario_file((dir / "s.yaml").string());
    } catch (const ScenarioError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  {
    std::ofstream t(dir / "steps.csv");
    t << "step,layer,expert,count\n";
    for (int s = 0; s < 3; ++s)
      for (int l = 0; l < 4; ++l)
        for (int e = 0; e < 8; ++e) t << s << "," << l << "," << e << "," << (e == s ? 100 : 1) << "\n";
  }
  load_with("  distribution: trace\n  trace: steps.csv\n  step: 2\n");
  const auto sc = load_scenario_file((dir / "s.yaml").string());
  REQUIRE(sc.forward.routing.trace);
  CHECK(sc.forward.routing.trace->layer_counts[1][2] == 100);
  CHECK(sc.forward.routing.trace->layer_counts[1][0] == 1);
  CHECK_THAT(error_in_dir("  distribution: trace\n  trace: steps.csv\n  step: 5\n"),
             Catch::Contains("routing.trace:") && Catch::Contains("no counts for step 5"));
  CHECK_THAT(error_in_dir("  distribution: trace\n"), Catch::Contains("trace needs routing.trace"));
  CHECK_THAT(error_in_dir("  distribution: trace\n  trace: steps.csv\n  layer_correlation: 0.5\n"),
             Catch::Contains("routing.layer_correlation: not used with 'distribution: trace'"));

  // Placement from the mean of a window of traced steps.
  load_with("placement:\n  policy: eplb\n  redundant_experts: 8\n  load: trace\n  trace: steps.csv\n  trace_steps: 0-1\n");
  const auto pl = load_scenario_file((dir / "s.yaml").string());
  REQUIRE(pl.forward.placement.layer_load.size() == 4);
  CHECK(pl.forward.placement.layer_load[0] == std::vector<double>{50.5, 50.5, 1, 1, 1, 1, 1, 1});
  CHECK_THAT(error_in_dir("placement:\n  policy: eplb\n  redundant_experts: 8\n  load: trace\n  trace: steps.csv\n  trace_steps: 2-7\n"),
             Catch::Contains("no counts for step 3"));

  // Observed: needs enough earlier steps.
  CHECK_THAT(error_in_dir("placement:\n  policy: eplb\n  redundant_experts: 8\n  load: observed\n  history: 4\n"),
             Catch::Contains("placement.history: 4 earlier step(s) need routing.step >= 4 (it is 0)"));
  load_with("  step: 4\nplacement:\n  policy: eplb\n  redundant_experts: 8\n  load: observed\n  history: 4\n");
  CHECK(load_scenario_file((dir / "s.yaml").string()).forward.placement_history == 4);
  CHECK_THAT(error_in_dir("placement:\n  history: 2\n"), Catch::Contains("placement.history: only used with 'load: observed'"));

  // A token-level trace of the wrong shape.
  {
    std::ofstream t(dir / "tokens.csv");
    t << "layer,token,experts,gates\n0,0,1 2,0.5 0.5\n";
  }
  CHECK_THAT(error_in_dir("  distribution: trace\n  trace: tokens.csv\n"),
             Catch::Contains("routing.trace:") && Catch::Contains("layer 0 has 1 tokens; the scenario needs 8192"));
  std::filesystem::remove_all(dir);
}

TEST_CASE("A key given twice is an error, not a silent choice", "[scenarios][errors]") {
  CHECK_THAT(error_of(kBase + "  capacity_factor: 2\n"),
             Catch::Contains("s.yaml:20:3: routing.capacity_factor: given twice (first on line 19)"));
  const auto sc = load_scenario_text(kBase + "placement:\n  policy: eplb\n  redundant_experts: 8\n  replica_locality: none\n", "s.yaml");
  CHECK_FALSE(sc.forward.placement.replica_locality);
  CHECK_THAT(error_of(kBase + "placement:\n  replica_locality: none\n"),
             Catch::Contains("placement.replica_locality: only used with 'policy: eplb'"));
}

TEST_CASE("Workload kinds, compute speeds and stragglers are read and checked", "[scenarios]") {
  CHECK(load_scenario_text(with("  tokens_per_gpu: 1024\n", "  tokens_per_gpu: 1024\n  kind: training\n"), "s.yaml").forward.training);
  const auto pre = load_scenario_text(with("  tokens_per_gpu: 1024\n", "  tokens_per_gpu: 1024\n  kind: prefill\n"), "s.yaml");
  CHECK(pre.workload_kind == "prefill");
  CHECK_FALSE(pre.forward.training);
  CHECK(pre.forward.context_length == 0);
  const auto d = load_scenario_text(with("  tokens_per_gpu: 1024\n", "  tokens_per_gpu: 64\n  kind: decode\n  context_length: 8192\n"), "s.yaml");
  CHECK(d.forward.context_length == 8192);
  CHECK_THAT(error_of(with("  tokens_per_gpu: 1024\n", "  tokens_per_gpu: 64\n  kind: decode\n")),
             Catch::Contains("workload.kind: decode needs workload.context_length"));
  CHECK_THAT(error_of(with("  tokens_per_gpu: 1024\n", "  tokens_per_gpu: 64\n  context_length: 10\n")),
             Catch::Contains("workload.context_length: only used with 'kind: decode'"));
  const auto varied = load_scenario_text(
      with("  tokens_per_gpu: 1024\n", "  tokens_per_gpu: 64\n  kind: decode\n  context_length: 8192\n  context_sigma: 0.8\n"
                                        "  context_balance: kv_cache\n"),
      "s.yaml");
  CHECK(varied.forward.context_sigma == 0.8);
  CHECK(varied.forward.context_balanced);
  CHECK_FALSE(d.forward.varied_contexts());
  CHECK(varied.forward.varied_contexts());
  CHECK_THAT(error_of(with("  tokens_per_gpu: 1024\n", "  tokens_per_gpu: 64\n  context_sigma: 1\n")),
             Catch::Contains("workload.context_sigma: only used with 'kind: decode'"));
  CHECK_THAT(error_of(with("  tokens_per_gpu: 1024\n", "  tokens_per_gpu: 64\n  kind: decode\n  context_length: 8\n  context_sigma: -1\n")),
             Catch::Contains("workload.context_sigma: must not be negative"));
  CHECK_THAT(error_of(with("  tokens_per_gpu: 1024\n", "  tokens_per_gpu: 64\n  kind: decode\n  context_length: 8\n  context_balance: kv\n")),
             Catch::Contains("workload.context_balance"));
  const auto s = load_scenario_text(kBase + "compute:\n  gpu_speed: {3: 0.8, 15: 0.5}\n  jitter: 0.05\n"
                                            "  straggler_probability: 0.01\n  straggler_speed: 0.7\n", "s.yaml");
  REQUIRE(s.forward.gpu_speed.size() == 16);
  CHECK(s.forward.gpu_speed[3] == 0.8);
  CHECK(s.forward.gpu_speed[15] == 0.5);
  CHECK(s.forward.gpu_speed[0] == 1.0);
  CHECK(s.forward.jitter == 0.05);
  CHECK(s.forward.straggler_probability == 0.01);
  CHECK(s.forward.straggler_speed == 0.7);
  CHECK_THAT(error_of(kBase + "compute:\n  gpu_speed: {16: 0.5}\n"),
             Catch::Contains("compute.gpu_speed: GPU 16 is not in the cluster (16 GPUs)"));
  CHECK_THAT(error_of(kBase + "compute:\n  gpu_speed: {2: 0}\n"), Catch::Contains("compute.gpu_speed: must be greater than 0"));
  CHECK_THAT(error_of(kBase + "compute:\n  gpu_speed: 0.5\n"), Catch::Contains("expected a mapping of GPU index to speed factor"));
  CHECK_THAT(error_of(kBase + "compute:\n  straggler_probability: 0.1\n"), Catch::Contains("stragglers need both"));
}

TEST_CASE("Steps and placement refreshes are read and checked", "[scenarios]") {
  const auto sc = load_scenario_text(with("  tokens_per_gpu: 1024\n", "  tokens_per_gpu: 1024\n  steps: 5\n") +
                                         "placement:\n  policy: eplb\n  redundant_experts: 8\n  refresh_every: 2\n",
                                     "s.yaml");
  CHECK(sc.steps == 5);
  CHECK(sc.refresh_every == 2);
  CHECK_THAT(error_of(kBase + "placement:\n  refresh_every: 2\n"),
             Catch::Contains("placement.refresh_every: only used with 'policy: greedy' or 'policy: eplb'"));
  CHECK_THAT(error_of(with("  tokens_per_gpu: 1024\n", "  tokens_per_gpu: 1024\n  steps: 0\n")),
             Catch::Contains("workload.steps: must be at least 1"));
}

TEST_CASE("Command-line overrides (--set) change, add and check scenario keys", "[scenarios][set]") {
  const auto sc = load_scenario_text(kBase, "s.yaml",
                                     {"workload.tokens_per_gpu=2048", "routing.distribution=zipf", "routing.zipf_s=1.3",
                                      "placement.policy=eplb", "placement.redundant_experts=8", "compute.gpu_speed={3: 0.5}"});
  CHECK(sc.forward.tokens_per_gpu == 2048);
  CHECK(sc.forward.routing.distribution == moesim::routing::Distribution::zipf);
  CHECK(sc.forward.routing.zipf_s == 1.3);
  CHECK(sc.forward.placement.redundant_experts == 8);  // a section the file does not have
  CHECK(sc.forward.gpu_speed.at(3) == 0.5);             // a mapping value
  auto error_with = [](std::vector<std::string> sets) {
    try {
      load_scenario_text(kBase, "s.yaml", sets);
    } catch (const ScenarioError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK_THAT(error_with({"routing.zipff=1"}), Catch::Contains("s.yaml: --set routing.zipff: unknown key; did you mean 'zipf_s'?"));
  CHECK_THAT(error_with({"workload.tokens_per_gpu=x"}), Catch::Contains("s.yaml: --set workload.tokens_per_gpu: expected a whole number"));
  CHECK_THAT(error_with({"model.top_k=9"}), Catch::Contains("top_k 9 is larger than experts 8"));
  CHECK_THAT(error_with({"nonsense"}), Catch::Contains("--set 'nonsense': expected key.path=value"));
  CHECK_THAT(error_with({"a..b=1"}), Catch::Contains("expected key.path=value"));
}

TEST_CASE("Gradient sync algorithms and optimizer sharding are checked", "[scenarios]") {
  const auto workload = [](const std::string& keys) {
    return with("  tokens_per_gpu: 1024\n", "  tokens_per_gpu: 1024\n  kind: training\n" + keys);
  };
  const auto sc = load_scenario_text(workload("  gradient_sync: nvls\n  gradient_sync_chunks: 4\n  optimizer_sharding: true\n"), "s.yaml");
  CHECK(sc.forward.gradient_sync);
  CHECK(sc.forward.gradient_sync_algorithm == moesim::models::CollectiveAlgorithm::nvls);
  CHECK(sc.forward.gradient_sync_chunks == 4);
  CHECK(sc.forward.optimizer_sharding);
  CHECK_THAT(error_of(workload("  gradient_sync: tree\n")), Catch::Contains("workload.gradient_sync"));
  CHECK_THAT(error_of(workload("  gradient_sync_buckets: 2\n")),
             Catch::Contains("workload.gradient_sync_buckets: needs a gradient_sync algorithm"));
  CHECK_THAT(error_of(workload("  gradient_sync: ring\n  gradient_sync_buckets: 5\n")),
             Catch::Contains("5 buckets for 4 MoE layers: at most one bucket per layer"));
  CHECK(load_scenario_text(workload("  gradient_sync: ring\n  gradient_sync_buckets: 4\n"), "s.yaml").forward.gradient_sync_buckets == 4);
  CHECK(load_scenario_text(workload("  gradient_sync: nvls\n") + "network:\n  nvls_efficiency: 0.5\n", "s.yaml").forward.nvls_efficiency == 0.5);
  CHECK_THAT(error_of(workload("  gradient_sync: ring\n") + "network:\n  nvls_efficiency: 0.5\n"),
             Catch::Contains("network.nvls_efficiency: only used with 'workload.gradient_sync: nvls'"));
  CHECK_THAT(error_of(workload("  gradient_sync: nvls\n") + "network:\n  nvls_efficiency: 1.5\n"),
             Catch::Contains("must be in (0, 1]"));
  CHECK_THAT(error_of(workload("  optimizer_sharding: true\n")),
             Catch::Contains("workload.optimizer_sharding: needs a gradient_sync algorithm"));
  CHECK_THAT(error_of(workload("  gradient_sync: ring\n  gradient_sync_chunks: 4\n")),
             Catch::Contains("gradient_sync_chunks: only used with gradient_sync: hierarchical or nvls"));
  std::string a100 = workload("  gradient_sync: nvls\n");
  a100.replace(a100.find("gpu: H100"), 9, "gpu: A100");
  CHECK_THAT(error_of(a100), Catch::Contains("nvls needs NVSwitch in-switch reduction (NVLink SHARP), which A100-SXM systems lack"));
}

TEST_CASE("Parameter sharding (FSDP) implies a sharded optimizer and refuses what it does not model", "[scenarios]") {
  const auto workload = [](const std::string& keys) {
    return with("  tokens_per_gpu: 1024\n", "  tokens_per_gpu: 1024\n  micro_batches: 2\n  kind: training\n" + keys);
  };
  const auto sc = load_scenario_text(workload("  gradient_sync: hierarchical\n  parameter_sharding: true\n"), "s.yaml");
  CHECK(sc.forward.parameter_sharding);
  CHECK(sc.forward.optimizer_sharding);
  CHECK_FALSE(load_scenario_text(workload("  gradient_sync: ring\n  parameter_sharding: false\n"), "s.yaml").forward.optimizer_sharding);
  CHECK_THAT(error_of(workload("  parameter_sharding: true\n")),
             Catch::Contains("workload.parameter_sharding: needs a gradient_sync algorithm"));
  CHECK_THAT(error_of(workload("  gradient_sync: ring\n  optimizer_sharding: false\n  parameter_sharding: true\n")),
             Catch::Contains("shards the optimizer too"));
  CHECK_THAT(error_of(workload("  gradient_sync: ring\n  gradient_sync_buckets: 2\n  parameter_sharding: true\n")),
             Catch::Contains("workload.gradient_sync_buckets: not used with parameter_sharding"));
  CHECK_THAT(error_of(workload("  gradient_sync: ring\n  overlap: forward_backward\n  parameter_sharding: true\n")),
             Catch::Contains("workload.parameter_sharding: with an overlap is not modelled"));
  CHECK_THAT(error_of(replaced_text(workload("  gradient_sync: ring\n  parameter_sharding: true\n"), "  ep: 8\n", "  ep: 8\n  pp: 2\n")),
             Catch::Contains("workload.parameter_sharding: with parallelism.pp > 1: with pipeline stages FSDP keeps") &&
                 Catch::Contains("use optimizer_sharding: true (ZeRO-1)"));
  CHECK_THAT(error_of(with("  tokens_per_gpu: 1024\n", "  tokens_per_gpu: 1024\n  parameter_sharding: true\n")),
             Catch::Contains("workload.parameter_sharding: only used with 'kind: training'"));
  // Hybrid sharding: groups of whole EP groups (ep 8 on 16 GPUs: 8 or 16), with something sharded.
  CHECK(load_scenario_text(workload("  gradient_sync: ring\n  parameter_sharding: true\n  shard_group: 8\n"), "s.yaml").forward.shard_group == 8);
  CHECK(load_scenario_text(workload("  gradient_sync: ring\n  optimizer_sharding: true\n  shard_group: 16\n"), "s.yaml").forward.shard_group == 16);
  CHECK_THAT(error_of(workload("  gradient_sync: ring\n  parameter_sharding: true\n  shard_group: 4\n")),
             Catch::Contains("workload.shard_group: 4 GPUs: a group must divide the 16 GPUs of the cluster and hold whole blocks of "
                             "ep x etp = 8 GPUs"));
  CHECK_THAT(error_of(workload("  gradient_sync: ring\n  parameter_sharding: true\n  shard_group: 24\n")),
             Catch::Contains("workload.shard_group: 24 GPUs: a group must divide"));
  CHECK_THAT(error_of(replaced_text(workload("  gradient_sync: ring\n  parameter_sharding: true\n  shard_group: 4\n"), "  ep: 8\n",
                                    "  ep: 2\n  tp: 8\n")),
             Catch::Contains("workload.shard_group: 4 GPUs: a group must hold whole tensor-parallel groups (a multiple of tp = 8)"));
  CHECK_THAT(error_of(workload("  gradient_sync: ring\n  shard_group: 8\n")),
             Catch::Contains("workload.shard_group: only used with optimizer_sharding or parameter_sharding"));
  CHECK_THAT(error_of(replaced_text(workload("  gradient_sync: ring\n  optimizer_sharding: true\n  shard_group: 8\n  pipeline_schedule: dualpipe\n"),
                                    "  ep: 8\n", "  ep: 4\n  pp: 2\n")),
             Catch::Contains("workload.shard_group: with pipeline_schedule: dualpipe is not modelled"));
  // Weights gathered in FP8: a sharded state whose weights are gathered, and FP8 GEMMs to read them.
  const std::string fp8 = "compute: {gemm_dtype: fp8}\n";
  CHECK(load_scenario_text(workload("  gradient_sync: ring\n  parameter_sharding: true\n  param_gather_dtype: fp8\n") + fp8, "s.yaml")
            .forward.fp8_param_gather);
  CHECK(load_scenario_text(workload("  gradient_sync: ring\n  optimizer_sharding: true\n  param_gather_dtype: fp8\n") + fp8, "s.yaml")
            .forward.fp8_param_gather);
  CHECK_FALSE(load_scenario_text(workload("  gradient_sync: ring\n  parameter_sharding: true\n  param_gather_dtype: bf16\n"), "s.yaml")
                  .forward.fp8_param_gather);
  CHECK_THAT(error_of(workload("  gradient_sync: ring\n  parameter_sharding: true\n  param_gather_dtype: fp8\n")),
             Catch::Contains("workload.param_gather_dtype: fp8 gathers the weights the FP8 GEMMs read: set compute.gemm_dtype: fp8"));
  CHECK_THAT(error_of(workload("  gradient_sync: ring\n  param_gather_dtype: fp8\n") + fp8),
             Catch::Contains("workload.param_gather_dtype: only used with a sharded optimizer or sharded weights"));
}

TEST_CASE("Activation recomputation is a training key", "[scenarios]") {
  const auto training = [](const std::string& keys) {
    return with("  tokens_per_gpu: 1024\n", "  tokens_per_gpu: 1024\n  kind: training\n" + keys);
  };
  CHECK(load_scenario_text(training(""), "s.yaml").forward.recompute == moesim::models::Recompute::none);
  CHECK(load_scenario_text(training("  recompute: full\n"), "s.yaml").forward.recompute == moesim::models::Recompute::full);
  CHECK(load_scenario_text(training("  recompute: attention\n"), "s.yaml").forward.recompute ==
        moesim::models::Recompute::attention);
  CHECK(load_scenario_text(training("  recompute: none\n"), "s.yaml").forward.recompute == moesim::models::Recompute::none);
  CHECK_THAT(error_of(training("  recompute: partial\n")), Catch::Contains("workload.recompute") && Catch::Contains("selective"));
  CHECK_THAT(error_of(with("  tokens_per_gpu: 1024\n", "  tokens_per_gpu: 1024\n  recompute: full\n")),
             Catch::Contains("workload.recompute: only used with 'kind: training'"));
  CHECK(load_scenario_text(training("  recompute: full\n  recompute_layers: 3\n"), "s.yaml").forward.recompute_layers == 3);
  CHECK(load_scenario_text(training("  recompute: full\n"), "s.yaml").forward.recompute_layers == 0);  // every layer
  CHECK_THAT(error_of(training("  recompute: attention\n  recompute_layers: 3\n")),
             Catch::Contains("workload.recompute_layers: only used with recompute: full"));
  CHECK_THAT(error_of(training("  recompute_layers: 3\n")), Catch::Contains("workload.recompute_layers: only used with recompute: full"));
  CHECK_THAT(error_of(training("  recompute: full\n  recompute_layers: 0\n")),
             Catch::Contains("workload.recompute_layers: must be at least 1, got 0"));
}

TEST_CASE("Selective recomputation takes Megatron-Core's module names; FP8 activations need FP8 GEMMs", "[scenarios][recompute]") {
  const std::string mla = "  attention_heads: 32\n  mla: {q_lora_rank: 64, kv_lora_rank: 32, qk_nope_head_dim: 16, qk_rope_head_dim: 8, v_head_dim: 16}\n";
  const auto text = [&](const std::string& keys, bool with_mla = true, const std::string& compute = "") {
    std::string s = with("  tokens_per_gpu: 1024\n", "  tokens_per_gpu: 1024\n  kind: training\n" + keys);
    if (with_mla) s.replace(s.find("  attention_heads: 32\n"), 22, mla);
    return s + compute;
  };
  const auto sc = load_scenario_text(text("  recompute: selective\n  recompute_modules: [layernorm, mla_up_proj, moe_act]\n"), "s.yaml");
  CHECK(sc.forward.recompute == moesim::models::Recompute::selective);
  CHECK(sc.forward.recompute_layernorm);
  CHECK(sc.forward.recompute_mla_up_proj);
  CHECK(sc.forward.recompute_moe_act);
  const auto one = load_scenario_text(text("  recompute: selective\n  recompute_modules: [moe_act]\n", false), "s.yaml");
  CHECK_FALSE(one.forward.recompute_layernorm);
  CHECK_FALSE(one.forward.recompute_mla_up_proj);
  CHECK(one.forward.recompute_moe_act);
  CHECK(error_of(text("  recompute: selective\n")) ==
        "s.yaml:20:14: workload.recompute: selective needs workload.recompute_modules (e.g. [layernorm, mla_up_proj, moe_act])");
  CHECK_THAT(error_of(text("  recompute_modules: [layernorm]\n")),
             Catch::Contains("workload.recompute_modules: only used with recompute: selective"));
  CHECK_THAT(error_of(text("  recompute: full\n  recompute_modules: [layernorm]\n")),
             Catch::Contains("workload.recompute_modules: only used with recompute: selective"));
  CHECK_THAT(error_of(text("  recompute: selective\n  recompute_modules: [layernrom, core_attn]\n")),
             Catch::Contains("unknown module 'layernrom' (did you mean 'layernorm'?)") &&
                 Catch::Contains("unknown module 'core_attn'") && Catch::Contains("recompute: attention or full rebuild more"));
  CHECK_THAT(error_of(text("  recompute: selective\n  recompute_modules: []\n")), Catch::Contains("got an empty list"));
  CHECK_THAT(error_of(text("  recompute: selective\n  recompute_modules: layernorm\n")), Catch::Contains("expected a list of modules"));
  CHECK(error_of(text("  recompute: selective\n  recompute_modules: [mla_up_proj]\n", false)) ==
        "s.yaml:20:22: workload.recompute_modules: mla_up_proj recomputes multi-head latent attention's up projections: set model.mla");
  // Every pipeline schedule takes it: the modules rebuild inside the input-gradient pass.
  const std::string stages = "parallelism:\n  ep: 8\n  pp: 2\n";
  std::string zb = text("  recompute: selective\n  recompute_modules: [layernorm]\n  pipeline_schedule: zb_h1\n  micro_batches: 2\n");
  zb.replace(zb.find("parallelism:\n  ep: 8\n"), 21, stages);
  zb.replace(zb.find("  nodes: 2\n"), 11, "  nodes: 4\n");
  CHECK(error_of(zb) == "no error");
  // FP8 activations: training with FP8 GEMMs and a 2-byte model dtype.
  const std::string fp8 = "compute: {gemm_dtype: fp8}\n";
  CHECK(load_scenario_text(text("  activation_dtype: fp8\n", true, fp8), "s.yaml").forward.activations_fp8);
  CHECK_FALSE(load_scenario_text(text("  activation_dtype: bf16\n", true, fp8), "s.yaml").forward.activations_fp8);
  CHECK(error_of(text("  activation_dtype: fp8\n")) ==
        "s.yaml:20:21: workload.activation_dtype: fp8 keeps the FP8 GEMMs' inputs for their backward: set compute.gemm_dtype: fp8");
  CHECK_THAT(error_of(with("  tokens_per_gpu: 1024\n", "  tokens_per_gpu: 1024\n  activation_dtype: fp8\n") + fp8),
             Catch::Contains("workload.activation_dtype: only used with 'kind: training'"));
  CHECK_THAT(error_of(text("  activation_dtype: fp4\n", true, fp8)), Catch::Contains("workload.activation_dtype"));
  // The gradients' and Adam moments' dtypes (DeepSeek-V3: fp32 and bf16).
  const auto dt = load_scenario_text(text("  gradient_dtype: fp32\n  adam_moments_dtype: bf16\n"), "s.yaml").forward;
  CHECK(dt.grad_bytes() == 4);
  CHECK(dt.moment_bytes == 2);
  CHECK(load_scenario_text(text(""), "s.yaml").forward.grad_bytes() == 2);  // model.dtype's
  CHECK(load_scenario_text(text(""), "s.yaml").forward.moment_bytes == 4);
  CHECK_THAT(error_of(with("  tokens_per_gpu: 1024\n", "  tokens_per_gpu: 1024\n  gradient_dtype: fp32\n  adam_moments_dtype: bf16\n")),
             Catch::Contains("workload.gradient_dtype: only used with 'kind: training'") &&
                 Catch::Contains("workload.adam_moments_dtype: only used with 'kind: training'"));
  CHECK_THAT(error_of(text("  adam_moments_dtype: fp8\n")), Catch::Contains("workload.adam_moments_dtype"));
}

TEST_CASE("An override (--set) with a null value removes the key", "[scenarios]") {
  const std::string zipf = with("  capacity_factor: 1.25\n", "  capacity_factor: 1.25\n  distribution: zipf\n  zipf_s: 1.2\n");
  CHECK_THAT(error_of_with(zipf, {"routing.distribution=uniform"}), Catch::Contains("routing.zipf_s: only used with 'distribution: zipf'"));
  for (const char* null : {"~", "null", ""}) {
    INFO(null);
    const auto sc = load_scenario_text(zipf, "s.yaml", {"routing.distribution=uniform", std::string("routing.zipf_s=") + null});
    CHECK(sc.forward.routing.distribution == routing::Distribution::uniform);
  }
  CHECK(load_scenario_text(kBase, "s.yaml", {"routing.not_there=~"}).forward.routing.capacity_factor == 1.25);  // nothing to remove
  CHECK_THAT(error_of_with(kBase, {"model.hidden=~"}), Catch::Contains("model: missing required key 'hidden'"));
}

TEST_CASE("A global batch sets the micro-batches, and says which batches would split evenly", "[scenarios]") {
  // 16 GPUs of 1024 tokens: a micro-batch is 16384 tokens, with two stages 8192.
  const std::string training = with("  tokens_per_gpu: 1024\n", "  tokens_per_gpu: 1024\n  kind: training\n  sequence_length: 4096\n");
  const auto batch = [&](const std::vector<std::string>& sets) { return load_scenario_text(training, "s.yaml", sets); };
  CHECK(batch({"workload.global_batch=64"}).forward.micro_batches == 16);
  CHECK(batch({"workload.global_batch=64"}).global_batch == 64);
  CHECK(batch({"workload.global_batch=4"}).forward.micro_batches == 1);
  CHECK(batch({"workload.global_batch=64", "parallelism.pp=2"}).forward.micro_batches == 32);
  CHECK(batch({"workload.global_batch=64", "parallelism.pp=2", "parallelism.tp=2"}).forward.micro_batches == 32);
  CHECK_THAT(error_of_with(training, {"workload.global_batch=63"}),
             Catch::Contains("workload.global_batch: 63 sequences of 4096 tokens are not a whole number of micro-batches of 16384 "
                             "tokens (1024 on each of 16 GPUs): the nearest global batches that are: 60 and 64"));
  CHECK_THAT(error_of_with(training, {"workload.global_batch=2"}), Catch::Contains("the nearest global batches that are: 4"));
  CHECK_THAT(error_of_with(training, {"workload.global_batch=3", "parallelism.pp=2"}),
             Catch::Contains("micro-batches of 8192 tokens (1024 on each of 16 GPUs over 2 pipeline stages): the nearest global "
                             "batches that are: 2 and 4"));
  CHECK_THAT(error_of_with(training, {"workload.global_batch=64", "workload.micro_batches=16"}),
             Catch::Contains("workload.global_batch: give micro_batches or global_batch, not both"));
  CHECK_THAT(error_of_with(kBase, {"workload.global_batch=64"}), Catch::Contains("workload.global_batch: only used with 'kind: training'"));
  // Stages that do not divide the GPUs are parallelism.pp's problem alone.
  const std::string bad_pp = error_of_with(training, {"workload.global_batch=64", "parallelism.pp=3"});
  CHECK_THAT(bad_pp, Catch::Contains("parallelism.pp: the cluster's 16 GPUs"));
  CHECK_THAT(bad_pp, !Catch::Contains("global_batch"));
  // A schedule's rule on the micro-batches names the global batch that made them.
  CHECK_THAT(error_of_with(training, {"workload.global_batch=4", "parallelism.pp=2", "workload.pipeline_schedule=dualpipev",
                                      "parallelism.virtual_stages=2", "parallelism.ep=4"}),
             Catch::Contains("workload.global_batch: 2 micro-batches (the global batch of 4 sequences) for pipeline_schedule: dualpipev"));
}

TEST_CASE("Micro-batches are a training key", "[scenarios]") {
  CHECK(load_scenario_text(kBase, "s.yaml").forward.micro_batches == 1);
  const auto sc = load_scenario_text(with("  tokens_per_gpu: 1024\n", "  tokens_per_gpu: 1024\n  kind: training\n  micro_batches: 8\n"),
                                     "s.yaml");
  CHECK(sc.forward.micro_batches == 8);
  CHECK_THAT(error_of(with("  tokens_per_gpu: 1024\n", "  tokens_per_gpu: 1024\n  micro_batches: 2\n")),
             Catch::Contains("workload.micro_batches: only used with 'kind: training' (gradient accumulation) or "
                             "parallelism.pp > 1"));
  CHECK_THAT(error_of(with("  tokens_per_gpu: 1024\n", "  tokens_per_gpu: 1024\n  kind: training\n  micro_batches: 0\n")),
             Catch::Contains("workload.micro_batches"));
  // One micro-batch is the step without accumulation, allowed with any kind.
  CHECK(load_scenario_text(with("  tokens_per_gpu: 1024\n", "  tokens_per_gpu: 1024\n  micro_batches: 1\n"), "s.yaml")
            .forward.micro_batches == 1);
}

TEST_CASE("Pipeline stages divide the GPUs into whole EP groups and the layers as given or evenly", "[scenarios]") {
  const auto pp = [](const std::string& stages, const std::string& workload = "", const std::string& parallelism = "") {
    return with("  ep: 8\nworkload:\n  tokens_per_gpu: 1024\n",
                "  ep: 8\n  pp: " + stages + "\n" + parallelism + "workload:\n  tokens_per_gpu: 1024\n  kind: training\n" + workload);
  };
  const auto sc = load_scenario_text(pp("2", "  micro_batches: 4\n  pipeline_schedule: gpipe\n"), "s.yaml");
  CHECK(sc.forward.pp == 2);
  CHECK(sc.forward.pipeline_schedule == models::PipelineSchedule::gpipe);
  CHECK(load_scenario_text(pp("2"), "s.yaml").forward.pipeline_schedule == models::PipelineSchedule::one_f_one_b);  // by default
  CHECK(load_scenario_text(pp("2", "  pipeline_schedule: zb_h1\n"), "s.yaml").forward.pipeline_schedule ==
        models::PipelineSchedule::zb_h1);
  // Inference with stages: micro-batches pipelined through them.
  std::string serving = pp("2", "  micro_batches: 4\n");
  serving.replace(serving.find("  kind: training\n"), 17, "  kind: forward\n");
  CHECK(load_scenario_text(serving, "s.yaml").forward.micro_batches == 4);
  CHECK_THAT(error_of(pp("4")), Catch::Contains("parallelism.pp: the cluster's 16 GPUs do not divide into 4 pipeline stages "
                                                "of whole EP groups of 8"));
  CHECK(error_of(with("  moe_layers: 4\n", "  moe_layers: 3\n")) == "no error");  // without stages, any layer count
  // Layers that do not divide: the later stages take one more.
  std::string odd = pp("2");
  odd.replace(odd.find("  moe_layers: 4\n"), 16, "  moe_layers: 3\n");
  CHECK(models::pipeline_bounds(load_scenario_text(odd, "s.yaml").forward) == std::vector<int>{0, 1, 3});
  std::string one = pp("2");
  one.replace(one.find("  moe_layers: 4\n"), 16, "  moe_layers: 1\n");
  CHECK_THAT(error_of(one), Catch::Contains("parallelism.pp: 1 MoE layers for 2 pipeline stages: every stage needs at least one"));
  // An explicit split.
  const auto split = load_scenario_text(pp("2", "", "  pipeline_layers: [3, 1]\n"), "s.yaml").forward;
  CHECK(split.pipeline_layers == std::vector<int>{3, 1});
  CHECK(models::pipeline_bounds(split) == std::vector<int>{0, 3, 4});
  CHECK(models::pipeline_stage(split, 2) == 0);
  CHECK(models::pipeline_stage(split, 3) == 1);
  CHECK_THAT(error_of(pp("2", "", "  pipeline_layers: [1, 1]\n")),
             Catch::Contains("parallelism.pipeline_layers: the stages' layer counts add up to 2, but the model has 4 MoE layers"));
  CHECK_THAT(error_of(pp("2", "", "  pipeline_layers: [4]\n")),
             Catch::Contains("parallelism.pipeline_layers: 1 stages' layer counts for 2 pipeline stages (parallelism.pp)"));
  CHECK_THAT(error_of(pp("2", "", "  pipeline_layers: [0, 4]\n")),
             Catch::Contains("parallelism.pipeline_layers: must be at least 1, got 0"));
  CHECK_THAT(error_of(pp("2", "", "  pipeline_layers: 4\n")),
             Catch::Contains("parallelism.pipeline_layers: expected a list of MoE layer counts, one per pipeline stage"));
  CHECK_THAT(error_of(with("  ep: 8\n", "  ep: 8\n  pipeline_layers: [4]\n")),
             Catch::Contains("parallelism.pipeline_layers: only used with parallelism.pp > 1"));
  CHECK_THAT(error_of(pp("2", "  gradient_sync: ring\n  gradient_sync_buckets: 2\n", "  pipeline_layers: [3, 1]\n")),
             Catch::Contains("2 buckets, but a pipeline stage has only 1 MoE layers"));
  CHECK(error_of(pp("2", "  overlap: two_batch\n")) == "no error");
  CHECK_THAT(error_of(pp("2", "  overlap: two_batch\n  pipeline_schedule: zb_h1\n")),
             Catch::Contains("workload.overlap: two_batch with pipeline_schedule: zb_h1 is not modelled"));
  CHECK_THAT(error_of(with("  tokens_per_gpu: 1024\n", "  tokens_per_gpu: 1024\n  kind: training\n  pipeline_schedule: gpipe\n")),
             Catch::Contains("workload.pipeline_schedule: only used with 'kind: training' and parallelism.pp > 1"));
  CHECK_THAT(error_of(pp("2", "  pipeline_schedule: zb_h1\n  recompute: full\n")),
             Catch::Contains("workload.recompute: not with pipeline_schedule: zb_h1"));
  CHECK_THAT(error_of(pp("2", "  recompute: attention\n  pipeline_schedule: zb_h1\n")),
             Catch::Contains("workload.recompute: not with pipeline_schedule: zb_h1"));
  CHECK(error_of(pp("2", "  pipeline_schedule: zb_h1\n  recompute: none\n")) == "no error");
  CHECK_THAT(error_of(pp("2", "  gradient_sync: ring\n  gradient_sync_buckets: 3\n")),
             Catch::Contains("3 buckets, but a pipeline stage has only 2 MoE layers"));
  CHECK_THAT(error_of(pp("0")), Catch::Contains("parallelism.pp"));
}

TEST_CASE("Forward-backward overlap: training with micro-batches, 1F1B, and model chunks with pipeline stages", "[scenarios]") {
  const auto workload = [](const std::string& keys, const std::string& parallelism = "") {
    return with("  ep: 8\nworkload:\n  tokens_per_gpu: 1024\n", "  ep: 8\n" + parallelism + "workload:\n  tokens_per_gpu: 1024\n" + keys);
  };
  const auto sc = load_scenario_text(workload("  kind: training\n  micro_batches: 2\n  overlap: forward_backward\n"), "s.yaml");
  CHECK(sc.forward.forward_backward_overlap);
  CHECK(!sc.forward.two_batch_overlap);
  CHECK(sc.forward.comm_sm_fraction == Approx(20.0 / 132.0));  // DeepSeek-V3's 20 of 132 SMs, as with two_batch
  CHECK(load_scenario_text(workload("  kind: training\n  micro_batches: 2\n  overlap: forward_backward\n  comm_sm_fraction: 0.1\n"),
                           "s.yaml")
            .forward.comm_sm_fraction == Approx(0.1));
  // 20 of the GPU's own SMs: 148 on a Blackwell GPU; a custom GPU's `sms`, else 132.
  const auto fraction_on = [&](const std::string& gpu) {
    const std::string text = replaced_text(workload("  kind: training\n  micro_batches: 2\n  overlap: two_batch\n"),
                                           "  gpu: H100\n", "  gpu: " + gpu + "\n");
    return load_scenario_text(text, "s.yaml").forward.comm_sm_fraction;
  };
  CHECK(fraction_on("B200") == Approx(20.0 / 148.0));
  CHECK(fraction_on("GB200") == Approx(20.0 / 148.0));
  CHECK(fraction_on("A100") == Approx(20.0 / 108.0));
  CHECK(fraction_on("{preset: H100, sms: 100}") == Approx(0.2));
  CHECK(fraction_on("{peak_bf16: 1000TFLOP/s, memory_bandwidth: 4TB/s, nvlink_bandwidth: 450GB/s}") == Approx(20.0 / 132.0));
  CHECK_THAT(error_of(replaced_text(kBase, "  gpu: H100\n", "  gpu: {preset: H100, sms: 0}\n")),
             Catch::Contains("cluster.gpu.sms"));
  const auto chunks = workload("  kind: training\n  micro_batches: 2\n  overlap: forward_backward\n  recompute: attention\n",
                               "  pp: 2\n  virtual_stages: 2\n");
  CHECK(error_of(chunks) == "no error");
  CHECK_THAT(error_of(workload("  overlap: forward_backward\n")),
             Catch::Contains("workload.overlap: forward_backward is only used with 'kind: training'"));
  CHECK_THAT(error_of(workload("  kind: training\n  overlap: forward_backward\n")),
             Catch::Contains("workload.overlap: forward_backward needs micro_batches >= 2"));
  CHECK_THAT(error_of(workload("  kind: training\n  micro_batches: 2\n  overlap: forward_backward\n  recompute: full\n")),
             Catch::Contains("workload.overlap: forward_backward with recompute: full is not modelled"));
  CHECK_THAT(error_of(workload("  kind: training\n  micro_batches: 2\n  overlap: forward_backward\n  pipeline_schedule: zb_h1\n",
                               "  pp: 2\n")),
             Catch::Contains("workload.overlap: forward_backward runs the 1F1B, DualPipeV or DualPipe schedule, not pipeline_schedule: "
                             "zb_h1"));
  CHECK_THAT(error_of(workload("  kind: training\n  micro_batches: 2\n  overlap: forward_backward\n", "  pp: 2\n")),
             Catch::Contains("workload.overlap: forward_backward with pipeline stages needs parallelism.virtual_stages > 1"));
  CHECK_THAT(error_of(workload("  comm_sm_fraction: 0.1\n")),
             Catch::Contains("only used with 'overlap: two_batch', 'two_batch_staggered' or 'forward_backward'"));
  CHECK_THAT(error_of(workload("  overlap: forward\n")), Catch::Contains("forward_backward"));  // the closest value suggested
}

TEST_CASE("Virtual pipeline stages split the layers into model chunks, stage s holding chunks s, s + pp, ...", "[scenarios]") {
  // 16 GPUs, EP8, 4 MoE layers: PP2 with 2 chunks per stage, one layer each.
  const auto vs = [](const std::string& v, const std::string& workload = "  micro_batches: 4\n", const std::string& parallelism = "") {
    return with("  ep: 8\nworkload:\n  tokens_per_gpu: 1024\n", "  ep: 8\n  pp: 2\n  virtual_stages: " + v + "\n" + parallelism +
                                                                    "workload:\n  tokens_per_gpu: 1024\n  kind: training\n" + workload);
  };
  const auto f = load_scenario_text(vs("2"), "s.yaml").forward;
  CHECK(f.virtual_stages == 2);
  CHECK(models::pipeline_bounds(f) == std::vector<int>{0, 1, 2, 3, 4});
  CHECK(models::pipeline_chunk(f, 2) == 2);
  CHECK(models::pipeline_stage(f, 2) == 0);  // chunk 2 on stage 2 mod 2
  CHECK(models::pipeline_stage(f, 3) == 1);
  CHECK(models::stage_layers(f, 0) == std::vector<int>{0, 2});
  CHECK(models::stage_layers(f, 1) == std::vector<int>{1, 3});
  CHECK(models::group_first_gpu(f, 16, 2, 0) == 0);
  CHECK(models::group_first_gpu(f, 16, 3, 0) == 8);
  CHECK(load_scenario_text(vs("1"), "s.yaml").forward.virtual_stages == 1);
  // A split per chunk.
  const auto split = load_scenario_text(vs("2", "  micro_batches: 2\n", "  pipeline_layers: [1, 1, 1, 1]\n"), "s.yaml").forward;
  CHECK(models::pipeline_bounds(split) == std::vector<int>{0, 1, 2, 3, 4});
  CHECK_THAT(error_of(vs("2", "  micro_batches: 2\n", "  pipeline_layers: [2, 2]\n")),
             Catch::Contains("parallelism.pipeline_layers: 2 layer counts for 4 model chunks (parallelism.pp x virtual_stages: 2 x 2)"));
  CHECK_THAT(error_of(vs("2", "  micro_batches: 2\n", "  pipeline_layers: [1, 1, 1, 2]\n")),
             Catch::Contains("parallelism.pipeline_layers: the chunks' layer counts add up to 5, but the model has 4 MoE layers"));
  CHECK_THAT(error_of(vs("3")),
             Catch::Contains("parallelism.virtual_stages: 4 MoE layers for 6 model chunks (2 stages x 3): every chunk needs at least one"));
  CHECK_THAT(error_of(vs("2", "  micro_batches: 3\n")),
             Catch::Contains("workload.micro_batches: 3 micro-batches with virtual_stages: the interleaved schedule runs them in "
                             "groups of parallelism.pp (2); use a multiple of it"));
  CHECK_THAT(error_of(vs("2", "  micro_batches: 2\n  pipeline_schedule: gpipe\n")),
             Catch::Contains("workload.pipeline_schedule: gpipe with parallelism.virtual_stages > 1"));
  CHECK_THAT(error_of(vs("2", "  micro_batches: 2\n  pipeline_schedule: zb_h1\n")),
             Catch::Contains("workload.pipeline_schedule: zb_h1 with parallelism.virtual_stages > 1"));
  CHECK_THAT(error_of(with("  ep: 8\n", "  ep: 8\n  virtual_stages: 2\n")),
             Catch::Contains("parallelism.virtual_stages: only used with parallelism.pp > 1"));
  CHECK_THAT(error_of(vs("0")), Catch::Contains("parallelism.virtual_stages: must be at least 1, got 0"));
  // Buckets: at most the fewest layers of a stage over its chunks (2 here).
  CHECK(error_of(vs("2", "  micro_batches: 2\n  gradient_sync: ring\n  gradient_sync_buckets: 2\n")) == "no error");
  CHECK_THAT(error_of(vs("2", "  micro_batches: 2\n  gradient_sync: ring\n  gradient_sync_buckets: 3\n")),
             Catch::Contains("3 buckets, but a pipeline stage has only 2 MoE layers"));
}

TEST_CASE("DualPipeV places each stage's two chunks as a V and needs 2 pp micro-batches", "[scenarios]") {
  // 16 GPUs, EP8, 4 MoE layers: PP2, chunks 0 and 3 on stage 0, 1 and 2 on stage 1.
  const auto dv = [](const std::string& v, const std::string& workload = "  micro_batches: 4\n", const std::string& parallelism = "") {
    return with("  ep: 8\nworkload:\n  tokens_per_gpu: 1024\n",
                "  ep: 8\n  pp: 2\n  virtual_stages: " + v + "\n" + parallelism +
                    "workload:\n  tokens_per_gpu: 1024\n  kind: training\n  pipeline_schedule: dualpipev\n" + workload);
  };
  const auto f = load_scenario_text(dv("2"), "s.yaml").forward;
  CHECK(f.pipeline_schedule == models::PipelineSchedule::dualpipev);
  CHECK(models::to_string(f.pipeline_schedule) == "dualpipev");
  for (const auto& [chunk, stage] : {std::pair{0, 0}, {1, 1}, {2, 1}, {3, 0}}) CHECK(models::chunk_stage(f, chunk) == stage);
  CHECK(models::stage_layers(f, 0) == std::vector<int>{0, 3});  // the first and the last layers
  CHECK(models::stage_layers(f, 1) == std::vector<int>{1, 2});
  CHECK(models::group_first_gpu(f, 16, 3, 0) == 0);
  CHECK(models::group_first_gpu(f, 16, 2, 0) == 8);
  // 5 micro-batches: more than 2 pp need not be a multiple of pp (unlike the interleaved schedule).
  CHECK(error_of(dv("2", "  micro_batches: 5\n")) == "no error");
  CHECK(error_of(dv("2", "  micro_batches: 4\n  overlap: forward_backward\n")) == "no error");
  CHECK_THAT(error_of(dv("2", "  micro_batches: 3\n")),
             Catch::Contains("workload.micro_batches: 3 micro-batches for pipeline_schedule: dualpipev with 2 stages: it needs at "
                             "least 2 x parallelism.pp (4)"));
  CHECK_THAT(error_of(dv("1")), Catch::Contains("parallelism.virtual_stages: pipeline_schedule: dualpipev places two model chunks on "
                                                "each stage, chunk c on stage c and chunk 2 pp - 1 - c on stage c (a V): set "
                                                "virtual_stages: 2 (got 1)"));
  CHECK_THAT(error_of(dv("2", "  micro_batches: 4\n  recompute: attention\n")),
             Catch::Contains("workload.recompute: not with pipeline_schedule: dualpipev"));
  CHECK_THAT(error_of(dv("2", "  micro_batches: 4\n  overlap: two_batch\n")),
             Catch::Contains("workload.overlap: two_batch with pipeline_schedule: dualpipev is not modelled"));
  CHECK_THAT(error_of(with("  ep: 8\nworkload:\n  tokens_per_gpu: 1024\n",
                           "  ep: 8\nworkload:\n  tokens_per_gpu: 1024\n  kind: training\n  pipeline_schedule: dualpipev\n")),
             Catch::Contains("workload.pipeline_schedule: only used with 'kind: training' and parallelism.pp > 1"));
}

TEST_CASE("DualPipe needs an even number of stages and micro-batches, one chunk per stage and gradient sync", "[scenarios]") {
  // 32 GPUs, EP8, 4 MoE layers, PP4: stage s holds chunks s and 3 - s.
  const auto dp = [](const std::string& pp, const std::string& workload, const std::string& parallelism = "") {
    return with("  ep: 8\nworkload:\n  tokens_per_gpu: 1024\n",
                "  ep: 8\n  pp: " + pp + "\n" + parallelism +
                    "workload:\n  tokens_per_gpu: 1024\n  kind: training\n  pipeline_schedule: dualpipe\n" + workload);
  };
  std::string four = dp("4", "  micro_batches: 8\n  gradient_sync: ring\n");
  four.replace(four.find("  nodes: 2\n"), 11, "  nodes: 4\n");
  const auto f = load_scenario_text(four, "s.yaml").forward;
  CHECK(f.pipeline_schedule == models::PipelineSchedule::dualpipe);
  CHECK(models::to_string(f.pipeline_schedule) == "dualpipe");
  CHECK(models::stage_layers(f, 1) == std::vector<int>{1, 2});
  CHECK(models::group_first_gpu(f, 32, 0, 0, 0) == 0);   // the first half of the micro-batches enters at stage 0
  CHECK(models::group_first_gpu(f, 32, 0, 0, 4) == 24);  // the second half at stage 3
  CHECK(error_of(dp("2", "  micro_batches: 4\n  gradient_sync: ring\n  overlap: forward_backward\n")) == "no error");
  std::string three = dp("3", "  micro_batches: 6\n  gradient_sync: ring\n");
  three.replace(three.find("  nodes: 2\n"), 11, "  nodes: 3\n");
  CHECK_THAT(error_of(three), Catch::Contains("parallelism.pp: pipeline_schedule: dualpipe pairs stage s with stage pp - 1 - s: it "
                                              "needs an even number of stages (got 3)"));
  CHECK_THAT(error_of(dp("2", "  micro_batches: 4\n")),
             Catch::Contains("workload.pipeline_schedule: dualpipe keeps two copies of every chunk's weights"));
  CHECK_THAT(error_of(dp("2", "  micro_batches: 5\n  gradient_sync: ring\n")),
             Catch::Contains("workload.micro_batches: 5 micro-batches for pipeline_schedule: dualpipe with 2 stages: it needs an "
                             "even number, at least 2 x parallelism.pp (4)"));
  CHECK_THAT(error_of(dp("2", "  micro_batches: 2\n  gradient_sync: ring\n")), Catch::Contains("at least 2 x parallelism.pp (4)"));
  CHECK_THAT(error_of(dp("2", "  micro_batches: 4\n  gradient_sync: ring\n", "  virtual_stages: 2\n")),
             Catch::Contains("parallelism.virtual_stages: pipeline_schedule: dualpipe holds two chunks on each stage by itself"));
  CHECK_THAT(error_of(dp("2", "  micro_batches: 4\n  gradient_sync: ring\n  recompute: full\n")),
             Catch::Contains("workload.recompute: not with pipeline_schedule: dualpipe"));
  CHECK_THAT(error_of(dp("2", "  micro_batches: 4\n  gradient_sync: ring\n  overlap: two_batch\n")),
             Catch::Contains("workload.overlap: two_batch with pipeline_schedule: dualpipe is not modelled"));
}

TEST_CASE("network.forward_chunks is checked", "[scenarios]") {
  const std::string hier = kBase + "network:\n  all_to_all: hierarchical\n";
  CHECK(load_scenario_text(hier, "s.yaml").forward.all_to_all.forward_chunks == 1);
  CHECK(load_scenario_text(hier + "  forward_chunks: 16\n", "s.yaml").forward.all_to_all.forward_chunks == 16);
  CHECK(error_of(hier + "  forward_chunks: 0\n") == "s.yaml:22:19: network.forward_chunks: must be at least 1, got 0");
  CHECK(error_of(hier + "  forward_chunks: 65\n") == "s.yaml:22:19: network.forward_chunks: must be at most 64, got 65");
  CHECK(error_of(kBase + "network:\n  forward_chunks: 4\n") ==
        "s.yaml:21:19: network.forward_chunks: only used with 'all_to_all: hierarchical'");
}

TEST_CASE("network.resolve_interval is read as a time", "[scenarios]") {
  CHECK(load_scenario_text(kBase, "s.yaml").resolve_interval == moesim::sim::Time::zero());
  CHECK(load_scenario_text(kBase + "network:\n  resolve_interval: 250ns\n", "s.yaml").resolve_interval ==
        moesim::sim::Time::ps(250'000));
  // Kept with the analytical model, which ignores it, so that such a scenario still runs with
  // --set network.model=analytical.
  CHECK(load_scenario_text(kBase + "network:\n  model: analytical\n  resolve_interval: 1us\n", "s.yaml").resolve_interval ==
        moesim::sim::Time::us(1));
  CHECK_THAT(error_of(kBase + "network:\n  resolve_interval: 1\n"), Catch::Contains("network.resolve_interval: expected a time like"));
  CHECK_THAT(error_of(kBase + "network:\n  resolve_interval: -1us\n"), Catch::Contains("network.resolve_interval: expected a time"));
}

TEST_CASE("workload.overlap: two_batch_staggered is for forward passes without pipeline stages", "[scenarios]") {
  const auto staggered = with("  tokens_per_gpu: 1024\n", "  tokens_per_gpu: 1024\n  overlap: two_batch_staggered\n");
  const auto sc = load_scenario_text(staggered, "s.yaml");
  CHECK(sc.forward.two_batch_overlap);
  CHECK(sc.forward.two_batch_staggered);
  CHECK(sc.forward.comm_sm_fraction == Approx(20.0 / 132));
  CHECK_FALSE(load_scenario_text(with("  tokens_per_gpu: 1024\n", "  tokens_per_gpu: 1024\n  overlap: two_batch\n"), "s.yaml")
                  .forward.two_batch_staggered);
  CHECK_THAT(error_of(with("  tokens_per_gpu: 1024\n", "  tokens_per_gpu: 1024\n  overlap: two_batch_staggered\n  kind: training\n")),
             Catch::Contains("workload.overlap: two_batch_staggered runs forward passes only"));
  std::string staged = with("  ep: 8\n", "  ep: 8\n  pp: 2\n");
  staged.replace(staged.find("  tokens_per_gpu: 1024\n"), 23, "  tokens_per_gpu: 1024\n  overlap: two_batch_staggered\n");
  CHECK_THAT(error_of(staged),
             Catch::Contains("two_batch_staggered with parallelism.pp > 1 is not modelled"));
  CHECK_THAT(error_of(with("  tokens_per_gpu: 1024\n", "  tokens_per_gpu: 1023\n  overlap: two_batch_staggered\n")),
             Catch::Contains("two_batch_staggered needs an even tokens_per_gpu (got 1023)"));
}

TEST_CASE("parallelism.cp splits each sequence over GPUs, whole tokens each, and is refused where it cannot", "[scenarios][context_parallel]") {
  // kBase: 16 GPUs, 1024 tokens a GPU.
  const auto ok = load_scenario_text(kBase, "s.yaml", {"parallelism.cp=4", "workload.sequence_length=4096", "workload.kind=training"});
  CHECK(ok.forward.cp == 4);
  CHECK(load_scenario_text(kBase, "s.yaml", {"parallelism.cp=2", "workload.sequence_length=1024"}).forward.cp == 2);  // 2 sequences' halves a GPU
  CHECK(load_scenario_text(kBase, "s.yaml").forward.cp == 1);
  CHECK_THAT(error_of_with(kBase, {"parallelism.cp=3", "workload.sequence_length=1024"}),
             Catch::Contains("parallelism.cp: 3 does not divide workload.sequence_length (1024)"));
  CHECK_THAT(error_of_with(kBase, {"parallelism.cp=2", "workload.sequence_length=768"}),
             Catch::Contains("parallelism.cp: workload.tokens_per_gpu (1024) is not a whole number of sequences' shares "
                             "(sequence_length / cp = 384 tokens each)"));
  // With tensor parallelism a share is a group's: 2 x 1024 tokens hold one half of a 4096-token
  // sequence (Megatron-LM: sequence_length / (cp x tp) tokens on each GPU), 3072 would not.
  CHECK(load_scenario_text(kBase, "s.yaml", {"parallelism.cp=2", "parallelism.tp=2", "workload.sequence_length=4096"}).forward.cp == 2);
  CHECK_THAT(error_of_with(kBase, {"parallelism.cp=2", "parallelism.tp=2", "workload.sequence_length=3072"}),
             Catch::Contains("parallelism.cp: workload.tokens_per_gpu (1024) x tp (2), the tokens of a tensor-parallel group, is not a "
                             "whole number of sequences' shares (sequence_length / cp = 1536 tokens each)"));
  CHECK_THAT(error_of_with(kBase, {"parallelism.cp=32", "workload.sequence_length=32768"}),
             Catch::Contains("parallelism.cp: tp x cp (1 x 32) does not divide the 16 GPUs of a pipeline stage"));
  CHECK_THAT(error_of_with(kBase, {"parallelism.cp=2", "workload.kind=decode", "workload.context_length=1024"}),
             Catch::Contains("parallelism.cp: not used with 'kind: decode'"));
  CHECK_THAT(error_of_with(kBase, {"parallelism.cp=2", "workload.kind=prefill", "workload.sequence_length=2048", "workload.cached_prefix=512"}),
             Catch::Contains("parallelism.cp: not modelled with workload.cached_prefix"));
  CHECK_THAT(error_of_with(kBase, {"parallelism.cp=0"}), Catch::Contains("parallelism.cp"));
  CHECK(load_scenario_text(kBase, "s.yaml", {"parallelism.cp=2", "workload.sequence_length=2048", "parallelism.cp_comm=ring"}).forward.cp_ring);
  CHECK_FALSE(ok.forward.cp_ring);  // all_gather by default
  CHECK_THAT(error_of_with(kBase, {"parallelism.cp_comm=ring"}), Catch::Contains("parallelism.cp_comm: only used with parallelism.cp > 1"));
  CHECK_THAT(error_of_with(kBase, {"parallelism.cp=2", "workload.sequence_length=2048", "parallelism.cp_comm=p2p"}),
             Catch::Contains("parallelism.cp_comm: expected one of all_gather, ring"));
}

TEST_CASE("The reliability section: failures and checkpoints of a training run", "[scenarios][reliability]") {
  const std::string training = with("  tokens_per_gpu: 1024\n", "  kind: training\n  tokens_per_gpu: 1024\n");
  const auto sc = load_scenario_text(
      training + "reliability:\n  gpu_mtbf_hours: 50000\n  restart: 10min\n  checkpoint_bandwidth: 2TB/s\n  checkpoint_every_steps: 100\n",
      "s.yaml");
  CHECK(sc.reliability.enabled());
  CHECK(sc.reliability.gpu_mtbf_hours == 50000);
  CHECK(sc.reliability.restart_s == 600);
  CHECK(sc.reliability.checkpoint_bytes_per_s == 2e12);
  CHECK(sc.reliability.checkpoint_s == 0);
  CHECK(sc.reliability.checkpoint_every_steps == 100);
  const auto stall = load_scenario_text(training, "s.yaml",
                                        {"reliability.gpu_mtbf_hours=1e4", "reliability.restart=90s", "reliability.checkpoint_time=30s"});
  CHECK(stall.reliability.checkpoint_s == 30);
  CHECK(stall.reliability.checkpoint_bytes_per_s == 0);
  CHECK(stall.reliability.checkpoint_every_steps == 0);  // the best interval
  CHECK_FALSE(load_scenario_text(training, "s.yaml").reliability.enabled());

  CHECK_THAT(error_of(training + "reliability:\n  gpu_mtbf_hours: 50000\n  checkpoint_time: 30s\n"),
             Catch::Contains("reliability: missing required key 'restart'"));
  CHECK_THAT(error_of(training + "reliability:\n  gpu_mtbf_hours: 50000\n  restart: 5min\n"),
             Catch::Contains("reliability: missing checkpoint_bandwidth"));
  CHECK_THAT(error_of(training + "reliability:\n  gpu_mtbf_hours: 50000\n  restart: 5min\n  checkpoint_time: 30s\n  checkpoint_bandwidth: 1TB/s\n"),
             Catch::Contains("reliability.checkpoint_time: give checkpoint_bandwidth or checkpoint_time, not both"));
  CHECK_THAT(error_of(training + "reliability:\n  gpu_mtbf_hours: 0\n  restart: 5min\n  checkpoint_time: 30s\n"),
             Catch::Contains("reliability.gpu_mtbf_hours: must be greater than 0, got 0"));
  CHECK_THAT(error_of(training + "reliability:\n  gpu_mtbf_hours: 9\n  restart: 5min\n  checkpoint_time: 0s\n"),
             Catch::Contains("reliability.checkpoint_time: must be greater than 0"));
  CHECK_THAT(error_of(training + "reliability:\n  gpu_mtbf_hours: 9\n  restart: 5min\n  checkpoint_time: 3s\n  checkpoint_every_steps: 0\n"),
             Catch::Contains("reliability.checkpoint_every_steps: must be at least 1"));
  CHECK_THAT(error_of(training + "reliability:\n  gpu_mtbf_hours: 9\n  restart: 5min\n  checkpoint_time: 3s\n  mtbf: 3\n"),
             Catch::Contains("reliability.mtbf: unknown key"));
  CHECK_THAT(error_of(kBase + "reliability:\n  gpu_mtbf_hours: 9\n  restart: 5min\n  checkpoint_time: 3s\n"),
             Catch::Contains("reliability: only used with 'workload.kind: training'"));
  // Asynchronous: the write's rate is needed, the stall is the copy over PCIe unless given.
  const auto async = load_scenario_text(training + "reliability:\n  gpu_mtbf_hours: 9\n  restart: 5min\n  checkpoint: async\n"
                                                   "  checkpoint_bandwidth: 500GB/s\n",
                                        "s.yaml");
  CHECK(async.reliability.async);
  CHECK(async.reliability.checkpoint_bytes_per_s == 5e11);
  CHECK(async.reliability.host_bytes_per_s == static_cast<double>(async.cluster.node.pcie_bandwidth.bytes_per_s()));
  CHECK(async.reliability.host_bytes_per_s > 0);
  CHECK(load_scenario_text(training + "reliability:\n  gpu_mtbf_hours: 9\n  restart: 5min\n  checkpoint: async\n"
                                      "  checkpoint_bandwidth: 500GB/s\n  checkpoint_time: 2s\n",
                           "s.yaml")
            .reliability.checkpoint_s == 2);
  CHECK_FALSE(load_scenario_text(training, "s.yaml", {"reliability.gpu_mtbf_hours=9", "reliability.restart=1s", "reliability.checkpoint_time=3s"})
                  .reliability.async);
  CHECK_THAT(error_of(training + "reliability:\n  gpu_mtbf_hours: 9\n  restart: 5min\n  checkpoint: async\n  checkpoint_time: 3s\n"),
             Catch::Contains("reliability: missing checkpoint_bandwidth (the storage's aggregate write rate, e.g. 2TB/s): 'checkpoint: async'"));
  CHECK_THAT(error_of(training + "reliability:\n  gpu_mtbf_hours: 9\n  restart: 5min\n  checkpoint: later\n  checkpoint_time: 3s\n"),
             Catch::Contains("reliability.checkpoint:"));
  // A token budget: training only, a positive count in any notation.
  CHECK(load_scenario_text(training, "s.yaml", {"workload.train_tokens=14.8e12"}).train_tokens == 14.8e12);
  CHECK(load_scenario_text(training, "s.yaml").train_tokens == 0);
  CHECK_THAT(error_of_with(training, {"workload.train_tokens=0"}), Catch::Contains("workload.train_tokens: must be at least 1, got 0"));
  CHECK_THAT(error_of_with(kBase, {"workload.train_tokens=1e12"}), Catch::Contains("workload.train_tokens: only used with 'workload.kind: training'"));
}

TEST_CASE("parallelism.etp splits each expert over GPUs of a node, and is refused where it cannot", "[scenarios][etp]") {
  // kBase: 2 nodes of 8 H100, EP8, experts 14336 wide.
  const auto ok = load_scenario_text(kBase, "s.yaml", {"parallelism.ep=4", "parallelism.etp=2"});
  CHECK(ok.forward.etp == 2);
  CHECK(load_scenario_text(kBase, "s.yaml").forward.etp == 1);
  CHECK(load_scenario_text(kBase, "s.yaml", {"parallelism.ep=1", "parallelism.etp=8"}).forward.etp == 8);
  CHECK_THAT(error_of_with(kBase, {"parallelism.etp=3"}),
             Catch::Contains("parallelism.etp: 3 does not divide the 8 GPUs of a node: an expert tensor-parallel group stays inside a node"));
  CHECK_THAT(error_of_with(kBase, {"parallelism.ep=8", "parallelism.etp=4"}),
             Catch::Contains("parallelism.etp: the 16 GPUs do not divide into blocks of ep x etp = 8 x 4 (each block holds every expert once)"));
  CHECK(load_scenario_text(kBase, "s.yaml", {"parallelism.ep=4", "parallelism.etp=2", "parallelism.pp=2"}).forward.etp == 2);
  CHECK_THAT(error_of_with(kBase, {"parallelism.ep=2", "parallelism.etp=4", "parallelism.pp=4"}),
             Catch::Contains("parallelism.etp: the 4 GPUs of a pipeline stage do not divide into blocks of ep x etp = 2 x 4"));
  CHECK_THAT(error_of_with(kBase, {"parallelism.ep=4", "parallelism.etp=2", "model.expert_ffn=14335"}),
             Catch::Contains("parallelism.etp: 2 does not divide model.expert_ffn (14335)"));
  CHECK(load_scenario_text(kBase, "s.yaml", {"parallelism.ep=4", "parallelism.etp=2", "workload.overlap=two_batch"}).forward.etp == 2);
  CHECK_THAT(error_of_with(kBase, {"parallelism.etp=0"}), Catch::Contains("parallelism.etp"));
  // Hierarchical all-to-all: a node holds 8 / etp of an EP group's ranks.
  CHECK(load_scenario_text(kBase, "s.yaml", {"parallelism.ep=8", "parallelism.etp=2", "network.all_to_all=hierarchical"}).forward.etp == 2);
  CHECK_THAT(error_of_with(kBase, {"parallelism.ep=2", "parallelism.etp=2", "network.all_to_all=hierarchical",
                                   "cluster.gpus_per_node=6"}),
             Catch::Contains("network.all_to_all: hierarchical needs EP groups of whole nodes or inside one node; EP 2 with 3 of its "
                             "ranks per node (6 GPUs, etp 2) is neither"));
}

TEST_CASE("An AMD Instinct GPU brings its mesh node; the fabric's keys and limits are checked", "[scenarios]") {
  using topology::NodeFabric;
  const auto mi = load_scenario_text(with("gpu: H100", "gpu: MI300X"), "s.yaml");
  CHECK(mi.cluster.node.fabric == NodeFabric::mesh);
  CHECK(mi.cluster.node.link_bandwidth == sim::parse_bandwidth("64GB/s"));
  CHECK(mi.cluster.node.link_latency == sim::parse_time("1us"));
  CHECK(load_scenario_text(kBase, "s.yaml").cluster.node.fabric == NodeFabric::nvswitch);
  // Its own links, or a what-if NVSwitch at the GPU's total scale-up bandwidth.
  const auto calibrated = load_scenario_text(with("gpu: H100", "gpu: MI300X\n  node: {link_bandwidth: 48GB/s, link_latency: 2us}"), "s.yaml");
  CHECK(calibrated.cluster.node.link_bandwidth == sim::parse_bandwidth("48GB/s"));
  CHECK(calibrated.cluster.node.link_latency == sim::parse_time("2us"));
  CHECK(load_scenario_text(with("gpu: H100", "gpu: {preset: MI300X, link_bandwidth: 48GB/s}"), "s.yaml").cluster.node.link_bandwidth ==
        sim::parse_bandwidth("48GB/s"));
  const auto switched = load_scenario_text(with("gpu: H100", "gpu: MI300X\n  node: {fabric: nvswitch}"), "s.yaml");
  CHECK(switched.cluster.node.fabric == NodeFabric::nvswitch);
  CHECK(switched.cluster.node.nvlink_bandwidth == sim::parse_bandwidth("448GB/s"));
  // The other fabric's keys are refused.
  CHECK_THAT(error_of(with("gpu: H100", "gpu: MI300X\n  node: {nvlink_latency: 1us}")),
             Catch::Contains("cluster.node.nvlink_latency: only with 'fabric: nvswitch' (this node's fabric is mesh, the MI300X's)"));
  CHECK_THAT(error_of(with("gpu: H100", "gpu: H100\n  node: {link_bandwidth: 64GB/s}")),
             Catch::Contains("cluster.node.link_bandwidth: only with 'fabric: mesh' (this node's fabric is nvswitch, the H100-SXM's)"));
  // Seven links: at most eight GPUs a node.
  CHECK_THAT(error_of(replaced_text(with("gpu: H100", "gpu: MI300X"), "gpus_per_node: 8", "gpus_per_node: 16")),
             Catch::Contains("the MI300X has 7 links, one to each peer of its mesh: at most 8 GPUs a node, got 16"));
  // No switch, no in-switch collectives.
  CHECK_THAT(error_of(replaced_text(with("gpu: H100", "gpu: MI300X"), "  tokens_per_gpu: 1024\n",
                                    "  kind: training\n  gradient_sync: nvls\n  tokens_per_gpu: 1024\n")),
             Catch::Contains("nvls needs an NVSwitch, and this node's GPUs form a mesh with none (cluster.node.fabric: mesh); use hierarchical"));
  CHECK_THAT(error_of(with("gpu: H100", "gpu: H100\n  node: {fabric: mesh}")),
             Catch::Contains("no mesh link bandwidth: set cluster.node.link_bandwidth"));
  // A GPU without a preset on a mesh needs no NVLink bandwidth, only its links'.
  const auto custom = load_scenario_text(
      with("gpu: H100", "gpu: {name: toy, peak_bf16: 100TFLOP/s, memory_bandwidth: 1TB/s}\n  node: {fabric: mesh, link_bandwidth: 50GB/s}"),
      "s.yaml");
  CHECK(custom.cluster.node.link_bandwidth == sim::parse_bandwidth("50GB/s"));
  CHECK_THAT(error_of(with("gpu: H100", "gpu: {name: toy, peak_bf16: 100TFLOP/s, memory_bandwidth: 1TB/s}")),
             Catch::Contains("no NVLink bandwidth: set cluster.node.nvlink_bandwidth"));
}

TEST_CASE("cluster.scale_out.nic_speed slows named GPUs' NICs", "[scenarios]") {
  const auto sc = load_scenario_text(with("    nic_bandwidth: 400Gbps\n", "    nic_bandwidth: 400Gbps\n    nic_speed: {3: 0.5, 12: 0.25}\n"), "s.yaml");
  REQUIRE(sc.cluster.scale_out.nic_speed.size() == 16);
  CHECK(sc.cluster.scale_out.nic_speed[3] == 0.5);
  CHECK(sc.cluster.scale_out.nic_speed[12] == 0.25);
  CHECK(sc.cluster.scale_out.nic_speed[0] == 1.0);
  CHECK(load_scenario_text(kBase, "s.yaml").cluster.scale_out.nic_speed.empty());
  CHECK_THAT(error_of(with("    nic_bandwidth: 400Gbps\n", "    nic_bandwidth: 400Gbps\n    nic_speed: {16: 0.5}\n")),
             Catch::Contains("cluster.scale_out.nic_speed: GPU 16 is not in the cluster (16 GPUs)"));
  CHECK_THAT(error_of(with("    nic_bandwidth: 400Gbps\n", "    nic_bandwidth: 400Gbps\n    nic_speed: {2: 0}\n")),
             Catch::Contains("cluster.scale_out.nic_speed"));
  CHECK_THAT(error_of(with("    nic_bandwidth: 400Gbps\n", "    nic_bandwidth: 400Gbps\n    nic_speed: [0.5]\n")),
             Catch::Contains("expected a mapping of GPU index to speed factor"));
}

TEST_CASE("cluster.power: the GPUs at their rated power unless given, the rest only when given", "[scenarios]") {
  const auto h100 = load_scenario_text(kBase, "s.yaml");
  CHECK(h100.gpu_power_w == 700);
  CHECK(h100.node_power_w == 0);
  CHECK(h100.pue == 1);
  CHECK(load_scenario_text(with("gpu: H100", "gpu: MI300X"), "s.yaml").gpu_power_w == 750);
  const auto given = load_scenario_text(with("gpu: H100", "gpu: H100\n  power: {gpu: 650W, node: 4.6kW, pue: 1.3}"), "s.yaml");
  CHECK(given.gpu_power_w == 650);
  CHECK(given.node_power_w == 4600);
  CHECK(given.pue == 1.3);
  CHECK_THAT(error_of(with("gpu: H100", "gpu: H100\n  power: {pue: 0.9}")), Catch::Contains("cluster.power.pue"));
  CHECK_THAT(error_of(with("gpu: H100", "gpu: H100\n  power: {gpu: 0W}")), Catch::Contains("cluster.power.gpu: must be more than 0W"));
  CHECK_THAT(error_of(with("gpu: H100", "gpu: H100\n  power: {gpus: 700W}")), Catch::Contains("cluster.power.gpus"));
  // A GPU without a preset has no rated power: no power figures, unless given.
  const std::string toy = "gpu: {name: toy, peak_bf16: 100TFLOP/s, memory_bandwidth: 1TB/s, nvlink_bandwidth: 100GB/s}";
  CHECK(load_scenario_text(with("gpu: H100", toy), "s.yaml").gpu_power_w == 0);
  CHECK_THAT(error_of(with("gpu: H100", toy + "\n  power: {pue: 1.2}")), Catch::Contains("the toy has no rated power: give cluster.power.gpu"));
}

TEST_CASE("reliability.spare_nodes goes with a repair time", "[scenarios][reliability]") {
  const std::string training = replaced_text(kBase, "  tokens_per_gpu: 1024\n", "  kind: training\n  tokens_per_gpu: 1024\n");
  const std::string rel = "reliability: {gpu_mtbf_hours: 50000, restart: 10min, checkpoint_time: 30s";
  const auto sc = load_scenario_text(training + rel + ", spare_nodes: 2, repair_time: 24h}\n", "s.yaml");
  CHECK(sc.reliability.spare_nodes == 2);
  CHECK(sc.reliability.repair_s == 86400);
  CHECK_FALSE(load_scenario_text(training + rel + "}\n", "s.yaml").reliability.spares());
  CHECK(load_scenario_text(training + rel + ", spare_nodes: 0, repair_time: 4h}\n", "s.yaml").reliability.spares());
  CHECK_THAT(error_of(training + rel + ", spare_nodes: 2}\n"), Catch::Contains("reliability.spare_nodes: needs repair_time"));
  CHECK_THAT(error_of(training + rel + ", repair_time: 24h}\n"), Catch::Contains("reliability.repair_time: only used with spare_nodes"));
  CHECK_THAT(error_of(training + rel + ", spare_nodes: 1, repair_time: 0s}\n"), Catch::Contains("reliability.repair_time: must be greater than 0"));
}
