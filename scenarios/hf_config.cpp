#include "scenarios/hf_config.hpp"

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <optional>
#include <sstream>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace moesim::scenarios {
namespace {

// Reads config.json's keys, remembering which one gave each value.
class Config {
 public:
  Config(YAML::Node node, std::string file) : node_(std::move(node)), file_(std::move(file)) {}

  const YAML::Node& node() const { return node_; }
  const std::string& file() const { return file_; }

  // The value of `key`, or an undefined node where it is absent or null.
  YAML::Node at(const char* key) const {
    const YAML::Node v = node_[key];
    return v.IsDefined() && !v.IsNull() ? v : YAML::Node(YAML::NodeType::Undefined);
  }
  bool has(const char* key) const { return at(key).IsDefined(); }

  // A whole number at `key` (JSON's 61 or 61.0; or a list of one number per layer, all the same,
  // as Hunyuan's configs give them), or nullopt where absent or null.
  std::optional<std::int64_t> count(const char* key) const {
    const YAML::Node v = at(key);
    if (!v.IsDefined()) return std::nullopt;
    if (v.IsSequence() && v.size() > 0) {
      std::optional<std::int64_t> all;
      for (const auto& e : v) {
        const std::int64_t x = whole(key, e);
        if (all && *all != x)
          throw error(key, fmt::format("differs between layers ({} and {}): moesim's layers share one shape", *all, x));
        all = x;
      }
      return all;
    }
    return whole(key, v);
  }
  // The same in a nested object (DBRX's ffn_config).
  std::optional<std::int64_t> count_in(const char* section, const char* key) const {
    const YAML::Node s = at(section);
    if (!s.IsDefined() || !s.IsMap()) return std::nullopt;
    return Config(s, file_ + ": " + section).count(key);
  }
  // The first of `keys` present, with its name.
  std::optional<std::pair<std::string, std::int64_t>> first_count(std::initializer_list<const char*> keys) const {
    for (const char* k : keys)
      if (auto v = count(k)) return std::pair<std::string, std::int64_t>(k, *v);
    return std::nullopt;
  }
  std::optional<std::string> text(const char* key) const {
    const YAML::Node v = at(key);
    if (!v.IsDefined()) return std::nullopt;
    if (!v.IsScalar()) throw error(key, "expected a text");
    return v.Scalar();
  }
  bool flag(const char* key, bool fallback) const {
    const YAML::Node v = at(key);
    if (!v.IsDefined()) return fallback;
    if (!v.IsScalar() || (v.Scalar() != "true" && v.Scalar() != "false")) throw error(key, "expected true or false");
    return v.Scalar() == "true";
  }
  // A list of texts or numbers, as texts; nullopt where absent.
  std::optional<std::vector<std::string>> list(const char* key) const {
    const YAML::Node v = at(key);
    if (!v.IsDefined()) return std::nullopt;
    if (!v.IsSequence()) throw error(key, "expected a list");
    std::vector<std::string> out;
    for (const auto& e : v) {
      if (!e.IsScalar()) throw error(key, "expected a list of values");
      out.push_back(e.Scalar());
    }
    return out;
  }

  std::int64_t whole(const char* key, const YAML::Node& v) const {
    if (!v.IsScalar()) throw error(key, fmt::format("expected a number, got {}", v.IsMap() ? "an object" : "a list"));
    const std::string& s = v.Scalar();
    try {
      std::size_t used = 0;
      const double d = std::stod(s, &used);
      if (used == s.size() && d == static_cast<double>(static_cast<std::int64_t>(d))) return static_cast<std::int64_t>(d);
    } catch (const std::exception&) {
    }
    throw error(key, fmt::format("expected a whole number, got '{}'", s));
  }

  HfConfigError error(std::string_view key, std::string_view msg) const {
    return HfConfigError(fmt::format("{}: {}: {}", file_, key, msg));
  }
  HfConfigError error(std::string_view msg) const { return HfConfigError(fmt::format("{}: {}", file_, msg)); }

 private:
  YAML::Node node_;
  std::string file_;
};

class Builder {
 public:
  explicit Builder(HfModel& out) : out_(out) {
    out_.model = YAML::Node(YAML::NodeType::Map);
  }
  template <class T>
  void model(const std::string& key, const T& value, std::string source) {
    out_.model[key] = value;
    out_.sources.emplace_back("model." + key, std::move(source));
  }
  template <class T>
  void mla(const std::string& key, const T& value, std::string source) {
    if (!out_.model["mla"].IsDefined()) out_.model["mla"] = YAML::Node(YAML::NodeType::Map);
    out_.model["mla"][key] = value;
    out_.sources.emplace_back("model.mla." + key, std::move(source));
  }
  template <class T>
  void linear(const std::string& key, const T& value, std::string source) {
    if (!out_.model["linear_attention"].IsDefined()) out_.model["linear_attention"] = YAML::Node(YAML::NodeType::Map);
    out_.model["linear_attention"][key] = value;
    out_.sources.emplace_back("model.linear_attention." + key, std::move(source));
  }
  template <class T>
  void routing(const std::string& key, const T& value, std::string source) {
    if (!out_.routing.IsDefined() || out_.routing.IsNull()) out_.routing = YAML::Node(YAML::NodeType::Map);
    out_.routing[key] = value;
    out_.sources.emplace_back("routing." + key, std::move(source));
  }
  void note(std::string text) { out_.notes.push_back(std::move(text)); }

 private:
  HfModel& out_;
};

// The name a model goes by: the repository it was saved from, else the file's (or, for a file
// named config.json, its folder's).
std::string model_name(const Config& root, const std::string& file) {
  if (auto n = root.text("_name_or_path"); n && !n->empty()) {
    const auto slash = n->find_last_of('/');
    const std::string base = slash == std::string::npos ? *n : n->substr(slash + 1);
    if (!base.empty()) return base;
  }
  const std::filesystem::path p(file);
  if (p.stem() == "config") {
    const std::string folder = std::filesystem::absolute(p).parent_path().filename().string();
    if (!folder.empty()) return folder;
  }
  return p.stem().string();
}

// Layers' indices as "3, 5 and 7" (the first few of a long list).
std::string indices(const std::vector<int>& v) {
  std::vector<std::string> s;
  for (std::size_t i = 0; i < v.size() && i < 6; ++i) s.push_back(std::to_string(v[i]));
  if (v.size() > 6) return fmt::format("{}, ...", fmt::join(s, ", "));
  return fmt::format("{}", fmt::join(s, ", "));
}

// Which layers are MoE layers, by the keys each family uses to say so, and how that was read.
std::pair<std::vector<bool>, std::string> moe_layout(const Config& c, int layers, const std::string& model_type) {
  std::vector<bool> moe(static_cast<std::size_t>(layers), true);
  const auto check_list = [&](const char* key, const std::vector<std::string>& v) {
    if (static_cast<int>(v.size()) != layers)
      throw c.error(key, fmt::format("has {} entries for {} layers (num_hidden_layers)", v.size(), layers));
  };
  if (auto types = c.list("mlp_layer_types")) {
    check_list("mlp_layer_types", *types);
    for (int i = 0; i < layers; ++i) {
      const std::string& t = (*types)[static_cast<std::size_t>(i)];
      if (t != "sparse" && t != "dense") throw c.error("mlp_layer_types", fmt::format("layer {} is '{}': expected 'dense' or 'sparse'", i, t));
      moe[static_cast<std::size_t>(i)] = t == "sparse";
    }
    return {moe, "mlp_layer_types"};
  }
  if (c.has("first_k_dense_replace") || model_type.rfind("deepseek", 0) == 0) {
    // DeepSeek's rule (and GLM-4.5's, Kimi K2's): layer i has experts if i >= first_k_dense_replace
    // and i % moe_layer_freq == 0.
    const std::int64_t k = c.count("first_k_dense_replace").value_or(0);
    const std::int64_t freq = c.count("moe_layer_freq").value_or(1);
    if (freq < 1) throw c.error("moe_layer_freq", "must be at least 1");
    for (int i = 0; i < layers; ++i) moe[static_cast<std::size_t>(i)] = i >= k && i % freq == 0;
    return {moe, freq == 1 ? fmt::format("first_k_dense_replace {}", k)
                           : fmt::format("first_k_dense_replace {}, moe_layer_freq {}", k, freq)};
  }
  if (c.has("decoder_sparse_step") || c.has("mlp_only_layers")) {
    // Qwen's rule: layer i has experts unless listed in mlp_only_layers, and if (i + 1) is a
    // multiple of decoder_sparse_step.
    const std::int64_t step = c.count("decoder_sparse_step").value_or(1);
    if (step < 1) throw c.error("decoder_sparse_step", "must be at least 1");
    std::vector<int> only;
    for (const auto& s : c.list("mlp_only_layers").value_or(std::vector<std::string>{})) {
      try {
        only.push_back(std::stoi(s));
      } catch (const std::exception&) {
        throw c.error("mlp_only_layers", fmt::format("expected layer numbers, got '{}'", s));
      }
    }
    for (int i = 0; i < layers; ++i)
      moe[static_cast<std::size_t>(i)] = (i + 1) % step == 0 && std::find(only.begin(), only.end(), i) == only.end();
    std::string how = fmt::format("decoder_sparse_step {}", step);
    if (!only.empty()) how += fmt::format(", mlp_only_layers {}", indices(only));
    return {moe, how};
  }
  if (auto list = c.list("moe_layers")) {
    // Llama 4's list of its MoE layers' indices.
    std::fill(moe.begin(), moe.end(), false);
    for (const auto& s : *list) {
      int i = -1;
      try {
        i = std::stoi(s);
      } catch (const std::exception&) {
      }
      if (i < 0 || i >= layers) throw c.error("moe_layers", fmt::format("'{}' is not a layer of the {}", s, layers));
      moe[static_cast<std::size_t>(i)] = true;
    }
    return {moe, "moe_layers"};
  }
  if (auto step = c.count("interleave_moe_layer_step")) {
    // Llama 4: every step-th layer has experts (layers step - 1, 2 step - 1, ...).
    if (*step < 1) throw c.error("interleave_moe_layer_step", "must be at least 1");
    for (int i = 0; i < layers; ++i) moe[static_cast<std::size_t>(i)] = (i + 1) % *step == 0;
    return {moe, fmt::format("interleave_moe_layer_step {}", *step)};
  }
  if (c.has("moe_layer_start_index")) {
    // ERNIE 4.5: layer i has experts if (i + 1) is a multiple of moe_layer_interval and i lies
    // from moe_layer_start_index to moe_layer_end_index (lists, one per modality, in its
    // multimodal releases: the smallest start and the largest end).
    const auto bound = [&](const char* key, bool least, std::int64_t fallback) {
      if (!c.at(key).IsSequence()) return c.count(key).value_or(fallback);
      std::optional<std::int64_t> v;
      const std::vector<std::string> values = c.list(key).value_or(std::vector<std::string>{});
      for (const auto& e : values) {
        std::int64_t x = 0;
        try {
          x = std::stoll(e);
        } catch (const std::exception&) {
          throw c.error(key, fmt::format("expected layer numbers, got '{}'", e));
        }
        v = !v ? x : least ? std::min(*v, x) : std::max(*v, x);
      }
      return v.value_or(fallback);
    };
    const std::int64_t start = bound("moe_layer_start_index", true, 0), end = bound("moe_layer_end_index", false, layers - 1);
    const std::int64_t interval = c.count("moe_layer_interval").value_or(1);
    if (interval < 1) throw c.error("moe_layer_interval", "must be at least 1");
    for (int i = 0; i < layers; ++i) moe[static_cast<std::size_t>(i)] = i >= start && i <= end && (i + 1) % interval == 0;
    return {moe, interval == 1 ? fmt::format("moe_layer_start_index {}", start)
                               : fmt::format("moe_layer_start_index {}, moe_layer_interval {}", start, interval)};
  }
  return {moe, "every layer"};
}

// Attention layer types moesim models: softmax attention over every earlier position or a window.
void refuse_other_attention(const Config& c) {
  for (const char* key : {"o_lora_rank", "compress_ratios", "attn_layer_period", "attn_layer_offset", "mamba_d_state",
                          "hybrid_layer_pattern", "hybrid_override_pattern", "linear_attn_config"})
    if (c.has(key))
      throw c.error(key, "this model's attention (or its state-space layers) is of a kind moesim does not model; write the model "
                         "section by hand (attention_params and kv_cache_dim give another attention's weights and cache, docs/scenario.md)");
  // MiniMax's per-layer attention kinds: 0 its linear (lightning) attention, 1 softmax.
  if (auto kinds = c.list("attn_type_list"))
    for (const auto& k : *kinds)
      if (k != "1")
        throw c.error("attn_type_list", "has linear-attention layers (0): moesim models softmax attention only; write the model "
                                        "section by hand with attention_params and kv_cache_dim");
  // Gated DeltaNet's linear layers (Qwen3-Next, Qwen3.5) are read with their linear_* keys.
  const bool gated_delta = c.has("linear_num_value_heads");
  if (auto types = c.list("layer_types"))
    for (const auto& t : *types)
      if (t != "full_attention" && t != "sliding_attention" && !(gated_delta && t == "linear_attention"))
        throw c.error("layer_types", fmt::format("has '{}' layers: moesim models softmax attention (full or sliding) and Gated "
                                                 "DeltaNet's linear attention (with linear_num_value_heads) only; write the model "
                                                 "section by hand with attention_params and kv_cache_dim",
                                                 t));
}

// A compressed-tensors quantization that moesim's weight dtypes hold: 4-bit integers with a
// 16-bit scale per group of 32 (18 bytes per 32 weights, as NVFP4's: `fp4`), or 8-bit floats
// (`fp8`); applied to the routed experts alone where the attention is left out of it.
struct CompressedTensors {
  std::string dtype, what;
  bool experts_only;
};
std::optional<CompressedTensors> compressed_tensors(const YAML::Node& q) {
  const YAML::Node groups = q["config_groups"];
  if (!groups.IsDefined() || !groups.IsMap() || groups.size() != 1) return std::nullopt;
  const YAML::Node w = groups.begin()->second["weights"];
  if (!w.IsDefined() || !w.IsMap()) return std::nullopt;
  const auto text = [&](const char* k) { return w[k].IsDefined() && w[k].IsScalar() ? w[k].Scalar() : std::string(); };
  std::string dtype;
  if (text("num_bits") == "4" && text("type") == "int" && text("group_size") == "32") dtype = "fp4";
  else if (text("num_bits") == "8" && text("type") == "float") dtype = "fp8";
  else return std::nullopt;
  bool attention_left = false;
  if (const YAML::Node ignore = q["ignore"]; ignore.IsDefined() && ignore.IsSequence())
    for (const auto& e : ignore)
      if (e.IsScalar() && e.Scalar().find("self_attn") != std::string::npos) attention_left = true;
  return CompressedTensors{dtype,
                           dtype == "fp4" ? std::string("int4 with a 16-bit scale per 32 weights, the bytes of fp4 (NVFP4)")
                                          : std::string("fp8"),
                           attention_left};
}

// NVIDIA Model Optimizer's export (quant_method modelopt, or modelopt_fp4 in older releases; the
// same keys under "quantization" in an hf_quant_config.json beside the config): quant_algo NVFP4
// (4-bit floats with an FP8 scale per 16 weights: moesim's fp4) or FP8, with exclude_modules (or
// ignore) the layers kept in the model's dtype; or MIXED_PRECISION, quantized_layers giving each
// layer's algorithm. The routed experts' dtype and the other linear layers', where they differ.
struct ModelOpt {
  std::string experts, rest, what;
};
std::optional<std::string> modelopt_dtype(std::string algo) {
  for (auto& ch : algo) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  if (algo == "NVFP4" || algo == "W4A16_NVFP4" || algo == "W4A8_NVFP4_FP8") return "fp4";
  if (algo == "FP8" || algo == "FP8_BLOCK" || algo == "FP8_PB_WO") return "fp8";
  return std::nullopt;
}
std::optional<ModelOpt> modelopt(const YAML::Node& q) {
  const auto text = [](const YAML::Node& n, const char* k) { return n[k].IsDefined() && n[k].IsScalar() ? n[k].Scalar() : std::string(); };
  const std::string algo = text(q, "quant_algo");
  if (algo == "MIXED_PRECISION") {
    const YAML::Node layers = q["quantized_layers"];
    if (!layers.IsDefined() || !layers.IsMap()) return std::nullopt;
    ModelOpt m;
    for (const auto& kv : layers) {
      if (!kv.first.IsScalar() || !kv.second.IsMap()) continue;
      const std::string name = kv.first.Scalar();
      const auto dtype = modelopt_dtype(text(kv.second, "quant_algo"));
      if (!dtype) return std::nullopt;
      const bool routed = name.find(".experts") != std::string::npos && name.find("shared_expert") == std::string::npos;
      std::string& slot = routed ? m.experts : m.rest;
      if (!slot.empty() && slot != *dtype) return std::nullopt;  // layers of one kind in two dtypes
      slot = *dtype;
    }
    if (m.experts.empty() && m.rest.empty()) return std::nullopt;
    m.what = "MIXED_PRECISION";
    return m;
  }
  const auto dtype = modelopt_dtype(algo);
  if (!dtype) return std::nullopt;
  bool attention_left = false;
  for (const char* list : {"exclude_modules", "ignore"})
    if (const YAML::Node l = q[list]; l.IsDefined() && l.IsSequence())
      for (const auto& e : l)
        if (e.IsScalar() && (e.Scalar().find("self_attn") != std::string::npos || e.Scalar().find(".attn") != std::string::npos))
          attention_left = true;
  return ModelOpt{*dtype, attention_left ? std::string() : *dtype, algo};
}

}  // namespace

HfModel hf_model(const YAML::Node& root_node, const std::string& file, const std::string& workload_kind) {
  if (!root_node.IsMap()) throw HfConfigError(fmt::format("{}: expected a JSON object, a model's config.json", file));
  const Config root(root_node, file);
  if (root.at("cluster").IsDefined() || (root.at("model").IsMap() && root.at("workload").IsDefined()))
    throw HfConfigError(fmt::format("{}: a moesim scenario, not a model's config.json", file));
  HfModel out;
  Builder b(out);
  // A multimodal release (Llama 4, Kimi K2.5) holds its language model in text_config.
  const bool text = root.at("text_config").IsMap();
  const Config c(text ? root.at("text_config") : root_node, file);
  if (text) b.note("the language model (text_config) alone: the vision encoder and its projector are left out");
  out.model_type = c.text("model_type").value_or(root.text("model_type").value_or(""));
  if (out.model_type.empty())
    if (const YAML::Node a = root.at("architectures"); a.IsSequence() && a.size() > 0 && a[0].IsScalar()) out.model_type = a[0].Scalar();
  const std::string& type = out.model_type;
  const bool llama4 = type.rfind("llama4", 0) == 0;
  refuse_other_attention(c);

  const auto need = [&](std::initializer_list<const char*> keys, const char* what) {
    if (auto v = c.first_count(keys)) return *v;
    std::vector<std::string> names(keys.begin(), keys.end());
    throw c.error(fmt::format("no {} (looked for {})", what, fmt::join(names, ", ")));
  };
  b.model("name", model_name(root, file), root.has("_name_or_path") ? "_name_or_path" : "the file's name");

  const auto [hidden_key, hidden] = need({"hidden_size", "d_model", "n_embd", "dim"}, "model width");
  const auto [layers_key, layers64] = need({"num_hidden_layers", "n_layers", "num_layers", "n_layer"}, "layer count");
  const auto [heads_key, heads] = need({"num_attention_heads", "n_heads", "n_head"}, "attention heads");
  // DBRX keeps its experts' keys in ffn_config.
  const auto in_ffn_config = [&](const char* key) -> std::optional<std::pair<std::string, std::int64_t>> {
    if (auto v = c.count_in("ffn_config", key)) return std::pair<std::string, std::int64_t>(fmt::format("ffn_config.{}", key), *v);
    return std::nullopt;
  };
  auto experts = c.first_count({"n_routed_experts", "num_local_experts", "num_experts", "moe_num_experts"});
  if (!experts) experts = in_ffn_config("moe_num_experts");
  if (!experts || experts->second < 1)
    throw c.error("not an MoE model: its config names no routed experts (num_local_experts, n_routed_experts, num_experts "
                  "or moe_num_experts); moesim simulates mixture-of-experts models");
  auto top_k_found = c.first_count({"num_experts_per_tok", "experts_per_token", "moe_k", "moe_top_k", "moe_topk"});
  if (!top_k_found) top_k_found = in_ffn_config("moe_top_k");
  const auto [topk_key, top_k] =
      top_k_found ? *top_k_found : need({"num_experts_per_tok", "experts_per_token", "moe_k", "moe_top_k", "moe_topk"}, "experts per token");
  const auto moe_ffn = c.count("moe_intermediate_size");
  auto ffn_found = moe_ffn ? std::optional(std::pair<std::string, std::int64_t>("moe_intermediate_size", *moe_ffn))
                           : in_ffn_config("ffn_hidden_size");
  const auto [ffn_key, expert_ffn] = ffn_found ? *ffn_found : need({"intermediate_size"}, "expert width");
  if (layers64 < 1 || layers64 > (1 << 20)) throw c.error(layers_key, fmt::format("{} layers", layers64));
  const int layers = static_cast<int>(layers64);

  const auto [moe, layout] = moe_layout(c, layers, type);
  const int moe_layers = static_cast<int>(std::count(moe.begin(), moe.end(), true));
  const int dense_layers = layers - moe_layers;
  if (moe_layers == 0) throw c.error(fmt::format("none of its {} layers has experts ({})", layers, layout));
  b.model("moe_layers", moe_layers,
          dense_layers == 0 ? fmt::format("{} {}", layers_key, layers) : fmt::format("{} {} of which {}", layers_key, layers, layout));
  if (dense_layers > 0) {
    b.model("dense_layers", dense_layers, dense_layers == 1 ? fmt::format("the layer without experts ({})", layout)
                                     : fmt::format("the {} layers without experts ({})", dense_layers, layout));
    const auto dense_ffn = llama4 && c.has("intermediate_size_mlp") ? std::optional(std::pair<std::string, std::int64_t>("intermediate_size_mlp", *c.count("intermediate_size_mlp")))
                           : moe_ffn                                ? c.first_count({"intermediate_size"})
                                                                    : std::nullopt;
    if (!dense_ffn)
      throw c.error(fmt::format("{} of its layers are dense but it gives no dense FFN width beside the experts' "
                                "(intermediate_size with moe_intermediate_size)",
                                dense_layers));
    b.model("dense_ffn", dense_ffn->second, dense_ffn->first);
    std::vector<int> late;  // dense layers after the first MoE layer
    const auto first_moe = std::find(moe.begin(), moe.end(), true) - moe.begin();
    for (int i = static_cast<int>(first_moe); i < layers; ++i)
      if (!moe[static_cast<std::size_t>(i)]) late.push_back(i);
    if (!late.empty())
      b.note(fmt::format("its dense layers are interleaved with the MoE layers ({} of them after the first MoE layer: layer{} {}); "
                         "moesim runs them before the MoE layers: the same work in another order (with pipeline stages, the first "
                         "stages hold them)",
                         late.size(), late.size() > 1 ? "s" : "", indices(late)));
  }
  b.model("hidden", hidden, hidden_key);
  b.model("expert_ffn", expert_ffn, ffn_key);
  b.model("experts", experts->second, experts->first);
  b.model("top_k", top_k, topk_key);

  // Shared experts: counted (DeepSeek, GLM), or one wider expert (Qwen2-MoE) modelled as
  // several of the routed width, or Llama 4's one per MoE layer.
  if (auto n = c.first_count({"n_shared_experts", "moe_num_shared_experts", "num_shared_experts", "num_shared_expert"}); n && n->second > 0) {
    b.model("shared_experts", n->second, n->first);
  } else if (auto w = c.count("shared_expert_intermediate_size"); w && *w > 0) {
    if (*w % expert_ffn != 0)
      throw c.error("shared_expert_intermediate_size",
                    fmt::format("{} is not a multiple of the routed experts' {}: moesim's shared experts have the routed width", *w, expert_ffn));
    b.model("shared_experts", *w / expert_ffn, fmt::format("shared_expert_intermediate_size {} / {}", *w, expert_ffn));
    if (*w != expert_ffn)
      b.note(fmt::format("its shared expert, {} wide, is modelled as {} experts {} wide: the same weights and FLOPs", *w, *w / expert_ffn,
                         expert_ffn));
  } else if (llama4) {
    b.model("shared_experts", 1, "Llama 4's MoE layers each have one shared expert");
  }

  b.model("attention_heads", heads, heads_key);
  if (c.has("kv_lora_rank")) {
    // DeepSeek's multi-head latent attention (V2, V3, V3.2, Kimi K2).
    const auto mla_need = [&](const char* key) {
      if (auto v = c.count(key)) return *v;
      throw c.error(key, "missing: multi-head latent attention (kv_lora_rank) needs it");
    };
    b.mla("q_lora_rank", c.count("q_lora_rank").value_or(0), c.has("q_lora_rank") ? "q_lora_rank" : "q_lora_rank null: none");
    b.mla("kv_lora_rank", mla_need("kv_lora_rank"), "kv_lora_rank");
    b.mla("qk_nope_head_dim", mla_need("qk_nope_head_dim"), "qk_nope_head_dim");
    b.mla("qk_rope_head_dim", mla_need("qk_rope_head_dim"), "qk_rope_head_dim");
    b.mla("v_head_dim", mla_need("v_head_dim"), "v_head_dim");
    if (c.has("index_topk") || c.has("index_n_heads") || c.has("index_head_dim")) {
      b.mla("index_topk", mla_need("index_topk"), "index_topk");
      b.mla("index_n_heads", mla_need("index_n_heads"), "index_n_heads");
      b.mla("index_head_dim", mla_need("index_head_dim"), "index_head_dim");
    }
  } else {
    if (auto kv = c.first_count({"num_key_value_heads", "num_kv_heads", "n_kv_heads"}); kv && kv->second != heads)
      b.model("kv_heads", kv->second, kv->first);
    else if (const YAML::Node attn = c.at("attn_config"); attn.IsMap() && attn["kv_n_heads"].IsDefined() && attn["kv_n_heads"].IsScalar())
      b.model("kv_heads", Config(attn, c.file()).count("kv_n_heads").value_or(heads), "attn_config.kv_n_heads");
    // Kept where it equals hidden / heads too, so that it holds when the scenario narrows the model.
    if (auto hd = c.count("head_dim")) b.model("head_dim", *hd, "head_dim");
    if (c.has("linear_num_value_heads")) {
      // Gated DeltaNet (Qwen3-Next, Qwen3.5): linear layers, every n-th one full attention.
      const auto need_linear = [&](const char* key) {
        if (auto v = c.count(key)) return *v;
        throw c.error(key, "missing: linear attention (linear_num_value_heads) needs it");
      };
      b.linear("key_heads", need_linear("linear_num_key_heads"), "linear_num_key_heads");
      b.linear("value_heads", need_linear("linear_num_value_heads"), "linear_num_value_heads");
      b.linear("key_dim", need_linear("linear_key_head_dim"), "linear_key_head_dim");
      b.linear("value_dim", need_linear("linear_value_head_dim"), "linear_value_head_dim");
      if (auto k = c.count("linear_conv_kernel_dim")) b.linear("conv_kernel", *k, "linear_conv_kernel_dim");
      if (auto d = c.text("mamba_ssm_dtype"); d && (*d == "bfloat16" || *d == "float16"))
        b.linear("state_dtype", std::string(*d == "bfloat16" ? "bf16" : "fp16"), "mamba_ssm_dtype");
      else
        b.note("its linear layers' state is held in fp32 (SGLang's default, --mamba-ssm-dtype; model.linear_attention.state_dtype)");
      int every = 0;
      std::string how;
      if (auto types = c.list("layer_types")) {
        if (static_cast<int>(types->size()) != layers)
          throw c.error("layer_types", fmt::format("has {} entries for {} layers", types->size(), layers));
        const auto full = std::find(types->begin(), types->end(), "full_attention");
        every = full == types->end() ? 0 : static_cast<int>(full - types->begin()) + 1;
        bool periodic = every != 1;
        for (int i = 0; i < layers && periodic && every > 0; ++i)
          periodic = ((*types)[static_cast<std::size_t>(i)] == "full_attention") == ((i + 1) % every == 0);
        if (!periodic)
          throw c.error("layer_types", "its full-attention layers are not every n-th layer, which is what model.full_attention_every "
                                       "can say; write the model section by hand");
        how = every == 0 ? "layer_types: every layer linear" : fmt::format("layer_types: every {}th layer full, the others linear", every);
      } else if (auto interval = c.count("full_attention_interval")) {
        every = static_cast<int>(*interval);
        if (every == 1) throw c.error("full_attention_interval", "is 1: no layer would be linear; drop the linear_* keys");
        how = fmt::format("full_attention_interval {}", every);
      } else {
        throw c.error("linear_num_value_heads", "its layers' kinds are not given (layer_types or full_attention_interval)");
      }
      if (every >= 2) b.model("full_attention_every", every, how);
      // Qwen3-Next's and Qwen3.5's full-attention layers gate their output with a second
      // query-wide projection (attn_output_gate).
      if (c.flag("attn_output_gate", type.rfind("qwen3_next", 0) == 0 || type.rfind("qwen3_5", 0) == 0))
        b.model("attention_output_gate", true,
                c.has("attn_output_gate") ? "attn_output_gate" : fmt::format("{}'s full layers gate their output", type));
    } else if (auto types = c.list("layer_types");  // sliding windows: GPT-OSS's layer_types, Llama 4's chunked layers, or every layer
        types && std::find(types->begin(), types->end(), "sliding_attention") != types->end()) {
      if (static_cast<int>(types->size()) != layers)
        throw c.error("layer_types", fmt::format("has {} entries for {} layers", types->size(), layers));
      const auto window = c.count("sliding_window");
      if (!window) throw c.error("sliding_window", "missing: layer_types has sliding layers");
      b.model("sliding_window", *window, "sliding_window");
      const auto full = std::find(types->begin(), types->end(), "full_attention");
      if (full != types->end()) {
        const int every = static_cast<int>(full - types->begin()) + 1;
        bool periodic = every >= 2;
        for (int i = 0; i < layers && periodic; ++i)
          periodic = ((*types)[static_cast<std::size_t>(i)] == "full_attention") == ((i + 1) % every == 0);
        if (!periodic)
          throw c.error("layer_types", "its full-attention layers are not every n-th layer, which is what model.full_attention_every "
                                       "can say; write the model section by hand");
        b.model("full_attention_every", every, fmt::format("layer_types: every {} layer full, the others sliding", every == 2 ? "second" : fmt::format("{}th", every)));
      }
    } else if (llama4 && c.has("attention_chunk_size")) {
      const std::int64_t chunk = *c.count("attention_chunk_size");
      // Layers without RoPE attend globally, the others in chunks (no_rope_layers[i] == 0: global).
      int every = 4;
      std::string how = "every fourth layer global (Llama 4's default)";
      if (auto nope = c.list("no_rope_layers"); nope && !nope->empty()) {
        if (static_cast<int>(nope->size()) != layers)
          throw c.error("no_rope_layers", fmt::format("has {} entries for {} layers", nope->size(), layers));
        const auto global = std::find(nope->begin(), nope->end(), "0");
        every = global == nope->end() ? 0 : static_cast<int>(global - nope->begin()) + 1;
        for (int i = 0; i < layers && every > 0; ++i)
          if (((*nope)[static_cast<std::size_t>(i)] == "0") != ((i + 1) % every == 0)) every = -1;
        if (every < 0 || every == 1)
          throw c.error("no_rope_layers", "its global-attention layers are not every n-th layer; write the model section by hand");
        how = "no_rope_layers: the layers without RoPE global";
      }
      b.model("sliding_window", chunk, fmt::format("attention_chunk_size {}", chunk));
      if (every >= 2) b.model("full_attention_every", every, how);
      b.note(fmt::format("its chunked attention (attention_chunk_size {0}) is modelled as a sliding window of {0}: the same up to "
                         "{0} tokens; beyond, a chunk's queries see on average half as many keys as a window's",
                         chunk));
    } else if (auto window = c.count("sliding_window"); window && c.flag("use_sliding_window", true)) {
      b.model("sliding_window", *window, "sliding_window (every layer)");
      if (auto mw = c.count("max_window_layers"); mw && *mw < layers)
        b.note(fmt::format("max_window_layers {}: moesim slides every layer's window", *mw));
    }
  }
  if (auto v = c.first_count({"vocab_size", "padded_vocab_size"})) {
    b.model("vocab", v->second, v->first);
    if (c.flag("tie_word_embeddings", false) || root.flag("tie_word_embeddings", false))
      b.note(fmt::format("it ties the embedding to the LM head; moesim holds them as two matrices ({:.2f} B parameters more than the "
                         "model has, in memory, gradients and optimizer state)",
                         static_cast<double>(v->second * hidden) / 1e9));
  }
  if (auto mtp = c.count("num_mtp_modules"); mtp && *mtp > 0 && c.flag("use_mtp", true))
    b.note(fmt::format("its {} multi-token prediction modules (num_mtp_modules) are not read: model.mtp_modules models DeepSeek-V3's "
                       "(one MoE layer of the model's shape and the shared head each)",
                       *mtp));
  if (auto mtp = c.count("mtp_num_hidden_layers"); mtp && *mtp > 0)
    b.note(fmt::format("its {} multi-token prediction layer{} (mtp_num_hidden_layers) {} not read", *mtp, *mtp > 1 ? "s" : "",
                       *mtp > 1 ? "are" : "is"));
  if (auto mtp = c.count("num_nextn_predict_layers"); mtp && *mtp > 0) {
    b.model("mtp_modules", *mtp, "num_nextn_predict_layers");
    if (workload_kind == "training")
      b.note(fmt::format("its {} multi-token prediction module{} train{} with it, after the main layers (model.mtp_modules: 0 leaves "
                         "them out)",
                         *mtp, *mtp > 1 ? "s" : "", *mtp > 1 ? "" : "s"));
  }
  if (auto dt = c.text("torch_dtype").has_value() ? c.text("torch_dtype") : c.text("dtype").has_value() ? c.text("dtype") : root.text("torch_dtype")) {
    if (*dt == "bfloat16") b.model("dtype", "bf16", "torch_dtype bfloat16");
    else if (*dt == "float16") b.model("dtype", "fp16", "torch_dtype float16");
    else b.note(fmt::format("its weights are stored as {}; moesim runs it in bf16 (model.dtype)", *dt));
  }
  // A quantized checkpoint's weights, as inference reads them; training keeps its own dtype.
  const YAML::Node q = c.at("quantization_config").IsMap() ? c.at("quantization_config") : root.at("quantization_config");
  if (q.IsMap()) {
    const std::string method = q["quant_method"].IsDefined() && q["quant_method"].IsScalar() ? q["quant_method"].Scalar() : "";
    const bool inference = workload_kind != "training";
    if (method == "fp8") {
      if (inference) b.model("weight_dtype", "fp8", "quantization_config: fp8 (its linear layers' weights)");
      else b.note("its checkpoint's linear layers are fp8 (quantization_config); training holds its weights at model.dtype");
    } else if (method == "mxfp4") {
      if (inference) b.model("expert_weight_dtype", "mxfp4", "quantization_config: mxfp4 (its experts' weights)");
      else b.note("its checkpoint's experts are mxfp4 (quantization_config); training holds its weights at model.dtype");
    } else if (const auto mo = method == "modelopt" || method == "modelopt_fp4" ? modelopt(q) : std::nullopt) {
      // NVIDIA's NVFP4 releases (DeepSeek-R1-FP4 and others): experts, and where the attention
      // is not left out every linear layer, in 4 bits.
      if (!inference) {
        b.note(fmt::format("its checkpoint is quantized ({}, NVIDIA Model Optimizer); training holds its weights at model.dtype", mo->what));
      } else if (mo->rest == mo->experts) {
        b.model("weight_dtype", mo->rest, fmt::format("quantization_config: modelopt, {}", mo->what));
      } else {
        if (!mo->rest.empty()) b.model("weight_dtype", mo->rest, fmt::format("quantization_config: modelopt, {} (its layers but the experts)", mo->what));
        if (!mo->experts.empty())
          b.model("expert_weight_dtype", mo->experts, fmt::format("quantization_config: modelopt, {} (its routed experts)", mo->what));
        else  // the experts left in the checkpoint's dtype while the other layers are quantized
          b.model("expert_weight_dtype", out.model["dtype"].IsDefined() ? out.model["dtype"].as<std::string>() : std::string("bf16"),
                  fmt::format("quantization_config: modelopt, {} (its routed experts not quantized)", mo->what));
      }
      const std::string kv = q["kv_cache_quant_algo"].IsDefined() && q["kv_cache_quant_algo"].IsScalar() ? q["kv_cache_quant_algo"].Scalar() : "";
      if ((workload_kind == "decode" || workload_kind == "prefill") && (kv == "FP8" || kv == "fp8"))
        b.model("kv_cache_dtype", "fp8", "quantization_config: kv_cache_quant_algo FP8");
    } else if (const auto ct = method == "compressed-tensors" ? compressed_tensors(q) : std::nullopt) {
      // Kimi K2 Thinking's INT4 release: the routed experts in 4 bits with a 16-bit scale per 32
      // weights (the bytes of NVFP4, which moesim's fp4 is), attention and shared experts left.
      const char* key = ct->experts_only ? "expert_weight_dtype" : "weight_dtype";
      if (inference) b.model(key, ct->dtype, fmt::format("quantization_config: compressed-tensors, {}", ct->what));
      else b.note(fmt::format("its checkpoint is quantized ({}); training holds its weights at model.dtype", ct->what));
    } else {
      b.note(fmt::format("its quantization_config ({}) is not read: set model.weight_dtype or model.expert_weight_dtype for the "
                         "checkpoint's weights",
                         method.empty() ? "no quant_method" : method));
    }
  }
  out.max_positions = c.first_count({"max_position_embeddings", "max_seq_len"}).value_or(std::pair<std::string, std::int64_t>("", 0)).second;
  if (auto act = c.text("hidden_act"); act && *act != "silu" && *act != "swish" && *act != "swiglu")
    b.note(fmt::format("its FFNs' activation is {}; moesim's FFNs are gated, three matrices each (SwiGLU's)", *act));

  // Group-limited routing (DeepSeek-V3's 8 groups, 4 a token).
  const auto groups = c.count("n_group"), max_groups = c.count("topk_group");
  if (groups && max_groups && *groups > 1 && *max_groups < *groups) {
    b.routing("groups", *groups, "n_group");
    b.routing("max_groups", *max_groups, "topk_group");
    const std::string method = c.text("topk_method").value_or("");
    b.routing("group_choice", "best_expert",
              method == "noaux_tc" ? "topk_method noaux_tc scores a group by its two best experts: best_two, at about 25 times the "
                                     "routing time"
                                   : fmt::format("topk_method {}: a group scores its best expert", method.empty() ? "unset" : method));
  }
  return out;
}

HfModel read_hf_model(const std::string& given, const std::string& workload_kind) {
  // A model's folder (a Hugging Face snapshot) holds its config.json.
  std::error_code ec;
  const std::string path = std::filesystem::is_directory(given, ec) ? (std::filesystem::path(given) / "config.json").string() : given;
  std::ifstream in(path, std::ios::binary);
  if (!in) throw HfConfigError(fmt::format("{}: cannot open the model's config.json", path));
  std::ostringstream s;
  s << in.rdbuf();
  YAML::Node node;
  try {
    node = YAML::Load(s.str());
  } catch (const YAML::Exception& e) {
    throw HfConfigError(fmt::format("{}:{}:{}: not valid JSON: {}", path, e.mark.line + 1, e.mark.column + 1, e.msg));
  }
  // NVIDIA Model Optimizer's older exports keep the quantization in hf_quant_config.json beside
  // the config ({"producer": ..., "quantization": {"quant_algo": "NVFP4", ...}}).
  const auto beside = std::filesystem::path(path).parent_path() / "hf_quant_config.json";
  if (node.IsMap() && !node["quantization_config"].IsDefined() && std::filesystem::is_regular_file(beside, ec)) {
    try {
      const YAML::Node hq = YAML::LoadFile(beside.string());
      if (hq.IsMap() && hq["quantization"].IsMap()) {
        YAML::Node q = YAML::Clone(hq["quantization"]);
        q["quant_method"] = "modelopt";
        node["quantization_config"] = q;
      }
    } catch (const YAML::Exception& e) {
      throw HfConfigError(fmt::format("{}:{}:{}: not valid JSON: {}", beside.string(), e.mark.line + 1, e.mark.column + 1, e.msg));
    }
  }
  return hf_model(node, path, workload_kind);
}

std::string hf_model_yaml(const HfModel& m) {
  std::string out;
  const auto source_of = [&](const std::string& path) {
    for (const auto& [p, s] : m.sources)
      if (p == path) return s;
    return std::string();
  };
  const auto line = [&](int indent, const std::string& key, const YAML::Node& v, const std::string& path) {
    std::string text = fmt::format("{:{}}{}: {}", "", indent, key, v.Scalar());
    const std::string src = source_of(path);
    if (!src.empty()) text += fmt::format("{:{}}# {}", "", std::max<std::size_t>(1, 32 - std::min<std::size_t>(32, text.size())), src);
    out += text + "\n";
  };
  const auto section = [&](const char* name, const YAML::Node& node) {
    if (!node.IsMap()) return;
    out += fmt::format("{}:\n", name);
    for (const auto& kv : node) {
      const std::string key = kv.first.Scalar();
      if (kv.second.IsMap()) {
        out += fmt::format("  {}:\n", key);
        for (const auto& sub : kv.second) line(4, sub.first.Scalar(), sub.second, fmt::format("{}.{}.{}", name, key, sub.first.Scalar()));
      } else {
        line(2, key, kv.second, fmt::format("{}.{}", name, key));
      }
    }
  };
  section("model", m.model);
  section("routing", m.routing);
  if (!m.notes.empty()) {
    out += "# What moesim leaves out or approximates:\n";
    for (const auto& n : m.notes) out += fmt::format("# - {}\n", n);
  }
  return out;
}

}  // namespace moesim::scenarios
