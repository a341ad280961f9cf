// model.hf_config: a model's shape read from its Hugging Face config.json.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>

#include <fmt/format.h>

#include "models/moe_costs.hpp"
#include "scenarios/hf_config.hpp"
#include "scenarios/scenario.hpp"

using namespace moesim;
using scenarios::load_scenario_file;
using scenarios::load_scenario_text;
using scenarios::ScenarioError;

namespace {

const std::string kModels = std::string(MOESIM_SOURCE_DIR) + "/scenarios/models/";

// Every field of a model that a run reads, as text, to compare two loads of it.
std::string describe(const routing::MoeModelSpec& m) {
  return fmt::format(
      "name {} moe_layers {} hidden {} expert_ffn {} experts {} top_k {} shared {} dtype {} weights {} experts' {} heads {} kv {} "
      "head_dim {} kv_dim {} kv_bytes {} attention_params {} mla {} {} {} {} {} index {} {} {} mtp {} {} dense {} {} vocab {} "
      "window {} every {} gate {} linear {} {} {} {} {} {}",
      m.name, m.moe_layers, m.hidden, m.expert_ffn, m.experts, m.top_k, m.shared_experts, m.dtype_bytes, m.weight_bytes32,
      m.expert_weight_bytes32, m.attention_heads, m.kv_heads, m.head_dim, m.kv_cache_dim, m.kv_cache_bytes, m.attention_params,
      m.mla.q_lora_rank, m.mla.kv_lora_rank, m.mla.qk_nope_head_dim, m.mla.qk_rope_head_dim, m.mla.v_head_dim, m.mla.index_topk,
      m.mla.index_n_heads, m.mla.index_head_dim, m.mtp_modules, m.mtp_layers, m.dense_layers, m.dense_ffn, m.vocab, m.sliding_window,
      m.full_attention_every, m.output_gate, m.linear.key_heads, m.linear.value_heads, m.linear.key_dim, m.linear.value_dim,
      m.linear.conv_kernel, m.linear.state_bytes);
}

std::string routing_groups(const scenarios::Scenario& sc) {
  const auto& r = sc.forward.routing;
  return fmt::format("groups {} max {} choice {}", r.groups, r.max_groups, static_cast<int>(r.group_choice));
}

// A scenario around a model section, its config.json written beside it.
struct Beside {
  std::string dir;
  explicit Beside(const std::string& json) {
    static int made = 0;
    dir = (std::filesystem::temp_directory_path() / fmt::format("moesim-hf-{}-{}", ::getpid(), ++made)).string();
    std::filesystem::create_directories(dir);
    std::ofstream(dir + "/config.json") << json;
  }
  ~Beside() { std::filesystem::remove_all(dir); }
  scenarios::Scenario load(const std::string& model, const std::string& rest = "", const std::string& kind = "forward") const {
    const std::string path = dir + "/scenario.yaml";
    std::ofstream(path) << "cluster: {nodes: 1, gpus_per_node: 8, gpu: H100}\n"
                        << "model:\n  hf_config: config.json\n"
                        << model << "parallelism: {ep: 8}\n"
                        << "workload: {kind: " << kind << ", tokens_per_gpu: 64" << (kind == "decode" ? ", context_length: 1024" : "")
                        << "}\n"
                        << rest;
    return load_scenario_file(path);
  }
  std::string error(const std::string& model, const std::string& rest = "") const {
    try {
      load(model, rest);
    } catch (const ScenarioError& e) {
      return e.what();
    }
    return "";
  }
};

const std::string kSmall = R"({
  "model_type": "mixtral", "hidden_size": 512, "intermediate_size": 1024, "num_local_experts": 8,
  "num_experts_per_tok": 2, "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 2,
  "vocab_size": 1000, "torch_dtype": "bfloat16"
})";

}  // namespace

TEST_CASE("hf_config: the library's configs give the parameter counts their model cards publish", "[hf_config]") {
  // (file, total, active, whether the card's active count includes the input embedding):
  // Mistral AI, "Mixtral of Experts" (arXiv 2401.04088): 46.7 B, 12.9 B; DeepSeek-V3 technical
  // report: 671 B, 37 B; Qwen3 model cards: 30.5 B / 3.3 B and 235 B / 22 B; OpenAI's gpt-oss
  // model card: 116.83 B, 5.13 B without the embedding; OLMoE (arXiv 2409.02060): 6.9 B, 1.3 B;
  // Qwen1.5-MoE-A2.7B's card: 14.3 B, 2.7 B; Meta's Llama 4 Maverick card: 400 B, 17 B;
  // Databricks' DBRX announcement: 132 B, 36 B; Qwen3.5-397B-A17B's card: 397 B, 17 B.
  struct Card {
    const char* file;
    double total, active;
    bool with_embedding;
  };
  for (const Card& card : {Card{"mixtral-8x7b.json", 46.7e9, 12.9e9, true}, Card{"deepseek-v3.json", 671e9, 37e9, true},
                           Card{"qwen3-30b-a3b.json", 30.5e9, 3.3e9, true}, Card{"qwen3-235b-a22b.json", 235e9, 22e9, true},
                           Card{"gpt-oss-120b.json", 116.83e9, 5.13e9, false}, Card{"olmoe-1b-7b-0924.json", 6.9e9, 1.3e9, true},
                           Card{"qwen1.5-moe-a2.7b.json", 14.3e9, 2.7e9, true}, Card{"llama-4-maverick.json", 400e9, 17e9, true},
                           Card{"dbrx.json", 132e9, 36e9, true}, Card{"qwen3.5-397b-a17b.json", 397e9, 17e9, true}}) {
    INFO(card.file);
    const auto sc = load_scenario_text(fmt::format("cluster: {{nodes: 1, gpus_per_node: 1, gpu: H100}}\nmodel: {{hf_config: '{}'}}\n"
                                                   "parallelism: {{ep: 1}}\nworkload: {{tokens_per_gpu: 1}}\n",
                                                   kModels + card.file),
                                       "card");
    const auto p = models::model_params(sc.forward.model);
    const double active =
        static_cast<double>(p.active) + (card.with_embedding ? static_cast<double>(sc.forward.model.vocab * sc.forward.model.hidden) : 0.0);
    CHECK(std::abs(static_cast<double>(p.total) / card.total - 1) < 0.015);
    CHECK(std::abs(active / card.active - 1) < 0.03);
  }
}

TEST_CASE("hf_config: a config gives the model the library's hand-written scenarios hold", "[hf_config]") {
  struct Pair {
    const char* scenario;
    const char* config;
    std::vector<std::string> more;  // what the scenario sets beside the config's keys
  };
  for (const Pair& p : {Pair{"mixtral-8x7b-training-h100.yaml", "mixtral-8x7b.json", {}},
                        // The scenario trains without the MTP module, and its routing has the config's group limits.
                        Pair{"deepseek-v3-training-2048-h800.yaml", "deepseek-v3.json", {"model.mtp_modules=0"}},
                        Pair{"gpt-oss-120b-decode-h100.yaml", "gpt-oss-120b.json", {}},
                        Pair{"validation/qwen3-30b-training-h100.yaml", "qwen3-30b-a3b.json", {}},
                        Pair{"validation/qwen3-235b-training-h100.yaml", "qwen3-235b-a22b.json", {}}}) {
    INFO(p.scenario);
    const std::string file = std::string(MOESIM_SOURCE_DIR) + "/scenarios/" + p.scenario;
    const auto written = load_scenario_file(file);
    std::vector<std::string> sets{"model=~", "model.hf_config=" + kModels + p.config};
    sets.insert(sets.end(), p.more.begin(), p.more.end());
    const auto read = load_scenario_file(file, sets);
    CHECK(describe(read.forward.model) == describe(written.forward.model));
    CHECK(routing_groups(read) == routing_groups(written));
    CHECK(read.model_config == kModels + p.config);
    CHECK(written.model_config.empty());
  }
}

TEST_CASE("hf_config: each family's keys", "[hf_config]") {
  const auto read = [](const char* file, const char* kind = "forward") { return scenarios::read_hf_model(kModels + file, kind); };
  SECTION("DeepSeek: dense layers first, MLA, the MTP module, group limits, an FP8 checkpoint served as FP8") {
    const auto m = read("deepseek-v3.json", "decode");
    CHECK(m.model["moe_layers"].as<int>() == 58);
    CHECK(m.model["dense_layers"].as<int>() == 3);
    CHECK(m.model["dense_ffn"].as<int>() == 18432);
    CHECK(m.model["mla"]["kv_lora_rank"].as<int>() == 512);
    CHECK(!m.model["kv_heads"].IsDefined());
    CHECK(m.model["mtp_modules"].as<int>() == 1);
    CHECK(m.model["weight_dtype"].as<std::string>() == "fp8");
    CHECK(m.routing["groups"].as<int>() == 8);
    CHECK(m.routing["max_groups"].as<int>() == 4);
    // Training holds its weights at the model's dtype, and says the module trains.
    const auto t = read("deepseek-v3.json", "training");
    CHECK(!t.model["weight_dtype"].IsDefined());
    REQUIRE(t.notes.size() == 2);
    CHECK(t.notes[0].find("multi-token prediction") != std::string::npos);
    CHECK(t.notes[1].find("fp8") != std::string::npos);
  }
  SECTION("Kimi K2 Thinking's INT4 experts (compressed-tensors) as fp4's bytes; an unknown scheme a note") {
    YAML::Node c = YAML::LoadFile(kModels + "kimi-k2.json");
    c["quantization_config"] = YAML::Load(R"({"quant_method": "compressed-tensors", "format": "pack-quantized",
      "config_groups": {"group_0": {"targets": ["Linear"], "weights": {"num_bits": 4, "type": "int", "group_size": 32,
      "strategy": "group", "symmetric": true}}}, "ignore": ["lm_head", "re:.*self_attn.*", "re:.*shared_experts.*"]})");
    const auto m = scenarios::hf_model(c, "k2-thinking.json", "decode");
    CHECK(m.model["expert_weight_dtype"].as<std::string>() == "fp4");
    CHECK(!m.model["weight_dtype"].IsDefined());
    c["quantization_config"]["config_groups"]["group_0"]["weights"]["group_size"] = 128;
    const auto other = scenarios::hf_model(c, "k2-thinking.json", "decode");
    CHECK(!other.model["expert_weight_dtype"].IsDefined());
    CHECK(other.notes.back().find("quantization_config (compressed-tensors) is not read") != std::string::npos);
  }
  SECTION("NVIDIA Model Optimizer's NVFP4 and mixed releases; its hf_quant_config.json beside the config") {
    YAML::Node c = YAML::LoadFile(kModels + "deepseek-v3.json");
    // DeepSeek-R1-FP4's way: the experts in NVFP4, the attention left out, an FP8 KV cache.
    c["quantization_config"] = YAML::Load(R"({"quant_method": "modelopt", "quant_algo": "NVFP4", "group_size": 16,
      "kv_cache_quant_algo": "FP8", "exclude_modules": ["lm_head", "model.layers.0.self_attn*", "model.layers.1.self_attn*"]})");
    const auto r1 = scenarios::hf_model(c, "r1-fp4.json", "decode");
    CHECK(r1.model["expert_weight_dtype"].as<std::string>() == "fp4");
    CHECK(!r1.model["weight_dtype"].IsDefined());
    CHECK(r1.model["kv_cache_dtype"].as<std::string>() == "fp8");
    // Every linear layer in NVFP4 (nothing left out); training keeps its dtype and says so.
    c["quantization_config"] = YAML::Load(R"({"quant_method": "modelopt_fp4", "quant_algo": "NVFP4", "exclude_modules": ["lm_head"]})");
    const auto all = scenarios::hf_model(c, "all-fp4.json", "decode");
    CHECK(all.model["weight_dtype"].as<std::string>() == "fp4");
    CHECK(!all.model["expert_weight_dtype"].IsDefined());
    CHECK(!all.model["kv_cache_dtype"].IsDefined());
    const auto trained = scenarios::hf_model(c, "all-fp4.json", "training");
    CHECK(!trained.model["weight_dtype"].IsDefined());
    CHECK(trained.notes.back().find("NVIDIA Model Optimizer") != std::string::npos);
    // MIXED_PRECISION: the routed experts NVFP4, the attention and shared experts FP8.
    c["quantization_config"] = YAML::Load(R"({"quant_method": "modelopt", "quant_algo": "MIXED_PRECISION", "quantized_layers": {
      "model.layers.3.self_attn.q_a_proj": {"quant_algo": "FP8"}, "model.layers.3.mlp.shared_experts.down_proj": {"quant_algo": "FP8"},
      "model.layers.3.mlp.experts": {"quant_algo": "NVFP4", "group_size": 16}}})");
    const auto mixed = scenarios::hf_model(c, "mixed.json", "decode");
    CHECK(mixed.model["expert_weight_dtype"].as<std::string>() == "fp4");
    CHECK(mixed.model["weight_dtype"].as<std::string>() == "fp8");
    // The experts left out, the rest FP8: the experts keep the checkpoint's dtype.
    c["quantization_config"] = YAML::Load(R"({"quant_method": "modelopt", "quant_algo": "MIXED_PRECISION", "quantized_layers": {
      "model.layers.3.self_attn.q_a_proj": {"quant_algo": "FP8"}}})");
    const auto attention_only = scenarios::hf_model(c, "mixed.json", "decode");
    CHECK(attention_only.model["weight_dtype"].as<std::string>() == "fp8");
    CHECK(attention_only.model["expert_weight_dtype"].as<std::string>() == "bf16");
    // An algorithm moesim has no dtype for: a note, as any other scheme.
    c["quantization_config"] = YAML::Load(R"({"quant_method": "modelopt", "quant_algo": "INT4_AWQ"})");
    CHECK(scenarios::hf_model(c, "awq.json", "decode").notes.back().find("quantization_config (modelopt) is not read") != std::string::npos);
    // An older export: the config without quantization_config, hf_quant_config.json beside it.
    YAML::Node plain = YAML::LoadFile(kModels + "deepseek-v3.json");
    plain.remove("quantization_config");
    const Beside folder(YAML::Dump(plain));
    std::ofstream(folder.dir + "/hf_quant_config.json")
        << R"({"producer": {"name": "modelopt"}, "quantization": {"quant_algo": "NVFP4", "kv_cache_quant_algo": "FP8",
               "exclude_modules": ["model.layers.*.self_attn*"]}})";
    const auto old = scenarios::read_hf_model(folder.dir, "decode");
    CHECK(old.model["expert_weight_dtype"].as<std::string>() == "fp4");
    CHECK(old.model["kv_cache_dtype"].as<std::string>() == "fp8");
    CHECK(!scenarios::read_hf_model(folder.dir, "training").model["expert_weight_dtype"].IsDefined());
  }
  SECTION("DeepSeek-V3.2: the sparse attention's indexer") {
    const auto m = read("deepseek-v3.2-exp.json");
    CHECK(m.model["mla"]["index_topk"].as<int>() == 2048);
    CHECK(m.model["mla"]["index_n_heads"].as<int>() == 64);
  }
  SECTION("Kimi K2: one dense layer, one group (no group limit)") {
    const auto m = read("kimi-k2.json");
    CHECK(m.model["dense_layers"].as<int>() == 1);
    CHECK(m.model["experts"].as<int>() == 384);
    CHECK(!m.routing.IsMap());
    CHECK(!m.model["mtp_modules"].IsDefined());
  }
  SECTION("GPT-OSS: alternating sliding layers, MXFP4 experts") {
    const auto m = read("gpt-oss-120b.json", "decode");
    CHECK(m.model["sliding_window"].as<int>() == 128);
    CHECK(m.model["full_attention_every"].as<int>() == 2);
    CHECK(m.model["expert_weight_dtype"].as<std::string>() == "mxfp4");
    CHECK(m.model["top_k"].as<int>() == 4);
  }
  SECTION("Qwen2-MoE: the wide shared expert as routed-width experts; use_sliding_window false") {
    const auto m = read("qwen1.5-moe-a2.7b.json");
    CHECK(m.model["shared_experts"].as<int>() == 4);
    CHECK(!m.model["sliding_window"].IsDefined());
    REQUIRE(m.notes.size() == 1);
  }
  SECTION("Llama 4: the text model, every other layer dense and interleaved, a shared expert, chunked attention") {
    const auto m = read("llama-4-maverick.json");
    CHECK(m.model_type == "llama4_text");
    CHECK(m.model["moe_layers"].as<int>() == 24);
    CHECK(m.model["dense_layers"].as<int>() == 24);
    CHECK(m.model["dense_ffn"].as<int>() == 16384);
    CHECK(m.model["expert_ffn"].as<int>() == 8192);
    CHECK(m.model["shared_experts"].as<int>() == 1);
    CHECK(m.model["sliding_window"].as<int>() == 8192);
    CHECK(m.model["full_attention_every"].as<int>() == 4);
    CHECK(m.notes.size() == 3);
  }
  SECTION("GLM-4.5: head_dim wider than hidden / heads") {
    const auto m = read("glm-4.5-air.json");
    CHECK(m.model["head_dim"].as<int>() == 128);
    CHECK(m.model["attention_heads"].as<int>() == 96);
    CHECK(m.model["dense_layers"].as<int>() == 1);
  }
  SECTION("Qwen's decoder_sparse_step and mlp_only_layers") {
    const YAML::Node c = YAML::Load(R"({"model_type": "qwen2_moe", "hidden_size": 64, "intermediate_size": 256,
      "moe_intermediate_size": 32, "num_experts": 8, "num_experts_per_tok": 2, "num_hidden_layers": 8,
      "num_attention_heads": 4, "decoder_sparse_step": 2, "mlp_only_layers": [5]})");
    const auto m = scenarios::hf_model(c, "q.json", "forward");
    CHECK(m.model["moe_layers"].as<int>() == 3);  // layers 1, 3, 7
    CHECK(m.model["dense_layers"].as<int>() == 5);
    CHECK(m.model["dense_ffn"].as<int>() == 256);
  }
  SECTION("ERNIE 4.5's names: moe_num_experts, moe_k, moe_layer_start_index, a tied embedding") {
    // ERNIE-4.5-21B-A3B's config.json (baidu/ERNIE-4.5-21B-A3B-PT).
    const YAML::Node c = YAML::Load(R"({"model_type": "ernie4_5_moe", "hidden_size": 2560, "intermediate_size": 12288,
      "num_attention_heads": 20, "num_key_value_heads": 4, "head_dim": null, "num_hidden_layers": 28, "vocab_size": 103424,
      "tie_word_embeddings": true, "moe_num_experts": 64, "moe_layer_start_index": 1, "moe_intermediate_size": 1536,
      "moe_k": 6, "moe_layer_interval": 1, "moe_num_shared_experts": 2, "moe_layer_end_index": null})");
    const auto m = scenarios::hf_model(c, "ernie.json", "forward");
    CHECK(m.model["moe_layers"].as<int>() == 27);
    CHECK(m.model["dense_layers"].as<int>() == 1);
    CHECK(m.model["experts"].as<int>() == 64);
    CHECK(m.model["top_k"].as<int>() == 6);
    CHECK(m.model["shared_experts"].as<int>() == 2);
    CHECK(m.model["kv_heads"].as<int>() == 4);
    CHECK(!m.model["head_dim"].IsDefined());
    REQUIRE(m.notes.size() == 1);
    CHECK(m.notes[0].find("ties the embedding") != std::string::npos);
    // Every second layer from the fourth to the eleventh ((i + 1) % 2 == 0): 3, 5, 7, 9.
    YAML::Node every = YAML::Clone(c);
    every["moe_layer_interval"] = 2;
    every["moe_layer_start_index"] = YAML::Load("[3, 4]");
    every["moe_layer_end_index"] = YAML::Load("[9, 10]");
    CHECK(scenarios::hf_model(every, "ernie.json", "forward").model["moe_layers"].as<int>() == 4);
  }
  SECTION("DBRX: its experts' keys in ffn_config, its kv heads in attn_config") {
    const auto m = read("dbrx.json");
    CHECK(m.model["experts"].as<int>() == 16);
    CHECK(m.model["top_k"].as<int>() == 4);
    CHECK(m.model["expert_ffn"].as<int>() == 10752);
    CHECK(m.model["kv_heads"].as<int>() == 8);
    CHECK(m.model["hidden"].as<int>() == 6144);
    CHECK(m.model["moe_layers"].as<int>() == 40);
  }
  SECTION("Hunyuan's per-layer lists: one value for every layer, or refused") {
    YAML::Node c = YAML::Load(R"({"model_type": "hunyuan_v1_moe", "hidden_size": 256, "intermediate_size": 512,
      "num_experts": 8, "moe_topk": [2, 2, 2], "moe_intermediate_size": [128, 128, 128], "num_shared_expert": [1, 1, 1],
      "num_hidden_layers": 3, "num_attention_heads": 4})");
    const auto m = scenarios::hf_model(c, "h.json", "forward");
    CHECK(m.model["top_k"].as<int>() == 2);
    CHECK(m.model["expert_ffn"].as<int>() == 128);
    CHECK(m.model["shared_experts"].as<int>() == 1);
    c["moe_topk"] = YAML::Load("[2, 4, 2]");
    CHECK_THROWS_WITH(scenarios::hf_model(c, "h.json", "forward"),
                      Catch::Contains("moe_topk: differs between layers (2 and 4): moesim's layers share one shape"));
  }
  SECTION("MiniMax-M2: softmax attention on every layer, its MTP modules a note; M1's lightning layers refused") {
    // MiniMax-M2's config.json (MiniMaxAI/MiniMax-M2): 230 B parameters, 10 B active.
    YAML::Node c = YAML::Load(R"({"model_type": "minimax_m2", "hidden_size": 3072, "intermediate_size": 1536,
      "num_hidden_layers": 62, "num_attention_heads": 48, "num_key_value_heads": 8, "head_dim": 128, "num_local_experts": 256,
      "num_experts_per_tok": 8, "vocab_size": 200064, "use_mtp": true, "num_mtp_modules": 3, "tie_word_embeddings": false})");
    std::string ones = "[1";
    for (int i = 1; i < 62; ++i) ones += ", 1";
    c["attn_type_list"] = YAML::Load(ones + "]");
    const auto m = scenarios::hf_model(c, "minimax-m2.json", "forward");
    CHECK(m.model["experts"].as<int>() == 256);
    CHECK(m.model["expert_ffn"].as<int>() == 1536);
    REQUIRE(m.notes.size() == 1);
    CHECK(m.notes[0].find("num_mtp_modules") != std::string::npos);
    c["attn_type_list"][0] = 0;
    CHECK_THROWS_WITH(scenarios::hf_model(c, "minimax.json", "forward"), Catch::Contains("attn_type_list: has linear-attention layers"));
  }
  SECTION("the YAML it prints holds every key with its source") {
    const auto m = read("deepseek-v3.json");
    const std::string yaml = scenarios::hf_model_yaml(m);
    CHECK(yaml.find("  moe_layers: 58") != std::string::npos);
    CHECK(yaml.find("# num_hidden_layers 61 of which first_k_dense_replace 3") != std::string::npos);
    CHECK(yaml.find("    kv_lora_rank: 512") != std::string::npos);
    CHECK(yaml.find("routing:\n  groups: 8") != std::string::npos);
    // It loads as a scenario's model and routing, the same model as the config.
    const auto a = load_scenario_text("cluster: {nodes: 1, gpus_per_node: 8, gpu: H100}\n" + yaml + "parallelism: {ep: 8}\n"
                                      "workload: {tokens_per_gpu: 64}\n", "printed");
    const auto b = load_scenario_text(fmt::format("cluster: {{nodes: 1, gpus_per_node: 8, gpu: H100}}\nmodel: {{hf_config: '{}'}}\n"
                                                  "parallelism: {{ep: 8}}\nworkload: {{tokens_per_gpu: 64}}\n",
                                                  kModels + "deepseek-v3.json"),
                                      "read");
    CHECK(describe(a.forward.model) == describe(b.forward.model));
    CHECK(routing_groups(a) == routing_groups(b));
  }
}

TEST_CASE("hf_config: the scenario's own keys win, and problems name the config's key", "[hf_config]") {
  const Beside small(kSmall);
  const auto sc = small.load("  moe_layers: 2\n  name: mine\n");
  CHECK(sc.forward.model.moe_layers == 2);
  CHECK(sc.forward.model.name == "mine");
  CHECK(sc.forward.model.hidden == 512);
  CHECK(sc.forward.model.kv_heads == 2);
  CHECK(sc.forward.model.vocab == 1000);
  CHECK(sc.model_config == small.dir + "/config.json");
  // Named after its folder (a config.json without _name_or_path).
  CHECK(small.load("").forward.model.name == std::filesystem::path(small.dir).filename().string());
  // The folder itself, as a Hugging Face snapshot is laid out, reads its config.json.
  const auto folder = load_scenario_file(small.dir + "/scenario.yaml", {"model.hf_config=" + small.dir});
  CHECK(folder.forward.model.hidden == 512);
  CHECK(folder.forward.model.name == std::filesystem::path(small.dir).filename().string());

  // A value from the config that the scenario cannot take: the problem points at hf_config's
  // line and names the config's key.
  const Beside wrong(R"({"hidden_size": 512, "intermediate_size": 1024, "num_local_experts": 4, "num_experts_per_tok": 6,
                         "num_hidden_layers": 4, "num_attention_heads": 8})");
  const std::string e = wrong.error("");
  CHECK(e.find("scenario.yaml:3:14: model.top_k (from config.json: num_experts_per_tok)") != std::string::npos);
  // The same config given on the command line: the problem names the option.
  try {
    load_scenario_file(small.dir + "/scenario.yaml", {"model.hf_config=" + wrong.dir + "/config.json"});
    FAIL("loaded");
  } catch (const ScenarioError& x) {
    CHECK(std::string(x.what()).find("scenario.yaml: --set model.hf_config: model.top_k (from config.json: num_experts_per_tok)") !=
          std::string::npos);
  }
  // A narrowed model keeps the config's head width (Qwen3's 128, not hidden / heads).
  const auto qwen = load_scenario_file(small.dir + "/scenario.yaml",
                                       {"model.hf_config=" + kModels + "qwen3-30b-a3b.json", "model.hidden=512"});
  CHECK(qwen.forward.model.head_dim == 128);

  // The scenario's routing groups win over the config's.
  const Beside grouped(R"({"hidden_size": 512, "moe_intermediate_size": 256, "intermediate_size": 1024, "n_routed_experts": 16,
                           "num_experts_per_tok": 4, "num_hidden_layers": 4, "num_attention_heads": 8, "n_group": 4, "topk_group": 2,
                           "kv_lora_rank": 64, "q_lora_rank": null, "qk_nope_head_dim": 32, "qk_rope_head_dim": 16, "v_head_dim": 32})");
  CHECK(grouped.load("").forward.routing.max_groups == 2);
  CHECK(grouped.load("").forward.routing.groups == 4);
  CHECK(grouped.load("").forward.model.mla.q_lora_rank == 0);
  CHECK(grouped.load("", "routing: {groups: 2, max_groups: 1}\n").forward.routing.max_groups == 1);
  CHECK(grouped.load("", "routing: {distribution: zipf, zipf_s: 1}\n").forward.routing.max_groups == 2);
  // A trace fixes the routing: no group limit from the config.
  {
    std::ofstream(grouped.dir + "/counts.csv") << "layer,expert,count\n";
    std::ofstream counts(grouped.dir + "/counts.csv", std::ios::app);
    for (int l = 0; l < 4; ++l)
      for (int e = 0; e < 16; ++e) counts << l << ',' << e << ',' << e + 1 << '\n';
  }
  CHECK(grouped.load("", "routing: {distribution: trace, trace: counts.csv}\n").forward.routing.max_groups == 0);
}

TEST_CASE("hf_config: what it cannot represent is refused with the reason", "[hf_config]") {
  const auto refused = [](const std::string& json) {
    const Beside b(json);
    return b.error("");
  };
  const std::string dense = R"({"hidden_size": 512, "intermediate_size": 1024, "num_hidden_layers": 4, "num_attention_heads": 8})";
  CHECK(refused(dense).find("model.hf_config: ") != std::string::npos);
  CHECK(refused(dense).find("not an MoE model") != std::string::npos);
  const std::string linear = R"({"hidden_size": 512, "intermediate_size": 1024, "num_local_experts": 4, "num_experts_per_tok": 2,
    "num_hidden_layers": 2, "num_attention_heads": 8, "layer_types": ["linear_attention", "full_attention"]})";
  CHECK(refused(linear).find("layer_types: has 'linear_attention' layers") != std::string::npos);
  const std::string shared = R"({"hidden_size": 512, "intermediate_size": 1024, "moe_intermediate_size": 96, "num_experts": 4,
    "num_experts_per_tok": 2, "num_hidden_layers": 2, "num_attention_heads": 8, "shared_expert_intermediate_size": 200})";
  CHECK(refused(shared).find("shared_expert_intermediate_size: 200 is not a multiple of the routed experts' 96") != std::string::npos);
  const std::string irregular = R"({"hidden_size": 512, "intermediate_size": 1024, "num_local_experts": 4, "num_experts_per_tok": 2,
    "num_hidden_layers": 3, "num_attention_heads": 8, "sliding_window": 64,
    "layer_types": ["sliding_attention", "full_attention", "full_attention"]})";
  CHECK(refused(irregular).find("not every n-th layer") != std::string::npos);
  CHECK(refused(R"({"hidden_size": 512, "num_local_experts": 4})").find("no layer count (looked for num_hidden_layers") != std::string::npos);
  CHECK(refused(R"({"hidden_size": "wide"})").find("hidden_size: expected a whole number, got 'wide'") != std::string::npos);
  CHECK(refused("{ not json").find("not valid JSON") != std::string::npos);
  CHECK(refused("[1, 2]").find("expected a JSON object") != std::string::npos);

  try {
    load_scenario_text("cluster: {nodes: 1, gpus_per_node: 8, gpu: H100}\nmodel: {hf_config: nowhere.json}\nparallelism: {ep: 8}\n"
                       "workload: {tokens_per_gpu: 64, kind: trainnig}\n",
                       "s.yaml");
    FAIL("loaded");
  } catch (const ScenarioError& e) {
    // The file's problem, and the rest of the scenario's still.
    CHECK(e.problems().size() == 2);
    CHECK(std::string(e.what()).find("s.yaml:2:20: model.hf_config: nowhere.json: cannot open the model's config.json") != std::string::npos);
    CHECK(std::string(e.what()).find("workload.kind") != std::string::npos);
  }
}

TEST_CASE("hf_config: Gated DeltaNet's hybrid models (Qwen3-Next, Qwen3.5)", "[hf_config][linear]") {
  // Qwen3-Next-80B-A3B: its language model counted tensor by tensor (Hugging Face's
  // Qwen3NextForCausalLM, the MTP layer aside) has 79,674,391,296 parameters, of which 310,016 are
  // norms, the shared experts' gates, A_log and dt_bias, which moesim leaves out (48 x 2 x 2048 +
  // 48 x 2048 + 12 x 2 x 256 + 36 x 128 + 36 x 64 + 2048).
  const auto sc = load_scenario_text(fmt::format("cluster: {{nodes: 1, gpus_per_node: 1, gpu: H100}}\nmodel: {{hf_config: '{}'}}\n"
                                                 "parallelism: {{ep: 1}}\nworkload: {{tokens_per_gpu: 1}}\n",
                                                 kModels + "qwen3-next-80b-a3b.json"),
                                     "qwen3-next");
  const auto& m = sc.forward.model;
  CHECK(m.linear.key_heads == 16);
  CHECK(m.linear.value_heads == 32);
  CHECK(m.linear.key_dim == 128);
  CHECK(m.linear.value_dim == 128);
  CHECK(m.linear.conv_kernel == 4);
  CHECK(m.linear.state_bytes == 4);
  CHECK(m.full_attention_every == 4);
  // The full layers' gated attention: query and gate 2 x 16 x 256, keys and values 2 x 256 each.
  CHECK(m.output_gate);
  CHECK(m.attention_params == 0);
  CHECK(routing::attention_weights(m) == 2048LL * (8192 + 1024) + 4096LL * 2048);
  const auto p = models::model_params(m);
  CHECK(p.total == 79'674'391'296 - 310'016);
  // Active (ten experts of 512 and the shared one): 3,874,929,408 so counted, less the input
  // embedding (311,164,928) and the same 310,016.
  CHECK(p.active == 3'874'929'408 - 311'164'928 - 310'016);

  // --set KEY=~ takes the config's value away: the same model with every layer attending fully.
  const auto full = load_scenario_text(fmt::format("cluster: {{nodes: 1, gpus_per_node: 1, gpu: H100}}\nmodel: {{hf_config: '{}'}}\n"
                                                   "parallelism: {{ep: 1}}\nworkload: {{tokens_per_gpu: 1}}\n",
                                                   kModels + "qwen3-next-80b-a3b.json"),
                                       "qwen3-next", {"model.linear_attention=~", "model.full_attention_every=~"});
  CHECK_FALSE(routing::has_linear_attention(full.forward.model));
  CHECK(full.forward.model.full_attention_every == 0);
  CHECK(full.forward.model.output_gate);

  // Qwen3.5's layout: the language model in text_config, the layers' kinds listed.
  const Beside qwen35(R"({"model_type": "qwen3_5_moe", "text_config": {"model_type": "qwen3_5_moe_text", "hidden_size": 512,
    "num_hidden_layers": 8, "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 64, "num_experts": 8,
    "num_experts_per_tok": 2, "moe_intermediate_size": 128, "shared_expert_intermediate_size": 128, "vocab_size": 1000,
    "attn_output_gate": true, "linear_num_key_heads": 4, "linear_num_value_heads": 8, "linear_key_head_dim": 32,
    "linear_value_head_dim": 32, "linear_conv_kernel_dim": 4, "mamba_ssm_dtype": "bfloat16", "mtp_num_hidden_layers": 1,
    "layer_types": ["linear_attention", "linear_attention", "linear_attention", "full_attention",
                    "linear_attention", "linear_attention", "linear_attention", "full_attention"]}})");
  const auto s35 = qwen35.load("");
  CHECK(s35.forward.model.full_attention_every == 4);
  CHECK(s35.forward.model.linear.state_bytes == 2);
  CHECK(s35.forward.model.output_gate);
  CHECK(routing::attention_weights(s35.forward.model) == 512LL * (2 * 512 + 2 * 128) + 512LL * 512);
  // With tensor parallelism its 2 kv heads are each held by 2 of 4 GPUs: a GPU's share is a
  // quarter of the query, gate and output projections and one kv head's keys and values.
  auto tp4 = s35.forward.model;
  tp4.tp = 4;
  CHECK(routing::attention_weights(tp4) == 512LL * (2 * 128 + 2 * 64) + 128LL * 512);

  const auto refused = [](const std::string& json) {
    const Beside b(json);
    return b.error("");
  };
  const std::string base = R"("hidden_size": 512, "num_hidden_layers": 4, "num_attention_heads": 8, "num_experts": 8,
    "num_experts_per_tok": 2, "moe_intermediate_size": 128, "linear_num_key_heads": 4, "linear_num_value_heads": 8,
    "linear_key_head_dim": 32, "linear_value_head_dim": 32)";
  CHECK(refused("{" + base + "}").find("its layers' kinds are not given") != std::string::npos);
  CHECK(refused("{" + base + R"(, "layer_types": ["linear_attention", "full_attention", "full_attention", "linear_attention"]})")
            .find("not every n-th layer") != std::string::npos);
  CHECK(refused(R"({"hidden_size": 512, "num_hidden_layers": 4, "num_attention_heads": 8, "num_experts": 8, "num_experts_per_tok": 2,
    "moe_intermediate_size": 128, "linear_num_value_heads": 8, "full_attention_interval": 4})")
            .find("linear_num_key_heads: missing") != std::string::npos);
  // Kimi Linear's delta attention (KDA, channel-wise gates, MLA beside it) is another kind.
  CHECK(refused(R"({"hidden_size": 512, "num_hidden_layers": 4, "num_attention_heads": 8, "num_experts": 8, "num_experts_per_tok": 2,
    "moe_intermediate_size": 128, "linear_attn_config": {"kda_layers": [1, 2, 3]}})")
            .find("linear_attn_config") != std::string::npos);
}
