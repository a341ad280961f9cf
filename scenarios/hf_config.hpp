// A model's shape from its Hugging Face config.json (model.hf_config, `moesim model`).
//
// The config.json a model is released with names its shape in the keys of its Transformers
// class: Mixtral's num_local_experts, DeepSeek's n_routed_experts and first_k_dense_replace,
// Qwen's decoder_sparse_step, GPT-OSS's layer_types, Llama 4's interleave_moe_layer_step. This
// reads them into moesim's model keys (and, for group-limited routers, the routing section's
// groups), says which key each came from, and lists what the config has that moesim leaves out
// or approximates. A config moesim cannot represent (no routed experts, linear or state-space
// attention, a shared expert of another width than a multiple of the routed ones) is refused
// with the reason; nothing is guessed.
#pragma once

#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <yaml-cpp/yaml.h>

namespace moesim::scenarios {

class HfConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct HfModel {
  std::string model_type;  // config.json's model_type (the text model's, for a multimodal one)
  YAML::Node model;        // moesim's model keys (a mapping, `mla` a nested one)
  YAML::Node routing;      // routing keys (groups, max_groups, group_choice), or null
  // (key path, where it came from), in the order of `model` then `routing`, e.g.
  // ("model.moe_layers", "num_hidden_layers 61 - first_k_dense_replace 3").
  std::vector<std::pair<std::string, std::string>> sources;
  std::vector<std::string> notes;  // what moesim leaves out or approximates, one sentence each
  std::int64_t max_positions = 0;  // max_position_embeddings: the longest context it was built for; 0: not given
};

// `config`: the parsed config.json (JSON is read as YAML); `file`: its path, for the name and the
// messages; `workload_kind`: the scenario's (a quantized checkpoint's weights are read for
// inference, not training). Throws HfConfigError.
HfModel hf_model(const YAML::Node& config, const std::string& file, const std::string& workload_kind);
// `path`: a config.json, or a model's folder holding one.
HfModel read_hf_model(const std::string& path, const std::string& workload_kind);

// The model (and routing) sections as YAML a scenario can hold, each key commented with its
// source, the notes after them.
std::string hf_model_yaml(const HfModel& m);

}  // namespace moesim::scenarios
